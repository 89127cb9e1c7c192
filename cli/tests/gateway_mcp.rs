//! The MCP server driven by a real, independent MCP client: the official
//! Python SDK (PyPI `mcp`, pinned in `gateway/install-mcp-client.sh`),
//! running `gateway/tests/mcp_client.py`.
//!
//! - `python_sdk_over_stdio_and_http`: on a three-replica cluster with a
//!   file object store, publishes a few runs (train logs with attributes,
//!   one with a known error line, small JSON configs), then
//!   1. runs the script against `nokv mcp --endpoints …` over stdio: the
//!      seven verbs and no write tools; catalog, find on an attribute,
//!      stat, structured read, grep; every item has a `nokv://` uri; a grep
//!      hit's uri read as an MCP resource is exactly the cited line; bad
//!      arguments are tool errors (`isError`) carrying the error code;
//!   2. starts `nokv gateway --listen 127.0.0.1:PORT --allow-writes`, waits
//!      until `GET /healthz` answers 200, and runs the same script against
//!      `http://127.0.0.1:PORT/mcp` (streamable HTTP), which also lists the
//!      write tools and publishes a note with `publish_text`, read back
//!      through MCP and here through the SDK.
//!
//! The Python venv is `${NOKV_MCP_VENV:-$HOME/.cache/nokv/mcp-venv}`; the
//! test runs the (idempotent) installer first, and fails, never skips,
//! when Python or the SDK cannot be had. Synchronisation is by polling
//! under deadlines, never by sleeping.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::store::{StoreKind, TestStore};
use common::{free_ports, nokv_command, Cluster, NOKV, WAIT};
use nokv_client::{Consistency, PutOptions};

/// Where the test publishes its tree.
const ROOT: &str = "/mcp-test";
/// The one file whose `status` attribute is `failed`.
const FAILED_RUN_LOG: &str = "/mcp-test/runs/r2/train.log";
/// A grep pattern (case-insensitive) with exactly one hit below ROOT, and
/// the whole line it is on.
const PATTERN: &str = "nan gradient";
const ERROR_LINE: &str = "ERROR: NaN gradient at step 3";
/// A small JSON config and one of its keys.
const CONFIG: &str = "/mcp-test/runs/r1/config.json";
const CONFIG_KEY: &str = "learning_rate";
/// What the HTTP run publishes with `publish_text`.
const NOTE: &str = "/mcp-test/agent/notes.txt";

/// Longest one run of the script may take (it has its own, shorter deadline).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The workspace root (the CLI crate's parent directory).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cli crate lives in the workspace")
        .to_path_buf()
}

/// The Python interpreter of the MCP client venv, installed if needed.
/// Panics with what to do when Python or the SDK is not available.
async fn mcp_python() -> PathBuf {
    let venv = match std::env::var_os("NOKV_MCP_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is set (or set NOKV_MCP_VENV)");
            PathBuf::from(home).join(".cache/nokv/mcp-venv")
        }
    };
    // The installer does nothing when the venv already has the pinned SDK.
    let installer = workspace().join("gateway/install-mcp-client.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&installer)
        .env("NOKV_MCP_VENV", &venv)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", installer.display()));
    assert!(
        out.status.success(),
        "the Python MCP client is required for this test and could not be installed \
         into {} ({}):\n{}{}\nInstall Python 3.10+ with venv and run `bash \
         gateway/install-mcp-client.sh` (needs PyPI).",
        venv.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "{} is missing after the installer ran",
        python.display()
    );
    python
}

/// Runs `mcp_client.py` with `target` (`--stdio CMD` or `--http URL`) and
/// the data contract; panics with its output unless it succeeds. Returns
/// its one-line JSON summary.
async fn run_client(
    cluster: &Cluster,
    python: &Path,
    target: [&str; 2],
    writes: bool,
) -> serde_json::Value {
    let script = workspace().join("gateway/tests/mcp_client.py");
    let attr = "status=failed";
    let mut command = tokio::process::Command::new(python);
    command
        .arg(&script)
        .args(target)
        .args(["--expect-writes", if writes { "yes" } else { "no" }])
        .args([
            "--root",
            ROOT,
            "--attr",
            attr,
            "--attr-match",
            FAILED_RUN_LOG,
        ])
        .args(["--pattern", PATTERN, "--line", ERROR_LINE])
        .args(["--json", CONFIG, "--json-key", CONFIG_KEY])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let run = tokio::time::timeout(SCRIPT_TIMEOUT, command.output()).await;
    let out = match run {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => cluster.fail(format!("cannot run {}: {e}", python.display())),
        Err(_) => cluster.fail(format!(
            "mcp_client.py {} did not finish within {SCRIPT_TIMEOUT:?}",
            target.join(" ")
        )),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        cluster.fail(format!(
            "mcp_client.py {} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
            target.join(" "),
            out.status
        ));
    }
    let summary = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(summary)
        .unwrap_or_else(|e| panic!("mcp_client.py printed no JSON summary ({e}): {stdout}"));
    assert_eq!(summary["ok"], true, "{summary}");
    eprintln!("mcp_client.py {}: {summary}", target[0]);
    summary
}

