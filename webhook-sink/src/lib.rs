//! mailtrail's webhook sink: receives provider webhooks, verifies each signature over the raw
//! body before parsing it, normalises the events and hands them to the tracking queue with
//! publisher confirms before answering 2xx. It keeps no database.
//!
//! Built so far: the `standard` endpoint (mailtrail's own event schema signed per Standard
//! Webhooks), and the Mailgun signature check; the other providers follow.

pub mod app;
pub mod config;
pub mod standard_events;
pub mod verify;

pub use app::SinkApp;
pub use config::SinkConfig;
