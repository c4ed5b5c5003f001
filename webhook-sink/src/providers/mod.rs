//! Normalization: each provider's verified payload becomes mailtrail events, one per provider
//! event (a batch becomes several). The provider's own name, event id, time, recipient, user
//! agent, IP and machine flag are kept in `details`; see docs/webhooks.md for every mapping.

pub mod mailgun;
pub mod postmark;
pub mod resend;
pub mod sendgrid;
pub mod ses;
pub mod standard;

use chrono::{DateTime, TimeZone, Utc};
use mailtrail_shared::history::EventType;
use mailtrail_shared::tracking::{TRACKING_EVENT_VERSION, TrackingEvent};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The metadata key under which the dispatcher stores our email id with every provider.
pub const MAILTRAIL_ID: &str = "mailtrail_id";
/// The header the dispatcher puts on every message.
pub const MAILTRAIL_ID_HEADER: &str = "X-Mailtrail-Id";

/// One provider event, normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderEvent {
    pub event_type: EventType,
    /// Our email id, read back from the provider's metadata (or header).
    pub mailtrail_id: Option<Uuid>,
    /// The provider's message id, for the operator to resolve when `mailtrail_id` is missing.
    pub provider_message_id: Option<String>,
    /// The provider event's identity: the same event delivered again carries the same one.
    pub provider_event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub details: Map<String, Value>,
}

/// One item of a verified request.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event(ProviderEvent),
    /// A known event type mailtrail does not record (our own `dispatched` already says it, or it
    /// is not about an email): acknowledged, counted, not published.
    Ignored(String),
    /// Cannot be mapped: set aside alone, with its raw bytes and why.
    Unmapped {
        detail: String,
        raw: Vec<u8>,
    },
}

/// Why an event naming neither our id nor the provider's message id is set aside.
pub const NO_EMAIL_REFERENCE: &str =
    "the event names neither our mailtrail_id nor the provider's message id";

impl Item {
    pub fn unmapped(detail: impl Into<String>, raw: &Value) -> Item {
        Item::Unmapped {
            detail: detail.into(),
            raw: serde_json::to_vec(raw).unwrap_or_default(),
        }
    }

    /// `event`, unless it can never be matched to an email: then it is set aside here with its
    /// raw bytes (published, the operator would only refuse it as an invalid tracking event).
    pub fn event(event: ProviderEvent, raw: &Value) -> Item {
        if event.mailtrail_id.is_none() && event.provider_message_id.is_none() {
            return Item::unmapped(NO_EMAIL_REFERENCE, raw);
        }
        Item::Event(event)
    }
}

impl ProviderEvent {
    /// The tracking event published for it. Its id is derived from the provider event's
    /// identity within the credential's tenant scope, so a repeat maps to the same id and the
    /// operator records it once — and a tenant holding its own key cannot claim another
    /// tenant's event ids (a standard sender chooses its own ids; any key holder can sign any
    /// body).
    pub fn into_tracking(self, provider: &str, tenant: &str) -> TrackingEvent {
        TrackingEvent {
            version: TRACKING_EVENT_VERSION,
            event_id: Uuid::new_v5(
                &mailtrail_shared::ids::NAMESPACE,
                format!("webhook:{provider}:{tenant}:{}", self.provider_event_id).as_bytes(),
            ),
            email_id: self.mailtrail_id,
            tenant: tenant.to_owned(),
            event_type: self.event_type,
            occurred_at: self.occurred_at,
            source: format!("webhook:{provider}"),
            provider: Some(provider.to_owned()),
            provider_message_id: self.provider_message_id,
            provider_event_id: Some(self.provider_event_id),
            details: Value::Object(self.details),
        }
    }
}

/// `details` under construction: only present, non-empty values are kept.
#[derive(Debug, Default)]
pub struct Details(Map<String, Value>);

impl Details {
    pub fn new(provider_event: &str) -> Details {
        let mut details = Details::default();
        details.put("provider_event", provider_event);
        details
    }

    pub fn put(&mut self, key: &str, value: impl Into<Value>) -> &mut Details {
        let value = value.into();
        let empty = match &value {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !empty {
            self.0.insert(key.to_owned(), value);
        }
        self
    }

    /// `put` of a value found at `pointer` in `source`, if any.
    pub fn copy(&mut self, key: &str, source: &Value, pointer: &str) -> &mut Details {
        if let Some(value) = source.pointer(pointer) {
            self.put(key, value.clone());
        }
        self
    }

    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

/// How final a bounce is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceKind {
    Hard,
    Soft,
    Undetermined,
}

impl BounceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceKind::Hard => "hard",
            BounceKind::Soft => "soft",
            BounceKind::Undetermined => "undetermined",
        }
    }

    /// From an enhanced status code (`5.1.1`) or an SMTP reply code (`550`).
    pub fn from_status(status: &str) -> BounceKind {
        match status.trim().chars().next() {
            Some('5') => BounceKind::Hard,
            Some('4') => BounceKind::Soft,
            _ => BounceKind::Undetermined,
        }
    }
}

/// A string field, trimmed, or `None` when absent or empty.
pub fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Our id, when a metadata value holds one.
pub fn mailtrail_id(value: Option<&Value>) -> Option<Uuid> {
    match value? {
        Value::String(s) => Uuid::parse_str(s.trim()).ok(),
        // Some providers give metadata back as a list of values (SES tags).
        Value::Array(values) => values.iter().find_map(|v| mailtrail_id(Some(v))),
        _ => None,
    }
}

