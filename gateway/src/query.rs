//! The pure in-memory query engine behind `find` and `aggregate`:
//! predicates, sorting, facets, grouped measures, projection and cursors.
//!
//! Nothing here does I/O. The verbs gather [`Row`]s, and this module
//! filters, orders, counts and pages them. Every input is bounded (the
//! `MAX_*` constants) and every refusal is a [`GatewayError`] whose message
//! tells an agent what to send instead. No input makes these functions
//! panic.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::value::{json_type, Row, Value};

/// Most predicates one query may have.
pub const MAX_PREDICATES: usize = 32;
/// Longest field name (in bytes) a predicate, sort key or group may name.
pub const MAX_FIELD_LEN: usize = 256;
/// Most values an `in` predicate may list.
pub const MAX_IN_VALUES: usize = 1000;
/// Most sort keys one query may have.
pub const MAX_SORT_KEYS: usize = 8;
/// Most distinct values a facet tracks per field; beyond it the counts are
/// lower bounds and the facet says it is truncated.
pub const MAX_FACET_DISTINCT: usize = 100_000;
/// Most measures one `aggregate` may compute.
pub const MAX_MEASURES: usize = 16;
/// Longest measure name, in bytes.
pub const MAX_MEASURE_NAME: usize = 64;
/// Most `group_by` fields one `aggregate` may have.
pub const MAX_GROUP_BY: usize = 4;
/// Most distinct groups one `aggregate` may build.
pub const MAX_GROUPS: usize = 100_000;

// ---------------------------------------------------------------------------
// Predicates
// ---------------------------------------------------------------------------

/// One condition of `find`/`aggregate`, as an agent sends it:
/// `{"field": "size", "op": "gt", "value": 100}`. A query's predicates are
/// a conjunction.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predicate {
    /// The field to test (see catalog for the fields under a path).
    pub field: String,
    /// The operator.
    pub op: Op,
    /// The operand: a scalar, an array for `in`, nothing for `exists`/`not_exists`.
    #[serde(default)]
    pub value: Json,
}

/// A predicate operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Some value equals the operand (numbers compare numerically).
    Eq,
    /// The field has a value and none equals the operand.
    #[serde(alias = "not_equal")]
    Ne,
    /// Some value equals one of the listed operands.
    In,
    /// Some string value starts with the operand.
    Prefix,
    /// Some string value ends with the operand.
    Suffix,
    /// Some string value contains the operand.
    Contains,
    /// Some value of the operand's kind (number or string) is greater.
    #[serde(alias = "greater_than")]
    Gt,
    /// Some value of the operand's kind is greater or equal.
    Gte,
    /// Some value of the operand's kind is less.
    #[serde(alias = "less_than")]
    Lt,
    /// Some value of the operand's kind is less or equal.
    Lte,
    /// The field has at least one value.
    Exists,
    /// The field has no value.
    NotExists,
}

/// The shape of value an operator takes.
enum Operand {
    /// One string, number or bool.
    Scalar,
    /// A non-empty array of scalars.
    List,
    /// One string.
    Text,
    /// One number or string.
    Bound,
    /// No value (any given is ignored).
    Nothing,
}

impl Op {
    /// Every operator, in the order catalog lists them.
    pub const ALL: [Op; 12] = [
        Op::Eq,
        Op::Ne,
        Op::In,
        Op::Prefix,
        Op::Suffix,
        Op::Contains,
        Op::Gt,
        Op::Gte,
        Op::Lt,
        Op::Lte,
        Op::Exists,
        Op::NotExists,
    ];

    /// The operator's wire name (`eq`, `not_exists`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::In => "in",
            Op::Prefix => "prefix",
            Op::Suffix => "suffix",
            Op::Contains => "contains",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Exists => "exists",
            Op::NotExists => "not_exists",
        }
    }

    fn operand(self) -> Operand {
        match self {
            Op::Eq | Op::Ne => Operand::Scalar,
            Op::In => Operand::List,
            Op::Prefix | Op::Suffix | Op::Contains => Operand::Text,
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => Operand::Bound,
            Op::Exists | Op::NotExists => Operand::Nothing,
        }
    }
}

/// A checked predicate, ready to test rows with [`matches`].
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    field: String,
    op: Op,
    /// One operand, the `in` list, or nothing for `exists`/`not_exists`.
    values: Vec<Value>,
}

impl Compiled {
    /// The field the predicate tests.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The predicate's operator.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The typed operands: one, the `in` list, or none.
    pub fn operands(&self) -> &[Value] {
        &self.values
    }

    /// Whether `row` satisfies this predicate. A multi-valued field matches
    /// if any value does, except `ne`, which needs a value and none equal.
    pub fn matches(&self, row: &Row) -> bool {
        let values = row.get(&self.field);
        match self.op {
            Op::Exists => !values.is_empty(),
            Op::NotExists => values.is_empty(),
            Op::Ne => !values.is_empty() && !values.iter().any(|v| self.equals_any(v)),
            _ => values.iter().any(|v| self.value_matches(v)),
        }
    }

    /// Whether one value satisfies the operator (not used for `ne`,
    /// `exists` and `not_exists`, which look at the whole field).
    fn value_matches(&self, value: &Value) -> bool {
        match self.op {
            Op::Eq | Op::In | Op::Ne => self.equals_any(value),
            Op::Prefix => self.text_test(value, |s, p| s.starts_with(p)),
            Op::Suffix => self.text_test(value, |s, p| s.ends_with(p)),
            Op::Contains => self.text_test(value, |s, p| s.contains(p)),
            Op::Gt => self.range_test(value, Ordering::is_gt),
            Op::Gte => self.range_test(value, Ordering::is_ge),
            Op::Lt => self.range_test(value, Ordering::is_lt),
            Op::Lte => self.range_test(value, Ordering::is_le),
            Op::Exists => true,
            Op::NotExists => false,
        }
    }

    fn equals_any(&self, value: &Value) -> bool {
        self.values.iter().any(|operand| value.same(operand))
    }

    /// A string test; non-string values never match.
    fn text_test(&self, value: &Value, test: impl Fn(&str, &str) -> bool) -> bool {
        match (value, self.values.first()) {
            (Value::Str(s), Some(Value::Str(pattern))) => test(s, pattern),
            _ => false,
        }
    }

    /// A range test; only values of the operand's kind (number or string)
    /// can match.
    fn range_test(&self, value: &Value, want: fn(Ordering) -> bool) -> bool {
        match self.values.first() {
            Some(bound) if comparable(value, bound) => want(value.total_cmp(bound)),
            _ => false,
        }
    }
}

/// Whether a range operator may compare the two: numbers with numbers,
/// strings with strings.
fn comparable(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(_), Value::Str(_)) => true,
        _ => a.as_f64().is_some() && b.as_f64().is_some(),
    }
}

/// Checks predicates and types their operands. Refuses more than
/// [`MAX_PREDICATES`], empty or over-long field names, and operands whose
/// JSON type does not fit the operator.
pub fn compile(preds: &[Predicate]) -> Result<Vec<Compiled>, GatewayError> {
    if preds.len() > MAX_PREDICATES {
        return Err(GatewayError::LimitExceeded(format!(
            "{} predicates given, at most {MAX_PREDICATES} allowed; drop some, or merge \
             equality tests on one field into a single `in`",
            preds.len()
        )));
    }
    preds.iter().map(compile_one).collect()
}

fn compile_one(pred: &Predicate) -> Result<Compiled, GatewayError> {
    check_field_name(&pred.field, "a predicate")?;
    let values = match pred.op.operand() {
        Operand::Nothing => Vec::new(),
        Operand::Scalar => vec![scalar_operand(pred)?],
        Operand::List => list_operand(pred)?,
        Operand::Text => vec![text_operand(pred)?],
        Operand::Bound => vec![bound_operand(pred)?],
    };
    Ok(Compiled {
        field: pred.field.clone(),
        op: pred.op,
        values,
    })
}

/// Refuses an empty field name or one longer than [`MAX_FIELD_LEN`].
fn check_field_name(field: &str, owner: &str) -> Result<(), GatewayError> {
    if field.is_empty() {
        return Err(GatewayError::InvalidArgument(format!(
            "{owner} has an empty field name; name a field that catalog lists"
        )));
    }
    if field.len() > MAX_FIELD_LEN {
        return Err(GatewayError::InvalidArgument(format!(
            "{owner} names a field of {} bytes, at most {MAX_FIELD_LEN} allowed; name a field \
             that catalog lists",
            field.len()
        )));
    }
    Ok(())
}

/// A WrongType error naming the predicate's op and field.
fn wrong_type(pred: &Predicate, problem: &str, hint: &str) -> GatewayError {
    GatewayError::WrongType(format!(
        "op `{}` on field `{}` {problem}; {hint}",
        pred.op.name(),
        pred.field
    ))
}

