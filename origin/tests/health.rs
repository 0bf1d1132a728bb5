//! `/health`, `/readyz` and `/livez` under each failure: Valkey down, Postgres down, and
//! dependencies that accept connections but never answer.

mod common;

use std::time::{Duration, Instant};

use allot_origin::config::Config;
use common::{Options, Reply};

/// A TCP server that accepts connections and never says anything.
async fn silent_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    addr
}

/// Serve the real operator router for `cfg` (no schema check: the database may be down).
async fn operator(cfg: Config) -> String {
    let state = allot_origin::server::build_state(cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, allot_origin::http::operator_router(state)).await });
    base
}

async fn get(base: &str, path: &str) -> (Reply, Duration) {
    let started = Instant::now();
    let r = common::read(reqwest::get(format!("{base}{path}")).await.unwrap()).await;
    (r, started.elapsed())
}

fn status_of(r: &Reply, check: &str) -> String {
    r.json()["checks"][check][0]["status"].as_str().unwrap_or_else(|| panic!("no {check} in {:?}", r.json())).to_owned()
}

fn config(db: &str, extra: &[(&str, String)], valkey: Option<String>) -> Config {
    let opts = Options { valkey_url: valkey, extra: extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect() };
    Config::from_settings(&common::settings_for(db, "thealth", &opts)).unwrap()
}

#[tokio::test]
async fn healthy_then_valkey_down_is_a_warning() {
    let app = common::TestApp::spawn().await;
    let (r, _) = get(&app.operator, "/health").await;
    assert_eq!(r.header("content-type").as_deref(), Some("application/health+json"));
    assert_eq!(status_of(&r, "postgres:primary"), "pass");
    assert_eq!(status_of(&r, "valkey"), "pass");
    assert_eq!(r.json()["checks"]["postgres:primary"][0]["observedUnit"], "ms");
    // The reconciler has never run here.
    assert_eq!(status_of(&r, "jobs:reconcile"), "warn");
    assert_eq!(r.status, 200);
    app.finish().await;

    let db = common::migrated_database().await;
    let base = operator(config(&db, &[], Some(format!("redis://127.0.0.1:{}", common::ports::closed_port())))).await;
    let (r, _) = get(&base, "/health").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["status"], "warn");
    assert_eq!(status_of(&r, "valkey"), "warn");
    assert_eq!(status_of(&r, "postgres:primary"), "pass");
    let (ready, _) = get(&base, "/readyz").await;
    assert_eq!(ready.status, 200);
    common::drop_database(&db).await;
}

#[tokio::test]
async fn postgres_down_fails_health_and_readiness_but_not_liveness() {
    let port = common::ports::closed_port();
    let mut cfg = config("unused", &[("ALLOT_DB_ACQUIRE_TIMEOUT_MS", "500".into())], None);
    cfg.database_url = format!("postgres://allot@127.0.0.1:{port}/allot");
    let base = operator(cfg).await;
    let (r, took) = get(&base, "/health").await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.json()["status"], "fail");
    assert_eq!(status_of(&r, "postgres:primary"), "fail");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(get(&base, "/readyz").await.0.status, 503);
    assert_eq!(get(&base, "/livez").await.0.status, 200);
}

#[tokio::test]
async fn hung_dependencies_still_get_an_answer_within_the_timeout() {
    let db = common::migrated_database().await;
    let hung = silent_server().await;
    let cfg = config(
        &db,
        &[
            ("DATABASE_READ_URL", format!("postgres://allot@{hung}/allot")),
            ("ALLOT_VALKEY_TIMEOUT_MS", "5000".into()),
            ("ALLOT_DB_ACQUIRE_TIMEOUT_MS", "30000".into()),
        ],
        Some(format!("redis://{hung}")),
    );
    let base = operator(cfg).await;
    let (r, took) = get(&base, "/health").await;
    assert!(took < Duration::from_secs(5), "answered within the check timeout, not the 30 s acquire timeout: {took:?}");
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(status_of(&r, "postgres:primary"), "pass");
    assert_eq!(status_of(&r, "postgres:replica"), "warn");
    assert_eq!(status_of(&r, "valkey"), "warn");
    assert!(r.json()["checks"]["valkey"][0]["output"].as_str().unwrap().contains("no answer"));

    // A hung primary fails, still within the timeout.
    let mut cfg = config(&db, &[("ALLOT_DB_ACQUIRE_TIMEOUT_MS", "30000".into())], None);
    cfg.database_url = format!("postgres://allot@{hung}/allot");
    let base = operator(cfg).await;
    let (r, took) = get(&base, "/health").await;
    assert!(took < Duration::from_secs(5), "answered within the check timeout, not the 30 s acquire timeout: {took:?}");
    assert_eq!(r.status, 503);
    assert_eq!(status_of(&r, "postgres:primary"), "fail");
    common::drop_database(&db).await;
}
