//! The dispatch step: one job delivery in, its outcome sent and reported out. Separate from the
//! consume loop so tests can drive it.

use crate::config::Schedule;
use crate::memory::{Begin, JobMemory, wait_for};
use crate::outcome::{Outcome, OutcomeKind};
use crate::providers::SendError;
use crate::routing::Router;
use chrono::Utc;
use lapin::types::{AMQPValue, FieldTable};
use mailtrail_broker::{Incoming, OutgoingMessage, Publisher, SetAside, json_properties};
use mailtrail_shared::dispatch::{DISPATCH_JOB_VERSION, DispatchJob};
use mailtrail_shared::headers;
use mailtrail_shared::topology::{Queue, Topology};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const SERVICE: &str = "dispatcher";

/// What became of one delivery. In every case the caller acks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Sent (or failed/deferred) now, and the outcome reported.
    Sent(Outcome),
    /// A redelivery of an attempt already made: its outcome was reported again, nothing sent.
    Replayed(Outcome),
    /// Not a dispatch job: set aside with a reason.
    SetAside(String),
}

/// When to try again and when to give up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub schedule: Schedule,
    pub max_attempts: u32,
    pub max_age: Duration,
}

pub struct Dispatcher {
    pub router: Arc<Router>,
    pub publisher: Publisher,
    pub topology: Topology,
    pub memory: Arc<JobMemory>,
    pub retry: RetryPolicy,
    /// Per provider name: is it answering (false after the provider or our account was at
    /// fault, true again after a success)? Exposed on `/readyz`.
    pub provider_up: Arc<HashMap<&'static str, Arc<AtomicBool>>>,
}

impl Dispatcher {
    /// Handles one delivery. `Ok` means everything it promised is confirmed by the broker and
    /// the delivery may be acked; `Err` means the broker connection failed and the delivery must
    /// stay unacked (a redelivery replays the outcome remembered here).
    pub async fn handle(&self, delivery: &Incoming) -> anyhow::Result<Handled> {
        let job = match serde_json::from_slice::<DispatchJob>(&delivery.body) {
            Ok(job) if job.version == DISPATCH_JOB_VERSION => job,
            Ok(job) => {
                return self
                    .set_aside(
                        delivery,
                        "unsupported_version",
                        &format!("dispatch job version {} is not supported", job.version),
                    )
                    .await;
            }
            Err(error) => {
                return self
                    .set_aside(
                        delivery,
                        "invalid_job",
                        &format!("not a dispatch job: {error}"),
                    )
                    .await;
            }
        };
        let (outcome, replayed) = match self.memory.begin((job.job_id, job.attempt)) {
            Begin::Done(outcome) => (outcome, true),
            Begin::InFlight(receiver) => match wait_for(receiver).await {
                Some(outcome) => (outcome, true),
                None => anyhow::bail!("the first delivery of this job was abandoned"),
            },
            Begin::Fresh(slot) => {
                let outcome = self.attempt(&job).await;
                // Remember before reporting: if reporting fails, the redelivery must not send
                // again.
                self.memory.complete(slot, outcome.clone());
                (outcome, false)
            }
        };
        self.report(delivery, &job, &outcome).await?;
        Ok(if replayed {
            Handled::Replayed(outcome)
        } else {
            Handled::Sent(outcome)
        })
    }

    async fn attempt(&self, job: &DispatchJob) -> Outcome {
        let provider = self.router.for_tenant(&job.tenant);
        let name = provider.name();
        let result = provider.send(job).await;
        self.note_provider(name, &result);
        let too_old = job.first_attempt_at.is_some_and(|first| {
            (Utc::now() - first).to_std().unwrap_or_default() > self.retry.max_age
        });
        let kind = match result {
            Ok(sent) => OutcomeKind::Dispatched {
                reply: sent.reply,
                provider_message_id: sent.provider_message_id,
            },
            Err(SendError::Rejected {
                reason,
                mailbox_unknown: true,
            }) => OutcomeKind::Bounced { reason },
            Err(SendError::Rejected { reason, .. }) => OutcomeKind::Failed {
                reason,
                exhausted: false,
            },
            Err(error) if too_old => OutcomeKind::Failed {
                reason: format!(
                    "gave up: older than {} s (MAILTRAIL_RETRY_MAX_AGE); last: {}",
                    self.retry.max_age.as_secs(),
                    error.reason()
                ),
                exhausted: true,
            },
            Err(SendError::ProviderDown(reason)) => OutcomeKind::Deferred {
                reason,
                provider_down: true,
            },
            Err(SendError::Transient(reason))
                if job.counted_attempts() >= self.retry.max_attempts =>
            {
                OutcomeKind::Failed {
                    reason: format!(
                        "gave up after {} attempts (MAILTRAIL_MAX_ATTEMPTS); last: {reason}",
                        job.counted_attempts()
                    ),
                    exhausted: true,
                }
            }
            Err(SendError::Transient(reason)) => OutcomeKind::Deferred {
                reason,
                provider_down: false,
            },
        };
        Outcome::new(kind, name)
    }

