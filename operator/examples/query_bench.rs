//! Query speed on a large history: loads a scratch database with `--emails` emails (one
//! recipient per request, five events each) and times the API's read queries — the message
//! timeline (`GET /v1/messages/{id}`), recipient and metadata search (`GET /v1/messages`) and
//! stats (`GET /v1/stats`) — printing p50/p90/p99/max per kind (`docs/benchmarks.md`).
//!
//! ```sh
//! cargo run --release -p mailtrail-operator --example query_bench -- \
//!     [--emails 1000000] [--runs 500] [--stats-runs 20] [--database-url URL] [--explain] [--keep]
//! ```
//!
//! The database (`mailtrail_query_bench` by default) is dropped and recreated, migrated with the
//! operator's own runner (`db::migrate`), and dropped again at the end unless `--keep`.
//!
//! The SQL timed here is the SQL the handlers send (diesel's rendering of the search and
//! timeline queries, the stats module's text), written out because the handlers' query
//! functions are private; binds go as text with a cast (`$1::text::uuid`), which plans the same.
//! Loading bypasses the `events_status_outbox` trigger (disabled during the load, re-enabled
//! after), so `status_outbox` stays empty.

use anyhow::Context;
use rand::seq::IndexedRandom;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

const TENANTS: i64 = 20;
const CHUNK: i64 = 100_000;

struct Args {
    emails: i64,
    runs: usize,
    stats_runs: usize,
    server_url: String,
    database: String,
    explain: bool,
    keep: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        emails: 1_000_000,
        runs: 500,
        stats_runs: 20,
        server_url: "postgres://postgres@127.0.0.1:5432".into(),
        database: "mailtrail_query_bench".into(),
        explain: false,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--emails" => a.emails = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--stats-runs" => a.stats_runs = value()?.parse()?,
            "--database-url" => a.server_url = value()?,
            "--database" => a.database = value()?,
            "--explain" => a.explain = true,
            "--keep" => a.keep = true,
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: query_bench [--emails N] [--runs N] \
                 [--stats-runs N] [--database-url postgres://…] [--database NAME] [--explain] \
                 [--keep]"
            ),
        }
    }
    Ok(a)
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let server = a.server_url.trim_end_matches('/').to_owned();
    let admin = connect(&format!("{server}/postgres")).await?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            a.database
        ))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", a.database))
        .await?;
    let url = format!("{server}/{}", a.database);
    mailtrail_operator::db::migrate(&url).await?;
    let client = connect(&url).await?;

    let started = Instant::now();
    load(&client, a.emails).await?;
    let load_time = started.elapsed();
    println!("loaded in {:.1} s", load_time.as_secs_f64());
    for row in client
        .query(
            "SELECT relname, n_live_tup::bigint, pg_size_pretty(pg_table_size(relid)), \
                    pg_size_pretty(pg_indexes_size(relid)) \
               FROM pg_stat_user_tables WHERE relname IN ('requests', 'emails', 'events') \
              ORDER BY relname",
            &[],
        )
        .await?
    {
        println!(
            "  {:<9} {:>10} rows  table {:>8}  indexes {:>8}",
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3)
        );
    }

    let samples = Samples::read(&client).await?;
    println!(
        "\n{:<34} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "query", "runs", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for kind in Kind::ALL {
        let runs = if kind.is_stats() {
            a.stats_runs
        } else {
            a.runs
        };
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let (sql, params) = samples.pick(kind);
            let t = Instant::now();
            kind.run(&client, &sql, &params).await?;
            times.push(t.elapsed());
        }
        report(kind.label(), &mut times);
    }
    if a.explain {
        for kind in Kind::ALL {
            let (sql, params) = samples.pick(kind);
            for (n, statement) in sql.iter().enumerate() {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params[n]
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                println!("\n== EXPLAIN {} (statement {}) ==", kind.label(), n + 1);
                for row in client
                    .query(
                        &format!("EXPLAIN (ANALYZE, BUFFERS) {statement}"),
                        refs.as_slice(),
                    )
                    .await?
                {
                    println!("{}", row.get::<_, String>(0));
                }
            }
        }
    }
    drop(client);
    if !a.keep {
        admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", a.database))
            .await?;
    }
    Ok(())
}

