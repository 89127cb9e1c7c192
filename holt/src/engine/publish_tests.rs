//! Unit tests of object-backed bodies: begin/commit/abort/renew/expire,
//! every predicate and validation rule, the GC queue, and how namespace
//! operations (unlink, rename, truncate) treat published files.

use std::collections::BTreeMap;

use super::*;
use crate::body::{
    BlockRef, Body, BodySpec, GcTarget, PublishMode, StagedUpload, MAX_BLOCKS, MAX_BODY_ATTRS,
    MAX_BODY_ATTR_KEY, MAX_BODY_ATTR_VALUE, MAX_BODY_LABEL, MAX_PUBLISH_BATCH, MAX_STAGED_UPLOADS,
    MAX_UPLOAD_LEASE_NS,
};
use crate::command::{RenameMode, SetAttr};
use crate::query::{Query, QueryResult};

const LEASE: u64 = 1_000_000;
const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// An engine plus counters; unlike the namespace fixture, every command
/// takes an explicit time so leases can be tested at their boundary.
struct Fixture {
    holt: Holt,
    index: u64,
    request: u128,
    time: u64,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            holt: Holt::new(HoltConfig::default()),
            index: 0,
            request: 0,
            time: 1000,
        }
    }

    /// Applies `op` as a fresh request at the next index; time moves 10 ns.
    fn run(&mut self, op: Op) -> Outcome {
        self.time += 10;
        let time = self.time;
        self.run_at(time, op)
    }

    fn run_at(&mut self, time_ns: u64, op: Op) -> Outcome {
        self.request += 1;
        let cmd = Command {
            request_id: RequestId(self.request),
            epoch: None,
            time_ns,
            op,
        };
        self.apply(&cmd)
    }

    fn apply(&mut self, cmd: &Command) -> Outcome {
        self.index += 1;
        self.holt.apply(LogIndex(self.index), cmd)
    }

    fn ok(&mut self, op: Op) -> Applied {
        let description = format!("{op:?}");
        self.run(op)
            .unwrap_or_else(|e| panic!("{description} failed: {e}"))
    }

    fn ok_attr(&mut self, op: Op) -> Attr {
        match self.ok(op) {
            Applied::Attr(attr) => attr,
            other => panic!("expected attributes, got {other:?}"),
        }
    }

    fn err(&mut self, op: Op) -> FsError {
        let description = format!("{op:?}");
        match self.run(op) {
            Ok(applied) => panic!("{description} unexpectedly succeeded: {applied:?}"),
            Err(e) => e,
        }
    }

    /// Runs `op`, expects `code`, and checks that nothing changed but the
    /// bookkeeping (`last_applied` and the dedupe table).
    fn err_unchanged(&mut self, op: Op, code: &str) -> FsError {
        let before = self.holt.clone();
        let description = format!("{op:?}");
        let e = self.err(op);
        assert_eq!(e.code(), code, "{description}: {e}");
        assert_same_state(&before, &self.holt);
        e
    }

    fn begin(&mut self, p: &str, mode: PublishMode) -> StagedUpload {
        match self.ok(begin(p, mode)) {
            Applied::Staged(upload) => upload,
            other => panic!("expected a staged upload, got {other:?}"),
        }
    }

    /// Begins and commits a body of `sizes` at `p`.
    fn publish(&mut self, p: &str, mode: PublishMode, sizes: &[u64]) -> (StagedUpload, Attr) {
        let upload = self.begin(p, mode);
        let attr = self.ok_attr(commit(&upload, spec(&upload, sizes)));
        (upload, attr)
    }

    fn read_body(&self, p: &str) -> (Attr, Option<Body>) {
        match self.holt.query(&Query::ReadBody { inode: ipath(p) }) {
            Ok(QueryResult::Body { attr, body }) => (attr, body),
            other => panic!("read body {p}: {other:?}"),
        }
    }

    fn exists(&self, p: &str) -> bool {
        self.holt.query(&Query::GetAttr { inode: ipath(p) }).is_ok()
    }

    fn gc_targets(&self) -> Vec<GcTarget> {
        self.holt
            .gc_tasks(usize::MAX)
            .into_iter()
            .map(|task| task.target)
            .collect()
    }
}

/// Equal in everything but `last_applied` and the dedupe table.
fn assert_same_state(before: &Holt, after: &Holt) {
    let mut normalized = after.clone();
    normalized.last_applied = before.last_applied;
    normalized.dedupe = before.dedupe.clone();
    normalized.dedupe_order = before.dedupe_order.clone();
    assert_eq!(before, &normalized);
}

fn path(p: &str) -> EntryRef {
    EntryRef::Path(p.into())
}

fn ipath(p: &str) -> InodeRef {
    InodeRef::Path(p.into())
}

fn begin(p: &str, mode: PublishMode) -> Op {
    Op::BeginPublish {
        at: path(p),
        mode,
        lease_ns: LEASE,
        file_mode: 0o100_640,
        uid: 5,
        gid: 6,
    }
}

fn replace(expected: u64) -> PublishMode {
    PublishMode::Replace {
        expected: Generation(expected),
    }
}

/// A valid body of blocks `b0`, `b1`, … under the upload's prefix.
fn spec(upload: &StagedUpload, sizes: &[u64]) -> BodySpec {
    let prefix = upload.key_prefix();
    BodySpec {
        size: sizes.iter().sum(),
        blocks: sizes
            .iter()
            .enumerate()
            .map(|(i, size)| BlockRef {
                key: format!("{prefix}b{i}"),
                size: *size,
            })
            .collect(),
        sha256: SHA.into(),
        content_type: "application/octet-stream".into(),
        producer: "test".into(),
        attrs: BTreeMap::from([("k".to_string(), "v".to_string())]),
    }
}

fn keys(spec: &BodySpec) -> Vec<String> {
    spec.blocks.iter().map(|block| block.key.clone()).collect()
}

fn commit(upload: &StagedUpload, body: BodySpec) -> Op {
    Op::CommitPublish {
        upload: upload.id,
        body,
    }
}

fn unlink(p: &str) -> Op {
    Op::Unlink { at: path(p) }
}

fn create(p: &str) -> Op {
    Op::Create {
        at: path(p),
        mode: 0o644,
        uid: 1,
        gid: 1,
    }
}

fn mkdir(p: &str) -> Op {
    Op::Mkdir {
        at: path(p),
        mode: 0o755,
        uid: 1,
        gid: 1,
        parents: false,
    }
}

// ---- create-only ---------------------------------------------------------

