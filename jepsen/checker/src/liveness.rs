//! The liveness checker: a cluster that stays safe but stops serving is
//! also a failed test.
//!
//! Three properties, each with a bound:
//!
//! * **Writes resume after a leader loss.** For every fault that took the
//!   leader away, the longest gap between consecutive acknowledged writes,
//!   from the fault's start to the first acknowledgement after the fault was
//!   in place, must not exceed the *resume bound*. Only time during which a
//!   majority of replicas could talk to each other counts: without a
//!   majority no write can commit, and waiting is correct. A gap still open
//!   when the workloads stopped counts too (writes never resumed).
//! * **Writes never stop for long while a majority can talk.** The longest
//!   gap between consecutive acknowledged writes anywhere in the run,
//!   counting only majority time, must not exceed the *gap bound*. This
//!   catches stalls that no leader-taking fault explains, or that start
//!   after writes had briefly resumed (a 24.7 s stall of this kind passed
//!   the per-loss check in a reproduction of issue 16). Its bound is looser
//!   than the resume bound: a heal that deposes a leader, a bridge or a
//!   leadership transfer may cost an election and a client's rediscovery.
//! * **The cluster settles after the final heal.** Every replica must agree
//!   on a leader within the *settle bound* of the end of the last heal.
//!
//! The checker sees only times: acknowledgement times, fault windows, the
//! moments replicas went down or came back and links were cut or healed
//! ([`TopologyEvent`]), and when the cluster was seen settled. It knows
//! nothing of how they were measured.
//!
//! When a fault "takes effect" is uncertain (a `docker kill` takes up to
//! 1.5 s to return), so each fault is a window: it may act from its start
//! and is surely in place at its end. Majority time is counted
//! conservatively: a replica or link is treated as lost from the start of
//! its fault until the end of its heal.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::history::TimeNs;

/// The bounds of the liveness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessBounds {
    /// Longest write stall allowed after a leader loss, counting only time
    /// a majority could talk to each other.
    pub resume_ns: u64,
    /// Longest time from the end of the final heal until every replica
    /// agrees on a leader.
    pub settle_ns: u64,
    /// Longest gap between acknowledged writes anywhere in the run,
    /// counting only majority time.
    pub gap_ns: u64,
}

impl Default for LivenessBounds {
    fn default() -> Self {
        LivenessBounds {
            resume_ns: 3_000_000_000,
            settle_ns: 10_000_000_000,
            gap_ns: 5_000_000_000,
        }
    }
}

/// A fault that took the leader away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderLoss {
    /// What happened, for the report (e.g. `kill of leader 2`).
    pub label: String,
    /// When the fault began: the leader may be gone from here on.
    pub start_ns: TimeNs,
    /// When the fault was surely in place.
    pub in_place_ns: TimeNs,
}

/// A change of the cluster's topology, as the nemesis made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum TopologyChange {
    /// The replica stopped serving (killed, paused).
    Down { node: u64 },
    /// It serves again.
    Up { node: u64 },
    /// The link between two replicas was cut (both directions).
    Cut { a: u64, b: u64 },
    /// It was restored.
    Heal { a: u64, b: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyEvent {
    pub time_ns: TimeNs,
    pub change: TopologyChange,
}

/// Whether some replica that is up reaches a majority (itself included)
/// over uncut links: the condition for a leader to commit.
fn has_majority(nodes: &[u64], down: &BTreeSet<u64>, cut: &BTreeSet<(u64, u64)>) -> bool {
    let majority = nodes.len() / 2 + 1;
    nodes.iter().filter(|n| !down.contains(n)).any(|&n| {
        let reached = nodes
            .iter()
            .filter(|&&m| m != n && !down.contains(&m) && !cut.contains(&(n.min(m), n.max(m))))
            .count();
        reached + 1 >= majority
    })
}

/// The intervals `[from, to)` during which no majority of `nodes` could
/// talk to each other, from topology events (applied in time order; a
/// cluster starts whole). An interval still open at the last event ends at
/// `end_ns`.
pub fn no_majority_intervals(
    nodes: &[u64],
    events: &[TopologyEvent],
    end_ns: TimeNs,
) -> Vec<(TimeNs, TimeNs)> {
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| e.time_ns);
    let mut down = BTreeSet::new();
    let mut cut = BTreeSet::new();
    let mut intervals = Vec::new();
    let mut lost_since: Option<TimeNs> = None;
    for e in sorted {
        match e.change {
            TopologyChange::Down { node } => {
                down.insert(node);
            }
            TopologyChange::Up { node } => {
                down.remove(&node);
            }
            TopologyChange::Cut { a, b } => {
                cut.insert((a.min(b), a.max(b)));
            }
            TopologyChange::Heal { a, b } => {
                cut.remove(&(a.min(b), a.max(b)));
            }
        }
        match (has_majority(nodes, &down, &cut), lost_since) {
            (false, None) => lost_since = Some(e.time_ns),
            (true, Some(from)) => {
                intervals.push((from, e.time_ns));
                lost_since = None;
            }
            _ => {}
        }
    }
    if let Some(from) = lost_since {
        intervals.push((from, end_ns.max(from)));
    }
    intervals
}