fn report(label: &str, times: &mut [Duration]) {
    if times.is_empty() {
        return;
    }
    times.sort();
    let at = |q: f64| {
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        times[i].as_secs_f64() * 1000.0
    };
    println!(
        "{:<34} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        label,
        times.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(1.0)
    );
}

/// Loads requests, emails and events with server-side `generate_series`, in chunks.
async fn load(client: &Client, emails: i64) -> anyhow::Result<()> {
    client
        .batch_execute(
            "SET synchronous_commit = off; \
             ALTER TABLE events DISABLE TRIGGER events_status_outbox",
        )
        .await?;
    // Recipients: u^3 over emails/5 addresses, so a few addresses get thousands of emails.
    let recipients = (emails / 5).max(1);
    let mut from = 1;
    while from <= emails {
        let to = (from + CHUNK - 1).min(emails);
        client
            .execute(
                &format!(
                    "INSERT INTO requests (id, tenant, request_key, key_source, content_hash, \
                         priority, from_address, subject, text_body, tags, metadata, created_at)
                     SELECT md5('r' || g)::uuid, 't' || (g % {TENANTS}), 'req-' || g, 'body',
                            decode(md5('c' || g), 'hex'), 'normal',
                            '{{\"display_name\":\"Acme\",\"address\":\"hello@acme.test\",\"canonical\":\"hello@acme.test\"}}'::jsonb,
                            'Your order ' || g, 'Hello', 
                            ARRAY[CASE WHEN g % 4 = 0 THEN 'transactional' ELSE 'newsletter' END,
                                  'batch-' || (g % 100)],
                            jsonb_build_object('campaign', 'c' || (g % 37),
                                               'order_id', g::text,
                                               'locale', (ARRAY['en','fr','de'])[1 + g % 3]),
                            now() - random() * interval '30 days'
                       FROM generate_series({from}::bigint, {to}) g"
                ),
                &[],
            )
            .await?;
        client
            .execute(
                &format!(
                    "INSERT INTO emails (id, request_id, tenant, recipient, recipient_canonical,
                         status, status_precedence, last_seq, provider, provider_message_id,
                         open_count, click_count, first_opened_at, first_clicked_at,
                         created_at, updated_at)
                     SELECT md5('m' || g)::uuid, r.id, r.tenant,
                            jsonb_build_object('display_name', null, 'address', a, 'canonical', a),
                            a, s.status, s.precedence, 5, 'smtp', '<' || g || '@smtp.test>',
                            (s.status IN ('opened', 'clicked'))::int,
                            (s.status = 'clicked')::int,
                            CASE WHEN s.status IN ('opened', 'clicked')
                                 THEN r.created_at + interval '1 hour' END,
                            CASE WHEN s.status = 'clicked'
                                 THEN r.created_at + interval '1 hour' END,
                            r.created_at, r.created_at + interval '1 hour'
                       FROM generate_series({from}::bigint, {to}) g
                       JOIN requests r ON r.id = md5('r' || g)::uuid
                      CROSS JOIN LATERAL (SELECT 'user' || floor(power(random(), 3) * {recipients})::bigint
                                                 || '@example.com' AS a) addr
                      CROSS JOIN LATERAL (SELECT CASE WHEN g % 20 = 0 THEN 'bounced'
                                                      WHEN g % 3 = 0 THEN 'clicked'
                                                      ELSE 'opened' END AS status,
                                                 CASE WHEN g % 20 = 0 THEN 90
                                                      WHEN g % 3 = 0 THEN 70
                                                      ELSE 60 END AS precedence) s"
                ),
                &[],
            )
            .await?;
        from = to + 1;
    }
    // Five events per email; one statement per position, so an email's events lie apart on
    // disk as they would after arriving over hours.
    let events = [
        // (seq, type, rank, after created_at, source) for a delivered email; bounced ones
        // have `deferred` then `bounced` as their last two.
        "1, 'accepted', 0, interval '0', 'operator'",
        "2, 'queued', 3, interval '1 second', 'operator'",
        "3, 'dispatched', 5, interval '2 seconds', 'dispatcher'",
        "4, CASE WHEN m.status = 'bounced' THEN 'deferred' ELSE 'delivered' END, \
            CASE WHEN m.status = 'bounced' THEN 4 ELSE 7 END, interval '1 minute', \
            CASE WHEN m.status = 'bounced' THEN 'dispatcher' ELSE 'webhook:sendgrid' END",
        "5, CASE m.status WHEN 'bounced' THEN 'bounced' WHEN 'clicked' THEN 'clicked' \
            ELSE 'opened' END, \
            CASE m.status WHEN 'bounced' THEN 8 WHEN 'clicked' THEN 10 ELSE 9 END, \
            interval '1 hour', 'webhook:sendgrid'",
    ];
    for columns in events {
        client
            .execute(
                &format!(
                    "INSERT INTO events (event_id, email_id, seq, event_type, lifecycle_rank,
                         occurred_at, recorded_at, source, provider, provider_event_id,
                         provider_message_id, details)
                     SELECT md5(m.id::text || v.seq)::uuid, m.id, v.seq, v.event_type, v.rank,
                            m.created_at + v.after, m.created_at + v.after, v.source,
                            CASE WHEN v.seq > 2 THEN 'smtp' END,
                            CASE WHEN v.source LIKE 'webhook:%' THEN md5(m.id::text || v.seq) END,
                            m.provider_message_id,
                            CASE WHEN v.event_type = 'opened' AND m.open_count > 0
                                      AND get_byte(decode(md5(m.id::text), 'hex'), 0) < 40
                                 THEN '{{\"machine\": true}}'::jsonb ELSE '{{}}'::jsonb END
                       FROM emails m
                      CROSS JOIN LATERAL (SELECT {columns}) AS v(seq, event_type, rank, after, source)"
                ),
                &[],
            )
            .await?;
    }
    client
        .batch_execute("ALTER TABLE events ENABLE TRIGGER events_status_outbox")
        .await?;
    for table in ["requests", "emails", "events"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Timeline,
    Recipient,
    RecipientAllTenants,
    MetadataCampaign,
    MetadataOrder,
    Tag,
    StatsTenant,
    StatsAll,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Timeline,
        Kind::Recipient,
        Kind::RecipientAllTenants,
        Kind::MetadataCampaign,
        Kind::MetadataOrder,
        Kind::Tag,
        Kind::StatsTenant,
        Kind::StatsAll,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Timeline => "timeline (GET /v1/messages/{id})",
            Kind::Recipient => "recipient search, tenant key",
            Kind::RecipientAllTenants => "recipient search, all tenants",
            Kind::MetadataCampaign => "metadata campaign (broad), tenant",
            Kind::MetadataOrder => "metadata order_id (exact), tenant",
            Kind::Tag => "tag + tenant",
            Kind::StatsTenant => "stats 7 days by day, tenant",
            Kind::StatsAll => "stats 7 days by day, all tenants",
        }
    }

    fn is_stats(self) -> bool {
        matches!(self, Kind::StatsTenant | Kind::StatsAll)
    }

    /// Runs the statements as the handler does: the timeline and stats in one read-only
    /// repeatable-read transaction, a search page as one statement.
    async fn run(
        self,
        client: &Client,
        sql: &[String],
        params: &[Vec<String>],
    ) -> anyhow::Result<()> {
        let in_tx = matches!(self, Kind::Timeline) || self.is_stats();
        if in_tx {
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
        }
        for (statement, params) in sql.iter().zip(params) {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            client.query(statement.as_str(), refs.as_slice()).await?;
        }
        if in_tx {
            client.batch_execute("COMMIT").await?;
        }
        Ok(())
    }
}

