//! Amazon SES v2's send API: `POST {base}/v2/email/outbound-emails` (base
//! `https://email.{region}.amazonaws.com` unless set), signed with AWS Signature Version 4 for
//! the service `ses` in the configured region, JSON.
//!
//! The body is a `Simple` message: `FromEmailAddress`, `Destination.ToAddresses` (the job's one
//! recipient), `ReplyToAddresses`, `Content.Simple` with `Subject`, `Body.Text`, `Body.Html`
//! (UTF-8), `Headers` (`X-Mailtrail-Id` and the job's headers) and `Attachments` (`FileName`,
//! `ContentType`, base64 `RawContent` as the job has it), `EmailTags` and, when set,
//! `ConfigurationSetName` (what publishes events to SNS). SES takes only printable ASCII in
//! header values and addresses: non-ASCII header values and display names are sent as RFC 2047
//! encoded words, a non-ASCII address in its canonical (IDNA) form. `EmailTags` hold
//! `mailtrail_id` first (webhooks read it from `mail.tags`); tag names and values may only use
//! ASCII letters, digits, `_` and `-`, so a metadata entry that fits becomes a tag, one that does
//! not travels as the header `X-Mailtrail-Meta-<key>` (skipped when the key is not a header name
//! or the value has a control character), and a job tag that fits becomes
//! `{Name: tag, Value: "true"}` unless that name is taken (others are skipped). A 2xx answer
//! `{"MessageId": "…"}` gives the provider message id.
//!
//! SES's errors name their type in the `x-amzn-ErrorType` header or the JSON `__type`/`code`
//! (`com.amazonaws…#MessageRejected` and `MessageRejected:http://…` both read as
//! `MessageRejected`); the type decides, then the status:
//!
//! | Answer | Kind | Why |
//! |---|---|---|
//! | 2xx | sent | `MessageId` is the provider message id |
//! | `AccessDeniedException`, `SignatureDoesNotMatch`, `InvalidClientTokenId`, `UnrecognizedClientException`, `IncompleteSignature`, `MissingAuthenticationToken`, `InvalidSignatureException`, `ExpiredToken` (403, 400) | ProviderDown | wrong, revoked or expired credentials, or no permission to send |
//! | `AccountSuspendedException`, `SendingPausedException` | ProviderDown | the account may not send |
//! | `MailFromDomainNotVerifiedException` | ProviderDown | the MAIL FROM domain is not verified |
//! | `NotFoundException` (404) | ProviderDown | the configuration set does not exist |
//! | `MessageRejected` saying an identity "is not verified" | ProviderDown | an unverified sender, or the account is in the sandbox |
//! | `MessageRejected` otherwise (400) | Rejected | SES refuses this message |
//! | `BadRequestException` (400) | Rejected | a field of the message is invalid |
//! | `TooManyRequestsException` (429), `LimitExceededException`, `ThrottlingException`, `Throttling` | Transient | sending rate or quota |
//! | `InternalFailure`, `ServiceUnavailable`, any 5xx | Transient | SES's own failure |
//! | other or no type: 408, 429, 5xx | Transient | |
//! | other or no type: 401, 403, 404, 405, 407, 3xx | ProviderDown | |
//! | other or no type: any other 4xx | Rejected | unknown client error |
//! | timeout, connection, TLS | Transient | |

use super::http::{self, Class};
use super::{MAILTRAIL_ID, MAILTRAIL_ID_HEADER, Provider, SendError, SendFuture, Sent};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use mailtrail_shared::address::Address;
use mailtrail_shared::dispatch::DispatchJob;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

const NAME: &str = "ses";
/// The SigV4 signing name of SES (v1 and v2).
const SIGNING_NAME: &str = "ses";
const PATH: &str = "/v2/email/outbound-emails";
/// SES takes header values up to this many characters.
const MAX_HEADER_VALUE_CHARS: usize = 870;

/// How to reach SES.
#[derive(Debug, Clone)]
pub struct SesSettings {
    /// `None` is the region's endpoint, `https://email.{region}.amazonaws.com`; a test server
    /// otherwise.
    pub base_url: Option<String>,
    /// The AWS region (`eu-west-1`); signed into every request.
    pub region: String,
    /// The access key id (`AKIA…`); not secret, shown in the signature.
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    /// For temporary credentials (`ASIA…` key ids).
    pub session_token: Option<SecretString>,
    /// The configuration set that publishes events (needed for webhooks), if any.
    pub configuration_set: Option<String>,
    /// A request's whole time.
    pub timeout: Duration,
}

