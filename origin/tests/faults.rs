//! Fault tests: real `allot` processes, their own Postgres and Valkey (started by
//! `scripts/stack` in a private folder, so stopping them disturbs no other test), allocations
//! over HTTP while the fault happens, then an audit of Postgres printed with its counts.
//! They run one at a time.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;

use common::ports::free_port;
use common::private_stack::{Seeded, Stack, seed, wait_ready};

const SECRET: &str = "fault-edge-secret-0123456789abcdef";
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The system under test: a migrated database with stock, and the settings of its processes.
struct System {
    stack: Stack,
    pool: PgPool,
    env: Vec<(String, String)>,
    key: String,
    prefix: String,
    /// The cache: the stack's Valkey server, or its cluster's nodes.
    valkey_url: String,
}

impl System {
    async fn new(name: &str, product: &str, cards: usize) -> Self {
        let stack = Stack::up(&format!("fault-{name}"));
        let valkey_url = stack.valkey_url();
        Self::on(stack, valkey_url, name, product, cards).await
    }

    /// The same system with its cache on the stack's Valkey cluster.
    async fn new_on_cluster(name: &str, product: &str, cards: usize) -> Self {
        let stack = Stack::up_with_cluster(&format!("fault-{name}"));
        let valkey_url = stack.cluster_url();
        Self::on(stack, valkey_url, name, product, cards).await
    }

    async fn on(stack: Stack, valkey_url: String, name: &str, product: &str, cards: usize) -> Self {
        let Seeded { pool, card_keys, key } = seed(&stack, &format!("F-{name}"), product, cards).await;
        let prefix = "allot".to_owned();
        let env = vec![
            ("DATABASE_URL".into(), stack.database_url()),
            ("VALKEY_URL".into(), valkey_url.clone()),
            ("ALLOT_REGION".into(), "eu".into()),
            ("ALLOT_CARD_KEYS".into(), card_keys),
            ("ALLOT_EDGE_SECRETS".into(), SECRET.into()),
            ("ALLOT_DB_ACQUIRE_TIMEOUT_MS".into(), "1000".into()),
            ("ALLOT_VALKEY_TIMEOUT_MS".into(), "200".into()),
            ("ALLOT_SHUTDOWN_TIMEOUT_MS".into(), "20000".into()),
            ("ALLOT_LOG_FORMAT".into(), "json".into()),
            // Outages open with a WARN and close with an INFO; everything else at WARN and up.
            ("RUST_LOG".into(), "warn,allot_origin::outage=info".into()),
        ];
        let sys = System { stack, pool, env, key, prefix, valkey_url };
        sys.allot(&["jobs", "run", "inventory-pump"]).await;
        sys
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_allot"));
        c.args(args).envs(self.env.iter().cloned()).stdin(Stdio::null());
        c
    }