/// The operand of `eq`/`ne`: one string, number or bool.
fn scalar_operand(pred: &Predicate) -> Result<Value, GatewayError> {
    let hint = match &pred.value {
        Json::Array(_) => "use `in` to match any of several values",
        Json::Null => "give a value, or use `exists`/`not_exists` to test for the field",
        _ => "give a string, number or bool",
    };
    Value::from_json(&pred.value).map_err(|e| {
        wrong_type(
            pred,
            &format!("needs a string, number or bool value: {e}"),
            hint,
        )
    })
}

/// The operand of `in`: a non-empty array of at most [`MAX_IN_VALUES`]
/// scalars.
fn list_operand(pred: &Predicate) -> Result<Vec<Value>, GatewayError> {
    let Json::Array(items) = &pred.value else {
        let got = format!(
            "needs an array of strings, numbers or bools, got {}",
            json_type(&pred.value)
        );
        return Err(wrong_type(pred, &got, "use `eq` for a single value"));
    };
    if items.is_empty() {
        return Err(wrong_type(
            pred,
            "needs a non-empty array",
            "list at least one value, or drop the predicate",
        ));
    }
    if items.len() > MAX_IN_VALUES {
        let got = format!(
            "lists {} values, at most {MAX_IN_VALUES} allowed",
            items.len()
        );
        return Err(wrong_type(
            pred,
            &got,
            "split the query, or use `prefix` or a range",
        ));
    }
    items
        .iter()
        .map(|item| {
            Value::from_json(item).map_err(|e| {
                wrong_type(
                    pred,
                    &format!("has an item that is not a scalar: {e}"),
                    "every item must be a string, number or bool",
                )
            })
        })
        .collect()
}

/// The operand of `prefix`/`suffix`/`contains`: one string.
fn text_operand(pred: &Predicate) -> Result<Value, GatewayError> {
    match &pred.value {
        Json::String(s) => Ok(Value::Str(s.clone())),
        other => Err(wrong_type(
            pred,
            &format!("needs a string value, got {}", json_type(other)),
            "use `eq` or a range op (`gt`, `lte`, ...) for numbers and bools",
        )),
    }
}

/// The operand of `gt`/`gte`/`lt`/`lte`: one number or string.
fn bound_operand(pred: &Predicate) -> Result<Value, GatewayError> {
    let hint = match &pred.value {
        Json::Bool(_) => "use `eq` for bools",
        Json::Array(_) => "give one bound, and combine `gte` with `lte` for a range",
        _ => "give a number or a string bound",
    };
    match &pred.value {
        Json::String(_) | Json::Number(_) => Value::from_json(&pred.value)
            .map_err(|e| wrong_type(pred, &format!("needs a number or string value: {e}"), hint)),
        other => Err(wrong_type(
            pred,
            &format!("needs a number or string value, got {}", json_type(other)),
            hint,
        )),
    }
}

/// Whether `row` satisfies every predicate (an empty list matches all).
pub fn matches(row: &Row, preds: &[Compiled]) -> bool {
    preds.iter().all(|p| p.matches(row))
}

/// The fields the predicates name, in order (with repeats), so the caller
/// can check that each is known.
pub fn fields_of(preds: &[Compiled]) -> impl Iterator<Item = &str> + '_ {
    preds.iter().map(Compiled::field)
}

// ---------------------------------------------------------------------------
// Sorting
// ---------------------------------------------------------------------------

/// One sort key: a field and a direction (ascending by default).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SortKey {
    /// The field to sort by.
    pub field: String,
    /// Ascending unless `desc`.
    #[serde(default)]
    pub direction: Direction,
}

/// A sort direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Smallest first.
    #[default]
    Asc,
    /// Largest first.
    Desc,
}

/// Refuses more than [`MAX_SORT_KEYS`] keys and empty or over-long field
/// names.
pub fn check_sort(keys: &[SortKey]) -> Result<(), GatewayError> {
    if keys.len() > MAX_SORT_KEYS {
        return Err(GatewayError::LimitExceeded(format!(
            "{} sort keys given, at most {MAX_SORT_KEYS} allowed; keep the most significant ones",
            keys.len()
        )));
    }
    keys.iter()
        .try_for_each(|key| check_field_name(&key.field, "a sort key"))
}

/// Sorts rows by `keys`, then by path (bytes, ascending) so pages are
/// deterministic. Per key, a row sorts by its smallest value when
/// ascending and its largest when descending; rows lacking the field sort
/// last in either direction. Values of different types order as
/// [`Value::total_cmp`] says (bools, then numbers, then strings).
pub fn sort_rows(rows: &mut [Row], keys: &[SortKey]) {
    let order = sorted_order(rows, keys);
    let mut taken: Vec<Row> = rows.iter_mut().map(std::mem::take).collect();
    for (slot, i) in rows.iter_mut().zip(order) {
        *slot = std::mem::take(&mut taken[i]);
    }
}

/// The indices of `rows` in sorted order (each index exactly once).
fn sorted_order(rows: &[Row], keys: &[SortKey]) -> Vec<usize> {
    let sort_values: Vec<Vec<Option<&Value>>> = rows
        .iter()
        .map(|row| keys.iter().map(|key| sort_value(row, key)).collect())
        .collect();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| {
        compare_sort_values(&sort_values[a], &sort_values[b], keys)
            .then_with(|| rows[a].path.as_bytes().cmp(rows[b].path.as_bytes()))
    });
    order
}

/// The value a row sorts by for one key: its smallest value ascending,
/// its largest descending, `None` when it lacks the field.
fn sort_value<'r>(row: &'r Row, key: &SortKey) -> Option<&'r Value> {
    let values = row.get(&key.field).iter();
    match key.direction {
        Direction::Asc => values.min_by(|a, b| a.total_cmp(b)),
        Direction::Desc => values.max_by(|a, b| a.total_cmp(b)),
    }
}

fn compare_sort_values(a: &[Option<&Value>], b: &[Option<&Value>], keys: &[SortKey]) -> Ordering {
    a.iter()
        .zip(b)
        .zip(keys)
        .map(|((x, y), key)| missing_last(*x, *y, key.direction))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// Orders two optional values in `direction`, with `None` last either way.
fn missing_last(a: Option<&Value>, b: Option<&Value>, direction: Direction) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => match direction {
            Direction::Asc => x.total_cmp(y),
            Direction::Desc => y.total_cmp(x),
        },
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

// ---------------------------------------------------------------------------
// Facets
// ---------------------------------------------------------------------------

/// The most frequent values of one field among the matched rows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Facet {
    /// The field counted.
    pub field: String,
    /// Most frequent first; ties by value ascending.
    pub values: Vec<FacetValue>,
    /// Distinct values seen (a lower bound when more than
    /// [`MAX_FACET_DISTINCT`] existed).
    pub distinct_count: u64,
    /// Whether values were left out (more than `top`, or the tracking cap).
    pub truncated: bool,
}

/// One facet value and how many rows have it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FacetValue {
    /// The value (numbers equal under [`Value::same`] are one value).
    pub value: Json,
    /// Rows that have the value.
    pub count: u64,
}

/// A hashable identity for a value under [`Value::same`]: numbers by their
/// f64 bits (with -0 folded into 0), so `1` and `1.0` are one value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Canon {
    Bool(bool),
    Num(u64),
    Str(String),
}

impl Canon {
    fn of(value: &Value) -> Canon {
        match value {
            Value::Bool(b) => Canon::Bool(*b),
            Value::Int(i) => Canon::number(*i as f64),
            Value::Float(f) => Canon::number(*f),
            Value::Str(s) => Canon::Str(s.clone()),
        }
    }

    fn number(f: f64) -> Canon {
        let f = if f == 0.0 { 0.0 } else { f };
        Canon::Num(f.to_bits())
    }
}

/// The distinct values of one field of one row, each with its identity.
fn distinct(values: &[Value]) -> Vec<(Canon, &Value)> {
    let mut keyed: Vec<(Canon, &Value)> = values.iter().map(|v| (Canon::of(v), v)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    keyed
}

/// Counts of one field's values, bounded to [`MAX_FACET_DISTINCT`].
#[derive(Default)]
struct Tally {
    counts: HashMap<Canon, (Value, u64)>,
    capped: bool,
}

impl Tally {
    fn add_row(&mut self, values: &[Value]) {
        for (key, value) in distinct(values) {
            if let Some(entry) = self.counts.get_mut(&key) {
                entry.1 += 1;
            } else if self.counts.len() < MAX_FACET_DISTINCT {
                self.counts.insert(key, (value.clone(), 1));
            } else {
                self.capped = true;
            }
        }
    }

    fn into_facet(self, field: &str, top: usize) -> Facet {
        let distinct_count = self.counts.len();
        let mut counted: Vec<(Value, u64)> = self.counts.into_values().collect();
        counted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.total_cmp(&b.0)));
        counted.truncate(top);
        Facet {
            field: field.to_string(),
            values: counted
                .into_iter()
                .map(|(value, count)| FacetValue {
                    value: value.to_json(),
                    count,
                })
                .collect(),
            distinct_count: distinct_count as u64,
            truncated: self.capped || distinct_count > top,
        }
    }
}

