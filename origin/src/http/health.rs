//! Health and metrics: `/livez` (the process), `/readyz` (can serve: Postgres reachable; Valkey
//! down is `warn`, since allocations fall back to Postgres; so is the events Valkey, since events
//! wait in the outbox, and a read replica that is down or behind, since reads go to the primary),
//! `/health` (every dependency, checked in parallel with a timeout each, so a hung dependency
//! still gets an answer, and the relay's lag), and `/metrics`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use allot_shared::headers::HEALTH_CONTENT_TYPE;
use allot_shared::health::{Health, HealthCheck, HealthStatus};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::cache::CacheState;

/// How long any one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// A reconcile older than this many intervals makes `jobs:reconcile` warn.
const RECONCILE_STALE_INTERVALS: f64 = 3.0;
/// An event waiting longer than this for the stream makes `outbox:relay` warn.
const RELAY_LAG_WARN_SECS: f64 = 60.0;

fn render(mut h: Health) -> Response {
    h.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    for (name, checks) in &h.checks {
        let worst = checks.iter().map(|c| c.status).max().unwrap_or(HealthStatus::Pass);
        let v = match worst {
            HealthStatus::Pass => 0.0,
            HealthStatus::Warn => 1.0,
            HealthStatus::Fail => 2.0,
        };
        metrics::gauge!("allot_health_status", "check" => name.clone()).set(v);
    }
    let status = StatusCode::from_u16(h.status.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = serde_json::to_vec(&h).unwrap_or_default();
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(HEALTH_CONTENT_TYPE)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// The process is up.
pub async fn livez() -> Response {
    render(Health::from_checks(BTreeMap::new()))
}

fn check(
    component_type: &str,
    status: HealthStatus,
    value: serde_json::Value,
    unit: &str,
    output: Option<String>,
) -> Vec<HealthCheck> {
    vec![HealthCheck {
        component_id: None,
        component_type: Some(component_type.to_owned()),
        observed_value: Some(value),
        observed_unit: Some(unit.to_owned()),
        status,
        time: Some(crate::allocation::format_time(time::OffsetDateTime::now_utc())),
        output,
    }]
}

fn ms(started: Instant) -> serde_json::Value {
    serde_json::json!((started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0)
}

/// Run `probe` with the check timeout; `bad` is the status when it fails or hangs.
async fn latency_check<F, E>(probe: F, bad: HealthStatus) -> Vec<HealthCheck>
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => check("datastore", HealthStatus::Pass, ms(started), "ms", None),
        Ok(Err(e)) => check("datastore", bad, ms(started), "ms", Some(e.to_string())),
        Err(_) => check("datastore", bad, ms(started), "ms", Some(format!("no answer within {CHECK_TIMEOUT:?}"))),
    }
}

async fn postgres(pool: &sqlx::PgPool) -> Vec<HealthCheck> {
    latency_check(async { sqlx::query("SELECT 1").execute(pool).await.map(|_| ()) }, HealthStatus::Fail).await
}

async fn valkey(st: &AppState) -> Option<Vec<HealthCheck>> {
    let cache = st.engine.cache()?;
    let mut c = latency_check(cache.ping(), HealthStatus::Warn).await;
    let up = c[0].status == HealthStatus::Pass;
    metrics::gauge!("allot_valkey_up").set(if up { 1.0 } else { 0.0 });
    if !up {
        c[0].output = c[0].output.take().map(|o| format!("{o}; allocating from Postgres (degraded)"));
    }
    Some(c)
}

/// The events Valkey, reported apart from the cache even when it is the same server: down is a
/// warning (events wait in the outbox and the events API still serves them).
async fn events_store(st: &AppState) -> Option<Vec<HealthCheck>> {
    let stream = st.events.as_ref()?;
    let mut c = latency_check(stream.ping(), HealthStatus::Warn).await;
    let up = c[0].status == HealthStatus::Pass;
    metrics::gauge!("allot_events_valkey_up").set(if up { 1.0 } else { 0.0 });
    if !up {
        c[0].output = c[0].output.take().map(|o| format!("{o}; events wait in the outbox (degraded)"));
    }
    Some(c)
}

/// How long the oldest event not yet in the stream has waited, when there is a stream.
async fn relay_lag(st: &AppState) -> Option<Vec<HealthCheck>> {
    st.events.as_ref()?;
    Some(match tokio::time::timeout(CHECK_TIMEOUT, crate::relay::backlog(&st.db.primary)).await {
        Ok(Ok(b)) => {
            let late = b.oldest_secs > RELAY_LAG_WARN_SECS;
            let status = if late { HealthStatus::Warn } else { HealthStatus::Pass };
            let output = late.then(|| {
                format!(
                    "{} event(s) not yet in the stream, the oldest for {:.0} s (is `allot worker` running, and the \
                     events Valkey up?)",
                    b.pending, b.oldest_secs
                )
            });
            check("component", status, serde_json::json!((b.oldest_secs * 10.0).round() / 10.0), "s", output)
        }
        Ok(Err(e)) => component_warning("s", e.to_string()),
        Err(_) => component_warning("s", format!("no answer within {CHECK_TIMEOUT:?}")),
    })
}

/// A component check that could not observe its value.
fn component_warning(unit: &str, output: String) -> Vec<HealthCheck> {
    check("component", HealthStatus::Warn, serde_json::Value::Null, unit, Some(output))
}

/// Each product's cache set: warm (pass), rebuilding or cold (warn: allocations of that product
/// go to Postgres meanwhile).
async fn cache_sets(st: &AppState) -> Option<Vec<HealthCheck>> {
    let cache = st.engine.cache()?;
    let probe = async {
        let products: Vec<String> =
            sqlx::query_scalar("SELECT id FROM products ORDER BY id").fetch_all(&st.db.primary).await?;
        let states = cache.states(&products).await?;
        Ok::<_, anyhow::Error>(products.into_iter().zip(states).collect::<Vec<_>>())
    };
    let now = crate::allocation::format_time(time::OffsetDateTime::now_utc());
    Some(match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(sets)) => sets
            .into_iter()
            .map(|(product, state)| HealthCheck {
                component_id: Some(product),
                component_type: Some("component".to_owned()),
                observed_value: Some(serde_json::json!(state.as_str())),
                observed_unit: None,
                status: if state == CacheState::Warm { HealthStatus::Pass } else { HealthStatus::Warn },
                time: Some(now.clone()),
                output: (state != CacheState::Warm).then(|| "allocations of this product go to Postgres".to_owned()),
            })
            .collect(),
        Ok(Err(e)) => component_warning("", e.to_string()),
        Err(_) => component_warning("", format!("no answer within {CHECK_TIMEOUT:?}")),
    })
}

