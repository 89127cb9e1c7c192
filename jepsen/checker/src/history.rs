//! Operation histories, as Jepsen, Knossos and Porcupine record them.
//!
//! A run records a stream of [`Event`]s (one line each in `history.jsonl`):
//! a process *invokes* an operation and later the operation *completes* with
//! an [`Outcome`]. [`HistoryBuilder`] pairs those events into
//! [`Operation`]s and rejects malformed streams; the result is a validated
//! [`History`], the only input the checker accepts.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use serde::{Deserialize, Serialize};

/// Identifies one logical client process (one thread of operations).
pub type ProcessId = u64;

/// Monotonic time in nanoseconds since an arbitrary start of the run.
pub type TimeNs = u64;

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "output", rename_all = "snake_case")]
pub enum Outcome<O> {
    /// The operation took effect and returned this output.
    Ok(O),
    /// The operation definitely did not take effect (e.g. rejected before
    /// being proposed). The checker drops it entirely.
    Fail,
    /// Indeterminate (timeout, connection lost, crash): it may or may not
    /// have taken effect, at any point after its call. The checker treats
    /// its return time as +infinity.
    Unknown,
}

impl<O> Outcome<O> {
    /// Short lowercase name: `ok`, `fail` or `unknown`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One completed (or abandoned) operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation<I, O> {
    /// The process that issued it.
    pub process: ProcessId,
    /// When the client invoked it.
    pub call_ns: TimeNs,
    /// When the client saw the outcome. For [`Outcome::Unknown`] this is
    /// when the client gave up; the checker ignores it and uses +infinity.
    pub return_ns: TimeNs,
    /// What was asked.
    pub input: I,
    /// What happened.
    pub outcome: Outcome<O>,
}

/// One line of a recorded run: an invocation or a completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event<I, O> {
    /// `process` started an operation with `input` at `time_ns`.
    Invoke {
        /// Issuing process.
        process: ProcessId,
        /// Invocation time.
        time_ns: TimeNs,
        /// The operation.
        input: I,
    },
    /// The open operation of `process` ended at `time_ns`.
    Complete {
        /// Issuing process.
        process: ProcessId,
        /// Completion time.
        time_ns: TimeNs,
        /// How it ended.
        outcome: Outcome<O>,
    },
}

/// Why a history was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// A completion arrived for a process with no open invocation.
    #[error("event {event}: process {process} completed at {time_ns} ns without an open invoke")]
    CompletionWithoutInvoke {
        /// Zero-based index of the offending event.
        event: usize,
        /// The process.
        process: ProcessId,
        /// Time of the completion.
        time_ns: TimeNs,
    },
    /// A process invoked a second operation while one was still open.
    #[error(
        "event {event}: process {process} invoked at {time_ns} ns while its invoke at {open_since_ns} ns is still open"
    )]
    DoubleInvoke {
        /// Zero-based index of the offending event.
        event: usize,
        /// The process.
        process: ProcessId,
        /// Time of the second invocation.
        time_ns: TimeNs,
        /// Time of the still-open invocation.
        open_since_ns: TimeNs,
    },
    /// An operation returned before it was called.
    #[error(
        "process {process}: operation returned at {return_ns} ns before its call at {call_ns} ns"
    )]
    ReturnBeforeCall {
        /// The process.
        process: ProcessId,
        /// Call time.
        call_ns: TimeNs,
        /// Return time.
        return_ns: TimeNs,
    },
    /// A line of a JSONL file could not be read or parsed.
    #[error("line {line}: {message}")]
    Parse {
        /// One-based line number.
        line: usize,
        /// What went wrong.
        message: String,
    },
}

/// A validated history: every operation returns no earlier than it was
/// called. Operations are ordered by call time (then process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "Vec<Operation<I, O>>",
    into = "Vec<Operation<I, O>>",
    bound(
        serialize = "I: Serialize + Clone, O: Serialize + Clone",
        deserialize = "I: Deserialize<'de>, O: Deserialize<'de>"
    )
)]
pub struct History<I, O> {
    ops: Vec<Operation<I, O>>,
}

impl<I, O> History<I, O> {
    /// Validates and orders a list of operations.
    pub fn new(mut ops: Vec<Operation<I, O>>) -> Result<Self, HistoryError> {
        for op in &ops {
            if !matches!(op.outcome, Outcome::Unknown) && op.return_ns < op.call_ns {
                return Err(HistoryError::ReturnBeforeCall {
                    process: op.process,
                    call_ns: op.call_ns,
                    return_ns: op.return_ns,
                });
            }
        }
        ops.sort_by_key(|op| (op.call_ns, op.process));
        Ok(History { ops })
    }

    /// Builds a history from an event stream (see [`HistoryBuilder`]).
    pub fn from_events(
        events: impl IntoIterator<Item = Event<I, O>>,
    ) -> Result<Self, HistoryError> {
        let mut builder = HistoryBuilder::new();
        for event in events {
            builder.push(event)?;
        }
        builder.finish()
    }

