//! `/livez` and `/readyz`: the process, and whether it can serve (Postgres reachable).
//! Valkey down is `warn`, not `fail`: allocations fall back to Postgres.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use allot_shared::headers::HEALTH_CONTENT_TYPE;
use allot_shared::health::{Health, HealthCheck, HealthStatus};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

fn render(mut h: Health) -> Response {
    h.version = Some(env!("CARGO_PKG_VERSION").to_owned());
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

fn check(component_type: &str, status: HealthStatus, started: Instant, output: Option<String>) -> Vec<HealthCheck> {
    vec![HealthCheck {
        component_id: None,
        component_type: Some(component_type.to_owned()),
        observed_value: Some(serde_json::json!((started.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0)),
        observed_unit: Some("ms".to_owned()),
        status,
        time: Some(crate::engine::format_time(time::OffsetDateTime::now_utc())),
        output,
    }]
}

/// Ready when Postgres answers; Valkey is checked in parallel and only warns.
pub async fn readyz(State(st): State<AppState>) -> Response {
    let pg = async {
        let started = Instant::now();
        let r = tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&st.db.primary)).await;
        match r {
            Ok(Ok(_)) => check("datastore", HealthStatus::Pass, started, None),
            Ok(Err(e)) => check("datastore", HealthStatus::Fail, started, Some(format!("{e}"))),
            Err(_) => check("datastore", HealthStatus::Fail, started, Some("no answer within 1 s".into())),
        }
    };
    let valkey = async {
        let started = Instant::now();
        match st.engine.cache() {
            None => None,
            Some(cache) => Some(match cache.ping().await {
                Ok(()) => check("datastore", HealthStatus::Pass, started, None),
                Err(e) => check(
                    "datastore",
                    HealthStatus::Warn,
                    started,
                    Some(format!("{e}; allocating from Postgres (degraded)")),
                ),
            }),
        }
    };
    let (pg, valkey) = tokio::join!(pg, valkey);
    let mut checks = BTreeMap::new();
    checks.insert("postgres:primary".to_owned(), pg);
    if let Some(v) = valkey {
        checks.insert("valkey".to_owned(), v);
    }
    let mut h = Health::from_checks(checks);
    if h.status == HealthStatus::Warn {
        h.output = Some("degraded: the inventory cache is unavailable".into());
    }
    render(h)
}