/// Age of the reconciler's last success, when the reconciler exists.
async fn reconcile_age(st: &AppState) -> Option<Vec<HealthCheck>> {
    if !(st.config.features.inventory_cache && st.engine.cache().is_some()) {
        return None;
    }
    let probe = async {
        let row: (Option<f64>, Option<i32>) = sqlx::query_as(
            "SELECT (SELECT extract(epoch FROM now() - max(finished_at))::float8 FROM job_runs
                      WHERE job_name = 'reconcile' AND outcome = 'succeeded'),
                    (SELECT interval_secs FROM scheduled_jobs WHERE name = 'reconcile')",
        )
        .fetch_one(&st.db.primary)
        .await?;
        Ok::<_, sqlx::Error>(row)
    };
    let every = |o: Option<i32>| f64::from(o.unwrap_or(30));
    Some(match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok((Some(age), interval))) => {
            let stale = age > RECONCILE_STALE_INTERVALS * every(interval);
            let status = if stale { HealthStatus::Warn } else { HealthStatus::Pass };
            let output = stale.then(|| format!("the last successful reconcile was {age:.0} s ago"));
            check("component", status, serde_json::json!((age * 10.0).round() / 10.0), "s", output)
        }
        Ok(Ok((None, _))) => {
            component_warning("s", "the reconciler has never succeeded (is `allot cron` running?)".into())
        }
        Ok(Err(e)) => component_warning("s", e.to_string()),
        Err(_) => component_warning("s", format!("no answer within {CHECK_TIMEOUT:?}")),
    })
}

/// Whether the replica serves reads, from its last lag check (no query): `warn` when it does not,
/// since reads then go to the primary.
fn replication(st: &AppState) -> Option<Vec<HealthCheck>> {
    if !st.db.has_replica {
        return None;
    }
    let status = st.db.route.status();
    let lag =
        status.lag.map_or(serde_json::Value::Null, |l| serde_json::json!((l.as_secs_f64() * 1000.0).round() / 1000.0));
    let output = (!status.serving).then(|| {
        format!("not serving reads: {}; reads go to the primary", status.reason.as_deref().unwrap_or("unknown"))
    });
    Some(vec![HealthCheck {
        component_id: Some("replication".to_owned()),
        component_type: Some("component".to_owned()),
        observed_value: Some(lag),
        observed_unit: Some("s".to_owned()),
        status: if status.serving { HealthStatus::Pass } else { HealthStatus::Warn },
        time: status.checked_at.map(crate::allocation::format_time),
        output,
    }])
}