/// What the checker saw of one leader loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stall {
    pub label: String,
    pub fault_start_ns: TimeNs,
    /// The longest gap: from the last acknowledgement before it (or the
    /// fault's start) ...
    pub from_ns: TimeNs,
    /// ... to the first acknowledgement after it; `None`: writes had not
    /// resumed when the workloads stopped.
    pub to_ns: Option<TimeNs>,
    /// The gap's length in milliseconds, counting only majority time.
    pub stall_ms: f64,
}

/// What the liveness checker found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LivenessSummary {
    pub resume_bound_ms: f64,
    pub settle_bound_ms: f64,
    pub gap_bound_ms: f64,
    /// Leader losses checked.
    pub leader_losses: usize,
    /// The longest stall after any leader loss.
    pub longest_stall_ms: Option<f64>,
    /// The longest gap between acknowledged writes anywhere in the run
    /// (majority time only), whatever caused it.
    pub longest_write_gap: Option<Stall>,
    /// That gap is over the gap bound.
    pub gap_over_bound: bool,
    /// Leader losses after which writes did not resume within the bound.
    pub stalled: Vec<Stall>,
    /// From the end of the final heal until every replica agreed on a
    /// leader; `None`: they never did while the harness waited.
    pub settle_ms: Option<f64>,
    /// The cluster did not settle within the bound.
    pub not_settled: bool,
    /// No stall or gap over its bound, and the cluster settled in time.
    pub valid: bool,
}

/// Everything the liveness check reads.
#[derive(Debug, Clone, Copy)]
pub struct LivenessInput<'a> {
    /// Completion times of every acknowledged write (any order).
    pub acks: &'a [TimeNs],
    pub leader_losses: &'a [LeaderLoss],
    /// When no majority could talk (see [`no_majority_intervals`]).
    pub no_majority: &'a [(TimeNs, TimeNs)],
    /// When the workloads stopped issuing writes.
    pub end_ns: TimeNs,
    /// When the final heal was done.
    pub final_heal_ns: TimeNs,
    /// When every replica was first seen agreeing on a leader after it.
    pub settled_ns: Option<TimeNs>,
}

/// Length of `[from, to)` minus the parts without a majority.
fn majority_time(from: TimeNs, to: TimeNs, no_majority: &[(TimeNs, TimeNs)]) -> u64 {
    let lost: u64 = no_majority
        .iter()
        .map(|&(a, b)| b.min(to).saturating_sub(a.max(from)))
        .sum();
    to.saturating_sub(from).saturating_sub(lost)
}

