//! Property tests: histories produced by actually running a register are
//! always linearizable; corrupting one read to a never-written value makes
//! them never linearizable.

use nokv_checker::{
    check, History, Operation, Outcome, Register, RegisterInput, RegisterOutput, SearchBudget,
};
use proptest::prelude::*;

const VALUES: [Option<&str>; 4] = [None, Some("a"), Some("b"), Some("c")];
const NEVER_WRITTEN: &str = "never-written";
/// Gap between consecutive linearization points.
const SPACING: u64 = 100;
/// How far a call (or return) may lie from its linearization point when
/// overlapping: up to ~6 operations are concurrent.
const MAX_STRETCH: u64 = 3 * SPACING;

#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Took effect and returned.
    Ok,
    /// Took effect, but the client timed out.
    UnknownApplied,
    /// Never took effect, and the client timed out.
    UnknownNotApplied,
    /// Never took effect, and the client was told so.
    Fail,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        8 => Just(Fate::Ok),
        1 => Just(Fate::UnknownApplied),
        1 => Just(Fate::UnknownNotApplied),
        1 => Just(Fate::Fail),
    ]
}

fn value(i: usize) -> Option<String> {
    VALUES[i % VALUES.len()].map(str::to_string)
}

fn input() -> impl Strategy<Value = RegisterInput> {
    prop_oneof![
        Just(RegisterInput::Read),
        (0..VALUES.len()).prop_map(|i| RegisterInput::Write(value(i))),
        (0..VALUES.len(), 0..VALUES.len()).prop_map(|(f, t)| RegisterInput::Cas {
            from: value(f),
            to: value(t),
        }),
    ]
}

/// One generated operation: what it does, its fate, and how far its call
/// and return stretch around its linearization point.
fn planned_op() -> impl Strategy<Value = (RegisterInput, Fate, u64, u64)> {
    (input(), fate(), 0..=MAX_STRETCH, 0..=MAX_STRETCH)
}

/// Runs the plan against a real register and records a history. With
/// `overlap == false` operations are strictly sequential in real time.
fn execute(
    plan: &[(RegisterInput, Fate, u64, u64)],
    overlap: bool,
) -> Vec<Operation<RegisterInput, RegisterOutput>> {
    let mut state: Option<String> = None;
    let mut ops = Vec::new();
    // Always end with a completed read so there is something to corrupt.
    let tail = (RegisterInput::Read, Fate::Ok, 0, 0);
    for (i, (input, fate, before, after)) in plan.iter().chain(std::iter::once(&tail)).enumerate() {
        let point = MAX_STRETCH + SPACING * i as u64;
        let (call_ns, return_ns) = if overlap {
            (point - before, point + after)
        } else {
            (point - SPACING / 3, point + SPACING / 3)
        };
        let applies = matches!(fate, Fate::Ok | Fate::UnknownApplied);
        let output = match input {
            RegisterInput::Read => RegisterOutput::Value(state.clone()),
            RegisterInput::Write(v) => {
                if applies {
                    state = v.clone();
                }
                RegisterOutput::Ok
            }
            RegisterInput::Cas { from, to } => {
                if *from == state {
                    if applies {
                        state = to.clone();
                    }
                    RegisterOutput::Ok
                } else {
                    RegisterOutput::CasFailed
                }
            }
        };
        let outcome = match fate {
            Fate::Ok => Outcome::Ok(output),
            Fate::UnknownApplied | Fate::UnknownNotApplied => Outcome::Unknown,
            Fate::Fail => Outcome::Fail,
        };
        ops.push(Operation {
            process: i as u64,
            call_ns,
            return_ns,
            input: input.clone(),
            outcome,
        });
    }
    ops
}

fn budget() -> SearchBudget {
    SearchBudget {
        max_steps: Some(5_000_000),
        max_duration: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn real_register_executions_are_linearizable(
        plan in prop::collection::vec(planned_op(), 0..24),
        overlap in any::<bool>(),
    ) {
        let history = History::new(execute(&plan, overlap)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = check(&Register, &history, &budget());
        prop_assert!(result.is_linearizable(), "{:?}", result);
    }

    #[test]
    fn corrupted_read_is_never_linearizable(
        plan in prop::collection::vec(planned_op(), 0..24),
        overlap in any::<bool>(),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut ops = execute(&plan, overlap);
        let reads: Vec<usize> = ops
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op.outcome, Outcome::Ok(RegisterOutput::Value(_))))
            .map(|(i, _)| i)
            .collect();
        let target = reads[pick.index(reads.len())];
        ops[target].outcome = Outcome::Ok(RegisterOutput::Value(Some(NEVER_WRITTEN.to_string())));
        let history = History::new(ops).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = check(&Register, &history, &budget());
        prop_assert!(result.is_not_linearizable(), "{:?}", result);
    }
}
