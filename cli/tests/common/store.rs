//! Object stores for cluster tests: a local directory (`file:///DIR`) or a
//! real S3 server, the `s3s-fs` binary on a loopback port (the same server
//! `blob/tests` use; install it with `blob/install-s3s-fs.sh`).
//!
//! The replicas learn the S3 endpoint, region and credentials from the
//! standard AWS variables ([`TestStore::serve_env`]); clients in the test
//! process and `nokv` client commands learn endpoint and region from the
//! location the cluster reports, and credentials from this process's
//! environment, which [`TestStore::start`] sets once for the whole binary
//! (every S3 test uses the same key). Set `NOKV_SKIP_S3=1` to skip the S3
//! variants of the tests on a machine without `s3s-fs`.

use std::fs::File;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The bucket every S3 test store uses (created as a directory of the
/// server's root before the server starts: `s3s-fs` maps buckets to
/// directories).
pub const BUCKET: &str = "nokv-test";
/// The key prefix of the cluster's objects inside [`BUCKET`].
pub const S3_PREFIX: &str = "cluster";
pub const ACCESS_KEY: &str = "nokv-test-ak";
pub const SECRET_KEY: &str = "nokv-test-sk";
pub const REGION: &str = "us-east-1";

/// How long `s3s-fs` may take to listen.
const S3_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Which object store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// `file:///DIR` on a temporary directory.
    File,
    /// `s3://BUCKET/PREFIX` on a fresh `s3s-fs`.
    S3,
}

/// True when `NOKV_SKIP_S3=1` asks to skip S3 tests.
pub fn skip_s3() -> bool {
    std::env::var("NOKV_SKIP_S3").is_ok_and(|v| v == "1")
}

/// Sets the S3 credentials in this process's environment, once, before any
/// S3 client exists. `nokv` children inherit them.
fn set_process_credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Edition 2021: `set_var` is safe. It runs before this binary creates
        // any S3 client, and every S3 test sets the same values.
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

/// A fresh object store for one cluster.
pub struct TestStore {
    kind: StoreKind,
    /// The file store's directory, or the S3 server's root and log.
    dir: TempDir,
    s3: Option<S3sServer>,
}

impl TestStore {
    /// A fresh store of `kind`, or `None` for S3 when `NOKV_SKIP_S3=1`.
    /// Panics (saying how to install it) when `s3s-fs` is missing.
    pub async fn start(kind: StoreKind) -> Option<TestStore> {
        let dir = tempfile::Builder::new()
            .prefix("nokv-store-test-")
            .tempdir()
            .expect("create the store's temporary directory");
        let s3 = match kind {
            StoreKind::File => None,
            StoreKind::S3 if skip_s3() => {
                eprintln!("NOKV_SKIP_S3=1: skipping an S3 test");
                return None;
            }
            StoreKind::S3 => {
                set_process_credentials();
                Some(S3sServer::must_start(dir.path()).await)
            }
        };
        Some(TestStore { kind, dir, s3 })
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The `--blob-store` value for `nokv serve`.
    pub fn url(&self) -> String {
        match self.kind {
            StoreKind::File => format!("file://{}", self.dir.path().join("blobs").display()),
            StoreKind::S3 => format!("s3://{BUCKET}/{S3_PREFIX}"),
        }
    }

    /// Environment for `nokv serve`: the standard AWS variables for S3.
    pub fn serve_env(&self) -> Vec<(&'static str, String)> {
        match &self.s3 {
            None => Vec::new(),
            Some(server) => vec![
                ("AWS_ENDPOINT_URL", server.endpoint()),
                ("AWS_REGION", REGION.to_string()),
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
                ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ],
        }
    }

    /// The S3 server (panics for a file store).
    pub fn s3(&mut self) -> &mut S3sServer {
        self.s3.as_mut().expect("this test store is not S3")
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some(server) = &self.s3 {
            if std::thread::panicking() {
                let log = server.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                eprintln!("----- s3s-fs log, last lines:\n{}", tail.join("\n"));
            }
        }
    }
}

/// A running (or stopped) `s3s-fs` over a root directory, on a fixed
/// loopback port so that it can be restarted where clients expect it.
pub struct S3sServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    root: PathBuf,
    log_path: PathBuf,
}

impl S3sServer {
    /// Starts a server whose data and log live in `dir`, with [`BUCKET`].
    async fn must_start(dir: &Path) -> S3sServer {
        let binary = find_binary().unwrap_or_else(|| {
            panic!(
                "the s3s-fs binary was not found (NOKV_S3S_FS, PATH, ~/.cargo/bin): install it \
                 with blob/install-s3s-fs.sh, or set NOKV_SKIP_S3=1 to skip the S3 tests"
            )
        });
        let root = dir.join("s3-root");
        std::fs::create_dir_all(root.join(BUCKET)).expect("create the bucket directory");
        let mut last_failure = String::new();
        // A port free when chosen may still be taken before s3s-fs binds it.
        for _attempt in 0..5 {
            let mut server = S3sServer {
                binary: binary.clone(),
                child: None,
                port: super::free_ports::<1>()[0],
                root: root.clone(),
                log_path: dir.join("s3s-fs.log"),
            };
            match server.try_start().await {
                Ok(()) => return server,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("s3s-fs did not start: {last_failure}");
    }

    async fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "s3s-fs is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("log file: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + S3_START_TIMEOUT;
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!("exited with {status}; log:\n{}", self.log()));
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "not listening on port {} after {S3_START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the server and reaps it; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL s3s-fs");
            child.wait().expect("reap s3s-fs");
        }
    }

    /// Starts the server again on the same port and data, and waits until
    /// it listens.
    pub async fn must_restart(&mut self) {
        if let Err(failure) = self.try_start().await {
            panic!("s3s-fs did not restart on port {}: {failure}", self.port);
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for S3sServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it already exited; nothing else to do here.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `NOKV_S3S_FS`, else `s3s-fs` on `PATH`, else `$CARGO_HOME/bin` or `~/.cargo/bin`.
fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NOKV_S3S_FS") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    on_path
        .into_iter()
        .chain(cargo_home.map(|home| home.join("bin")))
        .map(|dir| dir.join("s3s-fs"))
        .find(|candidate| candidate.is_file())
}
