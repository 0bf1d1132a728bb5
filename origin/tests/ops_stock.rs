//! Stock per bucket, low-stock thresholds, and the stock-watch job's transitions through the
//! outbox, against the real Postgres and Valkey.

mod common;

use allot_origin::jobs::stock_watch::StockWatch;
use allot_origin::jobs::{self, JobContext, RunOutcome};
use allot_origin::services::Services;
use common::{Options, TestApp, operator_token};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn with_threshold(n: u32) -> Options {
    Options { extra: vec![("ALLOT_STOCK_LOW_THRESHOLD".into(), n.to_string())], ..Options::default() }
}

fn ctx(app: &TestApp) -> JobContext {
    Services::init(app.config.clone()).unwrap().job_context(CancellationToken::new())
}

async fn allocate(app: &TestApp, idem: &str, product: &str, denomination: &str, quantity: u32) {
    let body = json!({"product_id": product, "denomination": denomination, "quantity": quantity}).to_string();
    let r = app.allocate(idem, body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

/// The listed bucket of `product` at `denomination_minor`.
fn bucket(doc: &Value, product: &str, denomination_minor: i64) -> Value {
    doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["product_id"] == product && b["denomination_minor"] == denomination_minor)
        .unwrap_or_else(|| panic!("no bucket {product}/{denomination_minor} in {doc}"))
        .clone()
}

#[tokio::test]
async fn the_stock_listing_shows_postgres_the_cache_and_the_rate() {
    let app = TestApp::spawn_with(with_threshold(10)).await;
    let viewer = operator_token(&app, "viewer").await;
    app.product("sk", "USD", &["10.00", "25.00"]).await;
    app.product("em", "JPY", &["500"]).await;
    app.load_cards("sk", 1000, 30).await;
    app.load_cards("sk", 2500, 5).await;
    allocate(&app, "a1", "sk", "10.00", 2).await;
    allocate(&app, "a2", "sk", "10.00", 3).await;
    // One of them two hours ago: in the day's count, not the hour's.
    sqlx::query("UPDATE allocations SET created_at = now() - interval '2 hours' WHERE idempotency_key = 'a1'")
        .execute(&app.pool)
        .await
        .unwrap();

    let r = app.ops("GET", "/ops/v1/stock", Some(&viewer), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let doc = r.json();
    assert_eq!(doc["items"].as_array().unwrap().len(), 3, "{doc}");
    let ten = bucket(&doc, "sk", 1000);
    assert_eq!(ten["currency"], "USD");
    assert_eq!(ten["denomination"], "10.00");
    assert_eq!(ten["active"], 25);
    assert_eq!(ten["cached"], 25);
    assert_eq!((ten["allocated_1h"].as_i64(), ten["allocated_24h"].as_i64()), (Some(3), Some(5)));
    assert!((ten["rate_per_hour"].as_f64().unwrap() - 5.0 / 24.0).abs() < 1e-9, "{ten}");
    assert!((ten["days_of_cover"].as_f64().unwrap() - 5.0).abs() < 1e-9, "25 cards at 5 a day: {ten}");
    assert_eq!((ten["low_stock_threshold"].as_i64(), ten["threshold_source"].as_str()), (Some(10), Some("default")));
    assert_eq!(ten["state"], "ok");
    assert_eq!(ten["published_state"], "ok");
    assert!(ten["published_state_at"].is_string());
    let twenty_five = bucket(&doc, "sk", 2500);
    assert_eq!((twenty_five["active"].as_i64(), twenty_five["state"].as_str()), (Some(5), Some("low")));
    assert!(twenty_five["days_of_cover"].is_null(), "nothing allocated: no rate, no cover");
    assert_eq!(twenty_five["rate_per_hour"], 0.0);
    let empty = bucket(&doc, "em", 500);
    assert_eq!((empty["denomination"].as_str(), empty["state"].as_str()), (Some("500"), Some("out")));
    assert!(empty["cached"].is_null(), "never built: the set is missing");

    // Filters.
    let out = app.ops("GET", "/ops/v1/stock?state=out", Some(&viewer), None).await.json();
    assert_eq!(out["items"].as_array().unwrap().len(), 1);
    assert_eq!(out["items"][0]["product_id"], "em");
    let sk = app.ops("GET", "/ops/v1/stock?product_id=sk&state=low", Some(&viewer), None).await.json();
    assert_eq!(sk["items"].as_array().unwrap().len(), 1);
    assert_eq!(sk["items"][0]["denomination_minor"], 2500);
    for bad in ["state=empty", "colour=blue"] {
        let r = app.ops("GET", &format!("/ops/v1/stock?{bad}"), Some(&viewer), None).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"), "{bad}");
    }

    // Cache flushed: Postgres figures stay, the cache's are unknown.
    app.flush_cache().await;
    let doc = app.ops("GET", "/ops/v1/stock?product_id=sk", Some(&viewer), None).await.json();
    let ten = bucket(&doc, "sk", 1000);
    assert!(ten["cached"].is_null(), "{ten}");
    assert_eq!(ten["active"], 25);
    app.finish().await;
}

#[tokio::test]
async fn the_stock_listing_answers_while_valkey_is_down() {
    let dead = format!("redis://127.0.0.1:{}", common::ports::closed_port());
    let app = TestApp::spawn_with(Options { valkey_url: Some(dead), ..Options::default() }).await;
    let viewer = operator_token(&app, "viewer").await;
    app.product("vd", "EUR", &["5.00"]).await;
    app.load_cards_db_only("vd", 500, 4).await;
    let r = app.ops("GET", "/ops/v1/stock", Some(&viewer), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let b = bucket(&r.json(), "vd", 500);
    assert_eq!(b["active"], 4);
    assert!(b["cached"].is_null(), "{b}");
    app.finish().await;
}

#[tokio::test]
async fn thresholds_are_validated_audited_and_change_the_state() {
    let app = TestApp::spawn_with(with_threshold(10)).await;
    let viewer = operator_token(&app, "viewer").await;
    let operator = operator_token(&app, "operator").await;
    app.product("th", "USD", &["25.00"]).await;
    app.load_cards("th", 2500, 20).await;
    let path = "/ops/v1/stock/th/25.00/threshold";

    let r = app.ops("PUT", path, Some(&viewer), Some(json!({"low_stock_threshold": 50}))).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "FORBIDDEN"));
    for bad in [
        json!({"low_stock_threshold": -1}),
        json!({"low_stock_threshold": 100_000_001}),
        json!({"low_stock_threshold": "ten"}),
        json!({"low_stock_threshold": 2.5}),
        json!({}),
        json!({"low_stock_threshold": 5, "extra": 1}),
    ] {
        let r = app.ops("PUT", path, Some(&operator), Some(bad.clone())).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"), "{bad}");
    }
    let body = json!({"low_stock_threshold": 5});
    let bad_denomination = app.ops("PUT", "/ops/v1/stock/th/abc/threshold", Some(&operator), Some(body.clone())).await;
    assert_eq!(bad_denomination.status, 400);
    assert_eq!(bad_denomination.json()["error"]["details"]["field"], "denomination", "{:?}", bad_denomination.json());
    for missing in ["/ops/v1/stock/nope/25.00/threshold", "/ops/v1/stock/th/30.00/threshold"] {
        let r = app.ops("PUT", missing, Some(&operator), Some(body.clone())).await;
        assert_eq!((r.status, r.error_code().as_str()), (404, "NOT_FOUND"), "{missing}");
    }
    assert!(app.audit_rows("stock.threshold").await.is_empty(), "nothing refused was written");

    // 20 active: ok under the default 10; low under 50.
    let r = app.ops("PUT", path, Some(&operator), Some(json!({"low_stock_threshold": 50}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let doc = r.json();
    assert_eq!((doc["low_stock_threshold"].as_i64(), doc["threshold_source"].as_str()), (Some(50), Some("bucket")));
    assert_eq!(doc["state"], "low");
    let operator_id =
        app.ops("GET", "/ops/v1/me", Some(&operator), None).await.json()["id"].as_str().unwrap().to_owned();
    let rows = app.audit_rows("stock.threshold").await;
    assert_eq!(rows.len(), 1);
    let (actor, target, change, request_id) = &rows[0];
    assert_eq!((actor.as_str(), target.as_str()), (operator_id.as_str(), "th/2500"));
    assert_eq!((&change["from"], &change["to"]), (&Value::Null, &json!(50)));
    assert_eq!(request_id.as_deref(), r.header("x-request-id").as_deref());

    // null: back to the default.
    let r = app.ops("PUT", path, Some(&operator), Some(json!({"low_stock_threshold": null}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!((r.json()["low_stock_threshold"].as_i64(), r.json()["state"].as_str()), (Some(10), Some("ok")));
    let rows = app.audit_rows("stock.threshold").await;
    assert_eq!((&rows[0].2["from"], &rows[0].2["to"]), (&json!(50), &Value::Null));
    let stored: Option<i32> =
        sqlx::query_scalar("SELECT low_stock_threshold FROM product_denominations WHERE product_id = 'th'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, None);
    app.finish().await;
}

async fn watch(ctx: &JobContext) -> serde_json::Map<String, Value> {
    match jobs::run_once(&StockWatch, ctx, None, "test").await.unwrap() {
        RunOutcome::Succeeded(c) => c,
        other => panic!("stock-watch did not succeed: {other:?}"),
    }
}

/// The stock events in the outbox, oldest first: (topic, aggregate id, payload).
async fn stock_events(app: &TestApp) -> Vec<(String, String, Value)> {
    sqlx::query_as("SELECT topic, aggregate_id, payload FROM outbox WHERE topic LIKE 'stock.%' ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

fn metric(exported: &str, line_prefix: &str) -> Option<f64> {
    exported.lines().find_map(|l| l.strip_prefix(line_prefix).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test]
async fn each_transition_goes_out_once_through_the_outbox() {
    let app = TestApp::spawn_with(with_threshold(10)).await;
    assert!(
        jobs::registry(&app.config, true).iter().any(|j| j.name() == "stock-watch"),
        "registered with housekeeping"
    );
    app.product("tw", "USD", &["10.00"]).await;
    let ctx = ctx(&app);
    let low_before =
        metric(&allot_origin::telemetry::metrics().render(), r#"allot_stock_transitions_total{state="low"} "#)
            .unwrap_or(0.0);

    // (what happens, the state, the topic it publishes)
    app.load_cards("tw", 1000, 20).await;
    let counts = watch(&ctx).await;
    assert_eq!((counts["buckets"].as_u64(), counts["transitions"].as_u64()), (Some(1), Some(0)), "ok stays ok");
    allocate(&app, "t1", "tw", "10.00", 12).await;
    assert_eq!(watch(&ctx).await["transitions"], 1);
    assert_eq!(watch(&ctx).await["transitions"], 0, "published once");
    let gauge = r#"allot_stock_state{product_id="tw",denomination_minor="1000"} "#;
    assert_eq!(metric(&allot_origin::telemetry::metrics().render(), gauge), Some(1.0), "low");
    allocate(&app, "t2", "tw", "10.00", 8).await;
    watch(&ctx).await;
    assert_eq!(metric(&allot_origin::telemetry::metrics().render(), gauge), Some(2.0), "out");
    app.load_cards("tw", 1000, 5).await;
    watch(&ctx).await;
    app.load_cards("tw", 1000, 20).await;
    watch(&ctx).await;
    assert_eq!(watch(&ctx).await["transitions"], 0);
    assert_eq!(metric(&allot_origin::telemetry::metrics().render(), gauge), Some(0.0), "ok");
    let low_after =
        metric(&allot_origin::telemetry::metrics().render(), r#"allot_stock_transitions_total{state="low"} "#).unwrap();
    assert!(low_after >= low_before + 2.0, "{low_before} → {low_after}");

    let events = stock_events(&app).await;
    let seen: Vec<(&str, &str, &str, i64)> = events
        .iter()
        .map(|(t, _, p)| {
            (t.as_str(), p["previous"].as_str().unwrap(), p["state"].as_str().unwrap(), p["active"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("stock.low", "ok", "low", 8),
            ("stock.out", "low", "out", 0),
            ("stock.low", "out", "low", 5),
            ("stock.restored", "low", "ok", 25),
        ]
    );
    for (_, aggregate, payload) in &events {
        assert_eq!(aggregate, "tw/1000");
        assert_eq!(payload["product_id"], "tw");
        assert_eq!(payload["denomination_minor"], 1000);
        assert_eq!(payload["currency"], "USD");
        assert_eq!(payload["threshold"], 10);
        assert!(payload["at"].is_string());
        assert!(!payload.to_string().contains("CODE-"), "never a card code: {payload}");
    }
    // The published state is what the listing shows.
    let (state, at_changed): (String, bool) = sqlx::query_as(
        "SELECT stock_state, stock_state_at > now() - interval '1 hour' FROM product_denominations WHERE product_id = 'tw'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), at_changed), ("ok", true));
    app.finish().await;
}

#[tokio::test]
async fn a_bucket_that_sells_out_from_ok_goes_straight_to_out() {
    let app = TestApp::spawn_with(with_threshold(2)).await;
    app.product("so", "EUR", &["5.00"]).await;
    app.load_cards("so", 500, 6).await;
    let ctx = ctx(&app);
    assert_eq!(watch(&ctx).await["transitions"], 0);
    allocate(&app, "s1", "so", "5.00", 6).await;
    assert_eq!(watch(&ctx).await["transitions"], 1);
    let events = stock_events(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].0.as_str(), events[0].2["previous"].as_str()), ("stock.out", Some("ok")));
    app.finish().await;
}
