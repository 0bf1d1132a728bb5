//! `GET /v1/allocations`: a client's own allocations, newest first, a page at a time, each the same
//! document `GET /v1/allocations/{id}` answers (codes included, as the caller already got them).
//!
//! A page is read from the `(client_id, created_at DESC, id DESC)` index: the filters and the
//! cursor's position become conditions on that index, so a page costs its own rows, however deep
//! it is. The cursor is opaque: the last row's `(created_at, id)` and a digest of the client and
//! the filters it was made for, so a cursor used with other filters or by another client is
//! refused instead of silently skipping rows.

use std::collections::HashMap;

use allot_shared::{AllocationResponse, ApiError, Currency, ident};
use bytes::Bytes;
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use time::OffsetDateTime;
use uuid::Uuid;

use super::render::{self, AllocationHead, ClaimedCard};
use crate::crypto::KeyRing;
use crate::error::AppError;
use crate::ops::page;

/// Allocations per page when the caller does not say.
pub const DEFAULT_LIMIT: u32 = 20;
/// The tag of listing cursors (another listing's cursor is refused).
const CURSOR_TAG: &str = "l1";

/// What the caller asked for, as sent (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListingQuery {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Allocations per page, 1-100.
    pub limit: Option<u32>,
    /// Only allocations created strictly after this RFC 3339 time.
    pub created_after: Option<String>,
    /// Only allocations created strictly before this RFC 3339 time.
    pub created_before: Option<String>,
    /// Only this product's allocations.
    pub product_id: Option<String>,
    /// Only allocations made with this client reference.
    pub client_reference: Option<String>,
}

/// The filters of a listing, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Created strictly after (whole microseconds, as Postgres keeps time).
    pub created_after: Option<OffsetDateTime>,
    /// Created strictly before (whole microseconds).
    pub created_before: Option<OffsetDateTime>,
    /// The product.
    pub product_id: Option<String>,
    /// The client reference.
    pub client_reference: Option<String>,
}

/// One page of one client's listing, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Whose allocations.
    pub client_id: Uuid,
    /// The filters.
    pub filters: Filters,
    /// The last allocation of the previous page, if any.
    pub after_row: Option<(OffsetDateTime, Uuid)>,
    /// Allocations wanted.
    pub limit: u32,
}

impl Filters {
    /// Check the filters of `query`.
    pub fn parse(query: &ListingQuery) -> Result<Self, ApiError> {
        let (created_after, created_before) =
            page::created_between(query.created_after.as_deref(), query.created_before.as_deref())?;
        if let Some(p) = &query.product_id {
            ident::validate_product_id(p).map_err(|r| ApiError::validation("product_id", r))?;
        }
        if let Some(r) = &query.client_reference {
            ident::validate_client_reference(r).map_err(|why| ApiError::validation("client_reference", why))?;
        }
        Ok(Self {
            created_after,
            created_before,
            product_id: query.product_id.clone(),
            client_reference: query.client_reference.clone(),
        })
    }

    /// A digest of `client_id` and these filters: what a cursor is valid for.
    fn scope(&self, client_id: Uuid) -> String {
        let time = |t: Option<OffsetDateTime>| t.map(|t| t.unix_timestamp_nanos().to_string());
        page::scope(
            "allot-allocation-listing-v1",
            client_id,
            &[
                time(self.created_after),
                time(self.created_before),
                self.product_id.clone(),
                self.client_reference.clone(),
            ],
        )
    }
}

impl Listing {
    /// Check `query` for `client_id`: filters, limit, and a cursor made for this client and these
    /// filters.
    pub fn parse(client_id: Uuid, query: &ListingQuery) -> Result<Self, AppError> {
        let filters = Filters::parse(query)?;
        let limit = page::limit(query.limit, DEFAULT_LIMIT)?;
        let scope = filters.scope(client_id);
        let after_row = query.cursor.as_deref().map(|c| page::decode_scoped(CURSOR_TAG, c, &scope)).transpose()?;
        Ok(Self { client_id, filters, after_row, limit })
    }