/// Parameters drawn from the data (so hot recipients are asked for as often as they occur).
struct Samples {
    emails: Vec<(String, String, String)>, // id, tenant, recipient
    requests: Vec<(String, String, String, String)>, // tenant, campaign, order_id, tag
    since: String,
    until: String,
}

const SEARCH_COLUMNS: &str = r#"SELECT "emails"."id", "requests"."request_key", "emails"."tenant", "emails"."recipient", "emails"."status", "requests"."subject", "emails"."created_at", "emails"."updated_at", "requests"."tags", "requests"."metadata", "emails"."provider", "emails"."provider_message_id", "emails"."open_count", "emails"."click_count" FROM ("emails" INNER JOIN "requests" ON ("emails"."request_id" = "requests"."id"))"#;
const SEARCH_ORDER: &str = r#" ORDER BY "emails"."created_at" DESC, "emails"."id" DESC LIMIT 50"#;

impl Samples {
    async fn read(client: &Client) -> anyhow::Result<Samples> {
        let emails = client
            .query(
                "SELECT id::text, tenant, recipient_canonical FROM emails \
                 TABLESAMPLE BERNOULLI (1) LIMIT 5000",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let requests = client
            .query(
                "SELECT tenant, metadata->>'campaign', metadata->>'order_id', tags[2] FROM requests \
                 TABLESAMPLE BERNOULLI (1) LIMIT 5000",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        let window = client
            .query_one(
                "SELECT (max(occurred_at) - interval '7 days')::text, max(occurred_at)::text \
                 FROM events",
                &[],
            )
            .await?;
        Ok(Samples {
            emails,
            requests,
            since: window.get(0),
            until: window.get(1),
        })
    }

    fn pick(&self, kind: Kind) -> (Vec<String>, Vec<Vec<String>>) {
        let mut rng = rand::rng();
        let (id, tenant, recipient) = self.emails.choose(&mut rng).cloned().unwrap_or_default();
        let (r_tenant, campaign, order, tag) =
            self.requests.choose(&mut rng).cloned().unwrap_or_default();
        let search = |filters: &str| format!("{SEARCH_COLUMNS} WHERE {filters}{SEARCH_ORDER}");
        match kind {
            Kind::Timeline => (
                timeline_sql(),
                vec![vec![id.clone()], vec![id.clone()], vec![id]],
            ),
            Kind::Recipient => (
                vec![search(
                    r#"(("emails"."tenant" = $1) AND ("requests"."tenant" = $2)) AND ("emails"."recipient_canonical" = $3)"#,
                )],
                vec![vec![tenant.clone(), tenant, recipient]],
            ),
            Kind::RecipientAllTenants => (
                vec![search(r#"("emails"."recipient_canonical" = $1)"#)],
                vec![vec![recipient]],
            ),
            Kind::MetadataCampaign | Kind::MetadataOrder => {
                let doc = if matches!(kind, Kind::MetadataCampaign) {
                    serde_json::json!({ "campaign": campaign })
                } else {
                    serde_json::json!({ "order_id": order })
                };
                (
                    vec![search(
                        r#"(("emails"."tenant" = $1) AND ("requests"."tenant" = $2)) AND ("requests"."metadata" @> $3::text::jsonb)"#,
                    )],
                    vec![vec![r_tenant.clone(), r_tenant, doc.to_string()]],
                )
            }
            Kind::Tag => (
                vec![search(
                    r#"(("emails"."tenant" = $1) AND ("requests"."tenant" = $2)) AND ("requests"."tags" @> ARRAY[$3::text])"#,
                )],
                vec![vec![r_tenant.clone(), r_tenant, tag]],
            ),
            Kind::StatsTenant | Kind::StatsAll => {
                let scoped = matches!(kind, Kind::StatsTenant).then_some(tenant);
                stats_sql(&self.since, &self.until, scoped)
            }
        }
    }
}

/// The three statements of `message_history` (operator/src/http.rs), as diesel renders them.
fn timeline_sql() -> Vec<String> {
    vec![
        r#"SELECT "emails"."id", "emails"."tenant", "emails"."recipient", "emails"."status", "emails"."created_at", "requests"."request_key", "requests"."from_address", "requests"."subject", "requests"."tags", "requests"."metadata" FROM ("emails" INNER JOIN "requests" ON ("emails"."request_id" = "requests"."id")) WHERE ("emails"."id" = $1::text::uuid) LIMIT 1"#.to_owned(),
        r#"SELECT "emails"."provider", "emails"."provider_message_id", "emails"."open_count", "emails"."click_count", "emails"."first_opened_at", "emails"."first_clicked_at" FROM "emails" WHERE ("emails"."id" = $1::text::uuid) LIMIT 1"#.to_owned(),
        r#"SELECT "events"."event_type", "events"."occurred_at", "events"."recorded_at", "events"."source", "events"."seq", "events"."details", "events"."provider", "events"."provider_event_id" FROM "events" WHERE ("events"."email_id" = $1::text::uuid) ORDER BY "events"."occurred_at", "events"."lifecycle_rank", "events"."seq""#.to_owned(),
    ]
}

const IS_MACHINE: &str = "COALESCE(details->>'machine', '') = 'true'";
const EVENT_TYPES: &str = "accepted,scheduled,suppressed,cancelled,queued,deferred,dispatched,\
                           rejected,failed,delivered,bounced,opened,clicked,complained,unsubscribed";

/// The three statements of `stats` (operator/src/stats_api.rs): the zone check, event counts and
/// cohorts, over the 7 days up to the newest event.
fn stats_sql(since: &str, until: &str, tenant: Option<String>) -> (Vec<String>, Vec<Vec<String>>) {
    let counts = format!(
        r#"
        SELECT date_trunc($4, e.occurred_at AT TIME ZONE $5) AS local_start,
               date_trunc($4, e.occurred_at AT TIME ZONE $5) AT TIME ZONE $5 AS start,
               e.event_type,
               count(*) FILTER (WHERE NOT {machine}) AS human,
               count(*) FILTER (WHERE {machine}) AS machine
          FROM events e
          JOIN emails m ON m.id = e.email_id
         WHERE e.event_type = ANY(string_to_array($6, ','))
           AND e.occurred_at >= $1::text::timestamptz AND e.occurred_at < $2::text::timestamptz
           AND (NULLIF($3, '')::text IS NULL OR m.tenant = NULLIF($3, ''))
         GROUP BY 1, 2, 3
         ORDER BY 1, 3
        "#,
        machine = IS_MACHINE.replace("details", "e.details"),
    );
    let cohorts = format!(
        r#"
        WITH first_dispatch AS (
            SELECT e.email_id, min(e.occurred_at) AS first_at
              FROM events e
              JOIN emails m ON m.id = e.email_id
             WHERE e.event_type = 'dispatched'
               AND e.occurred_at >= $1::text::timestamptz AND e.occurred_at < $2::text::timestamptz
               AND (NULLIF($3, '')::text IS NULL OR m.tenant = NULLIF($3, ''))
               AND NOT EXISTS (SELECT 1 FROM events p
                                WHERE p.email_id = e.email_id AND p.event_type = 'dispatched'
                                  AND p.occurred_at < $1::text::timestamptz)
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
    );
    let tenant = tenant.unwrap_or_default();
    let base = vec![
        since.to_owned(),
        until.to_owned(),
        tenant,
        "day".to_owned(),
        "UTC".to_owned(),
    ];
    let mut with_types = base.clone();
    with_types.push(EVENT_TYPES.to_owned());
    (
        vec![
            "SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1) AS known".to_owned(),
            counts,
            cohorts,
        ],
        vec![vec!["UTC".to_owned()], with_types, base],
    )
}