/// Counts, for each of `fields`, how many rows have each distinct value
/// (a row counts once per distinct value), keeping the `top` most frequent.
/// Returns one facet per field, in the order given.
pub fn facets<'a, I>(rows: I, fields: &[String], top: usize) -> Vec<Facet>
where
    I: IntoIterator<Item = &'a Row>,
{
    let mut tallies: Vec<Tally> = fields.iter().map(|_| Tally::default()).collect();
    for row in rows {
        for (tally, field) in tallies.iter_mut().zip(fields) {
            tally.add_row(row.get(field));
        }
    }
    tallies
        .into_iter()
        .zip(fields)
        .map(|(tally, field)| tally.into_facet(field, top))
        .collect()
}

// ---------------------------------------------------------------------------
// Aggregation
// ---------------------------------------------------------------------------

/// One measure of `aggregate`: `{"name": "bytes", "op": "sum", "field": "size"}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    /// The measure's name: its key in each group's `values`, and a sort key.
    pub name: String,
    /// What to compute.
    pub op: MeasureOp,
    /// The field to compute over (required except for `count`).
    #[serde(default)]
    pub field: Option<String>,
}

/// What a measure computes over a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureOp {
    /// Rows in the group (with `field`: rows that have the field).
    Count,
    /// Sum of the field's numeric values.
    Sum,
    /// Mean of the field's numeric values.
    Avg,
    /// Smallest value of the field.
    Min,
    /// Largest value of the field.
    Max,
}

impl MeasureOp {
    /// The measure op's wire name.
    pub fn name(self) -> &'static str {
        match self {
            MeasureOp::Count => "count",
            MeasureOp::Sum => "sum",
            MeasureOp::Avg => "avg",
            MeasureOp::Min => "min",
            MeasureOp::Max => "max",
        }
    }
}

/// Checks measures: 1 to [`MAX_MEASURES`] of them, names non-empty, at most
/// [`MAX_MEASURE_NAME`] bytes and unique, and a field on every measure but
/// `count`.
pub fn check_measures(measures: &[Measure]) -> Result<(), GatewayError> {
    if measures.is_empty() {
        return Err(GatewayError::InvalidArgument(
            "no measures given; add one, e.g. {\"name\": \"n\", \"op\": \"count\"}".to_string(),
        ));
    }
    if measures.len() > MAX_MEASURES {
        return Err(GatewayError::LimitExceeded(format!(
            "{} measures given, at most {MAX_MEASURES} allowed; split them across calls",
            measures.len()
        )));
    }
    for (i, measure) in measures.iter().enumerate() {
        check_measure(measure)?;
        if measures[..i].iter().any(|m| m.name == measure.name) {
            return Err(GatewayError::InvalidArgument(format!(
                "two measures are named `{}`; give each measure its own name",
                measure.name
            )));
        }
    }
    Ok(())
}

fn check_measure(measure: &Measure) -> Result<(), GatewayError> {
    if measure.name.is_empty() {
        return Err(GatewayError::InvalidArgument(format!(
            "a `{}` measure has an empty name; name it, e.g. \"total\"",
            measure.op.name()
        )));
    }
    if measure.name.len() > MAX_MEASURE_NAME {
        return Err(GatewayError::InvalidArgument(format!(
            "measure name of {} bytes, at most {MAX_MEASURE_NAME} allowed; use a shorter name",
            measure.name.len()
        )));
    }
    match measure.field.as_deref() {
        None if measure.op != MeasureOp::Count => Err(GatewayError::InvalidArgument(format!(
            "measure `{}` ({}) needs a field; add \"field\": \"<name>\"",
            measure.name,
            measure.op.name()
        ))),
        None => Ok(()),
        Some(field) => check_field_name(field, &format!("measure `{}`", measure.name)),
    }
}

/// One group of an `aggregate` answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    /// Each group_by field's value (null when the rows lack the field).
    pub key: Map<String, Json>,
    /// Each measure's result by name (null when there is nothing to
    /// compute it from).
    pub values: Map<String, Json>,
}

/// The answer of [`aggregate`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Aggregated {
    /// The groups, sorted, at most `limit` of them.
    pub groups: Vec<Group>,
    /// How many groups there were before the limit cut.
    pub group_count: u64,
    /// Whether the limit cut groups.
    pub truncated: bool,
}

/// Groups rows by `group_by` and computes `measures` per group, then sorts
/// (by `sort`, which names group fields or measure names; by group key
/// ascending otherwise, nulls last) and keeps `limit` groups.
///
/// A row whose group field has several values joins one group per distinct
/// value (the cartesian product over group fields); a missing field groups
/// as null. Without `group_by` there is exactly one group, even for no rows.
pub fn aggregate<'a, I>(
    rows: I,
    measures: &[Measure],
    group_by: &[String],
    sort: &[SortKey],
    limit: usize,
) -> Result<Aggregated, GatewayError>
where
    I: IntoIterator<Item = &'a Row>,
{
    check_measures(measures)?;
    check_group_by(group_by, measures)?;
    let columns = resolve_sort(sort, group_by, measures)?;
    let mut groups = Groups::new(measures);
    if group_by.is_empty() {
        groups.slot(Vec::new(), Vec::new())?;
    }
    for row in rows {
        groups.add_row(row, group_by)?;
    }
    let mut finished = groups.finish();
    finished.sort_by(|a, b| compare_groups(a, b, &columns));
    let group_count = finished.len();
    finished.truncate(limit);
    Ok(Aggregated {
        groups: finished
            .into_iter()
            .map(|g| g.into_json(group_by, measures))
            .collect(),
        group_count: group_count as u64,
        truncated: group_count > limit,
    })
}

/// Refuses more than [`MAX_GROUP_BY`] fields, bad or repeated names, and a
/// measure named like a group field (sort keys could not tell them apart).
fn check_group_by(group_by: &[String], measures: &[Measure]) -> Result<(), GatewayError> {
    if group_by.len() > MAX_GROUP_BY {
        return Err(GatewayError::LimitExceeded(format!(
            "{} group_by fields given, at most {MAX_GROUP_BY} allowed; group by fewer fields",
            group_by.len()
        )));
    }
    for (i, field) in group_by.iter().enumerate() {
        check_field_name(field, "group_by")?;
        if group_by[..i].contains(field) {
            return Err(GatewayError::InvalidArgument(format!(
                "group_by lists `{field}` twice; list each field once"
            )));
        }
        if measures.iter().any(|m| &m.name == field) {
            return Err(GatewayError::InvalidArgument(format!(
                "measure `{field}` has the name of a group_by field; rename the measure"
            )));
        }
    }
    Ok(())
}

/// What a group sort key refers to.
#[derive(Clone, Copy)]
enum Column {
    /// The i-th group_by field.
    Key(usize, Direction),
    /// The i-th measure.
    Measure(usize, Direction),
}

fn resolve_sort(
    sort: &[SortKey],
    group_by: &[String],
    measures: &[Measure],
) -> Result<Vec<Column>, GatewayError> {
    check_sort(sort)?;
    sort.iter()
        .map(|key| {
            if let Some(i) = group_by.iter().position(|f| f == &key.field) {
                Ok(Column::Key(i, key.direction))
            } else if let Some(i) = measures.iter().position(|m| m.name == key.field) {
                Ok(Column::Measure(i, key.direction))
            } else {
                Err(unknown_sort_column(&key.field, group_by, measures))
            }
        })
        .collect()
}

fn unknown_sort_column(field: &str, group_by: &[String], measures: &[Measure]) -> GatewayError {
    let allowed: Vec<String> = group_by
        .iter()
        .map(|f| format!("`{f}`"))
        .chain(measures.iter().map(|m| format!("`{}`", m.name)))
        .collect();
    GatewayError::UnknownField(format!(
        "cannot sort groups by `{field}`; sort by a group_by field or a measure name: {}",
        allowed.join(", ")
    ))
}

/// A measure's running state over one group.
#[derive(Clone, Debug)]
enum Acc {
    Count(u64),
    /// `int` stays `Some` while every summand is an Int and nothing
    /// overflowed; `float` always has the running total.
    Sum {
        int: Option<i64>,
        float: f64,
    },
    Avg {
        total: f64,
        n: u64,
    },
    Min(Option<Value>),
    Max(Option<Value>),
}

