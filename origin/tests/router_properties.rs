//! Random requests through the real public router (every layer, the real stores behind it): never
//! a 5xx, never a panic, every error in the shared shape, and nothing allocated that was refused.
//!
//! 100,000 cases by default (`ALLOT_ROUTER_CASES` for more: see docs/testing.md for the long run).
//! About half of the requests carry a valid key and a valid signature, so random paths, headers
//! and bodies reach the handlers instead of all stopping at the gate.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use allot_shared::ErrorBody;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{EDGE_SECRET, TestApp, edge_signature, unix_now};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use tower::ServiceExt;

/// One generated request, before signing.
#[derive(Debug, Clone)]
struct Case {
    method: String,
    path: String,
    key: KeyChoice,
    idempotency_keys: Vec<String>,
    extra_headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    signed: bool,
}

#[derive(Debug, Clone)]
enum KeyChoice {
    Valid,
    ValidShouting,
    Twice,
    Junk(String),
    Missing,
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("POST".to_owned()),
        4 => Just("GET".to_owned()),
        1 => prop::sample::select(vec!["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"]).prop_map(str::to_owned),
        1 => "[A-Z]{1,10}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        "[a-zA-Z0-9._~-]{0,40}",
        "(%[0-9A-Fa-f]{2}){1,6}",
        Just("00000000-0000-0000-0000-000000000000".to_owned()),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        Just("..".to_owned()),
    ];
    prop_oneof![
        4 => Just("/v1/allocations".to_owned()),
        2 => Just("/v1/products".to_owned()),
        3 => segment.clone().prop_map(|s| format!("/v1/allocations/{s}")),
        1 => prop::collection::vec(segment, 0..5).prop_map(|v| format!("/{}", v.join("/"))),
        1 => ("/v1/products", "[a-z=&%0-9]{0,30}").prop_map(|(p, q)| format!("{p}?{q}")),
    ]
}

fn key_choice() -> impl Strategy<Value = KeyChoice> {
    prop_oneof![
        6 => Just(KeyChoice::Valid),
        1 => Just(KeyChoice::ValidShouting),
        1 => Just(KeyChoice::Twice),
        1 => "[ -~]{0,120}".prop_map(KeyChoice::Junk),
        1 => Just(KeyChoice::Missing),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        Just("1e400".to_owned()),
        Just("-0".to_owned()),
        "[0-9]{1,30}",
    ];
    let text = prop_oneof!["[ -~]{0,20}", "\\PC{0,20}", Just("gift-usd".to_owned()), Just("hot".to_owned())];
    let denomination = prop_oneof![Just("10.00".to_owned()), "[0-9.,-]{0,12}"];
    let json = (text.clone(), denomination, number, prop::option::of(text)).prop_map(|(p, d, q, r)| {
        let reference = r.map(|r| format!(",\"client_reference\":{}", serde_json::json!(r))).unwrap_or_default();
        format!(
            "{{\"product_id\":{},\"denomination\":{},\"quantity\":{q}{reference}}}",
            serde_json::json!(p),
            serde_json::json!(d)
        )
        .into_bytes()
    });
    prop_oneof![
        3 => json,
        1 => Just(br#"{"product_id":"hot","denomination":"10.00","quantity":1}"#.to_vec()),
        2 => prop::collection::vec(any::<u8>(), 0..300),
        1 => "[\\[\\]{}\":,0-9a-z ]{0,80}".prop_map(String::into_bytes),
        1 => Just(Vec::new()),
    ]
}

fn extra_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop_oneof![
        Just("content-type".to_owned()),
        Just("content-length".to_owned()),
        Just("transfer-encoding".to_owned()),
        Just("traceparent".to_owned()),
        Just("x-request-id".to_owned()),
        Just("accept-encoding".to_owned()),
        Just("if-none-match".to_owned()),
        "[a-z][a-z0-9-]{0,20}",
    ];
    // Any byte a field value may carry on the wire (visible ASCII, space, tab, obs-text); control
    // characters never reach a router (hyper refuses them), so they are not generated.
    let byte = prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff];
    let value = prop_oneof![prop::collection::vec(byte, 0..60), "[ -~]{0,60}".prop_map(String::into_bytes)];
    prop::collection::vec((name, value), 0..4)
}

/// A method and path: mostly a route the router has (so handlers see the rest of the case), else
/// anything.
fn target() -> impl Strategy<Value = (String, String)> {
    let routed = prop_oneof![
        3 => Just(("POST".to_owned(), "/v1/allocations".to_owned())),
        1 => path().prop_map(|p| ("GET".to_owned(), p)),
    ];
    prop_oneof![3 => routed, 2 => (method(), path())]
}

fn case() -> impl Strategy<Value = Case> {
    (
        target(),
        key_choice(),
        prop::collection::vec("[!-~]{1,12}|[ -~]{0,300}", 0..3),
        extra_headers(),
        body(),
        prop::bool::weighted(0.8),
    )
        .prop_map(|((method, path), key, idempotency_keys, extra_headers, body, signed)| Case {
            method,
            path,
            key,
            idempotency_keys,
            extra_headers,
            body,
            signed,
        })
}

