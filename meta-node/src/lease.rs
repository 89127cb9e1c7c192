//! Leader leases: linearizable reads on the leader without a quorum round.
//!
//! A read-index read ([`crate::read_index`]) asks a quorum "am I still the
//! leader?" for every batch of reads: a network round trip per read, most
//! of a linearizable stat's time (docs/benchmarks.md, "Where the time
//! goes"). A lease answers from what the leader already knows.
//!
//! # Why it is safe
//! openraft 0.9 refuses a vote while the voter's own vote lease runs: a
//! voter that holds a committed vote (it follows a leader) grants nothing
//! until `leader_lease` (the maximum election timeout) has passed on its
//! clock since it last accepted a message from that leader
//! (`Engine::handle_vote_req`). So when a quorum of voters accepted
//! messages that this leader *sent* at time `t` or later, no other leader
//! can be elected before `t + leader_lease`: every election needs a vote
//! from that quorum (or from this leader, which then steps down before
//! anything else runs in its Raft core).
//!
//! [`LeaseClock`] records, per follower, the send time of the newest
//! AppendEntries (heartbeats included) it accepted in this leader's term
//! (`crate::network`). A read is confirmed *inside the Raft core*
//! (`Raft::with_raft_state`, so nothing else changes the vote meanwhile):
//! the node leads with a committed vote, a quorum of every voter set of
//! the membership acknowledged it at `t`, and `now < t + usable`, where
//! `usable` is [`USABLE_FRACTION`] of the lease. The read then waits until
//! the leader has applied what was committed at that moment, as a
//! read-index read does.
//!
//! # What it assumes
//! - **Clock rates.** Each replica's monotonic clock advances at a rate
//!   within about 10 % of the others' over one lease (a few hundred
//!   milliseconds). Offsets between wall clocks do not matter: only
//!   durations on each node's own monotonic clock are compared. A machine
//!   whose clock can stall or race (a paused VM that resumes, say) breaks
//!   the assumption: run such clusters with `--read-lease false`.
//! - **Restarts.** A voter that restarts keeps its lease: openraft reads
//!   the saved (committed) vote back with the time of the restart as its
//!   last update (`StorageHelper::get_initial_state`), so it refuses votes
//!   and stands for no election for a whole lease after it starts. This
//!   relies on the vote being on disk before the answer that acknowledged
//!   the leader left (`raft-log` flushes `save_vote`).
//!
//! Anything that does not hold (a joint membership, no recent quorum
//! acknowledgement, nothing committed yet in this term) falls back to a
//! read-index round.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::typ::NodeId;

/// The part of the lease a leader uses: margin for clock-rate differences
/// between the leader and its followers (see the module docs).
pub const USABLE_FRACTION: f64 = 0.8;

/// The newest acknowledgement of one follower.
#[derive(Clone, Copy, Debug)]
struct Ack {
    term: u64,
    sent: Instant,
}

/// Send times of the newest accepted AppendEntries per follower, for one
/// shard replica.
#[derive(Debug, Default)]
pub struct LeaseClock {
    acks: Mutex<BTreeMap<NodeId, Ack>>,
}

impl LeaseClock {
    /// `target` accepted an AppendEntries of `term` that left here at `sent`.
    pub fn acked(&self, target: NodeId, term: u64, sent: Instant) {
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let newer = match acks.get(&target) {
            Some(a) => term > a.term || (term == a.term && sent > a.sent),
            None => true,
        };
        if newer {
            acks.insert(target, Ack { term, sent });
        }
    }

