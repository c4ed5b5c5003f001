//! The outcome of one send attempt and the tracking event that reports it.

use chrono::{DateTime, Utc};
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::tracking::{TRACKING_EVENT_VERSION, TrackingEvent};

pub const SOURCE: &str = "dispatcher";
pub const PROVIDER: &str = "smtp";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server took the message.
    Dispatched {
        reply: String,
        queue_id: Option<String>,
        at: DateTime<Utc>,
    },
    /// A transient failure: the job will be tried again.
    Deferred { reason: String, at: DateTime<Utc> },
    /// A permanent failure, or the last attempt failed: no more tries.
    Failed { reason: String, at: DateTime<Utc> },
}

impl Outcome {
    pub fn event_type(&self) -> EventType {
        match self {
            Outcome::Dispatched { .. } => EventType::Dispatched,
            Outcome::Deferred { .. } => EventType::Deferred,
            Outcome::Failed { .. } => EventType::Failed,
        }
    }

    /// The tracking event reporting this outcome of `job`'s attempt. Its id is derived from the
    /// job, attempt and outcome, so a republished event is recorded once.
    pub fn event(&self, job: &DispatchJob, retry_in_secs: Option<u32>) -> TrackingEvent {
        let event_type = self.event_type();
        let (at, details, provider_message_id) = match self {
            Outcome::Dispatched {
                reply,
                queue_id,
                at,
            } => (
                *at,
                serde_json::json!({"reply": reply, "attempt": job.attempt}),
                queue_id.clone(),
            ),
            Outcome::Deferred { reason, at } => (
                *at,
                serde_json::json!({
                    "reason": reason,
                    "attempt": job.attempt,
                    "retry_in_secs": retry_in_secs,
                }),
                None,
            ),
            Outcome::Failed { reason, at } => (
                *at,
                serde_json::json!({"reason": reason, "attempt": job.attempt}),
                None,
            ),
        };
        TrackingEvent {
            version: TRACKING_EVENT_VERSION,
            event_id: ids::dispatch_outcome_event_id(job.job_id, job.attempt, event_type.as_str()),
            email_id: Some(job.email_id),
            tenant: job.tenant.clone(),
            event_type,
            occurred_at: at,
            source: SOURCE.to_owned(),
            provider: Some(PROVIDER.to_owned()),
            provider_message_id,
            provider_event_id: None,
            details,
        }
    }
}
