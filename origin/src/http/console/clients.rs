//! The Clients and keys page: clients with their balances, one client's funding and keys, and
//! (admins) new clients, keys shown once, revocation, rotation, suspension and rate limits.

use allot_shared::ApiError;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::funding;
use super::layout::{self, Section, Tone};
use super::session::Notice;
use super::{Console, ConsoleError, FormOf};
use crate::error::AppError;
use crate::http::AppState;
use crate::http::ops::operators::parse_uuid;
use crate::ops::clients::{self, ClientDetail, ClientFilter, RotationEnd};
use crate::ops::funding::Funding;

/// `GET /ops/clients`'s query.
#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    cursor: Option<String>,
}

/// `GET /ops/clients`.
pub async fn page(
    State(st): State<AppState>,
    console: Console,
    Query(q): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let status = q.status.filter(|s| !s.is_empty());
    let after = q.cursor.as_deref().map(clients::parse_client_cursor).transpose()?;
    let filter = ClientFilter { status: status.clone(), after, limit: 50 };
    let (rows, next) = clients::list_clients(&st.db.primary, &filter).await?;
    let ids: Vec<Uuid> = rows.iter().map(|c| c.id).collect();
    let accounts = crate::ops::funding::accounts_of(&st.db.primary, &ids).await?;
    let content = html! {
        form.row method="get" action="/ops/clients" {
            label { "Status"
                select name="status" {
                    option value="" selected[status.is_none()] { "any" }
                    option value="active" selected[status.as_deref() == Some("active")] { "active" }
                    option value="suspended" selected[status.as_deref() == Some("suspended")] { "suspended" }
                }
            }
            button.secondary type="submit" { "Filter" }
        }
        div.table-wrap { table #clients {
            thead { tr {
                th scope="col" { "Name" }
                th scope="col" { "Status" }
                th.num scope="col" { "Usable keys" }
                th.num scope="col" { "Requests / min" }
                th scope="col" { "Balances" }
                th scope="col" { "Last used" }
                th scope="col" { "Created" }
            } }
            tbody {
                @if rows.is_empty() { tr { td colspan="7" { "No clients." } } }
                @for c in &rows {
                    tr {
                        th scope="row" { a href={ "/ops/clients/" (c.id) } { (c.name) } }
                        td { (status_badge(&c.status)) }
                        td.num { (c.usable_keys) }
                        td.num { (c.rate_limit_per_minute.map_or("default".to_owned(), |n| n.to_string())) }
                        td {
                            @for (i, a) in accounts.iter().filter(|a| a.client_id == c.id).enumerate() {
                                @if i > 0 { br; }
                                (funding::balance(a))
                            }
                        }
                        td { (layout::maybe_time(c.last_used_at)) }
                        td { (layout::time(c.created_at)) }
                    }
                }
            }
        } }
        (layout::next_page(&layout::query("/ops/clients", &[("status", status.as_deref())]), next.as_deref()))
        @if console.may("POST", "/ops/clients") {
            section.card aria-labelledby="new-client" {
                h2 #new-client { "New client" }
                form.row method="post" action="/ops/clients" {
                    (layout::csrf(&console))
                    label { "Name" input type="text" name="name" required maxlength="200"; }
                    button type="submit" { "Create client" }
                }
            }
        }
    };
    Ok(layout::shell(&console, Section::Clients, "Clients and keys", content).into_response())
}

fn status_badge(status: &str) -> Markup {
    layout::badge(status, if status == "active" { Tone::Ok } else { Tone::Out })
}

/// `GET /ops/clients/{id}`.
pub async fn detail(
    State(st): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", &id)?;
    let d = clients::show_client(&st.db.primary, id).await?;
    let f = crate::ops::funding::show(&st.db.primary, id).await?;
    Ok(detail_page(&console, &d, &f, None).into_response())
}

/// A new key's secret, shown on the page that made it and nowhere else.
struct ShownOnce {
    key_id: String,
    secret: String,
}

