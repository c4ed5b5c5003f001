//! The outbox relay: publishes pending dispatch jobs with confirms, then — in the same
//! transaction that locked them — records `queued` and marks them sent.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED`, so several relays never publish the same row
//! at once. A crash after the broker confirmed but before the commit leaves the rows pending:
//! they are published again with the same job id, and the dispatcher de-duplicates on it.
//!
//! A scheduled job waits until its `available_at` is due; since a row is claimed under lock and
//! marked published in the transaction that claimed it, it is released once however many
//! operators run, and a restart merely finds it still pending.

use crate::clock::Clock;
use crate::db::{DbPool, with_deadline};
use crate::faults;
use crate::history::{NewEvent, record_events};
use anyhow::Context;
use diesel::sql_types::{Array, BigInt, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use lapin::types::{AMQPValue, FieldTable};
use mailtrail_broker::{OutgoingMessage, Publisher, json_properties};
use mailtrail_shared::dispatch::{DISPATCH_JOB_VERSION, DispatchJob};
use mailtrail_shared::headers;
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::topology::{Queue, Topology};
use std::time::Duration;

use crate::intake::SERVICE;

#[derive(Clone)]
pub struct Relay {
    pool: DbPool,
    publisher: Publisher,
    topology: Topology,
    batch: i64,
    db_timeout: Duration,
    clock: Clock,
}

#[derive(QueryableByName)]
struct PendingJob {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = SqlUuid)]
    job_id: uuid::Uuid,
    #[diesel(sql_type = SqlUuid)]
    email_id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    queue: String,
    #[diesel(sql_type = Int4)]
    attempt: i32,
    #[diesel(sql_type = Nullable<Text>)]
    traceparent: Option<String>,
    #[diesel(sql_type = Jsonb)]
    recipient: serde_json::Value,
    #[diesel(sql_type = SqlUuid)]
    request_id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    tenant: String,
    #[diesel(sql_type = Text)]
    request_key: String,
    #[diesel(sql_type = Text)]
    priority: String,
    #[diesel(sql_type = Jsonb)]
    from_address: serde_json::Value,
    #[diesel(sql_type = Nullable<Jsonb>)]
    reply_to: Option<serde_json::Value>,
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = Nullable<Text>)]
    text_body: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    html_body: Option<String>,
    #[diesel(sql_type = Jsonb)]
    headers: serde_json::Value,
    #[diesel(sql_type = Array<Text>)]
    tags: Vec<String>,
    #[diesel(sql_type = Jsonb)]
    metadata: serde_json::Value,
    #[diesel(sql_type = Jsonb)]
    attachments: serde_json::Value,
}

impl Relay {
    pub fn new(
        pool: DbPool,
        publisher: Publisher,
        topology: Topology,
        batch: i64,
        db_timeout: Duration,
    ) -> Relay {
        Relay {
            pool,
            publisher,
            topology,
            batch,
            db_timeout,
            clock: Clock::system(),
        }
    }

    /// Uses `clock` to decide which scheduled jobs are due (tests).
    pub fn with_clock(mut self, clock: Clock) -> Relay {
        self.clock = clock;
        self
    }

