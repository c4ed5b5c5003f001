//! The outcome of one send attempt and the tracking event that reports it.

use chrono::{DateTime, Utc};
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::tracking::{TRACKING_EVENT_VERSION, TrackingEvent};

pub const SOURCE: &str = "dispatcher";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kind: OutcomeKind,
    /// The provider the attempt went to.
    pub provider: &'static str,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeKind {
    /// The provider took the message.
    Dispatched {
        reply: String,
        provider_message_id: Option<String>,
    },
    /// Not sent now; the job will be tried again. `provider_down`: the provider or our account
    /// was at fault, so the wait spends no attempt.
    Deferred { reason: String, provider_down: bool },
    /// The provider says the mailbox does not exist: a hard bounce, no more tries.
    Bounced { reason: String },
    /// The message or recipient is at fault, or (`exhausted`) the last attempt or the maximum
    /// age passed: no more tries. An exhausted job is also set aside.
    Failed { reason: String, exhausted: bool },
}

impl Outcome {
    pub fn new(kind: OutcomeKind, provider: &'static str) -> Outcome {
        Outcome {
            kind,
            provider,
            at: Utc::now(),
        }
    }

    pub fn event_type(&self) -> EventType {
        match self.kind {
            OutcomeKind::Dispatched { .. } => EventType::Dispatched,
            OutcomeKind::Deferred { .. } => EventType::Deferred,
            OutcomeKind::Bounced { .. } => EventType::Bounced,
            OutcomeKind::Failed { .. } => EventType::Failed,
        }
    }

    pub fn is_deferred(&self) -> bool {
        matches!(self.kind, OutcomeKind::Deferred { .. })
    }

    /// The tracking event reporting this outcome of `job`'s attempt. Its id is derived from the
    /// job, attempt and outcome, so a republished event is recorded once.
    pub fn event(&self, job: &DispatchJob, retry_in_secs: Option<u32>) -> TrackingEvent {
        let event_type = self.event_type();
        let (details, provider_message_id) = match &self.kind {
            OutcomeKind::Dispatched {
                reply,
                provider_message_id,
            } => (
                serde_json::json!({"reply": reply, "attempt": job.attempt}),
                provider_message_id.clone(),
            ),
            OutcomeKind::Deferred {
                reason,
                provider_down,
            } => (
                serde_json::json!({
                    "reason": reason,
                    "attempt": job.attempt,
                    "retry_in_secs": retry_in_secs,
                    "provider_down": provider_down,
                }),
                None,
            ),
            OutcomeKind::Bounced { reason } => (
                serde_json::json!({
                    "reason": reason,
                    "attempt": job.attempt,
                    "bounce_kind": "hard",
                    "diagnostic": reason,
                }),
                None,
            ),
            OutcomeKind::Failed { reason, exhausted } => (
                serde_json::json!({"reason": reason, "attempt": job.attempt, "exhausted": exhausted}),
                None,
            ),
        };
        TrackingEvent {
            version: TRACKING_EVENT_VERSION,
            event_id: ids::dispatch_outcome_event_id(job.job_id, job.attempt, event_type.as_str()),
            email_id: Some(job.email_id),
            tenant: job.tenant.clone(),
            event_type,
            occurred_at: self.at,
            source: SOURCE.to_owned(),
            provider: Some(self.provider.to_owned()),
            provider_message_id,
            provider_event_id: None,
            details,
        }
    }
}
