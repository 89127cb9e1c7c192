//! Group commit: concurrent client mutations are gathered into one Raft log
//! entry (`LogPayload::V1(batch)`), so one fsync on a quorum makes a whole
//! batch durable.
//!
//! At most `max_inflight` batches are in Raft at once. While they are, new
//! commands queue up, so batches grow with load and stay at one command when
//! idle (no added latency for a lone client).
//!
//! A batch is also capped by bytes ([`MAX_BATCH_BYTES`]), and one command by
//! [`MAX_COMMAND_BYTES`]: every entry this node proposes fits in one Raft
//! message and crosses to a follower within an AppendEntries deadline, so
//! no load can produce an entry that no follower ever accepts.

use std::sync::Arc;

use nokv_holt::{Command, LogIndex, LogPayload, Outcome};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::typ::{NodeId, Raft};

/// Largest command (in its log encoding) the proposer accepts. A client
/// request is at most `nokv_proto::MAX_CLIENT_MESSAGE` (4 MiB) of protobuf;
/// its log encoding (fixed-width integers) can be somewhat larger, never
/// this large for a request that passed validation. Far below
/// `nokv_proto::MAX_RAFT_MESSAGE` (64 MiB), so an entry of one such command
/// always fits in an AppendEntries.
pub const MAX_COMMAND_BYTES: u64 = 8 * 1024 * 1024;

/// A batch takes no further command once it holds this many bytes (a
/// larger command goes alone). Before this cap, a burst of 4 MiB commands
/// made entries of hundreds of MiB (up to 256 commands each) that no
/// follower could be sent: the Raft message limit refused them, and under
/// it they could not cross within openraft's AppendEntries deadline (one
/// heartbeat interval).
pub const MAX_BATCH_BYTES: u64 = 1024 * 1024;

/// Why a proposal has no outcome.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    /// The command may or may not be committed (leadership changed after it
    /// was proposed, or the node is stopping). Retrying with the same
    /// request id is safe: the dedupe table answers with the first result.
    #[error("outcome unknown: {reason}")]
    Unknown {
        reason: String,
        leader: Option<(NodeId, String)>,
    },
    /// The proposer has stopped; the command was never proposed.
    #[error("node is shutting down")]
    Stopped,
    /// The command is larger than one log entry may be; it was never
    /// proposed.
    #[error("the command takes {bytes} bytes in the log, more than the {MAX_COMMAND_BYTES} one entry may hold")]
    TooLarge { bytes: u64 },
}

struct Pending {
    command: Command,
    /// The command's size in its log encoding.
    bytes: u64,
    reply: oneshot::Sender<Result<(Outcome, LogIndex), ProposeError>>,
    /// When `propose` was called (for the `write_queue` stage).
    queued: std::time::Instant,
}

/// Handle to the group-commit task of one node.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching task; it stops when `shutdown` is cancelled.
    pub fn start(
        raft: Raft,
        max_batch: usize,
        max_inflight: usize,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Proposer {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * max_inflight.max(1) * 4);
        tokio::spawn(batch_loop(
            raft,
            rx,
            max_batch.max(1),
            max_inflight.max(1),
            metrics,
            shutdown,
        ));
        Proposer { tx }
    }

    /// Proposes `command` and waits for its outcome.
    pub async fn propose(&self, command: Command) -> Result<(Outcome, LogIndex), ProposeError> {
        // A command that cannot be sized cannot be encoded into the log
        // either: refuse it here rather than fail the whole batch.
        let bytes = crate::raft_wire::encoded_len(&command).unwrap_or(u64::MAX);
        if bytes > MAX_COMMAND_BYTES {
            return Err(ProposeError::TooLarge { bytes });
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                command,
                bytes,
                reply,
                queued: std::time::Instant::now(),
            })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Unknown {
            reason: "proposal dropped while the node stopped".into(),
            leader: None,
        })?
    }
}

async fn batch_loop(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    max_inflight: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_inflight));
    // A command that did not fit in the last batch opens the next one.
    let mut carried: Option<Pending> = None;
    loop {
        // Take a slot first: while every slot is busy, commands accumulate
        // in the channel and the next batch is larger.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let first = match carried.take() {
            Some(p) => p,
            None => tokio::select! {
                _ = shutdown.cancelled() => return,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            },
        };
        let (batch, rest) = gather(first, &mut rx, max_batch);
        carried = rest;
        metrics.batch_size.observe(batch.len() as f64);
        for p in &batch {
            metrics
                .stages
                .write_queue
                .observe(p.queued.elapsed().as_secs_f64());
        }
        let raft = raft.clone();
        let raft_seconds = metrics.stages.write_raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _timer = raft_seconds.start_timer();
            commit_batch(raft, batch).await;
        });
    }
}

