//! The Valkey inventory cache: one sorted set of active card ids per product.
//!
//! Key `<prefix>:inv:{p<product id>}:active`; score = denomination in minor units; member = card
//! id. The `{…}` hash tag keeps a product's keys in one cluster slot so the Lua scripts work on a
//! Valkey cluster. A sentinel member (score 0, never a denomination) marks a set as built, so a
//! sold-out product is "warm and empty" rather than "cold". Everything here can be rebuilt from
//! Postgres: an error from this module costs latency, never correctness.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

/// The member that marks a set as built; its score 0 is never a denomination.
pub const SENTINEL: &str = "built";

// Takes a contiguous run of up to n members of score d starting at a random rank (ARGV[3] is a
// random fraction from the caller): concurrent requests then claim cards far apart in the table
// instead of neighbours on the same heap pages. Every step is O(log N + n).
const POP_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local d = ARGV[1]
local count = redis.call('ZCOUNT', KEYS[1], d, d)
if count == 0 then return {} end
local n = math.min(tonumber(ARGV[2]), count)
local first = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. d)
local start = first + math.floor((count - n + 1) * tonumber(ARGV[3]))
local ids = redis.call('ZRANGE', KEYS[1], start, start + n - 1)
redis.call('ZREM', KEYS[1], unpack(ids))
return ids
";

// Only into a built set: adding to a missing key would make a partial set look complete.
const PUT_BACK_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('ZADD', KEYS[1], unpack(ARGV))
";

/// Largest number of members sent in one command (Lua's unpack has a stack limit).
const CHUNK: usize = 1000;

/// A cache failure: Valkey is down, slow or answered something unexpected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cache: {message}")]
pub struct CacheError {
    message: String,
    no_script: bool,
}

impl CacheError {
    /// An error that did not come from Valkey itself.
    pub fn new(message: String) -> Self {
        Self { message, no_script: false }
    }
}

impl From<redis::RedisError> for CacheError {
    fn from(e: redis::RedisError) -> Self {
        Self { no_script: e.code() == Some("NOSCRIPT"), message: e.to_string() }
    }
}

/// What a pop found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Popped {
    /// The product's set has not been built (or was flushed).
    Cold,
    /// Up to the requested number of ids, removed from the set.
    Ids(Vec<i64>),
}

