//! Mailbox intake: decode each request, and in **one transaction** record the request, one email
//! per distinct recipient, an `accepted` event for each and an outbox row per dispatch job. A
//! recipient on its tenant's suppression list gets `accepted` then `suppressed`, and no job. The
//! deliveries are acked by the caller only after [`Intake::handle`] returns, i.e. after commit.
//!
//! A request with a future `send_at` also records `scheduled` for each email, and its outbox rows
//! wait (`available_at`) until the relay finds them due.
//!
//! Idempotency: a request is keyed by (tenant, key). The same key again with the same content
//! hash is a duplicate (nothing new is written); with a different hash it is a conflict and is
//! set aside, never merged. Invalid input is set aside with its reason and recorded in
//! `dead_letters`, so one bad message never blocks the queue.

use crate::clock::Clock;
use crate::db::{DbPool, with_deadline};
use crate::dead_letters::{DeadLetterOwner, record_dead_letter};
use crate::faults;
use crate::history::{NewEvent, record_events};
use crate::schema::{emails, outbox, requests};
use crate::suppressions;
use crate::tenant_policy::TenantPolicy;
use anyhow::Context;
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use mailtrail_broker::{Incoming, OutgoingMessage, Publisher, SetAside};
use mailtrail_shared::contract::{
    Envelope, KeySource, Limits, MailboxRequest, Priority, RejectReason, Rejection, decode,
};
use mailtrail_shared::headers;
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::topology::{Queue, Topology};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// Name of this service in set-aside headers and event sources.
pub const SERVICE: &str = "operator";

/// What became of one mailbox message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeOutcome {
    /// A new request: its emails were recorded with `accepted` and their jobs put in the outbox.
    Accepted {
        request_id: Uuid,
        email_ids: Vec<Uuid>,
        /// The trace its emails' events and dispatch jobs carry (`traceparent`'s trace id).
        trace_id: Option<String>,
    },
    /// The same request (same tenant, key and content) was already recorded: nothing new.
    Duplicate { request_id: Uuid },
    /// Set aside to the dead-letter queue with its reason.
    SetAside { reason: String, detail: String },
}

/// The intake step. Cheap to clone.
#[derive(Clone)]
pub struct Intake {
    pool: DbPool,
    publisher: Publisher,
    topology: Topology,
    limits: Limits,
    db_timeout: Duration,
    relay_wake: Arc<Notify>,
    clock: Clock,
    policy: Arc<TenantPolicy>,
}

/// A dead-letter row and its broker copy, for one set-aside message.
struct SetAsideRecord {
    index: usize,
    set_aside: SetAside,
    tenant: Option<String>,
    request_key: Option<String>,
}

impl Intake {
    pub fn new(
        pool: DbPool,
        publisher: Publisher,
        topology: Topology,
        limits: Limits,
        db_timeout: Duration,
        relay_wake: Arc<Notify>,
    ) -> Intake {
        Intake {
            pool,
            publisher,
            topology,
            limits,
            db_timeout,
            relay_wake,
            clock: Clock::system(),
            policy: Arc::new(TenantPolicy::default()),
        }
    }

    /// Checks who may write for which tenant (tenant binding, from domains).
    pub fn with_policy(mut self, policy: TenantPolicy) -> Intake {
        self.policy = Arc::new(policy);
        self
    }

    /// Uses `clock` to decide whether a `send_at` is still in the future (tests).
    pub fn with_clock(mut self, clock: Clock) -> Intake {
        self.clock = clock;
        self
    }

