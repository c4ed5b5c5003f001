//! The dispatch step: one job delivery in, its outcome sent and reported out. Separate from the
//! consume loop so tests can drive it.

use crate::memory::{Begin, JobMemory, wait_for};
use crate::message;
use crate::outcome::Outcome;
use crate::smtp::{SendFailure, SmtpSender, envelope};
use chrono::Utc;
use lapin::types::{AMQPValue, FieldTable};
use mailtrail_broker::{Incoming, OutgoingMessage, Publisher, SetAside, json_properties};
use mailtrail_shared::dispatch::{DISPATCH_JOB_VERSION, DispatchJob};
use mailtrail_shared::headers;
use mailtrail_shared::topology::{Queue, Topology};
use std::sync::Arc;

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

pub struct Dispatcher {
    pub sender: Arc<SmtpSender>,
    pub publisher: Publisher,
    pub topology: Topology,
    pub memory: Arc<JobMemory>,
    pub hello_name: String,
    pub retry_delay_secs: u32,
    pub max_attempts: u32,
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
        self.report(&job, &outcome).await?;
        Ok(if replayed {
            Handled::Replayed(outcome)
        } else {
            Handled::Sent(outcome)
        })
    }

    async fn attempt(&self, job: &DispatchJob) -> Outcome {
        let built = message::build(job, &self.hello_name).and_then(|message| {
            let envelope = envelope(&job.from.address, &job.to.address)
                .map_err(|e| message::BuildError::from_envelope(&e))?;
            Ok((envelope, message.formatted()))
        });
        let (envelope, formatted) = match built {
            Ok(parts) => parts,
            Err(error) => {
                return Outcome::Failed {
                    reason: error.to_string(),
                    at: Utc::now(),
                };
            }
        };
        match self.sender.send(&envelope, &formatted).await {
            Ok(accepted) => Outcome::Dispatched {
                reply: accepted.reply,
                queue_id: accepted.queue_id,
                at: Utc::now(),
            },
            Err(SendFailure::Permanent(reason)) => Outcome::Failed {
                reason,
                at: Utc::now(),
            },
            Err(SendFailure::Transient(reason)) if job.attempt >= self.max_attempts => {
                Outcome::Failed {
                    reason: format!(
                        "gave up after {} attempts (MAILTRAIL_MAX_ATTEMPTS); last: {reason}",
                        job.attempt
                    ),
                    at: Utc::now(),
                }
            }
            Err(SendFailure::Transient(reason)) => Outcome::Deferred {
                reason,
                at: Utc::now(),
            },
        }
    }

    /// Publishes the outcome's tracking event, and for a deferral the next attempt to the retry
    /// queue, all with confirms.
    async fn report(&self, job: &DispatchJob, outcome: &Outcome) -> anyhow::Result<()> {
        let deferred = matches!(outcome, Outcome::Deferred { .. });
        let event = outcome.event(job, deferred.then_some(self.retry_delay_secs));
        let mut messages = vec![OutgoingMessage {
            routing_key: self.topology.queue(Queue::Tracking),
            body: serde_json::to_vec(&event)?,
            properties: json_properties(&event.event_id.to_string(), job_headers(job)),
        }];
        if deferred {
            let next = DispatchJob {
                attempt: job.attempt + 1,
                ..job.clone()
            };
            let work_queue = match job.priority {
                mailtrail_shared::contract::Priority::High => Queue::DispatchingPriority,
                mailtrail_shared::contract::Priority::Normal => Queue::Dispatching,
            };
            messages.push(OutgoingMessage {
                routing_key: self.topology.retry_queue(work_queue, self.retry_delay_secs),
                body: serde_json::to_vec(&next)?,
                properties: json_properties(&next.job_id.to_string(), job_headers(&next)),
            });
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
