//! Mailgun's send API: `POST {base}/v3/{domain}/messages`, HTTP Basic `api:<key>`,
//! `multipart/form-data`.
//!
//! The form carries `from`, `to` (the job's one recipient), `subject`, `text`, `html`,
//! `h:X-Mailtrail-Id`, `h:Reply-To`, `h:<name>` per job header, `v:mailtrail_id` and `v:<key>`
//! per metadata entry (they come back in webhooks as `user-variables`), `o:tag` for the first
//! three tags (Mailgun's limit), and one `attachment` file part per attachment. A 2xx answer
//! `{"id": "<…>", "message": "Queued. Thank you."}` gives the provider message id as returned,
//! angle brackets included (the operator normalizes).
//!
//! Mailgun's errors are `{"message": "…"}` with no error code, so the status decides:
//!
//! | Answer | Kind | Why |
//! |---|---|---|
//! | 2xx | sent | `id` is the provider message id |
//! | 400 | Rejected | the message or recipient is invalid (a missing or malformed field) |
//! | 401 | ProviderDown | no valid API key |
//! | 402 | Transient | "parameters were valid but request failed": try again |
//! | 403 | ProviderDown | the domain may not send (sandbox, disabled, not allowed) |
//! | 404 | ProviderDown | the domain is not found in the account (or the base URL is wrong) |
//! | 405, 407, 3xx | ProviderDown | the base URL or proxy is wrong |
//! | 408, 429, 5xx | Transient | timeout, rate limit, Mailgun's own failure |
//! | 413 | Rejected | the message is too large |
//! | any other 4xx | Rejected | unknown client error: the request is at fault |
//! | timeout, connection, TLS | Transient | |

use super::http::{self, Class};
use super::{MAILTRAIL_ID, MAILTRAIL_ID_HEADER, Provider, SendError, SendFuture, Sent};
use base64::Engine as _;
use mailtrail_shared::dispatch::DispatchJob;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use std::time::Duration;

const NAME: &str = "mailgun";
/// Mailgun's US API; the EU region is `https://api.eu.mailgun.net`.
pub const DEFAULT_BASE_URL: &str = "https://api.mailgun.net";
/// Mailgun keeps at most this many `o:tag` values per message.
const MAX_TAGS: usize = 3;

/// How to reach Mailgun.
#[derive(Debug, Clone)]
pub struct MailgunSettings {
    /// `https://api.mailgun.net` ([`DEFAULT_BASE_URL`]), `https://api.eu.mailgun.net`, or a test
    /// server.
    pub base_url: String,
    /// The sending domain as set up in Mailgun (`mg.example.com`).
    pub domain: String,
    /// The API key (HTTP Basic password for the user `api`).
    pub api_key: SecretString,
    /// A request's whole time.
    pub timeout: Duration,
}

/// Sends through Mailgun's messages API.
#[derive(Debug)]
pub struct Mailgun {
    client: reqwest::Client,
    url: reqwest::Url,
    api_key: SecretString,
}

impl Mailgun {
    pub fn new(settings: MailgunSettings) -> anyhow::Result<Mailgun> {
        let domain = settings.domain.trim();
        anyhow::ensure!(
            !domain.is_empty() && !domain.contains(['/', '?', '#', ' ']),
            "the Mailgun domain {:?} is not a domain name",
            settings.domain
        );
        anyhow::ensure!(
            !settings.api_key.expose_secret().trim().is_empty(),
            "the Mailgun API key is empty"
        );
        Ok(Mailgun {
            client: http::client(settings.timeout)?,
            url: http::endpoint(&settings.base_url, &format!("/v3/{domain}/messages"))?,
            api_key: settings.api_key,
        })
    }

    async fn send_job(&self, job: &DispatchJob) -> Result<Sent, SendError> {
        let form = form(fields(job)?);
        let answer = http::exchange(
            NAME,
            self.client
                .post(self.url.clone())
                .basic_auth("api", Some(self.api_key.expose_secret()))
                .multipart(form),
        )
        .await?;
        if answer.is_success() {
            return Ok(sent(answer.status, &answer.body));
        }
        Err(classify(answer.status, &answer.body))
    }
}

impl Provider for Mailgun {
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

/// One field of the form.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Text(String, String),
    File {
        filename: String,
        content_type: String,
        content: Vec<u8>,
    },
}

fn text(name: impl Into<String>, value: impl Into<String>) -> Field {
    Field::Text(name.into(), value.into())
}

