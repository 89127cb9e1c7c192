//! Errors the SDK returns. Routing errors (`NOT_LEADER`) never surface: the
//! client follows them. What is left says what the caller can do.

use nokv_proto::pb::ErrorDetail;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A namespace error from the engine (ENOENT, EEXIST, ...). Nothing changed.
    #[error("{message}")]
    Fs {
        code: String,
        errno: i32,
        message: String,
    },
    /// The request was malformed; nothing changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A watch cursor older than the cluster's event history; resume from
    /// `oldest` (events between were dropped by retention). `shard` is the shard
    /// whose history it is, when a watch reported it (`oldest` is a position in
    /// that shard's history).
    #[error("{message}")]
    CursorExpired {
        oldest: u64,
        message: String,
        shard: Option<nokv_holt::ShardId>,
    },
    /// The request was routed by an old shard map; `current` is the
    /// refusing node's map revision (the client refreshes and routes again).
    #[error("routed by an old shard map; the node has revision {current}")]
    StaleMap { current: u64 },
    /// The write carried an old epoch and changed nothing; `current` is the
    /// shard's epoch now and `leader` the address of the node that refused it
    /// (the leader). The SDK sends it again under `current` by itself unless
    /// [`crate::ClientConfig::epoch`] pins the epoch.
    #[error("stale epoch; current epoch is {current}")]
    StaleEpoch {
        current: u64,
        leader: Option<String>,
    },
    /// A write was sent but no answer came before the deadline: it may or may
    /// not have been applied. Retrying with the same request id is safe.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// No replica could serve the request before the deadline; a write
    /// reported this way was never accepted by any replica.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The cluster answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The cluster reported an internal error.
    #[error("server error: {0}")]
    Server(String),
    /// `init` on a cluster that was already initialised.
    #[error("{0}")]
    AlreadyInitialized(String),
    /// The object store failed (block upload or download).
    #[error("object store: {0}")]
    Store(String),
    /// The node asked hosts no replica of the shard the request named.
    #[error("{0}")]
    UnknownShard(String),
    /// The request named a path or inode of another shard (a graft the
    /// routing map did not know): send it to `shard`. The routed SDK does
    /// this itself after re-reading the map; a pinned handle reports it.
    #[error("{message}")]
    WrongShard {
        shard: u16,
        graft_path: String,
        message: String,
    },
    /// The control plane refused a change of the shard map (`code` is the
    /// router's: CONFLICT, MALFORMED_MAP, ...).
    #[error("{message}")]
    ControlPlane { code: String, message: String },
    /// Bytes read back do not match the body's description (size or sha256).
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// The request carried no credentials, or ones the cluster does not
    /// accept (an unknown or revoked token); nothing changed.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The caller may not do this (a read-only token writing, an admin
    /// request without an admin token); nothing changed.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The caller's writer failed while a body was being written to it
    /// (`kind` says how: `BrokenPipe` when its reader went away).
    #[error("writing output: {message}")]
    Output {
        kind: std::io::ErrorKind,
        message: String,
    },
}

impl ClientError {
    /// Stable code: the engine's (ENOENT, ...) or the SDK's.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Fs { code, .. } => code,
            ClientError::InvalidArgument(_) => "INVALID_ARGUMENT",
            ClientError::StaleEpoch { .. } => "STALE_EPOCH",
            ClientError::CursorExpired { .. } => "CURSOR_EXPIRED",
            ClientError::Unknown(_) => "UNKNOWN_OUTCOME",
            ClientError::Unavailable(_) => "UNAVAILABLE",
            ClientError::Protocol(_) => "PROTOCOL",
            ClientError::Server(_) => "INTERNAL",
            ClientError::AlreadyInitialized(_) => "ALREADY_INITIALIZED",
            ClientError::Store(_) => "STORE",
            ClientError::Integrity(_) => "INTEGRITY",
            ClientError::UnknownShard(_) => "UNKNOWN_SHARD",
            ClientError::WrongShard { .. } => "WRONG_SHARD",
            ClientError::StaleMap { .. } => "STALE_MAP",
            ClientError::ControlPlane { code, .. } => code,
            ClientError::Output { .. } => "OUTPUT",
            ClientError::Unauthenticated(_) => "UNAUTHENTICATED",
            ClientError::PermissionDenied(_) => "PERMISSION_DENIED",
        }
    }

    /// True for "no such file or directory".
    pub fn is_not_found(&self) -> bool {
        self.code() == "ENOENT"
    }

    /// True for "already exists".
    pub fn is_exists(&self) -> bool {
        self.code() == "EEXIST"
    }

    /// True for a refusal of one copy of a request that says nothing of
    /// other copies (a stale epoch or map, the wrong shard, an unavailable
    /// replica): after an attempt that may have applied, the outcome is
    /// unknown, not failed.
    pub fn refuses_only_this_copy(&self) -> bool {
        matches!(
            self,
            ClientError::StaleEpoch { .. }
                | ClientError::WrongShard { .. }
                | ClientError::UnknownShard(_)
                | ClientError::StaleMap { .. }
                | ClientError::Unavailable(_)
                | ClientError::ControlPlane { .. }
        )
    }

    /// True when the request went to the wrong shard (re-route it).
    pub fn is_misrouted(&self) -> bool {
        matches!(
            self,
            ClientError::WrongShard { .. }
                | ClientError::UnknownShard(_)
                | ClientError::StaleMap { .. }
        )
    }

    pub(crate) fn from_detail(detail: ErrorDetail) -> ClientError {
        match detail.code.as_str() {
            "INVALID_ARGUMENT" => ClientError::InvalidArgument(detail.message),
            "STALE_EPOCH" => ClientError::StaleEpoch {
                current: detail.current_epoch,
                leader: (!detail.leader_addr.is_empty()).then_some(detail.leader_addr),
            },
            "UNKNOWN_OUTCOME" => ClientError::Unknown(detail.message),
            "UNAVAILABLE" => ClientError::Unavailable(detail.message),
            "ALREADY_INITIALIZED" => ClientError::AlreadyInitialized(detail.message),
            "CURSOR_EXPIRED" => ClientError::CursorExpired {
                oldest: detail.oldest_cursor,
                message: detail.message,
                shard: None,
            },
            "INTERNAL" => ClientError::Server(detail.message),
            "UNKNOWN_SHARD" => ClientError::UnknownShard(detail.message),
            "UNAUTHENTICATED" => ClientError::Unauthenticated(detail.message),
            "PERMISSION_DENIED" => ClientError::PermissionDenied(detail.message),
            "STALE_MAP" => ClientError::StaleMap {
                current: detail.map_revision,
            },
            "WRONG_SHARD" => ClientError::WrongShard {
                shard: detail.shard.unwrap_or_default() as u16,
                graft_path: detail.graft_path,
                message: detail.message,
            },
            _ if detail.errno != 0 => ClientError::Fs {
                code: detail.code,
                errno: detail.errno,
                message: detail.message,
            },
            _ => ClientError::Server(format!("{}: {}", detail.code, detail.message)),
        }
    }
}
