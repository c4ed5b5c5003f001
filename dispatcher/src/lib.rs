//! mailtrail's dispatcher: consumes dispatch jobs, sends each through a provider (SMTP or an
//! HTTP send API) and reports what happened (`dispatched`, `deferred`, `bounced`, `failed`) on
//! the tracking queue. It keeps no database:
//! a short memory of recent outcomes makes redeliveries harmless.
//!
//! * [`worker::Dispatcher::handle`] — the step: one delivery in, outcome sent and reported;
//! * [`app::DispatcherApp`] — the process: consume loop, reconnects, health, graceful stop.

pub mod app;
pub mod breaker;
pub mod config;
pub mod memory;
pub mod message;
pub mod outcome;
pub mod providers;
pub mod rate;
pub mod routing;
pub mod smtp;
pub mod worker;

pub use app::DispatcherApp;
pub use config::DispatcherConfig;
