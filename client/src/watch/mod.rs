//! `Client::watch` and `Client::watch_from`: streams of typed change events that
//! survive losing the replicas they read from and span the shards grafted below the
//! watched path.
//!
//! A watch reads the history of the shard that owns its path ([`shard`]: one stream per
//! shard, reconnecting with its cursor). A *recursive* watch on a routed client also
//! reads every shard grafted below the path, at any depth, from that shard's root, and
//! merges the streams ([`merge`]); event paths are global. It re-reads the shard map
//! every [`WATCH_MAP_POLL`] to start reading shards grafted below the path while it runs (and
//! to stop reading shards that were removed). A non-recursive watch sees only the path
//! and its direct children, which lie in one shard (a graft point among them is an entry
//! of that shard), so it reads one shard.
//!
//! Where to resume is a [`WatchCursor`]: one position per shard ([`cursor`]).
//!
//! # Invariants
//!
//! - Per shard, events come in that shard's commit order, each once; across shards there
//!   is no order.
//! - The cursor handed out with an event resumes after it, and after every event
//!   delivered before it, with no gap and no duplicate on any shard.
//! - A shard the cursor does not name is read from the start of its retained history
//!   (see [`Client::watch_from`] for why that is right).

mod cursor;
mod merge;
mod shard;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use nokv_holt::{Event, InodeRef, Query, ShardId};
use nokv_router::ShardMap;

pub use cursor::{CursorParseError, WatchCursor};
pub use merge::WatchedEvent;

use crate::client::Client;
use crate::error::ClientError;
use crate::routing;
use merge::Merge;
use shard::ShardWatch;

/// How often a recursive watch re-reads the shard map, to read shards grafted below its
/// path while it runs. A shard grafted below the path shows up in the watch within
/// about this long after it starts serving; none of its events are missed meanwhile (it
/// is read from the start of its history).
pub const WATCH_MAP_POLL: Duration = Duration::from_secs(1);

/// How many times a watch that has delivered nothing yet routes its path again because
/// the owner moved (see [`Fanout::next`]).
const MAX_REROUTES: usize = 3;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A watch over the owning shard and, when recursive, the shards grafted below its path.
struct Fanout {
    client: Client,
    /// The watched path as given (global on a routed client).
    path: String,
    recursive: bool,
    /// The cursor asked for, before the owner is known.
    start: WatchCursor,
    /// Whether the path has been routed and the first streams started.
    started: bool,
    /// The shard that owns the path.
    owner: ShardId,
    /// The path, normalised, when shards grafted below it are followed.
    below: Option<String>,
    merge: Merge,
    /// Ticks when the map is to be re-read (only while following grafts).
    poll: Option<tokio::time::Interval>,
    backoff: Duration,
    /// Whether an event has been handed out (after that, the owner is fixed).
    delivered: bool,
    /// Times the path was routed again before anything was delivered.
    rerouted: usize,
    done: bool,
}

/// What woke the watch.
enum Wake {
    Item(Option<(ShardId, Result<WatchedEvent, ClientError>)>),
    Poll,
}

/// `e`, from `shard`'s stream, with the shard it concerns.
fn from_shard(e: ClientError, shard: ShardId) -> ClientError {
    match e {
        ClientError::CursorExpired {
            oldest, message, ..
        } => ClientError::CursorExpired {
            oldest,
            message: format!("shard {}: {message}", shard.0),
            shard: Some(shard),
        },
        other => other,
    }
}

impl Fanout {
    /// Routes the path and starts the first streams.
    async fn setup(&mut self) -> Result<(), ClientError> {
        let map = if self.client.is_routed() {
            self.client.shard_map().await?
        } else {
            None
        };
        let Some(map) = map else {
            // A pinned handle, or a cluster with one shard: its paths are the shard's.
            let owner = self.client.shard();
            self.start_owner(owner, self.client.clone(), self.path.clone(), None);
            return Ok(());
        };
        let query = Query::GetAttr {
            inode: InodeRef::Path(self.path.clone()),
        };
        let (owner, local) = routing::route_query(&map, query, self.client.shard())?;
        let local = match local {
            Query::GetAttr {
                inode: InodeRef::Path(path),
            } => path,
            _ => self.path.clone(),
        };
        self.start_owner(
            owner,
            self.client.routed_to(owner, map.revision),
            local,
            Some(map.clone()),
        );
        if self.recursive {
            // A malformed path is left to the owner to refuse.
            if let Some(global) = routing::normalized(&self.path) {
                self.below = Some(global);
                self.follow(&map);
                let mut poll = tokio::time::interval_at(
                    tokio::time::Instant::now() + WATCH_MAP_POLL,
                    WATCH_MAP_POLL,
                );
                poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                self.poll = Some(poll);
            }
        }
        Ok(())
    }

