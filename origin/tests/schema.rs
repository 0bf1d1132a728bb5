//! Migrations, the schema check, the constraints that make impossible states impossible, and
//! the query plan of the Postgres fallback on realistic (skewed) data.

mod common;

use allot_origin::config::Config;
use allot_origin::db;
use sqlx::postgres::PgPoolOptions;

async fn pool(db_name: &str) -> sqlx::PgPool {
    PgPoolOptions::new().max_connections(2).connect(&common::url_for(db_name)).await.unwrap()
}

async fn tables(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations' ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_migration_goes_up_down_and_up_again() {
    let name = common::empty_database().await;
    let pool = pool(&name).await;
    let total = db::MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).count();
    assert_eq!(db::migrate_up(&pool).await.unwrap(), total);
    let full = tables(&pool).await;
    for t in [
        "clients",
        "api_keys",
        "products",
        "inventories",
        "allocations",
        "outbox",
        "scheduled_jobs",
        "job_runs",
        "audit_log",
    ] {
        assert!(full.contains(&t.to_owned()), "{t} exists");
    }
    // One step at a time, every down runs.
    for left in (0..total).rev() {
        assert_eq!(db::migrate_down(&pool, 1).await.unwrap(), 1);
        assert_eq!(db::applied_versions(&pool).await.unwrap().len(), left);
    }
    assert!(tables(&pool).await.is_empty(), "downs remove everything");
    assert_eq!(db::migrate_up(&pool).await.unwrap(), total);
    assert_eq!(tables(&pool).await, full);
    pool.close().await;
    common::drop_database(&name).await;
}

/// Migration 5 folds the key and item tables into allocations and inventories: every
/// allocation keeps its live key, fingerprint and cards in order, both ways.
/// How many migrations to revert so that `version` is no longer applied.
fn steps_back_to_before(version: i64) -> usize {
    let mut versions: Vec<i64> = db::MIGRATOR.iter().map(|m| m.version).filter(|v| *v >= version).collect();
    versions.dedup();
    versions.len()
}

