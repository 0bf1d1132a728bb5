//! The callers' side of funding on a real server: `GET /v1/balance` (each account in its
//! currency's exponent, none for a client without one) and `GET /v1/ledger` (the caller's own
//! entries, newest first, signed from its side, a cursor bound to the client and the filters,
//! read from the client index).
//!
//! Accounts and entries are written by SQL that keeps the schema's rules: every entry moves money
//! between the client and a platform account, and a balance is the sum of its entries.

mod common;

use std::collections::BTreeSet;

use allot_origin::funding::ledger_listing::{Ledger, LedgerQuery};
use allot_origin::ops;
use allot_shared::Region;
use common::{Reply, TestApp};
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

/// A second client and its key.
async fn other_client(app: &TestApp, name: &str) -> (Uuid, String) {
    let region = Region::parse("eu").unwrap();
    let id = ops::create_client(&app.pool, &ops::Actor::cli(), name, &region, None).await.unwrap();
    let key = ops::issue_key(&app.pool, &ops::Actor::cli(), id, None).await.unwrap().expose();
    (id, key)
}

/// Open a funding account (balance zero until entries are settled into it).
async fn open_account(app: &TestApp, client: Uuid, currency: &str, credit_minor: i64, low_minor: Option<i64>) {
    sqlx::query(
        "INSERT INTO funding_accounts (client_id, currency, credit_limit_minor, low_balance_minor) VALUES ($1, $2, $3, $4)",
    )
    .bind(client)
    .bind(currency)
    .bind(credit_minor)
    .bind(low_minor)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// One ledger entry as the schema wants it; its id.
struct Entry<'a> {
    currency: &'a str,
    kind: &'a str,
    debit: &'a str,
    credit: &'a str,
    minor: i64,
    allocation: Option<Uuid>,
    card: Option<i64>,
    memo: Option<&'a str>,
    /// Hours before now.
    hours_ago: i64,
}

impl<'a> Entry<'a> {
    fn deposit(currency: &'a str, minor: i64, hours_ago: i64) -> Self {
        Entry {
            currency,
            kind: "deposit",
            debit: "deposits",
            credit: "client",
            minor,
            allocation: None,
            card: None,
            memo: None,
            hours_ago,
        }
    }
}

async fn write(app: &TestApp, client: Uuid, e: &Entry<'_>) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor,
                                     allocation_id, card_id, memo, actor, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'operator:alice@example.com', now() - $10 * interval '1 hour')
         RETURNING id",
    )
    .bind(client)
    .bind(e.currency)
    .bind(e.kind)
    .bind(e.debit)
    .bind(e.credit)
    .bind(e.minor)
    .bind(e.allocation)
    .bind(e.card)
    .bind(e.memo)
    .bind(e.hours_ago as f64)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Set each of the client's balances to the sum of its entries (the ledger's rule).
async fn settle(app: &TestApp, client: Uuid) {
    sqlx::query(
        "UPDATE funding_accounts a SET balance_minor = coalesce((
             SELECT sum(CASE WHEN e.credit_account = 'client' THEN e.amount_minor ELSE -e.amount_minor END)
               FROM ledger_entries e WHERE e.client_id = a.client_id AND e.currency = a.currency), 0)
          WHERE a.client_id = $1",
    )
    .bind(client)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn get(app: &TestApp, key: &str, path: &str) -> Reply {
    app.send("GET", path, Some(key), None, b"").await
}

fn ids(page: &Reply) -> Vec<i64> {
    let items = page.json()["items"].as_array().unwrap_or_else(|| panic!("not a page: {:?}", page.body)).clone();
    items.iter().map(|i| i["id"].as_i64().unwrap()).collect()
}

/// Every page of the ledger, following `next_cursor`: the ids, in order.
async fn all_pages(app: &TestApp, key: &str, filters: &str, limit: u32) -> Vec<i64> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut query = format!("?limit={limit}{filters}");
        if let Some(c) = &cursor {
            query.push_str(&format!("&cursor={c}"));
        }
        let page = get(app, key, &format!("/v1/ledger{query}")).await;
        assert_eq!(page.status, 200, "{query}: {:?}", page.body);
        let got = ids(&page);
        assert!(got.len() <= limit as usize, "{query}: {} items", got.len());
        out.extend(got);
        match page.json()["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
    panic!("more than 100 pages")
}

