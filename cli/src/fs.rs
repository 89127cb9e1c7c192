//! Namespace commands: mkdir, ls, stat, touch, mv, rm, rmdir, ln, readlink, xattr.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};
use nokv_client::{Client, ClientError, FileType, RenameMode, SetAttr, XattrFlag};
use serde_json::json;

use crate::output::{self, print_json};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct PathArgs {
    /// Absolute path inside NoKV, e.g. /runs/1/config.json
    pub path: String,
}

#[derive(Args, Debug)]
pub struct StatArgs {
    /// Absolute path inside NoKV, e.g. /runs/1/config.json
    pub path: String,
    /// Read at this snapshot (an id from `nokv snapshot create`/`ls`):
    /// exactly the state at its pin.
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<u64>,
}

#[derive(Args, Debug)]
pub struct MkdirArgs {
    /// Create missing parents; an existing directory is not an error.
    #[arg(short, long)]
    pub parents: bool,
    /// Directories to create.
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Directory to list (default /).
    #[arg(default_value = "/")]
    pub path: String,
    /// Long format: type, mode, links, owner, size, mtime, name.
    #[arg(short, long)]
    pub long: bool,
    /// Start after this name (page cursor).
    #[arg(long)]
    pub after: Option<String>,
    /// Return at most this many entries (0 = all, fetched page by page).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Read at this snapshot (an id from `nokv snapshot create`/`ls`):
    /// exactly the state at its pin.
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<u64>,
}

