//! `POST /v1/webhooks/{mailgun,sendgrid,postmark,ses,resend}` against the real broker, one sink
//! per test: every provider's genuine requests (old and new credential of a tenant, and another
//! tenant's) reach the tracking queue with the credential's tenant; repeats map to the same event
//! id; forged, stale, malformed and over-size requests are refused with nothing published; and
//! each provider's own rules (Mailgun token reuse, SendGrid batches, Postmark's allow-list, SNS
//! topics, certificates and subscriptions, Resend's two header families) hold end to end.
//! `standard` has its own file (tests/standard.rs).

use lapin::BasicProperties;
use lapin::options::BasicGetOptions;
use mailtrail_broker::header_string;
use mailtrail_shared::headers;
use mailtrail_shared::history::EventType;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_test_support::{TcpProxy, TestBroker, amqp_url, eventually, http_post, try_http_get};
use mailtrail_webhook_sink::verify::sns::SnsEnvelope;
use mailtrail_webhook_sink::verify::sns::testing::{
    CERT_URL, StaticFetcher, notification, self_signed_certificate_pem, sign_envelope, timestamp,
};
use mailtrail_webhook_sink::verify::{mailgun, postmark, sendgrid, standard};
use mailtrail_webhook_sink::{SinkApp, SinkConfig};
use rsa::RsaPrivateKey;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Bodies above this get 413.
const MAX_BODY: usize = 8192;
/// The timestamp window of every signed provider in these tests, in seconds.
const WINDOW_SECS: u64 = 600;

type Headers = Vec<(String, String)>;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A timestamp a minute outside the window.
fn stale() -> i64 {
    now() - WINDOW_SECS as i64 - 60
}

fn header(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

/// `headers` without `name` (any case).
fn without(headers: &Headers, name: &str) -> Headers {
    headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

/// `headers` with `name` set to `value` (replacing it, any case).
fn replaced(headers: &Headers, name: &str, value: &str) -> Headers {
    let mut headers = without(headers, name);
    headers.push(header(name, value));
    headers
}

/// A padding string that takes a body over [`MAX_BODY`].
fn padding() -> String {
    "x".repeat(MAX_BODY + 512)
}

// ----------------------------------------------------------------------------------------------
// The sink under test
// ----------------------------------------------------------------------------------------------

const MAILGUN_ACME_OLD: &str = "key-acme-old-3f9c1e7d2b6a";
const MAILGUN_ACME_NEW: &str = "key-acme-new-8a4d6f0e1c5b";
const MAILGUN_GLOBEX: &str = "key-globex-5e2b9c7a41d0";
const MAILGUN_UNKNOWN: &str = "key-not-configured-anywhere";

const POSTMARK_ACME_OLD: &str = "postmark-acme:old-pass-7Qm2";
const POSTMARK_ACME_NEW: &str = "postmark-acme:new-pass-4Kd9";
const POSTMARK_GLOBEX: &str = "postmark-globex:pass-9Zx1";
const POSTMARK_UNKNOWN: &str = "postmark-acme:not-the-password";

const RESEND_ACME_OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const RESEND_ACME_NEW: &str = "whsec_YWNtZS1yZXNlbmQtcm90YXRlZC1zZWNyZXQtMDI=";
const RESEND_GLOBEX: &str = "whsec_Z2xvYmV4LXJlc2VuZC1zaWduaW5nLXNlY3JldC0wMQ==";
const RESEND_UNKNOWN: &str = "whsec_dGhpcyBrZXkgaXMgbm90IGNvbmZpZ3VyZWQ=";

const SES_ACME_OLD_TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:acme-ses-events";
const SES_ACME_NEW_TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:acme-ses-events-2";
const SES_GLOBEX_TOPIC: &str = "arn:aws:sns:eu-west-1:210987654321:globex-ses";
const SES_OTHER_TOPIC: &str = "arn:aws:sns:us-east-1:999999999999:someone-elses-topic";
/// SNS's next signing certificate (after a rotation), signed by the second RSA key.
const ROTATED_CERT_URL: &str =
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-rotated-mailtrail-test.pem";
/// A valid SNS certificate URL the fetcher has nothing at.
const UNSERVED_CERT_URL: &str =
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-not-served.pem";
const SUBSCRIBE_URL: &str = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-1:123456789012:acme-ses-events&Token=2336412f37fb687f5d51e6e2425dacbba5d0";

struct SendgridKeys {
    acme_old: p256::ecdsa::SigningKey,
    acme_new: p256::ecdsa::SigningKey,
    globex: p256::ecdsa::SigningKey,
    unknown: p256::ecdsa::SigningKey,
}

fn sendgrid_keys() -> &'static SendgridKeys {
    static KEYS: OnceLock<SendgridKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let generate = || p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        SendgridKeys {
            acme_old: generate(),
            acme_new: generate(),
            globex: generate(),
            unknown: generate(),
        }
    })
}

/// SNS's signing keys: the current certificate's ([`CERT_URL`]) and the rotated one's
/// ([`ROTATED_CERT_URL`]). Generated once per test binary: RSA is slow in debug builds.
fn sns_keys() -> &'static (RsaPrivateKey, RsaPrivateKey) {
    static KEYS: OnceLock<(RsaPrivateKey, RsaPrivateKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let generate = || RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("an RSA key");
        (generate(), generate())
    })
}

/// Serves both SNS certificates and answers the SubscribeURL.
fn sns_fetcher() -> Arc<StaticFetcher> {
    let (current, rotated) = sns_keys();
    Arc::new(
        StaticFetcher::new()
            .with(CERT_URL, self_signed_certificate_pem(current))
            .with(ROTATED_CERT_URL, self_signed_certificate_pem(rotated))
            .with(
                SUBSCRIBE_URL,
                b"<ConfirmSubscriptionResponse></ConfirmSubscriptionResponse>".to_vec(),
            ),
    )
}

/// Every provider configured: two credentials for `acme` (old and new) and one for `globex`.
fn config(broker: &TestBroker, amqp: String) -> SinkConfig {
    let mut config = SinkConfig::from_env();
    config.broker.amqp_url = amqp;
    config.broker.amqp_heartbeat_secs = 2;
    config.broker.queue_prefix = broker.prefix().to_owned();
    config.http_addr = "127.0.0.1:0".parse().expect("address");
    config.max_body_bytes = MAX_BODY;
    config.mailgun_signing_keys =
        format!("acme={MAILGUN_ACME_OLD}, acme={MAILGUN_ACME_NEW}, globex={MAILGUN_GLOBEX}");
    config.mailgun_window_secs = WINDOW_SECS;
    let keys = sendgrid_keys();
    let public = sendgrid::testing::public_key_base64;
    config.sendgrid_public_keys = format!(
        "acme={}, acme={}, globex={}",
        public(&keys.acme_old),
        public(&keys.acme_new),
        public(&keys.globex)
    );
    config.sendgrid_window_secs = WINDOW_SECS;
    config.postmark_credentials =
        format!("acme={POSTMARK_ACME_OLD}, acme={POSTMARK_ACME_NEW}, globex={POSTMARK_GLOBEX}");
    // The tests connect from 127.0.0.1.
    config.postmark_allowed_ips = "127.0.0.1/32".into();
    config.ses_topics =
        format!("acme={SES_ACME_OLD_TOPIC}, acme={SES_ACME_NEW_TOPIC}, globex={SES_GLOBEX_TOPIC}");
    config.ses_window_secs = WINDOW_SECS;
    config.ses_auto_confirm = true;
    config.resend_secrets =
        format!("acme={RESEND_ACME_OLD}, acme={RESEND_ACME_NEW}, globex={RESEND_GLOBEX}");
    config.resend_window_secs = WINDOW_SECS;
    config
}

