//! `/ops/v1/clients` and `/ops/v1/keys`: clients, suspension, rate limits, and issuing,
//! revoking and rotating API keys (a key's secret is in the response that creates it only).

use allot_shared::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::macros::datetime;
use utoipa::openapi::schema::{ArrayBuilder, Schema};
use utoipa::openapi::{HttpMethod, Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use super::{bad_body, bad_input, op, unknown_parameter};
use crate::http::ops::clients as handler;
use crate::openapi::build::{Op, formatted_string, string};
use crate::ops::clients::{ClientDetail, ClientSummary, KeyRecord, MAX_ROTATION_OVERLAP};
use crate::ops::operators::Role;
use crate::ops::page::MAX_LIMIT;

/// `ClientDetail`'s schema: [`ClientSummary`]'s, with `keys` added. The derive would make it an
/// `allOf` (the type flattens the summary), which cannot forbid other fields.
impl PartialSchema for ClientDetail {
    fn schema() -> RefOr<Schema> {
        let RefOr::T(Schema::Object(mut object)) = ClientSummary::schema() else {
            unreachable!("a struct's derived schema is an object")
        };
        object.description = Some("A client with every one of its keys, newest first.".to_owned());
        let keys = ArrayBuilder::new()
            .items(RefOr::Ref(Ref::from_schema_name(KeyRecord::name())))
            .description(Some("Its keys, newest first."));
        object.properties.insert("keys".to_owned(), keys.into());
        object.required.push("keys".to_owned());
        object.into()
    }
}

impl ToSchema for ClientDetail {
    fn name() -> std::borrow::Cow<'static, str> {
        "ClientDetail".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        ClientSummary::schemas(schemas);
        schemas.push((KeyRecord::name().into_owned(), KeyRecord::schema()));
        KeyRecord::schemas(schemas);
    }
}

/// `POST /ops/v1/clients/{id}/suspend` and `/resume`: the status now, and whether it changed.
// Hand-written: the handler answers with `json!`, not a type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientStatusChange {
    /// Client id.
    pub id: Uuid,
    /// The status now.
    pub status: crate::ops::clients::ClientStatus,
    /// False when it already was (nothing written, no audit row).
    pub changed: bool,
}

/// `200` of `PUT /ops/v1/clients/{id}/rate-limit`.
// Hand-written: the handler answers with `json!`, not a type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSet {
    /// Client id.
    pub id: Uuid,
    /// The limit now; null for the configured default.
    #[schema(required = true, minimum = 1)]
    pub rate_limit_per_minute: Option<u32>,
}

/// `201` of `POST /ops/v1/clients/{id}/keys`: the key, shown in this response only.
// Hand-written: the handler answers with `json!`, not a type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuedKey {
    /// The client.
    pub client_id: Uuid,
    /// The key's public id.
    pub key_id: String,
    /// Its label; null when none.
    #[schema(required = true)]
    pub label: Option<String>,
    /// The whole API key, `allot_<region>_<key id>_<secret><checksum>`: shown once, stored only
    /// as a digest.
    pub key: String,
}

/// `POST /ops/v1/keys/{key_id}/revoke`: done.
// Hand-written: the handler answers with `json!`, not a type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokedKey {
    /// The key's public id.
    pub key_id: String,
    /// Always true.
    pub revoked: bool,
}

/// The rotated-out key of a rotation.
// Hand-written: the handler answers with `json!`, not a type.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OldKey {
    /// Its public id.
    pub key_id: String,
    /// When it stops working.
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// `201` of `POST /ops/v1/keys/{key_id}/rotate`: the new key, shown in this response only.
// Hand-written: the handler answers with `json!` (built from `ops::clients::Rotated`, which is
// not serialised).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotatedKey {
    /// The client both keys belong to.
    pub client_id: Uuid,
    /// The new key's public id.
    pub key_id: String,
    /// The label both keys share; null when none.
    #[schema(required = true)]
    pub label: Option<String>,
    /// The whole new API key, live at once: shown once, stored only as a digest.
    pub key: String,
    /// The old key and when it stops.
    pub old_key: OldKey,
}

const SAMPLE_CLIENT: &str = "0192f0c1-7c7e-7000-8000-0000000000d4";

fn sample_client() -> Value {
    json!({
        "id": SAMPLE_CLIENT, "name": "Shop", "region": "eu", "plan": "default", "status": "active",
        "rate_limit_per_minute": null, "created_at": "2026-11-27T10:00:00Z",
        "usable_keys": 2, "last_used_at": "2026-11-27T10:05:00Z"
    })
}

fn sample_client_detail() -> Value {
    let mut client = sample_client();
    client["keys"] = json!([
        {
            "key_id": "Ef56GhJk78LmNp90", "label": "shop", "created_at": "2026-11-27T10:30:00Z",
            "last_used_at": null, "expires_at": null, "revoked_at": null, "state": "live"
        },
        {
            "key_id": "Ab12Cd34Ef56Gh78", "label": "shop", "created_at": "2026-11-27T10:00:00Z",
            "last_used_at": "2026-11-27T10:05:00Z", "expires_at": "2026-11-27T11:30:00Z", "revoked_at": null,
            "state": "expiring"
        }
    ]);
    client
}