    /// The statement for this page's allocations (without their cards), newest first, one row more
    /// than the limit (the extra row says a next page exists). With `explain`, its plan instead.
    pub fn statement(&self, explain: bool) -> QueryBuilder<Postgres> {
        let mut q = QueryBuilder::new(if explain { "EXPLAIN " } else { "" });
        q.push(
            "SELECT a.id, a.product_id, a.denomination_minor, a.quantity, a.client_reference, a.created_at, \
             p.currency FROM allocations a JOIN products p ON p.id = a.product_id WHERE a.client_id = ",
        );
        q.push_bind(self.client_id);
        if let Some(t) = self.filters.created_after {
            q.push(" AND a.created_at > ").push_bind(t);
        }
        if let Some(t) = self.filters.created_before {
            q.push(" AND a.created_at < ").push_bind(t);
        }
        if let Some(p) = &self.filters.product_id {
            q.push(" AND a.product_id = ").push_bind(p.clone());
        }
        if let Some(r) = &self.filters.client_reference {
            q.push(" AND a.client_reference = ").push_bind(r.clone());
        }
        if let Some((at, id)) = self.after_row {
            // A row comparison the index answers directly: rows strictly after the cursor's.
            q.push(" AND (a.created_at, a.id) < (").push_bind(at).push(", ").push_bind(id).push(")");
        }
        q.push(" ORDER BY a.created_at DESC, a.id DESC LIMIT ").push_bind(i64::from(self.limit) + 1);
        q
    }

    fn next_cursor(&self, last: &HeadRow) -> String {
        page::encode_scoped(CURSOR_TAG, self.filters.scope(self.client_id), (last.created_at, last.id))
    }
}

#[derive(sqlx::FromRow)]
struct HeadRow {
    id: Uuid,
    product_id: String,
    denomination_minor: i64,
    quantity: i32,
    client_reference: Option<String>,
    created_at: OffsetDateTime,
    currency: String,
}

#[derive(sqlx::FromRow)]
struct CardRow {
    allocation_id: Uuid,
    #[sqlx(flatten)]
    card: ClaimedCard,
}

/// The cards of many allocations, each allocation's in their positions.
const CARDS_OF: &str = "
SELECT allocation_id, id, allocation_position AS position, code_ciphertext, code_nonce, code_key_id, expires_at,
       voided_at
  FROM inventories WHERE allocation_id = ANY($1) ORDER BY allocation_id, allocation_position";

/// A page as sent: `{"items": [...], "next_cursor": "…" | null}`.
#[derive(Debug, Serialize)]
pub struct Page {
    /// The allocations, newest first.
    pub items: Vec<AllocationResponse>,
    /// The cursor of the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// One page of `listing`, read from `pool`, codes opened with `keys`.
pub async fn read(pool: &PgPool, keys: &KeyRing, listing: &Listing) -> Result<Page, AppError> {
    let mut heads: Vec<HeadRow> = listing.statement(false).build_query_as().fetch_all(pool).await?;
    let next_cursor = page::last_before_more(&mut heads, listing.limit).map(|h| listing.next_cursor(h));
    debug_assert!(heads.windows(2).all(|w| (w[0].created_at, w[0].id) > (w[1].created_at, w[1].id)), "newest first");
    let ids: Vec<Uuid> = heads.iter().map(|h| h.id).collect();
    let rows: Vec<CardRow> = sqlx::query_as(CARDS_OF).bind(&ids).fetch_all(pool).await?;
    let mut cards: HashMap<Uuid, Vec<ClaimedCard>> = HashMap::with_capacity(ids.len());
    for row in rows {
        cards.entry(row.allocation_id).or_default().push(row.card);
    }
    let mut items = Vec::with_capacity(heads.len());
    for h in heads {
        let currency = Currency::parse(&h.currency).map_err(|e| AppError::Internal(e.into()))?;
        let head = AllocationHead {
            id: h.id,
            product_id: h.product_id,
            currency,
            denomination_minor: h.denomination_minor,
            quantity: u32::try_from(h.quantity).map_err(|e| AppError::Internal(e.into()))?,
            client_reference: h.client_reference,
            created_at: h.created_at,
        };
        items.push(render::response(keys, &head, cards.get(&h.id).map(Vec::as_slice).unwrap_or_default())?);
    }
    Ok(Page { items, next_cursor })
}

/// [`read`] as the response body.
pub async fn read_body(pool: &PgPool, keys: &KeyRing, listing: &Listing) -> Result<Bytes, AppError> {
    let page = read(pool, keys, listing).await?;
    Ok(Bytes::from(serde_json::to_vec(&page).map_err(|e| AppError::Internal(e.into()))?))
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::format_description::well_known::Rfc3339;

    use super::*;

    fn client() -> Uuid {
        Uuid::from_u128(7)
    }

    fn query(pairs: &[(&str, &str)]) -> ListingQuery {
        let get = |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned());
        ListingQuery {
            cursor: get("cursor"),
            limit: get("limit").map(|l| l.parse().unwrap()),
            created_after: get("created_after"),
            created_before: get("created_before"),
            product_id: get("product_id"),
            client_reference: get("client_reference"),
        }
    }

