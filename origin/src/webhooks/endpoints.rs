//! Clients' webhook endpoints: added with a URL and topics (the secret is returned once),
//! listed without secrets, disabled and enabled, and their secrets rotated. Every change is
//! audited in its own transaction (`webhook.create`, `webhook.disable`, `webhook.enable`,
//! `webhook.rotate_secret`).

use allot_shared::webhook::{self, SECRET_BYTES, WebhookSecret};
use allot_shared::{ApiError, ErrorCode};
use rand::RngCore;
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::address;
use crate::crypto::KeyRing;
use crate::error::AppError;
use crate::ops::audit::{self, Actor};

/// Endpoints one client may have.
pub const MAX_PER_CLIENT: i64 = 20;

/// An endpoint as listed (never its secret).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(as = WebhookEndpoint)]
pub struct Endpoint {
    /// Endpoint id.
    pub id: Uuid,
    /// The client whose events it receives.
    pub client_id: Uuid,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The topics it receives.
    pub topics: Vec<String>,
    /// `enabled`, or `disabled` (by an operator, or after failing for the retry window).
    pub state: String,
    /// Why it is disabled; null while enabled.
    #[schema(required = true)]
    pub disabled_reason: Option<String>,
    /// Added.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Since when its oldest pending delivery fails; null while it succeeds.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub failing_since: Option<OffsetDateTime>,
    /// Failed attempts in a row.
    pub failures: i32,
    /// When the next attempt is due after a failure; null when not waiting.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub retry_at: Option<OffsetDateTime>,
    /// Deliveries waiting, the failing one included.
    pub pending: i64,
    /// Until when the secret before the last rotation also signs; null when none does.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
}

const SELECT_ENDPOINT: &str = "SELECT e.id, e.client_id, e.url, e.topics, e.state, e.disabled_reason, e.created_at,
        e.updated_at, e.failing_since, e.failures, e.retry_at,
        (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.state = 'pending') AS pending,
        e.previous_secret_expires_at
   FROM webhook_endpoints e";

/// What a new endpoint receives, checked.
fn check_topics(topics: &[String]) -> Result<Vec<String>, ApiError> {
    if topics.is_empty() || topics.len() > 16 {
        return Err(ApiError::validation("topics", "give 1 to 16 topics"));
    }
    let mut out: Vec<String> = Vec::with_capacity(topics.len());
    for t in topics {
        if !webhook::is_topic(t) {
            let known = webhook::TOPICS.join(", ");
            return Err(ApiError::validation("topics", format!("{t:?} is not a topic; the topics are {known}")));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

fn new_secret() -> WebhookSecret {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    WebhookSecret::from_random(bytes)
}

/// What a secret is sealed against: its endpoint (a sealed secret cannot be moved to another).
pub fn secret_aad(endpoint: Uuid) -> Vec<u8> {
    format!("webhook-secret:{endpoint}").into_bytes()
}

fn no_client(id: Uuid) -> AppError {
    AppError::api(ErrorCode::NotFound, format!("no client with id {id}"))
}

/// `404` unless the client exists.
async fn require_client(pool: &PgPool, id: Uuid) -> Result<(), AppError> {
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM clients WHERE id = $1").bind(id).fetch_optional(pool).await?;
    found.map(|_| ()).ok_or_else(|| no_client(id))
}

fn no_endpoint(id: Uuid) -> AppError {
    AppError::api(ErrorCode::NotFound, format!("no webhook endpoint with id {id}"))
}

/// Add an endpoint for `client_id`; returns it and its secret (shown only now).
pub async fn create(
    pool: &PgPool,
    keys: &KeyRing,
    actor: &Actor,
    client_id: Uuid,
    url: &str,
    topics: &[String],
    allow_private: bool,
) -> Result<(Endpoint, WebhookSecret), AppError> {
    let topics = check_topics(topics)?;
    require_client(pool, client_id).await?;
    let url = address::check(url, allow_private).await?.0;
    let id = Uuid::now_v7();
    let secret = new_secret();
    let sealed = keys.seal(secret.key_bytes(), &secret_aad(id));
    let mut tx = pool.begin().await?;
    let count: Option<i64> = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM webhook_endpoints WHERE client_id = c.id) FROM clients c WHERE c.id = $1 FOR UPDATE",
    )
    .bind(client_id)
    .fetch_optional(&mut *tx)
    .await?;
    match count {
        None => return Err(no_client(client_id)),
        Some(n) if n >= MAX_PER_CLIENT => {
            let reason = format!("the client has {n} endpoints already; {MAX_PER_CLIENT} is the most");
            return Err(ApiError::validation("url", reason).into());
        }
        Some(_) => {}
    }
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, client_id, url, topics, secret_ciphertext, secret_nonce, secret_key_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(client_id)
    .bind(url.as_str())
    .bind(&topics)
    .bind(&sealed.ciphertext)
    .bind(&sealed.nonce)
    .bind(&sealed.key_id)
    .execute(&mut *tx)
    .await?;
    let change = serde_json::json!({ "client_id": client_id, "url": url.as_str(), "topics": topics });
    audit::record(&mut tx, actor, "webhook.create", &id.to_string(), change).await?;
    tx.commit().await?;
    Ok((show(pool, id).await?, secret))
}

/// A client's endpoints, oldest first.
pub async fn list(pool: &PgPool, client_id: Uuid) -> Result<Vec<Endpoint>, AppError> {
    require_client(pool, client_id).await?;
    let sql = format!("{SELECT_ENDPOINT} WHERE e.client_id = $1 ORDER BY e.created_at, e.id");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(client_id).fetch_all(pool).await?)
}