/// The form's fields, in order. An attachment whose content is not base64 rejects the job.
fn fields(job: &DispatchJob) -> Result<Vec<Field>, SendError> {
    let email_id = job.email_id.to_string();
    let mut fields = vec![
        text("from", http::mailbox(&job.from)),
        text("to", http::mailbox(&job.to)),
        text("subject", &job.subject),
    ];
    if let Some(body) = &job.text {
        fields.push(text("text", body));
    }
    if let Some(body) = &job.html {
        fields.push(text("html", body));
    }
    fields.push(text(format!("h:{MAILTRAIL_ID_HEADER}"), &email_id));
    if let Some(reply_to) = &job.reply_to {
        fields.push(text("h:Reply-To", http::mailbox(reply_to)));
    }
    for (name, value) in &job.headers {
        fields.push(text(format!("h:{name}"), value));
    }
    fields.push(text(format!("v:{MAILTRAIL_ID}"), &email_id));
    for (key, value) in &job.metadata {
        if key != MAILTRAIL_ID {
            fields.push(text(format!("v:{key}"), value));
        }
    }
    for tag in job.tags.iter().take(MAX_TAGS) {
        fields.push(text("o:tag", tag));
    }
    for attachment in &job.attachments {
        let content = base64::engine::general_purpose::STANDARD
            .decode(&attachment.content)
            .map_err(|e| SendError::Rejected {
                reason: http::truncate(&format!(
                    "{NAME}: the attachment {:?} is not base64: {e}",
                    attachment.filename
                )),
                mailbox_unknown: false,
            })?;
        fields.push(Field::File {
            filename: attachment.filename.clone(),
            content_type: attachment.content_type.clone(),
            content,
        });
    }
    Ok(fields)
}

fn form(fields: Vec<Field>) -> reqwest::multipart::Form {
    fields
        .into_iter()
        .fold(reqwest::multipart::Form::new(), |form, field| match field {
            Field::Text(name, value) => form.text(name, value),
            Field::File {
                filename,
                content_type,
                content,
            } => {
                // The job's content type was validated upstream; one that the MIME parser still
                // refuses is sent as `application/octet-stream` rather than failing the job.
                let valid = reqwest::multipart::Part::text("")
                    .mime_str(&content_type)
                    .is_ok();
                let content_type = if valid {
                    content_type.as_str()
                } else {
                    "application/octet-stream"
                };
                let part = reqwest::multipart::Part::bytes(content).file_name(filename);
                match part.mime_str(content_type) {
                    Ok(part) => form.part("attachment", part),
                    Err(_) => form,
                }
            }
        })
}

#[derive(Deserialize, Default)]
struct Answer {
    id: Option<String>,
    message: Option<String>,
}

fn sent(status: u16, body: &str) -> Sent {
    let answer: Answer = serde_json::from_str(body).unwrap_or_default();
    Sent {
        provider_message_id: answer.id.filter(|id| !id.trim().is_empty()),
        reply: http::reply(status, answer.message.as_deref()),
    }
}

