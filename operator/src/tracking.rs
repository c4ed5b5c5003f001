//! The tracking consumer: records what the dispatcher and the webhook sink report
//! (`dispatched`, `deferred`, `failed`, later provider events) in each email's history, once per
//! event id, in one transaction per batch; the deliveries are acked after the commit. Reports
//! that cannot be recorded are set aside with their reason, never dropped. A job's first outcome
//! from the dispatcher frees its tenant's fair-dispatch slot in the same transaction
//! ([`crate::relay::settle_slots`]) and wakes the relay.

use crate::db::{DbPool, with_deadline};
use crate::dead_letters::{DeadLetterOwner, record_dead_letter};
use crate::history::{NewEvent, normalized_message_id, record_events};
use crate::pending;
use crate::relay;
use crate::schema::emails;
use crate::suppressions::{self, SuppressionPolicy};
use anyhow::Context;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use mailtrail_broker::{Incoming, OutgoingMessage, Publisher, SetAside};
use mailtrail_shared::topology::Topology;
use mailtrail_shared::tracking::TrackingEvent;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

const SERVICE: &str = "operator";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackingOutcome {
    /// Recorded now.
    Recorded { email_id: Uuid },
    /// Already recorded (a republished event): nothing changed.
    Duplicate { email_id: Uuid },
    /// Its email is not known yet: kept until it is (see `pending`).
    Pending { event_id: Uuid },
    /// Set aside with this reason.
    SetAside { reason: String, detail: String },
}

