//! Webhook signature verification over the raw body bytes, in constant time, before parsing.
//!
//! Every scheme takes a list of keys (several may be active at once, so a key can be rotated
//! without refusing a single legitimate request) and a timestamp window chosen per provider
//! against that provider's retry span (a legitimate retry after our own outage must not be
//! refused).

pub mod mailgun;
pub mod postmark;
pub mod sendgrid;
pub mod sns;
pub mod standard;

use std::time::Duration;

/// Why a webhook was refused. The sink answers 401 to all but `Unavailable` (our trouble: 503,
/// so the provider retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("the signature header is malformed: {0}")]
    Malformed(String),
    #[error("no signature matches any configured key")]
    NoMatch,
    #[error("the timestamp is {0:?} away from now, outside the window")]
    OutsideWindow(Duration),
    #[error("no key is configured for this provider")]
    NoKeys,
    /// The key could not be had (e.g. fetching the SNS certificate failed): not a refusal, the
    /// sink answers 503 so that the provider retries.
    #[error("the verification key is unavailable: {0}")]
    Unavailable(String),
}

/// `|now - timestamp|`, or an error when it is larger than `window`.
pub fn check_window(timestamp: i64, now: i64, window: Duration) -> Result<(), VerifyError> {
    let skew = Duration::from_secs(now.abs_diff(timestamp));
    if skew > window {
        return Err(VerifyError::OutsideWindow(skew));
    }
    Ok(())
}
