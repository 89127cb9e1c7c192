//! Unit tests of the engine: every operation, every listed error, symlink
//! resolution, deduplication and epochs.

use super::*;
use crate::command::{RenameMode, SetAttr, XattrFlag};
use crate::query::{Query, QueryResult, MAX_READDIR_PAGE};

/// An engine plus counters for log indexes and request ids.
struct Fixture {
    holt: Holt,
    index: u64,
    request: u128,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_config(HoltConfig::default())
    }

    fn with_config(config: HoltConfig) -> Fixture {
        Fixture {
            holt: Holt::new(config),
            index: 0,
            request: 0,
        }
    }

    /// Applies `op` as a fresh request at the next index, time = index * 1000.
    fn run(&mut self, op: Op) -> Outcome {
        self.request += 1;
        let cmd = Command {
            request_id: RequestId(self.request),
            epoch: None,
            time_ns: (self.index + 1) * 1000,
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
        match self.run(op) {
            Ok(applied) => applied,
            Err(e) => panic!("{description} failed: {e}"),
        }
    }

    fn ok_attr(&mut self, op: Op) -> Attr {
        match self.ok(op) {
            Applied::Attr(attr) => attr,
            other => panic!("expected attributes, got {other:?}"),
        }
    }

    fn err(&mut self, op: Op) -> &'static str {
        let description = format!("{op:?}");
        match self.run(op) {
            Ok(applied) => panic!("{description} unexpectedly succeeded: {applied:?}"),
            Err(e) => e.code(),
        }
    }

    /// Runs `op`, expects `code`, and checks that nothing but the
    /// bookkeeping (last_applied, dedupe table) changed.
    fn err_unchanged(&mut self, op: Op, code: &str) {
        let before = self.holt.clone();
        assert_eq!(self.err(op), code);
        assert_namespace_eq(&before, &self.holt);
    }

    fn attr(&self, path: &str) -> Attr {
        match self.query(Query::GetAttr {
            inode: InodeRef::Path(path.into()),
        }) {
            Ok(QueryResult::Attr(attr)) => attr,
            other => panic!("getattr {path}: {other:?}"),
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.query(Query::GetAttr {
            inode: InodeRef::Path(path.into()),
        })
        .is_ok()
    }

    fn query(&self, q: Query) -> Result<QueryResult, FsError> {
        self.holt.query(&q)
    }

    fn names(&self, dir: &str) -> Vec<String> {
        match self.query(Query::ReadDir {
            dir: InodeRef::Path(dir.into()),
            after: None,
            limit: 0,
        }) {
            Ok(QueryResult::Dir { entries, .. }) => entries.into_iter().map(|e| e.name).collect(),
            other => panic!("readdir {dir}: {other:?}"),
        }
    }

    fn query_code(&self, q: Query) -> &'static str {
        self.query(q).expect_err("query should fail").code()
    }
}

/// Equal apart from `last_applied` and the dedupe table.
fn assert_namespace_eq(before: &Holt, after: &Holt) {
    assert_eq!(before.inodes, after.inodes);
    assert_eq!(before.dentries, after.dentries);
    assert_eq!(before.next_local, after.next_local);
    assert_eq!(before.epoch, after.epoch);
    assert_eq!(before.staged, after.staged);
    assert_eq!(before.gc, after.gc);
}

fn path(p: &str) -> EntryRef {
    EntryRef::Path(p.into())
}

fn ipath(p: &str) -> InodeRef {
    InodeRef::Path(p.into())
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
        mode: 0o750,
        uid: 7,
        gid: 8,
        parents: true,
    }
}

fn create(p: &str) -> Op {
    create_at(path(p))
}

fn create_at(at: EntryRef) -> Op {
    Op::Create {
        at,
        mode: 0o644,
        uid: 1,
        gid: 2,
    }
}

fn symlink(p: &str, target: &str) -> Op {
    Op::Symlink {
        at: path(p),
        target: target.into(),
        uid: 3,
        gid: 4,
    }
}

fn link(source: &str, dest: &str) -> Op {
    Op::Link {
        inode: ipath(source),
        at: path(dest),
    }
}

fn unlink(p: &str) -> Op {
    Op::Unlink { at: path(p) }
}

fn rmdir(p: &str) -> Op {
    Op::Rmdir { at: path(p) }
}

fn rename(from: &str, to: &str) -> Op {
    Op::Rename {
        from: path(from),
        to: path(to),
        mode: RenameMode::Replace,
    }
}

fn rename_noreplace(from: &str, to: &str) -> Op {
    Op::Rename {
        from: path(from),
        to: path(to),
        mode: RenameMode::NoReplace,
    }
}

fn set_attr(p: &str, set: SetAttr) -> Op {
    Op::SetAttr {
        inode: ipath(p),
        set,
    }
}

fn set_xattr(p: &str, name: &str, value: &[u8], flag: XattrFlag) -> Op {
    Op::SetXattr {
        inode: ipath(p),
        name: name.into(),
        value: value.to_vec(),
        flag,
    }
}

fn remove_xattr(p: &str, name: &str) -> Op {
    Op::RemoveXattr {
        inode: ipath(p),
        name: name.into(),
    }
}

// ---- construction ------------------------------------------------------

#[test]
fn new_engine_holds_only_the_root() {
    let holt = Holt::new(HoltConfig {
        shard: ShardId(3),
        dedupe_capacity: 10,
    });
    let root = InodeId::root(ShardId(3));
    let attr = match holt.query(&Query::GetAttr {
        inode: InodeRef::Id(root),
    }) {
        Ok(QueryResult::Attr(attr)) => attr,
        other => panic!("{other:?}"),
    };
    assert_eq!(attr.file_type, FileType::Directory);
    assert_eq!(
        (attr.mode, attr.uid, attr.gid, attr.nlink),
        (0o755, 0, 0, 2)
    );
    assert_eq!(
        (attr.mtime_ns, attr.ctime_ns, attr.version),
        (0, 0, LogIndex(0))
    );
    assert_eq!(holt.shard(), ShardId(3));
    assert_eq!(holt.epoch(), Epoch(1));
    assert_eq!(holt.last_applied(), LogIndex(0));
    assert_eq!(
        holt.stats(),
        Stats {
            inodes: 1,
            dentries: 0,
            dedupe_entries: 0,
            next_inode: 2,
            epoch: Epoch(1),
            last_applied: LogIndex(0),
            staged: 0,
            gc_tasks: 0,
            snapshots: 0,
            grafts: 0,
        }
    );
    assert_eq!(holt.check_invariants(), Ok(()));
    assert_eq!(HoltConfig::default().dedupe_capacity, 100_000);
    assert_eq!(holt.config().shard, ShardId(3));
}

