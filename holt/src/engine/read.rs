//! The read-only queries. They never change state and need no log entry.

use std::ops::Bound;

use super::resolve::describe_inode;
use super::{Holt, Name, Namespace};
use crate::body::GcTarget;
use crate::command::InodeRef;
use crate::error::FsError;
use crate::fields::MAX_FIELD_NAME;
use crate::graft::placeholder_attr;
use crate::path::{validate_name, validate_xattr_name};
use crate::query::{Query, QueryResult, MAX_PAGE_BYTES, MAX_READDIR_PAGE};
use crate::types::{DirEntry, FileType, Generation, InodeId};

impl Holt {
    /// Answers a query against the current state.
    /// Snapshot leases are judged by the replicated state only: a pin
    /// stays readable until `ExpireSnapshots` releases it (see
    /// [`Holt::query_at`]).
    pub fn query(&self, q: &Query) -> Result<QueryResult, FsError> {
        self.answer(q, None)
    }

    /// Answers a query as of the server's clock reading `now_ns`: a pin
    /// whose lease has run out is refused even before `ExpireSnapshots`
    /// releases it. (Queries are not replicated, so reading a clock here is
    /// fine.)
    pub fn query_at(&self, q: &Query, now_ns: u64) -> Result<QueryResult, FsError> {
        self.answer(q, Some(now_ns))
    }

    fn answer(&self, q: &Query, now_ns: Option<u64>) -> Result<QueryResult, FsError> {
        match q {
            Query::ListUploads => Ok(QueryResult::Uploads(self.staged_uploads())),
            Query::ListSnapshots => Ok(QueryResult::Snapshots(self.snapshots())),
            Query::Grafts => Ok(QueryResult::Grafts(self.grafts())),
            Query::RetiredBody { generation, .. } => self.retired_body(*generation),
            Query::AtSnapshot { snapshot, query } => self.query_snapshot(*snapshot, query, now_ns),
            q => self.ns.query(q),
        }
    }
}

impl Holt {
    /// The block keys of retired body `generation` while GC has not
    /// collected them (`ENOENT` otherwise: never existed, or collected).
    fn retired_body(&self, generation: Generation) -> Result<QueryResult, FsError> {
        self.gc
            .values()
            .find_map(|task| match (&task.body_of, &task.target) {
                (Some((_, g)), GcTarget::Keys(keys)) if *g == generation => Some(keys.clone()),
                _ => None,
            })
            .map(QueryResult::Retired)
            .ok_or_else(|| {
                FsError::NotFound(format!(
                    "generation {} is not waiting for collection",
                    generation.0
                ))
            })
    }
}

impl Namespace {
    /// Answers a namespace query against this namespace (the current one,
    /// or a pinned one).
    pub(crate) fn query(&self, q: &Query) -> Result<QueryResult, FsError> {
        match q {
            Query::Lookup { parent, name } => self.lookup(*parent, name),
            Query::GetAttr { inode } => {
                let id = self.inode(inode)?;
                Ok(QueryResult::Attr(self.record(id)?.attr.clone()))
            }
            Query::ReadDir { dir, after, limit } => {
                let (entries, next) = self.dir_page(dir, after.as_deref(), *limit)?;
                Ok(QueryResult::Dir { entries, next })
            }
            Query::ReadDirBodies { dir, after, limit } => {
                let (entries, mut next) = self.dir_page(dir, after.as_deref(), *limit)?;
                let listed = entries.len();
                let mut bytes = 0usize;
                let mut page = Vec::with_capacity(listed);
                for entry in entries {
                    if bytes >= MAX_PAGE_BYTES {
                        break;
                    }
                    let id = entry.attr.inode;
                    let body = self
                        .inodes
                        .get(&id)
                        .and_then(|record| record.body())
                        .map(|body| self.summary(id, body));
                    bytes += 128 + entry.name.len() + body.as_ref().map_or(0, |b| b.approx_bytes());
                    page.push((entry, body));
                }
                // Cut short by weight: resume after the last entry sent.
                if page.len() < listed {
                    next = page.last().map(|(entry, _)| entry.name.clone());
                }
                Ok(QueryResult::DirBodies {
                    entries: page,
                    next,
                })
            }
            Query::ReadLink { inode } => self.read_link(inode),
            Query::GetXattr { inode, name } => {
                validate_xattr_name(name)?;
                let id = self.inode(inode)?;
                self.record(id)?
                    .extras
                    .xattr(name)
                    .map(|value| QueryResult::Xattr(value.clone()))
                    .ok_or_else(|| {
                        FsError::NoData(format!("xattr {name:?} on {}", describe_inode(inode)))
                    })
            }
            Query::ListXattr { inode } => {
                let id = self.inode(inode)?;
                let names = self.record(id)?.extras.xattr_names().cloned().collect();
                Ok(QueryResult::XattrNames(names))
            }
            Query::ReadBody { inode } => self.read_body(inode),
            Query::FindIndexed {
                dir,
                field,
                range,
                after,
                limit,
            } => {
                if field.is_empty() || field.len() > MAX_FIELD_NAME {
                    return Err(FsError::InvalidArgument(format!(
                        "an indexed field name has 1..={MAX_FIELD_NAME} bytes"
                    )));
                }
                let id = self.inode(dir)?;
                self.record(id)?;
                self.find_indexed(id, field, range, after.as_ref(), *limit)
            }
            Query::IndexedFields { dir } => {
                let id = self.inode(dir)?;
                self.record(id)?;
                Ok(self.indexed_fields())
            }
            Query::ListUploads
            | Query::ListSnapshots
            | Query::AtSnapshot { .. }
            | Query::Grafts
            | Query::RetiredBody { .. } => {
                Err(FsError::InvalidArgument("not a namespace query".into()))
            }
        }
    }

