//! Multi-process tests of the cluster's security (docs/security.md):
//!
//! - `a_tls_cluster_serves_clients_with_its_ca_and_raft_to_members_only`:
//!   `nokv certs` makes a CA and a node certificate; three replicas serve
//!   TLS with them (peers authenticate each other with it) and clients
//!   that trust the CA use the cluster through the CLI and the SDK. A
//!   plain-text client, a client that trusts another CA, a process without
//!   a certificate sending Raft messages (votes of a far higher term,
//!   AppendEntries), and a process with another CA's certificate are all
//!   refused, and the cluster's term and leader do not move.
//! - `raft_messages_of_another_cluster_are_refused`: a Raft message that
//!   names another cluster is refused before it is decoded, and changes
//!   nothing.
//!
//! - `tokens_with_roles_guard_every_call`: a cluster started with
//!   `--require-auth` and a bootstrap admin token refuses a client without
//!   a token, with a malformed one, a read-only token writing, a read-write
//!   token calling admin RPCs, a revoked token (and a watch stream whose
//!   token is revoked while it runs), each with a clear
//!   error and no change; tokens survive a restart of every node; no
//!   secret appears in a log or an error message.
//!
//! - `a_node_without_shard_0_asks_it_about_tokens`: a fourth node that
//!   hosts shard 1 only checks tokens with a replica of shard 0 (roles,
//!   unknown tokens, a revocation within its 2 s memory), says
//!   `UNAVAILABLE` when no replica of shard 0 answers, and still takes the
//!   bootstrap token.
//!
//! Synchronisation is by polling under deadlines, never by sleeping.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{run_nokv, Cluster};
use nokv_proto::pb::raft_service_client::RaftServiceClient;
use nokv_proto::pb::RaftMessage;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::Vote;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Runs `nokv ARGS`, which must succeed.
async fn must_run(args: &[&str]) -> String {
    let out = run_nokv(args).await;
    assert!(
        out.status.success(),
        "nokv {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `nokv ARGS`, which must fail; returns stderr.
async fn must_fail(args: &[&str]) -> String {
    let out = run_nokv(args).await;
    assert!(!out.status.success(), "nokv {} succeeded", args.join(" "));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A CA in `dir` and a certificate `node` for 127.0.0.1 signed by it.
async fn make_certs(dir: &Path) {
    let d = dir.to_str().expect("a UTF-8 path");
    must_run(&["certs", "ca", "--dir", d]).await;
    let out = must_run(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--name",
        "node",
        "--host",
        "127.0.0.1",
        "--host",
        "localhost",
    ])
    .await;
    assert!(out.contains("node-key.pem"), "{out}");
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_str().expect("a UTF-8 path").to_string()
}

/// A Raft client of node `addr` over TLS trusting `ca`, presenting
/// `identity` (certificate and key files) if given.
async fn raft_client(
    addr: &str,
    ca: &Path,
    identity: Option<(PathBuf, PathBuf)>,
) -> Result<RaftServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    let ca = std::fs::read(ca).expect("read the CA");
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).expect("read the certificate"),
            std::fs::read(key).expect("read the key"),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .expect("a valid URI")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(RaftServiceClient::new(channel))
}

/// A vote for node 9 in a term far above the cluster's: if a replica took
/// it, the cluster's term would jump and its leader step down.
fn disruptive_vote(term: u64) -> Vec<u8> {
    let vote: VoteRequest<u64> = VoteRequest::new(Vote::new(term + 100, 9), None);
    nokv_meta_node::raft_wire::encode(&vote).expect("encode a vote")
}

