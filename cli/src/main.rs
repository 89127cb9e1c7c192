//! `nokv`: the NoKV command line.
//!
//! Server side: `nokv serve` runs one replica, `nokv dev` a ready
//! three-replica cluster on this machine. Client side: `nokv cluster init`,
//! `nokv status`, the namespace commands (`mkdir`, `ls`, `stat`, `touch`,
//! `mv`, `rm`, `rmdir`, `ln`, `readlink`, `xattr`), bodies (`put`, `cat`,
//! `get`, `publish-dir`), subtree snapshots (`snapshot`, `--snapshot ID`),
//! change events (`watch`), a FUSE mount (`mount`), the agent gateway
//! (`gateway`, `mcp`) and `nokv bench`.
//! Disaster recovery: `nokv backup` and `nokv restore`.
//!
//! This binary may depend on every library crate; no library depends on it.

/// `println!` for command output: a closed stdout (`nokv watch | head`)
/// ends the process quietly instead of panicking (see `output::line`).
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

mod arenas;
mod auth;
mod bench;
mod bench_agent;
mod bench_breakdown;
mod bench_etcd;
mod bench_posix;
mod bench_snapshot;
mod bench_soak;
mod body;
mod certs;
mod cluster;
mod control;
mod fs;
mod gateway;
mod mount;
mod node;
mod output;
mod recovery;
mod serve;
mod shard;
mod snapshot;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nokv_client::{Client, ClientConfig, Consistency};

const ABOUT: &str = "NoKV: a Raft-replicated metadata cluster for object-backed AI artifacts";

const LONG_ABOUT: &str = "\
NoKV keeps a filesystem-shaped namespace (directories, files, symlinks,
xattrs) in a Raft-replicated metadata shard. Every write is committed on a
quorum of replicas, fsynced, before it is acknowledged.

Quick start:
  nokv dev                                  # a 3-replica cluster on this machine
  export NOKV_ENDPOINTS=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
  nokv mkdir -p /runs/1 && nokv touch /runs/1/config.json
  nokv ls /runs/1
  nokv status

Environment: NOKV_ENDPOINTS (replica addresses), NOKV_ADDRESS_MAP (advertised
address rewrites), RUST_LOG (log filter, e.g. RUST_LOG=debug),
NOKV_LOG_FORMAT=json (structured logs).";

#[derive(Parser, Debug)]
#[command(name = "nokv", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every client command understands, before or after the subcommand.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Replica addresses, comma separated (any subset of the cluster works).
    #[arg(long, global = true, env = "NOKV_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Serve reads from any replica without read-index (may be stale).
    #[arg(long, global = true)]
    pub stale: bool,
    /// Give up on a request after this long (retries included), e.g. 15s.
    #[arg(long, global = true, default_value = "15s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Log format: text or json (level from RUST_LOG).
    #[arg(long, global = true, env = "NOKV_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Rewrite replica addresses the cluster advertises (in leader hints) to
    /// ones this machine can reach, comma separated ADVERTISED=REACHABLE,
    /// e.g. n1:7400=127.0.0.1:7401 for a Docker Compose cluster used from
    /// the host.
    #[arg(long, global = true, env = "NOKV_ADDRESS_MAP", value_delimiter = ',', value_parser = parse_mapping)]
    pub address_map: Vec<(String, String)>,
    /// etcd endpoints of the control plane, comma separated (e.g.
    /// http://127.0.0.1:2379). `serve` registers there and hosts the shards
    /// the map places on it; `cluster init` records the cluster there;
    /// client commands without --endpoints reach the nodes it lists.
    #[arg(long, global = true, env = "NOKV_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Name of the cluster in the control plane (several clusters can share
    /// one etcd).
    #[arg(long, global = true, env = "NOKV_CLUSTER", default_value = "nokv")]
    pub cluster: String,
    /// TLS: the cluster CA's certificate (PEM). Clients verify the nodes
    /// with it; `serve` also asks peers for a certificate it signed. Make
    /// one with `nokv certs ca`.
    #[arg(long, global = true, env = "NOKV_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// TLS: this process's certificate (PEM), signed by the cluster CA:
    /// required by `serve` (with --tls-key and --tls-ca), optional for
    /// clients. Make one with `nokv certs issue`.
    #[arg(long, global = true, env = "NOKV_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS: the private key of --tls-cert (PEM).
    #[arg(long, global = true, env = "NOKV_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Access token (nokv_...) for a cluster started with --require-auth.
    /// Prefer NOKV_TOKEN: a flag shows in the process list. Make one with
    /// `nokv auth token create`.
    #[arg(long, global = true, env = "NOKV_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub token: Option<nokv_client::Token>,
    /// Concurrent requests to one node travel in batched calls, with at
    /// most this many calls in flight per node (writes and reads each);
    /// 0 sends every request in a call of its own.
    #[arg(long, global = true, env = "NOKV_COALESCE", default_value_t = nokv_client::DEFAULT_COALESCE)]
    pub coalesce: usize,
    /// Send linearizable reads to every replica in turn instead of to the
    /// leader (the nodes must serve them: `serve --follower-reads true`).
    #[arg(long, global = true, env = "NOKV_READ_FROM_FOLLOWERS")]
    pub read_from_followers: bool,
}

