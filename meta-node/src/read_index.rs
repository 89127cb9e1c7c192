//! Batched read-index for linearizable reads.
//!
//! Each confirmation costs a heartbeat round to a quorum, so concurrent reads
//! share one: a read waits for the next confirmation that *starts after it
//! arrived* (never one already in flight, which could predate a write the
//! reader saw acknowledged). One task runs rounds back to back; every waiter
//! queued when a round starts is answered by that round.

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::typ::Raft;

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

impl ReadIndex {
    pub fn start(raft: Raft, shutdown: CancellationToken) -> ReadIndex {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(rounds(raft, rx, shutdown));
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

async fn rounds(raft: Raft, mut rx: mpsc::Receiver<Waiter>, shutdown: CancellationToken) {
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
        let result = match raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(ReadIndexError::NotLeader)
            }
            Err(e) => Err(ReadIndexError::Unavailable(e.to_string())),
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}
