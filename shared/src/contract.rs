//! Mailbox contract v1: the public API apps publish to (see `docs/mailbox-contract.md` and
//! `docs/mailbox-request.v1.schema.json`).
//!
//! `decode` is the single gate every mailbox message passes: it checks size before parsing,
//! refuses anything it does not understand (unknown fields are typos, not extensions), and turns
//! the request into its canonical form, whose hash tells a redelivery from a conflicting reuse of
//! the same idempotency key.

use crate::address::{Address, parse_address};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

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
    /// When to send (`send_at`); `None` or a past time means now.
    pub send_at: Option<DateTime<Utc>>,
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
    /// Operator-level: the same key with different content.
    Conflict,
    /// Operator-level, with tenant binding on: the publishing broker user (AMQP `user_id`) is
    /// missing, unknown, or not bound to the request's tenant.
    TenantNotAllowed,
    /// Operator-level: `from` is outside the tenant's allowed domains.
    FromDomainNotAllowed,
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
            RejectReason::Conflict => "conflict",
            RejectReason::TenantNotAllowed => "tenant_not_allowed",
            RejectReason::FromDomainNotAllowed => "from_domain_not_allowed",
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

/// Longest idempotency key (`id` or AMQP `message_id`), in characters.
pub const MAX_KEY_CHARS: usize = 128;
/// Longest subject, in characters (RFC 5322's line limit).
pub const MAX_SUBJECT_CHARS: usize = 998;
/// Most custom headers per request.
pub const MAX_HEADERS: usize = 50;
/// Longest header name, in characters.
pub const MAX_HEADER_NAME_CHARS: usize = 76;
/// Longest header value, in characters.
pub const MAX_HEADER_VALUE_CHARS: usize = 998;
/// Most tags per request.
pub const MAX_TAGS: usize = 20;
/// Longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 128;
/// Most metadata entries per request.
pub const MAX_METADATA_ENTRIES: usize = 50;
/// Longest metadata key, in characters.
pub const MAX_METADATA_KEY_CHARS: usize = 128;
/// Longest metadata value, in characters.
pub const MAX_METADATA_VALUE_CHARS: usize = 1024;
/// Most attachments per request.
pub const MAX_ATTACHMENTS: usize = 50;
/// Longest attachment file name, in characters.
pub const MAX_FILENAME_CHARS: usize = 255;
/// The tenant used when a request names none.
pub const DEFAULT_TENANT: &str = "default";

/// Every top-level field contract v1 knows. Anything else is refused as `unknown_field`.
pub const FIELDS: &[&str] = &[
    "version",
    "id",
    "tenant",
    "from",
    "to",
    "reply_to",
    "subject",
    "text",
    "html",
    "headers",
    "tags",
    "metadata",
    "priority",
    "attachments",
    "send_at",
];

const ATTACHMENT_FIELDS: &[&str] = &["filename", "content_type", "content"];

/// Headers mailtrail sets itself; a request may not override them.
pub const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "reply-to",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "sender",
    "return-path",
];

/// Decodes and validates a mailbox message.
pub fn decode(envelope: &Envelope<'_>, limits: &Limits) -> Result<MailboxRequest, Rejection> {
    let reject = |reason, detail: String| Rejection {
        reason,
        detail,
        tenant: None,
        key: None,
    };
    if envelope.body.len() > limits.max_request_bytes {
        return Err(reject(
            RejectReason::TooLarge,
            format!(
                "the request is {} bytes; the limit is {} (MAILTRAIL_MAX_REQUEST_BYTES). \
                 Send large attachments as links",
                envelope.body.len(),
                limits.max_request_bytes
            ),
        ));
    }
    if let Some(content_type) = envelope.content_type {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.is_empty() && !essence.eq_ignore_ascii_case("application/json") {
            return Err(reject(
                RejectReason::NotJson,
                format!("the content type is {content_type:?}; publish with application/json"),
            ));
        }
    }
    // serde_json refuses nesting deeper than 128 levels, so hostile depth costs nothing.
    let value: Value = serde_json::from_slice(envelope.body).map_err(|e| {
        reject(
            RejectReason::NotJson,
            format!("the body is not valid UTF-8 JSON: {e}"),
        )
    })?;
    let Value::Object(object) = value else {
        return Err(reject(
            RejectReason::NotAnObject,
            format!(
                "the body is a JSON {}; a request is a JSON object",
                json_kind(&value)
            ),
        ));
    };
    let mut decoder = Decoder {
        object: &object,
        tenant: None,
        key: None,
    };
    // Best effort: name the tenant and key in any rejection so it can be recorded against them.
    decoder.tenant = match object.get("tenant") {
        None => Some(DEFAULT_TENANT.to_owned()),
        Some(Value::String(t)) if valid_tenant(t) => Some(t.clone()),
        Some(_) => None,
    };
    decoder.key = match object.get("id") {
        Some(Value::String(id)) if valid_key(id).is_ok() => Some(id.clone()),
        Some(_) => None,
        None => envelope
            .message_id
            .filter(|m| !m.is_empty() && valid_key(m).is_ok())
            .map(str::to_owned),
    };
    decoder.decode(envelope, limits)
}

