//! An import's progress, written to its row from a separate pool connection about once a
//! second (and at once when the state changes), so `GET /ops/v1/imports/{id}` shows it while
//! the upload's own transaction is still open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the counters are written while nothing else changes.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// The states an import is in before it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The file is arriving and being checked line by line.
    Receiving = 0,
    /// The file is in; duplicates are being looked for.
    Validating = 1,
    /// The cards are being written.
    Committing = 2,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Self::Receiving => "receiving",
            Self::Validating => "validating",
            Self::Committing => "committing",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Validating,
            2 => Self::Committing,
            _ => Self::Receiving,
        }
    }
}

/// The counters the import updates and the writer reads.
#[derive(Debug, Default)]
pub struct Progress {
    phase: AtomicU8,
    lines_read: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    bytes_read: AtomicU64,
    changed: Notify,
}

impl Progress {
    /// The counters after the latest chunk.
    pub fn count(&self, lines_read: u64, accepted: u64, rejected: u64) {
        self.lines_read.store(lines_read, Ordering::Relaxed);
        self.accepted.store(accepted, Ordering::Relaxed);
        self.rejected.store(rejected, Ordering::Relaxed);
    }

    /// Bytes of the file read so far.
    pub fn read_bytes(&self, bytes: u64) {
        self.bytes_read.store(bytes, Ordering::Relaxed);
    }

    /// A new state, written at once.
    pub fn enter(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.changed.notify_one();
    }

    fn snapshot(&self) -> Snapshot {
        let n = |a: &AtomicU64| i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        Snapshot {
            phase: Phase::from_u8(self.phase.load(Ordering::Relaxed)),
            lines_read: n(&self.lines_read),
            accepted: n(&self.accepted),
            rejected: n(&self.rejected),
            bytes_read: n(&self.bytes_read),
        }
    }
}

/// The counters as one write sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    phase: Phase,
    lines_read: i64,
    accepted: i64,
    rejected: i64,
    bytes_read: i64,
}

/// The background writer of one import's progress. Stop it (and wait) before the import's
/// own transaction writes the row, so the two never wait on each other's row lock. Dropped
/// without [`ProgressWriter::stop`] (the import was cut off, or failed), it stops and marks
/// the import failed.
pub struct ProgressWriter {
    id: Uuid,
    pool: PgPool,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl ProgressWriter {
    /// Start writing `progress` to import `id`'s row.
    pub fn start(pool: PgPool, id: Uuid, progress: Arc<Progress>) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_until_stopped(pool.clone(), id, progress, stop.clone()));
        Self { id, pool, stop, task: Some(task) }
    }

    /// Stop writing, and wait for a write in flight.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProgressWriter {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        self.stop.cancel();
        let (pool, id) = (self.pool.clone(), self.id);
        // Only when stop() was not called: the import ended by an error or was cut off.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = task.await;
                if let Err(e) = mark_failed(&pool, id).await {
                    tracing::warn!(error = %e, import = %id, "could not mark the import failed");
                }
            });
        }
    }
}

async fn write_until_stopped(pool: PgPool, id: Uuid, progress: Arc<Progress>, stop: CancellationToken) {
    let mut written = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = progress.changed.notified() => {}
            _ = tokio::time::sleep(WRITE_EVERY) => {}
        }
        let now = progress.snapshot();
        if written == Some(now) {
            continue;
        }
        let r = sqlx::query(
            "UPDATE imports SET state = $2, lines_read = $3, accepted = $4, rejected = $5, bytes_read = $6,
                    updated_at = now()
              WHERE id = $1 AND finished_at IS NULL",
        )
        .bind(id)
        .bind(now.phase.as_str())
        .bind(now.lines_read)
        .bind(now.accepted)
        .bind(now.rejected)
        .bind(now.bytes_read)
        .execute(&pool);
        // A stop while a write is in flight lets it finish: stop() waits for it.
        match r.await {
            Ok(_) => written = Some(now),
            Err(e) => tracing::warn!(error = %e, import = %id, "import progress not written; retrying"),
        }
    }
}

/// Mark an unfinished import failed (nothing was imported: its transaction never committed).
pub async fn mark_failed(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    let problems = serde_json::json!([{
        "line": null,
        "problem": "the import failed before it finished (a server error, or it ran out of time); nothing was imported"
    }]);
    sqlx::query(
        "UPDATE imports SET state = 'failed', problems = $2, updated_at = now(), finished_at = now()
          WHERE id = $1 AND finished_at IS NULL",
    )
    .bind(id)
    .bind(problems)
    .execute(pool)
    .await?;
    Ok(())
}
