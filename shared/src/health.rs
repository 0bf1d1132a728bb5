//! The `application/health+json` body (draft-inadarei-api-health-check).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A component's or the service's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Healthy.
    Pass,
    /// Healthy with concerns (still serving).
    Warn,
    /// Unhealthy.
    Fail,
}

impl HealthStatus {
    /// The HTTP status the draft prescribes: 200 for pass and warn, 503 for fail.
    pub const fn http_status(self) -> u16 {
        match self {
            HealthStatus::Pass | HealthStatus::Warn => 200,
            HealthStatus::Fail => 503,
        }
    }
}

/// The health document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Overall status: the worst of the checks.
    pub status: HealthStatus,
    /// The service's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Which service instance answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    /// A human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Why the status is not pass, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Checks by `component:measurement` name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, Vec<HealthCheck>>,
}

/// One check of one component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Which instance of the component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_id: Option<String>,
    /// `datastore`, `system`, `component`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_type: Option<String>,
    /// The measured value (latency, age, colo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_value: Option<Value>,
    /// Unit of `observed_value` (`ms`, `s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_unit: Option<String>,
    /// This check's status.
    pub status: HealthStatus,
    /// When it was measured (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Why it is not pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl Health {
    /// A document whose status is the worst of its checks (pass when there are none).
    pub fn from_checks(checks: BTreeMap<String, Vec<HealthCheck>>) -> Self {
        let status = checks.values().flatten().map(|c| c.status).max().unwrap_or(HealthStatus::Pass);
        Self { status, version: None, service_id: None, description: None, output: None, checks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_check_wins_and_shape_is_the_drafts() {
        let mut checks = BTreeMap::new();
        let check = |s| HealthCheck {
            component_id: None,
            component_type: Some("datastore".into()),
            observed_value: Some(serde_json::json!(1.5)),
            observed_unit: Some("ms".into()),
            status: s,
            time: None,
            output: None,
        };
        checks.insert("postgres:primary".to_owned(), vec![check(HealthStatus::Pass)]);
        checks.insert("valkey".to_owned(), vec![check(HealthStatus::Warn)]);
        let h = Health::from_checks(checks);
        assert_eq!(h.status, HealthStatus::Warn);
        assert_eq!(h.status.http_status(), 200);
        assert_eq!(HealthStatus::Fail.http_status(), 503);
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["status"], "warn");
        assert_eq!(json["checks"]["valkey"][0]["observedUnit"], "ms");
        assert_eq!(json["checks"]["valkey"][0]["componentType"], "datastore");
        assert_eq!(serde_json::from_value::<Health>(json).unwrap(), h);
    }
}