fn parse_pop(reply: Option<Vec<String>>) -> Result<Popped, CacheError> {
    match reply {
        None => Ok(Popped::Cold),
        Some(members) => members
            .iter()
            .map(|m| m.parse::<i64>().map_err(|_| CacheError::new(format!("unexpected member {m:?}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Popped::Ids),
    }
}

/// The inventory cache client. Cloned per request, so its strings and scripts are shared.
#[derive(Clone)]
pub struct InventoryCache {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    pop: Arc<Script>,
    put_back: Arc<Script>,
}

impl InventoryCache {
    /// A client that connects lazily and reconnects in the background.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, CacheError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            prefix: Arc::from(prefix),
            timeout,
            pop: Arc::new(Script::new(POP_SCRIPT)),
            put_back: Arc::new(Script::new(PUT_BACK_SCRIPT)),
        })
    }

    /// The live key of a product's set.
    pub fn key(&self, product_id: &str) -> String {
        format!("{}:inv:{{p{}}}:active", self.prefix, product_id)
    }

    async fn bounded<T>(&self, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, CacheError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(CacheError::new(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// Atomically take up to `n` ids of one denomination out of a product's set.
    #[tracing::instrument(name = "inventory.pop", skip(self), fields(popped = tracing::field::Empty, cold = tracing::field::Empty))]
    pub async fn pop(&self, product_id: &str, denomination_minor: i64, n: usize) -> Result<Popped, CacheError> {
        let popped = self.pop_many(&[(product_id, denomination_minor, n)]).await?.remove(0);
        let span = tracing::Span::current();
        span.record("cold", popped == Popped::Cold);
        span.record("popped", if let Popped::Ids(ids) = &popped { ids.len() } else { 0 });
        Ok(popped)
    }

    /// Several pops in one round trip: a pipeline of the pop script, each pop atomic on its own.
    /// `asks` holds (product, denomination in minor units, how many); the answers are in order.
    pub async fn pop_many(&self, asks: &[(&str, i64, usize)]) -> Result<Vec<Popped>, CacheError> {
        let keys: Vec<String> = asks.iter().map(|(product_id, _, _)| self.key(product_id)).collect();
        let mut pipe = redis::pipe();
        for (key, (_, denomination_minor, n)) in keys.iter().zip(asks) {
            // A fraction in [0, 1): where in the denomination's members to start.
            let at = f64::from(rand::random::<u32>()) / 4_294_967_296.0;
            pipe.invoke_script(self.pop.key(key).arg(*denomination_minor).arg(*n).arg(at));
        }
        let mut conn = self.conn.clone();
        let replies: Vec<Option<Vec<String>>> = match self.bounded(pipe.query_async(&mut conn)).await {
            // Valkey restarted and forgot the script: a pipeline does not load it by itself.
            Err(e) if e.no_script => {
                self.bounded(self.pop.load_async(&mut conn)).await?;
                self.bounded(pipe.query_async(&mut conn)).await
            }
            other => other,
        }
        .inspect_err(|_| metrics::gauge!("allot_valkey_up").set(0.0))?;
        if replies.len() != asks.len() {
            return Err(CacheError::new(format!("{} answers to {} pops", replies.len(), asks.len())));
        }
        replies.into_iter().map(parse_pop).collect()
    }

    /// Put ids back into a built set (compensation, newly loaded cards). Returns how many were
    /// added; a cold set is left alone (its next build will include them).
    pub async fn put_back(&self, product_id: &str, denomination_minor: i64, ids: &[i64]) -> Result<usize, CacheError> {
        let mut added = 0;
        for chunk in ids.chunks(CHUNK) {
            let mut conn = self.conn.clone();
            let mut inv = self.put_back.key(self.key(product_id));
            for id in chunk {
                inv.arg(denomination_minor).arg(*id);
            }
            let n: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
            if n < 0 {
                return Ok(0);
            }
            added += n as usize;
        }
        Ok(added)
    }

    /// Cards of each denomination in a product's set, or `None` when the set is cold.
    pub async fn counts(&self, product_id: &str, denominations: &[i64]) -> Result<Option<Vec<u64>>, CacheError> {
        let key = self.key(product_id);
        let mut pipe = redis::pipe();
        pipe.exists(&key);
        for d in denominations {
            pipe.zcount(&key, *d, *d);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<u64> = self.bounded(pipe.query_async(&mut conn)).await?;
        if reply.first().copied().unwrap_or(0) == 0 {
            return Ok(None);
        }
        Ok(Some(reply[1..].to_vec()))
    }

    /// Replace a product's set with exactly `members` (denomination, id), atomically for
    /// readers: build a temporary key, then `RENAME` it over the live one.
    pub async fn replace(&self, product_id: &str, members: &[(i64, i64)]) -> Result<(), CacheError> {
        let live = self.key(product_id);
        let tmp = format!("{}:inv:{{p{}}}:build:{}", self.prefix, product_id, uuid::Uuid::new_v4().simple());
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.zadd(&tmp, SENTINEL, 0).ignore();
        pipe.expire(&tmp, 600).ignore();
        self.bounded(pipe.query_async::<()>(&mut conn)).await?;
        for chunk in members.chunks(CHUNK * 10) {
            let items: Vec<(i64, i64)> = chunk.to_vec();
            self.bounded(conn.zadd_multiple::<_, _, _, ()>(&tmp, &items)).await?;
        }
        let mut pipe = redis::pipe();
        pipe.atomic().persist(&tmp).ignore().rename(&tmp, &live).ignore();
        self.bounded(pipe.query_async::<()>(&mut conn)).await?;
        Ok(())
    }

    /// Whether Valkey answers `PING` within the timeout.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let _: String = self.bounded(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }
}
