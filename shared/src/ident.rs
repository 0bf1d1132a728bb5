//! Identifier rules: product ids, idempotency keys, client references, request ids.

/// Longest product id.
pub const MAX_PRODUCT_ID_LEN: usize = 64;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Longest client reference.
pub const MAX_CLIENT_REFERENCE_LEN: usize = 128;
/// Longest request id accepted from upstream.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Check a product id: 1–64 of `A-Z a-z 0-9 . _ : -`, starting with a letter or digit.
pub fn validate_product_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_PRODUCT_ID_LEN {
        return Err(format!("must be at most {MAX_PRODUCT_ID_LEN} characters"));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit".into());
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
        return Err("may contain only letters, digits, '.', '_', ':' and '-'".into());
    }
    Ok(())
}

/// Check an `Idempotency-Key`: 1–255 visible ASCII characters (0x21–0x7E).
pub fn validate_idempotency_key(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!("must be at most {MAX_IDEMPOTENCY_KEY_LEN} characters"));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII characters only".into());
    }
    Ok(())
}

/// Check a client reference: 1–128 characters, no control characters.
pub fn validate_client_reference(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty when present".into());
    }
    if s.chars().count() > MAX_CLIENT_REFERENCE_LEN {
        return Err(format!("must be at most {MAX_CLIENT_REFERENCE_LEN} characters"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// Whether an upstream request id is safe to adopt and echo (1–128 of `A-Z a-z 0-9 - _ .`).
pub fn is_valid_request_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_REQUEST_ID_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn product_ids() {
        for ok in ["amazon-us", "A1", "steam:eu.wallet_50", &"x".repeat(64)] {
            assert!(validate_product_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(validate_product_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_keys() {
        assert!(validate_idempotency_key("order-123:retry").is_ok());
        assert!(validate_idempotency_key(&"k".repeat(255)).is_ok());
        for bad in ["", "has space", "tab\t", "ünï", &"k".repeat(256)] {
            assert!(validate_idempotency_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_references_and_request_ids() {
        assert!(validate_client_reference("order #42 für Anna").is_ok());
        assert!(validate_client_reference("a\nb").is_err());
        assert!(validate_client_reference(&"é".repeat(129)).is_err());
        assert!(is_valid_request_id("8a3f-ray.01_x"));
        assert!(!is_valid_request_id("a b"));
    }

    proptest! {
        #[test]
        fn validators_never_panic(s in "\\PC*") {
            let _ = validate_product_id(&s);
            let _ = validate_idempotency_key(&s);
            let _ = validate_client_reference(&s);
            let _ = is_valid_request_id(&s);
        }
    }
}
