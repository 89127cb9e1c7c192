//! Test harness: a three-replica NoKV cluster made of real `nokv serve`
//! processes on loopback ports, each with its own data directory and log
//! file in one temporary directory per test.
//!
//! Synchronisation is always by polling a condition under a deadline
//! ([`Cluster::wait_until`], [`Cluster::wait_for`]); a timeout panics with
//! what was awaited and the tail of every node's log. Helpers that panic on
//! failure are named `must_*`. Set `NOKV_TEST_KEEP_DIRS=1` to keep the data
//! directories and full logs of every cluster after the test.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

pub mod etcd;
pub mod http;
pub mod slow_link;
pub mod store;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fmt::Display;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nokv_client::{Client, ClientConfig, DirEntry, Role, StatusResponse};
use tempfile::TempDir;

/// The binary under test.
pub const NOKV: &str = env!("CARGO_BIN_EXE_nokv");

/// Set this variable to run the replicas (`nokv serve`) from another
/// binary, e.g. a release build for a benchmark; the CLI still runs `NOKV`.
pub const SERVE_BIN_VAR: &str = "NOKV_TEST_SERVE_BIN";

/// Default deadline of every wait: generous, for a loaded 2-core CI machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// How often a waited-for condition is re-checked.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Set this variable to keep each test's data directories and full logs.
pub const KEEP_DIRS_VAR: &str = "NOKV_TEST_KEEP_DIRS";

/// Lines of each node's log shown when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Raft timing every replica runs with (the documented defaults, spelled
/// out so the tests do not depend on them changing).
const RAFT_TIMING: [&str; 6] = [
    "--heartbeat",
    "100ms",
    "--election-timeout-min",
    "400ms",
    "--election-timeout-max",
    "800ms",
];

/// `N` distinct loopback ports, each free when chosen.
///
/// Test servers start as separate processes that bind the port they are
/// given, so a port can be taken between the choice and that bind. Two
/// things used to take it: another test of this binary choosing the same
/// port (the kernel hands a released ephemeral port out again), and an
/// outgoing connection whose local port the kernel picked from the
/// ephemeral range. So ports come from a counter shared by every test of
/// this process, below the kernel's ephemeral range; the counter starts at
/// an offset from the process id, so two test binaries run side by side
/// rarely meet, and each port is still checked with a bind.
pub fn free_ports<const N: usize>() -> [u16; N] {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static RANGE: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    let range = *RANGE.get_or_init(|| {
        const LOWEST: u32 = 10_000;
        let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32_768);
        let span = ephemeral_start
            .checked_sub(LOWEST)
            .filter(|&s| s >= 1_000)?;
        NEXT.store(
            std::process::id().wrapping_mul(7_919) % span,
            Ordering::Relaxed,
        );
        Some((LOWEST, span))
    });
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(N);
    let mut attempts = 0;
    while listeners.len() < N {
        attempts += 1;
        assert!(
            attempts < 10_000,
            "no free loopback port below the ephemeral range"
        );
        let port = match range {
            Some((lowest, span)) => lowest + NEXT.fetch_add(1, Ordering::Relaxed) % span,
            // The ephemeral range starts too low to stay below it.
            None => 0,
        };
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
        }
    }
    std::array::from_fn(|i| {
        listeners[i]
            .local_addr()
            .expect("local address of a bound listener")
            .port()
    })
}

/// A `nokv` command with a clean environment: no `NOKV_*` variables and no
/// `RUST_LOG` leak in from the developer's shell, and no colours in logs.
pub fn nokv_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(NOKV);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NOKV_") {
            command.env_remove(&key);
        }
    }
    command
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `nokv ARGS` to completion (no endpoints unless ARGS pass them).
pub async fn run_nokv(args: &[&str]) -> Output {
    nokv_command()
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {NOKV}: {e}"))
}

/// The names in a directory listing.
pub fn names(entries: &[DirEntry]) -> BTreeSet<String> {
    entries.iter().map(|e| e.name.clone()).collect()
}

