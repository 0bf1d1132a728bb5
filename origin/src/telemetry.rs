//! Logs, traces and metrics.
//!
//! - Logs: JSON lines (with the current span's `request_id`, `trace_id` and `span_id`), or a
//!   human format on a terminal or with `ALLOT_LOG_FORMAT=text`; levels from `RUST_LOG`.
//! - Traces: OTLP over HTTP/protobuf, configured by the standard `OTEL_*` variables and off
//!   unless `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
//!   W3C trace context is continued from incoming requests and carried through the outbox.
//! - Metrics: a Prometheus recorder rendered at `/metrics` on the operator listener.
//!
//! Card codes, API keys and secrets are never span attributes, log fields or metric labels.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::OnceLock;

use allot_shared::trace::TraceParent;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes traces on drop (keep it alive until the process ends).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Export what is buffered and stop.
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: flushing traces: {e}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn otlp_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
        && std::env::var("OTEL_SDK_DISABLED").map(|v| v != "true").unwrap_or(true)
}

fn tracer_provider() -> Result<SdkTracerProvider, String> {
    let exporter =
        opentelemetry_otlp::SpanExporter::builder().with_http().build().map_err(|e| format!("OTLP exporter: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "allot-origin".into());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Install logging (and tracing export when configured) once for the process.
pub fn init() -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let format = std::env::var("ALLOT_LOG_FORMAT").unwrap_or_default();
    let human = format == "text" || (format != "json" && std::io::stdout().is_terminal());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (provider, problem) = if otlp_configured() {
        match tracer_provider() {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("allot-origin")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = if human {
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stdout)).try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stdout),
            )
            .try_init()
    };
    if let Some(problem) = problem {
        tracing::warn!(error = %problem, "trace export is off");
    }
    Telemetry { provider }
}

/// Make `span` continue the trace in `traceparent` (if valid) and record its ids as fields
/// (`trace_id`, `span_id`) so logs inside it carry them.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let parsed = traceparent.and_then(TraceParent::parse);
    if let Some(tp) = parsed {
        let carrier: HashMap<String, String> = HashMap::from([("traceparent".to_owned(), tp.to_string())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(cx);
    }
    let sc = span.context().span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", sc.trace_id().to_string());
        span.record("span_id", sc.span_id().to_string());
    } else if let Some(tp) = parsed {
        // Export is off: logs still carry the caller's trace id.
        span.record("trace_id", tp.trace_id_hex());
    }
}

/// A span named `name` whose parent is the span in `traceparent` (the relay joins the trace of
/// the request that wrote an event this way).
pub fn span_from_traceparent(span: tracing::Span, traceparent: Option<&str>) -> tracing::Span {
    if let Some(tp) = traceparent.and_then(TraceParent::parse) {
        let carrier: HashMap<String, String> = HashMap::from([("traceparent".to_owned(), tp.to_string())]);
        let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
    }
    span
}

/// The W3C `traceparent` of the current span, when tracing is on.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// The Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let latency = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let jobs = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("request_duration_seconds".into()), &latency)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full("allot_allocation_duration_seconds".into()), &latency))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full("allot_job_duration_seconds".into()), &jobs))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // In tests several apps share a process; the first recorder wins and is shared.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
