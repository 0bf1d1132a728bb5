//! Card imports: a CSV file streamed into one bucket, checked line by line, all or nothing.
//!
//! The operator API and the CLI both call [`import`] with the file as a stream of chunks. Each
//! line is checked and sealed as it arrives and copied (`COPY … FROM STDIN`) into a temporary
//! staging table with its line number, inside one transaction; duplicates within the file and
//! against stored cards are found by SQL; then either every card is inserted, the import is
//! marked committed and audited (`import.commit`) in that transaction, or nothing is, and the
//! import ends `rejected` with its first 100 line-numbered problems (`import.reject`). Memory is
//! bounded whatever the file's size: one line, one COPY buffer, 100 problems.

pub mod file;
pub mod progress;
pub mod stage;

use std::sync::Arc;

use allot_shared::{ApiError, Currency, ErrorCode};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use self::progress::{Phase, Progress, ProgressWriter};
use self::stage::{MAX_PROBLEMS, Problem, Problems, Stager};
use super::audit::{self, Actor};
use super::cards::{rebuild_product_cache, refresh_planner_statistics};
use super::page;
use crate::cache::{CacheState, InventoryCache};
use crate::crypto::{KeyRing, card_aad};
use crate::error::AppError;

/// COPY text is sent to Postgres in pieces of about this size.
const COPY_SEND_BYTES: usize = 1 << 20;

/// Bytes read from a file at a time.
const FILE_CHUNK_BYTES: usize = 256 * 1024;

/// Card ids read per query when the committed cards go into the cache.
const CACHE_CHUNK: i64 = 10_000;

/// What an import needs besides its file.
#[derive(Clone, Copy)]
pub struct ImportContext<'a> {
    /// The primary pool (the import's transaction, and its progress on another connection).
    pub pool: &'a PgPool,
    /// The inventory cache, if there is one.
    pub cache: Option<&'a InventoryCache>,
    /// The card keys.
    pub keys: &'a KeyRing,
    /// The largest file accepted, in bytes.
    pub max_bytes: u64,
}

/// Where the cards go, and the import's id if the caller chose it.
#[derive(Debug, Clone)]
pub struct ImportTarget {
    /// The product.
    pub product_id: String,
    /// The denomination, as written (`25.00`).
    pub denomination: String,
    /// The id to give the import (a client may pick it to poll progress); new if `None`.
    pub id: Option<Uuid>,
    /// The upload's announced length in bytes (its `Content-Length`), when known: progress is
    /// then `bytes_read` of it.
    pub expected_bytes: Option<u64>,
}

/// An import, with its progress while it runs.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
// Only serialised: `deny_unknown_fields` is for the schema (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(as = ImportEntry)]
pub struct Import {
    /// Import id (also the cards' `import_id`, which a void can select).
    pub id: Uuid,
    /// Product id.
    pub product_id: String,
    /// The denomination as on the wire for the product's currency (`"25.00"`).
    pub denomination: String,
    /// Where it is.
    #[schema(value_type = ImportState)]
    pub state: String,
    /// Lines read so far, the header included (a committed file of N cards reads N + 1).
    pub lines_read: i64,
    /// Card lines that passed every check (for a rejected file, none was imported).
    pub accepted: i64,
    /// Card lines with a problem.
    pub rejected: i64,
    /// Bytes of the file read so far.
    pub bytes_read: i64,
    /// The upload's announced length in bytes; null when it was not announced.
    #[schema(required = true)]
    pub bytes_expected: Option<i64>,
    /// How far along it is, 0-100: reading is the first 90, checking and committing the rest;
    /// null while reading a file of unannounced length.
    #[schema(required = true)]
    pub percent_done: Option<u8>,
    /// The first 100 problems, by line; empty unless rejected or failed.
    #[schema(value_type = Vec<stage::Problem>)]
    pub problems: serde_json::Value,
    /// Who started it: an operator id, or `cli:<os user>`.
    pub created_by: String,
    /// Started.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When its row last changed (progress is written about once a second).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When it ended (committed, rejected or failed); null while it runs.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub finished_at: Option<OffsetDateTime>,
}