/// Serialises the tests that load the machine most (thousands of writes,
/// whole-cluster kills): they take this lock exclusively, the lighter
/// tests share it. With the default two test threads on two cores this
/// keeps at most two clusters (six replicas) running at once, and a heavy
/// test always runs alone.
static LOAD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by a heavy test for its whole run.
pub async fn heavy_test() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    LOAD.write().await
}

/// Held by a light test for its whole run.
pub async fn light_test() -> tokio::sync::RwLockReadGuard<'static, ()> {
    LOAD.read().await
}

/// One replica: its identity, where it keeps data and logs, and its process
/// while it runs.
struct Node {
    id: u64,
    /// Where peers and clients reach it (its advertised address).
    addr: String,
    /// Where it listens, when that differs from `addr` (a proxy in between).
    listen: Option<String>,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

/// Three `nokv serve` processes forming (after [`Cluster::must_init`]) one
/// Raft group. Dropping the cluster SIGKILLs every process; if the test is
/// failing, the node logs are printed first.
pub struct Cluster {
    dir: TempDir,
    nodes: Vec<Node>,
    serve_args: Vec<String>,
    /// Environment variables set on every `nokv serve` (e.g. S3 settings).
    serve_env: Vec<(String, String)>,
    /// Client used for per-node status probes (short timeouts).
    probe: Client,
    logs_shown: Cell<bool>,
    /// When the replicas serve TLS (`--tls-ca` among the serve arguments):
    /// what clients need to reach them, and the same as CLI arguments.
    client_tls: Option<nokv_client::ClientTls>,
    /// With `--admin-token-file` among the serve arguments: the bootstrap
    /// admin token, which the harness's clients and CLI runs carry.
    client_token: Option<nokv_client::Token>,
    cli_credentials: Vec<String>,
}

impl Cluster {
    /// Spawns three replicas (ids 1, 2, 3) with `extra_args` appended to
    /// every `nokv serve`, and waits until each answers `Status`. The group
    /// is not formed yet.
    pub async fn spawn(extra_args: &[&str]) -> Cluster {
        Cluster::spawn_with_env(extra_args, &[]).await
    }

