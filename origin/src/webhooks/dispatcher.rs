//! The webhook dispatcher (in `allot worker` and `run-all`): it leases endpoints whose queue
//! has a delivery due, and sends each one's queue head first, one at a time, so every endpoint
//! receives its events in order. A failure (no 2xx in time) holds the endpoint's queue: the
//! head is retried after an exponential backoff with jitter, and an endpoint whose head has
//! failed for the retry window (3 days) is disabled, with an event, an audit row, a metric and
//! a WARN for operators. Several processes share the work: an endpoint is leased to one at a
//! time, and every write of the holder checks its lease token.

use std::time::{Duration, Instant};

use allot_shared::webhook::{ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSecret};
use futures::StreamExt;
use rand::Rng;
use reqwest::Url;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::address::{self, PublicOnly};
use super::endpoints::secret_aad;
use crate::config::WebhookSettings;
use crate::crypto::KeyRing;
use crate::ops::audit::{self, Actor};

/// Deliveries sent to one endpoint per lease before others get a turn.
const PER_LEASE: usize = 50;
/// Sleep when nothing was due.
const IDLE: Duration = Duration::from_millis(200);
/// Longest failure text kept.
const MAX_ERROR_CHARS: usize = 500;

/// Sends queued webhook deliveries.
#[derive(Clone)]
pub struct Dispatcher {
    pool: PgPool,
    keys: KeyRing,
    http: reqwest::Client,
    settings: WebhookSettings,
}

/// An endpoint leased to this process.
struct Leased {
    id: Uuid,
    client_id: Uuid,
    url: String,
    token: Uuid,
    secrets: Vec<WebhookSecret>,
}

#[derive(sqlx::FromRow)]
struct LeasedRow {
    id: Uuid,
    client_id: Uuid,
    url: String,
    lease_token: Uuid,
    secret_ciphertext: Vec<u8>,
    secret_nonce: Vec<u8>,
    secret_key_id: String,
    previous_secret_ciphertext: Option<Vec<u8>>,
    previous_secret_nonce: Option<Vec<u8>>,
    previous_secret_key_id: Option<String>,
    previous_live: bool,
}

#[derive(sqlx::FromRow)]
struct Head {
    id: i64,
    message_id: String,
    body: String,
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// Time from sending to the answer or the failure.
    pub latency: Duration,
    /// Why it is not a success; `None` for a 2xx.
    pub error: Option<String>,
}

/// The wait after the `failures`-th failure in a row: `base × 2^(failures-1)`, at most `max`,
/// then scaled by `jitter` in [0.5, 1] so endpoints that failed together do not retry together.
pub fn backoff(base: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    debug_assert!((0.5..=1.0).contains(&jitter), "jitter {jitter} outside [0.5, 1]");
    let doubled = base.saturating_mul(1u32 << failures.saturating_sub(1).min(30));
    doubled.min(max).mul_f64(jitter.clamp(0.5, 1.0))
}

fn clip(text: &str) -> String {
    text.chars().take(MAX_ERROR_CHARS).collect()
}

