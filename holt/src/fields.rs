//! Searchable fields of published bodies and their secondary index.
//!
//! A publish may carry a [`FieldSet`]: the typed fields the publisher
//! extracted from the body's attributes and, for a small structured body,
//! from its content (the SDK does this; see the `nokv-fields` crate). The
//! engine stores the set beside the body and keeps an index of every
//! `(field, value)` so that a query on one field reads the matching files
//! without walking a subtree ([`crate::Query::FindIndexed`]).
//!
//! Both maps live in the [`Namespace`](crate::engine::Namespace), so a
//! snapshot pin keeps the fields and the index as they were at the pin at
//! no cost (persistent maps), and a replace, unlink or rename changes them
//! in the same `apply` that changes the namespace.
//!
//! A body published without a field set (an older client, or a raw
//! `CommitPublish`) is *unindexed*: the index cannot say what it holds, so
//! a query under a path with such a body must fall back to reading it.
//! The engine tracks those bodies so the query can say so.
//!
//! The index key orders like the agent verbs' total order: booleans, then
//! numbers (integers and floats together, numerically), then strings by
//! bytes. Integers beyond 2^53 map to the nearest float, so a range over
//! the index is a superset of the exact answer: the reader re-checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::FsError;
use crate::path::preview;

/// Most fields in one set.
pub const MAX_FIELDS: usize = 512;
/// Longest field name, in bytes.
pub const MAX_FIELD_NAME: usize = 256;
/// Most values of one field.
pub const MAX_FIELD_VALUES: usize = 64;
/// Longest string value, in bytes.
pub const MAX_FIELD_STRING: usize = 1024;
/// Most values in one set, over all its fields.
pub const MAX_SET_VALUES: usize = 4096;
/// Most bytes in one set ([`field_set_bytes`]): names and values. Every
/// listing or search hit carries its file's whole set, and a reply must
/// fit in one client message (4 MiB) whatever the set holds; it is also
/// what each file costs in the index.
pub const MAX_SET_BYTES: usize = 512 * 1024;

/// What a value weighs in [`MAX_SET_BYTES`]: a string its length, any
/// other value 8 bytes.
pub fn value_bytes(value: &FieldValue) -> usize {
    match value {
        FieldValue::Str(s) => s.len(),
        FieldValue::Bool(_) | FieldValue::Int(_) | FieldValue::Float(_) => 8,
    }
}

/// A field set's weight in [`MAX_SET_BYTES`]: each field's name once, plus
/// its values.
pub fn field_set_bytes(fields: &FieldSet) -> usize {
    fields
        .iter()
        .map(|(name, values)| name.len() + values.iter().map(value_bytes).sum::<usize>())
        .sum()
}

/// One typed value of a field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldValue {
    Bool(bool),
    Int(i64),
    /// The bits of a finite `f64` (`f64::to_bits`), so that the type is `Eq`.
    Float(u64),
    Str(String),
}

impl FieldValue {
    /// A float value; `None` unless finite.
    pub fn float(f: f64) -> Option<FieldValue> {
        f.is_finite().then(|| FieldValue::Float(f.to_bits()))
    }

    /// Where this value sorts in the index.
    pub fn key(&self) -> IndexKey {
        match self {
            FieldValue::Bool(b) => IndexKey::Bool(*b),
            FieldValue::Int(i) => IndexKey::num(*i as f64),
            FieldValue::Float(bits) => IndexKey::num(f64::from_bits(*bits)),
            FieldValue::Str(s) => IndexKey::Str(s.clone()),
        }
    }
}

/// A file's fields: name to one or more values.
pub type FieldSet = BTreeMap<String, Vec<FieldValue>>;

/// A value's place in the index. The variant order is the sort order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IndexKey {
    Bool(bool),
    /// A number as order-preserving bits (see [`IndexKey::num`]).
    Num(u64),
    Str(String),
}

impl IndexKey {
    /// A number's key: bit patterns whose unsigned order is the numeric
    /// order of finite floats (`-0.0` is `0.0`).
    pub fn num(f: f64) -> IndexKey {
        let f = if f == 0.0 { 0.0 } else { f };
        let bits = f.to_bits();
        let sortable = if bits >> 63 == 1 {
            !bits
        } else {
            bits | (1 << 63)
        };
        IndexKey::Num(sortable)
    }

    /// The smallest and largest number keys.
    pub fn num_min() -> IndexKey {
        IndexKey::num(f64::NEG_INFINITY)
    }
    pub fn num_max() -> IndexKey {
        IndexKey::num(f64::INFINITY)
    }
}

/// Which index keys of one field a query reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexRange {
    /// Keys from `lo` to `hi`, both inclusive; `None` is unbounded.
    Between {
        lo: Option<IndexKey>,
        hi: Option<IndexKey>,
    },
    /// String keys starting with this prefix.
    Prefix(String),
}

