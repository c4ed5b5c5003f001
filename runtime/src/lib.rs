//! Process plumbing every mailtrail service shares, so each `main.rs` stays a few lines:
//! logging, stop signals, reconnect backoff and supervision, the `/healthz`, `/readyz` and
//! `/metrics` endpoints, and the broker settings every binary reads.

mod backoff;
mod broker_session;
mod health;
mod logging;
mod metrics;
mod signals;
mod supervise;

pub use backoff::Backoff;
pub use broker_session::{BrokerArgs, bind_http};
pub use health::{HEALTH_PATHS, Readiness, health_routes, serve_health};
pub use logging::{ProcessArgs, init_tracing};
pub use metrics::{METRICS_PATH, install_metrics, metrics_endpoint, seconds_since};
pub use signals::stop_on_signal;
pub use supervise::{run_with_drain_deadline, supervise};
