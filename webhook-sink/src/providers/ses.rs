//! Amazon SES events, delivered by SNS: the SES event is a JSON string in the SNS `Message`.
//! Configuration-set events (`eventType`) and identity notifications (`notificationType`) are
//! both read. A bounce, complaint, delivery or delay may name several recipients: one event
//! each. Identity: the SNS `MessageId` (the same on every retry) and the recipient's position.

use super::{
    BounceKind, Details, Item, MAILTRAIL_ID, ProviderEvent, mailtrail_id,
    mailtrail_id_from_headers, rfc3339, text,
};
use mailtrail_shared::history::EventType;
use serde_json::Value;

pub const PROVIDER: &str = "ses";

/// The events of one verified SNS notification.
pub fn normalise(sns_message_id: &str, message: &str) -> Vec<Item> {
    let event: Value = match serde_json::from_str(message) {
        Ok(event) => event,
        Err(e) => {
            return vec![Item::Unmapped {
                detail: format!("the SNS Message is not an SES event: {e}"),
                raw: message.as_bytes().to_vec(),
            }];
        }
    };
    let Some(name) = text(&event, "/eventType").or_else(|| text(&event, "/notificationType"))
    else {
        return vec![Item::unmapped("the SES event has no eventType", &event)];
    };
    // The event's own object: lower camel case of its type ("Rendering Failure" → failure).
    let (event_type, key, recipients_key) = match name {
        "Delivery" => (EventType::Delivered, "delivery", Some("recipients")),
        "Bounce" => (EventType::Bounced, "bounce", Some("bouncedRecipients")),
        "Complaint" => (
            EventType::Complained,
            "complaint",
            Some("complainedRecipients"),
        ),
        "DeliveryDelay" => (
            EventType::Deferred,
            "deliveryDelay",
            Some("delayedRecipients"),
        ),
        "Open" => (EventType::Opened, "open", None),
        "Click" => (EventType::Clicked, "click", None),
        "Reject" => (EventType::Rejected, "reject", None),
        "Rendering Failure" => (EventType::Failed, "failure", None),
        "Subscription" => (EventType::Unsubscribed, "subscription", None),
        // SES accepted the message: our `dispatched` says so.
        "Send" => return vec![Item::Ignored("ses Send".into())],
        other => {
            return vec![Item::unmapped(
                format!("unknown SES event type {other:?}"),
                &event,
            )];
        }
    };
    let object = event.get(key).cloned().unwrap_or(Value::Null);
    if name == "Subscription"
        && object.pointer("/newTopicPreferences/unsubscribeAll") != Some(&Value::Bool(true))
    {
        return vec![Item::Ignored(
            "ses Subscription without unsubscribeAll".into(),
        )];
    }
    if name == "Complaint" && text(&object, "/complaintFeedbackType") == Some("not-spam") {
        return vec![Item::Ignored("ses Complaint marked not-spam".into())];
    }
    let Some(occurred_at) =
        rfc3339(&object, "/timestamp").or_else(|| rfc3339(&event, "/mail/timestamp"))
    else {
        return vec![Item::unmapped("the SES event has no timestamp", &event)];
    };
    let mail = event.get("mail").cloned().unwrap_or(Value::Null);
    let our_id = mailtrail_id(mail.pointer(&format!("/tags/{MAILTRAIL_ID}")))
        .or_else(|| mailtrail_id_from_headers(mail.get("headers")));
    let message_id = text(&mail, "/messageId").map(str::to_owned);
    if our_id.is_none() && message_id.is_none() {
        return vec![Item::unmapped(super::NO_EMAIL_REFERENCE, &event)];
    }

    let mut base = Details::new(name);
    base.copy("ip", &object, "/ipAddress")
        .copy("user_agent", &object, "/userAgent")
        .copy("url", &object, "/link")
        .copy("reason", &object, "/reason")
        .copy("reason", &object, "/errorMessage")
        .copy("reporting_mta", &object, "/reportingMTA")
        .copy("smtp_response", &object, "/smtpResponse")
        .copy("feedback_id", &object, "/feedbackId")
        .copy("bounce_type", &object, "/bounceType")
        .copy("bounce_subtype", &object, "/bounceSubType")
        .copy("complaint_type", &object, "/complaintFeedbackType")
        .copy("delay_type", &object, "/delayType");
    if event_type == EventType::Bounced {
        let kind = match text(&object, "/bounceType") {
            Some("Permanent") => BounceKind::Hard,
            Some("Transient") => BounceKind::Soft,
            _ => BounceKind::Undetermined,
        };
        base.put("bounce_kind", kind.as_str());
    }
    let base = base.into_map();

    // (recipient, its entry) for per-recipient events; the message's first destination else.
    let recipients: Vec<(Option<String>, Value)> = match recipients_key {
        Some(list_key) => object
            .get(list_key)
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|entry| match entry {
                        Value::String(address) => (Some(address.clone()), Value::Null),
                        other => (
                            text(other, "/emailAddress").map(str::to_owned),
                            other.clone(),
                        ),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => vec![(
            text(&mail, "/destination/0").map(str::to_owned),
            Value::Null,
        )],
    };
    if recipients.is_empty() {
        return vec![Item::unmapped("the SES event names no recipient", &event)];
    }
    recipients
        .into_iter()
        .enumerate()
        .map(|(index, (recipient, entry))| {
            let mut details = Details(base.clone());
            details
                .put("recipient", recipient)
                .copy("status", &entry, "/status")
                .copy("diagnostic", &entry, "/diagnosticCode")
                .copy("action", &entry, "/action");
            Item::Event(ProviderEvent {
                event_type,
                mailtrail_id: our_id,
                provider_message_id: message_id.clone(),
                provider_event_id: format!("{sns_message_id}:{index}"),
                occurred_at,
                details: details.into_map(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn events(items: Vec<Item>) -> Vec<ProviderEvent> {
        items
            .into_iter()
            .map(|i| match i {
                Item::Event(e) => e,
                other => panic!("not an event: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn bounces_fan_out_per_recipient_and_tags_carry_our_id() {
        let id = Uuid::from_u128(4);
        let message = format!(
            r#"{{"eventType":"Bounce","bounce":{{"bounceType":"Permanent","bounceSubType":"General","bouncedRecipients":[{{"emailAddress":"a@x.test","action":"failed","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}},{{"emailAddress":"b@x.test","status":"5.1.1"}}],"timestamp":"2017-08-05T00:41:02.669Z","feedbackId":"f1","reportingMTA":"dsn; mta.example.com"}},"mail":{{"timestamp":"2017-08-05T00:40:02.012Z","messageId":"EXAMPLE7c191be45","destination":["a@x.test","b@x.test"],"tags":{{"mailtrail_id":["{id}"]}}}}}}"#
        );
        let bounced = events(normalise("sns-1", &message));
        assert_eq!(bounced.len(), 2);
        assert_eq!(bounced[0].event_type, EventType::Bounced);
        assert_eq!(bounced[0].details["bounce_kind"], "hard");
        assert_eq!(bounced[0].details["recipient"], "a@x.test");
        assert_eq!(
            bounced[0].details["diagnostic"],
            "smtp; 550 5.1.1 user unknown"
        );
        assert_eq!(bounced[1].provider_event_id, "sns-1:1");
        assert_eq!(bounced[0].mailtrail_id, Some(id));
        assert_eq!(
            bounced[0].provider_message_id.as_deref(),
            Some("EXAMPLE7c191be45")
        );
    }

    #[test]
    fn opens_clicks_deliveries_and_the_rest() {
        let click = events(normalise(
            "sns-2",
            r#"{"eventType":"Click","click":{"ipAddress":"192.0.2.1","link":"https://x.test/","timestamp":"2017-08-09T23:51:25.570Z","userAgent":"Mozilla"},"mail":{"messageId":"m","destination":["a@x.test"],"headers":[{"name":"X-Mailtrail-Id","value":"00000000-0000-0000-0000-000000000004"}]}}"#,
        ));
        assert_eq!(click[0].event_type, EventType::Clicked);
        assert_eq!(click[0].details["url"], "https://x.test/");
        assert_eq!(click[0].details["recipient"], "a@x.test");
        assert_eq!(click[0].mailtrail_id, Some(Uuid::from_u128(4)));
        let delivery = events(normalise(
            "sns-3",
            r#"{"notificationType":"Delivery","delivery":{"timestamp":"2017-08-09T23:51:25.570Z","recipients":["a@x.test"],"smtpResponse":"250 ok"},"mail":{"messageId":"m"}}"#,
        ));
        assert_eq!(delivery[0].event_type, EventType::Delivered);
        assert_eq!(delivery[0].details["recipient"], "a@x.test");
        assert!(matches!(
            normalise("sns-4", r#"{"eventType":"Send","send":{},"mail":{}}"#)[0],
            Item::Ignored(_)
        ));
        assert!(matches!(
            normalise("sns-5", r#"{"eventType":"Teleport","mail":{}}"#)[0],
            Item::Unmapped { .. }
        ));
        assert!(matches!(
            normalise("sns-6", "not json")[0],
            Item::Unmapped { .. }
        ));
    }
}
