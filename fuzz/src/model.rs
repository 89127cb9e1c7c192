//! The structure-aware input of the `apply` target: a short program of
//! steps over a handful of names, paths and ids, so that most commands
//! hit real code paths (an existing directory, a staged upload that
//! exists, a block key under the right prefix) while some deliberately do
//! not (a missing parent, a foreign shard, a bad key, a stale epoch).
//!
//! [`run`] applies the program to a fresh engine one command at a time and
//! checks after every step that the engine's invariants hold; between
//! steps it also asks queries and watch reads (which must not panic
//! either), re-sends old commands (which must get their remembered
//! outcome), and at the end checks the image round trip.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use nokv_holt::{
    BlockRef, BodySpec, Command, EntryRef, Epoch, FieldSet, FieldValue, FsError, Generation, Holt,
    HoltConfig, IndexKey, IndexRange, IndexedCommit, InodeId, InodeRef, LogIndex, Op, PublishMode,
    Query, QueryResult, RenameMode, RequestId, Role, SetAttr, ShardId, SnapshotId, StagedUpload,
    UploadId, XattrFlag,
};

use crate::sample::SHA;
use crate::{assert_image_round_trip, assert_invariants};

/// Most steps one input runs (longer inputs are cut).
pub const MAX_STEPS: usize = 48;

/// Known issue, found by this target (docs/security.md, "Fuzzing"): a
/// commit that keeps the leading blocks of a body *newer* than its own
/// upload (an upsert begun before another commit, appending to that
/// commit's body) is accepted, and leaves a state whose own image does not
/// decode ("a block key is outside its generation's prefix"). Fixed in
/// the engine (`check_kept` refuses such a commit); `false`, so the model
/// generates these commits and the target checks that they are refused
/// cleanly. `true` narrows the model again.
pub const SKIP_APPEND_TO_A_NEWER_BODY: bool = false;

/// Paths the steps name. `/s` tends to become a symlink (to `/a`), `/g`
/// a graft point; the rest are directories and files, some nested, some
/// below a symlink or a graft, and a few invalid on purpose.
const PATHS: [&str; 16] = [
    "/", "/a", "/b", "/a/c", "/a/d", "/b/e", "/a/c/f", "/s", "/s/c", "/g", "/g/x", "/b/e/f",
    "/a/../b", "a", "/a//c", "/b/",
];
/// Names in (directory, name) references.
const NAMES: [&str; 10] = ["a", "b", "c", "d", "e", "f", "s", "g", ".", ".."];
/// Symlink targets: absolute, relative, `..`, loops, dangling.
const TARGETS: [&str; 8] = [
    "/a", "a", "../b", "/s", "c/f", "/g/x", "/missing", "/s/../s",
];
/// Xattr names (one invalid).
const XATTRS: [&str; 4] = ["user.a", "user.b", "trusted.c", ""];
/// Shards for grafts and inode ids (ours is 0 or 7).
const SHARDS: [u16; 4] = [0, 1, 7, 9];
/// Field names of indexed bodies.
const FIELDS: [&str; 3] = ["kind", "n", ""];
/// Token roles and labels (one label invalid).
const ROLES: [Role; 3] = [Role::Read, Role::Write, Role::Admin];
const LABELS: [&str; 3] = ["", "ci", "bad\nlabel"];

fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[usize::from(i) % list.len()]
}

/// An entry: a path, or a name in a directory given by inode number.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Entry {
    Path(u8),
    Child { parent: u8, name: u8 },
}

/// An inode: by path, or by number (in our shard, or another's).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Inode {
    Path(u8),
    Id { shard: u8, local: u8 },
}

/// A publish predicate; `Current` means the generation the target has now.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Mode {
    CreateOnly,
    Replace {
        current: bool,
        raw: u8,
    },
    Upsert,
    Inode {
        inode: Inode,
        current: bool,
        raw: u8,
    },
}

