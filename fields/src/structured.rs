//! Small structured bodies: format detection, schema inference and record
//! parsing (JSON, JSON Lines, YAML, CSV, text lines), the content fields a
//! body contributes to `find`/`aggregate`, line addressing and `grep`.
//!
//! Bodies are untrusted: nothing here panics on any input bytes, and the
//! work and memory each function spends are bounded by the input size and
//! the limits below (YAML aliases in particular are budgeted while they
//! expand, so a "billion laughs" document is refused rather than built).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Range;

use nokv_holt::fields::MAX_FIELD_STRING;
use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::value::Value;

/// The largest body [`parse`] accepts (8 MiB).
pub const MAX_PARSE_BYTES: usize = 8 * 1024 * 1024;
/// The most records one parsed body may have.
pub const MAX_RECORDS: usize = 100_000;
/// The largest JSON serialization a YAML document may expand to (aliases
/// included), counted while it is built.
pub const MAX_YAML_EXPANDED_BYTES: usize = 16 * 1024 * 1024;
/// The most values (scalars, sequences and mappings) a YAML document may
/// expand to: enough for any 8 MiB document without aliases.
pub const MAX_YAML_NODES: usize = 4 * 1024 * 1024;
/// The most key and cell bytes the records of a CSV body may hold in total
/// (every record repeats the header names).
pub const MAX_CSV_EXPANDED_BYTES: usize = 64 * 1024 * 1024;
/// The most content fields one body contributes.
pub const MAX_CONTENT_FIELDS: usize = 256;
/// The longest content field name, in bytes; longer names are skipped.
pub const MAX_FIELD_NAME_BYTES: usize = 128;
/// How many key components a flattened content field name may have.
pub const MAX_FLATTEN_DEPTH: usize = 4;
/// How many elements of an array of scalars become values of one field.
pub const MAX_ARRAY_VALUES: usize = 64;
/// The most characters of a line a grep snippet shows (plus `…` markers).
pub const SNIPPET_CHARS: usize = 240;
/// How much of a body is checked for a NUL byte to call it binary.
pub const BINARY_SNIFF_BYTES: usize = 8 * 1024;

/// Why a body does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body, or what it parses to, is over the limits above (the
    /// gateway's `limit_exceeded`).
    #[error("{0}")]
    LimitExceeded(String),
    /// Bytes that are not valid UTF-8 or not valid in the format; the
    /// message names the format and the position (the gateway's
    /// `invalid_argument`).
    #[error("{0}")]
    Invalid(String),
}

/// The structured formats a body can be parsed as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Json,
    JsonLines,
    Yaml,
    Csv,
    Text,
}

impl Format {
    /// The format's name as error messages spell it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::JsonLines => "JSON Lines",
            Format::Yaml => "YAML",
            Format::Csv => "CSV",
            Format::Text => "text",
        }
    }
}

/// The shape of a parsed body's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordType {
    /// A top-level JSON array: one record per element.
    JsonArray,
    /// A top-level JSON object (one `{"key", "value"}` record per key) or a
    /// JSON scalar (one `{"value"}` record).
    JsonObject,
    /// One JSON value per non-empty line.
    JsonLines,
    /// A YAML mapping (records as for [`RecordType::JsonObject`]) or scalar.
    YamlMapping,
    /// A YAML sequence: one record per element.
    YamlSequence,
    /// CSV with a header row: one object per data row.
    Csv,
    /// Plain text: one `{"line", "text"}` record per line.
    TextLines,
}

/// The format a body is parsed as, from its content type first and else
/// from the extension of its name; `None` for opaque bytes.
pub fn detect(name: &str, content_type: &str) -> Option<Format> {
    detect_by_content_type(content_type).or_else(|| detect_by_extension(name))
}

/// The format a content type names (parameters such as `charset` ignored).
fn detect_by_content_type(content_type: &str) -> Option<Format> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Some(Format::Json),
        "application/x-ndjson" | "application/jsonl" => Some(Format::JsonLines),
        "application/yaml" | "application/x-yaml" | "text/yaml" => Some(Format::Yaml),
        "text/csv" => Some(Format::Csv),
        other if other.starts_with("text/") => Some(Format::Text),
        _ => None,
    }
}

/// The format the extension of a path's last component names.
fn detect_by_extension(name: &str) -> Option<Format> {
    let file_name = name.rsplit('/').next().unwrap_or(name);
    let (_, extension) = file_name.rsplit_once('.')?;
    match extension.to_ascii_lowercase().as_str() {
        "json" => Some(Format::Json),
        "jsonl" | "ndjson" => Some(Format::JsonLines),
        "yaml" | "yml" => Some(Format::Yaml),
        "csv" => Some(Format::Csv),
        "txt" | "log" | "md" | "out" | "err" | "py" | "toml" | "cfg" | "ini" | "sh" => {
            Some(Format::Text)
        }
        _ => None,
    }
}

/// A parsed body: its records and the fields they have.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub record_type: RecordType,
    pub records: Vec<Json>,
    /// For arrays and lines: the sorted union of the object records' keys;
    /// for mappings: the keys; for CSV: the header, in order; for text:
    /// `line` and `text`.
    pub fields: Vec<String>,
}

/// Parses a body of at most [`MAX_PARSE_BYTES`] as `format`.
///
/// Errors: [`ParseError::LimitExceeded`] for a body or result over the
/// limits, [`ParseError::Invalid`] (naming the format and position) for
/// bytes that are not valid UTF-8 or not valid in the format.
pub fn parse(format: Format, bytes: &[u8]) -> Result<Parsed, ParseError> {
    if bytes.len() > MAX_PARSE_BYTES {
        return Err(ParseError::LimitExceeded(format!(
            "{}: the body is {} bytes; structured reads parse at most {MAX_PARSE_BYTES} bytes \
             (read it by byte or line range instead)",
            format.name(),
            bytes.len()
        )));
    }
    let text = decode_utf8(format, bytes)?;
    match format {
        Format::Json => parse_json(text),
        Format::JsonLines => parse_json_lines(text),
        Format::Yaml => parse_yaml(text),
        Format::Csv => parse_csv(text),
        Format::Text => parse_text(text),
    }
}

/// The body as text, without a leading byte order mark.
fn decode_utf8(format: Format, bytes: &[u8]) -> Result<&str, ParseError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.strip_prefix('\u{feff}').unwrap_or(text)),
        Err(e) => {
            let at = e.valid_up_to();
            let (line, column) = line_column(bytes, at);
            Err(ParseError::Invalid(format!(
                "{}: not valid UTF-8 at line {line} column {column} (byte {at})",
                format.name()
            )))
        }
    }
}

/// The 1-based line and column (in bytes) of byte offset `at`.
fn line_column(bytes: &[u8], at: usize) -> (usize, usize) {
    let before = &bytes[..at.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    (line, before.len() - line_start + 1)
}

/// The refusal of a body with more than [`MAX_RECORDS`] records.
fn too_many_records(format: Format) -> ParseError {
    ParseError::LimitExceeded(format!(
        "{}: the body has more than {MAX_RECORDS} records (read it by byte or line range instead)",
        format.name()
    ))
}

/// Fails when `count` records exceed [`MAX_RECORDS`].
fn check_records(format: Format, count: usize) -> Result<(), ParseError> {
    if count > MAX_RECORDS {
        Err(too_many_records(format))
    } else {
        Ok(())
    }
}

/// A serde_json error as an agent should read it.
fn json_error(format: Format, line: usize, e: &serde_json::Error) -> ParseError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    ParseError::Invalid(format!(
        "{}: not valid JSON at line {line} column {}: {message}",
        format.name(),
        e.column()
    ))
}

