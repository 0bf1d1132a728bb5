//! The OpenAPI document against the running code: it is served on the operator listener, every
//! route of the public router is documented, and real answers match their documented schemas.

mod common;

use std::collections::BTreeSet;

use allot_origin::openapi::check::{resolve, violations};
use axum::body::Body;
use axum::http::Request;
use common::{Reply, TestApp, operator_token};
use serde_json::{Value, json};
use tower::ServiceExt;

fn document() -> Value {
    serde_json::to_value(allot_origin::openapi::document()).unwrap()
}

/// The paths a router matches, read from its `Debug` form (axum has no listing API): the first
/// `paths: {…}` is the route table, the second the fallback's.
fn routed_paths(router: &axum::Router) -> BTreeSet<String> {
    let text = format!("{router:?}");
    let start = text.find("node: Node { paths: {").expect("axum's Debug shows the route table") + 21;
    let table = &text[start..start + text[start..].find("} }").unwrap()];
    table.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

/// A concrete path for a template (`{id}` becomes a UUID).
fn concrete(path: &str) -> String {
    path.replace("{id}", "0192f0c1-7c7e-7000-8000-000000000001")
}

/// Whether the router answered from its fallback: `404 NOT_FOUND "no route for …"`.
async fn is_unrouted(router: &axum::Router, method: &str, path: &str) -> bool {
    let req = Request::builder().method(method).uri(concrete(path)).body(Body::empty()).unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    if resp.status() != 404 {
        return false;
    }
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    body["error"]["message"].as_str().is_some_and(|m| m.starts_with("no route for"))
}

#[tokio::test]
async fn every_route_of_the_public_router_is_documented_and_every_documented_one_is_routed() {
    let app = TestApp::spawn().await;
    let router = allot_origin::http::public_router(app.state.clone());
    let doc = document();
    let paths = routed_paths(&router);
    assert!(paths.contains("/v1/allocations") && paths.contains("/livez"), "route table not found: {paths:?}");
    let documented = |method: &str, path: &str| doc["paths"][path].get(method.to_lowercase()).is_some();
    for path in &paths {
        assert!(doc["paths"].get(path).is_some(), "the public router serves {path}, which is not documented");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            if !is_unrouted(&router, method, path).await {
                assert!(documented(method, path), "the public router serves {method} {path}, which is not documented");
            }
        }
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path.starts_with("/ops/") {
            continue;
        }
        for method in item.as_object().unwrap().keys().filter(|k| *k != "servers" && *k != "parameters") {
            let method = method.to_uppercase();
            assert!(!is_unrouted(&router, &method, path).await, "{method} {path} is documented but not routed");
        }
    }
    app.finish().await;
}

#[tokio::test]
async fn the_operator_listener_serves_the_document_without_a_token() {
    let app = TestApp::spawn().await;
    let reply = app.ops("GET", "/openapi.json", None, None).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(reply.json(), document());
    assert_eq!(reply.json()["openapi"], "3.1.0");
    // The public listener serves the callers' part at /v1/openapi.json, not the whole.
    let public = app.send("GET", "/openapi.json", None, None, b"").await;
    assert_eq!(public.status, 404);
    app.finish().await;
}

#[tokio::test]
async fn the_public_listener_serves_the_callers_document_without_a_key_with_an_etag() {
    let app = TestApp::spawn().await;
    let public = serde_json::to_value(allot_origin::openapi::public_document()).unwrap();
    // No key and no edge signature: the document is open.
    let reply = app.http.get(format!("{}/v1/openapi.json", app.base)).send().await.unwrap();
    let reply = common::read(reply).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(reply.header("cache-control").as_deref(), Some("max-age=300"));
    assert_eq!(reply.json(), public);
    assert_eq!(public["openapi"], "3.1.0");
    let paths: BTreeSet<&str> = public["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    let want = [
        "/readyz",
        "/v1/allocations",
        "/v1/allocations/{id}",
        "/v1/balance",
        "/v1/ledger",
        "/v1/openapi.json",
        "/v1/products",
    ];
    assert_eq!(paths, BTreeSet::from(want), "the callers' operations only");
    assert!(public["components"]["securitySchemes"].get("operator_token").is_none());
    assert_documented(&document(), "GET", "/v1/openapi.json", &reply);

    let etag = reply.header("etag").expect("an ETag");
    let again = app.http.get(format!("{}/v1/openapi.json", app.base)).header("if-none-match", &etag).send().await;
    let again = common::read(again.unwrap()).await;
    assert_eq!((again.status, again.body.len()), (304, 0));
    assert_eq!(again.header("etag"), Some(etag));
    app.finish().await;
}

