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
//!
//! # Fair dispatch
//!
//! One tenant's bulk send must not starve everyone else's mail, and the backlog is visible here,
//! so this is where fairness lives. A round claims, in this order:
//!
//! 1. priority jobs (`dispatching.priority`), oldest due first, never capped;
//! 2. if fairness is off ([`FairShare::per_tenant`] = 0), the oldest due jobs, uncapped;
//! 3. otherwise, for each tenant with due jobs, up to K − (its jobs in flight) of its oldest due
//!    jobs, interleaved round-robin (every tenant's first job, then every tenant's second, …),
//!    tenants taken in turn from where the previous round stopped, up to the batch.
//!
//! The cap holds for a tenant that is alone too. Fairness can only reorder what is still in the
//! outbox: a bulk sender let through uncapped while alone would move its whole backlog into the
//! broker at relay speed, and a tenant arriving a second later would wait behind all of it. So a
//! lone tenant also keeps at most K jobs in flight; since a slot frees at each first outcome and
//! the outcome wakes the relay, K at or above the dispatchers' combined concurrency
//! (`MAILTRAIL_DISPATCH_CONCURRENCY` × dispatchers) keeps every dispatcher busy with it: the cap
//! bounds how much of its mail is ahead of a newcomer, not how fast it goes.
//!
//! A job is *in flight* from `published_at` until its first outcome from the dispatcher
//! (`dispatched`, `deferred`, `failed` or `bounced`), when the tracking consumer sets
//! `settled_at` ([`settle_slots`]) and wakes the relay; one published longer than
//! [`FairShare::slot_timeout`] ago no longer counts, so a lost outcome cannot hold a slot for
//! ever. Retries wait in the dispatcher's delay queues and never pass through the outbox, so they
//! are outside the cap, as are priority jobs.
//!
//! Tenants with waiting jobs are found with a loose index scan (one index probe per tenant, not
//! per job) and each tenant's candidates with an index range scan bounded by its slots, so a
//! round costs the same with a 50,000-job backlog as with 50. Candidates are chosen first and
//! then locked `SKIP LOCKED`, re-checking `published_at IS NULL`: two relays computing the same
//! candidates split them instead of each taking K, so concurrent relays keep to the cap; it can
//! be exceeded only by jobs that became due or were accepted with an earlier `available_at`
//! between the two relays' snapshots, at most K per extra relay.

use crate::clock::Clock;
use crate::db::{DbPool, with_deadline};
use crate::faults;
use crate::history::{NewEvent, record_events};
use anyhow::Context;
use chrono::{DateTime, Utc};
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
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::intake::SERVICE;

/// The `source` of the dispatcher's outcome events (`mailtrail_dispatcher::outcome::SOURCE`).
const DISPATCHER_SOURCE: &str = "dispatcher";

/// Fair dispatch across tenants (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairShare {
    /// Most jobs of one tenant in flight (K); 0 turns fairness off.
    pub per_tenant: u32,
    /// How long a published job without an outcome holds its slot.
    pub slot_timeout: Duration,
}

impl Default for FairShare {
    /// The defaults of `MAILTRAIL_FAIR_SHARE_PER_TENANT` and `MAILTRAIL_FAIR_SLOT_TIMEOUT_SECS`.
    fn default() -> Self {
        FairShare {
            per_tenant: 200,
            slot_timeout: Duration::from_secs(900),
        }
    }
}

impl FairShare {
    /// No cap: due jobs leave oldest first, whatever their tenant.
    pub fn off() -> FairShare {
        FairShare {
            per_tenant: 0,
            ..FairShare::default()
        }
    }
}

#[derive(Clone)]
pub struct Relay {
    pool: DbPool,
    publisher: Publisher,
    topology: Topology,
    batch: i64,
    db_timeout: Duration,
    clock: Clock,
    fair: FairShare,
    /// The tenant whose job was the last one claimed by the previous fair round: the next round
    /// starts with the tenant after it.
    cursor: Arc<Mutex<Option<String>>>,
}

