//! A file's non-built-in fields: its publish attributes and, for a small
//! structured body, the body's content fields, within the limits of the
//! engine's field index.

use std::collections::{BTreeMap, BTreeSet};

use nokv_holt::fields::{
    MAX_FIELDS, MAX_FIELD_NAME, MAX_FIELD_STRING, MAX_FIELD_VALUES, MAX_SET_BYTES, MAX_SET_VALUES,
};

use crate::structured::{self, Format};
use crate::value::Value;

/// Names of the built-in fields every row may have. The gateway computes
/// them from the entry itself; an attribute or content key with one of
/// these names is kept as `attr.<name>` or `content.<name>`.
pub const BUILTIN_FIELDS: &[&str] = &[
    "path",
    "name",
    "kind",
    "size_bytes",
    "generation",
    "mtime",
    "content_type",
    "producer",
    "sha256",
];

/// Bodies up to this size with a structured format contribute content
/// fields (their keys, series summaries).
pub const MAX_FIELD_BODY_BYTES: u64 = 256 * 1024;

/// Whether a body of `size` bytes named `name` (a path or its last
/// component) contributes content fields: not empty, at most
/// [`MAX_FIELD_BODY_BYTES`], and JSON, JSON Lines, YAML or CSV by its
/// content type or extension (text and opaque bytes do not).
pub fn wants_content(name: &str, content_type: &str, size: u64) -> bool {
    size > 0
        && size <= MAX_FIELD_BODY_BYTES
        && structured::detect(name, content_type).is_some_and(|f| !matches!(f, Format::Text))
}

/// The non-built-in fields of a file named `name` (a path or its last
/// component): every attribute typed by [`Value::infer`] (one named like a
/// built-in is kept as `attr.<name>`) and, when `content` is given and
/// [`wants_content`] admits it, the [`structured::content_fields`] of the
/// parsed body (a key named like a built-in is kept as `content.<name>`;
/// an attribute wins over a content key of the same name). A body that
/// does not parse contributes nothing.
///
/// The result fits the field index ([`nokv_holt::validate_field_set`]):
/// fields whose names are empty, longer than `MAX_FIELD_NAME` bytes or hold
/// NUL are dropped, as are string values over `MAX_FIELD_STRING` bytes,
/// values past the first `MAX_FIELD_VALUES` of a field, and fields left
/// without values. Attributes are admitted first, then content fields, each
/// in key order; admission stops at `MAX_FIELDS` fields or at the first
/// field that would take the total past `MAX_SET_VALUES` values or
/// `MAX_SET_BYTES` bytes.
pub fn extract(
    name: &str,
    content_type: &str,
    attrs: &BTreeMap<String, String>,
    content: Option<&[u8]>,
) -> BTreeMap<String, Vec<Value>> {
    let mut attr_fields = BTreeMap::new();
    for (k, v) in attrs {
        attr_fields.insert(renamed("attr", k), vec![Value::infer(v)]);
    }
    // An attribute shadows a content key of its name even when its own
    // value is not admitted.
    let attr_names: BTreeSet<String> = attr_fields.keys().cloned().collect();
    let mut bounded = Bounded::default();
    for (k, v) in attr_fields {
        if !bounded.admit(k, v) {
            return bounded.fields;
        }
    }
    let Some(bytes) = content else {
        return bounded.fields;
    };
    if !wants_content(name, content_type, bytes.len() as u64) {
        return bounded.fields;
    }
    let Some(parsed) =
        structured::detect(name, content_type).and_then(|f| structured::parse(f, bytes).ok())
    else {
        return bounded.fields;
    };
    let mut content_fields = BTreeMap::new();
    for (k, v) in structured::content_fields(&parsed) {
        // The first content key of a name wins (`content.name` itself
        // sorts before `name`).
        content_fields.entry(renamed("content", &k)).or_insert(v);
    }
    for (k, v) in content_fields {
        if attr_names.contains(&k) {
            continue;
        }
        if !bounded.admit(k, v) {
            break;
        }
    }
    bounded.fields
}

/// `key`, or `<prefix>.<key>` when `key` names a built-in field.
fn renamed(prefix: &str, key: &str) -> String {
    if BUILTIN_FIELDS.contains(&key) {
        format!("{prefix}.{key}")
    } else {
        key.to_string()
    }
}

/// Fields admitted so far, within the field index's limits.
#[derive(Default)]
struct Bounded {
    fields: BTreeMap<String, Vec<Value>>,
    values: usize,
    /// The set's weight as `nokv_holt::fields::field_set_bytes` counts it.
    bytes: usize,
}

