//! `outbox-prune` (hourly): deletes events published longer ago than the retention
//! (`ALLOT_EVENTS_RETENTION_DAYS`, default 7), oldest first, 1,000 rows a statement, each
//! statement its own short transaction, so it never holds locks long enough to disturb
//! allocations. Only events in the stream are deleted, and only from the start of the order:
//! whatever is kept is a contiguous run of places, so a reader paging from an event still kept
//! misses nothing.

use std::time::Duration;

use futures::future::BoxFuture;

use super::{Counts, Job, JobContext};

/// Rows deleted per statement.
pub const BATCH: i64 = 1_000;

/// Deletes published events past the retention.
pub struct OutboxPrune;

impl OutboxPrune {
    /// The last place that may go: the end of the newest batch first published before the
    /// cutoff, never past what the stream holds.
    async fn bound(ctx: &JobContext) -> Result<Option<i64>, sqlx::Error> {
        // No batch old enough: no row (least() would skip the missing max and answer the watermark).
        sqlx::query_scalar(
            "SELECT least(old.through_seq, (SELECT published_seq FROM outbox_sequence))
               FROM (SELECT max(through_seq) AS through_seq FROM outbox_publications
                      WHERE at < now() - make_interval(secs => $1)) old
              WHERE old.through_seq IS NOT NULL",
        )
        .bind(ctx.config.events_retention.as_secs() as f64)
        .fetch_optional(&ctx.db.primary)
        .await
    }

    /// Run `sql` (`$1` = bound, `$2` = batch) until it deletes fewer than a batch.
    async fn in_batches(ctx: &JobContext, sql: &'static str, bound: i64) -> Result<u64, sqlx::Error> {
        let mut deleted = 0;
        loop {
            let n = sqlx::query(sql).bind(bound).bind(BATCH).execute(&ctx.db.primary).await?.rows_affected();
            deleted += n;
            if n < BATCH as u64 || ctx.shutdown.is_cancelled() {
                return Ok(deleted);
            }
        }
    }
}

impl Job for OutboxPrune {
    fn name(&self) -> &'static str {
        "outbox-prune"
    }

    fn default_interval(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, anyhow::Result<Counts>> {
        Box::pin(async move {
            let mut counts = Counts::new();
            let Some(bound) = Self::bound(ctx).await? else {
                counts.insert("deleted".into(), 0.into());
                return Ok(counts);
            };
            let deleted = Self::in_batches(
                ctx,
                "DELETE FROM outbox WHERE id = ANY(ARRAY(
                    SELECT id FROM outbox WHERE seq <= $1 ORDER BY seq LIMIT $2))",
                bound,
            )
            .await?;
            // A batch's record goes once no event it covers is left (the first event kept still
            // finds its own).
            let records = Self::in_batches(
                ctx,
                "DELETE FROM outbox_publications WHERE through_seq = ANY(ARRAY(
                    SELECT through_seq FROM outbox_publications
                     WHERE through_seq < coalesce((SELECT min(seq) FROM outbox), $1 + 1)
                     ORDER BY through_seq LIMIT $2))",
                bound,
            )
            .await?;
            counts.insert("deleted".into(), deleted.into());
            counts.insert("through_seq".into(), bound.into());
            counts.insert("publication_records_deleted".into(), records.into());
            Ok(counts)
        })
    }
}