    fn start_owner(
        &mut self,
        owner: ShardId,
        client: Client,
        local: String,
        map: Option<Arc<ShardMap>>,
    ) {
        self.owner = owner;
        self.merge = Merge::new(self.start.clone().resolve(owner));
        let after = self.merge.after(owner);
        let events = ShardWatch::new(client, local, map, self.recursive, after);
        self.merge.add(owner, events.into_stream());
    }

    /// Reads every serving shard grafted below the path that is not read yet, from its
    /// position in the cursor; stops reading shards no longer grafted there.
    fn follow(&mut self, map: &Arc<ShardMap>) {
        let Some(below) = &self.below else {
            return;
        };
        let wanted: BTreeSet<ShardId> = routing::grafted_below(map, below);
        let reading: BTreeSet<ShardId> = self.merge.shards().collect();
        for gone in reading
            .iter()
            .filter(|s| **s != self.owner && !wanted.contains(s))
        {
            tracing::debug!(shard = gone.0, path = %self.path, "watch: shard no longer grafted below");
            self.merge.remove(*gone);
        }
        for new in wanted.difference(&reading) {
            let after = self.merge.after(*new);
            tracing::debug!(shard = new.0, after, path = %self.path, "watch: reading a grafted shard");
            let events = ShardWatch::new(
                self.client.routed_to(*new, map.revision),
                "/".to_string(),
                Some(map.clone()),
                true,
                after,
            );
            self.merge.add(*new, events.into_stream());
        }
    }

    /// Re-reads the map and follows it. A failure waits for the next tick.
    async fn rescan(&mut self) {
        match self.client.refresh_shard_map().await {
            Ok(Some(map)) => self.follow(&map),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "watch: cannot re-read the shard map"),
        }
    }

    async fn pause(&mut self) {
        // Backoff between attempts to reach the cluster, not synchronisation.
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    async fn next(mut self) -> Option<(Result<WatchedEvent, ClientError>, Fanout)> {
        if self.done {
            return None;
        }
        'route: loop {
            while !self.started {
                match self.setup().await {
                    Ok(()) => self.started = true,
                    Err(ClientError::Unavailable(why)) => {
                        tracing::debug!(%why, "watch: cannot read the shard map, retrying");
                        self.pause().await;
                    }
                    Err(fatal) => {
                        self.done = true;
                        return Some((Err(fatal), self));
                    }
                }
            }
            loop {
                let wake = match self.poll.as_mut() {
                    Some(poll) => tokio::select! {
                        item = self.merge.next() => Wake::Item(item),
                        _ = poll.tick() => Wake::Poll,
                    },
                    None => Wake::Item(self.merge.next().await),
                };
                match wake {
                    Wake::Poll => self.rescan().await,
                    Wake::Item(Some((_, Ok(event)))) => {
                        self.delivered = true;
                        return Some((Ok(event), self));
                    }
                    Wake::Item(Some((shard, Err(ClientError::WrongShard { shard: to, .. }))))
                        if shard == self.owner
                            && !self.delivered
                            && self.rerouted < MAX_REROUTES =>
                    {
                        // The path was routed by a cached map older than a graft made at or
                        // above it, and nothing was delivered: route it again by the newer
                        // map (its stream read it), as if that had been the one cached.
                        tracing::debug!(from = shard.0, to, path = %self.path,
                        "watch: the path belongs to another shard now; routing it again");
                        self.rerouted += 1;
                        self.started = false;
                        self.below = None;
                        self.poll = None;
                        continue 'route;
                    }
                    Wake::Item(Some((shard, Err(e))))
                        if shard != self.owner && e.is_misrouted() =>
                    {
                        // Its replicas all disowned it: removed, or not started yet. The
                        // next map read drops it or reads it again from its position.
                        tracing::debug!(shard = shard.0, error = %e, "watch: grafted shard not served");
                    }
                    Wake::Item(Some((shard, Err(e)))) => {
                        self.done = true;
                        return Some((Err(from_shard(e, shard)), self));
                    }
                    Wake::Item(None) => {
                        self.done = true;
                        return None;
                    }
                }
            }
        }
    }
}

