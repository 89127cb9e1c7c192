//! Standing for election at once where waiting would cost a second round.
//!
//! openraft 0.9 starts an election when a follower's randomised timer runs
//! out. When the leader dies, the first follower to stand may hold a shorter
//! log than the other (under steady writes one of them is usually a few
//! entries behind). Then:
//!
//! 1. the follower with the longer log refuses the vote (Raft's log check)
//!    but keeps waiting for its own timer, and
//! 2. when that timer fires it stands in the same term the short-log
//!    candidate already voted itself in, is refused again, and waits one
//!    more election timeout before a third term elects it.
//!
//! That second round doubled the failover time in about half of the Jepsen
//! kill runs. [`Elections`] removes it with two nudges, both only ever
//! *starting* an election (which Raft allows at any time, so safety does
//! not depend on them):
//!
//! - [`Elections::after_refusing`] (on the voter): we refused a candidate
//!   of a newer term because our log is longer, and no leader has sent us
//!   anything for a leader lease: the leader is gone and we are the better
//!   candidate, so stand now.
//! - [`Elections::after_refused`] (on the candidate): a peer refused us
//!   because it voted for itself in our term, and our log is longer than
//!   its: stand again at once in the next term; that peer will grant it.
//!
//! Neither fires between candidates with equal logs (their split is left to
//! the randomised timers, or both would re-stand forever), nor while a
//! leader is heard from.
//!
//! And one thing openraft does is undone: a candidate refused by a peer
//! with a longer log sets a flag that adds `2 × election_timeout_max`
//! (800 ms) to its *next* election timer, so that the better peer stands
//! first. openraft 0.9 clears that flag only when the node next stands
//! itself, so it outlives the election it was about: after a few failovers
//! both survivors carried it, and failover took 1.5 s instead of 0.7 s
//! (measured: the second mode of the Jepsen kill runs). With the nudges
//! the better peer has already stood by the time the refusal arrives, so
//! [`Elections::presented`] hands openraft the refusal without the peer's
//! longer log id (openraft reads that field for nothing else).
//!
//! Must not depend on: the client service or the state machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use openraft::raft::{VoteRequest, VoteResponse};
use openraft::ServerState;
use prometheus::IntCounterVec;

use crate::typ::{NodeId, Raft};

/// Why a node stands early (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nudge {
    /// We refused a newer candidate with a shorter log, and the leader is silent.
    RefusedShorterLog,
    /// A peer with a shorter log refused us because it voted for itself.
    LostSplitWithLongerLog,
}

impl Nudge {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Nudge::RefusedShorterLog => "refused_shorter_log",
            Nudge::LostSplitWithLongerLog => "lost_split_with_longer_log",
        }
    }
}

/// Should a voter that just answered `req` with `resp` stand at once?
///
/// `silent_for` is how long since the last AppendEntries reached us (or
/// since this process started, if none did yet: a replica that just
/// restarted has not had the chance to hear a live leader), `lease` the
/// leader lease (openraft's `election_timeout_max`).
pub fn should_stand_after_refusing(
    req: &VoteRequest<NodeId>,
    resp: &VoteResponse<NodeId>,
    silent_for: Duration,
    lease: Duration,
) -> bool {
    !resp.vote_granted
        && req.last_log_id < resp.last_log_id
        && req.vote.leader_id().term > resp.vote.leader_id().term
        && silent_for > lease
}

/// Should a candidate whose `req` got `resp` stand again at once?
pub fn should_stand_again(req: &VoteRequest<NodeId>, resp: &VoteResponse<NodeId>) -> bool {
    !resp.vote_granted
        && resp.vote != req.vote
        && resp.vote.leader_id().term == req.vote.leader_id().term
        && !resp.vote.is_committed()
        && resp.last_log_id < req.last_log_id
}

/// A refusal as openraft should see it: a longer log of the peer is not
/// reported (see the module doc); everything else unchanged.
pub fn without_longer_log(
    req: &VoteRequest<NodeId>,
    mut resp: VoteResponse<NodeId>,
) -> VoteResponse<NodeId> {
    if !resp.vote_granted && resp.last_log_id > req.last_log_id {
        resp.last_log_id = req.last_log_id;
    }
    resp
}

