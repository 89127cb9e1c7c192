//! Request coalescing: concurrent requests of one kind to one node travel
//! together in one batched call (`MutateBatch`, `QueryBatch`).
//!
//! Per node and kind, one task sends the requests handed to it, with at
//! most `inflight` calls outstanding. While every slot is busy, requests
//! queue, and the next call carries all of them (up to [`MAX_ITEMS`] and
//! about [`MAX_BYTES`]); a request that finds a free slot goes at once, on
//! its own, as a plain `Mutate` or `Query`. So an idle client pays one task
//! hop, and a busy one makes a few large calls instead of many small ones:
//! the node spends its time on the requests, not on per-call overhead.
//!
//! Each request keeps its own answer: the node handles every request of a
//! batch as it would handle it alone, and each caller receives the status
//! its request would have had, so retries, leader hints and epochs work as
//! for a lone call. A batch the transport fails fails each of its requests
//! the same way (a write among them may have applied: the caller's retry
//! under the same request id settles it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::{Code, Status};

use crate::client::Stub;

/// Most requests in one batched call (the node takes up to
/// `nokv_proto::MAX_BATCH_CALLS`).
pub(crate) const MAX_ITEMS: usize = 256;

/// A batch takes no further request once it holds this many bytes, far
/// below the 4 MiB a call may carry.
pub(crate) const MAX_BYTES: usize = 1024 * 1024;

/// One request's answer: what the node said about it.
pub(crate) type Answer<R> = Result<R, Status>;

/// The answers of a batched call, one per request in order; `Err` if the
/// call as a whole failed.
pub(crate) type Answers<R> = Result<Vec<Answer<R>>, Status>;

/// A batch, and the queued item that did not fit in it.
type Gathered<Q, R> = (Vec<Item<Q, R>>, Option<Item<Q, R>>);

/// How one kind of request travels alone and in a batch.
pub(crate) struct Calls<Q, R> {
    pub one: fn(Stub, Q) -> BoxFuture<'static, Answer<R>>,
    pub many: fn(Stub, Vec<Q>) -> BoxFuture<'static, Answers<R>>,
}

impl<Q, R> Clone for Calls<Q, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Q, R> Copy for Calls<Q, R> {}

/// What the coalescers of a client sent so far (see
/// [`crate::Client::coalescing`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoalescingStats {
    /// Calls that carried one request (a plain `Mutate` or `Query`).
    pub lone_calls: u64,
    /// Batched calls, and the requests they carried.
    pub batched_calls: u64,
    pub batched_requests: u64,
}

#[derive(Default)]
struct Counters {
    lone_calls: AtomicU64,
    batched_calls: AtomicU64,
    batched_requests: AtomicU64,
}

struct Item<Q, R> {
    request: Q,
    bytes: usize,
    reply: oneshot::Sender<Answer<R>>,
}

/// The coalescing sender of one kind of request to one node.
pub(crate) struct Coalescer<Q, R> {
    stub: Stub,
    calls: Calls<Q, R>,
    inflight: usize,
    /// Bounds each call, so a hung one frees its slot.
    timeout: Duration,
    /// The sending task's queue; replaced if that task is gone (its runtime
    /// shut down while the client lives on).
    queue: Mutex<Option<mpsc::UnboundedSender<Item<Q, R>>>>,
    /// Set when the node does not know the batched call (an older version):
    /// every request then goes alone.
    unbatched: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl<Q, R> Coalescer<Q, R>
where
    Q: Message + Send + 'static,
    R: Send + 'static,
{
    pub(crate) fn new(stub: Stub, calls: Calls<Q, R>, inflight: usize, timeout: Duration) -> Self {
        Coalescer {
            stub,
            calls,
            inflight: inflight.max(1),
            timeout,
            queue: Mutex::new(None),
            unbatched: Arc::new(AtomicBool::new(false)),
            counters: Arc::default(),
        }
    }

    /// What this coalescer sent so far.
    pub(crate) fn stats(&self) -> CoalescingStats {
        CoalescingStats {
            lone_calls: self.counters.lone_calls.load(Ordering::Relaxed),
            batched_calls: self.counters.batched_calls.load(Ordering::Relaxed),
            batched_requests: self.counters.batched_requests.load(Ordering::Relaxed),
        }
    }

    /// Sends `request` (alone or with others) and waits for its answer.
    pub(crate) async fn call(&self, request: Q) -> Answer<R> {
        let (reply, answer) = oneshot::channel();
        let mut item = Item {
            bytes: request.encoded_len(),
            request,
            reply,
        };
        // A queue whose task is gone (its runtime stopped) is replaced once.
        for _ in 0..2 {
            let queue = self.queue();
            match queue.send(item) {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(Status::unknown(
                            "the request was dropped while being sent (it may have applied)",
                        ))
                    })
                }
                Err(mpsc::error::SendError(back)) => {
                    item = back;
                    if let Ok(mut q) = self.queue.lock() {
                        *q = None;
                    }
                }
            }
        }
        Err(Status::unavailable(
            "could not start sending (no runtime); the request was not sent",
        ))
    }

    /// The running task's queue, starting the task if there is none.
    fn queue(&self) -> mpsc::UnboundedSender<Item<Q, R>> {
        let mut guard = match self.queue.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(q) = guard.as_ref() {
            return q.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(
            rx,
            self.stub.clone(),
            self.calls,
            self.inflight,
            self.timeout,
            self.unbatched.clone(),
            self.counters.clone(),
        ));
        *guard = Some(tx.clone());
        tx
    }
}

