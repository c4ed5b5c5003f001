//! The tracking event: what the dispatcher and the webhook sink publish to the `tracking` queue
//! and the operator records in an email's history. Internal contract, versioned like the public
//! one so services can be upgraded one at a time.

use crate::history::EventType;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const TRACKING_EVENT_VERSION: u32 = 1;

/// The `tenant` of an event reported under a credential valid for every tenant (a webhook
/// signing key not tied to one tenant). Not a valid tenant name, so it cannot be confused with
/// one.
pub const ANY_TENANT: &str = "*";

/// Event types other services may report. `accepted`, `scheduled`, `queued` and `cancelled` are
/// the operator's own and are refused on the tracking queue.
pub const REPORTABLE: &[EventType] = &[
    EventType::Deferred,
    EventType::Dispatched,
    EventType::Delivered,
    EventType::Opened,
    EventType::Clicked,
    EventType::Unsubscribed,
    EventType::Failed,
    EventType::Rejected,
    EventType::Bounced,
    EventType::Complained,
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingEvent {
    pub version: u32,
    /// De-duplication key: the same event republished carries the same id.
    pub event_id: Uuid,
    /// Our email id (`mailtrail_id`), when the reporter knows it. Without it the operator
    /// resolves the email from `provider` and `provider_message_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_id: Option<Uuid>,
    /// The tenant the reporter speaks for: the email's tenant (dispatcher), or the tenant of the
    /// webhook credential that verified the report, or [`ANY_TENANT`]. The operator records the
    /// event only if the email belongs to it.
    pub tenant: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub occurred_at: DateTime<Utc>,
    /// `dispatcher` or `webhook:<provider>`.
    pub source: String,
    /// `smtp`, `mailgun`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The provider's id of the message (SMTP: the queue id in the 250 reply, where given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    /// The provider's id of this event, unique per provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_event_id: Option<String>,
    /// Type-specific facts: the SMTP reply, the attempt number, the reason.
    #[serde(default)]
    pub details: serde_json::Value,
}

impl TrackingEvent {
    /// May a report with this `tenant` speak for an email of `email_tenant`?
    pub fn may_speak_for(&self, email_tenant: &str) -> bool {
        self.tenant == ANY_TENANT || self.tenant == email_tenant
    }

    /// Checks what serde cannot: the version and that the type may come from outside.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != TRACKING_EVENT_VERSION {
            return Err(format!(
                "tracking event version {} is not supported (expected {TRACKING_EVENT_VERSION})",
                self.version
            ));
        }
        if !REPORTABLE.contains(&self.event_type) {
            return Err(format!(
                "{} events are recorded by the operator itself, not reported",
                self.event_type.as_str()
            ));
        }
        if self.source.is_empty() || self.source.len() > 64 {
            return Err("source must be 1 to 64 characters".into());
        }
        if self.email_id.is_none()
            && (self.provider.is_none() || self.provider_message_id.is_none())
        {
            return Err(
                "an event without email_id must name its provider and provider_message_id".into(),
            );
        }
        Ok(())
    }
}

/// The form of a provider's message id under which it is stored and looked up, so the id the
/// send API returned and the one a webhook carries meet: Mailgun's API answers `<id@host>`
/// while its webhooks carry `id@host`; SendGrid's per-recipient `sg_message_id` is the
/// request's `X-Message-Id` followed by `.` and a suffix.
pub fn normalize_provider_message_id(provider: &str, id: &str) -> String {
    let id = id.trim();
    let id = id
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or(id);
    match provider {
        "sendgrid" => id.split('.').next().unwrap_or(id).to_owned(),
        _ => id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: EventType) -> TrackingEvent {
        TrackingEvent {
            version: 1,
            event_id: Uuid::from_u128(1),
            email_id: Some(Uuid::from_u128(2)),
            tenant: "acme".into(),
            event_type,
            occurred_at: Utc::now(),
            source: "dispatcher".into(),
            provider: Some("smtp".into()),
            provider_message_id: None,
            provider_event_id: None,
            details: serde_json::json!({"attempt": 1}),
        }
    }

    #[test]
    fn round_trips_and_refuses_operator_types_and_unknown_fields() {
        let e = event(EventType::Dispatched);
        let json = serde_json::to_string(&e).expect("serialises");
        assert!(json.contains(r#""type":"dispatched""#), "{json}");
        assert_eq!(
            serde_json::from_str::<TrackingEvent>(&json).expect("parses"),
            e
        );
        assert!(e.validate().is_ok());
        assert!(event(EventType::Accepted).validate().is_err());
        assert!(event(EventType::Queued).validate().is_err());
        let extra = json.replacen('{', r#"{"surprise":1,"#, 1);
        assert!(serde_json::from_str::<TrackingEvent>(&extra).is_err());
        // Without our id, the provider's message id must say which email it is.
        let anonymous = TrackingEvent {
            email_id: None,
            ..event(EventType::Delivered)
        };
        assert!(anonymous.validate().is_err());
        let resolvable = TrackingEvent {
            provider_message_id: Some("abc".into()),
            ..anonymous
        };
        assert!(resolvable.validate().is_ok());
    }

    #[test]
    fn provider_message_ids_meet_in_one_form() {
        assert_eq!(
            normalize_provider_message_id(
                "mailgun",
                "<20111114174239.25659.5817@samples.mailgun.org>"
            ),
            normalize_provider_message_id(
                "mailgun",
                "20111114174239.25659.5817@samples.mailgun.org"
            )
        );
        assert_eq!(
            normalize_provider_message_id(
                "sendgrid",
                "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"
            ),
            "LRzXl_NHStOGhQ4kofSm_A"
        );
        assert_eq!(
            normalize_provider_message_id("sendgrid", "LRzXl_NHStOGhQ4kofSm_A"),
            "LRzXl_NHStOGhQ4kofSm_A"
        );
        // Elsewhere dots are part of the id.
        assert_eq!(normalize_provider_message_id("postmark", "a.b"), "a.b");
    }
}