impl Acc {
    fn new(op: MeasureOp) -> Acc {
        match op {
            MeasureOp::Count => Acc::Count(0),
            MeasureOp::Sum => Acc::Sum {
                int: Some(0),
                float: 0.0,
            },
            MeasureOp::Avg => Acc::Avg { total: 0.0, n: 0 },
            MeasureOp::Min => Acc::Min(None),
            MeasureOp::Max => Acc::Max(None),
        }
    }

    /// Folds one row into the state.
    fn add(&mut self, measure: &Measure, row: &Row) {
        let values = measure.field.as_deref().map_or(&[][..], |f| row.get(f));
        match self {
            Acc::Count(n) => {
                if measure.field.is_none() || !values.is_empty() {
                    *n += 1;
                }
            }
            Acc::Sum { int, float } => {
                for value in values {
                    match value {
                        Value::Int(i) => {
                            *int = int.and_then(|sum| sum.checked_add(*i));
                            *float += *i as f64;
                        }
                        Value::Float(f) => {
                            *int = None;
                            *float += f;
                        }
                        _ => {}
                    }
                }
            }
            Acc::Avg { total, n } => {
                for x in values.iter().filter_map(Value::as_f64) {
                    *total += x;
                    *n += 1;
                }
            }
            Acc::Min(best) => keep_best(best, values, Ordering::is_lt),
            Acc::Max(best) => keep_best(best, values, Ordering::is_gt),
        }
    }

    /// The measure's result (`None` is JSON null).
    fn finish(self) -> Option<Value> {
        match self {
            Acc::Count(n) => Some(Value::Int(i64::try_from(n).unwrap_or(i64::MAX))),
            Acc::Sum { int: Some(i), .. } => Some(Value::Int(i)),
            Acc::Sum { int: None, float } => finite(float),
            Acc::Avg { n: 0, .. } => None,
            Acc::Avg { total, n } => finite(total / n as f64),
            Acc::Min(best) | Acc::Max(best) => best,
        }
    }
}

/// Replaces `best` by any value that orders `better` than it.
fn keep_best(best: &mut Option<Value>, values: &[Value], better: fn(Ordering) -> bool) {
    for value in values {
        if best.as_ref().is_none_or(|b| better(value.total_cmp(b))) {
            *best = Some(value.clone());
        }
    }
}

/// A float as a value, or `None` when it overflowed to infinity.
fn finite(f: f64) -> Option<Value> {
    f.is_finite().then_some(Value::Float(f))
}

/// A group while rows are being folded in.
struct GroupState {
    key: Vec<Option<Value>>,
    accs: Vec<Acc>,
}

/// A group with its measures computed.
struct Finished {
    key: Vec<Option<Value>>,
    values: Vec<Option<Value>>,
}

impl Finished {
    fn into_json(self, group_by: &[String], measures: &[Measure]) -> Group {
        let to_json = |v: Option<Value>| v.map_or(Json::Null, |v| v.to_json());
        Group {
            key: group_by
                .iter()
                .cloned()
                .zip(self.key.into_iter().map(to_json))
                .collect(),
            values: measures
                .iter()
                .map(|m| m.name.clone())
                .zip(self.values.into_iter().map(to_json))
                .collect(),
        }
    }
}

/// The groups built so far, bounded to [`MAX_GROUPS`].
struct Groups<'m> {
    measures: &'m [Measure],
    index: HashMap<Vec<Option<Canon>>, usize>,
    states: Vec<GroupState>,
}

/// One group field's value for a row: its identity and the value shown.
type KeyPart<'r> = Option<(Canon, &'r Value)>;

impl<'m> Groups<'m> {
    fn new(measures: &'m [Measure]) -> Groups<'m> {
        Groups {
            measures,
            index: HashMap::new(),
            states: Vec::new(),
        }
    }

    /// Folds a row into every group it belongs to.
    fn add_row(&mut self, row: &Row, group_by: &[String]) -> Result<(), GatewayError> {
        for combo in key_combos(row, group_by)? {
            let (canon, shown): (Vec<_>, Vec<_>) = combo
                .into_iter()
                .map(|part| match part {
                    Some((c, v)) => (Some(c), Some(v.clone())),
                    None => (None, None),
                })
                .unzip();
            let slot = self.slot(canon, shown)?;
            let state = &mut self.states[slot];
            for (acc, measure) in state.accs.iter_mut().zip(self.measures) {
                acc.add(measure, row);
            }
        }
        Ok(())
    }

    /// The index of the group with this key, created if new.
    fn slot(
        &mut self,
        canon: Vec<Option<Canon>>,
        shown: Vec<Option<Value>>,
    ) -> Result<usize, GatewayError> {
        if let Some(&slot) = self.index.get(&canon) {
            return Ok(slot);
        }
        if self.states.len() >= MAX_GROUPS {
            return Err(too_many_groups());
        }
        let slot = self.states.len();
        self.states.push(GroupState {
            key: shown,
            accs: self.measures.iter().map(|m| Acc::new(m.op)).collect(),
        });
        self.index.insert(canon, slot);
        Ok(slot)
    }

    fn finish(self) -> Vec<Finished> {
        self.states
            .into_iter()
            .map(|state| Finished {
                key: state.key,
                values: state.accs.into_iter().map(Acc::finish).collect(),
            })
            .collect()
    }
}

fn too_many_groups() -> GatewayError {
    GatewayError::LimitExceeded(format!(
        "more than {MAX_GROUPS} groups; add a predicate to narrow the rows, or group by fewer \
         (or less varied) fields"
    ))
}

/// Every group key a row belongs to: the cartesian product of each group
/// field's distinct values (a missing field contributes one null).
fn key_combos<'r>(
    row: &'r Row,
    group_by: &[String],
) -> Result<Vec<Vec<KeyPart<'r>>>, GatewayError> {
    let choices: Vec<Vec<KeyPart<'r>>> = group_by
        .iter()
        .map(|field| {
            let values = distinct(row.get(field));
            if values.is_empty() {
                vec![None]
            } else {
                values.into_iter().map(Some).collect()
            }
        })
        .collect();
    let combos = choices
        .iter()
        .fold(1usize, |n, options| n.saturating_mul(options.len()));
    if combos > MAX_GROUPS {
        return Err(too_many_groups());
    }
    let mut out: Vec<Vec<KeyPart<'r>>> = vec![Vec::with_capacity(group_by.len())];
    for options in &choices {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                options.iter().map(move |part| {
                    let mut key = prefix.clone();
                    key.push(part.clone());
                    key
                })
            })
            .collect();
    }
    Ok(out)
}

/// Orders groups by the sort columns, then by key ascending (nulls last).
fn compare_groups(a: &Finished, b: &Finished, columns: &[Column]) -> Ordering {
    columns
        .iter()
        .map(|column| match *column {
            Column::Key(i, dir) => missing_last(cell(&a.key, i), cell(&b.key, i), dir),
            Column::Measure(i, dir) => missing_last(cell(&a.values, i), cell(&b.values, i), dir),
        })
        .find(|o| o.is_ne())
        .unwrap_or_else(|| compare_keys(&a.key, &b.key))
}

fn compare_keys(a: &[Option<Value>], b: &[Option<Value>]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| missing_last(x.as_ref(), y.as_ref(), Direction::Asc))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

fn cell(cells: &[Option<Value>], i: usize) -> Option<&Value> {
    cells.get(i).and_then(Option::as_ref)
}

// ---------------------------------------------------------------------------
// Projection
// ---------------------------------------------------------------------------

