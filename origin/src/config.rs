//! Configuration from environment variables (and an optional `KEY=value` file), validated once
//! at start with messages that name the variable to set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use allot_shared::{Limits, Region};
use base64::Engine as _;

use crate::crypto::KeyRing;
use crate::valkey::Address;

/// How the public listener treats the edge signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMode {
    /// Every API request must carry a valid edge signature.
    Required,
    /// Development only: unsigned requests are accepted (logged loudly at start).
    Off,
}

/// Features that decide which background jobs exist at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// The inventory pump and the reconciler (need a cache).
    pub inventory_cache: bool,
    /// Idempotency-key expiry and job-history pruning.
    pub housekeeping: bool,
}

impl Features {
    fn parse(spec: &str) -> Result<Self, ConfigError> {
        let mut f = Features { inventory_cache: false, housekeeping: false };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => f = Features { inventory_cache: true, housekeeping: true },
                "none" => {}
                "inventory-cache" => f.inventory_cache = true,
                "housekeeping" => f.housekeeping = true,
                other => {
                    return Err(ConfigError(format!(
                        "ALLOT_FEATURES: unknown feature {other:?}; use all, none, inventory-cache, housekeeping"
                    )));
                }
            }
        }
        Ok(f)
    }
}

/// Everything the origin's processes need, validated.
#[derive(Clone)]
pub struct Config {
    /// The region this origin serves; API keys of other regions are refused.
    pub region: Region,
    /// Postgres primary.
    pub database_url: String,
    /// Optional Postgres replica for reads that may lag.
    pub database_read_url: Option<String>,
    /// Valkey (or Redis ≥ 7): one server or a cluster; `None` runs without the cache (Postgres
    /// only).
    pub valkey_url: Option<Address>,
    /// Prefix of every Valkey key this origin writes.
    pub valkey_prefix: String,
    /// The Valkey the relay publishes the event stream to (`ALLOT_EVENTS_URL`; `VALKEY_URL` when
    /// unset); `None` when neither names one.
    pub events_url: Option<Address>,
    /// Whether `events_url` is the cache's Valkey because `ALLOT_EVENTS_URL` is unset: the stream
    /// then lives in a store the design treats as disposable.
    pub events_share_cache: bool,
    /// How long a published event stays in the outbox for catching up (at least a day).
    pub events_retention: Duration,
    /// Card and stored-response encryption keys.
    pub card_keys: KeyRing,
    /// Shared secrets for edge signatures; the first is current, the rest are accepted.
    pub edge_secrets: Vec<Vec<u8>>,
    /// Whether the edge signature is required.
    pub signature_mode: SignatureMode,
    /// Largest accepted clock skew of a signature.
    pub signature_max_skew_secs: i64,
    /// Whether version-1 signatures (which cover neither the API key nor the Idempotency-Key) are
    /// accepted: only while edges are being upgraded; off by default.
    pub signature_accept_v1: bool,
    /// Connection limits and read timeouts of both listeners.
    pub connections: ConnectionLimits,
    /// Default requests per minute allowed to each client (operators may set one per client).
    pub client_rate_limit_per_minute: u32,
    /// Public API listener.
    pub listen: SocketAddr,
    /// Operator listener (health, and later metrics); keep it private.
    pub operator_listen: SocketAddr,
    /// Primary pool size.
    pub db_pool_size: u32,
    /// Replica pool size.
    pub db_read_pool_size: u32,
    /// How often the replica's lag is checked (`ALLOT_REPLICA_CHECK_MS`).
    pub replica_check_interval: Duration,
    /// Largest replica lag at which reads still go to the replica (`ALLOT_REPLICA_MAX_LAG_MS`).
    pub replica_max_lag: Duration,
    /// How long a request waits for a database connection before `503`.
    pub db_acquire_timeout: Duration,
    /// How long a concurrent duplicate waits for the first request with its key.
    pub idempotency_wait: Duration,
    /// Per-statement limit in Postgres.
    pub db_statement_timeout: Duration,
    /// Per-command limit in Valkey before falling back to Postgres.
    pub valkey_timeout: Duration,
    /// Whole-request limit.
    pub request_timeout: Duration,
    /// How long verified API keys are cached (revocation takes effect within this).
    pub key_cache_ttl: Duration,
    /// Request limits shared with the edge.
    pub limits: Limits,
    /// How long to wait for in-flight work on shutdown.
    pub shutdown_timeout: Duration,
    /// Concurrent batch statements for fast-path allocations (0: one statement per request).
    pub batch_workers: usize,
    /// Which background features are on.
    pub features: Features,
    /// How long idempotency keys are kept.
    pub idempotency_retention: Duration,
    /// How long job history is kept.
    pub job_history_retention: Duration,
    /// How long audit rows are kept (at least 30 days; the table refuses younger deletes).
    pub audit_retention: Duration,
    /// A bucket is low on stock at or below this many active cards, unless it has its own.
    pub stock_low_threshold: u32,
    /// Largest CSV file an import accepts.
    pub import_max_bytes: u64,
    /// Whole-request limit of an import upload (the general request limit is far too short).
    pub import_timeout: Duration,
    /// A console session ends after this long without a request.
    pub console_idle: Duration,
    /// A console session ends this long after sign-in, however busy.
    pub console_session_max: Duration,
    /// Webhook deliveries: an attempt's limits, retries, and where deliveries may go.
    pub webhooks: WebhookSettings,
}

