//! A file written front to back has its blocks uploaded as they fill, so
//! that its close only uploads the last block and commits.
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

/// The eager upload of one draft.
pub(crate) struct Eager {
    inode: InodeId,
    /// Begun at the first full block.
    staged: Option<StagedUpload>,
    /// The body's sha256 over `0..next`.
    hasher: Sha256,
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
            staged: None,
            hasher: Sha256::new(),
            blocks: Vec::new(),
            next: 0,
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
        while self.uploads.len() >= IN_FLIGHT {
            self.collect_one().await?;
        }
        let index = self.blocks.len();
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

    /// A by-inode upload at the file's generation now.
    async fn stage(&self, client: &Client, hint: EntryRef) -> Result<StagedUpload, ClientError> {
        let current = crate::write::attr_of(client, self.inode).await?;
        let opts = eager_options(self.inode, current.generation);
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
    /// upload: the last block, then the commit. `None`: the eager path is
    /// not usable (nothing was handed off, or it broke) and the caller
    /// publishes the ordinary way; so it does after `Some(Err(..))`.
    pub(crate) async fn finish(
        mut self,
        client: &Client,
        file: &File,
        size: u64,
        hint: EntryRef,
    ) -> Option<Result<Attr, ClientError>> {
        if self.broken || self.staged.is_none() || size < self.next {
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
    ) -> Result<Attr, ClientError> {
        if size > self.next {
            self.hand_off(client, file, size - self.next, hint).await?;
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
            blocks,
            sha256: digest,
            content_type: opts.content_type,
            producer: "nokv-fuse".into(),
            attrs: opts.attrs,
        };
        client.commit(staged.id, spec).await
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
