//! Outages of a dependency (Postgres, Valkey) logged once, not once per request.
//!
//! During an outage every request fails the same way; a log line each would bury the one that
//! matters. The first failure logs one WARN (with its error); later failures are only counted;
//! when no failure has been seen for [`QUIET`], one INFO line reports how long it lasted and how
//! many failures it caused. The failures are counted in `allot_dependency_failures_total` too.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How long without a failure before an outage counts as over.
pub const QUIET: Duration = Duration::from_secs(3);

/// Postgres, as the request path sees it.
pub static POSTGRES: Outage = Outage::new("postgres");
/// Valkey, as the request path sees it (the cache and the request guard).
pub static VALKEY: Outage = Outage::new("valkey");

struct Ongoing {
    started: Instant,
    last_failure: Instant,
    failures: u64,
}

/// One dependency's outage state.
pub struct Outage {
    dependency: &'static str,
    ongoing: Mutex<Option<Ongoing>>,
}

impl Outage {
    const fn new(dependency: &'static str) -> Self {
        Self { dependency, ongoing: Mutex::new(None) }
    }

    /// Record a failure of this dependency seen by `context` (what was being done).
    pub fn failed(&self, context: &'static str, error: &dyn std::fmt::Display) {
        metrics::counter!("allot_dependency_failures_total", "dependency" => self.dependency).increment(1);
        let now = Instant::now();
        let mut ongoing = self.ongoing.lock().unwrap_or_else(|p| p.into_inner());
        match ongoing.as_mut() {
            Some(o) => {
                o.failures += 1;
                o.last_failure = now;
            }
            None => {
                *ongoing = Some(Ongoing { started: now, last_failure: now, failures: 1 });
                tracing::warn!(
                    dependency = self.dependency,
                    context,
                    error = %error,
                    "dependency unavailable; further failures are counted until it recovers"
                );
            }
        }
    }

    /// Close the outage if it has been quiet for `quiet`; returns the failures it counted.
    pub fn close_if_quiet(&self, quiet: Duration) -> Option<u64> {
        let mut ongoing = self.ongoing.lock().unwrap_or_else(|p| p.into_inner());
        let o = ongoing.as_ref()?;
        if o.last_failure.elapsed() < quiet {
            return None;
        }
        let failures = o.failures;
        tracing::info!(
            dependency = self.dependency,
            failures,
            duration_ms = (o.last_failure - o.started).as_millis() as u64,
            "dependency recovered"
        );
        *ongoing = None;
        Some(failures)
    }

    /// Whether an outage is ongoing.
    pub fn is_ongoing(&self) -> bool {
        self.ongoing.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// Close quiet outages once a second until `shutdown`.
pub fn spawn_watch(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    POSTGRES.close_if_quiet(QUIET);
                    VALKEY.close_if_quiet(QUIET);
                }
            }
        }
        POSTGRES.close_if_quiet(Duration::ZERO);
        VALKEY.close_if_quiet(Duration::ZERO);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_opens_once_counts_and_closes_when_quiet() {
        let o = Outage::new("test");
        assert!(!o.is_ongoing());
        for _ in 0..5 {
            o.failed("testing", &"boom");
        }
        assert!(o.is_ongoing());
        assert_eq!(o.close_if_quiet(Duration::from_secs(60)), None, "not quiet yet");
        assert_eq!(o.close_if_quiet(Duration::ZERO), Some(5));
        assert!(!o.is_ongoing());
        o.failed("testing", &"again");
        assert_eq!(o.close_if_quiet(Duration::ZERO), Some(1), "a new outage counts from one");
    }
}
