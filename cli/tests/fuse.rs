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
//!   process releases the mount point (auto-unmount), and a writer killed
//!   with unpublished bytes publishes nothing.
//! - `another_clients_changes_invalidate_the_kernel_caches`: with 60 s
//!   kernel TTLs, a replaced body, a rename and a new file made by another
//!   client show in the mount within seconds (the watch invalidates the
//!   kernel's caches; printed: how long), while a mount with
//!   `--no-invalidate` keeps its cached view.
//! - `a_read_write_mount_runs_real_programs`: tar, cp -a, rsync -a, git and
//!   Python on a read-write mount (bytes, modes, times, rename and xattr
//!   flags, errors at grafts), and two mounts reading each other's files.
//! - `closes_across_a_leader_failover_are_all_or_nothing`: a leader killed
//!   while files are written and closed; every file whole or absent.
//! - `pjdfstest_passes_on_a_mount`, `a_corrupt_block_reads_as_an_error`,
//!   `an_unreachable_store_is_an_error_not_a_hang`,
//!   `a_disk_cache_serves_blocks_across_mounts`,
//!   `large_files_are_published_whole_however_they_are_written`,
//!   `appends_keep_the_blocks_they_do_not_change`: see each test.
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
    store: TestStore,
    _etcd: Etcd,
}

impl FuseCluster {
    async fn start(name: &str) -> FuseCluster {
        FuseCluster::start_with(name, StoreKind::File)
            .await
            .expect("a file store is always available")
    }

    /// A cluster whose bodies live in a fresh store of `kind` (`None`: S3
    /// is skipped by `NOKV_SKIP_S3=1`).
    async fn start_with(name: &str, kind: StoreKind) -> Option<FuseCluster> {
        let etcd = Etcd::must_start().await;
        let store = TestStore::start(kind).await?;
        let url = store.url();
        let env = store.serve_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let cluster =
            Cluster::start_on_etcd_with_env(&etcd, name, &["--blob-store", url.as_str()], &env)
                .await;
        let client = cluster.client();
        Some(FuseCluster {
            cluster,
            client,
            store,
            _etcd: etcd,
        })
    }

    /// Starts `nokv mount DIR ARGS` and waits until the kernel serves it.
    async fn mount(&self, dir: &Path, args: &[&str]) -> Mounted {
        let endpoints = self.cluster.endpoints().join(",");
        let log = dir.with_extension("log");
        let child = nokv_command()
            .args(["--endpoints", &endpoints, "mount"])
            .arg(dir)
            .args(args)
            .envs(self.store.serve_env())
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
        let status = self.kill(signal).await;
        wait_until_unmounted(&self.dir).await;
        status
    }

    /// Sends `signal` and waits for the process to exit (not for the mount
    /// point: the caller may first close what it holds open under it).
    async fn kill(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the mount process runs");
        let sent = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {pid}");
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("nokv mount did not exit after {signal}"))
            .expect("wait for nokv mount")
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

    // A writer killed with unpublished bytes publishes nothing: the file
    // keeps its old generation whole.
    let client = &fc.client;
    let old = bytes(50_000, 3);
    fc.cluster.must(
        client.put_bytes("/kept", &old, &small_blocks()).await,
        "publish",
    );
    let mount = fc.mount(&dir, &[]).await;
    let mut held = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mount.path("kept"))
        .expect("open for writing");
    std::io::Write::write_all(&mut held, &bytes(80_000, 4)).expect("write, not closed");
    let mut mount = mount;
    mount.kill("-KILL").await;
    // Our own open file would keep the dead mount busy: close it, then
    // wait for the release (a CI run once timed out waiting with it open).
    drop(held);
    wait_until_unmounted(&mount.dir).await;
    let seen = fc
        .cluster
        .must(client.get("/kept", None).await, "read /kept");
    assert!(
        seen == old,
        "the killed writer's bytes never became visible: {} bytes, {:?}",
        seen.len(),
        &seen[..seen.len().min(8)]
    );
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

