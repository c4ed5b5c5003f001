//! The history page in a real browser: Debian's headless Chromium driven by playwright-core
//! (`operator/tests/browser/history.mjs`) against a running operator with seeded histories. It
//! signs in, searches a recipient, opens an email and checks its timeline, checks that stored
//! payloads (subject, user agent, clicked URL, bounce diagnostic, metadata) render inert, that an
//! email in flight refreshes by itself, and signs out. Screenshots are kept in
//! `target/test-artifacts/browser/`.
//!
//! Needs Chromium and the script's node_modules: `scripts/ensure-browser-deps.sh` (run by the
//! test command) installs both.

use crate::helpers::{World, api_ready, incoming, timeline};
use chrono::{Duration as ChronoDuration, Utc};
use mailtrail_operator::keys::{self, Role};
use mailtrail_operator::tracking::Tracker;
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_test_support::workspace_dir;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

const RECIPIENT: &str = "ann@example.com";
const CLICKED_URL: &str = "https://shop.example.com/orders/42?utm_source=mail";
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) Thunderbird/128.0";
const HOSTILE_SUBJECT: &str =
    r#"Your order <script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">"#;
const HOSTILE_USER_AGENT: &str = r#"<img src=x onerror="window.__pwned=3">"#;
const HOSTILE_URL: &str = "javascript:window.__pwned=4//https://shop.example.com/";
const HOSTILE_DIAGNOSTIC: &str = r#"550 5.1.1 <svg onload="window.__pwned=5">"#;