    /// Like [`Cluster::spawn`], with `env` set on every `nokv serve`.
    pub async fn spawn_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("nokv-cluster-test-")
            .tempdir()
            .expect("create the test's temporary directory");
        let nodes: Vec<Node> = free_ports::<3>()
            .iter()
            .zip(1u64..)
            .map(|(port, id)| Node {
                id,
                addr: format!("127.0.0.1:{port}"),
                listen: None,
                data_dir: dir.path().join(format!("node{id}")),
                log_path: dir.path().join(format!("node{id}.log")),
                child: None,
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
        // A cluster serving TLS is reached with its CA (and no client
        // certificate: clients do not need one).
        let tls_ca = extra_args
            .iter()
            .position(|a| *a == "--tls-ca")
            .and_then(|i| extra_args.get(i + 1))
            .map(|ca| ca.to_string());
        let client_tls = tls_ca.as_ref().map(|ca| {
            nokv_client::ClientTls::load(std::path::Path::new(ca), None)
                .expect("read the test cluster's CA")
        });
        let mut cli_credentials = match tls_ca {
            Some(ca) => vec!["--tls-ca".to_string(), ca],
            None => Vec::new(),
        };
        let client_token = extra_args
            .iter()
            .position(|a| *a == "--admin-token-file")
            .and_then(|i| extra_args.get(i + 1))
            .map(|file| {
                let text = std::fs::read_to_string(file).expect("read the admin token file");
                nokv_client::Token::parse(&text).expect("an admin token")
            });
        if let Some(token) = &client_token {
            cli_credentials.extend(["--token".to_string(), token.reveal()]);
        }
        let mut probe_config = ClientConfig::new(addrs);
        probe_config.tls = client_tls.clone();
        probe_config.token = client_token.clone();
        probe_config.attempt_timeout = Duration::from_secs(2);
        probe_config.connect_timeout = Duration::from_millis(500);
        // Benchmarks may ask for the production timing (`nokv serve`'s
        // defaults) with NOKV_TEST_DEFAULT_TIMING=1.
        // A test that sets its own heartbeat sets the election timeouts too.
        let timing: &[&str] = if std::env::var_os("NOKV_TEST_DEFAULT_TIMING").is_some()
            || extra_args.contains(&"--heartbeat")
        {
            &[]
        } else {
            &RAFT_TIMING
        };
        let mut serve_args: Vec<String> = timing.iter().map(|s| s.to_string()).collect();
        serve_args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut cluster = Cluster {
            dir,
            nodes,
            serve_args,
            serve_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            probe: Client::new(probe_config).expect("status probe client"),
            logs_shown: Cell::new(false),
            client_tls,
            client_token,
            cli_credentials,
        };
        for id in cluster.ids() {
            cluster.spawn_node(id);
        }
        for id in cluster.ids() {
            cluster.must_answer(id).await;
        }
        cluster
    }

    /// Spawns three replicas, forms the group with `nokv cluster init` and
    /// waits until all three agree on one leader.
    pub async fn start(extra_args: &[&str]) -> Cluster {
        Cluster::start_with_env(extra_args, &[]).await
    }

    /// Spawns three replicas that follow the control plane in `etcd` under
    /// the cluster name `name` (plus `extra_args`), forms the cluster with
    /// `nokv --etcd URL cluster init` and waits until all three agree on the
    /// root shard's leader.
    pub async fn start_on_etcd(etcd: &etcd::Etcd, name: &str, extra_args: &[&str]) -> Cluster {
        Cluster::start_on_etcd_with_env(etcd, name, extra_args, &[]).await
    }

    /// Like [`Cluster::start_on_etcd`], with `env` set on every `nokv serve`.
    pub async fn start_on_etcd_with_env(
        etcd: &etcd::Etcd,
        name: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Cluster {
        let url = etcd.url();
        let mut args = vec!["--etcd", url.as_str(), "--cluster", name];
        args.extend_from_slice(extra_args);
        let cluster = Cluster::spawn_with_env(&args, env).await;
        let members = cluster.members_arg();
        let mut init: Vec<&str> = cluster.cli_credentials.iter().map(String::as_str).collect();
        init.extend([
            "--etcd",
            &url,
            "--cluster",
            name,
            "cluster",
            "init",
            "--members",
            &members,
        ]);
        let out = run_nokv(&init).await;
        if !out.status.success() {
            cluster.fail(format!(
                "cluster init --etcd: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        cluster.must_agreed_leader(&[1, 2, 3]).await;
        // Each node learns the map from etcd on its own; a client that asks
        // one before it has must not see "no map" in a cluster on etcd.
        let client = cluster.client();
        for id in cluster.ids() {
            let addr = cluster.addr(id);
            cluster
                .wait_until(
                    WAIT,
                    &format!("node {id} serves the shard map from etcd"),
                    async || {
                        client
                            .shard_map_of(&addr)
                            .await
                            .is_ok_and(|r| r.revision > 0)
                    },
                )
                .await;
        }
        cluster
    }

    /// Like [`Cluster::start`], with `env` set on every `nokv serve`.
    pub async fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Cluster {
        let cluster = Cluster::spawn_with_env(extra_args, env).await;
        cluster.must_init().await;
        cluster.must_agreed_leader(&[1, 2, 3]).await;
        cluster
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Every node's id but `id` (e.g. the followers of a leader).
    pub fn ids_except(&self, id: u64) -> Vec<u64> {
        self.ids().into_iter().filter(|n| *n != id).collect()
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// `HOST:PORT` of node `id`.
    pub fn addr(&self, id: u64) -> String {
        self.node(id).addr.clone()
    }

    /// Every replica's address, in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// `--members` for `nokv cluster init`.
    pub fn members_arg(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// An SDK client for all replicas, with a 30 s deadline per call.
    pub fn client(&self) -> Client {
        self.client_for(&self.ids())
    }

    /// An SDK client that knows only the replicas `ids`.
    pub fn client_for(&self, ids: &[u64]) -> Client {
        let endpoints = ids.iter().map(|id| self.addr(*id)).collect();
        let mut config = ClientConfig::new(endpoints);
        config.deadline = WAIT;
        config.tls = self.client_tls.clone();
        config.token = self.client_token.clone();
        Client::new(config).expect("client for the test cluster")
    }

    // ----- processes ---------------------------------------------------------

    fn spawn_node(&mut self, id: u64) {
        let serve_args = self.serve_args.clone();
        let serve_env = self.serve_env.clone();
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open the node log file");
        let stderr = log.try_clone().expect("clone the node log file handle");
        let bin = std::env::var_os(SERVE_BIN_VAR).unwrap_or_else(|| NOKV.into());
        let mut command = Command::new(&bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("NOKV_") {
                command.env_remove(&key);
            }
        }
        command.arg("serve").args(["--node-id", &id.to_string()]);
        match &node.listen {
            Some(listen) => command.args(["--addr", listen, "--advertise-addr", &node.addr]),
            None => command.args(["--addr", &node.addr]),
        };
        command
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&serve_args)
            .envs(serve_env)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {bin:?} serve for node {id}: {e}"));
        node.child = Some(child);
    }

    /// Spawns one more node (the next id, a free port, an empty data
    /// directory, the same `serve` arguments) and waits until it answers
    /// `Status`. It belongs to no group until one adds it.
    pub async fn add_node(&mut self) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let [port] = free_ports::<1>();
        self.nodes.push(Node {
            id,
            addr: format!("127.0.0.1:{port}"),
            listen: None,
            data_dir: self.dir.path().join(format!("node{id}")),
            log_path: self.dir.path().join(format!("node{id}.log")),
            child: None,
        });
        self.spawn_node(id);
        self.must_answer(id).await;
        id
    }

    /// From its next start, node `id` (stopped now) listens on a new port
    /// and keeps its advertised address, where the test puts a proxy
    /// ([`slow_link::SlowLink`]) that forwards to the returned address.
    pub fn listen_elsewhere(&mut self, id: u64) -> String {
        let [port] = free_ports::<1>();
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} must be stopped first");
        let listen = format!("127.0.0.1:{port}");
        node.listen = Some(listen.clone());
        listen
    }

    /// Sends `sig` (`-STOP`, `-CONT`) to node `id`'s process.
    pub fn signal(&self, id: u64, sig: &str) {
        let pid = self
            .pid(id)
            .unwrap_or_else(|| self.fail(format!("node {id} is not running")));
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// SIGKILLs node `id` (no shutdown path runs) and reaps it.
    pub fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        // std's Child::kill sends SIGKILL on unix.
        child.kill().expect("SIGKILL a replica");
        child.wait().expect("reap a killed replica");
    }

    /// Starts node `id` again on its old address and data directory, and
    /// waits until it answers `Status`.
    pub async fn restart(&mut self, id: u64) {
        self.spawn_node(id);
        self.must_answer(id).await;
    }

    /// The OS process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(|c| c.id())
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).data_dir.clone()
    }

    /// How node `id`'s process ended, once it has (`None` while it runs).
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.node_mut(id)
            .child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// True while node `id`'s process has not exited.
    pub fn is_running(&mut self, id: u64) -> bool {
        match self.node_mut(id).child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Panics (with logs) unless every node's process is still running.
    pub fn must_all_run(&mut self) {
        for id in self.ids() {
            if !self.is_running(id) {
                self.fail(format!("node {id} has exited (crashed?)"));
            }
        }
    }

    // ----- diagnostics -------------------------------------------------------

    /// Everything node `id` logged so far.
    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log_path).unwrap_or_default()
    }

    /// The last lines of every node's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            out.push_str(&format!(
                "----- node {} ({}) log, last {} lines: {}\n{}\n",
                node.id,
                node.addr,
                tail.len(),
                node.log_path.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// Panics with `message` and the node logs.
    pub fn fail(&self, message: impl Display) -> ! {
        self.logs_shown.set(true);
        panic!("{message}\n\n{}", self.logs());
    }

    /// Unwraps `result`, or fails the test with `what`, the error and the logs.
    pub fn must<T, E: std::fmt::Debug>(&self, result: Result<T, E>, what: &str) -> T {
        match result {
            Ok(value) => value,
            Err(e) => self.fail(format!("{what}: {e:?}")),
        }
    }

    // ----- waiting -----------------------------------------------------------

    /// Polls `probe` until it yields a value; panics with `what` and the
    /// node logs after `timeout`.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut probe: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            if Instant::now() >= deadline {
                self.fail(format!("timed out after {timeout:?} waiting until {what}"));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls `condition` until it holds; panics with `what` and the node
    /// logs after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut condition: impl AsyncFnMut() -> bool,
    ) {
        self.wait_for(timeout, what, async || condition().await.then_some(()))
            .await
    }

    // ----- status ------------------------------------------------------------

    /// Node `id`'s own status, or `None` if it does not answer.
    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        self.probe.status_of(&self.addr(id)).await.ok()
    }