#[test]
fn new_inodes_carry_the_shard() {
    let mut f = Fixture::with_config(HoltConfig {
        shard: ShardId(5),
        dedupe_capacity: 10,
    });
    let attr = f.ok_attr(create("/f"));
    assert_eq!(attr.inode.shard(), ShardId(5));
    assert_eq!(attr.inode.local(), 2);
}

// ---- mkdir ---------------------------------------------------------------

#[test]
fn mkdir_creates_a_directory() {
    let mut f = Fixture::new();
    let attr = f.ok_attr(mkdir("/a"));
    assert_eq!(attr.file_type, FileType::Directory);
    assert_eq!(
        (attr.mode, attr.uid, attr.gid, attr.nlink),
        (0o755, 1, 2, 2)
    );
    assert_eq!(
        (attr.mtime_ns, attr.ctime_ns, attr.version),
        (1000, 1000, LogIndex(1))
    );
    assert_eq!(f.attr("/a"), attr);
    let root = f.attr("/");
    assert_eq!(root.nlink, 3, "the new `..` links the parent");
    assert_eq!(
        (root.mtime_ns, root.ctime_ns, root.version),
        (1000, 1000, LogIndex(1))
    );
    f.ok(mkdir("/a/b"));
    assert_eq!(f.attr("/a").nlink, 3);
    assert_eq!(f.names("/a"), ["b"]);
}

#[test]
fn mkdir_masks_the_mode() {
    let mut f = Fixture::new();
    let attr = f.ok_attr(Op::Mkdir {
        at: path("/a"),
        mode: 0o40755,
        uid: 0,
        gid: 0,
        parents: false,
    });
    assert_eq!(attr.mode, 0o755);
}

#[test]
fn mkdir_errors() {
    let mut f = Fixture::new();
    f.ok(mkdir("/a"));
    f.ok(create("/f"));
    f.err_unchanged(mkdir("/a"), "EEXIST");
    f.err_unchanged(mkdir("/f"), "EEXIST");
    f.err_unchanged(mkdir("/"), "EEXIST");
    f.err_unchanged(mkdir("/missing/x"), "ENOENT");
    f.err_unchanged(mkdir("/f/x"), "ENOTDIR");
}

#[test]
fn mkdir_parents_creates_missing_ancestors() {
    let mut f = Fixture::new();
    f.ok(mkdir("/a"));
    let attr = f.ok_attr(mkdir_p("/a/b/c/d"));
    assert_eq!(f.attr("/a/b/c/d"), attr);
    for dir in ["/a/b", "/a/b/c", "/a/b/c/d"] {
        let created = f.attr(dir);
        assert_eq!(
            (created.mode, created.uid, created.gid),
            (0o750, 7, 8),
            "{dir}"
        );
    }
    assert_eq!(f.attr("/a").nlink, 3);
    assert_eq!(f.attr("/a/b").nlink, 3);
    assert_eq!(f.attr("/a/b/c/d").nlink, 2);
    assert_eq!(f.holt.stats().inodes, 5);
}

#[test]
fn mkdir_parents_accepts_an_existing_directory() {
    let mut f = Fixture::new();
    let first = f.ok_attr(mkdir_p("/a/b"));
    let before = f.holt.clone();
    let again = f.ok_attr(mkdir_p("/a/b"));
    assert_eq!(first, again);
    assert_namespace_eq(&before, &f.holt);
    let root = f.ok_attr(mkdir_p("/"));
    assert_eq!(root.inode, InodeId::root(ShardId(0)));
}

#[test]
fn mkdir_parents_errors() {
    let mut f = Fixture::new();
    f.ok(mkdir("/a"));
    f.ok(create("/a/f"));
    f.ok(symlink("/a/s", "/a"));
    f.err_unchanged(mkdir_p("/a/f"), "EEXIST");
    f.err_unchanged(mkdir_p("/a/s"), "EEXIST");
    f.err_unchanged(mkdir_p("/a/f/x/y"), "ENOTDIR");
    f.err_unchanged(
        Op::Mkdir {
            at: EntryRef::Child {
                parent: InodeId::root(ShardId(0)),
                name: "x".into(),
            },
            mode: 0o755,
            uid: 0,
            gid: 0,
            parents: true,
        },
        "EINVAL",
    );
}

#[test]
fn mkdir_parents_follows_intermediate_symlinks() {
    let mut f = Fixture::new();
    f.ok(mkdir("/real"));
    f.ok(symlink("/link", "real"));
    f.ok(mkdir_p("/link/x/y"));
    assert!(f.exists("/real/x/y"));
    f.ok(symlink("/dangling", "/nowhere"));
    f.err_unchanged(mkdir_p("/dangling/x"), "ENOENT");
}

// ---- create and symlink ------------------------------------------------------

#[test]
fn create_makes_an_empty_file() {
    let mut f = Fixture::new();
    let attr = f.ok_attr(create("/f"));
    assert_eq!(attr.file_type, FileType::File);
    assert_eq!((attr.size, attr.nlink, attr.mode), (0, 1, 0o644));
    assert_eq!(f.attr("/").nlink, 2, "files do not link the parent");
    f.err_unchanged(create("/f"), "EEXIST");
    f.err_unchanged(create("/"), "EEXIST");
    f.err_unchanged(create("/f/g"), "ENOTDIR");
    f.err_unchanged(create("/nope/g"), "ENOENT");
}

