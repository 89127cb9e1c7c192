//! One shard's event stream, surviving the loss of the replica it reads from.
//!
//! The stream remembers the cursor of the last event it delivered. When its replica
//! fails or restarts, it reconnects to the next endpoint and asks for events after that
//! cursor; cursors mean the same on every replica of the shard, so nothing is skipped and
//! nothing is delivered twice. It ends only on an error the request itself caused (a
//! malformed path, an expired cursor), or when every replica it tried in a row says it
//! hosts no such shard.
//!
//! A routed stream carries the map revision it was routed by. A replica whose map shows
//! the shard's routing changed since (a graft made or removed inside it) refuses it with
//! `STALE_MAP`; the stream then reads a newer map and, if the watched path is still this
//! shard's, resumes under the new revision from the same cursor. If the path now belongs
//! to another shard (a graft made at or above it), it ends with `WRONG_SHARD` naming that
//! shard: its cursor means nothing there.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use nokv_holt::{Event, EventKind, InodeRef, Query};
use nokv_proto::detail_of;
use nokv_proto::pb;
use nokv_router::ShardMap;

use crate::client::{normalize, Client};
use crate::error::ClientError;
use crate::routing;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A watch of one shard's history: what to ask, and where it has got to.
pub(super) struct ShardWatch {
    /// Names the shard every request goes to, and the map revision it was routed by
    /// (0 for a pinned handle or a cluster without a shard map).
    client: Client,
    /// The watched path in the shard's own terms.
    path: String,
    /// The map that turns the shard's local paths back into global ones; `None` when
    /// they are the same.
    map: Option<Arc<ShardMap>>,
    recursive: bool,
    /// Cursor of the last event delivered (or the starting cursor).
    cursor: u64,
    stream: Option<tonic::Streaming<pb::WatchEvent>>,
    next_endpoint: usize,
    backoff: Duration,
    /// `UNKNOWN_SHARD` answers in a row (a replica the map names may not have started
    /// the shard yet; all of them saying so ends the stream).
    unknown_shard: usize,
    done: bool,
}

/// What a failed call means for the watch: end it with this error, or try
/// another replica.
fn classify(status: &tonic::Status) -> Option<ClientError> {
    match detail_of(status) {
        Some(detail) if detail.code != "UNAVAILABLE" && detail.code != "INTERNAL" => {
            Some(ClientError::from_detail(detail))
        }
        _ => None,
    }
}

impl ShardWatch {
    /// [`classify`], except that `UNKNOWN_SHARD` ends the watch only once every one of
    /// the `replicas` candidates has said so in a row (a replica the map names may not
    /// have started the shard yet, or may have handed it over).
    fn judge(&mut self, status: &tonic::Status, replicas: usize) -> Option<ClientError> {
        match classify(status) {
            Some(ClientError::UnknownShard(why)) => {
                self.unknown_shard += 1;
                (self.unknown_shard >= replicas).then_some(ClientError::UnknownShard(why))
            }
            other => other,
        }
    }

    /// Events of `client`'s shard at `path` (a path of that shard), after `cursor`;
    /// event paths are made global with `map` when given.
    pub(super) fn new(
        client: Client,
        path: String,
        map: Option<Arc<ShardMap>>,
        recursive: bool,
        cursor: u64,
    ) -> ShardWatch {
        ShardWatch {
            client,
            path,
            map,
            recursive,
            cursor,
            stream: None,
            next_endpoint: 0,
            backoff: BACKOFF_MIN,
            unknown_shard: 0,
            done: false,
        }
    }

    /// The events, in the shard's commit order. Cancellation-safe as a stream: dropping
    /// a `next()` in flight loses nothing.
    pub(super) fn into_stream(self) -> impl Stream<Item = Result<Event, ClientError>> + Send {
        futures::stream::unfold(self, ShardWatch::next)
    }

    /// `event` with global paths.
    fn globalize(&self, mut event: Event) -> Event {
        let Some(map) = &self.map else {
            return event;
        };
        let shard = self.client.shard();
        if let Some(path) = &mut event.path {
            *path = routing::global_path(map, shard, path);
        }
        if let EventKind::Rename {
            from: Some(from), ..
        } = &mut event.kind
        {
            *from = routing::global_path(map, shard, from);
        }
        event
    }

