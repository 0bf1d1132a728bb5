//! The outbox relay behind `allot worker`: places committed outbox events in one order and
//! publishes them, in that order, to the stream `<prefix>:events` on the events Valkey
//! (`ALLOT_EVENTS_URL`).
//!
//! What it guarantees, and how:
//!
//! - **Commit order.** An event gets its place (`outbox.seq`) when the relay first sees its row
//!   committed, after every place given before; places never change (a trigger refuses it).
//!   Rows that become visible in the same look (one poll, about 100 ms apart) take their places in
//!   outbox id order. So if a transaction began after another committed, its events come after
//!   that one's, and no event committed later can take a place before one already given: a
//!   reader paging by place (the stream, `GET /ops/v1/events`) never skips one. Ids alone could
//!   not do this: they are drawn at INSERT, and a lower id may commit after a higher one.
//! - **At least once, never out of order.** The stream's entry ids are `<seq>-0`, and the outbox
//!   id is in every entry (`outbox_id`, the idempotency field). Each batch is appended by one
//!   script that first checks the stream's last id is the one the relay expects: an append never
//!   leaves a gap or repeats an entry. If the stream is ahead (a relay stopped between its
//!   append and its bookkeeping), the relay takes the entries as published; if it is behind (the
//!   events Valkey lost its newest entries), the relay appends them again from Postgres (up to
//!   the stream's length cap).
//! - **A failing head holds the stream.** Nothing is appended past an event that could not be;
//!   the stream (not a row) backs off: 250 ms doubling to about 30 s, with jitter, back to nothing
//!   on the first success. Placing goes on meanwhile, so the events API keeps serving.
//! - **One relay at a time.** The relay takes a session advisory lock on a connection of its own
//!   and does all its work on it; another `allot worker` stands by and takes over within about a
//!   second of the first one's connection closing (about 25 s after its host vanishes: Postgres
//!   probes the connection). Even two relays at once could not reorder the stream: the append
//!   checks its last id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::Script;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::valkey::{self, Address, Tuning};

/// Events placed per statement.
const ORDER_BATCH: i64 = 1_000;
/// Events appended per script call.
const PUBLISH_BATCH: i64 = 500;
/// Approximate cap on the stream's length; also the most events appended again after the stream
/// lost entries.
pub const STREAM_MAX_LEN: i64 = 1_000_000;
/// Sleep when there was nothing to do.
const IDLE: Duration = Duration::from_millis(100);
/// How often a relay standing by tries to take the stream.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How often the backlog gauges are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// First backoff of the stream after a failed append.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest backoff of the stream (before jitter).
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Compare-and-append: `ARGV[1]` is the stream's last id as the relay knows it (`0-0`: none),
/// `ARGV[2]` the length cap, then per entry its id, its number of field arguments and those.
/// Answers `{1, <new last id>}`, or `{0, <actual last id>}` without appending anything.
const APPEND_SCRIPT: &str = r"
local last = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
if last ~= ARGV[1] then return {0, last} end
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  last = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i], unpack(ARGV, i + 2, i + 1 + n))
  i = i + 2 + n
end
return {1, last}
";

/// A stream entry id, `<ms>-<seq>`; the relay's entries are `<event seq>-0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    /// The first part (the event's place, for the relay's entries).
    pub major: u64,
    /// The second part (0 for the relay's entries).
    pub minor: u64,
}

impl StreamId {
    /// The id of an empty stream.
    pub const NONE: StreamId = StreamId { major: 0, minor: 0 };

    /// The entry id of the event at place `seq`.
    pub fn of_event(seq: i64) -> Self {
        debug_assert!(seq > 0, "places start at 1");
        StreamId { major: seq as u64, minor: 0 }
    }

    /// Parse `<ms>-<seq>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.split_once('-')?;
        Some(StreamId { major: major.parse().ok()?, minor: minor.parse().ok()? })
    }

    /// The event place this id stands for, if it is one the relay writes (`<seq>-0`, or none).
    pub fn event_seq(self) -> Option<i64> {
        (self.minor == 0).then_some(self.major).and_then(|m| i64::try_from(m).ok())
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.major, self.minor)
    }
}

/// The outcome of a compare-and-append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// Every entry was appended; the stream's last id is now this.
    Appended(StreamId),
    /// The stream's last id was not the expected one (this one); nothing was appended.
    Moved(StreamId),
}

