//! Object-backed file bodies: descriptors, staged uploads and the GC queue.
//!
//! A file body is a list of immutable blocks in the object store. Publishing
//! is two replicated commands around a client-side upload:
//! 1. `BeginPublish` records a [`StagedUpload`] (id, target, lease) and
//!    reserves the inode and a fresh [`Generation`]; block keys of that
//!    upload all start with [`StagedUpload::key_prefix`].
//! 2. The client uploads blocks under that prefix (no metadata involved).
//! 3. `CommitPublish` checks its predicate (create-only / expected
//!    generation) and makes the new [`Body`] visible in one step; the blocks
//!    of the body it replaces that it does not keep are queued for GC in the
//!    same command.
//!
//! Nothing here does I/O: the leader's workers read [`Holt::gc_tasks`] and
//! [`Holt::expired_uploads`], act on the object store, and report back
//! through commands (`GcDone`, `ExpireUploads`).
//!
//! Why GC is safe: every block key of a body starts with the prefix of the
//! upload that produced it, and that prefix carries a generation that is
//! allocated once per shard and never reused. A later body of the *same*
//! file may keep leading blocks of the body it replaces (an append: the
//! commit names them, and they must be exactly that body's first blocks),
//! so a key belongs to one chain of consecutive generations of one file.
//! The command that retires a body queues only the keys its successor does
//! not keep; once queued, a key is in no live body and can never become live
//! again (a commit can keep only live keys). A snapshot pin showing any body
//! of that file that names a queued key holds the task back. An abandoned
//! upload's prefix is never used by a body, so deleting everything under it
//! is safe.
//!
//! The prefix names the inode the upload was begun for. An `Upsert` whose
//! name holds a different file at commit publishes onto that file, so a
//! body's keys may carry another inode number: the prefix is a namespace for
//! uniqueness, not a pointer. Fsck must use [`Holt::live_blocks`] and
//! [`Holt::referenced_prefixes`], never parse keys.
//!
//! This module also holds the static (state-independent) checks of bodies
//! and leases, which the server runs before proposing, like `crate::path`.
//!
//! [`Holt::gc_tasks`]: crate::Holt::gc_tasks
//! [`Holt::expired_uploads`]: crate::Holt::expired_uploads
//! [`Holt::live_blocks`]: crate::Holt::live_blocks
//! [`Holt::referenced_prefixes`]: crate::Holt::referenced_prefixes

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::FsError;
use crate::path::preview;
use crate::types::{Generation, InodeId, LogIndex, ShardId};

/// Largest number of blocks in one body (4 MiB blocks: 64 GiB).
pub const MAX_BLOCKS: usize = 16_384;
/// Largest number of user attributes on one body.
pub const MAX_BODY_ATTRS: usize = 64;
/// Largest user attribute key / value, in bytes.
pub const MAX_BODY_ATTR_KEY: usize = 128;
pub const MAX_BODY_ATTR_VALUE: usize = 1024;
/// Largest content type / producer string, in bytes.
pub const MAX_BODY_LABEL: usize = 256;
/// Most uploads staged at once in one shard.
pub const MAX_STAGED_UPLOADS: usize = 100_000;
/// Longest block key, in bytes (the S3 limit).
pub const MAX_BLOCK_KEY_LEN: usize = 1024;
/// Longest upload lease one `BeginPublish`/`RenewUpload` may grant: 7 days.
pub const MAX_UPLOAD_LEASE_NS: u64 = 7 * 24 * 3600 * 1_000_000_000;
/// Most commits in one `CommitPublishBatch`.
pub const MAX_PUBLISH_BATCH: usize = 1024;
/// Length of a hex sha256 digest.
const SHA256_HEX_LEN: usize = 64;

/// Id of a staged upload, allocated by the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UploadId(pub u64);

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upload-{}", self.0)
    }
}

/// One immutable block of a body, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    /// Object key relative to the store's prefix.
    pub key: String,
    pub size: u64,
}

/// What the client says about the body it uploaded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodySpec {
    pub size: u64,
    pub blocks: Vec<BlockRef>,
    /// Lowercase hex sha256 of the whole body (64 characters).
    pub sha256: String,
    pub content_type: String,
    pub producer: String,
    pub attrs: BTreeMap<String, String>,
}

/// A published body: one generation of a file's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    pub generation: Generation,
    pub size: u64,
    pub blocks: Vec<BlockRef>,
    pub sha256: String,
    pub content_type: String,
    pub producer: String,
    pub attrs: BTreeMap<String, String>,
    /// Leader time of the commit, ns since the Unix epoch.
    pub published_ns: u64,
}

