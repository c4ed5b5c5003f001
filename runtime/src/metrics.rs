//! Prometheus metrics: one recorder per process (the `metrics` facade with the Prometheus
//! exporter's recorder, no listener of its own), served at [`METRICS_PATH`] beside the health
//! endpoints by every service. `docs/metrics.md` lists every metric.
//!
//! Latency histograms share one bucket layout, from a millisecond to a minute, so the same
//! `histogram_quantile` works across services.

use actix_web::HttpResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Where every service serves its metrics (public, like the health endpoints).
pub const METRICS_PATH: &str = "/metrics";

/// The buckets of every `*_seconds` histogram.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle). Call it first
/// thing in `main`, so nothing counted before the first scrape is lost.
pub fn install_metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(SECONDS_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder already installed (a test harness's) keeps working; this handle
            // then renders nothing, which is still a valid exposition.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// `GET /metrics`: the Prometheus text exposition of this process's metrics.
pub async fn metrics_endpoint() -> HttpResponse {
    let handle = install_metrics();
    // Without the exporter's own listener, histograms are drained here.
    handle.run_upkeep();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render())
}

/// Seconds since `then`, for a latency histogram (0 when `then` is in the future: clocks of
/// different machines disagree a little).
pub fn seconds_since(then: chrono::DateTime<chrono::Utc>) -> f64 {
    let elapsed = chrono::Utc::now() - then;
    (elapsed.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
}
