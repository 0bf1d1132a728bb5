//! The worker's configuration: wrangler.toml vars and the signing secret, validated.
//!
//! Read from `env` on the first request and kept for the isolate's life (vars and secrets are
//! fixed per deployed version; a new version gets new isolates). A bad configuration is not kept:
//! it shows up as `/healthz` fail and `500 INTERNAL` on the API, never as a panic.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use allot_shared::Limits;
use allot_shared::Region;
use allot_shared::rate_limit::RateLimitPolicy;

use crate::origins::Instances;
pub use crate::origins::ORIGINS;
/// Var: the region `/readyz` and `/healthz` speak for when no `?region=` is given.
pub const DEFAULT_REGION: &str = "DEFAULT_REGION";
/// Var: largest `quantity` in one allocation (same as the origin's `ALLOT_MAX_QUANTITY`).
pub const MAX_QUANTITY: &str = "MAX_QUANTITY";
/// Var: largest request body in bytes (same as the origin's `ALLOT_MAX_BODY_BYTES`).
pub const MAX_BODY_BYTES: &str = "MAX_BODY_BYTES";
/// Var: requests per window of binding `RL_KEY_DEFAULT` (must mirror its `simple.limit`).
pub const RL_KEY_LIMIT: &str = "RL_KEY_LIMIT";
/// Var: window of binding `RL_KEY_DEFAULT` in seconds (must mirror its `simple.period`).
pub const RL_KEY_PERIOD: &str = "RL_KEY_PERIOD";
/// Var: failed authentications per window of binding `RL_AUTH_FAIL_IP` (mirrors `simple.limit`).
pub const RL_AUTH_FAIL_LIMIT: &str = "RL_AUTH_FAIL_LIMIT";
/// Var: window of binding `RL_AUTH_FAIL_IP` in seconds (mirrors `simple.period`).
pub const RL_AUTH_FAIL_PERIOD: &str = "RL_AUTH_FAIL_PERIOD";
/// Var: how long one origin attempt (connect, headers and body) may take, in milliseconds.
pub const ORIGIN_TIMEOUT_MS: &str = "ORIGIN_TIMEOUT_MS";
/// Var: how long the whole request body may take to arrive, in milliseconds (the origin's
/// `ALLOT_BODY_READ_TIMEOUT_MS`); past it the caller gets `408 REQUEST_TIMEOUT`.
pub const BODY_TIMEOUT_MS: &str = "BODY_TIMEOUT_MS";
/// Secret: the HMAC key shared with the origins (`ALLOT_EDGE_SECRETS` there).
pub const EDGE_SIGNING_SECRET: &str = "EDGE_SIGNING_SECRET";

/// Rate-limit binding for API keys on the default plan.
pub const RL_KEY_BINDING: &str = "RL_KEY_DEFAULT";
/// Rate-limit binding counting failed authentications per client IP.
pub const RL_AUTH_FAIL_BINDING: &str = "RL_AUTH_FAIL_IP";

/// Default per-attempt origin timeout.
pub const DEFAULT_ORIGIN_TIMEOUT_MS: u32 = 10_000;
/// Default body timeout (the origin's default too).
pub const DEFAULT_BODY_TIMEOUT_MS: u32 = 10_000;
/// Shortest signing secret accepted (the origin's rule).
pub const MIN_SECRET_LEN: usize = 16;

thread_local! {
    static LOADED: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
}

/// Validated configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Region → its origin instances (base URLs `scheme://host[:port]`, no trailing slash).
    pub origins: BTreeMap<Region, Instances>,
    /// The region `/readyz` checks by default.
    pub default_region: Region,
    /// Body and quantity limits, as the origin enforces them.
    pub limits: Limits,
    /// The per-key quota (names binding [`RL_KEY_BINDING`]'s numbers for the headers).
    pub key_policy: RateLimitPolicy,
    /// The failed-authentication quota per client IP.
    pub auth_fail_policy: RateLimitPolicy,
    /// Per-attempt origin timeout in milliseconds.
    pub origin_timeout_ms: u32,
    /// How long the request body may take to arrive, in milliseconds.
    pub body_timeout_ms: u32,
    /// HMAC key for `allot-signature`.
    pub signing_secret: Vec<u8>,
}

// The secret must never reach a log through Debug.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("origins", &self.origins)
            .field("default_region", &self.default_region)
            .field("limits", &self.limits)
            .field("key_policy", &self.key_policy)
            .field("auth_fail_policy", &self.auth_fail_policy)
            .field("origin_timeout_ms", &self.origin_timeout_ms)
            .field("body_timeout_ms", &self.body_timeout_ms)
            .field("signing_secret", &"<redacted>")
            .finish()
    }
}