#[test]
fn create_by_child_reference() {
    let mut f = Fixture::new();
    let dir = f.ok_attr(mkdir("/d")).inode;
    let file = f.ok_attr(create_at(EntryRef::Child {
        parent: dir,
        name: "f".into(),
    }));
    assert_eq!(f.attr("/d/f"), file);
    let lookup = f.query(Query::Lookup {
        parent: dir,
        name: "f".into(),
    });
    assert_eq!(lookup, Ok(QueryResult::Attr(file.clone())));
    let child = |parent, name: &str| {
        create_at(EntryRef::Child {
            parent,
            name: name.into(),
        })
    };
    f.err_unchanged(child(dir, "f"), "EEXIST");
    f.err_unchanged(child(file.inode, "g"), "ENOTDIR");
    f.err_unchanged(child(InodeId::compose(ShardId(0), 999), "g"), "ENOENT");
    // Another shard's inode: the client must re-route.
    f.err_unchanged(child(InodeId::root(ShardId(9)), "g"), "WRONG_SHARD");
}

#[test]
fn symlink_records_its_target() {
    let mut f = Fixture::new();
    let attr = f.ok_attr(symlink("/s", "some/where"));
    assert_eq!(attr.file_type, FileType::Symlink);
    assert_eq!(
        (attr.mode, attr.size, attr.uid, attr.gid),
        (0o777, 10, 3, 4)
    );
    let target = f.query(Query::ReadLink { inode: ipath("/s") });
    assert_eq!(target, Ok(QueryResult::Target("some/where".into())));
    f.err_unchanged(symlink("/s", "x"), "EEXIST");
    f.err_unchanged(symlink("/t", ""), "EINVAL");
    f.err_unchanged(symlink("/t", "a\0b"), "EINVAL");
    f.err_unchanged(symlink("/t", &"x".repeat(4097)), "ENAMETOOLONG");
    f.ok(symlink("/t", &"x".repeat(4096)));
    f.ok(create("/f"));
    assert_eq!(
        f.query_code(Query::ReadLink { inode: ipath("/f") }),
        "EINVAL"
    );
    assert_eq!(
        f.query_code(Query::ReadLink { inode: ipath("/") }),
        "EINVAL"
    );
}

// ---- link and unlink -----------------------------------------------------

#[test]
fn hard_links_share_an_inode() {
    let mut f = Fixture::new();
    let file = f.ok_attr(create("/f"));
    f.ok(mkdir("/d"));
    let linked = f.ok_attr(link("/f", "/d/g"));
    assert_eq!(linked.inode, file.inode);
    assert_eq!(linked.nlink, 2);
    assert_eq!(f.attr("/f"), f.attr("/d/g"));
    let by_id = f.ok_attr(Op::Link {
        inode: InodeRef::Id(file.inode),
        at: path("/h"),
    });
    assert_eq!(by_id.nlink, 3);

    f.ok(unlink("/f"));
    assert_eq!(f.attr("/d/g").nlink, 2);
    f.ok(unlink("/h"));
    assert_eq!(f.attr("/d/g").nlink, 1);
    let inodes = f.holt.stats().inodes;
    f.ok(unlink("/d/g"));
    assert_eq!(
        f.holt.stats().inodes,
        inodes - 1,
        "the last name frees the inode"
    );
    assert_eq!(
        f.query_code(Query::GetAttr {
            inode: InodeRef::Id(file.inode)
        }),
        "ENOENT"
    );
}

#[test]
fn link_errors() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    f.ok(create("/g"));
    f.ok(mkdir("/d"));
    f.err_unchanged(link("/d", "/d2"), "EPERM");
    f.err_unchanged(link("/", "/r"), "EPERM");
    f.err_unchanged(link("/f", "/g"), "EEXIST");
    f.err_unchanged(link("/f", "/"), "EEXIST");
    f.err_unchanged(link("/missing", "/x"), "ENOENT");
    f.err_unchanged(link("/f", "/missing/x"), "ENOENT");
    f.err_unchanged(
        Op::Link {
            inode: InodeRef::Id(InodeId::compose(ShardId(0), 77)),
            at: path("/x"),
        },
        "ENOENT",
    );
}

#[test]
fn link_updates_times() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    let linked = f.ok_attr(link("/f", "/g"));
    assert_eq!((linked.ctime_ns, linked.mtime_ns), (2000, 1000));
    assert_eq!(linked.version, LogIndex(2));
}

#[test]
fn unlink_errors() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.err_unchanged(unlink("/d"), "EISDIR");
    f.err_unchanged(unlink("/"), "EISDIR");
    f.err_unchanged(unlink("/x"), "ENOENT");
    f.err_unchanged(unlink("/x/y"), "ENOENT");
}

#[test]
fn unlink_removes_symlink_not_target() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    f.ok(symlink("/s", "/f"));
    f.ok(unlink("/s"));
    assert!(f.exists("/f"));
    assert!(!f.exists("/s"));
    assert_eq!(f.attr("/").mtime_ns, 3000);
}

// ---- rmdir ---------------------------------------------------------------

#[test]
fn rmdir_removes_an_empty_directory() {
    let mut f = Fixture::new();
    f.ok(mkdir("/a"));
    f.ok(mkdir("/a/b"));
    assert_eq!(f.attr("/a").nlink, 3);
    f.ok(rmdir("/a/b"));
    assert_eq!(f.attr("/a").nlink, 2);
    f.ok(rmdir("/a"));
    assert_eq!(f.attr("/").nlink, 2);
    assert_eq!(f.holt.stats().inodes, 1);
    assert_eq!(f.holt.stats().dentries, 0);
}

#[test]
fn rmdir_errors() {
    let mut f = Fixture::new();
    f.ok(mkdir("/a"));
    f.ok(create("/a/f"));
    f.err_unchanged(rmdir("/a"), "ENOTEMPTY");
    f.err_unchanged(rmdir("/a/f"), "ENOTDIR");
    f.err_unchanged(rmdir("/"), "EPERM");
    f.err_unchanged(rmdir("/missing"), "ENOENT");
}

// ---- rename --------------------------------------------------------------

#[test]
fn rename_moves_a_file() {
    let mut f = Fixture::new();
    let file = f.ok_attr(create("/f"));
    f.ok(mkdir("/d"));
    f.ok(rename("/f", "/d/g"));
    assert!(!f.exists("/f"));
    let moved = f.attr("/d/g");
    assert_eq!(moved.inode, file.inode);
    assert_eq!(moved.ctime_ns, 3000);
    assert_eq!(f.attr("/d").mtime_ns, 3000);
    assert_eq!(f.attr("/").mtime_ns, 3000);
}