/// The mount as a worker uses it: real programs write, rename and read
/// through it, and another mount of the same cluster sees what one closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_mount_runs_real_programs() {
    let _load = light_test().await;
    let fc = FuseCluster::start("fuse5").await;
    let (cluster, client) = (&fc.cluster, &fc.client);
    let work = tempfile::tempdir().expect("a temporary directory");
    cluster.must_nokv(&["shard", "create", "/s1"]).await;
    let dir = work.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir the mount point");
    let mount = fc.mount(&dir, &[]).await;
    let m = |rel: &str| mount.path(rel).to_string_lossy().into_owned();
    let w = |rel: &str| work.path().join(rel).to_string_lossy().into_owned();

    // tar -x of a source tree (this crate's sources and some binary
    // files), then diff -r against the original.
    let local = work.path().join("local");
    make_local_tree(&local);
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    must_run("cp", &["-r", &sources.to_string_lossy(), &w("local/src")]).await;
    std::fs::set_permissions(
        local.join("conf/train.yaml"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .expect("chmod a local file");
    must_run("tar", &["-C", &w("local"), "-cf", &w("tree.tar"), "."]).await;
    std::fs::create_dir(m("untar")).expect("mkdir through the mount");
    must_run("tar", &["-C", &m("untar"), "-xf", &w("tree.tar")]).await;
    must_run("diff", &["-r", &w("local"), &m("untar")]).await;
    let published = cluster.must(
        client.get("/untar/ckpt/step-200.bin", None).await,
        "read a file written through the mount",
    );
    assert!(
        published == bytes(1_100_000, 5),
        "the SDK reads the bytes tar wrote"
    );
    // A small JSON file written through the mount is published with its
    // fields (extracted at close), so the field index covers it.
    std::fs::write(
        m("untar/eval.json"),
        br#"{"auc": 0.93, "suite": "heldout"}"#,
    )
    .expect("write a JSON file through the mount");
    let (listing, _) = cluster.must(
        client
            .read_dir_bodies_page("/untar", None, 0, nokv_client::Consistency::Linearizable)
            .await,
        "list /untar with bodies",
    );
    let fields = listing
        .iter()
        .find(|(e, _)| e.name == "eval.json")
        .and_then(|(_, body)| body.as_ref())
        .and_then(|body| body.fields.clone())
        .expect("eval.json has stored fields");
    assert_eq!(
        fields.get("suite"),
        Some(&vec![nokv_client::FieldValue::Str("heldout".into())]),
        "{fields:?}"
    );
    assert!(fields.contains_key("auc"), "{fields:?}");

    // cp -a and rsync -a round trips keep bytes, modes and times.
    must_run("cp", &["-a", &w("local"), &m("cpa")]).await;
    must_run("cp", &["-a", &m("cpa"), &w("back-cp")]).await;
    must_run("diff", &["-r", &w("local"), &w("back-cp")]).await;
    must_run("rsync", &["-a", &format!("{}/", w("local")), &m("rs")]).await;
    must_run("rsync", &["-a", &format!("{}/", m("rs")), &w("back-rs")]).await;
    must_run("diff", &["-r", &w("local"), &w("back-rs")]).await;
    for copy in ["back-cp/conf/train.yaml", "back-rs/conf/train.yaml"] {
        let (a, b) = (
            std::fs::metadata(local.join("conf/train.yaml")).expect("stat the original"),
            std::fs::metadata(w(copy)).expect("stat the copy"),
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(b.permissions().mode() & 0o7777, 0o640, "{copy}: mode kept");
        assert_eq!(
            a.modified().expect("mtime"),
            b.modified().expect("mtime"),
            "{copy}: modification time kept"
        );
    }

    // git: init, add, commit, status, log.
    let repo = m("repo");
    std::fs::create_dir(&repo).expect("mkdir repo");
    let git = |args: &[&str]| {
        let mut all = vec![
            "-C",
            repo.as_str(),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@x",
        ];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run_git = async |args: &[&str]| {
        let args = git(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        must_run("git", &args).await
    };
    run_git(&["init", "-q"]).await;
    std::fs::write(format!("{repo}/README"), b"one\n").expect("write README");
    must_run(
        "cp",
        &["-r", &sources.to_string_lossy(), &format!("{repo}/src")],
    )
    .await;
    run_git(&["add", "."]).await;
    run_git(&["commit", "-qm", "one"]).await;
    std::fs::write(format!("{repo}/README"), b"one\ntwo\n").expect("edit README");
    assert_eq!(run_git(&["status", "--porcelain"]).await.trim(), "M README");
    run_git(&["commit", "-qam", "two"]).await;
    assert_eq!(run_git(&["log", "--oneline"]).await.lines().count(), 2);
    assert_eq!(run_git(&["status", "--porcelain"]).await.trim(), "");
    run_git(&["fsck", "--strict"]).await;

    // Python: write, rename over, read back; edit in place, append, fsync,
    // truncate; hard links; rename flags; xattr flags; the errors at a
    // graft point and across shards.
    let py = format!(
        r#"
import ctypes, errno, os
root = {root:?}
def err(f, *a):
    try:
        f(*a)
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"
d = os.path.join(root, "py")
os.mkdir(d)
p = os.path.join(d, "f")
with open(p + ".tmp", "wb") as f:
    f.write(b"x" * 100000)
os.rename(p + ".tmp", p)
assert open(p, "rb").read() == b"x" * 100000
with open(p, "r+b") as f:
    f.seek(10); f.write(b"HELLO"); f.flush(); os.fsync(f.fileno())
    f.seek(0); assert f.read(15) == b"xxxxxxxxxxHELLO"
with open(p, "ab") as f:
    f.write(b"END")
data = open(p, "rb").read()
assert len(data) == 100003 and data[10:15] == b"HELLO" and data.endswith(b"END"), len(data)
os.truncate(p, 12)
assert open(p, "rb").read() == b"xxxxxxxxxxHE"
os.link(p, p + ".link")
assert os.stat(p).st_nlink == 2
with open(p + ".link", "ab") as f:
    f.write(b"!")
assert open(p, "rb").read() == b"xxxxxxxxxxHE!", "one inode, two names"
os.unlink(p + ".link")
assert os.stat(p).st_nlink == 1
os.chmod(p, 0o600)
assert os.stat(p).st_mode & 0o7777 == 0o600
os.utime(p, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
assert os.stat(p).st_mtime_ns == 1_600_000_000_123_456_789
libc = ctypes.CDLL(None, use_errno=True)
def renameat2(a, b, flags):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) != 0:
        return errno.errorcode[ctypes.get_errno()]
    return "ok"
open(p + "2", "w").write("2")
assert renameat2(p, p + "2", 1) == "EEXIST"
assert renameat2(p, p + "2", 2) == "EINVAL"
assert renameat2(p + "2", p + "3", 1) == "ok"
os.setxattr(p, "user.a", b"1")
assert err(os.setxattr, p, "user.a", b"2", os.XATTR_CREATE) == "EEXIST"
assert err(os.setxattr, p, "user.b", b"2", os.XATTR_REPLACE) == "ENODATA"
os.setxattr(p, "user.a", b"3", os.XATTR_REPLACE)
assert os.getxattr(p, "user.a") == b"3"
os.removexattr(p, "user.a")
assert err(os.removexattr, p, "user.a") == "ENODATA"
os.mkdir(os.path.join(d, "sub"))
open(os.path.join(d, "sub", "x"), "w").write("x")
assert err(os.rmdir, os.path.join(d, "sub")) == "ENOTEMPTY"
assert err(os.mkdir, os.path.join(d, "sub")) == "EEXIST"
assert err(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == "EEXIST"
os.unlink(os.path.join(d, "sub", "x"))
os.rmdir(os.path.join(d, "sub"))
os.symlink("f", os.path.join(d, "l"))
assert os.readlink(os.path.join(d, "l")) == "f"
assert open(os.path.join(d, "l"), "rb").read() == b"xxxxxxxxxxHE!"
g = os.path.join(root, "s1")
assert err(os.rmdir, g) == "EBUSY", err(os.rmdir, g)
assert err(os.rename, g, g + "x") == "EBUSY"
open(os.path.join(g, "in-s1"), "w").write("s1")
assert err(os.rename, os.path.join(g, "in-s1"), os.path.join(d, "moved")) == "EXDEV"
assert err(os.link, os.path.join(g, "in-s1"), os.path.join(d, "linked")) == "EXDEV"
print("ok")
"#,
        root = dir.to_string_lossy()
    );
    assert_eq!(must_run("python3", &["-c", &py]).await.trim(), "ok");
    let attr = cluster.must(
        client
            .stat("/py/f", nokv_client::Consistency::Linearizable)
            .await,
        "stat what Python wrote",
    );
    assert_eq!((attr.size, attr.mode & 0o7777), (13, 0o600));
    assert_eq!(
        cluster.must(
            client.get("/s1/in-s1", None).await,
            "read in the grafted shard"
        ),
        &b"s1"[..]
    );

    // A file another client renames while it is open here, and whose old
    // name another file takes, still publishes onto itself (by inode).
    let mut open = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m("py/open.bin"))
        .expect("create through the mount");
    std::io::Write::write_all(&mut open, b"written while renamed").expect("write");
    cluster.must(
        client
            .rename(
                "/py/open.bin",
                "/py/moved.bin",
                nokv_client::RenameMode::Replace,
            )
            .await,
        "rename by another client",
    );
    cluster.must(
        client.create("/py/open.bin").await,
        "another file at the old name",
    );
    open.sync_all().expect("fsync publishes by inode");
    drop(open);
    assert_eq!(
        cluster.must(
            client.get("/py/moved.bin", None).await,
            "read the moved file"
        ),
        &b"written while renamed"[..]
    );
    assert!(
        cluster
            .must(
                client.get("/py/open.bin", None).await,
                "read the other file"
            )
            .is_empty(),
        "the file at the old name is untouched"
    );

    // Two workers: what one mount writes and closes, the other reads
    // byte for byte, and back.
    let dir2 = work.path().join("mnt2");
    std::fs::create_dir(&dir2).expect("mkdir the second mount point");
    let other = fc.mount(&dir2, &[]).await;
    for (round, (writer, reader)) in [(&mount, &other), (&other, &mount)].into_iter().enumerate() {
        let payload = bytes(3_000_000 + round, 70 + round as u32);
        std::fs::write(writer.path("shared.bin"), &payload).expect("write and close");
        cluster
            .wait_until(WAIT, "the other mount reads the closed file", async || {
                std::fs::read(reader.path("shared.bin")).is_ok_and(|b| b == payload)
            })
            .await;
    }

    assert!(other.stop("-TERM").await.success());
    assert!(mount.stop("-TERM").await.success());
}

/// A leader killed while a worker writes and closes files: every close
/// answers success or an error, and no file is ever visible half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_across_a_leader_failover_are_all_or_nothing() {
    let _load = light_test().await;
    let mut fc = FuseCluster::start("fuse6").await;
    let work = tempfile::tempdir().expect("a temporary directory");
    let dir = work.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir the mount point");
    fc.cluster
        .must(fc.client.mkdir("/ckpt", false).await, "mkdir /ckpt");
    let mount = fc.mount(&dir, &[]).await;
    const FILES: usize = 40;
    const SIZE: usize = 300_000;
    // Each file's bytes: its index repeated; one line per close.
    let py = format!(
        r#"
import os, sys
d = {dir:?}
for i in range({FILES}):
    p = os.path.join(d, "f%03d" % i)
    try:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, bytes([i]) * {SIZE})
        os.close(fd)
        print(i, "ok", flush=True)
    except OSError as e:
        print(i, e.errno, flush=True)
"#,
        dir = mount.path("ckpt").to_string_lossy()
    );
    let writer = tokio::process::Command::new("python3")
        .args(["-c", &py])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the writer");
    // Kill the leader once some files are in.
    let ids = fc.cluster.ids();
    fc.cluster
        .wait_until(WAIT, "the writer has closed a few files", async || {
            fc.client
                .read_dir_all("/ckpt", nokv_client::Consistency::Linearizable)
                .await
                .is_ok_and(|e| e.len() >= 5)
        })
        .await;
    let leader = fc.cluster.must_agreed_leader(&ids).await;
    fc.cluster.kill(leader);
    let out = tokio::time::timeout(Duration::from_secs(240), writer.wait_with_output())
        .await
        .expect("the writer finishes")
        .expect("wait for the writer");
    fc.cluster.restart(leader).await;
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        lines.lines().count(),
        FILES,
        "one answer per close:\n{lines}"
    );
    let (mut ok, mut failed) = (0, 0);
    for line in lines.lines() {
        let (i, answer) = line.split_once(' ').expect("index and answer");
        let i: usize = i.parse().expect("an index");
        let path = format!("/ckpt/f{i:03}");
        let seen = fc
            .client
            .get(&path, None)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let whole = vec![i as u8; SIZE];
        if answer == "ok" {
            ok += 1;
            assert!(seen == whole, "{path}: closed fine, so it reads whole");
        } else {
            failed += 1;
            assert!(
                seen.is_empty() || seen == whole,
                "{path}: close failed ({answer}); it must be absent, empty or whole, \
                 never {} bytes of something else",
                seen.len()
            );
        }
    }
    println!("{ok} closes succeeded and {failed} failed across the failover of node {leader}");
    assert!(
        ok >= FILES / 2,
        "most closes ride through the failover: {lines}"
    );
    assert!(mount.stop("-TERM").await.success());
}

/// Which pjdfstest failures are expected, and why: each is a feature NoKV
/// does not have by design. `None`: not expected.
fn pjdfstest_known_reason(name: &str) -> Option<&'static str> {
    let special = ["fifo", "char", "block", "socket"];
    let last = name.rsplit("::").next().unwrap_or(name);
    if special.contains(&last)
        || name.starts_with("mkfifo::")
        || name.starts_with("mknod::")
        || name == "open::fifo_nonblock_wronly"
        || name == "open::socket_error"
    {
        return Some("makes a fifo, socket or device node (mknod of anything but a file is EPERM)");
    }
    if name.starts_with("utimensat::") {
        return Some("sets and reads back an access time (NoKV keeps none; atime reads as mtime)");
    }
    None
}

