//! Identity newtypes, inode attributes and directory entries.
//!
//! Every id a user or the log can see is a newtype with `Display`, so that a
//! shard, an inode and a log position can never be confused for one another.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A metadata shard. Shard 0 is the root shard; later work adds more.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ShardId(pub u16);

/// A global inode id: the shard in the high 16 bits, a shard-local number in
/// the low 48 bits, so an inode-addressed request routes without a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InodeId(pub u64);

/// Client-chosen id of one logical mutation; a retry reuses it so the
/// mutation applies at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u128);

/// Leadership/placement epoch of a shard. Commands may carry the epoch they
/// were routed under; a stale one is rejected.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

/// Content generation of an inode (bumped when a body is published; later work).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

/// Position of a command in the replicated log.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogIndex(pub u64);

const LOCAL_BITS: u32 = 48;
const LOCAL_MASK: u64 = (1 << LOCAL_BITS) - 1;

impl InodeId {
    /// Shard-local number of every shard's root directory.
    pub const ROOT_LOCAL: u64 = 1;

    /// Largest shard-local inode number.
    pub const MAX_LOCAL: u64 = LOCAL_MASK;

    pub fn compose(shard: ShardId, local: u64) -> InodeId {
        debug_assert!(local <= LOCAL_MASK, "local inode number overflows 48 bits");
        InodeId(((shard.0 as u64) << LOCAL_BITS) | (local & LOCAL_MASK))
    }

    pub fn root(shard: ShardId) -> InodeId {
        InodeId::compose(shard, Self::ROOT_LOCAL)
    }

    pub fn shard(self) -> ShardId {
        ShardId((self.0 >> LOCAL_BITS) as u16)
    }

    pub fn local(self) -> u64 {
        self.0 & LOCAL_MASK
    }
}

macro_rules! display_newtype {
    ($($t:ty => $fmt:literal),* $(,)?) => {
        $(impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        })*
    };
}

display_newtype!(
    ShardId => "shard-{}",
    Epoch => "epoch-{}",
    Generation => "gen-{}",
    LogIndex => "{}",
);

impl fmt::Display for InodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.shard().0, self.local())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileType {
    File,
    Directory,
    Symlink,
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileType::File => "file",
            FileType::Directory => "dir",
            FileType::Symlink => "symlink",
        })
    }
}

/// Attributes of one inode, as `stat` reports them. Times are nanoseconds
/// since the Unix epoch, stamped by the leader into the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub inode: InodeId,
    pub file_type: FileType,
    /// Permission bits only (`0o7777` mask); the type lives in `file_type`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub generation: Generation,
    pub mtime_ns: u64,
    pub ctime_ns: u64,
    /// Log index of the last mutation of this inode.
    pub version: LogIndex,
}

/// One entry of a directory listing (readdir-plus: the attributes come along).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}
