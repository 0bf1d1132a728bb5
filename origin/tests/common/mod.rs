//! Test harness: every test gets its own database (cloned from a migrated template), its own
//! Valkey key prefix, and a real `allot server` on random loopback ports.
//!
//! Needs the local stack: `scripts/stack up && eval "$(scripts/stack env)"`.
#![allow(dead_code)]

pub mod ports;
pub mod private_stack;

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use allot_origin::cache::InventoryCache;
use allot_origin::config::{Config, Settings, generate_card_key};
use allot_origin::ops::{self, NewCard};
use allot_origin::server;
use allot_origin::valkey::{self, Address, Tuning};
use allot_shared::{ApiKey, Currency, Denomination, Region, signature};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The secret the test "edge" signs with.
pub const EDGE_SECRET: &str = "test-edge-secret-0123456789abcdef";

static TEMPLATE: OnceCell<String> = OnceCell::const_new();
static CARD_KEYS: OnceLock<String> = OnceLock::new();

/// The admin URL of the local stack's Postgres.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run `scripts/stack up` and `eval \"$(scripts/stack env)\"`")
}

/// The local stack's Valkey URL (a cluster's nodes when the suites run on the cluster).
pub fn valkey_url() -> String {
    std::env::var("VALKEY_URL")
        .expect("VALKEY_URL is not set: run `scripts/stack up` and `eval \"$(scripts/stack env)\"`")
}

/// The local stack's Valkey: a server, or a cluster when `VALKEY_URL` lists its nodes.
pub fn valkey_address() -> Address {
    Address::parse(&valkey_url(), false).expect("VALKEY_URL is a Valkey URL or a list of them")
}

/// One Valkey server at `url`.
pub fn server_address(url: &str) -> Address {
    let address = Address::parse(url, false).expect("a Valkey URL");
    assert!(!address.is_cluster(), "{url} is one server");
    address
}

/// A connection to the stack's Valkey that follows a cluster's slots.
pub fn valkey_connection() -> valkey::Connection {
    connection_to(&valkey_url())
}

/// A connection to the Valkey server, or cluster (a list of nodes), at `url`.
pub fn connection_to(url: &str) -> valkey::Connection {
    let address = Address::parse(url, false).expect("a Valkey URL or a list of them");
    valkey::Connection::open(&address, Tuning { timeout: std::time::Duration::from_secs(5), retries: 3 })
        .expect("a Valkey connection")
}

/// The same URL pointing at another database.
pub fn url_for(db: &str) -> String {
    let base = admin_url();
    let (head, _) = base.rsplit_once('/').expect("DATABASE_URL has a database name");
    format!("{head}/{db}")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A fresh, empty database with no migrations applied.
pub async fn empty_database() -> String {
    let name = format!("test_{}_{}", now_secs(), Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url()).await.expect("connect to the stack's Postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
    name
}

async fn template() -> String {
    TEMPLATE
        .get_or_init(|| async {
            let checksum: Vec<u8> = allot_origin::db::MIGRATOR.iter().flat_map(|m| m.checksum.to_vec()).collect();
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&checksum));
            let name = format!("allot_template_{}", &digest[..16]);
            let mut admin = PgConnection::connect(&admin_url()).await.expect("connect to the stack's Postgres");
            // Serialise template creation across test processes.
            sqlx::query("SELECT pg_advisory_lock(727274)").execute(&mut admin).await.unwrap();
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
            if !exists {
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
                let pool = PgPoolOptions::new().max_connections(1).connect(&url_for(&name)).await.unwrap();
                allot_origin::db::migrate_up(&pool).await.expect("migrations apply");
                pool.close().await;
            }
            // Drop databases left behind by tests that failed more than an hour ago.
            let stale: Vec<String> =
                sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%'")
                    .fetch_all(&mut admin)
                    .await
                    .unwrap();
            for db in stale {
                let ts = db.split('_').nth(1).and_then(|t| t.parse::<u64>().ok()).unwrap_or(u64::MAX);
                if ts + 3600 < now_secs() {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")))
                        .execute(&mut admin)
                        .await;
                }
            }
            sqlx::query("SELECT pg_advisory_unlock(727274)").execute(&mut admin).await.unwrap();
            name
        })
        .await
        .clone()
}

