//! Read-only queries. A query never changes state and needs no log entry.

use serde::{Deserialize, Serialize};

use crate::body::{Body, BodySummary, StagedUpload};
use crate::command::InodeRef;
use crate::fields::{IndexKey, IndexRange};
use crate::graft::GraftInfo;
use crate::snapshot::{SnapshotId, SnapshotInfo};
use crate::types::{Attr, DirEntry, Generation, InodeId};

/// Largest page a `ReadDir` returns, whatever `limit` asks for.
pub const MAX_READDIR_PAGE: u32 = 1000;

/// A page of bodies (`ReadDirBodies`, `FindIndexed`) ends once its entries
/// weigh this much (`BodySummary::approx_bytes` plus names), whatever its
/// count: each may carry a field set of up to `MAX_SET_BYTES`, and a reply
/// must fit in one client message (4 MiB). A page always holds at least
/// one entry.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// `name` in directory `parent`.
    Lookup {
        parent: InodeId,
        name: String,
    },
    /// Attributes of an inode (a path's final symlink is not followed).
    GetAttr {
        inode: InodeRef,
    },
    /// A page of a directory in name order, strictly after `after`.
    /// `limit` 0 means the maximum page.
    ReadDir {
        dir: InodeRef,
        after: Option<String>,
        limit: u32,
    },
    /// Like `ReadDir`, with each file's body summary (no block plan): one
    /// request instead of one per file for a reader that wants every
    /// entry's attributes and publish metadata (the agent gateway).
    ReadDirBodies {
        dir: InodeRef,
        after: Option<String>,
        limit: u32,
    },
    ReadLink {
        inode: InodeRef,
    },
    GetXattr {
        inode: InodeRef,
        name: String,
    },
    ListXattr {
        inode: InodeRef,
    },
    /// A regular file's attributes and published body.
    ReadBody {
        inode: InodeRef,
    },
    /// Every staged upload, in id order.
    ListUploads,
    /// Every live snapshot pin, in id order.
    ListSnapshots,
    /// `query` answered against a snapshot: exactly the state at its pin.
    /// Paths must lie inside the snapshot's subtree.
    AtSnapshot {
        snapshot: SnapshotId,
        query: Box<Query>,
    },
    /// Every graft point of this shard, in child-shard order (for
    /// reconciliation with the control plane). Not available at a snapshot.
    Grafts,
    /// The block keys, in order, of body `generation` after it was replaced
    /// or removed and while it waits in the GC queue (the grace period, or
    /// a pin holding it). Generations are unique in a shard, so `inode` (the
    /// path or id the citation named) only routes the query; it need not
    /// resolve any more. Not available at a snapshot.
    RetiredBody {
        inode: InodeRef,
        generation: Generation,
    },
    /// Files below the directory `dir` with a value of `field` in `range`,
    /// read from the field index (see [`crate::fields`]): a page of at most
    /// `limit` hits (0: the maximum) in index order, strictly after
    /// `after`. The cost grows with the index entries of `field` in
    /// `range`, not with the size of the subtree.
    FindIndexed {
        dir: InodeRef,
        field: String,
        range: IndexRange,
        after: Option<(IndexKey, InodeId)>,
        limit: u32,
    },
    /// The distinct field names in this shard's field index, in order (at
    /// most [`MAX_INDEXED_FIELDS`]); `dir` routes the query and, at a
    /// snapshot, must lie in the pinned subtree. Names of fields anywhere
    /// in the shard, not only below `dir`: a reader asks `FindIndexed`
    /// for the files below it. Costs the number of names, not of files.
    IndexedFields {
        dir: InodeRef,
    },
}

/// Most names an `IndexedFields` returns.
pub const MAX_INDEXED_FIELDS: u32 = 10_000;

/// Largest page a `FindIndexed` returns.
pub const MAX_INDEXED_PAGE: u32 = 1000;

/// One path of a file a `FindIndexed` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedHit {
    /// Relative to the directory asked about (no leading slash).
    pub path: String,
    pub attr: Attr,
    /// The body's summary, with the file's field set.
    pub body: Option<BodySummary>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    Attr(Attr),
    Dir {
        entries: Vec<DirEntry>,
        /// Name to pass as `after` for the next page; `None` at the end.
        next: Option<String>,
    },
    /// `ReadDirBodies`: entries with their bodies' summaries (`None`: not
    /// a file, or no body published yet).
    DirBodies {
        entries: Vec<(DirEntry, Option<BodySummary>)>,
        next: Option<String>,
    },
    Target(String),
    Xattr(Vec<u8>),
    XattrNames(Vec<String>),
    /// A file's attributes and its body (`None`: no body published yet).
    Body {
        attr: Attr,
        body: Option<Body>,
    },
    Uploads(Vec<StagedUpload>),
    Snapshots(Vec<SnapshotInfo>),
    Grafts(Vec<GraftInfo>),
    /// A retired body's block keys in order (`RetiredBody`).
    Retired(Vec<String>),
    /// `FindIndexed`: one page of hits (a file with several matching
    /// values or several names below the directory appears once per
    /// value and name: the reader merges by path). `next` continues the
    /// scan; `unindexed` (first page only) says that some body below the
    /// directory was published without fields, so the index alone does
    /// not answer for it. (Conservative: with more than 1,024 unindexed
    /// bodies in the shard it is set without looking where they are.)
    Indexed {
        hits: Vec<IndexedHit>,
        next: Option<(IndexKey, InodeId)>,
        unindexed: bool,
    },
    /// `IndexedFields`: the names, and whether they are all of them.
    FieldNames {
        names: Vec<String>,
        complete: bool,
    },
}
