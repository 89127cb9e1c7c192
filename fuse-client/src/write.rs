//! Writes through the mount: close-to-open, from a local spill file.
//!
//! A file opened for writing gets a [`Draft`]: its unpublished content, in
//! an anonymous file under the mount's spill directory, shared by every
//! handle this mount has open on that file (so two descriptors of one
//! process see each other's writes). The draft is filled lazily: opening
//! with `O_TRUNC` starts it empty, anything else copies the current body
//! in at the first read, write or truncate that needs it.
//!
//! `close` (the kernel's `flush`), `fsync` and the last `release` publish a
//! dirty draft as a new generation of the file: stage, upload the spill
//! file as blocks straight to the object store, commit. Until the commit
//! applies nobody else sees any of it; after, everyone sees all of it. A
//! process killed mid-write publishes nothing; an upload that was staged
//! and never committed is reclaimed by its lease.
//!
//! The publish addresses the file by inode (`PublishMode::Inode`), wherever
//! it is linked when the commit applies (renamed by anyone meanwhile, even
//! with another file at its old name), and replaces the generation it has
//! *now* (last close wins, as in NFS): a draft never lands on another file.
//! A file unlinked while open publishes nothing (its bytes had nowhere to
//! go).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fuser::Errno;
use nokv_client::{
    Applied, Attr, BlockRef, Body, Client, ClientError, Consistency, EntryRef, Generation, InodeId,
    InodeRef, Op, PublishMode, PutOptions, Query, QueryResult, SetAttr,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::attr::errno;
use crate::blocks::BlockCache;
use crate::eager::{Base, Eager};

/// Attempts of one publish when another client's publish races it.
const PUBLISH_ATTEMPTS: usize = 3;

/// The unpublished content of one file, shared by this mount's handles on it.
pub(crate) struct Draft {
    inode: InodeId,
    /// Size of the draft, readable without waiting for a publish.
    size: AtomicU64,
    /// Written (or truncated) since the last publish.
    dirty: AtomicBool,
    /// Handles attached; counted under the [`Drafts`] table lock.
    handles: AtomicUsize,
    /// A modification time set after the last write (`cp -p`, `touch -d`
    /// on an open file), in ns; 0 for none. The publish would stamp its own
    /// time, so this one is set again after it.
    mtime_ns: AtomicU64,
    /// When this mount last changed the draft (ns, this machine's clock):
    /// what `stat` shows as its modification and change time until the
    /// publish stamps the cluster's.
    changed_ns: AtomicU64,
    /// The file's attributes just before its last name went (while it is
    /// open here it lives on, with no links): what `fstat` then shows.
    orphan: Mutex<Option<Attr>>,
    spill: tokio::sync::Mutex<Spill>,
}

/// The draft's bytes, and the eager upload of a file written front to back.
#[derive(Default)]
struct Spill {
    /// `None` until the bytes are needed.
    file: Option<File>,
    eager: Option<Eager>,
    /// What the last publish from this draft lets the next one keep.
    base: Option<Base>,
}

/// A published file's spill file and base, kept after its last handle
/// closed, so that reopening it to append needs neither a download nor a
/// full upload (while nobody else published it meanwhile).
struct Kept {
    file: File,
    size: u64,
    base: Base,
}

/// The kept spill files of a mount, oldest first out.
#[derive(Default)]
struct KeptFiles {
    files: HashMap<InodeId, Kept>,
    order: VecDeque<InodeId>,
    bytes: u64,
}

/// At most this many files kept after their close ...
const KEPT_FILES: usize = 32;
/// ... holding at most this many bytes of local disk, none larger than:
const KEPT_BYTES: u64 = 2 << 30;
const KEPT_FILE_BYTES: u64 = 1 << 30;

/// Every draft of a mount, by inode.
pub(crate) struct Drafts {
    table: Mutex<HashMap<InodeId, Arc<Draft>>>,
    kept: Mutex<KeptFiles>,
    dir: PathBuf,
}

impl Drafts {
    pub(crate) fn new(dir: PathBuf) -> Drafts {
        Drafts {
            table: Mutex::new(HashMap::new()),
            kept: Mutex::new(KeptFiles::default()),
            dir,
        }
    }

    /// The draft of `inode`, if a handle of this mount has one.
    pub(crate) fn get(&self, inode: InodeId) -> Option<Arc<Draft>> {
        self.table.lock().ok()?.get(&inode).cloned()
    }

    /// A new handle on `inode`'s draft (made if there is none).
    pub(crate) fn attach(&self, inode: InodeId) -> Result<Arc<Draft>, Errno> {
        let mut table = self.table.lock().map_err(|_| Errno::EIO)?;
        let draft = table.entry(inode).or_insert_with(|| {
            Arc::new(Draft {
                inode,
                size: AtomicU64::new(0),
                dirty: AtomicBool::new(false),
                handles: AtomicUsize::new(0),
                mtime_ns: AtomicU64::new(0),
                changed_ns: AtomicU64::new(0),
                orphan: Mutex::new(None),
                spill: tokio::sync::Mutex::new(Spill::default()),
            })
        });
        draft.handles.fetch_add(1, Ordering::Relaxed);
        Ok(draft.clone())
    }

    /// A handle on `draft` is gone; the last one drops the draft (and its
    /// spill file) whatever its state: its close already said whether the
    /// publish worked.
    pub(crate) fn detach(&self, draft: &Arc<Draft>) {
        let last = match self.table.lock() {
            Ok(mut table) => {
                let last = draft.handles.fetch_sub(1, Ordering::Relaxed) == 1;
                if last {
                    table.remove(&draft.inode);
                }
                last
            }
            Err(_) => false,
        };
        if last && !draft.is_dirty() {
            // Nobody else holds the spill lock once the last handle is gone.
            if let Ok(mut spill) = draft.spill.try_lock() {
                if let (Some(file), Some(base)) = (spill.file.take(), spill.base.take()) {
                    self.keep(draft.inode, file, draft.size.load(Ordering::Relaxed), base);
                }
            }
        }
    }

    /// Keeps a published file's spill file for a later append.
    fn keep(&self, inode: InodeId, file: File, size: u64, base: Base) {
        if size > KEPT_FILE_BYTES {
            return;
        }
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        if let Some(old) = kept.files.remove(&inode) {
            kept.bytes -= old.size;
            kept.order.retain(|i| *i != inode);
        }
        while kept.files.len() >= KEPT_FILES || kept.bytes + size > KEPT_BYTES {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            if let Some(gone) = kept.files.remove(&oldest) {
                kept.bytes -= gone.size;
            }
        }
        kept.bytes += size;
        kept.order.push_back(inode);
        kept.files.insert(inode, Kept { file, size, base });
    }

    /// The kept spill file of `inode`, if there is one.
    fn take_kept(&self, inode: InodeId) -> Option<Kept> {
        let mut kept = self.kept.lock().ok()?;
        let found = kept.files.remove(&inode)?;
        kept.bytes -= found.size;
        kept.order.retain(|i| *i != inode);
        Some(found)
    }

    /// `attr` as this mount shows it: a dirty draft's size and times win.
    pub(crate) fn overlay(&self, mut attr: Attr) -> Attr {
        if let Some(draft) = self.get(attr.inode) {
            if draft.is_dirty() {
                attr.size = draft.size.load(Ordering::Relaxed);
                let changed = draft.changed_ns.load(Ordering::Relaxed);
                attr.ctime_ns = attr.ctime_ns.max(changed);
                attr.mtime_ns = match draft.mtime_ns.load(Ordering::Relaxed) {
                    0 => attr.mtime_ns.max(changed),
                    kept => kept,
                };
            }
        }
        attr
    }

    fn spill_file(&self) -> Result<File, Errno> {
        tempfile::tempfile_in(&self.dir).map_err(|e| {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot make a spill file");
            io_errno(&e)
        })
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_i32)
}

/// Where a publish goes and how it reaches the store.
pub(crate) struct Target<'a> {
    pub(crate) client: &'a Client,
    pub(crate) blocks: &'a Arc<BlockCache>,
    pub(crate) drafts: &'a Drafts,
    /// The name this mount last saw the file under, if any.
    pub(crate) at: Option<(InodeId, String)>,
}

