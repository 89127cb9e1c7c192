//! [`BlobError`], the one error type of this crate, and [`BlobOp`], the operation it names.

use std::fmt;

/// The [`BlobStore`](crate::BlobStore) operation an error or a fault belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobOp {
    /// [`BlobStore::put_new`](crate::BlobStore::put_new).
    PutNew,
    /// [`BlobStore::get`](crate::BlobStore::get).
    Get,
    /// [`BlobStore::head`](crate::BlobStore::head).
    Head,
    /// [`BlobStore::delete`](crate::BlobStore::delete).
    Delete,
    /// [`BlobStore::list`](crate::BlobStore::list).
    List,
}

impl BlobOp {
    /// Every operation, in declaration order.
    pub const ALL: [BlobOp; 5] = [
        BlobOp::PutNew,
        BlobOp::Get,
        BlobOp::Head,
        BlobOp::Delete,
        BlobOp::List,
    ];

    /// The operation's name, as the trait method is spelled.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobOp::PutNew => "put_new",
            BlobOp::Get => "get",
            BlobOp::Head => "head",
            BlobOp::Delete => "delete",
            BlobOp::List => "list",
        }
    }

    /// Position in [`BlobOp::ALL`], for per-operation tables.
    pub(crate) fn index(self) -> usize {
        match self {
            BlobOp::PutNew => 0,
            BlobOp::Get => 1,
            BlobOp::Head => 2,
            BlobOp::Delete => 3,
            BlobOp::List => 4,
        }
    }
}

impl fmt::Display for BlobOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in a [`BlobStore`](crate::BlobStore).
///
/// Keys in errors are the caller's relative keys (for `list`, the prefix), never the
/// store's full object names. Match on the variant or on [`BlobError::code`]; never parse
/// the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// No object under `key`.
    #[error("blob {key:?} not found")]
    NotFound {
        /// The relative key.
        key: String,
    },
    /// `put_new` found an object already stored under `key`; the stored body is unchanged.
    #[error("blob {key:?} already exists")]
    AlreadyExists {
        /// The relative key.
        key: String,
    },
    /// The key (or list prefix) breaks the key rules; nothing was sent to the store.
    #[error("invalid blob key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected key, as given.
        key: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// The operation did not finish within its deadline. Its outcome is unknown: a timed-out
    /// `put_new` or `delete` may or may not have taken effect.
    #[error("blob {op} {key:?} timed out")]
    Timeout {
        /// The operation.
        op: BlobOp,
        /// The relative key (for `list`, the prefix).
        key: String,
    },
    /// The store could not be reached or answered with a transient failure (connection
    /// error, HTTP 5xx, throttling). Retrying may succeed; for writes the outcome is unknown.
    #[error("blob {op} {key:?}: store unavailable: {message}")]
    Unavailable {
        /// The operation.
        op: BlobOp,
        /// The relative key (for `list`, the prefix).
        key: String,
        /// What the transport or server said.
        message: String,
    },
    /// A failure that retrying will not fix: a local disk error, access denied, a missing
    /// bucket, a malformed response.
    #[error("blob {op} {key:?}: {message}")]
    Io {
        /// The operation.
        op: BlobOp,
        /// The relative key (for `list`, the prefix).
        key: String,
        /// What went wrong.
        message: String,
    },
    /// The store cannot be built from its location or configuration.
    #[error("blob store configuration: {0}")]
    Config(String),
}

impl BlobError {
    /// A stable code for this kind of error, for clients, metrics and tests.
    pub fn code(&self) -> &'static str {
        match self {
            BlobError::NotFound { .. } => "BLOB_NOT_FOUND",
            BlobError::AlreadyExists { .. } => "BLOB_ALREADY_EXISTS",
            BlobError::InvalidKey { .. } => "BLOB_INVALID_KEY",
            BlobError::Timeout { .. } => "BLOB_TIMEOUT",
            BlobError::Unavailable { .. } => "BLOB_UNAVAILABLE",
            BlobError::Io { .. } => "BLOB_IO",
            BlobError::Config(_) => "BLOB_CONFIG",
        }
    }

    /// Whether the same call may succeed if tried again ([`Timeout`](BlobError::Timeout)
    /// and [`Unavailable`](BlobError::Unavailable)). A retried `put_new` whose first attempt
    /// actually landed gets [`AlreadyExists`](BlobError::AlreadyExists): callers that retry
    /// writes must accept that as success when the body is theirs.
    pub fn is_retryable(&self) -> bool {
        match self {
            BlobError::Timeout { .. } | BlobError::Unavailable { .. } => true,
            BlobError::NotFound { .. }
            | BlobError::AlreadyExists { .. }
            | BlobError::InvalidKey { .. }
            | BlobError::Io { .. }
            | BlobError::Config(_) => false,
        }
    }

    /// Builds an [`InvalidKey`](BlobError::InvalidKey).
    pub(crate) fn invalid_key(key: &str, reason: impl Into<String>) -> Self {
        BlobError::InvalidKey {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Io`](BlobError::Io).
    pub(crate) fn io(op: BlobOp, key: &str, message: impl fmt::Display) -> Self {
        BlobError::Io {
            op,
            key: key.to_owned(),
            message: message.to_string(),
        }
    }

    /// Builds an [`Unavailable`](BlobError::Unavailable).
    pub(crate) fn unavailable(op: BlobOp, key: &str, message: impl fmt::Display) -> Self {
        BlobError::Unavailable {
            op,
            key: key.to_owned(),
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_retryability_is_as_documented() {
        let all = [
            BlobError::NotFound { key: "k".into() },
            BlobError::AlreadyExists { key: "k".into() },
            BlobError::invalid_key("k", "r"),
            BlobError::Timeout {
                op: BlobOp::Get,
                key: "k".into(),
            },
            BlobError::unavailable(BlobOp::Get, "k", "m"),
            BlobError::io(BlobOp::Get, "k", "m"),
            BlobError::Config("c".into()),
        ];
        let mut codes: Vec<_> = all.iter().map(BlobError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        let retryable: Vec<_> = all
            .iter()
            .filter(|e| e.is_retryable())
            .map(BlobError::code)
            .collect();
        assert_eq!(retryable, ["BLOB_TIMEOUT", "BLOB_UNAVAILABLE"]);
    }

    #[test]
    fn op_index_matches_all() {
        for (i, op) in BlobOp::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
        }
    }
}
