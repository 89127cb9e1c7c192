//! `nokv watch`: print change events as they commit, one per line.

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use nokv_client::{EventKind, WatchCursor, WatchedEvent};
use serde_json::{json, Value};

use crate::output::{kind, print_json};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Directory (or file) to watch: events at it and its direct children.
    #[arg(default_value = "/")]
    pub path: String,
    /// Everything below PATH, not only its direct children.
    #[arg(short, long)]
    pub recursive: bool,
    /// Resume after this cursor: the first column of an earlier line (the
    /// `resume` field with --json). Per shard, `SHARD:SEQ[,SHARD:SEQ...]`, e.g.
    /// `0:123,5:77`; a plain number is a position in PATH's own shard. 0
    /// replays the whole retained history; a shard the cursor does not name
    /// is read from the start of its history.
    #[arg(
        long,
        visible_alias = "after",
        default_value = "0",
        value_name = "CURSOR"
    )]
    pub from: WatchCursor,
}

#[derive(Args, Debug)]
pub struct RetentionArgs {
    /// Keep at most this many events (default: unchanged).
    #[arg(long)]
    pub events: Option<u64>,
    /// Keep no event older than this, e.g. 24h or 7days (default: unchanged).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub age: Option<std::time::Duration>,
}

/// Shows the watch history's retention and cursors; with `--events` or
/// `--age`, changes the retention first (a replicated setting).
pub async fn retention(a: RetentionArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let mut status = client
        .any_status()
        .await
        .context("no replica answered Status")?;
    if a.events.is_some() || a.age.is_some() {
        let events = a.events.unwrap_or(status.watch_max_events);
        let age = a
            .age
            .unwrap_or(std::time::Duration::from_millis(status.watch_max_age_ms));
        client
            .set_watch_retention(events, age)
            .await
            .context("set the watch retention")?;
        status.watch_max_events = events;
        status.watch_max_age_ms = age.as_millis().min(u128::from(u64::MAX)) as u64;
    }
    let age = humantime::format_duration(std::time::Duration::from_millis(status.watch_max_age_ms));
    if g.json {
        print_json(&json!({
            "max_events": status.watch_max_events,
            "max_age_ms": status.watch_max_age_ms,
            "oldest_cursor": status.oldest_cursor,
            "newest_cursor": status.newest_cursor,
        }));
    } else {
        outln!(
            "keep {} events, none older than {age}; cursors {}..{} (on {})",
            status.watch_max_events,
            status.oldest_cursor,
            status.newest_cursor,
            status.addr
        );
    }
    Ok(())
}

fn type_name(k: &EventKind) -> &'static str {
    match k {
        EventKind::Create { .. } => "create",
        EventKind::Mkdir => "mkdir",
        EventKind::Link => "link",
        EventKind::Remove => "remove",
        EventKind::Rename { .. } => "rename",
        EventKind::Publish { .. } => "publish",
        EventKind::SetAttr => "setattr",
        EventKind::Xattr { .. } => "xattr",
        EventKind::SnapshotCreated { .. } => "snapshot-created",
        EventKind::SnapshotRemoved { .. } => "snapshot-removed",
    }
}

/// One event as JSON: `cursor` is its position in its shard's history
/// (`shard`), `resume` the cursor to pass to `--from` to resume after it.
fn event_json(w: &WatchedEvent) -> Value {
    let e = &w.event;
    let mut v = json!({
        "cursor": e.seq,
        "shard": w.shard.0,
        "resume": w.cursor.to_string(),
        "index": e.index.0,
        "time_ns": e.time_ns,
        "inode": e.inode.0,
        "path": e.path,
        "type": type_name(&e.kind),
    });
    let extra = match &e.kind {
        EventKind::Create { file_type } => json!({"file_type": kind(*file_type)}),
        EventKind::Rename { from } => json!({"from": from}),
        EventKind::Publish {
            generation,
            size,
            sha256,
        } => json!({"generation": generation.0, "size": size, "sha256": sha256}),
        EventKind::Xattr { name, removed } => json!({"name": name, "removed": removed}),
        EventKind::SnapshotCreated { id } | EventKind::SnapshotRemoved { id } => {
            json!({"snapshot": id.0})
        }
        _ => json!({}),
    };
    if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    v
}

