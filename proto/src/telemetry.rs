//! Logs and traces for every Flotilla process. Logs go to stderr; spans are exported over OTLP (gRPC) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! One rollout is one trace: every process derives the plan's trace id from the plan id, the coordinator sends
//! each assignment's `traceparent` to the agent (`Assignment.trace`), and agents send it back in the `traceparent`
//! gRPC metadata of their reports. A restarted coordinator keeps adding to the same trace.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use sha2::{Digest, Sha256};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Flushes spans at shutdown.
#[must_use = "call shutdown() at the end of the process so the last spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter (the last step of an ordered shutdown).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: could not flush traces: {e}");
            }
        }
    }
}

/// How the processes write their logs (`log_format` in their configs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format `{other}` is neither `text` nor `json`")),
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` (or `default_filter`) for stderr logs (as text or JSON), plus OTLP export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Call once, inside the Tokio runtime.
pub fn init(service: &'static str, default_filter: &str, format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let text = (format == LogFormat::Text)
        .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false));
    // One JSON object per line: timestamp, level, message and fields, and the spans it is in (plan_id, target).
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
    });
    let logs = tracing_subscriber::Layer::and_then(text, json);
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty());
    let provider = endpoint.and_then(|endpoint| {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint.clone()).build();
        match exporter {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
                    .build(),
            ),
            Err(e) => {
                eprintln!("warning: not exporting traces to {endpoint}: {e}");
                None
            }
        }
    });
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    let result = match &provider {
        Some(p) => registry.with(tracing_opentelemetry::layer().with_tracer(p.tracer(service))).try_init(),
        None => registry.try_init(),
    };
    if result.is_err() {
        // Someone (a test harness, an embedding program) installed a subscriber already; keep theirs.
    }
    Telemetry { provider }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// The plan's trace id: the same in every process.
pub fn trace_id(plan_id: &str) -> TraceId {
    let d = digest(plan_id);
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    TraceId::from_bytes(id)
}

/// The context every span of plan `plan_id` descends from.
pub fn plan_context(plan_id: &str) -> Context {
    let d = digest(&format!("{plan_id}/root"));
    let mut span = [0u8; 8];
    span.copy_from_slice(&d[..8]);
    let sc =
        SpanContext::new(trace_id(plan_id), SpanId::from_bytes(span), TraceFlags::SAMPLED, true, TraceState::default());
    Context::new().with_remote_span_context(sc)
}

/// Makes `span` part of plan `plan_id`'s trace.
pub fn join_plan(span: &Span, plan_id: &str) {
    let _ = span.set_parent(plan_context(plan_id));
}

/// The W3C `traceparent` of `span` (when spans are exported), else one naming `key` in plan `plan_id`'s trace.
pub fn traceparent(span: &Span, plan_id: &str, key: &str) -> String {
    let sc = span.context().span().span_context().clone();
    if sc.is_valid() {
        return format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8());
    }
    let d = digest(&format!("{plan_id}/{key}"));
    format!("00-{}-{}-01", trace_id(plan_id), hex::encode(&d[..8]))
}

/// Parses a W3C `traceparent`; `None` when malformed.
pub fn parse_traceparent(text: &str) -> Option<Context> {
    let parts: Vec<&str> = text.trim().split('-').collect();
    let [version, trace, span, flags] = parts.as_slice() else { return None };
    if *version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let sc = SpanContext::new(trace, span, flags, true, TraceState::default());
    sc.is_valid().then(|| Context::new().with_remote_span_context(sc))
}

/// Makes `span` a child of the remote `traceparent` (ignored when malformed).
pub fn join_traceparent(span: &Span, traceparent: &str) {
    if let Some(cx) = parse_traceparent(traceparent) {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_and_share_the_plan_trace() {
        let a = traceparent(&Span::none(), "plan-1", "db1");
        let b = traceparent(&Span::none(), "plan-1", "db2");
        assert_eq!(a[3..35], b[3..35], "one trace per plan");
        assert_eq!(a[3..35], trace_id("plan-1").to_string());
        let cx = parse_traceparent(&a).expect("valid");
        assert_eq!(cx.span().span_context().trace_id(), trace_id("plan-1"));
        for bad in ["", "00-xyz-abc-01", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
