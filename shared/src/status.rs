//! Status events: the public contract of what apps receive on the `<prefix>events` topic
//! exchange, one message per recorded history event (`docs/status-events.md`,
//! `docs/status-event.v1.schema.json`). Delivery is at least once and, across emails, in no
//! particular order: `event_id` de-duplicates, `seq` orders one email's events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The version of the status event contract; a consumer should ignore versions it does not know.
pub const STATUS_EVENT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub version: u32,
    /// Unique per event, also the AMQP `message_id`: a redelivered event has the same one.
    pub event_id: Uuid,
    pub email_id: Uuid,
    /// The request's `id` as the app sent it in the mailbox request.
    pub id: String,
    pub request_id: Uuid,
    pub tenant: String,
    /// The event type (`accepted`, `queued`, `dispatched`, `delivered`, `bounced`, …).
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// The event's place in its email's history, from 1: order one email's events by it.
    pub seq: i32,
    /// The canonical recipient of this email.
    pub recipient: String,
    /// The request's `metadata`, as sent.
    pub metadata: serde_json::Value,
    /// `operator`, `dispatcher` or `webhook:<provider>`.
    pub source: String,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    /// Type-specific details, as in the history (`docs/history.md`).
    pub details: serde_json::Value,
}
