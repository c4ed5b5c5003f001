//! Postmark: one event per request, routed on `RecordType`; our id in `Metadata`. Identity: the
//! `X-PM-Webhook-Trace-Id` header (stable across retries); without it, the record's own fields.

use super::{BounceKind, Details, Item, MAILTRAIL_ID, ProviderEvent, mailtrail_id, rfc3339, text};
use mailtrail_shared::history::EventType;
use serde_json::Value;

pub const PROVIDER: &str = "postmark";

/// The event of a verified request; `trace_id` is the `X-PM-Webhook-Trace-Id` header.
pub fn normalise(body: &[u8], trace_id: Option<&str>) -> Result<Vec<Item>, String> {
    let record: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    Ok(vec![normalise_one(&record, trace_id)])
}

fn normalise_one(record: &Value, trace_id: Option<&str>) -> Item {
    // Old samples lack RecordType; a bounce is recognisable by its Type.
    let record_type = text(record, "/RecordType").unwrap_or(if record.get("BouncedAt").is_some() {
        "Bounce"
    } else {
        ""
    });
    let time_field = match record_type {
        "Delivery" => "/DeliveredAt",
        "Bounce" | "SpamComplaint" => "/BouncedAt",
        "Open" | "Click" => "/ReceivedAt",
        "SubscriptionChange" => "/ChangedAt",
        "" => return Item::unmapped("the record has no RecordType", record),
        other => return Item::unmapped(format!("unknown Postmark RecordType {other:?}"), record),
    };
    let Some(occurred_at) = rfc3339(record, time_field) else {
        return Item::unmapped(
            format!("the record has no valid {}", &time_field[1..]),
            record,
        );
    };
    let bounce_type = text(record, "/Type").unwrap_or_default();
    let provider_event = if record_type == "Bounce" {
        format!("Bounce/{bounce_type}")
    } else {
        record_type.to_owned()
    };
    let mut details = Details::new(&provider_event);
    details
        .copy("recipient", record, "/Recipient")
        .copy("recipient", record, "/Email")
        .copy("user_agent", record, "/UserAgent")
        .copy("ip", record, "/Geo/IP")
        .copy("url", record, "/OriginalLink")
        .copy("tag", record, "/Tag")
        .copy("message_stream", record, "/MessageStream")
        .copy("diagnostic", record, "/Details")
        .copy("description", record, "/Description")
        .copy("bounce_id", record, "/ID")
        .copy("first_open", record, "/FirstOpen");
    let event_type = match record_type {
        "Delivery" => EventType::Delivered,
        "SpamComplaint" => EventType::Complained,
        "Open" => EventType::Opened,
        "Click" => EventType::Clicked,
        "SubscriptionChange" => {
            let suppressed = record.get("SuppressSending").and_then(Value::as_bool);
            match (suppressed, text(record, "/SuppressionReason")) {
                // Bounces and complaints arrive as their own records.
                (Some(true), Some("ManualSuppression") | None) => EventType::Unsubscribed,
                _ => return Item::Ignored(format!("postmark {record_type}")),
            }
        }
        _ => {
            let (event_type, kind) = match bounce_type {
                "HardBounce" | "BadEmailAddress" => (EventType::Bounced, Some(BounceKind::Hard)),
                "SoftBounce" => (EventType::Bounced, Some(BounceKind::Soft)),
                "Transient" | "DnsError" => (EventType::Deferred, None),
                "SpamComplaint" => (EventType::Complained, None),
                "Unsubscribe" => (EventType::Unsubscribed, None),
                "Blocked" | "DMARCPolicy" | "ManuallyDeactivated" | "Unconfirmed" => {
                    (EventType::Rejected, None)
                }
                "SMTPApiError" | "TemplateRenderingFailed" => (EventType::Failed, None),
                // Replies that say nothing about the delivery.
                "AutoResponder"
                | "AddressChange"
                | "Subscribe"
                | "OpenRelayTest"
                | "ChallengeVerification"
                | "InboundError" => {
                    return Item::Ignored(format!("postmark bounce {bounce_type}"));
                }
                _ => (EventType::Bounced, Some(BounceKind::Undetermined)),
            };
            if let Some(kind) = kind {
                details.put("bounce_kind", kind.as_str());
            }
            event_type
        }
    };
    let message_id = text(record, "/MessageID").map(str::to_owned);
    let provider_event_id = match trace_id.map(str::trim).filter(|t| !t.is_empty()) {
        Some(trace) => trace.to_owned(),
        None => format!(
            "{provider_event}:{}:{}:{}:{}",
            message_id.as_deref().unwrap_or_default(),
            text(record, "/Recipient")
                .or_else(|| text(record, "/Email"))
                .unwrap_or_default(),
            text(record, time_field).unwrap_or_default(),
            text(record, "/OriginalLink").unwrap_or_default(),
        ),
    };
    Item::event(
        ProviderEvent {
            event_type,
            mailtrail_id: mailtrail_id(record.pointer(&format!("/Metadata/{MAILTRAIL_ID}"))),
            provider_message_id: message_id,
            provider_event_id,
            occurred_at,
            details: details.into_map(),
        },
        record,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn one(body: &str, trace: Option<&str>) -> Item {
        normalise(body.as_bytes(), trace)
            .expect("JSON")
            .pop()
            .expect("one item")
    }

    #[test]
    fn maps_records_and_bounce_types() {
        let id = Uuid::from_u128(3);
        let bounce = one(
            &format!(
                r#"{{"RecordType":"Bounce","ID":42,"Type":"HardBounce","TypeCode":1,"MessageID":"883953f4-6105-42a2-a16a-77a8eac79483","Details":"550 5.1.1 unknown","Email":"john@example.com","BouncedAt":"2014-08-01T13:28:10.2735393-04:00","Metadata":{{"mailtrail_id":"{id}"}}}}"#
            ),
            Some("trace-1"),
        );
        let Item::Event(bounce) = bounce else {
            panic!("mapped")
        };
        assert_eq!(bounce.event_type, EventType::Bounced);
        assert_eq!(bounce.details["bounce_kind"], "hard");
        assert_eq!(bounce.details["recipient"], "john@example.com");
        assert_eq!(bounce.mailtrail_id, Some(id));
        assert_eq!(bounce.provider_event_id, "trace-1");
        assert_eq!(
            bounce.provider_message_id.as_deref(),
            Some("883953f4-6105-42a2-a16a-77a8eac79483")
        );

        let click = one(
            r#"{"RecordType":"Click","OriginalLink":"https://x.test/a","UserAgent":"Mozilla","Geo":{"IP":"192.0.2.1"},"MessageID":"m1","ReceivedAt":"2026-12-01T10:00:00Z","Recipient":"a@x.test"}"#,
            None,
        );
        let Item::Event(click) = click else {
            panic!("mapped")
        };
        assert_eq!(click.event_type, EventType::Clicked);
        assert_eq!(click.details["ip"], "192.0.2.1");
        assert_eq!(
            click.provider_event_id,
            "Click:m1:a@x.test:2026-12-01T10:00:00Z:https://x.test/a"
        );

        let transient = one(
            r#"{"RecordType":"Bounce","Type":"Transient","MessageID":"m1","Email":"a@x.test","BouncedAt":"2026-12-01T10:00:00Z"}"#,
            None,
        );
        assert!(matches!(
            transient,
            Item::Event(ProviderEvent {
                event_type: EventType::Deferred,
                ..
            })
        ));
        let auto = one(
            r#"{"RecordType":"Bounce","Type":"AutoResponder","MessageID":"m1","Email":"a@x.test","BouncedAt":"2026-12-01T10:00:00Z"}"#,
            None,
        );
        assert!(matches!(auto, Item::Ignored(_)));
        let unsubscribed = one(
            r#"{"RecordType":"SubscriptionChange","MessageID":"m1","Recipient":"a@x.test","ChangedAt":"2026-12-01T10:00:00Z","SuppressSending":true,"SuppressionReason":"ManualSuppression"}"#,
            None,
        );
        assert!(matches!(
            unsubscribed,
            Item::Event(ProviderEvent {
                event_type: EventType::Unsubscribed,
                ..
            })
        ));
        assert!(matches!(
            one(r#"{"RecordType":"Inbound"}"#, None),
            Item::Unmapped { .. }
        ));
        assert!(matches!(
            one(r#"{"RecordType":"Delivery","MessageID":"m1"}"#, None),
            Item::Unmapped { .. }
        ));
        assert!(normalise(b"[", None).is_err());
    }
}