/// How webhooks are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookSettings {
    /// One attempt's whole time (connect, send, answer).
    pub timeout: Duration,
    /// An endpoint whose head delivery has failed this long is disabled (default 3 days).
    pub retry_window: Duration,
    /// The first retry's wait; each failure doubles it, with jitter.
    pub backoff_base: Duration,
    /// The longest wait between two attempts.
    pub backoff_max: Duration,
    /// Whether endpoints may be plain HTTP and resolve to private or loopback addresses
    /// (development only).
    pub allow_private: bool,
    /// Endpoints delivered to at once by one process.
    pub concurrency: usize,
    /// How long the old secret still signs after a rotation.
    pub secret_overlap: Duration,
    /// How long finished deliveries (and their attempts) stay in the delivery log.
    pub log_retention: Duration,
}

/// What one slow or greedy peer may hold of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections per listener; past it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time from a connection's first byte (or the end of its last response) to a complete
    /// request head; past it the peer gets `408` and the connection is closed.
    pub header_read_timeout: Duration,
    /// Time to receive a whole request body; past it, `408 REQUEST_TIMEOUT`.
    pub body_read_timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets and URLs with passwords stay out of logs.
        f.debug_struct("Config")
            .field("region", &self.region)
            .field("database_read_url", &self.database_read_url.is_some())
            .field("valkey", &self.valkey_url.is_some())
            .field("valkey_prefix", &self.valkey_prefix)
            .field("events", &self.events_url.is_some())
            .field("events_share_cache", &self.events_share_cache)
            .field("card_key_ids", &self.card_keys.key_ids())
            .field("edge_secrets", &self.edge_secrets.len())
            .field("signature_mode", &self.signature_mode)
            .field("listen", &self.listen)
            .field("operator_listen", &self.operator_listen)
            .field("db_pool_size", &self.db_pool_size)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A configuration problem, phrased as what to set.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// A source of settings: the process environment, optionally over a file.
pub struct Settings {
    values: HashMap<String, String>,
}

impl Settings {
    /// The process environment, with `ALLOT_CONFIG_FILE` (if set) filling unset variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut values: HashMap<String, String> = std::env::vars().collect();
        if let Some(path) = values.get("ALLOT_CONFIG_FILE").cloned() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("ALLOT_CONFIG_FILE={path} cannot be read: {e}")))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let line = line.strip_prefix("export ").unwrap_or(line);
                let (k, v) =
                    line.split_once('=').ok_or_else(|| ConfigError(format!("{path}:{}: expected KEY=value", n + 1)))?;
                let v = v.trim().trim_matches('"');
                values.entry(k.trim().to_owned()).or_insert_with(|| v.to_owned());
            }
        }
        Ok(Self { values })
    }

    /// Settings from explicit pairs (tests, tools).
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        Self { values: pairs.into_iter().collect() }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn require(&self, key: &str, what: &str) -> Result<&str, ConfigError> {
        self.get(key).ok_or_else(|| ConfigError(format!("{key} is not set: set it to {what}")))
    }

    fn parse<T: std::str::FromStr>(&self, key: &str, default: T, what: &str) -> Result<T, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| ConfigError(format!("{key}={v} is invalid: expected {what}"))),
        }
    }

    fn millis(&self, key: &str, default_ms: u64) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parse(key, default_ms, "a whole number of milliseconds")?;
        if ms == 0 {
            return Err(ConfigError(format!("{key} must be greater than 0")));
        }
        Ok(Duration::from_millis(ms))
    }
}

