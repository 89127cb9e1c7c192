//! Workloads: concurrent client processes that record every operation with
//! its outcome (ok, fail, unknown), and the final reads their checkers need.
//!
//! How a client error becomes an outcome is the heart of a sound test:
//! a write is `fail` only when NoKV says it definitely did not apply (a
//! POSIX error, `Unavailable`: no replica accepted it); a timeout, a lost
//! connection or any answer we cannot interpret is `unknown`. A read that
//! fails is `fail` (it changed nothing).

pub mod graft;
pub mod namespace;
pub mod register;
pub mod set;

use std::time::Duration;

use nokv_checker::{Operation, Outcome};
use nokv_client::ClientError;
use tokio::sync::watch;
use tokio::time::Instant;

/// Nanoseconds since the run started; one clock for every process.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
    }
}

/// What every process of a workload gets.
#[derive(Clone)]
pub struct Ctx {
    pub clock: Clock,
    /// Turns `true` when the run's time is up.
    pub stop: watch::Receiver<bool>,
    pub seed: u64,
    /// Per-operation time limit (the client's deadline, retries included).
    pub op_timeout: Duration,
}

impl Ctx {
    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }
}

/// The outcome of a mutation that failed with `e`.
pub fn write_failure<O>(e: &ClientError) -> Outcome<O> {
    match e {
        ClientError::Fs { .. }
        | ClientError::InvalidArgument(_)
        | ClientError::StaleEpoch { .. }
        | ClientError::CursorExpired { .. }
        | ClientError::Unavailable(_)
        | ClientError::AlreadyInitialized(_)
        | ClientError::UnknownShard(_)
        | ClientError::WrongShard { .. }
        | ClientError::StaleMap { .. }
        | ClientError::ControlPlane { .. }
        | ClientError::Unauthenticated(_)
        | ClientError::PermissionDenied(_) => Outcome::Fail,
        ClientError::Unknown(_)
        | ClientError::Protocol(_)
        | ClientError::Server(_)
        | ClientError::Store(_)
        | ClientError::Integrity(_)
        | ClientError::Output { .. } => Outcome::Unknown,
    }
}

/// Records one operation of `process`: `call_ns` to now.
pub fn finish<I, O>(
    ctx: &Ctx,
    process: u64,
    call_ns: u64,
    input: I,
    outcome: Outcome<O>,
) -> Operation<I, O> {
    Operation {
        process,
        call_ns,
        return_ns: ctx.clock.now_ns().max(call_ns),
        input,
        outcome,
    }
}

/// Waits for every process task of a workload and concatenates their
/// operations; a process that panicked fails the run.
pub async fn join_processes<Op>(
    workload: &str,
    tasks: Vec<tokio::task::JoinHandle<Vec<Op>>>,
) -> Result<Vec<Op>, crate::cluster::ClusterError> {
    let mut ops = Vec::new();
    for task in tasks {
        match task.await {
            Ok(mut o) => ops.append(&mut o),
            Err(e) => {
                return Err(crate::cluster::ClusterError::Harness(format!(
                    "{workload} process died: {e}"
                )))
            }
        }
    }
    Ok(ops)
}

/// Retries `attempt` (a read after the run, when the cluster has healed)
/// until it succeeds or `timeout` passes.
pub async fn until_ok<T, F, Fut>(timeout: Duration, mut attempt: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "final read failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
