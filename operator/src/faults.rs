//! Crash points for the crash-recovery tests: with `MAILTRAIL_FAULT=<point>` set, the process
//! aborts (like `kill -9`: no cleanup, no acks) when it reaches that point. Unset in production.

use std::sync::OnceLock;

/// After the intake transaction committed, before the deliveries are acked or the relay woken.
pub const INTAKE_AFTER_COMMIT: &str = "intake-after-commit";
/// After the relay's jobs were confirmed by the broker, before they are marked sent.
pub const RELAY_AFTER_PUBLISH: &str = "relay-after-publish";

fn configured() -> Option<&'static str> {
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    FAULT
        .get_or_init(|| std::env::var("MAILTRAIL_FAULT").ok())
        .as_deref()
}

/// Aborts the process if `point` is the configured crash point.
pub fn crash_point(point: &str) {
    if configured() == Some(point) {
        eprintln!("MAILTRAIL_FAULT: aborting at {point}");
        std::process::abort();
    }
}
