//! Recording events in emails' histories, by the rules in `mailtrail_shared::history`:
//! each event gets the email's next sequence number, and the summary status moves only to a
//! status of higher precedence, so the summary does not depend on arrival order.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Int2, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use mailtrail_shared::history::{EventType, summary_order};
use mailtrail_shared::tracking::{TrackingEvent, normalize_provider_message_id};
use std::collections::HashSet;
use uuid::Uuid;

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// De-duplication key: an event whose id is already recorded is skipped.
    pub event_id: Uuid,
    pub email_id: Uuid,
    pub event_type: EventType,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub provider: Option<String>,
    pub provider_event_id: Option<String>,
    pub provider_message_id: Option<String>,
    pub details: serde_json::Value,
    /// The trace id of the hop that reported it (`headers::trace_id_of`), when it carried one.
    pub trace_id: Option<String>,
}

impl NewEvent {
    /// A reported tracking event, recorded for `email_id`; the provider's message id is stored
    /// in the form webhooks are matched against.
    pub fn reported(event: &TrackingEvent, email_id: Uuid, trace_id: Option<String>) -> NewEvent {
        NewEvent {
            event_id: event.event_id,
            email_id,
            event_type: event.event_type,
            occurred_at: event.occurred_at,
            source: event.source.clone(),
            provider: event.provider.clone(),
            provider_event_id: event.provider_event_id.clone(),
            provider_message_id: normalized_message_id(event),
            details: event.details.clone(),
            trace_id,
        }
    }
}

/// The event's provider message id in its stored form.
pub fn normalized_message_id(event: &TrackingEvent) -> Option<String> {
    let id = event.provider_message_id.as_deref()?;
    let provider = event.provider.as_deref().unwrap_or_default();
    Some(normalize_provider_message_id(provider, id))
}

