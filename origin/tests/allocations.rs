//! The allocation engine end to end over HTTP, against the real Postgres and Valkey.

mod common;

use std::collections::HashSet;

use common::{Options, Reply, TestApp};
use futures::future::join_all;

fn body(product: &str, denomination: &str, quantity: u32) -> String {
    format!(r#"{{"product_id":"{product}","denomination":"{denomination}","quantity":{quantity}}}"#)
}

fn card_ids(r: &Reply) -> Vec<i64> {
    r.json()["cards"].as_array().unwrap().iter().map(|c| c["card_id"].as_i64().unwrap()).collect()
}

fn codes(r: &Reply) -> Vec<String> {
    r.json()["cards"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flash_sale_allocates_each_card_exactly_once() {
    let app = TestApp::spawn().await;
    app.product("flash", "USD", &["25.00"]).await;
    app.load_cards("flash", 2500, 500).await;

    let requests = (0..2000).map(|i| {
        let app = &app;
        async move { app.allocate(&format!("flash-{i}"), &body("flash", "25.00", 1)).await }
    });
    let replies = join_all(requests).await;

    let ok: Vec<&Reply> = replies.iter().filter(|r| r.status == 201).collect();
    let out_of_stock = replies.iter().filter(|r| r.status == 409 && r.error_code() == "OUT_OF_STOCK").count();
    let other: Vec<(u16, String)> = replies
        .iter()
        .filter(|r| r.status != 201 && r.status != 409)
        .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
        .collect();
    assert!(other.is_empty(), "unexpected replies: {:?}", &other[..other.len().min(5)]);
    assert_eq!(ok.len(), 500, "exactly the stock is allocated");
    assert_eq!(out_of_stock, 1500);

    let ids: HashSet<i64> = ok.iter().flat_map(|r| card_ids(r)).collect();
    let all_codes: HashSet<String> = ok.iter().flat_map(|r| codes(r)).collect();
    assert_eq!(ids.len(), 500, "no card twice");
    assert_eq!(all_codes.len(), 500, "no code twice");
    assert_eq!(app.count("inventories", "status = 'allocated'").await, 500);
    assert_eq!(app.count("inventories", "status = 'active'").await, 0);
    assert_eq!(app.count("allocations", "").await, 500);
    assert_eq!(app.count("outbox", "topic = 'allocation.created'").await, 500);
    // Every allocated card points at an allocation of its own client and bucket.
    let matching = format!(
        "a.product_id = v.product_id AND a.denomination_minor = v.denomination_minor AND a.client_id = '{}'",
        app.client_id
    );
    assert_eq!(app.count("inventories v JOIN allocations a ON a.id = v.allocation_id", &matching).await, 500);
    app.finish().await;
}

#[tokio::test]
async fn all_or_nothing() {
    let app = TestApp::spawn().await;
    app.product("aon", "USD", &["10.00"]).await;
    app.load_cards("aon", 1000, 3).await;

    let r = app.allocate("aon-1", &body("aon", "10.00", 5)).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "OUT_OF_STOCK");
    let details = &r.json()["error"]["details"];
    assert_eq!(details["requested"], 5);
    assert_eq!(details["available"], 3);
    assert!(r.json()["error"]["request_id"].is_string());
    assert_eq!(app.count("inventories", "status = 'active'").await, 3, "nothing allocated");
    assert_eq!(app.count("allocations", "").await, 0);
    assert_eq!(app.count("allocations", "request_fingerprint IS NOT NULL").await, 0, "no live key");
    // The popped ids went back to the cache.
    assert_eq!(app.cached_ids("aon").await.len(), 3);

    // The same key may be retried once stock allows: a failure is not stored.
    let r = app.allocate("aon-1", &body("aon", "10.00", 3)).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(card_ids(&r).len(), 3);
    app.finish().await;
}

#[tokio::test]
async fn replays_sequentially_byte_for_byte() {
    let app = TestApp::spawn().await;
    app.product("rep", "EUR", &["20.00"]).await;
    app.load_cards("rep", 2000, 10).await;

    let first = app.allocate("rep-key", &body("rep", "20.00", 2)).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), None);
    // Same meaning in another form ("20" and reordered keys) is the same request.
    let again = app.allocate("rep-key", r#"{"quantity":2,"denomination":"20","product_id":"rep"}"#).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(again.body, first.body, "byte for byte");
    assert_eq!(app.count("allocations", "").await, 1);
    assert_eq!(app.count("inventories", "status = 'allocated'").await, 2);

    // The allocation reads back, identically, to its owner.
    let id = first.json()["allocation_id"].as_str().unwrap().to_owned();
    let got = app.send("GET", &format!("/v1/allocations/{id}"), Some(&app.key), None, b"").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, first.body);

    // Another client sees 404, not 403, and its own key space is separate.
    let other = common::other_client_key(&app).await;
    let hidden = app.send("GET", &format!("/v1/allocations/{id}"), Some(&other), None, b"").await;
    assert_eq!(hidden.status, 404);
    assert_eq!(hidden.error_code(), "NOT_FOUND");
    let theirs =
        app.send("POST", "/v1/allocations", Some(&other), Some("rep-key"), body("rep", "20.00", 2).as_bytes()).await;
    assert_eq!(theirs.status, 201);
    assert_eq!(theirs.header("idempotent-replayed"), None);
    assert_ne!(card_ids(&theirs), card_ids(&first));
    let garbage = app.send("GET", "/v1/allocations/not-a-uuid", Some(&app.key), None, b"").await;
    assert_eq!(garbage.status, 404);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_make_one_allocation() {
    let app = TestApp::spawn().await;
    app.product("dup", "USD", &["50.00"]).await;
    app.load_cards("dup", 5000, 20).await;

    let replies = join_all((0..50).map(|_| app.allocate("same-key", body("dup", "50.00", 3)))).await;
    for r in &replies {
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.body, replies[0].body, "identical bodies");
    }
    assert_eq!(replies.iter().filter(|r| r.header("idempotent-replayed").is_none()).count(), 1);
    assert_eq!(app.count("allocations", "").await, 1);
    assert_eq!(app.count("inventories", "status = 'allocated'").await, 3);
    assert_eq!(app.count("inventories", "status = 'active'").await, 17);
    app.finish().await;
}