#[derive(sqlx::FromRow)]
struct ImportRow {
    id: Uuid,
    product_id: String,
    denomination_minor: i64,
    currency: String,
    state: String,
    lines_read: i64,
    accepted: i64,
    rejected: i64,
    bytes_read: i64,
    bytes_expected: Option<i64>,
    problems: serde_json::Value,
    created_by: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    finished_at: Option<OffsetDateTime>,
}

impl From<ImportRow> for Import {
    fn from(r: ImportRow) -> Self {
        let denomination = match Currency::parse(&r.currency) {
            Ok(c) => c.format_minor(r.denomination_minor),
            Err(_) => r.denomination_minor.to_string(),
        };
        let percent_done = percent_done(&r.state, r.bytes_read, r.bytes_expected);
        Self {
            id: r.id,
            product_id: r.product_id,
            denomination,
            state: r.state,
            lines_read: r.lines_read,
            accepted: r.accepted,
            rejected: r.rejected,
            bytes_read: r.bytes_read,
            bytes_expected: r.bytes_expected,
            percent_done,
            problems: r.problems,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

/// How far an import is, 0-100 (see [`Import::percent_done`]).
pub fn percent_done(state: &str, bytes_read: i64, bytes_expected: Option<i64>) -> Option<u8> {
    match state {
        "receiving" => {
            let expected = bytes_expected.filter(|&e| e > 0)?;
            let read = bytes_read.clamp(0, expected);
            Some(u8::try_from(read * 90 / expected).unwrap_or(90))
        }
        "validating" => Some(92),
        "committing" => Some(96),
        _ => Some(100),
    }
}

const SELECT_IMPORT: &str = "SELECT i.id, i.product_id, i.denomination_minor, p.currency, i.state, i.lines_read,
        i.accepted, i.rejected, i.bytes_read, i.bytes_expected, i.problems, i.created_by, i.created_at, i.updated_at, i.finished_at
   FROM imports i JOIN products p ON p.id = i.product_id";

/// One import.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Import, AppError> {
    let row: Option<ImportRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_IMPORT} WHERE i.id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(Import::from).ok_or_else(|| AppError::api(ErrorCode::NotFound, format!("no import with id {id}")))
}

/// One page of imports, newest first, and the cursor of the next (`limit` 1-100).
pub async fn list(
    pool: &PgPool,
    cursor: Option<&str>,
    limit: Option<u32>,
) -> Result<(Vec<Import>, Option<String>), AppError> {
    let limit = page::limit(limit, page::DEFAULT_LIMIT)?;
    let after: Option<(OffsetDateTime, Uuid)> = cursor.map(|c| page::decode(CURSOR_TAG, c)).transpose()?;
    let rows: Vec<ImportRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_IMPORT}
          WHERE ($1::timestamptz IS NULL OR (i.created_at, i.id) < ($1, $2))
          ORDER BY i.created_at DESC, i.id DESC LIMIT $3"
    )))
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await?;
    let mut items: Vec<Import> = rows.into_iter().map(Import::from).collect();
    let next = page::next_cursor(&mut items, limit, CURSOR_TAG, |i| (i.created_at, i.id));
    Ok((items, next))
}

/// The tag of import listing cursors (their key: creation time and id).
const CURSOR_TAG: &str = "i1";

/// The error a rejected import answers with: `400 VALIDATION_FAILED`, its counts and first
/// problems in the details.
pub fn rejection(import: &Import, problems: u64) -> ApiError {
    let noun = if problems == 1 { "problem" } else { "problems" };
    ApiError::new(ErrorCode::ValidationFailed, format!("the file has {problems} {noun}; nothing was imported"))
        .with_details(serde_json::json!({
            "import_id": import.id,
            "lines_read": import.lines_read,
            "accepted": import.accepted,
            "rejected": import.rejected,
            "problems": import.problems,
        }))
}

