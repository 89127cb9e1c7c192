//! The client: routing, retries and convenience calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use nokv_holt::{
    Applied, Attr, BodySummary, DirEntry, EntryRef, InodeRef, Op, Query, QueryResult, RenameMode,
    RequestId, SetAttr, ShardId, SnapshotId, XattrFlag,
};
use nokv_proto::auth::Token;
use nokv_proto::pb::meta_service_client::MetaServiceClient;
use nokv_proto::pb::{self, ErrorDetail};
use nokv_proto::{detail_of, Mutation, Read, ReadConsistency};
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::coalesce::{Calls, Coalescer, CoalescingStats};
use crate::error::ClientError;
use crate::routing;
use nokv_router::ShardMap;

/// How many times one request may be sent again by a newer map. Each
/// reroute needs a strictly newer map, so this only bounds a map that keeps
/// changing; creating a shard alone makes several revisions in a row.
const MAX_REROUTES: u32 = 16;

/// How many `STALE_EPOCH` refusals one write follows (each names a newer epoch;
/// more in a row means leadership is changing faster than the write can land).
const MAX_EPOCH_REFUSALS: u32 = 5;

/// How many requests of one [`Client::mutate_many`] are in flight at once.
pub const BULK_IN_FLIGHT: usize = 1024;

/// Default of [`ClientConfig::coalesce`].
pub const DEFAULT_COALESCE: usize = 4;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Sees every write acknowledged before the read started (read-index).
    #[default]
    Linearizable,
    /// Served by whichever replica answers first; may lag behind.
    Stale,
}

/// TLS toward the cluster's nodes: the CA that signed their certificates
/// and, optionally, a certificate and key this client presents (PEM).
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    // Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Reads the CA file and, when both are given, a certificate and key.
    pub fn load(
        ca: &std::path::Path,
        cert_and_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<ClientTls, ClientError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                ClientError::InvalidArgument(format!("reading {}: {e}", path.display()))
            })
        };
        Ok(ClientTls {
            ca_pem: read(ca)?,
            identity: match cert_and_key {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            },
        })
    }

    fn config(&self) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => config.identity(tonic::transport::Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Replica addresses (`HOST:PORT` or `http://HOST:PORT`); any subset works.
    pub endpoints: Vec<String>,
    /// Total time one call may take, retries included.
    pub deadline: Duration,
    /// Time one attempt may take.
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive: a ping this often on every connection, and a
    /// connection whose ping is not answered within `keepalive_timeout` is
    /// dropped. This is how a request to a crashed, frozen or unplugged
    /// replica fails in well under `attempt_timeout` (and the call moves on
    /// to another replica). `None` disables it.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    /// First and largest pause between attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Pins the epoch stamped on every mutation: a write under any other
    /// epoch is refused with [`ClientError::StaleEpoch`], which is returned.
    /// `None` (the default): each write carries its shard's epoch as this
    /// client last learned it, and a `STALE_EPOCH` refusal (a leadership or
    /// membership change since) is followed like a new leader, sending the
    /// write again under the current epoch.
    pub epoch: Option<u64>,
    /// Rewrites of replica addresses the cluster advertises (in leader hints)
    /// to addresses this client can reach, e.g. `n2:7400` →
    /// `127.0.0.1:7402` for a client outside a Docker network.
    pub address_map: HashMap<String, String>,
    /// Object-store endpoint for block transfers; wins over
    /// `AWS_ENDPOINT_URL` and over the endpoint the cluster advertises.
    pub store_endpoint: Option<String>,
    /// TLS toward the nodes (they must serve TLS too); `None`: plain
    /// HTTP/2.
    pub tls: Option<ClientTls>,
    /// The access token every request carries (clusters started with
    /// `--require-auth`); `None`: no `authorization` header.
    pub token: Option<Token>,
    /// Linearizable reads go to the replicas in turn instead of to the
    /// leader, spreading them (the nodes must run with follower reads on,
    /// `nokv serve --follower-reads true`; a follower without answers
    /// NOT_LEADER and the read follows it to the leader). Default false.
    pub read_from_followers: bool,
    /// Batched calls in flight per node and kind (writes, reads) when
    /// concurrent requests are coalesced (see [`crate::coalesce`]); 0 sends
    /// every request in a call of its own.
    pub coalesce: usize,
}

impl ClientConfig {
    pub fn new(endpoints: Vec<String>) -> ClientConfig {
        ClientConfig {
            endpoints,
            deadline: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            keepalive_interval: Some(Duration::from_millis(300)),
            keepalive_timeout: Duration::from_millis(400),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(400),
            epoch: None,
            address_map: HashMap::new(),
            store_endpoint: None,
            tls: None,
            token: None,
            coalesce: DEFAULT_COALESCE,
            read_from_followers: false,
        }
    }
}

/// The gRPC stub the SDK calls through: every request carries the
/// configured token.
pub(crate) type Stub = MetaServiceClient<InterceptedService<Channel, Credentials>>;

/// Adds `authorization: Bearer <token>` to each request, when configured.
#[derive(Clone)]
pub(crate) struct Credentials(Option<AsciiMetadataValue>);

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert(nokv_proto::auth::AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

/// A handle to one NoKV shard; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Set on a read-only view of one snapshot ([`Client::at_snapshot`]):
    /// every query is answered at that pin, and mutations are refused.
    snapshot: Option<SnapshotId>,
    /// The shard (Raft group) every request of this handle names; 0, the
    /// root shard, unless made by [`Client::for_shard`].
    shard: ShardId,
    /// Whether requests are routed by the shard map (global paths, see
    /// [`crate::routing`]); false for a handle pinned by [`Client::for_shard`].
    routed: bool,
    /// The map revision this handle's requests were routed by (0: not
    /// routed, the node does not check).
    map_revision: u64,
}

/// The shard map as this client last read it from a node.
#[derive(Default)]
struct MapCache {
    /// Whether a node was asked yet.
    loaded: bool,
    /// `None`: the cluster follows no control plane (one shard, no grafts).
    map: Option<Arc<ShardMap>>,
}

struct Inner {
    config: ClientConfig,
    endpoints: Vec<String>,
    channels: Mutex<HashMap<String, Stub>>,
    /// Per node, the coalescers of its writes and reads (with
    /// `config.coalesce` above 0).
    coalescers: Mutex<HashMap<String, Arc<NodeCoalescers>>>,
    /// Address of the replica believed to lead each shard, if known.
    leader: Mutex<HashMap<ShardId, String>>,
    /// Round-robin cursor over `endpoints` when no leader is known.
    next: Mutex<usize>,
    /// The object store, once learned from the cluster.
    store: Mutex<Option<std::sync::Arc<dyn nokv_blob::BlobStore>>>,
    map: RwLock<MapCache>,
    /// `UNKNOWN_SHARD` answers in a row, by shard.
    unknown_shard: Mutex<HashMap<ShardId, usize>>,
    /// Each shard's epoch as last learned (writes carry it).
    epochs: Mutex<HashMap<ShardId, u64>>,
}

/// The coalescing senders of one node.
struct NodeCoalescers {
    writes: Coalescer<pb::MutateRequest, pb::MutateResponse>,
    reads: Coalescer<pb::QueryRequest, pb::QueryResponse>,
}

/// Each outcome of a batched call as the answer its request would have had
/// alone; `split` takes an outcome apart (`None`: it was empty).
fn answers<O, R>(
    outcomes: Vec<O>,
    split: fn(O) -> Option<Result<R, tonic::Status>>,
) -> Vec<Result<R, tonic::Status>> {
    outcomes
        .into_iter()
        .map(|o| match split(o) {
            Some(answer) => answer,
            None => Err(tonic::Status::unknown(
                "the node sent an empty outcome (a write may have applied)",
            )),
        })
        .collect()
}