/// Our id from a list of `{name, value}` headers (any case of the name).
pub fn mailtrail_id_from_headers(headers: Option<&Value>) -> Option<Uuid> {
    headers?.as_array()?.iter().find_map(|header| {
        let name = header.get("name").and_then(Value::as_str)?;
        if name.eq_ignore_ascii_case(MAILTRAIL_ID_HEADER) {
            mailtrail_id(header.get("value"))
        } else {
            None
        }
    })
}

/// Unix seconds (integer, float, or a string of either) as a time.
pub fn unix_time(value: Option<&Value>) -> Option<DateTime<Utc>> {
    let seconds = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    let whole = seconds.trunc() as i64;
    let nanos = ((seconds - seconds.trunc()) * 1e9)
        .round()
        .min(999_999_999.0) as u32;
    Utc.timestamp_opt(whole, nanos).single()
}

/// An RFC 3339 time at `pointer`.
pub fn rfc3339(value: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    let text = text(value, pointer)?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A body that is one JSON object or a list of them, as a list.
pub fn items_of(body: &[u8]) -> Result<Vec<Value>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    Ok(match value {
        Value::Array(items) => items,
        single => vec![single],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Fuzzing found these (fuzz/, docs/hostile-input.md): a verified event that names neither
    /// our id nor the provider's message id was published, and the operator set it aside as an
    /// invalid tracking event. It is set aside here, with its raw bytes, for every provider.
    #[test]
    fn events_naming_no_email_are_set_aside_not_published() {
        fn set_aside(provider: &str, items: Vec<Item>) {
            assert_eq!(items.len(), 1, "{provider}: {items:?}");
            match &items[0] {
                Item::Unmapped { detail, raw } => {
                    assert_eq!(detail, NO_EMAIL_REFERENCE, "{provider}");
                    assert!(!raw.is_empty(), "{provider}: the raw event is kept");
                }
                other => panic!("{provider}: published {other:?}"),
            }
        }
        // The fuzzer's Mailgun input: a failure without message headers or user variables.
        let mailgun_event = json!({"event": "failed", "id": "mg-1", "timestamp": 1796119200.25,
            "recipient": "ann@example.com", "mesn": "bounce"});
        set_aside("mailgun", vec![mailgun::normalise(&mailgun_event)]);
        // The fuzzer's SES input: the `mail` object misspelt, so no tags and no messageId.
        let ses_event = r#"{"eventType": "Bounce", "maiv": {"messageId": "x"},
            "bounce": {"bounceType": "Permanent", "timestamp": "2026-12-01T10:00:01.000Z",
            "bouncedRecipients": [{"emailAddress": "ann@example.com"}]}}"#;
        set_aside("ses", ses::normalise("22b80b92", ses_event));
        let sendgrid = br#"[{"event": "delivered", "timestamp": 1796119200, "email": "a@x.test"}]"#;
        set_aside("sendgrid", sendgrid::normalise(sendgrid).expect("JSON"));
        let postmark = br#"{"RecordType": "Delivery", "DeliveredAt": "2026-12-01T10:00:00Z"}"#;
        set_aside(
            "postmark",
            postmark::normalise(postmark, Some("t")).expect("JSON"),
        );
        let resend = br#"{"type": "email.delivered", "created_at": "2026-12-01T10:00:01Z",
            "data": {"to": ["a@x.test"]}}"#;
        set_aside("resend", resend::normalise(resend, "msg_1").expect("JSON"));
    }

    #[test]
    fn details_keep_only_what_is_there() {
        let mut d = Details::new("open");
        d.put("ip", "").put("url", Value::Null).put("machine", true);
        d.copy("user_agent", &json!({"ua": "Mozilla"}), "/ua")
            .copy("missing", &json!({}), "/nope");
        let map = d.into_map();
        assert_eq!(
            Value::Object(map),
            json!({"provider_event": "open", "machine": true, "user_agent": "Mozilla"})
        );
    }

    #[test]
    fn times_ids_and_kinds() {
        let t = unix_time(Some(&json!(1529006854.329574))).expect("time");
        assert_eq!(t.timestamp(), 1529006854);
        assert_eq!(t.timestamp_subsec_micros(), 329574);
        assert_eq!(
            unix_time(Some(&json!("1600112492"))).map(|t| t.timestamp()),
            Some(1600112492)
        );
        assert_eq!(unix_time(Some(&json!(-1))), None);
        let id = Uuid::from_u128(42);
        assert_eq!(mailtrail_id(Some(&json!(id.to_string()))), Some(id));
        assert_eq!(mailtrail_id(Some(&json!([id.to_string()]))), Some(id));
        assert_eq!(mailtrail_id(Some(&json!("nope"))), None);
        assert_eq!(
            mailtrail_id_from_headers(Some(
                &json!([{"name": "x-mailtrail-id", "value": id.to_string()}])
            )),
            Some(id)
        );
        assert_eq!(BounceKind::from_status("5.1.1"), BounceKind::Hard);
        assert_eq!(BounceKind::from_status("421"), BounceKind::Soft);
        assert_eq!(BounceKind::from_status(""), BounceKind::Undetermined);
        let postmark = json!({"t": "2014-08-01T13:28:10.2735393-04:00"});
        assert_eq!(
            rfc3339(&postmark, "/t").map(|t| t.to_rfc3339()),
            Some("2014-08-01T17:28:10.273539300+00:00".into())
        );
    }
}