/// Records events (skipping ids already recorded) and moves each email's summary. Returns how
/// many were recorded. Runs inside the caller's transaction.
pub async fn record_events(
    conn: &mut AsyncPgConnection,
    events: Vec<NewEvent>,
) -> diesel::QueryResult<usize> {
    if events.is_empty() {
        return Ok(0);
    }
    // Lock every email row this call touches, in id order, before changing any: the intake,
    // the relay and the tracking consumer record events concurrently, and rows locked in
    // different orders by two transactions deadlock (PostgreSQL then aborts one, which for the
    // relay means republishing jobs it has already handed over).
    let mut email_ids: Vec<Uuid> = events.iter().map(|e| e.email_id).collect();
    email_ids.sort_unstable();
    email_ids.dedup();
    diesel::sql_query("SELECT id FROM emails WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind::<Array<SqlUuid>, _>(email_ids)
        .execute(conn)
        .await?;
    let mut recorded = 0;
    // An UPDATE … FROM bumps each email once per statement, so an email with several events in
    // this call is handled over several rounds, in the order given.
    for round in rounds_with_distinct_emails(events) {
        recorded += record_round(conn, round).await?;
    }
    Ok(recorded)
}

fn rounds_with_distinct_emails(events: Vec<NewEvent>) -> Vec<Vec<NewEvent>> {
    let mut rounds: Vec<(HashSet<Uuid>, Vec<NewEvent>)> = Vec::new();
    for event in events {
        // The first round after the last one that holds this email keeps the given order.
        let last_with_email = rounds
            .iter()
            .rposition(|(emails, _)| emails.contains(&event.email_id));
        let target = last_with_email.map_or(0, |i| i + 1);
        if target == rounds.len() {
            rounds.push((HashSet::new(), Vec::new()));
        }
        rounds[target].0.insert(event.email_id);
        rounds[target].1.push(event);
    }
    rounds.into_iter().map(|(_, events)| events).collect()
}

async fn record_round(
    conn: &mut AsyncPgConnection,
    events: Vec<NewEvent>,
) -> diesel::QueryResult<usize> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut event_ids = Vec::with_capacity(events.len());
    let mut email_ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut ranks = Vec::with_capacity(events.len());
    let mut precedences = Vec::with_capacity(events.len());
    let mut occurred = Vec::with_capacity(events.len());
    let mut sources = Vec::with_capacity(events.len());
    let mut providers = Vec::with_capacity(events.len());
    let mut provider_event_ids = Vec::with_capacity(events.len());
    let mut provider_message_ids = Vec::with_capacity(events.len());
    let mut details = Vec::with_capacity(events.len());
    let mut trace_ids = Vec::with_capacity(events.len());
    for e in events {
        event_ids.push(e.event_id);
        email_ids.push(e.email_id);
        types.push(e.event_type.as_str().to_owned());
        ranks.push(e.event_type.lifecycle_rank());
        precedences.push(e.event_type.status_precedence());
        occurred.push(e.occurred_at);
        sources.push(e.source);
        providers.push(e.provider);
        provider_event_ids.push(e.provider_event_id);
        provider_message_ids.push(e.provider_message_id);
        details.push(e.details);
        trace_ids.push(e.trace_id);
    }
    diesel::sql_query(
        r#"
        WITH incoming AS (
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int2[], $5::int2[],
                                 $6::timestamptz[], $7::text[], $8::jsonb[], $9::text[],
                                 $10::text[], $11::text[], $13::text[])
                AS i(event_id, email_id, event_type, lifecycle_rank, precedence, occurred_at,
                     source, details, provider, provider_event_id, provider_message_id,
                     trace_id)
            WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = i.event_id)
              -- The same provider event for this email under another id (another key's scope):
              -- recorded once, and the email is not bumped for it.
              AND NOT EXISTS (SELECT 1 FROM events e
                               WHERE i.provider_event_id IS NOT NULL
                                 AND e.email_id = i.email_id AND e.provider = i.provider
                                 AND e.provider_event_id = i.provider_event_id)
        ), bumped AS (
            UPDATE emails m
               SET last_seq = m.last_seq + 1,
                   -- Equal precedences (failed, rejected, …) are settled by the fixed summary
                   -- order ($12, strongest first), not by which arrived first.
                   status = CASE WHEN incoming.precedence > m.status_precedence
                                   OR (incoming.precedence = m.status_precedence
                                       AND array_position($12::text[], incoming.event_type)
                                           < array_position($12::text[], m.status))
                                 THEN incoming.event_type ELSE m.status END,
                   status_precedence = GREATEST(m.status_precedence, incoming.precedence),
                   -- The provider that took the email, as its `dispatched` event says; later
                   -- webhooks are matched against it.
                   provider = CASE WHEN incoming.event_type = 'dispatched'
                                   THEN COALESCE(incoming.provider, m.provider)
                                   ELSE m.provider END,
                   provider_message_id = CASE WHEN incoming.event_type = 'dispatched'
                                              THEN incoming.provider_message_id
                                              ELSE m.provider_message_id END,
                   -- Counters and first times: sums and minimums, so arrival order is moot.
                   open_count = m.open_count + (incoming.event_type = 'opened')::int,
                   click_count = m.click_count + (incoming.event_type = 'clicked')::int,
                   first_opened_at = CASE WHEN incoming.event_type = 'opened'
                                          THEN LEAST(m.first_opened_at, incoming.occurred_at)
                                          ELSE m.first_opened_at END,
                   first_clicked_at = CASE WHEN incoming.event_type = 'clicked'
                                           THEN LEAST(m.first_clicked_at, incoming.occurred_at)
                                           ELSE m.first_clicked_at END,
                   updated_at = now()
              FROM incoming
             WHERE m.id = incoming.email_id
         RETURNING m.last_seq AS seq, incoming.*
        )
        INSERT INTO events (event_id, email_id, seq, event_type, lifecycle_rank, occurred_at,
                            source, details, provider, provider_event_id, provider_message_id,
                            trace_id)
        SELECT b.event_id, b.email_id, b.seq, b.event_type, b.lifecycle_rank, b.occurred_at,
               b.source, b.details, b.provider, b.provider_event_id, b.provider_message_id,
               b.trace_id
          FROM bumped b
        ON CONFLICT DO NOTHING
        "#,
    )
    .bind::<Array<SqlUuid>, _>(event_ids)
    .bind::<Array<SqlUuid>, _>(email_ids)
    .bind::<Array<Text>, _>(types)
    .bind::<Array<Int2>, _>(ranks)
    .bind::<Array<Int2>, _>(precedences)
    .bind::<Array<Timestamptz>, _>(occurred)
    .bind::<Array<Text>, _>(sources)
    .bind::<Array<Jsonb>, _>(details)
    .bind::<Array<Nullable<Text>>, _>(providers)
    .bind::<Array<Nullable<Text>>, _>(provider_event_ids)
    .bind::<Array<Nullable<Text>>, _>(provider_message_ids)
    .bind::<Array<Text>, _>(
        summary_order()
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(trace_ids)
    .execute(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(email: u128) -> NewEvent {
        NewEvent {
            event_id: Uuid::new_v4(),
            email_id: Uuid::from_u128(email),
            event_type: EventType::Queued,
            occurred_at: Utc::now(),
            source: "test".into(),
            provider: None,
            provider_event_id: None,
            provider_message_id: None,
            details: serde_json::json!({}),
            trace_id: None,
        }
    }

    #[test]
    fn rounds_keep_each_email_once_and_in_order() {
        let events = vec![event(1), event(2), event(1), event(3), event(1)];
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let rounds = rounds_with_distinct_emails(events);
        assert_eq!(rounds.len(), 3);
        for round in &rounds {
            let distinct: HashSet<_> = round.iter().map(|e| e.email_id).collect();
            assert_eq!(distinct.len(), round.len());
        }
        // Email 1's events stay in the given order across rounds.
        let email1: Vec<Uuid> = rounds
            .iter()
            .flatten()
            .filter(|e| e.email_id == Uuid::from_u128(1))
            .map(|e| e.event_id)
            .collect();
        assert_eq!(email1, vec![ids[0], ids[2], ids[4]]);
    }
}
