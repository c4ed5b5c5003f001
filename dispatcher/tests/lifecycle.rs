//! The dispatcher binary: health endpoints, broker reconnects, graceful stop.

#[tokio::test]
async fn serves_health_follows_the_broker_and_stops_on_sigterm() {
    mailtrail_test_support::init_tracing();
    mailtrail_test_support::check_broker_only_service(
        "dispatcher",
        env!("CARGO_BIN_EXE_dispatcher"),
    )
    .await;
}