fn detail_page(console: &Console, d: &ClientDetail, f: &Funding, shown: Option<ShownOnce>) -> Response {
    let c = &d.client;
    let base = format!("/ops/clients/{}", c.id);
    let content = html! {
        @if let Some(s) = &shown {
            div.secret role="status" {
                p { strong { "New API key " code { (s.key_id) } } " — copy it now; it is not shown again:" }
                p { code #new-key { (s.secret) } }
            }
        }
        section.card {
            dl.facts {
                dt { "Id" } dd { code { (c.id) } }
                dt { "Region" } dd { (c.region) }
                dt { "Plan" } dd { (c.plan) }
                dt { "Status" } dd { (status_badge(&c.status)) }
                dt { "Requests per minute" } dd { (c.rate_limit_per_minute.map_or("the default".to_owned(), |n| n.to_string())) }
                dt { "Created" } dd { (layout::time(c.created_at)) }
            }
            p {
                @if c.status == "active" {
                    (suspend_form(console, &base))
                } @else {
                    (layout::button(console, "/ops/clients/{id}/resume", &format!("{base}/resume"), "Resume client", "secondary"))
                }
                a href={ "/ops/cards?by=client&q=" (c.id) } { "This client's allocations" }
            }
            @if console.may("POST", "/ops/clients/{id}/rate-limit") {
                form.row method="post" action={ (base) "/rate-limit" } {
                    (layout::csrf(console))
                    label { "Requests per minute" span.hint { "empty: the default" }
                        input type="number" name="per_minute" min="1" value=[c.rate_limit_per_minute];
                    }
                    button.secondary type="submit" { "Set limit" }
                }
            }
        }
        (funding::section(console, f))
        h2 { "API keys" }
        (keys_table(console, d))
        @if console.may("POST", "/ops/clients/{id}/keys") {
            section.card aria-labelledby="issue-key" {
                h2 #issue-key { "Issue a key" }
                form.row method="post" action={ (base) "/keys" } {
                    (layout::csrf(console))
                    label { "Label" span.hint { "optional" } input type="text" name="label" maxlength="200"; }
                    button type="submit" { "Issue key" }
                }
            }
        }
    };
    let mut resp = layout::shell(console, Section::Clients, &c.name, content).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn suspend_form(console: &Console, base: &str) -> Markup {
    html! {
        @if console.may("POST", "/ops/clients/{id}/suspend") {
            form.inline method="post" action={ (base) "/suspend" }
                data-confirm="Suspend this client? Its keys are refused until it is resumed." {
                (layout::csrf(console))
                button.danger type="submit" { "Suspend client" }
            }
        }
    }
}

fn keys_table(console: &Console, d: &ClientDetail) -> Markup {
    let may_revoke = console.may("POST", "/ops/keys/{key_id}/revoke");
    let may_rotate = console.may("POST", "/ops/keys/{key_id}/rotate");
    html! {
        div.table-wrap { table #keys {
            thead { tr {
                th scope="col" { "Key id" }
                th scope="col" { "Label" }
                th scope="col" { "State" }
                th scope="col" { "Created" }
                th scope="col" { "Last used" }
                th scope="col" { "Expires" }
                @if may_revoke || may_rotate { th scope="col" { "Actions" } }
            } }
            tbody {
                @if d.keys.is_empty() { tr { td colspan="7" { "No keys." } } }
                @for k in &d.keys {
                    tr {
                        td { code { (k.key_id) } }
                        td { (k.label.as_deref().unwrap_or("—")) }
                        td { (k.state) }
                        td { (layout::time(k.created_at)) }
                        td { (layout::maybe_time(k.last_used_at)) }
                        td { (layout::maybe_time(k.expires_at)) }
                        @if may_revoke || may_rotate {
                            td {
                                @if k.state == "live" && may_rotate {
                                    form.inline method="post" action={ "/ops/keys/" (k.key_id) "/rotate" } {
                                        (layout::csrf(console))
                                        label { span.hint { "old key works for (hours)" }
                                            input type="number" name="overlap_hours" min="0" max="720" value="24";
                                        }
                                        button.secondary type="submit" { "Rotate" }
                                    }
                                }
                                @if k.revoked_at.is_none() && may_revoke {
                                    form.inline method="post" action={ "/ops/keys/" (k.key_id) "/revoke" }
                                        data-confirm="Revoke this key? Requests with it are refused from now on." {
                                        (layout::csrf(console))
                                        button.danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        } }
    }
}

/// The new client form.
#[derive(Deserialize)]
pub struct NewClientForm {
    name: String,
}

/// `POST /ops/clients`: create, then open it.
pub async fn create(
    State(st): State<AppState>,
    console: Console,
    FormOf(f): FormOf<NewClientForm>,
) -> Result<Response, ConsoleError> {
    match clients::create_client(&st.db.primary, &console.actor, &f.name, &st.config.region, None).await {
        Ok(id) => {
            let text = format!("Client {} created; issue it a key below.", f.name.trim());
            console.redirect(&st, Notice::done(text), &format!("/ops/clients/{id}")).await
        }
        Err(e) => console.finish(&st, Err(e), "/ops/clients").await,
    }
}

async fn set_active(st: &AppState, console: &Console, id: &str, active: bool) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", id)?;
    let outcome = clients::set_client_active(&st.db.primary, &console.actor, id, active).await.map(|changed| {
        match (changed, active) {
            (true, true) => "The client is active again.".to_owned(),
            (true, false) => "The client is suspended: its keys are refused.".to_owned(),
            (false, _) => "Nothing changed: the client was already so.".to_owned(),
        }
    });
    console.finish(st, outcome, &format!("/ops/clients/{id}")).await
}

/// `POST /ops/clients/{id}/suspend`.
pub async fn suspend(
    State(st): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    set_active(&st, &console, &id, false).await
}

/// `POST /ops/clients/{id}/resume`.
pub async fn resume(
    State(st): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    set_active(&st, &console, &id, true).await
}

/// The rate limit form.
#[derive(Deserialize)]
pub struct RateLimitForm {
    per_minute: String,
}

/// `POST /ops/clients/{id}/rate-limit`.
pub async fn rate_limit(
    State(st): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    FormOf(f): FormOf<RateLimitForm>,
) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", &id)?;
    let outcome = async {
        let per_minute = match f.per_minute.trim() {
            "" => None,
            n => Some(n.parse::<u32>().map_err(|_| {
                ApiError::validation("requests per minute", "must be a whole number of at least 1, or empty")
            })?),
        };
        clients::set_client_rate_limit(&st.db.primary, &console.actor, id, per_minute).await?;
        Ok(per_minute.map_or("The client now has the default rate limit.".to_owned(), |n| {
            format!("The client may now make {n} requests per minute.")
        }))
    }
    .await;
    console.finish(&st, outcome, &format!("/ops/clients/{id}")).await
}

/// The issue key form.
#[derive(Deserialize)]
pub struct IssueKeyForm {
    label: Option<String>,
}

/// `POST /ops/clients/{id}/keys`: the client's page, with the new key shown once.
pub async fn issue_key(
    State(st): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    FormOf(f): FormOf<IssueKeyForm>,
) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", &id)?;
    let label = f.label.as_deref().map(str::trim).filter(|l| !l.is_empty());
    match clients::issue_key(&st.db.primary, &console.actor, id, label).await {
        Ok(key) => shown_once(&st, &console, id, key.key_id().to_owned(), key.expose()).await,
        Err(e) => console.finish(&st, Err(e), &format!("/ops/clients/{id}")).await,
    }
}

async fn shown_once(
    st: &AppState,
    console: &Console,
    client: Uuid,
    key_id: String,
    secret: String,
) -> Result<Response, ConsoleError> {
    let d = clients::show_client(&st.db.primary, client).await?;
    let f = crate::ops::funding::show(&st.db.primary, client).await?;
    Ok(detail_page(console, &d, &f, Some(ShownOnce { key_id, secret })))
}

async fn client_of_key(st: &AppState, key_id: &str) -> Result<Uuid, AppError> {
    let client: Option<Uuid> = sqlx::query_scalar("SELECT client_id FROM api_keys WHERE key_id = $1")
        .bind(key_id)
        .fetch_optional(&st.db.primary)
        .await?;
    client.ok_or_else(|| AppError::api(allot_shared::ErrorCode::NotFound, format!("no key {key_id}")))
}

/// `POST /ops/keys/{key_id}/revoke`.
pub async fn revoke_key(
    State(st): State<AppState>,
    console: Console,
    Path(key_id): Path<String>,
) -> Result<Response, ConsoleError> {
    let client = client_of_key(&st, &key_id).await?;
    let outcome = clients::revoke_key(&st.db.primary, &console.actor, &key_id)
        .await
        .map(|()| format!("Key {key_id} is revoked."));
    console.finish(&st, outcome, &format!("/ops/clients/{client}")).await
}

/// The rotate form.
#[derive(Deserialize)]
pub struct RotateForm {
    overlap_hours: String,
}

/// `POST /ops/keys/{key_id}/rotate`: the client's page, with the new key shown once.
pub async fn rotate_key(
    State(st): State<AppState>,
    console: Console,
    Path(key_id): Path<String>,
    FormOf(f): FormOf<RotateForm>,
) -> Result<Response, ConsoleError> {
    let client = client_of_key(&st, &key_id).await?;
    let hours = f
        .overlap_hours
        .trim()
        .parse::<u64>()
        .map_err(|_| ApiError::validation("hours", "must be a whole number of hours, 0 to 720"));
    let rotated = match hours {
        Ok(h) => clients::rotate_key(&st.db.primary, &console.actor, &key_id, RotationEnd::OverlapSecs(h * 3600)).await,
        Err(e) => Err(e.into()),
    };
    match rotated {
        Ok(r) => shown_once(&st, &console, r.client_id, r.key.key_id().to_owned(), r.key.expose()).await,
        Err(e) => console.finish(&st, Err(e), &format!("/ops/clients/{client}")).await,
    }
}
