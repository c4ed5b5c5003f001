//! `POST /v1/webhooks/standard` against the real broker: verified events reach the tracking
//! queue before the 2xx; forged, stale, over-size and unroutable requests are refused with the
//! status each provider's retry rules expect.

use lapin::options::BasicGetOptions;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_test_support::{TcpProxy, TestBroker, amqp_url, eventually, http_post, try_http_get};
use mailtrail_webhook_sink::verify::standard::SigningKey;
use mailtrail_webhook_sink::{SinkApp, SinkConfig};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ACME_OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ACME_NEW: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

struct Sink {
    port: u16,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(broker: &TestBroker, amqp: String) -> Sink {
    let mut config = SinkConfig::from_env();
    config.broker.amqp_url = amqp;
    config.broker.amqp_heartbeat_secs = 2;
    config.broker.queue_prefix = broker.prefix().to_owned();
    config.http_addr = "127.0.0.1:0".parse().expect("address");
    config.max_body_bytes = 4096;
    config.standard_secrets = format!("acme={ACME_OLD}, acme={ACME_NEW}");
    let app = SinkApp::build(config).expect("sink");
    let port = app.http_port();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    eventually("the sink is ready", Duration::from_secs(20), || async {
        (try_http_get(port, "/readyz", None).await.ok()?.0 == 200).then_some(())
    })
    .await;
    Sink { port, stop, handle }
}

fn signed_headers(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
    let key = SigningKey::parse(secret).expect("secret");
    let ts = timestamp.to_string();
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), ts.clone()),
        (
            "webhook-signature".into(),
            key.signature_header(id, &ts, body),
        ),
        ("content-type".into(), "application/json".into()),
    ]
}

async fn post(port: u16, headers: &[(String, String)], body: &[u8]) -> (u16, serde_json::Value) {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (status, _, json) = http_post(port, "/v1/webhooks/standard", &pairs, body).await;
    (status, json)
}

/// Posts `body` signed with `secret` as webhook `id` at `timestamp`.
async fn post_signed(
    port: u16,
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> (u16, serde_json::Value) {
    post(port, &signed_headers(secret, id, timestamp, body), body).await
}

/// Every message waiting on `queue`, taken off it.
async fn take_messages(broker: &TestBroker, queue: Queue) -> Vec<lapin::message::BasicGetMessage> {
    let connection = broker.connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(
            broker.topology().queue(queue).as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        messages.push(message);
    }
    messages
}

async fn take_all(broker: &TestBroker, queue: Queue) -> Vec<Vec<u8>> {
    take_messages(broker, queue)
        .await
        .into_iter()
        .map(|message| message.delivery.data)
        .collect()
}

fn event_body(email: Uuid, event_type: &str) -> String {
    format!(
        r#"{{"type": "{event_type}", "mailtrail_id": "{email}", "recipient": "ann@example.com",
            "occurred_at": "2026-12-01T10:00:00Z"}}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn verified_events_are_queued_before_the_answer_and_forgeries_are_refused() {
    mailtrail_test_support::init_tracing();
    let broker = TestBroker::new();
    let sink = start(&broker, amqp_url()).await;
    let now = chrono::Utc::now().timestamp();
    let email = Uuid::new_v4();

    // A batch signed with the older of two active keys: two events queued, one odd item set
    // aside alone.
    let batch = format!(
        "[{}, {}, {{\"type\": \"accepted\", \"mailtrail_id\": \"{email}\", \"occurred_at\": \"2026-12-01T10:00:00Z\"}}]",
        event_body(email, "delivered"),
        event_body(email, "opened")
    );
    let headers = signed_headers(ACME_OLD, "msg_1", now, batch.as_bytes());
    let (status, answer) = post(sink.port, &headers, batch.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["set_aside"], 1);
    let events: Vec<TrackingEvent> = take_all(&broker, Queue::Tracking)
        .await
        .iter()
        .map(|b| serde_json::from_slice(b).expect("a tracking event"))
        .collect();
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.email_id == Some(email) && e.tenant == "acme")
    );
    assert_eq!(take_all(&broker, Queue::DeadLetter).await.len(), 1);

    // A repeat of an accepted request is answered 2xx again, with the same event ids.
    let (status, _) = post(sink.port, &headers, batch.as_bytes()).await;
    assert_eq!(status, 200);
    let again: Vec<TrackingEvent> = take_all(&broker, Queue::Tracking)
        .await
        .iter()
        .map(|b| serde_json::from_slice(b).expect("a tracking event"))
        .collect();
    let ids = |v: &[TrackingEvent]| v.iter().map(|e| e.event_id).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&events));

    // The newer key works too (rotation).
    let one = event_body(email, "clicked");
    let (status, _) = post_signed(sink.port, ACME_NEW, "msg_2", now, one.as_bytes()).await;
    assert_eq!(status, 200);

    // Refusals: tampered body, unknown key, missing or malformed signature, stale timestamp,
    // over-size body.
    let mut tampered = signed_headers(ACME_OLD, "msg_3", now, one.as_bytes());
    let (status, problem) = post(
        sink.port,
        &tampered,
        event_body(email, "bounced").as_bytes(),
    )
    .await;
    assert_eq!(status, 401, "{problem}");
    let unknown = "whsec_dGhpcyBrZXkgaXMgbm90IGNvbmZpZ3VyZWQ=";
    let (status, _) = post_signed(sink.port, unknown, "msg_4", now, one.as_bytes()).await;
    assert_eq!(status, 401);
    tampered.retain(|(k, _)| k != "webhook-signature");
    let (status, _) = post(sink.port, &tampered, one.as_bytes()).await;
    assert_eq!(status, 401);
    // Malformed signature headers: undecodable base64, a valid signature without its `v1,`
    // version, another version only, and an empty value.
    let genuine = SigningKey::parse(ACME_OLD)
        .expect("secret")
        .signature_header("msg_7", &now.to_string(), one.as_bytes());
    let unversioned = genuine
        .strip_prefix("v1,")
        .expect("v1 signature")
        .to_owned();
    for malformed in [
        "v1,not-base64!!".to_owned(),
        unversioned.clone(),
        format!("v2,{unversioned}"),
        String::new(),
    ] {
        let mut headers = signed_headers(ACME_OLD, "msg_7", now, one.as_bytes());
        for (name, value) in &mut headers {
            if name == "webhook-signature" {
                *value = malformed.clone();
            }
        }
        let (status, problem) = post(sink.port, &headers, one.as_bytes()).await;
        assert_eq!(status, 401, "signature {malformed:?}: {problem}");
    }
    let (status, _) = post_signed(sink.port, ACME_OLD, "msg_5", now - 3600, one.as_bytes()).await;
    assert_eq!(status, 401);
    let huge = format!("[{}]", vec![one.clone(); 40].join(","));
    let (status, _) = post_signed(sink.port, ACME_OLD, "msg_6", now, huge.as_bytes()).await;
    assert_eq!(status, 413);
    // Nothing refused reached the tracking queue.
    assert_eq!(
        take_all(&broker, Queue::Tracking).await.len(),
        1,
        "only the rotated-key event"
    );

    sink.stop.cancel();
    sink.handle.await.expect("joins").expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_broker_requests_get_503_and_it_recovers() {
    mailtrail_test_support::init_tracing();
    let broker = TestBroker::new();
    let (proxy, through) = TcpProxy::for_url(&amqp_url()).await.expect("proxy");
    let sink = start(&broker, through).await;
    let email = Uuid::new_v4();
    let body = event_body(email, "delivered");

    proxy.set_refuse(true);
    proxy.cut();
    eventually("the sink notices", Duration::from_secs(20), || async {
        let now = chrono::Utc::now().timestamp();
        let (status, _) = post_signed(sink.port, ACME_OLD, "msg_down", now, body.as_bytes()).await;
        (status == 503).then_some(())
    })
    .await;
    assert!(take_all(&broker, Queue::Tracking).await.is_empty());

    proxy.set_refuse(false);
    eventually(
        "the sink accepts again",
        Duration::from_secs(20),
        || async {
            let now = chrono::Utc::now().timestamp();
            let (status, _) =
                post_signed(sink.port, ACME_OLD, "msg_down", now, body.as_bytes()).await;
            (status == 200).then_some(())
        },
    )
    .await;
    let queued = take_all(&broker, Queue::Tracking).await;
    assert_eq!(queued.len(), 1, "accepted once it answered 200");
    sink.stop.cancel();
    sink.handle.await.expect("joins").expect("stops cleanly");
}

