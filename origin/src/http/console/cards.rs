//! The Cards and allocations page: find allocations (codes masked), void cards, and, for
//! admins, reveal an allocation's codes after a confirmation (audited before decryption).

use allot_shared::ApiError;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Section};
use super::{Console, ConsoleError, FormOf};
use crate::error::AppError;
use crate::http::AppState;
use crate::http::ops::operators::parse_uuid;
use crate::ops::allocations::{self, AllocationLookup, AllocationPage, AllocationView};
use crate::ops::voids::{self, VoidOutcome, VoidRequest, VoidSelector};

/// How the search box is read.
const SEARCH_KINDS: [(&str, &str); 4] =
    [("allocation", "Allocation id"), ("card", "Card id"), ("client", "Client id"), ("reference", "Client reference")];

/// `GET /ops/cards`'s query: what to look for, and the page.
#[derive(Deserialize)]
pub struct SearchQuery {
    by: Option<String>,
    q: Option<String>,
    cursor: Option<String>,
}

fn lookup(by: &str, q: &str) -> Result<AllocationLookup, AppError> {
    let q = q.trim();
    let field = match by {
        "allocation" => AllocationLookup::Id(parse_uuid("allocation id", q)?),
        "card" => AllocationLookup::Card(
            q.parse().map_err(|_| ApiError::validation("card id", "must be a whole number (the card's id)"))?,
        ),
        "client" => AllocationLookup::Client(parse_uuid("client id", q)?),
        "reference" => AllocationLookup::from_fields(None, None, Some(q.to_owned()), None)?,
        _ => return Err(ApiError::validation("search", "choose what to search by").into()),
    };
    Ok(field)
}

/// `GET /ops/cards`.
pub async fn page(
    State(st): State<AppState>,
    console: Console,
    Query(s): Query<SearchQuery>,
) -> Result<Response, ConsoleError> {
    let by = s.by.as_deref().unwrap_or("allocation");
    let q = s.q.as_deref().unwrap_or("").trim();
    let results = match q {
        "" => None,
        q => match search(&st, by, q, s.cursor.as_deref()).await {
            Ok(found) => Some(Ok(found)),
            Err(AppError::Api(e)) => Some(Err(e)),
            Err(e) => return Err(e.into()),
        },
    };
    let content = html! {
        section.card aria-labelledby="search-title" {
            h2 #search-title { "Find allocations" }
            form.row method="get" action="/ops/cards" role="search" {
                label { "Search by"
                    select name="by" {
                        @for (value, text) in SEARCH_KINDS {
                            option value=(value) selected[value == by] { (text) }
                        }
                    }
                }
                label { "Value" input type="search" name="q" value=(q) required; }
                button type="submit" { "Search" }
            }
        }
        @match results {
            None => {},
            Some(Err(e)) => p.notice.error role="alert" { (super::words(&e)) },
            Some(Ok((found, next))) => {
                @if found.is_empty() {
                    p role="status" { "Nothing found (a card that is not allocated has no allocation)." }
                }
                @for a in &found { (allocation_card(&console, a)) }
                (layout::next_page(&layout::query("/ops/cards", &[("by", Some(by)), ("q", Some(q))]), next.as_deref()))
            },
        }
        @if console.may("POST", "/ops/cards/void") {
            (void_form(&console))
        }
    };
    Ok(layout::shell(&console, Section::Cards, "Cards and allocations", content).into_response())
}

async fn search(
    st: &AppState,
    by: &str,
    q: &str,
    cursor: Option<&str>,
) -> Result<(Vec<AllocationView>, Option<String>), AppError> {
    let lookup = lookup(by, q)?;
    let page = AllocationPage::parse(cursor, Some(10))?;
    allocations::find(&st.db.primary, &st.config.card_keys, &lookup, page).await
}

fn allocation_card(console: &Console, a: &AllocationView) -> Markup {
    html! {
        section.card {
            h2 { a href={ "/ops/allocations/" (a.id) } { "Allocation " code { (a.id) } } }
            (facts(a))
            (cards_table(&a.cards))
            @if console.may("GET", "/ops/allocations/{id}/reveal") {
                p { a href={ "/ops/allocations/" (a.id) "/reveal" } { "Reveal codes…" } }
            }
        }
    }
}

fn facts(a: &AllocationView) -> Markup {
    html! {
        dl.facts {
            dt { "Client" } dd { a href={ "/ops/clients/" (a.client.id) } { (a.client.name) } }
            dt { "Product" } dd { (a.product_id) " · " (a.denomination) " " (a.currency.code()) }
            dt { "Cards" } dd { (a.quantity) }
            dt { "Client reference" } dd { (a.client_reference.as_deref().unwrap_or("—")) }
            dt { "Idempotency key" } dd { code { (a.idempotency_key) } }
            dt { "Created" } dd { (a.created_at) }
        }
    }
}

