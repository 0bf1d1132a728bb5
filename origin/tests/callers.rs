//! What API callers rely on beyond a single allocation: `Location` on a `201` (and its replay),
//! and `GET /v1/allocations`, the caller's own allocations newest first, with filters and an
//! opaque cursor bound to the client and the filters, read from the client index.

mod common;

use allot_origin::allocation::listing::{Listing, ListingQuery};
use common::{Reply, TestApp};
use serde_json::Value;
use uuid::Uuid;

fn body(product: &str, quantity: u32, reference: Option<&str>) -> String {
    match reference {
        Some(r) => format!(
            r#"{{"product_id":"{product}","denomination":"25.00","quantity":{quantity},"client_reference":"{r}"}}"#
        ),
        None => format!(r#"{{"product_id":"{product}","denomination":"25.00","quantity":{quantity}}}"#),
    }
}

async fn list(app: &TestApp, key: &str, query: &str) -> Reply {
    app.send("GET", &format!("/v1/allocations{query}"), Some(key), None, b"").await
}

fn ids(page: &Reply) -> Vec<String> {
    let items = page.json()["items"].as_array().unwrap_or_else(|| panic!("not a page: {:?}", page.body)).clone();
    items.iter().map(|i| i["allocation_id"].as_str().unwrap().to_owned()).collect()
}

/// Every page of a listing, following `next_cursor`: the ids, in order.
async fn all_pages(app: &TestApp, key: &str, filters: &str, limit: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut query = format!("?limit={limit}{filters}");
        if let Some(c) = &cursor {
            query.push_str(&format!("&cursor={c}"));
        }
        let page = list(app, key, &query).await;
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

#[tokio::test]
async fn a_201_says_where_the_allocation_is_and_its_replay_says_the_same() {
    let app = TestApp::spawn().await;
    app.product("loc", "EUR", &["25.00"]).await;
    app.load_cards("loc", 2500, 3).await;

    let created = app.allocate("loc-1", body("loc", 2, None)).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.json()["allocation_id"].as_str().unwrap().to_owned();
    let location = created.header("location").expect("a 201 carries Location");
    assert_eq!(location, format!("/v1/allocations/{id}"));
    let read = app.send("GET", &location, Some(&app.key), None, b"").await;
    assert_eq!((read.status, read.json()), (200, created.json()), "Location names the allocation");

    let replayed = app.allocate("loc-1", body("loc", 2, None)).await;
    assert_eq!(replayed.status, 201, "{:?}", replayed.body);
    assert_eq!(replayed.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(replayed.header("location"), Some(location), "a replay names the same allocation");

    let refused = app.allocate("loc-2", body("loc", 2, None)).await;
    assert_eq!(refused.status, 409, "{:?}", refused.body);
    assert_eq!(refused.header("location"), None, "only a 201 carries Location");
    app.finish().await;
}

#[tokio::test]
async fn the_listing_pages_through_the_callers_allocations_newest_first_as_get_shows_them() {
    let app = TestApp::spawn().await;
    app.product("lst-a", "EUR", &["25.00"]).await;
    app.product("lst-b", "EUR", &["25.00"]).await;
    app.load_cards("lst-a", 2500, 20).await;
    app.load_cards("lst-b", 2500, 20).await;
    let other = common::other_client_key(&app).await;

    let empty = list(&app, &app.key, "").await;
    assert_eq!(empty.status, 200, "{:?}", empty.body);
    assert_eq!(empty.json(), serde_json::json!({ "items": [], "next_cursor": null }));

    let mut made = Vec::new();
    for i in 0..7 {
        let (product, reference) = if i % 2 == 0 { ("lst-a", "even") } else { ("lst-b", "odd") };
        let reply = app.allocate(format!("lst-{i}"), body(product, 1 + i % 2, Some(reference))).await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        made.push(reply.json()["allocation_id"].as_str().unwrap().to_owned());
    }
    let theirs = body("lst-a", 1, None);
    let theirs = app.send("POST", "/v1/allocations", Some(&other), Some("lst-x"), theirs.as_bytes()).await;
    assert_eq!(theirs.status, 201, "{:?}", theirs.body);
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();

    // Pages of every size cover exactly the caller's allocations, newest first, each once.
    for limit in [1, 2, 3, 7, 100] {
        assert_eq!(all_pages(&app, &app.key, "", limit).await, newest_first, "limit {limit}");
    }
    let first = list(&app, &app.key, "").await;
    assert_eq!(ids(&first), newest_first, "20 by default");
    assert!(first.json()["next_cursor"].is_null());

    // Each item is the document GET /v1/allocations/{id} answers, codes included.
    for item in first.json()["items"].as_array().unwrap() {
        let id = item["allocation_id"].as_str().unwrap();
        let one = app.send("GET", &format!("/v1/allocations/{id}"), Some(&app.key), None, b"").await;
        assert_eq!(&one.json(), item, "{id}");
        assert!(item["cards"][0]["code"].as_str().is_some_and(|c| c.starts_with("CODE-")), "{item}");
    }

    // Filters, alone and together, through every page.
    let even: Vec<String> =
        newest_first.iter().filter(|id| made.iter().position(|m| m == *id).unwrap() % 2 == 0).cloned().collect();
    assert_eq!(all_pages(&app, &app.key, "&product_id=lst-a", 2).await, even);
    assert_eq!(all_pages(&app, &app.key, "&client_reference=even", 2).await, even);
    assert_eq!(all_pages(&app, &app.key, "&product_id=lst-a&client_reference=odd", 2).await, Vec::<String>::new());
    assert_eq!(all_pages(&app, &app.key, "&product_id=nope", 2).await, Vec::<String>::new());

    // Times: strictly after and strictly before, exact to the microsecond.
    let items = first.json()["items"].as_array().unwrap().clone();
    let at = |i: usize| items[i]["created_at"].as_str().unwrap().to_owned();
    let after = format!("&created_after={}", at(4));
    assert_eq!(all_pages(&app, &app.key, &after, 2).await, newest_first[..4].to_vec());
    let before = format!("&created_before={}", at(2));
    assert_eq!(all_pages(&app, &app.key, &before, 2).await, newest_first[3..].to_vec());
    let between = format!("&created_after={}&created_before={}", at(5), at(1));
    assert_eq!(all_pages(&app, &app.key, &between, 1).await, newest_first[2..5].to_vec());

    // The other client sees only its own.
    let theirs = list(&app, &other, "").await;
    assert_eq!(ids(&theirs).len(), 1, "{:?}", theirs.body);
    assert!(!newest_first.contains(&ids(&theirs)[0]));
    app.finish().await;
}

#[tokio::test]
async fn the_listing_refuses_bad_queries_and_foreign_cursors_in_the_shared_shape() {
    let app = TestApp::spawn().await;
    app.product("bad-l", "EUR", &["25.00"]).await;
    app.load_cards("bad-l", 2500, 5).await;
    for i in 0..3 {
        assert_eq!(app.allocate(format!("bad-l-{i}"), body("bad-l", 1, Some("r"))).await.status, 201);
    }
    let filtered = list(&app, &app.key, "?limit=1&product_id=bad-l").await;
    let cursor = filtered.json()["next_cursor"].as_str().unwrap().to_owned();
    let other = common::other_client_key(&app).await;

    let cases = [
        ("?colour=blue", "query"),
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "query"),
        ("?limit=1&limit=2", "query"),
        ("?cursor=nope", "cursor"),
        ("?created_after=yesterday", "created_after"),
        ("?created_before=2026-11-27", "created_before"),
        // An unencoded `+` is a space in a query string: the offset must be sent as %2B.
        ("?created_after=2026-11-27T10:00:00+01:00", "created_after"),
        ("?product_id=-bad", "product_id"),
        ("?client_reference=", "client_reference"),
        ("?client_reference=a%07b", "client_reference"),
        ("?created_after=%FF", "created_after"),
        // The cursor of another filter set, of no filter, and of another listing.
        (&format!("?product_id=other&cursor={cursor}"), "cursor"),
        (&format!("?cursor={cursor}"), "cursor"),
        ("?cursor=YTE6MTgwMDAwMDAwMDAwMDAwMDAwMDowMTkyZjBjMS03YzdlLTcwMDAtODAwMC0wMDAwMDAwMDAwMDE", "cursor"),
    ];
    for (query, field) in cases {
        let reply = list(&app, &app.key, query).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (400, "VALIDATION_FAILED".to_owned()),
            "{query}: {:?}",
            reply.body
        );
        assert_eq!(reply.json()["error"]["details"]["field"], field, "{query}: {:?}", reply.body);
    }
    // Another client with the very same filters: the cursor is not theirs.
    let foreign = list(&app, &other, &format!("?limit=1&product_id=bad-l&cursor={cursor}")).await;
    assert_eq!((foreign.status, foreign.json()["error"]["details"]["field"].clone()), (400, Value::from("cursor")));
    // The same cursor with its own filters goes on.
    let next = list(&app, &app.key, &format!("?limit=5&product_id=bad-l&cursor={cursor}")).await;
    assert_eq!((next.status, ids(&next).len()), (200, 2), "{:?}", next.body);
    let encoded = list(&app, &app.key, "?created_after=2026-11-27T10:00:00%2B01:00").await;
    assert_eq!(encoded.status, 200, "an encoded offset: {:?}", encoded.body);

    // No key: 401 before the query is looked at.
    let anonymous = app.send("GET", "/v1/allocations?colour=blue", None, None, b"").await;
    assert_eq!(anonymous.status, 401);
    app.finish().await;
}

/// The plan of every listing shape on a table with 40,000 allocations of 40 clients: the client
/// index answers the client, the times and the cursor, in order, and stops at the limit.
#[tokio::test]
async fn the_listing_reads_the_client_index_in_order_without_sorting() {
    let app = TestApp::spawn().await;
    app.product("plan", "EUR", &["25.00"]).await;
    let mut clients = Vec::new();
    for i in 0..40 {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO clients (id, name, region) VALUES (gen_random_uuid(), $1, 'eu') RETURNING id",
        )
        .bind(format!("plan client {i}"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        clients.push(id);
    }
    // Allocation rows only: the plan is about this table (its cards are another index's).
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE allocations DISABLE TRIGGER allocations_cards_complete").execute(&mut *tx).await.unwrap();
    sqlx::query(
        "INSERT INTO allocations (id, client_id, product_id, denomination_minor, quantity, client_reference,
                                  idempotency_key, created_at)
         SELECT gen_random_uuid(), ($1::uuid[])[1 + g % 40], 'plan', 2500, 1, 'ref-' || (g % 500), 'k-' || g,
                now() - g * interval '1 second'
           FROM generate_series(1, 40000) g",
    )
    .bind(&clients)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("ALTER TABLE allocations ENABLE TRIGGER allocations_cards_complete").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    sqlx::query("ANALYZE allocations").execute(&app.pool).await.unwrap();

    let client = clients[3];
    let first = Listing::parse(client, &ListingQuery::default()).unwrap();
    let deep_cursor = {
        // A real cursor from deep in the listing: 500 rows in.
        let (at, id): (time::OffsetDateTime, Uuid) = sqlx::query_as(
            "SELECT created_at, id FROM allocations WHERE client_id = $1 ORDER BY created_at DESC, id DESC OFFSET 500 LIMIT 1",
        )
        .bind(client)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        (at, id)
    };
    let deep = Listing { after_row: Some(deep_cursor), ..first.clone() };
    let times = Listing::parse(
        client,
        &ListingQuery {
            created_after: Some("2000-01-01T00:00:00Z".into()),
            created_before: Some("2100-01-01T00:00:00Z".into()),
            product_id: Some("plan".into()),
            ..ListingQuery::default()
        },
    )
    .unwrap();
    let times_deep = Listing { after_row: Some(deep_cursor), ..times.clone() };
    for (name, listing) in
        [("first page", &first), ("deep page", &deep), ("times", &times), ("times, deep", &times_deep)]
    {
        let (plan, index_cond) =
            common::index_walk(&app.pool, name, listing.statement(true), "allocations_client_created", "allocations")
                .await;
        if listing.after_row.is_some() {
            assert!(
                index_cond.contains("ROW(created_at, id) < ROW("),
                "{name}: the cursor is an index condition:\n{plan}"
            );
        }
        if listing.filters.created_after.is_some() {
            assert!(index_cond.contains("(created_at >"), "{name}: the times are index conditions:\n{plan}");
        }
    }
    app.finish().await;
}
