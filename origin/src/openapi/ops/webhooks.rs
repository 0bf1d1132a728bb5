//! `/ops/v1/clients/{id}/webhooks` and `/ops/v1/webhooks`: clients' webhook endpoints (the
//! secret is in the response that makes it only), the delivery log, redelivery and test events.

use allot_shared::{ApiError, ErrorCode};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::HttpMethod;
use uuid::Uuid;

use super::{bad_body, bad_input, bad_page, op, unknown_parameter};
use crate::http::ops::webhooks as handler;
use crate::openapi::build::{Op, formatted_string, string};
use crate::ops::operators::Role;
use crate::webhooks::deliveries::Delivery;
use crate::webhooks::endpoints::Endpoint;

/// `201` of `POST /ops/v1/clients/{id}/webhooks`: the endpoint and its secret, shown once.
// Hand-written: the handler answers with `json!`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatedEndpoint {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The signing secret, `whsec_<base64>`: shown once, stored sealed.
    pub secret: String,
}

/// `POST /ops/v1/webhooks/{id}/disable` and `/enable`: the endpoint now, and whether it changed.
// Hand-written: the handler answers with `json!`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointChange {
    /// The endpoint now.
    pub endpoint: Endpoint,
    /// False when it already was so (nothing written, no audit row).
    pub changed: bool,
}

/// `201` of `POST /ops/v1/webhooks/{id}/rotate-secret`: the new secret, shown once.
// Hand-written: the handler answers with `json!`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotatedSecret {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The new signing secret, `whsec_<base64>`: shown once.
    pub secret: String,
    /// Until when the old secret also signs (both signatures are sent).
    #[schema(format = DateTime)]
    pub previous_secret_expires_at: String,
}

/// `202` of a redelivery or a test event: the delivery queued.
// Hand-written: the handler answers with `json!`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueuedDelivery {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The new delivery's id (see the delivery log).
    pub delivery_id: i64,
}

const SAMPLE_CLIENT: &str = "0192f0c1-7c7e-7000-8000-0000000000d4";
const SAMPLE_ENDPOINT: &str = "0192f0c1-7c7e-7000-8000-0000000000e5";

fn sample_endpoint() -> Value {
    json!({
        "id": SAMPLE_ENDPOINT, "client_id": SAMPLE_CLIENT, "url": "https://hooks.example.com/allot",
        "topics": ["allocation.created", "card.voided"], "state": "enabled", "disabled_reason": null,
        "created_at": "2026-11-27T10:00:00Z", "updated_at": "2026-11-27T10:00:00Z",
        "failing_since": null, "failures": 0, "retry_at": null, "pending": 0,
        "previous_secret_expires_at": null
    })
}

fn sample_delivery() -> Value {
    json!({
        "id": 812, "message_id": "msg_90211", "topic": "allocation.created", "event_id": 90211,
        "redelivery_of": null, "state": "delivered", "attempts": 2, "last_status": 200, "last_latency_ms": 41,
        "last_error": null, "next_attempt_at": null, "created_at": "2026-11-27T10:05:00Z",
        "finished_at": "2026-11-27T10:05:07Z",
        "attempt_log": [
            { "at": "2026-11-27T10:05:00Z", "status": 503, "latency_ms": 38, "error": "HTTP 503 Service Unavailable" },
            { "at": "2026-11-27T10:05:07Z", "status": 200, "latency_ms": 41, "error": null }
        ]
    })
}

fn client_id_param(op: Op) -> Op {
    op.path_param("id", formatted_string("uuid", "The client's id."))
}

fn endpoint_id_param(op: Op) -> Op {
    op.path_param("id", formatted_string("uuid", "The endpoint's id."))
}

fn no_endpoint() -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no webhook endpoint with id {SAMPLE_ENDPOINT}"))
}

fn no_client() -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no client with id {SAMPLE_CLIENT}"))
}

fn bad_id() -> ApiError {
    ApiError::validation("id", "must be a UUID")
}

