//! `GET /v1/stats`: what happened to a tenant's (or every tenant's) mail over a period, under
//! `/v1` (so behind the key middleware).
//!
//! Two views of the same period, `[since, until)`, cut into hour or day buckets in a time zone:
//!
//! * `buckets`: how many events of each type *occurred* in each bucket (by `occurred_at`). An
//!   email opened five times counts five opens. Opens and clicks a provider flagged as made by a
//!   machine (`details.machine`, `docs/webhooks.md`) are counted under `machine`, not `counts`.
//! * `cohorts`: the emails whose *first* `dispatched` falls in each bucket, and how many of
//!   those emails (unique emails, not events) were ever delivered, bounced, complained, opened or
//!   clicked, whenever that happened (up to now). Rates are those counts over the cohort's
//!   dispatched count, so a day-2 open of a day-1 email raises day 1's open rate, and no rate
//!   can pass 1. Human opens and clicks make the rates; machine ones are counted apart.
//!
//! Buckets without anything to show are left out. Scoping: a tenant key counts only its tenant;
//! asking for another tenant answers 404, like anything else out of a key's sight.

use crate::db::with_deadline;
use crate::http::{ApiError, ApiState};
use crate::keys::Principal;
use actix_web::{HttpResponse, web};
use chrono::{
    DateTime, Datelike, FixedOffset, NaiveDateTime, Offset, SecondsFormat, TimeDelta, Utc,
};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp, Timestamptz};
use diesel_async::RunQueryDsl;
use mailtrail_shared::history::EventType;
use serde::Serialize;
use std::collections::BTreeMap;

/// The period when `since` is not given: this long before `until`.
pub const DEFAULT_SPAN_DAYS: i64 = 7;
/// The longest period of day buckets.
pub const MAX_DAY_SPAN_DAYS: i64 = 400;
/// The longest period of hour buckets.
pub const MAX_HOUR_SPAN_DAYS: i64 = 31;

/// Registers the routes (inside the `/v1` scope).
pub fn routes(config: &mut web::ServiceConfig) {
    config.route("/stats", web::get().to(stats));
}

/// The size of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = StatsBucketSize)]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    /// The `date_trunc` field.
    fn as_str(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }

    fn max_span_days(self) -> i64 {
        match self {
            Bucket::Hour => MAX_HOUR_SPAN_DAYS,
            Bucket::Day => MAX_DAY_SPAN_DAYS,
        }
    }
}

/// The validated query, apart from the time zone, which the database checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Params {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    tenant: Option<String>,
    bucket: Bucket,
    tz: String,
}

impl Params {
    /// Reads the query. A tenant key is held to its tenant: asking for another is a 404.
    fn read(
        principal: &Principal,
        query: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<Params, ApiError> {
        let text = |name: &str| {
            query
                .get(name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let time = |name: &str| crate::http::query_time(name, text(name));
        let bucket = match text("bucket").as_deref() {
            None | Some("day") => Bucket::Day,
            Some("hour") => Bucket::Hour,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "bucket must be hour or day, not {other:?}"
                )));
            }
        };
        let until = time("until")?.unwrap_or(now);
        let since = time("since")?.unwrap_or(until - TimeDelta::days(DEFAULT_SPAN_DAYS));
        // The answer repeats both in UTC, as RFC 3339, which has years 0000 to 9999 only:
        // `0000-01-01T00:00:00+14:00` is a valid input whose UTC instant is in year -1.
        if [since, until]
            .iter()
            .any(|t| !(0..=9999).contains(&t.year()))
        {
            return Err(ApiError::BadRequest(
                "since and until must fall within the years 0000 to 9999 in UTC".into(),
            ));
        }
        if since >= until {
            return Err(ApiError::BadRequest(
                "since must be earlier than until".into(),
            ));
        }
        let max = bucket.max_span_days();
        if until - since > TimeDelta::days(max) {
            return Err(ApiError::BadRequest(format!(
                "the period from since to until may span at most {max} days with {} buckets",
                bucket.as_str()
            )));
        }
        let tenant = match (&principal.tenant, text("tenant")) {
            (Some(own), Some(asked)) if *own != asked => {
                return Err(ApiError::NotFound(format!("no tenant {asked:?}")));
            }
            (Some(own), _) => Some(own.clone()),
            (None, asked) => asked,
        };
        let tz = text("tz").unwrap_or_else(|| "UTC".to_owned());
        if tz.len() > 64 {
            return Err(ApiError::BadRequest(
                "tz must be an IANA time zone name".into(),
            ));
        }
        Ok(Params {
            since,
            until,
            tenant,
            bucket,
            tz,
        })
    }
}

