//! `Client::watch`: a stream of typed change events that survives losing
//! the replica it reads from.
//!
//! The stream remembers the cursor of the last event it delivered. When its
//! replica fails or restarts, it reconnects to the next endpoint and asks
//! for events after that cursor; cursors mean the same on every replica, so
//! nothing is skipped and nothing is delivered twice. It ends only on an
//! error the request itself caused (a malformed path, an expired cursor).

use std::time::Duration;

use futures::Stream;
use nokv_holt::Event;
use nokv_proto::detail_of;
use nokv_proto::pb;

use std::sync::Arc;

use nokv_holt::EventKind;
use nokv_router::ShardMap;

use crate::client::{normalize, Client};
use crate::error::ClientError;
use crate::routing;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

struct WatchState {
    client: Client,
    path: String,
    /// The map the path was routed by, once it was (events' paths are
    /// turned back into global ones with it).
    routed_by: Option<Arc<ShardMap>>,
    recursive: bool,
    /// Cursor of the last event delivered (or the starting cursor).
    cursor: u64,
    stream: Option<tonic::Streaming<pb::WatchEvent>>,
    next_endpoint: usize,
    backoff: Duration,
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

impl WatchState {
    /// A routed client's watch goes to the shard that owns the path, with
    /// the path in that shard's terms (decided once: a cursor means
    /// something only in one shard's history).
    async fn route(&mut self) -> Result<(), ClientError> {
        if !self.client.is_routed() || self.routed_by.is_some() {
            return Ok(());
        }
        let Some(map) = self.client.shard_map().await? else {
            return Ok(());
        };
        let query = nokv_holt::Query::GetAttr {
            inode: nokv_holt::InodeRef::Path(self.path.clone()),
        };
        let (shard, local) = routing::route_query(&map, query, self.client.shard())?;
        if let nokv_holt::Query::GetAttr {
            inode: nokv_holt::InodeRef::Path(path),
        } = local
        {
            self.path = path;
        }
        self.client = self.client.for_shard(shard);
        self.routed_by = Some(map);
        Ok(())
    }

    /// `event` with global paths.
    fn globalize(&self, mut event: Event) -> Event {
        let Some(map) = &self.routed_by else {
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

    async fn connect(&mut self) -> Result<(), ClientError> {
        self.route().await?;
        let endpoints = self.client.replica_candidates();
        let addr = normalize(&endpoints[self.next_endpoint % endpoints.len()]);
        self.next_endpoint = self.next_endpoint.wrapping_add(1);
        let mut stub = self.client.stub(&addr)?;
        let request = pb::WatchRequest {
            path: self.path.clone(),
            recursive: self.recursive,
            after_cursor: self.cursor,
            shard: self.client.wire_shard(),
        };
        match tokio::time::timeout(self.client.attempt_timeout(), stub.watch(request)).await {
            Ok(Ok(response)) => {
                self.stream = Some(response.into_inner());
                Ok(())
            }
            Ok(Err(status)) => match classify(&status) {
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

    async fn next(mut self) -> Option<(Result<Event, ClientError>, WatchState)> {
        if self.done {
            return None;
        }
        loop {
            if self.stream.is_none() {
                match self.connect().await {
                    Ok(()) => {}
                    Err(ClientError::Unavailable(why)) => {
                        tracing::debug!(%why, "watch: replica unavailable, trying the next");
                        self.pause().await;
                        continue;
                    }
                    Err(fatal) => {
                        self.done = true;
                        return Some((Err(fatal), self));
                    }
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
                    if let Some(fatal) = classify(&status) {
                        self.done = true;
                        return Some((Err(fatal), self));
                    }
                    self.pause().await;
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

    /// Typed change events at `path` (and its direct children; everything
    /// below it when `recursive`), in commit order, after cursor `after`
    /// (0: from the oldest retained event). Each event's `seq` is its
    /// cursor. The stream follows the cluster across replica failures; it
    /// ends only with an error the request caused, such as
    /// [`ClientError::CursorExpired`].
    pub fn watch(
        &self,
        path: &str,
        recursive: bool,
        after: u64,
    ) -> impl Stream<Item = Result<Event, ClientError>> + Send + 'static {
        let state = WatchState {
            client: self.clone(),
            path: path.to_string(),
            routed_by: None,
            recursive,
            cursor: after,
            stream: None,
            next_endpoint: 0,
            backoff: BACKOFF_MIN,
            done: false,
        };
        futures::stream::unfold(state, WatchState::next)
    }
}
