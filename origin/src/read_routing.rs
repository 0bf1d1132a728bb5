//! Where reads that may lag go: the replica while it answers and is at most
//! `ALLOT_REPLICA_MAX_LAG_MS` behind the primary, the primary otherwise.
//!
//! A background check ([`spawn_checks`]) reads, every `ALLOT_REPLICA_CHECK_MS`, the primary's WAL
//! position (`pg_current_wal_lsn()`), then the replica's replay position and the commit time of
//! the last transaction it replayed. The replica is caught up when it has replayed at least what
//! the primary had written just before. Only otherwise is its lag the age of that last replayed
//! commit: on an idle primary that commit may be hours old while nothing is behind, hence the
//! position comparison first. That age is capped by the time since the previous check when the
//! replica has replayed what the primary had then (one write on an idle primary between the two
//! reads of one check must not look like hours of lag).
//!
//! A read routed to the replica that fails as if the replica were gone is retried once on the
//! primary and stops the replica serving until its next good check. Having stopped, the replica
//! serves again once a check finds it at most half the threshold behind (no flapping around it).
//! Stopping and resuming are logged once each (WARN, INFO), never on every check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// The replica pool's acquire timeout (or the configured one when shorter): a stopped replica
/// refuses connections, which the pool retries until this passes before the read falls back.
pub const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one check may take; a check without an answer stops the replica serving.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Which server a read goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadTarget {
    /// The streaming replica.
    Replica,
    /// The primary.
    Primary,
}

impl ReadTarget {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadTarget::Replica => "replica",
            ReadTarget::Primary => "primary",
        }
    }
}

/// A WAL position (`pg_lsn` text, `16/B374D848`) as a number; `None` when malformed.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// The primary's WAL position, read no earlier than `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimarySample {
    /// Taken just before the position was asked for (so the lag bound errs long).
    pub at: Instant,
    /// `pg_current_wal_lsn()`.
    pub lsn: u64,
}

/// What the replica reported in one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaReading {
    /// `pg_last_wal_replay_lsn()`; `None` when it is not replaying (not a standby).
    pub replay_lsn: Option<u64>,
    /// `now() - pg_last_xact_replay_timestamp()`; `None` before it replayed any transaction.
    pub replay_age: Option<Duration>,
}

/// The replica's lag: zero when it has replayed what the primary had at `current`; otherwise the
/// age of its last replayed commit, capped by the time since `previous` when it has replayed that
/// much; `None` when nothing bounds it (the replica must not serve then).
pub fn lag(
    reading: ReplicaReading,
    current: Option<PrimarySample>,
    previous: Option<PrimarySample>,
    now: Instant,
) -> Option<Duration> {
    let replayed = reading.replay_lsn?;
    if current.is_some_and(|c| replayed >= c.lsn) {
        return Some(Duration::ZERO);
    }
    let since_previous = previous.filter(|p| replayed >= p.lsn).map(|p| now.saturating_duration_since(p.at));
    match (reading.replay_age, since_previous) {
        (Some(age), Some(bound)) => Some(age.min(bound)),
        (age, bound) => age.or(bound),
    }
}

/// Whether a failed read on the replica is worth retrying on the primary: the replica is
/// unreachable or overloaded, lacks the database (it is behind a just-created one), or cancelled
/// the query for a conflict with recovery.
pub fn replica_failure(e: &sqlx::Error) -> bool {
    if crate::error::is_unavailable(e) {
        return true;
    }
    // invalid_catalog_name, database_dropped, serialization_failure (conflict with recovery)
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("3D000" | "57P04" | "40001")))
}

/// The replica's standing as of its last check, for health and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    /// Whether reads that may lag go to the replica.
    pub serving: bool,
    /// Its lag at the last check, when it answered and the lag is known.
    pub lag: Option<Duration>,
    /// Why it does not serve, when it does not.
    pub reason: Option<String>,
    /// When it was last checked; `None` before the first check.
    pub checked_at: Option<OffsetDateTime>,
}

/// What one check concluded: the lag (`None`: unknown), or why the replica cannot serve.
pub type Verdict = Result<Option<Duration>, String>;

/// Whether the replica serves reads, shared by every clone of a [`Db`].
pub struct ReplicaRoute {
    serving: AtomicBool,
    max_lag: Duration,
    status: Mutex<ReplicaStatus>,
}

impl ReplicaRoute {
    /// A route that sends nothing to the replica until its first good check.
    pub fn new(max_lag: Duration) -> Arc<Self> {
        Arc::new(Self {
            serving: AtomicBool::new(false),
            max_lag,
            status: Mutex::new(ReplicaStatus {
                serving: false,
                lag: None,
                reason: Some("not checked yet".to_owned()),
                checked_at: None,
            }),
        })
    }

