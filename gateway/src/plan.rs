//! Which predicate, if any, the shards' field indexes can serve.
//!
//! A predicate on a field that is not built in, whose operator selects a
//! range of index keys (`eq`, `in`, `gt`, `gte`, `lt`, `lte`, `prefix`,
//! `exists`), can be read from the index; the gateway then checks every
//! predicate exactly on the rows the index returned (the ranges are
//! inclusive supersets). `ne`, `not_exists`, `suffix` and `contains`, and
//! predicates on built-in fields, cannot, so a query made only of those
//! walks the subtree.

use nokv_client::{IndexKey, IndexRange};

use crate::query::{Compiled, Op};
use crate::value::Value;

/// The predicate to read from the index: its field and key ranges.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexPlan {
    pub field: String,
    pub ranges: Vec<IndexRange>,
}

/// The best predicate for the index, by how selective its operator
/// usually is: equality first, then prefix, ranges, and existence last.
pub fn index_plan(preds: &[Compiled]) -> Option<IndexPlan> {
    preds
        .iter()
        .filter(|p| !nokv_fields::BUILTIN_FIELDS.contains(&p.field()))
        .filter_map(|p| {
            let (rank, ranges) = ranges(p)?;
            Some((rank, p.field(), ranges))
        })
        .min_by_key(|(rank, _, _)| *rank)
        .map(|(_, field, ranges)| IndexPlan {
            field: field.to_string(),
            ranges,
        })
}

fn key(v: &Value) -> IndexKey {
    match v {
        Value::Bool(b) => IndexKey::Bool(*b),
        Value::Int(i) => IndexKey::num(*i as f64),
        Value::Float(f) => IndexKey::num(*f),
        Value::Str(s) => IndexKey::Str(s.clone()),
    }
}

fn between(lo: Option<IndexKey>, hi: Option<IndexKey>) -> IndexRange {
    IndexRange::Between { lo, hi }
}

/// The predicate's key ranges and its rank (lower is more selective).
fn ranges(p: &Compiled) -> Option<(u8, Vec<IndexRange>)> {
    let operands = p.operands();
    let first = operands.first();
    let bound = |v: &Value, upper: bool| match (v, upper) {
        (Value::Str(_), true) => between(Some(key(v)), None),
        (Value::Str(_), false) => between(Some(IndexKey::Str(String::new())), Some(key(v))),
        (_, true) => between(Some(key(v)), Some(IndexKey::num_max())),
        (_, false) => between(Some(IndexKey::num_min()), Some(key(v))),
    };
    match p.op() {
        Op::Eq | Op::In => Some((
            0,
            operands
                .iter()
                .map(|v| between(Some(key(v)), Some(key(v))))
                .collect(),
        )),
        Op::Prefix => match first? {
            Value::Str(s) => Some((1, vec![IndexRange::Prefix(s.clone())])),
            _ => None,
        },
        Op::Gt | Op::Gte => Some((2, vec![bound(first?, true)])),
        Op::Lt | Op::Lte => Some((2, vec![bound(first?, false)])),
        Op::Exists => Some((3, vec![between(None, None)])),
        Op::Ne | Op::NotExists | Op::Suffix | Op::Contains => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::query::{compile, Predicate};

    fn plan(preds: serde_json::Value) -> Option<IndexPlan> {
        let preds: Vec<Predicate> = serde_json::from_value(preds).expect("predicates");
        index_plan(&compile(&preds).expect("compile"))
    }

    #[test]
    fn equality_wins_and_built_ins_are_walked() {
        let p = plan(json!([
            {"field": "loss", "op": "lt", "value": 0.5},
            {"field": "model", "op": "eq", "value": "llama"},
        ]))
        .expect("a plan");
        assert_eq!(p.field, "model");
        assert_eq!(p.ranges.len(), 1);
        assert!(plan(json!([{"field": "name", "op": "eq", "value": "x"}])).is_none());
        assert!(plan(json!([{"field": "tag", "op": "ne", "value": "x"}])).is_none());
        assert!(plan(json!([{"field": "tag", "op": "contains", "value": "x"}])).is_none());
        assert!(plan(json!([])).is_none());
    }

    #[test]
    fn ranges_cover_every_value_the_predicate_matches() {
        let p = plan(json!([{"field": "n", "op": "gt", "value": 2}])).expect("plan");
        let r = &p.ranges[0];
        assert!(r.contains(&IndexKey::num(2.5)));
        assert!(r.contains(&IndexKey::num(1e300)));
        assert!(!r.contains(&IndexKey::Str("3".into())), "numbers only");
        let p = plan(json!([{"field": "d", "op": "lte", "value": "2024"}])).expect("plan");
        assert!(p.ranges[0].contains(&IndexKey::Str("2023-12".into())));
        assert!(!p.ranges[0].contains(&IndexKey::num(1.0)));
        let p = plan(json!([{"field": "n", "op": "in", "value": [1, "1", true]}])).expect("plan");
        assert_eq!(p.ranges.len(), 3);
        assert!(p.ranges[0].contains(&IndexKey::num(1.0)));
    }
}
