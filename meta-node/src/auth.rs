//! Who may call this node's `MetaService`, and what for.
//!
//! Off by default (every caller is trusted, as on loopback with `nokv
//! dev`). With `nokv serve --require-auth`, every RPC and every watch
//! stream must carry `authorization: Bearer nokv_...` (see
//! `nokv_proto::auth`) naming a token whose role covers the call
//! ([`required_role`]):
//!
//! - the bootstrap admin token of `--admin-token-file`, held in memory
//!   only; the node also uses it for its own calls to other nodes (shard
//!   admin, leadership transfer), so every node of the cluster gets it;
//! - or a token of shard 0's table, looked up in this node's replica of
//!   shard 0 (a revocation takes effect on a node as it applies it). A
//!   node that hosts no replica of shard 0 accepts only the bootstrap
//!   token and says so.
//!
//! Refusals: `UNAUTHENTICATED` (no token, malformed, unknown or revoked)
//! and `PERMISSION_DENIED` (a role below the call's); both change nothing,
//! since the check runs before the request is looked at. Neither a
//! refusal nor a log line names more of a token than its id.
//!
//! Must not depend on: the client SDK or the CLI.

use std::sync::Arc;

use nokv_holt::{same_hash, Role, ShardId};
use nokv_proto::auth::{bearer_token, Token};
use nokv_proto::{status_from_detail, ErrorCode};
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::host::ShardHost;

/// `--require-auth` and the token that bootstraps it.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Accepted as admin without being in any table (`--admin-token-file`);
    /// also what the node presents on its own calls to other nodes.
    pub admin_token: Token,
}

/// The check every `MetaService` call goes through.
pub(crate) struct Auth {
    bootstrap_id: u64,
    bootstrap_sha256: [u8; 32],
    host: Arc<ShardHost>,
}

impl Auth {
    pub(crate) fn new(config: &AuthConfig, host: Arc<ShardHost>) -> Auth {
        Auth {
            bootstrap_id: config.admin_token.id(),
            bootstrap_sha256: config.admin_token.secret_sha256(),
            host,
        }
    }

    /// Ok if the call's token has at least role `need`.
    pub(crate) fn check(&self, metadata: &MetadataMap, need: Role) -> Result<(), Status> {
        let token = match bearer_token(metadata) {
            Ok(Some(token)) => token,
            Ok(None) => {
                return Err(unauthenticated(
                    "this cluster requires a token: pass --token or set NOKV_TOKEN \
                     (see docs/security.md)"
                        .into(),
                ))
            }
            Err(e) => return Err(unauthenticated(format!("the token is not usable: {e}"))),
        };
        let role = self.role_of(&token)?;
        if role < need {
            return Err(status_from_detail(
                ErrorCode::PermissionDenied,
                format!(
                    "token {:016x} has the {role} role; this call needs {need}",
                    token.id()
                ),
            ));
        }
        Ok(())
    }

    fn role_of(&self, token: &Token) -> Result<Role, Status> {
        let hash = token.secret_sha256();
        if token.id() == self.bootstrap_id && same_hash(&hash, &self.bootstrap_sha256) {
            return Ok(Role::Admin);
        }
        let Some(root) = self.host.get(ShardId(0)) else {
            return Err(status_from_detail(
                ErrorCode::Unavailable,
                "this node hosts no replica of shard 0, where tokens are kept: it accepts \
                 only the bootstrap admin token; call a node that hosts shard 0"
                    .into(),
            ));
        };
        root.client.token_role(token.id(), &hash)?.ok_or_else(|| {
            unauthenticated(format!("token {:016x} is unknown or revoked", token.id()))
        })
    }
}

fn unauthenticated(message: String) -> Status {
    status_from_detail(ErrorCode::Unauthenticated, message)
}

/// The role a `MetaService` call needs (see docs/security.md).
pub(crate) fn required_role(call: Call<'_>) -> Role {
    use nokv_proto::pb::mutate_request::Op as PbOp;
    match call {
        Call::Read => Role::Read,
        // Watch retention bounds what every watcher can replay: admin.
        Call::Mutate(Some(PbOp::SetWatchRetention(_))) => Role::Admin,
        Call::Mutate(_) | Call::Write => Role::Write,
        Call::Gc { ignore_grace } => {
            if ignore_grace {
                Role::Admin
            } else {
                Role::Write
            }
        }
        Call::Admin => Role::Admin,
    }
}

/// A `MetaService` call, as far as [`required_role`] tells them apart.
pub(crate) enum Call<'a> {
    /// Query, Watch, Status, NodeStatus, GetShardMap.
    Read,
    Mutate(Option<&'a nokv_proto::pb::mutate_request::Op>),
    /// CheckBlocks (a step of a publish).
    Write,
    Gc {
        ignore_grace: bool,
    },
    /// InitCluster, Fsck, Backup, HostShard, Create/RemoveShard,
    /// ChangeVoters, TransferLeader, Campaign, Membership, tokens.
    Admin,
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_proto::pb;

    #[test]
    fn roles_per_call() {
        let retention = pb::mutate_request::Op::SetWatchRetention(pb::SetWatchRetentionOp {
            max_events: 1,
            max_age_ms: 1,
        });
        let mkdir = pb::mutate_request::Op::Mkdir(pb::MkdirOp::default());
        assert_eq!(required_role(Call::Read), Role::Read);
        assert_eq!(required_role(Call::Mutate(Some(&mkdir))), Role::Write);
        assert_eq!(required_role(Call::Mutate(Some(&retention))), Role::Admin);
        assert_eq!(
            required_role(Call::Gc {
                ignore_grace: false
            }),
            Role::Write
        );
        assert_eq!(required_role(Call::Gc { ignore_grace: true }), Role::Admin);
        assert_eq!(required_role(Call::Admin), Role::Admin);
    }
}