/// Allocate `n` single cards of `product` (25.00) before any account exists (so nothing is
/// debited by the allocation itself); their ids and card ids.
async fn allocations(app: &TestApp, product: &str, n: usize) -> Vec<(Uuid, i64)> {
    let mut out = Vec::new();
    for i in 0..n {
        let body = format!(r#"{{"product_id":"{product}","denomination":"25.00","quantity":1}}"#);
        let made = app.allocate(format!("{product}-{i}"), body).await;
        assert_eq!(made.status, 201, "{:?}", made.body);
        let json = made.json();
        let id = Uuid::parse_str(json["allocation_id"].as_str().unwrap()).unwrap();
        out.push((id, json["cards"][0]["card_id"].as_i64().unwrap()));
    }
    out
}

#[tokio::test]
async fn balances_are_exact_decimals_in_each_currencys_exponent_and_none_means_none() {
    let app = TestApp::spawn().await;
    let client = app.client_id;
    open_account(&app, client, "JPY", 0, None).await;
    open_account(&app, client, "EUR", 5_000, Some(2_000)).await;
    write(&app, client, &Entry::deposit("EUR", 20_000, 3)).await;
    let debit = Entry { kind: "adjustment", debit: "client", credit: "adjustments", ..Entry::deposit("EUR", 8_000, 2) };
    write(&app, client, &debit).await;
    write(&app, client, &Entry::deposit("JPY", 3_000, 1)).await;
    settle(&app, client).await;

    let reply = get(&app, &app.key, "/v1/balance").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("content-type").as_deref(), Some("application/json"));
    let mut body = reply.json();
    for b in body["balances"].as_array_mut().unwrap() {
        let at = b.as_object_mut().unwrap().remove("updated_at").unwrap();
        OffsetDateTime::parse(at.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
        assert!(at.as_str().unwrap().ends_with('Z'), "UTC: {at}");
    }
    assert_eq!(
        body,
        json!({ "balances": [
            { "currency": "EUR", "balance": "120.00", "credit_limit": "50.00", "available": "170.00",
              "low_balance_threshold": "20.00" },
            { "currency": "JPY", "balance": "3000", "credit_limit": "0", "available": "3000",
              "low_balance_threshold": null },
        ]}),
        "by currency code, money as strings in the currency's exponent"
    );

    // Spent into the credit: the balance goes negative, what is available is what is left.
    let spend =
        Entry { kind: "adjustment", debit: "client", credit: "adjustments", ..Entry::deposit("EUR", 15_000, 0) };
    write(&app, client, &spend).await;
    settle(&app, client).await;
    let eur = get(&app, &app.key, "/v1/balance").await.json()["balances"][0].clone();
    assert_eq!((eur["balance"].as_str(), eur["available"].as_str()), (Some("-30.00"), Some("20.00")));

    // A client without an account: none, which the documentation says is "no limit".
    let (_, other) = other_client(&app, "Unfunded").await;
    let none = get(&app, &other, "/v1/balance").await;
    assert_eq!((none.status, none.json()), (200, json!({ "balances": [] })));
    let anonymous = app.send("GET", "/v1/balance", None, None, b"").await;
    assert_eq!((anonymous.status, anonymous.error_code()), (401, "UNAUTHORIZED".to_owned()));
    app.finish().await;
}

#[tokio::test]
async fn the_ledger_is_the_callers_own_newest_first_signed_from_its_side() {
    let app = TestApp::spawn().await;
    app.product("fc-led", "EUR", &["25.00"]).await;
    app.load_cards("fc-led", 2500, 2).await;
    let made = allocations(&app, "fc-led", 2).await;
    let client = app.client_id;
    open_account(&app, client, "EUR", 0, None).await;
    let (other, other_key) = other_client(&app, "Neighbour").await;
    open_account(&app, other, "EUR", 0, None).await;
    write(&app, other, &Entry::deposit("EUR", 99_900, 5)).await;

    let deposit = write(&app, client, &Entry { memo: Some("wire 2026-11"), ..Entry::deposit("EUR", 20_000, 4) }).await;
    let (alloc, card) = made[0];
    let debit = Entry {
        kind: "allocation",
        debit: "client",
        credit: "sales",
        allocation: Some(alloc),
        ..Entry::deposit("EUR", 5_000, 3)
    };
    let debited = write(&app, client, &debit).await;
    let reversal = Entry {
        kind: "reversal",
        debit: "sales",
        credit: "client",
        allocation: Some(alloc),
        card: Some(card),
        ..Entry::deposit("EUR", 2_500, 2)
    };
    let reversed = write(&app, client, &reversal).await;
    let correction = Entry {
        kind: "adjustment",
        debit: "client",
        credit: "adjustments",
        memo: Some("fee"),
        ..Entry::deposit("EUR", 1, 1)
    };
    let corrected = write(&app, client, &correction).await;
    settle(&app, client).await;
    settle(&app, other).await;

    let page = get(&app, &app.key, "/v1/ledger").await;
    assert_eq!(page.status, 200, "{:?}", page.body);
    let body = page.json();
    let times: Vec<String> =
        body["items"].as_array().unwrap().iter().map(|i| i["created_at"].as_str().unwrap().to_owned()).collect();
    let mut items = body["items"].clone();
    for item in items.as_array_mut().unwrap() {
        item.as_object_mut().unwrap().remove("created_at");
    }
    let alloc = alloc.to_string();
    assert_eq!(
        json!({ "items": items, "next_cursor": body["next_cursor"] }),
        json!({ "items": [
            { "id": corrected, "kind": "adjustment", "currency": "EUR", "amount": "-0.01", "allocation_id": null,
              "card_id": null, "memo": "fee" },
            { "id": reversed, "kind": "reversal", "currency": "EUR", "amount": "25.00", "allocation_id": alloc,
              "card_id": card, "memo": null },
            { "id": debited, "kind": "allocation", "currency": "EUR", "amount": "-50.00", "allocation_id": alloc,
              "card_id": null, "memo": null },
            { "id": deposit, "kind": "deposit", "currency": "EUR", "amount": "200.00", "allocation_id": null,
              "card_id": null, "memo": "wire 2026-11" },
        ], "next_cursor": null }),
        "only the caller's entries, newest first; no accounts and no operator"
    );
    assert!(times.windows(2).all(|w| w[0] > w[1]), "newest first: {times:?}");
    assert!(!String::from_utf8_lossy(&page.body).contains("alice"), "never the operator's identity");

    // The balance is the sum of the signed amounts the ledger shows.
    let balance = get(&app, &app.key, "/v1/balance").await.json()["balances"][0]["balance"].clone();
    assert_eq!(balance, "174.99", "200.00 - 50.00 + 25.00 - 0.01");

    // The neighbour sees only its own deposit; a client without an account, nothing.
    let theirs = get(&app, &other_key, "/v1/ledger").await;
    assert_eq!(theirs.json()["items"].as_array().unwrap().len(), 1, "{:?}", theirs.body);
    assert_eq!(theirs.json()["items"][0]["amount"], "999.00");
    let (_, unfunded) = other_client(&app, "Unfunded").await;
    let empty = get(&app, &unfunded, "/v1/ledger").await;
    assert_eq!((empty.status, empty.json()), (200, json!({ "items": [], "next_cursor": null })));
    app.finish().await;
}

/// An entry as written: id, currency, kind, hours ago.
type Written = (i64, &'static str, &'static str, i64);

#[tokio::test]
async fn pages_walk_every_entry_once_newest_first_with_and_without_filters() {
    let app = TestApp::spawn().await;
    let client = app.client_id;
    open_account(&app, client, "EUR", 0, None).await;
    open_account(&app, client, "JPY", 0, None).await;
    let (other, _) = other_client(&app, "Neighbour").await;
    open_account(&app, other, "EUR", 0, None).await;
    // 30 entries over 30 hours: deposits, and every third an adjustment; EUR and JPY alternating.
    let mut written: Vec<Written> = Vec::new();
    for i in 0..30_i64 {
        let currency = if i % 2 == 0 { "EUR" } else { "JPY" };
        let entry = if i % 3 == 0 {
            Entry { kind: "adjustment", debit: "adjustments", ..Entry::deposit(currency, 100 + i, 30 - i) }
        } else {
            Entry::deposit(currency, 1_000 + i, 30 - i)
        };
        let id = write(&app, client, &entry).await;
        written.push((id, currency, entry.kind, 30 - i));
        write(&app, other, &Entry::deposit("EUR", 1, 30 - i)).await;
    }
    settle(&app, client).await;
    let newest_first = |keep: &dyn Fn(&Written) -> bool| -> Vec<i64> {
        written.iter().rev().filter(|e| keep(e)).map(|e| e.0).collect()
    };

    let every = all_pages(&app, &app.key, "", 7).await;
    assert_eq!(every, newest_first(&|_| true), "every entry once, newest first");
    assert_eq!(every.iter().collect::<BTreeSet<_>>().len(), 30);
    assert_eq!(all_pages(&app, &app.key, "", 100).await, every, "one page, the same order");
    assert_eq!(all_pages(&app, &app.key, "", 30).await, every, "exactly full: no empty last page");

    let eur = all_pages(&app, &app.key, "&currency=EUR", 4).await;
    assert_eq!(eur, newest_first(&|e| e.1 == "EUR"));
    let adjustments = all_pages(&app, &app.key, "&kind=adjustment", 3).await;
    assert_eq!(adjustments, newest_first(&|e| e.2 == "adjustment"));
    assert_eq!(all_pages(&app, &app.key, "&kind=reversal", 3).await, Vec::<i64>::new());
    assert_eq!(all_pages(&app, &app.key, "&currency=USD", 3).await, Vec::<i64>::new(), "no such account: none");

    // Times: 20 hours ago is between entries (each is a whole number of hours old).
    let at = |hours: i64| {
        let t = OffsetDateTime::now_utc() - time::Duration::minutes(hours * 60 - 30);
        t.format(&time::format_description::well_known::Rfc3339).unwrap().replace('+', "%2B")
    };
    let recent = all_pages(&app, &app.key, &format!("&created_after={}", at(20)), 4).await;
    assert_eq!(recent, newest_first(&|e| e.3 < 20));
    let window = format!("&created_after={}&created_before={}&currency=JPY", at(20), at(10));
    let windowed = all_pages(&app, &app.key, &window, 2).await;
    assert_eq!(windowed, newest_first(&|e| e.3 < 20 && e.3 >= 10 && e.1 == "JPY"));
    assert!(!windowed.is_empty());
    app.finish().await;
}

#[tokio::test]
async fn bad_queries_and_foreign_cursors_are_refused_in_the_shared_shape() {
    let app = TestApp::spawn().await;
    let client = app.client_id;
    open_account(&app, client, "EUR", 0, None).await;
    for hours in [3, 2, 1] {
        write(&app, client, &Entry::deposit("EUR", 100, hours)).await;
    }
    settle(&app, client).await;
    let (other, other_key) = other_client(&app, "Neighbour").await;
    open_account(&app, other, "EUR", 0, None).await;
    for hours in [3, 2, 1] {
        write(&app, other, &Entry::deposit("EUR", 100, hours)).await;
    }
    let first = get(&app, &app.key, "/v1/ledger?limit=1&currency=EUR").await;
    let cursor = first.json()["next_cursor"].as_str().unwrap().to_owned();
    // An allocation listing's cursor, well-formed, of another listing.
    let listing_cursor =
        "bDE6OGY0OWUxYzJhMGI3ZDNlNToxNzk1Nzk1NTMxMjA0MDAwMDAwOjAxOTJmMGMxLTdjN2UtNzAwMC04MDAwLTAwMDAwMDAwMDAwMQ";

    let cases = [
        ("?colour=blue", "query"),
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "query"),
        ("?limit=1&limit=2", "query"),
        ("?kind=deposit&kind=allocation", "query"),
        ("?currency=eur", "currency"),
        ("?currency=ZZZ", "currency"),
        ("?currency=", "currency"),
        ("?kind=debit", "kind"),
        ("?kind=", "kind"),
        ("?created_after=yesterday", "created_after"),
        ("?created_before=2026-11-27", "created_before"),
        // An unencoded `+` is a space in a query string: the offset must be sent as %2B.
        ("?created_after=2026-11-27T10:00:00+01:00", "created_after"),
        ("?created_after=%FF", "created_after"),
        ("?cursor=nope", "cursor"),
        (&format!("?cursor={listing_cursor}"), "cursor"),
        // The cursor of another filter set, and of no filter.
        (&format!("?currency=JPY&cursor={cursor}"), "cursor"),
        (&format!("?cursor={cursor}"), "cursor"),
    ];
    for (query, field) in cases {
        let reply = get(&app, &app.key, &format!("/v1/ledger{query}")).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (400, "VALIDATION_FAILED".to_owned()),
            "{query}: {:?}",
            reply.body
        );
        let error = &reply.json()["error"];
        assert_eq!(error["details"]["field"], field, "{query}: {:?}", reply.body);
        assert!(error["request_id"].is_string() && error["message"].is_string(), "the shared shape: {error}");
    }
    // Another client with the very same filters: the cursor is not theirs (their entries are
    // never reached through it).
    let foreign = get(&app, &other_key, &format!("/v1/ledger?limit=1&currency=EUR&cursor={cursor}")).await;
    assert_eq!((foreign.status, foreign.json()["error"]["details"]["field"].clone()), (400, Value::from("cursor")));
    // The same cursor with its own filters goes on.
    let next = get(&app, &app.key, &format!("/v1/ledger?limit=5&currency=EUR&cursor={cursor}")).await;
    assert_eq!((next.status, ids(&next).len()), (200, 2), "{:?}", next.body);
    let encoded = get(&app, &app.key, "/v1/ledger?created_after=2026-11-27T10:00:00%2B01:00").await;
    assert_eq!(encoded.status, 200, "an encoded offset: {:?}", encoded.body);
    // No key: 401 before the query is looked at.
    let anonymous = app.send("GET", "/v1/ledger?colour=blue", None, None, b"").await;
    assert_eq!(anonymous.status, 401);
    app.finish().await;
}

