//! The Audit log page: who changed what, filtered by actor, action and time, in cursor pages.

use std::collections::HashMap;

use allot_shared::ApiError;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::layout::{self, Section};
use super::{Console, ConsoleError};
use crate::error::AppError;
use crate::http::AppState;
use crate::ops::audit::{self, AuditEntry, AuditFilter};
use crate::ops::operators;
use crate::ops::page::Page;

/// Action families offered as suggestions (any action, or a prefix ending in `.`, is accepted).
const ACTIONS: &[&str] = &[
    "card.void",
    "import.",
    "allocation.reveal",
    "client.",
    "key.",
    "operator.",
    "job.",
    "stock.threshold",
    "console.",
];

/// `GET /ops/audit`'s query: the filters, and the page.
#[derive(Deserialize)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
}

/// A time from a `datetime-local` field (read as UTC) or RFC 3339.
fn parse_time(field: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else { return Ok(None) };
    if let Ok(t) = OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339) {
        return Ok(Some(t));
    }
    let local = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let local_secs = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    PrimitiveDateTime::parse(v, &local)
        .or_else(|_| PrimitiveDateTime::parse(v, &local_secs))
        .map(|t| Some(t.assume_utc()))
        .map_err(|_| ApiError::validation(field, "must be a date and time, such as 2026-11-27T09:30 (UTC)"))
}

/// `GET /ops/audit`.
pub async fn page(
    State(st): State<AppState>,
    console: Console,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ConsoleError> {
    let pool = &st.db.primary;
    let names: HashMap<String, String> =
        operators::list(pool).await?.into_iter().map(|o| (o.id.to_string(), o.name)).collect();
    let nonempty = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let listed = async {
        let filter = AuditFilter {
            actor: nonempty(&q.actor),
            action: nonempty(&q.action),
            target: None,
            since: parse_time("since", q.since.as_deref())?,
            until: parse_time("until", q.until.as_deref())?,
        };
        audit::list(pool, &filter, Page::parse(q.cursor.as_deref(), Some(50))?).await
    }
    .await;
    let (rows, next, problem) = match listed {
        Ok((rows, next)) => (rows, next, None),
        Err(AppError::Api(e)) => (Vec::new(), None, Some(super::words(&e))),
        Err(e) => return Err(e.into()),
    };
    let keep = [
        ("actor", q.actor.as_deref()),
        ("action", q.action.as_deref()),
        ("since", q.since.as_deref()),
        ("until", q.until.as_deref()),
    ];
    let content = html! {
        (filter_form(&q, &names))
        @if let Some(p) = problem { p.notice.error role="alert" { (p) } }
        (table(&rows, &names))
        (layout::next_page(&layout::query("/ops/audit", &keep), next.as_deref()))
    };
    Ok(layout::shell(&console, Section::Audit, "Audit log", content).into_response())
}

fn filter_form(q: &AuditQuery, names: &HashMap<String, String>) -> Markup {
    html! {
        form.row method="get" action="/ops/audit" aria-label="Filter the audit log" {
            label { "Actor" span.hint { "operator id, or cli:<user>" }
                input type="text" name="actor" list="actors" value=[q.actor.as_deref()];
            }
            datalist #actors { @for (id, name) in names { option value=(id) { (name) } } }
            label { "Action" span.hint { "exact, or a prefix ending in ." }
                input type="text" name="action" list="actions" value=[q.action.as_deref()];
            }
            datalist #actions { @for a in ACTIONS { option value=(a) {} } }
            label { "Since (UTC)" input type="datetime-local" name="since" value=[q.since.as_deref()]; }
            label { "Until (UTC)" input type="datetime-local" name="until" value=[q.until.as_deref()]; }
            button type="submit" { "Filter" }
            a href="/ops/audit" { "Clear" }
        }
    }
}

fn table(rows: &[AuditEntry], names: &HashMap<String, String>) -> Markup {
    html! {
        div.table-wrap { table #audit {
            thead { tr {
                th scope="col" { "When" }
                th scope="col" { "Who" }
                th scope="col" { "Action" }
                th scope="col" { "Target" }
                th scope="col" { "Change" }
                th scope="col" { "Request" }
            } }
            tbody {
                @if rows.is_empty() { tr { td colspan="6" { "No audit rows match." } } }
                @for r in rows {
                    tr {
                        td { (layout::time(r.at)) }
                        td {
                            @match names.get(&r.actor) {
                                Some(name) => { (name) br; span.hint { code { (r.actor) } } },
                                None => code { (r.actor) },
                            }
                        }
                        td { code { (r.action) } }
                        td { code { (r.target) } }
                        td { code { (r.change.to_string()) } }
                        td { code { (r.request_id.as_deref().unwrap_or("—")) } }
                    }
                }
            }
        } }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_are_read_from_the_browser_field_as_utc_or_from_rfc3339() {
        let t = parse_time("since", Some("2026-11-27T09:30")).unwrap().unwrap();
        assert_eq!(t, time::macros::datetime!(2026-11-27 09:30 UTC));
        let t = parse_time("since", Some("2026-11-27T09:30:00+01:00")).unwrap().unwrap();
        assert_eq!(t, time::macros::datetime!(2026-11-27 08:30 UTC));
        assert_eq!(parse_time("since", Some(" ")).unwrap(), None);
        assert!(parse_time("since", Some("yesterday")).is_err());
    }
}
