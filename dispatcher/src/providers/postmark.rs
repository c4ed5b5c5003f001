//! Postmark's send API: `POST {base}/email`, `X-Postmark-Server-Token: <token>`,
//! `Accept: application/json`, JSON.
//!
//! The body has `From` and `To` (`Name <address>`), `ReplyTo`, `Subject`, `TextBody`,
//! `HtmlBody`, `Headers` (`X-Mailtrail-Id` and the job's headers), `Tag` (the first tag: Postmark
//! keeps one), `Metadata` (`mailtrail_id` and the job's metadata), `MessageStream` (setting,
//! `outbound` by default) and `Attachments` (base64 as the job has it). Postmark keeps at most
//! 10 metadata fields, names up to 20 characters, values up to 80, no two names equal ignoring
//! case [limits from Postmark's metadata FAQ, not re-verified]: entries beyond those travel as
//! `X-Mailtrail-Meta-<key>` headers, or are skipped when the key is not a header name or the
//! value has a control character. Success is a 2xx with `ErrorCode` 0; `MessageID` is the
//! provider message id.
//!
//! Postmark's errors are `{"ErrorCode": n, "Message": "…"}`, mostly with HTTP 422; the code
//! decides, then the status:
//!
//! | Answer | Kind | Why |
//! |---|---|---|
//! | 2xx with `ErrorCode` 0 (or none) | sent | `MessageID` is the provider message id |
//! | 408, 429, 5xx (any code) | Transient | timeout, rate limit, Postmark's own failure |
//! | HTTP 401 (any code) | ProviderDown | the server token is wrong or missing |
//! | `ErrorCode` 10 | ProviderDown | bad or missing server token |
//! | `ErrorCode` 100 | Transient | Postmark maintenance |
//! | `ErrorCode` 300 naming a sender signature | ProviderDown | the From address is not a verified sender signature (account set-up) |
//! | `ErrorCode` 300 otherwise | Rejected | invalid email request (address, empty body, …) |
//! | `ErrorCode` 400 | ProviderDown | sender signature not found |
//! | `ErrorCode` 401 | ProviderDown | sender signature not confirmed |
//! | `ErrorCode` 405 | ProviderDown | not allowed to send (account issue) |
//! | `ErrorCode` 406 | Rejected, `mailbox_unknown` | inactive recipient (hard bounce, complaint or suppression) |
//! | `ErrorCode` 412 | ProviderDown | account pending approval |
//! | `ErrorCode` 413 | ProviderDown | account may not send |
//! | `ErrorCode` 429 | Transient | rate limit |
//! | any other `ErrorCode` (402 invalid JSON, 411 forbidden attachment type, …) | Rejected | the message is at fault |
//! | no `ErrorCode`: 403, 404, 405, 407, 3xx | ProviderDown | blocked in front of the API, or the base URL is wrong |
//! | no `ErrorCode`: any other 4xx | Rejected | unknown client error |
//! | timeout, connection, TLS | Transient | |

use super::http::{self, Class};
use super::{MAILTRAIL_ID, MAILTRAIL_ID_HEADER, Provider, SendError, SendFuture, Sent};
use mailtrail_shared::dispatch::DispatchJob;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const NAME: &str = "postmark";
/// Postmark's API.
pub const DEFAULT_BASE_URL: &str = "https://api.postmarkapp.com";
/// The message stream used when the settings name none.
pub const DEFAULT_MESSAGE_STREAM: &str = "outbound";
const MAX_METADATA_FIELDS: usize = 10;
const MAX_METADATA_NAME_CHARS: usize = 20;
const MAX_METADATA_VALUE_CHARS: usize = 80;

/// How to reach Postmark.
#[derive(Debug, Clone)]
pub struct PostmarkSettings {
    /// `https://api.postmarkapp.com` ([`DEFAULT_BASE_URL`]) or a test server.
    pub base_url: String,
    /// The server's API token (`X-Postmark-Server-Token`).
    pub server_token: SecretString,
    /// The message stream; `None` is [`DEFAULT_MESSAGE_STREAM`] (`outbound`).
    pub message_stream: Option<String>,
    /// A request's whole time.
    pub timeout: Duration,
}

/// Sends through Postmark's email API.
#[derive(Debug)]
pub struct Postmark {
    client: reqwest::Client,
    url: reqwest::Url,
    server_token: SecretString,
    message_stream: String,
}

