//! Surviving bumps: the operator's broker or database connection is cut or black-holed through a
//! TCP proxy while requests flow. Nothing is lost, nothing is recorded twice, and work resumes by
//! itself once the connection is back.

use crate::helpers::World;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::{TcpProxy, eventually};
use std::collections::BTreeSet;
use std::time::Duration;

const REQUESTS: usize = 200;

#[derive(Debug, Clone, Copy)]
enum Fault {
    CutBroker,
    CutDatabase,
    BlackholeBroker,
    BlackholeDatabase,
}

/// Starts a proxy in front of the server of `url`; returns it and the URL through it.
async fn proxy_for(url: &str) -> (TcpProxy, String) {
    TcpProxy::for_url(url).await.expect("proxy")
}

async fn queued(world: &World) -> i64 {
    world
        .count("SELECT count(*) FROM emails WHERE status = 'queued'")
        .await
}

async fn run_with_fault(fault: Fault) {
    let mut world = World::new().await;
    let (broker_proxy, amqp_url) = proxy_for(&world.config.broker.amqp_url).await;
    let (db_proxy, database_url) = proxy_for(world.db.url()).await;
    world.config.broker.amqp_url = amqp_url;
    world.config.database_url = database_url;
    world.config.broker.amqp_heartbeat_secs = 2;
    world.config.database_timeout_ms = 2000;
    world.config.intake_batch = 10;
    let (stop, handle) = world.start_operator().await;

    // An app publishes steadily (directly, not through the proxies) while the fault happens.
    let publisher_connection = world.broker.connect().await;
    let mailbox = world.queue(Queue::Mailbox);
    let app = tokio::spawn(async move {
        let channel = publisher_connection
            .create_channel()
            .await
            .expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for n in 0..REQUESTS {
            let body = format!(
                r#"{{"id": "r-{n}", "from": "a@app.test", "to": "u{n}@example.com",
                    "subject": "S", "text": "T"}}"#
            );
            let confirm = channel
                .basic_publish(
                    "".into(),
                    mailbox.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(confirm.is_ack());
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });

    eventually("work has started", Duration::from_secs(20), || async {
        (queued(&world).await >= 20).then_some(())
    })
    .await;
    match fault {
        Fault::CutBroker => broker_proxy.cut(),
        Fault::CutDatabase => db_proxy.cut(),
        Fault::BlackholeBroker | Fault::BlackholeDatabase => {
            let proxy = match fault {
                Fault::BlackholeBroker => &broker_proxy,
                _ => &db_proxy,
            };
            // The outage itself lasts a fixed time; recovery is awaited by condition below.
            proxy.set_blackhole(true);
            tokio::time::sleep(Duration::from_secs(6)).await;
            proxy.set_blackhole(false);
        }
    }
    app.await.expect("the app published everything");

    eventually(
        &format!("all {REQUESTS} requests queued after {fault:?}"),
        Duration::from_secs(40),
        || async { (queued(&world).await == REQUESTS as i64).then_some(()) },
    )
    .await;
    let per_type = world
        .query(
            "SELECT event_type, count(*), count(DISTINCT email_id) FROM events GROUP BY event_type
              ORDER BY event_type",
        )
        .await
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, i64>(2),
            )
        })
        .collect::<Vec<_>>();
    let n = REQUESTS as i64;
    assert_eq!(
        per_type,
        [("accepted".to_owned(), n, n), ("queued".to_owned(), n, n)],
        "each email accepted and queued exactly once"
    );
    assert_eq!(world.count("SELECT count(*) FROM dead_letters").await, 0);
    // The dispatcher de-duplicates on job ids; every job reached the queue at least once.
    let jobs: BTreeSet<_> = world
        .dispatch_jobs(Queue::Dispatching)
        .await
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(jobs.len(), REQUESTS);
    stop.cancel();
    handle.await.expect("the operator stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_connection_cut_mid_run() {
    run_with_fault(Fault::CutBroker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn database_connection_cut_mid_run() {
    run_with_fault(Fault::CutDatabase).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_connection_black_holed_mid_run() {
    run_with_fault(Fault::BlackholeBroker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn database_connection_black_holed_mid_run() {
    run_with_fault(Fault::BlackholeDatabase).await;
}
