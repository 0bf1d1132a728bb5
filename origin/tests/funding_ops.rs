//! Funding, the operators' side, against a real server and Postgres: each route's role and
//! audit row, answers matching the OpenAPI document, a top-up writing its balance and ledger
//! entry together (or neither), the credit-limit constraint as a 400 that writes nothing, CSV
//! statements with running balances and escaping, the CLI, the console forms, and the
//! `ledger-check` job finding a divergence made on purpose.
//! (Its own test binary: the metrics recorder is global to a process.)

mod common;

use std::collections::HashMap;
use std::process::Command;

use allot_origin::jobs::{self, Job, JobContext, RunOutcome, ledger_check};
use allot_origin::openapi::check::{resolve, violations};
use allot_origin::services::Services;
use common::{Reply, TestApp, operator_token};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Check a JSON reply against the documented response of `method path` for its status.
fn assert_documented(method: &str, path: &str, reply: &Reply) {
    let doc = serde_json::to_value(allot_origin::openapi::document()).unwrap();
    let response = &doc["paths"][path][method.to_lowercase()]["responses"][reply.status.to_string()];
    assert!(!response.is_null(), "{method} {path} answered {}, not documented: {:?}", reply.status, reply.body);
    let content = &resolve(&doc, response)["content"]["application/json"];
    let mut out = Vec::new();
    violations(&doc, &content["schema"], &reply.json(), "body", &mut out);
    assert!(out.is_empty(), "{method} {path} {}: {out:?}", reply.status);
}

/// The id `/ops/v1/me` gives a token.
async fn operator_id(app: &TestApp, token: &str) -> String {
    app.ops("GET", "/ops/v1/me", Some(token), None).await.json()["id"].as_str().unwrap().to_owned()
}

async fn balance_minor(app: &TestApp, currency: &str) -> i64 {
    sqlx::query_scalar("SELECT balance_minor FROM funding_accounts WHERE client_id = $1 AND currency = $2")
        .bind(app.client_id)
        .bind(currency)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// What a refused change must not touch: (ledger entries, funding audit rows, the EUR balance).
async fn writes(app: &TestApp) -> (i64, i64, i64) {
    let entries = app.count("ledger_entries", "true").await;
    (entries, app.count("audit_log", "action LIKE 'funding.%'").await, balance_minor(app, "EUR").await)
}

/// Post a deposit or adjustment as `token`; its entry id.
async fn post_entry(app: &TestApp, token: &str, kind: &str, amount: &str, memo: &str) -> i64 {
    let path = format!("/ops/v1/clients/{}/funding/EUR/{kind}", app.client_id);
    let r = app.ops("POST", &path, Some(token), Some(json!({ "amount": amount, "memo": memo }))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["entry_id"].as_i64().unwrap()
}

fn ctx(app: &TestApp) -> JobContext {
    Services::init(app.config.clone()).unwrap().job_context(CancellationToken::new())
}

async fn run(job: &dyn Job, ctx: &JobContext) -> serde_json::Map<String, Value> {
    match jobs::run_once(job, ctx, None, "test").await.unwrap() {
        RunOutcome::Succeeded(c) => c,
        other => panic!("{} did not succeed: {other:?}", job.name()),
    }
}

/// Split a CSV text (RFC 4180: quoted fields, doubled quotes, CRLF) into records.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => assert_eq!(chars.next(), Some('\n'), "CRLF line ends"),
            (false, '\n') => panic!("a bare LF ends a line"),
            (false, c) => field.push(c),
        }
        if !quoted && c == '\r' {
            record.push(std::mem::take(&mut field));
            records.push(std::mem::take(&mut record));
        }
    }
    assert!(field.is_empty() && record.is_empty(), "the text ends with a line end");
    records
}