/// A non-2xx answer as one of the three kinds (the table at the top of this file).
fn classify(status: u16, body: &str) -> SendError {
    let message = serde_json::from_str::<Answer>(body)
        .ok()
        .and_then(|a| a.message)
        .unwrap_or_else(|| http::excerpt(body));
    let class = match status {
        402 => Class::Transient,
        413 => Class::Rejected,
        _ => Class::of_status(status),
    };
    class.error(http::reason(NAME, status, None, &message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::http::test_support::{EMAIL_ID, job, refused_url, serve_once};

    fn settings(base_url: String) -> MailgunSettings {
        MailgunSettings {
            base_url,
            domain: "mg.acme.test".into(),
            api_key: SecretString::from("key-secret-123"),
            timeout: Duration::from_secs(5),
        }
    }

    fn value<'f>(fields: &'f [Field], name: &str) -> Vec<&'f str> {
        fields
            .iter()
            .filter_map(|f| match f {
                Field::Text(n, v) if n == name => Some(v.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_form_carries_our_id_the_recipient_and_everything_of_the_job() {
        let mut job = job();
        job.tags = vec!["a".into(), "b".into(), "c".into(), "d".into()];
        job.metadata.insert(MAILTRAIL_ID.into(), "spoofed".into());
        let fields = fields(&job).expect("the form builds");
        let id = EMAIL_ID.to_string();
        assert_eq!(value(&fields, "from"), ["Acme Shop <shop@acme.test>"]);
        assert_eq!(value(&fields, "to"), ["Ann Lee <ann@example.com>"]);
        assert_eq!(value(&fields, "subject"), ["Your order"]);
        assert_eq!(value(&fields, "text"), ["Thanks"]);
        assert_eq!(value(&fields, "html"), ["<p>Thanks</p>"]);
        assert_eq!(value(&fields, "h:X-Mailtrail-Id"), [id.as_str()]);
        assert_eq!(value(&fields, "h:Reply-To"), ["help@acme.test"]);
        assert_eq!(value(&fields, "h:X-Campaign"), ["autumn"]);
        assert_eq!(value(&fields, "v:mailtrail_id"), [id.as_str()]);
        assert_eq!(value(&fields, "v:order_id"), ["A-17"]);
        assert_eq!(value(&fields, "v:note key"), ["two words"]);
        assert_eq!(value(&fields, "o:tag"), ["a", "b", "c"]);
        assert!(fields.contains(&Field::File {
            filename: "r.txt".into(),
            content_type: "text/plain".into(),
            content: b"hello".to_vec(),
        }));
    }

    #[test]
    fn an_attachment_that_is_not_base64_rejects_the_job() {
        let mut job = job();
        job.attachments[0].content = "not base64!".into();
        assert!(matches!(
            fields(&job),
            Err(SendError::Rejected {
                mailbox_unknown: false,
                ..
            })
        ));
    }

    #[test]
    fn the_success_answer_gives_the_id_as_returned() {
        let sent = sent(
            200,
            r#"{"id":"<20111114174239.25659.5817@samples.mailgun.org>","message":"Queued. Thank you."}"#,
        );
        assert_eq!(
            sent.provider_message_id.as_deref(),
            Some("<20111114174239.25659.5817@samples.mailgun.org>")
        );
        assert_eq!(sent.reply, "200 OK: Queued. Thank you.");
        assert_eq!(super::sent(200, "not json").provider_message_id, None);
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
        let rows = [
            (
                400,
                r#"{"message":"'to' parameter is not a valid address."}"#,
                "Rejected",
            ),
            (401, "Forbidden", "ProviderDown"),
            (402, r#"{"message":"Request failed"}"#, "Transient"),
            (
                403,
                r#"{"message":"Domain mg.acme.test is not allowed to send"}"#,
                "ProviderDown",
            ),
            (
                404,
                r#"{"message":"Domain not found: mg.acme.test"}"#,
                "ProviderDown",
            ),
            (405, "", "ProviderDown"),
            (407, "", "ProviderDown"),
            (301, "", "ProviderDown"),
            (408, "", "Transient"),
            (413, r#"{"message":"Request too large"}"#, "Rejected"),
            (429, r#"{"message":"Too many requests"}"#, "Transient"),
            (500, "<html>oops</html>", "Transient"),
            (503, "", "Transient"),
            (422, r#"{"message":"unknown"}"#, "Rejected"),
        ];
        for (status, body, expected) in rows {
            let error = classify(status, body);
            assert_eq!(kind(&error), expected, "{status} {body}: {error:?}");
            assert!(
                error.reason().starts_with(&format!("mailgun {status}")),
                "{error:?}"
            );
        }
        assert_eq!(
            classify(
                400,
                r#"{"message":"'to' parameter is not a valid address."}"#
            )
            .reason(),
            "mailgun 400: 'to' parameter is not a valid address."
        );
        assert!(!matches!(
            classify(400, "{}"),
            SendError::Rejected {
                mailbox_unknown: true,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_real_request_goes_out_and_200_is_sent() {
        let (url, server) = serve_once(
            200,
            &[],
            r#"{"id":"<abc@mg.acme.test>","message":"Queued. Thank you."}"#,
        )
        .await;
        let mailgun = Mailgun::new(settings(url)).expect("settings are valid");
        let sent = mailgun.send(&job()).await.expect("sent");
        assert_eq!(
            sent.provider_message_id.as_deref(),
            Some("<abc@mg.acme.test>")
        );
        let request = server.await.expect("the server ran");
        assert_eq!(
            request.request_line(),
            "POST /v3/mg.acme.test/messages HTTP/1.1"
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("api:key-secret-123");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Basic {basic}"))
        );
        assert!(
            request
                .header("content-type")
                .is_some_and(|c| c.starts_with("multipart/form-data; boundary="))
        );
        let body = request.body_text();
        assert!(
            body.contains("name=\"v:mailtrail_id\"\r\n\r\n01234567-89ab-cdef-0123-456789abcdef")
        );
        assert!(body.contains("name=\"h:X-Mailtrail-Id\""));
        assert!(body.contains("name=\"attachment\"; filename=\"r.txt\""));
        assert!(body.contains("hello"));
    }

    #[tokio::test]
    async fn answers_401_and_5xx_and_a_refused_connection_map_to_their_kinds() {
        let (url, _server) = serve_once(401, &[], "Forbidden").await;
        let error = Mailgun::new(settings(url))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("401");
        assert!(matches!(error, SendError::ProviderDown(_)), "{error:?}");
        assert!(!error.reason().contains("key-secret-123"));

        let (url, _server) = serve_once(503, &[], r#"{"message":"try later"}"#).await;
        let error = Mailgun::new(settings(url))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("503");
        assert!(matches!(error, SendError::Transient(_)), "{error:?}");

        let error = Mailgun::new(settings(refused_url().await))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("refused");
        assert!(matches!(error, SendError::Transient(_)), "{error:?}");
    }

    #[test]
    fn settings_are_checked_and_the_key_is_not_shown() {
        assert!(
            Mailgun::new(MailgunSettings {
                domain: "a/b".into(),
                ..settings(DEFAULT_BASE_URL.into())
            })
            .is_err()
        );
        assert!(Mailgun::new(settings("nope".into())).is_err());
        let shown = format!("{:?}", settings(DEFAULT_BASE_URL.into()));
        assert!(!shown.contains("key-secret-123"), "{shown}");
        let mailgun = Mailgun::new(settings(DEFAULT_BASE_URL.into())).expect("valid");
        assert!(!format!("{mailgun:?}").contains("key-secret-123"));
    }
}
