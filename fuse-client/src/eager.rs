//! A file written front to back has its blocks uploaded as they fill, so
//! that its close only uploads the last block and commits; and a file this
//! mount published is appended to without uploading its whole blocks again.
//!
//! A draft that starts empty (`O_TRUNC`, or a new file) gets an [`Eager`].
//! Each time the draft grows past a 4 MiB boundary, the finished block is
//! read back from the spill file, fed to the body's running sha256, and
//! uploaded in the background under a staged upload begun (by inode) at
//! the first full block. A write or truncate that touches bytes already
//! handed off breaks the eager path: its upload is aborted, and the close
//! publishes the whole spill file the ordinary way (`write`). So does any
//! failure here, and a commit refused because another client published in
//! between. The eager path only saves time; it never decides what is
//! published.
//!
//! After a publish, the draft keeps a [`Base`]: the body's whole leading
//! blocks and the sha256 state after them. The next publish of the same
//! file (an append, on this handle or, if the mount still holds the spill
//! file, a later open) resumes from there: the commit keeps those blocks
//! (the engine checks they are exactly the replaced body's first blocks),
//! and only the last, partial block and the new bytes are uploaded.

use std::fs::File;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use nokv_client::{
    Attr, BlockRef, BodySpec, Client, ClientError, EntryRef, Generation, InodeId, PublishMode,
    PutOptions, StagedUpload, DEFAULT_BLOCK_SIZE,
};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

/// Bytes per block.
const BLOCK: u64 = DEFAULT_BLOCK_SIZE as u64;
/// Block uploads in flight at once per file.
const IN_FLIGHT: usize = 4;

type Upload = Result<(usize, BlockRef), ClientError>;

/// What a published body lets the next publish of the same file keep: its
/// first `full` blocks (each a whole block) and the body's sha256 state
/// after them. An append then uploads only from there on.
#[derive(Clone)]
pub(crate) struct Base {
    pub(crate) generation: Generation,
    blocks: Vec<BlockRef>,
    full: usize,
    hasher: Sha256,
}

impl Base {
    /// The base of a body (`generation`, `blocks`) whose bytes are in
    /// `file`: its leading whole blocks, hashed from the local copy.
    /// `None` when it starts with no whole block (nothing worth keeping).
    pub(crate) fn of(
        file: &File,
        generation: Generation,
        blocks: Vec<BlockRef>,
    ) -> std::io::Result<Option<Base>> {
        let full = blocks.iter().take_while(|b| b.size == BLOCK).count();
        if full == 0 {
            return Ok(None);
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 1 << 20];
        let end = full as u64 * BLOCK;
        let mut at = 0u64;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(Some(Base {
            generation,
            blocks,
            full,
            hasher,
        }))
    }
}

/// The eager upload of one draft.
pub(crate) struct Eager {
    inode: InodeId,
    /// The generation the upload replaces, when it resumes from a [`Base`]
    /// (its kept blocks are that body's); else whatever the file has when
    /// the upload is staged.
    expected: Option<Generation>,
    /// Begun at the first block handed off (or at the close).
    staged: Option<StagedUpload>,
    /// The body's sha256 over `0..next`.
    hasher: Sha256,
    /// How many leading blocks are whole, and the sha256 state after them.
    full: usize,
    at_full: Sha256,
    /// Blocks uploaded, by index (`None`: in flight).
    blocks: Vec<Option<BlockRef>>,
    /// Bytes handed off so far (a multiple of the block size).
    next: u64,
    uploads: JoinSet<Upload>,
    broken: bool,
}

impl Eager {
    pub(crate) fn new(inode: InodeId) -> Eager {
        Eager {
            inode,
            expected: None,
            staged: None,
            hasher: Sha256::new(),
            full: 0,
            at_full: Sha256::new(),
            blocks: Vec::new(),
            next: 0,
            uploads: JoinSet::new(),
            broken: false,
        }
    }

    /// An upload that keeps the whole leading blocks of `base` (the body the
    /// file has now) and uploads only what comes after them.
    pub(crate) fn resume(inode: InodeId, base: Base) -> Eager {
        let kept = base.full.min(base.blocks.len());
        Eager {
            inode,
            expected: Some(base.generation),
            staged: None,
            hasher: base.hasher.clone(),
            full: kept,
            at_full: base.hasher,
            blocks: base.blocks.into_iter().take(kept).map(Some).collect(),
            next: kept as u64 * BLOCK,
            uploads: JoinSet::new(),
            broken: false,
        }
    }

    /// Bytes from `offset` on are about to change: if some were handed off
    /// already, the eager path is over.
    pub(crate) fn touched(&mut self, offset: u64) {
        if offset < self.next {
            self.broken = true;
        }
    }

    /// Hands off every block the draft (`size` bytes in `file`) has filled
    /// since the last call. `hint`: where the file was last seen.
    pub(crate) async fn advance(
        &mut self,
        client: &Client,
        file: &File,
        size: u64,
        hint: EntryRef,
    ) {
        while !self.broken && size >= self.next + BLOCK {
            if let Err(e) = self.hand_off(client, file, BLOCK, hint.clone()).await {
                tracing::debug!(inode = %self.inode, error = %e, "eager upload off");
                self.broken = true;
            }
        }
    }

