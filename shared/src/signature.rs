//! The edge→origin request signature.
//!
//! Header `allot-signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over the canonical string
//! `allot-v1\n<t>\n<METHOD>\n<path and query>\n<hex SHA-256 of the body>`.
//! The origin checks the timestamp against a bounded clock-skew window and compares the MAC
//! in constant time; it may hold several secrets during a rotation.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Default largest accepted difference between the edge's and the origin's clocks.
pub const DEFAULT_MAX_SKEW_SECS: i64 = 60;

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No signature header.
    Missing,
    /// The header is not `t=<int>,v1=<64 hex>`.
    Malformed,
    /// The timestamp is outside the allowed window.
    Stale {
        /// How far the timestamp is from now, in seconds.
        skew_secs: i64,
    },
    /// No configured secret produces this MAC.
    Mismatch,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureError::Missing => f.write_str("the edge signature is missing"),
            SignatureError::Malformed => f.write_str("the edge signature is malformed"),
            SignatureError::Stale { skew_secs } => {
                write!(f, "the edge signature is stale ({skew_secs} s from now)")
            }
            SignatureError::Mismatch => f.write_str("the edge signature does not verify"),
        }
    }
}

impl std::error::Error for SignatureError {}

/// Lower-case hex SHA-256 of a body.
pub fn body_digest_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The exact string that is MACed.
pub fn canonical_string(timestamp: i64, method: &str, path_and_query: &str, body: &[u8]) -> String {
    format!("allot-v1\n{timestamp}\n{}\n{path_and_query}\n{}", method.to_ascii_uppercase(), body_digest_hex(body))
}

fn mac(secret: &[u8], canonical: &str) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(canonical.as_bytes());
    m
}

/// The `allot-signature` header value for a request.
pub fn sign(secret: &[u8], timestamp: i64, method: &str, path_and_query: &str, body: &[u8]) -> String {
    let tag = mac(secret, &canonical_string(timestamp, method, path_and_query, body)).finalize();
    format!("t={timestamp},v1={}", hex::encode(tag.into_bytes()))
}

/// Split a header value into its timestamp and MAC bytes.
pub fn parse_header(value: &str) -> Result<(i64, [u8; 32]), SignatureError> {
    let (t, v1) = value.split_once(',').ok_or(SignatureError::Malformed)?;
    let t = t.trim().strip_prefix("t=").ok_or(SignatureError::Malformed)?;
    let v1 = v1.trim().strip_prefix("v1=").ok_or(SignatureError::Malformed)?;
    if t.is_empty() || t.len() > 12 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::Malformed);
    }
    let ts: i64 = t.parse().map_err(|_| SignatureError::Malformed)?;
    let mut tag = [0u8; 32];
    hex::decode_to_slice(v1, &mut tag).map_err(|_| SignatureError::Malformed)?;
    Ok((ts, tag))
}

/// Verify a request's signature against any of `secrets`, at time `now` (unix seconds).
pub fn verify(
    secrets: &[&[u8]],
    header: Option<&str>,
    now: i64,
    max_skew_secs: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let (ts, tag) = parse_header(header)?;
    let skew = now.saturating_sub(ts);
    if skew.abs() > max_skew_secs {
        return Err(SignatureError::Stale { skew_secs: skew });
    }
    let canonical = canonical_string(ts, method, path_and_query, body);
    // verify_slice compares in constant time.
    let ok = secrets.iter().fold(false, |ok, s| mac(s, &canonical).verify_slice(&tag).is_ok() | ok);
    if ok { Ok(()) } else { Err(SignatureError::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"edge-secret";

    #[test]
    fn signs_and_verifies() {
        let h = sign(SECRET, 1_700_000_000, "post", "/v1/allocations?x=1", b"{}");
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(verify(&[SECRET], Some(&h), 1_700_000_030, 60, "POST", "/v1/allocations?x=1", b"{}"), Ok(()));
        // Rotation: an old and a new secret both configured.
        assert_eq!(
            verify(&[b"new", SECRET], Some(&h), 1_700_000_000, 60, "POST", "/v1/allocations?x=1", b"{}"),
            Ok(())
        );
    }

    #[test]
    fn refuses_tampering_staleness_and_junk() {
        let h = sign(SECRET, 1_000, "POST", "/v1/allocations", b"{\"a\":1}");
        let v = |hdr: Option<&str>, now, m, p, b: &[u8]| verify(&[SECRET], hdr, now, 60, m, p, b);
        assert_eq!(v(Some(&h), 1_000, "POST", "/v1/allocations", b"{\"a\":2}"), Err(SignatureError::Mismatch));
        assert_eq!(v(Some(&h), 1_000, "GET", "/v1/allocations", b"{\"a\":1}"), Err(SignatureError::Mismatch));
        assert_eq!(v(Some(&h), 1_000, "POST", "/v1/allocations?q", b"{\"a\":1}"), Err(SignatureError::Mismatch));
        assert_eq!(
            v(Some(&h), 1_061, "POST", "/v1/allocations", b"{\"a\":1}"),
            Err(SignatureError::Stale { skew_secs: 61 })
        );
        assert_eq!(
            v(Some(&h), 939, "POST", "/v1/allocations", b"{\"a\":1}"),
            Err(SignatureError::Stale { skew_secs: -61 })
        );
        assert_eq!(v(None, 1_000, "POST", "/", b""), Err(SignatureError::Missing));
        for junk in ["", "t=1", "t=x,v1=00", "v1=00,t=1", "t=1,v1=zz", "t=-1,v1=00"] {
            assert_eq!(v(Some(junk), 1_000, "POST", "/", b""), Err(SignatureError::Malformed), "{junk}");
        }
        let other = sign(b"other", 1_000, "POST", "/v1/allocations", b"{\"a\":1}");
        assert_eq!(v(Some(&other), 1_000, "POST", "/v1/allocations", b"{\"a\":1}"), Err(SignatureError::Mismatch));
    }

    proptest! {
        #[test]
        fn verify_never_panics(h in "\\PC*", now in any::<i64>()) {
            let _ = verify(&[SECRET], Some(&h), now, 60, "POST", "/", b"");
        }

        #[test]
        fn round_trips(ts in 0i64..4_000_000_000, path in "/[a-z0-9/?=&]{0,40}", body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let h = sign(SECRET, ts, "POST", &path, &body);
            prop_assert_eq!(verify(&[SECRET], Some(&h), ts, 60, "POST", &path, &body), Ok(()));
        }
    }
}