/// Which staged upload a step names: by position among the live ones, or
/// a raw id (usually unknown).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Upload {
    Live(u8),
    Raw(u8),
}

/// A block key: under the upload's prefix (the normal case) or not.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Key {
    Own,
    /// Under another staged upload's prefix.
    Other(u8),
    /// A key of some live body.
    Live(u8),
    /// Not a valid key at all.
    Traversal,
}

/// The body a commit sends.
#[derive(Arbitrary, Debug, Clone)]
pub struct Body {
    /// Leading blocks of the target's current body to keep (an append).
    keep: u8,
    /// Sizes of the new blocks (0 is invalid).
    blocks: Vec<(u8, Key)>,
    /// Send a wrong total size or digest.
    wrong_size: bool,
    wrong_sha: bool,
}

/// One typed field value.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Value {
    Bool(bool),
    Int(i8),
    Float(i8),
    NotFinite,
    Str(u8),
}

/// A field set: (field name, value) pairs.
pub type Fields = Vec<(u8, Value)>;

#[derive(Arbitrary, Debug, Clone)]
pub enum Leaf {
    GetAttr(Inode),
    ReadDir {
        dir: Inode,
        after: Option<u8>,
        limit: u8,
        bodies: bool,
    },
    ReadLink(Inode),
    GetXattr(Inode, u8),
    ListXattr(Inode),
    ReadBody(Inode),
    Lookup {
        parent: u8,
        name: u8,
    },
    ListUploads,
    ListSnapshots,
    Grafts,
    RetiredBody(Inode, u8),
    FindIndexed {
        dir: Inode,
        field: u8,
        lo: Option<Value>,
        hi: Option<Value>,
        prefix: Option<u8>,
        limit: u8,
    },
    IndexedFields(Inode),
}

/// One step of a program.
#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    Mkdir {
        at: Entry,
        parents: bool,
        mode: u16,
    },
    Create {
        at: Entry,
        mode: u16,
    },
    Symlink {
        at: Entry,
        target: u8,
    },
    Link {
        inode: Inode,
        at: Entry,
    },
    Unlink(Entry),
    Rmdir(Entry),
    Rename {
        from: Entry,
        to: Entry,
        no_replace: bool,
    },
    SetAttr {
        inode: Inode,
        mode: Option<u16>,
        uid: Option<u8>,
        size: Option<u16>,
        mtime: Option<u16>,
    },
    SetXattr {
        inode: Inode,
        name: u8,
        value: Vec<u8>,
        flag: u8,
    },
    RemoveXattr {
        inode: Inode,
        name: u8,
    },
    BeginPublish {
        at: Entry,
        mode: Mode,
        lease: u16,
        file_mode: u16,
    },
    Commit {
        upload: Upload,
        body: Body,
        fields: Option<Fields>,
    },
    CommitBatch {
        commits: Vec<(Upload, Body, Option<Fields>)>,
        indexed: bool,
    },
    Abort(Upload),
    Renew {
        upload: Upload,
        lease: u16,
    },
    ExpireUploads {
        ahead: u16,
    },
    GcDone {
        seqs: Vec<u8>,
    },
    CreateSnapshot {
        path: u8,
        lease: u16,
    },
    RenewSnapshot {
        id: u8,
        lease: u16,
    },
    RemoveSnapshot(u8),
    ExpireSnapshots {
        ahead: u16,
    },
    SetWatchRetention {
        max_events: u8,
        max_age: u16,
    },
    CreateGraft {
        at: Entry,
        shard: u8,
    },
    RemoveGraft {
        at: Entry,
        shard: u8,
    },
    /// An access token (kept by shard 0 only; ours may be another).
    CreateToken {
        id: u8,
        role: u8,
        label: u8,
    },
    RevokeToken(u8),
    /// Re-send an earlier command with its request id.
    Retry(u8),
    /// A new leader: the epoch advances.
    AdvanceEpoch,
    /// Let time pass (leases run out).
    Tick(u16),
    /// A read; `at` reads at a snapshot.
    Query {
        leaf: Leaf,
        at: Option<u8>,
    },
    /// A watch read of the history.
    Watch {
        path: u8,
        recursive: bool,
        back: u8,
        limit: u8,
    },
}

