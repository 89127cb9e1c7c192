//! Group commit: concurrent client mutations are gathered into one Raft log
//! entry (`LogPayload::V1(batch)`), so one fsync on a quorum makes a whole
//! batch durable.
//!
//! At most `max_inflight` batches are in Raft at once. While they are, new
//! commands queue up, so batches grow with load and stay at one command when
//! idle (no added latency for a lone client).

use std::sync::Arc;

use nokv_holt::{Command, LogIndex, LogPayload, Outcome};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::typ::{NodeId, Raft};

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
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<(Outcome, LogIndex), ProposeError>>,
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
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { command, reply })
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
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = rx.recv() => match p {
                Some(p) => p,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        metrics.batch_size.observe(batch.len() as f64);
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            commit_batch(raft, batch).await;
        });
    }
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
