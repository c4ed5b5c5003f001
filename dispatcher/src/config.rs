//! The dispatcher's settings: every one a documented `MAILTRAIL_*` variable (or flag).

use mailtrail_runtime::BrokerArgs;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct DispatcherConfig {
    /// RabbitMQ settings, shared by every service.
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Address of the health endpoints.
    #[arg(long, env = "MAILTRAIL_HTTP_ADDR", default_value = "127.0.0.1:8082")]
    pub http_addr: SocketAddr,

    /// Where to send mail: `smtp://host[:port]` (port 25; STARTTLS per MAILTRAIL_SMTP_STARTTLS)
    /// or `smtps://host[:port]` (TLS from the first byte, port 465). No credentials in the URL:
    /// see MAILTRAIL_SMTP_USERNAME.
    #[arg(
        long,
        env = "MAILTRAIL_SMTP_URL",
        default_value = "smtp://127.0.0.1:2525"
    )]
    pub smtp_url: String,

    /// Most SMTP connections kept open to the server (each with TCP_NODELAY, reused).
    #[arg(long, env = "MAILTRAIL_SMTP_CONNECTIONS", default_value_t = 16)]
    pub smtp_connections: usize,

    /// Deadline of one SMTP send (connect included), in milliseconds; a miss is a deferral.
    #[arg(long, env = "MAILTRAIL_SMTP_TIMEOUT_MS", default_value_t = 30_000)]
    pub smtp_timeout_ms: u64,

    /// The name the dispatcher gives itself in EHLO.
    #[arg(long, env = "MAILTRAIL_SMTP_HELLO_NAME", default_value = "localhost")]
    pub smtp_hello_name: String,

    /// STARTTLS on smtp:// URLs: `opportunistic` (upgrade when the server offers it), `required`
    /// (never send in clear: a server without STARTTLS counts as down, mail waits) or `off`.
    /// Certificates are always verified. Ignored for smtps://.
    #[arg(
        long,
        env = "MAILTRAIL_SMTP_STARTTLS",
        value_enum,
        default_value_t = crate::smtp::StartTls::Opportunistic
    )]
    pub smtp_starttls: crate::smtp::StartTls,

    /// SMTP AUTH user (PLAIN or LOGIN, whichever the server offers; only over TLS unless
    /// MAILTRAIL_SMTP_ALLOW_CLEARTEXT_AUTH). Unset: no AUTH.
    #[arg(long, env = "MAILTRAIL_SMTP_USERNAME", hide_env_values = true)]
    pub smtp_username: Option<String>,

    /// SMTP AUTH password (with MAILTRAIL_SMTP_USERNAME; never logged). A refused login (535)
    /// marks the provider down: mail waits until it is fixed.
    #[arg(
        long,
        env = "MAILTRAIL_SMTP_PASSWORD",
        hide_env_values = true,
        value_parser = crate::smtp::parse_password
    )]
    pub smtp_password: Option<secrecy::SecretString>,

    /// Allow SMTP AUTH on a connection that is not encrypted (only for a relay on a trusted
    /// network).
    #[arg(
        long,
        env = "MAILTRAIL_SMTP_ALLOW_CLEARTEXT_AUTH",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub smtp_allow_cleartext_auth: bool,

    /// A PEM bundle of CA certificates trusted for the SMTP server besides the built-in
    /// (Mozilla) roots, e.g. a private relay's CA.
    #[arg(long, env = "MAILTRAIL_SMTP_TLS_CA_FILE")]
    pub smtp_tls_ca_file: Option<std::path::PathBuf>,

    /// Dispatch jobs in hand at once per dispatching queue (the AMQP prefetch of each of the two
    /// consumers, normal and urgent): with both queues busy, up to twice this.
    #[arg(long, env = "MAILTRAIL_DISPATCH_CONCURRENCY", default_value_t = 64)]
    pub concurrency: u16,

    /// The waits before each retry, in order (`s`, `m`, `h` or `d` units); attempts past the
    /// list wait the last. Each delay is a quorum queue `<prefix>dispatching.delay-<n>s`.
    #[arg(
        long,
        env = "MAILTRAIL_RETRY_SCHEDULE",
        default_value = "30s,2m,10m,1h,4h,12h",
        value_parser = parse_schedule
    )]
    pub retry_schedule: Schedule,

    /// Attempts before a transiently failing job is given up as `failed` (waits while the
    /// provider or our account was at fault do not count).
    #[arg(long, env = "MAILTRAIL_MAX_ATTEMPTS", default_value_t = 10)]
    pub max_attempts: u32,

    /// Oldest a job may get, from its first attempt, before it is given up as `failed`
    /// (`s`, `m`, `h` or `d`).
    #[arg(
        long,
        env = "MAILTRAIL_RETRY_MAX_AGE",
        default_value = "3d",
        value_parser = parse_duration
    )]
    pub retry_max_age: Duration,

    /// The provider mail goes through: `smtp`, `mailgun`, `sendgrid`, `postmark`, `resend` or
    /// `ses` (each configured by its own variables).
    #[arg(long, env = "MAILTRAIL_PROVIDER", default_value = "smtp")]
    pub provider: String,

    /// Per-tenant providers, as `<tenant>=<provider>,…`; other tenants use MAILTRAIL_PROVIDER.
    #[arg(long, env = "MAILTRAIL_TENANT_PROVIDERS", default_value = "")]
    pub tenant_providers: String,

    /// Providers to use, in order, while the chosen one is down (its breaker open), e.g.
    /// `sendgrid,smtp`. Empty: mail for a provider that is down waits for it.
    #[arg(long, env = "MAILTRAIL_FAILOVER", default_value = "")]
    pub failover: String,

    /// Transient failures in a row after which a provider is marked down (its breaker opens);
    /// a provider that refuses us (bad key, suspended account) is marked down at once.
    #[arg(long, env = "MAILTRAIL_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,

    /// While a provider is down, how often one job is sent to it as a probe, in seconds.
    #[arg(long, env = "MAILTRAIL_BREAKER_PROBE_SECS", default_value_t = 10)]
    pub breaker_probe_secs: u64,

    /// Deadline of one HTTP provider request, in milliseconds; a miss is a deferral.
    #[arg(
        long,
        env = "MAILTRAIL_HTTP_PROVIDER_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub http_provider_timeout_ms: u64,

    /// Mailgun: the API key (HTTP Basic `api:<key>`).
    #[arg(long, env = "MAILTRAIL_MAILGUN_API_KEY", hide_env_values = true)]
    pub mailgun_api_key: Option<String>,

    /// Mailgun: the sending domain (`/v3/<domain>/messages`).
    #[arg(long, env = "MAILTRAIL_MAILGUN_DOMAIN")]
    pub mailgun_domain: Option<String>,

    /// Mailgun: the API base URL (EU: `https://api.eu.mailgun.net`).
    #[arg(long, env = "MAILTRAIL_MAILGUN_BASE_URL", default_value = crate::providers::mailgun::DEFAULT_BASE_URL)]
    pub mailgun_base_url: String,

    /// SendGrid: the API key (needs the `mail.send` scope).
    #[arg(long, env = "MAILTRAIL_SENDGRID_API_KEY", hide_env_values = true)]
    pub sendgrid_api_key: Option<String>,

    /// SendGrid: the API base URL (EU subusers: `https://api.eu.sendgrid.com`).
    #[arg(long, env = "MAILTRAIL_SENDGRID_BASE_URL", default_value = crate::providers::sendgrid::DEFAULT_BASE_URL)]
    pub sendgrid_base_url: String,

    /// Postmark: the server token.
    #[arg(long, env = "MAILTRAIL_POSTMARK_SERVER_TOKEN", hide_env_values = true)]
    pub postmark_server_token: Option<String>,

    /// Postmark: the message stream.
    #[arg(
        long,
        env = "MAILTRAIL_POSTMARK_MESSAGE_STREAM",
        default_value = "outbound"
    )]
    pub postmark_message_stream: String,

    /// Postmark: the API base URL.
    #[arg(long, env = "MAILTRAIL_POSTMARK_BASE_URL", default_value = crate::providers::postmark::DEFAULT_BASE_URL)]
    pub postmark_base_url: String,

    /// Resend: the API key (`re_…`).
    #[arg(long, env = "MAILTRAIL_RESEND_API_KEY", hide_env_values = true)]
    pub resend_api_key: Option<String>,

    /// Resend: the API base URL.
    #[arg(long, env = "MAILTRAIL_RESEND_BASE_URL", default_value = crate::providers::resend::DEFAULT_BASE_URL)]
    pub resend_base_url: String,

    /// Amazon SES v2: the region.
    #[arg(long, env = "MAILTRAIL_SES_REGION", default_value = "us-east-1")]
    pub ses_region: String,

    /// Amazon SES v2: the access key id.
    #[arg(long, env = "MAILTRAIL_SES_ACCESS_KEY_ID")]
    pub ses_access_key_id: Option<String>,

    /// Amazon SES v2: the secret access key.
    #[arg(long, env = "MAILTRAIL_SES_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub ses_secret_access_key: Option<String>,

    /// Amazon SES v2: a session token, for temporary credentials.
    #[arg(long, env = "MAILTRAIL_SES_SESSION_TOKEN", hide_env_values = true)]
    pub ses_session_token: Option<String>,

    /// Amazon SES v2: the configuration set (it is what publishes events to SNS).
    #[arg(long, env = "MAILTRAIL_SES_CONFIGURATION_SET")]
    pub ses_configuration_set: Option<String>,

    /// Amazon SES v2: the API base URL (default `https://email.<region>.amazonaws.com`).
    #[arg(long, env = "MAILTRAIL_SES_BASE_URL")]
    pub ses_base_url: Option<String>,

    /// Most messages per second per provider, per dispatcher process, as
    /// `<provider>=<rate>,…` (e.g. `mailgun=100`). Unlisted providers are not limited.
    #[arg(long, env = "MAILTRAIL_RATE_LIMITS", default_value = "")]
    pub rate_limits: String,

    /// Job outcomes remembered for redeliveries (count).
    #[arg(long, env = "MAILTRAIL_OUTCOME_MEMORY", default_value_t = 100_000)]
    pub outcome_memory: usize,

    /// How long job outcomes are remembered for redeliveries, in seconds.
    #[arg(long, env = "MAILTRAIL_OUTCOME_MEMORY_SECS", default_value_t = 600)]
    pub outcome_memory_secs: u64,
}

