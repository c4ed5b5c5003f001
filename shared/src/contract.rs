//! Mailbox contract v1: the public API apps publish to (see `docs/mailbox-contract.md` and
//! `docs/mailbox-request.v1.schema.json`). (Helper-owned stub.)

use crate::address::Address;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const CONTRACT_VERSION: u32 = 1;

/// Configurable limits (documented defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted request body in bytes (default 10 MiB).
    pub max_request_bytes: usize,
    /// Most distinct recipients per request (default 50).
    pub max_recipients: usize,
    /// Largest body size × recipient count (default 25 MiB), so one request cannot flood the broker.
    pub max_fanout_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 10 * 1024 * 1024,
            max_recipients: 50,
            max_fanout_bytes: 25 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    #[default]
    Normal,
    High,
}

/// Where the request's idempotency key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The body's `id`.
    Body,
    /// The AMQP `message_id` property.
    MessageId,
    /// Neither was given: a UUIDv7 assigned by the operator (at-least-once only).
    Generated,
}

impl KeySource {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Body => "body",
            KeySource::MessageId => "message_id",
            KeySource::Generated => "generated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    /// Standard base64 (validated), as received.
    pub content: String,
    /// Decoded size in bytes.
    pub size: usize,
}

/// A validated, defaulted, canonicalised mailbox request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRequest {
    pub version: u32,
    pub key: String,
    pub key_source: KeySource,
    pub tenant: String,
    pub from: Address,
    /// Distinct by canonical address, first occurrence kept, order kept.
    pub to: Vec<Address>,
    pub reply_to: Option<Address>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// The effective priority: `High` if the body says so or it came through `mailbox.priority`.
    pub priority: Priority,
    pub attachments: Vec<Attachment>,
    /// SHA-256 of the canonical request (everything but the key and the queue it came through).
    pub content_hash: [u8; 32],
}

/// What the AMQP layer knows about a mailbox message.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub body: &'a [u8],
    pub message_id: Option<&'a str>,
    pub content_type: Option<&'a str>,
    /// True when it came through `mailbox.priority`.
    pub via_priority_queue: bool,
}

/// Why a request was set aside: a stable code for machines, a detail for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    NotJson,
    NotAnObject,
    UnsupportedVersion,
    UnknownField,
    MissingField,
    InvalidField,
    InvalidAddress,
    HeaderInjection,
    TooLarge,
    TooManyRecipients,
    FanoutTooLarge,
    SendAtUnsupported,
    /// Operator-level: the same key with different content.
    Conflict,
}

impl RejectReason {
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::NotJson => "not_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::UnknownField => "unknown_field",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::InvalidAddress => "invalid_address",
            RejectReason::HeaderInjection => "header_injection",
            RejectReason::TooLarge => "too_large",
            RejectReason::TooManyRecipients => "too_many_recipients",
            RejectReason::FanoutTooLarge => "fanout_too_large",
            RejectReason::SendAtUnsupported => "send_at_unsupported",
            RejectReason::Conflict => "conflict",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.code())]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
    /// The tenant and key, when they could be read, so the rejection can be recorded.
    pub tenant: Option<String>,
    pub key: Option<String>,
}

/// Decodes and validates a mailbox message.
pub fn decode(envelope: &Envelope<'_>, limits: &Limits) -> Result<MailboxRequest, Rejection> {
    let _ = (envelope, limits);
    Err(Rejection {
        reason: RejectReason::NotJson,
        detail: "not implemented".into(),
        tenant: None,
        key: None,
    })
}