/// A fresh database with every migration applied.
pub async fn migrated_database() -> String {
    let tpl = template().await;
    let name = format!("test_{}_{}", now_secs(), Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    for attempt in 0.. {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name} TEMPLATE {tpl}")))
            .execute(&mut admin)
            .await;
        match r {
            Ok(_) => break,
            // "source database is being accessed by other users": another clone is in progress.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") && attempt < 50 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("creating {name}: {e}"),
        }
    }
    name
}

/// The stack's streaming replica's URL for database `db` (`ALLOT_TEST_DATABASE_REPLICA_URL`,
/// which `scripts/stack env` prints when the stack has a replica).
pub fn replica_url_for(db: &str) -> String {
    let base = std::env::var("ALLOT_TEST_DATABASE_REPLICA_URL").expect(
        "ALLOT_TEST_DATABASE_REPLICA_URL is not set: run `scripts/stack up` (it starts the replica) and \
         `eval \"$(scripts/stack env)\"`",
    );
    let (head, _) = base.rsplit_once('/').expect("ALLOT_TEST_DATABASE_REPLICA_URL has a database name");
    format!("{head}/{db}")
}

/// Wait (two minutes at most) until the replica has replayed the creation of database `db`.
pub async fn wait_for_replica_database(db: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match PgConnection::connect(&replica_url_for(db)).await {
            Ok(conn) => {
                let _ = conn.close().await;
                return;
            }
            Err(e) if std::time::Instant::now() > deadline => panic!("database {db} never reached the replica: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// Drop a test database.
pub async fn drop_database(name: &str) {
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await;
}

/// How to start a test app.
#[derive(Clone, Default)]
pub struct Options {
    /// Valkey URL; `None` uses the stack's.
    pub valkey_url: Option<String>,
    /// Extra settings.
    pub extra: Vec<(String, String)>,
}

/// A running origin over its own database and cache prefix.
pub struct TestApp {
    /// Base URL of the public listener.
    pub base: String,
    /// Base URL of the operator listener.
    pub operator: String,
    /// The test database.
    pub db_name: String,
    /// A pool on the test database (for setup and audits).
    pub pool: PgPool,
    /// The cache under this test's prefix (on the stack's Valkey, even if the app's is down).
    pub cache: InventoryCache,
    /// This test's Valkey key prefix.
    pub prefix: String,
    /// The configuration the server runs with.
    pub config: Config,
    /// The demo-style client's id.
    pub client_id: Uuid,
    /// Its API key.
    pub key: String,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The server's shared state (its engine, for what HTTP does not show).
    pub state: allot_origin::http::AppState,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body bytes.
    pub body: bytes::Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The error code of an error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {:?}", self.json())).to_owned()
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

/// Settings for a test server on `db` with `prefix`.
pub fn settings_for(db: &str, prefix: &str, opts: &Options) -> Settings {
    let card_keys = CARD_KEYS.get_or_init(|| generate_card_key("test1")).clone();
    let mut pairs: Vec<(String, String)> = [
        ("DATABASE_URL", url_for(db)),
        ("VALKEY_URL", opts.valkey_url.clone().unwrap_or_else(valkey_url)),
        ("ALLOT_REGION", "eu".to_owned()),
        ("ALLOT_VALKEY_PREFIX", prefix.to_owned()),
        ("ALLOT_CARD_KEYS", card_keys),
        ("ALLOT_EDGE_SECRETS", EDGE_SECRET.to_owned()),
        ("ALLOT_LISTEN", "127.0.0.1:0".to_owned()),
        ("ALLOT_OPERATOR_LISTEN", "127.0.0.1:0".to_owned()),
        ("ALLOT_DB_POOL_SIZE", "16".to_owned()),
        // Tests run on a loaded 2-core machine: waits are generous, behaviour is asserted.
        ("ALLOT_DB_ACQUIRE_TIMEOUT_MS", "60000".to_owned()),
        ("ALLOT_REQUEST_TIMEOUT_MS", "120000".to_owned()),
        ("ALLOT_IDEMPOTENCY_WAIT_MS", "60000".to_owned()),
        ("ALLOT_DB_STATEMENT_TIMEOUT_MS", "60000".to_owned()),
        ("ALLOT_VALKEY_TIMEOUT_MS", "2000".to_owned()),
        ("ALLOT_KEY_CACHE_TTL_MS", "300".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in &opts.extra {
        pairs.retain(|(key, _)| key != k);
        pairs.push((k.clone(), v.clone()));
    }
    Settings::from_pairs(pairs)
}

impl TestApp {
    /// Start an app with default options.
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    /// Start an app.
    pub async fn spawn_with(opts: Options) -> Self {
        Self::spawn_on(migrated_database().await, opts).await
    }

    /// Start an app whose reads that may lag go to the stack's streaming replica
    /// (`DATABASE_READ_URL`), once the replica has the test's database.
    pub async fn spawn_with_replica(mut opts: Options) -> Self {
        let db_name = migrated_database().await;
        wait_for_replica_database(&db_name).await;
        opts.extra.push(("DATABASE_READ_URL".to_owned(), replica_url_for(&db_name)));
        Self::spawn_on(db_name, opts).await
    }

    /// Start an app on the migrated database `db_name`.
    async fn spawn_on(db_name: String, opts: Options) -> Self {
        let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
        let config = Config::from_settings(&settings_for(&db_name, &prefix, &opts)).expect("test config is valid");
        let pool = PgPoolOptions::new().max_connections(8).connect(&url_for(&db_name)).await.unwrap();
        let cache = InventoryCache::new(&valkey_address(), &prefix, std::time::Duration::from_secs(5)).unwrap();
        let client_id =
            ops::create_client(&pool, &ops::Actor::cli(), "Test client", &Region::parse("eu").unwrap(), None)
                .await
                .unwrap();
        let key = ops::issue_key(&pool, &ops::Actor::cli(), client_id, Some("test")).await.unwrap().expose();

        let state = server::build_state(config.clone()).unwrap();
        let bound = server::bind(state.clone()).await.expect("server binds");
        let base = format!("http://{}", bound.public_addr);
        let operator = format!("http://{}", bound.operator_addr);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(bound.serve(shutdown.clone()));
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
        Self { base, operator, db_name, pool, cache, prefix, config, client_id, key, http, state, shutdown, server }
    }

    /// A second server on the same database and cache prefix (another instance of the
    /// region), sharing this app's key; it stops with the runtime.
    pub async fn twin(&self) -> (String, allot_origin::http::AppState) {
        let state = server::build_state(self.config.clone()).unwrap();
        let bound = server::bind(state.clone()).await.expect("twin binds");
        let base = format!("http://{}", bound.public_addr);
        tokio::spawn(bound.serve(self.shutdown.clone()));
        (base, state)
    }

    /// Stop the server and drop the database and cache keys.
    pub async fn finish(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
        self.pool.close().await;
        drop_database(&self.db_name).await;
        let mut conn = valkey_connection();
        // On a cluster KEYS asks every primary and DEL is split by slot.
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.prefix)).query_async(&mut conn).await.unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    }

    /// Create a product offered in `denominations` (strings like "25.00").
    pub async fn product(&self, id: &str, currency: &str, denominations: &[&str]) -> Vec<i64> {
        let ds: Vec<Denomination> = denominations.iter().map(|d| Denomination::parse(d).unwrap()).collect();
        ops::upsert_product(
            &self.pool,
            &ops::Actor::cli(),
            id,
            &format!("Product {id}"),
            Currency::parse(currency).unwrap(),
            &ds,
        )
        .await
        .unwrap()
    }

    /// Load `n` cards into Postgres only (the cache does not know them yet).
    pub async fn load_cards_db_only(&self, product: &str, denomination_minor: i64, n: usize) -> Vec<i64> {
        let cards: Vec<NewCard> = (0..n)
            .map(|_| NewCard {
                code: format!("CODE-{}", Uuid::new_v4().simple()),
                pin: Some("1234".into()),
                expires_at: None,
            })
            .collect();
        ops::load_cards(
            &self.pool,
            &ops::Actor::cli(),
            None,
            &self.config.card_keys,
            product,
            denomination_minor,
            &cards,
        )
        .await
        .unwrap()
    }

    /// Load `n` cards and rebuild the product's cache set.
    pub async fn load_cards(&self, product: &str, denomination_minor: i64, n: usize) -> Vec<i64> {
        let ids = self.load_cards_db_only(product, denomination_minor, n).await;
        self.rebuild_cache(product).await;
        ids
    }

    /// Rebuild a product's cache set from Postgres.
    pub async fn rebuild_cache(&self, product: &str) {
        ops::rebuild_product_cache(&self.pool, &self.cache, product).await.unwrap();
    }

    /// The signature the edge would send for this request (key: the API key sent, if any).
    pub fn sign(&self, method: &str, path: &str, key: Option<&str>, idem: Option<&str>, body: &[u8]) -> String {
        edge_signature(EDGE_SECRET.as_bytes(), unix_now(), method, path, key, idem, body)
    }

    /// Send a request as the edge would forward it: signed, with `key` as the API key.
    pub async fn send(&self, method: &str, path: &str, key: Option<&str>, idem: Option<&str>, body: &[u8]) -> Reply {
        self.send_to(&self.base, method, path, key, idem, body).await
    }

    /// [`Self::send`] to the server at `base` (a twin, say).
    pub async fn send_to(
        &self,
        base: &str,
        method: &str,
        path: &str,
        key: Option<&str>,
        idem: Option<&str>,
        body: &[u8],
    ) -> Reply {
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{base}{path}"))
            .header(allot_shared::headers::SIGNATURE, self.sign(method, path, key, idem, body));
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if let Some(i) = idem {
            req = req.header("idempotency-key", i);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body.to_vec());
        }
        read(req.send().await.expect("request sent")).await
    }

    /// `POST /v1/allocations` with this app's key.
    pub async fn allocate(&self, idem: impl AsRef<str>, body: impl AsRef<str>) -> Reply {
        self.send("POST", "/v1/allocations", Some(&self.key), Some(idem.as_ref()), body.as_ref().as_bytes()).await
    }

    /// Count rows of `table` matching an optional SQL condition.
    pub async fn count(&self, table: &str, condition: &str) -> i64 {
        let sql = if condition.is_empty() {
            format!("SELECT count(*) FROM {table}")
        } else {
            format!("SELECT count(*) FROM {table} WHERE {condition}")
        };
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&self.pool).await.unwrap()
    }

    /// Members of a product's cache set (sentinel excluded).
    pub async fn cached_ids(&self, product: &str) -> Vec<i64> {
        let mut conn = valkey_connection();
        let members: Vec<String> =
            redis::cmd("ZRANGE").arg(self.cache.key(product)).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
        members.into_iter().filter_map(|m| m.parse().ok()).collect()
    }

    /// Delete every key under this test's prefix (a "flush" that spares other tests).
    pub async fn flush_cache(&self) {
        let mut conn = valkey_connection();
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.prefix)).query_async(&mut conn).await.unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
        }
    }
}