/// Which epoch a command carries.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum EpochUse {
    None,
    Current,
    Stale,
}

/// A whole program.
#[derive(Debug)]
pub struct Program {
    pub other_shard: bool,
    pub dedupe_capacity: u8,
    pub steps: Vec<(Step, EpochUse)>,
}

impl<'a> Arbitrary<'a> for Program {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let other_shard = u.arbitrary()?;
        let dedupe_capacity = u.arbitrary()?;
        let mut steps = Vec::new();
        while steps.len() < MAX_STEPS && !u.is_empty() {
            steps.push(u.arbitrary()?);
        }
        Ok(Program {
            other_shard,
            dedupe_capacity,
            steps,
        })
    }
}

/// The engine under test and the log around it.
struct Run {
    holt: Holt,
    shard: ShardId,
    index: u64,
    request: u128,
    time: u64,
    /// Every command applied, for `Retry`.
    sent: Vec<Command>,
}

/// Lease lengths are multiples of 1 µs, so that `Tick` can outrun them;
/// 0 is invalid.
fn lease(units: u16) -> u64 {
    u64::from(units) * 1_000
}

impl Run {
    fn entry(&self, e: Entry) -> EntryRef {
        match e {
            Entry::Path(p) => EntryRef::Path(pick(&PATHS, p).into()),
            Entry::Child { parent, name } => EntryRef::Child {
                parent: InodeId::compose(self.shard, u64::from(parent % 16)),
                name: pick(&NAMES, name).into(),
            },
        }
    }

    fn inode(&self, i: Inode) -> InodeRef {
        match i {
            Inode::Path(p) => InodeRef::Path(pick(&PATHS, p).into()),
            Inode::Id { shard, local } => {
                let shard = if shard % 4 == 0 {
                    ShardId(pick(&SHARDS, shard / 4))
                } else {
                    self.shard
                };
                InodeRef::Id(InodeId::compose(shard, u64::from(local % 16)))
            }
        }
    }

    /// The generation the inode `r` has now (0 if none or unknown).
    fn generation_of(&self, r: InodeRef) -> Generation {
        match self.holt.query(&Query::GetAttr { inode: r }) {
            Ok(QueryResult::Attr(attr)) => attr.generation,
            _ => Generation(0),
        }
    }

    fn entry_as_inode(&self, e: &EntryRef) -> InodeRef {
        match e {
            EntryRef::Path(p) => InodeRef::Path(p.clone()),
            EntryRef::Child { parent, name } => {
                match self.holt.query(&Query::Lookup {
                    parent: *parent,
                    name: name.clone(),
                }) {
                    Ok(QueryResult::Attr(attr)) => InodeRef::Id(attr.inode),
                    _ => InodeRef::Id(InodeId(0)),
                }
            }
        }
    }

    fn mode(&self, m: Mode, at: &EntryRef) -> PublishMode {
        let expected = |current: bool, raw: u8, inode: InodeRef| {
            if current {
                self.generation_of(inode)
            } else {
                Generation(u64::from(raw % 8))
            }
        };
        match m {
            Mode::CreateOnly => PublishMode::CreateOnly,
            Mode::Upsert => PublishMode::Upsert,
            Mode::Replace { current, raw } => PublishMode::Replace {
                expected: expected(current, raw, self.entry_as_inode(at)),
            },
            Mode::Inode {
                inode,
                current,
                raw,
            } => {
                let inode = match self.inode(inode) {
                    InodeRef::Id(id) => id,
                    path @ InodeRef::Path(_) => {
                        match self.holt.query(&Query::GetAttr { inode: path }) {
                            Ok(QueryResult::Attr(attr)) => attr.inode,
                            _ => InodeId::compose(self.shard, 3),
                        }
                    }
                };
                PublishMode::Inode {
                    inode,
                    expected: expected(current, raw, InodeRef::Id(inode)),
                }
            }
        }
    }