/// Parses a whole JSON document.
fn parse_json(text: &str) -> Result<Parsed, ParseError> {
    let value: Json =
        serde_json::from_str(text).map_err(|e| json_error(Format::Json, e.line(), &e))?;
    match value {
        Json::Array(items) => from_sequence(Format::Json, RecordType::JsonArray, items),
        Json::Object(map) => from_mapping(Format::Json, RecordType::JsonObject, map),
        scalar => Ok(from_scalar(RecordType::JsonObject, scalar)),
    }
}

/// Parses one JSON value per non-empty line.
fn parse_json_lines(text: &str) -> Result<Parsed, ParseError> {
    let lines = || {
        line_ranges(text.as_bytes())
            .enumerate()
            .map(|(index, range)| (index + 1, text.get(range).unwrap_or("")))
            .filter(|(_, line)| !is_blank(line))
    };
    // Refuse before building anything: records cost far more than lines.
    check_records(Format::JsonLines, lines().count())?;
    let mut records = Vec::new();
    for (number, line) in lines() {
        let value: Json =
            serde_json::from_str(line).map_err(|e| json_error(Format::JsonLines, number, &e))?;
        records.push(value);
    }
    let fields = object_keys(&records);
    Ok(Parsed {
        record_type: RecordType::JsonLines,
        records,
        fields,
    })
}

/// Whether a line holds only JSON whitespace.
fn is_blank(line: &str) -> bool {
    line.bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Records for the elements of a top-level sequence.
fn from_sequence(
    format: Format,
    record_type: RecordType,
    items: Vec<Json>,
) -> Result<Parsed, ParseError> {
    check_records(format, items.len())?;
    let fields = object_keys(&items);
    Ok(Parsed {
        record_type,
        records: items,
        fields,
    })
}

/// One `{"key", "value"}` record per key of a top-level mapping, in key
/// order.
fn from_mapping(
    format: Format,
    record_type: RecordType,
    map: Map<String, Json>,
) -> Result<Parsed, ParseError> {
    check_records(format, map.len())?;
    let mut entries: Vec<(String, Json)> = map.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let fields = entries.iter().map(|(key, _)| key.clone()).collect();
    let records = entries
        .into_iter()
        .map(|(key, value)| {
            let mut record = Map::new();
            record.insert("key".to_string(), Json::String(key));
            record.insert("value".to_string(), value);
            Json::Object(record)
        })
        .collect();
    Ok(Parsed {
        record_type,
        records,
        fields,
    })
}

/// The single `{"value"}` record of a top-level scalar.
fn from_scalar(record_type: RecordType, scalar: Json) -> Parsed {
    let mut record = Map::new();
    record.insert("value".to_string(), scalar);
    Parsed {
        record_type,
        records: vec![Json::Object(record)],
        fields: Vec::new(),
    }
}

/// The sorted union of the keys of the object records.
fn object_keys(records: &[Json]) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for record in records {
        if let Json::Object(map) = record {
            for key in map.keys() {
                if !keys.contains(key.as_str()) {
                    keys.insert(key.clone());
                }
            }
        }
    }
    keys.into_iter().collect()
}

/// Parses a single YAML document, expanding aliases within the budget.
fn parse_yaml(text: &str) -> Result<Parsed, ParseError> {
    let budget = Budget::default();
    let value = Budgeted(&budget)
        .deserialize(yaml_serde::Deserializer::from_str(text))
        .map_err(|e| yaml_error(&budget, &e))?;
    match value {
        Json::Array(items) => from_sequence(Format::Yaml, RecordType::YamlSequence, items),
        Json::Object(map) => from_mapping(Format::Yaml, RecordType::YamlMapping, map),
        scalar => Ok(from_scalar(RecordType::YamlMapping, scalar)),
    }
}

/// A YAML error as an agent should read it.
fn yaml_error(budget: &Budget, e: &yaml_serde::Error) -> ParseError {
    // yaml_serde's own alias guard ("repetition limit exceeded") refuses
    // the same kind of document as the budget.
    if budget.exhausted.get() || e.to_string().contains("repetition limit") {
        return ParseError::LimitExceeded(format!(
            "YAML: the document expands past {MAX_YAML_EXPANDED_BYTES} bytes or {MAX_YAML_NODES} \
             values (aliases included); read it as text instead"
        ));
    }
    let full = e.to_string();
    match e.location() {
        Some(at) => {
            let suffix = format!(" at line {} column {}", at.line(), at.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full);
            ParseError::Invalid(format!(
                "YAML: not valid YAML at line {} column {}: {message}",
                at.line(),
                at.column()
            ))
        }
        None => ParseError::Invalid(format!("YAML: not valid YAML: {full}")),
    }
}

/// What a YAML document has expanded to so far.
#[derive(Default)]
struct Budget {
    bytes: Cell<usize>,
    nodes: Cell<usize>,
    exhausted: Cell<bool>,
}

impl Budget {
    /// Counts one more value of about `bytes` serialized bytes, failing once
    /// the document is over either limit.
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let total = self.bytes.get().saturating_add(bytes);
        let nodes = self.nodes.get().saturating_add(1);
        if total > MAX_YAML_EXPANDED_BYTES || nodes > MAX_YAML_NODES {
            self.exhausted.set(true);
            return Err(E::custom("the document expands past the size limit"));
        }
        self.bytes.set(total);
        self.nodes.set(nodes);
        Ok(())
    }
}

/// Builds a `serde_json::Value` from any self-describing deserializer,
/// charging every value to a [`Budget`]. Non-string mapping keys are
/// stringified, non-finite floats become null, and YAML tags are dropped
/// (the tagged value is kept).
#[derive(Clone, Copy)]
struct Budgeted<'a>(&'a Budget);