struct Sink {
    port: u16,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    broker: TestBroker,
}

impl Sink {
    /// A sink on the test broker, with no SNS certificates to fetch.
    async fn start() -> Sink {
        Sink::start_with(amqp_url(), Arc::new(StaticFetcher::new()), |_| {}).await
    }

    /// A sink on the test broker serving the SNS certificates of [`sns_fetcher`].
    async fn start_for_ses(fetcher: &Arc<StaticFetcher>) -> Sink {
        Sink::start_with(amqp_url(), fetcher.clone(), |_| {}).await
    }

    async fn start_with(
        amqp: String,
        fetcher: Arc<StaticFetcher>,
        configure: impl FnOnce(&mut SinkConfig),
    ) -> Sink {
        mailtrail_test_support::init_tracing();
        let broker = TestBroker::new();
        let mut config = config(&broker, amqp);
        configure(&mut config);
        let app = SinkApp::build_with_fetcher(config, fetcher).expect("sink");
        let port = app.http_port();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
        eventually("the sink is ready", Duration::from_secs(20), || async {
            (try_http_get(port, "/readyz", None).await.ok()?.0 == 200).then_some(())
        })
        .await;
        Sink {
            port,
            stop,
            handle,
            broker,
        }
    }

    async fn post(&self, provider: &str, headers: &Headers, body: &[u8]) -> (u16, Value) {
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let path = format!("/v1/webhooks/{provider}");
        let (status, _, json) = http_post(self.port, &path, &pairs, body).await;
        (status, json)
    }

    /// Posts and asserts the status.
    async fn expect(
        &self,
        status: u16,
        what: &str,
        provider: &str,
        headers: &Headers,
        body: &[u8],
    ) -> Value {
        let (got, answer) = self.post(provider, headers, body).await;
        assert_eq!(got, status, "{provider}, {what}: {answer}");
        answer
    }

    /// Takes every message off a queue of this sink's topology.
    async fn take_all(&self, queue: Queue) -> Vec<(BasicProperties, Vec<u8>)> {
        let connection = self.broker.connect().await;
        let channel = connection.create_channel().await.expect("channel");
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.broker.topology().queue(queue).as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            messages.push((message.delivery.properties, message.delivery.data));
        }
        let _ = connection.close(200, "taken".into()).await;
        messages
    }

    /// Takes every tracking event published so far.
    async fn tracking(&self) -> Vec<TrackingEvent> {
        self.take_all(Queue::Tracking)
            .await
            .iter()
            .map(|(_, body)| serde_json::from_slice(body).expect("a tracking event"))
            .collect()
    }

    /// Asserts that neither the tracking nor the dead-letter queue holds anything.
    async fn assert_nothing_published(&self, after: &str) {
        assert!(
            self.tracking().await.is_empty(),
            "no tracking event after {after}"
        );
        assert!(
            self.take_all(Queue::DeadLetter).await.is_empty(),
            "no set-aside copy after {after}"
        );
    }

    async fn stop(self) {
        self.stop.cancel();
        self.handle.await.expect("joins").expect("stops cleanly");
        drop(self.broker);
    }
}

/// What a tracking event must say.
struct Expected<'a> {
    provider: &'a str,
    provider_event_id: String,
    event_type: EventType,
    email: Uuid,
    tenant: &'a str,
}

/// The one event of `events` with the expected provider event id, checked field by field.
fn find_event<'e>(events: &'e [TrackingEvent], expected: &Expected<'_>) -> &'e TrackingEvent {
    let matching: Vec<&TrackingEvent> = events
        .iter()
        .filter(|e| e.provider_event_id.as_deref() == Some(expected.provider_event_id.as_str()))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one event {} among {events:#?}",
        expected.provider_event_id
    );
    let event = matching[0];
    assert_eq!(event.event_type, expected.event_type, "{event:#?}");
    assert_eq!(event.email_id, Some(expected.email), "{event:#?}");
    assert_eq!(event.tenant, expected.tenant, "{event:#?}");
    assert_eq!(
        event.provider.as_deref(),
        Some(expected.provider),
        "{event:#?}"
    );
    assert_eq!(
        event.source,
        format!("webhook:{}", expected.provider),
        "{event:#?}"
    );
    event
}

/// Posts an accepted request twice: both answered 200, each publishing the same single event.
async fn accepted_twice_with_one_event_id(
    sink: &Sink,
    provider: &str,
    headers: &Headers,
    body: &[u8],
) -> TrackingEvent {
    sink.expect(200, "first delivery", provider, headers, body)
        .await;
    let first = sink.tracking().await;
    assert_eq!(first.len(), 1, "{first:#?}");
    sink.expect(200, "the same request again", provider, headers, body)
        .await;
    let again = sink.tracking().await;
    assert_eq!(again.len(), 1, "{again:#?}");
    assert_eq!(
        again[0].event_id, first[0].event_id,
        "the operator de-duplicates on the event id"
    );
    assert_eq!(again[0], first[0]);
    first[0].clone()
}

// ----------------------------------------------------------------------------------------------
// Mailgun
// ----------------------------------------------------------------------------------------------

/// 2026-12-01T10:00:00.25Z, the time of every sample Mailgun event.
const MAILGUN_EVENT_TIME: f64 = 1_796_119_200.25;

fn mailgun_event(event: &str, email: Uuid, id: &str) -> Value {
    json!({
        "event": event,
        "id": id,
        "timestamp": MAILGUN_EVENT_TIME,
        "log-level": "info",
        "recipient": "ann@example.com",
        "recipient-domain": "example.com",
        "envelope": {
            "sender": "bounce+1a2b3c@mg.acme.test",
            "transport": "smtp",
            "targets": "ann@example.com",
        },
        "message": {
            "headers": {
                "message-id": format!("20261201100000.{id}@mg.acme.test"),
                "from": "Acme <news@acme.test>",
                "to": "ann@example.com",
                "subject": "Welcome to Acme",
            },
            "size": 2145,
        },
        "delivery-status": {
            "code": 250,
            "message": "OK",
            "description": "",
            "attempt-no": 1,
            "tls": true,
            "mx-host": "mx.example.com",
        },
        "tags": ["welcome"],
        "user-variables": {"mailtrail_id": email.to_string()},
        "flags": {"is-test-mode": false},
    })
}

/// The provider event id the sink derives: the event date and Mailgun's id.
fn mailgun_event_id(id: &str) -> String {
    format!("2026-12-01:{id}")
}

/// A fresh 50-hex-digit token, as Mailgun sends.
fn mailgun_token() -> String {
    let mut token = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    token.truncate(50);
    token
}