/// A body without its block plan: what a listing with bodies carries
/// (`Query::ReadDirBodies`). Read the body itself for its blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodySummary {
    pub generation: Generation,
    pub size: u64,
    /// How many blocks the body has.
    pub blocks: u32,
    pub sha256: String,
    pub content_type: String,
    pub producer: String,
    pub attrs: BTreeMap<String, String>,
    pub published_ns: u64,
    /// The file's searchable fields, if it was published with them.
    pub fields: Option<crate::fields::FieldSet>,
}

impl BodySummary {
    /// Roughly what the summary takes on the wire: its strings and field
    /// set, and a fixed allowance for the numbers.
    pub fn approx_bytes(&self) -> usize {
        64 + self.sha256.len()
            + self.content_type.len()
            + self.producer.len()
            + self
                .attrs
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self
                .fields
                .as_ref()
                .map_or(0, crate::fields::field_set_bytes)
    }
}

impl From<&Body> for BodySummary {
    fn from(b: &Body) -> BodySummary {
        BodySummary {
            generation: b.generation,
            size: b.size,
            blocks: u32::try_from(b.blocks.len()).unwrap_or(u32::MAX),
            sha256: b.sha256.clone(),
            content_type: b.content_type.clone(),
            producer: b.producer.clone(),
            attrs: b.attrs.clone(),
            published_ns: b.published_ns,
            fields: None,
        }
    }
}

/// What a publish may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishMode {
    /// The name must not exist (at begin and at commit).
    CreateOnly,
    /// The name must be a file whose current generation is `expected`
    /// (`Generation(0)` = a file that has no body yet).
    Replace { expected: Generation },
    /// Create, or replace whatever body the file has at commit time.
    Upsert,
    /// Replace the body of file `inode`, wherever it is linked (even under
    /// another name than at begin, or several), if its generation is still
    /// `expected`. The entry a `BeginPublish` names is only a hint: where
    /// the file was last seen, used for the event's path if it still names
    /// the file. For a client that holds a file open by inode (the FUSE
    /// mount) while others may rename it.
    Inode {
        inode: InodeId,
        expected: Generation,
    },
}

/// An upload between `BeginPublish` and `CommitPublish`. Replicated state:
/// it survives restarts, failover and snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedUpload {
    pub id: UploadId,
    /// Directory and name the body will be published at. For
    /// [`PublishMode::Inode`]: where the file was at begin if the hint named
    /// it, else `(inode, "")` (no name: the publish goes by inode).
    pub parent: InodeId,
    pub name: String,
    /// The inode the body belongs to: reserved for a create, the existing
    /// file for a replace (and for an upsert of an existing file). The
    /// commit may still land elsewhere: an upsert publishes onto whatever
    /// file holds the name at commit time, and creates a file under a fresh
    /// number if the begun-on file has vanished (numbers are never reused).
    pub inode: InodeId,
    pub generation: Generation,
    pub mode: PublishMode,
    /// Permission bits and owner of a newly created file.
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub created_ns: u64,
    pub lease_expires_ns: u64,
}

impl StagedUpload {
    /// Every block of this upload lives under this prefix.
    pub fn key_prefix(&self) -> String {
        block_prefix(self.inode.shard(), self.inode, self.generation)
    }
}

/// `blocks/{shard}/`: every block of the shard's files lies under it (and nothing of
/// another shard's).
pub fn shard_block_prefix(shard: ShardId) -> String {
    format!("blocks/{}/", shard.0)
}

/// `blocks/{shard}/{inode-local}/{generation}/`: unique per (inode, generation).
pub fn block_prefix(shard: ShardId, inode: InodeId, generation: Generation) -> String {
    format!(
        "{}{}/{}/",
        shard_block_prefix(shard),
        inode.local(),
        generation.0
    )
}

/// What a GC task deletes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcTarget {
    /// Exactly these keys (a superseded or removed body).
    Keys(Vec<String>),
    /// Every object under this prefix (an abandoned upload, whose blocks the
    /// metadata never learned).
    Prefix(String),
}

/// One queued deletion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcTask {
    /// Queue position; `GcDone` names it.
    pub seq: u64,
    pub target: GcTarget,
    /// Leader time when the data became unreachable (ns since the epoch).
    /// The worker waits a grace period after it so readers that started on
    /// the old generation can finish.
    pub enqueued_ns: u64,
    /// Log index of the command that queued it. The worker deletes nothing
    /// queued after the archive's recovery point, so a cluster restored
    /// from the archive never names a block that GC already deleted.
    pub enqueued_index: LogIndex,
    /// The file and generation whose body these blocks were, for a retired
    /// body (`None` for an abandoned upload). While a snapshot pin still
    /// shows that body, the task is held back.
    pub body_of: Option<(InodeId, Generation)>,
}