impl Dispatcher {
    /// A dispatcher over `pool`, opening secrets with `keys`.
    pub fn new(pool: PgPool, keys: KeyRing, settings: WebhookSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(PublicOnly { allow_private: settings.allow_private }))
            .user_agent(concat!("allot-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { pool, keys, http, settings })
    }

    /// Deliver until `shutdown`; deliveries in flight finish first.
    pub async fn run(&self, shutdown: CancellationToken) {
        tracing::info!("webhook dispatcher started");
        while !shutdown.is_cancelled() {
            let pause = match self.tick().await {
                Ok(0) => IDLE,
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "webhook dispatcher: a round failed; retrying");
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
        tracing::info!("webhook dispatcher stopped");
    }

    /// One round: lease the endpoints that have a delivery due and send their queues, several
    /// endpoints at once; returns how many attempts were made.
    pub async fn tick(&self) -> anyhow::Result<usize> {
        let leased = self.lease().await?;
        let attempts: Vec<usize> = futures::stream::iter(leased)
            .map(|ep| self.drain(ep))
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        Ok(attempts.into_iter().sum())
    }

    fn lease_secs(&self) -> f64 {
        (self.settings.timeout * 2 + Duration::from_secs(5)).as_secs_f64()
    }

    async fn lease(&self) -> anyhow::Result<Vec<Leased>> {
        let rows: Vec<LeasedRow> = sqlx::query_as(
            "UPDATE webhook_endpoints e
                SET lease_token = gen_random_uuid(), leased_until = now() + make_interval(secs => $2)
              WHERE e.id IN (
                    SELECT c.id FROM webhook_endpoints c
                     WHERE c.state = 'enabled' AND (c.retry_at IS NULL OR c.retry_at <= now())
                       AND (c.leased_until IS NULL OR c.leased_until < now())
                       AND EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = c.id AND d.state = 'pending')
                     ORDER BY c.retry_at NULLS FIRST, c.id
                     LIMIT $1
                       FOR UPDATE SKIP LOCKED)
          RETURNING e.id, e.client_id, e.url, e.lease_token, e.secret_ciphertext, e.secret_nonce, e.secret_key_id,
                    e.previous_secret_ciphertext, e.previous_secret_nonce, e.previous_secret_key_id,
                    coalesce(e.previous_secret_expires_at > now(), false) AS previous_live",
        )
        .bind(self.settings.concurrency as i64)
        .bind(self.lease_secs())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            match self.open_secrets(&r) {
                Ok(secrets) => {
                    out.push(Leased { id: r.id, client_id: r.client_id, url: r.url, token: r.lease_token, secrets })
                }
                Err(e) => {
                    // A secret no configured key opens: nothing can be signed; say so and hold.
                    tracing::error!(endpoint = %r.id, error = %e, "webhook secret cannot be opened; endpoint held");
                }
            }
        }
        Ok(out)
    }

    fn open_secrets(&self, r: &LeasedRow) -> anyhow::Result<Vec<WebhookSecret>> {
        let aad = secret_aad(r.id);
        let open = |c: &[u8], n: &[u8], k: &str| -> anyhow::Result<WebhookSecret> {
            let bytes = self.keys.open(c, n, k, &aad)?;
            WebhookSecret::from_key_bytes(bytes).map_err(|e| anyhow::anyhow!("{e}"))
        };
        let mut secrets = vec![open(&r.secret_ciphertext, &r.secret_nonce, &r.secret_key_id)?];
        if r.previous_live
            && let (Some(c), Some(n), Some(k)) =
                (&r.previous_secret_ciphertext, &r.previous_secret_nonce, &r.previous_secret_key_id)
        {
            secrets.push(open(c, n, k)?);
        }
        Ok(secrets)
    }

