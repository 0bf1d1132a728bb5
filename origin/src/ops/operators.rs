//! Operators: people who run a region, each with one role. A token is shown once, stored as a
//! digest, expires, and can be revoked.

use allot_shared::api_key::base62_from_random;
use allot_shared::{ApiError, ErrorCode, OperatorToken};
use rand::RngCore;
use serde::Serialize;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::{self, Actor};
use crate::error::AppError;

/// What an operator may do; each role may do everything the one before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(
    description = "viewer reads; operator also imports, voids and runs jobs; admin also manages clients, keys and operators"
)]
pub enum Role {
    /// Reads everything except card codes.
    Viewer,
    /// Also imports and voids cards, sets stock thresholds, and runs and re-times jobs.
    Operator,
    /// Also manages clients, keys and operators, and reveals card codes.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The role's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parse a role name.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ApiError::validation("role", "must be viewer, operator or admin"))
    }

    /// Whether this role may do what `required` may.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Operator id (the actor in the audit log).
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// What they may do.
    pub role: Role,
}

/// An operator as listed (never the token).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(as = OperatorEntry)]
pub struct OperatorRecord {
    /// Operator id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Role.
    #[schema(value_type = Role)]
    pub role: String,
    /// The public part of the token (`allotop_<token id>_…`).
    pub token_id: String,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the token stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When the token was revoked; null while live.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub revoked_at: Option<OffsetDateTime>,
    /// Last authenticated request (written at most once a minute); null if never used.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub last_used_at: Option<OffsetDateTime>,
}

/// A token's lifetime when none is given.
pub const DEFAULT_TOKEN_DAYS: u32 = 90;
/// The longest lifetime a token may have.
pub const MAX_TOKEN_DAYS: u32 = 366;

fn new_token() -> Result<OperatorToken, AppError> {
    let mut random = [0u8; 128];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let id = base62_from_random(&random[..40], allot_shared::api_key::KEY_ID_LEN);
    let secret = base62_from_random(&random[40..], allot_shared::api_key::SECRET_LEN);
    let (Some(id), Some(secret)) = (id, secret) else {
        return Err(AppError::Internal(anyhow::anyhow!("not enough randomness for a token")));
    };
    OperatorToken::new(&id, &secret).map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))
}

/// Create an operator; returns its id and its token, shown once.
pub async fn create(
    pool: &PgPool,
    actor: &Actor,
    name: &str,
    role: Role,
    valid_days: u32,
) -> Result<(Uuid, OperatorToken), AppError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::validation("name", "must be 1-200 characters").into());
    }
    if !(1..=MAX_TOKEN_DAYS).contains(&valid_days) {
        return Err(ApiError::validation("valid_days", format!("must be 1 to {MAX_TOKEN_DAYS}")).into());
    }
    let id = Uuid::now_v7();
    let token = new_token()?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO operators (id, name, role, token_id, token_digest, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(days => $6))",
    )
    .bind(id)
    .bind(name)
    .bind(role.as_str())
    .bind(token.token_id())
    .bind(&token.secret_digest()[..])
    .bind(valid_days as i32)
    .execute(&mut *tx)
    .await?;
    let change = serde_json::json!({ "name": name, "role": role.as_str(), "valid_days": valid_days });
    audit::record(&mut tx, actor, "operator.create", &id.to_string(), change).await?;
    tx.commit().await?;
    Ok((id, token))
}

/// Every operator, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<OperatorRecord>, AppError> {
    Ok(sqlx::query_as(
        "SELECT id, name, role, token_id, created_at, expires_at, revoked_at, last_used_at
           FROM operators ORDER BY created_at DESC, id DESC",
    )
    .fetch_all(pool)
    .await?)
}

/// Revoke an operator's token at once.
pub async fn revoke(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<(), AppError> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query("UPDATE operators SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(AppError::api(ErrorCode::NotFound, format!("no operator {id} with a live token")));
    }
    audit::record(&mut tx, actor, "operator.revoke", &id.to_string(), serde_json::json!({})).await?;
    tx.commit().await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    name: String,
    role: String,
    token_digest: Vec<u8>,
    expired: bool,
    revoked: bool,
    use_unrecorded: bool,
}

fn unauthorized(message: &str) -> AppError {
    AppError::api(ErrorCode::Unauthorized, message)
}

/// The operator a well-formed token belongs to, if it is live; marks it used (at most once a
/// minute, so reads stay cheap).
pub async fn authenticate(pool: &PgPool, token: &OperatorToken) -> Result<Operator, AppError> {
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT id, name, role, token_digest, expires_at <= now() AS expired, revoked_at IS NOT NULL AS revoked,
                last_used_at IS NULL OR last_used_at < now() - interval '1 minute' AS use_unrecorded
           FROM operators WHERE token_id = $1",
    )
    .bind(token.token_id())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Err(unauthorized("the operator token is not valid")) };
    if !bool::from(token.secret_digest()[..].ct_eq(&row.token_digest[..])) {
        return Err(unauthorized("the operator token is not valid"));
    }
    if row.revoked {
        return Err(unauthorized("the operator token has been revoked"));
    }
    if row.expired {
        return Err(unauthorized("the operator token has expired"));
    }
    let role = Role::parse(&row.role).map_err(|e| AppError::Internal(anyhow::anyhow!("stored role: {e}")))?;
    // Only when the last recorded use is a minute old: most requests make one round trip.
    if row.use_unrecorded {
        sqlx::query(
            "UPDATE operators SET last_used_at = now()
              WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        )
        .bind(row.id)
        .execute(pool)
        .await?;
    }
    Ok(Operator { id: row.id, name: row.name, role })
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn each_role_may_do_what_the_one_before_it_may() {
        assert!(Role::Admin.allows(Role::Operator) && Role::Admin.allows(Role::Viewer));
        assert!(Role::Operator.allows(Role::Viewer) && !Role::Operator.allows(Role::Admin));
        assert!(!Role::Viewer.allows(Role::Operator));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()).unwrap(), r);
        }
        assert!(Role::parse("root").is_err());
    }
}
