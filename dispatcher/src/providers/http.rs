//! What the HTTP send APIs share: one client setup, transport failures as `Transient`, a bounded
//! read of the answer, and short reasons that never carry a secret.
//!
//! Every transport failure is transient: the request may not have reached the provider, so the
//! job is deferred and retried (Resend's idempotency key makes a retry after a lost answer
//! harmless there; elsewhere a retry after a lost answer may send twice, which is the lesser
//! harm than losing the email). Redirects are not followed: a send API that redirects means the
//! base URL is wrong, which is a configuration fault (`ProviderDown`), never the message's.

use super::SendError;
use anyhow::Context as _;
use mailtrail_shared::address::Address;
use reqwest::StatusCode;
use std::error::Error as _;
use std::time::Duration;

/// A request's whole time (connect, send, answer) unless the settings say otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting never waits longer than this, even with a longer request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer's body that is read (success answers are small; error pages may not be).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Reasons are cut to this many characters.
pub const MAX_REASON_CHARS: usize = 300;
/// Metadata that a provider cannot carry as metadata or tags travels as this header prefix
/// followed by the key.
pub const META_HEADER_PREFIX: &str = "X-Mailtrail-Meta-";

/// The HTTP client for one provider: rustls, the given timeout, no redirects.
pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    anyhow::ensure!(
        !timeout.is_zero(),
        "the request timeout must be more than zero"
    );
    reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout.min(CONNECT_TIMEOUT))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mailtrail-dispatcher/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// `base_url` (`https://api.example.com`, a trailing `/` allowed) joined with `path` (starting
/// with `/`): an http or https URL, or an error naming the setting.
pub fn endpoint(base_url: &str, path: &str) -> anyhow::Result<reqwest::Url> {
    let joined = format!("{}{path}", base_url.trim_end_matches('/'));
    let url = reqwest::Url::parse(&joined)
        .with_context(|| format!("the base URL {base_url:?} is not a URL"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https") && url.host().is_some(),
        "the base URL {base_url:?} must be an http:// or https:// URL with a host"
    );
    anyhow::ensure!(
        url.query().is_none() && url.fragment().is_none(),
        "the base URL {base_url:?} must not have a query or fragment"
    );
    Ok(url)
}

/// A request that failed before a status came back, as `Transient`, saying what failed: the
/// timeout, the connection, TLS, or reading the answer.
pub fn transport_error(provider: &str, error: reqwest::Error) -> SendError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        if looks_like_tls(&error) {
            "TLS failed"
        } else {
            "could not connect"
        }
    } else if error.is_body() || error.is_decode() {
        "reading the answer failed"
    } else if looks_like_tls(&error) {
        "TLS failed"
    } else {
        "the request failed"
    };
    let causes = causes(&error.without_url());
    SendError::Transient(truncate(&format!("{provider}: {what}: {causes}")))
}

/// The error and its sources, `: `-joined, repeats dropped.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let text = current.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = current.source();
    }
    parts.join(": ")
}

fn looks_like_tls(error: &reqwest::Error) -> bool {
    let mut next = error.source();
    while let Some(current) = next {
        let text = current.to_string().to_ascii_lowercase();
        if ["tls", "certificate", "handshake", "invalid peer"]
            .iter()
            .any(|word| text.contains(word))
        {
            return true;
        }
        next = current.source();
    }
    false
}

