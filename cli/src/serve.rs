//! `nokv serve` (one replica) and `nokv dev` (a local three-replica cluster).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use nokv_client::{Client, ClientConfig, Member};
use nokv_meta_node::control::Control;
use nokv_meta_node::{run_node, NodeConfig};
use nokv_router::{ClusterId, ControlPlane, MemControlPlane};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::GlobalArgs;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file (see cli/nokv.example.toml); flags and env win over it.
    #[arg(long, env = "NOKV_CONFIG")]
    pub config: Option<PathBuf>,
    /// This replica's Raft node id (1, 2, 3, ...).
    #[arg(long, env = "NOKV_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address to listen on for Raft and client gRPC, HOST:PORT.
    #[arg(long, env = "NOKV_ADDR")]
    pub addr: Option<String>,
    /// Address peers and clients use to reach this node (default: --addr).
    #[arg(long, env = "NOKV_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Directory for the Raft log and snapshots.
    #[arg(long, env = "NOKV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "NOKV_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Raft heartbeat interval [default: 50ms].
    #[arg(long, env = "NOKV_HEARTBEAT", value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,
    /// Lower bound of the randomized election timeout [default: 200ms]. A
    /// follower starts an election after the leader lease (the maximum
    /// election timeout) plus a random timeout in [min, max) of silence.
    #[arg(long, env = "NOKV_ELECTION_TIMEOUT_MIN", value_parser = humantime::parse_duration)]
    pub election_timeout_min: Option<Duration>,
    /// Upper bound of the randomized election timeout, also the leader
    /// lease [default: 400ms].
    #[arg(long, env = "NOKV_ELECTION_TIMEOUT_MAX", value_parser = humantime::parse_duration)]
    pub election_timeout_max: Option<Duration>,
    /// Stand for election at once when a vote shows this node holds the
    /// longer log and the leader is silent, instead of waiting for the
    /// timer (saves a second election round) [default: true].
    #[arg(long, env = "NOKV_EARLY_ELECTIONS")]
    pub early_elections: Option<bool>,
    /// Slow timers for idle Raft groups: a leader whose log has not grown
    /// for two leases heartbeats at half the lease, a follower that hears
    /// its leader runs no election tick [default: true].
    #[arg(long, env = "NOKV_IDLE_HEARTBEATS")]
    pub idle_heartbeats: Option<bool>,
    /// Serve linearizable reads on the leader by its lease while a quorum
    /// acknowledged it within 80 % of the lease (no quorum round per read).
    /// Assumes the replicas' monotonic clocks run at rates within about
    /// 10 % of each other; `false` confirms every read batch with a quorum
    /// (read index) and assumes nothing of clocks [default: true].
    #[arg(long, env = "NOKV_READ_LEASE")]
    pub read_lease: Option<bool>,
    /// Followers serve linearizable reads too: each asks the leader for a
    /// read index (the leader confirms it leads, by lease or quorum) and
    /// reads once it has applied that far, spreading reads over the
    /// replicas (clients opt in with --read-from-followers). Off: a
    /// follower answers NOT_LEADER [default: false].
    #[arg(long, env = "NOKV_FOLLOWER_READS")]
    pub follower_reads: Option<bool>,
    /// Build a state-machine snapshot after this many log entries.
    #[arg(long, env = "NOKV_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Log entries kept behind the latest snapshot.
    #[arg(long, env = "NOKV_KEEP_LOGS")]
    pub keep_logs: Option<u64>,
    /// Most client commands group-committed in one Raft entry.
    #[arg(long, env = "NOKV_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Most watch streams this node serves at once (all shards); one more
    /// is refused as unavailable, and the client watches through another
    /// replica.
    #[arg(long, env = "NOKV_MAX_WATCH_STREAMS")]
    pub max_watch_streams: Option<usize>,
    /// Most Raft entries proposed but not yet committed.
    #[arg(long, env = "NOKV_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// Where file bodies live: s3://BUCKET/PREFIX (endpoint and credentials
    /// from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) or file:///DIR.
    #[arg(long, env = "NOKV_BLOB_STORE")]
    pub blob_store: Option<String>,
    /// How often the leader reclaims expired uploads and collects garbage.
    #[arg(long, env = "NOKV_GC_INTERVAL", value_parser = humantime::parse_duration)]
    pub gc_interval: Option<Duration>,
    /// How long superseded blocks stay readable before GC deletes them.
    #[arg(long, env = "NOKV_GC_GRACE", value_parser = humantime::parse_duration)]
    pub gc_grace: Option<Duration>,
    /// Longest pause between the leader's uploads of committed log entries
    /// to the object store (default 2s); bounds how much a disaster loses.
    #[arg(long, env = "NOKV_ARCHIVE_INTERVAL", value_parser = humantime::parse_duration)]
    pub archive_interval: Option<Duration>,
    /// Most log entries per archived segment (default 1000); this many
    /// pending entries are uploaded without waiting for the interval.
    #[arg(long, env = "NOKV_SEGMENT_ENTRIES")]
    pub segment_entries: Option<u64>,
    /// Refuse every client call without a valid token (`authorization:
    /// Bearer nokv_...`; clients pass --token or NOKV_TOKEN), each role to
    /// its calls (see docs/security.md). Needs --admin-token-file.
    #[arg(long, env = "NOKV_REQUIRE_AUTH")]
    pub require_auth: Option<bool>,
    /// With --require-auth: a file holding the bootstrap admin token (make
    /// it with `nokv auth token generate --out FILE`; give every node the
    /// same one). The node accepts it as admin and uses it for its own
    /// calls to other nodes; create the other tokens with it.
    #[arg(long, env = "NOKV_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// The config file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    pub node_id: Option<u64>,
    pub addr: Option<String>,
    pub advertise_addr: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub metrics_addr: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub heartbeat: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub election_timeout_min: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub election_timeout_max: Option<Duration>,
    pub early_elections: Option<bool>,
    pub idle_heartbeats: Option<bool>,
    pub read_lease: Option<bool>,
    pub follower_reads: Option<bool>,
    pub snapshot_every: Option<u64>,
    pub keep_logs: Option<u64>,
    pub max_batch: Option<usize>,
    pub max_inflight: Option<usize>,
    pub max_watch_streams: Option<usize>,
    pub blob_store: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub gc_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub gc_grace: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub archive_interval: Option<Duration>,
    pub segment_entries: Option<u64>,
    pub require_auth: Option<bool>,
    pub admin_token_file: Option<PathBuf>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A fully resolved replica configuration.
