//! [`FaultyBlobStore`]: a wrapper that injects failures, latency and hangs, for tests.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::{BlobError, BlobLocation, BlobOp, BlobStore, ObjectMeta};

/// The kind of error an injected fault returns. The error carries the failing call's
/// operation and key; its message says it was injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// [`BlobError::NotFound`].
    NotFound,
    /// [`BlobError::AlreadyExists`].
    AlreadyExists,
    /// [`BlobError::Timeout`].
    Timeout,
    /// [`BlobError::Unavailable`].
    Unavailable,
    /// [`BlobError::Io`].
    Io,
}

impl FaultError {
    /// The error a call of `op` on `key` fails with.
    pub fn to_error(self, op: BlobOp, key: &str) -> BlobError {
        let key = key.to_owned();
        match self {
            FaultError::NotFound => BlobError::NotFound { key },
            FaultError::AlreadyExists => BlobError::AlreadyExists { key },
            FaultError::Timeout => BlobError::Timeout { op, key },
            FaultError::Unavailable => BlobError::Unavailable {
                op,
                key,
                message: "injected fault".into(),
            },
            FaultError::Io => BlobError::Io {
                op,
                key,
                message: "injected fault".into(),
            },
        }
    }
}

/// Whether a queued failure stops the call before the inner store sees it, or lets the inner
/// store do the work and then replaces its result (a lost response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    Before,
    After,
}

#[derive(Debug, Default)]
struct OpFaults {
    queued: VecDeque<(FaultError, Timing)>,
    random: Option<(f64, FaultError)>,
    latency: Duration,
    hang: bool,
}

#[derive(Debug)]
struct State {
    ops: [OpFaults; 5],
    rng: XorShift64,
}

