//! Unit tests of graft points and epochs: creating and removing grafts,
//! the fences around them (`EBUSY`, `WRONG_SHARD`, `EXDEV`), listings,
//! events, snapshots, deduplication, and the epoch rules.

use super::*;
use crate::command::{RenameMode, SetAttr, XattrFlag};
use crate::graft::{placeholder_attr, GraftInfo};
use crate::query::{Query, QueryResult};
use crate::watch::EventKind;

/// This engine is shard 1; grafts point at shards 3 and 4.
const HERE: ShardId = ShardId(1);
const CHILD: ShardId = ShardId(3);
const OTHER: ShardId = ShardId(4);

struct Fixture {
    holt: Holt,
    index: u64,
    request: u128,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            holt: Holt::new(HoltConfig {
                shard: HERE,
                dedupe_capacity: 1000,
            }),
            index: 0,
            request: 0,
        }
    }

    /// `/a` (dir), `/a/g` graft to shard 3, `/a/f` (file), `/b` (dir).
    fn grafted() -> Fixture {
        let mut f = Fixture::new();
        f.ok(mkdir("/a"));
        f.ok(mkdir("/b"));
        f.ok(create("/a/f"));
        f.ok(graft("/a/g", CHILD));
        f
    }

    fn command(&mut self, op: Op) -> Command {
        self.request += 1;
        Command {
            request_id: RequestId(self.request),
            epoch: None,
            time_ns: (self.index + 1) * 1000,
            op,
        }
    }

    fn apply(&mut self, cmd: &Command) -> Outcome {
        self.index += 1;
        self.holt.apply(LogIndex(self.index), cmd)
    }

    fn run(&mut self, op: Op) -> Outcome {
        let cmd = self.command(op);
        self.apply(&cmd)
    }

    fn ok(&mut self, op: Op) -> Applied {
        let description = format!("{op:?}");
        self.run(op)
            .unwrap_or_else(|e| panic!("{description} failed: {e}"))
    }

    /// Runs `op`, expects the error, and checks that the namespace did
    /// not change. Returns the error for closer inspection.
    fn err_unchanged(&mut self, op: Op, code: &str) -> FsError {
        let before = self.holt.clone();
        let description = format!("{op:?}");
        let err = match self.run(op) {
            Ok(applied) => panic!("{description} unexpectedly succeeded: {applied:?}"),
            Err(e) => e,
        };
        assert_eq!(err.code(), code, "{description}: {err}");
        assert_eq!(
            before.ns, self.holt.ns,
            "{description} changed the namespace"
        );
        assert_eq!(before.next_local, self.holt.next_local);
        assert_eq!(before.snapshots, self.holt.snapshots);
        err
    }

    fn query(&self, q: Query) -> Result<QueryResult, FsError> {
        self.holt.query(&q)
    }

    fn stat(&self, p: &str) -> Result<QueryResult, FsError> {
        self.query(Query::GetAttr { inode: ipath(p) })
    }

    fn attr(&self, p: &str) -> Attr {
        match self.stat(p) {
            Ok(QueryResult::Attr(attr)) => attr,
            other => panic!("stat {p}: {other:?}"),
        }
    }

    fn grafts(&self) -> Vec<GraftInfo> {
        match self.query(Query::Grafts) {
            Ok(QueryResult::Grafts(list)) => list,
            other => panic!("grafts: {other:?}"),
        }
    }
}

fn path(p: &str) -> EntryRef {
    EntryRef::Path(p.into())
}

fn ipath(p: &str) -> InodeRef {
    InodeRef::Path(p.into())
}

fn graft(p: &str, shard: ShardId) -> Op {
    Op::CreateGraft { at: path(p), shard }
}

fn ungraft(p: &str, shard: ShardId) -> Op {
    Op::RemoveGraft { at: path(p), shard }
}

fn mkdir(p: &str) -> Op {
    Op::Mkdir {
        at: path(p),
        mode: 0o755,
        uid: 1,
        gid: 2,
        parents: false,
    }
}

fn mkdir_p(p: &str) -> Op {
    Op::Mkdir {
        at: path(p),
        mode: 0o755,
        uid: 1,
        gid: 2,
        parents: true,
    }
}

