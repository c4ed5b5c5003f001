//! Resend's send API: `POST {base}/emails`, `Authorization: Bearer <key>`,
//! `Idempotency-Key: <job_id>`, JSON.
//!
//! The idempotency key is the job's id, the same for every attempt: a job sent again after a
//! lost answer is not sent twice (Resend keeps keys for 24 hours and answers the first result).
//! The body has `from` (`Name <address>`), `to` (`[address]`), `subject`, `text`, `html`,
//! `reply_to`, `headers` (`X-Mailtrail-Id` and the job's headers), `tags` and `attachments`
//! (`filename` and the base64 `content` as the job has it). Tags hold `mailtrail_id` first; tag
//! names and values may only use ASCII letters, digits, `_` and `-` (up to 256 characters), so:
//!
//! * a metadata entry whose key and value both fit becomes a tag `{name: key, value}`;
//! * one that does not fit travels as the header `X-Mailtrail-Meta-<key>`, or is skipped when the
//!   key is not a header name (printable ASCII without `:`) or the value has a control
//!   character;
//! * a job tag that fits becomes `{name: tag, value: "true"}` unless that name is taken; other
//!   job tags are skipped.
//!
//! A 2xx answer `{"id": "…"}` gives the provider message id.
//!
//! Resend's errors are `{"statusCode": n, "name": "…", "message": "…"}`; the name decides, then
//! the status:
//!
//! | Answer | Kind | Why |
//! |---|---|---|
//! | 2xx | sent | `id` is the provider message id |
//! | `missing_api_key` (401), `invalid_api_key` (403), `restricted_api_key` (401) | ProviderDown | the key is missing, wrong, revoked or lacks the right |
//! | `invalid_from_address` (403) | ProviderDown | the from domain is not verified or not ours: account set-up |
//! | `validation_error` with 401 or 403 | ProviderDown | an invalid key, a domain not verified, or a test-only account |
//! | `validation_error` naming a domain that is not verified | ProviderDown | account set-up |
//! | `validation_error` (400, 422) otherwise | Rejected | a field of the message is invalid |
//! | `invalid_to_address` (403) | Rejected | the recipient is invalid — but ProviderDown when the message says the account may send only testing emails |
//! | `missing_required_field`, `invalid_attachment`, `invalid_parameter`, `invalid_idempotency_key`, `invalid_idempotent_request` (400, 409, 422) | Rejected | the message is at fault |
//! | `not_found` (404), `method_not_allowed` (405) | ProviderDown | the base URL is wrong |
//! | `rate_limit_exceeded`, `daily_quota_exceeded`, `monthly_quota_exceeded` (429) | Transient | wait and retry |
//! | `concurrent_idempotent_requests` (409) | Transient | the first attempt is still in progress |
//! | `internal_server_error`, `application_error` (500) | Transient | Resend's own failure |
//! | other or no name: 408, 429, 5xx | Transient | |
//! | other or no name: 401, 403, 404, 405, 407, 3xx | ProviderDown | |
//! | other or no name: any other 4xx | Rejected | unknown client error |
//! | timeout, connection, TLS | Transient | |

use super::http::{self, Class};
use super::{MAILTRAIL_ID, MAILTRAIL_ID_HEADER, Provider, SendError, SendFuture, Sent};
use mailtrail_shared::dispatch::DispatchJob;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const NAME: &str = "resend";
/// Resend's API.
pub const DEFAULT_BASE_URL: &str = "https://api.resend.com";

/// How to reach Resend.
#[derive(Debug, Clone)]
pub struct ResendSettings {
    /// `https://api.resend.com` ([`DEFAULT_BASE_URL`]) or a test server.
    pub base_url: String,
    /// An API key (`re_…`) allowed to send.
    pub api_key: SecretString,
    /// A request's whole time.
    pub timeout: Duration,
}

/// Sends through Resend's emails API.
#[derive(Debug)]
pub struct Resend {
    client: reqwest::Client,
    url: reqwest::Url,
    api_key: SecretString,
}

