//! Idle Raft groups run on slow timers.
//!
//! A node hosts a replica of many shards, and most of them are idle most of
//! the time. openraft 0.9 gives every group its own timers: a tick every
//! 1.5 heartbeat intervals on every replica (each wakes the group's Raft
//! core, which rebuilds and publishes its metrics), and on the leader one
//! heartbeat per follower on (nearly) every tick. With 100 idle groups on
//! three nodes that was about 1,600 wake-ups of Raft cores and 900 gRPC
//! messages per node per second, a third of a core in a debug build
//! (docs/benchmarks.md, "Idle shards on one node").
//!
//! This module slows an idle group down without changing what any Raft
//! rule sees, one task per replica ([`run`]):
//!
//! - **Idle leader.** Once the group's log has not grown for
//!   [`IdleConfig::idle_after`], the leader switches openraft's tick and
//!   heartbeat off and sends a heartbeat itself every
//!   [`IdleConfig::idle_heartbeat`], *half the leader lease*. When the log
//!   grows again (a write), openraft's own timers come back on.
//! - **Quiet follower.** On a follower, openraft's tick does one thing: it
//!   runs the election timer, which cannot fire until a leader lease has
//!   passed since the leader last spoke. So the tick is off while a leader
//!   spoke to us within the lease, and back on once it has been silent for
//!   a lease; the timer then fires exactly when it would have (openraft
//!   counts from its own record of the leader's last message, which this
//!   does not touch), within one tick.
//! - **Follower receiving a snapshot.** openraft 0.9 receives snapshot
//!   chunks outside its core, so a chunk does not restart the follower's
//!   election timer; only heartbeats do, and on a congested link they queue
//!   behind the chunks. A follower whose chunks each took longer than the
//!   lease stood for election halfway through, its newer term deposed the
//!   leader, and the next leader started the snapshot over: a lagging
//!   follower stayed useless to every quorum for seconds to minutes
//!   (docs/jepsen.md, ledger entry 5). So a follower keeps its tick off
//!   while a snapshot is coming in, for up to
//!   [`IdleConfig::snapshot_hold`] after the last chunk (two chunk
//!   deadlines: one lost chunk is resent in time). This rule holds also
//!   with idle heartbeats switched off.
//! - Every other state (candidate, learner, a deposed leader, a replica
//!   that has not heard from any leader since it started): openraft's
//!   timers, unchanged.
//!
//! # Invariants
//! - *Leader leases still hold.* The idle heartbeat is half the lease, so a
//!   follower refreshes its lease (openraft refuses votes while it holds)
//!   at least twice per lease, as before, only with less margin (one lost
//!   heartbeat instead of seven). A partitioned follower therefore still
//!   cannot win votes from a follower that hears the leader, and a client
//!   request on the leader still finds a quorum acknowledgement younger
//!   than the quorum lease (`ClientTimeouts::quorum_lease`, the same
//!   lease): no request waits for the group to "wake up".
//! - *Failover is not slower.* A follower's election timer fires after the
//!   same silence as before; only the tick that notices it is switched on
//!   later, never later than the lease, which is shorter than that silence.
//!   An idle group whose leader dies elects in the same 0.6–0.8 s
//!   (production timing) as a busy one. The one exception is a follower
//!   in the middle of receiving a snapshot: it stands up to
//!   `snapshot_hold` later, but its log is behind the other follower's, so
//!   it could not have won that election anyway.
//! - *Only a live leader silences a follower's timer.* A follower counts
//!   only messages Raft accepted (AppendEntries answered with success,
//!   partial success or conflict; snapshot chunks whose vote it took), so a
//!   deposed leader still sending cannot keep it from standing
//!   ([`crate::election::Elections::heard_from_leader`]).
//! - *Safety never depends on this module.* It only switches timers and
//!   sends heartbeats, which Raft allows at any time. The liveness hazard
//!   is a follower left without a tick (it would never stand): a follower
//!   turns its tick back on after a lease of silence whatever else
//!   happens, and this task ends only when the replica stops, its Raft
//!   with it.
//!
//! Must not depend on: the client service or the state machine.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::election::Elections;
use crate::metrics::Metrics;
use crate::typ::Raft;