#[tokio::test]
async fn every_funding_route_has_its_role_and_each_change_its_audit_row() {
    let app = TestApp::spawn().await;
    app.product("steam-eu", "EUR", &["25.00"]).await;
    let (viewer, operator, admin) = (
        operator_token(&app, "viewer").await,
        operator_token(&app, "operator").await,
        operator_token(&app, "admin").await,
    );
    let (operator_id, admin_id) = (operator_id(&app, &operator).await, operator_id(&app, &admin).await);
    let client = app.client_id.to_string();
    let base = format!("/ops/v1/clients/{client}/funding");

    // Opening an account is money policy: admins only.
    let body = json!({ "credit_limit": "500.00", "low_balance": "100.00" });
    for token in [&viewer, &operator] {
        let r = app.ops("PUT", &format!("{base}/EUR"), Some(token), Some(body.clone())).await;
        assert_eq!((r.status, r.error_code()), (403, "FORBIDDEN".to_owned()));
    }
    let opened = app.ops("PUT", &format!("{base}/EUR"), Some(&admin), Some(body)).await;
    assert_eq!(opened.status, 201, "{:?}", opened.body);
    assert_documented("PUT", "/ops/v1/clients/{id}/funding/{currency}", &opened);
    let a = opened.json();
    assert_eq!(
        (a["balance"].as_str(), a["credit_limit"].as_str(), a["available"].as_str()),
        (Some("0.00"), Some("500.00"), Some("500.00"))
    );
    assert_eq!(
        (a["low_balance"].as_str(), a["low"].as_bool(), a["credit_voids"].as_bool()),
        (Some("100.00"), Some(true), Some(true))
    );
    let rows = app.audit_rows("funding.open").await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), (admin_id.as_str(), client.as_str()));
    assert_eq!(rows[0].2["after"]["credit_limit"], "500.00");
    assert!(rows[0].2["before"].is_null());
    assert_eq!(rows[0].3.as_deref(), opened.header("x-request-id").as_deref(), "with the request's id");

    // A change: only what is sent changes; null clears the threshold.
    let changed = app
        .ops("PUT", &format!("{base}/EUR"), Some(&admin), Some(json!({ "low_balance": null, "credit_voids": false })))
        .await;
    assert_eq!(changed.status, 200, "{:?}", changed.body);
    assert_documented("PUT", "/ops/v1/clients/{id}/funding/{currency}", &changed);
    let a = changed.json();
    assert_eq!(
        (a["credit_limit"].as_str(), a["low_balance"].is_null(), a["credit_voids"].as_bool()),
        (Some("500.00"), true, Some(false))
    );
    let rows = app.audit_rows("funding.set").await;
    assert_eq!(rows[0].2["before"]["low_balance"], "100.00");
    assert_eq!(rows[0].2["after"]["low_balance"], Value::Null);

    // Top-ups: operators and admins.
    let deposit = json!({ "amount": "250.00", "memo": "wire ref 8812" });
    let r = app.ops("POST", &format!("{base}/EUR/deposits"), Some(&viewer), Some(deposit.clone())).await;
    assert_eq!(r.status, 403);
    let posted = app.ops("POST", &format!("{base}/EUR/deposits"), Some(&operator), Some(deposit)).await;
    assert_eq!(posted.status, 201, "{:?}", posted.body);
    assert_documented("POST", "/ops/v1/clients/{id}/funding/{currency}/deposits", &posted);
    assert_eq!(posted.json()["account"]["balance"], "250.00");
    let rows = app.audit_rows("funding.deposit").await;
    assert_eq!((rows[0].0.as_str(), rows[0].2["amount"].as_str()), (operator_id.as_str(), Some("250.00")));
    assert_eq!(rows[0].2["entry_id"], posted.json()["entry_id"]);

    // Adjustments: admins only.
    let adjustment = json!({ "amount": "-12.50", "memo": "duplicate top-up, ticket 3310" });
    let r = app.ops("POST", &format!("{base}/EUR/adjustments"), Some(&operator), Some(adjustment.clone())).await;
    assert_eq!(r.status, 403);
    let adjusted = app.ops("POST", &format!("{base}/EUR/adjustments"), Some(&admin), Some(adjustment)).await;
    assert_eq!(adjusted.status, 201, "{:?}", adjusted.body);
    assert_documented("POST", "/ops/v1/clients/{id}/funding/{currency}/adjustments", &adjusted);
    assert_eq!(
        (adjusted.json()["amount"].as_str(), adjusted.json()["account"]["balance"].as_str()),
        (Some("-12.50"), Some("237.50"))
    );
    let rows = app.audit_rows("funding.adjust").await;
    assert_eq!(
        (rows[0].0.as_str(), rows[0].2["memo"].as_str()),
        (admin_id.as_str(), Some("duplicate top-up, ticket 3310"))
    );

    // Discounts: admins only; clearing one that is not there writes nothing.
    let path = format!("/ops/v1/clients/{client}/discounts/steam-eu");
    let r = app.ops("PUT", &path, Some(&operator), Some(json!({ "discount_bps": 250 }))).await;
    assert_eq!(r.status, 403);
    let set = app.ops("PUT", &path, Some(&admin), Some(json!({ "discount_bps": 250 }))).await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    assert_documented("PUT", "/ops/v1/clients/{id}/discounts/{product_id}", &set);
    assert_eq!(app.audit_rows("discount.set").await[0].2["discount_bps"], 250);
    let r = app.ops("PUT", &path, Some(&admin), Some(json!({ "discount_bps": 10001 }))).await;
    assert_eq!((r.status, r.error_code()), (400, "VALIDATION_FAILED".to_owned()));
    let r = app
        .ops(
            "PUT",
            &format!("/ops/v1/clients/{client}/discounts/nope"),
            Some(&admin),
            Some(json!({ "discount_bps": 1 })),
        )
        .await;
    assert_eq!(r.status, 404);

    // Reads: viewers too.
    let shown = app.ops("GET", &base, Some(&viewer), None).await;
    assert_eq!(shown.status, 200);
    assert_documented("GET", "/ops/v1/clients/{id}/funding", &shown);
    let f = shown.json();
    assert_eq!(
        (f["accounts"][0]["balance"].as_str(), f["discounts"][0]["discount_bps"].as_i64()),
        (Some("237.50"), Some(250))
    );
    let csv = app.ops("GET", &format!("{base}/EUR/statement.csv"), Some(&viewer), None).await;
    assert_eq!(csv.status, 200);
    assert_eq!(parse_csv(std::str::from_utf8(&csv.body).unwrap()).len(), 3, "a header and two entries");

    let cleared = app.ops("DELETE", &path, Some(&admin), None).await;
    assert_eq!(cleared.status, 200);
    assert_documented("DELETE", "/ops/v1/clients/{id}/discounts/{product_id}", &cleared);
    assert_eq!((cleared.json()["cleared"].as_bool(), cleared.json()["previous_bps"].as_i64()), (Some(true), Some(250)));
    let again = app.ops("DELETE", &path, Some(&admin), None).await;
    assert_eq!(again.json()["cleared"], false);
    assert_eq!(app.audit_rows("discount.clear").await.len(), 1, "the second clear changed nothing");
    app.finish().await;
}