/// The plan of every ledger page shape on a table with 40,000 entries of 40 clients: the client
/// index answers the client and the cursor, in order, and stops at the limit.
#[tokio::test]
async fn the_ledger_reads_the_client_index_in_order_without_sorting() {
    let app = TestApp::spawn().await;
    let mut clients = Vec::new();
    for i in 0..40 {
        let (id, _) = other_client(&app, &format!("plan client {i}")).await;
        open_account(&app, id, "EUR", 0, None).await;
        open_account(&app, id, "USD", 0, None).await;
        clients.push(id);
    }
    sqlx::query(
        "INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor, created_at)
         SELECT ($1::uuid[])[1 + g % 40], CASE WHEN g % 3 = 0 THEN 'USD' ELSE 'EUR' END,
                CASE WHEN g % 5 = 0 THEN 'adjustment' ELSE 'deposit' END,
                CASE WHEN g % 5 = 0 THEN 'adjustments' ELSE 'deposits' END, 'client', 100 + g % 7,
                now() - (40000 - g) * interval '1 second'
           FROM generate_series(1, 40000) g",
    )
    .bind(&clients)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE ledger_entries").execute(&app.pool).await.unwrap();

    let client = clients[3];
    let first = Ledger::parse(client, &LedgerQuery::default()).unwrap();
    let deep_id: i64 =
        sqlx::query_scalar("SELECT id FROM ledger_entries WHERE client_id = $1 ORDER BY id DESC OFFSET 500 LIMIT 1")
            .bind(client)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let deep = Ledger { before_id: Some(deep_id), ..first.clone() };
    let filtered = Ledger::parse(
        client,
        &LedgerQuery {
            currency: Some("EUR".into()),
            kind: Some("deposit".into()),
            created_after: Some("2000-01-01T00:00:00Z".into()),
            created_before: Some("2100-01-01T00:00:00Z".into()),
            ..LedgerQuery::default()
        },
    )
    .unwrap();
    let filtered_deep = Ledger { before_id: Some(deep_id), ..filtered.clone() };
    for (name, ledger) in
        [("first page", &first), ("deep page", &deep), ("filters", &filtered), ("filters, deep", &filtered_deep)]
    {
        let (plan, index_cond) =
            common::index_walk(&app.pool, name, ledger.statement(true), "ledger_entries_client", "ledger_entries")
                .await;
        assert!(index_cond.contains("client_id ="), "{name}: the client is an index condition:\n{plan}");
        if ledger.before_id.is_some() {
            assert!(index_cond.contains("id <"), "{name}: the cursor is an index condition:\n{plan}");
        }
    }
    app.finish().await;
}