/// Takes queued requests, as many as one call may carry, whenever a slot
/// is free; ends when the coalescer is dropped.
async fn send_loop<Q, R>(
    mut rx: mpsc::UnboundedReceiver<Item<Q, R>>,
    stub: Stub,
    calls: Calls<Q, R>,
    inflight: usize,
    timeout: Duration,
    unbatched: Arc<AtomicBool>,
    counters: Arc<Counters>,
) where
    Q: Send + 'static,
    R: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(inflight));
    let mut carried: Option<Item<Q, R>> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let (batch, rest) = gather(first, &mut rx);
        carried = rest;
        let stub = stub.clone();
        let unbatched = unbatched.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let _slot = slot;
            send(stub, calls, batch, timeout, &unbatched, &counters).await;
        });
    }
}

/// `first` and the requests queued behind it, up to [`MAX_ITEMS`] and
/// [`MAX_BYTES`]; the queued request that did not fit opens the next batch.
fn gather<Q, R>(first: Item<Q, R>, rx: &mut mpsc::UnboundedReceiver<Item<Q, R>>) -> Gathered<Q, R> {
    let mut bytes = first.bytes;
    let mut batch = vec![first];
    while batch.len() < MAX_ITEMS && bytes < MAX_BYTES {
        match rx.try_recv() {
            Ok(item) if bytes + item.bytes > MAX_BYTES => return (batch, Some(item)),
            Ok(item) => {
                bytes += item.bytes;
                batch.push(item);
            }
            Err(_) => break,
        }
    }
    (batch, None)
}

/// Sends one batch (alone if it holds one request) and answers each caller.
async fn send<Q, R>(
    stub: Stub,
    calls: Calls<Q, R>,
    batch: Vec<Item<Q, R>>,
    timeout: Duration,
    unbatched: &AtomicBool,
    counters: &Counters,
) where
    Q: Send + 'static,
    R: Send + 'static,
{
    if batch.len() == 1 || unbatched.load(Ordering::Relaxed) {
        counters
            .lone_calls
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let sent = batch.into_iter().map(|item| {
            let stub = stub.clone();
            async move {
                let answer = bounded(timeout, (calls.one)(stub, item.request)).await;
                let _ = item.reply.send(answer);
            }
        });
        futures::future::join_all(sent).await;
        return;
    }
    let (requests, replies): (Vec<Q>, Vec<_>) = batch
        .into_iter()
        .map(|item| (item.request, item.reply))
        .unzip();
    let count = requests.len();
    counters.batched_calls.fetch_add(1, Ordering::Relaxed);
    counters
        .batched_requests
        .fetch_add(count as u64, Ordering::Relaxed);
    match bounded(timeout, (calls.many)(stub.clone(), requests)).await {
        Ok(answers) if answers.len() == count => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Ok(answers) => {
            let status = Status::unknown(format!(
                "the node answered {} of {count} batched requests (they may have applied)",
                answers.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
        Err(status) if status.code() == Code::Unimplemented => {
            // Nothing was applied: the node does not know the call. Say so
            // once, and let the callers' retries go alone from now on.
            tracing::debug!("the node does not take batched calls; sending requests alone");
            unbatched.store(true, Ordering::Relaxed);
            let status = Status::unavailable("the node does not take batched calls; not sent");
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}

async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("the call timed out")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(bytes: usize) -> (Item<u32, u32>, oneshot::Receiver<Answer<u32>>) {
        let (reply, rx) = oneshot::channel();
        (
            Item {
                request: bytes as u32,
                bytes,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn batches_are_capped_by_count_and_by_bytes() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut keep = Vec::new();
        for _ in 0..MAX_ITEMS + 3 {
            let (i, r) = item(10);
            keep.push(r);
            tx.send(i).map_err(|_| "send").expect("queue");
        }
        let (first, _r) = item(10);
        let (batch, rest) = gather(first, &mut rx);
        assert_eq!(batch.len(), MAX_ITEMS);
        assert!(rest.is_none());
        let (first, _r) = item(10);
        let (batch, _) = gather(first, &mut rx);
        assert_eq!(batch.len(), 5, "what was left queued");

        // By bytes: the request that does not fit opens the next batch.
        for _ in 0..3 {
            let (i, r) = item(MAX_BYTES / 3);
            keep.push(r);
            tx.send(i).map_err(|_| "send").expect("queue");
        }
        let (first, _r) = item(MAX_BYTES / 3);
        let (batch, rest) = gather(first, &mut rx);
        assert_eq!(batch.len(), 3);
        let rest = rest.expect("the fourth did not fit");
        let (batch, rest) = gather(rest, &mut rx);
        assert_eq!(batch.len(), 1);
        assert!(rest.is_none());
    }
}