    /// Node `id`'s applied log index (0 before anything is applied).
    pub async fn applied(&self, id: u64) -> Option<u64> {
        self.status(id).await.map(|s| s.applied_index.unwrap_or(0))
    }

    async fn must_answer(&self, id: u64) {
        self.wait_until(WAIT, &format!("node {id} answers Status"), async || {
            self.status(id).await.is_some()
        })
        .await;
    }

    /// The leader that every node in `among` agrees on: all answer, all
    /// name the same leader in the same term, and exactly one of them (the
    /// leader itself) reports the leader role.
    pub async fn agreed_leader(&self, among: &[u64]) -> Option<u64> {
        let mut statuses = Vec::new();
        for id in among {
            statuses.push(self.status(*id).await?);
        }
        let leader = statuses.first()?.leader_id?;
        let term = statuses.first()?.term;
        let agree = statuses
            .iter()
            .all(|s| s.leader_id == Some(leader) && s.term == term);
        let leaders: Vec<u64> = statuses
            .iter()
            .filter(|s| s.role == Role::Leader as i32)
            .map(|s| s.node_id)
            .collect();
        (agree && leaders == [leader]).then_some(leader)
    }

    /// Waits until the nodes `among` agree on a leader and returns its id.
    pub async fn must_agreed_leader(&self, among: &[u64]) -> u64 {
        self.wait_for(
            WAIT,
            &format!("nodes {among:?} agree on one leader"),
            async || self.agreed_leader(among).await,
        )
        .await
    }