pub struct Resolved {
    pub node: NodeConfig,
    pub addr: String,
    pub metrics_addr: Option<String>,
}

impl ServeArgs {
    /// Merges flags/env over the config file over defaults.
    pub fn resolve(self) -> anyhow::Result<Resolved> {
        let file: ServeFile = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?
            }
            None => ServeFile::default(),
        };
        let node_id = self
            .node_id
            .or(file.node_id)
            .context("--node-id is required (or node_id in --config, or NOKV_NODE_ID)")?;
        let addr = self
            .addr
            .or(file.addr)
            .context("--addr HOST:PORT is required")?;
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .context("--data-dir is required")?;
        let advertise = self
            .advertise_addr
            .or(file.advertise_addr)
            .unwrap_or_else(|| addr.clone());
        if advertise.starts_with("0.0.0.0") || advertise.starts_with("[::]") {
            bail!("--addr {addr} is a wildcard; pass --advertise-addr with a reachable address");
        }
        let mut node = NodeConfig::new(node_id, advertise, data_dir);
        if let Some(v) = self.heartbeat.or(file.heartbeat) {
            node.heartbeat = v;
        }
        if let Some(v) = self.election_timeout_min.or(file.election_timeout_min) {
            node.election_timeout_min = v;
        }
        if let Some(v) = self.election_timeout_max.or(file.election_timeout_max) {
            node.election_timeout_max = v;
        }
        if let Some(v) = self.early_elections.or(file.early_elections) {
            node.early_elections = v;
        }
        if let Some(v) = self.idle_heartbeats.or(file.idle_heartbeats) {
            node.idle_heartbeats = v;
        }
        if let Some(v) = self.read_lease.or(file.read_lease) {
            node.read_lease = v;
        }
        if let Some(v) = self.follower_reads.or(file.follower_reads) {
            node.follower_reads = v;
        }
        if let Some(v) = self.snapshot_every.or(file.snapshot_every) {
            node.snapshot_every = v;
        }
        if let Some(v) = self.keep_logs.or(file.keep_logs) {
            node.keep_logs_behind_snapshot = v;
        }
        if let Some(v) = self.max_watch_streams.or(file.max_watch_streams) {
            node.max_watch_streams = v;
        }
        if let Some(v) = self.max_batch.or(file.max_batch) {
            node.max_batch = v;
        }
        if let Some(v) = self.max_inflight.or(file.max_inflight) {
            node.max_inflight = v;
        }
        node.blob_store = self.blob_store.or(file.blob_store);
        if let Some(v) = self.gc_interval.or(file.gc_interval) {
            node.gc_interval = v;
        }
        if let Some(v) = self.gc_grace.or(file.gc_grace) {
            node.gc_grace = v;
        }
        if let Some(v) = self.archive_interval.or(file.archive_interval) {
            node.archive_interval = v;
        }
        if let Some(v) = self.segment_entries.or(file.segment_entries) {
            node.segment_entries = v;
        }
        let admin_token_file = self.admin_token_file.or(file.admin_token_file);
        match (self.require_auth.or(file.require_auth), admin_token_file) {
            (Some(true), Some(path)) => {
                node.auth = Some(nokv_meta_node::auth::AuthConfig {
                    admin_token: read_admin_token(&path)?,
                });
            }
            (Some(true), None) => bail!(
                "--require-auth needs --admin-token-file (make one with \
                 `nokv auth token generate --out admin.token`)"
            ),
            (_, Some(_)) => bail!("--admin-token-file is used with --require-auth only"),
            (_, None) => {}
        }
        node.validate()?;
        Ok(Resolved {
            node,
            addr,
            metrics_addr: self.metrics_addr.or(file.metrics_addr),
        })
    }
}

