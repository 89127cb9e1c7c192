//! Batched read-index for linearizable reads.
//!
//! Each confirmation costs a heartbeat round to a quorum, so concurrent reads
//! share one: a read waits for the next confirmation that *starts after it
//! arrived* (never one already in flight, which could predate a write the
//! reader saw acknowledged). One task runs rounds back to back; every waiter
//! queued when a round starts is answered by that round.
//!
//! A confirmation yields a *read index*: what was committed when it was
//! made (and at least the tenure start, below). The leader reads once it
//! has applied that far ([`ReadIndex::confirm`]); a follower serving a
//! linearizable read asks the leader for one over the Raft transport
//! ([`ReadIndex::confirm_index`], [`ReadIndexAnswer`]) and reads once its
//! own state has applied that far.
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

/// Longest wait for a replica to apply up to a read index (a restored
/// leader its own log, a follower what the leader confirmed).
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

type Waiter = oneshot::Sender<Result<u64, ReadIndexError>>;

/// Handle to the read-index task of one node.
#[derive(Clone)]
pub struct ReadIndex {
    tx: mpsc::Sender<Waiter>,
    raft: Raft,
}

/// The leader's answer to a follower's `RaftService.ReadIndex` (encoded
/// with the Raft wire format).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReadIndexAnswer {
    /// Read once this log index is applied.
    Index(u64),
    /// The asked node does not lead; who does, when it knows.
    NotLeader(Option<(NodeId, String)>),
    /// It leads but could not confirm it (no quorum, stopping).
    Unavailable(String),
}

/// The leader's id and address as `raft` knows them.
pub(crate) fn leader_hint(raft: &Raft) -> Option<(NodeId, String)> {
    let m = raft.metrics().borrow().clone();
    let leader = m.current_leader?;
    let addr = m
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.addr.clone())
        .unwrap_or_default();
    Some((leader, addr))
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
        tokio::spawn(rounds(raft.clone(), rx, shutdown, lease, confirmations));
        ReadIndex { tx, raft }
    }

    /// Returns once this node has confirmed it leads and has applied every
    /// entry committed before the call: local state is then linearizable.
    pub async fn confirm(&self) -> Result<(), ReadIndexError> {
        let index = self.confirm_index().await?;
        wait_applied(&self.raft, index).await
    }

    /// Confirms that this node leads, by a confirmation that starts after
    /// the call, and returns the read index: a state that has applied it
    /// has every write acknowledged before the call.
    pub async fn confirm_index(&self) -> Result<u64, ReadIndexError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .await
            .map_err(|_| ReadIndexError::Unavailable("node is shutting down".into()))?;
        rx.await
            .map_err(|_| ReadIndexError::Unavailable("node is shutting down".into()))?
    }

    /// [`ReadIndex::confirm_index`] as the answer to a follower.
    pub async fn answer(&self) -> ReadIndexAnswer {
        match self.confirm_index().await {
            Ok(index) => ReadIndexAnswer::Index(index),
            Err(ReadIndexError::NotLeader) => ReadIndexAnswer::NotLeader(leader_hint(&self.raft)),
            Err(ReadIndexError::Unavailable(why)) => ReadIndexAnswer::Unavailable(why),
        }
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

/// Confirms by the leader lease, checked inside the Raft core; the read
/// index is what was committed at that moment (at least the tenure
/// start). `None`: the lease cannot vouch now, do a quorum round.
async fn confirm_by_lease(
    raft: &Raft,
    tenure: &mut Option<Tenure>,
    lease: &LeaseReads,
) -> Option<Result<u64, ReadIndexError>> {
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
    Some(Ok(floor.max(committed)))
}

/// Waits (bounded) until `raft`'s state machine has applied `floor`.
pub(crate) async fn wait_applied(raft: &Raft, floor: u64) -> Result<(), ReadIndexError> {
    raft.wait(Some(TENURE_APPLY_TIMEOUT))
        .applied_index_at_least(Some(floor), "applied up to the read index")
        .await
        .map(|_| ())
        .map_err(|e| {
            ReadIndexError::Unavailable(format!(
                "this replica has not applied up to the read index {floor} yet: {e}"
            ))
        })
}

/// One read-index round: confirm leadership with a quorum; the read index
/// is openraft's (its commit index then) or this tenure's start index,
/// whichever is later.
async fn confirm_round(raft: &Raft, tenure: &mut Option<Tenure>) -> Result<u64, ReadIndexError> {
    let floor = tenure_floor(raft, tenure)?;
    match raft.get_read_log_id().await {
        Ok((read, _applied)) => Ok(floor.max(read.map_or(0, |id| id.index))),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
            Err(ReadIndexError::NotLeader)
        }
        Err(e) => Err(ReadIndexError::Unavailable(e.to_string())),
    }
}