/// The request as the edge would forward it; `None` when the case is not a valid HTTP request
/// at all (hyper would refuse it before any router saw it).
fn build(case: &Case, valid_key: &str) -> Option<Request<Body>> {
    let mut req = Request::builder().method(case.method.as_str()).uri(case.path.as_str());
    let authorization: Vec<String> = match &case.key {
        KeyChoice::Valid => vec![format!("Bearer {valid_key}")],
        KeyChoice::ValidShouting => vec![format!("BEARER {valid_key}")],
        KeyChoice::Twice => vec![format!("Bearer {valid_key}"); 2],
        KeyChoice::Junk(j) => vec![j.clone()],
        KeyChoice::Missing => vec![],
    };
    for a in &authorization {
        req = req.header("authorization", a.as_str());
    }
    for k in &case.idempotency_keys {
        req = req.header("idempotency-key", k.as_str());
    }
    for (name, value) in &case.extra_headers {
        req = req.header(name.as_str(), value.as_slice());
    }
    if case.signed {
        let key = matches!(case.key, KeyChoice::Valid | KeyChoice::ValidShouting).then_some(valid_key);
        let idem = allot_shared::request_headers::join(case.idempotency_keys.iter().map(String::as_str));
        let sig = edge_signature(
            EDGE_SECRET.as_bytes(),
            unix_now(),
            &case.method,
            &case.path,
            key,
            idem.as_deref(),
            &case.body,
        );
        req = req.header(allot_shared::headers::SIGNATURE, sig);
    }
    req.body(Body::from(case.body.clone())).ok()
}

/// Requests sent concurrently in one round.
const ROUND: usize = 32;

/// What came back for one case.
struct Answer {
    case: Case,
    status: StatusCode,
    content_type: Option<Vec<u8>>,
    replayed: bool,
    body: axum::body::Bytes,
}

/// Statuses seen and fresh allocations made, over the rounds that passed.
#[derive(Default)]
struct Tally(Mutex<TallyInner>);

#[derive(Default)]
struct TallyInner {
    statuses: BTreeMap<u16, u64>,
    created: u64,
}

impl Tally {
    fn count(&self, a: &Answer) {
        let mut t = self.0.lock().unwrap();
        *t.statuses.entry(a.status.as_u16()).or_default() += 1;
        if a.status == StatusCode::CREATED && !a.replayed {
            t.created += 1;
        }
    }
}

fn check(a: &Answer) -> Result<(), TestCaseError> {
    let (case, status, body) = (&a.case, a.status, &a.body);
    prop_assert!(!status.is_server_error(), "{status} for {case:?}: {}", String::from_utf8_lossy(body));
    // A HEAD answer has the headers of the GET answer and no body (RFC 9110).
    if status.is_client_error() && case.method != "HEAD" {
        prop_assert_eq!(a.content_type.as_deref(), Some(&b"application/json"[..]), "{:?}", case);
        let parsed: Result<ErrorBody, _> = serde_json::from_slice(body);
        prop_assert!(parsed.is_ok(), "not the shared shape for {case:?}: {}", String::from_utf8_lossy(body));
        let error = parsed.unwrap().error;
        prop_assert_eq!(error.code.http_status(), status.as_u16(), "{:?}", case);
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("ALLOT_ROUTER_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

#[test]
fn random_requests_never_get_a_5xx_and_errors_keep_the_shape() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let app = rt.block_on(async {
        let app = TestApp::spawn().await;
        app.product("hot", "USD", &["10.00"]).await;
        app.load_cards("hot", 1000, 200).await;
        app
    });
    let router = allot_origin::http::public_router(app.state.clone());
    let tally = Tally::default();

    // Cases go in rounds of ROUND, sent concurrently (the stores are shared, as in production);
    // a failing round shrinks to the smallest round that still fails.
    let config = ProptestConfig {
        cases: cases().div_ceil(ROUND as u32),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let result = TestRunner::new(config).run(&prop::collection::vec(case(), ROUND), |round| {
        let requests: Vec<(Case, Request<Body>)> =
            round.into_iter().filter_map(|c| build(&c, &app.key).map(|r| (c, r))).collect();
        let answers = rt.block_on(futures::future::join_all(requests.into_iter().map(|(case, req)| {
            let router = router.clone();
            async move {
                let resp = router.oneshot(req).await.expect("the router is infallible");
                let status = resp.status();
                let content_type = resp.headers().get("content-type").map(|v| v.as_bytes().to_vec());
                let replayed = resp.headers().contains_key(allot_shared::headers::IDEMPOTENT_REPLAYED);
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("a body");
                Answer { case, status, content_type, replayed, body }
            }
        })));
        answers.iter().try_for_each(check)?;
        // Counted only for rounds that passed: a failing round is shrunk and run again.
        answers.iter().for_each(|a| tally.count(a));
        Ok(())
    });
    let tally = tally.0.into_inner().unwrap();
    eprintln!("by status: {:?}; fresh allocations: {}", tally.statuses, tally.created);
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator must exercise the handlers, not only the gate.
    let sent: u64 = tally.statuses.values().sum();
    let refused_at_gate = tally.statuses.get(&401).copied().unwrap_or(0);
    assert!(sent >= u64::from(cases()) * 9 / 10, "most cases are valid HTTP: {sent}");
    assert!(refused_at_gate < sent / 2, "most requests pass the gate: {refused_at_gate} of {sent} refused");
    assert!(tally.created > 0, "some random requests allocate");

    rt.block_on(async {
        // Everything taken is accounted for: one allocation per fresh 201, and its cards.
        let sold = app.count("inventories", "status <> 'active'").await;
        let lines: i64 = sqlx::query_scalar("SELECT coalesce(sum(quantity), 0)::bigint FROM allocations")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(sold, lines, "cards taken = cards in allocations");
        assert_eq!(app.count("allocations", "").await, tally.created as i64, "one allocation per fresh 201");
        app.finish().await;
    });
}
