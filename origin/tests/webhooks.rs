//! Webhooks end to end against a real receiver: an HTTP server in the test that verifies every
//! signature (Standard Webhooks), fails on purpose and comes back. Events come from real
//! allocations through the real outbox relay and the real dispatcher, on the test's own database
//! and Valkey prefix.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot_origin::relay::{EventStream, Relay};
use allot_origin::webhooks::Dispatcher;
use allot_shared::webhook::{self, WebhookSecret};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{Options, TestApp, operator_token};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    answered: u16,
}

/// What the receiver answers next: a status, after a delay.
#[derive(Debug, Clone, Copy)]
struct Answer {
    status: u16,
    delay: Duration,
}

#[derive(Default)]
struct ReceiverState {
    got: Vec<Received>,
    /// Scripted answers, used first; then `otherwise`.
    script: VecDeque<Answer>,
    otherwise: Option<Answer>,
}

/// A real HTTP receiver on a loopback port.
#[derive(Clone)]
struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
}

async fn hook(State(state): State<Arc<Mutex<ReceiverState>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let answer = {
        let mut s = state.lock().unwrap();
        s.script.pop_front().or(s.otherwise).unwrap_or(Answer { status: 200, delay: Duration::ZERO })
    };
    // Recorded on arrival: a sender that gives up drops this handler during the delay.
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    state.lock().unwrap().got.push(Received {
        id: header(webhook::ID_HEADER),
        timestamp: header(webhook::TIMESTAMP_HEADER),
        signature: header(webhook::SIGNATURE_HEADER),
        body: String::from_utf8(body.to_vec()).unwrap(),
        answered: answer.status,
    });
    tokio::time::sleep(answer.delay).await;
    StatusCode::from_u16(answer.status).unwrap()
}

