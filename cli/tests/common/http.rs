//! A minimal HTTP/1.1 client over a TCP stream (one request per
//! connection) and a running `nokv gateway` process, for the gateway
//! tests.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{free_ports, nokv_command, POLL_INTERVAL, WAIT};

/// Status and body of one response.
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response {} is not JSON ({e}): {}", self.status, self.body))
    }
}

/// Sends one request with a raw body; `Err` when the connection fails.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// `nokv gateway` on a free loopback port, killed on drop.
pub struct Gateway {
    pub addr: String,
    child: tokio::process::Child,
}

impl Gateway {
    /// Starts `nokv gateway --endpoints ENDPOINTS --listen ADDR EXTRA` and
    /// waits until `GET /healthz` answers 200.
    pub async fn start(endpoints: &[String], extra: &[&str]) -> Gateway {
        let [port] = free_ports::<1>();
        let addr = format!("127.0.0.1:{port}");
        let child = nokv_command()
            .args([
                "gateway",
                "--endpoints",
                &endpoints.join(","),
                "--listen",
                &addr,
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn nokv gateway");
        let mut gateway = Gateway { addr, child };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = request(&gateway.addr, "GET", "/healthz", b"").await {
                if r.status == 200 {
                    return gateway;
                }
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("nokv gateway exited before answering: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nokv gateway did not answer /healthz within {WAIT:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `POST /v1/<verb>` with `args`; panics when the connection fails.
    pub async fn call(&self, verb: &str, args: serde_json::Value) -> Response {
        self.raw(verb, args.to_string().as_bytes()).await
    }

    /// `POST /v1/<verb>` with a raw body.
    pub async fn raw(&self, verb: &str, body: &[u8]) -> Response {
        request(&self.addr, "POST", &format!("/v1/{verb}"), body)
            .await
            .unwrap_or_else(|e| panic!("POST /v1/{verb} to {}: {e}", self.addr))
    }

    /// `POST /v1/<verb>` that must answer 200; its JSON.
    pub async fn ok(&self, verb: &str, args: serde_json::Value) -> serde_json::Value {
        let r = self.call(verb, args.clone()).await;
        assert_eq!(r.status, 200, "{verb} {args}: {}", r.body);
        r.json()
    }

    /// `POST /v1/<verb>` that must fail with `status` and error `code`;
    /// its message.
    pub async fn refused(
        &self,
        verb: &str,
        args: serde_json::Value,
        status: u16,
        code: &str,
    ) -> String {
        let r = self.call(verb, args.clone()).await;
        let body = r.json();
        assert_eq!(
            (r.status, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{verb} {args}: {}",
            r.body
        );
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