#[test]
fn create_only_publish_round_trip() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    let next_local = f.holt.next_local;
    let upload = f.begin("/d/obj", PublishMode::CreateOnly);
    let begun_at = f.time;
    let inode = InodeId::compose(ShardId(0), next_local);
    assert_eq!(upload.id, UploadId(1));
    assert_eq!(upload.inode, inode, "a create reserves the next inode");
    assert_eq!(upload.generation, Generation(1));
    assert_eq!(upload.file_mode, 0o640, "type bits are masked off");
    assert_eq!((upload.uid, upload.gid), (5, 6));
    assert_eq!(upload.created_ns, begun_at);
    assert_eq!(upload.lease_expires_ns, begun_at + LEASE);
    assert_eq!(upload.key_prefix(), format!("blocks/0/{next_local}/1/"));
    // Staged, not visible: the name is still free.
    assert!(!f.exists("/d/obj"));
    assert_eq!(f.holt.next_local, next_local + 1);
    assert_eq!(f.holt.staged_uploads(), vec![upload.clone()]);
    assert_eq!(
        f.holt.query(&Query::ListUploads),
        Ok(QueryResult::Uploads(vec![upload.clone()]))
    );
    assert_eq!(f.holt.referenced_prefixes(), vec![upload.key_prefix()]);
    assert_eq!(f.holt.stats().staged, 1);

    let body = spec(&upload, &[4, 4, 2]);
    let attr = f.ok_attr(commit(&upload, body.clone()));
    let now = f.time;
    assert_eq!(attr.inode, inode);
    assert_eq!(attr.file_type, FileType::File);
    assert_eq!(
        (attr.mode, attr.uid, attr.gid, attr.nlink),
        (0o640, 5, 6, 1)
    );
    assert_eq!(attr.size, 10);
    assert_eq!(attr.generation, Generation(1));
    assert_eq!((attr.mtime_ns, attr.ctime_ns), (now, now));
    assert_eq!(attr.version, LogIndex(f.index));

    let (read_attr, read) = f.read_body("/d/obj");
    assert_eq!(read_attr, attr);
    let read = read.expect("a published body");
    assert_eq!(read.generation, Generation(1));
    assert_eq!(read.size, 10);
    assert_eq!(read.blocks, body.blocks);
    assert_eq!(read.sha256, SHA);
    assert_eq!(read.content_type, body.content_type);
    assert_eq!(read.producer, body.producer);
    assert_eq!(read.attrs, body.attrs);
    assert_eq!(read.published_ns, now);

    let dir = f.read_dir_attr("/d");
    assert_eq!(dir.mtime_ns, now, "a create changes the parent directory");
    assert!(f.holt.staged_uploads().is_empty());
    assert_eq!(f.holt.gc_len(), 0);
    assert_eq!(
        f.holt.live_blocks(),
        body.blocks
            .iter()
            .map(|block| (inode, Generation(1), block.clone()))
            .collect::<Vec<_>>()
    );
    assert!(f.holt.referenced_prefixes().is_empty());
    f.holt.check_invariants().expect("invariants");
}

impl Fixture {
    fn read_dir_attr(&self, p: &str) -> Attr {
        match self.holt.query(&Query::GetAttr { inode: ipath(p) }) {
            Ok(QueryResult::Attr(attr)) => attr,
            other => panic!("getattr {p}: {other:?}"),
        }
    }
}

#[test]
fn an_empty_body_needs_no_blocks() {
    let mut f = Fixture::new();
    let (_, attr) = f.publish("/empty", PublishMode::CreateOnly, &[]);
    assert_eq!((attr.size, attr.generation), (0, Generation(1)));
    let (_, body) = f.read_body("/empty");
    assert_eq!(body.map(|b| b.blocks.len()), Some(0));
    // Replacing a block-less body queues nothing.
    f.publish("/empty", replace(1), &[3]);
    assert_eq!(f.holt.gc_len(), 0);
}

#[test]
fn create_only_commit_onto_a_taken_name_changes_nothing() {
    let mut f = Fixture::new();
    let upload = f.begin("/x", PublishMode::CreateOnly);
    f.ok(create("/x"));
    f.err_unchanged(commit(&upload, spec(&upload, &[1])), "EEXIST");
    // The upload is still staged: the client may abort it.
    assert_eq!(f.holt.staged_uploads(), vec![upload.clone()]);
    f.ok(Op::AbortPublish { upload: upload.id });
    assert_eq!(f.gc_targets(), vec![GcTarget::Prefix(upload.key_prefix())]);
}

#[test]
fn begin_checks_the_predicate_and_changes_nothing_on_error() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.ok(create("/f"));
    f.ok(Op::Symlink {
        at: path("/s"),
        target: "/f".into(),
        uid: 0,
        gid: 0,
    });
    let cases = [
        (begin("/f", PublishMode::CreateOnly), "EEXIST"),
        (begin("/", PublishMode::CreateOnly), "EEXIST"),
        (begin("/", PublishMode::Upsert), "EISDIR"),
        (begin("/missing", replace(0)), "ENOENT"),
        (begin("/d", replace(0)), "EISDIR"),
        (begin("/s", replace(0)), "EINVAL"),
        (begin("/f", replace(3)), "STALE_GENERATION"),
        (begin("/d", PublishMode::Upsert), "EISDIR"),
        (begin("/s", PublishMode::Upsert), "EINVAL"),
        (begin("/nodir/x", PublishMode::CreateOnly), "ENOENT"),
        (begin("/f/x", PublishMode::CreateOnly), "ENOTDIR"),
    ];
    for (op, code) in cases {
        f.err_unchanged(op, code);
    }
    let e = f.err_unchanged(begin("/f", replace(3)), "STALE_GENERATION");
    assert_eq!(
        e,
        FsError::StaleGeneration {
            expected: Generation(3),
            current: Generation(0)
        }
    );
    assert_eq!(e.errno(), 116);
    // A file without a body has generation 0.
    let upload = f.begin("/f", replace(0));
    assert_eq!(upload.inode, f.read_dir_attr("/f").inode);
}

