//! The OpenAPI 3.1 document of the public API and the operator API, built from the code: the
//! wire types' schemas come from `allot-shared` (its `openapi` feature), the operations from
//! [`public`] and [`ops`]. `allot openapi` prints it, the operator listener serves it at
//! `GET /openapi.json`, and `docs/openapi.json` is a committed copy a test keeps current.
//! The callers' part ([`public_document`]: what an API key reaches through the edge) is served
//! at `GET /v1/openapi.json` by the public listener, and by the edge from its cache.
//!
//! - [`build`]: the operation builder and its helpers
//! - [`check`]: a small JSON Schema check the tests hold examples and answers to
//! - [`gate`]: what every gated `/v1` operation shares: the gate's errors and rate-limit headers
//! - [`public`]: `/v1/…`, `/livez`, `/readyz` (tags `allocations`, `catalogue`, `health`)
//! - [`funding`]: `/v1/balance`, `/v1/ledger` (tag `funding`) and the allocations' `402`
//! - [`ops`]: `/ops/v1/…` (tag `operators`), one entry per row of `http::ops::ROUTES`

pub mod build;
pub mod check;
pub mod funding;
pub mod gate;
pub mod ops;
pub mod public;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use allot_shared::{ApiError, ErrorCode, request_headers};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, ServerBuilder};

use build::{NamedSchema, Op, error_response};

use crate::ops::operators::Role;

/// The public API's security scheme: `Authorization: Bearer <API key>`.
pub const API_KEY_SCHEME: &str = "api_key";
/// The operator API's security scheme: `Authorization: Bearer <operator token>`.
pub const OPERATOR_TOKEN_SCHEME: &str = "operator_token";
/// The extension on each operator operation naming its least role (`viewer`, `operator`, `admin`).
pub const LEAST_ROLE_EXTENSION: &str = "x-allot-least-role";

/// Tag of the allocation operations.
pub const TAG_ALLOCATIONS: &str = "allocations";
/// Tag of the catalogue.
pub const TAG_CATALOGUE: &str = "catalogue";
/// Tag of the health checks.
pub const TAG_HEALTH: &str = "health";
/// Tag of the operator API.
pub const TAG_OPERATORS: &str = "operators";
/// Tag of the document itself.
pub const TAG_DOCUMENT: &str = "document";
/// Tag of the callers' balances and ledger.
pub const TAG_FUNDING: &str = "funding";

/// `components.responses`: an operator request without a live token.
pub const RESPONSE_OPS_UNAUTHORIZED: &str = "OperatorUnauthorized";
/// `components.responses`: an operator whose role is below the route's.
pub const RESPONSE_OPS_FORBIDDEN: &str = "OperatorForbidden";
/// `components.responses`: an unexpected failure.
pub const RESPONSE_INTERNAL: &str = "Internal";
/// `components.responses`: the origin cannot serve right now.
pub const RESPONSE_UNAVAILABLE: &str = "Unavailable";

/// Every operation in the document: the public API's, then the operator API's.
pub fn operations() -> Vec<Op> {
    public::operations().into_iter().chain(ops::operations()).collect()
}

fn tags(with_operators: bool) -> Vec<utoipa::openapi::Tag> {
    let tag = |name: &str, description: &str| TagBuilder::new().name(name).description(Some(description)).build();
    let mut tags = vec![
        tag(TAG_ALLOCATIONS, "Allocate cards, idempotently, read an allocation back, and list yours."),
        tag(TAG_CATALOGUE, "Products, denominations and what is available."),
        tag(TAG_FUNDING, "Your prepaid balances and the ledger of every change to them."),
        tag(TAG_DOCUMENT, "This OpenAPI document, for callers; no credentials."),
        tag(TAG_HEALTH, "Liveness and readiness (application/health+json); no credentials."),
    ];
    if with_operators {
        tags.push(tag(
            TAG_OPERATORS,
            "The operator API on the private operator listener: operator tokens (`allotop_…`), one least role \
             per operation (viewer < operator < admin, in `x-allot-least-role`), every change audited.",
        ));
    }
    tags
}

fn security_schemes() -> [(&'static str, SecurityScheme); 2] {
    let bearer = |format: &str, description: &str| {
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format(format)
                .description(Some(description))
                .build(),
        )
    };
    [
        (
            API_KEY_SCHEME,
            bearer(
                "allot_<region>_<key id>_<secret><checksum>",
                "A client's API key, issued by an operator and shown once. A malformed, unknown or revoked key \
                 is 401; a suspended client's key is 403.",
            ),
        ),
        (
            OPERATOR_TOKEN_SCHEME,
            bearer(
                "allotop_<token id>_<secret><checksum>",
                "An operator's token (`allot operator create`), shown once; it expires and can be revoked.",
            ),
        ),
    ]
}

