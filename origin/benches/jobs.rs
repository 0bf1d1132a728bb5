//! Background-job figures on the real local stack:
//! a full inventory pump of 1,000,000 cards across 100 buckets, and reconcile ticks over those
//! 100 buckets when nothing diverges.
//!
//! `cargo bench -p allot-origin --bench jobs` (needs `scripts/stack up` and its env).
//! `ALLOT_BENCH_CARDS` changes the card count.

use std::time::{Duration, Instant};

use allot_origin::config::{Config, Settings, generate_card_key};
use allot_origin::jobs::{self, Job, RunOutcome};
use allot_origin::services::Services;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

fn env(key: &str) -> String {
    std::env::var(key)
        .unwrap_or_else(|_| panic!("{key} is not set: run `scripts/stack up` and `eval \"$(scripts/stack env)\"`"))
}

async fn timed(job: &dyn Job, ctx: &jobs::JobContext) -> (Duration, serde_json::Map<String, serde_json::Value>) {
    let started = Instant::now();
    match jobs::run_once(job, ctx, None, "bench").await.unwrap() {
        RunOutcome::Succeeded(c) => (started.elapsed(), c),
        other => panic!("{} did not succeed: {other:?}", job.name()),
    }
}

fn main() {
    let cards: i64 = std::env::var("ALLOT_BENCH_CARDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let admin_url = env("DATABASE_URL");
        let db = format!("bench_jobs_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{}/{db}", admin_url.rsplit_once('/').unwrap().0);
        let mut admin = PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut admin).await.unwrap();
        let pool = allot_origin::db::connect_admin(&url).await.unwrap();
        allot_origin::db::migrate_up(&pool).await.unwrap();

        // 10 products × 10 denominations; the pump reads ids and scores only, so the card
        // payloads are placeholders written by SQL rather than sealed one by one.
        let load = Instant::now();
        sqlx::query("INSERT INTO products SELECT 'bench-' || p, 'bench', 'USD' FROM generate_series(0, 9) p")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO product_denominations SELECT 'bench-' || p, d * 100 FROM generate_series(0, 9) p, generate_series(1, 10) d",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO inventories (product_id, denomination_minor, code_ciphertext, code_nonce, code_key_id, code_digest)
             SELECT 'bench-' || (g % 10), ((g / 10) % 10 + 1) * 100, '\\x00', '\\x000000000000000000000000', 'k',
                    sha256(int8send(g))
               FROM generate_series(1, $1) g",
        )
        .bind(cards)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("VACUUM ANALYZE inventories").execute(&pool).await.unwrap();
        let loaded = load.elapsed();

        let prefix = format!("bj{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let settings = Settings::from_pairs(
            [
                ("DATABASE_URL", url.clone()),
                ("VALKEY_URL", env("VALKEY_URL")),
                ("ALLOT_REGION", "eu".into()),
                ("ALLOT_VALKEY_PREFIX", prefix.clone()),
                ("ALLOT_CARD_KEYS", generate_card_key("bench")),
                ("ALLOT_EDGE_SIGNATURE", "off".into()),
                ("ALLOT_VALKEY_TIMEOUT_MS", "10000".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let services = Services::init(Config::from_settings(&settings).unwrap()).unwrap();
        let ctx = services.job_context(CancellationToken::new());

        let (pump, counts) = timed(&jobs::pump::InventoryPump, &ctx).await;
        assert_eq!(counts["cards"].as_i64(), Some(cards), "the pump wrote every card: {counts:?}");
        assert_eq!(counts["products"], 10, "the pump rebuilt every product: {counts:?}");
        assert_eq!(counts["interrupted"], false, "{counts:?}");
        let mut ticks = Vec::new();
        for _ in 0..7 {
            let (t, counts) = timed(&jobs::reconcile::Reconciler, &ctx).await;
            assert_eq!(counts["divergent_buckets"], 0, "nothing diverges after a pump: {counts:?}");
            assert_eq!(counts["products_rebuilt"], 0, "{counts:?}");
            assert_eq!(counts["buckets"], 100, "{counts:?}");
            ticks.push(t);
        }
        ticks.sort();
        // Every run the figures come from is recorded as a success; anything else voids them.
        let not_succeeded: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT job_name, outcome, error FROM job_runs WHERE outcome <> 'succeeded'")
                .fetch_all(&pool)
                .await
                .unwrap();
        let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM job_runs").fetch_one(&pool).await.unwrap();
        assert!(
            not_succeeded.is_empty() && runs == 8,
            "job benchmark FAILED: {runs} runs recorded (expected 8), not succeeded: {not_succeeded:?}"
        );

        println!("job benchmark: {cards} cards in 100 buckets (10 products x 10 denominations), loaded in {loaded:.1?}");
        println!("| job | time | target |");
        println!("|---|---|---|");
        println!("| inventory pump, all {cards} cards | {:.2} s | < 10 s |", pump.as_secs_f64());
        println!(
            "| reconcile tick, 100 buckets, no divergence (median of 7; min {:.0} ms, max {:.0} ms) | {:.0} ms | < 100 ms |",
            ticks[0].as_secs_f64() * 1000.0,
            ticks[6].as_secs_f64() * 1000.0,
            ticks[3].as_secs_f64() * 1000.0
        );

        pool.close().await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {db} WITH (FORCE)"))).execute(&mut admin).await;
        let client = redis::Client::open(env("VALKEY_URL")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
        }
    });
}
