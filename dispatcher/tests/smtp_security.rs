//! SMTP security against the real broker and a real SMTP server (smtp-capture) with STARTTLS,
//! implicit TLS and AUTH: mail goes over TLS with AUTH when everything is right; a refused login
//! (535), a server without STARTTLS when it is required and a certificate we do not trust all
//! make mail wait as "provider down" (no attempt spent, nothing failed) and flow once fixed.
//! The SMTP failure table is also checked on the sender alone, without the broker.

use lapin::Connection;
use mailtrail_broker::declare_topology;
use mailtrail_dispatcher::config::parse_schedule;
use mailtrail_dispatcher::providers::SendError;
use mailtrail_dispatcher::smtp::{SmtpSender, SmtpSettings, StartTls, envelope};
use mailtrail_dispatcher::{DispatcherApp, DispatcherConfig, message};
use mailtrail_shared::address::parse_address;
use mailtrail_shared::contract::Priority;
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_smtp_capture::{Mode, SmtpCapture};
use mailtrail_test_support::{TestBroker, amqp_url, eventually, publish_confirmed, take_all};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const USER: &str = "mailtrail";
const PASSWORD: &str = "correct horse battery staple";

fn job(n: u128, to: &str) -> DispatchJob {
    DispatchJob {
        version: 1,
        job_id: Uuid::from_u128(0x40_000 + n),
        email_id: Uuid::from_u128(0x50_000 + n),
        request_id: Uuid::from_u128(0x60_000 + n),
        request_key: format!("security-{n}"),
        tenant: "acme".into(),
        attempt: 1,
        priority: Priority::Normal,
        from: parse_address("shop@acme.test").expect("address"),
        to: parse_address(to).expect("address"),
        reply_to: None,
        subject: "Your order".into(),
        text: Some("Thanks".into()),
        html: None,
        headers: BTreeMap::new(),
        tags: vec![],
        metadata: BTreeMap::new(),
        attachments: vec![],
        waits: 0,
        first_attempt_at: None,
    }
}

/// A self-signed certificate for `names` (the server's), its key, and the certificate written
/// to a PEM file (what the client trusts through MAILTRAIL_SMTP_TLS_CA_FILE), removed on drop.
struct TestCert {
    cert_pem: String,
    key_pem: String,
    ca_file: PathBuf,
}

impl TestCert {
    fn new(names: &[&str]) -> TestCert {
        let certified = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .expect("a self-signed certificate");
        let cert_pem = certified.cert.pem();
        let ca_file =
            std::env::temp_dir().join(format!("mailtrail-smtp-ca-{}.pem", Uuid::new_v4()));
        std::fs::write(&ca_file, &cert_pem).expect("write the CA file");
        TestCert {
            cert_pem,
            key_pem: certified.signing_key.serialize_pem(),
            ca_file,
        }
    }

    /// For the names the tests connect to: `127.0.0.1` (the capture's URL) and `localhost`.
    fn localhost() -> TestCert {
        TestCert::new(&["localhost", "127.0.0.1"])
    }

