//! [`EtcdControlPlane`]: the control plane on etcd (v3 API, `etcd-client`). This is the only
//! module that touches `etcd-client`; none of its types leave it.
//!
//! Keys and encodings are in [`crate::schema`]. Every call is bounded by
//! `connect_timeout + request_timeout` on top of the client's own timeouts, so a dead or
//! partitioned etcd yields `CONTROL_PLANE_UNAVAILABLE`, never a hang. Connecting is lazy: a
//! node can start while etcd is down and will reach it on first use.
//!
//! With several endpoints, calls go to one of them at a time (the one that answered
//! last), and move on to the next when it cannot be reached: `etcd-client` itself
//! balances every call over all endpoints and fails it when any one of them is down
//! (etcdv3/etcd-client#39), which would make one dead etcd member stop the control plane.
//! A call moves on only when it cannot have taken effect (no connection, or etcd's
//! `Unavailable`, which includes "no leader"); a read also after its deadline. A write
//! that timed out is reported as unavailable: it may have committed, and every caller
//! reads again before it writes (compare-and-swap).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::control::{check_cluster, check_ttl, ControlPlane, Liveness, MapStream};
use crate::error::RouterError;
use crate::schema::{decode_map, encode_map, Keys, DEFAULT_PREFIX};
use crate::types::{ClusterId, NodeId, Revision, ShardMap};

/// How to reach etcd and where the cluster's keys live.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379` (`HOST:PORT` also works).
    pub endpoints: Vec<String>,
    /// Key prefix, starting and ending with `/`; default [`DEFAULT_PREFIX`].
    pub prefix: String,
    /// The cluster whose keys this control plane reads and writes.
    pub cluster: ClusterId,
    /// Time to establish a connection (default 3 s).
    pub connect_timeout: Duration,
    /// Time for one request to answer (default 5 s).
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive ping interval, which also detects a dead etcd under an open watch
    /// (default 5 s).
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may stay unanswered (default 3 s).
    pub keep_alive_timeout: Duration,
    /// `(user, password)` if etcd has authentication enabled.
    pub user: Option<(String, String)>,
}

impl EtcdConfig {
    /// A configuration with the default prefix and timeouts.
    pub fn new(endpoints: Vec<String>, cluster: ClusterId) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            cluster,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(3),
            user: None,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), RouterError> {
        if self.endpoints.is_empty() {
            return Err(RouterError::InvalidArgument("no etcd endpoints".into()));
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("keep_alive_interval", self.keep_alive_interval),
            ("keep_alive_timeout", self.keep_alive_timeout),
        ] {
            if d.is_zero() {
                return Err(RouterError::InvalidArgument(format!(
                    "{name} must be positive"
                )));
            }
        }
        Keys::new(&self.prefix, &self.cluster).map(|_| ())
    }
}

/// One `etcd-client` client per endpoint (made on first use), and the endpoint in use.
struct Pool {
    endpoints: Vec<String>,
    options: ConnectOptions,
    connect_deadline: Duration,
    clients: tokio::sync::Mutex<Vec<Option<Client>>>,
    current: AtomicUsize,
}

/// Why one attempt on one endpoint failed.
enum Failed {
    /// No client for the endpoint (cannot connect); nothing was sent.
    Connect(RouterError),
    /// etcd (or the transport) answered with an error.
    Etcd(etcd_client::Error),
    /// No answer within the deadline: a write may have taken effect.
    Timeout,
}

/// Whether an etcd error means the request cannot have taken effect.
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::Unavailable,
        _ => false,
    }
}

impl Pool {
    /// The client of endpoint `i`, connecting it first if needed.
    async fn client(&self, i: usize) -> Result<Client, RouterError> {
        let mut clients = self.clients.lock().await;
        if let Some(Some(client)) = clients.get(i) {
            return Ok(client.clone());
        }
        let endpoint = &self.endpoints[i];
        let client = tokio::time::timeout(
            self.connect_deadline,
            Client::connect([endpoint.as_str()], Some(self.options.clone())),
        )
        .await
        .map_err(|_| RouterError::Unavailable {
            reason: format!(
                "etcd connect to {endpoint}: no answer within {:?}",
                self.connect_deadline
            ),
        })?
        .map_err(|e| unavailable(&format!("connect to {endpoint}"), e))?;
        if let Some(slot) = clients.get_mut(i) {
            *slot = Some(client.clone());
        }
        Ok(client)
    }