/// The POSIX conformance suite (pjdfstest, the Rust rewrite) against a
/// read-write mount, as root with `--allow-other` (the suite switches to
/// other users). Counts per category are printed; docs/fuse.md records
/// them. Every failure must have a known reason, and at least 95 % of the
/// tests that apply (those not failing for a known reason) must pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pjdfstest_passes_on_a_mount() {
    let _load = light_test().await;
    let pjdfstest = ["pjdfstest".to_string(), format!("{}/.cargo/bin/pjdfstest", std::env::var("HOME").unwrap_or_default())]
        .into_iter()
        .find(|p| std::process::Command::new(p).arg("--help").output().is_ok_and(|o| o.status.success()))
        .unwrap_or_else(|| panic!("pjdfstest is not installed: run fuse-client/install-pjdfstest.sh (scripts/test.sh does)"));
    let fc = FuseCluster::start("fuse7").await;
    let work = tempfile::tempdir().expect("a temporary directory");
    let dir = work.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir the mount point");
    let mount = fc.mount(&dir, &["--allow-other"]).await;
    let config = work.path().join("pjdfstest.toml");
    std::fs::write(
        &config,
        "[features]\nposix_fallocate = {}\nutime_now = {}\nutimensat = {}\n\n\
         [settings]\nnaptime = 0.001\nallow_remount = false\n\n\
         [dummy_auth]\nentries = [[\"nobody\", \"nogroup\"], [\"tests\", \"tests\"]]\n",
    )
    .expect("write the pjdfstest configuration");
    let root = mount.path("pjd");
    std::fs::create_dir(&root).expect("mkdir through the mount");
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(&pjdfstest)
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(&root)
            .current_dir(&root)
            .output(),
    )
    .await
    .expect("pjdfstest finishes within 10 minutes")
    .expect("run pjdfstest");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);

    // category -> [ok, failed, known reason, skipped]
    let mut counts: std::collections::BTreeMap<String, [usize; 4]> = Default::default();
    let mut unexpected = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(verdict), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if !name.contains("::") {
            continue;
        }
        let slot = match verdict {
            "ok" => 0,
            "skipped" => 3,
            "FAILED" => match pjdfstest_known_reason(name) {
                Some(_) => 2,
                None => {
                    unexpected.push(name.to_string());
                    1
                }
            },
            _ => continue,
        };
        let category = name.split("::").next().unwrap_or(name).to_string();
        counts.entry(category).or_default()[slot] += 1;
    }
    let total = counts.values().fold([0usize; 4], |mut acc, c| {
        for (a, b) in acc.iter_mut().zip(c) {
            *a += b;
        }
        acc
    });
    println!(
        "pjdfstest on a mount ({:?}): category ok / failed / not applicable / skipped",
        started.elapsed()
    );
    for (category, [ok, failed, na, skipped]) in &counts {
        println!("  {category:<16} {ok:>4} {failed:>4} {na:>4} {skipped:>4}");
    }
    let [ok, failed, na, skipped] = total;
    println!("  {:<16} {ok:>4} {failed:>4} {na:>4} {skipped:>4}", "total");
    assert!(ok > 150, "pjdfstest ran its tests ({ok} passed):\n{text}");
    let applicable = ok + failed;
    assert!(
        ok * 100 >= applicable * 95,
        "{ok} of {applicable} applicable tests pass (< 95 %); failures without a known reason: {unexpected:?}"
    );
    assert!(
        unexpected.is_empty(),
        "failures without a known reason: {unexpected:?}\n{na} failed for known reasons, {skipped} skipped"
    );
    assert!(mount.stop("-TERM").await.success());
}

