//! The operator console: server-rendered pages under `/ops/` on the operator listener. Sign-in
//! with an operator token gives a session cookie; every form carries the session's CSRF token;
//! each route has a least role (the [`ROUTES`] table), the same as the API route it acts as.

pub mod assets;
pub mod audit;
pub mod cards;
pub mod chart;
pub mod clients;
pub mod funding;
pub mod imports;
pub mod jobs;
pub mod layout;
pub mod session;
pub mod sign_in;
pub mod stock;

use allot_shared::{ApiError, ErrorCode};
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use super::AppState;
use super::middleware::RequestId;
use crate::error::AppError;
use crate::ops::Actor;
use crate::ops::operators::Role;
use session::{Notice, Session};

/// What a console route answers with, which decides how it is guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A page (GET, HTML); shows and clears the session's notice.
    Page,
    /// A form's target (POST, urlencoded, CSRF token in the body); redirects to a page.
    Form,
    /// A request of the console's script (JSON; CSRF token in `x-csrf-token` unless GET).
    Script,
}

/// One console route, its least role, and the operator API route it acts as (whose role it
/// must have: a test checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleRoute {
    /// HTTP method.
    pub method: &'static str,
    /// The route as the router matches it.
    pub path: &'static str,
    /// What it answers with.
    pub kind: Kind,
    /// The least role allowed.
    pub role: Role,
    /// The API route (method, path) doing the same, if it changes or reveals something.
    pub acts_as: Option<(&'static str, &'static str)>,
}

const fn page(path: &'static str) -> ConsoleRoute {
    ConsoleRoute { method: "GET", path, kind: Kind::Page, role: Role::Viewer, acts_as: None }
}

const fn form(path: &'static str, role: Role, api: (&'static str, &'static str)) -> ConsoleRoute {
    ConsoleRoute { method: "POST", path, kind: Kind::Form, role, acts_as: Some(api) }
}

/// Every console route behind sign-in. A route missing here answers 404.
pub const ROUTES: &[ConsoleRoute] = &[
    page("/ops/"),
    ConsoleRoute { method: "POST", path: "/ops/sign-out", kind: Kind::Form, role: Role::Viewer, acts_as: None },
    page("/ops/stock"),
    form("/ops/stock/threshold", Role::Operator, ("PUT", "/ops/v1/stock/{product_id}/{denomination}/threshold")),
    page("/ops/imports"),
    page("/ops/imports/{id}"),
    ConsoleRoute {
        method: "POST",
        path: "/ops/imports/upload",
        kind: Kind::Script,
        role: Role::Operator,
        acts_as: Some(("POST", "/ops/v1/imports")),
    },
    ConsoleRoute {
        method: "GET",
        path: "/ops/imports/{id}/progress",
        kind: Kind::Script,
        role: Role::Viewer,
        acts_as: None,
    },
    form("/ops/imports/{id}/void", Role::Operator, ("POST", "/ops/v1/voids")),
    page("/ops/cards"),
    form("/ops/cards/void", Role::Operator, ("POST", "/ops/v1/voids")),
    page("/ops/allocations/{id}"),
    ConsoleRoute {
        method: "GET",
        path: "/ops/allocations/{id}/reveal",
        kind: Kind::Page,
        role: Role::Admin,
        acts_as: Some(("POST", "/ops/v1/allocations/{id}/reveal")),
    },
    form("/ops/allocations/{id}/reveal", Role::Admin, ("POST", "/ops/v1/allocations/{id}/reveal")),
    page("/ops/clients"),
    form("/ops/clients", Role::Admin, ("POST", "/ops/v1/clients")),
    page("/ops/clients/{id}"),
    form("/ops/clients/{id}/suspend", Role::Admin, ("POST", "/ops/v1/clients/{id}/suspend")),
    form("/ops/clients/{id}/resume", Role::Admin, ("POST", "/ops/v1/clients/{id}/resume")),
    form("/ops/clients/{id}/rate-limit", Role::Admin, ("PUT", "/ops/v1/clients/{id}/rate-limit")),
    form("/ops/clients/{id}/keys", Role::Admin, ("POST", "/ops/v1/clients/{id}/keys")),
    form("/ops/keys/{key_id}/revoke", Role::Admin, ("POST", "/ops/v1/keys/{key_id}/revoke")),
    form("/ops/keys/{key_id}/rotate", Role::Admin, ("POST", "/ops/v1/keys/{key_id}/rotate")),
    form("/ops/clients/{id}/funding", Role::Admin, ("PUT", "/ops/v1/clients/{id}/funding/{currency}")),
    form(
        "/ops/clients/{id}/funding/{currency}/deposit",
        Role::Operator,
        ("POST", "/ops/v1/clients/{id}/funding/{currency}/deposits"),
    ),
    ConsoleRoute {
        method: "GET",
        path: "/ops/clients/{id}/funding/{currency}/statement.csv",
        kind: Kind::Page,
        role: Role::Viewer,
        acts_as: Some(("GET", "/ops/v1/clients/{id}/funding/{currency}/statement.csv")),
    },
    page("/ops/jobs"),
    form("/ops/jobs/{name}/pause", Role::Operator, ("POST", "/ops/v1/jobs/{name}/pause")),
    form("/ops/jobs/{name}/resume", Role::Operator, ("POST", "/ops/v1/jobs/{name}/resume")),
    form("/ops/jobs/{name}/run", Role::Operator, ("POST", "/ops/v1/jobs/{name}/run")),
    page("/ops/audit"),
];

