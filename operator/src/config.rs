//! The operator's settings: every one a documented `MAILTRAIL_*` environment variable (or the
//! matching command-line flag) with a sensible default. See README.md ("Configuration").

use crate::relay::FairShare;
use crate::retention::RetentionPolicy;
use crate::suppressions::SuppressionPolicy;
use clap::Args;
use mailtrail_broker::BrokerSettings;
use mailtrail_runtime::BrokerArgs;
use mailtrail_shared::contract::Limits;
use mailtrail_shared::topology::Topology;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct OperatorConfig {
    /// RabbitMQ settings (`MAILTRAIL_AMQP_URL`, `MAILTRAIL_AMQP_HEARTBEAT_SECS`,
    /// `MAILTRAIL_QUEUE_PREFIX`, `MAILTRAIL_QUEUE_TYPE`), shared by every service.
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// PostgreSQL URL of mailtrail's database.
    #[arg(
        long,
        env = "MAILTRAIL_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/mailtrail"
    )]
    pub database_url: String,

    /// Largest number of database connections.
    #[arg(long, env = "MAILTRAIL_DATABASE_POOL_SIZE", default_value_t = 8)]
    pub database_pool_size: usize,

    /// Client-side deadline of every database call, in milliseconds.
    #[arg(long, env = "MAILTRAIL_DATABASE_TIMEOUT_MS", default_value_t = 5000)]
    pub database_timeout_ms: u64,

    /// How often an idle-time liveness query checks the database, in milliseconds. A query that
    /// misses its deadline discards every idle connection: behind a proxy or NAT that keeps
    /// acknowledging, kernel keepalives alone never notice a dead peer.
    #[arg(long, env = "MAILTRAIL_DATABASE_LIVENESS_MS", default_value_t = 5000)]
    pub database_liveness_ms: u64,

    /// How long a tracking event whose email is not known (a webhook that arrived before the
    /// dispatcher's report, or one naming an email never taken in) waits for it, in hours;
    /// then it is set aside as `unknown_email`.
    #[arg(long, env = "MAILTRAIL_PENDING_EVENT_TTL_HOURS", default_value_t = 72)]
    pub pending_event_ttl_hours: u32,

    /// Soft bounces to one address (per tenant) within the window that put it on the suppression
    /// list; 0 turns soft-bounce suppression off. Hard bounces, complaints and unsubscribes add
    /// an address at once.
    #[arg(long, env = "MAILTRAIL_SUPPRESS_SOFT_BOUNCES", default_value_t = 3)]
    pub suppress_soft_bounces: u32,

    /// The window soft bounces are counted in, in hours.
    #[arg(
        long,
        env = "MAILTRAIL_SUPPRESS_SOFT_BOUNCE_WINDOW_HOURS",
        default_value_t = 72
    )]
    pub suppress_soft_bounce_window_hours: u32,

    /// How long automatic suppression entries last, in days; 0: they never expire.
    #[arg(long, env = "MAILTRAIL_SUPPRESS_TTL_DAYS", default_value_t = 0)]
    pub suppress_ttl_days: u32,

    /// Retention, in days: older requests (with their emails, events and outbox rows, once every
    /// job is published) and dead letters are deleted; 0 keeps everything forever.
    #[arg(long, env = "MAILTRAIL_RETENTION_DAYS", default_value_t = 0)]
    pub retention_days: u32,

    /// Bodies and attachments of requests older than this many days (jobs all published) are
    /// dropped, keeping the metadata; 0: never.
    #[arg(long, env = "MAILTRAIL_RETENTION_BODY_DAYS", default_value_t = 0)]
    pub retention_body_days: u32,

    /// Most rows one retention statement deletes or updates (each its own short transaction).
    #[arg(long, env = "MAILTRAIL_RETENTION_BATCH", default_value_t = 500)]
    pub retention_batch: u32,

    /// How often retention runs, in seconds.
    #[arg(long, env = "MAILTRAIL_RETENTION_INTERVAL_SECS", default_value_t = 600)]
    pub retention_interval_secs: u64,

    /// Whether the operator consumes `<prefix>dead-letter` into the `dead_letters` table
    /// (everything any service set aside). Turn it off only to read that queue yourself.
    #[arg(long, env = "MAILTRAIL_DEAD_LETTER_CONSUMER", default_value_t = true, action = clap::ArgAction::Set)]
    pub dead_letter_consumer: bool,

    /// Dead-letter messages the broker may hand the consumer before it acks.
    #[arg(long, env = "MAILTRAIL_DEAD_LETTER_PREFETCH", default_value_t = 100)]
    pub dead_letter_prefetch: u16,

    /// Largest number of dead letters stored in one transaction.
    #[arg(long, env = "MAILTRAIL_DEAD_LETTER_BATCH", default_value_t = 50)]
    pub dead_letter_batch: usize,

    /// Address of the operator's HTTP API.
    #[arg(long, env = "MAILTRAIL_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// How often queue depths and database backlogs are sampled for `/metrics`, in seconds.
    #[arg(long, env = "MAILTRAIL_METRICS_INTERVAL_SECS", default_value_t = 15)]
    pub metrics_interval_secs: u64,

    /// How long a history-page session lasts after sign-in, in seconds.
    #[arg(long, env = "MAILTRAIL_SESSION_TTL_SECS", default_value_t = 8 * 3600)]
    pub session_ttl_secs: u64,

    /// When the session cookie is marked `Secure`: `auto` (when the request came over https,
    /// directly or as `X-Forwarded-Proto` says) or `always` (set it when a proxy terminates TLS
    /// without saying so).
    #[arg(
        long,
        env = "MAILTRAIL_SESSION_COOKIE_SECURE",
        value_enum,
        default_value = "auto"
    )]
    pub session_cookie_secure: crate::sessions::SecureCookie,

    /// Mailbox messages the broker may hand the intake before it acks (AMQP prefetch).
    #[arg(long, env = "MAILTRAIL_INTAKE_PREFETCH", default_value_t = 200)]
    pub intake_prefetch: u16,

    /// Largest number of mailbox requests recorded in one transaction.
    #[arg(long, env = "MAILTRAIL_INTAKE_BATCH", default_value_t = 100)]
    pub intake_batch: usize,

    /// Tracking messages the broker may hand the tracking consumer before it acks.
    #[arg(long, env = "MAILTRAIL_TRACKING_PREFETCH", default_value_t = 400)]
    pub tracking_prefetch: u16,

    /// Largest number of tracking events recorded in one transaction.
    #[arg(long, env = "MAILTRAIL_TRACKING_BATCH", default_value_t = 200)]
    pub tracking_batch: usize,

    /// Largest number of dispatch jobs the relay publishes per round.
    #[arg(long, env = "MAILTRAIL_RELAY_BATCH", default_value_t = 200)]
    pub relay_batch: i64,

    /// How often the relay looks for pending jobs without being woken (milliseconds); it is also
    /// woken by every intake commit and by every outcome that frees a tenant's slot.
    #[arg(long, env = "MAILTRAIL_RELAY_INTERVAL_MS", default_value_t = 1000)]
    pub relay_interval_ms: u64,

    /// Tenant binding: a mailbox request is taken only from a broker user bound to its tenant
    /// (the AMQP `user_id` property, which RabbitMQ verifies; see MAILTRAIL_TENANT_USERS).
    #[arg(long, env = "MAILTRAIL_TENANT_BINDING", default_value_t = false, action = clap::ArgAction::Set)]
    pub tenant_binding: bool,

    /// Broker users and the tenants they may write for, with binding on: `user=tenant` pairs
    /// separated by commas; `user=*` for any tenant; a user may be listed more than once.
    #[arg(long, env = "MAILTRAIL_TENANT_USERS", default_value = "")]
    pub tenant_users: String,

    /// Per-tenant allowed `from` domains (subdomains included): `tenant=domain|domain`
    /// separated by semicolons. Tenants not listed may send from any domain.
    #[arg(long, env = "MAILTRAIL_TENANT_FROM_DOMAINS", default_value = "")]
    pub tenant_from_domains: String,

    /// Publish every recorded event to the `<prefix>events` topic exchange for apps
    /// (docs/status-events.md). Off, the queued events are dropped unpublished.
    #[arg(long, env = "MAILTRAIL_STATUS_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub status_events: bool,

    /// Largest number of status events the status relay publishes per round.
    #[arg(long, env = "MAILTRAIL_STATUS_RELAY_BATCH", default_value_t = 500)]
    pub status_relay_batch: i64,

    /// How often the status relay looks for new events when idle (milliseconds).
    #[arg(
        long,
        env = "MAILTRAIL_STATUS_RELAY_INTERVAL_MS",
        default_value_t = 100
    )]
    pub status_relay_interval_ms: u64,

    /// Fair dispatch: at most this many of one tenant's jobs in flight (published, no first
    /// outcome yet) at a time, taken round-robin across tenants; 0 turns fairness off. Keep it at
    /// or above the dispatchers' combined concurrency so a tenant alone still keeps every
    /// dispatcher busy. Priority mail and retries are never capped.
    #[arg(long, env = "MAILTRAIL_FAIR_SHARE_PER_TENANT", default_value_t = 200)]
    pub fair_share_per_tenant: u32,

    /// How long a published job without an outcome holds its tenant's slot, in seconds: a lost
    /// outcome cannot hold a slot forever.
    #[arg(long, env = "MAILTRAIL_FAIR_SLOT_TIMEOUT_SECS", default_value_t = 900)]
    pub fair_slot_timeout_secs: u64,

    /// Largest accepted mailbox request, in bytes.
    #[arg(long, env = "MAILTRAIL_MAX_REQUEST_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Most distinct recipients per mailbox request.
    #[arg(long, env = "MAILTRAIL_MAX_RECIPIENTS", default_value_t = 50)]
    pub max_recipients: usize,

    /// Largest request size × recipient count, in bytes: bounds what one request puts on the broker.
    #[arg(long, env = "MAILTRAIL_MAX_FANOUT_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub max_fanout_bytes: usize,

    /// How long a shutdown waits for in-flight work before giving up, in milliseconds.
    #[arg(long, env = "MAILTRAIL_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
}

