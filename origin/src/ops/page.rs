//! Cursor pagination for every listing: one opaque cursor codec over each listing's sort key,
//! cursors bound to the client and filters they were made for, one limit rule, time filters
//! exact to Postgres's microsecond, and the id-ordered [`Page`] most operator listings use.

use allot_shared::ApiError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::error::AppError;

/// What a cursor is valid for: a short digest of the listing (`domain`), the client, and its
/// filters. Each field is length-prefixed and an absent one differs from an empty one, so no
/// two filter sets share a digest input.
pub fn scope(domain: &str, client_id: Uuid, fields: &[Option<String>]) -> String {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0]);
    h.update(client_id.as_bytes());
    for field in fields {
        match field {
            Some(v) => {
                h.update([1]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v.as_bytes());
            }
            None => h.update([0]),
        }
    }
    hex::encode(&h.finalize()[..8])
}

/// Rows per page when the caller does not say.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most rows one page holds.
pub const MAX_LIMIT: u32 = 100;

/// A listing's sort key, as a cursor carries it: the last row of the previous page.
pub trait CursorKey: Sized {
    /// The key as text.
    fn to_text(&self) -> String;
    /// The key from its text, if it is one.
    fn from_text(text: &str) -> Option<Self>;
}

impl CursorKey for i64 {
    fn to_text(&self) -> String {
        self.to_string()
    }

    fn from_text(text: &str) -> Option<Self> {
        text.parse().ok().filter(|n| *n > 0)
    }
}

impl CursorKey for Uuid {
    fn to_text(&self) -> String {
        self.to_string()
    }

    fn from_text(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok()
    }
}

impl CursorKey for (OffsetDateTime, Uuid) {
    fn to_text(&self) -> String {
        format!("{}:{}", self.0.unix_timestamp_nanos(), self.1)
    }

    fn from_text(text: &str) -> Option<Self> {
        let (nanos, id) = text.split_once(':')?;
        let at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
        Some((at, Uuid::parse_str(id).ok()?))
    }
}

/// The opaque cursor for `key` in the listing `tag` (so one listing's cursor is refused by another).
pub fn encode<K: CursorKey>(tag: &str, key: &K) -> String {
    URL_SAFE_NO_PAD.encode(format!("{tag}:{}", key.to_text()))
}

/// The key of a cursor of the listing `tag`, or `400 VALIDATION_FAILED`.
pub fn decode<K: CursorKey>(tag: &str, cursor: &str) -> Result<K, AppError> {
    let bad = || AppError::from(ApiError::validation("cursor", "is not a cursor this API returned"));
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = std::str::from_utf8(&raw).map_err(|_| bad())?;
    text.strip_prefix(tag).and_then(|t| t.strip_prefix(':')).and_then(K::from_text).ok_or_else(bad)
}

/// Why a well-formed cursor is refused: it was made for another client or other filters.
pub const FOREIGN_CURSOR: &str =
    "was made for other filters or another client; send the same filters as the first page";

/// A sort key with the [`scope`] its cursor is valid for.
struct Scoped<K> {
    scope: String,
    key: K,
}

impl<K: CursorKey> CursorKey for Scoped<K> {
    fn to_text(&self) -> String {
        format!("{}:{}", self.scope, self.key.to_text())
    }

    fn from_text(text: &str) -> Option<Self> {
        let (scope, key) = text.split_once(':')?;
        let scope_ok = scope.len() == 16 && scope.bytes().all(|b| b.is_ascii_hexdigit());
        scope_ok.then(|| K::from_text(key).map(|key| Self { scope: scope.to_owned(), key }))?
    }
}

/// The opaque cursor for `key` in the listing `tag`, valid only for `scope` (see [`scope`]).
pub fn encode_scoped<K: CursorKey>(tag: &str, scope: String, key: K) -> String {
    encode(tag, &Scoped { scope, key })
}

/// The key of a cursor of the listing `tag` made for `scope`, or `400 VALIDATION_FAILED`: a
/// cursor made for another client or other filters is refused instead of skipping rows.
pub fn decode_scoped<K: CursorKey>(tag: &str, cursor: &str, scope: &str) -> Result<K, AppError> {
    let scoped: Scoped<K> = decode(tag, cursor)?;
    if scoped.scope != scope {
        return Err(ApiError::validation("cursor", FOREIGN_CURSOR).into());
    }
    Ok(scoped.key)
}

/// An RFC 3339 time from a query parameter, or `400` naming it.
pub fn parse_time(field: &str, value: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(value, &Rfc3339)
        .map_err(|_| ApiError::validation(field, "must be an RFC 3339 time, like 2026-11-27T16:05:31Z"))
}

/// The `created_after` and `created_before` filters, exact to the microsecond Postgres keeps:
/// strictly after t is after its floor, strictly before t is before its ceiling, and nothing
/// Postgres holds lies between t and either.
pub fn created_between(
    after: Option<&str>,
    before: Option<&str>,
) -> Result<(Option<OffsetDateTime>, Option<OffsetDateTime>), ApiError> {
    let after = after.map(|v| parse_time("created_after", v)).transpose()?;
    let before = before.map(|v| parse_time("created_before", v)).transpose()?;
    Ok((after.map(floor_micros), before.map(ceil_micros)))
}

/// `t` without its sub-microsecond part (Postgres keeps microseconds).
fn floor_micros(t: OffsetDateTime) -> OffsetDateTime {
    t - Duration::nanoseconds(i64::from(t.nanosecond() % 1_000))
}

/// `t` rounded up to a whole microsecond: "before t" then means the same to Postgres.
fn ceil_micros(t: OffsetDateTime) -> OffsetDateTime {
    let floor = floor_micros(t);
    if floor == t { t } else { floor + Duration::microseconds(1) }
}

