//! The status relay: tells apps what happened without polling. Every event recorded in the
//! history is queued in `status_outbox` by a trigger, in the transaction that records it (so an
//! event is announced only once it is durable, and never lost between commit and publish). This
//! relay publishes queued events to the `<prefix>events` topic exchange with routing key
//! `email.<tenant>.<type>`, waits for the broker's confirms, and only then deletes the rows.
//!
//! Rows are claimed `FOR UPDATE SKIP LOCKED`, so several operators share the work. A crash
//! between the confirms and the commit publishes the same events again, with the same
//! `message_id` (the event id): delivery is at least once, and consumers de-duplicate on it and
//! order one email's events by `seq` (`docs/status-events.md`).

use crate::db::{DbPool, with_deadline};
use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use lapin::types::{AMQPValue, FieldTable};
use mailtrail_broker::{OutgoingMessage, Publisher, json_properties};
use mailtrail_shared::headers;
use mailtrail_shared::status::{STATUS_EVENT_VERSION, StatusEvent};
use mailtrail_shared::topology::{Topology, status_routing_key};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Publishes queued status events; cheap to clone.
#[derive(Clone)]
pub struct StatusRelay {
    pool: DbPool,
    /// `None` when status events are turned off: queued rows are then dropped unpublished.
    publisher: Option<Publisher>,
    exchange: String,
    batch: i64,
    db_timeout: Duration,
}

/// A queued row and its event (all `None` when the event was purged by retention meanwhile).
#[derive(QueryableByName)]
struct QueuedEvent {
    #[diesel(sql_type = BigInt)]
    outbox_row: i64,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    event_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    email_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Int4>)]
    seq: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    event_type: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    occurred_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    source: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    provider: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    provider_message_id: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    details: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Text>)]
    tenant: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    recipient: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    request_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    request_key: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    metadata: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Text>)]
    trace_id: Option<String>,
}

impl QueuedEvent {
    /// The public status event, or `None` when its event is gone.
    fn status_event(self) -> Option<StatusEvent> {
        Some(StatusEvent {
            version: STATUS_EVENT_VERSION,
            event_id: self.event_id?,
            email_id: self.email_id?,
            id: self.request_key?,
            request_id: self.request_id?,
            tenant: self.tenant?,
            event_type: self.event_type?,
            occurred_at: self.occurred_at?,
            seq: self.seq?,
            recipient: self.recipient?,
            metadata: self.metadata?,
            source: self.source?,
            provider: self.provider,
            provider_message_id: self.provider_message_id,
            details: self.details?,
        })
    }
}

impl StatusRelay {
    pub fn new(
        pool: DbPool,
        publisher: Option<Publisher>,
        topology: &Topology,
        batch: i64,
        db_timeout: Duration,
    ) -> StatusRelay {
        StatusRelay {
            pool,
            publisher,
            exchange: topology.events_exchange(),
            batch: batch.max(1),
            db_timeout,
        }
    }

    /// Publishes (or, turned off, drops) up to one batch of queued events; returns how many
    /// rows it cleared.
    #[tracing::instrument(skip_all)]
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        // The deadline covers the confirms: a stalled broker rolls the round back.
        with_deadline(self.db_timeout * 2, "status relay round", async {
            let mut conn = self
                .pool
                .get()
                .await
                .context("no database connection for the status relay")?;
            conn.transaction::<_, anyhow::Error, _>(async |conn| self.relay_in(conn).await)
                .await
        })
        .await
        .inspect(|cleared| {
            metrics::counter!("mailtrail_status_events_cleared_total").increment(*cleared as u64)
        })
    }

    /// Runs rounds until nothing is queued; returns the total cleared.
    pub async fn drain(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let cleared = self.relay_once().await?;
            total += cleared;
            if cleared < self.batch as usize {
                return Ok(total);
            }
        }
    }

    async fn relay_in(&self, conn: &mut AsyncPgConnection) -> anyhow::Result<usize> {
        let queued: Vec<QueuedEvent> = sql_query(
            r#"
            SELECT s.id AS outbox_row, x.*
              FROM (SELECT id, event_row FROM status_outbox
                     ORDER BY id
                     LIMIT $1
                     FOR UPDATE SKIP LOCKED) s
              LEFT JOIN LATERAL (
                    SELECT e.event_id, e.email_id, e.seq, e.event_type, e.occurred_at,
                           e.source, e.provider, e.provider_message_id, e.details, e.trace_id,
                           m.tenant, m.recipient->>'address' AS recipient,
                           r.id AS request_id, r.request_key, r.metadata
                      FROM events e
                      LEFT JOIN emails m ON m.id = e.email_id
                      LEFT JOIN requests r ON r.id = m.request_id
                     WHERE e.id = s.event_row
                    -- A fence: each claimed row is looked up by primary key. Joined plainly,
                    -- the planner hash-joined the whole events table every round (mtbench).
                    OFFSET 0) x ON true
             ORDER BY s.id
            "#,
        )
        .bind::<BigInt, _>(self.batch)
        .load(conn)
        .await?;
        if queued.is_empty() {
            return Ok(0);
        }
        let rows: Vec<i64> = queued.iter().map(|q| q.outbox_row).collect();
        if let Some(publisher) = &self.publisher {
            let messages = queued
                .into_iter()
                .filter_map(|queued| {
                    let trace_id = queued.trace_id.clone();
                    Some((queued.status_event()?, trace_id))
                })
                .map(|(event, trace_id)| message_for(&event, trace_id.as_deref()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            publisher
                .publish_to_exchange(&self.exchange, &messages)
                .await
                .with_context(|| format!("cannot publish status events to {:?}", self.exchange))?;
        }
        sql_query("DELETE FROM status_outbox WHERE id = ANY($1)")
            .bind::<Array<BigInt>, _>(&rows)
            .execute(conn)
            .await?;
        tracing::debug!(events = rows.len(), "status events published");
        Ok(rows.len())
    }
}

/// The status event's message; its `traceparent` continues the trace the event was recorded in,
/// so an app's own handling joins the email's trace.
fn message_for(event: &StatusEvent, trace_id: Option<&str>) -> anyhow::Result<OutgoingMessage> {
    let mut table = FieldTable::default();
    let mut put = |name: &str, value: String| {
        table.insert(name.into(), AMQPValue::LongString(value.into()));
    };
    put(headers::EMAIL_ID, event.email_id.to_string());
    put(headers::TENANT, event.tenant.clone());
    put(headers::REQUEST_KEY, event.id.clone());
    put(headers::TRACEPARENT, headers::continue_trace_id(trace_id));
    let properties = json_properties(&event.event_id.to_string(), table)
        .with_type(event.event_type.as_str().into());
    Ok(OutgoingMessage {
        routing_key: status_routing_key(&event.tenant, &event.event_type),
        body: serde_json::to_vec(event)?,
        properties,
    })
}

/// Relays status events until `stop`: drains, then looks again after `interval` (an empty look
/// is one indexed query).
pub async fn status_relay_loop(
    relay: StatusRelay,
    interval: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        relay.drain().await?;
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
