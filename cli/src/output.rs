//! Text and JSON rendering of namespace objects.

use std::io::Write;

use nokv_client::{Attr, Body, DirEntry, FileType};
use serde_json::{json, Value};

/// Writes one line of command output. When stdout is a pipe whose reader
/// has gone (`nokv watch … | head`), the process ends at once, quietly and
/// successfully, as `cat` would; any other write error ends it with a
/// message and a failure status.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("nokv: cannot write to standard output: {e}");
            std::process::exit(1)
        }
    }
}

/// Whether `e` (or what caused it) is a write to a pipe nobody reads.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let io = cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind);
        let sdk = match cause.downcast_ref::<nokv_client::ClientError>() {
            Some(nokv_client::ClientError::Output { kind, .. }) => Some(*kind),
            _ => None,
        };
        io.or(sdk) == Some(std::io::ErrorKind::BrokenPipe)
    })
}

pub fn kind(t: FileType) -> &'static str {
    match t {
        FileType::File => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
    }
}

fn type_char(t: FileType) -> char {
    match t {
        FileType::File => '-',
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
    }
}

/// `rwxr-xr-x` for permission bits.
pub fn mode_string(t: FileType, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(type_char(t));
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// RFC 3339 time of a nanosecond timestamp.
pub fn time(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn attr_json(path: Option<&str>, a: &Attr) -> Value {
    let mut v = json!({
        "inode": a.inode.0,
        "inode_display": a.inode.to_string(),
        "type": kind(a.file_type),
        "mode": format!("{:04o}", a.mode),
        "uid": a.uid,
        "gid": a.gid,
        "nlink": a.nlink,
        "size": a.size,
        "generation": a.generation.0,
        "mtime_ns": a.mtime_ns,
        "ctime_ns": a.ctime_ns,
        "version": a.version.0,
    });
    if let (Some(p), Some(obj)) = (path, v.as_object_mut()) {
        obj.insert("path".into(), json!(p));
    }
    v
}

pub fn attr_text(path: &str, a: &Attr) -> String {
    format!(
        "  path: {path}\n  type: {}\n inode: {}\n  mode: {:04o} ({})\n links: {}\n   uid: {}\n   gid: {}\n  size: {}\n   gen: {}\n mtime: {}\n ctime: {}\nversion: {}",
        kind(a.file_type),
        a.inode,
        a.mode,
        mode_string(a.file_type, a.mode),
        a.nlink,
        a.uid,
        a.gid,
        a.size,
        a.generation.0,
        time(a.mtime_ns),
        time(a.ctime_ns),
        a.version.0,
    )
}

pub fn body_json(b: &Body) -> Value {
    json!({
        "generation": b.generation.0,
        "size": b.size,
        "sha256": b.sha256,
        "blocks": b.blocks.len(),
        "content_type": b.content_type,
        "producer": b.producer,
        "attrs": b.attrs,
        "published_ns": b.published_ns,
    })
}

pub fn body_text(b: &Body) -> String {
    let mut s = format!(
        " digest: sha256:{}\n blocks: {}\n  ctype: {}\nproducer: {}\npublished: {}",
        b.sha256,
        b.blocks.len(),
        b.content_type,
        b.producer,
        time(b.published_ns)
    );
    for (k, v) in &b.attrs {
        s.push_str(&format!("\n   attr: {k}={v}"));
    }
    s
}

pub fn entry_json(e: &DirEntry) -> Value {
    let mut v = attr_json(None, &e.attr);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("name".into(), json!(e.name));
    }
    v
}

/// One `ls -l` style line.
pub fn entry_long(e: &DirEntry) -> String {
    format!(
        "{} {:>3} {:>5} {:>5} {:>10} {} {}",
        mode_string(e.attr.file_type, e.attr.mode),
        e.attr.nlink,
        e.attr.uid,
        e.attr.gid,
        e.attr.size,
        time(e.attr.mtime_ns),
        e.name
    )
}

pub fn print_json(v: &Value) {
    outln!("{v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(FileType::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(FileType::File, 0o640), "-rw-r-----");
        assert_eq!(mode_string(FileType::Symlink, 0o777), "lrwxrwxrwx");
    }
}