pub struct Tracker {
    pool: DbPool,
    publisher: Publisher,
    topology: Topology,
    db_timeout: Duration,
    suppression: SuppressionPolicy,
    relay_wake: Option<Arc<Notify>>,
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
            suppression: SuppressionPolicy::default(),
            relay_wake: None,
        }
    }

    /// Wakes the relay whenever outcomes free tenants' slots (fair dispatch).
    pub fn with_relay_wake(mut self, wake: Arc<Notify>) -> Tracker {
        self.relay_wake = Some(wake);
        self
    }

    /// When reported events add suppression entries (the default: `SuppressionPolicy::default`).
    pub fn with_suppression_policy(mut self, policy: SuppressionPolicy) -> Tracker {
        self.suppression = policy;
        self
    }

    /// Handles a batch of tracking messages. On `Ok` everything is committed and every
    /// set-aside copy confirmed: the caller acks the batch. On `Err` nothing may be acked.
    pub async fn handle(&self, batch: &[Incoming]) -> anyhow::Result<Vec<TrackingOutcome>> {
        let started = std::time::Instant::now();
        let decoded: Vec<Result<TrackingEvent, (String, String)>> =
            batch.iter().map(decode).collect();
        let (outcomes, freed) = with_deadline(self.db_timeout, "tracking transaction", async {
            let mut conn = self
                .pool
                .get()
                .await
                .context("no database connection for the tracking consumer")?;
            let outcomes = conn
                .transaction::<_, anyhow::Error, _>(async |conn| {
                    let found = resolve(conn, &decoded).await?;
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
                        let verdict = match found.email_of(event) {
                            Match::None => {
                                let message_id = normalized_message_id(event);
                                pending::keep(conn, event, message_id.as_deref()).await?;
                                outcomes.push(TrackingOutcome::Pending {
                                    event_id: event.event_id,
                                });
                                continue;
                            }
                            Match::Ambiguous(count) => Err((
                                "ambiguous_message_id",
                                format!(
                                    "{count} emails carry provider message id {:?}",
                                    event.provider_message_id.as_deref().unwrap_or_default()
                                ),
                            )),
                            Match::Email(_, tenant) if !event.may_speak_for(tenant) => Err((
                                "tenant_mismatch",
                                format!(
                                    "the email belongs to another tenant than {:?}",
                                    event.tenant
                                ),
                            )),
                            Match::Email(id, _) => Ok(id),
                        };
                        let email_id = match verdict {
                            Ok(id) => id,
                            Err((reason, detail)) => {
                                self.record_set_aside(conn, message, reason, &detail, Some(event))
                                    .await?;
                                outcomes.push(TrackingOutcome::SetAside {
                                    reason: reason.to_owned(),
                                    detail,
                                });
                                continue;
                            }
                        };
                        if known.contains(&event.event_id) || !in_batch.insert(event.event_id) {
                            outcomes.push(TrackingOutcome::Duplicate { email_id });
                            continue;
                        }
                        events.push(NewEvent::reported(event, email_id, trace_id(message)));
                        outcomes.push(TrackingOutcome::Recorded { email_id });
                    }
                    let mut touched: Vec<Uuid> = events.iter().map(|e| e.email_id).collect();
                    touched.sort_unstable();
                    touched.dedup();
                    // A job's first outcome frees its tenant's slot (fair dispatch): outbox rows
                    // are locked before `record_events` locks the emails, the relay's order.
                    let mut outcomes_for: Vec<Uuid> = events
                        .iter()
                        .filter(|e| relay::frees_slot(e.event_type, &e.source))
                        .map(|e| e.email_id)
                        .collect();
                    outcomes_for.sort_unstable();
                    outcomes_for.dedup();
                    let freed = relay::settle_slots(conn, &outcomes_for).await?;
                    record_events(conn, events).await?;
                    // Events that waited for these emails (a webhook that outran `dispatched`).
                    let attached = pending::attach(conn, &touched).await?;
                    if attached != Default::default() {
                        tracing::info!(
                            recorded = attached.recorded,
                            set_aside = attached.set_aside,
                            "waiting webhook events attached to their emails"
                        );
                    }
                    // Hard bounces, complaints, unsubscribes and soft bounces recorded just now
                    // (including attached ones) feed the suppression list, in this transaction.
                    let applied =
                        suppressions::apply_recorded(conn, &self.suppression, &touched).await?;
                    if applied != Default::default() {
                        tracing::info!(
                            added = applied.added,
                            soft_bounces = applied.soft_bounces,
                            added_by_soft_bounces = applied.added_by_soft_bounces,
                            "suppression list updated"
                        );
                    }
                    Ok((outcomes, freed))
                })
                .await?;
            Ok(outcomes)
        })
        .await?;
        if freed > 0 {
            // Slots freed: the relay may let more of a capped tenant's jobs out.
            if let Some(wake) = &self.relay_wake {
                wake.notify_one();
            }
        }

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
        for ((message, decoded), outcome) in batch.iter().zip(&decoded).zip(&outcomes) {
            let trace_id = trace_id(message).unwrap_or_default();
            let event_type = decoded.as_ref().map_or("", |e| e.event_type.as_str());
            let counted = match outcome {
                TrackingOutcome::SetAside { reason, detail } => {
                    let email_id = decoded.as_ref().ok().and_then(|e| e.email_id);
                    tracing::warn!(
                        email_id = email_id.map(|id| id.to_string()),
                        event_type,
                        trace_id,
                        reason,
                        detail,
                        "tracking message set aside"
                    );
                    "set_aside"
                }
                TrackingOutcome::Recorded { email_id } => {
                    tracing::debug!(%email_id, event_type, trace_id, "tracking event recorded");
                    "recorded"
                }
                TrackingOutcome::Duplicate { email_id } => {
                    tracing::debug!(%email_id, event_type, trace_id, "duplicate tracking event");
                    "duplicate"
                }
                TrackingOutcome::Pending { event_id } => {
                    tracing::info!(%event_id, event_type, trace_id, "tracking event waits for its email");
                    "pending"
                }
            };
            metrics::counter!("mailtrail_tracking_events_total", "outcome" => counted).increment(1);
        }
        // How long after it happened an event was recorded: for the dispatcher's events the
        // tracking hop's latency; for webhooks, the provider's reporting delay as well.
        for (decoded, outcome) in decoded.iter().zip(&outcomes) {
            if let (Ok(event), TrackingOutcome::Recorded { .. }) = (decoded, outcome) {
                let reporter = if event.source == "dispatcher" {
                    "dispatcher"
                } else {
                    "webhook"
                };
                metrics::histogram!("mailtrail_event_record_delay_seconds", "reporter" => reporter)
                    .record(mailtrail_runtime::seconds_since(event.occurred_at));
            }
        }
        metrics::histogram!("mailtrail_batch_seconds", "step" => "tracking")
            .record(started.elapsed().as_secs_f64());
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
                email_id: event.and_then(|e| e.email_id),
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