impl Client {
    /// Sets how much watch history the shard keeps: at most `max_events`
    /// events, none older than `max_age`. A replicated setting; it applies
    /// from the next mutation on.
    pub async fn set_watch_retention(
        &self,
        max_events: u64,
        max_age: Duration,
    ) -> Result<(), ClientError> {
        self.mutate(nokv_holt::Op::SetWatchRetention {
            max_events,
            max_age_ns: max_age.as_nanos().min(u128::from(u64::MAX)) as u64,
        })
        .await
        .map(|_| ())
    }

    /// Typed change events at `path` (and its direct children; everything below it when
    /// `recursive`, including below grafts), after `after` in the history of the shard
    /// that owns `path` (0: from the oldest retained event). Each event's `seq` is its
    /// position in its own shard's history.
    ///
    /// [`Client::watch_from`] without the cursors: shards grafted below `path` are read
    /// from the start of their history, so to resume a recursive watch that spans grafts
    /// use `watch_from` and the [`WatchedEvent::cursor`] it hands out.
    pub fn watch(
        &self,
        path: &str,
        recursive: bool,
        after: u64,
    ) -> impl Stream<Item = Result<Event, ClientError>> + Send + 'static {
        self.watch_from(path, recursive, WatchCursor::owner_at(after))
            .map(|item| item.map(|w| w.event))
    }

    /// Typed change events at `path` and its direct children, or everything below it
    /// when `recursive`, after `after`; each comes with the cursor to resume after it.
    ///
    /// **Shards.** The shard that owns `path` is read. A recursive watch on a routed
    /// client also reads every shard grafted below `path` (nested grafts too), and,
    /// re-reading the shard map every [`WATCH_MAP_POLL`], shards grafted below it while the
    /// watch runs; a removed shard stops being read. Event paths are global. A
    /// non-recursive watch reads one shard.
    ///
    /// **Order.** Each shard's events come in its commit order, each exactly once, across
    /// replica failures. There is **no order across shards**: events of two shards are
    /// interleaved as they arrive, whatever their commit times.
    ///
    /// **Resuming.** [`WatchedEvent::cursor`] names, per shard, the last event delivered
    /// from it up to this one; passing it back as `after` resumes with no gap and no
    /// duplicate on any shard. A bare position ([`WatchCursor::owner_at`], a plain number
    /// in text) is `path`'s own shard's.
    ///
    /// **Shards the cursor does not name** are read from the start of their retained
    /// history. For a cursor this method handed out, that is exactly right: a shard the
    /// watch read but that had delivered nothing yet, and a shard grafted below `path`
    /// later, have no event the watcher has seen (a new shard starts empty, so its whole
    /// history is below its graft and new to the watcher). It replays history only for a
    /// cursor made by hand to mean "from now" for `path`'s shard alone: give every shard
    /// a position (`0:N,5:M`) for that. If a shard's retention has already dropped events
    /// the watcher never saw, its stream fails with [`ClientError::CursorExpired`] naming
    /// the shard rather than skipping them.
    ///
    /// **Routing.** Each shard's stream carries the map revision it was routed by; a
    /// replica that knows the shard's routing changed since refuses it (`STALE_MAP`) and
    /// the stream reads a newer map and resumes from its cursor. If `path` itself now
    /// belongs to another shard (a graft made at or above it after the client read its
    /// map): before any event was delivered the watch routes again and reads the new
    /// owner; after, it ends with [`ClientError::WrongShard`] naming it.
    ///
    /// **Ending.** The stream ends only with an error the request caused, such as
    /// `CursorExpired` on any shard (the cursor of the last event delivered is still
    /// good for every other shard). A grafted shard whose replicas all say they do not
    /// host it is dropped until the next map read finds it served again.
    pub fn watch_from(
        &self,
        path: &str,
        recursive: bool,
        after: WatchCursor,
    ) -> impl Stream<Item = Result<WatchedEvent, ClientError>> + Send + 'static {
        let state = Fanout {
            client: self.clone(),
            path: path.to_string(),
            recursive,
            start: after,
            started: false,
            owner: self.shard(),
            below: None,
            merge: Merge::new(WatchCursor::new()),
            poll: None,
            backoff: BACKOFF_MIN,
            delivered: false,
            rerouted: 0,
            done: false,
        };
        futures::stream::unfold(state, Fanout::next)
    }
}
