//! File bodies: publish (stage → upload blocks → commit) and read.
//!
//! Block bytes move directly between this client and the object store
//! (location learned from the cluster, credentials and endpoint from this
//! process's standard AWS variables); metadata nodes never relay them.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use nokv_blob::{BlobLocation, BlobStore};
use nokv_holt::{
    Applied, Attr, BlockRef, Body, BodySpec, EntryRef, FieldSet, Generation, IndexedCommit,
    InodeRef, Op, PublishMode, Query, QueryResult, StagedUpload, UploadId,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::client::{Client, Consistency};
use crate::error::ClientError;

/// Default block size: 4 MiB.
pub const DEFAULT_BLOCK_SIZE: usize = 4 * 1024 * 1024;

/// How many files of one [`Client::put_many`] are staged and uploaded at
/// once.
pub const PUT_MANY_IN_FLIGHT: usize = 64;

/// One file of a [`Client::put_many`]: staged and uploaded, or the error
/// and the upload it leaves staged (if it got that far).
type StagedOrFailed = Result<(UploadId, Uploaded), (Option<UploadId>, ClientError)>;

/// How to publish a body.
#[derive(Clone, Debug)]
pub struct PutOptions {
    pub mode: PublishMode,
    pub content_type: String,
    pub producer: String,
    pub attrs: BTreeMap<String, String>,
    pub block_size: usize,
    /// Blocks uploaded or downloaded at once.
    pub parallelism: usize,
    /// Lease of the staged upload; the cluster reclaims it when it runs out.
    pub lease: Duration,
    /// Permission bits and owner of a file the publish creates (an
    /// existing file keeps its own).
    pub owner: FileOwner,
}

/// Permission bits and owner of a newly created file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOwner {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Default for FileOwner {
    fn default() -> Self {
        FileOwner {
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            mode: PublishMode::Upsert,
            content_type: "application/octet-stream".into(),
            producer: "nokv".into(),
            attrs: BTreeMap::new(),
            block_size: DEFAULT_BLOCK_SIZE,
            parallelism: 8,
            lease: Duration::from_secs(600),
            owner: FileOwner::default(),
        }
    }
}

/// An uploaded body, ready to commit: its description and its searchable
/// fields ([`Client::upload_indexed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub spec: BodySpec,
    pub fields: FieldSet,
}

/// Where one publish spent its time ([`Client::publish`]).
#[derive(Clone, Debug, Default)]
pub struct PublishTimings {
    /// Latency of the stage command (a Raft write).
    pub stage: Duration,
    /// How long the publish was held up by it: blocks are read and hashed
    /// meanwhile, so only what the stage took beyond that.
    pub stage_wait: Duration,
    /// Reading, hashing and uploading the body after that.
    pub upload: Duration,
    /// Latency of the commit (a Raft write, after the leader checked the
    /// blocks it had not checked yet).
    pub commit: Duration,
    pub blocks: usize,
    /// Blocks the leader checked while later blocks were still uploading.
    pub blocks_prechecked: usize,
}

impl PublishTimings {
    /// What metadata added to the publish beyond moving its bytes.
    pub fn metadata_wait(&self) -> Duration {
        self.stage_wait + self.commit
    }
}

/// Cuts an input into blocks. [`BlockReader::next_block`] may be raced
/// (`select!`) and dropped half-way: the bytes of the unfinished block stay
/// here for the next call.
struct BlockReader<R> {
    reader: R,
    block_size: usize,
    buf: Vec<u8>,
    filled: usize,
}

impl<R: AsyncRead + Unpin> BlockReader<R> {
    fn new(reader: R, block_size: usize) -> BlockReader<R> {
        BlockReader {
            reader,
            block_size: block_size.max(1),
            buf: Vec::new(),
            filled: 0,
        }
    }

    /// The next `block_size` bytes: fewer only at the end of the input
    /// (empty there).
    async fn next_block(&mut self) -> Result<Vec<u8>, ClientError> {
        if self.buf.len() != self.block_size {
            self.buf = vec![0u8; self.block_size];
            self.filled = 0;
        }
        while self.filled < self.block_size {
            // `read` is cancel-safe: dropped, it has read nothing.
            let n = self
                .reader
                .read(&mut self.buf[self.filled..])
                .await
                .map_err(|e| ClientError::InvalidArgument(format!("reading input: {e}")))?;
            if n == 0 {
                break;
            }
            self.filled += n;
        }
        let mut block = std::mem::take(&mut self.buf);
        block.truncate(self.filled);
        self.filled = 0;
        Ok(block)
    }
}

