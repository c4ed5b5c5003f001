//! A real operator process killed at the worst moments (`MAILTRAIL_FAULT` aborts it like
//! `kill -9`): after a restart nothing is lost and `accepted` / `queued` are recorded once.

use crate::helpers::World;
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::{ServiceProcess, eventually};
use std::collections::BTreeMap;
use std::time::Duration;

const REQUEST: &str = r#"{
    "id": "crash-1", "tenant": "acme", "from": "shop@acme.test",
    "to": ["a@example.com", "b@example.com", "c@example.com"],
    "subject": "Receipt", "text": "Thanks"
}"#;

fn operator(world: &World, name: &str, fault: Option<&str>) -> ServiceProcess {
    let mut env = world.operator_env();
    // The test reads the dead-letter queue itself.
    env.push(("MAILTRAIL_DEAD_LETTER_CONSUMER", "false".to_owned()));
    if let Some(point) = fault {
        env.push(("MAILTRAIL_FAULT", point.to_owned()));
    }
    ServiceProcess::spawn(name, env!("CARGO_BIN_EXE_operator"), &["run"], &env)
        .expect("start the operator")
}

async fn counts_by_type(world: &World) -> BTreeMap<String, i64> {
    world
        .query("SELECT event_type, count(*) FROM events GROUP BY event_type")
        .await
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect()
}

fn expected_jobs() -> Vec<uuid::Uuid> {
    ["a@example.com", "b@example.com", "c@example.com"]
        .iter()
        .map(|r| ids::dispatch_job_id(ids::email_id("acme", "crash-1", r)))
        .collect()
}

async fn finish(world: &World, mut process: ServiceProcess) {
    eventually(
        "all three emails queued",
        Duration::from_secs(30),
        || async {
            (world
                .count("SELECT count(*) FROM emails WHERE status = 'queued'")
                .await
                == 3)
                .then_some(())
        },
    )
    .await;
    process.terminate();
    let status = process
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the operator exits after SIGTERM");
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_between_commit_and_ack_loses_nothing_and_accepts_once() {
    let world = World::new().await;
    world
        .publish(Queue::Mailbox, REQUEST.as_bytes(), None)
        .await;

    let mut doomed = operator(&world, "operator-crash-intake", Some("intake-after-commit"));
    let status = doomed
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the operator aborts at the crash point");
    assert!(!status.success());
    // The transaction committed, but the delivery was never acked.
    assert_eq!(world.count("SELECT count(*) FROM emails").await, 3);

    let restarted = operator(&world, "operator-after-intake-crash", None);
    finish(&world, restarted).await;

    let counts = counts_by_type(&world).await;
    assert_eq!(counts.get("accepted"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("queued"), Some(&3), "{counts:?}");
    assert!(
        world.drain_queue(Queue::DeadLetter).await.is_empty(),
        "the redelivered request is a duplicate, not a conflict"
    );
    let mut jobs: Vec<_> = world
        .dispatch_jobs(Queue::Dispatching)
        .await
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    jobs.sort();
    let mut expected = expected_jobs();
    expected.sort();
    assert_eq!(jobs, expected);
    let (pending, _) = mailtrail_broker::queue_depth(&world.channel, &world.queue(Queue::Mailbox))
        .await
        .expect("depth");
    assert_eq!(
        pending, 0,
        "the mailbox delivery was acked after the restart"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_between_relay_publish_and_mark_republishes_the_same_jobs_and_queues_once() {
    let world = World::new().await;
    world
        .publish(Queue::Mailbox, REQUEST.as_bytes(), None)
        .await;

    let mut doomed = operator(&world, "operator-crash-relay", Some("relay-after-publish"));
    let status = doomed
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the operator aborts at the crash point");
    assert!(!status.success());
    assert_eq!(
        world
            .count("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        3,
        "the jobs were confirmed by the broker but not marked"
    );

    let restarted = operator(&world, "operator-after-relay-crash", None);
    finish(&world, restarted).await;

    let counts = counts_by_type(&world).await;
    assert_eq!(counts.get("accepted"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("queued"), Some(&3), "{counts:?}");
    // Each job is in the queue twice, both copies with the same job id.
    let mut per_job: BTreeMap<uuid::Uuid, usize> = BTreeMap::new();
    for job in world.dispatch_jobs(Queue::Dispatching).await {
        assert_eq!(job.job_id, ids::dispatch_job_id(job.email_id));
        *per_job.entry(job.job_id).or_default() += 1;
    }
    let expected: BTreeMap<uuid::Uuid, usize> =
        expected_jobs().into_iter().map(|j| (j, 2)).collect();
    assert_eq!(per_job, expected);
}
