//! Retention: old mail is purged in small batches that never wait on the rows normal work holds.
//!
//! * Requests older than `MAILTRAIL_RETENTION_DAYS` are deleted, and with them (by
//!   `ON DELETE CASCADE`) their emails, events and outbox rows, but only once every outbox row of
//!   the request is published: a job still waiting for the relay keeps its request.
//! * Bodies and attachments may go earlier (`MAILTRAIL_RETENTION_BODY_DAYS`): `text_body` and
//!   `html_body` become NULL, `attachments` `[]`, and `bodies_dropped_at` says when; subject,
//!   recipients, statuses and history stay. A request with a job still waiting keeps its body.
//! * Dead letters last seen before the retention are deleted.
//!
//! Every statement touches at most `batch` rows, picked oldest first with
//! `FOR UPDATE SKIP LOCKED` (a request whose emails the tracking or the relay holds is left for
//! the next run), and commits on its own; batches repeat until one comes back short.
//!
//! Idempotency keys: the `(tenant, request_key)` key is the request row itself, so it lives
//! exactly as long as the request. Once a request is purged, a request with the same key is
//! accepted as a new one.

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::time::Duration;

/// What retention keeps, and how fast it purges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Requests (with their emails, events, outbox rows) and dead letters older than this many
    /// days are deleted; 0: kept forever.
    pub days: u32,
    /// Bodies and attachments of requests older than this many days are dropped; 0: never.
    pub body_days: u32,
    /// Most rows one statement deletes or updates.
    pub batch: u32,
    /// How often the loop runs.
    pub interval: Duration,
}

impl RetentionPolicy {
    /// Whether anything is ever purged.
    pub fn is_enabled(&self) -> bool {
        self.days > 0 || self.body_days > 0
    }
}

/// What one run purged.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Requests deleted (with their emails, events and outbox rows).
    pub requests: usize,
    /// Requests whose bodies and attachments were dropped.
    pub bodies: usize,
    /// Dead letters deleted.
    pub dead_letters: usize,
}

impl Purged {
    pub fn is_empty(&self) -> bool {
        *self == Purged::default()
    }
}

/// Requests past the retention whose jobs are all published (or that have none), oldest first;
/// their emails are locked too, and a request with an email someone else holds is skipped.
const DELETE_REQUESTS: &str = "
WITH candidates AS MATERIALIZED (
    SELECT r.id FROM requests r
     WHERE r.created_at < $1
       AND NOT EXISTS (SELECT 1 FROM emails m JOIN outbox o ON o.email_id = m.id
                        WHERE m.request_id = r.id AND o.published_at IS NULL)
     ORDER BY r.created_at
     LIMIT $2
     FOR UPDATE SKIP LOCKED
), held AS MATERIALIZED (
    SELECT m.id FROM emails m
     WHERE m.request_id IN (SELECT id FROM candidates)
     FOR UPDATE SKIP LOCKED
), doomed AS MATERIALIZED (
    SELECT c.id FROM candidates c
     WHERE NOT EXISTS (SELECT 1 FROM emails m
                        WHERE m.request_id = c.id AND m.id NOT IN (SELECT id FROM held))
)
DELETE FROM requests r USING doomed d WHERE r.id = d.id";

/// Requests past the body retention, bodies still kept, jobs all published, oldest first.
const DROP_BODIES: &str = "
WITH doomed AS MATERIALIZED (
    SELECT r.id FROM requests r
     WHERE r.created_at < $1
       AND r.bodies_dropped_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM emails m JOIN outbox o ON o.email_id = m.id
                        WHERE m.request_id = r.id AND o.published_at IS NULL)
     ORDER BY r.created_at
     LIMIT $2
     FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE requests r
   SET text_body = NULL, html_body = NULL, attachments = '[]'::jsonb, bodies_dropped_at = $3
  FROM doomed d
 WHERE r.id = d.id";

const DELETE_DEAD_LETTERS: &str = "
WITH doomed AS MATERIALIZED (
    SELECT id FROM dead_letters
     WHERE last_seen_at < $1
     ORDER BY last_seen_at
     LIMIT $2
     FOR UPDATE SKIP LOCKED
)
DELETE FROM dead_letters d USING doomed WHERE d.id = doomed.id";

