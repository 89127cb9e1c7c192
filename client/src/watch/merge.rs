//! The merge of per-shard event streams into one, and the composite cursor after each
//! event.
//!
//! # Invariants
//!
//! - Events of one shard come out in that shard's commit order (each input stream is
//!   consumed in order); events of different shards are interleaved in whatever order
//!   they arrive. There is no order across shards.
//! - The cursor handed out with an event names, for every shard, the last event of that
//!   shard delivered up to and including this one. A watch resumed from it gets every
//!   later event of every shard once: per shard, exactly the events after that position.
//! - An event at or before its shard's position is dropped (a replica never sends one;
//!   this defends the exactly-once promise).

use std::collections::BTreeMap;

use futures::stream::{AbortHandle, Abortable, BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use nokv_holt::{Event, ShardId};

use super::cursor::WatchCursor;
use crate::error::ClientError;

/// One delivered event, the shard it comes from, and where to resume after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedEvent {
    /// The shard whose history the event is in; `event.seq` is its position there.
    pub shard: ShardId,
    /// The event, with global paths.
    pub event: Event,
    /// Resume after this event (and every event delivered before it) with this.
    pub cursor: WatchCursor,
}

type Tagged = (ShardId, Result<Event, ClientError>);

/// Per-shard streams merged into one.
pub(super) struct Merge {
    cursor: WatchCursor,
    streams: SelectAll<BoxStream<'static, Tagged>>,
    /// The shards with a stream, and how to stop it.
    handles: BTreeMap<ShardId, AbortHandle>,
}

impl Merge {
    /// A merge resuming after `cursor` (already resolved: no bare position).
    pub(super) fn new(cursor: WatchCursor) -> Merge {
        Merge {
            cursor,
            streams: SelectAll::new(),
            handles: BTreeMap::new(),
        }
    }

    /// Where `shard`'s stream must start: after its last delivered event.
    pub(super) fn after(&self, shard: ShardId) -> u64 {
        self.cursor.get(shard).unwrap_or(0)
    }

