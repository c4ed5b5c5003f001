//! Provider events through the webhook sink into an email's history: an email is sent (operator
//! in process, the dispatcher binary, smtp-capture), then signed `delivered`, `opened` and
//! `clicked` webhooks — and a `bounced` for another email — are posted three times each in a
//! shuffled order; the admin API shows each event once, in order, with the right summary.

use crate::flight::dispatcher;
use crate::helpers::{World, http_get};
use mailtrail_operator::keys::{self, Role};
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::{eventually, http_post, try_http_get};
use mailtrail_webhook_sink::verify::standard::SigningKey;
use mailtrail_webhook_sink::{SinkApp, SinkConfig};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread")]
async fn repeated_shuffled_webhooks_land_once_each_in_order() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let (stop_operator, operator, api) = world.start_operator_with_port().await;
    let _dispatcher = dispatcher(&world, &smtp, None);
    let mut config = SinkConfig::from_env();
    config.broker.amqp_url = mailtrail_test_support::amqp_url();
    config.broker.queue_prefix = world.broker.prefix().to_owned();
    config.http_addr = "127.0.0.1:0".parse().expect("address");
    config.standard_secrets = format!("acme={SECRET}");
    let sink = SinkApp::build(config).expect("sink");
    let sink_port = sink.http_port();
    let stop_sink = CancellationToken::new();
    let sink_task = tokio::spawn(sink.run_until_stopped(stop_sink.clone()));

    for (id, to) in [("wh-1", "ann@example.com"), ("wh-2", "bob@example.com")] {
        let body = format!(
            r#"{{"id": "{id}", "tenant": "acme", "from": "shop@acme.test", "to": "{to}", "subject": "S", "text": "T"}}"#
        );
        world.publish(Queue::Mailbox, body.as_bytes(), None).await;
    }
    let ann = ids::email_id("acme", "wh-1", "ann@example.com");
    let bob = ids::email_id("acme", "wh-2", "bob@example.com");
    eventually(
        "both emails dispatched",
        Duration::from_secs(30),
        || async {
            (world
                .count("SELECT count(*) FROM emails WHERE status = 'dispatched'")
                .await
                == 2)
                .then_some(())
        },
    )
    .await;
    eventually("the sink is ready", Duration::from_secs(20), || async {
        (try_http_get(sink_port, "/readyz", None).await.ok()?.0 == 200).then_some(())
    })
    .await;

    let key = SigningKey::parse(SECRET).expect("secret");
    let webhook = |id: &'static str, email: uuid::Uuid, event_type: &str, at: &str| {
        let body = format!(
            r#"{{"type": "{event_type}", "mailtrail_id": "{email}", "occurred_at": "{at}",
                "details": {{"source": "relay-1"}}}}"#
        );
        (id, body)
    };
    let in_a_minute = |seconds: i64| {
        (chrono::Utc::now() + chrono::Duration::seconds(seconds))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let hooks = [
        webhook("h-delivered", ann, "delivered", &in_a_minute(10)),
        webhook("h-opened", ann, "opened", &in_a_minute(20)),
        webhook("h-clicked", ann, "clicked", &in_a_minute(30)),
        webhook("h-bounced", bob, "bounced", &in_a_minute(10)),
    ];
    // Three rounds in shuffled orders: the last event first, repeats in between.
    let order = [3, 2, 0, 1, 2, 1, 3, 0, 0, 3, 1, 2];
    for index in order {
        let (id, body) = &hooks[index];
        let ts = chrono::Utc::now().timestamp().to_string();
        let signature = key.signature_header(id, &ts, body.as_bytes());
        let (status, _, answer) = http_post(
            sink_port,
            "/v1/webhooks/standard",
            &[
                ("webhook-id", id),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &signature),
            ],
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }

    let mut conn = world.pool().get().await.expect("db");
    let (_, reader) = keys::create(&mut conn, "ops", Some("acme"), Role::Read)
        .await
        .expect("key");
    let history = eventually(
        "ann's history is complete",
        Duration::from_secs(20),
        || async {
            let (status, _, body) =
                http_get(api, &format!("/v1/messages/{ann}"), Some(&reader)).await;
            (status == 200 && body["events"].as_array()?.len() == 6).then_some(body)
        },
    )
    .await;
    let types: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "accepted",
            "queued",
            "dispatched",
            "delivered",
            "opened",
            "clicked"
        ]
    );
    assert_eq!(history["status"], "clicked");
    let bob_history = eventually("bob's bounce", Duration::from_secs(20), || async {
        let (_, _, body) = http_get(api, &format!("/v1/messages/{bob}"), Some(&reader)).await;
        (body["status"] == "bounced").then_some(body)
    })
    .await;
    assert_eq!(bob_history["events"].as_array().map(Vec::len), Some(4));
    // Every request was confirmed on the tracking queue before its 200; repeats are never
    // recorded twice.
    let webhook_events = world
        .count("SELECT count(*) FROM events WHERE source = 'webhook:standard'")
        .await;
    assert_eq!(webhook_events, 4);

    stop_sink.cancel();
    sink_task.await.expect("joins").expect("sink stops");
    stop_operator.cancel();
    operator.await.expect("operator stops");
}
