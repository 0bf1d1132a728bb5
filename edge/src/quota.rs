//! Rate limits: per API key id (binding `RL_KEY_DEFAULT`), and failed authentications per client
//! IP (binding `RL_AUTH_FAIL_IP`), answered with `429 RATE_LIMITED`, `Retry-After` and the IETF
//! `RateLimit` / `RateLimit-Policy` fields.
//!
//! The binding only answers "allowed or not" (counters per Cloudflare location, eventually
//! consistent), so the numbers in the headers come from vars that mirror wrangler.toml, and the
//! reset time assumes a window aligned to the epoch. An IP over its failed-auth quota is also
//! remembered in this isolate until its window ends, so its next requests get 429 before any key
//! check (the binding cannot be asked without counting).

use std::cell::RefCell;
use std::collections::HashMap;

use allot_shared::rate_limit::RateLimitPolicy;
use allot_shared::{ApiError, ErrorCode, headers};
use worker::Env;

use crate::reply::Reply;

/// Most IPs remembered as blocked in one isolate.
const MAX_BLOCKED: usize = 10_000;

/// IPs over their failed-authentication quota, with when that ends (ms since the epoch).
#[derive(Debug, Default)]
pub struct BlockList {
    until: HashMap<String, u64>,
}

impl BlockList {
    /// Seconds `ip` stays blocked (at least 1), or `None` when it is not blocked.
    pub fn blocked_for(&mut self, ip: &str, now_ms: u64) -> Option<u32> {
        let until = *self.until.get(ip)?;
        if until <= now_ms {
            self.until.remove(ip);
            return None;
        }
        Some(u32::try_from((until - now_ms).div_ceil(1000)).unwrap_or(u32::MAX).max(1))
    }

    /// Block `ip` until `until_ms`. The list stays bounded: expired entries go first, then all.
    pub fn block(&mut self, ip: &str, until_ms: u64, now_ms: u64) {
        if self.until.len() >= MAX_BLOCKED {
            self.until.retain(|_, u| *u > now_ms);
            if self.until.len() >= MAX_BLOCKED {
                self.until.clear();
            }
        }
        self.until.insert(ip.to_owned(), until_ms);
    }

    /// How many IPs are remembered.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether no IP is remembered.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

thread_local! {
    static BLOCKED: RefCell<BlockList> = RefCell::new(BlockList::default());
}

/// The `429 RATE_LIMITED` reply for `policy`, retry after `retry_after` seconds.
pub fn too_many(policy: &RateLimitPolicy, retry_after: u32, request_id: &str) -> Reply {
    let err = ApiError::new(ErrorCode::RateLimited, format!("rate limit exceeded; retry in {retry_after} s"))
        .with_details(serde_json::json!({ "policy": policy.name, "retry_after": retry_after }));
    Reply::error(&err, request_id)
        .with_header(headers::RETRY_AFTER, retry_after.to_string())
        .with_header(headers::RATELIMIT_POLICY, policy.policy_header())
        .with_header(headers::RATELIMIT, policy.state_header(0, retry_after))
}

/// Ask a rate-limit binding whether `key` may go on. Fails open (logged by the caller through
/// the `Err`) when the binding is missing or errors: availability over strictness; the origin
/// still authenticates every request.
pub async fn allow(env: &Env, binding: &str, key: &str) -> Result<bool, String> {
    let limiter = env.rate_limiter(binding).map_err(|e| format!("binding {binding}: {e}"))?;
    let outcome = limiter.limit(key.to_owned()).await.map_err(|e| format!("binding {binding}: {e}"))?;
    Ok(outcome.success)
}

/// Seconds `ip` is still blocked for failed authentications in this isolate.
pub fn ip_blocked_for(ip: &str, now_ms: u64) -> Option<u32> {
    BLOCKED.with(|b| b.try_borrow_mut().ok().and_then(|mut b| b.blocked_for(ip, now_ms)))
}

/// Count a failed authentication from `ip`; when that passes the quota, block the IP for a
/// window and return the seconds to wait.
pub async fn record_auth_failure(env: &Env, policy: &RateLimitPolicy, ip: &str, now_ms: u64) -> Option<u32> {
    match allow(env, crate::config::RL_AUTH_FAIL_BINDING, ip).await {
        Ok(true) => None,
        Ok(false) => {
            let until = now_ms.saturating_add(u64::from(policy.window_secs) * 1000);
            BLOCKED.with(|b| {
                if let Ok(mut b) = b.try_borrow_mut() {
                    b.block(ip, until, now_ms);
                }
            });
            Some(policy.window_secs.max(1))
        }
        Err(e) => {
            crate::platform::log_line(&serde_json::json!({ "level": "warn", "msg": e }).to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_list_expires_and_stays_bounded() {
        let mut b = BlockList::default();
        assert_eq!(b.blocked_for("1.2.3.4", 0), None);
        b.block("1.2.3.4", 60_000, 0);
        assert_eq!(b.blocked_for("1.2.3.4", 0), Some(60));
        assert_eq!(b.blocked_for("1.2.3.4", 59_500), Some(1));
        assert_eq!(b.blocked_for("5.6.7.8", 0), None);
        assert_eq!(b.blocked_for("1.2.3.4", 60_000), None);
        assert!(b.is_empty());
        for i in 0..MAX_BLOCKED {
            b.block(&i.to_string(), 10, 0);
        }
        assert_eq!(b.len(), MAX_BLOCKED);
        b.block("late", 100, 20); // all others expired at 10
        assert_eq!(b.len(), 1);
        let mut b = BlockList::default();
        for i in 0..MAX_BLOCKED {
            b.block(&i.to_string(), 1_000, 20);
        }
        assert_eq!(b.len(), MAX_BLOCKED);
        b.block("later", 2_000, 30); // none expired: start over rather than grow
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn too_many_has_the_ietf_fields() {
        let p = RateLimitPolicy { name: "default".into(), limit: 100, window_secs: 60 };
        let r = too_many(&p, 12, "req-1");
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("12"));
        assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=100;w=60"));
        assert_eq!(r.header("ratelimit"), Some("\"default\";r=0;t=12"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
        assert_eq!(body["error"]["details"]["policy"], "default");
    }
}
