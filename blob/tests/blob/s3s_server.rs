//! A real S3 server for tests: the `s3s-fs` binary on a loopback port over a temporary
//! directory, killed when dropped.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use nokv_blob::{S3BlobStore, S3Config, S3Credentials};
use tempfile::TempDir;

pub const ACCESS_KEY: &str = "nokv-test-ak";
pub const SECRET_KEY: &str = "nokv-test-sk";
pub const REGION: &str = "us-east-1";

const INSTALL_HINT: &str = "install it with `blob/install-s3s-fs.sh` (or `cargo install \
     s3s-fs@0.14.1 --features binary --locked`, about 2-3 minutes), point NOKV_S3S_FS at the \
     binary, or set NOKV_SKIP_S3=1 to skip the S3 tests";

/// A running `s3s-fs`.
pub struct S3sServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl S3sServer {
    /// Starts a server, or returns `None` when `NOKV_SKIP_S3=1`. Panics, saying how to
    /// install it, when the binary cannot be found.
    pub async fn must_start() -> Option<Self> {
        if std::env::var("NOKV_SKIP_S3").is_ok_and(|v| v == "1") {
            eprintln!("NOKV_SKIP_S3=1: skipping an S3 test");
            return None;
        }
        let binary = find_binary().unwrap_or_else(|| {
            panic!(
                "the s3s-fs binary was not found (NOKV_S3S_FS, PATH, ~/.cargo/bin): {INSTALL_HINT}"
            )
        });
        // A port picked by binding port 0 may be taken again before s3s-fs binds it: retry.
        let mut last_failure = String::new();
        for _attempt in 0..5 {
            match Self::try_start(&binary).await {
                Ok(server) => return Some(server),
                Err(failure) => last_failure = failure,
            }
        }
        panic!(
            "s3s-fs ({}) did not start: {last_failure}",
            binary.display()
        );
    }

    async fn try_start(binary: &Path) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|e| format!("mkdir: {e}"))?;
        let log_path = dir.path().join("s3s-fs.log");
        let log = File::create(&log_path).map_err(|e| format!("log file: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let port = free_port();
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}; {INSTALL_HINT}", binary.display()))?;
        let mut server = S3sServer { child, port, dir };

        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("exited with {status}; log:\n{}", server.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not listening on port {port} after 20 s; log:\n{}",
                    server.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("s3s-fs.log")).unwrap_or_default()
    }

    /// A raw SDK client for the server (for test setup such as CreateBucket).
    pub fn sdk_client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Creates `bucket`, panicking on failure.
    pub async fn must_create_bucket(&self, bucket: &str) {
        if let Err(e) = self
            .sdk_client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
        {
            panic!(
                "CreateBucket {bucket}: {}; server log:\n{}",
                aws_sdk_s3::error::DisplayErrorContext(&e),
                self.log()
            );
        }
    }

    /// A store configuration for `bucket`/`prefix` on this server, with test credentials.
    pub fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            region: Some(REGION.into()),
            credentials: Some(S3Credentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
            }),
            ..S3Config::new(bucket, prefix)
        }
    }

    /// Connects a store, panicking on failure.
    pub async fn must_connect(&self, config: S3Config) -> S3BlobStore {
        S3BlobStore::connect(config)
            .await
            .unwrap_or_else(|e| panic!("connect to s3s-fs: {e}"))
    }
}

impl Drop for S3sServer {
    fn drop(&mut self) {
        // Errors mean it already exited; nothing else to do in a destructor.
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}
