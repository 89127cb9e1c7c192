//! The Raft transport, client side: openraft's `RaftNetwork` over tonic.
//!
//! One lazily connected channel per peer node, shared by every Raft group
//! (shard) of this node that replicates to it ([`PeerPool`]); each message
//! names its group. Connection failures and timeouts are reported
//! as `Unreachable` so openraft backs off (see [`transport_error`]); a
//! remote Raft error travels back
//! inside the response and is returned as such. A channel whose requests
//! keep timing out is replaced by a fresh connection (see
//! [`RECONNECT_AFTER_TIMEOUTS`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nokv_proto::pb::raft_service_client::RaftServiceClient;
use nokv_proto::pb::RaftMessage;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::election::Elections;
use crate::lease::LeaseClock;
use crate::raft_wire;
use crate::typ::{NodeId, TypeConfig};

/// The connections of one node to its peers, shared by all its Raft groups:
/// one HTTP/2 connection per peer address however many shards replicate
/// over it. A connection is replaced only by the group that saw it fail and
/// only if no other group replaced it first ([`PeerPool::replace`]).
#[derive(Default)]
pub struct PeerPool {
    channels: Mutex<HashMap<String, PooledChannel>>,
    /// Named in every message (see `RaftMessage.cluster`).
    cluster: String,
    /// This node's TLS identity and the cluster CA, when TLS is on.
    tls: Option<crate::tls::NodeTls>,
}

#[derive(Clone)]
struct PooledChannel {
    /// Bumped on every replacement, so a stale failure report is ignored.
    generation: u64,
    client: RaftServiceClient<Channel>,
}

impl PeerPool {
    pub fn new(cluster: String, tls: Option<crate::tls::NodeTls>) -> PeerPool {
        PeerPool {
            channels: Mutex::default(),
            cluster,
            tls,
        }
    }

    /// The current connection to `addr` (opened lazily), or `None` for an
    /// address that is not a valid URI authority.
    fn get(&self, addr: &str) -> Option<PooledChannel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Some(c.clone());
        }
        let pooled = PooledChannel {
            generation: 0,
            client: connect_lazy(addr, self.tls.as_ref())?,
        };
        channels.insert(addr.to_string(), pooled.clone());
        Some(pooled)
    }

    /// Asks the node at `addr` for a read index of group `shard` (see
    /// `crate::read_index`), within `timeout`.
    pub async fn read_index(
        &self,
        addr: &str,
        shard: u16,
        timeout: Duration,
    ) -> Result<crate::read_index::ReadIndexAnswer, String> {
        let Some(mut peer) = self.get(addr).map(|c| c.client) else {
            return Err(format!("bad peer address {addr:?}"));
        };
        let mut request = tonic::Request::new(RaftMessage {
            data: Default::default(),
            shard: u32::from(shard),
            cluster: self.cluster.clone(),
        });
        request.set_timeout(timeout);
        let response = tokio::time::timeout(timeout, peer.read_index(request))
            .await
            .map_err(|_| format!("{addr} did not answer within {timeout:?}"))?
            .map_err(|status| format!("{addr}: {}", status.message()))?;
        raft_wire::decode(&response.into_inner().data).map_err(|e| format!("{addr}: {e}"))
    }

    /// Replaces the connection to `addr` if it is still `generation`;
    /// returns the connection to use from now on.
    fn replace(&self, addr: &str, generation: u64) -> Option<PooledChannel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        match channels.get(addr) {
            Some(c) if c.generation != generation => return Some(c.clone()),
            _ => {}
        }
        let pooled = PooledChannel {
            generation: generation + 1,
            client: connect_lazy(addr, self.tls.as_ref())?,
        };
        channels.insert(addr.to_string(), pooled.clone());
        Some(pooled)
    }
}

/// Creates one [`PeerClient`] per target node for one Raft group.
#[derive(Clone)]
pub struct GrpcNetworkFactory {
    /// The group (shard) every message of this factory's clients names.
    shard: u16,
    pool: Arc<PeerPool>,
    /// Told of every vote answer (see [`Elections`]); none in tests.
    elections: Option<Arc<Elections>>,
    /// Round trips of AppendEntries that carry entries.
    replicate_seconds: Option<prometheus::Histogram>,
    /// Told when a follower accepts an AppendEntries (see `crate::lease`).
    lease: Option<Arc<LeaseClock>>,
}