#[test]
fn begin_validates_the_lease_statically() {
    let mut f = Fixture::new();
    for lease_ns in [0, MAX_UPLOAD_LEASE_NS + 1] {
        let op = Op::BeginPublish {
            at: path("/x"),
            mode: PublishMode::CreateOnly,
            lease_ns,
            file_mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let cmd = Command {
            request_id: RequestId(1),
            epoch: None,
            time_ns: 0,
            op: op.clone(),
        };
        assert_eq!(
            Holt::validate_command(&cmd).map_err(|e| e.code()),
            Err("EINVAL")
        );
        let before = f.holt.clone();
        assert_eq!(f.err(op).code(), "EINVAL");
        // Validation errors are not even remembered.
        let mut expected = before;
        expected.last_applied = LogIndex(f.index);
        assert_eq!(expected, f.holt);
    }
    // The longest lease saturates instead of overflowing.
    let op = Op::BeginPublish {
        at: path("/x"),
        mode: PublishMode::CreateOnly,
        lease_ns: MAX_UPLOAD_LEASE_NS,
        file_mode: 0o644,
        uid: 0,
        gid: 0,
    };
    match f.run_at(u64::MAX - 5, op) {
        Ok(Applied::Staged(upload)) => assert_eq!(upload.lease_expires_ns, u64::MAX),
        other => panic!("{other:?}"),
    }
}

#[test]
fn begin_runs_out_of_inodes_and_upload_slots_cleanly() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    f.holt.next_local = InodeId::MAX_LOCAL + 1;
    f.err_unchanged(begin("/new", PublishMode::CreateOnly), "ENOSPC");
    f.err_unchanged(begin("/new", PublishMode::Upsert), "ENOSPC");
    // A replace needs no new inode.
    f.begin("/f", replace(0));

    let mut f = Fixture::new();
    let template = f.begin("/a", PublishMode::CreateOnly);
    for n in 2..=MAX_STAGED_UPLOADS as u64 {
        let mut upload = template.clone();
        upload.id = UploadId(n);
        f.holt.staged.insert(
            upload.id,
            Staged {
                upload,
                reserved_inode: false,
            },
        );
    }
    f.err_unchanged(begin("/b", PublishMode::CreateOnly), "ENOSPC");
}

// ---- replace and upsert ----------------------------------------------------

#[test]
fn replace_with_the_right_generation_and_the_wrong_one() {
    let mut f = Fixture::new();
    let (first, attr) = f.publish("/f", PublishMode::CreateOnly, &[5]);
    assert_eq!(attr.generation, Generation(1));
    let a = f.begin("/f", replace(1));
    let b = f.begin("/f", replace(1));
    assert_eq!((a.inode, b.inode), (attr.inode, attr.inode));
    assert_eq!((a.generation, b.generation), (Generation(2), Generation(3)));

    let new_attr = f.ok_attr(commit(&a, spec(&a, &[7, 1])));
    assert_eq!(new_attr.inode, attr.inode);
    assert_eq!((new_attr.size, new_attr.generation), (8, Generation(2)));
    assert_eq!(new_attr.version, LogIndex(f.index));
    assert_eq!(
        f.read_body("/f").1.map(|b| b.generation),
        Some(Generation(2))
    );

    // b was begun against generation 1, which is gone now.
    let e = f.err_unchanged(commit(&b, spec(&b, &[1])), "STALE_GENERATION");
    assert_eq!(
        e,
        FsError::StaleGeneration {
            expected: Generation(1),
            current: Generation(2)
        }
    );
    // The first body's blocks were queued by the replacing commit.
    let old_keys = keys(&spec(&first, &[5]));
    assert_eq!(f.gc_targets(), vec![GcTarget::Keys(old_keys)]);
    let task = &f.holt.gc_tasks(1)[0];
    assert_eq!(task.seq, 1);
}

#[test]
fn replace_rechecks_the_file_at_commit() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    let upload = f.begin("/f", replace(0));
    // Another empty file (also generation 0) under the same name is a
    // different file: stale.
    f.ok(unlink("/f"));
    f.err_unchanged(commit(&upload, spec(&upload, &[1])), "ENOENT");
    f.ok(create("/f"));
    f.err_unchanged(commit(&upload, spec(&upload, &[1])), "STALE_GENERATION");
    f.ok(unlink("/f"));
    f.ok(mkdir("/f"));
    f.err_unchanged(commit(&upload, spec(&upload, &[1])), "EISDIR");
}

#[test]
fn replace_follows_the_file_through_a_hard_link() {
    let mut f = Fixture::new();
    f.publish("/f", PublishMode::CreateOnly, &[1]);
    f.ok(Op::Link {
        inode: ipath("/f"),
        at: path("/g"),
    });
    let upload = f.begin("/g", replace(1));
    let attr = f.ok_attr(commit(&upload, spec(&upload, &[2])));
    assert_eq!(attr.nlink, 2);
    assert_eq!(f.read_body("/f").1, f.read_body("/g").1);
}

#[test]
fn upsert_creates_or_replaces() {
    let mut f = Fixture::new();
    let (created, attr) = f.publish("/u", PublishMode::Upsert, &[3]);
    assert_eq!(attr.inode, created.inode);
    assert_eq!(attr.generation, Generation(1));
    let (replaced, attr2) = f.publish("/u", PublishMode::Upsert, &[4]);
    assert_eq!(replaced.inode, attr.inode, "upsert of a file targets it");
    assert_eq!(
        (attr2.inode, attr2.generation, attr2.size),
        (attr.inode, Generation(2), 4)
    );
    assert_eq!(
        f.gc_targets(),
        vec![GcTarget::Keys(keys(&spec(&created, &[3])))]
    );
}

#[test]
fn upsert_publishes_onto_whatever_file_holds_the_name_at_commit() {
    let mut f = Fixture::new();
    let upload = f.begin("/u", PublishMode::Upsert);
    let other = f.ok_attr(create("/u"));
    assert_ne!(other.inode, upload.inode);
    let attr = f.ok_attr(commit(&upload, spec(&upload, &[2])));
    assert_eq!(attr.inode, other.inode);
    assert_eq!(attr.generation, upload.generation);
    // The body's keys carry the reserved inode's number; live_blocks
    // reports them under the file that owns them.
    assert_eq!(f.holt.live_blocks()[0].0, other.inode);
    f.holt.check_invariants().expect("invariants");

    // Name turned into a directory: refused.
    let upload = f.begin("/v", PublishMode::Upsert);
    f.ok(mkdir("/v"));
    f.err_unchanged(commit(&upload, spec(&upload, &[2])), "EISDIR");
}