    fn upload(&self, u: Upload) -> (UploadId, Option<StagedUpload>) {
        match u {
            Upload::Live(i) => {
                let live = self.holt.staged_uploads();
                match live.get(usize::from(i) % live.len().max(1)) {
                    Some(upload) => (upload.id, Some(upload.clone())),
                    None => (UploadId(u64::from(i)), None),
                }
            }
            Upload::Raw(i) => (UploadId(u64::from(i)), None),
        }
    }

    /// The body a commit of `upload` sends.
    fn body(&self, upload: Option<&StagedUpload>, b: &Body) -> BodySpec {
        let mut blocks: Vec<BlockRef> = Vec::new();
        if let Some(upload) = upload {
            if b.keep > 0 {
                if let Ok(QueryResult::Body {
                    body: Some(body), ..
                }) = self.holt.query(&Query::ReadBody {
                    inode: InodeRef::Id(upload.inode),
                }) {
                    blocks.extend(body.blocks.into_iter().take(usize::from(b.keep % 4)));
                }
            }
        }
        let own = upload.map_or_else(|| "blocks/0/2/1/".to_string(), StagedUpload::key_prefix);
        for (i, (size, key)) in b.blocks.iter().take(4).enumerate() {
            let key = match key {
                Key::Own => format!("{own}b{i}"),
                Key::Other(j) => {
                    let live = self.holt.staged_uploads();
                    match live.get(usize::from(*j) % live.len().max(1)) {
                        Some(other) => format!("{}b{i}", other.key_prefix()),
                        None => format!("{own}b{i}"),
                    }
                }
                Key::Live(j) => {
                    let live = self.holt.live_blocks();
                    match live.get(usize::from(*j) % live.len().max(1)) {
                        Some((_, _, block)) => block.key.clone(),
                        None => format!("{own}b{i}"),
                    }
                }
                Key::Traversal => format!("{own}../b{i}"),
            };
            blocks.push(BlockRef {
                key,
                size: u64::from(*size),
            });
        }
        if let Some(upload) = upload {
            if SKIP_APPEND_TO_A_NEWER_BODY && self.replaces_a_newer_body(upload) {
                // Keep nothing: only this upload's own blocks.
                let prefix = upload.key_prefix();
                blocks.retain(|b| b.key.starts_with(&prefix) && b.key.len() > prefix.len());
            }
        }
        let size: u64 = blocks.iter().map(|block| block.size).sum();
        BodySpec {
            size: if b.wrong_size { size + 1 } else { size },
            blocks,
            sha256: if b.wrong_sha {
                "not hex".into()
            } else {
                SHA.into()
            },
            content_type: "application/octet-stream".into(),
            producer: "fuzz".into(),
            attrs: BTreeMap::from([("k".to_string(), "v".to_string())]),
        }
    }

    /// Whether the body a commit of `upload` would replace (the file
    /// `check_kept` in `holt/src/engine/publish.rs` compares kept blocks
    /// with) is newer than the upload: see [`SKIP_APPEND_TO_A_NEWER_BODY`].
    fn replaces_a_newer_body(&self, upload: &StagedUpload) -> bool {
        let file = match upload.mode {
            PublishMode::Inode { inode, .. } => Some(inode),
            PublishMode::CreateOnly => None,
            PublishMode::Replace { .. } | PublishMode::Upsert => {
                match self.holt.query(&Query::Lookup {
                    parent: upload.parent,
                    name: upload.name.clone(),
                }) {
                    Ok(QueryResult::Attr(attr)) => Some(attr.inode),
                    _ => None,
                }
            }
        };
        file.is_some_and(|inode| self.generation_of(InodeRef::Id(inode)) > upload.generation)
    }