    /// Handles a batch of mailbox messages (a batch of one is fine). On `Ok`, everything is
    /// durably recorded and every set-aside copy confirmed by the broker: the caller acks the
    /// whole batch. On `Err`, nothing may be acked; redelivery is harmless.
    #[tracing::instrument(skip_all, fields(batch = batch.len()))]
    pub async fn handle(&self, batch: &[Incoming]) -> anyhow::Result<Vec<IntakeOutcome>> {
        let started = std::time::Instant::now();
        let decoded: Vec<Result<MailboxRequest, Rejection>> = batch
            .iter()
            .map(|message| {
                decode(
                    &Envelope {
                        body: &message.body,
                        message_id: message.message_id(),
                        content_type: message.content_type(),
                        via_priority_queue: message.queue == Queue::MailboxPriority,
                    },
                    &self.limits,
                )
                .and_then(|request| self.policy.check(message, &request).map(|()| request))
            })
            .collect();

        let outcomes = match self.record(batch, &decoded).await {
            Ok(outcomes) => outcomes,
            // One request the database refuses (it should not happen after validation) must not
            // hold the others back: retry one by one and set aside only the one that fails.
            Err(error) if batch.len() > 1 && is_data_error(&error) => {
                tracing::warn!(error = %format!("{error:#}"), "batch refused; retrying one by one");
                let mut outcomes = Vec::with_capacity(batch.len());
                for (message, request) in batch.iter().zip(decoded) {
                    outcomes.extend(self.record_single(message, request).await?);
                }
                outcomes
            }
            Err(error) if is_data_error(&error) => {
                let request = decoded.into_iter().next();
                match (batch.first(), request) {
                    (Some(message), Some(request)) => self.record_single(message, request).await?,
                    _ => return Err(error),
                }
            }
            Err(error) => return Err(error),
        };
        faults::crash_point(faults::INTAKE_AFTER_COMMIT);
        if outcomes
            .iter()
            .any(|o| matches!(o, IntakeOutcome::Accepted { .. }))
        {
            self.relay_wake.notify_one();
        }

        let copies: Vec<OutgoingMessage> = batch
            .iter()
            .zip(&outcomes)
            .filter_map(|(message, outcome)| match outcome {
                IntakeOutcome::SetAside { reason, detail } => {
                    let set_aside = self.set_aside_for(message, reason, detail);
                    Some(set_aside.message_for(message, &self.topology))
                }
                _ => None,
            })
            .collect();
        self.publisher
            .publish_all(&copies)
            .await
            .context("cannot set rejected mailbox messages aside")?;
        for (message, outcome) in batch.iter().zip(&outcomes) {
            log_outcome(message, outcome);
        }
        metrics::histogram!("mailtrail_batch_seconds", "step" => "intake")
            .record(started.elapsed().as_secs_f64());
        Ok(outcomes)
    }

    async fn record_single(
        &self,
        message: &Incoming,
        request: Result<MailboxRequest, Rejection>,
    ) -> anyhow::Result<Vec<IntakeOutcome>> {
        let tenant_key = match &request {
            Ok(r) => (Some(r.tenant.clone()), Some(r.key.clone())),
            Err(r) => (r.tenant.clone(), r.key.clone()),
        };
        match self.record(std::slice::from_ref(message), &[request]).await {
            Ok(outcomes) => Ok(outcomes),
            Err(error) if is_data_error(&error) => {
                let rejection = Rejection {
                    reason: RejectReason::InvalidField,
                    detail: format!("the database refused the request: {error:#}"),
                    tenant: tenant_key.0,
                    key: tenant_key.1,
                };
                self.record(std::slice::from_ref(message), &[Err(rejection)])
                    .await
            }
            Err(error) => Err(error),
        }
    }

    fn set_aside_for(&self, message: &Incoming, reason: &str, detail: &str) -> SetAside {
        SetAside::for_message(message, reason, detail, SERVICE)
    }

    /// The one transaction of the intake step.
    async fn record(
        &self,
        batch: &[Incoming],
        decoded: &[Result<MailboxRequest, Rejection>],
    ) -> anyhow::Result<Vec<IntakeOutcome>> {
        with_deadline(self.db_timeout, "intake transaction", async {
            let mut conn = self
                .pool
                .get()
                .await
                .context("no database connection for the intake")?;
            let outcomes = conn
                .transaction::<_, anyhow::Error, _>(async |conn| {
                    self.record_in(conn, batch, decoded).await
                })
                .await?;
            Ok(outcomes)
        })
        .await
    }

