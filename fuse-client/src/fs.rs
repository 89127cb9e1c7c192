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
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nokv_client::{
    Applied, Attr, Body, Client, ClientError, Consistency, DirEntry, EntryRef, FileType, InodeId,
    InodeRef, Op, Query, QueryResult, RenameMode, SetAttr, ShardId, XattrFlag,
};
use tokio::runtime::Handle as Runtime;

use crate::attr::{errno, kernel_attr, kernel_type, InodeMap};
use crate::blocks::{plan, BlockCache};
use crate::disk::DiskCache;
use crate::write::{Draft, Drafts, Target};
use crate::MountOptions;

/// Entries asked of the cluster per directory page.
const DIR_PAGE: u32 = 1000;

/// Blocks fetched ahead of a sequential reader.
const READ_AHEAD_BLOCKS: usize = 6;

/// An open file.
struct OpenFile {
    source: Source,
    /// The process (thread group) that opened it. Only its closes publish:
    /// a child that inherited the descriptor closes its copy at `exec` or
    /// exit, and that must not publish a half-written file.
    opener: u32,
    /// Where the last read ended (a read starting here is sequential).
    next: AtomicU64,
}

/// Where an open file's bytes come from.
enum Source {
    /// The generation it had when it was opened (`None`: no body was ever
    /// published; it reads as empty).
    Published(Option<Body>),
    /// This mount's unpublished draft of it (see `write`): every handle
    /// opened for writing, and any opened while such a handle is open.
    Draft(Arc<Draft>),
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

/// The name each file was last seen under, both ways, so that an unlink
/// or a rename updates it in constant time.
#[derive(Default)]
struct Links {
    by_inode: HashMap<InodeId, (InodeId, String)>,
    by_name: HashMap<(InodeId, String), InodeId>,
}

impl Links {
    fn insert(&mut self, inode: InodeId, link: (InodeId, String)) {
        self.remove_inode(inode);
        if let Some(other) = self.by_name.insert(link.clone(), inode) {
            if other != inode {
                self.by_inode.remove(&other);
            }
        }
        self.by_inode.insert(inode, link);
    }

    fn name_of(&self, inode: InodeId) -> Option<(InodeId, String)> {
        self.by_inode.get(&inode).cloned()
    }

    fn inode_at(&self, link: &(InodeId, String)) -> Option<InodeId> {
        self.by_name.get(link).copied()
    }

    /// Forgets the name `link`; returns the file it named.
    fn remove_name(&mut self, link: &(InodeId, String)) -> Option<InodeId> {
        let inode = self.by_name.remove(link)?;
        self.by_inode.remove(&inode);
        Some(inode)
    }

    fn remove_inode(&mut self, inode: InodeId) {
        if let Some(link) = self.by_inode.remove(&inode) {
            self.by_name.remove(&link);
        }
    }
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
    drafts: Drafts,
    /// The name each file was last seen under (from `lookup`, a listing,
    /// `create`, `rename`, ...): the hint a draft's publish carries.
    links: Mutex<Links>,
}

/// A NoKV namespace (or a subtree, or a snapshot of one) as a FUSE
/// filesystem.
pub struct NokvFs {
    shared: Arc<Shared>,
}

impl NokvFs {
    /// The name argument of a change, once the mount takes changes.
    fn changeable(&self, name: &OsStr) -> Result<String, Errno> {
        self.shared.writable()?;
        name_of(name)
    }

    /// A filesystem rooted at inode `root`, answering through `client`
    /// (which may be a snapshot view) on `runtime`.
    pub fn new(client: Client, runtime: Runtime, root: InodeId, options: MountOptions) -> NokvFs {
        NokvFs::with_disk_cache(client, runtime, root, options, None)
    }