fn mailgun_signed(key: &str, token: &str, timestamp: i64, event_data: &Value) -> Value {
    let ts = timestamp.to_string();
    let signature = mailgun::SigningKey::new(key)
        .expect("a Mailgun key")
        .signature(&ts, token);
    json!({
        "signature": {"timestamp": ts, "token": token, "signature": signature},
        "event-data": event_data,
    })
}

fn mailgun_body(key: &str, token: &str, timestamp: i64, event_data: &Value) -> Vec<u8> {
    to_body(&mailgun_signed(key, token, timestamp, event_data))
}

fn to_body(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON")
}

fn json_headers() -> Headers {
    vec![header("content-type", "application/json")]
}

#[tokio::test(flavor = "multi_thread")]
async fn mailgun_events_signed_with_either_acme_key_or_globex_are_queued_for_that_tenant() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let cases = [
        (
            MAILGUN_ACME_OLD,
            "acme",
            "delivered",
            EventType::Delivered,
            "mg-old-1",
        ),
        (
            MAILGUN_ACME_NEW,
            "acme",
            "opened",
            EventType::Opened,
            "mg-new-2",
        ),
        (
            MAILGUN_GLOBEX,
            "globex",
            "delivered",
            EventType::Delivered,
            "mg-glx-3",
        ),
    ];
    for (key, _, event, _, id) in cases {
        let body = mailgun_body(
            key,
            &mailgun_token(),
            now(),
            &mailgun_event(event, email, id),
        );
        let answer = sink
            .expect(200, id, "mailgun", &json_headers(), &body)
            .await;
        assert_eq!(answer["accepted"], 1, "{answer}");
    }
    let events = sink.tracking().await;
    assert_eq!(events.len(), 3, "{events:#?}");
    for (_, tenant, _, event_type, id) in cases {
        let event = find_event(
            &events,
            &Expected {
                provider: "mailgun",
                provider_event_id: mailgun_event_id(id),
                event_type,
                email,
                tenant,
            },
        );
        assert_eq!(
            event.provider_message_id.as_deref(),
            Some(format!("20261201100000.{id}@mg.acme.test").as_str())
        );
    }
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mailgun_a_repeated_request_is_accepted_again_with_the_same_event_id() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let body = mailgun_body(
        MAILGUN_ACME_NEW,
        &mailgun_token(),
        now(),
        &mailgun_event("delivered", email, "mg-repeat"),
    );
    let event = accepted_twice_with_one_event_id(&sink, "mailgun", &json_headers(), &body).await;
    assert_eq!(
        event.provider_event_id.as_deref(),
        Some("2026-12-01:mg-repeat")
    );
    assert_eq!(event.tenant, "acme");
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mailgun_forged_stale_malformed_and_oversize_requests_are_refused_and_publish_nothing() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let event = mailgun_event("delivered", email, "mg-refused");
    let token = mailgun_token();
    let genuine = mailgun_signed(MAILGUN_ACME_OLD, &token, now(), &event);
    let refuse = async |what: &str, body: &Value| {
        sink.expect(401, what, "mailgun", &json_headers(), &to_body(body))
            .await;
    };

    // The signed fields changed under the original signature.
    let mut tampered = genuine.clone();
    tampered["signature"]["timestamp"] = json!((now() + 1).to_string());
    refuse("a changed timestamp", &tampered).await;
    let mut tampered = genuine.clone();
    tampered["signature"]["token"] = json!(mailgun_token());
    refuse("a changed token", &tampered).await;
    refuse(
        "a key nobody configured",
        &mailgun_signed(MAILGUN_UNKNOWN, &token, now(), &event),
    )
    .await;
    refuse("no signature object", &json!({"event-data": event})).await;
    let mut unsigned = genuine.clone();
    unsigned["signature"]
        .as_object_mut()
        .expect("an object")
        .remove("signature");
    refuse("no signature field", &unsigned).await;
    for bad in ["zz", "not hex at all", &"ab".repeat(31), ""] {
        let mut malformed = genuine.clone();
        malformed["signature"]["signature"] = json!(bad);
        refuse(&format!("signature {bad:?}"), &malformed).await;
    }
    let mut malformed = genuine.clone();
    malformed["signature"]["timestamp"] = json!("yesterday");
    refuse("a timestamp that is not Unix seconds", &malformed).await;
    refuse(
        "a timestamp before the window",
        &mailgun_signed(MAILGUN_ACME_OLD, &mailgun_token(), stale(), &event),
    )
    .await;
    refuse(
        "a timestamp after the window",
        &mailgun_signed(
            MAILGUN_ACME_OLD,
            &mailgun_token(),
            now() + WINDOW_SECS as i64 + 60,
            &event,
        ),
    )
    .await;
    refuse("a body that is not JSON", &json!("delivered")).await;

    let mut big = event.clone();
    big["message"]["headers"]["subject"] = json!(padding());
    let oversize = mailgun_body(MAILGUN_ACME_OLD, &mailgun_token(), now(), &big);
    sink.expect(
        413,
        "an over-size body",
        "mailgun",
        &json_headers(),
        &oversize,
    )
    .await;
    sink.assert_nothing_published("refused requests").await;

    // None of the refusals spent the genuine request's token.
    sink.expect(
        200,
        "the genuine request",
        "mailgun",
        &json_headers(),
        &to_body(&genuine),
    )
    .await;
    assert_eq!(sink.tracking().await.len(), 1);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mailgun_a_token_replayed_with_other_event_data_is_refused() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let token = mailgun_token();
    let timestamp = now();
    let genuine = mailgun_body(
        MAILGUN_ACME_OLD,
        &token,
        timestamp,
        &mailgun_event("delivered", email, "mg-genuine"),
    );
    sink.expect(
        200,
        "the genuine request",
        "mailgun",
        &json_headers(),
        &genuine,
    )
    .await;

    // The captured signature (it covers only timestamp and token) over another event.
    let forged_event = mailgun_event("clicked", Uuid::new_v4(), "mg-forged");
    let forged = mailgun_body(MAILGUN_ACME_OLD, &token, timestamp, &forged_event);
    sink.expect(
        401,
        "the token with another event",
        "mailgun",
        &json_headers(),
        &forged,
    )
    .await;

    // Mailgun's own retry of the genuine request still passes.
    sink.expect(
        200,
        "a retry of the genuine request",
        "mailgun",
        &json_headers(),
        &genuine,
    )
    .await;
    let events = sink.tracking().await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(
        events.iter().all(
            |e| e.provider_event_id.as_deref() == Some("2026-12-01:mg-genuine")
                && e.email_id == Some(email)
        ),
        "only the genuine event: {events:#?}"
    );
    sink.stop().await;
}

/// A Mailgun request for a new event: its provider event id and body.
fn mailgun_fresh_request(email: Uuid) -> (String, Vec<u8>) {
    let id = format!("mg-cut-{}", Uuid::new_v4().simple());
    let body = mailgun_body(
        MAILGUN_ACME_OLD,
        &mailgun_token(),
        now(),
        &mailgun_event("delivered", email, &id),
    );
    (mailgun_event_id(&id), body)
}

