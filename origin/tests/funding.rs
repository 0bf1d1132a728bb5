//! Funding on the real stack: allocations debit their price in their own transaction, a client
//! whose funds fall short gets `402 INSUFFICIENT_FUNDS` and nothing else happens, replays never
//! pay twice, voids credit once, and concurrent allocations never overdraw.

// Amounts are written as major_minor: 25_00 is 25.00 in minor units.
#![allow(clippy::inconsistent_digit_grouping)]

mod common;

use std::collections::HashSet;

use allot_origin::ops::Actor;
use allot_origin::ops::funding::{self, AccountChange};
use allot_shared::Currency;
use common::{Options, Reply, TestApp};
use futures::future::join_all;
use proptest::prelude::*;
use uuid::Uuid;

fn body(product: &str, denomination: &str, quantity: u32) -> String {
    format!(r#"{{"product_id":"{product}","denomination":"{denomination}","quantity":{quantity}}}"#)
}

fn card_ids(r: &Reply) -> Vec<i64> {
    r.json()["cards"].as_array().unwrap().iter().map(|c| c["card_id"].as_i64().unwrap()).collect()
}

/// Open `client`'s account in `currency` with a credit limit and a deposit of `balance_minor`,
/// through the operators' service (a ledger entry per deposit: the balance is their sum).
async fn fund(app: &TestApp, client: Uuid, currency: &str, balance_minor: i64, credit_minor: i64) {
    let c = Currency::parse(currency).unwrap();
    let change = AccountChange { credit_limit: Some(c.format_minor(credit_minor)), ..AccountChange::default() };
    funding::set_account(&app.pool, &Actor::cli(), client, c, &change).await.unwrap();
    if balance_minor > 0 {
        deposit(app, client, currency, balance_minor).await;
    }
}

async fn deposit(app: &TestApp, client: Uuid, currency: &str, amount_minor: i64) {
    let c = Currency::parse(currency).unwrap();
    let amount = c.format_minor(amount_minor);
    let entry = funding::Entry { amount: &amount, memo: Some("test deposit"), idempotency_key: None };
    funding::deposit(&app.pool, &Actor::cli(), client, c, &entry).await.unwrap();
}

async fn balance(app: &TestApp, client: Uuid, currency: &str) -> i64 {
    sqlx::query_scalar("SELECT balance_minor FROM funding_accounts WHERE client_id = $1 AND currency = $2")
        .bind(client)
        .bind(currency)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Every account's balance equals the sum of its entries (credits to `client` less debits).
async fn assert_ledger_sums_equal_balances(app: &TestApp) {
    let off: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
        "SELECT fa.client_id, fa.currency, fa.balance_minor,
                coalesce(sum(CASE WHEN e.credit_account = 'client' THEN e.amount_minor ELSE -e.amount_minor END), 0)::bigint
           FROM funding_accounts fa
           LEFT JOIN ledger_entries e ON e.client_id = fa.client_id AND e.currency = fa.currency
          GROUP BY fa.client_id, fa.currency, fa.balance_minor
         HAVING fa.balance_minor <> coalesce(sum(CASE WHEN e.credit_account = 'client' THEN e.amount_minor
                                                      ELSE -e.amount_minor END), 0)",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(off.is_empty(), "balances that are not the sum of their entries: {off:?}");
}

/// Allocation debits of a client in a currency: (count, total).
async fn debits(app: &TestApp, client: Uuid, currency: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), coalesce(sum(amount_minor), 0)::bigint FROM ledger_entries
          WHERE client_id = $1 AND currency = $2 AND kind = 'allocation'",
    )
    .bind(client)
    .bind(currency)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_allocation_debits_its_price_and_a_discount_lowers_it() {
    let app = TestApp::spawn().await;
    app.product("gift", "EUR", &["25.00"]).await;
    app.product("game", "EUR", &["10.00"]).await;
    app.load_cards("gift", 2500, 10).await;
    app.load_cards("game", 1000, 10).await;
    fund(&app, app.client_id, "EUR", 100_00, 0).await;
    // 2.5 % off games: 10.00 - 0.25 = 9.75 a card.
    sqlx::query("INSERT INTO client_discounts (client_id, product_id, discount_bps) VALUES ($1, 'game', 250)")
        .bind(app.client_id)
        .execute(&app.pool)
        .await
        .unwrap();

    let gift = app.allocate("gift-1", body("gift", "25.00", 2)).await;
    assert_eq!(gift.status, 201, "{gift:?}");
    assert_eq!(balance(&app, app.client_id, "EUR").await, 50_00);
    let game = app.allocate("game-1", body("game", "10.00", 3)).await;
    assert_eq!(game.status, 201, "{game:?}");
    assert_eq!(balance(&app, app.client_id, "EUR").await, 50_00 - 3 * 975);
    assert_eq!(debits(&app, app.client_id, "EUR").await, (2, 50_00 + 3 * 975));
    let charged: Vec<(i64,)> = sqlx::query_as("SELECT unit_price_minor FROM allocations ORDER BY created_at")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(charged, [(2500,), (975,)]);
    assert_ledger_sums_equal_balances(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn a_client_without_an_account_is_not_charged() {
    let app = TestApp::spawn().await;
    app.product("gift", "EUR", &["25.00"]).await;
    app.load_cards("gift", 2500, 5).await;
    // An account in another currency does not fund EUR products.
    fund(&app, app.client_id, "USD", 0, 0).await;
    let r = app.allocate("k", body("gift", "25.00", 5)).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(app.count("ledger_entries", "kind = 'allocation'").await, 0);
    let price: Option<i64> =
        sqlx::query_scalar("SELECT unit_price_minor FROM allocations").fetch_one(&app.pool).await.unwrap();
    assert_eq!(price, None, "an unfunded allocation records no price");
    app.finish().await;
}

#[tokio::test]
async fn short_funds_answer_402_in_the_shared_shape_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    app.product("gift", "EUR", &["25.00"]).await;
    let cards = app.load_cards("gift", 2500, 10).await;
    fund(&app, app.client_id, "EUR", 30_00, 10_00).await;

    let r = app.allocate("too-much", body("gift", "25.00", 2)).await;
    assert_eq!(r.status, 402, "{r:?}");
    assert_eq!(r.error_code(), "INSUFFICIENT_FUNDS");
    let details = &r.json()["error"]["details"];
    assert_eq!(details["available"], "40.00", "balance 30.00 plus credit 10.00");
    assert_eq!(details["required"], "50.00");
    assert_eq!(details["currency"], "EUR");
    assert!(r.json()["error"]["request_id"].is_string(), "the shared error shape: {:?}", r.json());
    assert_eq!(app.count("allocations", "").await, 0);
    assert_eq!(app.count("ledger_entries", "kind = 'allocation'").await, 0);
    assert_eq!(app.count("inventories", "status = 'active'").await, cards.len() as i64);
    assert_eq!(app.cached_ids("gift").await.len(), cards.len(), "the popped ids went back to the cache");
    assert_eq!(balance(&app, app.client_id, "EUR").await, 30_00);

    // Within the credit limit: 25.00 of 40.00, the balance goes below zero.
    let ok = app.allocate("one", body("gift", "25.00", 1)).await;
    assert_eq!(ok.status, 201, "{ok:?}");
    assert_eq!(balance(&app, app.client_id, "EUR").await, 5_00);
    let ok = app.allocate("two", body("gift", "25.00", 1)).await;
    assert_eq!(ok.status, 402, "15.00 left is less than 25.00: {ok:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_replay_never_pays_twice_and_is_answered_after_the_money_ran_out() {
    let app = TestApp::spawn().await;
    app.product("gift", "EUR", &["25.00"]).await;
    app.load_cards("gift", 2500, 10).await;
    fund(&app, app.client_id, "EUR", 50_00, 0).await;
    let first = app.allocate("same", body("gift", "25.00", 2)).await;
    assert_eq!(first.status, 201);
    assert_eq!(balance(&app, app.client_id, "EUR").await, 0);
    // Concurrent and later replays: the stored answer, byte for byte, and no second debit.
    let replays = join_all((0..8).map(|_| app.allocate("same", body("gift", "25.00", 2)))).await;
    for r in &replays {
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.header("idempotent-replayed").as_deref(), Some("true"));
        assert_eq!(r.body, first.body);
    }
    assert_eq!(debits(&app, app.client_id, "EUR").await, (1, 50_00));
    assert_eq!(balance(&app, app.client_id, "EUR").await, 0);
    assert_ledger_sums_equal_balances(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn the_slow_path_charges_and_refuses_the_same_way() {
    // No cache: every allocation takes the slow path (one transaction that claims from Postgres).
    let app = TestApp::spawn_with(Options { valkey_url: Some("none".into()), ..Options::default() }).await;
    app.product("gift", "EUR", &["25.00"]).await;
    app.load_cards_db_only("gift", 2500, 10).await;
    fund(&app, app.client_id, "EUR", 60_00, 0).await;
    assert_eq!(app.allocate("a", body("gift", "25.00", 2)).await.status, 201);
    let short = app.allocate("b", body("gift", "25.00", 1)).await;
    assert_eq!(short.status, 402, "{short:?}");
    assert_eq!(short.json()["error"]["details"]["available"], "10.00");
    let replay = app.allocate("a", body("gift", "25.00", 2)).await;
    assert_eq!(replay.status, 201);
    assert_eq!(debits(&app, app.client_id, "EUR").await, (1, 50_00));
    assert_eq!(app.count("allocations", "").await, 1);
    assert_eq!(app.count("inventories", "status = 'allocated'").await, 2);
    assert_ledger_sums_equal_balances(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn voiding_an_allocated_card_credits_it_once_where_the_account_says_so() {
    let app = TestApp::spawn().await;
    app.product("gift", "EUR", &["25.00"]).await;
    app.load_cards("gift", 2500, 10).await;
    fund(&app, app.client_id, "EUR", 100_00, 0).await;
    sqlx::query("INSERT INTO client_discounts (client_id, product_id, discount_bps) VALUES ($1, 'gift', 1000)")
        .bind(app.client_id)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app.allocate("v", body("gift", "25.00", 3)).await;
    assert_eq!(r.status, 201);
    let ids = card_ids(&r);
    assert_eq!(balance(&app, app.client_id, "EUR").await, 100_00 - 3 * 22_50);

    let void = |ids: Vec<i64>| {
        let req = allot_origin::ops::voids::VoidRequest {
            selector: allot_origin::ops::voids::VoidSelector::Cards(ids),
            reason: "damaged".into(),
            include_allocated: false,
        };
        let pool = app.pool.clone();
        async move {
            allot_origin::ops::voids::void_cards(&pool, None, &allot_origin::ops::Actor::cli(), &req).await.unwrap()
        }
    };
    let first = void(vec![ids[0]]).await;
    assert_eq!((first.voided, first.credited), (1, 1));
    assert_eq!(balance(&app, app.client_id, "EUR").await, 100_00 - 2 * 22_50, "its discounted price came back");
    // Voiding it again (and with another card) credits only the new one.
    let again = void(vec![ids[0], ids[1]]).await;
    assert_eq!((again.voided, again.credited), (1, 1));
    assert_eq!(app.count("ledger_entries", "kind = 'reversal'").await, 2);
    // An account that does not credit voids keeps the money.
    sqlx::query("UPDATE funding_accounts SET credit_voids = false").execute(&app.pool).await.unwrap();
    let kept = void(vec![ids[2]]).await;
    assert_eq!((kept.voided, kept.credited), (1, 0));
    assert_eq!(balance(&app, app.client_id, "EUR").await, 100_00 - 22_50);
    assert_ledger_sums_equal_balances(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn crossing_the_low_balance_threshold_writes_one_event() {
    let app = TestApp::spawn().await;
    app.product("gift", "EUR", &["10.00"]).await;
    app.load_cards("gift", 1000, 20).await;
    fund(&app, app.client_id, "EUR", 50_00, 0).await;
    sqlx::query("UPDATE funding_accounts SET low_balance_minor = 2500").execute(&app.pool).await.unwrap();
    for i in 0..5 {
        let r = app.allocate(format!("low-{i}"), body("gift", "10.00", 1)).await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let events: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE topic = 'balance.low' ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(events.len(), 1, "50 → 40 → 30 → 20 (crossed) → 10 → 0: one event: {events:?}");
    assert_eq!(events[0]["balance_minor"], 20_00);
    assert_eq!(events[0]["low_balance_minor"], 25_00);
    assert_eq!(events[0]["client_id"], app.client_id.to_string());
    // A top-up above the threshold re-arms it.
    deposit(&app, app.client_id, "EUR", 100_00).await;
    for i in 0..9 {
        assert_eq!(app.allocate(format!("again-{i}"), body("gift", "10.00", 1)).await.status, 201);
    }
    assert_eq!(app.count("outbox", "topic = 'balance.low'").await, 2);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_never_overdraw() {
    let app = TestApp::spawn().await;
    app.product("gift", "EUR", &["25.00"]).await;
    app.load_cards("gift", 2500, 400).await;
    // Enough for exactly 40 cards, in requests of 1 to 3 cards from 64 at once.
    fund(&app, app.client_id, "EUR", 30 * 25_00, 10 * 25_00).await;
    let replies = join_all((0..200).map(|i| {
        let app = &app;
        async move { app.allocate(format!("c-{i}"), body("gift", "25.00", 1 + i % 3)).await }
    }))
    .await;
    let cards: Vec<i64> = replies.iter().filter(|r| r.status == 201).flat_map(card_ids).collect();
    let refused = replies.iter().filter(|r| r.status == 402).count();
    let other: Vec<u16> = replies.iter().map(|r| r.status).filter(|s| *s != 201 && *s != 402).collect();
    assert!(other.is_empty(), "only 201 and 402: {other:?}");
    assert_eq!(cards.iter().collect::<HashSet<_>>().len(), cards.len(), "no card twice");
    let spent = cards.len() as i64 * 25_00;
    assert!(spent <= 40 * 25_00, "spent {spent}, more than balance plus credit");
    assert!(spent >= 38 * 25_00, "the money ran out, not the requests: {} cards, {refused} refused", cards.len());
    assert_eq!(balance(&app, app.client_id, "EUR").await, 30 * 25_00 - spent);
    assert_eq!(debits(&app, app.client_id, "EUR").await.1, spent);
    assert_eq!(app.count("inventories", "status = 'allocated'").await, cards.len() as i64);
    assert_ledger_sums_equal_balances(&app).await;
    app.finish().await;
}

/// One generated scenario: a balance and credit limit, a discount, and a stream of requests.
#[derive(Debug, Clone)]
struct Scenario {
    balance_minor: i64,
    credit_minor: i64,
    discount_bps: i32,
    quantities: Vec<u32>,
    slow_path: bool,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        0i64..20_000,
        0i64..5_000,
        prop_oneof![Just(0), 1..10_000i32],
        prop::collection::vec(1u32..=4, 10..60),
        any::<bool>(),
    )
        .prop_map(|(balance_minor, credit_minor, discount_bps, quantities, slow_path)| Scenario {
            balance_minor,
            credit_minor,
            discount_bps,
            quantities,
            slow_path,
        })
}

/// Run one scenario concurrently on a fresh app; check the funding invariants.
async fn run_scenario(s: Scenario) {
    let opts = if s.slow_path {
        Options { valkey_url: Some("none".into()), ..Options::default() }
    } else {
        Options::default()
    };
    let app = TestApp::spawn_with(opts).await;
    app.product("p", "EUR", &["7.99"]).await;
    let total: u32 = s.quantities.iter().sum();
    if s.slow_path {
        app.load_cards_db_only("p", 799, total as usize).await;
    } else {
        app.load_cards("p", 799, total as usize).await;
    }
    fund(&app, app.client_id, "EUR", s.balance_minor, s.credit_minor).await;
    sqlx::query("INSERT INTO client_discounts (client_id, product_id, discount_bps) VALUES ($1, 'p', $2)")
        .bind(app.client_id)
        .bind(s.discount_bps)
        .execute(&app.pool)
        .await
        .unwrap();
    let unit = allot_origin::funding::unit_price_minor(799, s.discount_bps);
    let replies = join_all(s.quantities.iter().enumerate().map(|(i, q)| {
        let app = &app;
        async move { (*q, app.allocate(format!("p-{i}"), body("p", "7.99", *q)).await) }
    }))
    .await;
    let mut spent = 0;
    for (q, r) in &replies {
        match r.status {
            201 => spent += unit * i64::from(*q),
            402 => {
                assert!(r.json()["error"]["details"]["required"].is_string(), "a 402 carries what was required: {r:?}")
            }
            other => panic!("only 201 and 402, got {other}: {r:?}"),
        }
    }
    assert!(spent <= s.balance_minor + s.credit_minor, "spent {spent} past balance plus credit ({s:?})");
    assert_eq!(balance(&app, app.client_id, "EUR").await, s.balance_minor - spent, "{s:?}");
    let priced = if unit > 0 { replies.iter().filter(|(_, r)| r.status == 201).count() as i64 } else { 0 };
    assert_eq!(debits(&app, app.client_id, "EUR").await, (priced, spent), "one debit per paid allocation");
    // Nothing was allocated that was not paid for, and no refusal left a trace.
    let allocated_cards: i64 = replies.iter().filter(|(_, r)| r.status == 201).map(|(q, _)| i64::from(*q)).sum();
    assert_eq!(app.count("inventories", "status = 'allocated'").await, allocated_cards);
    assert_ledger_sums_equal_balances(&app).await;
    app.finish().await;
}

proptest! {
    // Each case is a fresh database and server on the real stack: few cases, all of them real.
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn concurrent_debits_never_pass_balance_plus_credit(s in scenario()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        rt.block_on(run_scenario(s));
    }
}

#[tokio::test]
async fn a_balance_low_event_is_queued_for_the_clients_own_endpoints_only() {
    let app = TestApp::spawn().await;
    app.product("gift", "EUR", &["10.00"]).await;
    app.load_cards("gift", 1000, 5).await;
    fund(&app, app.client_id, "EUR", 30_00, 0).await;
    sqlx::query("UPDATE funding_accounts SET low_balance_minor = 1500").execute(&app.pool).await.unwrap();
    let other = allot_origin::ops::create_client(
        &app.pool,
        &allot_origin::ops::Actor::cli(),
        "Other",
        &allot_shared::Region::parse("eu").unwrap(),
        None,
    )
    .await
    .unwrap();
    let topics = vec!["balance.low".to_owned()];
    let add = |client: Uuid| {
        let (pool, keys, topics) = (app.pool.clone(), app.config.card_keys.clone(), topics.clone());
        async move {
            let actor = allot_origin::ops::Actor::cli();
            let url = "https://127.0.0.1:9/hooks";
            allot_origin::webhooks::endpoints::create(&pool, &keys, &actor, client, url, &topics, true).await.unwrap().0
        }
    };
    let (own, _foreign) = (add(app.client_id).await, add(other).await);
    for i in 0..2 {
        assert_eq!(app.allocate(format!("w-{i}"), body("gift", "10.00", 1)).await.status, 201);
    }
    let event: i64 =
        sqlx::query_scalar("SELECT id FROM outbox WHERE topic = 'balance.low'").fetch_one(&app.pool).await.unwrap();
    let mut tx = app.pool.begin().await.unwrap();
    let queued = allot_origin::webhooks::fanout::queue(&mut tx, &[event]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(queued, 1, "only the client's own endpoint");
    let (endpoint, body): (Uuid, String) =
        sqlx::query_as("SELECT endpoint_id, body FROM webhook_deliveries").fetch_one(&app.pool).await.unwrap();
    assert_eq!(endpoint, own.id);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["type"], "balance.low");
    assert_eq!(body["data"]["balance_minor"], 10_00);
    assert_eq!(body["data"]["currency"], "EUR");
    app.finish().await;
}
