//! Batched allocations: one Valkey pipeline pops for many requests and one statement writes
//! them, each request still all-or-nothing and idempotent on its own.

mod common;

use std::sync::Arc;

use allot_origin::allocation::pop::{PopAsk, PopStage};
use allot_origin::allocation::request::NewAllocation;
use allot_origin::allocation::write::{WriteAsk, WriteStage, Written};
use allot_origin::cache::Popped;
use allot_origin::coalescer::Coalescer;
use allot_shared::Currency;
use common::TestApp;
use uuid::Uuid;

fn allocation(app: &TestApp, key: &str, product: &str, denomination_minor: i64, quantity: u32) -> Arc<NewAllocation> {
    Arc::new(NewAllocation {
        id: Uuid::now_v7(),
        client_id: app.client_id,
        key: key.to_owned(),
        fingerprint: [7; 32],
        product_id: product.into(),
        currency: Currency::parse("USD").unwrap(),
        denomination_minor,
        quantity,
        client_reference: None,
        trace_context: None,
    })
}

fn kind(o: &Written) -> &'static str {
    match o {
        Written::Created(..) => "created",
        Written::KeyExists => "key exists",
        Written::Stale => "stale",
        Written::Unfunded(_) => "unfunded",
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
    sqlx::query("UPDATE inventories SET status = 'void', voided_at = now(), void_reason = 'test' WHERE id = $1")
        .bind(twenties[1])
        .execute(&app.pool)
        .await
        .unwrap();

    let asks = [
        allocation(&app, "good-1", "b", 1000, 2),
        allocation(&app, "stale", "b", 2000, 2),
        allocation(&app, "used", "b", 1000, 1),
        allocation(&app, "good-2", "b", 1000, 3),
        allocation(&app, "short", "b", 3000, 2),
        allocation(&app, "cold", "cold", 1000, 1),
        allocation(&app, "twice", "b", 1000, 1),
        allocation(&app, "twice", "b", 1000, 1),
    ];
    // Stage one: every pop in one pipeline. A short set pops nothing; a cold one says so.
    let popper = Coalescer::start(64, std::future::pending(), PopStage::new(app.cache.clone()));
    let pops = futures::future::join_all(
        asks.iter().map(|a| popper.submit(PopAsk { allocation: a.clone(), span: tracing::Span::none() })),
    )
    .await;
    let pops: Vec<Popped> = pops.into_iter().map(|p| p.unwrap().unwrap()).collect();
    assert_eq!(pops[4], Popped::Short { available: 1 }, "the one 30.00 card stays in the set");
    assert_eq!(pops[5], Popped::Cold);
    // 15 cards, one allocated over HTTP above; 10 popped now.
    assert_eq!(app.cached_ids("b").await.len(), 14 - 10, "the others popped exactly what they asked for");

    // Stage two: every popped request in one statement, each with its own outcome.
    // It keeps a connection: it stops (and gives it back) when the pool closes.
    let writer = Coalescer::start(64, app.pool.close_event(), WriteStage::new(app.pool.clone()));
    let popped: Vec<(usize, Vec<i64>)> = pops
        .iter()
        .enumerate()
        .filter_map(|(i, p)| if let Popped::Ids(ids) = p { Some((i, ids.clone())) } else { None })
        .collect();
    let written = futures::future::join_all(popped.iter().map(|(i, ids)| {
        writer.submit(WriteAsk { allocation: asks[*i].clone(), ids: ids.clone(), span: tracing::Span::none() })
    }))
    .await;
    let outcomes: Vec<Written> = written.into_iter().map(|w| w.unwrap().expect("the batch statement ran")).collect();
    let kinds: Vec<&str> = outcomes.iter().map(kind).collect();
    assert_eq!(kinds[..4], ["created", "stale", "key exists", "created"]);
    // Two requests with one key: exactly one allocation.
    assert_eq!(kinds[4..].iter().filter(|k| **k == "created").count(), 1, "{kinds:?}");
    assert_eq!(kinds[4..].iter().filter(|k| **k == "key exists").count(), 1, "{kinds:?}");

    // Created: the cards asked for, listed in their positions, each now the allocation's.
    for (o, n) in [(&outcomes[0], 2), (&outcomes[3], 3)] {
        let Written::Created(_, cards) = o else { unreachable!() };
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
    // Nothing was written for the others: the ids popped for them are still active, but
    // the stale one, for the caller to put back.
    let stale = &popped[1].1;
    assert!(stale.contains(&twenties[1]));
    let unwritten: Vec<i64> = stale.iter().chain(&popped[2].1).copied().filter(|id| *id != twenties[1]).collect();
    assert_eq!(unwritten.len(), 2);
    assert_eq!(app.count("inventories", &format!("status = 'active' AND id IN ({})", join(&unwritten))).await, 2);

    assert_eq!(app.count("allocations", "").await, 1 + 3);
    assert_eq!(app.count("inventories", "allocation_id IS NOT NULL").await, 1 + 2 + 3 + 1);
    assert_eq!(app.count("outbox", "").await, 1 + 3);
    app.finish().await;
}

fn join(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}
