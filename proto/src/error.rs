//! Structured errors on the wire: a gRPC status whose `details` carry an
//! encoded [`ErrorDetail`] with a stable code and routing hints.

use prost::Message;
use tonic::{Code, Status};

use crate::pb::ErrorDetail;

/// Stable error codes that are not namespace (POSIX) errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// This replica is not the leader; the detail names who is, when known.
    NotLeader,
    /// The request's epoch is stale; the detail carries the current one.
    StaleEpoch,
    InvalidArgument,
    /// The shard cannot serve now (no leader, shutting down, overloaded).
    Unavailable,
    /// The write may or may not have been applied (e.g. leadership was lost
    /// after it was proposed). Retrying with the same request id is safe.
    UnknownOutcome,
    Internal,
    /// The node hosts no replica of the shard the request named; the
    /// client refreshes its shard map and routes again.
    UnknownShard,
    /// The request belongs to another shard: the detail names it (`shard`)
    /// and, when known, the graft point in this shard (`graft_path`). The
    /// engine raises it as `FsError::CrossShard`; a node asked for a shard
    /// it does not host answers `UnknownShard` instead.
    WrongShard,
    /// The request was routed by a shard map older than the last change to
    /// the shard's routing; the detail carries the node's map revision.
    StaleMap,
    /// The caller did not prove who it is (no token, or no certificate
    /// where one is required); nothing changed.
    Unauthenticated,
    /// The caller is known but may not do this (a read-only token writing,
    /// a peer of another cluster); nothing changed.
    PermissionDenied,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotLeader => "NOT_LEADER",
            ErrorCode::StaleEpoch => "STALE_EPOCH",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::UnknownOutcome => "UNKNOWN_OUTCOME",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::UnknownShard => "UNKNOWN_SHARD",
            ErrorCode::WrongShard => "WRONG_SHARD",
            ErrorCode::StaleMap => "STALE_MAP",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
        }
    }

    pub fn grpc_code(self) -> Code {
        match self {
            ErrorCode::NotLeader => Code::FailedPrecondition,
            ErrorCode::StaleEpoch => Code::FailedPrecondition,
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::UnknownOutcome => Code::Unknown,
            ErrorCode::Internal => Code::Internal,
            ErrorCode::UnknownShard => Code::FailedPrecondition,
            ErrorCode::WrongShard => Code::FailedPrecondition,
            ErrorCode::StaleMap => Code::FailedPrecondition,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
        }
    }
}

/// A status with `detail` encoded in its details.
pub fn status_with_detail(code: Code, detail: ErrorDetail) -> Status {
    let message = detail.message.clone();
    Status::with_details(code, message, detail.encode_to_vec().into())
}

/// A status for a non-namespace error with no routing hint.
pub fn status_from_detail(code: ErrorCode, message: String) -> Status {
    status_with_detail(
        code.grpc_code(),
        ErrorDetail {
            code: code.as_str().to_string(),
            message,
            ..Default::default()
        },
    )
}

/// `NOT_LEADER` with the leader's id and address when known.
pub fn not_leader_status(leader: Option<(u64, String)>) -> Status {
    let (leader_id, leader_addr) = match leader {
        Some((id, addr)) => (Some(id), addr),
        None => (None, String::new()),
    };
    let message = match leader_id {
        Some(id) => format!("not the leader; leader is node {id} at {leader_addr}"),
        None => "not the leader; no leader is known yet".to_string(),
    };
    status_with_detail(
        ErrorCode::NotLeader.grpc_code(),
        ErrorDetail {
            code: ErrorCode::NotLeader.as_str().to_string(),
            message,
            leader_id,
            leader_addr,
            ..Default::default()
        },
    )
}

/// The status for a namespace error from the engine, from the shard's leader
/// `leader` (id, address): a `STALE_EPOCH` refusal names it, so the client
/// sends the write again there under the current epoch.
pub fn fs_error_status_from_leader(
    err: &nokv_holt::FsError,
    leader: Option<(u64, String)>,
) -> Status {
    let Some((leader_id, leader_addr)) = leader else {
        return fs_error_status(err);
    };
    let nokv_holt::FsError::StaleEpoch { current } = err else {
        return fs_error_status(err);
    };
    status_with_detail(
        ErrorCode::StaleEpoch.grpc_code(),
        ErrorDetail {
            code: err.code().to_string(),
            message: format!(
                "{err} (the leader is node {leader_id} at {leader_addr}); the write changed \
                 nothing: send it again under epoch {} with the same request id",
                current.0
            ),
            errno: err.errno(),
            current_epoch: current.0,
            leader_id: Some(leader_id),
            leader_addr,
            ..Default::default()
        },
    )
}

