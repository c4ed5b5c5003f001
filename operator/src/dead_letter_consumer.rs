//! The dead-letter consumer: everything any service set aside lands in `<prefix>dead-letter`;
//! this step stores it in `dead_letters` (one transaction per batch, acked after the commit).
//!
//! * The operator's own copies were recorded when they were set aside: they change nothing.
//! * A copy from another service (the dispatcher, the webhook sink) adds a row keyed by its
//!   `x-mailtrail-dead-letter-id`; a later copy of the same message counts an attempt and moves
//!   `last_seen_at`. A copy redelivered after a lost ack (same `x-mailtrail-set-aside-at`) counts
//!   nothing, so the consumer is idempotent.
//! * A dispatch job given up after its retries (`retries_exhausted`) gets `failed` in its email's
//!   history, with the id the dispatcher's own report carries, unless something at or beyond
//!   `dispatched` is recorded already.
//! * A message the broker dead-lettered itself (a policy pointing here) is recorded with the
//!   queue and reason of its latest `x-death` entry, so it can be replayed to that queue.
//! * Anything else on the queue — no headers, not JSON, not ours — is stored too, raw; nothing is
//!   dropped and nothing blocks the queue.

use crate::db::{DbPool, with_deadline};
use crate::dead_letters::{clean, stored_headers};
use crate::history::{NewEvent, record_events};
use crate::schema::{dead_letters, emails, events};
use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::{FutureExt, StreamExt};
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use mailtrail_broker::Incoming;
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::history::EventType;
use mailtrail_shared::topology::{Queue, Topology};
use mailtrail_shared::tracking::ANY_TENANT;
use mailtrail_shared::{headers, ids};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The operator's name in `x-mailtrail-set-aside-by`.
const OPERATOR: &str = "operator";
/// The dispatcher's reason for a job given up after its retries.
const RETRIES_EXHAUSTED: &str = "retries_exhausted";
/// What a copy without a reason header is recorded as.
const UNLABELLED: &str = "unlabelled";
/// Longest reason, source queue, tenant and service name kept from headers (characters): they
/// are indexed, and a B-tree entry over about 2.7 kB would make the insert fail on every
/// redelivery, blocking the queue.
const MAX_NAME: usize = 200;
/// Longest detail kept (characters; not indexed).
const MAX_DETAIL: usize = 4000;
/// Most body bytes stored in one transaction (a single larger message is stored alone).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// What a message the broker dead-lettered itself (`x-death`) is recorded as set aside by.
const BROKER: &str = "rabbitmq";
/// The dispatcher's name in `x-mailtrail-set-aside-by`.
const DISPATCHER: &str = "dispatcher";

/// What became of one dead-letter delivery. In every case the caller acks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterOutcome {
    /// The operator's own copy, recorded when it was set aside.
    Own { id: Uuid },
    /// A new row.
    Recorded { id: Uuid },
    /// Another copy of a message already recorded: an attempt counted.
    Repeated { id: Uuid },
    /// The same copy again (a redelivery): nothing changed.
    Duplicate { id: Uuid },
}

pub struct DeadLetterConsumer {
    pool: DbPool,
    db_timeout: Duration,
}

impl DeadLetterConsumer {
    pub fn new(pool: DbPool, db_timeout: Duration) -> DeadLetterConsumer {
        DeadLetterConsumer { pool, db_timeout }
    }

