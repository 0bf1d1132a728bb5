//! The API key format: `allot_<region>_<key id>_<secret><checksum>`.
//!
//! Like GitHub's tokens, the last six characters are a base62 CRC32 of everything before
//! them, so the edge rejects typos and random strings offline without knowing any secret.
//! The origin stores only [`ApiKey::secret_digest`].

use sha2::{Digest, Sha256};

use crate::region::Region;

/// The fixed prefix of every key.
pub const PREFIX: &str = "allot";
/// Characters in a key id.
pub const KEY_ID_LEN: usize = 16;
/// Characters in a secret.
pub const SECRET_LEN: usize = 32;
/// Characters in the checksum.
pub const CHECKSUM_LEN: usize = 6;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A well-formed API key whose checksum matched.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    region: Region,
    key_id: String,
    secret: String,
}

/// Why a string is not a well-formed API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyError {
    /// Not of the form `allot_<region>_<key id>_<secret><checksum>`.
    Malformed,
    /// The checksum does not match: a typo or an invented key.
    BadChecksum,
}

impl std::fmt::Display for ApiKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiKeyError::Malformed => f.write_str("the API key is malformed"),
            ApiKeyError::BadChecksum => f.write_str("the API key's checksum does not match"),
        }
    }
}

impl std::error::Error for ApiKeyError {}

// The secret must never reach a log through Debug.
impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("region", &self.region)
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

pub(crate) fn is_base62(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

pub(crate) fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    // 62^6 > 2^32, so every CRC fits; the bytes are all from BASE62.
    String::from_utf8_lossy(&out).into_owned()
}

impl ApiKey {
    /// Build a key from its parts; the key id and secret must be base62 of the right length.
    pub fn new(region: Region, key_id: &str, secret: &str) -> Result<Self, ApiKeyError> {
        if !is_base62(key_id, KEY_ID_LEN) || !is_base62(secret, SECRET_LEN) {
            return Err(ApiKeyError::Malformed);
        }
        Ok(Self { region, key_id: key_id.to_owned(), secret: secret.to_owned() })
    }

    /// Parse a key and check its format and checksum.
    pub fn parse(s: &str) -> Result<Self, ApiKeyError> {
        let rest = s.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('_')).ok_or(ApiKeyError::Malformed)?;
        let mut parts = rest.splitn(3, '_');
        let (Some(region), Some(key_id), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ApiKeyError::Malformed);
        };
        let region = Region::parse(region).map_err(|_| ApiKeyError::Malformed)?;
        if !is_base62(tail, SECRET_LEN + CHECKSUM_LEN) {
            return Err(ApiKeyError::Malformed);
        }
        let (secret, sum) = tail.split_at(SECRET_LEN);
        let key = Self::new(region, key_id, secret)?;
        let expected = checksum(&key.body());
        // Not secret material: the checksum is derivable from the key itself.
        if expected != sum {
            return Err(ApiKeyError::BadChecksum);
        }
        Ok(key)
    }

    fn body(&self) -> String {
        format!("{PREFIX}_{}_{}_{}", self.region, self.key_id, self.secret)
    }

    /// The key's home region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The public key id (safe to log and to rate-limit by).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The secret part; never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The SHA-256 digest of the secret, which is all the origin stores.
    ///
    /// Secrets are 190 bits of randomness, so a fast hash is safe here (no dictionary to attack).
    pub fn secret_digest(&self) -> [u8; 32] {
        domain_digest(b"allot-api-key-v1:", &self.secret)
    }

    /// The full key string, to hand to its owner once.
    pub fn expose(&self) -> String {
        with_checksum(self.body())
    }
}