impl IndexRange {
    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &IndexKey) -> bool {
        match self {
            IndexRange::Between { lo, hi } => {
                lo.as_ref().is_none_or(|lo| key >= lo) && hi.as_ref().is_none_or(|hi| key <= hi)
            }
            IndexRange::Prefix(p) => matches!(key, IndexKey::Str(s) if s.starts_with(p.as_str())),
        }
    }

    /// The first key the range can contain.
    pub(crate) fn start(&self) -> Option<IndexKey> {
        match self {
            IndexRange::Between { lo, .. } => lo.clone(),
            IndexRange::Prefix(p) => Some(IndexKey::Str(p.clone())),
        }
    }

    /// Whether every key after `key` (in index order) is out of the range.
    pub(crate) fn past(&self, key: &IndexKey) -> bool {
        match self {
            IndexRange::Between { hi, .. } => hi.as_ref().is_some_and(|hi| key > hi),
            IndexRange::Prefix(p) => match key {
                IndexKey::Str(s) => s.as_str() > p.as_str() && !s.starts_with(p.as_str()),
                _ => false,
            },
        }
    }
}

/// The static checks of a field set, run before proposing and in `apply`.
pub fn validate_field_set(fields: &FieldSet) -> Result<(), FsError> {
    if fields.len() > MAX_FIELDS {
        return Err(FsError::InvalidArgument(format!(
            "{} fields, at most {MAX_FIELDS} allowed",
            fields.len()
        )));
    }
    let mut total = 0usize;
    for (name, values) in fields {
        if name.is_empty() || name.len() > MAX_FIELD_NAME || name.contains('\0') {
            return Err(FsError::InvalidArgument(format!(
                "field name {:?} must be 1..={MAX_FIELD_NAME} bytes without NUL",
                preview(name)
            )));
        }
        if values.is_empty() || values.len() > MAX_FIELD_VALUES {
            return Err(FsError::InvalidArgument(format!(
                "field {:?} has {} values, 1..={MAX_FIELD_VALUES} allowed",
                preview(name),
                values.len()
            )));
        }
        total += values.len();
        for v in values {
            match v {
                FieldValue::Float(bits) if !f64::from_bits(*bits).is_finite() => {
                    return Err(FsError::InvalidArgument(format!(
                        "field {:?} has a non-finite number",
                        preview(name)
                    )))
                }
                FieldValue::Str(s) if s.len() > MAX_FIELD_STRING => {
                    return Err(FsError::InvalidArgument(format!(
                        "field {:?} has a string of {} bytes, at most {MAX_FIELD_STRING} allowed",
                        preview(name),
                        s.len()
                    )))
                }
                _ => {}
            }
        }
    }
    if total > MAX_SET_VALUES {
        return Err(FsError::InvalidArgument(format!(
            "{total} field values, at most {MAX_SET_VALUES} allowed"
        )));
    }
    let bytes = field_set_bytes(fields);
    if bytes > MAX_SET_BYTES {
        return Err(FsError::InvalidArgument(format!(
            "a field set of {bytes} bytes, at most {MAX_SET_BYTES} allowed"
        )));
    }
    Ok(())
}

/// The index entries of one file's fields, each once.
pub(crate) fn index_entries(fields: &FieldSet) -> Vec<(String, IndexKey)> {
    let mut entries: Vec<(String, IndexKey)> = fields
        .iter()
        .flat_map(|(name, values)| values.iter().map(move |v| (name.clone(), v.key())))
        .collect();
    entries.sort();
    entries.dedup();
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_keys_sort_numerically() {
        let xs = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -1.0,
            -0.0,
            0.0,
            1e-9,
            1.0,
            3.0,
            1e300,
        ];
        let keys: Vec<IndexKey> = xs.iter().map(|x| IndexKey::num(*x)).collect();
        for pair in keys.windows(2) {
            assert!(pair[0] <= pair[1], "{pair:?}");
        }
        assert_eq!(IndexKey::num(-0.0), IndexKey::num(0.0));
        assert_eq!(
            FieldValue::Int(3).key(),
            FieldValue::float(3.0).expect("finite").key()
        );
        assert!(IndexKey::Bool(true) < IndexKey::num_min());
        assert!(IndexKey::num_max() < IndexKey::Str(String::new()));
    }

    #[test]
    fn prefix_ranges_end_after_the_prefix() {
        let r = IndexRange::Prefix("ab".into());
        assert!(r.contains(&IndexKey::Str("abc".into())));
        assert!(!r.contains(&IndexKey::Str("ac".into())));
        assert!(!r.past(&IndexKey::Str("aa".into())));
        assert!(!r.past(&IndexKey::Str("ab\u{10ffff}".into())));
        assert!(r.past(&IndexKey::Str("ac".into())));
    }

    #[test]
    fn bad_sets_are_refused() {
        let mut f = FieldSet::new();
        f.insert("x".into(), vec![FieldValue::Float(f64::NAN.to_bits())]);
        assert!(validate_field_set(&f).is_err());
        let mut f = FieldSet::new();
        f.insert("".into(), vec![FieldValue::Bool(true)]);
        assert!(validate_field_set(&f).is_err());
        let mut f = FieldSet::new();
        f.insert("x".into(), vec![]);
        assert!(validate_field_set(&f).is_err());
        let mut f = FieldSet::new();
        f.insert("x".into(), vec![FieldValue::Str("y".repeat(2000))]);
        assert!(validate_field_set(&f).is_err());
    }
}
