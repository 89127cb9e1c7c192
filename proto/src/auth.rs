//! Access tokens on the wire: their text form and the `authorization`
//! header that carries them.
//!
//! A token reads `nokv_<id>_<secret>`: 16 hex digits of id, then 64 of
//! secret (32 random bytes). Whoever makes one (`nokv auth token create`,
//! `nokv auth token generate`) keeps the secret; the cluster stores only
//! its SHA-256 (`nokv_holt::auth`). A request carries it as
//! `authorization: Bearer nokv_...`.
//!
//! [`Token`] never prints its secret: `Debug` and `Display` show the id
//! only, so a token cannot leak into logs or error messages by accident;
//! [`Token::reveal`] is the one way to get the text back.

use std::fmt;

use sha2::{Digest, Sha256};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

/// The metadata key of the header.
pub const AUTHORIZATION: &str = "authorization";
const PREFIX: &str = "nokv_";
const SCHEME: &str = "Bearer ";

/// Why a token's text was refused. Never holds the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a token reads nokv_<16 hex digits>_<64 hex digits>")]
    Malformed,
    #[error("the authorization header is not `Bearer <token>`")]
    BadHeader,
}

/// An access token: its id and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: u64,
    secret: [u8; 32],
}

impl Token {
    /// A token from its parts (the caller draws the secret at random).
    pub fn new(id: u64, secret: [u8; 32]) -> Token {
        Token { id, secret }
    }

    /// Reads `nokv_<id>_<secret>` (surrounding whitespace ignored, so a
    /// token file may end with a newline).
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let rest = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenError::Malformed)?;
        let (id, secret) = rest.split_once('_').ok_or(TokenError::Malformed)?;
        if id.len() != 16 || secret.len() != 64 {
            return Err(TokenError::Malformed);
        }
        let id = u64::from_str_radix(id, 16).map_err(|_| TokenError::Malformed)?;
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = secret.get(2 * i..2 * i + 2).ok_or(TokenError::Malformed)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| TokenError::Malformed)?;
        }
        // `from_str_radix` takes a leading '+': only hex digits are a token.
        if !rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'_') {
            return Err(TokenError::Malformed);
        }
        Ok(Token { id, secret: bytes })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// SHA-256 of the secret: what the cluster stores and compares.
    pub fn secret_sha256(&self) -> [u8; 32] {
        Sha256::digest(self.secret).into()
    }

    /// The token's text, secret included: for the one place that shows
    /// it to its owner, and for the header.
    pub fn reveal(&self) -> String {
        let mut text = format!("{PREFIX}{:016x}_", self.id);
        for b in self.secret {
            text.push_str(&format!("{b:02x}"));
        }
        text
    }

    /// The `authorization` header's value.
    pub fn header_value(&self) -> AsciiMetadataValue {
        // Hex digits, '_' and "Bearer ": always valid header text.
        format!("{SCHEME}{}", self.reveal())
            .parse()
            .unwrap_or_else(|_| AsciiMetadataValue::from_static(""))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({:016x}, secret hidden)", self.id)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token {:016x}", self.id)
    }
}

/// The token a request carries, if any.
pub fn bearer_token(metadata: &MetadataMap) -> Result<Option<Token>, TokenError> {
    let Some(value) = metadata.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| TokenError::BadHeader)?;
    let token = text.strip_prefix(SCHEME).ok_or(TokenError::BadHeader)?;
    Token::parse(token).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_through_text_and_header() {
        let token = Token::new(0x1234_5678_9abc_def0, [0xa5; 32]);
        let text = token.reveal();
        assert_eq!(text.len(), 5 + 16 + 1 + 64);
        assert_eq!(Token::parse(&text), Ok(token.clone()));
        assert_eq!(Token::parse(&format!("{text}\n")), Ok(token.clone()));
        let mut meta = MetadataMap::new();
        meta.insert(AUTHORIZATION, token.header_value());
        assert_eq!(bearer_token(&meta), Ok(Some(token.clone())));
        assert_eq!(bearer_token(&MetadataMap::new()), Ok(None));
        assert_ne!(token.secret_sha256(), [0xa5; 32]);
    }

    #[test]
    fn the_secret_never_prints() {
        let token = Token::new(7, [0xee; 32]);
        for shown in [format!("{token:?}"), format!("{token}")] {
            assert!(!shown.contains("eeee"), "{shown}");
            assert!(shown.contains("0000000000000007"), "{shown}");
        }
    }

    #[test]
    fn malformed_tokens_and_headers_are_refused() {
        let good = Token::new(1, [1; 32]).reveal();
        for bad in [
            "",
            "nokv_",
            "xokv_0000000000000001_",
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.replace("nokv_0", "nokv_+"),
            &good.replace("01", "0g"),
        ] {
            assert_eq!(Token::parse(bad), Err(TokenError::Malformed), "{bad:?}");
        }
        let mut meta = MetadataMap::new();
        meta.insert(AUTHORIZATION, AsciiMetadataValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&meta), Err(TokenError::BadHeader));
    }
}