/// How idle groups slow down; see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleConfig {
    /// A leader whose log has not grown for this long goes idle.
    pub idle_after: Duration,
    /// Heartbeat interval of an idle leader; must be below `lease`.
    pub idle_heartbeat: Duration,
    /// The leader lease (openraft's `election_timeout_max`).
    pub lease: Duration,
    /// Idle leaders and quiet followers (`nokv serve --idle-heartbeats`);
    /// when off, only a follower receiving a snapshot changes timers.
    pub slow_idle: bool,
    /// How long after the last snapshot chunk a follower still receiving
    /// one keeps its election tick off.
    pub snapshot_hold: Duration,
}

impl IdleConfig {
    /// Idle after two leases without a new entry; heartbeats at half the
    /// lease (200 ms with the production lease of 400 ms, against 50 ms);
    /// a snapshot holds a follower's tick for two `chunk_timeout`s.
    pub fn for_lease(lease: Duration, chunk_timeout: Duration) -> IdleConfig {
        IdleConfig {
            idle_after: lease * 2,
            idle_heartbeat: lease / 2,
            lease,
            slow_idle: true,
            snapshot_hold: chunk_timeout * 2,
        }
    }
}

/// Which timers a replica runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timers {
    /// openraft's own: tick and heartbeats on.
    Openraft,
    /// Tick and openraft's heartbeats off; [`run`] sends heartbeats.
    IdleLeader,
    /// Tick off: a leader spoke within the lease.
    QuietFollower,
}

/// The timers a replica in `state` should run now, and how long until it
/// should look again.
///
/// `log_idle_for`: how long the (leader's) log has not grown;
/// `leader_silent_for`: how long since a leader last spoke to this replica
/// (`None`: none did since it started); `receiving_snapshot_for`: how long
/// since the last chunk of a snapshot still coming in (`None`: none is).
pub fn timers_for(
    state: ServerState,
    log_idle_for: Duration,
    leader_silent_for: Option<Duration>,
    receiving_snapshot_for: Option<Duration>,
    config: &IdleConfig,
) -> (Timers, Duration) {
    match state {
        ServerState::Leader if !config.slow_idle => (Timers::Openraft, config.lease),
        ServerState::Leader if log_idle_for >= config.idle_after => {
            (Timers::IdleLeader, config.idle_heartbeat)
        }
        ServerState::Leader => (Timers::Openraft, config.idle_after - log_idle_for),
        ServerState::Follower => {
            let lease_left = leader_silent_for
                .filter(|_| config.slow_idle)
                .and_then(|silent| config.lease.checked_sub(silent));
            let snapshot_left =
                receiving_snapshot_for.and_then(|since| config.snapshot_hold.checked_sub(since));
            match lease_left.max(snapshot_left).filter(|left| !left.is_zero()) {
                Some(left) => (Timers::QuietFollower, left),
                None => (Timers::Openraft, config.idle_heartbeat),
            }
        }
        ServerState::Candidate | ServerState::Learner | ServerState::Shutdown => {
            (Timers::Openraft, config.idle_heartbeat)
        }
    }
}

fn apply(raft: &Raft, timers: Timers) {
    let rc = raft.runtime_config();
    match timers {
        Timers::Openraft => {
            rc.heartbeat(true);
            rc.tick(true);
        }
        Timers::IdleLeader => {
            rc.heartbeat(false);
            rc.tick(false);
        }
        Timers::QuietFollower => {
            rc.heartbeat(true);
            rc.tick(false);
        }
    }
}

