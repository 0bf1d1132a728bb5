//! The Imports page: upload a CSV (the script streams it and follows its progress), recent
//! imports, and one import's error report, with a void of its cards.

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::layout::{self, Section, Tone};
use super::{Console, ConsoleError, FormOf};
use crate::error::AppError;
use crate::http::AppState;
use crate::http::ops::imports::{content_length, import_context};
use crate::http::ops::operators::parse_uuid;
use crate::ops::imports::{self, Import, ImportTarget};
use crate::ops::stock::{self, StockFilter};
use crate::ops::voids::{self, VoidRequest, VoidSelector};

/// `GET /ops/imports`'s query.
#[derive(Deserialize)]
pub struct ListQuery {
    cursor: Option<String>,
}

/// `GET /ops/imports`.
pub async fn page(
    State(st): State<AppState>,
    console: Console,
    Query(q): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let pool = &st.db.primary;
    let (items, next) = imports::list(pool, q.cursor.as_deref(), Some(25)).await?;
    let upload = match console.may("POST", "/ops/imports/upload") {
        true => Some(upload_form(&st, &console).await?),
        false => None,
    };
    let content = html! {
        @if let Some(form) = upload {
            (form)
        }
        h2 { "Recent imports" }
        (listing(&items))
        (layout::next_page("/ops/imports", next.as_deref()))
    };
    Ok(layout::shell(&console, Section::Imports, "Imports", content).into_response())
}

async fn upload_form(st: &AppState, console: &Console) -> Result<Markup, AppError> {
    let buckets = stock::list(&st.db.primary, None, st.config.stock_low_threshold, &StockFilter::default()).await?;
    Ok(html! {
        section.card aria-labelledby="upload-title" {
            h2 #upload-title { "Upload cards" }
            p.muted {
                "A CSV file with a header line naming its columns: " code { "code" } " (required), "
                code { "pin" } ", " code { "expires_at" } " (RFC 3339). All or nothing: a file with any "
                "problem imports no card, and its report lists the problems by line."
            }
            form #import-form.row method="post" action="/ops/imports/upload" {
                (layout::csrf(console))
                label {
                    "Product and denomination"
                    select name="bucket" required {
                        @for b in &buckets {
                            option value={ (b.product_id) "|" (b.denomination) } {
                                (b.product_id) " · " (b.denomination) " " (b.currency)
                            }
                        }
                    }
                }
                label {
                    "CSV file"
                    input type="file" name="file" accept=".csv,text/csv" required;
                }
                button type="submit" { "Upload" }
            }
            div #import-panel hidden {
                label for="import-progress" { "Progress" }
                progress #import-progress max="100" value="0" {}
                p #import-status.progress-text role="status" aria-live="polite" {}
                div #import-report hidden {}
            }
        }
    })
}

fn listing(items: &[Import]) -> Markup {
    html! {
        div.table-wrap {
            table #imports {
                thead { tr {
                    th scope="col" { "Started" }
                    th scope="col" { "Bucket" }
                    th scope="col" { "State" }
                    th.num scope="col" { "Lines" }
                    th.num scope="col" { "Accepted" }
                    th.num scope="col" { "Rejected" }
                    th scope="col" { "By" }
                } }
                tbody {
                    @if items.is_empty() {
                        tr { td colspan="7" { "No imports yet." } }
                    }
                    @for i in items {
                        tr {
                            td { a href={ "/ops/imports/" (i.id) } { (layout::time(i.created_at)) } }
                            td { (i.product_id) " · " (i.denomination) }
                            td { (state_badge(&i.state)) }
                            td.num { (i.lines_read) }
                            td.num { (i.accepted) }
                            td.num { (i.rejected) }
                            td { code { (i.created_by) } }
                        }
                    }
                }
            }
        }
    }
}

fn state_badge(state: &str) -> Markup {
    let tone = match state {
        "committed" => Tone::Ok,
        "rejected" | "failed" => Tone::Out,
        _ => Tone::Low,
    };
    layout::badge(state, tone)
}

