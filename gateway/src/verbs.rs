//! The verbs' arguments (JSON, unknown keys refused), their limits, and
//! the JSON schemas MCP clients see. One definition serves HTTP and MCP.

use serde::Deserialize;
use serde_json::{json, Value as Json};

use crate::error::GatewayError;
use crate::query::{Measure, Predicate, SortKey};

/// Most entries one `ls` page returns.
pub const LS_MAX: u32 = 100;
/// Most matches one `find` page returns (the original allowed 10).
pub const FIND_MAX: u32 = 100;
pub const FIND_DEFAULT: u32 = 10;
/// Most groups one `aggregate` call returns.
pub const AGGREGATE_MAX: u32 = 100;
pub const AGGREGATE_DEFAULT: u32 = 20;
/// Most records one structured `read` returns, and the most a body may
/// have to be read structured without an explicit `offset`.
pub const READ_MAX: u32 = 100;
/// Most bytes one `read` in `bytes` format returns.
pub const READ_BYTES_MAX: u64 = 64 * 1024;
pub const READ_BYTES_DEFAULT: u64 = 16 * 1024;
/// Most hits one `grep` page returns.
pub const GREP_MAX: u32 = 100;
/// Longest grep pattern.
pub const PATTERN_MAX_BYTES: usize = 256;
/// Most facet fields, projected fields and group-by fields per call.
pub const FIELDS_MAX: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LsArgs {
    pub path: String,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub snapshot: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatArgs {
    pub path: String,
    #[serde(default)]
    pub snapshot: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogArgs {
    pub path: String,
    #[serde(default)]
    pub field_prefix: Option<String>,
    #[serde(default)]
    pub include_facets: bool,
    #[serde(default)]
    pub snapshot: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindArgs {
    pub path: String,
    #[serde(default)]
    pub predicates: Vec<Predicate>,
    #[serde(default)]
    pub sort: Vec<SortKey>,
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub facets: Vec<String>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub snapshot: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateArgs {
    pub path: String,
    pub measures: Vec<Measure>,
    #[serde(default)]
    pub predicates: Vec<Predicate>,
    #[serde(default)]
    pub group_by: Vec<String>,
    #[serde(default)]
    pub sort: Vec<SortKey>,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub snapshot: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFormat {
    #[default]
    Structured,
    Bytes,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadArgs {
    /// A path, or an evidence URI (`nokv://…`) whose cited bytes to return.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub format: ReadFormat,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub limit: Option<u32>,
    /// Bytes to return in `bytes` format.
    #[serde(default)]
    pub length: Option<u64>,
    #[serde(default)]
    pub snapshot: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrepArgs {
    pub path: String,
    pub pattern: String,
    pub recursive: bool,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub snapshot: Option<u64>,
}

/// Write tools (only with `--allow-writes`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishTextArgs {
    pub path: String,
    pub text: String,
    #[serde(default)]
    pub attrs: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub content_type: Option<String>,
    /// Replace an existing file (default: fail if it exists).
    #[serde(default)]
    pub replace: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MkdirArgs {
    pub path: String,
    #[serde(default)]
    pub parents: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateArgs {
    pub path: String,
    /// Lease in seconds (default one hour).
    #[serde(default)]
    pub lease_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRemoveArgs {
    pub snapshot: u64,
}

/// Largest text `publish_text` accepts.
pub const PUBLISH_TEXT_MAX: usize = 1024 * 1024;

/// Parses a verb's JSON arguments, naming the verb in the error.
pub fn parse_args<T: serde::de::DeserializeOwned>(
    verb: &str,
    args: Json,
) -> Result<T, GatewayError> {
    let args = if args.is_null() { json!({}) } else { args };
    serde_json::from_value(args).map_err(|e| {
        let text = e.to_string();
        if text.contains("unknown field") {
            GatewayError::UnknownField(format!("{verb}: {text}"))
        } else {
            GatewayError::InvalidArgument(format!("{verb}: {text}"))
        }
    })
}

/// `limit`, defaulted and checked against `1..=max`.
pub fn limit(
    verb: &str,
    given: Option<u32>,
    default: u32,
    max: u32,
) -> Result<usize, GatewayError> {
    match given.unwrap_or(default) {
        0 => Err(GatewayError::InvalidArgument(format!(
            "{verb}: limit must be at least 1"
        ))),
        n if n > max => Err(GatewayError::LimitExceeded(format!(
            "{verb}: limit {n} is above the maximum {max}; page with next_cursor instead"
        ))),
        n => Ok(n as usize),
    }
}

/// A tool as MCP lists it.
#[derive(Clone, Debug)]
pub struct ToolDef {
    pub name: &'static str,
    pub description: &'static str,
    pub input_schema: Json,
    /// Whether it changes the namespace (offered only with `--allow-writes`).
    pub writes: bool,
}

fn snapshot_prop() -> Json {
    json!({"type": "integer", "minimum": 1, "description": "Read at this snapshot id instead of the latest state."})
}
fn cursor_prop() -> Json {
    json!({"type": ["string", "null"], "description": "next_cursor of the previous page of the same query."})
}
fn predicates_prop() -> Json {
    json!({
        "type": "array", "maxItems": 32,
        "description": "Conjunction of conditions. Fields: built-ins (path, name, kind, size_bytes, generation, mtime, content_type, producer, sha256), publish attributes, and fields of small JSON/YAML/CSV bodies (see catalog).",
        "items": {
            "type": "object", "additionalProperties": false, "required": ["field", "op"],
            "properties": {
                "field": {"type": "string"},
                "op": {"type": "string", "enum": ["eq", "ne", "not_equal", "in", "prefix", "suffix", "contains", "gt", "greater_than", "gte", "lt", "less_than", "lte", "exists", "not_exists"]},
                "value": {"description": "string, number or bool; an array for `in`; omitted for exists/not_exists"}
            }
        }
    })
}
fn sort_prop(what: &str) -> Json {
    json!({
        "type": "array", "maxItems": 8, "description": what,
        "items": {"type": "object", "additionalProperties": false, "required": ["field"],
            "properties": {"field": {"type": "string"}, "direction": {"type": "string", "enum": ["asc", "desc"]}}}
    })
}
fn fields_prop(what: &str) -> Json {
    json!({"type": "array", "items": {"type": "string"}, "maxItems": FIELDS_MAX, "description": what})
}
fn limit_prop(default: u32, max: u32) -> Json {
    json!({"type": "integer", "minimum": 1, "maximum": max, "default": default})
}
fn object(required: &[&str], properties: Json) -> Json {
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": properties})
}

/// The seven read verbs, then the write tools (built once).
pub fn tools() -> &'static [ToolDef] {
    static TOOLS: std::sync::OnceLock<Vec<ToolDef>> = std::sync::OnceLock::new();
    TOOLS.get_or_init(build_tools)
}

/// The tool definitions, with their JSON schemas.
fn build_tools() -> Vec<ToolDef> {
    let path =
        json!({"type": "string", "description": "Absolute path in the namespace, e.g. /runs/7"});
    vec![
        ToolDef {
            name: "ls",
            description: "List a directory's direct children in name order (kind, size, generation, evidence uri). Page with next_cursor.",
            input_schema: object(&["path"], json!({"path": path, "cursor": cursor_prop(), "limit": limit_prop(LS_MAX, LS_MAX), "snapshot": snapshot_prop()})),
            writes: false,
        },
        ToolDef {
            name: "stat",
            description: "One entry's card: kind, size, generation, body (content type, producer, sha256), attributes, structured schema with record count and up to 3 sample records, evidence uri.",
            input_schema: object(&["path"], json!({"path": path, "snapshot": snapshot_prop()})),
            writes: false,
        },
        ToolDef {
            name: "catalog",
            description: "Which fields can be filtered, sorted and faceted under a path, with their types, operators and how many entries have them. Call this before find or aggregate.",
            input_schema: object(&["path"], json!({"path": path, "field_prefix": {"type": ["string", "null"], "description": "Only fields starting with (or containing) this text."}, "include_facets": {"type": "boolean", "default": false}, "snapshot": snapshot_prop()})),
            writes: false,
        },
        ToolDef {
            name: "find",
            description: "Entries under a path matching every predicate, sorted, with projected field values and optional facet counts. Page with next_cursor.",
            input_schema: object(&["path"], json!({
                "path": path, "predicates": predicates_prop(),
                "sort": sort_prop("Sort keys in priority order; missing values sort last; ties by path."),
                "fields": fields_prop("Field values to return with each match."),
                "facets": fields_prop("Fields whose top values to count over all matches."),
                "cursor": cursor_prop(), "limit": limit_prop(FIND_DEFAULT, FIND_MAX), "snapshot": snapshot_prop()})),
            writes: false,
        },
        ToolDef {
            name: "aggregate",
            description: "count/sum/avg/min/max over the entries under a path matching the predicates, optionally grouped by fields.",
            input_schema: object(&["path", "measures"], json!({
                "path": path,
                "measures": {"type": "array", "minItems": 1, "maxItems": 16, "items": {"type": "object", "additionalProperties": false, "required": ["name", "op"],
                    "properties": {"name": {"type": "string"}, "op": {"type": "string", "enum": ["count", "sum", "avg", "min", "max"]}, "field": {"type": "string", "description": "Required except for count."}}}},
                "predicates": predicates_prop(),
                "group_by": fields_prop("Group keys (at most 4)."),
                "sort": sort_prop("Group fields or measure names; default: group key ascending."),
                "limit": limit_prop(AGGREGATE_DEFAULT, AGGREGATE_MAX), "snapshot": snapshot_prop()})),
            writes: false,
        },
        ToolDef {
            name: "read",
            description: "Read a file: structured records (JSON, JSONL, YAML, CSV, text lines; refused above 100 records unless you page with offset) or a byte range; or resolve an evidence uri to exactly the bytes it cites.",
            input_schema: object(&[], json!({
                "path": {"type": "string", "description": "Path of a file (or give uri)."},
                "uri": {"type": "string", "description": "An evidence URI from an earlier result, e.g. nokv://runs/7/train.log@g3#L120"},
                "format": {"type": "string", "enum": ["structured", "bytes"], "default": "structured"},
                "offset": {"type": "integer", "minimum": 0, "description": "First record (structured) or byte (bytes)."},
                "limit": limit_prop(READ_MAX, READ_MAX),
                "length": {"type": "integer", "minimum": 1, "maximum": READ_BYTES_MAX, "default": READ_BYTES_DEFAULT, "description": "Bytes to return in bytes format."},
                "cursor": cursor_prop(), "snapshot": snapshot_prop()})),
            writes: false,
        },
        ToolDef {
            name: "grep",
            description: "Case-insensitive literal search of text files (one file, or every file below a directory with recursive=true). Each hit has a line number, a snippet of at most 240 characters and an evidence uri.",
            input_schema: object(&["path", "pattern", "recursive"], json!({
                "path": path, "pattern": {"type": "string", "minLength": 1, "maxLength": PATTERN_MAX_BYTES},
                "recursive": {"type": "boolean"}, "cursor": cursor_prop(), "limit": limit_prop(GREP_MAX, GREP_MAX), "snapshot": snapshot_prop()})),
            writes: false,
        },
        ToolDef {
            name: "publish_text",
            description: "Publish a small text artifact (at most 1 MiB) atomically, with optional attributes. Fails if the file exists unless replace=true.",
            input_schema: object(&["path", "text"], json!({
                "path": path, "text": {"type": "string"},
                "attrs": {"type": "object", "additionalProperties": {"type": "string"}},
                "content_type": {"type": "string"}, "replace": {"type": "boolean", "default": false}})),
            writes: true,
        },
        ToolDef {
            name: "mkdir",
            description: "Create a directory (parents=true: with its parents; an existing directory is fine).",
            input_schema: object(&["path"], json!({"path": path, "parents": {"type": "boolean", "default": false}})),
            writes: true,
        },
        ToolDef {
            name: "snapshot_create",
            description: "Pin a subtree as it is now (copies nothing) so that it can be read, and cited, later; returns its id.",
            input_schema: object(&["path"], json!({"path": path, "lease_seconds": {"type": "integer", "minimum": 1, "default": 3600}})),
            writes: true,
        },
        ToolDef {
            name: "snapshot_remove",
            description: "Remove a snapshot pin.",
            input_schema: object(&["snapshot"], json!({"snapshot": {"type": "integer", "minimum": 1}})),
            writes: true,
        },
    ]
}