/// A block whose bytes changed in the object store is refused (EIO), not
/// served: its key names its sha256, and the mount checks every block it
/// fetches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_block_reads_as_an_error() {
    let _load = light_test().await;
    let fc = FuseCluster::start("fuse8").await;
    let (cluster, client) = (&fc.cluster, &fc.client);
    let work = tempfile::tempdir().expect("a temporary directory");
    let data = bytes(200_000, 8);
    cluster.must(
        client
            .put_bytes("/victim.bin", &data, &small_blocks())
            .await,
        "publish",
    );
    let (_, body) = cluster.must(
        client
            .read_body("/victim.bin", nokv_client::Consistency::Linearizable)
            .await,
        "read the body",
    );
    let body = body.expect("a published body");
    // Flip one byte of the second block, keeping its size.
    let url = fc.store.url();
    let root = url.strip_prefix("file://").expect("a file store");
    let object = Path::new(root).join(&body.blocks[1].key);
    let mut stored = std::fs::read(&object).expect("read the stored block");
    stored[100] ^= 0xff;
    std::fs::write(&object, &stored).expect("corrupt the stored block");

    let dir = work.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir the mount point");
    let mount = fc.mount(&dir, &["--read-only"]).await;
    let mut file = std::fs::File::open(mount.path("victim.bin")).expect("open");
    let mut first = vec![0; 1000];
    std::io::Read::read_exact(&mut file, &mut first).expect("the first block is intact");
    assert_eq!(first, data[..1000]);
    let mut rest = Vec::new();
    let e = std::io::Read::read_to_end(&mut file, &mut rest).expect_err("the corrupt block");
    assert_eq!(e.raw_os_error(), Some(5), "EIO: {e}");
    assert!(
        mount.log_text().contains("hash"),
        "the mount's log says why:\n{}",
        mount.log_text()
    );
    assert!(mount.stop("-TERM").await.success());
}

