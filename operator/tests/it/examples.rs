//! The publish examples in docs/examples, run against the real broker and the running operator:
//! what a newcomer copies must work. `scripts/test.sh` installs their dependencies
//! (`scripts/ensure-example-deps.sh`) and points `MAILTRAIL_EXAMPLES_PYTHON` at the venv.

use crate::helpers::World;
use mailtrail_test_support::{eventually, workspace_dir};
use std::process::Command;
use std::time::Duration;

fn run_example(world: &World, program: &str, args: &[&str], request_id: &str) {
    let output = Command::new(program)
        .args(args)
        .args(["ann@example.com", "Bob@Example.com"])
        .env("MAILTRAIL_AMQP_URL", mailtrail_test_support::amqp_url())
        .env("MAILTRAIL_QUEUE_PREFIX", world.broker.prefix())
        .env("REQUEST_ID", request_id)
        .env("TENANT", "examples")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e}; run scripts/ensure-example-deps.sh (scripts/test.sh does)")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n(run scripts/ensure-example-deps.sh; scripts/test.sh does)",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), request_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_and_node_examples_publish_requests_the_operator_accepts() {
    let world = World::new().await;
    let (stop, handle) = world.start_operator().await;
    let examples = workspace_dir().join("docs/examples");
    let venv_python = workspace_dir().join("target/examples-venv/bin/python");
    let python = std::env::var("MAILTRAIL_EXAMPLES_PYTHON").unwrap_or_else(|_| {
        if venv_python.exists() {
            venv_python.display().to_string()
        } else {
            "python3".into()
        }
    });
    let script = examples.join("python/publish.py");
    run_example(
        &world,
        &python,
        &[script.to_str().unwrap_or_default()],
        "from-python",
    );
    let script = examples.join("node/publish.js");
    run_example(
        &world,
        "node",
        &[script.to_str().unwrap_or_default()],
        "from-node",
    );

    eventually(
        "both examples' emails are queued",
        Duration::from_secs(20),
        || async {
            let rows = world
            .query(
                "SELECT r.request_key, count(*) FROM emails e JOIN requests r ON r.id = e.request_id
                  WHERE e.status = 'queued' AND r.tenant = 'examples'
                  GROUP BY r.request_key ORDER BY r.request_key",
            )
            .await;
            let seen: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            (seen == [("from-node".to_owned(), 2), ("from-python".to_owned(), 2)]).then_some(())
        },
    )
    .await;
    assert_eq!(world.count("SELECT count(*) FROM dead_letters").await, 0);
    stop.cancel();
    handle.await.expect("the operator stops");
}