/// `GET /ops/imports/{id}`: one import, its error report, and a void of its cards.
pub async fn detail(
    State(st): State<AppState>,
    console: Console,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", &id)?;
    let import = imports::get(&st.db.primary, id).await?;
    let problems = import.problems.as_array().cloned().unwrap_or_default();
    let content = html! {
        section.card {
            dl.facts {
                dt { "Id" } dd { code { (import.id) } }
                dt { "Bucket" } dd { (import.product_id) " · " (import.denomination) }
                dt { "State" } dd { (state_badge(&import.state)) }
                dt { "Lines read" } dd { (import.lines_read) " (the header included)" }
                dt { "Accepted" } dd { (import.accepted) }
                dt { "Rejected" } dd { (import.rejected) }
                dt { "Bytes" } dd { (import.bytes_read) }
                dt { "Started" } dd { (layout::time(import.created_at)) " by " code { (import.created_by) } }
                dt { "Finished" } dd { (layout::maybe_time(import.finished_at)) }
            }
        }
        h2 { "Error report" }
        @if problems.is_empty() {
            p { "No problems." }
        } @else {
            p.muted { "The first " (problems.len()) " problems, by line." }
            div.table-wrap { table #problems {
                thead { tr { th scope="col" { "Line" } th scope="col" { "Problem" } } }
                tbody {
                    @for p in &problems {
                        tr {
                            td.num { (p.get("line").and_then(|l| l.as_u64()).map_or("—".to_owned(), |l| l.to_string())) }
                            td { (p.get("problem").and_then(|v| v.as_str()).unwrap_or("")) }
                        }
                    }
                }
            } }
        }
        @if import.state == "committed" && console.may("POST", "/ops/imports/{id}/void") {
            (void_form(&console, &import))
        }
    };
    let title = format!("Import of {} · {}", import.product_id, import.denomination);
    Ok(layout::shell(&console, Section::Imports, &title, content).into_response())
}

fn void_form(console: &Console, import: &Import) -> Markup {
    html! {
        section.card aria-labelledby="void-title" {
            h2 #void-title { "Void this import's cards" }
            form.stack method="post" action={ "/ops/imports/" (import.id) "/void" }
                data-confirm="Void the cards of this import? Voided cards are never allocated again." {
                (layout::csrf(console))
                label { "Reason" input type="text" name="reason" required maxlength="500"; }
                label.check { input type="checkbox" name="include_allocated" value="true"; "Also void cards already allocated" }
                button.danger type="submit" { "Void cards" }
            }
        }
    }
}

/// The import void form.
#[derive(Deserialize)]
pub struct ImportVoidForm {
    reason: String,
    include_allocated: Option<String>,
}

/// `POST /ops/imports/{id}/void`.
pub async fn void(
    State(st): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    FormOf(f): FormOf<ImportVoidForm>,
) -> Result<Response, ConsoleError> {
    let id = parse_uuid("id", &id)?;
    let req = VoidRequest {
        selector: VoidSelector::Import(id),
        reason: f.reason,
        include_allocated: f.include_allocated.is_some(),
    };
    let outcome = voids::void_cards(&st.db.primary, st.engine.cache(), &console.actor, &req).await;
    console.finish(&st, outcome.map(|o| super::cards::void_summary(&o)), &format!("/ops/imports/{id}")).await
}

/// `GET /ops/imports/{id}/progress`: the import as JSON, for the script's progress bar.
pub async fn progress(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let id = parse_uuid("id", &id)?;
    Ok(Json(imports::get(&st.db.primary, id).await?).into_response())
}

/// `POST /ops/imports/upload`'s query: the bucket, and the id the script polls.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    product_id: String,
    denomination: String,
    id: String,
}

/// `POST /ops/imports/upload`: the body is the file, streamed into the same import as the API's;
/// `201` with the import, or the shared error (the script shows its message).
pub async fn upload(
    State(st): State<AppState>,
    console: Console,
    Query(q): Query<UploadQuery>,
    req: Request,
) -> Result<Response, AppError> {
    let id: Uuid = parse_uuid("id", &q.id)?;
    let expected_bytes = content_length(req.headers());
    let target = ImportTarget { product_id: q.product_id, denomination: q.denomination, id: Some(id), expected_bytes };
    let import =
        imports::import(import_context(&st), &console.actor, &target, req.into_body().into_data_stream()).await?;
    Ok((StatusCode::CREATED, Json(import)).into_response())
}
