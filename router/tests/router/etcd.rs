//! Behaviour specific to the etcd backend: the key layout, corrupt values, compaction, and
//! an unreachable etcd.

use std::time::{Duration, Instant};

use futures::StreamExt;
use nokv_router::schema::Keys;
use nokv_router::{
    ClusterId, ControlPlane, EtcdConfig, EtcdControlPlane, NodeId, NodeRecord, NodeState, Revision,
    ShardMap,
};

use crate::support::{must_within, wait_until, EtcdServer};

const WAIT: Duration = Duration::from_secs(15);

fn cluster(name: &str) -> ClusterId {
    ClusterId::new(name).expect("valid cluster id")
}

async fn connect(endpoint: &str, name: &str) -> EtcdControlPlane {
    let mut config = EtcdConfig::new(vec![endpoint.to_string()], cluster(name));
    config.connect_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_secs(1);
    config.keep_alive_interval = Duration::from_millis(500);
    config.keep_alive_timeout = Duration::from_millis(500);
    EtcdControlPlane::connect(config).await.expect("connect")
}

async fn raw(server: &EtcdServer) -> etcd_client::Client {
    etcd_client::Client::connect([server.endpoint.as_str()], None)
        .await
        .expect("raw etcd client")
}

fn next_map(map: &ShardMap, id: u64) -> ShardMap {
    let mut next = map.clone();
    next.nodes.insert(
        NodeId(id),
        NodeRecord {
            id: NodeId(id),
            addr: format!("127.0.0.1:{}", 7000 + id),
            state: NodeState::Active,
        },
    );
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_the_schema_and_clusters_are_isolated() {
    let server = EtcdServer::must_start();
    let a = connect(&server.endpoint, "alpha").await;
    let b = connect(&server.endpoint, "beta").await;
    let map = a
        .init(ShardMap::bootstrap(cluster("alpha"), NodeId(1), "h:1"))
        .await
        .expect("init alpha");
    assert_eq!(b.load().await.expect("load beta"), None);
    let _alive = a
        .register_node_alive(NodeId(7), Duration::from_secs(5))
        .await
        .expect("alive");
    assert!(b.live_nodes().await.expect("live beta").is_empty());

    let mut etcd = raw(&server).await;
    let got = etcd.get("/nokv/alpha/map", None).await.expect("get map");
    let kv = got.kvs().first().expect("map key exists");
    assert_eq!(
        kv.mod_revision(),
        i64::try_from(map.revision.0).expect("small")
    );
    let value: serde_json::Value = serde_json::from_slice(kv.value()).expect("json");
    assert_eq!(value["format"], 1);
    assert!(
        value.get("revision").is_none(),
        "the revision is not stored: {value}"
    );

    let keys = Keys::new("/nokv/", &cluster("alpha")).expect("keys");
    let got = etcd
        .get(keys.alive(NodeId(7)), None)
        .await
        .expect("get alive");
    let kv = got.kvs().first().expect("liveness key exists");
    assert_ne!(kv.lease(), 0, "the liveness key is leased");
    assert_eq!(kv.value(), b"7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_values_in_etcd_are_errors_not_panics() {
    let server = EtcdServer::must_start();
    let cp = connect(&server.endpoint, "c").await;
    let map = cp
        .init(ShardMap::bootstrap(cluster("c"), NodeId(1), "h:1"))
        .await
        .expect("init");
    let mut watch = cp.watch(map.revision).await.expect("watch");

    let mut etcd = raw(&server).await;
    etcd.put("/nokv/c/map", "{\"format\":1,\"clus", None)
        .await
        .expect("put garbage");
    let err = cp.load().await.expect_err("corrupt map loaded");
    assert_eq!(err.code(), "CORRUPT_STATE", "{err}");
    let item = must_within(WAIT, "watch item", watch.next())
        .await
        .expect("an item");
    assert_eq!(
        item.expect_err("corrupt map watched").code(),
        "CORRUPT_STATE"
    );
    assert!(
        must_within(WAIT, "watch end", watch.next()).await.is_none(),
        "the stream ends after an error"
    );

    etcd.put("/nokv/c/alive/not-a-number", "x", None)
        .await
        .expect("put");
    assert_eq!(
        cp.live_nodes().await.expect_err("bad key").code(),
        "CORRUPT_STATE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_revision_delivers_the_current_map() {
    let server = EtcdServer::must_start();
    let cp = connect(&server.endpoint, "c").await;
    let base = cp
        .init(ShardMap::bootstrap(cluster("c"), NodeId(1), "h:1"))
        .await
        .expect("init");
    let mut current = base.clone();
    for id in 2..5 {
        current = cp
            .compare_and_swap(current.revision, next_map(&current, id))
            .await
            .expect("cas");
    }
    let mut etcd = raw(&server).await;
    etcd.compact(i64::try_from(current.revision.0).expect("small"), None)
        .await
        .expect("compact");

    let mut watch = cp.watch(base.revision).await.expect("watch");
    let first = must_within(WAIT, "first map", watch.next())
        .await
        .expect("item")
        .expect("map");
    assert_eq!(
        first, current,
        "skips the compacted maps, delivers the current one"
    );
    let newer = cp
        .compare_and_swap(current.revision, next_map(&current, 9))
        .await
        .expect("cas");
    let second = must_within(WAIT, "second map", watch.next())
        .await
        .expect("item")
        .expect("map");
    assert_eq!(second, newer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_etcd_makes_calls_fail_fast_with_unavailable() {
    let mut server = EtcdServer::must_start();
    let cp = connect(&server.endpoint, "c").await;
    let map = cp
        .init(ShardMap::bootstrap(cluster("c"), NodeId(1), "h:1"))
        .await
        .expect("init");
    let mut watch = cp.watch(map.revision).await.expect("watch");
    let alive = cp
        .register_node_alive(NodeId(1), Duration::from_secs(2))
        .await
        .expect("alive");

    server.stop();

    // connect 0.5 s + request 1 s bound every call; allow generous slack for a busy machine.
    let bound = Duration::from_secs(5);
    let started = Instant::now();
    let err = cp.load().await.expect_err("load with etcd down");
    assert_eq!(err.code(), "CONTROL_PLANE_UNAVAILABLE", "{err}");
    assert!(
        started.elapsed() < bound,
        "load took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let err = cp
        .compare_and_swap(map.revision, next_map(&map, 2))
        .await
        .expect_err("cas with etcd down");
    assert_eq!(err.code(), "CONTROL_PLANE_UNAVAILABLE", "{err}");
    assert!(
        started.elapsed() < bound,
        "cas took {:?}",
        started.elapsed()
    );

    for (what, result) in [
        ("init", cp.init(map.clone()).await.map(|_| ())),
        ("live_nodes", cp.live_nodes().await.map(|_| ())),
        (
            "register",
            cp.register_node_alive(NodeId(2), Duration::from_secs(2))
                .await
                .map(|_| ()),
        ),
    ] {
        let err = result.expect_err(what);
        assert_eq!(err.code(), "CONTROL_PLANE_UNAVAILABLE", "{what}: {err}");
    }

    let item = must_within(WAIT, "the watch notices", watch.next())
        .await
        .expect("an error item before the end");
    assert_eq!(
        item.expect_err("watch with etcd down").code(),
        "CONTROL_PLANE_UNAVAILABLE"
    );

    // Dropping a liveness handle while etcd is down does not hang anything.
    must_within(WAIT, "close while etcd is down", alive.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_is_lazy_and_an_absent_etcd_is_unavailable() {
    // A port nobody listens on: bind, note it, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let cp = connect(&format!("http://127.0.0.1:{port}"), "c").await;
    let started = Instant::now();
    let err = cp.load().await.expect_err("nothing listens");
    assert_eq!(err.code(), "CONTROL_PLANE_UNAVAILABLE", "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // `watch` hands back a stream without a round trip; the failure is its first item.
    let mut stream = cp.watch(Revision(0)).await.expect("stream");
    let item = must_within(WAIT, "watch error", stream.next())
        .await
        .expect("item");
    assert_eq!(
        item.expect_err("no etcd").code(),
        "CONTROL_PLANE_UNAVAILABLE"
    );
    assert!(must_within(WAIT, "watch end", stream.next())
        .await
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_among_several_is_passed_over() {
    let server = EtcdServer::must_start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // The dead endpoint first: every call must still go through (etcd-client alone
    // fails a call whenever any endpoint of its balancer cannot be reached).
    let mut config = EtcdConfig::new(
        vec![format!("http://127.0.0.1:{port}"), server.endpoint.clone()],
        cluster("c"),
    );
    config.connect_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_secs(1);
    let cp = EtcdControlPlane::connect(config).await.expect("connect");
    let map = cp
        .init(ShardMap::bootstrap(cluster("c"), NodeId(1), "h:1"))
        .await
        .expect("init through the live endpoint");
    for i in 0..3 {
        let loaded = cp.load().await.expect("load").expect("a map");
        assert_eq!(loaded.revision, map.revision, "load {i}");
    }
    let next = cp
        .compare_and_swap(map.revision, next_map(&map, 2))
        .await
        .expect("cas");
    let mut watch = cp.watch(map.revision).await.expect("watch");
    let seen = must_within(WAIT, "watch item", watch.next())
        .await
        .expect("an item")
        .expect("a map");
    assert_eq!(seen.revision, next.revision);
    let alive = cp
        .register_node_alive(NodeId(1), Duration::from_secs(2))
        .await
        .expect("liveness through the live endpoint");
    assert!(cp.live_nodes().await.expect("live").contains(&NodeId(1)));
    alive.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_keeps_the_map_and_clients_reconnect() {
    let mut server = EtcdServer::must_start();
    let cp = connect(&server.endpoint, "c").await;
    let map = cp
        .init(ShardMap::bootstrap(cluster("c"), NodeId(1), "h:1"))
        .await
        .expect("init");
    server.must_restart();
    wait_until(WAIT, "the same client reads the map again", || async {
        cp.load().await.is_ok_and(|m| m.as_ref() == Some(&map))
    })
    .await;
    let next = cp
        .compare_and_swap(map.revision, next_map(&map, 2))
        .await
        .expect("cas after restart");
    assert!(next.revision > map.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_comes_back_when_its_lease_is_lost() {
    let server = EtcdServer::must_start();
    let cp = connect(&server.endpoint, "c").await;
    let _alive = cp
        .register_node_alive(NodeId(3), Duration::from_secs(1))
        .await
        .expect("alive");
    let mut etcd = raw(&server).await;
    let key = Keys::new("/nokv/", &cluster("c"))
        .expect("keys")
        .alive(NodeId(3));
    let lease = etcd.get(key.as_str(), None).await.expect("get").kvs()[0].lease();

    // The lease vanishes under the holder (as when etcd expired it during a partition).
    etcd.lease_revoke(lease).await.expect("revoke");
    assert!(!cp.live_nodes().await.expect("live").contains(&NodeId(3)));
    wait_until(
        WAIT,
        "the holder registers node 3 again on a new lease",
        || async { cp.live_nodes().await.is_ok_and(|n| n.contains(&NodeId(3))) },
    )
    .await;
    let again = etcd.get(key.as_str(), None).await.expect("get").kvs()[0].lease();
    assert_ne!(again, lease);
}
