//! mailtrail's own webhook event schema (`docs/webhook-standard-event.v1.schema.json`), for
//! in-house MTAs and relays that sign with Standard Webhooks: one event object, or a list.

use super::{Item, ProviderEvent, items_of};
use chrono::{DateTime, Utc};
use mailtrail_shared::history::EventType;
use mailtrail_shared::tracking::REPORTABLE;
use serde::Deserialize;
use uuid::Uuid;

pub const PROVIDER: &str = "standard";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StandardEvent {
    #[serde(rename = "type")]
    event_type: EventType,
    mailtrail_id: Uuid,
    #[serde(default)]
    recipient: Option<String>,
    occurred_at: DateTime<Utc>,
    #[serde(default)]
    details: serde_json::Map<String, serde_json::Value>,
}

/// The items of a verified body (one event or a list). `Err` only when the body is not JSON.
pub fn normalise(body: &[u8], webhook_id: &str) -> Result<Vec<Item>, String> {
    Ok(items_of(body)?
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let event: StandardEvent = match serde_json::from_value(raw.clone()) {
                Ok(event) => event,
                Err(e) => {
                    return Item::unmapped(format!("not a mailtrail webhook event: {e}"), &raw);
                }
            };
            if !REPORTABLE.contains(&event.event_type) {
                return Item::unmapped(
                    format!("{} is not an event a sender may report", event.event_type),
                    &raw,
                );
            }
            let mut details = event.details;
            if let Some(recipient) = event.recipient {
                details.insert("recipient".into(), recipient.into());
            }
            Item::Event(ProviderEvent {
                event_type: event.event_type,
                mailtrail_id: Some(event.mailtrail_id),
                provider_message_id: None,
                provider_event_id: format!("{webhook_id}:{index}"),
                occurred_at: event.occurred_at,
                details,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_good_items_and_isolates_odd_ones() {
        let id = Uuid::from_u128(7);
        let body = format!(
            r#"[{{"type": "delivered", "mailtrail_id": "{id}", "recipient": "a@b.test",
                  "occurred_at": "2026-12-01T10:00:00Z", "details": {{"mta": "relay-1"}}}},
                {{"type": "queued", "mailtrail_id": "{id}", "occurred_at": "2026-12-01T10:00:00Z"}},
                {{"type": "opened", "mailtrail_id": "not-a-uuid", "occurred_at": "x"}}]"#
        );
        let items = normalise(body.as_bytes(), "msg_1").expect("JSON");
        assert_eq!(items.len(), 3);
        let Item::Event(first) = &items[0] else {
            panic!("mapped: {:?}", items[0])
        };
        assert_eq!(first.event_type, EventType::Delivered);
        assert_eq!(first.mailtrail_id, Some(id));
        assert_eq!(first.details["recipient"], "a@b.test");
        assert_eq!(first.provider_event_id, "msg_1:0");
        assert!(matches!(items[1], Item::Unmapped { .. }));
        assert!(matches!(items[2], Item::Unmapped { .. }));
        // The same delivery maps to the same event id (the operator de-duplicates on it).
        let again = normalise(body.as_bytes(), "msg_1").expect("JSON");
        let (Item::Event(a), Item::Event(b)) = (&again[0], &items[0]) else {
            panic!("mapped")
        };
        assert_eq!(
            a.clone().into_tracking(PROVIDER, "acme").event_id,
            b.clone().into_tracking(PROVIDER, "acme").event_id
        );
        assert!(normalise(b"nope", "msg_1").is_err());
    }
}
