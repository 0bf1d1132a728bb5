//! The public listener against hostile peers: framework rejections in the shared shape, duplicate
//! headers, slow heads and bodies, the connection cap, signature v2 and its replay guard, and the
//! exact per-client rate limit.

mod common;

use std::time::Duration;

use allot_shared::{ApiKey, signature};
use common::{EDGE_SECRET, Options, Reply, TestApp, edge_signature, unix_now};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALLOCATE: &str = r#"{"product_id":"hard","denomination":"10.00","quantity":1}"#;

fn opts(extra: &[(&str, &str)]) -> Options {
    Options { extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Options::default() }
}

fn assert_shared_error(r: &Reply, status: u16, code: &str, case: &str) {
    assert_eq!(r.status, status, "{case}: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"), "{case}");
    let v = r.json();
    let error = v["error"].as_object().unwrap_or_else(|| panic!("{case}: no error object in {v}"));
    assert_eq!(v.as_object().unwrap().len(), 1, "{case}: only `error` at the top");
    assert_eq!(error["code"], code, "{case}");
    assert!(error.keys().all(|k| ["code", "message", "request_id", "details"].contains(&k.as_str())), "{case}");
}

/// Send raw bytes on a fresh connection and read until the server closes it or `wait` passes.
async fn raw(addr: &str, bytes: &[u8], close_write: bool, wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close_write {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn framework_rejections_use_the_shared_shape() {
    let app = TestApp::spawn().await;
    for junk in ["%FF", "%C0%AF", "%E2%82", "..%2F..", "00000000-0000-0000-0000-00000000000%00"] {
        let path = format!("/v1/allocations/{junk}");
        let r = app.send("GET", &path, Some(&app.key), None, b"").await;
        assert_shared_error(&r, 404, "NOT_FOUND", &path);
    }
    for method in ["PUT", "PATCH", "DELETE", "OPTIONS"] {
        let r = app.send(method, "/v1/allocations", Some(&app.key), None, b"").await;
        assert_shared_error(&r, 404, "NOT_FOUND", method);
    }
    app.finish().await;
}

#[tokio::test]
async fn bytes_that_are_not_http_get_the_shared_shape_too() {
    let app = TestApp::spawn().await;
    let wait = Duration::from_secs(30);
    for (case, bytes) in [
        ("raw 0xFF in the path", &b"GET /v1/allocations/\xff HTTP/1.1\r\nhost: t\r\n\r\n"[..]),
        ("DEL in a header value", b"GET /livez HTTP/1.1\r\nhost: t\r\nx-junk: \x7f\x7f\r\n\r\n"),
        ("not HTTP at all", b"HELLO THERE\r\n\r\n"),
    ] {
        let answer = raw(&addr(&app), bytes, false, wait).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{case}: {answer}");
        assert!(answer.contains("content-type: application/json"), "{case}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{case}: {e}: {answer}"));
        assert_eq!(v["error"]["code"], "VALIDATION_FAILED", "{case}");
    }
    // A served request's own 4xx is left alone, and so is a refusal after a served request.
    let two = b"GET /nope HTTP/1.1\r\nhost: t\r\n\r\nGET /x\xff HTTP/1.1\r\nhost: t\r\n\r\n";
    let answer = raw(&addr(&app), two, false, wait).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains(r#""code":"NOT_FOUND""#), "{answer}");
    assert!(answer.contains(r#""code":"VALIDATION_FAILED""#), "the second, unparsable request: {answer}");
    app.finish().await;
}

/// `POST /v1/allocations` with these `Authorization` and `Idempotency-Key` lines, signed for
/// `signed_idem` (the Idempotency-Key as the edge would read it).
async fn post_with_headers(app: &TestApp, authorization: &[&str], idem: &[&str], signed_idem: &str) -> Reply {
    let sig = app.sign("POST", "/v1/allocations", Some(&app.key), Some(signed_idem), ALLOCATE.as_bytes());
    let mut req = app.http.post(format!("{}/v1/allocations", app.base)).header(allot_shared::headers::SIGNATURE, sig);
    for a in authorization {
        req = req.header("authorization", *a);
    }
    for i in idem {
        req = req.header("idempotency-key", *i);
    }
    common::read(req.body(ALLOCATE).send().await.unwrap()).await
}

#[tokio::test]
async fn duplicate_headers_are_refused_and_bearer_is_case_insensitive() {
    let app = TestApp::spawn().await;
    app.product("hard", "USD", &["10.00"]).await;
    app.load_cards("hard", 1000, 5).await;
    let bearer = format!("Bearer {}", app.key);

    // Two Idempotency-Keys: signed as the edge would see them (joined), refused like the edge.
    let r = post_with_headers(&app, &[&bearer], &["k1", "k2"], "k1, k2").await;
    assert_shared_error(&r, 400, "VALIDATION_FAILED", "two idempotency keys");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("sent once"));

    let r = post_with_headers(&app, &[&bearer, &bearer], &["k3"], "k3").await;
    assert_shared_error(&r, 401, "UNAUTHORIZED", "two authorization headers");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("exactly one"));
    assert_eq!(app.count("allocations", "").await, 0, "nothing allocated by a refused request");

    let r = post_with_headers(&app, &[&format!("BEARER {}", app.key)], &["k4"], "k4").await;
    assert_eq!(r.status, 201, "BEARER in capitals: {}", String::from_utf8_lossy(&r.body));
    app.finish().await;
}

fn head(sig: &str, key: &str, content_length: usize) -> String {
    format!(
        "POST /v1/allocations HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {key}\r\nidempotency-key: slow-1\r\n\
         allot-signature: {sig}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    )
}

#[tokio::test]
async fn slow_and_broken_bodies_are_the_clients_fault() {
    let app = TestApp::spawn_with(opts(&[("ALLOT_BODY_READ_TIMEOUT_MS", "400")])).await;
    let sig = app.sign("POST", "/v1/allocations", Some(&app.key), Some("slow-1"), ALLOCATE.as_bytes());
    let wait = Duration::from_secs(30);

    // Declared 100 bytes, sent 10, then nothing: 408, not 503.
    let stalled = format!("{}{}", head(&sig, &app.key, 100), &ALLOCATE[..10]);
    let answer = raw(&addr(&app), stalled.as_bytes(), false, wait).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"REQUEST_TIMEOUT""#), "{answer}");

    // Declared 100, sent 10, then the client closed: the body is broken, 400 (not 413).
    let answer = raw(&addr(&app), stalled.as_bytes(), true, wait).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""code":"VALIDATION_FAILED""#), "{answer}");

    // Broken chunked framing: 400.
    let chunked = head(&sig, &app.key, 0).replace("content-length: 0", "transfer-encoding: chunked");
    let answer = raw(&addr(&app), format!("{chunked}zz\r\nnot hex\r\n").as_bytes(), false, wait).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // The header-only checks come first: an unsigned stalled request is refused at once,
    // without waiting for its body.
    let unsigned = head(&sig, &app.key, 100).replace("allot-signature", "x-not-a-signature");
    let answer = raw(&addr(&app), unsigned.as_bytes(), false, wait).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(app.count("allocations", "").await, 0);
    app.finish().await;
}

#[tokio::test]
async fn a_slow_head_gets_408_and_an_idle_connection_is_closed() {
    let app = TestApp::spawn_with(opts(&[("ALLOT_HEADER_READ_TIMEOUT_MS", "400")])).await;
    let wait = Duration::from_secs(30);
    let answer = raw(&addr(&app), b"GET /livez HTTP/1.1\r\nhost: t\r\nx-slow: ", false, wait).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "REQUEST_TIMEOUT");

    // Nothing sent at all: closed without a word (no 408 a client could mistake for an answer).
    let answer = raw(&addr(&app), b"", false, wait).await;
    assert_eq!(answer, "", "an idle connection is closed silently");

    // A keep-alive connection is served, then closed silently once idle.
    let answer = raw(&addr(&app), b"GET /livez HTTP/1.1\r\nhost: t\r\n\r\n", false, wait).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("408"), "{answer}");
    app.finish().await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let app = TestApp::spawn_with(opts(&[("ALLOT_MAX_CONNECTIONS", "2")])).await;
    let first = TcpStream::connect(addr(&app)).await.unwrap();
    let _second = TcpStream::connect(addr(&app)).await.unwrap();
    let mut third = TcpStream::connect(addr(&app)).await.unwrap(); // the kernel's backlog takes it
    third.write_all(b"GET /livez HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(early.is_err(), "a third connection is not served while two are open");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(30), third.read(&mut buf)).await.expect("served").unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    app.finish().await;
}

async fn post_signed(app: &TestApp, idem: &str, sig: &str) -> Reply {
    common::read(
        app.http
            .post(format!("{}/v1/allocations", app.base))
            .header("authorization", format!("Bearer {}", app.key))
            .header("idempotency-key", idem)
            .header(allot_shared::headers::SIGNATURE, sig)
            .body(ALLOCATE)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn signature_v2_binds_the_keys_and_is_accepted_once() {
    let app = TestApp::spawn().await;
    app.product("hard", "USD", &["10.00"]).await;
    app.load_cards("hard", 1000, 5).await;

    let sig = app.sign("POST", "/v1/allocations", Some(&app.key), Some("once-1"), ALLOCATE.as_bytes());
    assert_eq!(post_signed(&app, "once-1", &sig).await.status, 201);
    let replayed = post_signed(&app, "once-1", &sig).await;
    assert_shared_error(&replayed, 401, "UNAUTHORIZED", "the same signature twice");
    assert!(replayed.json()["error"]["message"].as_str().unwrap().contains("already used"));

    // A captured signature under another Idempotency-Key: refused, nothing allocated.
    let sig = app.sign("POST", "/v1/allocations", Some(&app.key), Some("once-2"), ALLOCATE.as_bytes());
    let r = post_signed(&app, "once-3", &sig).await;
    assert_shared_error(&r, 401, "UNAUTHORIZED", "signed for another idempotency key");
    // Signed for another API key.
    let other =
        ApiKey::new(allot_shared::Region::parse("eu").unwrap(), "OtherKeyId000000", &"s".repeat(32)).unwrap().expose();
    let sig = edge_signature(
        EDGE_SECRET.as_bytes(),
        unix_now(),
        "POST",
        "/v1/allocations",
        Some(&other),
        Some("once-4"),
        ALLOCATE.as_bytes(),
    );
    assert_shared_error(&post_signed(&app, "once-4", &sig).await, 401, "UNAUTHORIZED", "signed for another key");

    // Version 1 is refused unless turned on.
    let key_id = ApiKey::parse(&app.key).unwrap().key_id().to_owned();
    let signed = signature::Signed {
        method: "POST",
        path_and_query: "/v1/allocations",
        key_id: &key_id,
        idempotency_key: "once-5",
        body: ALLOCATE.as_bytes(),
    };
    let v1 = signature::sign_v1(EDGE_SECRET.as_bytes(), unix_now(), &signed);
    let r = post_signed(&app, "once-5", &v1).await;
    assert_shared_error(&r, 401, "UNAUTHORIZED", "v1 by default");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("v1"));
    assert_eq!(app.count("allocations", "").await, 1, "only the first request allocated");
    app.finish().await;

    let app = TestApp::spawn_with(opts(&[("ALLOT_EDGE_SIGNATURE_V1", "accept")])).await;
    app.product("hard", "USD", &["10.00"]).await;
    app.load_cards("hard", 1000, 5).await;
    let key_id = ApiKey::parse(&app.key).unwrap().key_id().to_owned();
    let signed = signature::Signed { key_id: &key_id, ..signed };
    let v1 = signature::sign_v1(EDGE_SECRET.as_bytes(), unix_now(), &signed);
    assert_eq!(post_signed(&app, "once-5", &v1).await.status, 201, "v1 during a rotation");
    app.finish().await;
}

async fn products(app: &TestApp, base: &str) -> Reply {
    app.send_to(base, "GET", "/v1/products", Some(&app.key), None, b"").await
}

#[tokio::test]
async fn each_clients_limit_is_exact_across_instances() {
    let app = TestApp::spawn().await;
    allot_origin::ops::set_client_rate_limit(&app.pool, &allot_origin::ops::Actor::cli(), app.client_id, Some(4))
        .await
        .unwrap();
    let (twin, _) = app.twin().await;

    let first = products(&app, &app.base).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-policy").as_deref(), Some(r#""client";q=4;w=60"#));
    assert!(first.header("ratelimit").unwrap().starts_with(r#""client";r=3;t="#), "{:?}", first.header("ratelimit"));
    assert_eq!(products(&app, &twin).await.status, 200);
    assert_eq!(products(&app, &app.base).await.status, 200);
    assert_eq!(products(&app, &twin).await.status, 200);
    // The fifth, on either instance, is over.
    for base in [&app.base, &twin] {
        let r = products(&app, base).await;
        assert_shared_error(&r, 429, "RATE_LIMITED", "fifth request");
        assert_eq!(r.header("ratelimit-policy").as_deref(), Some(r#""client";q=4;w=60"#));
        assert!(r.header("ratelimit").unwrap().starts_with(r#""client";r=0;t="#));
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=15).contains(&retry), "one request's worth of a 4-per-minute quota: {retry}");
    }
    app.finish().await;
}

#[tokio::test]
async fn the_limit_fails_open_when_valkey_is_down() {
    let dead = format!("redis://127.0.0.1:{}", common::ports::closed_port());
    let app =
        TestApp::spawn_with(Options { valkey_url: Some(dead), ..opts(&[("ALLOT_VALKEY_TIMEOUT_MS", "200")]) }).await;
    allot_origin::ops::set_client_rate_limit(&app.pool, &allot_origin::ops::Actor::cli(), app.client_id, Some(1))
        .await
        .unwrap();
    for _ in 0..3 {
        let r = products(&app, &app.base).await;
        assert_eq!(r.status, 200, "unchecked, not refused: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("ratelimit"), None, "no state is claimed when none was checked");
    }
    let metrics = app.http.get(format!("{}/metrics", app.operator)).send().await.unwrap().text().await.unwrap();
    let unchecked = metrics
        .lines()
        .find(|l| l.starts_with("allot_request_guard_unchecked_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(unchecked >= 3.0, "the metrics say the limit was not checked: {unchecked}");
    app.finish().await;
}
