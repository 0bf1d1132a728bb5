//! Housekeeping: expire idempotency keys, prune job history and the reconciler's divergences,
//! and prune the audit trail past its retention, in small batches.

use std::time::Duration;

use futures::future::BoxFuture;

use super::{Counts, Job, JobContext};

/// Rows changed per statement, so no statement holds locks for long.
const BATCH: i64 = 5_000;

/// Run `sql` (`$1` = age in seconds, `$2` = batch size) until it changes fewer than a batch.
async fn in_batches(ctx: &JobContext, sql: &'static str, older_than_secs: i64) -> anyhow::Result<u64> {
    let mut changed = 0;
    loop {
        let n =
            sqlx::query(sql).bind(older_than_secs as f64).bind(BATCH).execute(&ctx.db.primary).await?.rows_affected();
        changed += n;
        if n < BATCH as u64 || ctx.shutdown.is_cancelled() {
            return Ok(changed);
        }
    }
}

/// Expires Idempotency-Keys older than the retention (default 24 h): the allocation stays, its
/// key stops being live (its fingerprint is cleared), so the key may be used again.
pub struct IdempotencyExpiry;

impl Job for IdempotencyExpiry {
    fn name(&self) -> &'static str {
        "idempotency-expiry"
    }

    fn default_interval(&self) -> Duration {
        Duration::from_secs(15 * 60)
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, anyhow::Result<Counts>> {
        Box::pin(async move {
            let n = in_batches(
                ctx,
                "UPDATE allocations SET request_fingerprint = NULL WHERE id = ANY(ARRAY(
                    SELECT id FROM allocations
                     WHERE request_fingerprint IS NOT NULL AND created_at < now() - make_interval(secs => $1)
                     LIMIT $2))",
                ctx.config.idempotency_retention.as_secs() as i64,
            )
            .await?;
            let mut counts = Counts::new();
            counts.insert("expired".into(), n.into());
            Ok(counts)
        })
    }
}

/// Deletes finished job runs and recorded cache divergences older than the history retention
/// (default 14 days), console sessions a day after they ended, and finished webhook
/// deliveries past `ALLOT_WEBHOOK_LOG_DAYS` (default 30).
pub struct JobHistoryPrune;

impl Job for JobHistoryPrune {
    fn name(&self) -> &'static str {
        "job-history-prune"
    }

    fn default_interval(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, anyhow::Result<Counts>> {
        Box::pin(async move {
            let n = in_batches(
                ctx,
                "DELETE FROM job_runs WHERE id = ANY(ARRAY(
                    SELECT id FROM job_runs
                     WHERE outcome <> 'running' AND started_at < now() - make_interval(secs => $1) LIMIT $2))",
                ctx.config.job_history_retention.as_secs() as i64,
            )
            .await?;
            let divergences = in_batches(
                ctx,
                "DELETE FROM cache_divergences WHERE id = ANY(ARRAY(
                    SELECT id FROM cache_divergences WHERE at < now() - make_interval(secs => $1) LIMIT $2))",
                ctx.config.job_history_retention.as_secs() as i64,
            )
            .await?;
            // Console sessions a day after they ended, expired or went idle.
            let sessions = in_batches(
                ctx,
                "DELETE FROM console_sessions WHERE id_digest = ANY(ARRAY(
                    SELECT id_digest FROM console_sessions
                     WHERE coalesce(ended_at, least(expires_at, last_seen_at + make_interval(secs => $1)))
                           < now() - interval '1 day'
                     LIMIT $2))",
                ctx.config.console_idle.as_secs() as i64,
            )
            .await?;
            // Finished webhook deliveries (their attempts go with them).
            let deliveries = in_batches(
                ctx,
                "DELETE FROM webhook_deliveries WHERE id = ANY(ARRAY(
                    SELECT id FROM webhook_deliveries
                     WHERE state <> 'pending' AND finished_at < now() - make_interval(secs => $1) LIMIT $2))",
                ctx.config.webhooks.log_retention.as_secs() as i64,
            )
            .await?;
            let mut counts = Counts::new();
            counts.insert("webhook_deliveries_deleted".into(), deliveries.into());
            counts.insert("deleted".into(), n.into());
            counts.insert("divergences_deleted".into(), divergences.into());
            counts.insert("console_sessions_deleted".into(), sessions.into());
            Ok(counts)
        })
    }
}

/// Deletes audit rows older than the audit retention (`ALLOT_AUDIT_RETENTION_DAYS`, at least
/// 30). The table refuses every other delete: each batch's transaction says it is the
/// retention job (`SET LOCAL allot.audit_prune = 'on'`), and even then the trigger keeps rows
/// younger than 30 days.
pub struct AuditPrune;

impl AuditPrune {
    async fn batch(ctx: &JobContext, older_than_secs: i64) -> anyhow::Result<u64> {
        let mut tx = ctx.db.primary.begin().await?;
        sqlx::query("SET LOCAL allot.audit_prune = 'on'").execute(&mut *tx).await?;
        let n = sqlx::query(
            "DELETE FROM audit_log WHERE id = ANY(ARRAY(
                SELECT id FROM audit_log WHERE at < now() - make_interval(secs => $1) ORDER BY at LIMIT $2))",
        )
        .bind(older_than_secs as f64)
        .bind(BATCH)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
}

impl Job for AuditPrune {
    fn name(&self) -> &'static str {
        "audit-prune"
    }

    fn default_interval(&self) -> Duration {
        Duration::from_secs(86_400)
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, anyhow::Result<Counts>> {
        Box::pin(async move {
            let retention = ctx.config.audit_retention.as_secs() as i64;
            debug_assert!(retention >= 30 * 86_400, "the configuration keeps audit rows at least 30 days");
            let mut deleted = 0;
            loop {
                let n = Self::batch(ctx, retention).await?;
                deleted += n;
                if n < BATCH as u64 || ctx.shutdown.is_cancelled() {
                    break;
                }
            }
            let mut counts = Counts::new();
            counts.insert("deleted".into(), deleted.into());
            Ok(counts)
        })
    }
}