/// Most finished blocks sent to the leader in one `CheckBlocks`.
const PRECHECK_BATCH: usize = 256;

/// Has the leader check blocks of `upload` as they finish uploading: one
/// request at a time, carrying every block finished meanwhile. Stops at the
/// first failure: the commit checks every block not confirmed here anyway,
/// and answers with the precise error.
async fn precheck(
    client: Client,
    upload: UploadId,
    mut finished: tokio::sync::mpsc::UnboundedReceiver<BlockRef>,
    confirmed: Arc<AtomicUsize>,
) {
    while let Some(block) = finished.recv().await {
        let mut batch = vec![block];
        while batch.len() < PRECHECK_BATCH {
            match finished.try_recv() {
                Ok(block) => batch.push(block),
                Err(_) => break,
            }
        }
        let n = batch.len();
        match client.check_blocks(upload, batch).await {
            Ok(_) => {
                confirmed.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(error = %e, %upload, "early block check failed; the commit checks");
                return;
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn store_error(e: nokv_blob::BlobError) -> ClientError {
    ClientError::Store(e.to_string())
}

/// The cluster says which bucket and prefix hold the bodies, and the
/// endpoint its replicas use; this client's own endpoint (its configured
/// `store_endpoint`, else `AWS_ENDPOINT_URL`), when set, wins (a client outside the cluster's network reaches the store by
/// another address). Credentials always come from the client's environment.
fn client_side_location(location: BlobLocation, env_endpoint: Option<String>) -> BlobLocation {
    match (location, env_endpoint.filter(|e| !e.trim().is_empty())) {
        (
            BlobLocation::S3 {
                bucket,
                prefix,
                region,
                ..
            },
            Some(endpoint),
        ) => BlobLocation::S3 {
            bucket,
            prefix,
            endpoint: Some(endpoint),
            region,
            path_style: true,
        },
        (location, _) => location,
    }
}

/// The result of one block-upload task: the block's position and reference.
fn join_upload(
    done: Result<Result<(usize, BlockRef), nokv_blob::BlobError>, tokio::task::JoinError>,
) -> Result<(usize, BlockRef), ClientError> {
    match done {
        Ok(result) => result.map_err(store_error),
        Err(e) => Err(ClientError::Store(format!("block upload task failed: {e}"))),
    }
}

/// Key of block `index` of an upload: `{prefix}{index:08}.{sha256 of the
/// block}`. The digest in the key lets any reader of the block alone (a
/// ranged read, a block cache) detect corrupt bytes without the whole
/// body; the engine treats keys as opaque.
fn block_key(prefix: &str, index: usize, digest: &str) -> String {
    format!("{prefix}{index:08}.{digest}")
}

/// The sha256 a block's key names, if it names one (keys written before
/// block digests end in the index alone).
fn key_digest(key: &str) -> Option<&str> {
    let name = key.rsplit('/').next()?;
    let (_, digest) = name.rsplit_once('.')?;
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digest)
}

/// The content type a file's name suggests (by extension, case-insensitive);
/// `application/octet-stream` when it suggests none. Clients record it at
/// publish so that readers (the agent gateway) know how to parse a body.
pub fn content_type_for(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((_, ext)) = name.rsplit_once('.') else {
        return "application/octet-stream";
    };
    match ext.to_ascii_lowercase().as_str() {
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "yaml" | "yml" => "application/yaml",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "txt" | "log" | "out" | "err" => "text/plain",
        "md" => "text/markdown",
        "py" => "text/x-python",
        "sh" => "text/x-shellscript",
        "toml" => "application/toml",
        "html" | "htm" => "text/html",
        "xml" => "application/xml",
        "parquet" => "application/vnd.apache.parquet",
        _ => "application/octet-stream",
    }
}

/// Checks a whole block's bytes: the size its body records, and the sha256
/// its key names (if it names one). For blocks kept anywhere (a cache).
pub fn verify_block(block: &BlockRef, bytes: &[u8]) -> Result<(), ClientError> {
    if bytes.len() as u64 != block.size {
        return Err(ClientError::Integrity(format!(
            "block {}: got {} bytes, expected {}",
            block.key,
            bytes.len(),
            block.size
        )));
    }
    check_block(&block.key, bytes)
}

/// Checks a whole block's bytes against the digest its key names.
fn check_block(key: &str, bytes: &[u8]) -> Result<(), ClientError> {
    let Some(want) = key_digest(key) else {
        return Ok(());
    };
    let got = hex(&Sha256::digest(bytes));
    if got != want {
        return Err(ClientError::Integrity(format!(
            "block {key}: bytes hash to {got}"
        )));
    }
    Ok(())
}

impl Client {
    /// The cluster's object store, opened with this process's credentials.
    pub async fn blob_store(&self) -> Result<Arc<dyn BlobStore>, ClientError> {
        if let Some(store) = self.cached_store() {
            return Ok(store);
        }
        let mut last = None;
        for endpoint in self.endpoints().to_vec() {
            match self.status_of(&endpoint).await {
                Ok(s) if !s.blob_location.is_empty() => {
                    let location = client_side_location(
                        BlobLocation::parse(&s.blob_location).map_err(store_error)?,
                        self.store_endpoint()
                            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok()),
                    );
                    let store = nokv_blob::open(&location).await.map_err(store_error)?;
                    self.cache_store(store.clone());
                    return Ok(store);
                }
                Ok(_) => {
                    return Err(ClientError::InvalidArgument(
                        "the cluster has no object store (start it with --blob-store)".into(),
                    ))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unavailable("no endpoint answered".into())))
    }

    /// Stages an upload for `path` (first step of a publish).
    pub async fn stage(&self, path: &str, opts: &PutOptions) -> Result<StagedUpload, ClientError> {
        self.stage_at(EntryRef::Path(path.into()), opts).await
    }

    /// Stages an upload for the entry `at`: a path, or a name in a
    /// directory given by id (how the FUSE mount addresses files).
    pub async fn stage_at(
        &self,
        at: EntryRef,
        opts: &PutOptions,
    ) -> Result<StagedUpload, ClientError> {
        let op = Op::BeginPublish {
            at,
            mode: opts.mode,
            lease_ns: opts.lease.as_nanos().min(u128::from(u64::MAX)) as u64,
            file_mode: opts.owner.mode,
            uid: opts.owner.uid,
            gid: opts.owner.gid,
        };
        match self.mutate(op).await? {
            Applied::Staged(s) => Ok(s),
            _ => Err(ClientError::Protocol("expected a staged upload".into())),
        }
    }

    /// Uploads `reader` as blocks of `staged` (in parallel) and returns the
    /// body description to commit. `progress` is called with bytes uploaded.
    pub async fn upload_blocks<R: AsyncRead + Unpin>(
        &self,
        staged: &StagedUpload,
        reader: R,
        opts: &PutOptions,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<BodySpec, ClientError> {
        self.upload_indexed(staged, reader, opts, progress)
            .await
            .map(|uploaded| uploaded.spec)
    }

    /// [`Client::upload_blocks`], also computing the body's searchable
    /// fields (its attributes and, for a small structured body, its
    /// content: see `nokv_fields::extract`), for [`Client::commit_indexed`].
    pub async fn upload_indexed<R: AsyncRead + Unpin>(
        &self,
        staged: &StagedUpload,
        reader: R,
        opts: &PutOptions,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Uploaded, ClientError> {
        let input = BlockReader::new(reader, opts.block_size);
        self.upload_rest(
            staged,
            Sha256::new(),
            VecDeque::new(),
            input,
            opts,
            progress,
        )
        .await
        .map(|(uploaded, _)| uploaded)
    }

    /// [`Client::upload_indexed`], starting with the blocks `ahead`, already
    /// read and fed to `hasher` (the last of them may end the input). Also
    /// returns how many blocks the leader checked while later ones were
    /// still uploading.
    async fn upload_rest<R: AsyncRead + Unpin>(
        &self,
        staged: &StagedUpload,
        mut hasher: Sha256,
        mut ahead: VecDeque<Vec<u8>>,
        mut input: BlockReader<R>,
        opts: &PutOptions,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(Uploaded, usize), ClientError> {
        let store = self.blob_store().await?;
        // A body small enough to carry content fields is kept whole for
        // the extraction (its blocks are shared, not copied).
        let mut small: Option<Vec<Bytes>> = Some(Vec::new());
        let prefix = staged.key_prefix();
        let block_size = opts.block_size.max(1);
        let mut blocks: Vec<Option<BlockRef>> = Vec::new();
        // Finished blocks go to a task that has the leader check them now,
        // so the commit only checks the last ones (see `precheck`).
        let (finished, finished_rx) = tokio::sync::mpsc::unbounded_channel();
        let prechecked = Arc::new(AtomicUsize::new(0));
        // Left to finish its request in flight when the body is done: a
        // cancelled call resets its HTTP/2 stream, and a node's connection
        // takes only so many resets (many small concurrent publishes, each
        // cancelling a check, had the node close the connection with
        // ENHANCE_YOUR_CALM and failed them).
        tokio::spawn(precheck(
            self.clone(),
            staged.id,
            finished_rx,
            prechecked.clone(),
        ));
        // Each block uploads in its own task, so uploads make progress while
        // we wait for more input (a slow stdin, say). At most `parallelism`
        // run at once; dropping the set on error cancels the rest.
        let parallelism = opts.parallelism.max(1);
        let mut uploads = tokio::task::JoinSet::new();
        let mut index = 0usize;
        let mut total = 0u64;
        loop {
            let buf = match ahead.pop_front() {
                Some(buf) => buf,
                None => {
                    let buf = input.next_block().await?;
                    hasher.update(&buf);
                    // Let the uploads and block checks queued behind the
                    // hashing run.
                    tokio::task::yield_now().await;
                    buf
                }
            };
            let filled = buf.len();
            if filled == 0 {
                break;
            }
            total += filled as u64;
            let at = index;
            index += 1;
            while uploads.len() >= parallelism {
                if let Some(done) = uploads.join_next().await {
                    let (at, block) = join_upload(done)?;
                    progress(block.size);
                    blocks[at] = Some(block);
                }
            }
            blocks.push(None);
            let store = store.clone();
            let prefix = prefix.clone();
            let body = Bytes::from(buf);
            if total > nokv_fields::MAX_FIELD_BODY_BYTES {
                small = None;
            } else if let Some(kept) = small.as_mut() {
                kept.push(body.clone());
            }
            // A short block is the last one: the commit checks it anyway,
            // so it is not checked early (a body of one block makes no
            // check at all).
            let finished = (filled == block_size).then(|| finished.clone());
            // Hashing the block (for its key) happens in the task, beside
            // the other uploads, not on the reading loop.
            uploads.spawn(async move {
                let digest = hex(&Sha256::digest(&body));
                let key = block_key(&prefix, at, &digest);
                let block = BlockRef {
                    key: key.clone(),
                    size: filled as u64,
                };
                store.put_new(&key, body).await?;
                // The checker may be gone (it stops on its first error).
                if let Some(finished) = finished {
                    let _ = finished.send(block.clone());
                }
                Ok((at, block))
            });
            if filled < block_size {
                break;
            }
        }
        while let Some(done) = uploads.join_next().await {
            let (at, block) = join_upload(done)?;
            progress(block.size);
            blocks[at] = Some(block);
        }
        let blocks = blocks
            .into_iter()
            .collect::<Option<Vec<BlockRef>>>()
            .ok_or_else(|| ClientError::Store("a block upload did not report".into()))?;
        // The checker ends once its request in flight is answered; the
        // commit checks what it did not confirm by now.
        drop(finished);
        let spec = BodySpec {
            size: total,
            blocks,
            sha256: hex(&hasher.finalize()),
            content_type: opts.content_type.clone(),
            producer: opts.producer.clone(),
            attrs: opts.attrs.clone(),
        };
        let content = small.map(|blocks| blocks.concat());
        let fields = nokv_fields::to_field_set(&nokv_fields::extract(
            &staged.name,
            &spec.content_type,
            &spec.attrs,
            content.as_deref(),
        ));
        Ok((
            Uploaded { spec, fields },
            prechecked.load(Ordering::Relaxed),
        ))
    }

    /// Uploads one block of `staged` (block `index` of the body; the caller
    /// assembles the [`BodySpec`] and hashes the body). For writers that
    /// produce a body block by block over time, like the FUSE mount's
    /// sequential writers.
    pub async fn upload_block(
        &self,
        staged: &StagedUpload,
        index: usize,
        bytes: Bytes,
    ) -> Result<BlockRef, ClientError> {
        let store = self.blob_store().await?;
        let key = block_key(&staged.key_prefix(), index, &hex(&Sha256::digest(&bytes)));
        let block = BlockRef {
            key: key.clone(),
            size: bytes.len() as u64,
        };
        store.put_new(&key, bytes).await.map_err(store_error)?;
        Ok(block)
    }

    /// Asks the leader to check blocks of a staged upload now (they exist
    /// with these sizes), so that the commit need not. Answers how many the
    /// leader had to look up in the store.
    pub async fn check_blocks(
        &self,
        upload: UploadId,
        blocks: Vec<BlockRef>,
    ) -> Result<u32, ClientError> {
        if self.is_routed() && matches!(self.shard_map().await, Ok(Some(_))) {
            // A routed upload id carries its shard (see `routing`).
            let shard = crate::routing::id_shard(upload.0);
            let local = UploadId(crate::routing::local_id(upload.0));
            return Box::pin(self.for_shard(shard).check_blocks(local, blocks)).await;
        }
        let blocks: Vec<nokv_proto::pb::BlockRef> = blocks.into_iter().map(Into::into).collect();
        let shard = self.wire_shard();
        self.with_retries(false, true, |mut stub| {
            let request = nokv_proto::pb::CheckBlocksRequest {
                upload: upload.0,
                blocks: blocks.clone(),
                shard,
            };
            async move { stub.check_blocks(request).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|r| r.looked_up)
    }

    /// Makes an upload's body visible (last step of a publish).
    pub async fn commit(&self, upload: UploadId, body: BodySpec) -> Result<Attr, ClientError> {
        match self.mutate(Op::CommitPublish { upload, body }).await? {
            Applied::Attr(a) => Ok(a),
            _ => Err(ClientError::Protocol("expected attributes".into())),
        }
    }

    /// Commits several uploads at once: all become visible or none does.
    pub async fn commit_batch(
        &self,
        commits: Vec<(UploadId, BodySpec)>,
    ) -> Result<Vec<Attr>, ClientError> {
        match self.mutate(Op::CommitPublishBatch { commits }).await? {
            Applied::Attrs(a) => Ok(a),
            _ => Err(ClientError::Protocol(
                "expected a list of attributes".into(),
            )),
        }
    }

    /// Makes an upload's body visible with its searchable fields, which the
    /// shard indexes with it (what [`Client::put`] does; a plain
    /// [`Client::commit`] publishes the body unindexed).
    pub async fn commit_indexed(
        &self,
        upload: UploadId,
        uploaded: Uploaded,
    ) -> Result<Attr, ClientError> {
        let mut attrs = self.commit_batch_indexed(vec![(upload, uploaded)]).await?;
        match (attrs.pop(), attrs.is_empty()) {
            (Some(attr), true) => Ok(attr),
            _ => Err(ClientError::Protocol(
                "expected the attributes of one file".into(),
            )),
        }
    }

    /// [`Client::commit_batch`] with each body's fields: all become visible
    /// (and indexed) or none does.
    pub async fn commit_batch_indexed(
        &self,
        commits: Vec<(UploadId, Uploaded)>,
    ) -> Result<Vec<Attr>, ClientError> {
        let commits = commits
            .into_iter()
            .map(|(upload, u)| IndexedCommit {
                upload,
                body: u.spec,
                fields: u.fields,
            })
            .collect();
        match self.mutate(Op::CommitPublishIndexed { commits }).await? {
            Applied::Attrs(a) => Ok(a),
            _ => Err(ClientError::Protocol(
                "expected a list of attributes".into(),
            )),
        }
    }

    /// Publishes many small bodies, all visible at once or none: each file
    /// is staged and its blocks uploaded (up to [`PUT_MANY_IN_FLIGHT`] files
    /// at once; their stage commands travel in batched calls), then one
    /// commit makes every body visible together, in one log entry. The
    /// content type of each follows its name when `opts` leaves the
    /// default. On failure every staged upload is aborted, except after a
    /// commit whose outcome is unknown (then it may have applied).
    pub async fn put_many(
        &self,
        files: Vec<(String, Bytes)>,
        opts: &PutOptions,
    ) -> Result<Vec<Attr>, ClientError> {
        let default_type = PutOptions::default().content_type;
        let staged: Vec<StagedOrFailed> =
            futures::stream::iter(files.into_iter().map(|(path, body)| {
                let opts = if opts.content_type == default_type {
                    PutOptions {
                        content_type: content_type_for(&path).to_string(),
                        ..opts.clone()
                    }
                } else {
                    opts.clone()
                };
                async move {
                    let upload = self.stage(&path, &opts).await.map_err(|e| (None, e))?;
                    let uploaded = self
                        .upload_indexed(&upload, &body[..], &opts, &|_| {})
                        .await
                        .map_err(|e| (Some(upload.id), e))?;
                    Ok((upload.id, uploaded))
                }
            }))
            .buffered(PUT_MANY_IN_FLIGHT)
            .collect()
            .await;
        let mut commits = Vec::with_capacity(staged.len());
        let mut failed: Option<ClientError> = None;
        let mut to_abort = Vec::new();
        for result in staged {
            match result {
                Ok((id, uploaded)) => {
                    to_abort.push(id);
                    commits.push((id, uploaded));
                }
                Err((id, e)) => {
                    to_abort.extend(id);
                    failed.get_or_insert(e);
                }
            }
        }
        let committed = match failed {
            Some(e) => Err(e),
            None => self.commit_batch_indexed(commits).await,
        };
        match committed {
            Ok(attrs) => Ok(attrs),
            Err(e) => {
                if !matches!(e, ClientError::Unknown(_)) {
                    futures::stream::iter(to_abort.into_iter().map(|id| self.abort(id)))
                        .buffer_unordered(PUT_MANY_IN_FLIGHT)
                        .for_each(|_| async {})
                        .await;
                }
                Err(e)
            }
        }
    }

    /// Gives up an upload; the cluster deletes whatever it uploaded.
    pub async fn abort(&self, upload: UploadId) -> Result<(), ClientError> {
        self.mutate(Op::AbortPublish { upload }).await.map(|_| ())
    }

    /// Publishes `reader` at `path` in one atomic step: readers see the old
    /// body or the new one, never a mix. On failure the upload is aborted.
    pub async fn put<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        reader: R,
        opts: &PutOptions,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Attr, ClientError> {
        self.publish(path, reader, opts, progress)
            .await
            .map(|(attr, _)| attr)
    }

    /// [`Client::put`], also telling where the time went.
    ///
    /// The stage command runs while the first blocks are read and hashed, and
    /// the leader checks finished blocks while later ones upload; what the
    /// publish waits for beyond moving its bytes is
    /// [`PublishTimings::metadata_wait`].
    pub async fn publish<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        reader: R,
        opts: &PutOptions,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(Attr, PublishTimings), ClientError> {
        self.publish_at(EntryRef::Path(path.into()), reader, opts, progress)
            .await
    }

    /// [`Client::publish`] at the entry `at` (see [`Client::stage_at`]).
    pub async fn publish_at<R: AsyncRead + Unpin>(
        &self,
        at: EntryRef,
        reader: R,
        opts: &PutOptions,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(Attr, PublishTimings), ClientError> {
        let block_size = opts.block_size.max(1);
        let mut hasher = Sha256::new();
        // While the stage command commits, read and hash blocks (at most as
        // many as upload at once). When it is done, uploading starts at
        // once, even in the middle of a block still waiting for input.
        let started = Instant::now();
        let mut stage = Box::pin(async {
            let result = self.stage_at(at, opts).await;
            (result, started.elapsed())
        });
        let mut input = BlockReader::new(reader, block_size);
        let mut staged = None;
        let mut ahead = VecDeque::new();
        let mut read_error = None;
        let mut at_end = false;
        while !at_end && ahead.len() < opts.parallelism.max(1) {
            tokio::select! {
                biased;
                done = &mut stage => {
                    staged = Some(done);
                    break;
                }
                block = input.next_block() => match block {
                    Ok(buf) => {
                        hasher.update(&buf);
                        at_end = buf.len() < block_size;
                        ahead.push_back(buf);
                        // Hashing a block holds this thread for milliseconds:
                        // let the RPC tasks queued behind it run.
                        tokio::task::yield_now().await;
                    }
                    Err(e) => {
                        read_error = Some(e);
                        break;
                    }
                },
            }
        }
        let ready = Instant::now();
        let (staged, stage_time) = match staged {
            Some(done) => done,
            None => stage.await,
        };
        let mut timings = PublishTimings {
            stage: stage_time,
            stage_wait: ready.elapsed(),
            ..PublishTimings::default()
        };
        let staged = staged?;
        let result = match read_error {
            Some(e) => Err(e),
            None => {
                let t = Instant::now();
                let uploaded = self
                    .upload_rest(&staged, hasher, ahead, input, opts, progress)
                    .await;
                timings.upload = t.elapsed();
                match uploaded {
                    Ok((uploaded, prechecked)) => {
                        timings.blocks = uploaded.spec.blocks.len();
                        timings.blocks_prechecked = prechecked;
                        let t = Instant::now();
                        let committed = self.commit_indexed(staged.id, uploaded).await;
                        timings.commit = t.elapsed();
                        committed
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = &result {
            // An unknown outcome may still commit: leave that upload to its lease.
            if !matches!(e, ClientError::Unknown(_)) {
                let _ = self.abort(staged.id).await;
            }
        }
        result.map(|attr| (attr, timings))
    }

    /// Publishes an in-memory body.
    pub async fn put_bytes(
        &self,
        path: &str,
        data: &[u8],
        opts: &PutOptions,
    ) -> Result<Attr, ClientError> {
        self.put(path, data, opts, &|_| {}).await
    }

    /// The current body of a file (its generation and block plan).
    pub async fn read_body(
        &self,
        path: &str,
        consistency: Consistency,
    ) -> Result<(Attr, Option<Body>), ClientError> {
        let r = self
            .query(
                Query::ReadBody {
                    inode: InodeRef::Path(path.into()),
                },
                consistency,
            )
            .await?;
        match r {
            QueryResult::Body { attr, body } => Ok((attr, body)),
            _ => Err(ClientError::Protocol("expected a body".into())),
        }
    }

    /// Reads `range` (or all) of a body's bytes from the object store. A full
    /// read is checked against the body's sha256.
    pub async fn read_range(
        &self,
        body: &Body,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, ClientError> {
        let store = self.blob_store().await?;
        let want = match &range {
            Some(r) => r.start.min(body.size)..r.end.min(body.size),
            None => 0..body.size,
        };
        if want.start >= want.end {
            return Ok(Bytes::new());
        }
        // Which blocks overlap `want`, and which part of each.
        let mut parts = Vec::new();
        let mut offset = 0u64;
        for block in &body.blocks {
            let (start, end) = (offset, offset + block.size);
            if end > want.start && start < want.end {
                let from = want.start.max(start) - start;
                let to = want.end.min(end) - start;
                let whole = from == 0 && to == block.size;
                parts.push((block.key.clone(), (!whole).then_some(from..to), to - from));
            }
            offset = end;
        }
        let chunks: Vec<Bytes> = futures::stream::iter(parts.into_iter().map(|(key, r, len)| {
            let store = store.clone();
            async move {
                let bytes = store.get(&key, r).await.map_err(store_error)?;
                if bytes.len() as u64 != len {
                    return Err(ClientError::Integrity(format!(
                        "block {key}: got {} bytes, expected {len}",
                        bytes.len()
                    )));
                }
                Ok(bytes)
            }
        }))
        .buffered(8)
        .try_collect()
        .await?;
        let mut out = Vec::with_capacity((want.end - want.start) as usize);
        for c in chunks {
            out.extend_from_slice(&c);
        }
        if range.is_none() {
            let digest = hex(&Sha256::digest(&out));
            if digest != body.sha256 {
                return Err(ClientError::Integrity(format!(
                    "sha256 mismatch: body says {}, bytes hash to {digest}",
                    body.sha256
                )));
            }
        }
        Ok(Bytes::from(out))
    }

    /// One whole block of a body from the object store, checked against the
    /// size its body records (blocks are immutable: a caller may cache it
    /// by key for good).
    pub async fn read_block(&self, block: &BlockRef) -> Result<Bytes, ClientError> {
        let store = self.blob_store().await?;
        let bytes = store.get(&block.key, None).await.map_err(store_error)?;
        verify_block(block, &bytes)?;
        Ok(bytes)
    }

    /// The bytes of body `generation` of the file `path` names (or named)
    /// after it was replaced or removed, while GC has not collected it
    /// (the grace period, or a pin holding it): its blocks in order, each
    /// checked against the digest its key names. `ENOENT` once collected;
    /// `InvalidArgument` past `max_bytes`.
    pub async fn read_retired(
        &self,
        path: &str,
        generation: Generation,
        max_bytes: u64,
    ) -> Result<Bytes, ClientError> {
        let query = Query::RetiredBody {
            inode: InodeRef::Path(path.into()),
            generation,
        };
        let keys = match self.query(query, Consistency::Linearizable).await? {
            QueryResult::Retired(keys) => keys,
            _ => return Err(ClientError::Protocol("expected retired block keys".into())),
        };
        let store = self.blob_store().await?;
        let mut out = Vec::new();
        for key in keys {
            let bytes = store.get(&key, None).await.map_err(|e| match e {
                nokv_blob::BlobError::NotFound { .. } => ClientError::Fs {
                    code: "ENOENT".into(),
                    errno: 2,
                    message: format!("generation {} was collected", generation.0),
                },
                e => store_error(e),
            })?;
            check_block(&key, &bytes)?;
            if (out.len() + bytes.len()) as u64 > max_bytes {
                return Err(ClientError::InvalidArgument(format!(
                    "generation {} is larger than {max_bytes} bytes",
                    generation.0
                )));
            }
            out.extend_from_slice(&bytes);
        }
        Ok(Bytes::from(out))
    }

    /// Reads a file's bytes (`range` or all) at its current generation.
    pub async fn get(&self, path: &str, range: Option<Range<u64>>) -> Result<Bytes, ClientError> {
        let (_, body) = self.read_body(path, Consistency::Linearizable).await?;
        match body {
            Some(body) => self.read_range(&body, range).await,
            None => Ok(Bytes::new()),
        }
    }

    /// Streams a whole body to `writer`, block by block (parallel fetch,
    /// in-order write), verifying its sha256; returns the byte count.
    pub async fn get_to_writer<W: AsyncWrite + Unpin>(
        &self,
        body: &Body,
        mut writer: W,
        parallelism: usize,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, ClientError> {
        let mut hasher = Sha256::new();
        let mut fetches = futures::stream::iter(
            body.blocks
                .iter()
                .map(|block| async move { self.read_block(block).await }),
        )
        .buffered(parallelism.max(1));
        let mut written = 0u64;
        while let Some(bytes) = fetches.next().await {
            let bytes = bytes?;
            hasher.update(&bytes);
            writer
                .write_all(&bytes)
                .await
                .map_err(|e| ClientError::Output {
                    kind: e.kind(),
                    message: e.to_string(),
                })?;
            written += bytes.len() as u64;
            progress(bytes.len() as u64);
        }
        writer.flush().await.map_err(|e| ClientError::Output {
            kind: e.kind(),
            message: e.to_string(),
        })?;
        let digest = hex(&hasher.finalize());
        if digest != body.sha256 {
            return Err(ClientError::Integrity(format!(
                "sha256 mismatch: body says {}, bytes hash to {digest}",
                body.sha256
            )));
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type_for("/runs/7/params.JSON"), "application/json");
        assert_eq!(content_type_for("metrics.csv"), "text/csv");
        assert_eq!(content_type_for("/a.b/train.log"), "text/plain");
        assert_eq!(content_type_for("/a.b/noext"), "application/octet-stream");
        assert_eq!(
            content_type_for("model.safetensors"),
            "application/octet-stream"
        );
    }

    #[tokio::test]
    async fn a_block_read_cut_short_keeps_its_bytes() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut input = BlockReader::new(rx, 8);
        tx.write_all(b"abcde").await.expect("write");
        // The rest of the block is not there: the read is dropped half-way
        // (as `publish` drops it when the stage command finishes first).
        let cut = tokio::time::timeout(Duration::from_millis(50), input.next_block()).await;
        assert!(cut.is_err(), "a block of 8 completed with 5 bytes: {cut:?}");
        tx.write_all(b"fghij").await.expect("write");
        drop(tx);
        assert_eq!(input.next_block().await.expect("block"), b"abcdefgh");
        assert_eq!(input.next_block().await.expect("block"), b"ij");
        assert!(input.next_block().await.expect("end").is_empty());
    }

    #[test]
    fn the_client_endpoint_wins_over_the_advertised_one() {
        let advertised = BlobLocation::parse("s3://bkt/p?endpoint=http://s3:9000&region=us-east-1")
            .expect("url");
        let local = client_side_location(advertised.clone(), Some("http://127.0.0.1:9000".into()));
        match local {
            BlobLocation::S3 {
                bucket,
                prefix,
                endpoint,
                ..
            } => {
                assert_eq!((bucket.as_str(), prefix.as_str()), ("bkt", "p"));
                assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:9000"));
            }
            other => panic!("not S3: {other:?}"),
        }
        assert_eq!(client_side_location(advertised.clone(), None), advertised);
        assert_eq!(
            client_side_location(advertised.clone(), Some(" ".into())),
            advertised
        );
    }

    #[test]
    fn a_block_key_names_its_digest_and_a_changed_byte_is_caught() {
        let bytes = b"some block bytes".to_vec();
        let digest = hex(&Sha256::digest(&bytes));
        let key = block_key("blocks/0/7/12/", 3, &digest);
        assert_eq!(key, format!("blocks/0/7/12/00000003.{digest}"));
        assert_eq!(key_digest(&key), Some(digest.as_str()));
        check_block(&key, &bytes).expect("intact bytes pass");
        let mut corrupt = bytes.clone();
        corrupt[0] ^= 1;
        let err = check_block(&key, &corrupt).expect_err("a flipped bit is caught");
        assert!(matches!(err, ClientError::Integrity(_)), "{err:?}");
        // Keys from before block digests carry none and are not checked.
        assert_eq!(key_digest("blocks/0/7/12/00000003"), None);
        check_block("blocks/0/7/12/00000003", &corrupt).expect("nothing to check");
        assert_eq!(
            key_digest("blocks/0/7.12/00000003"),
            None,
            "a dot elsewhere"
        );
    }
}