/// A tiny deterministic PRNG (xorshift64*), so a seed replays the same faults.
#[derive(Debug)]
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> Self {
        // xorshift never leaves 0; mix the seed so small seeds differ a lot.
        XorShift64((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one call must suffer, decided when it starts.
struct Plan {
    hang: bool,
    latency: Duration,
    failure: Option<(FaultError, Timing)>,
}

/// Wraps any [`BlobStore`] and injects faults per operation kind ([`BlobOp`]):
///
/// - [`fail_next`](Self::fail_next): the next `n` calls fail before reaching the inner store;
/// - [`fail_next_after_apply`](Self::fail_next_after_apply): the next `n` calls reach the
///   inner store (a `put_new` really stores the body) but the caller gets an error, as when
///   a response is lost;
/// - [`fail_with_probability`](Self::fail_with_probability): each call fails with
///   probability `p`, drawn from a PRNG seeded at construction (same seed and call order,
///   same faults);
/// - [`set_latency`](Self::set_latency): each call waits first;
/// - [`hang`](Self::hang): calls wait until [`release_hangs`](Self::release_hangs), then
///   proceed to the inner store. Use it to check that callers' timeouts give them control
///   back; [`hanging`](Self::hanging) tells how many calls are waiting right now.
///
/// Queued failures are used before random ones. Counters ([`calls`](Self::calls),
/// [`injected`](Self::injected)) support assertions. Without faults every call passes
/// straight through.
#[derive(Debug)]
pub struct FaultyBlobStore {
    inner: Arc<dyn BlobStore>,
    state: Mutex<State>,
    calls: [AtomicU64; 5],
    injected: [AtomicU64; 5],
    hanging: Arc<[AtomicU64; 5]>,
    release: watch::Sender<u64>,
}

impl FaultyBlobStore {
    /// Wraps `inner`; `seed` drives [`fail_with_probability`](Self::fail_with_probability).
    pub fn new(inner: Arc<dyn BlobStore>, seed: u64) -> Self {
        FaultyBlobStore {
            inner,
            state: Mutex::new(State {
                ops: Default::default(),
                rng: XorShift64::new(seed),
            }),
            calls: Default::default(),
            injected: Default::default(),
            hanging: Arc::new(Default::default()),
            release: watch::Sender::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn BlobStore> {
        &self.inner
    }

    /// The next `n` calls of `op` fail with `error` without reaching the inner store.
    pub fn fail_next(&self, op: BlobOp, n: usize, error: FaultError) {
        self.queue(op, n, error, Timing::Before);
    }

    /// The next `n` calls of `op` reach the inner store, then fail with `error` whatever the
    /// inner store answered.
    pub fn fail_next_after_apply(&self, op: BlobOp, n: usize, error: FaultError) {
        self.queue(op, n, error, Timing::After);
    }

    fn queue(&self, op: BlobOp, n: usize, error: FaultError, timing: Timing) {
        let mut state = self.state();
        let queued = &mut state.ops[op.index()].queued;
        queued.extend(std::iter::repeat_n((error, timing), n));
    }

    /// Each call of `op` fails with `error` with probability `p` (clamped to `[0, 1]`; 0
    /// turns it off), before reaching the inner store.
    pub fn fail_with_probability(&self, op: BlobOp, p: f64, error: FaultError) {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.state().ops[op.index()].random = (p > 0.0).then_some((p, error));
    }

    /// Each call of `op` waits `latency` before doing anything else.
    pub fn set_latency(&self, op: BlobOp, latency: Duration) {
        self.state().ops[op.index()].latency = latency;
    }

    /// Calls of `op` starting from now wait (forever) until [`release_hangs`](Self::release_hangs)
    /// or [`clear_all`](Self::clear_all).
    pub fn hang(&self, op: BlobOp) {
        self.state().ops[op.index()].hang = true;
    }

    /// Stops hanging new calls of every operation and lets every waiting call proceed to
    /// the inner store.
    pub fn release_hangs(&self) {
        for op in &mut self.state().ops {
            op.hang = false;
        }
        self.release.send_modify(|generation| *generation += 1);
    }

    /// Removes every fault of `op` (a call already hanging stays until released).
    pub fn clear(&self, op: BlobOp) {
        self.state().ops[op.index()] = OpFaults::default();
    }

    /// Removes every fault and releases hanging calls.
    pub fn clear_all(&self) {
        for op in BlobOp::ALL {
            self.clear(op);
        }
        self.release_hangs();
    }

    /// Calls of `op` so far (including failed and hanging ones).
    pub fn calls(&self, op: BlobOp) -> u64 {
        self.calls[op.index()].load(Ordering::SeqCst)
    }

    /// Calls of `op` that failed because of an injected fault.
    pub fn injected(&self, op: BlobOp) -> u64 {
        self.injected[op.index()].load(Ordering::SeqCst)
    }

    /// Calls of `op` hanging right now (a cancelled call stops counting).
    pub fn hanging(&self, op: BlobOp) -> u64 {
        self.hanging[op.index()].load(Ordering::SeqCst)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data and no code panics while holding it; a poisoned lock
        // still holds consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn plan(&self, op: BlobOp) -> Plan {
        self.calls[op.index()].fetch_add(1, Ordering::SeqCst);
        let mut state = self.state();
        let State { ops, rng } = &mut *state;
        let faults = &mut ops[op.index()];
        let failure = faults.queued.pop_front().or_else(|| {
            let (p, error) = faults.random?;
            (rng.next_f64() < p).then_some((error, Timing::Before))
        });
        Plan {
            hang: faults.hang,
            latency: faults.latency,
            failure,
        }
    }

    /// Runs one call of `op` on `key` under its faults; `call` runs the inner store.
    async fn run<T, F>(&self, op: BlobOp, key: &str, call: F) -> Result<T, BlobError>
    where
        F: std::future::Future<Output = Result<T, BlobError>>,
    {
        let plan = self.plan(op);
        if plan.hang {
            self.wait_for_release(op).await;
        }
        if !plan.latency.is_zero() {
            tokio::time::sleep(plan.latency).await;
        }
        match plan.failure {
            Some((error, Timing::Before)) => {
                self.injected[op.index()].fetch_add(1, Ordering::SeqCst);
                Err(error.to_error(op, key))
            }
            Some((error, Timing::After)) => {
                let _ignored = call.await;
                self.injected[op.index()].fetch_add(1, Ordering::SeqCst);
                Err(error.to_error(op, key))
            }
            None => call.await,
        }
    }

    async fn wait_for_release(&self, op: BlobOp) {
        let mut release = self.release.subscribe();
        let generation = *release.borrow_and_update();
        let _counted = HangingGuard::new(Arc::clone(&self.hanging), op);
        // The sender lives in `self`, so `wait_for` cannot see it closed while we borrow it.
        let _ = release.wait_for(|g| *g != generation).await;
    }
}

/// Counts a hanging call for as long as it lives (dropped on release or cancellation).
struct HangingGuard {
    hanging: Arc<[AtomicU64; 5]>,
    op: BlobOp,
}

impl HangingGuard {
    fn new(hanging: Arc<[AtomicU64; 5]>, op: BlobOp) -> Self {
        hanging[op.index()].fetch_add(1, Ordering::SeqCst);
        HangingGuard { hanging, op }
    }
}

impl Drop for HangingGuard {
    fn drop(&mut self) {
        self.hanging[self.op.index()].fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl BlobStore for FaultyBlobStore {
    async fn put_new(&self, key: &str, body: Bytes) -> Result<(), BlobError> {
        self.run(BlobOp::PutNew, key, self.inner.put_new(key, body))
            .await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, BlobError> {
        self.run(BlobOp::Get, key, self.inner.get(key, range)).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, BlobError> {
        self.run(BlobOp::Head, key, self.inner.head(key)).await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.run(BlobOp::Delete, key, self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BlobError> {
        self.run(BlobOp::List, prefix, self.inner.list(prefix))
            .await
    }

    fn location(&self) -> BlobLocation {
        self.inner.location()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_deterministic_and_roughly_uniform() {
        let mut a = XorShift64::new(7);
        let mut b = XorShift64::new(7);
        let xs: Vec<f64> = (0..10_000).map(|_| a.next_f64()).collect();
        let ys: Vec<f64> = (0..10_000).map(|_| b.next_f64()).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let below_half = xs.iter().filter(|x| **x < 0.5).count();
        assert!((4_500..5_500).contains(&below_half), "{below_half}");
        let mut zero = XorShift64::new(0);
        assert_ne!(zero.next_u64(), zero.next_u64());
    }
}