/// Runs one replica's timers until `shutdown` (see the module doc). Wakes
/// once per idle heartbeat interval or per lease, when the replica's role
/// changes, and per snapshot chunk received; never per other Raft message.
pub async fn run(
    raft: Raft,
    elections: Arc<Elections>,
    metrics: Arc<Metrics>,
    config: IdleConfig,
    shutdown: CancellationToken,
) {
    let mut server = raft.server_metrics();
    let data = raft.data_metrics();
    let mut last_log = data.borrow().last_log;
    let mut log_grew_at = Instant::now();
    let mut current = Timers::Openraft;
    loop {
        let state = server.borrow_and_update().state;
        let now = Instant::now();
        let log = data.borrow().last_log;
        if log != last_log {
            last_log = log;
            log_grew_at = now;
        }
        let (timers, look_again) = timers_for(
            state,
            now - log_grew_at,
            elections.leader_silent_for(),
            elections.receiving_snapshot_for(),
            &config,
        );
        if timers != current {
            tracing::debug!(?timers, ?state, "switching Raft timers");
            apply(&raft, timers);
            metrics.raft_idle.set(i64::from(timers != Timers::Openraft));
            current = timers;
        }
        if timers == Timers::IdleLeader && raft.trigger().heartbeat().await.is_err() {
            return; // Raft stopped.
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = server.changed() => if changed.is_err() { return },
            _ = elections.snapshot_chunk_arrived() => {}
            _ = tokio::time::sleep_until(now + look_again) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(400);
    const CHUNK: Duration = Duration::from_millis(2000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_leader_slows_down_only_after_its_log_stopped_growing() {
        let c = IdleConfig::for_lease(LEASE, CHUNK);
        assert_eq!(c.idle_heartbeat, ms(200));
        assert!(
            c.idle_heartbeat < c.lease,
            "leases must outlast idle heartbeats"
        );
        let busy = timers_for(ServerState::Leader, ms(100), None, None, &c);
        assert_eq!(busy, (Timers::Openraft, ms(700)));
        let idle = timers_for(ServerState::Leader, ms(800), None, None, &c);
        assert_eq!(idle, (Timers::IdleLeader, ms(200)));
    }

    #[test]
    fn a_follower_ticks_again_once_the_leader_is_silent_for_a_lease() {
        let c = IdleConfig::for_lease(LEASE, CHUNK);
        let heard = timers_for(ServerState::Follower, ms(0), Some(ms(150)), None, &c);
        assert_eq!(heard, (Timers::QuietFollower, ms(250)));
        let silent = timers_for(ServerState::Follower, ms(0), Some(ms(400)), None, &c);
        assert_eq!(silent.0, Timers::Openraft);
        // A replica that never heard a leader since it started keeps
        // openraft's timers (a new cluster elects without delay).
        let never = timers_for(ServerState::Follower, ms(0), None, None, &c);
        assert_eq!(never.0, Timers::Openraft);
    }

    #[test]
    fn candidates_and_learners_keep_openraft_timers() {
        let c = IdleConfig::for_lease(LEASE, CHUNK);
        for state in [ServerState::Candidate, ServerState::Learner] {
            let (timers, _) = timers_for(state, ms(10_000), Some(ms(10)), None, &c);
            assert_eq!(timers, Timers::Openraft, "{state:?}");
        }
    }

    #[test]
    fn a_follower_receiving_a_snapshot_holds_its_tick_between_chunks() {
        let c = IdleConfig::for_lease(LEASE, CHUNK);
        assert_eq!(c.snapshot_hold, ms(4000));
        // The leader's heartbeats are stuck behind a chunk: silent for
        // longer than the lease, yet the last chunk came 1.5 s ago.
        let receiving = timers_for(
            ServerState::Follower,
            ms(0),
            Some(ms(1500)),
            Some(ms(1500)),
            &c,
        );
        assert_eq!(receiving, (Timers::QuietFollower, ms(2500)));
        // No chunk for two chunk deadlines: the leader is gone.
        let abandoned = timers_for(
            ServerState::Follower,
            ms(0),
            Some(ms(4000)),
            Some(ms(4000)),
            &c,
        );
        assert_eq!(abandoned.0, Timers::Openraft);
        // The hold holds with idle heartbeats off too, and only then.
        let plain = IdleConfig {
            slow_idle: false,
            ..c
        };
        let receiving = timers_for(
            ServerState::Follower,
            ms(0),
            Some(ms(100)),
            Some(ms(100)),
            &plain,
        );
        assert_eq!(receiving, (Timers::QuietFollower, ms(3900)));
        let heard = timers_for(ServerState::Follower, ms(0), Some(ms(100)), None, &plain);
        assert_eq!(heard.0, Timers::Openraft);
        let leader = timers_for(ServerState::Leader, ms(10_000), None, None, &plain);
        assert_eq!(leader, (Timers::Openraft, LEASE));
    }
}