fn create(p: &str) -> Op {
    Op::Create {
        at: path(p),
        mode: 0o644,
        uid: 1,
        gid: 2,
    }
}

fn rename(from: &str, to: &str, mode: RenameMode) -> Op {
    Op::Rename {
        from: path(from),
        to: path(to),
        mode,
    }
}

/// `err` is `CrossShard` naming the child shard and the graft point.
fn assert_cross_shard(err: &FsError, shard: ShardId, graft_path: &str) {
    assert_eq!(
        err,
        &FsError::CrossShard {
            shard,
            path: graft_path.into(),
        }
    );
    assert_eq!((err.code(), err.errno()), ("WRONG_SHARD", 18));
}

// ---- create and remove -----------------------------------------------------

#[test]
fn create_graft_adds_a_foreign_directory_entry() {
    let mut f = Fixture::new();
    f.ok(mkdir("/a"));
    let before = f.attr("/a");
    let applied = f.ok(graft("/a/g", CHILD));
    assert_eq!(applied, Applied::Attr(placeholder_attr(CHILD)));
    assert_eq!(placeholder_attr(CHILD).inode, InodeId::root(CHILD));
    let after = f.attr("/a");
    assert_eq!(after.nlink, before.nlink + 1, "a graft counts as a subdir");
    assert_eq!(after.mtime_ns, f.index * 1000, "the parent is touched");
    assert_eq!(
        f.grafts(),
        vec![GraftInfo {
            shard: CHILD,
            path: "/a/g".into(),
            parent: before.inode,
            name: "g".into(),
        }]
    );
    assert_eq!(f.holt.stats().grafts, 1);
    assert_eq!(f.holt.stats().inodes, 2, "no local inode record");
    assert_eq!(f.holt.check_invariants(), Ok(()));
}

#[test]
fn create_graft_by_child_reference_records_the_canonical_path() {
    let mut f = Fixture::new();
    f.ok(mkdir_p("/x/y"));
    f.ok(Op::Symlink {
        at: path("/l"),
        target: "/x".into(),
        uid: 0,
        gid: 0,
    });
    // Through a symlink: the registry keeps the canonical path.
    f.ok(graft("/l/y/g", CHILD));
    let y = f.attr("/x/y").inode;
    f.ok(Op::CreateGraft {
        at: EntryRef::Child {
            parent: y,
            name: "h".into(),
        },
        shard: OTHER,
    });
    let paths: Vec<_> = f.grafts().into_iter().map(|g| (g.shard, g.path)).collect();
    assert_eq!(
        paths,
        vec![(CHILD, "/x/y/g".into()), (OTHER, "/x/y/h".into())]
    );
    assert_eq!(f.holt.check_invariants(), Ok(()));
}

#[test]
fn create_graft_errors_change_nothing() {
    let mut f = Fixture::grafted();
    // The name is taken: by a file, a directory, or the same graft.
    f.err_unchanged(graft("/a/f", OTHER), "EEXIST");
    f.err_unchanged(graft("/b", OTHER), "EEXIST");
    f.err_unchanged(graft("/a/g", CHILD), "EEXIST");
    f.err_unchanged(graft("/a/g", OTHER), "EEXIST");
    f.err_unchanged(graft("/", OTHER), "EEXIST");
    // The shard is grafted already, elsewhere.
    let err = f.err_unchanged(graft("/b/g2", CHILD), "EEXIST");
    assert!(err.to_string().contains("/a/g"), "{err}");
    // Into itself.
    f.err_unchanged(graft("/b/self", HERE), "EINVAL");
    // Missing or non-directory parent, and a parent in another shard.
    f.err_unchanged(graft("/nope/g", OTHER), "ENOENT");
    f.err_unchanged(graft("/a/f/g", OTHER), "ENOTDIR");
    let err = f.err_unchanged(graft("/a/g/deeper", OTHER), "WRONG_SHARD");
    assert_cross_shard(&err, CHILD, "/a/g");
    f.err_unchanged(
        Op::CreateGraft {
            at: EntryRef::Child {
                parent: InodeId::root(CHILD),
                name: "x".into(),
            },
            shard: OTHER,
        },
        "WRONG_SHARD",
    );
    // Bad names never reach the state.
    f.err_unchanged(graft("/b/..", OTHER), "EINVAL");
    f.err_unchanged(graft("relative", OTHER), "EINVAL");
    assert_eq!(f.grafts().len(), 1);
}

