//! Signing in with an operator token (a session cookie in exchange), and signing out. Both are
//! audited: `console.sign_in`, `console.sign_out`.

use allot_shared::OperatorToken;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{self, SESSION_COOKIE, SIGN_IN_COOKIE};
use super::{Console, ConsoleError, FormOf, layout};
use crate::error::AppError;
use crate::http::AppState;
use crate::http::middleware::RequestId;
use crate::ops::audit::{self, Actor};
use crate::ops::operators::{self, Operator};

/// `GET /ops/sign-in`'s query.
#[derive(Deserialize)]
pub struct SignInQuery {
    /// Where to go once signed in (a console path).
    next: Option<String>,
    /// Set when a form found the session ended.
    ended: Option<String>,
}

/// Where to go after sign-in: a console path, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/ops/") && !n.starts_with("//") && !n.contains('\\') && n != "/ops/sign-in" => n,
        _ => "/ops/stock",
    }
}

fn form_page(status: StatusCode, next: &str, message: Option<&str>, secure: bool) -> Response {
    let token = session::random_token();
    let body: Markup = layout::bare(
        "Sign in to the allot console",
        html! {
            @if let Some(m) = message {
                p.notice.error role="alert" { (m) }
            }
            form.stack method="post" action="/ops/sign-in" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="next" value=(next);
                label for="token" {
                    "Operator token"
                    span.hint { "allotop_…, from " code { "allot operator create" } " or your admin" }
                }
                input #token type="password" name="token" required autocomplete="off" spellcheck="false" autofocus;
                button type="submit" { "Sign in" }
            }
        },
    );
    let mut resp = (status, body).into_response();
    resp.headers_mut().append(header::SET_COOKIE, session::set_cookie(SIGN_IN_COOKIE, Some(&token), secure));
    resp
}

/// The sign-in form.
pub async fn page(headers: HeaderMap, Query(q): Query<SignInQuery>) -> Response {
    let message = q.ended.is_some().then_some("Your session has ended (signed out, idle, or expired); sign in again.");
    form_page(StatusCode::OK, safe_next(q.next.as_deref()), message, session::over_tls(&headers))
}

/// The sign-in form's fields.
#[derive(Deserialize)]
pub struct SignInForm {
    csrf: String,
    token: String,
    next: Option<String>,
}

/// Check the token, start a session, set its cookie, go on.
pub async fn sign_in(
    State(st): State<AppState>,
    headers: HeaderMap,
    request_id: Option<axum::Extension<RequestId>>,
    FormOf(f): FormOf<SignInForm>,
) -> Result<Response, ConsoleError> {
    let secure = session::over_tls(&headers);
    let next = safe_next(f.next.as_deref()).to_owned();
    let expected = session::cookie(&headers, SIGN_IN_COOKIE).unwrap_or("");
    if expected.is_empty() || !session::tokens_match(expected, &f.csrf) {
        let m = "The sign-in form was out of date (or cookies are off); it has been renewed. Please try again.";
        return Ok(form_page(StatusCode::FORBIDDEN, &next, Some(m), secure));
    }
    let operator = match authenticate(&st, f.token.trim()).await {
        Ok(op) => op,
        Err(AppError::Api(e)) => {
            return Ok(form_page(StatusCode::UNAUTHORIZED, &next, Some(&super::words(&e)), secure));
        }
        Err(e) => return Err(e.into()),
    };
    let actor = Actor::operator(operator.id, request_id.as_ref().map(|r| r.0.0.as_str()));
    let mut tx = st.db.primary.begin().await?;
    let secret = session::start(&mut tx, &operator, st.config.console_session_max).await?;
    let change = serde_json::json!({ "role": operator.role.as_str() });
    audit::record(&mut tx, &actor, "console.sign_in", &operator.id.to_string(), change).await?;
    tx.commit().await?;
    let mut resp = Redirect::to(&next).into_response();
    let cookies = resp.headers_mut();
    cookies.append(header::SET_COOKIE, session::set_cookie(SESSION_COOKIE, Some(&secret), secure));
    cookies.append(header::SET_COOKIE, session::set_cookie(SIGN_IN_COOKIE, None, secure));
    Ok(resp)
}

async fn authenticate(st: &AppState, token: &str) -> Result<Operator, AppError> {
    let token =
        OperatorToken::parse(token).map_err(|e| AppError::api(allot_shared::ErrorCode::Unauthorized, e.to_string()))?;
    operators::authenticate(&st.db.primary, &token).await
}

/// End the session and clear its cookie.
pub async fn sign_out(
    State(st): State<AppState>,
    headers: HeaderMap,
    console: Console,
) -> Result<Response, ConsoleError> {
    let mut tx = st.db.primary.begin().await?;
    console.session.end(&mut tx).await?;
    let target = console.session.operator.id.to_string();
    audit::record(&mut tx, &console.actor, "console.sign_out", &target, serde_json::json!({})).await?;
    tx.commit().await?;
    let mut resp = Redirect::to("/ops/sign-in").into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, session::set_cookie(SESSION_COOKIE, None, session::over_tls(&headers)));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn sign_in_only_returns_to_console_paths() {
        assert_eq!(safe_next(Some("/ops/audit?actor=x")), "/ops/audit?actor=x");
        for bad in ["https://evil.example/", "//evil.example/ops/", "/ops\\..", "/metrics", "/ops/sign-in"] {
            assert_eq!(safe_next(Some(bad)), "/ops/stock", "{bad}");
        }
        assert_eq!(safe_next(None), "/ops/stock");
    }
}
