//! `GET /healthz` (the edge itself, in the isolate) and `GET /readyz` (the home origin's readiness,
//! kept in the edge cache for a few seconds so probe storms never reach the origin).
//!
//! A region with several origin instances is ready when at least one of them is: the edge fails
//! over to it. `/readyz` asks every instance at once and lists each under `origin:<region>` with
//! its place in `ORIGINS` (`componentId` `eu/1`, `eu/2`; never its URL). The document is the first
//! ready instance's (they share one database and cache, so they report the same components); its
//! status is that instance's when all are ready, `warn` (still HTTP 200) when only some are, and
//! `fail` (503) when none is.

use std::collections::BTreeMap;

use allot_shared::health::{Health, HealthCheck, HealthStatus};
use allot_shared::{ApiError, ErrorCode, Region};
use worker::Method;

use crate::config::{Config, ConfigError};
use crate::context::RequestContext;
use crate::origins::Instances;
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

/// One instance's `/readyz` answer and how long it took.
#[derive(Debug, Clone)]
pub struct Probe {
    /// How the call went.
    pub attempt: Attempt,
    /// Its round trip in ms.
    pub latency_ms: u64,
}

/// A region's readiness: the document, and the facts the log and the cache need.
#[derive(Debug, Clone)]
pub struct RegionReadiness {
    /// The `/readyz` document.
    pub doc: Health,
    /// How many instances are ready.
    pub ready: usize,
    /// The instance whose document was used (index into the probes).
    pub chosen: usize,
}

/// The readiness of a region from its instances' probes (in `ORIGINS` order; see the module doc).
pub fn region_readiness(region: &Region, probes: &[Probe]) -> RegionReadiness {
    debug_assert!(!probes.is_empty(), "a region has at least one instance");
    let docs: Vec<Health> = probes.iter().map(|p| readiness(region, &p.attempt, p.latency_ms)).collect();
    let ready = docs.iter().filter(|d| d.status != HealthStatus::Fail).count();
    let chosen = docs.iter().position(|d| d.status != HealthStatus::Fail).unwrap_or(0);
    let Some(mut doc) = docs.get(chosen).cloned() else {
        return RegionReadiness { doc: readiness(region, &Attempt::Unreachable, 0), ready: 0, chosen: 0 };
    };
    let name = format!("origin:{region}");
    let instances: Vec<HealthCheck> = docs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let mut c = d.checks.get(&name)?.first()?.clone();
            c.component_id = Some(format!("{region}/{}", i + 1));
            Some(c)
        })
        .collect();
    doc.checks.insert(name, instances);
    if docs.len() > 1 {
        doc.description = Some(format!("readiness of the {region} origin: {ready} of {} instances ready", docs.len()));
        if ready > 0 && ready < docs.len() {
            doc.status = doc.status.max(HealthStatus::Warn);
            doc.output = Some(format!("{} of {} {region} origin instances not ready", docs.len() - ready, docs.len()));
        }
    }
    RegionReadiness { doc, ready, chosen }
}

/// `GET /readyz`: from the edge cache, else one call to each instance of the region, at once,
/// whose result is cached.
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
    let Some(instances) = config.origin_for(&region) else {
        return Reply::error(
            &ApiError::new(ErrorCode::NotFound, format!("no origin serves region {region}")),
            &cx.request_id,
        );
    };
    let probes = probe_all(config, cx, instances).await;
    let RegionReadiness { doc, ready, chosen } = region_readiness(&region, &probes);
    cx.origin_attempts = u8::try_from(probes.len()).unwrap_or(u8::MAX);
    cx.origin_outcome = probes.get(chosen).map(|p| p.attempt.outcome());
    cx.origin_instance = Some(format!("{region}/{}", chosen + 1));
    // Anything short of every instance ready is reused briefly, so recovery shows quickly.
    let ttl =
        if ready == probes.len() && doc.status != HealthStatus::Fail { READY_TTL_SECS } else { NOT_READY_TTL_SECS };
    let reply = Reply::health(&doc);
    if let Err(e) = edge_cache::put(&key, &reply, ttl).await {
        platform::log_line(&serde_json::json!({ "level": "warn", "msg": "readyz not cached", "error": e }).to_string());
    }
    reply.with_header(EDGE_CACHE, "miss")
}