/// The responses many operations share, under `components.responses` (the operator ones only in
/// the whole document).
fn shared_responses(
    schemas: &mut Vec<NamedSchema>,
    with_operators: bool,
) -> Vec<(&'static str, utoipa::openapi::Response)> {
    let missing = match request_headers::operator_token(None) {
        Err(e) => e,
        Ok(_) => unreachable!("no header is never a token"),
    };
    let revoked = ApiError::new(ErrorCode::Unauthorized, "the operator token has been revoked");
    let expired = ApiError::new(ErrorCode::Unauthorized, "the operator token has expired");
    let forbidden = ApiError::new(ErrorCode::Forbidden, "this needs the admin role; you are viewer");
    let internal = ApiError::new(ErrorCode::Internal, "internal error");
    let unavailable = ApiError::new(ErrorCode::OriginUnavailable, "the database is unavailable; retry shortly");
    let mut responses = vec![
        (
            RESPONSE_INTERNAL,
            error_response("An unexpected failure; nothing internal is disclosed.", &[internal], schemas).build(),
        ),
        (
            RESPONSE_UNAVAILABLE,
            error_response("The origin cannot serve right now; retry after `Retry-After`.", &[unavailable], schemas)
                .build(),
        ),
    ];
    if !with_operators {
        return responses;
    }
    responses.splice(
        0..0,
        [
            (
                RESPONSE_OPS_UNAUTHORIZED,
                error_response(
                    "No live operator token: missing, malformed, unknown, expired or revoked.",
                    &[missing, revoked, expired],
                    schemas,
                )
                .build(),
            ),
            (
                RESPONSE_OPS_FORBIDDEN,
                error_response("The operator's role is below the operation's least role.", &[forbidden], schemas)
                    .build(),
            ),
        ],
    );
    responses
}

/// Register `schemas` by name; one name always means one schema.
fn register(
    named: Vec<NamedSchema>,
    into: &mut BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>>,
) {
    for (name, schema) in named {
        if let Some(existing) = into.get(&name) {
            assert!(existing == &schema, "two different schemas are both named {name}");
        }
        into.insert(name, schema);
    }
}

/// The whole document: the public API and the operator API.
pub fn document() -> OpenApi {
    assemble(operations(), true)
}

/// The callers' document: what an API key reaches through the edge (and `GET /readyz`), without
/// the operator API. Served at `GET /v1/openapi.json`.
pub fn public_document() -> OpenApi {
    assemble(public::caller_operations(), false)
}

fn assemble(ops: Vec<Op>, with_operators: bool) -> OpenApi {
    let mut schemas = BTreeMap::new();
    let mut paths = Paths::new();
    for op in ops {
        let (method, path) = (op.method.clone(), op.path);
        let (operation, named) = op.build();
        register(named, &mut schemas);
        assert!(paths.get_path_operation(path, method.clone()).is_none(), "an operation on {path} is described twice");
        paths.add_path_operation(path, vec![method], operation);
    }
    let mut shared = Vec::new();
    if with_operators {
        shared.push((Role::name().into_owned(), <Role as utoipa::PartialSchema>::schema()));
    }
    let responses = shared_responses(&mut shared, with_operators);
    register(shared, &mut schemas);
    let [api_key, operator_token] = security_schemes();
    let mut components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .responses_from_iter(responses)
        .security_scheme(api_key.0, api_key.1);
    if with_operators {
        components = components.security_scheme(operator_token.0, operator_token.1);
    }
    let description = if with_operators {
        "Card allocation. The public API is reached through the edge with an API key; the operator API \
         (tag `operators`) is served by each region's origin on its private operator listener. Every error \
         has one shape, `{\"error\": {\"code\", \"message\", \"request_id\", \"details\"}}`, and each code \
         has one HTTP status."
    } else {
        "Card allocation, for API callers: every operation an API key reaches through the edge. Send the key \
         as `Authorization: Bearer <key>`. Every error has one shape, \
         `{\"error\": {\"code\", \"message\", \"request_id\", \"details\"}}`, and each code has one HTTP \
         status; quote `X-Request-Id` (every answer carries it) to support. Rate limits show in \
         `RateLimit` and `RateLimit-Policy`, and a refusal says when to retry in `Retry-After`."
    };
    let info =
        InfoBuilder::new().title("allot").version(env!("CARGO_PKG_VERSION")).description(Some(description)).build();
    let public_server = ServerBuilder::new()
        .url("/")
        .description(Some("The public API, through the edge in front of the regions"))
        .build();
    OpenApiBuilder::new()
        .info(info)
        .servers(Some([public_server]))
        .paths(paths)
        .components(Some(components.build()))
        .tags(Some(tags(with_operators)))
        .build()
}

/// The document as pretty JSON with a final newline: what `allot openapi` prints and
/// `docs/openapi.json` holds.
pub fn pretty_json() -> String {
    let mut text = document().to_pretty_json().expect("the document serialises");
    text.push('\n');
    text
}

/// `GET /openapi.json` on the operator listener (built once per process).
pub async fn serve() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let body = DOCUMENT.get_or_init(pretty_json).clone();
    (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// The callers' document as served: its JSON and its `ETag` (a digest of the JSON).
pub struct Served {
    /// The JSON.
    pub body: Bytes,
    /// `"<16 hex digits>"`.
    pub etag: String,
}

/// The callers' document, built once per process.
pub fn public_served() -> &'static Served {
    static DOCUMENT: OnceLock<Served> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let body = serde_json::to_vec(&public_document()).expect("the document serialises");
        let digest = Sha256::digest(&body);
        Served { etag: format!("\"{}\"", hex::encode(&digest[..8])), body: Bytes::from(body) }
    })
}

/// `GET /v1/openapi.json` on the public listener: the callers' document, no credentials;
/// `304` while the caller's `If-None-Match` still matches.
pub async fn serve_public(headers_in: HeaderMap) -> Response {
    let served = public_served();
    let matches = headers_in
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == served.etag || t.trim() == "*"));
    let max_age = HeaderValue::try_from(format!("max-age={}", public::DOCUMENT_MAX_AGE_SECS))
        .expect("a number is a header value");
    let etag = HeaderValue::try_from(served.etag.as_str()).expect("hex is a header value");
    let cache = [(header::CACHE_CONTROL, max_age), (header::ETAG, etag)];
    if matches {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    let json = [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    (StatusCode::OK, cache, json, served.body.clone()).into_response()
}
