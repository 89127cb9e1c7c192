//! The fences around a graft, checked once on the quiet cluster before the
//! workloads start and once after the final heal: a rename from one shard
//! into the other must fail with `EXDEV` (there is no atomic cross-shard
//! rename), and removing or renaming the graft point must fail with
//! `EBUSY`. Each probe must also change nothing: the file it tried to move
//! is still where it was.

use std::time::Duration;

use nokv_client::{Client, ClientError, Consistency, RenameMode};
use serde::{Deserialize, Serialize};

use super::until_ok;
use crate::cluster::{ClusterError, GRAFT};

/// A file of the root shard the probes try to move into the graft.
const PROBE: &str = "/jepsen/graft-probe";

/// One probe and what NoKV answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraftCheck {
    /// `start` or `end` of the run.
    pub when: String,
    /// What was tried, e.g. `rename /jepsen/graft-probe /s1/graft-probe`.
    pub op: String,
    /// The error code it must fail with.
    pub expected: String,
    /// The code it failed with (`ok` if it succeeded).
    pub got: String,
    pub ok: bool,
}

/// A transient answer (no leader yet, a timeout, a request routed by a
/// map older than the graft): ask again.
fn transient(e: &ClientError) -> bool {
    matches!(e, ClientError::Unavailable(_) | ClientError::Unknown(_)) || e.is_misrouted()
}

/// Runs `attempt` until it gives a non-transient answer or `timeout`
/// passes; returns the answer's code.
async fn code_of<F, Fut>(timeout: Duration, mut attempt: F) -> String
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let result = until_ok(timeout, || {
        let answer = attempt();
        async move {
            match answer.await {
                Err(e) if transient(&e) => Err(e),
                other => Ok(other),
            }
        }
    })
    .await;
    match result {
        Ok(Ok(())) => "ok".into(),
        Ok(Err(e)) | Err(e) => e.code().to_string(),
    }
}

/// Runs the probes; `when` labels them (`start`, `end`).
pub async fn check(
    client: &Client,
    when: &str,
    timeout: Duration,
) -> Result<Vec<GraftCheck>, ClusterError> {
    if let Err(e) = until_ok(timeout, || async {
        client.mkdir("/jepsen", true).await?;
        match client.create(PROBE).await {
            Err(e) if e.is_exists() => Ok(()),
            other => other.map(|_| ()),
        }
    })
    .await
    {
        return Err(ClusterError::Harness(format!("creating {PROBE}: {e}")));
    }
    let target = format!("{GRAFT}/graft-probe");
    let moved = format!("{GRAFT}-moved");
    let mut checks = Vec::new();
    let mut probe = |op: String, expected: &str, got: String| {
        checks.push(GraftCheck {
            when: when.to_string(),
            op,
            expected: expected.to_string(),
            ok: got == expected,
            got,
        });
    };
    let got = code_of(timeout, || {
        client.rename(PROBE, &target, RenameMode::NoReplace)
    })
    .await;
    probe(format!("rename {PROBE} {target}"), "EXDEV", got);
    let got = code_of(timeout, || client.rmdir(GRAFT)).await;
    probe(format!("rmdir {GRAFT}"), "EBUSY", got);
    let got = code_of(timeout, || {
        client.rename(GRAFT, &moved, RenameMode::NoReplace)
    })
    .await;
    probe(format!("rename {GRAFT} {moved}"), "EBUSY", got);
    // Nothing moved: the probe is where it was, the graft still there.
    let got = code_of(timeout, || async {
        client.stat(PROBE, Consistency::Linearizable).await?;
        client.stat(GRAFT, Consistency::Linearizable).await?;
        match client.stat(&target, Consistency::Linearizable).await {
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Err(ClientError::Fs {
                code: "MOVED".into(),
                errno: 0,
                message: format!("{target} exists"),
            }),
        }
    })
    .await;
    probe(format!("stat {PROBE} {GRAFT} {target}"), "ok", got);
    Ok(checks)
}