/// The console route a request matched, if it is one.
pub fn route_of(method: &Method, path: &str) -> Option<&'static ConsoleRoute> {
    ROUTES.iter().find(|r| r.method == method.as_str() && r.path == path)
}

/// Whether `role` may use the console route `method path` (pages hide what it may not).
pub fn may(role: Role, method: &str, path: &str) -> bool {
    ROUTES.iter().find(|r| r.method == method && r.path == path).is_some_and(|r| role.allows(r.role))
}

/// The console's routes (layered by the operator router): sign-in and assets without a
/// session, everything in [`ROUTES`] behind one.
pub fn router(state: &AppState) -> Router<AppState> {
    let signed_in = Router::new()
        .route("/ops/", get(|| async { Redirect::to("/ops/stock") }))
        .route("/ops/sign-out", post(sign_in::sign_out))
        .route("/ops/stock", get(stock::page))
        .route("/ops/stock/threshold", post(stock::set_threshold))
        .route("/ops/imports", get(imports::page))
        .route("/ops/imports/{id}", get(imports::detail))
        .route("/ops/imports/{id}/progress", get(imports::progress))
        .route("/ops/imports/{id}/void", post(imports::void))
        .route("/ops/cards", get(cards::page))
        .route("/ops/cards/void", post(cards::void))
        .route("/ops/allocations/{id}", get(cards::allocation))
        .route("/ops/allocations/{id}/reveal", get(cards::confirm_reveal).post(cards::reveal))
        .route("/ops/clients", get(clients::page).post(clients::create))
        .route("/ops/clients/{id}", get(clients::detail))
        .route("/ops/clients/{id}/suspend", post(clients::suspend))
        .route("/ops/clients/{id}/resume", post(clients::resume))
        .route("/ops/clients/{id}/rate-limit", post(clients::rate_limit))
        .route("/ops/clients/{id}/keys", post(clients::issue_key))
        .route("/ops/keys/{key_id}/revoke", post(clients::revoke_key))
        .route("/ops/keys/{key_id}/rotate", post(clients::rotate_key))
        .route("/ops/clients/{id}/funding", post(funding::set_account))
        .route("/ops/clients/{id}/funding/{currency}/deposit", post(funding::deposit))
        .route("/ops/clients/{id}/funding/{currency}/statement.csv", get(funding::statement))
        .route("/ops/jobs", get(jobs::page))
        .route("/ops/jobs/{name}/pause", post(jobs::pause))
        .route("/ops/jobs/{name}/resume", post(jobs::resume))
        .route("/ops/jobs/{name}/run", post(jobs::run))
        .route("/ops/audit", get(audit::page))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access));
    Router::new()
        .route("/ops", get(|| async { Redirect::to("/ops/stock") }))
        .route("/ops/sign-in", get(sign_in::page).post(sign_in::sign_in))
        .route("/ops/assets/{name}", get(assets::serve))
        .route("/ops/{*rest}", axum::routing::any(not_found))
        .merge(signed_in)
        .layer(axum::middleware::from_fn(security_headers))
}