fn list_endpoints() -> Op {
    let description = "Oldest first, on one page (`next_cursor` is null). Never a secret.";
    let path = "/ops/v1/clients/{id}/webhooks";
    let op = op(HttpMethod::Get, path, Role::Viewer, "opsListWebhooks", "A client's webhook endpoints", description);
    let op = client_id_param(op)
        .listing_response::<Endpoint>("The endpoints.", json!({ "items": [sample_endpoint()], "next_cursor": null }));
    bad_input(op, &[bad_id()]).error("No client has this id.", &[no_client()])
}

fn create_endpoint() -> Op {
    let description = "The URL must be `https` (plain `http` only with `ALLOT_WEBHOOK_ALLOW_PRIVATE`) and its host \
                       must resolve only to public addresses (checked now and on every delivery). The secret is in \
                       this response only; deliveries are signed with it as Standard Webhooks specifies. The \
                       endpoint receives the events written from now on. At most 20 per client. Audited as \
                       `webhook.create`.";
    let path = "/ops/v1/clients/{id}/webhooks";
    let op = op(HttpMethod::Post, path, Role::Admin, "opsCreateWebhook", "Add a webhook endpoint", description);
    let op = client_id_param(op)
        .json_body::<handler::NewEndpoint>(
            "Where, and which topics.",
            json!({ "url": "https://hooks.example.com/allot", "topics": ["allocation.created", "card.voided"] }),
        )
        .json_response::<CreatedEndpoint>(
            201,
            "Added; keep the secret now.",
            json!({ "endpoint": sample_endpoint(), "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwxxxxxxxxxxx=" }),
            &[],
        );
    bad_input(
        op,
        &[
            bad_id(),
            ApiError::validation("body", "a JSON object is required"),
            bad_body::<handler::NewEndpoint>(r#"{"url":"https://hooks.example.com/"}"#),
            ApiError::validation("url", "must be https"),
            ApiError::validation("url", "resolves to 10.0.0.8, a private, loopback or reserved address"),
            ApiError::validation(
                "topics",
                "\"allocation.*\" is not a topic; the topics are allocation.created, card.voided, stock.low, stock.out",
            ),
            ApiError::validation("url", "the client has 20 endpoints already; 20 is the most"),
        ],
    )
    .error("No client has this id.", &[no_client()])
}

fn show_endpoint() -> Op {
    let description = "The endpoint, its delivery state (failures in a row, since when, the next retry) and how \
                       many deliveries wait. Never its secret.";
    let op = op(HttpMethod::Get, "/ops/v1/webhooks/{id}", Role::Viewer, "opsShowWebhook", "One endpoint", description);
    let op = endpoint_id_param(op).json_response::<Endpoint>(200, "The endpoint.", sample_endpoint(), &[]);
    bad_input(op, &[bad_id()]).error("No endpoint has this id.", &[no_endpoint()])
}

fn change_endpoint(path: &'static str, operation_id: &str, summary: &str, description: &str, state: &str) -> Op {
    let op = op(HttpMethod::Post, path, Role::Admin, operation_id, summary, description);
    let mut endpoint = sample_endpoint();
    endpoint["state"] = json!(state);
    if state == "disabled" {
        endpoint["disabled_reason"] = json!(format!("disabled by {}", super::SAMPLE_OPERATOR));
    }
    let op = endpoint_id_param(op).json_response::<EndpointChange>(
        200,
        "The endpoint now.",
        json!({ "endpoint": endpoint, "changed": true }),
        &[],
    );
    bad_input(op, &[bad_id()]).error("No endpoint has this id.", &[no_endpoint()])
}

fn disable_endpoint() -> Op {
    let description = "No body. No new event is queued for it and nothing is sent until it is enabled; what is \
                       queued stays. Audited as `webhook.disable` (the dispatcher also disables an endpoint whose \
                       head delivery failed for `ALLOT_WEBHOOK_RETRY_HOURS`, as `system:webhooks`).";
    change_endpoint(
        "/ops/v1/webhooks/{id}/disable",
        "opsDisableWebhook",
        "Disable an endpoint",
        description,
        "disabled",
    )
}

fn enable_endpoint() -> Op {
    let description = "No body. Its retries start afresh and its queue is sent, in order. Audited as \
                       `webhook.enable`.";
    change_endpoint("/ops/v1/webhooks/{id}/enable", "opsEnableWebhook", "Enable an endpoint", description, "enabled")
}

fn rotate_secret() -> Op {
    let description = "No body. A new secret, in this response only; the old one keeps signing beside it (two \
                       `v1,` signatures in `webhook-signature`) for `ALLOT_WEBHOOK_SECRET_OVERLAP_HOURS` \
                       (default 24), so the receiver can switch without losing a delivery. Audited as \
                       `webhook.rotate_secret`.";
    let path = "/ops/v1/webhooks/{id}/rotate-secret";
    let op =
        op(HttpMethod::Post, path, Role::Admin, "opsRotateWebhookSecret", "Rotate an endpoint's secret", description);
    let op = endpoint_id_param(op).json_response::<RotatedSecret>(
        201,
        "Rotated; keep the secret now.",
        json!({
            "endpoint_id": SAMPLE_ENDPOINT, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwxxxxxxxxxxx=",
            "previous_secret_expires_at": "2026-11-28T10:00:00Z"
        }),
        &[],
    );
    bad_input(op, &[bad_id()]).error("No endpoint has this id.", &[no_endpoint()])
}

fn list_deliveries() -> Op {
    let description = "Newest first, with cursor pagination; each delivery with every attempt (time, HTTP status, \
                       latency, failure) and, for the queue's head after a failure, its next attempt.";
    let path = "/ops/v1/webhooks/{id}/deliveries";
    let op = op(HttpMethod::Get, path, Role::Viewer, "opsWebhookDeliveries", "An endpoint's delivery log", description);
    let op = endpoint_id_param(op).query::<handler::DeliveryQuery>().listing_response::<Delivery>(
        "A page of deliveries.",
        json!({ "items": [sample_delivery()], "next_cursor": null }),
    );
    let [limit, cursor] = bad_page();
    bad_input(
        op,
        &[
            bad_id(),
            ApiError::validation("state", "must be pending, delivered or abandoned"),
            limit,
            cursor,
            unknown_parameter::<handler::DeliveryQuery>(),
        ],
    )
    .error("No endpoint has this id.", &[no_endpoint()])
}

fn queued_response(op: Op) -> Op {
    op.json_response::<QueuedDelivery>(
        202,
        "Queued at the end of the endpoint's queue.",
        json!({ "endpoint_id": SAMPLE_ENDPOINT, "delivery_id": 813 }),
        &[],
    )
}

fn redeliver() -> Op {
    let description = "No body. Queues the delivery again, with the same `webhook-id` and body, at the end of the \
                       endpoint's queue (so the order holds). Audited as `webhook.redeliver`.";
    let path = "/ops/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver";
    let op = op(HttpMethod::Post, path, Role::Operator, "opsRedeliverWebhook", "Send a delivery again", description);
    let op = endpoint_id_param(op).path_param("delivery_id", string("The delivery's id (from the log)."));
    bad_input(
        queued_response(op),
        &[bad_id(), ApiError::validation("delivery_id", "must be a delivery's id (a whole number)")],
    )
    .error(
        "No such delivery for this endpoint.",
        &[ApiError::new(ErrorCode::NotFound, format!("no delivery 812 for webhook endpoint {SAMPLE_ENDPOINT}"))],
    )
}

fn send_test() -> Op {
    let description = "No body. Queues a `webhook.test` event (`data`: the endpoint's and client's ids) whatever \
                       the endpoint's topics. Audited as `webhook.test`.";
    let path = "/ops/v1/webhooks/{id}/test";
    let op = op(HttpMethod::Post, path, Role::Operator, "opsTestWebhook", "Send a test event", description);
    bad_input(queued_response(endpoint_id_param(op)), &[bad_id()]).error("No endpoint has this id.", &[no_endpoint()])
}

/// The webhook operations, in the order of `ROUTES`.
pub fn operations() -> Vec<Op> {
    vec![
        list_endpoints(),
        create_endpoint(),
        show_endpoint(),
        disable_endpoint(),
        enable_endpoint(),
        rotate_secret(),
        list_deliveries(),
        redeliver(),
        send_test(),
    ]
}
