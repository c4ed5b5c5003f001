//! mailtrail's operator: the only component that touches PostgreSQL.
//!
//! * [`intake`]: consumes `mailbox.priority` then `mailbox`, validates, and records request,
//!   emails, `accepted` events and outbox rows in one transaction before acking.
//! * [`relay`]: publishes outbox rows to `dispatching(.priority)` with confirms and records
//!   `queued`; while several tenants have jobs due, at most K of each in flight (fair dispatch).
//! * [`history`]: appends events and moves the summary status by the precedence table.
//! * [`http`]: health, readiness and the key-protected `/v1` API; [`keys`]: API keys.
//! * [`suppressions`]: the per-tenant suppression list, fed by bounces, complaints and
//!   unsubscribes and consulted by the intake.
//! * [`scheduling`]: cancelling a scheduled email before it leaves; [`clock`]: the operator's
//!   "now", manual in tests.
//! * [`status_events`]: publishes every recorded event to the `<prefix>events` topic exchange
//!   for apps, from an outbox filled by a trigger.
//! * [`dead_letter_consumer`]: stores what every service set aside (`<prefix>dead-letter`) in
//!   `dead_letters`; [`dead_letter_api`]: lists, shows, replays and discards them.
//! * [`search_api`]: message search (`GET /v1/messages`) and its NDJSON/CSV export.
//! * [`stats_api`]: event counts per hour or day and dispatch-cohort rates (`GET /v1/stats`).
//! * [`openapi`]: the OpenAPI 3 document of that API, generated from the handlers (`GET /v1/openapi.json`, public).
//! * [`tenant_policy`]: which broker user may write for which tenant, and from which domains.
//! * [`retention`]: purges old requests, bodies and dead letters in small batches.
//! * [`app`]: the supervised session that runs both and reconnects after failures.

pub mod app;
pub mod audit;
pub mod clock;
pub mod config;
pub mod db;
pub mod dead_letter_api;
pub mod dead_letter_consumer;
pub mod dead_letters;
pub mod faults;
pub mod gauges;
pub mod history;
pub mod http;
pub mod intake;
pub mod keys;
pub mod openapi;
pub mod page;
pub mod pending;
pub mod relay;
pub mod retention;
pub mod scheduling;
pub mod schema;
pub mod search_api;
pub mod sessions;
pub mod stats_api;
pub mod status_events;
pub mod suppressions;
pub mod tenant_policy;
pub mod tracking;

pub use app::Operator;
pub use config::OperatorConfig;
