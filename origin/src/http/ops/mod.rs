//! The operator API, `/ops/v1/…` on the operator listener: bearer operator tokens, one role per
//! route (the [`ROUTES`] table), and the extractors its handlers share.

pub mod cards;
pub mod clients;
pub mod events;
pub mod funding;
pub mod imports;
pub mod jobs;
pub mod operators;
pub mod stock;
pub mod webhooks;

use allot_shared::{ApiError, ErrorCode, request_headers};
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;

use super::AppState;
use super::middleware::RequestId;
use crate::error::AppError;
use crate::ops::Actor;
use crate::ops::operators::{self as operator_store, Operator, Role};

/// One operator route and the least role that may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpsRoute {
    /// HTTP method.
    pub method: &'static str,
    /// The route as the router matches it.
    pub path: &'static str,
    /// The least role allowed.
    pub role: Role,
}

const fn route(method: &'static str, path: &'static str, role: Role) -> OpsRoute {
    OpsRoute { method, path, role }
}

/// Every operator route with its role: the access check reads it, and the role matrix test
/// walks it. A route missing here answers 404 to everyone.
pub const ROUTES: &[OpsRoute] = &[
    route("GET", "/ops/v1/me", Role::Viewer),
    route("GET", "/ops/v1/audit", Role::Viewer),
    route("GET", "/ops/v1/operators", Role::Admin),
    route("POST", "/ops/v1/operators", Role::Admin),
    route("POST", "/ops/v1/operators/{id}/revoke", Role::Admin),
    route("GET", "/ops/v1/stock", Role::Viewer),
    route("PUT", "/ops/v1/stock/{product_id}/{denomination}/threshold", Role::Operator),
    route("GET", "/ops/v1/jobs", Role::Viewer),
    route("GET", "/ops/v1/jobs/{name}/runs", Role::Viewer),
    route("POST", "/ops/v1/jobs/{name}/pause", Role::Operator),
    route("POST", "/ops/v1/jobs/{name}/resume", Role::Operator),
    route("PUT", "/ops/v1/jobs/{name}/schedule", Role::Operator),
    route("POST", "/ops/v1/jobs/{name}/run", Role::Operator),
    route("GET", "/ops/v1/divergences", Role::Viewer),
    route("GET", "/ops/v1/imports", Role::Viewer),
    route("POST", "/ops/v1/imports", Role::Operator),
    route("GET", "/ops/v1/imports/{id}", Role::Viewer),
    route("GET", "/ops/v1/clients", Role::Viewer),
    route("POST", "/ops/v1/clients", Role::Admin),
    route("GET", "/ops/v1/clients/{id}", Role::Viewer),
    route("POST", "/ops/v1/clients/{id}/suspend", Role::Admin),
    route("POST", "/ops/v1/clients/{id}/resume", Role::Admin),
    route("PUT", "/ops/v1/clients/{id}/rate-limit", Role::Admin),
    route("POST", "/ops/v1/clients/{id}/keys", Role::Admin),
    route("POST", "/ops/v1/keys/{key_id}/revoke", Role::Admin),
    route("POST", "/ops/v1/keys/{key_id}/rotate", Role::Admin),
    route("POST", "/ops/v1/voids", Role::Operator),
    route("GET", "/ops/v1/allocations", Role::Viewer),
    route("GET", "/ops/v1/allocations/{id}", Role::Viewer),
    route("POST", "/ops/v1/allocations/{id}/reveal", Role::Admin),
    route("GET", "/ops/v1/clients/{id}/webhooks", Role::Viewer),
    route("POST", "/ops/v1/clients/{id}/webhooks", Role::Admin),
    route("GET", "/ops/v1/webhooks/{id}", Role::Viewer),
    route("POST", "/ops/v1/webhooks/{id}/disable", Role::Admin),
    route("POST", "/ops/v1/webhooks/{id}/enable", Role::Admin),
    route("POST", "/ops/v1/webhooks/{id}/rotate-secret", Role::Admin),
    route("GET", "/ops/v1/webhooks/{id}/deliveries", Role::Viewer),
    route("POST", "/ops/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", Role::Operator),
    route("POST", "/ops/v1/webhooks/{id}/test", Role::Operator),
    route("GET", "/ops/v1/events", Role::Viewer),
    route("GET", "/ops/v1/clients/{id}/funding", Role::Viewer),
    route("PUT", "/ops/v1/clients/{id}/funding/{currency}", Role::Admin),
    route("POST", "/ops/v1/clients/{id}/funding/{currency}/deposits", Role::Operator),
    route("POST", "/ops/v1/clients/{id}/funding/{currency}/adjustments", Role::Admin),
    route("GET", "/ops/v1/clients/{id}/funding/{currency}/statement.csv", Role::Viewer),
    route("PUT", "/ops/v1/clients/{id}/discounts/{product_id}", Role::Admin),
    route("DELETE", "/ops/v1/clients/{id}/discounts/{product_id}", Role::Admin),
];

