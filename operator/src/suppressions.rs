//! The suppression list: per tenant, on canonical addresses (`shared::address`).
//!
//! * A hard bounce (`bounced` with `details.bounce_kind == "hard"`), a `complained` or an
//!   `unsubscribed` event adds the recipient, with the reason and the event that caused it, in
//!   the transaction that records the event ([`apply_recorded`]).
//! * Soft bounces are counted per address; `soft_bounces` of them within the window add it.
//! * Entries never expire unless `MAILTRAIL_SUPPRESS_TTL_DAYS` is set (or the API sets
//!   `expires_at`); an expired entry no longer suppresses and is replaced by the next cause.
//! * The intake looks the recipients of a batch up in one query ([`active_for`]) and records
//!   mail to a suppressed address `suppressed`, with no dispatch job.

use crate::schema::suppressions;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Int4, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use std::collections::HashMap;
use uuid::Uuid;

/// When tracking events add entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuppressionPolicy {
    /// Soft bounces within the window that add an entry; 0 turns soft-bounce suppression off.
    pub soft_bounces: u32,
    /// The soft-bounce window, in hours.
    pub soft_bounce_window_hours: u32,
    /// Lifetime of automatic entries, in days; 0: they never expire.
    pub ttl_days: u32,
}

impl Default for SuppressionPolicy {
    fn default() -> SuppressionPolicy {
        SuppressionPolicy {
            soft_bounces: 3,
            soft_bounce_window_hours: 72,
            ttl_days: 0,
        }
    }
}

/// Reasons of automatic entries.
pub const HARD_BOUNCE: &str = "hard_bounce";
pub const COMPLAINT: &str = "complaint";
pub const UNSUBSCRIBE: &str = "unsubscribe";
pub const SOFT_BOUNCES: &str = "soft_bounces";

/// One entry, as stored and as the API shows it.
#[derive(Debug, Clone, Serialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = suppressions)]
pub struct Suppression {
    pub tenant: String,
    pub address: String,
    pub reason: String,
    pub source_event_id: Option<Uuid>,
    pub email_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub soft_bounces: i32,
}

impl Suppression {
    /// Whether the entry suppresses mail at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// The unexpired entries for these (tenant, canonical address) pairs, in one query.
pub async fn active_for(
    conn: &mut AsyncPgConnection,
    wanted: &[(String, String)],
) -> diesel::QueryResult<HashMap<(String, String), Suppression>> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let (tenants, addresses): (Vec<String>, Vec<String>) = wanted.iter().cloned().unzip();
    let rows: Vec<Suppression> = diesel::sql_query(
        "SELECT s.tenant, s.address, s.reason, s.source_event_id, s.email_id, s.created_at,
                s.expires_at, s.soft_bounces
           FROM suppressions s
          WHERE (s.tenant, s.address) IN (SELECT * FROM unnest($1::text[], $2::text[]))
            AND (s.expires_at IS NULL OR s.expires_at > now())",
    )
    .bind::<Array<Text>, _>(tenants)
    .bind::<Array<Text>, _>(addresses)
    .load::<SuppressionRow>(conn)
    .await?
    .into_iter()
    .map(Suppression::from)
    .collect();
    Ok(rows
        .into_iter()
        .map(|s| ((s.tenant.clone(), s.address.clone()), s))
        .collect())
}

#[derive(QueryableByName)]
struct SuppressionRow {
    #[diesel(sql_type = Text)]
    tenant: String,
    #[diesel(sql_type = Text)]
    address: String,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<SqlUuid>)]
    source_event_id: Option<Uuid>,
    #[diesel(sql_type = diesel::sql_types::Nullable<SqlUuid>)]
    email_id: Option<Uuid>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    expires_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Int4)]
    soft_bounces: i32,
}

impl From<SuppressionRow> for Suppression {
    fn from(r: SuppressionRow) -> Suppression {
        Suppression {
            tenant: r.tenant,
            address: r.address,
            reason: r.reason,
            source_event_id: r.source_event_id,
            email_id: r.email_id,
            created_at: r.created_at,
            expires_at: r.expires_at,
            soft_bounces: r.soft_bounces,
        }
    }
}

/// What [`apply_recorded`] added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Entries added by hard bounces, complaints and unsubscribes.
    pub added: usize,
    /// Soft bounces counted.
    pub soft_bounces: usize,
    /// Entries added because soft bounces reached the threshold.
    pub added_by_soft_bounces: usize,
}

