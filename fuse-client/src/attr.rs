//! Translations between NoKV's view of an inode and the kernel's: inode
//! numbers, attributes and error numbers. Pure functions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType as KernelType, INodeNo};
use nokv_client::{Attr, ClientError, FileType, InodeId};

/// The kernel's inode number for the mount's root.
pub const ROOT_INO: u64 = 1;

/// Maps NoKV inode ids to kernel inode numbers and back.
///
/// A global inode id is already a unique 64-bit number (the shard in the
/// high bits), so it is used as is, except that the kernel insists on
/// number 1 for the mount's root: the root's id and 1 swap places. A swap
/// is its own inverse, so the mapping is a bijection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeMap {
    root: InodeId,
}

impl InodeMap {
    pub fn new(root: InodeId) -> InodeMap {
        InodeMap { root }
    }

    /// The inode id of the mount's root.
    pub fn root(&self) -> InodeId {
        self.root
    }

    pub fn to_kernel(&self, id: InodeId) -> INodeNo {
        INodeNo(self.swap(id.0))
    }

    pub fn to_nokv(&self, ino: INodeNo) -> InodeId {
        InodeId(self.swap(ino.0))
    }

    fn swap(&self, n: u64) -> u64 {
        if n == self.root.0 {
            ROOT_INO
        } else if n == ROOT_INO {
            self.root.0
        } else {
            n
        }
    }
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

pub fn kernel_type(t: FileType) -> KernelType {
    match t {
        FileType::File => KernelType::RegularFile,
        FileType::Directory => KernelType::Directory,
        FileType::Symlink => KernelType::Symlink,
    }
}

/// The block size `stat` reports (the unit of `st_blocks` is always 512).
const BLKSIZE: u32 = 4096;

/// The kernel's attributes of `attr`. NoKV keeps no access time: it is
/// reported as the modification time (like a `noatime` mount).
pub fn kernel_attr(map: &InodeMap, attr: &Attr) -> FileAttr {
    FileAttr {
        ino: map.to_kernel(attr.inode),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: time(attr.mtime_ns),
        mtime: time(attr.mtime_ns),
        ctime: time(attr.ctime_ns),
        crtime: time(attr.ctime_ns),
        kind: kernel_type(attr.file_type),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// The error number the kernel gets for an SDK error.
///
/// A namespace error carries its own (`ENOENT`, `EEXIST`, ...). A request
/// whose outcome is unknown, a cluster or object store that does not
/// answer, and bytes that fail their check are `EIO`: the caller cannot
/// tell more, and must not assume the operation did not happen.
pub fn errno(err: &ClientError) -> Errno {
    match err {
        ClientError::Fs { errno, .. } if *errno > 0 => Errno::from_i32(*errno),
        ClientError::InvalidArgument(_) => Errno::EINVAL,
        ClientError::WrongShard { .. } => Errno::EXDEV,
        // The mount's token is missing, revoked, or of a role below the
        // operation's (a read-only token writing): refused, nothing done.
        ClientError::Unauthenticated(_) | ClientError::PermissionDenied(_) => Errno::EACCES,
        _ => Errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_client::{Generation, ShardId};
    use nokv_holt::LogIndex;

    #[test]
    fn refusals_of_the_token_are_eacces() {
        for e in [
            ClientError::Unauthenticated("no token".into()),
            ClientError::PermissionDenied("read role".into()),
        ] {
            assert_eq!(errno(&e), Errno::EACCES);
        }
    }

    #[test]
    fn the_root_and_inode_one_swap_and_everything_else_stays() {
        let root = InodeId::compose(ShardId(3), 42);
        let map = InodeMap::new(root);
        assert_eq!(map.to_kernel(root), INodeNo(ROOT_INO));
        assert_eq!(map.to_kernel(InodeId(ROOT_INO)), INodeNo(root.0));
        let other = InodeId::compose(ShardId(2), 7);
        assert_eq!(map.to_kernel(other), INodeNo(other.0));
        for id in [root, InodeId(ROOT_INO), other] {
            assert_eq!(map.to_nokv(map.to_kernel(id)), id);
        }
        // Mounting the whole tree (shard 0's root is id 1): the identity.
        let whole = InodeMap::new(InodeId::root(ShardId(0)));
        assert_eq!(whole.to_kernel(InodeId(1)), INodeNo(1));
        assert_eq!(whole.to_kernel(other), INodeNo(other.0));
    }

    #[test]
    fn attributes_keep_type_mode_owner_size_and_times() {
        let attr = Attr {
            inode: InodeId(77),
            file_type: FileType::File,
            mode: 0o100640,
            uid: 1000,
            gid: 100,
            nlink: 2,
            size: 1025,
            generation: Generation(3),
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 1_700_000_001_000_000_000,
            version: LogIndex(9),
        };
        let k = kernel_attr(&InodeMap::new(InodeId(1)), &attr);
        assert_eq!(k.ino, INodeNo(77));
        assert_eq!(k.kind, KernelType::RegularFile);
        assert_eq!(k.perm, 0o640);
        assert_eq!(
            (k.uid, k.gid, k.nlink, k.size, k.blocks),
            (1000, 100, 2, 1025, 3)
        );
        assert_eq!(
            k.mtime,
            UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789)
        );
        assert_eq!(k.ctime, UNIX_EPOCH + Duration::from_secs(1_700_000_001));
    }

    #[test]
    fn errors_map_to_the_numbers_the_kernel_expects() {
        let fs = |code: &str, errno| ClientError::Fs {
            code: code.into(),
            errno,
            message: String::new(),
        };
        assert_eq!(errno(&fs("ENOENT", 2)), Errno::ENOENT);
        assert_eq!(errno(&fs("ENOTEMPTY", 39)), Errno::from_i32(39));
        assert_eq!(errno(&ClientError::Unknown("timed out".into())), Errno::EIO);
        assert_eq!(errno(&ClientError::Unavailable("down".into())), Errno::EIO);
        assert_eq!(errno(&ClientError::Integrity("sha".into())), Errno::EIO);
        assert_eq!(
            errno(&ClientError::InvalidArgument("x".into())),
            Errno::EINVAL
        );
    }
}
