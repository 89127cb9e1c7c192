//! A slow network link for multi-process tests: a TCP proxy that forwards
//! everything sent *to* a replica at a fixed rate, shared by all its
//! connections (replies go back at full speed). A replica advertised at the proxy's address receives its peers'
//! Raft messages through it, as a follower on a congested link would:
//! large messages (snapshot chunks) take seconds, and the small ones
//! behind them (heartbeats) wait their turn.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Proxies `listen` → `target` until dropped.
pub struct SlowLink {
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    /// Listens on `listen` (`HOST:PORT`) and forwards each connection to
    /// `target`, at most `bytes_per_sec` towards the target.
    pub async fn start(listen: &str, target: &str, bytes_per_sec: u64) -> SlowLink {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("slow link: cannot listen on {listen}: {e}"));
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let target = target.to_string();
        let link = Arc::new(Link {
            free_at: tokio::sync::Mutex::new(Instant::now()),
            bytes_per_sec,
        });
        let spawn_into = tasks.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = target.clone();
                let link = link.clone();
                let Ok(mut set) = spawn_into.lock() else {
                    return;
                };
                set.spawn(async move {
                    // A connection that cannot reach the target is dropped,
                    // as a dead link would drop it.
                    if let Ok(outbound) = TcpStream::connect(&target).await {
                        forward(inbound, outbound, &link).await;
                    }
                });
            }
        });
        SlowLink { tasks, acceptor }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.acceptor.abort();
        if let Ok(mut set) = self.tasks.lock() {
            set.abort_all();
        }
    }
}

/// The bandwidth towards the target, shared by every connection.
struct Link {
    /// When the link is free again; idle time earns no credit, so a large
    /// message after a quiet spell is as slow as any other.
    free_at: tokio::sync::Mutex<Instant>,
    bytes_per_sec: u64,
}

impl Link {
    /// Waits until `n` more bytes would have crossed the link (pacing, not
    /// synchronisation).
    async fn cross(&self, n: usize) {
        let due = {
            let mut free_at = self.free_at.lock().await;
            *free_at = (*free_at).max(Instant::now())
                + Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            *free_at
        };
        tokio::time::sleep_until(due).await;
    }
}

/// Copies both ways until either side closes; `inbound` → `outbound` paced
/// by `link`.
async fn forward(inbound: TcpStream, outbound: TcpStream, link: &Link) {
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let slow = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match in_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if out_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            link.cross(n).await;
        }
        let _ = out_write.shutdown().await;
    };
    let fast = async move {
        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
        let _ = in_write.shutdown().await;
    };
    tokio::join!(slow, fast);
}