struct Decoder<'a> {
    object: &'a Map<String, Value>,
    tenant: Option<String>,
    key: Option<String>,
}

impl Decoder<'_> {
    fn fail(&self, reason: RejectReason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
            tenant: self.tenant.clone(),
            key: self.key.clone(),
        }
    }

    fn invalid(&self, detail: impl Into<String>) -> Rejection {
        self.fail(RejectReason::InvalidField, detail)
    }

    fn decode(
        &self,
        envelope: &Envelope<'_>,
        limits: &Limits,
    ) -> Result<MailboxRequest, Rejection> {
        let object = self.object;
        match object.get("version") {
            None => {}
            Some(v) if v.as_u64() == Some(u64::from(CONTRACT_VERSION)) => {}
            Some(v) => {
                return Err(self.fail(
                    RejectReason::UnsupportedVersion,
                    format!(
                        "version {v} is not supported; this operator speaks version \
                         {CONTRACT_VERSION} (the number 1, or leave it out)"
                    ),
                ));
            }
        }
        if let Some(field) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(self.fail(
                RejectReason::UnknownField,
                format!(
                    "unknown field {field:?}; contract v1 knows {}",
                    FIELDS.join(", ")
                ),
            ));
        }
        if let Some(path) = find_nul(&Value::Object(object.clone()), "") {
            return Err(self.invalid(format!("{path} contains a NUL character")));
        }

        let (key, key_source) = self.key_of(envelope)?;
        let tenant = match object.get("tenant") {
            None => DEFAULT_TENANT.to_owned(),
            Some(Value::String(t)) if valid_tenant(t) => t.clone(),
            Some(other) => {
                return Err(self.invalid(format!(
                    "tenant {other} is not a tenant name: 1 to 63 of a-z, 0-9, '_' and '-', \
                     starting with a letter or digit"
                )));
            }
        };
        let from = self.address("from", self.required_str("from")?)?;
        let to = self.recipients(limits)?;
        let reply_to = match self.optional_str("reply_to")? {
            Some(s) => Some(self.address("reply_to", s)?),
            None => None,
        };
        let subject = self.subject()?;
        let text = self.optional_str("text")?.map(str::to_owned);
        let html = self.optional_str("html")?.map(str::to_owned);
        let has_body = |b: &Option<String>| b.as_deref().is_some_and(|s| !s.is_empty());
        if !has_body(&text) && !has_body(&html) {
            return Err(if text.is_none() && html.is_none() {
                self.fail(
                    RejectReason::MissingField,
                    "a request needs a body: give \"text\", \"html\" or both",
                )
            } else {
                self.invalid("\"text\" and \"html\" are both empty; give at least one a body")
            });
        }
        let headers = self.headers()?;
        let tags = self.tags()?;
        let metadata = self.metadata()?;
        let body_priority = match object.get("priority") {
            None => Priority::Normal,
            Some(Value::String(p)) if p == "normal" => Priority::Normal,
            Some(Value::String(p)) if p == "high" => Priority::High,
            Some(other) => {
                return Err(self.invalid(format!(
                    "priority {other} is not one of \"normal\" or \"high\""
                )));
            }
        };
        let attachments = self.attachments()?;
        let send_at = self.send_at()?;

        let fanout = envelope.body.len().saturating_mul(to.len());
        if fanout > limits.max_fanout_bytes {
            return Err(self.fail(
                RejectReason::FanoutTooLarge,
                format!(
                    "{} bytes to {} recipients is {fanout} bytes to send; the limit is {} \
                     (MAILTRAIL_MAX_FANOUT_BYTES). Split the request or shrink the attachments",
                    envelope.body.len(),
                    to.len(),
                    limits.max_fanout_bytes
                ),
            ));
        }

        let mut request = MailboxRequest {
            version: CONTRACT_VERSION,
            key,
            key_source,
            tenant,
            from,
            to,
            reply_to,
            subject,
            text,
            html,
            headers,
            tags,
            metadata,
            priority: if envelope.via_priority_queue {
                Priority::High
            } else {
                body_priority
            },
            attachments,
            send_at,
            content_hash: [0; 32],
        };
        request.content_hash = content_hash(&request, body_priority);
        Ok(request)
    }

    /// `send_at`: an RFC 3339 time with an explicit offset (a time without one is ambiguous, so
    /// it is refused rather than guessed).
    fn send_at(&self) -> Result<Option<DateTime<Utc>>, Rejection> {
        match self.object.get("send_at") {
            None => Ok(None),
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| {
                    self.invalid(format!(
                        "send_at {s:?} is not an RFC 3339 time with an offset ({e}); \
                         write it like \"2030-01-01T09:00:00Z\" or \"2030-01-01T10:00:00+01:00\""
                    ))
                }),
            Some(other) => Err(self.invalid(format!(
                "send_at must be an RFC 3339 string, not a JSON {}",
                json_kind(other)
            ))),
        }
    }

    /// The idempotency key: the body's `id`, else the AMQP `message_id`, else a fresh UUIDv7.
    fn key_of(&self, envelope: &Envelope<'_>) -> Result<(String, KeySource), Rejection> {
        match self.object.get("id") {
            Some(Value::String(id)) => {
                valid_key(id).map_err(|why| self.invalid(format!("id {why}")))?;
                Ok((id.clone(), KeySource::Body))
            }
            Some(other) => Err(self.invalid(format!("id must be a string, not {other}"))),
            None => match envelope.message_id.filter(|m| !m.is_empty()) {
                Some(message_id) => {
                    valid_key(message_id).map_err(|why| {
                        self.invalid(format!(
                            "the AMQP message_id {why}; give a shorter \"id\" in the body"
                        ))
                    })?;
                    Ok((message_id.to_owned(), KeySource::MessageId))
                }
                None => Ok((uuid::Uuid::now_v7().to_string(), KeySource::Generated)),
            },
        }
    }

    fn optional_str(&self, field: &str) -> Result<Option<&str>, Rejection> {
        match self.object.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.invalid(format!(
                "{field} must be a string, not a JSON {}",
                json_kind(other)
            ))),
        }
    }

    fn required_str(&self, field: &str) -> Result<&str, Rejection> {
        self.optional_str(field)?.ok_or_else(|| {
            self.fail(
                RejectReason::MissingField,
                format!("the required field \"{field}\" is missing"),
            )
        })
    }

    fn address(&self, field: &str, input: &str) -> Result<Address, Rejection> {
        parse_address(input).map_err(|e| {
            let reason = if e.is_header_injection() {
                RejectReason::HeaderInjection
            } else {
                RejectReason::InvalidAddress
            };
            self.fail(reason, format!("{field}: {e}"))
        })
    }

    fn recipients(&self, limits: &Limits) -> Result<Vec<Address>, Rejection> {
        let given: Vec<&str> = match self.object.get("to") {
            None => {
                return Err(self.fail(
                    RejectReason::MissingField,
                    "the required field \"to\" is missing",
                ));
            }
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(self.invalid("\"to\" is an empty list; name at least one recipient"));
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().ok_or_else(|| {
                        self.invalid(format!(
                            "every recipient in \"to\" must be a string, not a JSON {}",
                            json_kind(item)
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(self.invalid(format!(
                    "\"to\" must be a string or a list of strings, not a JSON {}",
                    json_kind(other)
                )));
            }
        };
        let mut seen = BTreeSet::new();
        let mut to = Vec::new();
        for input in given {
            let address = self.address("to", input)?;
            if seen.insert(address.canonical.clone()) {
                if seen.len() > limits.max_recipients {
                    return Err(self.fail(
                        RejectReason::TooManyRecipients,
                        format!(
                            "more than {} distinct recipients (MAILTRAIL_MAX_RECIPIENTS); \
                             split the request",
                            limits.max_recipients
                        ),
                    ));
                }
                to.push(address);
            }
        }
        Ok(to)
    }

    fn subject(&self) -> Result<String, Rejection> {
        let subject = self.required_str("subject")?;
        if subject.contains(['\r', '\n']) {
            return Err(self.fail(
                RejectReason::HeaderInjection,
                "the subject contains CR or LF, which could inject mail headers",
            ));
        }
        check_line("subject", subject, MAX_SUBJECT_CHARS).map_err(|e| self.invalid(e))?;
        if subject.trim().is_empty() {
            return Err(self.invalid("the subject is empty"));
        }
        Ok(subject.to_owned())
    }

    fn headers(&self) -> Result<BTreeMap<String, String>, Rejection> {
        let Some(value) = self.object.get("headers") else {
            return Ok(BTreeMap::new());
        };
        let Value::Object(map) = value else {
            return Err(self.invalid(format!(
                "headers must be an object of name to value, not a JSON {}",
                json_kind(value)
            )));
        };
        if map.len() > MAX_HEADERS {
            return Err(self.invalid(format!("more than {MAX_HEADERS} headers")));
        }
        let mut names = BTreeSet::new();
        let mut headers = BTreeMap::new();
        for (name, value) in map {
            if name.contains(['\r', '\n']) {
                return Err(self.fail(
                    RejectReason::HeaderInjection,
                    format!("the header name {name:?} contains CR or LF"),
                ));
            }
            let valid_name = !name.is_empty()
                && name.chars().count() <= MAX_HEADER_NAME_CHARS
                && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
            if !valid_name {
                return Err(self.invalid(format!(
                    "{name:?} is not a header name: 1 to {MAX_HEADER_NAME_CHARS} printable \
                     ASCII characters without spaces or ':'"
                )));
            }
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-mailtrail-") {
                return Err(self.invalid(format!(
                    "the header {name:?} is set by mailtrail; use the request's own fields \
                     (from, to, reply_to, subject) instead"
                )));
            }
            if !names.insert(lower) {
                return Err(self.invalid(format!(
                    "the header {name:?} is given twice (header names ignore case)"
                )));
            }
            let Value::String(value) = value else {
                return Err(self.invalid(format!("the value of header {name:?} must be a string")));
            };
            if value.contains(['\r', '\n']) {
                return Err(self.fail(
                    RejectReason::HeaderInjection,
                    format!("the value of header {name:?} contains CR or LF"),
                ));
            }
            check_line(&format!("header {name:?}"), value, MAX_HEADER_VALUE_CHARS)
                .map_err(|e| self.invalid(e))?;
            headers.insert(name.clone(), value.clone());
        }
        Ok(headers)
    }

    fn tags(&self) -> Result<Vec<String>, Rejection> {
        let Some(value) = self.object.get("tags") else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(self.invalid("tags must be a list of strings"));
        };
        let mut tags: Vec<String> = Vec::new();
        for item in items {
            let Value::String(tag) = item else {
                return Err(self.invalid("tags must be a list of strings"));
            };
            let chars = tag.chars().count();
            if chars == 0 || chars > MAX_TAG_CHARS || tag.chars().any(char::is_control) {
                return Err(self.invalid(format!(
                    "the tag {tag:?} must be 1 to {MAX_TAG_CHARS} characters without control \
                     characters"
                )));
            }
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
        if tags.len() > MAX_TAGS {
            return Err(self.invalid(format!("more than {MAX_TAGS} tags")));
        }
        Ok(tags)
    }

    fn metadata(&self) -> Result<BTreeMap<String, String>, Rejection> {
        let Some(value) = self.object.get("metadata") else {
            return Ok(BTreeMap::new());
        };
        let Value::Object(map) = value else {
            return Err(self.invalid("metadata must be an object of string keys to string values"));
        };
        if map.len() > MAX_METADATA_ENTRIES {
            return Err(self.invalid(format!("more than {MAX_METADATA_ENTRIES} metadata entries")));
        }
        let mut metadata = BTreeMap::new();
        for (key, value) in map {
            let chars = key.chars().count();
            if chars == 0 || chars > MAX_METADATA_KEY_CHARS {
                return Err(self.invalid(format!(
                    "the metadata key {key:?} must be 1 to {MAX_METADATA_KEY_CHARS} characters"
                )));
            }
            let Value::String(value) = value else {
                return Err(self.invalid(format!(
                    "the metadata value of {key:?} must be a string (encode numbers and objects \
                     as text)"
                )));
            };
            if value.chars().count() > MAX_METADATA_VALUE_CHARS {
                return Err(self.invalid(format!(
                    "the metadata value of {key:?} is longer than {MAX_METADATA_VALUE_CHARS} \
                     characters"
                )));
            }
            metadata.insert(key.clone(), value.clone());
        }
        Ok(metadata)
    }

    fn attachments(&self) -> Result<Vec<Attachment>, Rejection> {
        let Some(value) = self.object.get("attachments") else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(self.invalid("attachments must be a list of objects"));
        };
        if items.len() > MAX_ATTACHMENTS {
            return Err(self.invalid(format!("more than {MAX_ATTACHMENTS} attachments")));
        }
        let mut attachments = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let Value::Object(fields) = item else {
                return Err(self.invalid(format!("attachments[{index}] must be an object")));
            };
            if let Some(field) = fields
                .keys()
                .find(|k| !ATTACHMENT_FIELDS.contains(&k.as_str()))
            {
                return Err(self.fail(
                    RejectReason::UnknownField,
                    format!(
                        "unknown field {field:?} in attachments[{index}]; an attachment has {}",
                        ATTACHMENT_FIELDS.join(", ")
                    ),
                ));
            }
            let string = |name: &str| -> Result<Option<&String>, Rejection> {
                match fields.get(name) {
                    None => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s)),
                    Some(_) => {
                        Err(self.invalid(format!("attachments[{index}].{name} must be a string")))
                    }
                }
            };
            let missing = |name: &str| {
                self.fail(
                    RejectReason::MissingField,
                    format!("attachments[{index}].{name} is missing"),
                )
            };
            let filename = string("filename")?.ok_or_else(|| missing("filename"))?;
            if filename.contains(['\r', '\n']) {
                return Err(self.fail(
                    RejectReason::HeaderInjection,
                    format!("attachments[{index}].filename contains CR or LF"),
                ));
            }
            let chars = filename.chars().count();
            if filename.trim().is_empty()
                || chars > MAX_FILENAME_CHARS
                || filename.chars().any(char::is_control)
                || filename.contains(['/', '\\'])
            {
                return Err(self.invalid(format!(
                    "attachments[{index}].filename {filename:?} must be 1 to \
                     {MAX_FILENAME_CHARS} characters, without control characters or path \
                     separators"
                )));
            }
            let content_type = match string("content_type")? {
                None => "application/octet-stream".to_owned(),
                Some(ct) if valid_media_type(ct) => ct.to_ascii_lowercase(),
                Some(ct) => {
                    return Err(self.invalid(format!(
                        "attachments[{index}].content_type {ct:?} is not a media type such as \
                         application/pdf"
                    )));
                }
            };
            let content = string("content")?.ok_or_else(|| missing("content"))?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(content)
                .map_err(|e| {
                    self.invalid(format!(
                        "attachments[{index}].content is not standard (padded) base64: {e}"
                    ))
                })?;
            attachments.push(Attachment {
                filename: filename.clone(),
                content_type,
                content: content.clone(),
                size: decoded.len(),
            });
        }
        Ok(attachments)
    }
}

