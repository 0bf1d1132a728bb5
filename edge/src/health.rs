//! `GET /healthz` (the edge itself, in the isolate) and `GET /readyz` (the home origin's readiness,
//! kept in the edge cache for a few seconds so probe storms never reach the origin).

use std::collections::BTreeMap;

use allot_shared::health::{Health, HealthCheck, HealthStatus};
use allot_shared::{ApiError, ErrorCode, Region};
use worker::Method;

use crate::config::{Config, ConfigError};
use crate::context::RequestContext;
use crate::reply::{EDGE_CACHE, Reply};
use crate::upstream::{self, Attempt, Outbound};
use crate::{edge_cache, platform};

/// How long a passing (or warning) readiness is reused.
pub const READY_TTL_SECS: u32 = 5;
/// How long a failing readiness is reused (shorter: recovery shows quickly).
pub const NOT_READY_TTL_SECS: u32 = 2;
/// Upper bound on the origin's `/readyz` round trip (probers wait a few seconds at most).
pub const READYZ_TIMEOUT_MS: u32 = 2_000;

fn check(component_type: &str, value: serde_json::Value, status: HealthStatus, output: Option<String>) -> HealthCheck {
    HealthCheck {
        component_id: None,
        component_type: Some(component_type.to_owned()),
        observed_value: Some(value),
        observed_unit: None,
        status,
        time: None,
        output,
    }
}

/// The `/healthz` document: this edge, its colo, the region it serves by default and the
/// configured regions. A broken configuration is this edge's own failure, so it fails here.
pub fn healthz(colo: Option<&str>, config: Result<&Config, &ConfigError>) -> Health {
    let mut checks = BTreeMap::new();
    let colo_value = serde_json::json!(colo.unwrap_or("unknown"));
    checks.insert("edge:colo".to_owned(), vec![check("system", colo_value, HealthStatus::Pass, None)]);
    match config {
        Ok(c) => {
            let region = serde_json::json!(c.default_region.as_str());
            checks.insert("edge:region".to_owned(), vec![check("system", region, HealthStatus::Pass, None)]);
            let regions = serde_json::json!(c.regions());
            checks.insert("edge:regions".to_owned(), vec![check("system", regions, HealthStatus::Pass, None)]);
        }
        Err(_) => {
            // The reason goes to the log (lib.rs), not to whoever asks.
            let v = serde_json::json!("invalid");
            let why = Some("the edge's configuration is invalid; see the worker's log".to_owned());
            checks.insert("edge:config".to_owned(), vec![check("system", v, HealthStatus::Fail, why)]);
        }
    }
    let mut doc = Health::from_checks(checks);
    doc.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    doc.description = Some("allot edge".to_owned());
    doc.service_id = colo.map(|c| format!("allot-edge@{c}"));
    doc
}

/// The region `/readyz` is about: `?region=` (validated, configured) or the default region.
pub fn readyz_region(query: Option<&str>, config: &Config) -> Result<Region, ApiError> {
    let asked = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == "region")
        .map(|(_, v)| v);
    let Some(asked) = asked else { return Ok(config.default_region.clone()) };
    let region = Region::parse(asked).map_err(|r| ApiError::validation("region", r))?;
    if config.origin_for(&region).is_none() {
        return Err(ApiError::new(ErrorCode::NotFound, format!("no origin serves region {region}")));
    }
    Ok(region)
}

/// The readiness document for one origin attempt that took `latency_ms`.
pub fn readiness(region: &Region, attempt: &Attempt, latency_ms: u64) -> Health {
    let fail = |why: String| {
        let mut checks = BTreeMap::new();
        let c = HealthCheck {
            observed_unit: Some("ms".into()),
            ..check("component", serde_json::json!(latency_ms), HealthStatus::Fail, Some(why))
        };
        checks.insert(format!("origin:{region}"), vec![c]);
        Health::from_checks(checks)
    };
    let mut doc = match attempt {
        Attempt::Answered(a) if matches!(a.status, 200 | 503) => match serde_json::from_slice::<Health>(&a.body) {
            Ok(mut origin) => {
                let c = HealthCheck {
                    observed_unit: Some("ms".into()),
                    ..check("component", serde_json::json!(latency_ms), origin.status, origin.output.clone())
                };
                origin.checks.insert(format!("origin:{region}"), vec![c]);
                origin
            }
            Err(_) => fail(format!("the origin answered HTTP {} without a health document", a.status)),
        },
        Attempt::Answered(a) => fail(format!("the origin answered HTTP {}", a.status)),
        Attempt::Unreachable => fail("the origin is unreachable".into()),
        Attempt::TimedOut => fail(format!("the origin did not answer within {READYZ_TIMEOUT_MS} ms")),
    };
    doc.description = Some(format!("readiness of the {region} origin"));
    doc
}

