//! Subtree snapshots: create, list, renew and remove pins. Reading at a pin
//! goes through [`Client::at_snapshot`].

use std::time::Duration;

use nokv_holt::{Applied, Op, Query, QueryResult, SnapshotId, SnapshotInfo};

use crate::client::{Client, Consistency};
use crate::error::ClientError;

fn lease_ns(lease: Duration) -> u64 {
    lease.as_nanos().min(u128::from(u64::MAX)) as u64
}

fn snapshot_of(applied: Applied) -> Result<SnapshotInfo, ClientError> {
    match applied {
        Applied::Snapshot(info) => Ok(info),
        _ => Err(ClientError::Protocol("expected a snapshot in reply".into())),
    }
}

impl Client {
    /// Pins the subtree at `path` as it is now, for `lease`; the pin is
    /// released when the lease runs out unless renewed.
    pub async fn create_snapshot(
        &self,
        path: &str,
        lease: Duration,
    ) -> Result<SnapshotInfo, ClientError> {
        snapshot_of(
            self.mutate(Op::CreateSnapshot {
                path: path.into(),
                lease_ns: lease_ns(lease),
            })
            .await?,
        )
    }

    /// Extends a live pin: its lease now ends `lease` from now.
    pub async fn renew_snapshot(
        &self,
        id: SnapshotId,
        lease: Duration,
    ) -> Result<SnapshotInfo, ClientError> {
        snapshot_of(
            self.mutate(Op::RenewSnapshot {
                id,
                lease_ns: lease_ns(lease),
            })
            .await?,
        )
    }

    /// Releases a pin now.
    pub async fn remove_snapshot(&self, id: SnapshotId) -> Result<(), ClientError> {
        self.mutate(Op::RemoveSnapshot { id }).await.map(|_| ())
    }

    /// Every live pin, in id order.
    pub async fn snapshots(
        &self,
        consistency: Consistency,
    ) -> Result<Vec<SnapshotInfo>, ClientError> {
        match self.query(Query::ListSnapshots, consistency).await? {
            QueryResult::Snapshots(list) => Ok(list),
            _ => Err(ClientError::Protocol("expected a snapshot list".into())),
        }
    }
}
