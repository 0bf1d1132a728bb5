//! Cursor pagination for operator listings: an opaque cursor over a descending id, and a limit.

use allot_shared::ApiError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::AppError;

/// Rows per page when the caller does not say.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most rows one page holds.
pub const MAX_LIMIT: u32 = 100;

/// One page's bounds: rows below `before` (newest first), at most `limit`.
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
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::validation("limit", format!("must be 1 to {MAX_LIMIT}")).into());
        }
        let before = cursor.map(decode).transpose()?;
        Ok(Self { before, limit })
    }

    /// The limit as a SQL bind, one more than wanted: the extra row says a next page exists.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// The next cursor, given the rows fetched with [`Page::fetch_limit`] (their ids, in order);
    /// drops the extra row.
    pub fn next_cursor<T>(&self, rows: &mut Vec<T>, id: impl Fn(&T) -> i64) -> Option<String> {
        if rows.len() <= self.limit as usize {
            return None;
        }
        rows.truncate(self.limit as usize);
        rows.last().map(|r| encode(id(r)))
    }
}

/// The opaque cursor for "rows below `id`".
pub fn encode(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{id}"))
}

fn decode(cursor: &str) -> Result<i64, AppError> {
    let bad = || AppError::from(ApiError::validation("cursor", "is not a cursor this API returned"));
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = std::str::from_utf8(&raw).map_err(|_| bad())?;
    text.strip_prefix("v1:").and_then(|n| n.parse::<i64>().ok()).filter(|n| *n > 0).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        assert_eq!(decode(&encode(42)).unwrap(), 42);
        for bad in ["", "x", "djE6", "djE6LTE", "djI6NDI"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        assert!(Page::parse(None, Some(0)).is_err());
        assert!(Page::parse(None, Some(101)).is_err());
        assert_eq!(Page::parse(None, None).unwrap(), Page { before: None, limit: 50 });
    }

    #[test]
    fn the_extra_row_makes_the_next_cursor() {
        let page = Page { before: None, limit: 2 };
        let mut rows = vec![9, 8, 7];
        assert_eq!(page.next_cursor(&mut rows, |r| *r), Some(encode(8)));
        assert_eq!(rows, vec![9, 8]);
        let mut rows = vec![9, 8];
        assert_eq!(page.next_cursor(&mut rows, |r| *r), None);
    }
}
