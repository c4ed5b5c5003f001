//! What each API module provides (the [`Spec`] trait) and the types they share: the request as
//! the modules see it, the answer they give, and the message they understood.

use hyper::{HeaderMap, Method};
use serde_json::Value;

use crate::{Api, Credentials, wire};

/// One request, body read in full.
pub(crate) struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl Request<'_> {
    /// A header's value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The media type (`application/json`), lowercased, without parameters.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type").map(wire::media_type)
    }

    pub fn is_json(&self) -> bool {
        self.media_type().as_deref() == Some("application/json")
    }
}

/// What the sim answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            content_type: Some("application/json"),
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: Some("text/plain; charset=utf-8"),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn empty(status: u16) -> Answer {
        Answer {
            status,
            content_type: None,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// [`crate::Behaviour::Custom`]: JSON when the body is JSON, else text.
    pub fn custom(status: u16, body: &str) -> Answer {
        if serde_json::from_str::<Value>(body).is_ok() {
            Answer {
                status,
                content_type: Some("application/json"),
                headers: Vec::new(),
                body: body.to_owned(),
            }
        } else {
            Answer::text(status, body)
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

/// A request the sim does not take: the answer, and — when the request was built wrong rather
/// than merely carrying a wrong key — what was wrong with it.
pub(crate) struct Rejection {
    pub answer: Answer,
    pub problems: Vec<String>,
}

impl Rejection {
    /// Built wrong: listed in `malformed()`.
    pub fn malformed(answer: Answer, problem: impl Into<String>) -> Rejection {
        Rejection {
            answer,
            problems: vec![problem.into()],
        }
    }

    /// Well-formed but refused (a wrong key): not listed.
    pub fn refused(answer: Answer) -> Rejection {
        Rejection {
            answer,
            problems: Vec::new(),
        }
    }
}

/// A message as a module understood it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Message {
    pub to: Vec<String>,
    pub from: String,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub headers: Vec<(String, String)>,
    pub mailtrail_id: Option<String>,
    pub header_mailtrail_id: Option<String>,
    pub raw: Value,
}

/// The answers a [`crate::Behaviour`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    RejectMessage,
    BadKey,
    RateLimited,
    ServerError,
}

/// One provider's send API.
pub(crate) trait Spec: Sync {
    /// Checks method and path.
    fn route(&self, request: &Request<'_>, credentials: &Credentials) -> Result<(), Rejection>;

    /// Checks the auth header's form and key.
    fn auth(&self, request: &Request<'_>, credentials: &Credentials) -> Result<(), Rejection>;

    /// Checks the content type and the required fields and reads the message. Problems the
    /// modules share (addresses, mailtrail id) are checked afterwards by [`common_problems`].
    fn parse(&self, request: &Request<'_>) -> Result<Message, Rejection>;

    /// The answer to a message-fault problem (a missing field, …).
    fn invalid(&self, problem: &str) -> Answer;

    /// Where the API carries the `mailtrail_id` metadata, for problem texts.
    fn metadata_field(&self) -> &'static str;

    /// Where the API carries the `X-Mailtrail-Id` header, for problem texts.
    fn header_field(&self) -> &'static str;

    /// The answer a behaviour asks for.
    fn fault(&self, fault: Fault, message: &Message, credentials: &Credentials) -> Answer;

    /// A fresh provider message id.
    fn new_id(&self, credentials: &Credentials, sequence: u64) -> String;

    /// The success answer for `message`, accepted under `id`.
    fn accepted(&self, message: &Message, id: &str) -> Answer;
}

pub(crate) fn spec(api: Api) -> &'static dyn Spec {
    match api {
        Api::Mailgun => &crate::mailgun::Mailgun,
        Api::SendGrid => &crate::sendgrid::SendGrid,
        Api::Postmark => &crate::postmark::Postmark,
        Api::Resend => &crate::resend::Resend,
        Api::Ses => &crate::ses::Ses,
    }
}

/// The checks every API shares: the addresses look like addresses, and our id is there twice
/// (metadata and header), the same, and a UUID.
pub(crate) fn common_problems(spec: &dyn Spec, message: &Message) -> Vec<String> {
    let mut problems = Vec::new();
    if !wire::is_address(&message.from) {
        problems.push(format!("invalid sender address {:?}", message.from));
    }
    for to in &message.to {
        if !wire::is_address(to) {
            problems.push(format!("invalid recipient address {to:?}"));
        }
    }
    match &message.mailtrail_id {
        None => problems.push(format!(
            "missing the mailtrail_id metadata ({})",
            spec.metadata_field()
        )),
        Some(id) if uuid::Uuid::parse_str(id).is_err() => problems.push(format!(
            "mailtrail_id metadata {id:?} is not a UUID ({})",
            spec.metadata_field()
        )),
        Some(_) => {}
    }
    match (&message.mailtrail_id, &message.header_mailtrail_id) {
        (_, None) => problems.push(format!(
            "missing the X-Mailtrail-Id header ({})",
            spec.header_field()
        )),
        (Some(metadata), Some(header)) if metadata != header => problems.push(format!(
            "mailtrail_id metadata {metadata:?} differs from the X-Mailtrail-Id header {header:?}"
        )),
        _ => {}
    }
    problems
}

/// A non-empty string field of a JSON object.
pub(crate) fn string<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|text| !text.trim().is_empty())
}

/// The value of the first `{Name, Value}` (or `{name, value}`) pair whose name is `name`
/// (case-insensitive), in a JSON array of such pairs.
pub(crate) fn pair_value<'a>(
    pairs: Option<&'a Value>,
    key: &str,
    value: &str,
    name: &str,
) -> Option<&'a str> {
    pairs?.as_array()?.iter().find_map(|pair| {
        let pair_name = pair.get(key)?.as_str()?;
        if pair_name.eq_ignore_ascii_case(name) {
            pair.get(value)?.as_str()
        } else {
            None
        }
    })
}

/// The value of a header, looked up case-insensitively in a JSON object `{name: value}`.
pub(crate) fn object_value<'a>(object: Option<&'a Value>, name: &str) -> Option<&'a str> {
    object?
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| value.as_str())
}

/// The pairs of a JSON array of `{Name, Value}` objects (other shapes skipped).
pub(crate) fn pairs(pairs: Option<&Value>, key: &str, value: &str) -> Vec<(String, String)> {
    pairs
        .and_then(Value::as_array)
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|pair| {
                    Some((
                        pair.get(key)?.as_str()?.to_owned(),
                        pair.get(value)?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The string pairs of a JSON object (non-string values skipped).
pub(crate) fn object_pairs(object: Option<&Value>) -> Vec<(String, String)> {
    object
        .and_then(Value::as_object)
        .map(|object| {
            object
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}
