//! Commands whose reader goes away (`nokv watch … | head`, `nokv cat … |
//! head -c 10`) end quietly and successfully, as `cat` does, instead of
//! panicking on the closed pipe.
//!
//! - `a_closed_stdout_ends_commands_quietly`: `ls`, `cat` (a 1 MiB body) and
//!   `watch` (once an event arrives) run with stdout a pipe whose read end
//!   is closed before they start: each exits 0 with nothing on stderr.
//!
//! The pipe's read end is closed before the process is spawned, so the
//! first write fails: no timing is involved. The watcher is waited for
//! with a deadline.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::store::{StoreKind, TestStore};
use common::{nokv_command, Cluster};
use nokv_client::PutOptions;

/// Runs `nokv --endpoints … ARGS` with a closed stdout; waits (bounded)
/// for it to exit while `poke` runs beside it (for a watcher: making
/// events), and checks it ended quietly.
async fn ends_quietly<Fut>(cluster: &Cluster, args: &[&str], poke: Fut)
where
    Fut: std::future::Future<Output = ()>,
{
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let endpoints = cluster.endpoints().join(",");
    let mut child = nokv_command()
        .arg("--endpoints")
        .arg(&endpoints)
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nokv");
    let exited = async {
        let status = child.wait().await.expect("wait for nokv");
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            tokio::io::AsyncReadExt::read_to_string(&mut e, &mut stderr)
                .await
                .expect("read stderr");
        }
        (status, stderr)
    };
    let out = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::pin!(exited);
        tokio::select! {
            out = &mut exited => out,
            () = poke => exited.await,
        }
    })
    .await;
    let Ok((status, stderr)) = out else {
        panic!(
            "`nokv {}` did not end after its stdout closed",
            args.join(" ")
        );
    };
    assert!(
        status.success() && stderr.is_empty(),
        "`nokv {}` with a closed stdout: {status}, stderr: {stderr}",
        args.join(" ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_commands_quietly() {
    let _load = common::light_test().await;
    let store = TestStore::start(StoreKind::File)
        .await
        .expect("a local store");
    let url = store.url();
    let env = store.serve_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cluster = Cluster::start_with_env(&["--blob-store", url.as_str()], &env).await;
    let client = cluster.client();
    cluster.must(client.mkdir("/d", false).await, "mkdir /d");
    let body = vec![7u8; 1 << 20];
    cluster.must(
        client
            .put_bytes("/d/big", &body, &PutOptions::default())
            .await,
        "put /d/big",
    );

    ends_quietly(&cluster, &["ls", "/d"], std::future::pending()).await;
    ends_quietly(&cluster, &["cat", "/d/big"], std::future::pending()).await;
    // The watcher prints (and finds its stdout closed) once an event
    // arrives: make events, one per tick, until it has gone.
    let events = async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for i in 0.. {
            tick.tick().await;
            cluster.must(client.mkdir(&format!("/d/e{i}"), false).await, "mkdir");
        }
    };
    ends_quietly(&cluster, &["watch", "/d", "--recursive"], events).await;
}