/// The tracking messages on `queue`: each one's `traceparent` header and body.
async fn take_traced(broker: &TestBroker, queue: Queue) -> Vec<(Option<String>, TrackingEvent)> {
    take_messages(broker, queue)
        .await
        .into_iter()
        .map(|message| {
            let traceparent = mailtrail_broker::header_string(
                &message.delivery.properties,
                mailtrail_shared::headers::TRACEPARENT,
            );
            let event = serde_json::from_slice(&message.delivery.data).expect("a tracking event");
            (traceparent, event)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhooks_trace_continues_into_its_tracking_events() {
    use mailtrail_shared::headers::{parse_traceparent, trace_id_of};
    mailtrail_test_support::init_tracing();
    let broker = TestBroker::new();
    let sink = start(&broker, amqp_url()).await;
    let now = chrono::Utc::now().timestamp();
    let email = Uuid::new_v4();

    // The provider (or a proxy in front of the sink) sent a trace: both events continue it,
    // each hop with a span of its own.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let batch = format!(
        "[{}, {}]",
        event_body(email, "delivered"),
        event_body(email, "opened")
    );
    let mut headers = signed_headers(ACME_OLD, "msg_traced", now, batch.as_bytes());
    headers.push(("traceparent".into(), parent.into()));
    let (status, answer) = post(sink.port, &headers, batch.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    let traced = take_traced(&broker, Queue::Tracking).await;
    assert_eq!(traced.len(), 2);
    for (traceparent, event) in &traced {
        let traceparent = traceparent.as_deref().expect("a traceparent header");
        assert_eq!(
            trace_id_of(traceparent).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{event:?}"
        );
        assert_ne!(
            parse_traceparent(traceparent).map(|(_, span)| span),
            Some(0x00f067aa0ba902b7),
            "the sink's hop has a span of its own"
        );
    }

    // Without one (or with garbage), each request starts a trace of its own.
    let mut traces = Vec::new();
    for (n, sent) in [None, Some("garbage")].into_iter().enumerate() {
        let body = event_body(email, "clicked");
        let mut headers =
            signed_headers(ACME_OLD, &format!("msg_untraced_{n}"), now, body.as_bytes());
        if let Some(sent) = sent {
            headers.push(("traceparent".into(), sent.into()));
        }
        let (status, answer) = post(sink.port, &headers, body.as_bytes()).await;
        assert_eq!(status, 200, "{answer}");
        let traced = take_traced(&broker, Queue::Tracking).await;
        assert_eq!(traced.len(), 1);
        let trace = traced[0]
            .0
            .as_deref()
            .and_then(trace_id_of)
            .expect("a well-formed trace");
        assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        traces.push(trace);
    }
    assert_ne!(traces[0], traces[1], "two requests, two traces");
    sink.stop.cancel();
    sink.handle.await.expect("join").expect("sink run");
}