    /// Stores a batch of dead-letter copies in one transaction. On `Ok` everything is committed
    /// and the caller acks the batch; on `Err` nothing may be acked (a redelivery is harmless).
    #[tracing::instrument(skip_all, fields(batch = batch.len()))]
    pub async fn handle(&self, batch: &[Incoming]) -> anyhow::Result<Vec<DeadLetterOutcome>> {
        let copies: Vec<DeadLetterCopy> = batch.iter().map(DeadLetterCopy::read).collect();
        let outcomes = with_deadline(self.db_timeout, "dead-letter transaction", async {
            let mut conn = self
                .pool
                .get()
                .await
                .context("no database connection for the dead-letter consumer")?;
            let outcomes = conn
                .transaction::<_, anyhow::Error, _>(async |conn| {
                    let mut outcomes = Vec::with_capacity(copies.len());
                    for copy in &copies {
                        outcomes.push(store(conn, copy).await?);
                    }
                    let failures: Vec<&DeadLetterCopy> = copies
                        .iter()
                        .filter(|c| c.set_aside_by == DISPATCHER && c.reason == RETRIES_EXHAUSTED)
                        .collect();
                    record_exhausted(conn, &failures).await?;
                    Ok(outcomes)
                })
                .await?;
            Ok(outcomes)
        })
        .await?;
        for (copy, outcome) in copies.iter().zip(&outcomes) {
            let counted = match outcome {
                DeadLetterOutcome::Recorded { id } => {
                    tracing::info!(
                        %id, reason = copy.reason, source_queue = copy.source_queue,
                        set_aside_by = copy.set_aside_by, "dead letter recorded"
                    );
                    "recorded"
                }
                DeadLetterOutcome::Repeated { id } => {
                    tracing::info!(%id, reason = copy.reason, "dead letter seen again");
                    "repeated"
                }
                DeadLetterOutcome::Own { id } | DeadLetterOutcome::Duplicate { id } => {
                    tracing::debug!(%id, "dead letter already recorded");
                    "duplicate"
                }
            };
            metrics::counter!("mailtrail_dead_letters_total", "outcome" => counted).increment(1);
        }
        Ok(outcomes)
    }
}

/// A dead-letter copy as far as it can be read; every text is storable (see `clean`).
struct DeadLetterCopy {
    id: Uuid,
    source_queue: String,
    reason: String,
    detail: String,
    set_aside_by: String,
    set_aside_at: Option<DateTime<Utc>>,
    tenant: Option<String>,
    request_key: Option<String>,
    email_id: Option<Uuid>,
    body: Vec<u8>,
    headers: serde_json::Value,
}

