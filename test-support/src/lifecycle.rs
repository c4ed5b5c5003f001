//! The life-cycle check every broker-only service binary must pass.

use crate::{ServiceProcess, TcpProxy, TestBroker, amqp_url, eventually, free_port, try_http_get};
use std::path::Path;
use std::time::Duration;

/// Runs `program` with its broker connection through a proxy and checks that `/healthz` answers
/// 200, that `/readyz` answers 200 once the broker is reachable, 503 while it is not, and 200
/// again after it is back, and that SIGTERM makes it exit 0.
pub async fn check_broker_only_service(name: &str, program: impl AsRef<Path>) {
    let broker = TestBroker::new();
    let (proxy, through) = TcpProxy::for_url(&amqp_url()).await.expect("proxy");
    let port = free_port();
    let mut process = ServiceProcess::spawn(
        name,
        program,
        &[],
        &[
            ("MAILTRAIL_AMQP_URL", through),
            ("MAILTRAIL_AMQP_HEARTBEAT_SECS", "2".to_owned()),
            ("MAILTRAIL_QUEUE_PREFIX", broker.prefix().to_owned()),
            ("MAILTRAIL_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ],
    )
    .expect("the service starts");
    let readyz = || async { try_http_get(port, "/readyz", None).await.ok().map(|r| r.0) };

    eventually(
        &format!("{name} is ready"),
        Duration::from_secs(20),
        || async { (readyz().await == Some(200)).then_some(()) },
    )
    .await;
    let (status, _, body) = try_http_get(port, "/healthz", None)
        .await
        .expect("healthz answers");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    proxy.set_refuse(true);
    proxy.cut();
    eventually(
        &format!("{name} reports the broker unavailable"),
        Duration::from_secs(20),
        || async { (readyz().await == Some(503)).then_some(()) },
    )
    .await;
    let (_, _, body) = try_http_get(port, "/readyz", None)
        .await
        .expect("readyz answers");
    assert_eq!(body["broker"].as_str(), Some("unavailable"));
    assert_eq!(
        try_http_get(port, "/healthz", None)
            .await
            .expect("healthz")
            .0,
        200,
        "alive while the broker is away"
    );

    proxy.set_refuse(false);
    eventually(
        &format!("{name} is ready again after the broker is back"),
        Duration::from_secs(20),
        || async { (readyz().await == Some(200)).then_some(()) },
    )
    .await;

    process.terminate();
    let status = process
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the service exits after SIGTERM");
    assert!(
        status.success(),
        "{name} exits 0 on SIGTERM, got {status:?}; log: {}",
        process.log_path().display()
    );
}