    /// Runs `call` against the endpoint in use and, while it fails without effect, each
    /// other endpoint in turn; the first that answers becomes the one in use. `read`:
    /// a timed-out attempt may be repeated elsewhere too.
    async fn call<T, F, Fut>(
        &self,
        deadline: Duration,
        what: &str,
        read: bool,
        mut call: F,
    ) -> Result<T, RouterError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n.max(1);
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let outcome = match self.client(i).await {
                Err(e) => Err(Failed::Connect(e)),
                Ok(client) => match tokio::time::timeout(deadline, call(client)).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(Failed::Etcd(e)),
                    Err(_) => Err(Failed::Timeout),
                },
            };
            let endpoint = &self.endpoints[i];
            let error = match outcome {
                Ok(v) => {
                    if i != first {
                        tracing::info!(%endpoint, "etcd: using this endpoint");
                    }
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(Failed::Connect(e)) => e,
                Err(Failed::Etcd(e)) if not_sent(&e) => {
                    unavailable(&format!("{what} at {endpoint}"), e)
                }
                Err(Failed::Etcd(e)) => return Err(unavailable(what, e)),
                Err(Failed::Timeout) => {
                    let e = RouterError::Unavailable {
                        reason: format!("etcd {what} at {endpoint}: no answer within {deadline:?}"),
                    };
                    if !read {
                        return Err(e);
                    }
                    e
                }
            };
            tracing::debug!(%endpoint, error = %error, "etcd: endpoint failed; trying the next");
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| RouterError::Unavailable {
            reason: "no etcd endpoint configured".into(),
        }))
    }
}

/// The control plane on etcd. Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct EtcdControlPlane {
    pool: Arc<Pool>,
    keys: Keys,
    cluster: ClusterId,
    /// The bound on any single call.
    deadline: Duration,
}

impl std::fmt::Debug for EtcdControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdControlPlane")
            .field("keys", &self.keys)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: etcd_client::Error) -> RouterError {
    RouterError::Unavailable {
        reason: format!("etcd {what}: {e}"),
    }
}

fn revision_of(raw: i64, location: &str) -> Result<Revision, RouterError> {
    u64::try_from(raw)
        .map(Revision)
        .map_err(|_| RouterError::Corrupt {
            location: location.to_string(),
            reason: format!("negative revision {raw}"),
        })
}

fn to_i64(revision: Revision) -> Result<i64, RouterError> {
    i64::try_from(revision.0)
        .map_err(|_| RouterError::InvalidArgument(format!("revision {revision} out of range")))
}

impl EtcdControlPlane {
    /// Creates a client for `config`. Does not contact etcd (connections are made on
    /// first use), so it only fails on a bad configuration.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdControlPlane, RouterError> {
        config.validate()?;
        let keys = Keys::new(&config.prefix, &config.cluster)?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(config.keep_alive_interval, config.keep_alive_timeout)
            .with_require_leader(true);
        if let Some((user, password)) = &config.user {
            options = options.with_user(user.clone(), password.clone());
        }
        let deadline = config.connect_timeout + config.request_timeout;
        let pool = Pool {
            clients: tokio::sync::Mutex::new(vec![None; config.endpoints.len()]),
            endpoints: config.endpoints.clone(),
            options,
            connect_deadline: deadline,
            current: AtomicUsize::new(0),
        };
        Ok(EtcdControlPlane {
            pool: Arc::new(pool),
            keys,
            cluster: config.cluster,
            deadline,
        })
    }

    /// Runs one etcd read within the deadline (on another endpoint if need be).
    async fn read<T, F, Fut>(&self, what: &str, call: F) -> Result<T, RouterError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.pool.call(self.deadline, what, true, call).await
    }

    /// Runs one etcd write within the deadline (on another endpoint only if it cannot
    /// have taken effect).
    async fn write<T, F, Fut>(&self, what: &str, call: F) -> Result<T, RouterError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.pool.call(self.deadline, what, false, call).await
    }

    /// The map (if any) and the store revision it was read at.
    async fn load_at(&self) -> Result<(Option<ShardMap>, Revision), RouterError> {
        let key = self.keys.map();
        let resp = self
            .read("get map", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        let header = resp
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| RouterError::Corrupt {
                location: key.clone(),
                reason: "response without header".into(),
            })?;
        let store_revision = revision_of(header, &key)?;
        let map = match resp.kvs().first() {
            None => None,
            Some(kv) => Some(decode_map(
                kv.value(),
                revision_of(kv.mod_revision(), &key)?,
                &self.cluster,
                &key,
            )?),
        };
        Ok((map, store_revision))
    }

    /// The revision of the map returned by the `or_else` get of a failed transaction.
    fn revision_in_else(
        &self,
        resp: &etcd_client::TxnResponse,
    ) -> Result<Option<Revision>, RouterError> {
        let key = self.keys.map();
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                return match get.kvs().first() {
                    Some(kv) => Ok(Some(revision_of(kv.mod_revision(), &key)?)),
                    None => Ok(None),
                };
            }
        }
        Err(RouterError::Corrupt {
            location: key,
            reason: "failed transaction without its read".into(),
        })
    }

    fn committed_revision(&self, resp: &etcd_client::TxnResponse) -> Result<Revision, RouterError> {
        let key = self.keys.map();
        let raw = resp
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| RouterError::Corrupt {
                location: key.clone(),
                reason: "transaction response without header".into(),
            })?;
        revision_of(raw, &key)
    }
}

