//! Multi-process tests of `nokv mount` (FUSE), against three real `nokv
//! serve` replicas on a real etcd, with bodies in a file store:
//!
//! - `a_read_only_mount_shows_the_tree_across_grafts`: a tree published
//!   with `nokv publish-dir` reads back through the mount byte for byte
//!   (`diff -r`, `cat`, `find`), across a graft into a second shard; a
//!   directory of 1,500 entries lists whole (several pages); symlinks,
//!   sizes, modes and xattrs (Python's `os.getxattr`, with ERANGE and
//!   ENODATA) come through; every change is refused with EROFS; an open
//!   file keeps reading the generation it opened while the file is
//!   replaced, and a later open sees the new bytes; SIGTERM unmounts.
//! - `a_snapshot_mount_shows_the_pinned_tree`: `nokv mount --snapshot ID`
//!   shows the subtree as it was at the pin, after later changes; Ctrl-C
//!   with a file still open unmounts (lazily) and exits 0.
//! - `a_killed_mount_releases_its_mount_point`: SIGKILL of the mount
//!   process releases the mount point (auto-unmount).
//! - `another_clients_changes_invalidate_the_kernel_caches`: with 60 s
//!   kernel TTLs, a replaced body, a rename and a new file made by another
//!   client show in the mount within seconds (the watch invalidates the
//!   kernel's caches; printed: how long), while a mount with
//!   `--no-invalidate` keeps its cached view.
//!
//! Needs /dev/fuse and `fusermount3` (Debian's fuse3). Synchronisation is
//! by polling under deadlines, never by sleeping.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::store::{StoreKind, TestStore};
use common::{light_test, nokv_command, Cluster, WAIT};
use nokv_client::{Client, PutOptions, XattrFlag};
use tokio::process::Child;

/// A cluster on etcd whose bodies live in a fresh file store.
struct FuseCluster {
    cluster: Cluster,
    client: Client,
    _store: TestStore,
    _etcd: Etcd,
}

impl FuseCluster {
    async fn start(name: &str) -> FuseCluster {
        let etcd = Etcd::must_start().await;
        let store = TestStore::start(StoreKind::File)
            .await
            .expect("a file store is always available");
        let url = store.url();
        let cluster = Cluster::start_on_etcd(&etcd, name, &["--blob-store", url.as_str()]).await;
        let client = cluster.client();
        FuseCluster {
            cluster,
            client,
            _store: store,
            _etcd: etcd,
        }
    }