impl Config {
    /// Read and validate the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_settings(&Settings::from_env()?)
    }

    /// Read and validate the configuration from `settings`.
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let database_url =
            s.require("DATABASE_URL", "the Postgres primary, e.g. postgres://allot@127.0.0.1:55432/allot")?.to_owned();
        if !database_url.starts_with("postgres://") && !database_url.starts_with("postgresql://") {
            return Err(ConfigError("DATABASE_URL must start with postgres://".into()));
        }
        let database_read_url = s.get("DATABASE_READ_URL").map(str::to_owned);
        let valkey_cluster = s.parse("ALLOT_VALKEY_CLUSTER", false, "true or false")?;
        let valkey_url = match s.get("VALKEY_URL") {
            None => {
                return Err(ConfigError(
                    "VALKEY_URL is not set: set it to the Valkey server, e.g. redis://127.0.0.1:56379, \
                     to a cluster's nodes separated by commas, or to `none` to run on Postgres alone"
                        .into(),
                ));
            }
            Some("none") => None,
            Some(u) => Some(valkey_address("VALKEY_URL", u, valkey_cluster)?),
        };
        let (events_url, events_share_cache) = events_url(s, valkey_url.as_ref())?;
        let region = Region::parse(s.require("ALLOT_REGION", "this origin's region code, e.g. eu")?)
            .map_err(|e| ConfigError(format!("ALLOT_REGION: {e}")))?;
        let valkey_prefix = s.get("ALLOT_VALKEY_PREFIX").unwrap_or("allot").to_owned();
        if valkey_prefix.is_empty()
            || !valkey_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError("ALLOT_VALKEY_PREFIX may contain only letters, digits, '_' and '-'".into()));
        }

        let card_keys = KeyRing::parse(s.require(
            "ALLOT_CARD_KEYS",
            "the card encryption keys as `<key id>=<base64 of 32 bytes>[,<older id>=<key>...]` \
             (the first seals; generate one with `allot keygen`)",
        )?)
        .map_err(|e| ConfigError(format!("ALLOT_CARD_KEYS: {e}")))?;

        let signature_mode = match s.get("ALLOT_EDGE_SIGNATURE").unwrap_or("required") {
            "required" => SignatureMode::Required,
            "off" => SignatureMode::Off,
            other => {
                return Err(ConfigError(format!(
                    "ALLOT_EDGE_SIGNATURE={other} is invalid: use `required` (production) or `off` (development only)"
                )));
            }
        };
        let edge_secrets: Vec<Vec<u8>> = s
            .get("ALLOT_EDGE_SECRETS")
            .map(|v| v.split(',').map(|x| x.trim().as_bytes().to_vec()).filter(|x| !x.is_empty()).collect())
            .unwrap_or_default();
        if signature_mode == SignatureMode::Required && edge_secrets.is_empty() {
            return Err(ConfigError(
                "ALLOT_EDGE_SECRETS is not set: set it to the secret shared with the edge \
                 (comma-separated during a rotation, current first), or set ALLOT_EDGE_SIGNATURE=off for development"
                    .into(),
            ));
        }
        if edge_secrets.iter().any(|x| x.len() < 16) {
            return Err(ConfigError("ALLOT_EDGE_SECRETS: each secret must be at least 16 characters".into()));
        }

        let limits = Limits {
            max_quantity: s.parse("ALLOT_MAX_QUANTITY", Limits::default().max_quantity, "a number from 1 to 1000")?,
            max_body_bytes: s.parse("ALLOT_MAX_BODY_BYTES", Limits::default().max_body_bytes, "a number of bytes")?,
        };
        if !(1..=1000).contains(&limits.max_quantity) {
            return Err(ConfigError("ALLOT_MAX_QUANTITY must be from 1 to 1000".into()));
        }
        if !(256..=1 << 20).contains(&limits.max_body_bytes) {
            return Err(ConfigError("ALLOT_MAX_BODY_BYTES must be from 256 to 1048576".into()));
        }

        let signature_accept_v1 = match s.get("ALLOT_EDGE_SIGNATURE_V1").unwrap_or("refuse") {
            "refuse" => false,
            "accept" => true,
            other => {
                return Err(ConfigError(format!(
                    "ALLOT_EDGE_SIGNATURE_V1={other} is invalid: use `refuse` (default) or `accept` (only while edges \
                     that sign version 1 are being replaced)"
                )));
            }
        };
        let request_timeout = s.millis("ALLOT_REQUEST_TIMEOUT_MS", 15_000)?;
        let connections = ConnectionLimits {
            max_connections: s.parse("ALLOT_MAX_CONNECTIONS", 4096, "a number of connections")?,
            header_read_timeout: s.millis("ALLOT_HEADER_READ_TIMEOUT_MS", 10_000)?,
            body_read_timeout: s.millis("ALLOT_BODY_READ_TIMEOUT_MS", 10_000)?,
        };
        if connections.max_connections == 0 {
            return Err(ConfigError("ALLOT_MAX_CONNECTIONS must be greater than 0".into()));
        }
        if connections.header_read_timeout.is_zero() || connections.body_read_timeout.is_zero() {
            return Err(ConfigError("ALLOT_HEADER_READ_TIMEOUT_MS and ALLOT_BODY_READ_TIMEOUT_MS must be > 0".into()));
        }
        if connections.body_read_timeout >= request_timeout {
            return Err(ConfigError(
                "ALLOT_BODY_READ_TIMEOUT_MS must be less than ALLOT_REQUEST_TIMEOUT_MS: a slow body is the client's \
                 fault (408), not the server's (503)"
                    .into(),
            ));
        }
        let client_rate_limit_per_minute: u32 =
            s.parse("ALLOT_CLIENT_RATE_LIMIT_PER_MINUTE", 600_000, "requests per minute")?;
        if client_rate_limit_per_minute == 0 {
            return Err(ConfigError("ALLOT_CLIENT_RATE_LIMIT_PER_MINUTE must be greater than 0".into()));
        }

        let db_pool_size: u32 = s.parse("ALLOT_DB_POOL_SIZE", 32, "a pool size")?;
        if db_pool_size == 0 {
            return Err(ConfigError("ALLOT_DB_POOL_SIZE must be greater than 0".into()));
        }
        Ok(Self {
            region,
            database_url,
            database_read_url,
            valkey_url,
            valkey_prefix,
            events_url,
            events_share_cache,
            events_retention: events_retention(s)?,
            card_keys,
            edge_secrets,
            signature_mode,
            signature_max_skew_secs: s.parse("ALLOT_SIGNATURE_MAX_SKEW_SECS", 60, "seconds")?,
            signature_accept_v1,
            connections,
            client_rate_limit_per_minute,
            listen: s.parse("ALLOT_LISTEN", "127.0.0.1:8080".parse().expect("valid"), "host:port")?,
            operator_listen: s.parse("ALLOT_OPERATOR_LISTEN", "127.0.0.1:9090".parse().expect("valid"), "host:port")?,
            db_pool_size,
            db_read_pool_size: s.parse("ALLOT_DB_READ_POOL_SIZE", 8, "a pool size")?,
            replica_check_interval: s.millis("ALLOT_REPLICA_CHECK_MS", 1_000)?,
            replica_max_lag: s.millis("ALLOT_REPLICA_MAX_LAG_MS", 5_000)?,
            db_acquire_timeout: s.millis("ALLOT_DB_ACQUIRE_TIMEOUT_MS", 3_000)?,
            idempotency_wait: s.millis("ALLOT_IDEMPOTENCY_WAIT_MS", 5_000)?,
            db_statement_timeout: s.millis("ALLOT_DB_STATEMENT_TIMEOUT_MS", 5_000)?,
            valkey_timeout: s.millis("ALLOT_VALKEY_TIMEOUT_MS", 250)?,
            request_timeout,
            key_cache_ttl: s.millis("ALLOT_KEY_CACHE_TTL_MS", 5_000)?,
            limits,
            shutdown_timeout: s.millis("ALLOT_SHUTDOWN_TIMEOUT_MS", 25_000)?,
            batch_workers: s.parse("ALLOT_BATCH_WORKERS", 1, "a number of workers (0 turns batching off)")?,
            features: Features::parse(s.get("ALLOT_FEATURES").unwrap_or("all"))?,
            idempotency_retention: Duration::from_secs(
                3600 * s.parse::<u64>("ALLOT_IDEMPOTENCY_RETENTION_HOURS", 24, "a whole number of hours")?.max(1),
            ),
            job_history_retention: Duration::from_secs(
                86_400 * s.parse::<u64>("ALLOT_JOB_HISTORY_DAYS", 14, "a whole number of days")?.max(1),
            ),
            audit_retention: audit_retention(s)?,
            stock_low_threshold: s.parse("ALLOT_STOCK_LOW_THRESHOLD", 100, "a number of cards")?,
            import_max_bytes: s.parse("ALLOT_IMPORT_MAX_BYTES", 1 << 30, "a number of bytes")?,
            import_timeout: s.millis("ALLOT_IMPORT_TIMEOUT_MS", 30 * 60_000)?,
            console_idle: Duration::from_secs(
                60 * s.parse::<u64>("ALLOT_CONSOLE_IDLE_MINUTES", 30, "a whole number of minutes")?.clamp(1, 24 * 60),
            ),
            console_session_max: Duration::from_secs(
                3600 * s.parse::<u64>("ALLOT_CONSOLE_SESSION_HOURS", 12, "a whole number of hours")?.clamp(1, 7 * 24),
            ),
            webhooks: webhook_settings(s)?,
        })
    }
}