    fn field(e: AppError) -> String {
        e.to_api_error().details.unwrap()["field"].as_str().unwrap().to_owned()
    }

    #[test]
    fn bad_filters_name_their_field() {
        for (pairs, want) in [
            (&[("limit", "0")][..], "limit"),
            (&[("limit", "101")], "limit"),
            (&[("created_after", "yesterday")], "created_after"),
            (&[("created_before", "2026-11-27")], "created_before"),
            (&[("product_id", "-x")], "product_id"),
            (&[("product_id", "")], "product_id"),
            (&[("client_reference", "")], "client_reference"),
            (&[("client_reference", "a\u{7}")], "client_reference"),
            (&[("cursor", "nope")], "cursor"),
        ] {
            assert_eq!(field(Listing::parse(client(), &query(pairs)).unwrap_err()), want, "{pairs:?}");
        }
        let ok = Listing::parse(client(), &query(&[])).unwrap();
        assert_eq!((ok.limit, ok.after_row, ok.filters), (DEFAULT_LIMIT, None, Filters::default()));
    }

    #[test]
    fn a_cursor_is_valid_only_for_its_client_and_filters() {
        let filtered = query(&[("product_id", "gift-usd"), ("created_after", "2026-01-01T00:00:00Z")]);
        let listing = Listing::parse(client(), &filtered).unwrap();
        let row = HeadRow {
            id: Uuid::now_v7(),
            product_id: "gift-usd".into(),
            denomination_minor: 2500,
            quantity: 1,
            client_reference: None,
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_000).unwrap(),
            currency: "USD".into(),
        };
        let cursor = listing.next_cursor(&row);
        let next = ListingQuery { cursor: Some(cursor.clone()), limit: Some(5), ..filtered.clone() };
        let page2 = Listing::parse(client(), &next).unwrap();
        assert_eq!(page2.after_row, Some((row.created_at, row.id)));
        assert_eq!(page2.limit, 5, "the limit may change between pages");
        // The same cursor with other filters, none, or another client.
        let others = [
            ListingQuery { product_id: Some("gift-eur".into()), ..next.clone() },
            ListingQuery { created_after: None, ..next.clone() },
            ListingQuery { client_reference: Some("x".into()), ..next.clone() },
            ListingQuery { cursor: Some(cursor), ..ListingQuery::default() },
        ];
        for other in others {
            let e = Listing::parse(client(), &other).unwrap_err().to_api_error();
            assert!(e.message.contains("other filters"), "{other:?}: {}", e.message);
        }
        assert!(Listing::parse(Uuid::from_u128(8), &next).is_err(), "another client");
        // An operator listing's cursor is not a listing cursor.
        let ops = page::encode("a1", &(row.created_at, row.id));
        assert!(Listing::parse(client(), &ListingQuery { cursor: Some(ops), ..filtered }).is_err());
    }

    #[test]
    fn times_are_exact_to_the_microsecond_postgres_keeps() {
        let q = query(&[
            ("created_after", "2026-11-27T16:05:31.0000005Z"),
            ("created_before", "2026-11-27T18:05:31.0000005+02:00"),
        ]);
        let f = Filters::parse(&q).unwrap();
        let at = OffsetDateTime::parse("2026-11-27T16:05:31Z", &Rfc3339).unwrap();
        assert_eq!(f.created_after, Some(at));
        assert_eq!(f.created_before, Some(at + Duration::microseconds(1)));
        let whole = Filters::parse(&query(&[("created_before", "2026-11-27T16:05:31.000001Z")])).unwrap();
        assert_eq!(whole.created_before, Some(at + Duration::microseconds(1)), "already whole: unchanged");
    }
}