    async fn record_in(
        &self,
        conn: &mut AsyncPgConnection,
        batch: &[Incoming],
        decoded: &[Result<MailboxRequest, Rejection>],
    ) -> anyhow::Result<Vec<IntakeOutcome>> {
        let now = self.clock.now();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut new_emails = Vec::new();
        let mut new_jobs = Vec::new();
        let mut accepted_events = Vec::new();
        let mut set_asides = Vec::new();
        // The batch's recipients on their tenant's suppression list, in one query.
        let wanted: Vec<(String, String)> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .flat_map(|r| {
                r.to.iter()
                    .map(|recipient| (r.tenant.clone(), recipient.canonical.clone()))
            })
            .collect();
        let suppressed = suppressions::active_for(conn, &wanted).await?;

        for (index, (message, request)) in batch.iter().zip(decoded).enumerate() {
            let request = match request {
                Ok(request) => request,
                Err(rejection) => {
                    set_asides.push(self.rejection_record(index, message, rejection));
                    outcomes.push(IntakeOutcome::SetAside {
                        reason: rejection.reason.code().to_owned(),
                        detail: rejection.detail.clone(),
                    });
                    continue;
                }
            };
            let request_id = ids::request_id(&request.tenant, &request.key);
            let inserted = diesel::insert_into(requests::table)
                .values(NewRequest::from_request(
                    request_id,
                    request,
                    message.user_id(),
                )?)
                .on_conflict((requests::tenant, requests::request_key))
                .do_nothing()
                .returning(requests::id)
                .get_result::<Uuid>(conn)
                .await
                .optional()?;
            if inserted.is_none() {
                let existing_hash: Vec<u8> = requests::table
                    .filter(requests::tenant.eq(&request.tenant))
                    .filter(requests::request_key.eq(&request.key))
                    .select(requests::content_hash)
                    .get_result(conn)
                    .await?;
                if existing_hash == request.content_hash {
                    outcomes.push(IntakeOutcome::Duplicate { request_id });
                } else {
                    let rejection = Rejection {
                        reason: RejectReason::Conflict,
                        detail: format!(
                            "tenant {:?} already used id {:?} for a request with different \
                             content; use a new id for a new request",
                            request.tenant, request.key
                        ),
                        tenant: Some(request.tenant.clone()),
                        key: Some(request.key.clone()),
                    };
                    set_asides.push(self.rejection_record(index, message, &rejection));
                    outcomes.push(IntakeOutcome::SetAside {
                        reason: rejection.reason.code().to_owned(),
                        detail: rejection.detail,
                    });
                }
                continue;
            }

            let queue = match request.priority {
                Priority::High => Queue::DispatchingPriority,
                Priority::Normal => Queue::Dispatching,
            };
            let traceparent =
                headers::continue_trace(message.header(headers::TRACEPARENT).as_deref());
            let trace_id = headers::trace_id_of(&traceparent);
            // A past or present send_at is simply "now".
            let due_at = request.send_at.filter(|at| *at > now);
            let mut email_ids = Vec::with_capacity(request.to.len());
            for recipient in &request.to {
                let email_id = ids::email_id(&request.tenant, &request.key, &recipient.canonical);
                email_ids.push(email_id);
                new_emails.push(NewEmail {
                    id: email_id,
                    request_id,
                    tenant: request.tenant.clone(),
                    recipient: serde_json::to_value(recipient)?,
                    recipient_canonical: recipient.canonical.clone(),
                    status: EventType::Accepted.as_str().to_owned(),
                    status_precedence: EventType::Accepted.status_precedence(),
                    created_at: now,
                });
                let suppression =
                    suppressed.get(&(request.tenant.clone(), recipient.canonical.clone()));
                if suppression.is_none() {
                    new_jobs.push(NewJob {
                        job_id: ids::dispatch_job_id(email_id),
                        email_id,
                        tenant: request.tenant.clone(),
                        queue: queue.base_name().to_owned(),
                        attempt: 1,
                        traceparent: Some(traceparent.clone()),
                        available_at: due_at.unwrap_or(now),
                    });
                }
                accepted_events.push(NewEvent {
                    event_id: ids::operator_event_id("accepted", email_id),
                    email_id,
                    event_type: EventType::Accepted,
                    occurred_at: now,
                    source: SERVICE.to_owned(),
                    provider: None,
                    provider_event_id: None,
                    provider_message_id: None,
                    details: serde_json::json!({
                        "recipient": recipient.address,
                        "request_key": request.key,
                        "key_source": request.key_source.as_str(),
                        "priority": request.priority,
                    }),
                    trace_id: trace_id.clone(),
                });
                if let (Some(due_at), None) = (due_at, suppression) {
                    accepted_events.push(NewEvent {
                        event_id: ids::operator_event_id("scheduled", email_id),
                        email_id,
                        event_type: EventType::Scheduled,
                        occurred_at: now,
                        source: SERVICE.to_owned(),
                        provider: None,
                        provider_event_id: None,
                        provider_message_id: None,
                        details: serde_json::json!({ "send_at": due_at }),
                        trace_id: trace_id.clone(),
                    });
                }
                // On the suppression list: recorded, never dispatched (no outbox row).
                if let Some(suppression) = suppression {
                    accepted_events.push(NewEvent {
                        event_id: ids::operator_event_id("suppressed", email_id),
                        email_id,
                        event_type: EventType::Suppressed,
                        occurred_at: now,
                        source: SERVICE.to_owned(),
                        provider: None,
                        provider_event_id: None,
                        provider_message_id: None,
                        details: serde_json::json!({
                            "recipient": recipient.address,
                            "reason": suppression.reason,
                            "since": suppression.created_at,
                            "source_event_id": suppression.source_event_id,
                            "expires_at": suppression.expires_at,
                        }),
                        trace_id: trace_id.clone(),
                    });
                }
            }
            outcomes.push(IntakeOutcome::Accepted {
                request_id,
                email_ids,
                trace_id,
            });
        }

        // Multi-row inserts, chunked well under PostgreSQL's 65,535 bind parameters.
        for chunk in new_emails.chunks(1000) {
            diesel::insert_into(emails::table)
                .values(chunk)
                .execute(conn)
                .await?;
        }
        let mut new_email_ids: Vec<Uuid> = accepted_events.iter().map(|e| e.email_id).collect();
        new_email_ids.dedup();
        record_events(conn, accepted_events).await?;
        // Reports that named one of these emails before it existed.
        crate::pending::attach(conn, &new_email_ids).await?;
        for chunk in new_jobs.chunks(1000) {
            diesel::insert_into(outbox::table)
                .values(chunk)
                .execute(conn)
                .await?;
        }
        for record in set_asides {
            record_dead_letter(
                conn,
                &batch[record.index],
                &record.set_aside,
                DeadLetterOwner {
                    tenant: record.tenant,
                    request_key: record.request_key,
                    email_id: None,
                },
            )
            .await?;
        }
        Ok(outcomes)
    }

