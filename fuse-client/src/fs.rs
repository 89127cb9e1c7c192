//! The kernel's requests, answered through the SDK.
//!
//! fuser calls these methods on its own threads; each one hands its request
//! to the tokio runtime as a task and returns, and the task replies when
//! the cluster (or the object store) has answered. So a slow request holds
//! no kernel thread, and requests to different shards run side by side.
//!
//! Reads follow close-to-open: `open` reads the file's current body (its
//! generation and block list) once, and every `read` of that handle serves
//! bytes of exactly that generation from the object store, however often
//! the file is replaced meanwhile. A reader sees the old bytes or the new
//! ones, never a mix. Bytes come from whole blocks held in the mount's
//! block cache (`blocks`); a reader moving sequentially through a file has
//! the next blocks fetched ahead of it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use nokv_client::{
    Attr, Body, Client, ClientError, Consistency, DirEntry, InodeId, InodeRef, Query, QueryResult,
    ShardId,
};
use tokio::runtime::Handle as Runtime;

use crate::attr::{errno, kernel_attr, kernel_type, InodeMap};
use crate::blocks::{plan, BlockCache};
use crate::MountOptions;

/// Entries asked of the cluster per directory page.
const DIR_PAGE: u32 = 1000;

/// Blocks fetched ahead of a sequential reader.
const READ_AHEAD_BLOCKS: usize = 2;

/// An open file: read at the generation it had when it was opened.
struct OpenFile {
    /// `None`: no body was ever published; it reads as empty.
    body: Option<Body>,
    /// Where the last read ended (a read starting here is sequential).
    next: AtomicU64,
}

/// What an open handle holds.
enum Open {
    File(Arc<OpenFile>),
    /// A directory listing, fetched page by page as the kernel reads on.
    Dir(Arc<tokio::sync::Mutex<Listing>>),
}

/// The part of a directory read so far. Offsets the kernel passes back are
/// positions in `entries` (after `.` and `..`), so a listing continues
/// where it stopped even if names are added or removed meanwhile.
struct Listing {
    dir: InodeId,
    entries: Vec<DirEntry>,
    /// The name to continue after; `None` once the last page has come.
    next: Option<String>,
    done: bool,
}

/// State shared by every request of one mount.
struct Shared {
    client: Client,
    runtime: Runtime,
    map: InodeMap,
    options: MountOptions,
    blocks: Arc<BlockCache>,
    open: Mutex<HashMap<u64, Open>>,
    next_handle: AtomicU64,
}

/// A NoKV namespace (or a subtree, or a snapshot of one) as a FUSE
/// filesystem.
pub struct NokvFs {
    shared: Arc<Shared>,
}

impl NokvFs {
    /// A filesystem rooted at inode `root`, answering through `client`
    /// (which may be a snapshot view) on `runtime`.
    pub fn new(client: Client, runtime: Runtime, root: InodeId, options: MountOptions) -> NokvFs {
        NokvFs {
            shared: Arc::new(Shared {
                client,
                runtime,
                map: InodeMap::new(root),
                blocks: BlockCache::new(options.cache_bytes),
                options,
                open: Mutex::new(HashMap::new()),
                next_handle: AtomicU64::new(1),
            }),
        }
    }

    /// Runs `work` on the runtime with the shared state; it replies itself.
    fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let shared = self.shared.clone();
        self.shared.runtime.spawn(work(shared));
    }
}

impl Shared {
    fn consistency(&self) -> Consistency {
        self.options.consistency
    }

    async fn query(&self, query: Query) -> Result<QueryResult, ClientError> {
        self.client.query(query, self.consistency()).await
    }

    async fn attr_of(&self, id: InodeId) -> Result<Attr, ClientError> {
        match self
            .query(Query::GetAttr {
                inode: InodeRef::Id(id),
            })
            .await?
        {
            QueryResult::Attr(a) => Ok(a),
            _ => Err(unexpected("attributes")),
        }
    }

    /// `name` in directory `parent`. A graft point (the root of another
    /// shard) answers from that shard.
    async fn lookup(&self, parent: InodeId, name: String) -> Result<Attr, ClientError> {
        let found = self.query(Query::Lookup { parent, name }).await;
        match found {
            Ok(QueryResult::Attr(a)) => Ok(a),
            Ok(_) => Err(unexpected("attributes")),
            Err(ClientError::WrongShard { shard, .. }) => {
                self.attr_of(InodeId::root(ShardId(shard))).await
            }
            Err(e) => Err(e),
        }
    }