/// What is wrong with the configuration (for logs and `/healthz`; never secret values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn number<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError> {
    let value = match get(name) {
        None => default,
        Some(s) => s.trim().parse::<T>().map_err(|_| ConfigError(format!("{name} must be a number, got {s:?}")))?,
    };
    if !range.contains(&value) {
        return Err(ConfigError(format!("{name} must be from {} to {}", range.start(), range.end())));
    }
    Ok(value)
}

fn origins(raw: Option<String>) -> Result<BTreeMap<Region, Instances>, ConfigError> {
    let raw = raw.ok_or_else(|| ConfigError(format!("{ORIGINS} is not set")))?;
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(&raw).map_err(|_| {
        ConfigError(format!("{ORIGINS} must be a JSON object of region code to origin URL or list of origin URLs"))
    })?;
    if map.is_empty() {
        return Err(ConfigError(format!("{ORIGINS} names no region")));
    }
    map.iter()
        .map(|(region, value)| {
            let r = Region::parse(region).map_err(|e| ConfigError(format!("{ORIGINS}: {region:?}: {e}")))?;
            Ok((r, Instances::parse(region, value).map_err(ConfigError)?))
        })
        .collect()
}

impl Config {
    /// Read and validate every var through `get` (`None` = unset).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let origins = origins(get(ORIGINS))?;
        let default_region = match get(DEFAULT_REGION) {
            Some(s) => Region::parse(s.trim()).map_err(|e| ConfigError(format!("{DEFAULT_REGION}: {e}")))?,
            None if origins.len() == 1 => {
                origins.keys().next().cloned().ok_or_else(|| ConfigError("unreachable".into()))?
            }
            None => {
                return Err(ConfigError(format!("{DEFAULT_REGION} is required when {ORIGINS} has several regions")));
            }
        };
        if !origins.contains_key(&default_region) {
            return Err(ConfigError(format!("{DEFAULT_REGION} {default_region} has no entry in {ORIGINS}")));
        }
        let defaults = Limits::default();
        // The origin's ranges (ALLOT_MAX_QUANTITY, ALLOT_MAX_BODY_BYTES).
        let limits = Limits {
            max_quantity: number(&get, MAX_QUANTITY, defaults.max_quantity, 1..=1000)?,
            max_body_bytes: number(&get, MAX_BODY_BYTES, defaults.max_body_bytes, 256..=1_048_576)?,
        };
        let key_policy = RateLimitPolicy {
            name: "default".into(),
            limit: number(&get, RL_KEY_LIMIT, 100, 1..=1_000_000)?,
            window_secs: number(&get, RL_KEY_PERIOD, 60, 1..=86_400)?,
        };
        let auth_fail_policy = RateLimitPolicy {
            name: "auth-failures".into(),
            limit: number(&get, RL_AUTH_FAIL_LIMIT, 20, 1..=1_000_000)?,
            window_secs: number(&get, RL_AUTH_FAIL_PERIOD, 60, 1..=86_400)?,
        };
        let origin_timeout_ms = number(&get, ORIGIN_TIMEOUT_MS, DEFAULT_ORIGIN_TIMEOUT_MS, 50..=60_000)?;
        let body_timeout_ms = number(&get, BODY_TIMEOUT_MS, DEFAULT_BODY_TIMEOUT_MS, 50..=60_000)?;
        let secret = get(EDGE_SIGNING_SECRET)
            .ok_or_else(|| ConfigError(format!("secret {EDGE_SIGNING_SECRET} is not set (wrangler secret put)")))?;
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError(format!("secret {EDGE_SIGNING_SECRET} must be at least {MIN_SECRET_LEN} bytes")));
        }
        Ok(Self {
            origins,
            default_region,
            limits,
            key_policy,
            auth_fail_policy,
            origin_timeout_ms,
            body_timeout_ms,
            signing_secret: secret.into_bytes(),
        })
    }

    /// The configuration from the worker's vars and secrets, parsed once per isolate.
    pub fn load(env: &worker::Env) -> Result<Rc<Self>, ConfigError> {
        if let Some(config) = LOADED.with(|c| c.borrow().clone()) {
            return Ok(config);
        }
        let config = Rc::new(Self::from_lookup(|name| crate::platform::var(env, name))?);
        LOADED.with(|c| *c.borrow_mut() = Some(Rc::clone(&config)));
        Ok(config)
    }

    /// The origin instances serving `region`, if any.
    pub fn origin_for(&self, region: &Region) -> Option<&Instances> {
        self.origins.get(region)
    }

    /// The configured region codes, sorted.
    pub fn regions(&self) -> Vec<String> {
        self.origins.keys().map(|r| r.as_str().to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            (ORIGINS, r#"{"eu":"http://127.0.0.1:8080","us":"https://us.origin.example/"}"#),
            (DEFAULT_REGION, "eu"),
            (MAX_QUANTITY, "20"),
            (MAX_BODY_BYTES, "16384"),
            (RL_KEY_LIMIT, "100"),
            (RL_KEY_PERIOD, "60"),
            (EDGE_SIGNING_SECRET, "0123456789abcdef0123"),
        ])
    }

    fn load(vars: &HashMap<&'static str, &'static str>) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned()))
    }

    #[test]
    fn reads_a_full_config() {
        let c = load(&base()).unwrap();
        assert_eq!(c.regions(), ["eu", "us"]);
        let urls = |r: &str| c.origin_for(&Region::parse(r).unwrap()).map(|i| i.urls().to_vec());
        assert_eq!(urls("us"), Some(vec!["https://us.origin.example".to_owned()]));
        assert_eq!(urls("eu"), Some(vec!["http://127.0.0.1:8080".to_owned()]));
        assert_eq!(urls("ap"), None);
        assert_eq!(c.default_region.as_str(), "eu");
        assert_eq!(c.key_policy.policy_header(), "\"default\";q=100;w=60");
        assert_eq!(c.auth_fail_policy.policy_header(), "\"auth-failures\";q=20;w=60");
        assert_eq!(c.origin_timeout_ms, DEFAULT_ORIGIN_TIMEOUT_MS);
        assert_eq!(c.body_timeout_ms, DEFAULT_BODY_TIMEOUT_MS);
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn reads_lists_of_instances_beside_single_urls() {
        let mut v = base();
        v.insert(ORIGINS, r#"{"eu":["http://127.0.0.1:8080","http://127.0.0.1:8081/"],"us":"http://10.0.0.2:80"}"#);
        let c = load(&v).unwrap();
        let eu = c.origin_for(&Region::parse("eu").unwrap()).unwrap();
        assert_eq!(eu.urls(), ["http://127.0.0.1:8080", "http://127.0.0.1:8081"]);
        assert_eq!(c.origin_for(&Region::parse("us").unwrap()).unwrap().len(), 1);
        assert_eq!(c.regions(), ["eu", "us"]);
    }

    #[test]
    fn single_region_is_the_default() {
        let mut v = base();
        v.insert(ORIGINS, r#"{"ap":"http://10.0.0.1:1"}"#);
        v.remove(DEFAULT_REGION);
        assert_eq!(load(&v).unwrap().default_region.as_str(), "ap");
    }

    #[test]
    fn refuses_bad_configs() {
        let cases: [(&str, Option<&str>, &str); 18] = [
            (ORIGINS, None, "ORIGINS is not set"),
            (ORIGINS, Some("[]"), "JSON object"),
            (ORIGINS, Some("{}"), "names no region"),
            (ORIGINS, Some(r#"{"EU":"http://a"}"#), "\"EU\""),
            (ORIGINS, Some(r#"{"eu":"ftp://a"}"#), "http or https"),
            (ORIGINS, Some(r#"{"eu":[]}"#), "region \"eu\" has an empty list of origins"),
            (ORIGINS, Some(r#"{"eu":["http://a:1","http://a:1/"]}"#), "lists http://a:1 twice"),
            (ORIGINS, Some(r#"{"eu":["http://a:1","no scheme"]}"#), "is not a URL"),
            (ORIGINS, Some(r#"{"eu":"http://a/base"}"#), "without a path"),
            (ORIGINS, Some(r#"{"eu":"http://u:p@a"}"#), "credentials"),
            (DEFAULT_REGION, Some("ap"), "no entry"),
            (DEFAULT_REGION, None, "required"),
            (MAX_QUANTITY, Some("lots"), "must be a number"),
            (RL_KEY_PERIOD, Some("0"), "from 1 to"),
            (BODY_TIMEOUT_MS, Some("soon"), "BODY_TIMEOUT_MS must be a number"),
            (BODY_TIMEOUT_MS, Some("10"), "BODY_TIMEOUT_MS must be from 50 to 60000"),
            (BODY_TIMEOUT_MS, Some("60001"), "from 50 to 60000"),
            (EDGE_SIGNING_SECRET, Some("short"), "at least 16"),
        ];
        for (name, value, want) in cases {
            let mut v = base();
            match value {
                Some(x) => v.insert(name, x),
                None => v.remove(name),
            };
            let err = load(&v).unwrap_err().0;
            assert!(err.contains(want), "{name}={value:?}: {err}");
            assert!(!err.contains("0123456789abcdef"), "{err}");
        }
    }
}