/// One event as the relay publishes it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    /// Outbox id: the idempotency field.
    pub id: i64,
    /// Its place in the order.
    pub seq: i64,
    /// `allocation.created`, `card.voided`, …
    pub topic: String,
    /// The allocation, card or bucket it is about.
    pub aggregate_id: String,
    /// JSON text (ids and counts, never a code).
    pub payload: String,
    /// W3C traceparent of the request that wrote it.
    pub trace_context: Option<String>,
}

/// The events stream on the events Valkey.
#[derive(Clone)]
pub struct EventStream {
    conn: valkey::Connection,
    key: Arc<str>,
    timeout: Duration,
    append: Arc<Script>,
}

impl EventStream {
    /// The stream `<prefix>:events` on a server or a cluster (connects lazily, reconnects by
    /// itself). One key: on a cluster the stream and its script live in that key's slot.
    pub fn new(address: &Address, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        // An append of a whole batch takes longer than a cache command.
        let timeout = timeout.max(Duration::from_secs(1));
        Ok(Self {
            conn: valkey::Connection::open(address, Tuning { timeout, retries: 1 }).context("the events Valkey")?,
            key: Arc::from(format!("{prefix}:events")),
            timeout,
            append: Arc::new(Script::new(APPEND_SCRIPT)),
        })
    }

    /// The stream's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    async fn bounded<T>(&self, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> anyhow::Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => anyhow::bail!("the events Valkey gave no answer within {:?}", self.timeout),
        }
    }

    /// Whether the events Valkey answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("PING").query_async::<()>(&mut conn)).await
    }

    /// The stream's last id (`0-0` when it does not exist).
    pub async fn last_id(&self) -> anyhow::Result<StreamId> {
        // `-` is no stream id: the script answers the last id and appends nothing.
        let mut invocation = self.append.key(&*self.key);
        invocation.arg("-").arg(STREAM_MAX_LEN);
        let mut conn = self.conn.clone();
        let (_, last): (i64, String) = self.bounded(invocation.invoke_async(&mut conn)).await?;
        StreamId::parse(&last).with_context(|| format!("the stream's last id {last:?}"))
    }

    /// Append `events` if the stream's last id is `expected`.
    pub async fn append(&self, expected: StreamId, events: &[Event]) -> anyhow::Result<Append> {
        let mut invocation = self.append.key(&*self.key);
        invocation.arg(expected.to_string()).arg(STREAM_MAX_LEN);
        for e in events {
            let fields = if e.trace_context.is_some() { 10 } else { 8 };
            invocation
                .arg(StreamId::of_event(e.seq).to_string())
                .arg(fields)
                .arg("outbox_id")
                .arg(e.id)
                .arg("topic")
                .arg(&e.topic)
                .arg("aggregate_id")
                .arg(&e.aggregate_id)
                .arg("payload")
                .arg(&e.payload);
            if let Some(tc) = &e.trace_context {
                invocation.arg("traceparent").arg(tc);
            }
        }
        let mut conn = self.conn.clone();
        let (appended, last): (i64, String) = self.bounded(invocation.invoke_async(&mut conn)).await?;
        let last = StreamId::parse(&last).with_context(|| format!("the stream's last id {last:?}"))?;
        Ok(if appended == 1 { Append::Appended(last) } else { Append::Moved(last) })
    }
}

/// Delay before the next append after `failures` failed ones in a row: 250 ms doubling, capped
/// at 30 s, then jittered into its upper half (so relays restarted together spread out).
pub fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(BACKOFF_CAP);
    let half = ceiling / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// What is waiting to be published.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// Events not yet in the stream (placed or not).
    pub pending: i64,
    /// Age in seconds of the oldest of them (0 when none).
    pub oldest_secs: f64,
}

/// The events not yet in the stream, and how old the oldest is.
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let (pending, oldest_secs): (i64, Option<f64>) = sqlx::query_as(
        "SELECT (s.last_seq - s.published_seq) + (SELECT count(*) FROM outbox WHERE seq IS NULL),
                extract(epoch FROM now() - least(
                    (SELECT created_at FROM outbox WHERE seq > s.published_seq ORDER BY seq LIMIT 1),
                    (SELECT created_at FROM outbox WHERE seq IS NULL ORDER BY id LIMIT 1)))::float8
           FROM outbox_sequence s",
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog { pending, oldest_secs: oldest_secs.unwrap_or(0.0).max(0.0) })
}