const WRITES: Calls<pb::MutateRequest, pb::MutateResponse> = Calls {
    one: |mut stub, request| {
        Box::pin(async move { stub.mutate(request).await.map(|r| r.into_inner()) })
    },
    many: |mut stub, requests| {
        Box::pin(async move {
            let batch = pb::MutateBatchRequest { requests };
            let outcomes = stub.mutate_batch(batch).await?.into_inner().outcomes;
            Ok(answers(outcomes, |o| {
                o.outcome.map(|o| match o {
                    pb::mutate_outcome::Outcome::Ok(r) => Ok(r),
                    pb::mutate_outcome::Outcome::Error(e) => {
                        Err(nokv_proto::status_of_call_error(e))
                    }
                })
            }))
        })
    },
};

const READS: Calls<pb::QueryRequest, pb::QueryResponse> = Calls {
    one: |mut stub, request| {
        Box::pin(async move { stub.query(request).await.map(|r| r.into_inner()) })
    },
    many: |mut stub, requests| {
        Box::pin(async move {
            let batch = pb::QueryBatchRequest { requests };
            let outcomes = stub.query_batch(batch).await?.into_inner().outcomes;
            Ok(answers(outcomes, |o| {
                o.outcome.map(|o| match o {
                    pb::query_outcome::Outcome::Ok(r) => Ok(r),
                    pb::query_outcome::Outcome::Error(e) => {
                        Err(nokv_proto::status_of_call_error(e))
                    }
                })
            }))
        })
    },
};

/// What one failed attempt tells the retry loop.
enum Attempt {
    /// Give up with this error.
    Fatal(ClientError),
    /// Try again; `maybe_applied` if the attempt may have taken effect.
    Retry {
        leader: Option<String>,
        maybe_applied: bool,
        reason: String,
    },
}

