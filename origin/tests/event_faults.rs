//! Fault tests of the events stream: real `allot` processes (one server, two workers: one
//! relay active, the other standing by) on their own Postgres, cache Valkey and events Valkey
//! (started by `scripts/stack` in a private folder, so stopping them disturbs nobody),
//! allocations over HTTP while the fault happens, then an audit of the stream against Postgres,
//! printed with its counts. They run one at a time; they wait with deadlines, never on timing.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use allot_origin::ops;
use sqlx::PgPool;
use tokio::sync::Mutex;

use common::ports::free_port;
use common::private_stack::{Seeded, Stack, seed, wait_ready};

const SECRET: &str = "event-fault-edge-secret-0123456789";
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A running `allot` process, killed on drop.
struct Process {
    child: Child,
    /// Its operator listener (health, metrics, the operator API).
    operator: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The system under test: a migrated database with stock, its processes' settings, and them.
struct System {
    stack: Stack,
    pool: PgPool,
    env: Vec<(String, String)>,
    key: String,
    prefix: String,
}

impl System {
    async fn new(name: &str, product: &str, cards: usize) -> Self {
        let stack = Stack::up(&format!("event-fault-{name}"));
        let Seeded { pool, card_keys, key } = seed(&stack, &format!("E-{name}"), product, cards).await;
        let env = vec![
            ("DATABASE_URL".into(), stack.database_url()),
            ("VALKEY_URL".into(), stack.valkey_url()),
            ("ALLOT_EVENTS_URL".into(), stack.events_url()),
            ("ALLOT_REGION".into(), "eu".into()),
            ("ALLOT_CARD_KEYS".into(), card_keys),
            ("ALLOT_EDGE_SECRETS".into(), SECRET.into()),
            ("ALLOT_DB_ACQUIRE_TIMEOUT_MS".into(), "5000".into()),
            ("ALLOT_VALKEY_TIMEOUT_MS".into(), "200".into()),
            ("ALLOT_SHUTDOWN_TIMEOUT_MS".into(), "20000".into()),
            ("ALLOT_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "warn,allot_origin::relay=info".into()),
        ];
        let sys = System { stack, pool, env, key, prefix: "allot".to_owned() };
        sys.allot(&["jobs", "run", "inventory-pump"]);
        sys
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_allot"));
        c.args(args).envs(self.env.iter().cloned()).stdin(Stdio::null());
        c
    }

    /// Run an `allot` command to completion; its standard output.
    fn allot(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(out.status.success(), "allot {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start `allot <role>` with its own listeners, logging to the stack folder; wait until ready.
    async fn start(&self, role: &str) -> (Process, Option<String>) {
        let operator_port = free_port();
        let public_port = free_port();
        let log = self.stack.dir.join(format!("{role}-{operator_port}.log"));
        let child = self
            .command(&[role])
            .env("ALLOT_LISTEN", format!("127.0.0.1:{public_port}"))
            .env("ALLOT_OPERATOR_LISTEN", format!("127.0.0.1:{operator_port}"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let operator = format!("http://127.0.0.1:{operator_port}");
        wait_ready(&operator).await;
        let public = (role == "server").then(|| format!("http://127.0.0.1:{public_port}"));
        (Process { child, operator }, public)
    }

    async fn stream_entries(&self) -> Vec<(String, i64)> {
        let client = redis::Client::open(self.stack.events_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let raw: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XRANGE")
            .arg(format!("{}:events", self.prefix))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        raw.into_iter().map(|(id, f)| (id, f["outbox_id"].parse().unwrap())).collect()
    }

    /// Wait until every event is placed and in the stream (the relays run in the workers).
    async fn wait_published(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (unplaced, last, published): (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM outbox WHERE seq IS NULL), last_seq, published_seq FROM outbox_sequence",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if unplaced == 0 && last == published {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "every event published within {within:?}: {unplaced} unplaced, placed {last}, published {published}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Allocate `total` single cards over `concurrency` connections, each request retried with its
/// Idempotency-Key after a 503 or a transport error until it gets another answer; the statuses.
async fn allocate(base: String, key: String, product: &'static str, total: usize, concurrency: usize) -> Vec<u16> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (base, key, next, done) = (base.clone(), key.clone(), next.clone(), done.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let body = format!(r#"{{"product_id":"{product}","denomination":"10.00","quantity":1}}"#);
                    let idem = format!("ev-{i}");
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let status = loop {
                        let sig = common::edge_signature(
                            SECRET.as_bytes(),
                            common::unix_now(),
                            "POST",
                            "/v1/allocations",
                            Some(&key),
                            Some(&idem),
                            body.as_bytes(),
                        );
                        let r = http
                            .post(format!("{base}/v1/allocations"))
                            .header("authorization", format!("Bearer {key}"))
                            .header("idempotency-key", &idem)
                            .header("content-type", "application/json")
                            .header(allot_shared::headers::SIGNATURE, sig)
                            .body(body.clone())
                            .send()
                            .await;
                        match r {
                            Ok(resp) if resp.status().as_u16() != 503 => break resp.status().as_u16(),
                            _ if Instant::now() > deadline => break 0,
                            _ => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    };
                    done.lock().unwrap().push(status);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(done).unwrap().into_inner().unwrap()
}

/// Wait until `n` allocations are committed (faults are injected by progress, not the clock).
async fn after_allocations(pool: &PgPool, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM allocations").fetch_one(pool).await.unwrap();
        if committed >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} allocations within 120 s (got {committed})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stream against Postgres, after a run.
#[derive(Debug)]
struct Audit {
    allocations: i64,
    events: usize,
    entries: usize,
    duplicates: usize,
    missing: usize,
    /// Entries whose id is not their event's place, or not after the one before.
    out_of_order: usize,
    /// Neighbouring events whose commit order differs from their id order.
    committed_out_of_id_order: usize,
}

async fn audit(sys: &System) -> Audit {
    let allocations: i64 = sqlx::query_scalar("SELECT count(*) FROM allocations").fetch_one(&sys.pool).await.unwrap();
    let placed: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, seq FROM outbox ORDER BY seq").fetch_all(&sys.pool).await.unwrap();
    let entries = sys.stream_entries().await;
    let seen: Vec<i64> = entries.iter().map(|e| e.1).collect();
    let distinct: HashSet<i64> = seen.iter().copied().collect();
    let expected: Vec<(String, i64)> = placed.iter().map(|(id, seq)| (format!("{seq}-0"), *id)).collect();
    let out_of_order = entries.iter().zip(&expected).filter(|(got, want)| got != want).count()
        + entries.windows(2).filter(|w| stream_id(&w[0].0) >= stream_id(&w[1].0)).count();
    let a = Audit {
        allocations,
        events: placed.len(),
        entries: entries.len(),
        duplicates: seen.len() - distinct.len(),
        missing: placed.iter().filter(|(id, _)| !distinct.contains(id)).count(),
        out_of_order,
        committed_out_of_id_order: placed.windows(2).filter(|w| w[0].0 > w[1].0).count(),
    };
    println!(
        "events audit: allocations {} | events {} | stream entries {} | duplicates {} | missing {} | out of order {} \
         | committed out of id order {}",
        a.allocations, a.events, a.entries, a.duplicates, a.missing, a.out_of_order, a.committed_out_of_id_order
    );
    a
}

fn stream_id(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Every allocation has its event; the stream holds each event once, in the relay's order.
fn assert_whole(a: &Audit, allocations: i64) {
    assert_eq!(a.allocations, allocations, "{a:?}");
    assert_eq!(a.events as i64, a.allocations, "one allocation.created per allocation: {a:?}");
    assert_eq!(a.entries, a.events, "one entry per event: {a:?}");
    assert_eq!((a.duplicates, a.missing, a.out_of_order), (0, 0, 0), "{a:?}");
}

/// A process's counter or gauge, from its /metrics (0 when absent).
async fn metric(operator: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{operator}/metrics")).await.unwrap().text().await.unwrap();
    let sum: f64 = text.lines().filter_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok()).sum();
    sum + 0.0 // an empty sum is -0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_valkey_stopped_under_load_loses_and_reorders_nothing() {
    let _serial = SERIAL.lock().await;
    let sys = System::new("evstop", "es", 1300).await;
    let (_server, public) = sys.start("server").await;
    let (w1, _) = sys.start("worker").await;
    let (w2, _) = sys.start("worker").await;
    let load = tokio::spawn(allocate(public.unwrap(), sys.key.clone(), "es", 1200, 16));
    after_allocations(&sys.pool, 300).await;
    sys.stack.run("events-stop", &[]);
    let stopped = Instant::now();
    // Allocations go on meanwhile; their events wait in the outbox, in order.
    after_allocations(&sys.pool, 600).await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed())).await;
    let published_while_down: i64 =
        sqlx::query_scalar("SELECT published_seq FROM outbox_sequence").fetch_one(&sys.pool).await.unwrap();
    let placed_while_down: i64 =
        sqlx::query_scalar("SELECT last_seq FROM outbox_sequence").fetch_one(&sys.pool).await.unwrap();
    let backoff = metric(&w1.operator, "allot_outbox_backoff_seconds").await
        + metric(&w2.operator, "allot_outbox_backoff_seconds").await;
    sys.stack.run("events-start", &[]);
    println!(
        "events Valkey down {:?}: placed {placed_while_down}, published {published_while_down}, backoff {backoff:.2} s",
        stopped.elapsed()
    );
    assert!(placed_while_down > published_while_down, "events kept coming while the stream was down");
    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 201), "allocations never wait for the events Valkey: {statuses:?}");
    sys.wait_published(Duration::from_secs(120)).await;
    let failures = metric(&w1.operator, "allot_outbox_failures_total").await
        + metric(&w2.operator, "allot_outbox_failures_total").await;
    let failed_runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE job_name = 'outbox-relay' AND outcome = 'failed'")
            .fetch_one(&sys.pool)
            .await
            .unwrap();
    println!("relay: {failures} failed appends (job_runs: {failed_runs}), the stream held meanwhile");
    assert!(failures >= 1.0 && failed_runs >= 1);
    let a = audit(&sys).await;
    assert_whole(&a, 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_valkey_flushed_and_restarted_loses_no_event() {
    let _serial = SERIAL.lock().await;
    let sys = System::new("cacheflush", "cf", 1300).await;
    let (_server, public) = sys.start("server").await;
    let (_w1, _) = sys.start("worker").await;
    let (_w2, _) = sys.start("worker").await;
    let load = tokio::spawn(allocate(public.unwrap(), sys.key.clone(), "cf", 1200, 16));
    after_allocations(&sys.pool, 300).await;
    let client = redis::Client::open(sys.stack.valkey_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let in_stream_at_flush = sys.stream_entries().await.len();
    after_allocations(&sys.pool, 700).await;
    sys.stack.run("valkey-stop", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sys.stack.run("valkey-start", &[]);
    println!("cache flushed with {in_stream_at_flush} events in the stream, then restarted empty");
    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    sys.wait_published(Duration::from_secs(120)).await;
    let relay_failures = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_runs WHERE job_name = 'outbox-relay'")
        .fetch_one(&sys.pool)
        .await
        .unwrap();
    assert_eq!(relay_failures, 0, "the events stream never failed: it lives elsewhere");
    let a = audit(&sys).await;
    assert!(a.entries >= in_stream_at_flush);
    assert_whole(&a, 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_valkey_restarted_keeps_every_event_and_without_its_data_gets_them_back() {
    let _serial = SERIAL.lock().await;
    let sys = System::new("evrestart", "er", 1600).await;
    let (_server, public) = sys.start("server").await;
    let (w1, _) = sys.start("worker").await;
    let (w2, _) = sys.start("worker").await;
    let load = tokio::spawn(allocate(public.unwrap(), sys.key.clone(), "er", 1500, 16));
    after_allocations(&sys.pool, 300).await;
    // A clean restart: the append-only file keeps the stream.
    sys.stack.run("events-stop", &[]);
    sys.stack.run("events-start", &[]);
    let kept = sys.stream_entries().await.len();
    println!("after a clean restart the stream holds {kept} entries");
    after_allocations(&sys.pool, 900).await;
    // Killed, and back without its data (a lost disk; a crash loses up to the last second):
    // the relay finds the stream behind Postgres and appends those events again, same ids.
    // Everything published before the kill is appended again (the kept entries may not all
    // count: a relay still backing off from the first restart may not have marked them yet).
    let published_before_kill: i64 =
        sqlx::query_scalar("SELECT published_seq FROM outbox_sequence").fetch_one(&sys.pool).await.unwrap();
    sys.stack.kill_events();
    std::fs::remove_dir_all(sys.stack.dir.join("events/appendonlydir")).unwrap();
    sys.stack.run("events-start", &[]);
    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    sys.wait_published(Duration::from_secs(120)).await;
    let republished = metric(&w1.operator, "allot_outbox_republished_total").await
        + metric(&w2.operator, "allot_outbox_republished_total").await;
    println!(
        "appended again after the restart without data: {republished} (published before the kill: {published_before_kill})"
    );
    assert!(
        republished >= published_before_kill as f64 && republished > 0.0,
        "at least what was published before the kill was appended again"
    );
    let a = audit(&sys).await;
    assert_whole(&a, 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lower_id_committing_after_a_higher_one_is_published_after_it_by_the_workers() {
    let _serial = SERIAL.lock().await;
    let sys = System::new("commitorder", "co", 10).await;
    let (server, _) = sys.start("server").await;
    let (_w1, _) = sys.start("worker").await;
    let (_w2, _) = sys.start("worker").await;
    let insert = "INSERT INTO outbox (topic, aggregate_id, payload) VALUES ('test.event', $1, '{}') RETURNING id";
    let mut slow = sys.pool.begin().await.unwrap();
    let low: i64 = sqlx::query_scalar(insert).bind("slow").fetch_one(&mut *slow).await.unwrap();
    let high: i64 = sqlx::query_scalar(insert).bind("fast").fetch_one(&sys.pool).await.unwrap();
    assert!(low < high);
    // The higher id is published while the lower one's transaction is open...
    let deadline = Instant::now() + Duration::from_secs(60);
    while sys.stream_entries().await.is_empty() {
        assert!(Instant::now() < deadline, "the committed event is published within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, token) =
        ops::operators::create(&sys.pool, &ops::Actor::cli(), "viewer", ops::operators::Role::Viewer, 1).await.unwrap();
    let page: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/ops/v1/events", server.operator))
        .bearer_auth(token.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["next_after"], high, "{page}");
    // ...and the lower one after it, once committed; a consumer going on from `high` gets it.
    slow.commit().await.unwrap();
    sys.wait_published(Duration::from_secs(60)).await;
    let entries = sys.stream_entries().await;
    println!("stream: {entries:?} (id {low} committed after id {high})");
    assert_eq!(entries, [("1-0".to_owned(), high), ("2-0".to_owned(), low)]);
    let next: serde_json::Value = serde_json::from_str(&sys.allot(&["events", "--after", &high.to_string()])).unwrap();
    let ids: Vec<i64> = next["items"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [low], "never skipped: {next}");
    let a = audit(&sys).await;
    assert_eq!((a.entries, a.duplicates, a.missing, a.out_of_order, a.committed_out_of_id_order), (2, 0, 0, 0, 1));
}