fn report_backlog(b: &Backlog) {
    metrics::gauge!("allot_outbox_pending").set(b.pending as f64);
    metrics::gauge!("allot_outbox_lag_seconds").set(b.oldest_secs);
}

/// The advisory lock that makes one relay per database the active one.
fn stream_lock_key() -> i64 {
    let d = Sha256::digest(b"allot-relay:outbox");
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Why an append did not happen.
#[derive(Debug)]
enum PublishError {
    /// Postgres failed: the relay lets the stream go and stands by again.
    Postgres(sqlx::Error),
    /// The stream could not be written (or is not one this relay can continue): back off.
    Stream(String),
}

impl From<sqlx::Error> for PublishError {
    fn from(e: sqlx::Error) -> Self {
        PublishError::Postgres(e)
    }
}

/// Where publishing stands: the stream's last id, and the place after which events are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    last: StreamId,
    from: i64,
}

/// What one step of the active relay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// Events given their place.
    pub ordered: usize,
    /// Events appended to the stream.
    pub published: usize,
    /// Why the append failed, if it did.
    pub failed: Option<String>,
    /// How long the stream waits before its next append (zero when it is not backing off).
    pub backoff: Duration,
}

impl Step {
    /// Whether there is probably more to do at once.
    pub fn more(&self) -> bool {
        self.ordered as i64 == ORDER_BATCH || self.published as i64 == PUBLISH_BATCH
    }
}

/// Why a relay is not publishing (each is logged once, when it begins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Another relay holds the stream.
    StandingBy,
    /// Postgres cannot be reached.
    NoPostgres,
}

/// Publishes outbox events to the events stream.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    stream: EventStream,
    instance: String,
}

impl Relay {
    /// A relay over `pool` publishing to `stream`.
    pub fn new(pool: PgPool, stream: EventStream) -> Self {
        Self { pool, stream, instance: crate::jobs::instance_name() }
    }

    /// The stream it publishes to.
    pub fn stream(&self) -> &EventStream {
        &self.stream
    }

    /// A connection of the relay's own (never the pool's: it holds a session lock). Postgres
    /// probes it, so a relay whose host vanished lets the stream go in about 25 s, not hours.
    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        let options = (*self.pool.connect_options()).clone().options([
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_keepalives_count", "3"),
        ]);
        PgConnection::connect_with(&options).await
    }

    /// Take the stream on `conn` if no other relay holds it; otherwise `conn` comes back.
    async fn try_lead(&self, mut conn: PgConnection) -> Result<Result<Leader<'_>, PgConnection>, sqlx::Error> {
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(stream_lock_key()).fetch_one(&mut conn).await?;
        if !locked {
            return Ok(Err(conn));
        }
        Ok(Ok(Leader {
            relay: self,
            conn,
            cursor: None,
            placed_through: None,
            failures: 0,
            retry_at: None,
            outage_started: None,
        }))
    }

    /// Take the stream if no other relay holds it: `None` while one does.
    pub async fn lead(&self) -> Result<Option<Leader<'_>>, sqlx::Error> {
        match self.try_lead(self.connect().await?).await? {
            Ok(leader) => Ok(Some(leader)),
            Err(conn) => {
                let _ = conn.close().await;
                Ok(None)
            }
        }
    }

    /// Publish until `shutdown`, standing by while another relay holds the stream; the step in
    /// hand is finished first.
    pub async fn run(&self, shutdown: CancellationToken) {
        tracing::info!(stream = %self.stream.key(), "outbox relay started");
        let mut backlog_at: Option<Instant> = None;
        // Standing by keeps its connection; each state is logged once when it begins.
        let mut spare: Option<PgConnection> = None;
        let mut said: Option<Waiting> = None;
        while !shutdown.is_cancelled() {
            self.refresh_backlog(&mut backlog_at).await;
            let taken = match spare.take() {
                Some(conn) => self.try_lead(conn).await,
                None => match self.connect().await {
                    Ok(conn) => self.try_lead(conn).await,
                    Err(e) => Err(e),
                },
            };
            match taken {
                Ok(Ok(mut leader)) => {
                    said = None;
                    metrics::gauge!("allot_outbox_relay_active").set(1.0);
                    tracing::info!(stream = %self.stream.key(), "outbox relay active: this process publishes the stream");
                    let outcome = leader.run(&shutdown, &mut backlog_at).await;
                    metrics::gauge!("allot_outbox_relay_active").set(0.0);
                    leader.release().await;
                    if let Err(e) = outcome {
                        tracing::warn!(error = %e, "outbox relay lost Postgres; letting the stream go");
                    }
                }
                Ok(Err(conn)) => {
                    spare = Some(conn);
                    metrics::gauge!("allot_outbox_relay_active").set(0.0);
                    if said != Some(Waiting::StandingBy) {
                        tracing::info!("outbox relay standing by: another relay holds the stream");
                        said = Some(Waiting::StandingBy);
                    }
                }
                Err(e) => {
                    if said != Some(Waiting::NoPostgres) {
                        tracing::warn!(error = %e, "outbox relay cannot reach Postgres; retrying every second");
                        said = Some(Waiting::NoPostgres);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(STANDBY_POLL) => {}
            }
        }
        if let Some(conn) = spare {
            let _ = conn.close().await;
        }
        tracing::info!("outbox relay stopped");
    }

    async fn refresh_backlog(&self, at: &mut Option<Instant>) {
        if at.is_some_and(|t| t.elapsed() < BACKLOG_EVERY) {
            return;
        }
        *at = Some(Instant::now());
        if let Ok(b) = backlog(&self.pool).await {
            report_backlog(&b);
        }
    }
}

/// The active relay: holds the stream's lock on its own connection and does all its work there.
pub struct Leader<'a> {
    relay: &'a Relay,
    conn: PgConnection,
    /// Unknown (read from the stream) at the start and after a failed append.
    cursor: Option<Cursor>,
    /// The last place given, once known: with nothing placed past the cursor, there is nothing
    /// to read.
    placed_through: Option<i64>,
    failures: u32,
    retry_at: Option<Instant>,
    outage_started: Option<Instant>,
}