    fn rejection_record(
        &self,
        index: usize,
        message: &Incoming,
        rejection: &Rejection,
    ) -> SetAsideRecord {
        SetAsideRecord {
            index,
            set_aside: self.set_aside_for(message, rejection.reason.code(), &rejection.detail),
            tenant: rejection.tenant.clone(),
            request_key: rejection.key.clone(),
        }
    }
}

/// True for errors the database raised about the data (as opposed to a lost connection or a
/// timeout): retrying the same data would fail again.
/// True when the database refused the data itself (a constraint), which retrying cannot fix.
/// Anything else (a lost connection, a timeout, a full disk, a bug in a query) is an error the
/// caller retries: setting valid mail aside because the database is unwell would be worse.
fn is_data_error(error: &anyhow::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<Error>(),
            Some(Error::DatabaseError(
                DatabaseErrorKind::UniqueViolation
                    | DatabaseErrorKind::ForeignKeyViolation
                    | DatabaseErrorKind::NotNullViolation
                    | DatabaseErrorKind::CheckViolation
                    | DatabaseErrorKind::RestrictViolation
                    | DatabaseErrorKind::ExclusionViolation,
                _
            ))
        ) || cause.downcast_ref::<serde_json::Error>().is_some()
    })
}

/// Email ids as one comma-separated log field.
struct EmailIds<'a>(&'a [Uuid]);