#[tokio::test(flavor = "multi_thread")]
async fn mailgun_gets_503_while_the_broker_is_cut_and_no_event_answered_200_is_lost() {
    let (proxy, through) = TcpProxy::for_url(&amqp_url()).await.expect("proxy");
    let sink = Sink::start_with(through, Arc::new(StaticFetcher::new()), |_| {}).await;
    let email = Uuid::new_v4();
    // Provider event ids of every request answered 200, and every status seen while cutting.
    let answered_200 = Mutex::new(Vec::new());
    let statuses = Mutex::new(Vec::new());

    let (id, body) = mailgun_fresh_request(email);
    sink.expect(200, "before the cut", "mailgun", &json_headers(), &body)
        .await;
    answered_200.lock().expect("not poisoned").push(id);

    proxy.set_refuse(true);
    proxy.cut();
    // Until the sink notices, a request may still be taken; each one is a new event.
    eventually("the sink answers 503", Duration::from_secs(20), || {
        let (sink, answered_200, statuses) = (&sink, &answered_200, &statuses);
        async move {
            let (id, body) = mailgun_fresh_request(email);
            let (status, answer) = sink.post("mailgun", &json_headers(), &body).await;
            statuses.lock().expect("not poisoned").push(status);
            match status {
                200 => answered_200.lock().expect("not poisoned").push(id),
                503 => return Some(()),
                other => panic!("while the broker is cut: {other} {answer}"),
            }
            None
        }
    })
    .await;
    // Down it stays down: every request is 503 (Mailgun retries them).
    let (retried_id, retried) = mailgun_fresh_request(email);
    for attempt in 1..=3 {
        sink.expect(
            503,
            &format!("broker down, attempt {attempt}"),
            "mailgun",
            &json_headers(),
            &retried,
        )
        .await;
    }

    proxy.set_refuse(false);
    // Mailgun's retry of the refused request: the same body, until it is taken.
    eventually(
        "the sink accepts again",
        Duration::from_secs(30),
        || async {
            let (status, _) = sink.post("mailgun", &json_headers(), &retried).await;
            (status == 200).then_some(())
        },
    )
    .await;
    let mut answered_200 = answered_200.into_inner().expect("not poisoned");
    answered_200.push(retried_id);

    let queued: HashSet<String> = sink
        .tracking()
        .await
        .into_iter()
        .filter_map(|e| e.provider_event_id)
        .collect();
    for id in &answered_200 {
        assert!(
            queued.contains(id),
            "{id} was answered 200 but is not queued; queued: {queued:?} (statuses while \
             cutting: {:?})",
            statuses.lock().expect("not poisoned")
        );
    }
    sink.stop().await;
}

// ----------------------------------------------------------------------------------------------
// SendGrid
// ----------------------------------------------------------------------------------------------

fn sendgrid_item(event: &str, email: Uuid, sg_event_id: &str) -> Value {
    json!({
        "email": "ann@example.com",
        "timestamp": 1_796_119_200,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": event,
        "category": ["welcome"],
        "sg_event_id": sg_event_id,
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "response": "250 OK",
        "tls": 1,
        "mailtrail_id": email.to_string(),
    })
}

/// A batch as SendGrid posts it (with its trailing CRLF, which is signed too).
fn sendgrid_body(items: &[Value]) -> Vec<u8> {
    let mut body = serde_json::to_vec(items).expect("JSON");
    body.extend_from_slice(b"\r\n");
    body
}

