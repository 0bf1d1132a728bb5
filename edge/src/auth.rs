//! The caller's API key: `Authorization: Bearer <key>`, format and checksum checked offline.
//!
//! This is a filter, not authentication: the checksum is public (a CRC), so anyone can make a
//! well-formed key. Only the origin knows whether a key exists; the edge's job is to keep typos,
//! junk and missing keys away from it without a round trip.

use allot_shared::{ApiError, ApiKey, ApiKeyError, ErrorCode};

/// Longest `Authorization` value looked at (a key is under 100 characters).
const MAX_AUTHORIZATION_LEN: usize = 512;

/// The API key from an `Authorization` header value, or `401 UNAUTHORIZED`.
pub fn api_key(authorization: Option<&str>) -> Result<ApiKey, ApiError> {
    let unauthorized = |m: &str| ApiError::new(ErrorCode::Unauthorized, m);
    let value = authorization
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| unauthorized("an API key is required: send the header Authorization: Bearer <API key>"))?;
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(unauthorized("the API key is malformed"));
    }
    let (scheme, key) =
        value.split_once(' ').ok_or_else(|| unauthorized("the Authorization header must be Bearer <API key>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized("the Authorization header must be Bearer <API key>"));
    }
    ApiKey::parse(key.trim()).map_err(|e| match e {
        ApiKeyError::Malformed => unauthorized("the API key is malformed"),
        ApiKeyError::BadChecksum => unauthorized("the API key's checksum does not match"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_shared::Region;

    fn key() -> String {
        ApiKey::new(Region::parse("eu").unwrap(), "AbCdEfGh12345678", "s3cr3tS3cr3tS3cr3tS3cr3tS3cr3t00")
            .unwrap()
            .expose()
    }

    #[test]
    fn accepts_bearer_keys() {
        let k = key();
        for header in [format!("Bearer {k}"), format!("bearer  {k} "), format!("BEARER {k}")] {
            let parsed = api_key(Some(&header)).unwrap();
            assert_eq!(parsed.key_id(), "AbCdEfGh12345678");
            assert_eq!(parsed.region().as_str(), "eu");
        }
    }

    #[test]
    fn refuses_everything_else_with_401() {
        let k = key();
        let mut typo = k.clone();
        typo.replace_range(20..21, if &k[20..21] == "a" { "b" } else { "a" });
        for header in [
            None,
            Some(String::new()),
            Some(k.clone()),
            Some(format!("Basic {k}")),
            Some("Bearer ".to_owned()),
            Some("Bearer allot_eu_x".to_owned()),
            Some(format!("Bearer {typo}")),
            Some(format!("Bearer {}", "a".repeat(600))),
        ] {
            let err = api_key(header.as_deref()).unwrap_err();
            assert_eq!(err.code, ErrorCode::Unauthorized, "{header:?}");
            assert!(!err.message.contains("s3cr3t"));
        }
        assert!(api_key(Some(&format!("Bearer {typo}"))).unwrap_err().message.contains("checksum"));
    }
}