/// Reads at most [`MAX_BODY_BYTES`] of the answer (the rest is dropped) as lossy UTF-8. A read
/// that fails is `Transient`.
pub async fn read_body(
    provider: &str,
    mut response: reqwest::Response,
) -> Result<String, SendError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(provider, e))?
    {
        let room = MAX_BODY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_BODY_BYTES {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `"<provider> <status> <error name>: <message>"` (without the name when there is none), the
/// message's whitespace collapsed, cut to [`MAX_REASON_CHARS`].
pub fn reason(provider: &str, status: u16, name: Option<&str>, message: &str) -> String {
    let mut message = collapse(message);
    if message.is_empty() {
        message = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message")
            .to_owned();
    }
    let text = match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => format!("{provider} {status} {name}: {message}"),
        None => format!("{provider} {status}: {message}"),
    };
    truncate(&text)
}

/// What to show of a body that is not the provider's JSON error: its text, HTML tags dropped.
pub fn excerpt(body: &str) -> String {
    let mut text = String::with_capacity(body.len().min(2 * MAX_REASON_CHARS));
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
        if text.len() > 4 * MAX_REASON_CHARS {
            break;
        }
    }
    collapse(&text)
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cuts `text` to [`MAX_REASON_CHARS`] characters, marking the cut with `…`.
pub fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_REASON_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_REASON_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// The same error with every secret (of 4 characters or more) replaced by `[redacted]`: a
/// provider echoing a credential must not put it into the job's history.
pub fn scrub(error: SendError, secrets: &[&str]) -> SendError {
    let clean = |text: String| {
        secrets
            .iter()
            .filter(|s| s.len() >= 4)
            .fold(text, |text, secret| text.replace(secret, "[redacted]"))
    };
    match error {
        SendError::Rejected {
            reason,
            mailbox_unknown,
        } => SendError::Rejected {
            reason: clean(reason),
            mailbox_unknown,
        },
        SendError::Transient(reason) => SendError::Transient(clean(reason)),
        SendError::ProviderDown(reason) => SendError::ProviderDown(clean(reason)),
        SendError::Deferred(reason) => SendError::Deferred(clean(reason)),
    }
}

/// How a status is classified when the provider's own error code or name says nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Rejected,
    Transient,
    ProviderDown,
}

impl Class {
    /// 408, 429, 5xx (and anything outside 1xx–5xx) → transient; 401, 403 → our account;
    /// 404, 405, 407 and 3xx → our configuration (the endpoint is fixed, so a wrong base URL or
    /// proxy), treated like the account; any other 4xx → the message.
    pub fn of_status(status: u16) -> Class {
        match status {
            408 | 429 | 500..=599 => Class::Transient,
            401 | 403 | 404 | 405 | 407 | 300..=399 => Class::ProviderDown,
            400..=499 => Class::Rejected,
            _ => Class::Transient,
        }
    }

    /// The error of this class with `reason`; `mailbox_unknown` is false.
    pub fn error(self, reason: String) -> SendError {
        match self {
            Class::Rejected => SendError::Rejected {
                reason,
                mailbox_unknown: false,
            },
            Class::Transient => SendError::Transient(reason),
            Class::ProviderDown => SendError::ProviderDown(reason),
        }
    }
}

/// True for statuses that mean the provider took the message.
/// A provider's answer: status, headers and (bounded) body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        is_success(self.status)
    }

    /// A header's value, trimmed, when present and not empty.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// Sends `request` and reads the answer. A transport failure is transient; once the provider