/// How batches are paced: a client-side deadline on each, and a pause between them.
struct Pace {
    deadline: Option<Duration>,
    pause: Duration,
}

/// One retention run at `now`: every purge, batch after batch, until nothing is left.
pub async fn run_once(
    conn: &mut AsyncPgConnection,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> anyhow::Result<Purged> {
    let pace = Pace {
        deadline: None,
        pause: Duration::ZERO,
    };
    purge(conn, policy, now, &pace).await
}

async fn purge(
    conn: &mut AsyncPgConnection,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
    pace: &Pace,
) -> anyhow::Result<Purged> {
    let mut purged = Purged::default();
    if let Some(cutoff) = cutoff(now, policy.days) {
        purged.requests = batches(
            conn,
            policy,
            pace,
            "purging requests",
            move |conn, batch| {
                Box::pin(
                    diesel::sql_query(DELETE_REQUESTS)
                        .bind::<Timestamptz, _>(cutoff)
                        .bind::<BigInt, _>(batch)
                        .execute(conn),
                )
            },
        )
        .await?;
    }
    if let Some(cutoff) = cutoff(now, policy.body_days) {
        purged.bodies = batches(conn, policy, pace, "dropping bodies", move |conn, batch| {
            Box::pin(
                diesel::sql_query(DROP_BODIES)
                    .bind::<Timestamptz, _>(cutoff)
                    .bind::<BigInt, _>(batch)
                    .bind::<Timestamptz, _>(now)
                    .execute(conn),
            )
        })
        .await?;
    }
    if let Some(cutoff) = cutoff(now, policy.days) {
        purged.dead_letters = batches(
            conn,
            policy,
            pace,
            "purging dead letters",
            move |conn, batch| {
                Box::pin(
                    diesel::sql_query(DELETE_DEAD_LETTERS)
                        .bind::<Timestamptz, _>(cutoff)
                        .bind::<BigInt, _>(batch)
                        .execute(conn),
                )
            },
        )
        .await?;
    }
    Ok(purged)
}

fn cutoff(now: DateTime<Utc>, days: u32) -> Option<DateTime<Utc>> {
    (days > 0).then(|| now - chrono::Duration::days(i64::from(days)))
}

type Statement<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = diesel::QueryResult<usize>> + Send + 'a>>;

/// Runs `statement` (each call its own transaction, at most `batch` rows) until a batch comes
/// back short; returns the rows touched.
async fn batches<F>(
    conn: &mut AsyncPgConnection,
    policy: &RetentionPolicy,
    pace: &Pace,
    what: &str,
    statement: F,
) -> anyhow::Result<usize>
where
    F: for<'a> Fn(&'a mut AsyncPgConnection, i64) -> Statement<'a>,
{
    let batch = policy.batch.max(1);
    let mut total = 0;
    loop {
        let call = async { Ok(statement(conn, i64::from(batch)).await?) };
        let done = match pace.deadline {
            Some(deadline) => crate::db::with_deadline(deadline, what, call).await?,
            None => call.await?,
        };
        total += done;
        if done < batch as usize {
            return Ok(total);
        }
        if pace.pause.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(pace.pause).await;
        }
    }
}

/// Runs retention every `policy.interval` until `stop`; logs what each run purged (nothing when
/// nothing was). Each batch has `deadline`.
pub async fn retention_loop(
    pool: crate::db::DbPool,
    policy: RetentionPolicy,
    deadline: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    const PAUSE: Duration = Duration::from_millis(20);
    let pace = Pace {
        deadline: Some(deadline),
        pause: PAUSE,
    };
    let every = policy.interval.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let run = async {
            let mut conn = crate::db::with_deadline(deadline, "retention connection", async {
                Ok(pool.get().await?)
            })
            .await?;
            purge(&mut conn, &policy, Utc::now(), &pace).await
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = run => result,
        };
        match result {
            Ok(purged) if purged.is_empty() => {}
            Ok(purged) => tracing::info!(
                requests = purged.requests,
                bodies = purged.bodies,
                dead_letters = purged.dead_letters,
                retention_days = policy.days,
                body_retention_days = policy.body_days,
                "retention purged old mail"
            ),
            Err(error) => tracing::warn!(
                error = %format!("{error:#}"),
                "retention run failed; trying again at the next interval"
            ),
        }
    }
}