#[test]
fn remove_graft_needs_exactly_that_graft() {
    let mut f = Fixture::grafted();
    f.err_unchanged(ungraft("/a/g", OTHER), "EINVAL");
    f.err_unchanged(ungraft("/a/f", CHILD), "EINVAL");
    f.err_unchanged(ungraft("/b", CHILD), "EINVAL");
    f.err_unchanged(ungraft("/", CHILD), "EINVAL");
    f.err_unchanged(ungraft("/a/none", CHILD), "ENOENT");
    let nlink = f.attr("/a").nlink;
    assert_eq!(f.ok(ungraft("/a/g", CHILD)), Applied::Done);
    assert_eq!(f.attr("/a").nlink, nlink - 1);
    assert!(f.grafts().is_empty());
    assert_eq!(f.holt.check_invariants(), Ok(()));
    // The name and the shard are free again.
    f.ok(mkdir("/a/g"));
    f.ok(graft("/b/g", CHILD));
    assert_eq!(f.grafts()[0].path, "/b/g");
}

#[test]
fn a_retried_create_graft_applies_once() {
    let mut f = Fixture::new();
    f.ok(mkdir("/a"));
    let cmd = f.command(graft("/a/g", CHILD));
    let first = f.apply(&cmd);
    assert!(first.is_ok());
    let after_first = f.holt.ns.clone();
    let events = f.holt.newest_cursor();
    // The retry returns the first outcome and changes nothing, even
    // though applying it again would fail with EEXIST.
    assert_eq!(f.apply(&cmd), first);
    assert_eq!(f.holt.ns, after_first);
    assert_eq!(f.holt.newest_cursor(), events, "no second event");
    // A retried removal too.
    let cmd = f.command(ungraft("/a/g", CHILD));
    assert_eq!(f.apply(&cmd), Ok(Applied::Done));
    assert_eq!(f.apply(&cmd), Ok(Applied::Done));
    assert!(f.grafts().is_empty());
}

// ---- fences: EBUSY ----------------------------------------------------------

#[test]
fn graft_points_cannot_be_moved_removed_or_replaced() {
    let mut f = Fixture::grafted();
    for mode in [RenameMode::Replace, RenameMode::NoReplace] {
        let err = f.err_unchanged(rename("/a/g", "/b/g", mode), "EBUSY");
        assert_eq!(err.errno(), 16);
        f.err_unchanged(rename("/a/g", "/a/g", mode), "EBUSY");
    }
    f.err_unchanged(Op::Rmdir { at: path("/a/g") }, "EBUSY");
    f.err_unchanged(Op::Unlink { at: path("/a/g") }, "EBUSY");
    // As a replaced destination (an empty directory would otherwise do).
    f.ok(mkdir("/b/empty"));
    f.err_unchanged(rename("/b/empty", "/a/g", RenameMode::Replace), "EBUSY");
    f.err_unchanged(rename("/a/f", "/a/g", RenameMode::Replace), "EBUSY");
    // NoReplace onto it is the usual EEXIST.
    f.err_unchanged(rename("/b/empty", "/a/g", RenameMode::NoReplace), "EEXIST");
    // Attributes from the parent side.
    f.err_unchanged(
        Op::SetAttr {
            inode: ipath("/a/g"),
            set: SetAttr {
                mode: Some(0o700),
                ..SetAttr::default()
            },
        },
        "EBUSY",
    );
    f.err_unchanged(
        Op::SetXattr {
            inode: ipath("/a/g"),
            name: "user.k".into(),
            value: b"v".to_vec(),
            flag: XattrFlag::Upsert,
        },
        "EBUSY",
    );
    f.err_unchanged(
        Op::RemoveXattr {
            inode: ipath("/a/g"),
            name: "user.k".into(),
        },
        "EBUSY",
    );
    assert_eq!(f.holt.check_invariants(), Ok(()));
}