/// answered 2xx it took the message, so an unreadable body then reads as empty — it must never
/// make us send the message again.
pub async fn exchange(
    provider: &str,
    request: reqwest::RequestBuilder,
) -> Result<Answer, SendError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(provider, e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = if is_success(status) {
        read_body(provider, response).await.unwrap_or_default()
    } else {
        read_body(provider, response).await?
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

pub fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// `"Status Reason"` for a success reply (`202 Accepted`), with the provider's words after a
/// colon when it gave any.
pub fn reply(status: u16, words: Option<&str>) -> String {
    let code = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map_or_else(|| status.to_string(), |r| format!("{status} {r}"));
    match words.map(collapse).filter(|w| !w.is_empty()) {
        Some(words) => truncate(&format!("{code}: {words}")),
        None => code,
    }
}

/// `Name <address>`, the name quoted (RFC 5322) when it has characters that need it; the bare
/// address without a name.
pub fn mailbox(address: &Address) -> String {
    match address.display_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => {
            format!("{} <{}>", quote_display_name(name), address.address)
        }
        _ => address.address.clone(),
    }
}

fn quote_display_name(name: &str) -> String {
    const SPECIALS: &[char] = &[
        '(', ')', '<', '>', '[', ']', ':', ';', '@', '\\', ',', '.', '"',
    ];
    if !name.contains(SPECIALS) {
        return name.to_owned();
    }
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// True when `text` fits the tag character set SES and Resend share: 1 to 256 ASCII letters,
/// digits, `_` or `-`.
pub fn is_tag_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 256
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The `X-Mailtrail-Meta-<key>` header carrying a metadata entry, or `None` when the key is not
/// a header-name token (printable ASCII without `:`) or the value has a control character.
pub fn meta_header(key: &str, value: &str) -> Option<(String, String)> {
    let name_ok = !key.is_empty()
        && key.len() <= 60
        && key.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    let value_ok = !value.chars().any(char::is_control);
    (name_ok && value_ok).then(|| (format!("{META_HEADER_PREFIX}{key}"), value.to_owned()))
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A one-shot HTTP server for the providers' tests and a dispatch job to send.

    use mailtrail_shared::address::parse_address;
    use mailtrail_shared::dispatch::DispatchJob;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use uuid::Uuid;

    pub const EMAIL_ID: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    pub const JOB_ID: Uuid = Uuid::from_u128(0x1111);

    /// A job with every field set: display names, reply-to, both bodies, a header, two tags,
    /// metadata (one entry fits tag character sets, one does not) and an attachment.
    pub fn job() -> DispatchJob {
        let address = |text: &str| {
            serde_json::to_value(parse_address(text).expect("a valid address"))
                .expect("an address serializes")
        };
        serde_json::from_value(json!({
            "version": 1,
            "job_id": JOB_ID,
            "email_id": EMAIL_ID,
            "request_id": Uuid::from_u128(3),
            "request_key": "order-1",
            "tenant": "acme",
            "attempt": 2,
            "priority": "normal",
            "from": address("Acme Shop <shop@acme.test>"),
            "to": address("Ann Lee <ann@example.com>"),
            "reply_to": address("help@acme.test"),
            "subject": "Your order",
            "text": "Thanks",
            "html": "<p>Thanks</p>",
            "headers": {"X-Campaign": "autumn"},
            "tags": ["orders", "receipt"],
            "metadata": {"order_id": "A-17", "note key": "two words"},
            "attachments": [{
                "filename": "r.txt",
                "content_type": "text/plain",
                "content": "aGVsbG8=",
                "size": 5
            }]
        }))
        .expect("the test job deserializes")
    }

    /// What the server received.
    pub struct Captured {
        /// Request line and headers.
        pub head: String,
        pub body: Vec<u8>,
    }

    impl Captured {
        /// The first header of that name (case-insensitive).
        pub fn header(&self, name: &str) -> Option<String> {
            self.head.lines().skip(1).find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        }

        pub fn request_line(&self) -> &str {
            self.head.lines().next().unwrap_or_default()
        }

        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("the request body is JSON")
        }

        pub fn body_text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// Serves one connection on 127.0.0.1 (port 0): reads one request, answers with `status`,
    /// the extra header lines and `body`, and hands back what it read. Returns the base URL.
    pub async fn serve_once(
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (String, JoinHandle<Captured>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a local port");
        let address = listener.local_addr().expect("the bound address");
        let mut answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            answer.push_str(&format!("{name}: {value}\r\n"));
        }
        answer.push_str("\r\n");
        answer.push_str(body);
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("one connection");
            let captured = read_request(&mut stream).await;
            stream
                .write_all(answer.as_bytes())
                .await
                .expect("writing the answer");
            stream.shutdown().await.ok();
            captured
        });
        (format!("http://{address}"), task)
    }

    /// A base URL where nothing listens (the port was just freed).
    pub async fn refused_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a local port");
        let address = listener.local_addr().expect("the bound address");
        drop(listener);
        format!("http://{address}")
    }

    async fn read_request(stream: &mut tokio::net::TcpStream) -> Captured {
        let mut data = Vec::new();
        let mut buffer = [0u8; 8192];
        let head_end = loop {
            if let Some(end) = find(&data, b"\r\n\r\n") {
                break end;
            }
            let n = stream.read(&mut buffer).await.expect("reading the request");
            assert!(n > 0, "the client closed before the headers ended");
            data.extend_from_slice(&buffer[..n]);
        };
        let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
        let lower = head.to_ascii_lowercase();
        let length = lower.lines().find_map(|line| {
            line.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        let chunked = lower.contains("transfer-encoding: chunked");
        let mut body = data[head_end + 4..].to_vec();
        loop {
            let done = match length {
                Some(length) => body.len() >= length,
                None if chunked => body.ends_with(b"0\r\n\r\n"),
                None => true,
            };
            if done {
                break;
            }
            let n = stream.read(&mut buffer).await.expect("reading the body");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buffer[..n]);
        }
        Captured { head, body }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailtrail_shared::address::parse_address;

    #[test]
    fn statuses_fall_into_the_three_kinds() {
        for status in [408, 429, 500, 502, 503, 504, 599, 600, 101] {
            assert_eq!(Class::of_status(status), Class::Transient, "{status}");
        }
        for status in [401, 403, 404, 405, 407, 301, 302, 308] {
            assert_eq!(Class::of_status(status), Class::ProviderDown, "{status}");
        }
        for status in [400, 402, 409, 410, 413, 415, 422, 451] {
            assert_eq!(Class::of_status(status), Class::Rejected, "{status}");
        }
    }

    #[test]
    fn reasons_are_short_and_name_the_provider_status_and_error() {
        assert_eq!(
            reason(
                "resend",
                403,
                Some("invalid_api_key"),
                " API key\n is invalid "
            ),
            "resend 403 invalid_api_key: API key is invalid"
        );
        assert_eq!(reason("mailgun", 400, None, ""), "mailgun 400: Bad Request");
        let long = reason("x", 400, None, &"a".repeat(1000));
        assert_eq!(long.chars().count(), MAX_REASON_CHARS);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn html_error_pages_are_shown_as_text() {
        assert_eq!(
            excerpt("<html><head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>"),
            "502 Bad Gateway nginx"
        );
    }

    #[test]
    fn secrets_are_scrubbed_from_every_kind() {
        let scrubbed = scrub(
            SendError::ProviderDown("key key-abc123 is wrong".into()),
            &["key-abc123", ""],
        );
        assert_eq!(
            scrubbed,
            SendError::ProviderDown("key [redacted] is wrong".into())
        );
        let scrubbed = scrub(
            SendError::Rejected {
                reason: "tok-9999".into(),
                mailbox_unknown: true,
            },
            &["tok-9999"],
        );
        assert_eq!(scrubbed.reason(), "[redacted]");
    }

    #[test]
    fn mailboxes_quote_names_that_need_it() {
        let plain = parse_address("Acme Shop <shop@acme.test>").expect("address");
        assert_eq!(mailbox(&plain), "Acme Shop <shop@acme.test>");
        let bare = parse_address("shop@acme.test").expect("address");
        assert_eq!(mailbox(&bare), "shop@acme.test");
        let special = parse_address("\"Lee, Ann \\\"A.\\\"\" <ann@x.test>").expect("address");
        let expected = format!(
            "\"{}\" <ann@x.test>",
            special
                .display_name
                .as_deref()
                .expect("a name")
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
        );
        assert_eq!(mailbox(&special), expected);
        assert!(mailbox(&special).starts_with("\"Lee, Ann"));
    }

    #[test]
    fn tag_tokens_and_meta_headers() {
        assert!(is_tag_token("order_id-2"));
        assert!(!is_tag_token("note key"));
        assert!(!is_tag_token(""));
        assert!(!is_tag_token("café"));
        assert_eq!(
            meta_header("note.key", "two words"),
            Some(("X-Mailtrail-Meta-note.key".into(), "two words".into()))
        );
        assert_eq!(meta_header("note key", "v"), None);
        assert_eq!(meta_header("k", "line\nbreak"), None);
    }

    #[test]
    fn endpoints_join_and_refuse_what_is_not_a_base_url() {
        assert_eq!(
            endpoint("http://127.0.0.1:8080/", "/v3/mail/send")
                .expect("a URL")
                .as_str(),
            "http://127.0.0.1:8080/v3/mail/send"
        );
        assert!(endpoint("ftp://x.test", "/a").is_err());
        assert!(endpoint("not a url", "/a").is_err());
        assert!(endpoint("https://x.test/?q=1", "/a").is_err());
    }

    #[test]
    fn replies_name_the_status() {
        assert_eq!(reply(202, None), "202 Accepted");
        assert_eq!(
            reply(200, Some("Queued. Thank you.")),
            "200 OK: Queued. Thank you."
        );
    }

    #[tokio::test]
    async fn connection_refused_and_timeouts_are_transient() {
        let client = client(Duration::from_millis(300)).expect("a client");
        let url = test_support::refused_url().await;
        let error = client
            .get(&url)
            .send()
            .await
            .expect_err("nothing listens there");
        let error = transport_error("sendgrid", error);
        assert!(
            matches!(&error, SendError::Transient(r) if r.starts_with("sendgrid: could not connect")),
            "{error:?}"
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a local port");
        let address = listener.local_addr().expect("the bound address");
        let hold = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("one connection");
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(stream);
        });
        let error = client
            .get(format!("http://{address}"))
            .send()
            .await
            .expect_err("the server never answers");
        let error = transport_error("postmark", error);
        assert!(
            matches!(&error, SendError::Transient(r) if r.starts_with("postmark: timed out")),
            "{error:?}"
        );
        hold.abort();
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        assert!(client(Duration::ZERO).is_err());
    }
}
