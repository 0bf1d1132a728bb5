//! Clients and their keys through the operator API: listing with last use, issue, revoke,
//! rotation with an overlap, suspension, rate limits, and each action's audit row.

mod common;

use std::time::{Duration, Instant};

use common::{Reply, TestApp, operator_token};
use serde_json::json;

/// Poll `probe` until `done` holds (generous deadline: the machine may be loaded).
async fn eventually<F, Fut>(what: &str, mut probe: F, done: impl Fn(&Reply) -> bool) -> Reply
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = probe().await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: still {} {:?}", r.status, String::from_utf8_lossy(&r.body));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn products_with(app: &TestApp, key: &str) -> Reply {
    app.send("GET", "/v1/products", Some(key), None, b"").await
}

async fn operator_id(app: &TestApp, token: &str) -> String {
    app.ops("GET", "/ops/v1/me", Some(token), None).await.json()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn clients_are_listed_with_their_keys_and_last_use_is_written_in_the_background() {
    let app = TestApp::spawn().await;
    let admin = operator_token(&app, "admin").await;
    let viewer = operator_token(&app, "viewer").await;
    let admin_id = operator_id(&app, &admin).await;
    let path = format!("/ops/v1/clients/{}", app.client_id);

    let before = app.ops("GET", &path, Some(&viewer), None).await;
    assert_eq!(before.status, 200, "{:?}", before.body);
    assert!(before.json()["keys"][0]["last_used_at"].is_null(), "never used yet");

    // One authenticated request: its use is written off the request path, soon.
    assert_eq!(products_with(&app, &app.key).await.status, 200);
    let shown = eventually(
        "last use written",
        || app.ops("GET", &path, Some(&viewer), None),
        |r| r.json()["keys"][0]["last_used_at"].is_string(),
    )
    .await;
    let doc = shown.json();
    assert_eq!(doc["status"], "active");
    assert_eq!(doc["usable_keys"], 1);
    let key = &doc["keys"][0];
    assert_eq!((key["label"].as_str(), key["state"].as_str()), (Some("test"), Some("live")));
    assert!(key["revoked_at"].is_null() && key["expires_at"].is_null());
    let secret = app.key.rsplit('_').next().unwrap();
    assert!(!shown.body.windows(secret.len()).any(|w| w == secret.as_bytes()), "never a secret");

    // More requests within the minute write nothing more.
    let first: time::OffsetDateTime =
        sqlx::query_scalar("SELECT last_used_at FROM api_keys").fetch_one(&app.pool).await.unwrap();
    for _ in 0..3 {
        assert_eq!(products_with(&app, &app.key).await.status, 200);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again: time::OffsetDateTime =
        sqlx::query_scalar("SELECT last_used_at FROM api_keys").fetch_one(&app.pool).await.unwrap();
    assert_eq!(first, again, "at most one write a minute per key");

    // Clients made through the API are audited; a viewer may list but not create.
    for name in ["Alpha", "Beta", "Gamma"] {
        let r = app.ops("POST", "/ops/v1/clients", Some(&admin), Some(json!({ "name": name }))).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert_eq!((r.json()["name"].as_str(), r.json()["region"].as_str()), (Some(name), Some("eu")));
    }
    let created = app.audit_rows("client.create").await;
    assert_eq!(created.iter().filter(|r| r.0 == admin_id).count(), 3);
    assert!(created[0].3.is_some(), "the request id is recorded");
    let refused = app.ops("POST", "/ops/v1/clients", Some(&viewer), Some(json!({ "name": "No" }))).await;
    assert_eq!((refused.status, refused.error_code().as_str()), (403, "FORBIDDEN"));

    // Pages of two in id order walk every client once; the app's own carries its last use.
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let mut p = "/ops/v1/clients?limit=2".to_owned();
        if let Some(c) = &cursor {
            p.push_str(&format!("&cursor={c}"));
        }
        let page = app.ops("GET", &p, Some(&viewer), None).await.json();
        for item in page["items"].as_array().unwrap() {
            if item["id"] == app.client_id.to_string() {
                assert!(item["last_used_at"].is_string());
                assert_eq!(item["usable_keys"], 1);
            }
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "id order, no repeats: {seen:?}");
    for bad in ["limit=0", "status=gone", "cursor=nope", "colour=blue"] {
        let r = app.ops("GET", &format!("/ops/v1/clients?{bad}"), Some(&viewer), None).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"), "{bad}");
    }
    let missing = app.ops("GET", &format!("/ops/v1/clients/{}", uuid::Uuid::now_v7()), Some(&viewer), None).await;
    assert_eq!(missing.status, 404);
    app.finish().await;
}

#[tokio::test]
async fn keys_are_issued_revoked_and_rotated_with_the_old_key_working_until_its_time() {
    let app = TestApp::spawn().await;
    let admin = operator_token(&app, "admin").await;
    let admin_id = operator_id(&app, &admin).await;
    let keys_path = format!("/ops/v1/clients/{}/keys", app.client_id);

    // Issue: the key is in this response only, and works at once.
    let issued = app.ops("POST", &keys_path, Some(&admin), Some(json!({ "label": "shop" }))).await;
    assert_eq!(issued.status, 201, "{:?}", issued.body);
    let old_key = issued.json()["key"].as_str().unwrap().to_owned();
    let old_id = issued.json()["key_id"].as_str().unwrap().to_owned();
    assert_eq!(products_with(&app, &old_key).await.status, 200);
    let issue_row = &app.audit_rows("key.issue").await[0];
    assert_eq!((issue_row.0.as_str(), issue_row.1.as_str()), (admin_id.as_str(), old_id.as_str()));

    // Rotate: a new key for the same client and label, live at once; the old one keeps working.
    let rotate = format!("/ops/v1/keys/{old_id}/rotate");
    let until = (time::OffsetDateTime::now_utc() + time::Duration::minutes(10))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let rotated = app.ops("POST", &rotate, Some(&admin), Some(json!({ "until": until }))).await;
    assert_eq!(rotated.status, 201, "{:?}", rotated.body);
    let doc = rotated.json();
    let new_key = doc["key"].as_str().unwrap().to_owned();
    let new_id = doc["key_id"].as_str().unwrap().to_owned();
    assert_eq!((doc["label"].as_str(), doc["old_key"]["key_id"].as_str()), (Some("shop"), Some(old_id.as_str())));
    assert_eq!(products_with(&app, &new_key).await.status, 200, "the new key is live at once");
    assert_eq!(products_with(&app, &old_key).await.status, 200, "the old key works until its time");
    let rotate_row = &app.audit_rows("key.rotate").await[0];
    assert_eq!((rotate_row.0.as_str(), rotate_row.1.as_str()), (admin_id.as_str(), old_id.as_str()));
    assert_eq!(rotate_row.2["new_key_id"], new_id);

    let shown = app.ops("GET", &format!("/ops/v1/clients/{}", app.client_id), Some(&admin), None).await.json();
    let state_of = |doc: &serde_json::Value, id: &str| {
        doc["keys"].as_array().unwrap().iter().find(|k| k["key_id"] == id).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!((state_of(&shown, &old_id), state_of(&shown, &new_id)), ("expiring".into(), "live".into()));

    // A key already rotated out is not rotated again; bodies must say exactly one end in bounds.
    let again = app.ops("POST", &rotate, Some(&admin), Some(json!({ "overlap_secs": 60 }))).await;
    assert_eq!((again.status, again.error_code().as_str()), (400, "VALIDATION_FAILED"));
    let new_rotate = format!("/ops/v1/keys/{new_id}/rotate");
    for bad in [
        json!({}),
        json!({ "overlap_secs": 60, "until": until }),
        json!({ "overlap_secs": 2_592_001 }),
        json!({ "until": "2001-01-01T00:00:00Z" }),
        json!({ "until": "next week" }),
    ] {
        let r = app.ops("POST", &new_rotate, Some(&admin), Some(bad.clone())).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"), "{bad}");
    }
    assert_eq!(
        app.ops("POST", "/ops/v1/keys/ZZZZZZZZZZZZZZZZ/rotate", Some(&admin), Some(json!({ "overlap_secs": 1 })))
            .await
            .status,
        404
    );

    // Its time passes (the clock moved on): the old key gets 401 within the key cache's TTL.
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE key_id = $1")
        .bind(&old_id)
        .execute(&app.pool)
        .await
        .unwrap();
    let expired = eventually("old key expired", || products_with(&app, &old_key), |r| r.status == 401).await;
    assert_eq!(expired.json()["error"]["message"], "the API key has expired");
    assert_eq!(products_with(&app, &new_key).await.status, 200);
    let shown = app.ops("GET", &format!("/ops/v1/clients/{}", app.client_id), Some(&admin), None).await.json();
    assert_eq!(state_of(&shown, &old_id), "expired");

    // A rotation with an overlap in seconds ends by the clock alone.
    let short = app.ops("POST", &new_rotate, Some(&admin), Some(json!({ "overlap_secs": 1 }))).await;
    assert_eq!(short.status, 201, "{:?}", short.body);
    let newest = short.json()["key"].as_str().unwrap().to_owned();
    eventually("overlap over", || products_with(&app, &new_key), |r| r.status == 401).await;
    assert_eq!(products_with(&app, &newest).await.status, 200);

    // Revoke: 401 within the key cache's TTL; a second revoke finds no live key.
    let newest_id = short.json()["key_id"].as_str().unwrap().to_owned();
    let revoke = format!("/ops/v1/keys/{newest_id}/revoke");
    assert_eq!(app.ops("POST", &revoke, Some(&admin), None).await.status, 200);
    let revoked = eventually("revoked", || products_with(&app, &newest), |r| r.status == 401).await;
    assert_eq!(revoked.json()["error"]["message"], "the API key has been revoked");
    assert_eq!(app.ops("POST", &revoke, Some(&admin), None).await.status, 404);
    assert_eq!(app.audit_rows("key.revoke").await[0].1, newest_id);
    let operator = operator_token(&app, "operator").await;
    assert_eq!(app.ops("POST", &keys_path, Some(&operator), Some(json!({}))).await.status, 403);
    app.finish().await;
}

#[tokio::test]
async fn a_suspended_client_gets_403_until_it_is_resumed() {
    let app = TestApp::spawn().await;
    app.product("susp", "EUR", &["25.00"]).await;
    app.load_cards("susp", 2500, 5).await;
    let admin = operator_token(&app, "admin").await;
    let body = r#"{"product_id":"susp","denomination":"25.00","quantity":1}"#;
    assert_eq!(app.allocate("s-1", body).await.status, 201);

    let suspend = format!("/ops/v1/clients/{}/suspend", app.client_id);
    let r = app.ops("POST", &suspend, Some(&admin), None).await;
    assert_eq!((r.status, r.json()["changed"].as_bool()), (200, Some(true)));
    let refused = eventually("suspended", || app.allocate("s-2", body), |r| r.status == 403).await;
    assert_eq!(refused.error_code(), "FORBIDDEN");
    assert_eq!(refused.json()["error"]["message"], "this client is suspended");
    // (Within the key cache's TTL the probe may still have allocated; from the 403 on, nothing.)
    let allocated = app.count("allocations", "").await;
    assert_eq!(app.allocate("s-2b", body).await.status, 403);
    assert_eq!(app.count("allocations", "").await, allocated, "nothing allocated while suspended");

    // Suspending twice changes nothing and writes no second audit row.
    let r = app.ops("POST", &suspend, Some(&admin), None).await;
    assert_eq!((r.status, r.json()["changed"].as_bool()), (200, Some(false)));
    let rows = app.audit_rows("client.suspend").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2, json!({ "from": "active", "to": "suspended" }));

    let resume = format!("/ops/v1/clients/{}/resume", app.client_id);
    assert_eq!(app.ops("POST", &resume, Some(&admin), None).await.status, 200);
    eventually("resumed", || app.allocate("s-3", body), |r| r.status == 201).await;
    assert_eq!(app.audit_rows("client.resume").await.len(), 1);

    // The rate limit: a number, or null for the default; the field is required.
    let limit = format!("/ops/v1/clients/{}/rate-limit", app.client_id);
    let set = app.ops("PUT", &limit, Some(&admin), Some(json!({ "per_minute": 100 }))).await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    let stored: Option<i32> = sqlx::query_scalar("SELECT rate_limit_per_minute FROM clients WHERE id = $1")
        .bind(app.client_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, Some(100));
    assert_eq!(app.ops("PUT", &limit, Some(&admin), Some(json!({ "per_minute": null }))).await.status, 200);
    assert_eq!(app.audit_rows("client.rate_limit").await.len(), 2);
    for bad in [json!({}), json!({ "per_minute": 0 }), json!({ "per_minute": "many" })] {
        let r = app.ops("PUT", &limit, Some(&admin), Some(bad.clone())).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"), "{bad}");
    }
    let viewer = operator_token(&app, "viewer").await;
    assert_eq!(app.ops("POST", &suspend, Some(&viewer), None).await.status, 403);
    let unknown = format!("/ops/v1/clients/{}/suspend", uuid::Uuid::now_v7());
    assert_eq!(app.ops("POST", &unknown, Some(&admin), None).await.status, 404);
    app.finish().await;
}
