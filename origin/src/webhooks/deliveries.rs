//! An endpoint's delivery log (each delivery with its attempts: status, latency, response code,
//! next attempt), a delivery sent again by hand, and a test event. Both go to the end of the
//! endpoint's queue, so its order holds; both are audited (`webhook.redeliver`, `webhook.test`).

use std::collections::HashMap;

use allot_shared::webhook::TEST_TOPIC;
use allot_shared::{ApiError, ErrorCode};
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::AppError;
use crate::ops::audit::{self, Actor};
use crate::ops::page::Page;

/// One attempt to deliver.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(as = WebhookAttempt)]
pub struct Attempt {
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The endpoint's HTTP status; null when no answer came (timeout, refused, unreachable).
    #[schema(required = true)]
    pub status: Option<i32>,
    /// From sending to the answer (or the failure), in milliseconds.
    pub latency_ms: i32,
    /// Why it failed; null for a 2xx.
    #[schema(required = true)]
    pub error: Option<String>,
}

/// One delivery: a message for one endpoint, with its attempts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(as = WebhookDelivery)]
pub struct Delivery {
    /// Delivery id (the endpoint's queue order).
    pub id: i64,
    /// `webhook-id`: the same on every attempt and redelivery.
    pub message_id: String,
    /// The event's topic (`webhook.test` for a test).
    pub topic: String,
    /// The outbox event it carries; null for a test.
    #[schema(required = true)]
    pub event_id: Option<i64>,
    /// The delivery this one sends again; null unless redelivered by hand.
    #[schema(required = true)]
    pub redelivery_of: Option<i64>,
    /// `pending`, `delivered` (a 2xx came back), or `abandoned`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i32,
    /// The latest attempt's HTTP status; null before one, or when none came back.
    #[schema(required = true)]
    pub last_status: Option<i32>,
    /// The latest attempt's latency in milliseconds.
    #[schema(required = true)]
    pub last_latency_ms: Option<i32>,
    /// The latest attempt's failure.
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// When the next attempt is due: for the queue's head after a failure, its retry time; null
    /// when it is due now, waits behind an earlier delivery, or is finished.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Queued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Delivered or abandoned; null while pending.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub finished_at: Option<OffsetDateTime>,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<Attempt>,
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: i64,
    message_id: String,
    topic: String,
    event_id: Option<i64>,
    redelivery_of: Option<i64>,
    state: String,
    attempts: i32,
    last_status: Option<i32>,
    last_latency_ms: Option<i32>,
    last_error: Option<String>,
    next_attempt_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
    finished_at: Option<OffsetDateTime>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    delivery_id: i64,
    #[sqlx(flatten)]
    attempt: Attempt,
}

/// The states a delivery can be listed by.
const STATES: [&str; 3] = ["pending", "delivered", "abandoned"];

fn no_endpoint(id: Uuid) -> AppError {
    AppError::api(ErrorCode::NotFound, format!("no webhook endpoint with id {id}"))
}

/// One page of an endpoint's deliveries, newest first (optionally in one state), each with
/// its attempts; and the next page's cursor.
pub async fn list(
    pool: &PgPool,
    endpoint: Uuid,
    state: Option<&str>,
    page: Page,
) -> Result<(Vec<Delivery>, Option<String>), AppError> {
    if let Some(s) = state
        && !STATES.contains(&s)
    {
        return Err(ApiError::validation("state", "must be pending, delivered or abandoned").into());
    }
    let exists: Option<Uuid> = sqlx::query_scalar("SELECT id FROM webhook_endpoints WHERE id = $1")
        .bind(endpoint)
        .fetch_optional(pool)
        .await?;
    if exists.is_none() {
        return Err(no_endpoint(endpoint));
    }
    let mut rows: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT d.id, d.message_id, d.topic, d.event_id, d.redelivery_of, d.state, d.attempts, d.last_status,
                d.last_latency_ms, d.last_error,
                CASE WHEN d.state = 'pending' AND d.id = (SELECT min(h.id) FROM webhook_deliveries h
                                                           WHERE h.endpoint_id = d.endpoint_id AND h.state = 'pending')
                     THEN e.retry_at END AS next_attempt_at,
                d.created_at, d.finished_at
           FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
          WHERE d.endpoint_id = $1 AND ($2::text IS NULL OR d.state = $2) AND ($3::bigint IS NULL OR d.id < $3)
          ORDER BY d.id DESC LIMIT $4",
    )
    .bind(endpoint)
    .bind(state)
    .bind(page.before)
    .bind(page.fetch_limit())
    .fetch_all(pool)
    .await?;
    let next = page.next_cursor(&mut rows, |r| r.id);
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "SELECT delivery_id, at, status, latency_ms, error FROM webhook_attempts
          WHERE delivery_id = ANY($1) ORDER BY delivery_id, id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut by_delivery: HashMap<i64, Vec<Attempt>> = HashMap::new();
    for row in attempts {
        by_delivery.entry(row.delivery_id).or_default().push(row.attempt);
    }
    let items = rows
        .into_iter()
        .map(|r| Delivery {
            attempt_log: by_delivery.remove(&r.id).unwrap_or_default(),
            id: r.id,
            message_id: r.message_id,
            topic: r.topic,
            event_id: r.event_id,
            redelivery_of: r.redelivery_of,
            state: r.state,
            attempts: r.attempts,
            last_status: r.last_status,
            last_latency_ms: r.last_latency_ms,
            last_error: r.last_error,
            next_attempt_at: r.next_attempt_at,
            created_at: r.created_at,
            finished_at: r.finished_at,
        })
        .collect();
    Ok((items, next))
}

/// Queue a delivery again (same message id and body) at the end of its endpoint's queue;
/// returns the new delivery's id.
pub async fn redeliver(pool: &PgPool, actor: &Actor, endpoint: Uuid, delivery: i64) -> Result<i64, AppError> {
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, redelivery_of, message_id, topic, body)
         SELECT endpoint_id, event_id, id, message_id, topic, body FROM webhook_deliveries
          WHERE id = $1 AND endpoint_id = $2
         RETURNING id",
    )
    .bind(delivery)
    .bind(endpoint)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Err(AppError::api(
            ErrorCode::NotFound,
            format!("no delivery {delivery} for webhook endpoint {endpoint}"),
        ));
    };
    let change = serde_json::json!({ "delivery_id": delivery, "new_delivery_id": id });
    audit::record(&mut tx, actor, "webhook.redeliver", &endpoint.to_string(), change).await?;
    tx.commit().await?;
    Ok(id)
}

/// Queue a `webhook.test` event for the endpoint; returns its delivery id.
pub async fn send_test(pool: &PgPool, actor: &Actor, endpoint: Uuid) -> Result<i64, AppError> {
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO webhook_deliveries (endpoint_id, message_id, topic, body)
         SELECT e.id, $2, $3, jsonb_build_object(
                    'type', $3::text,
                    'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    'data', jsonb_build_object('endpoint_id', e.id, 'client_id', e.client_id))::text
           FROM webhook_endpoints e WHERE e.id = $1
         RETURNING id",
    )
    .bind(endpoint)
    .bind(format!("msg_test_{}", Uuid::new_v4().simple()))
    .bind(TEST_TOPIC)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else { return Err(no_endpoint(endpoint)) };
    audit::record(&mut tx, actor, "webhook.test", &endpoint.to_string(), serde_json::json!({ "delivery_id": id }))
        .await?;
    tx.commit().await?;
    Ok(id)
}
