//! Fair dispatch, live and stated by order: tenant A's bulk send is queued first, tenant B's few
//! emails after it; through a rate-limited provider B's mail overtakes all but the jobs A
//! already holds in its share of the dispatching queue.

use crate::helpers::World;
use mailtrail_shared::topology::Queue;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::{ServiceProcess, eventually, free_port, target_bin};
use std::time::Duration;

const BULK: usize = 5_000;
const FEW: usize = 10;
const SHARE: usize = 20;
const DISPATCHERS: usize = 1;

fn dispatcher(world: &World, smtp: &SmtpCapture) -> ServiceProcess {
    ServiceProcess::spawn(
        "dispatcher",
        target_bin("dispatcher"),
        &[],
        &[
            ("MAILTRAIL_AMQP_URL", mailtrail_test_support::amqp_url()),
            ("MAILTRAIL_QUEUE_PREFIX", world.broker.prefix().to_owned()),
            ("MAILTRAIL_SMTP_URL", smtp.url()),
            ("MAILTRAIL_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
            // A slow provider, so the order of arrival says who was let in first.
            ("MAILTRAIL_RATE_LIMITS", "smtp=400".to_owned()),
        ],
    )
    .expect("start the dispatcher")
}

fn request(tenant: &str, n: usize, recipients: &[String]) -> String {
    serde_json::json!({
        "id": format!("{tenant}-{n}"), "tenant": tenant, "from": "shop@example.test",
        "to": recipients, "subject": "S", "text": "T",
    })
    .to_string()
}

/// How many of tenant A's emails the SMTP server had received: all, or before B's last one.
fn bulk_received(smtp: &SmtpCapture, before_last_of_b: bool) -> usize {
    let messages = smtp.messages();
    let is_b = |m: &mailtrail_smtp_capture::ReceivedMessage| {
        m.rcpt_to.iter().any(|r| r.ends_with("@b.example"))
    };
    let end = if before_last_of_b {
        messages.iter().rposition(is_b).unwrap_or(messages.len())
    } else {
        messages.len()
    };
    messages[..end].iter().filter(|m| !is_b(m)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_tenant_overtakes_a_bulk_send_queued_before_it() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let mut env = world.operator_env();
    env.push(("MAILTRAIL_FAIR_SHARE_PER_TENANT", SHARE.to_string()));
    let mut operator =
        ServiceProcess::spawn("operator", env!("CARGO_BIN_EXE_operator"), &["run"], &env)
            .expect("start the operator");

    // A's bulk send: 100 requests of 50 recipients, all accepted before B sends anything.
    for n in 0..BULK / 50 {
        let to: Vec<String> = (0..50).map(|i| format!("a{n}-{i}@a.example")).collect();
        world
            .publish(Queue::Mailbox, request("a", n, &to).as_bytes(), None)
            .await;
    }
    eventually(
        "A's bulk send accepted",
        Duration::from_secs(120),
        || async {
            let accepted = world
                .count("SELECT count(*) FROM emails WHERE tenant = 'a'")
                .await;
            (accepted == BULK as i64).then_some(())
        },
    )
    .await;
    let mut dispatcher = dispatcher(&world, &smtp);
    eventually("A's mail is flowing", Duration::from_secs(60), || async {
        (bulk_received(&smtp, false) >= 2 * SHARE).then_some(())
    })
    .await;

    for n in 0..FEW {
        let to = vec![format!("b{n}@b.example")];
        world
            .publish(Queue::Mailbox, request("b", n, &to).as_bytes(), None)
            .await;
    }
    eventually("B's emails accepted", Duration::from_secs(60), || async {
        let accepted = world
            .count("SELECT count(*) FROM emails WHERE tenant = 'b'")
            .await;
        (accepted == FEW as i64).then_some(())
    })
    .await;
    // Everything of A's received from here on, up to B's last, was already in A's share.
    let a_before = bulk_received(&smtp, false);
    eventually("B's emails received", Duration::from_secs(120), || async {
        let b = smtp
            .messages()
            .iter()
            .filter(|m| m.rcpt_to.iter().any(|r| r.ends_with("@b.example")))
            .count();
        (b == FEW).then_some(())
    })
    .await;
    let a_overtaking = bulk_received(&smtp, true).saturating_sub(a_before);
    println!(
        "fair dispatch: {a_overtaking} of A's emails reached the server between B's acceptance \
         and B's last email (share {SHARE}); {} of A's {BULK} received by then",
        bulk_received(&smtp, true)
    );
    assert!(
        a_overtaking <= SHARE * DISPATCHERS,
        "{a_overtaking} of A's emails reached the server between B's acceptance and B's last \
         email; the share is {SHARE} per dispatcher"
    );
    assert!(
        bulk_received(&smtp, false) < BULK,
        "A's bulk send was still waiting when B's mail went through"
    );

    for process in [&mut operator, &mut dispatcher] {
        process.terminate();
        let _ = process.wait_exit(Duration::from_secs(15)).await;
    }
}