fn heartbeat(term: u64) -> Vec<u8> {
    let append: AppendEntriesRequest<nokv_meta_node::TypeConfig> = AppendEntriesRequest {
        vote: Vote::new_committed(term + 100, 9),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    nokv_meta_node::raft_wire::encode(&append).expect("encode an append")
}

fn message(data: Vec<u8>, cluster: &str) -> RaftMessage {
    RaftMessage {
        data,
        shard: 0,
        cluster: cluster.into(),
    }
}

/// The leader and term every replica agrees on.
async fn term_and_leader(cluster: &Cluster) -> (u64, u64) {
    let leader = cluster.must_agreed_leader(&[1, 2, 3]).await;
    let status = cluster.status(leader).await.expect("leader status");
    (status.term, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_clients_with_its_ca_and_raft_to_members_only() {
    let _load = common::light_test().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    make_certs(&ours).await;
    make_certs(&theirs).await;
    // Misuse of `nokv certs` gets clear errors.
    let again = must_fail(&["certs", "ca", "--dir", &path(&ours, "")]).await;
    assert!(
        again.contains("exists") && again.contains("--force"),
        "{again}"
    );
    let no_ca = must_fail(&[
        "certs",
        "issue",
        "--dir",
        &path(dir.path(), "empty"),
        "--name",
        "n",
        "--host",
        "h",
    ])
    .await;
    assert!(no_ca.contains("nokv certs ca"), "{no_ca}");

    let (ca, cert, key) = (
        path(&ours, "ca.pem"),
        path(&ours, "node.pem"),
        path(&ours, "node-key.pem"),
    );
    let half = must_fail(&[
        "serve",
        "--tls-cert",
        &cert,
        "--node-id",
        "1",
        "--addr",
        "127.0.0.1:1",
        "--data-dir",
        &path(dir.path(), "half"),
    ])
    .await;
    assert!(half.contains("--tls-key"), "{half}");
    let mut cluster =
        Cluster::start(&["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key]).await;

    // Clients that trust the CA use the cluster.
    cluster.must_nokv(&["mkdir", "/secure"]).await;
    assert!(cluster.must_nokv(&["ls", "/"]).await.contains("secure"));
    let client = cluster.client();
    cluster.must(client.create("/secure/f").await, "create over TLS");
    let (term, leader) = term_and_leader(&cluster).await;

    // A client without TLS, and one that trusts another CA, are refused.
    let addr = cluster.addr(leader);
    must_fail(&["--endpoints", &addr, "--timeout", "3s", "ls", "/"]).await;
    must_fail(&[
        "--tls-ca",
        &path(&theirs, "ca.pem"),
        "--endpoints",
        &addr,
        "--timeout",
        "3s",
        "ls",
        "/",
    ])
    .await;

    // A process without a certificate of the cluster sends Raft messages:
    // refused before they are decoded.
    for id in cluster.ids() {
        let mut raft = cluster.must(
            raft_client(&cluster.addr(id), &ours.join("ca.pem"), None).await,
            "connect with the CA only",
        );
        for (rpc, result) in [
            (
                "Vote",
                raft.vote(message(disruptive_vote(term), "nokv")).await,
            ),
            (
                "AppendEntries",
                raft.append_entries(message(heartbeat(term), "nokv")).await,
            ),
        ] {
            match result {
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        tonic::Code::Unauthenticated,
                        "{rpc}: {status:?}"
                    );
                    assert!(status.message().contains("certificate"), "{status:?}");
                }
                Ok(_) => cluster.fail(format!(
                    "{rpc} without a certificate was accepted by node {id}"
                )),
            }
        }
    }
    // With another CA's certificate the handshake itself fails.
    let stranger = Some((theirs.join("node.pem"), theirs.join("node-key.pem")));
    match raft_client(&addr, &ours.join("ca.pem"), stranger).await {
        Err(_) => {}
        Ok(mut raft) => {
            let result = raft.vote(message(disruptive_vote(term), "nokv")).await;
            assert!(result.is_err(), "a stranger's certificate was accepted");
        }
    }
    // Nothing moved: same term, same leader, and writes go on.
    assert_eq!(term_and_leader(&cluster).await, (term, leader));
    cluster.must(
        client.create("/secure/g").await,
        "create after the attempts",
    );
    cluster.must_all_run();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_of_another_cluster_are_refused() {
    let _load = common::light_test().await;
    let cluster = Cluster::start(&[]).await;
    let (term, leader) = term_and_leader(&cluster).await;
    let channel = cluster.must(
        Endpoint::from_shared(format!("http://{}", cluster.addr(leader)))
            .expect("a valid URI")
            .connect()
            .await,
        "connect",
    );
    let mut raft = RaftServiceClient::new(channel);
    for named in ["other", ""] {
        match raft.vote(message(disruptive_vote(term), named)).await {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
                assert!(status.message().contains("cluster"), "{status:?}");
            }
            Ok(_) => cluster.fail(format!("a vote of cluster {named:?} was accepted")),
        }
    }
    assert_eq!(term_and_leader(&cluster).await, (term, leader));
    cluster.must(cluster.client().create("/after").await, "create");
}

/// The secret part of a token's text (what must never leak).
fn secret_of(token: &str) -> &str {
    &token[token.len() - 64..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_roles_guard_every_call() {
    use futures::StreamExt;
    use nokv_client::{ClientError, Consistency};

    let _load = common::light_test().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let admin_file = path(dir.path(), "admin.token");
    must_run(&["auth", "token", "generate", "--out", &admin_file]).await;
    let admin = std::fs::read_to_string(&admin_file).expect("the admin token file");
    let admin = admin.trim().to_string();
    let mut cluster =
        Cluster::start(&["--require-auth", "true", "--admin-token-file", &admin_file]).await;
    let endpoints = cluster.endpoints().join(",");
    // `nokv --endpoints ... [--token T] ARGS`, outside the harness's credentials.
    let with = |token: Option<&str>, args: &[&str]| {
        let mut full = vec!["--endpoints".to_string(), endpoints.clone()];
        if let Some(t) = token {
            full.extend(["--token".to_string(), t.to_string()]);
        }
        full.extend(args.iter().map(|a| a.to_string()));
        full
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_nokv(&refs).await
    };
    let must_refuse = |args: Vec<String>, why: &'static str| async move {
        let out = run(args.clone()).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        stderr
    };

    // The admin (the harness's own credentials) makes the other tokens.
    cluster.must_nokv(&["mkdir", "/data"]).await;
    let reader = cluster
        .must_nokv(&[
            "auth",
            "token",
            "create",
            "--role",
            "read-only",
            "--label",
            "dash",
        ])
        .await
        .trim()
        .to_string();
    let writer = cluster
        .must_nokv(&[
            "auth",
            "token",
            "create",
            "--role",
            "read-write",
            "--label",
            "ci",
        ])
        .await
        .trim()
        .to_string();
    let listed = cluster.must_nokv(&["--json", "auth", "token", "ls"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("--json");
    assert_eq!(
        listed["tokens"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    let mut errors = Vec::new();

    // No token, a malformed header, an unknown token: unauthenticated.
    errors.push(must_refuse(with(None, &["ls", "/"]), "not authenticated").await);
    errors.push(must_refuse(with(None, &["mkdir", "/nope"]), "not authenticated").await);
    let stranger = nokv_client::generate_token().reveal();
    errors.push(must_refuse(with(Some(&stranger), &["ls", "/"]), "unknown or revoked").await);
    let mut raw = cluster.raw(1).await;
    let mut bad = tonic::Request::new(nokv_proto::pb::StatusRequest {
        shard: 0,
        ..Default::default()
    });
    bad.metadata_mut().insert(
        "authorization",
        tonic::metadata::AsciiMetadataValue::from_static("Bearer nokv_zz"),
    );
    match raw.status(bad).await {
        Err(s) => assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}"),
        Ok(_) => cluster.fail("a malformed token was accepted"),
    }

    // Read-only: reads and watches, but no writes.
    let ls = run(with(Some(&reader), &["ls", "/"])).await;
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(String::from_utf8_lossy(&ls.stdout).contains("data"));
    errors.push(
        must_refuse(
            with(Some(&reader), &["mkdir", "/data/r"]),
            "permission denied",
        )
        .await,
    );
    errors.push(must_refuse(with(Some(&reader), &["touch", "/data/r"]), "needs write").await);

    // Read-write: namespace writes, but no admin calls.
    let made = run(with(Some(&writer), &["mkdir", "/data/w"])).await;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    for admin_call in [
        vec!["auth", "token", "create", "--role", "admin"],
        vec!["auth", "token", "ls"],
        vec!["gc", "--now"],
        vec!["fsck"],
        vec!["watch-retention", "--events", "10", "--age", "1h"],
    ] {
        errors.push(must_refuse(with(Some(&writer), &admin_call), "needs admin").await);
    }

    // The SDK: a read-only client watches; its write is refused and changes nothing.
    let mut config = nokv_client::ClientConfig::new(cluster.endpoints());
    config.token = Some(nokv_client::Token::parse(&reader).expect("a token"));
    let read_only = nokv_client::Client::new(config).expect("client");
    let mut events = Box::pin(read_only.watch("/data", true, 0));
    match read_only.mkdir("/data/sdk", false).await {
        Err(ClientError::PermissionDenied(m)) => errors.push(m),
        other => cluster.fail(format!("a read-only SDK mkdir: {other:?}")),
    }
    // Its bulk create travels in batched calls, refused whole.
    let bulk: Vec<String> = (0..64).map(|i| format!("/data/bulk{i}")).collect();
    for answer in read_only.create_many(&bulk).await {
        match answer {
            Err(ClientError::PermissionDenied(m)) => errors.push(m),
            other => cluster.fail(format!("a read-only SDK bulk create: {other:?}")),
        }
    }
    let first = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
    match first {
        Ok(Some(Ok(event))) => assert_eq!(event.path.as_deref(), Some("/data"), "{event:?}"),
        other => cluster.fail(format!("the read-only watch: {other:?}")),
    }
    let mut anonymous = nokv_client::ClientConfig::new(cluster.endpoints());
    anonymous.deadline = Duration::from_secs(5);
    let anonymous = nokv_client::Client::new(anonymous).expect("client");
    let mut refused = Box::pin(anonymous.watch("/data", true, 0));
    match tokio::time::timeout(Duration::from_secs(10), refused.next()).await {
        Ok(Some(Err(ClientError::Unauthenticated(_)))) => {}
        other => cluster.fail(format!("a watch without a token: {other:?}")),
    }
    let entries = cluster.must(
        cluster
            .client()
            .read_dir_all("/data", Consistency::Linearizable)
            .await,
        "ls /data",
    );
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["w"], "only the read-write token's mkdir happened");

    // A watch whose token is revoked while it runs ends, on whichever
    // replica serves it.
    let watcher = cluster
        .must_nokv(&["auth", "token", "create", "--role", "read", "--label", "w"])
        .await
        .trim()
        .to_string();
    let mut config = nokv_client::ClientConfig::new(cluster.endpoints());
    config.token = Some(nokv_client::Token::parse(&watcher).expect("a token"));
    let watching = nokv_client::Client::new(config).expect("client");
    let mut watch = Box::pin(watching.watch("/data", true, 0));
    match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
        Ok(Some(Ok(_))) => {}
        other => cluster.fail(format!("the watcher's first event: {other:?}")),
    }
    cluster
        .must_nokv(&["auth", "token", "revoke", &watcher[5..21]])
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    match ended {
        Ok(Some(Err(ClientError::Unauthenticated(m)))) => errors.push(m),
        other => cluster.fail(format!("a watch after its token was revoked: {other:?}")),
    }

    // Revoked: refused at once by the leader, and by every node as it applies it.
    let writer_id = &writer[5..21];
    cluster
        .must_nokv(&["auth", "token", "revoke", writer_id])
        .await;
    errors.push(
        must_refuse(
            with(Some(&writer), &["mkdir", "/data/late"]),
            "unknown or revoked",
        )
        .await,
    );

    // Tokens are replicated state: they survive restarting every node.
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    for id in [1, 2, 3] {
        cluster.restart(id).await;
    }
    cluster.must_agreed_leader(&[1, 2, 3]).await;
    let again = run(with(Some(&reader), &["ls", "/data"])).await;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    errors.push(must_refuse(with(Some(&writer), &["ls", "/"]), "unknown or revoked").await);
    let listed = cluster.must_nokv(&["--json", "auth", "token", "ls"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("--json");
    assert_eq!(
        listed["tokens"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    // No secret in any error message or log line.
    for token in [&admin, &reader, &writer, &watcher, &stranger] {
        let secret = secret_of(token);
        for e in &errors {
            assert!(!e.contains(secret), "an error shows a secret: {e}");
        }
        for id in [1, 2, 3] {
            assert!(
                !cluster.log_text(id).contains(secret),
                "node {id}'s log shows a secret"
            );
        }
    }
}

/// A raw request to node `id` carrying `token`.
fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let token = nokv_client::Token::parse(token).expect("a token");
    request
        .metadata_mut()
        .insert("authorization", token.header_value());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_shard_0_asks_it_about_tokens() {
    use nokv_proto::pb::{MutateRequest, StatusRequest};

    let _load = common::heavy_test().await;
    let etcd = common::etcd::Etcd::must_start().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let admin_file = path(dir.path(), "admin.token");
    must_run(&["auth", "token", "generate", "--out", &admin_file]).await;
    let mut cluster = Cluster::start_on_etcd(
        &etcd,
        "auth4",
        &["--require-auth", "true", "--admin-token-file", &admin_file],
    )
    .await;
    // Node 4 joins and hosts shard 1 only: tokens live in shard 0, on 1-3.
    let four = cluster.add_node().await;
    cluster
        .must_nokv(&["node", "add", &format!("{four}={}", cluster.addr(four))])
        .await;
    cluster
        .must_nokv(&["shard", "create", "/s1", "--members", "2,3,4"])
        .await;
    let token = |role: &'static str| {
        let cluster = &cluster;
        async move {
            cluster
                .must_nokv(&["auth", "token", "create", "--role", role])
                .await
                .trim()
                .to_string()
        }
    };
    let reader = token("read-only").await;
    let writer = token("read-write").await;
    let mut four = cluster.raw(four).await;
    match four
        .status(with_token(
            StatusRequest {
                shard: 0,
                ..Default::default()
            },
            &reader,
        ))
        .await
    {
        Err(s) => assert!(s.message().contains("unknown shard 0"), "{s:?}"),
        Ok(_) => cluster.fail("node 4 hosts shard 0: the test means nothing"),
    }

    // Node 4 learns each token's role from a replica of shard 0.
    let status = four
        .status(with_token(
            StatusRequest {
                shard: 1,
                ..Default::default()
            },
            &reader,
        ))
        .await;
    let status = cluster.must(status, "a read-only token reads on node 4");
    assert_eq!(status.into_inner().shard, 1);
    let empty = || MutateRequest {
        shard: 1,
        ..Default::default()
    };
    match four.mutate(with_token(empty(), &reader)).await {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(s.message().contains("needs write"), "{s:?}");
        }
        Ok(_) => cluster.fail("a read-only token wrote on node 4"),
    }
    // The writer passes the check; the empty request then fails on its own.
    match four.mutate(with_token(empty(), &writer)).await {
        Err(s) => assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}"),
        Ok(_) => cluster.fail("an empty mutation was accepted"),
    }
    let stranger = nokv_client::generate_token().reveal();
    match four
        .status(with_token(
            StatusRequest {
                shard: 1,
                ..Default::default()
            },
            &stranger,
        ))
        .await
    {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
            assert!(s.message().contains("unknown or revoked"), "{s:?}");
        }
        Ok(_) => cluster.fail("an unknown token was accepted by node 4"),
    }

    // A revocation reaches node 4 within the time it trusts an answer.
    cluster
        .must_nokv(&["auth", "token", "revoke", &writer[5..21]])
        .await;
    cluster
        .wait_until(
            Duration::from_secs(20),
            "node 4 refuses the revoked token",
            async || {
                let mut four = four.clone();
                matches!(
                    four.mutate(with_token(empty(), &writer)).await,
                    Err(s) if s.code() == tonic::Code::Unauthenticated
                )
            },
        )
        .await;

    // With every replica of shard 0 down, node 4 says so, and still takes
    // the bootstrap token.
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    match four
        .status(with_token(
            StatusRequest {
                shard: 1,
                ..Default::default()
            },
            &stranger,
        ))
        .await
    {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
            assert!(s.message().contains("none answered"), "{s:?}");
        }
        Ok(_) => cluster.fail("node 4 accepted a token nobody could check"),
    }
    let admin = std::fs::read_to_string(&admin_file).expect("the admin token file");
    let status = four
        .status(with_token(
            StatusRequest {
                shard: 1,
                ..Default::default()
            },
            admin.trim(),
        ))
        .await;
    cluster.must(status, "the bootstrap token on node 4");
    for secret in [&reader, &writer, &stranger].map(|t| secret_of(t)) {
        assert!(
            !cluster.log_text(4).contains(secret),
            "node 4's log shows a secret"
        );
    }
}