#[derive(Args, Debug)]
pub struct MvArgs {
    pub from: String,
    pub to: String,
    /// Fail if the destination exists instead of replacing it.
    #[arg(short = 'n', long)]
    pub no_clobber: bool,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Remove directories and their contents recursively.
    #[arg(short, long)]
    pub recursive: bool,
    /// Ignore paths that do not exist.
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LnArgs {
    /// Make a symbolic link (TARGET is stored as given).
    #[arg(short, long)]
    pub symbolic: bool,
    /// The symlink target, or the existing path for a hard link.
    pub target: String,
    /// The new path.
    pub path: String,
}

#[derive(Subcommand, Debug)]
pub enum XattrCommand {
    /// Print the value of one attribute.
    Get { path: String, name: String },
    /// Set an attribute.
    Set {
        path: String,
        name: String,
        value: String,
        /// Fail if the attribute exists.
        #[arg(long, conflicts_with = "replace")]
        create: bool,
        /// Fail if the attribute does not exist.
        #[arg(long)]
        replace: bool,
    },
    /// List attribute names.
    List { path: String },
    /// Remove an attribute.
    Rm { path: String, name: String },
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn done(g: &GlobalArgs, what: &str, path: &str) {
    if g.json {
        print_json(&json!({"ok": true, "op": what, "path": path}));
    }
}

pub async fn mkdir(a: MkdirArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    for path in &a.paths {
        let attr = client
            .mkdir(path, a.parents)
            .await
            .with_context(|| format!("mkdir {path}"))?;
        if g.json {
            print_json(&output::attr_json(Some(path), &attr));
        }
    }
    Ok(())
}

pub async fn ls(a: LsArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client_at(a.snapshot)?;
    let consistency = g.consistency();
    let attr = client
        .stat(&a.path, consistency)
        .await
        .with_context(|| format!("ls {}", a.path))?;
    if attr.file_type != FileType::Directory {
        // Like ls(1): a non-directory lists itself.
        let name = a.path.rsplit('/').next().unwrap_or(&a.path).to_string();
        let entry = nokv_client::DirEntry { name, attr };
        if g.json {
            print_json(
                &json!({"path": a.path, "entries": [output::entry_json(&entry)], "next": null}),
            );
        } else if a.long {
            outln!("{}", output::entry_long(&entry));
        } else {
            outln!("{}", entry.name);
        }
        return Ok(());
    }
    let (entries, next) = if a.limit == 0 {
        let mut all = Vec::new();
        let mut after = a.after.clone();
        loop {
            let (page, next) = client
                .read_dir_page(&a.path, after, 0, consistency)
                .await
                .with_context(|| format!("ls {}", a.path))?;
            all.extend(page);
            match next {
                Some(n) => after = Some(n),
                None => break (all, None),
            }
        }
    } else {
        client
            .read_dir_page(&a.path, a.after.clone(), a.limit, consistency)
            .await
            .with_context(|| format!("ls {}", a.path))?
    };
    if g.json {
        let list: Vec<_> = entries.iter().map(output::entry_json).collect();
        print_json(&json!({"path": a.path, "entries": list, "next": next}));
        return Ok(());
    }
    for e in &entries {
        if a.long {
            outln!("{}", output::entry_long(e));
        } else if e.attr.file_type == FileType::Directory {
            outln!("{}/", e.name);
        } else {
            outln!("{}", e.name);
        }
    }
    if let Some(n) = next {
        eprintln!("(more entries: continue with --after {n:?})");
    }
    Ok(())
}

pub async fn stat(a: StatArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client_at(a.snapshot)?;
    let attr = client
        .stat(&a.path, g.consistency())
        .await
        .with_context(|| format!("stat {}", a.path))?;
    let body = if attr.file_type == FileType::File {
        client
            .read_body(&a.path, g.consistency())
            .await
            .with_context(|| format!("stat {}", a.path))?
            .1
    } else {
        None
    };
    if g.json {
        let mut v = output::attr_json(Some(&a.path), &attr);
        if let (Some(obj), Some(b)) = (v.as_object_mut(), &body) {
            obj.insert("body".into(), output::body_json(b));
        }
        print_json(&v);
    } else {
        outln!("{}", output::attr_text(&a.path, &attr));
        if let Some(b) = &body {
            outln!("{}", output::body_text(b));
        }
    }
    Ok(())
}

pub async fn touch(a: PathArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let attr = match client.create(&a.path).await {
        Ok(attr) => attr,
        Err(e) if e.is_exists() => client
            .set_attr(
                &a.path,
                SetAttr {
                    mtime_ns: Some(now_ns()),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("touch {}", a.path))?,
        Err(e) => return Err(e).with_context(|| format!("touch {}", a.path)),
    };
    if g.json {
        print_json(&output::attr_json(Some(&a.path), &attr));
    }
    Ok(())
}

pub async fn mv(a: MvArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let mode = if a.no_clobber {
        RenameMode::NoReplace
    } else {
        RenameMode::Replace
    };
    client
        .rename(&a.from, &a.to, mode)
        .await
        .with_context(|| format!("mv {} {}", a.from, a.to))?;
    if g.json {
        print_json(&json!({"ok": true, "op": "mv", "from": a.from, "to": a.to}));
    }
    Ok(())
}

/// Removes `path` and, for a directory, everything below it (depth first).
async fn remove_tree(client: &Client, path: &str, g: &GlobalArgs) -> Result<(), ClientError> {
    let attr = client.stat(path, g.consistency()).await?;
    if attr.file_type != FileType::Directory {
        return client.unlink(path).await;
    }
    loop {
        let (entries, _) = client.read_dir_page(path, None, 0, g.consistency()).await?;
        if entries.is_empty() {
            break;
        }
        for e in entries {
            let child = if path == "/" {
                format!("/{}", e.name)
            } else {
                format!("{path}/{}", e.name)
            };
            Box::pin(remove_tree(client, &child, g)).await?;
        }
    }
    if path == "/" {
        return Ok(());
    }
    client.rmdir(path).await
}

pub async fn rm(a: RmArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    for path in &a.paths {
        let result = if a.recursive {
            remove_tree(&client, path, g).await
        } else {
            client.unlink(path).await
        };
        match result {
            Ok(()) => done(g, "rm", path),
            Err(e) if a.force && e.is_not_found() => {}
            Err(e) => return Err(e).with_context(|| format!("rm {path}")),
        }
    }
    Ok(())
}

pub async fn rmdir(a: PathArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    client
        .rmdir(&a.path)
        .await
        .with_context(|| format!("rmdir {}", a.path))?;
    done(g, "rmdir", &a.path);
    Ok(())
}

pub async fn ln(a: LnArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let attr = if a.symbolic {
        client.symlink(&a.target, &a.path).await
    } else {
        client.link(&a.target, &a.path).await
    }
    .with_context(|| format!("ln {} {}", a.target, a.path))?;
    if g.json {
        print_json(&output::attr_json(Some(&a.path), &attr));
    }
    Ok(())
}

pub async fn readlink(a: PathArgs, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let target = client
        .read_link(&a.path, g.consistency())
        .await
        .with_context(|| format!("readlink {}", a.path))?;
    if g.json {
        print_json(&json!({"path": a.path, "target": target}));
    } else {
        outln!("{target}");
    }
    Ok(())
}

pub async fn xattr(c: XattrCommand, g: &GlobalArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    match c {
        XattrCommand::Get { path, name } => {
            let value = client
                .get_xattr(&path, &name, g.consistency())
                .await
                .with_context(|| format!("xattr get {path} {name}"))?;
            let text = String::from_utf8_lossy(&value);
            if g.json {
                print_json(&json!({"path": path, "name": name, "value": text}));
            } else {
                outln!("{text}");
            }
        }
        XattrCommand::Set {
            path,
            name,
            value,
            create,
            replace,
        } => {
            let flag = match (create, replace) {
                (true, _) => XattrFlag::Create,
                (_, true) => XattrFlag::Replace,
                _ => XattrFlag::Upsert,
            };
            client
                .set_xattr(&path, &name, value.as_bytes(), flag)
                .await
                .with_context(|| format!("xattr set {path} {name}"))?;
            done(g, "xattr set", &path);
        }
        XattrCommand::List { path } => {
            let names = client
                .list_xattr(&path, g.consistency())
                .await
                .with_context(|| format!("xattr list {path}"))?;
            if g.json {
                print_json(&json!({"path": path, "names": names}));
            } else {
                for n in names {
                    outln!("{n}");
                }
            }
        }
        XattrCommand::Rm { path, name } => {
            client
                .remove_xattr(&path, &name)
                .await
                .with_context(|| format!("xattr rm {path} {name}"))?;
            done(g, "xattr rm", &path);
        }
    }
    Ok(())
}
