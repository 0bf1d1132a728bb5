//! Durable, ordered events: the relay's commit order (a lower id that commits later comes later
//! and is never skipped), one active relay, the stream's backoff and recovery against a real
//! redis-server stopped and started, streams that lost entries or are not the relay's, the
//! events API, `allot events`, `outbox-prune`, migration 9 both ways, and health.
//!
//! Tests that run a relay take `SERIAL`: the metrics recorder is global to the process.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use allot_origin::jobs::{self, RunOutcome};
use allot_origin::relay::{Append, Event, EventStream, Relay, StreamId};
use allot_origin::services::Services;
use common::ports::free_port;
use common::{Options, TestApp};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A redis-server of the test's own (never the shared stack's), so it can be stopped and started.
struct PrivateValkey {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateValkey {
    /// Started with the events store's persistence (appendonly, fsync every second).
    async fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("allot-events-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = PrivateValkey { port, dir, child: None };
        v.up().await;
        v
    }

    async fn up(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server runs (scripts/stack up installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server on {} answers within 30 s", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (it writes its append-only file) and wait.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success();
        assert!(ok);
        child.wait().unwrap();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateValkey {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A relay of this app's database publishing to `url` (a server, or a cluster's nodes) under
/// the app's prefix.
fn relay(app: &TestApp, url: &str) -> Relay {
    let address = allot_origin::valkey::Address::parse(url, false).unwrap();
    Relay::new(app.pool.clone(), EventStream::new(&address, &app.prefix, Duration::from_millis(500)).unwrap())
}

/// A URL where nothing listens.
fn dead_url() -> String {
    format!("redis://127.0.0.1:{}", common::ports::closed_port())
}

/// Write one event in its own committed transaction.
async fn insert_event(pool: &PgPool, tag: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO outbox (topic, aggregate_id, payload) VALUES ('test.event', $1, '{}') RETURNING id")
        .bind(tag)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The stream's entries: (entry id, `outbox_id`).
async fn entries(url: &str, key: &str) -> Vec<(String, i64)> {
    let mut conn = common::connection_to(url);
    let raw: Vec<(String, BTreeMap<String, String>)> =
        redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    raw.into_iter().map(|(id, f)| (id, f["outbox_id"].parse().unwrap())).collect()
}

/// The outbox's placed events as (id, seq), in order.
async fn placed(pool: &PgPool) -> Vec<(i64, i64)> {
    sqlx::query_as("SELECT id, seq FROM outbox WHERE seq IS NOT NULL ORDER BY seq").fetch_all(pool).await.unwrap()
}

/// What the stream must hold for these placed events: `<seq>-0` with the outbox id, in order.
fn expected(placed: &[(i64, i64)]) -> Vec<(String, i64)> {
    placed.iter().map(|(id, seq)| (format!("{seq}-0"), *id)).collect()
}

async fn published_seq(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT published_seq FROM outbox_sequence").fetch_one(pool).await.unwrap()
}

/// Poll `done` until it holds, at most `within`.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event is placed and in the stream.
async fn all_published(pool: &PgPool) -> bool {
    let (unplaced, last, published): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE seq IS NULL), last_seq, published_seq FROM outbox_sequence",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    unplaced == 0 && last == published
}

fn metric(name: &str) -> Option<f64> {
    let text = allot_origin::telemetry::metrics().render();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

#[tokio::test]
async fn a_lower_id_that_commits_after_a_higher_one_is_published_after_it_and_never_skipped() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn().await;
    let relay = relay(&app, &common::valkey_url());
    let mut leader = relay.lead().await.unwrap().expect("the stream is free");
    let viewer = common::operator_token(&app, "viewer").await;

    // The lower id is drawn first, but its transaction commits last.
    let mut slow = app.pool.begin().await.unwrap();
    let low: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (topic, aggregate_id, payload) VALUES ('test.event', 'slow', '{}') RETURNING id",
    )
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    let high = insert_event(&app.pool, "fast").await;
    assert!(low < high);
    let step = leader.step().await.unwrap();
    assert_eq!((step.ordered, step.published), (1, 1), "only the committed one: {step:?}");

    // A consumer paging by id meanwhile sees the higher one, and goes on from it.
    let page = app.ops("GET", "/ops/v1/events", Some(&viewer), None).await.json();
    let ids: Vec<i64> = page["items"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [high]);
    assert_eq!(page["next_after"], high);

    slow.commit().await.unwrap();
    let step = leader.step().await.unwrap();
    assert_eq!((step.ordered, step.published), (1, 1), "{step:?}");
    leader.release().await;

    // Commit order in the stream; nothing skipped for the consumer who went on from `high`.
    let stream = entries(&common::valkey_url(), relay.stream().key()).await;
    println!("stream: {stream:?} (low id {low} committed after high id {high})");
    assert_eq!(stream, [("1-0".to_owned(), high), ("2-0".to_owned(), low)]);
    let next = app.ops("GET", &format!("/ops/v1/events?after={high}"), Some(&viewer), None).await.json();
    let ids: Vec<i64> = next["items"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [low], "the lower id, committed later, comes after the higher one");
    assert_eq!((next["next_after"].as_i64(), next["has_more"].as_bool()), (Some(low), Some(false)));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_relay_publishes_while_another_stands_by_and_takes_over() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn().await;
    let url = common::valkey_url();
    let (first, second) = (relay(&app, &url), relay(&app, &url));
    let first_token = CancellationToken::new();
    let second_token = CancellationToken::new();
    let a = tokio::spawn({
        let (r, t) = (first.clone(), first_token.clone());
        async move { r.run(t).await }
    });
    // The first holds the stream before the second starts: a third cannot take it either.
    wait_for("the first relay takes the stream", Duration::from_secs(30), || async {
        relay(&app, &url).lead().await.unwrap().is_none()
    })
    .await;
    let b = tokio::spawn({
        let (r, t) = (second.clone(), second_token.clone());
        async move { r.run(t).await }
    });
    // Events from 8 writers at once, the active relay stopped half way.
    let write = |from: usize| {
        let pool = app.pool.clone();
        async move {
            let tasks: Vec<_> = (0..8)
                .map(|w| {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        for i in 0..25 {
                            insert_event(&pool, &format!("w{w}-{}", from + i)).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    write(0).await;
    first_token.cancel();
    a.await.unwrap();
    write(25).await;
    wait_for("every event published by the relay that took over", Duration::from_secs(60), || all_published(&app.pool))
        .await;
    second_token.cancel();
    b.await.unwrap();

    let placed = placed(&app.pool).await;
    assert_eq!(placed.len(), 400);
    assert!(placed.iter().enumerate().all(|(i, (_, seq))| *seq == i as i64 + 1), "places 1..400 without a gap");
    let stream = entries(&url, first.stream().key()).await;
    assert_eq!(stream, expected(&placed), "each event once, in order, across the hand-over");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_backs_off_as_a_whole_while_its_valkey_is_down_then_catches_up_in_order() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn().await;
    let mut valkey = PrivateValkey::start().await;
    let relay = relay(&app, &valkey.url());
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (r, t) = (relay.clone(), token.clone());
        async move { r.run(t).await }
    });
    for i in 0..50 {
        insert_event(&app.pool, &format!("before-{i}")).await;
    }
    wait_for("the first 50 published", Duration::from_secs(30), || all_published(&app.pool)).await;

    valkey.stop();
    for i in 0..100 {
        insert_event(&app.pool, &format!("during-{i}")).await;
    }
    // Placed meanwhile (the events API serves them), not published; the stream backs off.
    wait_for("events placed while the stream is down", Duration::from_secs(30), || async {
        app.count("outbox", "seq IS NULL").await == 0
    })
    .await;
    wait_for("a failed append recorded", Duration::from_secs(30), || async {
        app.count("job_runs", "job_name = 'outbox-relay' AND outcome = 'failed'").await >= 2
    })
    .await;
    assert_eq!(published_seq(&app.pool).await, 50, "nothing past the head that failed");
    assert!(metric("allot_outbox_backoff_seconds").is_some_and(|b| b > 0.0), "the stream's backoff is exported");
    assert!(metric("allot_outbox_consecutive_failures").is_some_and(|f| f >= 1.0));
    let viewer = common::operator_token(&app, "viewer").await;
    let page = app.ops("GET", "/ops/v1/events?limit=1000", Some(&viewer), None).await.json();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 150, "the API serves every placed event while the stream is down");
    assert!(items[..50].iter().all(|e| e["published_at"].is_string()));
    assert!(items[50..].iter().all(|e| e["published_at"].is_null()));

    let restarted = Instant::now();
    valkey.up().await;
    wait_for("every event published after the restart", Duration::from_secs(60), || all_published(&app.pool)).await;
    println!("caught up {:?} after the events Valkey came back", restarted.elapsed());
    token.cancel();
    running.await.unwrap();
    let placed = placed(&app.pool).await;
    assert_eq!(entries(&valkey.url(), relay.stream().key()).await, expected(&placed), "once each, in order");
    assert_eq!(metric("allot_outbox_backoff_seconds"), Some(0.0), "the backoff is over");
    assert_eq!(metric("allot_outbox_consecutive_failures"), Some(0.0));
    assert!(metric("allot_outbox_lag_seconds").is_some() && metric("allot_outbox_pending").is_some());
    app.finish().await;
}

#[tokio::test]
async fn a_stream_that_lost_entries_gets_them_back_one_ahead_is_adopted_and_a_foreign_one_is_refused() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn().await;
    let url = common::valkey_url();
    let relay = relay(&app, &url);
    let key = relay.stream().key().to_owned();
    let mut conn = common::connection_to(&url);
    let mut leader = relay.lead().await.unwrap().unwrap();
    for i in 0..20 {
        insert_event(&app.pool, &format!("e{i}")).await;
    }
    assert_eq!(leader.step().await.unwrap().published, 20);

    // The events Valkey lost everything (a restart without its data): the relay appends the
    // events again from Postgres, with the same ids, before any newer one.
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    for i in 20..25 {
        insert_event(&app.pool, &format!("e{i}")).await;
    }
    let step = leader.step().await.unwrap();
    assert_eq!(step.published, 25, "{step:?}");
    assert_eq!(entries(&url, &key).await, expected(&placed(&app.pool).await));

    // A relay that stopped between its append and its bookkeeping: the entry is taken as
    // published, not appended twice.
    let late = insert_event(&app.pool, "late").await;
    leader.release().await;
    place_without_publishing(&app, 1).await;
    let event = Event {
        id: late,
        seq: 26,
        topic: "test.event".into(),
        aggregate_id: "late".into(),
        payload: "{}".into(),
        trace_context: None,
    };
    assert_eq!(
        relay.stream().append(StreamId::of_event(25), std::slice::from_ref(&event)).await.unwrap(),
        Append::Appended(StreamId::of_event(26))
    );
    let mut leader = relay.lead().await.unwrap().unwrap();
    let step = leader.step().await.unwrap();
    assert_eq!((step.published, step.failed.as_deref()), (0, None), "{step:?}");
    assert_eq!(published_seq(&app.pool).await, 26);
    let stream = entries(&url, &key).await;
    assert_eq!(stream.len(), 26);
    assert_eq!(stream, expected(&placed(&app.pool).await));
    // A stale expectation appends nothing (two relays at once could not reorder the stream).
    assert_eq!(
        relay.stream().append(StreamId::of_event(20), &[event]).await.unwrap(),
        Append::Moved(StreamId::of_event(26))
    );
    assert_eq!(entries(&url, &key).await.len(), 26);
    leader.release().await;

    // A stream this relay did not write (time-based ids: an older version's): held, untouched.
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    let _: String = redis::cmd("XADD").arg(&key).arg("*").arg("outbox_id").arg(1).query_async(&mut conn).await.unwrap();
    insert_event(&app.pool, "after-upgrade").await;
    let mut leader = relay.lead().await.unwrap().unwrap();
    let step = leader.step().await.unwrap();
    let why = step.failed.clone().expect("refused");
    assert!(why.contains("did not write") && why.contains("rename or delete"), "{why}");
    assert_eq!(entries(&url, &key).await.len(), 1, "nothing appended to a foreign stream");
    assert_eq!(published_seq(&app.pool).await, 26);
    // Deleting it, as the message says, lets the relay publish the kept events again.
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !all_published(&app.pool).await {
        assert!(Instant::now() < deadline, "published after the stream was deleted");
        tokio::time::sleep(leader.step().await.unwrap().backoff).await;
    }
    leader.release().await;
    assert_eq!(entries(&url, &key).await, expected(&placed(&app.pool).await));
    app.finish().await;
}

/// Let a relay whose stream is unreachable place the waiting events (`n` of them): placed, not
/// published.
async fn place_without_publishing(app: &TestApp, n: usize) {
    let failing = relay(app, &dead_url());
    let mut leader = failing.lead().await.unwrap().expect("the stream is free");
    let step = leader.step().await.unwrap();
    assert_eq!((step.ordered, step.published), (n, 0), "{step:?}");
    leader.release().await;
}

#[tokio::test]
async fn the_events_api_pages_in_order_and_refuses_what_it_cannot_serve() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn().await;
    app.product("ea", "USD", &["10.00"]).await;
    app.load_cards("ea", 1000, 5).await;
    for i in 0..3 {
        let r = app.allocate(format!("ea-{i}"), r#"{"product_id":"ea","denomination":"10.00","quantity":1}"#).await;
        assert_eq!(r.status, 201);
    }
    let relay = relay(&app, &common::valkey_url());
    let mut leader = relay.lead().await.unwrap().unwrap();
    assert_eq!(leader.step().await.unwrap().published, 3);
    leader.release().await;
    // Two more placed but not published (the stream unreachable).
    insert_event(&app.pool, "x").await;
    insert_event(&app.pool, "y").await;
    place_without_publishing(&app, 2).await;
    let unplaced = insert_event(&app.pool, "z").await;

    assert_eq!(app.ops("GET", "/ops/v1/events", None, None).await.status, 401);
    let viewer = common::operator_token(&app, "viewer").await;
    let get = |q: String| {
        let viewer = viewer.clone();
        let app = &app;
        async move { app.ops("GET", &format!("/ops/v1/events{q}"), Some(&viewer), None).await }
    };
    let all = get(String::new()).await;
    assert_eq!(all.status, 200, "{:?}", all.body);
    let all = all.json();
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "placed events only: {all}");
    let seqs: Vec<i64> = items.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let first = &items[0];
    assert_eq!(first["topic"], "allocation.created");
    assert_eq!(first["payload"]["allocation_id"], first["aggregate_id"]);
    assert!(first["created_at"].is_string() && first["published_at"].is_string(), "{first}");
    assert!(items[3]["published_at"].is_null() && items[4]["published_at"].is_null());
    assert!(!all.to_string().contains("CODE-"), "never a card code: {all}");
    assert_eq!((all["next_after"].clone(), all["has_more"].as_bool()), (items[4]["id"].clone(), Some(false)));

    // Pages of two, each from the previous page's next_after.
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let page = get(format!("?after={after}&limit=2")).await.json();
        paged.extend(page["items"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()));
        after = page["next_after"].as_i64().unwrap_or(0);
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    let ids: Vec<i64> = items.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(paged, ids);
    // Caught up: an empty page gives back the same `after`.
    let empty = get(format!("?after={}", ids[4])).await.json();
    assert_eq!((empty["items"].as_array().unwrap().len(), empty["next_after"].as_i64()), (0, Some(ids[4])));

    for (query, field, says) in [
        ("?limit=0", "limit", "must be 1 to 1000"),
        ("?limit=1001", "limit", "must be 1 to 1000"),
        ("?after=-1", "after", "must be an event id"),
        ("?colour=blue", "query", "unknown field"),
        ("?after=ten", "query", "invalid digit"),
    ] {
        let r = get(query.to_owned()).await;
        assert_eq!((r.status, r.error_code()), (400, "VALIDATION_FAILED".to_owned()), "{query}: {:?}", r.body);
        assert_eq!(r.json()["error"]["details"]["field"], field, "{query}");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains(says), "{query}: {}", r.json());
    }
    let r = get(format!("?after={unplaced}")).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("no place in the order yet"), "{}", r.json());
    let r = get("?after=999999".to_owned()).await;
    assert_eq!(r.status, 400);
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("no longer kept") && message.contains(&format!("the oldest event kept is {}", ids[0])));