    /// Whether reads that may lag go to the replica now.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// The largest lag at which the replica serves.
    pub fn max_lag(&self) -> Duration {
        self.max_lag
    }

    /// The last check's findings.
    pub fn status(&self) -> ReplicaStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Apply a check's verdict: serve while the lag is known and within the threshold; having
    /// stopped, serve again only within half of it.
    pub fn record(&self, verdict: Verdict) {
        let (serving, lag, reason) = match verdict {
            Err(reason) => (false, None, Some(reason)),
            Ok(None) => (
                false,
                None,
                Some("its lag is unknown: it is behind and has replayed no transaction since it started".to_owned()),
            ),
            Ok(Some(lag)) => {
                let limit = if self.is_serving() { self.max_lag } else { self.max_lag / 2 };
                let serving = lag <= limit;
                let reason = (!serving).then(|| {
                    format!(
                        "it is {:.1} s behind the primary (serves within {:.1} s)",
                        lag.as_secs_f64(),
                        limit.as_secs_f64()
                    )
                });
                (serving, Some(lag), reason)
            }
        };
        metrics::gauge!("allot_db_replica_lag_seconds").set(lag.map_or(f64::NAN, |l| l.as_secs_f64()));
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) =
            ReplicaStatus { serving, lag, reason: reason.clone(), checked_at: Some(OffsetDateTime::now_utc()) };
        self.switch(serving, lag, reason.as_deref());
    }

    /// A read on the replica failed as if it were gone: stop serving until the next good check.
    pub fn read_failed(&self, error: &sqlx::Error) {
        let reason = format!("a read failed on it: {error}");
        {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.serving = false;
            status.reason = Some(reason.clone());
        }
        self.switch(false, None, Some(&reason));
    }

    /// Set the flag and the gauge; log only a change.
    fn switch(&self, serving: bool, lag: Option<Duration>, reason: Option<&str>) {
        metrics::gauge!("allot_db_replica_serving").set(if serving { 1.0 } else { 0.0 });
        let was = self.serving.swap(serving, Ordering::Relaxed);
        match (was, serving) {
            (true, false) => tracing::warn!(
                reason = reason.unwrap_or(""),
                "the read replica stopped serving reads; they go to the primary until it is back within the lag \
                 threshold"
            ),
            (false, true) => {
                tracing::info!(lag_ms = lag.map_or(0, |l| l.as_millis() as u64), "the read replica serves reads")
            }
            _ => {}
        }
    }
}

/// Check `replica` against `primary` every `every` until `shutdown`, recording each verdict in
/// `route`.
pub fn spawn_checks(
    primary: PgPool,
    replica: PgPool,
    route: Arc<ReplicaRoute>,
    every: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut previous: Option<PrimarySample> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let (verdict, current) = check(&primary, &replica, previous).await;
            previous = current.or(previous);
            route.record(verdict);
        }
    });
}

/// One check: the primary's position (when it answers), then the replica's.
async fn check(
    primary: &PgPool,
    replica: &PgPool,
    previous: Option<PrimarySample>,
) -> (Verdict, Option<PrimarySample>) {
    let at = Instant::now();
    let current = match tokio::time::timeout(CHECK_TIMEOUT, primary_lsn(primary)).await {
        Ok(Ok(lsn)) => Some(PrimarySample { at, lsn }),
        // Without the primary's position, the bounds from earlier positions and commit ages remain.
        _ => None,
    };
    let verdict = match tokio::time::timeout(CHECK_TIMEOUT, replica_reading(replica)).await {
        Ok(Ok(Some(reading))) => Ok(lag(reading, current, previous, Instant::now())),
        Ok(Ok(None)) => Err("it is not in recovery (promoted, or not a replica)".to_owned()),
        Ok(Err(e)) => Err(format!("no answer: {e}")),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    };
    (verdict, current)
}

async fn primary_lsn(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(pool).await?;
    parse_lsn(&text).ok_or_else(|| sqlx::Error::Protocol(format!("unexpected pg_lsn {text:?}")))
}

