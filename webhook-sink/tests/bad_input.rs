//! The bad-input catalogue of the webhook endpoints (docs/hostile-input.md): for each provider
//! and the Standard Webhooks endpoint, a table of malformed, over-size, wrong-type,
//! wrong-encoding, truncated and hostile requests (deep nesting, CR/LF and header injection,
//! missing, garbled and expired signatures, replays), each with the answer it must get and what
//! it may publish — then a correctly signed event is still accepted and published. Requests are
//! written byte by byte, so a row can carry what a polite client cannot (invalid UTF-8 or CR/LF
//! in a header). About 1 s for all six tests.

use lapin::options::BasicGetOptions;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_test_support::{TestBroker, amqp_url, eventually, try_http_get};
use mailtrail_webhook_sink::verify::sns::SnsEnvelope;
use mailtrail_webhook_sink::verify::sns::testing::{
    CERT_URL, StaticFetcher, notification, self_signed_certificate_pem, sign_envelope,
};
use mailtrail_webhook_sink::verify::{mailgun, postmark, sendgrid, standard};
use mailtrail_webhook_sink::{SinkApp, SinkConfig};
use rsa::RsaPrivateKey;
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Room for 10,000 nested `[` inside a signed SNS envelope.
const MAX_BODY: usize = 16 * 1024;
const WINDOW_SECS: i64 = 600;
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const RESEND_SECRET: &str = "whsec_YWNtZS1yZXNlbmQtcm90YXRlZC1zZWNyZXQtMDI=";
const MAILGUN_KEY: &str = "key-acme-3f9c1e7d2b6a";
const POSTMARK_CREDENTIAL: &str = "postmark-acme:pass-7Qm2";
const SES_TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:acme-ses-events";

type Headers = Vec<(String, Vec<u8>)>;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn h(name: &str, value: impl AsRef<[u8]>) -> (String, Vec<u8>) {
    (name.to_owned(), value.as_ref().to_vec())
}

fn json_header() -> (String, Vec<u8>) {
    h("content-type", "application/json")
}

fn body(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON")
}

/// 10,000 unclosed `[`: far past serde_json's depth limit.
fn deep_nesting() -> Vec<u8> {
    "[".repeat(10_000).into_bytes()
}

fn invalid_utf8() -> Vec<u8> {
    b"{\"type\": \"delivered\", \"recipient\": \"\xff\xfe\xc3\x28\"}".to_vec()
}

fn over_size() -> Vec<u8> {
    body(&json!({"padding": "x".repeat(MAX_BODY + 512)}))
}

/// A header value that tries to start a second header.
const INJECTED: &str = "\r\nX-Injected: 1";

fn sendgrid_key() -> &'static p256::ecdsa::SigningKey {
    static KEY: OnceLock<p256::ecdsa::SigningKey> = OnceLock::new();
    KEY.get_or_init(|| p256::ecdsa::SigningKey::random(&mut rand_core::OsRng))
}

fn sns_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    // 1024 bits: RSA key generation is slow in debug builds, and the size is not under test.
    KEY.get_or_init(|| RsaPrivateKey::new(&mut rand_core::OsRng, 1024).expect("an RSA key"))
}

/// One request of a table and what it must get.
struct Row {
    what: &'static str,
    /// Written as given; `None` for the endpoint's own path.
    path: Option<&'static str>,
    headers: Headers,
    body: Vec<u8>,
    status: u16,
    /// (tracking events, set-aside copies) it publishes.
    published: (usize, usize),
}

fn row(what: &'static str, status: u16, headers: Headers, body: Vec<u8>) -> Row {
    Row {
        what,
        path: None,
        headers,
        body,
        status,
        published: (0, 0),
    }
}

impl Row {
    fn publishes(mut self, tracking: usize, set_aside: usize) -> Row {
        self.published = (tracking, set_aside);
        self
    }

    fn at(mut self, path: &'static str) -> Row {
        self.path = Some(path);
        self
    }
}

struct Sink {
    port: u16,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    broker: TestBroker,
    channel: lapin::Channel,
    _connection: lapin::Connection,
}