    /// Reads a `history.jsonl` file: one [`Event`] per line, blank lines
    /// ignored.
    pub fn from_jsonl_events<R: BufRead>(reader: R) -> Result<Self, HistoryError>
    where
        I: serde::de::DeserializeOwned,
        O: serde::de::DeserializeOwned,
    {
        let mut builder = HistoryBuilder::new();
        for (index, line) in reader.lines().enumerate() {
            let line_no = index + 1;
            let line = line.map_err(|e| HistoryError::Parse {
                line: line_no,
                message: e.to_string(),
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let event: Event<I, O> =
                serde_json::from_str(&line).map_err(|e| HistoryError::Parse {
                    line: line_no,
                    message: e.to_string(),
                })?;
            builder.push(event)?;
        }
        builder.finish()
    }

    /// The operations, ordered by call time.
    pub fn ops(&self) -> &[Operation<I, O>] {
        &self.ops
    }

    /// Number of operations (all outcomes).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there are no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Counts of operations by outcome.
    pub fn counts(&self) -> OutcomeCounts {
        let mut counts = OutcomeCounts::default();
        for op in &self.ops {
            match op.outcome {
                Outcome::Ok(_) => counts.ok += 1,
                Outcome::Fail => counts.fail += 1,
                Outcome::Unknown => counts.unknown += 1,
            }
        }
        counts
    }
}

impl<I, O> TryFrom<Vec<Operation<I, O>>> for History<I, O> {
    type Error = HistoryError;
    fn try_from(ops: Vec<Operation<I, O>>) -> Result<Self, Self::Error> {
        History::new(ops)
    }
}

impl<I, O> From<History<I, O>> for Vec<Operation<I, O>> {
    fn from(history: History<I, O>) -> Self {
        history.ops
    }
}

/// Counts of operations by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Operations that completed with an output.
    pub ok: usize,
    /// Operations that definitely did not happen.
    pub fail: usize,
    /// Indeterminate operations.
    pub unknown: usize,
}

impl std::ops::AddAssign for OutcomeCounts {
    fn add_assign(&mut self, other: Self) {
        self.ok += other.ok;
        self.fail += other.fail;
        self.unknown += other.unknown;
    }
}

#[derive(Debug)]
struct OpenInvoke<I> {
    time_ns: TimeNs,
    input: I,
}

/// Pairs invoke/complete events into operations.
///
/// Rejects a completion without an open invoke, a second invoke while one
/// is open on the same process, and a completion earlier than its invoke.
/// Invokes still open at [`finish`](Self::finish) become
/// [`Outcome::Unknown`] (the client crashed or the run ended first), as in
/// Jepsen.
#[derive(Debug)]
pub struct HistoryBuilder<I, O> {
    open: HashMap<ProcessId, OpenInvoke<I>>,
    ops: Vec<Operation<I, O>>,
    events: usize,
    last_time_ns: TimeNs,
}

impl<I, O> Default for HistoryBuilder<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I, O> HistoryBuilder<I, O> {
    /// An empty builder.
    pub fn new() -> Self {
        HistoryBuilder {
            open: HashMap::new(),
            ops: Vec::new(),
            events: 0,
            last_time_ns: 0,
        }
    }

    /// Records that `process` invoked `input` at `time_ns`.
    pub fn invoke(
        &mut self,
        process: ProcessId,
        time_ns: TimeNs,
        input: I,
    ) -> Result<(), HistoryError> {
        let event = self.events;
        self.events += 1;
        if let Some(open) = self.open.get(&process) {
            return Err(HistoryError::DoubleInvoke {
                event,
                process,
                time_ns,
                open_since_ns: open.time_ns,
            });
        }
        self.last_time_ns = self.last_time_ns.max(time_ns);
        self.open.insert(process, OpenInvoke { time_ns, input });
        Ok(())
    }

    /// Records that the open operation of `process` ended at `time_ns`.
    pub fn complete(
        &mut self,
        process: ProcessId,
        time_ns: TimeNs,
        outcome: Outcome<O>,
    ) -> Result<(), HistoryError> {
        let event = self.events;
        self.events += 1;
        let Some(open) = self.open.remove(&process) else {
            return Err(HistoryError::CompletionWithoutInvoke {
                event,
                process,
                time_ns,
            });
        };
        if time_ns < open.time_ns {
            return Err(HistoryError::ReturnBeforeCall {
                process,
                call_ns: open.time_ns,
                return_ns: time_ns,
            });
        }
        self.last_time_ns = self.last_time_ns.max(time_ns);
        self.ops.push(Operation {
            process,
            call_ns: open.time_ns,
            return_ns: time_ns,
            input: open.input,
            outcome,
        });
        Ok(())
    }

    /// Records one event.
    pub fn push(&mut self, event: Event<I, O>) -> Result<(), HistoryError> {
        match event {
            Event::Invoke {
                process,
                time_ns,
                input,
            } => self.invoke(process, time_ns, input),
            Event::Complete {
                process,
                time_ns,
                outcome,
            } => self.complete(process, time_ns, outcome),
        }
    }

    /// Finishes the history; still-open invokes become `Unknown`.
    pub fn finish(mut self) -> Result<History<I, O>, HistoryError> {
        let last = self.last_time_ns;
        for (process, open) in self.open.drain() {
            self.ops.push(Operation {
                process,
                call_ns: open.time_ns,
                return_ns: last.max(open.time_ns),
                input: open.input,
                outcome: Outcome::Unknown,
            });
        }
        History::new(self.ops)
    }
}

/// An input addressed to one of many independent registers (e.g. a file
/// path), so a history can be split with [`partition_by_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyed<I> {
    /// Which independent object the operation touches.
    pub key: String,
    /// The operation on that object.
    pub input: I,
}

/// Splits a history over independent keys into one history per key.
pub fn partition_by_key<I: Clone, O: Clone>(
    history: &History<Keyed<I>, O>,
) -> BTreeMap<String, History<I, O>> {
    let mut by_key: BTreeMap<String, Vec<Operation<I, O>>> = BTreeMap::new();
    for op in history.ops() {
        by_key
            .entry(op.input.key.clone())
            .or_default()
            .push(Operation {
                process: op.process,
                call_ns: op.call_ns,
                return_ns: op.return_ns,
                input: op.input.input.clone(),
                outcome: op.outcome.clone(),
            });
    }
    // Every operation came from a validated history and keeps its order, so
    // each per-key list is already a valid history.
    by_key
        .into_iter()
        .map(|(key, ops)| (key, History { ops }))
        .collect()
}