impl Postmark {
    pub fn new(settings: PostmarkSettings) -> anyhow::Result<Postmark> {
        anyhow::ensure!(
            !settings.server_token.expose_secret().trim().is_empty(),
            "the Postmark server token is empty"
        );
        let message_stream = settings
            .message_stream
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| DEFAULT_MESSAGE_STREAM.to_owned());
        anyhow::ensure!(
            !message_stream.is_empty(),
            "the Postmark message stream is empty"
        );
        Ok(Postmark {
            client: http::client(settings.timeout)?,
            url: http::endpoint(&settings.base_url, "/email")?,
            server_token: settings.server_token,
            message_stream,
        })
    }

    async fn send_job(&self, job: &DispatchJob) -> Result<Sent, SendError> {
        let answer = http::exchange(
            NAME,
            self.client
                .post(self.url.clone())
                .header("X-Postmark-Server-Token", self.server_token.expose_secret())
                .header(reqwest::header::ACCEPT, "application/json")
                .json(&body(job, &self.message_stream)),
        )
        .await?;
        if answer.is_success() {
            return success(answer.status, &answer.body);
        }
        Err(classify(answer.status, &answer.body))
    }
}

impl Provider for Postmark {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, job: &'a DispatchJob) -> SendFuture<'a> {
        Box::pin(async move {
            self.send_job(job)
                .await
                .map_err(|e| http::scrub(e, &[self.server_token.expose_secret()]))
        })
    }
}

/// The email request body.
fn body(job: &DispatchJob, message_stream: &str) -> Value {
    let email_id = job.email_id.to_string();
    let mut headers = vec![json!({"Name": MAILTRAIL_ID_HEADER, "Value": email_id})];
    for (name, value) in &job.headers {
        headers.push(json!({"Name": name, "Value": value}));
    }
    let mut metadata = Map::new();
    metadata.insert(MAILTRAIL_ID.into(), json!(email_id));
    let mut names: BTreeSet<String> = BTreeSet::from([MAILTRAIL_ID.to_owned()]);
    for (key, value) in &job.metadata {
        if key == MAILTRAIL_ID {
            continue;
        }
        let fits = metadata.len() < MAX_METADATA_FIELDS
            && key.chars().count() <= MAX_METADATA_NAME_CHARS
            && value.chars().count() <= MAX_METADATA_VALUE_CHARS
            && !names.contains(&key.to_lowercase());
        if fits {
            names.insert(key.to_lowercase());
            metadata.insert(key.clone(), json!(value));
        } else if let Some((name, value)) = http::meta_header(key, value) {
            headers.push(json!({"Name": name, "Value": value}));
        }
    }
    let mut body = json!({
        "From": http::mailbox(&job.from),
        "To": http::mailbox(&job.to),
        "Subject": job.subject,
        "Headers": headers,
        "Metadata": metadata,
        "MessageStream": message_stream,
    });
    if let Some(reply_to) = &job.reply_to {
        body["ReplyTo"] = json!(http::mailbox(reply_to));
    }
    if let Some(text) = &job.text {
        body["TextBody"] = json!(text);
    }
    if let Some(html) = &job.html {
        body["HtmlBody"] = json!(html);
    }
    if let Some(tag) = job.tags.first() {
        body["Tag"] = json!(tag);
    }
    if !job.attachments.is_empty() {
        let attachments: Vec<Value> = job
            .attachments
            .iter()
            .map(|a| json!({"Name": a.filename, "Content": a.content, "ContentType": a.content_type}))
            .collect();
        body["Attachments"] = json!(attachments);
    }
    body
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    error_code: Option<i64>,
    message: Option<String>,
    #[serde(rename = "MessageID")]
    message_id: Option<String>,
}

/// A 2xx answer: sent when `ErrorCode` is 0 or absent, else classified by the code.
fn success(status: u16, body: &str) -> Result<Sent, SendError> {
    let answer: Answer = serde_json::from_str(body).unwrap_or_default();
    match answer.error_code {
        Some(code) if code != 0 => Err(classify(status, body)),
        _ => Ok(Sent {
            provider_message_id: answer.message_id.filter(|id| !id.trim().is_empty()),
            reply: http::reply(status, answer.message.as_deref()),
        }),
    }
}

