//! End to end through real processes: the operator and the dispatcher binaries, RabbitMQ,
//! PostgreSQL and a real SMTP server (smtp-capture). Needs the dispatcher binary, which
//! `cargo test --workspace` (the test command) builds.

use crate::helpers::World;
use mailtrail_shared::topology::Queue;
use mailtrail_smtp_capture::{Mode, SmtpCapture};
use mailtrail_test_support::{ServiceProcess, TcpProxy, eventually, free_port, target_bin};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn operator(world: &World) -> ServiceProcess {
    ServiceProcess::spawn(
        "operator",
        env!("CARGO_BIN_EXE_operator"),
        &["run"],
        &world.operator_env(),
    )
    .expect("start the operator")
}

pub fn dispatcher(world: &World, smtp: &SmtpCapture, amqp_url: Option<String>) -> ServiceProcess {
    dispatcher_on_port(world, smtp, amqp_url, free_port())
}

/// Like [`dispatcher`], with its HTTP endpoints (health, metrics) on `port`.
pub fn dispatcher_on_port(
    world: &World,
    smtp: &SmtpCapture,
    amqp_url: Option<String>,
    port: u16,
) -> ServiceProcess {
    dispatcher_with_env(world, smtp, amqp_url, port, &[])
}

/// Like [`dispatcher_on_port`], with `extra` settings (they win over the defaults).
pub fn dispatcher_with_env(
    world: &World,
    smtp: &SmtpCapture,
    amqp_url: Option<String>,
    port: u16,
    extra: &[(&'static str, String)],
) -> ServiceProcess {
    let program = target_bin("dispatcher");
    assert!(
        program.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test.sh does)",
        program.display()
    );
    let mut env = vec![
        (
            "MAILTRAIL_AMQP_URL",
            amqp_url.unwrap_or_else(mailtrail_test_support::amqp_url),
        ),
        ("MAILTRAIL_AMQP_HEARTBEAT_SECS", "2".to_owned()),
        ("MAILTRAIL_QUEUE_PREFIX", world.broker.prefix().to_owned()),
        ("MAILTRAIL_SMTP_URL", smtp.url()),
        ("MAILTRAIL_SMTP_TIMEOUT_MS", "3000".to_owned()),
        ("MAILTRAIL_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("MAILTRAIL_RETRY_SCHEDULE", "1s".to_owned()),
        ("MAILTRAIL_MAX_ATTEMPTS", "60".to_owned()),
    ];
    env.extend_from_slice(extra);
    ServiceProcess::spawn("dispatcher", program, &[], &env).expect("start the dispatcher")
}

fn request(n: usize) -> String {
    let to = if n.is_multiple_of(2) {
        format!(r#"["a{n}@example.com", "b{n}@example.org"]"#)
    } else {
        format!(r#""a{n}@example.com""#)
    };
    format!(
        r#"{{"id": "flight-{n}", "tenant": "acme", "from": "Acme <shop@acme.test>", "to": {to},
            "subject": "Order {n}", "text": "Thanks", "html": "<p>Thanks</p>"}}"#
    )
}

/// email id → (recipient, timeline as "type,type,…").
async fn histories(world: &World) -> BTreeMap<String, (String, String)> {
    world
        .query(
            "SELECT m.id::text, m.recipient_canonical,
                    string_agg(e.event_type, ',' ORDER BY e.occurred_at, e.lifecycle_rank, e.seq)
               FROM emails m JOIN events e ON e.email_id = m.id
              GROUP BY m.id, m.recipient_canonical",
        )
        .await
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

async fn count_status(world: &World, status: &str) -> i64 {
    world
        .count(&format!(
            "SELECT count(*) FROM emails WHERE status = '{status}'"
        ))
        .await
}

/// X-Mailtrail-Id → how many times the SMTP server received it, and to whom.
fn received(smtp: &SmtpCapture) -> BTreeMap<String, (usize, Vec<String>)> {
    let mut seen: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    for message in smtp.messages() {
        let id = message.header("X-Mailtrail-Id").unwrap_or_default();
        let entry = seen.entry(id).or_default();
        entry.0 += 1;
        entry.1.clone_from(&message.rcpt_to);
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_requests_are_sent_once_each_and_their_histories_say_so() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let mut operator = operator(&world);
    let mut dispatcher = dispatcher(&world, &smtp, None);
    for n in 0..500 {
        world
            .publish(Queue::Mailbox, request(n).as_bytes(), None)
            .await;
    }
    let emails = 750;
    eventually(
        "every email dispatched",
        Duration::from_secs(90),
        || async { (count_status(&world, "dispatched").await == emails).then_some(()) },
    )
    .await;

    let histories = histories(&world).await;
    assert_eq!(histories.len(), emails as usize);
    let seen = received(&smtp);
    for (email_id, (recipient, timeline)) in &histories {
        assert_eq!(timeline, "accepted,queued,dispatched", "email {email_id}");
        let (times, rcpt_to) = seen
            .get(email_id)
            .unwrap_or_else(|| panic!("email {email_id} never reached the SMTP server"));
        assert_eq!(*times, 1, "email {email_id} sent {times} times");
        assert_eq!(rcpt_to, &vec![recipient.clone()], "one envelope recipient");
    }
    assert_eq!(smtp.message_count(), emails as usize);
    // The dispatched event carries the server's queue id.
    let with_queue_id = world
        .count(
            "SELECT count(*) FROM events WHERE event_type = 'dispatched' AND provider = 'smtp'
               AND provider_message_id IS NOT NULL",
        )
        .await;
    assert_eq!(with_queue_id, emails);

    // The same 500 again, then one new request as a marker: once the marker is dispatched,
    // everything published before it has been handled — and nothing new was sent.
    for n in 0..500 {
        world
            .publish(Queue::Mailbox, request(n).as_bytes(), None)
            .await;
    }
    world
        .publish(Queue::Mailbox, request(501).as_bytes(), None)
        .await;
    eventually("the marker dispatched", Duration::from_secs(60), || async {
        (count_status(&world, "dispatched").await == emails + 1).then_some(())
    })
    .await;
    assert_eq!(smtp.message_count(), emails as usize + 1);
    assert_eq!(world.count("SELECT count(*) FROM requests").await, 501);

    for process in [&mut operator, &mut dispatcher] {
        process.terminate();
        let status = process
            .wait_exit(Duration::from_secs(15))
            .await
            .expect("exits after SIGTERM");
        assert!(status.success(), "{} exits 0: {status:?}", process.name());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_trouble_defers_then_delivers_once_and_an_unknown_recipient_bounces() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    smtp.set_mode(Mode::TransientFailure);
    smtp.reject_recipient("nobody@example.com");
    let _operator = operator(&world);
    let _dispatcher = dispatcher(&world, &smtp, None);
    let good = 10;
    for n in 0..good {
        let body = format!(
            r#"{{"id": "trouble-{n}", "from": "shop@acme.test", "to": "u{n}@example.com", "subject": "S", "text": "T"}}"#
        );
        world.publish(Queue::Mailbox, body.as_bytes(), None).await;
    }
    let bad = r#"{"id": "trouble-bad", "from": "shop@acme.test", "to": "nobody@example.com", "subject": "S", "text": "T"}"#;
    world.publish(Queue::Mailbox, bad.as_bytes(), None).await;
    let emails_deferred = || async {
        world
            .count("SELECT count(DISTINCT email_id) FROM events WHERE event_type = 'deferred'")
            .await
    };
    eventually(
        "every email deferred by a 4xx answer",
        Duration::from_secs(30),
        || async { (emails_deferred().await == good + 1).then_some(()) },
    )
    .await;
    smtp.set_mode(Mode::DropConnections);
    let deferred_by_drops = || async {
        world
            .count(
                "SELECT count(*) FROM events WHERE event_type = 'deferred'
                   AND details->>'reason' NOT LIKE '%451%'",
            )
            .await
    };
    eventually(
        "dropped connections recorded as deferred",
        Duration::from_secs(30),
        || async { (deferred_by_drops().await > good).then_some(()) },
    )
    .await;
    assert_eq!(
        smtp.message_count(),
        0,
        "nothing got through while in trouble"
    );
    smtp.set_mode(Mode::Accept);
    eventually(
        "the good mail delivered",
        Duration::from_secs(30),
        || async { (count_status(&world, "dispatched").await == good).then_some(()) },
    )
    .await;
    // `550 5.1.1 … no such user`: the mailbox does not exist, a hard bounce.
    eventually(
        "the unknown recipient bounced",
        Duration::from_secs(30),
        || async { (count_status(&world, "bounced").await == 1).then_some(()) },
    )
    .await;
    let seen = received(&smtp);
    assert_eq!(seen.len(), good as usize);
    assert!(seen.values().all(|(times, _)| *times == 1), "{seen:?}");
    let failed = world
        .query(
            "SELECT e.details->>'reason', e.details->>'bounce_kind'
               FROM events e JOIN emails m ON m.id = e.email_id
              WHERE e.event_type = 'bounced' AND m.recipient_canonical = 'nobody@example.com'",
        )
        .await;
    let reason: String = failed[0].get(0);
    assert!(reason.contains("550"), "{reason}");
    assert_eq!(failed[0].get::<_, String>(1), "hard");
    // Every email went deferred (one or more times), then dispatched or failed.
    for (email_id, (_, timeline)) in histories(&world).await {
        let types: Vec<&str> = timeline.split(',').collect();
        assert_eq!(
            &types[..2],
            ["accepted", "queued"],
            "{email_id}: {timeline}"
        );
        assert!(types[2..types.len() - 1].iter().all(|t| *t == "deferred"));
        assert!(
            types.len() >= 4,
            "{email_id} was deferred at least once: {timeline}"
        );
        assert!(
            matches!(types.last(), Some(&"dispatched") | Some(&"bounced")),
            "{email_id}: {timeline}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cutting_the_dispatchers_broker_connection_loses_nothing_and_sends_nothing_twice() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let (proxy, through) = TcpProxy::for_url(&mailtrail_test_support::amqp_url())
        .await
        .expect("proxy");
    let _operator = operator(&world);
    let _dispatcher = dispatcher(&world, &smtp, Some(through));
    let total = 400usize;
    let publisher = async {
        for n in 0..total {
            let body = format!(
                r#"{{"id": "cut-{n}", "from": "shop@acme.test", "to": "u{n}@example.com", "subject": "S", "text": "T"}}"#
            );
            world.publish(Queue::Mailbox, body.as_bytes(), None).await;
        }
    };
    let cutter = async {
        smtp.wait_for_count(50, Duration::from_secs(60)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.cut();
    };
    tokio::join!(publisher, cutter);
    eventually(
        "every email dispatched",
        Duration::from_secs(90),
        || async { (count_status(&world, "dispatched").await == total as i64).then_some(()) },
    )
    .await;
    let seen = received(&smtp);
    let twice: BTreeSet<&String> = seen
        .iter()
        .filter(|(_, (times, _))| *times > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(seen.len(), total);
    assert_eq!(
        world
            .count("SELECT count(*) FROM events WHERE event_type = 'dispatched'")
            .await,
        total as i64,
        "one dispatched event per email"
    );
}