/// The longest stall around one leader loss, or `None` if writes had not
/// resumed and the open gap is not yet over `bound` (undecided, not late).
fn stall_of(
    loss: &LeaderLoss,
    acks: &[TimeNs],
    input: &LivenessInput<'_>,
    bound_ns: u64,
) -> Option<Stall> {
    let first = acks.partition_point(|&t| t <= loss.start_ns);
    let resumed = acks.partition_point(|&t| t <= loss.in_place_ns).max(first);
    let mut worst: Option<Stall> = None;
    let mut consider = |from: TimeNs, to: Option<TimeNs>| {
        let len = majority_time(from, to.unwrap_or(input.end_ns), input.no_majority);
        if worst.as_ref().is_none_or(|w| len as f64 / 1e6 > w.stall_ms) {
            worst = Some(Stall {
                label: loss.label.clone(),
                fault_start_ns: loss.start_ns,
                from_ns: from,
                to_ns: to,
                stall_ms: len as f64 / 1e6,
            });
        }
    };
    let mut previous = loss.start_ns;
    // Every acknowledgement from the fault's start up to and including the
    // first one after the fault was in place.
    for &t in &acks[first..(resumed + 1).min(acks.len())] {
        consider(previous, Some(t));
        previous = t;
    }
    if resumed >= acks.len() {
        // No acknowledgement after the fault was in place: the gap is open.
        consider(previous, None);
    }
    let worst = worst?;
    if worst.to_ns.is_none() && (worst.stall_ms * 1e6) as u64 <= bound_ns {
        // The run ended before writes could be expected to resume.
        return None;
    }
    Some(worst)
}

