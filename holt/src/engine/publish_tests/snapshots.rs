//! Snapshot pins: reads at a pin see exactly the state at the pin, pins
//! hold their bodies' blocks back from GC, and bad requests change nothing.

use proptest::prelude::*;

use super::*;
use crate::snapshot::{SnapshotId, SnapshotInfo, MAX_SNAPSHOTS, MAX_SNAPSHOT_LEASE_NS};

const PIN_LEASE: u64 = 1_000_000_000;

impl Fixture {
    fn snapshot(&mut self, p: &str) -> SnapshotInfo {
        match self.ok(Op::CreateSnapshot {
            path: p.into(),
            lease_ns: PIN_LEASE,
        }) {
            Applied::Snapshot(info) => info,
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }
}

/// Everything observable under `root` through `query`: each path with its
/// attributes, and a file's body or a symlink's target.
fn walk(
    query: &dyn Fn(Query) -> Result<QueryResult, FsError>,
    root: &str,
) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    let root_attr = query(Query::GetAttr { inode: ipath(root) });
    seen.insert(root.to_string(), format!("{root_attr:?}"));
    let mut dirs = Vec::new();
    match root_attr {
        Ok(QueryResult::Attr(a)) if a.file_type == FileType::Directory => {
            dirs.push(root.to_string())
        }
        _ => {
            seen.insert(
                format!("{root} body"),
                format!("{:?}", query(Query::ReadBody { inode: ipath(root) })),
            );
        }
    }
    while let Some(dir) = dirs.pop() {
        let mut after = None;
        loop {
            let page = query(Query::ReadDir {
                dir: ipath(&dir),
                after: after.clone(),
                limit: 2,
            });
            let Ok(QueryResult::Dir { entries, next }) = page else {
                panic!("list {dir}: {page:?}");
            };
            for entry in entries {
                let child = format!("{}/{}", dir.trim_end_matches('/'), entry.name);
                let detail = match entry.attr.file_type {
                    FileType::Directory => {
                        dirs.push(child.clone());
                        String::new()
                    }
                    FileType::File => format!(
                        "{:?}",
                        query(Query::ReadBody {
                            inode: ipath(&child)
                        })
                    ),
                    FileType::Symlink => format!(
                        "{:?}",
                        query(Query::ReadLink {
                            inode: ipath(&child)
                        })
                    ),
                };
                seen.insert(child, format!("{:?} {detail}", entry.attr));
            }
            match next {
                Some(name) => after = Some(name),
                None => break,
            }
        }
    }
    seen
}

fn walk_now(holt: &Holt, root: &str) -> BTreeMap<String, String> {
    walk(&|q| holt.query(&q), root)
}

fn walk_at(holt: &Holt, id: SnapshotId, root: &str) -> BTreeMap<String, String> {
    walk(
        &|q| {
            holt.query(&Query::AtSnapshot {
                snapshot: id,
                query: Box::new(q),
            })
        },
        root,
    )
}

#[derive(Clone, Debug)]
enum Step {
    Mkdir(usize),
    Create(usize),
    Publish(usize, u64),
    Unlink(usize),
    Rmdir(usize),
    Rename(usize, usize),
    Chmod(usize, u32),
    Snapshot(usize),
    Remove(usize),
}

const PATHS: [&str; 7] = ["/a", "/b", "/a/x", "/a/y", "/b/x", "/a/x/z", "/b/z"];
/// Snapshot roots: the whole tree or one of the directories.
const ROOTS: [&str; 3] = ["/", "/a", "/b"];

