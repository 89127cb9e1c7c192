//! `nokv certs`: a cluster CA and node certificates for TLS.
//!
//! `nokv certs ca --dir DIR` makes the cluster's CA (`ca.pem`, `ca-key.pem`);
//! `nokv certs issue --dir DIR --name NAME --host H...` makes a certificate
//! for one node (`NAME.pem`, `NAME-key.pem`) signed by that CA, naming the
//! hosts (DNS names or IP addresses) peers and clients dial it by, and valid
//! for both sides of a connection (a node is a server to clients and a
//! client to its peers). Keys are ECDSA P-256, written readable by the owner
//! only. Certificates are for nodes: clients verify the nodes with the CA
//! and prove who they are with tokens.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::output::print_json;
use crate::GlobalArgs;

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a cluster CA: DIR/ca.pem (give it to every node and client as
    /// --tls-ca) and DIR/ca-key.pem (keep it safe; it signs node
    /// certificates).
    Ca(CaArgs),
    /// Make a node certificate signed by the CA in DIR: DIR/NAME.pem and
    /// DIR/NAME-key.pem, for `nokv serve --tls-cert DIR/NAME.pem --tls-key
    /// DIR/NAME-key.pem --tls-ca DIR/ca.pem`.
    Issue(IssueArgs),
}

#[derive(Args, Debug)]
pub struct CaArgs {
    /// Directory to write into (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Days the CA stays valid.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
    /// Replace files that already exist.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// Directory holding ca.pem and ca-key.pem; the certificate goes there.
    #[arg(long)]
    pub dir: PathBuf,
    /// File name of the certificate (NAME.pem, NAME-key.pem), e.g. node1.
    #[arg(long)]
    pub name: String,
    /// A DNS name or IP address the node is dialled by (repeat for each,
    /// e.g. --host n1 --host 127.0.0.1).
    #[arg(long = "host", required = true)]
    pub hosts: Vec<String>,
    /// Days the certificate stays valid.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
    /// Replace files that already exist.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(c: CertsCommand, g: &GlobalArgs) -> anyhow::Result<()> {
    let written = match c {
        CertsCommand::Ca(a) => ca(&a)?,
        CertsCommand::Issue(a) => issue(&a)?,
    };
    if g.json {
        print_json(&serde_json::json!({ "written": written }));
    } else {
        for path in &written {
            outln!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn validity(params: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

fn ca(a: &CaArgs) -> anyhow::Result<Vec<PathBuf>> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "NoKV cluster CA");
    name.push(DnType::OrganizationName, "NoKV");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, a.days)?;
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = params.self_signed(&key).context("signing the CA")?;
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let cert_path = a.dir.join("ca.pem");
    let key_path = a.dir.join("ca-key.pem");
    write_new(&cert_path, cert.pem().as_bytes(), false, a.force)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true, a.force)?;
    Ok(vec![cert_path, key_path])
}

fn issue(a: &IssueArgs) -> anyhow::Result<Vec<PathBuf>> {
    if a.name.is_empty()
        || !a
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || a.name.starts_with('.')
    {
        bail!("--name {:?}: use letters, digits, '-', '_' and '.'", a.name);
    }
    let read = |file: &str| {
        let path = a.dir.join(file);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (make the CA first: nokv certs ca --dir {})",
                path.display(),
                a.dir.display()
            )
        })
    };
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")?).context("parsing ca-key.pem")?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).context("parsing ca.pem")?;
    let mut params = CertificateParams::new(a.hosts.clone())
        .with_context(|| format!("--host {:?}: not a DNS name or IP address", a.hosts))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, a.name.as_str());
    name.push(DnType::OrganizationName, "NoKV");
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, a.days)?;
    let key = KeyPair::generate().context("generating the node key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the node certificate")?;
    let cert_path = a.dir.join(format!("{}.pem", a.name));
    let key_path = a.dir.join(format!("{}-key.pem", a.name));
    write_new(&cert_path, cert.pem().as_bytes(), false, a.force)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true, a.force)?;
    Ok(vec![cert_path, key_path])
}

/// Writes `bytes` to a file that must not exist yet (unless `force`); a
/// secret is readable by its owner only.
pub(crate) fn write_new(
    path: &Path,
    bytes: &[u8],
    secret: bool,
    force: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).with_context(|| {
        if path.exists() {
            format!("{} exists (pass --force to replace it)", path.display())
        } else {
            format!("creating {}", path.display())
        }
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