/// Import a file of cards into one bucket, all or nothing. Returns the committed import; a
/// file with problems is refused with [`rejection`] (the import row ends `rejected`).
pub async fn import<S, E>(
    ctx: ImportContext<'_>,
    actor: &Actor,
    target: &ImportTarget,
    body: S,
) -> Result<Import, AppError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let minor = bucket(ctx.pool, &target.product_id, &target.denomination).await?;
    let id = target.id.unwrap_or_else(Uuid::now_v7);
    create_row(ctx.pool, actor, id, target, minor).await?;
    let progress = Arc::new(Progress::default());
    let writer = ProgressWriter::start(ctx.pool.clone(), id, progress.clone());

    let mut tx = ctx.pool.begin().await?;
    open_staging(&mut tx).await?;
    let mut stager = Stager::new(ctx.keys, card_aad(&target.product_id, minor));
    let read = receive(&mut tx, &mut stager, &progress, ctx.max_bytes, body).await?;
    let mut problems = std::mem::take(&mut stager.problems);
    let (lines_read, bytes_read) = (read.lines_read, read.bytes_read);
    let mut accepted = stager.accepted;
    drop(stager);

    if read.complete {
        progress.enter(Phase::Validating);
        let (duplicates, unlisted) = find_duplicates(&mut tx).await?;
        accepted -= duplicates.len() as u64 + unlisted;
        problems.merge(duplicates, unlisted);
    }
    let counts = Counts { lines_read, accepted, rejected: problems.lines(), bytes_read };
    progress.count(counts.lines_read, counts.accepted, counts.rejected);
    if problems.total() > 0 {
        drop(tx); // rolls back: the staging table and everything else go
        writer.stop().await;
        let import = reject(ctx.pool, actor, id, &target.product_id, minor, counts, &problems).await?;
        return Err(rejection(&import, problems.total()).into());
    }

    progress.enter(Phase::Committing);
    let inserted = insert_cards(&mut tx, id, &target.product_id, minor).await?;
    debug_assert_eq!(inserted, counts.accepted, "every staged card is inserted");
    writer.stop().await;
    finish(&mut tx, id, "committed", counts, &[]).await?;
    let change = serde_json::json!({
        "import_id": id, "product_id": target.product_id, "denomination_minor": minor, "cards": inserted,
    });
    audit::record(&mut tx, actor, "import.commit", &id.to_string(), change).await?;
    tx.commit().await?;

    if let Some(cache) = ctx.cache
        && let Err(e) = add_import_to_cache(ctx.pool, cache, id, &target.product_id, minor).await
    {
        tracing::warn!(error = %e, import = %id, "imported cards not added to the cache; the reconciler will add them");
    }
    refresh_planner_statistics(ctx.pool).await;
    get(ctx.pool, id).await
}

/// A file as the stream of chunks [`import`] reads (the CLI's way in).
pub async fn file_chunks(
    path: &std::path::Path,
) -> std::io::Result<impl Stream<Item = std::io::Result<Bytes>> + Unpin + use<>> {
    let file = tokio::fs::File::open(path).await?;
    Ok(tokio_util::io::ReaderStream::with_capacity(file, FILE_CHUNK_BYTES))
}

/// The denomination's minor units, if the product exists and offers it; else `400`.
async fn bucket(pool: &PgPool, product_id: &str, denomination: &str) -> Result<i64, AppError> {
    let mut conn = pool.acquire().await?;
    super::cards::resolve_bucket(&mut conn, product_id, denomination).await.map_err(|e| e.as_field(product_id))
}