/// One endpoint.
pub async fn show(pool: &PgPool, id: Uuid) -> Result<Endpoint, AppError> {
    let sql = format!("{SELECT_ENDPOINT} WHERE e.id = $1");
    let found: Option<Endpoint> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?;
    found.ok_or_else(|| no_endpoint(id))
}

/// Disable (no more events are queued for it, none is sent) or enable an endpoint. Enabling
/// starts its retries afresh; what was queued before is sent, in order. Returns whether it
/// changed.
pub async fn set_enabled(pool: &PgPool, actor: &Actor, id: Uuid, enabled: bool) -> Result<bool, AppError> {
    let mut tx = pool.begin().await?;
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM webhook_endpoints WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(state) = state else { return Err(no_endpoint(id)) };
    if (state == "enabled") == enabled {
        return Ok(false);
    }
    if enabled {
        sqlx::query(
            "UPDATE webhook_endpoints SET state = 'enabled', disabled_reason = NULL, failing_since = NULL,
                    failures = 0, retry_at = NULL, updated_at = now()
              WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query(
            "UPDATE webhook_endpoints SET state = 'disabled', disabled_reason = $2, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(format!("disabled by {}", actor.name()))
        .execute(&mut *tx)
        .await?;
    }
    let action = if enabled { "webhook.enable" } else { "webhook.disable" };
    audit::record(&mut tx, actor, action, &id.to_string(), serde_json::json!({ "from": state })).await?;
    tx.commit().await?;
    Ok(true)
}

/// Give an endpoint a new secret (returned once). The old one keeps signing beside it for
/// `overlap`, so receivers can switch without losing a delivery.
pub async fn rotate_secret(
    pool: &PgPool,
    keys: &KeyRing,
    actor: &Actor,
    id: Uuid,
    overlap: std::time::Duration,
) -> Result<(WebhookSecret, OffsetDateTime), AppError> {
    let secret = new_secret();
    let sealed = keys.seal(secret.key_bytes(), &secret_aad(id));
    let mut tx = pool.begin().await?;
    let until: Option<OffsetDateTime> = sqlx::query_scalar(
        "UPDATE webhook_endpoints
            SET previous_secret_ciphertext = secret_ciphertext, previous_secret_nonce = secret_nonce,
                previous_secret_key_id = secret_key_id,
                previous_secret_expires_at = now() + make_interval(secs => $5),
                secret_ciphertext = $2, secret_nonce = $3, secret_key_id = $4, updated_at = now()
          WHERE id = $1
      RETURNING previous_secret_expires_at",
    )
    .bind(id)
    .bind(&sealed.ciphertext)
    .bind(&sealed.nonce)
    .bind(&sealed.key_id)
    .bind(overlap.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(until) = until else { return Err(no_endpoint(id)) };
    let change = serde_json::json!({ "previous_secret_expires_at": crate::allocation::format_time(until) });
    audit::record(&mut tx, actor, "webhook.rotate_secret", &id.to_string(), change).await?;
    tx.commit().await?;
    Ok((secret, until))
}

#[cfg(test)]
mod tests {
    use super::check_topics;

    #[test]
    fn topics_are_known_and_counted_once() {
        let t = |v: &[&str]| check_topics(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(t(&["stock.low", "stock.low", "card.voided"]).unwrap(), vec!["stock.low", "card.voided"]);
        assert!(t(&[]).is_err());
        assert!(t(&["allocation.*"]).unwrap_err().message.contains("the topics are allocation.created"));
        assert!(t(&["webhook.test"]).is_err(), "test events are not subscribed to");
    }
}