#[tokio::test]
async fn a_top_up_writes_its_balance_and_ledger_entry_together_or_neither() {
    let app = TestApp::spawn().await;
    let (operator, admin) = (operator_token(&app, "operator").await, operator_token(&app, "admin").await);
    let operator_id = operator_id(&app, &operator).await;
    let base = format!("/ops/v1/clients/{}/funding", app.client_id);

    // No account in the currency: 404, nothing opened (an operator may not make a client prepaid).
    let r = app.ops("POST", &format!("{base}/EUR/deposits"), Some(&operator), Some(json!({ "amount": "10.00" }))).await;
    assert_eq!((r.status, r.error_code()), (404, "NOT_FOUND".to_owned()));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("an admin opens one first"));
    assert_eq!(app.count("funding_accounts", "true").await, 0);

    assert_eq!(app.ops("PUT", &format!("{base}/EUR"), Some(&admin), Some(json!({}))).await.status, 201);
    let r = app.ops("POST", &format!("{base}/EUR/deposits"), Some(&operator), Some(json!({ "amount": "100" }))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(balance_minor(&app, "EUR").await, 10_000);
    let (kind, debit, credit, amount, actor, memo): (String, String, String, i64, String, Option<String>) = sqlx::query_as(
        "SELECT kind, debit_account, credit_account, amount_minor, actor, memo FROM ledger_entries WHERE client_id = $1",
    )
    .bind(app.client_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((kind.as_str(), debit.as_str(), credit.as_str(), amount), ("deposit", "deposits", "client", 10_000));
    assert_eq!((actor, memo), (operator_id, None));

    // The ledger entry fails: the balance and the audit row roll back with it.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_entry() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
         CREATE TRIGGER refuse_entry BEFORE INSERT ON ledger_entries FOR EACH ROW EXECUTE FUNCTION refuse_entry();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let r = app.ops("POST", &format!("{base}/EUR/deposits"), Some(&operator), Some(json!({ "amount": "5.00" }))).await;
    assert_eq!((r.status, r.error_code()), (500, "INTERNAL".to_owned()));
    assert_eq!(balance_minor(&app, "EUR").await, 10_000, "the balance did not move");
    assert_eq!(app.count("ledger_entries", "true").await, 1);
    assert_eq!(app.audit_rows("funding.deposit").await.len(), 1);
    sqlx::raw_sql("DROP TRIGGER refuse_entry ON ledger_entries").execute(&app.pool).await.unwrap();

    // Concurrent top-ups all land: the balance is the sum of the entries.
    let deposits = format!("{base}/EUR/deposits");
    let sends = (0..20).map(|i| {
        let body = json!({ "amount": format!("{}.01", i + 1), "memo": format!("parallel {i}") });
        app.ops("POST", &deposits, Some(&operator), Some(body))
    });
    for r in futures::future::join_all(sends).await {
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let expected = 10_000 + (1..=20).map(|i| i * 100 + 1).sum::<i64>();
    assert_eq!(balance_minor(&app, "EUR").await, expected);
    let found = ledger_check::check(&app.pool).await.unwrap();
    assert_eq!((found.accounts, found.divergent), (1, 0));
    app.finish().await;
}

/// Post to `…/funding/{currency}/{kind}` with an `Idempotency-Key`.
async fn post_keyed(app: &TestApp, token: &str, currency: &str, kind: &str, key: &str, body: Value) -> Reply {
    let path = format!("/ops/v1/clients/{}/funding/{currency}/{kind}", app.client_id);
    app.ops_with("POST", &path, Some(token), &[("idempotency-key", key)], Some(body)).await
}

#[tokio::test]
async fn a_keyed_posting_is_posted_once_however_often_and_concurrently_it_is_sent() {
    let app = TestApp::spawn().await;
    let (operator, admin) = (operator_token(&app, "operator").await, operator_token(&app, "admin").await);
    let base = format!("/ops/v1/clients/{}/funding", app.client_id);
    for currency in ["EUR", "USD"] {
        assert_eq!(app.ops("PUT", &format!("{base}/{currency}"), Some(&admin), Some(json!({}))).await.status, 201);
    }
    let top_up = json!({ "amount": "100.00", "memo": "wire 8812" });

    let first = post_keyed(&app, &operator, "EUR", "deposits", "wire-8812", top_up.clone()).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = post_keyed(&app, &operator, "EUR", "deposits", "wire-8812", top_up.clone()).await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(again.json()["entry_id"], first.json()["entry_id"]);
    assert_eq!(again.json()["account"]["balance"], "100.00");
    assert_documented("POST", "/ops/v1/clients/{id}/funding/{currency}/deposits", &again);
    assert_eq!(writes(&app).await, (1, 3, 10_000), "one entry, one deposit audited (and two opens)");

    // Sent at once under one key: one entry, every answer names it.
    let body = json!({ "amount": "5.00" });
    let sends = (0..12).map(|_| post_keyed(&app, &operator, "EUR", "deposits", "desk-5", body.clone()));
    let answers = futures::future::join_all(sends).await;
    let ids: Vec<Value> = answers.iter().map(|r| r.json()["entry_id"].clone()).collect();
    assert!(answers.iter().all(|r| r.status == 201), "{answers:?}");
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one entry: {ids:?}");
    let fresh = answers.iter().filter(|r| r.header("idempotent-replayed").is_none()).count();
    assert_eq!(fresh, 1, "exactly one request posted it");
    assert_eq!(writes(&app).await, (2, 4, 10_500));

    // The key with another posting: 422, nothing written.
    let other_amount = post_keyed(&app, &operator, "EUR", "deposits", "wire-8812", json!({ "amount": "99.00" })).await;
    assert_eq!((other_amount.status, other_amount.error_code()), (422, "IDEMPOTENCY_MISMATCH".to_owned()));
    assert!(other_amount.json()["error"]["message"].as_str().unwrap().contains("deposit of 100.00"));
    assert_documented("POST", "/ops/v1/clients/{id}/funding/{currency}/deposits", &other_amount);
    let other_memo = post_keyed(&app, &operator, "EUR", "deposits", "wire-8812", json!({ "amount": "100.00" })).await;
    assert_eq!(other_memo.status, 422, "the memo is part of the posting");
    let adjustment = json!({ "amount": "100.00", "memo": "wire 8812" });
    let other_kind = post_keyed(&app, &admin, "EUR", "adjustments", "wire-8812", adjustment).await;
    assert_eq!(other_kind.status, 422, "an adjustment is another posting");
    assert_eq!(writes(&app).await, (2, 4, 10_500));

    // A malformed key, or one sent twice: 400 naming it, nothing written.
    for headers in [&[("idempotency-key", "two words")][..], &[("idempotency-key", "a"), ("idempotency-key", "b")]] {
        let r =
            app.ops_with("POST", &format!("{base}/EUR/deposits"), Some(&operator), headers, Some(body.clone())).await;
        assert_eq!((r.status, r.json()["error"]["details"]["field"].clone()), (400, json!("Idempotency-Key")));
    }
    assert_eq!(writes(&app).await, (2, 4, 10_500));

    // A key is per account: the same key on the USD account posts there.
    let usd = post_keyed(&app, &operator, "USD", "deposits", "wire-8812", top_up).await;
    assert_eq!((usd.status, usd.header("idempotent-replayed")), (201, None));
    // An adjustment keyed and repeated: one entry.
    let fee = json!({ "amount": "-2.50", "memo": "fee" });
    let adjusted = post_keyed(&app, &admin, "EUR", "adjustments", "fee-1", fee.clone()).await;
    let repeated = post_keyed(&app, &admin, "EUR", "adjustments", "fee-1", fee).await;
    assert_eq!((adjusted.status, repeated.status), (201, 201));
    assert_eq!(repeated.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(repeated.json()["entry_id"], adjusted.json()["entry_id"]);
    assert_eq!(balance_minor(&app, "EUR").await, 10_250);
    let keyed: Vec<(String, String)> = sqlx::query_as(
        "SELECT currency, idempotency_key FROM ledger_entries WHERE idempotency_key IS NOT NULL ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let expected = [("EUR", "wire-8812"), ("EUR", "desk-5"), ("USD", "wire-8812"), ("EUR", "fee-1")];
    assert_eq!(keyed, expected.map(|(c, k)| (c.to_owned(), k.to_owned())));
    assert_eq!(app.audit_rows("funding.deposit").await[0].2["idempotency_key"], "wire-8812");
    let found = ledger_check::check(&app.pool).await.unwrap();
    assert_eq!((found.accounts, found.divergent), (2, 0));

    // The table holds the rule too: a key on an allocation's entry, a malformed key, a key twice.
    let insert = |kind: &str, key: &str| {
        let allocation = if kind == "allocation" { "gen_random_uuid()" } else { "NULL" };
        let (debit, credit) = if kind == "allocation" { ("client", "sales") } else { ("deposits", "client") };
        format!(
            "INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor,
                                         allocation_id, idempotency_key)
             VALUES ('{}', 'EUR', '{kind}', '{debit}', '{credit}', 1, {allocation}, '{key}')",
            app.client_id
        )
    };
    for (kind, key, constraint) in [
        ("allocation", "k-1", "ledger_entries_idempotency_key_shape"),
        ("deposit", "two words", "ledger_entries_idempotency_key_shape"),
        ("deposit", "wire-8812", "ledger_entries_one_posting_per_key"),
    ] {
        let e = sqlx::raw_sql(sqlx::AssertSqlSafe(insert(kind, key))).execute(&app.pool).await.unwrap_err();
        assert!(e.to_string().contains(constraint), "{kind} {key:?}: {e}");
    }
    app.finish().await;
}

#[tokio::test]
async fn the_credit_limit_and_bad_amounts_are_refused_with_400_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let admin = operator_token(&app, "admin").await;
    let base = format!("/ops/v1/clients/{}/funding", app.client_id);
    let opened = app.ops("PUT", &format!("{base}/EUR"), Some(&admin), Some(json!({ "credit_limit": "50.00" }))).await;
    assert_eq!(opened.status, 201);
    let before = writes(&app).await;

    // Past the credit limit: the constraint answers, in the shared shape.
    let r = app
        .ops("POST", &format!("{base}/EUR/adjustments"), Some(&admin), Some(json!({ "amount": "-50.01", "memo": "x" })))
        .await;
    assert_eq!((r.status, r.error_code()), (400, "VALIDATION_FAILED".to_owned()), "{:?}", r.body);
    assert_documented("POST", "/ops/v1/clients/{id}/funding/{currency}/adjustments", &r);
    assert_eq!(r.json()["error"]["details"]["field"], "amount");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("nothing was changed"));
    assert_eq!(writes(&app).await, before);

    // Up to the limit is fine; then the limit may not go below what the client owes.
    let r = app
        .ops("POST", &format!("{base}/EUR/adjustments"), Some(&admin), Some(json!({ "amount": "-30", "memo": "fee" })))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.json()["account"]["available"], "20.00");
    let before = writes(&app).await;
    let r = app.ops("PUT", &format!("{base}/EUR"), Some(&admin), Some(json!({ "credit_limit": "29.99" }))).await;
    assert_eq!((r.status, r.error_code()), (400, "VALIDATION_FAILED".to_owned()), "{:?}", r.body);
    assert_eq!(r.json()["error"]["details"]["field"], "credit_limit");
    assert_documented("PUT", "/ops/v1/clients/{id}/funding/{currency}", &r);
    assert_eq!(writes(&app).await, before);
    let limit: i64 =
        sqlx::query_scalar("SELECT credit_limit_minor FROM funding_accounts").fetch_one(&app.pool).await.unwrap();
    assert_eq!(limit, 5000, "the limit is as it was");
    assert_eq!(
        app.ops("PUT", &format!("{base}/EUR"), Some(&admin), Some(json!({ "credit_limit": "30" }))).await.status,
        200
    );

    // Bad input, each naming its field; nothing written.
    let before = writes(&app).await;
    let cases = [
        (format!("{base}/EUR/deposits"), json!({ "amount": "10.001" }), "amount"),
        (format!("{base}/EUR/deposits"), json!({ "amount": "0" }), "amount"),
        (format!("{base}/EUR/deposits"), json!({ "amount": "-5" }), "amount"),
        (format!("{base}/EUR/deposits"), json!({ "amount": 5 }), "body"),
        (format!("{base}/EUR/deposits"), json!({ "amount": "5", "memo": "two\nlines" }), "memo"),
        (format!("{base}/EUR/deposits"), json!({ "amount": "5", "memo": "x".repeat(501) }), "memo"),
        (format!("{base}/eur/deposits"), json!({ "amount": "5" }), "currency"),
        (format!("{base}/EUR/adjustments"), json!({ "amount": "5" }), "memo"),
        (format!("{base}/EUR/adjustments"), json!({ "amount": "-0", "memo": "x" }), "amount"),
        ("/ops/v1/clients/not-a-uuid/funding/EUR/deposits".to_owned(), json!({ "amount": "5" }), "id"),
    ];
    for (path, body, field) in cases {
        let r = app.ops("POST", &path, Some(&admin), Some(body.clone())).await;
        assert_eq!((r.status, r.error_code()), (400, "VALIDATION_FAILED".to_owned()), "{path} {body}");
        assert_eq!(r.json()["error"]["details"]["field"], field, "{path} {body}: {:?}", r.body);
    }
    let r = app.ops("PUT", &format!("{base}/EUR"), Some(&admin), Some(json!({ "credit_limit": "-1" }))).await;
    assert_eq!(r.json()["error"]["details"]["field"], "credit_limit");
    let r = app.ops("PUT", &format!("{base}/JPY"), Some(&admin), Some(json!({ "low_balance": "0.5" }))).await;
    assert_eq!(r.json()["error"]["details"]["field"], "low_balance", "JPY has no decimals");
    let r = app.ops("GET", &format!("{base}/EUR/statement.csv?colour=blue"), Some(&admin), None).await;
    assert_eq!(r.status, 400);
    let r = app.ops("GET", &format!("{base}/USD/statement.csv"), Some(&admin), None).await;
    assert_eq!(r.status, 404, "no USD account");
    let stranger = format!("/ops/v1/clients/{}/funding", uuid::Uuid::now_v7());
    assert_eq!(app.ops("GET", &stranger, Some(&admin), None).await.status, 404);
    assert_eq!(writes(&app).await, before);
    assert_eq!(app.count("funding_accounts", "currency = 'JPY'").await, 0);
    app.finish().await;
}

