//! Who did what: the actor of an operator action, and its audit row, written in the same
//! transaction as the change it records.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::AppError;

/// Who acts: an operator (by id) through the API, or a person at the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    name: String,
    request_id: Option<String>,
}

impl Actor {
    /// An operator calling the API, with the request's id.
    pub fn operator(id: Uuid, request_id: Option<&str>) -> Self {
        Self { name: id.to_string(), request_id: request_id.map(str::to_owned) }
    }

    /// The person running the CLI: `cli:<os user>`.
    pub fn cli() -> Self {
        let user = ["USER", "LOGNAME"]
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .find(|u| !u.is_empty() && u.len() <= 64)
            .or_else(os_user)
            .unwrap_or_else(|| "unknown".to_owned());
        Self { name: format!("cli:{user}"), request_id: None }
    }

    /// The platform acting on its own (a job, the webhook dispatcher): `system:<part>`.
    pub fn system(part: &str) -> Self {
        Self { name: format!("system:{part}"), request_id: None }
    }

    /// The name stored in `audit_log.actor`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The request this action came with, if any.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

/// The process's user when the environment does not name it (services, `sudo -i`, containers):
/// its uid from `/proc/self/status`, named by `/etc/passwd`, else `uid<n>`.
fn os_user() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|l| {
        let mut fields = l.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid).then(|| name.to_owned())
    });
    Some(name.unwrap_or_else(|| format!("uid{uid}")))
}

/// Record `action` on `target` by `actor`, inside the caller's transaction.
pub async fn record(
    tx: &mut PgConnection,
    actor: &Actor,
    action: &str,
    target: &str,
    change: Value,
) -> Result<(), AppError> {
    debug_assert!(action.contains('.'), "actions are <noun>.<verb>: {action}");
    sqlx::query("INSERT INTO audit_log (actor, action, target, change, request_id) VALUES ($1, $2, $3, $4, $5)")
        .bind(actor.name())
        .bind(action)
        .bind(target)
        .bind(change)
        .bind(actor.request_id())
        .execute(tx)
        .await?;
    Ok(())
}

/// One audit row.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Row id; the listing is newest first by id.
    pub id: i64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    /// Who: an operator id, or `cli:<os user>`.
    pub actor: String,
    /// What, as `<noun>.<verb>` (`operator.create`).
    pub action: String,
    /// To what (an id).
    pub target: String,
    /// A summary of the change (never a secret).
    pub change: Value,
    /// The request it came with; null from the CLI.
    #[schema(required = true)]
    pub request_id: Option<String>,
}

/// Which audit rows to list; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Exactly this actor.
    pub actor: Option<String>,
    /// This action, or every action under a prefix ending in `.` (`key.`).
    pub action: Option<String>,
    /// Exactly this target.
    pub target: Option<String>,
    /// At or after.
    pub since: Option<time::OffsetDateTime>,
    /// Before.
    pub until: Option<time::OffsetDateTime>,
}

/// One page of audit rows, newest first, and the cursor of the next.
pub async fn list(
    pool: &sqlx::PgPool,
    filter: &AuditFilter,
    page: super::page::Page,
) -> Result<(Vec<AuditEntry>, Option<String>), AppError> {
    let mut rows: Vec<AuditEntry> = sqlx::query_as(
        "SELECT id, at, actor, action, target, change, request_id FROM audit_log
          WHERE ($1::text IS NULL OR actor = $1)
            AND ($2::text IS NULL OR action = $2 OR (right($2, 1) = '.' AND starts_with(action, $2)))
            AND ($3::text IS NULL OR target = $3)
            AND ($4::timestamptz IS NULL OR at >= $4)
            AND ($5::timestamptz IS NULL OR at < $5)
            AND ($6::bigint IS NULL OR id < $6)
          ORDER BY id DESC LIMIT $7",
    )
    .bind(&filter.actor)
    .bind(&filter.action)
    .bind(&filter.target)
    .bind(filter.since)
    .bind(filter.until)
    .bind(page.before)
    .bind(page.fetch_limit())
    .fetch_all(pool)
    .await?;
    let next = page.next_cursor(&mut rows, |r| r.id);
    Ok((rows, next))
}

#[cfg(test)]
mod tests {
    use super::os_user;

    #[test]
    fn the_os_user_is_named_without_the_environment() {
        // The test runs as some user with a uid; it is named, never empty.
        let user = os_user().expect("a uid in /proc/self/status");
        assert!(!user.is_empty() && !user.contains(':'), "{user}");
    }
}
