//! Webhooks as the Standard Webhooks specification has them: a signing secret `whsec_<base64>`,
//! headers `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256>`
//! over `<id>.<timestamp>.<body>`; the event topics a client may subscribe to; and which
//! addresses a delivery may go to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The header naming the message (the same on every attempt: receivers dedupe on it).
pub const ID_HEADER: &str = "webhook-id";
/// The header with the attempt's time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header with the signatures, space-separated `v1,<base64>`.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// The secret's prefix.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of key material in a secret we make.
pub const SECRET_BYTES: usize = 32;
/// The largest difference between a delivery's timestamp and the receiver's clock that
/// [`verify`] accepts, as the specification recommends.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// The topics an endpoint may subscribe to (a payload never carries a card code).
pub const TOPICS: &[&str] = &["allocation.created", "card.voided", "stock.low", "stock.out", "balance.low"];
/// The topic of a test event sent by hand; every endpoint receives it when asked.
pub const TEST_TOPIC: &str = "webhook.test";

/// Whether `topic` is one an endpoint may subscribe to.
pub fn is_topic(topic: &str) -> bool {
    TOPICS.contains(&topic)
}

/// A signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

/// Why a secret or a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookError {
    /// The secret is not `whsec_` and 24-64 bytes of base64.
    MalformedSecret,
    /// A header is missing or not in its format.
    MalformedHeaders,
    /// The timestamp is too far from now.
    Stale,
    /// No `v1` signature matches.
    NoMatch,
}

impl std::fmt::Display for WebhookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WebhookError::MalformedSecret => "the secret is not whsec_ and base64",
            WebhookError::MalformedHeaders => "a webhook header is missing or malformed",
            WebhookError::Stale => "the webhook timestamp is too far from now",
            WebhookError::NoMatch => "no webhook signature matches",
        })
    }
}

impl WebhookSecret {
    /// A secret from random bytes the caller drew.
    pub fn from_random(bytes: [u8; SECRET_BYTES]) -> Self {
        Self(bytes.to_vec())
    }

    /// Parse `whsec_<base64>` (24 to 64 bytes of key).
    pub fn parse(s: &str) -> Result<Self, WebhookError> {
        let b64 = s.strip_prefix(SECRET_PREFIX).ok_or(WebhookError::MalformedSecret)?;
        let key = STANDARD.decode(b64).map_err(|_| WebhookError::MalformedSecret)?;
        if !(24..=64).contains(&key.len()) {
            return Err(WebhookError::MalformedSecret);
        }
        Ok(Self(key))
    }

    /// The secret as given to the endpoint's owner: `whsec_<base64>`.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// The key bytes (to store them sealed).
    pub fn key_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A secret from stored key bytes.
    pub fn from_key_bytes(bytes: Vec<u8>) -> Result<Self, WebhookError> {
        if !(24..=64).contains(&bytes.len()) {
            return Err(WebhookError::MalformedSecret);
        }
        Ok(Self(bytes))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The `webhook-signature` value of one delivery attempt: `v1,<base64>`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(msg_id, timestamp, body)))
    }
}

/// Verify a delivery as a receiver does: the timestamp within `tolerance_secs` of `now`, and one
/// of the space-separated `v1` signatures matching.
pub fn verify(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), WebhookError> {
    if msg_id.is_empty() {
        return Err(WebhookError::MalformedHeaders);
    }
    let t: i64 = timestamp.trim().parse().map_err(|_| WebhookError::MalformedHeaders)?;
    if (now - t).abs() > tolerance_secs {
        return Err(WebhookError::Stale);
    }
    let expected = secret.mac(msg_id, t, body);
    let mut any = false;
    for sig in signatures.split(' ').filter(|s| !s.is_empty()) {
        let Some((version, b64)) = sig.split_once(',') else { continue };
        any = true;
        if version != "v1" {
            continue;
        }
        if let Ok(given) = STANDARD.decode(b64)
            && given.len() == expected.len()
            && bool::from(given.ct_eq(&expected))
        {
            return Ok(());
        }
    }
    if any { Err(WebhookError::NoMatch) } else { Err(WebhookError::MalformedHeaders) }
}

/// Whether a delivery may go to `ip`: only globally routable unicast addresses. Loopback,
/// private, link-local, shared (CGNAT), documentation, benchmarking, multicast, broadcast,
/// unspecified and unique-local addresses are refused (an endpoint must not reach inside).
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240; // reserved
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let refused = ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b; // NAT64 well-known prefix
    !refused
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification's reference implementations.
    #[test]
    fn the_specification_example_verifies() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let ok = verify(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", &sig, body, 1614265330, 300);
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn any_change_stale_time_or_wrong_secret_is_refused() {
        let secret = WebhookSecret::from_random([7; SECRET_BYTES]);
        let other = WebhookSecret::from_random([8; SECRET_BYTES]);
        let sig = secret.sign("msg_1", 1000, b"{}");
        let v = |s: &WebhookSecret, id: &str, t: &str, sigs: &str, body: &[u8], now: i64| {
            verify(s, id, t, sigs, body, now, DEFAULT_TOLERANCE_SECS)
        };
        assert_eq!(v(&secret, "msg_1", "1000", &sig, b"{}", 1000), Ok(()));
        assert_eq!(v(&secret, "msg_2", "1000", &sig, b"{}", 1000), Err(WebhookError::NoMatch));
        assert_eq!(v(&secret, "msg_1", "1001", &sig, b"{}", 1001), Err(WebhookError::NoMatch));
        assert_eq!(v(&secret, "msg_1", "1000", &sig, b"{ }", 1000), Err(WebhookError::NoMatch));
        assert_eq!(v(&other, "msg_1", "1000", &sig, b"{}", 1000), Err(WebhookError::NoMatch));
        assert_eq!(v(&secret, "msg_1", "1000", &sig, b"{}", 1301), Err(WebhookError::Stale));
        assert_eq!(v(&secret, "msg_1", "x", &sig, b"{}", 1000), Err(WebhookError::MalformedHeaders));
        assert_eq!(v(&secret, "msg_1", "1000", "", b"{}", 1000), Err(WebhookError::MalformedHeaders));
        // During a rotation a receiver may get two signatures; either one passes.
        let both = format!("{} {sig}", other.sign("msg_1", 1000, b"{}"));
        assert_eq!(v(&secret, "msg_1", "1000", &both, b"{}", 1000), Ok(()));
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let secret = WebhookSecret::from_random([42; SECRET_BYTES]);
        assert_eq!(WebhookSecret::parse(&secret.expose()).unwrap(), secret);
        assert!(secret.expose().starts_with("whsec_"));
        for bad in ["", "whsec_", "whsec_!!!", "sk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2hvcnQ="] {
            assert_eq!(WebhookSecret::parse(bad), Err(WebhookError::MalformedSecret), "{bad}");
        }
        assert!(!format!("{secret:?}").contains("42"));
    }

    #[test]
    fn only_public_addresses_may_receive_deliveries() {
        for ok in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public_address(ok.parse().unwrap()), "{ok}");
        }
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public_address(refused.parse().unwrap()), "{refused}");
        }
    }

    #[test]
    fn topics_are_the_four_events() {
        assert!(is_topic("allocation.created") && is_topic("stock.out"));
        assert!(!is_topic("webhook.test") && !is_topic("allocation.*"));
    }
}