impl GrpcNetworkFactory {
    pub fn new(
        shard: u16,
        pool: Arc<PeerPool>,
        elections: Arc<Elections>,
        replicate_seconds: prometheus::Histogram,
        lease: Arc<LeaseClock>,
    ) -> GrpcNetworkFactory {
        GrpcNetworkFactory {
            shard,
            pool,
            elections: Some(elections),
            replicate_seconds: Some(replicate_seconds),
            lease: Some(lease),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let mut client = PeerClient::new(target, &node.addr, self.shard, self.pool.clone());
        client.elections = self.elections.clone();
        client.replicate_seconds = self.replicate_seconds.clone();
        client.lease = self.lease.clone();
        client
    }
}

/// After this many RPCs in a row to one peer timed out, its connection is
/// dropped and the next RPC opens a new one.
///
/// openraft 0.9 gives an AppendEntries one heartbeat interval (50 ms). To a
/// frozen peer (paused, or its host stalled) every heartbeat opens an
/// HTTP/2 stream that the deadline then resets; when the peer wakes up, its
/// server finds hundreds of reset streams queued, and the connection stayed
/// unusable for seconds while the peer was needed for a quorum (Jepsen
/// ledger entry 4). A fresh TCP connection carries none of that backlog.
pub const RECONNECT_AFTER_TIMEOUTS: u32 = 3;

/// HTTP/2 keepalive on peer connections: a connection whose peer does not
/// answer a ping within the timeout is closed, so a half-open connection is
/// noticed in about a second even when no RPC is timing out.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// One Raft group's link to one peer, over the node's shared connection.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    shard: u16,
    pool: Arc<PeerPool>,
    client: Option<PooledChannel>,
    /// RPCs in a row that got no answer: timed out, or still running when
    /// openraft dropped them at its own deadline (so this is counted when
    /// an RPC starts and cleared when one is answered).
    unanswered: u32,
    /// Connections replaced so far (for logs and tests).
    reconnects: u64,
    /// Bytes of entries the next AppendEntries may carry (see
    /// [`MIN_APPEND_BYTES`]).
    append_budget: u64,
    elections: Option<Arc<Elections>>,
    replicate_seconds: Option<prometheus::Histogram>,
    lease: Option<Arc<LeaseClock>>,
}

fn connect_lazy(
    addr: &str,
    tls: Option<&crate::tls::NodeTls>,
) -> Option<RaftServiceClient<Channel>> {
    crate::tls::peer_endpoint(addr, tls)
        .map_err(|e| tracing::warn!(error = %e, "cannot connect to a peer"))
        .ok()
        .map(|e| {
            e.connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .connect_lazy()
        })
        .map(|ch| {
            RaftServiceClient::new(ch)
                .max_decoding_message_size(nokv_proto::MAX_RAFT_MESSAGE)
                .max_encoding_message_size(nokv_proto::MAX_RAFT_MESSAGE)
        })
}

impl PeerClient {
    fn new(target: NodeId, addr: &str, shard: u16, pool: Arc<PeerPool>) -> PeerClient {
        PeerClient {
            target,
            addr: addr.to_string(),
            shard,
            client: pool.get(addr),
            pool,
            unanswered: 0,
            reconnects: 0,
            append_budget: MAX_APPEND_BYTES,
            elections: None,
            replicate_seconds: None,
            lease: None,
        }
    }

    /// Called as an RPC starts: replaces the connection when the last
    /// [`RECONNECT_AFTER_TIMEOUTS`] RPCs all went unanswered.
    fn starting_rpc(&mut self) {
        if self.unanswered >= RECONNECT_AFTER_TIMEOUTS {
            self.unanswered = 0;
            self.reconnects += 1;
            tracing::info!(
                target_node = self.target,
                addr = %self.addr,
                reconnects = self.reconnects,
                "{RECONNECT_AFTER_TIMEOUTS} Raft RPCs in a row went unanswered: replacing the connection"
            );
            let generation = self.client.as_ref().map_or(0, |c| c.generation);
            self.client = self.pool.replace(&self.addr, generation);
        }
        self.unanswered += 1;
    }

