//! A real single-member etcd (Debian's `etcd-server`) on free loopback
//! ports, for the control-plane tests. Killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_ports;

pub struct Etcd {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("no `etcd` on PATH: run `bash router/install-etcd.sh` (Debian's etcd-server)")
        })
}

impl Etcd {
    /// Starts etcd and waits until it answers its health endpoint.
    pub async fn must_start() -> Etcd {
        let [client_port, peer_port] = free_ports::<2>();
        let mut etcd = Etcd {
            dir: tempfile::Builder::new()
                .prefix("nokv-etcd-")
                .tempdir()
                .expect("etcd tempdir"),
            client_port,
            peer_port,
            child: None,
        };
        etcd.must_resume().await;
        etcd
    }

    /// The client URL to pass as `--etcd`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts etcd again on the same data and ports.
    pub async fn must_resume(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new(binary())
            .args(["--name", "n1", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("n1={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = tokio::net::TcpStream::connect(("127.0.0.1", self.client_port))
                .await
                .is_ok();
            if up {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs etcd.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