impl Resend {
    pub fn new(settings: ResendSettings) -> anyhow::Result<Resend> {
        anyhow::ensure!(
            !settings.api_key.expose_secret().trim().is_empty(),
            "the Resend API key is empty"
        );
        Ok(Resend {
            client: http::client(settings.timeout)?,
            url: http::endpoint(&settings.base_url, "/emails")?,
            api_key: settings.api_key,
        })
    }

    async fn send_job(&self, job: &DispatchJob) -> Result<Sent, SendError> {
        let answer = http::exchange(
            NAME,
            self.client
                .post(self.url.clone())
                .bearer_auth(self.api_key.expose_secret())
                .header("Idempotency-Key", job.job_id.to_string())
                .json(&body(job)),
        )
        .await?;
        if answer.is_success() {
            return Ok(sent(answer.status, &answer.body));
        }
        Err(classify(answer.status, &answer.body))
    }
}

impl Provider for Resend {
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

/// The emails request body.
fn body(job: &DispatchJob) -> Value {
    let email_id = job.email_id.to_string();
    let mut headers = Map::new();
    headers.insert(MAILTRAIL_ID_HEADER.into(), json!(email_id));
    for (name, value) in &job.headers {
        headers.insert(name.clone(), json!(value));
    }
    let mut tags = vec![json!({"name": MAILTRAIL_ID, "value": email_id})];
    let mut names: BTreeSet<&str> = BTreeSet::from([MAILTRAIL_ID]);
    for (key, value) in &job.metadata {
        if key == MAILTRAIL_ID {
            continue;
        }
        if http::is_tag_token(key) && http::is_tag_token(value) {
            names.insert(key);
            tags.push(json!({"name": key, "value": value}));
        } else if let Some((name, value)) = http::meta_header(key, value) {
            headers.insert(name, json!(value));
        }
    }
    for tag in &job.tags {
        if http::is_tag_token(tag) && names.insert(tag) {
            tags.push(json!({"name": tag, "value": "true"}));
        }
    }
    let mut body = json!({
        "from": http::mailbox(&job.from),
        "to": [job.to.address],
        "subject": job.subject,
        "headers": headers,
        "tags": tags,
    });
    if let Some(text) = &job.text {
        body["text"] = json!(text);
    }
    if let Some(html) = &job.html {
        body["html"] = json!(html);
    }
    if let Some(reply_to) = &job.reply_to {
        body["reply_to"] = json!(http::mailbox(reply_to));
    }
    if !job.attachments.is_empty() {
        let attachments: Vec<Value> = job
            .attachments
            .iter()
            .map(|a| json!({"filename": a.filename, "content": a.content}))
            .collect();
        body["attachments"] = json!(attachments);
    }
    body
}

#[derive(Deserialize, Default)]
struct Answer {
    id: Option<String>,
    name: Option<String>,
    message: Option<String>,
}

fn sent(status: u16, body: &str) -> Sent {
    let answer: Answer = serde_json::from_str(body).unwrap_or_default();
    Sent {
        provider_message_id: answer.id.filter(|id| !id.trim().is_empty()),
        reply: http::reply(status, None),
    }
}

/// A non-2xx answer as one of the three kinds (the table at the top of this file).
fn classify(status: u16, body: &str) -> SendError {
    let answer = serde_json::from_str::<Answer>(body).ok();
    let name = answer.as_ref().and_then(|a| a.name.clone());
    let message = answer
        .and_then(|a| a.message)
        .unwrap_or_else(|| http::excerpt(body));
    let reason = http::reason(NAME, status, name.as_deref(), &message);
    let lower = message.to_ascii_lowercase();
    let domain_not_verified = lower.contains("domain is not verified")
        || lower.contains("verify your domain")
        || lower.contains("verify a domain");
    let testing_only = lower.contains("testing emails");
    let class = match name.as_deref().unwrap_or_default() {
        "missing_api_key" | "invalid_api_key" | "restricted_api_key" | "invalid_from_address" => {
            Class::ProviderDown
        }
        "validation_error" if matches!(status, 401 | 403) || domain_not_verified => {
            Class::ProviderDown
        }
        "validation_error" => Class::Rejected,
        "invalid_to_address" if testing_only => Class::ProviderDown,
        "invalid_to_address"
        | "missing_required_field"
        | "invalid_attachment"
        | "invalid_parameter"
        | "invalid_idempotency_key"
        | "invalid_idempotent_request" => Class::Rejected,
        "not_found" | "method_not_allowed" => Class::ProviderDown,
        "rate_limit_exceeded"
        | "daily_quota_exceeded"
        | "monthly_quota_exceeded"
        | "concurrent_idempotent_requests"
        | "internal_server_error"
        | "application_error" => Class::Transient,
        _ => Class::of_status(status),
    };
    class.error(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::http::test_support::{EMAIL_ID, JOB_ID, job, refused_url, serve_once};

    fn settings(base_url: String) -> ResendSettings {
        ResendSettings {
            base_url,
            api_key: SecretString::from("re_secret_key"),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_body_carries_our_id_the_recipient_and_everything_of_the_job() {
        let body = body(&job());
        let id = EMAIL_ID.to_string();
        assert_eq!(
            body,
            json!({
                "from": "Acme Shop <shop@acme.test>",
                "to": ["ann@example.com"],
                "subject": "Your order",
                "text": "Thanks",
                "html": "<p>Thanks</p>",
                "reply_to": "help@acme.test",
                "headers": {
                    "X-Mailtrail-Id": id,
                    "X-Campaign": "autumn",
                },
                "tags": [
                    {"name": "mailtrail_id", "value": id},
                    {"name": "order_id", "value": "A-17"},
                    {"name": "orders", "value": "true"},
                    {"name": "receipt", "value": "true"},
                ],
                "attachments": [{"filename": "r.txt", "content": "aGVsbG8="}],
            })
        );
    }

    #[test]
    fn metadata_that_does_not_fit_a_tag_travels_as_a_header_or_is_skipped() {
        let mut job = job();
        job.metadata.clear();
        job.metadata.insert("city".into(), "São Paulo".into());
        job.metadata.insert("note key".into(), "skipped".into());
        job.metadata.insert("bad".into(), "line\nbreak".into());
        job.metadata.insert(MAILTRAIL_ID.into(), "spoofed".into());
        job.metadata.insert("orders".into(), "x".into());
        job.tags = vec!["orders".into(), "two words".into()];
        let body = body(&job);
        assert_eq!(body["headers"]["X-Mailtrail-Meta-city"], "São Paulo");
        let headers = body["headers"].as_object().expect("an object");
        assert_eq!(headers.len(), 3, "{headers:?}");
        assert_eq!(
            body["tags"],
            json!([
                {"name": "mailtrail_id", "value": EMAIL_ID.to_string()},
                {"name": "orders", "value": "x"},
            ])
        );
    }

    fn kind(error: &SendError) -> &'static str {
        match error {
            SendError::Rejected { .. } => "Rejected",
            SendError::Transient(_) | SendError::Deferred(_) => "Transient",
            SendError::ProviderDown(_) => "ProviderDown",
        }
    }

    fn named(status: u16, name: &str, message: &str) -> String {
        json!({"statusCode": status, "name": name, "message": message}).to_string()
    }

    #[test]
    fn every_row_of_the_table() {
        let rows = [
            (
                401,
                named(401, "missing_api_key", "Missing API key"),
                "ProviderDown",
            ),
            (
                403,
                named(403, "invalid_api_key", "API key is invalid"),
                "ProviderDown",
            ),
            (
                401,
                named(401, "restricted_api_key", "restricted"),
                "ProviderDown",
            ),
            (
                403,
                named(
                    403,
                    "invalid_from_address",
                    "The from address is not valid.",
                ),
                "ProviderDown",
            ),
            (
                401,
                named(401, "validation_error", "API key is invalid"),
                "ProviderDown",
            ),
            (
                403,
                named(
                    403,
                    "validation_error",
                    "You can only send testing emails to your own email address (a@b.test).",
                ),
                "ProviderDown",
            ),
            (
                422,
                named(
                    422,
                    "validation_error",
                    "The acme.test domain is not verified. Please, add and verify your domain.",
                ),
                "ProviderDown",
            ),
            (
                422,
                named(422, "validation_error", "Invalid `to` field."),
                "Rejected",
            ),
            (
                400,
                named(400, "validation_error", "Invalid `subject` field."),
                "Rejected",
            ),
            (
                403,
                named(403, "invalid_to_address", "Invalid `to` address."),
                "Rejected",
            ),
            (
                403,
                named(
                    403,
                    "invalid_to_address",
                    "You can only send testing emails to your own email address.",
                ),
                "ProviderDown",
            ),
            (
                422,
                named(422, "missing_required_field", "Missing `to` field."),
                "Rejected",
            ),
            (
                422,
                named(422, "invalid_attachment", "Attachment must have content"),
                "Rejected",
            ),
            (422, named(422, "invalid_parameter", "bad"), "Rejected"),
            (
                400,
                named(400, "invalid_idempotency_key", "1-256 chars"),
                "Rejected",
            ),
            (
                409,
                named(409, "invalid_idempotent_request", "different payload"),
                "Rejected",
            ),
            (
                404,
                named(404, "not_found", "The requested endpoint does not exist."),
                "ProviderDown",
            ),
            (405, named(405, "method_not_allowed", "no"), "ProviderDown"),
            (
                429,
                named(429, "rate_limit_exceeded", "Too many requests"),
                "Transient",
            ),
            (
                429,
                named(429, "daily_quota_exceeded", "quota"),
                "Transient",
            ),
            (
                429,
                named(429, "monthly_quota_exceeded", "quota"),
                "Transient",
            ),
            (
                409,
                named(409, "concurrent_idempotent_requests", "in progress"),
                "Transient",
            ),
            (
                500,
                named(500, "internal_server_error", "oops"),
                "Transient",
            ),
            (500, named(500, "application_error", "oops"), "Transient"),
            (502, "<html>Bad Gateway</html>".into(), "Transient"),
            (408, String::new(), "Transient"),
            (403, String::new(), "ProviderDown"),
            (307, String::new(), "ProviderDown"),
            (422, named(422, "something_new", "?"), "Rejected"),
        ];
        for (status, body, expected) in rows {
            let error = classify(status, &body);
            assert_eq!(kind(&error), expected, "{status} {body}: {error:?}");
            assert!(
                error.reason().starts_with(&format!("resend {status}")),
                "{error:?}"
            );
        }
        assert_eq!(
            classify(403, &named(403, "invalid_api_key", "API key is invalid")).reason(),
            "resend 403 invalid_api_key: API key is invalid"
        );
    }

    #[tokio::test]
    async fn a_real_request_goes_out_with_the_job_id_as_idempotency_key() {
        let (url, server) =
            serve_once(200, &[], r#"{"id":"49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}"#).await;
        let resend = Resend::new(settings(url)).expect("settings are valid");
        let sent = resend.send(&job()).await.expect("sent");
        assert_eq!(
            sent.provider_message_id.as_deref(),
            Some("49a3999c-0ce1-4ea6-ab68-afcd6dc2e794")
        );
        let request = server.await.expect("the server ran");
        assert_eq!(request.request_line(), "POST /emails HTTP/1.1");
        assert_eq!(
            request.header("authorization").as_deref(),
            Some("Bearer re_secret_key")
        );
        assert_eq!(request.header("idempotency-key"), Some(JOB_ID.to_string()));
        assert_eq!(request.json(), body(&job()));
    }

    #[tokio::test]
    async fn answers_401_and_5xx_and_a_refused_connection_map_to_their_kinds() {
        let (url, _server) =
            serve_once(401, &[], &named(401, "missing_api_key", "Missing API key")).await;
        let error = Resend::new(settings(url))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("401");
        assert!(matches!(error, SendError::ProviderDown(_)), "{error:?}");

        let (url, _server) = serve_once(500, &[], &named(500, "internal_server_error", "x")).await;
        let error = Resend::new(settings(url))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("500");
        assert!(matches!(error, SendError::Transient(_)), "{error:?}");

        let error = Resend::new(settings(refused_url().await))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("refused");
        assert!(matches!(error, SendError::Transient(_)), "{error:?}");
    }
}
