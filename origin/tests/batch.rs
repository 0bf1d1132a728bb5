//! Batched allocations: one statement for many requests, each still all-or-nothing and
//! idempotent on its own.

mod common;

use allot_origin::batch::{Batcher, Item, ItemOutcome};
use common::TestApp;
use uuid::Uuid;

fn item(app: &TestApp, key: &str, cards: &[i64]) -> Item {
    Item {
        client_id: app.client_id,
        key: key.to_owned(),
        fingerprint: vec![7; 32],
        allocation_id: Uuid::now_v7(),
        product_id: "b".into(),
        denomination_minor: 1000,
        quantity: cards.len() as i32,
        client_reference: None,
        event: serde_json::json!({}),
        trace_context: None,
        card_ids: cards.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_request_in_a_batch_gets_its_own_outcome() {
    let app = TestApp::spawn().await;
    app.product("b", "USD", &["10.00"]).await;
    let ids = app.load_cards_db_only("b", 1000, 12).await;
    // One card already gone, and one key already used.
    sqlx::query("UPDATE inventories SET status = 'void' WHERE id = $1").bind(ids[11]).execute(&app.pool).await.unwrap();
    let used = app.allocate("used", r#"{"product_id":"b","denomination":"10.00","quantity":1}"#).await;
    assert_eq!(used.status, 201);
    let taken = used.json()["cards"][0]["card_id"].as_i64().unwrap();
    let free: Vec<i64> = ids.iter().copied().filter(|id| *id != taken && *id != ids[11]).collect();

    // One worker, so everything submitted together lands in one statement.
    let batcher = Batcher::start(app.pool.clone(), 1);
    let jobs = vec![
        item(&app, "good-1", &free[0..2]),
        item(&app, "stale", &[free[2], ids[11]]),
        item(&app, "used", &free[3..4]),
        item(&app, "good-2", &free[4..7]),
        item(&app, "twice", &free[7..8]),
        item(&app, "twice", &free[8..9]),
    ];
    let outcomes = futures::future::join_all(jobs.into_iter().map(|j| batcher.submit(j))).await;
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            ItemOutcome::Created(..) => "created",
            ItemOutcome::KeyExists => "key exists",
            ItemOutcome::Stale => "stale",
            ItemOutcome::BatchFailed(e) => panic!("batch failed: {e}"),
        })
        .collect();
    assert_eq!(kinds[..4], ["created", "stale", "key exists", "created"]);
    // Two requests with one key in one batch: exactly one allocation.
    assert_eq!(kinds[4..].iter().filter(|k| **k == "created").count(), 1, "{kinds:?}");
    assert_eq!(kinds[4..].iter().filter(|k| **k == "key exists").count(), 1, "{kinds:?}");
    if let ItemOutcome::Created(_, cards) = &outcomes[3] {
        assert_eq!(cards.iter().map(|c| c.id).collect::<Vec<_>>(), free[4..7], "in the order given");
    }
    // The stale request wrote nothing: its live card is still active.
    let active: Vec<i64> = sqlx::query_scalar("SELECT id FROM inventories WHERE status = 'active' ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(active.contains(&free[2]) && active.contains(&free[3]));
    assert_eq!(app.count("allocations", "").await, 1 + 3);
    assert_eq!(app.count("inventories", "allocation_id IS NOT NULL").await, 1 + 2 + 3 + 1);
    assert_eq!(app.count("outbox", "").await, 1 + 3);
    app.finish().await;
}
