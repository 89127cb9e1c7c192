//! A three-node NoKV cluster in containers, started through testcontainers.
//!
//! Networks (all created by the run, all removed after it):
//!
//! * one **client network** holds every node and the S3 server. The harness
//!   reaches each node through a fixed host port mapped onto it, and nodes
//!   reach the object store there. It is never partitioned: faults cut the
//!   links *between replicas*, while clients keep reaching every replica.
//! * one **link network** per pair of nodes (`p12`, `p13`, `p23`). Node `i`
//!   is attached to its two links under the alias `n{i}`, and peers address
//!   each other only by those aliases (`--advertise-addr n{i}:7400`), so
//!   node 1 reaches node 2 only over `p12`. Detaching both ends from `p12`
//!   cuts exactly that link; any partition of three nodes is a set of cut
//!   links, including the "bridge" where each side sees a different majority.
//!
//! The control plane is one **etcd** container on the client network
//! (`{prefix}-etcd`); every replica serves with `--etcd`, so the cluster, its
//! nodes and its shard map live there. The cluster is initialised the way an
//! operator does it, with the `nokv` binary inside replica 1 (`docker exec …
//! nokv --etcd … cluster init`), and a second shard is grafted at [`GRAFT`]
//! once the root shard has a leader: two Raft groups on the same three
//! replicas, one tree. The etcd faults detach etcd from the client network
//! or kill it; they never touch the links between replicas.
//!
//! Every container, network and volume carries the run's label and is
//! removed when the [`DockerCluster`] is dropped, also after a panic or error.
//!
//! Replicas run with a short GC grace and frequent GC passes
//! ([`ClusterOptions::gc_grace`], [`ClusterOptions::gc_interval`]), so
//! blocks of overwritten bodies are deleted while the faults go on, and
//! [`DockerCluster::fsck`] checks at the end that no live block went
//! missing. Each replica reads a clock offset from [`CLOCK_OFFSET_FILE`]
//! (images built with the `clock-skew` feature; see
//! `meta-node/src/clock.rs`), which [`DockerCluster::set_clock_offset`]
//! replaces.

use std::collections::BTreeMap;
use std::time::Duration;

use nokv_client::{Client, ClientConfig, Role};
use testcontainers::core::{ContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::time::Instant;

use crate::docker::{Docker, DockerError, RUN_LABEL};

/// Port every node serves gRPC on inside its container.
const NODE_PORT: u16 = 7400;
const S3_PORT: u16 = 9000;
const ETCD_PORT: u16 = 2379;
/// Where the second shard is grafted (a new name in the root directory).
pub const GRAFT: &str = "/s1";
/// The shards of a run, by name: the root shard (`/`) and the graft.
pub const SHARDS: [&str; 2] = ["/", GRAFT];
/// Where each replica reads its test clock offset (signed milliseconds and
/// a newline; missing: 0), named to it by `NOKV_TEST_CLOCK_OFFSET_FILE`.
pub const CLOCK_OFFSET_FILE: &str = "/tmp/nokv-clock-offset";
/// Credentials of the run's S3 server.
pub const S3_ACCESS_KEY: &str = "nokv";
pub const S3_SECRET_KEY: &str = "nokv-secret";

/// Why a cluster could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("image {0} is not present locally (build it with `bash docker/build.sh`; nothing is pulled)")]
    MissingImage(String),
    #[error("testcontainers: {0}")]
    Container(String),
    #[error("no free host port: {0}")]
    Port(#[source] std::io::Error),
    #[error("nokv client: {0}")]
    Client(#[from] nokv_client::ClientError),
    #[error("{0}")]
    Timeout(String),
    #[error("no node {0} in this cluster")]
    NoSuchNode(u64),
    #[error("harness: {0}")]
    Harness(String),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `name:tag` of the NoKV image (its entrypoint is `nokv`).
    pub nokv_image: String,
    /// `name:tag` of the S3 server image (s3s-fs, with a `nokv` bucket).
    pub s3_image: String,
    /// `name:tag` of the etcd image (entrypoint `etcd`).
    pub etcd_image: String,
    /// Number of replicas (3 for every nemesis in this crate).
    pub nodes: u64,
    /// `RUST_LOG` of the replicas.
    pub rust_log: String,
    /// More environment variables of the replicas (`NOKV_*` settings of
    /// `nokv serve`, for experiments).
    pub node_env: Vec<(String, String)>,
    /// How long to wait for the cluster to form.
    pub ready_timeout: Duration,
    /// `nokv serve --gc-grace`: how long superseded blocks stay readable.
    pub gc_grace: Duration,
    /// `nokv serve --gc-interval`: how often the leader collects garbage.
    pub gc_interval: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nokv_image: "nokv:dev".into(),
            s3_image: "nokv-s3s-fs:dev".into(),
            etcd_image: "nokv-etcd:dev".into(),
            nodes: 3,
            rust_log: "info".into(),
            node_env: Vec::new(),
            ready_timeout: Duration::from_secs(60),
            gc_grace: Duration::from_secs(2),
            gc_interval: Duration::from_millis(500),
        }
    }
}

