//! Resend: `POST /emails`, `Authorization: Bearer re_…`, JSON with `from`, `to` (string or
//! array, at most 50), `subject`, `html`/`text`, `tags: [{name, value}]` and `headers`
//! (object); answers `200 {"id": "<uuid>"}`. Errors are `{"statusCode", "name", "message"}`.
//! An `Idempotency-Key` seen before answers the id given then (handled by the server).

use hyper::Method;
use serde_json::{Value, json};

use crate::Credentials;
use crate::spec::{self, Answer, Fault, Message, Rejection, Request, Spec};
use crate::wire;

pub(crate) struct Resend;

fn error(status: u16, name: &str, message: &str) -> Answer {
    Answer::json(
        status,
        json!({ "statusCode": status, "name": name, "message": message }),
    )
}

fn invalid_key() -> Answer {
    error(403, "invalid_api_key", "API key is invalid")
}

/// The answer to an `Idempotency-Key` reused with another body.
pub(crate) fn idempotency_conflict() -> Answer {
    error(
        409,
        "invalid_idempotent_request",
        "Same idempotency key used with a different request payload. Change your idempotency \
         key or payload.",
    )
}

impl Spec for Resend {
    fn route(&self, request: &Request<'_>, _: &Credentials) -> Result<(), Rejection> {
        if request.path != "/emails" {
            return Err(Rejection::malformed(
                error(404, "not_found", "The requested endpoint does not exist."),
                format!("no Resend endpoint at {}", request.path),
            ));
        }
        if request.method != Method::POST {
            return Err(Rejection::malformed(
                error(
                    405,
                    "method_not_allowed",
                    "Method is not allowed for the requested path.",
                ),
                format!("{} instead of POST", request.method),
            ));
        }
        Ok(())
    }

    fn auth(&self, request: &Request<'_>, credentials: &Credentials) -> Result<(), Rejection> {
        let missing = || {
            error(
                401,
                "missing_api_key",
                "Missing API key in the authorization header. Include the following header \
                 'Authorization: Bearer YOUR_API_KEY' in the request.",
            )
        };
        let Some(header) = request.header("authorization") else {
            return Err(Rejection::malformed(missing(), "no Authorization header"));
        };
        let Some(key) = header.strip_prefix("Bearer ").map(str::trim) else {
            return Err(Rejection::malformed(
                missing(),
                "Authorization is not `Bearer re_…`",
            ));
        };
        if !key.starts_with("re_") {
            return Err(Rejection::malformed(
                invalid_key(),
                "the API key does not start with re_",
            ));
        }
        if key != credentials.key() {
            return Err(Rejection::refused(invalid_key()));
        }
        Ok(())
    }

    fn parse(&self, request: &Request<'_>) -> Result<Message, Rejection> {
        let idempotency_key = request.headers.get("idempotency-key");
        if idempotency_key.is_some_and(|key| key.is_empty() || key.len() > 256) {
            return Err(Rejection::malformed(
                error(
                    400,
                    "invalid_idempotency_key",
                    "The key must be between 1-256 chars.",
                ),
                "Idempotency-Key must be 1-256 characters",
            ));
        }
        let invalid = |problem: String| Rejection::malformed(self.invalid(&problem), problem);
        if !request.is_json() {
            return Err(invalid(format!(
                "Content-Type {:?}, must be application/json",
                request.header("content-type").unwrap_or_default()
            )));
        }
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|error_| invalid(format!("the body is not JSON: {error_}")))?;
        let mut problems = Vec::new();
        let from = spec::string(&body, "from");
        if from.is_none() {
            problems.push("Missing `from` field.".to_owned());
        }
        let to: Vec<String> = match body.get("to") {
            Some(Value::String(to)) => wire::addresses(to),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .map(wire::address)
                .filter(|to| !to.is_empty())
                .collect(),
            _ => Vec::new(),
        };
        if to.is_empty() {
            problems.push("Missing `to` field.".to_owned());
        } else if to.len() > 50 {
            problems.push("Invalid `to` field. At most 50 recipients.".to_owned());
        }
        let subject = spec::string(&body, "subject");
        if subject.is_none() {
            problems.push("Missing `subject` field.".to_owned());
        }
        let text = spec::string(&body, "text").map(str::to_owned);
        let html = spec::string(&body, "html").map(str::to_owned);
        if text.is_none() && html.is_none() {
            problems.push("Missing `html` or `text` field.".to_owned());
        }
        match body.get("tags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(tags)) => {
                for tag in tags {
                    let name = tag.get("name").and_then(Value::as_str).unwrap_or_default();
                    let value = tag.get("value").and_then(Value::as_str).unwrap_or_default();
                    if !wire::is_tag_text(name) || !wire::is_tag_text(value) {
                        problems.push(format!(
                            "Invalid `tags` field: {tag}. Tags should only contain ASCII \
                             letters, numbers, underscores, or dashes."
                        ));
                    }
                }
            }
            Some(_) => problems.push("Invalid `tags` field: must be an array.".to_owned()),
        }
        match body.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(headers)) if headers.values().all(Value::is_string) => {}
            Some(_) => problems
                .push("Invalid `headers` field: must be an object of string values.".to_owned()),
        }
        if !problems.is_empty() {
            return Err(Rejection {
                answer: self.invalid(&problems[0]),
                problems,
            });
        }
        Ok(Message {
            mailtrail_id: spec::pair_value(body.get("tags"), "name", "value", crate::MAILTRAIL_ID)
                .map(str::to_owned),
            header_mailtrail_id: spec::object_value(
                body.get("headers"),
                crate::MAILTRAIL_ID_HEADER,
            )
            .map(str::to_owned),
            headers: spec::object_pairs(body.get("headers")),
            to,
            from: wire::address(from.unwrap_or_default()),
            subject: subject.unwrap_or_default().to_owned(),
            text,
            html,
            raw: body,
        })
    }

    fn invalid(&self, problem: &str) -> Answer {
        let name = if problem.starts_with("Missing `") {
            "missing_required_field"
        } else {
            "validation_error"
        };
        error(422, name, problem)
    }

    fn metadata_field(&self) -> &'static str {
        "tags [{\"name\": \"mailtrail_id\", \"value\": …}]"
    }

    fn header_field(&self) -> &'static str {
        "headers {\"X-Mailtrail-Id\": …}"
    }

    fn fault(&self, fault: Fault, _: &Message, _: &Credentials) -> Answer {
        match fault {
            Fault::RejectMessage => error(422, "validation_error", "Invalid `to` field."),
            Fault::BadKey => invalid_key(),
            Fault::RateLimited => error(
                429,
                "rate_limit_exceeded",
                "Too many requests. You can only make 2 requests per second. See rate limit \
                 response headers for more information. Or contact support to increase rate \
                 limit.",
            ),
            Fault::ServerError => error(
                500,
                "internal_server_error",
                "An unexpected error occurred.",
            ),
        }
    }

    fn new_id(&self, _: &Credentials, _: u64) -> String {
        uuid::Uuid::new_v4().to_string()
    }

    fn accepted(&self, _: &Message, id: &str) -> Answer {
        Answer::json(200, json!({ "id": id }))
    }
}
