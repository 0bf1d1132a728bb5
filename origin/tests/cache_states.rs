//! The cache's states seen through the API: a built set that is short answers out of stock
//! without Postgres, a missing set is rebuilt once (across instances too), and a bulk import
//! leaves the planner with statistics.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use allot_origin::ops::{self, NewCard};
use common::{Reply, TestApp};
use futures::future::join_all;

fn body(product: &str, quantity: u32) -> String {
    format!(r#"{{"product_id":"{product}","denomination":"10.00","quantity":{quantity}}}"#)
}

fn card_ids(r: &Reply) -> Vec<i64> {
    r.json()["cards"].as_array().unwrap().iter().map(|c| c["card_id"].as_i64().unwrap()).collect()
}

/// Wait until the product's set exists again (rebuilt), for at most 30 s.
async fn until_built(app: &TestApp, product: &str) -> Duration {
    let started = Instant::now();
    let mut conn = common::valkey_connection();
    loop {
        let exists: bool = redis::cmd("EXISTS").arg(app.cache.key(product)).query_async(&mut conn).await.unwrap();
        if exists {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the set of {product} was never rebuilt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The cache state `/health` reports for a product.
async fn health_state(app: &TestApp, product: &str) -> String {
    let h = common::read(app.http.get(format!("{}/health", app.operator)).send().await.unwrap()).await.json();
    let sets = h["checks"]["valkey:products"].as_array().unwrap_or_else(|| panic!("no cache states in {h}"));
    let mine = sets.iter().find(|c| c["componentId"] == product).unwrap_or_else(|| panic!("{product} not in {h}"));
    mine["observedValue"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_sold_out_bucket_answers_from_the_cache_and_still_replays() {
    let app = TestApp::spawn().await;
    app.product("so", "USD", &["10.00"]).await;
    app.load_cards("so", 1000, 3).await;
    let first = app.allocate("so-1", body("so", 3)).await;
    assert_eq!(first.status, 201);

    // Cards the warm set does not know: had Postgres been asked, they would be allocated.
    let unknown = app.load_cards_db_only("so", 1000, 5).await;
    let r = app.allocate("so-2", body("so", 1)).await;
    assert_eq!(r.status, 409, "{:?}", r.json());
    assert_eq!(r.error_code(), "OUT_OF_STOCK");
    assert_eq!(r.json()["error"]["details"]["available"], 0);
    let active =
        format!("status = 'active' AND id IN ({})", unknown.iter().map(i64::to_string).collect::<Vec<_>>().join(","));
    assert_eq!(app.count("inventories", &active).await, 5, "the answer came from the cache");
    assert_eq!(app.count("allocations", "").await, 1, "nothing written");

    // A retry of the allocation that sold it out still gets it back, byte for byte.
    let again = app.allocate("so-1", body("so", 3)).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(again.body, first.body);
    let other = app.allocate("so-1", body("so", 2)).await;
    assert_eq!(other.status, 422);
    assert_eq!(other.error_code(), "IDEMPOTENCY_MISMATCH");

    // Many at once (their key lookups share statements): each gets its own answer.
    let keys: Vec<String> = (0..40).map(|i| if i == 17 { "so-1".to_owned() } else { format!("so-x{i}") }).collect();
    let replies = join_all(keys.iter().map(|k| app.allocate(k, body("so", 3)))).await;
    for (k, r) in keys.iter().zip(&replies) {
        if k == "so-1" {
            assert_eq!(r.body, first.body, "the live key replays");
        } else {
            assert_eq!(r.error_code(), "OUT_OF_STOCK", "{k}");
        }
    }
    assert_eq!(app.count("allocations", "").await, 1, "nothing written");
    app.finish().await;
}

#[tokio::test]
async fn a_flushed_sold_out_product_is_rebuilt_warm_and_empty() {
    let app = TestApp::spawn().await;
    app.product("gone", "USD", &["10.00"]).await;
    app.load_cards("gone", 1000, 2).await;
    assert_eq!(app.allocate("g-1", body("gone", 2)).await.status, 201);
    assert_eq!(health_state(&app, "gone").await, "warm");

    app.flush_cache().await;
    assert_eq!(health_state(&app, "gone").await, "cold");
    // Cold: Postgres answers this one, and the set is rebuilt, empty but built.
    let r = app.allocate("g-2", body("gone", 1)).await;
    assert_eq!(r.error_code(), "OUT_OF_STOCK");
    until_built(&app, "gone").await;
    assert_eq!(health_state(&app, "gone").await, "warm");
    assert_eq!(app.state.engine.rebuilder().unwrap().completed(), 1);

    // Warm and empty: the cache answers, so cards Postgres alone knows stay untouched.
    app.load_cards_db_only("gone", 1000, 1).await;
    let r = app.allocate("g-3", body("gone", 1)).await;
    assert_eq!(r.error_code(), "OUT_OF_STOCK");
    assert_eq!(app.count("inventories", "status = 'active'").await, 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_set_is_rebuilt_once_across_two_instances() {
    let app = TestApp::spawn().await;
    let (twin, twin_state) = app.twin().await;
    app.product("two", "USD", &["10.00"]).await;
    app.load_cards("two", 1000, 3000).await;
    app.flush_cache().await;

    let bases = [app.base.clone(), twin];
    let replies = join_all((0..120).map(|i| {
        let (app, base) = (&app, &bases[i % 2]);
        async move {
            let key = format!("two-{i}");
            app.send_to(base, "POST", "/v1/allocations", Some(&app.key), Some(&key), body("two", 1).as_bytes()).await
        }
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == 201), "{:?}", replies.iter().find(|r| r.status != 201));
    let ids: HashSet<i64> = replies.iter().flat_map(card_ids).collect();
    assert_eq!(ids.len(), 120, "no card twice");
    until_built(&app, "two").await;
    // Wait out rebuilds still deciding (a late cold request may race the lock), then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let here = app.state.engine.rebuilder().unwrap().completed();
    let there = twin_state.engine.rebuilder().unwrap().completed();
    assert_eq!(here + there, 1, "one rebuild in all (here {here}, there {there})");
    // The rebuilt set holds exactly the active cards (no allocated one, none missing).
    let active: HashSet<i64> = sqlx::query_scalar("SELECT id FROM inventories WHERE status = 'active'")
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let cached: HashSet<i64> = app.cached_ids("two").await.into_iter().collect();
    assert!(cached.is_superset(&active), "no active card missing from the rebuilt set");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocations_right_after_a_bulk_import_are_served_warm_with_planner_statistics() {
    let app = TestApp::spawn().await;
    app.product("bulk", "USD", &["10.00"]).await;
    // A new product: its set does not exist yet, so the load builds it after its commit.
    let cards: Vec<NewCard> = (0..20_000)
        .map(|i| NewCard { code: format!("BULK-{i}-{}", uuid::Uuid::new_v4().simple()), pin: None, expires_at: None })
        .collect();
    let loaded =
        ops::load_cards(&app.pool, &ops::Actor::cli(), Some(&app.cache), &app.config.card_keys, "bulk", 1000, &cards)
            .await
            .unwrap();
    assert_eq!(health_state(&app, "bulk").await, "warm", "the import built the set");
    assert_eq!(app.cached_ids("bulk").await.len(), 20_000);
    // The load ends with ANALYZE: the planner knows the table at once, not after autoanalyze.
    let (analyzed, estimate): (bool, f32) = sqlx::query_as(
        "SELECT last_analyze IS NOT NULL, (SELECT reltuples FROM pg_class WHERE relname = 'inventories')
           FROM pg_stat_user_tables WHERE relname = 'inventories'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(analyzed, "inventories analyzed by the load");
    assert!(estimate >= 15_000.0, "the planner's row estimate follows the load: {estimate}");

    let replies = join_all((0..64).map(|i| app.allocate(format!("bulk-{i}"), body("bulk", 2)))).await;
    assert!(replies.iter().all(|r| r.status == 201), "{:?}", replies.iter().find(|r| r.status != 201));
    let ids: HashSet<i64> = replies.iter().flat_map(card_ids).collect();
    assert_eq!(ids.len(), 128, "no card twice");
    assert!(ids.iter().all(|id| loaded.contains(id)));
    app.finish().await;
}