fn chromium() -> PathBuf {
    std::env::var_os("MAILTRAIL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// What the browser script needs on this machine; a clear failure instead of a skip.
fn browser_script() -> PathBuf {
    let dir = workspace_dir().join("operator/tests/browser");
    assert!(
        chromium().exists(),
        "no Chromium at {} (set MAILTRAIL_CHROMIUM): run scripts/ensure-browser-deps.sh",
        chromium().display()
    );
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run scripts/ensure-browser-deps.sh",
        dir.display()
    );
    dir.join("history.mjs")
}

fn tracking_event(
    world: &World,
    email: Uuid,
    event_type: EventType,
    seconds_after: i64,
    details: serde_json::Value,
) -> mailtrail_broker::Incoming {
    let (source, provider) = if event_type == EventType::Dispatched {
        ("dispatcher", "smtp")
    } else {
        ("webhook:standard", "standard")
    };
    let event = TrackingEvent {
        version: 1,
        event_id: Uuid::new_v4(),
        email_id: Some(email),
        tenant: "acme".into(),
        event_type,
        occurred_at: Utc::now() + ChronoDuration::seconds(seconds_after),
        source: source.into(),
        provider: Some(provider.into()),
        provider_message_id: Some(format!("Q-{email}")),
        provider_event_id: (event_type != EventType::Dispatched)
            .then(|| format!("evt-{}", Uuid::new_v4())),
        details,
    };
    incoming(
        world,
        Queue::Tracking,
        &serde_json::to_string(&event).expect("json"),
        None,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_page_works_in_a_real_browser_and_renders_payloads_inert() {
    let script = browser_script();
    let world = World::new().await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    api_ready(port).await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, key) = keys::create(&mut conn, "acme support", Some("acme"), Role::Admin)
        .await
        .expect("key");

    // acme: three emails to ann (one settled, one hostile to mallory, one in flight) and globex's
    // email to ann, which acme's key must not list.
    let (intake, relay) = world.steps().await;
    let requests = [
        (
            "acme",
            "r-1",
            RECIPIENT,
            "Your receipt",
            serde_json::json!({}),
        ),
        (
            "acme",
            "r-2",
            RECIPIENT,
            "Welcome aboard",
            serde_json::json!({}),
        ),
        (
            "acme",
            "r-3",
            "mallory@example.com",
            HOSTILE_SUBJECT,
            serde_json::json!({"note": "<b onmouseover=\"window.__pwned=6\">hover</b>"}),
        ),
        (
            "globex",
            "g-1",
            RECIPIENT,
            "Globex news",
            serde_json::json!({}),
        ),
    ];
    for (tenant, id, to, subject, metadata) in requests {
        let request = serde_json::json!({
            "id": id, "tenant": tenant, "from": format!("shop@{tenant}.test"), "to": to,
            "subject": subject, "text": "T", "metadata": metadata,
        })
        .to_string();
        intake
            .handle(&[incoming(&world, Queue::Mailbox, &request, None)])
            .await
            .expect("intake");
    }
    relay.drain().await.expect("relay");
    let settled = ids::email_id("acme", "r-1", RECIPIENT);
    let in_flight = ids::email_id("acme", "r-2", RECIPIENT);
    let hostile = ids::email_id("acme", "r-3", "mallory@example.com");

    let publisher = mailtrail_broker::Publisher::open(&world.connection)
        .await
        .expect("publisher");
    let tracker = Tracker::new(
        world.pool(),
        publisher,
        world.config.topology(),
        Duration::from_secs(5),
    );
    tracker
        .handle(&[
            tracking_event(
                &world,
                settled,
                EventType::Dispatched,
                1,
                serde_json::json!({}),
            ),
            tracking_event(
                &world,
                settled,
                EventType::Delivered,
                2,
                serde_json::json!({}),
            ),
            tracking_event(
                &world,
                settled,
                EventType::Opened,
                3,
                serde_json::json!({"user_agent": USER_AGENT, "ip": "192.0.2.7"}),
            ),
            tracking_event(
                &world,
                settled,
                EventType::Clicked,
                4,
                serde_json::json!({"url": CLICKED_URL, "user_agent": USER_AGENT}),
            ),
            tracking_event(
                &world,
                in_flight,
                EventType::Dispatched,
                1,
                serde_json::json!({}),
            ),
            tracking_event(
                &world,
                hostile,
                EventType::Dispatched,
                1,
                serde_json::json!({}),
            ),
            tracking_event(
                &world,
                hostile,
                EventType::Opened,
                2,
                serde_json::json!({"user_agent": HOSTILE_USER_AGENT}),
            ),
            tracking_event(
                &world,
                hostile,
                EventType::Clicked,
                3,
                serde_json::json!({"url": HOSTILE_URL, "user_agent": HOSTILE_USER_AGENT}),
            ),
            tracking_event(
                &world,
                hostile,
                EventType::Bounced,
                4,
                serde_json::json!({"bounce_kind": "hard", "diagnostic": HOSTILE_DIAGNOSTIC}),
            ),
        ])
        .await
        .expect("tracking");
    let expected_timeline = timeline(&world, settled).await;
    assert_eq!(
        expected_timeline,
        "accepted,queued,dispatched,delivered,opened,clicked"
    );

    let artifacts = workspace_dir().join("target/test-artifacts/browser");
    // Screenshots of an earlier run must not pass for this one's.
    let _ = std::fs::remove_dir_all(&artifacts);
    let mut browser = tokio::process::Command::new("node")
        .arg(&script)
        .env("MAILTRAIL_URL", format!("http://127.0.0.1:{port}"))
        .env("MAILTRAIL_KEY", &key)
        .env("KEY_NAME", "acme support")
        .env("RECIPIENT", RECIPIENT)
        .env("EXPECT_RESULTS", "2")
        .env("EMAIL_ID", settled.to_string())
        .env("EXPECT_TIMELINE", &expected_timeline)
        .env("CLICKED_URL", CLICKED_URL)
        .env("USER_AGENT", USER_AGENT)
        .env("HOSTILE_ID", hostile.to_string())
        .env("HOSTILE_SUBJECT", HOSTILE_SUBJECT)
        .env("IN_FLIGHT_ID", in_flight.to_string())
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (install Node.js: scripts/ensure-browser-deps.sh)");
    let mut stderr = browser.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut stdout = BufReader::new(browser.stdout.take().expect("stdout")).lines();
    let mut stdin = browser.stdin.take().expect("stdin");

    // The refresh check: once the page shows the email in flight, it is delivered.
    let shown = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = stdout.next_line().await {
            if line == "IN_FLIGHT_SHOWN" {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if shown {
        tracker
            .handle(&[tracking_event(
                &world,
                in_flight,
                EventType::Delivered,
                2,
                serde_json::json!({}),
            )])
            .await
            .expect("tracking");
        stdin.write_all(b"go\n").await.expect("tell the browser");
        stdin.flush().await.expect("flush");
    }
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(120), browser.wait())
        .await
        .map(|s| s.ok())
        .unwrap_or(None);
    if status.is_none() {
        let _ = browser.kill().await;
    }
    let log = log.await.unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser test failed ({status:?}); its output:\n{log}\nscreenshots in {}",
        artifacts.display()
    );
    assert!(shown, "the in-flight email was never shown:\n{log}");
    for screenshot in ["history-timeline.png", "history-hostile.png"] {
        let size = std::fs::metadata(artifacts.join(screenshot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "{screenshot}: {size} bytes");
    }

    stop.cancel();
    handle.await.expect("operator stops");
}