    /// Send the endpoint's queue head first until it is empty, a send fails, or the lease's
    /// share is used; then give the lease back. Returns attempts made.
    async fn drain(&self, ep: Leased) -> usize {
        let mut made = 0;
        while made < PER_LEASE {
            let head = match self.head(ep.id).await {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(endpoint = %ep.id, error = %e, "webhook queue not read");
                    break;
                }
            };
            let outcome = self.send(&ep, &head).await;
            made += 1;
            match self.record(&ep, &head, &outcome).await {
                Ok(true) => continue,
                Ok(false) => return made, // failed (lease released), or the lease was lost
                Err(e) => {
                    tracing::warn!(endpoint = %ep.id, delivery = head.id, error = %e, "webhook attempt not recorded");
                    break;
                }
            }
        }
        if let Err(e) = self.release(&ep).await {
            tracing::warn!(endpoint = %ep.id, error = %e, "webhook lease not released; it expires");
        }
        made
    }

    async fn head(&self, endpoint: Uuid) -> Result<Option<Head>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, message_id, body FROM webhook_deliveries
              WHERE endpoint_id = $1 AND state = 'pending' ORDER BY id LIMIT 1",
        )
        .bind(endpoint)
        .fetch_optional(&self.pool)
        .await
    }

    /// POST one delivery, signed with the endpoint's secrets.
    async fn send(&self, ep: &Leased, head: &Head) -> AttemptOutcome {
        let started = Instant::now();
        let failed = |status: Option<u16>, error: String| AttemptOutcome {
            status,
            latency: started.elapsed(),
            error: Some(clip(&error)),
        };
        let url = match Url::parse(&ep.url) {
            Ok(u) => u,
            Err(e) => return failed(None, format!("the endpoint's URL is not valid: {e}")),
        };
        if !address::literal_allowed(&url, self.settings.allow_private) {
            return failed(None, "refused: the URL's address is private, loopback or reserved".to_owned());
        }
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let signatures: Vec<String> =
            ep.secrets.iter().map(|s| s.sign(&head.message_id, timestamp, head.body.as_bytes())).collect();
        let sent = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, &head.message_id)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signatures.join(" "))
            .body(head.body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status();
                let latency = started.elapsed();
                if status.is_success() {
                    AttemptOutcome { status: Some(status.as_u16()), latency, error: None }
                } else {
                    let reason = status.canonical_reason().unwrap_or("");
                    AttemptOutcome {
                        status: Some(status.as_u16()),
                        latency,
                        error: Some(format!("HTTP {} {reason}", status.as_u16()).trim_end().to_owned()),
                    }
                }
            }
            Err(e) if e.is_timeout() => {
                failed(None, format!("no answer within {} ms", self.settings.timeout.as_millis()))
            }
            Err(e) if e.is_connect() => failed(None, format!("could not connect: {}", error_chain(&e))),
            Err(e) => failed(None, error_chain(&e)),
        }
    }

    /// Write the attempt; returns whether to go on with the next delivery.
    async fn record(&self, ep: &Leased, head: &Head, outcome: &AttemptOutcome) -> anyhow::Result<bool> {
        let ok = outcome.error.is_none();
        let latency_ms = i32::try_from(outcome.latency.as_millis()).unwrap_or(i32::MAX);
        let status = outcome.status.map(i32::from);
        metrics::counter!("allot_webhook_attempts_total", "outcome" => if ok { "delivered" } else { "failed" })
            .increment(1);
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO webhook_attempts (delivery_id, status, latency_ms, error) VALUES ($1, $2, $3, $4)")
            .bind(head.id)
            .bind(status)
            .bind(latency_ms)
            .bind(&outcome.error)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE webhook_deliveries
                SET attempts = attempts + 1, last_attempt_at = now(), last_status = $2, last_latency_ms = $3,
                    last_error = $4,
                    state = CASE WHEN $5 THEN 'delivered' ELSE state END,
                    finished_at = CASE WHEN $5 THEN now() ELSE finished_at END
              WHERE id = $1",
        )
        .bind(head.id)
        .bind(status)
        .bind(latency_ms)
        .bind(&outcome.error)
        .bind(ok)
        .execute(&mut *tx)
        .await?;
        let go_on = if ok { self.succeeded(&mut tx, ep).await? } else { self.failed(&mut tx, ep, outcome).await? };
        tx.commit().await?;
        Ok(go_on)
    }

    /// Reset the endpoint's failures and renew the lease; false when the lease was lost.
    async fn succeeded(&self, tx: &mut sqlx::PgConnection, ep: &Leased) -> anyhow::Result<bool> {
        let renewed = sqlx::query(
            "UPDATE webhook_endpoints
                SET failures = 0, failing_since = NULL, retry_at = NULL,
                    leased_until = now() + make_interval(secs => $3)
              WHERE id = $1 AND lease_token = $2 AND state = 'enabled'",
        )
        .bind(ep.id)
        .bind(ep.token)
        .bind(self.lease_secs())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        Ok(renewed == 1)
    }

    /// Schedule the retry and give the lease back; disable the endpoint once its head has
    /// failed for the retry window. Always false: the queue waits.
    async fn failed(&self, tx: &mut sqlx::PgConnection, ep: &Leased, outcome: &AttemptOutcome) -> anyhow::Result<bool> {
        let failures: Option<(i32, OffsetDateTime)> = sqlx::query_as(
            "UPDATE webhook_endpoints
                SET failures = failures + 1, failing_since = coalesce(failing_since, now()),
                    lease_token = NULL, leased_until = NULL
              WHERE id = $1 AND lease_token = $2
          RETURNING failures, failing_since",
        )
        .bind(ep.id)
        .bind(ep.token)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((failures, failing_since)) = failures else { return Ok(false) };
        let failing_for = OffsetDateTime::now_utc() - failing_since;
        if failing_for >= self.settings.retry_window {
            self.disable(tx, ep, failing_since, outcome).await?;
            return Ok(false);
        }
        let jitter = rand::thread_rng().gen_range(0.5..=1.0);
        let wait = backoff(self.settings.backoff_base, self.settings.backoff_max, failures as u32, jitter);
        sqlx::query("UPDATE webhook_endpoints SET retry_at = now() + make_interval(secs => $2) WHERE id = $1")
            .bind(ep.id)
            .bind(wait.as_secs_f64())
            .execute(&mut *tx)
            .await?;
        Ok(false)
    }

    /// The endpoint failed for the whole retry window: disable it and tell operators (an
    /// outbox event, an audit row, a metric and a WARN). Its queue is kept for when it is
    /// enabled again.
    async fn disable(
        &self,
        tx: &mut sqlx::PgConnection,
        ep: &Leased,
        failing_since: OffsetDateTime,
        outcome: &AttemptOutcome,
    ) -> anyhow::Result<()> {
        let hours = self.settings.retry_window.as_secs() / 3600;
        let last = outcome.error.clone().unwrap_or_default();
        let reason = clip(&format!("every attempt failed for {hours} h; the last: {last}"));
        sqlx::query(
            "UPDATE webhook_endpoints SET state = 'disabled', disabled_reason = $2, retry_at = NULL, updated_at = now()
              WHERE id = $1",
        )
        .bind(ep.id)
        .bind(&reason)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({
            "endpoint_id": ep.id, "client_id": ep.client_id, "url": ep.url,
            "failing_since": crate::allocation::format_time(failing_since), "reason": reason,
        });
        sqlx::query("INSERT INTO outbox (topic, aggregate_id, payload) VALUES ('webhook.endpoint_disabled', $1, $2)")
            .bind(ep.id.to_string())
            .bind(&payload)
            .execute(&mut *tx)
            .await?;
        audit::record(tx, &Actor::system("webhooks"), "webhook.disable", &ep.id.to_string(), payload).await?;
        metrics::counter!("allot_webhook_endpoints_disabled_total").increment(1);
        tracing::warn!(endpoint = %ep.id, client = %ep.client_id, url = %ep.url, reason = %reason,
            "webhook endpoint disabled after failing for the retry window; enable it once the receiver is fixed");
        Ok(())
    }

    async fn release(&self, ep: &Leased) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE webhook_endpoints SET lease_token = NULL, leased_until = NULL WHERE id = $1 AND lease_token = $2",
        )
        .bind(ep.id)
        .bind(ep.token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// An error with its causes, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_jitter_only_shortens_it() {
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(3600));
        assert_eq!(backoff(base, max, 1, 1.0), Duration::from_secs(5));
        assert_eq!(backoff(base, max, 2, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(base, max, 5, 1.0), Duration::from_secs(80));
        assert_eq!(backoff(base, max, 20, 1.0), max);
        assert_eq!(backoff(base, max, 200, 1.0), max, "no overflow");
        assert_eq!(backoff(base, max, 1, 0.5), Duration::from_millis(2500));
        assert_eq!(backoff(base, max, 0, 1.0), base);
    }
}