#[test]
fn upsert_of_a_vanished_file_creates_a_fresh_inode() {
    let mut f = Fixture::new();
    let old = f.ok_attr(create("/u"));
    let upload = f.begin("/u", PublishMode::Upsert);
    assert_eq!(upload.inode, old.inode);
    f.ok(unlink("/u"));
    let next_local = f.holt.next_local;
    let attr = f.ok_attr(commit(&upload, spec(&upload, &[2])));
    // Inode numbers are never reused: the old file's number stays dead.
    assert_ne!(attr.inode, old.inode);
    assert_eq!(attr.inode.local(), next_local);
    assert_eq!(f.holt.next_local, next_local + 1);
    f.holt.check_invariants().expect("invariants");

    // ... and that needs a free inode number.
    f.ok(create("/w"));
    let upload = f.begin("/w", PublishMode::Upsert);
    f.ok(unlink("/w"));
    f.holt.next_local = InodeId::MAX_LOCAL + 1;
    f.err_unchanged(commit(&upload, spec(&upload, &[2])), "ENOSPC");
}

#[test]
fn commit_needs_the_parent_directory() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    let upload = f.begin("/d/x", PublishMode::CreateOnly);
    // Moving the directory is fine: the upload follows it.
    f.ok(Op::Rename {
        from: path("/d"),
        to: path("/e"),
        mode: RenameMode::Replace,
    });
    let moved = f.begin("/e/y", PublishMode::CreateOnly);
    f.ok_attr(commit(&upload, spec(&upload, &[1])));
    assert!(f.exists("/e/x"));
    f.ok(unlink("/e/x"));
    f.ok(Op::Rmdir { at: path("/e") });
    f.err_unchanged(commit(&moved, spec(&moved, &[1])), "ENOENT");
}

// ---- body validation --------------------------------------------------------

#[test]
fn invalid_bodies_change_nothing() {
    let mut f = Fixture::new();
    let upload = f.begin("/x", PublishMode::CreateOnly);
    let other = f.begin("/y", PublishMode::CreateOnly);
    let good = spec(&upload, &[2, 3]);
    let with = |change: &dyn Fn(&mut BodySpec)| {
        let mut body = good.clone();
        change(&mut body);
        body
    };
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<(&str, BodySpec)> = vec![
        (
            "outside prefix",
            with(&|b| b.blocks[0].key = "blocks/0/99/1/b".into()),
        ),
        ("other upload's prefix", spec(&other, &[2, 3])),
        (
            "the prefix itself",
            with(&|b| b.blocks[0].key = upload.key_prefix()),
        ),
        (
            "dot dot",
            with(&|b| b.blocks[1].key = format!("{}../b", upload.key_prefix())),
        ),
        ("control char", with(&|b| b.blocks[1].key.push('\n'))),
        ("empty key", with(&|b| b.blocks[1].key.clear())),
        ("huge key", with(&|b| b.blocks[1].key.push_str(&long(1100)))),
        (
            "duplicate key",
            with(&|b| b.blocks[1].key = b.blocks[0].key.clone()),
        ),
        ("size sum", with(&|b| b.size = 6)),
        (
            "empty block",
            with(&|b| {
                b.blocks[0].size = 0;
                b.size = 3;
            }),
        ),
        ("no blocks", with(&|b| b.blocks.clear())),
        (
            "overflow",
            with(&|b| {
                b.blocks[0].size = u64::MAX;
                b.size = 1;
            }),
        ),
        ("sha short", with(&|b| b.sha256.truncate(63))),
        ("sha upper", with(&|b| b.sha256 = SHA.to_uppercase())),
        ("sha not hex", with(&|b| b.sha256 = SHA.replace('a', "g"))),
        ("sha empty", with(&|b| b.sha256.clear())),
        (
            "content type",
            with(&|b| b.content_type = long(MAX_BODY_LABEL + 1)),
        ),
        ("producer", with(&|b| b.producer = long(MAX_BODY_LABEL + 1))),
        (
            "too many attrs",
            with(&|b| {
                b.attrs = (0..=MAX_BODY_ATTRS)
                    .map(|i| (format!("k{i}"), String::new()))
                    .collect();
            }),
        ),
        (
            "empty attr key",
            with(&|b| {
                b.attrs.insert(String::new(), "v".into());
            }),
        ),
        (
            "long attr key",
            with(&|b| {
                b.attrs.insert(long(MAX_BODY_ATTR_KEY + 1), "v".into());
            }),
        ),
        (
            "long attr value",
            with(&|b| {
                b.attrs.insert("k".into(), long(MAX_BODY_ATTR_VALUE + 1));
            }),
        ),
        ("too many blocks", {
            let sizes = vec![1; MAX_BLOCKS + 1];
            spec(&upload, &sizes)
        }),
    ];
    for (what, body) in cases {
        let e = f.err_unchanged(commit(&upload, body), "EINVAL");
        assert!(!e.to_string().is_empty(), "{what}");
    }
    // The limits themselves are fine.
    let limits = with(&|b| {
        b.content_type = long(MAX_BODY_LABEL);
        b.attrs = (0..MAX_BODY_ATTRS)
            .map(|i| {
                (
                    format!("{i:0>width$}", width = MAX_BODY_ATTR_KEY),
                    long(MAX_BODY_ATTR_VALUE),
                )
            })
            .collect();
    });
    f.ok_attr(commit(&upload, limits));
}

#[test]
fn body_validation_is_static_except_for_the_prefix() {
    let upload = StagedUpload {
        id: UploadId(1),
        parent: InodeId::root(ShardId(0)),
        name: "x".into(),
        inode: InodeId::compose(ShardId(0), 2),
        generation: Generation(1),
        mode: PublishMode::CreateOnly,
        file_mode: 0,
        uid: 0,
        gid: 0,
        created_ns: 0,
        lease_expires_ns: 0,
    };
    let command = |op: Op| Command {
        request_id: RequestId(1),
        epoch: None,
        time_ns: 0,
        op,
    };
    let mut bad = spec(&upload, &[1]);
    bad.sha256 = "nope".into();
    assert!(Holt::validate_command(&command(commit(&upload, bad.clone()))).is_err());
    assert!(Holt::validate_command(&command(commit(&upload, spec(&upload, &[1])))).is_ok());
    // The prefix needs the staged record, so validation cannot see it.
    let mut elsewhere = spec(&upload, &[1]);
    elsewhere.blocks[0].key = "blocks/elsewhere".into();
    assert!(Holt::validate_command(&command(commit(&upload, elsewhere))).is_ok());

    let batch = |commits| command(Op::CommitPublishBatch { commits });
    let code = |cmd: Command| Holt::validate_command(&cmd).map_err(|e| e.code());
    assert_eq!(code(batch(vec![])), Err("EINVAL"));
    let good = (upload.id, spec(&upload, &[1]));
    assert_eq!(code(batch(vec![good.clone(), good.clone()])), Err("EINVAL"));
    assert_eq!(
        code(batch(vec![good.clone(), (UploadId(2), bad)])),
        Err("EINVAL")
    );
    let too_many = (0..=MAX_PUBLISH_BATCH as u64)
        .map(|i| {
            (
                UploadId(i),
                BodySpec {
                    sha256: SHA.into(),
                    ..BodySpec::default()
                },
            )
        })
        .collect();
    assert_eq!(code(batch(too_many)), Err("EINVAL"));
    assert_eq!(code(batch(vec![good])), Ok(()));
    let renew = |lease_ns| {
        command(Op::RenewUpload {
            upload: UploadId(1),
            lease_ns,
        })
    };
    assert_eq!(code(renew(0)), Err("EINVAL"));
    assert_eq!(code(renew(MAX_UPLOAD_LEASE_NS)), Ok(()));
    assert_eq!(code(command(Op::GcDone { seqs: vec![] })), Ok(()));
}