/// The console's upload (`POST /ops/imports/upload`): the import limit is its deadline.
pub fn upload_router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/ops/imports/upload", post(imports::upload))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access))
        .route_layer(axum::middleware::from_fn_with_state(state.config.import_timeout, super::middleware::deadline))
        .layer(axum::middleware::from_fn(security_headers))
}

/// The Content-Security-Policy of every console response: nothing inline, nothing from
/// elsewhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Unknown console paths get a page; unknown API paths keep the API's JSON answer.
async fn not_found(req: Request) -> Response {
    if req.uri().path().starts_with("/ops/v1/") {
        return super::middleware::not_found(req).await;
    }
    ConsoleError::from(AppError::api(ErrorCode::NotFound, "there is no such page")).into_response()
}

/// Largest form body the console reads: room for a void of 10,000 card ids.
const MAX_FORM_BYTES: usize = 256 * 1024;

/// The session check of every route in [`ROUTES`]: sign-in, role, and CSRF token.
async fn access(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let Some(route) = route_of(req.method(), &path) else {
        tracing::error!(method = %req.method(), route = %path, "console route without a role in ROUTES");
        return ConsoleError::from(AppError::api(ErrorCode::NotFound, "there is no such page")).into_response();
    };
    match admit(&st, route, req).await {
        Ok(req) => next.run(req).await,
        Err(resp) => resp,
    }
}

async fn admit(st: &AppState, route: &ConsoleRoute, mut req: Request) -> Result<Request, Response> {
    let secret = session::cookie(req.headers(), session::SESSION_COOKIE).map(str::to_owned);
    let live = match secret {
        Some(s) => session::resume(&st.db.primary, &s, st.config.console_idle, route.kind == Kind::Page)
            .await
            .map_err(|e| refuse(route, e))?,
        None => None,
    };
    let Some(session) = live else { return Err(signed_out(route, &req)) };
    if !session.operator.role.allows(route.role) {
        let message =
            format!("this needs the {} role; you are {}", route.role.as_str(), session.operator.role.as_str());
        return Err(refuse(route, AppError::api(ErrorCode::Forbidden, message)));
    }
    if req.method() != Method::GET {
        req = check_csrf(route, &session, req).await?;
    }
    req.extensions_mut().insert(session);
    Ok(req)
}