/// One replica's container.
pub struct NodeHandle {
    pub id: u64,
    /// Container name (what `docker kill` etc. take).
    pub container: String,
    /// Name the replicas use for it (`n1`), on its link networks.
    pub alias: String,
    /// `127.0.0.1:PORT`: how the harness reaches it.
    pub host_addr: String,
    _handle: ContainerAsync<GenericImage>,
}

/// One replica's answer to a status request, as recorded in a run's
/// `status.json` when the cluster does not settle.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaStatus {
    pub node: u64,
    /// `leader`, `follower`, `candidate`, `learner`, `shutdown`, `unknown`;
    /// `None`: it did not answer.
    pub role: Option<String>,
    pub term: Option<u64>,
    /// The leader it names.
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Why it did not answer.
    pub error: Option<String>,
}

impl ReplicaStatus {
    pub fn from_response(node: u64, s: &nokv_client::StatusResponse) -> ReplicaStatus {
        let role = match s.role() {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
            Role::Unknown => "unknown",
        };
        ReplicaStatus {
            // The node that answered, which is the one asked unless the
            // harness's address map is wrong.
            node: if s.node_id == 0 { node } else { s.node_id },
            role: Some(role.into()),
            term: Some(s.term),
            leader: s.leader_id,
            last_log_index: s.last_log_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            error: None,
        }
    }

    pub fn unanswered(node: u64, error: String) -> ReplicaStatus {
        ReplicaStatus {
            node,
            role: None,
            term: None,
            leader: None,
            last_log_index: None,
            applied_index: None,
            snapshot_index: None,
            error: Some(error),
        }
    }
}

/// The leader every replica names, if all answered, all name the same one
/// and that one says it leads.
pub fn agreed_leader(statuses: &[ReplicaStatus]) -> Option<u64> {
    let leader = statuses.first()?.leader?;
    let all_agree = statuses
        .iter()
        .all(|s| s.error.is_none() && s.leader == Some(leader));
    let it_leads = statuses
        .iter()
        .any(|s| s.node == leader && s.role.as_deref() == Some("leader"));
    (all_agree && it_leads).then_some(leader)
}

/// What `nokv fsck --json` reported for every shard.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsckReport {
    pub shards: Vec<u16>,
    pub live_blocks: u64,
    pub objects_scanned: u64,
    /// `MISSING_BLOCK` (a live block is gone: GC deleted it), `SIZE_MISMATCH`,
    /// `ORPHAN_OBJECT` (an object nothing references or queues).
    pub problems: Vec<FsckProblem>,
}

/// One problem `nokv fsck` found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsckProblem {
    pub shard: u16,
    pub kind: String,
    pub key: String,
    pub inode: u64,
    pub expected_size: u64,
    pub actual_size: u64,
}

