//! The fan-out: the outbox relay, in the transaction that gives a batch of events their places
//! in the order, queues a delivery for every endpoint that wants each one, in that order. Places
//! follow commit order and are given once, never skipping a row, so each endpoint's queue
//! (ordered by delivery id) follows the events' order, an event is queued once (a unique index
//! too), and deliveries never wait for the events Valkey.
//!
//! Which endpoints want an event: `allocation.created`, `card.voided` and `balance.low` go to the endpoints of
//! the client in the payload (a void of a card never allocated has none), `stock.*` to every
//! endpoint subscribed; only enabled endpoints that existed when the event was written get it.

use sqlx::PgConnection;

const QUEUE: &str = "
INSERT INTO webhook_deliveries (endpoint_id, event_id, message_id, topic, body)
SELECT e.id, o.id, 'msg_' || o.id, o.topic,
       jsonb_build_object(
           'type', o.topic,
           'timestamp', to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
           'data', o.payload)::text
  FROM unnest($1::bigint[]) WITH ORDINALITY AS given (id, n)
  JOIN outbox o ON o.id = given.id
  JOIN webhook_endpoints e
    ON o.topic = ANY (e.topics) AND e.state = 'enabled' AND e.created_at <= o.created_at
   AND (o.topic LIKE 'stock.%' OR o.payload ->> 'client_id' = e.client_id::text)
 ORDER BY given.n, e.id
    ON CONFLICT DO NOTHING";

/// Queue the deliveries of these outbox events, in the order given (their places), inside the
/// relay's transaction; returns how many were queued.
pub async fn queue(tx: &mut PgConnection, event_ids: &[i64]) -> Result<u64, sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(0);
    }
    let queued = sqlx::query(QUEUE).bind(event_ids).execute(&mut *tx).await?.rows_affected();
    if queued > 0 {
        metrics::counter!("allot_webhook_deliveries_queued_total").increment(queued);
    }
    Ok(queued)
}
