//! The audit trail is written in the transaction of the change it records: an action whose
//! audit row cannot be written changes nothing, and the actions not covered by their areas'
//! tests (operator revocation, product upserts, card loads) leave their rows.

mod common;

use allot_origin::ops::{self, Actor, NewCard};
use allot_shared::{Currency, Denomination, Region};
use common::{TestApp, operator_token};

/// An actor whose audit rows the table refuses (request ids are at most 128 characters).
fn unrecordable() -> Actor {
    Actor::operator(uuid::Uuid::now_v7(), Some(&"r".repeat(200)))
}

#[tokio::test]
async fn an_action_whose_audit_row_cannot_be_written_changes_nothing() {
    let app = TestApp::spawn().await;
    let (clients, keys, audit) =
        (app.count("clients", "").await, app.count("api_keys", "").await, app.count("audit_log", "").await);
    let eu = Region::parse("eu").unwrap();

    assert!(ops::create_client(&app.pool, &unrecordable(), "Nobody", &eu, None).await.is_err());
    assert!(ops::issue_key(&app.pool, &unrecordable(), app.client_id, None).await.is_err());
    let usd = Currency::parse("USD").unwrap();
    let ten = [Denomination::parse("10.00").unwrap()];
    assert!(ops::upsert_product(&app.pool, &unrecordable(), "ghost", "Ghost", usd, &ten).await.is_err());
    let suspended = ops::clients::set_client_active(&app.pool, &unrecordable(), app.client_id, false).await;
    assert!(suspended.is_err());

    assert_eq!(app.count("clients", "").await, clients);
    assert_eq!(app.count("api_keys", "").await, keys);
    assert_eq!(app.count("products", "id = 'ghost'").await, 0);
    assert_eq!(app.count("clients", "status = 'suspended'").await, 0);
    assert_eq!(app.count("audit_log", "").await, audit);
    app.finish().await;
}

#[tokio::test]
async fn revocations_product_upserts_and_card_loads_leave_their_rows() {
    let app = TestApp::spawn().await;
    let admin = operator_token(&app, "admin").await;
    let body = serde_json::json!({"name": "Temp", "role": "operator"});
    let created = app.ops("POST", "/ops/v1/operators", Some(&admin), Some(body)).await.json();
    let id = created["id"].as_str().unwrap();
    let revoked = app.ops("POST", &format!("/ops/v1/operators/{id}/revoke"), Some(&admin), None).await;
    assert_eq!(revoked.status, 200);
    let rows = app.audit_rows("operator.revoke").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, id);
    assert_eq!(rows[0].3.as_deref(), revoked.header("x-request-id").as_deref());

    app.product("audited", "EUR", &["25.00"]).await;
    let upsert = app.audit_rows("product.upsert").await;
    assert_eq!((upsert[0].1.as_str(), &upsert[0].2["denominations"]), ("audited", &serde_json::json!([2500])));
    assert!(upsert[0].0.starts_with("cli:"));

    let cards = vec![NewCard { code: "AUDITED-1".into(), pin: None, expires_at: None }];
    ops::load_cards(&app.pool, &Actor::cli(), None, &app.config.card_keys, "audited", 2500, &cards).await.unwrap();
    let load = app.audit_rows("inventory.load").await;
    assert_eq!((load[0].1.as_str(), &load[0].2["count"]), ("audited", &serde_json::json!(1)));
    assert!(!load[0].2.to_string().contains("AUDITED-1"), "an audit row never holds a code");
    app.finish().await;
}