/// The replica's replay state; `None` when it is not in recovery.
async fn replica_reading(pool: &PgPool) -> Result<Option<ReplicaReading>, sqlx::Error> {
    let (in_recovery, replay_lsn, replay_age): (bool, Option<String>, Option<f64>) = sqlx::query_as(
        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,
                extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
    )
    .fetch_one(pool)
    .await?;
    if !in_recovery {
        return Ok(None);
    }
    Ok(Some(ReplicaReading {
        replay_lsn: replay_lsn.as_deref().and_then(parse_lsn),
        // A commit stamped a moment ahead of the replica's clock is no lag.
        replay_age: replay_age.map(|s| Duration::from_secs_f64(s.max(0.0))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_LAG: Duration = Duration::from_secs(5);

    fn reading(replay_lsn: u64, age_secs: Option<u64>) -> ReplicaReading {
        ReplicaReading { replay_lsn: Some(replay_lsn), replay_age: age_secs.map(Duration::from_secs) }
    }

    #[test]
    fn lsns_parse_as_numbers_and_order_like_postgres() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("0/3000000"), Some(0x300_0000));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert!(parse_lsn("1/0").unwrap() > parse_lsn("0/FFFFFFFF").unwrap());
        for bad in ["", "0", "x/1", "1/", "/1", "100000000/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn caught_up_is_no_lag_however_old_the_last_commit() {
        let now = Instant::now();
        let current = Some(PrimarySample { at: now, lsn: 100 });
        // The idle-primary trap: the last replayed commit is an hour old, yet nothing is behind.
        assert_eq!(lag(reading(100, Some(3600)), current, None, now), Some(Duration::ZERO));
        assert_eq!(lag(reading(101, None), current, None, now), Some(Duration::ZERO));
    }

    #[test]
    fn behind_is_the_last_commits_age_capped_by_the_previous_check() {
        let now = Instant::now();
        let previous = Some(PrimarySample { at: now - Duration::from_secs(1), lsn: 90 });
        let current = Some(PrimarySample { at: now, lsn: 100 });
        assert_eq!(lag(reading(95, Some(7)), current, None, now), Some(Duration::from_secs(7)));
        // It has replayed what the primary had a second ago: at most a second behind.
        assert_eq!(lag(reading(95, Some(3600)), current, previous, now), Some(Duration::from_secs(1)));
        // Not even that: the commit age stands.
        assert_eq!(lag(reading(80, Some(7)), current, previous, now), Some(Duration::from_secs(7)));
        // Behind, with no replayed commit and no earlier position reached: unknown.
        assert_eq!(lag(reading(80, None), current, previous, now), None);
        // Not replaying at all: unknown.
        assert_eq!(
            lag(ReplicaReading { replay_lsn: None, replay_age: Some(Duration::ZERO) }, current, None, now),
            None
        );
        // The primary did not answer: the earlier position still bounds the lag.
        assert_eq!(lag(reading(95, None), None, previous, now), Some(Duration::from_secs(1)));
    }

    #[test]
    fn the_route_serves_within_the_threshold_and_resumes_within_half_of_it() {
        let route = ReplicaRoute::new(MAX_LAG);
        assert!(!route.is_serving(), "nothing goes to the replica before its first check");
        route.record(Ok(Some(Duration::ZERO)));
        assert!(route.is_serving());
        route.record(Ok(Some(Duration::from_secs(5))));
        assert!(route.is_serving(), "at the threshold it still serves");
        route.record(Ok(Some(Duration::from_millis(5001))));
        assert!(!route.is_serving());
        assert!(route.status().reason.unwrap().contains("5.0 s behind"));
        route.record(Ok(Some(Duration::from_secs(3))));
        assert!(!route.is_serving(), "having stopped, it resumes only within half the threshold");
        route.record(Ok(Some(Duration::from_millis(2500))));
        assert!(route.is_serving());
        route.record(Err("no answer: connection refused".into()));
        assert!(!route.is_serving());
        assert_eq!(route.status().lag, None);
        route.record(Ok(Some(Duration::ZERO)));
        route.record(Ok(None));
        assert!(!route.is_serving(), "an unknown lag does not serve");
    }

    #[test]
    fn a_failed_read_stops_serving_until_the_next_good_check() {
        let route = ReplicaRoute::new(MAX_LAG);
        route.record(Ok(Some(Duration::ZERO)));
        route.read_failed(&sqlx::Error::PoolTimedOut);
        assert!(!route.is_serving());
        let status = route.status();
        assert!(!status.serving);
        assert!(status.reason.unwrap().contains("a read failed"));
        route.record(Ok(Some(Duration::ZERO)));
        assert!(route.is_serving());
    }

    #[test]
    fn gone_replicas_are_told_from_query_errors() {
        assert!(replica_failure(&sqlx::Error::PoolTimedOut));
        assert!(replica_failure(&sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))));
        assert!(!replica_failure(&sqlx::Error::RowNotFound));
        assert!(!replica_failure(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
