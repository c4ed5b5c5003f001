//! Cancelling an email before it leaves. Its outbox row is locked without skipping, so a relay
//! that is publishing it right now finishes first and the cancel then sees it gone ("too late");
//! otherwise the row is deleted and `cancelled` recorded in the same transaction, so the relay
//! can never release it afterwards. Locks are taken outbox first, then the email (inside
//! [`record_events`]), the relay's order, so the two never deadlock.

use crate::history::{NewEvent, record_events};
use crate::intake::SERVICE;
use crate::keys::Principal;
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use uuid::Uuid;

/// What a cancel request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancellation {
    /// The job was withdrawn before it left; `cancelled` is recorded.
    Cancelled { was_due_at: DateTime<Utc> },
    /// It had been cancelled before: nothing changed.
    AlreadyCancelled,
    /// The job has left (or there never was one, e.g. a suppressed recipient): `status` says
    /// where the email is.
    TooLate { status: String },
    /// No such email for this key (another tenant's answers the same).
    NotFound,
}

#[derive(QueryableByName)]
struct EmailRow {
    #[diesel(sql_type = Text)]
    tenant: String,
    #[diesel(sql_type = Text)]
    status: String,
}

#[derive(QueryableByName)]
struct JobRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = SqlUuid)]
    job_id: Uuid,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    published_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    available_at: DateTime<Utc>,
}

/// Cancels `email_id` for `principal` (who must be allowed to see its tenant), at `now`.
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    principal: &Principal,
    email_id: Uuid,
    now: DateTime<Utc>,
) -> anyhow::Result<Cancellation> {
    conn.transaction::<_, anyhow::Error, _>(async |conn| {
        let email: Option<EmailRow> = sql_query("SELECT tenant, status FROM emails WHERE id = $1")
            .bind::<SqlUuid, _>(email_id)
            .get_result(conn)
            .await
            .map(Some)
            .or_else(|e| match e {
                diesel::result::Error::NotFound => Ok(None),
                e => Err(e),
            })?;
        let Some(email) = email.filter(|e| principal.may_see(&e.tenant)) else {
            return Ok(Cancellation::NotFound);
        };
        // Waits for a relay holding the row; SKIP LOCKED here would miss a job in flight.
        let jobs: Vec<JobRow> = sql_query(
            "SELECT id, job_id, published_at, available_at FROM outbox \
             WHERE email_id = $1 ORDER BY id FOR UPDATE",
        )
        .bind::<SqlUuid, _>(email_id)
        .load(conn)
        .await?;
        let pending: Vec<&JobRow> = jobs.iter().filter(|j| j.published_at.is_none()).collect();
        if jobs.iter().any(|j| j.published_at.is_some()) || pending.is_empty() {
            if email.status == EventType::Cancelled.as_str() {
                return Ok(Cancellation::AlreadyCancelled);
            }
            // Read again: the relay may have moved it on while we waited for the lock.
            let status: EmailRow = sql_query("SELECT tenant, status FROM emails WHERE id = $1")
                .bind::<SqlUuid, _>(email_id)
                .get_result(conn)
                .await?;
            return Ok(Cancellation::TooLate {
                status: status.status,
            });
        }
        let was_due_at = pending.iter().map(|j| j.available_at).min().unwrap_or(now);
        let job_ids: Vec<Uuid> = pending.iter().map(|j| j.job_id).collect();
        let row_ids: Vec<i64> = pending.iter().map(|j| j.id).collect();
        sql_query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind::<diesel::sql_types::Array<BigInt>, _>(&row_ids)
            .execute(conn)
            .await?;
        record_events(
            conn,
            vec![NewEvent {
                event_id: ids::operator_event_id("cancelled", email_id),
                email_id,
                event_type: EventType::Cancelled,
                occurred_at: now,
                source: SERVICE.to_owned(),
                provider: None,
                provider_event_id: None,
                provider_message_id: None,
                details: serde_json::json!({
                    "job_ids": job_ids,
                    "was_due_at": was_due_at,
                    "cancelled_by_key": principal.key_id,
                }),
                trace_id: None,
            }],
        )
        .await?;
        crate::audit::record(
            conn,
            crate::audit::Actor::Key(principal),
            "message.cancel",
            Some(&email.tenant),
            &email_id.to_string(),
            serde_json::json!({"was_due_at": was_due_at, "job_ids": job_ids}),
        )
        .await?;
        Ok(Cancellation::Cancelled { was_due_at })
    })
    .await
}
