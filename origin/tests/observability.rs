//! One trace from the edge to Postgres and back out through the outbox relay.
//!
//! Real parts only: an OTLP/HTTP receiver started here decodes the protobuf the origin exports;
//! `allot run-all` (server, relay and scheduler in one process) exports to it; the real edge
//! (the wasm build in workerd, `tests/lib/dev-edge.mjs`) sits in front and creates the trace.
//! Then every log line and span is scanned for the card codes just allocated and for the key.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot_origin::config::generate_card_key;
use allot_origin::ops;
use allot_shared::Region;
use axum::body::Bytes;
use axum::routing::post;
use common::ports::free_port;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const SECRET: &str = "observability-edge-secret-0123456789";

/// A child process stopped when dropped: SIGTERM first, so the edge's node process can stop
/// its workerd (a SIGKILL would orphan it), then SIGKILL after 5 s.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>, Arc<Mutex<Vec<u8>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let raw: Arc<Mutex<Vec<u8>>> = Arc::default();
    let (s, r) = (spans.clone(), raw.clone());
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
                r.lock().unwrap().extend_from_slice(&body);
                let mut s = s.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        s.extend(ss.spans);
                    }
                }
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans, raw)
}

async fn wait_for(url: &str) {
    for _ in 0..300 {
        if reqwest::get(url).await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered");
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).map(|a| format!("{:?}", a.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_from_the_edge_through_the_relay_and_no_secrets_anywhere() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    assert!(
        repo.join("edge/build/index.js").exists(),
        "the edge is not built: run scripts/edge-build (scripts/test does, before the cargo tests)"
    );
    let db = common::migrated_database().await;
    let pool = sqlx::PgPool::connect(&common::url_for(&db)).await.unwrap();
    let card_keys = generate_card_key("obs1");
    let ring = allot_origin::crypto::KeyRing::parse(&card_keys).unwrap();
    ops::upsert_product(
        &pool,
        &ops::Actor::cli(),
        "obs",
        "obs",
        allot_shared::Currency::parse("USD").unwrap(),
        &[allot_shared::Denomination::parse("10.00").unwrap()],
    )
    .await
    .unwrap();
    let cards: Vec<ops::NewCard> = (0..5)
        .map(|i| ops::NewCard {
            code: format!("SECRET-CODE-{i}-{}", uuid::Uuid::new_v4().simple()),
            pin: Some("PIN-Q7Z4X".into()),
            expires_at: None,
        })
        .collect();
    ops::load_cards(&pool, &ops::Actor::cli(), None, &ring, "obs", 1000, &cards).await.unwrap();
    let client =
        ops::create_client(&pool, &ops::Actor::cli(), "obs", &Region::parse("eu").unwrap(), None).await.unwrap();
    let key = ops::issue_key(&pool, &ops::Actor::cli(), client, None).await.unwrap();
    let prefix = format!("o{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let cache =
        allot_origin::cache::InventoryCache::new(&common::valkey_address(), &prefix, Duration::from_secs(2)).unwrap();
    ops::rebuild_product_cache(&pool, &cache, "obs").await.unwrap();

    let (otlp, spans, raw) = receiver().await;
    let (origin_port, operator_port, edge_port) = (free_port(), free_port(), free_port());
    let origin_log = tempfile_path("origin");
    let origin = Killed(
        Command::new(env!("CARGO_BIN_EXE_allot"))
            .arg("run-all")
            .envs([
                ("DATABASE_URL", common::url_for(&db)),
                ("VALKEY_URL", common::valkey_url()),
                ("ALLOT_REGION", "eu".into()),
                ("ALLOT_VALKEY_PREFIX", prefix.clone()),
                ("ALLOT_CARD_KEYS", card_keys.clone()),
                ("ALLOT_EDGE_SECRETS", SECRET.into()),
                ("ALLOT_LISTEN", format!("127.0.0.1:{origin_port}")),
                ("ALLOT_OPERATOR_LISTEN", format!("127.0.0.1:{operator_port}")),
                ("ALLOT_LOG_FORMAT", "json".into()),
                ("RUST_LOG", "debug,sqlx=warn,hyper=warn,h2=warn,tower=warn,reqwest=warn,opentelemetry=warn".into()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ])
            .stdout(std::fs::File::create(&origin_log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_for(&format!("http://127.0.0.1:{origin_port}/readyz")).await;
    let edge_log = tempfile_path("edge");
    let _edge = Killed(
        Command::new("node")
            .arg(repo.join("tests/lib/dev-edge.mjs"))
            .env("EDGE_SIGNING_SECRET", SECRET)
            .env("ORIGIN_URL", format!("http://127.0.0.1:{origin_port}"))
            .env("EDGE_PORT", edge_port.to_string())
            .stdout(std::fs::File::create(&edge_log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_for(&format!("http://127.0.0.1:{edge_port}/healthz")).await;

    // The caller sends no traceparent: the edge starts the trace.
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{edge_port}/v1/allocations"))
        .header("authorization", format!("Bearer {}", key.expose()))
        .header("idempotency-key", "obs-1")
        .header("content-type", "application/json")
        .body(r#"{"product_id":"obs","denomination":"10.00","quantity":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    let codes: Vec<String> =
        body["cards"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap().to_owned()).collect();

    // The edge's access-log line names the trace it created.
    let mut trace_id = None;
    for _ in 0..50 {
        trace_id = std::fs::read_to_string(&edge_log).unwrap().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["request_id"] == request_id.as_str()).then(|| v["trace_id"].as_str().unwrap().to_owned())
        });
        if trace_id.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let trace_id = trace_id.expect("the edge logged the request");

    // Wait for the relay's span (the event is published within a second or so).
    let mut names = Vec::new();
    for _ in 0..100 {
        names = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex::encode(&s.trace_id) == trace_id)
            .map(|s| s.name.clone())
            .collect();
        if names.iter().any(|n| n == "outbox.publish") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for expected in ["POST /v1/allocations", "allocation.create", "inventory.pop", "inventory.commit", "outbox.publish"]
    {
        assert!(names.iter().any(|n| n == expected), "span {expected} in trace {trace_id}: {names:?}");
    }
    let in_trace: Vec<Span> =
        spans.lock().unwrap().iter().filter(|s| hex::encode(&s.trace_id) == trace_id).cloned().collect();
    let server = in_trace.iter().find(|s| s.name == "POST /v1/allocations").unwrap();
    let origin_span_ids: Vec<&Vec<u8>> = in_trace.iter().map(|s| &s.span_id).collect();
    assert!(
        !server.parent_span_id.is_empty() && !origin_span_ids.contains(&&server.parent_span_id),
        "the origin's server span is a child of the edge's span"
    );
    let create = in_trace.iter().find(|s| s.name == "allocation.create").unwrap();
    assert!(attr(create, "product_id").unwrap().contains("obs"));
    assert!(attr(create, "quantity").is_some() && attr(create, "client_id").is_some());
    assert!(attr(create, "outcome").unwrap().contains("created"));

    // Logs are JSON lines with trace and request ids.
    let origin_text = std::fs::read_to_string(&origin_log).unwrap();
    let access = origin_text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "request" && v["span"]["request_id"] == request_id.as_str());
    let access = access.unwrap_or_else(|| panic!("no access log line for {request_id}"));
    assert_eq!(access["span"]["trace_id"], trace_id.as_str());
    assert!(access["span"]["span_id"].is_string());

    // Codes, PINs, the key's secret and the edge secret appear nowhere.
    drop(origin);
    let everything = format!(
        "{}\n{}\n{:?}\n{}",
        std::fs::read_to_string(&origin_log).unwrap(),
        std::fs::read_to_string(&edge_log).unwrap(),
        spans.lock().unwrap(),
        String::from_utf8_lossy(&raw.lock().unwrap()),
    );
    for secret in codes.iter().map(String::as_str).chain([key.secret(), SECRET, "SECRET-CODE", "PIN-Q7Z4X"]) {
        assert!(!everything.contains(secret), "{secret:?} leaked into logs or spans");
    }
    pool.close().await;
    common::drop_database(&db).await;
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(".stack/test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("observability-{name}-{}.log", uuid::Uuid::new_v4().simple()))
}