impl Receiver {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url: format!("http://{addr}/hook"), state }
    }

    fn script(&self, answers: &[Answer]) {
        self.state.lock().unwrap().script.extend(answers.iter().copied());
    }

    fn otherwise(&self, answer: Option<Answer>) {
        self.state.lock().unwrap().otherwise = answer;
    }

    fn got(&self) -> Vec<Received> {
        self.state.lock().unwrap().got.clone()
    }

    /// Wait (generously) until `done` holds for what arrived.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.got();
            if done(&got) {
                return got;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; got {got:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn answer(status: u16) -> Answer {
    Answer { status, delay: Duration::ZERO }
}

/// Every request the receiver got verifies with `secret`.
fn assert_signed(got: &[Received], secret: &WebhookSecret) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for r in got {
        let checked = webhook::verify(
            secret,
            &r.id,
            &r.timestamp,
            &r.signature,
            r.body.as_bytes(),
            now,
            webhook::DEFAULT_TOLERANCE_SECS,
        );
        assert_eq!(checked, Ok(()), "{r:?}");
    }
}

/// Settings for a receiver on loopback and quick retries.
fn options() -> Options {
    let extra = [
        ("ALLOT_WEBHOOK_ALLOW_PRIVATE", "true"),
        ("ALLOT_WEBHOOK_BACKOFF_BASE_MS", "100"),
        ("ALLOT_WEBHOOK_BACKOFF_MAX_MS", "400"),
        ("ALLOT_WEBHOOK_TIMEOUT_MS", "1000"),
    ];
    Options { extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Options::default() }
}

/// The relay and the dispatcher, running until the token is cancelled.
fn start_workers(app: &TestApp) -> CancellationToken {
    let stop = CancellationToken::new();
    let stream = EventStream::new(&common::valkey_address(), &app.prefix, Duration::from_secs(2)).unwrap();
    let relay = Relay::new(app.pool.clone(), stream);
    let dispatcher = Dispatcher::new(app.pool.clone(), app.config.card_keys.clone(), app.config.webhooks).unwrap();
    let (a, b) = (stop.clone(), stop.clone());
    tokio::spawn(async move { relay.run(a).await });
    tokio::spawn(async move { dispatcher.run(b).await });
    stop
}

async fn add_endpoint(
    app: &TestApp,
    admin: &str,
    client: uuid::Uuid,
    url: &str,
    topics: &[&str],
) -> (String, WebhookSecret) {
    let r = app
        .ops(
            "POST",
            &format!("/ops/v1/clients/{client}/webhooks"),
            Some(admin),
            Some(json!({ "url": url, "topics": topics })),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let doc = r.json();
    let secret = WebhookSecret::parse(doc["secret"].as_str().unwrap()).unwrap();
    (doc["endpoint"]["id"].as_str().unwrap().to_owned(), secret)
}

async fn allocate(app: &TestApp, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..n {
        let r = app
            .allocate(
                format!("wh-{i}-{}", uuid::Uuid::new_v4()),
                r#"{"product_id":"whk","denomination":"25.00","quantity":1}"#,
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        out.push(r.json());
    }
    out
}

#[tokio::test]
async fn events_arrive_signed_and_in_order_and_a_failing_head_holds_the_queue() {
    let app = TestApp::spawn_with(options()).await;
    let minor = app.product("whk", "EUR", &["25.00"]).await[0];
    app.load_cards("whk", minor, 10).await;
    let admin = operator_token(&app, "admin").await;
    let receiver = Receiver::start().await;
    receiver.script(&[answer(503), answer(500), answer(503)]);
    let (endpoint, secret) =
        add_endpoint(&app, &admin, app.client_id, &receiver.url, &["allocation.created", "card.voided"]).await;
    let stop = start_workers(&app);

    let allocations = allocate(&app, 5).await;
    let got = receiver.wait_for("five deliveries", |g| g.iter().filter(|r| r.answered == 200).count() == 5).await;
    stop.cancel();

    assert_signed(&got, &secret);
    // The head failed three times before anything after it was sent.
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(&ids[..4], &[ids[0]; 4], "{ids:?}");
    assert_eq!(got.iter().map(|r| r.answered).collect::<Vec<_>>(), [503, 500, 503, 200, 200, 200, 200, 200]);
    // In the allocations' order, each message once delivered.
    let delivered: Vec<Value> =
        got.iter().filter(|r| r.answered == 200).map(|r| serde_json::from_str(&r.body).unwrap()).collect();
    let order: Vec<&str> = delivered.iter().map(|d| d["data"]["allocation_id"].as_str().unwrap()).collect();
    let made: Vec<&str> = allocations.iter().map(|a| a["allocation_id"].as_str().unwrap()).collect();
    assert_eq!(order, made);
    let outbox_ids: Vec<i64> = got.iter().filter(|r| r.answered == 200).map(|r| r.id[4..].parse().unwrap()).collect();
    assert!(outbox_ids.windows(2).all(|w| w[0] < w[1]), "message ids follow the outbox: {outbox_ids:?}");
    for d in &delivered {
        assert_eq!(d["type"], "allocation.created");
        assert_eq!(d["data"]["client_id"], app.client_id.to_string());
    }
    // A payload never carries a code.
    for a in &allocations {
        let code = a["cards"][0]["code"].as_str().unwrap();
        assert!(got.iter().all(|r| !r.body.contains(code)), "a code was sent");
    }

    // The log: the first delivery took four attempts, each with its status and latency.
    let log = app.ops("GET", &format!("/ops/v1/webhooks/{endpoint}/deliveries"), Some(&admin), None).await.json();
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    let first = items.last().unwrap();
    assert_eq!((first["state"].as_str(), first["attempts"].as_i64()), (Some("delivered"), Some(4)));
    let statuses: Vec<i64> =
        first["attempt_log"].as_array().unwrap().iter().map(|a| a["status"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [503, 500, 503, 200]);
    assert!(first["attempt_log"].as_array().unwrap().iter().all(|a| a["latency_ms"].as_i64().unwrap() >= 0));
    assert_eq!(first["attempt_log"][0]["error"], "HTTP 503 Service Unavailable");
    let shown = app.ops("GET", &format!("/ops/v1/webhooks/{endpoint}"), Some(&admin), None).await.json();
    assert_eq!((shown["failures"].as_i64(), shown["pending"].as_i64()), (Some(0), Some(0)));
    assert!(shown.get("secret").is_none() && !shown.to_string().contains("whsec_"));
    app.finish().await;
}

#[tokio::test]
async fn each_client_gets_only_its_own_events_and_stock_events_go_to_subscribers() {
    let app = TestApp::spawn_with(options()).await;
    let minor = app.product("whk", "EUR", &["25.00"]).await[0];
    let cards = app.load_cards("whk", minor, 3).await;
    let admin = operator_token(&app, "admin").await;
    let other = app.ops("POST", "/ops/v1/clients", Some(&admin), Some(json!({ "name": "Other" }))).await.json();
    let other: uuid::Uuid = other["id"].as_str().unwrap().parse().unwrap();
    let mine = Receiver::start().await;
    let theirs = Receiver::start().await;
    add_endpoint(&app, &admin, app.client_id, &mine.url, &["allocation.created", "card.voided"]).await;
    add_endpoint(&app, &admin, other, &theirs.url, &["allocation.created", "stock.low", "stock.out"]).await;
    let stop = start_workers(&app);

    let allocated = allocate(&app, 1).await;
    let card = allocated[0]["cards"][0]["card_id"].as_i64().unwrap();
    let operator = operator_token(&app, "operator").await;
    let voided = app
        .ops("POST", "/ops/v1/voids", Some(&operator), Some(json!({ "card_ids": [card], "reason": "leaked" })))
        .await;
    assert_eq!(voided.status, 200, "{:?}", voided.body);
    // stock-watch publishes the bucket's state (2 active cards, low) through the outbox.
    let r = app.ops("POST", "/ops/v1/jobs/stock-watch/run", Some(&operator), None).await;
    assert_eq!(r.status, 202, "{:?}", r.body);

    let got = mine.wait_for("the allocation and the void", |g| g.len() >= 2).await;
    let topics: Vec<String> = got
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(topics, ["allocation.created", "card.voided"]);
    let stock = theirs.wait_for("stock.low", |g| !g.is_empty()).await;
    let doc: Value = serde_json::from_str(&stock[0].body).unwrap();
    assert_eq!((doc["type"].as_str(), doc["data"]["product_id"].as_str()), (Some("stock.low"), Some("whk")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(theirs.got().len(), 1, "the other client got nothing of this client's: {:?}", theirs.got());
    assert_eq!(mine.got().len(), 2, "and this one no stock events: {:?}", mine.got());
    stop.cancel();
    let _ = cards;
    app.finish().await;
}

#[tokio::test]
async fn an_endpoint_failing_for_the_retry_window_is_disabled_operators_are_told_and_enabling_resumes_it() {
    let app = TestApp::spawn_with(options()).await;
    let minor = app.product("whk", "EUR", &["25.00"]).await[0];
    app.load_cards("whk", minor, 3).await;
    let admin = operator_token(&app, "admin").await;
    let receiver = Receiver::start().await;
    receiver.otherwise(Some(answer(500)));
    let (endpoint, _) = add_endpoint(&app, &admin, app.client_id, &receiver.url, &["allocation.created"]).await;
    let stop = start_workers(&app);
    allocate(&app, 1).await;
    receiver.wait_for("a failed attempt", |g| !g.is_empty()).await;

    // Three days pass.
    sqlx::query(
        "UPDATE webhook_endpoints SET failing_since = now() - interval '73 hours', retry_at = now() WHERE id = $1::uuid",
    )
    .bind(&endpoint)
    .execute(&app.pool)
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let doc = app.ops("GET", &format!("/ops/v1/webhooks/{endpoint}"), Some(&admin), None).await.json();
        if doc["state"] == "disabled" {
            assert!(
                doc["disabled_reason"].as_str().unwrap().contains("every attempt failed for 72 h; the last: HTTP 500")
            );
            assert_eq!(doc["pending"], 1, "its queue is kept");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not disabled: {doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.count("outbox", &format!("topic = 'webhook.endpoint_disabled' AND aggregate_id = '{endpoint}'")).await,
        1
    );
    let audit = app.audit_rows("webhook.disable").await;
    assert_eq!(audit[0].0, "system:webhooks");

    // Fixed and enabled: the queued delivery goes out.
    receiver.otherwise(None);
    let before = receiver.got().len();
    let r = app.ops("POST", &format!("/ops/v1/webhooks/{endpoint}/enable"), Some(&admin), None).await;
    assert_eq!((r.status, r.json()["changed"].as_bool()), (200, Some(true)));
    receiver.wait_for("the delivery after enabling", |g| g.len() > before && g.last().unwrap().answered == 200).await;
    stop.cancel();
    app.finish().await;
}

#[tokio::test]
async fn timeouts_test_events_redelivery_and_secret_rotation() {
    let app = TestApp::spawn_with(options()).await;
    let admin = operator_token(&app, "admin").await;
    let operator = operator_token(&app, "operator").await;
    let receiver = Receiver::start().await;
    // The first answer comes after the 1 s timeout.
    receiver.script(&[Answer { status: 200, delay: Duration::from_secs(3) }]);
    let (endpoint, secret) = add_endpoint(&app, &admin, app.client_id, &receiver.url, &["stock.low"]).await;
    let stop = start_workers(&app);

    let r = app.ops("POST", &format!("/ops/v1/webhooks/{endpoint}/test"), Some(&operator), None).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let test_delivery = r.json()["delivery_id"].as_i64().unwrap();
    let got = receiver.wait_for("the test event, retried after a timeout", |g| g.len() >= 2).await;
    assert_eq!(got[0].id, got[1].id, "the retry is the same message");
    assert_signed(&got, &secret);
    let body: Value = serde_json::from_str(&got[1].body).unwrap();
    assert_eq!(body["type"], "webhook.test");
    assert_eq!(body["data"]["endpoint_id"], endpoint);
    let log = app.ops("GET", &format!("/ops/v1/webhooks/{endpoint}/deliveries"), Some(&admin), None).await.json();
    assert_eq!(log["items"][0]["attempt_log"][0]["error"], "no answer within 1000 ms");
    assert!(log["items"][0]["attempt_log"][0]["status"].is_null());

    // Sent again by hand: the same webhook-id, a new delivery.
    let path = format!("/ops/v1/webhooks/{endpoint}/deliveries/{test_delivery}/redeliver");
    let r = app.ops("POST", &path, Some(&operator), None).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let again = receiver.wait_for("the redelivery", |g| g.len() >= 3).await;
    assert_eq!(again[2].id, got[0].id);

    // A rotation: both secrets sign until the overlap ends; each verifies alone.
    let r = app.ops("POST", &format!("/ops/v1/webhooks/{endpoint}/rotate-secret"), Some(&admin), None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let new_secret = WebhookSecret::parse(r.json()["secret"].as_str().unwrap()).unwrap();
    app.ops("POST", &format!("/ops/v1/webhooks/{endpoint}/test"), Some(&operator), None).await;
    let rotated = receiver.wait_for("a test after the rotation", |g| g.len() >= 4).await;
    assert_eq!(rotated[3].signature.split(' ').count(), 2, "{}", rotated[3].signature);
    assert_signed(&rotated[3..], &new_secret);
    assert_signed(&rotated[3..], &secret);
    stop.cancel();
    for action in ["webhook.create", "webhook.test", "webhook.redeliver", "webhook.rotate_secret"] {
        assert!(!app.audit_rows(action).await.is_empty(), "{action} is audited");
    }
    app.finish().await;
}

#[tokio::test]
async fn bad_endpoints_are_refused_and_private_addresses_only_with_the_development_setting() {
    let app = TestApp::spawn().await; // ALLOT_WEBHOOK_ALLOW_PRIVATE is off
    let admin = operator_token(&app, "admin").await;
    let path = format!("/ops/v1/clients/{}/webhooks", app.client_id);
    let cases = [
        (json!({ "url": "http://hooks.example.com/", "topics": ["stock.low"] }), "url: must be https"),
        (json!({ "url": "https://127.0.0.1:9/hook", "topics": ["stock.low"] }), "private, loopback or reserved"),
        (json!({ "url": "https://localhost/hook", "topics": ["stock.low"] }), "private, loopback or reserved"),
        (json!({ "url": "https://10.1.2.3/hook", "topics": ["stock.low"] }), "private, loopback or reserved"),
        (json!({ "url": "https://hooks.example.com/", "topics": ["allocation.*"] }), "is not a topic"),
        (json!({ "url": "https://hooks.example.com/", "topics": [] }), "give 1 to 16 topics"),
        (json!({ "url": "https://hooks.example.com/" }), "missing field `topics`"),
    ];
    for (body, words) in cases {
        let r = app.ops("POST", &path, Some(&admin), Some(body.clone())).await;
        assert_eq!(r.status, 400, "{body}");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains(words), "{body}: {:?}", r.body);
    }
    assert_eq!(app.count("webhook_endpoints", "true").await, 0);
    let unknown = app
        .ops(
            "POST",
            "/ops/v1/clients/00000000-0000-7000-8000-000000000000/webhooks",
            Some(&admin),
            Some(json!({ "url": "https://hooks.example.com/", "topics": ["stock.low"] })),
        )
        .await;
    assert_eq!(unknown.status, 404);

    // An endpoint that was allowed once (development) is still refused at delivery time by a
    // dispatcher without the setting: the resolver drops private addresses.
    let receiver = Receiver::start().await;
    let dev = TestApp::spawn_with(options()).await;
    let dev_admin = operator_token(&dev, "admin").await;
    let local = receiver.url.replace("127.0.0.1", "localhost");
    let (endpoint, _) = add_endpoint(&dev, &dev_admin, dev.client_id, &local, &["stock.low"]).await;
    dev.ops("POST", &format!("/ops/v1/webhooks/{endpoint}/test"), Some(&operator_token(&dev, "operator").await), None)
        .await;
    let mut strict = dev.config.webhooks;
    strict.allow_private = false;
    let dispatcher = Dispatcher::new(dev.pool.clone(), dev.config.card_keys.clone(), strict).unwrap();
    assert_eq!(dispatcher.tick().await.unwrap(), 1);
    assert!(receiver.got().is_empty(), "nothing reached the private address");
    let log = dev.ops("GET", &format!("/ops/v1/webhooks/{endpoint}/deliveries"), Some(&dev_admin), None).await.json();
    let error = log["items"][0]["last_error"].as_str().unwrap();
    assert!(error.contains("resolves only to private, loopback or reserved addresses"), "{error}");
    app.finish().await;
    dev.finish().await;
}

#[tokio::test]
async fn finished_deliveries_leave_the_log_after_its_retention_and_pending_ones_never() {
    use allot_origin::jobs::{self, RunOutcome};
    let app = TestApp::spawn_with(options()).await;
    let admin = operator_token(&app, "admin").await;
    let operator = operator_token(&app, "operator").await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = add_endpoint(&app, &admin, app.client_id, &receiver.url, &["stock.low"]).await;
    for _ in 0..3 {
        app.ops("POST", &format!("/ops/v1/webhooks/{endpoint}/test"), Some(&operator), None).await;
    }
    let dispatcher = Dispatcher::new(app.pool.clone(), app.config.card_keys.clone(), app.config.webhooks).unwrap();
    assert_eq!(dispatcher.tick().await.unwrap(), 3);
    app.ops("POST", &format!("/ops/v1/webhooks/{endpoint}/test"), Some(&operator), None).await; // stays pending
    // Two of the delivered ones are 31 days old.
    sqlx::query(
        "UPDATE webhook_deliveries SET finished_at = now() - interval '31 days'
          WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'delivered' ORDER BY id LIMIT 2)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let ctx = allot_origin::services::Services::init(app.config.clone()).unwrap().job_context(CancellationToken::new());
    let counts = match jobs::run_once(&jobs::housekeeping::JobHistoryPrune, &ctx, None, "test").await.unwrap() {
        RunOutcome::Succeeded(c) => c,
        other => panic!("job-history-prune did not succeed: {other:?}"),
    };
    assert_eq!(counts["webhook_deliveries_deleted"], 2);
    assert_eq!(app.count("webhook_deliveries", "state = 'delivered'").await, 1);
    assert_eq!(app.count("webhook_deliveries", "state = 'pending'").await, 1);
    assert_eq!(app.count("webhook_attempts", "true").await, 1, "their attempts went with them");
    app.finish().await;
}