#[test]
fn rename_moves_a_directory_between_parents() {
    let mut f = Fixture::new();
    f.ok(mkdir_p("/a/x/inner"));
    f.ok(mkdir("/b"));
    f.ok(symlink("/a/x/up", "../.."));
    f.ok(rename("/a/x", "/b/y"));
    assert_eq!(f.attr("/a").nlink, 2);
    assert_eq!(f.attr("/b").nlink, 3);
    assert!(f.exists("/b/y/inner"));
    // The moved directory's `..` now leads to /b, so "../.." from it is /.
    assert_eq!(f.names("/b/y/up/b"), ["y"]);
    assert_eq!(f.holt.check_invariants(), Ok(()));
}

#[test]
fn rename_into_own_subtree_is_rejected() {
    let mut f = Fixture::new();
    f.ok(mkdir_p("/a/b/c"));
    f.ok(symlink("/inside", "/a/b"));
    f.err_unchanged(rename("/a", "/a/x"), "EINVAL");
    f.err_unchanged(rename("/a", "/a/b/c/x"), "EINVAL");
    f.err_unchanged(rename("/a", "/inside/x"), "EINVAL");
    f.err_unchanged(rename_noreplace("/a/b", "/a/b/c"), "EINVAL");
    // A sibling whose name shares a prefix is not inside.
    f.ok(rename("/a/b", "/ab"));
}

#[test]
fn rename_root_is_rejected() {
    let mut f = Fixture::new();
    f.ok(mkdir("/a"));
    f.err_unchanged(rename("/", "/b"), "EINVAL");
    f.err_unchanged(rename("/a", "/"), "EINVAL");
}

#[test]
fn rename_noreplace_refuses_an_existing_destination() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    f.ok(create("/g"));
    f.err_unchanged(rename_noreplace("/f", "/g"), "EEXIST");
    f.ok(rename_noreplace("/f", "/h"));
    assert!(f.exists("/h") && !f.exists("/f"));
}

#[test]
fn rename_replaces_a_file() {
    let mut f = Fixture::new();
    let source = f.ok_attr(create("/f"));
    let target = f.ok_attr(create("/g"));
    f.ok(rename("/f", "/g"));
    assert_eq!(f.attr("/g").inode, source.inode);
    assert_eq!(f.names("/"), ["g"]);
    assert!(
        !f.holt.inodes.contains_key(&target.inode),
        "old target freed"
    );
}

#[test]
fn rename_over_a_hard_linked_file_keeps_its_other_name() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    let target = f.ok_attr(create("/g"));
    f.ok(link("/g", "/g2"));
    f.ok(rename("/f", "/g"));
    let survivor = f.attr("/g2");
    assert_eq!(survivor.inode, target.inode);
    assert_eq!(survivor.nlink, 1);
}

#[test]
fn rename_replaces_an_empty_directory() {
    let mut f = Fixture::new();
    f.ok(mkdir_p("/a/src"));
    f.ok(mkdir_p("/b/dst"));
    f.ok(rename("/a/src", "/b/dst"));
    assert_eq!(f.attr("/a").nlink, 2);
    assert_eq!(f.attr("/b").nlink, 3);
    assert_eq!(f.names("/b"), ["dst"]);
    assert_eq!(f.holt.stats().inodes, 4);
    assert_eq!(f.holt.check_invariants(), Ok(()));
}

#[test]
fn rename_replace_errors() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.ok(mkdir_p("/full/x"));
    f.ok(create("/f"));
    f.err_unchanged(rename("/d", "/full"), "ENOTEMPTY");
    f.err_unchanged(rename("/d", "/f"), "ENOTDIR");
    f.err_unchanged(rename("/f", "/d"), "EISDIR");
    f.err_unchanged(rename("/missing", "/x"), "ENOENT");
    f.err_unchanged(rename("/f", "/missing/x"), "ENOENT");
    // A directory onto its own ancestor: the ancestor is never empty.
    f.err_unchanged(rename("/full/x", "/full"), "ENOTEMPTY");
}

#[test]
fn rename_no_op_cases() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    f.ok(link("/f", "/g"));
    f.ok(mkdir("/d"));
    for op in [
        rename("/f", "/f"),
        rename("/d", "/d"),
        rename_noreplace("/f", "//f/"),
        rename("/f", "/g"),
    ] {
        let before = f.holt.clone();
        assert_eq!(f.run(op), Ok(Applied::Done));
        assert_namespace_eq(&before, &f.holt);
    }
    assert_eq!(f.attr("/f").nlink, 2);
    // NoReplace still reports the existing destination, even the same inode.
    f.err_unchanged(rename_noreplace("/f", "/g"), "EEXIST");
}

// ---- setattr -------------------------------------------------------------

#[test]
fn set_attr_changes_requested_fields() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    let attr = f.ok_attr(set_attr(
        "/f",
        SetAttr {
            mode: Some(0o104_755),
            uid: Some(10),
            gid: Some(20),
            size: Some(4096),
            mtime_ns: Some(42),
        },
    ));
    assert_eq!(
        (attr.mode, attr.uid, attr.gid, attr.size),
        (0o4755, 10, 20, 4096)
    );
    assert_eq!(
        (attr.mtime_ns, attr.ctime_ns, attr.version),
        (42, 2000, LogIndex(2))
    );
    let unchanged = f.ok_attr(set_attr("/f", SetAttr::default()));
    assert_eq!(
        (unchanged.mode, unchanged.size, unchanged.mtime_ns),
        (0o4755, 4096, 42)
    );
    assert_eq!(unchanged.ctime_ns, 3000);
}

#[test]
fn set_attr_errors() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.ok(symlink("/s", "/d"));
    let size = || SetAttr {
        size: Some(1),
        ..SetAttr::default()
    };
    f.err_unchanged(set_attr("/d", size()), "EISDIR");
    f.err_unchanged(set_attr("/s", size()), "EINVAL");
    f.err_unchanged(set_attr("/missing", size()), "ENOENT");
    f.err_unchanged(
        Op::SetAttr {
            inode: InodeRef::Id(InodeId(u64::MAX)),
            set: size(),
        },
        "WRONG_SHARD",
    );
    // Directories accept everything but a size.
    let mode = f.ok_attr(set_attr(
        "/d",
        SetAttr {
            mode: Some(0o700),
            ..SetAttr::default()
        },
    ));
    assert_eq!(mode.mode, 0o700);
}

// ---- xattrs --------------------------------------------------------------