/// The import's row, committed at once so its progress can be read.
async fn create_row(pool: &PgPool, actor: &Actor, id: Uuid, target: &ImportTarget, minor: i64) -> Result<(), AppError> {
    let expected = target.expected_bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
    let created = sqlx::query(
        "INSERT INTO imports (id, product_id, denomination_minor, created_by, bytes_expected)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(&target.product_id)
    .bind(minor)
    .bind(actor.name())
    .bind(expected)
    .execute(pool)
    .await?;
    if created.rows_affected() == 0 {
        return Err(ApiError::validation("id", format!("an import with id {id} already exists")).into());
    }
    Ok(())
}

/// The staging table, gone at the end of the transaction. The transaction may last as long
/// as the upload, so the configured statement limit (meant for requests) does not apply.
async fn open_staging(tx: &mut PgConnection) -> Result<(), AppError> {
    sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *tx).await?;
    sqlx::query("SET LOCAL work_mem = '64MB'").execute(&mut *tx).await?;
    sqlx::query(
        "CREATE TEMP TABLE import_staging (
             line            bigint NOT NULL,
             code_digest     bytea NOT NULL,
             code_ciphertext bytea NOT NULL,
             code_nonce      bytea NOT NULL,
             code_key_id     text NOT NULL,
             expires_at      timestamptz
         ) ON COMMIT DROP",
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What reading the file found.
struct Read {
    lines_read: u64,
    bytes_read: u64,
    /// Whether the whole file was read and staged (the duplicate checks make sense).
    complete: bool,
}

/// Counters of a finished import.
#[derive(Debug, Clone, Copy)]
struct Counts {
    lines_read: u64,
    bytes_read: u64,
    accepted: u64,
    rejected: u64,
}

/// Read the body to its end (or to a problem that ends reading), staging every good line.
async fn receive<S, E>(
    tx: &mut PgConnection,
    stager: &mut Stager<'_>,
    progress: &Progress,
    max_bytes: u64,
    mut body: S,
) -> Result<Read, AppError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut copy = tx.copy_in_raw("COPY import_staging FROM STDIN").await?;
    let mut splitter = file::LineSplitter::default();
    let mut bytes: u64 = 0;
    let mut ended = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                ended = Some(format!("the upload broke off after {bytes} bytes ({e}); send the whole file again"));
                break;
            }
        };
        bytes += chunk.len() as u64;
        if bytes > max_bytes {
            ended = Some(format!("the file is larger than the limit of {max_bytes} bytes; split it"));
            break;
        }
        splitter.feed(&chunk, |n, line| stager.line(n, line));
        progress.count(splitter.lines(), stager.accepted, stager.rejected());
        progress.read_bytes(bytes);
        if stager.header_refused() {
            // Without a header no line can be read.
            break;
        }
        if stager.copy.len() >= COPY_SEND_BYTES {
            copy.send(std::mem::take(&mut stager.copy)).await?;
        }
    }
    let lines_read = splitter.lines();
    if let Some(reason) = ended {
        stager.problems.push(None, reason);
    } else if !stager.header_refused() {
        match splitter.unfinished_line() {
            Some(last) => stager.problems.push(
                Some(last),
                format!("the file ends mid-line (no newline after line {last}); it may have been cut off"),
            ),
            None if bytes == 0 => stager.problems.push(None, "the file is empty"),
            None if lines_read == 1 && stager.has_header() => stager.problems.push(None, "the file has no cards"),
            None => {}
        }
    }
    let complete = stager.problems.total() == stager.problems.lines() && !stager.header_refused();
    if !complete {
        // Postgres answers the abort with an error; that is the expected end of this COPY.
        let _ = copy.abort("the file was refused").await;
        return Ok(Read { lines_read, bytes_read: bytes, complete });
    }
    if !stager.copy.is_empty() {
        copy.send(std::mem::take(&mut stager.copy)).await?;
    }
    let staged = copy.finish().await?;
    debug_assert_eq!(staged, stager.accepted, "one staging row per accepted line");
    Ok(Read { lines_read, bytes_read: bytes, complete })
}

/// Lines whose code is already loaded, or repeats an earlier line: the first 100 by line, and
/// how many more.
async fn find_duplicates(tx: &mut PgConnection) -> Result<(Vec<Problem>, u64), AppError> {
    let rows: Vec<(i64, i64, bool, i64)> = sqlx::query_as(
        "SELECT line, first_line, loaded, count(*) OVER () FROM (
             SELECT s.line, min(s.line) OVER (PARTITION BY s.code_digest) AS first_line, i.id IS NOT NULL AS loaded
               FROM import_staging s LEFT JOIN inventories i ON i.code_digest = s.code_digest
         ) d
          WHERE loaded OR line <> first_line
          ORDER BY line LIMIT $1",
    )
    .bind(MAX_PROBLEMS as i64)
    .fetch_all(&mut *tx)
    .await?;
    let total = rows.first().map_or(0, |r| r.3 as u64);
    let listed: Vec<Problem> = rows
        .into_iter()
        .map(|(line, first, loaded, _)| Problem {
            line: Some(line as u64),
            problem: if loaded {
                "this code is already loaded".to_owned()
            } else {
                format!("the same code as line {first}")
            },
        })
        .collect();
    let unlisted = total - listed.len() as u64;
    Ok((listed, unlisted))
}