/// An object store that stops answering gives EIO in bounded time, for a
/// read and for a close, never a hang; once it is back, both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_an_error_not_a_hang() {
    let _load = light_test().await;
    let Some(mut fc) = FuseCluster::start_with("fuse9", StoreKind::S3).await else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let data = bytes(300_000, 9);
    fc.cluster.must(
        fc.client.put_bytes("/a.bin", &data, &small_blocks()).await,
        "publish",
    );
    let dir = work.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir the mount point");
    let mount = fc.mount(&dir, &[]).await;
    fc.store.s3().stop();

    let bound = Duration::from_secs(60);
    let read_path = mount.path("a.bin");
    let started = Instant::now();
    let read = tokio::time::timeout(
        bound,
        tokio::task::spawn_blocking(move || std::fs::read(read_path)),
    )
    .await
    .expect("a read with the store down answers in bounded time")
    .expect("the read task");
    let e = read.expect_err("nothing to read from");
    assert_eq!(e.raw_os_error(), Some(5), "EIO: {e}");
    println!(
        "read with the store down: EIO after {:?}",
        started.elapsed()
    );

    // close(2)'s answer, which Rust's File drop ignores: Python raises it.
    let py = format!(
        "import errno\nf = open({path:?}, 'wb')\nf.write(b'new bytes')\n\
         try:\n    f.close()\n    print('ok')\n\
         except OSError as e:\n    print(errno.errorcode[e.errno])\n",
        path = mount.path("new.bin").to_string_lossy()
    );
    let started = Instant::now();
    let closed = tokio::time::timeout(bound, must_run("python3", &["-c", &py]))
        .await
        .expect("a close with the store down answers in bounded time");
    assert_eq!(closed.trim(), "EIO", "the close cannot publish");
    println!(
        "close with the store down: EIO after {:?}",
        started.elapsed()
    );
    let gone = fc
        .client
        .stat("/new.bin", nokv_client::Consistency::Linearizable)
        .await
        .expect("stat the file the failed close made");
    assert_eq!(gone.size, 0, "the failed close published nothing");

    fc.store.s3().must_restart().await;
    fc.cluster
        .wait_until(WAIT, "reads work again", async || {
            std::fs::read(mount.path("a.bin")).is_ok_and(|b| b == data)
        })
        .await;
    assert_eq!(
        must_run("python3", &["-c", &py]).await.trim(),
        "ok",
        "a close publishes again"
    );
    let published = fc
        .cluster
        .must(fc.client.get("/new.bin", None).await, "read it");
    assert_eq!(published, &b"new bytes"[..]);
    assert!(mount.stop("-TERM").await.success());
}

