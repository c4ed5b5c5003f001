//! mailtrail's own webhook event schema (`docs/webhook-standard-event.v1.schema.json`), for
//! in-house MTAs and relays that sign with Standard Webhooks: one event object, or a list.

use chrono::{DateTime, Utc};
use mailtrail_shared::history::EventType;
use mailtrail_shared::tracking::{REPORTABLE, TRACKING_EVENT_VERSION, TrackingEvent};
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

/// One item of a verified request: its tracking event, or why it cannot be one (it is then set
/// aside alone, with its raw bytes).
pub type Item = Result<TrackingEvent, (String, Vec<u8>)>;

/// The items of a verified body. `Err` only when the body is not JSON at all.
pub fn normalise(body: &[u8], webhook_id: &str, tenant: &str) -> Result<Vec<Item>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        single => vec![single],
    };
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let bytes = serde_json::to_vec(&raw).unwrap_or_default();
            let event: StandardEvent = serde_json::from_value(raw)
                .map_err(|e| (format!("not a mailtrail webhook event: {e}"), bytes.clone()))?;
            if !REPORTABLE.contains(&event.event_type) {
                return Err((
                    format!("{} is not an event a sender may report", event.event_type),
                    bytes,
                ));
            }
            let provider_event_id = format!("{webhook_id}:{index}");
            let mut details = event.details;
            if let Some(recipient) = event.recipient {
                details.insert("recipient".into(), recipient.into());
            }
            Ok(TrackingEvent {
                version: TRACKING_EVENT_VERSION,
                event_id: Uuid::new_v5(
                    &mailtrail_shared::ids::NAMESPACE,
                    format!("webhook:{PROVIDER}:{provider_event_id}").as_bytes(),
                ),
                email_id: event.mailtrail_id,
                tenant: tenant.to_owned(),
                event_type: event.event_type,
                occurred_at: event.occurred_at,
                source: format!("webhook:{PROVIDER}"),
                provider: Some(PROVIDER.to_owned()),
                provider_message_id: None,
                provider_event_id: Some(provider_event_id),
                details: serde_json::Value::Object(details),
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
        let items = normalise(body.as_bytes(), "msg_1", "acme").expect("JSON");
        assert_eq!(items.len(), 3);
        let first = items[0].as_ref().expect("mapped");
        assert_eq!(first.event_type, EventType::Delivered);
        assert_eq!(first.tenant, "acme");
        assert_eq!(first.details["recipient"], "a@b.test");
        assert_eq!(first.provider_event_id.as_deref(), Some("msg_1:0"));
        assert!(items[1].is_err() && items[2].is_err());
        // The same delivery maps to the same event id (the operator de-duplicates on it).
        let again = normalise(body.as_bytes(), "msg_1", "acme").expect("JSON");
        assert_eq!(again[0].as_ref().expect("mapped").event_id, first.event_id);
        assert!(normalise(b"nope", "msg_1", "acme").is_err());
    }
}
