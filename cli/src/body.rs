//! Body commands: put, cat, get, publish-dir, gc, fsck, uploads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use nokv_client::{Client, ClientError, Generation, PublishMode, PutOptions};
use serde_json::json;

use crate::output::print_json;
use crate::GlobalArgs;

/// Bodies at least this large get a progress bar (on a terminal).
const PROGRESS_THRESHOLD: u64 = 8 * 1024 * 1024;

#[derive(Args, Debug)]
pub struct PutArgs {
    /// Local file to publish, or `-` for standard input.
    pub local: String,
    /// Destination path in NoKV.
    pub path: String,
    /// The path must already be a file; its current generation is replaced
    /// (fails if another publish replaced it first).
    #[arg(long, conflicts_with = "create_only")]
    pub replace: bool,
    /// The path must not exist yet.
    #[arg(long)]
    pub create_only: bool,
    /// Create missing parent directories first (as `mkdir -p`).
    #[arg(short = 'p', long)]
    pub parents: bool,
    /// User attribute stored with the body (repeatable): --attr step=100
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub attrs: Vec<String>,
    /// Content type recorded with the body (default: from the target's
    /// extension, e.g. .json is application/json; else
    /// application/octet-stream).
    #[arg(long)]
    pub content_type: Option<String>,
    /// Who produced the artifact (recorded with the body).
    #[arg(long, default_value = "nokv-cli")]
    pub producer: String,
    /// Block size in bytes.
    #[arg(long, default_value_t = nokv_client::DEFAULT_BLOCK_SIZE)]
    pub block_size: usize,
    /// Blocks uploaded at once.
    #[arg(long, default_value_t = 8)]
    pub parallelism: usize,
    /// Lease of the staged upload: if this command dies, the cluster
    /// reclaims the uploaded blocks once the lease runs out.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub lease: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    pub path: String,
    /// Byte range START-END (end exclusive), e.g. 0-1024 or 100- (to the end).
    #[arg(long)]
    pub range: Option<String>,
    /// Read at this snapshot (an id from `nokv snapshot create`/`ls`):
    /// exactly the state at its pin.
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<u64>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    pub path: String,
    /// Local file to write (`-`: standard output, digest still verified).
    pub local: PathBuf,
    /// Blocks downloaded at once.
    #[arg(long, default_value_t = 8)]
    pub parallelism: usize,
    /// Read at this snapshot (an id from `nokv snapshot create`/`ls`):
    /// exactly the state at its pin.
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<u64>,
}

#[derive(Args, Debug)]
pub struct PublishDirArgs {
    /// Local directory whose files are published together.
    pub local_dir: PathBuf,
    /// Directory in NoKV to publish into (created if missing).
    pub path: String,
    #[arg(long, default_value_t = 8)]
    pub parallelism: usize,
    /// Attribute stored with every file's body (repeatable): --attr run=7
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub attrs: Vec<String>,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Also collect blocks still inside the reader grace period.
    #[arg(long)]
    pub now: bool,
    /// Only this shard (default: every shard of the cluster).
    #[arg(long, value_name = "ID")]
    pub shard: Option<u16>,
}

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Only this shard (default: every shard of the cluster).
    #[arg(long, value_name = "ID")]
    pub shard: Option<u16>,
}

fn parse_attrs(attrs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    attrs
        .iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("attribute {a:?} is not KEY=VALUE"))
        })
        .collect()
}

/// Parses `A-B` (end exclusive) or `A-`.
pub fn parse_range(s: &str) -> anyhow::Result<std::ops::Range<u64>> {
    let (a, b) = s
        .split_once('-')
        .context("range must be START-END or START-")?;
    let start: u64 = a.trim().parse().context("range start is not a number")?;
    let end: u64 = if b.trim().is_empty() {
        u64::MAX
    } else {
        b.trim().parse().context("range end is not a number")?
    };
    if end < start {
        bail!("range end {end} is before its start {start}");
    }
    Ok(start..end)
}