/// Removes everything labelled with the run when dropped.
struct Cleanup {
    run: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for error in Docker::remove_run(Some(&self.run)) {
            tracing::warn!(run = %self.run, %error, "cleanup");
        }
    }
}

/// A running cluster. Fields drop in order: containers first (through
/// testcontainers), then the label sweep of networks and volumes.
pub struct DockerCluster {
    pub run: String,
    docker: Docker,
    nodes: Vec<NodeHandle>,
    _s3: ContainerAsync<GenericImage>,
    _etcd: ContainerAsync<GenericImage>,
    /// Container name of etcd (what the etcd faults act on).
    pub etcd_container: String,
    client_net: String,
    /// `http://127.0.0.1:PORT` of the S3 server, as the harness reaches it.
    pub s3_endpoint: String,
    /// The network of each link `(a, b)`, `a < b`.
    links: BTreeMap<(u64, u64), String>,
    /// Shard 0 and the graft's shard, once created.
    shard_ids: Vec<u32>,
    _cleanup: Cleanup,
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(ClusterError::Port)?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(ClusterError::Port)
}

fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

/// A link's key with the smaller id first.
pub fn link(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

impl DockerCluster {
    /// Starts the S3 server, etcd and the replicas. The cluster is not formed
    /// yet: [`DockerCluster::initialize`] does that, so a caller whose cluster
    /// never forms still has the containers to read logs and statuses from.
    pub async fn start(run: &str, options: &ClusterOptions) -> Result<DockerCluster, ClusterError> {
        let docker = Docker::default();
        for image in [&options.nokv_image, &options.s3_image, &options.etcd_image] {
            if !docker.image_exists(image).await? {
                return Err(ClusterError::MissingImage(image.clone()));
            }
        }
        // From here on, whatever was created is removed on every exit path.
        let cleanup = Cleanup {
            run: run.to_string(),
        };
        let prefix = format!("nokv-j-{run}");
        let client_net = format!("{prefix}-c");
        docker.create_network(&client_net, run).await?;
        let ids: Vec<u64> = (1..=options.nodes).collect();
        let mut links = BTreeMap::new();
        for (i, &a) in ids.iter().enumerate() {
            for &b in &ids[i + 1..] {
                let name = format!("{prefix}-p{a}{b}");
                docker.create_network(&name, run).await?;
                links.insert((a, b), name);
            }
        }

        let s3_name = format!("{prefix}-s3");
        let s3_port = free_port()?;
        let (name, tag) = split_image(&options.s3_image);
        let s3 = GenericImage::new(name, tag)
            .with_cmd([
                "--host",
                "0.0.0.0",
                "--port",
                "9000",
                "--access-key",
                S3_ACCESS_KEY,
                "--secret-key",
                S3_SECRET_KEY,
                "/data",
            ])
            .with_container_name(&s3_name)
            .with_network(&client_net)
            .with_label(RUN_LABEL, run)
            .with_mapped_port(s3_port, ContainerPort::Tcp(S3_PORT))
            .start()
            .await
            .map_err(|e| ClusterError::Container(format!("start {s3_name}: {e}")))?;

        // The control plane. Its data is in the container's own layer, which
        // survives `docker kill` and `docker start` (the etcd-kill fault).
        let etcd_name = format!("{prefix}-etcd");
        let etcd_url = format!("http://{etcd_name}:{ETCD_PORT}");
        let (name, tag) = split_image(&options.etcd_image);
        let etcd = GenericImage::new(name, tag)
            .with_wait_for(WaitFor::message_on_either_std(
                "ready to serve client requests",
            ))
            .with_cmd([
                "--name",
                "e1",
                "--data-dir",
                "/data/etcd",
                "--listen-client-urls",
                "http://0.0.0.0:2379",
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "e1=http://127.0.0.1:2380",
            ])
            .with_container_name(&etcd_name)
            .with_network(&client_net)
            .with_label(RUN_LABEL, run)
            .start()
            .await
            .map_err(|e| ClusterError::Container(format!("start {etcd_name}: {e}")))?;

        let mut nodes = Vec::new();
        for &id in &ids {
            let container = format!("{prefix}-n{id}");
            let alias = format!("n{id}");
            let volume = format!("{prefix}-n{id}-data");
            docker.create_volume(&volume, run).await?;
            let port = free_port()?;
            let (name, tag) = split_image(&options.nokv_image);
            let advertise = format!("{alias}:{NODE_PORT}");
            let gc_grace = humantime::format_duration(options.gc_grace).to_string();
            let gc_interval = humantime::format_duration(options.gc_interval).to_string();
            let mut image = GenericImage::new(name, tag)
                .with_cmd([
                    "serve",
                    "--node-id",
                    &id.to_string(),
                    "--addr",
                    "0.0.0.0:7400",
                    "--advertise-addr",
                    &advertise,
                    "--data-dir",
                    "/data",
                    "--blob-store",
                    "s3://nokv/jepsen",
                    "--etcd",
                    &etcd_url,
                    "--gc-grace",
                    &gc_grace,
                    "--gc-interval",
                    &gc_interval,
                ])
                .with_container_name(&container)
                .with_network(&client_net)
                .with_label(RUN_LABEL, run)
                .with_mount(Mount::volume_mount(&volume, "/data"))
                .with_mapped_port(port, ContainerPort::Tcp(NODE_PORT))
                .with_env_var("AWS_ENDPOINT_URL", format!("http://{s3_name}:{S3_PORT}"))
                .with_env_var("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
                .with_env_var("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
                .with_env_var("AWS_REGION", "us-east-1")
                .with_env_var("AWS_EC2_METADATA_DISABLED", "true")
                .with_env_var("NOKV_TEST_CLOCK_OFFSET_FILE", CLOCK_OFFSET_FILE)
                .with_env_var("RUST_LOG", &options.rust_log)
                .with_env_var("NO_COLOR", "1");
            for (key, value) in &options.node_env {
                image = image.with_env_var(key, value);
            }
            let handle = image
                .start()
                .await
                .map_err(|e| ClusterError::Container(format!("start {container}: {e}")))?;
            nodes.push(NodeHandle {
                id,
                container,
                alias,
                host_addr: format!("127.0.0.1:{port}"),
                _handle: handle,
            });
        }
        let cluster = DockerCluster {
            run: run.to_string(),
            docker,
            nodes,
            _s3: s3,
            _etcd: etcd,
            etcd_container: etcd_name,
            client_net,
            s3_endpoint: format!("http://127.0.0.1:{s3_port}"),
            links,
            shard_ids: vec![0],
            _cleanup: cleanup,
        };
        for &(a, b) in cluster.links.keys() {
            cluster.heal_link(a, b).await?;
        }
        Ok(cluster)
    }

    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    pub fn node(&self, id: u64) -> Result<&NodeHandle, ClusterError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or(ClusterError::NoSuchNode(id))
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Client settings that reach this cluster from the host: leader hints
    /// (`n2:7400`) map to host ports, bodies go to the mapped S3 port.
    pub fn client_config(&self, endpoints: Vec<String>) -> ClientConfig {
        let mut config = ClientConfig::new(endpoints);
        config.address_map = self
            .nodes
            .iter()
            .map(|n| (format!("{}:{NODE_PORT}", n.alias), n.host_addr.clone()))
            .collect();
        config.store_endpoint = Some(self.s3_endpoint.clone());
        config
    }

    /// A client that may use every replica.
    pub fn client(&self, op_timeout: Duration) -> Result<Client, ClusterError> {
        let mut config =
            self.client_config(self.nodes.iter().map(|n| n.host_addr.clone()).collect());
        config.deadline = op_timeout;
        config.attempt_timeout = op_timeout.min(Duration::from_secs(2));
        config.connect_timeout = Duration::from_millis(500);
        Ok(Client::new(config)?)
    }

    /// Records the cluster in etcd and forms the root shard with the
    /// `nokv` binary inside replica 1 (it resolves the replicas' aliases),
    /// waits for a leader, then grafts the second shard at [`GRAFT`] on all
    /// three replicas and waits until every shard has an agreed leader.
    /// Forms the cluster (`nokv cluster init` through etcd), grafts the second
    /// shard and waits until every shard has a leader the replicas agree on.
    pub async fn initialize(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        let members: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}:{NODE_PORT}", n.id, n.alias))
            .collect();
        let etcd_url = format!("http://{}:{ETCD_PORT}", self.etcd_container);
        let wait = format!("{}s", timeout.as_secs().max(1));
        let first = self.nodes[0].container.clone();
        let members = members.join(",");
        self.docker
            .exec(
                &first,
                &[
                    "nokv",
                    "--etcd",
                    &etcd_url,
                    "cluster",
                    "init",
                    "--members",
                    &members,
                    "--wait",
                    &wait,
                ],
            )
            .await?;
        let deadline = Instant::now() + timeout;
        self.wait_for_leader(deadline.saturating_duration_since(Instant::now()))
            .await?;
        let client = self.client(Duration::from_secs(30))?;
        let ids: Vec<u64> = self.node_ids();
        let (graft, revision) = loop {
            match client.create_shard_on_cluster(GRAFT, ids.clone()).await {
                Ok(r) => break (r.shard, r.map_revision),
                // An earlier attempt made it, though its answer was lost.
                Err(e) if e.is_exists() => {
                    let map = client.refresh_shard_map().await?;
                    let id = map.and_then(|m| {
                        m.shards
                            .values()
                            .find(|s| s.graft == GRAFT)
                            .map(|s| (u32::from(s.id.0), m.revision.0))
                    });
                    match id {
                        Some(id) => break id,
                        None => return Err(e.into()),
                    }
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(ClusterError::Timeout(format!(
                        "grafting {GRAFT} did not succeed within {timeout:?}: {e}"
                    )))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "graft not created yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        self.shard_ids = vec![0, graft];
        self.wait_for_map(revision, deadline).await?;
        self.wait_for_shard_leaders(deadline.saturating_duration_since(Instant::now()))
            .await
            .map(|_| ())
    }

    /// Waits until every node serves a shard map of at least `revision`
    /// (nodes learn the map from etcd; a client asking a node that has not
    /// yet would route by the map without the graft).
    async fn wait_for_map(&self, revision: u64, deadline: Instant) -> Result<(), ClusterError> {
        let client = self.client(Duration::from_secs(2))?;
        loop {
            let mut behind = Vec::new();
            for n in &self.nodes {
                match client.shard_map_of(&n.host_addr).await {
                    Ok(m) if m.revision >= revision => {}
                    Ok(m) => behind.push(format!("node {} at revision {}", n.id, m.revision)),
                    Err(e) => behind.push(format!("node {}: {e}", n.id)),
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(format!(
                    "not every node serves the shard map of revision {revision}: {}",
                    behind.join("; ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The shards of the run: 0 and the graft's.
    pub fn shard_ids(&self) -> &[u32] {
        &self.shard_ids
    }

    /// Every node's view of every shard replica it hosts, in node order
    /// (an error text for a node that does not answer).
    pub async fn node_statuses(
        &self,
    ) -> Vec<(u64, Result<nokv_client::NodeStatusResponse, String>)> {
        let client = match self.client(Duration::from_secs(1)) {
            Ok(c) => c,
            Err(e) => {
                return self
                    .nodes
                    .iter()
                    .map(|n| (n.id, Err(format!("no client: {e}"))))
                    .collect()
            }
        };
        let asks = self.nodes.iter().map(|n| {
            let client = &client;
            async move {
                (
                    n.id,
                    client
                        .node_status(&n.host_addr)
                        .await
                        .map_err(|e| e.to_string()),
                )
            }
        });
        futures::future::join_all(asks).await
    }

    /// The leader of each shard, as the replicas that say they lead report
    /// it right now (a shard with no answering leader is missing).
    pub async fn shard_leaders(&self) -> BTreeMap<u32, u64> {
        let mut leaders = BTreeMap::new();
        for (_, status) in self.node_statuses().await {
            let Ok(status) = status else { continue };
            for s in status.shards {
                if s.role() == Role::Leader {
                    leaders.insert(s.shard, s.node_id);
                }
            }
        }
        leaders
    }

    /// The leader of every shard of the run, if every node answers and, for
    /// each shard, every replica hosting it (at least a majority of the
    /// nodes) names the same leader, which says it leads.
    pub async fn agreed_shard_leaders(&self) -> Option<BTreeMap<u32, u64>> {
        let statuses = self.node_statuses().await;
        let mut views: BTreeMap<u32, Vec<nokv_client::StatusResponse>> = BTreeMap::new();
        for (_, status) in statuses {
            for s in status.ok()?.shards {
                views.entry(s.shard).or_default().push(s);
            }
        }
        let majority = self.nodes.len() / 2 + 1;
        let mut leaders = BTreeMap::new();
        for shard in &self.shard_ids {
            let view = views.get(shard)?;
            let leader = view.first()?.leader_id?;
            let agree = view.len() >= majority
                && view.iter().all(|s| s.leader_id == Some(leader))
                && view
                    .iter()
                    .any(|s| s.node_id == leader && s.role() == Role::Leader);
            if !agree {
                return None;
            }
            leaders.insert(*shard, leader);
        }
        Some(leaders)
    }

    /// Waits until every shard has a leader its replicas agree on.
    pub async fn wait_for_shard_leaders(
        &self,
        timeout: Duration,
    ) -> Result<BTreeMap<u32, u64>, ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leaders) = self.agreed_shard_leaders().await {
                return Ok(leaders);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(format!(
                    "the shards' replicas did not agree on leaders within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Carries out one membership step through any node's `Membership`
    /// RPC (the node runs it against etcd), within `timeout`.
    pub async fn membership(
        &self,
        request: nokv_proto::pb::MembershipRequest,
        timeout: Duration,
    ) -> Result<Vec<String>, ClusterError> {
        let client = self.client(timeout)?;
        match tokio::time::timeout(timeout, client.membership_on_cluster(request)).await {
            Ok(Ok(r)) => Ok(r.changes),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ClusterError::Timeout(format!(
                "membership step did not answer within {timeout:?} (outcome unknown)"
            ))),
        }
    }

    /// Hands `shard`'s leadership to `node` (a voter) through its leader.
    pub async fn transfer_leader(&self, shard: u32, node: u64) -> Result<u64, ClusterError> {
        let client = self.client(Duration::from_secs(5))?;
        let shard = u16::try_from(shard)
            .map_err(|_| ClusterError::Harness(format!("shard id {shard} does not fit 16 bits")))?;
        Ok(client
            .for_shard(nokv_client::ShardId(shard))
            .transfer_leader(node)
            .await?)
    }

    /// Kills etcd (`kill -9`); its data stays in the container.
    pub async fn kill_etcd(&self) -> Result<(), ClusterError> {
        Ok(self.docker.kill(&self.etcd_container).await?)
    }

    pub async fn restart_etcd(&self) -> Result<(), ClusterError> {
        Ok(self.docker.start(&self.etcd_container).await?)
    }

    /// Cuts etcd off from every replica (and the harness): detaches it from
    /// the client network, its only one.
    pub async fn cut_etcd(&self) -> Result<(), ClusterError> {
        Ok(self
            .docker
            .disconnect(&self.client_net, &self.etcd_container)
            .await?)
    }

    pub async fn heal_etcd(&self) -> Result<(), ClusterError> {
        match self
            .docker
            .connect(&self.client_net, &self.etcd_container, "etcd")
            .await
        {
            Ok(()) => Ok(()),
            Err(DockerError::Failed { stderr, .. })
                if stderr.contains("already exists") || stderr.contains("already attached") =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// What every replica answers to a status request right now (an
    /// error text for one that does not answer), in node order.
    pub async fn statuses(&self) -> Vec<ReplicaStatus> {
        let client = match self.client(Duration::from_secs(1)) {
            Ok(c) => c,
            Err(e) => {
                return self
                    .nodes
                    .iter()
                    .map(|n| ReplicaStatus::unanswered(n.id, format!("no client: {e}")))
                    .collect()
            }
        };
        let asks = self.nodes.iter().map(|n| {
            let client = &client;
            async move {
                match client.status_of(&n.host_addr).await {
                    Ok(s) => ReplicaStatus::from_response(n.id, &s),
                    Err(e) => ReplicaStatus::unanswered(n.id, e.to_string()),
                }
            }
        });
        futures::future::join_all(asks).await
    }

    /// The leader every replica agrees on, if they do right now.
    pub async fn agreed_leader(&self) -> Option<u64> {
        agreed_leader(&self.statuses().await)
    }

    /// Waits until every replica answers and names the same leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.agreed_leader().await {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(format!(
                    "the replicas did not agree on a leader within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader one replica (any that answers) names, without waiting.
    pub async fn current_leader(&self) -> Option<u64> {
        let client = self.client(Duration::from_secs(1)).ok()?;
        for node in &self.nodes {
            if let Ok(status) = client.status_of(&node.host_addr).await {
                if status.role() == Role::Leader {
                    return Some(status.node_id);
                }
            }
        }
        None
    }

    /// Cuts the link between `a` and `b` (both directions).
    pub async fn cut_link(&self, a: u64, b: u64) -> Result<(), ClusterError> {
        let net = self.link_net(a, b)?;
        for id in [a, b] {
            self.docker
                .disconnect(net, &self.node(id)?.container)
                .await?;
        }
        Ok(())
    }

    /// Restores the link between `a` and `b`.
    pub async fn heal_link(&self, a: u64, b: u64) -> Result<(), ClusterError> {
        let net = self.link_net(a, b)?;
        for id in [a, b] {
            let node = self.node(id)?;
            match self.docker.connect(net, &node.container, &node.alias).await {
                Ok(()) => {}
                // Already attached: nothing to heal on this side.
                Err(DockerError::Failed { stderr, .. })
                    if stderr.contains("already exists") || stderr.contains("already attached") => {
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn link_net(&self, a: u64, b: u64) -> Result<&String, ClusterError> {
        self.links
            .get(&link(a, b))
            .ok_or(ClusterError::NoSuchNode(if self.node(a).is_err() {
                a
            } else {
                b
            }))
    }

    /// Every link, as `(a, b)` with `a < b`.
    pub fn links(&self) -> Vec<(u64, u64)> {
        self.links.keys().copied().collect()
    }

    pub async fn kill(&self, id: u64) -> Result<(), ClusterError> {
        Ok(self.docker.kill(&self.node(id)?.container).await?)
    }

    pub async fn restart(&self, id: u64) -> Result<(), ClusterError> {
        Ok(self.docker.start(&self.node(id)?.container).await?)
    }

    pub async fn pause(&self, id: u64) -> Result<(), ClusterError> {
        Ok(self.docker.pause(&self.node(id)?.container).await?)
    }

    pub async fn unpause(&self, id: u64) -> Result<(), ClusterError> {
        Ok(self.docker.unpause(&self.node(id)?.container).await?)
    }

    /// Sets the test clock offset of replica `id` (running or not): writes
    /// `offset_ms` to its [`CLOCK_OFFSET_FILE`] with `docker cp`. The
    /// replica picks it up within 100 ms; an image built without the
    /// `clock-skew` feature ignores it (the nemesis checks the effect).
    pub async fn set_clock_offset(&self, id: u64, offset_ms: i64) -> Result<(), ClusterError> {
        let container = &self.node(id)?.container;
        let local = std::env::temp_dir().join(format!("nokv-jepsen-{}-clock-n{id}", self.run));
        std::fs::write(&local, format!("{offset_ms}\n"))
            .map_err(|e| ClusterError::Harness(format!("write {}: {e}", local.display())))?;
        let copied = self
            .docker
            .copy_into(&local, container, CLOCK_OFFSET_FILE)
            .await;
        let _ = std::fs::remove_file(&local);
        Ok(copied?)
    }

    /// `nokv fsck --json` over every shard, run with the `nokv` binary
    /// inside replica `via`, as an operator would.
    pub async fn fsck(&self, via: u64) -> Result<FsckReport, ClusterError> {
        let container = &self.node(via)?.container;
        let endpoints: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}:{NODE_PORT}", n.alias))
            .collect();
        let endpoints = endpoints.join(",");
        let argv = [
            "nokv",
            "--endpoints",
            &endpoints,
            "--timeout",
            "30s",
            "--json",
            "fsck",
        ];
        let (_, stdout, stderr) = self.docker.exec_status(container, &argv).await?;
        // With problems it prints them and exits 1; without JSON it failed.
        serde_json::from_str(&stdout).map_err(|e| {
            ClusterError::Harness(format!(
                "`{}` in {container} gave no report ({e}): {stdout} {stderr}",
                argv.join(" ")
            ))
        })
    }

    /// A replica's whole log, written to `path`.
    pub async fn logs_to_file(&self, id: u64, path: &std::path::Path) -> Result<(), ClusterError> {
        Ok(self
            .docker
            .logs_to_file(&self.node(id)?.container, path)
            .await?)
    }

    /// What the host sees of a replica's process, for a run that could not
    /// finish: the container's state (running, exited, OOM-killed) and,
    /// for a running one, each thread's scheduler state and kernel wait
    /// channel from the host's `/proc` (a deadlock shows every thread
    /// parked in a futex), plus every thread's backtrace if the host has
    /// `gdb`. Returns a one-line summary and the full text.
    pub async fn process_report(&self, id: u64) -> Result<(String, String), ClusterError> {
        let container = &self.node(id)?.container;
        let state = self
            .docker
            .run(&[
                "inspect",
                "-f",
                "{{.State.Status}} oom_killed={{.State.OOMKilled}} exit={{.State.ExitCode}} pid={{.State.Pid}}",
                container,
            ])
            .await?;
        let pid = state
            .rsplit("pid=")
            .next()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|&p| p > 0);
        let Some(pid) = pid else {
            return Ok((format!("node {id}: {state}"), state));
        };
        let threads = crate::process::threads_of(pid);
        let mut waits: BTreeMap<String, usize> = BTreeMap::new();
        for t in &threads {
            *waits.entry(format!("{} {}", t.state, t.wchan)).or_default() += 1;
        }
        let summary = format!(
            "node {id}: {state}, {} threads: {}",
            threads.len(),
            waits
                .iter()
                .map(|(w, n)| format!("{n} {w}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut full = format!("{summary}\n\nthread, state, wait channel:\n");
        for t in &threads {
            full.push_str(&format!("{} {} {} {}\n", t.tid, t.name, t.state, t.wchan));
        }
        full.push('\n');
        full.push_str(&crate::process::backtraces(pid).await);
        Ok((summary, full))
    }

    /// The tail of a replica's log, for failure reports.
    pub async fn logs(&self, id: u64, lines: usize) -> Result<String, ClusterError> {
        Ok(self.docker.logs(&self.node(id)?.container, lines).await?)
    }
}