fn valid_tenant(tenant: &str) -> bool {
    let bytes = tenant.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// `Err(why)` when a string cannot be an idempotency key.
fn valid_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("is empty".into());
    }
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(format!("is longer than {MAX_KEY_CHARS} characters"));
    }
    if key.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(())
}

/// A single-line text field: bounded length, no control characters but tab.
fn check_line(what: &str, value: &str, max_chars: usize) -> Result<(), String> {
    if value.chars().count() > max_chars {
        return Err(format!("{what} is longer than {max_chars} characters"));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(format!("{what} contains the control character {c:?}"));
    }
    Ok(())
}

/// `type/subtype`, optionally with parameters, in RFC 2045 token characters.
fn valid_media_type(value: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let essence = value.split(';').next().unwrap_or("");
    let params_ok = !value.contains(['\r', '\n']) && !value.chars().any(char::is_control);
    match essence.trim().split_once('/') {
        Some((kind, subtype)) => token(kind) && token(subtype) && params_ok,
        None => false,
    }
}

/// The JSON path of the first string (value or key) holding a NUL, if any.
fn find_nul(value: &Value, path: &str) -> Option<String> {
    let here = || {
        if path.is_empty() {
            "the request".to_owned()
        } else {
            path.to_owned()
        }
    };
    match value {
        Value::String(s) => s.contains('\0').then(here),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_nul(item, &format!("{}[{i}]", here()))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(format!("the key of {}", here()))
            } else {
                find_nul(v, &child)
            }
        }),
        _ => None,
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// What the content hash covers: the request as it will be sent, with every default applied and
/// every set-like field in a fixed order. Not the key, nor the queue it came through: a retry that
/// uses the other queue is the same request.
#[derive(Serialize)]
struct CanonicalRequest<'a> {
    version: u32,
    tenant: &'a str,
    from: &'a Address,
    to: Vec<&'a Address>,
    reply_to: Option<&'a Address>,
    subject: &'a str,
    text: Option<&'a str>,
    html: Option<&'a str>,
    headers: &'a BTreeMap<String, String>,
    tags: BTreeSet<&'a str>,
    metadata: &'a BTreeMap<String, String>,
    priority: Priority,
    attachments: &'a [Attachment],
    #[serde(skip_serializing_if = "Option::is_none")]
    send_at: Option<DateTime<Utc>>,
}