fn new_client_detail() -> Value {
    let mut client = sample_client();
    client["usable_keys"] = json!(0);
    client["last_used_at"] = Value::Null;
    client["keys"] = json!([]);
    client
}

fn client_id_param(op: Op) -> Op {
    op.path_param("id", formatted_string("uuid", "The client's id."))
}

fn key_id_param(op: Op) -> Op {
    op.path_param("key_id", string("The key's public id (`allot_<region>_<key id>_…`)."))
}

fn no_client() -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no client with id {SAMPLE_CLIENT}"))
}

fn too_large(op: Op) -> Op {
    op.error(
        "The body is over 1 MiB.",
        &[ApiError::new(ErrorCode::PayloadTooLarge, "the body is larger than 1048576 bytes")],
    )
}

fn list_clients() -> Op {
    let description = "In id order, with cursor pagination. Never a key.";
    let op = op(HttpMethod::Get, "/ops/v1/clients", Role::Viewer, "opsListClients", "Clients", description)
        .query::<handler::ClientQuery>()
        .listing_response::<ClientSummary>(
            "A page of clients.",
            json!({ "items": [sample_client()], "next_cursor": null }),
        );
    bad_input(
        op,
        &[
            ApiError::validation("status", "must be active or suspended"),
            ApiError::validation("limit", format!("must be 1 to {MAX_LIMIT}")),
            ApiError::validation("cursor", "is not a cursor this API returned"),
            unknown_parameter::<handler::ClientQuery>(),
        ],
    )
}

fn create_client() -> Op {
    let description = "In this origin's region. Answers the client as `GET /ops/v1/clients/{id}` does, with no key \
                       yet. Audited as `client.create`.";
    let op = op(HttpMethod::Post, "/ops/v1/clients", Role::Admin, "opsCreateClient", "Create a client", description)
        .json_body::<handler::NewClient>("The client.", json!({ "name": "Shop" }))
        .json_response::<ClientDetail>(201, "Created.", new_client_detail(), &[]);
    let op = bad_input(
        op,
        &[
            ApiError::validation("body", "a JSON object is required"),
            bad_body::<handler::NewClient>("{}"),
            ApiError::validation("name", "must be 1-200 characters"),
        ],
    );
    too_large(op)
}

fn show_client() -> Op {
    let description = "The client and every one of its keys, newest first. Never a secret.";
    let op = op(HttpMethod::Get, "/ops/v1/clients/{id}", Role::Viewer, "opsShowClient", "One client", description);
    let op =
        client_id_param(op).json_response::<ClientDetail>(200, "The client and its keys.", sample_client_detail(), &[]);
    bad_input(op, &[ApiError::validation("id", "must be a UUID")]).error("No client has this id.", &[no_client()])
}

/// Suspend or resume: no body, answers the status now.
fn change_status(path: &'static str, operation_id: &str, summary: &str, description: &str, now: &str) -> Op {
    let op = op(HttpMethod::Post, path, Role::Admin, operation_id, summary, description);
    let op = client_id_param(op).json_response::<ClientStatusChange>(
        200,
        "The client's status now.",
        json!({ "id": SAMPLE_CLIENT, "status": now, "changed": true }),
        &[],
    );
    bad_input(op, &[ApiError::validation("id", "must be a UUID")]).error("No client has this id.", &[no_client()])
}

fn suspend_client() -> Op {
    let description = "No body. Every key of the client gets `403 FORBIDDEN` on the public API within the key \
                       cache's TTL (`ALLOT_KEY_CACHE_TTL_MS`). Suspending a suspended client answers \
                       `changed: false` and writes nothing; a change is audited as `client.suspend`.";
    change_status("/ops/v1/clients/{id}/suspend", "opsSuspendClient", "Suspend a client", description, "suspended")
}

fn resume_client() -> Op {
    let description = "No body. The client's keys work again within the key cache's TTL. Resuming an active client \
                       answers `changed: false` and writes nothing; a change is audited as `client.resume`.";
    change_status("/ops/v1/clients/{id}/resume", "opsResumeClient", "Resume a client", description, "active")
}