#[test]
fn ancestors_of_a_graft_point_cannot_move_or_go() {
    let mut f = Fixture::grafted();
    f.ok(mkdir_p("/deep/er/still"));
    f.ok(graft("/deep/er/still/g", OTHER));
    for mode in [RenameMode::Replace, RenameMode::NoReplace] {
        let err = f.err_unchanged(rename("/a", "/b/a", mode), "EBUSY");
        assert!(err.to_string().contains("/a/g"), "{err}");
        f.err_unchanged(rename("/deep", "/moved", mode), "EBUSY");
        f.err_unchanged(rename("/deep/er", "/b/er", mode), "EBUSY");
    }
    f.err_unchanged(Op::Rmdir { at: path("/a") }, "ENOTEMPTY");
    // Replacing an ancestor: it is not empty.
    f.ok(mkdir("/c"));
    f.err_unchanged(rename("/c", "/a", RenameMode::Replace), "ENOTEMPTY");
    // Siblings and files around a graft still move freely.
    f.ok(rename("/a/f", "/b/f", RenameMode::Replace));
    f.ok(rename("/c", "/b/c", RenameMode::Replace));
    // Once the graft is gone, the ancestor moves.
    f.ok(ungraft("/a/g", CHILD));
    f.ok(rename("/a", "/b/a", RenameMode::Replace));
    assert_eq!(f.holt.check_invariants(), Ok(()));
}

// ---- fences: WRONG_SHARD ---------------------------------------------------

#[test]
fn resolution_through_a_graft_names_the_child_shard() {
    let mut f = Fixture::grafted();
    let err = f.stat("/a/g/x").expect_err("stat through a graft");
    assert_cross_shard(&err, CHILD, "/a/g");
    // The graft point itself belongs to the child shard (its root).
    let err = f.stat("/a/g").expect_err("stat of a graft point");
    assert_cross_shard(&err, CHILD, "/a/g");
    let err = f.err_unchanged(create("/a/g/x"), "WRONG_SHARD");
    assert_cross_shard(&err, CHILD, "/a/g");
    f.err_unchanged(mkdir("/a/g/x"), "WRONG_SHARD");
    let err = f.err_unchanged(mkdir_p("/a/g/x/y"), "WRONG_SHARD");
    assert_cross_shard(&err, CHILD, "/a/g");
    f.err_unchanged(mkdir_p("/a/g"), "WRONG_SHARD");
    f.err_unchanged(rename("/a/f", "/a/g/f", RenameMode::Replace), "WRONG_SHARD");
    f.err_unchanged(Op::Unlink { at: path("/a/g/x") }, "WRONG_SHARD");
    // Through a symlink that points into the graft.
    f.ok(Op::Symlink {
        at: path("/l"),
        target: "/a/g/sub".into(),
        uid: 0,
        gid: 0,
    });
    let err = f.err_unchanged(create("/l/x"), "WRONG_SHARD");
    assert_cross_shard(&err, CHILD, "/a/g");
    // Queries.
    for q in [
        Query::ReadDir {
            dir: ipath("/a/g"),
            after: None,
            limit: 0,
        },
        Query::ReadLink {
            inode: ipath("/a/g/l"),
        },
        Query::ListXattr {
            inode: ipath("/a/g"),
        },
        Query::ReadBody {
            inode: ipath("/a/g/f"),
        },
        Query::Lookup {
            parent: f.attr("/a").inode,
            name: "g".into(),
        },
    ] {
        let err = f.query(q.clone()).expect_err("query through a graft");
        assert_cross_shard(&err, CHILD, "/a/g");
    }
}

