//! Ending the process when a replica's Raft dies.
//!
//! openraft stops a Raft instance for good on a storage error (a log
//! append or flush that failed, a snapshot that could not be written) or a
//! broken invariant, and reports it as `Fatal` in its metrics. Before this
//! module the node went on accepting RPCs with that dead Raft: reads and
//! writes failed one by one while the process looked alive to its
//! supervisor. Now every replica watches its Raft; the first fatal error
//! stops the node's server and [`crate::run_node`] returns
//! `NodeError::Fatal`, so the process exits non-zero and is restarted
//! (after a restart, the log and snapshot on disk decide what it still
//! holds; nothing unacknowledged was ever assumed durable).

use std::sync::{Arc, Mutex};

use nokv_holt::ShardId;
use tokio_util::sync::CancellationToken;

use crate::typ::Raft;

/// Raised once by the first replica whose Raft died; shared by the node.
#[derive(Clone, Debug, Default)]
pub struct FatalSignal {
    raised: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl FatalSignal {
    /// Records `reason` (the first one wins) and wakes [`Self::raised`].
    pub fn raise(&self, reason: String) {
        let mut first = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(reason);
        self.raised.cancel();
    }

    /// Completes once a replica raised the signal.
    pub async fn raised(&self) {
        self.raised.cancelled().await
    }

    /// Why the node must stop, if a replica said so.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Raises `fatal` if `raft` stops on its own; returns quietly when `tasks`
/// is cancelled first (the replica is being stopped on purpose, which
/// cancels its tasks before it shuts its Raft down).
pub(crate) async fn watch(
    raft: Raft,
    shard: ShardId,
    fatal: FatalSignal,
    tasks: CancellationToken,
) {
    let mut metrics = raft.metrics();
    let reason = tokio::select! {
        _ = tasks.cancelled() => return,
        dead = metrics.wait_for(|m| m.running_state.is_err()) => match dead {
            Ok(m) => match &m.running_state {
                Err(e) => e.to_string(),
                Ok(()) => return,
            },
            Err(_) => "the Raft instance ended".to_string(),
        },
    };
    if tasks.is_cancelled() {
        return;
    }
    tracing::error!(%shard, error = %reason, "fatal Raft error: the node stops");
    fatal.raise(format!("{shard}: {reason}"));
}