    /// Sends `req` through `call` and decodes `Result<Resp, RaftError<E>>`.
    async fn rpc<Req, Resp, E, F, Fut>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<RaftMessage>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        self.starting_rpc();
        let Some(client) = self.client.as_ref().map(|c| c.client.clone()) else {
            let err = std::io::Error::other(format!("bad peer address {:?}", self.addr));
            return Err(RPCError::Unreachable(Unreachable::new(&err)));
        };
        let data = raft_wire::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftMessage {
            data,
            shard: u32::from(self.shard),
            cluster: self.pool.cluster.clone(),
        });
        request.set_timeout(option.hard_ttl());
        let response = call(client, request).await;
        let answered = !matches!(
            &response,
            Err(status) if matches!(
                status.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            )
        );
        if answered {
            self.unanswered = 0;
        }
        let response = response.map_err(transport_error)?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            raft_wire::decode(&response.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// What openraft makes of a failed call: a peer that cannot be reached or
/// did not answer in time (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, or
/// `CANCELLED` by the channel's own timeout) is `Unreachable`, on which
/// openraft pauses replication to it for [`RaftNetwork::backoff`].
///
/// Tried and undone (2026-12-06): treating a timeout as a plain network
/// error, retried at once, so that a merely slow peer is not paused for
/// 200 ms. On a slow link that piled retries behind the snapshot chunks
/// and cost elections (`cluster.rs`,
/// `a_follower_on_a_slow_link_catches_up_by_snapshot_without_an_election`).
fn transport_error<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, BasicNode, E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

/// Largest AppendEntries payload sent in one RPC; the rest follows in the
/// next one (openraft's `PartialSuccess`).
///
/// openraft 0.9 gives every AppendEntries one heartbeat interval (50 ms by
/// default) to complete. A follower catching up after a partition or a
/// restart is sent up to `max_payload_entries` group-committed entries at
/// once, megabytes that cannot be written, fsynced and acknowledged in
/// 50 ms: the RPC timed out, was retried whole, timed out again, and the
/// follower never caught up. With a failed peer that left the cluster
/// without a quorum for 15-60 s (found by the Jepsen long run).
pub const MAX_APPEND_BYTES: u64 = 256 * 1024;

/// Smallest AppendEntries budget a slow link shrinks it to, and the step
/// by which it grows back.
///
/// A fixed 256 KiB needs 5 MiB/s to cross within a 50 ms heartbeat
/// interval. On a slower or congested link (a starved 2-core host, a
/// follower catching up after a snapshot of large entries) every such
/// RPC timed out and was resent whole, forever, and the follower, hearing
/// nothing in time, stood for election (docs/jepsen.md, ledger entry 5).
/// So each link has its own budget: halved whenever the previous RPC went
/// unanswered, grown by this step after each answered one that carried
/// entries (additive increase, multiplicative decrease, as TCP).
pub const MIN_APPEND_BYTES: u64 = 16 * 1024;

/// The budget for the next AppendEntries after one that went unanswered
/// (`timed_out`) or was answered carrying entries (`!timed_out`).
fn next_append_budget(budget: u64, timed_out: bool) -> u64 {
    if timed_out {
        (budget / 2).max(MIN_APPEND_BYTES)
    } else {
        (budget + MIN_APPEND_BYTES).min(MAX_APPEND_BYTES)
    }
}

/// How many of `entries` to send: the longest prefix within `budget` bytes,
/// and at least one entry (a single entry larger than the budget goes
/// alone).
fn entries_within<T: Serialize>(entries: &[T], budget: u64) -> usize {
    let mut used = 0u64;
    for (i, entry) in entries.iter().enumerate() {
        // An entry that cannot be sized is sent alone, where encoding will
        // report the problem.
        used = used.saturating_add(raft_wire::encoded_len(entry).unwrap_or(u64::MAX));
        if used > budget {
            return i.max(1);
        }
    }
    entries.len()
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        if self.unanswered > 0 {
            self.append_budget = next_append_budget(self.append_budget, true);
        }
        let keep = entries_within(&rpc.entries, self.append_budget);
        let carries_entries = !rpc.entries.is_empty();
        let truncated_to = if keep < rpc.entries.len() {
            rpc.entries.truncate(keep);
            rpc.entries.last().map(|e| e.log_id)
        } else {
            None
        };
        let started = tokio::time::Instant::now();
        let term = rpc.vote.leader_id().get_term();
        let response = self
            .rpc(&rpc, &option, |mut c, r| async move {
                c.append_entries(r).await
            })
            .await?;
        // Any answer but HigherVote means the follower accepted our vote
        // and restarted its vote lease when the message arrived, after
        // `started`.
        if let (Some(lease), false) = (
            &self.lease,
            matches!(response, AppendEntriesResponse::HigherVote(_)),
        ) {
            lease.acked(self.target, term, started);
        }
        if carries_entries {
            self.append_budget = next_append_budget(self.append_budget, false);
            if let Some(h) = &self.replicate_seconds {
                h.observe(started.elapsed().as_secs_f64());
            }
        }
        // The follower took everything we sent: tell openraft how far that
        // is, and it sends the rest next.
        Ok(match (response, truncated_to) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (response, _) => response,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let vote = rpc.vote;
        let mut answer = None;
        for piece in snapshot_pieces(rpc) {
            let response: InstallSnapshotResponse<NodeId> = self
                .rpc(&piece, &option, |mut c, r| async move {
                    c.install_snapshot(r).await
                })
                .await?;
            // A refusal (the answer carries another vote) ends the chunk.
            let refused = response.vote != vote;
            answer = Some(response);
            if refused {
                break;
            }
        }
        answer.ok_or_else(|| {
            let err = std::io::Error::other("a snapshot chunk with no piece to send");
            RPCError::Network(NetworkError::new(&err))
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let answer = self
            .rpc(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await?;
        match &self.elections {
            Some(elections) => {
                elections.after_refused(&rpc, &answer);
                Ok(elections.presented(&rpc, answer))
            }
            None => Ok(answer),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A dead peer is retried every 200 ms: short enough that a restarted
        // node rejoins quickly, long enough not to spin.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

/// The first piece of a snapshot a follower is sent, in bytes.
///
/// A follower holds its election timer while snapshot chunks arrive
/// (`crate::idle`), but only from the first chunk it accepts; until then
/// its heartbeats queue behind that chunk on a slow link. A 1 MiB first
/// chunk took longer than a restarted follower's first election timeout on
/// a 1 MiB/s link under load (`cluster.rs
/// a_follower_on_a_slow_link_catches_up_by_snapshot_without_an_election`
/// failed 2 runs in 4 with both cores busy): it stood for election, and
/// the leader, refusing its short log, stood too (terms 1 to 5). So the
/// first chunk goes as a small piece, then the rest.
pub const FIRST_SNAPSHOT_PIECE: usize = 64 * 1024;

/// The RPCs that carry one `InstallSnapshot` chunk: the chunk itself, or,
/// for a snapshot's first chunk larger than [`FIRST_SNAPSHOT_PIECE`], that
/// many bytes (not `done`) and then the rest.
fn snapshot_pieces(
    rpc: InstallSnapshotRequest<TypeConfig>,
) -> Vec<InstallSnapshotRequest<TypeConfig>> {
    if rpc.offset != 0 || rpc.data.len() <= FIRST_SNAPSHOT_PIECE {
        return vec![rpc];
    }
    let mut first = rpc.clone();
    first.data.truncate(FIRST_SNAPSHOT_PIECE);
    first.done = false;
    let mut rest = rpc;
    rest.data.drain(..FIRST_SNAPSHOT_PIECE);
    rest.offset = FIRST_SNAPSHOT_PIECE as u64;
    vec![first, rest]
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use openraft::network::{RPCOption, RaftNetwork};
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::Vote;

    use crate::typ::TypeConfig;

    use super::{
        entries_within, next_append_budget, PeerClient, MAX_APPEND_BYTES, MIN_APPEND_BYTES,
        RECONNECT_AFTER_TIMEOUTS,
    };

    /// A peer that accepts TCP connections and never says a word (a frozen
    /// process: the kernel completes the handshake, nobody reads).
    async fn frozen_peer() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let addr = listener.local_addr().expect("local addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        (addr, accepted)
    }

    async fn wait_for_accepts(accepted: &AtomicUsize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while accepted.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "expected {n} connections, saw {}",
                accepted.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_gets_a_fresh_connection() {
        let (addr, accepted) = frozen_peer().await;
        let mut peer = PeerClient::new(2, &addr, 0, Arc::default());
        let option = RPCOption::new(Duration::from_millis(50));
        let vote = || VoteRequest::new(Vote::new(1, 1), None);
        for i in 0..RECONNECT_AFTER_TIMEOUTS {
            let result = peer.vote(vote(), option.clone()).await;
            assert!(result.is_err(), "RPC {i} to a silent peer succeeded");
        }
        wait_for_accepts(&accepted, 1).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection so far");
        assert_eq!(peer.reconnects, 0);
        // The next RPC starts on a new connection.
        assert!(peer.vote(vote(), option.clone()).await.is_err());
        assert_eq!(peer.reconnects, 1);
        wait_for_accepts(&accepted, 2).await;
    }

    #[test]
    fn a_snapshot_starts_with_a_small_piece() {
        use openraft::raft::InstallSnapshotRequest;
        use openraft::SnapshotMeta;
        let chunk = |offset: u64, len: usize, done: bool| InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            meta: SnapshotMeta::default(),
            offset,
            data: (0..len).map(|i| i as u8).collect(),
            done,
        };
        let whole = chunk(0, 1024 * 1024, true);
        let pieces = super::snapshot_pieces(whole.clone());
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].offset, 0);
        assert_eq!(pieces[0].data.len(), super::FIRST_SNAPSHOT_PIECE);
        assert!(!pieces[0].done);
        assert_eq!(pieces[1].offset, super::FIRST_SNAPSHOT_PIECE as u64);
        assert!(pieces[1].done);
        let joined: Vec<u8> = pieces.iter().flat_map(|p| p.data.clone()).collect();
        assert_eq!(
            joined, whole.data,
            "the pieces carry the chunk's bytes in order"
        );
        // Later chunks, and small first ones, go whole.
        assert_eq!(
            super::snapshot_pieces(chunk(1 << 20, 1 << 20, false)).len(),
            1
        );
        assert_eq!(super::snapshot_pieces(chunk(0, 1000, true)).len(), 1);
    }

    #[test]
    fn unanswered_calls_pause_replication_other_failures_do_not() {
        use openraft::error::{Infallible, RPCError};
        let error = |code| super::transport_error::<Infallible>(tonic::Status::new(code, "x"));
        for unanswered in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Cancelled,
        ] {
            assert!(
                matches!(error(unanswered), RPCError::Unreachable(_)),
                "{unanswered:?}"
            );
        }
        assert!(matches!(error(tonic::Code::Internal), RPCError::Network(_)));
    }

    #[test]
    fn append_payloads_are_cut_to_the_byte_budget_but_never_empty() {
        // Each Vec<u8> of n bytes encodes to n + 8 bytes (length prefix).
        let entries: Vec<Vec<u8>> = vec![vec![0; 92]; 10]; // 100 bytes each
        assert_eq!(entries_within(&entries, 1_000), 10);
        assert_eq!(entries_within(&entries, 999), 9);
        assert_eq!(entries_within(&entries, 250), 2);
        // One entry larger than the budget still goes, alone.
        assert_eq!(entries_within(&entries, 10), 1);
        let none: Vec<Vec<u8>> = Vec::new();
        assert_eq!(entries_within(&none, 10), 0);
    }

    #[test]
    fn a_link_that_times_out_gets_smaller_appends_and_grows_back() {
        let mut budget = MAX_APPEND_BYTES;
        let mut halvings = 0;
        while budget > MIN_APPEND_BYTES {
            budget = next_append_budget(budget, true);
            halvings += 1;
        }
        assert_eq!(halvings, 4, "256 KiB to 16 KiB in four timeouts");
        assert_eq!(next_append_budget(budget, true), MIN_APPEND_BYTES);
        let mut answered = 0;
        while budget < MAX_APPEND_BYTES {
            budget = next_append_budget(budget, false);
            answered += 1;
        }
        assert_eq!(answered, 15, "back to full size one step per answer");
        assert_eq!(next_append_budget(budget, false), MAX_APPEND_BYTES);
    }

    #[tokio::test]
    async fn an_unanswered_append_halves_the_next_one() {
        let (addr, _accepted) = frozen_peer().await;
        let mut peer = PeerClient::new(2, &addr, 0, Arc::default());
        let option = RPCOption::new(Duration::from_millis(50));
        let heartbeat = || AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        assert!(peer
            .append_entries(heartbeat(), option.clone())
            .await
            .is_err());
        assert_eq!(
            peer.append_budget, MAX_APPEND_BYTES,
            "nothing failed before"
        );
        assert!(peer
            .append_entries(heartbeat(), option.clone())
            .await
            .is_err());
        assert_eq!(peer.append_budget, MAX_APPEND_BYTES / 2);
    }
}
