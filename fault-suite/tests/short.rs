//! The short fault suite, part of the test command: a few hundred emails per scenario, outages
//! of a few seconds, faults through TCP proxies and process kills, plus one private-database and
//! one private-broker scenario (the rest is the full suite, `scripts/fault-suite.sh`). Needs the
//! operator, dispatcher and webhook-sink binaries, which `cargo test --workspace` builds.

use mailtrail_fault_suite::{Fault, Scenario, run, text_table};
use std::time::Duration;

const REQUESTS: usize = 150;

async fn check(name: &str, fault: Fault) {
    let mut scenario = Scenario::new(name, fault, REQUESTS);
    scenario.deadline = Duration::from_secs(120);
    let report = run(&scenario).await.expect("the run completes");
    eprintln!("{}", text_table(std::slice::from_ref(&report)));
    assert!(report.passed(), "{:#?}", report.problems);
    // The counts are real: every expected email is accounted for, and was delivered.
    assert_eq!(report.lost, 0);
    assert_eq!(report.delivered, report.expected, "{report:#?}");
    assert!(report.expected >= REQUESTS as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_dispatcher_loses_nothing() {
    check("kill -9 dispatcher", Fault::KillDispatcher(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_operator_loses_nothing() {
    check("kill -9 operator", Fault::KillOperator(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_of_the_dispatcher_under_load_drains_and_loses_nothing() {
    check("SIGTERM dispatcher", Fault::TermDispatcher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_connections_force_closed_lose_nothing_and_send_nothing_twice() {
    check("broker connections cut", Fault::CutBrokerConnections).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_database_loses_nothing() {
    check(
        "database black-holed 3 s",
        Fault::BlackholeDb(Duration::from_secs(3)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_down_loses_nothing_and_sends_nothing_twice() {
    check("SMTP down 3 s", Fault::SmtpDown(Duration::from_secs(3))).await;
}

/// Every email's `delivered` webhook posted three times, shuffled, while the operator and the
/// webhook sink are killed: each recorded once.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_flood_through_killed_services_records_each_event_once() {
    check(
        "webhooks ×3, kill -9 operator and sink",
        Fault::WebhookFlood {
            operator_kills: 1,
            sink_kills: 1,
        },
    )
    .await;
}

/// A private PostgreSQL cluster (about 1.5 s to set up) stopped with `-m immediate`.
#[tokio::test(flavor = "multi_thread")]
async fn an_immediate_database_stop_loses_nothing() {
    check(
        "database immediate stop 2 s",
        Fault::StopDbImmediate(Duration::from_secs(2)),
    )
    .await;
}

/// A private RabbitMQ node (about 7 s to boot, twice) killed with SIGKILL and started again.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_broker_node_loses_nothing_and_sends_nothing_twice() {
    check("broker node kill -9", Fault::KillBroker).await;
}

/// The suite's own check: an email the SMTP server received whose history lacks `dispatched`
/// is counted lost, and the run fails.
#[tokio::test(flavor = "multi_thread")]
async fn an_email_without_its_final_event_counts_as_lost() {
    let mut scenario = Scenario::new("sabotaged baseline", Fault::None, 30);
    scenario.sabotage = true;
    let report = run(&scenario).await.expect("the run completes");
    assert_eq!(report.lost, 1, "{report:#?}");
    assert_eq!(report.delivered, report.expected - 1);
    assert!(!report.passed());
    assert!(
        report.problems[0].contains("1 emails lost"),
        "{:?}",
        report.problems
    );
}
