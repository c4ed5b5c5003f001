//! The webhook sink's settings: every one a documented `MAILTRAIL_*` variable (or flag).

use mailtrail_runtime::BrokerArgs;
use mailtrail_shared::tracking::ANY_TENANT;
use std::net::SocketAddr;

#[derive(Debug, Clone, clap::Args)]
pub struct SinkConfig {
    /// RabbitMQ settings, shared by every service.
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Address of the webhook and health endpoints.
    #[arg(long, env = "MAILTRAIL_HTTP_ADDR", default_value = "127.0.0.1:8081")]
    pub http_addr: SocketAddr,

    /// Largest webhook body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "MAILTRAIL_WEBHOOK_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Signing secrets of `POST /v1/webhooks/standard`, comma-separated, each
    /// `<tenant>=whsec_…` or `*=whsec_…` (valid for every tenant). Several may be active at once
    /// (rotation). Empty: the endpoint refuses everything.
    #[arg(
        long,
        env = "MAILTRAIL_WEBHOOK_STANDARD_SECRETS",
        default_value = "",
        hide_env_values = true
    )]
    pub standard_secrets: String,

    /// Timestamp window of Standard Webhooks requests, in seconds. Senders sign every retry
    /// afresh with the current time, so this bounds clock skew and replays, not retry spans.
    #[arg(
        long,
        env = "MAILTRAIL_WEBHOOK_STANDARD_WINDOW_SECS",
        default_value_t = 300
    )]
    pub standard_window_secs: u64,

    /// Resend signing secrets (`whsec_…` from the Resend dashboard), as
    /// `<tenant>=whsec_…,*=whsec_…`.
    #[arg(
        long,
        env = "MAILTRAIL_WEBHOOK_RESEND_SECRETS",
        default_value = "",
        hide_env_values = true
    )]
    pub resend_secrets: String,

    /// Timestamp window of Resend requests, in seconds: Svix signs every retry afresh.
    #[arg(
        long,
        env = "MAILTRAIL_WEBHOOK_RESEND_WINDOW_SECS",
        default_value_t = 300
    )]
    pub resend_window_secs: u64,

    /// Mailgun HTTP webhook signing keys, as `<tenant>=<key>,*=<key>`.
    #[arg(
        long,
        env = "MAILTRAIL_WEBHOOK_MAILGUN_SIGNING_KEYS",
        default_value = "",
        hide_env_values = true
    )]
    pub mailgun_signing_keys: String,

    /// Timestamp window of Mailgun requests, in seconds. Mailgun's timestamp sits in the body
    /// and retries go on for 8 hours, so the default (10 h) accepts its last retry.
    #[arg(long, env = "MAILTRAIL_WEBHOOK_MAILGUN_WINDOW_SECS", default_value_t = 10 * 3600)]
    pub mailgun_window_secs: u64,

    /// SendGrid signed-event-webhook verification keys (the base64 public key SendGrid shows),
    /// as `<tenant>=<key>,*=<key>`.
    #[arg(
        long,
        env = "MAILTRAIL_WEBHOOK_SENDGRID_PUBLIC_KEYS",
        default_value = "",
        hide_env_values = true
    )]
    pub sendgrid_public_keys: String,

    /// Timestamp window of SendGrid requests, in seconds. SendGrid retries for 24 hours and
    /// does not say whether a retry is signed afresh, so the default is 25 hours.
    #[arg(long, env = "MAILTRAIL_WEBHOOK_SENDGRID_WINDOW_SECS", default_value_t = 25 * 3600)]
    pub sendgrid_window_secs: u64,

    /// Postmark HTTP Basic credentials (Postmark does not sign webhooks), as
    /// `<tenant>=<user>:<password>,*=<user>:<password>`.
    #[arg(
        long,
        env = "MAILTRAIL_WEBHOOK_POSTMARK_CREDENTIALS",
        default_value = "",
        hide_env_values = true
    )]
    pub postmark_credentials: String,

    /// Source addresses allowed to call the Postmark endpoint, comma-separated IPs or CIDR
    /// ranges (the TCP peer address is checked). Empty: any address.
    #[arg(
        long,
        env = "MAILTRAIL_WEBHOOK_POSTMARK_ALLOWED_IPS",
        default_value = ""
    )]
    pub postmark_allowed_ips: String,

    /// Amazon SNS topics whose SES events are accepted, as `<tenant>=<topic ARN>,*=<ARN>`.
    /// Checked after the SNS signature.
    #[arg(long, env = "MAILTRAIL_WEBHOOK_SES_TOPICS", default_value = "")]
    pub ses_topics: String,

    /// Timestamp window of SNS messages, in seconds. SNS keeps the original timestamp on
    /// retries and an HTTP retry policy spans at most 3,600 s, so the default is 2 hours.
    #[arg(long, env = "MAILTRAIL_WEBHOOK_SES_WINDOW_SECS", default_value_t = 2 * 3600)]
    pub ses_window_secs: u64,

    /// Confirm SNS subscriptions of allowed topics by fetching their SubscribeURL (only an
    /// https URL on an `sns.<region>.amazonaws.com` host). Off: the URL is logged for an admin.
    #[arg(long, env = "MAILTRAIL_WEBHOOK_SES_AUTO_CONFIRM", default_value_t = true, action = clap::ArgAction::Set)]
    pub ses_auto_confirm: bool,
}