    fn fields(&self, fields: &Fields) -> FieldSet {
        let mut set = FieldSet::new();
        for (name, value) in fields.iter().take(6) {
            set.entry(pick(&FIELDS, *name).to_string())
                .or_default()
                .push(field_value(*value));
        }
        set
    }

    fn snapshot_id(&self, i: u8) -> SnapshotId {
        let live = self.holt.snapshots();
        if i < 128 {
            if let Some(info) = live.get(usize::from(i) % live.len().max(1)) {
                return info.id;
            }
        }
        SnapshotId(u64::from(i % 8))
    }

    /// The op of a command step; `None` for the steps that send none.
    fn op(&self, step: &Step) -> Option<Op> {
        Some(match step {
            Step::Mkdir { at, parents, mode } => Op::Mkdir {
                at: self.entry(*at),
                mode: u32::from(*mode),
                uid: 1,
                gid: 2,
                parents: *parents,
            },
            Step::Create { at, mode } => Op::Create {
                at: self.entry(*at),
                mode: u32::from(*mode),
                uid: 1,
                gid: 2,
            },
            Step::Symlink { at, target } => Op::Symlink {
                at: self.entry(*at),
                target: pick(&TARGETS, *target).into(),
                uid: 1,
                gid: 2,
            },
            Step::Link { inode, at } => Op::Link {
                inode: self.inode(*inode),
                at: self.entry(*at),
            },
            Step::Unlink(at) => Op::Unlink {
                at: self.entry(*at),
            },
            Step::Rmdir(at) => Op::Rmdir {
                at: self.entry(*at),
            },
            Step::Rename {
                from,
                to,
                no_replace,
            } => Op::Rename {
                from: self.entry(*from),
                to: self.entry(*to),
                mode: if *no_replace {
                    RenameMode::NoReplace
                } else {
                    RenameMode::Replace
                },
            },
            Step::SetAttr {
                inode,
                mode,
                uid,
                size,
                mtime,
            } => Op::SetAttr {
                inode: self.inode(*inode),
                set: SetAttr {
                    mode: mode.map(u32::from),
                    uid: uid.map(u32::from),
                    gid: None,
                    size: size.map(u64::from),
                    mtime_ns: mtime.map(u64::from),
                },
            },
            Step::SetXattr {
                inode,
                name,
                value,
                flag,
            } => Op::SetXattr {
                inode: self.inode(*inode),
                name: pick(&XATTRS, *name).into(),
                value: value.iter().copied().take(16).collect(),
                flag: pick(
                    &[XattrFlag::Upsert, XattrFlag::Create, XattrFlag::Replace],
                    *flag,
                ),
            },
            Step::RemoveXattr { inode, name } => Op::RemoveXattr {
                inode: self.inode(*inode),
                name: pick(&XATTRS, *name).into(),
            },
            Step::BeginPublish {
                at,
                mode,
                lease: units,
                file_mode,
            } => {
                let at = self.entry(*at);
                Op::BeginPublish {
                    mode: self.mode(*mode, &at),
                    at,
                    lease_ns: lease(*units),
                    file_mode: u32::from(*file_mode),
                    uid: 1,
                    gid: 2,
                }
            }
            Step::Commit {
                upload,
                body,
                fields,
            } => {
                let (id, staged) = self.upload(*upload);
                let body = self.body(staged.as_ref(), body);
                match fields {
                    None => Op::CommitPublish { upload: id, body },
                    Some(fields) => Op::CommitPublishIndexed {
                        commits: vec![IndexedCommit {
                            upload: id,
                            body,
                            fields: self.fields(fields),
                        }],
                    },
                }
            }
            Step::CommitBatch { commits, indexed } => {
                let commits = commits.iter().take(4).map(|(upload, body, fields)| {
                    let (id, staged) = self.upload(*upload);
                    let fields = fields.as_ref().map(|f| self.fields(f));
                    (id, self.body(staged.as_ref(), body), fields)
                });
                if *indexed {
                    Op::CommitPublishIndexed {
                        commits: commits
                            .map(|(upload, body, fields)| IndexedCommit {
                                upload,
                                body,
                                fields: fields.unwrap_or_default(),
                            })
                            .collect(),
                    }
                } else {
                    Op::CommitPublishBatch {
                        commits: commits.map(|(id, body, _)| (id, body)).collect(),
                    }
                }
            }
            Step::Abort(upload) => Op::AbortPublish {
                upload: self.upload(*upload).0,
            },
            Step::Renew {
                upload,
                lease: units,
            } => Op::RenewUpload {
                upload: self.upload(*upload).0,
                lease_ns: lease(*units),
            },
            Step::ExpireUploads { ahead } => Op::ExpireUploads {
                now_ns: self.time + lease(*ahead),
            },
            Step::GcDone { seqs } => {
                let tasks = self.holt.all_gc_tasks();
                Op::GcDone {
                    seqs: seqs
                        .iter()
                        .take(8)
                        .map(|&i| match tasks.get(usize::from(i) % tasks.len().max(1)) {
                            Some(task) if i < 200 => task.seq,
                            _ => u64::from(i),
                        })
                        .collect(),
                }
            }
            Step::CreateSnapshot { path, lease: units } => Op::CreateSnapshot {
                path: pick(&PATHS, *path).into(),
                lease_ns: lease(*units),
            },
            Step::RenewSnapshot { id, lease: units } => Op::RenewSnapshot {
                id: self.snapshot_id(*id),
                lease_ns: lease(*units),
            },
            Step::RemoveSnapshot(id) => Op::RemoveSnapshot {
                id: self.snapshot_id(*id),
            },
            Step::ExpireSnapshots { ahead } => Op::ExpireSnapshots {
                now_ns: self.time + lease(*ahead),
            },
            Step::SetWatchRetention {
                max_events,
                max_age,
            } => Op::SetWatchRetention {
                max_events: u64::from(*max_events),
                max_age_ns: lease(*max_age),
            },
            Step::CreateGraft { at, shard } => Op::CreateGraft {
                at: self.entry(*at),
                shard: ShardId(pick(&SHARDS, *shard)),
            },
            Step::RemoveGraft { at, shard } => Op::RemoveGraft {
                at: self.entry(*at),
                shard: ShardId(pick(&SHARDS, *shard)),
            },
            Step::CreateToken { id, role, label } => Op::CreateToken {
                id: u64::from(*id % 4),
                secret_sha256: [*id; 32],
                role: pick(&ROLES, *role),
                label: pick(&LABELS, *label).to_string(),
            },
            Step::RevokeToken(id) => Op::RevokeToken {
                id: u64::from(*id % 4),
            },
            Step::Retry(_)
            | Step::AdvanceEpoch
            | Step::Tick(_)
            | Step::Query { .. }
            | Step::Watch { .. } => return None,
        })
    }