#[tokio::test]
async fn a_statement_has_running_balances_from_the_periods_start_and_escapes_memos() {
    let app = TestApp::spawn().await;
    let (viewer, admin) = (operator_token(&app, "viewer").await, operator_token(&app, "admin").await);
    let base = format!("/ops/v1/clients/{}/funding", app.client_id);
    assert_eq!(app.ops("PUT", &format!("{base}/EUR"), Some(&admin), Some(json!({}))).await.status, 201);
    let old = post_entry(&app, &admin, "deposits", "100.00", "opening, before the period").await;
    let first = post_entry(&app, &admin, "deposits", "50.00", "wire \"A\", ref 1").await;
    let second = post_entry(&app, &admin, "adjustments", "-20.25", "=HYPERLINK(\"x\")").await;
    let third = post_entry(&app, &admin, "deposits", "1.00", "late").await;
    // Place the entries in time: the first before the period, the last after it.
    for (id, at) in [
        (old, "2026-10-01T00:00:00Z"),
        (first, "2026-11-01T00:00:00Z"),
        (second, "2026-11-15T12:00:00.5Z"),
        (third, "2026-12-01T00:00:00Z"),
    ] {
        sqlx::query("UPDATE ledger_entries SET created_at = $2::timestamptz WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(&app.pool)
            .await
            .unwrap();
    }
    let r = app
        .ops(
            "GET",
            &format!("{base}/EUR/statement.csv?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type").as_deref(), Some("text/csv; charset=utf-8"));
    assert!(r.header("content-disposition").unwrap().contains(&format!("statement-{}-EUR.csv", app.client_id)));
    let text = std::str::from_utf8(&r.body).unwrap();
    let rows = parse_csv(text);
    let header = "entry_id,created_at,kind,amount,balance_after,allocation_id,card_id,memo,actor";
    assert_eq!(rows[0].join(","), header);
    assert_eq!(rows.len(), 3, "the two entries in [from, to): {text}");
    let admin_id = operator_id(&app, &admin).await;
    assert_eq!(
        rows[1],
        [
            &first.to_string(),
            "2026-11-01T00:00:00Z",
            "deposit",
            "50.00",
            "150.00",
            "",
            "",
            "wire \"A\", ref 1",
            &admin_id
        ]
    );
    assert_eq!(
        rows[2],
        [
            &second.to_string(),
            "2026-11-15T12:00:00.5Z",
            "adjustment",
            "-20.25",
            "129.75",
            "",
            "",
            "'=HYPERLINK(\"x\")",
            &admin_id
        ]
    );
    assert!(text.contains(",\"wire \"\"A\"\", ref 1\","), "quoted, quotes doubled: {text}");

    // Many entries stream in pages, one consistent statement ending at the balance.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor, memo, actor)
         SELECT '{c}', 'EUR', 'deposit', 'deposits', 'client', 1, 'bulk ' || i, 'test' FROM generate_series(1, 2500) i;
         UPDATE funding_accounts SET balance_minor = balance_minor + 2500 WHERE client_id = '{c}';",
        c = app.client_id
    )))
    .execute(&app.pool)
    .await
    .unwrap();
    let r = app.ops("GET", &format!("{base}/EUR/statement.csv"), Some(&viewer), None).await;
    let rows = parse_csv(std::str::from_utf8(&r.body).unwrap());
    assert_eq!(rows.len(), 1 + 4 + 2500);
    let ids: Vec<i64> = rows[1..].iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first, each once");
    assert_eq!(rows.last().unwrap()[4], "155.75", "100 + 50 - 20.25 + 1 + 25.00");
    assert_eq!(balance_minor(&app, "EUR").await, 15_575);

    let r = app
        .ops(
            "GET",
            &format!("{base}/EUR/statement.csv?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!((r.status, r.json()["error"]["details"]["field"].as_str()), (400, Some("to")));
    app.finish().await;
}

#[tokio::test]
async fn the_ledger_check_counts_accounts_and_reports_a_divergence_made_on_purpose() {
    let app = TestApp::spawn().await;
    let (viewer, admin) = (operator_token(&app, "viewer").await, operator_token(&app, "admin").await);
    let job = jobs::registry(&app.config, true).into_iter().find(|j| j.name() == "ledger-check").expect("registered");
    assert_eq!(job.default_interval(), std::time::Duration::from_secs(300));
    let base = format!("/ops/v1/clients/{}/funding", app.client_id);
    for currency in ["EUR", "USD"] {
        let r =
            app.ops("PUT", &format!("{base}/{currency}"), Some(&admin), Some(json!({ "low_balance": "5.00" }))).await;
        assert_eq!(r.status, 201);
        let r = app
            .ops("POST", &format!("{base}/{currency}/deposits"), Some(&admin), Some(json!({ "amount": "10.00" })))
            .await;
        assert_eq!(r.status, 201);
    }
    let ctx = ctx(&app);
    let counts = run(job.as_ref(), &ctx).await;
    assert_eq!(
        (counts["accounts"].as_i64(), counts["divergent"].as_i64(), counts["low"].as_i64()),
        (Some(2), Some(0), Some(0))
    );

    // A balance edited by hand: the check names the account with both figures.
    sqlx::query("UPDATE funding_accounts SET balance_minor = balance_minor - 700 WHERE currency = 'USD'")
        .execute(&app.pool)
        .await
        .unwrap();
    let found = ledger_check::check(&app.pool).await.unwrap();
    assert_eq!((found.accounts, found.divergent, found.low), (2, 1, 1), "USD is now 3.00: divergent, and low");
    let d = &found.examples[0];
    assert_eq!((d.client_id, d.currency.as_str(), d.balance_minor, d.ledger_minor), (app.client_id, "USD", 300, 1000));
    let counts = run(job.as_ref(), &ctx).await;
    assert_eq!((counts["divergent"].as_i64(), counts["low"].as_i64()), (Some(1), Some(1)));

    // The run's counts are in the job's runs, and the gauges carry them.
    let runs = app.ops("GET", "/ops/v1/jobs/ledger-check/runs?limit=1", Some(&viewer), None).await;
    assert_eq!(runs.status, 200, "{:?}", runs.body);
    assert_eq!(runs.json()["items"][0]["counts"]["divergent"], 1);
    let metrics = common::read(app.http.get(format!("{}/metrics", app.operator)).send().await.unwrap()).await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    let samples: HashMap<&str, f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| (series, value.parse().unwrap()))
        .collect();
    assert_eq!(samples.get("allot_ledger_divergent_accounts"), Some(&1.0), "{text}");
    assert_eq!(samples.get("allot_funding_accounts_low"), Some(&1.0));

    // Put right by hand: the next run finds nothing.
    sqlx::query("UPDATE funding_accounts SET balance_minor = balance_minor + 700 WHERE currency = 'USD'")
        .execute(&app.pool)
        .await
        .unwrap();
    let counts = run(job.as_ref(), &ctx).await;
    assert_eq!(counts["divergent"], 0);
    app.finish().await;
}