    fn store(&self, open: Open) -> FileHandle {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut table) = self.open.lock() {
            table.insert(fh, open);
        }
        FileHandle(fh)
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        let table = self.open.lock().map_err(|_| Errno::EIO)?;
        match table.get(&fh.0) {
            Some(Open::File(file)) => Ok(file.clone()),
            Some(Open::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::EBADF),
        }
    }

    fn listing(&self, fh: FileHandle) -> Result<Arc<tokio::sync::Mutex<Listing>>, Errno> {
        let table = self.open.lock().map_err(|_| Errno::EIO)?;
        match table.get(&fh.0) {
            Some(Open::Dir(listing)) => Ok(listing.clone()),
            Some(Open::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::EBADF),
        }
    }

    fn close(&self, fh: FileHandle) {
        if let Ok(mut table) = self.open.lock() {
            table.remove(&fh.0);
        }
    }

    /// Makes sure `listing` holds entry `index` (or is complete).
    async fn fill(&self, listing: &mut Listing, index: usize) -> Result<(), ClientError> {
        while listing.entries.len() <= index && !listing.done {
            let page = self
                .query(Query::ReadDir {
                    dir: InodeRef::Id(listing.dir),
                    after: listing.next.clone(),
                    limit: DIR_PAGE,
                })
                .await?;
            let QueryResult::Dir { entries, next } = page else {
                return Err(unexpected("a directory page"));
            };
            listing.entries.extend(entries);
            listing.done = next.is_none();
            listing.next = next;
        }
        Ok(())
    }
}

fn unexpected(what: &str) -> ClientError {
    ClientError::Protocol(format!("expected {what} in reply"))
}

fn name_of(name: &OsStr) -> Result<String, Errno> {
    // NoKV names are UTF-8; the kernel may hand us any bytes.
    name.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

/// One entry of a directory stream: `.`, `..`, then the listing.
enum Slot<'a> {
    Dot,
    DotDot,
    Entry(&'a DirEntry),
}

/// The entry at stream position `offset`, if the listing has it.
fn slot(listing: &Listing, offset: usize) -> Option<Slot<'_>> {
    match offset {
        0 => Some(Slot::Dot),
        1 => Some(Slot::DotDot),
        n => listing.entries.get(n - 2).map(Slot::Entry),
    }
}

