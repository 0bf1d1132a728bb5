//! Two checks in one Valkey round trip, after the caller is known: the replay guard (an edge
//! signature's MAC is accepted once) and the client's exact rate limit (a GCRA per client).
//!
//! The edge's rate limiter counts per location and only approximately; this one is exact across
//! every edge location and every origin instance, because its state lives in Valkey. Both checks
//! fail open: when Valkey is down or slow, the request proceeds, `allot_request_guard_unchecked_total`
//! counts it and the outage is logged once. That is safe for allocations: a replay within the
//! skew window carries the same Idempotency-Key the signature covers, so it replays the stored
//! answer and allocates nothing; and Postgres still bounds throughput.

use std::time::Duration;

use allot_shared::rate_limit::{Gcra, RateLimitPolicy, ceil_secs};
use uuid::Uuid;

use crate::cache::{CacheError, InventoryCache};

// Mirrors allot_shared::rate_limit::Gcra::decide with Valkey's clock (every instance shares it).
// KEYS[1]: the client's TAT (microseconds); ARGV: interval µs, limit. Returns
// {allowed, remaining, reset µs, retry-after µs}.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = interval * tonumber(ARGV[2])
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then tat = math.max(tonumber(stored), now) end
local new_tat = tat + interval
local allow_at = new_tat - burst
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), new_tat - now, 0}
";

/// The rate-limit state of one request, for its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateState {
    /// The client's policy.
    pub policy: RateLimitPolicy,
    /// Requests left now.
    pub remaining: u32,
    /// Seconds until the full quota is back.
    pub reset_secs: u64,
    /// Seconds until a refused request may be retried (0 when allowed).
    pub retry_after_secs: u64,
}

/// What the guard decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on; the rate state is for the response's headers.
    Pass(RateState),
    /// Over the client's limit: `429`.
    Limited(RateState),
    /// This signature was seen before: `401`.
    Replayed,
    /// Valkey did not answer: the request proceeds unchecked.
    Unchecked,
}

/// The replay guard and rate limiter.
#[derive(Clone)]
pub struct RequestGuard {
    cache: InventoryCache,
    replay_ttl: Duration,
    default_per_minute: u32,
}

impl RequestGuard {
    /// A guard remembering signatures for `replay_ttl` (twice the skew window: a timestamp may be
    /// that far ahead or behind), limiting clients without their own limit to `default_per_minute`.
    pub fn new(cache: InventoryCache, replay_ttl: Duration, default_per_minute: u32) -> Self {
        Self { cache, replay_ttl, default_per_minute }
    }

    /// Check `signature_tag` (the MAC in hex, when signatures are on) and the client's rate.
    pub async fn check(&self, signature_tag: Option<&str>, client_id: Uuid, per_minute: Option<u32>) -> Verdict {
        let limit = per_minute.unwrap_or(self.default_per_minute);
        let gcra = Gcra::per_minute(limit);
        let mut pipe = redis::pipe();
        if let Some(tag) = signature_tag {
            // In the client's slot, beside its rate key: one pipeline may not span slots on a
            // cluster.
            let key = format!("{}:sig:{{c{}}}:{tag}", self.cache.prefix(), client_id.simple());
            pipe.cmd("SET").arg(key).arg(1).arg("NX").arg("PX").arg(self.replay_ttl.as_millis() as u64);
        }
        let rate_key = format!("{}:rl:{{c{}}}", self.cache.prefix(), client_id.simple());
        // EVAL, not EVALSHA: after a Valkey restart a NOSCRIPT would make the pipeline run twice,
        // and the replay guard's SET NX would then refuse the request as its own replay.
        pipe.cmd("EVAL").arg(GCRA_SCRIPT).arg(1).arg(rate_key).arg(gcra.interval_us()).arg(limit);
        let replies = match self.cache.query_pipeline(&pipe, &[]).await {
            Ok(r) => r,
            Err(e) => return unchecked(&e),
        };
        match parse(&replies, signature_tag.is_some(), limit) {
            Ok(v) => v,
            Err(e) => unchecked(&e),
        }
    }
}

fn unchecked(e: &CacheError) -> Verdict {
    metrics::counter!("allot_request_guard_unchecked_total").increment(1);
    crate::outage::VALKEY.failed("request guard (replay and rate limit unchecked: failing open)", e);
    Verdict::Unchecked
}

fn parse(replies: &[redis::Value], with_replay: bool, limit: u32) -> Result<Verdict, CacheError> {
    let unexpected = |what: &str| CacheError::new(format!("unexpected request-guard reply: {what}"));
    let (replay, rate) = match (with_replay, replies) {
        (true, [replay, rate]) => (Some(replay), rate),
        (false, [rate]) => (None, rate),
        _ => return Err(unexpected("reply count")),
    };
    let replayed = match replay {
        None | Some(redis::Value::Okay) => false,
        Some(redis::Value::Nil) => true,
        Some(other) => return Err(unexpected(&format!("{other:?}"))),
    };
    let redis::Value::Array(fields) = rate else { return Err(unexpected("rate is not an array")) };
    let int = |i: usize| match fields.get(i) {
        Some(redis::Value::Int(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
        other => Err(unexpected(&format!("{other:?}"))),
    };
    if replayed {
        return Ok(Verdict::Replayed);
    }
    let allowed = int(0)? == 1;
    let state = RateState {
        policy: client_policy(limit),
        remaining: u32::try_from(int(1)?).unwrap_or(u32::MAX),
        reset_secs: ceil_secs(int(2)?),
        // A refusal always asks for at least a second.
        retry_after_secs: ceil_secs(int(3)?).max(u64::from(!allowed)),
    };
    Ok(if allowed { Verdict::Pass(state) } else { Verdict::Limited(state) })
}

/// The policy a client's limit is published as (`RateLimit-Policy: "client";q=…;w=60`).
pub fn client_policy(per_minute: u32) -> RateLimitPolicy {
    RateLimitPolicy { name: "client".to_owned(), limit: per_minute, window_secs: 60 }
}