/// Every staged card into the bucket, tagged with the import.
async fn insert_cards(tx: &mut PgConnection, id: Uuid, product_id: &str, minor: i64) -> Result<u64, AppError> {
    let done = sqlx::query(
        "INSERT INTO inventories
             (product_id, denomination_minor, code_ciphertext, code_nonce, code_key_id, code_digest, expires_at, import_id)
         SELECT $1, $2, code_ciphertext, code_nonce, code_key_id, code_digest, expires_at, $3
           FROM import_staging",
    )
    .bind(product_id)
    .bind(minor)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}

/// Write the import's end: its state, counters and problems.
async fn finish(
    tx: &mut PgConnection,
    id: Uuid,
    state: &str,
    counts: Counts,
    problems: &[Problem],
) -> Result<(), AppError> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let problems = serde_json::to_value(problems).map_err(|e| AppError::Internal(e.into()))?;
    sqlx::query(
        "UPDATE imports SET state = $2, lines_read = $3, accepted = $4, rejected = $5, problems = $6,
                bytes_read = $7, updated_at = now(), finished_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(n(counts.lines_read))
    .bind(n(counts.accepted))
    .bind(n(counts.rejected))
    .bind(problems)
    .bind(n(counts.bytes_read))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// End the import `rejected` with its problems, audited; returns it as it now reads.
async fn reject(
    pool: &PgPool,
    actor: &Actor,
    id: Uuid,
    product_id: &str,
    minor: i64,
    counts: Counts,
    problems: &Problems,
) -> Result<Import, AppError> {
    let mut tx = pool.begin().await?;
    finish(&mut tx, id, "rejected", counts, problems.listed()).await?;
    let change = serde_json::json!({
        "import_id": id, "product_id": product_id, "denomination_minor": minor,
        "lines_read": counts.lines_read, "problems": problems.total(),
    });
    audit::record(&mut tx, actor, "import.reject", &id.to_string(), change).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// The committed cards into the product's set, read in chunks; a cold set is built instead
/// (from every active card of the product, these included).
async fn add_import_to_cache(
    pool: &PgPool,
    cache: &InventoryCache,
    id: Uuid,
    product_id: &str,
    minor: i64,
) -> anyhow::Result<()> {
    let mut after = 0_i64;
    loop {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM inventories WHERE import_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                .bind(id)
                .bind(after)
                .bind(CACHE_CHUNK)
                .fetch_all(pool)
                .await?;
        let Some(&last) = ids.last() else { return Ok(()) };
        let added = cache.put_back(product_id, minor, &ids).await?;
        if added == 0 && cache.state(product_id).await? == CacheState::Cold {
            rebuild_product_cache(pool, cache, product_id).await?;
            return Ok(());
        }
        after = last;
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000).unwrap();
        let id = Uuid::new_v4();
        let decode = |c: &str| page::decode::<(OffsetDateTime, Uuid)>(CURSOR_TAG, c);
        assert_eq!(decode(&page::encode(CURSOR_TAG, &(at, id))).unwrap(), (at, id));
        for bad in ["", "x", "aTE6", &URL_SAFE_NO_PAD.encode("i1:12:nope"), &URL_SAFE_NO_PAD.encode("v1:5")] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }
}

// The values of a text column, named for the OpenAPI document (the column is read as text).
/// The state of an import: `receiving` → `validating` → `committing` → `committed`, or
/// `rejected` (the file had problems) or `failed` (a server error or the deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportState {
    /// The file is arriving and being checked line by line; the counters grow.
    Receiving,
    /// The file is in; duplicates are being looked for.
    Validating,
    /// The cards are being written.
    Committing,
    /// Every card was imported.
    Committed,
    /// The file had problems; nothing was imported.
    Rejected,
    /// A server error, or the upload ran past its deadline; nothing was imported.
    Failed,
}
