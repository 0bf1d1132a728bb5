//! The edge→origin request signature.
//!
//! Version 2 (what the edge sends): header `allot-signature: t=<unix seconds>,n=<nonce>,v2=<hex MAC>`,
//! an HMAC-SHA256 over
//! `allot-v2\n<t>\n<nonce>\n<METHOD>\n<path and query>\n<API key id>\n<Idempotency-Key>\n<hex SHA-256 of the body>`.
//! It binds the request to the caller's key and idempotency key, so a captured request cannot be
//! resent under another key, and the nonce makes every attempt's MAC unique, so the origin can
//! refuse a MAC it has seen before (its replay guard) without refusing the edge's own retry.
//!
//! Version 1 (`t=<t>,v1=<hex MAC>` over `allot-v1\n<t>\n<METHOD>\n<path and query>\n<body hash>`)
//! covers neither key; the origin accepts it only during a rotation, behind a setting.
//!
//! Checking is split so the origin can refuse before reading a body: [`Presented::parse`] and
//! [`Presented::check_fresh`] need only the header; [`Presented::verify`] needs the body.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Default largest accepted difference between the edge's and the origin's clocks.
pub const DEFAULT_MAX_SKEW_SECS: i64 = 60;
/// Length of a nonce in hex characters (16 random bytes).
pub const NONCE_HEX_LEN: usize = 32;

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No signature header.
    Missing,
    /// The header is not `t=<int>,n=<32 hex>,v2=<64 hex>` (or `t=<int>,v1=<64 hex>`).
    Malformed,
    /// The timestamp is outside the allowed window.
    Stale {
        /// How far the timestamp is from now, in seconds.
        skew_secs: i64,
    },
    /// A version-1 signature while version 1 is not accepted.
    VersionNotAccepted,
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
            SignatureError::VersionNotAccepted => f.write_str("the edge signature's version (v1) is not accepted"),
            SignatureError::Mismatch => f.write_str("the edge signature does not verify"),
        }
    }
}

impl std::error::Error for SignatureError {}

/// What a signature covers: the parts of a request the origin acts on.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The method (upper-cased when signed).
    pub method: &'a str,
    /// Path and query exactly as sent.
    pub path_and_query: &'a str,
    /// The API key id from `Authorization` (empty when there is none).
    pub key_id: &'a str,
    /// The `Idempotency-Key` (empty when there is none).
    pub idempotency_key: &'a str,
    /// The body, byte for byte.
    pub body: &'a [u8],
}

/// Lower-case hex SHA-256 of a body.
pub fn body_digest_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The exact string a version-2 signature MACs.
pub fn canonical_v2(timestamp: i64, nonce: &str, req: &Signed<'_>) -> String {
    format!(
        "allot-v2\n{timestamp}\n{nonce}\n{}\n{}\n{}\n{}\n{}",
        req.method.to_ascii_uppercase(),
        req.path_and_query,
        req.key_id,
        req.idempotency_key,
        body_digest_hex(req.body)
    )
}

/// The exact string a version-1 signature MACs.
pub fn canonical_v1(timestamp: i64, req: &Signed<'_>) -> String {
    format!(
        "allot-v1\n{timestamp}\n{}\n{}\n{}",
        req.method.to_ascii_uppercase(),
        req.path_and_query,
        body_digest_hex(req.body)
    )
}

fn mac(secret: &[u8], canonical: &str) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(canonical.as_bytes());
    m
}

/// The version-2 `allot-signature` header value. `nonce` must be [`NONCE_HEX_LEN`] hex characters,
/// fresh for every attempt.
pub fn sign(secret: &[u8], timestamp: i64, nonce: &str, req: &Signed<'_>) -> String {
    debug_assert!(is_nonce(nonce), "a nonce is {NONCE_HEX_LEN} hex characters");
    let tag = mac(secret, &canonical_v2(timestamp, nonce, req)).finalize();
    format!("t={timestamp},n={nonce},v2={}", hex::encode(tag.into_bytes()))
}

/// The version-1 header value (what edges sent before version 2; kept for rotations and tests).
pub fn sign_v1(secret: &[u8], timestamp: i64, req: &Signed<'_>) -> String {
    let tag = mac(secret, &canonical_v1(timestamp, req)).finalize();
    format!("t={timestamp},v1={}", hex::encode(tag.into_bytes()))
}

fn is_nonce(s: &str) -> bool {
    s.len() == NONCE_HEX_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A signature header, parsed but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// Unix seconds when the edge signed.
    pub timestamp: i64,
    /// The nonce; `None` for version 1.
    pub nonce: Option<String>,
    /// The MAC.
    pub tag: [u8; 32],
}

