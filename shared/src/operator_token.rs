//! The operator token format: `allotop_<token id>_<secret><checksum>`.
//!
//! Like API keys ([`crate::api_key`]), the last six characters are a base62 CRC32 of everything
//! before them, so typos are refused without a lookup. The prefix differs from an API key's, so
//! neither can be mistaken for the other. The origin stores only [`OperatorToken::secret_digest`].

use crate::api_key::{CHECKSUM_LEN, KEY_ID_LEN, SECRET_LEN, checksum, domain_digest, is_base62, with_checksum};

/// The fixed prefix of every operator token.
pub const PREFIX: &str = "allotop";

/// A well-formed operator token whose checksum matched.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken {
    token_id: String,
    secret: String,
}

/// Why a string is not a well-formed operator token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorTokenError {
    /// Not of the form `allotop_<token id>_<secret><checksum>`.
    Malformed,
    /// The checksum does not match: a typo or an invented token.
    BadChecksum,
}

impl std::fmt::Display for OperatorTokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OperatorTokenError::Malformed => f.write_str("the operator token is malformed"),
            OperatorTokenError::BadChecksum => f.write_str("the operator token's checksum does not match"),
        }
    }
}

impl std::error::Error for OperatorTokenError {}

// The secret must never reach a log through Debug.
impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorToken").field("token_id", &self.token_id).field("secret", &"<redacted>").finish()
    }
}

impl OperatorToken {
    /// Build a token from its parts; both must be base62 of the right length.
    pub fn new(token_id: &str, secret: &str) -> Result<Self, OperatorTokenError> {
        if !is_base62(token_id, KEY_ID_LEN) || !is_base62(secret, SECRET_LEN) {
            return Err(OperatorTokenError::Malformed);
        }
        Ok(Self { token_id: token_id.to_owned(), secret: secret.to_owned() })
    }

    /// Parse a token and check its format and checksum.
    pub fn parse(s: &str) -> Result<Self, OperatorTokenError> {
        let rest = s.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('_')).ok_or(OperatorTokenError::Malformed)?;
        let (token_id, tail) = rest.split_once('_').ok_or(OperatorTokenError::Malformed)?;
        if !is_base62(tail, SECRET_LEN + CHECKSUM_LEN) {
            return Err(OperatorTokenError::Malformed);
        }
        let (secret, sum) = tail.split_at(SECRET_LEN);
        let token = Self::new(token_id, secret)?;
        if checksum(&token.body()) != sum {
            return Err(OperatorTokenError::BadChecksum);
        }
        Ok(token)
    }

    fn body(&self) -> String {
        format!("{PREFIX}_{}_{}", self.token_id, self.secret)
    }

    /// The public token id (safe to log).
    pub fn token_id(&self) -> &str {
        &self.token_id
    }

    /// The SHA-256 digest of the secret, which is all the origin stores.
    pub fn secret_digest(&self) -> [u8; 32] {
        domain_digest(b"allot-operator-token-v1:", &self.secret)
    }

    /// The full token string, to hand to its operator once.
    pub fn expose(&self) -> String {
        with_checksum(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiKey, Region};

    fn sample() -> OperatorToken {
        OperatorToken::new("AbCdEfGh12345678", "s3cr3tS3cr3tS3cr3tS3cr3tS3cr3t00").unwrap()
    }

    #[test]
    fn exposes_and_parses() {
        let token = sample();
        let text = token.expose();
        assert!(text.starts_with("allotop_AbCdEfGh12345678_"));
        let parsed = OperatorToken::parse(&text).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.secret_digest(), token.secret_digest());
    }

    #[test]
    fn refuses_typos_junk_and_api_keys() {
        let text = sample().expose();
        let mut typo = text.clone().into_bytes();
        let i = typo.len() - 10;
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(OperatorToken::parse(std::str::from_utf8(&typo).unwrap()), Err(OperatorTokenError::BadChecksum));
        let key = ApiKey::new(Region::parse("eu").unwrap(), "AbCdEfGh12345678", "s3cr3tS3cr3tS3cr3tS3cr3tS3cr3t00")
            .unwrap()
            .expose();
        for bad in ["", "allotop_", "allotop_x_y", &key, &text[1..], &format!("{text}x")] {
            assert!(OperatorToken::parse(bad).is_err(), "{bad}");
        }
        assert!(ApiKey::parse(&text).is_err(), "a token is never an API key");
    }

    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", sample()).contains("s3cr3t"));
    }
}