    fn note_provider(
        &self,
        name: &'static str,
        result: &Result<crate::providers::Sent, SendError>,
    ) {
        let Some(up) = self.provider_up.get(name) else {
            return;
        };
        match result {
            Err(SendError::ProviderDown(reason)) => {
                if up.swap(false, Ordering::Relaxed) {
                    tracing::error!(
                        provider = name,
                        reason,
                        "the provider refuses us (bad or revoked key, suspended account, \
                         authentication): mail waits and is retried until it is fixed"
                    );
                }
            }
            Ok(_) | Err(SendError::Rejected { .. }) => {
                if !up.swap(true, Ordering::Relaxed) {
                    tracing::info!(provider = name, "the provider takes mail again");
                }
            }
            Err(SendError::Transient(_)) => {}
        }
    }

    /// The wait before the next attempt of a deferred `job`: the tier of its counted attempts;
    /// a wait caused by the provider being down always takes the first tier, so mail flows soon
    /// after the fault is fixed.
    fn delay_after(&self, job: &DispatchJob, provider_down: bool) -> u32 {
        if provider_down {
            self.retry.schedule.delay_after(1)
        } else {
            self.retry.schedule.delay_after(job.counted_attempts())
        }
    }

    /// Publishes the outcome's tracking event, and for a deferral the next attempt to its delay
    /// queue — for a job given up, a set-aside copy with the last error — all with confirms.
    async fn report(
        &self,
        delivery: &Incoming,
        job: &DispatchJob,
        outcome: &Outcome,
    ) -> anyhow::Result<()> {
        let provider_down = matches!(
            outcome.kind,
            OutcomeKind::Deferred {
                provider_down: true,
                ..
            }
        );
        let delay = outcome
            .is_deferred()
            .then(|| self.delay_after(job, provider_down));
        let event = outcome.event(job, delay);
        let mut messages = vec![OutgoingMessage {
            routing_key: self.topology.queue(Queue::Tracking),
            body: serde_json::to_vec(&event)?,
            properties: json_properties(&event.event_id.to_string(), job_headers(job)),
        }];
        if let Some(delay) = delay {
            let next = DispatchJob {
                attempt: job.attempt + 1,
                waits: job.waits + u32::from(provider_down),
                first_attempt_at: Some(job.first_attempt_at.unwrap_or(outcome.at)),
                ..job.clone()
            };
            let work_queue = match job.priority {
                mailtrail_shared::contract::Priority::High => Queue::DispatchingPriority,
                mailtrail_shared::contract::Priority::Normal => Queue::Dispatching,
            };
            messages.push(OutgoingMessage {
                routing_key: self.topology.retry_queue(work_queue, delay),
                body: serde_json::to_vec(&next)?,
                properties: json_properties(&next.job_id.to_string(), job_headers(&next)),
            });
        }
        if let OutcomeKind::Failed {
            reason,
            exhausted: true,
        } = &outcome.kind
        {
            let copy = SetAside::for_message(delivery, "retries_exhausted", reason, SERVICE);
            messages.push(copy.message_for(delivery, &self.topology));
        }
        self.publisher.publish_all(&messages).await?;
        Ok(())
    }

    async fn set_aside(
        &self,
        delivery: &Incoming,
        reason: &str,
        detail: &str,
    ) -> anyhow::Result<Handled> {
        tracing::warn!(queue = %delivery.queue_name, reason, detail, "dispatch job set aside");
        let set_aside = SetAside::for_message(delivery, reason, detail, SERVICE);
        self.publisher
            .publish(set_aside.message_for(delivery, &self.topology))
            .await?;
        Ok(Handled::SetAside(reason.to_owned()))
    }
}

fn job_headers(job: &DispatchJob) -> FieldTable {
    let mut table = FieldTable::default();
    let mut put = |name: &str, value: String| {
        table.insert(name.into(), AMQPValue::LongString(value.into()));
    };
    put(headers::EMAIL_ID, job.email_id.to_string());
    put(headers::REQUEST_KEY, job.request_key.clone());
    put(headers::TENANT, job.tenant.clone());
    put(headers::JOB_ID, job.job_id.to_string());
    table.insert(
        headers::ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(job.attempt)),
    );
    table
}