impl Presented {
    /// Parse a header value (needs nothing but the header).
    pub fn parse(header: Option<&str>) -> Result<Self, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let parts: Vec<&str> = header.split(',').map(str::trim).collect();
        let (t, nonce, tag) = match parts.as_slice() {
            [t, n, v2] => {
                let n = n.strip_prefix("n=").filter(|n| is_nonce(n)).ok_or(SignatureError::Malformed)?;
                (t, Some(n.to_owned()), v2.strip_prefix("v2=").ok_or(SignatureError::Malformed)?)
            }
            [t, v1] => (t, None, v1.strip_prefix("v1=").ok_or(SignatureError::Malformed)?),
            _ => return Err(SignatureError::Malformed),
        };
        let t = t.strip_prefix("t=").ok_or(SignatureError::Malformed)?;
        if t.is_empty() || t.len() > 12 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignatureError::Malformed);
        }
        let timestamp: i64 = t.parse().map_err(|_| SignatureError::Malformed)?;
        let mut mac = [0u8; 32];
        hex::decode_to_slice(tag, &mut mac).map_err(|_| SignatureError::Malformed)?;
        Ok(Self { timestamp, nonce, tag: mac })
    }

    /// Whether this is a version-1 signature.
    pub fn is_v1(&self) -> bool {
        self.nonce.is_none()
    }

    /// Refuse a timestamp more than `max_skew_secs` from `now` (unix seconds).
    pub fn check_fresh(&self, now: i64, max_skew_secs: i64) -> Result<(), SignatureError> {
        let skew = now.saturating_sub(self.timestamp);
        if skew.abs() > max_skew_secs { Err(SignatureError::Stale { skew_secs: skew }) } else { Ok(()) }
    }

    /// Verify the MAC over `req` against any of `secrets`, in constant time per secret.
    /// A version-1 signature verifies only when `accept_v1`.
    pub fn verify(&self, secrets: &[&[u8]], req: &Signed<'_>, accept_v1: bool) -> Result<(), SignatureError> {
        let canonical = match &self.nonce {
            Some(nonce) => canonical_v2(self.timestamp, nonce, req),
            None if accept_v1 => canonical_v1(self.timestamp, req),
            None => return Err(SignatureError::VersionNotAccepted),
        };
        let ok = secrets.iter().fold(false, |ok, s| mac(s, &canonical).verify_slice(&self.tag).is_ok() | ok);
        if ok { Ok(()) } else { Err(SignatureError::Mismatch) }
    }

    /// The MAC in hex: what the replay guard remembers.
    pub fn tag_hex(&self) -> String {
        hex::encode(self.tag)
    }
}

