//! `GET /v1/ledger`: a client's own ledger entries, newest first, a page at a time.
//!
//! A page is read from the `ledger_entries_client (client_id, id DESC)` index: the cursor is an
//! index condition (`id <` the previous page's last id), so a page costs its own rows however deep
//! it is; the filters are conditions on the rows the index walks. The cursor is opaque, as the
//! allocation listing's: the last id and a digest of the client and the filters it was made for,
//! so a cursor used with other filters or by another client is refused instead of skipping rows.
//! Read from the replica while it serves ([`crate::read_routing`]): an entry written a moment ago
//! may show a moment later there.

use allot_shared::funding::{LedgerEntry, LedgerKind, LedgerPage, signed_amount};
use allot_shared::{ApiError, Currency};
use sqlx::{PgPool, Postgres, QueryBuilder};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::allocation::render::format_time;
use crate::error::AppError;
use crate::ops::page;

/// Entries per page when the caller does not say.
pub const DEFAULT_LIMIT: u32 = 20;
/// The tag of ledger cursors (another listing's cursor is refused).
const CURSOR_TAG: &str = "g1";

/// What the caller asked for, as sent (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerQuery {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Entries per page, 1-100.
    pub limit: Option<u32>,
    /// Only entries in this currency.
    pub currency: Option<String>,
    /// Only entries of this kind.
    pub kind: Option<String>,
    /// Only entries created strictly after this RFC 3339 time.
    pub created_after: Option<String>,
    /// Only entries created strictly before this RFC 3339 time.
    pub created_before: Option<String>,
}

/// The filters of a ledger page, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// The currency.
    pub currency: Option<Currency>,
    /// The kind.
    pub kind: Option<LedgerKind>,
    /// Created strictly after (whole microseconds, as Postgres keeps time).
    pub created_after: Option<OffsetDateTime>,
    /// Created strictly before (whole microseconds).
    pub created_before: Option<OffsetDateTime>,
}

/// One page of one client's ledger, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    /// Whose entries.
    pub client_id: Uuid,
    /// The filters.
    pub filters: Filters,
    /// Only entries with an id below this (the previous page's last), if any.
    pub before_id: Option<i64>,
    /// Entries wanted.
    pub limit: u32,
}

impl Filters {
    /// Check the filters of `query`.
    pub fn parse(query: &LedgerQuery) -> Result<Self, ApiError> {
        let currency = query
            .currency
            .as_deref()
            .map(|c| Currency::parse(c).map_err(|e| ApiError::validation("currency", e.to_string())))
            .transpose()?;
        let kind = query
            .kind
            .as_deref()
            .map(|k| {
                LedgerKind::parse(k)
                    .ok_or_else(|| ApiError::validation("kind", "must be deposit, allocation, reversal or adjustment"))
            })
            .transpose()?;
        let (created_after, created_before) =
            page::created_between(query.created_after.as_deref(), query.created_before.as_deref())?;
        Ok(Self { currency, kind, created_after, created_before })
    }

    /// A digest of `client_id` and these filters: what a cursor is valid for.
    fn scope(&self, client_id: Uuid) -> String {
        let time = |t: Option<OffsetDateTime>| t.map(|t| t.unix_timestamp_nanos().to_string());
        page::scope(
            "allot-ledger-listing-v1",
            client_id,
            &[
                self.currency.map(|c| c.code().to_owned()),
                self.kind.map(|k| k.as_str().to_owned()),
                time(self.created_after),
                time(self.created_before),
            ],
        )
    }
}

impl Ledger {
    /// Check `query` for `client_id`: filters, limit, and a cursor made for this client and these
    /// filters.
    pub fn parse(client_id: Uuid, query: &LedgerQuery) -> Result<Self, AppError> {
        let filters = Filters::parse(query)?;
        let limit = page::limit(query.limit, DEFAULT_LIMIT)?;
        let scope = filters.scope(client_id);
        let before_id = query.cursor.as_deref().map(|c| page::decode_scoped(CURSOR_TAG, c, &scope)).transpose()?;
        Ok(Self { client_id, filters, before_id, limit })
    }

    /// The statement for this page's entries, newest first, one row more than the limit (the
    /// extra row says a next page exists). With `explain`, its plan instead.
    pub fn statement(&self, explain: bool) -> QueryBuilder<Postgres> {
        let mut q = QueryBuilder::new(if explain { "EXPLAIN " } else { "" });
        q.push(
            "SELECT id, kind, currency, debit_account, amount_minor, allocation_id, card_id, memo, created_at \
             FROM ledger_entries WHERE client_id = ",
        );
        q.push_bind(self.client_id);
        if let Some(c) = self.filters.currency {
            q.push(" AND currency = ").push_bind(c.code());
        }
        if let Some(k) = self.filters.kind {
            q.push(" AND kind = ").push_bind(k.as_str());
        }
        if let Some(t) = self.filters.created_after {
            q.push(" AND created_at > ").push_bind(t);
        }
        if let Some(t) = self.filters.created_before {
            q.push(" AND created_at < ").push_bind(t);
        }
        if let Some(id) = self.before_id {
            q.push(" AND id < ").push_bind(id);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(self.limit) + 1);
        q
    }

    fn next_cursor(&self, last_id: i64) -> String {
        page::encode_scoped(CURSOR_TAG, self.filters.scope(self.client_id), last_id)
    }
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    id: i64,
    kind: String,
    currency: String,
    debit_account: String,
    amount_minor: i64,
    allocation_id: Option<Uuid>,
    card_id: Option<i64>,
    memo: Option<String>,
    created_at: OffsetDateTime,
}

