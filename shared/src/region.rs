//! Region codes: the home region of a client and its API keys.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A region code: 2–8 lower-case letters or digits, starting with a letter (`eu`, `us`, `ap2`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(String);

impl Region {
    /// Parse and validate a region code.
    pub fn parse(s: &str) -> Result<Self, String> {
        let b = s.as_bytes();
        if !(2..=8).contains(&b.len()) {
            return Err("region must be 2 to 8 characters".into());
        }
        if !b[0].is_ascii_lowercase() {
            return Err("region must start with a lower-case letter".into());
        }
        if !b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Err("region may contain only lower-case letters and digits".into());
        }
        Ok(Self(s.to_owned()))
    }

    /// The code as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Region::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn regions() {
        for ok in ["eu", "us", "ap2", "useast1"] {
            assert_eq!(Region::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "e", "EU", "2eu", "eu-west", "abcdefghi"] {
            assert!(Region::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = Region::parse(&s);
        }
        #[test]
        fn round_trips(s in "[a-z][a-z0-9]{1,7}") {
            let r = Region::parse(&s).unwrap();
            let json = serde_json::to_string(&r).unwrap();
            prop_assert_eq!(serde_json::from_str::<Region>(&json).unwrap(), r);
        }
    }
}
