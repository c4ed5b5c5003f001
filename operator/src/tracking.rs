//! The tracking consumer: records what the dispatcher and the webhook sink report
//! (`dispatched`, `deferred`, `failed`, later provider events) in each email's history, once per
//! event id, in one transaction per batch; the deliveries are acked after the commit. Reports
//! that cannot be recorded are set aside with their reason, never dropped.

use crate::db::{DbPool, with_deadline};
use crate::dead_letters::{DeadLetterOwner, record_dead_letter};
use crate::history::{NewEvent, record_events};
use crate::schema::emails;
use anyhow::Context;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use mailtrail_broker::{Incoming, OutgoingMessage, Publisher, SetAside};
use mailtrail_shared::topology::Topology;
use mailtrail_shared::tracking::TrackingEvent;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

const SERVICE: &str = "operator";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackingOutcome {
    /// Recorded now.
    Recorded { email_id: Uuid },
    /// Already recorded (a republished event): nothing changed.
    Duplicate { email_id: Uuid },
    /// Set aside with this reason.
    SetAside { reason: String, detail: String },
}

pub struct Tracker {
    pool: DbPool,
    publisher: Publisher,
    topology: Topology,
    db_timeout: Duration,
}

impl Tracker {
    pub fn new(
        pool: DbPool,
        publisher: Publisher,
        topology: Topology,
        db_timeout: Duration,
    ) -> Tracker {
        Tracker {
            pool,
            publisher,
            topology,
            db_timeout,
        }
    }

    /// Handles a batch of tracking messages. On `Ok` everything is committed and every
    /// set-aside copy confirmed: the caller acks the batch. On `Err` nothing may be acked.
    pub async fn handle(&self, batch: &[Incoming]) -> anyhow::Result<Vec<TrackingOutcome>> {
        let decoded: Vec<Result<TrackingEvent, (String, String)>> =
            batch.iter().map(decode).collect();
        let outcomes = with_deadline(self.db_timeout, "tracking transaction", async {
            let mut conn = self
                .pool
                .get()
                .await
                .context("no database connection for the tracking consumer")?;
            let outcomes = conn
                .transaction::<_, anyhow::Error, _>(async |conn| {
                    // Which emails exist, and whose they are.
                    let ids: Vec<Uuid> = decoded
                        .iter()
                        .filter_map(|d| d.as_ref().ok().map(|e| e.email_id))
                        .collect();
                    let owners: HashMap<Uuid, String> = emails::table
                        .filter(emails::id.eq_any(&ids))
                        .select((emails::id, emails::tenant))
                        .load::<(Uuid, String)>(conn)
                        .await?
                        .into_iter()
                        .collect();
                    let event_ids: Vec<Uuid> = decoded
                        .iter()
                        .filter_map(|d| d.as_ref().ok().map(|e| e.event_id))
                        .collect();
                    let known: HashSet<Uuid> = crate::schema::events::table
                        .filter(crate::schema::events::event_id.eq_any(&event_ids))
                        .select(crate::schema::events::event_id)
                        .load::<Uuid>(conn)
                        .await?
                        .into_iter()
                        .collect();
                    let mut outcomes = Vec::with_capacity(batch.len());
                    let mut events = Vec::new();
                    let mut in_batch: HashSet<Uuid> = HashSet::new();
                    for (message, decoded) in batch.iter().zip(&decoded) {
                        let event = match decoded {
                            Ok(event) => event,
                            Err((reason, detail)) => {
                                self.record_set_aside(conn, message, reason, detail, None)
                                    .await?;
                                outcomes.push(TrackingOutcome::SetAside {
                                    reason: reason.clone(),
                                    detail: detail.clone(),
                                });
                                continue;
                            }
                        };
                        let refusal = match owners.get(&event.email_id) {
                            None => Some((
                                "unknown_email",
                                format!("no email {} is recorded", event.email_id),
                            )),
                            Some(tenant) if !event.may_speak_for(tenant) => Some((
                                "tenant_mismatch",
                                format!(
                                    "email {} belongs to another tenant than {:?}",
                                    event.email_id, event.tenant
                                ),
                            )),
                            Some(_) => None,
                        };
                        if let Some((reason, detail)) = refusal {
                            self.record_set_aside(conn, message, reason, &detail, Some(event))
                                .await?;
                            outcomes.push(TrackingOutcome::SetAside {
                                reason: reason.to_owned(),
                                detail,
                            });
                            continue;
                        }
                        if known.contains(&event.event_id) || !in_batch.insert(event.event_id) {
                            outcomes.push(TrackingOutcome::Duplicate {
                                email_id: event.email_id,
                            });
                            continue;
                        }
                        events.push(NewEvent {
                            event_id: event.event_id,
                            email_id: event.email_id,
                            event_type: event.event_type,
                            occurred_at: event.occurred_at,
                            source: event.source.clone(),
                            provider: event.provider.clone(),
                            provider_event_id: event.provider_event_id.clone(),
                            provider_message_id: event.provider_message_id.clone(),
                            details: event.details.clone(),
                        });
                        outcomes.push(TrackingOutcome::Recorded {
                            email_id: event.email_id,
                        });
                    }
                    record_events(conn, events).await?;
                    Ok(outcomes)
                })
                .await?;
            Ok(outcomes)
        })
        .await?;

        let copies: Vec<OutgoingMessage> = batch
            .iter()
            .zip(&outcomes)
            .filter_map(|(message, outcome)| match outcome {
                TrackingOutcome::SetAside { reason, detail } => Some(
                    set_aside_for(message, reason, detail).message_for(message, &self.topology),
                ),
                _ => None,
            })
            .collect();
        self.publisher
            .publish_all(&copies)
            .await
            .context("cannot set rejected tracking messages aside")?;
        for outcome in &outcomes {
            match outcome {
                TrackingOutcome::SetAside { reason, detail } => {
                    tracing::warn!(reason, detail, "tracking message set aside")
                }
                TrackingOutcome::Recorded { email_id } => {
                    tracing::debug!(%email_id, "tracking event recorded")
                }
                TrackingOutcome::Duplicate { email_id } => {
                    tracing::debug!(%email_id, "duplicate tracking event")
                }
            }
        }
        Ok(outcomes)
    }

    async fn record_set_aside(
        &self,
        conn: &mut diesel_async::AsyncPgConnection,
        message: &Incoming,
        reason: &str,
        detail: &str,
        event: Option<&TrackingEvent>,
    ) -> anyhow::Result<()> {
        record_dead_letter(
            conn,
            message,
            &set_aside_for(message, reason, detail),
            DeadLetterOwner {
                tenant: event.map(|e| e.tenant.clone()),
                request_key: None,
                email_id: event.map(|e| e.email_id),
            },
        )
        .await?;
        Ok(())
    }
}

fn set_aside_for(message: &Incoming, reason: &str, detail: &str) -> SetAside {
    SetAside::for_message(message, reason, detail, SERVICE)
}

/// A tracking event, or (reason, detail) for setting the message aside.
fn decode(message: &Incoming) -> Result<TrackingEvent, (String, String)> {
    let event: TrackingEvent = serde_json::from_slice(&message.body).map_err(|e| {
        (
            "invalid_event".to_owned(),
            format!("not a tracking event: {e}"),
        )
    })?;
    event
        .validate()
        .map_err(|detail| ("invalid_event".to_owned(), detail))?;
    Ok(event)
}
