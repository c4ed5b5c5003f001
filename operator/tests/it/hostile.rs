//! Hostile mailbox input (malformed, truncated, invalid UTF-8, wrong types, header injection,
//! over-size, deep nesting, …) through the real queue and the running operator: each message is set
//! aside with its reason, and valid mail published behind them still flows.

use crate::helpers::{World, reason_of};
use mailtrail_broker::header_string;
use mailtrail_shared::headers;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::eventually;
use std::collections::BTreeMap;
use std::time::Duration;

fn valid_with(extra: &str) -> String {
    format!(
        r#"{{"from": "shop@acme.test", "to": "bob@example.com", "subject": "Hi", "text": "Hello"{extra}}}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_is_set_aside_with_its_reason_and_valid_mail_behind_it_flows() {
    let mut world = World::new().await;
    world.config.max_request_bytes = 64 * 1024;
    // The test reads the dead-letter queue itself; the consumer would take the copies first.
    world.config.dead_letter_consumer = false;
    let many: Vec<String> = (0..51).map(|i| format!("\"r{i}@example.com\"")).collect();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "invalid-utf8",
            b"{\"subject\": \"\xff\xfe\"}".to_vec(),
            "not_json",
        ),
        (
            "truncated",
            valid_with("").as_bytes()[..40].to_vec(),
            "not_json",
        ),
        (
            "wrong-type",
            valid_with("").replace(r#""Hi""#, "42").into_bytes(),
            "invalid_field",
        ),
    ];
    let text_cases: Vec<(&str, String, &str)> = vec![
        ("not-json", "hello, operator".to_owned(), "not_json"),
        (
            "json-array",
            r#"[{"to": "bob@example.com"}]"#.to_owned(),
            "not_an_object",
        ),
        (
            "missing-to",
            r#"{"from": "shop@acme.test", "subject": "Hi", "text": "Hello"}"#.to_owned(),
            "missing_field",
        ),
        (
            "invalid-address",
            valid_with("").replace("bob@example.com", "bob-at-example.com"),
            "invalid_address",
        ),
        (
            "crlf-in-header",
            valid_with(r#", "headers": {"X-Note": "a\r\nBcc: evil@attacker.test"}"#),
            "header_injection",
        ),
        (
            "crlf-in-address",
            valid_with("").replace(
                "bob@example.com",
                r"bob@example.com\r\nBcc: evil@attacker.test",
            ),
            "header_injection",
        ),
        (
            "crlf-in-subject",
            valid_with("").replace(r#""Hi""#, r#""Hi\r\nBcc: evil@attacker.test""#),
            "header_injection",
        ),
        (
            "unknown-version",
            valid_with(r#", "version": 2"#),
            "unsupported_version",
        ),
        (
            "over-size",
            valid_with(&format!(r#", "html": "{}""#, "x".repeat(100 * 1024))),
            "too_large",
        ),
        (
            "too-many-recipients",
            valid_with("").replace(r#""bob@example.com""#, &format!("[{}]", many.join(","))),
            "too_many_recipients",
        ),
        (
            "send-at-without-offset",
            valid_with(r#", "send_at": "2030-01-01 09:00""#),
            "invalid_field",
        ),
        (
            "nul-in-text",
            valid_with("").replace("Hello", r"Hel\u0000lo"),
            "invalid_field",
        ),
        (
            "unknown-field",
            valid_with(r#", "htlm": "<p>typo</p>""#),
            "unknown_field",
        ),
        (
            "deep-nesting",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
            "not_json",
        ),
    ];
    cases.extend(
        text_cases
            .into_iter()
            .map(|(id, body, reason)| (id, body.into_bytes(), reason)),
    );
    for (id, body, _) in &cases {
        world.publish(Queue::Mailbox, body, Some(id)).await;
    }
    world
        .publish(
            Queue::Mailbox,
            valid_with(r#", "id": "good-one""#).as_bytes(),
            None,
        )
        .await;

    let (stop, handle) = world.start_operator().await;
    eventually(
        "the valid request behind the hostile ones is queued",
        Duration::from_secs(20),
        || async {
            (world
                .count("SELECT count(*) FROM emails WHERE status = 'queued'")
                .await
                == 1)
                .then_some(())
        },
    )
    .await;

    // Poll the dead-letter queue until every case has arrived (or fail after a deadline).
    let mut set_aside: BTreeMap<String, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while set_aside.len() < cases.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} hostile messages were set aside: {set_aside:?}",
            set_aside.len(),
            cases.len()
        );
        for message in world.drain_queue(Queue::DeadLetter).await {
            let properties = &message.delivery.properties;
            assert_eq!(
                header_string(properties, headers::SOURCE_QUEUE).as_deref(),
                Some(world.queue(Queue::Mailbox).as_str())
            );
            assert!(
                header_string(properties, headers::REASON_DETAIL).is_some_and(|d| !d.is_empty()),
                "every set-aside message explains itself"
            );
            let original =
                header_string(properties, headers::ORIGINAL_MESSAGE_ID).unwrap_or_default();
            set_aside.insert(original, reason_of(&message).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (id, _, reason) in &cases {
        assert_eq!(
            set_aside.get(*id).map(String::as_str),
            Some(*reason),
            "case {id}"
        );
    }
    assert_eq!(set_aside.len(), cases.len(), "nothing else was set aside");
    assert_eq!(world.count("SELECT count(*) FROM requests").await, 1);
    assert_eq!(
        world.count("SELECT count(*) FROM dead_letters").await,
        cases.len() as i64
    );

    stop.cancel();
    handle.await.expect("operator stops cleanly");
}