/// The least role for a matched route, if it is an operator route.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    ROUTES.iter().find(|r| r.method == method.as_str() && r.path == path).map(|r| r.role)
}

/// The operator API's routes (layered by the operator router).
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/ops/v1/me", get(operators::me))
        .route("/ops/v1/audit", get(operators::audit))
        .route("/ops/v1/operators", get(operators::list).post(operators::create))
        .route("/ops/v1/operators/{id}/revoke", post(operators::revoke))
        .route("/ops/v1/stock", get(stock::list))
        .route("/ops/v1/stock/{product_id}/{denomination}/threshold", put(stock::set_threshold))
        .route("/ops/v1/jobs", get(jobs::list))
        .route("/ops/v1/jobs/{name}/runs", get(jobs::runs))
        .route("/ops/v1/jobs/{name}/pause", post(jobs::pause))
        .route("/ops/v1/jobs/{name}/resume", post(jobs::resume))
        .route("/ops/v1/jobs/{name}/schedule", put(jobs::schedule))
        .route("/ops/v1/jobs/{name}/run", post(jobs::run))
        .route("/ops/v1/divergences", get(jobs::divergences))
        .route("/ops/v1/imports", get(imports::list))
        .route("/ops/v1/imports/{id}", get(imports::get_one))
        .route("/ops/v1/clients", get(clients::list).post(clients::create))
        .route("/ops/v1/clients/{id}", get(clients::show))
        .route("/ops/v1/clients/{id}/suspend", post(clients::suspend))
        .route("/ops/v1/clients/{id}/resume", post(clients::resume))
        .route("/ops/v1/clients/{id}/rate-limit", put(clients::rate_limit))
        .route("/ops/v1/clients/{id}/keys", post(clients::issue_key))
        .route("/ops/v1/keys/{key_id}/revoke", post(clients::revoke_key))
        .route("/ops/v1/keys/{key_id}/rotate", post(clients::rotate_key))
        .route("/ops/v1/voids", post(cards::void))
        .route("/ops/v1/allocations", get(cards::find))
        .route("/ops/v1/allocations/{id}", get(cards::show))
        .route("/ops/v1/allocations/{id}/reveal", post(cards::reveal))
        .route("/ops/v1/clients/{id}/webhooks", get(webhooks::list).post(webhooks::create))
        .route("/ops/v1/webhooks/{id}", get(webhooks::show))
        .route("/ops/v1/webhooks/{id}/disable", post(webhooks::disable))
        .route("/ops/v1/webhooks/{id}/enable", post(webhooks::enable))
        .route("/ops/v1/webhooks/{id}/rotate-secret", post(webhooks::rotate_secret))
        .route("/ops/v1/webhooks/{id}/deliveries", get(webhooks::list_deliveries))
        .route("/ops/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", post(webhooks::redeliver))
        .route("/ops/v1/webhooks/{id}/test", post(webhooks::send_test))
        .route("/ops/v1/events", get(events::list))
        .route("/ops/v1/clients/{id}/funding", get(funding::show))
        .route("/ops/v1/clients/{id}/funding/{currency}", put(funding::set_account))
        .route("/ops/v1/clients/{id}/funding/{currency}/deposits", post(funding::deposit))
        .route("/ops/v1/clients/{id}/funding/{currency}/adjustments", post(funding::adjust))
        .route("/ops/v1/clients/{id}/funding/{currency}/statement.csv", get(funding::statement))
        .route(
            "/ops/v1/clients/{id}/discounts/{product_id}",
            put(funding::set_discount).delete(funding::clear_discount),
        )
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access))
}

