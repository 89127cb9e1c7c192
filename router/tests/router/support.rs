//! Test helpers: condition waits and a real etcd server per test.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Polls `condition` until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` for `period` and panics with `what` the first time it does not hold.
pub async fn must_hold_for<F, Fut>(period: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < period {
        assert!(condition().await, "stopped holding: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Awaits `fut` or panics with `what` after `timeout`.
pub async fn must_within<T>(timeout: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {timeout:?}: {what}"),
    }
}

#[cfg(feature = "etcd")]
pub use etcd_server::EtcdServer;

#[cfg(feature = "etcd")]
mod etcd_server {
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A single-member etcd on two free loopback ports in its own temporary directory,
    /// killed on drop.
    pub struct EtcdServer {
        child: Option<Child>,
        dir: tempfile::TempDir,
        client_port: u16,
        peer_port: u16,
        /// `http://127.0.0.1:PORT`.
        pub endpoint: String,
    }

    fn etcd_binary() -> PathBuf {
        if let Some(bin) = std::env::var_os("NOKV_ETCD_BIN") {
            return PathBuf::from(bin);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "the router tests need a real etcd, and `etcd` is not on PATH: \
                     run `bash router/install-etcd.sh` (or set NOKV_ETCD_BIN)"
                )
            })
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a free loopback port")
            .port()
    }

    impl EtcdServer {
        /// Starts etcd and waits until it accepts connections; panics (with its log) if it
        /// does not within 20 s. Retries with new ports if they were taken meanwhile.
        pub fn must_start() -> EtcdServer {
            let mut last_log = String::new();
            for _attempt in 0..3 {
                let mut server = EtcdServer {
                    child: None,
                    dir: tempfile::tempdir().expect("tempdir"),
                    client_port: free_port(),
                    peer_port: free_port(),
                    endpoint: String::new(),
                };
                server.endpoint = format!("http://127.0.0.1:{}", server.client_port);
                if server.spawn_and_wait() {
                    return server;
                }
                last_log = server.log();
                server.stop();
            }
            panic!("etcd did not become ready; its last log:\n{last_log}");
        }

        /// Starts etcd again on the same ports and data directory after [`EtcdServer::stop`].
        pub fn must_restart(&mut self) {
            self.stop();
            assert!(
                self.spawn_and_wait(),
                "etcd did not restart:\n{}",
                self.log()
            );
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
        }

        fn spawn_and_wait(&mut self) -> bool {
            let bin = etcd_binary();
            let client_url = format!("http://127.0.0.1:{}", self.client_port);
            let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("etcd.log"))
                .expect("log file");
            let child = Command::new(&bin)
                .args(["--name", "n1", "--data-dir"])
                .arg(self.dir.path().join("data"))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("n1={peer_url}")])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            self.child = Some(child);
            self.wait_ready(self.client_port, Duration::from_secs(20))
        }

        /// Whether etcd's client port answers and its health endpoint says so.
        fn wait_ready(&mut self, port: u16, timeout: Duration) -> bool {
            let start = Instant::now();
            while start.elapsed() < timeout {
                if let Some(child) = self.child.as_mut() {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        return false; // exited: probably a port clash
                    }
                }
                if health_ok(port) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        }

        /// Kills etcd (as a crash would) and waits for it to exit.
        pub fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// `GET /health` answers `"health":"true"`.
    fn health_ok(port: u16) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    impl Drop for EtcdServer {
        fn drop(&mut self) {
            self.stop();
        }
    }
}