fn sendgrid_headers(key: &p256::ecdsa::SigningKey, timestamp: i64, body: &[u8]) -> Headers {
    let ts = timestamp.to_string();
    vec![
        header("content-type", "application/json"),
        header(
            sendgrid::SIGNATURE_HEADER,
            sendgrid::testing::sign(key, &ts, body),
        ),
        header(sendgrid::TIMESTAMP_HEADER, ts),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn sendgrid_batches_signed_with_either_acme_key_or_globex_are_queued_for_that_tenant() {
    let sink = Sink::start().await;
    let keys = sendgrid_keys();
    let email = Uuid::new_v4();
    let cases = [
        (
            &keys.acme_old,
            "acme",
            "delivered",
            EventType::Delivered,
            "sg-old-1",
        ),
        (
            &keys.acme_new,
            "acme",
            "open",
            EventType::Opened,
            "sg-new-2",
        ),
        (
            &keys.globex,
            "globex",
            "delivered",
            EventType::Delivered,
            "sg-glx-3",
        ),
    ];
    for (key, _, event, _, id) in cases {
        let body = sendgrid_body(&[sendgrid_item(event, email, id)]);
        let answer = sink
            .expect(
                200,
                id,
                "sendgrid",
                &sendgrid_headers(key, now(), &body),
                &body,
            )
            .await;
        assert_eq!(answer["accepted"], 1, "{answer}");
    }
    let events = sink.tracking().await;
    assert_eq!(events.len(), 3, "{events:#?}");
    for (_, tenant, _, event_type, id) in cases {
        find_event(
            &events,
            &Expected {
                provider: "sendgrid",
                provider_event_id: id.to_owned(),
                event_type,
                email,
                tenant,
            },
        );
    }
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sendgrid_a_repeated_batch_is_accepted_again_with_the_same_event_id() {
    let sink = Sink::start().await;
    let body = sendgrid_body(&[sendgrid_item("delivered", Uuid::new_v4(), "sg-repeat")]);
    let headers = sendgrid_headers(&sendgrid_keys().acme_new, now(), &body);
    let event = accepted_twice_with_one_event_id(&sink, "sendgrid", &headers, &body).await;
    assert_eq!(event.provider_event_id.as_deref(), Some("sg-repeat"));
    assert_eq!(event.tenant, "acme");
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sendgrid_forged_stale_malformed_and_oversize_batches_are_refused_and_publish_nothing() {
    let sink = Sink::start().await;
    let keys = sendgrid_keys();
    let email = Uuid::new_v4();
    let body = sendgrid_body(&[sendgrid_item("delivered", email, "sg-refused")]);
    let signed = sendgrid_headers(&keys.acme_old, now(), &body);
    let refuse = async |what: &str, headers: &Headers, body: &[u8]| {
        sink.expect(401, what, "sendgrid", headers, body).await;
    };

    let tampered = sendgrid_body(&[sendgrid_item("delivered", Uuid::new_v4(), "sg-refused")]);
    refuse("a changed body", &signed, &tampered).await;
    let mut crlf_less = body.clone();
    crlf_less.truncate(body.len() - 2);
    refuse("the body without its CRLF", &signed, &crlf_less).await;
    let other_time = replaced(
        &signed,
        sendgrid::TIMESTAMP_HEADER,
        &(now() + 1).to_string(),
    );
    refuse("a changed timestamp header", &other_time, &body).await;
    refuse(
        "a key nobody configured",
        &sendgrid_headers(&keys.unknown, now(), &body),
        &body,
    )
    .await;
    refuse(
        "no signature header",
        &without(&signed, sendgrid::SIGNATURE_HEADER),
        &body,
    )
    .await;
    refuse(
        "no timestamp header",
        &without(&signed, sendgrid::TIMESTAMP_HEADER),
        &body,
    )
    .await;
    for bad in ["not base64!", "bm90IERFUg==", ""] {
        let malformed = replaced(&signed, sendgrid::SIGNATURE_HEADER, bad);
        refuse(&format!("signature {bad:?}"), &malformed, &body).await;
    }
    let malformed = replaced(&signed, sendgrid::TIMESTAMP_HEADER, "yesterday");
    refuse("a timestamp that is not Unix seconds", &malformed, &body).await;
    refuse(
        "a timestamp before the window",
        &sendgrid_headers(&keys.acme_old, stale(), &body),
        &body,
    )
    .await;

    let mut big = sendgrid_item("delivered", email, "sg-big");
    big["padding"] = json!(padding());
    let oversize = sendgrid_body(&[big]);
    sink.expect(
        413,
        "an over-size body",
        "sendgrid",
        &sendgrid_headers(&keys.acme_old, now(), &oversize),
        &oversize,
    )
    .await;
    sink.assert_nothing_published("refused batches").await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sendgrid_an_unmappable_item_is_set_aside_alone_and_the_rest_of_the_batch_is_queued() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let warp = json!({"email": "ann@example.com", "timestamp": 1_796_119_200, "event": "warp",
                      "sg_event_id": "sg-warp", "mailtrail_id": email.to_string()});
    let body = sendgrid_body(&[
        sendgrid_item("delivered", email, "sg-batch-1"),
        warp.clone(),
        sendgrid_item("open", email, "sg-batch-2"),
    ]);
    let headers = sendgrid_headers(&sendgrid_keys().globex, now(), &body);
    let answer = sink
        .expect(200, "a batch with an odd item", "sendgrid", &headers, &body)
        .await;
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["set_aside"], 1, "{answer}");

    let events = sink.tracking().await;
    assert_eq!(events.len(), 2, "{events:#?}");
    for (id, event_type) in [
        ("sg-batch-1", EventType::Delivered),
        ("sg-batch-2", EventType::Opened),
    ] {
        find_event(
            &events,
            &Expected {
                provider: "sendgrid",
                provider_event_id: id.to_owned(),
                event_type,
                email,
                tenant: "globex",
            },
        );
    }
    let set_aside = sink.take_all(Queue::DeadLetter).await;
    assert_eq!(set_aside.len(), 1);
    let (properties, raw) = &set_aside[0];
    assert_eq!(
        header_string(properties, headers::REASON).as_deref(),
        Some("unmapped_event")
    );
    assert!(
        header_string(properties, headers::REASON_DETAIL).is_some_and(|d| d.contains("warp")),
        "{properties:?}"
    );
    assert_eq!(
        header_string(properties, headers::SOURCE_QUEUE).as_deref(),
        Some("webhook:sendgrid")
    );
    assert_eq!(
        header_string(properties, headers::TENANT).as_deref(),
        Some("globex"),
        "the credential's tenant, so the dead letter is visible to that tenant"
    );
    let copy: Value = serde_json::from_slice(raw).expect("the item's JSON");
    assert_eq!(copy, warp, "the odd item alone, as received");

    // SendGrid's retry of the batch: the same events, and a set-aside copy with the same id.
    sink.expect(200, "the batch again", "sendgrid", &headers, &body)
        .await;
    let again = sink.tracking().await;
    let ids = |events: &[TrackingEvent]| {
        let mut ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&again), ids(&events));
    let set_aside_again = sink.take_all(Queue::DeadLetter).await;
    assert_eq!(set_aside_again.len(), 1);
    let dead_letter_id = |properties: &BasicProperties| {
        header_string(properties, headers::DEAD_LETTER_ID).expect("a dead-letter id")
    };
    assert_eq!(
        dead_letter_id(&set_aside_again[0].0),
        dead_letter_id(properties),
        "the operator de-duplicates set-aside copies on it"
    );
    sink.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Postmark
// ----------------------------------------------------------------------------------------------

fn postmark_record(record_type: &str, email: Uuid, message_id: &str) -> Value {
    let mut record = json!({
        "RecordType": record_type,
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": message_id,
        "Recipient": "john@example.com",
        "Tag": "welcome",
        "Metadata": {"mailtrail_id": email.to_string(), "customer": "acme"},
    });
    match record_type {
        "Delivery" => {
            record["DeliveredAt"] = json!("2026-12-01T10:00:00Z");
            record["Details"] = json!("smtp;250 2.0.0 OK");
        }
        _ => {
            record["ReceivedAt"] = json!("2026-12-01T10:05:00Z");
            record["FirstOpen"] = json!(true);
            record["UserAgent"] = json!("Mozilla/5.0 (Macintosh)");
            record["Geo"] = json!({"IP": "192.0.2.10"});
            record["Platform"] = json!("Desktop");
        }
    }
    record
}

fn postmark_headers(credential: &str, trace: &str) -> Headers {
    vec![
        header("content-type", "application/json"),
        header("authorization", postmark::basic_header(credential)),
        header("x-pm-webhook-trace-id", trace),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn postmark_events_with_either_acme_credential_or_globex_are_queued_for_that_tenant() {
    // The default allow-list is 127.0.0.1/32, where these requests come from.
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let cases = [
        (
            POSTMARK_ACME_OLD,
            "acme",
            "Delivery",
            EventType::Delivered,
            "pm-trace-1",
        ),
        (
            POSTMARK_ACME_NEW,
            "acme",
            "Open",
            EventType::Opened,
            "pm-trace-2",
        ),
        (
            POSTMARK_GLOBEX,
            "globex",
            "Delivery",
            EventType::Delivered,
            "pm-trace-3",
        ),
    ];
    for (credential, _, record_type, _, trace) in cases {
        let body = to_body(&postmark_record(
            record_type,
            email,
            &format!("pm-msg-{trace}"),
        ));
        let answer = sink
            .expect(
                200,
                trace,
                "postmark",
                &postmark_headers(credential, trace),
                &body,
            )
            .await;
        assert_eq!(answer["accepted"], 1, "{answer}");
    }
    let events = sink.tracking().await;
    assert_eq!(events.len(), 3, "{events:#?}");
    for (_, tenant, _, event_type, trace) in cases {
        let event = find_event(
            &events,
            &Expected {
                provider: "postmark",
                provider_event_id: trace.to_owned(),
                event_type,
                email,
                tenant,
            },
        );
        assert_eq!(
            event.provider_message_id.as_deref(),
            Some(format!("pm-msg-{trace}").as_str())
        );
    }
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postmark_a_repeated_request_is_accepted_again_with_the_same_event_id() {
    let sink = Sink::start().await;
    let body = to_body(&postmark_record(
        "Delivery",
        Uuid::new_v4(),
        "pm-msg-repeat",
    ));
    let headers = postmark_headers(POSTMARK_ACME_NEW, "pm-trace-repeat");
    let event = accepted_twice_with_one_event_id(&sink, "postmark", &headers, &body).await;
    assert_eq!(event.provider_event_id.as_deref(), Some("pm-trace-repeat"));
    assert_eq!(event.tenant, "acme");
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postmark_wrong_missing_malformed_credentials_and_oversize_bodies_are_refused() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let body = to_body(&postmark_record("Delivery", email, "pm-msg-refused"));
    let good = postmark_headers(POSTMARK_ACME_OLD, "pm-trace-refused");
    let refuse = async |what: &str, headers: &Headers| {
        sink.expect(401, what, "postmark", headers, &body).await;
    };
    refuse(
        "a password nobody configured",
        &postmark_headers(POSTMARK_UNKNOWN, "pm-trace-refused"),
    )
    .await;
    refuse(
        "another tenant's user with acme's password",
        &postmark_headers("postmark-globex:old-pass-7Qm2", "pm-trace-refused"),
    )
    .await;
    refuse("no Authorization header", &without(&good, "authorization")).await;
    for bad in [
        "Bearer cG9zdG1hcms=",
        "Basic !!!",
        "Basic",
        "postmark-acme:old-pass-7Qm2",
    ] {
        refuse(
            &format!("Authorization {bad:?}"),
            &replaced(&good, "authorization", bad),
        )
        .await;
    }
    let mut big = postmark_record("Delivery", email, "pm-msg-big");
    big["Details"] = json!(padding());
    sink.expect(413, "an over-size body", "postmark", &good, &to_body(&big))
        .await;
    sink.assert_nothing_published("refused requests").await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postmark_a_peer_outside_the_allowed_addresses_gets_403_even_with_valid_credentials() {
    let sink = Sink::start_with(amqp_url(), Arc::new(StaticFetcher::new()), |config| {
        config.postmark_allowed_ips = "192.0.2.0/24".into();
    })
    .await;
    let body = to_body(&postmark_record("Delivery", Uuid::new_v4(), "pm-msg-403"));
    sink.expect(
        403,
        "from 127.0.0.1",
        "postmark",
        &postmark_headers(POSTMARK_ACME_OLD, "pm-trace-403"),
        &body,
    )
    .await;
    sink.assert_nothing_published("a refused peer").await;
    sink.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Amazon SES through SNS
// ----------------------------------------------------------------------------------------------

/// An SES configuration-set event as SES puts it in the SNS `Message`.
fn ses_message(event_type: &str, email: Uuid) -> String {
    let mail = json!({
        "timestamp": "2026-12-01T10:00:00.000Z",
        "source": "Acme <news@acme.test>",
        "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/acme.test",
        "sendingAccountId": "123456789012",
        "messageId": "0100019d5c2e2f4a-7b1e4a55-1c2d-4e3f-9a8b-7c6d5e4f3a2b-000000",
        "destination": ["ann@example.com"],
        "headersTruncated": false,
        "tags": {
            "ses:configuration-set": ["mailtrail"],
            "ses:source-ip": ["198.51.100.7"],
            "mailtrail_id": [email.to_string()],
        },
    });
    let event = match event_type {
        "Delivery" => json!({
            "eventType": "Delivery",
            "mail": mail,
            "delivery": {
                "timestamp": "2026-12-01T10:00:01.000Z",
                "processingTimeMillis": 1000,
                "recipients": ["ann@example.com"],
                "smtpResponse": "250 2.6.0 Message received",
                "reportingMTA": "a8-70.smtp-out.amazonses.com",
            },
        }),
        _ => json!({
            "eventType": "Open",
            "mail": mail,
            "open": {
                "ipAddress": "192.0.2.1",
                "timestamp": "2026-12-01T10:05:00.000Z",
                "userAgent": "Mozilla/5.0 (iPhone)",
            },
        }),
    };
    event.to_string()
}

/// A Notification on `topic` signed with `key` (whose certificate is at `cert_url`).
fn ses_notification(
    key: &RsaPrivateKey,
    cert_url: &str,
    version: &str,
    topic: &str,
    message: &str,
    at: i64,
) -> SnsEnvelope {
    let mut envelope = notification(topic, message, at);
    envelope.message_id = Uuid::new_v4().to_string();
    envelope.signing_cert_url = cert_url.into();
    sign_envelope(key, &mut envelope, version);
    envelope
}

fn sns_headers(envelope: &SnsEnvelope) -> Headers {
    vec![
        header("content-type", "text/plain; charset=UTF-8"),
        header("x-amz-sns-message-type", envelope.message_type.clone()),
        header("x-amz-sns-message-id", envelope.message_id.clone()),
        header("x-amz-sns-topic-arn", envelope.topic_arn.clone()),
        header("user-agent", "Amazon Simple Notification Service Agent"),
    ]
}

fn sns_body(envelope: &SnsEnvelope) -> Vec<u8> {
    serde_json::to_vec(envelope).expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn ses_notifications_signed_v1_or_v2_on_acme_or_globex_topics_are_queued_for_that_tenant() {
    let (current, rotated) = sns_keys();
    let fetcher = sns_fetcher();
    let sink = Sink::start_for_ses(&fetcher).await;
    let email = Uuid::new_v4();
    let cases = [
        (
            current,
            CERT_URL,
            "1",
            SES_ACME_OLD_TOPIC,
            "acme",
            "Delivery",
            EventType::Delivered,
        ),
        (
            current,
            CERT_URL,
            "2",
            SES_ACME_NEW_TOPIC,
            "acme",
            "Open",
            EventType::Opened,
        ),
        // After SNS rotated its signing certificate.
        (
            rotated,
            ROTATED_CERT_URL,
            "2",
            SES_ACME_OLD_TOPIC,
            "acme",
            "Open",
            EventType::Opened,
        ),
        (
            current,
            CERT_URL,
            "1",
            SES_GLOBEX_TOPIC,
            "globex",
            "Delivery",
            EventType::Delivered,
        ),
    ];
    let mut expected = Vec::new();
    for (key, cert_url, version, topic, tenant, ses_event, event_type) in cases {
        let envelope = ses_notification(
            key,
            cert_url,
            version,
            topic,
            &ses_message(ses_event, email),
            now(),
        );
        let answer = sink
            .expect(
                200,
                &format!("{ses_event} v{version} on {topic}"),
                "ses",
                &sns_headers(&envelope),
                &sns_body(&envelope),
            )
            .await;
        assert_eq!(answer["accepted"], 1, "{answer}");
        expected.push((format!("{}:0", envelope.message_id), tenant, event_type));
    }
    let events = sink.tracking().await;
    assert_eq!(events.len(), cases.len(), "{events:#?}");
    for (provider_event_id, tenant, event_type) in expected {
        let event = find_event(
            &events,
            &Expected {
                provider: "ses",
                provider_event_id,
                event_type,
                email,
                tenant,
            },
        );
        assert_eq!(
            event.provider_message_id.as_deref(),
            Some("0100019d5c2e2f4a-7b1e4a55-1c2d-4e3f-9a8b-7c6d5e4f3a2b-000000")
        );
    }
    // Each certificate was fetched once, then cached.
    assert_eq!(fetcher.fetches(), 2);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ses_a_repeated_notification_is_accepted_again_with_the_same_event_id() {
    let fetcher = sns_fetcher();
    let sink = Sink::start_for_ses(&fetcher).await;
    let envelope = ses_notification(
        &sns_keys().0,
        CERT_URL,
        "2",
        SES_ACME_NEW_TOPIC,
        &ses_message("Delivery", Uuid::new_v4()),
        now(),
    );
    let event = accepted_twice_with_one_event_id(
        &sink,
        "ses",
        &sns_headers(&envelope),
        &sns_body(&envelope),
    )
    .await;
    assert_eq!(
        event.provider_event_id,
        Some(format!("{}:0", envelope.message_id))
    );
    assert_eq!(event.tenant, "acme");
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ses_forged_stale_malformed_raw_and_oversize_notifications_are_refused() {
    let (current, rotated) = sns_keys();
    let fetcher = sns_fetcher();
    let sink = Sink::start_for_ses(&fetcher).await;
    let email = Uuid::new_v4();
    let message = ses_message("Delivery", email);
    let genuine = ses_notification(current, CERT_URL, "1", SES_ACME_OLD_TOPIC, &message, now());
    let refuse = async |what: &str, envelope: &Value| {
        let body = to_body(envelope);
        sink.expect(401, what, "ses", &json_headers(), &body).await;
    };
    let as_value = |envelope: &SnsEnvelope| serde_json::to_value(envelope).expect("JSON");

    let mut tampered = as_value(&genuine);
    tampered["Message"] = json!(ses_message("Open", Uuid::new_v4()));
    refuse("a changed Message", &tampered).await;
    let mut tampered = as_value(&genuine);
    tampered["TopicArn"] = json!(SES_GLOBEX_TOPIC);
    refuse("a changed TopicArn", &tampered).await;
    refuse(
        "signed with a key other than the certificate's",
        &as_value(&ses_notification(
            rotated,
            CERT_URL,
            "1",
            SES_ACME_OLD_TOPIC,
            &message,
            now(),
        )),
    )
    .await;
    let mut unsigned = as_value(&genuine);
    unsigned
        .as_object_mut()
        .expect("an object")
        .remove("Signature");
    refuse("no Signature", &unsigned).await;
    for bad in ["not base64!", "", "c2hvcnQ="] {
        let mut malformed = as_value(&genuine);
        malformed["Signature"] = json!(bad);
        refuse(&format!("Signature {bad:?}"), &malformed).await;
    }
    for version in ["2", "3", ""] {
        let mut other = as_value(&genuine);
        other["SignatureVersion"] = json!(version);
        refuse(
            &format!("SignatureVersion {version:?} over a v1 signature"),
            &other,
        )
        .await;
    }
    refuse(
        "a Timestamp before the window",
        &as_value(&ses_notification(
            current,
            CERT_URL,
            "2",
            SES_ACME_OLD_TOPIC,
            &message,
            stale(),
        )),
    )
    .await;
    for off_host in [
        "https://sns.us-east-1.amazonaws.com.evil.test/SimpleNotificationService-x.pem",
        "https://evil.test/sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-mailtrail-test.pem",
    ] {
        let mut moved = as_value(&genuine);
        moved["SigningCertURL"] = json!(off_host);
        refuse(&format!("SigningCertURL {off_host}"), &moved).await;
    }
    refuse("not an SNS envelope", &json!({"eventType": "Delivery"})).await;

    // Raw message delivery carries no signature: refused even around a signed envelope.
    let raw = replaced(&sns_headers(&genuine), "x-amz-sns-rawdelivery", "true");
    sink.expect(
        401,
        "raw message delivery",
        "ses",
        &raw,
        &sns_body(&genuine),
    )
    .await;

    let big = ses_notification(
        current,
        CERT_URL,
        "2",
        SES_ACME_OLD_TOPIC,
        &format!("{} {}", message, padding()),
        now(),
    );
    sink.expect(
        413,
        "an over-size body",
        "ses",
        &sns_headers(&big),
        &sns_body(&big),
    )
    .await;
    sink.assert_nothing_published("refused notifications").await;

    // The genuine one passes.
    sink.expect(
        200,
        "the genuine one",
        "ses",
        &sns_headers(&genuine),
        &sns_body(&genuine),
    )
    .await;
    assert_eq!(sink.tracking().await.len(), 1);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ses_a_topic_not_on_the_list_gets_403_and_publishes_nothing() {
    let fetcher = sns_fetcher();
    let sink = Sink::start_for_ses(&fetcher).await;
    // Validly signed by SNS, but for a topic of someone else's account.
    let envelope = ses_notification(
        &sns_keys().0,
        CERT_URL,
        "2",
        SES_OTHER_TOPIC,
        &ses_message("Delivery", Uuid::new_v4()),
        now(),
    );
    sink.expect(
        403,
        "another account's topic",
        "ses",
        &sns_headers(&envelope),
        &sns_body(&envelope),
    )
    .await;
    sink.assert_nothing_published("a foreign topic").await;
    sink.stop().await;
}

/// A SubscriptionConfirmation for `topic` whose SubscribeURL is [`SUBSCRIBE_URL`].
fn subscription_confirmation(topic: &str) -> SnsEnvelope {
    let mut envelope = SnsEnvelope {
        message_type: "SubscriptionConfirmation".into(),
        message_id: Uuid::new_v4().to_string(),
        token: Some("2336412f37fb687f5d51e6e2425dacbba5d0".into()),
        topic_arn: topic.into(),
        subject: None,
        message: format!(
            "You have chosen to subscribe to the topic {topic}.\nTo confirm the subscription, \
             visit the SubscribeURL included in this message."
        ),
        timestamp: timestamp(now()),
        signature_version: "1".into(),
        signature: String::new(),
        signing_cert_url: CERT_URL.into(),
        subscribe_url: Some(SUBSCRIBE_URL.into()),
        unsubscribe_url: None,
    };
    sign_envelope(&sns_keys().0, &mut envelope, "1");
    envelope
}

#[tokio::test(flavor = "multi_thread")]
async fn ses_a_subscription_confirmation_for_an_allowed_topic_fetches_its_subscribe_url() {
    let fetcher = sns_fetcher();
    let sink = Sink::start_for_ses(&fetcher).await;

    // A foreign topic's confirmation is refused without a fetch of its SubscribeURL.
    let foreign = subscription_confirmation(SES_OTHER_TOPIC);
    sink.expect(
        403,
        "another account's subscription",
        "ses",
        &sns_headers(&foreign),
        &sns_body(&foreign),
    )
    .await;
    // Only the certificate was fetched.
    assert_eq!(fetcher.fetches(), 1);

    // A SubscribeURL off the SNS hosts is never fetched, signed or not.
    for off_host in [
        "https://evil.test/?Action=ConfirmSubscription&Token=2336412f37fb687f5d51e6e2425dacbba5d0",
        "http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
    ] {
        let mut elsewhere = subscription_confirmation(SES_ACME_OLD_TOPIC);
        elsewhere.subscribe_url = Some(off_host.into());
        sign_envelope(&sns_keys().0, &mut elsewhere, "1");
        sink.expect(
            401,
            &format!("SubscribeURL {off_host}"),
            "ses",
            &sns_headers(&elsewhere),
            &sns_body(&elsewhere),
        )
        .await;
    }
    assert_eq!(fetcher.fetches(), 1);

    let confirmation = subscription_confirmation(SES_ACME_OLD_TOPIC);
    let answer = sink
        .expect(
            200,
            "an allowed topic's subscription",
            "ses",
            &sns_headers(&confirmation),
            &sns_body(&confirmation),
        )
        .await;
    assert_eq!(answer["confirmed"], true, "{answer}");
    // The certificate came from the cache; the one new fetch is the SubscribeURL.
    assert_eq!(fetcher.fetches(), 2);
    sink.assert_nothing_published("a subscription confirmation")
        .await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ses_a_certificate_that_cannot_be_fetched_gets_503_so_sns_retries() {
    let fetcher = sns_fetcher();
    let sink = Sink::start_for_ses(&fetcher).await;
    let envelope = ses_notification(
        &sns_keys().0,
        UNSERVED_CERT_URL,
        "1",
        SES_ACME_OLD_TOPIC,
        &ses_message("Delivery", Uuid::new_v4()),
        now(),
    );
    for attempt in 1..=2 {
        sink.expect(
            503,
            &format!("no certificate, attempt {attempt}"),
            "ses",
            &sns_headers(&envelope),
            &sns_body(&envelope),
        )
        .await;
        // A failed fetch is not cached: every retry tries again.
        assert_eq!(fetcher.fetches(), attempt);
    }
    sink.assert_nothing_published("an unverifiable notification")
        .await;
    sink.stop().await;
}

// ----------------------------------------------------------------------------------------------
// Resend (Svix)
// ----------------------------------------------------------------------------------------------

fn resend_event(event_type: &str, email: Uuid) -> Vec<u8> {
    let mut data = json!({
        "created_at": "2026-12-01T10:00:00.894719+00:00",
        "email_id": "56761188-7520-42d8-8898-ff6fc54ce618",
        "from": "Acme <news@acme.test>",
        "to": ["ann@example.com"],
        "subject": "Welcome to Acme",
        "tags": [
            {"name": "category", "value": "welcome"},
            {"name": "mailtrail_id", "value": email.to_string()},
        ],
    });
    if event_type == "email.opened" {
        data["open"] = json!({
            "ipAddress": "192.0.2.1",
            "timestamp": "2026-12-01T10:05:00.000Z",
            "userAgent": "Mozilla/5.0 (Macintosh)",
        });
    }
    to_body(&json!({
        "type": event_type,
        "created_at": "2026-12-01T10:00:01.126Z",
        "data": data,
    }))
}

/// Svix's headers (`svix-*`), or the Standard Webhooks names (`webhook-*`) with `family`
/// "webhook".
fn resend_headers(family: &str, secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Headers {
    let key = standard::SigningKey::parse(secret).expect("a whsec_ secret");
    let ts = timestamp.to_string();
    vec![
        header("content-type", "application/json"),
        header(&format!("{family}-id"), id),
        header(&format!("{family}-timestamp"), ts.clone()),
        header(
            &format!("{family}-signature"),
            key.signature_header(id, &ts, body),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn resend_events_signed_with_either_acme_secret_or_globex_are_queued_for_that_tenant() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let cases = [
        (
            RESEND_ACME_OLD,
            "acme",
            "email.delivered",
            EventType::Delivered,
            "msg_rs_old_1",
        ),
        (
            RESEND_ACME_NEW,
            "acme",
            "email.opened",
            EventType::Opened,
            "msg_rs_new_2",
        ),
        (
            RESEND_GLOBEX,
            "globex",
            "email.delivered",
            EventType::Delivered,
            "msg_rs_glx_3",
        ),
    ];
    for (secret, _, event, _, id) in cases {
        let body = resend_event(event, email);
        let headers = resend_headers("svix", secret, id, now(), &body);
        let answer = sink.expect(200, id, "resend", &headers, &body).await;
        assert_eq!(answer["accepted"], 1, "{answer}");
    }
    let events = sink.tracking().await;
    assert_eq!(events.len(), 3, "{events:#?}");
    for (_, tenant, _, event_type, id) in cases {
        let event = find_event(
            &events,
            &Expected {
                provider: "resend",
                provider_event_id: id.to_owned(),
                event_type,
                email,
                tenant,
            },
        );
        assert_eq!(
            event.provider_message_id.as_deref(),
            Some("56761188-7520-42d8-8898-ff6fc54ce618")
        );
    }
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resend_accepts_both_svix_and_webhook_header_names() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    for (family, id) in [("svix", "msg_rs_svix"), ("webhook", "msg_rs_webhook")] {
        let body = resend_event("email.delivered", email);
        let headers = resend_headers(family, RESEND_ACME_OLD, id, now(), &body);
        sink.expect(200, family, "resend", &headers, &body).await;
    }
    let events = sink.tracking().await;
    assert_eq!(events.len(), 2, "{events:#?}");
    for id in ["msg_rs_svix", "msg_rs_webhook"] {
        find_event(
            &events,
            &Expected {
                provider: "resend",
                provider_event_id: id.to_owned(),
                event_type: EventType::Delivered,
                email,
                tenant: "acme",
            },
        );
    }
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resend_a_repeated_request_is_accepted_again_with_the_same_event_id() {
    let sink = Sink::start().await;
    let body = resend_event("email.delivered", Uuid::new_v4());
    let headers = resend_headers("svix", RESEND_ACME_NEW, "msg_rs_repeat", now(), &body);
    let event = accepted_twice_with_one_event_id(&sink, "resend", &headers, &body).await;
    assert_eq!(event.provider_event_id.as_deref(), Some("msg_rs_repeat"));
    assert_eq!(event.tenant, "acme");
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resend_forged_stale_malformed_and_oversize_requests_are_refused_and_publish_nothing() {
    let sink = Sink::start().await;
    let email = Uuid::new_v4();
    let body = resend_event("email.delivered", email);
    let signed = resend_headers("svix", RESEND_ACME_OLD, "msg_rs_refused", now(), &body);
    let refuse = async |what: &str, headers: &Headers, body: &[u8]| {
        sink.expect(401, what, "resend", headers, body).await;
    };

    refuse(
        "a changed body",
        &signed,
        &resend_event("email.delivered", Uuid::new_v4()),
    )
    .await;
    refuse(
        "a changed id",
        &replaced(&signed, "svix-id", "msg_rs_other"),
        &body,
    )
    .await;
    refuse(
        "a changed timestamp",
        &replaced(&signed, "svix-timestamp", &(now() + 1).to_string()),
        &body,
    )
    .await;
    refuse(
        "a secret nobody configured",
        &resend_headers("svix", RESEND_UNKNOWN, "msg_rs_refused", now(), &body),
        &body,
    )
    .await;
    for missing in ["svix-signature", "svix-id", "svix-timestamp"] {
        refuse(&format!("no {missing}"), &without(&signed, missing), &body).await;
    }
    for bad in [
        "v1,not base64!",
        "v2,c2lnbmF0dXJl",
        "garbage",
        "v1,c2hvcnQ=",
    ] {
        refuse(
            &format!("signature {bad:?}"),
            &replaced(&signed, "svix-signature", bad),
            &body,
        )
        .await;
    }
    refuse(
        "a timestamp before the window",
        &resend_headers("svix", RESEND_ACME_OLD, "msg_rs_stale", stale(), &body),
        &body,
    )
    .await;
    refuse(
        "a timestamp after the window",
        &resend_headers(
            "webhook",
            RESEND_ACME_OLD,
            "msg_rs_future",
            now() + WINDOW_SECS as i64 + 60,
            &body,
        ),
        &body,
    )
    .await;

    let mut big: Value = serde_json::from_slice(&body).expect("JSON");
    big["data"]["subject"] = json!(padding());
    let big = to_body(&big);
    sink.expect(
        413,
        "an over-size body",
        "resend",
        &resend_headers("svix", RESEND_ACME_OLD, "msg_rs_big", now(), &big),
        &big,
    )
    .await;
    sink.assert_nothing_published("refused requests").await;
    sink.stop().await;
}
