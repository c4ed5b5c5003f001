//! The webhook sink's settings: every one a documented `MAILTRAIL_*` variable (or flag).

use crate::verify::standard::SigningKey;
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

/// A signing key and the tenant it speaks for (`*`: every tenant).
pub struct Credential {
    pub tenant: String,
    pub key: SigningKey,
}

/// Parses `tenant=whsec_…,*=whsec_…`. The error names the entry, never the secret.
pub fn parse_credentials(list: &str) -> anyhow::Result<Vec<Credential>> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(index, entry)| {
            let (tenant, secret) = entry.split_once('=').ok_or_else(|| {
                anyhow::anyhow!(
                    "webhook secret entry {} is not <tenant>=<secret> (use * for every tenant)",
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
                "webhook secret entry {} names no valid tenant",
                index + 1
            );
            let key = SigningKey::parse(secret)
                .map_err(|e| anyhow::anyhow!("webhook secret entry {}: {e}", index + 1))?;
            Ok(Credential {
                tenant: tenant.to_owned(),
                key,
            })
        })
        .collect()
}
