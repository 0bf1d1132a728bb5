//! Scheduled jobs and the outbox relay against the real Postgres and Valkey.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use allot_origin::jobs::{self, Job, JobContext, RunOutcome};
use allot_origin::relay::{EventStream, Relay};
use allot_origin::services::Services;
use common::TestApp;
use tokio_util::sync::CancellationToken;

fn ctx(app: &TestApp) -> JobContext {
    Services::init(app.config.clone()).unwrap().job_context(CancellationToken::new())
}

async fn active_ids(app: &TestApp, product: &str) -> HashSet<i64> {
    sqlx::query_scalar::<_, i64>("SELECT id FROM inventories WHERE product_id = $1 AND status = 'active'")
        .bind(product)
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn run(job: &dyn Job, ctx: &JobContext) -> serde_json::Map<String, serde_json::Value> {
    match jobs::run_once(job, ctx, None, "test").await.unwrap() {
        RunOutcome::Succeeded(c) => c,
        other => panic!("{} did not succeed: {other:?}", job.name()),
    }
}

#[tokio::test]
async fn the_pump_rebuilds_every_set_from_postgres() {
    let app = TestApp::spawn().await;
    app.product("pa", "USD", &["10.00", "25.00"]).await;
    app.product("pb", "EUR", &["5.00"]).await;
    app.load_cards_db_only("pa", 1000, 30).await;
    app.load_cards_db_only("pa", 2500, 20).await;
    app.load_cards_db_only("pb", 500, 7).await;
    let ctx = ctx(&app);
    let counts = run(&jobs::pump::InventoryPump, &ctx).await;
    assert_eq!(counts["products"], 2);
    assert_eq!(counts["cards"], 57);
    assert_eq!(app.cached_ids("pa").await.into_iter().collect::<HashSet<_>>(), active_ids(&app, "pa").await);
    assert_eq!(app.cached_ids("pb").await.len(), 7);
    let runs = app.count("job_runs", "job_name = 'inventory-pump' AND outcome = 'succeeded'").await;
    assert_eq!(runs, 1);
    app.finish().await;
}

#[tokio::test]
async fn the_reconciler_heals_missing_and_stale_ids_and_reports_divergence() {
    let app = TestApp::spawn().await;
    app.product("rc", "USD", &["10.00", "25.00"]).await;
    let ids = app.load_cards("rc", 1000, 20).await;
    app.load_cards("rc", 2500, 5).await;
    let ctx = ctx(&app);
    // In step: nothing to do.
    let counts = run(&jobs::reconcile::Reconciler, &ctx).await;
    assert_eq!((counts["buckets"].as_u64(), counts["divergent_buckets"].as_u64()), (Some(2), Some(0)));
    // Stock per bucket is exported for operators.
    let exported = allot_origin::telemetry::metrics().render();
    assert!(
        exported.contains(r#"allot_inventory_active_cards{product_id="rc",denomination_minor="1000"} 20"#),
        "{exported}"
    );
    assert!(exported.contains(r#"allot_inventory_active_cards{product_id="rc",denomination_minor="2500"} 5"#));

    // Ids popped and never allocated (a crash), and ids allocated behind the cache's back.
    app.cache.pop("rc", 1000, 4).await.unwrap();
    sqlx::query("UPDATE inventories SET status = 'void', voided_at = now(), void_reason = 'test' WHERE id = ANY($1)")
        .bind(&ids[10..13])
        .execute(&app.pool)
        .await
        .unwrap();
    // New cards the cache never heard of.
    app.load_cards_db_only("rc", 2500, 3).await;
    let counts = run(&jobs::reconcile::Reconciler, &ctx).await;
    assert_eq!(counts["divergent_buckets"], 2);
    assert_eq!(counts["products_rebuilt"], 1);
    assert_eq!(app.cached_ids("rc").await.into_iter().collect::<HashSet<_>>(), active_ids(&app, "rc").await);

    // A flushed cache is rebuilt too.
    app.flush_cache().await;
    let counts = run(&jobs::reconcile::Reconciler, &ctx).await;
    assert_eq!(counts["products_rebuilt"], 1);
    assert_eq!(app.cached_ids("rc").await.len(), active_ids(&app, "rc").await.len());
    app.finish().await;
}

#[tokio::test]
async fn a_tick_runs_once_however_many_schedulers_race_for_it() {
    let app = TestApp::spawn().await;
    let ctx = ctx(&app);
    let slot = Some(time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap());
    let job = jobs::housekeeping::JobHistoryPrune;
    let outcomes = futures::future::join_all((0..8).map(|i| {
        let (ctx, job) = (&ctx, &job);
        async move { jobs::run_once(job, ctx, slot, &format!("racer-{i}")).await.unwrap() }
    }))
    .await;
    let ran = outcomes.iter().filter(|o| matches!(o, RunOutcome::Succeeded(_))).count();
    assert_eq!(ran, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, RunOutcome::Succeeded(_) | RunOutcome::AlreadyClaimed | RunOutcome::SkippedOverlap))
    );
    assert_eq!(app.count("job_runs", "job_name = 'job-history-prune' AND outcome = 'succeeded'").await, 1);
    app.finish().await;
}

/// A `running` row of `job` claimed on `conn`'s session, as a process's claim writes it.
async fn running_row(conn: &mut sqlx::PgConnection, job: &str, instance: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO job_runs (job_name, instance, outcome, backend_pid, backend_start)
         SELECT $1, $2, 'running', pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()
         RETURNING id",
    )
    .bind(job)
    .bind(instance)
    .fetch_one(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_run_whose_process_died_mid_run_is_closed_by_the_next_one() {
    use sqlx::Connection;
    let app = TestApp::spawn().await;
    let url = common::url_for(&app.db_name);
    let job = jobs::housekeeping::JobHistoryPrune;
    // A process killed mid-run: its session ends with its row still `running`.
    let mut killed = sqlx::PgConnection::connect(&url).await.unwrap();
    let killed_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut killed).await.unwrap();
    let abandoned = running_row(&mut killed, job.name(), "killed:1").await;
    // A process that has claimed a run and not yet taken the lock: its session lives.
    let mut claiming = sqlx::PgConnection::connect(&url).await.unwrap();
    let claimed = running_row(&mut claiming, job.name(), "claiming:2").await;
    killed.close().await.unwrap();
    for _ in 0..100 {
        let gone: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
            .bind(killed_pid)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    run(&job, &ctx(&app)).await;
    let row = |id: i64| {
        sqlx::query_as::<_, (String, Option<String>, bool)>(
            "SELECT outcome, error, finished_at IS NOT NULL FROM job_runs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&app.pool)
    };
    assert_eq!(row(abandoned).await.unwrap(), ("failed".into(), Some(jobs::ABANDONED.into()), true));
    assert_eq!(row(claimed).await.unwrap(), ("running".into(), None, false), "its session is alive");
    // Another job's orphan is that job's to close.
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    let other_job = running_row(&mut other, "reconcile", "killed:3").await;
    other.close().await.unwrap();
    run(&job, &ctx(&app)).await;
    assert_eq!(row(other_job).await.unwrap().0, "running");
    claiming.close().await.unwrap();
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedulers_honour_database_overrides_and_share_ticks() {
    let app = TestApp::spawn().await;
    // Every 2 s instead of hourly; and a job due at once (its 15-minute slot has not run yet)
    // switched off.
    sqlx::query("INSERT INTO scheduled_jobs (name, interval_secs) VALUES ('job-history-prune', 2)")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO scheduled_jobs (name, enabled) VALUES ('idempotency-expiry', false)")
        .execute(&app.pool)
        .await
        .unwrap();
    let registry: Vec<Arc<dyn Job>> =
        vec![Arc::new(jobs::housekeeping::JobHistoryPrune), Arc::new(jobs::housekeeping::IdempotencyExpiry)];
    let token = CancellationToken::new();
    let services = Services::init(app.config.clone()).unwrap();
    let started = time::OffsetDateTime::now_utc().unix_timestamp();
    let a = tokio::spawn(jobs::run_scheduler(services.job_context(token.clone()), registry.clone()));
    let b = tokio::spawn(jobs::run_scheduler(services.job_context(token.clone()), registry));
    // By progress, not the clock: 3 runs, however slow the machine (hourly, as in code, could
    // not make 3 in any window shorter than two hours).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while app.count("job_runs", "job_name = 'job-history-prune' AND outcome = 'succeeded'").await < 3 {
        assert!(std::time::Instant::now() < deadline, "3 runs of a 2 s schedule within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    a.await.unwrap();
    b.await.unwrap();
    let ended = time::OffsetDateTime::now_utc().unix_timestamp();
    let runs: Vec<(Option<time::OffsetDateTime>, String)> =
        sqlx::query_as("SELECT slot, outcome FROM job_runs WHERE job_name = 'job-history-prune' ORDER BY slot")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let slots: Vec<i64> = runs.iter().map(|(s, _)| s.expect("a scheduled run has a slot").unix_timestamp()).collect();
    // Both schedulers work from the same ticks: multiples of the 2 s interval, each run once
    // (a second run of a tick would need a second row with its slot), only while they ran.
    assert!(
        runs.iter().all(|(s, _)| s.unwrap().nanosecond() == 0 && s.unwrap().unix_timestamp() % 2 == 0),
        "slots are multiples of the 2 s interval: {slots:?}"
    );
    assert!(slots.windows(2).all(|w| w[0] < w[1]), "never two runs of one tick: {slots:?}");
    assert!(slots.iter().all(|s| *s >= started - started % 2 && *s <= ended), "{started}..{ended}: {slots:?}");
    assert!(runs.iter().all(|(_, o)| o == "succeeded" || o == "skipped"), "{runs:?}");
    assert_eq!(app.count("job_runs", "job_name = 'idempotency-expiry'").await, 0, "disabled in the database");
    app.finish().await;
}

#[tokio::test]
async fn housekeeping_expires_old_idempotency_keys_only() {
    let app = TestApp::spawn().await;
    app.product("hk", "USD", &["10.00"]).await;
    app.load_cards("hk", 1000, 4).await;
    for i in 0..3 {
        let r = app.allocate(format!("hk-{i}"), r#"{"product_id":"hk","denomination":"10.00","quantity":1}"#).await;
        assert_eq!(r.status, 201);
    }
    sqlx::query(
        "UPDATE allocations SET created_at = now() - interval '25 hours' WHERE idempotency_key IN ('hk-0', 'hk-1')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let counts = run(&jobs::housekeeping::IdempotencyExpiry, &ctx(&app)).await;
    assert_eq!(counts["expired"], 2);
    assert_eq!(app.count("allocations", "request_fingerprint IS NOT NULL").await, 1, "one key still live");
    assert_eq!(app.count("allocations", "").await, 3, "allocations stay");
    // An expired key is free again: the same key makes a new allocation, not a replay.
    let again = app.allocate("hk-0", r#"{"product_id":"hk","denomination":"10.00","quantity":1}"#).await;
    assert_eq!(again.status, 201);
    assert!(again.headers.get("idempotent-replayed").is_none(), "a new allocation, not a replay");
    assert_eq!(app.count("allocations", "idempotency_key = 'hk-0'").await, 2);
    // A live key still replays.
    let replay = app.allocate("hk-2", r#"{"product_id":"hk","denomination":"10.00","quantity":1}"#).await;
    assert_eq!(replay.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    app.finish().await;
}

#[tokio::test]
async fn the_relay_publishes_each_event_once_in_order_and_backs_off_on_failure() {
    let app = TestApp::spawn().await;
    app.product("ev", "USD", &["10.00"]).await;
    app.load_cards("ev", 1000, 5).await;
    for i in 0..5 {
        let r = app.allocate(format!("ev-{i}"), r#"{"product_id":"ev","denomination":"10.00","quantity":1}"#).await;
        assert_eq!(r.status, 201);
    }
    // The events Valkey unreachable: the events are placed in order, none is published, the
    // stream backs off as a whole, and the failure is in job history.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("redis://{}", closed.local_addr().unwrap());
    drop(closed);
    let stream = EventStream::new(&common::server_address(&dead), &app.prefix, Duration::from_millis(300)).unwrap();
    let failing = Relay::new(app.pool.clone(), stream);
    let mut leader = failing.lead().await.unwrap().expect("no other relay holds the stream");
    let step = leader.step().await.unwrap();
    assert_eq!((step.ordered, step.published), (5, 0), "{step:?}");
    assert!(step.failed.is_some() && step.backoff > Duration::ZERO, "{step:?}");
    let held = leader.step().await.unwrap();
    assert!(held.failed.is_none() && held.backoff > Duration::ZERO, "no append while backing off: {held:?}");
    assert_eq!(app.count("outbox", "seq IS NULL").await, 0);
    assert_eq!(app.count("job_runs", "job_name = 'outbox-relay' AND outcome = 'failed'").await, 1);
    leader.release().await;

    let stream = EventStream::new(&common::valkey_address(), &app.prefix, Duration::from_secs(2)).unwrap();
    let relay = Relay::new(app.pool.clone(), stream);
    let mut leader = relay.lead().await.unwrap().expect("released");
    let step = leader.step().await.unwrap();
    assert_eq!((step.ordered, step.published, step.failed), (0, 5, None));
    assert_eq!(leader.step().await.unwrap().published, 0, "published once");
    leader.release().await;
    let outbox: Vec<(i64, i64, String, String, serde_json::Value)> =
        sqlx::query_as("SELECT id, seq, topic, aggregate_id, payload FROM outbox ORDER BY seq")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(outbox.len(), 5);
    let published: i64 =
        sqlx::query_scalar("SELECT published_seq FROM outbox_sequence").fetch_one(&app.pool).await.unwrap();
    assert_eq!(published, outbox[4].1, "every event is in the stream");

    // Exactly one stream entry per event, in order, each with its fields by name.
    let mut conn = common::valkey_connection();
    let entries: Vec<(String, std::collections::BTreeMap<String, String>)> =
        redis::cmd("XRANGE").arg(relay.stream().key()).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    assert_eq!(entries.len(), outbox.len(), "one entry per event");
    for ((entry_id, fields), (id, seq, topic, aggregate_id, payload)) in entries.iter().zip(&outbox) {
        assert_eq!(*entry_id, format!("{seq}-0"), "the entry id is the event's place");
        assert_eq!(fields["outbox_id"], id.to_string(), "the idempotency field");
        assert_eq!(fields["topic"], *topic, "row {id}");
        assert_eq!(topic, "allocation.created");
        assert_eq!(fields["aggregate_id"], *aggregate_id, "row {id}");
        let published: serde_json::Value = serde_json::from_str(&fields["payload"]).unwrap();
        assert_eq!(published, *payload, "row {id}");
        assert!(fields.values().all(|v| !v.contains("CODE-")), "no card codes in events: {fields:?}");
    }
    app.finish().await;
}