/// Run the `allot` binary against this app's database: (success, stdout, stderr).
fn allot_cli(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(args)
        .env("DATABASE_URL", common::url_for(&app.db_name))
        .env("USER", "ana")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test]
async fn the_cli_opens_tops_up_adjusts_and_writes_statements_as_cli_user() {
    let app = TestApp::spawn().await;
    app.product("steam-eu", "EUR", &["25.00"]).await;
    let client = app.client_id.to_string();
    let (ok, out, err) =
        allot_cli(&app, &["funding", "set", &client, "EUR", "--credit-limit", "10", "--low-balance", "-5"]);
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("opened the EUR account of client {client}")), "{out}");
    let (ok, _, err) = allot_cli(&app, &["funding", "deposit", &client, "EUR", "40.00", "--memo", "wire, ref 7"]);
    assert!(ok, "{err}");
    let (ok, _, err) = allot_cli(&app, &["funding", "adjust", &client, "EUR", "-60", "--memo", "too much"]);
    assert!(!ok && err.contains("nothing was changed"), "{err}");
    let (ok, out, err) = allot_cli(&app, &["funding", "adjust", &client, "EUR", "-45.5", "--memo", "fee"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["account"]["low"], true, "-5.50 is below -5");
    let (ok, out, err) = allot_cli(&app, &["funding", "statement", &client, "EUR"]);
    assert!(ok, "{err}");
    let rows = parse_csv(&out);
    assert_eq!(rows.len(), 3);
    assert_eq!((rows[1][7].as_str(), rows[1][8].as_str()), ("wire, ref 7", "cli:ana"));
    assert_eq!(rows[2][4], "-5.50");
    let (ok, out, _) = allot_cli(&app, &["funding", "show", &client]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["accounts"][0]["balance"], "-5.50");
    assert!(allot_cli(&app, &["discount", "set", &client, "steam-eu", "300"]).0);
    let (ok, out, _) = allot_cli(&app, &["discount", "clear", &client, "steam-eu"]);
    assert!(ok && out.contains("300 bps"), "{out}");
    let (ok, _, err) = allot_cli(&app, &["funding", "deposit", &client, "USD", "1"]);
    assert!(!ok && err.contains("no funding account in USD"), "{err}");
    // Run again with its key, a deposit is answered, not posted twice.
    let keyed = ["funding", "deposit", &client, "EUR", "1.00", "--idempotency-key", "cli-1"];
    let (ok, first, err) = allot_cli(&app, &keyed);
    assert!(ok && !err.contains("already posted"), "{err}");
    let (ok, again, err) = allot_cli(&app, &keyed);
    assert!(ok && err.contains("already posted under this idempotency key"), "{err}");
    let entry_id = |out: &str| serde_json::from_str::<Value>(out).unwrap()["entry_id"].clone();
    assert_eq!(entry_id(&first), entry_id(&again));
    assert_eq!(balance_minor(&app, "EUR").await, -450);
    let actors: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT actor FROM audit_log WHERE action LIKE 'funding.%' OR action LIKE 'discount.%'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(actors, ["cli:ana"]);
    assert_eq!(app.count("audit_log", "action LIKE 'funding.%' OR action LIKE 'discount.%'").await, 6);
    app.finish().await;
}

