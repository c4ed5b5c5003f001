//! Postmark: `POST /email`, `X-Postmark-Server-Token`, JSON with `From`, `To` (comma list),
//! `Subject`, `TextBody`/`HtmlBody`, `Metadata.mailtrail_id` and `Headers: [{Name, Value}]`;
//! answers `200 {"To", "SubmittedAt", "MessageID", "ErrorCode": 0, "Message": "OK"}`. Errors
//! are `{"ErrorCode", "Message"}`, status 422 for request errors, 401 for tokens.

use hyper::Method;
use serde_json::{Value, json};

use crate::Credentials;
use crate::spec::{self, Answer, Fault, Message, Rejection, Request, Spec};
use crate::wire;

pub(crate) struct Postmark;

/// Postmark's API error codes used here.
const BAD_TOKEN: u16 = 10;
const INVALID_REQUEST: u16 = 300;
const INVALID_JSON: u16 = 402;
const INACTIVE_RECIPIENT: u16 = 406;
const JSON_REQUIRED: u16 = 409;

fn error(status: u16, code: u16, message: &str) -> Answer {
    Answer::json(status, json!({ "ErrorCode": code, "Message": message }))
}

fn bad_token() -> Answer {
    error(
        401,
        BAD_TOKEN,
        "Request does not contain a valid Server token.",
    )
}

impl Spec for Postmark {
    fn route(&self, request: &Request<'_>, _: &Credentials) -> Result<(), Rejection> {
        if request.path != "/email" {
            return Err(Rejection::malformed(
                error(404, 0, "Not Found"),
                format!("no Postmark endpoint at {}", request.path),
            ));
        }
        if request.method != Method::POST {
            return Err(Rejection::malformed(
                error(405, 0, "Method Not Allowed"),
                format!("{} instead of POST", request.method),
            ));
        }
        Ok(())
    }

    fn auth(&self, request: &Request<'_>, credentials: &Credentials) -> Result<(), Rejection> {
        match request.header("x-postmark-server-token") {
            None => Err(Rejection::malformed(
                error(
                    401,
                    BAD_TOKEN,
                    "No Account or Server API tokens were supplied in the HTTP headers. Please \
                     add a header for either X-Postmark-Server-Token or \
                     X-Postmark-Account-Token.",
                ),
                "no X-Postmark-Server-Token header",
            )),
            Some(token) if token.trim() != credentials.key() => {
                Err(Rejection::refused(bad_token()))
            }
            Some(_) => Ok(()),
        }
    }

    fn parse(&self, request: &Request<'_>) -> Result<Message, Rejection> {
        if !request.is_json() {
            let problem = format!(
                "Content-Type {:?}, must be application/json",
                request.header("content-type").unwrap_or_default()
            );
            return Err(Rejection::malformed(
                error(
                    422,
                    JSON_REQUIRED,
                    "Your HTTP request does not have the Accept and Content-Type headers set to \
                     application/json.",
                ),
                problem,
            ));
        }
        let body: Value = serde_json::from_slice(request.body).map_err(|error_| {
            Rejection::malformed(
                error(422, INVALID_JSON, "Received invalid JSON input."),
                format!("the body is not JSON: {error_}"),
            )
        })?;
        let mut problems = Vec::new();
        let from = spec::string(&body, "From");
        if from.is_none() {
            problems.push("Invalid 'From' address: ''.".to_owned());
        }
        let to = spec::string(&body, "To")
            .map(wire::addresses)
            .unwrap_or_default();
        if to.is_empty() {
            problems.push("Zero recipients specified".to_owned());
        } else if to.len() > 50 {
            problems.push("Too many recipients: at most 50 in To, Cc and Bcc.".to_owned());
        }
        let subject = spec::string(&body, "Subject");
        if subject.is_none() {
            problems.push("Subject is missing.".to_owned());
        }
        let text = spec::string(&body, "TextBody").map(str::to_owned);
        let html = spec::string(&body, "HtmlBody").map(str::to_owned);
        if text.is_none() && html.is_none() {
            problems.push("Provide either email TextBody or HtmlBody or both.".to_owned());
        }
        match body.get("Metadata") {
            None | Some(Value::Null) => {}
            Some(Value::Object(metadata)) => {
                for (key, value) in metadata {
                    if !value.is_string() {
                        problems.push(format!("Metadata.{key}: metadata values must be strings"));
                    }
                }
            }
            Some(_) => problems.push("Metadata must be an object".to_owned()),
        }
        match body.get("Headers") {
            None | Some(Value::Null) => {}
            Some(Value::Array(headers))
                if headers.iter().all(|h| {
                    h.get("Name").is_some_and(Value::is_string)
                        && h.get("Value").is_some_and(Value::is_string)
                }) => {}
            Some(_) => {
                problems.push("Headers must be an array of {\"Name\", \"Value\"}".to_owned())
            }
        }
        if !problems.is_empty() {
            return Err(Rejection {
                answer: self.invalid(&problems[0]),
                problems,
            });
        }
        Ok(Message {
            mailtrail_id: spec::object_value(body.get("Metadata"), crate::MAILTRAIL_ID)
                .map(str::to_owned),
            header_mailtrail_id: spec::pair_value(
                body.get("Headers"),
                "Name",
                "Value",
                crate::MAILTRAIL_ID_HEADER,
            )
            .map(str::to_owned),
            headers: spec::pairs(body.get("Headers"), "Name", "Value"),
            to,
            from: wire::address(from.unwrap_or_default()),
            subject: subject.unwrap_or_default().to_owned(),
            text,
            html,
            raw: body,
        })
    }

    fn invalid(&self, problem: &str) -> Answer {
        error(422, INVALID_REQUEST, problem)
    }

    fn metadata_field(&self) -> &'static str {
        "Metadata.mailtrail_id"
    }

    fn header_field(&self) -> &'static str {
        "Headers [{\"Name\": \"X-Mailtrail-Id\", \"Value\": …}]"
    }

    fn fault(&self, fault: Fault, message: &Message, _: &Credentials) -> Answer {
        match fault {
            Fault::RejectMessage => error(
                422,
                INACTIVE_RECIPIENT,
                &format!(
                    "You tried to send to recipient(s) that have been marked as inactive. Found \
                     inactive addresses: {}. Inactive recipients are ones that have generated a \
                     hard bounce, a spam complaint, or a manual suppression.",
                    message.to.join(", ")
                ),
            ),
            Fault::BadKey => bad_token(),
            Fault::RateLimited => error(429, 429, "Rate limit exceeded."),
            Fault::ServerError => error(500, 500, "Internal server error."),
        }
    }

    fn new_id(&self, _: &Credentials, _: u64) -> String {
        uuid::Uuid::new_v4().to_string()
    }

    fn accepted(&self, message: &Message, id: &str) -> Answer {
        let to = message.raw.get("To").cloned().unwrap_or(Value::Null);
        Answer::json(
            200,
            json!({
                "To": to,
                "SubmittedAt": chrono::Utc::now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
                "MessageID": id,
                "ErrorCode": 0,
                "Message": "OK",
            }),
        )
    }
}
