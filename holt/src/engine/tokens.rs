//! The token table of shard 0 (see [`crate::auth`]).

use super::{Applied, Holt, Outcome, Stamp};
use crate::auth::{same_hash, Role, TokenInfo, TokenRecord, MAX_TOKENS};
use crate::error::FsError;
use crate::types::ShardId;

impl Holt {
    pub(super) fn create_token(
        &mut self,
        stamp: Stamp,
        id: u64,
        secret_sha256: [u8; 32],
        role: Role,
        label: &str,
    ) -> Outcome {
        if self.shard != ShardId(0) {
            return Err(FsError::InvalidArgument(format!(
                "tokens live in shard 0, not in shard {}",
                self.shard.0
            )));
        }
        if self.tokens.contains_key(&id) {
            return Err(FsError::AlreadyExists(format!("token {id:016x}")));
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(FsError::NoSpace(format!(
                "the cluster keeps at most {MAX_TOKENS} tokens: revoke some first"
            )));
        }
        self.tokens.insert(
            id,
            TokenRecord {
                role,
                secret_sha256,
                label: label.to_string(),
                created_ns: stamp.time_ns,
            },
        );
        Ok(Applied::Done)
    }

    pub(super) fn revoke_token(&mut self, id: u64) -> Outcome {
        match self.tokens.remove(&id) {
            Some(_) => Ok(Applied::Done),
            None => Err(FsError::NotFound(format!("token {id:016x}"))),
        }
    }

    /// The role of token `id` if its secret hashes to `secret_sha256`.
    pub fn token_role(&self, id: u64, secret_sha256: &[u8; 32]) -> Option<Role> {
        self.tokens
            .get(&id)
            .filter(|t| same_hash(&t.secret_sha256, secret_sha256))
            .map(|t| t.role)
    }

    /// Every token, by id, without the hashes of their secrets.
    pub fn tokens(&self) -> Vec<TokenInfo> {
        self.tokens
            .iter()
            .map(|(id, t)| TokenInfo {
                id: *id,
                role: t.role,
                label: t.label.clone(),
                created_ns: t.created_ns,
            })
            .collect()
    }

    /// The token table, as the invariant checker and the image need it.
    pub(crate) fn check_tokens(&self) -> Result<(), String> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        if self.shard != ShardId(0) {
            return Err(format!("shard {} holds tokens", self.shard.0));
        }
        if self.tokens.len() > MAX_TOKENS {
            return Err(format!("{} tokens, above {MAX_TOKENS}", self.tokens.len()));
        }
        for (id, t) in &self.tokens {
            crate::auth::validate_token_label(&t.label)
                .map_err(|e| format!("token {id:016x}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::command::{Command, Op};
    use crate::types::{LogIndex, RequestId, ShardId};
    use crate::{Applied, FsError, Holt, HoltConfig, Role};

    fn run(h: &mut Holt, index: u64, op: Op) -> Result<Applied, FsError> {
        h.apply(
            LogIndex(index),
            &Command {
                request_id: RequestId(u128::from(index)),
                epoch: None,
                time_ns: 1_000 + index,
                op,
            },
        )
    }

    fn create(id: u64, role: Role) -> Op {
        Op::CreateToken {
            id,
            secret_sha256: [id as u8; 32],
            role,
            label: format!("token {id}"),
        }
    }

    #[test]
    fn tokens_are_created_checked_listed_and_revoked() {
        let mut h = Holt::new(HoltConfig::default());
        assert_eq!(run(&mut h, 1, create(7, Role::Read)), Ok(Applied::Done));
        assert_eq!(run(&mut h, 2, create(9, Role::Admin)), Ok(Applied::Done));
        assert!(matches!(
            run(&mut h, 3, create(7, Role::Admin)),
            Err(FsError::AlreadyExists(_))
        ));
        assert_eq!(h.token_role(7, &[7; 32]), Some(Role::Read));
        assert_eq!(h.token_role(7, &[9; 32]), None, "wrong secret");
        assert_eq!(h.token_role(8, &[8; 32]), None, "no such token");
        let listed = h.tokens();
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].id, listed[0].created_ns), (7, 1_001));
        // The table is part of the image, and so of every restored replica.
        let back = Holt::decode_image(&h.encode_image()).expect("image");
        assert_eq!(back, h);
        assert_eq!(run(&mut h, 4, Op::RevokeToken { id: 7 }), Ok(Applied::Done));
        assert_eq!(h.token_role(7, &[7; 32]), None, "revoked");
        assert!(matches!(
            run(&mut h, 5, Op::RevokeToken { id: 7 }),
            Err(FsError::NotFound(_))
        ));
    }

    #[test]
    fn only_shard_zero_keeps_tokens_and_labels_are_checked() {
        let mut h = Holt::new(HoltConfig {
            shard: ShardId(3),
            ..HoltConfig::default()
        });
        assert!(matches!(
            run(&mut h, 1, create(7, Role::Read)),
            Err(FsError::InvalidArgument(_))
        ));
        let mut h = Holt::new(HoltConfig::default());
        let bad = Op::CreateToken {
            id: 1,
            secret_sha256: [0; 32],
            role: Role::Write,
            label: "a\u{7}b".into(),
        };
        assert!(matches!(
            run(&mut h, 1, bad),
            Err(FsError::InvalidArgument(_))
        ));
        assert!(h.tokens().is_empty());
    }
}
