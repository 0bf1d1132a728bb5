//! Batched allocations: one Valkey pipeline pops for many requests and one statement writes
//! them, each request still all-or-nothing and idempotent on its own.

mod common;

use allot_origin::batch::{Batcher, Item, ItemOutcome};
use allot_origin::cache::Popped;
use common::TestApp;
use uuid::Uuid;

fn item(app: &TestApp, key: &str, product: &str, denomination_minor: i64, quantity: i32) -> Item {
    Item {
        client_id: app.client_id,
        key: key.to_owned(),
        fingerprint: vec![7; 32],
        allocation_id: Uuid::now_v7(),
        product_id: product.into(),
        denomination_minor,
        quantity,
        client_reference: None,
        event: serde_json::json!({"key": key}),
        trace_context: None,
        span: tracing::Span::none(),
    }
}

fn kind(o: &ItemOutcome) -> &'static str {
    match o {
        ItemOutcome::Created(..) => "created",
        ItemOutcome::KeyExists(_) => "key exists",
        ItemOutcome::Stale(_) => "stale",
        ItemOutcome::NotPopped(Ok(Popped::Cold)) => "cold",
        ItemOutcome::NotPopped(Ok(Popped::Ids(_))) => "short",
        ItemOutcome::NotPopped(Err(e)) => panic!("cache failed: {e}"),
        ItemOutcome::BatchFailed(_, e) => panic!("batch failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_request_in_a_batch_gets_its_own_outcome() {
    let app = TestApp::spawn().await;
    app.product("b", "USD", &["10.00", "20.00", "30.00"]).await;
    app.product("cold", "USD", &["10.00"]).await;
    app.load_cards_db_only("b", 1000, 12).await;
    let twenties = app.load_cards_db_only("b", 2000, 2).await;
    app.load_cards_db_only("b", 3000, 1).await;
    app.load_cards_db_only("cold", 1000, 5).await;
    app.rebuild_cache("b").await;
    // One key already live; one 20.00 card gone in Postgres but still in the cache.
    let used = app.allocate("used", r#"{"product_id":"b","denomination":"10.00","quantity":1}"#).await;
    assert_eq!(used.status, 201);
    sqlx::query("UPDATE inventories SET status = 'void' WHERE id = $1")
        .bind(twenties[1])
        .execute(&app.pool)
        .await
        .unwrap();

    let batcher = Batcher::start(app.pool.clone(), app.cache.clone(), 1);
    let jobs = vec![
        item(&app, "good-1", "b", 1000, 2),
        item(&app, "stale", "b", 2000, 2),
        item(&app, "used", "b", 1000, 1),
        item(&app, "good-2", "b", 1000, 3),
        item(&app, "short", "b", 3000, 2),
        item(&app, "cold", "cold", 1000, 1),
        item(&app, "twice", "b", 1000, 1),
        item(&app, "twice", "b", 1000, 1),
    ];
    let outcomes = futures::future::join_all(jobs.into_iter().map(|j| batcher.submit(j))).await;
    let kinds: Vec<&str> = outcomes.iter().map(kind).collect();
    assert_eq!(kinds[..6], ["created", "stale", "key exists", "created", "short", "cold"]);
    // Two requests with one key: exactly one allocation.
    assert_eq!(kinds[6..].iter().filter(|k| **k == "created").count(), 1, "{kinds:?}");
    assert_eq!(kinds[6..].iter().filter(|k| **k == "key exists").count(), 1, "{kinds:?}");

    // Created: the cards asked for, listed in their positions, each now the allocation's.
    for (o, n) in [(&outcomes[0], 2), (&outcomes[3], 3)] {
        let ItemOutcome::Created(_, cards) = o else { unreachable!() };
        assert_eq!(cards.iter().map(|c| c.position).collect::<Vec<_>>(), (0..n).collect::<Vec<i16>>());
        let ids: Vec<i64> = cards.iter().map(|c| c.id).collect();
        let owners: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT allocation_id) FROM inventories WHERE id = ANY($1) AND status = 'allocated'",
        )
        .bind(&ids)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(owners, 1);
        // The outbox event names exactly these cards, in order.
        let event_ids: serde_json::Value = sqlx::query_scalar(
            "SELECT payload->'card_ids' FROM outbox WHERE aggregate_id = (SELECT allocation_id::text FROM inventories WHERE id = $1)",
        )
        .bind(ids[0])
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(event_ids, serde_json::json!(ids));
    }
    // The others carry the ids popped for them, none allocated: the caller puts them back.
    let ItemOutcome::Stale(stale) = &outcomes[1] else { unreachable!() };
    assert_eq!(stale.len(), 2);
    assert!(stale.contains(&twenties[1]));
    let ItemOutcome::KeyExists(used_ids) = &outcomes[2] else { unreachable!() };
    let ItemOutcome::NotPopped(Ok(Popped::Ids(short))) = &outcomes[4] else { unreachable!() };
    assert_eq!(short.len(), 1, "the one 30.00 card");
    let unwritten: Vec<i64> =
        stale.iter().chain(used_ids).chain(short).copied().filter(|id| *id != twenties[1]).collect();
    assert_eq!(unwritten.len(), 3);
    assert_eq!(app.count("inventories", &format!("status = 'active' AND id IN ({})", join(&unwritten))).await, 3);

    assert_eq!(app.count("allocations", "").await, 1 + 3);
    assert_eq!(app.count("inventories", "allocation_id IS NOT NULL").await, 1 + 2 + 3 + 1);
    assert_eq!(app.count("outbox", "").await, 1 + 3);
    app.finish().await;
}

fn join(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}