/// A form's `csrf` field or a script's `x-csrf-token` header must be the session's token.
async fn check_csrf(route: &ConsoleRoute, session: &Session, req: Request) -> Result<Request, Response> {
    let refused = || {
        let message = "the form's security token is missing or out of date; nothing was changed. \
                       Reload the page and try again";
        refuse(route, AppError::api(ErrorCode::Forbidden, message))
    };
    if route.kind == Kind::Script {
        let given = req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
        return if session::tokens_match(&session.csrf_token, given) { Ok(req) } else { Err(refused()) };
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| {
        refuse(
            route,
            AppError::api(ErrorCode::PayloadTooLarge, format!("the form is larger than {MAX_FORM_BYTES} bytes")),
        )
    })?;
    let given = form_urlencoded::parse(&bytes).find(|(k, _)| k == "csrf").map(|(_, v)| v.into_owned());
    if !given.is_some_and(|g| session::tokens_match(&session.csrf_token, &g)) {
        return Err(refused());
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

/// Without a live session: pages go to sign-in (and come back), forms say the session ended,
/// scripts get `401`.
fn signed_out(route: &ConsoleRoute, req: &Request) -> Response {
    match route.kind {
        Kind::Page => {
            let back = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/ops/stock");
            let next: String = form_urlencoded::byte_serialize(back.as_bytes()).collect();
            Redirect::to(&format!("/ops/sign-in?next={next}")).into_response()
        }
        Kind::Form => Redirect::to("/ops/sign-in?ended=1").into_response(),
        Kind::Script => {
            AppError::api(ErrorCode::Unauthorized, "the console session has ended; sign in again").into_response()
        }
    }
}

fn refuse(route: &ConsoleRoute, e: AppError) -> Response {
    match route.kind {
        Kind::Script => e.into_response(),
        Kind::Page | Kind::Form => ConsoleError::from(e).into_response(),
    }
}

/// A signed-in request: the session, the audit actor, and the region the console runs in.
#[derive(Debug, Clone)]
pub struct Console {
    /// The session.
    pub session: Session,
    /// Who changes are audited as: the operator, with the request id.
    pub actor: Actor,
    /// The region's name, shown on every page.
    pub region: String,
}

impl Console {
    /// Whether this operator may use `method path` (to show or hide its button).
    pub fn may(&self, method: &str, path: &str) -> bool {
        may(self.session.operator.role, method, path)
    }

    /// Leave `notice` and go to `to` (the end of every form).
    pub async fn redirect(&self, st: &AppState, notice: Notice, to: &str) -> Result<Response, ConsoleError> {
        self.session.notify(&st.db.primary, notice).await?;
        Ok(Redirect::to(to).into_response())
    }

    /// The outcome of a form's action: its success notice, or its error in words; then `to`.
    pub async fn finish(
        &self,
        st: &AppState,
        outcome: Result<String, AppError>,
        to: &str,
    ) -> Result<Response, ConsoleError> {
        let notice = match outcome {
            Ok(text) => Notice::done(text),
            Err(e @ (AppError::Database(_) | AppError::Internal(_))) => return Err(e.into()),
            Err(AppError::Api(e)) => Notice::failed(words(&e)),
        };
        self.redirect(st, notice, to).await
    }
}

impl FromRequestParts<AppState> for Console {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let session = parts.extensions.get::<Session>().cloned().ok_or_else(|| {
            ConsoleError(AppError::Internal(anyhow::anyhow!("console route reached without the session check")))
        })?;
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        let actor = Actor::operator(session.operator.id, request_id.as_deref());
        Ok(Self { session, actor, region: st.config.region.as_str().to_owned() })
    }
}

/// An error said in words, without codes or JSON.
pub fn words(e: &ApiError) -> String {
    let mut text = e.message.clone();
    if let Some(first) = e.details.as_ref().and_then(|d| d.get("problems")).and_then(|p| p.get(0)) {
        let line = first.get("line").and_then(|l| l.as_u64()).map(|l| format!("line {l}: ")).unwrap_or_default();
        let problem = first.get("problem").and_then(|p| p.as_str()).unwrap_or("");
        text.push_str(&format!(" (first: {line}{problem})"));
    }
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect::<String>() + ".",
        None => text,
    }
}

/// A form body, refused with a page naming what is wrong.
pub struct FormOf<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for FormOf<T> {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, st: &S) -> Result<Self, Self::Rejection> {
        axum::Form::<T>::from_request(req, st)
            .await
            .map(|f| FormOf(f.0))
            .map_err(|e| ApiError::validation("form", e.body_text()).into())
    }
}

/// A console failure, answered as a page that says what went wrong.
#[derive(Debug)]
pub struct ConsoleError(pub AppError);

impl From<AppError> for ConsoleError {
    fn from(e: AppError) -> Self {
        ConsoleError(e)
    }
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        ConsoleError(e.into())
    }
}

impl From<sqlx::Error> for ConsoleError {
    fn from(e: sqlx::Error) -> Self {
        ConsoleError(e.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let api = self.0.to_api_error();
        match &self.0 {
            AppError::Api(_) => {}
            AppError::Database(e) if crate::error::is_unavailable(e) => {
                crate::outage::POSTGRES.failed("console", e);
            }
            other => tracing::error!(error = %other, "console request failed"),
        }
        let status = StatusCode::from_u16(api.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, layout::error_page(status, &words(&api))).into_response()
    }
}
