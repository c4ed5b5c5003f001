//! Mailgun: `POST /v3/<domain>/messages`, HTTP Basic `api:<key>`, `multipart/form-data` or
//! `application/x-www-form-urlencoded` with `from`, `to` (repeatable, comma lists), `subject`,
//! `text`/`html`, `v:mailtrail_id` and `h:X-Mailtrail-Id`; answers
//! `200 {"id": "<…@domain>", "message": "Queued. Thank you."}`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hyper::Method;
use serde_json::{Map, Value, json};

use crate::Credentials;
use crate::spec::{Answer, Fault, Message, Rejection, Request, Spec};
use crate::wire::{self, Field};

pub(crate) struct Mailgun;

fn message(status: u16, text: &str) -> Answer {
    Answer::json(status, json!({ "message": text }))
}

fn forbidden() -> Answer {
    Answer::text(401, "Forbidden")
}

impl Spec for Mailgun {
    fn route(&self, request: &Request<'_>, credentials: &Credentials) -> Result<(), Rejection> {
        let domain = request
            .path
            .strip_prefix("/v3/")
            .and_then(|rest| rest.strip_suffix("/messages"))
            .filter(|domain| !domain.is_empty() && !domain.contains('/'));
        let Some(domain) = domain else {
            return Err(Rejection::malformed(
                message(404, "Not Found"),
                format!("no Mailgun endpoint at {}", request.path),
            ));
        };
        if request.method != Method::POST {
            return Err(Rejection::malformed(
                message(405, "Method Not Allowed"),
                format!("{} instead of POST", request.method),
            ));
        }
        match credentials {
            Credentials::Mailgun { domain: ours, .. } if !domain.eq_ignore_ascii_case(ours) => {
                Err(Rejection::malformed(
                    message(404, &format!("Domain not found: {domain}")),
                    format!("domain {domain:?} in the path, the sim's is {ours:?}"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn auth(&self, request: &Request<'_>, credentials: &Credentials) -> Result<(), Rejection> {
        let refuse = |problem: &str| Err(Rejection::malformed(forbidden(), problem));
        let Some(header) = request.header("authorization") else {
            return refuse("no Authorization header");
        };
        let Some(encoded) = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
        else {
            return refuse("Authorization is not HTTP Basic");
        };
        let decoded = STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let Some((user, key)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return refuse("Authorization Basic credentials are not base64 of user:password");
        };
        if user != "api" {
            return refuse(&format!("HTTP Basic user is {user:?}, must be \"api\""));
        }
        if key != credentials.key() {
            return Err(Rejection::refused(forbidden()));
        }
        Ok(())
    }

    fn parse(&self, request: &Request<'_>) -> Result<Message, Rejection> {
        let invalid = |problem: String| Rejection::malformed(self.invalid(&problem), problem);
        let content_type = request.header("content-type").unwrap_or_default();
        let fields = match wire::media_type(content_type).as_str() {
            "multipart/form-data" => {
                let boundary = wire::parameter(content_type, "boundary").unwrap_or_default();
                wire::multipart(request.body, &boundary).map_err(invalid)?
            }
            "application/x-www-form-urlencoded" => wire::urlencoded(request.body),
            other => {
                return Err(invalid(format!(
                    "Content-Type {other:?}, must be multipart/form-data or \
                     application/x-www-form-urlencoded"
                )));
            }
        };
        let first = |name: &str| {
            fields
                .iter()
                .find(|field| field.name == name && field.filename.is_none())
                .map(|field| field.value.clone())
                .filter(|value| !value.trim().is_empty())
        };
        let mut problems = Vec::new();
        let from = first("from");
        if from.is_none() {
            problems.push("'from' parameter is missing".to_owned());
        }
        let to: Vec<String> = fields
            .iter()
            .filter(|field| field.name == "to")
            .flat_map(|field| wire::addresses(&field.value))
            .collect();
        if to.is_empty() {
            problems.push("'to' parameter is missing".to_owned());
        }
        let subject = first("subject");
        if subject.is_none() {
            problems.push("'subject' parameter is missing".to_owned());
        }
        let (text, html) = (first("text"), first("html"));
        if text.is_none() && html.is_none() {
            problems.push("Need at least one of 'text' or 'html' parameters specified".to_owned());
        }
        if !problems.is_empty() {
            return Err(Rejection {
                answer: self.invalid(&problems[0]),
                problems,
            });
        }
        let headers: Vec<(String, String)> = fields
            .iter()
            .filter_map(|field| {
                let name = field.name.strip_prefix("h:")?;
                Some((name.to_owned(), field.value.clone()))
            })
            .collect();
        Ok(Message {
            header_mailtrail_id: wire::header(&headers, crate::MAILTRAIL_ID_HEADER)
                .map(str::to_owned),
            mailtrail_id: first(&format!("v:{}", crate::MAILTRAIL_ID)),
            to,
            from: wire::address(&from.unwrap_or_default()),
            subject: subject.unwrap_or_default(),
            text,
            html,
            headers,
            raw: raw(&fields),
        })
    }

    fn invalid(&self, problem: &str) -> Answer {
        message(400, problem)
    }

    fn metadata_field(&self) -> &'static str {
        "form field v:mailtrail_id"
    }

    fn header_field(&self) -> &'static str {
        "form field h:X-Mailtrail-Id"
    }

    fn fault(&self, fault: Fault, _: &Message, _: &Credentials) -> Answer {
        match fault {
            Fault::RejectMessage => message(400, "'to' parameter is not a valid address"),
            Fault::BadKey => forbidden(),
            Fault::RateLimited => message(429, "Too many requests"),
            Fault::ServerError => message(500, "Internal Server Error"),
        }
    }

    fn new_id(&self, credentials: &Credentials, sequence: u64) -> String {
        let domain = match credentials {
            Credentials::Mailgun { domain, .. } => domain.as_str(),
            _ => "mg.example.com",
        };
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!(
            "<{}.{sequence}.{}@{domain}>",
            chrono::Utc::now().format("%Y%m%d%H%M%S"),
            &random[..16]
        )
    }

    fn accepted(&self, _: &Message, id: &str) -> Answer {
        Answer::json(200, json!({ "id": id, "message": "Queued. Thank you." }))
    }
}

/// The form fields as a JSON object; a field sent more than once becomes an array.
fn raw(fields: &[Field]) -> Value {
    let mut object = Map::new();
    for field in fields {
        let value = Value::String(field.value.clone());
        match object.get_mut(&field.name) {
            Some(Value::Array(values)) => values.push(value),
            Some(existing) => *existing = Value::Array(vec![existing.take(), value]),
            None => {
                object.insert(field.name.clone(), value);
            }
        }
    }
    Value::Object(object)
}