/// Publishes the tree the script expects under ROOT.
async fn publish(cluster: &Cluster) {
    let c = cluster.client();
    // (run, status, team, learning rate, train.log)
    let runs: [(&str, &str, &str, f64, String); 3] = [
        (
            "r1",
            "ok",
            "vision",
            0.001,
            format!("step 1 loss 2.31\nstep 2 loss 1.87\n{ERROR_LINE}\nstep 4 loss 1.52\n"),
        ),
        (
            "r2",
            "failed",
            "nlp",
            0.01,
            "step 1 loss 2.40\nstep 2 loss 2.10\n".into(),
        ),
        ("r3", "ok", "nlp", 0.003, "step 1 loss 2.20\n".into()),
    ];
    for (run, status, team, lr, log) in runs {
        let dir = format!("{ROOT}/runs/{run}");
        cluster.must(c.mkdir(&dir, true).await, &format!("mkdir {dir}"));
        let opts = PutOptions {
            content_type: "text/plain".into(),
            attrs: BTreeMap::from([
                ("status".to_string(), status.to_string()),
                ("team".to_string(), team.to_string()),
            ]),
            ..PutOptions::default()
        };
        let path = format!("{dir}/train.log");
        cluster.must(
            c.put_bytes(&path, log.as_bytes(), &opts).await,
            &format!("put {path}"),
        );
        let config =
            serde_json::json!({CONFIG_KEY: lr, "batch_size": 32, "model": format!("{team}-{run}")});
        let config = format!("{config}\n");
        let opts = PutOptions {
            content_type: "application/json".into(),
            ..PutOptions::default()
        };
        let path = format!("{dir}/config.json");
        cluster.must(
            c.put_bytes(&path, config.as_bytes(), &opts).await,
            &format!("put {path}"),
        );
    }
    assert!(
        ERROR_LINE.to_lowercase().contains(PATTERN),
        "the pattern must hit the error line"
    );
}

/// `nokv gateway` as a child process with its log in a file; killed on
/// drop, and its log printed when the test fails.
struct GatewayProcess {
    child: tokio::process::Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `nokv --endpoints … gateway --listen 127.0.0.1:PORT EXTRA`
    /// and waits until `GET /healthz` answers 200.
    async fn start(cluster: &Cluster, extra: &[&str]) -> GatewayProcess {
        let dir = tempfile::Builder::new()
            .prefix("nokv-gateway-test-")
            .tempdir()
            .expect("create the gateway's temporary directory");
        let log = dir.path().join("gateway.log");
        let file = std::fs::File::create(&log).expect("create the gateway log");
        let file_err = file.try_clone().expect("clone the gateway log handle");
        let [port] = free_ports::<1>();
        let addr = format!("127.0.0.1:{port}");
        let endpoints = cluster.endpoints().join(",");
        let child = nokv_command()
            .args(["--endpoints", &endpoints, "gateway", "--listen", &addr])
            .args(extra)
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file_err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {NOKV} gateway: {e}"));
        let mut gateway = GatewayProcess {
            child,
            addr,
            log,
            _dir: dir,
        };
        let what = format!("nokv gateway on {} answers GET /healthz", gateway.addr);
        let mut exited = None;
        cluster
            .wait_until(WAIT, &what, async || {
                if let Ok(Some(status)) = gateway.child.try_wait() {
                    exited = Some(status);
                    return true;
                }
                matches!(
                    common::http::request(&gateway.addr, "GET", "/healthz", b"").await,
                    Ok(r) if r.status == 200
                )
            })
            .await;
        if let Some(status) = exited {
            cluster.fail(format!(
                "nokv gateway exited ({status}) before answering:\n{}",
                gateway.log_text()
            ));
        }
        gateway
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- nokv gateway log:\n{}", self.log_text());
        }
        // An error means it already exited.
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_stdio_and_http() {
    let _load = common::light_test().await;
    // Fail before starting a cluster when the client cannot be had.
    let python = mcp_python().await;
    let store = TestStore::start(StoreKind::File)
        .await
        .expect("a local store is always available");
    let url = store.url();
    let cluster = Cluster::start(&["--blob-store", url.as_str()]).await;
    publish(&cluster).await;

    // 1. stdio: `nokv mcp`, read-only.
    let endpoints = cluster.endpoints().join(",");
    let stdio = format!("'{NOKV}' --endpoints {endpoints} mcp");
    let summary = run_client(&cluster, &python, ["--stdio", &stdio], false).await;
    assert_eq!(summary["transport"], "stdio");
    assert_eq!(summary["tools"], 7, "{summary}");

    // 2. streamable HTTP: `nokv gateway --allow-writes`, at /mcp.
    let gateway = GatewayProcess::start(&cluster, &["--allow-writes"]).await;
    let url = format!("http://{}/mcp", gateway.addr);
    let summary = run_client(&cluster, &python, ["--http", &url], true).await;
    assert_eq!(summary["transport"], "http");
    assert!(summary["tools"].as_u64() > Some(7), "{summary}");

    // The note the agent published is in the cluster.
    let c = cluster.client();
    let attr = cluster.must(
        c.stat(NOTE, Consistency::Linearizable).await,
        "stat the note",
    );
    assert!(attr.size > 0, "the note is empty");
    let (_, body) = cluster.must(
        c.read_body(NOTE, Consistency::Linearizable).await,
        "the note's body",
    );
    let body = body.expect("the note has a body");
    assert_eq!(
        body.attrs.get("author").map(String::as_str),
        Some("mcp-test")
    );
    drop(gateway);
}