impl DeadLetterCopy {
    fn read(message: &Incoming) -> DeadLetterCopy {
        let text = |name: &str, max: usize| {
            message
                .header(name)
                .map(|v| clean(&v.chars().take(max).collect::<String>()))
                .filter(|v| !v.trim().is_empty())
        };
        let header = |name: &str| text(name, MAX_NAME);
        let name = |value: String| clean(&value.chars().take(MAX_NAME).collect::<String>());
        // A copy a service set aside names the original's properties in headers; a message the
        // broker dead-lettered itself (a policy) keeps them and says why in `x-death`.
        let ours =
            header(headers::DEAD_LETTER_ID).is_some() || header(headers::SET_ASIDE_BY).is_some();
        let death = if ours { None } else { x_death(message) };
        let source_queue = header(headers::SOURCE_QUEUE)
            .or_else(|| death.as_ref().map(|(queue, _)| name(queue.clone())))
            .unwrap_or_else(|| "unknown".to_owned());
        let (original_message_id, original_user_id) = if ours {
            (
                header(headers::ORIGINAL_MESSAGE_ID),
                header(headers::ORIGINAL_USER_ID),
            )
        } else {
            (
                message.message_id().map(|m| name(m.to_owned())),
                message.user_id().map(|u| name(u.to_owned())),
            )
        };
        let id = header(headers::DEAD_LETTER_ID)
            .and_then(|id| Uuid::parse_str(&id).ok())
            .unwrap_or_else(|| {
                ids::dead_letter_id(
                    &source_queue,
                    original_message_id.as_deref().or(message.message_id()),
                    &message.body,
                )
            });
        let tenant = header(headers::TENANT).filter(|t| t != ANY_TENANT);
        let job = serde_json::from_slice::<DispatchJob>(&message.body).ok();
        DeadLetterCopy {
            id,
            reason: header(headers::REASON)
                .or_else(|| death.as_ref().map(|(_, why)| name(format!("broker_{why}"))))
                .unwrap_or_else(|| UNLABELLED.to_owned()),
            detail: text(headers::REASON_DETAIL, MAX_DETAIL)
                .or_else(|| {
                    death.as_ref().map(|(_, why)| {
                        format!("dead-lettered by RabbitMQ ({})", name(why.clone()))
                    })
                })
                .unwrap_or_default(),
            set_aside_by: header(headers::SET_ASIDE_BY)
                .unwrap_or_else(|| if death.is_some() { BROKER } else { "unknown" }.to_owned()),
            set_aside_at: header(headers::SET_ASIDE_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            tenant: tenant.or_else(|| {
                job.as_ref()
                    .map(|j| clean(&j.tenant.chars().take(MAX_NAME).collect::<String>()))
            }),
            request_key: header(headers::REQUEST_KEY)
                .or_else(|| job.as_ref().map(|j| clean(&j.request_key))),
            email_id: header(headers::EMAIL_ID)
                .and_then(|id| Uuid::parse_str(&id).ok())
                .or_else(|| job.as_ref().map(|j| j.email_id)),
            headers: stored_headers(
                &message.properties,
                original_message_id.as_deref(),
                original_user_id.as_deref(),
                message.redelivered,
            ),
            source_queue,
            body: message.body.clone(),
        }
    }
}

/// Where and why the broker dead-lettered a message itself: the latest `x-death` entry's queue
/// and reason (`rejected`, `expired`, `maxlen`, `delivery_limit`).
fn x_death(message: &Incoming) -> Option<(String, String)> {
    let table = message.properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = table.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |name: &str| match latest.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    Some((
        text("queue")?,
        text("reason").unwrap_or_else(|| "unknown".to_owned()),
    ))
}

async fn store(
    conn: &mut AsyncPgConnection,
    copy: &DeadLetterCopy,
) -> anyhow::Result<DeadLetterOutcome> {
    let seen_at = copy.set_aside_at.unwrap_or_else(Utc::now);
    let row = (
        dead_letters::id.eq(copy.id),
        dead_letters::source_queue.eq(&copy.source_queue),
        dead_letters::reason.eq(&copy.reason),
        dead_letters::detail.eq(&copy.detail),
        dead_letters::tenant.eq(&copy.tenant),
        dead_letters::request_key.eq(&copy.request_key),
        dead_letters::email_id.eq(copy.email_id),
        dead_letters::set_aside_by.eq(&copy.set_aside_by),
        dead_letters::body.eq(&copy.body),
        dead_letters::headers.eq(&copy.headers),
        dead_letters::first_seen_at.eq(seen_at),
        dead_letters::last_seen_at.eq(seen_at),
    );
    if copy.set_aside_by == OPERATOR {
        // Recorded in the transaction that set it aside; stored here only if that row is gone
        // (purged by retention, say), so nothing set aside goes unrecorded.
        diesel::insert_into(dead_letters::table)
            .values(row)
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        return Ok(DeadLetterOutcome::Own { id: copy.id });
    }
    let inserted = diesel::insert_into(dead_letters::table)
        .values(row)
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    if inserted == 1 {
        return Ok(DeadLetterOutcome::Recorded { id: copy.id });
    }
    // Another copy of the same message counts an attempt; the same copy again (redelivered
    // after a lost ack: the same set-aside time) counts nothing.
    let counted = diesel::sql_query(
        "UPDATE dead_letters
            SET attempts = attempts + 1,
                last_seen_at = GREATEST(last_seen_at, $2),
                first_seen_at = LEAST(first_seen_at, $2),
                detail = $3
          WHERE id = $1 AND last_seen_at <> $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(copy.id)
    .bind::<diesel::sql_types::Timestamptz, _>(seen_at)
    .bind::<diesel::sql_types::Text, _>(&copy.detail)
    .execute(conn)
    .await?;
    Ok(if counted == 1 {
        DeadLetterOutcome::Repeated { id: copy.id }
    } else {
        DeadLetterOutcome::Duplicate { id: copy.id }
    })
}

/// Records `failed` for jobs the dispatcher gave up, with the id of the dispatcher's own report
/// (so whichever comes first is the one recorded), unless the email's history already holds
/// anything at or beyond `dispatched` (its own `failed` report among them).
async fn record_exhausted(
    conn: &mut AsyncPgConnection,
    copies: &[&DeadLetterCopy],
) -> anyhow::Result<()> {
    let jobs: Vec<(&DeadLetterCopy, DispatchJob)> = copies
        .iter()
        .filter_map(|c| Some((*c, serde_json::from_slice::<DispatchJob>(&c.body).ok()?)))
        .collect();
    if jobs.is_empty() {
        return Ok(());
    }
    let email_ids: Vec<Uuid> = jobs.iter().map(|(_, j)| j.email_id).collect();
    let known: std::collections::HashMap<Uuid, String> = emails::table
        .filter(emails::id.eq_any(&email_ids))
        .select((emails::id, emails::tenant))
        .load::<(Uuid, String)>(conn)
        .await?
        .into_iter()
        .collect();
    let settled: std::collections::HashSet<Uuid> = events::table
        .filter(events::email_id.eq_any(&email_ids))
        .filter(events::lifecycle_rank.ge(EventType::Dispatched.lifecycle_rank()))
        .select(events::email_id)
        .load::<Uuid>(conn)
        .await?
        .into_iter()
        .collect();
    let mut failed = Vec::new();
    for (copy, job) in jobs {
        if known.get(&job.email_id) != Some(&job.tenant) || settled.contains(&job.email_id) {
            continue;
        }
        failed.push(NewEvent {
            event_id: ids::dispatch_outcome_event_id(
                job.job_id,
                job.attempt,
                EventType::Failed.as_str(),
            ),
            email_id: job.email_id,
            event_type: EventType::Failed,
            occurred_at: copy.set_aside_at.unwrap_or_else(Utc::now),
            source: "dispatcher".to_owned(),
            provider: None,
            provider_event_id: None,
            provider_message_id: None,
            details: serde_json::json!({
                "reason": copy.detail,
                "attempt": job.attempt,
                "exhausted": true,
                "recorded_from": "dead-letter",
            }),
            trace_id: None,
        });
    }
    let recorded = record_events(conn, failed).await?;
    if recorded > 0 {
        tracing::info!(
            recorded,
            "failed recorded for jobs given up after their retries"
        );
    }
    Ok(())
}

/// Consumes `<prefix>dead-letter` in batches until `stop`: each batch stored in one
/// transaction, then acked. An error ends the session (nothing unacked is lost).
pub async fn dead_letter_loop(
    connection: &Connection,
    consumer: DeadLetterConsumer,
    topology: &Topology,
    prefetch: u16,
    batch_size: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let queue = topology.queue(Queue::DeadLetter);
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            format!("dead-letter-{}", std::process::id()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot consume from {queue:?}"))?;
    tracing::info!(%queue, "dead-letter consuming");
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            item = deliveries.next() => item,
        };
        let mut batch = vec![delivery(first)?];
        // Bounded by bytes too: a batch of large bodies (requests set aside as too large) must
        // not outgrow the transaction's deadline, or it would fail the same way on every
        // redelivery.
        let mut bytes = batch[0].data.len();
        while batch.len() < batch_size.max(1) && bytes < MAX_BATCH_BYTES {
            match deliveries.next().now_or_never() {
                Some(item) => {
                    let next = delivery(item)?;
                    bytes += next.data.len();
                    batch.push(next);
                }
                None => break,
            }
        }
        let messages: Vec<Incoming> = batch
            .iter()
            .map(|delivery| Incoming {
                body: delivery.data.clone(),
                properties: delivery.properties.clone(),
                queue: Queue::DeadLetter,
                queue_name: queue.clone(),
                redelivered: delivery.redelivered,
            })
            .collect();
        // On error nothing is acked: the session ends and closing the connection requeues.
        consumer.handle(&messages).await?;
        for delivery in batch {
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .context("cannot ack a dead-letter delivery")?;
        }
    }
}

fn delivery(
    item: Option<Result<lapin::message::Delivery, lapin::Error>>,
) -> anyhow::Result<lapin::message::Delivery> {
    match item {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(error)) => Err(error).context("the dead-letter consumer failed"),
        None => anyhow::bail!("the broker cancelled the dead-letter consumer (queue deleted?)"),
    }
}

/// The queue a dead letter goes back to on replay, when it came from one mailtrail consumes.
pub fn replay_target(topology: &Topology, source_queue: &str) -> Option<Queue> {
    [
        Queue::Mailbox,
        Queue::MailboxPriority,
        Queue::Dispatching,
        Queue::DispatchingPriority,
        Queue::Tracking,
    ]
    .into_iter()
    .find(|q| topology.queue(*q) == source_queue)
}