/// Ready when Postgres answers; the cache and the events Valkey are checked in parallel and
/// only warn, as does a read replica that does not serve.
pub async fn readyz(State(st): State<AppState>) -> Response {
    let (pg, vk, ev) = tokio::join!(postgres(&st.db.primary), valkey(&st), events_store(&st));
    let rp = replication(&st);
    let warned = |c: &Option<Vec<HealthCheck>>| c.as_ref().is_some_and(|c| c[0].status == HealthStatus::Warn);
    let degraded: Vec<&str> =
        [(warned(&vk), "the inventory cache"), (warned(&ev), "the events Valkey"), (warned(&rp), "the read replica")]
            .into_iter()
            .filter_map(|(down, what)| down.then_some(what))
            .collect();
    let mut checks = BTreeMap::new();
    checks.insert("postgres:primary".to_owned(), pg);
    if let Some(r) = rp {
        checks.insert("postgres:replica".to_owned(), r);
    }
    if let Some(v) = vk {
        checks.insert("valkey".to_owned(), v);
    }
    if let Some(e) = ev {
        checks.insert("valkey:events".to_owned(), e);
    }
    let mut h = Health::from_checks(checks);
    if h.status == HealthStatus::Warn && !degraded.is_empty() {
        let verb = if degraded.len() == 1 { "is" } else { "are" };
        h.output = Some(format!("degraded: {} {verb} unavailable", degraded.join(" and ")));
    }
    render(h)
}

/// Every dependency, in parallel.
pub async fn health(State(st): State<AppState>) -> Response {
    let replica = async { if st.db.has_replica { Some(postgres(&st.db.replica).await) } else { None } };
    let (primary, replica, vk, sets, reconcile, events, lag) = tokio::join!(
        postgres(&st.db.primary),
        replica,
        valkey(&st),
        cache_sets(&st),
        reconcile_age(&st),
        events_store(&st),
        relay_lag(&st)
    );
    let mut checks = BTreeMap::new();
    checks.insert("postgres:primary".to_owned(), primary);
    if let Some(r) = replica {
        // Reads fall back to the primary, so a lost replica degrades rather than fails.
        let mut r: Vec<HealthCheck> = r
            .into_iter()
            .map(|mut c| {
                if c.status == HealthStatus::Fail {
                    c.status = HealthStatus::Warn;
                }
                c
            })
            .collect();
        // Its latency first, then its lag and whether it serves.
        r.extend(replication(&st).into_iter().flatten());
        checks.insert("postgres:replica".to_owned(), r);
    }
    if let Some(v) = vk {
        checks.insert("valkey".to_owned(), v);
    }
    if let Some(s) = sets.filter(|s| !s.is_empty()) {
        checks.insert("valkey:products".to_owned(), s);
    }
    if let Some(r) = reconcile {
        checks.insert("jobs:reconcile".to_owned(), r);
    }
    if let Some(e) = events {
        checks.insert("valkey:events".to_owned(), e);
    }
    if let Some(l) = lag {
        checks.insert("outbox:relay".to_owned(), l);
    }
    let mut h = Health::from_checks(checks);
    h.service_id = Some(crate::jobs::instance_name());
    h.description = Some(format!("allot origin, region {}", st.config.region));
    render(h)
}

/// Prometheus text format.
pub async fn metrics(State(st): State<AppState>) -> Response {
    let pools = [("primary", &st.db.primary, st.config.db_pool_size)].into_iter().chain(st.db.has_replica.then_some((
        "replica",
        &st.db.replica,
        st.config.db_read_pool_size,
    )));
    for (name, pool, max) in pools {
        let size = pool.size();
        let idle = pool.num_idle() as u32;
        metrics::gauge!("allot_db_pool_connections", "pool" => name, "state" => "in_use")
            .set(f64::from(size - idle.min(size)));
        metrics::gauge!("allot_db_pool_connections", "pool" => name, "state" => "idle").set(f64::from(idle));
        metrics::gauge!("allot_db_pool_connections", "pool" => name, "state" => "max").set(f64::from(max));
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))],
        crate::telemetry::metrics().render(),
    )
        .into_response()
}
