//! The Valkey inventory cache: one sorted set of active card ids per product.
//!
//! Key `<prefix>:inv:{p<product id>}:active`; score = denomination in minor units; member = card
//! id. The `{…}` hash tag keeps a product's keys in one cluster slot so the Lua scripts, the
//! pipelines and the rebuild's `RENAME` work on a Valkey cluster; a batch that touches several
//! products sends one pipeline per product there (concurrently), and one in all to a server. A sentinel member (score 0, never a denomination) marks a set as built, so a
//! sold-out product is "warm and empty" rather than "cold". Everything here can be rebuilt from
//! Postgres: an error from this module costs latency, never correctness.

use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncCommands, Script};

use crate::valkey::{Address, Connection, Tuning};

/// The member that marks a set as built; its score 0 is never a denomination.
pub const SENTINEL: &str = "built";

// Takes a contiguous run of n members of score d starting at a random rank (ARGV[3] is a
// random fraction from the caller): concurrent requests then claim cards far apart in the table
// instead of neighbours on the same heap pages. A missing set is cold (false); a built set with
// fewer than n members of score d pops nothing and answers how many it has, or -1 when a
// request with the same Idempotency-Key holds ids (KEYS[2], set here on every pop for ARGV[4]
// ms): a duplicate in flight may be about to allocate, so "out of stock" would be wrong. Every
// step is O(log N + n).
const POP_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local d = ARGV[1]
local n = tonumber(ARGV[2])
local count = redis.call('ZCOUNT', KEYS[1], d, d)
if count < n then
  if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
  return count
end
local first = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. d)
local start = first + math.floor((count - n + 1) * tonumber(ARGV[3]))
local ids = redis.call('ZRANGE', KEYS[1], start, start + n - 1)
redis.call('ZREM', KEYS[1], unpack(ids))
if KEYS[2] then redis.call('SET', KEYS[2], '1', 'PX', ARGV[4]) end
return ids
";

/// How long a pop marks its Idempotency-Key as held (longer than any request lives).
const KEY_HELD_MS: u64 = 20_000;

// Releases a rebuild lock only if this instance still holds it.
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
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
    /// The product's set has not been built (or was flushed): only Postgres knows.
    Cold,
    /// The set is built and holds fewer cards of the denomination than asked for; nothing
    /// was taken.
    Short {
        /// How many it holds.
        available: u64,
    },
    /// Exactly the requested number of ids, removed from the set.
    Ids(Vec<i64>),
    /// The set is short, but a request with the same Idempotency-Key holds ids: only Postgres
    /// can say whether that one allocates.
    KeyHeld,
}

/// One pop: a bucket, how many, and the request's key (client and Idempotency-Key), if any.
#[derive(Debug, Clone, Copy)]
pub struct PopArgs<'a> {
    /// Product.
    pub product_id: &'a str,
    /// Denomination in minor units.
    pub denomination_minor: i64,
    /// How many ids.
    pub quantity: usize,
    /// The request's client and Idempotency-Key, marked as holding ids while it does.
    pub key: Option<(uuid::Uuid, &'a str)>,
}

fn parse_pop(reply: redis::Value) -> Result<Popped, CacheError> {
    let member = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse::<i64>().ok()),
        _ => None,
    };
    match reply {
        redis::Value::Nil => Ok(Popped::Cold),
        redis::Value::Int(-1) => Ok(Popped::KeyHeld),
        redis::Value::Int(n) => Ok(Popped::Short { available: n.max(0) as u64 }),
        redis::Value::Array(members) => members
            .iter()
            .map(|m| member(m).ok_or_else(|| CacheError::new(format!("unexpected member {m:?}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Popped::Ids),
        other => Err(CacheError::new(format!("unexpected pop reply {other:?}"))),
    }
}

/// What the cache knows of a product's set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    /// Built: pops are served from it, and a short set answers out of stock.
    Warm,
    /// Missing, and nobody is rebuilding it: allocations go to Postgres.
    Cold,
    /// Missing, and an instance holds the rebuild lock.
    Rebuilding,
}

impl CacheState {
    /// The state's name in health output.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheState::Warm => "warm",
            CacheState::Cold => "cold",
            CacheState::Rebuilding => "rebuilding",
        }
    }
}

