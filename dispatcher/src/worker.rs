//! The dispatch step: one job delivery in, its outcome sent and reported out. Separate from the
//! consume loop so tests can drive it.

use crate::breaker::{Admit, Breaker, Change};
use crate::config::Schedule;
use crate::memory::{Begin, JobMemory, wait_for};
use crate::outcome::{Outcome, OutcomeKind};
use crate::providers::SendError;
use crate::providers::{Provider, Sent};
use crate::rate::RateLimit;
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
use std::time::Instant;
use tracing::Instrument;

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
    /// Per provider name: its breaker, rate limit and readiness flag.
    pub provider_states: Arc<HashMap<&'static str, ProviderState>>,
}

/// What the dispatcher keeps about one provider.
pub struct ProviderState {
    pub breaker: Breaker,
    pub rate: Option<RateLimit>,
    /// False while the breaker is open; exposed on `/readyz`.
    pub up: Arc<AtomicBool>,
}

impl ProviderState {
    pub fn new(breaker: Breaker, rate: Option<RateLimit>, up: Arc<AtomicBool>) -> ProviderState {
        up.store(true, Ordering::Relaxed);
        ProviderState { breaker, rate, up }
    }
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
        // This hop's span of the request's trace: every log line about the job carries the
        // email id and trace id, and the outcome's tracking event continues the trace.
        let traceparent = headers::continue_trace(delivery.header(headers::TRACEPARENT).as_deref());
        let span = tracing::info_span!(
            "dispatch",
            email_id = %job.email_id,
            job_id = %job.job_id,
            attempt = job.attempt,
            trace_id = headers::trace_id_of(&traceparent).unwrap_or_default(),
        );
        self.handle_job(delivery, &job, &traceparent)
            .instrument(span)
            .await
    }

    async fn handle_job(
        &self,
        delivery: &Incoming,
        job: &DispatchJob,
        traceparent: &str,
    ) -> anyhow::Result<Handled> {
        let (outcome, replayed) = match self.memory.begin((job.job_id, job.attempt)) {
            Begin::Done(outcome) => (outcome, true),
            Begin::InFlight(receiver) => match wait_for(receiver).await {
                Some(outcome) => (outcome, true),
                None => anyhow::bail!("the first delivery of this job was abandoned"),
            },
            Begin::Fresh(slot) => {
                let in_flight = metrics::gauge!("mailtrail_dispatch_in_flight");
                in_flight.increment(1.0);
                let outcome = self.attempt(job).await;
                in_flight.decrement(1.0);
                // Remember before reporting: if reporting fails, the redelivery must not send
                // again.
                self.memory.complete(slot, outcome.clone());
                (outcome, false)
            }
        };
        self.report(delivery, job, &outcome, traceparent).await?;
        log_outcome(&outcome, replayed);
        if !replayed {
            // Counted once reported (confirmed), never again for a redelivery's replay.
            metrics::counter!(
                "mailtrail_dispatch_outcomes_total",
                "provider" => outcome.provider,
                "outcome" => outcome.event_type().as_str(),
            )
            .increment(1);
        }
        Ok(if replayed {
            Handled::Replayed(outcome)
        } else {
            Handled::Sent(outcome)
        })
    }

    /// Sends through the tenant's provider, or — while its breaker is open — the first
    /// failover provider that takes mail; when every one is down, the job waits without calling
    /// any (a probe excepted) and without spending an attempt.
    async fn attempt(&self, job: &DispatchJob) -> Outcome {
        let chain = self.router.chain_for(&job.tenant);
        let routed = chain[0].name();
        for provider in chain {
            let name = provider.name();
            let admitted = self
                .provider_states
                .get(name)
                .map_or(Admit::Send, |state| state.breaker.admit(Instant::now()));
            if admitted == Admit::Wait {
                continue;
            }
            if admitted == Admit::Probe {
                tracing::info!(provider = name, "probing a provider marked down");
            }
            let result = self.send_through(provider.as_ref(), job).await;
            // A failed probe says what the breaker already knows — the provider is down, not
            // this job: go on to the failover providers, or wait without spending an attempt.
            if admitted == Admit::Probe
                && matches!(
                    result,
                    Err(SendError::Transient(_) | SendError::ProviderDown(_))
                )
            {
                continue;
            }
            return self.classify(job, name, result);
        }
        let reason = format!(
            "{routed} is down (its breaker is open) and no failover provider takes mail; waiting"
        );
        let kind = if self.too_old(job) {
            OutcomeKind::Failed {
                reason: self.too_old_reason(&reason),
                exhausted: true,
            }
        } else {
            OutcomeKind::Deferred {
                reason,
                provider_down: true,
            }
        };
        Outcome::new(kind, routed)
    }

    fn too_old(&self, job: &DispatchJob) -> bool {
        job.first_attempt_at.is_some_and(|first| {
            (Utc::now() - first).to_std().unwrap_or_default() > self.retry.max_age
        })
    }

    fn too_old_reason(&self, last: &str) -> String {
        format!(
            "gave up: older than {} s (MAILTRAIL_RETRY_MAX_AGE); last: {last}",
            self.retry.max_age.as_secs()
        )
    }

    async fn send_through(
        &self,
        provider: &dyn Provider,
        job: &DispatchJob,
    ) -> Result<Sent, SendError> {
        let state = self.provider_states.get(provider.name());
        if let Some(rate) = state.and_then(|s| s.rate.as_ref()) {
            rate.take().await;
        }
        let started = std::time::Instant::now();
        let result = provider.send(job).await;
        metrics::histogram!("mailtrail_provider_send_seconds", "provider" => provider.name())
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            metrics::counter!(
                "mailtrail_provider_errors_total",
                "provider" => provider.name(),
                "class" => error.class(),
            )
            .increment(1);
        }
        if let Some(state) = state {
            let change = state
                .breaker
                .record(&result.as_ref().map(|_| ()), Instant::now());
            match change {
                Change::Opened => {
                    state.up.store(false, Ordering::Relaxed);
                    metrics::gauge!("mailtrail_provider_up", "provider" => provider.name())
                        .set(0.0);
                    let reason = result
                        .as_ref()
                        .err()
                        .map(SendError::reason)
                        .unwrap_or_default();
                    if matches!(result, Err(SendError::ProviderDown(_))) {
                        tracing::error!(
                            provider = provider.name(),
                            reason,
                            "the provider refuses us (bad or revoked key, suspended account, \
                             authentication): marked down; mail waits or fails over until it is \
                             fixed"
                        );
                    } else {
                        tracing::error!(
                            provider = provider.name(),
                            reason,
                            "the provider keeps failing: marked down; it gets only probes now"
                        );
                    }
                }
                Change::Closed => {
                    state.up.store(true, Ordering::Relaxed);
                    metrics::gauge!("mailtrail_provider_up", "provider" => provider.name())
                        .set(1.0);
                    tracing::info!(provider = provider.name(), "the provider takes mail again");
                }
                Change::None => {}
            }
        }
        result
    }

    fn classify(
        &self,
        job: &DispatchJob,
        name: &'static str,
        result: Result<Sent, SendError>,
    ) -> Outcome {
        let too_old = self.too_old(job);
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
                reason: self.too_old_reason(error.reason()),
                exhausted: true,
            },
            Err(SendError::ProviderDown(reason)) => OutcomeKind::Deferred {
                reason,
                provider_down: true,
            },
            Err(SendError::Transient(reason) | SendError::Deferred(reason))
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
            Err(SendError::Transient(reason) | SendError::Deferred(reason)) => {
                OutcomeKind::Deferred {
                    reason,
                    provider_down: false,
                }
            }
        };
        Outcome::new(kind, name)
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
        traceparent: &str,
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
            properties: json_properties(&event.event_id.to_string(), job_headers(job, traceparent)),
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
                properties: json_properties(
                    &next.job_id.to_string(),
                    job_headers(&next, traceparent),
                ),
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
        metrics::counter!("mailtrail_dispatch_set_aside_total", "reason" => reason.to_owned())
            .increment(1);
        let set_aside = SetAside::for_message(delivery, reason, detail, SERVICE);
        self.publisher
            .publish(set_aside.message_for(delivery, &self.topology))
            .await?;
        Ok(Handled::SetAside(reason.to_owned()))
    }
}