/// One event as a line: the cursor to resume after it, the type, the path
/// and the details, tab-separated.
fn event_text(w: &WatchedEvent) -> String {
    let e = &w.event;
    let path = e.path.as_deref().unwrap_or("-");
    let detail = match &e.kind {
        EventKind::Create { file_type } => kind(*file_type).to_string(),
        EventKind::Rename { from } => format!("from {}", from.as_deref().unwrap_or("-")),
        EventKind::Publish {
            generation,
            size,
            sha256,
        } => format!("generation {} size {size} sha256 {sha256}", generation.0),
        EventKind::Xattr { name, removed } => {
            format!("{name} {}", if *removed { "removed" } else { "set" })
        }
        EventKind::SnapshotCreated { id } | EventKind::SnapshotRemoved { id } => {
            format!("snapshot {}", id.0)
        }
        _ => String::new(),
    };
    format!("{}\t{}\t{path}\t{detail}", w.cursor, type_name(&e.kind))
        .trim_end()
        .to_string()
}

/// Streams events until Ctrl-C, or until the cluster refuses the watch
/// (an expired cursor, a malformed path).
pub async fn run(a: WatchArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let events = client.watch_from(&a.path, a.recursive, a.from.clone());
    futures::pin_mut!(events);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = events.next() => match next {
                Some(Ok(e)) => {
                    if g.json {
                        print_json(&event_json(&e));
                    } else {
                        outln!("{}", event_text(&e));
                    }
                }
                Some(Err(e)) => return Err(e).with_context(|| format!("watch {}", a.path)),
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_client::{Event, InodeId, ShardId};

    fn watched() -> WatchedEvent {
        WatchedEvent {
            shard: ShardId(5),
            event: Event {
                seq: 77,
                index: nokv_holt::LogIndex(90),
                time_ns: 1,
                inode: InodeId(3),
                path: Some("/w/a/f".into()),
                kind: EventKind::Mkdir,
            },
            cursor: "0:123,5:77".parse().expect("cursor"),
        }
    }

    #[test]
    fn lines_start_with_the_cursor_to_resume_from() {
        let line = event_text(&watched());
        assert_eq!(line, "0:123,5:77\tmkdir\t/w/a/f");
        let first = line.split('\t').next().expect("a column");
        let resumed: WatchCursor = first.parse().expect("the first column is a cursor");
        assert_eq!(resumed, watched().cursor);
    }

    #[test]
    fn json_has_the_shard_position_and_the_resume_cursor() {
        let v = event_json(&watched());
        assert_eq!(v["cursor"], 77);
        assert_eq!(v["shard"], 5);
        assert_eq!(v["resume"], "0:123,5:77");
        assert_eq!(v["path"], "/w/a/f");
    }

    #[test]
    fn from_takes_a_plain_number_or_a_per_shard_cursor() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            watch: WatchArgs,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("nokv").chain(args.iter().copied()))
                .map(|c| c.watch.from)
        };
        assert_eq!(parse(&[]).expect("default"), WatchCursor::new());
        assert_eq!(
            parse(&["--from", "12"]).expect("plain"),
            WatchCursor::owner_at(12)
        );
        let per_shard = parse(&["/w", "--after", "0:3,4:9"]).expect("per shard");
        assert_eq!(per_shard.to_string(), "0:3,4:9");
        let bad = parse(&["--from", "0:x"]).expect_err("refused").to_string();
        assert!(
            bad.contains("invalid value") && bad.contains("SHARD:SEQ"),
            "{bad}"
        );
    }
}