/// The regional SES endpoint.
pub fn default_base_url(region: &str) -> String {
    format!("https://email.{region}.amazonaws.com")
}

/// Sends through SES v2's `SendEmail`.
#[derive(Debug)]
pub struct Ses {
    client: reqwest::Client,
    url: reqwest::Url,
    region: String,
    /// Its `Debug` hides the secret key and the session token.
    credentials: Credentials,
    configuration_set: Option<String>,
}

impl Ses {
    pub fn new(settings: SesSettings) -> anyhow::Result<Ses> {
        let region = settings.region.trim().to_owned();
        anyhow::ensure!(
            !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "the SES region {:?} is not a region name (like eu-west-1)",
            settings.region
        );
        let access_key_id = settings.access_key_id.trim().to_owned();
        anyhow::ensure!(
            !access_key_id.is_empty() && access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "the SES access key id {:?} is not an access key id",
            settings.access_key_id
        );
        anyhow::ensure!(
            !settings.secret_access_key.expose_secret().is_empty(),
            "the SES secret access key is empty"
        );
        let base_url = settings
            .base_url
            .unwrap_or_else(|| default_base_url(&region));
        let credentials = Credentials::new(
            access_key_id,
            settings.secret_access_key.expose_secret().to_owned(),
            settings
                .session_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            None,
            "mailtrail-dispatcher settings",
        );
        Ok(Ses {
            client: http::client(settings.timeout)?,
            url: http::endpoint(&base_url, PATH)?,
            region,
            credentials,
            configuration_set: settings
                .configuration_set
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        })
    }

    /// The SigV4 headers (`authorization`, `x-amz-date`, and `x-amz-security-token` with a
    /// session token) for a POST of `body` (sent as `content-type: application/json`) at `time`.
    fn signature(&self, body: &[u8], time: SystemTime) -> Result<Vec<(String, String)>, SendError> {
        let fault = |what: &str, e: &dyn std::fmt::Display| {
            SendError::ProviderDown(http::truncate(&format!("{NAME}: {what}: {e}")))
        };
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SIGNING_NAME)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| fault("the signing parameters are incomplete", &e))?
            .into();
        let request = SignableRequest::new(
            "POST",
            self.url.as_str(),
            [("content-type", "application/json")].into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| fault("the request cannot be signed", &e))?;
        let (instructions, _signature) = sign(request, &params)
            .map_err(|e| fault("signing failed", &e))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect())
    }

    async fn send_job(&self, job: &DispatchJob) -> Result<Sent, SendError> {
        let body =
            serde_json::to_vec(&body(job, self.configuration_set.as_deref())).map_err(|e| {
                SendError::Rejected {
                    reason: http::truncate(&format!("{NAME}: the request cannot be encoded: {e}")),
                    mailbox_unknown: false,
                }
            })?;
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in self.signature(&body, SystemTime::now())? {
            request = request.header(name, value);
        }
        let answer = http::exchange(NAME, request.body(body)).await?;
        if answer.is_success() {
            return Ok(sent(answer.status, &answer.body));
        }
        let error_type = answer.header("x-amzn-errortype");
        Err(sandbox_recipient(
            classify(answer.status, error_type.as_deref(), &answer.body),
            job,
        ))
    }
}

impl Provider for Ses {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, job: &'a DispatchJob) -> SendFuture<'a> {
        Box::pin(async move {
            self.send_job(job).await.map_err(|e| {
                let mut secrets = vec![self.credentials.secret_access_key()];
                secrets.extend(self.credentials.session_token());
                http::scrub(e, &secrets)
            })
        })
    }
}

/// `text` as RFC 2047 encoded words when it is not printable ASCII, as is otherwise.
fn ascii_header_value(text: &str) -> String {
    if text.bytes().all(|b| (32..=126).contains(&b)) {
        return text.to_owned();
    }
    // At most 45 bytes of UTF-8 per word: 60 base64 characters, 72 in all (RFC 2047: ≤ 75).
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(encoded_word(&chunk));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(encoded_word(&chunk));
    }
    words.join(" ")
}