fn content_hash(request: &MailboxRequest, body_priority: Priority) -> [u8; 32] {
    let mut to: Vec<&Address> = request.to.iter().collect();
    to.sort_by(|a, b| a.canonical.cmp(&b.canonical));
    let canonical = CanonicalRequest {
        version: request.version,
        tenant: &request.tenant,
        from: &request.from,
        to,
        reply_to: request.reply_to.as_ref(),
        subject: &request.subject,
        text: request.text.as_deref(),
        html: request.html.as_deref(),
        headers: &request.headers,
        tags: request.tags.iter().map(String::as_str).collect(),
        metadata: &request.metadata,
        priority: body_priority,
        attachments: &request.attachments,
        send_at: request.send_at,
    };
    let bytes = serde_json::to_vec(&canonical).expect("a canonical request always serialises");
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: &str) -> Envelope<'_> {
        Envelope {
            body: body.as_bytes(),
            message_id: None,
            content_type: Some("application/json"),
            via_priority_queue: false,
        }
    }

    fn decode_str(body: &str) -> Result<MailboxRequest, Rejection> {
        decode(&envelope(body), &Limits::default())
    }

    fn reason(body: &str) -> &'static str {
        decode_str(body)
            .expect_err("should be refused")
            .reason
            .code()
    }

    fn with(extra: &str) -> String {
        format!(
            r#"{{"from": "shop@acme.test", "to": "bob@example.com", "subject": "Hi", "text": "Hello"{extra}}}"#
        )
    }

    #[test]
    fn a_full_request_is_decoded_defaulted_and_deduplicated() {
        let request = decode_str(
            r#"{"version": 1, "id": "order-1", "tenant": "acme",
                "from": "Acme <shop@acme.test>",
                "to": ["Ann@Example.com", "ann@example.COM", "bob@example.com"],
                "reply_to": "help@acme.test", "subject": "Your order", "html": "<p>Hi</p>",
                "headers": {"X-Campaign": "spring"}, "tags": ["order", "order", "eu"],
                "metadata": {"order": "1"}, "priority": "high",
                "attachments": [{"filename": "a.txt", "content": "aGVsbG8="}]}"#,
        )
        .expect("valid");
        assert_eq!(request.key, "order-1");
        assert_eq!(request.key_source, KeySource::Body);
        assert_eq!(request.tenant, "acme");
        assert_eq!(request.from.display_name.as_deref(), Some("Acme"));
        let to: Vec<&str> = request.to.iter().map(|a| a.address.as_str()).collect();
        assert_eq!(to, ["Ann@Example.com", "bob@example.com"]);
        assert_eq!(request.tags, ["order", "eu"]);
        assert_eq!(request.priority, Priority::High);
        assert_eq!(request.text, None);
        assert_eq!(request.attachments[0].size, 5);
        assert_eq!(
            request.attachments[0].content_type,
            "application/octet-stream"
        );
    }

    #[test]
    fn the_key_comes_from_the_body_then_the_message_id_then_a_fresh_uuid() {
        let body = with("");
        let mut env = envelope(&body);
        let generated = decode(&env, &Limits::default()).expect("accepted");
        assert_eq!(generated.key_source, KeySource::Generated);
        assert_eq!(generated.tenant, DEFAULT_TENANT);
        assert!(uuid::Uuid::parse_str(&generated.key).is_ok());
        env.message_id = Some("amqp-7");
        let from_property = decode(&env, &Limits::default()).expect("accepted");
        assert_eq!(
            (from_property.key.as_str(), from_property.key_source),
            ("amqp-7", KeySource::MessageId)
        );
        let body = with(r#", "id": "body-7""#);
        let env = Envelope {
            message_id: Some("amqp-7"),
            ..envelope(&body)
        };
        assert_eq!(
            decode(&env, &Limits::default()).expect("accepted").key,
            "body-7"
        );
    }

    #[test]
    fn the_content_hash_ignores_form_but_not_content() {
        let a = decode_str(
            r#"{"id":"k","from":"s@a.test","to":["x@b.test","y@b.test"],"subject":"S","text":"T","tags":["p","q"]}"#,
        )
        .expect("accepted");
        let b = decode_str(
            r#"{ "text": "T", "subject": "S", "to": ["Y@B.test", "x@b.test"], "tags": ["q","p"],
                 "from": "s@a.test", "id": "other", "version": 1, "tenant": "default",
                 "priority": "normal" }"#,
        )
        .expect("accepted");
        // Y@B.test keeps its spelling, which is content (it is what the recipient sees).
        assert_ne!(a.content_hash, b.content_hash);
        let c = decode_str(
            r#"{ "text": "T", "subject": "S", "to": ["y@b.test", "x@b.test"], "tags": ["q","p"],
                 "from": "s@a.test", "id": "other", "version": 1, "tenant": "default",
                 "priority": "normal" }"#,
        )
        .expect("accepted");
        assert_eq!(a.content_hash, c.content_hash);
        let d = decode_str(
            r#"{"id":"k","from":"s@a.test","to":["x@b.test","y@b.test"],"subject":"S!","text":"T","tags":["p","q"]}"#,
        )
        .expect("accepted");
        assert_ne!(a.content_hash, d.content_hash);
        // The priority queue raises the priority but is not content.
        let body = with(r#", "id": "q""#);
        let normal = decode(&envelope(&body), &Limits::default()).expect("accepted");
        let urgent = decode(
            &Envelope {
                via_priority_queue: true,
                ..envelope(&body)
            },
            &Limits::default(),
        )
        .expect("accepted");
        assert_eq!(urgent.priority, Priority::High);
        assert_eq!(normal.content_hash, urgent.content_hash);
    }

    #[test]
    fn each_kind_of_bad_input_gets_its_own_reason() {
        assert_eq!(reason("nope"), "not_json");
        assert_eq!(reason(&"[".repeat(5000)), "not_json");
        assert_eq!(reason("[1]"), "not_an_object");
        assert_eq!(reason(&with(r#", "version": 2"#)), "unsupported_version");
        assert_eq!(reason(&with(r#", "version": "1""#)), "unsupported_version");
        assert_eq!(reason(&with(r#", "htlm": "x""#)), "unknown_field");
        assert_eq!(
            reason(&with(
                r#", "attachments": [{"filename": "a", "content": "", "size": 1}]"#
            )),
            "unknown_field"
        );
        assert_eq!(
            reason(r#"{"from": "a@b.test", "subject": "S", "text": "T"}"#),
            "missing_field"
        );
        assert_eq!(
            reason(r#"{"from": "a@b.test", "to": "c@d.test", "subject": "S"}"#),
            "missing_field"
        );
        assert_eq!(
            reason(&with("").replace(r#""bob@example.com""#, "[]")),
            "invalid_field"
        );
        assert_eq!(reason(&with("").replace("bob@", "bob")), "invalid_address");
        assert_eq!(
            reason(&with("").replace("bob@example.com", r"bob@example.com\r\nBcc: x@y.z")),
            "header_injection"
        );
        assert_eq!(
            reason(&with(r#", "headers": {"X-A": "1\nBcc: x@y.z"}"#)),
            "header_injection"
        );
        assert_eq!(
            reason(&with(r#", "headers": {"Bcc": "x@y.z"}"#)),
            "invalid_field"
        );
        assert_eq!(
            reason(&with(r#", "headers": {"X-Mailtrail-Id": "1"}"#)),
            "invalid_field"
        );
        assert_eq!(reason(&with(r#", "tenant": "Acme!""#)), "invalid_field");
        assert_eq!(reason(&with(r#", "priority": "urgent""#)), "invalid_field");
        assert_eq!(reason(&with(r#", "metadata": {"n": 1}"#)), "invalid_field");
        assert_eq!(reason(&with(r#", "id": """#)), "invalid_field");
        assert_eq!(
            reason(&with(&format!(r#", "id": "{}""#, "k".repeat(129)))),
            "invalid_field"
        );
        assert_eq!(
            reason(&with("").replace("Hello", r"He\u0000llo")),
            "invalid_field"
        );
        assert_eq!(
            reason(&with(
                r#", "attachments": [{"filename": "a", "content": "!!"}]"#
            )),
            "invalid_field"
        );
        assert_eq!(
            reason(&with(r#", "send_at": "2030-01-01 09:00""#)),
            "invalid_field"
        );
        assert_eq!(
            reason(&with(r#", "send_at": "2030-01-01T09:00:00""#)),
            "invalid_field"
        );
        assert_eq!(reason(&with(r#", "send_at": 1893488400"#)), "invalid_field");
    }

    #[test]
    fn send_at_is_read_with_its_offset_and_changes_the_content() {
        let at = decode_str(&with(r#", "send_at": "2030-01-01T10:00:00+01:00""#)).expect("ok");
        assert_eq!(
            at.send_at,
            Some(
                "2030-01-01T09:00:00Z"
                    .parse::<DateTime<Utc>>()
                    .expect("a time")
            )
        );
        let same_instant = decode_str(&with(r#", "send_at": "2030-01-01T09:00:00Z""#)).expect("ok");
        assert_eq!(at.content_hash, same_instant.content_hash);
        let later = decode_str(&with(r#", "send_at": "2030-01-01T09:00:01Z""#)).expect("ok");
        assert_ne!(at.content_hash, later.content_hash);
        let now = decode_str(&with("")).expect("ok");
        assert_eq!(now.send_at, None);
        assert_ne!(now.content_hash, at.content_hash);
        assert_eq!(reason(&with(r#", "send_at": null"#)), "invalid_field");
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_request_bytes: 400,
            max_recipients: 2,
            max_fanout_bytes: 150,
        };
        let big = with(&format!(r#", "html": "{}""#, "x".repeat(500)));
        let refused = decode(&envelope(&big), &limits).expect_err("refused");
        assert_eq!(refused.reason, RejectReason::TooLarge);
        let three = with("").replace(
            r#""bob@example.com""#,
            r#"["a@x.test", "b@x.test", "A@x.test", "c@x.test"]"#,
        );
        assert_eq!(
            decode(&envelope(&three), &limits)
                .expect_err("refused")
                .reason,
            RejectReason::TooManyRecipients
        );
        let two = with("").replace(r#""bob@example.com""#, r#"["a@x.test", "b@x.test"]"#);
        let refused = decode(&envelope(&two), &limits).expect_err("refused");
        assert_eq!(refused.reason, RejectReason::FanoutTooLarge);
        assert_eq!(refused.tenant.as_deref(), Some(DEFAULT_TENANT));
        let other_type = Envelope {
            content_type: Some("text/plain"),
            ..envelope(&two)
        };
        assert_eq!(
            decode(&other_type, &Limits::default())
                .expect_err("refused")
                .reason,
            RejectReason::NotJson
        );
    }

    #[test]
    fn a_rejection_names_the_tenant_and_key_when_it_can() {
        let refused = decode_str(&with(r#", "tenant": "acme", "id": "k1", "priority": 3"#))
            .expect_err("refused");
        assert_eq!(refused.tenant.as_deref(), Some("acme"));
        assert_eq!(refused.key.as_deref(), Some("k1"));
        assert!(refused.detail.contains("priority"), "{}", refused.detail);
    }
}