#[tokio::test]
async fn folding_keys_and_items_keeps_every_allocation_both_ways() {
    let name = common::empty_database().await;
    let pool = pool(&name).await;
    db::migrate_up(&pool).await.unwrap();
    // Back to just before the fold, however many migrations came after it.
    let before_fold = steps_back_to_before(20261122000005);
    db::migrate_down(&pool, before_fold).await.unwrap();
    let seed = [
        "INSERT INTO clients (id, name, region) VALUES ('00000000-0000-4000-8000-000000000001', 'c', 'eu')",
        "INSERT INTO products (id, name, currency) VALUES ('p', 'p', 'USD')",
        "INSERT INTO product_denominations VALUES ('p', 1000)",
        "INSERT INTO inventories (product_id, denomination_minor, code_ciphertext, code_nonce, code_key_id, code_digest)
         SELECT 'p', 1000, '\\x00', '\\x000000000000000000000000', 'k', sha256(g::text::bytea)
           FROM generate_series(1, 5) g",
        // One transaction (one simple query): the deferred check sees allocations and items together.
        // Allocation 1: live key, cards 3 then 1. Allocation 2: its key already expired.
        "INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, idempotency_key)
         VALUES ('00000000-0000-7000-8000-000000000001', '00000000-0000-4000-8000-000000000001', 'p', 1000, 2, 'live'),
                ('00000000-0000-7000-8000-000000000002', '00000000-0000-4000-8000-000000000001', 'p', 1000, 1, 'gone');
         UPDATE inventories SET status = 'allocated', allocated_at = now(),
                allocation_id = CASE WHEN id = 2 THEN '00000000-0000-7000-8000-000000000002'::uuid
                                     ELSE '00000000-0000-7000-8000-000000000001'::uuid END
          WHERE id IN (1, 2, 3);
         INSERT INTO allocation_items VALUES ('00000000-0000-7000-8000-000000000001', 0, 3),
                                            ('00000000-0000-7000-8000-000000000001', 1, 1),
                                            ('00000000-0000-7000-8000-000000000002', 0, 2);
         INSERT INTO idempotency_keys (client_id, key, request_fingerprint, allocation_id)
         VALUES ('00000000-0000-4000-8000-000000000001', 'live', sha256('f'), '00000000-0000-7000-8000-000000000001')",
    ];
    for sql in seed {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
    }
    db::migrate_up(&pool).await.unwrap();
    let keys: Vec<(String, bool)> = sqlx::query_as(
        "SELECT idempotency_key, request_fingerprint IS NOT DISTINCT FROM sha256('f') FROM allocations ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(keys, [("live".to_owned(), true), ("gone".to_owned(), false)]);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM allocations WHERE request_fingerprint IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap(),
        1,
        "the expired key stays expired"
    );
    let cards: Vec<(uuid::Uuid, i16, i64)> = sqlx::query_as(
        "SELECT allocation_id, allocation_position, id FROM inventories WHERE allocation_id IS NOT NULL
          ORDER BY allocation_id, allocation_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let (a1, a2) = (
        "00000000-0000-7000-8000-000000000001".parse().unwrap(),
        "00000000-0000-7000-8000-000000000002".parse().unwrap(),
    );
    assert_eq!(cards, [(a1, 0, 3), (a1, 1, 1), (a2, 0, 2)]);

    db::migrate_down(&pool, before_fold).await.unwrap();
    let items: Vec<(uuid::Uuid, i16, i64)> = sqlx::query_as(
        "SELECT allocation_id, position, card_id FROM allocation_items ORDER BY allocation_id, position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(items, cards);
    let keys: Vec<(String, uuid::Uuid)> =
        sqlx::query_as("SELECT key, allocation_id FROM idempotency_keys").fetch_all(&pool).await.unwrap();
    assert_eq!(keys, [("live".to_owned(), a1)]);
    pool.close().await;
    common::drop_database(&name).await;
}

#[tokio::test]
async fn the_server_refuses_an_old_schema_and_names_the_fix() {
    let name = common::empty_database().await;
    let pool = pool(&name).await;
    db::migrate_up(&pool).await.unwrap();
    db::migrate_down(&pool, 1).await.unwrap();
    let cfg = Config::from_settings(&common::settings_for(&name, "tschema", &common::Options::default())).unwrap();
    let state = allot_origin::server::build_state(cfg).unwrap();
    let err = allot_origin::server::bind(state).await.err().expect("refuses to start").to_string();
    assert!(err.contains("allot migrate up"), "{err}");
    pool.close().await;
    common::drop_database(&name).await;
}

#[tokio::test]
async fn constraints_make_impossible_states_impossible() {
    let app = common::TestApp::spawn().await;
    app.product("c", "USD", &["10.00"]).await;
    let ids = app.load_cards("c", 1000, 3).await;
    let r = app.allocate("c-1", r#"{"product_id":"c","denomination":"10.00","quantity":1}"#).await;
    assert_eq!(r.status, 201);
    let alloc: uuid::Uuid = r.json()["allocation_id"].as_str().unwrap().parse().unwrap();
    let taken = r.json()["cards"][0]["card_id"].as_i64().unwrap();
    let free = *ids.iter().find(|id| **id != taken).unwrap();
    let p = &app.pool;
    let err = |r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>| r.unwrap_err().to_string();

    // An allocated card must have an allocation, and an active card must not have one.
    let e = sqlx::query("UPDATE inventories SET status = 'allocated', allocated_at = now() WHERE id = $1")
        .bind(free)
        .execute(p)
        .await;
    assert!(err(e).contains("inventories_allocation_matches_status"));
    let e =
        sqlx::query("UPDATE inventories SET allocation_id = $2 WHERE id = $1").bind(free).bind(alloc).execute(p).await;
    assert!(err(e).contains("inventories_allocation_matches_status"));
    // An allocated card has a place in its allocation, and no two cards share one.
    let e = sqlx::query("UPDATE inventories SET allocation_position = NULL WHERE id = $1").bind(taken).execute(p).await;
    assert!(err(e).contains("inventories_allocation_matches_status"));
    let e = sqlx::query(
        "UPDATE inventories SET status = 'allocated', allocation_id = $2, allocation_position = 0, allocated_at = now()
          WHERE id = $1",
    )
    .bind(free)
    .bind(alloc)
    .execute(p)
    .await;
    assert!(err(e).contains("inventories_allocation_cards"));
    // An allocation has exactly its quantity of cards (checked at commit): one card short, and
    // one card too many.
    let e = sqlx::query(
        "INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, idempotency_key)
         VALUES ($1, $2, 'c', 1000, 1, 'bare')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(app.client_id)
    .execute(p)
    .await;
    assert!(err(e).contains("has 0 of its 1 cards"));
    let extra = uuid::Uuid::now_v7();
    let mut tx = p.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, idempotency_key)
         VALUES ($1, $2, 'c', 1000, 1, 'two')",
    )
    .bind(extra)
    .bind(app.client_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE inventories SET status = 'allocated', allocation_id = $1, allocation_position = g.n, allocated_at = now()
           FROM (SELECT id, row_number() OVER () AS n FROM inventories WHERE status = 'active' LIMIT 2) g
          WHERE inventories.id = g.id",
    )
    .bind(extra)
    .execute(&mut *tx)
    .await
    .unwrap();
    let e = tx.commit().await.unwrap_err().to_string();
    assert!(e.contains("has 2 of its 1 cards"), "{e}");
    // An allocation's denomination is one its product offers.
    let e = sqlx::query(
        "INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, idempotency_key)
         VALUES ($1, $2, 'c', 777, 1, 'odd')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(app.client_id)
    .execute(p)
    .await;
    assert!(err(e).contains("allocations_denomination_offered"));
    // The same code cannot be loaded twice.
    let dup = allot_origin::ops::NewCard { code: "SAME".into(), pin: None, expires_at: None };
    allot_origin::ops::load_cards(
        p,
        &allot_origin::ops::Actor::cli(),
        None,
        &app.config.card_keys,
        "c",
        1000,
        std::slice::from_ref(&dup),
    )
    .await
    .unwrap();
    let e = allot_origin::ops::load_cards(
        p,
        &allot_origin::ops::Actor::cli(),
        None,
        &app.config.card_keys,
        "c",
        1000,
        &[dup],
    )
    .await
    .unwrap_err();
    assert!(e.to_api_error().message.contains("already loaded"), "{e}");
    // Cards only in an offered denomination.
    let card = allot_origin::ops::NewCard { code: "N".into(), pin: None, expires_at: None };
    let e = allot_origin::ops::load_cards(
        p,
        &allot_origin::ops::Actor::cli(),
        None,
        &app.config.card_keys,
        "c",
        777,
        &[card],
    )
    .await
    .unwrap_err();
    assert!(e.to_api_error().message.contains("not offered"), "{e}");
    app.finish().await;
}

/// origin-notes.md: when one bucket is most of the table, Postgres may prefer the primary key
/// plus a filter and re-read every allocated row. The fallback must use the partial index.
#[tokio::test]
async fn the_fallback_uses_the_partial_index_on_skewed_data() {
    let app = common::TestApp::spawn().await;
    app.product("hot", "USD", &["10.00"]).await;
    app.product("cold", "USD", &["10.00"]).await;
    let p = &app.pool;
    // 200k cards in one bucket, 90% already allocated; a little stock elsewhere.
    // The allocations and their cards commit together (an allocation has exactly its quantity
    // of cards): 180 allocations of 1,000 cards each.
    let mut tx = p.begin().await.unwrap();
    sqlx::query("INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, idempotency_key)
                 SELECT ('00000000-0000-7000-8000-' || lpad(a::text, 12, '0'))::uuid, $1, 'hot', 1000, 1000, 'seed-' || a
                   FROM generate_series(0, 179) a")
        .bind(app.client_id).execute(&mut *tx).await.unwrap();
    // Allocated card g (g % 10 <> 0) has rank r = g - g/10 - 1 among the allocated ones.
    sqlx::query(
        "INSERT INTO inventories (product_id, denomination_minor, code_ciphertext, code_nonce, code_key_id, code_digest,
                                  status, allocation_id, allocation_position, allocated_at)
         SELECT 'hot', 1000, '\\x00', '\\x000000000000000000000000', 'k', sha256(g::text::bytea),
                CASE WHEN g % 10 = 0 THEN 'active' ELSE 'allocated' END,
                CASE WHEN g % 10 = 0 THEN NULL
                     ELSE ('00000000-0000-7000-8000-' || lpad(((g - g / 10 - 1) / 1000)::text, 12, '0'))::uuid END,
                CASE WHEN g % 10 = 0 THEN NULL ELSE ((g - g / 10 - 1) % 1000)::smallint END,
                CASE WHEN g % 10 = 0 THEN NULL ELSE now() END
           FROM generate_series(1, 200000) g",
    ).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    sqlx::query("INSERT INTO inventories (product_id, denomination_minor, code_ciphertext, code_nonce, code_key_id, code_digest)
                 SELECT 'cold', 1000, '\\x00', '\\x000000000000000000000000', 'k', sha256(('c' || g)::bytea) FROM generate_series(1, 100) g")
        .execute(p).await.unwrap();
    sqlx::query("ANALYZE inventories").execute(p).await.unwrap();
    // The statement the slow path runs, with the parameters it binds (how many, the allocation,
    // the bucket, the first position): not a hand-written copy of it.
    let explain = format!("EXPLAIN {}", allot_origin::allocation::sql::CLAIM_FROM_POSTGRES);
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .bind(20_i64)
        .bind(uuid::Uuid::now_v7())
        .bind("hot")
        .bind(1000_i64)
        .bind(0_i32)
        .fetch_all(p)
        .await
        .unwrap();
    // The pick (the `picked` CTE) must walk the partial index of active cards, never the primary
    // key past every allocated row; the UPDATE then finds each picked row by its key.
    let pick: Vec<&String> =
        plan.iter().skip_while(|l| !l.contains("CTE picked")).skip(1).take_while(|l| l.starts_with("    ")).collect();
    let shown = plan.join("\n");
    assert!(!pick.is_empty(), "no pick in the plan:\n{shown}");
    assert!(pick.iter().any(|l| l.contains("inventories_active_bucket")), "fallback plan:\n{shown}");
    assert!(!pick.iter().any(|l| l.contains("inventories_pkey")), "fallback plan:\n{shown}");
    app.finish().await;
}