#[test]
fn foreign_inode_ids_are_cross_shard() {
    let mut f = Fixture::grafted();
    let foreign_file = InodeId::compose(CHILD, 42);
    let unknown_shard = InodeId::compose(ShardId(9), 7);
    let err = f
        .query(Query::GetAttr {
            inode: InodeRef::Id(foreign_file),
        })
        .expect_err("foreign id");
    assert_cross_shard(&err, CHILD, "/a/g");
    let err = f
        .query(Query::GetAttr {
            inode: InodeRef::Id(unknown_shard),
        })
        .expect_err("foreign id");
    assert_cross_shard(&err, ShardId(9), "");
    // A hard link to a foreign inode, by id or through the graft.
    for inode in [InodeRef::Id(foreign_file), ipath("/a/g/x"), ipath("/a/g")] {
        f.err_unchanged(
            Op::Link {
                inode,
                at: path("/b/link"),
            },
            "WRONG_SHARD",
        );
    }
    f.err_unchanged(
        Op::SetAttr {
            inode: InodeRef::Id(InodeId::root(CHILD)),
            set: SetAttr::default(),
        },
        "WRONG_SHARD",
    );
    f.err_unchanged(
        Op::Create {
            at: EntryRef::Child {
                parent: InodeId::root(CHILD),
                name: "x".into(),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        "WRONG_SHARD",
    );
    f.err_unchanged(
        Op::Rmdir {
            at: EntryRef::Child {
                parent: unknown_shard,
                name: "x".into(),
            },
        },
        "WRONG_SHARD",
    );
}

// ---- listings, events, publish ---------------------------------------------

#[test]
fn read_dir_lists_a_graft_as_a_foreign_directory() {
    let f = Fixture::grafted();
    let entries = match f.query(Query::ReadDir {
        dir: ipath("/a"),
        after: None,
        limit: 0,
    }) {
        Ok(QueryResult::Dir { entries, .. }) => entries,
        other => panic!("{other:?}"),
    };
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["f", "g"]);
    assert_eq!(entries[1].attr, placeholder_attr(CHILD));
    assert_eq!(entries[1].attr.file_type, FileType::Directory);
    assert_eq!(entries[1].attr.inode.shard(), CHILD);
}

#[test]
fn graft_events_look_like_mkdir_and_remove() {
    let mut f = Fixture::new();
    f.ok(mkdir("/a"));
    let cursor = f.holt.newest_cursor();
    f.ok(graft("/a/g", CHILD));
    f.ok(ungraft("/a/g", CHILD));
    let (events, _) = f.holt.events(cursor, "/a", false, 0).expect("events");
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.path.as_deref(), e.inode, e.kind.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some("/a/g"), InodeId::root(CHILD), EventKind::Mkdir),
            (Some("/a/g"), InodeId::root(CHILD), EventKind::Remove),
        ]
    );
}

#[test]
fn a_body_cannot_be_published_onto_a_graft_point() {
    let mut f = Fixture::grafted();
    for (mode, code) in [
        (crate::body::PublishMode::CreateOnly, "EEXIST"),
        (crate::body::PublishMode::Upsert, "EISDIR"),
        (
            crate::body::PublishMode::Replace {
                expected: Generation(0),
            },
            "EISDIR",
        ),
    ] {
        f.err_unchanged(
            Op::BeginPublish {
                at: path("/a/g"),
                mode,
                lease_ns: 1_000_000_000,
                file_mode: 0o644,
                uid: 0,
                gid: 0,
            },
            code,
        );
    }
}

// ---- snapshots ---------------------------------------------------------------

#[test]
fn a_snapshot_cannot_span_a_graft() {
    let mut f = Fixture::grafted();
    for p in ["/", "/a"] {
        let err = f.err_unchanged(
            Op::CreateSnapshot {
                path: p.into(),
                lease_ns: 1_000_000_000,
            },
            "EXDEV",
        );
        assert_eq!(err.errno(), 18);
        let message = err.to_string();
        assert!(
            message.contains("shard-3") && message.contains("/a/g"),
            "{message}"
        );
    }
    // At or through the graft point: the child shard's to pin.
    for p in ["/a/g", "/a/g/x"] {
        let err = f.err_unchanged(
            Op::CreateSnapshot {
                path: p.into(),
                lease_ns: 1_000_000_000,
            },
            "WRONG_SHARD",
        );
        assert_cross_shard(&err, CHILD, "/a/g");
    }
    // A subtree beside the graft is fine, and its pin keeps working.
    match f.ok(Op::CreateSnapshot {
        path: "/b".into(),
        lease_ns: 1_000_000_000,
    }) {
        Applied::Snapshot(info) => assert_eq!(info.path, "/b"),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.holt.check_invariants(), Ok(()));
}

// ---- images ----------------------------------------------------------------

