//! Conversions between extracted fields and the engine's [`FieldSet`].
//!
//! `Value::Float(f)` is `FieldValue::Float(f.to_bits())`; the other
//! variants map one to one.

use std::collections::BTreeMap;

use nokv_holt::{FieldSet, FieldValue};

use crate::value::Value;

/// The engine's field set holding `fields`.
pub fn to_field_set(fields: &BTreeMap<String, Vec<Value>>) -> FieldSet {
    fields
        .iter()
        .map(|(name, values)| (name.clone(), values.iter().map(to_field_value).collect()))
        .collect()
}

/// The fields an engine's field set holds.
pub fn from_field_set(set: &FieldSet) -> BTreeMap<String, Vec<Value>> {
    set.iter()
        .map(|(name, values)| (name.clone(), values.iter().map(from_field_value).collect()))
        .collect()
}

fn to_field_value(value: &Value) -> FieldValue {
    match value {
        Value::Str(s) => FieldValue::Str(s.clone()),
        Value::Int(i) => FieldValue::Int(*i),
        Value::Float(f) => FieldValue::Float(f.to_bits()),
        Value::Bool(b) => FieldValue::Bool(*b),
    }
}

fn from_field_value(value: &FieldValue) -> Value {
    match value {
        FieldValue::Str(s) => Value::Str(s.clone()),
        FieldValue::Int(i) => Value::Int(*i),
        FieldValue::Float(bits) => Value::Float(f64::from_bits(*bits)),
        FieldValue::Bool(b) => Value::Bool(*b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_sets_round_trip() {
        let fields: BTreeMap<String, Vec<Value>> = [
            ("s", vec![Value::Str("x".into()), Value::Str(String::new())]),
            (
                "i",
                vec![Value::Int(i64::MIN), Value::Int(0), Value::Int(i64::MAX)],
            ),
            (
                "f",
                vec![Value::Float(-0.0), Value::Float(0.001), Value::Float(1e300)],
            ),
            ("b", vec![Value::Bool(true), Value::Bool(false)]),
            (
                "mixed",
                vec![Value::Int(1), Value::Float(1.5), Value::Str("1".into())],
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let set = to_field_set(&fields);
        assert_eq!(set["f"][1], FieldValue::Float(0.001f64.to_bits()));
        assert_eq!(set["i"][0], FieldValue::Int(i64::MIN));
        let back = from_field_set(&set);
        assert_eq!(back, fields);
        // -0.0 keeps its sign bit through the round trip.
        assert!(matches!(back["f"][0], Value::Float(f) if f.is_sign_negative()));
        assert_eq!(to_field_set(&back), set);
    }
}