impl<'de> DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Json;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budgeted<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        self.0.charge(5)?;
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        self.0.charge(20)?;
        Ok(Json::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        self.0.charge(20)?;
        Ok(Json::from(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Json, E> {
        match (i64::try_from(v), u64::try_from(v)) {
            (Ok(i), _) => self.visit_i64(i),
            (_, Ok(u)) => self.visit_u64(u),
            _ => self.visit_f64(v as f64),
        }
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Json, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => self.visit_f64(v as f64),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        self.0.charge(24)?;
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        self.0.charge(v.len().saturating_add(2))?;
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        self.0.charge(v.len().saturating_add(2))?;
        Ok(Json::String(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        self.0.charge(4)?;
        Ok(Json::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        self.visit_none()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Json, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        self.0.charge::<A::Error>(2)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            self.0.charge::<A::Error>(1)?;
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Json, A::Error> {
        self.0.charge::<A::Error>(2)?;
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(self)? {
            let value = access.next_value_seed(self)?;
            self.0.charge::<A::Error>(2)?;
            map.insert(key_string(key), value);
        }
        Ok(Json::Object(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Json, A::Error> {
        let (_tag, variant): (String, _) = data.variant()?;
        variant.newtype_variant_seed(self)
    }
}

/// A mapping key as a JSON object key: strings as they are, anything else
/// as its compact JSON text (`1`, `true`, `null`, `[1,2]`).
fn key_string(key: Json) -> String {
    match key {
        Json::String(s) => s,
        other => other.to_string(),
    }
}

/// Parses CSV (RFC 4180, header row first) into one object per data row.
fn parse_csv(text: &str) -> Result<Parsed, ParseError> {
    let mut reader = CsvReader::new(text);
    let Some(header) = reader.next_row()? else {
        return Ok(Parsed {
            record_type: RecordType::Csv,
            records: Vec::new(),
            fields: Vec::new(),
        });
    };
    let fields = unique_names(header);
    let mut records = Vec::new();
    let mut expanded = 0usize;
    while let Some(row) = reader.next_row()? {
        let mut record = Map::new();
        for (name, cell) in fields.iter().zip(row) {
            if cell.is_empty() {
                continue;
            }
            expanded = expanded.saturating_add(name.len() + cell.len());
            if expanded > MAX_CSV_EXPANDED_BYTES {
                return Err(ParseError::LimitExceeded(format!(
                    "CSV: the records would hold more than {MAX_CSV_EXPANDED_BYTES} bytes of \
                     names and cells; read it by byte or line range instead"
                )));
            }
            record.insert(name.clone(), Value::infer(&cell).to_json());
        }
        records.push(Json::Object(record));
        check_records(Format::Csv, records.len())?;
    }
    Ok(Parsed {
        record_type: RecordType::Csv,
        records,
        fields,
    })
}

/// Header names made unique (`a, a` becomes `a, a_2`); an empty name
/// becomes `column_N` (1-based position).
fn unique_names(header: Vec<String>) -> Vec<String> {
    let mut taken: HashSet<String> = HashSet::new();
    // The next suffix to try per base name, so that many duplicates stay
    // linear.
    let mut next_suffix: HashMap<String, usize> = HashMap::new();
    let mut names = Vec::with_capacity(header.len());
    for (index, cell) in header.into_iter().enumerate() {
        let base = if cell.is_empty() {
            format!("column_{}", index + 1)
        } else {
            cell
        };
        let mut name = base.clone();
        if taken.contains(&name) {
            let mut suffix = next_suffix.get(&base).copied().unwrap_or(2);
            loop {
                name = format!("{base}_{suffix}");
                suffix += 1;
                if !taken.contains(&name) {
                    break;
                }
            }
            next_suffix.insert(base, suffix);
        }
        taken.insert(name.clone());
        names.push(name);
    }
    names
}

/// How a CSV cell ended.
enum CellEnd {
    /// At a comma: the row goes on.
    Comma,
    /// At a line break or the end of the input.
    Row,
}

/// A hand-written RFC 4180 reader: quoted fields with `""` escapes and
/// embedded commas and line breaks, CRLF or LF row ends. Lenient where the
/// RFC is strict: text after a closing quote is kept, and a quote inside an
/// unquoted cell is literal. Blank lines are skipped.
struct CsvReader<'a> {
    text: &'a str,
    pos: usize,
    /// The 1-based line `pos` is on.
    line: usize,
}

impl<'a> CsvReader<'a> {
    fn new(text: &'a str) -> Self {
        CsvReader {
            text,
            pos: 0,
            line: 1,
        }
    }

    /// The next row's cells; `None` at the end of the input.
    fn next_row(&mut self) -> Result<Option<Vec<String>>, ParseError> {
        self.skip_blank_lines();
        if self.pos >= self.text.len() {
            return Ok(None);
        }
        let mut cells = Vec::new();
        loop {
            let (cell, end) = self.cell()?;
            cells.push(cell);
            if let CellEnd::Row = end {
                return Ok(Some(cells));
            }
        }
    }

    fn skip_blank_lines(&mut self) {
        let bytes = self.text.as_bytes();
        loop {
            match (bytes.get(self.pos), bytes.get(self.pos + 1)) {
                (Some(b'\n'), _) => self.pos += 1,
                (Some(b'\r'), Some(b'\n')) => self.pos += 2,
                _ => return,
            }
            self.line += 1;
        }
    }

    /// One cell, and how it ended. Every delimiter is ASCII, so every
    /// position sliced at is a char boundary.
    fn cell(&mut self) -> Result<(String, CellEnd), ParseError> {
        let bytes = self.text.as_bytes();
        let mut out = String::new();
        if bytes.get(self.pos) == Some(&b'"') {
            self.quoted(&mut out)?;
        }
        let start = self.pos;
        loop {
            let (end, width) = match (bytes.get(self.pos), bytes.get(self.pos + 1)) {
                (None, _) => (CellEnd::Row, 0),
                (Some(b','), _) => (CellEnd::Comma, 1),
                (Some(b'\n'), _) => (CellEnd::Row, 1),
                (Some(b'\r'), Some(b'\n')) => (CellEnd::Row, 2),
                _ => {
                    self.pos += 1;
                    continue;
                }
            };
            out.push_str(self.text.get(start..self.pos).unwrap_or(""));
            self.pos += width;
            if matches!(end, CellEnd::Row) && width > 0 {
                self.line += 1;
            }
            return Ok((out, end));
        }
    }

    /// The inside of a quoted cell (the opening quote is at `pos`), up to
    /// and past its closing quote.
    fn quoted(&mut self, out: &mut String) -> Result<(), ParseError> {
        let bytes = self.text.as_bytes();
        let opened_on = self.line;
        self.pos += 1;
        loop {
            let rest = bytes.get(self.pos..).unwrap_or(&[]);
            let Some(quote) = rest.iter().position(|&b| b == b'"') else {
                return Err(ParseError::Invalid(format!(
                    "CSV: the quoted field opened on line {opened_on} is never closed"
                )));
            };
            let chunk = self.text.get(self.pos..self.pos + quote).unwrap_or("");
            self.line += chunk.bytes().filter(|&b| b == b'\n').count();
            out.push_str(chunk);
            self.pos += quote + 1;
            if bytes.get(self.pos) == Some(&b'"') {
                out.push('"');
                self.pos += 1;
            } else {
                return Ok(());
            }
        }
    }
}

/// One `{"line", "text"}` record per line.
fn parse_text(text: &str) -> Result<Parsed, ParseError> {
    // Refuse before building anything: records cost far more than lines.
    check_records(Format::Text, line_ranges(text.as_bytes()).count())?;
    let mut records = Vec::new();
    for (index, range) in line_ranges(text.as_bytes()).enumerate() {
        let line = text.get(range).unwrap_or("");
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut record = Map::new();
        record.insert("line".to_string(), Json::from(index as u64 + 1));
        record.insert("text".to_string(), Json::String(line.to_string()));
        records.push(Json::Object(record));
    }
    Ok(Parsed {
        record_type: RecordType::TextLines,
        records,
        fields: vec!["line".to_string(), "text".to_string()],
    })
}

/// The filterable fields a parsed body contributes, so that agents can
/// `find` and `aggregate` over bodies without registering a schema:
///
/// - a mapping (config): its scalar leaves under dotted names up to
///   [`MAX_FLATTEN_DEPTH`] components (`optimizer.lr`), arrays of scalars
///   as multi-valued fields (first [`MAX_ARRAY_VALUES`] elements); nulls,
///   deeper nesting and arrays of objects are skipped;
/// - a sequence of objects or CSV (a series): `KEY.min`, `KEY.max`,
///   `KEY.last` and `KEY.count` for each key with a numeric value in some
///   record (over its numeric values), `KEY.last` alone for other scalar
///   keys, and `rows`;
/// - text: `lines`.
///
/// At most [`MAX_CONTENT_FIELDS`] fields (keys taken in sorted order);
/// names over [`MAX_FIELD_NAME_BYTES`] bytes are skipped, and so are
/// string leaves over [`MAX_FIELD_STRING`] bytes (the longest string the
/// field index holds), as if they were not there.
pub fn content_fields(parsed: &Parsed) -> BTreeMap<String, Vec<Value>> {
    let mut sink = FieldSink::default();
    match parsed.record_type {
        RecordType::JsonObject | RecordType::YamlMapping => {
            config_fields(&parsed.records, &mut sink)
        }
        RecordType::JsonArray
        | RecordType::JsonLines
        | RecordType::YamlSequence
        | RecordType::Csv => series_fields(&parsed.records, &mut sink),
        RecordType::TextLines => sink.add("lines".to_string(), vec![count(parsed.records.len())]),
    }
    sink.fields
}

/// A count as an `Int` value.
fn count(n: usize) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Collects content fields up to the caps.
#[derive(Default)]
struct FieldSink {
    fields: BTreeMap<String, Vec<Value>>,
}

impl FieldSink {
    fn full(&self) -> bool {
        self.fields.len() >= MAX_CONTENT_FIELDS
    }

    /// Adds a field unless the sink is full, the name is too long, there
    /// are no values, or the name is already taken (the first one wins).
    fn add(&mut self, name: String, values: Vec<Value>) {
        if self.full() || name.len() > MAX_FIELD_NAME_BYTES || values.is_empty() {
            return;
        }
        self.fields.entry(name).or_insert(values);
    }
}

/// A scalar JSON value as a field value; `None` for anything else and for
/// a string over [`MAX_FIELD_STRING`] bytes.
fn leaf(json: &Json) -> Option<Value> {
    Value::from_json(json)
        .ok()
        .filter(|v| !matches!(v, Value::Str(s) if s.len() > MAX_FIELD_STRING))
}

/// A JSON object's entries in key order.
fn sorted_entries(map: &Map<String, Json>) -> Vec<(&String, &Json)> {
    let mut entries: Vec<(&String, &Json)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Flattens the `{"key", "value"}` records of a mapping.
fn config_fields(records: &[Json], sink: &mut FieldSink) {
    let mut entries: Vec<(&str, &Json)> = records
        .iter()
        .filter_map(|record| {
            let key = record.get("key")?.as_str()?;
            Some((key, record.get("value")?))
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    for (key, value) in entries {
        if sink.full() {
            return;
        }
        flatten(key.to_string(), value, 1, sink);
    }
}

/// Adds the scalar leaves of `value`, named `name` (of `depth` components).
fn flatten(name: String, value: &Json, depth: usize, sink: &mut FieldSink) {
    if sink.full() || name.len() > MAX_FIELD_NAME_BYTES {
        return;
    }
    match value {
        Json::Null => {}
        Json::Object(map) => {
            if depth >= MAX_FLATTEN_DEPTH {
                return;
            }
            for (key, child) in sorted_entries(map) {
                if sink.full() {
                    return;
                }
                flatten(format!("{name}.{key}"), child, depth + 1, sink);
            }
        }
        Json::Array(items) => {
            let values = items
                .iter()
                .take(MAX_ARRAY_VALUES)
                .filter_map(leaf)
                .collect();
            sink.add(name, values);
        }
        scalar => {
            if let Some(v) = leaf(scalar) {
                sink.add(name, vec![v]);
            }
        }
    }
}

/// What a series says about one key.
#[derive(Default)]
struct KeyStats {
    min: Option<Value>,
    max: Option<Value>,
    last_number: Option<Value>,
    numbers: usize,
    last: Option<Value>,
}

impl KeyStats {
    fn observe(&mut self, value: Value) {
        if value.as_f64().is_some() {
            self.numbers += 1;
            if self.min.as_ref().is_none_or(|m| value.total_cmp(m).is_lt()) {
                self.min = Some(value.clone());
            }
            if self.max.as_ref().is_none_or(|m| value.total_cmp(m).is_gt()) {
                self.max = Some(value.clone());
            }
            self.last_number = Some(value.clone());
        }
        self.last = Some(value);
    }

    /// The fields this key contributes, by suffix, in name order.
    fn into_fields(self) -> Vec<(&'static str, Value)> {
        if self.numbers == 0 {
            return self.last.map(|v| vec![("last", v)]).unwrap_or_default();
        }
        let mut fields = vec![("count", count(self.numbers))];
        fields.extend(self.last_number.map(|v| ("last", v)));
        fields.extend(self.max.map(|v| ("max", v)));
        fields.extend(self.min.map(|v| ("min", v)));
        fields
    }
}

/// Summarizes the scalar values of object records per key.
fn series_fields(records: &[Json], sink: &mut FieldSink) {
    sink.add("rows".to_string(), vec![count(records.len())]);
    let mut stats: BTreeMap<&str, KeyStats> = BTreeMap::new();
    for record in records {
        let Json::Object(map) = record else { continue };
        for (key, value) in map {
            if let Some(v) = leaf(value) {
                stats.entry(key.as_str()).or_default().observe(v);
            }
        }
    }
    for (key, key_stats) in stats {
        if sink.full() {
            return;
        }
        for (suffix, value) in key_stats.into_fields() {
            sink.add(format!("{key}.{suffix}"), vec![value]);
        }
    }
}

/// The byte range of each line (without its `\n`): lines are split on
/// `\n`, and the empty tail after a final newline is not a line.
fn line_ranges(bytes: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = bytes.get(pos..).filter(|rest| !rest.is_empty())?;
        let start = pos;
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                pos = start + i + 1;
                Some(start..start + i)
            }
            None => {
                pos = bytes.len();
                Some(start..bytes.len())
            }
        }
    })
}

/// The byte range of 1-based lines `first..=last` (up to the end of `last`
/// without its `\n`; a `\r` before it is kept). `last` past the final line
/// is clamped to it; `None` when `first` is 0, `first > last`, or `first`
/// is past the final line.
pub fn line_span(bytes: &[u8], first: u64, last: u64) -> Option<Range<usize>> {
    if first == 0 || first > last {
        return None;
    }
    let mut lines = line_ranges(bytes);
    let first_line = lines.nth(usize::try_from(first - 1).ok()?)?;
    let further = usize::try_from(last - first).unwrap_or(usize::MAX);
    let end = lines
        .take(further)
        .last()
        .map_or(first_line.end, |line| line.end);
    Some(first_line.start..end)
}

/// One matching line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrepHit {
    /// 1-based.
    pub line_number: u64,
    /// The line, or a window of [`SNIPPET_CHARS`] characters of it around
    /// the first match with `…` at each cut end.
    pub snippet: String,
}

/// A page of grep hits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrepOutcome {
    pub hits: Vec<GrepHit>,
    /// Where the next page starts, when this one stopped at `max_hits`
    /// with lines left.
    pub next_line: Option<u64>,
    /// The body has a NUL byte in its first [`BINARY_SNIFF_BYTES`]: it was
    /// not searched.
    pub binary: bool,
}

/// Case-insensitive literal search for `pattern` in the lines of `bytes`
/// from line `start_line` on (1-based; 0 counts as 1), stopping after
/// `max_hits` hits. Linear in the body size. Invalid UTF-8 is matched
/// lossily; an empty pattern finds nothing.
pub fn grep(bytes: &[u8], pattern: &str, start_line: u64, max_hits: usize) -> GrepOutcome {
    let sniff = &bytes[..bytes.len().min(BINARY_SNIFF_BYTES)];
    if sniff.contains(&0) {
        return GrepOutcome {
            hits: Vec::new(),
            next_line: None,
            binary: true,
        };
    }
    let mut outcome = GrepOutcome {
        hits: Vec::new(),
        next_line: None,
        binary: false,
    };
    let needle = lowercase(pattern);
    if needle.is_empty() {
        return outcome;
    }
    let start = start_line.max(1);
    let mut lowered = String::new();
    for (number, range) in (1u64..).zip(line_ranges(bytes)) {
        if number < start {
            continue;
        }
        if outcome.hits.len() >= max_hits {
            outcome.next_line = Some(number);
            break;
        }
        let raw = bytes.get(range).unwrap_or(&[]);
        let text = String::from_utf8_lossy(raw.strip_suffix(b"\r").unwrap_or(raw));
        lowered.clear();
        lowercase_into(&text, &mut lowered);
        if let Some(at) = lowered.find(&needle) {
            outcome.hits.push(GrepHit {
                line_number: number,
                snippet: snippet(&text, at..at + needle.len()),
            });
        }
    }
    outcome
}

/// `text` lowercased char by char (the same mapping for pattern and line,
/// so that offsets can be traced back).
fn lowercase(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    lowercase_into(text, &mut out);
    out
}

fn lowercase_into(text: &str, out: &mut String) {
    for c in text.chars() {
        out.extend(c.to_lowercase());
    }
}

/// The line, or a window of [`SNIPPET_CHARS`] chars of it around the
/// match (a byte range of the lowercased line).
fn snippet(line: &str, matched: Range<usize>) -> String {
    let total = line.chars().count();
    if total <= SNIPPET_CHARS {
        return line.to_string();
    }
    let (first, end) = original_chars(line, matched);
    let width = end.saturating_sub(first);
    let start = if width >= SNIPPET_CHARS {
        first
    } else {
        first
            .saturating_sub((SNIPPET_CHARS - width) / 2)
            .min(total - SNIPPET_CHARS)
    };
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.extend(line.chars().skip(start).take(SNIPPET_CHARS));
    if start + SNIPPET_CHARS < total {
        out.push('…');
    }
    out
}

/// The char range of `line` whose lowercase covers the byte range `lowered`
/// of the lowercased line.
fn original_chars(line: &str, lowered: Range<usize>) -> (usize, usize) {
    let mut offset = 0usize;
    let mut first = None;
    for (index, c) in line.chars().enumerate() {
        offset += c.to_lowercase().map(char::len_utf8).sum::<usize>();
        if first.is_none() && offset > lowered.start {
            first = Some(index);
        }
        if offset >= lowered.end {
            return (first.unwrap_or(index), index + 1);
        }
    }
    let total = line.chars().count();
    (first.unwrap_or(total), total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parsed(format: Format, body: &str) -> Parsed {
        parse(format, body.as_bytes()).unwrap()
    }

    fn invalid(format: Format, body: &[u8]) -> String {
        match parse(format, body) {
            Err(ParseError::Invalid(message)) => message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn detect_prefers_content_type_then_extension() {
        assert_eq!(detect("a.bin", "application/json"), Some(Format::Json));
        assert_eq!(
            detect("a.txt", "application/json; charset=utf-8"),
            Some(Format::Json)
        );
        assert_eq!(detect("x", "application/x-ndjson"), Some(Format::JsonLines));
        assert_eq!(detect("x", "application/jsonl"), Some(Format::JsonLines));
        assert_eq!(detect("x", "text/yaml"), Some(Format::Yaml));
        assert_eq!(detect("x", "application/x-yaml"), Some(Format::Yaml));
        assert_eq!(detect("x.json", "text/csv"), Some(Format::Csv));
        assert_eq!(detect("x.json", "text/html"), Some(Format::Text));
        assert_eq!(
            detect("runs/1/metrics.JSONL", "application/octet-stream"),
            Some(Format::JsonLines)
        );
        assert_eq!(detect("cfg.yml", ""), Some(Format::Yaml));
        assert_eq!(detect("a/b.csv", ""), Some(Format::Csv));
        assert_eq!(detect("a/b.tsv", ""), None);
        assert_eq!(detect("train.log", ""), Some(Format::Text));
        assert_eq!(detect("model.safetensors", ""), None);
        assert_eq!(detect("README", ""), None);
        assert_eq!(detect("dir.json/file", ""), None);
    }

    #[test]
    fn json_array_records_elements_and_unions_keys() {
        let p = parsed(Format::Json, r#"[{"b":1,"a":2},{"c":true},3]"#);
        assert_eq!(p.record_type, RecordType::JsonArray);
        assert_eq!(p.records.len(), 3);
        assert_eq!(p.fields, ["a", "b", "c"]);
    }

    #[test]
    fn json_object_records_key_value_pairs_in_key_order() {
        let p = parsed(Format::Json, r#"{"z":1,"a":{"x":[1]}}"#);
        assert_eq!(p.record_type, RecordType::JsonObject);
        assert_eq!(p.fields, ["a", "z"]);
        assert_eq!(
            p.records,
            vec![
                json!({"key": "a", "value": {"x": [1]}}),
                json!({"key": "z", "value": 1})
            ]
        );
    }

    #[test]
    fn json_scalar_is_one_value_record() {
        let p = parsed(Format::Json, " 42 ");
        assert_eq!(p.record_type, RecordType::JsonObject);
        assert!(p.fields.is_empty());
        assert_eq!(p.records, vec![json!({"value": 42})]);
        let p = parsed(Format::Json, "\u{feff}\"bom\"");
        assert_eq!(p.records, vec![json!({"value": "bom"})]);
    }

    #[test]
    fn json_errors_name_format_and_position() {
        let m = invalid(Format::Json, b"{\n  \"a\": 1,\n}");
        assert!(
            m.starts_with("JSON: not valid JSON at line 3 column 1: "),
            "{m}"
        );
        let m = invalid(Format::Json, b"");
        assert!(m.starts_with("JSON: not valid JSON"), "{m}");
        let m = invalid(Format::Json, b"[\"a\xff\"]");
        assert_eq!(m, "JSON: not valid UTF-8 at line 1 column 4 (byte 3)");
        let deep = "[".repeat(10_000);
        assert!(invalid(Format::Json, deep.as_bytes()).contains("recursion limit"));
    }

    #[test]
    fn json_lines_skip_blank_lines_and_number_errors() {
        let p = parsed(
            Format::JsonLines,
            "{\"step\":1}\n\n  \r\n{\"step\":2,\"loss\":0.5}\r\n\"x\"\n",
        );
        assert_eq!(p.record_type, RecordType::JsonLines);
        assert_eq!(p.records.len(), 3);
        assert_eq!(p.fields, ["loss", "step"]);
        let m = invalid(Format::JsonLines, b"{\"a\":1}\n\n{\"a\":}\n");
        assert!(
            m.starts_with("JSON Lines: not valid JSON at line 3 column 6: "),
            "{m}"
        );
        assert!(parsed(Format::JsonLines, "").records.is_empty());
    }

    #[test]
    fn yaml_mapping_and_sequence() {
        let p = parsed(Format::Yaml, "b: 1\na:\n  lr: 0.1\n  tags: [x, y]\n");
        assert_eq!(p.record_type, RecordType::YamlMapping);
        assert_eq!(p.fields, ["a", "b"]);
        assert_eq!(
            p.records[0],
            json!({"key": "a", "value": {"lr": 0.1, "tags": ["x", "y"]}})
        );
        let p = parsed(
            Format::Yaml,
            "- {step: 1, loss: 2.5}\n- {step: 2}\n- plain\n",
        );
        assert_eq!(p.record_type, RecordType::YamlSequence);
        assert_eq!(p.fields, ["loss", "step"]);
        assert_eq!(p.records[2], json!("plain"));
    }

    #[test]
    fn yaml_stringifies_non_string_keys_and_drops_tags() {
        let p = parsed(
            Format::Yaml,
            "1: one\ntrue: yes\n~: nothing\n[1, 2]: pair\n2.5: f\nt: !custom 7\nn: .nan\n",
        );
        assert_eq!(p.fields, ["1", "2.5", "[1,2]", "n", "null", "t", "true"]);
        let t = p.records.iter().find(|r| r["key"] == "t").unwrap();
        assert_eq!(t["value"], json!(7));
        let n = p.records.iter().find(|r| r["key"] == "n").unwrap();
        assert_eq!(n["value"], Json::Null);
    }

    #[test]
    fn yaml_scalar_and_errors() {
        let p = parsed(Format::Yaml, "hello\n");
        assert_eq!(p.record_type, RecordType::YamlMapping);
        assert_eq!(p.records, vec![json!({"value": "hello"})]);
        let m = invalid(Format::Yaml, b"a: [1, 2\nb: 3\n");
        assert!(m.starts_with("YAML: not valid YAML"), "{m}");
        let m = invalid(Format::Yaml, b"a: 1\n---\nb: 2\n");
        assert!(m.contains("more than one document"), "{m}");
        let m = invalid(Format::Yaml, b"a: *missing\n");
        assert!(m.starts_with("YAML: "), "{m}");
    }

    #[test]
    fn yaml_alias_bombs_are_refused() {
        let mut bomb = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"];
        for pair in names.windows(2) {
            let refs = vec![format!("*{}", pair[0]); 9].join(",");
            bomb.push_str(&format!("{}: &{} [{refs}]\n", pair[1], pair[1]));
        }
        match parse(Format::Yaml, bomb.as_bytes()) {
            Err(ParseError::LimitExceeded(m)) => assert!(m.contains("expands"), "{m}"),
            other => panic!("expected LimitExceeded, got {other:?}"),
        }
        // Few aliases, each to a large sequence: past yaml_serde's alias
        // guard but not past the budget.
        let wide = format!(
            "a: &a [{}]\nb: [{}]\n",
            vec!["1"; 10_000].join(","),
            vec!["*a"; 1_000].join(",")
        );
        match parse(Format::Yaml, wide.as_bytes()) {
            Err(ParseError::LimitExceeded(m)) => assert!(m.contains("expands"), "{m}"),
            other => panic!("expected LimitExceeded, got {other:?}"),
        }
        // A few aliases are fine.
        let p = parsed(Format::Yaml, "base: &b {lr: 1}\nrun: *b\n");
        assert_eq!(p.records[1], json!({"key": "run", "value": {"lr": 1}}));
        // A self-referencing alias hits the depth limit, not the stack.
        assert!(parse(Format::Yaml, b"a: &a [*a]\n").is_err());
    }

    #[test]
    fn csv_quotes_crlf_ragged_and_duplicate_headers() {
        let body = "name,score,name,,note\r\n\"Smith, J\",42,x,,\"say \"\"hi\"\"\"\r\n\
                    \"multi\nline\",1.5\r\n\r\nlast,true,y,z,w,extra\r\n";
        let p = parsed(Format::Csv, body);
        assert_eq!(p.record_type, RecordType::Csv);
        assert_eq!(p.fields, ["name", "score", "name_2", "column_4", "note"]);
        assert_eq!(
            p.records,
            vec![
                json!({"name": "Smith, J", "score": 42, "name_2": "x", "note": "say \"hi\""}),
                json!({"name": "multi\nline", "score": 1.5}),
                json!({"name": "last", "score": true, "name_2": "y", "column_4": "z", "note": "w"}),
            ]
        );
    }

    #[test]
    fn csv_edge_cases() {
        let p = parsed(Format::Csv, "a,a,a_2,a\n1,2,3,4");
        assert_eq!(p.fields, ["a", "a_2", "a_2_2", "a_3"]);
        assert_eq!(
            p.records,
            vec![json!({"a": 1, "a_2": 2, "a_2_2": 3, "a_3": 4})]
        );
        let p = parsed(Format::Csv, "");
        assert!(p.fields.is_empty() && p.records.is_empty());
        let p = parsed(Format::Csv, "x,y\n");
        assert_eq!(p.fields, ["x", "y"]);
        assert!(p.records.is_empty());
        let p = parsed(Format::Csv, "x\n\"\"\n,\n\"a\"b\n");
        assert_eq!(p.records, vec![json!({}), json!({}), json!({"x": "ab"})]);
        let m = invalid(Format::Csv, b"x\n1\n\"open\n");
        assert_eq!(m, "CSV: the quoted field opened on line 3 is never closed");
        assert!(invalid(Format::Csv, b"x\n\xc3").starts_with("CSV: not valid UTF-8"));
    }

    #[test]
    fn text_lines_strip_cr_and_final_newline() {
        let p = parsed(Format::Text, "one\r\ntwo\n\nfour\n");
        assert_eq!(p.record_type, RecordType::TextLines);
        assert_eq!(
            p.records,
            vec![
                json!({"line": 1, "text": "one"}),
                json!({"line": 2, "text": "two"}),
                json!({"line": 3, "text": ""}),
                json!({"line": 4, "text": "four"}),
            ]
        );
        assert_eq!(parsed(Format::Text, "no newline").records.len(), 1);
        assert!(parsed(Format::Text, "").records.is_empty());
        assert!(invalid(Format::Text, b"ok\n\xff").starts_with("text: not valid UTF-8 at line 2"));
    }

    #[test]
    fn limits_are_enforced() {
        let big = vec![b' '; MAX_PARSE_BYTES + 1];
        for format in [Format::Json, Format::Yaml, Format::Csv, Format::Text] {
            assert!(matches!(
                parse(format, &big),
                Err(ParseError::LimitExceeded(_))
            ));
        }
        let lines = "\n".repeat(MAX_RECORDS + 1);
        assert!(matches!(
            parse(Format::Text, lines.as_bytes()),
            Err(ParseError::LimitExceeded(_))
        ));
        let values = "1\n".repeat(MAX_RECORDS + 1);
        assert!(matches!(
            parse(Format::JsonLines, values.as_bytes()),
            Err(ParseError::LimitExceeded(_))
        ));
        let blank = "\n".repeat(MAX_RECORDS + 1) + "1";
        assert_eq!(parsed(Format::JsonLines, &blank).records, [json!(1)]);
        let csv = format!("{}\n{}", "h".repeat(1000), "1\n".repeat(70_000));
        assert!(matches!(
            parse(Format::Csv, csv.as_bytes()),
            Err(ParseError::LimitExceeded(_))
        ));
    }

    #[test]
    fn content_fields_of_a_config_object() {
        let body = r#"{
            "model": "llama",
            "optimizer": {"lr": 0.001, "betas": [0.9, 0.999], "name": "adam",
                          "sched": {"warmup": {"steps": 100, "deep": {"x": 1}}}},
            "epochs": 3, "debug": false, "note": null,
            "layers": [{"a": 1}], "tags": ["x", "y", null]
        }"#;
        let fields = content_fields(&parsed(Format::Json, body));
        let expected: BTreeMap<String, Vec<Value>> = [
            ("debug", vec![Value::Bool(false)]),
            ("epochs", vec![Value::Int(3)]),
            ("model", vec![Value::Str("llama".into())]),
            (
                "optimizer.betas",
                vec![Value::Float(0.9), Value::Float(0.999)],
            ),
            ("optimizer.lr", vec![Value::Float(0.001)]),
            ("optimizer.name", vec![Value::Str("adam".into())]),
            ("optimizer.sched.warmup.steps", vec![Value::Int(100)]),
            ("tags", vec![Value::Str("x".into()), Value::Str("y".into())]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(fields, expected);
        // Strings stay strings, and YAML mappings flatten the same way.
        let fields = content_fields(&parsed(Format::Yaml, "v: \"42\"\nopt: {lr: 2}\n"));
        assert_eq!(fields["v"], [Value::Str("42".into())]);
        assert_eq!(fields["opt.lr"], [Value::Int(2)]);
        // A scalar body has no fields.
        assert!(content_fields(&parsed(Format::Json, "1")).is_empty());
    }

    #[test]
    fn content_fields_of_a_metric_series() {
        let body = "{\"step\":1,\"loss\":2.5,\"phase\":\"warmup\"}\n\
                    {\"step\":2,\"loss\":1.25,\"phase\":\"train\",\"acc\":0.5}\n\
                    {\"step\":3,\"loss\":\"nan\",\"ok\":true}\n";
        let fields = content_fields(&parsed(Format::JsonLines, body));
        assert_eq!(fields["rows"], [Value::Int(3)]);
        assert_eq!(fields["step.min"], [Value::Int(1)]);
        assert_eq!(fields["step.max"], [Value::Int(3)]);
        assert_eq!(fields["step.last"], [Value::Int(3)]);
        assert_eq!(fields["step.count"], [Value::Int(3)]);
        assert_eq!(fields["loss.min"], [Value::Float(1.25)]);
        assert_eq!(fields["loss.max"], [Value::Float(2.5)]);
        assert_eq!(fields["loss.last"], [Value::Float(1.25)]);
        assert_eq!(fields["loss.count"], [Value::Int(2)]);
        assert_eq!(fields["acc.count"], [Value::Int(1)]);
        assert_eq!(fields["phase.last"], [Value::Str("train".into())]);
        assert_eq!(fields["ok.last"], [Value::Bool(true)]);
        assert!(!fields.contains_key("phase.min"));
        assert_eq!(fields.len(), 1 + 4 + 4 + 4 + 1 + 1);

        let csv = content_fields(&parsed(Format::Csv, "epoch,val\n1,0.5\n2,\n3,0.25\n"));
        assert_eq!(csv["rows"], [Value::Int(3)]);
        assert_eq!(csv["val.last"], [Value::Float(0.25)]);
        assert_eq!(csv["val.count"], [Value::Int(2)]);
        assert_eq!(csv["epoch.max"], [Value::Int(3)]);

        let text = content_fields(&parsed(Format::Text, "a\nb\n"));
        assert_eq!(
            text.into_iter().collect::<Vec<_>>(),
            [("lines".to_string(), vec![Value::Int(2)])]
        );
    }

    #[test]
    fn content_fields_are_capped_and_names_bounded() {
        let mut map = Map::new();
        for i in 0..1000 {
            map.insert(format!("k{i:04}"), json!(i));
        }
        map.insert("x".repeat(MAX_FIELD_NAME_BYTES + 1), json!(1));
        map.insert("y".repeat(MAX_FIELD_NAME_BYTES), json!(1));
        let body = Json::Object(map).to_string();
        let fields = content_fields(&parsed(Format::Json, &body));
        assert_eq!(fields.len(), MAX_CONTENT_FIELDS);
        assert!(fields.contains_key("k0000"));
        assert!(fields.contains_key("k0255"));
        assert!(!fields.contains_key("k0256"));

        let small = format!(
            "{{\"{}\": 1, \"{}\": 2}}",
            "x".repeat(MAX_FIELD_NAME_BYTES + 1),
            "y".repeat(MAX_FIELD_NAME_BYTES)
        );
        let fields = content_fields(&parsed(Format::Json, &small));
        assert_eq!(
            fields.into_keys().collect::<Vec<_>>(),
            ["y".repeat(MAX_FIELD_NAME_BYTES)]
        );

        let wide: Vec<String> = (0..100).map(|i| format!("c{i:03}")).collect();
        let csv = format!("{}\n{}\n", wide.join(","), vec!["1"; 100].join(","));
        let fields = content_fields(&parsed(Format::Csv, &csv));
        assert_eq!(fields.len(), MAX_CONTENT_FIELDS);
        assert!(fields.contains_key("rows"));
        assert!(fields.contains_key("c000.min"));
        assert!(!fields.contains_key("c099.min"));

        let arr: Vec<u32> = (0..100).collect();
        let fields = content_fields(&parsed(Format::Json, &json!({ "a": arr }).to_string()));
        assert_eq!(fields["a"].len(), MAX_ARRAY_VALUES);

        // String leaves too long for the field index are skipped.
        let long = "s".repeat(MAX_FIELD_STRING + 1);
        let fit = "s".repeat(MAX_FIELD_STRING);
        let body = json!({"long": long, "fit": fit, "arr": [long, "x"]}).to_string();
        let fields = content_fields(&parsed(Format::Json, &body));
        assert_eq!(
            fields.into_iter().collect::<Vec<_>>(),
            [
                ("arr".to_string(), vec![Value::Str("x".into())]),
                ("fit".to_string(), vec![Value::Str(fit.clone())]),
            ]
        );
        let series = format!("[{{\"p\": \"a\", \"q\": \"{long}\"}}, {{\"p\": \"{long}\"}}]");
        let fields = content_fields(&parsed(Format::Json, &series));
        assert_eq!(fields["p.last"], [Value::Str("a".into())]);
        assert!(!fields.contains_key("q.last"));
    }

    #[test]
    fn line_span_edges() {
        let body = b"one\ntwo\r\nthree\n";
        assert_eq!(line_span(body, 1, 1), Some(0..3));
        assert_eq!(line_span(body, 2, 2), Some(4..8));
        assert_eq!(line_span(body, 1, 3), Some(0..14));
        assert_eq!(line_span(body, 2, 99), Some(4..14));
        assert_eq!(line_span(body, 3, u64::MAX), Some(9..14));
        assert_eq!(line_span(body, 4, 4), None);
        assert_eq!(line_span(body, 0, 1), None);
        assert_eq!(line_span(body, 2, 1), None);
        assert_eq!(line_span(body, u64::MAX, u64::MAX), None);
        assert_eq!(line_span(b"", 1, 1), None);
        assert_eq!(line_span(b"\n", 1, 2), Some(0..0));
        assert_eq!(line_span(b"a\n\nb", 2, 2), Some(2..2));
        assert_eq!(line_span(b"a\n\nb", 3, 3), Some(3..4));
    }

    fn lines_of(outcome: &GrepOutcome) -> Vec<u64> {
        outcome.hits.iter().map(|h| h.line_number).collect()
    }

    #[test]
    fn grep_is_case_insensitive_including_non_ascii() {
        let body = "Äpfel und Birnen\nnothing\r\nÄPFEL!\r\nstraße\n".as_bytes();
        let out = grep(body, "äpfel", 1, 10);
        assert_eq!(lines_of(&out), [1, 3]);
        assert_eq!(out.hits[1].snippet, "ÄPFEL!");
        assert_eq!(out.next_line, None);
        assert!(!out.binary);
        assert_eq!(lines_of(&grep(body, "ÄPFEL", 1, 10)), [1, 3]);
        assert_eq!(lines_of(&grep(body, "STRASSE", 1, 10)), Vec::<u64>::new());
        assert_eq!(lines_of(&grep(body, "Straße", 1, 10)), [4]);
        assert!(grep(body, "", 1, 10).hits.is_empty());
        assert_eq!(lines_of(&grep(b"a\xffb\nab", "b", 1, 10)), [1, 2]);
    }

    #[test]
    fn grep_pages_with_start_and_next_line() {
        let body = b"hit 1\nmiss\nhit 3\nhit 4\nmiss\n";
        let first = grep(body, "HIT", 1, 2);
        assert_eq!(lines_of(&first), [1, 3]);
        assert_eq!(first.next_line, Some(4));
        let second = grep(body, "hit", 4, 2);
        assert_eq!(lines_of(&second), [4]);
        assert_eq!(second.next_line, None);
        // Stopping on the last line leaves nothing to page to.
        assert_eq!(grep(b"x\nhit", "hit", 1, 1).next_line, None);
        // A later page may be empty.
        let page = grep(b"hit\nmiss\n", "hit", 1, 1);
        assert_eq!(page.next_line, Some(2));
        assert_eq!(grep(b"hit\nmiss\n", "hit", 2, 1).hits, []);
        assert_eq!(grep(body, "hit", 0, 10).hits.len(), 3);
        assert_eq!(
            grep(body, "hit", 99, 10),
            GrepOutcome {
                hits: Vec::new(),
                next_line: None,
                binary: false
            }
        );
    }

    #[test]
    fn grep_skips_binary_bodies() {
        let out = grep(b"text\0more text", "text", 1, 10);
        assert!(out.binary && out.hits.is_empty() && out.next_line.is_none());
        let mut late_nul = vec![b'a'; BINARY_SNIFF_BYTES];
        late_nul.extend_from_slice(b"\0\nneedle\n");
        let out = grep(&late_nul, "needle", 1, 10);
        assert!(!out.binary);
        assert_eq!(lines_of(&out), [2]);
    }

    #[test]
    fn grep_snippets_window_long_lines() {
        let line = format!("{}NEEDLE{}", "é".repeat(500), "ü".repeat(500));
        let out = grep(line.as_bytes(), "needle", 1, 1);
        let snippet = &out.hits[0].snippet;
        assert!(
            snippet.starts_with('…') && snippet.ends_with('…'),
            "{snippet}"
        );
        assert_eq!(snippet.chars().count(), SNIPPET_CHARS + 2);
        assert!(snippet.contains("NEEDLE"));

        let head = format!("needle{}", "x".repeat(400));
        let s = &grep(head.as_bytes(), "NEEDLE", 1, 1).hits[0].snippet;
        assert!(s.starts_with("needle") && s.ends_with('…'));
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 1);

        let tail = format!("{}ñeedle\r\n", "ß".repeat(400));
        let s = &grep(tail.as_bytes(), "ÑEEDLE", 1, 1).hits[0].snippet;
        assert!(s.starts_with('…') && s.ends_with("ñeedle"), "{s}");
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 1);

        // A match longer than the window starts the window.
        let pattern = "ab".repeat(200);
        let long = format!("{}{}{}", "z".repeat(300), pattern, "z".repeat(300));
        let s = &grep(long.as_bytes(), &pattern, 1, 1).hits[0].snippet;
        assert!(s.starts_with("…abab"));

        // Lowercasing that changes byte lengths still maps back ('İ' → "i̇").
        let shifted = format!("{}x{}", "İ".repeat(300), "y".repeat(300));
        let s = &grep(shifted.as_bytes(), "X", 1, 1).hits[0].snippet;
        assert!(s.contains('x'), "{s}");

        let short = "short line with Needle\r\n";
        assert_eq!(
            grep(short.as_bytes(), "needle", 1, 1).hits[0].snippet,
            "short line with Needle"
        );
    }

    #[test]
    fn grep_is_linear_on_long_lines() {
        let body = "a".repeat(4 * 1024 * 1024);
        let pattern = format!("{}b", "a".repeat(1000));
        let started = std::time::Instant::now();
        assert!(grep(body.as_bytes(), &pattern, 1, 10).hits.is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    fn structured_text() -> impl Strategy<Value = Vec<u8>> {
        prop::string::string_regex(r#"[a-z0-9 :,\-\[\]{}"'&*!?|>#.\n\r\t~%@`]{0,300}"#)
            .unwrap()
            .prop_map(String::into_bytes)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_and_grep_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            for format in [Format::Json, Format::JsonLines, Format::Yaml, Format::Csv, Format::Text] {
                if let Ok(p) = parse(format, &bytes) {
                    let _ = content_fields(&p);
                }
            }
            let _ = grep(&bytes, "a", 1, 5);
            let _ = grep(&bytes, "\u{130}", 2, 1);
            let _ = line_span(&bytes, 1, 3);
        }

        #[test]
        fn parse_never_panics_on_near_structured_text(bytes in structured_text()) {
            for format in [Format::Json, Format::JsonLines, Format::Yaml, Format::Csv, Format::Text] {
                if let Ok(p) = parse(format, &bytes) {
                    let _ = content_fields(&p);
                }
            }
            let _ = grep(&bytes, "A:", 1, 3);
        }

        #[test]
        fn grep_snippets_are_bounded(line in "\\PC{0,600}", pattern in "\\PC{1,4}") {
            let body = format!("{line}{pattern}{line}");
            let out = grep(body.as_bytes(), &pattern, 1, 1);
            for hit in &out.hits {
                prop_assert!(hit.snippet.chars().count() <= SNIPPET_CHARS + 2);
            }
        }
    }
}
