//! `nokv-checker`: the history checker for NoKV's Jepsen-style partition
//! tests.
//!
//! A test run records every client operation as invoke/complete
//! [`Event`]s (typically one JSON object per line in `history.jsonl`).
//! This crate turns those into a validated [`History`] and decides whether
//! it is *linearizable* against a sequential [`Model`] (for now a
//! read/write/CAS [`Register`]) using the Wing–Gong/Lowe search of Knossos
//! and Porcupine ([`wgl`]). Histories over independent keys (e.g. file
//! paths) are checked per key, and the outcome is reported as a
//! serializable, human-readable [`Summary`]. Two structural checkers cover
//! the other workloads: [`check_set`] (every acknowledged add survives,
//! nothing unattempted appears) and [`check_tree`] (renames keep the
//! namespace a tree). [`check_liveness`] checks that writes resume after
//! every leader loss and that the cluster settles after the final heal.
//!
//! Dependencies: this crate must not depend on any other NoKV crate. The
//! harness (`nokv-jepsen`) talks to clusters only through the public
//! client and binaries; the checker only ever sees recorded histories, so
//! it stays independent of server internals (and cannot share their bugs).
//!
//! ```
//! use nokv_checker::{check, History, HistoryBuilder, Outcome, Register,
//!     RegisterInput, RegisterOutput, SearchBudget};
//!
//! let mut b = HistoryBuilder::new();
//! b.invoke(1, 0, RegisterInput::Write(Some("a".into())))?;
//! b.complete(1, 10, Outcome::Ok(RegisterOutput::Ok))?;
//! b.invoke(2, 20, RegisterInput::Read)?;
//! b.complete(2, 30, Outcome::Ok(RegisterOutput::Value(None)))?; // stale read
//! let history: History<_, _> = b.finish()?;
//! assert!(check(&Register, &history, &SearchBudget::default()).is_not_linearizable());
//! # Ok::<(), nokv_checker::HistoryError>(())
//! ```

pub mod history;
pub mod liveness;
pub mod model;
pub mod set;
pub mod tree;
pub mod wgl;

pub use history::{
    partition_by_key, Event, History, HistoryBuilder, HistoryError, Keyed, Operation, Outcome,
    OutcomeCounts, ProcessId, TimeNs,
};
pub use liveness::{
    check_liveness, no_majority_intervals, LeaderLoss, LivenessBounds, LivenessInput,
    LivenessSummary, Stall, TopologyChange, TopologyEvent,
};
pub use model::{Model, Register, RegisterInput, RegisterOutput, Value};
pub use set::{check_set, SetSummary};
pub use tree::{check_tree, TreeEntry, TreeSummary};
pub use wgl::{
    check, check_keyed, check_single, Anomaly, BudgetExhausted, CheckResult, SearchBudget, Summary,
    Undecided, Verdict,
};