    fn query(&self, leaf: &Leaf) -> Query {
        match leaf {
            Leaf::GetAttr(i) => Query::GetAttr {
                inode: self.inode(*i),
            },
            Leaf::ReadDir {
                dir,
                after,
                limit,
                bodies,
            } => {
                let dir = self.inode(*dir);
                let after = after.map(|n| pick(&NAMES, n).to_string());
                let limit = u32::from(*limit % 4);
                if *bodies {
                    Query::ReadDirBodies { dir, after, limit }
                } else {
                    Query::ReadDir { dir, after, limit }
                }
            }
            Leaf::ReadLink(i) => Query::ReadLink {
                inode: self.inode(*i),
            },
            Leaf::GetXattr(i, name) => Query::GetXattr {
                inode: self.inode(*i),
                name: pick(&XATTRS, *name).into(),
            },
            Leaf::ListXattr(i) => Query::ListXattr {
                inode: self.inode(*i),
            },
            Leaf::ReadBody(i) => Query::ReadBody {
                inode: self.inode(*i),
            },
            Leaf::Lookup { parent, name } => Query::Lookup {
                parent: InodeId::compose(self.shard, u64::from(parent % 16)),
                name: pick(&NAMES, *name).into(),
            },
            Leaf::ListUploads => Query::ListUploads,
            Leaf::ListSnapshots => Query::ListSnapshots,
            Leaf::Grafts => Query::Grafts,
            Leaf::RetiredBody(i, generation) => Query::RetiredBody {
                inode: self.inode(*i),
                generation: Generation(u64::from(*generation % 16)),
            },
            Leaf::FindIndexed {
                dir,
                field,
                lo,
                hi,
                prefix,
                limit,
            } => Query::FindIndexed {
                dir: self.inode(*dir),
                field: pick(&FIELDS, *field).into(),
                range: match prefix {
                    Some(p) => IndexRange::Prefix(pick(&["", "d", "do", "x"], *p).into()),
                    None => IndexRange::Between {
                        lo: lo.map(|v| field_value(v).key()),
                        hi: hi.map(|v| field_value(v).key()),
                    },
                },
                after: None,
                limit: u32::from(*limit % 4),
            },
            Leaf::IndexedFields(i) => Query::IndexedFields {
                dir: self.inode(*i),
            },
        }
    }

