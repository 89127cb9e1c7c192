//! The README's CLI tour, word for word.
//!
//! `every_line_of_the_readme_tour_runs`: starts `nokv dev` (the embedded default) on a
//! fresh data directory and three free ports, then runs every line of the first `sh`
//! block after "## CLI tour" in README.md through `bash`, in an empty working directory,
//! with `nokv` (this build) first on `PATH` and `NOKV_ENDPOINTS` exported as `nokv dev`
//! tells a user to. Every line must exit 0. `nokv watch`, which runs until Ctrl-C, must
//! print an event, and is then stopped. `nokv mount -d` leaves a FUSE mount in the working
//! directory, which the tour unmounts itself (and this test, if a line fails). A README
//! edit that breaks the tour fails here.
//!
//! Synchronisation is by polling under deadlines, never by sleeping.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

/// How long one line of the tour may take (the bench line creates 20,000 files).
const LINE_TIMEOUT: Duration = Duration::from_secs(180);

/// The tour's command lines: the first ```sh block after "## CLI tour", without blank
/// and comment-only lines.
fn tour() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let (_, after) = readme
        .split_once("## CLI tour")
        .expect("README.md has a '## CLI tour' section");
    let (_, block) = after
        .split_once("```sh\n")
        .expect("the tour has a ```sh block");
    let (block, _) = block.split_once("```").expect("the block is closed");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// A base port with itself and the next two free.
fn free_base_port() -> u16 {
    for _ in 0..200 {
        let [candidate] = common::free_ports::<1>();
        if candidate > 65000 {
            continue;
        }
        let free = (0..3).all(|i| TcpListener::bind(("127.0.0.1", candidate + i)).is_ok());
        if free {
            return candidate;
        }
    }
    panic!("no three consecutive free ports");
}

/// The directory holding the `nokv` binary under test.
fn nokv_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_BIN_EXE_nokv"))
        .parent()
        .expect("the binary has a directory")
        .to_path_buf()
}

fn bash(line: &str, dir: &Path, endpoints: &str) -> tokio::process::Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![nokv_dir()];
    dirs.extend(std::env::split_paths(&path));
    let mut command = tokio::process::Command::new("bash");
    command
        .args(["-o", "pipefail", "-c", line])
        .current_dir(dir)
        .env("PATH", std::env::join_paths(dirs).expect("a PATH"))
        .env("NOKV_ENDPOINTS", endpoints)
        .env_remove("NOKV_ETCD")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `nokv watch ...` until it prints a line, then stops it.
async fn must_watch(line: &str, dir: &Path, endpoints: &str) {
    let mut child = bash(line, dir, endpoints)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bash");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(LINE_TIMEOUT, lines.next_line()).await;
    let _ = child.start_kill();
    let output = child.wait_with_output().await.expect("wait for watch");
    match first {
        Ok(Ok(Some(event))) => {
            let value: serde_json::Value = serde_json::from_str(&event)
                .unwrap_or_else(|e| panic!("{line}: printed non-JSON ({e}): {event}"));
            assert!(value["type"].is_string(), "{line}: {event}");
        }
        other => panic!(
            "{line}: printed no event ({other:?}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Unmounts (lazily) whatever the tour left mounted under its working directory, so a
/// failed line does not leave a mount process serving a deleted directory.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if nokv_fuse::is_mounted(&self.0) {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(&self.0)
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_the_readme_tour_runs() {
    let _load = common::heavy_test().await;
    let lines = tour();
    assert!(lines.len() > 20, "the tour has its lines: {lines:?}");
    let dev_dir = tempfile::tempdir().expect("a data directory");
    let work = tempfile::tempdir().expect("a working directory");
    let _unmount = Unmount(work.path().join("mnt"));
    let base = free_base_port();
    let endpoints = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect::<Vec<_>>()
        .join(",");
    let dev_log = std::fs::File::create(dev_dir.path().join("dev.log")).expect("dev log");
    let mut dev = common::nokv_command()
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dev_dir.path().join("data"))
        .env_remove("NOKV_ENDPOINTS")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(dev_log))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn nokv dev");
    // `nokv dev` tells the user what to export once the cluster serves.
    let stdout = dev.stdout.take().expect("dev stdout");
    let mut printed = BufReader::new(stdout).lines();
    let export = format!("export NOKV_ENDPOINTS={endpoints}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, printed.next_line()).await {
            Ok(Ok(Some(l))) if l.trim() == export => break,
            Ok(Ok(Some(_))) => continue,
            other => panic!(
                "nokv dev did not print `{export}` ({other:?}); log: {}",
                std::fs::read_to_string(dev_dir.path().join("dev.log")).unwrap_or_default()
            ),
        }
    }
    // Keep reading what it prints, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = printed.next_line().await {} });

    for line in &lines {
        if line.starts_with("nokv watch ") {
            must_watch(line, work.path(), &endpoints).await;
            continue;
        }
        let started = Instant::now();
        let run = bash(line, work.path(), &endpoints).output();
        let out = tokio::time::timeout(LINE_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("{line}: still running after {LINE_TIMEOUT:?}"))
            .expect("run bash");
        assert!(
            out.status.success(),
            "README tour line failed: {line}\nstdout: {}\nstderr: {}\nnokv dev log: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dev_dir.path().join("dev.log")).unwrap_or_default()
        );
        eprintln!("ok ({:.1} s): {line}", started.elapsed().as_secs_f64());
    }
    let _ = dev.start_kill();
    let _ = dev.wait().await;
}