/// A Valkey URL as the settings take it: `redis://`, `rediss://` or `valkey://` (read as `redis://`).
fn valkey_address(key: &str, value: &str, cluster: bool) -> Result<Address, ConfigError> {
    Address::parse(value, cluster).map_err(|e| ConfigError(format!("{key}: {e}")))
}

/// `ALLOT_EVENTS_URL`: the events Valkey, `none` for no stream, or unset for the cache's Valkey
/// (then the second value is true).
/// A list of nodes, or `ALLOT_EVENTS_CLUSTER=true`, makes it a cluster.
fn events_url(s: &Settings, valkey_url: Option<&Address>) -> Result<(Option<Address>, bool), ConfigError> {
    let cluster = s.parse("ALLOT_EVENTS_CLUSTER", false, "true or false")?;
    match s.get("ALLOT_EVENTS_URL") {
        None => Ok((valkey_url.cloned(), valkey_url.is_some())),
        Some("none") => Ok((None, false)),
        Some(u) => Ok((Some(valkey_address("ALLOT_EVENTS_URL", u, cluster)?), false)),
    }
}

/// `ALLOT_EVENTS_RETENTION_DAYS` (default 7, at least 1): how long published events stay
/// available to `GET /ops/v1/events`.
fn events_retention(s: &Settings) -> Result<Duration, ConfigError> {
    let days: u64 = s.parse("ALLOT_EVENTS_RETENTION_DAYS", 7, "a whole number of days")?;
    if days == 0 {
        return Err(ConfigError(
            "ALLOT_EVENTS_RETENTION_DAYS=0 is too short: published events are kept at least 1 day".into(),
        ));
    }
    Ok(Duration::from_secs(86_400 * days))
}

