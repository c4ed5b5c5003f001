//! Provider events through the webhook sink into emails' histories: emails are sent (operator in
//! process, the dispatcher binary, smtp-capture), then for every provider format (Mailgun,
//! SendGrid, Postmark, SES via SNS, Resend, Standard Webhooks) correctly signed `delivered`,
//! `opened` and `clicked` webhooks for one email — and a `bounced` for another — are posted
//! three times each in a shuffled order; the admin API shows each event once, in order, with
//! the right summary.

use crate::flight::dispatcher;
use crate::helpers::{World, http_get};
use chrono::{DateTime, SecondsFormat, Utc};
use mailtrail_operator::keys::{self, Role};
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::{eventually, http_post, try_http_get};
use mailtrail_webhook_sink::verify::sns::testing::{
    CERT_URL, StaticFetcher, notification, self_signed_certificate_pem, sign_envelope,
};
use mailtrail_webhook_sink::verify::{mailgun, postmark, sendgrid, standard};
use mailtrail_webhook_sink::{SinkApp, SinkConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const RESEND_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const MAILGUN_KEY: &str = "mailgun-signing-key";
const GLOBEX_MAILGUN_KEY: &str = "globex-mailgun-signing-key";
const POSTMARK_USER: &str = "postmark:s3cret-pass";
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-events";

/// How every provider signs, with the test's own keys.
struct Signers {
    standard: standard::SigningKey,
    resend: standard::SigningKey,
    mailgun: mailgun::SigningKey,
    sendgrid: p256::ecdsa::SigningKey,
    ses: rsa::RsaPrivateKey,
}

/// One webhook request, ready to post as often as needed.
struct Webhook {
    provider: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Delivered,
    Opened,
    Clicked,
    Bounced,
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Signers {
    /// `kind` for `email` (sent to `to`) at `at`, in `provider`'s own format, signed now.
    fn webhook(
        &self,
        provider: &'static str,
        kind: Kind,
        email: Uuid,
        to: &str,
        at: DateTime<Utc>,
    ) -> Webhook {
        let now = Utc::now().timestamp().to_string();
        let delivery_id = format!("{provider}-{}-{email}", kind as u8);
        let url = "https://shop.acme.test/sale";
        let (headers, body): (Vec<(String, String)>, String) = match provider {
            "standard" | "resend" => {
                let body = if provider == "standard" {
                    let event_type = match kind {
                        Kind::Delivered => "delivered",
                        Kind::Opened => "opened",
                        Kind::Clicked => "clicked",
                        Kind::Bounced => "bounced",
                    };
                    json!({"type": event_type, "mailtrail_id": email, "recipient": to,
                           "occurred_at": iso(at), "details": {"url": url}})
                } else {
                    let event_type = match kind {
                        Kind::Delivered => "email.delivered",
                        Kind::Opened => "email.opened",
                        Kind::Clicked => "email.clicked",
                        Kind::Bounced => "email.bounced",
                    };
                    json!({"type": event_type, "created_at": iso(at), "data": {
                        "email_id": format!("re-{email}"), "to": [to],
                        "tags": [{"name": "mailtrail_id", "value": email}],
                        "click": {"link": url, "timestamp": iso(at), "ipAddress": "192.0.2.8",
                                  "userAgent": "Mozilla/5.0"},
                        "bounce": {"type": "Permanent", "subType": "General",
                                   "message": "mailbox does not exist"}}})
                };
                let body = body.to_string();
                let key = if provider == "standard" {
                    &self.standard
                } else {
                    &self.resend
                };
                let prefix = if provider == "standard" {
                    "webhook"
                } else {
                    "svix"
                };
                let signature = key.signature_header(&delivery_id, &now, body.as_bytes());
                (
                    vec![
                        (format!("{prefix}-id"), delivery_id),
                        (format!("{prefix}-timestamp"), now),
                        (format!("{prefix}-signature"), signature),
                    ],
                    body,
                )
            }
            "mailgun" => {
                let token = format!("{:0>50}", delivery_id.replace('-', ""));
                let token = &token[token.len() - 50..];
                let mut data = json!({"event": "delivered", "timestamp": at.timestamp_millis() as f64 / 1000.0,
                    "id": delivery_id, "recipient": to,
                    "message": {"headers": {"message-id": format!("{email}@mg.acme.test")}},
                    "user-variables": {"mailtrail_id": email}});
                match kind {
                    Kind::Delivered => {}
                    Kind::Opened => data["event"] = json!("opened"),
                    Kind::Clicked => {
                        data["event"] = json!("clicked");
                        data["url"] = json!(url);
                    }
                    Kind::Bounced => {
                        data["event"] = json!("failed");
                        data["severity"] = json!("permanent");
                        data["delivery-status"] = json!({"code": 550, "enhanced-code": "5.1.1", "description": "no such user"});
                    }
                }
                let body = json!({"signature": {"timestamp": now, "token": token,
                    "signature": self.mailgun.signature(&now, token)}, "event-data": data});
                (Vec::new(), body.to_string())
            }
            "sendgrid" => {
                let mut event = json!({"email": to, "timestamp": at.timestamp(),
                    "sg_event_id": delivery_id, "sg_message_id": format!("sg{}.filter-1", email.simple()),
                    "mailtrail_id": email});
                match kind {
                    Kind::Delivered => event["event"] = json!("delivered"),
                    Kind::Opened => event["event"] = json!("open"),
                    Kind::Clicked => {
                        event["event"] = json!("click");
                        event["url"] = json!(url);
                    }
                    Kind::Bounced => {
                        event["event"] = json!("bounce");
                        event["type"] = json!("bounce");
                        event["status"] = json!("5.1.1");
                        event["reason"] = json!("550 5.1.1 no such user");
                    }
                }
                let body = format!("{}\r\n", json!([event]));
                let signature = sendgrid::testing::sign(&self.sendgrid, &now, body.as_bytes());
                (
                    vec![
                        (sendgrid::TIMESTAMP_HEADER.into(), now),
                        (sendgrid::SIGNATURE_HEADER.into(), signature),
                    ],
                    body,
                )
            }
            "postmark" => {
                let mut record = json!({"MessageID": format!("pm-{email}"), "Recipient": to,
                    "MessageStream": "outbound", "Metadata": {"mailtrail_id": email}});
                match kind {
                    Kind::Delivered => {
                        record["RecordType"] = json!("Delivery");
                        record["DeliveredAt"] = json!(iso(at));
                    }
                    Kind::Opened => {
                        record["RecordType"] = json!("Open");
                        record["ReceivedAt"] = json!(iso(at));
                        record["FirstOpen"] = json!(true);
                    }
                    Kind::Clicked => {
                        record["RecordType"] = json!("Click");
                        record["ReceivedAt"] = json!(iso(at));
                        record["OriginalLink"] = json!(url);
                    }
                    Kind::Bounced => {
                        record["RecordType"] = json!("Bounce");
                        record["Type"] = json!("HardBounce");
                        record["Email"] = json!(to);
                        record["BouncedAt"] = json!(iso(at));
                        record["Details"] = json!("550 5.1.1 unknown user");
                    }
                }
                (
                    vec![
                        (
                            "authorization".into(),
                            postmark::basic_header(POSTMARK_USER),
                        ),
                        ("x-pm-webhook-trace-id".into(), delivery_id),
                    ],
                    record.to_string(),
                )
            }
            "ses" => {
                let mail = json!({"timestamp": iso(at), "messageId": format!("ses-{email}"),
                    "destination": [to], "tags": {"mailtrail_id": [email]}});
                let message = match kind {
                    Kind::Delivered => json!({"eventType": "Delivery", "mail": mail,
                        "delivery": {"timestamp": iso(at), "recipients": [to], "smtpResponse": "250 ok"}}),
                    Kind::Opened => json!({"eventType": "Open", "mail": mail,
                        "open": {"timestamp": iso(at), "ipAddress": "192.0.2.9", "userAgent": "Mozilla"}}),
                    Kind::Clicked => json!({"eventType": "Click", "mail": mail,
                        "click": {"timestamp": iso(at), "link": url, "ipAddress": "192.0.2.9"}}),
                    Kind::Bounced => json!({"eventType": "Bounce", "mail": mail,
                        "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
                                   "timestamp": iso(at), "bouncedRecipients": [
                                       {"emailAddress": to, "status": "5.1.1",
                                        "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}}),
                };
                let mut envelope =
                    notification(TOPIC, &message.to_string(), Utc::now().timestamp());
                envelope.message_id = delivery_id;
                sign_envelope(&self.ses, &mut envelope, "2");
                (
                    vec![("x-amz-sns-message-type".into(), "Notification".into())],
                    serde_json::to_string(&envelope).expect("envelope"),
                )
            }
            other => panic!("no such provider {other}"),
        };
        Webhook {
            provider,
            headers,
            body: body.into_bytes(),
        }
    }
}

const PROVIDERS: [&str; 6] = [
    "mailgun", "sendgrid", "postmark", "ses", "resend", "standard",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_provider_format_lands_once_each_in_order() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let (stop_operator, operator, api) = world.start_operator_with_port().await;
    let _dispatcher = dispatcher(&world, &smtp, None);

    let signers = Signers {
        standard: standard::SigningKey::parse(STANDARD_SECRET).expect("secret"),
        resend: standard::SigningKey::parse(RESEND_SECRET).expect("secret"),
        mailgun: mailgun::SigningKey::new(MAILGUN_KEY).expect("key"),
        sendgrid: p256::ecdsa::SigningKey::random(&mut rand_core::OsRng),
        ses: rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("RSA key"),
    };
    let mut config = SinkConfig::from_env();
    config.broker.amqp_url = mailtrail_test_support::amqp_url();
    config.broker.queue_prefix = world.broker.prefix().to_owned();
    config.http_addr = "127.0.0.1:0".parse().expect("address");
    config.standard_secrets = format!("acme={STANDARD_SECRET}");
    config.resend_secrets = format!("acme={RESEND_SECRET}");
    config.mailgun_signing_keys = format!("acme={MAILGUN_KEY},globex={GLOBEX_MAILGUN_KEY}");
    config.sendgrid_public_keys = format!(
        "acme={}",
        sendgrid::testing::public_key_base64(&signers.sendgrid)
    );
    config.postmark_credentials = format!("acme={POSTMARK_USER}");
    config.ses_topics = format!("acme={TOPIC}");
    let fetcher = StaticFetcher::new().with(CERT_URL, self_signed_certificate_pem(&signers.ses));
    let sink = SinkApp::build_with_fetcher(config, Arc::new(fetcher)).expect("sink");
    let sink_port = sink.http_port();
    let stop_sink = CancellationToken::new();
    let sink_task = tokio::spawn(sink.run_until_stopped(stop_sink.clone()));

    // Per provider: ann gets delivered, opened, clicked; bob bounces.
    let mut emails = Vec::new();
    for provider in PROVIDERS {
        for name in ["ann", "bob"] {
            let key = format!("{provider}-{name}");
            let to = format!("{name}@example.com");
            let body = format!(
                r#"{{"id": "{key}", "tenant": "acme", "from": "shop@acme.test", "to": "{to}", "subject": "S", "text": "T"}}"#
            );
            world.publish(Queue::Mailbox, body.as_bytes(), None).await;
            emails.push((provider, name, ids::email_id("acme", &key, &to), to));
        }
    }
    eventually(
        "every email dispatched",
        Duration::from_secs(60),
        || async {
            (world
                .count("SELECT count(*) FROM emails WHERE status = 'dispatched'")
                .await
                == 12)
                .then_some(())
        },
    )
    .await;
    eventually("the sink is ready", Duration::from_secs(20), || async {
        (try_http_get(sink_port, "/readyz", None).await.ok()?.0 == 200).then_some(())
    })
    .await;

    let base = Utc::now();
    let mut webhooks = Vec::new();
    for (provider, name, email, to) in &emails {
        let at = |seconds: i64| base + chrono::Duration::seconds(seconds);
        if *name == "ann" {
            for (kind, seconds) in [
                (Kind::Delivered, 10),
                (Kind::Opened, 20),
                (Kind::Clicked, 30),
            ] {
                webhooks.push(signers.webhook(provider, kind, *email, to, at(seconds)));
            }
        } else {
            webhooks.push(signers.webhook(provider, Kind::Bounced, *email, to, at(10)));
        }
    }
    // Each request three times, all shuffled: later events often arrive first.
    let mut order: Vec<usize> = (0..webhooks.len()).flat_map(|i| [i, i, i]).collect();
    let seed: u64 = rand::random();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    for index in order {
        let webhook = &webhooks[index];
        let headers: Vec<(&str, &str)> = webhook
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, _, answer) = http_post(
            sink_port,
            &format!("/v1/webhooks/{}", webhook.provider),
            &headers,
            &webhook.body,
        )
        .await;
        assert_eq!(status, 200, "{} (seed {seed}): {answer}", webhook.provider);
        assert_eq!(answer["accepted"], 1, "{}: {answer}", webhook.provider);
    }

    let mut conn = world.pool().get().await.expect("db");
    let (_, reader) = keys::create(&mut conn, "ops", Some("acme"), Role::Read)
        .await
        .expect("key");
    for (provider, name, email, _) in &emails {
        let expected = if *name == "ann" { 6 } else { 4 };
        let history = eventually(
            &format!("{provider} {name}'s history is complete"),
            Duration::from_secs(30),
            || async {
                let (status, _, body) =
                    http_get(api, &format!("/v1/messages/{email}"), Some(&reader)).await;
                (status == 200 && body["events"].as_array()?.len() == expected).then_some(body)
            },
        )
        .await;
        let events = history["events"].as_array().expect("events");
        let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        let summary = &history["summary"];
        if *name == "ann" {
            assert_eq!(
                types,
                [
                    "accepted",
                    "queued",
                    "dispatched",
                    "delivered",
                    "opened",
                    "clicked"
                ],
                "{provider}"
            );
            assert_eq!(history["status"], "clicked", "{provider}");
            assert_eq!(summary["open_count"], 1, "{provider}");
            assert_eq!(summary["click_count"], 1, "{provider}");
            let opened_at = events[4]["occurred_at"].as_str().expect("time");
            let first_opened: DateTime<Utc> = summary["first_opened_at"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("first_opened_at");
            assert_eq!(
                Some(first_opened),
                opened_at.parse().ok(),
                "{provider}: first open is the open's own time"
            );
            let clicked_at = events[5]["occurred_at"].as_str().expect("time");
            let first_clicked: DateTime<Utc> = summary["first_clicked_at"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("first_clicked_at");
            assert_eq!(
                Some(first_clicked),
                clicked_at.parse().ok(),
                "{provider}: first click is the click's own time"
            );
            assert_eq!(
                events[5]["details"]["url"], "https://shop.acme.test/sale",
                "{provider}"
            );
            assert_eq!(events[5]["source"], format!("webhook:{provider}"));
        } else {
            assert_eq!(
                types,
                ["accepted", "queued", "dispatched", "bounced"],
                "{provider}"
            );
            assert_eq!(history["status"], "bounced", "{provider}");
            if *provider != "standard" {
                assert_eq!(
                    summary["bounce"]["bounce_kind"], "hard",
                    "{provider}: {summary}"
                );
            }
        }
    }
    // Every request was confirmed on the tracking queue before its 200; repeats are never
    // recorded twice.
    assert_eq!(
        world
            .count("SELECT count(*) FROM events WHERE source LIKE 'webhook:%'")
            .await,
        24
    );
    assert_eq!(world.count("SELECT count(*) FROM dead_letters").await, 0);

    // Another tenant's genuine key cannot write into acme's history: its complaint about
    // acme's email is set aside, not recorded.
    let (_, _, ann, to) = &emails[0];
    let mut forged = Signers {
        mailgun: mailgun::SigningKey::new(GLOBEX_MAILGUN_KEY).expect("key"),
        ..signers
    }
    .webhook("mailgun", Kind::Bounced, *ann, to, base);
    forged.headers.clear();
    let (status, _, answer) = http_post(sink_port, "/v1/webhooks/mailgun", &[], &forged.body).await;
    assert_eq!(
        status, 200,
        "the sink verifies the key; the operator judges the tenant: {answer}"
    );
    eventually(
        "the forged bounce is set aside",
        Duration::from_secs(20),
        || async {
            (world
                .count("SELECT count(*) FROM dead_letters WHERE reason = 'tenant_mismatch'")
                .await
                == 1)
                .then_some(())
        },
    )
    .await;
    let (_, _, history) = http_get(api, &format!("/v1/messages/{ann}"), Some(&reader)).await;
    assert_eq!(history["status"], "clicked");
    assert_eq!(history["events"].as_array().map(Vec::len), Some(6));

    stop_sink.cancel();
    sink_task.await.expect("joins").expect("sink stops");
    stop_operator.cancel();
    operator.await.expect("operator stops");
}