/// Events per type in one bucket: every type, zero included.
type Counts = BTreeMap<&'static str, i64>;

fn zero_counts() -> Counts {
    EventType::ALL.iter().map(|t| (t.as_str(), 0)).collect()
}

/// Opens and clicks a provider said a machine made.
#[derive(Debug, Default, Clone, Copy, Serialize, utoipa::ToSchema)]
#[schema(as = StatsMachine)]
struct Machine {
    opened: i64,
    clicked: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = StatsBucket)]
struct BucketView {
    /// The bucket's first instant, in the asked time zone.
    start: String,
    /// Events per type, every type (zero included).
    #[schema(value_type = BTreeMap<String, i64>)]
    counts: Counts,
    machine: Machine,
}

/// Unique emails of a cohort that ever had each outcome.
#[derive(Debug, Default, Clone, Copy, Serialize, utoipa::ToSchema)]
#[schema(as = StatsCohortCounts)]
struct CohortCounts {
    dispatched: i64,
    delivered: i64,
    bounced: i64,
    complained: i64,
    /// Emails with a human open (a machine-only open does not count).
    opened: i64,
    clicked: i64,
}

impl CohortCounts {
    fn add(&mut self, other: &CohortCounts) {
        self.dispatched += other.dispatched;
        self.delivered += other.delivered;
        self.bounced += other.bounced;
        self.complained += other.complained;
        self.opened += other.opened;
        self.clicked += other.clicked;
    }

    fn rates(&self) -> Rates {
        let rate = |n: i64| (self.dispatched > 0).then(|| n as f64 / self.dispatched as f64);
        Rates {
            delivered: rate(self.delivered),
            bounced: rate(self.bounced),
            complained: rate(self.complained),
            opened: rate(self.opened),
            clicked: rate(self.clicked),
        }
    }
}

/// Each outcome's unique emails over the cohort's dispatched emails (`null` for an empty one).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = StatsRates)]
struct Rates {
    delivered: Option<f64>,
    bounced: Option<f64>,
    complained: Option<f64>,
    opened: Option<f64>,
    clicked: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = StatsCohort)]
struct CohortView {
    start: String,
    #[serde(flatten)]
    counts: CohortCounts,
    /// Emails of the cohort with a machine open or click.
    machine: Machine,
    rates: Rates,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = StatsTotalCohort)]
struct TotalCohort {
    #[serde(flatten)]
    counts: CohortCounts,
    machine: Machine,
    rates: Rates,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = StatsTotals)]
struct Totals {
    #[schema(value_type = BTreeMap<String, i64>)]
    counts: Counts,
    machine: Machine,
    cohort: TotalCohort,
}

/// The answer of `GET /v1/stats`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Stats)]
struct StatsView {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    tenant: Option<String>,
    bucket: Bucket,
    tz: String,
    buckets: Vec<BucketView>,
    cohorts: Vec<CohortView>,
    totals: Totals,
}

/// Events of one type in one bucket.
#[derive(Debug, QueryableByName)]
struct EventCountRow {
    /// The bucket's start in the time zone's wall-clock time.
    #[diesel(sql_type = Timestamp)]
    local_start: NaiveDateTime,
    #[diesel(sql_type = Timestamptz)]
    start: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = BigInt)]
    human: i64,
    #[diesel(sql_type = BigInt)]
    machine: i64,
}

#[derive(Debug, QueryableByName)]
struct CohortRow {
    #[diesel(sql_type = Timestamp)]
    local_start: NaiveDateTime,
    #[diesel(sql_type = Timestamptz)]
    start: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    dispatched: i64,
    #[diesel(sql_type = BigInt)]
    delivered: i64,
    #[diesel(sql_type = BigInt)]
    bounced: i64,
    #[diesel(sql_type = BigInt)]
    complained: i64,
    #[diesel(sql_type = BigInt)]
    opened: i64,
    #[diesel(sql_type = BigInt)]
    clicked: i64,
    #[diesel(sql_type = BigInt)]
    machine_opened: i64,
    #[diesel(sql_type = BigInt)]
    machine_clicked: i64,
}

#[derive(Debug, QueryableByName)]
struct ZoneKnown {
    #[diesel(sql_type = Bool)]
    known: bool,
}