#[test]
fn xattr_flags() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    f.ok(set_xattr("/f", "user.b", b"1", XattrFlag::Create));
    f.err_unchanged(set_xattr("/f", "user.b", b"2", XattrFlag::Create), "EEXIST");
    f.err_unchanged(
        set_xattr("/f", "user.a", b"2", XattrFlag::Replace),
        "ENODATA",
    );
    f.ok(set_xattr("/f", "user.b", b"2", XattrFlag::Replace));
    f.ok(set_xattr("/f", "user.a", b"3", XattrFlag::Upsert));
    f.ok(set_xattr("/f", "user.a", b"", XattrFlag::Upsert));
    let get = |f: &Fixture, name: &str| {
        f.query(Query::GetXattr {
            inode: ipath("/f"),
            name: name.into(),
        })
    };
    assert_eq!(get(&f, "user.b"), Ok(QueryResult::Xattr(b"2".to_vec())));
    assert_eq!(get(&f, "user.a"), Ok(QueryResult::Xattr(vec![])));
    assert_eq!(get(&f, "user.zz").map_err(|e| e.code()), Err("ENODATA"));
    let list = f.query(Query::ListXattr { inode: ipath("/f") });
    assert_eq!(
        list,
        Ok(QueryResult::XattrNames(vec![
            "user.a".into(),
            "user.b".into()
        ]))
    );
    assert_eq!(f.attr("/f").ctime_ns, 7000);
}

#[test]
fn remove_xattr_flags() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.ok(set_xattr("/d", "k", b"v", XattrFlag::Upsert));
    f.ok(remove_xattr("/d", "k"));
    f.err_unchanged(remove_xattr("/d", "k"), "ENODATA");
    f.err_unchanged(remove_xattr("/missing", "k"), "ENOENT");
    let list = f.query(Query::ListXattr { inode: ipath("/d") });
    assert_eq!(list, Ok(QueryResult::XattrNames(vec![])));
}

/// Removing the last attribute leaves the same record as never having one
/// (replicas compare equal whether they applied the log or decoded an
/// image), and a record stays the size its docs promise.
#[test]
fn records_stay_small_and_canonical() {
    assert_eq!(std::mem::size_of::<InodeRecord>(), 112);
    // The inode map's chunks hold `Option<InodeRecord>`: no extra word.
    assert_eq!(std::mem::size_of::<Option<InodeRecord>>(), 112);
    // A body without the size and generation its record holds, and a
    // whole-body block as one inode beside the list's pointer.
    assert_eq!(std::mem::size_of::<super::StoredBody>(), 72);
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    let id = f.attr("/d").inode;
    f.ok(set_xattr("/d", "k", b"v", XattrFlag::Upsert));
    assert!(f.holt.record(id).expect("a record").extras != Extras::default());
    f.ok(remove_xattr("/d", "k"));
    assert_eq!(
        f.holt.record(id).expect("a record").extras,
        Extras::default()
    );
    // A directory's parent is its entry's directory, through a rename;
    // the root is its own; a file has none.
    let parent = |f: &Fixture, p: &str| f.holt.record(f.attr(p).inode).expect("a record").parent();
    let root = f.attr("/").inode;
    f.ok(mkdir("/e"));
    f.ok(create("/e/f"));
    assert_eq!(parent(&f, "/d"), Some(root));
    f.ok(rename("/d", "/e/d"));
    assert_eq!(parent(&f, "/e/d"), Some(f.attr("/e").inode));
    assert_eq!(parent(&f, "/"), Some(root));
    assert_eq!(parent(&f, "/e/f"), None);
    // Encoded as it was when it was a field: an image with a parent for a
    // file, or none for a directory, does not decode.
    for (p, wrong) in [("/e/f", Some(root)), ("/e/d", None)] {
        let record = f.holt.record(f.attr(p).inode).expect("a record");
        let bytes = bincode::serialize(&record).expect("encode");
        let mut fields: super::RecordImage =
            bincode::deserialize(&bytes).expect("decode as plain fields");
        assert_eq!(fields.parent, record.parent());
        fields.parent = wrong;
        let refused =
            bincode::deserialize::<InodeRecord>(&bincode::serialize(&fields).expect("encode"))
                .expect_err("a parent of the wrong shape");
        assert!(refused.to_string().contains("parent"), "{p}: {refused}");
    }
}

/// A record encodes as its fields did when the symlink target and the
/// xattrs were two fields of their own (the image format), and decodes
/// back to the same record, for each combination of the two.
#[test]
fn records_encode_with_target_and_xattrs_as_separate_fields() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.ok(symlink("/d/s", "../t"));
    f.ok(symlink("/d/x", "t"));
    f.ok(set_xattr("/d", "user.k", b"v", XattrFlag::Upsert));
    f.ok(set_xattr("/d/x", "user.a", b"1", XattrFlag::Upsert));
    f.ok(set_xattr("/d/x", "user.b", b"22", XattrFlag::Upsert));
    for (path, target, xattrs) in [
        ("/d", None, vec![("user.k", b"v".to_vec())]),
        ("/d/s", Some("../t"), vec![]),
        (
            "/d/x",
            Some("t"),
            vec![("user.a", b"1".to_vec()), ("user.b", b"22".to_vec())],
        ),
    ] {
        let id = f.attr(path).inode;
        let record = f.holt.record(id).expect("a record").clone();
        let separate = super::RecordImage {
            attr: record.attr.clone(),
            symlink_target: target.map(str::to_string),
            xattrs: xattrs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            parent: record.parent(),
            body: None,
        };
        let bytes = bincode::serialize(&record).expect("encode");
        assert_eq!(
            bytes,
            bincode::serialize(&separate).expect("encode"),
            "{path}"
        );
        let decoded: InodeRecord = bincode::deserialize(&bytes).expect("decode");
        assert_eq!(
            decoded,
            InodeRecord {
                link: None,
                ..record
            },
            "{path}"
        );
    }
}