/// One line per handled job (inside its span, so with its email id and trace id): sends at
/// debug, anything else at info or warn.
fn log_outcome(outcome: &Outcome, replayed: bool) {
    let provider = outcome.provider;
    match &outcome.kind {
        OutcomeKind::Dispatched { .. } => {
            tracing::debug!(provider, replayed, "sent");
        }
        OutcomeKind::Deferred {
            reason,
            provider_down,
        } => tracing::info!(provider, replayed, provider_down, reason, "deferred"),
        OutcomeKind::Bounced { reason } => tracing::info!(provider, replayed, reason, "bounced"),
        OutcomeKind::Failed { reason, exhausted } => {
            tracing::warn!(provider, replayed, exhausted, reason, "failed")
        }
    }
}

/// The headers of every message the dispatcher publishes about `job`.
fn job_headers(job: &DispatchJob, traceparent: &str) -> FieldTable {
    let mut table = FieldTable::default();
    let mut put = |name: &str, value: String| {
        table.insert(name.into(), AMQPValue::LongString(value.into()));
    };
    put(headers::EMAIL_ID, job.email_id.to_string());
    put(headers::REQUEST_KEY, job.request_key.clone());
    put(headers::TENANT, job.tenant.clone());
    put(headers::JOB_ID, job.job_id.to_string());
    put(headers::TRACEPARENT, traceparent.to_owned());
    table.insert(
        headers::ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(job.attempt)),
    );
    table
}
