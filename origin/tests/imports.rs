//! Streaming CSV imports over the operator API and through the CLI's service call: all or
//! nothing, line-numbered problems, progress while the upload runs.

mod common;

use std::time::Duration;

use allot_origin::ops::Actor;
use allot_origin::ops::imports::{self, ImportContext, ImportTarget};
use bytes::Bytes;
use common::{Options, Reply, TestApp, operator_token, read};
use serde_json::Value;
use uuid::Uuid;

/// `POST /ops/v1/imports?<query>` with `body` (bytes or a stream).
async fn upload(app: &TestApp, token: &str, query: &str, body: impl Into<reqwest::Body>) -> Reply {
    let url = format!("{}/ops/v1/imports?{query}", app.operator);
    let resp = app.http.post(url).bearer_auth(token).body(body).send().await.expect("upload sent");
    read(resp).await
}

/// A body sent as a stream of `parts`.
fn chunks(parts: Vec<Bytes>) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>)))
}

/// A body the test feeds chunk by chunk (or an error) while the upload runs.
fn channel_body() -> (tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>, reqwest::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    (tx, body)
}

/// Poll import `id` until `done` holds of its document, for at most a minute.
async fn wait_for(app: &TestApp, token: &str, id: Uuid, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = app.ops("GET", &format!("/ops/v1/imports/{id}"), Some(token), None).await;
        if r.status == 200 && done(&r.json()) {
            return r.json();
        }
        assert!(tokio::time::Instant::now() < deadline, "import {id} never got there: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn problems(r: &Reply) -> Vec<(Option<u64>, String)> {
    let details = &r.json()["error"]["details"];
    details["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems in {details}"))
        .iter()
        .map(|p| (p["line"].as_u64(), p["problem"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn a_good_file_is_committed_allocatable_and_in_the_cache_at_once() {
    let app = TestApp::spawn().await;
    app.product("imp", "EUR", &["25.00"]).await;
    let operator = operator_token(&app, "operator").await;
    let id = Uuid::new_v4();
    let csv = "pin,code,expires_at\r\n1234,AAA-1,2099-01-01T00:00:00Z\r\n,\"AAA,2\",\r\n\"9\"\"9\",AAA-3,\r\n";

    let r = upload(&app, &operator, &format!("product_id=imp&denomination=25.00&id={id}"), csv).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.header("location"), Some(format!("/ops/v1/imports/{id}")));
    let request_id = r.header("x-request-id");
    let doc = r.json();
    assert_eq!((doc["state"].as_str(), doc["denomination"].as_str()), (Some("committed"), Some("25.00")));
    assert_eq!(
        (doc["lines_read"].as_i64(), doc["accepted"].as_i64(), doc["rejected"].as_i64()),
        (Some(4), Some(3), Some(0))
    );
    let bytes = csv.len() as i64;
    assert_eq!((doc["bytes_read"].as_i64(), doc["bytes_expected"].as_i64()), (Some(bytes), Some(bytes)));
    assert_eq!(doc["percent_done"], 100);
    assert_eq!(app.count("inventories", &format!("import_id = '{id}' AND status = 'active'")).await, 3);

    // In the cache at once (the set was cold: built now), and allocatable with the codes sent.
    assert_eq!(app.cached_ids("imp").await.len(), 3);
    let alloc = app.allocate("imp-1", r#"{"product_id":"imp","denomination":"25.00","quantity":3}"#).await;
    assert_eq!(alloc.status, 201, "{:?}", alloc.body);
    let mut got: Vec<(String, Option<String>)> = alloc.json()["cards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["code"].as_str().unwrap().to_owned(), c["pin"].as_str().map(str::to_owned)))
        .collect();
    got.sort();
    let want = [("AAA,2", None), ("AAA-1", Some("1234")), ("AAA-3", Some("9\"9"))];
    assert_eq!(got, want.map(|(c, p)| (c.to_owned(), p.map(str::to_owned))));

    // A second import goes into the now warm set.
    let r = upload(&app, &operator, "product_id=imp&denomination=25.00", "code\nBBB-1\nBBB-2\n").await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(app.cached_ids("imp").await.len(), 2);

    // Audited with the operator and the request.
    let me = app.ops("GET", "/ops/v1/me", Some(&operator), None).await.json();
    let rows = app.audit_rows("import.commit").await;
    let (actor, target, change, audited_request) = &rows[1];
    assert_eq!((actor.as_str(), target.as_str()), (me["id"].as_str().unwrap(), id.to_string().as_str()));
    assert_eq!(change["cards"], 3);
    assert!(request_id.is_some());
    assert_eq!(audited_request, &request_id);
    app.finish().await;
}

#[tokio::test]
async fn bad_files_are_refused_with_line_numbered_problems_and_nothing_written() {
    let app = TestApp::spawn().await;
    app.product("bad", "EUR", &["25.00"]).await;
    let operator = operator_token(&app, "operator").await;
    let r = upload(&app, &operator, "product_id=bad&denomination=25.00", "code\nSTORED-1\n").await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    let cases: &[(&str, &[u8], Option<u64>, &str)] = &[
        ("unknown column", b"code,colour\nA,red\n", Some(1), "unknown column \"colour\""),
        ("repeated column", b"code,code\nA,B\n", Some(1), "the column \"code\" twice"),
        ("wrong field count", b"code,pin\nA,1\nB\n", Some(3), "1 field(s); the header names 2"),
        ("duplicate in the file", b"code\nA\nB\nC\nD\nE\nB\n", Some(7), "the same code as line 3"),
        ("already loaded", b"code\nNEW-1\nSTORED-1\n", Some(3), "this code is already loaded"),
        ("not UTF-8", b"code\nA\n\xff\xfe\n", Some(3), "not valid UTF-8"),
        ("empty file", b"", None, "the file is empty"),
        ("header only", b"code\n", None, "the file has no cards"),
        (
            "cut off",
            b"code\nA\nB",
            Some(3),
            "the file ends mid-line (no newline after line 3); it may have been cut off",
        ),
        ("bad code", b"code\n\"\"\n", Some(2), "the code must be"),
        ("bad pin", b"code,pin\nA,\x07\n", Some(2), "the PIN must be"),
        ("bad expiry", b"code,expires_at\nA,soon\n", Some(2), "not an RFC 3339 time"),
        ("past expiry", b"code,expires_at\nA,2001-01-01T00:00:00Z\n", Some(2), "is in the past"),
        ("stray quote", b"code\nA\"B\n", Some(2), "a quote may appear only in a quoted field"),
    ];
    for (name, csv, line, problem) in cases {
        let id = Uuid::new_v4();
        let r = upload(&app, &operator, &format!("product_id=bad&denomination=25.00&id={id}"), csv.to_vec()).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"), "{name}");
        assert!(r.json()["error"]["message"].as_str().unwrap().ends_with("; nothing was imported"), "{name}");
        let found = problems(&r);
        assert!(found.iter().any(|(l, p)| l == line && p.contains(problem)), "{name}: {found:?}");
        assert_eq!(r.json()["error"]["details"]["import_id"], id.to_string(), "{name}");
        let doc = app.ops("GET", &format!("/ops/v1/imports/{id}"), Some(&operator), None).await.json();
        assert_eq!(doc["state"], "rejected", "{name}");
        assert_eq!(doc["problems"], r.json()["error"]["details"]["problems"], "{name}");
        assert_eq!(app.count("inventories", "").await, 1, "{name}: nothing written");
    }
    assert_eq!(app.audit_rows("import.reject").await.len(), cases.len());

    // Refused before any import exists: an unknown product or denomination, an id in use.
    let before = app.count("imports", "").await;
    for (query, field) in [
        ("product_id=nope&denomination=25.00", "product_id"),
        ("product_id=bad&denomination=99.00", "denomination"),
        ("product_id=bad&denomination=25.001", "denomination"),
    ] {
        let r = upload(&app, &operator, query, "code\nX\n").await;
        assert_eq!((r.status, r.json()["error"]["details"]["field"].as_str()), (400, Some(field)), "{query}");
    }
    assert_eq!(app.count("imports", "").await, before);
    let used: Uuid = sqlx::query_scalar("SELECT id FROM imports LIMIT 1").fetch_one(&app.pool).await.unwrap();
    let r = upload(&app, &operator, &format!("product_id=bad&denomination=25.00&id={used}"), "code\nX\n").await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "VALIDATION_FAILED"));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("already exists"));
    assert_eq!(app.count("inventories", "").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_ten_megabyte_line_is_refused_as_it_streams() {
    let app = TestApp::spawn().await;
    app.product("long", "EUR", &["25.00"]).await;
    let operator = operator_token(&app, "operator").await;
    // One 64 KiB buffer sent 160 times (clones share it): 10 MiB on one line, never held whole.
    let block = Bytes::from(vec![b'x'; 64 * 1024]);
    let mut parts = vec![Bytes::from_static(b"code\nGOOD-1\n")];
    parts.extend(std::iter::repeat_n(block, 160));
    parts.push(Bytes::from_static(b"\nGOOD-2\n"));
    let r = upload(&app, &operator, "product_id=long&denomination=25.00", chunks(parts)).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(problems(&r), vec![(Some(3), "the line is longer than 65536 bytes".to_owned())]);
    let details = &r.json()["error"]["details"];
    assert_eq!(
        (details["lines_read"].as_i64(), details["accepted"].as_i64(), details["rejected"].as_i64()),
        (Some(4), Some(2), Some(1))
    );
    assert_eq!(app.count("inventories", "").await, 0);
    app.finish().await;
}

#[tokio::test]
async fn an_upload_that_breaks_off_or_outgrows_the_limit_is_refused() {
    let extra = vec![("ALLOT_IMPORT_MAX_BYTES".to_owned(), "200".to_owned())];
    let app = TestApp::spawn_with(Options { extra, ..Options::default() }).await;
    app.product("cut", "EUR", &["25.00"]).await;
    let operator = operator_token(&app, "operator").await;

    // The client's stream fails mid-file: the connection is cut; the import ends rejected.
    let id = Uuid::new_v4();
    let (tx, body) = channel_body();
    let url = format!("{}/ops/v1/imports?product_id=cut&denomination=25.00&id={id}", app.operator);
    let request = tokio::spawn(app.http.post(url).bearer_auth(&operator).body(body).send());
    tx.send(Ok(Bytes::from_static(b"code\nA\nB\nC"))).await.unwrap();
    wait_for(&app, &operator, id, |d| d["lines_read"] == 3).await;
    tx.send(Err(std::io::Error::other("disk gone"))).await.unwrap();
    assert!(request.await.unwrap().is_err(), "the client gave up the request");
    let doc = wait_for(&app, &operator, id, |d| !d["finished_at"].is_null()).await;
    assert_eq!(doc["state"], "rejected", "{doc}");
    let problem = doc["problems"][0]["problem"].as_str().unwrap();
    assert!(problem.starts_with("the upload broke off after"), "{problem}");

    let big: Vec<u8> = std::iter::once("code\n".to_owned())
        .chain((0..40).map(|i| format!("CODE-{i:04}\n")))
        .collect::<String>()
        .into();
    let r = upload(&app, &operator, "product_id=cut&denomination=25.00", big).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(problems(&r), vec![(None, "the file is larger than the limit of 200 bytes; split it".to_owned())]);
    assert_eq!(app.count("inventories", "").await, 0);
    app.finish().await;
}

#[tokio::test]
async fn progress_shows_while_the_upload_runs_and_viewers_only_read() {
    let app = TestApp::spawn().await;
    app.product("slow", "EUR", &["25.00"]).await;
    let operator = operator_token(&app, "operator").await;
    let viewer = operator_token(&app, "viewer").await;
    let id = Uuid::new_v4();
    let (tx, body) = channel_body();
    let url = format!("{}/ops/v1/imports?product_id=slow&denomination=25.00&id={id}", app.operator);
    let request = tokio::spawn(app.http.post(url).bearer_auth(&operator).body(body).send());
    let first: String = std::iter::once("code\n".to_owned()).chain((0..500).map(|i| format!("S-{i}\n"))).collect();
    tx.send(Ok(Bytes::from(first.clone()))).await.unwrap();

    // The file is half sent: its progress is visible to a viewer.
    let doc = wait_for(&app, &viewer, id, |d| d["lines_read"] == 501).await;
    assert_eq!((doc["state"].as_str(), doc["accepted"].as_i64()), (Some("receiving"), Some(500)));
    assert_eq!(doc["bytes_read"].as_u64(), Some(first.len() as u64));
    assert!(doc["bytes_expected"].is_null() && doc["percent_done"].is_null(), "no length announced: {doc}");
    tx.send(Ok(Bytes::from_static(b"S-last\n"))).await.unwrap();
    drop(tx);
    let r = read(request.await.unwrap().unwrap()).await;
    assert_eq!((r.status, r.json()["accepted"].as_i64()), (201, Some(501)), "{:?}", r.body);

    // A viewer lists and reads imports but may not upload.
    let refused = upload(&app, &viewer, "product_id=slow&denomination=25.00", "code\nV-1\n").await;
    assert_eq!((refused.status, refused.error_code().as_str()), (403, "FORBIDDEN"));
    upload(&app, &operator, "product_id=slow&denomination=25.00", "code\nW-1\n").await;
    let page = app.ops("GET", "/ops/v1/imports?limit=1", Some(&viewer), None).await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let next = app.ops("GET", &format!("/ops/v1/imports?limit=1&cursor={cursor}"), Some(&viewer), None).await.json();
    assert_eq!(next["items"][0]["id"], id.to_string(), "newest first");
    assert!(next["next_cursor"].is_null());
    let bad = app.ops("GET", "/ops/v1/imports?limit=101", Some(&viewer), None).await;
    assert_eq!(bad.status, 400);
    app.finish().await;
}

#[tokio::test]
async fn progress_is_a_share_of_the_announced_length_and_100_once_committed() {
    let app = TestApp::spawn().await;
    app.product("sized", "EUR", &["25.00"]).await;
    let operator = operator_token(&app, "operator").await;
    let id = Uuid::new_v4();
    let first: String = std::iter::once("code\n".to_owned()).chain((0..999).map(|i| format!("Z-{i:05}\n"))).collect();
    let rest = "Z-last1\n";
    let total = first.len() + rest.len();
    let (tx, body) = channel_body();
    let url = format!("{}/ops/v1/imports?product_id=sized&denomination=25.00&id={id}", app.operator);
    let request =
        tokio::spawn(app.http.post(url).bearer_auth(&operator).header("content-length", total).body(body).send());
    tx.send(Ok(Bytes::from(first.clone()))).await.unwrap();
    let doc = wait_for(&app, &operator, id, |d| d["lines_read"] == 1000).await;
    assert_eq!(doc["bytes_expected"].as_u64(), Some(total as u64));
    assert_eq!(doc["percent_done"].as_u64(), Some((first.len() * 90 / total) as u64), "{doc}");
    tx.send(Ok(Bytes::from_static(rest.as_bytes()))).await.unwrap();
    drop(tx);
    let r = read(request.await.unwrap().unwrap()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!((r.json()["percent_done"].as_u64(), r.json()["bytes_read"].as_u64()), (Some(100), Some(total as u64)));
    app.finish().await;
}

#[tokio::test]
async fn the_cli_path_streams_a_file_through_the_same_service() {
    let app = TestApp::spawn().await;
    app.product("cli", "EUR", &["10.00"]).await;
    let dir = std::env::temp_dir().join(format!("allot-import-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.csv");
    std::fs::write(&good, "code,pin\nC-1,11\nC-2,22\n").unwrap();
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "code\nC-3\nC-1\n").unwrap();
    let ctx = ImportContext {
        pool: &app.pool,
        cache: Some(&app.cache),
        keys: &app.config.card_keys,
        max_bytes: app.config.import_max_bytes,
    };
    let target =
        ImportTarget { product_id: "cli".into(), denomination: "10.00".into(), id: None, expected_bytes: None };

    let body = imports::file_chunks(&good).await.unwrap();
    let import = imports::import(ctx, &Actor::cli(), &target, body).await.unwrap();
    assert_eq!((import.state.as_str(), import.accepted), ("committed", 2));
    assert_eq!(app.cached_ids("cli").await.len(), 2);
    assert!(app.audit_rows("import.commit").await[0].0.starts_with("cli:"));

    let body = imports::file_chunks(&bad).await.unwrap();
    let err = imports::import(ctx, &Actor::cli(), &target, body).await.unwrap_err().to_api_error();
    assert_eq!(err.message, "the file has 1 problem; nothing was imported");
    let details = err.details.unwrap();
    assert_eq!(details["problems"][0]["line"], 3);
    assert_eq!(details["problems"][0]["problem"], "this code is already loaded");
    assert_eq!(app.count("inventories", "").await, 2);
    std::fs::remove_dir_all(&dir).unwrap();
    app.finish().await;
}

/// An upload that streams past the request limit: committed, because an import has its own.
/// One that stalls past the import limit: `503`, marked failed, nothing written.
#[tokio::test]
async fn an_upload_has_the_import_deadline_not_the_request_deadline() {
    let settings = |import_ms: &str| Options {
        extra: [
            ("ALLOT_REQUEST_TIMEOUT_MS", "1000"),
            ("ALLOT_BODY_READ_TIMEOUT_MS", "500"),
            ("ALLOT_IMPORT_TIMEOUT_MS", import_ms),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Options::default()
    };
    let app = TestApp::spawn_with(settings("120000")).await;
    app.product("slow", "EUR", &["25.00"]).await;
    let operator = operator_token(&app, "operator").await;
    let (tx, body) = channel_body();
    let feeder = tokio::spawn(async move {
        tx.send(Ok(Bytes::from_static(b"code\nSLOW-1\n"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        tx.send(Ok(Bytes::from_static(b"SLOW-2\n"))).await.unwrap();
    });
    let r = upload(&app, &operator, "product_id=slow&denomination=25.00", body).await;
    feeder.await.unwrap();
    assert_eq!(r.status, 201, "past the 1 s request limit, within the import limit: {:?}", r.body);
    assert_eq!(app.count("inventories", "product_id = 'slow'").await, 2);
    app.finish().await;

    let app = TestApp::spawn_with(settings("1500")).await;
    app.product("slow", "EUR", &["25.00"]).await;
    let operator = operator_token(&app, "operator").await;
    let id = Uuid::new_v4();
    let (tx, body) = channel_body();
    let feeder = tokio::spawn(async move {
        tx.send(Ok(Bytes::from_static(b"code\nSLOW-1\n"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(4000)).await;
        let _ = tx.send(Ok(Bytes::from_static(b"SLOW-2\n"))).await;
    });
    let r = upload(&app, &operator, &format!("product_id=slow&denomination=25.00&id={id}"), body).await;
    assert_eq!((r.status, r.error_code().as_str()), (503, "ORIGIN_UNAVAILABLE"), "{:?}", r.body);
    feeder.abort();
    wait_for(&app, &operator, id, |doc| doc["state"] == "failed").await;
    assert_eq!(app.count("inventories", "product_id = 'slow'").await, 0);
    app.finish().await;
}
