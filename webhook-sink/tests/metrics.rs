//! `/metrics` after known webhook traffic. A test binary of its own: the metrics recorder is
//! process-wide, so no other test may post to a sink in this process.

use mailtrail_test_support::{TestBroker, amqp_url, eventually, http_post, scrape, try_http_get};
use mailtrail_webhook_sink::verify::standard::SigningKey;
use mailtrail_webhook_sink::{SinkApp, SinkConfig};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn post_standard(port: u16, id: &str, secret: &str, body: &str) -> u16 {
    let key = SigningKey::parse(secret).expect("secret");
    let ts = chrono::Utc::now().timestamp().to_string();
    let signature = key.signature_header(id, &ts, body.as_bytes());
    let headers = [
        ("webhook-id", id),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", signature.as_str()),
        ("content-type", "application/json"),
    ];
    http_post(port, "/v1/webhooks/standard", &headers, body.as_bytes())
        .await
        .0
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_requests_and_events_are_counted_by_provider_and_verdict() {
    mailtrail_runtime::install_metrics();
    let broker = TestBroker::new();
    let mut config = SinkConfig::from_env();
    config.broker.amqp_url = amqp_url();
    config.broker.queue_prefix = broker.prefix().to_owned();
    config.http_addr = "127.0.0.1:0".parse().expect("address");
    config.max_body_bytes = 2048;
    config.standard_secrets = format!("acme={SECRET}");
    let app = SinkApp::build(config).expect("sink");
    let port = app.http_port();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    eventually("the sink is ready", Duration::from_secs(20), || async {
        (try_http_get(port, "/readyz", None).await.ok()?.0 == 200).then_some(())
    })
    .await;

    let email = Uuid::new_v4();
    let event = |kind: &str| {
        format!(
            r#"{{"type": "{kind}", "mailtrail_id": "{email}", "recipient": "ann@example.com",
                "occurred_at": "2026-12-01T10:00:00Z"}}"#
        )
    };
    // Two verified requests: a batch of two events plus one unmappable item, and one event.
    let batch = format!(
        "[{}, {}, {{\"type\": \"accepted\", \"mailtrail_id\": \"{email}\"}}]",
        event("delivered"),
        event("opened")
    );
    assert_eq!(post_standard(port, "msg_1", SECRET, &batch).await, 200);
    assert_eq!(
        post_standard(port, "msg_2", SECRET, &event("clicked")).await,
        200
    );
    // Refused: a forged signature (twice), an over-size body, a provider that does not exist.
    let forged = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    assert_eq!(
        post_standard(port, "msg_3", forged, &event("bounced")).await,
        401
    );
    assert_eq!(
        post_standard(port, "msg_4", forged, &event("bounced")).await,
        401
    );
    let huge = format!("[{}]", vec![event("opened"); 40].join(","));
    assert_eq!(post_standard(port, "msg_5", SECRET, &huge).await, 413);
    let (status, _, _) = http_post(port, "/v1/webhooks/made-up-provider", &[], b"{}").await;
    assert_eq!(status, 404);

    let samples = scrape(port).await;
    let get = |key: &str| samples.get(key).copied().unwrap_or(0.0);
    let requests = |provider: &str, verdict: &str| {
        get(&format!(
            "mailtrail_webhook_requests_total{{provider=\"{provider}\",verdict=\"{verdict}\"}}"
        ))
    };
    assert_eq!(requests("standard", "accepted"), 2.0, "{samples:#?}");
    assert_eq!(requests("standard", "unverified"), 2.0);
    assert_eq!(requests("standard", "too_large"), 1.0);
    assert_eq!(requests("unknown", "not_found"), 1.0);
    let events = |outcome: &str| {
        get(&format!(
            "mailtrail_webhook_events_total{{outcome=\"{outcome}\",provider=\"standard\"}}"
        ))
    };
    assert_eq!(events("accepted"), 3.0);
    assert_eq!(events("set_aside"), 1.0);
    assert_eq!(
        get("mailtrail_webhook_request_seconds_count{provider=\"standard\"}"),
        5.0
    );
    // No series for a made-up provider name: the label takes known names only.
    assert!(!samples.keys().any(|k| k.contains("made-up-provider")));

    stop.cancel();
    handle.await.expect("join").expect("sink stops");
}
