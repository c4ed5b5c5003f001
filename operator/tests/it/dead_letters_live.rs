//! Dead letters end to end, through the real dispatcher and an SMTP server: a job given up after
//! its retries and a malformed request both appear with their reasons; once the cause is fixed,
//! a replay delivers the email once; a second replay does nothing.

use crate::helpers::{World, timeline};
use mailtrail_operator::keys::{self, Role};
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::{
    ServiceProcess, eventually, free_port, http_get, http_post, target_bin,
};
use std::time::Duration;

/// A dispatcher that gives a job up after two attempts a second apart.
fn impatient_dispatcher(world: &World, smtp: &SmtpCapture) -> ServiceProcess {
    ServiceProcess::spawn(
        "dispatcher",
        target_bin("dispatcher"),
        &[],
        &[
            ("MAILTRAIL_AMQP_URL", mailtrail_test_support::amqp_url()),
            ("MAILTRAIL_QUEUE_PREFIX", world.broker.prefix().to_owned()),
            ("MAILTRAIL_SMTP_URL", smtp.url()),
            ("MAILTRAIL_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
            ("MAILTRAIL_RETRY_SCHEDULE", "1s".to_owned()),
            ("MAILTRAIL_MAX_ATTEMPTS", "2".to_owned()),
        ],
    )
    .expect("start the dispatcher")
}

fn request(key: &str, to: &str) -> String {
    serde_json::json!({
        "id": key, "tenant": "acme", "from": "shop@acme.test", "to": to,
        "subject": "S", "text": "T",
    })
    .to_string()
}

fn received_by(smtp: &SmtpCapture, address: &str) -> usize {
    smtp.messages()
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == address))
        .count()
}

async fn replay(port: u16, key: &str, id: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {key}");
    let (status, _, body) = http_post(
        port,
        &format!("/v1/dead-letters/{id}/replay"),
        &[("Authorization", auth.as_str())],
        b"",
    )
    .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_after_the_cause_is_fixed_delivers_once_and_a_second_does_nothing() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, admin) = keys::create(&mut conn, "ops", None, Role::Admin)
        .await
        .expect("key");
    let mut dispatcher = impatient_dispatcher(&world, &smtp);

    // Ann's mailbox is over quota (4xx) for as long as it takes the dispatcher to give up.
    smtp.defer_recipient("ann@example.com");
    world
        .publish(
            Queue::Mailbox,
            request("o-1", "ann@example.com").as_bytes(),
            None,
        )
        .await;
    world
        .publish(Queue::Mailbox, b"{\"id\": \"broken\"", None)
        .await;
    let email = ids::email_id("acme", "o-1", "ann@example.com");

    let dead_letters = eventually(
        "both set aside and listed",
        Duration::from_secs(60),
        || async {
            let (status, _, body) = http_get(port, "/v1/dead-letters", Some(&admin)).await;
            let items = body["items"].as_array().cloned().unwrap_or_default();
            (status == 200 && items.len() == 2).then_some(items)
        },
    )
    .await;
    let reason_of = |reason: &str| {
        dead_letters
            .iter()
            .find(|d| d["reason"] == reason)
            .unwrap_or_else(|| panic!("a dead letter with reason {reason}: {dead_letters:?}"))
            .clone()
    };
    let exhausted = reason_of("retries_exhausted");
    let malformed = reason_of("not_json");
    assert_eq!(exhausted["source_queue"], world.queue(Queue::Dispatching));
    assert_eq!(malformed["source_queue"], world.queue(Queue::Mailbox));
    eventually("the email is failed", Duration::from_secs(30), || async {
        timeline(&world, email)
            .await
            .ends_with("failed")
            .then_some(())
    })
    .await;
    assert_eq!(received_by(&smtp, "ann@example.com"), 0);

    // The mailbox is fixed; the admin replays the job.
    smtp.accept_recipient("ann@example.com");
    let id = exhausted["id"].as_str().expect("an id").to_owned();
    let (status, body) = replay(port, &admin, &id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["already_replayed"], false);
    eventually(
        "the replayed job is dispatched",
        Duration::from_secs(30),
        || async {
            timeline(&world, email)
                .await
                .ends_with("dispatched")
                .then_some(())
        },
    )
    .await;
    assert_eq!(received_by(&smtp, "ann@example.com"), 1);
    let history = timeline(&world, email).await;
    assert!(
        history.ends_with(",failed,queued,dispatched"),
        "the history shows the replay: {history}"
    );
    let (_, _, summary) = http_get(port, &format!("/v1/messages/{email}"), Some(&admin)).await;
    assert_eq!(
        summary["status"], "dispatched",
        "the summary follows the retry"
    );

    // A second replay publishes nothing: after a later email has gone all the way through,
    // Ann still got exactly one.
    let (status, body) = replay(port, &admin, &id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["already_replayed"], true);
    world
        .publish(
            Queue::Mailbox,
            request("marker", "bob@example.com").as_bytes(),
            None,
        )
        .await;
    let marker = ids::email_id("acme", "marker", "bob@example.com");
    eventually(
        "the marker is dispatched",
        Duration::from_secs(30),
        || async {
            timeline(&world, marker)
                .await
                .ends_with("dispatched")
                .then_some(())
        },
    )
    .await;
    assert_eq!(received_by(&smtp, "ann@example.com"), 1);
    assert_eq!(
        world
            .count(&format!(
                "SELECT replay_count::bigint FROM dead_letters WHERE id = '{id}'"
            ))
            .await,
        1
    );

    dispatcher.terminate();
    let _ = dispatcher.wait_exit(Duration::from_secs(15)).await;
    stop.cancel();
    handle.await.expect("operator");
}
