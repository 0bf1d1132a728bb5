//! `/metrics` parses as Prometheus text and its counters move by the right amounts.
//! (Its own test binary: the recorder is global to a process.)

mod common;

use std::collections::HashMap;

use common::TestApp;

/// `name{labels}` → value, for every sample line.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(series.starts_with("allot_"), "unexpected metric {series}");
        out.insert(series.to_owned(), value);
    }
    out
}

async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let r = common::read(app.http.get(format!("{}/metrics", app.operator)).send().await.unwrap()).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    parse(std::str::from_utf8(&r.body).unwrap())
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_by_the_right_amounts() {
    let app = TestApp::spawn().await;
    app.product("m", "USD", &["10.00"]).await;
    app.load_cards("m", 1000, 3).await;
    let before = scrape(&app).await;

    let body = r#"{"product_id":"m","denomination":"10.00","quantity":1}"#;
    for i in 0..3 {
        assert_eq!(app.allocate(format!("m-{i}"), body).await.status, 201);
    }
    assert_eq!(app.allocate("m-0", body).await.status, 201); // a replay
    assert_eq!(app.allocate("m-4", body).await.status, 409); // sold out
    let r = app.send("GET", "/v1/products", Some(&app.key), None, b"").await;
    assert_eq!(r.status, 200);
    let after = scrape(&app).await;
    let delta = |s: &str| get(&after, s) - get(&before, s);

    assert_eq!(delta(r#"allot_allocations_total{outcome="created",code="none"}"#), 3.0);
    assert_eq!(delta(r#"allot_allocations_total{outcome="replayed",code="none"}"#), 1.0);
    assert_eq!(delta(r#"allot_allocations_total{outcome="rejected",code="OUT_OF_STOCK"}"#), 1.0);
    assert_eq!(delta(r#"allot_allocation_duration_seconds_count{outcome="created"}"#), 3.0);
    assert_eq!(delta(r#"allot_cache_pops_total{outcome="hit"}"#), 3.0);
    assert_eq!(delta(r#"allot_http_requests_total{route="/v1/allocations",method="POST",status="201"}"#), 4.0);
    assert_eq!(delta(r#"allot_http_requests_total{route="/v1/allocations",method="POST",status="409"}"#), 1.0);
    assert_eq!(delta(r#"allot_http_requests_total{route="/v1/products",method="GET",status="200"}"#), 1.0);
    assert_eq!(delta(r#"allot_http_request_duration_seconds_count{route="/v1/allocations"}"#), 5.0);
    assert!(get(&after, r#"allot_db_pool_connections{pool="primary",state="max"}"#) >= 1.0);
    // Nothing secret in the exposition.
    let text = String::from_utf8(
        common::read(app.http.get(format!("{}/metrics", app.operator)).send().await.unwrap()).await.body.to_vec(),
    )
    .unwrap();
    assert!(!text.contains("CODE-") && !text.contains(&app.key[20..]));
    // The operator listener only: the public listener has no /metrics.
    let public = common::read(app.http.get(format!("{}/metrics", app.base)).send().await.unwrap()).await;
    assert_eq!(public.status, 404);
    app.finish().await;
}