/// One batch: `first`, then commands already queued, at most `max_batch`
/// of them and none once [`MAX_BATCH_BYTES`] is reached. Returns the batch
/// and the queued command that did not fit (it opens the next batch).
fn gather(
    first: Pending,
    rx: &mut mpsc::Receiver<Pending>,
    max_batch: usize,
) -> (Vec<Pending>, Option<Pending>) {
    let mut bytes = first.bytes;
    let mut batch = vec![first];
    while batch.len() < max_batch && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(p) if bytes.saturating_add(p.bytes) > MAX_BATCH_BYTES => return (batch, Some(p)),
            Ok(p) => {
                bytes = bytes.saturating_add(p.bytes);
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    (batch, None)
}

/// Proposes one batch and answers its commands.
///
/// Waits for openraft's answer only while this node leads in the term it
/// proposed in. openraft 0.9 never answers a proposal whose entry a
/// snapshot from a later leader replaced (a deposed leader caught up by
/// `install_full_snapshot` drops its uncommitted entries without telling
/// their callers), and a batch waiting forever keeps its in-flight slot:
/// after `max_inflight` of them this node accepted no write again, also
/// when it led later, while its reads still worked. That stalled writes
/// for 24.5 s in two Jepsen runs (docs/jepsen.md, ledger entry 7). Now a
/// batch whose leader moved on is answered "outcome unknown" (it may still
/// commit under the new leader; the request id makes a retry safe).
async fn commit_batch(raft: Raft, batch: Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = commands.len();
    let term = raft.metrics().borrow().current_term;
    let mut metrics = raft.metrics();
    let written = tokio::select! {
        written = raft.client_write(LogPayload::V1(commands)) => written,
        _ = metrics.wait_for(|m| m.current_term != term || m.state != ServerState::Leader) => {
            let leader = {
                let m = raft.metrics().borrow().clone();
                m.current_leader.and_then(|id| {
                    m.membership_config
                        .membership()
                        .get_node(&id)
                        .map(|n| (id, n.addr.clone()))
                })
            };
            fail_all(
                replies,
                unknown("leadership changed while the write was in flight", leader),
            );
            return;
        }
    };
    match written {
        Ok(resp) if resp.data.outcomes.len() == count => {
            let index = resp.data.index;
            for (reply, outcome) in replies.into_iter().zip(resp.data.outcomes) {
                let _ = reply.send(Ok((outcome, index)));
            }
        }
        Ok(resp) => {
            // Cannot happen while apply returns one outcome per command;
            // if it does, the commands did commit but we cannot tell which
            // result belongs to whom.
            tracing::error!(
                want = count,
                got = resp.data.outcomes.len(),
                "apply returned a wrong number of outcomes"
            );
            fail_all(
                replies,
                unknown("apply returned a wrong number of outcomes", None),
            );
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            let leader = f.leader_id.zip(f.leader_node.map(|n| n.addr));
            fail_all(
                replies,
                unknown("leadership changed during the write", leader),
            );
        }
        Err(e) => fail_all(replies, unknown(&e.to_string(), None)),
    }
}

fn unknown(reason: &str, leader: Option<(NodeId, String)>) -> ProposeError {
    ProposeError::Unknown {
        reason: reason.to_string(),
        leader,
    }
}

fn fail_all(
    replies: Vec<oneshot::Sender<Result<(Outcome, LogIndex), ProposeError>>>,
    err: ProposeError,
) {
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}

#[cfg(test)]
mod tests {
    use nokv_holt::{Command, EntryRef, Op, RequestId};
    use tokio::sync::{mpsc, oneshot};

    use super::{gather, Pending, MAX_BATCH_BYTES};

    fn pending(n: u128, bytes: u64) -> Pending {
        let (reply, _) = oneshot::channel();
        Pending {
            command: Command {
                request_id: RequestId(n),
                epoch: None,
                time_ns: 0,
                op: Op::Unlink {
                    at: EntryRef::Path(format!("/f{n}")),
                },
            },
            bytes,
            reply,
            queued: std::time::Instant::now(),
        }
    }

    fn ids(batch: &[Pending]) -> Vec<u128> {
        batch.iter().map(|p| p.command.request_id.0).collect()
    }

    #[test]
    fn batches_are_capped_by_count_and_by_bytes() {
        let (tx, mut rx) = mpsc::channel(64);
        // Small commands: the count cap applies.
        for n in 1..=5 {
            tx.try_send(pending(n, 100)).expect("queue");
        }
        let (batch, rest) = gather(pending(0, 100), &mut rx, 4);
        assert_eq!(ids(&batch), vec![0, 1, 2, 3]);
        assert!(rest.is_none());
        let (batch, rest) = gather(pending(10, 100), &mut rx, 4);
        assert_eq!(ids(&batch), vec![10, 4, 5], "what was queued");
        assert!(rest.is_none());

        // Large commands: a batch stops before the byte cap, and the
        // command that did not fit opens the next batch.
        let big = MAX_BATCH_BYTES / 3;
        for n in 21..=24 {
            tx.try_send(pending(n, big)).expect("queue");
        }
        let (batch, rest) = gather(pending(20, big), &mut rx, 256);
        assert_eq!(ids(&batch), vec![20, 21, 22]);
        let rest = rest.expect("the fourth did not fit");
        assert_eq!(rest.command.request_id.0, 23);
        let (batch, rest) = gather(rest, &mut rx, 256);
        assert_eq!(ids(&batch), vec![23, 24]);
        assert!(rest.is_none());

        // A command larger than the cap goes alone, and nothing joins it.
        tx.try_send(pending(31, 10)).expect("queue");
        let (batch, rest) = gather(pending(30, MAX_BATCH_BYTES * 4), &mut rx, 256);
        assert_eq!(ids(&batch), vec![30]);
        assert!(rest.is_none(), "31 stays queued");
        let (batch, _) = gather(pending(32, MAX_BATCH_BYTES * 2), &mut rx, 256);
        assert_eq!(ids(&batch), vec![32], "a huge first takes nothing after it");
        let (batch, _) = gather(pending(33, 10), &mut rx, 256);
        assert_eq!(ids(&batch), vec![33, 31]);
    }
}