/// A token's text (never echoed back in the error).
fn parse_token(s: &str) -> Result<nokv_client::Token, String> {
    nokv_client::Token::parse(s).map_err(|e| e.to_string())
}

/// `ADVERTISED=REACHABLE`.
fn parse_mapping(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((from, to)) if !from.trim().is_empty() && !to.trim().is_empty() => {
            Ok((from.trim().to_string(), to.trim().to_string()))
        }
        _ => Err(format!(
            "expected ADVERTISED=REACHABLE (e.g. n1:7400=127.0.0.1:7401), got {s:?}"
        )),
    }
}

impl GlobalArgs {
    /// The client side of TLS from --tls-ca (and --tls-cert/--tls-key when
    /// this client presents a certificate); `None` without --tls-ca.
    pub fn client_tls(&self) -> anyhow::Result<Option<nokv_client::ClientTls>> {
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        match &self.tls_ca {
            Some(ca) => Ok(Some(nokv_client::ClientTls::load(ca, identity)?)),
            None if identity.is_some() => {
                anyhow::bail!("--tls-cert needs --tls-ca (the CA that signed the nodes)")
            }
            None => Ok(None),
        }
    }

    /// Client settings for `endpoints` with this invocation's TLS and
    /// address map (timeouts at their defaults).
    pub fn client_config(&self, endpoints: Vec<String>) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new(endpoints);
        config.address_map = self.address_map.iter().cloned().collect();
        config.tls = self.client_tls()?;
        config.token = self.token.clone();
        config.coalesce = self.coalesce;
        config.read_from_followers = self.read_from_followers;
        Ok(config)
    }

    /// A client for `--endpoints`, or a clear error when none are given.
    pub fn client(&self) -> anyhow::Result<Client> {
        if self.endpoints.is_empty() {
            anyhow::bail!("no endpoints: pass --endpoints HOST:PORT,... or set NOKV_ENDPOINTS");
        }
        let mut config = self.client_config(self.endpoints.clone())?;
        config.deadline = self.timeout;
        config.attempt_timeout = self.timeout.min(Duration::from_secs(5));
        Ok(Client::new(config)?)
    }

    /// A client, or a read-only view of snapshot `id` when one is given.
    pub fn client_at(&self, snapshot: Option<u64>) -> anyhow::Result<Client> {
        let client = self.client()?;
        Ok(match snapshot {
            Some(id) => client.at_snapshot(nokv_client::SnapshotId(id)),
            None => client,
        })
    }

    pub fn consistency(&self) -> Consistency {
        if self.stale {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one replica of a metadata shard (Raft and client gRPC on one address).
    Serve(serve::ServeArgs),
    /// Run a ready three-replica cluster on local ports (the embedded default).
    Dev(serve::DevArgs),
    /// Form or inspect the Raft group.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Access tokens (`nokv auth token create|revoke|ls|generate`) for
    /// clusters started with `nokv serve --require-auth`.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// TLS material: a cluster CA (`ca`) and node certificates (`issue`).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Shards of the cluster (the control plane's shard map): create, ls,
    /// rm, add-replica, remove-replica, transfer-leader, rebalance.
    #[command(subcommand)]
    Shard(shard::ShardCommand),
    /// Nodes of the cluster: ls, add, replace, remove.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Show every replica: role, term, leader, log and applied index.
    Status,
    /// Exit 0 if the first endpoint is initialized and knows a leader (for
    /// container healthchecks; asks only that replica).
    Health,
    /// Create a directory.
    Mkdir(fs::MkdirArgs),
    /// List a directory.
    Ls(fs::LsArgs),
    /// Show the attributes of a path.
    Stat(fs::StatArgs),
    /// Create an empty file, or update the mtime of an existing one.
    Touch(fs::PathArgs),
    /// Rename or move a path.
    Mv(fs::MvArgs),
    /// Remove a file or symlink (`-r` removes a directory tree).
    Rm(fs::RmArgs),
    /// Remove an empty directory.
    Rmdir(fs::PathArgs),
    /// Make a link: `ln -s TARGET PATH` (symbolic) or `ln EXISTING PATH` (hard).
    Ln(fs::LnArgs),
    /// Print the target of a symlink.
    Readlink(fs::PathArgs),
    /// Get, set, list or remove extended attributes.
    #[command(subcommand)]
    Xattr(fs::XattrCommand),
    /// Publish a local file (or stdin) as a file body, atomically.
    Put(body::PutArgs),
    /// Print a file's bytes (or a --range of them).
    Cat(body::CatArgs),
    /// Download a file's bytes to a local file (digest verified).
    Get(body::GetArgs),
    /// Publish every file of a local directory in one commit (all or none).
    PublishDir(body::PublishDirArgs),
    /// Reclaim expired uploads and delete superseded blocks now, on every
    /// shard (`--shard ID` for one).
    Gc(body::GcArgs),
    /// Check that every live block exists; list objects nothing references
    /// (each shard checks its own blocks; `--shard ID` for one).
    Fsck(body::FsckArgs),
    /// List staged (uncommitted) uploads.
    Uploads,
    /// Subtree snapshots: create, ls, renew, rm (read at one with --snapshot).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Print change events as they commit (replays history after --from
    /// first; follows failover; Ctrl-C stops).
    Watch(watch::WatchArgs),
    /// Show the watch history's retention and cursors; `--events N` and
    /// `--age DURATION` change the retention (replicated).
    WatchRetention(watch::RetentionArgs),
    /// Mount the namespace (or a subtree, or a snapshot) as a local
    /// directory (FUSE), in the foreground (-d: in the background).
    Mount(mount::MountArgs),
    /// Unmount a `nokv mount` (its process then exits).
    Umount(mount::UmountArgs),
    /// Serve the agent verbs (ls, stat, catalog, find, aggregate, read,
    /// grep) over HTTP/JSON and MCP (streamable HTTP at /mcp).
    Gateway(gateway::GatewayArgs),
    /// Run one agent verb in-process and print its JSON result (the same
    /// verbs, arguments and evidence URIs the gateway serves).
    Agent(gateway::AgentArgs),
    /// Serve the agent verbs as MCP tools over stdio (for MCP clients that
    /// start their servers).
    Mcp(gateway::McpArgs),
    /// Measure creates or stats against a running cluster.
    Bench(bench::BenchArgs),
    /// Make a recovery point in the object store now (snapshot + log), for
    /// every shard (`--shard ID` for one).
    Backup(recovery::BackupArgs),
    /// Rebuild a replica's data directory from the object store (offline).
    Restore(recovery::RestoreArgs),
}

fn init_tracing(format: &str, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(cli.command, Command::Serve(_) | Command::Dev(_));
    if server {
        // Before anything starts: this may replace the process.
        arenas::limit();
    }
    init_tracing(
        &cli.global.log_format,
        if server {
            "info,openraft=error"
        } else {
            "warn"
        },
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nokv: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`nokv cat … | head`): not an
        // error of ours, and nothing is left to say.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nokv: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut g = cli.global;
    // A client command given `--etcd` but no `--endpoints` talks to the
    // nodes the control plane lists (servers and the control-plane
    // commands use etcd itself).
    let client_command = !matches!(
        cli.command,
        Command::Serve(_)
            | Command::Dev(_)
            | Command::Cluster(_)
            | Command::Restore(_)
            | Command::Certs(_)
    );
    if client_command && g.endpoints.is_empty() && !g.etcd.is_empty() {
        g.endpoints = control::node_addresses(&g).await?;
    }
    match cli.command {
        Command::Serve(args) => serve::serve(args, &g).await,
        Command::Dev(args) => serve::dev(args, &g).await,
        Command::Cluster(c) => cluster::run(c, &g).await,
        Command::Certs(c) => certs::run(c, &g).await,
        Command::Auth(c) => auth::run(c, &g).await,
        Command::Shard(c) => shard::run(c, &g).await,
        Command::Node(c) => node::run(c, &g).await,
        Command::Status => cluster::status(&g).await,
        Command::Health => cluster::health(&g).await,
        Command::Mkdir(a) => fs::mkdir(a, &g).await,
        Command::Ls(a) => fs::ls(a, &g).await,
        Command::Stat(a) => fs::stat(a, &g).await,
        Command::Touch(a) => fs::touch(a, &g).await,
        Command::Mv(a) => fs::mv(a, &g).await,
        Command::Rm(a) => fs::rm(a, &g).await,
        Command::Rmdir(a) => fs::rmdir(a, &g).await,
        Command::Ln(a) => fs::ln(a, &g).await,
        Command::Readlink(a) => fs::readlink(a, &g).await,
        Command::Xattr(c) => fs::xattr(c, &g).await,
        Command::Put(a) => body::put(a, &g).await,
        Command::Cat(a) => body::cat(a, &g).await,
        Command::Get(a) => body::get(a, &g).await,
        Command::PublishDir(a) => body::publish_dir(a, &g).await,
        Command::Gc(a) => body::gc(a, &g).await,
        Command::Fsck(a) => body::fsck(a, &g).await,
        Command::Uploads => body::uploads(&g).await,
        Command::Snapshot(c) => snapshot::run(c, &g).await,
        Command::Watch(a) => watch::run(a, &g).await,
        Command::WatchRetention(a) => watch::retention(a, &g).await,
        Command::Mount(a) => mount::mount(a, &g).await,
        Command::Umount(a) => mount::umount(a).await,
        Command::Gateway(a) => gateway::serve(a, &g).await,
        Command::Mcp(a) => gateway::mcp(a, &g).await,
        Command::Agent(a) => gateway::agent(a, &g).await,
        Command::Bench(a) => bench::run(a, &g).await,
        Command::Backup(a) => recovery::backup(a, &g).await,
        Command::Restore(a) => recovery::restore(a, &g).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn endpoints_are_global_before_or_after_the_subcommand() {
        let before =
            Cli::try_parse_from(["nokv", "--endpoints", "a:1,b:2", "ls", "/"]).expect("parse");
        let after =
            Cli::try_parse_from(["nokv", "ls", "/", "--endpoints", "a:1,b:2"]).expect("parse");
        assert_eq!(before.global.endpoints, vec!["a:1", "b:2"]);
        assert_eq!(after.global.endpoints, vec!["a:1", "b:2"]);
    }
}