/// Read a whole response.
pub async fn read(resp: reqwest::Response) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body read");
    Reply { status, headers, body }
}

/// An API key string for `client` issued directly (another client, for ownership tests).
pub async fn other_client_key(app: &TestApp) -> String {
    let other = ops::create_client(&app.pool, &ops::Actor::cli(), "Other client", &Region::parse("eu").unwrap(), None)
        .await
        .unwrap();
    ops::issue_key(&app.pool, &ops::Actor::cli(), other, None).await.unwrap().expose()
}

/// A well-formed key (valid checksum) that no database knows.
pub fn unknown_key() -> String {
    ApiKey::new(Region::parse("eu").unwrap(), "ZZZZZZZZZZZZZZZZ", "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ").unwrap().expose()
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A version-2 edge signature with a fresh nonce; the key id is read from `key` as the origin
/// reads it (none when `key` is not a well-formed API key).
pub fn edge_signature(
    secret: &[u8],
    ts: i64,
    method: &str,
    path: &str,
    key: Option<&str>,
    idem: Option<&str>,
    body: &[u8],
) -> String {
    let key_id = key.and_then(|k| ApiKey::parse(k).ok()).map(|k| k.key_id().to_owned()).unwrap_or_default();
    let signed =
        signature::Signed { method, path_and_query: path, key_id: &key_id, idempotency_key: idem.unwrap_or(""), body };
    signature::sign(secret, ts, &Uuid::new_v4().simple().to_string(), &signed)
}

/// A concrete path for a route pattern: every `{param}` becomes a well-formed id nobody has.
pub fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("closed parameter") + open;
        out.push_str(&rest[..open]);
        let name = &rest[open + 1..close];
        out.push_str(match name {
            "denomination" => "25.00",
            "name" => "no-such-job",
            "key_id" => "ZZZZZZZZZZZZZZZZ",
            "product_id" => "no-such-product",
            _ => "00000000-0000-7000-8000-000000000000",
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A live token of a new operator with `role` ("viewer", "operator" or "admin").
pub async fn operator_token(app: &TestApp, role: &str) -> String {
    let role = allot_origin::ops::operators::Role::parse(role).unwrap();
    let (_, token) = allot_origin::ops::operators::create(
        &app.pool,
        &ops::Actor::cli(),
        &format!("test {}", role.as_str()),
        role,
        1,
    )
    .await
    .unwrap();
    token.expose()
}

impl TestApp {
    /// A request to the operator API with `token` (none: unauthenticated), JSON body if given.
    pub async fn ops(&self, method: &str, path: &str, token: Option<&str>, body: Option<serde_json::Value>) -> Reply {
        self.ops_with(method, path, token, &[], body).await
    }

    /// [`TestApp::ops`] with more header lines (a name may repeat).
    pub async fn ops_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Reply {
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", self.operator));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        read(req.send().await.expect("request sent")).await
    }

    /// The newest audit rows with `action`, newest first: (actor, target, change, request id).
    pub async fn audit_rows(&self, action: &str) -> Vec<(String, String, serde_json::Value, Option<String>)> {
        sqlx::query_as("SELECT actor, target, change, request_id FROM audit_log WHERE action = $1 ORDER BY id DESC")
            .bind(action)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

/// The plan of a listing's `EXPLAIN` statement, after checking that it walks `index` on `table`
/// in its order (no sort) and stops at the limit; and the plan's index condition line, for the
/// caller to check what the index answers. `name` names the case in failures.
pub async fn index_walk(
    pool: &PgPool,
    name: &str,
    mut explain: sqlx::QueryBuilder<sqlx::Postgres>,
    index: &str,
    table: &str,
) -> (String, String) {
    let plan: Vec<String> = explain.build_query_scalar().fetch_all(pool).await.unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains(&format!("Index Scan using {index} on {table}")), "{name}:\n{plan}");
    assert!(!plan.contains("Sort"), "{name}: the index gives the order:\n{plan}");
    assert!(plan.starts_with("Limit"), "{name}: stops at the limit:\n{plan}");
    let index_cond = plan.lines().find(|l| l.contains("Index Cond")).unwrap_or_default().to_owned();
    (plan, index_cond)
}
