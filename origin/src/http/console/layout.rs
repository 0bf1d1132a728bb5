//! The console's page shell and the small pieces every page uses (forms with their CSRF token,
//! times, notices). Markup is escaped by the template engine; nothing here builds HTML by hand.

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};
use time::OffsetDateTime;
use time::macros::format_description;

use super::Console;
use super::assets;
use super::session::Notice;

/// The console's sections, in the navigation's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Stock per bucket.
    Stock,
    /// Imports.
    Imports,
    /// Cards and allocations.
    Cards,
    /// Clients and keys.
    Clients,
    /// Jobs and divergences.
    Jobs,
    /// The audit log.
    Audit,
}

impl Section {
    const ALL: [Section; 6] =
        [Section::Stock, Section::Imports, Section::Cards, Section::Clients, Section::Jobs, Section::Audit];

    fn label(self) -> &'static str {
        match self {
            Section::Stock => "Stock",
            Section::Imports => "Imports",
            Section::Cards => "Cards and allocations",
            Section::Clients => "Clients and keys",
            Section::Jobs => "Jobs",
            Section::Audit => "Audit log",
        }
    }

    fn href(self) -> &'static str {
        match self {
            Section::Stock => "/ops/stock",
            Section::Imports => "/ops/imports",
            Section::Cards => "/ops/cards",
            Section::Clients => "/ops/clients",
            Section::Jobs => "/ops/jobs",
            Section::Audit => "/ops/audit",
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · allot console" }
            link rel="icon" type="image/svg+xml" href=(assets::href("icon.svg"));
            link rel="stylesheet" href=(assets::href("console.css"));
            script src=(assets::href("console.js")) defer {}
        }
    }
}

/// A whole page: header with the navigation and who is signed in, the notice, the content.
pub fn shell(console: &Console, section: Section, title: &str, content: Markup) -> Markup {
    let op = &console.session.operator;
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-csrf=(console.session.csrf_token) {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "allot " span.region { (console.region) } }
                    nav aria-label="Sections" {
                        ul {
                            @for s in Section::ALL {
                                li {
                                    @if s == section {
                                        a href=(s.href()) aria-current="page" { (s.label()) }
                                    } @else {
                                        a href=(s.href()) { (s.label()) }
                                    }
                                }
                            }
                        }
                    }
                    form.whoami method="post" action="/ops/sign-out" {
                        (csrf(console))
                        span { (op.name) " " span.role { (op.role.as_str()) } }
                        button type="submit" { "Sign out" }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (notice(console.session.notice.as_ref()))
                    (content)
                }
            }
        }
    }
}

/// A page for someone not signed in (sign-in, errors before a session).
pub fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main #main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// The page of a failure: what went wrong, in words, and where to go.
pub fn error_page(status: StatusCode, message: &str) -> Markup {
    let title = match status.as_u16() {
        401 => "Please sign in",
        403 => "Not allowed",
        404 => "Not found",
        400..=499 => "That did not work",
        _ => "Something went wrong",
    };
    bare(
        title,
        html! {
            p.notice.error role="alert" { (message) }
            p { a href="/ops/stock" { "Back to the console" } }
        },
    )
}

/// The hidden field every form carries.
pub fn csrf(console: &Console) -> Markup {
    html! { input type="hidden" name="csrf" value=(console.session.csrf_token); }
}

/// The notice a form left, if any: a status for success, an alert for failure.
pub fn notice(notice: Option<&Notice>) -> Markup {
    html! {
        @if let Some(n) = notice {
            @if n.error {
                p.notice.error role="alert" { (n.text) }
            } @else {
                p.notice.done role="status" { (n.text) }
            }
        }
    }
}

/// A one-button form posting to `action`, shown only to operators whose role may use it.
pub fn button(console: &Console, route: &str, action: &str, label: &str, class: &str) -> Markup {
    html! {
        @if console.may("POST", route) {
            form.inline method="post" action=(action) {
                (csrf(console))
                button type="submit" class=(class) { (label) }
            }
        }
    }
}

/// How a state badge reads: fine, needs a look, or wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Green.
    Ok,
    /// Amber.
    Low,
    /// Red.
    Out,
}

/// A state as a coloured badge (the colour comes from the stylesheet's class).
pub fn badge(text: &str, tone: Tone) -> Markup {
    let class = match tone {
        Tone::Ok => "state state-ok",
        Tone::Low => "state state-low",
        Tone::Out => "state state-out",
    };
    html! { span class=(class) { (text) } }
}

/// A time as people read it (UTC, to the second), machine-readable in `datetime`.
pub fn time(t: OffsetDateTime) -> Markup {
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    let utc = t.to_offset(time::UtcOffset::UTC);
    let shown = utc.format(&fmt).unwrap_or_default();
    let machine = utc.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    html! { time datetime=(machine) { (shown) } }
}

/// An optional time, or a dash.
pub fn maybe_time(t: Option<OffsetDateTime>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.none { "—" } },
    }
}

/// A link to the next page of a listing, when there is one; `base` already carries the filters.
pub fn next_page(base: &str, next_cursor: Option<&str>) -> Markup {
    html! {
        @if let Some(c) = next_cursor {
            @let sep = if base.contains('?') { "&" } else { "?" };
            @let cursor: String = form_urlencoded::byte_serialize(c.as_bytes()).collect();
            p.pager { a rel="next" href={ (base) (sep) "cursor=" (cursor) } { "Next page →" } }
        }
    }
}

/// A query string of the non-empty `pairs`, percent-encoded (for links that keep filters).
pub fn query(path: &str, pairs: &[(&str, Option<&str>)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            s.append_pair(k, v);
        }
    }
    let q = s.finish();
    if q.is_empty() { path.to_owned() } else { format!("{path}?{q}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        let page = error_page(StatusCode::BAD_REQUEST, "<script>alert(1)</script>").into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
    }

    #[test]
    fn links_keep_only_the_filters_that_are_set() {
        assert_eq!(
            query("/ops/audit", &[("actor", Some("a b")), ("action", None), ("x", Some(""))]),
            "/ops/audit?actor=a+b"
        );
        assert_eq!(query("/ops/audit", &[]), "/ops/audit");
    }

    #[test]
    fn times_are_shown_in_utc() {
        let t = time::macros::datetime!(2026-11-27 18:05:09 +01:00);
        let m = time(t).into_string();
        assert!(m.contains("2026-11-27 17:05:09 UTC"), "{m}");
        assert!(m.contains("datetime=\"2026-11-27T17:05:09Z\""), "{m}");
    }
}