/// Check a reply against the documented response of `method path` for its status.
fn assert_documented(doc: &Value, method: &str, path: &str, reply: &Reply) {
    let operation = &doc["paths"][path][method.to_lowercase()];
    let response = &operation["responses"][reply.status.to_string()];
    assert!(
        !response.is_null(),
        "{method} {path} answered {}, which is not documented: {:?}",
        reply.status,
        reply.body
    );
    let response = resolve(doc, response);
    let content_type = reply.header("content-type").unwrap_or_default();
    let content = &response["content"][content_type.as_str()];
    assert!(!content.is_null(), "{method} {path} {}: {content_type} is not documented", reply.status);
    let mut out = Vec::new();
    violations(doc, &content["schema"], &reply.json(), "body", &mut out);
    assert!(out.is_empty(), "{method} {path} {} does not match its schema: {out:?}", reply.status);
    for name in response["headers"].as_object().into_iter().flat_map(|h| h.keys()) {
        // These come with some answers only (a replay, a limit checked in Valkey, a retryable error).
        let sometimes = ["ratelimit", "ratelimit-policy", "idempotent-replayed", "retry-after"];
        if !sometimes.contains(&name.as_str()) {
            assert!(reply.header(name).is_some(), "{method} {path} {}: no {name} header", reply.status);
        }
    }
}

#[tokio::test]
async fn operator_answers_match_their_documented_schemas() {
    let app = TestApp::spawn().await;
    let doc = document();
    let admin = operator_token(&app, "admin").await;
    let viewer = operator_token(&app, "viewer").await;

    let reply = app.ops("GET", "/ops/v1/me", Some(&viewer), None).await;
    assert_documented(&doc, "GET", "/ops/v1/me", &reply);
    let body = json!({ "name": "Ana", "role": "operator", "valid_days": 30 });
    let created = app.ops("POST", "/ops/v1/operators", Some(&admin), Some(body)).await;
    assert_eq!(created.status, 201);
    assert_documented(&doc, "POST", "/ops/v1/operators", &created);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let revoke = format!("/ops/v1/operators/{id}/revoke");
    let revoked = app.ops("POST", &revoke, Some(&admin), None).await;
    assert_documented(&doc, "POST", "/ops/v1/operators/{id}/revoke", &revoked);
    let listed = app.ops("GET", "/ops/v1/operators", Some(&admin), None).await;
    assert!(listed.json()["items"].as_array().unwrap().iter().any(|o| !o["revoked_at"].is_null()));
    assert_documented(&doc, "GET", "/ops/v1/operators", &listed);
    let audit = app.ops("GET", "/ops/v1/audit?limit=1", Some(&viewer), None).await;
    assert!(audit.json()["next_cursor"].is_string(), "two changes, one per page");
    assert_documented(&doc, "GET", "/ops/v1/audit", &audit);

    // Errors: documented statuses, in the shared shape.
    let cases = [
        ("GET", "/ops/v1/me", None, None),
        ("GET", "/ops/v1/operators", Some(viewer.as_str()), None),
        ("GET", "/ops/v1/audit?limit=0", Some(viewer.as_str()), None),
        ("POST", "/ops/v1/operators", Some(admin.as_str()), Some(json!({ "name": "x", "role": "root" }))),
        ("POST", "/ops/v1/operators/{id}/revoke", Some(admin.as_str()), None),
    ];
    let expected = [401, 403, 400, 400, 404];
    for ((method, path, token, body), status) in cases.into_iter().zip(expected) {
        let reply = app.ops(method, &path.replace("{id}", &id), token, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {:?}", reply.body);
        assert_documented(&doc, method, path.split('?').next().unwrap(), &reply);
    }
    stock_and_job_answers_match_their_documented_schemas(&app, &doc, &admin, &viewer).await;
    import_answers_match_their_documented_schemas(&app, &doc, &admin, &viewer).await;
    client_and_key_answers_match_their_documented_schemas(&app, &doc, &admin, &viewer).await;
    void_and_allocation_answers_match_their_documented_schemas(&app, &doc, &admin, &viewer).await;
    app.finish().await;
}

/// An error case: (method, path sent, documented path, token, body, status, whether its message
/// is one of the documented examples: those made by calling the code the handler calls).
type Case<'a> = (&'a str, String, &'a str, &'a str, Option<Value>, u16, bool);

/// Send each case and check its answer against the document.
async fn assert_errors_documented(app: &TestApp, doc: &Value, cases: Vec<Case<'_>>) {
    for (method, path, documented, token, body, status, exact) in cases {
        let reply = app.ops(method, &path, Some(token), body).await;
        assert_eq!(reply.status, status, "{method} {path}: {:?}", reply.body);
        assert_documented(doc, method, documented, &reply);
        if exact {
            assert_documented_example(doc, method, documented, &reply);
        }
    }
}

