//! Access tokens: which callers the cluster accepts, and with which role.
//!
//! A token is `nokv_<id>_<secret>` (see `nokv_proto::auth`); the client
//! that makes one keeps the secret and sends only its SHA-256, so neither
//! the log nor an image ever holds a secret. Shard 0 keeps the table
//! ([`Op::CreateToken`], [`Op::RevokeToken`]); every node checks a
//! caller's token against its replica of it (see `meta-node`'s `auth`).
//!
//! Roles are ordered: [`Role::Admin`] may do what [`Role::Write`] may,
//! which may do what [`Role::Read`] may.
//!
//! [`Op::CreateToken`]: crate::Op::CreateToken
//! [`Op::RevokeToken`]: crate::Op::RevokeToken

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::FsError;

/// Most tokens one cluster keeps.
pub const MAX_TOKENS: usize = 10_000;
/// Longest label of a token, in bytes.
pub const MAX_TOKEN_LABEL: usize = 256;

/// What a token lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Reads and watches.
    Read,
    /// Reads and writes of the namespace and its bodies.
    Write,
    /// Everything, including tokens, cluster and membership changes, GC
    /// that ignores the grace period, backups and watch retention.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" | "read-only" => Ok(Role::Read),
            "write" | "read-write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected read (read-only), write (read-write) or admin"
            )),
        }
    }
}

/// One token as shard 0 keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub role: Role,
    /// SHA-256 of the token's secret part.
    pub secret_sha256: [u8; 32],
    /// What the token is for, as its creator described it.
    pub label: String,
    /// When it was created (the leader's clock, ns since the epoch).
    pub created_ns: u64,
}

/// A token as listed: everything but the hash of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: u64,
    pub role: Role,
    pub label: String,
    pub created_ns: u64,
}

/// A label: at most [`MAX_TOKEN_LABEL`] bytes, no control characters.
pub fn validate_token_label(label: &str) -> Result<(), FsError> {
    if label.len() > MAX_TOKEN_LABEL {
        return Err(FsError::InvalidArgument(format!(
            "a token label has at most {MAX_TOKEN_LABEL} bytes, this one {}",
            label.len()
        )));
    }
    if label.chars().any(char::is_control) {
        return Err(FsError::InvalidArgument(
            "a token label may not hold control characters".into(),
        ));
    }
    Ok(())
}

/// Equality of two hashes in time independent of where they differ.
pub fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_order() {
        assert_eq!("read-only".parse::<Role>(), Ok(Role::Read));
        assert_eq!("read-write".parse::<Role>(), Ok(Role::Write));
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!("root".parse::<Role>().is_err());
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
    }

    #[test]
    fn labels_are_bounded() {
        assert!(validate_token_label("ci deploys").is_ok());
        assert!(validate_token_label(&"x".repeat(MAX_TOKEN_LABEL + 1)).is_err());
        assert!(validate_token_label("a\nb").is_err());
    }

    #[test]
    fn hashes_compare_whole() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(same_hash(&a, &b));
        b[31] ^= 1;
        assert!(!same_hash(&a, &b));
    }
}
