//! `nokv watch`: print change events as they commit, one per line.

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use nokv_client::{Event, EventKind};
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
    /// Resume after this cursor (the first column of an earlier line); 0
    /// replays the whole retained history.
    #[arg(long, default_value_t = 0, value_name = "CURSOR")]
    pub from: u64,
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

fn event_json(e: &Event) -> Value {
    let mut v = json!({
        "cursor": e.seq,
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

fn event_text(e: &Event) -> String {
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
    format!("{}\t{}\t{path}\t{detail}", e.seq, type_name(&e.kind))
        .trim_end()
        .to_string()
}

/// Streams events until Ctrl-C, or until the cluster refuses the watch
/// (an expired cursor, a malformed path).
pub async fn run(a: WatchArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let events = client.watch(&a.path, a.recursive, a.from);
    futures::pin_mut!(events);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = events.next() => match next {
                Some(Ok(e)) => {
                    if g.json {
                        print_json(&event_json(&e));
                    } else {
                        println!("{}", event_text(&e));
                    }
                }
                Some(Err(e)) => return Err(e).with_context(|| format!("watch {}", a.path)),
                None => return Ok(()),
            }
        }
    }
}
