//! The verbs themselves: each call reads the cluster through the SDK (at
//! the latest state, linearizably, or at a snapshot), reads bodies from
//! the object store with bounded bytes, and answers JSON in which every
//! item carries an evidence URI.
//!
//! `find`, `aggregate`, `catalog` and recursive `grep` walk the subtree
//! under their path (across grafts: the SDK routes each directory to its
//! shard), bounded by [`GatewayConfig::max_scan_entries`]: a subtree
//! larger than that is refused with `scan_limit`, never scanned without
//! bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use nokv_client::{
    Attr, Body, BodySummary, Client, ClientError, Consistency, DirEntry, FileType, Generation,
    PublishMode, PutOptions, SnapshotId,
};
use serde_json::{json, Map, Value as Json};
use tokio::sync::Semaphore;

use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::query::{self, Compiled};
use crate::structured::{self, Format, Parsed};
use crate::uri::{Anchor, EvidenceUri};
use crate::value::{Row, Value};
use crate::verbs::{self, ReadFormat, ToolDef};

/// Limits of one gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Most entries `find`, `aggregate`, `catalog` and `grep` walk per call.
    pub max_scan_entries: usize,
    /// Most body bytes one call reads from the object store (grep, field
    /// extraction).
    pub max_bytes_per_call: u64,
    /// Largest body parsed for a schema, structured read or citation.
    pub max_parse_bytes: u64,
    /// Most files one grep call opens.
    pub max_grep_files: usize,
    /// Whether the write tools are offered.
    pub allow_writes: bool,
    /// Longest a call may take, waiting for its turn included
    /// (`deadline_exceeded` after; a write's outcome is then unknown).
    pub call_timeout: Duration,
    /// Calls served at once; more wait for a turn.
    pub max_concurrent_calls: usize,
    /// Whether find and aggregate may read the shards' field indexes
    /// (`false`: always walk, for comparison).
    pub use_indexes: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_scan_entries: 100_000,
            max_bytes_per_call: 256 * 1024 * 1024,
            max_parse_bytes: 8 * 1024 * 1024,
            max_grep_files: 1000,
            allow_writes: false,
            call_timeout: Duration::from_secs(60),
            max_concurrent_calls: 32,
            use_indexes: true,
        }
    }
}

/// Exactly the bytes an evidence URI cites.
#[derive(Clone, Debug)]
pub struct Evidence {
    /// The URI as resolved (normalised).
    pub uri: String,
    pub path: String,
    pub generation: u64,
    /// `text/plain`, `application/json` or `application/octet-stream`.
    pub mime: String,
    pub bytes: Bytes,
}

/// The stateless front door: one SDK client and limits.
#[derive(Clone)]
pub struct Gateway {
    client: Client,
    config: GatewayConfig,
    metrics: Metrics,
    /// One permit per call in progress.
    turns: Arc<Semaphore>,
}

/// Directory listings a walk keeps in flight.
const LIST_CONCURRENCY: usize = 32;

/// Names of the built-in fields every row may have.
pub use nokv_fields::BUILTIN_FIELDS;

/// Which rows need the content fields of their bodies (which cost a read
/// from the object store each).
#[derive(Clone, Copy)]
enum Need<'a> {
    /// Every row (catalog lists every field).
    All,
    /// Rows that may still match `preds` (a predicate on a field the row
    /// has from its listing already decides, since those fields win over
    /// content fields) and lack a field the query names.
    Query {
        preds: &'a [Compiled],
        named: &'a [&'a str],
    },
}

impl Need<'_> {
    fn content(&self, row: &Row) -> bool {
        match self {
            Need::All => true,
            Need::Query { preds, named } => {
                let excluded = preds
                    .iter()
                    .any(|p| !row.get(p.field()).is_empty() && !p.matches(row));
                !excluded
                    && preds
                        .iter()
                        .map(Compiled::field)
                        .chain(named.iter().copied())
                        .any(|f| row.get(f).is_empty())
            }
        }
    }
}

/// What a query selected, and how.
struct Selection {
    /// Entries examined: walked, or read from the index.
    scanned: usize,
    /// The matching rows.
    rows: Vec<Row>,
    /// `scan`, or `index:<field>` when the field indexes answered.
    plan: String,
}

/// Rows, and whether some body's content fields were left unread.
struct Rows {
    rows: Vec<Row>,
    content_unread: bool,
}

/// One entry found by a walk.
struct Entry {
    path: String,
    attr: Attr,
    /// A file's body summary (publish metadata without the block plan).
    body: Option<BodySummary>,
}

impl Gateway {
    pub fn new(client: Client, config: GatewayConfig) -> Gateway {
        let turns = Arc::new(Semaphore::new(config.max_concurrent_calls.max(1)));
        Gateway {
            client,
            config,
            metrics: Metrics::new().expect("the gateway's fixed metric definitions register"),
            turns,
        }
    }

    /// Calls by verb and result, and their latency (`/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The tools this gateway offers (write tools only with `allow_writes`).
    pub fn tools(&self) -> Vec<ToolDef> {
        verbs::tools()
            .iter()
            .filter(|t| self.config.allow_writes || !t.writes)
            .cloned()
            .collect()
    }