/// The `ALLOT_WEBHOOK_*` settings.
fn webhook_settings(s: &Settings) -> Result<WebhookSettings, ConfigError> {
    let hours = |key: &str, default: u64| -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(3600 * s.parse::<u64>(key, default, "a whole number of hours")?.max(1)))
    };
    Ok(WebhookSettings {
        timeout: s.millis("ALLOT_WEBHOOK_TIMEOUT_MS", 10_000)?,
        retry_window: hours("ALLOT_WEBHOOK_RETRY_HOURS", 72)?,
        backoff_base: s.millis("ALLOT_WEBHOOK_BACKOFF_BASE_MS", 5_000)?,
        backoff_max: s.millis("ALLOT_WEBHOOK_BACKOFF_MAX_MS", 3_600_000)?,
        allow_private: s.parse("ALLOT_WEBHOOK_ALLOW_PRIVATE", false, "true or false")?,
        concurrency: s.parse::<usize>("ALLOT_WEBHOOK_CONCURRENCY", 16, "a number of endpoints")?.clamp(1, 256),
        secret_overlap: hours("ALLOT_WEBHOOK_SECRET_OVERLAP_HOURS", 24)?,
        log_retention: Duration::from_secs(
            86_400 * s.parse::<u64>("ALLOT_WEBHOOK_LOG_DAYS", 30, "a whole number of days")?.max(1),
        ),
    })
}