/// With `--disk-cache`, blocks read once are kept on local disk across
/// mounts: a later mount reads them even after the object store lost them,
/// and a mount without the disk cache cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_cache_serves_blocks_across_mounts() {
    let _load = light_test().await;
    let fc = FuseCluster::start("fuse10").await;
    let (cluster, client) = (&fc.cluster, &fc.client);
    let work = tempfile::tempdir().expect("a temporary directory");
    let data = bytes(300_000, 10);
    cluster.must(
        client.put_bytes("/kept.bin", &data, &small_blocks()).await,
        "publish",
    );
    let cache = work.path().join("blocks");
    let cache_arg = cache.to_string_lossy().into_owned();
    let dir = work.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir the mount point");
    let args = [
        "--read-only",
        "--disk-cache",
        &cache_arg,
        "--disk-cache-mib",
        "64",
    ];

    let mount = fc.mount(&dir, &args).await;
    assert!(std::fs::read(mount.path("kept.bin")).expect("read") == data);
    assert!(mount.stop("-TERM").await.success());
    // The blocks land on disk beside the replies: wait for all five.
    cluster
        .wait_until(WAIT, "every block is on disk", async || {
            std::fs::read_dir(&cache).is_ok_and(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().len() == 64)
                    .count()
                    == 5
            })
        })
        .await;

    // The object store loses the file's blocks.
    let (_, body) = cluster.must(
        client
            .read_body("/kept.bin", nokv_client::Consistency::Linearizable)
            .await,
        "read the body",
    );
    let url = fc.store.url();
    let root = url.strip_prefix("file://").expect("a file store");
    for block in &body.expect("a body").blocks {
        std::fs::remove_file(Path::new(root).join(&block.key)).expect("delete a stored block");
    }

    let mount = fc.mount(&dir, &args).await;
    assert!(
        std::fs::read(mount.path("kept.bin")).expect("read from the disk cache") == data,
        "a new mount reads the blocks from its disk cache"
    );
    assert!(mount.stop("-TERM").await.success());
    let mount = fc.mount(&dir, &["--read-only"]).await;
    let e = std::fs::read(mount.path("kept.bin")).expect_err("no cache, no blocks");
    assert_eq!(e.raw_os_error(), Some(5), "EIO: {e}");
    assert!(mount.stop("-TERM").await.success());
}

