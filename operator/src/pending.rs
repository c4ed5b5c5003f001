//! Tracking events that arrived before their email could be found: kept in `pending_events`
//! and recorded when the email appears (its intake, or the `dispatched` event that names the
//! provider's message id), so arrival order never loses an event. Those still unmatched after
//! the configured time are set aside as `unknown_email`.

use crate::dead_letters::{DeadLetterOwner, record_dead_letter};
use crate::history::{NewEvent, record_events};
use diesel::QueryableByName;
use diesel::sql_types::{Array, Integer, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use lapin::BasicProperties;
use mailtrail_broker::{Incoming, SetAside};
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use uuid::Uuid;

const SERVICE: &str = "operator";

/// Keeps an event whose email is not known yet. A repeat of a kept event changes nothing.
pub async fn keep(
    conn: &mut AsyncPgConnection,
    event: &TrackingEvent,
    normalized_message_id: Option<&str>,
) -> diesel::QueryResult<usize> {
    let body = serde_json::to_value(event).map_err(|e| {
        diesel::result::Error::SerializationError(
            Box::new(e) as Box<dyn std::error::Error + Send + Sync>
        )
    })?;
    diesel::sql_query(
        "INSERT INTO pending_events (event_id, email_id, provider, provider_message_id, tenant, event)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind::<SqlUuid, _>(event.event_id)
    .bind::<Nullable<SqlUuid>, _>(event.email_id)
    .bind::<Nullable<Text>, _>(event.provider.as_deref())
    .bind::<Nullable<Text>, _>(normalized_message_id)
    .bind::<Text, _>(&event.tenant)
    .bind::<Jsonb, _>(body)
    .execute(conn)
    .await
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = Jsonb)]
    event: serde_json::Value,
    #[diesel(sql_type = SqlUuid)]
    email_id: Uuid,
    #[diesel(sql_type = Text)]
    tenant: String,
}

/// What attaching found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attached {
    pub recorded: usize,
    pub set_aside: usize,
}

/// Records the kept events that belong to `email_ids` (by our id, or by the provider's message
/// id now stored on the email) and removes them from the waiting list; an event whose
/// credential may not speak for the email's tenant is set aside (`tenant_mismatch`). Runs
/// inside the caller's transaction.
pub async fn attach(conn: &mut AsyncPgConnection, email_ids: &[Uuid]) -> anyhow::Result<Attached> {
    if email_ids.is_empty() {
        return Ok(Attached::default());
    }
    let claimed: Vec<Claimed> = diesel::sql_query(
        "DELETE FROM pending_events p
          USING emails m
          WHERE m.id = ANY($1)
            AND (p.email_id = m.id
                 OR (p.email_id IS NULL AND p.provider = m.provider
                     AND p.provider_message_id = m.provider_message_id))
      RETURNING p.event, m.id AS email_id, m.tenant",
    )
    .bind::<Array<SqlUuid>, _>(email_ids)
    .load(conn)
    .await?;
    let mut attached = Attached::default();
    let mut events = Vec::new();
    for row in claimed {
        let event: TrackingEvent = match serde_json::from_value(row.event.clone()) {
            Ok(event) => event,
            Err(e) => {
                set_aside(conn, &row, "invalid_event", &format!("unreadable: {e}")).await?;
                attached.set_aside += 1;
                continue;
            }
        };
        if !event.may_speak_for(&row.tenant) {
            let detail = format!(
                "email {} belongs to another tenant than {:?}",
                row.email_id, event.tenant
            );
            set_aside(conn, &row, "tenant_mismatch", &detail).await?;
            attached.set_aside += 1;
            continue;
        }
        // The trace of a report that waited is not kept (the event body carries none).
        events.push(NewEvent::reported(&event, row.email_id, None));
    }
    attached.recorded = record_events(conn, events).await?;
    Ok(attached)
}

/// Sets aside (in the database) the events that waited longer than `older_than_hours` for an
/// email that never appeared. Returns how many.
pub async fn expire(conn: &mut AsyncPgConnection, older_than_hours: u32) -> anyhow::Result<usize> {
    #[derive(QueryableByName)]
    struct Expired {
        #[diesel(sql_type = Jsonb)]
        event: serde_json::Value,
        #[diesel(sql_type = Text)]
        tenant: String,
    }
    let expired: Vec<Expired> = diesel::sql_query(
        "DELETE FROM pending_events
          WHERE received_at < now() - make_interval(hours => $1)
      RETURNING event, tenant",
    )
    .bind::<Integer, _>(i32::try_from(older_than_hours).unwrap_or(i32::MAX))
    .load(conn)
    .await?;
    for row in &expired {
        let message = as_incoming(&row.event);
        let detail = format!(
            "no email matched this event within {older_than_hours} h (by our id or the provider's message id)"
        );
        let copy = SetAside::for_message(&message, "unknown_email", &detail, SERVICE);
        let owner = DeadLetterOwner {
            tenant: Some(row.tenant.clone()),
            request_key: None,
            email_id: row
                .event
                .get("email_id")
                .and_then(|v| v.as_str())
                .and_then(|s| Uuid::parse_str(s).ok()),
        };
        record_dead_letter(conn, &message, &copy, owner).await?;
    }
    Ok(expired.len())
}

async fn set_aside(
    conn: &mut AsyncPgConnection,
    row: &Claimed,
    reason: &str,
    detail: &str,
) -> anyhow::Result<()> {
    let message = as_incoming(&row.event);
    let copy = SetAside::for_message(&message, reason, detail, SERVICE);
    let owner = DeadLetterOwner {
        tenant: Some(row.tenant.clone()),
        request_key: None,
        email_id: Some(row.email_id),
    };
    record_dead_letter(conn, &message, &copy, owner).await?;
    Ok(())
}

/// The kept event as the tracking message it arrived as, for the dead-letter record.
fn as_incoming(event: &serde_json::Value) -> Incoming {
    let message_id = event
        .get("event_id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    Incoming {
        body: serde_json::to_vec(event).unwrap_or_default(),
        properties: BasicProperties::default().with_message_id(message_id.into()),
        queue: Queue::Tracking,
        queue_name: "pending_events".into(),
        redelivered: false,
    }
}

/// Every few minutes, sets aside the events that waited too long (see [`expire`]).
pub async fn expiry_loop(
    pool: crate::db::DbPool,
    ttl_hours: u32,
    deadline: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(300);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let result = crate::db::with_deadline(deadline, "expiring waiting events", async {
            let mut conn = pool.get().await?;
            expire(&mut conn, ttl_hours).await
        })
        .await;
        match result {
            Ok(0) => {}
            Ok(count) => tracing::warn!(
                count,
                ttl_hours,
                "tracking events never matched an email; set aside as unknown_email"
            ),
            Err(error) => tracing::warn!(%error, "could not expire waiting tracking events"),
        }
    }
}
