//! A private Postgres, cache Valkey and events Valkey for fault tests (started by
//! `scripts/stack` in a folder of their own, purged on drop), and a seeded system on it: a
//! migrated database with one product's cards, a client and its key.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use allot_origin::config::generate_card_key;
use allot_origin::crypto::KeyRing;
use allot_origin::ops::{self, NewCard};
use allot_shared::{Currency, Denomination, Region};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::ports::{free_port, free_port_run};

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A private stack, torn down (and purged) on drop.
pub struct Stack {
    /// Its folder (`.stack/<name>`): data, pid files, logs.
    pub dir: PathBuf,
    pg_port: u16,
    vk_port: u16,
    ev_port: u16,
    /// The first of the Valkey cluster's six ports, when it has one.
    cluster_port: Option<u16>,
}

impl Stack {
    /// Start a fresh stack in `.stack/<name>`, without a Valkey cluster.
    pub fn up(name: &str) -> Self {
        Self::start(name, None)
    }

    /// Start a fresh stack in `.stack/<name>` with a Valkey cluster (3 primaries, 3 replicas).
    pub fn up_with_cluster(name: &str) -> Self {
        Self::start(name, Some(free_port_run(6)))
    }

    fn start(name: &str, cluster_port: Option<u16>) -> Self {
        let dir = repo().join(".stack").join(name);
        let s = Stack { dir, pg_port: free_port(), vk_port: free_port(), ev_port: free_port(), cluster_port };
        s.run("down", &["--purge"]);
        s.run("up", &[]);
        s
    }

    /// Run `scripts/stack <cmd>` on this stack.
    pub fn run(&self, cmd: &str, extra: &[&str]) {
        let out = Command::new(repo().join("scripts/stack"))
            .arg(cmd)
            .args(extra)
            .env("ALLOT_STACK_DIR", &self.dir)
            .env("ALLOT_PG_PORT", self.pg_port.to_string())
            .env("ALLOT_VALKEY_PORT", self.vk_port.to_string())
            .env("ALLOT_EVENTS_PORT", self.ev_port.to_string())
            .env("ALLOT_CLUSTER", if self.cluster_port.is_some() { "on" } else { "off" })
            .env("ALLOT_CLUSTER_PORT", self.cluster_port.map(|p| p.to_string()).unwrap_or_default())
            // No streaming replica here (nor the shared stack's replica port).
            .env("ALLOT_PG_REPLICA", "off")
            .env_remove("ALLOT_PG_REPLICA_PORT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("scripts/stack runs");
        assert!(out.status.success(), "scripts/stack {cmd} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Its Postgres.
    pub fn database_url(&self) -> String {
        format!("postgres://allot@127.0.0.1:{}/allot", self.pg_port)
    }

    /// Its cache Valkey.
    pub fn valkey_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.vk_port)
    }

    /// Its events Valkey.
    pub fn events_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ev_port)
    }

    /// Its Valkey cluster's nodes, as `VALKEY_URL` lists them.
    pub fn cluster_url(&self) -> String {
        let base = self.cluster_port.expect("a stack started with up_with_cluster");
        (base..base + 6).map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// The cluster's node ports.
    pub fn cluster_ports(&self) -> Vec<u16> {
        let base = self.cluster_port.expect("a stack started with up_with_cluster");
        (base..base + 6).collect()
    }

    /// The pid of the cluster node on `port`.
    pub fn cluster_node_pid(&self, port: u16) -> u32 {
        let pid = std::fs::read_to_string(self.dir.join(format!("cluster/{port}/node.pid"))).unwrap();
        pid.trim().parse().unwrap()
    }

    /// Kill the events Valkey with SIGKILL (no chance to write its append-only file).
    pub fn kill_events(&self) {
        let pid = std::fs::read_to_string(self.dir.join("events/events.pid")).unwrap();
        let ok = Command::new("kill").arg("-KILL").arg(pid.trim()).status().unwrap().success();
        assert!(ok, "kill -KILL {pid}");
        // The pid file stays behind; events-start sees the process is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{}", pid.trim())).exists() {
            assert!(Instant::now() < deadline, "redis-server {pid} gone after SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.run("down", &["--purge"]);
    }
}

/// A migrated database on a private stack with one product's cards, a client and its key.
pub struct Seeded {
    /// A pool on the database.
    pub pool: PgPool,
    /// `ALLOT_CARD_KEYS` the cards were sealed with.
    pub card_keys: String,
    /// The client's API key.
    pub key: String,
}

/// Migrate `stack`'s database and load `cards` cards of `product` (one denomination, 10.00 USD;
/// codes start with `code_prefix`), and a client with a key.
pub async fn seed(stack: &Stack, code_prefix: &str, product: &str, cards: usize) -> Seeded {
    let pool = PgPoolOptions::new().max_connections(4).connect(&stack.database_url()).await.unwrap();
    allot_origin::db::migrate_up(&pool).await.unwrap();
    let card_keys = generate_card_key("fault1");
    let actor = ops::Actor::cli();
    let usd = Currency::parse("USD").unwrap();
    ops::upsert_product(&pool, &actor, product, product, usd, &[Denomination::parse("10.00").unwrap()]).await.unwrap();
    let batch: Vec<NewCard> = (0..cards)
        .map(|i| NewCard {
            code: format!("{code_prefix}-{i}-{}", uuid::Uuid::new_v4().simple()),
            pin: None,
            expires_at: None,
        })
        .collect();
    let ring = KeyRing::parse(&card_keys).unwrap();
    ops::load_cards(&pool, &actor, None, &ring, product, 1000, &batch).await.unwrap();
    let client = ops::create_client(&pool, &actor, "fault", &Region::parse("eu").unwrap(), None).await.unwrap();
    let key = ops::issue_key(&pool, &actor, client, None).await.unwrap().expose();
    Seeded { pool, card_keys, key }
}

/// Wait until `base/readyz` answers 2xx (a minute at most).
pub async fn wait_ready(base: &str) {
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base} never became ready");
}
