//! Bar charts drawn on the server as SVG: no script, no styles inline (colours come from the
//! stylesheet's classes), and a text alternative for screen readers.

use maud::{Markup, html};

/// Width and height of the 24-hour chart's drawing, in SVG units.
const W: i64 = 720;
const H: i64 = 180;
/// Room for the axis labels.
const LEFT: i64 = 44;
const BOTTOM: i64 = 22;
const TOP: i64 = 8;

/// Allocations per hour over 24 hours: `counts[0]` is the hour starting `first_hour` (0-23,
/// UTC), the last is the current hour.
pub fn hourly(counts: &[i64; 24], first_hour: u8) -> Markup {
    let peak = counts.iter().copied().max().unwrap_or(0).max(0);
    let total: i64 = counts.iter().sum();
    let scale = nice_ceiling(peak);
    let plot_h = H - BOTTOM - TOP;
    let slot = (W - LEFT) / 24;
    let label = format!("Cards allocated per hour over the last 24 hours: {total} in all, at most {peak} in one hour.");
    html! {
        svg.chart viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(label) {
            title { (label) }
            line.axis x1=(LEFT) y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) {}
            line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(H - BOTTOM) {}
            text x=(LEFT - 6) y=(TOP + 10) text-anchor="end" { (scale) }
            text x=(LEFT - 6) y=(H - BOTTOM) text-anchor="end" { "0" }
            @for (i, &n) in counts.iter().enumerate() {
                @let i = i as i64;
                @let h = if scale == 0 { 0 } else { n.max(0) * plot_h / scale };
                @let x = LEFT + i * slot + 2;
                rect.bar x=(x) y=(H - BOTTOM - h) width=(slot - 4) height=(h) {
                    title { (format!("{:02}:00 UTC: {n}", (i64::from(first_hour) + i) % 24)) }
                }
                @if i % 6 == 0 || i == 23 {
                    text x=(x + (slot - 4) / 2) y=(H - 6) text-anchor="middle" {
                        (format!("{:02}h", (i64::from(first_hour) + i) % 24))
                    }
                }
            }
        }
    }
}

/// A small bar chart of the same 24 hours for one row of a table.
pub fn sparkline(counts: &[i64; 24]) -> Markup {
    let peak = counts.iter().copied().max().unwrap_or(0).max(0);
    let total: i64 = counts.iter().sum();
    let label = format!("{total} allocated in 24 hours; peak {peak} an hour");
    html! {
        svg.spark viewBox="0 0 120 28" role="img" aria-label=(label) {
            @for (i, &n) in counts.iter().enumerate() {
                @let h = if peak == 0 { 0 } else { (n.max(0) * 26 / peak).max(i64::from(n > 0)) };
                rect.bar x=(i * 5) y=(27 - h) width="4" height=(h) {}
            }
        }
    }
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `n` (an axis's top), 0 for 0.
pub fn nice_ceiling(n: i64) -> i64 {
    if n <= 0 {
        return 0;
    }
    let mut base = 1i64;
    loop {
        for m in [1, 2, 5] {
            if m * base >= n {
                return m * base;
            }
        }
        base = base.saturating_mul(10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_top_is_a_round_number_at_or_above_the_peak() {
        assert_eq!(nice_ceiling(0), 0);
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(120), 200);
        assert_eq!(nice_ceiling(500), 500);
    }

    #[test]
    fn a_chart_has_24_bars_and_says_what_it_shows() {
        let mut counts = [0i64; 24];
        counts[23] = 40;
        counts[0] = 10;
        let svg = hourly(&counts, 19).into_string();
        assert_eq!(svg.matches("<rect").count(), 24);
        assert!(svg.contains("50 in all, at most 40 in one hour"), "{svg}");
        assert!(svg.contains("19:00 UTC: 10") && svg.contains("18:00 UTC: 40"), "{svg}");
        assert!(!svg.contains("style="), "no inline styles under the CSP");
        // The tallest bar fills the plot up to the axis top (50 → 40 of 50).
        assert!(svg.contains(&format!("height=\"{}\"", 40 * (H - BOTTOM - TOP) / 50)), "{svg}");
    }

    #[test]
    fn an_empty_day_draws_flat_bars() {
        let svg = sparkline(&[0; 24]).into_string();
        assert_eq!(svg.matches("height=\"0\"").count(), 24);
    }
}
