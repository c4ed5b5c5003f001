//! Email providers behind one trait: SMTP and the HTTP send APIs. Each attaches our email id
//! (`mailtrail_id` in the provider's metadata, and the `X-Mailtrail-Id` header), returns the
//! provider's message id for the `dispatched` event, and classifies every failure into one of
//! three kinds that decide what happens to the job (README, "Failure table").

pub mod http;
pub mod mailgun;
pub mod postmark;
pub mod resend;
pub mod sendgrid;
pub mod ses;
pub mod smtp;

use mailtrail_shared::dispatch::DispatchJob;
use std::future::Future;
use std::pin::Pin;

/// The metadata key under which every provider stores our email id; the webhook sink reads it.
pub const MAILTRAIL_ID: &str = "mailtrail_id";
/// The header every email carries with our email id.
pub use crate::message::MAILTRAIL_ID_HEADER;

/// What the provider said when it took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The provider's id of the message (SMTP: the queue id in the reply, where given), as the
    /// provider's webhooks will name it.
    pub provider_message_id: Option<String>,
    /// The provider's answer, for the history (`250 2.0.0 Ok: queued as …`, `202 Accepted`).
    pub reply: String,
}

/// Why a send did not succeed — whose fault it is decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The recipient or the message is at fault (SMTP 5xx at RCPT/DATA, an API error naming the
    /// message or recipient): `failed` — or `bounced` (hard) when `mailbox_unknown` — and no
    /// retry.
    Rejected {
        reason: String,
        /// The reply says the mailbox does not exist (5.1.1, "inactive recipient", …).
        mailbox_unknown: bool,
    },
    /// Transient (SMTP 4xx, 429, API 5xx, timeouts, connection and TLS errors): `deferred`,
    /// then retried.
    Transient(String),
    /// The provider or our account is at fault (bad or revoked key, suspended account, SMTP
    /// 535): the provider is treated as down and the job waits; a rotated key must never fail
    /// a day's mail.
    ProviderDown(String),
    /// The provider answered and defers this one message (an SMTP 4xx to MAIL, RCPT or DATA:
    /// a full mailbox, greylisting): retried like `Transient`, but the provider is working, so
    /// its circuit breaker counts it as an answer, not a failure — a run of greylisted
    /// recipients must not mark a healthy server down.
    Deferred(String),
}

impl SendError {
    /// The error's class, as metrics label it: `rejected`, `transient`, `deferred` or
    /// `provider_down`.
    pub fn class(&self) -> &'static str {
        match self {
            SendError::Rejected { .. } => "rejected",
            SendError::Transient(_) => "transient",
            SendError::Deferred(_) => "deferred",
            SendError::ProviderDown(_) => "provider_down",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            SendError::Rejected { reason, .. } => reason,
            SendError::Transient(reason)
            | SendError::ProviderDown(reason)
            | SendError::Deferred(reason) => reason,
        }
    }
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Sent, SendError>> + Send + 'a>>;

/// One way to send email.
pub trait Provider: Send + Sync {
    /// `smtp`, `mailgun`, `sendgrid`, `postmark`, `resend` or `ses`: the name events carry and
    /// webhooks are matched under.
    fn name(&self) -> &'static str;

    /// Sends one job's email (one recipient).
    fn send<'a>(&'a self, job: &'a DispatchJob) -> SendFuture<'a>;
}
