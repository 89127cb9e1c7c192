//! Indexed finds: the files below a path with a value of one field in a
//! range, read from each shard's field index (see `nokv_holt::fields`),
//! across every shard grafted below the path.

use nokv_holt::{Attr, BodySummary, IndexRange, InodeRef, Query, QueryResult};

use crate::client::{Client, Consistency};
use crate::error::ClientError;
use crate::routing;

/// What [`Client::find_indexed`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexedFind {
    /// Each (global) path with its attributes and body summary (with the
    /// file's fields), in no particular order; a path appears once per
    /// matching value (callers merge by path).
    pub hits: Vec<(String, Attr, Option<BodySummary>)>,
    /// Whether the index answered for the whole subtree. `false`: some
    /// body below was published without fields, or the read is at a
    /// snapshot with shards grafted below (a pin covers one shard), or
    /// more than `max_hits` matched. The caller must then walk instead.
    pub complete: bool,
}

/// What [`Client::indexed_fields`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexedFields {
    /// Field names in the indexes of the shards under the path (possibly
    /// of files elsewhere in those shards).
    pub names: std::collections::BTreeSet<String>,
    /// `false`: a shard had too many names to list, or the read is at a
    /// snapshot with shards grafted below.
    pub complete: bool,
}

/// One shard to ask: a handle on it, the directory as it names it, and
/// that directory's global path.
struct Target {
    handle: Client,
    dir: String,
    shown: String,
}

impl Client {
    /// The shards an indexed read of `path` asks: the owner (through this
    /// handle, which routes the path) and every shard grafted below it.
    /// `None` at a snapshot with shards grafted below: a pin covers one
    /// shard, so the indexes cannot answer for the subtree.
    async fn index_targets(&self, path: &str) -> Result<Option<Vec<Target>>, ClientError> {
        let mut targets = vec![Target {
            handle: self.clone(),
            dir: path.to_string(),
            shown: path.to_string(),
        }];
        let map = match self.is_routed() {
            true => self.shard_map().await?,
            false => None,
        };
        let Some(map) = map else {
            return Ok(Some(targets));
        };
        let normal = routing::normalized(path).unwrap_or_else(|| path.to_string());
        let below = routing::grafted_below(&map, &normal);
        if !below.is_empty() && self.snapshot().is_some() {
            return Ok(None);
        }
        targets.extend(below.into_iter().map(|shard| Target {
            handle: self.routed_to(shard, map.revision),
            dir: "/".to_string(),
            shown: routing::global_path(&map, shard, "/"),
        }));
        Ok(Some(targets))
    }

    /// The names in the field indexes of the shard owning `path` and of
    /// every shard grafted below it: a superset of the fields of the files
    /// below `path`, at the cost of the number of names.
    pub async fn indexed_fields(
        &self,
        path: &str,
        consistency: Consistency,
    ) -> Result<IndexedFields, ClientError> {
        let mut found = IndexedFields {
            names: Default::default(),
            complete: true,
        };
        let Some(targets) = self.index_targets(path).await? else {
            found.complete = false;
            return Ok(found);
        };
        for t in targets {
            let query = Query::IndexedFields {
                dir: InodeRef::Path(t.dir),
            };
            match t.handle.query(query, consistency).await? {
                QueryResult::FieldNames { names, complete } => {
                    found.names.extend(names);
                    found.complete &= complete;
                }
                _ => return Err(ClientError::Protocol("expected field names".into())),
            }
        }
        Ok(found)
    }

    /// The files below `path` (or `path` itself, a file) with a value of
    /// `field` in `range`, from the field indexes of the shard owning
    /// `path` and of every shard grafted below it. Stops early (incomplete)
    /// once more than `max_hits` hits were read. The cost grows with the
    /// index entries in `range`, not with the size of the subtree.
    pub async fn find_indexed(
        &self,
        path: &str,
        field: &str,
        range: &IndexRange,
        max_hits: usize,
        consistency: Consistency,
    ) -> Result<IndexedFind, ClientError> {
        let mut found = IndexedFind {
            hits: Vec::new(),
            complete: true,
        };
        let Some(targets) = self.index_targets(path).await? else {
            found.complete = false;
            return Ok(found);
        };
        for t in targets {
            let done = pages(
                &t.handle,
                &t.dir,
                &t.shown,
                field,
                range,
                max_hits,
                consistency,
                &mut found,
            )
            .await?;
            if !done {
                found.complete = false;
                return Ok(found);
            }
        }
        Ok(found)
    }
}

/// Every page of one shard's answer for `dir` (as `handle` names it),
/// its hits named below `shown` (the global path of `dir`). `false`
/// when the index cannot answer alone (unindexed bodies, too many hits).
#[allow(clippy::too_many_arguments)]
async fn pages(
    handle: &Client,
    dir: &str,
    shown: &str,
    field: &str,
    range: &IndexRange,
    max_hits: usize,
    consistency: Consistency,
    found: &mut IndexedFind,
) -> Result<bool, ClientError> {
    let mut after = None;
    loop {
        let query = Query::FindIndexed {
            dir: InodeRef::Path(dir.to_string()),
            field: field.to_string(),
            range: range.clone(),
            after: after.take(),
            limit: 0,
        };
        let (hits, next, unindexed) = match handle.query(query, consistency).await? {
            QueryResult::Indexed {
                hits,
                next,
                unindexed,
            } => (hits, next, unindexed),
            _ => return Err(ClientError::Protocol("expected indexed hits".into())),
        };
        if unindexed {
            return Ok(false);
        }
        for hit in hits {
            let path = match (shown.trim_end_matches('/'), hit.path.as_str()) {
                ("", "") => "/".to_string(),
                (base, "") => base.to_string(),
                (base, rel) => format!("{base}/{rel}"),
            };
            found.hits.push((path, hit.attr, hit.body));
        }
        if found.hits.len() > max_hits {
            return Ok(false);
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(true),
        }
    }
}