/// The nudges of one node; shared by its Raft server and its peer clients.
pub struct Elections {
    raft: OnceLock<Raft>,
    /// Counts nudges by reason (`nokv_raft_early_elections_total`).
    counter: Option<IntCounterVec>,
    lease: Duration,
    /// When a leader last spoke to us (at first: when we started).
    last_append: Mutex<Instant>,
    /// When a leader last spoke to us; `None` until one did (read by
    /// [`crate::idle`], which must not count the start as a leader's word).
    leader_heard: Mutex<Option<Instant>>,
    /// Highest term a nudge stood from (so several refusals of one round
    /// start one election, not one each).
    nudged_from_term: AtomicU64,
    /// When the last chunk of a snapshot still being received was
    /// accepted (`None` once the last chunk is in); read by [`crate::idle`].
    snapshot_chunk_at: Mutex<Option<Instant>>,
    /// Wakes [`crate::idle`] when a chunk is accepted.
    chunk_accepted: tokio::sync::Notify,
}

impl Elections {
    pub fn new(lease: Duration, counter: Option<IntCounterVec>) -> Elections {
        Elections {
            raft: OnceLock::new(),
            counter,
            lease,
            last_append: Mutex::new(Instant::now()),
            leader_heard: Mutex::new(None),
            nudged_from_term: AtomicU64::new(0),
            snapshot_chunk_at: Mutex::new(None),
            chunk_accepted: tokio::sync::Notify::new(),
        }
    }

    /// Connects the nudges to the node's Raft (they do nothing before).
    pub fn attach(&self, raft: Raft) {
        let _ = self.raft.set(raft);
    }

    /// A leader of our term or a newer one spoke to us: an AppendEntries
    /// (or heartbeat) or a snapshot chunk that Raft accepted (not one it
    /// refused for a stale term: a deposed leader is no sign of life).
    pub fn heard_from_leader(&self) {
        let now = Instant::now();
        if let Ok(mut last) = self.last_append.lock() {
            *last = now;
        }
        if let Ok(mut heard) = self.leader_heard.lock() {
            *heard = Some(now);
        }
    }

    /// Raft accepted a snapshot chunk from the leader; `last`: it completed
    /// the snapshot (which openraft then installs).
    ///
    /// openraft 0.9 receives chunks without its core, so they do not
    /// restart its election timer; only the heartbeats between them do,
    /// and on a congested link those queue behind the chunks. [`crate::idle`]
    /// holds the timer while chunks keep coming (ledger entry 5 of
    /// docs/jepsen.md).
    pub fn snapshot_chunk_accepted(&self, last: bool) {
        self.heard_from_leader();
        if let Ok(mut at) = self.snapshot_chunk_at.lock() {
            *at = (!last).then(Instant::now);
        }
        self.chunk_accepted.notify_one();
    }

    /// How long since the last chunk of a snapshot that is still being
    /// received; `None` if none is.
    pub fn receiving_snapshot_for(&self) -> Option<Duration> {
        self.snapshot_chunk_at
            .lock()
            .ok()
            .and_then(|at| at.map(|at| at.elapsed()))
    }

    /// Resolves when a snapshot chunk is accepted (at once if one was since
    /// the last call).
    pub async fn snapshot_chunk_arrived(&self) {
        self.chunk_accepted.notified().await;
    }

    /// How long since a leader last spoke to us; `None` if none did since
    /// this replica started.
    pub fn leader_silent_for(&self) -> Option<Duration> {
        self.leader_heard
            .lock()
            .ok()
            .and_then(|heard| heard.map(|at| at.elapsed()))
    }

    /// The server answered a vote request.
    pub fn after_refusing(&self, req: &VoteRequest<NodeId>, resp: &VoteResponse<NodeId>) {
        let Ok(silent_for) = self.last_append.lock().map(|last| last.elapsed()) else {
            return;
        };
        if should_stand_after_refusing(req, resp, silent_for, self.lease) {
            self.stand(Nudge::RefusedShorterLog, resp.vote.leader_id().term, None);
        }
    }

    /// A peer answered our vote request.
    pub fn after_refused(&self, req: &VoteRequest<NodeId>, resp: &VoteResponse<NodeId>) {
        if should_stand_again(req, resp) {
            let term = req.vote.leader_id().term;
            self.stand(
                Nudge::LostSplitWithLongerLog,
                term,
                Some(ServerState::Candidate),
            );
        }
    }

    /// What openraft is handed for the answer `resp` to our `req`.
    pub fn presented(
        &self,
        req: &VoteRequest<NodeId>,
        resp: VoteResponse<NodeId>,
    ) -> VoteResponse<NodeId> {
        if self.raft.get().is_some() {
            without_longer_log(req, resp)
        } else {
            resp
        }
    }

