//! `From`/`TryFrom` between wire messages and Holt domain types. This is the
//! only place that knows both shapes; everything else uses one or the other.

use nokv_holt as holt;

use crate::pb;
use crate::pb::mutate_request::Op as PbOp;
use crate::pb::query_request::Query as PbQuery;
use crate::pb::query_response::Result as PbQueryResult;

/// A wire message is missing a field or holds a value outside its domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("invalid field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

mod fields;
use fields::{
    cursor_from_wire, cursor_to_wire, field_set_from_wire, field_set_to_wire,
    indexed_page_from_wire, indexed_page_to_wire, range_from_wire, range_to_wire,
};

fn invalid(field: &'static str, reason: impl Into<String>) -> WireError {
    WireError::Invalid {
        field,
        reason: reason.into(),
    }
}

// ----- ids ------------------------------------------------------------------

/// A 16-byte request id from the wire.
pub fn request_id_from_bytes(bytes: &[u8]) -> Result<holt::RequestId, WireError> {
    let arr: [u8; 16] = bytes
        .try_into()
        .map_err(|_| invalid("request_id", format!("want 16 bytes, got {}", bytes.len())))?;
    Ok(holt::RequestId(u128::from_be_bytes(arr)))
}

pub fn request_id_to_bytes(id: holt::RequestId) -> Vec<u8> {
    id.0.to_be_bytes().to_vec()
}

// ----- addressing -----------------------------------------------------------

impl From<holt::EntryRef> for pb::EntryRef {
    fn from(r: holt::EntryRef) -> Self {
        let kind = match r {
            holt::EntryRef::Path(p) => pb::entry_ref::Kind::Path(p),
            holt::EntryRef::Child { parent, name } => pb::entry_ref::Kind::Child(pb::ChildRef {
                parent: parent.0,
                name,
            }),
        };
        pb::EntryRef { kind: Some(kind) }
    }
}

fn entry_ref(r: Option<pb::EntryRef>, field: &'static str) -> Result<holt::EntryRef, WireError> {
    match r.and_then(|r| r.kind).ok_or(WireError::Missing(field))? {
        pb::entry_ref::Kind::Path(p) => Ok(holt::EntryRef::Path(p)),
        pb::entry_ref::Kind::Child(c) => Ok(holt::EntryRef::Child {
            parent: holt::InodeId(c.parent),
            name: c.name,
        }),
    }
}

impl From<holt::InodeRef> for pb::InodeRef {
    fn from(r: holt::InodeRef) -> Self {
        let kind = match r {
            holt::InodeRef::Path(p) => pb::inode_ref::Kind::Path(p),
            holt::InodeRef::Id(id) => pb::inode_ref::Kind::Id(id.0),
        };
        pb::InodeRef { kind: Some(kind) }
    }
}

fn inode_ref(r: Option<pb::InodeRef>, field: &'static str) -> Result<holt::InodeRef, WireError> {
    match r.and_then(|r| r.kind).ok_or(WireError::Missing(field))? {
        pb::inode_ref::Kind::Path(p) => Ok(holt::InodeRef::Path(p)),
        pb::inode_ref::Kind::Id(id) => Ok(holt::InodeRef::Id(holt::InodeId(id))),
    }
}

// ----- attributes -----------------------------------------------------------

impl From<holt::FileType> for pb::FileType {
    fn from(t: holt::FileType) -> Self {
        match t {
            holt::FileType::File => pb::FileType::File,
            holt::FileType::Directory => pb::FileType::Directory,
            holt::FileType::Symlink => pb::FileType::Symlink,
        }
    }
}

impl From<pb::FileType> for holt::FileType {
    fn from(t: pb::FileType) -> Self {
        match t {
            pb::FileType::File => holt::FileType::File,
            pb::FileType::Directory => holt::FileType::Directory,
            pb::FileType::Symlink => holt::FileType::Symlink,
        }
    }
}

impl From<holt::Attr> for pb::Attr {
    fn from(a: holt::Attr) -> Self {
        pb::Attr {
            inode: a.inode.0,
            file_type: pb::FileType::from(a.file_type) as i32,
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            nlink: a.nlink,
            size: a.size,
            generation: a.generation.0,
            mtime_ns: a.mtime_ns,
            ctime_ns: a.ctime_ns,
            version: a.version.0,
        }
    }
}

impl TryFrom<pb::Attr> for holt::Attr {
    type Error = WireError;
    fn try_from(a: pb::Attr) -> Result<Self, WireError> {
        let file_type = pb::FileType::try_from(a.file_type)
            .map_err(|_| invalid("file_type", format!("unknown value {}", a.file_type)))?;
        Ok(holt::Attr {
            inode: holt::InodeId(a.inode),
            file_type: file_type.into(),
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            nlink: a.nlink,
            size: a.size,
            generation: holt::Generation(a.generation),
            mtime_ns: a.mtime_ns,
            ctime_ns: a.ctime_ns,
            version: holt::LogIndex(a.version),
        })
    }
}

fn attr(a: Option<pb::Attr>, field: &'static str) -> Result<holt::Attr, WireError> {
    holt::Attr::try_from(a.ok_or(WireError::Missing(field))?)
}

// ----- mutations ------------------------------------------------------------

/// A decoded `MutateRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    pub request_id: holt::RequestId,
    pub epoch: Option<holt::Epoch>,
    pub op: holt::Op,
}

impl TryFrom<pb::MutateRequest> for Mutation {
    type Error = WireError;
    fn try_from(req: pb::MutateRequest) -> Result<Self, WireError> {
        let request_id = request_id_from_bytes(&req.request_id)?;
        let epoch = (req.epoch != 0).then_some(holt::Epoch(req.epoch));
        let op = op_from_wire(req.op.ok_or(WireError::Missing("op"))?)?;
        Ok(Mutation {
            request_id,
            epoch,
            op,
        })
    }
}

impl TryFrom<Mutation> for pb::MutateRequest {
    type Error = WireError;
    fn try_from(m: Mutation) -> Result<Self, WireError> {
        Ok(pb::MutateRequest {
            request_id: request_id_to_bytes(m.request_id),
            epoch: m.epoch.map_or(0, |e| e.0),
            op: Some(op_to_wire(m.op)?),
            // Shard and map revision are routing, not part of the mutation:
            // the client sets them.
            shard: 0,
            map_revision: 0,
        })
    }
}

fn rename_mode(v: i32) -> Result<holt::RenameMode, WireError> {
    match pb::RenameMode::try_from(v) {
        Ok(pb::RenameMode::Replace) => Ok(holt::RenameMode::Replace),
        Ok(pb::RenameMode::NoReplace) => Ok(holt::RenameMode::NoReplace),
        Err(_) => Err(invalid("mode", format!("unknown rename mode {v}"))),
    }
}

fn xattr_flag(v: i32) -> Result<holt::XattrFlag, WireError> {
    match pb::XattrFlag::try_from(v) {
        Ok(pb::XattrFlag::Upsert) => Ok(holt::XattrFlag::Upsert),
        Ok(pb::XattrFlag::Create) => Ok(holt::XattrFlag::Create),
        Ok(pb::XattrFlag::Replace) => Ok(holt::XattrFlag::Replace),
        Err(_) => Err(invalid("flag", format!("unknown xattr flag {v}"))),
    }
}