impl OperatorConfig {
    /// The defaults (and any `MAILTRAIL_*` variables set), as `operator run` would see them.
    pub fn from_env() -> OperatorConfig {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: OperatorConfig,
        }
        <Wrapper as clap::Parser>::parse_from(["operator"]).config
    }

    pub fn topology(&self) -> Topology {
        self.broker.topology()
    }

    pub fn broker(&self) -> BrokerSettings {
        self.broker.settings("operator")
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_request_bytes: self.max_request_bytes,
            max_recipients: self.max_recipients,
            max_fanout_bytes: self.max_fanout_bytes,
        }
    }

    /// The broker user the operator connects as (from `MAILTRAIL_AMQP_URL`; `guest` when the URL
    /// names none), which RabbitMQ checks as `user_id` on what the operator publishes.
    pub fn broker_user(&self) -> String {
        self.broker
            .amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .map(|uri| uri.authority.userinfo.username)
            .ok()
            .filter(|user| !user.is_empty())
            .unwrap_or_else(|| "guest".to_owned())
    }

    /// Who may write for which tenant (`MAILTRAIL_TENANT_*`); an error says which setting is wrong.
    pub fn tenant_policy(&self) -> anyhow::Result<crate::tenant_policy::TenantPolicy> {
        crate::tenant_policy::TenantPolicy::from_settings(
            self.tenant_binding,
            &self.tenant_users,
            &self.tenant_from_domains,
            &self.broker_user(),
        )
    }

    pub fn suppression_policy(&self) -> SuppressionPolicy {
        SuppressionPolicy {
            soft_bounces: self.suppress_soft_bounces,
            soft_bounce_window_hours: self.suppress_soft_bounce_window_hours,
            ttl_days: self.suppress_ttl_days,
        }
    }

    pub fn retention_policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            days: self.retention_days,
            body_days: self.retention_body_days,
            batch: self.retention_batch,
            interval: Duration::from_secs(self.retention_interval_secs),
        }
    }

    pub fn fair_share(&self) -> FairShare {
        FairShare {
            per_tenant: self.fair_share_per_tenant,
            slot_timeout: Duration::from_secs(self.fair_slot_timeout_secs),
        }
    }

    pub fn session_settings(&self) -> crate::sessions::SessionSettings {
        crate::sessions::SessionSettings {
            ttl: Duration::from_secs(self.session_ttl_secs.max(60)),
            secure: self.session_cookie_secure,
        }
    }

    pub fn database_timeout(&self) -> Duration {
        Duration::from_millis(self.database_timeout_ms)
    }
}