/// `ALLOT_AUDIT_RETENTION_DAYS` (default 400): never below the 30 days the table itself keeps.
fn audit_retention(s: &Settings) -> Result<Duration, ConfigError> {
    let days: u64 = s.parse("ALLOT_AUDIT_RETENTION_DAYS", 400, "a whole number of days")?;
    if days < 30 {
        return Err(ConfigError(format!(
            "ALLOT_AUDIT_RETENTION_DAYS={days} is too short: audit rows are kept at least 30 days"
        )));
    }
    Ok(Duration::from_secs(86_400 * days))
}

/// A fresh random card key in the `ALLOT_CARD_KEYS` format.
pub fn generate_card_key(key_id: &str) -> String {
    use rand::RngCore;
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    format!("{key_id}={}", base64::engine::general_purpose::STANDARD.encode(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(String, String)> {
        [
            ("DATABASE_URL", "postgres://a@localhost/b"),
            ("VALKEY_URL", "redis://127.0.0.1:6379"),
            ("ALLOT_REGION", "eu"),
            ("ALLOT_EDGE_SECRETS", "0123456789abcdef0123"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([("ALLOT_CARD_KEYS".to_owned(), generate_card_key("k1"))])
        .collect()
    }

    fn with(mut pairs: Vec<(String, String)>, k: &str, v: &str) -> Settings {
        pairs.retain(|(key, _)| key != k);
        pairs.push((k.to_owned(), v.to_owned()));
        Settings::from_pairs(pairs)
    }

    #[test]
    fn accepts_a_complete_configuration() {
        let c = Config::from_settings(&Settings::from_pairs(base())).unwrap();
        assert_eq!(c.signature_mode, SignatureMode::Required);
        assert_eq!(c.limits.max_quantity, 20);
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn errors_name_what_to_set() {
        let err = |s: Settings| Config::from_settings(&s).unwrap_err().to_string();
        let mut missing = base();
        missing.retain(|(k, _)| k != "DATABASE_URL");
        assert!(err(Settings::from_pairs(missing)).contains("DATABASE_URL is not set"));
        assert!(err(with(base(), "ALLOT_EDGE_SECRETS", "")).contains("ALLOT_EDGE_SIGNATURE=off"));
        assert!(err(with(base(), "ALLOT_CARD_KEYS", "k1=short")).contains("ALLOT_CARD_KEYS"));
        assert!(err(with(base(), "ALLOT_MAX_QUANTITY", "0")).contains("ALLOT_MAX_QUANTITY"));
        assert!(err(with(base(), "ALLOT_DB_ACQUIRE_TIMEOUT_MS", "soon")).contains("milliseconds"));
        assert!(err(with(base(), "ALLOT_EDGE_SIGNATURE", "maybe")).contains("required"));
    }

    #[test]
    fn public_surface_limits_have_safe_defaults_and_refuse_nonsense() {
        let c = Config::from_settings(&Settings::from_pairs(base())).unwrap();
        assert!(!c.signature_accept_v1, "version 1 is off by default");
        assert_eq!(c.connections.max_connections, 4096);
        assert!(c.connections.body_read_timeout < c.request_timeout);
        assert!(c.client_rate_limit_per_minute >= 60_000, "the default limit is generous");
        let accept = Config::from_settings(&with(base(), "ALLOT_EDGE_SIGNATURE_V1", "accept")).unwrap();
        assert!(accept.signature_accept_v1);
        for (k, v, says) in [
            ("ALLOT_EDGE_SIGNATURE_V1", "yes", "ALLOT_EDGE_SIGNATURE_V1"),
            ("ALLOT_MAX_CONNECTIONS", "0", "ALLOT_MAX_CONNECTIONS"),
            ("ALLOT_HEADER_READ_TIMEOUT_MS", "0", "ALLOT_HEADER_READ_TIMEOUT_MS"),
            ("ALLOT_BODY_READ_TIMEOUT_MS", "20000", "less than ALLOT_REQUEST_TIMEOUT_MS"),
            ("ALLOT_CLIENT_RATE_LIMIT_PER_MINUTE", "0", "ALLOT_CLIENT_RATE_LIMIT_PER_MINUTE"),
        ] {
            let err = Config::from_settings(&with(base(), k, v)).unwrap_err().to_string();
            assert!(err.contains(says), "{k}={v}: {err}");
        }
    }

    #[test]
    fn valkey_is_a_cluster_when_it_lists_nodes_or_is_told() {
        let one = Config::from_settings(&Settings::from_pairs(base())).unwrap();
        assert!(!one.valkey_url.unwrap().is_cluster());
        let told = Config::from_settings(&with(base(), "ALLOT_VALKEY_CLUSTER", "true")).unwrap();
        assert!(told.valkey_url.as_ref().unwrap().is_cluster());
        assert!(told.events_url.unwrap().is_cluster(), "events on the cache's Valkey: the same cluster");
        let listed = Config::from_settings(&with(base(), "VALKEY_URL", "redis://a:1,valkey://b:2")).unwrap();
        assert_eq!(listed.valkey_url.unwrap().nodes(), ["redis://a:1", "redis://b:2"]);
        let err = Config::from_settings(&with(base(), "VALKEY_URL", "redis://a:1,tcp://b:2")).unwrap_err().to_string();
        assert!(err.contains("VALKEY_URL") && err.contains("tcp://b:2"), "{err}");
    }

    #[test]
    fn events_have_their_own_valkey_or_share_the_cache_and_a_retention_of_a_day_or_more() {
        let shared = Config::from_settings(&Settings::from_pairs(base())).unwrap();
        assert_eq!(shared.events_url.as_ref().map(ToString::to_string).as_deref(), Some("redis://127.0.0.1:6379"));
        assert!(shared.events_share_cache, "unset: the cache's Valkey, and said so");
        assert_eq!(shared.events_retention, Duration::from_secs(7 * 86_400));
        let own = Config::from_settings(&with(base(), "ALLOT_EVENTS_URL", "valkey://10.0.0.9:6380")).unwrap();
        assert_eq!(own.events_url.as_ref().map(ToString::to_string).as_deref(), Some("redis://10.0.0.9:6380"));
        assert!(!own.events_share_cache);
        assert!(!own.events_url.unwrap().is_cluster());
        let cluster = Config::from_settings(&with(base(), "ALLOT_EVENTS_URL", "redis://a:1,redis://b:2")).unwrap();
        assert!(cluster.events_url.unwrap().is_cluster(), "a list of nodes is a cluster");
        let off = Config::from_settings(&with(base(), "ALLOT_EVENTS_URL", "none")).unwrap();
        assert_eq!((off.events_url, off.events_share_cache), (None, false));
        let mut no_valkey = base();
        no_valkey.retain(|(k, _)| k != "VALKEY_URL");
        no_valkey.push(("VALKEY_URL".into(), "none".into()));
        let none = Config::from_settings(&Settings::from_pairs(no_valkey)).unwrap();
        assert_eq!((none.events_url, none.events_share_cache), (None, false));
        let day = Config::from_settings(&with(base(), "ALLOT_EVENTS_RETENTION_DAYS", "1")).unwrap();
        assert_eq!(day.events_retention, Duration::from_secs(86_400));
        for (k, v, says) in [
            ("ALLOT_EVENTS_URL", "http://x", "ALLOT_EVENTS_URL"),
            ("ALLOT_EVENTS_RETENTION_DAYS", "0", "at least 1 day"),
            ("ALLOT_EVENTS_RETENTION_DAYS", "a week", "whole number of days"),
        ] {
            let err = Config::from_settings(&with(base(), k, v)).unwrap_err().to_string();
            assert!(err.contains(says), "{k}={v}: {err}");
        }
    }

    #[test]
    fn signature_can_be_turned_off_explicitly() {
        let mut pairs = base();
        pairs.retain(|(k, _)| k != "ALLOT_EDGE_SECRETS");
        pairs.push(("ALLOT_EDGE_SIGNATURE".into(), "off".into()));
        let c = Config::from_settings(&Settings::from_pairs(pairs)).unwrap();
        assert_eq!(c.signature_mode, SignatureMode::Off);
    }
}
