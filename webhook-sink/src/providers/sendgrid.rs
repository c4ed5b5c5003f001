//! SendGrid Event Webhook: a JSON array of events; our `custom_args` come back as top-level
//! keys of each event. Identity: `sg_event_id` ("use for deduplication"); where it is missing,
//! the event's own fields.

use super::{
    BounceKind, Details, Item, MAILTRAIL_ID, ProviderEvent, mailtrail_id, text, unix_time,
};
use mailtrail_shared::history::EventType;
use serde_json::Value;

pub const PROVIDER: &str = "sendgrid";

/// The items of a verified body.
pub fn normalise(body: &[u8]) -> Result<Vec<Item>, String> {
    Ok(super::items_of(body)?.iter().map(normalise_one).collect())
}

fn normalise_one(event: &Value) -> Item {
    let Some(name) = text(event, "/event") else {
        return Item::unmapped("the event has no event field", event);
    };
    let Some(occurred_at) = unix_time(event.get("timestamp")) else {
        return Item::unmapped("the event has no timestamp", event);
    };
    let mut details = Details::new(name);
    details
        .copy("recipient", event, "/email")
        .copy("provider_event_id", event, "/sg_event_id")
        .copy("ip", event, "/ip")
        .copy("user_agent", event, "/useragent")
        .copy("url", event, "/url")
        .copy("reason", event, "/reason")
        .copy("status", event, "/status")
        .copy("smtp_response", event, "/response")
        .copy("attempt", event, "/attempt")
        .copy("bounce_type", event, "/type")
        .copy("bounce_classification", event, "/bounce_classification")
        .copy("category", event, "/category")
        .copy("tls", event, "/tls");
    // Apple Mail Privacy Protection and similar fetch pixels themselves; SendGrid says so.
    if let Some(machine) = event.get("sg_machine_open").and_then(Value::as_bool) {
        details.put("machine", machine);
    }
    let event_type = match name {
        "delivered" => EventType::Delivered,
        "deferred" => EventType::Deferred,
        "bounce" => {
            // `blocked` is SendGrid's soft bounce (reputation, content); `bounce` its hard one.
            let kind = match text(event, "/type") {
                Some("blocked") => BounceKind::Soft,
                Some("bounce") => BounceKind::Hard,
                _ => BounceKind::from_status(text(event, "/status").unwrap_or_default()),
            };
            details
                .put("bounce_kind", kind.as_str())
                .copy("diagnostic", event, "/reason");
            EventType::Bounced
        }
        "dropped" => EventType::Rejected,
        "open" => EventType::Opened,
        "click" => EventType::Clicked,
        "spamreport" => EventType::Complained,
        "unsubscribe" | "group_unsubscribe" => EventType::Unsubscribed,
        // SendGrid took the message (our `dispatched` says so); a resubscribe changes no email.
        "processed" | "group_resubscribe" => return Item::Ignored(format!("sendgrid {name}")),
        other => return Item::unmapped(format!("unknown SendGrid event {other:?}"), event),
    };
    let message_id = text(event, "/sg_message_id")
        .or_else(|| text(event, "/smtp-id"))
        .map(str::to_owned);
    let provider_event_id = match text(event, "/sg_event_id") {
        Some(id) => id.to_owned(),
        None => format!(
            "{name}:{}:{}:{}:{}",
            message_id.as_deref().unwrap_or_default(),
            text(event, "/email").unwrap_or_default(),
            occurred_at.timestamp(),
            text(event, "/url").unwrap_or_default()
        ),
    };
    Item::event(
        ProviderEvent {
            event_type,
            mailtrail_id: mailtrail_id(event.get(MAILTRAIL_ID)),
            provider_message_id: message_id,
            provider_event_id,
            occurred_at,
            details: details.into_map(),
        },
        event,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn the_vector_payload_and_a_mixed_batch() {
        let body = br#"[{"email":"hello@world.com","event":"dropped","reason":"Bounced Address","sg_event_id":"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA","sg_message_id":"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0","smtp-id":"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>","timestamp":1600112492}]"#;
        let items = normalise(body).expect("JSON");
        let Item::Event(dropped) = &items[0] else {
            panic!("mapped")
        };
        assert_eq!(dropped.event_type, EventType::Rejected);
        assert_eq!(
            dropped.provider_event_id,
            "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA"
        );
        assert_eq!(dropped.details["reason"], "Bounced Address");

        let id = Uuid::from_u128(5).to_string();
        let batch = format!(
            r#"[{{"event":"bounce","type":"bounce","status":"5.1.1","reason":"550 no such user","email":"a@x.test","timestamp":1700000000,"sg_event_id":"e1","mailtrail_id":"{id}"}},
                {{"event":"bounce","type":"blocked","status":"4.7.1","email":"a@x.test","timestamp":1700000001,"sg_event_id":"e2","sg_message_id":"abc.def"}},
                {{"event":"open","sg_machine_open":true,"useragent":"Mozilla","ip":"198.51.100.1","email":"a@x.test","timestamp":1700000002,"sg_event_id":"e3","sg_message_id":"abc.def"}},
                {{"event":"click","url":"https://x.test/","email":"a@x.test","timestamp":1700000003,"sg_message_id":"abc.def"}},
                {{"event":"processed","email":"a@x.test","timestamp":1700000000}},
                {{"event":"warp","timestamp":1700000000}},
                "not an object"]"#
        );
        let items = normalise(batch.as_bytes()).expect("JSON");
        let Item::Event(hard) = &items[0] else {
            panic!("mapped")
        };
        assert_eq!(hard.event_type, EventType::Bounced);
        assert_eq!(hard.details["bounce_kind"], "hard");
        assert_eq!(hard.mailtrail_id, Some(Uuid::from_u128(5)));
        let Item::Event(soft) = &items[1] else {
            panic!("mapped")
        };
        assert_eq!(soft.details["bounce_kind"], "soft");
        let Item::Event(open) = &items[2] else {
            panic!("mapped")
        };
        assert_eq!(open.event_type, EventType::Opened);
        assert_eq!(open.details["machine"], true);
        let Item::Event(click) = &items[3] else {
            panic!("mapped")
        };
        assert_eq!(click.details["url"], "https://x.test/");
        // No sg_event_id: a deterministic identity from the event's own fields.
        assert_eq!(
            click.provider_event_id,
            "click:abc.def:a@x.test:1700000003:https://x.test/"
        );
        assert!(matches!(items[4], Item::Ignored(_)));
        assert!(matches!(items[5], Item::Unmapped { .. }));
        assert!(matches!(items[6], Item::Unmapped { .. }));
    }
}
