//! The caller's `Authorization` and `Idempotency-Key`, read by one set of rules at the edge and
//! at the origin, so both give the same answer to the same headers.
//!
//! A field sent twice reaches the edge joined with `", "` (the fetch `Headers` API) and reaches the
//! origin as two values, which it joins the same way ([`join`]). Neither an API key nor an
//! idempotency key may contain a comma, so a comma means "sent twice" (or an ambiguous list)
//! and is refused on both sides: taking the first value would let two layers disagree about
//! which key a request was made under.

use crate::api_key::{ApiKey, ApiKeyError};
use crate::error::{ApiError, ErrorCode};
use crate::ident::validate_idempotency_key;
use crate::operator_token::{OperatorToken, OperatorTokenError};

/// Longest `Authorization` value looked at (a key is under 100 characters).
pub const MAX_AUTHORIZATION_LEN: usize = 512;

/// Join a field's values as the fetch `Headers` API does: `", "` between values.
pub fn join<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut out: Option<String> = None;
    for v in values {
        match &mut out {
            None => out = Some(v.to_owned()),
            Some(s) => {
                s.push_str(", ");
                s.push_str(v);
            }
        }
    }
    out
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

/// The credential of an `Authorization: Bearer <credential>` value (scheme case-insensitive,
/// RFC 9110); `what` names the credential in the `401 UNAUTHORIZED` messages.
pub fn bearer<'a>(authorization: Option<&'a str>, what: &str) -> Result<&'a str, ApiError> {
    let value = authorization.map(str::trim).filter(|v| !v.is_empty()).ok_or_else(|| {
        unauthorized(&format!("an {what} is required: send the header Authorization: Bearer <{what}>"))
    })?;
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(unauthorized(&format!("the {what} is malformed")));
    }
    if value.contains(',') {
        return Err(unauthorized(&format!("send exactly one Authorization header, with one {what}")));
    }
    let (scheme, credential) = value
        .split_once(' ')
        .ok_or_else(|| unauthorized(&format!("the Authorization header must be Bearer <{what}>")))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized(&format!("the Authorization header must be Bearer <{what}>")));
    }
    Ok(credential.trim())
}

/// The API key of an `Authorization: Bearer <key>` value, format and checksum checked;
/// otherwise `401 UNAUTHORIZED`.
pub fn api_key(authorization: Option<&str>) -> Result<ApiKey, ApiError> {
    ApiKey::parse(bearer(authorization, "API key")?).map_err(|e| match e {
        ApiKeyError::Malformed => unauthorized("the API key is malformed"),
        ApiKeyError::BadChecksum => unauthorized("the API key's checksum does not match"),
    })
}

/// The operator token of an `Authorization: Bearer <token>` value, format and checksum checked;
/// otherwise `401 UNAUTHORIZED`.
pub fn operator_token(authorization: Option<&str>) -> Result<OperatorToken, ApiError> {
    OperatorToken::parse(bearer(authorization, "operator token")?).map_err(|e| match e {
        OperatorTokenError::Malformed => unauthorized("the operator token is malformed"),
        OperatorTokenError::BadChecksum => unauthorized("the operator token's checksum does not match"),
    })
}

/// The `Idempotency-Key` of a POST: `400 IDEMPOTENCY_KEY_REQUIRED` when absent,
/// `400 VALIDATION_FAILED` when malformed or sent more than once.
pub fn idempotency_key(value: Option<&str>) -> Result<&str, ApiError> {
    let key = value
        .ok_or_else(|| ApiError::new(ErrorCode::IdempotencyKeyRequired, "an Idempotency-Key header is required"))?;
    if key.contains(',') {
        return Err(ApiError::validation("Idempotency-Key", "must be sent once, as one value without ','"));
    }
    validate_idempotency_key(key).map_err(|r| ApiError::validation("Idempotency-Key", r))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Region;

    fn key() -> String {
        ApiKey::new(Region::parse("eu").unwrap(), "AbCdEfGh12345678", "s3cr3tS3cr3tS3cr3tS3cr3tS3cr3t00")
            .unwrap()
            .expose()
    }

    #[test]
    fn joins_like_fetch() {
        assert_eq!(join([]), None);
        assert_eq!(join(["a"]).as_deref(), Some("a"));
        assert_eq!(join(["a", "b", "c"]).as_deref(), Some("a, b, c"));
    }

    #[test]
    fn accepts_bearer_in_any_case() {
        let k = key();
        for header in [format!("Bearer {k}"), format!("bearer  {k} "), format!("BEARER {k}"), format!("bEaReR {k}")] {
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
            Some(format!("Bearer {k}, Bearer {k}")),
        ] {
            let err = api_key(header.as_deref()).unwrap_err();
            assert_eq!(err.code, ErrorCode::Unauthorized, "{header:?}");
            assert!(!err.message.contains("s3cr3t"));
        }
        assert!(api_key(Some(&format!("Bearer {typo}"))).unwrap_err().message.contains("checksum"));
        let twice = join([format!("Bearer {k}").as_str(), "Bearer x"]).unwrap();
        assert!(api_key(Some(&twice)).unwrap_err().message.contains("exactly one"));
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(idempotency_key(Some("order-1")).unwrap(), "order-1");
        assert_eq!(idempotency_key(None).unwrap_err().code, ErrorCode::IdempotencyKeyRequired);
        for bad in ["has space", "", "a,b", "a, b"] {
            let err = idempotency_key(Some(bad)).unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationFailed, "{bad}");
            assert_eq!(err.details.unwrap()["field"], "Idempotency-Key");
        }
        let twice = join(["k1", "k2"]).unwrap();
        assert!(idempotency_key(Some(&twice)).unwrap_err().message.contains("sent once"));
    }
}