    /// Reads every page of a query (following `next`), as a client would;
    /// each page must continue strictly after the previous one.
    fn read_all(&self, first: Query) {
        let mut q = first;
        let mut last: Option<Next> = None;
        for _ in 0..10_000 {
            let next = match self.holt.query_at(&q, self.time) {
                Ok(QueryResult::Dir { next: Some(n), .. })
                | Ok(QueryResult::DirBodies { next: Some(n), .. }) => Next::Name(n),
                Ok(QueryResult::Indexed { next: Some(n), .. }) => Next::Key(n),
                _ => return,
            };
            if last.as_ref().is_some_and(|last| next <= *last) {
                panic!("a listing does not advance: {q:?}");
            }
            let Some(advanced) = advance(&q, next.clone()) else {
                return;
            };
            last = Some(next);
            q = advanced;
        }
        panic!("a listing did not end after 10,000 pages: {q:?}");
    }

    fn apply(&mut self, cmd: Command) {
        self.index += 1;
        let remembered = self.holt.remembered(cmd.request_id).cloned();
        let before = self.holt.stats();
        let outcome = self.holt.apply(LogIndex(self.index), &cmd);
        if let Some(first) = remembered {
            assert!(
                outcome == first,
                "a retried request did not get its first outcome"
            );
        } else if cmd.epoch.is_some_and(|e| e != before.epoch) {
            assert!(
                matches!(outcome, Err(FsError::StaleEpoch { .. })),
                "a command of another epoch was not refused: {outcome:?}"
            );
            let mut after = self.holt.stats();
            after.last_applied = before.last_applied;
            assert!(after == before, "a refused command changed the state");
        }
        self.sent.push(cmd);
    }
}

fn field_value(v: Value) -> FieldValue {
    match v {
        Value::Bool(b) => FieldValue::Bool(b),
        Value::Int(i) => FieldValue::Int(i64::from(i)),
        Value::Float(f) => FieldValue::Float((f64::from(f) / 4.0).to_bits()),
        Value::NotFinite => FieldValue::Float(f64::NAN.to_bits()),
        Value::Str(s) => FieldValue::Str(pick(&["doc", "dog", "", "x"], s).into()),
    }
}

/// Where the next page of a listing starts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Next {
    Name(String),
    Key((IndexKey, InodeId)),
}