pub(crate) fn normalize(endpoint: &str) -> String {
    endpoint
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

impl Client {
    /// A client for the given replicas. Connections are made lazily.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| normalize(e))
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no endpoints given (use --endpoints or NOKV_ENDPOINTS)".into(),
            ));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                endpoints,
                channels: Mutex::new(HashMap::new()),
                coalescers: Mutex::new(HashMap::new()),
                leader: Mutex::new(HashMap::new()),
                next: Mutex::new(0),
                store: Mutex::new(None),
                map: RwLock::new(MapCache::default()),
                unknown_shard: Mutex::new(HashMap::new()),
                epochs: Mutex::new(HashMap::new()),
            }),
            snapshot: None,
            shard: ShardId(0),
            routed: true,
            map_revision: 0,
        })
    }

    /// A handle pinned to shard `shard`, sharing this client's connections
    /// and settings (each shard has its own leader). Its paths are the
    /// shard's own (rooted at the shard's root, not at its graft point) and
    /// are sent unrouted.
    pub fn for_shard(&self, shard: ShardId) -> Client {
        Client {
            inner: self.inner.clone(),
            snapshot: self.snapshot,
            shard,
            routed: false,
            map_revision: 0,
        }
    }

    /// A pinned handle for a request routed by the map at `revision`: the
    /// node refuses it with STALE_MAP if the shard's routing changed since.
    pub(crate) fn routed_to(&self, shard: ShardId, revision: nokv_router::Revision) -> Client {
        Client {
            map_revision: revision.0,
            ..self.for_shard(shard)
        }
    }

    /// A new client with this one's settings (TLS, token, timeouts, address
    /// map) that starts from `endpoints` instead.
    pub(crate) fn with_endpoints(&self, endpoints: Vec<String>) -> Result<Client, ClientError> {
        let mut config = self.inner.config.clone();
        config.endpoints = endpoints;
        Client::new(config)
    }

    /// The shard this handle talks to.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The map revision this handle's requests carry (0: unrouted).
    pub(crate) fn map_revision(&self) -> u64 {
        self.map_revision
    }

    /// Whether this handle routes global paths by the shard map (see
    /// [`Client::for_shard`] for the pinned kind).
    pub fn is_routed(&self) -> bool {
        self.routed
    }

    /// Where this handle's shard may be served: the configured endpoints
    /// (known to be reachable from here), then the shard's other replicas by
    /// the map (after [`ClientConfig::address_map`]). Never empty.
    pub(crate) fn replica_candidates(&self) -> Vec<String> {
        let mut candidates = self.inner.endpoints.clone();
        if let Some(map) = self.cached_map() {
            for addr in routing::replica_addrs(&map, self.shard) {
                let addr = self.reachable(&addr);
                if !candidates.contains(&addr) {
                    candidates.push(addr);
                }
            }
        }
        candidates
    }

    /// The shard id as the wire carries it.
    pub(crate) fn wire_shard(&self) -> u32 {
        u32::from(self.shard.0)
    }

    /// A read-only view of snapshot `id` sharing this client's connections:
    /// stat, list, read and get through it see exactly the state at the
    /// pin; mutations through it fail with `InvalidArgument`.
    pub fn at_snapshot(&self, id: SnapshotId) -> Client {
        Client {
            inner: self.inner.clone(),
            snapshot: Some(id),
            shard: self.shard,
            routed: self.routed,
            map_revision: self.map_revision,
        }
    }

    /// The snapshot this view reads at, if it is one.
    pub fn snapshot(&self) -> Option<SnapshotId> {
        self.snapshot
    }

    /// Shorthand for [`Client::new`] with default settings.
    pub fn connect<S: AsRef<str>>(endpoints: &[S]) -> Result<Client, ClientError> {
        Client::new(ClientConfig::new(
            endpoints.iter().map(|e| e.as_ref().to_string()).collect(),
        ))
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// How long one attempt against one replica may take.
    pub(crate) fn attempt_timeout(&self) -> Duration {
        self.inner.config.attempt_timeout
    }

    /// The configured object-store endpoint override, if any.
    pub(crate) fn store_endpoint(&self) -> Option<String> {
        self.inner.config.store_endpoint.clone()
    }

    pub(crate) fn cached_store(&self) -> Option<std::sync::Arc<dyn nokv_blob::BlobStore>> {
        self.inner.store.lock().ok().and_then(|s| s.clone())
    }

    pub(crate) fn cache_store(&self, store: std::sync::Arc<dyn nokv_blob::BlobStore>) {
        if let Ok(mut s) = self.inner.store.lock() {
            *s = Some(store);
        }
    }

    pub(crate) fn stub(&self, addr: &str) -> Result<Stub, ClientError> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .map_err(|_| ClientError::Protocol("client state poisoned".into()))?;
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let config = &self.inner.config;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| ClientError::InvalidArgument(format!("bad endpoint {addr:?}: {e}")))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &config.tls {
            endpoint = endpoint
                .tls_config(tls.config())
                .map_err(|e| ClientError::InvalidArgument(format!("TLS for {addr}: {e}")))?;
        }
        if let Some(interval) = config.keepalive_interval {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(config.keepalive_timeout)
                .keep_alive_while_idle(true);
        }
        let credentials = Credentials(config.token.as_ref().map(Token::header_value));
        let stub = MetaServiceClient::with_interceptor(endpoint.connect_lazy(), credentials)
            .max_decoding_message_size(nokv_proto::MAX_CLIENT_MESSAGE)
            .max_encoding_message_size(nokv_proto::MAX_CLIENT_MESSAGE);
        channels.insert(addr.to_string(), stub.clone());
        Ok(stub)
    }

    /// The coalescers of the node at `addr` (reached through `stub`);
    /// `None` with coalescing off.
    fn coalescers(&self, addr: &str, stub: &Stub) -> Option<Arc<NodeCoalescers>> {
        let config = &self.inner.config;
        if config.coalesce == 0 {
            return None;
        }
        let mut all = self.inner.coalescers.lock().ok()?;
        let node = all.entry(addr.to_string()).or_insert_with(|| {
            Arc::new(NodeCoalescers {
                writes: Coalescer::new(
                    stub.clone(),
                    WRITES,
                    config.coalesce,
                    config.attempt_timeout,
                ),
                reads: Coalescer::new(stub.clone(), READS, config.coalesce, config.attempt_timeout),
            })
        });
        Some(node.clone())
    }

    /// What request coalescing sent so far, writes and reads: how many
    /// calls carried one request and how many carried several (and how
    /// many requests those held), over every node and every handle of this
    /// client.
    pub fn coalescing(&self) -> (CoalescingStats, CoalescingStats) {
        let mut writes = CoalescingStats::default();
        let mut reads = CoalescingStats::default();
        let add = |sum: &mut CoalescingStats, s: CoalescingStats| {
            sum.lone_calls += s.lone_calls;
            sum.batched_calls += s.batched_calls;
            sum.batched_requests += s.batched_requests;
        };
        if let Ok(all) = self.inner.coalescers.lock() {
            for node in all.values() {
                add(&mut writes, node.writes.stats());
                add(&mut reads, node.reads.stats());
            }
        }
        (writes, reads)
    }

    /// The replica to try next: the known leader, else round robin.
    fn pick(&self) -> String {
        if let Ok(leader) = self.inner.leader.lock() {
            if let Some(l) = leader.get(&self.shard) {
                return l.clone();
            }
        }
        self.next_replica()
    }

    /// The next replica of this shard in turn.
    fn next_replica(&self) -> String {
        let candidates = self.replica_candidates();
        let mut next = match self.inner.next.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        let addr = candidates[*next % candidates.len()].clone();
        *next = next.wrapping_add(1);
        addr
    }

    // ----- the shard map -------------------------------------------------------

    fn cached_map(&self) -> Option<Arc<ShardMap>> {
        self.inner.map.read().ok().and_then(|c| c.map.clone())
    }

    /// The shard map this client routes by, read from a node the first
    /// time; `None` when the cluster follows no control plane (one shard).
    pub async fn shard_map(&self) -> Result<Option<Arc<ShardMap>>, ClientError> {
        if let Ok(cache) = self.inner.map.read() {
            if cache.loaded {
                return Ok(cache.map.clone());
            }
        }
        self.refresh_shard_map().await
    }

    /// Reads the shard map again from the nodes (the newest revision any
    /// of them has, asking the known replicas and the configured
    /// endpoints). A map never goes back to an older revision.
    pub async fn refresh_shard_map(&self) -> Result<Option<Arc<ShardMap>>, ClientError> {
        self.refresh_map_from_nodes(0).await
    }

    /// [`Client::refresh_shard_map`], passing over nodes whose map is older
    /// than revision `at_least` (a node that refused a request as routed by
    /// a stale map has that one).
    async fn refresh_map_from_nodes(
        &self,
        at_least: u64,
    ) -> Result<Option<Arc<ShardMap>>, ClientError> {
        let mut candidates: Vec<String> = self.inner.endpoints.clone();
        if let Some(map) = self.cached_map() {
            for node in map.nodes.values() {
                let addr = self.reachable(&node.addr);
                if !candidates.contains(&addr) {
                    candidates.push(addr);
                }
            }
        }
        let mut best: Option<ShardMap> = None;
        let mut answered = false;
        let mut last_error = None;
        for endpoint in candidates {
            match self.shard_map_of(&endpoint).await {
                Ok(r) => {
                    answered = true;
                    if r.revision == 0 || r.revision < at_least {
                        continue;
                    }
                    let map = nokv_router::schema::decode_served_map(
                        &r.map,
                        nokv_router::Revision(r.revision),
                        &endpoint,
                    )
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    if best.as_ref().is_none_or(|b| b.revision < map.revision) {
                        best = Some(map);
                    }
                    // One answer with a map is enough: a stale one is
                    // corrected by WRONG_SHARD and the next refresh.
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if !answered {
            return Err(last_error
                .unwrap_or_else(|| ClientError::Unavailable("no endpoint answered".into())));
        }
        let mut cache = self
            .inner
            .map
            .write()
            .map_err(|_| ClientError::Protocol("client state poisoned".into()))?;
        let newer = match (&best, &cache.map) {
            (Some(b), Some(c)) => b.revision > c.revision,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if newer {
            cache.map = best.map(Arc::new);
            if let Some(map) = &cache.map {
                self.seed_leaders(map);
            }
        }
        cache.loaded = true;
        Ok(cache.map.clone())
    }

    /// Takes the map's leader hints for shards whose leader this client does
    /// not know yet: the first request goes straight to the (likely) leader. A
    /// wrong hint costs one redirect, as a guess would.
    fn seed_leaders(&self, map: &ShardMap) {
        let Ok(mut leaders) = self.inner.leader.lock() else {
            return;
        };
        for record in map.shards.values() {
            let Some(node) = record.leader_hint.and_then(|n| map.nodes.get(&n)) else {
                continue;
            };
            leaders
                .entry(ShardId(record.id.0))
                .or_insert_with(|| self.reachable(&node.addr));
        }
    }

    fn set_leader(&self, leader: Option<String>) {
        if let Ok(mut l) = self.inner.leader.lock() {
            match leader {
                Some(addr) => l.insert(self.shard, addr),
                None => l.remove(&self.shard),
            };
        }
    }

    /// Classifies a failed attempt.
    fn classify(&self, status: &tonic::Status, target: &str) -> Attempt {
        if let Some(detail) = detail_of(status) {
            return self.classify_detail(detail, target);
        }
        // No detail: the failure came from the transport, not from NoKV.
        let message = status.message().to_string();
        let not_sent = status.code() == tonic::Code::Unavailable
            && (message.contains("connect") || message.contains("Connection refused"));
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Aborted => Attempt::Retry {
                leader: None,
                maybe_applied: !not_sent,
                reason: format!("{target}: {message}"),
            },
            _ => Attempt::Fatal(ClientError::Protocol(format!(
                "{target}: {:?}: {message}",
                status.code()
            ))),
        }
    }

    /// The address this client uses for a replica address the cluster
    /// advertises (after [`ClientConfig::address_map`]).
    pub fn reachable(&self, advertised: &str) -> String {
        let advertised = normalize(advertised);
        match self.inner.config.address_map.get(&advertised) {
            Some(mapped) => normalize(mapped),
            None => advertised,
        }
    }

    fn classify_detail(&self, detail: ErrorDetail, target: &str) -> Attempt {
        let hint = (!detail.leader_addr.is_empty()).then(|| self.reachable(&detail.leader_addr));
        match detail.code.as_str() {
            "NOT_LEADER" => Attempt::Retry {
                leader: hint,
                maybe_applied: false,
                reason: format!("{target}: {}", detail.message),
            },
            "UNKNOWN_OUTCOME" => Attempt::Retry {
                leader: hint,
                maybe_applied: true,
                reason: format!("{target}: {}", detail.message),
            },
            // Every replica the map names refuses the shard: the map is out of
            // date (the shard was removed), and the router above re-reads it.
            "UNKNOWN_SHARD" if self.unknown_everywhere() => {
                Attempt::Fatal(ClientError::from_detail(detail))
            }
            // This node hosts no replica of the shard: ask another.
            "UNAVAILABLE" | "UNKNOWN_SHARD" => Attempt::Retry {
                leader: None,
                maybe_applied: false,
                reason: format!("{target}: {}", detail.message),
            },
            _ => Attempt::Fatal(ClientError::from_detail(detail)),
        }
    }

    /// Counts an `UNKNOWN_SHARD` answer for this handle's shard; true once
    /// as many came as the shard has replica candidates (then asking again
    /// is pointless until the map changes). Reset by any success.
    fn unknown_everywhere(&self) -> bool {
        let Ok(mut counts) = self.inner.unknown_shard.lock() else {
            return false;
        };
        let seen = counts.entry(self.shard).or_insert(0);
        *seen += 1;
        if *seen >= self.replica_candidates().len() {
            *seen = 0;
            true
        } else {
            false
        }
    }

    /// Runs `call` against replicas until it succeeds, fails for good, or
    /// the deadline passes.
    ///
    /// `via_leader` says the call is answered only by the leader (writes,
    /// linearizable reads), so a success tells us who leads.
    ///
    /// A write that one attempt may have applied (it timed out, or came back
    /// `UNKNOWN_OUTCOME`) and a later attempt saw refused ends as
    /// [`ClientError::Unknown`], never as that refusal.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        is_write: bool,
        via_leader: bool,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Stub) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut maybe_applied = false;
        let result = self
            .attempts(is_write, via_leader, &mut maybe_applied, call)
            .await;
        settle(is_write && maybe_applied, result)
    }

    /// The attempt loop of [`Client::with_retries`]: returns a refusal as
    /// it came, and records in `maybe_applied` whether any attempt may have
    /// applied (kept across calls, so a caller that sends the same command
    /// again, as `mutate_here` does after `STALE_EPOCH`, remembers it).
    async fn attempts<T, F, Fut>(
        &self,
        is_write: bool,
        via_leader: bool,
        maybe_applied: &mut bool,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Stub) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.attempts_on(is_write, via_leader, false, maybe_applied, |_, stub| {
            call(stub)
        })
        .await
    }

    /// [`Client::attempts`] with a call that is also told which replica it
    /// goes to. With `spread`, each call starts at the next replica in turn
    /// (a read any replica may answer) and follows only the hints of its
    /// own refusals.
    async fn attempts_on<T, F, Fut>(
        &self,
        is_write: bool,
        via_leader: bool,
        spread: bool,
        maybe_applied: &mut bool,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(&str, Stub) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.deadline;
        let mut backoff = config.backoff_min;
        let mut last_reason;
        let mut hinted: Option<String> = None;
        loop {
            let target = match (spread, hinted.take()) {
                (true, Some(hint)) => hint,
                (true, None) => self.next_replica(),
                (false, _) => self.pick(),
            };
            let stub = self.stub(&target)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt =
                tokio::time::timeout(remaining.min(config.attempt_timeout), call(&target, stub));
            let outcome = match attempt.await {
                Ok(Ok(value)) => {
                    if let Ok(mut counts) = self.inner.unknown_shard.lock() {
                        counts.remove(&self.shard);
                    }
                    if via_leader {
                        self.set_leader(Some(target));
                    }
                    return Ok(value);
                }
                Ok(Err(status)) => self.classify(&status, &target),
                Err(_) => Attempt::Retry {
                    leader: None,
                    maybe_applied: true,
                    reason: format!("{target}: attempt timed out"),
                },
            };
            match outcome {
                Attempt::Fatal(e) => return Err(e),
                Attempt::Retry {
                    leader,
                    maybe_applied: m,
                    reason,
                } => {
                    *maybe_applied |= m;
                    tracing::debug!(%reason, ?leader, "retrying");
                    // Follow a hint to another node at once; otherwise back off.
                    let follow = leader.as_ref().is_some_and(|l| *l != target);
                    if spread {
                        hinted = leader.clone().filter(|_| follow);
                    }
                    self.set_leader(leader);
                    last_reason = reason;
                    if !follow {
                        let pause = jitter(backoff);
                        if Instant::now() + pause >= deadline {
                            break;
                        }
                        tokio::time::sleep(pause).await;
                        backoff = (backoff * 2).min(config.backoff_max);
                    }
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if is_write && *maybe_applied {
            Err(ClientError::Unknown(last_reason))
        } else {
            Err(ClientError::Unavailable(last_reason))
        }
    }

    /// Applies `op` with a fresh request id.
    pub async fn mutate(&self, op: Op) -> Result<Applied, ClientError> {
        self.mutate_with_id(RequestId(rand::random::<u128>()), op)
            .await
    }

    /// Applies `op` under `request_id`; calling again with the same id
    /// returns the first result without applying twice.
    pub async fn mutate_with_id(
        &self,
        request_id: RequestId,
        op: Op,
    ) -> Result<Applied, ClientError> {
        if let Some(id) = self.snapshot {
            return Err(ClientError::InvalidArgument(format!(
                "{id} is a read-only view; write through the live namespace"
            )));
        }
        if self.routed {
            // No map (no node answered yet): send it as is; a shard that does
            // not own the path refuses it, and then the map is read again.
            if let Ok(Some(map)) = self.shard_map().await {
                return self.mutate_routed(map, request_id, op).await;
            }
        }
        let result = self.mutate_here(request_id, op.clone()).await;
        if self.routed && result.as_ref().is_err_and(ClientError::is_misrouted) {
            if let Ok(Some(map)) = self.refresh_shard_map().await {
                return self.mutate_routed(map, request_id, op).await;
            }
        }
        result
    }

    /// Applies `op` on this handle's shard, as given, under the shard's epoch
    /// (see [`ClientConfig::epoch`]). A `STALE_EPOCH` refusal changed nothing
    /// and was not remembered by the shard: the write goes again under the
    /// epoch it names, to the leader it names, with the same request id (so
    /// it still applies at most once, whichever copy lands).
    async fn mutate_here(&self, request_id: RequestId, op: Op) -> Result<Applied, ClientError> {
        let mut request = pb::MutateRequest::try_from(Mutation {
            request_id,
            epoch: None,
            op,
        })
        .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        request.shard = self.wire_shard();
        request.map_revision = self.map_revision;
        let pinned = self.inner.config.epoch;
        let mut refusals = 0;
        // Whether any copy sent so far may have applied: a resend after
        // `STALE_EPOCH` cannot apply twice (same request id), but if it ends
        // refused, an earlier copy may still be the one that applied.
        let mut maybe_applied = false;
        loop {
            request.epoch = match pinned {
                Some(epoch) => epoch,
                None => self.shard_epoch().await?,
            };
            let sent = request.clone();
            let response = self
                .attempts_on(true, true, false, &mut maybe_applied, |target, stub| {
                    let request = sent.clone();
                    let coalescers = self.coalescers(target, &stub);
                    async move {
                        match coalescers {
                            Some(c) => c.writes.call(request).await,
                            None => (WRITES.one)(stub, request).await,
                        }
                    }
                })
                .await;
            match response {
                Ok(response) => {
                    if pinned.is_none() {
                        self.learn_epoch(response.epoch, false);
                    }
                    return Applied::try_from(response)
                        .map_err(|e| ClientError::Protocol(e.to_string()));
                }
                Err(ClientError::StaleEpoch { current, leader })
                    if pinned.is_none() && refusals < MAX_EPOCH_REFUSALS =>
                {
                    refusals += 1;
                    tracing::debug!(
                        shard = self.shard.0,
                        stale = request.epoch,
                        current,
                        "write refused under an old epoch; sending it again"
                    );
                    self.learn_epoch(current, true);
                    if let Some(leader) = leader {
                        self.set_leader(Some(self.reachable(&leader)));
                    }
                }
                Err(e) => return settle(maybe_applied, Err(e)),
            }
        }
    }

    /// This shard's epoch as last learned; asked of a replica (`Status`, no log
    /// entry) before the first write to the shard. 0 (unchecked) only for a
    /// shard that reports none (not initialised).
    async fn shard_epoch(&self) -> Result<u64, ClientError> {
        if let Some(epoch) = self.known_epoch() {
            return Ok(epoch);
        }
        let shard = self.wire_shard();
        let status = self
            .with_retries(false, false, |mut stub| async move {
                stub.status(pb::StatusRequest {
                    shard,
                    stages: false,
                })
                .await
                .map(|r| r.into_inner())
            })
            .await?;
        self.learn_epoch(status.epoch, false);
        Ok(status.epoch)
    }

    /// The epoch the next write to this handle's shard carries, as last
    /// learned (from an answer, a refusal, or the shard's status); `None`
    /// before the first write.
    pub fn known_epoch(&self) -> Option<u64> {
        self.inner
            .epochs
            .lock()
            .ok()
            .and_then(|e| e.get(&self.shard).copied())
    }

    /// Records `epoch` as the shard's: as the current one a refusal named
    /// (`current`), or as one seen in an answer (kept only if newer).
    fn learn_epoch(&self, epoch: u64, current: bool) {
        if epoch == 0 {
            return;
        }
        if let Ok(mut epochs) = self.inner.epochs.lock() {
            let known = epochs.entry(self.shard).or_insert(epoch);
            if current || epoch > *known {
                *known = epoch;
            }
        }
    }

    /// Sends `op` to the shard the map routes it to; on `WRONG_SHARD` or
    /// `UNKNOWN_SHARD` re-reads the map and sends it again under the same
    /// request id (a shard that refused it applied nothing).
    async fn mutate_routed(
        &self,
        mut map: Arc<ShardMap>,
        request_id: RequestId,
        op: Op,
    ) -> Result<Applied, ClientError> {
        let mut rerouted = 0;
        loop {
            let (shard, local) = routing::route_op(&map, op.clone(), self.shard)?;
            match self
                .routed_to(shard, map.revision)
                .mutate_here(request_id, local)
                .await
            {
                Ok(applied) => return Ok(routing::globalize_applied(&map, shard, applied)),
                Err(e) if e.is_misrouted() && rerouted < MAX_REROUTES => {
                    rerouted += 1;
                    tracing::debug!(
                        revision = map.revision.0,
                        shard = shard.0,
                        rerouted,
                        refusal = %e,
                        "write refused as misrouted; reading the map again"
                    );
                    map = self.reroute(&map, &e).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The map after a `WRONG_SHARD`/`UNKNOWN_SHARD`: a newer one, or the
    /// refusal itself when the nodes know no better (no loop on a map that
    /// cannot change).
    pub(crate) async fn reroute(
        &self,
        map: &Arc<ShardMap>,
        refusal: &ClientError,
    ) -> Result<Arc<ShardMap>, ClientError> {
        // Only a strictly newer map can route differently: pass over nodes
        // that still serve the one this request was routed by (or, after
        // STALE_MAP, anything older than the refusing node's).
        let newer_than_ours = map.revision.0.saturating_add(1);
        let at_least = match refusal {
            ClientError::StaleMap { current } => (*current).max(newer_than_ours),
            _ => newer_than_ours,
        };
        let behind = routing::proves_newer_map(map, refusal);
        let deadline = Instant::now() + self.inner.config.deadline;
        let mut pause = self.inner.config.backoff_min;
        loop {
            if let Some(newer) = self.refresh_map_from_nodes(at_least).await? {
                // While the refusal names a shard still being created, a
                // newer map that says the same (a revision that only moved
                // leader hints, say) routes the same way: waiting for the
                // one that serves the shard keeps the request from using
                // up its reroutes on maps that cannot help (seen in
                // `gc_fsck_backup_and_snapshots_across_shards`).
                if newer.revision > map.revision
                    && !(behind && routing::proves_newer_map(&newer, refusal))
                {
                    return Ok(newer);
                }
            }
            if !behind || Instant::now() + pause >= deadline {
                return Err(refusal.clone());
            }
            tokio::time::sleep(jitter(pause)).await;
            pause = (pause * 2).min(self.inner.config.backoff_max);
        }
    }

    /// Runs a read.
    pub async fn query(
        &self,
        query: Query,
        consistency: Consistency,
    ) -> Result<QueryResult, ClientError> {
        let query = match (self.snapshot, query) {
            (Some(snapshot), query) if !matches!(query, Query::AtSnapshot { .. }) => {
                Query::AtSnapshot {
                    snapshot,
                    query: Box::new(query),
                }
            }
            (_, query) => query,
        };
        if self.routed {
            if let Ok(Some(map)) = self.shard_map().await {
                return self.query_routed(map, query, consistency).await;
            }
        }
        let result = self.query_here(query.clone(), consistency).await;
        if self.routed && result.as_ref().is_err_and(ClientError::is_misrouted) {
            if let Ok(Some(map)) = self.refresh_shard_map().await {
                return self.query_routed(map, query, consistency).await;
            }
        }
        result
    }

    async fn query_routed(
        &self,
        mut map: Arc<ShardMap>,
        query: Query,
        consistency: Consistency,
    ) -> Result<QueryResult, ClientError> {
        if routing::fans_out(&query) {
            let mut merged: Option<QueryResult> = None;
            for shard in routing::serving_shards(&map) {
                let part = self
                    .for_shard(shard)
                    .query_here(query.clone(), consistency)
                    .await?;
                let part = routing::globalize_result(&map, shard, part);
                merged = Some(match (merged, part) {
                    (None, part) => part,
                    (Some(QueryResult::Snapshots(mut a)), QueryResult::Snapshots(b)) => {
                        a.extend(b);
                        QueryResult::Snapshots(a)
                    }
                    (Some(QueryResult::Uploads(mut a)), QueryResult::Uploads(b)) => {
                        a.extend(b);
                        QueryResult::Uploads(a)
                    }
                    _ => return Err(ClientError::Protocol("unexpected reply shape".into())),
                });
            }
            return merged.ok_or_else(|| ClientError::Protocol("the map has no shards".into()));
        }
        let mut rerouted = 0;
        loop {
            let (shard, local) = routing::route_query(&map, query.clone(), self.shard)?;
            match self
                .routed_to(shard, map.revision)
                .query_here(local, consistency)
                .await
            {
                Ok(result) => return Ok(routing::globalize_result(&map, shard, result)),
                Err(e) if e.is_misrouted() && rerouted < MAX_REROUTES => {
                    rerouted += 1;
                    map = self.reroute(&map, &e).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs a read on this handle's shard, as given.
    async fn query_here(
        &self,
        query: Query,
        consistency: Consistency,
    ) -> Result<QueryResult, ClientError> {
        let mut request = pb::QueryRequest::from(Read {
            consistency: match consistency {
                Consistency::Linearizable => ReadConsistency::Linearizable,
                Consistency::Stale => ReadConsistency::Stale,
            },
            query,
        });
        request.shard = self.wire_shard();
        request.map_revision = self.map_revision;
        let mut maybe_applied = false;
        // Linearizable reads go to the leader, unless followers may answer
        // them too (`ClientConfig::read_from_followers`).
        let spread =
            consistency == Consistency::Linearizable && self.inner.config.read_from_followers;
        let response = self
            .attempts_on(
                false,
                consistency == Consistency::Linearizable && !spread,
                spread,
                &mut maybe_applied,
                |target, stub| {
                    let request = request.clone();
                    let coalescers = self.coalescers(target, &stub);
                    async move {
                        match coalescers {
                            Some(c) => c.reads.call(request).await,
                            None => (READS.one)(stub, request).await,
                        }
                    }
                },
            )
            .await?;
        QueryResult::try_from(response).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    // ----- cluster ---------------------------------------------------------

    /// The status of the first replica that answers, in endpoint order.
    pub async fn any_status(&self) -> Result<pb::StatusResponse, ClientError> {
        let mut last = None;
        for endpoint in self.endpoints().to_vec() {
            match self.status_of(&endpoint).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unavailable("no endpoint answered".into())))
    }

    /// The status of one replica (no retries: it is about that replica).
    pub async fn status_of(&self, endpoint: &str) -> Result<pb::StatusResponse, ClientError> {
        let addr = normalize(endpoint);
        let mut stub = self.stub(&addr)?;
        let call = stub.status(pb::StatusRequest {
            shard: self.wire_shard(),
            stages: false,
        });
        match tokio::time::timeout(self.inner.config.attempt_timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(match detail_of(&status) {
                Some(d) => ClientError::from_detail(d),
                None => ClientError::Unavailable(format!("{addr}: {}", status.message())),
            }),
            Err(_) => Err(ClientError::Unavailable(format!("{addr}: timed out"))),
        }
    }

    /// Makes the node at `endpoint` host a replica of `shard`, which the
    /// shard map places there since revision `map_revision` (idempotent;
    /// true if it started one now).
    pub async fn host_shard(
        &self,
        endpoint: &str,
        shard: ShardId,
        map_revision: u64,
    ) -> Result<bool, ClientError> {
        let addr = normalize(endpoint);
        let mut stub = self.stub(&addr)?;
        let call = stub.host_shard(pb::HostShardRequest {
            shard: u32::from(shard.0),
            map_revision,
        });
        match tokio::time::timeout(self.inner.config.attempt_timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner().created),
            Ok(Err(status)) => Err(error_of(&addr, &status)),
            Err(_) => Err(ClientError::Unavailable(format!("{addr}: timed out"))),
        }
    }

    /// The shard map the node at `endpoint` last read from the control
    /// plane (revision 0 and no bytes when it follows none).
    pub async fn shard_map_of(
        &self,
        endpoint: &str,
    ) -> Result<pb::GetShardMapResponse, ClientError> {
        let addr = normalize(endpoint);
        let mut stub = self.stub(&addr)?;
        let call = stub.get_shard_map(pb::GetShardMapRequest {});
        match tokio::time::timeout(self.inner.config.attempt_timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(error_of(&addr, &status)),
            Err(_) => Err(ClientError::Unavailable(format!("{addr}: timed out"))),
        }
    }

    /// Asks a node to create a shard grafted at `path` (see [`crate::admin`]),
    /// trying each endpoint until one answers. Creation waits for a new Raft
    /// group to elect a leader, so this allows up to a minute.
    pub async fn create_shard_on_cluster(
        &self,
        path: &str,
        members: Vec<u64>,
    ) -> Result<pb::CreateShardResponse, ClientError> {
        let request = pb::CreateShardRequest {
            path: path.to_string(),
            members,
        };
        let response = self
            .admin_call(|mut stub| {
                let request = request.clone();
                async move { stub.create_shard(request).await }
            })
            .await?;
        self.refresh_shard_map().await?;
        Ok(response)
    }

    /// Asks a node to remove the empty shard grafted at `path`.
    pub async fn remove_shard_on_cluster(&self, path: &str) -> Result<(), ClientError> {
        let request = pb::RemoveShardRequest {
            path: path.to_string(),
        };
        self.admin_call(|mut stub| {
            let request = request.clone();
            async move { stub.remove_shard(request).await }
        })
        .await?;
        self.refresh_shard_map().await?;
        Ok(())
    }

    /// Asks a node to carry out a membership or node operation through its
    /// control plane (see [`crate::membership`]). Moving replicas waits for
    /// new ones to catch up, so this allows up to a minute per call.
    pub async fn membership_on_cluster(
        &self,
        request: pb::MembershipRequest,
    ) -> Result<pb::MembershipResponse, ClientError> {
        let response = self
            .admin_call(|mut stub| {
                let request = request.clone();
                async move { stub.membership(request).await }
            })
            .await?;
        self.refresh_shard_map().await?;
        Ok(response)
    }

    /// Makes `voters` exactly this client's shard's voter set (through its
    /// leader; new voters' nodes must host the shard already).
    pub async fn change_voters(
        &self,
        voters: Vec<pb::Member>,
    ) -> Result<pb::ChangeVotersResponse, ClientError> {
        let shard = self.wire_shard();
        self.with_retries(true, true, |mut stub| {
            let voters = voters.clone();
            async move {
                stub.change_voters(pb::ChangeVotersRequest { shard, voters })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Hands this client's shard's leadership to voter `to`; returns the
    /// node leading afterwards.
    pub async fn transfer_leader(&self, to: u64) -> Result<u64, ClientError> {
        let shard = self.wire_shard();
        self.with_retries(false, true, |mut stub| async move {
            stub.transfer_leader(pb::TransferLeaderRequest { shard, to })
                .await
                .map(|r| r.into_inner().leader)
        })
        .await
    }

    /// One control-plane call: the first endpoint that answers decides (a
    /// node that cannot be reached, or follows no control plane, passes).
    async fn admin_call<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Stub) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        const ADMIN_TIMEOUT: Duration = Duration::from_secs(300);
        let mut last = None;
        for endpoint in self.endpoints().to_vec() {
            let addr = normalize(&endpoint);
            let stub = self.stub(&addr)?;
            match tokio::time::timeout(ADMIN_TIMEOUT, call(stub)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(status)) => match error_of(&addr, &status) {
                    e @ ClientError::Unavailable(_) => last = Some(e),
                    e => return Err(e),
                },
                Err(_) => {
                    return Err(ClientError::Unknown(format!(
                        "{addr}: no answer in {ADMIN_TIMEOUT:?}; `nokv shard ls` shows \
                         whether the change happened (reconciliation finishes it)"
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unavailable("no endpoint answered".into())))
    }

    /// Every shard replica the node at `endpoint` hosts, with its status.
    pub async fn node_status(&self, endpoint: &str) -> Result<pb::NodeStatusResponse, ClientError> {
        self.node_status_with(endpoint, false).await
    }

    /// Like [`Client::node_status`], each replica's answer also carrying
    /// its stage histograms (`StatusResponse.stages`), for a breakdown of
    /// where requests spend their time.
    pub async fn node_stages(&self, endpoint: &str) -> Result<pb::NodeStatusResponse, ClientError> {
        self.node_status_with(endpoint, true).await
    }

    async fn node_status_with(
        &self,
        endpoint: &str,
        stages: bool,
    ) -> Result<pb::NodeStatusResponse, ClientError> {
        let addr = normalize(endpoint);
        let mut stub = self.stub(&addr)?;
        let call = stub.node_status(pb::NodeStatusRequest { stages });
        match tokio::time::timeout(self.inner.config.attempt_timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(error_of(&addr, &status)),
            Err(_) => Err(ClientError::Unavailable(format!("{addr}: timed out"))),
        }
    }

    /// Forms a Raft group of `members` by asking `endpoint` (one of them).
    pub async fn init_cluster(
        &self,
        endpoint: &str,
        members: Vec<pb::Member>,
    ) -> Result<(), ClientError> {
        let addr = normalize(endpoint);
        let mut stub = self.stub(&addr)?;
        let call = stub.init_cluster(pb::InitClusterRequest {
            members,
            shard: self.wire_shard(),
        });
        match tokio::time::timeout(self.inner.config.attempt_timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(match detail_of(&status) {
                Some(d) => ClientError::from_detail(d),
                None => ClientError::Unavailable(format!("{addr}: {}", status.message())),
            }),
            Err(_) => Err(ClientError::Unavailable(format!("{addr}: timed out"))),
        }
    }

    /// Asks the leader to reclaim expired uploads and collect garbage now.
    pub async fn run_gc(&self, ignore_grace: bool) -> Result<pb::RunGcResponse, ClientError> {
        let shard = self.wire_shard();
        self.with_retries(false, true, |mut stub| async move {
            stub.run_gc(pb::RunGcRequest {
                ignore_grace,
                shard,
            })
            .await
            .map(|r| r.into_inner())
        })
        .await
    }

    /// The shards a cluster-wide operation (gc, fsck, backup) covers: every serving shard
    /// by the map, in id order; this handle's own shard when it is pinned or the cluster
    /// follows no control plane.
    pub async fn serving_shards(&self) -> Result<Vec<ShardId>, ClientError> {
        if !self.routed {
            return Ok(vec![self.shard]);
        }
        Ok(match self.shard_map().await? {
            Some(map) => routing::serving_shards(&map),
            None => vec![self.shard],
        })
    }

    /// Asks the leader to check live blocks and look for orphaned objects.
    pub async fn fsck(&self) -> Result<pb::FsckResponse, ClientError> {
        let shard = self.wire_shard();
        self.with_retries(false, true, |mut stub| async move {
            stub.fsck(pb::FsckRequest { shard })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Asks the leader for a recovery point in the object store: a fresh
    /// snapshot uploaded and the log archived up to the applied index.
    /// Answers what a restore would recover (`archived_index`).
    pub async fn backup(&self) -> Result<pb::BackupResponse, ClientError> {
        let shard = self.wire_shard();
        self.with_retries(false, true, |mut stub| async move {
            stub.backup(pb::BackupRequest { shard })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    // ----- namespace conveniences -------------------------------------------

    fn attr_of(applied: Applied) -> Result<Attr, ClientError> {
        match applied {
            Applied::Attr(a) => Ok(a),
            Applied::Done | Applied::Staged(_) | Applied::Attrs(_) | Applied::Snapshot(_) => {
                Err(ClientError::Protocol("expected attributes in reply".into()))
            }
        }
    }

    fn expect<T>(
        r: QueryResult,
        pick: impl FnOnce(QueryResult) -> Option<T>,
    ) -> Result<T, ClientError> {
        pick(r).ok_or_else(|| ClientError::Protocol("unexpected reply shape".into()))
    }

    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<Attr, ClientError> {
        let op = Op::Mkdir {
            at: EntryRef::Path(path.into()),
            mode: 0o755,
            uid: 0,
            gid: 0,
            parents,
        };
        Self::attr_of(self.mutate(op).await?)
    }

    /// Creates an empty file; `EEXIST` if the name is taken.
    pub async fn create(&self, path: &str) -> Result<Attr, ClientError> {
        let op = Op::Create {
            at: EntryRef::Path(path.into()),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        Self::attr_of(self.mutate(op).await?)
    }

    /// Creates many empty files: each as [`Client::create`] would, with its
    /// own answer, in order. Up to [`BULK_IN_FLIGHT`] go at once; with
    /// coalescing on ([`ClientConfig::coalesce`]) those to one shard travel
    /// in a few batched calls, and the leader commits each call's creates
    /// in one log entry (one fsync on a quorum for all of them).
    pub async fn create_many<S: AsRef<str>>(&self, paths: &[S]) -> Vec<Result<Attr, ClientError>> {
        let ops: Vec<Op> = paths
            .iter()
            .map(|p| Op::Create {
                at: EntryRef::Path(p.as_ref().into()),
                mode: 0o644,
                uid: 0,
                gid: 0,
            })
            .collect();
        self.mutate_many(ops)
            .await
            .into_iter()
            .map(|r| r.and_then(Self::attr_of))
            .collect()
    }

    /// Applies many mutations, each with a fresh request id, each as
    /// [`Client::mutate`] would (its own retries and answer), in order of
    /// `ops`; up to [`BULK_IN_FLIGHT`] at once. No order among them is
    /// promised: give dependent writes (a directory, then files in it) in
    /// separate calls.
    pub async fn mutate_many(
        &self,
        ops: impl IntoIterator<Item = Op>,
    ) -> Vec<Result<Applied, ClientError>> {
        use futures::StreamExt;
        futures::stream::iter(ops.into_iter().map(|op| self.mutate(op)))
            .buffered(BULK_IN_FLIGHT)
            .collect()
            .await
    }

    pub async fn symlink(&self, target: &str, path: &str) -> Result<Attr, ClientError> {
        let op = Op::Symlink {
            at: EntryRef::Path(path.into()),
            target: target.into(),
            uid: 0,
            gid: 0,
        };
        Self::attr_of(self.mutate(op).await?)
    }

    pub async fn link(&self, existing: &str, new_path: &str) -> Result<Attr, ClientError> {
        let op = Op::Link {
            inode: InodeRef::Path(existing.into()),
            at: EntryRef::Path(new_path.into()),
        };
        Self::attr_of(self.mutate(op).await?)
    }

    pub async fn unlink(&self, path: &str) -> Result<(), ClientError> {
        self.mutate(Op::Unlink {
            at: EntryRef::Path(path.into()),
        })
        .await
        .map(|_| ())
    }

    pub async fn rmdir(&self, path: &str) -> Result<(), ClientError> {
        self.mutate(Op::Rmdir {
            at: EntryRef::Path(path.into()),
        })
        .await
        .map(|_| ())
    }

    pub async fn rename(&self, from: &str, to: &str, mode: RenameMode) -> Result<(), ClientError> {
        self.mutate(Op::Rename {
            from: EntryRef::Path(from.into()),
            to: EntryRef::Path(to.into()),
            mode,
        })
        .await
        .map(|_| ())
    }

    pub async fn set_attr(&self, path: &str, set: SetAttr) -> Result<Attr, ClientError> {
        Self::attr_of(
            self.mutate(Op::SetAttr {
                inode: InodeRef::Path(path.into()),
                set,
            })
            .await?,
        )
    }

    pub async fn set_xattr(
        &self,
        path: &str,
        name: &str,
        value: &[u8],
        flag: XattrFlag,
    ) -> Result<(), ClientError> {
        self.mutate(Op::SetXattr {
            inode: InodeRef::Path(path.into()),
            name: name.into(),
            value: value.to_vec(),
            flag,
        })
        .await
        .map(|_| ())
    }

    pub async fn remove_xattr(&self, path: &str, name: &str) -> Result<(), ClientError> {
        self.mutate(Op::RemoveXattr {
            inode: InodeRef::Path(path.into()),
            name: name.into(),
        })
        .await
        .map(|_| ())
    }

    /// Attributes of `path` (a final symlink is not followed).
    pub async fn stat(&self, path: &str, consistency: Consistency) -> Result<Attr, ClientError> {
        let r = self
            .query(
                Query::GetAttr {
                    inode: InodeRef::Path(path.into()),
                },
                consistency,
            )
            .await?;
        Self::expect(r, |r| match r {
            QueryResult::Attr(a) => Some(a),
            _ => None,
        })
    }

    /// One page of `path`'s entries after `after`.
    pub async fn read_dir_page(
        &self,
        path: &str,
        after: Option<String>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<(Vec<DirEntry>, Option<String>), ClientError> {
        let r = self
            .query(
                Query::ReadDir {
                    dir: InodeRef::Path(path.into()),
                    after,
                    limit,
                },
                consistency,
            )
            .await?;
        Self::expect(r, |r| match r {
            QueryResult::Dir { entries, next } => Some((entries, next)),
            _ => None,
        })
    }

    /// One page of `path`'s entries after `after`, each file with its
    /// body's summary (publish metadata without the block plan).
    pub async fn read_dir_bodies_page(
        &self,
        path: &str,
        after: Option<String>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<(Vec<(DirEntry, Option<BodySummary>)>, Option<String>), ClientError> {
        let r = self
            .query(
                Query::ReadDirBodies {
                    dir: InodeRef::Path(path.into()),
                    after,
                    limit,
                },
                consistency,
            )
            .await?;
        Self::expect(r, |r| match r {
            QueryResult::DirBodies { entries, next } => Some((entries, next)),
            _ => None,
        })
    }

    /// Every entry of `path`, fetched page by page.
    pub async fn read_dir_all(
        &self,
        path: &str,
        consistency: Consistency,
    ) -> Result<Vec<DirEntry>, ClientError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (entries, next) = self.read_dir_page(path, after, 0, consistency).await?;
            all.extend(entries);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }

    pub async fn read_link(
        &self,
        path: &str,
        consistency: Consistency,
    ) -> Result<String, ClientError> {
        let r = self
            .query(
                Query::ReadLink {
                    inode: InodeRef::Path(path.into()),
                },
                consistency,
            )
            .await?;
        Self::expect(r, |r| match r {
            QueryResult::Target(t) => Some(t),
            _ => None,
        })
    }

    pub async fn get_xattr(
        &self,
        path: &str,
        name: &str,
        consistency: Consistency,
    ) -> Result<Vec<u8>, ClientError> {
        let r = self
            .query(
                Query::GetXattr {
                    inode: InodeRef::Path(path.into()),
                    name: name.into(),
                },
                consistency,
            )
            .await?;
        Self::expect(r, |r| match r {
            QueryResult::Xattr(v) => Some(v),
            _ => None,
        })
    }

    pub async fn list_xattr(
        &self,
        path: &str,
        consistency: Consistency,
    ) -> Result<Vec<String>, ClientError> {
        let r = self
            .query(
                Query::ListXattr {
                    inode: InodeRef::Path(path.into()),
                },
                consistency,
            )
            .await?;
        Self::expect(r, |r| match r {
            QueryResult::XattrNames(n) => Some(n),
            _ => None,
        })
    }
}

/// `d` scaled by a random factor in [0.5, 1.5) so retrying clients spread out.
/// The typed error of a status from a one-replica call.
fn error_of(addr: &str, status: &tonic::Status) -> ClientError {
    match detail_of(status) {
        Some(d) => ClientError::from_detail(d),
        None => ClientError::Unavailable(format!("{addr}: {}", status.message())),
    }
}

fn jitter(d: Duration) -> Duration {
    let factor = 0.5 + rand::random::<f64>();
    d.mul_f64(factor)
}

/// The outcome of a write from its last copy's result: when an earlier copy
/// may have applied, a refusal of a later copy (a stale epoch or map, the
/// wrong shard, no replica) says nothing of the command, so the outcome is
/// unknown. A POSIX error stays: the shard's dedupe table makes it the
/// command's own outcome (docs/jepsen.md, bug ledger entry 8).
fn settle<T>(maybe_applied: bool, result: Result<T, ClientError>) -> Result<T, ClientError> {
    match result {
        Err(e) if maybe_applied && e.refuses_only_this_copy() => Err(ClientError::Unknown(
            format!("{e}; an earlier attempt may have applied"),
        )),
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses_are_rewritten_by_the_address_map() {
        let mut config = ClientConfig::new(vec!["127.0.0.1:7401".into()]);
        config.address_map =
            HashMap::from([("n2:7400".to_string(), "http://127.0.0.1:7402/".to_string())]);
        let client = Client::new(config).expect("client");
        assert_eq!(client.reachable("n2:7400"), "127.0.0.1:7402");
        assert_eq!(client.reachable("http://n2:7400"), "127.0.0.1:7402");
        // Unmapped addresses pass through, normalized.
        assert_eq!(client.reachable("http://n3:7400/"), "n3:7400");
    }

    /// A client whose attempts end fast: one attempt times out after 50 ms.
    fn quick_client() -> Client {
        let mut config = ClientConfig::new(vec!["127.0.0.1:1".into()]);
        config.attempt_timeout = Duration::from_millis(50);
        config.deadline = Duration::from_secs(5);
        config.backoff_min = Duration::from_millis(1);
        config.backoff_max = Duration::from_millis(2);
        Client::new(config).expect("client")
    }

    fn stale_epoch() -> tonic::Status {
        nokv_proto::error::status_with_detail(
            tonic::Code::FailedPrecondition,
            pb::ErrorDetail {
                code: "STALE_EPOCH".into(),
                message: "stale epoch".into(),
                current_epoch: 7,
                ..Default::default()
            },
        )
    }

    /// Answers the calls of `with_retries` from a script, one step per
    /// attempt: `None` never answers (the attempt times out).
    fn scripted(
        steps: Vec<Option<Result<u32, tonic::Status>>>,
    ) -> impl FnMut(Stub) -> futures::future::BoxFuture<'static, Result<u32, tonic::Status>> {
        let steps = Arc::new(Mutex::new(std::collections::VecDeque::from(steps)));
        move |_stub| {
            let step = steps.lock().expect("script").pop_front();
            Box::pin(async move {
                match step {
                    Some(Some(answer)) => answer,
                    Some(None) => std::future::pending().await,
                    None => panic!("called more often than scripted"),
                }
            })
        }
    }

    // Bug ledger entry 8: a write whose first attempt timed out (it may have
    // applied) and whose second was refused STALE_EPOCH was reported as
    // refused, i.e. as definitely not applied.
    #[tokio::test]
    async fn a_refusal_after_an_attempt_that_may_have_applied_is_unknown() {
        let client = quick_client();
        let result = client
            .with_retries(true, true, scripted(vec![None, Some(Err(stale_epoch()))]))
            .await;
        assert!(
            matches!(result, Err(ClientError::Unknown(_))),
            "expected an unknown outcome, got {result:?}"
        );

        // The same after an UNKNOWN_OUTCOME answer.
        let unknown = nokv_proto::error::status_from_detail(
            nokv_proto::error::ErrorCode::UnknownOutcome,
            "leadership changed".into(),
        );
        let result = client
            .with_retries(
                true,
                true,
                scripted(vec![Some(Err(unknown)), Some(Err(stale_epoch()))]),
            )
            .await;
        assert!(matches!(result, Err(ClientError::Unknown(_))), "{result:?}");
    }

    #[tokio::test]
    async fn a_refusal_with_no_earlier_attempt_stays_a_refusal() {
        let client = quick_client();
        // A write refused at its first attempt changed nothing.
        let result = client
            .with_retries(true, true, scripted(vec![Some(Err(stale_epoch()))]))
            .await;
        assert!(
            matches!(result, Err(ClientError::StaleEpoch { current: 7, .. })),
            "{result:?}"
        );
        // A read that timed out once then was refused is a refusal (reads
        // change nothing).
        let result = client
            .with_retries(false, true, scripted(vec![None, Some(Err(stale_epoch()))]))
            .await;
        assert!(
            matches!(result, Err(ClientError::StaleEpoch { .. })),
            "{result:?}"
        );
        // A POSIX error after a timeout is the command's own outcome (the
        // dedupe table answers a resent copy with the first result).
        let exists =
            nokv_proto::error::fs_error_status(&nokv_holt::FsError::AlreadyExists("/a".into()));
        let result = client
            .with_retries(true, true, scripted(vec![None, Some(Err(exists))]))
            .await;
        assert!(
            result.as_ref().is_err_and(ClientError::is_exists),
            "{result:?}"
        );
        // And a success after a timeout is a success.
        let result = client
            .with_retries(true, true, scripted(vec![None, Some(Ok(5))]))
            .await;
        assert_eq!(result.expect("answered"), 5);
    }

    #[test]
    fn settle_keeps_unknown_refusals_and_posix_errors_apart() {
        let refused = || {
            Err::<(), _>(ClientError::StaleEpoch {
                current: 3,
                leader: None,
            })
        };
        assert!(matches!(
            settle(true, refused()),
            Err(ClientError::Unknown(_))
        ));
        assert!(matches!(
            settle(false, refused()),
            Err(ClientError::StaleEpoch { .. })
        ));
        let timeout = || Err::<(), _>(ClientError::Unknown("timed out".into()));
        assert!(matches!(
            settle(true, timeout()),
            Err(ClientError::Unknown(_))
        ));
    }
}
