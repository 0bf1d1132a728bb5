//! Voids and allocation lookup through the operator API: each selector, the cache, the outbox,
//! the caller's view, the void trigger, voids racing allocations, masking and audited reveals.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Reply, TestApp, operator_token};
use futures::future::join_all;
use serde_json::json;

fn body(product: &str, denomination: &str, quantity: u32) -> String {
    format!(r#"{{"product_id":"{product}","denomination":"{denomination}","quantity":{quantity}}}"#)
}

fn with_reference(product: &str, quantity: u32, reference: &str) -> String {
    format!(
        r#"{{"product_id":"{product}","denomination":"25.00","quantity":{quantity},"client_reference":"{reference}"}}"#
    )
}

fn card_ids(r: &Reply) -> Vec<i64> {
    r.json()["cards"].as_array().unwrap().iter().map(|c| c["card_id"].as_i64().unwrap()).collect()
}

async fn void(app: &TestApp, token: &str, body: serde_json::Value) -> Reply {
    app.ops("POST", "/ops/v1/voids", Some(token), Some(body)).await
}

async fn mark_import(app: &TestApp, product: &str, minor: i64, ids: &[i64]) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO imports (id, product_id, denomination_minor, state, created_by, finished_at)
         VALUES ($1, $2, $3, 'committed', 'test', now())",
    )
    .bind(id)
    .bind(product)
    .bind(minor)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE inventories SET import_id = $1 WHERE id = ANY($2)")
        .bind(id)
        .bind(ids)
        .execute(&app.pool)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn voids_by_card_ids_leave_the_cache_at_once_and_show_in_the_allocation() {
    let app = TestApp::spawn().await;
    app.product("vc", "EUR", &["25.00"]).await;
    let loaded = app.load_cards("vc", 2500, 10).await;
    let operator = operator_token(&app, "operator").await;
    let allocated = app.allocate("v-1", body("vc", "25.00", 2)).await;
    assert_eq!(allocated.status, 201);
    let allocation_id = allocated.json()["allocation_id"].as_str().unwrap().to_owned();
    let [a, b] = card_ids(&allocated)[..] else { panic!("two cards") };
    let active: Vec<i64> = loaded.iter().copied().filter(|id| *id != a && *id != b).take(2).collect();

    let r = void(&app, &operator, json!({ "card_ids": [a, active[0], active[1]], "reason": "supplier recall" })).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let outcome = r.json();
    assert_eq!((outcome["matched"].as_i64(), outcome["voided"].as_i64()), (Some(3), Some(3)));
    assert_eq!((outcome["voided_allocated"].as_i64(), outcome["already_void"].as_i64()), (Some(1), Some(0)));

    // Out of the cache at once, the allocation's card stays in its allocation.
    let cached: HashSet<i64> = app.cached_ids("vc").await.into_iter().collect();
    assert!(!cached.contains(&active[0]) && !cached.contains(&active[1]), "voided ids left the cache");
    assert_eq!(cached.len(), 6);
    assert_eq!(
        app.count("inventories", &format!("id = {a} AND status = 'void' AND allocation_id IS NOT NULL")).await,
        1
    );

    // One event per card, with ids and the reason, never a code.
    let events: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE topic = 'card.voided' ORDER BY aggregate_id::bigint")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(events.len(), 3);
    let on_a = events.iter().find(|e| e["card_id"] == a).unwrap();
    assert_eq!(on_a["allocation_id"], allocation_id.as_str());
    assert_eq!(on_a["client_id"], app.client_id.to_string());
    assert_eq!((on_a["reason"].as_str(), on_a["denomination_minor"].as_i64()), (Some("supplier recall"), Some(2500)));
    assert!(on_a["voided_at"].is_string());
    let on_active = events.iter().find(|e| e["card_id"] == active[0]).unwrap();
    assert!(on_active.get("allocation_id").is_none() && on_active.get("client_id").is_none());
    assert!(events.iter().all(|e| !e.to_string().contains("CODE-")), "never a code");

    // The audit row, written with the change.
    let rows = app.audit_rows("card.void").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, "cards");
    assert_eq!(rows[0].2["reason"], "supplier recall");
    let mut voided_ids = vec![a, active[0], active[1]];
    voided_ids.sort_unstable();
    assert_eq!(rows[0].2["outcome"]["card_ids"], json!(voided_ids), "few ids are listed");

    // The caller sees the voided card as voided; the other card says nothing about voids.
    let seen = app.send("GET", &format!("/v1/allocations/{allocation_id}"), Some(&app.key), None, b"").await;
    assert_eq!(seen.status, 200);
    let cards = seen.json()["cards"].as_array().unwrap().clone();
    let card = |id: i64| cards.iter().find(|c| c["card_id"] == id).unwrap().clone();
    assert!(card(a)["voided_at"].is_string());
    assert!(card(b).get("voided_at").is_none());

    // Voiding again counts, changes nothing, and writes no event.
    let again = void(&app, &operator, json!({ "card_ids": [a], "reason": "again" })).await.json();
    assert_eq!((again["voided"].as_i64(), again["already_void"].as_i64()), (Some(0), Some(1)));
    assert_eq!(app.count("outbox", "topic = 'card.voided'").await, 3);

    // A void card never becomes active again, whatever writes it.
    for sql in [
        "UPDATE inventories SET status = 'active', voided_at = NULL, void_reason = NULL WHERE id = $1",
        "UPDATE inventories SET status = 'allocated' WHERE id = $1",
    ] {
        let err = sqlx::query(sql).bind(active[0]).execute(&app.pool).await.unwrap_err();
        assert!(err.to_string().contains("is void and stays void"), "{err}");
    }

    // Unknown ids: 404 naming them, nothing voided, nothing audited.
    let unknown = void(&app, &operator, json!({ "card_ids": [b, 987654321], "reason": "typo" })).await;
    assert_eq!((unknown.status, unknown.error_code().as_str()), (404, "NOT_FOUND"));
    assert!(unknown.json()["error"]["message"].as_str().unwrap().contains("987654321"));
    assert_eq!(unknown.json()["error"]["details"]["unknown_card_ids"], json!([987654321]));
    assert_eq!(app.count("inventories", &format!("id = {b} AND status = 'allocated'")).await, 1);
    assert_eq!(app.audit_rows("card.void").await.len(), 2);

    for bad in [
        json!({ "card_ids": [b] }),
        json!({ "card_ids": [b], "reason": "" }),
        json!({ "card_ids": [b], "reason": "x".repeat(501) }),
        json!({ "card_ids": [], "reason": "r" }),
        json!({ "card_ids": [b], "import_id": uuid::Uuid::now_v7(), "reason": "r" }),
        json!({ "card_ids": [b], "reason": "r", "include_allocated": true }),
        json!({ "product_id": "vc", "reason": "r" }),
        json!({ "reason": "r" }),
        json!({ "card_ids": [b], "reason": "r", "colour": "blue" }),
    ] {
        let r = void(&app, &operator, bad.clone()).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"), "{bad}");
    }
    let viewer = operator_token(&app, "viewer").await;
    assert_eq!(void(&app, &viewer, json!({ "card_ids": [b], "reason": "r" })).await.status, 403);
    app.finish().await;
}