fn progress_bar(total: u64) -> ProgressBar {
    if total < PROGRESS_THRESHOLD {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

async fn mode_for(client: &Client, args: &PutArgs, g: &GlobalArgs) -> anyhow::Result<PublishMode> {
    if args.create_only {
        return Ok(PublishMode::CreateOnly);
    }
    if args.replace {
        let (_, body) = client
            .read_body(&args.path, g.consistency())
            .await
            .with_context(|| format!("put --replace {}", args.path))?;
        let expected = body.map_or(Generation(0), |b| b.generation);
        return Ok(PublishMode::Replace { expected });
    }
    Ok(PublishMode::Upsert)
}

pub async fn put(args: PutArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    if args.parents {
        if let Some((parent, _)) = args.path.trim_end_matches('/').rsplit_once('/') {
            if !parent.is_empty() {
                client
                    .mkdir(parent, true)
                    .await
                    .with_context(|| format!("mkdir -p {parent}"))?;
            }
        }
    }
    let opts = PutOptions {
        mode: mode_for(&client, &args, g).await?,
        content_type: args
            .content_type
            .clone()
            .unwrap_or_else(|| nokv_client::content_type_for(&args.path).to_string()),
        producer: args.producer.clone(),
        attrs: parse_attrs(&args.attrs)?,
        block_size: args.block_size,
        parallelism: args.parallelism,
        lease: args.lease,
        ..PutOptions::default()
    };
    let what = || format!("put {} {}", args.local, args.path);
    let attr = if args.local == "-" {
        client
            .put(&args.path, tokio::io::stdin(), &opts, &|_| {})
            .await
            .with_context(what)?
    } else {
        let file = tokio::fs::File::open(&args.local)
            .await
            .with_context(|| format!("opening {}", args.local))?;
        let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let bar = progress_bar(size);
        let b = bar.clone();
        let attr = client
            .put(&args.path, file, &opts, &move |n| b.inc(n))
            .await
            .with_context(what)?;
        bar.finish_and_clear();
        attr
    };
    if g.json {
        print_json(&crate::output::attr_json(Some(&args.path), &attr));
    } else {
        outln!(
            "published {} generation {} ({} bytes)",
            args.path,
            attr.generation.0,
            attr.size
        );
    }
    Ok(())
}

pub async fn cat(args: CatArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let client = g.client_at(args.snapshot)?;
    let range = args.range.as_deref().map(parse_range).transpose()?;
    let (_, body) = client
        .read_body(&args.path, g.consistency())
        .await
        .with_context(|| format!("cat {}", args.path))?;
    let Some(body) = body else { return Ok(()) };
    let mut out = tokio::io::stdout();
    match range {
        Some(r) => {
            let bytes = client
                .read_range(&body, Some(r))
                .await
                .with_context(|| format!("cat {}", args.path))?;
            out.write_all(&bytes).await?;
        }
        None => {
            client
                .get_to_writer(&body, &mut out, 8, &|_| {})
                .await
                .with_context(|| format!("cat {}", args.path))?;
        }
    }
    out.flush().await?;
    Ok(())
}

pub async fn get(args: GetArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client_at(args.snapshot)?;
    let (_, body) = client
        .read_body(&args.path, g.consistency())
        .await
        .with_context(|| format!("get {}", args.path))?;
    if args.local.as_os_str() == "-" {
        let Some(body) = body else {
            return Ok(());
        };
        let mut out = tokio::io::stdout();
        client
            .get_to_writer(&body, &mut out, args.parallelism, &|_| {})
            .await
            .with_context(|| format!("get {}", args.path))?;
        tokio::io::AsyncWriteExt::flush(&mut out).await?;
        return Ok(());
    }
    // Write next to the target and rename, so a failed download leaves no
    // half-written file under the final name.
    let tmp = args.local.with_extension("nokv-partial");
    let file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = match &body {
        Some(body) => {
            let bar = progress_bar(body.size);
            let b = bar.clone();
            let result = client
                .get_to_writer(body, file, args.parallelism, &move |n| b.inc(n))
                .await;
            bar.finish_and_clear();
            match result {
                Ok(n) => n,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(e).with_context(|| format!("get {}", args.path));
                }
            }
        }
        None => 0,
    };
    tokio::fs::rename(&tmp, &args.local)
        .await
        .with_context(|| format!("renaming to {}", args.local.display()))?;
    if g.json {
        print_json(&json!({"path": args.path, "local": args.local, "bytes": written}));
    }
    Ok(())
}

/// Every regular file under `dir`, as (relative path with '/', absolute path).
fn walk_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if !kind.is_file() {
                eprintln!(
                    "nokv: skipping {} (not a regular file or directory)",
                    path.display()
                );
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .context("walked outside the directory")?
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/");
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Stages `target` and uploads `local` into it. On failure, says which
/// upload (if one was staged) must be aborted.
async fn stage_and_upload(
    client: &Client,
    target: &str,
    local: &Path,
    opts: &PutOptions,
) -> Result<
    (nokv_client::UploadId, nokv_client::Uploaded),
    (Option<nokv_client::UploadId>, anyhow::Error),
> {
    let upload = client
        .stage(target, opts)
        .await
        .with_context(|| format!("staging {target}"))
        .map_err(|e| (None, e))?;
    let file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("opening {}", local.display()))
        .map_err(|e| (Some(upload.id), e))?;
    let spec = client
        .upload_indexed(&upload, file, opts, &|_| {})
        .await
        .with_context(|| format!("uploading {}", local.display()))
        .map_err(|e| (Some(upload.id), e))?;
    Ok((upload.id, spec))
}

pub async fn publish_dir(args: PublishDirArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let files = walk_files(&args.local_dir)?;
    if files.is_empty() {
        bail!("{} has no files to publish", args.local_dir.display());
    }
    let root = args.path.trim_end_matches('/').to_string();
    // Directories first (they may appear before the files do); the files
    // themselves become visible together in one commit.
    let mut dirs: Vec<String> = files
        .iter()
        .filter_map(|(rel, _)| rel.rsplit_once('/').map(|(d, _)| format!("{root}/{d}")))
        .collect();
    dirs.push(if root.is_empty() {
        "/".into()
    } else {
        root.clone()
    });
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        client
            .mkdir(d, true)
            .await
            .with_context(|| format!("mkdir -p {d}"))?;
    }
    let opts = PutOptions {
        parallelism: args.parallelism,
        attrs: parse_attrs(&args.attrs)?,
        ..Default::default()
    };
    // Many files at once: their stage commands share batched calls, their
    // blocks upload side by side.
    let results: Vec<_> = futures::stream::iter(files.iter().map(|(rel, local)| {
        let target = format!("{root}/{rel}");
        let opts = PutOptions {
            content_type: nokv_client::content_type_for(&target).to_string(),
            ..opts.clone()
        };
        let client = &client;
        async move { stage_and_upload(client, &target, local, &opts).await }
    }))
    .buffered(nokv_client::PUT_MANY_IN_FLIGHT)
    .collect()
    .await;
    let mut staged: Vec<(nokv_client::UploadId, nokv_client::Uploaded)> = Vec::new();
    let mut failed = None;
    let mut stray = Vec::new();
    for result in results {
        match result {
            Ok(done) => staged.push(done),
            Err((upload, e)) => {
                stray.extend(upload);
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        // Nothing may stay staged: abort every upload of this batch.
        for id in staged.iter().map(|(id, _)| *id).chain(stray) {
            let _ = client.abort(id).await;
        }
        return Err(e);
    }
    let ids: Vec<_> = staged.iter().map(|(id, _)| *id).collect();
    let attrs = match client.commit_batch_indexed(staged).await {
        Ok(a) => a,
        Err(e) => {
            if !matches!(e, ClientError::Unknown(_)) {
                for id in ids {
                    let _ = client.abort(id).await;
                }
            }
            return Err(e).context("committing the directory");
        }
    };
    if g.json {
        let list: Vec<_> = files
            .iter()
            .zip(&attrs)
            .map(|((rel, _), a)| crate::output::attr_json(Some(&format!("{root}/{rel}")), a))
            .collect();
        print_json(&json!({"path": args.path, "files": list}));
    } else {
        outln!(
            "published {} files into {} in one commit",
            attrs.len(),
            args.path
        );
    }
    Ok(())
}

pub async fn gc(args: GcArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let mut total = nokv_proto::pb::RunGcResponse::default();
    let mut per_shard = Vec::new();
    for shard in crate::shard::targets(&client, args.shard).await? {
        let r = client
            .for_shard(shard)
            .run_gc(args.now)
            .await
            .with_context(|| format!("gc of shard {}", shard.0))?;
        total.uploads_expired += r.uploads_expired;
        total.tasks_done += r.tasks_done;
        total.objects_deleted += r.objects_deleted;
        total.tasks_waiting += r.tasks_waiting;
        total.tasks_failed += r.tasks_failed;
        per_shard.push((shard, r));
    }
    let fields = |r: &nokv_proto::pb::RunGcResponse| {
        json!({
            "uploads_expired": r.uploads_expired,
            "tasks_done": r.tasks_done,
            "objects_deleted": r.objects_deleted,
            "tasks_waiting": r.tasks_waiting,
            "tasks_failed": r.tasks_failed,
        })
    };
    if g.json {
        // The totals at the top, each shard's under "shards".
        let mut out = fields(&total);
        out["shards"] = per_shard
            .iter()
            .map(|(shard, r)| {
                let mut v = fields(r);
                v["shard"] = json!(shard.0);
                v
            })
            .collect();
        print_json(&out);
    } else {
        let line = |r: &nokv_proto::pb::RunGcResponse| {
            format!(
                "{} expired uploads reclaimed, {} tasks done, {} objects deleted, {} tasks waiting for the grace period, {} failed",
                r.uploads_expired, r.tasks_done, r.objects_deleted, r.tasks_waiting, r.tasks_failed
            )
        };
        if per_shard.len() > 1 {
            for (shard, r) in &per_shard {
                outln!("shard {}: {}", shard.0, line(r));
            }
        }
        outln!("gc: {}", line(&total));
    }
    Ok(())
}

pub async fn fsck(args: FsckArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let shards = crate::shard::targets(&client, args.shard).await?;
    let (mut live_blocks, mut objects_scanned) = (0, 0);
    let mut problems = Vec::new();
    for shard in &shards {
        let r = client
            .for_shard(*shard)
            .fsck()
            .await
            .with_context(|| format!("fsck of shard {}", shard.0))?;
        live_blocks += r.live_blocks;
        objects_scanned += r.objects_scanned;
        problems.extend(r.problems.into_iter().map(|p| (*shard, p)));
    }
    if g.json {
        let problems: Vec<_> = problems
            .iter()
            .map(|(shard, p)| json!({"shard": shard.0, "kind": p.kind, "key": p.key, "inode": p.inode, "expected_size": p.expected_size, "actual_size": p.actual_size}))
            .collect();
        let ids: Vec<u16> = shards.iter().map(|s| s.0).collect();
        print_json(
            &json!({"shards": ids, "live_blocks": live_blocks, "objects_scanned": objects_scanned, "problems": problems}),
        );
    } else {
        outln!(
            "fsck: {} live blocks checked, {} objects scanned, {} problems ({} shard{})",
            live_blocks,
            objects_scanned,
            problems.len(),
            shards.len(),
            if shards.len() == 1 { "" } else { "s" }
        );
        for (shard, p) in &problems {
            outln!(
                "shard {}: {} {} (inode {}, expected {} bytes, found {})",
                shard.0,
                p.kind,
                p.key,
                p.inode,
                p.expected_size,
                p.actual_size
            );
        }
    }
    if !problems.is_empty() {
        bail!("fsck found {} problems", problems.len());
    }
    Ok(())
}

pub async fn uploads(g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let r = client
        .query(nokv_client::Query::ListUploads, g.consistency())
        .await
        .context("uploads")?;
    let nokv_client::QueryResult::Uploads(list) = r else {
        bail!("unexpected reply");
    };
    if g.json {
        let v: Vec<_> = list
            .iter()
            .map(|u| json!({"id": u.id.0, "name": u.name, "parent": u.parent.0, "inode": u.inode.0, "generation": u.generation.0, "key_prefix": u.key_prefix(), "lease_expires_ns": u.lease_expires_ns}))
            .collect();
        print_json(&json!({"uploads": v}));
    } else {
        for u in &list {
            outln!(
                "{} {} gen {} prefix {} lease until {}",
                u.id,
                u.name,
                u.generation.0,
                u.key_prefix(),
                crate::output::time(u.lease_expires_ns)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("0-10").expect("ok"), 0..10);
        assert_eq!(parse_range("5-").expect("ok"), 5..u64::MAX);
        assert!(parse_range("10-5").is_err());
        assert!(parse_range("x-1").is_err());
        assert!(parse_range("7").is_err());
    }

    #[test]
    fn attrs_parse() {
        let a = parse_attrs(&["step=100".into(), "run=a=b".into()]).expect("ok");
        assert_eq!(a["step"], "100");
        assert_eq!(a["run"], "a=b");
        assert!(parse_attrs(&["novalue".into()]).is_err());
    }
}