/// `q` continued after `next`, or `None` if `next` does not fit `q`.
fn advance(q: &Query, next: Next) -> Option<Query> {
    Some(match (q, next) {
        (Query::ReadDir { dir, limit, .. }, Next::Name(n)) => Query::ReadDir {
            dir: dir.clone(),
            after: Some(n),
            limit: *limit,
        },
        (Query::ReadDirBodies { dir, limit, .. }, Next::Name(n)) => Query::ReadDirBodies {
            dir: dir.clone(),
            after: Some(n),
            limit: *limit,
        },
        (
            Query::FindIndexed {
                dir,
                field,
                range,
                limit,
                ..
            },
            Next::Key(k),
        ) => Query::FindIndexed {
            dir: dir.clone(),
            field: field.clone(),
            range: range.clone(),
            after: Some(k),
            limit: *limit,
        },
        (Query::AtSnapshot { snapshot, query }, next) => Query::AtSnapshot {
            snapshot: *snapshot,
            query: Box::new(advance(query, next)?),
        },
        _ => return None,
    })
}

/// Runs `program` against a fresh engine; panics on any broken property.
pub fn run(program: &Program) {
    let shard = if program.other_shard {
        ShardId(7)
    } else {
        ShardId(0)
    };
    let mut run = Run {
        holt: Holt::new(HoltConfig {
            shard,
            dedupe_capacity: usize::from(program.dedupe_capacity % 16),
        }),
        shard,
        index: 0,
        request: 0,
        time: 1_000_000,
        sent: Vec::new(),
    };
    for (n, (step, epoch)) in program.steps.iter().enumerate() {
        run.time += 1;
        match step {
            Step::Retry(back) => {
                if let Some(cmd) = run
                    .sent
                    .len()
                    .checked_sub(1 + usize::from(*back))
                    .and_then(|i| run.sent.get(i))
                    .cloned()
                {
                    run.apply(cmd);
                }
            }
            Step::AdvanceEpoch => {
                run.index += 1;
                run.holt.advance_epoch(LogIndex(run.index));
            }
            Step::Tick(units) => run.time += lease(*units),
            Step::Query { leaf, at } => {
                let query = run.query(leaf);
                let query = match at {
                    Some(i) => Query::AtSnapshot {
                        snapshot: run.snapshot_id(*i),
                        query: Box::new(query),
                    },
                    None => query,
                };
                run.read_all(query);
            }
            Step::Watch {
                path,
                recursive,
                back,
                limit,
            } => {
                let after = run.holt.newest_cursor().saturating_sub(u64::from(*back));
                let _ = run.holt.events(
                    after,
                    pick(&PATHS, *path),
                    *recursive,
                    u32::from(*limit % 8),
                );
            }
            step => {
                let Some(op) = run.op(step) else { continue };
                run.request += 1;
                let epoch = match epoch {
                    EpochUse::None => None,
                    EpochUse::Current => Some(run.holt.epoch()),
                    EpochUse::Stale => Some(Epoch(run.holt.epoch().0.saturating_sub(1))),
                };
                let cmd = Command {
                    request_id: RequestId(run.request),
                    epoch,
                    time_ns: run.time,
                    op,
                };
                run.apply(cmd);
            }
        }
        assert_invariants(&run.holt, &format!("after step {n} ({step:?})"));
    }
    assert_image_round_trip(&run.holt, "the final state");
    // Whatever the program did, the housekeeping that ends every lease and
    // drains the GC queue leaves a consistent state too.
    for op in [
        Op::ExpireUploads { now_ns: u64::MAX },
        Op::ExpireSnapshots { now_ns: u64::MAX },
    ] {
        run.request += 1;
        let cmd = Command {
            request_id: RequestId(run.request),
            epoch: None,
            time_ns: run.time,
            op,
        };
        run.apply(cmd);
    }
    let seqs = run.holt.all_gc_tasks().iter().map(|t| t.seq).collect();
    run.request += 1;
    let cmd = Command {
        request_id: RequestId(run.request),
        epoch: None,
        time_ns: run.time,
        op: Op::GcDone { seqs },
    };
    run.apply(cmd);
    assert_invariants(&run.holt, "after expiring everything");
    assert!(
        run.holt.staged_uploads().is_empty()
            && run.holt.snapshots().is_empty()
            && run.holt.all_gc_tasks().is_empty(),
        "expiring every lease and finishing every GC task left something behind"
    );
}