/// The import upload, `POST /ops/v1/imports`: the operator API's one route whose deadline is
/// the import limit (a large file streams for minutes), not the request limit.
pub fn upload_router(state: &AppState) -> Router<AppState> {
    let limit = state.config.import_timeout;
    Router::new()
        .route("/ops/v1/imports", post(imports::create))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access))
        .route_layer(axum::middleware::from_fn_with_state(limit, super::middleware::deadline))
}

/// Authenticate the operator token and check the route's role: `401` without a live token,
/// `403` when the role is too low.
async fn access(State(st): State<AppState>, mut req: Request, next: Next) -> Result<Response, AppError> {
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let Some(required) = required_role(req.method(), &path) else {
        tracing::error!(method = %req.method(), route = %path, "operator route without a role in ROUTES");
        return Err(AppError::api(ErrorCode::NotFound, format!("no route for {} {path}", req.method())));
    };
    let joined = super::gate::joined(req.headers(), "authorization");
    let token = request_headers::operator_token(joined.as_deref())?;
    let operator = operator_store::authenticate(&st.db.primary, &token).await?;
    if !operator.role.allows(required) {
        let message = format!("this needs the {} role; you are {}", required.as_str(), operator.role.as_str());
        return Err(AppError::api(ErrorCode::Forbidden, message));
    }
    req.extensions_mut().insert(operator);
    Ok(next.run(req).await)
}

/// The authenticated operator of a request, and the actor its changes are audited as.
#[derive(Debug, Clone)]
pub struct OpsCaller {
    /// Who.
    pub operator: Operator,
    /// The audit actor (operator id and request id).
    pub actor: Actor,
}

impl<S: Send + Sync> FromRequestParts<S> for OpsCaller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let operator =
            parts.extensions.get::<Operator>().cloned().ok_or_else(|| {
                AppError::Internal(anyhow::anyhow!("operator route reached without the access check"))
            })?;
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        let actor = Actor::operator(operator.id, request_id.as_deref());
        Ok(Self { operator, actor })
    }
}

/// Largest JSON body an operator route reads (imports stream and are not JSON).
const MAX_JSON_BODY: usize = 1 << 20;

/// A JSON body, refused with `400 VALIDATION_FAILED` naming what is wrong.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_JSON_BODY).await.map_err(|_| {
            AppError::api(ErrorCode::PayloadTooLarge, format!("the body is larger than {MAX_JSON_BODY} bytes"))
        })?;
        if bytes.is_empty() {
            return Err(ApiError::validation("body", "a JSON object is required").into());
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| ApiError::validation("body", e.to_string()).into())
    }
}

/// Query parameters, refused with `400 VALIDATION_FAILED` naming what is wrong.
pub struct QueryOf<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryOf<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded_query(query).map(QueryOf)
    }
}

/// A query string (without `?`) as `T`, refused as [`QueryOf`] refuses it.
pub fn serde_urlencoded_query<T: DeserializeOwned>(query: &str) -> Result<T, AppError> {
    axum::extract::Query::<T>::try_from_uri(&format!("/?{query}").parse().map_err(|_| bad_query("is not valid"))?)
        .map(|q| q.0)
        .map_err(|e| bad_query(&e.body_text()))
}

fn bad_query(reason: &str) -> AppError {
    ApiError::validation("query", reason.to_owned()).into()
}

/// A page of a listing: `{"items": [...], "next_cursor": "…" | null}`.
pub fn listing<T: serde::Serialize>(items: Vec<T>, next_cursor: Option<String>) -> Response {
    axum::Json(serde_json::json!({ "items": items, "next_cursor": next_cursor })).into_response()
}

/// A field that must be present and may be `null` (serde's `Option` alone makes it optional).
pub fn nullable<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(d)
}