impl Leader<'_> {
    async fn run(&mut self, shutdown: &CancellationToken, backlog_at: &mut Option<Instant>) -> Result<(), sqlx::Error> {
        while !shutdown.is_cancelled() {
            self.relay.refresh_backlog(backlog_at).await;
            let step = self.step().await?;
            if step.more() {
                tokio::task::yield_now().await;
                continue;
            }
            let pause = match self.retry_at {
                Some(t) => IDLE.min(t.saturating_duration_since(Instant::now())),
                None => IDLE,
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        Ok(())
    }

    /// Let the stream go (another relay may take it at once).
    pub async fn release(self) {
        let mut conn = self.conn;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(stream_lock_key()).execute(&mut conn).await;
        let _ = conn.close().await;
    }

    /// Place newly committed events, then append one batch unless the stream is backing off.
    /// An error is Postgres's: the caller lets the stream go.
    pub async fn step(&mut self) -> Result<Step, sqlx::Error> {
        let ordered = self.order().await?;
        let mut step = Step { ordered, ..Step::default() };
        if let Some(t) = self.retry_at
            && Instant::now() < t
        {
            step.backoff = t - Instant::now();
            return Ok(step);
        }
        match self.publish().await {
            Ok(n) => {
                step.published = n;
                self.recovered();
            }
            Err(PublishError::Postgres(e)) => return Err(e),
            Err(PublishError::Stream(why)) => {
                step.backoff = self.failed(&why).await;
                step.failed = Some(why);
            }
        }
        Ok(step)
    }

    /// Give the next committed events their places, in outbox id order after every place given,
    /// and queue their webhook deliveries in that order, in the same transaction: webhooks follow
    /// the events' order and never wait for the events Valkey.
    async fn order(&mut self) -> Result<usize, sqlx::Error> {
        let mut tx = self.conn.begin().await?;
        // The counter row moves only when there is something to place (no write when idle).
        let placed: Vec<(i64, i64)> = sqlx::query_as(
            "WITH picked AS (
                 SELECT id, row_number() OVER (ORDER BY id) AS n
                   FROM (SELECT id FROM outbox WHERE seq IS NULL ORDER BY id LIMIT $1) p
             ), counter AS (
                 UPDATE outbox_sequence SET last_seq = last_seq + (SELECT count(*) FROM picked)
                  WHERE singleton AND EXISTS (SELECT 1 FROM picked)
              RETURNING last_seq - (SELECT count(*) FROM picked) AS base
             )
             UPDATE outbox o SET seq = counter.base + picked.n
               FROM picked, counter
              WHERE o.id = picked.id AND o.seq IS NULL
          RETURNING o.id, o.seq",
        )
        .bind(ORDER_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if placed.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let mut placed = placed;
        placed.sort_unstable_by_key(|(_, seq)| *seq);
        let ids: Vec<i64> = placed.iter().map(|(id, _)| *id).collect();
        crate::webhooks::fanout::queue(&mut tx, &ids).await?;
        tx.commit().await?;
        let through = placed[placed.len() - 1].1;
        if let Some(known) = self.placed_through {
            self.placed_through = Some(known.max(through));
        }
        Ok(placed.len())
    }

    /// Append the next batch after the cursor (reading the stream first when it is unknown).
    async fn publish(&mut self) -> Result<usize, PublishError> {
        // A moved stream is read again once; twice in a row is a stream error.
        for _ in 0..2 {
            let cursor = match self.cursor {
                Some(c) => c,
                None => {
                    let last = self.stream_last().await?;
                    self.adopt(last).await?
                }
            };
            if self.placed_through.is_some_and(|p| cursor.from >= p) {
                self.cursor = Some(cursor);
                return Ok(0);
            }
            let events: Vec<Event> = sqlx::query_as(
                "SELECT id, seq, topic, aggregate_id, payload::text AS payload, trace_context
                   FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(cursor.from)
            .bind(PUBLISH_BATCH)
            .fetch_all(&mut self.conn)
            .await?;
            self.cursor = Some(cursor);
            if events.is_empty() {
                return Ok(0);
            }
            debug_assert!(events.windows(2).all(|w| w[0].seq < w[1].seq), "events in order");
            debug_assert!(cursor.last < StreamId::of_event(events[0].seq), "appended after the stream's last");
            let spans = publish_spans(&events);
            let appended = self.relay.stream.append(cursor.last, &events).await;
            for span in &spans {
                span.record("outcome", if matches!(appended, Ok(Append::Appended(_))) { "published" } else { "held" });
            }
            drop(spans);
            match appended {
                Ok(Append::Appended(last)) => {
                    let through = events[events.len() - 1].seq;
                    debug_assert_eq!(last, StreamId::of_event(through));
                    self.mark_published(through).await?;
                    self.cursor = Some(Cursor { last, from: through });
                    metrics::counter!("allot_outbox_published_total").increment(events.len() as u64);
                    return Ok(events.len());
                }
                Ok(Append::Moved(actual)) => {
                    tracing::info!(expected = %cursor.last, actual = %actual, "the events stream moved; reading it again");
                    self.cursor = Some(self.adopt(actual).await?);
                }
                Err(e) => {
                    self.cursor = None;
                    return Err(PublishError::Stream(format!("{e:#}")));
                }
            }
        }
        self.cursor = None;
        Err(PublishError::Stream("the events stream kept moving under this relay".into()))
    }

    async fn stream_last(&self) -> Result<StreamId, PublishError> {
        self.relay.stream.last_id().await.map_err(|e| PublishError::Stream(format!("{e:#}")))
    }

    /// Continue from the stream's `last` id: take entries it holds beyond what Postgres says was
    /// published as published, or (when it lost entries) publish those again.
    async fn adopt(&mut self, last: StreamId) -> Result<Cursor, PublishError> {
        let key = self.relay.stream.key().to_owned();
        let (last_seq, published_seq): (i64, i64) =
            sqlx::query_as("SELECT last_seq, published_seq FROM outbox_sequence").fetch_one(&mut self.conn).await?;
        self.placed_through = Some(last_seq);
        let Some(top) = last.event_seq().filter(|s| *s <= last_seq) else {
            let why = format!(
                "the stream {key} ends at {last}, which this relay did not write (its entries are <place>-0, and \
                 the last place given is {last_seq}): it belongs to another database or an older version; rename \
                 or delete it and the relay publishes the kept events again"
            );
            tracing::error!(stream = %key, last = %last, last_seq, "{why}");
            return Err(PublishError::Stream(why));
        };
        if top > published_seq {
            tracing::info!(stream = %key, from = published_seq, through = top,
                "the events stream already holds these events (a relay stopped after appending them)");
            self.mark_published(top).await?;
            return Ok(Cursor { last, from: top });
        }
        if top < published_seq {
            let from = top.max(published_seq - STREAM_MAX_LEN);
            tracing::warn!(stream = %key, stream_last = %last, published_through = published_seq,
                republishing = published_seq - from,
                "the events stream lost its newest entries (restarted without its data?); publishing them again");
            metrics::counter!("allot_outbox_republished_total").increment((published_seq - from) as u64);
            sqlx::query("UPDATE outbox_sequence SET published_seq = $1").bind(from).execute(&mut self.conn).await?;
            return Ok(Cursor { last, from });
        }
        Ok(Cursor { last, from: top })
    }

    /// Every event up to `through` is in the stream; record when its batch first got there.
    async fn mark_published(&mut self, through: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH moved AS (
                 UPDATE outbox_sequence SET published_seq = $1 WHERE published_seq < $1 RETURNING 1
             )
             INSERT INTO outbox_publications (through_seq) SELECT $1 FROM moved ON CONFLICT DO NOTHING",
        )
        .bind(through)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    /// An append succeeded: the stream's backoff is over.
    fn recovered(&mut self) {
        if let Some(started) = self.outage_started.take() {
            tracing::info!(
                failures = self.failures,
                duration_ms = started.elapsed().as_millis() as u64,
                "events stream reachable again; publishing resumed"
            );
        }
        self.failures = 0;
        self.retry_at = None;
        metrics::gauge!("allot_outbox_backoff_seconds").set(0.0);
        metrics::gauge!("allot_outbox_consecutive_failures").set(0.0);
    }

    /// An append failed: the whole stream waits, longer each time; recorded in `job_runs`.
    async fn failed(&mut self, why: &str) -> Duration {
        self.failures += 1;
        let wait = backoff(self.failures);
        self.retry_at = Some(Instant::now() + wait);
        if self.outage_started.is_none() {
            self.outage_started = Some(Instant::now());
            tracing::warn!(error = %why, "events not published: the stream holds until it can be written; \
                backing off (further failures are counted)");
        }
        metrics::counter!("allot_outbox_failures_total").increment(1);
        metrics::gauge!("allot_outbox_backoff_seconds").set(wait.as_secs_f64());
        metrics::gauge!("allot_outbox_consecutive_failures").set(f64::from(self.failures));
        let counts =
            serde_json::json!({ "consecutive_failures": self.failures, "backoff_ms": wait.as_millis() as u64 });
        let recorded = sqlx::query(
            "INSERT INTO job_runs (job_name, instance, outcome, finished_at, counts, error)
             VALUES ('outbox-relay', $1, 'failed', now(), $2, $3)",
        )
        .bind(&self.relay.instance)
        .bind(counts)
        .bind(why)
        .execute(&self.relay.pool)
        .await;
        if let Err(e) = recorded {
            tracing::debug!(error = %e, "could not record the relay's failure");
        }
        wait
    }
}

/// One span per event, child of the request that wrote it: the trace ends here.
fn publish_spans(events: &[Event]) -> Vec<tracing::Span> {
    events
        .iter()
        .map(|e| {
            let span = tracing::info_span!(
                "outbox.publish",
                outbox_id = e.id,
                seq = e.seq,
                topic = %e.topic,
                aggregate_id = %e.aggregate_id,
                outcome = tracing::field::Empty,
            );
            crate::telemetry::span_from_traceparent(span, e.trace_context.as_deref())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_quarter_second_to_about_thirty_with_jitter() {
        for (failures, ceiling_ms) in [(1, 250), (2, 500), (3, 1_000), (8, 30_000), (9, 30_000), (u32::MAX, 30_000)] {
            for _ in 0..50 {
                let b = backoff(failures).as_millis() as u64;
                assert!((ceiling_ms / 2..=ceiling_ms).contains(&b), "failures {failures}: {b} ms");
            }
        }
        let spread: std::collections::HashSet<u128> = (0..20).map(|_| backoff(8).as_millis()).collect();
        assert!(spread.len() > 1, "jittered");
    }

    #[test]
    fn stream_ids_of_events_are_their_places() {
        assert_eq!(StreamId::of_event(42).to_string(), "42-0");
        assert_eq!(StreamId::parse("42-0").and_then(StreamId::event_seq), Some(42));
        assert_eq!(StreamId::parse("0-0"), Some(StreamId::NONE));
        assert_eq!(StreamId::NONE.event_seq(), Some(0));
        // An id Valkey made (time-based) or another writer's is not an event's place.
        assert_eq!(StreamId::parse("1764260000000-3").and_then(StreamId::event_seq), None);
        assert_eq!(StreamId::parse("18446744073709551615-0").and_then(StreamId::event_seq), None);
        assert_eq!(StreamId::parse("7"), None);
        assert!(StreamId::of_event(9) < StreamId::of_event(10));
    }
}
