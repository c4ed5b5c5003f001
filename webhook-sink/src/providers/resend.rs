//! Resend (signed through Svix, the Standard Webhooks scheme): one event per request,
//! `{"type": "email.…", "created_at": …, "data": {…}}`. Our id comes back in `data.tags`
//! (a list of `{name, value}` or an object, both seen) or `data.headers`. Identity: the
//! `svix-id` / `webhook-id` header, the same on every retry.

use super::{
    BounceKind, Details, Item, MAILTRAIL_ID, ProviderEvent, mailtrail_id,
    mailtrail_id_from_headers, rfc3339, text,
};
use mailtrail_shared::history::EventType;
use serde_json::Value;
use uuid::Uuid;

pub const PROVIDER: &str = "resend";

/// The event of a verified request.
pub fn normalise(body: &[u8], webhook_id: &str) -> Result<Vec<Item>, String> {
    let event: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    Ok(vec![normalise_one(&event, webhook_id)])
}

fn tag_id(data: &Value) -> Option<Uuid> {
    match data.get("tags")? {
        Value::Object(tags) => mailtrail_id(tags.get(MAILTRAIL_ID)),
        Value::Array(tags) => tags.iter().find_map(|tag| {
            (tag.get("name").and_then(Value::as_str) == Some(MAILTRAIL_ID))
                .then(|| mailtrail_id(tag.get("value")))
                .flatten()
        }),
        _ => None,
    }
}

fn normalise_one(event: &Value, webhook_id: &str) -> Item {
    let Some(name) = text(event, "/type") else {
        return Item::unmapped("the event has no type", event);
    };
    let Some(occurred_at) = rfc3339(event, "/created_at") else {
        return Item::unmapped("the event has no valid created_at", event);
    };
    let data = event.get("data").cloned().unwrap_or(Value::Null);
    let mut details = Details::new(name);
    // Resend emits one event per recipient without saying which; with one recipient per
    // email (how mailtrail sends) the first is the one.
    details
        .copy("recipient", &data, "/to/0")
        .copy("url", &data, "/click/link")
        .copy("ip", &data, "/click/ipAddress")
        .copy("user_agent", &data, "/click/userAgent")
        .copy("ip", &data, "/open/ipAddress")
        .copy("user_agent", &data, "/open/userAgent")
        .copy("diagnostic", &data, "/bounce/message")
        .copy("bounce_type", &data, "/bounce/type")
        .copy("bounce_subtype", &data, "/bounce/subType")
        .copy("reason", &data, "/failed/reason")
        .copy("reason", &data, "/suppressed/message");
    let event_type = match name {
        "email.delivered" => EventType::Delivered,
        "email.delivery_delayed" => EventType::Deferred,
        "email.complained" => EventType::Complained,
        "email.opened" => EventType::Opened,
        "email.clicked" => EventType::Clicked,
        "email.failed" => EventType::Failed,
        "email.suppressed" => EventType::Rejected,
        "email.bounced" => {
            let kind = match text(&data, "/bounce/type") {
                Some("Permanent") => BounceKind::Hard,
                Some("Transient") => BounceKind::Soft,
                _ => BounceKind::Undetermined,
            };
            details.put("bounce_kind", kind.as_str());
            EventType::Bounced
        }
        // Sent and scheduled: our `dispatched` says it; the rest is not about an email we sent.
        "email.sent" | "email.scheduled" | "email.received" => {
            return Item::Ignored(format!("resend {name}"));
        }
        other if !other.starts_with("email.") => return Item::Ignored(format!("resend {name}")),
        other => return Item::unmapped(format!("unknown Resend event {other:?}"), event),
    };
    let occurred_at = rfc3339(&data, "/click/timestamp").unwrap_or(occurred_at);
    Item::event(
        ProviderEvent {
            event_type,
            mailtrail_id: tag_id(&data).or_else(|| mailtrail_id_from_headers(data.get("headers"))),
            provider_message_id: text(&data, "/email_id").map(str::to_owned),
            provider_event_id: webhook_id.to_owned(),
            occurred_at,
            details: details.into_map(),
        },
        event,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Item {
        normalise(body.as_bytes(), "msg_1")
            .expect("JSON")
            .pop()
            .expect("item")
    }

    #[test]
    fn maps_the_documented_events() {
        // The body of the Svix-signed vector in providers.md.
        let delivered = one(
            r#"{"type":"email.delivered","created_at":"2024-02-22T23:41:12.126Z","data":{"created_at":"2024-02-22T23:41:11.894719+00:00","email_id":"56761188-7520-42d8-8898-ff6fc54ce618","from":"Acme <onboarding@resend.dev>","to":["delivered@resend.dev"],"subject":"Sending this example"}}"#,
        );
        let Item::Event(delivered) = delivered else {
            panic!("mapped")
        };
        assert_eq!(delivered.event_type, EventType::Delivered);
        assert_eq!(delivered.provider_event_id, "msg_1");
        assert_eq!(
            delivered.provider_message_id.as_deref(),
            Some("56761188-7520-42d8-8898-ff6fc54ce618")
        );
        assert_eq!(delivered.details["recipient"], "delivered@resend.dev");
        assert_eq!(delivered.mailtrail_id, None);

        let id = Uuid::from_u128(8);
        for tags in [
            format!(r#"[{{"name":"mailtrail_id","value":"{id}"}}]"#),
            format!(r#"{{"mailtrail_id":"{id}"}}"#),
        ] {
            let clicked = one(&format!(
                r#"{{"type":"email.clicked","created_at":"2026-12-01T10:00:00Z","data":{{"email_id":"e","to":["a@x.test"],"tags":{tags},"click":{{"ipAddress":"192.0.2.3","link":"https://x.test/","timestamp":"2026-12-01T09:59:59Z","userAgent":"Mozilla"}}}}}}"#
            ));
            let Item::Event(clicked) = clicked else {
                panic!("mapped")
            };
            assert_eq!(clicked.mailtrail_id, Some(id));
            assert_eq!(clicked.details["url"], "https://x.test/");
            assert_eq!(
                clicked.occurred_at.to_rfc3339(),
                "2026-12-01T09:59:59+00:00"
            );
        }
        let bounced = one(
            r#"{"type":"email.bounced","created_at":"2026-12-01T10:00:00Z","data":{"email_id":"e","to":["a@x.test"],"headers":[{"name":"X-Mailtrail-Id","value":"00000000-0000-0000-0000-000000000008"}],"bounce":{"message":"hard bounce","type":"Permanent","subType":"General"}}}"#,
        );
        let Item::Event(bounced) = bounced else {
            panic!("mapped")
        };
        assert_eq!(bounced.details["bounce_kind"], "hard");
        assert_eq!(bounced.mailtrail_id, Some(id));
        assert!(matches!(
            one(r#"{"type":"email.sent","created_at":"2026-12-01T10:00:00Z","data":{}}"#),
            Item::Ignored(_)
        ));
        assert!(matches!(
            one(r#"{"type":"contact.created","created_at":"2026-12-01T10:00:00Z","data":{}}"#),
            Item::Ignored(_)
        ));
        assert!(matches!(
            one(r#"{"type":"email.teleported","created_at":"2026-12-01T10:00:00Z","data":{}}"#),
            Item::Unmapped { .. }
        ));
    }
}
