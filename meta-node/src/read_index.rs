//! Batched read-index for linearizable reads.
//!
//! Each confirmation costs a heartbeat round to a quorum, so concurrent reads
//! share one: a read waits for the next confirmation that *starts after it
//! arrived* (never one already in flight, which could predate a write the
//! reader saw acknowledged). One task runs rounds back to back; every waiter
//! queued when a round starts is answered by that round.
//!
//! Restored leaders: openraft 0.9 brings a node that led before a restart
//! back as leader of the same term without a new no-op entry, and its read
//! index is then `max(first entry of the term, saved commit index)`, where the
//! saved commit index may predate writes acknowledged before the crash. Every
//! acknowledged write is in the leader's own log (our log store acknowledges
//! an append only after fsync, and the leader appends before replicating),
//! so we additionally wait until the leader has applied everything its log
//! held when its tenure began. For a freshly elected leader this adds
//! nothing: its no-op entry already lies beyond that point.

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use std::sync::Arc;

use crate::lease::{LeaseCheck, LeaseClock};
use crate::typ::{NodeId, Raft};

/// Longest wait for a restored leader to apply its own log before a read.
const TENURE_APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader term this node is serving reads in, and its last log index
/// when that term's leadership was first observed here.
#[derive(Clone, Copy, Debug)]
struct Tenure {
    term: u64,
    start_index: u64,
}

/// Why a linearizable read could not be confirmed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReadIndexError {
    #[error("not the leader")]
    NotLeader,
    #[error("cannot confirm leadership: {0}")]
    Unavailable(String),
}

type Waiter = oneshot::Sender<Result<(), ReadIndexError>>;

/// Handle to the read-index task of one node.
#[derive(Clone)]
pub struct ReadIndex {
    tx: mpsc::Sender<Waiter>,
}

/// Lease reads (see `crate::lease`): the clock the network feeds, this
/// node's id, and the part of the lease a read may use.
#[derive(Clone)]
pub struct LeaseReads {
    pub clock: Arc<LeaseClock>,
    pub node_id: NodeId,
    pub usable: Duration,
}

impl ReadIndex {
    /// Starts the task that confirms reads: by the leader lease when
    /// `lease` is given and it holds, by a quorum round otherwise.
    pub fn start(
        raft: Raft,
        shutdown: CancellationToken,
        lease: Option<LeaseReads>,
        confirmations: prometheus::IntCounterVec,
    ) -> ReadIndex {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(rounds(raft, rx, shutdown, lease, confirmations));
        ReadIndex { tx }
    }

    /// Returns once this node has confirmed it leads and has applied every
    /// entry committed before the call: local state is then linearizable.
    pub async fn confirm(&self) -> Result<(), ReadIndexError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .await
            .map_err(|_| ReadIndexError::Unavailable("node is shutting down".into()))?;
        rx.await
            .map_err(|_| ReadIndexError::Unavailable("node is shutting down".into()))?
    }
}

async fn rounds(
    raft: Raft,
    mut rx: mpsc::Receiver<Waiter>,
    shutdown: CancellationToken,
    lease: Option<LeaseReads>,
    confirmations: prometheus::IntCounterVec,
) {
    let by_lease = confirmations.with_label_values(&["lease"]);
    let by_quorum = confirmations.with_label_values(&["quorum"]);
    let mut tenure: Option<Tenure> = None;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            w = rx.recv() => match w {
                Some(w) => w,
                None => return,
            },
        };
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let by_lease_now = match &lease {
            Some(lease) => confirm_by_lease(&raft, &mut tenure, lease).await,
            None => None,
        };
        let result = match by_lease_now {
            Some(result) => {
                by_lease.inc();
                result
            }
            None => {
                by_quorum.inc();
                confirm_round(&raft, &mut tenure).await
            }
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// The tenure's start index (the floor every read of this term waits
/// for), or `NotLeader`.
fn tenure_floor(raft: &Raft, tenure: &mut Option<Tenure>) -> Result<u64, ReadIndexError> {
    let m = raft.metrics().borrow().clone();
    if m.current_leader != Some(m.id) {
        return Err(ReadIndexError::NotLeader);
    }
    Ok(match *tenure {
        Some(t) if t.term == m.current_term => t.start_index,
        _ => {
            let t = Tenure {
                term: m.current_term,
                start_index: m.last_log_index.unwrap_or(0),
            };
            *tenure = Some(t);
            t.start_index
        }
    })
}

/// Confirms by the leader lease, checked inside the Raft core; then waits
/// until what was committed at that moment (and the tenure start) is
/// applied. `None`: the lease cannot vouch now, do a quorum round.
async fn confirm_by_lease(
    raft: &Raft,
    tenure: &mut Option<Tenure>,
    lease: &LeaseReads,
) -> Option<Result<(), ReadIndexError>> {
    let floor = match tenure_floor(raft, tenure) {
        Ok(floor) => floor,
        Err(e) => return Some(Err(e)),
    };
    let (clock, me, usable) = (lease.clock.clone(), lease.node_id, lease.usable);
    let checked = raft
        .with_raft_state(move |st| crate::lease::check(st, me, &clock, usable))
        .await;
    let committed = match checked {
        Ok(LeaseCheck::Valid { committed }) => committed,
        Ok(LeaseCheck::NotLeader) => return Some(Err(ReadIndexError::NotLeader)),
        Ok(LeaseCheck::Unsure) => return None,
        Err(e) => return Some(Err(ReadIndexError::Unavailable(e.to_string()))),
    };
    Some(wait_applied(raft, floor.max(committed)).await)
}

async fn wait_applied(raft: &Raft, floor: u64) -> Result<(), ReadIndexError> {
    raft.wait(Some(TENURE_APPLY_TIMEOUT))
        .applied_index_at_least(Some(floor), "leader applied its tenure start")
        .await
        .map(|_| ())
        .map_err(|e| {
            ReadIndexError::Unavailable(format!("leader has not applied its log yet: {e}"))
        })
}

/// One read-index round: confirm leadership with a quorum, then wait until
/// both openraft's read index and this tenure's start index are applied.
async fn confirm_round(raft: &Raft, tenure: &mut Option<Tenure>) -> Result<(), ReadIndexError> {
    let floor = tenure_floor(raft, tenure)?;
    match raft.ensure_linearizable().await {
        Ok(_) => {}
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
            return Err(ReadIndexError::NotLeader)
        }
        Err(e) => return Err(ReadIndexError::Unavailable(e.to_string())),
    }
    wait_applied(raft, floor).await
}
