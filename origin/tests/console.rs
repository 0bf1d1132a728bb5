//! The operator console over HTTP, against a real server, Postgres and Valkey: sign-in and its
//! cookie, sessions ending (sign-out, idle, absolute end, revoked token), the CSRF token on
//! every form, the role of every route, and the security headers. The browser tests
//! (tests/console.test.mjs) drive the same pages in Chromium.

mod common;

use allot_origin::http::console::{CONTENT_SECURITY_POLICY, Kind, ROUTES};
use allot_origin::http::ops::required_role;
use allot_origin::ops::operators::Role;
use common::{TestApp, concrete, operator_token};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

/// A browser without one: no redirects followed, cookies carried by hand.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The value of `name="<field>" value="…"` in a page (the first).
fn field(html: &str, attr: &str) -> Option<String> {
    let at = html.find(attr)? + attr.len();
    let rest = &html[at..];
    let start = rest.find('"')? + 1;
    let end = rest[start..].find('"')? + start;
    Some(rest[start..end].to_owned())
}

/// `name=value` of the `Set-Cookie` header setting `name`.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// A signed-in session: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn sign_in(app: &TestApp, token: &str) -> Session {
    let http = client();
    let form = http.get(format!("{}/ops/sign-in", app.operator)).send().await.unwrap();
    assert_eq!(form.status(), 200);
    let pre = set_cookie(&form, "allot_console_sign_in").expect("a sign-in CSRF cookie");
    let pre = pre.split(';').next().unwrap().to_owned();
    let html = form.text().await.unwrap();
    let csrf = field(&html, "name=\"csrf\" value=").expect("a csrf field");
    let resp = http
        .post(format!("{}/ops/sign-in", app.operator))
        .header(COOKIE, &pre)
        .form(&[("csrf", csrf.as_str()), ("token", token), ("next", "/ops/audit")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303, "{:?}", resp.text().await);
    assert_eq!(resp.headers()[LOCATION], "/ops/audit");
    let cookie = set_cookie(&resp, "allot_console").expect("a session cookie");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = http.get(format!("{}/ops/stock", app.operator)).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csrf = field(&page.text().await.unwrap(), "data-csrf=").expect("the page carries the CSRF token");
    Session { cookie, csrf }
}

async fn get(app: &TestApp, path: &str, s: Option<&Session>) -> reqwest::Response {
    let mut req = client().get(format!("{}{path}", app.operator));
    if let Some(s) = s {
        req = req.header(COOKIE, &s.cookie);
    }
    req.send().await.unwrap()
}

async fn post(app: &TestApp, path: &str, s: &Session, fields: &[(&str, &str)]) -> reqwest::Response {
    client().post(format!("{}{path}", app.operator)).header(COOKIE, &s.cookie).form(fields).send().await.unwrap()
}