/// A failed answer (a non-2xx, or a 2xx with a non-zero `ErrorCode`) as one of the three kinds
/// (the table at the top of this file).
fn classify(status: u16, body: &str) -> SendError {
    let answer = serde_json::from_str::<Answer>(body).ok();
    let code = answer.as_ref().and_then(|a| a.error_code);
    let message = answer
        .and_then(|a| a.message)
        .unwrap_or_else(|| http::excerpt(body));
    let name = code.map(|c| format!("ErrorCode {c}"));
    let reason = http::reason(NAME, status, name.as_deref(), &message);
    let by_status = Class::of_status(status);
    if by_status == Class::Transient && !http::is_success(status) {
        return SendError::Transient(reason);
    }
    if status == 401 {
        return SendError::ProviderDown(reason);
    }
    let class = match code {
        Some(10 | 400 | 401 | 405 | 412 | 413) => Class::ProviderDown,
        Some(100 | 429) => Class::Transient,
        Some(300) if message.to_ascii_lowercase().contains("sender signature") => {
            Class::ProviderDown
        }
        Some(406) => {
            return SendError::Rejected {
                reason,
                mailbox_unknown: true,
            };
        }
        Some(_) => Class::Rejected,
        None if http::is_success(status) => Class::Rejected,
        None => by_status,
    };
    class.error(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::http::test_support::{EMAIL_ID, job, refused_url, serve_once};

    fn settings(base_url: String) -> PostmarkSettings {
        PostmarkSettings {
            base_url,
            server_token: SecretString::from("pm-server-token"),
            message_stream: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_body_carries_our_id_the_recipient_and_everything_of_the_job() {
        let body = body(&job(), "outbound");
        let id = EMAIL_ID.to_string();
        assert_eq!(
            body,
            json!({
                "From": "Acme Shop <shop@acme.test>",
                "To": "Ann Lee <ann@example.com>",
                "ReplyTo": "help@acme.test",
                "Subject": "Your order",
                "TextBody": "Thanks",
                "HtmlBody": "<p>Thanks</p>",
                "Headers": [
                    {"Name": "X-Mailtrail-Id", "Value": id},
                    {"Name": "X-Campaign", "Value": "autumn"},
                ],
                "Tag": "orders",
                "Metadata": {"mailtrail_id": id, "order_id": "A-17", "note key": "two words"},
                "MessageStream": "outbound",
                "Attachments": [{"Name": "r.txt", "Content": "aGVsbG8=", "ContentType": "text/plain"}],
            })
        );
    }

    #[test]
    fn metadata_beyond_postmarks_limits_travels_as_headers() {
        let mut job = job();
        job.metadata.clear();
        job.metadata
            .insert("a_very_long_metadata_key".into(), "v".into());
        job.metadata.insert("long".into(), "x".repeat(81));
        job.metadata.insert("Order".into(), "1".into());
        job.metadata.insert("order".into(), "2".into());
        job.metadata.insert(MAILTRAIL_ID.into(), "spoofed".into());
        for n in 0..12 {
            job.metadata.insert(format!("k{n:02}"), n.to_string());
        }
        let body = body(&job, "broadcast");
        let metadata = body["Metadata"].as_object().expect("an object");
        assert_eq!(metadata.len(), MAX_METADATA_FIELDS);
        assert_eq!(metadata["mailtrail_id"], EMAIL_ID.to_string());
        assert_eq!(metadata["Order"], "1");
        assert!(!metadata.contains_key("order"));
        let headers = body["Headers"].as_array().expect("a list");
        for name in [
            "X-Mailtrail-Meta-a_very_long_metadata_key",
            "X-Mailtrail-Meta-long",
            "X-Mailtrail-Meta-order",
            "X-Mailtrail-Meta-k11",
        ] {
            assert!(
                headers.iter().any(|h| h["Name"] == name),
                "{name}: {headers:?}"
            );
        }
        assert_eq!(body["MessageStream"], "broadcast");
    }

    #[test]
    fn success_needs_error_code_zero() {
        let sent = success(
            200,
            r#"{"To":"ann@example.com","SubmittedAt":"2026-01-01T00:00:00Z","MessageID":"b7bc2f4a-e38e-4336-af7d-e6c392c2f817","ErrorCode":0,"Message":"OK"}"#,
        )
        .expect("sent");
        assert_eq!(
            sent.provider_message_id.as_deref(),
            Some("b7bc2f4a-e38e-4336-af7d-e6c392c2f817")
        );
        assert_eq!(sent.reply, "200 OK: OK");
        let error = success(200, r#"{"ErrorCode":406,"Message":"inactive"}"#).expect_err("406");
        assert_eq!(
            error,
            SendError::Rejected {
                reason: "postmark 200 ErrorCode 406: inactive".into(),
                mailbox_unknown: true
            }
        );
    }

    fn kind(error: &SendError) -> &'static str {
        match error {
            SendError::Rejected {
                mailbox_unknown: true,
                ..
            } => "Rejected+mailbox_unknown",
            SendError::Rejected { .. } => "Rejected",
            SendError::Transient(_) | SendError::Deferred(_) => "Transient",
            SendError::ProviderDown(_) => "ProviderDown",
        }
    }

    fn coded(code: i64, message: &str) -> String {
        json!({"ErrorCode": code, "Message": message}).to_string()
    }

    #[test]
    fn every_row_of_the_table() {
        let rows = [
            (500, coded(0, "boom"), "Transient"),
            (503, coded(100, "Maintenance"), "Transient"),
            (429, coded(429, "Rate limit exceeded"), "Transient"),
            (408, String::new(), "Transient"),
            (401, coded(10, "Bad or missing API token"), "ProviderDown"),
            (401, String::new(), "ProviderDown"),
            (422, coded(10, "Bad or missing API token"), "ProviderDown"),
            (422, coded(100, "Maintenance"), "Transient"),
            (
                422,
                coded(
                    300,
                    "Invalid 'From' address: 'a@b.test' is not a verified sender signature.",
                ),
                "ProviderDown",
            ),
            (422, coded(300, "Invalid 'To' address: 'nope'."), "Rejected"),
            (
                422,
                coded(400, "Sender signature not found"),
                "ProviderDown",
            ),
            (
                422,
                coded(401, "Sender signature not confirmed"),
                "ProviderDown",
            ),
            (422, coded(405, "Not allowed to send"), "ProviderDown"),
            (
                422,
                coded(406, "Inactive recipient"),
                "Rejected+mailbox_unknown",
            ),
            (422, coded(412, "Account is pending"), "ProviderDown"),
            (422, coded(413, "Account may not send"), "ProviderDown"),
            (422, coded(429, "Rate limit exceeded"), "Transient"),
            (422, coded(402, "Invalid JSON"), "Rejected"),
            (422, coded(411, "Forbidden attachment type"), "Rejected"),
            (422, coded(9999, "Something new"), "Rejected"),
            (403, "<html>403 Forbidden</html>".into(), "ProviderDown"),
            (404, String::new(), "ProviderDown"),
            (405, String::new(), "ProviderDown"),
            (301, String::new(), "ProviderDown"),
            (400, "not json".into(), "Rejected"),
        ];
        for (status, body, expected) in rows {
            let error = classify(status, &body);
            assert_eq!(kind(&error), expected, "{status} {body}: {error:?}");
            assert!(
                error.reason().starts_with(&format!("postmark {status}")),
                "{error:?}"
            );
        }
        assert_eq!(
            classify(
                422,
                &coded(
                    406,
                    "You tried to send to recipient(s) that have been marked as inactive."
                )
            )
            .reason(),
            "postmark 422 ErrorCode 406: You tried to send to recipient(s) that have been marked as inactive."
        );
    }

    #[tokio::test]
    async fn a_real_request_goes_out_and_200_is_sent() {
        let (url, server) = serve_once(
            200,
            &[],
            r#"{"To":"ann@example.com","MessageID":"pm-1","ErrorCode":0,"Message":"OK"}"#,
        )
        .await;
        let postmark = Postmark::new(settings(url)).expect("settings are valid");
        let sent = postmark.send(&job()).await.expect("sent");
        assert_eq!(sent.provider_message_id.as_deref(), Some("pm-1"));
        let request = server.await.expect("the server ran");
        assert_eq!(request.request_line(), "POST /email HTTP/1.1");
        assert_eq!(
            request.header("x-postmark-server-token").as_deref(),
            Some("pm-server-token")
        );
        assert_eq!(
            request.header("accept").as_deref(),
            Some("application/json")
        );
        assert_eq!(request.json(), body(&job(), DEFAULT_MESSAGE_STREAM));
    }

    #[tokio::test]
    async fn answers_401_and_5xx_and_a_refused_connection_map_to_their_kinds() {
        let (url, _server) = serve_once(401, &[], &coded(10, "Bad or missing API token")).await;
        let error = Postmark::new(settings(url))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("401");
        assert!(matches!(error, SendError::ProviderDown(_)), "{error:?}");

        let (url, _server) = serve_once(500, &[], "").await;
        let error = Postmark::new(settings(url))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("500");
        assert!(matches!(error, SendError::Transient(_)), "{error:?}");

        let (url, _server) = serve_once(422, &[], &coded(406, "Inactive recipient")).await;
        let error = Postmark::new(settings(url))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("422");
        assert!(
            matches!(
                error,
                SendError::Rejected {
                    mailbox_unknown: true,
                    ..
                }
            ),
            "{error:?}"
        );

        let error = Postmark::new(settings(refused_url().await))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("refused");
        assert!(matches!(error, SendError::Transient(_)), "{error:?}");
    }

    #[test]
    fn an_empty_message_stream_is_refused() {
        assert!(
            Postmark::new(PostmarkSettings {
                message_stream: Some(" ".into()),
                ..settings(DEFAULT_BASE_URL.into())
            })
            .is_err()
        );
    }
}
