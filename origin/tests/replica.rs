//! The stack's Postgres streaming replica, for real: reads that may lag go to it while it keeps
//! up, to the primary while it lags or is stopped, and an allocation is found right after its
//! `201` whatever the replica's state (read your writes).
//!
//! Needs the replica `scripts/stack up` starts (`ALLOT_TEST_DATABASE_REPLICA_URL`). The tests
//! share it and pause or stop it, so they run one at a time, and always leave it running and
//! replaying.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Options, Reply, TestApp};
use sqlx::{Connection, PgConnection};

/// One test at a time: they pause and stop the shared replica.
static REPLICA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long any wait may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(90);

fn options(max_lag_ms: u64) -> Options {
    Options {
        extra: vec![
            ("ALLOT_REPLICA_CHECK_MS".into(), "200".into()),
            ("ALLOT_REPLICA_MAX_LAG_MS".into(), max_lag_ms.to_string()),
        ],
        ..Options::default()
    }
}

fn body(product: &str) -> String {
    format!(r#"{{"product_id":"{product}","denomination":"10.00","quantity":1}}"#)
}

/// `scripts/stack <cmd>` on the stack whose replica the tests use.
fn stack(cmd: &str) -> std::process::Output {
    Command::new(common::private_stack::repo().join("scripts/stack")).arg(cmd).output().expect("scripts/stack runs")
}

/// Run `sql` on the replica's `allot` database.
async fn on_replica(sql: &'static str) -> Result<(), sqlx::Error> {
    let mut c = PgConnection::connect(&common::replica_url_for("allot")).await?;
    sqlx::query(sql).execute(&mut c).await?;
    c.close().await
}

/// The replica running and replaying, whatever an interrupted earlier run left behind.
async fn replica_ready() {
    let out = stack("replica-start");
    assert!(out.status.success(), "scripts/stack replica-start: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + WAIT;
    while let Err(e) = on_replica("SELECT pg_wal_replay_resume()").await {
        assert!(Instant::now() < deadline, "the replica does not answer: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Replay paused on the replica until dropped (resumed even when the test fails).
struct Paused;

impl Paused {
    async fn start() -> Self {
        on_replica("SELECT pg_wal_replay_pause()").await.expect("pausing replay");
        Paused
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        // Drop cannot await: resume from a runtime of its own.
        let resumed = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(on_replica("SELECT pg_wal_replay_resume()"))
        })
        .join();
        if !matches!(resumed, Ok(Ok(()))) {
            eprintln!("could not resume replay on the replica: {resumed:?}");
        }
    }
}

/// The replica stopped (`scripts/stack replica-stop`) until dropped (started again even when the
/// test fails).
struct Stopped;

impl Stopped {
    fn start() -> Self {
        // Stop only the replica the tests read from.
        let env = String::from_utf8(stack("env").stdout).unwrap();
        let url = std::env::var("ALLOT_TEST_DATABASE_REPLICA_URL").unwrap();
        assert!(
            env.contains(&format!("ALLOT_TEST_DATABASE_REPLICA_URL={url}\n")),
            "ALLOT_TEST_DATABASE_REPLICA_URL ({url}) is not the replica of the stack in {} (its env: {env})",
            common::private_stack::repo().display()
        );
        let out = stack("replica-stop");
        assert!(out.status.success(), "scripts/stack replica-stop: {}", String::from_utf8_lossy(&out.stderr));
        Stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let out = stack("replica-start");
        if !out.status.success() {
            eprintln!("scripts/stack replica-start failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

async fn get(app: &TestApp, path: &str) -> Reply {
    app.send("GET", path, Some(&app.key), None, b"").await
}

async fn listed_ids(app: &TestApp) -> Vec<String> {
    let page = get(app, "/v1/allocations?limit=100").await;
    assert_eq!(page.status, 200, "{:?}", page.body);
    let items = page.json()["items"].as_array().unwrap().clone();
    items.iter().map(|i| i["allocation_id"].as_str().unwrap().to_owned()).collect()
}

async fn allocate(app: &TestApp, idem: &str, product: &str) -> String {
    let r = app.allocate(idem, body(product)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["allocation_id"].as_str().unwrap().to_owned()
}

/// The `postgres:replica` health entry that says whether the replica serves.
async fn replication(app: &TestApp) -> serde_json::Value {
    let r = common::read(app.http.get(format!("{}/health", app.operator)).send().await.unwrap()).await;
    assert_eq!(r.status, 200, "a replica never fails health: {:?}", r.json());
    let checks = r.json()["checks"]["postgres:replica"].as_array().cloned().unwrap_or_default();
    checks.into_iter().find(|c| c["componentId"] == "replication").expect("a replication entry")
}

/// Wait until the replica serves (`true`) or does not; returns the health entry saying so.
async fn wait_serving(app: &TestApp, serving: bool) -> serde_json::Value {
    let want = if serving { "pass" } else { "warn" };
    let deadline = Instant::now() + WAIT;
    loop {
        let entry = replication(app).await;
        if entry["status"] == want {
            return entry;
        }
        assert!(Instant::now() < deadline, "the replica never reached {want}: {entry}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One series' value in `/metrics` (0 when absent).
async fn metric(app: &TestApp, series: &str) -> f64 {
    let r = common::read(app.http.get(format!("{}/metrics", app.operator)).send().await.unwrap()).await;
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Table scans the replica itself ran in the test's database (its own statistics: the primary's
/// scans are not replicated).
async fn replica_scans(db: &str) -> i64 {
    let mut c = PgConnection::connect(&common::replica_url_for(db)).await.unwrap();
    let n =
        sqlx::query_scalar("SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)::int8 FROM pg_stat_user_tables")
            .fetch_one(&mut c)
            .await
            .unwrap();
    let _ = c.close().await;
    n
}

#[tokio::test]
async fn reads_go_to_the_replica_while_it_keeps_up() {
    let _one = REPLICA.lock().await;
    replica_ready().await;
    let app = TestApp::spawn_with_replica(options(5_000)).await;
    app.product("rp", "USD", &["10.00"]).await;
    app.load_cards("rp", 1000, 5).await;
    let id = allocate(&app, "rp-1", "rp").await;
    wait_serving(&app, true).await;
    // Once the replica has replayed the allocation, the listing it serves shows it.
    let deadline = Instant::now() + WAIT;
    while !listed_ids(&app).await.contains(&id) {
        assert!(Instant::now() < deadline, "the listing never showed {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let replica_reads = r#"allot_db_reads_total{target="replica"}"#;
    let (reads_before, scans_before) = (metric(&app, replica_reads).await, replica_scans(&app.db_name).await);
    for _ in 0..10 {
        assert!(listed_ids(&app).await.contains(&id));
    }
    assert!(metric(&app, replica_reads).await >= reads_before + 10.0, "the listings were routed to the replica");
    // The replica's own statistics (reported within seconds) show it ran them.
    let deadline = Instant::now() + WAIT;
    loop {
        let scans = replica_scans(&app.db_name).await;
        if scans >= scans_before + 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the replica ran {} scans for 10 listings", scans - scans_before);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(metric(&app, "allot_db_replica_serving").await, 1.0);
    let ready = common::read(app.http.get(format!("{}/readyz", app.operator)).send().await.unwrap()).await;
    assert_eq!(ready.json()["checks"]["postgres:replica"][0]["status"], "pass");
    app.finish().await;
}

#[tokio::test]
async fn a_lagging_replica_sends_reads_to_the_primary_until_it_catches_up() {
    let _one = REPLICA.lock().await;
    replica_ready().await;
    let app = TestApp::spawn_with_replica(options(1_000)).await;
    app.product("lag", "USD", &["10.00"]).await;
    app.load_cards("lag", 1000, 5).await;
    wait_serving(&app, true).await;

    let paused = Paused::start().await;
    let id = allocate(&app, "lag-1", "lag").await;
    app.product("lag-new", "EUR", &["5.00"]).await;
    let entry = wait_serving(&app, false).await;
    assert!(entry["output"].as_str().unwrap().contains("behind the primary"), "{entry}");
    assert!(entry["observedValue"].as_f64().unwrap() > 1.0, "{entry}");
    assert_eq!(metric(&app, "allot_db_replica_serving").await, 0.0);
    assert!(metric(&app, "allot_db_replica_lag_seconds").await > 1.0);

    // The paused replica has neither the allocation nor the product: the answers come from the
    // primary, current.
    assert!(listed_ids(&app).await.contains(&id), "the listing is current");
    let deadline = Instant::now() + WAIT;
    loop {
        // The catalogue's in-process rendering lives two seconds.
        let r = get(&app, "/v1/products").await;
        assert_eq!(r.status, 200);
        if r.json()["products"].as_array().unwrap().iter().any(|p| p["product_id"] == "lag-new") {
            break;
        }
        assert!(Instant::now() < deadline, "the catalogue never showed the new product: {:?}", r.json());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ready = common::read(app.http.get(format!("{}/readyz", app.operator)).send().await.unwrap()).await;
    assert_eq!(ready.status, 200, "a lagging replica degrades readiness, never fails it");
    assert_eq!(ready.json()["status"], "warn");

    drop(paused);
    let entry = wait_serving(&app, true).await;
    assert!(entry["observedValue"].as_f64().unwrap() <= 0.5, "{entry}");
    assert_eq!(metric(&app, "allot_db_replica_serving").await, 1.0);
    assert!(listed_ids(&app).await.contains(&id));
    app.finish().await;
}

#[tokio::test]
async fn a_stopped_replica_sends_reads_to_the_primary() {
    let _one = REPLICA.lock().await;
    replica_ready().await;
    let app = TestApp::spawn_with_replica(options(5_000)).await;
    app.product("stop", "USD", &["10.00"]).await;
    app.load_cards("stop", 1000, 5).await;
    wait_serving(&app, true).await;

    let stopped = Stopped::start();
    // Reads right away, before a check has noticed: the replica's failures are retried on the
    // primary.
    let id = allocate(&app, "stop-1", "stop").await;
    assert!(listed_ids(&app).await.contains(&id));
    assert_eq!(get(&app, &format!("/v1/allocations/{id}")).await.status, 200);
    assert_eq!(get(&app, "/v1/products").await.status, 200);

    let entry = wait_serving(&app, false).await;
    let output = entry["output"].as_str().unwrap();
    assert!(output.contains("no answer") || output.contains("a read failed"), "{entry}");
    assert_eq!(metric(&app, "allot_db_replica_serving").await, 0.0);
    let ready = common::read(app.http.get(format!("{}/readyz", app.operator)).send().await.unwrap()).await;
    assert_eq!(ready.status, 200, "a stopped replica degrades readiness, never fails it");
    assert!(ready.json()["output"].as_str().unwrap().contains("the read replica"), "{:?}", ready.json());
    let second = allocate(&app, "stop-2", "stop").await;
    let listed = listed_ids(&app).await;
    assert!(listed.contains(&id) && listed.contains(&second), "{listed:?}");
    let r = get(&app, "/v1/products").await;
    assert_eq!(r.status, 200);

    drop(stopped);
    wait_serving(&app, true).await;
    let deadline = Instant::now() + WAIT;
    while !listed_ids(&app).await.contains(&second) {
        assert!(Instant::now() < deadline, "the restarted replica never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.finish().await;
}

#[tokio::test]
async fn a_read_that_fails_on_the_replica_is_retried_on_the_primary() {
    let _one = REPLICA.lock().await;
    replica_ready().await;
    // One check only, at start: nothing but the failed reads themselves can notice the stop.
    let mut opts = options(5_000);
    opts.extra.push(("ALLOT_REPLICA_CHECK_MS".into(), "600000".into()));
    let app = TestApp::spawn_with_replica(opts).await;
    app.product("retry", "USD", &["10.00"]).await;
    app.load_cards("retry", 1000, 5).await;
    wait_serving(&app, true).await;
    let id = allocate(&app, "retry-1", "retry").await;

    let fallbacks = metric(&app, "allot_db_replica_fallbacks_total").await;
    let stopped = Stopped::start();
    assert!(listed_ids(&app).await.contains(&id), "the listing is answered, from the primary");
    assert_eq!(metric(&app, "allot_db_replica_fallbacks_total").await, fallbacks + 1.0);
    let entry = replication(&app).await;
    assert_eq!(entry["status"], "warn", "the failed read stopped the replica serving: {entry}");
    assert!(entry["output"].as_str().unwrap().contains("a read failed"), "{entry}");
    // Later reads go straight to the primary.
    assert_eq!(get(&app, &format!("/v1/allocations/{id}")).await.status, 200);
    assert_eq!(get(&app, "/v1/products").await.status, 200);
    assert_eq!(metric(&app, "allot_db_replica_fallbacks_total").await, fallbacks + 1.0);
    drop(stopped);
    app.finish().await;
}

#[tokio::test]
async fn an_allocation_is_found_right_after_its_201_even_on_a_paused_replica() {
    let _one = REPLICA.lock().await;
    replica_ready().await;
    // A threshold no test reaches: the paused replica keeps serving, and lacks every new row.
    let app = TestApp::spawn_with_replica(options(600_000)).await;
    app.product("ryw", "USD", &["10.00"]).await;
    app.load_cards("ryw", 1000, 40).await;
    wait_serving(&app, true).await;

    let replica_reads = r#"allot_db_reads_total{target="replica"}"#;
    for paused in [false, true] {
        let guard = if paused { Some(Paused::start().await) } else { None };
        let reads_before = metric(&app, replica_reads).await;
        let mut made = Vec::new();
        for i in 0..20 {
            let id = allocate(&app, &format!("ryw-{paused}-{i}"), "ryw").await;
            let r = get(&app, &format!("/v1/allocations/{id}")).await;
            assert_eq!(r.status, 200, "allocation {id} right after its 201 (paused: {paused}): {:?}", r.body);
            assert_eq!(r.json()["allocation_id"], id.as_str());
            made.push(id);
        }
        assert!(metric(&app, replica_reads).await >= reads_before + 20.0, "each lookup asked the replica first");
        if paused {
            // The listing, served by the paused replica, has none of them: the lookups above
            // found them on the primary.
            assert_eq!(metric(&app, "allot_db_replica_serving").await, 1.0);
            let listed = listed_ids(&app).await;
            assert!(made.iter().all(|id| !listed.contains(id)), "the paused replica served the listing");
        }
        drop(guard);
    }
    app.finish().await;
}
