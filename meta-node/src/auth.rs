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
//! - or a token of shard 0's table: looked up in this node's replica of
//!   shard 0 (a revocation takes effect on a node as it applies it), or,
//!   on a node that hosts no replica of shard 0, asked of one with
//!   `LookupToken` (found through the shard map, authorized by the
//!   bootstrap token) and remembered for [`LOOKUP_TTL`]: there a
//!   revocation takes effect within that time.
//!
//! Refusals: `UNAUTHENTICATED` (no token, malformed, unknown or revoked)
//! and `PERMISSION_DENIED` (a role below the call's); both change nothing,
//! since the check runs before the request is looked at. Neither a
//! refusal nor a log line names more of a token than its id.
//!
//! Must not depend on: the client SDK or the CLI.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nokv_holt::{same_hash, Role, ShardId};
use nokv_proto::auth::{bearer_token, Token, AUTHORIZATION};
use nokv_proto::{pb, status_from_detail, ErrorCode};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::Status;

use crate::control::MapView;
use crate::host::ShardHost;
use crate::tls::NodeTls;

/// How long a node that hosts no replica of shard 0 trusts a replica's
/// answer about a token (found or not): the longest a revocation takes to
/// reach it, and at most one lookup per token and node in that time.
pub const LOOKUP_TTL: Duration = Duration::from_secs(2);
/// A lookup on one replica of shard 0, connecting included.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers remembered at most (one per token id); past it the stale ones
/// go, and if all are fresh, all go.
const LOOKUP_CACHE: usize = 4096;

/// `--require-auth` and the token that bootstraps it.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Accepted as admin without being in any table (`--admin-token-file`);
    /// also what the node presents on its own calls to other nodes.
    pub admin_token: Token,
}

/// The check every `MetaService` call goes through.
pub(crate) struct Auth {
    admin_token: Token,
    /// This node's id.
    node_id: u64,
    host: Arc<ShardHost>,
    /// Where shard 0's replicas are, when this node follows a control plane.
    maps: Option<MapView>,
    tls: Option<NodeTls>,
    remembered: Mutex<Remembered>,
}

impl Auth {
    pub(crate) fn new(
        config: &AuthConfig,
        node_id: u64,
        host: Arc<ShardHost>,
        maps: Option<MapView>,
        tls: Option<NodeTls>,
    ) -> Auth {
        Auth {
            admin_token: config.admin_token.clone(),
            node_id,
            host,
            maps,
            tls,
            remembered: Mutex::default(),
        }
    }