/// Which email an event belongs to.
enum Match<'a> {
    Email(Uuid, &'a str),
    /// Not known (yet).
    None,
    /// Several emails carry the provider message id and the recipient does not settle it.
    Ambiguous(usize),
}

/// An email a provider message id points at: (id, tenant, canonical recipient).
type Candidate = (Uuid, String, String);

/// The emails a batch's events name, by our id or by the provider's message id.
struct Found {
    by_id: HashMap<Uuid, String>,
    /// (provider, normalized message id) → (email id, tenant, canonical recipient).
    by_message_id: HashMap<(String, String), Vec<Candidate>>,
}

impl Found {
    fn email_of(&self, event: &TrackingEvent) -> Match<'_> {
        if let Some(id) = event.email_id {
            return match self.by_id.get(&id) {
                Some(tenant) => Match::Email(id, tenant),
                None => Match::None,
            };
        }
        let (Some(provider), Some(message_id)) = (&event.provider, normalized_message_id(event))
        else {
            return Match::None;
        };
        let Some(candidates) = self.by_message_id.get(&(provider.clone(), message_id)) else {
            return Match::None;
        };
        if let [(id, tenant, _)] = candidates.as_slice() {
            return Match::Email(*id, tenant);
        }
        // One provider message to several recipients: the event's recipient decides.
        let recipient = event
            .details
            .get("recipient")
            .and_then(|r| r.as_str())
            .map(|r| r.trim().to_lowercase());
        let mut matching = candidates
            .iter()
            .filter(|(_, _, canonical)| Some(canonical.to_lowercase()) == recipient);
        match (matching.next(), matching.next()) {
            (Some((id, tenant, _)), None) => Match::Email(*id, tenant),
            _ => Match::Ambiguous(candidates.len()),
        }
    }
}

async fn resolve(
    conn: &mut diesel_async::AsyncPgConnection,
    decoded: &[Result<TrackingEvent, (String, String)>],
) -> anyhow::Result<Found> {
    let events = || decoded.iter().filter_map(|d| d.as_ref().ok());
    let ids: Vec<Uuid> = events().filter_map(|e| e.email_id).collect();
    let by_id: HashMap<Uuid, String> = emails::table
        .filter(emails::id.eq_any(&ids))
        .select((emails::id, emails::tenant))
        .load::<(Uuid, String)>(conn)
        .await?
        .into_iter()
        .collect();
    let unnamed = || events().filter(|e| e.email_id.is_none());
    let message_ids: Vec<String> = unnamed().filter_map(normalized_message_id).collect();
    let providers: Vec<String> = unnamed().filter_map(|e| e.provider.clone()).collect();
    let mut by_message_id: HashMap<(String, String), Vec<Candidate>> = HashMap::new();
    if !message_ids.is_empty() {
        let rows = emails::table
            .filter(emails::provider.eq_any(&providers))
            .filter(emails::provider_message_id.eq_any(&message_ids))
            .select((
                emails::id,
                emails::tenant,
                emails::recipient_canonical,
                emails::provider,
                emails::provider_message_id,
            ))
            .load::<(Uuid, String, String, Option<String>, Option<String>)>(conn)
            .await?;
        for (id, tenant, canonical, provider, message_id) in rows {
            if let (Some(provider), Some(message_id)) = (provider, message_id) {
                by_message_id
                    .entry((provider, message_id))
                    .or_default()
                    .push((id, tenant, canonical));
            }
        }
    }
    Ok(Found {
        by_id,
        by_message_id,
    })
}

/// The trace id of the hop that published `message` (its `traceparent` header), if well formed.
fn trace_id(message: &Incoming) -> Option<String> {
    message
        .header(mailtrail_shared::headers::TRACEPARENT)
        .and_then(|tp| mailtrail_shared::headers::trace_id_of(&tp))
}