fn cards_table(cards: &[allocations::CardView]) -> Markup {
    html! {
        div.table-wrap { table.cards {
            thead { tr {
                th.num scope="col" { "#" }
                th.num scope="col" { "Card id" }
                th scope="col" { "Code" }
                th scope="col" { "PIN" }
                th scope="col" { "Status" }
                th scope="col" { "Expires" }
            } }
            tbody {
                @for c in cards {
                    tr {
                        td.num { (c.position) }
                        td.num { (c.card_id) }
                        td { code { (c.code) } }
                        td { code { (c.pin.as_deref().unwrap_or("—")) } }
                        td {
                            @if let Some(at) = &c.voided_at {
                                span.state.state-out title={ "voided " (at) } { "void" }
                                " " span.hint { (c.void_reason.as_deref().unwrap_or("")) }
                            } @else {
                                (c.status)
                            }
                        }
                        td { (c.expires_at.as_deref().unwrap_or("—")) }
                    }
                }
            }
        } }
    }
}

fn void_form(console: &Console) -> Markup {
    html! {
        section.card aria-labelledby="void-title" {
            h2 #void-title { "Void cards" }
            p.muted { "Voided cards are never allocated again; an allocated card stays in its allocation, shown void." }
            form.stack method="post" action="/ops/cards/void"
                data-confirm="Void these cards? This cannot be undone." {
                (layout::csrf(console))
                label {
                    "Card ids"
                    span.hint { "separated by spaces or commas, up to 10,000" }
                    textarea name="card_ids" required {}
                }
                label { "Reason" input type="text" name="reason" required maxlength="500"; }
                button.danger type="submit" { "Void cards" }
            }
        }
    }
}

/// What a void did, in words.
pub fn void_summary(o: &VoidOutcome) -> String {
    let mut text = format!("Voided {} of {} matching cards", o.voided, o.matched);
    if o.voided_allocated > 0 {
        text.push_str(&format!(" ({} of them allocated)", o.voided_allocated));
    }
    if o.credited > 0 {
        text.push_str(&format!("; {} credited back to their clients' balances", o.credited));
    }
    if o.already_void > 0 {
        text.push_str(&format!("; {} were void already", o.already_void));
    }
    if o.skipped_allocated > 0 {
        text.push_str(&format!("; {} allocated cards were left alone", o.skipped_allocated));
    }
    text
}

/// The card void form.
#[derive(Deserialize)]
pub struct CardVoidForm {
    card_ids: String,
    reason: String,
}

fn card_ids(text: &str) -> Result<Vec<i64>, ApiError> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<i64>().map_err(|_| ApiError::validation("card ids", format!("{t:?} is not a card id"))))
        .collect()
}

/// `POST /ops/cards/void`.
pub async fn void(
    State(st): State<AppState>,
    console: Console,
    FormOf(f): FormOf<CardVoidForm>,
) -> Result<Response, ConsoleError> {
    let outcome = async {
        let selector = VoidSelector::from_fields(Some(card_ids(&f.card_ids)?), None, None, None)?;
        let req = VoidRequest { selector, reason: f.reason, include_allocated: false };
        Ok(void_summary(&voids::void_cards(&st.db.primary, st.engine.cache(), &console.actor, &req).await?))
    }
    .await;
    console.finish(&st, outcome, "/ops/cards").await
}

/// `GET /ops/allocations/{id}`: one allocation, codes masked.
pub async fn allocation(
    State(st): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", &id)?;
    let a = allocations::show(&st.db.primary, &st.config.card_keys, id).await?;
    let content = allocation_card(&console, &a);
    Ok(layout::shell(&console, Section::Cards, "Allocation", content).into_response())
}

/// `GET /ops/allocations/{id}/reveal`: ask first.
pub async fn confirm_reveal(
    State(st): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", &id)?;
    let a = allocations::show(&st.db.primary, &st.config.card_keys, id).await?;
    let content = html! {
        section.card {
            (facts(&a))
            p role="alert" {
                "Revealing shows " (a.quantity) " codes in clear. It is recorded in the audit log under your name "
                "before any code is decrypted."
            }
            form.stack method="post" action={ "/ops/allocations/" (a.id) "/reveal" } {
                (layout::csrf(&console))
                label.check { input type="checkbox" name="confirm" value="yes" required; "I need to see these codes" }
                button.danger type="submit" { "Reveal codes" }
            }
            p { a href={ "/ops/allocations/" (a.id) } { "Cancel" } }
        }
    };
    Ok(layout::shell(&console, Section::Cards, "Reveal codes?", content).into_response())
}

/// The reveal confirmation.
#[derive(Deserialize)]
pub struct RevealForm {
    confirm: Option<String>,
}

/// `POST /ops/allocations/{id}/reveal`: the codes, once, never cached.
pub async fn reveal(
    State(st): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    FormOf(f): FormOf<RevealForm>,
) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", &id)?;
    if f.confirm.as_deref() != Some("yes") {
        let to = format!("/ops/allocations/{id}/reveal");
        return console.redirect(&st, super::session::Notice::failed("Tick the box to confirm first."), &to).await;
    }
    let a = allocations::reveal(&st.db.primary, &st.config.card_keys, &console.actor, id).await?;
    let content = html! {
        p.notice.done role="status" { "Revealed; this was recorded in the audit log." }
        section.card.secret { (facts(&a)) (cards_table(&a.cards)) }
    };
    let mut resp = layout::shell(&console, Section::Cards, "Revealed codes", content).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::card_ids;

    #[test]
    fn card_ids_are_read_from_spaces_commas_and_lines() {
        assert_eq!(card_ids("1, 2\n3 4,,").unwrap(), vec![1, 2, 3, 4]);
        assert!(card_ids("1 two").is_err());
        assert!(card_ids("").unwrap().is_empty());
    }
}