    fn ca_file(&self) -> &Path {
        &self.ca_file
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

struct Rig {
    broker: TestBroker,
    connection: Connection,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The dispatcher on the test broker, sending to `smtp`, with one-second retries and probes and
/// a single counted attempt (so only waits that spend nothing can keep a job alive).
async fn start(smtp: &SmtpCapture, configure: impl FnOnce(&mut DispatcherConfig)) -> Rig {
    mailtrail_test_support::init_tracing();
    let broker = TestBroker::new();
    let connection = broker.connect().await;
    let channel = connection.create_channel().await.expect("channel");
    declare_topology(&channel, &broker.topology())
        .await
        .expect("topology");
    let mut config = DispatcherConfig::from_env();
    config.broker.amqp_url = amqp_url();
    config.broker.queue_prefix = broker.prefix().to_owned();
    config.http_addr = "127.0.0.1:0".parse().expect("address");
    config.smtp_url = smtp.url();
    config.smtp_timeout_ms = 10_000;
    config.retry_schedule = parse_schedule("1s").expect("schedule");
    config.max_attempts = 1;
    config.breaker_probe_secs = 1;
    configure(&mut config);
    let app = DispatcherApp::build(config).await.expect("dispatcher");
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    Rig {
        broker,
        connection,
        stop,
        task,
    }
}

/// AUTH as [`USER`] with `password`, trusting `cert`'s CA file.
fn secured(config: &mut DispatcherConfig, cert: Option<&TestCert>, password: &str) {
    config.smtp_username = Some(USER.into());
    config.smtp_password = Some(password.into());
    config.smtp_tls_ca_file = cert.map(|c| c.ca_file().to_owned());
}

impl Rig {
    async fn publish(&self, job: &DispatchJob) {
        let queue = self.broker.topology().queue(Queue::Dispatching);
        let body = serde_json::to_vec(job).expect("json");
        publish_confirmed(&self.connection, &queue, &body).await;
    }

    /// Everything on `queue` now (taken off it).
    async fn take(&self, queue: Queue) -> Vec<lapin::message::BasicGetMessage> {
        take_all(&self.connection, &self.broker.topology().queue(queue)).await
    }

    /// Collects tracking events until `done` says the list is complete.
    async fn events_until(
        &self,
        what: &str,
        done: impl Fn(&[TrackingEvent]) -> bool,
    ) -> Vec<TrackingEvent> {
        let seen = std::sync::Mutex::new(Vec::new());
        eventually(what, Duration::from_secs(40), || async {
            let fresh = self.take(Queue::Tracking).await;
            let mut events = seen.lock().expect("lock");
            for message in fresh {
                events.push(
                    serde_json::from_slice::<TrackingEvent>(&message.delivery.data)
                        .expect("a tracking event"),
                );
            }
            done(&events).then(|| events.clone())
        })
        .await
    }

    /// Waits for `n` deferrals; every event so far must be a provider-down deferral, and the
    /// reasons are returned.
    async fn provider_down_waits(&self, n: usize) -> Vec<String> {
        let events = self
            .events_until(&format!("{n} provider-down waits"), |events| {
                events.iter().filter(|e| is(e, "deferred")).count() >= n
            })
            .await;
        assert!(
            events
                .iter()
                .all(|e| is(e, "deferred") && e.details["provider_down"] == true),
            "{events:?}"
        );
        events
            .iter()
            .map(|e| e.details["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits for the `dispatched` event; nothing may have failed or bounced.
    async fn dispatched(&self) -> Vec<TrackingEvent> {
        let events = self
            .events_until("dispatched", |events| {
                events.iter().any(|e| is(e, "dispatched"))
            })
            .await;
        assert!(
            !events.iter().any(|e| is(e, "failed") || is(e, "bounced")),
            "{events:?}"
        );
        assert_eq!(events.iter().filter(|e| is(e, "dispatched")).count(), 1);
        events
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("joins").expect("dispatcher stops");
    }
}

fn is(event: &TrackingEvent, event_type: &str) -> bool {
    event.event_type.as_str() == event_type
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_and_auth_deliver_over_tls_as_the_configured_user() {
    let cert = TestCert::localhost();
    let smtp = SmtpCapture::start().await.expect("smtp server");
    smtp.enable_starttls(&cert.cert_pem, &cert.key_pem)
        .expect("starttls");
    smtp.require_auth(USER, PASSWORD);
    // The default STARTTLS setting (opportunistic) upgrades when the server offers it.
    let rig = start(&smtp, |config| {
        assert_eq!(config.smtp_starttls, StartTls::Opportunistic);
        secured(config, Some(&cert), PASSWORD);
    })
    .await;
    let sent = job(1, "ann@example.com");
    rig.publish(&sent).await;
    let events = rig.dispatched().await;
    let dispatched = events
        .iter()
        .find(|e| is(e, "dispatched"))
        .expect("dispatched");
    assert_eq!(dispatched.details["attempt"], 1);
    assert_eq!(smtp.wait_for_count(1, Duration::from_secs(5)).await, 1);
    let received = &smtp.messages()[0];
    assert!(received.tls, "the message came over TLS");
    assert_eq!(received.authenticated_as.as_deref(), Some(USER));
    assert_eq!(received.rcpt_to, ["ann@example.com"]);
    assert_eq!(
        received.header("X-Mailtrail-Id"),
        Some(sent.email_id.to_string())
    );
    assert_eq!(smtp.auth_failure_count(), 0);
    assert!(smtp.tls_handshake_count() >= 1);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_login_makes_mail_wait_as_provider_down_until_it_is_fixed() {
    let cert = TestCert::localhost();
    let smtp = SmtpCapture::start().await.expect("smtp server");
    smtp.enable_starttls(&cert.cert_pem, &cert.key_pem)
        .expect("starttls");
    // The server's password was rotated; the dispatcher still has the old one.
    smtp.require_auth(USER, "rotated-password");
    let rig = start(&smtp, |config| secured(config, Some(&cert), PASSWORD)).await;
    rig.publish(&job(2, "bob@example.com")).await;
    let reasons = rig.provider_down_waits(2).await;
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("535") || r.contains("down")),
        "{reasons:?}"
    );
    assert!(reasons[0].contains("535"), "{reasons:?}");
    assert!(
        !reasons.iter().any(|r| r.contains(PASSWORD)),
        "no password in a reason"
    );
    assert!(smtp.auth_failure_count() >= 1);
    assert_eq!(smtp.message_count(), 0);
    // The account is fixed (here: the server takes our password again): the mail goes, once.
    smtp.require_auth(USER, PASSWORD);
    let events = rig.dispatched().await;
    let dispatched = events
        .iter()
        .find(|e| is(e, "dispatched"))
        .expect("dispatched");
    assert!(dispatched.details["attempt"].as_u64() > Some(2));
    assert_eq!(smtp.wait_for_count(1, Duration::from_secs(5)).await, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.message_count(), 1, "delivered once");
    let received = &smtp.messages()[0];
    assert!(received.tls);
    assert_eq!(received.authenticated_as.as_deref(), Some(USER));
    assert!(rig.take(Queue::DeadLetter).await.is_empty());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn required_starttls_against_a_server_without_it_waits_as_provider_down() {
    let cert = TestCert::localhost();
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let rig = start(&smtp, |config| {
        config.smtp_starttls = StartTls::Required;
        config.smtp_tls_ca_file = Some(cert.ca_file().to_owned());
    })
    .await;
    rig.publish(&job(3, "cid@example.com")).await;
    let reasons = rig.provider_down_waits(2).await;
    assert!(reasons[0].contains("STARTTLS"), "{reasons:?}");
    assert_eq!(smtp.message_count(), 0, "nothing was sent in clear");
    // The server starts offering STARTTLS: the mail goes, over TLS.
    smtp.enable_starttls(&cert.cert_pem, &cert.key_pem)
        .expect("starttls");
    rig.dispatched().await;
    assert_eq!(smtp.wait_for_count(1, Duration::from_secs(5)).await, 1);
    assert!(smtp.messages()[0].tls);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_waits_as_provider_down() {
    let cert = TestCert::localhost();
    let smtp = SmtpCapture::start().await.expect("smtp server");
    smtp.enable_starttls(&cert.cert_pem, &cert.key_pem)
        .expect("starttls");
    smtp.require_auth(USER, PASSWORD);
    // No CA file: the self-signed certificate is not trusted, and no password is sent.
    let rig = start(&smtp, |config| secured(config, None, PASSWORD)).await;
    rig.publish(&job(4, "dee@example.com")).await;
    let reasons = rig.provider_down_waits(2).await;
    assert!(reasons[0].contains("TLS handshake"), "{reasons:?}");
    assert_eq!(smtp.message_count(), 0);
    assert_eq!(smtp.auth_success_count() + smtp.auth_failure_count(), 0);
    assert_eq!(smtp.tls_handshake_count(), 0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn implicit_tls_delivers_with_auth() {
    let cert = TestCert::localhost();
    let smtp = SmtpCapture::start_tls(&cert.cert_pem, &cert.key_pem)
        .await
        .expect("smtps server");
    smtp.require_auth(USER, PASSWORD);
    let rig = start(&smtp, |config| {
        assert!(
            config.smtp_url.starts_with("smtps://"),
            "{}",
            config.smtp_url
        );
        // Ignored for smtps://: TLS comes first anyway.
        config.smtp_starttls = StartTls::Off;
        secured(config, Some(&cert), PASSWORD);
    })
    .await;
    rig.publish(&job(5, "eve@example.com")).await;
    rig.dispatched().await;
    assert_eq!(smtp.wait_for_count(1, Duration::from_secs(5)).await, 1);
    let received = &smtp.messages()[0];
    assert!(received.tls);
    assert_eq!(received.authenticated_as.as_deref(), Some(USER));
    rig.stop().await;
}

// The sender alone: each row of the failure table, without the broker.

fn settings(smtp: &SmtpCapture) -> SmtpSettings {
    SmtpSettings::new(&smtp.url(), "localhost", 2, Duration::from_secs(10))
}

fn with_auth(mut settings: SmtpSettings, cert: Option<&TestCert>, password: &str) -> SmtpSettings {
    settings.username = Some(USER.into());
    settings.password = Some(password.into());
    settings.tls_ca_file = cert.map(|c| c.ca_file().to_owned());
    settings
}

async fn send(sender: &SmtpSender, to: &str) -> Result<String, SendError> {
    let job = job(99, to);
    let formatted = message::build(&job, "localhost")
        .expect("builds")
        .formatted();
    let envelope = envelope(&job.from.address, &job.to.address).expect("envelope");
    sender
        .send(&envelope, &formatted)
        .await
        .map(|accepted| accepted.reply)
}

fn provider_down(result: Result<String, SendError>) -> String {
    match result {
        Err(SendError::ProviderDown(reason)) => reason,
        other => panic!("expected ProviderDown, got {other:?}"),
    }
}

#[tokio::test]
async fn the_failure_table_holds_over_starttls_and_auth() {
    let cert = TestCert::localhost();
    let smtp = SmtpCapture::start().await.expect("smtp server");
    smtp.enable_starttls(&cert.cert_pem, &cert.key_pem)
        .expect("starttls");
    smtp.require_auth(USER, PASSWORD);
    let mut required = settings(&smtp);
    required.starttls = StartTls::Required;
    let sender = SmtpSender::with_settings(with_auth(required, Some(&cert), PASSWORD))
        .await
        .expect("sender");
    let reply = send(&sender, "ann@example.com").await.expect("accepted");
    assert!(reply.starts_with("250 "), "{reply}");

    // 5xx at RCPT: rejected, a bounce when the mailbox does not exist.
    smtp.reject_recipient("gone@example.com");
    match send(&sender, "gone@example.com").await {
        Err(SendError::Rejected {
            mailbox_unknown: true,
            reason,
        }) => assert!(reason.contains("550"), "{reason}"),
        other => panic!("expected a bounce, got {other:?}"),
    }
    // 4xx: transient.
    smtp.set_mode(Mode::TransientFailure);
    match send(&sender, "ann@example.com").await {
        Err(SendError::Transient(reason)) => assert!(reason.contains("451"), "{reason}"),
        other => panic!("expected a transient failure, got {other:?}"),
    }
    smtp.set_mode(Mode::Accept);

    // 535 on a new connection: the account is at fault.
    let wrong = SmtpSender::with_settings(with_auth(settings(&smtp), Some(&cert), "wrong"))
        .await
        .expect("sender");
    let reason = provider_down(send(&wrong, "ann@example.com").await);
    assert!(reason.contains("535"), "{reason}");
    assert!(!reason.contains("wrong"), "no password in {reason}");

    // No credentials for a server that requires them: 530 at MAIL FROM, the account again.
    let mut anonymous = settings(&smtp);
    anonymous.tls_ca_file = Some(cert.ca_file().to_owned());
    let anonymous = SmtpSender::with_settings(anonymous).await.expect("sender");
    let reason = provider_down(send(&anonymous, "ann@example.com").await);
    assert!(reason.contains("530"), "{reason}");

    let received = smtp.messages();
    assert_eq!(received.len(), 1);
    assert!(received[0].tls);
    assert_eq!(received[0].authenticated_as.as_deref(), Some(USER));
}

#[tokio::test]
async fn the_password_never_goes_in_clear_unless_allowed() {
    // A server offering AUTH but no STARTTLS.
    let smtp = SmtpCapture::start().await.expect("smtp server");
    smtp.require_auth(USER, PASSWORD);
    let opportunistic = SmtpSender::with_settings(with_auth(settings(&smtp), None, PASSWORD))
        .await
        .expect("sender");
    let reason = provider_down(send(&opportunistic, "ann@example.com").await);
    assert!(reason.contains("in clear"), "{reason}");
    assert_eq!(smtp.auth_success_count() + smtp.auth_failure_count(), 0);

    let mut allowed = with_auth(settings(&smtp), None, PASSWORD);
    allowed.allow_cleartext_auth = true;
    let allowed = SmtpSender::with_settings(allowed).await.expect("sender");
    send(&allowed, "ann@example.com").await.expect("accepted");
    let received = &smtp.messages()[0];
    assert!(!received.tls);
    assert_eq!(received.authenticated_as.as_deref(), Some(USER));

    // STARTTLS off with a password is refused at start-up unless cleartext AUTH is allowed.
    let mut off = with_auth(settings(&smtp), None, PASSWORD);
    off.starttls = StartTls::Off;
    let error = SmtpSender::with_settings(off)
        .await
        .err()
        .expect("refused at start-up");
    assert!(error.to_string().contains("in clear"), "{error}");
}

#[tokio::test]
async fn certificates_are_verified_by_trust_and_by_name() {
    // Trusted, but issued to another name than the one in the URL (127.0.0.1).
    let elsewhere = TestCert::new(&["mail.example.com"]);
    let smtp = SmtpCapture::start().await.expect("smtp server");
    smtp.enable_starttls(&elsewhere.cert_pem, &elsewhere.key_pem)
        .expect("starttls");
    let mut wrong_name = settings(&smtp);
    wrong_name.tls_ca_file = Some(elsewhere.ca_file().to_owned());
    let sender = SmtpSender::with_settings(wrong_name).await.expect("sender");
    let reason = provider_down(send(&sender, "ann@example.com").await);
    assert!(reason.contains("TLS handshake"), "{reason}");

    // Implicit TLS with a certificate not trusted at all.
    let cert = TestCert::localhost();
    let smtps = SmtpCapture::start_tls(&cert.cert_pem, &cert.key_pem)
        .await
        .expect("smtps server");
    let untrusted = SmtpSender::with_settings(settings(&smtps))
        .await
        .expect("sender");
    let reason = provider_down(send(&untrusted, "ann@example.com").await);
    assert!(reason.contains("TLS handshake"), "{reason}");
    assert_eq!(smtp.message_count() + smtps.message_count(), 0);

    // The same server, trusted through the CA file: delivered.
    let mut trusted = settings(&smtps);
    trusted.tls_ca_file = Some(cert.ca_file().to_owned());
    let trusted = SmtpSender::with_settings(trusted).await.expect("sender");
    send(&trusted, "ann@example.com").await.expect("accepted");
    assert!(smtps.messages()[0].tls);
}