/// Ask every instance's `/readyz` at once (bounded by [`READYZ_TIMEOUT_MS`]), in `ORIGINS` order.
async fn probe_all(config: &Config, cx: &RequestContext, instances: &Instances) -> Vec<Probe> {
    // Signed like everything else that reaches an origin, though the origin's /readyz does not check.
    let out = Outbound {
        method: Method::Get,
        path_and_query: "/readyz".to_owned(),
        key_id: String::new(),
        headers: cx.origin_headers(),
        body: Vec::new(),
    };
    let timeout_ms = config.origin_timeout_ms.min(READYZ_TIMEOUT_MS);
    let out = &out;
    let probes = instances.urls().iter().map(|base| async move {
        let started = platform::now_ms();
        let attempt = upstream::send_once(out, base, &config.signing_secret, timeout_ms).await;
        Probe { attempt, latency_ms: platform::now_ms().saturating_sub(started) }
    });
    futures_util::future::join_all(probes).await
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
    fn a_region_is_ready_while_one_instance_is() {
        let eu = Region::parse("eu").unwrap();
        let answer = |status, body: &str| Attempt::Answered(Answer { status, headers: vec![], body: body.into() });
        let pass = || Probe {
            attempt: answer(200, r#"{"status":"pass","checks":{"postgres:primary":[{"status":"pass"}]}}"#),
            latency_ms: 4,
        };
        let down = || Probe { attempt: Attempt::Unreachable, latency_ms: 1 };

        let one = region_readiness(&eu, &[pass()]);
        assert_eq!((one.doc.status, one.ready, one.chosen), (HealthStatus::Pass, 1, 0));
        assert_eq!(one.doc.description.as_deref(), Some("readiness of the eu origin"));
        assert_eq!(one.doc.checks["origin:eu"].len(), 1);
        assert_eq!(one.doc.checks["origin:eu"][0].component_id.as_deref(), Some("eu/1"));

        let both = region_readiness(&eu, &[pass(), pass()]);
        assert_eq!((both.doc.status, both.ready), (HealthStatus::Pass, 2));
        assert_eq!(both.doc.output, None);

        let half = region_readiness(&eu, &[down(), pass()]);
        assert_eq!((half.doc.status, half.ready, half.chosen), (HealthStatus::Warn, 1, 1));
        assert_eq!(half.doc.status.http_status(), 200);
        assert!(half.doc.checks.contains_key("postgres:primary"), "the ready instance's document");
        let checks = &half.doc.checks["origin:eu"];
        let ids: Vec<_> = checks.iter().map(|c| (c.component_id.clone().unwrap(), c.status)).collect();
        assert_eq!(ids, [("eu/1".to_owned(), HealthStatus::Fail), ("eu/2".to_owned(), HealthStatus::Pass)]);
        assert_eq!(half.doc.output.as_deref(), Some("1 of 2 eu origin instances not ready"));
        assert_eq!(half.doc.description.as_deref(), Some("readiness of the eu origin: 1 of 2 instances ready"));

        let none =
            region_readiness(&eu, &[down(), Probe { attempt: answer(503, r#"{"status":"fail"}"#), latency_ms: 2 }]);
        assert_eq!((none.doc.status, none.ready), (HealthStatus::Fail, 0));
        assert_eq!(none.doc.status.http_status(), 503);
        assert_eq!(none.doc.checks["origin:eu"].len(), 2);
        let json = serde_json::to_string(&none.doc).unwrap();
        assert!(!json.contains("127.0.0.1") && !json.contains("http"), "no instance URL: {json}");
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
