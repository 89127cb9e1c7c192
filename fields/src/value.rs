//! Typed field values: what predicates compare, sorts order and facets count.
//!
//! A field holds one or more values (a multi-valued field matches a
//! predicate if any of its values does). Publish attributes arrive as
//! strings and are typed by [`Value::infer`]: an integer, a finite float,
//! `true`/`false`, or else a string.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// One entry as the verbs see it: its path and every field it has (the
/// built-in fields, publish attributes, and fields of its structured body).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub path: String,
    pub fields: BTreeMap<String, Vec<Value>>,
}

impl Row {
    /// The field's values (empty when the row lacks the field).
    pub fn get(&self, field: &str) -> &[Value] {
        self.fields.get(field).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// One typed value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    /// Always finite.
    Float(f64),
    Bool(bool),
}

/// Why a JSON value is not a field value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

impl Value {
    /// Types a string the way attributes are typed.
    pub fn infer(text: &str) -> Value {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
        if looks_numeric(text) {
            if let Ok(f) = text.parse::<f64>() {
                if f.is_finite() {
                    return Value::Float(f);
                }
            }
        }
        match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::Str(text.to_string()),
        }
    }

    /// A scalar JSON value (string, finite number, bool). Arrays, objects
    /// and null are refused.
    pub fn from_json(json: &serde_json::Value) -> Result<Value, ValueError> {
        match json {
            serde_json::Value::String(s) => Ok(Value::Str(s.clone())),
            serde_json::Value::Bool(b) => Ok(Value::Bool(*b)),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Value::Int(i))
                } else {
                    match n.as_f64() {
                        Some(f) if f.is_finite() => Ok(Value::Float(f)),
                        _ => Err(ValueError(format!("number {n} is out of range"))),
                    }
                }
            }
            other => Err(ValueError(format!(
                "expected a string, number or bool, got {}",
                json_type(other)
            ))),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Bool(b) => serde_json::Value::Bool(*b),
        }
    }

    /// `string`, `int`, `float` or `bool`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
        }
    }

    /// The value as a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// A total order: bools < numbers (compared numerically) < strings
    /// (compared by bytes). Used by sort, range predicates and min/max.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        fn rank(v: &Value) -> u8 {
            match v {
                Value::Bool(_) => 0,
                Value::Int(_) | Value::Float(_) => 1,
                Value::Str(_) => 2,
            }
        }
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Str(a), Value::Str(b)) => a.as_bytes().cmp(b.as_bytes()),
            (a, b) => match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                _ => rank(a).cmp(&rank(b)),
            },
        }
    }

    /// Equality as predicates see it: numbers compare numerically
    /// (`1 == 1.0`), other types only with their own type.
    pub fn same(&self, other: &Value) -> bool {
        match (self.as_f64(), other.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => self == other,
        }
    }
}

/// The JSON type's name, for error messages.
pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Whether `text` is shaped like a decimal number (so that "inf", "NaN"
/// and "infinity" stay strings).
fn looks_numeric(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    !t.is_empty()
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infer_types_attribute_strings() {
        assert_eq!(Value::infer("42"), Value::Int(42));
        assert_eq!(Value::infer("-3"), Value::Int(-3));
        assert_eq!(Value::infer("0.001"), Value::Float(0.001));
        assert_eq!(Value::infer("1e-3"), Value::Float(0.001));
        assert_eq!(Value::infer("true"), Value::Bool(true));
        assert_eq!(Value::infer("inf"), Value::Str("inf".into()));
        assert_eq!(Value::infer("NaN"), Value::Str("NaN".into()));
        assert_eq!(Value::infer("v1.2"), Value::Str("v1.2".into()));
        assert_eq!(Value::infer(""), Value::Str("".into()));
    }

    #[test]
    fn numbers_compare_across_int_and_float() {
        assert!(Value::Int(1).same(&Value::Float(1.0)));
        assert_eq!(
            Value::Int(2).total_cmp(&Value::Float(1.5)),
            Ordering::Greater
        );
        assert_eq!(
            Value::Bool(true).total_cmp(&Value::Int(0)),
            Ordering::Less,
            "bools sort before numbers"
        );
        assert!(!Value::Str("1".into()).same(&Value::Int(1)));
    }

    #[test]
    fn from_json_refuses_non_scalars() {
        assert!(Value::from_json(&serde_json::json!([1])).is_err());
        assert!(Value::from_json(&serde_json::json!(null)).is_err());
        assert_eq!(
            Value::from_json(&serde_json::json!(2.5)),
            Ok(Value::Float(2.5))
        );
    }
}