/// Files of several blocks written front to back upload their blocks as
/// they fill (the close only uploads the last one); a writer that goes
/// back over bytes already uploaded falls back to publishing the whole
/// file. Either way the published bytes are exactly what was written, and
/// no staged upload is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_are_published_whole_however_they_are_written() {
    let _load = light_test().await;
    let fc = FuseCluster::start("fuse11").await;
    let (cluster, client) = (&fc.cluster, &fc.client);
    let work = tempfile::tempdir().expect("a temporary directory");
    let dir = work.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir the mount point");
    let mount = fc.mount(&dir, &[]).await;
    let mib = 1 << 20;
    let py = format!(
        r#"
import os
d = {dir:?}
def chunks(n, seed):
    return bytes((i * 7 + seed) % 251 for i in range(n))
one = chunks(1 << 20, 1)
# 1: front to back, 10 MiB and a bit, in 1 MiB writes.
with open(os.path.join(d, "seq.bin"), "wb") as f:
    for _ in range(10):
        f.write(one)
    f.write(b"tail" * 30)
# 2: front to back, then back over the first block.
with open(os.path.join(d, "back.bin"), "wb") as f:
    for _ in range(9):
        f.write(one)
    f.seek(100)
    f.write(b"X")
# 3: exactly two blocks, then truncated into the first.
with open(os.path.join(d, "cut.bin"), "wb") as f:
    for _ in range(8):
        f.write(one)
    f.truncate(5 << 20)
print("ok")
"#,
        dir = mount.path("").to_string_lossy()
    );
    assert_eq!(must_run("python3", &["-c", &py]).await.trim(), "ok");
    let one: Vec<u8> = (0..mib).map(|i| ((i * 7 + 1) % 251) as u8).collect();
    let mut seq = one.repeat(10);
    seq.extend(b"tail".repeat(30));
    let mut back = one.repeat(9);
    back[100] = b'X';
    let cut = one.repeat(5);
    for (path, want, blocks) in [
        ("/seq.bin", &seq, 3),
        ("/back.bin", &back, 3),
        ("/cut.bin", &cut, 2),
    ] {
        let got = cluster.must(client.get(path, None).await, "read back (sha256 checked)");
        assert!(
            got == *want,
            "{path}: {} bytes published, {} written",
            got.len(),
            want.len()
        );
        let (_, body) = cluster.must(
            client
                .read_body(path, nokv_client::Consistency::Linearizable)
                .await,
            "read the body",
        );
        assert_eq!(
            body.expect("a body").blocks.len(),
            blocks,
            "{path}: 4 MiB blocks"
        );
    }
    let staged = cluster.must(
        client
            .query(
                nokv_client::Query::ListUploads,
                nokv_client::Consistency::Linearizable,
            )
            .await,
        "list staged uploads",
    );
    assert!(
        matches!(&staged, nokv_client::QueryResult::Uploads(u) if u.is_empty()),
        "no staged upload is left behind: {staged:?}"
    );
    assert!(mount.stop("-TERM").await.success());
}