    /// Ok if the call's token has at least role `need`.
    pub(crate) async fn check(&self, metadata: &MetadataMap, need: Role) -> Result<(), Status> {
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
        let role = self.role_of(&token).await?.ok_or_else(|| {
            unauthenticated(format!("token {:016x} is unknown or revoked", token.id()))
        })?;
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

    async fn role_of(&self, token: &Token) -> Result<Option<Role>, Status> {
        let hash = token.secret_sha256();
        if token.id() == self.admin_token.id()
            && same_hash(&hash, &self.admin_token.secret_sha256())
        {
            return Ok(Some(Role::Admin));
        }
        if let Some(root) = self.host.get(ShardId(0)) {
            return root.client.token_role(token.id(), &hash);
        }
        let now = Instant::now();
        if let Some(known) = self.remembered().get(token.id(), &hash, now) {
            return Ok(known);
        }
        let role = self.ask_shard_0(token.id(), &hash).await?;
        self.remembered().put(token.id(), hash, role, now);
        Ok(role)
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the replicas of shard 0 the shard map lists (its last known
    /// leader first) until one answers.
    async fn ask_shard_0(&self, id: u64, hash: &[u8; 32]) -> Result<Option<Role>, Status> {
        let addrs = self.shard_0_addrs();
        if addrs.is_empty() {
            return Err(status_from_detail(
                ErrorCode::Unavailable,
                "this node hosts no replica of shard 0, where tokens are kept, and knows of no \
                 node that does (it follows no control plane): it accepts only the bootstrap \
                 admin token; call a node that hosts shard 0"
                    .into(),
            ));
        }
        let mut failures = Vec::new();
        for addr in addrs {
            match self.lookup_at(&addr, id, hash).await {
                Ok(role) => return Ok(role),
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        tracing::warn!(failures = ?failures, "no replica of shard 0 answered a token lookup");
        Err(status_from_detail(
            ErrorCode::Unavailable,
            format!(
                "this node hosts no replica of shard 0, where tokens are kept, and none \
                 answered its token lookup ({}); retry, or call a node that hosts shard 0",
                failures.join("; ")
            ),
        ))
    }

    fn shard_0_addrs(&self) -> Vec<String> {
        let Some(seen) = self.maps.as_ref().and_then(|m| m.borrow().clone()) else {
            return Vec::new();
        };
        let map = &seen.map;
        let Some(root) = map.shards.get(&nokv_router::ShardId(0)) else {
            return Vec::new();
        };
        let me = nokv_router::NodeId(self.node_id);
        let mut order: Vec<nokv_router::NodeId> = root.leader_hint.into_iter().collect();
        for id in root.members.iter().chain(&root.learners) {
            if !order.contains(id) {
                order.push(*id);
            }
        }
        order
            .into_iter()
            .filter(|id| *id != me)
            .filter_map(|id| map.nodes.get(&id).map(|n| n.addr.clone()))
            .collect()
    }

    /// One `LookupToken` call, bounded as a whole.
    async fn lookup_at(
        &self,
        addr: &str,
        id: u64,
        hash: &[u8; 32],
    ) -> Result<Option<Role>, String> {
        let channel = self.channel(addr)?;
        let mut request = tonic::Request::new(pb::LookupTokenRequest {
            id,
            secret_sha256: hash.to_vec(),
        });
        request
            .metadata_mut()
            .insert(AUTHORIZATION, self.admin_token.header_value());
        let mut stub = pb::meta_service_client::MetaServiceClient::new(channel);
        let call = stub.lookup_token(request);
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, call)
            .await
            .map_err(|_| format!("no answer within {LOOKUP_TIMEOUT:?}"))?
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        if answer.role.is_empty() {
            return Ok(None);
        }
        answer
            .role
            .parse()
            .map(Some)
            .map_err(|e: String| format!("an unusable answer: {e}"))
    }

    /// A connection to `addr`, made on first use and kept (it reconnects by
    /// itself).
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut remembered = self.remembered();
        if let Some(channel) = remembered.channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = crate::tls::peer_endpoint(addr, self.tls.as_ref())?
            .connect_timeout(LOOKUP_TIMEOUT)
            .timeout(LOOKUP_TIMEOUT)
            .connect_lazy();
        remembered
            .channels
            .insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Answers from replicas of shard 0, by token id, and connections to them.
#[derive(Default)]
struct Remembered {
    answers: HashMap<u64, Answer>,
    channels: HashMap<String, Channel>,
}

struct Answer {
    secret_sha256: [u8; 32],
    role: Option<Role>,
    at: Instant,
}

impl Remembered {
    /// A fresh answer for this very token (id and secret), if any.
    fn get(&self, id: u64, hash: &[u8; 32], now: Instant) -> Option<Option<Role>> {
        let answer = self.answers.get(&id)?;
        let fresh = now.saturating_duration_since(answer.at) < LOOKUP_TTL;
        (fresh && same_hash(&answer.secret_sha256, hash)).then_some(answer.role)
    }

    fn put(&mut self, id: u64, secret_sha256: [u8; 32], role: Option<Role>, at: Instant) {
        if self.answers.len() >= LOOKUP_CACHE && !self.answers.contains_key(&id) {
            self.answers
                .retain(|_, a| at.saturating_duration_since(a.at) < LOOKUP_TTL);
            if self.answers.len() >= LOOKUP_CACHE {
                self.answers.clear();
            }
        }
        self.answers.insert(
            id,
            Answer {
                secret_sha256,
                role,
                at,
            },
        );
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

    #[test]
    fn remembered_answers_expire_and_name_one_secret() {
        let start = Instant::now();
        let mut r = Remembered::default();
        r.put(7, [1; 32], Some(Role::Write), start);
        r.put(8, [2; 32], None, start);
        assert_eq!(r.get(7, &[1; 32], start), Some(Some(Role::Write)));
        assert_eq!(
            r.get(8, &[2; 32], start),
            Some(None),
            "a refusal is remembered too"
        );
        assert_eq!(
            r.get(7, &[9; 32], start),
            None,
            "another secret is not this token"
        );
        assert_eq!(r.get(9, &[1; 32], start), None);
        assert_eq!(r.get(7, &[1; 32], start + LOOKUP_TTL), None, "stale");
    }

    #[test]
    fn remembered_answers_are_bounded() {
        let start = Instant::now();
        let mut r = Remembered::default();
        for id in 0..LOOKUP_CACHE as u64 {
            r.put(id, [0; 32], Some(Role::Read), start);
        }
        // Full of fresh answers: all go.
        r.put(u64::MAX, [0; 32], Some(Role::Read), start);
        assert_eq!(r.answers.len(), 1);
        for id in 0..LOOKUP_CACHE as u64 - 1 {
            r.put(id, [0; 32], Some(Role::Read), start);
        }
        // Full again, now with stale answers: only those go.
        let later = start + LOOKUP_TTL;
        r.put(u64::MAX - 1, [0; 32], Some(Role::Read), later);
        r.put(u64::MAX - 2, [0; 32], Some(Role::Read), later);
        assert_eq!(r.answers.len(), 2);
    }
}
