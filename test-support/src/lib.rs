//! The harness every mailtrail integration test uses.
//!
//! * [`TestDb`]: a PostgreSQL database of the test's own (`mt_test_<random>`), cloned from a
//!   template migrated once per version of `migrations/` (`mt_template_<hash>`); dropped on drop.
//! * [`TestBroker`]: a queue prefix of the test's own (`mttest-<random>.`) on the shared
//!   RabbitMQ, with its [`Topology`](mailtrail_shared::topology::Topology); its queues are deleted
//!   on drop.
//! * [`TcpProxy`]: a fault-injecting TCP proxy to put between a service and PostgreSQL or
//!   RabbitMQ — cut, refuse, black-hole, delay.
//! * [`ServiceProcess`]: a service binary as a child process, its output in
//!   `target/test-logs/<name>-….log`; SIGTERM, SIGKILL, wait for exit.
//! * [`PrivateRabbit`], [`PrivatePg`]: a RabbitMQ node and a PostgreSQL cluster of the test's
//!   own (temp dir, free ports), to restart, stop or `kill -9` without touching the shared ones;
//!   deleted on drop.
//! * [`eventually`]: wait for a condition, never for a fixed time.
//! * [`http_get`]: a minimal HTTP client to probe services; [`check_broker_only_service`]: the
//!   health and SIGTERM check every broker-only service binary passes.
//! * [`init_tracing`]: logs of the test itself, on stderr when `TEST_LOG` is set
//!   (e.g. `TEST_LOG=debug`, or any `EnvFilter` directive).
//!
//! The servers come from `MAILTRAIL_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432`, no database in the path) and `MAILTRAIL_TEST_AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`); `scripts/ensure-services.sh` starts them
//! locally and `scripts/test.sh` runs the whole suite.
//!
//! Tests may use the default single-threaded `#[tokio::test]`: nothing here needs a
//! multi-threaded runtime, and the `Drop` clean-ups run on a thread of their own.

mod broker;
mod db;
mod http;
mod lifecycle;
mod metrics;
mod private_pg;
mod private_rabbit;
mod process;
mod proxy;
mod wait;

pub use broker::{TestBroker, amqp_url, publish_confirmed, take_all};
pub use db::{MIGRATIONS, TestDb, database_server_url, template_name, url_with_database};
pub use http::{HttpAnswer, free_port, http_call, http_delete, http_get, http_post, try_http_get};
pub use lifecycle::check_broker_only_service;
pub use metrics::{parse_metrics, scrape, try_scrape};
pub use private_pg::{PrivatePg, pg_bin_dir};
pub use private_rabbit::PrivateRabbit;
pub use process::{ServiceProcess, target_bin, test_log_dir, workspace_dir};
pub use proxy::TcpProxy;
pub use wait::{POLL_INTERVAL, eventually};

pub use nix::sys::signal::Signal;

use std::sync::Once;
use std::time::Duration;

/// Installs a tracing subscriber writing to stderr if `TEST_LOG` is set (its value is an
/// `EnvFilter`; `1` or `true` mean `debug`). Without `TEST_LOG` tests stay silent. Idempotent.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let Ok(filter) = std::env::var("TEST_LOG") else {
            return;
        };
        let filter = match filter.trim() {
            "" | "1" | "true" => "debug".to_owned(),
            other => other.to_owned(),
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    });
}

/// Runs `fut` to completion on a new thread with a runtime of its own and waits for it (at most
/// `timeout`): how the `Drop` impls do async clean-up from sync code, inside or outside a runtime.
pub(crate) fn run_detached<F>(timeout: Duration, fut: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("test-support-cleanup".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(async move {
                    match tokio::time::timeout(timeout, fut).await {
                        Ok(r) => r,
                        Err(_) => Err(anyhow::anyhow!("timed out after {timeout:?}")),
                    }
                }),
                Err(e) => Err(e.into()),
            };
            let _ = tx.send(result);
        })?;
    match rx.recv_timeout(timeout + Duration::from_secs(5)) {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("the clean-up thread did not finish")),
    }
}