/// The error message of `reply` is one of the documented examples of its status.
fn assert_documented_example(doc: &Value, method: &str, documented: &str, reply: &Reply) {
    let examples = &doc["paths"][documented][method.to_lowercase()]["responses"][reply.status.to_string()]["content"]["application/json"]
        ["examples"];
    let message = &reply.json()["error"]["message"];
    assert!(
        examples.as_object().unwrap().values().any(|e| &e["value"]["error"]["message"] == message),
        "{method} {documented}: {message} is not a documented example"
    );
}

/// `POST /ops/v1/imports?<query>` with a CSV body.
async fn upload(app: &TestApp, token: &str, query: &str, csv: &str) -> Reply {
    let url = format!("{}/ops/v1/imports?{query}", app.operator);
    let req = app.http.post(url).bearer_auth(token).header("content-type", "text/csv").body(csv.to_owned());
    common::read(req.send().await.expect("upload sent")).await
}

/// The imports routes: an import committed and one rejected, the listing, one import, and
/// their errors.
async fn import_answers_match_their_documented_schemas(app: &TestApp, doc: &Value, admin: &str, viewer: &str) {
    app.product("p-imp", "EUR", &["25.00"]).await;
    let csv = "code,pin,expires_at\nDOC-0001,1234,2099-12-31T23:59:59Z\nDOC-0002,,\n\"DOC,0003\",9999,\n";
    let created = upload(app, admin, "product_id=p-imp&denomination=25.00", csv).await;
    assert_eq!((created.status, created.json()["state"].as_str()), (201, Some("committed")), "{:?}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(created.header("location"), Some(format!("/ops/v1/imports/{id}")));
    assert_documented(doc, "POST", "/ops/v1/imports", &created);
    let rejected = upload(app, admin, "product_id=p-imp&denomination=25.00", csv).await;
    assert_eq!(rejected.status, 400, "{:?}", rejected.body);
    assert_eq!(rejected.json()["error"]["details"]["problems"][0]["problem"], "this code is already loaded");
    assert_documented(doc, "POST", "/ops/v1/imports", &rejected);
    let one = app.ops("GET", &format!("/ops/v1/imports/{id}"), Some(viewer), None).await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    assert_documented(doc, "GET", "/ops/v1/imports/{id}", &one);
    let page = app.ops("GET", "/ops/v1/imports?limit=1", Some(viewer), None).await;
    assert_eq!(page.json()["items"][0]["state"], "rejected", "newest first: {:?}", page.body);
    assert!(page.json()["next_cursor"].is_string(), "two imports, one per page: {:?}", page.body);
    assert_documented(doc, "GET", "/ops/v1/imports", &page);

    let missing = upload(app, admin, "denomination=25.00", csv).await;
    assert_eq!(missing.status, 400, "{:?}", missing.body);
    assert_documented(doc, "POST", "/ops/v1/imports", &missing);
    assert_documented_example(doc, "POST", "/ops/v1/imports", &missing);
    let unknown = upload(app, admin, "product_id=p-imp&denomination=25.00&colour=blue", csv).await;
    assert_documented_example(doc, "POST", "/ops/v1/imports", &unknown);
    let forbidden = upload(app, viewer, "product_id=p-imp&denomination=25.00", csv).await;
    assert_eq!(forbidden.status, 403, "{:?}", forbidden.body);
    assert_documented(doc, "POST", "/ops/v1/imports", &forbidden);
    let nobody = uuid::Uuid::now_v7();
    let show = "/ops/v1/imports/{id}";
    assert_errors_documented(
        app,
        doc,
        vec![
            ("GET", "/ops/v1/imports/nope".into(), show, viewer, None, 400, true),
            ("GET", format!("/ops/v1/imports/{nobody}"), show, viewer, None, 404, false),
            ("GET", "/ops/v1/imports?limit=0".into(), "/ops/v1/imports", viewer, None, 400, true),
            ("GET", "/ops/v1/imports?colour=blue".into(), "/ops/v1/imports", viewer, None, 400, true),
        ],
    )
    .await;
}

/// The clients and keys routes: each answers a success and its errors as documented.
async fn client_and_key_answers_match_their_documented_schemas(app: &TestApp, doc: &Value, admin: &str, viewer: &str) {
    let created = app.ops("POST", "/ops/v1/clients", Some(admin), Some(json!({ "name": "Doc shop" }))).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_documented(doc, "POST", "/ops/v1/clients", &created);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let client = format!("/ops/v1/clients/{id}");

    let issued = app.ops("POST", &format!("{client}/keys"), Some(admin), Some(json!({ "label": "doc" }))).await;
    assert_eq!(issued.status, 201, "{:?}", issued.body);
    assert_documented(doc, "POST", "/ops/v1/clients/{id}/keys", &issued);
    let key_id = issued.json()["key_id"].as_str().unwrap().to_owned();
    let body = json!({ "overlap_secs": 600 });
    let rotated = app.ops("POST", &format!("/ops/v1/keys/{key_id}/rotate"), Some(admin), Some(body)).await;
    assert_eq!(rotated.status, 201, "{:?}", rotated.body);
    assert_documented(doc, "POST", "/ops/v1/keys/{key_id}/rotate", &rotated);
    let new_key_id = rotated.json()["key_id"].as_str().unwrap().to_owned();
    let revoked = app.ops("POST", &format!("/ops/v1/keys/{new_key_id}/revoke"), Some(admin), None).await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert_documented(doc, "POST", "/ops/v1/keys/{key_id}/revoke", &revoked);
    let unlabelled = app.ops("POST", &format!("{client}/keys"), Some(admin), Some(json!({}))).await;
    assert_eq!((unlabelled.status, &unlabelled.json()["label"]), (201, &Value::Null), "{:?}", unlabelled.body);
    assert_documented(doc, "POST", "/ops/v1/clients/{id}/keys", &unlabelled);

    for (action, status) in [("suspend", "suspended"), ("suspend", "suspended"), ("resume", "active")] {
        let reply = app.ops("POST", &format!("{client}/{action}"), Some(admin), None).await;
        assert_eq!((reply.status, reply.json()["status"].as_str()), (200, Some(status)), "{:?}", reply.body);
        assert_documented(doc, "POST", &format!("/ops/v1/clients/{{id}}/{action}"), &reply);
    }
    for limit in [json!(1200), Value::Null] {
        let reply =
            app.ops("PUT", &format!("{client}/rate-limit"), Some(admin), Some(json!({ "per_minute": limit }))).await;
        assert_eq!((reply.status, &reply.json()["rate_limit_per_minute"]), (200, &limit), "{:?}", reply.body);
        assert_documented(doc, "PUT", "/ops/v1/clients/{id}/rate-limit", &reply);
    }
    let shown = app.ops("GET", &client, Some(viewer), None).await;
    let states: Vec<Value> = shown.json()["keys"].as_array().unwrap().iter().map(|k| k["state"].clone()).collect();
    assert_eq!(states.len(), 3, "{:?}", shown.body);
    assert!(states.contains(&json!("expiring")) && states.contains(&json!("revoked")), "{states:?}");
    assert_documented(doc, "GET", "/ops/v1/clients/{id}", &shown);
    let listed = app.ops("GET", "/ops/v1/clients?status=active", Some(viewer), None).await;
    assert!(listed.json()["items"].as_array().unwrap().iter().any(|c| c["id"] == id.as_str()), "{:?}", listed.body);
    assert_documented(doc, "GET", "/ops/v1/clients", &listed);

    let nobody = uuid::Uuid::now_v7();
    let (keys, rate_limit) = ("/ops/v1/clients/{id}/keys", "/ops/v1/clients/{id}/rate-limit");
    let (rotate, revoke) = ("/ops/v1/keys/{key_id}/rotate", "/ops/v1/keys/{key_id}/revoke");
    let overlap = Some(json!({ "overlap_secs": 60 }));
    assert_errors_documented(
        app,
        doc,
        vec![
            ("GET", "/ops/v1/clients?status=gone".into(), "/ops/v1/clients", viewer, None, 400, true),
            ("GET", "/ops/v1/clients?colour=blue".into(), "/ops/v1/clients", viewer, None, 400, true),
            ("POST", "/ops/v1/clients".into(), "/ops/v1/clients", admin, Some(json!({})), 400, true),
            ("POST", "/ops/v1/clients".into(), "/ops/v1/clients", viewer, Some(json!({ "name": "x" })), 403, false),
            ("GET", "/ops/v1/clients/nope".into(), "/ops/v1/clients/{id}", viewer, None, 400, true),
            ("GET", format!("/ops/v1/clients/{nobody}"), "/ops/v1/clients/{id}", viewer, None, 404, false),
            (
                "POST",
                format!("/ops/v1/clients/{nobody}/suspend"),
                "/ops/v1/clients/{id}/suspend",
                admin,
                None,
                404,
                false,
            ),
            ("POST", "/ops/v1/clients/nope/resume".into(), "/ops/v1/clients/{id}/resume", admin, None, 400, true),
            ("PUT", format!("{client}/rate-limit"), rate_limit, admin, Some(json!({})), 400, true),
            ("PUT", format!("{client}/rate-limit"), rate_limit, admin, Some(json!({ "per_minute": "ten" })), 400, true),
            ("PUT", format!("{client}/rate-limit"), rate_limit, admin, Some(json!({ "per_minute": 0 })), 400, true),
            (
                "PUT",
                format!("/ops/v1/clients/{nobody}/rate-limit"),
                rate_limit,
                admin,
                Some(json!({ "per_minute": 5 })),
                404,
                false,
            ),
            ("POST", format!("/ops/v1/clients/{nobody}/keys"), keys, admin, Some(json!({})), 404, false),
            ("POST", format!("{client}/keys"), keys, admin, Some(json!({ "label": "x".repeat(201) })), 400, true),
            ("POST", "/ops/v1/keys/nope/revoke".into(), revoke, admin, None, 404, false),
            ("POST", format!("/ops/v1/keys/{key_id}/rotate"), rotate, admin, Some(json!({})), 400, true),
            ("POST", format!("/ops/v1/keys/{key_id}/rotate"), rotate, admin, overlap.clone(), 400, false),
            ("POST", format!("/ops/v1/keys/{new_key_id}/rotate"), rotate, admin, overlap.clone(), 400, true),
            ("POST", "/ops/v1/keys/nope/rotate".into(), rotate, admin, overlap, 404, false),
        ],
    )
    .await;
}

/// The voids and allocation lookup routes, and the public allocation after a void.
async fn void_and_allocation_answers_match_their_documented_schemas(
    app: &TestApp,
    doc: &Value,
    admin: &str,
    viewer: &str,
) {
    app.product("p-void", "EUR", &["25.00"]).await;
    app.load_cards("p-void", 2500, 3).await;
    let body = r#"{"product_id":"p-void","denomination":"25.00","quantity":2,"client_reference":"doc-void"}"#;
    let allocated = app.allocate("openapi-void", body).await;
    assert_eq!(allocated.status, 201, "{:?}", allocated.body);
    let allocation = allocated.json()["allocation_id"].as_str().unwrap().to_owned();
    let card = allocated.json()["cards"][1]["card_id"].clone();

    let body = json!({ "card_ids": [card], "reason": "supplier recall" });
    let voided = app.ops("POST", "/ops/v1/voids", Some(admin), Some(body)).await;
    assert_eq!((voided.status, &voided.json()["voided_allocated"]), (200, &json!(1)), "{:?}", voided.body);
    assert_documented(doc, "POST", "/ops/v1/voids", &voided);
    let body = json!({ "product_id": "p-void", "denomination": "25.00", "reason": "recall" });
    let bucket = app.ops("POST", "/ops/v1/voids", Some(admin), Some(body)).await;
    assert_eq!((bucket.status, &bucket.json()["skipped_allocated"]), (200, &json!(1)), "{:?}", bucket.body);
    assert_documented(doc, "POST", "/ops/v1/voids", &bucket);

    let public = app.send("GET", &format!("/v1/allocations/{allocation}"), Some(&app.key), None, b"").await;
    assert!(public.json()["cards"][1]["voided_at"].is_string(), "{:?}", public.body);
    assert!(public.json()["cards"][0].get("voided_at").is_none(), "{:?}", public.body);
    assert_documented(doc, "GET", "/v1/allocations/{id}", &public);
    let found = app.ops("GET", "/ops/v1/allocations?client_reference=doc-void", Some(viewer), None).await;
    assert_eq!(found.json()["items"][0]["cards"][1]["status"], "void", "{:?}", found.body);
    assert_documented(doc, "GET", "/ops/v1/allocations", &found);
    let one = app.ops("GET", &format!("/ops/v1/allocations/{allocation}"), Some(viewer), None).await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    assert_documented(doc, "GET", "/ops/v1/allocations/{id}", &one);
    let revealed = app.ops("POST", &format!("/ops/v1/allocations/{allocation}/reveal"), Some(admin), None).await;
    assert_eq!(revealed.status, 200, "{:?}", revealed.body);
    assert_eq!(revealed.header("cache-control").as_deref(), Some("no-store"));
    assert_documented(doc, "POST", "/ops/v1/allocations/{id}/reveal", &revealed);

    let nobody = uuid::Uuid::now_v7();
    let (voids, find) = ("/ops/v1/voids", "/ops/v1/allocations");
    let (show, reveal) = ("/ops/v1/allocations/{id}", "/ops/v1/allocations/{id}/reveal");
    let reason = |body: Value| {
        let mut body = body;
        body["reason"] = json!("recall");
        Some(body)
    };
    assert_errors_documented(
        app,
        doc,
        vec![
            ("POST", voids.into(), voids, admin, reason(json!({})), 400, true),
            ("POST", voids.into(), voids, admin, reason(json!({ "product_id": "p-void" })), 400, true),
            ("POST", voids.into(), voids, admin, Some(json!({ "card_ids": [card] })), 400, true),
            ("POST", voids.into(), voids, admin, reason(json!({ "card_ids": [999_999_999] })), 404, false),
            ("POST", voids.into(), voids, admin, reason(json!({ "import_id": nobody })), 404, false),
            ("POST", voids.into(), voids, viewer, reason(json!({ "card_ids": [card] })), 403, false),
            ("GET", find.into(), find, viewer, None, 400, true),
            ("GET", "/ops/v1/allocations?client_id=nope".into(), find, viewer, None, 400, true),
            ("GET", "/ops/v1/allocations?card_id=1&colour=blue".into(), find, viewer, None, 400, true),
            ("GET", "/ops/v1/allocations?client_reference=doc-void&limit=0".into(), find, viewer, None, 400, true),
            ("GET", format!("/ops/v1/allocations/{nobody}"), show, viewer, None, 404, false),
            ("GET", "/ops/v1/allocations/nope".into(), show, viewer, None, 400, true),
            ("POST", format!("/ops/v1/allocations/{nobody}/reveal"), reveal, admin, None, 404, false),
            ("POST", format!("/ops/v1/allocations/{allocation}/reveal"), reveal, viewer, None, 403, false),
        ],
    )
    .await;
}

/// The stock, jobs and divergences routes: each answers a success and its errors as documented.
async fn stock_and_job_answers_match_their_documented_schemas(app: &TestApp, doc: &Value, admin: &str, viewer: &str) {
    app.product("p-doc", "EUR", &["25.00", "50.00"]).await;
    app.load_cards("p-doc", 2500, 2).await;
    let stock = app.ops("GET", "/ops/v1/stock?product_id=p-doc", Some(viewer), None).await;
    assert_eq!(stock.status, 200, "{:?}", stock.body);
    assert_eq!(stock.json()["items"].as_array().unwrap().len(), 2, "two buckets: {:?}", stock.body);
    assert_documented(doc, "GET", "/ops/v1/stock", &stock);
    let threshold = "/ops/v1/stock/{product_id}/{denomination}/threshold";
    let body = json!({ "low_stock_threshold": 5 });
    let set = app.ops("PUT", "/ops/v1/stock/p-doc/25.00/threshold", Some(admin), Some(body)).await;
    assert_eq!((set.status, set.json()["threshold_source"].as_str()), (200, Some("bucket")), "{:?}", set.body);
    assert_documented(doc, "PUT", threshold, &set);

    let run = app.ops("POST", "/ops/v1/jobs/stock-watch/run", Some(admin), None).await;
    assert_eq!(run.status, 202, "{:?}", run.body);
    assert_documented(doc, "POST", "/ops/v1/jobs/{name}/run", &run);
    let run_id = run.json()["run_id"].clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let runs = loop {
        let runs = app.ops("GET", "/ops/v1/jobs/stock-watch/runs?limit=1", Some(viewer), None).await;
        assert_eq!((runs.status, &runs.json()["items"][0]["id"]), (200, &run_id), "{:?}", runs.body);
        if runs.json()["items"][0]["outcome"] != "running" {
            break runs;
        }
        assert!(std::time::Instant::now() < deadline, "the run finished within 60 s: {:?}", runs.body);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_documented(doc, "GET", "/ops/v1/jobs/{name}/runs", &runs);
    for (method, action, body) in
        [("POST", "pause", None), ("POST", "resume", None), ("PUT", "schedule", Some(json!({ "interval_secs": 60 })))]
    {
        let reply = app.ops(method, &format!("/ops/v1/jobs/stock-watch/{action}"), Some(admin), body).await;
        assert_eq!(reply.status, 200, "{action}: {:?}", reply.body);
        assert_documented(doc, method, &format!("/ops/v1/jobs/{{name}}/{action}"), &reply);
    }
    let jobs = app.ops("GET", "/ops/v1/jobs", Some(viewer), None).await;
    let watch = jobs.json()["items"].as_array().unwrap().iter().find(|j| j["name"] == "stock-watch").cloned();
    let watch = watch.unwrap_or_else(|| panic!("stock-watch is listed: {:?}", jobs.body));
    assert!(watch["updated_by"].is_string() && watch["last_runs"][0]["slot"].is_null(), "{watch}");
    assert_documented(doc, "GET", "/ops/v1/jobs", &jobs);

    sqlx::query(
        "INSERT INTO cache_divergences (product_id, denomination_minor, postgres_active, cache_active, healed)
         VALUES ('p-doc', 2500, 2, NULL, true), ('p-doc', 2500, 2, 1, false)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let divergences = app.ops("GET", "/ops/v1/divergences?product_id=p-doc&limit=1", Some(viewer), None).await;
    assert!(divergences.json()["next_cursor"].is_string(), "two rows, one per page: {:?}", divergences.body);
    assert_documented(doc, "GET", "/ops/v1/divergences", &divergences);

    // Errors: (method, path sent, documented path, token, body, status).
    let schedule = "/ops/v1/jobs/{name}/schedule";
    let cases = [
        ("GET", "/ops/v1/stock?state=full", "/ops/v1/stock", viewer, None, 400),
        ("GET", "/ops/v1/stock?colour=blue", "/ops/v1/stock", viewer, None, 400),
        ("PUT", "/ops/v1/stock/p-doc/25.00/threshold", threshold, admin, Some(json!({})), 400),
        (
            "PUT",
            "/ops/v1/stock/p-doc/25.001/threshold",
            threshold,
            admin,
            Some(json!({ "low_stock_threshold": 5 })),
            400,
        ),
        (
            "PUT",
            "/ops/v1/stock/p-doc/30.00/threshold",
            threshold,
            admin,
            Some(json!({ "low_stock_threshold": 5 })),
            404,
        ),
        (
            "PUT",
            "/ops/v1/stock/p-doc/25.00/threshold",
            threshold,
            viewer,
            Some(json!({ "low_stock_threshold": 5 })),
            403,
        ),
        ("GET", "/ops/v1/jobs/stock-watch/runs?limit=0", "/ops/v1/jobs/{name}/runs", viewer, None, 400),
        ("GET", "/ops/v1/jobs/nope/runs", "/ops/v1/jobs/{name}/runs", viewer, None, 404),
        ("POST", "/ops/v1/jobs/nope/pause", "/ops/v1/jobs/{name}/pause", admin, None, 404),
        ("POST", "/ops/v1/jobs/nope/resume", "/ops/v1/jobs/{name}/resume", admin, None, 404),
        ("PUT", "/ops/v1/jobs/stock-watch/schedule", schedule, admin, Some(json!({ "interval_secs": 1 })), 400),
        ("PUT", "/ops/v1/jobs/nope/schedule", schedule, admin, Some(json!({ "interval_secs": 60 })), 404),
        ("POST", "/ops/v1/jobs/nope/run", "/ops/v1/jobs/{name}/run", admin, None, 404),
        ("POST", "/ops/v1/jobs/stock-watch/run", "/ops/v1/jobs/{name}/run", viewer, None, 403),
        ("GET", "/ops/v1/divergences?cursor=nope", "/ops/v1/divergences", viewer, None, 400),
        ("GET", "/ops/v1/divergences?colour=blue", "/ops/v1/divergences", viewer, None, 400),
        ("GET", "/ops/v1/jobs/stock-watch/runs?colour=blue", "/ops/v1/jobs/{name}/runs", viewer, None, 400),
        ("PUT", "/ops/v1/jobs/stock-watch/schedule", schedule, admin, Some(json!({})), 400),
    ];
    for (method, path, documented, token, body, status) in cases {
        // These examples are made by calling the code the handler calls: they are the real answer.
        let exact = path.ends_with("colour=blue") || path.contains("/nope/") || body == Some(json!({}));
        let reply = app.ops(method, path, Some(token), body).await;
        assert_eq!(reply.status, status, "{method} {path}: {:?}", reply.body);
        assert_documented(doc, method, documented, &reply);
        if exact {
            let examples = &doc["paths"][documented][method.to_lowercase()]["responses"][status.to_string()]["content"]
                ["application/json"]["examples"];
            let message = &reply.json()["error"]["message"];
            assert!(
                examples.as_object().unwrap().values().any(|e| &e["value"]["error"]["message"] == message),
                "{method} {path}: {message} is not a documented example"
            );
        }
    }
}

#[tokio::test]
async fn public_answers_match_their_documented_schemas() {
    let app = TestApp::spawn().await;
    let doc = document();
    app.product("p-open", "EUR", &["25.00"]).await;
    app.load_cards("p-open", 2500, 3).await;

    let body = r#"{"product_id":"p-open","denomination":"25.00","quantity":2,"client_reference":"o-1"}"#;
    let created = app.allocate("openapi-1", body).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_documented(&doc, "POST", "/v1/allocations", &created);
    let id = created.json()["allocation_id"].as_str().unwrap().to_owned();
    assert_eq!(created.header("location"), Some(format!("/v1/allocations/{id}")));
    let replayed = app.allocate("openapi-1", body).await;
    assert_eq!(replayed.header("idempotent-replayed").as_deref(), Some("true"));
    assert_documented(&doc, "POST", "/v1/allocations", &replayed);
    let listed = app.send("GET", "/v1/allocations?limit=1&product_id=p-open", Some(&app.key), None, b"").await;
    assert_eq!(listed.json()["items"][0]["allocation_id"], id, "{:?}", listed.body);
    assert_documented(&doc, "GET", "/v1/allocations", &listed);
    for query in ["?colour=blue", "?limit=0", "?created_after=yesterday", "?cursor=nope", "?product_id=%20"] {
        let refused = app.send("GET", &format!("/v1/allocations{query}"), Some(&app.key), None, b"").await;
        assert_eq!(refused.status, 400, "{query}: {:?}", refused.body);
        assert_documented(&doc, "GET", "/v1/allocations", &refused);
    }
    let unknown = app.send("GET", "/v1/allocations?colour=blue", Some(&app.key), None, b"").await;
    let examples =
        &doc["paths"]["/v1/allocations"]["get"]["responses"]["400"]["content"]["application/json"]["examples"];
    let message = &unknown.json()["error"]["message"];
    assert!(
        examples.as_object().unwrap().values().any(|e| &e["value"]["error"]["message"] == message),
        "the unknown-parameter example is the real answer: {message}"
    );
    let one = app.send("GET", &format!("/v1/allocations/{id}"), Some(&app.key), None, b"").await;
    assert_documented(&doc, "GET", "/v1/allocations/{id}", &one);
    let products = app.send("GET", "/v1/products", Some(&app.key), None, b"").await;
    assert_documented(&doc, "GET", "/v1/products", &products);
    // Funding, after the allocations (so nothing above was charged): an account with entries.
    for sql in [
        "INSERT INTO funding_accounts (client_id, currency, balance_minor, credit_limit_minor) VALUES ($1, 'EUR', 19000, 5000)",
        "INSERT INTO ledger_entries (client_id, currency, kind, debit_account, credit_account, amount_minor, memo)
         VALUES ($1, 'EUR', 'deposit', 'deposits', 'client', 20000, 'top-up'),
                ($1, 'EUR', 'adjustment', 'client', 'adjustments', 1000, NULL)",
    ] {
        sqlx::query(sql).bind(app.client_id).execute(&app.pool).await.unwrap();
    }
    let balance = app.send("GET", "/v1/balance", Some(&app.key), None, b"").await;
    assert_eq!(balance.json()["balances"][0]["available"], "240.00", "{:?}", balance.body);
    assert_documented(&doc, "GET", "/v1/balance", &balance);
    let ledger = app.send("GET", "/v1/ledger?limit=1&currency=EUR", Some(&app.key), None, b"").await;
    assert!(ledger.json()["next_cursor"].is_string(), "{:?}", ledger.body);
    assert_documented(&doc, "GET", "/v1/ledger", &ledger);
    for query in ["?colour=blue", "?kind=debit", "?currency=ZZZ", "?cursor=nope"] {
        let refused = app.send("GET", &format!("/v1/ledger{query}"), Some(&app.key), None, b"").await;
        assert_eq!(refused.status, 400, "{query}: {:?}", refused.body);
        assert_documented(&doc, "GET", "/v1/ledger", &refused);
    }
    for path in ["/livez", "/readyz"] {
        let reply = app.send("GET", path, None, None, b"").await;
        assert_documented(&doc, "GET", path, &reply);
    }

    let too_many = r#"{"product_id":"p-open","denomination":"25.00","quantity":5}"#;
    let errors = [
        app.allocate("openapi-2", too_many).await,
        app.allocate("openapi-1", too_many).await,
        app.send("POST", "/v1/allocations", Some(&app.key), None, body.as_bytes()).await,
        app.send("POST", "/v1/allocations", None, Some("openapi-3"), body.as_bytes()).await,
    ];
    for (reply, status) in errors.iter().zip([409, 422, 400, 401]) {
        assert_eq!(reply.status, status, "{:?}", reply.body);
        assert_documented(&doc, "POST", "/v1/allocations", reply);
    }
    let missing =
        app.send("GET", &format!("/v1/allocations/{}", uuid::Uuid::now_v7()), Some(&app.key), None, b"").await;
    assert_eq!(missing.status, 404);
    assert_documented(&doc, "GET", "/v1/allocations/{id}", &missing);
    app.finish().await;
}
