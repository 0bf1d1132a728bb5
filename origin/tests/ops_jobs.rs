//! Jobs through the operator API (list, pause, resume, re-time, run now, runs), their effect on
//! the scheduler, the reconciler's divergences, and audit pruning, against the real Postgres
//! and Valkey.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_origin::jobs::{self, Job, JobContext, RunOutcome};
use allot_origin::services::Services;
use common::{Options, TestApp, operator_token};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn ctx(app: &TestApp) -> JobContext {
    Services::init(app.config.clone()).unwrap().job_context(CancellationToken::new())
}

async fn run(job: &dyn Job, ctx: &JobContext) -> serde_json::Map<String, Value> {
    match jobs::run_once(job, ctx, None, "test").await.unwrap() {
        RunOutcome::Succeeded(c) => c,
        other => panic!("{} did not succeed: {other:?}", job.name()),
    }
}

fn job<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["items"].as_array().unwrap().iter().find(|j| j["name"] == name).unwrap_or_else(|| panic!("{name} in {list}"))
}

async fn operator_id(app: &TestApp, token: &str) -> String {
    app.ops("GET", "/ops/v1/me", Some(token), None).await.json()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn jobs_are_listed_paused_resumed_and_retimed_with_their_audit_rows() {
    let app = TestApp::spawn().await;
    let viewer = operator_token(&app, "viewer").await;
    let operator = operator_token(&app, "operator").await;
    let operator_id = operator_id(&app, &operator).await;
    run(&jobs::housekeeping::JobHistoryPrune, &ctx(&app)).await;

    let list = app.ops("GET", "/ops/v1/jobs", Some(&viewer), None).await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    let list = list.json();
    let names: Vec<&str> = list["items"].as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap()).collect();
    for expected in
        ["inventory-pump", "reconcile", "idempotency-expiry", "job-history-prune", "audit-prune", "stock-watch"]
    {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let watch = job(&list, "stock-watch");
    assert_eq!((watch["default_interval_secs"].as_u64(), watch["interval_secs"].as_u64()), (Some(15), Some(15)));
    assert_eq!((watch["enabled"].as_bool(), watch["override_interval_secs"].is_null()), (Some(true), true));
    assert_eq!(job(&list, "audit-prune")["interval_secs"], 86_400);
    let prune = job(&list, "job-history-prune");
    let last = &prune["last_runs"][0];
    assert_eq!((last["outcome"].as_str(), last["instance"].as_str()), (Some("succeeded"), Some("test")));
    assert!(last["slot"].is_null() && last["finished_at"].is_string() && last["counts"]["deleted"] == 0, "{last}");

    // Viewers read; operators change.
    for (method, path) in [("POST", "/ops/v1/jobs/stock-watch/pause"), ("POST", "/ops/v1/jobs/stock-watch/run")] {
        assert_eq!(app.ops(method, path, Some(&viewer), None).await.status, 403, "{path}");
    }
    let r =
        app.ops("PUT", "/ops/v1/jobs/stock-watch/schedule", Some(&viewer), Some(json!({"interval_secs": 60}))).await;
    assert_eq!(r.status, 403);

    let paused = app.ops("POST", "/ops/v1/jobs/stock-watch/pause", Some(&operator), None).await;
    assert_eq!(paused.status, 200, "{:?}", paused.body);
    assert_eq!(
        (paused.json()["enabled"].as_bool(), paused.json()["updated_by"].as_str()),
        (Some(false), Some(operator_id.as_str()))
    );
    let rows = app.audit_rows("job.pause").await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), (operator_id.as_str(), "stock-watch"));
    assert_eq!((&rows[0].2["from"]["enabled"], &rows[0].2["to"]["enabled"]), (&json!(true), &json!(false)));
    assert_eq!(rows[0].3.as_deref(), paused.header("x-request-id").as_deref());

    // Paused: a scheduled tick is not claimed (nothing recorded); a run by hand still runs.
    let ctx = ctx(&app);
    let slot = Some(time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap());
    let outcome = jobs::run_once(&jobs::stock_watch::StockWatch, &ctx, slot, "sched").await.unwrap();
    assert_eq!(outcome, RunOutcome::Paused);
    assert_eq!(app.count("job_runs", "job_name = 'stock-watch'").await, 0);
    run(&jobs::stock_watch::StockWatch, &ctx).await;

    let resumed = app.ops("POST", "/ops/v1/jobs/stock-watch/resume", Some(&operator), None).await;
    assert_eq!((resumed.status, resumed.json()["enabled"].as_bool()), (200, Some(true)));
    assert_eq!(app.audit_rows("job.resume").await.len(), 1);
    let outcome = jobs::run_once(&jobs::stock_watch::StockWatch, &ctx, slot, "sched").await.unwrap();
    assert!(matches!(outcome, RunOutcome::Succeeded(_)), "{outcome:?}");

    // Re-timing: bounds, then an override, then back to the default.
    let path = "/ops/v1/jobs/stock-watch/schedule";
    for bad in [
        json!({"interval_secs": 4}),
        json!({"interval_secs": 604_801}),
        json!({"interval_secs": "60"}),
        json!({}),
        json!({"interval_secs": 60, "enabled": true}),
    ] {
        let r = app.ops("PUT", path, Some(&operator), Some(bad.clone())).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"), "{bad}");
    }
    assert!(app.audit_rows("job.schedule").await.is_empty(), "nothing refused was written");
    let r = app.ops("PUT", path, Some(&operator), Some(json!({"interval_secs": 60}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!((r.json()["override_interval_secs"].as_i64(), r.json()["interval_secs"].as_u64()), (Some(60), Some(60)));
    assert_eq!(r.json()["enabled"], true, "re-timing keeps the pause flag as it was");
    let r = app.ops("PUT", path, Some(&operator), Some(json!({"interval_secs": null}))).await;
    assert_eq!(
        (r.json()["override_interval_secs"].clone(), r.json()["interval_secs"].as_u64()),
        (Value::Null, Some(15))
    );
    let rows = app.audit_rows("job.schedule").await;
    assert_eq!(rows.len(), 2);
    assert_eq!((&rows[0].2["from"]["interval_secs"], &rows[0].2["to"]["interval_secs"]), (&json!(60), &Value::Null));

    // Unknown jobs: 404 everywhere.
    for (method, path, body) in [
        ("POST", "/ops/v1/jobs/nope/pause", None),
        ("POST", "/ops/v1/jobs/nope/resume", None),
        ("POST", "/ops/v1/jobs/nope/run", None),
        ("PUT", "/ops/v1/jobs/nope/schedule", Some(json!({"interval_secs": 60}))),
        ("GET", "/ops/v1/jobs/nope/runs", None),
    ] {
        let r = app.ops(method, path, Some(&operator), body).await;
        assert_eq!((r.status, r.error_code().as_str()), (404, "NOT_FOUND"), "{method} {path}");
    }
    assert_eq!(app.count("scheduled_jobs", "name = 'nope'").await, 0);
    app.finish().await;
}

#[tokio::test]
async fn a_run_by_hand_is_accepted_audited_and_found_in_the_runs() {
    let app = TestApp::spawn().await;
    let operator = operator_token(&app, "operator").await;
    let ctx = ctx(&app);
    for _ in 0..3 {
        run(&jobs::housekeeping::JobHistoryPrune, &ctx).await;
    }
    let r = app.ops("POST", "/ops/v1/jobs/job-history-prune/run", Some(&operator), None).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let run_id = r.json()["run_id"].as_i64().unwrap();
    assert_eq!(r.json()["runs"], "/ops/v1/jobs/job-history-prune/runs");
    assert_eq!(r.header("location").as_deref(), Some("/ops/v1/jobs/job-history-prune/runs"));
    let rows = app.audit_rows("job.run").await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].1.as_str(), rows[0].2["run_id"].as_i64()), ("job-history-prune", Some(run_id)));

    // The run finishes in the background; the runs listing shows it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = app.ops("GET", "/ops/v1/jobs/job-history-prune/runs?limit=1", Some(&operator), None).await.json();
        let newest = &page["items"][0];
        assert_eq!(newest["id"], run_id, "{page}");
        if newest["outcome"] == "succeeded" {
            assert!(newest["slot"].is_null(), "by hand: no tick");
            break;
        }
        assert!(Instant::now() < deadline, "the run finished within 60 s: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Four runs, two pages of three and one, newest first.
    let first = app.ops("GET", "/ops/v1/jobs/job-history-prune/runs?limit=3", Some(&operator), None).await.json();
    let ids: Vec<i64> = first["items"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] > w[1]));
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app
        .ops("GET", &format!("/ops/v1/jobs/job-history-prune/runs?limit=3&cursor={cursor}"), Some(&operator), None)
        .await
        .json();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null());
    for bad in ["limit=0", "cursor=nope", "colour=blue"] {
        let r = app.ops("GET", &format!("/ops/v1/jobs/job-history-prune/runs?{bad}"), Some(&operator), None).await;
        assert_eq!(r.status, 400, "{bad}");
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_job_starts_no_run_until_it_is_resumed() {
    let app = TestApp::spawn().await;
    let operator = operator_token(&app, "operator").await;
    // Every second (below the API's bounds, for the test's sake).
    sqlx::query("INSERT INTO scheduled_jobs (name, interval_secs) VALUES ('job-history-prune', 1)")
        .execute(&app.pool)
        .await
        .unwrap();
    let registry: Vec<Arc<dyn Job>> = vec![Arc::new(jobs::housekeeping::JobHistoryPrune)];
    let token = CancellationToken::new();
    let scheduler = tokio::spawn(jobs::run_scheduler(
        Services::init(app.config.clone()).unwrap().job_context(token.clone()),
        registry,
    ));
    let runs = || app.count("job_runs", "job_name = 'job-history-prune'");
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs().await < 1 {
        assert!(Instant::now() < deadline, "a run of a 1 s schedule within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(app.ops("POST", "/ops/v1/jobs/job-history-prune/pause", Some(&operator), None).await.status, 200);
    // A claim that began before the pause committed may still land; give it a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_pause = runs().await;
    // Four ticks of the schedule, well inside the 30 s between re-reads of the overrides.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(runs().await, at_pause, "no run starts while paused");

    assert_eq!(app.ops("POST", "/ops/v1/jobs/job-history-prune/resume", Some(&operator), None).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs().await <= at_pause {
        assert!(Instant::now() < deadline, "runs start again after resuming");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    scheduler.await.unwrap();
    app.finish().await;
}

#[tokio::test]
async fn divergences_are_recorded_and_listed() {
    let app = TestApp::spawn().await;
    let viewer = operator_token(&app, "viewer").await;
    app.product("dv", "USD", &["10.00"]).await;
    app.product("ok", "USD", &["10.00"]).await;
    app.load_cards("dv", 1000, 10).await;
    app.load_cards("ok", 1000, 4).await;
    let ctx = ctx(&app);
    assert_eq!(run(&jobs::reconcile::Reconciler, &ctx).await["divergent_buckets"], 0);
    assert_eq!(app.count("cache_divergences", "").await, 0, "in step: nothing recorded");

    // Ids popped and never allocated (a crash): Postgres 10, cache 7.
    app.cache.pop("dv", 1000, 3).await.unwrap();
    assert_eq!(run(&jobs::reconcile::Reconciler, &ctx).await["divergent_buckets"], 1);
    // A flushed cache: every set missing.
    app.flush_cache().await;
    assert_eq!(run(&jobs::reconcile::Reconciler, &ctx).await["divergent_buckets"], 2);

    let all = app.ops("GET", "/ops/v1/divergences", Some(&viewer), None).await;
    assert_eq!(all.status, 200, "{:?}", all.body);
    assert_eq!(all.json()["items"].as_array().unwrap().len(), 3);
    let dv = app.ops("GET", "/ops/v1/divergences?product_id=dv", Some(&viewer), None).await.json();
    let items = dv["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{dv}");
    let (missing, short) = (&items[0], &items[1]);
    assert_eq!((missing["postgres_active"].as_i64(), missing["cache_active"].is_null()), (Some(10), true));
    assert_eq!((short["postgres_active"].as_i64(), short["cache_active"].as_i64()), (Some(10), Some(7)));
    assert!(items.iter().all(|d| d["healed"] == true && d["denomination_minor"] == 1000 && d["at"].is_string()));
    assert!(missing["id"].as_i64() > short["id"].as_i64(), "newest first");
    let page = app.ops("GET", "/ops/v1/divergences?product_id=dv&limit=1", Some(&viewer), None).await.json();
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = app
        .ops("GET", &format!("/ops/v1/divergences?product_id=dv&limit=1&cursor={cursor}"), Some(&viewer), None)
        .await;
    assert_eq!(rest.json()["items"][0]["id"], short["id"]);
    assert!(rest.json()["next_cursor"].is_null());
    assert_eq!(app.cached_ids("dv").await.len(), 10, "healed");
    app.finish().await;
}

#[tokio::test]
async fn audit_pruning_deletes_only_rows_past_the_retention_and_history_pruning_takes_old_divergences() {
    let app = TestApp::spawn_with(Options {
        extra: vec![("ALLOT_AUDIT_RETENTION_DAYS".into(), "60".into())],
        ..Options::default()
    })
    .await;
    let insert = |days: i32, action: &'static str| {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target) VALUES (now() - make_interval(days => $1), 'cli:test', $2, 'x')",
        )
        .bind(days)
        .bind(action)
        .execute(&app.pool)
    };
    for _ in 0..3 {
        insert(90, "old.row").await.unwrap();
    }
    insert(45, "kept.row").await.unwrap();
    insert(0, "fresh.row").await.unwrap();
    // Backdating is an insert; rewriting history is not.
    let err = sqlx::query("UPDATE audit_log SET at = now() - interval '900 days' WHERE action = 'fresh.row'")
        .execute(&app.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    // Outside the job, even old rows stay.
    assert!(sqlx::query("DELETE FROM audit_log WHERE action = 'old.row'").execute(&app.pool).await.is_err());

    let ctx = ctx(&app);
    let counts = run(&jobs::housekeeping::AuditPrune, &ctx).await;
    assert_eq!(counts["deleted"], 3);
    assert_eq!(app.count("audit_log", "action = 'old.row'").await, 0);
    assert_eq!(app.count("audit_log", "action IN ('kept.row', 'fresh.row')").await, 2, "inside the retention");
    assert_eq!(run(&jobs::housekeeping::AuditPrune, &ctx).await["deleted"], 0);

    sqlx::query(
        "INSERT INTO cache_divergences (at, product_id, denomination_minor, postgres_active, cache_active, healed)
         VALUES (now() - interval '30 days', 'p', 100, 5, 4, true), (now(), 'p', 100, 5, NULL, true)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let counts = run(&jobs::housekeeping::JobHistoryPrune, &ctx).await;
    assert_eq!(counts["divergences_deleted"], 1);
    assert_eq!(app.count("cache_divergences", "").await, 1, "the recent one stays");
    app.finish().await;
}