/// An outbox row locked by this round.
#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// A row locked by a fair round, with its place in the round-robin order.
#[derive(QueryableByName)]
struct ClaimedInTurn {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    tenant: String,
    #[diesel(sql_type = BigInt)]
    ord: i64,
}

#[derive(QueryableByName)]
struct Tenant {
    #[diesel(sql_type = Text)]
    tenant: String,
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
            fair: FairShare::default(),
            cursor: Arc::new(Mutex::new(None)),
        }
    }

    /// Caps each tenant's jobs in flight while others wait (default: `FairShare::default()`).
    pub fn with_fair_share(mut self, fair: FairShare) -> Relay {
        self.fair = fair;
        self
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
        .inspect(|published| {
            metrics::counter!("mailtrail_relay_jobs_published_total").increment(*published as u64)
        })
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
        let now = self.clock.now();
        let mut claimed = self.claim_priority(conn, now).await?;
        let budget = self.batch - claimed.len() as i64;
        if budget > 0 {
            claimed.extend(self.claim_normal(conn, now, budget).await?);
        }
        if claimed.is_empty() {
            return Ok(0);
        }
        let jobs = load_jobs(conn, &claimed).await?;

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
                trace_id: job.traceparent.as_deref().and_then(headers::trace_id_of),
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

    /// Locks up to a batch of due priority jobs, oldest first: priority mail is never capped.
    async fn claim_priority(
        &self,
        conn: &mut AsyncPgConnection,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<i64>> {
        // The queue is written out, not bound: the planner then knows priority rows are few
        // and does not walk every due normal job to find them.
        let rows: Vec<Claimed> = sql_query(format!(
            "SELECT id FROM outbox
              WHERE queue = '{}' AND published_at IS NULL AND available_at <= $1
              ORDER BY available_at, id
              LIMIT $2
              FOR UPDATE SKIP LOCKED",
            Queue::DispatchingPriority.base_name()
        ))
        .bind::<Timestamptz, _>(now)
        .bind::<BigInt, _>(self.batch)
        .load(conn)
        .await?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// Locks up to `budget` due jobs of the normal queue: uncapped when fairness is off, else
    /// each tenant's fair share, round-robin (a lone tenant included: see the module docs).
    async fn claim_normal(
        &self,
        conn: &mut AsyncPgConnection,
        now: DateTime<Utc>,
        budget: i64,
    ) -> anyhow::Result<Vec<i64>> {
        if self.fair.per_tenant == 0 {
            return self.claim_uncapped(conn, now, budget).await;
        }
        let waiting = tenants_with_due_jobs(conn, now).await?;
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        self.claim_fair(conn, now, budget, waiting).await
    }

    async fn claim_uncapped(
        &self,
        conn: &mut AsyncPgConnection,
        now: DateTime<Utc>,
        budget: i64,
    ) -> anyhow::Result<Vec<i64>> {
        // The LIMIT applies after SKIP LOCKED: relays running at once take different jobs.
        let rows: Vec<Claimed> = sql_query(format!(
            "SELECT id FROM outbox
              WHERE queue = '{}' AND published_at IS NULL AND available_at <= $1
              ORDER BY available_at, id
              LIMIT $2
              FOR UPDATE SKIP LOCKED",
            Queue::Dispatching.base_name()
        ))
        .bind::<Timestamptz, _>(now)
        .bind::<BigInt, _>(budget)
        .load(conn)
        .await?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    async fn claim_fair(
        &self,
        conn: &mut AsyncPgConnection,
        now: DateTime<Utc>,
        budget: i64,
        waiting: Vec<String>,
    ) -> anyhow::Result<Vec<i64>> {
        // No earlier than 1970: every job was published since, and a huge timeout (slots held
        // for ever) must not reach PostgreSQL as a time out of its range.
        let held_since = chrono::Duration::from_std(self.fair.slot_timeout)
            .ok()
            .and_then(|timeout| now.checked_sub_signed(timeout))
            .map_or(DateTime::UNIX_EPOCH, |since| {
                since.max(DateTime::UNIX_EPOCH)
            });
        let cursor = self
            .cursor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let waiting = in_turn(waiting, cursor.as_deref());
        // Candidates are chosen on the statement's snapshot and only then locked, skipping rows
        // another relay holds: a concurrent relay takes a part of the same K, not K more. Turns
        // are ranked by each tenant's position in `waiting` (integers, not text, to sort).
        let mut rows: Vec<ClaimedInTurn> = sql_query(
            r#"
            WITH waiting AS (
                SELECT tenant, pos FROM unnest($1::text[]) WITH ORDINALITY AS w(tenant, pos)
            ), allowed AS (
                SELECT w.tenant, w.pos,
                       GREATEST($2 - (SELECT count(*)
                                        FROM (SELECT 1 FROM outbox f
                                               WHERE f.queue = $3 AND f.tenant = w.tenant
                                                 AND f.published_at IS NOT NULL
                                                 AND f.settled_at IS NULL
                                                 AND f.published_at > $4
                                               LIMIT $2) held), 0) AS slots
                  FROM waiting w
            ), candidates AS (
                SELECT c.id, a.pos,
                       row_number() OVER (PARTITION BY a.pos
                                          ORDER BY c.available_at, c.id) AS turn
                  FROM allowed a
                 CROSS JOIN LATERAL (
                       SELECT o.id, o.available_at FROM outbox o
                        WHERE o.queue = $3 AND o.tenant = a.tenant
                          AND o.published_at IS NULL AND o.available_at <= $5
                        ORDER BY o.available_at, o.id
                        LIMIT LEAST(a.slots, $6)) c
            ), picked AS (
                SELECT id, row_number() OVER (ORDER BY turn, pos) AS ord
                  FROM candidates
                 ORDER BY ord
                 LIMIT $6
            )
            SELECT o.id, o.tenant, p.ord
              FROM picked p
              JOIN outbox o ON o.id = p.id
             WHERE o.published_at IS NULL
               FOR UPDATE OF o SKIP LOCKED
            "#,
        )
        .bind::<Array<Text>, _>(waiting)
        .bind::<BigInt, _>(i64::from(self.fair.per_tenant))
        .bind::<Text, _>(Queue::Dispatching.base_name())
        .bind::<Timestamptz, _>(held_since)
        .bind::<Timestamptz, _>(now)
        .bind::<BigInt, _>(budget)
        .load(conn)
        .await?;
        rows.sort_by_key(|r| r.ord);
        if let Some(last) = rows.last() {
            *self
                .cursor
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(last.tenant.clone());
        }
        Ok(rows.into_iter().map(|r| r.id).collect())
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

/// The tenants in the order they take turns: those after `cursor` (the tenant the previous round
/// ended on) first, then from the start.
fn in_turn(mut tenants: Vec<String>, cursor: Option<&str>) -> Vec<String> {
    tenants.sort_unstable();
    if let Some(cursor) = cursor {
        let after = tenants.partition_point(|t| t.as_str() <= cursor);
        tenants.rotate_left(after);
    }
    tenants
}

/// Tenants with due jobs in the normal queue: a loose index scan over the tenants with waiting
/// jobs (one probe each, however long a tenant's backlog), then one probe for a due one.
async fn tenants_with_due_jobs(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> diesel::QueryResult<Vec<String>> {
    let rows: Vec<Tenant> = sql_query(
        r#"
        WITH RECURSIVE waiting(tenant) AS (
            (SELECT tenant FROM outbox
              WHERE queue = $1 AND published_at IS NULL
              ORDER BY queue, tenant
              LIMIT 1)
            UNION ALL
            SELECT (SELECT o.tenant FROM outbox o
                     WHERE o.queue = $1 AND o.published_at IS NULL AND o.tenant > w.tenant
                     ORDER BY o.queue, o.tenant
                     LIMIT 1)
              FROM waiting w
             WHERE w.tenant IS NOT NULL
        )
        SELECT w.tenant FROM waiting w
         WHERE w.tenant IS NOT NULL
           AND EXISTS (SELECT 1 FROM outbox o
                        WHERE o.queue = $1 AND o.tenant = w.tenant
                          AND o.published_at IS NULL AND o.available_at <= $2)
        "#,
    )
    .bind::<Text, _>(Queue::Dispatching.base_name())
    .bind::<Timestamptz, _>(now)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|t| t.tenant).collect())
}

/// The claimed jobs with what their messages need, in the order they were claimed.
async fn load_jobs(
    conn: &mut AsyncPgConnection,
    claimed: &[i64],
) -> diesel::QueryResult<Vec<PendingJob>> {
    let mut jobs: Vec<PendingJob> = sql_query(
        r#"
        SELECT o.id, o.job_id, o.email_id, o.queue, o.attempt, o.traceparent,
               e.recipient, r.id AS request_id, r.tenant, r.request_key, r.priority,
               r.from_address, r.reply_to, r.subject, r.text_body, r.html_body, r.headers,
               r.tags, r.metadata, r.attachments
          FROM outbox o
          JOIN emails e ON e.id = o.email_id
          JOIN requests r ON r.id = e.request_id
         WHERE o.id = ANY($1)
        "#,
    )
    .bind::<Array<BigInt>, _>(claimed)
    .load(conn)
    .await?;
    let place: HashMap<i64, usize> = claimed.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    jobs.sort_by_key(|job| place.get(&job.id).copied().unwrap_or(usize::MAX));
    Ok(jobs)
}

/// Whether a reported event is a job's first outcome as far as fair dispatch is concerned: the
/// dispatcher's `dispatched`, `deferred`, `failed` or `bounced`.
pub fn frees_slot(event_type: EventType, source: &str) -> bool {
    source == DISPATCHER_SOURCE
        && matches!(
            event_type,
            EventType::Dispatched | EventType::Deferred | EventType::Failed | EventType::Bounced
        )
}

/// Frees the slots these emails' jobs hold (their first outcome arrived); returns how many.
///
/// Runs in the tracking transaction, before `record_events` locks the emails: outbox rows first,
/// then emails, the relay's and the cancel's order. A row a relay has locked while publishing is
/// waited for (an outcome can outrun the relay's commit), so the slot is freed either way.
pub async fn settle_slots(
    conn: &mut AsyncPgConnection,
    email_ids: &[uuid::Uuid],
) -> diesel::QueryResult<usize> {
    if email_ids.is_empty() {
        return Ok(0);
    }
    // Locked in id order, so two tracking transactions never wait on each other crosswise.
    sql_query(
        "UPDATE outbox SET settled_at = now()
          WHERE id IN (SELECT id FROM outbox
                        WHERE email_id = ANY($1) AND settled_at IS NULL
                        ORDER BY id
                          FOR UPDATE)",
    )
    .bind::<Array<SqlUuid>, _>(email_ids)
    .execute(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_take_turns_from_the_one_after_where_the_last_round_ended() {
        let tenants = || vec!["c".to_owned(), "a".to_owned(), "b".to_owned()];
        assert_eq!(in_turn(tenants(), None), ["a", "b", "c"]);
        assert_eq!(in_turn(tenants(), Some("a")), ["b", "c", "a"]);
        assert_eq!(in_turn(tenants(), Some("c")), ["a", "b", "c"]);
        // The tenant it ended on has nothing left: the next one after it still goes first.
        assert_eq!(in_turn(tenants(), Some("bb")), ["c", "a", "b"]);
    }

    #[test]
    fn only_the_dispatchers_first_outcomes_free_a_slot() {
        let freeing = [
            EventType::Dispatched,
            EventType::Deferred,
            EventType::Failed,
            EventType::Bounced,
        ];
        for event_type in EventType::ALL {
            assert_eq!(
                frees_slot(event_type, "dispatcher"),
                freeing.contains(&event_type),
                "{event_type:?}"
            );
            assert!(
                !frees_slot(event_type, "webhook:sendgrid"),
                "{event_type:?}"
            );
            assert!(!frees_slot(event_type, "operator"), "{event_type:?}");
        }
    }
}