/// Checks a lease duration: more than 0 and at most [`MAX_UPLOAD_LEASE_NS`].
pub fn validate_lease(lease_ns: u64) -> Result<(), FsError> {
    if lease_ns == 0 || lease_ns > MAX_UPLOAD_LEASE_NS {
        return Err(FsError::InvalidArgument(format!(
            "upload lease of {lease_ns} ns is outside 1 ..= {MAX_UPLOAD_LEASE_NS} ns"
        )));
    }
    Ok(())
}

/// The static checks of a body description: everything that needs no
/// state. The one stateful rule, that every key lies under the upload's
/// [`StagedUpload::key_prefix`], is checked at commit.
pub fn validate_body_spec(spec: &BodySpec) -> Result<(), FsError> {
    validate_body_parts(BodyParts {
        size: spec.size,
        blocks: &spec.blocks,
        sha256: &spec.sha256,
        content_type: &spec.content_type,
        producer: &spec.producer,
        attrs: &spec.attrs,
    })
}

/// The fields a [`BodySpec`] and a [`Body`] share, so one function checks
/// both a command and a decoded image (the engine's compact form of it).
pub(crate) struct BodyParts<'a> {
    pub(crate) size: u64,
    pub(crate) blocks: &'a [BlockRef],
    pub(crate) sha256: &'a str,
    pub(crate) content_type: &'a str,
    pub(crate) producer: &'a str,
    pub(crate) attrs: &'a BTreeMap<String, String>,
}

pub(crate) fn validate_body_parts(body: BodyParts<'_>) -> Result<(), FsError> {
    let invalid = |what: String| Err(FsError::InvalidArgument(format!("body: {what}")));
    if body.blocks.is_empty() && body.size != 0 {
        return invalid(format!("size {} but no blocks", body.size));
    }
    if body.blocks.len() > MAX_BLOCKS {
        return invalid(format!("{} blocks, limit {MAX_BLOCKS}", body.blocks.len()));
    }
    let mut total: u64 = 0;
    let mut keys = BTreeSet::new();
    for (position, block) in body.blocks.iter().enumerate() {
        validate_block_key(&block.key)
            .map_err(|e| FsError::InvalidArgument(format!("body: block {position}: {e}")))?;
        if !keys.insert(block.key.as_str()) {
            return invalid(format!("block key {} appears twice", preview(&block.key)));
        }
        if block.size == 0 {
            return invalid(format!("block {position} is empty"));
        }
        total = match total.checked_add(block.size) {
            Some(total) => total,
            None => return invalid("block sizes overflow".into()),
        };
    }
    if total != body.size {
        return invalid(format!(
            "block sizes add up to {total}, not the body size {}",
            body.size
        ));
    }
    let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if body.sha256.len() != SHA256_HEX_LEN || !body.sha256.chars().all(is_hex) {
        return invalid(format!(
            "sha256 {} is not {SHA256_HEX_LEN} lowercase hex digits",
            preview(body.sha256)
        ));
    }
    for (what, label) in [
        ("content type", body.content_type),
        ("producer", body.producer),
    ] {
        if label.len() > MAX_BODY_LABEL {
            return invalid(format!(
                "{what} is {} bytes, limit {MAX_BODY_LABEL}",
                label.len()
            ));
        }
    }
    if body.attrs.len() > MAX_BODY_ATTRS {
        return invalid(format!(
            "{} attributes, limit {MAX_BODY_ATTRS}",
            body.attrs.len()
        ));
    }
    for (key, value) in body.attrs {
        if key.is_empty() {
            return invalid("an attribute has an empty key".into());
        }
        if key.len() > MAX_BODY_ATTR_KEY {
            return invalid(format!(
                "attribute key {} is {} bytes, limit {MAX_BODY_ATTR_KEY}",
                preview(key),
                key.len()
            ));
        }
        if value.len() > MAX_BODY_ATTR_VALUE {
            return invalid(format!(
                "attribute {} has a {}-byte value, limit {MAX_BODY_ATTR_VALUE}",
                preview(key),
                value.len()
            ));
        }
    }
    Ok(())
}

/// A block key must be a plain relative object key: the GC worker deletes
/// exactly these keys, so nothing that could name another object through
/// `..`, a leading `/` or control bytes is accepted.
fn validate_block_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.len() > MAX_BLOCK_KEY_LEN {
        return Err(format!(
            "key {} is {} bytes, limit {MAX_BLOCK_KEY_LEN}",
            preview(key),
            key.len()
        ));
    }
    if key.starts_with('/') || key.contains("..") || key.chars().any(char::is_control) {
        return Err(format!(
            "key {} contains '..', a leading '/' or control characters",
            preview(key)
        ));
    }
    Ok(())
}