/// The bootstrap admin token from its file (the error never quotes it).
fn read_admin_token(path: &std::path::Path) -> anyhow::Result<nokv_client::Token> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token file {}", path.display()))?;
    nokv_client::Token::parse(&text).map_err(|e| {
        anyhow::anyhow!(
            "the admin token file {} does not hold a token: {e}",
            path.display()
        )
    })
}

/// Cancels `token` on Ctrl-C or SIGTERM.
pub(crate) fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {},
                        _ = term.recv() => {},
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

/// The node's TLS from the global --tls-* flags: all three, or none.
fn node_tls(g: &GlobalArgs) -> anyhow::Result<Option<nokv_meta_node::NodeTls>> {
    match (&g.tls_cert, &g.tls_key, &g.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            Ok(Some(nokv_meta_node::NodeTls::load(cert, key, ca)?))
        }
        (None, None, None) => Ok(None),
        _ => bail!(
            "serving TLS needs all of --tls-cert, --tls-key and --tls-ca (make them with \
             `nokv certs ca` and `nokv certs issue`)"
        ),
    }
}

pub async fn serve(args: ServeArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let mut resolved = args.resolve()?;
    resolved.node.cluster = g.cluster.clone();
    resolved.node.tls = node_tls(g)?;
    let control = crate::control::from_args(g).await?;
    let listener = TcpListener::bind(&resolved.addr)
        .await
        .with_context(|| format!("binding {}", resolved.addr))?;
    let metrics = match &resolved.metrics_addr {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding metrics address {a}"))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    // The node's own client (shard admin, reconciler) connects to itself:
    // with TLS it presents the node's certificate.
    let mut own = g.client_config(vec![resolved.node.advertise.clone()])?;
    own.address_map.clear();
    // With auth on, it calls other nodes as the bootstrap admin.
    if let Some(auth) = &resolved.node.auth {
        own.token = Some(auth.admin_token.clone());
    }
    let control = control
        .map(|plane| node_control(plane, own, shutdown.clone()))
        .transpose()?;
    run_node(resolved.node, listener, metrics, control, shutdown).await?;
    Ok(())
}

/// What a node following `plane` needs: the map store, and shard creation,
/// removal and reconciliation run through the SDK against the node itself.
fn node_control(
    plane: Arc<dyn ControlPlane>,
    own: ClientConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Control> {
    let advertise = own.endpoints.first().cloned().unwrap_or_default();
    let client = Client::new(own)?;
    crate::shard::spawn_reconciler(client.clone(), plane.clone(), advertise, shutdown);
    Ok(Control {
        plane: plane.clone(),
        admin: Some(Arc::new(crate::shard::NodeAdmin { client, plane })),
    })
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the replicas keep their data (kept across restarts).
    #[arg(long, env = "NOKV_DEV_DIR", default_value = ".nokv-dev")]
    pub data_dir: PathBuf,
    /// Host to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// First port; replica N listens on base-port + N - 1.
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
    /// Number of replicas.
    #[arg(long, default_value_t = 3)]
    pub replicas: u16,
    /// Where file bodies live (default: a directory under --data-dir).
    #[arg(long, env = "NOKV_BLOB_STORE")]
    pub blob_store: Option<String>,
}

pub async fn dev(args: DevArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    if args.replicas == 0 || args.replicas > 7 {
        bail!("--replicas must be between 1 and 7");
    }
    if g.tls_ca.is_some() || g.tls_cert.is_some() || g.tls_key.is_some() {
        bail!("`nokv dev` serves plain HTTP/2 on loopback; run `nokv serve` with --tls-* for TLS");
    }
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let blob_store = match &args.blob_store {
        Some(url) => url.clone(),
        None => {
            let dir = args.data_dir.join("blobs");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let abs = std::fs::canonicalize(&dir)
                .with_context(|| format!("resolving {}", dir.display()))?;
            format!("file://{}", abs.display())
        }
    };
    // The control plane: etcd with --etcd, else a file beside the data.
    let control: Arc<dyn ControlPlane> = match crate::control::from_args(g).await? {
        Some(cp) => cp,
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating {}", args.data_dir.display()))?;
            Arc::new(MemControlPlane::open(
                ClusterId::new(g.cluster.clone())?,
                args.data_dir.join("control-plane.json"),
            )?)
        }
    };
    let mut members = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..args.replicas {
        let id = u64::from(i) + 1;
        let port = args
            .base_port
            .checked_add(i)
            .context("--base-port too high for the replica count")?;
        let addr = format!("{}:{port}", args.host);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr} (is another nokv dev running?)"))?;
        let mut config = NodeConfig::new(id, addr.clone(), args.data_dir.join(format!("node{id}")));
        config.blob_store = Some(blob_store.clone());
        let token = shutdown.clone();
        let node_control = node_control(
            control.clone(),
            ClientConfig::new(vec![addr.clone()]),
            shutdown.clone(),
        )?;
        nodes.push(tokio::spawn(async move {
            run_node(config, listener, None, Some(node_control), token).await
        }));
        members.push(Member { id, addr });
    }
    crate::control::init_map(control.as_ref(), &members).await?;
    let addrs: Vec<String> = members.iter().map(|m| m.addr.clone()).collect();
    let client = Client::new(ClientConfig::new(addrs.clone()))?;
    let initialized = client
        .status_of(&addrs[0])
        .await
        .map(|s| s.initialized)
        .unwrap_or(false);
    if !initialized {
        match client.init_cluster(&addrs[0], members.clone()).await {
            Ok(()) | Err(nokv_client::ClientError::AlreadyInitialized(_)) => {}
            Err(e) => return Err(e).context("initializing the dev cluster"),
        }
    }
    let (leader, leader_addr) =
        crate::cluster::wait_for_leader(&client, &addrs, Duration::from_secs(30)).await?;
    let endpoints = addrs.join(",");
    if g.json {
        crate::output::print_json(&serde_json::json!({
            "endpoints": addrs,
            "leader_id": leader,
            "leader_addr": leader_addr,
            "data_dir": args.data_dir,
        }));
    } else {
        outln!(
            "NoKV dev cluster is ready: {} replicas, data in {}",
            args.replicas,
            args.data_dir.display()
        );
        outln!("leader: node {leader} at {leader_addr}");
        outln!("object store: {blob_store}");
        outln!("endpoints: {endpoints}");
        outln!();
        outln!("  export NOKV_ENDPOINTS={endpoints}");
        outln!();
        outln!("Press Ctrl-C to stop; the data stays for the next start.");
    }
    let mut first_error = None;
    for node in nodes {
        match node.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.cancel();
                first_error.get_or_insert_with(|| anyhow::Error::from(e));
            }
            Err(e) => {
                shutdown.cancel();
                first_error.get_or_insert_with(|| anyhow::anyhow!("replica task failed: {e}"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            if !g.json {
                outln!("stopped");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_resolves() {
        let file: ServeFile =
            toml::from_str(include_str!("../nokv.example.toml")).expect("example config parses");
        assert_eq!(file.node_id, Some(1));
        assert_eq!(file.heartbeat, Some(Duration::from_millis(50)));
        assert_eq!(file.archive_interval, Some(Duration::from_secs(2)));
        assert_eq!(file.segment_entries, Some(1000));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nokv.toml");
        std::fs::write(&path, include_str!("../nokv.example.toml")).expect("write");
        let args = ServeArgs {
            config: Some(path),
            node_id: Some(7),
            ..Default::default()
        };
        let resolved = args.resolve().expect("resolves");
        assert_eq!(resolved.node.node_id, 7, "flags win over the file");
        assert_eq!(resolved.addr, "127.0.0.1:7401");
        assert_eq!(resolved.node.max_batch, 256);
        assert_eq!(resolved.node.archive_interval, Duration::from_secs(2));
        assert_eq!(resolved.node.segment_entries, 1000);
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        assert!(toml::from_str::<ServeFile>("nod_id = 1").is_err());
    }

    #[test]
    fn wildcard_without_advertise_is_rejected() {
        let args = ServeArgs {
            node_id: Some(1),
            addr: Some("0.0.0.0:7401".into()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        assert!(args.resolve().is_err());
    }
}