/// The inventory cache client. Cloned per request, so its strings and scripts are shared.
#[derive(Clone)]
pub struct InventoryCache {
    conn: Connection,
    prefix: Arc<str>,
    timeout: Duration,
    pop: Arc<Script>,
    put_back: Arc<Script>,
    unlock: Arc<Script>,
}

impl InventoryCache {
    /// A client of a server or a cluster that connects lazily and reconnects by itself.
    pub fn new(address: &Address, prefix: &str, timeout: Duration) -> Result<Self, CacheError> {
        let conn = Connection::open(address, Tuning { timeout, retries: 2 })?;
        Ok(Self {
            conn,
            prefix: Arc::from(prefix),
            timeout,
            pop: Arc::new(Script::new(POP_SCRIPT)),
            put_back: Arc::new(Script::new(PUT_BACK_SCRIPT)),
            unlock: Arc::new(Script::new(UNLOCK_SCRIPT)),
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

    /// The prefix of every key this origin writes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Run a pipeline in one bounded round trip. A pipeline does not load its scripts by itself,
    /// so after a Valkey restart (NOSCRIPT) `scripts` are loaded and the pipeline is sent again.
    pub async fn query_pipeline(
        &self,
        pipe: &redis::Pipeline,
        scripts: &[&Script],
    ) -> Result<Vec<redis::Value>, CacheError> {
        let mut conn = self.conn.clone();
        match self.bounded(pipe.query_async(&mut conn)).await {
            Err(e) if e.no_script => {
                for script in scripts {
                    self.bounded(script.load_async(&mut conn)).await?;
                }
                self.bounded(pipe.query_async(&mut conn)).await
            }
            other => other,
        }
        .inspect_err(|_| metrics::gauge!("allot_valkey_up").set(0.0))
    }

    /// The marker of a client's Idempotency-Key holding ids of a product (same slot).
    fn key_held_key(&self, product_id: &str, client_id: uuid::Uuid, key: &str) -> String {
        format!("{}:inv:{{p{}}}:held:{}:{}", self.prefix, product_id, client_id.simple(), key)
    }

    /// The lock key an instance holds while it rebuilds a product's set (same slot).
    fn rebuild_lock_key(&self, product_id: &str) -> String {
        format!("{}:inv:{{p{}}}:rebuilding", self.prefix, product_id)
    }

    /// Atomically take exactly `n` ids of one denomination out of a product's set, or say
    /// why not (cold, or short).
    #[tracing::instrument(name = "inventory.pop", skip(self), fields(popped = tracing::field::Empty, cold = tracing::field::Empty))]
    pub async fn pop(&self, product_id: &str, denomination_minor: i64, n: usize) -> Result<Popped, CacheError> {
        let ask = PopArgs { product_id, denomination_minor, quantity: n, key: None };
        let popped = self.pop_many(&[ask]).await?.remove(0);
        let span = tracing::Span::current();
        span.record("cold", popped == Popped::Cold);
        span.record("popped", if let Popped::Ids(ids) = &popped { ids.len() } else { 0 });
        Ok(popped)
    }

    /// Several pops in one round trip per slot (one in all on a single server): pipelines of
    /// the pop script, each pop atomic on its own. The answers are in the order of `asks`.
    pub async fn pop_many(&self, asks: &[PopArgs<'_>]) -> Result<Vec<Popped>, CacheError> {
        let groups = self.by_slot(asks, |ask| ask.product_id);
        let rounds = groups.iter().map(|members| {
            let mut pipe = redis::pipe();
            for ask in members.iter().map(|&i| &asks[i]) {
                // A fraction in [0, 1): where in the denomination's members to start.
                let at = f64::from(rand::random::<u32>()) / 4_294_967_296.0;
                let mut inv = self.pop.key(self.key(ask.product_id));
                if let Some((client_id, key)) = ask.key {
                    inv.key(self.key_held_key(ask.product_id, client_id, key));
                }
                pipe.invoke_script(inv.arg(ask.denomination_minor).arg(ask.quantity).arg(at).arg(KEY_HELD_MS));
            }
            async move { self.query_pipeline(&pipe, &[&self.pop]).await }
        });
        let replies = futures::future::try_join_all(rounds).await?;
        let mut popped: Vec<Option<Popped>> = vec![None; asks.len()];
        for (members, replies) in groups.iter().zip(replies) {
            if replies.len() != members.len() {
                return Err(CacheError::new(format!("{} answers to {} pops", replies.len(), members.len())));
            }
            for (&i, reply) in members.iter().zip(replies) {
                popped[i] = Some(parse_pop(reply)?);
            }
        }
        Ok(popped.into_iter().map(|p| p.expect("every ask is in one group")).collect())
    }

    /// The indexes of `items` grouped so that each group's keys share a slot: one group on a
    /// single server (one round trip), one per product on a cluster (its keys' hash tag).
    fn by_slot<T>(&self, items: &[T], product_of: impl Fn(&T) -> &str) -> Vec<Vec<usize>> {
        if !self.conn.is_cluster() {
            return if items.is_empty() { Vec::new() } else { vec![(0..items.len()).collect()] };
        }
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let product = product_of(item);
            match groups.iter_mut().find(|(p, _)| *p == product) {
                Some((_, members)) => members.push(i),
                None => groups.push((product, vec![i])),
            }
        }
        groups.into_iter().map(|(_, members)| members).collect()
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

    /// Remove ids from a product's set (voided cards), in chunks; returns how many were members.
    /// A cold set has nothing to remove: its next build reads only active cards.
    pub async fn remove(&self, product_id: &str, ids: &[i64]) -> Result<usize, CacheError> {
        let key = self.key(product_id);
        let mut removed = 0;
        for chunk in ids.chunks(CHUNK) {
            let mut conn = self.conn.clone();
            let n: usize = self.bounded(conn.zrem(&key, chunk)).await?;
            removed += n;
        }
        Ok(removed)
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

    /// Take the product's rebuild lock for `ttl` if nobody holds it; the token releases it.
    pub async fn lock_rebuild(&self, product_id: &str, ttl: Duration) -> Result<Option<String>, CacheError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(self.rebuild_lock_key(product_id)).arg(&token).arg("NX").arg("PX").arg(ttl.as_millis() as u64);
        let taken: Option<String> = self.bounded(set.query_async(&mut conn)).await?;
        Ok(taken.map(|_| token))
    }

    /// Release a rebuild lock taken with `token` (a lock that expired meanwhile is left alone).
    pub async fn unlock_rebuild(&self, product_id: &str, token: &str) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let mut inv = self.unlock.key(self.rebuild_lock_key(product_id));
        inv.arg(token);
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// The state of each product's set, in order, in one round trip per slot.
    pub async fn states(&self, product_ids: &[String]) -> Result<Vec<CacheState>, CacheError> {
        let groups = self.by_slot(product_ids, String::as_str);
        let rounds = groups.iter().map(|members| {
            let mut pipe = redis::pipe();
            for p in members.iter().map(|&i| &product_ids[i]) {
                pipe.exists(self.key(p)).exists(self.rebuild_lock_key(p));
            }
            let mut conn = self.conn.clone();
            async move { self.bounded(pipe.query_async::<Vec<bool>>(&mut conn)).await }
        });
        let replies = futures::future::try_join_all(rounds).await?;
        let mut states = vec![CacheState::Cold; product_ids.len()];
        for (members, reply) in groups.iter().zip(replies) {
            for (&i, pair) in members.iter().zip(reply.chunks(2)) {
                states[i] = match pair {
                    [true, _] => CacheState::Warm,
                    [false, true] => CacheState::Rebuilding,
                    _ => CacheState::Cold,
                };
            }
        }
        Ok(states)
    }

    /// The state of one product's set.
    pub async fn state(&self, product_id: &str) -> Result<CacheState, CacheError> {
        let states = self.states(&[product_id.to_owned()]).await?;
        Ok(states.first().copied().unwrap_or(CacheState::Cold))
    }

    /// Whether Valkey answers `PING` within the timeout.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let _: String = self.bounded(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }
}