/// Parse, check freshness and verify in one call.
pub fn verify(
    secrets: &[&[u8]],
    header: Option<&str>,
    now: i64,
    max_skew_secs: i64,
    req: &Signed<'_>,
    accept_v1: bool,
) -> Result<Presented, SignatureError> {
    let presented = Presented::parse(header)?;
    presented.check_fresh(now, max_skew_secs)?;
    presented.verify(secrets, req, accept_v1)?;
    Ok(presented)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"edge-secret";
    const NONCE: &str = "00112233445566778899aabbccddeeff";

    fn req<'a>(method: &'a str, path: &'a str, key_id: &'a str, idem: &'a str, body: &'a [u8]) -> Signed<'a> {
        Signed { method, path_and_query: path, key_id, idempotency_key: idem, body }
    }

    #[test]
    fn signs_and_verifies() {
        let r = req("post", "/v1/allocations?x=1", "KeyId0001", "order-1", b"{}");
        let h = sign(SECRET, 1_700_000_000, NONCE, &r);
        assert!(h.starts_with(&format!("t=1700000000,n={NONCE},v2=")));
        let upper = req("POST", "/v1/allocations?x=1", "KeyId0001", "order-1", b"{}");
        assert!(verify(&[SECRET], Some(&h), 1_700_000_030, 60, &upper, false).is_ok());
        // Rotation: an old and a new secret both configured.
        assert!(verify(&[b"new", SECRET], Some(&h), 1_700_000_000, 60, &upper, false).is_ok());
    }

    #[test]
    fn covers_every_part() {
        let good = req("POST", "/v1/allocations", "KeyId0001", "order-1", b"{\"a\":1}");
        let h = sign(SECRET, 1_000, NONCE, &good);
        let v = |r: &Signed<'_>| verify(&[SECRET], Some(&h), 1_000, 60, r, false).map(|_| ());
        assert_eq!(v(&good), Ok(()));
        for changed in [
            req("POST", "/v1/allocations", "KeyId0001", "order-1", b"{\"a\":2}"),
            req("GET", "/v1/allocations", "KeyId0001", "order-1", b"{\"a\":1}"),
            req("POST", "/v1/allocations?q", "KeyId0001", "order-1", b"{\"a\":1}"),
            req("POST", "/v1/allocations", "KeyId0002", "order-1", b"{\"a\":1}"),
            req("POST", "/v1/allocations", "KeyId0001", "order-2", b"{\"a\":1}"),
            req("POST", "/v1/allocations", "KeyId0001", "", b"{\"a\":1}"),
        ] {
            assert_eq!(v(&changed), Err(SignatureError::Mismatch), "{changed:?}");
        }
        let other_nonce = h.replace(NONCE, "ffffffffffffffffffffffffffffffff");
        assert_eq!(verify(&[SECRET], Some(&other_nonce), 1_000, 60, &good, false), Err(SignatureError::Mismatch));
        let other = sign(b"other", 1_000, NONCE, &good);
        assert_eq!(verify(&[SECRET], Some(&other), 1_000, 60, &good, false), Err(SignatureError::Mismatch));
    }

    #[test]
    fn refuses_staleness_and_junk() {
        let r = req("POST", "/v1/allocations", "k", "i", b"");
        let h = sign(SECRET, 1_000, NONCE, &r);
        let at = |now| verify(&[SECRET], Some(&h), now, 60, &r, false).map(|_| ());
        assert_eq!(at(1_060), Ok(()));
        assert_eq!(at(1_061), Err(SignatureError::Stale { skew_secs: 61 }));
        assert_eq!(at(939), Err(SignatureError::Stale { skew_secs: -61 }));
        assert_eq!(Presented::parse(None), Err(SignatureError::Missing));
        for junk in [
            "",
            "t=1",
            "t=x,v1=00",
            "v1=00,t=1",
            "t=1,v1=zz",
            "t=-1,v1=00",
            "t=1,n=00,v2=00",
            "t=1,n=0011,v2=0011223344556677889900112233445566778899001122334455667788990011",
            "t=1,v2=0011223344556677889900112233445566778899001122334455667788990011",
            "t=1,n=00112233445566778899aabbccddeeff,v1=0011223344556677889900112233445566778899001122334455667788990011",
            "t=1,n=00112233445566778899aabbccddeeff,v2=00,x=1",
        ] {
            assert_eq!(Presented::parse(Some(junk)), Err(SignatureError::Malformed), "{junk}");
        }
    }

    #[test]
    fn version_one_only_when_accepted() {
        let r = req("POST", "/v1/allocations", "KeyId0001", "order-1", b"{}");
        let h = sign_v1(SECRET, 1_000, &r);
        assert_eq!(verify(&[SECRET], Some(&h), 1_000, 60, &r, false), Err(SignatureError::VersionNotAccepted));
        let p = verify(&[SECRET], Some(&h), 1_000, 60, &r, true).unwrap();
        assert!(p.is_v1());
        // Version 1 never covered the keys: that is why it is off by default.
        let other_key = req("POST", "/v1/allocations", "KeyId0002", "order-2", b"{}");
        assert!(verify(&[SECRET], Some(&h), 1_000, 60, &other_key, true).is_ok());
    }

    #[test]
    fn each_nonce_gives_a_different_mac() {
        let r = req("POST", "/v1/allocations", "k", "i", b"{}");
        let a = Presented::parse(Some(&sign(SECRET, 1, NONCE, &r))).unwrap();
        let b = Presented::parse(Some(&sign(SECRET, 1, "ffeeddccbbaa99887766554433221100", &r))).unwrap();
        assert_ne!(a.tag_hex(), b.tag_hex());
        assert_eq!(a.tag_hex().len(), 64);
    }

    proptest! {
        #[test]
        fn parse_never_panics(h in "\\PC*", now in any::<i64>()) {
            if let Ok(p) = Presented::parse(Some(&h)) {
                let _ = p.check_fresh(now, 60);
            }
        }

        #[test]
        fn round_trips(
            ts in 0i64..4_000_000_000,
            nonce in "[0-9a-f]{32}",
            path in "/[a-z0-9/?=&]{0,40}",
            key_id in "[A-Za-z0-9]{0,24}",
            idem in "[!-~]{0,40}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let r = Signed { method: "POST", path_and_query: &path, key_id: &key_id, idempotency_key: &idem, body: &body };
            let h = sign(SECRET, ts, &nonce, &r);
            let p = verify(&[SECRET], Some(&h), ts, 60, &r, false);
            prop_assert_eq!(p.map(|p| p.nonce), Ok(Some(nonce)));
        }
    }
}
