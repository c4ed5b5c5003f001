//! SIGTERM while the operator process is busy: it stops taking work, exits 0 within the drain
//! timeout, and after a restart every request is recorded exactly once.

use crate::helpers::World;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::{ServiceProcess, eventually};
use std::time::Duration;

const REQUESTS: i64 = 1000;

fn operator(world: &World, name: &str) -> ServiceProcess {
    let mut env = world.operator_env();
    // One request per transaction, so the run is long enough to interrupt.
    env.push(("MAILTRAIL_INTAKE_BATCH", "1".to_owned()));
    env.push(("MAILTRAIL_DRAIN_TIMEOUT_MS", "10000".to_owned()));
    // No dispatcher runs: every job must reach the queue, not only one tenant's fair share.
    env.push(("MAILTRAIL_FAIR_SHARE_PER_TENANT", "0".to_owned()));
    ServiceProcess::spawn(name, env!("CARGO_BIN_EXE_operator"), &["run"], &env)
        .expect("start the operator")
}

async fn accepted(world: &World) -> i64 {
    world
        .count("SELECT count(*) FROM events WHERE event_type = 'accepted'")
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_run_exits_zero_and_loses_nothing() {
    let world = World::new().await;
    for n in 0..REQUESTS {
        let body = format!(
            r#"{{"id": "s-{n}", "from": "a@app.test", "to": "u{n}@example.com", "subject": "S", "text": "T"}}"#
        );
        world.publish(Queue::Mailbox, body.as_bytes(), None).await;
    }
    let mut first = operator(&world, "operator-sigterm");
    eventually("the operator is busy", Duration::from_secs(30), || async {
        (accepted(&world).await >= 50).then_some(())
    })
    .await;
    first.terminate();
    let status = first
        .wait_exit(Duration::from_secs(12))
        .await
        .expect("the operator exits within the drain timeout");
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    let done_before_restart = accepted(&world).await;
    assert!(
        done_before_restart < REQUESTS,
        "the SIGTERM came after all the work was done; the test proves nothing"
    );

    let mut second = operator(&world, "operator-after-sigterm");
    eventually(
        "every request queued after the restart",
        Duration::from_secs(60),
        || async {
            (world
                .count("SELECT count(*) FROM emails WHERE status = 'queued'")
                .await
                == REQUESTS)
                .then_some(())
        },
    )
    .await;
    let rows = world
        .query(
            "SELECT event_type, count(*), count(DISTINCT email_id) FROM events
              GROUP BY event_type ORDER BY event_type",
        )
        .await;
    let per_type: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        per_type,
        [
            ("accepted".to_owned(), REQUESTS, REQUESTS),
            ("queued".to_owned(), REQUESTS, REQUESTS)
        ]
    );
    assert_eq!(world.count("SELECT count(*) FROM dead_letters").await, 0);
    second.terminate();
    let status = second
        .wait_exit(Duration::from_secs(12))
        .await
        .expect("the operator exits");
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
}