#[tokio::test]
async fn a_reused_key_with_another_body_is_a_mismatch() {
    let app = TestApp::spawn().await;
    app.product("mm", "USD", &["10.00", "25.00"]).await;
    app.load_cards("mm", 1000, 5).await;
    app.load_cards("mm", 2500, 5).await;

    assert_eq!(app.allocate("mm-key", &body("mm", "10.00", 1)).await.status, 201);
    for other in [
        body("mm", "25.00", 1),
        body("mm", "10.00", 2),
        r#"{"product_id":"mm","denomination":"10.00","quantity":1,"client_reference":"x"}"#.to_owned(),
    ] {
        let r = app.allocate("mm-key", &other).await;
        assert_eq!(r.status, 422, "{other}");
        assert_eq!(r.error_code(), "IDEMPOTENCY_MISMATCH");
    }
    assert_eq!(app.count("allocations", "").await, 1);
    assert_eq!(app.count("inventories", "status = 'allocated'").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn replays_after_the_cache_is_flushed() {
    let app = TestApp::spawn().await;
    app.product("fl", "USD", &["10.00"]).await;
    app.load_cards("fl", 1000, 10).await;

    let first = app.allocate("fl-key", &body("fl", "10.00", 4)).await;
    assert_eq!(first.status, 201);
    app.flush_cache().await;
    let again = app.allocate("fl-key", &body("fl", "10.00", 4)).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body);
    // New allocations keep working on a cold cache, from Postgres.
    let next = app.allocate("fl-key-2", &body("fl", "10.00", 6)).await;
    assert_eq!(next.status, 201, "{:?}", next.json());
    let a: HashSet<i64> = card_ids(&first).into_iter().collect();
    assert!(card_ids(&next).iter().all(|id| !a.contains(id)));
    assert_eq!(app.count("inventories", "status = 'active'").await, 0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocates_correctly_with_valkey_down() {
    // A port nothing listens on: every cache call fails fast, as with a stopped Valkey.
    let port = common::ports::closed_port();
    let app =
        TestApp::spawn_with(Options { valkey_url: Some(format!("redis://127.0.0.1:{port}")), ..Options::default() })
            .await;
    app.product("down", "USD", &["10.00"]).await;
    app.load_cards_db_only("down", 1000, 60).await;

    let replies = join_all((0..80).map(|i| app.allocate(format!("down-{i}"), body("down", "10.00", 1)))).await;
    let ok: Vec<&Reply> = replies.iter().filter(|r| r.status == 201).collect();
    let bad: Vec<String> = replies
        .iter()
        .filter(|r| r.status != 201)
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .take(3)
        .collect();
    assert_eq!(ok.len(), 60, "{bad:?}");
    assert!(replies.iter().filter(|r| r.status != 201).all(|r| r.error_code() == "OUT_OF_STOCK"));
    let ids: HashSet<i64> = ok.iter().flat_map(|r| card_ids(r)).collect();
    assert_eq!(ids.len(), 60);
    assert_eq!(app.count("inventories", "status = 'active'").await, 0);

    let ready = common::read(app.http.get(format!("{}/readyz", app.base)).send().await.unwrap()).await;
    assert_eq!(ready.status, 200, "Valkey down is degraded, not unready");
    assert_eq!(ready.json()["status"], "warn");
    assert_eq!(ready.header("content-type").as_deref(), Some("application/health+json"));
    app.finish().await;
}

/// Allocate pairs of "stale" cards one request at a time (keys `st-<i>`), collecting the card
/// ids, until a request is refused; it must be refused as out of stock.
async fn allocate_pairs_until_out_of_stock(app: &TestApp, i: &mut usize, got: &mut Vec<i64>) {
    loop {
        *i += 1;
        let r = app.allocate(format!("st-{i}"), body("stale", "10.00", 2)).await;
        if r.status != 201 {
            assert_eq!(r.error_code(), "OUT_OF_STOCK");
            return;
        }
        got.extend(card_ids(&r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocates_correctly_from_a_cache_full_of_stale_ids() {
    let app = TestApp::spawn().await;
    app.product("stale", "USD", &["10.00"]).await;
    let first = app.load_cards("stale", 1000, 30).await;
    // Every cached id goes stale: voided or allocated behind the cache's back.
    sqlx::query("UPDATE inventories SET status = 'void', voided_at = now(), void_reason = 'test' WHERE id = ANY($1)")
        .bind(&first[..30])
        .execute(&app.pool)
        .await
        .unwrap();
    // Fresh stock the cache does not know about.
    let fresh = app.load_cards_db_only("stale", 1000, 12).await;
    assert_eq!(app.cached_ids("stale").await.len(), 30);

    // Each request claims what is live among its ids, pops again for the stale ones (a bounded
    // number of times), and takes the rest from Postgres; stale ids leave the cache.
    let mut got: Vec<i64> = Vec::new();
    let mut i = 0;
    allocate_pairs_until_out_of_stock(&app, &mut i, &mut got).await;
    // Drained of stale ids, the warm set says "out of stock" without asking Postgres, until
    // it is rebuilt (the reconciler's job; done by hand here).
    assert!(app.cached_ids("stale").await.is_empty());
    app.rebuild_cache("stale").await;
    allocate_pairs_until_out_of_stock(&app, &mut i, &mut got).await;
    let unique: HashSet<i64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "no card twice");
    assert_eq!(unique, fresh.iter().copied().collect::<HashSet<_>>(), "only live cards, each once");
    assert_eq!(app.count("inventories", "status = 'void'").await, 30, "voided cards untouched");
    app.finish().await;
}

#[tokio::test]
async fn catalogue_lists_denominations_with_availability_and_etag() {
    let app = TestApp::spawn().await;
    app.product("cat-a", "USD", &["10.00", "25.00"]).await;
    app.product("cat-b", "JPY", &["1000"]).await;
    app.load_cards("cat-a", 1000, 4).await;
    app.load_cards_db_only("cat-b", 1000, 2).await;

    let r = app.send("GET", "/v1/products", Some(&app.key), None, b"").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["products"][0]["product_id"], "cat-a");
    assert_eq!(v["products"][0]["denominations"][0], serde_json::json!({"denomination": "10.00", "available": 4}));
    assert_eq!(v["products"][0]["denominations"][1], serde_json::json!({"denomination": "25.00", "available": 0}));
    // cat-b's set was never built: counted in Postgres.
    assert_eq!(v["products"][1]["denominations"][0], serde_json::json!({"denomination": "1000", "available": 2}));
    assert_eq!(r.header("cache-control").as_deref(), Some("max-age=5"));
    let etag = r.header("etag").unwrap();
    let cached = common::read(
        app.http
            .get(format!("{}/v1/products", app.base))
            .header("authorization", format!("Bearer {}", app.key))
            .header("if-none-match", &etag)
            .header(allot_shared::headers::SIGNATURE, app.sign("GET", "/v1/products", Some(&app.key), None, b""))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(cached.status, 304);
    app.finish().await;
}

#[tokio::test]
async fn revoked_keys_stop_working_within_the_cache_ttl() {
    let app = TestApp::spawn().await;
    app.product("rv", "USD", &["10.00"]).await;
    app.load_cards("rv", 1000, 5).await;
    assert_eq!(app.allocate("rv-1", &body("rv", "10.00", 1)).await.status, 201);
    let key_id = app.key.split('_').nth(2).unwrap().to_owned();
    allot_origin::ops::revoke_key(&app.pool, &allot_origin::ops::Actor::cli(), &key_id).await.unwrap();
    // The test TTL is 300 ms.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = app.allocate("rv-2", &body("rv", "10.00", 1)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "UNAUTHORIZED");
    assert_eq!(app.count("allocations", "").await, 1);
    app.finish().await;
}