/// Whether an event's details carry a provider's machine flag (`docs/webhooks.md`).
const IS_MACHINE: &str = "COALESCE(details->>'machine', '') = 'true'";

/// Events per bucket and type. Listing every type lets the (event_type, occurred_at) index
/// serve the time range.
fn event_counts_sql() -> String {
    format!(
        r#"
        SELECT date_trunc($4, e.occurred_at AT TIME ZONE $5) AS local_start,
               date_trunc($4, e.occurred_at AT TIME ZONE $5) AT TIME ZONE $5 AS start,
               e.event_type,
               count(*) FILTER (WHERE NOT {machine}) AS human,
               count(*) FILTER (WHERE {machine}) AS machine
          FROM events e
          JOIN emails m ON m.id = e.email_id
         WHERE e.event_type = ANY($6)
           AND e.occurred_at >= $1 AND e.occurred_at < $2
           AND ($3::text IS NULL OR m.tenant = $3)
         GROUP BY 1, 2, 3
         ORDER BY 1, 3
        "#,
        machine = IS_MACHINE.replace("details", "e.details"),
    )
}

/// Each cohort (emails by the bucket of their first `dispatched`) and the unique emails of it
/// that ever had each outcome.
fn cohorts_sql() -> String {
    format!(
        r#"
        WITH first_dispatch AS (
            SELECT e.email_id, min(e.occurred_at) AS first_at
              FROM events e
              JOIN emails m ON m.id = e.email_id
             WHERE e.event_type = 'dispatched'
               AND e.occurred_at >= $1 AND e.occurred_at < $2
               AND ($3::text IS NULL OR m.tenant = $3)
               AND NOT EXISTS (SELECT 1 FROM events p
                                WHERE p.email_id = e.email_id AND p.event_type = 'dispatched'
                                  AND p.occurred_at < $1)
             GROUP BY e.email_id
        ), outcomes AS (
            SELECT f.email_id, f.first_at, o.*
              FROM first_dispatch f
              LEFT JOIN LATERAL (
                  SELECT bool_or(x.event_type = 'delivered') AS delivered,
                         bool_or(x.event_type = 'bounced') AS bounced,
                         bool_or(x.event_type = 'complained') AS complained,
                         bool_or(x.event_type = 'opened' AND NOT {machine}) AS opened,
                         bool_or(x.event_type = 'clicked' AND NOT {machine}) AS clicked,
                         bool_or(x.event_type = 'opened' AND {machine}) AS machine_opened,
                         bool_or(x.event_type = 'clicked' AND {machine}) AS machine_clicked
                    FROM events x
                   WHERE x.email_id = f.email_id
                     AND x.event_type IN ('delivered', 'bounced', 'complained', 'opened',
                                          'clicked')
              ) o ON true
        )
        SELECT date_trunc($4, first_at AT TIME ZONE $5) AS local_start,
               date_trunc($4, first_at AT TIME ZONE $5) AT TIME ZONE $5 AS start,
               count(*) AS dispatched,
               count(*) FILTER (WHERE delivered) AS delivered,
               count(*) FILTER (WHERE bounced) AS bounced,
               count(*) FILTER (WHERE complained) AS complained,
               count(*) FILTER (WHERE opened) AS opened,
               count(*) FILTER (WHERE clicked) AS clicked,
               count(*) FILTER (WHERE machine_opened) AS machine_opened,
               count(*) FILTER (WHERE machine_clicked) AS machine_clicked
          FROM outcomes
         GROUP BY 1, 2
         ORDER BY 1
        "#,
        machine = IS_MACHINE.replace("details", "x.details"),
    )
}