impl Draft {
    pub(crate) fn inode(&self) -> InodeId {
        self.inode
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Relaxed)
    }

    /// The draft's bytes changed just now.
    fn changed(&self) {
        self.dirty.store(true, Ordering::Relaxed);
        self.mtime_ns.store(0, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.changed_ns.store(now, Ordering::Relaxed);
    }

    /// Copies the current body in now, if it is not yet: before the file's
    /// last name goes, so that handles open on it keep its bytes.
    pub(crate) async fn fill(&self, t: &Target<'_>) -> Result<(), Errno> {
        let mut spill = self.spill.lock().await;
        self.filled(&mut spill, t).await
    }

    /// Notes the attributes of the file as its name goes.
    pub(crate) fn orphaned(&self, mut attr: Attr) {
        attr.nlink = attr.nlink.saturating_sub(1);
        if let Ok(mut orphan) = self.orphan.lock() {
            *orphan = Some(attr);
        }
    }

    /// The attributes noted by [`Draft::orphaned`], if any.
    pub(crate) fn orphan(&self) -> Option<Attr> {
        self.orphan.lock().ok()?.clone()
    }

    /// Grows the draft to at least `end` bytes (`fallocate`, mode 0).
    pub(crate) async fn allocate(&self, t: &Target<'_>, end: u64) -> Result<(), Errno> {
        let mut spill = self.spill.lock().await;
        self.filled(&mut spill, t).await?;
        let file = spill.file.as_ref().ok_or(Errno::EIO)?;
        if end > self.size.load(Ordering::Relaxed) {
            file.set_len(end).map_err(|e| io_errno(&e))?;
            self.size.store(end, Ordering::Relaxed);
        }
        self.changed();
        Ok(())
    }

    /// Remembers a modification time set while the draft is dirty.
    pub(crate) fn keep_mtime(&self, mtime_ns: u64) {
        if self.is_dirty() {
            self.mtime_ns.store(mtime_ns.max(1), Ordering::Relaxed);
        }
    }

    /// Makes sure the spill file exists, filled with the current body. A
    /// draft that starts empty may upload as it goes (`eager`).
    async fn filled(&self, spill: &mut Spill, t: &Target<'_>) -> Result<(), Errno> {
        if spill.file.is_some() {
            return Ok(());
        }
        let body = current_body(t, self.inode).await?;
        let generation = body.as_ref().map(|b| b.generation);
        // This mount published the file last, and kept its bytes: resume.
        if let Some(kept) = t.drafts.take_kept(self.inode) {
            tracing::debug!(inode = %self.inode, kept = ?kept.base.generation, current = ?generation, "a kept spill file");
            if Some(kept.base.generation) == generation {
                self.size.store(kept.size, Ordering::Relaxed);
                spill.file = Some(kept.file);
                spill.eager = Some(Eager::resume(self.inode, kept.base.clone()));
                spill.base = Some(kept.base);
                return Ok(());
            }
        }
        let file = t.drafts.spill_file()?;
        let size = match &body {
            Some(body) => copy_blocks(t, self.inode, body, &file).await?,
            None => 0,
        };
        self.size.store(size, Ordering::Relaxed);
        // An append to a file of whole blocks keeps them (see `eager`).
        spill.eager = match body {
            None => Some(Eager::new(self.inode)),
            Some(body) if body.size == 0 => Some(Eager::new(self.inode)),
            Some(body) => Base::of(&file, body.generation, body.blocks)
                .map_err(|e| io_errno(&e))?
                .map(|base| Eager::resume(self.inode, base)),
        };
        spill.file = Some(file);
        Ok(())
    }

    /// Where the file was last seen, as a hint for a by-inode publish.
    fn hint(&self, t: &Target<'_>) -> EntryRef {
        match t.at.clone() {
            Some((parent, name)) => EntryRef::Child { parent, name },
            None => EntryRef::Child {
                parent: self.inode,
                name: "unknown".into(),
            },
        }
    }

    pub(crate) async fn write(
        &self,
        t: &Target<'_>,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, Errno> {
        let mut spill = self.spill.lock().await;
        self.filled(&mut spill, t).await?;
        let Spill { file, eager, .. } = &mut *spill;
        let file = file.as_ref().ok_or(Errno::EIO)?;
        if let Some(eager) = eager.as_mut() {
            eager.touched(offset);
        }
        file.write_all_at(data, offset).map_err(|e| io_errno(&e))?;
        let end = offset.saturating_add(data.len() as u64);
        self.size.fetch_max(end, Ordering::Relaxed);
        self.changed();
        if let Some(eager) = eager.as_mut() {
            let size = self.size.load(Ordering::Relaxed);
            eager.advance(t.client, file, size, self.hint(t)).await;
        }
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    pub(crate) async fn read(
        &self,
        t: &Target<'_>,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, Errno> {
        let mut spill = self.spill.lock().await;
        self.filled(&mut spill, t).await?;
        let file = spill.file.as_ref().ok_or(Errno::EIO)?;
        let size = self.size.load(Ordering::Relaxed);
        let end = offset.saturating_add(u64::from(len)).min(size);
        let mut out = vec![0; end.saturating_sub(offset) as usize];
        let mut done = 0;
        while done < out.len() {
            match file.read_at(&mut out[done..], offset + done as u64) {
                // The spill file is shorter than the draft only after a
                // failed write; what is missing reads as zeros.
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_errno(&e)),
            }
        }
        Ok(out)
    }

    /// Sets the draft's size (`O_TRUNC`, `truncate`, `ftruncate`). Cutting
    /// to zero needs none of the old bytes, so nothing is fetched.
    pub(crate) async fn truncate(&self, t: &Target<'_>, size: u64) -> Result<(), Errno> {
        let mut spill = self.spill.lock().await;
        if size == 0 && spill.file.is_none() {
            spill.file = Some(t.drafts.spill_file()?);
            spill.eager = Some(Eager::new(self.inode));
        }
        self.filled(&mut spill, t).await?;
        let Spill { file, eager, .. } = &mut *spill;
        let file = file.as_ref().ok_or(Errno::EIO)?;
        if let Some(eager) = eager.as_mut() {
            eager.touched(size);
        }
        file.set_len(size).map_err(|e| io_errno(&e))?;
        self.size.store(size, Ordering::Relaxed);
        self.changed();
        Ok(())
    }

    /// Publishes the draft if it is dirty; returns the published
    /// attributes (`None`: nothing to publish, or the file is gone).
    pub(crate) async fn publish(&self, t: &Target<'_>) -> Result<Option<Attr>, Errno> {
        let mut spill = self.spill.lock().await;
        if !self.is_dirty() {
            return Ok(None);
        }
        let Spill { file, eager, base } = &mut *spill;
        let Some(file) = file.as_ref() else {
            return Err(Errno::EIO);
        };
        if let Some(taken) = eager.take() {
            let size = self.size.load(Ordering::Relaxed);
            if let Some(Ok((attr, next))) = taken.finish(t.client, file, size, self.hint(t)).await {
                self.dirty.store(false, Ordering::Relaxed);
                // Later writes on this draft (an append) go on from here.
                *eager = Some(Eager::resume(self.inode, next.clone()));
                *base = Some(next);
                return self.restore_mtime(t.client, attr).await.map(Some);
            }
        }
        *base = None;
        for _ in 0..PUBLISH_ATTEMPTS {
            let current = match attr_of(t.client, self.inode).await {
                Ok(attr) => attr,
                Err(e) if e.is_not_found() => {
                    // Unlinked while open: its bytes have nowhere to go.
                    self.dirty.store(false, Ordering::Relaxed);
                    return Ok(None);
                }
                Err(e) => return Err(errno(&e)),
            };
            let hint = self.hint(t);
            let size = self.size.load(Ordering::Relaxed);
            match self
                .publish_once(t.client, file, hint, current.generation, size)
                .await
            {
                Ok((attr, blocks)) => {
                    self.dirty.store(false, Ordering::Relaxed);
                    // Later appends keep this body's whole blocks.
                    *base = Base::of(file, attr.generation, blocks).unwrap_or(None);
                    *eager = base.clone().map(|b| Eager::resume(self.inode, b));
                    return self.restore_mtime(t.client, attr).await.map(Some);
                }
                // Another client published in between: go on top of it.
                Err(e) if e.code() == "STALE_GENERATION" => continue,
                Err(e) => {
                    tracing::warn!(inode = %self.inode, error = %e, "publish failed");
                    return Err(errno(&e));
                }
            }
        }
        Err(Errno::EIO)
    }

    /// Sets the kept modification time again after a publish stamped its own.
    async fn restore_mtime(&self, client: &Client, attr: Attr) -> Result<Attr, Errno> {
        let mtime_ns = self.mtime_ns.swap(0, Ordering::Relaxed);
        if mtime_ns == 0 {
            return Ok(attr);
        }
        let op = Op::SetAttr {
            inode: InodeRef::Id(self.inode),
            set: SetAttr {
                mtime_ns: Some(mtime_ns),
                ..SetAttr::default()
            },
        };
        match client.mutate(op).await {
            Ok(Applied::Attr(attr)) => Ok(attr),
            Ok(_) => Ok(attr),
            Err(e) => Err(errno(&e)),
        }
    }

    async fn publish_once(
        &self,
        client: &Client,
        file: &File,
        hint: EntryRef,
        expected: Generation,
        size: u64,
    ) -> Result<(Attr, Vec<BlockRef>), ClientError> {
        let opts = PutOptions {
            mode: PublishMode::Inode {
                inode: self.inode,
                expected,
            },
            producer: "nokv-fuse".into(),
            ..PutOptions::default()
        };
        let staged = client.stage_at(hint, &opts).await?;
        let result = async {
            if staged.inode != self.inode {
                // Never by the engine's rules; checked all the same, as a
                // draft must never land on another file.
                return Err(ClientError::Fs {
                    code: "ESTALE".into(),
                    errno: 116,
                    message: format!(
                        "{} was staged for inode {}, not {}",
                        staged.id, staged.inode, self.inode
                    ),
                });
            }
            let io = |e: std::io::Error| ClientError::Store(format!("spill file: {e}"));
            let mut reader = tokio::fs::File::from_std(file.try_clone().map_err(io)?);
            reader.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
            let uploaded = client
                .upload_indexed(&staged, reader.take(size), &opts, &|_| {})
                .await?;
            let blocks = uploaded.spec.blocks.clone();
            Ok((client.commit_indexed(staged.id, uploaded).await?, blocks))
        }
        .await;
        if let Err(e) = &result {
            // An unknown commit may still apply: leave that upload to its lease.
            if !matches!(e, ClientError::Unknown(_)) {
                let _ = client.abort(staged.id).await;
            }
        }
        result
    }
}

