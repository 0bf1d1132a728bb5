//! The outbox relay behind `allot worker`: publishes committed outbox events to the Valkey
//! stream `<prefix>:events`, at least once, with the outbox id as the idempotency field.
//!
//! A row becomes visible to the relay when its transaction commits, so rows go out in commit
//! order (within a batch, oldest id first). Batches are taken with `FOR UPDATE SKIP LOCKED`, so
//! several workers share the load without publishing a row twice at the same time; with several
//! workers, two batches may interleave. A row that fails is retried with exponential backoff,
//! and the failure is recorded in `job_runs` (job `outbox-relay`) and logged.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Rows per batch.
const BATCH: i64 = 200;
/// Approximate cap on the stream's length.
const STREAM_MAX_LEN: usize = 1_000_000;
/// Sleep when there was nothing to publish.
const IDLE: Duration = Duration::from_millis(100);

#[derive(sqlx::FromRow)]
struct Event {
    id: i64,
    topic: String,
    aggregate_id: String,
    payload: String,
    trace_context: Option<String>,
    attempts: i32,
}

/// Publishes outbox rows to a Valkey stream.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    conn: ConnectionManager,
    stream: String,
    instance: String,
}

/// Seconds to wait before retrying a row that failed `attempts` times (1 s doubling, ≤ 256 s).
pub fn backoff_secs(attempts: i32) -> i64 {
    1i64 << attempts.clamp(0, 8)
}

impl Relay {
    /// A relay publishing to `<prefix>:events` on `valkey_url`.
    pub fn new(pool: PgPool, valkey_url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(valkey_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout.max(Duration::from_secs(1))))
            .set_number_of_retries(2);
        Ok(Self {
            pool,
            conn: ConnectionManager::new_lazy_with_config(client, config)?,
            stream: format!("{prefix}:events"),
            instance: crate::jobs::instance_name(),
        })
    }

    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Publish until `shutdown`; the batch in hand is finished first.
    pub async fn run(&self, shutdown: CancellationToken) {
        tracing::info!(stream = %self.stream, "outbox relay started");
        let mut pending_checked: Option<std::time::Instant> = None;
        while !shutdown.is_cancelled() {
            if pending_checked.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                pending_checked = Some(std::time::Instant::now());
                if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(&self.pool)
                    .await
                {
                    metrics::gauge!("allot_outbox_pending").set(n as f64);
                }
            }
            let pause = match self.publish_batch().await {
                Ok(0) => IDLE,
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "outbox relay: batch failed; retrying");
                    Duration::from_secs(1)
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Publish one batch; returns how many rows were published.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let events: Vec<Event> = sqlx::query_as(
            "SELECT id, topic, aggregate_id, payload::text AS payload, trace_context, attempts
               FROM outbox
              WHERE published_at IS NULL AND next_attempt_at <= now()
              ORDER BY id
              LIMIT $1
                FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if events.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        // One span per event, child of the request that wrote it: the trace ends here.
        let spans: Vec<tracing::Span> = events
            .iter()
            .map(|e| {
                let span = tracing::info_span!(
                    "outbox.publish",
                    outbox_id = e.id,
                    topic = %e.topic,
                    aggregate_id = %e.aggregate_id,
                    outcome = tracing::field::Empty,
                );
                crate::telemetry::span_from_traceparent(span, e.trace_context.as_deref())
            })
            .collect();
        let (published, failed) = self.publish(&events).await;
        for (e, span) in events.iter().zip(&spans) {
            span.record("outcome", if published.contains(&e.id) { "published" } else { "failed" });
        }
        drop(spans);
        metrics::counter!("allot_outbox_published_total").increment(published.len() as u64);
        metrics::counter!("allot_outbox_failures_total").increment(failed.len() as u64);
        if !published.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)")
                .bind(&published)
                .execute(&mut *tx)
                .await?;
            // Webhook deliveries are queued with the events they carry, in the same order.
            crate::webhooks::fanout::queue(&mut tx, &published).await?;
        }
        for (id, attempts, error) in &failed {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                        next_attempt_at = clock_timestamp() + make_interval(secs => $3)
                  WHERE id = $1",
            )
            .bind(id)
            .bind(error)
            .bind(backoff_secs(attempts + 1) as f64)
            .execute(&mut *tx)
            .await?;
        }
        if let Some((_, _, first_error)) = failed.first() {
            tracing::warn!(failed = failed.len(), published = published.len(), error = %first_error,
                "outbox relay: events not published; will retry with backoff");
            let counts = serde_json::json!({ "published": published.len(), "failed": failed.len(),
                "failed_ids": failed.iter().map(|f| f.0).collect::<Vec<_>>() });
            sqlx::query(
                "INSERT INTO job_runs (job_name, instance, outcome, finished_at, counts, error)
                 VALUES ('outbox-relay', $1, 'failed', now(), $2, $3)",
            )
            .bind(&self.instance)
            .bind(counts)
            .bind(first_error)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(published.len())
    }

    /// Publish a batch in one pipeline; if that fails, row by row to isolate failures.
    async fn publish(&self, events: &[Event]) -> (Vec<i64>, Vec<(i64, i32, String)>) {
        let mut pipe = redis::pipe();
        for e in events {
            self.xadd(&mut pipe, e);
        }
        let mut conn = self.conn.clone();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => return (events.iter().map(|e| e.id).collect(), Vec::new()),
            // Valkey unreachable: every row fails alike; probing them one by one only waits longer.
            Err(err)
                if err.is_io_error()
                    || err.is_timeout()
                    || err.is_connection_refusal()
                    || err.is_connection_dropped() =>
            {
                let msg = err.to_string();
                return (Vec::new(), events.iter().map(|e| (e.id, e.attempts, msg.clone())).collect());
            }
            Err(_) => {}
        }
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for e in events {
            let mut pipe = redis::pipe();
            self.xadd(&mut pipe, e);
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => ok.push(e.id),
                Err(err) => failed.push((e.id, e.attempts, err.to_string())),
            }
        }
        (ok, failed)
    }

    fn xadd(&self, pipe: &mut redis::Pipeline, e: &Event) {
        let cmd = pipe
            .cmd("XADD")
            .arg(&self.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAX_LEN)
            .arg("*")
            .arg("outbox_id")
            .arg(e.id)
            .arg("topic")
            .arg(&e.topic)
            .arg("aggregate_id")
            .arg(&e.aggregate_id)
            .arg("payload")
            .arg(&e.payload);
        if let Some(tc) = &e.trace_context {
            cmd.arg("traceparent").arg(tc);
        }
        cmd.ignore();
    }
}

#[cfg(test)]
mod tests {
    use super::backoff_secs;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_secs(0), 1);
        assert_eq!(backoff_secs(1), 2);
        assert_eq!(backoff_secs(5), 32);
        assert_eq!(backoff_secs(50), 256);
        assert_eq!(backoff_secs(-3), 1);
    }
}
