//! Mailgun: one event per request, `{"signature": {…}, "event-data": {…}}`.
//!
//! Identity: `event-data.id` is unique only within a day, so it is combined with the UTC date
//! of the event's timestamp (both are the same on every retry).

use super::{
    BounceKind, Details, Item, MAILTRAIL_ID, ProviderEvent, mailtrail_id, text, unix_time,
};
use mailtrail_shared::history::EventType;
use serde_json::Value;

pub const PROVIDER: &str = "mailgun";

/// The `signature` object, read before anything else of the body is trusted.
#[derive(Debug, serde::Deserialize)]
pub struct Envelope {
    pub signature: SignatureFields,
    #[serde(rename = "event-data")]
    pub event_data: Value,
}

#[derive(Debug, serde::Deserialize)]
pub struct SignatureFields {
    pub timestamp: String,
    pub token: String,
    pub signature: String,
}

/// The event of a verified request.
pub fn normalise(event: &Value) -> Item {
    let Some(name) = text(event, "/event") else {
        return Item::unmapped("event-data has no event", event);
    };
    let Some(occurred_at) = unix_time(event.get("timestamp")) else {
        return Item::unmapped("event-data has no timestamp", event);
    };
    let Some(id) = text(event, "/id") else {
        return Item::unmapped("event-data has no id", event);
    };
    let severity = text(event, "/severity").unwrap_or_default();
    let reason = text(event, "/reason").unwrap_or_default();
    let mut details = Details::new(name);
    details
        .copy("recipient", event, "/recipient")
        .copy("provider_event_id", event, "/id")
        .copy("ip", event, "/ip")
        .copy("user_agent", event, "/client-info/user-agent")
        .copy("client", event, "/client-info/client-name")
        .copy("device", event, "/client-info/device-type")
        .copy("url", event, "/url")
        .copy("tags", event, "/tags")
        .copy("severity", event, "/severity")
        .copy("reason", event, "/reason")
        .copy("smtp_code", event, "/delivery-status/code")
        .copy("status", event, "/delivery-status/enhanced-code")
        .copy("diagnostic", event, "/delivery-status/description")
        .copy("smtp_response", event, "/delivery-status/message")
        .copy("attempt", event, "/delivery-status/attempt-no")
        .copy("retry_in_secs", event, "/delivery-status/retry-seconds");
    // Mailgun names the bot that fetched a pixel or link (Apple's proxy, scanners).
    if let Some(bot) = text(event, "/client-info/bot") {
        details.put("machine", true).put("bot", bot);
    }
    let event_type = match name {
        "delivered" => EventType::Delivered,
        "opened" => EventType::Opened,
        "clicked" => EventType::Clicked,
        "unsubscribed" => EventType::Unsubscribed,
        "complained" => EventType::Complained,
        "rejected" => EventType::Rejected,
        "failed" if severity == "temporary" => EventType::Deferred,
        // Not attempted because the address is on Mailgun's suppression lists.
        "failed" if reason.starts_with("suppress-") => EventType::Rejected,
        "failed" => {
            let code = text(event, "/delivery-status/enhanced-code")
                .or_else(|| text(event, "/delivery-status/bounce-code"))
                .map(str::to_owned)
                .or_else(|| {
                    event
                        .pointer("/delivery-status/code")
                        .map(|c| c.to_string())
                })
                .unwrap_or_default();
            let kind = match BounceKind::from_status(&code) {
                // A permanent failure with no code is still Mailgun's final word.
                BounceKind::Undetermined if severity == "permanent" => BounceKind::Hard,
                kind => kind,
            };
            details.put("bounce_kind", kind.as_str());
            EventType::Bounced
        }
        // Mailgun took the message (our `dispatched` says so) or stored an inbound one.
        "accepted" | "stored" | "list_member_uploaded" => {
            return Item::Ignored(format!("mailgun {name}"));
        }
        other => return Item::unmapped(format!("unknown Mailgun event {other:?}"), event),
    };
    let date = occurred_at.format("%Y-%m-%d");
    Item::event(
        ProviderEvent {
            event_type,
            mailtrail_id: mailtrail_id(event.pointer(&format!("/user-variables/{MAILTRAIL_ID}"))),
            provider_message_id: text(event, "/message/headers/message-id").map(str::to_owned),
            provider_event_id: format!("{date}:{id}"),
            occurred_at,
            details: details.into_map(),
        },
        event,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn sample(event: &str, extra: Value) -> Value {
        let mut base = json!({
            "event": event,
            "timestamp": 1529006854.329574,
            "id": "DACSsAdVSeGpLid7TN03WA",
            "recipient": "alice@example.com",
            "message": {"headers": {"message-id": "20180622182958.1.48906CB188F1A454@example.org"}},
            "user-variables": {"mailtrail_id": Uuid::from_u128(9).to_string()},
        });
        for (k, v) in extra.as_object().expect("object") {
            base[k] = v.clone();
        }
        base
    }

    fn event(item: Item) -> ProviderEvent {
        match item {
            Item::Event(e) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn maps_each_event_kind() {
        let delivered = event(normalise(&sample("delivered", json!({}))));
        assert_eq!(delivered.event_type, EventType::Delivered);
        assert_eq!(delivered.mailtrail_id, Some(Uuid::from_u128(9)));
        assert_eq!(
            delivered.provider_event_id,
            "2018-06-14:DACSsAdVSeGpLid7TN03WA"
        );
        assert_eq!(
            delivered.provider_message_id.as_deref(),
            Some("20180622182958.1.48906CB188F1A454@example.org")
        );
        assert_eq!(delivered.details["recipient"], "alice@example.com");

        let hard = event(normalise(&sample(
            "failed",
            json!({"severity": "permanent", "reason": "bounce",
                   "delivery-status": {"code": 550, "enhanced-code": "5.1.1",
                                       "description": "No such user"}}),
        )));
        assert_eq!(hard.event_type, EventType::Bounced);
        assert_eq!(hard.details["bounce_kind"], "hard");
        assert_eq!(hard.details["status"], "5.1.1");
        assert_eq!(hard.details["smtp_code"], 550);

        let temporary = event(normalise(&sample(
            "failed",
            json!({"severity": "temporary", "delivery-status": {"code": 452}}),
        )));
        assert_eq!(temporary.event_type, EventType::Deferred);

        let suppressed = event(normalise(&sample(
            "failed",
            json!({"severity": "permanent", "reason": "suppress-bounce",
                   "delivery-status": {"code": 605}}),
        )));
        assert_eq!(suppressed.event_type, EventType::Rejected);

        let click = event(normalise(&sample(
            "clicked",
            json!({"url": "https://shop.test/x", "ip": "203.0.113.9",
                   "client-info": {"user-agent": "Mozilla/5.0", "bot": "apple"}}),
        )));
        assert_eq!(click.event_type, EventType::Clicked);
        assert_eq!(click.details["url"], "https://shop.test/x");
        assert_eq!(click.details["machine"], true);
        assert_eq!(click.details["user_agent"], "Mozilla/5.0");

        assert!(matches!(
            normalise(&sample("accepted", json!({}))),
            Item::Ignored(_)
        ));
        assert!(matches!(
            normalise(&sample("teleported", json!({}))),
            Item::Unmapped { .. }
        ));
        assert!(matches!(
            normalise(&json!({"event": "opened"})),
            Item::Unmapped { .. }
        ));
        // Without our variable, the message id still lets the operator resolve it.
        let mut bare = sample("opened", json!({}));
        bare.as_object_mut()
            .expect("object")
            .remove("user-variables");
        let opened = event(normalise(&bare));
        assert_eq!(opened.mailtrail_id, None);
        assert!(opened.provider_message_id.is_some());
    }
}