    /// [`NokvFs::new`], with a disk tier under the block cache.
    pub(crate) fn with_disk_cache(
        client: Client,
        runtime: Runtime,
        root: InodeId,
        options: MountOptions,
        disk: Option<Arc<DiskCache>>,
    ) -> NokvFs {
        NokvFs {
            shared: Arc::new(Shared {
                client,
                runtime,
                map: InodeMap::new(root),
                blocks: BlockCache::new(options.cache_bytes, disk),
                drafts: Drafts::new(options.spill_dir.clone()),
                links: Mutex::new(Links::default()),
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

    /// `attr` for the kernel, with this mount's unpublished size.
    fn shown(&self, attr: &Attr) -> fuser::FileAttr {
        kernel_attr(&self.map, &self.drafts.overlay(attr.clone()))
    }

    /// Notes that `attr`'s inode is `name` in `parent` (files only: only
    /// they publish by name).
    fn remember(&self, parent: InodeId, name: &str, attr: &Attr) {
        if attr.file_type == FileType::File {
            if let Ok(mut links) = self.links.lock() {
                links.insert(attr.inode, (parent, name.to_string()));
            }
        }
    }

    /// What a draft of `inode` needs to fill and publish itself.
    fn target(&self, inode: InodeId) -> Target<'_> {
        Target {
            client: &self.client,
            blocks: &self.blocks,
            drafts: &self.drafts,
            at: self
                .links
                .lock()
                .ok()
                .and_then(|links| links.name_of(inode)),
        }
    }

    /// Refuses changes to a read-only mount.
    fn writable(&self) -> Result<(), Errno> {
        if self.options.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Applies a change that answers with attributes.
    async fn change(&self, op: Op) -> Result<Attr, ClientError> {
        match self.client.mutate(op).await? {
            Applied::Attr(a) => Ok(a),
            _ => Err(unexpected("attributes")),
        }
    }

    /// Applies a change that answers with nothing.
    async fn apply(&self, op: Op) -> Result<(), ClientError> {
        self.client.mutate(op).await.map(|_| ())
    }

    /// Publishes `draft` (if it is dirty).
    async fn publish(&self, draft: &Draft) -> Result<(), Errno> {
        draft.publish(&self.target(draft.inode())).await.map(|_| ())
    }

    /// A handle on file `inode`. Writers (and readers, while this mount
    /// has a draft of the file) go through the draft; other readers read
    /// the generation the file has now.
    async fn open_file(
        &self,
        inode: InodeId,
        flags: OpenFlags,
        opener: u32,
    ) -> Result<FileHandle, Errno> {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let source = if write || self.drafts.get(inode).is_some() {
            let draft = self.drafts.attach(inode)?;
            if write && flags.0 & libc::O_TRUNC != 0 {
                if let Err(e) = draft.truncate(&self.target(inode), 0).await {
                    self.drafts.detach(&draft);
                    return Err(e);
                }
            }
            Source::Draft(draft)
        } else {
            match self
                .query(Query::ReadBody {
                    inode: InodeRef::Id(inode),
                })
                .await
            {
                Ok(QueryResult::Body { body, .. }) => Source::Published(body),
                Ok(_) => return Err(Errno::EIO),
                Err(e) => return Err(errno(&e)),
            }
        };
        Ok(self.store(Open::File(Arc::new(OpenFile {
            source,
            opener,
            next: AtomicU64::new(0),
        }))))
    }

    /// Answers a read of a published body from the block cache (or with a
    /// ranged GET when there is none), fetching ahead of a sequential reader.
    async fn read_body(
        &self,
        file: &OpenFile,
        body: &Body,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) {
        let end = offset.saturating_add(u64::from(size)).min(body.size);
        if offset >= end {
            return reply.data(&[]);
        }
        if self.options.cache_bytes == 0 {
            return match self.client.read_range(body, Some(offset..end)).await {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(errno(&e)),
            };
        }
        let parts = plan(&body.blocks, offset, end);
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (index, range) in &parts {
            let block = &body.blocks[*index];
            match self.blocks.get(&self.client, block).await {
                Ok(bytes) => out.extend_from_slice(&bytes[range.clone()]),
                Err(e) => {
                    tracing::warn!(error = %e, offset, size, "read failed");
                    return reply.error(errno(&e));
                }
            }
        }
        reply.data(&out);
        let sequential = file.next.swap(end, Ordering::Relaxed) == offset;
        if let (true, Some((last, _))) = (sequential, parts.last()) {
            for block in body.blocks.iter().skip(last + 1).take(READ_AHEAD_BLOCKS) {
                self.blocks.prefetch(&self.client, block);
            }
        }
    }

    /// `truncate`: a file with a draft here changes its draft (published
    /// at close); otherwise the new size is published at once.
    async fn resize(&self, inode: InodeId, size: u64) -> Result<(), Errno> {
        let target = self.target(inode);
        if let Some(draft) = self.drafts.get(inode) {
            return draft.truncate(&target, size).await;
        }
        match self.attr_of(inode).await {
            Ok(attr) if attr.size == size => return Ok(()),
            Ok(attr) if attr.file_type == FileType::Directory => return Err(Errno::EISDIR),
            Ok(_) => {}
            Err(e) => return Err(errno(&e)),
        }
        let draft = self.drafts.attach(inode)?;
        let mut result = draft.truncate(&target, size).await;
        if result.is_ok() {
            result = draft.publish(&target).await.map(|_| ());
        }
        self.drafts.detach(&draft);
        result
    }

    /// Before `link` (a name in a directory) is removed or replaced: a file
    /// there with a draft in this mount gets its bytes copied in now, so
    /// its open handles keep reading and writing them (POSIX lets an
    /// unlinked file live on while it is open).
    async fn keep_open_bytes(&self, link: &(InodeId, String)) {
        let inode = self
            .links
            .lock()
            .ok()
            .and_then(|links| links.inode_at(link));
        if let Some(draft) = inode.and_then(|inode| self.drafts.get(inode)) {
            if let Err(e) = draft.fill(&self.target(draft.inode())).await {
                tracing::warn!(inode = %draft.inode(), error = ?e, "keeping an open file's bytes");
            }
            if let Ok(attr) = self.attr_of(draft.inode()).await {
                draft.orphaned(attr);
            }
        }
    }

    /// After `from` was renamed to `to`: the file that was at `to` lost
    /// that name, and the one at `from` has it.
    fn renamed(&self, from: &(InodeId, String), to: &(InodeId, String)) {
        if let Ok(mut links) = self.links.lock() {
            links.remove_name(to);
            if let Some(inode) = links.remove_name(from) {
                links.insert(inode, to.clone());
            }
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

    /// The draft a handle writes to (EBADF for a handle opened read-only).
    fn draft_of(&self, fh: FileHandle) -> Result<Arc<Draft>, Errno> {
        match &self.file(fh)?.source {
            Source::Draft(draft) => Ok(draft.clone()),
            Source::Published(_) => Err(Errno::EBADF),
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

    /// Forgets a handle and returns what it held.
    fn close(&self, fh: FileHandle) -> Option<Open> {
        self.open.lock().ok()?.remove(&fh.0)
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

/// The process (thread group) of thread `tid`, as the kernel names the
/// requester by thread. `tid` itself when /proc does not say.
fn process_of(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

/// `name` in directory `parent`.
fn child(link: &(InodeId, String)) -> EntryRef {
    EntryRef::Child {
        parent: link.0,
        name: link.1.clone(),
    }
}

/// A time the kernel gives, in ns since the Unix epoch (`Now` is this
/// machine's clock: the kernel asked for "now" as this client sees it).
fn unix_ns(t: TimeOrNow) -> u64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

impl NokvFs {
    /// Makes a new entry `name` in `parent` owned by the caller, and
    /// answers with it.
    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEntry,
        op: impl FnOnce(EntryRef, (u32, u32)) -> Op + Send + 'static,
    ) {
        let owner = (req.uid(), req.gid());
        self.make_as(parent, name, reply, move |at| op(at, owner));
    }

    fn make_as(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEntry,
        op: impl FnOnce(EntryRef) -> Op + Send + 'static,
    ) {
        let name = match self.changeable(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |s| async move {
            let link = (s.map.to_nokv(parent), name);
            match s.change(op(child(&link))).await {
                Ok(attr) => {
                    s.remember(link.0, &link.1, &attr);
                    reply.entry(&s.options.entry_ttl, &s.shown(&attr), Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// Removes the entry `name` of `parent`.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        op: impl FnOnce(EntryRef) -> Op + Send + 'static,
    ) {
        let name = match self.changeable(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |s| async move {
            let link = (s.map.to_nokv(parent), name);
            s.keep_open_bytes(&link).await;
            match s.apply(op(child(&link))).await {
                Ok(()) => {
                    if let Ok(mut links) = s.links.lock() {
                        links.remove_name(&link);
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
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
        // Writes arrive 1 MiB at a time, and `open(O_TRUNC)` comes as one
        // request (not a truncate, then an open).
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |s| async move {
            let parent = s.map.to_nokv(parent);
            match s.lookup(parent, name.clone()).await {
                Ok(attr) => {
                    s.remember(parent, &name, &attr);
                    reply.entry(&s.options.entry_ttl, &s.shown(&attr), Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        // The kernel dropped the inode: no handle is open on it.
        if let Ok(mut links) = self.shared.links.lock() {
            links.remove_inode(self.shared.map.to_nokv(ino));
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(move |s| async move {
            let id = s.map.to_nokv(ino);
            match s.attr_of(id).await {
                Ok(attr) => reply.attr(&s.options.attr_ttl, &s.shown(&attr)),
                // Unlinked, but open here: it lives on without a name.
                Err(e) if e.is_not_found() => {
                    match s.drafts.get(id).and_then(|draft| draft.orphan()) {
                        Some(attr) => reply.attr(&s.options.attr_ttl, &s.shown(&attr)),
                        None => reply.error(errno(&e)),
                    }
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Err(e) = self.shared.writable() {
            return reply.error(e);
        }
        self.spawn(move |s| async move {
            let id = s.map.to_nokv(ino);
            if let Some(size) = size {
                if let Err(e) = s.resize(id, size).await {
                    return reply.error(e);
                }
            }
            if let (Some(t), Some(draft)) = (mtime, s.drafts.get(id)) {
                draft.keep_mtime(unix_ns(t));
            }
            // NoKV keeps no access time: an atime-only change is a no-op.
            let set = SetAttr {
                mode: mode.map(|m| m & 0o7777),
                uid,
                gid,
                size: None,
                mtime_ns: mtime.map(unix_ns),
            };
            let result = if set == SetAttr::default() {
                s.attr_of(id).await
            } else {
                s.change(Op::SetAttr {
                    inode: InodeRef::Id(id),
                    set,
                })
                .await
            };
            match result {
                Ok(attr) => reply.attr(&s.options.attr_ttl, &s.shown(&attr)),
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

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Devices, fifos and sockets have no meaning in an object store.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        self.make(req, parent, name, reply, move |at, owner| Op::Create {
            at,
            mode: mode & !umask,
            uid: owner.0,
            gid: owner.1,
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.make(req, parent, name, reply, move |at, owner| Op::Mkdir {
            at,
            mode: mode & !umask,
            uid: owner.0,
            gid: owner.1,
            parents: false,
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let Some(target) = target.to_str().map(str::to_string) else {
            return reply.error(Errno::EINVAL);
        };
        self.make(req, parent, link_name, reply, move |at, owner| {
            Op::Symlink {
                at,
                target,
                uid: owner.0,
                gid: owner.1,
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let inode = InodeRef::Id(self.shared.map.to_nokv(ino));
        self.make_as(newparent, newname, reply, move |at| Op::Link { inode, at });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |at| Op::Unlink { at });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |at| Op::Rmdir { at });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.shared.writable() {
            return reply.error(e);
        }
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else {
            // RENAME_EXCHANGE and RENAME_WHITEOUT are not supported.
            return reply.error(Errno::EINVAL);
        };
        let (name, newname) = match (name_of(name), name_of(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        self.spawn(move |s| async move {
            let from = (s.map.to_nokv(parent), name);
            let to = (s.map.to_nokv(newparent), newname);
            s.keep_open_bytes(&to).await;
            let op = Op::Rename {
                from: child(&from),
                to: child(&to),
                mode,
            };
            match s.apply(op).await {
                Ok(()) => {
                    s.renamed(&from, &to);
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match self.changeable(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let owner = (req.uid(), req.gid());
        let opener = process_of(req.pid());
        self.spawn(move |s| async move {
            let parent = s.map.to_nokv(parent);
            let op = Op::Create {
                at: child(&(parent, name.clone())),
                mode: mode & !umask,
                uid: owner.0,
                gid: owner.1,
            };
            let attr = match s.change(op).await {
                Ok(attr) => attr,
                // Someone made it since the kernel looked: open theirs,
                // unless the caller asked for a new file.
                Err(e) if e.is_exists() && flags & libc::O_EXCL == 0 => {
                    match s.lookup(parent, name.clone()).await {
                        Ok(attr) => attr,
                        Err(e) => return reply.error(errno(&e)),
                    }
                }
                Err(e) => return reply.error(errno(&e)),
            };
            s.remember(parent, &name, &attr);
            match s.open_file(attr.inode, OpenFlags(flags), opener).await {
                Ok(fh) => reply.created(
                    &s.options.entry_ttl,
                    &s.shown(&attr),
                    Generation(0),
                    fh,
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(e),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            if let Err(e) = self.shared.writable() {
                return reply.error(e);
            }
        }
        let opener = process_of(req.pid());
        self.spawn(move |s| async move {
            match s.open_file(s.map.to_nokv(ino), flags, opener).await {
                Ok(fh) => reply.opened(fh, FopenFlags::empty()),
                Err(e) => reply.error(e),
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
            match &file.source {
                Source::Draft(draft) => {
                    match draft.read(&s.target(draft.inode()), offset, size).await {
                        Ok(bytes) => reply.data(&bytes),
                        Err(e) => reply.error(e),
                    }
                }
                Source::Published(None) => reply.data(&[]),
                Source::Published(Some(body)) => {
                    s.read_body(&file, body, offset, size, reply).await
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.spawn(move |s| async move {
            let draft = match s.draft_of(fh) {
                Ok(draft) => draft,
                Err(e) => return reply.error(e),
            };
            match draft.write(&s.target(draft.inode()), offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close by the process that opened the file: a dirty draft
        // becomes the file's next generation, and close(2) tells whether
        // that worked. (Closes of inherited copies publish nothing; the
        // last close of all, `release`, publishes what is left.)
        let closer = process_of(req.pid());
        self.spawn(move |s| async move {
            match s.file(fh) {
                Ok(file) => match &file.source {
                    Source::Draft(_) if file.opener != closer => reply.ok(),
                    Source::Draft(draft) => match s.publish(draft).await {
                        Ok(()) => reply.ok(),
                        Err(e) => reply.error(e),
                    },
                    Source::Published(_) => reply.ok(),
                },
                Err(e) => reply.error(e),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Whoever asks: fsync means "make it durable now".
        self.spawn(move |s| async move {
            match s.file(fh) {
                Ok(file) => match &file.source {
                    Source::Draft(draft) => match s.publish(draft).await {
                        Ok(()) => reply.ok(),
                        Err(e) => reply.error(e),
                    },
                    Source::Published(_) => reply.ok(),
                },
                Err(e) => reply.error(e),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Only plain allocation (mode 0): the file grows to cover the
        // range. Punching holes and the like have no meaning for a body
        // that is republished whole.
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        self.spawn(move |s| async move {
            let draft = match s.draft_of(fh) {
                Ok(draft) => draft,
                Err(e) => return reply.error(e),
            };
            let end = offset.saturating_add(length);
            match draft.allocate(&s.target(draft.inode()), end).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
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
        let Some(Open::File(file)) = self.shared.close(fh) else {
            return reply.ok();
        };
        let Source::Draft(draft) = &file.source else {
            return reply.ok();
        };
        let draft = draft.clone();
        self.spawn(move |s| async move {
            // Written after the last close (through a mapping, say): the
            // kernel ignores a release's error, so the log has to say it.
            if let Err(e) = s.publish(&draft).await {
                tracing::warn!(inode = %draft.inode(), error = ?e, "publish at release failed");
            }
            s.drafts.detach(&draft);
            reply.ok();
        });
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
                        s.remember(listing.dir, &e.name, &attr);
                        let k = s.shown(&attr);
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

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = match self.changeable(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if name.starts_with("system.posix_acl_") {
            // No ACLs: permissions are the mode bits (so `cp -a` falls
            // back to chmod).
            return reply.error(Errno::EOPNOTSUPP);
        }
        let flag = match flags {
            0 => XattrFlag::Upsert,
            libc::XATTR_CREATE => XattrFlag::Create,
            libc::XATTR_REPLACE => XattrFlag::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        let value = value.to_vec();
        self.spawn(move |s| async move {
            let op = Op::SetXattr {
                inode: InodeRef::Id(s.map.to_nokv(ino)),
                name,
                value,
                flag,
            };
            match s.apply(op).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match self.changeable(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |s| async move {
            let op = Op::RemoveXattr {
                inode: InodeRef::Id(s.map.to_nokv(ino)),
                name,
            };
            match s.apply(op).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // The mount uses `default_permissions`, so the kernel checks the
        // mode bits itself; what is left is existence and a read-only mount.
        if mask.contains(AccessFlags::W_OK) && self.shared.options.read_only {
            return reply.error(Errno::EROFS);
        }
        self.spawn(move |s| async move {
            match s.attr_of(s.map.to_nokv(ino)).await {
                Ok(_) => reply.ok(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_follow_renames_and_removals_both_ways() {
        let (dir, a, b) = (InodeId(10), InodeId(11), InodeId(12));
        let name = |n: &str| (dir, n.to_string());
        let mut links = Links::default();
        links.insert(a, name("x"));
        links.insert(b, name("y"));
        // Renaming x over y: y's file loses its name, x's file takes it.
        links.remove_name(&name("y"));
        let moved = links.remove_name(&name("x"));
        assert_eq!(moved, Some(a));
        links.insert(a, name("y"));
        assert_eq!(links.inode_at(&name("y")), Some(a));
        assert_eq!(links.name_of(a), Some(name("y")));
        assert_eq!(links.name_of(b), None);
        assert_eq!(links.inode_at(&name("x")), None);
        // A file seen under a new name drops the old one; a name seen for
        // another file drops the first file's entry.
        links.insert(a, name("z"));
        assert_eq!(links.inode_at(&name("y")), None);
        links.insert(b, name("z"));
        assert_eq!(links.name_of(a), None);
        assert_eq!(links.inode_at(&name("z")), Some(b));
        links.remove_inode(b);
        assert!(links.by_inode.is_empty() && links.by_name.is_empty());
    }
}