#[tokio::test]
async fn sign_in_gives_a_strict_http_only_cookie_and_secure_behind_tls() {
    let app = TestApp::spawn().await;
    let token = operator_token(&app, "viewer").await;
    let http = client();
    let form = http.get(format!("{}/ops/sign-in", app.operator)).send().await.unwrap();
    let pre = set_cookie(&form, "allot_console_sign_in").unwrap();
    let csrf = field(&form.text().await.unwrap(), "name=\"csrf\" value=").unwrap();
    let resp = http
        .post(format!("{}/ops/sign-in", app.operator))
        .header(COOKIE, pre.split(';').next().unwrap())
        .header("x-forwarded-proto", "https")
        .form(&[("csrf", csrf.as_str()), ("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()[LOCATION], "/ops/stock", "no next: the stock page");
    let cookie = set_cookie(&resp, "allot_console").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ops", "Secure"] {
        assert!(cookie.contains(attr), "{cookie} has {attr}");
    }
    assert!(!cookie.contains("Max-Age") && !cookie.contains("Expires"), "a session cookie: {cookie}");
    let plain = sign_in(&app, &token).await;
    assert!(!plain.cookie.contains("Secure"));
    let rows = app.audit_rows("console.sign_in").await;
    assert_eq!(rows.len(), 2, "each sign-in is audited");
    assert!(rows[0].3.is_some(), "with its request id");
    app.finish().await;
}

#[tokio::test]
async fn a_bad_token_or_a_stale_form_is_refused_in_words_without_a_session() {
    let app = TestApp::spawn().await;
    let http = client();
    let form = http.get(format!("{}/ops/sign-in", app.operator)).send().await.unwrap();
    let pre = set_cookie(&form, "allot_console_sign_in").unwrap();
    let pre = pre.split(';').next().unwrap().to_owned();
    let csrf = field(&form.text().await.unwrap(), "name=\"csrf\" value=").unwrap();
    let revoked = operator_token(&app, "admin").await;
    sqlx::query("UPDATE operators SET revoked_at = now()").execute(&app.pool).await.unwrap();
    let cases = [
        ("not-a-token".to_owned(), "The operator token is malformed."),
        (revoked, "The operator token has been revoked."),
    ];
    for (token, words) in &cases {
        let token = token.as_str();
        let r = http
            .post(format!("{}/ops/sign-in", app.operator))
            .header(COOKIE, &pre)
            .form(&[("csrf", csrf.as_str()), ("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{token}");
        assert!(set_cookie(&r, "allot_console").is_none());
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let body = r.text().await.unwrap();
        assert!(body.contains(*words) && !body.contains("\"error\""), "{body}");
    }
    // A live token without the form's cookie (a cross-site post, or cookies off).
    let token = operator_token(&app, "admin").await;
    let r = http
        .post(format!("{}/ops/sign-in", app.operator))
        .form(&[("csrf", csrf.as_str()), ("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "allot_console").is_none());
    assert_eq!(app.count("console_sessions", "true").await, 0);
    app.finish().await;
}

#[tokio::test]
async fn without_a_session_pages_go_to_sign_in_forms_say_so_and_scripts_get_401() {
    let app = TestApp::spawn().await;
    let page = get(&app, "/ops/audit?actor=x", None).await;
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()[LOCATION], "/ops/sign-in?next=%2Fops%2Faudit%3Factor%3Dx");
    let form = client().post(format!("{}/ops/cards/void", app.operator)).form(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!(form.status(), 303);
    assert_eq!(form.headers()[LOCATION], "/ops/sign-in?ended=1");
    let script = get(&app, "/ops/imports/00000000-0000-7000-8000-000000000000/progress", None).await;
    assert_eq!(script.status(), 401);
    assert_eq!(script.json::<serde_json::Value>().await.unwrap()["error"]["code"], "UNAUTHORIZED");
    // A forged cookie is no session.
    let forged = client()
        .get(format!("{}/ops/stock", app.operator))
        .header(COOKIE, "allot_console=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 303);
    app.finish().await;
}

#[tokio::test]
async fn sign_out_idle_expiry_the_absolute_end_and_a_revoked_token_each_end_a_session() {
    let app = TestApp::spawn().await;
    let token = operator_token(&app, "viewer").await;

    let s = sign_in(&app, &token).await;
    let out = post(&app, "/ops/sign-out", &s, &[("csrf", &s.csrf)]).await;
    assert_eq!(out.status(), 303);
    assert!(set_cookie(&out, "allot_console").unwrap().contains("Max-Age=0"), "the cookie is cleared");
    assert_eq!(get(&app, "/ops/stock", Some(&s)).await.status(), 303, "the old cookie is dead on the server");
    assert_eq!(app.audit_rows("console.sign_out").await.len(), 1);

    let idle = sign_in(&app, &token).await;
    sqlx::query("UPDATE console_sessions SET last_seen_at = now() - interval '31 minutes' WHERE ended_at IS NULL")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(get(&app, "/ops/stock", Some(&idle)).await.status(), 303, "idle past ALLOT_CONSOLE_IDLE_MINUTES");

    let busy = sign_in(&app, &token).await;
    sqlx::query(
        "UPDATE console_sessions SET created_at = now() - interval '13 hours', expires_at = now() - interval '1 hour'
          WHERE ended_at IS NULL AND last_seen_at > now() - interval '1 minute'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(get(&app, "/ops/stock", Some(&busy)).await.status(), 303, "past ALLOT_CONSOLE_SESSION_HOURS");

    // Use keeps a session alive: a request 29 minutes after the last one renews it.
    let kept = sign_in(&app, &token).await;
    let newest = "created_at = (SELECT max(created_at) FROM console_sessions)";
    sqlx::query(
        "UPDATE console_sessions SET last_seen_at = now() - interval '29 minutes'
          WHERE created_at = (SELECT max(created_at) FROM console_sessions)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(get(&app, "/ops/stock", Some(&kept)).await.status(), 200);
    let renewed = format!("{newest} AND last_seen_at > now() - interval '1 minute'");
    assert_eq!(app.count("console_sessions", &renewed).await, 1, "the request renewed the session");

    let revoked = sign_in(&app, &token).await;
    assert_eq!(get(&app, "/ops/stock", Some(&revoked)).await.status(), 200);
    sqlx::query("UPDATE operators SET revoked_at = now()").execute(&app.pool).await.unwrap();
    assert_eq!(get(&app, "/ops/stock", Some(&revoked)).await.status(), 303, "a revoked token ends its sessions");
    app.finish().await;
}

#[tokio::test]
async fn every_form_and_script_post_without_the_csrf_token_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let admin = sign_in(&app, &operator_token(&app, "admin").await).await;
    let before = app.count("audit_log", "true").await;
    let posts: Vec<_> = ROUTES.iter().filter(|r| r.method == "POST").collect();
    assert!(posts.len() >= 10);
    for route in posts {
        let path = concrete(route.path);
        for csrf in [None, Some("wrong-token-wrong-token-wrong-token-wrong")] {
            let mut req = client().post(format!("{}{path}", app.operator)).header(COOKIE, &admin.cookie);
            let mut fields = vec![("reason", "x"), ("card_ids", "1"), ("name", "x")];
            if let Some(t) = csrf {
                fields.push(("csrf", t));
                req = req.header("x-csrf-token", t);
            }
            let r = req.form(&fields).send().await.unwrap();
            assert_eq!(r.status(), 403, "{path} with csrf {csrf:?}");
            let body = r.text().await.unwrap();
            assert!(body.contains("security token"), "{path}: {body}");
        }
    }
    assert_eq!(app.count("audit_log", "true").await, before, "nothing was changed");
    app.finish().await;
}

#[tokio::test]
async fn each_role_below_a_routes_own_is_refused_with_a_valid_csrf_token() {
    let app = TestApp::spawn().await;
    let viewer = sign_in(&app, &operator_token(&app, "viewer").await).await;
    let operator = sign_in(&app, &operator_token(&app, "operator").await).await;
    let before = app.count("audit_log", "true").await;
    for route in ROUTES.iter().filter(|r| r.role > Role::Viewer) {
        let path = concrete(route.path);
        for (role, s) in [(Role::Viewer, &viewer), (Role::Operator, &operator)] {
            if role.allows(route.role) {
                continue;
            }
            let mut req = client()
                .request(
                    reqwest::Method::from_bytes(route.method.as_bytes()).unwrap(),
                    format!("{}{path}", app.operator),
                )
                .header(COOKIE, &s.cookie)
                .header("x-csrf-token", &s.csrf);
            if route.method == "POST" {
                req = req.form(&[("csrf", s.csrf.as_str()), ("reason", "x"), ("card_ids", "1"), ("name", "x")]);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 403, "{} {path} as {}", route.method, role.as_str());
            let body = r.text().await.unwrap();
            assert!(body.contains(&format!("needs the {} role", route.role.as_str())), "{body}");
        }
    }
    assert_eq!(app.count("audit_log", "true").await, before, "nothing was changed");
    app.finish().await;
}

#[test]
fn each_console_action_needs_the_role_of_the_api_route_it_acts_as() {
    for route in ROUTES {
        if let Some((method, path)) = route.acts_as {
            let api = required_role(&method.parse().unwrap(), path).unwrap_or_else(|| {
                panic!("{} {} acts as {method} {path}, which is no API route", route.method, route.path)
            });
            assert_eq!(route.role, api, "{} {}", route.method, route.path);
        }
        assert!(route.path.starts_with("/ops/") && !route.path.starts_with("/ops/v1/"), "{}", route.path);
        match route.kind {
            Kind::Page => assert_eq!(route.method, "GET", "{}", route.path),
            Kind::Form => assert_eq!(route.method, "POST", "{}", route.path),
            Kind::Script => {}
        }
    }
}

#[tokio::test]
async fn every_page_has_the_security_headers_and_no_inline_script_or_style() {
    let app = TestApp::spawn().await;
    app.product("gift-usd", "USD", &["25.00"]).await;
    let admin = sign_in(&app, &operator_token(&app, "admin").await).await;
    let client_page = format!("/ops/clients/{}", app.client_id);
    let mut paths: Vec<String> = ROUTES
        .iter()
        .filter(|r| r.kind == Kind::Page && !r.path.contains('{') && r.path != "/ops/")
        .map(|r| r.path.to_owned())
        .collect();
    paths.extend(["/ops/sign-in".to_owned(), client_page, "/ops/no-such-page".to_owned()]);
    for path in &paths {
        let r = get(&app, path, Some(&admin)).await;
        let what = format!("{path}: {}", r.status());
        assert!(r.status() == 200 || path.contains("no-such"), "{what}");
        assert_eq!(r.headers()["content-security-policy"], CONTENT_SECURITY_POLICY, "{what}");
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"), "{what}");
        let html = r.text().await.unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"), "{what}");
        assert_eq!(html.matches("<script").count(), html.matches("<script src=\"/ops/assets/").count(), "{what}");
        assert!(!html.contains(" style=") && !html.contains(" onclick=") && !html.contains(" onsubmit="), "{what}");
        let forms = html.matches("method=\"post\"").count();
        assert_eq!(forms, html.matches("name=\"csrf\"").count(), "{what}: every form carries the token");
    }
    let unknown = get(&app, "/ops/no-such-page", Some(&admin)).await;
    assert_eq!(unknown.status(), 404);
    let api = get(&app, "/ops/v1/no-such-route", None).await;
    assert_eq!(api.status(), 404);
    assert_eq!(api.json::<serde_json::Value>().await.unwrap()["error"]["code"], "NOT_FOUND", "the API keeps JSON");
    app.finish().await;
}

#[tokio::test]
async fn a_void_from_the_console_is_audited_as_the_operator_with_the_request_id() {
    let app = TestApp::spawn().await;
    let minors = app.product("gift-usd", "USD", &["25.00"]).await;
    let cards = app.load_cards("gift-usd", minors[0], 3).await;
    let token = operator_token(&app, "operator").await;
    let s = sign_in(&app, &token).await;
    let ids = format!("{}, {}", cards[0], cards[1]);
    let r = post(&app, "/ops/cards/void", &s, &[("csrf", &s.csrf), ("card_ids", &ids), ("reason", "leaked")]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ops/cards");
    let page = get(&app, "/ops/cards", Some(&s)).await.text().await.unwrap();
    assert!(page.contains("Voided 2 of 2 matching cards"), "the notice is shown: {page}");
    assert_eq!(app.count("inventories", "status = 'void' AND void_reason = 'leaked'").await, 2);
    let again = get(&app, "/ops/cards", Some(&s)).await.text().await.unwrap();
    assert!(!again.contains("Voided 2 of 2"), "and only once");
    let rows = app.audit_rows("card.void").await;
    assert_eq!(rows.len(), 1);
    let operator_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM operators").fetch_one(&app.pool).await.unwrap();
    assert_eq!(rows[0].0, operator_id.to_string());
    assert!(rows[0].3.is_some());

    // A bad form is said in words, and nothing changes.
    let r = post(&app, "/ops/cards/void", &s, &[("csrf", &s.csrf), ("card_ids", "1 two"), ("reason", "x")]).await;
    assert_eq!(r.status(), 303);
    let page = get(&app, "/ops/cards", Some(&s)).await.text().await.unwrap();
    assert!(page.contains("Card ids: &quot;two&quot; is not a card id."), "{page}");
    assert_eq!(app.audit_rows("card.void").await.len(), 1);

    // The form takes as many ids as the API (10,000), past the CSRF check's body limit.
    let many: Vec<String> = (0..10_000).map(|i| (9_000_000_000i64 + i).to_string()).collect();
    let many = many.join(", ");
    let r = post(&app, "/ops/cards/void", &s, &[("csrf", &s.csrf), ("card_ids", &many), ("reason", "x")]).await;
    assert_eq!(r.status(), 303);
    let page = get(&app, "/ops/cards", Some(&s)).await.text().await.unwrap();
    assert!(page.contains("No card with id 9000000000, ") && page.contains("and 9980 more; nothing was voided."));
    app.finish().await;
}