/// `GET /readyz`: from the edge cache, else one origin call whose result is cached.
pub async fn readyz(config: &Config, cx: &mut RequestContext) -> Reply {
    let region = match readyz_region(cx.query.as_deref(), config) {
        Ok(r) => r,
        Err(e) => return Reply::error(&e, &cx.request_id),
    };
    cx.region = Some(region.to_string());
    let key = edge_cache::readyz_key(cx.host.as_deref(), &region);
    if let Some(hit) = edge_cache::get(&key).await {
        cx.cache = Some("hit");
        return hit.with_header(EDGE_CACHE, "hit");
    }
    cx.cache = Some("miss");
    let Some(base) = config.origin_for(&region) else {
        return Reply::error(
            &ApiError::new(ErrorCode::NotFound, format!("no origin serves region {region}")),
            &cx.request_id,
        );
    };
    // Signed like everything else that reaches an origin, though the origin's /readyz does not check.
    let out = Outbound {
        method: Method::Get,
        base: base.to_owned(),
        path_and_query: "/readyz".to_owned(),
        key_id: String::new(),
        headers: cx.origin_headers(),
        body: Vec::new(),
    };
    let started = platform::now_ms();
    let attempt =
        upstream::send_once(&out, &config.signing_secret, config.origin_timeout_ms.min(READYZ_TIMEOUT_MS)).await;
    cx.origin_attempts = 1;
    cx.origin_outcome = Some(attempt.outcome());
    let doc = readiness(&region, &attempt, platform::now_ms().saturating_sub(started));
    let ttl = if doc.status == HealthStatus::Fail { NOT_READY_TTL_SECS } else { READY_TTL_SECS };
    let reply = Reply::health(&doc);
    if let Err(e) = edge_cache::put(&key, &reply, ttl).await {
        platform::log_line(&serde_json::json!({ "level": "warn", "msg": "readyz not cached", "error": e }).to_string());
    }
    reply.with_header(EDGE_CACHE, "miss")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Answer;

    fn config() -> Config {
        Config::from_lookup(|k| match k {
            "ORIGINS" => Some(r#"{"eu":"http://127.0.0.1:1","us":"http://127.0.0.1:2"}"#.into()),
            "DEFAULT_REGION" => Some("eu".into()),
            "EDGE_SIGNING_SECRET" => Some("0123456789abcdef".into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn healthz_names_colo_and_regions() {
        let h = healthz(Some("FRA"), Ok(&config()));
        assert_eq!(h.status, HealthStatus::Pass);
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["checks"]["edge:colo"][0]["observedValue"], "FRA");
        assert_eq!(json["checks"]["edge:region"][0]["observedValue"], "eu");
        assert_eq!(json["checks"]["edge:regions"][0]["observedValue"], serde_json::json!(["eu", "us"]));
        let broken = healthz(None, Err(&ConfigError("ORIGINS is not set".into())));
        assert_eq!(broken.status, HealthStatus::Fail);
        assert_eq!(broken.status.http_status(), 503);
    }

    #[test]
    fn readyz_regions() {
        let c = config();
        assert_eq!(readyz_region(None, &c).unwrap().as_str(), "eu");
        assert_eq!(readyz_region(Some("x=1&region=us"), &c).unwrap().as_str(), "us");
        assert_eq!(readyz_region(Some("region=ap"), &c).unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(readyz_region(Some("region=EU"), &c).unwrap_err().code, ErrorCode::ValidationFailed);
        assert_eq!(readyz_region(Some("region"), &c).unwrap_err().code, ErrorCode::ValidationFailed);
    }

    #[test]
    fn readiness_reflects_the_origin() {
        let eu = Region::parse("eu").unwrap();
        let origin = |status, body: &str| Attempt::Answered(Answer { status, headers: vec![], body: body.into() });
        let pass =
            readiness(&eu, &origin(200, r#"{"status":"pass","checks":{"postgres:primary":[{"status":"pass"}]}}"#), 3);
        assert_eq!(pass.status, HealthStatus::Pass);
        assert!(pass.checks.contains_key("postgres:primary") && pass.checks.contains_key("origin:eu"));
        let warn = readiness(&eu, &origin(200, r#"{"status":"warn"}"#), 3);
        assert_eq!(warn.status, HealthStatus::Warn);
        for a in [
            origin(503, r#"{"status":"fail"}"#),
            origin(200, "not json"),
            origin(404, ""),
            Attempt::Unreachable,
            Attempt::TimedOut,
        ] {
            assert_eq!(readiness(&eu, &a, 3).status, HealthStatus::Fail, "{a:?}");
        }
    }
}
