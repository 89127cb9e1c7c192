//! The watch history: every mutation's typed events in commit order,
//! nothing for failed commands, gapless cursors, retention and expiry.

use super::*;
use crate::watch::{Event, EventKind};

fn kinds(events: &[Event]) -> Vec<(Option<&str>, &EventKind)> {
    events
        .iter()
        .map(|e| (e.path.as_deref(), &e.kind))
        .collect()
}

fn all(f: &Fixture, after: u64) -> Vec<Event> {
    f.holt
        .events(after, "/", true, 0)
        .expect("read the history")
        .0
}

#[test]
fn every_mutation_emits_its_typed_events_in_commit_order() {
    let mut f = Fixture::new();
    f.ok(Op::Mkdir {
        at: path("/a/b"),
        mode: 0o755,
        uid: 0,
        gid: 0,
        parents: true,
    });
    f.ok(create("/a/b/f"));
    f.ok(Op::Symlink {
        at: path("/a/s"),
        target: "/a/b/f".into(),
        uid: 0,
        gid: 0,
    });
    f.ok(Op::Link {
        inode: ipath("/a/b/f"),
        at: path("/a/hard"),
    });
    f.ok(Op::SetAttr {
        inode: ipath("/a/b/f"),
        set: SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    });
    f.ok(Op::SetXattr {
        inode: ipath("/a/b/f"),
        name: "user.k".into(),
        value: b"v".to_vec(),
        flag: crate::command::XattrFlag::Upsert,
    });
    f.ok(Op::RemoveXattr {
        inode: ipath("/a/b/f"),
        name: "user.k".into(),
    });
    f.ok(Op::Rename {
        from: path("/a/b/f"),
        to: path("/a/g"),
        mode: RenameMode::Replace,
    });
    let (_, attr) = f.publish("/a/g", PublishMode::Upsert, &[7]);
    let pin = match f.ok(Op::CreateSnapshot {
        path: "/a".into(),
        lease_ns: 1_000_000,
    }) {
        Applied::Snapshot(info) => info,
        other => panic!("{other:?}"),
    };
    f.ok(Op::RemoveSnapshot { id: pin.id });
    f.ok(unlink("/a/hard"));
    // A failed command leaves no event.
    let before = f.holt.newest_cursor();
    f.err(create("/a/g"));
    assert_eq!(f.holt.newest_cursor(), before);

    let events = all(&f, 0);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "gapless from 1"
    );
    assert!(
        events.windows(2).all(|w| w[0].index <= w[1].index),
        "commit order"
    );
    assert_eq!(
        kinds(&events),
        vec![
            (Some("/a"), &EventKind::Mkdir),
            (Some("/a/b"), &EventKind::Mkdir),
            (
                Some("/a/b/f"),
                &EventKind::Create {
                    file_type: FileType::File
                }
            ),
            (
                Some("/a/s"),
                &EventKind::Create {
                    file_type: FileType::Symlink
                }
            ),
            (Some("/a/hard"), &EventKind::Link),
            (Some("/a/b/f"), &EventKind::SetAttr),
            (
                Some("/a/b/f"),
                &EventKind::Xattr {
                    name: "user.k".into(),
                    removed: false
                }
            ),
            (
                Some("/a/b/f"),
                &EventKind::Xattr {
                    name: "user.k".into(),
                    removed: true
                }
            ),
            (
                Some("/a/g"),
                &EventKind::Rename {
                    from: Some("/a/b/f".into())
                }
            ),
            (
                Some("/a/g"),
                &EventKind::Publish {
                    generation: attr.generation,
                    size: 7,
                    sha256: SHA.into()
                }
            ),
            (Some("/a"), &EventKind::SnapshotCreated { id: pin.id }),
            (Some("/a"), &EventKind::SnapshotRemoved { id: pin.id }),
            (Some("/a/hard"), &EventKind::Remove),
        ]
    );
    // The rename's inode is the file's, the publish's too.
    assert_eq!(events[8].inode, attr.inode);
    assert_eq!(events[9].inode, attr.inode);
    // Resuming after any cursor gives exactly the rest.
    for cursor in 0..=events.len() as u64 {
        assert_eq!(all(&f, cursor), events[cursor as usize..].to_vec());
    }
    // A narrower watch: /a/b alone sees its own and its children's events,
    // and the rename out of it.
    let (narrow, _) = f.holt.events(0, "/a/b", false, 0).expect("read");
    assert_eq!(
        narrow.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3, 6, 7, 8, 9]
    );
}