async fn bounded<T>(
    deadline: Duration,
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, RouterError> {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(RouterError::Unavailable {
            reason: format!("etcd {what}: no answer within {deadline:?}"),
        }),
    }
}

#[async_trait]
impl ControlPlane for EtcdControlPlane {
    fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    async fn load(&self) -> Result<Option<ShardMap>, RouterError> {
        Ok(self.load_at().await?.0)
    }

    async fn init(&self, map: ShardMap) -> Result<ShardMap, RouterError> {
        check_cluster(&self.cluster, &map)?;
        map.validate()?;
        let key = self.keys.map();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), encode_map(&map), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = self
            .write("init txn", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            let revision = self.committed_revision(&resp)?;
            tracing::info!(cluster = %self.cluster, %revision, "cluster initialised");
            return Ok(ShardMap { revision, ..map });
        }
        Err(RouterError::AlreadyInitialized {
            cluster: self.cluster.clone(),
            revision: self.revision_in_else(&resp)?.unwrap_or_default(),
        })
    }

    async fn compare_and_swap(
        &self,
        expected: Revision,
        new: ShardMap,
    ) -> Result<ShardMap, RouterError> {
        check_cluster(&self.cluster, &new)?;
        new.validate()?;
        let current = self
            .load()
            .await?
            .ok_or_else(|| RouterError::NotInitialized {
                cluster: self.cluster.clone(),
            })?;
        if current.revision != expected {
            return Err(RouterError::Conflict {
                current: current.revision,
            });
        }
        current.validate_successor(&new)?;
        let key = self.keys.map();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                to_i64(expected)?,
            )])
            .and_then([TxnOp::put(key.as_str(), encode_map(&new), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = self
            .write("cas txn", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            let revision = self.committed_revision(&resp)?;
            tracing::debug!(cluster = %self.cluster, %revision, "shard map committed");
            return Ok(ShardMap { revision, ..new });
        }
        match self.revision_in_else(&resp)? {
            Some(current) => Err(RouterError::Conflict { current }),
            None => Err(RouterError::NotInitialized {
                cluster: self.cluster.clone(),
            }),
        }
    }

    async fn watch(&self, after: Revision) -> Result<MapStream, RouterError> {
        to_i64(after)?;
        let (tx, rx) = mpsc::channel(16);
        let span = tracing::debug_span!("shard_map_watch", cluster = %self.cluster);
        tokio::spawn(watch_task(self.clone(), after, tx).instrument(span));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn register_node_alive(
        &self,
        node: NodeId,
        ttl: Duration,
    ) -> Result<Liveness, RouterError> {
        check_ttl(ttl)?;
        // etcd leases have whole seconds; round up.
        let ttl_secs = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
        let lease = grant_and_put(self, &self.keys.alive(node), node, ttl_secs).await?;
        let this = self.clone();
        let span = tracing::info_span!("liveness", cluster = %self.cluster, %node);
        Ok(Liveness::spawn(node, move |stop| {
            keep_alive_task(this, node, ttl_secs, lease, stop).instrument(span)
        }))
    }

    async fn live_nodes(&self) -> Result<BTreeSet<NodeId>, RouterError> {
        let prefix = self.keys.alive_prefix();
        let resp = self
            .read("get liveness", |mut c| {
                let prefix = prefix.clone();
                async move {
                    c.get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await
                }
            })
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| self.keys.parse_alive(kv.key()))
            .collect()
    }
}

/// Grants a lease of `ttl_secs` and writes the liveness key on it; returns the lease id.
async fn grant_and_put(
    cp: &EtcdControlPlane,
    key: &str,
    node: NodeId,
    ttl_secs: i64,
) -> Result<i64, RouterError> {
    // A lease granted twice (a retry after a timeout) only leaves an unused lease that
    // expires after its TTL.
    let lease = cp
        .read("lease grant", |mut c| async move {
            c.lease_grant(ttl_secs, None).await
        })
        .await?
        .id();
    cp.write("put liveness", |mut c| async move {
        c.put(
            key,
            node.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
    })
    .await?;
    Ok(lease)
}

/// Renews the node's lease every third of its TTL until `stop` resolves, then revokes it
/// (which deletes the key at once). If the lease expired meanwhile (etcd was unreachable
/// for longer than the TTL), grants a new one and writes the key again.
async fn keep_alive_task(
    cp: EtcdControlPlane,
    node: NodeId,
    ttl_secs: i64,
    mut lease: i64,
    mut stop: oneshot::Receiver<()>,
) {
    let key = cp.keys.alive(node);
    let period = Duration::from_millis(u64::try_from(ttl_secs).unwrap_or(1) * 1000 / 3);
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the key was just written
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
        }
        let renewed = tokio::select! {
            _ = &mut stop => break,
            r = renew(&cp, lease, &mut stream) => r,
        };
        match renewed {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("liveness lease expired; registering again");
                stream = None;
                let again = tokio::select! {
                    _ = &mut stop => break,
                    r = grant_and_put(&cp, &key, node, ttl_secs) => r,
                };
                match again {
                    Ok(new_lease) => lease = new_lease,
                    Err(e) => tracing::warn!(error = %e, "cannot register liveness again"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "liveness renewal failed");
                stream = None;
            }
        }
    }
    if let Err(e) = cp
        .write("lease revoke", |mut c| async move {
            c.lease_revoke(lease).await
        })
        .await
    {
        tracing::warn!(error = %e, "cannot revoke liveness lease; it expires after its ttl");
    }
}

