//! [`LocalBlobStore`]: object bodies as files in a local directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::keys::{clamp_range, validate_key, validate_prefix, RESERVED_SEGMENT_PREFIX};
use crate::{BlobError, BlobLocation, BlobOp, BlobStore, ObjectMeta};

/// The directory, under the store's root, that holds files being written.
const TMP_DIR: &str = ".nokv-tmp";

/// Distinguishes temporary files written by one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A [`BlobStore`] over a directory: the object `a/b/c` is the file `DIR/a/b/c`.
///
/// # Durability and atomicity
///
/// `put_new` writes the body to a new temporary file under `DIR/.nokv-tmp/` (opened with
/// `create_new`), fsyncs it, creates missing parent directories (fsyncing their parents),
/// then hard-links it to its final name. `link(2)` fails if the name exists, so of any number
/// of concurrent writers (threads or processes) exactly one wins, and a reader never sees a
/// partial body. The final directory is fsynced before `Ok` is returned. `delete` removes the
/// file and fsyncs its directory; empty directories are left in place (removing them would
/// race with concurrent writers).
///
/// # Limits
///
/// - A key cannot also be a directory of another key: with `a/b` stored, `put_new("a")`
///   fails with [`BlobError::InvalidKey`], and the other way round. S3 has no such limit;
///   NoKV's block keys never nest.
/// - A crash between writing and linking leaves a temporary file in `DIR/.nokv-tmp/`; it is
///   never listed and can be removed by hand when no writer is running.
/// - All I/O runs on tokio's blocking pool. A dropped future does not stop its I/O.
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// Opens (creating if needed) a store over `dir`, made absolute against the current
    /// directory.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, BlobError> {
        let dir = dir.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir))
            .await
            .map_err(|e| BlobError::Config(format!("opening local blob store: {e}")))?
    }

    fn open_blocking(dir: &Path) -> Result<Self, BlobError> {
        let root = std::path::absolute(dir).map_err(|e| {
            BlobError::Config(format!("local blob directory {}: {e}", dir.display()))
        })?;
        fs::create_dir_all(root.join(TMP_DIR)).map_err(|e| {
            BlobError::Config(format!(
                "creating local blob directory {}: {e}",
                root.display()
            ))
        })?;
        Ok(LocalBlobStore { root })
    }

    /// The store's root directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T, F>(&self, op: BlobOp, key: &str, f: F) -> Result<T, BlobError>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> Result<T, BlobError> + Send + 'static,
    {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || f(&root))
            .await
            .map_err(|e| BlobError::io(op, key, format!("blocking task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl BlobStore for LocalBlobStore {
    async fn put_new(&self, key: &str, body: Bytes) -> Result<(), BlobError> {
        validate_key(key)?;
        let owned = key.to_owned();
        self.blocking(BlobOp::PutNew, key, move |root| {
            put_new_blocking(root, &owned, &body)
        })
        .await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, BlobError> {
        validate_key(key)?;
        let owned = key.to_owned();
        self.blocking(BlobOp::Get, key, move |root| {
            get_blocking(root, &owned, range)
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, BlobError> {
        validate_key(key)?;
        let owned = key.to_owned();
        self.blocking(BlobOp::Head, key, move |root| {
            match fs::metadata(root.join(&owned)) {
                Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
                Ok(_) => Ok(None),
                Err(e) if is_absent(&e) => Ok(None),
                Err(e) => Err(io_error(
                    BlobOp::Head,
                    &owned,
                    "stat",
                    &root.join(&owned),
                    e,
                )),
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        let owned = key.to_owned();
        self.blocking(BlobOp::Delete, key, move |root| {
            let path = root.join(&owned);
            match fs::remove_file(&path) {
                Ok(()) => sync_dir(BlobOp::Delete, &owned, parent(&path)),
                // Absent, or a directory (never an object): nothing to delete.
                Err(e) if is_absent(&e) || e.kind() == io::ErrorKind::IsADirectory => Ok(()),
                Err(e) => Err(io_error(BlobOp::Delete, &owned, "remove", &path, e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BlobError> {
        validate_prefix(prefix)?;
        let owned = prefix.to_owned();
        self.blocking(BlobOp::List, prefix, move |root| {
            list_blocking(root, &owned)
        })
        .await
    }

    fn location(&self) -> BlobLocation {
        BlobLocation::Local {
            dir: self.root.clone(),
        }
    }
}

fn put_new_blocking(root: &Path, key: &str, body: &[u8]) -> Result<(), BlobError> {
    const OP: BlobOp = BlobOp::PutNew;
    let final_path = root.join(key);
    let tmp = TempFile::create(root, key)?;
    {
        let mut file = &tmp.file;
        file.write_all(body)
            .map_err(|e| io_error(OP, key, "write", &tmp.path, e))?;
        file.sync_all()
            .map_err(|e| io_error(OP, key, "fsync", &tmp.path, e))?;
    }
    create_parent_dirs(root, key)?;
    match fs::hard_link(&tmp.path, &final_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return if final_path.is_dir() {
                Err(BlobError::invalid_key(
                    key,
                    "the local store holds other keys under this key as a directory",
                ))
            } else {
                Err(BlobError::AlreadyExists {
                    key: key.to_owned(),
                })
            };
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(nested_key(key));
        }
        Err(e) => return Err(io_error(OP, key, "link", &final_path, e)),
    }
    drop(tmp);
    sync_dir(OP, key, parent(&final_path))
}

/// A temporary file under `root/.nokv-tmp/`, removed when dropped.
struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn create(root: &Path, key: &str) -> Result<Self, BlobError> {
        let dir = root.join(TMP_DIR);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        loop {
            let name = format!(
                "{}-{}-{nanos}",
                std::process::id(),
                TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(TempFile { path, file }),
                // A name left over from another process with the same pid: try the next one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(BlobOp::PutNew, key, "create", &path, e)),
            }
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "removing blob temp file");
        }
    }
}

/// Creates the directories between `root` and `key`'s file, fsyncing the parent of each one
/// created so the new entries survive a crash.
fn create_parent_dirs(root: &Path, key: &str) -> Result<(), BlobError> {
    let Some((dirs, _file)) = key.rsplit_once('/') else {
        return Ok(());
    };
    let mut dir = root.to_path_buf();
    for segment in dirs.split('/') {
        let parent_dir = dir.clone();
        dir.push(segment);
        match fs::create_dir(&dir) {
            Ok(()) => sync_dir(BlobOp::PutNew, key, &parent_dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !dir.is_dir() {
                    return Err(nested_key(key));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Err(nested_key(key)),
            Err(e) => return Err(io_error(BlobOp::PutNew, key, "mkdir", &dir, e)),
        }
    }
    Ok(())
}

fn nested_key(key: &str) -> BlobError {
    BlobError::invalid_key(
        key,
        "a leading part of this key is itself a key, which the local store cannot hold",
    )
}

fn get_blocking(root: &Path, key: &str, range: Option<Range<u64>>) -> Result<Bytes, BlobError> {
    const OP: BlobOp = BlobOp::Get;
    let path = root.join(key);
    let not_found = || BlobError::NotFound {
        key: key.to_owned(),
    };
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if is_absent(&e) => return Err(not_found()),
        Err(e) => return Err(io_error(OP, key, "open", &path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| io_error(OP, key, "stat", &path, e))?;
    if !meta.is_file() {
        return Err(not_found());
    }
    let size = meta.len();
    let range = clamp_range(range.unwrap_or(0..size), size);
    let len = usize::try_from(range.end - range.start)
        .map_err(|_| BlobError::io(OP, key, "range does not fit in memory"))?;
    let mut buf = vec![0u8; len];
    if len > 0 {
        file.seek(SeekFrom::Start(range.start))
            .map_err(|e| io_error(OP, key, "seek", &path, e))?;
        file.read_exact(&mut buf)
            .map_err(|e| io_error(OP, key, "read", &path, e))?;
    }
    Ok(Bytes::from(buf))
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>, BlobError> {
    const OP: BlobOp = BlobOp::List;
    // Walk the deepest directory the prefix names completely; filter by the rest.
    let base = match prefix.rsplit_once('/') {
        Some((dirs, _)) => format!("{dirs}/"),
        None => String::new(),
    };
    let mut out = Vec::new();
    let mut stack = vec![(root.join(&base), base)];
    while let Some((dir, rel)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // The prefix's directory does not exist (or vanished, or is a file): no objects.
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(io_error(OP, prefix, "read directory", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error(OP, prefix, "read directory", &dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not UTF-8: not a key this crate wrote
            };
            if name.starts_with(RESERVED_SEGMENT_PREFIX) {
                continue;
            }
            let key = format!("{rel}{name}");
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(io_error(OP, prefix, "stat", &entry.path(), e)),
            };
            if file_type.is_dir() {
                let sub = format!("{key}/");
                // Descend only where keys matching the prefix can be.
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    stack.push((entry.path(), sub));
                }
            } else if file_type.is_file() && key.starts_with(prefix) && validate_key(&key).is_ok() {
                let size = match entry.metadata() {
                    Ok(meta) => meta.len(),
                    Err(e) if is_absent(&e) => continue, // deleted meanwhile
                    Err(e) => return Err(io_error(OP, prefix, "stat", &entry.path(), e)),
                };
                out.push(ObjectMeta { key, size });
            }
        }
    }
    out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Whether an error means "there is no such file" (including a file standing where a
/// directory of the path should be).
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(path)
}

fn sync_dir(op: BlobOp, key: &str, dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(op, key, "fsync directory", dir, e))
}

fn io_error(op: BlobOp, key: &str, what: &str, path: &Path, e: io::Error) -> BlobError {
    BlobError::io(op, key, format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nested_keys_are_rejected_not_corrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalBlobStore::open(dir.path()).await.expect("open");
        store
            .put_new("a/b", Bytes::from_static(b"x"))
            .await
            .expect("put a/b");
        let err = store
            .put_new("a", Bytes::from_static(b"y"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "BLOB_INVALID_KEY", "{err}");
        let err = store
            .put_new("a/b/c", Bytes::from_static(b"y"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "BLOB_INVALID_KEY", "{err}");
        assert_eq!(store.head("a").await, Ok(None));
        assert_eq!(store.delete("a").await, Ok(()));
        assert_eq!(store.get("a/b", None).await, Ok(Bytes::from_static(b"x")));
        assert_eq!(
            store.get("a/b/c", None).await.unwrap_err().code(),
            "BLOB_NOT_FOUND"
        );
    }

    #[tokio::test]
    async fn temp_files_are_cleaned_up_and_never_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalBlobStore::open(dir.path()).await.expect("open");
        store
            .put_new("k", Bytes::from_static(b"1"))
            .await
            .expect("put");
        let err = store
            .put_new("k", Bytes::from_static(b"2"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "BLOB_ALREADY_EXISTS");
        let leftovers = fs::read_dir(dir.path().join(TMP_DIR))
            .expect("tmp dir")
            .count();
        assert_eq!(leftovers, 0);
        let keys: Vec<_> = store
            .list("")
            .await
            .expect("list")
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["k"]);
    }

    #[tokio::test]
    async fn location_is_absolute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalBlobStore::open(dir.path()).await.expect("open");
        match store.location() {
            BlobLocation::Local { dir: d } => assert!(d.is_absolute()),
            other => panic!("unexpected location {other}"),
        }
    }
}