/// The row's `fields` as JSON: one value as the scalar, several as an
/// array; fields the row lacks are left out.
pub fn project(row: &Row, fields: &[String]) -> Map<String, Json> {
    let mut out = Map::new();
    for field in fields {
        match row.get(field) {
            [] => {}
            [one] => {
                out.insert(field.clone(), one.to_json());
            }
            many => {
                out.insert(field.clone(), many.iter().map(Value::to_json).collect());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Cursors
// ---------------------------------------------------------------------------

/// Length of a query fingerprint, in hex characters.
const FINGERPRINT_LEN: usize = 16;

/// Identifies a query across pages: the first 16 hex characters of the
/// SHA-256 of its JSON with the `cursor` and `limit` keys removed (so the
/// page size may change between pages).
pub fn fingerprint(query: &Json) -> String {
    let mut query = query.clone();
    if let Json::Object(map) = &mut query {
        map.remove("cursor");
        map.remove("limit");
    }
    // serde_json is built without `preserve_order`, so objects are BTreeMaps
    // and serialize with their keys sorted: equal queries give equal text
    // whatever order the agent wrote their keys in.
    let digest = Sha256::digest(query.to_string().as_bytes());
    let mut hex = String::with_capacity(FINGERPRINT_LEN);
    for byte in digest.iter().take(FINGERPRINT_LEN / 2) {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The cursor of the page starting at `offset` of the query with
/// `fingerprint`: `"{fingerprint}.{offset}"`.
pub fn encode_cursor(fingerprint: &str, offset: u64) -> String {
    format!("{fingerprint}.{offset}")
}

/// The offset a cursor resumes at, after checking it belongs to the query
/// with `fingerprint`.
pub fn decode_cursor(cursor: &str, fingerprint: &str) -> Result<u64, GatewayError> {
    let malformed = || {
        GatewayError::BadCursor(
            "malformed cursor; pass the cursor exactly as the previous page returned it, or \
             start again without a cursor"
                .to_string(),
        )
    };
    let (owner, offset) = cursor.rsplit_once('.').ok_or_else(malformed)?;
    let well_formed =
        !owner.is_empty() && !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        return Err(malformed());
    }
    let offset: u64 = offset.parse().map_err(|_| malformed())?;
    if owner != fingerprint {
        return Err(GatewayError::BadCursor(
            "this cursor belongs to another query; start again without a cursor".to_string(),
        ));
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(path: &str, fields: &[(&str, Vec<Value>)]) -> Row {
        Row {
            path: path.to_string(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    fn s(text: &str) -> Value {
        Value::Str(text.to_string())
    }

    fn pred(field: &str, op: Op, value: Json) -> Predicate {
        Predicate {
            field: field.to_string(),
            op,
            value,
        }
    }

    fn one(field: &str, op: Op, value: Json) -> Vec<Compiled> {
        compile(&[pred(field, op, value)]).expect("valid predicate")
    }

    fn hits(r: &Row, field: &str, op: Op, value: Json) -> bool {
        matches(r, &one(field, op, value))
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn paths(rows: &[Row]) -> Vec<&str> {
        rows.iter().map(|r| r.path.as_str()).collect()
    }

    // ----- predicates -----

    #[test]
    fn op_names_round_trip_through_serde() {
        for op in Op::ALL {
            let parsed: Op = serde_json::from_value(json!(op.name())).expect("known op");
            assert_eq!(parsed, op);
        }
        let aliased: Op = serde_json::from_value(json!("not_equal")).expect("alias");
        assert_eq!(aliased, Op::Ne);
        let aliased: Op = serde_json::from_value(json!("greater_than")).expect("alias");
        assert_eq!(aliased, Op::Gt);
        let aliased: Op = serde_json::from_value(json!("less_than")).expect("alias");
        assert_eq!(aliased, Op::Lt);
        assert!(serde_json::from_value::<Op>(json!("like")).is_err());
    }

    #[test]
    fn predicate_json_defaults_value_and_denies_unknown_keys() {
        let p: Predicate =
            serde_json::from_value(json!({"field": "a", "op": "exists"})).expect("parses");
        assert_eq!(p.value, Json::Null);
        assert!(compile(&[p]).is_ok());
        let bad = serde_json::from_value::<Predicate>(json!({"field": "a", "op": "eq", "x": 1}));
        assert!(bad.is_err());
    }

    #[test]
    fn eq_and_in() {
        let r = row(
            "/a",
            &[("kind", vec![s("log")]), ("n", vec![Value::Int(3)])],
        );
        assert!(hits(&r, "kind", Op::Eq, json!("log")));
        assert!(!hits(&r, "kind", Op::Eq, json!("Log")));
        assert!(!hits(&r, "missing", Op::Eq, json!("log")));
        assert!(hits(&r, "kind", Op::In, json!(["csv", "log"])));
        assert!(!hits(&r, "kind", Op::In, json!(["csv", 3])));
        assert!(hits(&r, "n", Op::In, json!(["3", 3.0])));
        assert!(!hits(&r, "missing", Op::In, json!(["log"])));
    }

    #[test]
    fn numbers_are_equal_across_int_and_float_but_not_strings() {
        let r = row(
            "/a",
            &[("n", vec![Value::Int(1)]), ("f", vec![Value::Float(2.0)])],
        );
        assert!(hits(&r, "n", Op::Eq, json!(1.0)));
        assert!(hits(&r, "f", Op::Eq, json!(2)));
        assert!(!hits(&r, "n", Op::Eq, json!("1")));
        assert!(hits(&r, "n", Op::Gte, json!(1.0)));
    }

    #[test]
    fn bool_equality() {
        let r = row("/a", &[("ok", vec![Value::Bool(true)])]);
        assert!(hits(&r, "ok", Op::Eq, json!(true)));
        assert!(!hits(&r, "ok", Op::Eq, json!(false)));
        assert!(!hits(&r, "ok", Op::Eq, json!(1)));
        assert!(hits(&r, "ok", Op::Ne, json!(false)));
    }

    #[test]
    fn multi_valued_fields_match_if_any_value_does() {
        let r = row(
            "/a",
            &[
                ("tag", vec![s("red"), s("blue")]),
                ("n", vec![Value::Int(1), Value::Int(10)]),
            ],
        );
        assert!(hits(&r, "tag", Op::Eq, json!("blue")));
        assert!(hits(&r, "tag", Op::Prefix, json!("bl")));
        assert!(hits(&r, "n", Op::Gt, json!(5)));
        assert!(hits(&r, "n", Op::Lt, json!(5)));
        assert!(!hits(&r, "n", Op::Gt, json!(10)));
    }

    #[test]
    fn ne_needs_a_value_and_none_equal() {
        let r = row("/a", &[("tag", vec![s("red"), s("blue")])]);
        assert!(!hits(&r, "tag", Op::Ne, json!("red")), "one value equals");
        assert!(hits(&r, "tag", Op::Ne, json!("green")));
        let empty = row("/b", &[]);
        assert!(
            !hits(&empty, "tag", Op::Ne, json!("green")),
            "missing field"
        );
        let n = row("/c", &[("n", vec![Value::Float(1.0)])]);
        assert!(!hits(&n, "n", Op::Ne, json!(1)));
        assert!(hits(&n, "n", Op::Ne, json!("1")));
    }

    #[test]
    fn string_ops_are_case_sensitive_and_only_match_strings() {
        let r = row(
            "/a",
            &[
                ("name", vec![s("Report.csv")]),
                ("n", vec![Value::Int(123)]),
            ],
        );
        assert!(hits(&r, "name", Op::Prefix, json!("Rep")));
        assert!(!hits(&r, "name", Op::Prefix, json!("rep")));
        assert!(hits(&r, "name", Op::Suffix, json!(".csv")));
        assert!(!hits(&r, "name", Op::Suffix, json!(".CSV")));
        assert!(hits(&r, "name", Op::Contains, json!("port")));
        assert!(hits(&r, "name", Op::Contains, json!("")));
        assert!(
            !hits(&r, "n", Op::Prefix, json!("12")),
            "numbers are not strings"
        );
        assert!(!hits(&r, "missing", Op::Contains, json!("")));
    }

    #[test]
    fn ranges_compare_numbers_with_numbers_and_strings_with_strings() {
        let r = row(
            "/a",
            &[
                ("n", vec![Value::Int(7)]),
                ("f", vec![Value::Float(2.5)]),
                ("d", vec![s("2024-05-01")]),
                ("b", vec![Value::Bool(true)]),
            ],
        );
        assert!(hits(&r, "n", Op::Gt, json!(5)));
        assert!(hits(&r, "n", Op::Gte, json!(7)));
        assert!(!hits(&r, "n", Op::Gt, json!(7)));
        assert!(hits(&r, "n", Op::Lte, json!(7.0)));
        assert!(hits(&r, "n", Op::Lt, json!(7.5)));
        assert!(hits(&r, "f", Op::Gt, json!(2)));
        assert!(!hits(&r, "f", Op::Lt, json!(2)));
        assert!(hits(&r, "d", Op::Gte, json!("2024-01-01")));
        assert!(hits(&r, "d", Op::Lt, json!("2025")));
        assert!(
            !hits(&r, "d", Op::Gt, json!(5)),
            "a string never satisfies gt 5"
        );
        assert!(!hits(&r, "d", Op::Lt, json!(5)), "nor lt 5");
        assert!(
            !hits(&r, "n", Op::Lt, json!("zzz")),
            "a number never satisfies lt \"zzz\""
        );
        assert!(!hits(&r, "b", Op::Gte, json!(0)), "bools are not numbers");
        assert!(!hits(&r, "missing", Op::Gt, json!(0)));
    }

    #[test]
    fn exists_and_not_exists() {
        let r = row("/a", &[("a", vec![s("x")]), ("empty", vec![])]);
        assert!(hits(&r, "a", Op::Exists, Json::Null));
        assert!(!hits(&r, "a", Op::NotExists, Json::Null));
        assert!(!hits(&r, "b", Op::Exists, Json::Null));
        assert!(hits(&r, "b", Op::NotExists, Json::Null));
        assert!(
            !hits(&r, "empty", Op::Exists, Json::Null),
            "an empty list is no value"
        );
        assert!(
            hits(&r, "a", Op::Exists, json!([1, 2])),
            "a stray value is ignored"
        );
    }

    #[test]
    fn predicates_are_a_conjunction() {
        let r = row(
            "/a",
            &[("kind", vec![s("log")]), ("n", vec![Value::Int(3)])],
        );
        let both = compile(&[
            pred("kind", Op::Eq, json!("log")),
            pred("n", Op::Gt, json!(1)),
        ])
        .expect("valid");
        assert!(matches(&r, &both));
        let one_fails = compile(&[
            pred("kind", Op::Eq, json!("log")),
            pred("n", Op::Gt, json!(5)),
        ])
        .expect("valid");
        assert!(!matches(&r, &one_fails));
        assert!(matches(&r, &[]));
        assert_eq!(fields_of(&both).collect::<Vec<_>>(), vec!["kind", "n"]);
        assert_eq!(both[1].op(), Op::Gt);
    }

    fn compile_err(p: Predicate) -> GatewayError {
        compile(&[p]).expect_err("should be refused")
    }

    #[test]
    fn compile_refuses_bad_operands() {
        let e = compile_err(pred("ok", Op::Gt, json!(true)));
        assert_eq!(e.code(), "wrong_type");
        assert!(e.to_string().contains("use `eq` for bools"), "{e}");
        assert!(
            e.to_string().contains("`gt`") && e.to_string().contains("`ok`"),
            "{e}"
        );

        let e = compile_err(pred("n", Op::Lt, json!([1, 2])));
        assert_eq!(e.code(), "wrong_type");

        let e = compile_err(pred("kind", Op::In, json!("log")));
        assert_eq!(e.code(), "wrong_type");
        assert!(e.to_string().contains("use `eq`"), "{e}");
        assert_eq!(
            compile_err(pred("kind", Op::In, json!([]))).code(),
            "wrong_type"
        );
        assert_eq!(
            compile_err(pred("kind", Op::In, json!([1, [2]]))).code(),
            "wrong_type"
        );
        assert_eq!(
            compile_err(pred("kind", Op::In, json!([null]))).code(),
            "wrong_type"
        );
        let many: Vec<i64> = (0..1001).collect();
        assert_eq!(
            compile_err(pred("kind", Op::In, json!(many))).code(),
            "wrong_type"
        );
        let enough: Vec<i64> = (0..1000).collect();
        assert!(compile(&[pred("kind", Op::In, json!(enough))]).is_ok());

        let e = compile_err(pred("kind", Op::Eq, json!(["a", "b"])));
        assert!(e.to_string().contains("use `in`"), "{e}");
        assert_eq!(
            compile_err(pred("kind", Op::Eq, Json::Null)).code(),
            "wrong_type"
        );
        assert_eq!(
            compile_err(pred("kind", Op::Ne, json!({"a": 1}))).code(),
            "wrong_type"
        );

        assert_eq!(
            compile_err(pred("name", Op::Prefix, json!(1))).code(),
            "wrong_type"
        );
        assert_eq!(
            compile_err(pred("name", Op::Contains, Json::Null)).code(),
            "wrong_type"
        );
    }

    #[test]
    fn compile_refuses_bad_fields_and_too_many_predicates() {
        assert_eq!(
            compile_err(pred("", Op::Exists, Json::Null)).code(),
            "invalid_argument"
        );
        let long = "x".repeat(MAX_FIELD_LEN + 1);
        assert_eq!(
            compile_err(pred(&long, Op::Exists, Json::Null)).code(),
            "invalid_argument"
        );
        let ok_len = "x".repeat(MAX_FIELD_LEN);
        assert!(compile(&[pred(&ok_len, Op::Exists, Json::Null)]).is_ok());

        let many: Vec<Predicate> = (0..=MAX_PREDICATES)
            .map(|i| pred(&format!("f{i}"), Op::Exists, Json::Null))
            .collect();
        let e = compile(&many).expect_err("too many");
        assert_eq!(e.code(), "limit_exceeded");
        assert!(compile(&many[..MAX_PREDICATES]).is_ok());
    }

    // ----- sorting -----

    fn key(field: &str, direction: Direction) -> SortKey {
        SortKey {
            field: field.to_string(),
            direction,
        }
    }

    #[test]
    fn sort_puts_missing_values_last_in_both_directions() {
        let rows = vec![
            row("/none", &[]),
            row("/two", &[("n", vec![Value::Int(2)])]),
            row("/ten", &[("n", vec![Value::Float(10.0)])]),
            row("/one", &[("n", vec![Value::Int(1)])]),
        ];
        let mut asc = rows.clone();
        sort_rows(&mut asc, &[key("n", Direction::Asc)]);
        assert_eq!(paths(&asc), vec!["/one", "/two", "/ten", "/none"]);
        let mut desc = rows;
        sort_rows(&mut desc, &[key("n", Direction::Desc)]);
        assert_eq!(paths(&desc), vec!["/ten", "/two", "/one", "/none"]);
    }

    #[test]
    fn sort_ties_break_by_path_and_later_keys() {
        let rows = vec![
            row("/c", &[("k", vec![s("a")]), ("n", vec![Value::Int(1)])]),
            row("/b", &[("k", vec![s("a")]), ("n", vec![Value::Int(1)])]),
            row("/a", &[("k", vec![s("b")])]),
            row("/d", &[("k", vec![s("a")]), ("n", vec![Value::Int(5)])]),
            row("/e", &[]),
            row("/B", &[]),
        ];
        let mut sorted = rows.clone();
        sort_rows(
            &mut sorted,
            &[key("k", Direction::Asc), key("n", Direction::Desc)],
        );
        assert_eq!(paths(&sorted), vec!["/d", "/b", "/c", "/a", "/B", "/e"]);
        let mut by_path = rows;
        sort_rows(&mut by_path, &[]);
        assert_eq!(paths(&by_path), vec!["/B", "/a", "/b", "/c", "/d", "/e"]);
    }

    #[test]
    fn multi_valued_rows_sort_by_min_ascending_and_max_descending() {
        let rows = vec![
            row("/wide", &[("n", vec![Value::Int(1), Value::Int(9)])]),
            row("/mid", &[("n", vec![Value::Int(5)])]),
        ];
        let mut asc = rows.clone();
        sort_rows(&mut asc, &[key("n", Direction::Asc)]);
        assert_eq!(paths(&asc), vec!["/wide", "/mid"]);
        let mut desc = rows;
        sort_rows(&mut desc, &[key("n", Direction::Desc)]);
        assert_eq!(paths(&desc), vec!["/wide", "/mid"]);
    }

    #[test]
    fn check_sort_limits_keys() {
        let keys: Vec<SortKey> = (0..=MAX_SORT_KEYS)
            .map(|i| key(&format!("f{i}"), Direction::Asc))
            .collect();
        assert_eq!(
            check_sort(&keys).expect_err("too many").code(),
            "limit_exceeded"
        );
        assert!(check_sort(&keys[..MAX_SORT_KEYS]).is_ok());
        assert_eq!(
            check_sort(&[key("", Direction::Asc)])
                .expect_err("empty")
                .code(),
            "invalid_argument"
        );
        let parsed: SortKey = serde_json::from_value(json!({"field": "n"})).expect("parses");
        assert_eq!(parsed.direction, Direction::Asc);
        let parsed: SortKey =
            serde_json::from_value(json!({"field": "n", "direction": "desc"})).expect("parses");
        assert_eq!(parsed.direction, Direction::Desc);
    }

    // ----- facets -----

    #[test]
    fn facets_count_rows_and_order_by_count_then_value() {
        let rows = vec![
            row(
                "/1",
                &[
                    ("kind", vec![s("log"), s("log")]),
                    ("n", vec![Value::Int(1)]),
                ],
            ),
            row(
                "/2",
                &[("kind", vec![s("csv")]), ("n", vec![Value::Float(1.0)])],
            ),
            row(
                "/3",
                &[("kind", vec![s("log")]), ("n", vec![Value::Int(2)])],
            ),
            row("/4", &[("kind", vec![s("bin")])]),
            row("/5", &[]),
        ];
        let out = facets(&rows, &strings(&["kind", "n", "none"]), 10);
        assert_eq!(out.len(), 3);
        let kind = &out[0];
        assert_eq!(kind.field, "kind");
        assert_eq!(
            kind.values,
            vec![
                FacetValue {
                    value: json!("log"),
                    count: 2
                },
                FacetValue {
                    value: json!("bin"),
                    count: 1
                },
                FacetValue {
                    value: json!("csv"),
                    count: 1
                },
            ]
        );
        assert_eq!(kind.distinct_count, 3);
        assert!(!kind.truncated);
        let n = &out[1];
        assert_eq!(n.values.len(), 2, "1 and 1.0 are one value");
        assert_eq!(n.values[0].count, 2);
        assert_eq!(n.values[0].value.as_f64(), Some(1.0));
        assert_eq!(out[2].distinct_count, 0);
        assert!(out[2].values.is_empty());
    }

    #[test]
    fn facets_truncate_to_top() {
        let rows: Vec<Row> = (0..5)
            .map(|i| row(&format!("/{i}"), &[("n", vec![Value::Int(i % 3)])]))
            .collect();
        let out = facets(&rows, &strings(&["n"]), 2);
        assert_eq!(out[0].distinct_count, 3);
        assert!(out[0].truncated);
        assert_eq!(
            out[0].values,
            vec![
                FacetValue {
                    value: json!(0),
                    count: 2
                },
                FacetValue {
                    value: json!(1),
                    count: 2
                },
            ]
        );
        let none = facets(&rows, &strings(&["n"]), 0);
        assert!(none[0].values.is_empty() && none[0].truncated);
    }

    #[test]
    fn facets_stop_tracking_new_values_at_the_cap() {
        let rows: Vec<Row> = (0..=MAX_FACET_DISTINCT as i64)
            .map(|i| row("/r", &[("n", vec![Value::Int(i)])]))
            .collect();
        let out = facets(&rows, &strings(&["n"]), 3);
        assert_eq!(out[0].distinct_count, MAX_FACET_DISTINCT as u64);
        assert!(out[0].truncated);
        assert_eq!(out[0].values.len(), 3);
    }

    // ----- aggregation -----

    fn measure(name: &str, op: MeasureOp, field: Option<&str>) -> Measure {
        Measure {
            name: name.to_string(),
            op,
            field: field.map(str::to_string),
        }
    }

    fn sample() -> Vec<Row> {
        vec![
            row(
                "/1",
                &[("kind", vec![s("log")]), ("size", vec![Value::Int(10)])],
            ),
            row(
                "/2",
                &[("kind", vec![s("log")]), ("size", vec![Value::Int(30)])],
            ),
            row(
                "/3",
                &[("kind", vec![s("csv")]), ("size", vec![Value::Float(2.5)])],
            ),
            row("/4", &[("size", vec![s("big")])]),
        ]
    }

    fn all_measures() -> Vec<Measure> {
        vec![
            measure("n", MeasureOp::Count, None),
            measure("sized", MeasureOp::Count, Some("size")),
            measure("total", MeasureOp::Sum, Some("size")),
            measure("mean", MeasureOp::Avg, Some("size")),
            measure("lo", MeasureOp::Min, Some("size")),
            measure("hi", MeasureOp::Max, Some("size")),
        ]
    }

    #[test]
    fn aggregate_groups_by_a_field_with_nulls_last() {
        let rows = sample();
        let out = aggregate(&rows, &all_measures(), &strings(&["kind"]), &[], 10).expect("ok");
        assert_eq!(out.group_count, 3);
        assert!(!out.truncated);
        let keys: Vec<&Json> = out.groups.iter().map(|g| &g.key["kind"]).collect();
        assert_eq!(keys, vec![&json!("csv"), &json!("log"), &Json::Null]);
        let log = &out.groups[1].values;
        assert_eq!(log["n"], json!(2));
        assert_eq!(log["total"], json!(40), "int sums stay ints");
        assert_eq!(log["mean"], json!(20.0));
        assert_eq!(log["lo"], json!(10));
        assert_eq!(log["hi"], json!(30));
        let csv = &out.groups[0].values;
        assert_eq!(csv["total"], json!(2.5));
        let none = &out.groups[2].values;
        assert_eq!(none["n"], json!(1));
        assert_eq!(none["sized"], json!(1));
        assert_eq!(none["total"], json!(0), "strings are not summed");
        assert_eq!(none["mean"], Json::Null);
        assert_eq!(none["lo"], json!("big"));
    }

    #[test]
    fn aggregate_without_group_by_is_one_group_even_when_empty() {
        let out = aggregate(&[], &all_measures(), &[], &[], 10).expect("ok");
        assert_eq!(out.group_count, 1);
        assert!(out.groups[0].key.is_empty());
        let v = &out.groups[0].values;
        assert_eq!(v["n"], json!(0));
        assert_eq!(v["total"], json!(0));
        assert_eq!(v["mean"], Json::Null);
        assert_eq!(v["lo"], Json::Null);

        let rows = sample();
        let out = aggregate(&rows, &all_measures(), &[], &[], 10).expect("ok");
        let v = &out.groups[0].values;
        assert_eq!(v["n"], json!(4));
        assert_eq!(v["sized"], json!(4));
        assert_eq!(v["total"], json!(42.5));
        assert_eq!(v["lo"], json!(2.5));
        assert_eq!(v["hi"], json!("big"), "strings order after numbers");
    }

    #[test]
    fn aggregate_with_no_rows_and_group_by_has_no_groups() {
        let out = aggregate(&[], &all_measures(), &strings(&["kind"]), &[], 10).expect("ok");
        assert_eq!(out.group_count, 0);
        assert!(out.groups.is_empty());
    }

    #[test]
    fn multi_valued_group_fields_join_every_group() {
        let rows = vec![
            row(
                "/1",
                &[
                    ("tag", vec![s("a"), s("b"), s("a")]),
                    ("team", vec![s("x")]),
                ],
            ),
            row(
                "/2",
                &[("tag", vec![s("b")]), ("team", vec![s("x"), s("y")])],
            ),
        ];
        let out = aggregate(
            &rows,
            &[measure("n", MeasureOp::Count, None)],
            &strings(&["tag", "team"]),
            &[],
            10,
        )
        .expect("ok");
        let got: Vec<(Json, Json, Json)> = out
            .groups
            .iter()
            .map(|g| {
                (
                    g.key["tag"].clone(),
                    g.key["team"].clone(),
                    g.values["n"].clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (json!("a"), json!("x"), json!(1)),
                (json!("b"), json!("x"), json!(2)),
                (json!("b"), json!("y"), json!(1)),
            ]
        );
    }

    #[test]
    fn aggregate_sorts_by_measures_and_truncates() {
        let rows = sample();
        let sort = [key("n", Direction::Desc)];
        let out = aggregate(
            &rows,
            &[measure("n", MeasureOp::Count, None)],
            &strings(&["kind"]),
            &sort,
            2,
        )
        .expect("ok");
        assert_eq!(out.group_count, 3);
        assert!(out.truncated);
        assert_eq!(out.groups.len(), 2);
        assert_eq!(out.groups[0].key["kind"], json!("log"));
        assert_eq!(
            out.groups[1].key["kind"],
            json!("csv"),
            "ties by key ascending"
        );

        let sort = [key("kind", Direction::Desc)];
        let out = aggregate(
            &rows,
            &[measure("n", MeasureOp::Count, None)],
            &strings(&["kind"]),
            &sort,
            10,
        )
        .expect("ok");
        let keys: Vec<&Json> = out.groups.iter().map(|g| &g.key["kind"]).collect();
        assert_eq!(keys, vec![&json!("log"), &json!("csv"), &Json::Null]);
    }

    #[test]
    fn aggregate_refuses_unknown_sort_and_bad_group_by() {
        let rows = sample();
        let n = [measure("n", MeasureOp::Count, None)];
        let e = aggregate(
            &rows,
            &n,
            &strings(&["kind"]),
            &[key("size", Direction::Asc)],
            10,
        )
        .expect_err("unknown sort");
        assert_eq!(e.code(), "unknown_field");
        assert!(e.to_string().contains("`kind`, `n`"), "{e}");

        let five = strings(&["a", "b", "c", "d", "e"]);
        assert_eq!(
            aggregate(&rows, &n, &five, &[], 10)
                .expect_err("too many")
                .code(),
            "limit_exceeded"
        );
        assert_eq!(
            aggregate(&rows, &n, &strings(&["a", "a"]), &[], 10)
                .expect_err("dup")
                .code(),
            "invalid_argument"
        );
        assert_eq!(
            aggregate(&rows, &n, &strings(&["n"]), &[], 10)
                .expect_err("clash")
                .code(),
            "invalid_argument"
        );
    }

    #[test]
    fn int_sums_overflow_into_floats() {
        let rows = vec![
            row("/1", &[("n", vec![Value::Int(i64::MAX)])]),
            row("/2", &[("n", vec![Value::Int(1)])]),
        ];
        let out = aggregate(
            &rows,
            &[measure("t", MeasureOp::Sum, Some("n"))],
            &[],
            &[],
            1,
        )
        .expect("ok");
        let total = &out.groups[0].values["t"];
        assert!(total.is_f64(), "{total}");
    }

    #[test]
    fn too_many_groups_is_refused() {
        let values: Vec<Value> = (0..400).map(Value::Int).collect();
        let rows = vec![row("/1", &[("a", values.clone()), ("b", values)])];
        let e = aggregate(
            &rows,
            &[measure("n", MeasureOp::Count, None)],
            &strings(&["a", "b"]),
            &[],
            10,
        )
        .expect_err("160000 groups");
        assert_eq!(e.code(), "limit_exceeded");
        assert!(e.to_string().contains("predicate"), "{e}");
    }

    #[test]
    fn too_many_groups_across_rows_is_refused() {
        let rows: Vec<Row> = (0..=MAX_GROUPS as i64)
            .map(|i| row("/r", &[("n", vec![Value::Int(i)])]))
            .collect();
        let n = [measure("c", MeasureOp::Count, None)];
        let e = aggregate(&rows, &n, &strings(&["n"]), &[], 10).expect_err("too many");
        assert_eq!(e.code(), "limit_exceeded");
        let out = aggregate(&rows[1..], &n, &strings(&["n"]), &[], 10).expect("at the cap");
        assert_eq!(out.group_count, MAX_GROUPS as u64);
        assert_eq!(out.groups[0].key["n"], json!(1));
    }

    #[test]
    fn measures_are_validated() {
        let err = |m: Vec<Measure>| check_measures(&m).expect_err("refused");
        assert_eq!(err(vec![]).code(), "invalid_argument");
        let many: Vec<Measure> = (0..=MAX_MEASURES)
            .map(|i| measure(&format!("m{i}"), MeasureOp::Count, None))
            .collect();
        assert_eq!(err(many.clone()).code(), "limit_exceeded");
        assert!(check_measures(&many[..MAX_MEASURES]).is_ok());
        assert_eq!(
            err(vec![measure("", MeasureOp::Count, None)]).code(),
            "invalid_argument"
        );
        let long = "m".repeat(MAX_MEASURE_NAME + 1);
        assert_eq!(
            err(vec![measure(&long, MeasureOp::Count, None)]).code(),
            "invalid_argument"
        );
        let dup = vec![
            measure("x", MeasureOp::Count, None),
            measure("x", MeasureOp::Max, Some("size")),
        ];
        assert_eq!(err(dup).code(), "invalid_argument");
        let e = err(vec![measure("total", MeasureOp::Sum, None)]);
        assert_eq!(e.code(), "invalid_argument");
        assert!(e.to_string().contains("`total`"), "{e}");

        let parsed: Measure =
            serde_json::from_value(json!({"name": "n", "op": "count"})).expect("parses");
        assert_eq!(parsed, measure("n", MeasureOp::Count, None));
        assert!(serde_json::from_value::<Measure>(json!({"name": "n", "op": "median"})).is_err());
    }

    // ----- projection -----

    #[test]
    fn project_shapes_values() {
        let r = row(
            "/a",
            &[("one", vec![Value::Int(1)]), ("two", vec![s("a"), s("b")])],
        );
        let out = project(&r, &strings(&["one", "two", "none"]));
        assert_eq!(Json::Object(out), json!({"one": 1, "two": ["a", "b"]}));
    }

    // ----- cursors -----

    #[test]
    fn cursors_round_trip_and_refuse_other_queries() {
        let q = json!({"path": "/logs", "predicates": [], "limit": 10, "cursor": "x"});
        let same = json!({"predicates": [], "path": "/logs", "limit": 50});
        let other = json!({"path": "/data", "predicates": []});
        let fp = fingerprint(&q);
        assert_eq!(fp.len(), 16);
        assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            fp,
            fingerprint(&same),
            "cursor, limit and key order do not matter"
        );
        assert_ne!(fp, fingerprint(&other));

        let cursor = encode_cursor(&fp, 200);
        assert_eq!(decode_cursor(&cursor, &fp).expect("round trip"), 200);
        let e = decode_cursor(&cursor, &fingerprint(&other)).expect_err("mismatch");
        assert_eq!(e.code(), "bad_cursor");
        assert!(e.to_string().contains("another query"), "{e}");
        let (empty_offset, negative, junk) =
            (format!("{fp}."), format!("{fp}.-1"), format!("{fp}.1x"));
        for bad in ["", "abc", ".1", &empty_offset, &negative, &junk] {
            let e = decode_cursor(bad, &fp).expect_err("malformed");
            assert!(e.to_string().contains("malformed"), "{bad}: {e}");
        }
        assert_eq!(
            decode_cursor("x.1", &fp).expect_err("not ours").code(),
            "bad_cursor"
        );
        let huge = format!("{fp}.99999999999999999999999");
        assert!(decode_cursor(&huge, &fp).is_err());
        assert_eq!(fingerprint(&json!([1, 2])).len(), 16);
    }

    // ----- properties -----

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = super::Value> {
            prop_oneof![
                any::<bool>().prop_map(super::Value::Bool),
                (-5i64..5).prop_map(super::Value::Int),
                any::<i64>().prop_map(super::Value::Int),
                (-5.0f64..5.0).prop_map(super::Value::Float),
                "[ab]{0,3}".prop_map(super::Value::Str),
            ]
        }

        fn row_strategy() -> impl Strategy<Value = Row> {
            (
                "/[a-c]{0,3}",
                proptest::collection::btree_map(
                    "[abc]",
                    proptest::collection::vec(value(), 0..4),
                    0..4,
                ),
            )
                .prop_map(|(path, fields)| Row { path, fields })
        }

        fn json_value() -> impl Strategy<Value = Json> {
            let scalar = prop_oneof![
                Just(Json::Null),
                any::<bool>().prop_map(Json::Bool),
                (-5i64..5).prop_map(Json::from),
                (-5.0f64..5.0).prop_map(Json::from),
                "[ab]{0,3}".prop_map(Json::String),
            ];
            scalar.prop_recursive(2, 8, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                    proptest::collection::btree_map("[ab]", inner, 0..2)
                        .prop_map(|m| Json::Object(m.into_iter().collect())),
                ]
            })
        }

        fn predicate() -> impl Strategy<Value = Predicate> {
            (
                "[abcd]",
                proptest::sample::select(Op::ALL.to_vec()),
                json_value(),
            )
                .prop_map(|(field, op, value)| Predicate { field, op, value })
        }

        proptest! {
            #[test]
            fn matches_never_panics(
                rows in proptest::collection::vec(row_strategy(), 0..8),
                preds in proptest::collection::vec(predicate(), 0..4),
            ) {
                if let Ok(compiled) = compile(&preds) {
                    for r in &rows {
                        let all = matches(r, &compiled);
                        prop_assert_eq!(all, compiled.iter().all(|p| p.matches(r)));
                        for p in &compiled {
                            let exists = !r.get(p.field()).is_empty();
                            match p.op() {
                                Op::Exists => prop_assert_eq!(p.matches(r), exists),
                                Op::NotExists => prop_assert_eq!(p.matches(r), !exists),
                                _ if !exists => prop_assert!(!p.matches(r)),
                                _ => {}
                            }
                        }
                    }
                }
            }

            #[test]
            fn sort_rows_is_a_sorted_permutation(
                rows in proptest::collection::vec(row_strategy(), 0..12),
                field in "[abc]",
                desc in any::<bool>(),
            ) {
                let direction = if desc { Direction::Desc } else { Direction::Asc };
                let keys = [SortKey { field, direction }];
                let mut sorted = rows.clone();
                sort_rows(&mut sorted, &keys);

                prop_assert_eq!(sorted.len(), rows.len());
                for r in &rows {
                    let want = rows.iter().filter(|x| *x == r).count();
                    let got = sorted.iter().filter(|x| *x == r).count();
                    prop_assert_eq!(want, got);
                }
                for pair in sorted.windows(2) {
                    let a = sort_value(&pair[0], &keys[0]);
                    let b = sort_value(&pair[1], &keys[0]);
                    let order = missing_last(a, b, direction);
                    prop_assert!(order.is_le(), "{:?} before {:?}", pair[0], pair[1]);
                    if order.is_eq() {
                        prop_assert!(pair[0].path.as_bytes() <= pair[1].path.as_bytes());
                    }
                }
            }
        }
    }
}