    /// Runs one verb (or write tool) on its JSON arguments.
    pub async fn call(&self, verb: &str, args: Json) -> Result<Json, GatewayError> {
        let started = std::time::Instant::now();
        let timeout = self.config.call_timeout;
        let bounded = async {
            // The semaphore is never closed, so a permit always comes.
            let _turn = self.turns.acquire().await;
            self.dispatch(verb, args).await
        };
        let result = match tokio::time::timeout(timeout, bounded).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(verb, timeout)),
        };
        let known = verbs::tools().iter().any(|t| t.name == verb);
        let code = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        self.metrics.record(verb, known, code, started.elapsed());
        result
    }

    /// The error of a call cut off at its deadline.
    fn timed_out(&self, verb: &str, timeout: Duration) -> GatewayError {
        let writes = verbs::tools().iter().any(|t| t.name == verb && t.writes);
        if writes {
            GatewayError::OutcomeUnknown(format!(
                "{verb} did not finish within {timeout:?}; it may or may not have applied"
            ))
        } else {
            GatewayError::DeadlineExceeded(format!(
                "{verb} did not finish within {timeout:?}; narrow the path or add predicates"
            ))
        }
    }

    async fn dispatch(&self, verb: &str, args: Json) -> Result<Json, GatewayError> {
        if let Some(tool) = verbs::tools().iter().find(|t| t.name == verb) {
            if tool.writes && !self.config.allow_writes {
                return Err(GatewayError::WritesDisabled(format!(
                    "{verb} changes the namespace; this gateway runs read-only (start it with --allow-writes)"
                )));
            }
        }
        match verb {
            "ls" => self.ls(verbs::parse_args(verb, args)?).await,
            "stat" => self.stat(verbs::parse_args(verb, args)?).await,
            "catalog" => self.catalog(verbs::parse_args(verb, args)?).await,
            "find" => {
                let fp = query::fingerprint(&tagged(verb, &args));
                self.find(verbs::parse_args(verb, args)?, &fp).await
            }
            "aggregate" => self.aggregate(verbs::parse_args(verb, args)?).await,
            "read" => {
                let fp = query::fingerprint(&tagged(verb, &without(&args, &["offset"])));
                self.read(verbs::parse_args(verb, args)?, &fp).await
            }
            "grep" => {
                let fp = query::fingerprint(&tagged(verb, &args));
                self.grep(verbs::parse_args(verb, args)?, &fp).await
            }
            "publish_text" => self.publish_text(verbs::parse_args(verb, args)?).await,
            "mkdir" => {
                let a: verbs::MkdirArgs = verbs::parse_args(verb, args)?;
                let path = normalize(&a.path)?;
                let attr = self.client.mkdir(&path, a.parents).await?;
                Ok(json!({"path": path, "created": true, "generation": attr.generation.0}))
            }
            "snapshot_create" => {
                let a: verbs::SnapshotCreateArgs = verbs::parse_args(verb, args)?;
                let path = normalize(&a.path)?;
                let lease = Duration::from_secs(a.lease_seconds.unwrap_or(3600));
                let info = self.client.create_snapshot(&path, lease).await?;
                Ok(json!({"snapshot": info.id.0, "path": info.path, "lease_expires_ns": info.lease_expires_ns}))
            }
            "snapshot_remove" => {
                let a: verbs::SnapshotRemoveArgs = verbs::parse_args(verb, args)?;
                self.client.remove_snapshot(SnapshotId(a.snapshot)).await?;
                Ok(json!({"snapshot": a.snapshot, "removed": true}))
            }
            other => Err(GatewayError::UnknownVerb(format!(
                "unknown verb {other:?}; the verbs are ls, stat, catalog, find, aggregate, read, grep"
            ))),
        }
    }

    // ----- views -----

    /// The client to read through: the latest state, or a snapshot.
    fn view(&self, snapshot: Option<u64>) -> Client {
        match snapshot {
            Some(id) => self.client.at_snapshot(SnapshotId(id)),
            None => self.client.clone(),
        }
    }

    // ----- ls -----

    async fn ls(&self, a: verbs::LsArgs) -> Result<Json, GatewayError> {
        let path = normalize(&a.path)?;
        let limit = verbs::limit("ls", a.limit, verbs::LS_MAX, verbs::LS_MAX)?;
        let fp = query::fingerprint(&json!({"verb": "ls", "path": path, "snapshot": a.snapshot}));
        let after = match &a.cursor {
            Some(c) => Some(decode_name_cursor(c, &fp)?),
            None => None,
        };
        let view = self.view(a.snapshot);
        let (entries, next) = view
            .read_dir_page(&path, after, limit as u32, Consistency::Linearizable)
            .await?;
        let items: Vec<Json> = entries
            .iter()
            .map(|e| {
                let child = join(&path, &e.name);
                json!({
                    "path": child,
                    "name": e.name,
                    "kind": kind(e.attr.file_type),
                    "size_bytes": e.attr.size,
                    "generation": e.attr.generation.0,
                    "mtime": mtime_s(&e.attr),
                    "uri": uri(&child, &e.attr, a.snapshot),
                })
            })
            .collect();
        let next_cursor = match (&next, entries.last()) {
            (Some(_), Some(last)) => Some(encode_name_cursor(&fp, &last.name)),
            _ => None,
        };
        Ok(json!({
            "path": path,
            "read_at": read_at(a.snapshot),
            "entries": items,
            "next_cursor": next_cursor,
            "truncated": next_cursor.is_some(),
        }))
    }

    // ----- stat -----

    async fn stat(&self, a: verbs::StatArgs) -> Result<Json, GatewayError> {
        let path = normalize(&a.path)?;
        let view = self.view(a.snapshot);
        let attr = view.stat(&path, Consistency::Linearizable).await?;
        let evidence = EvidenceUri::new(&path, attr.generation.0, a.snapshot);
        let mut card = Map::new();
        card.insert("path".into(), json!(path));
        card.insert("name".into(), json!(name_of(&path)));
        card.insert("kind".into(), json!(kind(attr.file_type)));
        card.insert("size_bytes".into(), json!(attr.size));
        card.insert("generation".into(), json!(attr.generation.0));
        card.insert("mtime".into(), json!(mtime_s(&attr)));
        card.insert("uri".into(), json!(evidence.to_string()));
        match attr.file_type {
            FileType::Directory => {
                let (count, exact) = self.count_children(&view, &path).await?;
                card.insert("entry_count".into(), json!(count));
                if !exact {
                    card.insert("entry_count_is_lower_bound".into(), json!(true));
                }
            }
            FileType::Symlink => {
                let target = view.read_link(&path, Consistency::Linearizable).await?;
                card.insert("target".into(), json!(target));
            }
            FileType::File => {
                let (_, body) = view.read_body(&path, Consistency::Linearizable).await?;
                if let Some(body) = body {
                    self.describe_body(&view, &path, &body, &evidence, &mut card)
                        .await?;
                }
            }
        }
        Ok(json!({"read_at": read_at(a.snapshot), "card": card}))
    }

    /// Body, attributes, schema, record count, samples and content fields
    /// of a file's card.
    async fn describe_body(
        &self,
        view: &Client,
        path: &str,
        body: &Body,
        evidence: &EvidenceUri,
        card: &mut Map<String, Json>,
    ) -> Result<(), GatewayError> {
        card.insert(
            "body".into(),
            json!({
                "content_type": body.content_type,
                "producer": body.producer,
                "sha256": body.sha256,
                "blocks": body.blocks.len(),
                "published": body.published_ns / 1_000_000_000,
            }),
        );
        let attrs: Map<String, Json> = body
            .attrs
            .iter()
            .map(|(k, v)| (k.clone(), Value::infer(v).to_json()))
            .collect();
        card.insert("attrs".into(), Json::Object(attrs));
        let Some(format) = structured::detect(name_of(path), &body.content_type) else {
            return Ok(());
        };
        if body.size > self.config.max_parse_bytes {
            card.insert(
                "schema_note".into(),
                json!(format!(
                    "not parsed: {} bytes is above the {}-byte parse limit; use grep or read with format=bytes",
                    body.size, self.config.max_parse_bytes
                )),
            );
            return Ok(());
        }
        let bytes = view.read_range(body, None).await?;
        match structured::parse(format, &bytes) {
            Ok(parsed) => {
                card.insert("record_type".into(), json!(parsed.record_type));
                card.insert("record_count".into(), json!(parsed.records.len()));
                let fields: Vec<&String> = parsed.fields.iter().take(64).collect();
                card.insert(
                    "schema".into(),
                    json!({"fields": fields, "field_count": parsed.fields.len()}),
                );
                let sample: Vec<Json> = parsed
                    .records
                    .iter()
                    .take(3)
                    .enumerate()
                    .map(|(i, r)| json!({"index": i, "value": r, "uri": item_uri(evidence, &parsed, i).to_string()}))
                    .collect();
                card.insert("sample".into(), Json::Array(sample));
                let content = structured::content_fields(&parsed);
                if !content.is_empty() {
                    card.insert("fields".into(), Json::Object(values_json(&content)));
                }
            }
            Err(e) => {
                card.insert("schema_note".into(), json!(format!("not parsed: {e}")));
            }
        }
        Ok(())
    }

    /// How many children a directory has, counting at most
    /// `max_scan_entries` (`false`: there are more).
    async fn count_children(&self, view: &Client, path: &str) -> Result<(u64, bool), GatewayError> {
        let mut count = 0u64;
        let mut after = None;
        loop {
            let (entries, next) = view
                .read_dir_page(path, after, 0, Consistency::Linearizable)
                .await?;
            count += entries.len() as u64;
            match next {
                Some(n) if count < self.config.max_scan_entries as u64 => after = Some(n),
                Some(_) => return Ok((count, false)),
                None => return Ok((count, true)),
            }
        }
    }

    // ----- the walk behind find, aggregate, catalog and grep -----

    /// Every entry under `root` (not `root` itself; a file root is its own
    /// only entry), at most `max_scan_entries`, sorted by path.
    async fn walk(
        &self,
        view: &Client,
        root: &str,
        recursive: bool,
    ) -> Result<Vec<Entry>, GatewayError> {
        let root_attr = view.stat(root, Consistency::Linearizable).await?;
        if root_attr.file_type != FileType::Directory {
            let body = match root_attr.file_type {
                FileType::File => view.read_body(root, Consistency::Linearizable).await?.1,
                _ => None,
            };
            return Ok(vec![Entry {
                path: root.to_string(),
                attr: root_attr,
                body: body.as_ref().map(BodySummary::from),
            }]);
        }
        let limit = self.config.max_scan_entries;
        let mut found = Vec::new();
        let mut level = vec![root.to_string()];
        while !level.is_empty() {
            // LIST_CONCURRENCY directories at a time, each a page of up to 1,000
            // entries with their body summaries per request.
            let listed: Vec<(String, Vec<Listed>)> = futures::stream::iter(level)
                .map(|dir| async move {
                    let entries = list_with_bodies(view, &dir, limit).await?;
                    Ok::<_, GatewayError>((dir, entries))
                })
                .buffered(LIST_CONCURRENCY)
                .try_collect()
                .await?;
            let mut next = Vec::new();
            for (dir, entries) in listed {
                for (e, body) in entries {
                    let path = join(&dir, &e.name);
                    if recursive && e.attr.file_type == FileType::Directory {
                        next.push(path.clone());
                    }
                    found.push(Entry {
                        path,
                        attr: e.attr,
                        body,
                    });
                    if found.len() > limit {
                        return Err(scan_limit(root, limit));
                    }
                }
            }
            level = next;
        }
        found.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        Ok(found)
    }

    /// The rows (all fields) of walked entries: built-ins and publish
    /// attributes from the listing, and fields of small structured bodies
    /// (read from the object store, only for those).
    async fn rows(
        &self,
        view: &Client,
        entries: Vec<Entry>,
        need: Need<'_>,
    ) -> Result<Rows, GatewayError> {
        let budget = std::sync::atomic::AtomicU64::new(self.config.max_bytes_per_call);
        let budget = &budget;
        let unread = std::sync::atomic::AtomicBool::new(false);
        let unread = &unread;
        let rows = futures::stream::iter(entries)
            .map(|e| async move {
                let mut row = builtin_row(&e.path, &e.attr);
                let Some(summary) = &e.body else {
                    return Ok(row);
                };
                add_body_fields(&mut row, &e.path, summary);
                if let Some(stored) = &summary.fields {
                    // Extracted at publish: no need to read the body.
                    add_content_fields(&mut row, nokv_fields::from_field_set(stored));
                    return Ok(row);
                }
                if !self.has_content_fields(&e.path, summary) {
                    return Ok(row);
                }
                if !need.content(&row) {
                    unread.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(row);
                }
                let (_, body) = view.read_body(&e.path, Consistency::Linearizable).await?;
                let Some(body) = body else { return Ok(row) };
                if let Some(content) = self.content_fields(view, &e.path, &body, budget).await? {
                    add_content_fields(&mut row, content);
                }
                Ok::<Row, GatewayError>(row)
            })
            .buffered(32)
            .try_collect()
            .await?;
        Ok(Rows {
            rows,
            content_unread: unread.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Whether a body is small and structured enough to contribute
    /// content fields (the SDK's rule at publish time too).
    fn has_content_fields(&self, path: &str, body: &BodySummary) -> bool {
        nokv_fields::wants_content(name_of(path), &body.content_type, body.size)
    }

    /// The fields of a body that `has_content_fields` admitted, its
    /// attributes' and its content's (attributes alone when the content
    /// does not parse; `None` when it has no structured format), counted
    /// against the call's byte budget.
    async fn content_fields(
        &self,
        view: &Client,
        path: &str,
        body: &Body,
        budget: &std::sync::atomic::AtomicU64,
    ) -> Result<Option<BTreeMap<String, Vec<Value>>>, GatewayError> {
        use std::sync::atomic::Ordering;
        // The caller checked `has_content_fields` on the listing's summary.
        if structured::detect(name_of(path), &body.content_type).is_none() {
            return Ok(None);
        }
        let left = budget.fetch_sub(
            body.size.min(budget.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        if left < body.size {
            return Err(GatewayError::ScanLimit(format!(
                "the structured bodies under this path hold more than {} bytes to read in one call; narrow the path",
                self.config.max_bytes_per_call
            )));
        }
        let bytes = view.read_range(body, None).await?;
        Ok(Some(nokv_fields::extract(
            name_of(path),
            &body.content_type,
            &body.attrs,
            Some(&bytes),
        )))
    }

    /// The rows under `path` matching `preds`, after checking that every
    /// field the query names (`preds` and `named`) exists there; and how
    /// many entries were scanned to find them. The one place a query's
    /// candidates come from.
    async fn select(
        &self,
        path: &str,
        snapshot: Option<u64>,
        preds: &[Compiled],
        named: &[&str],
    ) -> Result<Selection, GatewayError> {
        let view = self.view(snapshot);
        let plan = match self.config.use_indexes {
            true => crate::plan::index_plan(preds),
            false => None,
        };
        if let Some(plan) = plan {
            if let Some(selection) = self
                .select_indexed(&view, path, &plan, preds, named)
                .await?
            {
                return Ok(selection);
            }
        }
        let entries = self.walk(&view, path, true).await?;
        let scanned = entries.len();
        let need = Need::Query { preds, named };
        let Rows {
            rows,
            content_unread,
        } = self.rows(&view, entries, need).await?;
        let fields = preds
            .iter()
            .map(Compiled::field)
            .chain(named.iter().copied());
        // A field found nowhere may still be in bodies that were not read
        // (rows a predicate on their own fields already excluded).
        if !content_unread {
            check_known(path, fields, &rows)?;
        }
        let matches = rows
            .into_iter()
            .filter(|r| query::matches(r, preds))
            .collect();
        Ok(Selection {
            scanned,
            rows: matches,
            plan: "scan".into(),
        })
    }

    /// [`Gateway::select`] from the field indexes of the shards under
    /// `path`: only the files with a value in the plan's ranges are read,
    /// then every predicate is checked on them. `None` when the indexes
    /// cannot answer alone (a body published without fields below `path`,
    /// a snapshot over grafted shards, more candidates than a walk may
    /// visit): the caller walks instead, so the answer is the same.
    async fn select_indexed(
        &self,
        view: &Client,
        path: &str,
        plan: &crate::plan::IndexPlan,
        preds: &[Compiled],
        named: &[&str],
    ) -> Result<Option<Selection>, GatewayError> {
        let limit = self.config.max_scan_entries;
        let mut candidates: BTreeMap<String, (Attr, Option<BodySummary>)> = BTreeMap::new();
        for range in &plan.ranges {
            let found = view
                .find_indexed(path, &plan.field, range, limit, Consistency::Linearizable)
                .await?;
            if !found.complete {
                return Ok(None);
            }
            for (hit_path, attr, body) in found.hits {
                candidates.entry(hit_path).or_insert((attr, body));
            }
            if candidates.len() > limit {
                return Ok(None);
            }
        }
        let scanned = candidates.len();
        let rows: Vec<Row> = candidates
            .into_iter()
            .map(|(p, (attr, body))| stored_row(&p, &attr, body.as_ref()))
            .collect();
        // A field the query names that no candidate has may still exist
        // elsewhere below `path`: ask the index (one probe per such field)
        // before calling it unknown, as a walk would.
        let mut missing: Vec<&str> = preds
            .iter()
            .map(Compiled::field)
            .chain(named.iter().copied())
            .filter(|f| !BUILTIN_FIELDS.contains(f))
            .filter(|f| !rows.iter().any(|r| r.fields.contains_key(*f)))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let mut unknown = Vec::new();
        for field in missing {
            let any = nokv_client::IndexRange::Between { lo: None, hi: None };
            let found = view
                .find_indexed(path, field, &any, 0, Consistency::Linearizable)
                .await?;
            if !found.complete && found.hits.is_empty() {
                return Ok(None);
            }
            if found.hits.is_empty() {
                unknown.push(field);
            }
        }
        if !unknown.is_empty() {
            check_known(path, unknown.into_iter(), &[])?;
        }
        let matches = rows
            .into_iter()
            .filter(|r| query::matches(r, preds))
            .collect();
        Ok(Some(Selection {
            scanned,
            rows: matches,
            plan: format!("index:{}", plan.field),
        }))
    }

    // ----- catalog -----

    async fn catalog(&self, a: verbs::CatalogArgs) -> Result<Json, GatewayError> {
        let path = normalize(&a.path)?;
        let view = self.view(a.snapshot);
        let wanted = |f: &str| match &a.field_prefix {
            Some(p) => f.starts_with(p.as_str()) || f.contains(p.as_str()),
            None => true,
        };
        // With a field filter that no built-in passes, the files holding a
        // wanted field come from the indexes; otherwise walk.
        let indexed = match a.field_prefix.is_some()
            && self.config.use_indexes
            && !BUILTIN_FIELDS.iter().any(|f| wanted(f))
        {
            true => self.holders_indexed(&view, &path, &wanted).await?,
            false => None,
        };
        let (scanned, rows, plan) = match indexed {
            Some(rows) => (rows.len(), rows, "index"),
            None => {
                let entries = self.walk(&view, &path, true).await?;
                let scanned = entries.len();
                let rows = self.rows(&view, entries, Need::All).await?.rows;
                (scanned, rows, "scan")
            }
        };
        let stats = field_stats(&rows);
        // Compact for an agent's context: fields grouped by type with how
        // many entries have each; a series' four summary fields as one
        // name; the built-ins and the operators per type once.
        let mut by_type: BTreeMap<&str, Map<String, Json>> = BTreeMap::new();
        let mut series: Map<String, Json> = Map::new();
        let mut facetable = Vec::new();
        for (field, s) in stats.iter().filter(|(f, _)| wanted(f)) {
            let builtin = BUILTIN_FIELDS.contains(&field.as_str());
            if ["kind", "content_type", "producer"].contains(&field.as_str())
                || (!builtin && !s.types.contains("float"))
            {
                facetable.push(field.clone());
            }
            if builtin {
                continue;
            }
            if let Some(name) = series_name(field, &stats) {
                if field.ends_with(".count") {
                    series.insert(name.to_string(), json!(s.count));
                }
                continue;
            }
            let kind = match s.types.len() {
                1 => s.types.iter().next().copied().unwrap_or("mixed"),
                _ => "mixed",
            };
            by_type
                .entry(kind)
                .or_default()
                .insert(field.clone(), json!(s.count));
        }
        let empty = by_type.is_empty() && series.is_empty();
        let mut out = json!({
            "path": path,
            "read_at": read_at(a.snapshot),
            "scanned": scanned,
            "plan": plan,
            "catalog_empty": empty,
            "fields": by_type,
            "builtins": BUILTIN_FIELDS,
            "operators": {
                "string": ["eq", "ne", "in", "prefix", "suffix", "contains", "gt", "gte", "lt", "lte", "exists", "not_exists"],
                "int, float": ["eq", "ne", "in", "gt", "gte", "lt", "lte", "exists", "not_exists"],
                "bool": ["eq", "ne", "in", "exists", "not_exists"],
            },
            "notes": "counts are entries having the field; every field sorts (missing last); string, int and bool fields facet",
        });
        if !series.is_empty() {
            out["series"] = Json::Object(series);
            out["notes"] = json!(
                "counts are entries having the field; every field sorts (missing last); string, int and bool fields facet; \
                 a series S (a CSV or JSON-array column) has fields S.min, S.max, S.last, S.count"
            );
        }
        if a.include_facets {
            let facets = query::facets(&rows, &facetable, 10);
            out["facets"] = json!(facets);
        }
        Ok(out)
    }

    /// The rows of every file below `path` holding a field `wanted`
    /// passes, from the field indexes (names from `IndexedFields`, holders
    /// from `FindIndexed` with `exists`); `None` when the indexes cannot
    /// say (see [`Gateway::select_indexed`]) and the caller must walk.
    async fn holders_indexed(
        &self,
        view: &Client,
        path: &str,
        wanted: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Option<Vec<Row>>, GatewayError> {
        let names = view.indexed_fields(path, Consistency::Linearizable).await?;
        if !names.complete {
            return Ok(None);
        }
        let limit = self.config.max_scan_entries;
        let any = nokv_client::IndexRange::Between { lo: None, hi: None };
        let mut holders: BTreeMap<String, Row> = BTreeMap::new();
        for field in names.names.iter().filter(|f| wanted(f)) {
            let found = view
                .find_indexed(path, field, &any, limit, Consistency::Linearizable)
                .await?;
            if !found.complete {
                return Ok(None);
            }
            for (p, attr, body) in found.hits {
                holders
                    .entry(p)
                    .or_insert_with_key(|p| stored_row(p, &attr, body.as_ref()));
            }
            if holders.len() > limit {
                return Ok(None);
            }
        }
        Ok(Some(holders.into_values().collect()))
    }

    // ----- find -----

    async fn find(&self, a: verbs::FindArgs, fp: &str) -> Result<Json, GatewayError> {
        let path = normalize(&a.path)?;
        let limit = verbs::limit("find", a.limit, verbs::FIND_DEFAULT, verbs::FIND_MAX)?;
        check_field_lists("find", &[&a.fields, &a.facets])?;
        let preds = query::compile(&a.predicates)?;
        query::check_sort(&a.sort)?;
        let offset = match &a.cursor {
            Some(c) => query::decode_cursor(c, fp)?,
            None => 0,
        };
        let named: Vec<&str> = a
            .sort
            .iter()
            .map(|s| s.field.as_str())
            .chain(a.fields.iter().map(String::as_str))
            .chain(a.facets.iter().map(String::as_str))
            .collect();
        let Selection {
            scanned,
            rows: mut matches,
            plan,
        } = self.select(&path, a.snapshot, &preds, &named).await?;
        query::sort_rows(&mut matches, &a.sort);
        let facets = query::facets(&matches, &a.facets, 10);
        let total = matches.len();
        let start = (offset as usize).min(total);
        let end = (start + limit).min(total);
        let items: Vec<Json> = matches[start..end]
            .iter()
            .map(|r| {
                // Compact: `values` only when fields were asked for.
                let mut item = json!({"path": r.path, "uri": row_uri(r, a.snapshot)});
                if !a.fields.is_empty() {
                    item["values"] = Json::Object(query::project(r, &a.fields));
                }
                item
            })
            .collect();
        let next_cursor = (end < total).then(|| query::encode_cursor(fp, end as u64));
        let mut out = json!({
            "path": path,
            "read_at": read_at(a.snapshot),
            "scanned": scanned,
            "plan": plan,
            "match_count": total,
            "matches": items,
            "next_cursor": next_cursor,
            "truncated": next_cursor.is_some(),
        });
        if !a.facets.is_empty() {
            out["facets"] = json!(facets);
        }
        Ok(out)
    }

    // ----- aggregate -----

    async fn aggregate(&self, a: verbs::AggregateArgs) -> Result<Json, GatewayError> {
        let path = normalize(&a.path)?;
        let limit = verbs::limit(
            "aggregate",
            a.limit,
            verbs::AGGREGATE_DEFAULT,
            verbs::AGGREGATE_MAX,
        )?;
        check_field_lists("aggregate", &[&a.group_by])?;
        query::check_measures(&a.measures)?;
        query::check_sort(&a.sort)?;
        let preds = query::compile(&a.predicates)?;
        let named: Vec<&str> = a
            .group_by
            .iter()
            .map(String::as_str)
            .chain(a.measures.iter().filter_map(|m| m.field.as_deref()))
            .collect();
        let Selection {
            scanned,
            rows: matches,
            plan,
        } = self.select(&path, a.snapshot, &preds, &named).await?;
        let out = query::aggregate(&matches, &a.measures, &a.group_by, &a.sort, limit)?;
        Ok(json!({
            "path": path,
            "read_at": read_at(a.snapshot),
            "scanned": scanned,
            "plan": plan,
            "input_match_count": matches.len(),
            "group_count": out.group_count,
            "row_count": out.groups.len(),
            "groups": out.groups,
            "truncated": out.truncated,
        }))
    }

    // ----- read -----

    async fn read(&self, a: verbs::ReadArgs, fp: &str) -> Result<Json, GatewayError> {
        if let Some(uri) = &a.uri {
            if a.path.is_some() || a.cursor.is_some() || a.offset.is_some() {
                return Err(GatewayError::InvalidArgument(
                    "read: give either uri alone, or path with offset/cursor".into(),
                ));
            }
            let ev = self.resolve(uri).await?;
            return Ok(evidence_json(&ev));
        }
        let Some(path) = &a.path else {
            return Err(GatewayError::InvalidArgument(
                "read: give path (or uri)".into(),
            ));
        };
        let path = normalize(path)?;
        let view = self.view(a.snapshot);
        let (attr, body) = view.read_body(&path, Consistency::Linearizable).await?;
        let body = body.unwrap_or_else(|| empty_body(&attr));
        let evidence = EvidenceUri::new(&path, body.generation.0, a.snapshot);
        let offset = match (&a.cursor, a.offset) {
            (Some(_), Some(_)) => {
                return Err(GatewayError::InvalidArgument(
                    "read: give cursor or offset, not both".into(),
                ))
            }
            (Some(c), None) => Some(query::decode_cursor(c, fp)?),
            (None, o) => o,
        };
        match a.format {
            ReadFormat::Bytes => {
                self.read_bytes(
                    &view,
                    &path,
                    &body,
                    &evidence,
                    offset.unwrap_or(0),
                    a.length,
                    fp,
                )
                .await
            }
            ReadFormat::Structured => {
                let limit = verbs::limit("read", a.limit, verbs::READ_MAX, verbs::READ_MAX)?;
                self.read_structured(&view, &path, &body, &evidence, offset, limit, fp)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_bytes(
        &self,
        view: &Client,
        path: &str,
        body: &Body,
        evidence: &EvidenceUri,
        offset: u64,
        length: Option<u64>,
        fp: &str,
    ) -> Result<Json, GatewayError> {
        let length = length.unwrap_or(verbs::READ_BYTES_DEFAULT);
        if length == 0 || length > verbs::READ_BYTES_MAX {
            return Err(GatewayError::LimitExceeded(format!(
                "read: length must be 1..={} bytes; page with next_cursor",
                verbs::READ_BYTES_MAX
            )));
        }
        let start = offset.min(body.size);
        let end = (start + length).min(body.size);
        let bytes = if start < end {
            view.read_range(body, Some(start..end)).await?
        } else {
            Bytes::new()
        };
        let next_cursor = (end < body.size).then(|| query::encode_cursor(fp, end));
        let mut out = json!({
            "path": path,
            "read_at": read_at(evidence.snapshot),
            "generation": body.generation.0,
            "total_size_bytes": body.size,
            "format": "bytes",
            "offset": start,
            "uri": evidence.at(Anchor::Bytes { start, end: end.max(start + 1) }).to_string(),
            "next_cursor": next_cursor,
            "truncated": next_cursor.is_some(),
        });
        put_bytes(&mut out, &bytes);
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_structured(
        &self,
        view: &Client,
        path: &str,
        body: &Body,
        evidence: &EvidenceUri,
        offset: Option<u64>,
        limit: usize,
        fp: &str,
    ) -> Result<Json, GatewayError> {
        let format = structured::detect(name_of(path), &body.content_type).ok_or_else(|| {
            GatewayError::InvalidArgument(format!(
                "read: {path} ({}) is not a structured or text body; read it with format=bytes",
                body.content_type
            ))
        })?;
        let parsed = self.parse_body(view, path, body, format).await?;
        let count = parsed.records.len();
        if count > verbs::READ_MAX as usize && offset.is_none() {
            return Err(GatewayError::TooManyRecords(format!(
                "read: {path} has {count} records, more than {} per call; use stat for its schema and samples, \
                 find or grep to locate what you need, or page deliberately with offset",
                verbs::READ_MAX
            )));
        }
        let start = (offset.unwrap_or(0) as usize).min(count);
        let end = (start + limit).min(count);
        let items: Vec<Json> = (start..end)
            .map(|i| json!({"index": i, "value": parsed.records[i], "uri": item_uri(evidence, &parsed, i).to_string()}))
            .collect();
        let next_cursor = (end < count).then(|| query::encode_cursor(fp, end as u64));
        Ok(json!({
            "path": path,
            "read_at": read_at(evidence.snapshot),
            "generation": body.generation.0,
            "total_size_bytes": body.size,
            "format": "structured",
            "record_type": parsed.record_type,
            "record_count": count,
            "items": items,
            "next_cursor": next_cursor,
            "truncated": next_cursor.is_some(),
        }))
    }

    async fn parse_body(
        &self,
        view: &Client,
        path: &str,
        body: &Body,
        format: Format,
    ) -> Result<Parsed, GatewayError> {
        if body.size > self.config.max_parse_bytes {
            return Err(GatewayError::LimitExceeded(format!(
                "{path} is {} bytes, above the {}-byte parse limit; use grep, or read with format=bytes",
                body.size, self.config.max_parse_bytes
            )));
        }
        let bytes = view.read_range(body, None).await?;
        Ok(structured::parse(format, &bytes)?)
    }

    // ----- grep -----

    async fn grep(&self, a: verbs::GrepArgs, fp: &str) -> Result<Json, GatewayError> {
        let path = normalize(&a.path)?;
        let limit = verbs::limit("grep", a.limit, verbs::GREP_MAX, verbs::GREP_MAX)?;
        if a.pattern.is_empty() {
            return Err(GatewayError::InvalidArgument(
                "grep: pattern must not be empty".into(),
            ));
        }
        if a.pattern.len() > verbs::PATTERN_MAX_BYTES {
            return Err(GatewayError::LimitExceeded(format!(
                "grep: pattern is {} bytes; at most {}",
                a.pattern.len(),
                verbs::PATTERN_MAX_BYTES
            )));
        }
        let (first_file, first_line) = match &a.cursor {
            Some(c) => decode_pair_cursor(c, fp)?,
            None => (0, 1),
        };
        let view = self.view(a.snapshot);
        let files: Vec<Entry> = self
            .walk(&view, &path, a.recursive)
            .await?
            .into_iter()
            .filter(|e| e.attr.file_type == FileType::File && e.attr.size > 0)
            .collect();
        let max_file = self.config.max_parse_bytes.max(64 * 1024 * 1024);
        let mut hits = Vec::new();
        let mut files_scanned = 0usize;
        let mut bytes_scanned = 0u64;
        let mut skipped = Vec::new();
        let mut next: Option<(usize, u64)> = None;
        // Owned inputs: the stream's futures must not borrow `files`.
        let candidates: Vec<(usize, String)> = files
            .iter()
            .enumerate()
            .skip(first_file)
            .map(|(i, e)| (i, e.path.clone()))
            .collect();
        let reader = view.clone();
        let mut bodies = futures::stream::iter(candidates)
            .map(move |(i, path)| {
                let view = reader.clone();
                async move {
                    let (_, body) = view.read_body(&path, Consistency::Linearizable).await?;
                    let bytes = match &body {
                        Some(b) if b.size <= max_file => Some(view.read_range(b, None).await?),
                        _ => None,
                    };
                    Ok::<_, GatewayError>((i, path, body, bytes))
                }
            })
            .buffered(4);
        while let Some(item) = bodies.next().await {
            let (i, file, body, bytes) = item?;
            if files_scanned >= self.config.max_grep_files
                || bytes_scanned >= self.config.max_bytes_per_call
            {
                next = Some((i, 1));
                break;
            }
            let (Some(body), Some(bytes)) = (body, bytes) else {
                skipped
                    .push(json!({"path": file, "reason": format!("larger than {max_file} bytes")}));
                continue;
            };
            files_scanned += 1;
            bytes_scanned += bytes.len() as u64;
            let start = if i == first_file { first_line } else { 1 };
            let outcome = structured::grep(&bytes, &a.pattern, start, limit - hits.len());
            if outcome.binary {
                continue;
            }
            let evidence = EvidenceUri::new(&file, body.generation.0, a.snapshot);
            for h in outcome.hits {
                let uri = evidence.at(Anchor::Lines {
                    first: h.line_number,
                    last: h.line_number,
                });
                hits.push(json!({"path": file, "line_number": h.line_number, "snippet": h.snippet, "uri": uri.to_string()}));
            }
            if let Some(line) = outcome.next_line {
                next = Some((i, line));
                break;
            }
            if hits.len() >= limit {
                next = (i + 1 < files.len()).then_some((i + 1, 1));
                break;
            }
        }
        let next_cursor = next.map(|(f, l)| encode_pair_cursor(fp, f, l));
        let mut out = json!({
            "path": path,
            "pattern": a.pattern,
            "recursive": a.recursive,
            "read_at": read_at(a.snapshot),
            "matches": hits,
            "files_scanned": files_scanned,
            "bytes_scanned": bytes_scanned,
            "next_cursor": next_cursor,
            "truncated": next_cursor.is_some(),
        });
        if !skipped.is_empty() {
            out["skipped"] = json!(skipped);
        }
        Ok(out)
    }

    // ----- evidence -----

    /// Exactly the bytes an evidence URI cites: at its snapshot, or the
    /// current body if it is still that generation, or a live pin holding
    /// that generation. Otherwise `generation_gone`.
    pub async fn resolve(&self, text: &str) -> Result<Evidence, GatewayError> {
        let uri = EvidenceUri::parse(text)?;
        let view = self.view(uri.snapshot);
        let attr = match view.stat(&uri.path, Consistency::Linearizable).await {
            Ok(a) => a,
            Err(ClientError::Fs { code, .. }) if code == "ENOENT" && uri.generation.is_some() => {
                return self.cited_from_pins(&uri, None).await;
            }
            Err(e) => return Err(e.into()),
        };
        if attr.file_type != FileType::File {
            let listing = self
                .ls(verbs::LsArgs {
                    path: uri.path.clone(),
                    cursor: None,
                    limit: None,
                    snapshot: uri.snapshot,
                })
                .await?;
            return Ok(Evidence {
                uri: uri.to_string(),
                path: uri.path.clone(),
                generation: attr.generation.0,
                mime: "application/json".into(),
                bytes: Bytes::from(listing.to_string()),
            });
        }
        let (_, body) = view.read_body(&uri.path, Consistency::Linearizable).await?;
        let body = body.unwrap_or_else(|| empty_body(&attr));
        match uri.generation {
            Some(g) if g != body.generation.0 => {
                self.cited_from_pins(&uri, Some(body.generation.0)).await
            }
            _ => self.cite(&view, &uri, &body).await,
        }
    }

    /// Finds a cited generation that is no longer current: in a live
    /// snapshot pin, else among the bodies waiting for GC (the grace
    /// period after a replace or remove).
    async fn cited_from_pins(
        &self,
        uri: &EvidenceUri,
        current: Option<u64>,
    ) -> Result<Evidence, GatewayError> {
        let wanted = uri.generation.unwrap_or(0);
        if uri.snapshot.is_none() {
            for pin in self.client.snapshots(Consistency::Linearizable).await? {
                if !under(&uri.path, &pin.path) {
                    continue;
                }
                let view = self.client.at_snapshot(pin.id);
                if let Ok((_, Some(body))) =
                    view.read_body(&uri.path, Consistency::Linearizable).await
                {
                    if body.generation.0 == wanted {
                        return self.cite(&view, uri, &body).await;
                    }
                }
            }
            let max = self.config.max_bytes_per_call;
            match self
                .client
                .read_retired(&uri.path, Generation(wanted), max)
                .await
            {
                Ok(all) => return cite_bytes(uri, wanted, &all, ""),
                Err(ClientError::Fs { code, .. }) if code == "ENOENT" => {}
                Err(ClientError::InvalidArgument(m)) => {
                    return Err(GatewayError::LimitExceeded(format!("{uri}: {m}")))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let now = match current {
            Some(g) => format!("the file is at generation {g} now"),
            None => "the file no longer exists".to_string(),
        };
        Err(GatewayError::Gone(format!(
            "{uri}: generation {wanted} is no longer kept ({now}, no snapshot pins it and GC has \
             collected it); read the current file, or cite at a snapshot (snapshot_create) to keep evidence"
        )))
    }

    /// The cited part of a live `body` (a byte range is read alone; other
    /// citations need the whole body).
    async fn cite(
        &self,
        view: &Client,
        uri: &EvidenceUri,
        body: &Body,
    ) -> Result<Evidence, GatewayError> {
        let generation = body.generation.0;
        if let Some(Anchor::Bytes { start, end }) = uri.anchor {
            check_byte_range(uri, start, end, body.size)?;
            let bytes = view.read_range(body, Some(start..end)).await?;
            return Ok(evidence(uri, generation, bytes, "application/octet-stream"));
        }
        let limit = match uri.anchor {
            None => MAX_CITED_BYTES,
            Some(Anchor::Item(_)) => self.config.max_parse_bytes,
            _ => self.config.max_bytes_per_call,
        };
        if body.size > limit {
            return Err(GatewayError::LimitExceeded(format!(
                "{uri}: resolving this citation needs the whole {}-byte body, above {limit} bytes; \
                 cite lines (#L..), an item (#item:N) or bytes (#bytes:A-B) of at most {MAX_CITED_BYTES} bytes",
                body.size
            )));
        }
        let all = view.read_range(body, None).await?;
        cite_bytes(uri, generation, &all, &body.content_type)
    }

    // ----- writes -----

    async fn publish_text(&self, a: verbs::PublishTextArgs) -> Result<Json, GatewayError> {
        let path = normalize(&a.path)?;
        if a.text.len() > verbs::PUBLISH_TEXT_MAX {
            return Err(GatewayError::LimitExceeded(format!(
                "publish_text: {} bytes is above the {}-byte limit",
                a.text.len(),
                verbs::PUBLISH_TEXT_MAX
            )));
        }
        let parent = parent_of(&path);
        if parent != "/" {
            self.client.mkdir(parent, true).await?;
        }
        let opts = PutOptions {
            mode: if a.replace {
                PublishMode::Upsert
            } else {
                PublishMode::CreateOnly
            },
            content_type: a
                .content_type
                .unwrap_or_else(|| text_content_type(&path).into()),
            producer: "nokv-gateway".into(),
            attrs: a.attrs,
            ..PutOptions::default()
        };
        let attr = self
            .client
            .put_bytes(&path, a.text.as_bytes(), &opts)
            .await?;
        Ok(json!({
            "path": path,
            "generation": attr.generation.0,
            "size_bytes": attr.size,
            "uri": uri(&path, &attr, None),
        }))
    }
}

// ----- helpers -----

/// A directory entry with its body summary (files with a body).
type Listed = (DirEntry, Option<BodySummary>);

/// Every entry of `dir` with body summaries, refusing a directory of more
/// than `limit` entries.
async fn list_with_bodies(
    view: &Client,
    dir: &str,
    limit: usize,
) -> Result<Vec<Listed>, GatewayError> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = view
            .read_dir_bodies_page(dir, after, 0, Consistency::Linearizable)
            .await?;
        all.extend(page);
        if all.len() > limit {
            return Err(scan_limit(dir, limit));
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(all),
        }
    }
}

fn scan_limit(root: &str, limit: usize) -> GatewayError {
    GatewayError::ScanLimit(format!(
        "{root} has more than {limit} entries to scan; narrow the path to a subdirectory"
    ))
}

/// Most bytes one citation returns.
const MAX_CITED_BYTES: u64 = 1024 * 1024;

/// Refuses a byte range outside the body or above [`MAX_CITED_BYTES`].
fn check_byte_range(
    uri: &EvidenceUri,
    start: u64,
    end: u64,
    size: u64,
) -> Result<(), GatewayError> {
    if end - start > MAX_CITED_BYTES || end > size {
        return Err(GatewayError::LimitExceeded(format!(
            "{uri}: the range must lie inside the {size}-byte body and span at most {MAX_CITED_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The part of a whole body (`all`) that `uri` cites.
fn cite_bytes(
    uri: &EvidenceUri,
    generation: u64,
    all: &Bytes,
    content_type: &str,
) -> Result<Evidence, GatewayError> {
    let (bytes, mime) = match uri.anchor {
        None => {
            if all.len() as u64 > MAX_CITED_BYTES {
                return Err(GatewayError::LimitExceeded(format!(
                    "{uri} cites a whole {}-byte body; cite lines, an item or bytes of at most {MAX_CITED_BYTES} bytes",
                    all.len()
                )));
            }
            (all.clone(), "application/octet-stream")
        }
        Some(Anchor::Bytes { start, end }) => {
            check_byte_range(uri, start, end, all.len() as u64)?;
            (
                all.slice(start as usize..end as usize),
                "application/octet-stream",
            )
        }
        Some(Anchor::Lines { first, last }) => {
            let span = structured::line_span(all, first, last).ok_or_else(|| {
                GatewayError::NotFound(format!("{uri}: the body has no line {first}"))
            })?;
            if (span.end - span.start) as u64 > MAX_CITED_BYTES {
                return Err(GatewayError::LimitExceeded(format!(
                    "{uri}: cites more than {MAX_CITED_BYTES} bytes"
                )));
            }
            (all.slice(span), "text/plain")
        }
        Some(Anchor::Item(i)) => {
            let format = structured::detect(name_of(&uri.path), content_type).ok_or_else(|| {
                GatewayError::BadUri(format!("{uri}: #item needs a structured body"))
            })?;
            let parsed = structured::parse(format, all)?;
            let record = parsed.records.get(i as usize).ok_or_else(|| {
                GatewayError::NotFound(format!(
                    "{uri}: the body has {} records",
                    parsed.records.len()
                ))
            })?;
            (Bytes::from(record.to_string()), "application/json")
        }
    };
    Ok(evidence(uri, generation, bytes, mime))
}

/// An [`Evidence`]; opaque bytes that are UTF-8 are served as text.
fn evidence(uri: &EvidenceUri, generation: u64, bytes: Bytes, mime: &str) -> Evidence {
    let mime = if mime == "application/octet-stream" && std::str::from_utf8(&bytes).is_ok() {
        "text/plain"
    } else {
        mime
    };
    Evidence {
        uri: uri.to_string(),
        path: uri.path.clone(),
        generation,
        mime: mime.to_string(),
        bytes,
    }
}

/// Checks and normalises an absolute path (no trailing `/`, no empty,
/// `.` or `..` components).
pub fn normalize(path: &str) -> Result<String, GatewayError> {
    let bad =
        |why: &str| GatewayError::InvalidArgument(format!("path {:?}: {why}", truncate(path, 200)));
    if !path.starts_with('/') {
        return Err(bad("must be absolute (start with /)"));
    }
    if path.len() > 4096 {
        return Err(bad("longer than 4096 bytes"));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    for part in trimmed[1..].split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(bad("has an empty, . or .. component"));
        }
        if part.contains('\0') {
            return Err(bad("contains NUL"));
        }
        if part.len() > 255 {
            return Err(bad("has a name longer than 255 bytes"));
        }
    }
    Ok(trimmed.to_string())
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// Whether `path` is `root` or below it.
fn under(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn kind(t: FileType) -> &'static str {
    match t {
        FileType::File => "file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
    }
}

fn mtime_s(attr: &Attr) -> u64 {
    attr.mtime_ns / 1_000_000_000
}

/// What a result was read at: `"latest"` (linearizable reads of the
/// current state) or `{"snapshot": ID}`.
fn read_at(snapshot: Option<u64>) -> Json {
    match snapshot {
        Some(id) => json!({"snapshot": id}),
        None => json!("latest"),
    }
}

fn uri(path: &str, attr: &Attr, snapshot: Option<u64>) -> String {
    let generation = if attr.file_type == FileType::File {
        attr.generation.0
    } else {
        0
    };
    EvidenceUri::new(path, generation, snapshot).to_string()
}

fn row_uri(row: &Row, snapshot: Option<u64>) -> String {
    let generation = match (row.get("kind").first(), row.get("generation").first()) {
        (Some(Value::Str(k)), Some(Value::Int(g))) if k == "file" => *g as u64,
        _ => 0,
    };
    EvidenceUri::new(&row.path, generation, snapshot).to_string()
}

/// A record's citation: a line for text, an item otherwise.
fn item_uri(evidence: &EvidenceUri, parsed: &Parsed, index: usize) -> EvidenceUri {
    match parsed.record_type {
        structured::RecordType::TextLines => {
            let line = index as u64 + 1;
            evidence.at(Anchor::Lines {
                first: line,
                last: line,
            })
        }
        _ => evidence.at(Anchor::Item(index as u64)),
    }
}

fn builtin_row(path: &str, attr: &Attr) -> Row {
    let mut row = Row {
        path: path.to_string(),
        fields: BTreeMap::new(),
    };
    let mut put = |k: &str, v: Value| {
        row.fields.insert(k.to_string(), vec![v]);
    };
    put("path", Value::Str(path.to_string()));
    put("name", Value::Str(name_of(path).to_string()));
    put("kind", Value::Str(kind(attr.file_type).to_string()));
    put(
        "size_bytes",
        Value::Int(attr.size.min(i64::MAX as u64) as i64),
    );
    put("mtime", Value::Int(mtime_s(attr) as i64));
    if attr.file_type == FileType::File {
        put(
            "generation",
            Value::Int(attr.generation.0.min(i64::MAX as u64) as i64),
        );
    }
    row
}

/// The row of a file the index returned: built-ins, body built-ins and
/// the field set stored with the body (no body read).
fn stored_row(path: &str, attr: &Attr, body: Option<&BodySummary>) -> Row {
    let mut row = builtin_row(path, attr);
    if let Some(summary) = body {
        add_body_fields(&mut row, path, summary);
        if let Some(stored) = &summary.fields {
            add_content_fields(&mut row, nokv_fields::from_field_set(stored));
        }
    }
    row
}

/// Body built-ins and publish attributes (an attribute named like a
/// built-in is kept as `attr.<name>`; see [`nokv_fields::extract`]).
fn add_body_fields(row: &mut Row, path: &str, body: &BodySummary) {
    row.fields.insert(
        "content_type".into(),
        vec![Value::Str(body.content_type.clone())],
    );
    row.fields
        .insert("producer".into(), vec![Value::Str(body.producer.clone())]);
    row.fields
        .insert("sha256".into(), vec![Value::Str(body.sha256.clone())]);
    let attrs = nokv_fields::extract(name_of(path), &body.content_type, &body.attrs, None);
    row.fields.extend(attrs);
}

/// The fields of a body with its content's ([`nokv_fields::extract`] with
/// the body): a superset of those `add_body_fields` added, the same where
/// they overlap (attributes win over content keys of the same name, a key
/// named like a built-in is kept as `content.<name>`).
fn add_content_fields(row: &mut Row, fields: BTreeMap<String, Vec<Value>>) {
    row.fields.extend(fields);
}

fn empty_body(attr: &Attr) -> Body {
    Body {
        generation: attr.generation,
        size: 0,
        blocks: Vec::new(),
        sha256: String::new(),
        content_type: String::new(),
        producer: String::new(),
        attrs: BTreeMap::new(),
        published_ns: 0,
    }
}

fn values_json(fields: &BTreeMap<String, Vec<Value>>) -> Map<String, Json> {
    fields
        .iter()
        .map(|(k, vs)| {
            let v = match vs.as_slice() {
                [one] => one.to_json(),
                many => Json::Array(many.iter().map(Value::to_json).collect()),
            };
            (k.clone(), v)
        })
        .collect()
}

/// Per field: which types its values have and how many rows have it.
#[derive(Default)]
struct FieldStats {
    types: std::collections::BTreeSet<&'static str>,
    count: u64,
}

fn field_stats(rows: &[Row]) -> BTreeMap<String, FieldStats> {
    let mut stats: BTreeMap<String, FieldStats> = BTreeMap::new();
    for row in rows {
        for (field, values) in &row.fields {
            let s = stats.entry(field.clone()).or_default();
            s.count += 1;
            for v in values {
                s.types.insert(v.type_name());
            }
        }
    }
    stats
}

/// `S` when `field` is one of `S.min`, `S.max`, `S.last`, `S.count` and
/// all four exist (a summarised series).
fn series_name<'a>(field: &'a str, stats: &BTreeMap<String, FieldStats>) -> Option<&'a str> {
    let (name, part) = field.rsplit_once('.')?;
    let parts = ["min", "max", "last", "count"];
    (parts.contains(&part)
        && parts
            .iter()
            .all(|p| stats.contains_key(&format!("{name}.{p}"))))
    .then_some(name)
}

fn check_field_lists(verb: &str, lists: &[&Vec<String>]) -> Result<(), GatewayError> {
    for list in lists {
        if list.len() > verbs::FIELDS_MAX {
            return Err(GatewayError::LimitExceeded(format!(
                "{verb}: at most {} fields per list",
                verbs::FIELDS_MAX
            )));
        }
    }
    Ok(())
}

/// Refuses fields that are neither built in nor present under the path.
fn check_known<'a>(
    path: &str,
    named: impl Iterator<Item = &'a str>,
    rows: &[Row],
) -> Result<(), GatewayError> {
    let mut unknown: Vec<&str> = Vec::new();
    for field in named {
        if BUILTIN_FIELDS.contains(&field) || unknown.contains(&field) {
            continue;
        }
        if !rows.iter().any(|r| r.fields.contains_key(field)) {
            unknown.push(field);
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let mut known: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.fields.keys().map(String::as_str))
        .filter(|f| !BUILTIN_FIELDS.contains(f))
        .collect();
    known.sort_unstable();
    known.dedup();
    let shown: Vec<&str> = known.iter().take(30).copied().collect();
    Err(GatewayError::UnknownField(format!(
        "no entry under {path} has field(s) {unknown:?}; built-ins are {BUILTIN_FIELDS:?}{}; call catalog on {path} for every field",
        if shown.is_empty() { String::new() } else { format!(", and fields here include {shown:?}") }
    )))
}

/// The content type of published text: what the name suggests, else
/// `text/plain`.
fn text_content_type(path: &str) -> &'static str {
    match nokv_client::content_type_for(path) {
        "application/octet-stream" => "text/plain",
        known => known,
    }
}

fn without(args: &Json, keys: &[&str]) -> Json {
    match args {
        Json::Object(map) => Json::Object(
            map.iter()
                .filter(|(k, _)| !keys.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The arguments with the verb added, for a cursor's fingerprint (which
/// ignores `cursor` and `limit`: pages of one query may differ in size).
fn tagged(verb: &str, args: &Json) -> Json {
    let mut tagged = match args {
        Json::Object(map) => map.clone(),
        _ => Map::new(),
    };
    tagged.insert("verb".into(), json!(verb));
    Json::Object(tagged)
}

fn evidence_json(ev: &Evidence) -> Json {
    let mut out = json!({
        "uri": ev.uri,
        "path": ev.path,
        "generation": ev.generation,
        "mime": ev.mime,
        "size_bytes": ev.bytes.len(),
    });
    put_bytes(&mut out, &ev.bytes);
    out
}

/// `text` when the bytes are UTF-8, else `base64`.
fn put_bytes(out: &mut Json, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            out["encoding"] = json!("utf-8");
            out["text"] = json!(text);
        }
        Err(_) => {
            out["encoding"] = json!("base64");
            out["base64"] = json!(base64(bytes));
        }
    }
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `ls` pages by name: the cursor is the query's fingerprint and the hex
/// of the last name returned.
fn encode_name_cursor(fp: &str, name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{fp}.n{hex}")
}

fn decode_name_cursor(cursor: &str, fp: &str) -> Result<String, GatewayError> {
    let (given, rest) = cursor.split_once('.').ok_or_else(|| {
        GatewayError::BadCursor("malformed cursor; start again without a cursor".into())
    })?;
    if given != fp {
        return Err(GatewayError::BadCursor(
            "this cursor belongs to another query; start again without a cursor".into(),
        ));
    }
    let hex = rest
        .strip_prefix('n')
        .filter(|h| h.len() % 2 == 0 && h.len() <= 512)
        .ok_or_else(|| {
            GatewayError::BadCursor("malformed cursor; start again without a cursor".into())
        })?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    bytes
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            GatewayError::BadCursor("malformed cursor; start again without a cursor".into())
        })
}

/// `grep` pages by (file index, line).
fn encode_pair_cursor(fp: &str, file: usize, line: u64) -> String {
    query::encode_cursor(fp, ((file as u64) << 40) | line.min((1 << 40) - 1))
}

fn decode_pair_cursor(cursor: &str, fp: &str) -> Result<(usize, u64), GatewayError> {
    let n = query::decode_cursor(cursor, fp)?;
    let line = n & ((1 << 40) - 1);
    if line == 0 {
        return Err(GatewayError::BadCursor(
            "malformed cursor; start again without a cursor".into(),
        ));
    }
    Ok(((n >> 40) as usize, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_and_normalised() {
        assert_eq!(normalize("/").expect("root"), "/");
        assert_eq!(normalize("/a/b/").expect("trailing"), "/a/b");
        for bad in ["", "a/b", "/a//b", "/a/./b", "/a/../b", "/a\0b"] {
            let e = normalize(bad).expect_err(bad);
            assert_eq!(e.code(), "invalid_argument");
        }
        assert!(normalize(&format!("/{}", "x".repeat(256))).is_err());
    }

    #[test]
    fn cursors_belong_to_their_query() {
        let c = encode_name_cursor("abc", "ü name");
        assert_eq!(decode_name_cursor(&c, "abc").expect("ours"), "ü name");
        assert_eq!(
            decode_name_cursor(&c, "xyz").expect_err("theirs").code(),
            "bad_cursor"
        );
        assert_eq!(
            decode_name_cursor("abc.nzz", "abc")
                .expect_err("hex")
                .code(),
            "bad_cursor"
        );
        let p = encode_pair_cursor("abc", 7, 120);
        assert_eq!(decode_pair_cursor(&p, "abc").expect("ours"), (7, 120));
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0x00, 0x10, 0x80]), "/wAQgA==");
    }

    #[test]
    fn under_is_by_component() {
        assert!(under("/a/b", "/a"));
        assert!(under("/a", "/a"));
        assert!(!under("/ab", "/a"));
        assert!(under("/x", "/"));
    }
}
