//! Access tokens: create, revoke and list them (an admin's calls; shard 0
//! keeps the table, so they go to its leader).
//!
//! [`Client::create_token`] draws the id and the secret here, sends only
//! the secret's SHA-256, and returns the whole token: the one time anyone
//! sees it.

use nokv_holt::{RequestId, ShardId};
use nokv_proto::auth::Token;
use nokv_proto::convert::request_id_to_bytes;
use nokv_proto::pb;
use rand::Rng;

use crate::client::Client;
use crate::error::ClientError;

pub use nokv_holt::Role as TokenRole;

/// A token as listed (no secret, no hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// The id, as `nokv_<id>_...` shows it (16 hex digits).
    pub id: String,
    pub role: String,
    pub label: String,
    /// When it was created, ns since the Unix epoch.
    pub created_ns: u64,
}

/// Reads a token id as `nokv auth token ls` shows it (16 hex digits), or
/// the whole token (only its id part is used).
pub fn parse_token_id(text: &str) -> Result<u64, ClientError> {
    if let Ok(token) = Token::parse(text) {
        return Ok(token.id());
    }
    let bad = || {
        ClientError::InvalidArgument(
            "a token id is 16 hex digits, as `nokv auth token ls` shows it".into(),
        )
    };
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u64::from_str_radix(text, 16).map_err(|_| bad())
}

impl Client {
    /// Creates a token with `role` and returns it (secret included).
    pub async fn create_token(&self, role: TokenRole, label: &str) -> Result<Token, ClientError> {
        nokv_holt::auth::validate_token_label(label)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let token = generate_token();
        let request = pb::CreateTokenRequest {
            request_id: request_id_to_bytes(RequestId(rand::random::<u128>())),
            id: token.id(),
            secret_sha256: token.secret_sha256().to_vec(),
            role: role.to_string(),
            label: label.to_string(),
        };
        self.for_shard(ShardId(0))
            .with_retries(true, true, |mut stub| {
                let request = request.clone();
                async move { stub.create_token(request).await.map(drop) }
            })
            .await?;
        Ok(token)
    }

    /// Revokes token `id`: calls carrying it are refused from then on.
    pub async fn revoke_token(&self, id: u64) -> Result<(), ClientError> {
        let request = pb::RevokeTokenRequest {
            request_id: request_id_to_bytes(RequestId(rand::random::<u128>())),
            id,
        };
        self.for_shard(ShardId(0))
            .with_retries(true, true, |mut stub| {
                let request = request.clone();
                async move { stub.revoke_token(request).await.map(drop) }
            })
            .await
    }

    /// Every token of the cluster, by id.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        let listed = self
            .for_shard(ShardId(0))
            .with_retries(false, true, |mut stub| async move {
                stub.list_tokens(pb::ListTokensRequest {})
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
        Ok(listed
            .tokens
            .into_iter()
            .map(|t| TokenInfo {
                id: format!("{:016x}", t.id),
                role: t.role,
                label: t.label,
                created_ns: t.created_ns,
            })
            .collect())
    }
}

/// A new token: a random id and 32 random bytes of secret.
pub fn generate_token() -> Token {
    let mut rng = rand::rng();
    let mut secret = [0u8; 32];
    rng.fill(&mut secret);
    Token::new(rng.random(), secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_from_the_listing_or_the_token() {
        let token = generate_token();
        assert_eq!(parse_token_id(&token.reveal()).ok(), Some(token.id()));
        assert_eq!(
            parse_token_id(&format!("{:016x}", token.id())).ok(),
            Some(token.id())
        );
        assert!(parse_token_id("12").is_err());
        assert!(parse_token_id("+123456789abcdef").is_err());
        assert_ne!(generate_token(), generate_token());
    }
}