    /// After `STALE_MAP` (the refusing node's map is at `current`): reads a newer map
    /// and goes on under its revision if the watched path is still this shard's, at the
    /// same local path. If it is another shard's now, `WrongShard` naming that shard.
    /// `StaleMap` or `Unavailable` if no newer map could be read yet (try again later).
    async fn follow_map(&mut self, current: u64) -> Result<(), ClientError> {
        let refusal = ClientError::StaleMap { current };
        let Some(map) = self.map.clone() else {
            return Err(refusal);
        };
        let shard = self.client.shard();
        let global = routing::global_path(&map, shard, &self.path);
        let newer = self.client.reroute(&map, &refusal).await?;
        let query = Query::GetAttr {
            inode: InodeRef::Path(global.clone()),
        };
        let (owner, local) = routing::route_query(&newer, query, shard)?;
        let same_path = matches!(
            &local,
            Query::GetAttr { inode: InodeRef::Path(p) } if *p == self.path
        );
        if owner != shard || !same_path {
            let graft = routing::global_path(&newer, owner, "/");
            return Err(ClientError::WrongShard {
                shard: owner.0,
                graft_path: graft.clone(),
                message: format!(
                    "{global} now belongs to shard {} (grafted at {graft}; map revision {}), \
                     but this watch read shard {} and its cursor means nothing in another \
                     shard's history: watch {global} again to follow it",
                    owner.0, newer.revision, shard.0
                ),
            });
        }
        tracing::debug!(
            shard = shard.0,
            from = map.revision.0,
            to = newer.revision.0,
            "watch: routing changed, same shard; resuming under the new map"
        );
        self.client = self.client.routed_to(shard, newer.revision);
        self.map = Some(newer);
        Ok(())
    }

    /// What to do after the stream or its start failed with `error`: go on (after a
    /// pause when the cluster is not ready), or end with an error.
    async fn recover(&mut self, error: ClientError) -> Result<(), ClientError> {
        let error = match error {
            ClientError::StaleMap { current } => match self.follow_map(current).await {
                // Routed again: reconnect at once.
                Ok(()) => return Ok(()),
                Err(e) => e,
            },
            other => other,
        };
        match error {
            ClientError::Unavailable(why) => {
                tracing::debug!(shard = self.client.shard().0, %why,
                    "watch: replica unavailable, trying the next");
            }
            ClientError::StaleMap { current } => {
                tracing::debug!(
                    shard = self.client.shard().0,
                    current,
                    "watch: no node serves a newer map yet, trying again"
                );
            }
            fatal => return Err(fatal),
        }
        self.pause().await;
        Ok(())
    }

    /// Tries one replica. `Unavailable` means "try the next one".
    async fn connect(&mut self) -> Result<(), ClientError> {
        let endpoints = self.client.replica_candidates();
        let addr = normalize(&endpoints[self.next_endpoint % endpoints.len()]);
        self.next_endpoint = self.next_endpoint.wrapping_add(1);
        let mut stub = self.client.stub(&addr)?;
        let request = pb::WatchRequest {
            path: self.path.clone(),
            recursive: self.recursive,
            after_cursor: self.cursor,
            shard: self.client.wire_shard(),
            map_revision: self.client.map_revision(),
        };
        match tokio::time::timeout(self.client.attempt_timeout(), stub.watch(request)).await {
            Ok(Ok(response)) => {
                self.stream = Some(response.into_inner());
                self.unknown_shard = 0;
                Ok(())
            }
            Ok(Err(status)) => match self.judge(&status, endpoints.len()) {
                Some(fatal) => Err(fatal),
                None => Err(ClientError::Unavailable(format!(
                    "{addr}: {}",
                    status.message()
                ))),
            },
            Err(_) => Err(ClientError::Unavailable(format!("{addr}: timed out"))),
        }
    }

    async fn pause(&mut self) {
        // Backoff between reconnection attempts, not synchronisation.
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    async fn next(mut self) -> Option<(Result<Event, ClientError>, ShardWatch)> {
        if self.done {
            return None;
        }
        loop {
            if self.stream.is_none() {
                if let Err(e) = self.connect().await {
                    if let Err(fatal) = self.recover(e).await {
                        self.done = true;
                        return Some((Err(fatal), self));
                    }
                    continue;
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.message().await {
                Ok(Some(wire)) => {
                    self.backoff = BACKOFF_MIN;
                    match Event::try_from(wire) {
                        // A replica never repeats an event after the cursor;
                        // skipping one defends the exactly-once promise.
                        Ok(event) if event.seq <= self.cursor => continue,
                        Ok(event) => {
                            self.cursor = event.seq;
                            let event = self.globalize(event);
                            return Some((Ok(event), self));
                        }
                        Err(e) => {
                            self.done = true;
                            return Some((Err(ClientError::Protocol(e.to_string())), self));
                        }
                    }
                }
                Ok(None) => {
                    // The replica ended the stream (shutting down): resume.
                    self.stream = None;
                }
                Err(status) => {
                    self.stream = None;
                    let replicas = self.client.replica_candidates().len();
                    let error = self
                        .judge(&status, replicas)
                        .unwrap_or_else(|| ClientError::Unavailable(status.message().into()));
                    if let Err(fatal) = self.recover(error).await {
                        self.done = true;
                        return Some((Err(fatal), self));
                    }
                }
            }
        }
    }
}