#[test]
fn xattr_validation() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    f.err_unchanged(set_xattr("/f", "", b"v", XattrFlag::Upsert), "EINVAL");
    f.err_unchanged(set_xattr("/f", "a\0", b"v", XattrFlag::Upsert), "EINVAL");
    f.err_unchanged(
        set_xattr("/f", &"n".repeat(256), b"v", XattrFlag::Upsert),
        "ENAMETOOLONG",
    );
    f.err_unchanged(
        set_xattr("/f", "big", &vec![0; 65537], XattrFlag::Upsert),
        "EINVAL",
    );
    f.ok(set_xattr("/f", "big", &vec![0; 65536], XattrFlag::Upsert));
    f.err_unchanged(remove_xattr("/f", ""), "EINVAL");
    let bad_get = Query::GetXattr {
        inode: ipath("/f"),
        name: String::new(),
    };
    assert_eq!(f.query_code(bad_get), "EINVAL");
}

// ---- queries -------------------------------------------------------------

#[test]
fn lookup_errors() {
    let mut f = Fixture::new();
    let file = f.ok_attr(create("/f")).inode;
    let root = InodeId::root(ShardId(0));
    let lookup = |parent, name: &str| Query::Lookup {
        parent,
        name: name.into(),
    };
    assert!(f.query(lookup(root, "f")).is_ok());
    assert_eq!(f.query_code(lookup(root, "g")), "ENOENT");
    assert_eq!(f.query_code(lookup(file, "g")), "ENOTDIR");
    assert_eq!(f.query_code(lookup(InodeId(12345), "g")), "ENOENT");
    assert_eq!(f.query_code(lookup(root, "..")), "EINVAL");
    assert_eq!(f.query_code(lookup(root, &"x".repeat(256))), "ENAMETOOLONG");
}

#[test]
fn get_attr_errors() {
    let f = Fixture::new();
    let get = |inode| Query::GetAttr { inode };
    assert_eq!(f.query_code(get(ipath("/x"))), "ENOENT");
    assert_eq!(f.query_code(get(ipath("x"))), "EINVAL");
    assert_eq!(f.query_code(get(ipath("/a/../b"))), "EINVAL");
    assert_eq!(f.query_code(get(InodeRef::Id(InodeId(0)))), "ENOENT");
    let other_shard_root = InodeId::root(ShardId(1));
    assert_eq!(
        f.query_code(get(InodeRef::Id(other_shard_root))),
        "WRONG_SHARD"
    );
}

#[test]
fn read_dir_pages_with_a_name_cursor() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    let mut expected: Vec<String> = (0..25).map(|i| format!("n{i:02}")).collect();
    // Insert out of order: listing order must be byte order of names.
    for name in expected.iter().rev() {
        f.ok(create(&format!("/d/{name}")));
    }
    f.ok(create("/after-d"));
    expected.sort();

    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = f.query(Query::ReadDir {
            dir: ipath("/d"),
            after: after.clone(),
            limit: 10,
        });
        let Ok(QueryResult::Dir { entries, next }) = page else {
            panic!("{page:?}");
        };
        pages += 1;
        assert!(entries.len() <= 10);
        for entry in &entries {
            assert_eq!(entry.attr, f.attr(&format!("/d/{}", entry.name)));
        }
        seen.extend(entries.iter().map(|e| e.name.clone()));
        match next {
            Some(cursor) => {
                assert_eq!(Some(&cursor), seen.last());
                after = Some(cursor);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected);
}

#[test]
fn read_dir_exact_page_has_no_next() {
    let mut f = Fixture::new();
    for name in ["a", "b"] {
        f.ok(create(&format!("/{name}")));
    }
    let page = f.query(Query::ReadDir {
        dir: ipath("/"),
        after: None,
        limit: 2,
    });
    let Ok(QueryResult::Dir { entries, next }) = page else {
        panic!("{page:?}");
    };
    assert_eq!(entries.len(), 2);
    assert_eq!(next, None);
    let page = f.query(Query::ReadDir {
        dir: ipath("/"),
        after: Some("a".into()),
        limit: 1,
    });
    let Ok(QueryResult::Dir { entries, next }) = page else {
        panic!("{page:?}");
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "b");
    assert_eq!(next, None);
    // A cursor between names, or past the end, also works.
    let page = f.query(Query::ReadDir {
        dir: ipath("/"),
        after: Some("zzz".into()),
        limit: 1,
    });
    assert_eq!(
        page,
        Ok(QueryResult::Dir {
            entries: vec![],
            next: None
        })
    );
}

#[test]
fn read_dir_limit_is_capped() {
    let mut f = Fixture::new();
    let count = MAX_READDIR_PAGE as usize + 5;
    for i in 0..count {
        f.ok(create(&format!("/f{i:05}")));
    }
    for limit in [0, MAX_READDIR_PAGE + 1, u32::MAX] {
        let page = f.query(Query::ReadDir {
            dir: ipath("/"),
            after: None,
            limit,
        });
        let Ok(QueryResult::Dir { entries, next }) = page else {
            panic!("{page:?}");
        };
        assert_eq!(entries.len(), MAX_READDIR_PAGE as usize);
        assert_eq!(next.as_deref(), Some("f00999"));
    }
}

#[test]
fn read_dir_errors() {
    let mut f = Fixture::new();
    f.ok(create("/f"));
    f.ok(symlink("/s", "/"));
    let read = |p: &str| Query::ReadDir {
        dir: ipath(p),
        after: None,
        limit: 0,
    };
    assert_eq!(f.query_code(read("/f")), "ENOTDIR");
    assert_eq!(
        f.query_code(read("/s")),
        "ENOTDIR",
        "the final symlink is not followed"
    );
    assert_eq!(f.query_code(read("/missing")), "ENOENT");
    assert!(
        f.exists("/s/f"),
        "as an intermediate component it is followed"
    );
}

// ---- symlink resolution --------------------------------------------------

#[test]
fn intermediate_symlinks_are_followed() {
    let mut f = Fixture::new();
    f.ok(mkdir_p("/a/b"));
    f.ok(create("/a/b/f"));
    f.ok(symlink("/abs", "/a/b"));
    f.ok(symlink("/a/rel", "b"));
    f.ok(symlink("/a/b/up", "../b/./"));
    f.ok(symlink("/a/chain", "/abs/up"));
    f.ok(symlink("/beyond", "../../../a"));
    let file = f.attr("/a/b/f").inode;
    for p in [
        "/abs/f",
        "/a/rel/f",
        "/a/b/up/f",
        "/a/chain/f",
        "/beyond/b/f",
        "/abs/up/up/f",
    ] {
        assert_eq!(f.attr(p).inode, file, "{p}");
    }
    // Creating through a symlinked directory lands in the target.
    f.ok(create("/abs/new"));
    assert!(f.exists("/a/b/new"));
}

