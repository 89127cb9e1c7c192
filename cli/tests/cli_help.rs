//! The `nokv` command line without a cluster: help texts name the flags an
//! operator needs, and a client command that cannot reach any replica fails
//! promptly with one readable line instead of hanging or panicking.

mod common;

use std::net::TcpListener;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{free_ports, run_nokv};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failed run that printed exactly one `nokv: ...` line on stderr
/// and nothing on stdout; returns that line.
fn must_fail_with_one_line(what: &str, out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{what} should fail; stdout: {}",
        stdout(out)
    );
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{what} should print one error line:\n{err}");
    assert!(lines[0].starts_with("nokv: "), "{what}: {err}");
    assert_eq!(stdout(out), "", "{what} prints nothing on stdout");
    lines[0].to_string()
}

#[tokio::test]
async fn help_names_the_commands_and_global_flags() {
    let out = run_nokv(&["--help"]).await;
    assert!(out.status.success(), "nokv --help: {}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "serve",
        "cluster",
        "status",
        "mkdir",
        "ls",
        "stat",
        "touch",
        "mv",
        "rm",
        "rmdir",
        "ln",
        "readlink",
        "xattr",
        "--endpoints",
        "--json",
        "--stale",
        "--timeout",
        "NOKV_ENDPOINTS",
        "--address-map",
        "shard",
        "node",
        "gc",
        "fsck",
        "backup",
        "--etcd",
        "NOKV_ETCD",
        "--cluster",
    ] {
        assert!(
            text.contains(needle),
            "nokv --help should mention {needle}:\n{text}"
        );
    }
}

#[tokio::test]
async fn serve_help_names_the_replica_flags() {
    let out = run_nokv(&["serve", "--help"]).await;
    assert!(out.status.success(), "nokv serve --help: {}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "--node-id",
        "--addr",
        "--data-dir",
        "--snapshot-every",
        "--keep-logs",
        "--heartbeat",
        "--election-timeout-min",
        "--election-timeout-max",
        "--metrics-addr",
        "--config",
    ] {
        assert!(
            text.contains(needle),
            "nokv serve --help should mention {needle}:\n{text}"
        );
    }
}

#[tokio::test]
async fn shard_and_node_help_name_their_commands() {
    for (command, needles) in [
        (
            "shard",
            &[
                "create",
                "ls",
                "rm",
                "add-replica",
                "remove-replica",
                "transfer-leader",
                "rebalance",
            ][..],
        ),
        ("node", &["ls", "add", "remove", "replace"][..]),
    ] {
        let out = run_nokv(&[command, "--help"]).await;
        assert!(
            out.status.success(),
            "nokv {command} --help: {}",
            stderr(&out)
        );
        let text = stdout(&out);
        for needle in needles {
            assert!(
                text.contains(needle),
                "nokv {command} --help should mention {needle}:\n{text}"
            );
        }
    }
}

#[tokio::test]
async fn a_client_command_without_endpoints_explains_how_to_give_them() {
    let out = run_nokv(&["ls", "/"]).await;
    let line = must_fail_with_one_line("nokv ls / without endpoints", &out);
    assert!(line.contains("NOKV_ENDPOINTS"), "{line}");
    assert!(line.contains("--endpoints"), "{line}");
}

/// Runs `nokv --endpoints ADDR --timeout 2s ls /` and checks that it fails
/// with one line well before a hang would be noticed.
async fn must_give_up_within_the_timeout(what: &str, addr: &str) {
    let started = Instant::now();
    let out = run_nokv(&["--endpoints", addr, "--timeout", "2s", "ls", "/"]).await;
    let took = started.elapsed();
    let line = must_fail_with_one_line(what, &out);
    println!("{what}: failed after {took:?}: {line}");
    // 2 s of retries plus process start-up, with slack for a loaded machine.
    assert!(
        took < Duration::from_secs(8),
        "{what} took {took:?}, --timeout was 2s"
    );
    assert!(
        line.contains(addr),
        "the error names the endpoint tried: {line}"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_within_the_timeout() {
    // Nothing listens on a port that was just free: connections are refused.
    let [port] = free_ports::<1>();
    must_give_up_within_the_timeout("a refused endpoint", &format!("127.0.0.1:{port}")).await;
}

#[tokio::test]
async fn a_silent_endpoint_fails_within_the_timeout() {
    // A listener that never accepts: TCP connects, HTTP/2 never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
    let addr = silent.local_addr().expect("its address").to_string();
    must_give_up_within_the_timeout("a silent endpoint", &addr).await;
    drop(silent);
}

#[tokio::test]
async fn a_malformed_address_map_is_refused_with_the_expected_form() {
    let out = run_nokv(&[
        "--endpoints",
        "127.0.0.1:1",
        "--address-map",
        "n1:7400",
        "ls",
        "/",
    ])
    .await;
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains("ADVERTISED=REACHABLE"), "{text}");
}
