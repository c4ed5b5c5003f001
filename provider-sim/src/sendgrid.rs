//! SendGrid v3 Mail Send: `POST /v3/mail/send`, `Authorization: Bearer <key>`, JSON with
//! `personalizations[].to[].email`, `from.email`, `subject`, `content[]`, `custom_args`
//! (message- or personalization-level; personalization wins) and `headers`; answers `202` with
//! an empty body and the `X-Message-Id` header.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::Method;
use serde_json::{Value, json};

use crate::Credentials;
use crate::spec::{self, Answer, Fault, Message, Rejection, Request, Spec};

pub(crate) struct SendGrid;

const PATH: &str = "/v3/mail/send";

fn errors(status: u16, message: &str, field: Option<&str>) -> Answer {
    Answer::json(
        status,
        json!({ "errors": [{ "message": message, "field": field, "help": null }] }),
    )
}

fn bad_key() -> Answer {
    errors(
        401,
        "The provided authorization grant is invalid, expired, or revoked",
        None,
    )
}

impl Spec for SendGrid {
    fn route(&self, request: &Request<'_>, _: &Credentials) -> Result<(), Rejection> {
        if request.path != PATH {
            return Err(Rejection::malformed(
                errors(404, "Not Found", None),
                format!("no SendGrid endpoint at {}", request.path),
            ));
        }
        if request.method != Method::POST {
            return Err(Rejection::malformed(
                errors(405, "Method Not Allowed", None),
                format!("{} instead of POST", request.method),
            ));
        }
        Ok(())
    }

    fn auth(&self, request: &Request<'_>, credentials: &Credentials) -> Result<(), Rejection> {
        let missing = || errors(401, "authorization required", None);
        let Some(header) = request.header("authorization") else {
            return Err(Rejection::malformed(missing(), "no Authorization header"));
        };
        let Some(key) = header.strip_prefix("Bearer ") else {
            return Err(Rejection::malformed(
                missing(),
                "Authorization is not `Bearer <key>`",
            ));
        };
        if key.trim() != credentials.key() {
            return Err(Rejection::refused(bad_key()));
        }
        Ok(())
    }