/// Checks both liveness properties against `bounds`.
pub fn check_liveness(input: &LivenessInput<'_>, bounds: &LivenessBounds) -> LivenessSummary {
    let mut acks = input.acks.to_vec();
    acks.sort_unstable();
    let stalls: Vec<Stall> = input
        .leader_losses
        .iter()
        .filter_map(|loss| stall_of(loss, &acks, input, bounds.resume_ns))
        .collect();
    let longest_stall_ms = stalls.iter().map(|s| s.stall_ms).max_by(f64::total_cmp);
    let stalled: Vec<Stall> = stalls
        .into_iter()
        .filter(|s| s.stall_ms * 1e6 > bounds.resume_ns as f64)
        .collect();
    let longest_write_gap = acks
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by_key(|&(a, b)| majority_time(a, b, input.no_majority))
        .map(|(a, b)| Stall {
            label: "anywhere in the run".into(),
            fault_start_ns: a,
            from_ns: a,
            to_ns: Some(b),
            stall_ms: majority_time(a, b, input.no_majority) as f64 / 1e6,
        });
    let gap_over_bound = longest_write_gap
        .as_ref()
        .is_some_and(|g| g.stall_ms * 1e6 > bounds.gap_ns as f64);
    let settle_ns = input
        .settled_ns
        .map(|t| t.saturating_sub(input.final_heal_ns));
    let not_settled = settle_ns.is_none_or(|ns| ns > bounds.settle_ns);
    LivenessSummary {
        resume_bound_ms: bounds.resume_ns as f64 / 1e6,
        settle_bound_ms: bounds.settle_ns as f64 / 1e6,
        gap_bound_ms: bounds.gap_ns as f64 / 1e6,
        leader_losses: input.leader_losses.len(),
        longest_stall_ms,
        longest_write_gap,
        gap_over_bound,
        valid: stalled.is_empty() && !not_settled && !gap_over_bound,
        stalled,
        settle_ms: settle_ns.map(|ns| ns as f64 / 1e6),
        not_settled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn loss(start_ms: u64, in_place_ms: u64) -> LeaderLoss {
        LeaderLoss {
            label: format!("kill of the leader at {start_ms} ms"),
            start_ns: start_ms * MS,
            in_place_ns: in_place_ms * MS,
        }
    }

    /// Acks every 10 ms over `[from_ms, to_ms]`.
    fn acks(from_ms: u64, to_ms: u64) -> Vec<u64> {
        (from_ms / 10..=to_ms / 10).map(|i| i * 10 * MS).collect()
    }

    fn input<'a>(
        acks: &'a [u64],
        losses: &'a [LeaderLoss],
        no_majority: &'a [(u64, u64)],
    ) -> LivenessInput<'a> {
        LivenessInput {
            acks,
            leader_losses: losses,
            no_majority,
            end_ns: 60_000 * MS,
            final_heal_ns: 55_000 * MS,
            settled_ns: Some(56_000 * MS),
        }
    }

    #[test]
    fn writes_resuming_within_the_bound_pass() {
        // Kill at 10 s, acks stop at 10.01 s and resume at 12.5 s.
        let mut a = acks(0, 10_010);
        a.extend(acks(12_500, 60_000));
        let losses = [loss(10_000, 11_000)];
        let s = check_liveness(&input(&a, &losses, &[]), &LivenessBounds::default());
        assert!(s.valid, "{s:?}");
        assert_eq!(s.longest_stall_ms, Some(2_490.0));
        assert!(s.stalled.is_empty());
        let gap = s.longest_write_gap.expect("a gap");
        assert_eq!((gap.from_ns, gap.to_ns), (10_010 * MS, Some(12_500 * MS)));
        // A gap that no leader loss explains is judged by the gap bound
        // (5 s): 4.01 s passes, 5.01 s does not.
        let mut b = a.clone();
        b.retain(|&t| !(30_000 * MS..34_000 * MS).contains(&t));
        let s = check_liveness(&input(&b, &losses, &[]), &LivenessBounds::default());
        assert!(s.valid, "{s:?}");
        assert_eq!(s.longest_write_gap.map(|g| g.stall_ms), Some(4_010.0));
        assert_eq!(s.settle_ms, Some(1_000.0));
        a.retain(|&t| !(30_000 * MS..35_000 * MS).contains(&t));
        let s = check_liveness(&input(&a, &losses, &[]), &LivenessBounds::default());
        assert!(
            !s.valid && s.gap_over_bound && s.stalled.is_empty(),
            "{s:?}"
        );
        assert_eq!(s.longest_write_gap.map(|g| g.stall_ms), Some(5_010.0));
    }

    #[test]
    fn a_stall_over_the_bound_after_a_leader_loss_is_an_anomaly() {
        // The case: a 12.3 s stall after the leader was isolated.
        let mut a = acks(0, 132_010);
        a.extend(acks(144_310, 160_000));
        let losses = [loss(132_000, 132_400)];
        let s = check_liveness(&input(&a, &losses, &[]), &LivenessBounds::default());
        assert!(!s.valid);
        assert_eq!(s.stalled.len(), 1);
        assert_eq!(s.stalled[0].from_ns, 132_010 * MS);
        assert_eq!(s.stalled[0].to_ns, Some(144_310 * MS));
        assert_eq!(s.stalled[0].stall_ms, 12_300.0);
        // Looser bounds (the flags) accept it.
        let loose = LivenessBounds {
            resume_ns: 15_000 * MS,
            gap_ns: 15_000 * MS,
            ..LivenessBounds::default()
        };
        assert!(check_liveness(&input(&a, &losses, &[]), &loose).valid);
    }

    #[test]
    fn a_stall_that_starts_after_the_fault_but_before_it_is_in_place_counts() {
        // `docker kill` returned at 11.5 s; writes stopped at 11 s (the
        // leader died late in the command) and resumed at 15 s.
        let mut a = acks(0, 11_000);
        a.extend(acks(15_000, 60_000));
        let losses = [loss(10_000, 11_500)];
        let s = check_liveness(&input(&a, &losses, &[]), &LivenessBounds::default());
        assert_eq!(s.stalled.len(), 1, "{s:?}");
        assert_eq!(s.stalled[0].stall_ms, 4_000.0);
    }

    #[test]
    fn time_without_a_majority_does_not_count() {
        // Writes stop for 8 s, but for 6 of them no majority could talk.
        let mut a = acks(0, 10_000);
        a.extend(acks(18_000, 60_000));
        let losses = [loss(10_000, 10_100)];
        let no_majority = [(11_000 * MS, 17_000 * MS)];
        let s = check_liveness(
            &input(&a, &losses, &no_majority),
            &LivenessBounds::default(),
        );
        assert!(s.valid, "{s:?}");
        assert_eq!(s.longest_stall_ms, Some(2_000.0));
        // Without that interval the same history is a stall.
        let s = check_liveness(&input(&a, &losses, &[]), &LivenessBounds::default());
        assert!(!s.valid);
    }

    #[test]
    fn writes_that_never_resume_are_an_anomaly_once_past_the_bound() {
        // Acks stop at 40 s for good; the run ends at 60 s.
        let a = acks(0, 40_000);
        let losses = [loss(40_000, 40_500)];
        let s = check_liveness(&input(&a, &losses, &[]), &LivenessBounds::default());
        assert!(!s.valid);
        assert_eq!(s.stalled[0].to_ns, None);
        assert_eq!(s.stalled[0].stall_ms, 20_000.0);
        // A loss 1 s before the end, no ack since: too early to tell.
        let a = acks(0, 59_000);
        let losses = [loss(59_000, 59_100)];
        let s = check_liveness(&input(&a, &losses, &[]), &LivenessBounds::default());
        assert!(s.valid, "{s:?}");
        assert_eq!(s.longest_stall_ms, None);
    }

    #[test]
    fn a_cluster_that_settles_late_or_never_is_an_anomaly() {
        let a = acks(0, 60_000);
        let mut i = input(&a, &[], &[]);
        i.settled_ns = Some(i.final_heal_ns + 9_999 * MS);
        assert!(check_liveness(&i, &LivenessBounds::default()).valid);
        i.settled_ns = Some(i.final_heal_ns + 10_001 * MS);
        let s = check_liveness(&i, &LivenessBounds::default());
        assert!(s.not_settled && !s.valid, "{s:?}");
        i.settled_ns = None;
        let s = check_liveness(&i, &LivenessBounds::default());
        assert!(s.not_settled && !s.valid);
        assert_eq!(s.settle_ms, None);
    }

    #[test]
    fn majority_follows_the_topology() {
        let nodes = [1, 2, 3];
        let ev = |ms: u64, change| TopologyEvent {
            time_ns: ms * MS,
            change,
        };
        use TopologyChange::*;
        // One fault at a time never loses the majority: a kill, an
        // isolated node, the bridge (one link).
        let one_at_a_time = [
            ev(1, Down { node: 1 }),
            ev(2, Up { node: 1 }),
            ev(3, Cut { a: 1, b: 2 }),
            ev(3, Cut { a: 1, b: 3 }),
            ev(4, Heal { a: 1, b: 2 }),
            ev(4, Heal { a: 1, b: 3 }),
            ev(5, Cut { a: 2, b: 1 }),
            ev(6, Heal { a: 1, b: 2 }),
        ];
        assert!(no_majority_intervals(&nodes, &one_at_a_time, 10 * MS).is_empty());
        // Two down, or one down and the others' link cut: no majority.
        let overlapping = [
            ev(1, Down { node: 1 }),
            ev(2, Down { node: 2 }),
            ev(3, Up { node: 2 }),
            ev(4, Cut { a: 2, b: 3 }),
            ev(5, Up { node: 1 }),
            ev(6, Down { node: 3 }),
            ev(7, Cut { a: 1, b: 2 }),
        ];
        assert_eq!(
            no_majority_intervals(&nodes, &overlapping, 10 * MS),
            vec![(2 * MS, 3 * MS), (4 * MS, 5 * MS), (7 * MS, 10 * MS)]
        );
    }

    #[test]
    fn a_stall_after_writes_briefly_resumed_is_caught_by_the_gap_bound() {
        // The reproduction of issue 16 (seed 4243): the leader was isolated
        // at 9.16 s, a few writes completed at 10.3-10.7 s, then none until
        // 35.35 s although a majority could talk most of the time. The
        // per-loss check saw writes resume; the gap bound does not.
        let mut a = acks(0, 9_160);
        a.extend(acks(10_300, 10_690));
        a.extend(acks(35_350, 60_000));
        let losses = [loss(9_160, 9_550)];
        let no_majority = [(24_000 * MS, 24_100 * MS)];
        let s = check_liveness(
            &input(&a, &losses, &no_majority),
            &LivenessBounds::default(),
        );
        assert!(s.stalled.is_empty(), "{s:?}");
        assert!(s.gap_over_bound && !s.valid, "{s:?}");
        let gap = s.longest_write_gap.expect("a gap");
        assert_eq!((gap.from_ns, gap.to_ns), (10_690 * MS, Some(35_350 * MS)));
        assert_eq!(gap.stall_ms, 24_560.0);
    }
}
