//! Two operator processes against one database and one broker: they share the mailbox and
//! tracking queues and the outbox, and between them record each request once, publish each job
//! once and release each scheduled email once.

use crate::helpers::World;
use chrono::{SecondsFormat, Utc};
use mailtrail_broker::queue_depth;
use mailtrail_shared::topology::Queue;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::{ServiceProcess, eventually};
use std::time::Duration;

const IMMEDIATE: usize = 150;
const SCHEDULED: usize = 50;

fn operator(world: &World, name: &str) -> ServiceProcess {
    let mut env = world.operator_env();
    // Until the dispatcher starts, every job must reach the queue, not only a fair share.
    env.push(("MAILTRAIL_FAIR_SHARE_PER_TENANT", "0".to_owned()));
    ServiceProcess::spawn(name, env!("CARGO_BIN_EXE_operator"), &["run"], &env)
        .expect("start an operator")
}

async fn count_type(world: &World, event_type: &str) -> i64 {
    world
        .count(&format!(
            "SELECT count(*) FROM events WHERE event_type = '{event_type}'"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_operators_record_once_publish_once_and_release_scheduled_mail_once() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let mut first = operator(&world, "operator-1");
    let mut second = operator(&world, "operator-2");

    let send_at =
        (Utc::now() + chrono::Duration::seconds(4)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let requests: Vec<String> = (0..IMMEDIATE + SCHEDULED)
        .map(|n| {
            let mut request = serde_json::json!({
                "id": format!("req-{n}"), "tenant": "acme", "from": "shop@acme.test",
                "to": format!("r{n}@example.com"), "subject": "S", "text": "T",
            });
            if n >= IMMEDIATE {
                request["send_at"] = send_at.clone().into();
            }
            request.to_string()
        })
        .collect();
    // Every request twice: the two operators race on the same keys.
    for _ in 0..2 {
        for request in &requests {
            world
                .publish(Queue::Mailbox, request.as_bytes(), None)
                .await;
        }
    }
    let emails = (IMMEDIATE + SCHEDULED) as i64;
    eventually(
        "every job handed over, the scheduled ones when due",
        Duration::from_secs(90),
        || async { (count_type(&world, "queued").await == emails).then_some(()) },
    )
    .await;
    eventually(
        "both mailbox copies consumed",
        Duration::from_secs(30),
        || {
            let world = &world;
            async move {
                let (ready, _) = queue_depth(&world.channel, &world.queue(Queue::Mailbox))
                    .await
                    .expect("mailbox depth");
                (ready == 0).then_some(())
            }
        },
    )
    .await;

    // With no dispatcher yet, the dispatching queue holds exactly what was published.
    let (published, _) = queue_depth(&world.channel, &world.queue(Queue::Dispatching))
        .await
        .expect("dispatching depth");
    assert_eq!(i64::from(published), emails, "each job published once");
    assert_eq!(world.count("SELECT count(*) FROM requests").await, emails);
    assert_eq!(count_type(&world, "accepted").await, emails);
    assert_eq!(count_type(&world, "scheduled").await, SCHEDULED as i64);
    let early = world
        .count(
            "SELECT count(*) FROM events q JOIN events s ON s.email_id = q.email_id
              WHERE q.event_type = 'queued' AND s.event_type = 'scheduled'
                AND q.occurred_at < (s.details->>'send_at')::timestamptz",
        )
        .await;
    assert_eq!(early, 0, "no scheduled email released before it was due");
    // Nothing was set aside: the race on duplicate keys ends in "duplicate", never an error.
    assert_eq!(world.count("SELECT count(*) FROM dead_letters").await, 0);

    let mut dispatcher = crate::flight::dispatcher(&world, &smtp, None);
    eventually(
        "every email dispatched",
        Duration::from_secs(90),
        || async { (count_type(&world, "dispatched").await == emails).then_some(()) },
    )
    .await;
    assert_eq!(smtp.message_count(), emails as usize);

    for process in [&mut first, &mut second, &mut dispatcher] {
        process.terminate();
        let status = process
            .wait_exit(Duration::from_secs(15))
            .await
            .expect("exits after SIGTERM");
        assert!(status.success(), "{} exits 0: {status:?}", process.name());
    }
}
