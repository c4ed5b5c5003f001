//! SendGrid's v3 Mail Send API: `POST {base}/v3/mail/send`, `Authorization: Bearer <key>`,
//! JSON.
//!
//! The body has one personalization (the job's one recipient, with `custom_args` holding
//! `mailtrail_id` and the job's metadata: they come back on every event), `from`, `reply_to`,
//! `subject`, `content` (plain text first, then HTML, as SendGrid requires), `headers`
//! (`X-Mailtrail-Id` and the job's headers), `categories` (the first ten tags, SendGrid's limit)
//! and `attachments` (base64 as the job has it). A 2xx answer (202) carries no body; its
//! `X-Message-Id` header is the provider message id.
//!
//! SendGrid's errors are `{"errors": [{"message": "…", "field": "…"}]}`; the status decides:
//!
//! | Answer | Kind | Why |
//! |---|---|---|
//! | 2xx | sent | `X-Message-Id` is the provider message id |
//! | 400 | Rejected | a field of the message is invalid (`errors[].field` names it) |
//! | 401 | ProviderDown | the API key is missing or invalid |
//! | 403 | ProviderDown | the key lacks the `mail.send` scope, the account is suspended, or the from address is not a verified Sender Identity |
//! | 404, 405, 407, 3xx | ProviderDown | the base URL or proxy is wrong |
//! | 408, 429, 5xx | Transient | timeout, rate limit, SendGrid's own failure |
//! | 413 | Rejected | the message is too large |
//! | any other 4xx | Rejected | unknown client error: the request is at fault |
//! | timeout, connection, TLS | Transient | |

use super::http::{self, Class};
use super::{MAILTRAIL_ID, MAILTRAIL_ID_HEADER, Provider, SendError, SendFuture, Sent};
use mailtrail_shared::address::Address;
use mailtrail_shared::dispatch::DispatchJob;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::time::Duration;

const NAME: &str = "sendgrid";
/// SendGrid's global API; EU-pinned subusers use `https://api.eu.sendgrid.com`.
pub const DEFAULT_BASE_URL: &str = "https://api.sendgrid.com";
/// SendGrid keeps at most this many categories per message.
const MAX_CATEGORIES: usize = 10;

/// How to reach SendGrid.
#[derive(Debug, Clone)]
pub struct SendGridSettings {
    /// `https://api.sendgrid.com` ([`DEFAULT_BASE_URL`]), `https://api.eu.sendgrid.com`, or a
    /// test server.
    pub base_url: String,
    /// An API key with the `mail.send` scope.
    pub api_key: SecretString,
    /// A request's whole time.
    pub timeout: Duration,
}

/// Sends through SendGrid's Mail Send API.
#[derive(Debug)]
pub struct SendGrid {
    client: reqwest::Client,
    url: reqwest::Url,
    api_key: SecretString,
}

impl SendGrid {
    pub fn new(settings: SendGridSettings) -> anyhow::Result<SendGrid> {
        anyhow::ensure!(
            !settings.api_key.expose_secret().trim().is_empty(),
            "the SendGrid API key is empty"
        );
        Ok(SendGrid {
            client: http::client(settings.timeout)?,
            url: http::endpoint(&settings.base_url, "/v3/mail/send")?,
            api_key: settings.api_key,
        })
    }

    async fn send_job(&self, job: &DispatchJob) -> Result<Sent, SendError> {
        let answer = http::exchange(
            NAME,
            self.client
                .post(self.url.clone())
                .bearer_auth(self.api_key.expose_secret())
                .json(&body(job)),
        )
        .await?;
        if answer.is_success() {
            return Ok(Sent {
                provider_message_id: answer.header("x-message-id"),
                reply: http::reply(answer.status, None),
            });
        }
        Err(classify(answer.status, &answer.body))
    }
}

impl Provider for SendGrid {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, job: &'a DispatchJob) -> SendFuture<'a> {
        Box::pin(async move {
            self.send_job(job)
                .await
                .map_err(|e| http::scrub(e, &[self.api_key.expose_secret()]))
        })
    }
}

