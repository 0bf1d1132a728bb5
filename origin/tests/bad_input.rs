//! Bad input gets the right code in the shared error body, and the database is unchanged.

mod common;

use common::{Reply, TestApp};

struct Snapshot {
    active: i64,
    allocations: i64,
    keys: i64,
    outbox: i64,
    cached: usize,
}

async fn snapshot(app: &TestApp) -> Snapshot {
    Snapshot {
        active: app.count("inventories", "status = 'active'").await,
        allocations: app.count("allocations", "").await,
        keys: app.count("allocations", "request_fingerprint IS NOT NULL").await,
        outbox: app.count("outbox", "").await,
        cached: app.cached_ids("bad").await.len(),
    }
}

fn assert_error(r: &Reply, status: u16, code: &str, case: &str) {
    assert_eq!(r.status, status, "{case}: {}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{case}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}");
    assert!(v["error"]["request_id"].as_str().is_some_and(|m| !m.is_empty()), "{case}");
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"), "{case}");
}

#[tokio::test]
async fn bad_bodies_are_rejected_and_nothing_changes() {
    let app = TestApp::spawn().await;
    app.product("bad", "USD", &["10.00"]).await;
    app.product("gone", "USD", &["10.00"]).await;
    sqlx::query("UPDATE products SET status = 'disabled' WHERE id = 'gone'").execute(&app.pool).await.unwrap();
    app.load_cards("bad", 1000, 10).await;
    let before = snapshot(&app).await;

    let huge_quantity = r#"{"product_id":"bad","denomination":"10.00","quantity":1000000000000}"#;
    let oversize = format!(
        r#"{{"product_id":"bad","denomination":"10.00","quantity":1,"client_reference":"{}"}}"#,
        "x".repeat(20_000)
    );
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("malformed JSON", r#"{"product_id":"bad","#.into(), 400, "VALIDATION_FAILED"),
        ("not an object", "[1,2,3]".into(), 400, "VALIDATION_FAILED"),
        ("empty body", "".into(), 400, "VALIDATION_FAILED"),
        (
            "wrong type: quantity",
            r#"{"product_id":"bad","denomination":"10.00","quantity":"1"}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "wrong type: denomination",
            r#"{"product_id":"bad","denomination":10,"quantity":1}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "unknown field",
            r#"{"product_id":"bad","denomination":"10.00","quantity":1,"price":1}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "zero quantity",
            r#"{"product_id":"bad","denomination":"10.00","quantity":0}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "negative quantity",
            r#"{"product_id":"bad","denomination":"10.00","quantity":-3}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        ("huge quantity", huge_quantity.into(), 400, "VALIDATION_FAILED"),
        (
            "quantity over the maximum",
            r#"{"product_id":"bad","denomination":"10.00","quantity":21}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "denomination 10.001",
            r#"{"product_id":"bad","denomination":"10.001","quantity":1}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "denomination -5",
            r#"{"product_id":"bad","denomination":"-5","quantity":1}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "denomination 1e3",
            r#"{"product_id":"bad","denomination":"1e3","quantity":1}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "denomination empty",
            r#"{"product_id":"bad","denomination":"","quantity":1}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "unknown product",
            r#"{"product_id":"nope","denomination":"10.00","quantity":1}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "disabled product",
            r#"{"product_id":"gone","denomination":"10.00","quantity":1}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "bad product id",
            r#"{"product_id":"../etc","denomination":"10.00","quantity":1}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        (
            "denomination not offered",
            r#"{"product_id":"bad","denomination":"99.00","quantity":1}"#.into(),
            400,
            "VALIDATION_FAILED",
        ),
        ("oversize body", oversize, 413, "PAYLOAD_TOO_LARGE"),
    ];
    for (i, (case, body, status, code)) in cases.iter().enumerate() {
        let r = app.allocate(format!("bad-{i}"), body).await;
        assert_error(&r, *status, code, case);
    }
    let after = snapshot(&app).await;
    assert_eq!(
        (after.active, after.allocations, after.keys, after.outbox, after.cached),
        (before.active, before.allocations, before.keys, before.outbox, before.cached)
    );
    app.finish().await;
}

#[tokio::test]
async fn bad_credentials_headers_and_routes_are_rejected() {
    let app = TestApp::spawn().await;
    app.product("bad", "USD", &["10.00"]).await;
    app.load_cards("bad", 1000, 10).await;
    let before = snapshot(&app).await;
    let good = r#"{"product_id":"bad","denomination":"10.00","quantity":1}"#.as_bytes();
    let path = "/v1/allocations";

    let r = app.send("POST", path, None, Some("k1"), good).await;
    assert_error(&r, 401, "UNAUTHORIZED", "missing key");
    let r = app.send("POST", path, Some("not-a-key"), Some("k2"), good).await;
    assert_error(&r, 401, "UNAUTHORIZED", "garbage key");
    let mut typo = app.key.clone().into_bytes();
    let i = typo.len() - 9;
    typo[i] = if typo[i] == b'A' { b'B' } else { b'A' };
    let r = app.send("POST", path, Some(std::str::from_utf8(&typo).unwrap()), Some("k3"), good).await;
    assert_error(&r, 401, "UNAUTHORIZED", "typo in key");
    let r = app.send("POST", path, Some(&common::unknown_key()), Some("k4"), good).await;
    assert_error(&r, 401, "UNAUTHORIZED", "unknown key");
    let us_key = allot_shared::ApiKey::new(
        allot_shared::Region::parse("us").unwrap(),
        "AAAAAAAAAAAAAAAA",
        "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
    )
    .unwrap()
    .expose();
    let r = app.send("POST", path, Some(&us_key), Some("k5"), good).await;
    assert_error(&r, 401, "UNAUTHORIZED", "key of another region");

    let r = app.send("POST", path, Some(&app.key), None, good).await;
    assert_error(&r, 400, "IDEMPOTENCY_KEY_REQUIRED", "missing idempotency key");
    let r = app.send("POST", path, Some(&app.key), Some(&"k".repeat(256)), good).await;
    assert_error(&r, 400, "VALIDATION_FAILED", "idempotency key too long");

    // Signatures: missing, wrong secret, stale, and over another body.
    let unsigned = common::read(
        app.http
            .post(format!("{}{path}", app.base))
            .header("authorization", format!("Bearer {}", app.key))
            .header("idempotency-key", "s1")
            .body(good.to_vec())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&unsigned, 401, "UNAUTHORIZED", "unsigned");
    let now = common::unix_now();
    let secret = common::EDGE_SECRET.as_bytes();
    let key = Some(app.key.as_str());
    let sign = |secret: &[u8], ts, idem, body| common::edge_signature(secret, ts, "POST", path, key, Some(idem), body);
    for (case, sig) in [
        ("wrong secret", sign(b"another-secret-entirely!", now, "s2", good)),
        ("stale", sign(secret, now - 600, "s2", good)),
        ("other body", sign(secret, now, "s2", b"{}")),
        ("other idempotency key", sign(secret, now, "s1", good)),
        ("garbage", "t=abc,v1=zz".to_owned()),
    ] {
        let r = common::read(
            app.http
                .post(format!("{}{path}", app.base))
                .header("authorization", format!("Bearer {}", app.key))
                .header("idempotency-key", "s2")
                .header(allot_shared::headers::SIGNATURE, sig)
                .body(good.to_vec())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&r, 401, "UNAUTHORIZED", case);
    }

    let r = app.send("GET", "/v1/nothing-here", Some(&app.key), None, b"").await;
    assert_error(&r, 404, "NOT_FOUND", "unknown route");
    let r = app.send("DELETE", "/v1/allocations", Some(&app.key), None, b"").await;
    assert_error(&r, 404, "NOT_FOUND", "unknown method");

    let after = snapshot(&app).await;
    assert_eq!(
        (after.active, after.allocations, after.keys, after.outbox, after.cached),
        (before.active, before.allocations, before.keys, before.outbox, before.cached)
    );
    app.finish().await;
}