    /// The shards read now.
    pub(super) fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.handles.keys().copied()
    }

    /// Reads `shard` from `events` (which must start after [`Merge::after`]`(shard)`),
    /// replacing any stream it had.
    pub(super) fn add(
        &mut self,
        shard: ShardId,
        events: impl Stream<Item = Result<Event, ClientError>> + Send + 'static,
    ) {
        self.remove(shard);
        let (handle, registration) = AbortHandle::new_pair();
        let tagged = Abortable::new(events, registration).map(move |e| (shard, e));
        self.streams.push(tagged.boxed());
        self.handles.insert(shard, handle);
    }

    /// Stops reading `shard`. Its position stays in the cursor.
    pub(super) fn remove(&mut self, shard: ShardId) {
        if let Some(handle) = self.handles.remove(&shard) {
            handle.abort();
        }
    }

    /// The next event of any shard with the cursor after it, or a shard's error (that
    /// shard's stream is over). `None` once no shard is read. Cancellation-safe.
    pub(super) async fn next(&mut self) -> Option<(ShardId, Result<WatchedEvent, ClientError>)> {
        loop {
            let (shard, item) = self.streams.next().await?;
            if !self.handles.contains_key(&shard) {
                // Removed while the item was in flight.
                continue;
            }
            match item {
                Ok(event) if event.seq <= self.after(shard) => continue,
                Ok(event) => {
                    self.cursor.set(shard, event.seq);
                    return Some((
                        shard,
                        Ok(WatchedEvent {
                            shard,
                            event,
                            cursor: self.cursor.clone(),
                        }),
                    ));
                }
                Err(e) => {
                    self.handles.remove(&shard);
                    return Some((shard, Err(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_holt::{EventKind, InodeId, LogIndex};

    fn event(seq: u64, path: &str) -> Event {
        Event {
            seq,
            index: LogIndex(seq),
            time_ns: 0,
            inode: InodeId(seq),
            path: Some(path.to_string()),
            kind: EventKind::Mkdir,
        }
    }

    /// A shard's retained history: `n` events named after the shard.
    fn history(shard: u16, n: u64) -> Vec<Event> {
        (1..=n)
            .map(|s| event(s, &format!("/s{shard}/e{s}")))
            .collect()
    }

    /// What a replica serves: the history after `after`.
    fn serve(history: &[Event], after: u64) -> BoxStream<'static, Result<Event, ClientError>> {
        let rest: Vec<_> = history
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .map(Ok)
            .collect();
        futures::stream::iter(rest).boxed()
    }

    fn histories() -> BTreeMap<ShardId, Vec<Event>> {
        [(0, 5), (3, 7), (9, 4)]
            .into_iter()
            .map(|(s, n)| (ShardId(s), history(s, n)))
            .collect()
    }

    fn merge_from(cursor: &WatchCursor, h: &BTreeMap<ShardId, Vec<Event>>) -> Merge {
        let mut merge = Merge::new(cursor.clone());
        for (shard, events) in h {
            let after = merge.after(*shard);
            merge.add(*shard, serve(events, after));
        }
        merge
    }

    async fn drain(merge: &mut Merge) -> Vec<WatchedEvent> {
        let mut out = Vec::new();
        while let Some((_, item)) = merge.next().await {
            out.push(item.expect("no errors here"));
        }
        out
    }

    #[tokio::test]
    async fn each_shard_in_order_and_every_event_once() {
        let h = histories();
        let all = drain(&mut merge_from(&WatchCursor::new(), &h)).await;
        assert_eq!(all.len(), 16);
        for (shard, events) in &h {
            let got: Vec<&Event> = all
                .iter()
                .filter(|w| w.shard == *shard)
                .map(|w| &w.event)
                .collect();
            assert_eq!(got, events.iter().collect::<Vec<_>>(), "shard {}", shard.0);
        }
        // The cursor after the last event names every shard's last event.
        let last = &all.last().expect("events").cursor;
        assert_eq!(last.to_string(), "0:5,3:7,9:4");
    }

    #[tokio::test]
    async fn resuming_from_any_events_cursor_gives_exactly_the_rest() {
        let h = histories();
        let all = drain(&mut merge_from(&WatchCursor::new(), &h)).await;
        for k in 0..all.len() {
            let cursor: WatchCursor = all[k].cursor.to_string().parse().expect("round trip");
            let rest = drain(&mut merge_from(&cursor, &h)).await;
            let key = |w: &WatchedEvent| (w.shard, w.event.seq);
            let mut expected: Vec<_> = all[k + 1..].iter().map(key).collect();
            let mut got: Vec<_> = rest.iter().map(key).collect();
            expected.sort();
            got.sort();
            assert_eq!(got, expected, "resumed after event {k} ({cursor})");
        }
    }

    #[tokio::test]
    async fn removed_shards_stop_and_keep_their_position() {
        let h = histories();
        let mut merge = merge_from(&WatchCursor::new(), &h);
        merge.remove(ShardId(3));
        let all = drain(&mut merge).await;
        assert!(all.iter().all(|w| w.shard != ShardId(3)));
        assert_eq!(all.len(), 9);
        assert!(merge.shards().all(|s| s != ShardId(3)));

        let mut resumed = Merge::new("3:2".parse().expect("cursor"));
        resumed.remove(ShardId(3));
        assert_eq!(resumed.after(ShardId(3)), 2);
    }

    #[tokio::test]
    async fn repeats_are_dropped_and_errors_end_one_shard() {
        let mut merge = Merge::new("1:2".parse().expect("cursor"));
        merge.add(
            ShardId(1),
            futures::stream::iter(vec![
                Ok(event(2, "/old")),
                Ok(event(3, "/a")),
                Ok(event(3, "/a-again")),
                Err(ClientError::InvalidArgument("bad".into())),
            ]),
        );
        merge.add(ShardId(2), serve(&history(2, 2), 0));
        let mut events = Vec::new();
        let mut errors = Vec::new();
        while let Some((shard, item)) = merge.next().await {
            match item {
                Ok(w) => events.push((shard.0, w.event.path.unwrap_or_default())),
                Err(e) => errors.push((shard.0, e.code().to_string())),
            }
        }
        events.sort();
        assert_eq!(
            events,
            [
                (1, "/a".to_string()),
                (2, "/s2/e1".to_string()),
                (2, "/s2/e2".to_string())
            ]
        );
        assert_eq!(errors, [(1, "INVALID_ARGUMENT".to_string())]);
    }
}
