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

impl Client {
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
        let ask = |handle: Client, dir: String| async move {
            let query = Query::IndexedFields {
                dir: InodeRef::Path(dir),
            };
            match handle.query(query, consistency).await? {
                QueryResult::FieldNames { names, complete } => Ok((names, complete)),
                _ => Err(ClientError::Protocol("expected field names".into())),
            }
        };
        let (names, complete) = ask(self.clone(), path.to_string()).await?;
        found.names.extend(names);
        found.complete &= complete;
        let Some(map) = self.is_routed().then_some(()).and(self.shard_map().await?) else {
            return Ok(found);
        };
        let normal = routing::normalized(path).unwrap_or_else(|| path.to_string());
        let below = routing::grafted_below(&map, &normal);
        if !below.is_empty() && self.snapshot().is_some() {
            found.complete = false;
            return Ok(found);
        }
        for shard in below {
            let (names, complete) = ask(self.routed_to(shard, map.revision), "/".into()).await?;
            found.names.extend(names);
            found.complete &= complete;
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
        // The owner first: a routed handle sends the path to it.
        let owner_done = pages(
            self,
            path,
            path,
            field,
            range,
            max_hits,
            consistency,
            &mut found,
        )
        .await?;
        if !owner_done {
            found.complete = false;
            return Ok(found);
        }
        if !self.is_routed() {
            return Ok(found);
        }
        let Some(map) = self.shard_map().await? else {
            return Ok(found);
        };
        let normal = routing::normalized(path).unwrap_or_else(|| path.to_string());
        let below = routing::grafted_below(&map, &normal);
        if below.is_empty() {
            return Ok(found);
        }
        if self.snapshot().is_some() {
            found.complete = false;
            return Ok(found);
        }
        for shard in below {
            let handle = self.routed_to(shard, map.revision);
            let root = routing::global_path(&map, shard, "/");
            let done = pages(
                &handle,
                "/",
                &root,
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