fn set_rate_limit() -> Op {
    let description = "`per_minute` at least 1, or null for the configured default \
                       (`ALLOT_CLIENT_RATE_LIMIT_PER_MINUTE`); takes effect within the key cache's TTL. Audited as \
                       `client.rate_limit`.";
    let op = op(
        HttpMethod::Put,
        "/ops/v1/clients/{id}/rate-limit",
        Role::Admin,
        "opsSetClientRateLimit",
        "Set a client's rate limit",
        description,
    );
    let op = client_id_param(op)
        .json_body::<handler::RateLimitBody>("The limit, or null for the default.", json!({ "per_minute": 1200 }))
        .json_response::<RateLimitSet>(
            200,
            "The limit now.",
            json!({ "id": SAMPLE_CLIENT, "rate_limit_per_minute": 1200 }),
            &[],
        );
    let op = bad_input(
        op,
        &[
            ApiError::validation("id", "must be a UUID"),
            ApiError::validation("body", "a JSON object is required"),
            ApiError::validation("per_minute", "is required (a number, or null for the default)"),
            bad_body::<handler::RateLimitBody>(r#"{"per_minute":"ten"}"#),
            ApiError::validation("per_minute", "must be at least 1 request per minute"),
            ApiError::validation("per_minute", "is too large"),
        ],
    )
    .error("No client has this id.", &[no_client()]);
    too_large(op)
}

fn issue_key() -> Op {
    let description = "Body `{\"label\": \"…\"}` or `{}`. The key is in this response only (stored as a digest) \
                       and works at once. Audited as `key.issue` (target: the key id).";
    let op =
        op(HttpMethod::Post, "/ops/v1/clients/{id}/keys", Role::Admin, "opsIssueKey", "Issue an API key", description);
    let op = client_id_param(op)
        .json_body::<handler::NewKey>("The key's label.", json!({ "label": "shop" }))
        .json_response::<IssuedKey>(
            201,
            "Issued; keep the key now.",
            json!({
                "client_id": SAMPLE_CLIENT, "key_id": "Ef56GhJk78LmNp90", "label": "shop",
                "key": "allot_eu_Ef56GhJk78LmNp90_…"
            }),
            &[],
        );
    let op = bad_input(
        op,
        &[
            ApiError::validation("id", "must be a UUID"),
            ApiError::validation("body", "a JSON object is required"),
            ApiError::validation("label", "must be at most 200 characters"),
        ],
    )
    .error("No client has this id.", &[no_client()]);
    too_large(op)
}

fn revoke_key() -> Op {
    let description = "No body. Every instance refuses the key (`401`) within the key cache's TTL. Audited as \
                       `key.revoke`.";
    let op =
        op(HttpMethod::Post, "/ops/v1/keys/{key_id}/revoke", Role::Admin, "opsRevokeKey", "Revoke a key", description);
    key_id_param(op)
        .json_response::<RevokedKey>(200, "Revoked.", json!({ "key_id": "Ab12Cd34Ef56Gh78", "revoked": true }), &[])
        .error(
            "No unrevoked key has this id.",
            &[ApiError::new(ErrorCode::NotFound, "no active key with id Ab12Cd34Ef56Gh78")],
        )
}

fn rotate_key() -> Op {
    let max = MAX_ROTATION_OVERLAP.whole_seconds();
    let description = format!(
        "Exactly one of `overlap_secs` (0 to {max}) and `until` (from now to 30 days ahead). Issues a new key for \
         the same client and label, live at once, and gives the old key `expires_at`: it works until then and \
         gets `401` after. Only a live key can be rotated (not a revoked one, nor one already rotated out). \
         Audited as `key.rotate` (target: the old key id)."
    );
    let op =
        op(HttpMethod::Post, "/ops/v1/keys/{key_id}/rotate", Role::Admin, "opsRotateKey", "Rotate a key", &description);
    let op = key_id_param(op)
        .json_body::<handler::RotateBody>("When the old key stops.", json!({ "overlap_secs": 3600 }))
        .json_response::<RotatedKey>(
            201,
            "Rotated; keep the new key now.",
            json!({
                "client_id": SAMPLE_CLIENT, "key_id": "Ef56GhJk78LmNp90", "label": "shop",
                "key": "allot_eu_Ef56GhJk78LmNp90_…",
                "old_key": { "key_id": "Ab12Cd34Ef56Gh78", "expires_at": "2026-11-27T11:30:00Z" }
            }),
            &[],
        );
    // The service names the old expiry in time's own display form, not RFC 3339.
    let rotated_out = datetime!(2026-11-27 11:30:00 UTC);
    let op = bad_input(
        op,
        &[
            ApiError::validation("body", "a JSON object is required"),
            ApiError::validation("body", "give exactly one of overlap_secs and until"),
            bad_body::<handler::RotateBody>(r#"{"until":"tomorrow"}"#),
            ApiError::validation("overlap_secs", format!("must be 0 to {max}")),
            ApiError::validation("until", "must not be in the past"),
            ApiError::validation("until", "must be within 30 days"),
            ApiError::validation("key_id", "the key is revoked; issue a new key instead"),
            ApiError::validation(
                "key_id",
                format!("the key is already rotated out (it expires at {rotated_out}); rotate its successor instead"),
            ),
        ],
    )
    .error("No key has this id.", &[ApiError::new(ErrorCode::NotFound, "no key with id Ab12Cd34Ef56Gh78")]);
    too_large(op)
}

/// The clients and keys operations, in the order of `ROUTES`.
pub fn operations() -> Vec<Op> {
    vec![
        list_clients(),
        create_client(),
        show_client(),
        suspend_client(),
        resume_client(),
        set_rate_limit(),
        issue_key(),
        revoke_key(),
        rotate_key(),
    ]
}