/// The status for a namespace error from the engine.
pub fn fs_error_status(err: &nokv_holt::FsError) -> Status {
    use nokv_holt::FsError;
    let code = match err {
        FsError::NotFound(_) | FsError::NoData(_) => Code::NotFound,
        FsError::AlreadyExists(_) => Code::AlreadyExists,
        FsError::InvalidArgument(_) | FsError::NameTooLong(_) => Code::InvalidArgument,
        FsError::NoSpace(_) => Code::ResourceExhausted,
        FsError::CursorExpired { .. } => Code::OutOfRange,
        FsError::NotADirectory(_)
        | FsError::IsADirectory(_)
        | FsError::NotEmpty(_)
        | FsError::Loop(_)
        | FsError::NotPermitted(_)
        | FsError::StaleEpoch { .. }
        | FsError::StaleGeneration { .. }
        | FsError::Busy(_)
        | FsError::CrossDevice(_) => Code::FailedPrecondition,
        FsError::CrossShard { .. } => ErrorCode::WrongShard.grpc_code(),
    };
    let current_epoch = match err {
        FsError::StaleEpoch { current } => current.0,
        _ => 0,
    };
    let oldest_cursor = match err {
        FsError::CursorExpired { oldest } => *oldest,
        _ => 0,
    };
    let (shard, graft_path) = match err {
        FsError::CrossShard { shard, path } => (Some(u32::from(shard.0)), path.clone()),
        _ => (None, String::new()),
    };
    status_with_detail(
        code,
        ErrorDetail {
            code: err.code().to_string(),
            message: err.to_string(),
            errno: err.errno(),
            current_epoch,
            oldest_cursor,
            shard,
            graft_path,
            ..Default::default()
        },
    )
}

/// The `ErrorDetail` of a status, if it carries one.
pub fn detail_of(status: &Status) -> Option<ErrorDetail> {
    if status.details().is_empty() {
        return None;
    }
    ErrorDetail::decode(status.details()).ok()
}

/// The engine error a `WRONG_SHARD` detail describes: the shard the request
/// belongs to and the graft point (empty if unknown). `None` for any other
/// detail, or one without a valid shard.
pub fn cross_shard_of(detail: &ErrorDetail) -> Option<nokv_holt::FsError> {
    if detail.code != ErrorCode::WrongShard.as_str() {
        return None;
    }
    let shard = u16::try_from(detail.shard?).ok()?;
    Some(nokv_holt::FsError::CrossShard {
        shard: nokv_holt::ShardId(shard),
        path: detail.graft_path.clone(),
    })
}

/// A refusal as one outcome of a batched call (`MutateBatch`,
/// `QueryBatch`): the status a lone call would have ended with.
pub fn call_error(status: &Status) -> crate::pb::CallError {
    crate::pb::CallError {
        grpc_code: status.code() as i32,
        message: status.message().to_string(),
        detail: detail_of(status),
    }
}

/// The status an outcome of a batched call stands for: the same one a lone
/// call would have returned, so the client treats both alike.
pub fn status_of_call_error(e: crate::pb::CallError) -> Status {
    let code = Code::from_i32(e.grpc_code);
    match e.detail {
        Some(detail) => Status::with_details(code, e.message, detail.encode_to_vec().into()),
        None => Status::new(code, e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_holt::{FsError, ShardId};

    #[test]
    fn a_batched_refusal_stands_for_the_status_of_a_lone_call() {
        let lone = not_leader_status(Some((2, "10.0.0.2:7001".into())));
        let back = status_of_call_error(call_error(&lone));
        assert_eq!(back.code(), lone.code());
        assert_eq!(back.message(), lone.message());
        assert_eq!(detail_of(&back), detail_of(&lone));
        assert_eq!(detail_of(&back).and_then(|d| d.leader_id), Some(2));

        // A status without a detail stays one; an unknown code is Unknown.
        let plain = Status::internal("boom");
        let back = status_of_call_error(call_error(&plain));
        assert_eq!((back.code(), back.message()), (Code::Internal, "boom"));
        assert!(detail_of(&back).is_none());
        let odd = status_of_call_error(crate::pb::CallError {
            grpc_code: 999,
            message: "?".into(),
            detail: None,
        });
        assert_eq!(odd.code(), Code::Unknown);
    }

    #[test]
    fn graft_errors_carry_stable_codes_and_routing_fields() {
        let cross = FsError::CrossShard {
            shard: ShardId(3),
            path: "/runs".into(),
        };
        let status = fs_error_status(&cross);
        assert_eq!(status.code(), Code::FailedPrecondition);
        let detail = detail_of(&status).expect("detail");
        assert_eq!(
            (detail.code.as_str(), detail.errno, detail.shard),
            ("WRONG_SHARD", 18, Some(3))
        );
        assert_eq!(detail.graft_path, "/runs");
        assert_eq!(cross_shard_of(&detail), Some(cross));

        for (err, code, errno) in [
            (FsError::Busy("/runs".into()), "EBUSY", 16),
            (FsError::CrossDevice("/a -> /b".into()), "EXDEV", 18),
        ] {
            let detail = detail_of(&fs_error_status(&err)).expect("detail");
            assert_eq!((detail.code.as_str(), detail.errno), (code, errno));
            assert_eq!((detail.shard, detail.graft_path.as_str()), (None, ""));
            assert_eq!(cross_shard_of(&detail), None);
        }
        let mut bad = detail.clone();
        bad.code = "WRONG_SHARD".into();
        bad.shard = Some(70_000);
        assert_eq!(cross_shard_of(&bad), None, "a shard id beyond 16 bits");
    }
}