impl Filesystem for NokvFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Sequential readers get large reads (fewer object-store requests).
        let _ = config.set_max_readahead(1024 * 1024);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |s| async move {
            let parent = s.map.to_nokv(parent);
            match s.lookup(parent, name).await {
                Ok(attr) => reply.entry(
                    &s.options.entry_ttl,
                    &kernel_attr(&s.map, &attr),
                    Generation(0),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(move |s| async move {
            match s.attr_of(s.map.to_nokv(ino)).await {
                Ok(attr) => reply.attr(&s.options.attr_ttl, &kernel_attr(&s.map, &attr)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |s| async move {
            let inode = InodeRef::Id(s.map.to_nokv(ino));
            match s.query(Query::ReadLink { inode }).await {
                Ok(QueryResult::Target(t)) => reply.data(t.as_bytes()),
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        self.spawn(move |s| async move {
            let inode = InodeRef::Id(s.map.to_nokv(ino));
            match s.query(Query::ReadBody { inode }).await {
                Ok(QueryResult::Body { body, .. }) => {
                    let fh = s.store(Open::File(Arc::new(OpenFile {
                        body,
                        next: AtomicU64::new(0),
                    })));
                    reply.opened(fh, FopenFlags::empty());
                }
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(move |s| async move {
            let file = match s.file(fh) {
                Ok(file) => file,
                Err(e) => return reply.error(e),
            };
            let Some(body) = &file.body else {
                return reply.data(&[]);
            };
            let end = offset.saturating_add(u64::from(size)).min(body.size);
            if offset >= end {
                return reply.data(&[]);
            }
            if s.options.cache_bytes == 0 {
                // No cache: fetch exactly the bytes asked for.
                return match s.client.read_range(body, Some(offset..end)).await {
                    Ok(bytes) => reply.data(&bytes),
                    Err(e) => reply.error(errno(&e)),
                };
            }
            let parts = plan(&body.blocks, offset, end);
            let mut out = Vec::with_capacity((end - offset) as usize);
            for (index, range) in &parts {
                let block = &body.blocks[*index];
                match s.blocks.get(&s.client, block).await {
                    Ok(bytes) => out.extend_from_slice(&bytes[range.clone()]),
                    Err(e) => {
                        tracing::warn!(error = %e, offset, size, "read failed");
                        return reply.error(errno(&e));
                    }
                }
            }
            reply.data(&out);
            // A sequential reader gets the next blocks fetched ahead.
            let sequential = file.next.swap(end, Ordering::Relaxed) == offset;
            if let (true, Some((last, _))) = (sequential, parts.last()) {
                for block in body.blocks.iter().skip(last + 1).take(READ_AHEAD_BLOCKS) {
                    s.blocks.prefetch(&s.client, block);
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered in a read-only mount.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.close(fh);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(move |s| async move {
            let dir = s.map.to_nokv(ino);
            // Refuse a non-directory now rather than at the first read.
            match s.attr_of(dir).await {
                Ok(a) if a.file_type == nokv_client::FileType::Directory => {
                    let fh = s.store(Open::Dir(Arc::new(tokio::sync::Mutex::new(Listing {
                        dir,
                        entries: Vec::new(),
                        next: None,
                        done: false,
                    }))));
                    reply.opened(fh, FopenFlags::empty());
                }
                Ok(_) => reply.error(Errno::ENOTDIR),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.spawn(move |s| async move {
            let listing = match s.listing(fh) {
                Ok(l) => l,
                Err(e) => return reply.error(e),
            };
            let mut listing = listing.lock().await;
            let mut at = offset as usize;
            loop {
                if let Err(e) = s.fill(&mut listing, at.saturating_sub(2)).await {
                    return reply.error(errno(&e));
                }
                let Some(entry) = slot(&listing, at) else {
                    break;
                };
                let next = (at + 1) as u64;
                let full = match entry {
                    Slot::Dot => reply.add(ino, next, fuser::FileType::Directory, "."),
                    Slot::DotDot => reply.add(ino, next, fuser::FileType::Directory, ".."),
                    Slot::Entry(e) => reply.add(
                        s.map.to_kernel(e.attr.inode),
                        next,
                        kernel_type(e.attr.file_type),
                        &e.name,
                    ),
                };
                if full {
                    break;
                }
                at += 1;
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.spawn(move |s| async move {
            let listing = match s.listing(fh) {
                Ok(l) => l,
                Err(e) => return reply.error(e),
            };
            let mut listing = listing.lock().await;
            let dir_attr = match s.attr_of(s.map.to_nokv(ino)).await {
                Ok(a) => kernel_attr(&s.map, &a),
                Err(e) => return reply.error(errno(&e)),
            };
            let ttl = s.options.entry_ttl;
            let mut at = offset as usize;
            loop {
                if let Err(e) = s.fill(&mut listing, at.saturating_sub(2)).await {
                    return reply.error(errno(&e));
                }
                let Some(entry) = slot(&listing, at) else {
                    break;
                };
                let next = (at + 1) as u64;
                let full = match entry {
                    Slot::Dot => reply.add(ino, next, ".", &ttl, &dir_attr, Generation(0)),
                    Slot::DotDot => reply.add(ino, next, "..", &ttl, &dir_attr, Generation(0)),
                    Slot::Entry(e) => {
                        // A graft point lists with placeholder attributes:
                        // its real ones live in the grafted shard.
                        let attr = if e.attr.inode.shard() != listing.dir.shard() {
                            match s.attr_of(e.attr.inode).await {
                                Ok(a) => a,
                                Err(err) => return reply.error(errno(&err)),
                            }
                        } else {
                            e.attr.clone()
                        };
                        let k = kernel_attr(&s.map, &attr);
                        reply.add(k.ino, next, &e.name, &ttl, &k, Generation(0))
                    }
                };
                if full {
                    break;
                }
                at += 1;
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.close(fh);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Capacity is the object store's, which does not say; report a large
        // free space so tools that check it before writing go ahead.
        const BLOCKS: u64 = 1 << 40;
        const FILES: u64 = 1 << 40;
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, FILES, FILES, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |s| async move {
            let inode = InodeRef::Id(s.map.to_nokv(ino));
            match s.query(Query::GetXattr { inode, name }).await {
                Ok(QueryResult::Xattr(value)) => sized(reply, size, &value),
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn(move |s| async move {
            let inode = InodeRef::Id(s.map.to_nokv(ino));
            match s.query(Query::ListXattr { inode }).await {
                Ok(QueryResult::XattrNames(names)) => {
                    let mut list = Vec::new();
                    for n in names {
                        list.extend_from_slice(n.as_bytes());
                        list.push(0);
                    }
                    sized(reply, size, &list)
                }
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

/// The xattr protocol: size 0 asks for the length; a buffer too small is
/// `ERANGE`.
fn sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    let Ok(len) = u32::try_from(value.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len)
    } else if len > size {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}