impl SinkConfig {
    /// The defaults (and any `MAILTRAIL_*` variables set).
    pub fn from_env() -> SinkConfig {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: SinkConfig,
        }
        <Wrapper as clap::Parser>::parse_from(["webhook-sink"]).config
    }
}

/// A credential's secret text and the tenant it speaks for (`*`: every tenant).
pub struct Credential {
    pub tenant: String,
    pub secret: String,
}

/// Parses `tenant=secret,*=secret` (a secret may itself hold `=`, never `,`). Errors name the
/// variable and the entry, never the secret.
pub fn parse_credentials(variable: &str, list: &str) -> anyhow::Result<Vec<Credential>> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(index, entry)| {
            let (tenant, secret) = entry.split_once('=').ok_or_else(|| {
                anyhow::anyhow!(
                    "{variable}: entry {} is not <tenant>=<secret> (use * for every tenant)",
                    index + 1
                )
            })?;
            let tenant = tenant.trim();
            let valid_tenant = tenant == ANY_TENANT
                || (!tenant.is_empty()
                    && tenant.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    }));
            anyhow::ensure!(
                valid_tenant,
                "{variable}: entry {} names no valid tenant",
                index + 1
            );
            anyhow::ensure!(
                !secret.trim().is_empty(),
                "{variable}: entry {} has an empty secret",
                index + 1
            );
            Ok(Credential {
                tenant: tenant.to_owned(),
                secret: secret.trim().to_owned(),
            })
        })
        .collect()
}

/// Parses each credential's secret with `parse`, keeping tenants beside keys.
pub fn parse_keys<K>(
    variable: &str,
    list: &str,
    parse: impl Fn(&str) -> Result<K, String>,
) -> anyhow::Result<Keyring<K>> {
    let mut keyring = Keyring {
        keys: Vec::new(),
        tenants: Vec::new(),
    };
    for (index, credential) in parse_credentials(variable, list)?.into_iter().enumerate() {
        let key = parse(&credential.secret)
            .map_err(|e| anyhow::anyhow!("{variable}: entry {}: {e}", index + 1))?;
        keyring.keys.push(key);
        keyring.tenants.push(credential.tenant);
    }
    Ok(keyring)
}

/// Keys of one provider and, at the same index, the tenant each speaks for.
pub struct Keyring<K> {
    pub keys: Vec<K>,
    pub tenants: Vec<String>,
}