// ---- unknown, aborted and expired uploads ---------------------------------

#[test]
fn commit_of_an_unknown_or_aborted_upload() {
    let mut f = Fixture::new();
    let unknown = Op::CommitPublish {
        upload: UploadId(42),
        body: BodySpec {
            sha256: SHA.into(),
            ..BodySpec::default()
        },
    };
    f.err_unchanged(unknown, "ENOENT");
    f.err_unchanged(
        Op::AbortPublish {
            upload: UploadId(42),
        },
        "ENOENT",
    );
    f.err_unchanged(
        Op::RenewUpload {
            upload: UploadId(42),
            lease_ns: LEASE,
        },
        "ENOENT",
    );

    let upload = f.begin("/x", PublishMode::CreateOnly);
    assert_eq!(f.ok(Op::AbortPublish { upload: upload.id }), Applied::Done);
    assert!(f.holt.staged_uploads().is_empty());
    let task = f.holt.gc_tasks(10).remove(0);
    assert_eq!(task.target, GcTarget::Prefix(upload.key_prefix()));
    assert_eq!(task.enqueued_ns, f.time);
    f.err_unchanged(commit(&upload, spec(&upload, &[1])), "ENOENT");
    f.err_unchanged(Op::AbortPublish { upload: upload.id }, "ENOENT");
    assert!(!f.exists("/x"));
    // A later begin gets a new upload id, inode and generation.
    let again = f.begin("/x", PublishMode::CreateOnly);
    assert_eq!(again.id, UploadId(2));
    assert_ne!(again.inode, upload.inode);
    assert_eq!(again.generation, Generation(2));
}

#[test]
fn an_expired_lease_cannot_commit_but_stays_until_expired() {
    let mut f = Fixture::new();
    let upload = f.begin("/x", PublishMode::CreateOnly);
    let end = upload.lease_expires_ns;
    let body = spec(&upload, &[1]);

    let before = f.holt.clone();
    let e = f
        .run_at(end + 1, commit(&upload, body.clone()))
        .expect_err("expired");
    assert_eq!(e.code(), "ENOENT");
    assert!(e.to_string().contains("lease expired"), "{e}");
    assert_same_state(&before, &f.holt);
    let renew = Op::RenewUpload {
        upload: upload.id,
        lease_ns: LEASE,
    };
    let e = f.run_at(end + 1, renew).expect_err("expired");
    assert!(e.to_string().contains("lease expired"), "{e}");
    assert_eq!(f.holt.staged_uploads(), vec![upload.clone()]);

    // At the very end of the lease the commit still succeeds.
    let attr = f.run_at(end, commit(&upload, body)).expect("on time");
    assert!(matches!(attr, Applied::Attr(_)));
}

#[test]
fn renew_extends_a_live_lease() {
    let mut f = Fixture::new();
    let upload = f.begin("/x", PublishMode::CreateOnly);
    let renewed = match f.run_at(
        upload.lease_expires_ns,
        Op::RenewUpload {
            upload: upload.id,
            lease_ns: 5 * LEASE,
        },
    ) {
        Ok(Applied::Staged(renewed)) => renewed,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        renewed.lease_expires_ns,
        upload.lease_expires_ns + 5 * LEASE
    );
    assert_eq!(f.holt.staged_uploads(), vec![renewed.clone()]);
    let late = upload.lease_expires_ns + LEASE;
    assert!(f.run_at(late, commit(&upload, spec(&upload, &[1]))).is_ok());
}

#[test]
fn expire_uploads_drops_exactly_the_ended_leases() {
    let mut f = Fixture::new();
    let a = f.begin("/a", PublishMode::CreateOnly);
    let b = f.begin("/b", PublishMode::CreateOnly);
    let c = f.begin("/c", PublishMode::CreateOnly);
    assert!(a.lease_expires_ns < b.lease_expires_ns);
    assert!(b.lease_expires_ns < c.lease_expires_ns);

    // Before any lease ends: nothing happens, and that is not an error.
    assert_eq!(f.holt.expired_uploads(a.lease_expires_ns - 1), vec![]);
    let before = f.holt.clone();
    let now_ns = a.lease_expires_ns - 1;
    assert_eq!(f.ok(Op::ExpireUploads { now_ns }), Applied::Done);
    assert_same_state(&before, &f.holt);

    // At b's boundary: a and b go, in id order; c stays.
    let now_ns = b.lease_expires_ns;
    assert_eq!(f.holt.expired_uploads(now_ns), vec![a.id, b.id]);
    f.ok(Op::ExpireUploads { now_ns });
    assert_eq!(f.holt.staged_uploads(), vec![c.clone()]);
    let tasks = f.holt.gc_tasks(10);
    assert_eq!(
        tasks
            .iter()
            .map(|t| (t.seq, t.target.clone()))
            .collect::<Vec<_>>(),
        vec![
            (1, GcTarget::Prefix(a.key_prefix())),
            (2, GcTarget::Prefix(b.key_prefix())),
        ]
    );
    f.err_unchanged(commit(&a, spec(&a, &[1])), "ENOENT");
    assert!(!f.exists("/a"));
    assert_eq!(f.holt.stats().gc_tasks, 2);
    assert_eq!(f.holt.stats().staged, 1);
}