/// SHA-256 of a secret under a domain label (so a key's and a token's digests never collide).
pub(crate) fn domain_digest(domain: &[u8], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// A credential's body followed by its checksum: the string handed out once.
pub(crate) fn with_checksum(body: String) -> String {
    let sum = checksum(&body);
    body + &sum
}

/// Turn random bytes into a base62 string of `len` characters (for key ids and secrets).
///
/// Uses rejection sampling, so `bytes` should hold about 1.1 × `len` bytes; returns `None`
/// when they run out before `len` characters are made.
pub fn base62_from_random(bytes: &[u8], len: usize) -> Option<String> {
    let mut out = String::with_capacity(len);
    for &b in bytes {
        if out.len() == len {
            break;
        }
        // 248 = 62 * 4: accept only bytes below it so every character is equally likely.
        if b < 248 {
            out.push(BASE62[usize::from(b % 62)] as char);
        }
    }
    (out.len() == len).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ApiKey {
        ApiKey::new(Region::parse("eu").unwrap(), "AbCdEfGh12345678", "s3cr3tS3cr3tS3cr3tS3cr3tS3cr3t00").unwrap()
    }

    #[test]
    fn exposes_and_parses() {
        let key = sample();
        let text = key.expose();
        assert!(text.starts_with("allot_eu_AbCdEfGh12345678_"));
        assert_eq!(text.len(), 5 + 1 + 2 + 1 + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN);
        let parsed = ApiKey::parse(&text).unwrap();
        assert_eq!(parsed, key);
        assert_eq!(parsed.secret_digest(), key.secret_digest());
    }

    #[test]
    fn rejects_typos_and_junk() {
        let text = sample().expose();
        let mut typo = text.clone().into_bytes();
        let i = typo.len() - 10;
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(ApiKey::parse(std::str::from_utf8(&typo).unwrap()), Err(ApiKeyError::BadChecksum));
        for bad in ["", "allot_", "allot_eu_x_y", "ghp_abc", &text[1..], &format!("{text}x")] {
            assert!(ApiKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let dbg = format!("{:?}", sample());
        assert!(!dbg.contains("s3cr3t"));
    }

    #[test]
    fn base62_from_random_is_uniform_and_bounded() {
        // Bounded, over the whole input range: a byte below 248 (= 62 × 4) makes one base62
        // character, any other byte is rejected; exactly 4 byte values make each character.
        let mut per_char = [0usize; 62];
        for b in 0..=255u8 {
            match base62_from_random(&[b], 1) {
                Some(s) if b < 248 => {
                    assert_eq!(s.len(), 1, "byte {b}: {s:?}");
                    let i = BASE62.iter().position(|&c| c == s.as_bytes()[0]);
                    per_char[i.unwrap_or_else(|| panic!("byte {b} made {s:?}, not base62"))] += 1;
                }
                None if b >= 248 => {}
                other => panic!("byte {b}: {other:?}"),
            }
        }
        assert_eq!(per_char, [4; 62], "each character from exactly 4 byte values");
        // Exactly `len` characters; `None` when the bytes run out first.
        assert_eq!(base62_from_random(&[0, 248, 61, 255, 62, 7], 3).as_deref(), Some("0z0"));
        assert_eq!(base62_from_random(&[255; 10], 1), None);
        assert_eq!(base62_from_random(&[1, 2, 250], 3), None);

        // Uniform over many draws: Pearson's chi-square of 620,000 characters made from a fixed
        // pseudo-random stream (splitmix64), against 61 degrees of freedom. 100.9 is its 99.9th
        // percentile; a mapping without rejection (`b % 62` for every byte) scores about 4,000.
        let mut state: u64 = 0x0123_4567_89ab_cdef;
        let mut next_byte = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        };
        let mut counts = [0u64; 62];
        let mut total = 0u64;
        for _ in 0..620 {
            // 1,100 bytes make 1,000 characters with overwhelming probability (about 1,066 pass).
            let bytes: Vec<u8> = (0..1_100).map(|_| next_byte()).collect();
            let s = base62_from_random(&bytes, 1_000).expect("enough randomness");
            for c in s.bytes() {
                counts[BASE62.iter().position(|&x| x == c).expect("base62")] += 1;
                total += 1;
            }
        }
        let expected = total as f64 / 62.0;
        let chi2: f64 = counts.iter().map(|&n| (n as f64 - expected).powi(2) / expected).sum();
        assert!(chi2 < 100.9, "chi-square {chi2:.1} over {total} characters: {counts:?}");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = ApiKey::parse(&s);
        }


        #[test]
        fn random_strings_fail_the_checksum(id in "[A-Za-z0-9]{16}", tail in "[A-Za-z0-9]{38}") {
            // Only one checksum in 62^6 matches; a random tail virtually never does.
            let s = format!("allot_eu_{id}_{tail}");
            let ok = ApiKey::parse(&s).is_ok();
            let expected = checksum(&s[..s.len() - CHECKSUM_LEN]) == s[s.len() - CHECKSUM_LEN..];
            prop_assert_eq!(ok, expected);
        }
    }

    proptest! {
        // Each case parses about 4,000 altered keys.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A key round-trips, and every single-character change and every swap of two adjacent
        /// different characters anywhere in it is refused (CRC32 catches any burst of 32 bits
        /// or fewer in the checked part; a change to the checksum itself no longer matches).
        #[test]
        fn round_trips_and_refuses_every_typo_and_adjacent_swap(
            region in "[a-z][a-z0-9]{1,7}",
            id in "[A-Za-z0-9]{16}",
            secret in "[A-Za-z0-9]{32}",
        ) {
            let key = ApiKey::new(Region::parse(&region).unwrap(), &id, &secret).unwrap();
            let text = key.expose();
            prop_assert_eq!(ApiKey::parse(&text).unwrap(), key);
            let original = text.as_bytes();
            for i in 0..original.len() {
                for &c in BASE62.iter().chain(b"_") {
                    if c == original[i] {
                        continue;
                    }
                    let mut typo = original.to_vec();
                    typo[i] = c;
                    let typo = String::from_utf8(typo).unwrap();
                    prop_assert!(ApiKey::parse(&typo).is_err(), "position {} changed to {:?}: {} parsed", i, c as char, typo);
                }
                if i + 1 < original.len() && original[i] != original[i + 1] {
                    let mut swapped = original.to_vec();
                    swapped.swap(i, i + 1);
                    let swapped = String::from_utf8(swapped).unwrap();
                    prop_assert!(ApiKey::parse(&swapped).is_err(), "positions {} and {} swapped: {} parsed", i, i + 1, swapped);
                }
            }
        }
    }
}
