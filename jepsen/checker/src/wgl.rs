//! Wing–Gong linearizability search with Lowe's memoization, as in Knossos
//! and Porcupine.
//!
//! Call and return entries are sorted by time (a call sorts before a return
//! at the same instant, so touching operations count as concurrent) and kept
//! in a doubly-linked list. The search repeatedly linearizes a *minimal*
//! pending operation (one whose call precedes the first remaining return),
//! lifting its entries out of the list, and backtracks when it reaches a
//! return it cannot satisfy. A cache of (linearized set, model state) pairs
//! prunes configurations already explored.
//!
//! `Fail` operations are dropped. `Unknown` operations return at +infinity:
//! they may be linearized anywhere after their call, or never — the search
//! succeeds as soon as every `Ok` operation is linearized.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Debug, Display};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::history::{partition_by_key, History, Keyed, Operation, Outcome, OutcomeCounts};
use crate::model::Model;

/// Limits on one search (per key when checking keyed histories).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchBudget {
    /// Maximum search steps (entries visited); `None` for no limit.
    pub max_steps: Option<u64>,
    /// Maximum wall-clock time; `None` for no limit.
    pub max_duration: Option<Duration>,
}

impl Default for SearchBudget {
    /// Ten million steps, one minute.
    fn default() -> Self {
        SearchBudget {
            max_steps: Some(10_000_000),
            max_duration: Some(Duration::from_secs(60)),
        }
    }
}

impl SearchBudget {
    /// No limits at all.
    pub fn unlimited() -> Self {
        SearchBudget {
            max_steps: None,
            max_duration: None,
        }
    }
}

/// Which limit stopped an undecided search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetExhausted {
    /// [`SearchBudget::max_steps`] was reached.
    Steps,
    /// [`SearchBudget::max_duration`] was reached.
    Time,
}

/// A history (or one key of it) that has no linearization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly<I, O> {
    /// The key, when checking a keyed history.
    pub key: Option<String>,
    /// The longest sequence of operations the search could linearize, in
    /// linearization order.
    pub linearized_prefix: Vec<Operation<I, O>>,
    /// The model state after that prefix (`Debug` rendering).
    pub state_after_prefix: String,
    /// The completed operation whose return could not be reached: it and
    /// every operation in `pending` were impossible (or led to dead ends)
    /// from `state_after_prefix`.
    pub blocked_by: Option<Operation<I, O>>,
    /// Operations that were candidates at the point of failure (called but
    /// not yet linearized, concurrent with `blocked_by`).
    pub pending: Vec<Operation<I, O>>,
}

/// A search that ran out of budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undecided {
    /// The key, when checking a keyed history.
    pub key: Option<String>,
    /// Steps taken before giving up.
    pub steps: u64,
    /// Which limit was hit.
    pub reason: BudgetExhausted,
}

/// Result of checking one history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CheckResult<I, O> {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists.
    NotLinearizable(Box<Anomaly<I, O>>),
    /// The search budget ran out first.
    Unknown(Undecided),
}

impl<I, O> CheckResult<I, O> {
    /// True for [`CheckResult::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }
    /// True for [`CheckResult::NotLinearizable`].
    pub fn is_not_linearizable(&self) -> bool {
        matches!(self, CheckResult::NotLinearizable(_))
    }
}

/// A fixed-size set of operation indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(len: usize) -> Self {
        BitSet(vec![0; len.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        if let Some(word) = self.0.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }
    fn clear(&mut self, i: usize) {
        if let Some(word) = self.0.get_mut(i / 64) {
            *word &= !(1 << (i % 64));
        }
    }
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// Dancing-links list of call/return entries. Node 0 is the head sentinel;
/// operation `i` has call node `2i + 1` and return node `2i + 2`.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
}

fn call_node(op: usize) -> usize {
    2 * op + 1
}
fn return_node(op: usize) -> usize {
    2 * op + 2
}
fn op_of(node: usize) -> usize {
    (node - 1) / 2
}
fn is_call(node: usize) -> bool {
    node % 2 == 1
}

impl EntryList {
    fn new(order: &[usize]) -> Self {
        let nodes = order.len() + 1;
        let mut list = EntryList {
            next: vec![NIL; nodes],
            prev: vec![NIL; nodes],
        };
        let mut last = HEAD;
        for &node in order {
            list.next[last] = node;
            list.prev[node] = last;
            last = node;
        }
        list
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }

    /// Removes an operation's call and return entries.
    fn lift(&mut self, op: usize) {
        self.unlink(call_node(op));
        self.unlink(return_node(op));
    }

    /// Undoes [`lift`](Self::lift) (must be called in reverse lift order).
    fn unlift(&mut self, op: usize) {
        self.relink(return_node(op));
        self.relink(call_node(op));
    }
}