impl Sink {
    async fn start() -> Sink {
        mailtrail_test_support::init_tracing();
        let broker = TestBroker::new();
        let mut config = SinkConfig::from_env();
        config.broker.amqp_url = amqp_url();
        config.broker.queue_prefix = broker.prefix().to_owned();
        config.http_addr = "127.0.0.1:0".parse().expect("address");
        config.max_body_bytes = MAX_BODY;
        config.standard_secrets = format!("acme={STANDARD_SECRET}");
        config.standard_window_secs = WINDOW_SECS as u64;
        config.resend_secrets = format!("acme={RESEND_SECRET}");
        config.resend_window_secs = WINDOW_SECS as u64;
        config.mailgun_signing_keys = format!("acme={MAILGUN_KEY}");
        config.mailgun_window_secs = WINDOW_SECS as u64;
        config.sendgrid_public_keys = format!(
            "acme={}",
            sendgrid::testing::public_key_base64(sendgrid_key())
        );
        config.sendgrid_window_secs = WINDOW_SECS as u64;
        config.postmark_credentials = format!("acme={POSTMARK_CREDENTIAL}");
        config.postmark_allowed_ips = "127.0.0.1/32".into();
        config.ses_topics = format!("acme={SES_TOPIC}");
        config.ses_window_secs = WINDOW_SECS as u64;
        let fetcher = StaticFetcher::new().with(CERT_URL, self_signed_certificate_pem(sns_key()));
        let app = SinkApp::build_with_fetcher(config, Arc::new(fetcher)).expect("sink");
        let port = app.http_port();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
        eventually("the sink is ready", Duration::from_secs(20), || async {
            (try_http_get(port, "/readyz", None).await.ok()?.0 == 200).then_some(())
        })
        .await;
        let connection = broker.connect().await;
        let channel = connection.create_channel().await.expect("channel");
        Sink {
            port,
            stop,
            handle,
            broker,
            channel,
            _connection: connection,
        }
    }