fn step() -> impl Strategy<Value = Step> {
    let p = 0..PATHS.len();
    prop_oneof![
        3 => p.clone().prop_map(Step::Mkdir),
        3 => p.clone().prop_map(Step::Create),
        3 => (p.clone(), 1u64..100).prop_map(|(i, s)| Step::Publish(i, s)),
        2 => p.clone().prop_map(Step::Unlink),
        1 => p.clone().prop_map(Step::Rmdir),
        2 => (p.clone(), p.clone()).prop_map(|(a, b)| Step::Rename(a, b)),
        1 => (p.clone(), 0u32..0o777).prop_map(|(i, m)| Step::Chmod(i, m)),
        2 => (0..ROOTS.len()).prop_map(Step::Snapshot),
        1 => (0usize..4).prop_map(Step::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random interleavings of writes and snapshot creation: every read at
    /// every live pin equals the state at its creation, also after an
    /// image round trip, and a removed pin is gone.
    #[test]
    fn reads_at_a_pin_equal_the_state_at_the_pin(steps in prop::collection::vec(step(), 1..60)) {
        let mut f = Fixture::new();
        let mut pins: Vec<(SnapshotInfo, BTreeMap<String, String>)> = Vec::new();
        let mut removed = Vec::new();
        for s in steps {
            let _ = match s {
                Step::Mkdir(i) => f.run(mkdir(PATHS[i])),
                Step::Create(i) => f.run(create(PATHS[i])),
                Step::Publish(i, size) => match f.run(begin(PATHS[i], PublishMode::Upsert)) {
                    Ok(Applied::Staged(upload)) => f.run(commit(&upload, spec(&upload, &[size]))),
                    other => other,
                },
                Step::Unlink(i) => f.run(unlink(PATHS[i])),
                Step::Rmdir(i) => f.run(Op::Rmdir { at: path(PATHS[i]) }),
                Step::Rename(a, b) => f.run(Op::Rename {
                    from: path(PATHS[a]),
                    to: path(PATHS[b]),
                    mode: RenameMode::Replace,
                }),
                Step::Chmod(i, mode) => f.run(Op::SetAttr {
                    inode: ipath(PATHS[i]),
                    set: SetAttr { mode: Some(mode), ..SetAttr::default() },
                }),
                Step::Snapshot(r) => {
                    let outcome = f.run(Op::CreateSnapshot { path: ROOTS[r].into(), lease_ns: PIN_LEASE });
                    if let Ok(Applied::Snapshot(info)) = &outcome {
                        pins.push((info.clone(), walk_now(&f.holt, ROOTS[r])));
                    }
                    outcome
                }
                Step::Remove(k) => {
                    if k < pins.len() {
                        let (info, _) = pins.remove(k);
                        removed.push(info.id);
                        f.run(Op::RemoveSnapshot { id: info.id })
                    } else {
                        Ok(Applied::Done)
                    }
                }
            };
        }
        f.holt.check_invariants().map_err(TestCaseError::fail)?;
        let restored = Holt::decode_image(&f.holt.encode_image()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&restored, &f.holt);
        for holt in [&f.holt, &restored] {
            for (info, expected) in &pins {
                prop_assert_eq!(&walk_at(holt, info.id, &info.path), expected, "{:?}", info);
            }
            for id in &removed {
                let gone = holt.query(&Query::AtSnapshot { snapshot: *id, query: Box::new(Query::GetAttr { inode: ipath("/") }) });
                prop_assert_eq!(gone.map_err(|e| e.code()), Err("ENOENT"));
            }
            let listed: Vec<_> = holt.snapshots().into_iter().map(|i| i.id).collect();
            let live: Vec<_> = pins.iter().map(|(i, _)| i.id).collect();
            prop_assert_eq!(listed, live);
        }
    }
}

#[test]
fn a_pin_holds_its_blocks_until_released_then_grace_restarts() {
    let mut f = Fixture::new();
    let (first, _) = f.publish("/f", PublishMode::CreateOnly, &[10]);
    let pin = f.snapshot("/");
    // Replaced: generation 1's blocks are queued but held by the pin.
    let (second, attr) = f.publish("/f", replace(1), &[20]);
    assert_eq!(f.holt.gc_len(), 1);
    assert!(
        f.gc_targets().is_empty(),
        "a pinned body is never handed to GC"
    );
    // Deleted: generation 2 was never pinned, so it is collectable at once.
    f.ok(unlink("/f"));
    assert_eq!(
        f.gc_targets(),
        vec![GcTarget::Keys(vec![format!("{}b0", second.key_prefix())])]
    );
    // The pin still reads generation 1.
    let at_pin = f.holt.query(&Query::AtSnapshot {
        snapshot: pin.id,
        query: Box::new(Query::ReadBody { inode: ipath("/f") }),
    });
    match at_pin {
        Ok(QueryResult::Body {
            attr: old,
            body: Some(body),
        }) => {
            assert_eq!((old.generation, body.size), (Generation(1), 10));
            assert_ne!(old.generation, attr.generation);
        }
        other => panic!("read at the pin: {other:?}"),
    }
    // Released: generation 1 becomes collectable, its grace starting now.
    f.time += 5_000;
    let released_at = f.time + 10;
    f.ok(Op::RemoveSnapshot { id: pin.id });
    let tasks = f.holt.gc_tasks(usize::MAX);
    let held = tasks
        .iter()
        .find(|t| t.target == GcTarget::Keys(vec![format!("{}b0", first.key_prefix())]))
        .expect("generation 1 is collectable after the release");
    assert_eq!(held.enqueued_ns, released_at);
    assert_eq!(tasks.len(), 2);
}

#[test]
fn two_pins_hold_a_body_until_both_are_gone() {
    let mut f = Fixture::new();
    f.publish("/f", PublishMode::CreateOnly, &[10]);
    let a = f.snapshot("/");
    let b = f.snapshot("/");
    f.ok(unlink("/f"));
    assert!(f.gc_targets().is_empty());
    f.ok(Op::RemoveSnapshot { id: a.id });
    assert!(f.gc_targets().is_empty(), "still held by {}", b.id);
    // Expiry releases like removal.
    let now = b.lease_expires_ns;
    assert_eq!(f.holt.expired_snapshots(now), vec![b.id]);
    f.ok(Op::ExpireSnapshots { now_ns: now });
    assert_eq!(f.gc_targets().len(), 1);
    assert!(f.holt.snapshots().is_empty());
}

#[test]
fn bad_snapshot_requests_get_clear_errors_and_change_nothing() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.ok(create("/d/f"));
    f.ok(create("/g"));
    let pin = f.snapshot("/d/");
    assert_eq!(pin.path, "/d", "the path is normalised");
    let unknown = SnapshotId(pin.id.0 + 100);
    f.err_unchanged(
        Op::CreateSnapshot {
            path: "/nope".into(),
            lease_ns: PIN_LEASE,
        },
        "ENOENT",
    );
    f.err_unchanged(
        Op::CreateSnapshot {
            path: "relative".into(),
            lease_ns: PIN_LEASE,
        },
        "EINVAL",
    );
    f.err_unchanged(
        Op::CreateSnapshot {
            path: "/d".into(),
            lease_ns: 0,
        },
        "EINVAL",
    );
    f.err_unchanged(
        Op::CreateSnapshot {
            path: "/d".into(),
            lease_ns: MAX_SNAPSHOT_LEASE_NS + 1,
        },
        "EINVAL",
    );
    f.err_unchanged(
        Op::RenewSnapshot {
            id: unknown,
            lease_ns: PIN_LEASE,
        },
        "ENOENT",
    );
    f.err_unchanged(Op::RemoveSnapshot { id: unknown }, "ENOENT");
    let at = |snapshot: SnapshotId, query: Query| Query::AtSnapshot {
        snapshot,
        query: Box::new(query),
    };
    let code =
        |r: Result<QueryResult, FsError>| r.map(|_| ()).map_err(|e| (e.code(), e.to_string()));
    let (c, message) = code(
        f.holt
            .query(&at(unknown, Query::GetAttr { inode: ipath("/d") })),
    )
    .expect_err("unknown snapshot");
    assert_eq!(c, "ENOENT");
    assert!(message.contains(&unknown.to_string()), "{message}");
    // Outside the pinned subtree, by path and by directory id.
    let (c, message) = code(
        f.holt
            .query(&at(pin.id, Query::GetAttr { inode: ipath("/g") })),
    )
    .expect_err("outside the subtree");
    assert_eq!(c, "EINVAL");
    assert!(message.contains("outside"), "{message}");
    let root = InodeId::root(f.holt.shard());
    assert_eq!(
        code(f.holt.query(&at(
            pin.id,
            Query::ReadDir {
                dir: InodeRef::Id(root),
                after: None,
                limit: 0
            }
        )))
        .map_err(|e| e.0),
        Err("EINVAL")
    );
    assert_eq!(
        code(f.holt.query(&at(
            pin.id,
            Query::Lookup {
                parent: root,
                name: "g".into()
            }
        )))
        .map_err(|e| e.0),
        Err("EINVAL")
    );
    // Only namespace reads at a snapshot.
    for q in [
        Query::ListUploads,
        Query::ListSnapshots,
        at(pin.id, Query::ListSnapshots),
    ] {
        assert_eq!(
            code(f.holt.query(&at(pin.id, q))).map_err(|e| e.0),
            Err("EINVAL")
        );
    }
    // Inside works; an expired lease is refused by the clock-aware read and
    // by renew, before the worker has released it.
    assert!(f
        .holt
        .query(&at(
            pin.id,
            Query::GetAttr {
                inode: ipath("/d/f")
            }
        ))
        .is_ok());
    let after_lease = pin.lease_expires_ns;
    let (c, message) = code(f.holt.query_at(
        &at(
            pin.id,
            Query::GetAttr {
                inode: ipath("/d/f"),
            },
        ),
        after_lease,
    ))
    .expect_err("expired");
    assert_eq!(c, "ENOENT");
    assert!(message.contains("expired"), "{message}");
    let e = {
        let before = f.holt.clone();
        let e = f.run_at(
            after_lease + 1,
            Op::RenewSnapshot {
                id: pin.id,
                lease_ns: PIN_LEASE,
            },
        );
        assert_same_state(&before, &f.holt);
        e.expect_err("renewing an expired pin")
    };
    assert!(e.to_string().contains("expired"), "{e}");
    // A live one renews.
    let live = f.snapshot("/d");
    match f.ok(Op::RenewSnapshot {
        id: live.id,
        lease_ns: 5 * PIN_LEASE,
    }) {
        Applied::Snapshot(info) => assert!(info.lease_expires_ns > live.lease_expires_ns),
        other => panic!("renew: {other:?}"),
    }
}

/// An append keeps the first blocks of the body it replaces: only the
/// others are queued for GC, a kept block stays live through later
/// generations, and a pin of an older generation holds back the deletion of
/// a kept block that a later replace finally retires.
#[test]
fn an_append_keeps_its_predecessors_blocks_and_pins_hold_them() {
    let mut f = Fixture::new();
    let (first_upload, first) = f.publish("/log", PublishMode::CreateOnly, &[4, 2]);
    let first_body = f.read_body("/log").1.expect("a body");
    let (b0, b1) = (first_body.blocks[0].clone(), first_body.blocks[1].clone());
    let pin = f.snapshot("/");
    let by_inode = |g: Generation| PublishMode::Inode {
        inode: first.inode,
        expected: g,
    };

    // Append: keep b0, upload the rest again (b1 grew).
    let upload = f.begin("/log", by_inode(first.generation));
    let mut body = spec(&upload, &[3, 4]);
    body.blocks.insert(0, b0.clone());
    body.size = 4 + 3 + 4;
    let second = f.ok_attr(commit(&upload, body));
    let second_body = f.read_body("/log").1.expect("a body");
    assert_eq!(second_body.blocks[0], b0, "the kept block stays in place");
    assert_eq!(second.size, 11);
    let queued: Vec<GcTarget> = f
        .holt
        .all_gc_tasks()
        .into_iter()
        .map(|t| t.target)
        .collect();
    assert_eq!(
        queued,
        vec![GcTarget::Keys(vec![b1.key.clone()])],
        "only b1 retires"
    );
    f.holt
        .check_invariants()
        .expect("invariants after an append");

    // Kept blocks must be the replaced body's, in place, and only leading.
    let upload = f.begin("/log", by_inode(second.generation));
    let bad = |f: &mut Fixture, blocks: Vec<BlockRef>| {
        let mut body = spec(&upload, &[1]);
        body.size = blocks.iter().map(|b| b.size).sum::<u64>() + 1;
        let mut all = blocks;
        all.extend(body.blocks);
        body.blocks = all;
        f.err_unchanged(commit(&upload, body), "EINVAL");
    };
    bad(&mut f, vec![b1.clone()]); // retired already
    bad(&mut f, vec![second_body.blocks[1].clone()]); // not in its place
    bad(
        &mut f,
        vec![first_upload.key_prefix() + "nope"]
            .into_iter()
            .map(|key| BlockRef { key, size: 4 })
            .collect(),
    );
    let mut trailing = spec(&upload, &[1]);
    trailing.blocks.push(b0.clone());
    trailing.size += b0.size;
    f.err_unchanged(commit(&upload, trailing), "EINVAL");
    // A create has nothing to keep from.
    let fresh = f.begin("/new", PublishMode::CreateOnly);
    let mut body = spec(&fresh, &[1]);
    body.blocks.insert(0, b0.clone());
    body.size += b0.size;
    f.err_unchanged(commit(&fresh, body), "EINVAL");

    // A replace that keeps nothing finally retires b0; the pin (which shows
    // the first generation, holding b0) holds that deletion back.
    let third = f.ok_attr(commit(&upload, spec(&upload, &[5])));
    let b0_task = f
        .holt
        .all_gc_tasks()
        .into_iter()
        .find(|t| matches!(&t.target, GcTarget::Keys(k) if k.contains(&b0.key)))
        .expect("b0 is queued once nothing keeps it");
    assert_eq!(b0_task.body_of, Some((first.inode, second.generation)));
    assert!(
        !f.holt
            .gc_tasks(usize::MAX)
            .iter()
            .any(|t| t.seq == b0_task.seq),
        "held: the pinned first generation still names b0"
    );
    assert!(third.generation > second.generation);
    f.holt.check_invariants().expect("invariants");
    let next_seq = f.holt.next_gc_seq();
    f.ok(Op::RemoveSnapshot { id: pin.id });
    // Released with the pin, at the end of the queue: its grace period
    // starts again (the GC worker times it from when it saw the seq).
    let released = f
        .holt
        .gc_tasks(usize::MAX)
        .into_iter()
        .find(|t| t.target == b0_task.target)
        .expect("released with the pin");
    assert!(released.seq >= next_seq, "re-queued with a new seq");
    assert!(released.enqueued_index > b0_task.enqueued_index);
    assert!(f.holt.next_gc_seq() > released.seq);
    f.holt.check_invariants().expect("invariants");
}

#[test]
fn live_pins_are_bounded_per_shard() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    let pins: Vec<SnapshotInfo> = (0..MAX_SNAPSHOTS).map(|_| f.snapshot("/d")).collect();
    let refused = f.err_unchanged(
        Op::CreateSnapshot {
            path: "/d".into(),
            lease_ns: PIN_LEASE,
        },
        "ENOSPC",
    );
    assert!(refused.to_string().contains("live snapshots"), "{refused}");
    // Removing one makes room for one.
    f.ok(Op::RemoveSnapshot { id: pins[0].id });
    f.snapshot("/d");
    f.err_unchanged(
        Op::CreateSnapshot {
            path: "/d".into(),
            lease_ns: PIN_LEASE,
        },
        "ENOSPC",
    );
    // A pin whose lease ended does not count, even before it is released.
    let later = f.time + 2 * PIN_LEASE;
    match f.run_at(
        later,
        Op::CreateSnapshot {
            path: "/d".into(),
            lease_ns: PIN_LEASE,
        },
    ) {
        Ok(Applied::Snapshot(_)) => {}
        other => panic!("expected a pin once the others expired, got {other:?}"),
    }
}