#[test]
fn final_symlink_is_not_followed() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.ok(symlink("/s", "/d"));
    assert_eq!(f.attr("/s").file_type, FileType::Symlink);
    f.err_unchanged(rmdir("/s"), "ENOTDIR");
    f.ok(rename("/s", "/t"));
    assert_eq!(f.attr("/t").file_type, FileType::Symlink);
    assert_eq!(f.attr("/d").file_type, FileType::Directory);
}

#[test]
fn symlink_resolution_errors() {
    let mut f = Fixture::new();
    f.ok(create("/file"));
    f.ok(symlink("/to-file", "/file"));
    f.ok(symlink("/dangling", "/nowhere"));
    f.ok(symlink("/self", "/self"));
    f.ok(symlink("/ping", "pong"));
    f.ok(symlink("/pong", "/ping"));
    f.err_unchanged(create("/to-file/x"), "ENOTDIR");
    f.err_unchanged(create("/dangling/x"), "ENOENT");
    f.err_unchanged(create("/self/x"), "ELOOP");
    f.err_unchanged(create("/ping/x"), "ELOOP");
    let get = Query::GetAttr {
        inode: ipath("/ping/x"),
    };
    assert_eq!(f.query_code(get), "ELOOP");
}

#[test]
fn forty_symlink_hops_are_allowed_but_not_more() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.ok(create("/d/f"));
    // /l1 -> /d, /l2 -> /l1, ... : resolving /lN/f takes N hops.
    f.ok(symlink("/l1", "/d"));
    for n in 2..=41 {
        f.ok(symlink(&format!("/l{n}"), &format!("/l{}", n - 1)));
    }
    assert!(f.exists("/l40/f"));
    let get = Query::GetAttr {
        inode: ipath("/l41/f"),
    };
    assert_eq!(f.query_code(get), "ELOOP");
}

// ---- dedupe and epochs ---------------------------------------------------

fn command(request: u128, op: Op) -> Command {
    Command {
        request_id: RequestId(request),
        epoch: None,
        time_ns: 5,
        op,
    }
}

#[test]
fn a_retried_request_applies_once() {
    let mut f = Fixture::new();
    let cmd = command(7, mkdir("/a"));
    let first = f.apply(&cmd);
    assert!(first.is_ok());
    let after_first = f.holt.clone();
    let second = f.apply(&cmd);
    assert_eq!(first, second);
    assert_eq!(f.holt.last_applied(), LogIndex(2));
    let mut expected = after_first;
    expected.last_applied = LogIndex(2);
    assert_eq!(expected, f.holt);
}

#[test]
fn error_outcomes_are_remembered() {
    let mut f = Fixture::new();
    f.ok(create("/a"));
    let cmd = command(99, create("/a"));
    assert_eq!(f.apply(&cmd).map_err(|e| e.code()), Err("EEXIST"));
    f.ok(unlink("/a"));
    // The retry must not succeed now that the name is free: the first answer stands.
    assert_eq!(f.apply(&cmd).map_err(|e| e.code()), Err("EEXIST"));
    assert!(!f.exists("/a"));
}

#[test]
fn validation_errors_are_not_remembered() {
    let mut f = Fixture::new();
    let cmd = command(5, create("relative"));
    assert_eq!(f.apply(&cmd).map_err(|e| e.code()), Err("EINVAL"));
    assert_eq!(f.holt.stats().dedupe_entries, 0);
}

#[test]
fn the_oldest_outcomes_are_evicted() {
    let mut f = Fixture::with_config(HoltConfig {
        shard: ShardId(0),
        dedupe_capacity: 2,
    });
    let first = command(1, create("/a"));
    f.apply(&first).expect("create /a");
    f.apply(&command(2, create("/b"))).expect("create /b");
    f.apply(&command(3, create("/c"))).expect("create /c");
    assert_eq!(f.holt.stats().dedupe_entries, 2);
    assert_eq!(
        f.holt.dedupe_order.iter().copied().collect::<Vec<_>>(),
        [RequestId(2), RequestId(3)]
    );
    // Request 1 was forgotten, so it runs again and now finds /a taken.
    assert_eq!(f.apply(&first).map_err(|e| e.code()), Err("EEXIST"));
    assert_eq!(
        f.holt.dedupe_order.iter().copied().collect::<Vec<_>>(),
        [RequestId(3), RequestId(1)]
    );
    assert_eq!(f.holt.check_invariants(), Ok(()));
}

#[test]
fn zero_capacity_disables_dedupe() {
    let mut f = Fixture::with_config(HoltConfig {
        shard: ShardId(0),
        dedupe_capacity: 0,
    });
    let cmd = command(1, create("/a"));
    assert!(f.apply(&cmd).is_ok());
    assert_eq!(f.apply(&cmd).map_err(|e| e.code()), Err("EEXIST"));
    assert_eq!(f.holt.stats().dedupe_entries, 0);
}

#[test]
fn stale_epochs_are_rejected_and_not_remembered() {
    let mut f = Fixture::new();
    let mut stale = command(1, create("/a"));
    stale.epoch = Some(Epoch(0));
    let before = f.holt.clone();
    assert_eq!(
        f.apply(&stale),
        Err(FsError::StaleEpoch { current: Epoch(1) })
    );
    assert_namespace_eq(&before, &f.holt);
    assert_eq!(f.holt.stats().dedupe_entries, 0);
    // Refused again under the old epoch, wherever it is retried.
    assert_eq!(f.apply(&stale).map_err(|e| e.code()), Err("STALE_EPOCH"));
    // The same request id under the current epoch applies, once: a copy under
    // either epoch then gets the first outcome.
    stale.epoch = Some(Epoch(1));
    let applied = f.apply(&stale);
    assert!(applied.is_ok(), "{applied:?}");
    assert_eq!(f.apply(&stale), applied);
    stale.epoch = Some(Epoch(0));
    assert_eq!(f.apply(&stale), applied);

    let mut future = command(2, create("/b"));
    future.epoch = Some(Epoch(2));
    assert_eq!(f.apply(&future).map_err(|e| e.code()), Err("STALE_EPOCH"));
    let mut current = command(3, create("/b"));
    current.epoch = Some(Epoch(1));
    assert!(f.apply(&current).is_ok());
}