    /// The latest time `t` such that a majority of `voters` acknowledged
    /// this node (`me`, counted as acknowledging at `now`) as leader of
    /// `term` with messages sent at `t` or later; `None` without such a
    /// majority.
    pub fn quorum_acked(
        &self,
        me: NodeId,
        term: u64,
        voters: &BTreeSet<NodeId>,
        now: Instant,
    ) -> Option<Instant> {
        if voters.is_empty() {
            return None;
        }
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let mut times: Vec<Instant> = voters
            .iter()
            .filter_map(|v| {
                if *v == me {
                    Some(now)
                } else {
                    acks.get(v).filter(|a| a.term == term).map(|a| a.sent)
                }
            })
            .collect();
        let majority = voters.len() / 2 + 1;
        if times.len() < majority {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        times.get(majority - 1).copied()
    }
}

/// What the Raft core saw when a lease read was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseCheck {
    /// The lease holds: reads may serve state that includes this index.
    Valid { committed: u64 },
    /// This node does not lead.
    NotLeader,
    /// Leading, but the lease cannot vouch for it now (no recent quorum,
    /// a joint membership, or nothing committed in this term yet).
    Unsure,
}

/// Checks the lease against the Raft state the core holds right now. Runs
/// inside `Raft::with_raft_state`.
pub fn check(
    state: &openraft::RaftState<NodeId, openraft::BasicNode, Instant>,
    me: NodeId,
    clock: &LeaseClock,
    usable: Duration,
) -> LeaseCheck {
    let now = Instant::now();
    let vote = state.vote_ref();
    if state.server_state != openraft::ServerState::Leader
        || vote.leader_id().voted_for() != Some(me)
        || !vote.is_committed()
    {
        return LeaseCheck::NotLeader;
    }
    let term = vote.leader_id().get_term();
    let committed = match &state.committed {
        Some(c) if c.leader_id.get_term() == term => c.index,
        _ => return LeaseCheck::Unsure,
    };
    let configs = state
        .membership_state
        .effective()
        .membership()
        .get_joint_config();
    if configs.len() != 1 {
        return LeaseCheck::Unsure;
    }
    for voters in configs {
        match clock.quorum_acked(me, term, voters, now) {
            Some(t) if now < t + usable => {}
            _ => return LeaseCheck::Unsure,
        }
    }
    LeaseCheck::Valid { committed }
}

/// `USABLE_FRACTION` of `lease`.
pub fn usable(lease: Duration) -> Duration {
    lease.mul_f64(USABLE_FRACTION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_quorum_counts_the_leader_and_the_newest_follower() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(100);
        // Nobody acknowledged: the leader alone is no majority of three.
        assert_eq!(clock.quorum_acked(1, 5, &voters(&[1, 2, 3]), now), None);
        clock.acked(2, 5, t0);
        clock.acked(3, 5, t0 + Duration::from_millis(40));
        // Leader (now) and node 3 (the newer) make the majority.
        assert_eq!(
            clock.quorum_acked(1, 5, &voters(&[1, 2, 3]), now),
            Some(t0 + Duration::from_millis(40))
        );
        // Five voters: the third newest of (now, 40 ms, 0 ms, -, -).
        assert_eq!(
            clock.quorum_acked(1, 5, &voters(&[1, 2, 3, 4, 5]), now),
            Some(t0)
        );
        // A single voter leads alone.
        assert_eq!(clock.quorum_acked(1, 5, &voters(&[1]), now), Some(now));
    }

    #[test]
    fn acknowledgements_of_another_term_do_not_count() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(100);
        clock.acked(2, 4, t0);
        assert_eq!(clock.quorum_acked(1, 5, &voters(&[1, 2, 3]), now), None);
        // An older answer arriving late does not replace a newer one.
        clock.acked(2, 5, t0 + Duration::from_millis(10));
        clock.acked(2, 5, t0);
        assert_eq!(
            clock.quorum_acked(1, 5, &voters(&[1, 2, 3]), now),
            Some(t0 + Duration::from_millis(10))
        );
        // Nor does an answer of an older term.
        clock.acked(2, 4, t0 + Duration::from_millis(20));
        assert_eq!(
            clock.quorum_acked(1, 5, &voters(&[1, 2, 3]), now),
            Some(t0 + Duration::from_millis(10))
        );
    }
}