/// Appending to a file through the mount keeps its whole leading blocks
/// (they are not uploaded again; the engine checks they are the replaced
/// body's) and uploads only the last block and the new bytes, on a handle
/// kept open, after reopening, and on a fresh mount. Bytes stay exact, and
/// GC never deletes a kept block: fsck is clean after a GC pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_keep_the_blocks_they_do_not_change() {
    let _load = light_test().await;
    let fc = FuseCluster::start("fuse12").await;
    let (cluster, client) = (&fc.cluster, &fc.client);
    let work = tempfile::tempdir().expect("a temporary directory");
    let dir = work.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir the mount point");
    let log = "/train.log";
    let append = |n: usize| {
        format!(
            "import os\np = {:?}\nfor i in range({n}):\n    \
             with open(p, 'ab') as f:\n        f.write(b'step %d loss 0.%d\\n' % (i, i))\nprint('ok')\n",
            dir.join("train.log").to_string_lossy()
        )
    };
    let blocks_of = async |what: &str| {
        let (_, body) = cluster.must(
            client
                .read_body(log, nokv_client::Consistency::Linearizable)
                .await,
            what,
        );
        body.expect("a body").blocks
    };

    let mount = fc.mount(&dir, &[]).await;
    let first: Vec<u8> = (0..9 * (1 << 20) + 100).map(|i| (i % 253) as u8).collect();
    std::fs::write(mount.path("train.log"), &first).expect("write the log");
    let initial = blocks_of("the first body").await;
    assert_eq!(initial.len(), 3);
    assert_eq!(must_run("python3", &["-c", &append(5)]).await.trim(), "ok");
    let mut want = first.clone();
    for i in 0..5 {
        want.extend(format!("step {i} loss 0.{i}\n").as_bytes());
    }
    let after = blocks_of("after five appends").await;
    assert_eq!(
        after[..2],
        initial[..2],
        "the two whole blocks were kept, not uploaded again"
    );
    assert_ne!(after[2], initial[2], "the last block was uploaded again");
    assert!(cluster.must(client.get(log, None).await, "read") == want);
    assert!(mount.stop("-TERM").await.success());

    // A fresh mount (nothing kept locally) downloads once, then keeps too.
    let mount = fc.mount(&dir, &[]).await;
    assert_eq!(must_run("python3", &["-c", &append(2)]).await.trim(), "ok");
    for i in 0..2 {
        want.extend(format!("step {i} loss 0.{i}\n").as_bytes());
    }
    let later = blocks_of("after a remount").await;
    assert_eq!(later[..2], initial[..2], "still the first body's blocks");
    assert!(cluster.must(client.get(log, None).await, "read") == want);
    assert!(mount.stop("-TERM").await.success());

    // Every retired block goes, and no kept one does (GC deletes only what
    // the archive already covers: back up first).
    cluster.must(client.backup().await, "backup");
    cluster.must_nokv(&["gc", "--now"]).await;
    let report: serde_json::Value =
        serde_json::from_str(&cluster.must_nokv(&["--json", "fsck"]).await).expect("fsck --json");
    assert_eq!(
        report["problems"],
        serde_json::json!([]),
        "fsck after GC: {report}"
    );
    assert_eq!(report["live_blocks"], 3, "{report}");
    assert_eq!(
        report["objects_scanned"], 3,
        "every retired block was deleted, no kept one: {report}"
    );
    assert!(cluster.must(client.get(log, None).await, "read after GC") == want);
}