/// One keep-alive round trip: `Ok(false)` if etcd says the lease is gone.
async fn renew(
    cp: &EtcdControlPlane,
    lease: i64,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<bool, RouterError> {
    let (keeper, responses) = match stream {
        Some(open) => open,
        None => {
            // etcd-client opens the stream with one round trip and reports a lease that
            // is gone (TTL 0) as `LeaseKeepAliveError`.
            let opened = cp
                .read("lease keep-alive", |mut c| async move {
                    match c.lease_keep_alive(lease).await {
                        Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(None),
                        other => other.map(Some),
                    }
                })
                .await?;
            match opened {
                Some(opened) => stream.insert(opened),
                None => return Ok(false),
            }
        }
    };
    bounded(cp.deadline, "lease keep-alive", keeper.keep_alive()).await?;
    match bounded(cp.deadline, "lease keep-alive", responses.message()).await? {
        Some(resp) => Ok(resp.ttl() > 0),
        None => Err(RouterError::Unavailable {
            reason: "etcd lease keep-alive stream closed".into(),
        }),
    }
}

/// Feeds `tx` with every map committed after `last`; see [`ControlPlane::watch`].
async fn watch_task(
    cp: EtcdControlPlane,
    mut last: Revision,
    tx: mpsc::Sender<Result<ShardMap, RouterError>>,
) {
    let key = cp.keys.map();
    // Start revision of the next etcd watch.
    let mut from = last.0 + 1;
    let mut restarts_without_progress = 0;
    loop {
        if restarts_without_progress > 3 {
            let _ = tx
                .send(Err(RouterError::Unavailable {
                    reason: "etcd keeps cancelling the shard map watch".into(),
                }))
                .await;
            return;
        }
        let options =
            WatchOptions::new().with_start_revision(i64::try_from(from).unwrap_or(i64::MAX));
        let mut stream = match cp
            .read("watch", |mut c| {
                let (key, options) = (key.clone(), options.clone());
                async move { c.watch(key, Some(options)).await }
            })
            .await
        {
            Ok(stream) => stream,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        loop {
            let message = tokio::select! {
                _ = tx.closed() => return,
                m = stream.message() => m,
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    let _ = tx
                        .send(Err(RouterError::Unavailable {
                            reason: "etcd closed the watch stream".into(),
                        }))
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(unavailable("watch", e))).await;
                    return;
                }
            };
            if resp.canceled() || resp.compact_revision() > 0 {
                // History after `last` is gone (or etcd dropped the watcher): deliver the
                // current map if it is newer, then watch again after what we read.
                tracing::info!(
                    compact_revision = resp.compact_revision(),
                    reason = resp.cancel_reason(),
                    "shard map watch cancelled; re-loading"
                );
                match cp.load_at().await {
                    Ok((map, store_revision)) => {
                        if let Some(map) = map.filter(|m| m.revision > last) {
                            last = map.revision;
                            if tx.send(Ok(map)).await.is_err() {
                                return;
                            }
                            restarts_without_progress = 0;
                        } else {
                            restarts_without_progress += 1;
                        }
                        from = store_revision.0 + 1;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                break;
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let item = match event.event_type() {
                    EventType::Put => revision_of(kv.mod_revision(), &key)
                        .and_then(|rev| decode_map(kv.value(), rev, &cp.cluster, &key)),
                    EventType::Delete => Err(RouterError::NotInitialized {
                        cluster: cp.cluster.clone(),
                    }),
                };
                let stop = item.is_err();
                if let Ok(map) = &item {
                    if map.revision <= last {
                        continue;
                    }
                    last = map.revision;
                    restarts_without_progress = 0;
                }
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        }
    }
}
