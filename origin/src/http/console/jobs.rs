//! The Jobs page: each job's schedule and last runs, pause, resume and run now, and the
//! reconciler's divergences between Postgres and the cache.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::layout::{self, Section, Tone};
use super::{Console, ConsoleError};
use crate::http::AppState;
use crate::http::ops::jobs::{job_context, registry};
use crate::ops::jobs::{self as job_ops, Divergence, JobRun, JobStatus};
use crate::ops::page::Page;

/// `GET /ops/jobs`.
pub async fn page(State(st): State<AppState>, console: Console) -> Result<Response, ConsoleError> {
    let jobs = job_ops::list(&st.db.primary, &registry(&st)).await?;
    let (divergences, _) = job_ops::divergences(&st.db.primary, None, Page::parse(None, Some(20))?).await?;
    let content = html! {
        div.table-wrap { table #jobs {
            thead { tr {
                th scope="col" { "Job" }
                th scope="col" { "Schedule" }
                th scope="col" { "Last run" }
                th scope="col" { "Recent runs" }
                th scope="col" { "Actions" }
            } }
            tbody {
                @for j in &jobs { (job_row(&console, j)) }
            }
        } }
        h2 { "Divergences" }
        p.muted { "Where the reconciler found the cache's set apart from Postgres, and whether it healed it." }
        (divergence_table(&divergences))
    };
    Ok(layout::shell(&console, Section::Jobs, "Jobs", content).into_response())
}

fn job_row(console: &Console, j: &JobStatus) -> Markup {
    let base = format!("/ops/jobs/{}", j.name);
    html! {
        tr data-job=(j.name) {
            th scope="row" { code { (j.name) } }
            td {
                "every " (seconds(j.interval_secs))
                @if !j.enabled { " " (layout::badge("paused", Tone::Low)) }
            }
            td {
                @match j.last_runs.first() {
                    Some(r) => { (run_summary(r)) },
                    None => span.none { "never" },
                }
            }
            td {
                @if j.last_runs.len() > 1 {
                    details {
                        summary { (j.last_runs.len()) " runs" }
                        ul { @for r in &j.last_runs { li { (run_summary(r)) } } }
                    }
                }
            }
            td {
                @if j.enabled {
                    (layout::button(console, "/ops/jobs/{name}/pause", &format!("{base}/pause"), "Pause", "secondary"))
                } @else {
                    (layout::button(console, "/ops/jobs/{name}/resume", &format!("{base}/resume"), "Resume", "secondary"))
                }
                (layout::button(console, "/ops/jobs/{name}/run", &format!("{base}/run"), "Run now", ""))
            }
        }
    }
}

fn run_summary(r: &JobRun) -> Markup {
    let tone = match r.outcome.as_str() {
        "succeeded" => Tone::Ok,
        "failed" => Tone::Out,
        _ => Tone::Low,
    };
    html! {
        (layout::badge(&r.outcome, tone)) " " (layout::time(r.started_at))
        @if r.slot.is_none() { " " span.hint { "(by hand)" } }
        @if let Some(e) = &r.error { br; span.hint { (e) } }
    }
}

fn divergence_table(rows: &[Divergence]) -> Markup {
    html! {
        div.table-wrap { table #divergences {
            thead { tr {
                th scope="col" { "When" }
                th scope="col" { "Product" }
                th.num scope="col" { "Denomination (minor)" }
                th.num scope="col" { "Postgres" }
                th.num scope="col" { "Cache" }
                th scope="col" { "Healed" }
            } }
            tbody {
                @if rows.is_empty() { tr { td colspan="6" { "None: the cache has matched Postgres." } } }
                @for d in rows {
                    tr {
                        td { (layout::time(d.at)) }
                        td { (d.product_id) }
                        td.num { (d.denomination_minor) }
                        td.num { (d.postgres_active) }
                        td.num { (d.cache_active.map_or("cold".to_owned(), |n| n.to_string())) }
                        td { (if d.healed { "yes" } else { "no" }) }
                    }
                }
            }
        } }
    }
}

fn seconds(s: u64) -> String {
    match s {
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// `POST /ops/jobs/{name}/pause`.
pub async fn pause(
    State(st): State<AppState>,
    console: Console,
    Path(name): Path<String>,
) -> Result<Response, ConsoleError> {
    let outcome = job_ops::pause(&st.db.primary, &console.actor, &registry(&st), &name).await;
    console
        .finish(
            &st,
            outcome.map(|()| format!("{name} is paused: no scheduled run starts until it is resumed.")),
            "/ops/jobs",
        )
        .await
}

/// `POST /ops/jobs/{name}/resume`.
pub async fn resume(
    State(st): State<AppState>,
    console: Console,
    Path(name): Path<String>,
) -> Result<Response, ConsoleError> {
    let outcome = job_ops::resume(&st.db.primary, &console.actor, &registry(&st), &name).await;
    console.finish(&st, outcome.map(|()| format!("{name} resumes from its next tick.")), "/ops/jobs").await
}

/// `POST /ops/jobs/{name}/run`.
pub async fn run(
    State(st): State<AppState>,
    console: Console,
    Path(name): Path<String>,
) -> Result<Response, ConsoleError> {
    let outcome = job_ops::run_in_background(&job_context(&st), &console.actor, &registry(&st), &name).await;
    console
        .finish(
            &st,
            outcome.map(|id| format!("{name} is running now (run {id}); reload to see how it ended.")),
            "/ops/jobs",
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::seconds;

    #[test]
    fn intervals_read_in_their_largest_whole_unit() {
        assert_eq!(seconds(15), "15 s");
        assert_eq!(seconds(60), "1 min");
        assert_eq!(seconds(7200), "2 h");
        assert_eq!(seconds(86_400), "1 d");
    }
}