    /// Run an `allot` command to completion.
    async fn allot(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(out.status.success(), "allot {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start `allot server` on fresh ports and wait until it is ready.
    async fn start_server(&self) -> Server {
        let port = free_port();
        let log = self.stack.dir.join(format!("server-{port}.log"));
        let child = self
            .command(&["server"])
            .env("ALLOT_LISTEN", format!("127.0.0.1:{port}"))
            .env("ALLOT_OPERATOR_LISTEN", format!("127.0.0.1:{}", free_port()))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&base).await;
        Server { child, base, log }
    }

    async fn cache_ids(&self, product: &str) -> HashSet<i64> {
        let mut conn = common::connection_to(&self.valkey_url);
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{}:inv:{{p{product}}}:active", self.prefix))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        members.into_iter().filter_map(|m| m.parse().ok()).collect()
    }
}

struct Server {
    child: Child,
    base: String,
    /// The server's log (JSON lines on stdout).
    log: PathBuf,
}

impl Server {
    /// The log's lines, parsed.
    fn log_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// An outage of `dependency` was logged as one WARN when it began (two if the failures paused
    /// longer than the quiet period), one INFO with its count when it ended, and nothing at ERROR.
    async fn assert_outage_logged_once(&self, dependency: &str, failed_requests: usize) {
        // The outage closes after its quiet period; give it that and a margin.
        tokio::time::sleep(allot_origin::outage::QUIET + Duration::from_secs(2)).await;
        let lines = self.log_lines();
        let about = |level: &str, message: &str| -> Vec<&serde_json::Value> {
            lines
                .iter()
                .filter(|l| l["level"] == level && l["dependency"] == dependency)
                .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with(message)))
                .collect()
        };
        let opened = about("WARN", "dependency unavailable");
        let closed = about("INFO", "dependency recovered");
        let errors: Vec<&serde_json::Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
        println!("{dependency} outage: {} WARN, {} recovered {:?}", opened.len(), closed.len(), closed);
        assert!((1..=2).contains(&opened.len()), "one WARN per outage, not one per request: {opened:?}");
        assert!(opened.len() < failed_requests.max(3), "{} WARNs for {failed_requests} failed requests", opened.len());
        assert_eq!(closed.len(), opened.len(), "every outage is closed with its count: {closed:?}");
        let counted: u64 = closed.iter().filter_map(|l| l["failures"].as_u64()).sum();
        assert!(counted >= 1, "the recovery line carries the failure count");
        assert!(errors.is_empty(), "an expected outage is not an ERROR: {errors:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap().success();
    assert!(ok, "kill -{sig}");
}

/// One attempt of a request: what came back, and when.
#[derive(Debug, Clone)]
struct Attempt {
    /// When the answer (or the transport error) came back.
    at: Instant,
    /// The HTTP status, when an answer came back.
    status: Option<u16>,
    /// `"201 "`, `"503 ORIGIN_UNAVAILABLE"`, `"connect refused"`, `"cut off: …"`.
    outcome: String,
}

/// One logical request: its key, every attempt's outcome, and its final result.
#[derive(Debug, Default, Clone)]
struct Request {
    attempts: Vec<Attempt>,
    cards: Vec<i64>,
    status: u16,
    /// Attempts that got an error after the request was sent (cut off mid-flight).
    cut_off: usize,
    slowest: Duration,
    /// When the final attempt ended, and how long it took.
    finished_at: Option<Instant>,
    last_latency: Duration,
}

/// Whether an answer is worth retrying with the same Idempotency-Key: the origin unavailable
/// (503) or the key's first attempt still in progress (409 IDEMPOTENCY_IN_PROGRESS). Anything
/// else ends the request with that answer, so an unexpected status is never retried away.
fn retryable(status: u16, code: &str) -> bool {
    status == 503 || (status == 409 && code == "IDEMPOTENCY_IN_PROGRESS")
}

/// Allocate `total` single cards over `concurrency` connections, with Idempotency-Keys
/// `<prefix>-<n>`; a request retries with its key after a retryable answer (see [`retryable`])
/// or a transport error, until it gets any other answer or `give_up` passes. `base` is re-read
/// before each attempt so a test can point clients at a restarted server.
#[allow(clippy::too_many_arguments)]
async fn drive(
    base: Arc<std::sync::RwLock<String>>,
    key: String,
    prefix: &str,
    product: &str,
    total: usize,
    concurrency: usize,
    give_up: Duration,
    done: Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<Request> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(vec![Request::default(); total]));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (base, key, next, results, product, done, prefix) = (
            base.clone(),
            key.clone(),
            next.clone(),
            results.clone(),
            product.to_owned(),
            done.clone(),
            prefix.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let body = format!(r#"{{"product_id":"{product}","denomination":"10.00","quantity":1}}"#);
                let mut req = Request::default();
                loop {
                    let idem = format!("{prefix}-{i}");
                    let sig = sign_allocation(&key, &idem, &body);
                    let url = format!("{}/v1/allocations", base.read().unwrap());
                    let t = Instant::now();
                    let r = http
                        .post(url)
                        .header("authorization", format!("Bearer {key}"))
                        .header("idempotency-key", &idem)
                        .header("content-type", "application/json")
                        .header(allot_shared::headers::SIGNATURE, sig)
                        .body(body.clone())
                        .send()
                        .await;
                    req.slowest = req.slowest.max(t.elapsed());
                    req.last_latency = t.elapsed();
                    req.finished_at = Some(Instant::now());
                    match r {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            match resp.bytes().await {
                                Ok(bytes) => {
                                    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                                    let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
                                    req.attempts.push(Attempt {
                                        at: Instant::now(),
                                        status: Some(status),
                                        outcome: format!("{status} {code}"),
                                    });
                                    if !retryable(status, &code) {
                                        req.status = status;
                                        if status == 201 {
                                            req.cards = v["cards"]
                                                .as_array()
                                                .unwrap()
                                                .iter()
                                                .map(|c| c["card_id"].as_i64().unwrap())
                                                .collect();
                                        }
                                        break;
                                    }
                                }
                                Err(_) => {
                                    req.cut_off += 1;
                                    req.attempts.push(Attempt {
                                        at: Instant::now(),
                                        status: None,
                                        outcome: "cut off".into(),
                                    });
                                }
                            }
                        }
                        Err(e) if e.is_connect() => req.attempts.push(Attempt {
                            at: Instant::now(),
                            status: None,
                            outcome: "connect refused".into(),
                        }),
                        Err(e) => {
                            req.cut_off += 1;
                            req.attempts.push(Attempt {
                                at: Instant::now(),
                                status: None,
                                outcome: format!("cut off: {e}"),
                            });
                        }
                    }
                    if started.elapsed() > give_up {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                results.lock().await[i] = req;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(results).unwrap().into_inner()
}

/// Start a load in the background; returns its handle and its count of finished requests.
fn load(
    base: &Arc<std::sync::RwLock<String>>,
    key: &str,
    product: &'static str,
    total: usize,
    concurrency: usize,
    give_up: Duration,
) -> (tokio::task::JoinHandle<Vec<Request>>, Arc<std::sync::atomic::AtomicUsize>) {
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handle =
        tokio::spawn(drive(base.clone(), key.to_owned(), "req", product, total, concurrency, give_up, done.clone()));
    (handle, done)
}

/// Wait until `n` requests of a load have finished: faults are injected mid-load, by progress
/// rather than by the clock, so a fast machine cannot finish the load first.
async fn after(done: &std::sync::atomic::AtomicUsize, n: usize) {
    while done.load(std::sync::atomic::Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What Postgres says after a run, checked against what the clients got.
#[derive(Debug)]
struct Audit {
    requests: usize,
    successes: usize,
    errors_by_code: BTreeMap<String, usize>,
    allocated: usize,
    duplicates: usize,
    lost: usize,
    returned_not_allocated: usize,
}

async fn audit(sys: &System, product: &str, requests: &[Request]) -> Audit {
    let mut errors_by_code = BTreeMap::new();
    for r in requests {
        for a in &r.attempts {
            if a.status != Some(201) {
                *errors_by_code.entry(a.outcome.clone()).or_insert(0) += 1;
            }
        }
    }
    let returned: Vec<i64> = requests.iter().flat_map(|r| r.cards.clone()).collect();
    let returned_set: HashSet<i64> = returned.iter().copied().collect();
    let allocated: HashSet<i64> = sqlx::query_scalar("SELECT id FROM inventories WHERE status = 'allocated'")
        .fetch_all(&sys.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let active: HashSet<i64> = sqlx::query_scalar("SELECT id FROM inventories WHERE status = 'active'")
        .fetch_all(&sys.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let cached = sys.cache_ids(product).await;
    let a = Audit {
        requests: requests.len(),
        successes: requests.iter().filter(|r| r.status == 201).count(),
        errors_by_code,
        allocated: allocated.len(),
        duplicates: returned.len() - returned_set.len(),
        lost: active.difference(&cached).count(),
        returned_not_allocated: returned_set.symmetric_difference(&allocated).count(),
    };
    println!(
        "audit: requests {} | successes {} | errors by code {:?} | allocated {} | duplicates {} | lost {} | returned but not allocated {}",
        a.requests, a.successes, a.errors_by_code, a.allocated, a.duplicates, a.lost, a.returned_not_allocated
    );
    a
}

/// The invariants every fault must leave intact.
fn assert_whole(a: &Audit, expected_successes: usize) {
    // A fault may cost a 503 (retryable) while it lasts, never a 500.
    assert!(!a.errors_by_code.keys().any(|k| k.starts_with("500")), "no 500 ever: {a:?}");
    assert_eq!(a.successes, expected_successes, "{a:?}");
    assert_eq!(a.allocated, expected_successes, "every success is one allocated card: {a:?}");
    assert_eq!(a.duplicates, 0, "{a:?}");
    assert_eq!(a.returned_not_allocated, 0, "cards returned are exactly the cards allocated: {a:?}");
    assert_eq!(a.lost, 0, "every active card is back in the cache: {a:?}");
}

/// How long after a repair (or a measured heal) answers to requests caught by a fault may
/// still come back unavailable. Such a request waits at most the Valkey timeout (200 ms) and
/// the pool's acquire timeout (1 s) before its 503; 10 s covers that many times over on a
/// loaded machine, and a 503 later than that is not the fault's.
const RECOVERY_MARGIN: Duration = Duration::from_secs(10);

/// A fault's time line as the test saw it: when it began, when it was repaired, and how long
/// after the repair the test allows answers caught by it to come back (each test states why).
#[derive(Debug, Clone, Copy)]
struct Fault {
    began: Instant,
    repaired: Instant,
    grace: Duration,
}

impl Fault {
    /// From here on, the system must be healthy again.
    fn over(&self) -> Instant {
        self.repaired + self.grace
    }
}

/// `t` relative to the fault's start, for messages (`+1.234s`, `-0.050s`).
fn at(t: Instant, fault: &Fault) -> String {
    if t >= fault.began {
        format!("+{:.3}s", (t - fault.began).as_secs_f64())
    } else {
        format!("-{:.3}s", (fault.began - t).as_secs_f64())
    }
}

/// A fault costs 503s (and, while a process is down, refused or cut-off connections) only while
/// it lasts: no status but 201, 409 and 503 ever (never a 500), and every 503 or transport
/// error came back within [fault began, repaired + grace]; before and after that window every
/// answer is 201 or 409.
fn assert_unavailable_only_during(requests: &[Request], fault: &Fault) {
    let mut unexpected = Vec::new();
    let mut outside = Vec::new();
    let mut during = 0;
    for (i, r) in requests.iter().enumerate() {
        for a in &r.attempts {
            let seen = format!("request {i} at {}: {}", at(a.at, fault), a.outcome);
            match a.status {
                Some(201 | 409) => {}
                Some(503) | None if a.at < fault.began || a.at > fault.over() => outside.push(seen),
                Some(503) | None => during += 1,
                Some(_) => unexpected.push(seen),
            }
        }
    }
    println!(
        "fault: repaired at {}, healthy from {}; {during} failed attempts inside that window",
        at(fault.repaired, fault),
        at(fault.over(), fault)
    );
    assert!(unexpected.is_empty(), "a fault may cost a 503, never a 500 (nor any other status): {unexpected:?}");
    assert!(
        outside.is_empty(),
        "answers other than 201/409 outside the fault's window (began +0s, repaired {}, grace {:?}): {outside:?}",
        at(fault.repaired, fault),
        fault.grace
    );
}

/// Once the fault's grace is over, `n` new requests (keys `probe-<n>`, 4 at a time) each
/// succeed at their first attempt (no retry): the system has recovered, whatever the main load did.
async fn probe_after(fault: &Fault, base: &str, key: &str, product: &'static str, n: usize) -> Vec<Request> {
    tokio::time::sleep_until(fault.over().into()).await;
    let base = Arc::new(std::sync::RwLock::new(base.to_owned()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let probes = drive(base, key.to_owned(), "probe", product, n, 4, Duration::ZERO, done).await;
    for (i, r) in probes.iter().enumerate() {
        let outcomes: Vec<&str> = r.attempts.iter().map(|a| a.outcome.as_str()).collect();
        assert!(
            r.attempts.len() == 1 && r.status == 201,
            "after recovery, probe {i} must succeed at once: {outcomes:?}"
        );
    }
    probes
}

async fn reconcile_tick(sys: &System) {
    let out = sys.allot(&["jobs", "run", "reconcile"]).await;
    assert!(out.contains("Succeeded"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn valkey_flushed_mid_load() {
    let _serial = SERIAL.lock().await;
    let sys = System::new("flush", "fl", 1600).await;
    let server = sys.start_server().await;
    let base = Arc::new(std::sync::RwLock::new(server.base.clone()));
    let (load, done) = load(&base, &sys.key, "fl", 1500, 16, Duration::from_secs(120));
    after(&done, 300).await;
    let client = redis::Client::open(sys.stack.valkey_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let began = Instant::now();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let flushed = Instant::now();
    // The first request to find the set missing starts a single-flight rebuild: the set is
    // back long before the reconciler's next tick (which this test never runs meanwhile).
    let key = format!("{}:inv:{{pfl}}:active", sys.prefix);
    let healed = loop {
        let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
        if exists || flushed.elapsed() > Duration::from_secs(30) {
            break flushed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let requests = load.await.unwrap();
    let p99 = |from: Duration, to: Duration| {
        let mut took: Vec<Duration> = requests
            .iter()
            .filter_map(|r| r.finished_at.map(|f| (f, r.last_latency)))
            .filter(|(f, _)| *f >= flushed + from && *f < flushed + to)
            .map(|(_, l)| l)
            .collect();
        took.sort();
        took.get(took.len().saturating_sub(1) * 99 / 100).copied()
    };
    println!(
        "flush: set rebuilt after {healed:?}; p99 in the 2 s after the flush {:?}, from 2 s on {:?}",
        p99(Duration::ZERO, Duration::from_secs(2)),
        p99(Duration::from_secs(2), Duration::from_secs(3600)),
    );
    assert!(healed <= Duration::from_secs(2), "the cache healed within 2 s of the flush, not a tick: {healed:?}");
    // The flush is repaired when the set is back; requests caught by it have the margin more.
    let fault = Fault { began, repaired: flushed + healed, grace: RECOVERY_MARGIN };
    assert_unavailable_only_during(&requests, &fault);
    let probes = probe_after(&fault, &server.base, &sys.key, "fl", 50).await;
    reconcile_tick(&sys).await;
    let a = audit(&sys, "fl", &[requests, probes].concat()).await;
    assert_whole(&a, 1550);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn valkey_stopped_then_started_empty() {
    let _serial = SERIAL.lock().await;
    let sys = System::new("vkstop", "vs", 1600).await;
    let server = sys.start_server().await;
    let base = Arc::new(std::sync::RwLock::new(server.base.clone()));
    let (load, done) = load(&base, &sys.key, "vs", 1500, 16, Duration::from_secs(120));
    after(&done, 300).await;
    let began = Instant::now();
    sys.stack.run("valkey-stop", &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sys.stack.run("valkey-start", &[]);
    // Valkey answers again (empty) once valkey-start returns: the origin reconnects on its
    // next call and rebuilds a missing set on the first miss.
    let fault = Fault { began, repaired: Instant::now(), grace: RECOVERY_MARGIN };
    let requests = load.await.unwrap();
    assert_unavailable_only_during(&requests, &fault);
    let probes = probe_after(&fault, &server.base, &sys.key, "vs", 50).await;
    // Requests fall back to Postgres while Valkey is away, so few or none fail; the guard and
    // the pops still see every call fail.
    server.assert_outage_logged_once("valkey", 1000).await;
    reconcile_tick(&sys).await;
    let a = audit(&sys, "vs", &[requests, probes].concat()).await;
    assert_whole(&a, 1550);
}

/// A node's answer to a command, straight from that node (not through the cluster's routing).
async fn ask_node<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    cmd.query_async(&mut conn).await.ok()
}

/// The port of the node that serves `slot` as a healthy primary with `cluster_state:ok`, as
/// the first answering node of `ports` sees it.
async fn primary_for(ports: &[u16], slot: u16) -> Option<u16> {
    for &port in ports {
        let Some(info) = ask_node::<String>(port, redis::cmd("CLUSTER").arg("INFO")).await else { continue };
        if !info.contains("cluster_state:ok") {
            return None;
        }
        let nodes: String = ask_node(port, redis::cmd("CLUSTER").arg("NODES")).await?;
        return nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let serves = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((lo, hi)) => {
                    lo.parse::<u16>().is_ok_and(|lo| lo <= slot) && hi.parse::<u16>().is_ok_and(|hi| slot <= hi)
                }
                None => range.parse::<u16>() == Ok(slot),
            });
            let port = fields[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            serves.then_some(port)
        });
    }
    None
}

/// The longest time between two successive 201 answers of a load.
fn longest_gap_between_successes(requests: &[Request]) -> Duration {
    let mut times: Vec<Instant> =
        requests.iter().flat_map(|r| r.attempts.iter()).filter(|a| a.status == Some(201)).map(|a| a.at).collect();
    times.sort();
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn valkey_cluster_primary_killed_mid_load() {
    let _serial = SERIAL.lock().await;
    let sys = System::new_on_cluster("cluster", "cl", 2600).await;
    let server = sys.start_server().await;
    let base = Arc::new(std::sync::RwLock::new(server.base.clone()));
    let ports = sys.stack.cluster_ports();
    let set = format!("{}:inv:{{pcl}}:active", sys.prefix);
    let slot: u16 = ask_node(ports[0], redis::cmd("CLUSTER").arg("KEYSLOT").arg(&set)).await.unwrap();
    let victim = primary_for(&ports, slot).await.expect("a primary serves the product's slot");
    let (load, done) = load(&base, &sys.key, "cl", 2500, 16, Duration::from_secs(180));
    after(&done, 300).await;
    // SIGKILL: the primary's last writes (pops) may never reach its replica.
    let began = Instant::now();
    let ok = Command::new("kill").arg("-KILL").arg(sys.stack.cluster_node_pid(victim).to_string()).status().unwrap();
    assert!(ok.success(), "kill -KILL the primary on {victim}");
    let survivors: Vec<u16> = ports.iter().copied().filter(|p| *p != victim).collect();
    let (promoted, after_kill) = loop {
        // Until the others mark it failed, they still name the dead node.
        if let Some(p) = primary_for(&survivors, slot).await
            && p != victim
        {
            break (p, began.elapsed());
        }
        assert!(began.elapsed() < Duration::from_secs(60), "no replica was promoted within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let finished_during_failover = done.load(std::sync::atomic::Ordering::Relaxed) >= 2500;
    let requests = load.await.unwrap();
    let first_success_after = requests
        .iter()
        .flat_map(|r| r.attempts.iter())
        .filter(|a| a.status == Some(201) && a.at > began + after_kill)
        .map(|a| a.at - began)
        .min();
    println!(
        "cluster: primary on port {victim} killed after 300 requests; replica on {promoted} promoted after {after_kill:?}; \
         first success after the promotion at +{first_success_after:?}; longest gap between successes {:?}; \
         load over before the promotion: {finished_during_failover}",
        longest_gap_between_successes(&requests)
    );
    // The kill is repaired once the replica serves the slot; requests caught by it have the margin.
    let fault = Fault { began, repaired: began + after_kill, grace: RECOVERY_MARGIN };
    assert_unavailable_only_during(&requests, &fault);
    let probes = probe_after(&fault, &server.base, &sys.key, "cl", 50).await;
    // Pops the dead primary took but never replicated are back in the promoted set: the claim
    // in Postgres refuses them, and the reconciler removes them.
    reconcile_tick(&sys).await;
    let a = audit(&sys, "cl", &[requests, probes].concat()).await;
    assert_whole(&a, 2550);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_killed_mid_load_and_restarted() {
    let _serial = SERIAL.lock().await;
    let sys = System::new("kill9", "k9", 1100).await;
    let mut server = sys.start_server().await;
    let base = Arc::new(std::sync::RwLock::new(server.base.clone()));
    let (load, done) = load(&base, &sys.key, "k9", 1000, 24, Duration::from_secs(120));
    after(&done, 200).await;
    let began = Instant::now();
    signal(&server.child, "KILL");
    let _ = server.child.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = sys.start_server().await;
    *base.write().unwrap() = restarted.base.clone();
    // Repaired once the new process is ready and clients are pointed at it; a client that read
    // the old address just before has one more refused connection within the margin.
    let fault = Fault { began, repaired: Instant::now(), grace: RECOVERY_MARGIN };
    let requests = load.await.unwrap();
    assert_unavailable_only_during(&requests, &fault);
    let probes = probe_after(&fault, &restarted.base, &sys.key, "k9", 50).await;
    let requests = [requests, probes].concat();
    // Each request ended with exactly one allocation, found by its key.
    let per_key: Vec<(String, i64)> = sqlx::query_as(
        "SELECT a.idempotency_key, count(i.id) FROM allocations a JOIN inventories i ON i.allocation_id = a.id
          GROUP BY a.idempotency_key",
    )
    .fetch_all(&sys.pool)
    .await
    .unwrap();
    assert_eq!(per_key.len(), 1050, "one allocation per request");
    assert!(per_key.iter().all(|(_, n)| *n == 1));
    reconcile_tick(&sys).await;
    let a = audit(&sys, "k9", &requests).await;
    assert_whole(&a, 1050);
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_mid_load_fails_fast_then_recovers() {
    let _serial = SERIAL.lock().await;
    let sys = System::new("pgrestart", "pr", 1100).await;
    let server = sys.start_server().await;
    let base = Arc::new(std::sync::RwLock::new(server.base.clone()));
    let (load, done) = load(&base, &sys.key, "pr", 1000, 16, Duration::from_secs(120));
    after(&done, 200).await;
    let began = Instant::now();
    sys.stack.run("pg-stop", &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sys.stack.run("pg-start", &[]);
    // Postgres accepts connections once pg-start returns; the origin has healed when its
    // readiness check reaches Postgres again.
    let restarted = Instant::now();
    wait_ready(&server.base).await;
    let healed = restarted.elapsed();
    println!("postgres: origin ready again {healed:?} after the restart");
    let fault = Fault { began, repaired: restarted + healed, grace: RECOVERY_MARGIN };
    let requests = load.await.unwrap();
    assert_unavailable_only_during(&requests, &fault);
    let probes = probe_after(&fault, &server.base, &sys.key, "pr", 50).await;
    let attempts: Vec<&str> = requests.iter().flat_map(|r| &r.attempts).map(|a| a.outcome.as_str()).collect();
    let unavailable = attempts.iter().filter(|a| **a == "503 ORIGIN_UNAVAILABLE").count();
    let other: Vec<&&str> =
        attempts.iter().filter(|a| !a.starts_with("201") && **a != "503 ORIGIN_UNAVAILABLE").collect();
    println!("attempts: {}, 503 ORIGIN_UNAVAILABLE: {unavailable}, other failures: {other:?}", attempts.len());
    assert!(unavailable > 0, "requests during the outage were refused with 503");
    assert!(other.is_empty(), "no 500s, no hangs: {other:?}");
    let slowest = requests.iter().map(|r| r.slowest).max().unwrap();
    assert!(slowest < Duration::from_secs(10), "fail fast, never hang: slowest attempt {slowest:?}");
    server.assert_outage_logged_once("postgres", unavailable).await;
    reconcile_tick(&sys).await;
    let a = audit(&sys, "pr", &[requests, probes].concat()).await;
    assert_whole(&a, 1050);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_load_finishes_in_flight_requests_and_exits_zero() {
    let _serial = SERIAL.lock().await;
    let sys = System::new("sigterm", "st", 2100).await;
    let mut server = sys.start_server().await;
    let base = Arc::new(std::sync::RwLock::new(server.base.clone()));
    let (load, done) = load(&base, &sys.key, "st", 2000, 32, Duration::from_secs(8));
    after(&done, 200).await;
    let began = Instant::now();
    signal(&server.child, "TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = server.child.wait().unwrap();
        (s, server)
    })
    .await
    .unwrap();
    let requests = load.await.unwrap();
    // No restart: the fault (a draining, then absent, server) lasts to the end of the load.
    // Before SIGTERM every answer is a success; after it a 503 at worst, never a 500.
    assert_unavailable_only_during(&requests, &Fault { began, repaired: Instant::now(), grace: Duration::ZERO });
    assert!(status.0.success(), "exit 0 after SIGTERM, got {:?}", status.0);
    let served: HashSet<usize> = requests.iter().enumerate().filter(|(_, r)| r.status == 201).map(|(i, _)| i).collect();
    // A request written to a keep-alive connection just as the draining server closes it was
    // never accepted: it must not have allocated anything (the client retries it with its key).
    let not_delivered: Vec<usize> =
        requests.iter().enumerate().filter(|(_, r)| r.cut_off > 0 && r.status != 201).map(|(i, _)| i).collect();
    let committed: HashSet<String> = sqlx::query_scalar("SELECT idempotency_key FROM allocations")
        .fetch_all(&sys.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    println!("after SIGTERM: served {}, closed before being accepted {}", served.len(), not_delivered.len());
    assert!(!served.is_empty());
    let cut_off_in_flight: Vec<&usize> =
        not_delivered.iter().filter(|i| committed.contains(&format!("req-{i}"))).collect();
    assert!(cut_off_in_flight.is_empty(), "requests the origin committed but never answered: {cut_off_in_flight:?}");
    let allocated = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM inventories WHERE status = 'allocated'")
        .fetch_one(&sys.pool)
        .await
        .unwrap();
    assert_eq!(allocated as usize, served.len(), "every committed allocation reached its client");
    assert_eq!(committed.len(), served.len());
}

/// Ticks of `job` that `allot cron` at `operator` attempted so far, by outcome, from its metrics
/// (`succeeded`, `skipped`, `failed`: it ran the tick; `already_claimed`: the other had).
async fn attempted_ticks(operator: &str, job: &str) -> BTreeMap<String, u64> {
    let text = reqwest::get(format!("{operator}/metrics")).await.unwrap().text().await.unwrap();
    let mut by_outcome = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("allot_job_runs_total{")) {
        let (labels, value) = line.rsplit_once(' ').unwrap();
        if !labels.contains(&format!("job_name=\"{job}\"")) {
            continue;
        }
        let outcome = labels.split("outcome=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
        *by_outcome.entry(outcome.to_owned()).or_insert(0) += value.parse::<f64>().unwrap() as u64;
    }
    by_outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_cron_processes_run_each_tick_once() {
    let _serial = SERIAL.lock().await;
    let sys = System::new("cron", "cr", 50).await;
    sqlx::query("INSERT INTO scheduled_jobs (name, interval_secs) VALUES ('reconcile', 1), ('job-history-prune', 1)")
        .execute(&sys.pool)
        .await
        .unwrap();
    let jobs = ["reconcile", "job-history-prune"];
    let started = time::OffsetDateTime::now_utc();
    // Each process serves health and metrics on its own operator port.
    let cron = |sys: &System| {
        let port = free_port();
        let child = sys
            .command(&["cron"])
            .env("ALLOT_OPERATOR_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        (child, format!("http://127.0.0.1:{port}"))
    };
    let (mut a, operator_a) = cron(&sys);
    let (mut b, operator_b) = cron(&sys);
    wait_ready(&operator_a).await;
    wait_ready(&operator_b).await;
    // By progress, not the clock: until each process has attempted 5 ticks of each job (run
    // it, or found it claimed by the other), however slow the machine.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempts = BTreeMap::new();
    loop {
        attempts.clear();
        for (name, operator) in [("a", &operator_a), ("b", &operator_b)] {
            for job in jobs {
                attempts.insert((name, job), attempted_ticks(operator, job).await);
            }
        }
        if attempts.values().all(|by_outcome| by_outcome.values().sum::<u64>() >= 5) {
            break;
        }
        assert!(Instant::now() < deadline, "each cron process attempts 5 ticks of each job within 120 s: {attempts:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(a.try_wait().unwrap().is_none() && b.try_wait().unwrap().is_none(), "both schedulers ran throughout");
    signal(&a, "TERM");
    signal(&b, "TERM");
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let ended = time::OffsetDateTime::now_utc();
    let rows: Vec<(String, Option<time::OffsetDateTime>, String, String, time::OffsetDateTime, time::OffsetDateTime)> =
        sqlx::query_as(
            "SELECT job_name, slot, outcome, instance, started_at, finished_at FROM job_runs
              WHERE job_name IN ('reconcile', 'job-history-prune') ORDER BY job_name, slot",
        )
        .fetch_all(&sys.pool)
        .await
        .unwrap();
    let host = allot_origin::jobs::instance_name().rsplit_once(':').unwrap().0.to_owned();
    let ours: HashSet<String> = [&a, &b].iter().map(|c| format!("{host}:{}", c.id())).collect();
    let instances: HashSet<&String> = rows.iter().map(|r| &r.3).collect();
    println!("job runs: {} rows by {instances:?}; attempts per process {attempts:?}", rows.len());
    assert!(
        instances.iter().all(|i| ours.contains(*i)),
        "every run is one of the two processes' {ours:?}: {instances:?}"
    );
    assert!(rows.iter().all(|r| r.2 == "succeeded" || r.2 == "skipped"), "none failed or left running: {rows:?}");
    for job in jobs {
        let runs: Vec<_> = rows.iter().filter(|r| r.0 == job).collect();
        let slots: Vec<i64> = runs.iter().map(|r| r.1.expect("a scheduled run has a slot").unix_timestamp()).collect();
        // A tick is its slot, aligned to the 1 s interval: two runs of one tick would be two rows
        // with the same slot, which job_runs_one_per_slot refuses; a run under any other slot
        // (a tick counted from a process's own start) would not line up.
        assert!(runs.iter().all(|r| r.1.unwrap().nanosecond() == 0), "{job}: slots are whole seconds: {slots:?}");
        assert!(slots.windows(2).all(|w| w[0] < w[1]), "{job}: one run per tick: {slots:?}");
        assert!(
            slots.iter().all(|s| *s >= started.unix_timestamp() - 1 && *s <= ended.unix_timestamp()),
            "{job}: only ticks while the processes ran: {slots:?}"
        );
        // The ticks a process ran (its metrics, read before it stopped) are its rows in
        // job_runs; each tick it found claimed is one the other process ran.
        let recorded = |child: &Child| runs.iter().filter(|r| r.3 == format!("{host}:{}", child.id())).count() as u64;
        for (name, me, other) in [("a", &a, &b), ("b", &b, &a)] {
            let by_outcome = &attempts[&(name, job)];
            let claimed = by_outcome.get("already_claimed").copied().unwrap_or(0);
            let ran = by_outcome.values().sum::<u64>() - claimed;
            assert!(ran <= recorded(me), "{job}: process {name} ran {ran} ticks but job_runs has {}", recorded(me));
            assert!(
                claimed <= recorded(other),
                "{job}: process {name} found {claimed} ticks claimed, the other ran only {}",
                recorded(other)
            );
        }
        // Only the lock holder runs: no two runs of the job overlap in time.
        let mut spans: Vec<(time::OffsetDateTime, time::OffsetDateTime)> =
            runs.iter().filter(|r| r.2 == "succeeded").map(|r| (r.4, r.5)).collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{job}: runs never overlap: {spans:?}");
    }
}

/// The edge's version-2 signature over a `POST /v1/allocations`, with a fresh nonce.
fn sign_allocation(key: &str, idem: &str, body: &str) -> String {
    common::edge_signature(
        SECRET.as_bytes(),
        common::unix_now(),
        "POST",
        "/v1/allocations",
        Some(key),
        Some(idem),
        body.as_bytes(),
    )
}