    /// Publishes up to one batch of pending jobs; returns how many were published. Priority
    /// jobs go first.
    #[tracing::instrument(skip_all)]
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        // The deadline covers the broker's confirms too: a stalled broker fails the round and
        // rolls it back, leaving the rows pending.
        with_deadline(self.db_timeout * 2, "relay round", async {
            let mut conn = self
                .pool
                .get()
                .await
                .context("no database connection for the relay")?;
            conn.transaction::<_, anyhow::Error, _>(async |conn| self.relay_in(conn).await)
                .await
        })
        .await
    }

    /// Runs rounds until nothing is pending; returns the total published.
    pub async fn drain(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let published = self.relay_once().await?;
            total += published;
            if published < self.batch as usize {
                return Ok(total);
            }
        }
    }

    async fn relay_in(&self, conn: &mut AsyncPgConnection) -> anyhow::Result<usize> {
        let jobs: Vec<PendingJob> = sql_query(
            r#"
            SELECT o.id, o.job_id, o.email_id, o.queue, o.attempt, o.traceparent,
                   e.recipient, r.id AS request_id, r.tenant, r.request_key, r.priority,
                   r.from_address, r.reply_to, r.subject, r.text_body, r.html_body, r.headers,
                   r.tags, r.metadata, r.attachments
              FROM (SELECT * FROM outbox
                     WHERE published_at IS NULL AND available_at <= $3
                     ORDER BY (queue = $2) DESC, id
                     LIMIT $1
                     FOR UPDATE SKIP LOCKED) o
              JOIN emails e ON e.id = o.email_id
              JOIN requests r ON r.id = e.request_id
             ORDER BY o.id
            "#,
        )
        .bind::<BigInt, _>(self.batch)
        .bind::<Text, _>(Queue::DispatchingPriority.base_name())
        .bind::<Timestamptz, _>(self.clock.now())
        .load(conn)
        .await?;
        if jobs.is_empty() {
            return Ok(0);
        }

        let messages = jobs
            .iter()
            .map(|job| self.message_for(job))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // `queued` is the moment the jobs are handed to the broker: stamped before the publish,
        // because a dispatcher may take and send a job before its confirm reaches us, and its
        // history must still read queued → dispatched.
        let handed_over_at = self.clock.now();
        self.publisher
            .publish_all(&messages)
            .await
            .context("cannot publish dispatch jobs")?;
        faults::crash_point(faults::RELAY_AFTER_PUBLISH);

        let events = jobs
            .iter()
            .map(|job| NewEvent {
                event_id: ids::operator_event_id("queued", job.job_id),
                email_id: job.email_id,
                event_type: EventType::Queued,
                occurred_at: handed_over_at,
                source: SERVICE.to_owned(),
                provider: None,
                provider_event_id: None,
                provider_message_id: None,
                details: serde_json::json!({
                    "job_id": job.job_id,
                    "queue": self.topology.queue(queue_of(job)),
                    "attempt": job.attempt,
                }),
            })
            .collect();
        record_events(conn, events).await?;
        let ids: Vec<i64> = jobs.iter().map(|job| job.id).collect();
        sql_query("UPDATE outbox SET published_at = $1 WHERE id = ANY($2)")
            .bind::<Timestamptz, _>(handed_over_at)
            .bind::<Array<BigInt>, _>(&ids)
            .execute(conn)
            .await?;
        tracing::debug!(jobs = jobs.len(), "dispatch jobs handed to the broker");
        Ok(jobs.len())
    }

    fn message_for(&self, job: &PendingJob) -> anyhow::Result<OutgoingMessage> {
        let payload = DispatchJob {
            version: DISPATCH_JOB_VERSION,
            job_id: job.job_id,
            email_id: job.email_id,
            request_id: job.request_id,
            request_key: job.request_key.clone(),
            tenant: job.tenant.clone(),
            attempt: job.attempt.max(1) as u32,
            priority: serde_json::from_value(serde_json::Value::String(job.priority.clone()))?,
            from: serde_json::from_value(job.from_address.clone())?,
            to: serde_json::from_value(job.recipient.clone())?,
            reply_to: job
                .reply_to
                .clone()
                .map(serde_json::from_value)
                .transpose()?,
            subject: job.subject.clone(),
            text: job.text_body.clone(),
            html: job.html_body.clone(),
            headers: serde_json::from_value(job.headers.clone())?,
            tags: job.tags.clone(),
            metadata: serde_json::from_value(job.metadata.clone())?,
            attachments: serde_json::from_value(job.attachments.clone())?,
            waits: 0,
            first_attempt_at: None,
        };
        let mut table = FieldTable::default();
        let mut put = |name: &str, value: String| {
            table.insert(name.into(), AMQPValue::LongString(value.into()));
        };
        put(headers::EMAIL_ID, job.email_id.to_string());
        put(headers::JOB_ID, job.job_id.to_string());
        put(headers::REQUEST_KEY, job.request_key.clone());
        put(headers::TENANT, job.tenant.clone());
        if let Some(tp) = &job.traceparent {
            put(headers::TRACEPARENT, tp.clone());
        }
        table.insert(
            headers::ATTEMPT.into(),
            AMQPValue::LongInt(job.attempt.max(1)),
        );
        Ok(OutgoingMessage {
            routing_key: self.topology.queue(queue_of(job)),
            body: serde_json::to_vec(&payload)?,
            properties: json_properties(&job.job_id.to_string(), table),
        })
    }
}

fn queue_of(job: &PendingJob) -> Queue {
    Queue::from_base_name(&job.queue).unwrap_or(Queue::Dispatching)
}