    /// Reads, hashes and starts uploading the `len` bytes at `next`.
    async fn hand_off(
        &mut self,
        client: &Client,
        file: &File,
        len: u64,
        hint: EntryRef,
    ) -> Result<(), ClientError> {
        let staged = match &self.staged {
            Some(staged) => staged.clone(),
            None => {
                let staged = self.stage(client, hint).await?;
                self.staged = Some(staged.clone());
                staged
            }
        };
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, self.next)
            .map_err(|e| ClientError::Store(format!("spill file: {e}")))?;
        self.hasher.update(&buf);
        let index = self.blocks.len();
        if len == BLOCK && self.full == index {
            self.full = index + 1;
            self.at_full = self.hasher.clone();
        }
        while self.uploads.len() >= IN_FLIGHT {
            self.collect_one().await?;
        }
        self.blocks.push(None);
        let client = client.clone();
        self.uploads.spawn(async move {
            let block = client
                .upload_block(&staged, index, Bytes::from(buf))
                .await?;
            // Let the leader check it now, so the commit need not.
            let _ = client.check_blocks(staged.id, vec![block.clone()]).await;
            Ok((index, block))
        });
        self.next += len;
        Ok(())
    }

    /// A by-inode upload replacing the generation the kept blocks come
    /// from (or the file's generation now, when nothing is kept).
    async fn stage(&self, client: &Client, hint: EntryRef) -> Result<StagedUpload, ClientError> {
        let expected = match self.expected {
            Some(generation) => generation,
            None => crate::write::attr_of(client, self.inode).await?.generation,
        };
        let opts = eager_options(self.inode, expected);
        let staged = client.stage_at(hint, &opts).await?;
        if staged.inode != self.inode {
            let _ = client.abort(staged.id).await;
            return Err(ClientError::Protocol(format!(
                "{} was staged for inode {}, not {}",
                staged.id, staged.inode, self.inode
            )));
        }
        Ok(staged)
    }

    async fn collect_one(&mut self) -> Result<(), ClientError> {
        match self.uploads.join_next().await {
            Some(Ok(Ok((index, block)))) => {
                if let Some(slot) = self.blocks.get_mut(index) {
                    *slot = Some(block);
                }
                Ok(())
            }
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(ClientError::Store(format!("block upload task: {e}"))),
            None => Ok(()),
        }
    }

    /// Publishes the draft (`size` bytes in `file`) through the eager
    /// upload: what is left to upload, then the commit. Returns the new
    /// attributes and the [`Base`] the next publish can keep. `None`: the
    /// eager path is not usable (nothing to gain, or it broke) and the
    /// caller publishes the ordinary way; so it does after `Some(Err(..))`.
    pub(crate) async fn finish(
        mut self,
        client: &Client,
        file: &File,
        size: u64,
        hint: EntryRef,
    ) -> Option<Result<(Attr, Base), ClientError>> {
        if self.broken || size < self.next || self.blocks.is_empty() {
            self.abandon(client).await;
            return None;
        }
        let result = self.complete(client, file, size, hint).await;
        if let Err(e) = &result {
            tracing::debug!(inode = %self.inode, error = %e, "eager publish failed; publishing whole");
            if !matches!(e, ClientError::Unknown(_)) {
                self.abandon(client).await;
            }
        }
        Some(result)
    }

    async fn complete(
        &mut self,
        client: &Client,
        file: &File,
        size: u64,
        hint: EntryRef,
    ) -> Result<(Attr, Base), ClientError> {
        while size >= self.next + BLOCK {
            self.hand_off(client, file, BLOCK, hint.clone()).await?;
        }
        if size > self.next {
            self.hand_off(client, file, size - self.next, hint.clone())
                .await?;
        }
        if self.staged.is_none() {
            // Only kept blocks (a truncate back to a block boundary).
            self.staged = Some(self.stage(client, hint).await?);
        }
        while !self.uploads.is_empty() {
            self.collect_one().await?;
        }
        let blocks = self
            .blocks
            .iter()
            .cloned()
            .collect::<Option<Vec<BlockRef>>>()
            .ok_or_else(|| ClientError::Store("a block upload did not report".into()))?;
        let staged = self
            .staged
            .clone()
            .ok_or_else(|| ClientError::Protocol("no staged upload".into()))?;
        let opts = PutOptions::default();
        let digest: String = self
            .hasher
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let spec = BodySpec {
            size,
            blocks: blocks.clone(),
            sha256: digest,
            content_type: opts.content_type,
            producer: "nokv-fuse".into(),
            attrs: opts.attrs,
        };
        let attr = client.commit(staged.id, spec).await?;
        let base = Base {
            generation: attr.generation,
            blocks,
            full: self.full,
            hasher: self.at_full.clone(),
        };
        Ok((attr, base))
    }

    /// Gives the eager upload up: what it uploaded is reclaimed.
    pub(crate) async fn abandon(&mut self, client: &Client) {
        self.uploads.abort_all();
        if let Some(staged) = self.staged.take() {
            let _ = client.abort(staged.id).await;
        }
    }
}

fn eager_options(inode: InodeId, expected: Generation) -> PutOptions {
    PutOptions {
        mode: PublishMode::Inode { inode, expected },
        producer: "nokv-fuse".into(),
        ..PutOptions::default()
    }
}
