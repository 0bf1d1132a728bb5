//! The Stock page: every bucket's state, Postgres beside the cache, and allocations per hour.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Section, Tone};
use super::{Console, ConsoleError, FormOf, chart};
use crate::http::AppState;
use crate::ops::stock::{self, BucketStock, HourlyAllocations, StockFilter, StockState};

/// `GET /ops/stock`.
pub async fn page(State(st): State<AppState>, console: Console) -> Result<Response, ConsoleError> {
    let pool = &st.db.primary;
    let buckets = stock::list(pool, st.engine.cache(), st.config.stock_low_threshold, &StockFilter::default()).await?;
    let hourly = stock::allocations_by_hour(pool).await?;
    let mut total = [0i64; 24];
    for b in &hourly {
        for (t, n) in total.iter_mut().zip(b.by_hour) {
            *t += n;
        }
    }
    let first_hour = (time::OffsetDateTime::now_utc().hour() + 1) % 24;
    let content = html! {
        section.card aria-labelledby="chart-title" {
            h2 #chart-title { "Allocations per hour, last 24 hours (UTC)" }
            (chart::hourly(&total, first_hour))
        }
        h2 { "Buckets" }
        p.muted {
            "Active cards in Postgres (the truth) beside the members of the cache's set. "
            "A bucket is low at or below its threshold and out at zero."
        }
        (table(&console, &buckets, &hourly))
    };
    Ok(layout::shell(&console, Section::Stock, "Stock", content).into_response())
}

fn table(console: &Console, buckets: &[BucketStock], hourly: &[HourlyAllocations]) -> Markup {
    let may_set = console.may("POST", "/ops/stock/threshold");
    html! {
        div.table-wrap {
            table #stock {
                caption.muted hidden { "Stock per product and denomination" }
                thead { tr {
                    th scope="col" { "Product" }
                    th scope="col" { "Denomination" }
                    th scope="col" { "State" }
                    th.num scope="col" title="active cards in Postgres, the truth" { "Postgres" }
                    th.num scope="col" title="members of the cache's set" { "Cache" }
                    th.num scope="col" title="cards allocated in the last hour" { "1 h" }
                    th.num scope="col" title="cards allocated in the last 24 hours" { "24 h" }
                    th scope="col" { "Per hour" }
                    th.num scope="col" title="days until the active cards run out at the last day's rate" { "Cover (days)" }
                    th scope="col" { "Low at" }
                } }
                tbody {
                    @if buckets.is_empty() {
                        tr { td colspan="10" { "No products yet. Create one with " code { "allot product upsert" } "." } }
                    }
                    @for b in buckets {
                        @let by_hour = hourly.iter()
                            .find(|h| h.product_id == b.product_id && h.denomination_minor == b.denomination_minor)
                            .map(|h| h.by_hour).unwrap_or([0; 24]);
                        tr data-bucket={ (b.product_id) "|" (b.denomination) } {
                            th scope="row" { (b.product_id) }
                            td { (b.denomination) " " (b.currency) }
                            td { (layout::badge(b.state.as_str(), tone(b.state))) }
                            td.num { (b.active) }
                            td.num { (cache_cell(b)) }
                            td.num { (b.allocated_1h) }
                            td.num { (b.allocated_24h) }
                            td { (chart::sparkline(&by_hour)) }
                            td.num {
                                @match b.days_of_cover {
                                    Some(d) => (format!("{d:.1}")),
                                    None => span.none { "—" },
                                }
                            }
                            td { (threshold_cell(console, b, may_set)) }
                        }
                    }
                }
            }
        }
    }
}

fn tone(state: StockState) -> Tone {
    match state {
        StockState::Ok => Tone::Ok,
        StockState::Low => Tone::Low,
        StockState::Out => Tone::Out,
    }
}

fn cache_cell(b: &BucketStock) -> Markup {
    html! {
        @match b.cached {
            Some(n) if n == b.active => (n),
            Some(n) => span.differs title="differs from Postgres; the reconciler heals it" { (n) " ≠" },
            None => span.none title="the cache's set is cold, or the cache did not answer" { "cold" },
        }
    }
}

fn threshold_cell(console: &Console, b: &BucketStock, may_set: bool) -> Markup {
    let source = match b.threshold_source {
        stock::ThresholdSource::Bucket => "set for this bucket",
        stock::ThresholdSource::Default => "the default",
    };
    html! {
        @if may_set {
            form.compact method="post" action="/ops/stock/threshold" {
                (layout::csrf(console))
                input type="hidden" name="product_id" value=(b.product_id);
                input type="hidden" name="denomination" value=(b.denomination);
                input type="number" name="threshold" min="0" value=(b.low_stock_threshold)
                    aria-label={ "Low-stock threshold of " (b.product_id) " " (b.denomination) };
                button.secondary type="submit" { "Save" }
                br;
                span.hint { (source) }
            }
        } @else {
            (b.low_stock_threshold) " " span.hint { "(" (source) ")" }
        }
    }
}

/// The threshold form.
#[derive(Deserialize)]
pub struct ThresholdForm {
    product_id: String,
    denomination: String,
    /// Empty: back to the default.
    threshold: String,
}

/// `POST /ops/stock/threshold`.
pub async fn set_threshold(
    State(st): State<AppState>,
    console: Console,
    FormOf(f): FormOf<ThresholdForm>,
) -> Result<Response, ConsoleError> {
    let outcome = async {
        let threshold = match f.threshold.trim() {
            "" => None,
            t => Some(t.parse::<i64>().map_err(|_| {
                allot_shared::ApiError::validation("threshold", "must be a whole number of cards, or empty")
            })?),
        };
        let minor = stock::resolve_bucket(&st.db.primary, &f.product_id, &f.denomination).await?;
        stock::set_threshold(&st.db.primary, &console.actor, &f.product_id, minor, threshold).await?;
        let to = threshold.map_or("the default".to_owned(), |t| format!("{t} cards"));
        Ok(format!("The low-stock threshold of {} {} is now {to}", f.product_id, f.denomination))
    }
    .await;
    console.finish(&st, outcome, "/ops/stock").await
}