    // `allot events` prints the same page.
    let out = allot_cli(&app, &["events", "--after", &ids[1].to_string(), "--limit", "2"]);
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let api = get(format!("?after={}&limit=2", ids[1])).await.json();
    assert_eq!(printed, api);
    app.finish().await;
}

/// Run the `allot` binary against this app's database; its standard output.
fn allot_cli(app: &TestApp, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(args)
        .env("DATABASE_URL", common::url_for(&app.db_name))
        .env("VALKEY_URL", common::valkey_url())
        .env("ALLOT_REGION", "eu")
        .env("ALLOT_CARD_KEYS", allot_origin::config::generate_card_key("cli1"))
        .env("ALLOT_EDGE_SECRETS", common::EDGE_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "allot {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn outbox_prune_deletes_published_events_past_the_retention_from_the_start_only() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn().await;
    let relay = relay(&app, &common::valkey_url());
    let mut leader = relay.lead().await.unwrap().unwrap();
    // 2,500 events (published 500 to a batch), 3 more one by one, then 2 placed but unpublished.
    sqlx::query(
        "INSERT INTO outbox (topic, aggregate_id, payload) SELECT 'test.event', g::text, '{}' FROM generate_series(1, 2500) g",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    while leader.step().await.unwrap().published > 0 {}
    for i in 0..3 {
        insert_event(&app.pool, &format!("young-{i}")).await;
        assert_eq!(leader.step().await.unwrap().published, 1);
    }
    leader.release().await;
    insert_event(&app.pool, "waiting-1").await;
    insert_event(&app.pool, "waiting-2").await;
    place_without_publishing(&app, 2).await;
    // The big batch and the first small one were published 8 days ago; the others are young.
    // Unpublished events are older still, and stay.
    sqlx::query("UPDATE outbox_publications SET at = now() - interval '8 days' WHERE through_seq <= 2501")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET created_at = now() - interval '30 days' WHERE seq > 2503")
        .execute(&app.pool)
        .await
        .unwrap();
    let kept_before: Vec<(i64, i64)> = placed(&app.pool).await;

    let services = Services::init(app.config.clone()).unwrap();
    assert!(
        jobs::registry(&app.config, true)
            .iter()
            .any(|j| j.name() == "outbox-prune" && j.default_interval() == Duration::from_secs(3600)),
        "registered, hourly"
    );
    let ctx = services.job_context(CancellationToken::new());
    let counts = match jobs::run_once(&jobs::outbox_prune::OutboxPrune, &ctx, None, "test").await.unwrap() {
        RunOutcome::Succeeded(c) => c,
        other => panic!("{other:?}"),
    };
    println!("outbox-prune: {counts:?}");
    assert_eq!((counts["deleted"].as_u64(), counts["through_seq"].as_i64()), (Some(2501), Some(2501)));
    let kept = placed(&app.pool).await;
    assert_eq!(kept, kept_before[2501..], "the start of the order went, the rest is whole");
    assert_eq!(app.count("outbox", "seq IS NULL").await, 0);
    assert_eq!(app.count("outbox_publications", "through_seq <= 2501").await, 0, "their records went too");

    // Paging from a pruned event is refused, naming the oldest kept; from a kept one it works,
    // and the first kept event still knows when it was published.
    let viewer = common::operator_token(&app, "viewer").await;
    let gone = kept_before[100].0;
    let r = app.ops("GET", &format!("/ops/v1/events?after={gone}"), Some(&viewer), None).await;
    assert_eq!((r.status, r.error_code()), (400, "VALIDATION_FAILED".to_owned()));
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains(&format!("the oldest event kept is {}", kept[0].0)) && message.contains("7 days"),
        "{message}"
    );
    let page = app.ops("GET", "/ops/v1/events", Some(&viewer), None).await.json();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert!(items[0]["published_at"].is_string() && items[1]["published_at"].is_string());
    assert!(items[2]["published_at"].is_null() && items[3]["published_at"].is_null());

    // Run again: nothing more is old enough.
    let again = match jobs::run_once(&jobs::outbox_prune::OutboxPrune, &ctx, None, "test").await.unwrap() {
        RunOutcome::Succeeded(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(again["deleted"], 0);
    app.finish().await;
}

/// How many migrations to revert so that `version` is no longer applied.
fn steps_back_to_before(version: i64) -> usize {
    let mut versions: Vec<i64> =
        allot_origin::db::MIGRATOR.iter().map(|m| m.version).filter(|v| *v >= version).collect();
    versions.dedup();
    versions.len()
}

#[tokio::test]
async fn migration_9_places_earlier_events_in_id_order_and_keeps_their_publication_both_ways() {
    let name = common::empty_database().await;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&common::url_for(&name)).await.unwrap();
    allot_origin::db::migrate_up(&pool).await.unwrap();
    allot_origin::db::migrate_down(&pool, steps_back_to_before(20261127000009)).await.unwrap();
    // Published, published, never published, published: the relay starts again at the third.
    sqlx::query(
        "INSERT INTO outbox (topic, aggregate_id, payload, published_at) VALUES
           ('test.event', 'a', '{}', '2026-11-20T10:00:00Z'), ('test.event', 'b', '{}', '2026-11-20T10:00:01Z'),
           ('test.event', 'c', '{}', NULL), ('test.event', 'd', '{}', '2026-11-20T10:00:03Z')",
    )
    .execute(&pool)
    .await
    .unwrap();
    allot_origin::db::migrate_up(&pool).await.unwrap();
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, seq FROM outbox ORDER BY id").fetch_all(&pool).await.unwrap();
    assert!(rows.iter().all(|(id, seq)| id == seq), "earlier events keep their id order: {rows:?}");
    let marks: (i64, i64) =
        sqlx::query_as("SELECT last_seq, published_seq FROM outbox_sequence").fetch_one(&pool).await.unwrap();
    assert_eq!(marks, (4, 2), "published up to the first event never published");
    let page = allot_origin::ops::events::list(&pool, None, None, Duration::from_secs(7 * 86_400)).await.unwrap();
    let published: Vec<Option<String>> = page
        .items
        .iter()
        .map(|e| e.published_at.map(|t| t.format(&time::format_description::well_known::Rfc3339).unwrap()))
        .collect();
    assert_eq!(
        published,
        [Some("2026-11-20T10:00:00Z".to_owned()), Some("2026-11-20T10:00:01Z".to_owned()), None, None],
        "the fourth is published again after the third (at least once)"
    );
    let refused = sqlx::query("UPDATE outbox SET seq = 99 WHERE id = 1").execute(&pool).await.unwrap_err();
    assert!(refused.to_string().contains("already has its place"), "{refused}");

    allot_origin::db::migrate_down(&pool, steps_back_to_before(20261127000009)).await.unwrap();
    let back: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT aggregate_id, to_char(published_at AT TIME ZONE 'UTC', 'HH24:MI:SS') FROM outbox ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        back,
        [
            ("a".to_owned(), Some("10:00:00".to_owned())),
            ("b".to_owned(), Some("10:00:01".to_owned())),
            ("c".to_owned(), None),
            ("d".to_owned(), None),
        ]
    );
    pool.close().await;
    common::drop_database(&name).await;
}

#[tokio::test]
async fn health_reports_the_events_valkey_apart_from_the_cache_and_the_relays_lag() {
    let opts = Options { extra: vec![("ALLOT_EVENTS_URL".into(), dead_url())], ..Options::default() };
    let app = TestApp::spawn_with(opts).await;
    let status = |r: &common::Reply, check: &str| r.json()["checks"][check][0]["status"].as_str().unwrap().to_owned();
    let health = common::read(reqwest::get(format!("{}/health", app.operator)).await.unwrap()).await;
    assert_eq!(health.status, 200);
    assert_eq!(status(&health, "valkey"), "pass");
    assert_eq!(status(&health, "valkey:events"), "warn");
    assert!(health.json()["checks"]["valkey:events"][0]["output"].as_str().unwrap().contains("wait in the outbox"));
    assert_eq!(status(&health, "outbox:relay"), "pass", "nothing waiting");
    let ready = common::read(reqwest::get(format!("{}/readyz", app.operator)).await.unwrap()).await;
    assert_eq!(ready.status, 200, "events waiting in the outbox do not stop allocations");
    assert_eq!(status(&ready, "valkey:events"), "warn");
    assert_eq!(ready.json()["output"], "degraded: the events Valkey is unavailable");

    // An event waiting for two minutes: the relay is late.
    insert_event(&app.pool, "old").await;
    sqlx::query("UPDATE outbox SET created_at = now() - interval '2 minutes'").execute(&app.pool).await.unwrap();
    let health = common::read(reqwest::get(format!("{}/health", app.operator)).await.unwrap()).await;
    assert_eq!(status(&health, "outbox:relay"), "warn");
    assert!(health.json()["checks"]["outbox:relay"][0]["output"].as_str().unwrap().contains("1 event(s)"));
    app.finish().await;

    // Its own Valkey up: both pass, each under its own name.
    let app = TestApp::spawn_with(Options {
        extra: vec![("ALLOT_EVENTS_URL".into(), common::valkey_url())],
        ..Options::default()
    })
    .await;
    let ready = common::read(reqwest::get(format!("{}/readyz", app.operator)).await.unwrap()).await;
    assert_eq!((status(&ready, "valkey"), status(&ready, "valkey:events")), ("pass".to_owned(), "pass".to_owned()));
    app.finish().await;
}

#[tokio::test]
async fn webhook_deliveries_are_queued_in_place_order_even_while_the_events_valkey_is_down() {
    let _serial = SERIAL.lock().await;
    let opts = Options { extra: vec![("ALLOT_WEBHOOK_ALLOW_PRIVATE".into(), "true".into())], ..Options::default() };
    let app = TestApp::spawn_with(opts).await;
    let admin = common::operator_token(&app, "admin").await;
    let body = serde_json::json!({ "url": "http://127.0.0.1:9/hook", "topics": ["allocation.created"] });
    let r = app.ops("POST", &format!("/ops/v1/clients/{}/webhooks", app.client_id), Some(&admin), Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    app.product("wq", "USD", &["10.00"]).await;
    app.load_cards("wq", 1000, 3).await;
    for i in 0..3 {
        let r = app.allocate(format!("wq-{i}"), r#"{"product_id":"wq","denomination":"10.00","quantity":1}"#).await;
        assert_eq!(r.status, 201);
    }
    assert_eq!(app.count("webhook_deliveries", "").await, 0, "queued by the relay, not by the allocation");
    // The relay places the events with its stream unreachable: the deliveries are queued anyway,
    // in the events' order, while nothing is in the stream.
    place_without_publishing(&app, 3).await;
    assert_eq!(published_seq(&app.pool).await, 0);
    let queued: Vec<i64> =
        sqlx::query_scalar("SELECT o.seq FROM webhook_deliveries d JOIN outbox o ON o.id = d.event_id ORDER BY d.id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(queued, [1, 2, 3], "one delivery per event, in place order");
    // Placing never runs twice for an event: nothing more is queued.
    place_without_publishing(&app, 0).await;
    assert_eq!(app.count("webhook_deliveries", "").await, 3);
    app.finish().await;
}