/// The value of the first hidden input named `name` in `html`.
fn hidden_value(html: &str, name: &str) -> String {
    let at = html.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("no {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// A console session of `token`: (cookie, CSRF token).
async fn console_sign_in(app: &TestApp, token: &str) -> (String, String) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let value = |html: &str, attr: &str| {
        let rest = &html[html.find(attr).unwrap_or_else(|| panic!("{attr} in {html}")) + attr.len()..];
        rest[1..].split('"').next().unwrap().to_owned()
    };
    let cookie = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(|v| v.split(';').next().unwrap().to_owned())
            .unwrap()
    };
    let form = http.get(format!("{}/ops/sign-in", app.operator)).send().await.unwrap();
    let pre = cookie(&form, "allot_console_sign_in");
    let csrf = value(&form.text().await.unwrap(), "name=\"csrf\" value=");
    let signed = http
        .post(format!("{}/ops/sign-in", app.operator))
        .header("cookie", &pre)
        .form(&[("csrf", csrf.as_str()), ("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    let session = cookie(&signed, "allot_console");
    let page = http.get(format!("{}/ops/stock", app.operator)).header("cookie", &session).send().await.unwrap();
    let csrf = value(&page.text().await.unwrap(), "data-csrf=");
    (session, csrf)
}

#[tokio::test]
async fn the_console_shows_balances_tops_up_sets_accounts_and_downloads_statements() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let (admin, admin_csrf) = console_sign_in(&app, &operator_token(&app, "admin").await).await;
    let (operator, operator_csrf) = console_sign_in(&app, &operator_token(&app, "operator").await).await;
    let (viewer, _) = console_sign_in(&app, &operator_token(&app, "viewer").await).await;
    let page = format!("{}/ops/clients/{}", app.operator, app.client_id);
    let get = |cookie: &str, url: &str| http.get(url).header("cookie", cookie).send();

    let html = get(&admin, &page).await.unwrap().text().await.unwrap();
    assert!(html.contains("No funding account: this client allocates without limit."), "{html}");
    let post = |cookie: &str, path: String, fields: Vec<(&str, &str)>| {
        http.post(format!("{}{path}", app.operator)).header("cookie", cookie).form(&fields).send()
    };
    let base = format!("/ops/clients/{}/funding", app.client_id);
    let fields =
        vec![("csrf", admin_csrf.as_str()), ("currency", "EUR"), ("credit_limit", "20.00"), ("low_balance", "5")];
    let r = post(&admin, base.clone(), fields).await.unwrap();
    assert_eq!(r.status(), 303);
    let html = get(&admin, &page).await.unwrap().text().await.unwrap();
    assert!(html.contains("Opened the EUR account: credit limit 20.00, low at 5.00."), "{html}");
    assert!(html.contains("0.00 EUR") && html.contains("Top up"), "{html}");

    // An operator tops up; a viewer sees the balance but no forms.
    let fields = vec![("csrf", operator_csrf.as_str()), ("amount", "12.34"), ("memo", "desk top-up")];
    let r = post(&operator, format!("{base}/EUR/deposit"), fields).await.unwrap();
    assert_eq!(r.status(), 303);
    let html = get(&operator, &page).await.unwrap().text().await.unwrap();
    assert!(html.contains("Topped up 12.34 EUR: the balance is now 12.34 EUR."), "{html}");
    assert!(!html.contains("Open an account or change one"), "account settings are for admins");
    assert_eq!(balance_minor(&app, "EUR").await, 1234);
    let rows = app.audit_rows("funding.deposit").await;
    assert!(rows[0].3.is_some(), "audited with the request id");
    // The same form sent twice (a double click): the second is answered, not posted.
    let form_key = hidden_value(&html, "idempotency_key");
    for _ in 0..2 {
        let fields = vec![("csrf", operator_csrf.as_str()), ("amount", "1.00"), ("idempotency_key", form_key.as_str())];
        assert_eq!(post(&operator, format!("{base}/EUR/deposit"), fields).await.unwrap().status(), 303);
    }
    let html = get(&operator, &page).await.unwrap().text().await.unwrap();
    assert!(html.contains("This top-up was already posted"), "{html}");
    assert_ne!(hidden_value(&html, "idempotency_key"), form_key, "each form shown has its own key");
    assert_eq!(balance_minor(&app, "EUR").await, 1334);
    let fields = vec![("csrf", operator_csrf.as_str()), ("amount", "1.001")];
    assert_eq!(post(&operator, format!("{base}/EUR/deposit"), fields).await.unwrap().status(), 303);
    let html = get(&operator, &page).await.unwrap().text().await.unwrap();
    assert!(html.contains("has more decimal places than the currency allows"), "said in words: {html}");
    assert_eq!(balance_minor(&app, "EUR").await, 1334);
    let html = get(&viewer, &page).await.unwrap().text().await.unwrap();
    assert!(html.contains("13.34 EUR") && !html.contains("name=\"amount\""), "{html}");
    let list = get(&viewer, &format!("{}/ops/clients", app.operator)).await.unwrap().text().await.unwrap();
    assert!(list.contains("13.34 EUR"), "the list shows balances: {list}");

    let csv = get(&viewer, &format!("{}{base}/EUR/statement.csv?from=&to=", app.operator)).await.unwrap();
    assert_eq!(csv.status(), 200);
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let rows = parse_csv(&csv.text().await.unwrap());
    assert_eq!((rows.len(), rows[1][3].as_str(), rows[1][7].as_str()), (3, "12.34", "desk top-up"));
    let dated = get(&viewer, &format!("{}{base}/EUR/statement.csv?from=2000-01-01&to=2000-01-02", app.operator));
    assert_eq!(parse_csv(&dated.await.unwrap().text().await.unwrap()).len(), 1, "only the header");
    app.finish().await;
}
