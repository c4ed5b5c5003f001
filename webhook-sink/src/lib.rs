//! mailtrail's webhook sink: receives provider webhooks, verifies each signature over the raw
//! body before parsing it, normalises the events and hands them to the tracking queue with
//! publisher confirms before answering 2xx. It keeps no database.
//!
//! Endpoints: `POST /v1/webhooks/{mailgun,sendgrid,postmark,ses,resend,standard}`.
//! `verify` checks each provider's signature or credentials; `providers` maps each payload to
//! mailtrail events; `app` ties them to the broker.

pub mod app;
pub mod config;
pub mod providers;
pub mod replay;
pub mod verify;

pub use app::SinkApp;
pub use config::SinkConfig;