#[test]
fn grafts_survive_an_image_round_trip() {
    let mut f = Fixture::grafted();
    f.ok(Op::CreateSnapshot {
        path: "/b".into(),
        lease_ns: 1_000_000_000,
    });
    f.ok(mkdir("/c"));
    f.ok(graft("/c/g", OTHER));
    f.ok(ungraft("/a/g", CHILD));
    f.ok(graft("/b/g", CHILD));
    let image = f.holt.encode_image();
    let decoded = Holt::decode_image(&image).expect("decode");
    assert_eq!(decoded, f.holt);
    assert_eq!(decoded.encode_image(), image);
    // The pin kept the registry of its moment.
    let pin = decoded.snapshots.values().next().expect("a pin");
    assert_eq!(
        pin.ns.grafts.keys().copied().collect::<Vec<_>>(),
        vec![CHILD]
    );
    assert_eq!(pin.ns.grafts[&CHILD].path, "/a/g");
    // And the decoded engine keeps enforcing the fences.
    let mut f = Fixture {
        holt: decoded,
        index: f.index,
        request: f.request,
    };
    f.err_unchanged(rename("/c", "/d", RenameMode::Replace), "EBUSY");
    let err = f.stat("/b/g/x").expect_err("through the graft");
    assert_cross_shard(&err, CHILD, "/b/g");
}

#[test]
fn an_image_whose_registry_disagrees_is_corrupt() {
    let f = Fixture::grafted();
    let mut broken = f.holt.clone();
    broken.ns.grafts.remove(&CHILD);
    assert!(broken.check_invariants().is_err());
    let mut moved = f.holt.clone();
    if let Some(graft) = moved.ns.grafts.get_mut(&CHILD) {
        graft.path = "/elsewhere".into();
    }
    assert!(moved.check_invariants().is_err());
    let mut deep = f.holt.clone();
    let a = f.attr("/a").inode;
    deep.ns
        .dentries
        .insert((a, "x".into()), InodeId::compose(OTHER, 5));
    assert!(deep.check_invariants().is_err());
    for bad in [broken, moved, deep] {
        assert!(Holt::decode_image(&bad.encode_image()).is_err());
    }
}

// ---- epochs ------------------------------------------------------------------

#[test]
fn epochs_advance_deterministically_and_fence_commands() {
    let mut f = Fixture::new();
    assert_eq!(f.holt.epoch(), Epoch(1));
    f.holt.advance_epoch(LogIndex(7));
    assert_eq!(f.holt.epoch(), Epoch(2));
    assert_eq!(f.holt.last_applied(), LogIndex(7));
    assert_eq!(f.holt.stats().epoch, Epoch(2));
    // last_applied never goes back.
    f.holt.advance_epoch(LogIndex(3));
    assert_eq!(
        (f.holt.epoch(), f.holt.last_applied()),
        (Epoch(3), LogIndex(7))
    );
    f.index = 7;

    // Lower and higher are stale; equal applies; None skips the check.
    for (epoch, ok) in [
        (Some(Epoch(2)), false),
        (Some(Epoch(4)), false),
        (Some(Epoch(3)), true),
        (None, true),
    ] {
        let mut cmd = f.command(mkdir(&format!("/d{}", f.request)));
        cmd.epoch = epoch;
        let before = f.holt.ns.clone();
        match f.apply(&cmd) {
            Ok(_) => assert!(ok, "{epoch:?} should be refused"),
            Err(e) => {
                assert!(!ok, "{epoch:?} should apply: {e}");
                assert_eq!(e, FsError::StaleEpoch { current: Epoch(3) });
                assert_eq!(before, f.holt.ns);
            }
        }
    }

    // The epoch is in the image.
    let decoded = Holt::decode_image(&f.holt.encode_image()).expect("decode");
    assert_eq!(decoded.epoch(), Epoch(3));
    assert_eq!(decoded, f.holt);

    // Two replicas that advance at the same log positions agree.
    let mut a = Holt::new(HoltConfig::default());
    let mut b = Holt::new(HoltConfig::default());
    for holt in [&mut a, &mut b] {
        holt.advance_epoch(LogIndex(1));
        let mut cmd = Command {
            request_id: RequestId(1),
            epoch: Some(Epoch(2)),
            time_ns: 1,
            op: mkdir("/x"),
        };
        assert!(holt.apply(LogIndex(2), &cmd).is_ok());
        holt.advance_epoch(LogIndex(3));
        cmd.request_id = RequestId(2);
        cmd.op = mkdir("/y");
        assert!(holt.apply(LogIndex(4), &cmd).is_err());
    }
    assert_eq!(a.encode_image(), b.encode_image());
}