fn encoded_word(text: &str) -> String {
    format!(
        "=?UTF-8?B?{}?=",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

/// A mailbox as SES takes it: ASCII only.
fn mailbox(address: &Address) -> String {
    let mut ascii = address.clone();
    if !ascii.address.is_ascii() {
        ascii.address = address.canonical.clone();
    }
    match address.display_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() && !name.is_ascii() => {
            format!("{} <{}>", ascii_header_value(name), ascii.address)
        }
        _ => http::mailbox(&ascii),
    }
}

fn header(name: &str, value: &str) -> Value {
    json!({"Name": name, "Value": ascii_header_value(value)})
}

/// The `SendEmail` request body.
fn body(job: &DispatchJob, configuration_set: Option<&str>) -> Value {
    let email_id = job.email_id.to_string();
    let mut headers = vec![header(MAILTRAIL_ID_HEADER, &email_id)];
    for (name, value) in &job.headers {
        headers.push(header(name, value));
    }
    let mut tags = vec![json!({"Name": MAILTRAIL_ID, "Value": email_id})];
    let mut names: BTreeSet<&str> = BTreeSet::from([MAILTRAIL_ID]);
    for (key, value) in &job.metadata {
        if key == MAILTRAIL_ID {
            continue;
        }
        if http::is_tag_token(key) && http::is_tag_token(value) {
            names.insert(key);
            tags.push(json!({"Name": key, "Value": value}));
        } else if let Some((name, value)) = http::meta_header(key, value)
            .filter(|(_, v)| ascii_header_value(v).chars().count() <= MAX_HEADER_VALUE_CHARS)
        {
            headers.push(header(&name, &value));
        }
    }
    for tag in &job.tags {
        if http::is_tag_token(tag) && names.insert(tag) {
            tags.push(json!({"Name": tag, "Value": "true"}));
        }
    }
    let utf8 = |data: &str| json!({"Data": data, "Charset": "UTF-8"});
    let mut message_body = json!({});
    if let Some(text) = &job.text {
        message_body["Text"] = utf8(text);
    }
    if let Some(html) = &job.html {
        message_body["Html"] = utf8(html);
    }
    let mut simple = json!({
        "Subject": utf8(&job.subject),
        "Body": message_body,
        "Headers": headers,
    });
    if !job.attachments.is_empty() {
        let attachments: Vec<Value> = job
            .attachments
            .iter()
            .map(|a| {
                json!({
                    "FileName": a.filename,
                    "ContentType": a.content_type,
                    "RawContent": a.content,
                    "ContentDisposition": "ATTACHMENT",
                    "ContentTransferEncoding": "BASE64",
                })
            })
            .collect();
        simple["Attachments"] = json!(attachments);
    }
    let mut body = json!({
        "FromEmailAddress": mailbox(&job.from),
        "Destination": {"ToAddresses": [mailbox(&job.to)]},
        "Content": {"Simple": simple},
        "EmailTags": tags,
    });
    if let Some(reply_to) = &job.reply_to {
        body["ReplyToAddresses"] = json!([mailbox(reply_to)]);
    }
    if let Some(set) = configuration_set {
        body["ConfigurationSetName"] = json!(set);
    }
    body
}

#[derive(Deserialize, Default)]
struct Answer {
    #[serde(rename = "MessageId")]
    message_id: Option<String>,
    #[serde(rename = "__type")]
    kind: Option<String>,
    code: Option<String>,
    #[serde(rename = "Code")]
    code_upper: Option<String>,
    message: Option<String>,
    #[serde(rename = "Message")]
    message_upper: Option<String>,
}

fn sent(status: u16, body: &str) -> Sent {
    let answer: Answer = serde_json::from_str(body).unwrap_or_default();
    Sent {
        provider_message_id: answer.message_id.filter(|id| !id.trim().is_empty()),
        reply: http::reply(status, None),
    }
}

/// The bare error type: `MessageRejected` from `MessageRejected:http://…` or
/// `com.amazonaws.sesv2#MessageRejected`.
fn bare_type(raw: &str) -> &str {
    let before_colon = raw.split(':').next().unwrap_or(raw);
    before_colon
        .rsplit('#')
        .next()
        .unwrap_or(before_colon)
        .trim()
}

/// A non-2xx answer as one of the three kinds (the table at the top of this file);
/// `error_type` is the `x-amzn-ErrorType` header, if any.
fn classify(status: u16, error_type: Option<&str>, body: &str) -> SendError {
    let answer = serde_json::from_str::<Answer>(body).ok();
    let name = error_type
        .map(str::to_owned)
        .or_else(|| {
            answer.as_ref().and_then(|a| {
                a.kind
                    .clone()
                    .or_else(|| a.code.clone())
                    .or_else(|| a.code_upper.clone())
            })
        })
        .map(|raw| bare_type(&raw).to_owned())
        .filter(|n| !n.is_empty());
    let message = answer
        .and_then(|a| a.message.or(a.message_upper))
        .unwrap_or_else(|| http::excerpt(body));
    let reason = http::reason(NAME, status, name.as_deref(), &message);
    let class = match name.as_deref().unwrap_or_default() {
        "AccessDeniedException"
        | "AccessDenied"
        | "SignatureDoesNotMatch"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "IncompleteSignature"
        | "IncompleteSignatureException"
        | "MissingAuthenticationToken"
        | "MissingAuthenticationTokenException"
        | "InvalidSignatureException"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "AccountSuspendedException"
        | "SendingPausedException"
        | "MailFromDomainNotVerifiedException"
        | "NotFoundException" => Class::ProviderDown,
        "MessageRejected" if message.to_ascii_lowercase().contains("not verified") => {
            Class::ProviderDown
        }
        "MessageRejected" | "BadRequestException" => Class::Rejected,
        "TooManyRequestsException"
        | "LimitExceededException"
        | "ThrottlingException"
        | "Throttling"
        | "InternalFailure"
        | "ServiceUnavailable" => Class::Transient,
        _ => Class::of_status(status),
    };
    class.error(reason)
}

/// A sandbox account may send only to verified addresses: "not verified" naming the recipient
/// (and not our sender) is about this message, and must not mark SES down for everyone else.
fn sandbox_recipient(error: SendError, job: &DispatchJob) -> SendError {
    match error {
        SendError::ProviderDown(reason)
            if reason.to_ascii_lowercase().contains("not verified")
                && reason.contains(&job.to.address)
                && !reason.contains(&job.from.address) =>
        {
            SendError::Rejected {
                reason,
                mailbox_unknown: false,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::http::test_support::{EMAIL_ID, job, refused_url, serve_once};

    #[test]
    fn an_unverified_recipient_in_the_sandbox_is_the_message_s_fault_an_unverified_sender_is_ours()
    {
        let job = job();
        let about = |identity: &str| {
            SendError::ProviderDown(format!(
                "ses 400 MessageRejected: Email address is not verified. The following identities \
                 failed the check in region US-EAST-1: {identity}"
            ))
        };
        assert!(matches!(
            sandbox_recipient(about(&job.to.address), &job),
            SendError::Rejected { .. }
        ));
        assert!(matches!(
            sandbox_recipient(about(&job.from.address), &job),
            SendError::ProviderDown(_)
        ));
        let transient = SendError::Transient("ses 503".into());
        assert_eq!(sandbox_recipient(transient.clone(), &job), transient);
    }
    use mailtrail_shared::address::parse_address;

    fn settings(base_url: Option<String>) -> SesSettings {
        SesSettings {
            base_url,
            region: "eu-west-1".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
            configuration_set: Some("mailtrail-events".into()),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_body_carries_our_id_the_recipient_and_everything_of_the_job() {
        let body = body(&job(), Some("mailtrail-events"));
        let id = EMAIL_ID.to_string();
        assert_eq!(
            body,
            json!({
                "FromEmailAddress": "Acme Shop <shop@acme.test>",
                "Destination": {"ToAddresses": ["Ann Lee <ann@example.com>"]},
                "ReplyToAddresses": ["help@acme.test"],
                "Content": {"Simple": {
                    "Subject": {"Data": "Your order", "Charset": "UTF-8"},
                    "Body": {
                        "Text": {"Data": "Thanks", "Charset": "UTF-8"},
                        "Html": {"Data": "<p>Thanks</p>", "Charset": "UTF-8"},
                    },
                    "Headers": [
                        {"Name": "X-Mailtrail-Id", "Value": id},
                        {"Name": "X-Campaign", "Value": "autumn"},
                    ],
                    "Attachments": [{
                        "FileName": "r.txt",
                        "ContentType": "text/plain",
                        "RawContent": "aGVsbG8=",
                        "ContentDisposition": "ATTACHMENT",
                        "ContentTransferEncoding": "BASE64",
                    }],
                }},
                "EmailTags": [
                    {"Name": "mailtrail_id", "Value": id},
                    {"Name": "order_id", "Value": "A-17"},
                    {"Name": "orders", "Value": "true"},
                    {"Name": "receipt", "Value": "true"},
                ],
                "ConfigurationSetName": "mailtrail-events",
            })
        );
        assert!(
            super::body(&job(), None)
                .get("ConfigurationSetName")
                .is_none()
        );
    }

    #[test]
    fn non_ascii_names_and_values_are_encoded_and_odd_metadata_becomes_headers() {
        let mut job = job();
        job.from = parse_address("Café Zoë <shop@acme.test>").expect("address");
        job.metadata.insert("city".into(), "São Paulo".into());
        let body = body(&job, None);
        let from = body["FromEmailAddress"].as_str().expect("a string");
        assert!(
            from.starts_with("=?UTF-8?B?") && from.ends_with("?= <shop@acme.test>"),
            "{from}"
        );
        assert!(from.is_ascii());
        let headers = body["Content"]["Simple"]["Headers"]
            .as_array()
            .expect("a list");
        let city = headers
            .iter()
            .find(|h| h["Name"] == "X-Mailtrail-Meta-city")
            .expect("the city header");
        assert_eq!(city["Value"], encoded_word("São Paulo"));
        // "note key" is not a header name: skipped.
        assert_eq!(headers.len(), 3, "{headers:?}");
        let long = ascii_header_value(&"é".repeat(100));
        assert!(long.split(' ').all(|w| w.len() <= 75), "{long}");
    }

    #[test]
    fn the_signature_names_the_key_the_date_the_region_and_ses() {
        let ses = Ses::new(settings(Some("http://127.0.0.1:9".into()))).expect("valid");
        // 2026-01-02T03:04:05Z
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045);
        let headers = ses.signature(b"{}", time).expect("signed");
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let authorization = get("authorization").expect("an authorization header");
        assert!(
            authorization.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260102/eu-west-1/ses/aws4_request, "
            ),
            "{authorization}"
        );
        assert!(authorization.contains("SignedHeaders=content-type;host;x-amz-date"));
        assert_eq!(get("x-amz-date"), Some("20260102T030405Z"));
        assert_eq!(get("x-amz-security-token"), None);
        assert!(!authorization.contains("wJalrXUtnFEMI"));
        // The same request at the same time signs the same; another body does not.
        assert_eq!(ses.signature(b"{}", time).expect("signed"), headers);
        assert_ne!(ses.signature(b"{ }", time).expect("signed"), headers);

        let with_token = Ses::new(SesSettings {
            session_token: Some(SecretString::from("session-token-value")),
            ..settings(None)
        })
        .expect("valid");
        let headers = with_token.signature(b"{}", time).expect("signed");
        assert!(
            headers
                .iter()
                .any(|(n, v)| n == "x-amz-security-token" && v == "session-token-value")
        );
        assert_eq!(
            with_token.url.as_str(),
            "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"
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
        let typed = |t: &str, m: &str| json!({"__type": t, "message": m}).to_string();
        let rows: Vec<(u16, Option<&str>, String, &str)> = vec![
            (403, None, typed("AccessDeniedException", "not authorized"), "ProviderDown"),
            (403, Some("SignatureDoesNotMatch:http://internal.amazon.com/coral/"), json!({"message": "The request signature we calculated does not match"}).to_string(), "ProviderDown"),
            (403, Some("InvalidClientTokenId"), String::new(), "ProviderDown"),
            (400, None, typed("com.amazon.coral.service#UnrecognizedClientException", "bad token"), "ProviderDown"),
            (400, None, typed("IncompleteSignatureException", "x"), "ProviderDown"),
            (403, None, typed("MissingAuthenticationTokenException", "x"), "ProviderDown"),
            (403, None, typed("InvalidSignatureException", "x"), "ProviderDown"),
            (400, None, typed("ExpiredTokenException", "expired"), "ProviderDown"),
            (400, None, typed("AccountSuspendedException", "suspended"), "ProviderDown"),
            (400, None, typed("SendingPausedException", "paused"), "ProviderDown"),
            (400, None, typed("MailFromDomainNotVerifiedException", "not verified"), "ProviderDown"),
            (404, None, typed("NotFoundException", "Configuration set <x> does not exist."), "ProviderDown"),
            (400, Some("MessageRejected"), json!({"message": "Email address is not verified. The following identities failed the check in region EU-WEST-1: shop@acme.test"}).to_string(), "ProviderDown"),
            (400, None, typed("com.amazonaws.sesv2#MessageRejected", "Illegal address"), "Rejected"),
            (400, None, typed("BadRequestException", "Missing final '@domain'"), "Rejected"),
            (429, None, typed("TooManyRequestsException", "slow down"), "Transient"),
            (400, None, typed("LimitExceededException", "limit"), "Transient"),
            (400, None, json!({"Code": "Throttling", "Message": "Maximum sending rate exceeded."}).to_string(), "Transient"),
            (400, None, typed("ThrottlingException", "x"), "Transient"),
            (500, None, typed("InternalFailure", "x"), "Transient"),
            (503, Some("ServiceUnavailable"), String::new(), "Transient"),
            (502, None, "<html>bad gateway</html>".into(), "Transient"),
            (408, None, String::new(), "Transient"),
            (403, None, "{}".into(), "ProviderDown"),
            (301, None, String::new(), "ProviderDown"),
            (400, None, typed("SomethingNewException", "?"), "Rejected"),
        ];
        for (status, header, body, expected) in rows {
            let error = classify(status, header, &body);
            assert_eq!(
                kind(&error),
                expected,
                "{status} {header:?} {body}: {error:?}"
            );
            assert!(
                error.reason().starts_with(&format!("ses {status}")),
                "{error:?}"
            );
        }
        assert_eq!(
            classify(
                400,
                Some("MessageRejected:http://internal.amazon.com/coral/com.amazonaws.sesv2/"),
                r#"{"message":"Illegal address"}"#
            )
            .reason(),
            "ses 400 MessageRejected: Illegal address"
        );
    }

    #[tokio::test]
    async fn a_real_signed_request_goes_out_and_200_is_sent() {
        let (url, server) =
            serve_once(200, &[], r#"{"MessageId":"0102018c-example-000000"}"#).await;
        let ses = Ses::new(settings(Some(url))).expect("settings are valid");
        let sent = ses.send(&job()).await.expect("sent");
        assert_eq!(
            sent.provider_message_id.as_deref(),
            Some("0102018c-example-000000")
        );
        let request = server.await.expect("the server ran");
        assert_eq!(
            request.request_line(),
            "POST /v2/email/outbound-emails HTTP/1.1"
        );
        let authorization = request.header("authorization").expect("signed");
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
                && authorization.contains("/eu-west-1/ses/aws4_request"),
            "{authorization}"
        );
        assert!(request.header("x-amz-date").is_some());
        assert_eq!(
            request.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(request.json(), body(&job(), Some("mailtrail-events")));
    }

    #[tokio::test]
    async fn answers_403_and_5xx_and_a_refused_connection_map_to_their_kinds() {
        let (url, _server) = serve_once(
            403,
            &[("x-amzn-ErrorType", "SignatureDoesNotMatch:http://internal.amazon.com/coral/")],
            r#"{"message":"The request signature we calculated does not match the signature you provided."}"#,
        )
        .await;
        let error = Ses::new(settings(Some(url)))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("403");
        assert!(matches!(error, SendError::ProviderDown(_)), "{error:?}");
        assert!(
            error
                .reason()
                .starts_with("ses 403 SignatureDoesNotMatch: "),
            "{error:?}"
        );

        let (url, _server) = serve_once(500, &[], r#"{"__type":"InternalFailure"}"#).await;
        let error = Ses::new(settings(Some(url)))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("500");
        assert!(matches!(error, SendError::Transient(_)), "{error:?}");

        let error = Ses::new(settings(Some(refused_url().await)))
            .expect("valid")
            .send(&job())
            .await
            .expect_err("refused");
        assert!(matches!(error, SendError::Transient(_)), "{error:?}");
    }

    #[test]
    fn settings_are_checked_and_secrets_are_not_shown() {
        assert!(
            Ses::new(SesSettings {
                region: "EU West".into(),
                ..settings(None)
            })
            .is_err()
        );
        assert!(
            Ses::new(SesSettings {
                access_key_id: String::new(),
                ..settings(None)
            })
            .is_err()
        );
        let ses = Ses::new(SesSettings {
            session_token: Some(SecretString::from("session-token-value")),
            ..settings(None)
        })
        .expect("valid");
        let shown = format!("{ses:?}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("session-token-value"), "{shown}");
        assert!(!format!("{:?}", settings(None)).contains("wJalrXUtnFEMI"));
    }
}
