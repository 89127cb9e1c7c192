//! The gateway's errors: each has a stable code, an HTTP status, and a
//! message that tells an agent what to do instead.

use nokv_client::ClientError;
use nokv_fields::ParseError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// An argument is malformed or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// A predicate, sort, projection or facet names a field no entry has
    /// and that is not built in.
    #[error("{0}")]
    UnknownField(String),
    /// A value's type does not fit the operator (a range on a bool, `in`
    /// without an array, ...).
    #[error("{0}")]
    WrongType(String),
    /// A limit above the verb's maximum, a pattern too long, a body too
    /// large to parse.
    #[error("{0}")]
    LimitExceeded(String),
    /// A structured read of more records than one call may return.
    #[error("{0}")]
    TooManyRecords(String),
    /// A cursor that does not belong to this query, or is malformed.
    #[error("{0}")]
    BadCursor(String),
    /// An evidence URI that does not parse.
    #[error("{0}")]
    BadUri(String),
    /// A query whose subtree has more entries than one call may scan.
    #[error("{0}")]
    ScanLimit(String),
    /// The path (or the path at that snapshot) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A file where a directory is needed, or the other way round.
    #[error("{0}")]
    WrongKind(String),
    /// A cited generation is no longer kept (replaced, and no pin holds it).
    #[error("{0}")]
    Gone(String),
    /// A write tool while the gateway runs without `--allow-writes`.
    #[error("{0}")]
    WritesDisabled(String),
    /// `POST /v1/<verb>` with a verb that does not exist.
    #[error("{0}")]
    UnknownVerb(String),
    /// A read call that did not finish within the gateway's call timeout.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The cluster or the object store cannot answer now; retry.
    #[error("{0}")]
    Unavailable(String),
    /// A write whose outcome is unknown (it may or may not have applied).
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The cluster refused the gateway's credentials (its token is missing,
    /// unknown, revoked, or lacks the role the call needs).
    #[error("{0}")]
    Forbidden(String),
    /// A namespace error from the cluster (EEXIST, ENOTEMPTY, ...).
    #[error("{message}")]
    Fs { code: String, message: String },
    /// A bug or an integrity failure.
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    /// A stable code clients and tests match on.
    pub fn code(&self) -> &str {
        match self {
            GatewayError::InvalidArgument(_) => "invalid_argument",
            GatewayError::UnknownField(_) => "unknown_field",
            GatewayError::WrongType(_) => "wrong_type",
            GatewayError::LimitExceeded(_) => "limit_exceeded",
            GatewayError::TooManyRecords(_) => "too_many_records",
            GatewayError::BadCursor(_) => "bad_cursor",
            GatewayError::BadUri(_) => "bad_uri",
            GatewayError::ScanLimit(_) => "scan_limit",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::WrongKind(_) => "wrong_kind",
            GatewayError::Gone(_) => "generation_gone",
            GatewayError::WritesDisabled(_) => "writes_disabled",
            GatewayError::UnknownVerb(_) => "unknown_verb",
            GatewayError::Unavailable(_) => "unavailable",
            GatewayError::OutcomeUnknown(_) => "outcome_unknown",
            GatewayError::DeadlineExceeded(_) => "deadline_exceeded",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::Fs { code, .. } => code,
            GatewayError::Internal(_) => "internal",
        }
    }

    /// The HTTP status of `POST /v1/<verb>` answering with this error.
    pub fn http_status(&self) -> u16 {
        match self {
            GatewayError::InvalidArgument(_)
            | GatewayError::UnknownField(_)
            | GatewayError::WrongType(_)
            | GatewayError::BadCursor(_)
            | GatewayError::BadUri(_)
            | GatewayError::WrongKind(_) => 400,
            GatewayError::WritesDisabled(_) | GatewayError::Forbidden(_) => 403,
            GatewayError::NotFound(_) | GatewayError::UnknownVerb(_) => 404,
            GatewayError::Fs { .. } => 409,
            GatewayError::Gone(_) => 410,
            GatewayError::LimitExceeded(_) => 413,
            GatewayError::TooManyRecords(_) | GatewayError::ScanLimit(_) => 422,
            GatewayError::Internal(_) => 500,
            GatewayError::Unavailable(_) => 503,
            GatewayError::OutcomeUnknown(_) | GatewayError::DeadlineExceeded(_) => 504,
        }
    }

    /// The JSON body an error is answered with.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } })
    }
}

impl From<ClientError> for GatewayError {
    fn from(e: ClientError) -> GatewayError {
        match e {
            ClientError::Fs { code, message, .. } if code == "ENOENT" => {
                GatewayError::NotFound(message)
            }
            ClientError::Fs { code, message, .. } if code == "ENOTDIR" || code == "EISDIR" => {
                GatewayError::WrongKind(message)
            }
            ClientError::Fs { code, message, .. } => GatewayError::Fs { code, message },
            ClientError::InvalidArgument(m) => GatewayError::InvalidArgument(m),
            ClientError::Unknown(m) => {
                GatewayError::OutcomeUnknown(format!("outcome unknown: {m}"))
            }
            ClientError::Unavailable(m) => {
                GatewayError::Unavailable(format!("cluster unavailable: {m}"))
            }
            ClientError::Store(m) => GatewayError::Unavailable(format!("object store: {m}")),
            other @ (ClientError::Unauthenticated(_) | ClientError::PermissionDenied(_)) => {
                GatewayError::Forbidden(other.to_string())
            }
            ClientError::Integrity(m) => {
                GatewayError::Internal(format!("integrity check failed: {m}"))
            }
            other @ (ClientError::CursorExpired { .. }
            | ClientError::StaleMap { .. }
            | ClientError::StaleEpoch { .. }
            | ClientError::WrongShard { .. }
            | ClientError::UnknownShard(_)
            | ClientError::ControlPlane { .. }) => GatewayError::Unavailable(other.to_string()),
            other @ (ClientError::Protocol(_)
            | ClientError::Server(_)
            | ClientError::AlreadyInitialized(_)
            | ClientError::Output { .. }) => GatewayError::Internal(other.to_string()),
        }
    }
}

impl From<ParseError> for GatewayError {
    fn from(e: ParseError) -> GatewayError {
        match e {
            ParseError::LimitExceeded(m) => GatewayError::LimitExceeded(m),
            ParseError::Invalid(m) => GatewayError::InvalidArgument(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_fields::structured::{parse, Format, MAX_PARSE_BYTES};

    #[test]
    fn parse_errors_keep_their_codes() {
        let e = GatewayError::from(parse(Format::Json, b"{").expect_err("not JSON"));
        assert_eq!((e.code(), e.http_status()), ("invalid_argument", 400));
        assert!(
            e.to_string().starts_with("JSON: not valid JSON at line 1"),
            "{e}"
        );
        let big = vec![b' '; MAX_PARSE_BYTES + 1];
        let e = GatewayError::from(parse(Format::Json, &big).expect_err("too big"));
        assert_eq!((e.code(), e.http_status()), ("limit_exceeded", 413));
    }
}