    /// Starts an election unless this node moved on from `term` (or is not
    /// in `state`) meanwhile.
    fn stand(&self, why: Nudge, term: u64, state: Option<ServerState>) {
        let Some(raft) = self.raft.get() else {
            return;
        };
        {
            let m = raft.metrics().borrow().clone();
            let moved_on = m.current_term != term
                || m.state == ServerState::Leader
                || state.is_some_and(|s| m.state != s);
            if moved_on {
                return;
            }
        }
        if self.nudged_from_term.fetch_max(term, Ordering::AcqRel) >= term {
            return;
        }
        if let Some(counter) = &self.counter {
            counter.with_label_values(&[why.label()]).inc();
        }
        tracing::info!(?why, term, "standing for election at once");
        let raft = raft.clone();
        tokio::spawn(async move {
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start an election");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    const LEASE: Duration = Duration::from_millis(400);
    const SILENT: Duration = Duration::from_millis(700);

    #[test]
    fn a_voter_with_the_longer_log_stands_once_the_leader_is_silent() {
        // Candidate 2 stands in term 6 with log 5-100; we (3) are at term 5
        // with log 5-103 and refused it.
        let req = VoteRequest::new(Vote::new(6, 2), log(5, 100));
        let resp = VoteResponse::new(Vote::new_committed(5, 1), log(5, 103), false);
        assert!(should_stand_after_refusing(&req, &resp, SILENT, LEASE));
        // The leader spoke lately: a partitioned node is asking; stay put.
        // (Also right after a restart, before any leader could speak.)
        let recent = Duration::from_millis(100);
        assert!(!should_stand_after_refusing(&req, &resp, recent, LEASE));
        // Granted, or refused with an equal or shorter log: nothing to fix.
        let granted = VoteResponse::new(Vote::new(6, 2), log(5, 100), true);
        assert!(!should_stand_after_refusing(&req, &granted, SILENT, LEASE));
        let equal = VoteResponse::new(Vote::new_committed(5, 1), log(5, 100), false);
        assert!(!should_stand_after_refusing(&req, &equal, SILENT, LEASE));
        // We already stand in that term ourselves: the candidate side handles it.
        let rival = VoteResponse::new(Vote::new(6, 3), log(5, 103), false);
        assert!(!should_stand_after_refusing(&req, &rival, SILENT, LEASE));
    }

    #[test]
    fn a_candidate_with_the_longer_log_stands_again_after_a_split() {
        // We (3) stand in term 6 with log 5-103; peer 2 voted for itself in
        // term 6 and has log 5-100.
        let req = VoteRequest::new(Vote::new(6, 3), log(5, 103));
        let split = VoteResponse::new(Vote::new(6, 2), log(5, 100), false);
        assert!(should_stand_again(&req, &split));
        // Equal logs: leave the split to the randomised timers.
        let equal = VoteResponse::new(Vote::new(6, 2), log(5, 103), false);
        assert!(!should_stand_again(&req, &equal));
        // The peer's log is longer: it is the better candidate.
        let longer = VoteResponse::new(Vote::new(6, 2), log(5, 104), false);
        assert!(!should_stand_again(&req, &longer));
        // Refused by a live leader's lease (older, committed vote).
        let lease = VoteResponse::new(Vote::new_committed(5, 1), log(5, 100), false);
        assert!(!should_stand_again(&req, &lease));
        // A newer term is around: openraft follows it by itself.
        let newer = VoteResponse::new(Vote::new(7, 2), log(5, 100), false);
        assert!(!should_stand_again(&req, &newer));
        let granted = VoteResponse::new(Vote::new(6, 3), log(5, 100), true);
        assert!(!should_stand_again(&req, &granted));
    }

    #[test]
    fn a_refusal_by_a_longer_log_reaches_openraft_without_it() {
        let req = VoteRequest::new(Vote::new(6, 2), log(5, 100));
        let longer = VoteResponse::new(Vote::new_committed(5, 1), log(5, 103), false);
        let shown = without_longer_log(&req, longer.clone());
        assert_eq!(shown.last_log_id, log(5, 100));
        assert_eq!((shown.vote, shown.vote_granted), (longer.vote, false));
        // Grants and refusals by a shorter or equal log pass unchanged.
        for resp in [
            VoteResponse::new(Vote::new(6, 2), log(5, 103), true),
            VoteResponse::new(Vote::new(6, 3), log(5, 99), false),
            VoteResponse::new(Vote::new(6, 3), log(5, 100), false),
        ] {
            assert_eq!(without_longer_log(&req, resp.clone()), resp);
        }
    }
}