impl EntryRow {
    /// The entry as its client sees it: no accounts, no actor; the amount signed.
    fn to_wire(&self) -> Result<LedgerEntry, AppError> {
        let internal = |what: &str| AppError::Internal(anyhow::anyhow!("ledger entry {}: {what}", self.id));
        let currency = Currency::parse(&self.currency).map_err(|_| internal("unknown currency"))?;
        let kind = LedgerKind::parse(&self.kind).ok_or_else(|| internal("unknown kind"))?;
        Ok(LedgerEntry {
            id: self.id,
            kind,
            currency,
            amount: signed_amount(currency, self.amount_minor, self.debit_account == "client"),
            allocation_id: self.allocation_id.map(|id| id.to_string()),
            card_id: self.card_id,
            memo: self.memo.clone(),
            created_at: format_time(self.created_at),
        })
    }
}

/// One page of `ledger`, read from `pool`.
pub async fn read(pool: &PgPool, ledger: &Ledger) -> Result<LedgerPage, AppError> {
    let mut rows: Vec<EntryRow> = ledger.statement(false).build_query_as().fetch_all(pool).await?;
    let next_cursor = page::last_before_more(&mut rows, ledger.limit).map(|r| ledger.next_cursor(r.id));
    debug_assert!(rows.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let items = rows.iter().map(EntryRow::to_wire).collect::<Result<Vec<_>, _>>()?;
    Ok(LedgerPage { items, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Uuid {
        Uuid::from_u128(7)
    }

    fn query(pairs: &[(&str, &str)]) -> LedgerQuery {
        let get = |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned());
        LedgerQuery {
            cursor: get("cursor"),
            limit: get("limit").map(|l| l.parse().unwrap()),
            currency: get("currency"),
            kind: get("kind"),
            created_after: get("created_after"),
            created_before: get("created_before"),
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
            (&[("currency", "eur")], "currency"),
            (&[("currency", "ZZZ")], "currency"),
            (&[("kind", "debit")], "kind"),
            (&[("kind", "")], "kind"),
            (&[("created_after", "yesterday")], "created_after"),
            (&[("created_before", "2026-11-27")], "created_before"),
            (&[("cursor", "nope")], "cursor"),
        ] {
            assert_eq!(field(Ledger::parse(client(), &query(pairs)).unwrap_err()), want, "{pairs:?}");
        }
        let ok = Ledger::parse(client(), &query(&[])).unwrap();
        assert_eq!((ok.limit, ok.before_id, ok.filters), (DEFAULT_LIMIT, None, Filters::default()));
    }

    #[test]
    fn a_cursor_is_valid_only_for_its_client_and_filters() {
        let filtered = query(&[("currency", "EUR"), ("kind", "deposit"), ("created_after", "2026-01-01T00:00:00Z")]);
        let ledger = Ledger::parse(client(), &filtered).unwrap();
        let cursor = ledger.next_cursor(1234);
        let next = LedgerQuery { cursor: Some(cursor.clone()), limit: Some(5), ..filtered.clone() };
        let page2 = Ledger::parse(client(), &next).unwrap();
        assert_eq!((page2.before_id, page2.limit), (Some(1234), 5), "the limit may change between pages");
        let others = [
            LedgerQuery { currency: Some("USD".into()), ..next.clone() },
            LedgerQuery { kind: None, ..next.clone() },
            LedgerQuery { created_before: Some("2030-01-01T00:00:00Z".into()), ..next.clone() },
            LedgerQuery { cursor: Some(cursor), ..LedgerQuery::default() },
        ];
        for other in others {
            let e = Ledger::parse(client(), &other).unwrap_err().to_api_error();
            assert!(e.message.contains("other filters"), "{other:?}: {}", e.message);
        }
        assert!(Ledger::parse(Uuid::from_u128(8), &next).is_err(), "another client");
        // Another listing's cursor is not a ledger cursor, even with a number for a key.
        let ops = page::encode("v1", &1234_i64);
        assert!(Ledger::parse(client(), &LedgerQuery { cursor: Some(ops), ..filtered }).is_err());
    }

    #[test]
    fn an_entry_is_signed_from_the_clients_side_and_names_no_actor() {
        let row = |kind: &str, debit: &str, amount: i64| EntryRow {
            id: 9,
            kind: kind.into(),
            currency: "EUR".into(),
            debit_account: debit.into(),
            amount_minor: amount,
            allocation_id: None,
            card_id: None,
            memo: None,
            created_at: OffsetDateTime::from_unix_timestamp(1_795_795_531).unwrap(),
        };
        assert_eq!(row("allocation", "client", 5_000).to_wire().unwrap().amount, "-50.00");
        assert_eq!(row("deposit", "deposits", 10_000).to_wire().unwrap().amount, "100.00");
        assert_eq!(row("adjustment", "client", 1).to_wire().unwrap().amount, "-0.01");
        assert_eq!(row("adjustment", "adjustments", 1).to_wire().unwrap().amount, "0.01");
        let wire = serde_json::to_value(row("reversal", "sales", 2_500).to_wire().unwrap()).unwrap();
        let mut fields: Vec<&str> = wire.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            ["allocation_id", "amount", "card_id", "created_at", "currency", "id", "kind", "memo"],
            "no accounts, no actor"
        );
    }
}
