//! `nokv auth token ...`: access tokens of a cluster started with
//! `nokv serve --require-auth` (see docs/security.md).
//!
//! `generate` makes a token locally, without a cluster: the bootstrap admin
//! token every node reads from `--admin-token-file`. `create`, `revoke`
//! and `ls` are an admin's calls to the cluster.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use nokv_client::{generate_token, parse_token_id, TokenRole};
use serde_json::json;

use crate::output::print_json;
use crate::GlobalArgs;

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Access tokens: create, revoke, ls, generate.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token (admin). Prints it once: keep it, the cluster stores
    /// only a hash of its secret. Clients pass it with --token or NOKV_TOKEN.
    ///
    /// Example: nokv auth token create --role read-only --label dashboards
    Create(CreateArgs),
    /// Revoke a token by id (admin): calls that carry it are refused.
    ///
    /// Example: nokv auth token revoke 3f2a9c0d11e4b7a8
    Revoke {
        /// The id `nokv auth token ls` shows (or the whole token).
        id: String,
    },
    /// List the tokens (admin): id, role, label, creation time; never secrets.
    Ls,
    /// Make a new token locally, without a cluster: the bootstrap admin
    /// token for `nokv serve --require-auth --admin-token-file FILE` (give
    /// every node the same file).
    ///
    /// Example: nokv auth token generate --out admin.token
    Generate(GenerateArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// read-only (read), read-write (write) or admin.
    #[arg(long)]
    pub role: TokenRole,
    /// What the token is for (shown by `ls`).
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Write the token to this file (readable by its owner only) instead
    /// of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(c: AuthCommand, g: &GlobalArgs) -> anyhow::Result<()> {
    let AuthCommand::Token(c) = c;
    match c {
        TokenCommand::Create(a) => {
            let client = g.client()?;
            let token = client
                .create_token(a.role, &a.label)
                .await
                .context("creating the token")?;
            if g.json {
                print_json(&json!({
                    "id": format!("{:016x}", token.id()),
                    "role": a.role.to_string(),
                    "label": a.label,
                    "token": token.reveal(),
                }));
            } else {
                outln!("{}", token.reveal());
                eprintln!(
                    "token {:016x} ({}) created; it is shown only now",
                    token.id(),
                    a.role
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let id = parse_token_id(&id)?;
            g.client()?
                .revoke_token(id)
                .await
                .context("revoking the token")?;
            if g.json {
                print_json(&json!({ "revoked": format!("{id:016x}") }));
            } else {
                outln!("revoked token {id:016x}");
            }
        }
        TokenCommand::Ls => {
            let tokens = g.client()?.list_tokens().await.context("listing tokens")?;
            if g.json {
                let list: Vec<_> = tokens
                    .iter()
                    .map(|t| {
                        json!({
                            "id": t.id,
                            "role": t.role,
                            "label": t.label,
                            "created_ns": t.created_ns,
                        })
                    })
                    .collect();
                print_json(&json!({ "tokens": list }));
            } else {
                outln!("{:<16}  {:<5}  {:<20}  LABEL", "ID", "ROLE", "CREATED");
                for t in &tokens {
                    outln!(
                        "{:<16}  {:<5}  {:<20}  {}",
                        t.id,
                        t.role,
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(t.created_ns)
                        ),
                        t.label
                    );
                }
            }
        }
        TokenCommand::Generate(a) => {
            let token = generate_token();
            match &a.out {
                Some(path) => {
                    let text = format!("{}\n", token.reveal());
                    crate::certs::write_new(path, text.as_bytes(), true, a.force)?;
                    if g.json {
                        print_json(&json!({
                            "id": format!("{:016x}", token.id()),
                            "file": path,
                        }));
                    } else {
                        outln!("wrote token {:016x} to {}", token.id(), path.display());
                    }
                }
                None if g.json => print_json(&json!({
                    "id": format!("{:016x}", token.id()),
                    "token": token.reveal(),
                })),
                None => outln!("{}", token.reveal()),
            }
        }
    }
    Ok(())
}
