//! `Watch`: typed change events from this replica's applied history.
//!
//! Any replica serves it: a cursor is a position in the replicated event
//! history, the same on every replica, so a client can resume on another
//! node after the last cursor it received with no gap and no duplicate. A
//! replica only ever applies committed entries, so nothing uncommitted is
//! streamed. The stream first replays the retained history after the
//! cursor, then waits for this replica to apply more (woken by openraft's
//! metrics, which change on every apply).

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use nokv_holt::Event;
use nokv_proto::fs_error_status;
use nokv_proto::pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::state_machine::SharedState;
use crate::typ::Raft;

pub(crate) type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// Events read per pass; the stream sends them before reading more.
const PAGE: u32 = 1000;
/// Events buffered between the reader and a slow client.
const BUFFER: usize = 1024;
/// Upper bound on how long a stream waits before looking at the history
/// again even if no change was signalled.
const RECHECK: Duration = Duration::from_secs(1);

fn read(
    state: &SharedState,
    after: u64,
    path: &str,
    recursive: bool,
) -> Result<(Vec<Event>, u64), Status> {
    let s = state
        .read()
        .map_err(|_| Status::internal("state lock poisoned"))?;
    s.holt
        .events(after, path, recursive, PAGE)
        .map_err(|e| fs_error_status(&e))
}

/// Whether the caller may still read (its token was not revoked since the
/// stream opened); checked before each page and each wait.
pub(crate) type StillAllowed = Box<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + Send>>
        + Send,
>;

/// Opens a watch, which holds `permit` (its place among the node's streams)
/// until it ends. Errors that the request alone decides (a malformed path,
/// an expired cursor) are returned here, before any event is sent. With
/// `allowed`, the stream ends with its error once the caller's access ends
/// (within a page of events, or a second when idle).
pub(crate) fn open(
    state: SharedState,
    raft: Raft,
    req: pb::WatchRequest,
    permit: tokio::sync::OwnedSemaphorePermit,
    allowed: Option<StillAllowed>,
) -> Result<WatchStream, Status> {
    read(&state, req.after_cursor, &req.path, req.recursive)?;
    let (tx, rx) = tokio::sync::mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let _permit = permit;
        let mut applied = raft.metrics();
        let mut cursor = req.after_cursor;
        loop {
            // Mark the current metrics as seen before reading, so an apply
            // that lands after the read still wakes the wait below.
            applied.borrow_and_update();
            if let Some(check) = allowed.as_ref() {
                if let Err(status) = check().await {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            let (events, next) = match read(&state, cursor, &req.path, req.recursive) {
                Ok(page) => page,
                Err(status) => {
                    // The history moved past a slow reader: tell it where
                    // it can resume, then end.
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let advanced = next != cursor;
            cursor = next;
            for event in events {
                if tx.send(Ok(event.into())).await.is_err() {
                    return;
                }
            }
            if advanced {
                continue;
            }
            tokio::select! {
                _ = tx.closed() => return,
                changed = applied.changed() => {
                    if changed.is_err() {
                        // Raft is shutting down; the client resumes elsewhere.
                        return;
                    }
                }
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}