pub(crate) async fn attr_of(client: &Client, inode: InodeId) -> Result<Attr, ClientError> {
    let query = Query::GetAttr {
        inode: InodeRef::Id(inode),
    };
    match client.query(query, Consistency::Linearizable).await? {
        QueryResult::Attr(a) => Ok(a),
        _ => Err(ClientError::Protocol("expected attributes".into())),
    }
}

/// `inode`'s current body.
async fn current_body(t: &Target<'_>, inode: InodeId) -> Result<Option<Body>, Errno> {
    let query = Query::ReadBody {
        inode: InodeRef::Id(inode),
    };
    match t.client.query(query, Consistency::Linearizable).await {
        Ok(QueryResult::Body { body, .. }) => Ok(body),
        Ok(_) => Err(Errno::EIO),
        Err(e) => Err(errno(&e)),
    }
}

/// Copies `body` into `file`; returns its size.
async fn copy_blocks(
    t: &Target<'_>,
    inode: InodeId,
    body: &Body,
    file: &File,
) -> Result<u64, Errno> {
    let mut offset = 0u64;
    for block in &body.blocks {
        let bytes = t.blocks.get(t.client, block).await.map_err(|e| {
            tracing::warn!(error = %e, %inode, "reading a body into a draft");
            errno(&e)
        })?;
        file.write_all_at(&bytes, offset)
            .map_err(|e| io_errno(&e))?;
        offset += bytes.len() as u64;
    }
    Ok(body.size)
}
