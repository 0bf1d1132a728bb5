//! Operators, their tokens and roles, and the append-only audit trail.

mod common;

use common::{TestApp, operator_token};
use serde_json::json;

#[tokio::test]
async fn a_token_authenticates_until_it_is_revoked_and_every_change_is_audited() {
    let app = TestApp::spawn().await;
    let admin = operator_token(&app, "admin").await;

    let me = app.ops("GET", "/ops/v1/me", Some(&admin), None).await;
    assert_eq!(me.status, 200, "{:?}", me.body);
    assert_eq!(me.json()["role"], "admin");
    let admin_id = me.json()["id"].as_str().unwrap().to_owned();

    // An admin creates a viewer through the API; the token comes back once.
    let created =
        app.ops("POST", "/ops/v1/operators", Some(&admin), Some(json!({"name": "Vera", "role": "viewer"}))).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let viewer = created.json()["token"].as_str().unwrap().to_owned();
    let viewer_id = created.json()["id"].as_str().unwrap().to_owned();
    assert!(viewer.starts_with("allotop_"));
    let listed = app.ops("GET", "/ops/v1/operators", Some(&admin), None).await.json();
    assert!(!listed.to_string().contains(&viewer), "a listing never shows a token");

    // The audit row names the operator and the request, and was written with the change.
    let rows = app.audit_rows("operator.create").await;
    let (actor, target, change, request_id) = &rows[0];
    assert_eq!(actor, &admin_id);
    assert_eq!(target, &viewer_id);
    assert_eq!(change["role"], "viewer");
    assert_eq!(request_id.as_deref(), created.header("x-request-id").as_deref());
    assert!(rows.iter().any(|r| r.0.starts_with("cli:")), "the admin made at the CLI is audited as cli:<user>");

    // A viewer reads but may not manage operators.
    assert_eq!(app.ops("GET", "/ops/v1/me", Some(&viewer), None).await.status, 200);
    let refused = app.ops("GET", "/ops/v1/operators", Some(&viewer), None).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.error_code(), "FORBIDDEN");
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("admin"));

    // Revoked: 401 at once.
    let path = format!("/ops/v1/operators/{viewer_id}/revoke");
    assert_eq!(app.ops("POST", &path, Some(&admin), None).await.status, 200);
    let after = app.ops("GET", "/ops/v1/me", Some(&viewer), None).await;
    assert_eq!(after.status, 401);
    assert_eq!(after.json()["error"]["message"], "the operator token has been revoked");
    assert_eq!(app.ops("POST", &path, Some(&admin), None).await.status, 404, "revoking twice finds no live token");
    app.finish().await;
}

#[tokio::test]
async fn bad_tokens_get_401_in_the_shared_shape() {
    let app = TestApp::spawn().await;
    let admin = operator_token(&app, "admin").await;
    let mut typo = admin.clone().into_bytes();
    let i = typo.len() - 12;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let unknown =
        allot_shared::OperatorToken::new("ZZZZZZZZZZZZZZZZ", "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ").unwrap().expose();
    for (token, message) in [
        (None, "an operator token is required: send the header Authorization: Bearer <operator token>"),
        (Some(typo.as_str()), "the operator token's checksum does not match"),
        (Some(unknown.as_str()), "the operator token is not valid"),
        (Some(app.key.as_str()), "the operator token is malformed"),
    ] {
        let r = app.ops("GET", "/ops/v1/audit", token, None).await;
        assert_eq!(r.status, 401, "{token:?}");
        assert_eq!(r.error_code(), "UNAUTHORIZED");
        assert_eq!(r.json()["error"]["message"], message);
        assert!(r.json()["error"]["request_id"].is_string());
    }
    // Expired: the clock moved past it.
    sqlx::query("UPDATE operators SET expires_at = now() - interval '1 second'").execute(&app.pool).await.unwrap();
    let r = app.ops("GET", "/ops/v1/me", Some(&admin), None).await;
    assert_eq!((r.status, r.json()["error"]["message"].as_str()), (401, Some("the operator token has expired")));
    app.finish().await;
}

#[tokio::test]
async fn the_audit_log_is_append_only_and_pages_with_filters() {
    let app = TestApp::spawn().await;
    let admin = operator_token(&app, "admin").await;
    for i in 0..5 {
        let body = json!({"name": format!("op {i}"), "role": "viewer"});
        assert_eq!(app.ops("POST", "/ops/v1/operators", Some(&admin), Some(body)).await.status, 201);
    }

    // Neither UPDATE, DELETE nor TRUNCATE gets through, whoever sends it.
    for sql in ["UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log", "TRUNCATE audit_log"] {
        let err = sqlx::query(sql).execute(&app.pool).await.unwrap_err();
        assert!(err.to_string().contains("audit_log is append-only"), "{sql}: {err}");
    }
    // Even the retention switch prunes only rows past the 30-day floor.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL allot.audit_prune = 'on'").execute(&mut *tx).await.unwrap();
    assert!(sqlx::query("DELETE FROM audit_log").execute(&mut *tx).await.is_err(), "young rows stay");
    drop(tx);

    // Pages of two, newest first, filtered by action prefix; the cursor walks to the end.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/ops/v1/audit?action=operator.&limit=2".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = app.ops("GET", &path, Some(&admin), None).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let doc = page.json();
        for item in doc["items"].as_array().unwrap() {
            seen.push(item["id"].as_i64().unwrap());
            assert!(item["action"].as_str().unwrap().starts_with("operator."));
        }
        match doc["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6, "the CLI-made admin and five through the API");
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first, no repeats: {seen:?}");

    for bad in ["limit=0", "limit=101", "cursor=nope", "since=yesterday", "colour=blue"] {
        let r = app.ops("GET", &format!("/ops/v1/audit?{bad}"), Some(&admin), None).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"), "{bad}");
    }
    app.finish().await;
}