fn address(address: &Address) -> Value {
    let mut value = json!({"email": address.address});
    if let Some(name) = address
        .display_name
        .as_deref()
        .filter(|n| !n.trim().is_empty())
    {
        value["name"] = json!(name);
    }
    value
}

/// The Mail Send request body.
fn body(job: &DispatchJob) -> Value {
    let email_id = job.email_id.to_string();
    let mut custom_args = Map::new();
    custom_args.insert(MAILTRAIL_ID.into(), json!(email_id));
    for (key, value) in &job.metadata {
        if key != MAILTRAIL_ID {
            custom_args.insert(key.clone(), json!(value));
        }
    }
    let mut headers = Map::new();
    headers.insert(MAILTRAIL_ID_HEADER.into(), json!(email_id));
    for (name, value) in &job.headers {
        headers.insert(name.clone(), json!(value));
    }
    let mut content = Vec::new();
    if let Some(text) = &job.text {
        content.push(json!({"type": "text/plain", "value": text}));
    }
    if let Some(html) = &job.html {
        content.push(json!({"type": "text/html", "value": html}));
    }
    let mut body = json!({
        "personalizations": [{
            "to": [address(&job.to)],
            "custom_args": custom_args,
        }],
        "from": address(&job.from),
        "subject": job.subject,
        "content": content,
        "headers": headers,
    });
    if let Some(reply_to) = &job.reply_to {
        body["reply_to"] = address(reply_to);
    }
    if !job.tags.is_empty() {
        let categories: Vec<&String> = job.tags.iter().take(MAX_CATEGORIES).collect();
        body["categories"] = json!(categories);
    }
    if !job.attachments.is_empty() {
        let attachments: Vec<Value> = job
            .attachments
            .iter()
            .map(|a| {
                json!({
                    "content": a.content,
                    "filename": a.filename,
                    "type": a.content_type,
                    "disposition": "attachment",
                })
            })
            .collect();
        body["attachments"] = json!(attachments);
    }
    body
}

#[derive(Deserialize)]
struct Errors {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    message: Option<String>,
    field: Option<String>,
}

