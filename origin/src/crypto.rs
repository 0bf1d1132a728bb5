//! Encryption at rest: AES-256-GCM with a key ring, so keys can be rotated (new data is sealed
//! with the first key; anything sealed with an older key still opens).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// A sealed secret: ciphertext, its nonce and the id of the key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Ciphertext with the GCM tag.
    pub ciphertext: Vec<u8>,
    /// The 96-bit nonce.
    pub nonce: Vec<u8>,
    /// Which key sealed it.
    pub key_id: String,
}

/// Why opening a sealed value failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key id is not configured (rotation finished too early?).
    #[error("no key with id {0} is configured")]
    UnknownKey(String),
    /// The ciphertext, nonce or associated data does not match.
    #[error("ciphertext failed authentication")]
    Tampered,
}

struct Entry {
    id: String,
    cipher: Aes256Gcm,
    digest_key: [u8; 32],
}

/// The configured keys; the first seals, all open.
#[derive(Clone)]
pub struct KeyRing {
    keys: std::sync::Arc<Vec<Entry>>,
}

impl KeyRing {
    /// Parse `id=<base64 32 bytes>[,id=<...>]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, b64) =
                part.split_once('=').ok_or_else(|| "each key must be written <key id>=<base64 key>".to_owned())?;
            if id.is_empty()
                || id.len() > 64
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("key id {id:?} must be 1-64 letters, digits, '-' or '_'"));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| format!("key {id} is not valid base64"))?;
            let key: [u8; 32] =
                raw.try_into().map_err(|_| format!("key {id} must be exactly 32 bytes (44 base64 characters)"))?;
            if keys.iter().any(|e: &Entry| e.id == id) {
                return Err(format!("key id {id} appears twice"));
            }
            let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&key).expect("any key length");
            mac.update(b"allot-code-digest-v1");
            keys.push(Entry {
                id: id.to_owned(),
                cipher: Aes256Gcm::new(&key.into()),
                digest_key: mac.finalize().into_bytes().into(),
            });
        }
        if keys.is_empty() {
            return Err("no keys given".into());
        }
        Ok(Self { keys: std::sync::Arc::new(keys) })
    }

    /// The configured key ids, sealing key first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|e| e.id.as_str()).collect()
    }

    /// Seal `plaintext`, binding it to `aad` (so it cannot be moved to another row).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Sealed {
        let key = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = key
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        Sealed { ciphertext, nonce: nonce.to_vec(), key_id: key.id.clone() }
    }

    /// Open a sealed value with the key it names.
    pub fn open(&self, ciphertext: &[u8], nonce: &[u8], key_id: &str, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key =
            self.keys.iter().find(|e| e.id == key_id).ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        if nonce.len() != 12 {
            return Err(CryptoError::Tampered);
        }
        key.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad })
            .map_err(|_| CryptoError::Tampered)
    }

    /// A keyed digest of a card code, for uniqueness without storing the code in clear.
    ///
    /// It uses the sealing key's derived digest key, so after a key rotation duplicates are
    /// detected among cards loaded under the same key.
    pub fn code_digest(&self, code: &str) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.keys[0].digest_key).expect("any key length");
        mac.update(code.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The associated data binding a card's ciphertext to its product and denomination.
pub fn card_aad(product_id: &str, denomination_minor: i64) -> Vec<u8> {
    format!("allot-card-v1\0{product_id}\0{denomination_minor}").into_bytes()
}

/// A card's secret parts, sealed together.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CardSecret {
    /// The redemption code.
    #[serde(rename = "c")]
    pub code: String,
    /// The PIN, if any.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: &str) -> KeyRing {
        KeyRing::parse(spec).unwrap()
    }

    #[test]
    fn seals_opens_and_rotates() {
        let old = crate::config::generate_card_key("old");
        let new = crate::config::generate_card_key("new");
        let before = ring(&old);
        let sealed = before.seal(b"CODE-1", b"aad");
        assert_eq!(sealed.key_id, "old");
        let after = ring(&format!("{new},{old}"));
        assert_eq!(after.open(&sealed.ciphertext, &sealed.nonce, "old", b"aad").unwrap(), b"CODE-1");
        assert_eq!(after.seal(b"x", b"").key_id, "new");
        assert!(matches!(after.open(&sealed.ciphertext, &sealed.nonce, "old", b"other"), Err(CryptoError::Tampered)));
        assert!(matches!(
            ring(&new).open(&sealed.ciphertext, &sealed.nonce, "old", b"aad"),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in ["", "k", "k=abc", "k=", "=AAAA", "k k=AAAA"] {
            assert!(KeyRing::parse(bad).is_err(), "{bad}");
        }
        let k = crate::config::generate_card_key("a");
        assert!(KeyRing::parse(&format!("{k},{k}")).is_err());
    }

    #[test]
    fn digests_are_keyed_and_stable() {
        // Stable: a fixed key and code give the digest computed outside this code, so a change
        // to the construction (it would orphan every stored digest) fails here. Key bytes are
        // 0x00..=0x1f; the digest key is HMAC-SHA256(key, "allot-code-digest-v1"), the digest
        // HMAC-SHA256(digest key, code). Computed with:
        //   K=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
        //   DK=$(printf 'allot-code-digest-v1' | openssl dgst -sha256 -mac HMAC -macopt hexkey:$K | awk '{print $NF}')
        //   printf 'CODE-1234-ABCD' | openssl dgst -sha256 -mac HMAC -macopt hexkey:$DK
        let fixed = ring("kat=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        assert_eq!(
            hex::encode(fixed.code_digest("CODE-1234-ABCD")),
            "df5db052b0f52c1b762c9dcdbd270e0d3c53144964d58b32dc6f3626570c0394"
        );

        let a = ring(&crate::config::generate_card_key("a"));
        let b = ring(&crate::config::generate_card_key("b"));
        assert_eq!(a.code_digest("X"), a.code_digest("X"));
        assert_ne!(a.code_digest("X"), a.code_digest("Y"));
        assert_ne!(a.code_digest("X"), b.code_digest("X"));
    }
}
