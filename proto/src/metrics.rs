//! The `/metrics` endpoint the coordinator and the agent serve: their Prometheus registries over plain HTTP on an
//! address of their own (`metrics_listen`). A scraper that asks for OpenMetrics (Prometheus does) gets it; anything
//! else (`curl`, `promtool check metrics`, older scrapers) gets the classic text format 0.0.4.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `registry` at `/metrics` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = axum::Router::new().route("/metrics", get(scrape)).with_state(registry);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn scrape(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> impl IntoResponse {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode the metrics: {e}"),
        );
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("application/openmetrics-text") {
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
    } else {
        (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], classic_text(&body))
    }
}

/// OpenMetrics text as the classic Prometheus text format: a counter family's `# HELP` and `# TYPE` name its
/// samples' `_total` name, and there is no `# UNIT` or `# EOF`.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[test]
fn counters_are_named_by_their_samples_in_the_classic_format() {
    let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total 3\n\
              # HELP x_wait Wait.\n# TYPE x_wait histogram\n# UNIT x_wait seconds\nx_wait_count 1\n# EOF\n";
    assert_eq!(
        classic_text(om),
        "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total 3\n\
         # HELP x_wait Wait.\n# TYPE x_wait histogram\nx_wait_count 1\n"
    );
}

/// Histograms by label set, every one with [`durations`]'s buckets.
pub type Histograms<L> = prometheus_client::metrics::family::Family<L, Histogram, fn() -> Histogram>;

/// A histogram of durations in seconds, from 5 ms to about 20 minutes.
pub fn durations() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.5, 14))
}

/// The labels of what both processes time per migration or step.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct EngineDirection {
    pub engine: String,
    pub direction: String,
}
