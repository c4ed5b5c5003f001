//! The harness itself, against the real PostgreSQL and RabbitMQ.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::{
    ServiceProcess, TestBroker, TestDb, database_server_url, eventually, init_tracing,
    url_with_database,
};
use std::time::Duration;
use tokio_postgres::NoTls;

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &url_with_database(&database_server_url(), "postgres"),
        NoTls,
    )
    .await
    .expect("connect to the postgres database");
    tokio::spawn(conn);
    client
}

async fn database_exists(name: &str) -> bool {
    admin()
        .await
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("query pg_database")
        .is_some()
}

#[tokio::test]
async fn test_databases_are_migrated_separate_and_dropped() {
    init_tracing();
    let (a, b) = tokio::join!(TestDb::new(), TestDb::new());
    assert_ne!(a.name(), b.name());
    assert!(a.name().starts_with("mt_test_"));
    assert!(a.url().ends_with(a.name()));

    let ca = a.client().await;
    let cb = b.client().await;
    for client in [&ca, &cb] {
        let row = client
            .query_one("SELECT count(*) FROM emails", &[])
            .await
            .expect("the migrated schema has an emails table");
        assert_eq!(row.get::<_, i64>(0), 0);
    }
    // Separate databases: a table made in one is not in the other.
    ca.batch_execute("CREATE TABLE only_in_a (x int)")
        .await
        .expect("create");
    let in_b = cb
        .query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'only_in_a'", &[])
        .await
        .expect("query");
    assert!(in_b.is_none());

    // Dropped even while a connection is still open (WITH (FORCE)).
    let name = a.name().to_owned();
    assert!(database_exists(&name).await);
    drop(a);
    assert!(!database_exists(&name).await, "{name} is gone after drop");
    drop(ca);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_databases_in_parallel() {
    // Tasks on this runtime plus threads with runtimes of their own (as other test binaries).
    let tasks: Vec<_> = (0..3).map(|_| tokio::spawn(TestDb::new())).collect();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let db = rt.block_on(TestDb::new());
                let name = db.name().to_owned();
                drop(db);
                name
            })
        })
        .collect();
    let mut dbs = Vec::new();
    for t in tasks {
        dbs.push(t.await.expect("task"));
    }
    let mut names: std::collections::HashSet<_> = dbs.iter().map(|d| d.name().to_owned()).collect();
    for db in &dbs {
        let client = db.client().await;
        client
            .query_one("SELECT count(*) FROM requests", &[])
            .await
            .expect("migrated");
    }
    for t in threads {
        let name = t.join().expect("thread");
        assert!(!database_exists(&name).await, "{name} dropped");
        names.insert(name);
    }
    assert_eq!(names.len(), 5);
}

#[tokio::test]
async fn test_broker_queues_are_prefixed_and_deleted() {
    init_tracing();
    let broker = TestBroker::new();
    assert!(broker.prefix().starts_with("mttest-") && broker.prefix().ends_with('.'));
    let topology = broker.topology();
    let mailbox = topology.queue(Queue::Mailbox);
    assert!(mailbox.starts_with(broker.prefix()));
    let extra = broker.queue_name("extra");

    let conn = broker.connect().await;
    let channel = conn.create_channel().await.expect("channel");
    mailtrail_broker::declare_topology(&channel, &topology)
        .await
        .expect("declare");
    channel
        .queue_declare(
            extra.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare extra");
    let other = TestBroker::new();
    assert_ne!(other.prefix(), broker.prefix());
    drop(broker);

    for name in [&mailbox, &extra] {
        let probe = conn.create_channel().await.expect("channel");
        let passive = probe
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        assert!(passive.is_err(), "{name} was deleted on drop");
    }
}

#[tokio::test]
async fn service_process_logs_and_signals() {
    let mut p = ServiceProcess::spawn(
        "harness-sh",
        "/bin/sh",
        &["-c", "echo started $GREETING; echo to-stderr >&2; trap 'echo got-term; exit 3' TERM; while true; do sleep 0.05; done"],
        &[("GREETING", "hello".to_owned())],
    )
    .expect("spawn sh");
    assert!(p.pid() > 0);
    eventually(
        "the greeting in the log",
        Duration::from_secs(5),
        || async {
            let log = p.log_contents();
            (log.contains("started hello") && log.contains("to-stderr")).then_some(())
        },
    )
    .await;
    p.terminate();
    let status = p
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(3));
    assert!(p.log_contents().contains("got-term"));

    let mut q = ServiceProcess::spawn("harness-sleep", "/bin/sleep", &["30"], &[]).expect("spawn");
    assert!(
        q.wait_exit(Duration::from_millis(100)).await.is_err(),
        "still running"
    );
    q.kill();
    let status = q.wait_exit(Duration::from_secs(1)).await.expect("reaped");
    assert!(!status.success());
}
