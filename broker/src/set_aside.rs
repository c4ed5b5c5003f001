use crate::incoming::Incoming;
use crate::publish::OutgoingMessage;
use lapin::types::AMQPValue;
use mailtrail_shared::headers;
use mailtrail_shared::topology::{Queue, Topology};
use uuid::Uuid;

/// A message set aside: a copy for the dead-letter queue carrying why, from where and by whom.
#[derive(Debug, Clone)]
pub struct SetAside {
    pub dead_letter_id: Uuid,
    /// Stable machine-readable code (e.g. `invalid_address`).
    pub reason: String,
    /// What a person needs to fix it.
    pub detail: String,
    /// The service setting it aside (`operator`, `dispatcher`, ...).
    pub set_aside_by: &'static str,
}

impl SetAside {
    /// Setting `message` aside: its id is derived from the source queue, message id and body, so
    /// the same message set aside again (after a redelivery) is recognised.
    pub fn for_message(
        message: &Incoming,
        reason: &str,
        detail: &str,
        set_aside_by: &'static str,
    ) -> SetAside {
        SetAside {
            dead_letter_id: mailtrail_shared::ids::dead_letter_id(
                &message.queue_name,
                message.message_id(),
                &message.body,
            ),
            reason: reason.to_owned(),
            detail: detail.to_owned(),
            set_aside_by,
        }
    }

    /// The dead-letter copy of `original`: same body, its properties and headers kept, plus the
    /// reason headers. The copy is persistent whatever the original was.
    pub fn message_for(&self, original: &Incoming, topology: &Topology) -> OutgoingMessage {
        let mut table = original.properties.headers().clone().unwrap_or_default();
        let mut put = |name: &str, value: &str| {
            table.insert(name.into(), AMQPValue::LongString(value.into()));
        };
        put(headers::REASON, &self.reason);
        put(headers::REASON_DETAIL, &self.detail);
        put(headers::SOURCE_QUEUE, &original.queue_name);
        put(headers::SET_ASIDE_BY, self.set_aside_by);
        put(headers::SET_ASIDE_AT, &chrono::Utc::now().to_rfc3339());
        put(headers::DEAD_LETTER_ID, &self.dead_letter_id.to_string());
        if let Some(id) = original.message_id() {
            put(headers::ORIGINAL_MESSAGE_ID, id);
        }
        if let Some(user) = original.user_id() {
            put(headers::ORIGINAL_USER_ID, user);
        }
        // A fresh set of properties: the copy is published by this service's broker user, so the
        // original `user_id` (kept in a header above) would be refused.
        let mut properties = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(self.dead_letter_id.to_string().into())
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
            .with_headers(table);
        if let Some(content_type) = original.properties.content_type() {
            properties = properties.with_content_type(content_type.clone());
        }
        OutgoingMessage {
            routing_key: topology.queue(Queue::DeadLetter),
            body: original.body.clone(),
            properties,
        }
    }
}
