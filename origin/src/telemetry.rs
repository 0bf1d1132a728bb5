//! Logging: JSON lines by default, a human format on a terminal or with `ALLOT_LOG_FORMAT=text`;
//! levels from `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Install the global subscriber once; later calls are ignored.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let format = std::env::var("ALLOT_LOG_FORMAT").unwrap_or_default();
    let human = format == "text" || (format != "json" && std::io::stdout().is_terminal());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    let _ = if human {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    };
}