impl Bounded {
    /// Adds a field unless its name is taken or not admissible, or it has
    /// no admissible values. `false` once no more fields may be added.
    fn admit(&mut self, name: String, values: Vec<Value>) -> bool {
        if self.fields.len() >= MAX_FIELDS {
            return false;
        }
        if name.is_empty()
            || name.len() > MAX_FIELD_NAME
            || name.contains('\0')
            || self.fields.contains_key(&name)
        {
            return true;
        }
        let values: Vec<Value> = values
            .into_iter()
            .filter(admissible)
            .take(MAX_FIELD_VALUES)
            .collect();
        if values.is_empty() {
            return true;
        }
        if self.values + values.len() > MAX_SET_VALUES {
            return false;
        }
        let bytes = name.len() + values.iter().map(value_bytes).sum::<usize>();
        if self.bytes + bytes > MAX_SET_BYTES {
            return false;
        }
        self.values += values.len();
        self.bytes += bytes;
        self.fields.insert(name, values);
        true
    }
}

/// What `value` weighs in the set (as `nokv_holt::fields::value_bytes`).
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::Str(s) => s.len(),
        Value::Float(_) | Value::Int(_) | Value::Bool(_) => 8,
    }
}

/// Whether the field index can hold `value`.
fn admissible(value: &Value) -> bool {
    match value {
        Value::Str(s) => s.len() <= MAX_FIELD_STRING,
        Value::Float(f) => f.is_finite(),
        Value::Int(_) | Value::Bool(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field_set::to_field_set;
    use proptest::prelude::*;
    use serde_json::{json, Value as Json};

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn fields(pairs: Vec<(&str, Vec<Value>)>) -> BTreeMap<String, Vec<Value>> {
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn wants_small_structured_bodies() {
        assert!(wants_content("a/run.json", "", 10));
        assert!(wants_content("x", "application/yaml", MAX_FIELD_BODY_BYTES));
        assert!(wants_content("m.csv", "application/octet-stream", 1));
        assert!(!wants_content("a/run.json", "", 0));
        assert!(!wants_content("a/run.json", "", MAX_FIELD_BODY_BYTES + 1));
        assert!(!wants_content("train.log", "", 10));
        assert!(!wants_content("x.json", "text/plain", 10));
        assert!(!wants_content("model.bin", "", 10));
    }

    #[test]
    fn attributes_are_typed_and_built_in_names_renamed() {
        let got = extract(
            "cfg.json",
            "",
            &attrs(&[
                ("lr", "0.1"),
                ("name", "x"),
                ("epochs", "3"),
                ("ok", "true"),
            ]),
            None,
        );
        let want = fields(vec![
            ("attr.name", vec![Value::Str("x".into())]),
            ("epochs", vec![Value::Int(3)]),
            ("lr", vec![Value::Float(0.1)]),
            ("ok", vec![Value::Bool(true)]),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn content_keys_are_renamed_and_attributes_win() {
        let body = br#"{"model": "llama", "producer": "me", "size_bytes": 3, "lr": 0.5,
                        "content.size_bytes": 9, "opt": {"beta": 0.9}}"#;
        let got = extract(
            "runs/cfg.json",
            "",
            &attrs(&[("lr", "0.1"), ("sha256", "abc")]),
            Some(body),
        );
        let want = fields(vec![
            ("attr.sha256", vec![Value::Str("abc".into())]),
            // The literal key sorts first and wins over the renamed one.
            ("content.producer", vec![Value::Str("me".into())]),
            ("content.size_bytes", vec![Value::Int(9)]),
            ("lr", vec![Value::Float(0.1)]),
            ("model", vec![Value::Str("llama".into())]),
            ("opt.beta", vec![Value::Float(0.9)]),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn bodies_that_do_not_parse_or_are_not_wanted_give_attributes_only() {
        let a = attrs(&[("k", "v")]);
        let only = extract("x.json", "", &a, None);
        assert_eq!(only, fields(vec![("k", vec![Value::Str("v".into())])]));
        assert_eq!(extract("x.json", "", &a, Some(b"{not json")), only);
        assert_eq!(extract("x.json", "", &a, Some(b"")), only);
        assert_eq!(extract("x.txt", "", &a, Some(b"a\nb\n")), only);
        assert_eq!(extract("x.bin", "", &a, Some(br#"{"a":1}"#)), only);
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_FIELD_BODY_BYTES as usize));
        assert_eq!(extract("x.json", "", &a, Some(big.as_bytes())), only);
        // The content type decides before the name.
        let yaml = extract("x.json", "application/yaml", &a, Some(b"y: 1\n"));
        assert_eq!(yaml["y"], [Value::Int(1)]);
    }

    #[test]
    fn long_strings_bad_names_and_empty_fields_are_dropped() {
        let long = "s".repeat(MAX_FIELD_STRING + 1);
        let fit = "s".repeat(MAX_FIELD_STRING);
        let a = attrs(&[("long", &long), ("fit", &fit), ("nul\0", "1")]);
        // `long` is shadowed by the attribute of its name, though that
        // attribute's value is too long to keep.
        let body = json!({
            "c_long": long, "c_arr": [long, "short"], "c_fit": fit, "": 1, "long": 2,
        })
        .to_string();
        let got = extract("x.json", "", &a, Some(body.as_bytes()));
        let want = fields(vec![
            ("c_arr", vec![Value::Str("short".into())]),
            ("c_fit", vec![Value::Str(fit.clone())]),
            ("fit", vec![Value::Str(fit.clone())]),
        ]);
        assert_eq!(got, want);
        // A series' last string is the last one short enough.
        let lines = format!("{{\"p\":\"a\"}}\n{{\"p\":\"{long}\"}}\n");
        let got = extract("m.jsonl", "", &BTreeMap::new(), Some(lines.as_bytes()));
        assert_eq!(got["p.last"], [Value::Str("a".into())]);
    }

    #[test]
    fn total_values_stop_admission_in_key_order() {
        // 100 arrays of 64 values: 6,400 values, more than the index holds.
        let mut map = serde_json::Map::new();
        for i in 0..100 {
            map.insert(format!("k{i:03}"), json!((0..64).collect::<Vec<i64>>()));
        }
        let body = Json::Object(map).to_string();
        let got = extract("x.json", "", &attrs(&[("zz", "1")]), Some(body.as_bytes()));
        // The attribute comes first; then 63 arrays fit (1 + 63 * 64 = 4,033).
        assert_eq!(got.len(), 1 + 63);
        assert!(got.contains_key("zz") && got.contains_key("k062"));
        assert!(!got.contains_key("k063"));
        let total: usize = got.values().map(Vec::len).sum();
        assert!(total <= MAX_SET_VALUES);
        assert!(nokv_holt::validate_field_set(&to_field_set(&got)).is_ok());
    }

    #[test]
    fn total_bytes_stop_admission() {
        let mut bounded = Bounded::default();
        let long = Value::Str("b".repeat(1000));
        let mut admitted = 0;
        while bounded.admit(format!("f{admitted:02}"), vec![long.clone(); 64]) {
            admitted += 1;
        }
        // 8 fields of 64,000 bytes fit in 512 KiB, a ninth does not.
        assert_eq!(admitted, 8);
        let set = to_field_set(&bounded.fields);
        assert!(nokv_holt::fields::field_set_bytes(&set) <= MAX_SET_BYTES);
        assert!(nokv_holt::validate_field_set(&set).is_ok());
    }

    #[test]
    fn fields_are_capped() {
        let mut b = Bounded::default();
        for i in 0..MAX_FIELDS + 10 {
            let more = b.admit(format!("f{i:04}"), vec![Value::Int(1)]);
            assert_eq!(more, i < MAX_FIELDS, "{i}");
        }
        assert_eq!(b.fields.len(), MAX_FIELDS);
        let mut b = Bounded::default();
        assert!(b.admit("many".into(), (0..100).map(Value::Int).collect()));
        assert_eq!(b.fields["many"].len(), MAX_FIELD_VALUES);
        assert!(b.admit("x".repeat(MAX_FIELD_NAME + 1), vec![Value::Int(1)]));
        assert!(b.admit("nan".into(), vec![Value::Float(f64::NAN)]));
        assert_eq!(b.fields.len(), 1);
    }

    fn json_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            any::<f64>().prop_map(Json::from),
            "[a-z\\x00 ]{0,8}".prop_map(Json::from),
            (0usize..3000).prop_map(|n| Json::from("x".repeat(n))),
        ];
        leaf.prop_recursive(4, 256, 80, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..80).prop_map(Json::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        "[a-z.\\x00]{0,4}",
                        "[a-z]{200,300}",
                        Just("name".to_string())
                    ],
                    inner,
                    0..80,
                )
                .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    fn attr_map() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(
            prop_oneof![
                "[a-z.\\x00]{0,6}",
                "[a-z]{250,300}",
                Just("path".to_string()),
                Just("attr.path".to_string()),
            ],
            prop_oneof![
                "[a-z0-9.\\-]{0,10}",
                (0usize..2000).prop_map(|n| "y".repeat(n)),
            ],
            // Past MAX_FIELDS at times, with the content fields.
            0..600,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn extracted_fields_always_fit_the_index(
            attrs in attr_map(),
            body in json_value(),
            lines in any::<bool>(),
        ) {
            let (name, bytes) = if lines {
                let rows = match &body {
                    Json::Array(items) => items.iter().map(Json::to_string).collect::<Vec<_>>(),
                    other => vec![other.to_string()],
                };
                ("m.jsonl", rows.join("\n").into_bytes())
            } else {
                ("c.json", body.to_string().into_bytes())
            };
            let with = extract(name, "", &attrs, Some(&bytes));
            let set = to_field_set(&with);
            prop_assert!(nokv_holt::validate_field_set(&set).is_ok(), "{:?}",
                nokv_holt::validate_field_set(&set));
            let without = extract(name, "", &attrs, None);
            prop_assert!(nokv_holt::validate_field_set(&to_field_set(&without)).is_ok());
            for (k, v) in &without {
                prop_assert_eq!(with.get(k), Some(v));
            }
            for k in with.keys() {
                prop_assert!(!BUILTIN_FIELDS.contains(&k.as_str()));
            }
        }
    }
}