#[test]
fn gc_done_is_idempotent() {
    let mut f = Fixture::new();
    for name in ["/a", "/b", "/c"] {
        let upload = f.begin(name, PublishMode::CreateOnly);
        f.ok(Op::AbortPublish { upload: upload.id });
    }
    assert_eq!(f.holt.gc_len(), 3);
    assert_eq!(
        f.holt.gc_tasks(2).iter().map(|t| t.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(f.holt.gc_tasks(0).is_empty());
    f.ok(Op::GcDone { seqs: vec![2, 99] });
    assert_eq!(
        f.holt
            .gc_tasks(10)
            .iter()
            .map(|t| t.seq)
            .collect::<Vec<_>>(),
        vec![1, 3]
    );
    let before = f.holt.clone();
    f.ok(Op::GcDone { seqs: vec![2, 99] });
    assert_same_state(&before, &f.holt);
    f.ok(Op::GcDone { seqs: vec![1, 3] });
    assert_eq!(f.holt.gc_len(), 0);
    // Seqs are never reused.
    let upload = f.begin("/d", PublishMode::CreateOnly);
    f.ok(Op::AbortPublish { upload: upload.id });
    assert_eq!(f.holt.gc_tasks(1)[0].seq, 4);
}

// ---- batches ---------------------------------------------------------------

#[test]
fn a_batch_publishes_all_or_nothing() {
    let mut f = Fixture::new();
    f.publish("/r", PublishMode::CreateOnly, &[1]);
    let a = f.begin("/a", PublishMode::CreateOnly);
    let b = f.begin("/b", PublishMode::Upsert);
    let r = f.begin("/r", replace(1));
    let good = vec![
        (a.id, spec(&a, &[1])),
        (b.id, spec(&b, &[2, 2])),
        (r.id, spec(&r, &[3])),
    ];

    // One bad member (here: a key under another upload's prefix) and no
    // member becomes visible.
    let mut bad_prefix = good.clone();
    bad_prefix[1].1.blocks[0].key = format!("{}x", a.key_prefix());
    f.err_unchanged(
        Op::CommitPublishBatch {
            commits: bad_prefix,
        },
        "EINVAL",
    );
    assert!(!f.exists("/a") && !f.exists("/b"));

    let attrs = match f.ok(Op::CommitPublishBatch { commits: good }) {
        Applied::Attrs(attrs) => attrs,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        attrs
            .iter()
            .map(|attr| (attr.size, attr.generation, attr.version))
            .collect::<Vec<_>>(),
        vec![
            (1, a.generation, LogIndex(f.index)),
            (4, b.generation, LogIndex(f.index)),
            (3, r.generation, LogIndex(f.index)),
        ]
    );
    assert_eq!(f.read_dir_attr("/a"), attrs[0]);
    assert_eq!(f.read_dir_attr("/b"), attrs[1]);
    assert_eq!(f.read_dir_attr("/r"), attrs[2]);
    assert!(f.holt.staged_uploads().is_empty());
    assert_eq!(f.holt.gc_len(), 1, "the replaced body of /r");
    f.holt.check_invariants().expect("invariants");
}

#[test]
fn a_batch_with_a_stale_member_publishes_nothing() {
    let mut f = Fixture::new();
    f.publish("/r", PublishMode::CreateOnly, &[1]);
    let a = f.begin("/a", PublishMode::CreateOnly);
    let stale = f.begin("/r", replace(1));
    f.publish("/r", replace(1), &[2]);
    let commits = vec![(a.id, spec(&a, &[1])), (stale.id, spec(&stale, &[1]))];
    f.err_unchanged(Op::CommitPublishBatch { commits }, "STALE_GENERATION");
    let taken = f.begin("/t", PublishMode::CreateOnly);
    f.ok(create("/t"));
    let commits = vec![(a.id, spec(&a, &[1])), (taken.id, spec(&taken, &[1]))];
    f.err_unchanged(Op::CommitPublishBatch { commits }, "EEXIST");
    assert!(!f.exists("/a"));
    let unknown = vec![(a.id, spec(&a, &[1])), (UploadId(77), spec(&a, &[1]))];
    f.err_unchanged(Op::CommitPublishBatch { commits: unknown }, "ENOENT");
}

#[test]
fn a_batch_may_not_hit_one_target_twice() {
    let mut f = Fixture::new();
    let a = f.begin("/x", PublishMode::Upsert);
    let b = f.begin("/x", PublishMode::Upsert);
    let commits = vec![(a.id, spec(&a, &[1])), (b.id, spec(&b, &[1]))];
    f.err_unchanged(Op::CommitPublishBatch { commits }, "EINVAL");

    // Two names of one file (hard links) are one target too.
    f.ok(create("/f"));
    f.ok(Op::Link {
        inode: ipath("/f"),
        at: path("/g"),
    });
    let via_f = f.begin("/f", replace(0));
    let via_g = f.begin("/g", replace(0));
    let commits = vec![
        (via_f.id, spec(&via_f, &[1])),
        (via_g.id, spec(&via_g, &[1])),
    ];
    f.err_unchanged(Op::CommitPublishBatch { commits }, "EINVAL");
    // Bad batches are rejected before proposing, too.
    f.err_unchanged(Op::CommitPublishBatch { commits: vec![] }, "EINVAL");
}

// ---- bodies leaving the namespace --------------------------------------------

#[test]
fn unlink_queues_the_blocks_of_the_last_link_only() {
    let mut f = Fixture::new();
    let (upload, _) = f.publish("/f", PublishMode::CreateOnly, &[1, 2]);
    let body_keys = keys(&spec(&upload, &[1, 2]));
    f.ok(Op::Link {
        inode: ipath("/f"),
        at: path("/g"),
    });
    f.ok(unlink("/f"));
    assert_eq!(f.holt.gc_len(), 0, "a hard link keeps the body live");
    assert_eq!(f.holt.live_blocks().len(), 2);
    f.ok(unlink("/g"));
    let task = f.holt.gc_tasks(1).remove(0);
    assert_eq!(task.target, GcTarget::Keys(body_keys));
    assert_eq!(task.enqueued_ns, f.time);
    assert!(f.holt.live_blocks().is_empty());
}

#[test]
fn rename_over_a_published_file_queues_its_blocks() {
    let mut f = Fixture::new();
    let (victim, _) = f.publish("/victim", PublishMode::CreateOnly, &[9]);
    f.publish("/winner", PublishMode::CreateOnly, &[1]);
    f.ok(Op::Rename {
        from: path("/winner"),
        to: path("/victim"),
        mode: RenameMode::Replace,
    });
    assert_eq!(
        f.gc_targets(),
        vec![GcTarget::Keys(keys(&spec(&victim, &[9])))]
    );
    let (_, body) = f.read_body("/victim");
    assert_eq!(body.map(|b| b.size), Some(1));
    f.holt.check_invariants().expect("invariants");
}

#[test]
fn a_listing_with_bodies_carries_each_files_summary() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.ok(mkdir("/d/sub"));
    f.ok(create("/d/empty"));
    let (_, attr) = f.publish("/d/f", PublishMode::CreateOnly, &[3, 4]);
    let list = |f: &Fixture, after: Option<&str>, limit| match f.holt.query(&Query::ReadDirBodies {
        dir: ipath("/d"),
        after: after.map(str::to_string),
        limit,
    }) {
        Ok(QueryResult::DirBodies { entries, next }) => (entries, next),
        other => panic!("read dir bodies: {other:?}"),
    };
    let (entries, next) = list(&f, None, 0);
    assert_eq!(next, None);
    type Seen = (String, Option<(u64, u64, u32)>);
    let summary: Vec<Seen> = entries
        .iter()
        .map(|(e, b)| {
            (
                e.name.clone(),
                b.as_ref().map(|b| (b.generation.0, b.size, b.blocks)),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("empty".to_string(), None),
            ("f".to_string(), Some((attr.generation.0, 7, 2))),
            ("sub".to_string(), None),
        ]
    );
    // The same entries, the same pages as a plain listing.
    let (page, next) = list(&f, None, 2);
    assert_eq!(page.len(), 2);
    assert_eq!(next.as_deref(), Some("f"));
    let (rest, next) = list(&f, Some("f"), 2);
    assert_eq!((rest.len(), next), (1, None));
    match f.holt.query(&Query::ReadDirBodies {
        dir: ipath("/d/f"),
        after: None,
        limit: 0,
    }) {
        Err(e) => assert_eq!(e.code(), "ENOTDIR"),
        other => panic!("a file is not listed: {other:?}"),
    }
}

#[test]
fn a_retired_body_is_found_by_generation_until_collected() {
    let mut f = Fixture::new();
    let (first, attr) = f.publish("/f", PublishMode::CreateOnly, &[3, 4]);
    let old = attr.generation;
    let retired = |f: &Fixture, g: Generation| {
        f.holt.query(&Query::RetiredBody {
            inode: ipath("/f"),
            generation: g,
        })
    };
    // Current bodies are not retired.
    assert_eq!(retired(&f, old).map_err(|e| e.code()), Err("ENOENT"));
    f.publish("/f", replace(old.0), &[5]);
    assert_eq!(
        retired(&f, old),
        Ok(QueryResult::Retired(keys(&spec(&first, &[3, 4]))))
    );
    // The path only routes: a removed (or renamed) file's generation is
    // still found.
    f.ok(unlink("/f"));
    assert_eq!(
        retired(&f, old),
        Ok(QueryResult::Retired(keys(&spec(&first, &[3, 4]))))
    );
    // Not at a snapshot.
    let pinned = Query::AtSnapshot {
        snapshot: crate::SnapshotId(1),
        query: Box::new(Query::RetiredBody {
            inode: ipath("/f"),
            generation: old,
        }),
    };
    assert!(f.holt.query(&pinned).is_err());
    // Once GC is done with it, it is gone.
    let seqs = f.holt.gc_tasks(usize::MAX).iter().map(|t| t.seq).collect();
    f.ok(Op::GcDone { seqs });
    assert_eq!(retired(&f, old).map_err(|e| e.code()), Err("ENOENT"));
}

#[test]
fn set_attr_cannot_resize_a_published_body() {
    let mut f = Fixture::new();
    f.publish("/f", PublishMode::CreateOnly, &[4]);
    let resize = |size| Op::SetAttr {
        inode: ipath("/f"),
        set: SetAttr {
            size: Some(size),
            ..SetAttr::default()
        },
    };
    let e = f.err_unchanged(resize(0), "EINVAL");
    assert!(e.to_string().contains("publish a new generation"), "{e}");
    f.err_unchanged(resize(5), "EINVAL");
    // The same size (O_TRUNC-free tools, chmod with size) is harmless.
    assert_eq!(f.ok_attr(resize(4)).size, 4);
    // A file without a body keeps the old behaviour.
    f.ok(create("/plain"));
    let attr = f.ok_attr(Op::SetAttr {
        inode: ipath("/plain"),
        set: SetAttr {
            size: Some(100),
            ..SetAttr::default()
        },
    });
    assert_eq!(attr.size, 100);
}

// ---- queries, dedupe, helpers ---------------------------------------------

#[test]
fn read_body_errors() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.ok(create("/f"));
    f.ok(Op::Symlink {
        at: path("/s"),
        target: "/f".into(),
        uid: 0,
        gid: 0,
    });
    let code = |p: &str| {
        f.holt
            .query(&Query::ReadBody { inode: ipath(p) })
            .map(drop)
            .map_err(|e| e.code())
    };
    assert_eq!(code("/d"), Err("EISDIR"));
    assert_eq!(code("/"), Err("EISDIR"));
    assert_eq!(code("/s"), Err("EINVAL"));
    assert_eq!(code("/nope"), Err("ENOENT"));
    let (attr, body) = f.read_body("/f");
    assert_eq!((attr.generation, body), (Generation(0), None));
}

#[test]
fn a_retried_commit_returns_the_first_outcome() {
    let mut f = Fixture::new();
    let upload = f.begin("/x", PublishMode::CreateOnly);
    let cmd = Command {
        request_id: RequestId(777),
        epoch: None,
        time_ns: f.time + 1,
        op: commit(&upload, spec(&upload, &[1])),
    };
    let first = f.apply(&cmd);
    let attr = match &first {
        Ok(Applied::Attr(attr)) => attr.clone(),
        other => panic!("{other:?}"),
    };
    let before = f.holt.clone();
    // The upload is gone, but the retry answers from the dedupe table.
    assert_eq!(f.apply(&cmd), Ok(Applied::Attr(attr)));
    let mut expected = before;
    expected.last_applied = LogIndex(f.index);
    assert_eq!(expected, f.holt);
    // A retried begin returns the same staged record, not a second upload.
    let begin_cmd = Command {
        request_id: RequestId(778),
        epoch: None,
        time_ns: f.time + 2,
        op: begin("/y", PublishMode::CreateOnly),
    };
    let staged = f.apply(&begin_cmd);
    assert_eq!(f.apply(&begin_cmd), staged);
    assert_eq!(f.holt.staged_uploads().len(), 1);
}

#[test]
fn arbitrary_publish_commands_never_break_invariants() {
    // A fixed scramble of every publish op, including nonsense ids.
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    let a = f.begin("/d/a", PublishMode::Upsert);
    let ops = vec![
        Op::GcDone {
            seqs: vec![0, u64::MAX],
        },
        Op::ExpireUploads { now_ns: 0 },
        Op::AbortPublish {
            upload: UploadId(0),
        },
        Op::RenewUpload {
            upload: UploadId(u64::MAX),
            lease_ns: 1,
        },
        Op::CommitPublishBatch {
            commits: vec![(a.id, spec(&a, &[1])), (UploadId(9), spec(&a, &[1]))],
        },
        Op::Rmdir { at: path("/d") },
        commit(&a, spec(&a, &[3])),
        Op::ExpireUploads { now_ns: u64::MAX },
        Op::GcDone { seqs: vec![1] },
    ];
    for op in ops {
        let _ = f.run(op);
        f.holt.check_invariants().expect("invariants");
        let image = f.holt.encode_image();
        assert_eq!(Holt::decode_image(&image).expect("decode"), f.holt);
    }
}

// Snapshot pins share this fixture.
mod snapshots;

// The watch history shares this fixture too.
mod events;

// So does the field index.
mod index;

#[test]
fn a_by_inode_publish_follows_the_file_wherever_it_is_linked() {
    let mut f = Fixture::new();
    let (_, first) = f.publish("/a", PublishMode::CreateOnly, &[5]);
    let file = first.inode;
    let by_inode = |g: Generation| PublishMode::Inode {
        inode: file,
        expected: g,
    };

    // Begun under its name; renamed, and another file takes the old name;
    // the commit lands on the file, at its new name.
    let upload = f.begin("/a", by_inode(first.generation));
    assert_eq!(upload.inode, file);
    f.ok(Op::Rename {
        from: path("/a"),
        to: path("/b"),
        mode: RenameMode::Replace,
    });
    f.ok(create("/a"));
    let second = f.ok_attr(commit(&upload, spec(&upload, &[7])));
    assert_eq!(second.inode, file);
    assert_eq!(f.read_body("/b").0.size, 7);
    assert!(
        f.read_body("/a").1.is_none(),
        "the file at the old name is untouched"
    );
    f.holt.check_invariants().expect("invariants");

    // Begun with a stale hint (the old name, now another file's): no name
    // is recorded, and it still publishes onto the file.
    let upload = f.begin("/a", by_inode(second.generation));
    assert_eq!((upload.parent, upload.name.as_str()), (file, ""));
    f.holt
        .check_invariants()
        .expect("a nameless by-inode upload is valid");
    let third = f.ok_attr(commit(&upload, spec(&upload, &[9])));
    assert_eq!((third.inode, f.read_body("/b").0.size), (file, 9));

    // A stale generation is refused at begin, and at commit when another
    // publish came in between.
    f.err_unchanged(begin("/b", by_inode(second.generation)), "STALE_GENERATION");
    let upload = f.begin("/b", by_inode(third.generation));
    f.publish("/b", PublishMode::Upsert, &[1]);
    assert_eq!(
        f.err(commit(&upload, spec(&upload, &[2]))).code(),
        "STALE_GENERATION"
    );

    // A file whose last name went: nothing to publish onto.
    let current = f.read_body("/b").0.generation;
    let upload = f.begin("/b", by_inode(current));
    f.ok(unlink("/b"));
    assert_eq!(f.err(commit(&upload, spec(&upload, &[3]))).code(), "ENOENT");
    f.err_unchanged(begin("/a", by_inode(current)), "ENOENT");
    // Not a file: a directory's inode is refused.
    f.ok(Op::Mkdir {
        at: path("/d"),
        mode: 0o755,
        uid: 0,
        gid: 0,
        parents: false,
    });
    let dir = match f.holt.query(&Query::GetAttr { inode: ipath("/d") }) {
        Ok(QueryResult::Attr(attr)) => attr.inode,
        other => panic!("stat /d: {other:?}"),
    };
    f.err_unchanged(
        begin(
            "/d",
            PublishMode::Inode {
                inode: dir,
                expected: Generation(0),
            },
        ),
        "EISDIR",
    );
    f.holt.check_invariants().expect("invariants");
}

/// Regression (found by the `apply` fuzz target, docs/security.md): an
/// upsert begun before another upload of the same file may not keep the
/// blocks that the other one published after it began. It was accepted,
/// and the body (generation 2) then held a key of generation 3: the
/// shard's own snapshot image no longer decoded.
#[test]
fn an_append_to_a_body_newer_than_the_upload_is_refused() {
    let mut f = Fixture::new();
    let first = f.begin("/f", PublishMode::Upsert);
    f.ok_attr(commit(&first, spec(&first, &[4])));
    let late = f.begin("/f", PublishMode::Upsert);
    let newer = f.begin("/f", replace(first.generation.0));
    f.ok_attr(commit(&newer, spec(&newer, &[3])));
    let published = f.read_body("/f").1.expect("a body");
    let mut body = spec(&late, &[2]);
    body.blocks.insert(0, published.blocks[0].clone());
    body.size += published.blocks[0].size;
    let refused = f.err_unchanged(commit(&late, body), "EINVAL");
    assert!(
        refused.to_string().contains("after the upload"),
        "{refused}"
    );
    // The state still round-trips through its image.
    let image = f.holt.encode_image();
    assert_eq!(Holt::decode_image(&image).expect("decode"), f.holt);
}

/// A record holds its body's size and generation once (in its attributes),
/// yet encodes the body whole, as a `Body` with both: so a record whose
/// encoded body disagrees with its attributes must not decode (it would
/// otherwise come back with the attributes' numbers, silently).
#[test]
fn a_record_whose_encoded_body_disagrees_with_its_attributes_does_not_decode() {
    let mut f = Fixture::new();
    let (_, attr) = f.publish("/f", PublishMode::CreateOnly, &[4, 3]);
    let body = f.read_body("/f").1.expect("a body");
    let record = f.holt.record(attr.inode).expect("a record").clone();
    let encode = |body: &Body| {
        bincode::serialize(&super::RecordImage {
            attr: attr.clone(),
            symlink_target: None,
            xattrs: BTreeMap::new(),
            parent: None,
            body: Some(body.clone()),
        })
        .expect("encode")
    };
    let bytes = bincode::serialize(&record).expect("encode");
    assert_eq!(bytes, encode(&body), "a record encodes its body whole");
    let decoded: InodeRecord = bincode::deserialize(&bytes).expect("decode");
    assert_eq!(decoded.body().map(|b| b.to_body()), Some(body.clone()));
    let mut larger = body.clone();
    larger.size += 1;
    let mut later = body.clone();
    later.generation = Generation(body.generation.0 + 1);
    for other in [larger, later] {
        let refused = bincode::deserialize::<InodeRecord>(&encode(&other))
            .expect_err("a body that disagrees with its record");
        assert!(refused.to_string().contains("disagree"), "{refused}");
    }
}