#[test]
fn last_applied_tracks_the_highest_index() {
    let mut holt = Holt::new(HoltConfig::default());
    let _ = holt.apply(LogIndex(10), &command(1, create("/a")));
    let _ = holt.apply(LogIndex(4), &command(2, create("bad")));
    assert_eq!(holt.last_applied(), LogIndex(10));
    assert_eq!(holt.stats().last_applied, LogIndex(10));
}

// ---- validation ------------------------------------------------------------

#[test]
fn bad_names_change_nothing() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    f.ok(create("/d/f"));
    let long = "x".repeat(256);
    let root = InodeId::root(ShardId(0));
    let child = |name: &str| EntryRef::Child {
        parent: root,
        name: name.into(),
    };
    let cases: Vec<(Op, &str)> = vec![
        (create(""), "EINVAL"),
        (create_at(child("")), "EINVAL"),
        (create_at(child("a/b")), "EINVAL"),
        (create_at(child("a\0b")), "EINVAL"),
        (create_at(child(".")), "EINVAL"),
        (create_at(child("..")), "EINVAL"),
        (create_at(child(&long)), "ENAMETOOLONG"),
        (create(&format!("/d/{long}")), "ENAMETOOLONG"),
        (create("/d/a\0b"), "EINVAL"),
        (create("/d/../x"), "EINVAL"),
        (create("/d/./x"), "EINVAL"),
        (create("d/x"), "EINVAL"),
        (mkdir("relative"), "EINVAL"),
        (mkdir_p("/d/../e"), "EINVAL"),
        (symlink("/d/..", "x"), "EINVAL"),
        (link("/d/f", "/d/.."), "EINVAL"),
        (link("d/f", "/d/g"), "EINVAL"),
        (unlink("/d/../d/f"), "EINVAL"),
        (rmdir("/d/."), "EINVAL"),
        (rename("/d/f", "/d/.."), "EINVAL"),
        (rename("../d", "/e"), "EINVAL"),
        (set_attr("/d/..", SetAttr::default()), "EINVAL"),
        (set_xattr("x", "k", b"", XattrFlag::Upsert), "EINVAL"),
        (remove_xattr("/d/\0", "k"), "EINVAL"),
        (create(&format!("/{}", "a/".repeat(2100))), "ENAMETOOLONG"),
    ];
    for (op, code) in cases {
        let description = format!("{op:?}");
        let before = f.holt.clone();
        let index = f.index + 1;
        assert_eq!(f.err(op), code, "{description}");
        let mut expected = before;
        expected.last_applied = LogIndex(index);
        assert_eq!(expected, f.holt, "{description}");
    }
}

#[test]
fn validate_command_is_static() {
    assert_eq!(Holt::validate_command(&command(1, create("/a/b"))), Ok(()));
    assert_eq!(
        Holt::validate_command(&command(1, create("/a/.."))).map_err(|e| e.code()),
        Err("EINVAL")
    );
    assert_eq!(
        Holt::validate_command(&command(1, symlink("/a", ""))).map_err(|e| e.code()),
        Err("EINVAL")
    );
    let child_parents = Op::Mkdir {
        at: EntryRef::Child {
            parent: InodeId(1),
            name: "x".into(),
        },
        mode: 0,
        uid: 0,
        gid: 0,
        parents: true,
    };
    assert_eq!(
        Holt::validate_command(&command(1, child_parents)).map_err(|e| e.code()),
        Err("EINVAL")
    );
}

// ---- limits ----------------------------------------------------------------

#[test]
fn inode_numbers_run_out_cleanly() {
    let mut f = Fixture::new();
    f.holt.next_local = InodeId::MAX_LOCAL;
    let last = f.ok_attr(create("/last"));
    assert_eq!(last.inode.local(), InodeId::MAX_LOCAL);
    f.err_unchanged(create("/more"), "ENOSPC");
    f.ok(unlink("/last"));
    f.holt.next_local = InodeId::MAX_LOCAL;
    // mkdir -p needing two inodes with one left creates neither.
    f.err_unchanged(mkdir_p("/x/y"), "ENOSPC");
    f.ok(mkdir_p("/x"));
}

#[test]
fn nonsense_ids_never_panic() {
    let mut f = Fixture::new();
    for (id, code) in [
        (InodeId(0), "ENOENT"),
        (InodeId(u64::MAX), "WRONG_SHARD"),
        (InodeId::compose(ShardId(u16::MAX), 1), "WRONG_SHARD"),
    ] {
        let ops = [
            Op::Link {
                inode: InodeRef::Id(id),
                at: path("/x"),
            },
            Op::SetAttr {
                inode: InodeRef::Id(id),
                set: SetAttr::default(),
            },
            create_at(EntryRef::Child {
                parent: id,
                name: "x".into(),
            }),
            Op::Rename {
                from: EntryRef::Child {
                    parent: id,
                    name: "x".into(),
                },
                to: path("/y"),
                mode: RenameMode::Replace,
            },
        ];
        for op in ops {
            f.err_unchanged(op, code);
        }
    }
}

#[test]
fn a_missing_parent_is_named_in_the_error() {
    let mut f = Fixture::new();
    f.ok(mkdir("/a"));
    let message = |f: &mut Fixture, op: Op| match f.run(op) {
        Err(e) => (e.code(), e.to_string()),
        Ok(applied) => panic!("unexpectedly succeeded: {applied:?}"),
    };
    let (code, text) = message(&mut f, create("/a/b/c"));
    assert_eq!(code, "ENOENT");
    assert!(
        text.contains("/a/b/c (directory /a/b does not exist)"),
        "{text}"
    );
    let (_, text) = message(&mut f, mkdir("/x/y/z"));
    assert!(text.contains("(directory /x does not exist)"), "{text}");
    // Through a symlink the path is no longer a prefix: the name is given.
    f.ok(symlink("/a/l", "/a"));
    let (_, text) = message(&mut f, create("/a/l/q/r"));
    assert!(text.contains("(directory \"q\" does not exist)"), "{text}");
    // The final component missing is the plain error.
    let (code, _) = message(&mut f, unlink("/a/nope"));
    assert_eq!(code, "ENOENT");
}