/// Checks whether `history` is linearizable with respect to `model`.
pub fn check<M>(
    model: &M,
    history: &History<M::Input, M::Output>,
    budget: &SearchBudget,
) -> CheckResult<M::Input, M::Output>
where
    M: Model,
    M::Input: Clone,
    M::Output: Clone,
{
    let ops: Vec<&Operation<M::Input, M::Output>> = history
        .ops()
        .iter()
        .filter(|op| !matches!(op.outcome, Outcome::Fail))
        .collect();
    let is_ok = |op: usize| matches!(ops[op].outcome, Outcome::Ok(_));

    // Sort entries: time (Unknown returns at +inf), then calls before
    // returns, then operation order for determinism.
    let mut keyed_nodes: Vec<(u128, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        keyed_nodes.push((u128::from(op.call_ns), false, call_node(i)));
        let return_time = match op.outcome {
            Outcome::Unknown => u128::MAX,
            _ => u128::from(op.return_ns),
        };
        keyed_nodes.push((return_time, true, return_node(i)));
    }
    keyed_nodes.sort_unstable();
    let order: Vec<usize> = keyed_nodes.iter().map(|&(_, _, node)| node).collect();
    let mut list = EntryList::new(&order);

    let started = Instant::now();
    let mut remaining_ok = (0..ops.len()).filter(|&i| is_ok(i)).count();
    let mut state = model.init();
    let mut linearized = BitSet::new(ops.len());
    let mut cache: HashSet<(BitSet, M::State)> = HashSet::new();
    // Stack of (linearized op, state before it).
    let mut calls: Vec<(usize, M::State)> = Vec::new();
    let mut deepest: Option<Anomaly<M::Input, M::Output>> = None;
    let mut steps: u64 = 0;
    let mut cursor = list.next[HEAD];

    loop {
        if remaining_ok == 0 {
            return CheckResult::Linearizable;
        }
        steps += 1;
        if let Some(reason) = exhausted(budget, steps, started) {
            return CheckResult::Unknown(Undecided {
                key: None,
                steps,
                reason,
            });
        }

        if cursor != NIL && is_call(cursor) {
            let op = op_of(cursor);
            let next_state = match &ops[op].outcome {
                Outcome::Ok(output) => model.step(&state, &ops[op].input, output),
                Outcome::Unknown => model.step_unknown(&state, &ops[op].input),
                Outcome::Fail => None,
            };
            if let Some(next_state) = next_state {
                let mut next_linearized = linearized.clone();
                next_linearized.set(op);
                if cache.insert((next_linearized.clone(), next_state.clone())) {
                    calls.push((op, std::mem::replace(&mut state, next_state)));
                    linearized = next_linearized;
                    if is_ok(op) {
                        remaining_ok -= 1;
                    }
                    list.lift(op);
                    cursor = list.next[HEAD];
                    continue;
                }
            }
            cursor = list.next[cursor];
        } else {
            // A return entry (or, defensively, the end of the list): nothing
            // before it can be linearized from here, so backtrack.
            if deepest
                .as_ref()
                .is_none_or(|a| calls.len() > a.linearized_prefix.len())
            {
                deepest = Some(describe_failure(&ops, &list, &calls, &state, cursor));
            }
            let Some((op, previous)) = calls.pop() else {
                break;
            };
            state = previous;
            linearized.clear(op);
            if is_ok(op) {
                remaining_ok += 1;
            }
            list.unlift(op);
            cursor = list.next[call_node(op)];
        }
    }

    let anomaly = deepest.unwrap_or_else(|| Anomaly {
        key: None,
        linearized_prefix: Vec::new(),
        state_after_prefix: format!("{:?}", model.init()),
        blocked_by: None,
        pending: Vec::new(),
    });
    CheckResult::NotLinearizable(Box::new(anomaly))
}

fn exhausted(budget: &SearchBudget, steps: u64, started: Instant) -> Option<BudgetExhausted> {
    if budget.max_steps.is_some_and(|max| steps > max) {
        return Some(BudgetExhausted::Steps);
    }
    if steps.is_multiple_of(1024)
        && budget
            .max_duration
            .is_some_and(|max| started.elapsed() > max)
    {
        return Some(BudgetExhausted::Time);
    }
    None
}

fn describe_failure<I: Clone, O: Clone, S: Debug>(
    ops: &[&Operation<I, O>],
    list: &EntryList,
    calls: &[(usize, S)],
    state: &S,
    failed_at: usize,
) -> Anomaly<I, O> {
    let mut pending = Vec::new();
    let mut node = list.next[HEAD];
    while node != NIL && node != failed_at {
        if is_call(node) {
            pending.push(ops[op_of(node)].clone());
        }
        node = list.next[node];
    }
    Anomaly {
        key: None,
        linearized_prefix: calls.iter().map(|&(op, _)| ops[op].clone()).collect(),
        state_after_prefix: format!("{state:?}"),
        blocked_by: (failed_at != NIL).then(|| ops[op_of(failed_at)].clone()),
        pending,
    }
}

/// Overall verdict of a [`Summary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every key is linearizable.
    Linearizable,
    /// At least one key is not linearizable.
    NotLinearizable,
    /// No anomaly found, but at least one search ran out of budget.
    Unknown,
}