/// Adds the entries the events recorded **in the current transaction** for `email_ids` call for
/// (events recorded in this transaction carry `recorded_at = now()`, the transaction's time, so
/// waiting webhook events attached on the way are included and duplicates, never inserted, are
/// not). An active entry is kept as it is; an expired one is replaced. Runs inside the caller's
/// transaction, after `record_events`.
pub async fn apply_recorded(
    conn: &mut AsyncPgConnection,
    policy: &SuppressionPolicy,
    email_ids: &[Uuid],
) -> diesel::QueryResult<Applied> {
    if email_ids.is_empty() {
        return Ok(Applied::default());
    }
    let ttl_days = i32::try_from(policy.ttl_days).unwrap_or(i32::MAX);
    let added = diesel::sql_query(
        r#"
        INSERT INTO suppressions AS s
               (tenant, address, reason, source_event_id, email_id, created_at, expires_at)
        SELECT DISTINCT ON (m.tenant, m.recipient_canonical)
               m.tenant, m.recipient_canonical,
               CASE e.event_type WHEN 'bounced' THEN 'hard_bounce'
                                 WHEN 'complained' THEN 'complaint'
                                 ELSE 'unsubscribe' END,
               e.event_id, e.email_id, now(),
               CASE WHEN $2 > 0 THEN now() + make_interval(days => $2) END
          FROM events e JOIN emails m ON m.id = e.email_id
         WHERE e.email_id = ANY($1) AND e.recorded_at = now()
           AND (e.event_type IN ('complained', 'unsubscribed')
                OR (e.event_type = 'bounced' AND e.details->>'bounce_kind' = 'hard'))
         ORDER BY m.tenant, m.recipient_canonical, e.occurred_at, e.id
        ON CONFLICT (tenant, address) DO UPDATE
           SET reason = EXCLUDED.reason, source_event_id = EXCLUDED.source_event_id,
               email_id = EXCLUDED.email_id, created_at = EXCLUDED.created_at,
               expires_at = EXCLUDED.expires_at, soft_bounces = 0
         WHERE s.expires_at IS NOT NULL AND s.expires_at <= now()
        "#,
    )
    .bind::<Array<SqlUuid>, _>(email_ids)
    .bind::<Int4, _>(ttl_days)
    .execute(conn)
    .await?;
    let mut applied = Applied {
        added,
        ..Applied::default()
    };
    if policy.soft_bounces == 0 {
        return Ok(applied);
    }

    #[derive(QueryableByName)]
    struct Address {
        #[diesel(sql_type = Text)]
        tenant: String,
        #[diesel(sql_type = Text)]
        address: String,
    }
    let counted: Vec<Address> = diesel::sql_query(
        r#"
        INSERT INTO soft_bounces (tenant, address, event_id, email_id, occurred_at)
        SELECT m.tenant, m.recipient_canonical, e.event_id, e.email_id, e.occurred_at
          FROM events e JOIN emails m ON m.id = e.email_id
         WHERE e.email_id = ANY($1) AND e.recorded_at = now()
           AND e.event_type = 'bounced' AND e.details->>'bounce_kind' = 'soft'
        ON CONFLICT DO NOTHING
        RETURNING tenant, address
        "#,
    )
    .bind::<Array<SqlUuid>, _>(email_ids)
    .load(conn)
    .await?;
    if counted.is_empty() {
        return Ok(applied);
    }
    applied.soft_bounces = counted.len();
    let mut pairs: Vec<(String, String)> =
        counted.into_iter().map(|a| (a.tenant, a.address)).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let (tenants, addresses): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
    let window_hours = i32::try_from(policy.soft_bounce_window_hours).unwrap_or(i32::MAX);
    let threshold = i64::from(policy.soft_bounces);
    applied.added_by_soft_bounces = diesel::sql_query(
        r#"
        INSERT INTO suppressions AS s
               (tenant, address, reason, source_event_id, email_id, created_at, expires_at,
                soft_bounces)
        SELECT b.tenant, b.address, 'soft_bounces',
               (array_agg(b.event_id ORDER BY b.occurred_at DESC))[1],
               (array_agg(b.email_id ORDER BY b.occurred_at DESC))[1],
               now(), CASE WHEN $4 > 0 THEN now() + make_interval(days => $4) END, count(*)
          FROM soft_bounces b
         WHERE (b.tenant, b.address) IN (SELECT * FROM unnest($1::text[], $2::text[]))
           AND b.occurred_at > now() - make_interval(hours => $3)
         GROUP BY b.tenant, b.address
        HAVING count(*) >= $5
        ON CONFLICT (tenant, address) DO UPDATE
           SET reason = EXCLUDED.reason, source_event_id = EXCLUDED.source_event_id,
               email_id = EXCLUDED.email_id, created_at = EXCLUDED.created_at,
               expires_at = EXCLUDED.expires_at, soft_bounces = EXCLUDED.soft_bounces
         WHERE s.expires_at IS NOT NULL AND s.expires_at <= now()
        "#,
    )
    .bind::<Array<Text>, _>(&tenants)
    .bind::<Array<Text>, _>(&addresses)
    .bind::<Int4, _>(window_hours)
    .bind::<Int4, _>(ttl_days)
    .bind::<diesel::sql_types::Int8, _>(threshold)
    .execute(conn)
    .await?;
    // Counts outside the window no longer matter, nor do counts for an address now suppressed
    // (after a removal, counting starts again).
    diesel::sql_query(
        r#"
        DELETE FROM soft_bounces b
         WHERE (b.tenant, b.address) IN (SELECT * FROM unnest($1::text[], $2::text[]))
           AND (b.occurred_at <= now() - make_interval(hours => $3)
                OR EXISTS (SELECT 1 FROM suppressions s
                            WHERE s.tenant = b.tenant AND s.address = b.address
                              AND (s.expires_at IS NULL OR s.expires_at > now())))
        "#,
    )
    .bind::<Array<Text>, _>(&tenants)
    .bind::<Array<Text>, _>(&addresses)
    .bind::<Int4, _>(window_hours)
    .execute(conn)
    .await?;
    Ok(applied)
}

