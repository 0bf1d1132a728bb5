//! Console sessions: a random secret in an HttpOnly cookie, its digest in `console_sessions`,
//! one CSRF token per session, and a one-shot notice for the next page.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::AppError;
use crate::ops::operators::{Operator, Role};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "allot_console";
/// The sign-in form's CSRF cookie (double submit: there is no session yet).
pub const SIGN_IN_COOKIE: &str = "allot_console_sign_in";
/// Every console cookie is scoped to the console's paths.
const COOKIE_PATH: &str = "/ops";

/// A signed-in operator's session, as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who is signed in (re-read from `operators` on every request).
    pub operator: Operator,
    /// The token every form and script request must echo.
    pub csrf_token: String,
    /// What the last action left to say, shown once.
    pub notice: Option<Notice>,
    digest: [u8; 32],
}

/// A one-shot message for the next page: the outcome of a form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Whether it reports a failure.
    pub error: bool,
    /// What to say, in words.
    pub text: String,
}

impl Notice {
    /// A success.
    pub fn done(text: impl Into<String>) -> Self {
        Self { error: false, text: text.into() }
    }

    /// A failure.
    pub fn failed(text: impl Into<String>) -> Self {
        Self { error: true, text: text.into() }
    }
}

/// 32 random bytes, URL-safe base64 (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether two tokens are equal, in constant time.
pub fn tokens_match(expected: &str, given: &str) -> bool {
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Start a session for `operator`, in the caller's transaction; returns the cookie's secret.
pub async fn start(tx: &mut PgConnection, operator: &Operator, lifetime: Duration) -> Result<String, AppError> {
    let secret = random_token();
    sqlx::query(
        "INSERT INTO console_sessions (id_digest, operator_id, csrf_token, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(&digest(&secret)[..])
    .bind(operator.id)
    .bind(random_token())
    .bind(lifetime.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    Ok(secret)
}

#[derive(sqlx::FromRow)]
struct LiveRow {
    id: Uuid,
    name: String,
    role: String,
    csrf_token: String,
    notice: Option<sqlx::types::Json<Notice>>,
}

#[derive(sqlx::FromRow)]
struct PeekRow {
    #[sqlx(flatten)]
    live: LiveRow,
    touch_due: bool,
}

/// How stale `last_seen_at` may get before a request writes it again: most page views are one
/// read, and idle expiry is exact to within this.
const TOUCH_EVERY_SECS: f64 = 30.0;

/// The live session's row, read without a lock: is a touch or a notice due?
const PEEK: &str = "SELECT o.id, o.name, o.role, s.csrf_token,
        CASE WHEN $3 THEN s.notice END AS notice,
        s.last_seen_at < now() - make_interval(secs => $4) AS touch_due
   FROM console_sessions s JOIN operators o ON o.id = s.operator_id
  WHERE s.id_digest = $1 AND s.ended_at IS NULL AND s.expires_at > now()
    AND s.last_seen_at > now() - make_interval(secs => $2)
    AND o.revoked_at IS NULL AND o.expires_at > now()";

/// The same, locked and written: the notice it returns is the one it clears.
const TOUCH: &str = "WITH live AS (
     SELECT s.id_digest, s.csrf_token, s.notice, o.id, o.name, o.role
       FROM console_sessions s JOIN operators o ON o.id = s.operator_id
      WHERE s.id_digest = $1 AND s.ended_at IS NULL AND s.expires_at > now()
        AND s.last_seen_at > now() - make_interval(secs => $2)
        AND o.revoked_at IS NULL AND o.expires_at > now()
        FOR UPDATE OF s
 ), touched AS (
     UPDATE console_sessions s
        SET last_seen_at = now(), notice = CASE WHEN $3 THEN NULL ELSE s.notice END
       FROM live WHERE s.id_digest = live.id_digest
 )
 SELECT id, name, role, csrf_token, CASE WHEN $3 THEN notice END AS notice FROM live";

/// The live session a cookie's secret names. `None` when it is unknown, ended, idle too long,
/// past its end, or its operator's token is revoked or expired. `take_notice` returns and
/// clears its notice (pages do; script requests do not). Idle expiry starts again: the row is
/// written when its last sight is 30 s old or a notice is taken, else only read.
pub async fn resume(
    pool: &PgPool,
    secret: &str,
    idle: Duration,
    take_notice: bool,
) -> Result<Option<Session>, AppError> {
    let digest = digest(secret);
    let peek: Option<PeekRow> = sqlx::query_as(PEEK)
        .bind(&digest[..])
        .bind(idle.as_secs_f64())
        .bind(take_notice)
        .bind(TOUCH_EVERY_SECS)
        .fetch_optional(pool)
        .await?;
    let Some(PeekRow { live, touch_due }) = peek else { return Ok(None) };
    let row = if touch_due || live.notice.is_some() {
        let touched: Option<LiveRow> = sqlx::query_as(TOUCH)
            .bind(&digest[..])
            .bind(idle.as_secs_f64())
            .bind(take_notice)
            .fetch_optional(pool)
            .await?;
        let Some(row) = touched else { return Ok(None) };
        row
    } else {
        live
    };
    let role = Role::parse(&row.role).map_err(|e| AppError::Internal(anyhow::anyhow!("stored role: {e}")))?;
    Ok(Some(Session {
        operator: Operator { id: row.id, name: row.name, role },
        csrf_token: row.csrf_token,
        notice: row.notice.map(|n| n.0),
        digest,
    }))
}

impl Session {
    /// Leave a notice for the next page.
    pub async fn notify(&self, pool: &PgPool, notice: Notice) -> Result<(), AppError> {
        sqlx::query("UPDATE console_sessions SET notice = $2 WHERE id_digest = $1")
            .bind(&self.digest[..])
            .bind(sqlx::types::Json(notice))
            .execute(pool)
            .await?;
        Ok(())
    }

    /// End the session (sign-out), in the caller's transaction; its cookie is worthless from
    /// now on.
    pub async fn end(&self, tx: &mut PgConnection) -> Result<(), AppError> {
        sqlx::query("UPDATE console_sessions SET ended_at = now() WHERE id_digest = $1 AND ended_at IS NULL")
            .bind(&self.digest[..])
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// A cookie's value from the request, if it is there.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request reached us over TLS (through a proxy that says so).
pub fn over_tls(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split([';', ',']).any(|p| p.trim().eq_ignore_ascii_case("proto=https")));
    forwarded_proto || forwarded
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, scoped to `/ops`, Secure behind TLS; a
/// `None` value clears the cookie.
pub fn set_cookie(name: &str, value: Option<&str>, secure: bool) -> HeaderValue {
    let mut cookie = match value {
        Some(v) => format!("{name}={v}; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict"),
        None => format!("{name}=; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict; Max-Age=0"),
    };
    if secure {
        cookie.push_str("; Secure");
    }
    // Our names and base64url values are visible ASCII.
    HeaderValue::from_str(&cookie).expect("cookie values are visible ASCII")
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::*;

    #[test]
    fn cookies_are_read_by_name_from_every_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; allot_console=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "allot_console"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "allot"), None);
    }

    #[test]
    fn a_session_cookie_is_http_only_strict_and_secure_only_behind_tls() {
        let plain = set_cookie(SESSION_COOKIE, Some("s"), false);
        assert_eq!(plain, "allot_console=s; Path=/ops; HttpOnly; SameSite=Strict");
        let tls = set_cookie(SESSION_COOKIE, Some("s"), true);
        assert!(tls.to_str().unwrap().ends_with("; Secure"));
        assert!(set_cookie(SESSION_COOKIE, None, false).to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn tls_is_read_from_either_forwarding_header() {
        let mut h = HeaderMap::new();
        assert!(!over_tls(&h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        assert!(over_tls(&h));
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, HeaderValue::from_static("for=1.2.3.4;proto=https"));
        assert!(over_tls(&h));
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(tokens_match(&a, &a.clone()));
        assert!(!tokens_match(&a, &b));
        assert!(!tokens_match(&a, &a[..42]));
    }
}