#[test]
fn publishes_in_one_batch_and_by_directory_reference_have_paths() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    let d = match f.holt.query(&Query::GetAttr { inode: ipath("/d") }) {
        Ok(QueryResult::Attr(a)) => a.inode,
        other => panic!("{other:?}"),
    };
    f.ok(Op::Create {
        at: EntryRef::Child {
            parent: d,
            name: "x".into(),
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
    });
    let one = f.begin("/d/one", PublishMode::CreateOnly);
    let two = f.begin("/d/two", PublishMode::CreateOnly);
    f.ok(Op::CommitPublishBatch {
        commits: vec![(one.id, spec(&one, &[1])), (two.id, spec(&two, &[2]))],
    });
    let events = all(&f, 0);
    let paths: Vec<_> = events.iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        paths,
        vec![
            Some("/d".into()),
            Some("/d/x".into()),
            Some("/d/one".into()),
            Some("/d/two".into())
        ]
    );
    // By inode id, a file has no path; a directory does.
    let x = events[1].inode;
    f.ok(Op::SetAttr {
        inode: InodeRef::Id(x),
        set: SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    });
    f.ok(Op::SetAttr {
        inode: InodeRef::Id(d),
        set: SetAttr {
            mode: Some(0o700),
            ..SetAttr::default()
        },
    });
    let last = all(&f, 4);
    assert_eq!(last[0].path, None);
    assert_eq!(last[1].path.as_deref(), Some("/d"));
}

#[test]
fn retention_trims_by_count_and_age_and_old_cursors_expire() {
    let mut f = Fixture::new();
    f.ok(Op::SetWatchRetention {
        max_events: 3,
        max_age_ns: 1_000,
    });
    for i in 0..5 {
        f.ok(create(&format!("/f{i}")));
    }
    // Five events, three kept: cursors 2.. can resume, 0 and 1 cannot.
    assert_eq!((f.holt.oldest_cursor(), f.holt.newest_cursor()), (2, 5));
    assert_eq!(all(&f, 2).len(), 3);
    match f.holt.events(1, "/", true, 0) {
        Err(FsError::CursorExpired { oldest }) => assert_eq!(oldest, 2),
        other => panic!("expected CursorExpired, got {other:?}"),
    }
    assert_eq!(
        FsError::CursorExpired { oldest: 2 }.code(),
        "CURSOR_EXPIRED"
    );
    // A cursor ahead of this replica: nothing yet, resume where you are.
    assert_eq!(
        f.holt.events(99, "/", true, 0).expect("ahead"),
        (Vec::new(), 99)
    );
    // Age: an event older than max_age_ns at the next command goes.
    let later = f.time + 5_000;
    f.run_at(later, create("/late")).expect("create");
    assert_eq!(
        kinds(&all(&f, f.holt.oldest_cursor())),
        vec![(
            Some("/late"),
            &EventKind::Create {
                file_type: FileType::File
            }
        )]
    );
    // Bad settings and bad paths are refused.
    f.err_unchanged(
        Op::SetWatchRetention {
            max_events: 0,
            max_age_ns: 1,
        },
        "EINVAL",
    );
    // So are retentions past the bounds.
    f.err_unchanged(
        Op::SetWatchRetention {
            max_events: crate::MAX_WATCH_EVENTS + 1,
            max_age_ns: 1,
        },
        "EINVAL",
    );
    f.err_unchanged(
        Op::SetWatchRetention {
            max_events: 1,
            max_age_ns: crate::MAX_WATCH_AGE_NS + 1,
        },
        "EINVAL",
    );
    assert_eq!(
        f.holt.events(6, "relative", true, 0).map_err(|e| e.code()),
        Err("EINVAL")
    );
    // The history survives an image round trip.
    let restored = Holt::decode_image(&f.holt.encode_image()).expect("decode");
    assert_eq!(restored, f.holt);
}

#[test]
fn a_page_limit_returns_a_resumable_cursor() {
    let mut f = Fixture::new();
    for i in 0..10 {
        f.ok(create(&format!("/f{i}")));
    }
    let mut cursor = 0;
    let mut seen = Vec::new();
    loop {
        let (page, next) = f.holt.events(cursor, "/", true, 3).expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        seen.extend(page.iter().map(|e| e.seq));
        cursor = next;
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
}

#[test]
fn a_narrow_watch_reads_a_bounded_part_of_the_history_per_call() {
    let mut f = Fixture::new();
    f.ok(mkdir("/quiet"));
    let busy = crate::MAX_WATCH_SCAN * 2 + 10;
    for i in 0..busy {
        f.ok(create(&format!("/f{i}")));
    }
    f.ok(create("/quiet/x"));
    // A watch of /quiet matches one event at the very end: each call
    // examines at most MAX_WATCH_SCAN events and says where it stopped.
    let mut cursor = 1; // after the mkdir
    let mut calls = 0;
    let mut seen = Vec::new();
    while cursor < f.holt.newest_cursor() {
        let (events, next) = f.holt.events(cursor, "/quiet", false, 0).expect("read");
        assert!(
            next > cursor,
            "a call that examined events moves the cursor"
        );
        assert!(next - cursor <= crate::MAX_WATCH_SCAN as u64);
        seen.extend(events);
        cursor = next;
        calls += 1;
    }
    assert_eq!(calls, 3, "{busy} quiet events and one match in three reads");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path.as_deref(), Some("/quiet/x"));
}