/// A page's size: `default` when not given, else 1 to [`MAX_LIMIT`].
pub fn limit(limit: Option<u32>, default: u32) -> Result<u32, AppError> {
    let limit = limit.unwrap_or(default);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::validation("limit", format!("must be 1 to {MAX_LIMIT}")).into());
    }
    Ok(limit)
}

/// Keep the first `limit` of rows fetched with `limit + 1` (the extra row says a next page
/// exists), and return the page's last row when a next page exists.
pub fn last_before_more<T>(rows: &mut Vec<T>, limit: u32) -> Option<&T> {
    if rows.len() <= limit as usize {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last()
}

/// Keep the first `limit` of rows fetched with `limit + 1` (the extra row says a next page
/// exists), and return the next page's cursor.
pub fn next_cursor<T, K: CursorKey>(rows: &mut Vec<T>, limit: u32, tag: &str, key: impl Fn(&T) -> K) -> Option<String> {
    last_before_more(rows, limit).map(|r| encode(tag, &key(r)))
}

/// The tag of [`Page`]'s cursors.
const ID_TAG: &str = "v1";

/// One page by a descending id: rows below `before`, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Only rows with an id below this (the cursor), if any.
    pub before: Option<i64>,
    /// Rows wanted.
    pub limit: u32,
}

impl Page {
    /// Read a page from the query's `cursor` and `limit`.
    pub fn parse(cursor: Option<&str>, limit: Option<u32>) -> Result<Self, AppError> {
        let limit = self::limit(limit, DEFAULT_LIMIT)?;
        let before = cursor.map(|c| decode(ID_TAG, c)).transpose()?;
        Ok(Self { before, limit })
    }

    /// The limit as a SQL bind, one more than wanted: the extra row says a next page exists.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// The next cursor, given the rows fetched with [`Page::fetch_limit`] (their ids, in order);
    /// drops the extra row.
    pub fn next_cursor<T>(&self, rows: &mut Vec<T>, id: impl Fn(&T) -> i64) -> Option<String> {
        next_cursor(rows, self.limit, ID_TAG, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_cursor_keeps_its_text_and_is_refused_for_another_scope() {
        let scope = "0123456789abcdef".to_owned();
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_000).unwrap();
        let id = Uuid::from_u128(9);
        let cursor = encode_scoped("l1", scope.clone(), (at, id));
        let text = format!("l1:{scope}:1800000000123456000:{id}");
        assert_eq!(cursor, URL_SAFE_NO_PAD.encode(text), "cursors already handed out stay valid");
        assert_eq!(decode_scoped::<(OffsetDateTime, Uuid)>("l1", &cursor, &scope).unwrap(), (at, id));
        let foreign = decode_scoped::<(OffsetDateTime, Uuid)>("l1", &cursor, "fedcba9876543210").unwrap_err();
        assert_eq!(foreign.to_api_error().details.unwrap()["reason"], FOREIGN_CURSOR);
        assert_eq!(decode_scoped::<i64>("g1", &encode_scoped("g1", scope.clone(), 42_i64), &scope).unwrap(), 42);
        for junk in ["g1:0123456789abcdef:0", "g1:short:42", "g1:0123456789abcdeg:42", "g1:42"] {
            let junk = URL_SAFE_NO_PAD.encode(junk);
            let e = decode_scoped::<i64>("g1", &junk, &scope).unwrap_err().to_api_error();
            assert_ne!(e.details.unwrap()["reason"], FOREIGN_CURSOR, "{junk}: not a cursor at all");
        }
    }

    #[test]
    fn created_between_is_exact_to_the_microsecond() {
        let (after, before) =
            created_between(Some("2026-11-27T16:05:31.0000005Z"), Some("2026-11-27T16:05:31.0000005Z")).unwrap();
        let whole = OffsetDateTime::parse("2026-11-27T16:05:31Z", &Rfc3339).unwrap();
        assert_eq!((after, before), (Some(whole), Some(whole + Duration::microseconds(1))));
        let e = created_between(None, Some("2026-11-27")).unwrap_err();
        assert_eq!(e.details.unwrap()["field"], "created_before");
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        assert_eq!(decode::<i64>(ID_TAG, &encode(ID_TAG, &42)).unwrap(), 42);
        for bad in ["", "x", "djE6", "djE6LTE", "djI6NDI"] {
            assert!(decode::<i64>(ID_TAG, bad).is_err(), "{bad}");
        }
        let key = (OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_789).unwrap(), Uuid::now_v7());
        assert_eq!(decode::<(OffsetDateTime, Uuid)>("a1", &encode("a1", &key)).unwrap(), key);
        assert!(decode::<(OffsetDateTime, Uuid)>("i1", &encode("a1", &key)).is_err(), "another listing's cursor");
        let id = Uuid::now_v7();
        assert_eq!(decode::<Uuid>("c1", &encode("c1", &id)).unwrap(), id);
        assert!(Page::parse(None, Some(0)).is_err());
        assert!(Page::parse(None, Some(101)).is_err());
        assert_eq!(Page::parse(None, None).unwrap(), Page { before: None, limit: 50 });
    }

    #[test]
    fn the_extra_row_makes_the_next_cursor() {
        let page = Page { before: None, limit: 2 };
        let mut rows = vec![9, 8, 7];
        assert_eq!(page.next_cursor(&mut rows, |r| *r), Some(encode(ID_TAG, &8)));
        assert_eq!(rows, vec![9, 8]);
        let mut rows = vec![9, 8];
        assert_eq!(page.next_cursor(&mut rows, |r| *r), None);
    }
}