/// One page of a tenant's (or every visible tenant's) entries, in (tenant, address) order,
/// after the keyset `after`.
pub async fn list(
    conn: &mut AsyncPgConnection,
    tenant: Option<&str>,
    after: Option<(&str, &str)>,
    limit: i64,
) -> diesel::QueryResult<Vec<Suppression>> {
    let mut query = suppressions::table
        .select(Suppression::as_select())
        .order((suppressions::tenant, suppressions::address))
        .limit(limit)
        .into_boxed();
    if let Some(tenant) = tenant {
        query = query.filter(suppressions::tenant.eq(tenant.to_owned()));
    }
    if let Some((t, a)) = after {
        query = query.filter(
            suppressions::tenant
                .gt(t.to_owned())
                .or(suppressions::tenant
                    .eq(t.to_owned())
                    .and(suppressions::address.gt(a.to_owned()))),
        );
    }
    query.load(conn).await
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    tenant: &str,
    address: &str,
) -> diesel::QueryResult<Option<Suppression>> {
    suppressions::table
        .find((tenant, address))
        .select(Suppression::as_select())
        .first(conn)
        .await
        .optional()
}

/// Adds (or replaces) an entry by hand.
pub async fn put(
    conn: &mut AsyncPgConnection,
    tenant: &str,
    address: &str,
    reason: &str,
    expires_at: Option<DateTime<Utc>>,
) -> diesel::QueryResult<Suppression> {
    let now = Utc::now();
    diesel::insert_into(suppressions::table)
        .values((
            suppressions::tenant.eq(tenant),
            suppressions::address.eq(address),
            suppressions::reason.eq(reason),
            suppressions::created_at.eq(now),
            suppressions::expires_at.eq(expires_at),
        ))
        .on_conflict((suppressions::tenant, suppressions::address))
        .do_update()
        .set((
            suppressions::reason.eq(reason),
            suppressions::source_event_id.eq(None::<Uuid>),
            suppressions::email_id.eq(None::<Uuid>),
            suppressions::created_at.eq(now),
            suppressions::expires_at.eq(expires_at),
            suppressions::soft_bounces.eq(0),
        ))
        .returning(Suppression::as_returning())
        .get_result(conn)
        .await
}

/// Removes an entry; returns whether there was one.
pub async fn remove(
    conn: &mut AsyncPgConnection,
    tenant: &str,
    address: &str,
) -> diesel::QueryResult<bool> {
    let deleted = diesel::delete(suppressions::table.find((tenant, address)))
        .execute(conn)
        .await?;
    Ok(deleted > 0)
}