fn op_from_wire(op: PbOp) -> Result<holt::Op, WireError> {
    Ok(match op {
        PbOp::Mkdir(m) => holt::Op::Mkdir {
            at: entry_ref(m.at, "mkdir.at")?,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            parents: m.parents,
        },
        PbOp::Create(c) => holt::Op::Create {
            at: entry_ref(c.at, "create.at")?,
            mode: c.mode,
            uid: c.uid,
            gid: c.gid,
        },
        PbOp::Symlink(s) => holt::Op::Symlink {
            at: entry_ref(s.at, "symlink.at")?,
            target: s.target,
            uid: s.uid,
            gid: s.gid,
        },
        PbOp::Link(l) => holt::Op::Link {
            inode: inode_ref(l.inode, "link.inode")?,
            at: entry_ref(l.at, "link.at")?,
        },
        PbOp::Unlink(u) => holt::Op::Unlink {
            at: entry_ref(u.at, "unlink.at")?,
        },
        PbOp::Rmdir(r) => holt::Op::Rmdir {
            at: entry_ref(r.at, "rmdir.at")?,
        },
        PbOp::Rename(r) => holt::Op::Rename {
            from: entry_ref(r.from, "rename.from")?,
            to: entry_ref(r.to, "rename.to")?,
            mode: rename_mode(r.mode)?,
        },
        PbOp::SetAttr(s) => holt::Op::SetAttr {
            inode: inode_ref(s.inode, "set_attr.inode")?,
            set: holt::SetAttr {
                mode: s.mode,
                uid: s.uid,
                gid: s.gid,
                size: s.size,
                mtime_ns: s.mtime_ns,
            },
        },
        PbOp::SetXattr(s) => holt::Op::SetXattr {
            inode: inode_ref(s.inode, "set_xattr.inode")?,
            name: s.name,
            value: s.value,
            flag: xattr_flag(s.flag)?,
        },
        PbOp::RemoveXattr(r) => holt::Op::RemoveXattr {
            inode: inode_ref(r.inode, "remove_xattr.inode")?,
            name: r.name,
        },
        PbOp::BeginPublish(b) => holt::Op::BeginPublish {
            at: entry_ref(b.at, "begin_publish.at")?,
            mode: publish_mode(b.mode)?,
            lease_ns: b.lease_ms.saturating_mul(1_000_000),
            file_mode: b.file_mode,
            uid: b.uid,
            gid: b.gid,
        },
        PbOp::CommitPublish(c) => {
            let (upload, body) = commit_from_wire(c)?;
            holt::Op::CommitPublish { upload, body }
        }
        PbOp::CommitPublishBatch(b) => holt::Op::CommitPublishBatch {
            commits: b
                .commits
                .into_iter()
                .map(commit_from_wire)
                .collect::<Result<_, _>>()?,
        },
        PbOp::CommitPublishIndexed(b) => holt::Op::CommitPublishIndexed {
            commits: b
                .commits
                .into_iter()
                .map(|c| {
                    Ok(holt::IndexedCommit {
                        upload: holt::UploadId(c.upload),
                        body: c.body.ok_or(WireError::Missing("commits.body"))?.into(),
                        fields: field_set_from_wire(
                            c.fields.ok_or(WireError::Missing("commits.fields"))?,
                        )?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        },
        PbOp::AbortPublish(a) => holt::Op::AbortPublish {
            upload: holt::UploadId(a.upload),
        },
        PbOp::RenewUpload(r) => holt::Op::RenewUpload {
            upload: holt::UploadId(r.upload),
            lease_ns: r.lease_ms.saturating_mul(1_000_000),
        },
        PbOp::CreateSnapshot(c) => holt::Op::CreateSnapshot {
            path: c.path,
            lease_ns: c.lease_ms.saturating_mul(1_000_000),
        },
        PbOp::RenewSnapshot(r) => holt::Op::RenewSnapshot {
            id: holt::SnapshotId(r.id),
            lease_ns: r.lease_ms.saturating_mul(1_000_000),
        },
        PbOp::RemoveSnapshot(r) => holt::Op::RemoveSnapshot {
            id: holt::SnapshotId(r.id),
        },
        PbOp::SetWatchRetention(r) => holt::Op::SetWatchRetention {
            max_events: r.max_events,
            max_age_ns: r.max_age_ms.saturating_mul(1_000_000),
        },
        PbOp::CreateGraft(c) => holt::Op::CreateGraft {
            at: entry_ref(c.at, "create_graft.at")?,
            shard: shard_id(c.shard, "create_graft.shard")?,
        },
        PbOp::RemoveGraft(r) => holt::Op::RemoveGraft {
            at: entry_ref(r.at, "remove_graft.at")?,
            shard: shard_id(r.shard, "remove_graft.shard")?,
        },
    })
}

/// A shard id from the wire's `uint32`: shard ids are 16 bits.
fn shard_id(v: u32, field: &'static str) -> Result<holt::ShardId, WireError> {
    u16::try_from(v)
        .map(holt::ShardId)
        .map_err(|_| invalid(field, format!("shard {v} does not fit in 16 bits")))
}

// ----- grafts ---------------------------------------------------------------

impl From<holt::GraftInfo> for pb::GraftInfo {
    fn from(g: holt::GraftInfo) -> Self {
        pb::GraftInfo {
            shard: u32::from(g.shard.0),
            path: g.path,
            parent: g.parent.0,
            name: g.name,
        }
    }
}

impl TryFrom<pb::GraftInfo> for holt::GraftInfo {
    type Error = WireError;
    fn try_from(g: pb::GraftInfo) -> Result<Self, WireError> {
        Ok(holt::GraftInfo {
            shard: shard_id(g.shard, "grafts.shard")?,
            path: g.path,
            parent: holt::InodeId(g.parent),
            name: g.name,
        })
    }
}

// ----- watch events ---------------------------------------------------------

impl From<holt::Event> for pb::WatchEvent {
    fn from(e: holt::Event) -> Self {
        let mut w = pb::WatchEvent {
            cursor: e.seq,
            index: e.index.0,
            time_ns: e.time_ns,
            inode: e.inode.0,
            path: e.path,
            ..Default::default()
        };
        let kind = match e.kind {
            holt::EventKind::Create { file_type } => {
                w.file_type = pb::FileType::from(file_type) as i32;
                pb::EventType::Create
            }
            holt::EventKind::Mkdir => pb::EventType::Mkdir,
            holt::EventKind::Link => pb::EventType::Link,
            holt::EventKind::Remove => pb::EventType::Remove,
            holt::EventKind::Rename { from } => {
                w.from_path = from;
                pb::EventType::Rename
            }
            holt::EventKind::Publish {
                generation,
                size,
                sha256,
            } => {
                w.generation = generation.0;
                w.size = size;
                w.sha256 = sha256;
                pb::EventType::Publish
            }
            holt::EventKind::SetAttr => pb::EventType::SetAttr,
            holt::EventKind::Xattr { name, removed } => {
                w.xattr_name = name;
                w.removed = removed;
                pb::EventType::Xattr
            }
            holt::EventKind::SnapshotCreated { id } => {
                w.snapshot = id.0;
                pb::EventType::SnapshotCreated
            }
            holt::EventKind::SnapshotRemoved { id } => {
                w.snapshot = id.0;
                pb::EventType::SnapshotRemoved
            }
        };
        w.r#type = kind as i32;
        w
    }
}

impl TryFrom<pb::WatchEvent> for holt::Event {
    type Error = WireError;
    fn try_from(w: pb::WatchEvent) -> Result<Self, WireError> {
        let kind = match pb::EventType::try_from(w.r#type)
            .map_err(|_| invalid("type", format!("unknown event type {}", w.r#type)))?
        {
            pb::EventType::Create => holt::EventKind::Create {
                file_type: pb::FileType::try_from(w.file_type)
                    .map_err(|_| invalid("file_type", format!("unknown value {}", w.file_type)))?
                    .into(),
            },
            pb::EventType::Mkdir => holt::EventKind::Mkdir,
            pb::EventType::Link => holt::EventKind::Link,
            pb::EventType::Remove => holt::EventKind::Remove,
            pb::EventType::Rename => holt::EventKind::Rename { from: w.from_path },
            pb::EventType::Publish => holt::EventKind::Publish {
                generation: holt::Generation(w.generation),
                size: w.size,
                sha256: w.sha256,
            },
            pb::EventType::SetAttr => holt::EventKind::SetAttr,
            pb::EventType::Xattr => holt::EventKind::Xattr {
                name: w.xattr_name,
                removed: w.removed,
            },
            pb::EventType::SnapshotCreated => holt::EventKind::SnapshotCreated {
                id: holt::SnapshotId(w.snapshot),
            },
            pb::EventType::SnapshotRemoved => holt::EventKind::SnapshotRemoved {
                id: holt::SnapshotId(w.snapshot),
            },
        };
        Ok(holt::Event {
            seq: w.cursor,
            index: holt::LogIndex(w.index),
            time_ns: w.time_ns,
            inode: holt::InodeId(w.inode),
            path: w.path,
            kind,
        })
    }
}

// ----- snapshots ------------------------------------------------------------

impl From<holt::SnapshotInfo> for pb::SnapshotInfo {
    fn from(s: holt::SnapshotInfo) -> Self {
        pb::SnapshotInfo {
            id: s.id.0,
            path: s.path,
            root: s.root.0,
            pinned_index: s.pinned_index.0,
            created_ns: s.created_ns,
            lease_expires_ns: s.lease_expires_ns,
        }
    }
}

impl From<pb::SnapshotInfo> for holt::SnapshotInfo {
    fn from(s: pb::SnapshotInfo) -> Self {
        holt::SnapshotInfo {
            id: holt::SnapshotId(s.id),
            path: s.path,
            root: holt::InodeId(s.root),
            pinned_index: holt::LogIndex(s.pinned_index),
            created_ns: s.created_ns,
            lease_expires_ns: s.lease_expires_ns,
        }
    }
}

// ----- bodies ---------------------------------------------------------------

fn publish_mode(m: Option<pb::PublishMode>) -> Result<holt::PublishMode, WireError> {
    use pb::publish_mode::Mode;
    match m.and_then(|m| m.mode).ok_or(WireError::Missing("mode"))? {
        Mode::CreateOnly(_) => Ok(holt::PublishMode::CreateOnly),
        Mode::ReplaceGeneration(g) => Ok(holt::PublishMode::Replace {
            expected: holt::Generation(g),
        }),
        Mode::Upsert(_) => Ok(holt::PublishMode::Upsert),
        Mode::Inode(i) => Ok(holt::PublishMode::Inode {
            inode: holt::InodeId(i.inode),
            expected: holt::Generation(i.generation),
        }),
    }
}

impl From<holt::PublishMode> for pb::PublishMode {
    fn from(m: holt::PublishMode) -> Self {
        use pb::publish_mode::Mode;
        let mode = match m {
            holt::PublishMode::CreateOnly => Mode::CreateOnly(pb::Done {}),
            holt::PublishMode::Replace { expected } => Mode::ReplaceGeneration(expected.0),
            holt::PublishMode::Upsert => Mode::Upsert(pb::Done {}),
            holt::PublishMode::Inode { inode, expected } => Mode::Inode(pb::InodePublish {
                inode: inode.0,
                generation: expected.0,
            }),
        };
        pb::PublishMode { mode: Some(mode) }
    }
}

fn commit_from_wire(c: pb::CommitPublishOp) -> Result<(holt::UploadId, holt::BodySpec), WireError> {
    let body = c.body.ok_or(WireError::Missing("body"))?;
    Ok((holt::UploadId(c.upload), body.into()))
}

fn commit_to_wire(upload: holt::UploadId, body: holt::BodySpec) -> pb::CommitPublishOp {
    pb::CommitPublishOp {
        upload: upload.0,
        body: Some(body.into()),
    }
}

impl From<pb::BlockRef> for holt::BlockRef {
    fn from(b: pb::BlockRef) -> Self {
        holt::BlockRef {
            key: b.key,
            size: b.size,
        }
    }
}

impl From<holt::BlockRef> for pb::BlockRef {
    fn from(b: holt::BlockRef) -> Self {
        pb::BlockRef {
            key: b.key,
            size: b.size,
        }
    }
}

impl From<pb::BodySpec> for holt::BodySpec {
    fn from(b: pb::BodySpec) -> Self {
        holt::BodySpec {
            size: b.size,
            blocks: b.blocks.into_iter().map(Into::into).collect(),
            sha256: b.sha256,
            content_type: b.content_type,
            producer: b.producer,
            attrs: b.attrs.into_iter().collect(),
        }
    }
}

impl From<holt::BodySpec> for pb::BodySpec {
    fn from(b: holt::BodySpec) -> Self {
        pb::BodySpec {
            size: b.size,
            blocks: b.blocks.into_iter().map(Into::into).collect(),
            sha256: b.sha256,
            content_type: b.content_type,
            producer: b.producer,
            attrs: b.attrs.into_iter().collect(),
        }
    }
}

impl From<holt::Body> for pb::Body {
    fn from(b: holt::Body) -> Self {
        pb::Body {
            generation: b.generation.0,
            size: b.size,
            blocks: b.blocks.into_iter().map(Into::into).collect(),
            sha256: b.sha256,
            content_type: b.content_type,
            producer: b.producer,
            attrs: b.attrs.into_iter().collect(),
            published_ns: b.published_ns,
        }
    }
}

impl From<pb::Body> for holt::Body {
    fn from(b: pb::Body) -> Self {
        holt::Body {
            generation: holt::Generation(b.generation),
            size: b.size,
            blocks: b.blocks.into_iter().map(Into::into).collect(),
            sha256: b.sha256,
            content_type: b.content_type,
            producer: b.producer,
            attrs: b.attrs.into_iter().collect(),
            published_ns: b.published_ns,
        }
    }
}

impl From<holt::BodySummary> for pb::BodySummary {
    fn from(b: holt::BodySummary) -> Self {
        pb::BodySummary {
            generation: b.generation.0,
            size: b.size,
            blocks: b.blocks,
            sha256: b.sha256,
            content_type: b.content_type,
            producer: b.producer,
            attrs: b.attrs.into_iter().collect(),
            published_ns: b.published_ns,
            fields: b.fields.map(field_set_to_wire),
        }
    }
}

impl TryFrom<pb::BodySummary> for holt::BodySummary {
    type Error = WireError;
    fn try_from(b: pb::BodySummary) -> Result<Self, WireError> {
        Ok(holt::BodySummary {
            generation: holt::Generation(b.generation),
            size: b.size,
            blocks: b.blocks,
            sha256: b.sha256,
            content_type: b.content_type,
            producer: b.producer,
            attrs: b.attrs.into_iter().collect(),
            published_ns: b.published_ns,
            fields: b.fields.map(field_set_from_wire).transpose()?,
        })
    }
}

impl From<holt::StagedUpload> for pb::StagedUpload {
    fn from(u: holt::StagedUpload) -> Self {
        let key_prefix = u.key_prefix();
        pb::StagedUpload {
            id: u.id.0,
            parent: u.parent.0,
            name: u.name,
            inode: u.inode.0,
            generation: u.generation.0,
            mode: Some(u.mode.into()),
            file_mode: u.file_mode,
            uid: u.uid,
            gid: u.gid,
            created_ns: u.created_ns,
            lease_expires_ns: u.lease_expires_ns,
            key_prefix,
        }
    }
}

impl TryFrom<pb::StagedUpload> for holt::StagedUpload {
    type Error = WireError;
    fn try_from(u: pb::StagedUpload) -> Result<Self, WireError> {
        Ok(holt::StagedUpload {
            id: holt::UploadId(u.id),
            parent: holt::InodeId(u.parent),
            name: u.name,
            inode: holt::InodeId(u.inode),
            generation: holt::Generation(u.generation),
            mode: publish_mode(u.mode)?,
            file_mode: u.file_mode,
            uid: u.uid,
            gid: u.gid,
            created_ns: u.created_ns,
            lease_expires_ns: u.lease_expires_ns,
        })
    }
}

fn op_to_wire(op: holt::Op) -> Result<PbOp, WireError> {
    Ok(match op {
        holt::Op::Mkdir {
            at,
            mode,
            uid,
            gid,
            parents,
        } => PbOp::Mkdir(pb::MkdirOp {
            at: Some(at.into()),
            mode,
            uid,
            gid,
            parents,
        }),
        holt::Op::Create { at, mode, uid, gid } => PbOp::Create(pb::CreateOp {
            at: Some(at.into()),
            mode,
            uid,
            gid,
        }),
        holt::Op::Symlink {
            at,
            target,
            uid,
            gid,
        } => PbOp::Symlink(pb::SymlinkOp {
            at: Some(at.into()),
            target,
            uid,
            gid,
        }),
        holt::Op::Link { inode, at } => PbOp::Link(pb::LinkOp {
            inode: Some(inode.into()),
            at: Some(at.into()),
        }),
        holt::Op::Unlink { at } => PbOp::Unlink(pb::UnlinkOp {
            at: Some(at.into()),
        }),
        holt::Op::Rmdir { at } => PbOp::Rmdir(pb::RmdirOp {
            at: Some(at.into()),
        }),
        holt::Op::Rename { from, to, mode } => PbOp::Rename(pb::RenameOp {
            from: Some(from.into()),
            to: Some(to.into()),
            mode: match mode {
                holt::RenameMode::Replace => pb::RenameMode::Replace,
                holt::RenameMode::NoReplace => pb::RenameMode::NoReplace,
            } as i32,
        }),
        holt::Op::SetAttr { inode, set } => PbOp::SetAttr(pb::SetAttrOp {
            inode: Some(inode.into()),
            mode: set.mode,
            uid: set.uid,
            gid: set.gid,
            size: set.size,
            mtime_ns: set.mtime_ns,
        }),
        holt::Op::SetXattr {
            inode,
            name,
            value,
            flag,
        } => PbOp::SetXattr(pb::SetXattrOp {
            inode: Some(inode.into()),
            name,
            value,
            flag: match flag {
                holt::XattrFlag::Upsert => pb::XattrFlag::Upsert,
                holt::XattrFlag::Create => pb::XattrFlag::Create,
                holt::XattrFlag::Replace => pb::XattrFlag::Replace,
            } as i32,
        }),
        holt::Op::RemoveXattr { inode, name } => PbOp::RemoveXattr(pb::RemoveXattrOp {
            inode: Some(inode.into()),
            name,
        }),
        holt::Op::BeginPublish {
            at,
            mode,
            lease_ns,
            file_mode,
            uid,
            gid,
        } => PbOp::BeginPublish(pb::BeginPublishOp {
            at: Some(at.into()),
            mode: Some(mode.into()),
            lease_ms: lease_ns / 1_000_000,
            file_mode,
            uid,
            gid,
        }),
        holt::Op::CommitPublish { upload, body } => {
            PbOp::CommitPublish(commit_to_wire(upload, body))
        }
        holt::Op::CommitPublishBatch { commits } => {
            PbOp::CommitPublishBatch(pb::CommitPublishBatchOp {
                commits: commits
                    .into_iter()
                    .map(|(upload, body)| commit_to_wire(upload, body))
                    .collect(),
            })
        }
        holt::Op::CommitPublishIndexed { commits } => {
            PbOp::CommitPublishIndexed(pb::CommitPublishIndexedOp {
                commits: commits
                    .into_iter()
                    .map(|c| pb::IndexedCommit {
                        upload: c.upload.0,
                        body: Some(c.body.into()),
                        fields: Some(field_set_to_wire(c.fields)),
                    })
                    .collect(),
            })
        }
        holt::Op::AbortPublish { upload } => {
            PbOp::AbortPublish(pb::AbortPublishOp { upload: upload.0 })
        }
        holt::Op::RenewUpload { upload, lease_ns } => PbOp::RenewUpload(pb::RenewUploadOp {
            upload: upload.0,
            lease_ms: lease_ns / 1_000_000,
        }),
        holt::Op::CreateSnapshot { path, lease_ns } => PbOp::CreateSnapshot(pb::CreateSnapshotOp {
            path,
            lease_ms: lease_ns / 1_000_000,
        }),
        holt::Op::RenewSnapshot { id, lease_ns } => PbOp::RenewSnapshot(pb::RenewSnapshotOp {
            id: id.0,
            lease_ms: lease_ns / 1_000_000,
        }),
        holt::Op::RemoveSnapshot { id } => PbOp::RemoveSnapshot(pb::RemoveSnapshotOp { id: id.0 }),
        holt::Op::SetWatchRetention {
            max_events,
            max_age_ns,
        } => PbOp::SetWatchRetention(pb::SetWatchRetentionOp {
            max_events,
            max_age_ms: max_age_ns / 1_000_000,
        }),
        holt::Op::CreateGraft { at, shard } => PbOp::CreateGraft(pb::CreateGraftOp {
            at: Some(at.into()),
            shard: u32::from(shard.0),
        }),
        holt::Op::RemoveGraft { at, shard } => PbOp::RemoveGraft(pb::RemoveGraftOp {
            at: Some(at.into()),
            shard: u32::from(shard.0),
        }),
        // Leader housekeeping has no wire form: clients cannot send it.
        holt::Op::ExpireUploads { .. }
        | holt::Op::GcDone { .. }
        | holt::Op::ExpireSnapshots { .. } => {
            return Err(WireError::Invalid {
                field: "op",
                reason: "housekeeping commands are proposed by the leader only".into(),
            })
        }
        // Tokens have their own RPCs (admin only), never `Mutate`.
        holt::Op::CreateToken { .. } | holt::Op::RevokeToken { .. } => {
            return Err(WireError::Invalid {
                field: "op",
                reason: "tokens are created and revoked through CreateToken and RevokeToken".into(),
            })
        }
    })
}

/// The response to a successful mutation.
pub fn mutate_response(applied: holt::Applied, index: holt::LogIndex) -> pb::MutateResponse {
    let result = match applied {
        holt::Applied::Attr(a) => pb::mutate_response::Result::Attr(a.into()),
        holt::Applied::Done => pb::mutate_response::Result::Done(pb::Done {}),
        holt::Applied::Staged(u) => pb::mutate_response::Result::Staged(u.into()),
        holt::Applied::Snapshot(info) => pb::mutate_response::Result::Snapshot(info.into()),
        holt::Applied::Attrs(list) => pb::mutate_response::Result::Attrs(pb::AttrList {
            attrs: list.into_iter().map(Into::into).collect(),
        }),
    };
    pb::MutateResponse {
        result: Some(result),
        applied_index: index.0,
        epoch: 0,
    }
}

impl TryFrom<pb::MutateResponse> for holt::Applied {
    type Error = WireError;
    fn try_from(r: pb::MutateResponse) -> Result<Self, WireError> {
        match r.result.ok_or(WireError::Missing("result"))? {
            pb::mutate_response::Result::Attr(a) => Ok(holt::Applied::Attr(attr(Some(a), "attr")?)),
            pb::mutate_response::Result::Done(_) => Ok(holt::Applied::Done),
            pb::mutate_response::Result::Staged(u) => Ok(holt::Applied::Staged(u.try_into()?)),
            pb::mutate_response::Result::Attrs(list) => Ok(holt::Applied::Attrs(
                list.attrs
                    .into_iter()
                    .map(holt::Attr::try_from)
                    .collect::<Result<_, _>>()?,
            )),
            pb::mutate_response::Result::Snapshot(info) => Ok(holt::Applied::Snapshot(info.into())),
        }
    }
}

// ----- queries --------------------------------------------------------------

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    Linearizable,
    Stale,
}

/// A decoded `QueryRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub consistency: ReadConsistency,
    pub query: holt::Query,
}

impl TryFrom<pb::QueryRequest> for Read {
    type Error = WireError;
    fn try_from(req: pb::QueryRequest) -> Result<Self, WireError> {
        let consistency = match pb::Consistency::try_from(req.consistency) {
            Ok(pb::Consistency::Linearizable) => ReadConsistency::Linearizable,
            Ok(pb::Consistency::Stale) => ReadConsistency::Stale,
            Err(_) => {
                return Err(invalid(
                    "consistency",
                    format!("unknown value {}", req.consistency),
                ))
            }
        };
        let query = match req.query.ok_or(WireError::Missing("query"))? {
            PbQuery::Lookup(l) => holt::Query::Lookup {
                parent: holt::InodeId(l.parent),
                name: l.name,
            },
            PbQuery::GetAttr(g) => holt::Query::GetAttr {
                inode: inode_ref(g.inode, "get_attr.inode")?,
            },
            PbQuery::ReadDir(r) => holt::Query::ReadDir {
                dir: inode_ref(r.dir, "read_dir.dir")?,
                after: r.after,
                limit: r.limit,
            },
            PbQuery::ReadLink(r) => holt::Query::ReadLink {
                inode: inode_ref(r.inode, "read_link.inode")?,
            },
            PbQuery::GetXattr(g) => holt::Query::GetXattr {
                inode: inode_ref(g.inode, "get_xattr.inode")?,
                name: g.name,
            },
            PbQuery::ListXattr(l) => holt::Query::ListXattr {
                inode: inode_ref(l.inode, "list_xattr.inode")?,
            },
            PbQuery::ReadBody(r) => holt::Query::ReadBody {
                inode: inode_ref(r.inode, "read_body.inode")?,
            },
            PbQuery::ListUploads(_) => holt::Query::ListUploads,
            PbQuery::ListSnapshots(_) => holt::Query::ListSnapshots,
            PbQuery::ListGrafts(_) => holt::Query::Grafts,
            PbQuery::ReadDirBodies(r) => holt::Query::ReadDirBodies {
                dir: inode_ref(r.dir, "read_dir_bodies.dir")?,
                after: r.after,
                limit: r.limit,
            },
            PbQuery::RetiredBody(r) => holt::Query::RetiredBody {
                inode: inode_ref(r.inode, "retired_body.inode")?,
                generation: holt::Generation(r.generation),
            },
            PbQuery::IndexedFields(f) => holt::Query::IndexedFields {
                dir: inode_ref(f.dir, "indexed_fields.dir")?,
            },
            PbQuery::FindIndexed(f) => holt::Query::FindIndexed {
                dir: inode_ref(f.dir, "find_indexed.dir")?,
                field: f.field,
                range: range_from_wire(f.range)?,
                after: f.after.map(cursor_from_wire).transpose()?,
                limit: f.limit,
            },
        };
        let query = match req.snapshot {
            0 => query,
            id => holt::Query::AtSnapshot {
                snapshot: holt::SnapshotId(id),
                query: Box::new(query),
            },
        };
        Ok(Read { consistency, query })
    }
}

impl From<Read> for pb::QueryRequest {
    fn from(r: Read) -> Self {
        let consistency = match r.consistency {
            ReadConsistency::Linearizable => pb::Consistency::Linearizable,
            ReadConsistency::Stale => pb::Consistency::Stale,
        } as i32;
        let (snapshot, query) = match r.query {
            holt::Query::AtSnapshot { snapshot, query } => (
                snapshot.0,
                match *query {
                    // The wire has one snapshot field; a nested request is
                    // sent as a query the server refuses at a snapshot.
                    holt::Query::AtSnapshot { .. } => holt::Query::ListSnapshots,
                    query => query,
                },
            ),
            query => (0, query),
        };
        let query = match query {
            holt::Query::AtSnapshot { .. } => PbQuery::ListSnapshots(pb::ListSnapshotsQuery {}),
            holt::Query::Lookup { parent, name } => PbQuery::Lookup(pb::LookupQuery {
                parent: parent.0,
                name,
            }),
            holt::Query::GetAttr { inode } => PbQuery::GetAttr(pb::GetAttrQuery {
                inode: Some(inode.into()),
            }),
            holt::Query::ReadDir { dir, after, limit } => PbQuery::ReadDir(pb::ReadDirQuery {
                dir: Some(dir.into()),
                after,
                limit,
            }),
            holt::Query::ReadLink { inode } => PbQuery::ReadLink(pb::ReadLinkQuery {
                inode: Some(inode.into()),
            }),
            holt::Query::GetXattr { inode, name } => PbQuery::GetXattr(pb::GetXattrQuery {
                inode: Some(inode.into()),
                name,
            }),
            holt::Query::ListXattr { inode } => PbQuery::ListXattr(pb::ListXattrQuery {
                inode: Some(inode.into()),
            }),
            holt::Query::ReadBody { inode } => PbQuery::ReadBody(pb::ReadBodyQuery {
                inode: Some(inode.into()),
            }),
            holt::Query::ListUploads => PbQuery::ListUploads(pb::ListUploadsQuery {}),
            holt::Query::ListSnapshots => PbQuery::ListSnapshots(pb::ListSnapshotsQuery {}),
            holt::Query::Grafts => PbQuery::ListGrafts(pb::ListGraftsQuery {}),
            holt::Query::ReadDirBodies { dir, after, limit } => {
                PbQuery::ReadDirBodies(pb::ReadDirBodiesQuery {
                    dir: Some(dir.into()),
                    after,
                    limit,
                })
            }
            holt::Query::RetiredBody { inode, generation } => {
                PbQuery::RetiredBody(pb::RetiredBodyQuery {
                    inode: Some(inode.into()),
                    generation: generation.0,
                })
            }
            holt::Query::IndexedFields { dir } => PbQuery::IndexedFields(pb::IndexedFieldsQuery {
                dir: Some(dir.into()),
            }),
            holt::Query::FindIndexed {
                dir,
                field,
                range,
                after,
                limit,
            } => PbQuery::FindIndexed(pb::FindIndexedQuery {
                dir: Some(dir.into()),
                field,
                range: Some(range_to_wire(range)),
                after: after.map(cursor_to_wire),
                limit,
            }),
        };
        pb::QueryRequest {
            consistency,
            snapshot,
            query: Some(query),
            // Shard and map revision are routing, not part of the read: the
            // client sets them.
            shard: 0,
            map_revision: 0,
        }
    }
}

/// The response to a successful query.
pub fn query_response(result: holt::QueryResult, index: holt::LogIndex) -> pb::QueryResponse {
    let result = match result {
        holt::QueryResult::Attr(a) => PbQueryResult::Attr(a.into()),
        holt::QueryResult::Dir { entries, next } => PbQueryResult::Dir(pb::DirPage {
            entries: entries
                .into_iter()
                .map(|e| pb::DirEntry {
                    name: e.name,
                    attr: Some(e.attr.into()),
                })
                .collect(),
            next,
        }),
        holt::QueryResult::Target(t) => PbQueryResult::Target(t),
        holt::QueryResult::Xattr(v) => PbQueryResult::Xattr(v),
        holt::QueryResult::XattrNames(names) => PbQueryResult::XattrNames(pb::XattrNames { names }),
        holt::QueryResult::Body { attr, body } => PbQueryResult::Body(pb::BodyResult {
            attr: Some(attr.into()),
            body: body.map(Into::into),
        }),
        holt::QueryResult::Uploads(list) => PbQueryResult::Uploads(pb::UploadList {
            uploads: list.into_iter().map(Into::into).collect(),
        }),
        holt::QueryResult::Snapshots(list) => PbQueryResult::Snapshots(pb::SnapshotList {
            snapshots: list.into_iter().map(Into::into).collect(),
        }),
        holt::QueryResult::Grafts(list) => PbQueryResult::Grafts(pb::GraftList {
            grafts: list.into_iter().map(Into::into).collect(),
        }),
        holt::QueryResult::Retired(keys) => PbQueryResult::Retired(pb::RetiredBlocks { keys }),
        holt::QueryResult::DirBodies { entries, next } => {
            PbQueryResult::DirBodies(pb::DirBodiesPage {
                entries: entries
                    .into_iter()
                    .map(|(e, body)| pb::EntryWithBody {
                        entry: Some(pb::DirEntry {
                            name: e.name,
                            attr: Some(e.attr.into()),
                        }),
                        body: body.map(Into::into),
                    })
                    .collect(),
                next,
            })
        }
        holt::QueryResult::Indexed {
            hits,
            next,
            unindexed,
        } => PbQueryResult::Indexed(indexed_page_to_wire(hits, next, unindexed)),
        holt::QueryResult::FieldNames { names, complete } => {
            PbQueryResult::FieldNames(pb::FieldNames { names, complete })
        }
    };
    pb::QueryResponse {
        result: Some(result),
        applied_index: index.0,
    }
}

impl TryFrom<pb::QueryResponse> for holt::QueryResult {
    type Error = WireError;
    fn try_from(r: pb::QueryResponse) -> Result<Self, WireError> {
        Ok(match r.result.ok_or(WireError::Missing("result"))? {
            PbQueryResult::Attr(a) => holt::QueryResult::Attr(attr(Some(a), "attr")?),
            PbQueryResult::Dir(d) => holt::QueryResult::Dir {
                entries: d
                    .entries
                    .into_iter()
                    .map(|e| {
                        Ok(holt::DirEntry {
                            name: e.name,
                            attr: attr(e.attr, "dir.entries.attr")?,
                        })
                    })
                    .collect::<Result<_, WireError>>()?,
                next: d.next,
            },
            PbQueryResult::Target(t) => holt::QueryResult::Target(t),
            PbQueryResult::Xattr(v) => holt::QueryResult::Xattr(v),
            PbQueryResult::XattrNames(n) => holt::QueryResult::XattrNames(n.names),
            PbQueryResult::Body(b) => holt::QueryResult::Body {
                attr: attr(b.attr, "body.attr")?,
                body: b.body.map(Into::into),
            },
            PbQueryResult::Uploads(u) => holt::QueryResult::Uploads(
                u.uploads
                    .into_iter()
                    .map(holt::StagedUpload::try_from)
                    .collect::<Result<_, _>>()?,
            ),
            PbQueryResult::Snapshots(list) => {
                holt::QueryResult::Snapshots(list.snapshots.into_iter().map(Into::into).collect())
            }
            PbQueryResult::Grafts(list) => holt::QueryResult::Grafts(
                list.grafts
                    .into_iter()
                    .map(holt::GraftInfo::try_from)
                    .collect::<Result<_, _>>()?,
            ),
            PbQueryResult::Retired(r) => holt::QueryResult::Retired(r.keys),
            PbQueryResult::DirBodies(page) => holt::QueryResult::DirBodies {
                entries: page
                    .entries
                    .into_iter()
                    .map(|e| {
                        let entry = e
                            .entry
                            .ok_or(WireError::Missing("dir_bodies.entries.entry"))?;
                        Ok((
                            holt::DirEntry {
                                name: entry.name,
                                attr: attr(entry.attr, "dir_bodies.entries.entry.attr")?,
                            },
                            e.body.map(holt::BodySummary::try_from).transpose()?,
                        ))
                    })
                    .collect::<Result<_, WireError>>()?,
                next: page.next,
            },
            PbQueryResult::Indexed(page) => indexed_page_from_wire(page)?,
            PbQueryResult::FieldNames(f) => holt::QueryResult::FieldNames {
                names: f.names,
                complete: f.complete,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_round_trips() {
        let m = Mutation {
            request_id: holt::RequestId(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            epoch: Some(holt::Epoch(3)),
            op: holt::Op::Rename {
                from: holt::EntryRef::Path("/a".into()),
                to: holt::EntryRef::Child {
                    parent: holt::InodeId(9),
                    name: "b".into(),
                },
                mode: holt::RenameMode::NoReplace,
            },
        };
        let wire = pb::MutateRequest::try_from(m.clone()).expect("client op");
        assert_eq!(Mutation::try_from(wire), Ok(m));
    }

    #[test]
    fn every_publish_mode_round_trips() {
        for mode in [
            holt::PublishMode::CreateOnly,
            holt::PublishMode::Upsert,
            holt::PublishMode::Replace {
                expected: holt::Generation(4),
            },
            holt::PublishMode::Inode {
                inode: holt::InodeId::compose(holt::ShardId(2), 77),
                expected: holt::Generation(5),
            },
        ] {
            let m = Mutation {
                request_id: holt::RequestId(1),
                epoch: None,
                op: holt::Op::BeginPublish {
                    at: holt::EntryRef::Child {
                        parent: holt::InodeId(9),
                        name: "f".into(),
                    },
                    mode,
                    lease_ns: 60_000_000_000,
                    file_mode: 0o644,
                    uid: 1,
                    gid: 2,
                },
            };
            let wire = pb::MutateRequest::try_from(m.clone()).expect("client op");
            assert_eq!(Mutation::try_from(wire), Ok(m), "{mode:?}");
        }
    }

    #[test]
    fn snapshot_ops_and_reads_round_trip() {
        for op in [
            holt::Op::CreateSnapshot {
                path: "/ckpt".into(),
                lease_ns: 3_000_000_000,
            },
            holt::Op::RenewSnapshot {
                id: holt::SnapshotId(7),
                lease_ns: 5_000_000,
            },
            holt::Op::RemoveSnapshot {
                id: holt::SnapshotId(7),
            },
            holt::Op::SetWatchRetention {
                max_events: 10,
                max_age_ns: 3_000_000,
            },
        ] {
            let m = Mutation {
                request_id: holt::RequestId(1),
                epoch: None,
                op,
            };
            let wire = pb::MutateRequest::try_from(m.clone()).expect("client op");
            assert_eq!(Mutation::try_from(wire), Ok(m));
        }
        let housekeeping = Mutation {
            request_id: holt::RequestId(1),
            epoch: None,
            op: holt::Op::ExpireSnapshots { now_ns: 1 },
        };
        assert!(pb::MutateRequest::try_from(housekeeping).is_err());
        for query in [
            holt::Query::ListSnapshots,
            holt::Query::AtSnapshot {
                snapshot: holt::SnapshotId(4),
                query: Box::new(holt::Query::ReadDir {
                    dir: holt::InodeRef::Path("/ckpt".into()),
                    after: None,
                    limit: 10,
                }),
            },
        ] {
            let read = Read {
                consistency: ReadConsistency::Stale,
                query,
            };
            let wire = pb::QueryRequest::from(read.clone());
            assert_eq!(Read::try_from(wire), Ok(read));
        }
        let info = holt::SnapshotInfo {
            id: holt::SnapshotId(4),
            path: "/ckpt".into(),
            root: holt::InodeId(12),
            pinned_index: holt::LogIndex(99),
            created_ns: 5,
            lease_expires_ns: 6,
        };
        let wire = mutate_response(holt::Applied::Snapshot(info.clone()), holt::LogIndex(99));
        assert_eq!(
            holt::Applied::try_from(wire),
            Ok(holt::Applied::Snapshot(info))
        );
    }

    #[test]
    fn graft_ops_queries_and_results_round_trip() {
        for op in [
            holt::Op::CreateGraft {
                at: holt::EntryRef::Path("/runs".into()),
                shard: holt::ShardId(3),
            },
            holt::Op::RemoveGraft {
                at: holt::EntryRef::Child {
                    parent: holt::InodeId(7),
                    name: "runs".into(),
                },
                shard: holt::ShardId(u16::MAX),
            },
        ] {
            let m = Mutation {
                request_id: holt::RequestId(1),
                epoch: Some(holt::Epoch(2)),
                op,
            };
            let wire = pb::MutateRequest::try_from(m.clone()).expect("client op");
            assert_eq!(Mutation::try_from(wire), Ok(m));
        }
        // The wire's uint32 must fit a 16-bit shard id.
        let req = pb::MutateRequest {
            request_id: vec![0; 16],
            map_revision: 0,
            epoch: 0,
            shard: 0,
            op: Some(PbOp::CreateGraft(pb::CreateGraftOp {
                at: Some(holt::EntryRef::Path("/x".into()).into()),
                shard: 65_536,
            })),
        };
        assert!(matches!(
            Mutation::try_from(req),
            Err(WireError::Invalid {
                field: "create_graft.shard",
                ..
            })
        ));
        let req = pb::MutateRequest {
            request_id: vec![0; 16],
            map_revision: 0,
            epoch: 0,
            shard: 0,
            op: Some(PbOp::RemoveGraft(pb::RemoveGraftOp { at: None, shard: 1 })),
        };
        assert_eq!(
            Mutation::try_from(req),
            Err(WireError::Missing("remove_graft.at"))
        );

        let read = Read {
            consistency: ReadConsistency::Linearizable,
            query: holt::Query::Grafts,
        };
        let wire = pb::QueryRequest::from(read.clone());
        assert_eq!(Read::try_from(wire), Ok(read));
        let grafts = holt::QueryResult::Grafts(vec![holt::GraftInfo {
            shard: holt::ShardId(3),
            path: "/runs".into(),
            parent: holt::InodeId(1),
            name: "runs".into(),
        }]);
        let wire = query_response(grafts.clone(), holt::LogIndex(5));
        assert_eq!(holt::QueryResult::try_from(wire), Ok(grafts));
        let garbage = pb::QueryResponse {
            result: Some(PbQueryResult::Grafts(pb::GraftList {
                grafts: vec![pb::GraftInfo {
                    shard: 1 << 20,
                    ..Default::default()
                }],
            })),
            applied_index: 0,
        };
        assert!(holt::QueryResult::try_from(garbage).is_err());
    }

    #[test]
    fn retired_body_query_round_trips() {
        let read = Read {
            consistency: ReadConsistency::Linearizable,
            query: holt::Query::RetiredBody {
                inode: holt::InodeRef::Path("/runs/7/train.log".into()),
                generation: holt::Generation(42),
            },
        };
        let wire = pb::QueryRequest::from(read.clone());
        assert_eq!(Read::try_from(wire), Ok(read));
        let keys =
            holt::QueryResult::Retired(vec!["b/1/00000000.ab".into(), "b/1/00000001.cd".into()]);
        let wire = query_response(keys.clone(), holt::LogIndex(9));
        assert_eq!(holt::QueryResult::try_from(wire), Ok(keys));
        let missing = pb::QueryRequest {
            query: Some(PbQuery::RetiredBody(pb::RetiredBodyQuery {
                inode: None,
                generation: 1,
            })),
            ..Default::default()
        };
        assert!(Read::try_from(missing).is_err());
    }

    #[test]
    fn indexed_queries_and_commits_round_trip() {
        for range in [
            holt::IndexRange::Between {
                lo: Some(holt::IndexKey::Bool(false)),
                hi: None,
            },
            holt::IndexRange::Prefix("ru".into()),
        ] {
            let read = Read {
                consistency: ReadConsistency::Linearizable,
                query: holt::Query::FindIndexed {
                    dir: holt::InodeRef::Path("/runs".into()),
                    field: "loss".into(),
                    range,
                    after: Some((holt::IndexKey::Str("x".into()), holt::InodeId(9))),
                    limit: 10,
                },
            };
            let wire = pb::QueryRequest::from(read.clone());
            assert_eq!(Read::try_from(wire), Ok(read));
        }
        // A non-finite float or a repeated name is refused on the way in.
        let bad = pb::FieldSet {
            fields: vec![pb::Field {
                name: "x".into(),
                values: vec![pb::FieldValue {
                    value: Some(pb::field_value::Value::Float(f64::NAN)),
                }],
            }],
        };
        assert!(fields::field_set_from_wire(bad).is_err());
        let twice = pb::FieldSet {
            fields: vec![
                pb::Field {
                    name: "x".into(),
                    values: vec![],
                },
                pb::Field {
                    name: "x".into(),
                    values: vec![],
                },
            ],
        };
        assert!(fields::field_set_from_wire(twice).is_err());
        let m = Mutation {
            request_id: holt::RequestId(7),
            epoch: None,
            op: holt::Op::CommitPublishIndexed {
                commits: vec![holt::IndexedCommit {
                    upload: holt::UploadId(3),
                    body: holt::BodySpec::default(),
                    fields: [("n".to_string(), vec![holt::FieldValue::Int(-4)])]
                        .into_iter()
                        .collect(),
                }],
            },
        };
        let wire = pb::MutateRequest::try_from(m.clone()).expect("client op");
        assert_eq!(Mutation::try_from(wire), Ok(m));
    }

    #[test]
    fn dir_bodies_round_trip() {
        let read = Read {
            consistency: ReadConsistency::Stale,
            query: holt::Query::ReadDirBodies {
                dir: holt::InodeRef::Path("/runs".into()),
                after: Some("a".into()),
                limit: 7,
            },
        };
        let wire = pb::QueryRequest::from(read.clone());
        assert_eq!(Read::try_from(wire), Ok(read));
        let attr = holt::Attr {
            inode: holt::InodeId(5),
            file_type: holt::FileType::File,
            mode: 0o644,
            uid: 1,
            gid: 2,
            nlink: 1,
            size: 3,
            generation: holt::Generation(4),
            mtime_ns: 6,
            ctime_ns: 7,
            version: holt::LogIndex(8),
        };
        let body = holt::BodySummary {
            generation: holt::Generation(4),
            size: 3,
            blocks: 1,
            sha256: "ab".into(),
            content_type: "text/plain".into(),
            producer: "p".into(),
            attrs: [("step".to_string(), "100".to_string())]
                .into_iter()
                .collect(),
            published_ns: 9,
            fields: Some(
                [
                    ("step".to_string(), vec![holt::FieldValue::Int(100)]),
                    (
                        "tags".to_string(),
                        vec![
                            holt::FieldValue::Str("a".into()),
                            holt::FieldValue::Bool(true),
                            holt::FieldValue::float(0.25).expect("finite"),
                        ],
                    ),
                ]
                .into_iter()
                .collect(),
            ),
        };
        let indexed = holt::QueryResult::Indexed {
            hits: vec![holt::IndexedHit {
                path: "a/f".into(),
                attr: attr.clone(),
                body: Some(body.clone()),
            }],
            next: Some((holt::IndexKey::num(2.5), holt::InodeId(5))),
            unindexed: true,
        };
        let wire = query_response(indexed.clone(), holt::LogIndex(1));
        assert_eq!(holt::QueryResult::try_from(wire), Ok(indexed));
        let page = holt::QueryResult::DirBodies {
            entries: vec![(
                holt::DirEntry {
                    name: "f".into(),
                    attr,
                },
                Some(body),
            )],
            next: Some("f".into()),
        };
        let wire = query_response(page.clone(), holt::LogIndex(1));
        assert_eq!(holt::QueryResult::try_from(wire), Ok(page));
        let garbage = pb::QueryResponse {
            result: Some(PbQueryResult::DirBodies(pb::DirBodiesPage {
                entries: vec![pb::EntryWithBody::default()],
                next: None,
            })),
            applied_index: 0,
        };
        assert!(holt::QueryResult::try_from(garbage).is_err());
    }

    #[test]
    fn watch_events_round_trip() {
        let kinds = [
            holt::EventKind::Create {
                file_type: holt::FileType::Symlink,
            },
            holt::EventKind::Mkdir,
            holt::EventKind::Link,
            holt::EventKind::Remove,
            holt::EventKind::Rename {
                from: Some("/a".into()),
            },
            holt::EventKind::Publish {
                generation: holt::Generation(3),
                size: 9,
                sha256: "ab".into(),
            },
            holt::EventKind::SetAttr,
            holt::EventKind::Xattr {
                name: "user.k".into(),
                removed: true,
            },
            holt::EventKind::SnapshotCreated {
                id: holt::SnapshotId(2),
            },
            holt::EventKind::SnapshotRemoved {
                id: holt::SnapshotId(2),
            },
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            let event = holt::Event {
                seq: i as u64 + 1,
                index: holt::LogIndex(7),
                time_ns: 8,
                inode: holt::InodeId(9),
                path: (i % 2 == 0).then(|| "/x".to_string()),
                kind,
            };
            let wire = pb::WatchEvent::from(event.clone());
            assert_eq!(holt::Event::try_from(wire), Ok(event));
        }
        let garbage = pb::WatchEvent {
            r#type: 99,
            ..Default::default()
        };
        assert!(holt::Event::try_from(garbage).is_err());
    }

    #[test]
    fn short_request_id_is_invalid() {
        let req = pb::MutateRequest {
            request_id: vec![1, 2, 3],
            map_revision: 0,
            epoch: 0,
            shard: 0,
            op: Some(PbOp::Unlink(pb::UnlinkOp {
                at: Some(holt::EntryRef::Path("/x".into()).into()),
            })),
        };
        assert!(matches!(
            Mutation::try_from(req),
            Err(WireError::Invalid {
                field: "request_id",
                ..
            })
        ));
    }

    #[test]
    fn missing_op_and_ref_are_reported() {
        let req = pb::MutateRequest {
            request_id: vec![0; 16],
            map_revision: 0,
            epoch: 0,
            shard: 0,
            op: None,
        };
        assert_eq!(Mutation::try_from(req), Err(WireError::Missing("op")));
        let req = pb::MutateRequest {
            request_id: vec![0; 16],
            map_revision: 0,
            epoch: 0,
            shard: 0,
            op: Some(PbOp::Unlink(pb::UnlinkOp { at: None })),
        };
        assert_eq!(
            Mutation::try_from(req),
            Err(WireError::Missing("unlink.at"))
        );
    }

    #[test]
    fn unknown_enum_values_are_invalid() {
        let req = pb::QueryRequest {
            map_revision: 0,
            consistency: 42,
            snapshot: 0,
            shard: 0,
            query: None,
        };
        assert!(matches!(
            Read::try_from(req),
            Err(WireError::Invalid {
                field: "consistency",
                ..
            })
        ));
    }
}