    /// A regular file's attributes and body (`None` before the first publish).
    fn read_body(&self, inode: &InodeRef) -> Result<QueryResult, FsError> {
        let id = self.inode(inode)?;
        let record = self.record(id)?;
        match record.attr.file_type {
            FileType::File => Ok(QueryResult::Body {
                attr: record.attr.clone(),
                body: record.body().map(|body| body.to_body()),
            }),
            FileType::Directory => Err(FsError::IsADirectory(describe_inode(inode))),
            FileType::Symlink => Err(FsError::InvalidArgument(format!(
                "{} is a symlink, which has no body",
                describe_inode(inode)
            ))),
        }
    }

    fn lookup(&self, parent: InodeId, name: &str) -> Result<QueryResult, FsError> {
        validate_name(name)?;
        self.directory(parent)?;
        let child = self
            .child(parent, name)
            .ok_or_else(|| FsError::NotFound(format!("{name:?} in {parent}")))?;
        Ok(QueryResult::Attr(self.record(child)?.attr.clone()))
    }

    /// One page of a directory, in byte order of names, strictly after
    /// `after`. A range scan over the dentry map: cost is the page, not the
    /// directory.
    /// A page of `dir`'s entries strictly after `after`, and the name to
    /// continue after (`None` at the end).
    fn dir_page(
        &self,
        dir: &InodeRef,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<DirEntry>, Option<String>), FsError> {
        let id = self.inode(dir)?;
        if self.record(id)?.attr.file_type != FileType::Directory {
            return Err(FsError::NotADirectory(describe_inode(dir)));
        }
        let page = if limit == 0 || limit > MAX_READDIR_PAGE {
            MAX_READDIR_PAGE
        } else {
            limit
        } as usize;
        let start = match after {
            Some(name) => Bound::Excluded((id, Name::from(name))),
            None => Bound::Included((id, Name::empty())),
        };
        let mut entries = Vec::new();
        let mut more = false;
        for ((parent, name), child) in self.dentries.range_from(start) {
            if *parent != id {
                break;
            }
            if entries.len() == page {
                more = true;
                break;
            }
            // A graft point lists as a directory with the child shard's
            // root id; its real attributes are the child shard's.
            let attr = if self.is_foreign(*child) {
                placeholder_attr(child.shard())
            } else {
                self.record(*child)?.attr.clone()
            };
            entries.push(DirEntry {
                name: name.to_string(),
                attr,
            });
        }
        let next = if more {
            entries.last().map(|entry| entry.name.clone())
        } else {
            None
        };
        Ok((entries, next))
    }

    fn read_link(&self, inode: &InodeRef) -> Result<QueryResult, FsError> {
        let id = self.inode(inode)?;
        let record = self.record(id)?;
        match (&record.attr.file_type, record.extras.symlink_target()) {
            (FileType::Symlink, Some(target)) => Ok(QueryResult::Target(target.to_string())),
            _ => Err(FsError::InvalidArgument(format!(
                "{} is not a symlink",
                describe_inode(inode)
            ))),
        }
    }
}
