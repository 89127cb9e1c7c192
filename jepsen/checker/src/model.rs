//! Sequential specifications the checker linearizes against.

use std::fmt::Debug;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// A deterministic sequential specification of an object.
pub trait Model {
    /// The object's state; hashed into the search's memoization cache.
    type State: Clone + Eq + Hash + Debug;
    /// Operation input (what the client asked).
    type Input: Debug;
    /// Operation output (what the client was told).
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies a completed operation. Returns `None` when `output` is
    /// impossible for `input` in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// Applies an operation whose output is unknown (it may have taken
    /// effect): the state it leaves behind, or `None` if it cannot happen
    /// in `state` at all.
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Option<Self::State>;
}

/// A register value; `None` means absent (e.g. a file not created yet).
pub type Value = Option<String>;

/// Operations on a [`Register`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterInput {
    /// Read the current value.
    Read,
    /// Overwrite the value.
    Write(Value),
    /// Set to `to` if the value is currently `from`.
    Cas {
        /// Expected current value.
        from: Value,
        /// New value.
        to: Value,
    },
}

/// Outputs of a [`Register`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterOutput {
    /// A read observed this value.
    Value(Value),
    /// A write, or a CAS that applied.
    Ok,
    /// A CAS whose expected value did not match; the state is unchanged.
    CasFailed,
}

/// A single linearizable read/write/compare-and-set register, initially
/// absent (`None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Register;

impl Model for Register {
    type State = Value;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> Value {
        None
    }

    fn step(&self, state: &Value, input: &RegisterInput, output: &RegisterOutput) -> Option<Value> {
        match (input, output) {
            (RegisterInput::Read, RegisterOutput::Value(seen)) => {
                (seen == state).then(|| state.clone())
            }
            (RegisterInput::Write(value), RegisterOutput::Ok) => Some(value.clone()),
            (RegisterInput::Cas { from, to }, RegisterOutput::Ok) => {
                (from == state).then(|| to.clone())
            }
            (RegisterInput::Cas { from, .. }, RegisterOutput::CasFailed) => {
                (from != state).then(|| state.clone())
            }
            _ => None,
        }
    }

    fn step_unknown(&self, state: &Value, input: &RegisterInput) -> Option<Value> {
        match input {
            RegisterInput::Read => Some(state.clone()),
            RegisterInput::Write(value) => Some(value.clone()),
            RegisterInput::Cas { from, to } => Some(if from == state {
                to.clone()
            } else {
                state.clone()
            }),
        }
    }
}