impl std::fmt::Display for EmailIds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

/// Logs an outcome and counts it (`mailtrail_intake_requests_total{outcome}`, and
/// `mailtrail_intake_emails_total` for the emails accepted requests create).
fn log_outcome(message: &Incoming, outcome: &IntakeOutcome) {
    let counted = match outcome {
        IntakeOutcome::Accepted {
            request_id,
            email_ids,
            trace_id,
        } => {
            // The email ids themselves, so a search for one email finds its request's line.
            tracing::info!(
                %request_id,
                email_ids = %EmailIds(email_ids),
                trace_id = trace_id.as_deref().unwrap_or_default(),
                "request accepted"
            );
            metrics::counter!("mailtrail_intake_emails_total").increment(email_ids.len() as u64);
            "accepted"
        }
        IntakeOutcome::Duplicate { request_id } => {
            tracing::info!(%request_id, "duplicate request: nothing new recorded");
            "duplicate"
        }
        IntakeOutcome::SetAside { reason, detail } => {
            tracing::warn!(
                queue = %message.queue_name,
                message_id = message.message_id().unwrap_or(""),
                reason = %reason,
                detail = %detail,
                "mailbox message set aside"
            );
            "set_aside"
        }
    };
    metrics::counter!("mailtrail_intake_requests_total", "outcome" => counted).increment(1);
}

/// The message's properties as JSON, for the dead-letter record.
#[derive(Insertable)]
#[diesel(table_name = requests)]
struct NewRequest<'a> {
    id: Uuid,
    tenant: &'a str,
    request_key: &'a str,
    key_source: &'a str,
    content_hash: &'a [u8],
    priority: &'a str,
    from_address: serde_json::Value,
    reply_to: Option<serde_json::Value>,
    subject: &'a str,
    text_body: Option<&'a str>,
    html_body: Option<&'a str>,
    headers: serde_json::Value,
    tags: &'a [String],
    metadata: serde_json::Value,
    attachments: serde_json::Value,
    publisher: Option<&'a str>,
    send_at: Option<chrono::DateTime<Utc>>,
}

impl<'a> NewRequest<'a> {
    fn from_request(
        id: Uuid,
        r: &'a MailboxRequest,
        publisher: Option<&'a str>,
    ) -> serde_json::Result<NewRequest<'a>> {
        Ok(NewRequest {
            id,
            tenant: &r.tenant,
            request_key: &r.key,
            key_source: match r.key_source {
                KeySource::Body => "body",
                KeySource::MessageId => "message_id",
                KeySource::Generated => "generated",
            },
            content_hash: &r.content_hash,
            priority: match r.priority {
                Priority::High => "high",
                Priority::Normal => "normal",
            },
            from_address: serde_json::to_value(&r.from)?,
            reply_to: r.reply_to.as_ref().map(serde_json::to_value).transpose()?,
            subject: &r.subject,
            text_body: r.text.as_deref(),
            html_body: r.html.as_deref(),
            headers: serde_json::to_value(&r.headers)?,
            tags: &r.tags,
            metadata: serde_json::to_value(&r.metadata)?,
            attachments: serde_json::to_value(&r.attachments)?,
            publisher,
            send_at: r.send_at,
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = emails)]
struct NewEmail {
    id: Uuid,
    request_id: Uuid,
    tenant: String,
    recipient: serde_json::Value,
    recipient_canonical: String,
    status: String,
    status_precedence: i16,
    created_at: chrono::DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = outbox)]
struct NewJob {
    job_id: Uuid,
    email_id: Uuid,
    tenant: String,
    queue: String,
    attempt: i32,
    traceparent: Option<String>,
    available_at: chrono::DateTime<Utc>,
}