impl DispatcherConfig {
    /// The defaults (and any `MAILTRAIL_*` variables set).
    pub fn from_env() -> DispatcherConfig {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: DispatcherConfig,
        }
        <Wrapper as clap::Parser>::parse_from(["dispatcher"]).config
    }

    pub fn smtp_timeout(&self) -> Duration {
        Duration::from_millis(self.smtp_timeout_ms)
    }
}

/// The retry tiers: seconds to wait before attempt 2, 3, …
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<u32>);

impl Schedule {
    /// The wait after the `attempt`-th attempt (1-based) failed.
    pub fn delay_after(&self, attempt: u32) -> u32 {
        let index = attempt.saturating_sub(1) as usize;
        self.0.get(index).or(self.0.last()).copied().unwrap_or(60)
    }

    /// Every distinct delay, each a queue.
    pub fn delays(&self) -> Vec<u32> {
        let mut delays = self.0.clone();
        delays.sort_unstable();
        delays.dedup();
        delays
    }
}

/// `30s`, `2m`, `1h`, `3d` (or plain seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s, 2m, 1h or 3d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(number * unit_secs))
}

/// `30s,2m,10m` → the tiers, each at least a second.
pub fn parse_schedule(text: &str) -> Result<Schedule, String> {
    let delays = text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let secs = parse_duration(t)?.as_secs();
            u32::try_from(secs)
                .ok()
                .filter(|s| *s >= 1)
                .ok_or_else(|| format!("{t:?}: each retry delay must be from 1 s to 136 years"))
        })
        .collect::<Result<Vec<u32>, String>>()?;
    if delays.is_empty() {
        return Err("the retry schedule needs at least one delay".into());
    }
    Ok(Schedule(delays))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_and_durations() {
        let schedule = parse_schedule("30s,2m,10m,1h,4h,12h").expect("schedule");
        assert_eq!(schedule.0, [30, 120, 600, 3600, 14_400, 43_200]);
        assert_eq!(schedule.delay_after(1), 30);
        assert_eq!(schedule.delay_after(6), 43_200);
        assert_eq!(schedule.delay_after(9), 43_200, "past the list: the last");
        assert_eq!(parse_schedule("2,1,2").expect("schedule").delays(), [1, 2]);
        assert!(parse_schedule("").is_err());
        assert!(parse_schedule("0s").is_err());
        assert!(parse_schedule("5x").is_err());
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(259_200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
    }
}
