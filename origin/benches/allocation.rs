//! Allocation throughput and latency through HTTP, on the real local stack.
//!
//! `cargo bench -p allot-origin --bench allocation` (needs `scripts/stack up` and its env).
//! For each path (the engine with its Valkey cache; Postgres alone, i.e. the fallback) and
//! each layout (load spread over 100 product/denomination buckets; one hot bucket), at 1, 16
//! and 64 concurrent clients: a fresh database, enough cards, an in-process `allot server`,
//! then signed `POST /v1/allocations` of one card each: a 2 s warm-up (connections opened,
//! statements prepared, plans cached), then `ALLOT_BENCH_SECS` (default 10) measured.
//! Client and server share the machine, as they would on a 2-core box.
//! `ALLOT_BATCH_WORKERS` (default 1, as in production; 0 = one statement per allocation).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allot_origin::config::{Config, Settings, generate_card_key};
use allot_origin::ops::{self, NewCard};
use allot_origin::{cache::InventoryCache, db, server};
use allot_shared::{Currency, Denomination, Region, signature};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

// The allocator the `allot` binary uses, so the server half runs as it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-edge-secret-0123456789abcdef";
const PRODUCTS: usize = 10;
const DENOMINATIONS: usize = 10;
/// Load before measuring starts: the first requests open connections and prepare statements.
const WARM_UP: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Engine,
    PostgresOnly,
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Spread,
    Hot,
}

struct Scenario {
    path: Path,
    layout: Layout,
    clients: usize,
}

struct Outcome {
    ok: usize,
    out_of_stock: usize,
    errors: usize,
    secs: f64,
    latencies_us: Vec<u64>,
}

fn env(key: &str) -> String {
    std::env::var(key)
        .unwrap_or_else(|_| panic!("{key} is not set: run `scripts/stack up` and `eval \"$(scripts/stack env)\"`"))
}