/// A non-2xx answer as one of the three kinds (the table at the top of this file).
fn classify(status: u16, body: &str) -> SendError {
    let message = match serde_json::from_str::<Errors>(body) {
        Ok(parsed) if !parsed.errors.is_empty() => parsed
            .errors
            .iter()
            .map(|e| {
                let message = e.message.as_deref().unwrap_or("invalid");
                match e.field.as_deref().filter(|f| !f.is_empty()) {
                    Some(field) => format!("{field}: {message}"),
                    None => message.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => http::excerpt(body),
    };
    let class = match status {
        413 => Class::Rejected,
        _ => Class::of_status(status),
    };
    class.error(http::reason(NAME, status, None, &message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::http::test_support::{EMAIL_ID, job, refused_url, serve_once};

    fn settings(base_url: String) -> SendGridSettings {
        SendGridSettings {
            base_url,
            api_key: SecretString::from("SG.secret-key"),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_body_carries_our_id_the_recipient_and_everything_of_the_job() {
        let body = body(&job());
        let id = EMAIL_ID.to_string();
        assert_eq!(
            body["personalizations"],
            json!([{
                "to": [{"email": "ann@example.com", "name": "Ann Lee"}],
                "custom_args": {"mailtrail_id": id, "order_id": "A-17", "note key": "two words"},
            }])
        );
        assert_eq!(
            body["from"],
            json!({"email": "shop@acme.test", "name": "Acme Shop"})
        );
        assert_eq!(body["reply_to"], json!({"email": "help@acme.test"}));
        assert_eq!(body["subject"], "Your order");
        assert_eq!(
            body["content"],
            json!([
                {"type": "text/plain", "value": "Thanks"},
                {"type": "text/html", "value": "<p>Thanks</p>"},
            ])
        );
        assert_eq!(
            body["headers"],
            json!({"X-Mailtrail-Id": id, "X-Campaign": "autumn"})
        );
        assert_eq!(body["categories"], json!(["orders", "receipt"]));
        assert_eq!(
            body["attachments"],
            json!([{"content": "aGVsbG8=", "filename": "r.txt", "type": "text/plain",
                    "disposition": "attachment"}])
        );
    }

    #[test]
    fn empty_optional_parts_are_left_out_and_our_id_wins() {
        let mut job = job();
        job.reply_to = None;
        job.tags.clear();
        job.attachments.clear();
        job.html = None;
        job.metadata.insert(MAILTRAIL_ID.into(), "spoofed".into());
        let body = body(&job);
        assert!(body.get("reply_to").is_none());
        assert!(body.get("categories").is_none());
        assert!(body.get("attachments").is_none());
        assert_eq!(
            body["content"],
            json!([{"type": "text/plain", "value": "Thanks"}])
        );
        assert_eq!(
            body["personalizations"][0]["custom_args"]["mailtrail_id"],
            EMAIL_ID.to_string()
        );
    }

    fn kind(error: &SendError) -> &'static str {
        match error {
            SendError::Rejected { .. } => "Rejected",
            SendError::Transient(_) | SendError::Deferred(_) => "Transient",
            SendError::ProviderDown(_) => "ProviderDown",
        }
    }

    #[test]
    fn every_row_of_the_table() {
        let bad_from = r#"{"errors":[{"message":"The from email does not contain a valid address.","field":"from.email","help":null}]}"#;
        let rows = [
            (400, bad_from, "Rejected"),
            (
                401,
                r#"{"errors":[{"message":"The provided authorization grant is invalid, expired, or revoked","field":null}]}"#,
                "ProviderDown",
            ),
            (
                403,
                r#"{"errors":[{"message":"The from address does not match a verified Sender Identity.","field":"from"}]}"#,
                "ProviderDown",
            ),
            (404, "", "ProviderDown"),
            (405, "", "ProviderDown"),
            (407, "", "ProviderDown"),
            (302, "", "ProviderDown"),
            (408, "", "Transient"),
            (413, r#"{"errors":[{"message":"too large"}]}"#, "Rejected"),
            (
                429,
                r#"{"errors":[{"message":"too many requests"}]}"#,
                "Transient",
            ),
            (500, "", "Transient"),
            (503, "<html>down</html>", "Transient"),
            (415, "", "Rejected"),
        ];
        for (status, body, expected) in rows {
            let error = classify(status, body);
            assert_eq!(kind(&error), expected, "{status} {body}: {error:?}");
            assert!(
                error.reason().starts_with(&format!("sendgrid {status}")),
                "{error:?}"
            );
        }
        assert_eq!(
            classify(400, bad_from).reason(),
            "sendgrid 400: from.email: The from email does not contain a valid address."
        );
    }

    #[tokio::test]
    async fn a_real_request_goes_out_and_202_is_sent() {
        let (url, server) = serve_once(202, &[("X-Message-Id", "sg-abc123")], "").await;
        let sendgrid = SendGrid::new(settings(url)).expect("settings are valid");
        let sent = sendgrid.send(&job()).await.expect("sent");
        assert_eq!(sent.provider_message_id.as_deref(), Some("sg-abc123"));
        assert_eq!(sent.reply, "202 Accepted");
        let request = server.await.expect("the server ran");
        assert_eq!(request.request_line(), "POST /v3/mail/send HTTP/1.1");
        assert_eq!(
            request.header("authorization").as_deref(),
            Some("Bearer SG.secret-key")
        );
        assert_eq!(request.json(), body(&job()));
    }

    #[tokio::test]
    async fn answers_401_and_5xx_and_a_refused_connection_map_to_their_kinds() {
        let (url, _server) = serve_once(401, &[], r#"{"errors":[{"message":"bad key"}]}"#).await;
        let error = SendGrid::new(settings(url))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("401");
        assert!(matches!(error, SendError::ProviderDown(_)), "{error:?}");

        let (url, _server) = serve_once(502, &[], "").await;
        let error = SendGrid::new(settings(url))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("502");
        assert!(matches!(error, SendError::Transient(_)), "{error:?}");

        let error = SendGrid::new(settings(refused_url().await))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("refused");
        assert!(matches!(error, SendError::Transient(_)), "{error:?}");
    }
}