/// What a run's checker reports: operation counts, anomalies and
/// undecided keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary<I, O> {
    /// Overall verdict.
    pub verdict: Verdict,
    /// Operations by outcome (all keys).
    pub counts: OutcomeCounts,
    /// Number of independent histories checked.
    pub keys_checked: usize,
    /// Every non-linearizable key.
    pub anomalies: Vec<Anomaly<I, O>>,
    /// Every key whose search ran out of budget.
    pub undecided: Vec<Undecided>,
}

impl<I, O> Summary<I, O> {
    fn new(counts: OutcomeCounts) -> Self {
        Summary {
            verdict: Verdict::Linearizable,
            counts,
            keys_checked: 0,
            anomalies: Vec::new(),
            undecided: Vec::new(),
        }
    }

    fn record(&mut self, key: Option<String>, result: CheckResult<I, O>) {
        self.keys_checked += 1;
        match result {
            CheckResult::Linearizable => {}
            CheckResult::NotLinearizable(mut anomaly) => {
                anomaly.key = key;
                self.anomalies.push(*anomaly);
                self.verdict = Verdict::NotLinearizable;
            }
            CheckResult::Unknown(mut undecided) => {
                undecided.key = key;
                self.undecided.push(undecided);
                if self.verdict == Verdict::Linearizable {
                    self.verdict = Verdict::Unknown;
                }
            }
        }
    }
}

/// Checks a single-object history and summarizes it.
pub fn check_single<M>(
    model: &M,
    history: &History<M::Input, M::Output>,
    budget: &SearchBudget,
) -> Summary<M::Input, M::Output>
where
    M: Model,
    M::Input: Clone,
    M::Output: Clone,
{
    let mut summary = Summary::new(history.counts());
    summary.record(None, check(model, history, budget));
    summary
}

/// Checks a history over independent keys, one search per key, and
/// summarizes all of them.
pub fn check_keyed<M>(
    model: &M,
    history: &History<Keyed<M::Input>, M::Output>,
    budget: &SearchBudget,
) -> Summary<M::Input, M::Output>
where
    M: Model,
    M::Input: Clone,
    M::Output: Clone,
{
    let per_key: BTreeMap<String, History<M::Input, M::Output>> = partition_by_key(history);
    let mut summary = Summary::new(history.counts());
    for (key, sub_history) in per_key {
        let result = check(model, &sub_history, budget);
        summary.record(Some(key), result);
    }
    summary
}

struct OpLine<'a, I, O>(&'a Operation<I, O>);

impl<I: Debug, O: Debug> Display for OpLine<'_, I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.0;
        let returned = match op.outcome {
            Outcome::Unknown => "inf".to_string(),
            _ => op.return_ns.to_string(),
        };
        write!(
            f,
            "p{} [{} .. {}] {:?} -> ",
            op.process, op.call_ns, returned, op.input
        )?;
        match &op.outcome {
            Outcome::Ok(output) => write!(f, "{output:?}"),
            Outcome::Fail => write!(f, "fail"),
            Outcome::Unknown => write!(f, "unknown"),
        }
    }
}

/// How many prefix operations to show before the failure point.
const PREFIX_TAIL_SHOWN: usize = 10;

impl<I: Debug, O: Debug> Display for Anomaly<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => writeln!(f, "key {key:?}: not linearizable")?,
            None => writeln!(f, "not linearizable")?,
        }
        let prefix = &self.linearized_prefix;
        writeln!(f, "  linearized {} operation(s); last ones:", prefix.len())?;
        let skip = prefix.len().saturating_sub(PREFIX_TAIL_SHOWN);
        for op in &prefix[skip..] {
            writeln!(f, "    {}", OpLine(op))?;
        }
        writeln!(f, "  state after prefix: {}", self.state_after_prefix)?;
        if let Some(op) = &self.blocked_by {
            writeln!(f, "  cannot linearize before this return: {}", OpLine(op))?;
        }
        writeln!(f, "  candidates there (none could be linearized next):")?;
        for op in &self.pending {
            writeln!(f, "    {}", OpLine(op))?;
        }
        Ok(())
    }
}

impl<I: Debug, O: Debug> Display for Summary<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable => "NOT LINEARIZABLE",
            Verdict::Unknown => "unknown (search budget exhausted)",
        };
        writeln!(f, "verdict: {verdict}")?;
        writeln!(
            f,
            "operations: {} ok, {} fail, {} unknown; {} history(ies) checked",
            self.counts.ok, self.counts.fail, self.counts.unknown, self.keys_checked
        )?;
        for undecided in &self.undecided {
            let reason = match undecided.reason {
                BudgetExhausted::Steps => "step limit",
                BudgetExhausted::Time => "time limit",
            };
            match &undecided.key {
                Some(key) => writeln!(
                    f,
                    "undecided: key {key:?}: {reason} after {} steps",
                    undecided.steps
                )?,
                None => writeln!(f, "undecided: {reason} after {} steps", undecided.steps)?,
            }
        }
        for anomaly in &self.anomalies {
            write!(f, "{anomaly}")?;
        }
        Ok(())
    }
}