fn url_for(db: &str) -> String {
    let base = env("DATABASE_URL");
    format!("{}/{db}", base.rsplit_once('/').unwrap().0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn run(s: &Scenario, secs: u64, card_keys: &str) -> Outcome {
    let db_name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&env("DATABASE_URL")).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}"))).execute(&mut admin).await.unwrap();
    let pool = db::connect_admin(&url_for(&db_name)).await.unwrap();
    db::migrate_up(&pool).await.unwrap();
    let prefix = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let batch_workers = std::env::var("ALLOT_BATCH_WORKERS").unwrap_or_else(|_| "1".into());
    let settings = Settings::from_pairs(
        [
            ("ALLOT_BATCH_WORKERS", batch_workers),
            ("DATABASE_URL", url_for(&db_name)),
            ("VALKEY_URL", if s.path == Path::Engine { env("VALKEY_URL") } else { "none".into() }),
            ("ALLOT_REGION", "eu".into()),
            ("ALLOT_VALKEY_PREFIX", prefix.clone()),
            ("ALLOT_CARD_KEYS", card_keys.to_owned()),
            ("ALLOT_EDGE_SECRETS", SECRET.into()),
            ("ALLOT_LISTEN", "127.0.0.1:0".into()),
            ("ALLOT_OPERATOR_LISTEN", "127.0.0.1:0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let cfg = Config::from_settings(&settings).unwrap();

    // Stock: enough that no run sells out (12k/s for the run, spread evenly).
    let total = (12_000 * (secs + WARM_UP.as_secs()) as usize).max(20_000);
    let buckets: Vec<(String, &str)> = match s.layout {
        Layout::Spread => (0..PRODUCTS)
            .flat_map(|p| {
                (0..DENOMINATIONS).map(move |d| {
                    (format!("bench-{p}"), ["1", "2", "5", "10", "20", "25", "50", "75", "100", "200"][d])
                })
            })
            .collect(),
        Layout::Hot => vec![("bench-hot".to_owned(), "25")],
    };
    let per_bucket = total / buckets.len();
    let valkey = allot_origin::valkey::Address::parse(&env("VALKEY_URL"), false).expect("VALKEY_URL");
    let cache = InventoryCache::new(&valkey, &prefix, Duration::from_secs(5)).unwrap();
    let mut products: Vec<String> = buckets.iter().map(|(p, _)| p.clone()).collect();
    products.dedup();
    for p in &products {
        let ds: Vec<Denomination> =
            buckets.iter().filter(|(q, _)| q == p).map(|(_, d)| Denomination::parse(d).unwrap()).collect();
        ops::upsert_product(&pool, &ops::Actor::cli(), p, p, Currency::parse("USD").unwrap(), &ds).await.unwrap();
    }
    for (p, d) in &buckets {
        let minor = Denomination::parse(d).unwrap().to_minor(2).unwrap();
        let cards: Vec<NewCard> = (0..per_bucket)
            .map(|_| NewCard { code: format!("B-{}", uuid::Uuid::new_v4().simple()), pin: None, expires_at: None })
            .collect();
        ops::load_cards(&pool, &ops::Actor::cli(), None, &cfg.card_keys, p, minor, &cards).await.unwrap();
    }
    sqlx::query("VACUUM ANALYZE inventories").execute(&pool).await.unwrap();
    if s.path == Path::Engine {
        ops::rebuild_all_caches(&pool, &cache).await.unwrap();
    }
    let key = {
        let client =
            ops::create_client(&pool, &ops::Actor::cli(), "bench", &Region::parse("eu").unwrap(), None).await.unwrap();
        ops::issue_key(&pool, &ops::Actor::cli(), client, None).await.unwrap().expose()
    };

    let state = server::build_state(cfg).unwrap();
    let bound = server::bind(state).await.unwrap();
    let base = format!("http://{}", bound.public_addr);
    let stop_server = CancellationToken::new();
    let server_task = tokio::spawn(bound.serve(stop_server.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let buckets = Arc::new(buckets);
    let mut tasks = Vec::new();
    for c in 0..s.clients {
        let (stop, measuring, buckets, base, key) =
            (stop.clone(), measuring.clone(), buckets.clone(), base.clone(), key.clone());
        let key_id = allot_shared::ApiKey::parse(&key).expect("an issued key parses").key_id().to_owned();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut oos, mut errors, mut lat) = (0usize, 0usize, 0usize, Vec::with_capacity(100_000));
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (p, d) = &buckets[(c * 7919 + i * 104_729) % buckets.len()];
                let body = format!(r#"{{"product_id":"{p}","denomination":"{d}","quantity":1}}"#);
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
                let idem = format!("c{c}-{i}");
                let signed = signature::Signed {
                    method: "POST",
                    path_and_query: "/v1/allocations",
                    key_id: &key_id,
                    idempotency_key: &idem,
                    body: body.as_bytes(),
                };
                let sig = signature::sign(SECRET.as_bytes(), now, &uuid::Uuid::new_v4().simple().to_string(), &signed);
                let counted = measuring.load(Ordering::Relaxed);
                let started = Instant::now();
                let resp = http
                    .post(format!("{base}/v1/allocations"))
                    .header("authorization", format!("Bearer {key}"))
                    .header("idempotency-key", &idem)
                    .header("content-type", "application/json")
                    .header(allot_shared::headers::SIGNATURE, sig)
                    .body(body)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let _ = r.bytes().await;
                        if counted {
                            lat.push(started.elapsed().as_micros() as u64);
                            ok += 1;
                        }
                    }
                    Ok(r) if r.status().as_u16() == 409 => {
                        // Only OUT_OF_STOCK is a sell-out; any other 409 is an error.
                        let body = r.bytes().await.unwrap_or_default();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        if v["error"]["code"] == "OUT_OF_STOCK" {
                            oos += 1;
                        } else {
                            errors += 1;
                        }
                    }
                    _ => errors += 1,
                }
            }
            (ok, oos, errors, lat)
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let measured = started.elapsed().as_secs_f64();
    let mut out = Outcome { ok: 0, out_of_stock: 0, errors: 0, secs: 0.0, latencies_us: Vec::new() };
    for t in tasks {
        let (ok, oos, errors, lat) = t.await.unwrap();
        out.ok += ok;
        out.out_of_stock += oos;
        out.errors += errors;
        out.latencies_us.extend(lat);
    }
    out.secs = measured;
    out.latencies_us.sort_unstable();

    stop_server.cancel();
    let _ = server_task.await;
    pool.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {db_name} WITH (FORCE)"))).execute(&mut admin).await;
    let client = redis::Client::open(env("VALKEY_URL")).unwrap();
    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let secs: u64 = std::env::var("ALLOT_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let only: Option<String> = std::env::var("ALLOT_BENCH_ONLY").ok();
    let card_keys = generate_card_key("bench1");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!(
        "allocation benchmark: {secs} s per run after a {} s warm-up, 1 card per request, signed HTTP, client and server in one process",
        WARM_UP.as_secs()
    );
    println!("| path | layout | clients | allocations/s | p50 ms | p99 ms | p99.9 ms | out of stock | errors |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let (mut errors, mut out_of_stock) = (0, 0);
    for path in [Path::Engine, Path::PostgresOnly] {
        for layout in [Layout::Spread, Layout::Hot] {
            for clients in [1, 16, 64] {
                let s = Scenario { path, layout, clients };
                let path_name = if path == Path::Engine { "engine (Valkey + Postgres)" } else { "Postgres only" };
                let layout_name = if layout == Layout::Spread { "100 buckets" } else { "1 hot bucket" };
                if let Some(f) = &only
                    && !format!("{path_name} {layout_name} {clients}").contains(f.as_str())
                {
                    continue;
                }
                let o = runtime.block_on(run(&s, secs, &card_keys));
                errors += o.errors;
                out_of_stock += o.out_of_stock;
                println!(
                    "| {path_name} | {layout_name} | {clients} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
                    o.ok as f64 / o.secs,
                    percentile(&o.latencies_us, 0.50),
                    percentile(&o.latencies_us, 0.99),
                    percentile(&o.latencies_us, 0.999),
                    o.out_of_stock,
                    o.errors
                );
            }
        }
    }
    // A figure with errors in it is not a figure.
    assert_eq!(errors, 0, "requests failed during the benchmark (the errors column)");
    // The stock is sized so that no run sells out; one that did measured refusals, not allocations.
    assert_eq!(out_of_stock, 0, "a run sold out (the out of stock column): its figure is void");
}