    /// Writes the request as bytes: (status, body as JSON, or `Null`).
    async fn send(&self, path: &str, headers: &Headers, body: &[u8]) -> (u16, Value) {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        for (name, value) in headers {
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(value);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        // The sink may answer (413) and close before reading everything.
        let _ = stream.write_all(&request).await;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .expect("the sink answers within 10 s");
        let text = String::from_utf8_lossy(&raw);
        let (head, answer) = text.split_once("\r\n\r\n").unwrap_or((&*text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("POST {path}: no HTTP answer in {text:?}"));
        (status, serde_json::from_str(answer).unwrap_or(Value::Null))
    }

    async fn take(&self, queue: Queue) -> Vec<Vec<u8>> {
        let name = self.broker.topology().queue(queue);
        let mut bodies = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            bodies.push(message.delivery.data);
        }
        bodies
    }

    /// Runs every row, checking its answer and exactly what it published; returns the tracking
    /// events published along the way.
    async fn run(&self, provider: &str, rows: Vec<Row>) -> Vec<TrackingEvent> {
        let default_path = format!("/v1/webhooks/{provider}");
        let mut events = Vec::new();
        for row in rows {
            let path = row.path.unwrap_or(default_path.as_str());
            let (status, answer) = self.send(path, &row.headers, &row.body).await;
            assert_eq!(status, row.status, "{provider}, {}: {answer}", row.what);
            // The body limit is actix's own answer; every other refusal is problem+json.
            if status >= 400 && status != 413 {
                assert_eq!(
                    answer["status"], status,
                    "{provider}, {}: a problem+json answer, got {answer}",
                    row.what
                );
            }
            // Publishes are confirmed before the answer: whatever a row published is there now.
            let tracking = self.take(Queue::Tracking).await;
            let set_aside = self.take(Queue::DeadLetter).await;
            assert_eq!(
                (tracking.len(), set_aside.len()),
                row.published,
                "{provider}, {}: (tracking events, set-aside copies) published",
                row.what
            );
            events.extend(
                tracking
                    .iter()
                    .map(|b| serde_json::from_slice::<TrackingEvent>(b).expect("a tracking event")),
            );
        }
        events
    }

    async fn stop(self) {
        self.stop.cancel();
        self.handle.await.expect("joins").expect("stops cleanly");
    }
}

/// Rows every endpoint shares: the body limit, another path, a lying Content-Length.
fn common_rows(good_headers: &Headers) -> Vec<Row> {
    vec![
        row("over-size body", 413, good_headers.clone(), over_size()),
        row(
            "an unknown provider",
            404,
            good_headers.clone(),
            b"{}".to_vec(),
        )
        .at("/v1/webhooks/..%2Fadmin"),
        row(
            "a made-up provider",
            404,
            good_headers.clone(),
            b"{}".to_vec(),
        )
        .at("/v1/webhooks/evil"),
    ]
}

// ----------------------------------------------------------------------------------------------
// Standard Webhooks and Resend (the same HMAC scheme under two header families)
// ----------------------------------------------------------------------------------------------

fn hmac_headers(family: &str, secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Headers {
    let key = standard::SigningKey::parse(secret).expect("secret");
    let ts = timestamp.to_string();
    vec![
        json_header(),
        h(&format!("{family}-id"), id),
        h(&format!("{family}-timestamp"), &ts),
        h(
            &format!("{family}-signature"),
            key.signature_header(id, &ts, body),
        ),
    ]
}

fn replace(headers: &Headers, name: &str, value: impl AsRef<[u8]>) -> Headers {
    headers
        .iter()
        .map(|(n, v)| {
            if n == name {
                h(n, value.as_ref())
            } else {
                (n.clone(), v.clone())
            }
        })
        .collect()
}

fn without(headers: &Headers, name: &str) -> Headers {
    headers.iter().filter(|(n, _)| n != name).cloned().collect()
}

/// The table of an HMAC-signed endpoint whose events look like `event(id, recipient)`.
fn hmac_rows(
    family: &str,
    secret: &str,
    event: &dyn Fn(&str) -> Vec<u8>,
    wrong_types: Vec<u8>,
) -> Vec<Row> {
    let t = now();
    let signed = |id: &str, body: Vec<u8>| (hmac_headers(family, secret, id, t, &body), body);
    let good = event("ann@example.com");
    let (good_headers, _) = signed("msg_good", good.clone());
    let sig = format!("{family}-signature");
    let mut rows = common_rows(&good_headers);
    for (what, body) in [
        ("malformed JSON", b"{\"type\": delivered}".to_vec()),
        ("a truncated body", good[..good.len() / 2].to_vec()),
        ("invalid UTF-8", invalid_utf8()),
        ("10,000 nested arrays", deep_nesting()),
        ("an empty body", Vec::new()),
    ] {
        let (headers, body) = signed("msg_bad", body);
        rows.push(row(what, 400, headers, body));
    }
    let (headers, body) = signed("msg_types", wrong_types);
    rows.push(row("wrong types, signed", 200, headers, body).publishes(0, 1));
    // CR/LF in a field is data, carried as is: the sink writes no mail headers.
    let (headers, body) = signed("msg_crlf", event("ann@example.com\r\nBcc: eve@evil.test"));
    rows.push(row("CR/LF in the recipient, signed", 200, headers, body).publishes(1, 0));
    rows.extend([
        row(
            "the signature of another body",
            401,
            good_headers.clone(),
            event("bob@example.com"),
        ),
        row(
            "no signature header",
            401,
            without(&good_headers, &sig),
            good.clone(),
        ),
        row(
            "a garbled signature",
            401,
            replace(&good_headers, &sig, "v1,!!not base64!!"),
            good.clone(),
        ),
        row(
            "invalid UTF-8 in the signature header",
            401,
            replace(&good_headers, &sig, b"v1,\xff\xfe"),
            good.clone(),
        ),
        row(
            "a signature header injecting another header",
            401,
            replace(&good_headers, &sig, format!("v1,AAAA{INJECTED}")),
            good.clone(),
        ),
        row(
            "a timestamp that is not a number",
            401,
            replace(&good_headers, &format!("{family}-timestamp"), "yesterday"),
            good.clone(),
        ),
        row(
            "an id holding the separator",
            401,
            hmac_headers(family, secret, "msg.1", t, &good),
            good.clone(),
        ),
        row(
            "an expired signature",
            401,
            hmac_headers(family, secret, "msg_old", t - WINDOW_SECS - 60, &good),
            good.clone(),
        ),
        row(
            "a signature from the future",
            401,
            hmac_headers(family, secret, "msg_new", t + WINDOW_SECS + 60, &good),
            good.clone(),
        ),
        row(
            "malformed JSON, unsigned",
            401,
            without(&good_headers, &sig),
            b"{{{".to_vec(),
        ),
        // Then the service still serves a good request, and a replay of it maps to the same
        // event id (the operator records it once).
        row("a good event", 200, good_headers.clone(), good.clone()).publishes(1, 0),
        row("the good event replayed", 200, good_headers, good).publishes(1, 0),
    ]);
    rows
}

/// The last two events are the good one and its replay: one event id.
fn assert_good_then_replay(events: &[TrackingEvent], email: Uuid) {
    let [.., good, replay] = events else {
        panic!("the good event and its replay: {events:#?}")
    };
    assert_eq!(good.email_id, Some(email));
    assert_eq!(good.tenant, "acme");
    assert_eq!(good.event_id, replay.event_id, "a replay maps to one event");
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_bad_input_catalogue() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let event = |recipient: &str| {
        body(
            &json!({"type": "delivered", "mailtrail_id": email, "recipient": recipient,
            "occurred_at": "2026-12-01T10:00:00Z"}),
        )
    };
    let wrong_types = body(&json!([{"type": 5, "mailtrail_id": "not-a-uuid", "occurred_at": []}]));
    let events = sink
        .run(
            "standard",
            hmac_rows("webhook", STANDARD_SECRET, &event, wrong_types),
        )
        .await;
    let crlf = &events[0];
    assert_eq!(
        crlf.details["recipient"], "ann@example.com\r\nBcc: eve@evil.test",
        "kept as data"
    );
    assert_good_then_replay(&events, email);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resend_bad_input_catalogue() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let event = |recipient: &str| {
        body(
            &json!({"type": "email.delivered", "created_at": "2026-12-01T10:00:01.126Z",
            "data": {"email_id": "56761188-7520-42d8-8898-ff6fc54ce618", "to": [recipient],
                     "tags": [{"name": "mailtrail_id", "value": email}]}}),
        )
    };
    let wrong_types = body(&json!({"type": ["email.delivered"], "created_at": 17, "data": "x"}));
    let events = sink
        .run(
            "resend",
            hmac_rows("svix", RESEND_SECRET, &event, wrong_types),
        )
        .await;
    assert_good_then_replay(&events, email);
    sink.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Mailgun: the signature is inside the body
// ----------------------------------------------------------------------------------------------

fn mailgun_token() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())[..50].to_owned()
}

fn mailgun_body(token: &str, timestamp: i64, event_data: Value) -> Vec<u8> {
    let ts = timestamp.to_string();
    let signature = mailgun::SigningKey::new(MAILGUN_KEY)
        .expect("key")
        .signature(&ts, token);
    body(&json!({
        "signature": {"timestamp": ts, "token": token, "signature": signature},
        "event-data": event_data,
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn mailgun_bad_input_catalogue() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let t = now();
    let event = |recipient: &str| {
        let id = if recipient.contains('\n') {
            "mg-crlf"
        } else {
            "mg-1"
        };
        json!({"event": "delivered", "id": id, "timestamp": 1_796_119_200.25,
            "recipient": recipient,
            "message": {"headers": {"message-id": "20261201.mg-1@mg.acme.test"}},
            "user-variables": {"mailtrail_id": email}})
    };
    let headers = vec![json_header()];
    let good_token = mailgun_token();
    let good = mailgun_body(&good_token, t, event("ann@example.com"));
    let mut rows = common_rows(&headers);
    // The signature object is read first: anything without a readable one is unverified.
    for (what, body) in [
        ("malformed JSON", b"{\"signature\": {".to_vec()),
        ("a truncated body", good[..good.len() / 2].to_vec()),
        ("invalid UTF-8", invalid_utf8()),
        ("10,000 nested arrays", deep_nesting()),
        ("an empty body", Vec::new()),
        (
            "a signature object of wrong types",
            body(
                &json!({"signature": {"timestamp": 1, "token": [], "signature": null},
                "event-data": {}}),
            ),
        ),
    ] {
        rows.push(row(what, 401, headers.clone(), body));
    }
    rows.extend([
        row(
            "event-data of the wrong type, signed",
            200,
            headers.clone(),
            mailgun_body(&mailgun_token(), t, json!(["delivered"])),
        )
        .publishes(0, 1),
        row(
            "CR/LF in the recipient, signed",
            200,
            headers.clone(),
            mailgun_body(
                &mailgun_token(),
                t,
                event("ann@example.com\r\nBcc: x@evil.test"),
            ),
        )
        .publishes(1, 0),
        row(
            "a garbled signature",
            401,
            headers.clone(),
            body(
                &json!({"signature": {"timestamp": t.to_string(), "token": mailgun_token(),
                "signature": "zz"}, "event-data": event("ann@example.com")}),
            ),
        ),
        row(
            "an expired signature",
            401,
            headers.clone(),
            mailgun_body(&mailgun_token(), t - WINDOW_SECS - 60, event("a@x.test")),
        ),
        row("a good event", 200, headers.clone(), good.clone()).publishes(1, 0),
        row("the good event replayed", 200, headers.clone(), good).publishes(1, 0),
        row(
            "its token reused with another event",
            401,
            headers.clone(),
            mailgun_body(&good_token, t, event("eve@evil.test")),
        ),
    ]);
    let events = sink.run("mailgun", rows).await;
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(events[1].event_id, events[2].event_id);
    assert_eq!(events[1].email_id, Some(email));
    sink.stop().await;
}

// ----------------------------------------------------------------------------------------------
// SendGrid: ECDSA over timestamp ‖ body
// ----------------------------------------------------------------------------------------------

fn sendgrid_headers(timestamp: i64, body: &[u8]) -> Headers {
    let ts = timestamp.to_string();
    vec![
        json_header(),
        h(sendgrid::TIMESTAMP_HEADER, &ts),
        h(
            sendgrid::SIGNATURE_HEADER,
            sendgrid::testing::sign(sendgrid_key(), &ts, body),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn sendgrid_bad_input_catalogue() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let t = now();
    let event = |recipient: &str, id: &str| {
        body(
            &json!([{"email": recipient, "timestamp": 1_796_119_200, "event": "delivered",
            "sg_event_id": id, "sg_message_id": "abc.filter0", "mailtrail_id": email}]),
        )
    };
    let good = event("ann@example.com", "sg-good");
    let good_headers = sendgrid_headers(t, &good);
    let sig = sendgrid::SIGNATURE_HEADER;
    let mut rows = common_rows(&good_headers);
    for (what, body) in [
        ("malformed JSON", b"[{\"event\": delivered}]".to_vec()),
        ("a truncated body", good[..good.len() / 2].to_vec()),
        ("invalid UTF-8", invalid_utf8()),
        ("10,000 nested arrays", deep_nesting()),
    ] {
        rows.push(row(what, 400, sendgrid_headers(t, &body), body));
    }
    let wrong = body(&json!([{"event": 1, "timestamp": "never"}, 7, null]));
    rows.extend([
        row(
            "wrong types, signed",
            200,
            sendgrid_headers(t, &wrong),
            wrong,
        )
        .publishes(0, 3),
        {
            let crlf = event("ann@example.com\r\nBcc: x@evil.test", "sg-crlf");
            row(
                "CR/LF in the recipient, signed",
                200,
                sendgrid_headers(t, &crlf),
                crlf,
            )
            .publishes(1, 0)
        },
        row(
            "the signature of another body",
            401,
            good_headers.clone(),
            event("bob@example.com", "sg-good"),
        ),
        row(
            "no signature header",
            401,
            without(&good_headers, sig),
            good.clone(),
        ),
        row(
            "a garbled signature",
            401,
            replace(&good_headers, sig, "MEUCIQ=="),
            good.clone(),
        ),
        row(
            "invalid UTF-8 in the signature header",
            401,
            replace(&good_headers, sig, b"\xff\xfe"),
            good.clone(),
        ),
        row(
            "a signature header injecting another header",
            401,
            replace(&good_headers, sig, format!("MEUCIQ{INJECTED}")),
            good.clone(),
        ),
        row(
            "an expired signature",
            401,
            sendgrid_headers(t - WINDOW_SECS - 60, &good),
            good.clone(),
        ),
        row(
            "a timestamp that is not a number",
            401,
            replace(&good_headers, sendgrid::TIMESTAMP_HEADER, "-"),
            good.clone(),
        ),
        row("a good event", 200, good_headers.clone(), good.clone()).publishes(1, 0),
        row("the good event replayed", 200, good_headers, good).publishes(1, 0),
    ]);
    let events = sink.run("sendgrid", rows).await;
    assert_good_then_replay(&events, email);
    sink.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Postmark: Basic credentials, no signature
// ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn postmark_bad_input_catalogue() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let event = |recipient: &str| {
        body(
            &json!({"RecordType": "Delivery", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "Recipient": recipient, "DeliveredAt": "2026-12-01T10:00:00Z",
            "Metadata": {"mailtrail_id": email}}),
        )
    };
    let auth = postmark::basic_header(POSTMARK_CREDENTIAL);
    let headers = vec![
        json_header(),
        h("authorization", &auth),
        h("x-pm-webhook-trace-id", "trace-good"),
    ];
    let good = event("ann@example.com");
    let mut rows = common_rows(&headers);
    for (what, body) in [
        ("malformed JSON", b"{\"RecordType\": Delivery}".to_vec()),
        ("a truncated body", good[..good.len() / 2].to_vec()),
        ("invalid UTF-8", invalid_utf8()),
        ("10,000 nested arrays", deep_nesting()),
        ("an empty body", Vec::new()),
    ] {
        rows.push(row(what, 400, headers.clone(), body));
    }
    rows.extend([
        row(
            "wrong types",
            200,
            headers.clone(),
            body(&json!({"RecordType": 5, "DeliveredAt": false})),
        )
        .publishes(0, 1),
        row(
            "CR/LF in the recipient",
            200,
            replace(&headers, "x-pm-webhook-trace-id", "trace-crlf"),
            event("ann@example.com\r\nBcc: x@evil.test"),
        )
        .publishes(1, 0),
        row(
            "no credentials",
            401,
            without(&headers, "authorization"),
            good.clone(),
        ),
        row(
            "a wrong password",
            401,
            replace(
                &headers,
                "authorization",
                postmark::basic_header("postmark-acme:guess"),
            ),
            good.clone(),
        ),
        row(
            "credentials that are not base64",
            401,
            replace(&headers, "authorization", "Basic !!!"),
            good.clone(),
        ),
        row(
            "invalid UTF-8 in the credentials",
            401,
            replace(&headers, "authorization", b"Basic \xff\xfe"),
            good.clone(),
        ),
        row(
            "credentials injecting another header",
            401,
            replace(&headers, "authorization", format!("Basic {INJECTED}")),
            good.clone(),
        ),
        row("a good event", 200, headers.clone(), good.clone()).publishes(1, 0),
        row("the good event replayed", 200, headers, good).publishes(1, 0),
    ]);
    let events = sink.run("postmark", rows).await;
    assert_good_then_replay(&events, email);
    sink.stop().await;
}

// ----------------------------------------------------------------------------------------------
// SES through SNS: the envelope is parsed, then its signature checked with SNS's certificate
// ----------------------------------------------------------------------------------------------

fn ses_message(email: Uuid, recipient: &str) -> String {
    json!({"eventType": "Delivery",
        "mail": {"timestamp": "2026-12-01T10:00:00.000Z", "messageId": "0100019d-000000",
                 "destination": [recipient], "tags": {"mailtrail_id": [email]}},
        "delivery": {"timestamp": "2026-12-01T10:00:01.000Z", "recipients": [recipient]}})
    .to_string()
}

fn signed_envelope(message: &str, edit: impl FnOnce(&mut SnsEnvelope)) -> Vec<u8> {
    let mut envelope = notification(SES_TOPIC, message, now());
    edit(&mut envelope);
    sign_envelope(sns_key(), &mut envelope, "1");
    serde_json::to_vec(&envelope).expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn ses_bad_input_catalogue() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let headers = vec![h("content-type", "text/plain; charset=UTF-8")];
    let good = signed_envelope(&ses_message(email, "ann@example.com"), |_| {});
    let mut rows = common_rows(&headers);
    // The envelope is read before its signature can be checked: unreadable ones are unverified.
    for (what, body) in [
        ("malformed JSON", b"{\"Type\": Notification}".to_vec()),
        ("a truncated envelope", good[..good.len() / 2].to_vec()),
        ("invalid UTF-8", invalid_utf8()),
        ("10,000 nested arrays", deep_nesting()),
        ("an empty body", Vec::new()),
        (
            "an envelope of wrong types",
            body(
                &json!({"Type": 1, "MessageId": [], "TopicArn": null, "Message": {},
                "Timestamp": 0, "SignatureVersion": 1, "Signature": false,
                "SigningCertURL": 7}),
            ),
        ),
    ] {
        rows.push(row(what, 401, headers.clone(), body));
    }
    let mut tampered: Value = serde_json::from_slice(&good).expect("JSON");
    tampered["Message"] = ses_message(email, "eve@evil.test").into();
    let mut no_signature = tampered.clone();
    no_signature
        .as_object_mut()
        .expect("object")
        .remove("Signature");
    rows.extend([
        row(
            "a Message of malformed JSON, signed",
            200,
            headers.clone(),
            signed_envelope("{\"eventType\": ", |_| {}),
        )
        .publishes(0, 1),
        row(
            "a Message nested 10,000 deep, signed",
            200,
            headers.clone(),
            signed_envelope(&"[".repeat(10_000), |_| {}),
        )
        .publishes(0, 1),
        row(
            "CR/LF in the recipient, signed",
            200,
            headers.clone(),
            signed_envelope(
                &ses_message(email, "ann@example.com\r\nBcc: x@evil.test"),
                |e| e.message_id = "crlf-1".into(),
            ),
        )
        .publishes(1, 0),
        row(
            "a Message changed after signing",
            401,
            headers.clone(),
            body(&tampered),
        ),
        row("no Signature", 401, headers.clone(), body(&no_signature)),
        row(
            "a certificate URL off SNS's hosts",
            401,
            headers.clone(),
            signed_envelope(&ses_message(email, "a@x.test"), |e| {
                e.signing_cert_url = "https://sns.us-east-1.amazonaws.com.evil.test/c.pem".into()
            }),
        ),
        row(
            "an expired notification",
            401,
            headers.clone(),
            signed_envelope(&ses_message(email, "a@x.test"), |e| {
                e.timestamp = mailtrail_webhook_sink::verify::sns::testing::timestamp(
                    now() - WINDOW_SECS - 60,
                )
            }),
        ),
        row(
            "a topic not on the list",
            403,
            headers.clone(),
            signed_envelope(&ses_message(email, "a@x.test"), |e| {
                e.topic_arn = "arn:aws:sns:us-east-1:999999999999:other".into()
            }),
        ),
        row(
            "raw message delivery",
            401,
            vec![h("x-amz-sns-rawdelivery", "true")],
            ses_message(email, "a@x.test").into_bytes(),
        ),
        row("a good event", 200, headers.clone(), good.clone()).publishes(1, 0),
        row("the good event replayed", 200, headers, good).publishes(1, 0),
    ]);
    let events = sink.run("ses", rows).await;
    assert_good_then_replay(&events, email);
    sink.stop().await;
}