    /// Waits until node `id` has applied as far as node `leader`.
    pub async fn must_catch_up(&self, id: u64, leader: u64) {
        self.wait_until(
            WAIT,
            &format!("node {id} applies as far as leader {leader}"),
            async || match (self.applied(id).await, self.applied(leader).await) {
                (Some(mine), Some(theirs)) => mine >= theirs,
                _ => false,
            },
        )
        .await
    }

    /// Waits until node `id` has purged its log past `index` and returns
    /// how far it purged (a replica that stopped at `index` can then be
    /// brought up to date only by a snapshot).
    pub async fn must_purge_past(&self, id: u64, index: u64) -> u64 {
        self.wait_for(
            WAIT,
            &format!("node {id} purges its log past index {index}"),
            async || {
                let s = self.status(id).await?;
                s.purged_index.filter(|p| *p > index)
            },
        )
        .await
    }

    /// Waits until node `id` holds a snapshot covering `purged` and has
    /// applied as far as node `leader`.
    pub async fn must_catch_up_by_snapshot(
        &self,
        id: u64,
        leader: u64,
        purged: u64,
        timeout: Duration,
    ) {
        self.wait_until(
            timeout,
            &format!("node {id} installs a snapshot covering index {purged} and catches up"),
            async || {
                let (Some(mine), Some(theirs)) = (self.status(id).await, self.status(leader).await)
                else {
                    return false;
                };
                mine.snapshot_index.unwrap_or(0) >= purged
                    && mine.applied_index.is_some()
                    && mine.applied_index >= theirs.applied_index
            },
        )
        .await
    }