    fn parse(&self, request: &Request<'_>) -> Result<Message, Rejection> {
        let invalid = |problem: String| Rejection::malformed(self.invalid(&problem), problem);
        if !request.is_json() {
            return Err(invalid(format!(
                "Content-Type {:?}, must be application/json",
                request.header("content-type").unwrap_or_default()
            )));
        }
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|error| invalid(format!("the body is not JSON: {error}")))?;
        let mut problems = Vec::new();
        let personalizations = body
            .get("personalizations")
            .and_then(Value::as_array)
            .filter(|list| !list.is_empty());
        let mut to = Vec::new();
        match personalizations {
            None => problems.push(
                "The personalizations field is required and must have at least one \
                 personalization."
                    .to_owned(),
            ),
            Some(list) => {
                for (index, personalization) in list.iter().enumerate() {
                    let emails: Vec<String> = personalization
                        .get("to")
                        .and_then(Value::as_array)
                        .map(|to| {
                            to.iter()
                                .filter_map(|entry| spec::string(entry, "email"))
                                .map(|email| email.trim().to_owned())
                                .collect()
                        })
                        .unwrap_or_default();
                    if emails.is_empty() {
                        problems.push(format!(
                            "personalizations.{index}.to: The to array is required for all \
                             personalization objects, and must have at least one email object \
                             with a valid email address."
                        ));
                    }
                    to.extend(emails);
                }
            }
        }
        let from = body
            .get("from")
            .and_then(|from| spec::string(from, "email"));
        if from.is_none() {
            problems.push(
                "The from object must be provided for every email send. It is an object that \
                 requires the email parameter, but may also contain a name parameter."
                    .to_owned(),
            );
        }
        let first = personalizations.and_then(|list| list.first());
        let templated = spec::string(&body, "template_id").is_some();
        let subject = first
            .and_then(|p| spec::string(p, "subject"))
            .or_else(|| spec::string(&body, "subject"));
        let every_has_subject = personalizations
            .is_some_and(|list| list.iter().all(|p| spec::string(p, "subject").is_some()));
        if spec::string(&body, "subject").is_none() && !every_has_subject && !templated {
            problems.push(
                "The subject is required. You can get around this requirement if you use a \
                 template with a subject defined or if every personalization has a subject \
                 defined."
                    .to_owned(),
            );
        }
        let content = body.get("content").and_then(Value::as_array);
        let blocks: Vec<(&str, &str)> = content
            .map(|content| {
                content
                    .iter()
                    .filter_map(|block| {
                        Some((spec::string(block, "type")?, spec::string(block, "value")?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if content.is_none_or(|content| content.is_empty()) && !templated {
            problems.push(
                "Unless a valid template_id is provided, the content parameter is required. \
                 There must be at least one defined content block."
                    .to_owned(),
            );
        } else if content.is_some_and(|content| content.len() != blocks.len()) {
            problems.push(
                "content: every block needs a type and a value at least one character long."
                    .to_owned(),
            );
        }
        for (place, args) in [
            ("custom_args", body.get("custom_args")),
            (
                "personalizations.0.custom_args",
                first.and_then(|p| p.get("custom_args")),
            ),
        ] {
            match args {
                None => {}
                Some(Value::Object(args)) => {
                    for (key, value) in args {
                        if !value.is_string() {
                            problems
                                .push(format!("{place}.{key}: custom_args values must be strings"));
                        }
                    }
                }
                Some(_) => problems.push(format!("{place} must be an object")),
            }
        }
        if !problems.is_empty() {
            return Err(Rejection {
                answer: self.invalid(&problems[0]),
                problems,
            });
        }
        let block = |kind: &str| {
            blocks
                .iter()
                .find(|(block_kind, _)| block_kind.eq_ignore_ascii_case(kind))
                .map(|(_, value)| (*value).to_owned())
        };
        let mailtrail_id = first
            .and_then(|p| spec::object_value(p.get("custom_args"), crate::MAILTRAIL_ID))
            .or_else(|| spec::object_value(body.get("custom_args"), crate::MAILTRAIL_ID))
            .map(str::to_owned);
        let mut headers = spec::object_pairs(body.get("headers"));
        headers.extend(spec::object_pairs(first.and_then(|p| p.get("headers"))));
        let header_mailtrail_id = first
            .and_then(|p| spec::object_value(p.get("headers"), crate::MAILTRAIL_ID_HEADER))
            .or_else(|| spec::object_value(body.get("headers"), crate::MAILTRAIL_ID_HEADER))
            .map(str::to_owned);
        Ok(Message {
            to,
            from: from.unwrap_or_default().trim().to_owned(),
            subject: subject.unwrap_or_default().to_owned(),
            text: block("text/plain"),
            html: block("text/html"),
            headers,
            mailtrail_id,
            header_mailtrail_id,
            raw: body,
        })
    }

    fn invalid(&self, problem: &str) -> Answer {
        errors(400, problem, None)
    }

    fn metadata_field(&self) -> &'static str {
        "custom_args.mailtrail_id or personalizations[0].custom_args.mailtrail_id"
    }

    fn header_field(&self) -> &'static str {
        "headers or personalizations[0].headers"
    }

    fn fault(&self, fault: Fault, _: &Message, _: &Credentials) -> Answer {
        match fault {
            Fault::RejectMessage => errors(
                400,
                "Does not contain a valid address.",
                Some("personalizations.0.to.0.email"),
            ),
            Fault::BadKey => bad_key(),
            Fault::RateLimited => errors(429, "too many requests", None),
            Fault::ServerError => errors(500, "An internal server error occurred.", None),
        }
    }

    fn new_id(&self, _: &Credentials, _: u64) -> String {
        // 22 URL-safe characters, like `Hn9nRhbyQvqOwlr3oDU-qA`.
        URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
    }

    fn accepted(&self, _: &Message, id: &str) -> Answer {
        Answer::empty(202).with_header("x-message-id", id)
    }
}
