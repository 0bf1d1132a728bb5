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

/// A generic cell rate algorithm: `limit` requests per `period_us`, all of which may be spent at
/// once. State is one number, the theoretical arrival time (TAT). The origin runs the same steps
/// in a Valkey script (one atomic read-modify-write); this is the reference they are tested against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Requests per period (also the burst).
    pub limit: u32,
    /// The period in microseconds.
    pub period_us: u64,
}

/// What the algorithm decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The TAT to store (unchanged when refused).
    pub tat_us: u64,
    /// Requests left right now.
    pub remaining: u32,
    /// Microseconds until the full quota is back.
    pub reset_us: u64,
    /// Microseconds until a refused request would be allowed (0 when allowed).
    pub retry_after_us: u64,
}

impl Gcra {
    /// A limit of `per_minute` requests per minute.
    pub fn per_minute(per_minute: u32) -> Self {
        Self { limit: per_minute.max(1), period_us: 60_000_000 }
    }

    /// Microseconds between requests at the sustained rate (at least 1).
    pub fn interval_us(&self) -> u64 {
        (self.period_us / u64::from(self.limit.max(1))).max(1)
    }

    /// Decide a request at `now_us` given the stored TAT (`None` for a new key).
    pub fn decide(&self, stored_tat_us: Option<u64>, now_us: u64) -> GcraDecision {
        // Signed: the earliest allowed time may lie before the epoch of `now_us`.
        let interval = i128::from(self.interval_us());
        let burst = interval * i128::from(self.limit.max(1));
        let now = i128::from(now_us);
        let tat = i128::from(stored_tat_us.unwrap_or(now_us)).max(now);
        let new_tat = tat + interval;
        let allow_at = new_tat - burst;
        let us = |v: i128| u64::try_from(v.max(0)).unwrap_or(u64::MAX);
        if now < allow_at {
            return GcraDecision {
                allowed: false,
                tat_us: us(tat),
                remaining: 0,
                reset_us: us(tat - now),
                retry_after_us: us(allow_at - now),
            };
        }
        let remaining = u32::try_from((now - allow_at) / interval).unwrap_or(u32::MAX);
        GcraDecision { allowed: true, tat_us: us(new_tat), remaining, reset_us: us(new_tat - now), retry_after_us: 0 }
    }
}

/// Whole seconds, rounded up, of a duration in microseconds (headers count in seconds).
pub fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
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

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let g = Gcra { limit: 3, period_us: 3_000_000 }; // 1 per second, 3 at once
        let mut tat = None;
        for left in [2, 1, 0] {
            let d = g.decide(tat, 0);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            tat = Some(d.tat_us);
        }
        let refused = g.decide(tat, 0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_us, 1_000_000);
        assert_eq!(refused.tat_us, tat.unwrap(), "a refusal does not move the TAT");
        assert!(!g.decide(tat, 999_999).allowed);
        let d = g.decide(tat, 1_000_000);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        // After a quiet period the whole burst is back.
        assert_eq!(g.decide(Some(d.tat_us), 10_000_000).remaining, 2);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(2_000_000), 2);
    }

    proptest! {
        #[test]
        fn gcra_never_allows_more_than_limit_plus_elapsed(
            limit in 1u32..50,
            gaps in proptest::collection::vec(0u64..400_000, 1..300),
        ) {
            let g = Gcra { limit, period_us: 1_000_000 };
            let (mut tat, mut now, mut allowed) = (None, 0u64, 0u64);
            for gap in gaps {
                now += gap;
                let d = g.decide(tat, now);
                if d.allowed {
                    allowed += 1;
                    tat = Some(d.tat_us);
                } else {
                    prop_assert!(d.retry_after_us > 0);
                }
            }
            // At most the burst plus one per interval elapsed.
            prop_assert!(allowed <= u64::from(limit) + now / g.interval_us());
        }

        #[test]
        fn reset_is_within_the_window(now in any::<u64>(), w in 0u32..100_000) {
            let p = RateLimitPolicy { name: "x".into(), limit: 1, window_secs: w };
            let t = p.seconds_to_reset(now);
            prop_assert!(t >= 1 && t <= w.max(1));
        }
    }
}