    /// Starts `nokv mount DIR ARGS` and waits until the kernel serves it.
    async fn mount(&self, dir: &Path, args: &[&str]) -> Mounted {
        let endpoints = self.cluster.endpoints().join(",");
        let log = dir.with_extension("log");
        let child = nokv_command()
            .args(["--endpoints", &endpoints, "mount"])
            .arg(dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the mount's log"))
            .spawn()
            .expect("start nokv mount");
        let mut mounted = Mounted {
            dir: dir.to_path_buf(),
            log,
            child,
        };
        let deadline = Instant::now() + WAIT;
        while !is_mounted(dir) {
            if let Ok(Some(status)) = mounted.child.try_wait() {
                self.cluster.fail(format!(
                    "nokv mount exited with {status} before mounting:\n{}",
                    mounted.log_text()
                ));
            }
            if Instant::now() > deadline {
                self.cluster.fail(format!(
                    "{} was not mounted within {WAIT:?}:\n{}",
                    dir.display(),
                    mounted.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        mounted
    }
}

/// A running `nokv mount` process.
struct Mounted {
    dir: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Mounted {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel.trim_start_matches('/'))
    }

    /// Sends `signal` and waits for the process to exit and the mount
    /// point to be released.
    async fn stop(mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the mount process runs");
        let sent = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {pid}");
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("nokv mount did not exit after {signal}"))
            .expect("wait for nokv mount");
        wait_until_unmounted(&self.dir).await;
        status
    }
}

/// Whether `dir` is a mount point now (by the kernel's mount table).
fn is_mounted(dir: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(want.as_ref()))
}

async fn wait_until_unmounted(dir: &Path) {
    let deadline = Instant::now() + WAIT;
    while is_mounted(dir) {
        assert!(
            Instant::now() < deadline,
            "{} is still mounted after {WAIT:?}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The names in local directory `dir`.
fn names_in(dir: &Path, what: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Runs a program to completion; returns stdout, failing on a non-zero exit.
async fn must_run(program: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic bytes of length `len`, different per `seed`.
fn bytes(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

/// A local tree of nested directories and files of several sizes.
fn make_local_tree(root: &Path) {
    let files: [(&str, usize); 6] = [
        ("README.md", 100),
        ("empty", 0),
        ("conf/train.yaml", 2_000),
        ("conf/deep/nested/x.json", 17),
        ("ckpt/step-100.bin", 300_000),
        ("ckpt/step-200.bin", 1_100_000),
    ];
    for (i, (rel, len)) in files.iter().enumerate() {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir -p");
        std::fs::write(&path, bytes(*len, i as u32)).expect("write a local file");
    }
}

fn small_blocks() -> PutOptions {
    PutOptions {
        block_size: 64 * 1024,
        ..PutOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_mount_shows_the_tree_across_grafts() {
    let _load = light_test().await;
    let fc = FuseCluster::start("fuse1").await;
    let (cluster, client) = (&fc.cluster, &fc.client);
    let work = tempfile::tempdir().expect("a temporary directory");

    // A published tree, a graft with a file in the second shard, a large
    // directory, a symlink and an xattr.
    let local = work.path().join("local");
    make_local_tree(&local);
    cluster
        .must_nokv(&["publish-dir", &local.to_string_lossy(), "/tree"])
        .await;
    cluster.must_nokv(&["shard", "create", "/s1"]).await;
    let in_s1 = bytes(200_000, 9);
    cluster.must(
        client.mkdir("/s1/data", false).await,
        "mkdir in the grafted shard",
    );
    cluster.must(
        client
            .put_bytes("/s1/data/a.bin", &in_s1, &small_blocks())
            .await,
        "publish in the grafted shard",
    );
    cluster.must(client.mkdir("/big", false).await, "mkdir /big");
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let client = client.clone();
        tasks.spawn(async move {
            for i in (worker..1500).step_by(8) {
                client.create(&format!("/big/f{i:04}")).await?;
            }
            Ok::<_, nokv_client::ClientError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        cluster.must(done.expect("create task"), "1,500 creates in /big");
    }
    cluster.must(
        client.symlink("conf/train.yaml", "/tree/link").await,
        "symlink",
    );
    cluster.must(
        client
            .set_xattr("/tree/README.md", "user.run", b"seven", XattrFlag::Upsert)
            .await,
        "set an xattr",
    );

    let dir = work.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir the mount point");
    let mount = fc.mount(&dir, &["--read-only"]).await;
    let m = |rel: &str| mount.path(rel);

    // Real programs see the published tree byte for byte.
    must_run(
        "diff",
        &[
            "-r",
            &local.to_string_lossy(),
            &m("tree").to_string_lossy(),
            "--exclude=link",
        ],
    )
    .await;
    let found = must_run("find", &[&m("tree").to_string_lossy(), "-type", "f"]).await;
    assert_eq!(found.lines().count(), 6, "find lists every file:\n{found}");
    let cat = tokio::process::Command::new("cat")
        .arg(m("s1/data/a.bin"))
        .output()
        .await
        .expect("run cat");
    assert!(cat.status.success(), "cat across the graft: {cat:?}");
    assert_eq!(cat.stdout, in_s1, "a file in the grafted shard reads back");

    // Names, types, sizes, modes and links.
    let top = names_in(&dir, "list the mount's root");
    for name in ["tree", "s1", "big"] {
        assert!(top.contains(&name.to_string()), "{name} in {top:?}");
    }
    assert!(std::fs::metadata(m("s1")).expect("stat the graft").is_dir());
    let big = std::fs::read_dir(m("big")).expect("list /big").count();
    assert_eq!(big, 1500, "a directory of several pages lists whole");
    let meta = std::fs::metadata(m("tree/ckpt/step-200.bin")).expect("stat a file");
    assert_eq!(meta.len(), 1_100_000);
    assert_eq!(
        std::fs::read_link(m("tree/link")).expect("readlink"),
        PathBuf::from("conf/train.yaml")
    );
    assert_eq!(
        std::fs::read(m("tree/link")).expect("read through the symlink"),
        bytes(2_000, 2)
    );
    let missing = std::fs::metadata(m("tree/nope")).expect_err("no such file");
    assert_eq!(missing.raw_os_error(), Some(2), "ENOENT: {missing}");

    // Xattrs, as Python sees them: the value, ERANGE sizing is done by
    // Python itself, a missing name is ENODATA.
    let py = format!(
        "import os, errno\n\
         p = {path:?}\n\
         assert os.getxattr(p, 'user.run') == b'seven', os.getxattr(p, 'user.run')\n\
         assert 'user.run' in os.listxattr(p), os.listxattr(p)\n\
         try:\n    os.getxattr(p, 'user.none')\n    raise SystemExit('no error')\n\
         except OSError as e:\n    assert e.errno == errno.ENODATA, e\n\
         print('ok')\n",
        path = m("tree/README.md").to_string_lossy()
    );
    assert_eq!(must_run("python3", &["-c", &py]).await.trim(), "ok");

    // Every change is refused as a read-only file system.
    let erofs = 30;
    for (what, result) in [
        ("create", std::fs::write(m("tree/new"), b"x").map(|_| ())),
        ("mkdir", std::fs::create_dir(m("tree/newdir"))),
        ("unlink", std::fs::remove_file(m("tree/README.md"))),
        (
            "rename",
            std::fs::rename(m("tree/README.md"), m("tree/R.md")),
        ),
        (
            "open for writing",
            std::fs::OpenOptions::new()
                .append(true)
                .open(m("tree/README.md"))
                .map(|_| ()),
        ),
    ] {
        let e = result.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(erofs), "{what}: {e}");
    }
    let after = cluster.must(
        client
            .read_dir_all("/tree", nokv_client::Consistency::Linearizable)
            .await,
        "list /tree",
    );
    assert_eq!(after.len(), 5, "nothing changed: {after:?}");

    // Close-to-open: a handle opened before a replace keeps reading the
    // generation it opened; a later open sees the new bytes.
    let path = m("tree/ckpt/step-100.bin");
    let old = bytes(300_000, 4);
    let mut held = std::fs::File::open(&path).expect("open before the replace");
    let new = bytes(300_000, 99);
    cluster.must(
        client
            .put_bytes("/tree/ckpt/step-100.bin", &new, &small_blocks())
            .await,
        "replace the file",
    );
    let mut seen = Vec::new();
    std::io::Read::read_to_end(&mut held, &mut seen).expect("read the held handle");
    assert!(
        seen == old,
        "the held handle reads the old generation whole"
    );
    drop(held);
    cluster
        .wait_until(WAIT, "a new open sees the replaced bytes", async || {
            std::fs::read(&path).is_ok_and(|b| b == new)
        })
        .await;

    let status = mount.stop("-TERM").await;
    assert!(status.success(), "SIGTERM unmounts cleanly: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_mount_shows_the_pinned_tree() {
    let _load = light_test().await;
    let fc = FuseCluster::start("fuse2").await;
    let (cluster, client) = (&fc.cluster, &fc.client);
    let work = tempfile::tempdir().expect("a temporary directory");
    cluster.must(client.mkdir("/runs/7", true).await, "mkdir /runs/7");
    let before = bytes(100_000, 1);
    cluster.must(
        client
            .put_bytes("/runs/7/model.bin", &before, &small_blocks())
            .await,
        "publish",
    );
    let out = cluster
        .must_nokv(&["--json", "snapshot", "create", "/runs/7"])
        .await;
    let made: serde_json::Value = serde_json::from_str(&out).expect("snapshot create --json");
    let id = made["id"].as_u64().expect("a snapshot id").to_string();
    // Changes after the pin: a replace, a new file, a removal.
    cluster.must(
        client
            .put_bytes("/runs/7/model.bin", &bytes(5, 2), &small_blocks())
            .await,
        "replace",
    );
    cluster.must(client.create("/runs/7/later").await, "create");

    let dir = work.path().join("snap");
    std::fs::create_dir(&dir).expect("mkdir the mount point");
    let mount = fc.mount(&dir, &["--snapshot", &id]).await;
    assert_eq!(
        std::fs::read(mount.path("model.bin")).expect("read at the pin"),
        before
    );
    let names = names_in(&dir, "list the snapshot");
    assert_eq!(names, vec!["model.bin".to_string()]);
    let e = std::fs::write(mount.path("x"), b"x").expect_err("a snapshot is read-only");
    assert_eq!(e.raw_os_error(), Some(30), "{e}");
    // Ctrl-C with a file still open: the mount is detached all the same.
    let held = std::fs::File::open(mount.path("model.bin")).expect("open a file");
    let status = mount.stop("-INT").await;
    assert!(status.success(), "Ctrl-C unmounts cleanly: {status}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mount_releases_its_mount_point() {
    let _load = light_test().await;
    let fc = FuseCluster::start("fuse3").await;
    let work = tempfile::tempdir().expect("a temporary directory");
    let dir = work.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir the mount point");
    let mount = fc.mount(&dir, &["--read-only"]).await;
    mount.stop("-KILL").await;
    // The directory is usable again (not a dead mount: ENOTCONN).
    std::fs::read_dir(&dir).expect("the released mount point lists");

    // And a live mount without --read-only is refused with the reason.
    let endpoints = fc.cluster.endpoints().join(",");
    let out = nokv_command()
        .args(["--endpoints", &endpoints, "mount"])
        .arg(&dir)
        .output()
        .await
        .expect("run nokv mount");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--read-only"), "{stderr}");
    assert!(!is_mounted(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_changes_invalidate_the_kernel_caches() {
    let _load = light_test().await;
    let fc = FuseCluster::start("fuse4").await;
    let (cluster, client) = (&fc.cluster, &fc.client);
    let work = tempfile::tempdir().expect("a temporary directory");
    cluster.must(client.mkdir("/w", false).await, "mkdir /w");
    cluster.must(
        client
            .put_bytes("/w/body", &bytes(1000, 1), &small_blocks())
            .await,
        "publish",
    );
    cluster.must(client.create("/w/a").await, "create /w/a");

    let ttl = ["--attr-ttl", "60s", "--entry-ttl", "60s"];
    let watched_dir = work.path().join("watched");
    let plain_dir = work.path().join("plain");
    std::fs::create_dir(&watched_dir).expect("mkdir");
    std::fs::create_dir(&plain_dir).expect("mkdir");
    let watched = fc
        .mount(&watched_dir, &[&["--read-only"][..], &ttl].concat())
        .await;
    let plain = fc
        .mount(
            &plain_dir,
            &[&["--read-only", "--no-invalidate"][..], &ttl].concat(),
        )
        .await;
    // Let both kernels cache the attributes and names.
    for m in [&watched, &plain] {
        assert_eq!(
            std::fs::metadata(m.path("w/body")).expect("stat").len(),
            1000
        );
        assert!(std::fs::metadata(m.path("w/a")).is_ok());
    }

    let changed = Instant::now();
    cluster.must(
        client
            .put_bytes("/w/body", &bytes(2000, 2), &small_blocks())
            .await,
        "replace",
    );
    cluster.must(
        client
            .rename("/w/a", "/w/b", nokv_client::RenameMode::Replace)
            .await,
        "rename",
    );
    cluster.must(client.create("/w/c").await, "create");
    cluster
        .wait_until(
            Duration::from_secs(20),
            "the watched mount shows every change",
            async || {
                std::fs::metadata(watched.path("w/body")).is_ok_and(|m| m.len() == 2000)
                    && std::fs::metadata(watched.path("w/a")).is_err()
                    && std::fs::metadata(watched.path("w/b")).is_ok()
                    && std::fs::metadata(watched.path("w/c")).is_ok()
            },
        )
        .await;
    println!(
        "a second client's replace, rename and create showed in the mount after {:?} \
         (kernel TTLs 60 s)",
        changed.elapsed()
    );
    assert_eq!(
        std::fs::read(watched.path("w/body")).expect("read the new body"),
        bytes(2000, 2)
    );
    // Without the watch, the kernel still trusts what it cached.
    assert_eq!(
        std::fs::metadata(plain.path("w/body")).expect("stat").len(),
        1000,
        "a mount without invalidation keeps its cached attributes until the TTL"
    );
    assert!(
        std::fs::metadata(plain.path("w/a")).is_ok(),
        "and its cached name"
    );

    plain.stop("-TERM").await;
    watched.stop("-TERM").await;
}