/// A bucket's start as RFC 3339 with the zone's offset at that instant.
fn start_in_zone(local: NaiveDateTime, start: DateTime<Utc>) -> String {
    let offset_secs = (local - start.naive_utc()).num_seconds();
    let offset = i32::try_from(offset_secs)
        .ok()
        .and_then(FixedOffset::east_opt)
        .unwrap_or(Utc.fix());
    start
        .with_timezone(&offset)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[utoipa::path(get, path = "/v1/stats", tag = "stats",
    params(
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive (default: 7 days before `until`)"),
        ("until" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive (default: now)"),
        ("tenant" = Option<String>, Query, description = "Only this tenant"),
        ("bucket" = Option<String>, Query, pattern = "^(hour|day)$", description = "`hour` or `day` (default)"),
        ("tz" = Option<String>, Query, description = "An IANA time zone, default `UTC`"),
    ),
    responses(
        (status = 200, description = "Event counts per bucket and dispatch cohorts with rates", body = StatsView),
        (status = 400, description = "An unknown `bucket` or `tz`, an unreadable time or too long a period"),
        (status = 404, description = "Another tenant than a scoped key's"),
    ))]
pub(crate) async fn stats(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    query: web::Query<BTreeMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::read(&principal, &query, Utc::now())?;
    let types: Vec<String> = EventType::ALL
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    let found = with_deadline(state.db_timeout, "stats", async {
        let mut conn = state.pool.get().await?;
        // One snapshot for both views.
        conn.build_transaction()
            .read_only()
            .repeatable_read()
            .run::<_, anyhow::Error, _>(async |conn| {
                let zone: ZoneKnown = diesel::sql_query(
                    "SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1) AS known",
                )
                .bind::<Text, _>(&params.tz)
                .get_result(conn)
                .await?;
                if !zone.known {
                    return Ok(None);
                }
                let events: Vec<EventCountRow> = diesel::sql_query(event_counts_sql())
                    .bind::<Timestamptz, _>(params.since)
                    .bind::<Timestamptz, _>(params.until)
                    .bind::<Nullable<Text>, _>(params.tenant.as_deref())
                    .bind::<Text, _>(params.bucket.as_str())
                    .bind::<Text, _>(&params.tz)
                    .bind::<diesel::sql_types::Array<Text>, _>(&types)
                    .load(conn)
                    .await?;
                let cohorts: Vec<CohortRow> = diesel::sql_query(cohorts_sql())
                    .bind::<Timestamptz, _>(params.since)
                    .bind::<Timestamptz, _>(params.until)
                    .bind::<Nullable<Text>, _>(params.tenant.as_deref())
                    .bind::<Text, _>(params.bucket.as_str())
                    .bind::<Text, _>(&params.tz)
                    .load(conn)
                    .await?;
                Ok(Some((events, cohorts)))
            })
            .await
    })
    .await
    .map_err(ApiError::Unavailable)?;
    let Some((events, cohorts)) = found else {
        return Err(ApiError::BadRequest(format!(
            "tz {:?} is not a time zone this server knows; use an IANA name such as \
             Europe/Paris or UTC",
            params.tz
        )));
    };
    Ok(HttpResponse::Ok().json(view(params, events, cohorts)))
}

fn view(params: Params, events: Vec<EventCountRow>, cohorts: Vec<CohortRow>) -> StatsView {
    let mut total_counts = zero_counts();
    let mut total_machine = Machine::default();
    let mut buckets: BTreeMap<NaiveDateTime, BucketView> = BTreeMap::new();
    for row in events {
        let bucket = buckets
            .entry(row.local_start)
            .or_insert_with(|| BucketView {
                start: start_in_zone(row.local_start, row.start),
                counts: zero_counts(),
                machine: Machine::default(),
            });
        let Ok(event_type) = row.event_type.parse::<EventType>() else {
            continue;
        };
        let name = event_type.as_str();
        *bucket.counts.entry(name).or_default() += row.human;
        *total_counts.entry(name).or_default() += row.human;
        let machine = match event_type {
            EventType::Opened => Some((&mut bucket.machine.opened, &mut total_machine.opened)),
            EventType::Clicked => Some((&mut bucket.machine.clicked, &mut total_machine.clicked)),
            _ => None,
        };
        match machine {
            Some((in_bucket, in_total)) => {
                *in_bucket += row.machine;
                *in_total += row.machine;
            }
            // A flag on another type is no reason to leave the event out.
            None => {
                *bucket.counts.entry(name).or_default() += row.machine;
                *total_counts.entry(name).or_default() += row.machine;
            }
        }
    }
    let mut total_cohort = CohortCounts::default();
    let mut total_cohort_machine = Machine::default();
    let cohorts: Vec<CohortView> = cohorts
        .into_iter()
        .map(|row| {
            let counts = CohortCounts {
                dispatched: row.dispatched,
                delivered: row.delivered,
                bounced: row.bounced,
                complained: row.complained,
                opened: row.opened,
                clicked: row.clicked,
            };
            let machine = Machine {
                opened: row.machine_opened,
                clicked: row.machine_clicked,
            };
            total_cohort.add(&counts);
            total_cohort_machine.opened += machine.opened;
            total_cohort_machine.clicked += machine.clicked;
            CohortView {
                start: start_in_zone(row.local_start, row.start),
                rates: counts.rates(),
                counts,
                machine,
            }
        })
        .collect();
    StatsView {
        since: params.since,
        until: params.until,
        tenant: params.tenant,
        bucket: params.bucket,
        tz: params.tz,
        buckets: buckets.into_values().collect(),
        cohorts,
        totals: Totals {
            counts: total_counts,
            machine: total_machine,
            cohort: TotalCohort {
                rates: total_cohort.rates(),
                counts: total_cohort,
                machine: total_cohort_machine,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Role;
    use uuid::Uuid;

    fn key(tenant: Option<&str>) -> Principal {
        Principal {
            key_id: Uuid::nil(),
            tenant: tenant.map(str::to_owned),
            role: Role::Read,
        }
    }

    fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn now() -> DateTime<Utc> {
        "2026-12-03T12:00:00Z".parse().expect("a time")
    }

    #[test]
    fn defaults_are_the_last_seven_days_in_utc_days() {
        let params = Params::read(&key(None), &query(&[]), now()).expect("valid");
        assert_eq!(params.until, now());
        assert_eq!(params.since, now() - TimeDelta::days(7));
        assert_eq!(params.bucket, Bucket::Day);
        assert_eq!(params.tz, "UTC");
        assert_eq!(params.tenant, None);
    }

    /// Found by hand while typing the answer's schema: the answer repeated `since` in UTC as
    /// `-0001-12-31T10:00:00Z`, which is no RFC 3339 date-time.
    #[test]
    fn times_outside_rfc_3339_years_in_utc_are_refused() {
        for pairs in [
            &[
                ("since", "0000-01-01T00:00:00+14:00"),
                ("until", "0000-01-03T00:00:00Z"),
            ][..],
            // The default `since`, 7 days before `until`, would be in year -1.
            &[("until", "0000-01-03T00:00:00Z")][..],
            &[("until", "9999-12-31T23:00:00-12:00")][..],
        ] {
            let params = Params::read(&key(None), &query(pairs), now());
            assert!(matches!(params, Err(ApiError::BadRequest(_))), "{pairs:?}");
        }
        let edge = [
            ("since", "0000-01-01T00:00:00Z"),
            ("until", "0000-01-02T00:00:00Z"),
        ];
        assert!(Params::read(&key(None), &query(&edge), now()).is_ok());
    }

    #[test]
    fn a_tenant_key_is_held_to_its_tenant() {
        let own = Params::read(&key(Some("acme")), &query(&[]), now()).expect("valid");
        assert_eq!(own.tenant.as_deref(), Some("acme"));
        let other = Params::read(&key(Some("acme")), &query(&[("tenant", "globex")]), now());
        assert!(matches!(other, Err(ApiError::NotFound(_))), "{other:?}");
    }

    #[test]
    fn spans_are_bounded_per_bucket() {
        let hour = query(&[
            ("since", "2026-11-01T00:00:00Z"),
            ("until", "2026-12-02T00:00:01Z"),
            ("bucket", "hour"),
        ]);
        assert!(Params::read(&key(None), &hour, now()).is_err());
        let exactly = query(&[
            ("since", "2026-11-01T00:00:00Z"),
            ("until", "2026-12-02T00:00:00Z"),
            ("bucket", "hour"),
        ]);
        assert!(Params::read(&key(None), &exactly, now()).is_ok());
        let day = query(&[
            ("since", "2025-10-01T00:00:00Z"),
            ("until", "2026-12-01T00:00:00Z"),
        ]);
        assert!(Params::read(&key(None), &day, now()).is_err());
        let fine = query(&[("since", "2026-11-20T00:00:00+09:00"), ("bucket", "hour")]);
        assert!(Params::read(&key(None), &fine, now()).is_ok());
    }

    #[test]
    fn starts_carry_the_zones_offset() {
        let start: DateTime<Utc> = "2026-11-01T15:00:00Z".parse().expect("a time");
        let local = NaiveDateTime::parse_from_str("2026-11-02 00:00:00", "%Y-%m-%d %H:%M:%S")
            .expect("a time");
        assert_eq!(start_in_zone(local, start), "2026-11-02T00:00:00+09:00");
        let utc = start.naive_utc();
        assert_eq!(start_in_zone(utc, start), "2026-11-01T15:00:00Z");
    }
}