#[tokio::test]
async fn voids_by_import_and_by_bucket_leave_allocated_cards_unless_asked() {
    let app = TestApp::spawn().await;
    app.product("vi", "EUR", &["10.00", "25.00"]).await;
    let tens = app.load_cards_db_only("vi", 1000, 4).await;
    app.load_cards("vi", 2500, 3).await;
    let operator = operator_token(&app, "operator").await;
    let allocated = app.allocate("i-1", body("vi", "10.00", 1)).await;
    assert_eq!(allocated.status, 201);
    let taken = card_ids(&allocated)[0];
    let import = mark_import(&app, "vi", 1000, &tens).await;

    // By import: the active cards; the allocated one is counted and left alone.
    let r = void(&app, &operator, json!({ "import_id": import, "reason": "bad batch" })).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let o = r.json();
    assert_eq!(
        (o["matched"].as_i64(), o["voided"].as_i64(), o["skipped_allocated"].as_i64()),
        (Some(4), Some(3), Some(1))
    );
    assert_eq!(app.count("inventories", &format!("id = {taken} AND status = 'allocated'")).await, 1);
    let cached: HashSet<i64> = app.cached_ids("vi").await.into_iter().collect();
    assert!(tens.iter().all(|id| !cached.contains(id)), "the import's cards left the cache");
    assert_eq!(app.audit_rows("card.void").await[0].1, format!("import:{import}"));

    // With include_allocated, the allocated card too.
    let r =
        void(&app, &operator, json!({ "import_id": import, "reason": "bad batch", "include_allocated": true })).await;
    let o = r.json();
    assert_eq!(
        (o["voided"].as_i64(), o["voided_allocated"].as_i64(), o["already_void"].as_i64()),
        (Some(1), Some(1), Some(3))
    );
    let unknown = void(&app, &operator, json!({ "import_id": uuid::Uuid::now_v7(), "reason": "r" })).await;
    assert_eq!(unknown.status, 404);

    // By bucket: the 25.00 cards go, the cache answers out of stock at once.
    let r = void(&app, &operator, json!({ "product_id": "vi", "denomination": "25", "reason": "expired stock" })).await;
    assert_eq!((r.status, r.json()["voided"].as_i64()), (200, Some(3)), "{:?}", r.body);
    assert!(app.cached_ids("vi").await.is_empty());
    let out = app.allocate("i-2", body("vi", "25.00", 1)).await;
    assert_eq!((out.status, out.error_code().as_str()), (409, "OUT_OF_STOCK"));
    assert_eq!(app.audit_rows("card.void").await[0].1, "bucket:vi/25");
    assert_eq!(app.count("outbox", "topic = 'card.voided'").await, 7);

    let r = void(&app, &operator, json!({ "product_id": "nope", "denomination": "25", "reason": "r" })).await;
    assert_eq!((r.status, r.json()["error"]["message"].as_str()), (400, Some("product_id: no product \"nope\"")));
    let r = void(&app, &operator, json!({ "product_id": "vi", "denomination": "50.00", "reason": "r" })).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voiding_while_allocations_run_hands_out_no_void_card_and_loses_none() {
    let app = TestApp::spawn().await;
    app.product("race", "EUR", &["25.00"]).await;
    let loaded = app.load_cards("race", 2500, 600).await;
    let operator = operator_token(&app, "operator").await;
    // Every other card is in an import; voiding it (without allocated cards) races the allocations.
    let imported: Vec<i64> = loaded.iter().copied().step_by(2).collect();
    let import = mark_import(&app, "race", 2500, &imported).await;

    let workers = (0..8).map(|w| {
        let app = &app;
        async move {
            let mut replies = Vec::new();
            for i in 0..15 {
                replies.push(app.allocate(format!("race-{w}-{i}"), body("race", "25.00", 2)).await);
            }
            replies
        }
    });
    let voider = async {
        // Start once allocations are under way, so the two overlap.
        let deadline = Instant::now() + Duration::from_secs(60);
        while app.count("allocations", "").await < 10 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        void(&app, &operator, json!({ "import_id": import, "reason": "race" })).await
    };
    let (replies, voided) = tokio::join!(join_all(workers), voider);
    assert_eq!(voided.status, 200, "{:?}", voided.body);
    let replies: Vec<Reply> = replies.into_iter().flatten().collect();
    let bad: Vec<(u16, String)> = replies
        .iter()
        .filter(|r| r.status != 201)
        .map(|r| (r.status, String::from_utf8_lossy(&r.body).into()))
        .collect();
    assert!(bad.is_empty(), "every allocation succeeds: {:?}", &bad[..bad.len().min(3)]);

    // No card handed out was void, no card twice.
    let handed: Vec<i64> = replies.iter().flat_map(card_ids).collect();
    let distinct: HashSet<i64> = handed.iter().copied().collect();
    assert_eq!((handed.len(), distinct.len()), (240, 240));
    assert_eq!(app.count("inventories", "status = 'void' AND allocation_id IS NOT NULL").await, 0);
    assert_eq!(app.count("inventories", "status = 'allocated'").await, 240);
    let void_count = app.count("inventories", "status = 'void'").await;
    assert_eq!(void_count, voided.json()["voided"].as_i64().unwrap());
    assert_eq!(void_count + voided.json()["skipped_allocated"].as_i64().unwrap(), 300);

    // Nothing lost: the cache holds exactly the active cards.
    let active: HashSet<i64> = sqlx::query_scalar::<_, i64>("SELECT id FROM inventories WHERE status = 'active'")
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(active.len() as i64 + 240 + void_count, 600);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cached: HashSet<i64> = app.cached_ids("race").await.into_iter().collect();
        if cached == active {
            break;
        }
        assert!(Instant::now() < deadline, "cache {} vs active {}", cached.len(), active.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.finish().await;
}

#[tokio::test]
async fn allocations_are_found_by_each_selector_with_masked_codes_and_revealed_only_to_admins() {
    let app = TestApp::spawn().await;
    app.product("look", "EUR", &["25.00"]).await;
    app.load_cards("look", 2500, 10).await;
    let viewer = operator_token(&app, "viewer").await;
    let operator = operator_token(&app, "operator").await;
    let admin = operator_token(&app, "admin").await;
    let first = app.allocate("l-1", with_reference("look", 2, "order-1")).await;
    let second = app.allocate("l-2", with_reference("look", 1, "order-2")).await;
    assert_eq!((first.status, second.status), (201, 201));
    let first_id = first.json()["allocation_id"].as_str().unwrap().to_owned();
    let second_id = second.json()["allocation_id"].as_str().unwrap().to_owned();
    let card = card_ids(&first)[1];
    let codes: Vec<String> =
        first.json()["cards"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap().to_owned()).collect();

    let get = |q: String| {
        let (app, viewer) = (&app, viewer.clone());
        async move { app.ops("GET", &format!("/ops/v1/allocations?{q}"), Some(&viewer), None).await }
    };
    // By id: masked to the last four, no PIN, never the code.
    let by_id = get(format!("id={first_id}")).await;
    assert_eq!(by_id.status, 200, "{:?}", by_id.body);
    let found = &by_id.json()["items"][0];
    assert_eq!(found["client"]["id"], app.client_id.to_string());
    assert_eq!((found["quantity"].as_i64(), found["client_reference"].as_str()), (Some(2), Some("order-1")));
    assert_eq!(found["idempotency_key"], "l-1");
    for (c, code) in found["cards"].as_array().unwrap().iter().zip(&codes) {
        assert_eq!(c["code"].as_str().unwrap(), format!("••••••{}", &code[code.len() - 4..]));
        assert!(c.get("pin").is_none());
        assert_eq!(c["status"], "allocated");
    }
    for code in &codes {
        assert!(!String::from_utf8_lossy(&by_id.body).contains(code.as_str()), "never the code");
    }

    // By client: newest first, a page at a time.
    let page1 = get(format!("client_id={}&limit=1", app.client_id)).await.json();
    assert_eq!(page1["items"][0]["id"], second_id.as_str());
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let page2 = get(format!("client_id={}&limit=1&cursor={cursor}", app.client_id)).await.json();
    assert_eq!(page2["items"][0]["id"], first_id.as_str());
    assert!(page2["next_cursor"].is_null());

    // By client reference and by card.
    let by_ref = get("client_reference=order-2".into()).await.json();
    assert_eq!(by_ref["items"].as_array().unwrap().len(), 1);
    assert_eq!(by_ref["items"][0]["id"], second_id.as_str());
    let by_card = get(format!("card_id={card}")).await.json();
    assert_eq!(by_card["items"][0]["id"], first_id.as_str());
    assert!(get("card_id=987654321".into()).await.json()["items"].as_array().unwrap().is_empty());

    let one = app.ops("GET", &format!("/ops/v1/allocations/{first_id}"), Some(&viewer), None).await;
    assert_eq!((one.status, one.json()["id"].as_str()), (200, Some(first_id.as_str())));
    let missing = app.ops("GET", &format!("/ops/v1/allocations/{}", uuid::Uuid::now_v7()), Some(&viewer), None).await;
    assert_eq!(missing.status, 404);
    for bad in
        ["", "id=nope", "card_id=1&client_reference=x", "client_reference=x&limit=0", "client_reference=x&cursor=z"]
    {
        let r = get(bad.into()).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"), "{bad}");
    }

    // A voided card shows as such.
    let r = void(&app, &operator, json!({ "card_ids": [card], "reason": "chargeback" })).await;
    assert_eq!(r.status, 200);
    let after = get(format!("card_id={card}")).await.json();
    let voided = after["items"][0]["cards"].as_array().unwrap().iter().find(|c| c["card_id"] == card).unwrap().clone();
    assert_eq!((voided["status"].as_str(), voided["void_reason"].as_str()), (Some("void"), Some("chargeback")));
    assert!(voided["voided_at"].is_string());

    // Reveal: admin only; the audit row is there, the codes and PINs in clear, never cached.
    let reveal = format!("/ops/v1/allocations/{first_id}/reveal");
    for token in [&viewer, &operator] {
        assert_eq!(app.ops("POST", &reveal, Some(token), None).await.status, 403);
    }
    assert!(app.audit_rows("allocation.reveal").await.is_empty());
    let shown = app.ops("POST", &reveal, Some(&admin), None).await;
    assert_eq!(shown.status, 200, "{:?}", shown.body);
    assert_eq!(shown.header("cache-control").as_deref(), Some("no-store"));
    let clear: Vec<String> =
        shown.json()["cards"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap().to_owned()).collect();
    assert_eq!(clear, codes);
    assert!(shown.json()["cards"].as_array().unwrap().iter().all(|c| c["pin"] == "1234"));
    let rows = app.audit_rows("allocation.reveal").await;
    let admin_id = app.ops("GET", "/ops/v1/me", Some(&admin), None).await.json()["id"].as_str().unwrap().to_owned();
    assert_eq!((rows.len(), rows[0].0.as_str(), rows[0].1.as_str()), (1, admin_id.as_str(), first_id.as_str()));
    assert_eq!(rows[0].3.as_deref(), shown.header("x-request-id").as_deref());
    let unknown = format!("/ops/v1/allocations/{}/reveal", uuid::Uuid::now_v7());
    assert_eq!(app.ops("POST", &unknown, Some(&admin), None).await.status, 404);
    assert_eq!(app.audit_rows("allocation.reveal").await.len(), 1, "nothing revealed, nothing audited");
    app.finish().await;
}
