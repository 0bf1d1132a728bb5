//! Rate-limit policy and the IETF `RateLimit` / `RateLimit-Policy` header fields.
//!
//! Format of draft-ietf-httpapi-ratelimit-headers (structured fields):
//! `RateLimit-Policy: "default";q=100;w=60` and `RateLimit: "default";r=0;t=12`.

/// A named quota: at most `limit` requests per `window_secs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// The policy's name, a token shown to callers (`default`, `auth-failures`).
    pub name: String,
    /// Requests allowed per window.
    pub limit: u32,
    /// Window length in seconds.
    pub window_secs: u32,
}

impl RateLimitPolicy {
    /// The `RateLimit-Policy` field value.
    pub fn policy_header(&self) -> String {
        format!("\"{}\";q={};w={}", self.name, self.limit, self.window_secs)
    }

    /// The `RateLimit` field value with `remaining` requests left and `reset_secs` to the reset.
    pub fn state_header(&self, remaining: u32, reset_secs: u32) -> String {
        format!("\"{}\";r={};t={}", self.name, remaining, reset_secs)
    }

    /// Seconds until the current fixed window (aligned to the epoch) resets; at least 1.
    pub fn seconds_to_reset(&self, now_secs: u64) -> u32 {
        let w = u64::from(self.window_secs.max(1));
        let left = w - now_secs % w;
        u32::try_from(left).unwrap_or(self.window_secs).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RateLimitPolicy {
        RateLimitPolicy { name: "default".into(), limit: 100, window_secs: 60 }
    }

    #[test]
    fn headers() {
        assert_eq!(policy().policy_header(), "\"default\";q=100;w=60");
        assert_eq!(policy().state_header(0, 12), "\"default\";r=0;t=12");
    }

    #[test]
    fn reset() {
        assert_eq!(policy().seconds_to_reset(120), 60);
        assert_eq!(policy().seconds_to_reset(121), 59);
        assert_eq!(policy().seconds_to_reset(179), 1);
    }

    proptest! {
        #[test]
        fn reset_is_within_the_window(now in any::<u64>(), w in 0u32..100_000) {
            let p = RateLimitPolicy { name: "x".into(), limit: 1, window_secs: w };
            let t = p.seconds_to_reset(now);
            prop_assert!(t >= 1 && t <= w.max(1));
        }
    }
}
