//! Wire forms of searchable fields, index keys and indexed queries.

use nokv_holt as holt;

use super::{attr, invalid, WireError};
use crate::pb;

pub(super) fn field_set_to_wire(set: holt::FieldSet) -> pb::FieldSet {
    pb::FieldSet {
        fields: set
            .into_iter()
            .map(|(name, values)| pb::Field {
                name,
                values: values.into_iter().map(value_to_wire).collect(),
            })
            .collect(),
    }
}

fn value_to_wire(v: holt::FieldValue) -> pb::FieldValue {
    use pb::field_value::Value;
    let value = match v {
        holt::FieldValue::Bool(b) => Value::Bool(b),
        holt::FieldValue::Int(i) => Value::Int(i),
        holt::FieldValue::Float(bits) => Value::Float(f64::from_bits(bits)),
        holt::FieldValue::Str(s) => Value::Str(s),
    };
    pb::FieldValue { value: Some(value) }
}

/// A field set from the wire. Names must be unique; the engine checks the
/// rest (limits, finite numbers) before proposing.
pub(super) fn field_set_from_wire(set: pb::FieldSet) -> Result<holt::FieldSet, WireError> {
    use pb::field_value::Value;
    let mut out = holt::FieldSet::new();
    for field in set.fields {
        let values = field
            .values
            .into_iter()
            .map(|v| {
                Ok(
                    match v.value.ok_or(WireError::Missing("fields.values.value"))? {
                        Value::Bool(b) => holt::FieldValue::Bool(b),
                        Value::Int(i) => holt::FieldValue::Int(i),
                        Value::Float(f) => holt::FieldValue::float(f)
                            .ok_or_else(|| invalid("fields.values.float", "not a finite number"))?,
                        Value::Str(s) => holt::FieldValue::Str(s),
                    },
                )
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        if out.insert(field.name, values).is_some() {
            return Err(invalid("fields.name", "a field name appears twice"));
        }
    }
    Ok(out)
}

pub(super) fn key_to_wire(k: holt::IndexKey) -> pb::IndexKey {
    use pb::index_key::Key;
    let key = match k {
        holt::IndexKey::Bool(b) => Key::Bool(b),
        holt::IndexKey::Num(n) => Key::Num(n),
        holt::IndexKey::Str(s) => Key::Str(s),
    };
    pb::IndexKey { key: Some(key) }
}

pub(super) fn key_from_wire(
    k: Option<pb::IndexKey>,
    what: &'static str,
) -> Result<holt::IndexKey, WireError> {
    use pb::index_key::Key;
    Ok(
        match k.and_then(|k| k.key).ok_or(WireError::Missing(what))? {
            Key::Bool(b) => holt::IndexKey::Bool(b),
            Key::Num(n) => holt::IndexKey::Num(n),
            Key::Str(s) => holt::IndexKey::Str(s),
        },
    )
}

pub(super) fn range_to_wire(r: holt::IndexRange) -> pb::IndexRange {
    use pb::index_range::Range;
    let range = match r {
        holt::IndexRange::Between { lo, hi } => Range::Between(pb::IndexBetween {
            lo: lo.map(key_to_wire),
            hi: hi.map(key_to_wire),
        }),
        holt::IndexRange::Prefix(p) => Range::Prefix(p),
    };
    pb::IndexRange { range: Some(range) }
}

pub(super) fn range_from_wire(r: Option<pb::IndexRange>) -> Result<holt::IndexRange, WireError> {
    use pb::index_range::Range;
    Ok(
        match r
            .and_then(|r| r.range)
            .ok_or(WireError::Missing("find_indexed.range"))?
        {
            Range::Between(b) => holt::IndexRange::Between {
                lo: b
                    .lo
                    .map(|k| key_from_wire(Some(k), "find_indexed.range.lo"))
                    .transpose()?,
                hi: b
                    .hi
                    .map(|k| key_from_wire(Some(k), "find_indexed.range.hi"))
                    .transpose()?,
            },
            Range::Prefix(p) => holt::IndexRange::Prefix(p),
        },
    )
}

pub(super) fn cursor_to_wire(c: (holt::IndexKey, holt::InodeId)) -> pb::IndexCursor {
    pb::IndexCursor {
        key: Some(key_to_wire(c.0)),
        inode: c.1 .0,
    }
}

pub(super) fn cursor_from_wire(
    c: pb::IndexCursor,
) -> Result<(holt::IndexKey, holt::InodeId), WireError> {
    Ok((
        key_from_wire(c.key, "index_cursor.key")?,
        holt::InodeId(c.inode),
    ))
}

pub(super) fn indexed_page_to_wire(
    hits: Vec<holt::IndexedHit>,
    next: Option<(holt::IndexKey, holt::InodeId)>,
    unindexed: bool,
) -> pb::IndexedPage {
    pb::IndexedPage {
        hits: hits
            .into_iter()
            .map(|h| pb::IndexedHit {
                path: h.path,
                attr: Some(h.attr.into()),
                body: h.body.map(Into::into),
            })
            .collect(),
        next: next.map(cursor_to_wire),
        unindexed,
    }
}

pub(super) fn indexed_page_from_wire(
    page: pb::IndexedPage,
) -> Result<holt::QueryResult, WireError> {
    Ok(holt::QueryResult::Indexed {
        hits: page
            .hits
            .into_iter()
            .map(|h| {
                Ok(holt::IndexedHit {
                    path: h.path,
                    attr: attr(h.attr, "indexed.hits.attr")?,
                    body: h.body.map(holt::BodySummary::try_from).transpose()?,
                })
            })
            .collect::<Result<_, WireError>>()?,
        next: page.next.map(cursor_from_wire).transpose()?,
        unindexed: page.unindexed,
    })
}