    // ----- the CLI -----------------------------------------------------------

    /// Runs `nokv --endpoints <all> ARGS`.
    pub async fn nokv(&self, args: &[&str]) -> Output {
        let endpoints = self.endpoints().join(",");
        let mut full: Vec<&str> = self.cli_credentials.iter().map(String::as_str).collect();
        full.extend_from_slice(&["--endpoints", endpoints.as_str()]);
        full.extend_from_slice(args);
        run_nokv(&full).await
    }

    /// Runs `nokv --endpoints <all> ARGS`, requires success and returns stdout.
    pub async fn must_nokv(&self, args: &[&str]) -> String {
        let out = self.nokv(args).await;
        if !out.status.success() {
            self.fail(format!(
                "`nokv {}` failed ({}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8(out.stdout).expect("nokv prints UTF-8")
    }

    /// Runs `nokv --endpoints <all> ARGS`, requires a non-zero exit with
    /// exactly one line on stderr, and returns that line.
    pub async fn must_nokv_fail(&self, args: &[&str]) -> String {
        let out = self.nokv(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            self.fail(format!(
                "`nokv {}` succeeded but should fail; stdout: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let lines: Vec<&str> = stderr.lines().collect();
        if lines.len() != 1 {
            self.fail(format!(
                "`nokv {}` should print one error line, printed {}:\n{stderr}",
                args.join(" "),
                lines.len()
            ));
        }
        lines[0].to_string()
    }

    /// A raw gRPC stub to node `id`, for requests the SDK would never send
    /// (stale revisions and epochs, impossible shard ids).
    pub async fn raw(
        &self,
        id: u64,
    ) -> nokv_proto::pb::meta_service_client::MetaServiceClient<tonic::transport::Channel> {
        let addr = format!("http://{}", self.addr(id));
        match nokv_proto::pb::meta_service_client::MetaServiceClient::connect(addr).await {
            Ok(stub) => stub,
            Err(e) => self.fail(format!("connect to node {id}: {e}")),
        }
    }

    /// Forms the group with `nokv cluster init --members ...`.
    pub async fn must_init(&self) {
        let members = self.members_arg();
        let mut args: Vec<&str> = self.cli_credentials.iter().map(String::as_str).collect();
        args.extend_from_slice(&["cluster", "init", "--members", &members]);
        let out = run_nokv(&args).await;
        if !out.status.success() {
            self.fail(format!(
                "`nokv cluster init` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !stdout.contains("cluster initialized; leader is node") {
            self.fail(format!("unexpected `nokv cluster init` output: {stdout}"));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.logs_shown.get() {
            eprintln!("{}", self.logs());
        }
        if std::env::var_os(KEEP_DIRS_VAR).is_some() {
            let kept = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("placeholder temporary directory"),
            );
            eprintln!(
                "keeping the cluster's data and logs in {}",
                kept.keep().display()
            );
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ----- disaster recovery (cli/tests/recovery.rs) -------------------------------

impl Cluster {
    /// Node `id`'s data directory (`nokv restore` rebuilds it after a test
    /// deletes it).
    pub fn node_data_dir(&self, id: u64) -> PathBuf {
        self.node(id).data_dir.clone()
    }
}

/// A `Create` of `path` as it goes on the wire, under `request_id` and `epoch`
/// (for tests that edit the request before sending it raw).
pub fn raw_create(
    request_id: u128,
    epoch: Option<u64>,
    path: &str,
) -> nokv_proto::pb::MutateRequest {
    nokv_proto::pb::MutateRequest::try_from(nokv_proto::Mutation {
        request_id: nokv_client::RequestId(request_id),
        epoch: epoch.map(nokv_holt::Epoch),
        op: nokv_client::Op::Create {
            at: nokv_client::EntryRef::Path(path.into()),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    })
    .expect("a create encodes")
}
