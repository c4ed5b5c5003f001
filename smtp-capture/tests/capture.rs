//! Drives the capture server over real TCP with a tiny hand-written SMTP client.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mailtrail_smtp_capture::{Mode, SmtpCapture, Stage};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Reply {
    code: u16,
    /// Every line of the reply, without the code and separator.
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        self.lines.join("\n")
    }
}

struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    /// Connects without reading the greeting.
    async fn connect_raw(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to smtp-capture");
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        let (reader, writer) = stream.into_split();
        Client {
            reader: BufReader::new(reader),
            writer,
        }
    }

    /// Connects and checks the greeting.
    async fn connect(addr: SocketAddr) -> Client {
        let mut client = Client::connect_raw(addr).await;
        let greeting = client.reply().await.expect("a greeting");
        assert_eq!(greeting.code, 220, "{greeting:?}");
        assert!(
            greeting.text().ends_with("ESMTP mailtrail-smtp-capture"),
            "{greeting:?}"
        );
        client
    }

    async fn send(&mut self, bytes: &str) {
        tokio::time::timeout(IO_TIMEOUT, self.writer.write_all(bytes.as_bytes()))
            .await
            .expect("write timed out")
            .expect("write to smtp-capture");
    }

    /// The next (possibly multi-line) reply, or `None` if the server closed the connection.
    async fn reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(IO_TIMEOUT, self.reader.read_line(&mut line))
                .await
                .expect("reply timed out")
                .expect("read from smtp-capture");
            if n == 0 {
                assert!(lines.is_empty(), "connection closed mid-reply: {lines:?}");
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("a numeric reply code");
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or_default().to_owned());
            if last {
                return Some(Reply { code, lines });
            }
        }
    }

    async fn command(&mut self, line: &str) -> Reply {
        self.send(&format!("{line}\r\n")).await;
        self.reply()
            .await
            .expect("a reply, not a closed connection")
    }

    async fn expect(&mut self, line: &str, code: u16) -> Reply {
        let reply = self.command(line).await;
        assert_eq!(reply.code, code, "{line:?} got {reply:?}");
        reply
    }

    /// True if the server closed the connection (EOF) without sending anything more.
    async fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        // EOF and a reset both mean closed; only what was read before decides.
        let _eof_or_reset = tokio::time::timeout(IO_TIMEOUT, self.reader.read_to_end(&mut rest))
            .await
            .expect("close timed out");
        rest.is_empty()
    }

    /// One whole transaction; returns the queue id from the 250 reply to ".".
    async fn send_message(&mut self, from: &str, to: &[&str], data: &str) -> String {
        self.expect(&format!("MAIL FROM:<{from}>"), 250).await;
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
        }
        self.expect("DATA", 354).await;
        self.send(data).await;
        let reply = self.expect(".", 250).await;
        queue_id(&reply)
    }
}

fn queue_id(reply: &Reply) -> String {
    let text = reply.text();
    let id = text
        .strip_prefix("2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("unexpected reply to \".\": {text:?}"));
    assert!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id:?}"
    );
    id.to_owned()
}

#[tokio::test]
async fn captures_a_message_with_its_envelope_unstuffed_data_and_headers() {
    let capture = SmtpCapture::start().await.expect("start smtp-capture");
    assert_eq!(
        capture.url(),
        format!("smtp://127.0.0.1:{}", capture.port())
    );
    assert_eq!(capture.addr().port(), capture.port());

    let mut client = Client::connect(capture.addr()).await;
    let ehlo = client.expect("EHLO client.example", 250).await;
    for extension in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "SIZE 52428800",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l == extension),
            "{extension} missing: {ehlo:?}"
        );
    }
    client
        .expect(
            "mail from:<sender@example.com> SIZE=123 BODY=8BITMIME SMTPUTF8",
            250,
        )
        .await;
    client.expect("RCPT TO:<first@example.com>", 250).await;
    client.expect("rcpt to: <second@example.org>", 250).await;
    client.expect("DATA", 354).await;
    client
        .send(concat!(
            "From: sender@example.com\r\n",
            "Subject: Hello\r\n",
            " folded world\r\n",
            "X-Mailtrail-Id:\r\n",
            "\t0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\r\n",
            "\r\n",
            "First line\r\n",
            "..hidden\r\n",
            "...two dots\r\n",
            "not.at.start\r\n",
        ))
        .await;
    let reply = client.expect(".", 250).await;
    let id = queue_id(&reply);
    client.expect("QUIT", 221).await;
    assert!(client.is_closed().await, "QUIT must close the connection");

    assert_eq!(capture.message_count(), 1);
    assert_eq!(capture.connection_count(), 1);
    let messages = capture.messages();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.mail_from, "sender@example.com");
    assert_eq!(message.rcpt_to, ["first@example.com", "second@example.org"]);
    assert_eq!(message.message_id, id);
    assert_eq!(
        String::from_utf8(message.data.clone()).expect("UTF-8 data"),
        concat!(
            "From: sender@example.com\r\n",
            "Subject: Hello\r\n",
            " folded world\r\n",
            "X-Mailtrail-Id:\r\n",
            "\t0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\r\n",
            "\r\n",
            "First line\r\n",
            ".hidden\r\n",
            "..two dots\r\n",
            "not.at.start\r\n",
        )
    );
    assert_eq!(
        message.header("x-mailtrail-id").as_deref(),
        Some("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    );
    assert_eq!(
        message.header("SUBJECT").as_deref(),
        Some("Hello folded world")
    );
    assert_eq!(message.header("Hidden"), None);
}

#[tokio::test]
async fn pipelined_commands_get_their_replies_in_order() {
    let capture = SmtpCapture::start().await.expect("start smtp-capture");
    capture.reject_recipient("Bad@Example.com");
    let mut client = Client::connect(capture.addr()).await;

    client
        .send(concat!(
            "EHLO pipeliner\r\n",
            "MAIL FROM:<a@example.com>\r\n",
            "RCPT TO:<c@example.com>\r\n",
            "RCPT TO:<bad@example.com>\r\n",
            "BOGUS\r\n",
            "NOOP\r\n",
            "DATA\r\n",
        ))
        .await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(client.reply().await.expect("a reply").code);
    }
    assert_eq!(codes, [250, 250, 250, 550, 500, 250]);
    assert_eq!(client.reply().await.expect("a reply").code, 354);

    // The data, its end and the next transaction in one write.
    client
        .send(concat!(
            "Subject: one\r\n\r\nbody\r\n.\r\n",
            "RSET\r\n",
            "MAIL FROM:<>\r\n",
            "RCPT TO:<d@example.com>\r\n",
            "DATA\r\n",
        ))
        .await;
    let first = client.reply().await.expect("a reply");
    let first_id = queue_id(&first);
    let codes = [
        client.reply().await.expect("a reply").code,
        client.reply().await.expect("a reply").code,
        client.reply().await.expect("a reply").code,
        client.reply().await.expect("a reply").code,
    ];
    assert_eq!(codes, [250, 250, 250, 354]);
    client.send("Subject: two\r\n\r\n.\r\nQUIT\r\n").await;
    let second_id = queue_id(&client.reply().await.expect("a reply"));
    assert_eq!(client.reply().await.expect("a reply").code, 221);
    assert_ne!(first_id, second_id);

    let messages = capture.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].rcpt_to, ["c@example.com"]);
    assert_eq!(messages[0].data, b"Subject: one\r\n\r\nbody\r\n");
    assert_eq!(messages[0].message_id, first_id);
    assert_eq!(messages[1].mail_from, "");
    assert_eq!(messages[1].rcpt_to, ["d@example.com"]);
    assert_eq!(messages[1].header("Subject").as_deref(), Some("two"));
    assert_eq!(messages[1].message_id, second_id);
}

#[tokio::test]
async fn bad_sequences_and_unknown_commands_are_refused() {
    let capture = SmtpCapture::start().await.expect("start smtp-capture");
    let mut client = Client::connect(capture.addr()).await;
    client.expect("MAIL FROM:<a@example.com>", 503).await;
    client.expect("HELO", 501).await;
    client.expect("helo client", 250).await;
    client.expect("RCPT TO:<b@example.com>", 503).await;
    client.expect("DATA", 503).await;
    client.expect("MAIL TO:<a@example.com>", 501).await;
    client
        .expect("MAIL FROM:<a@example.com> SIZE=99999999999", 552)
        .await;
    client.expect("MAIL FROM:<a@example.com>", 250).await;
    client.expect("MAIL FROM:<a@example.com>", 503).await;
    client.expect("DATA", 503).await;
    client.expect("RCPT TO:<>", 501).await;
    client.expect("XYZZY", 500).await;
    client.expect("", 500).await;
    client.expect("RSET", 250).await;
    client.expect("RCPT TO:<b@example.com>", 503).await;
    client.expect("noop", 250).await;
    client.expect("quit", 221).await;
    assert_eq!(capture.message_count(), 0);
}

#[tokio::test]
async fn transient_failure_mode_answers_451_to_mail_from_until_accept_again() {
    let capture = SmtpCapture::start().await.expect("start smtp-capture");
    let mut client = Client::connect(capture.addr()).await;
    client.expect("EHLO client", 250).await;

    capture.set_mode(Mode::TransientFailure);
    let reply = client.expect("MAIL FROM:<a@example.com>", 451).await;
    assert!(reply.text().starts_with("4.3.0 "), "{reply:?}");
    client.expect("RCPT TO:<b@example.com>", 503).await;

    capture.set_mode(Mode::Accept);
    client
        .send_message(
            "a@example.com",
            &["b@example.com"],
            "Subject: x\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(capture.message_count(), 1);
}

#[tokio::test]
async fn rejected_recipient_gets_550_and_the_others_are_accepted() {
    let capture = SmtpCapture::start().await.expect("start smtp-capture");
    capture.reject_recipient("Nobody@Example.com");
    let mut client = Client::connect(capture.addr()).await;
    client.expect("EHLO client", 250).await;
    client.expect("MAIL FROM:<a@example.com>", 250).await;
    let reply = client.expect("RCPT TO:<nobody@EXAMPLE.com>", 550).await;
    assert_eq!(reply.text(), "5.1.1 <nobody@EXAMPLE.com>: no such user");
    client.expect("RCPT TO:<somebody@example.com>", 250).await;
    client.expect("DATA", 354).await;
    client.send("Subject: x\r\n\r\n").await;
    client.expect(".", 250).await;
    let messages = capture.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpt_to, ["somebody@example.com"]);
}

#[tokio::test]
async fn any_recipient_reply_at_rcpt_or_at_the_end_of_data() {
    let capture = SmtpCapture::start().await.expect("start smtp-capture");
    capture.answer_recipient(
        "Greylisted@Example.com",
        Stage::Rcpt,
        "451 4.7.1 Greylisted, try again later",
    );
    capture.answer_recipient(
        "filtered@example.com",
        Stage::Data,
        "554 5.7.1 Message refused by policy",
    );
    capture.defer_recipient("busy@example.com");
    let mut client = Client::connect(capture.addr()).await;
    client.expect("EHLO client", 250).await;

    // At RCPT: the reply as given, the rest of the transaction goes on.
    client.expect("MAIL FROM:<a@example.com>", 250).await;
    let reply = client.expect("RCPT TO:<greylisted@example.com>", 451).await;
    assert_eq!(reply.text(), "4.7.1 Greylisted, try again later");
    let reply = client.expect("RCPT TO:<busy@example.com>", 450).await;
    assert_eq!(
        reply.text(),
        "4.2.1 <busy@example.com>: mailbox busy, try again later"
    );
    client.expect("RCPT TO:<fine@example.com>", 250).await;
    client.expect("DATA", 354).await;
    client.send("Subject: one\r\n\r\n").await;
    client.expect(".", 250).await;

    // At the end of data: RCPT is taken, the whole message is refused and not kept.
    client.expect("MAIL FROM:<a@example.com>", 250).await;
    client.expect("RCPT TO:<fine@example.com>", 250).await;
    client.expect("RCPT TO:<FILTERED@example.com>", 250).await;
    client.expect("DATA", 354).await;
    client.send("Subject: two\r\n\r\n").await;
    let reply = client.expect(".", 554).await;
    assert_eq!(reply.text(), "5.7.1 Message refused by policy");

    // A recipient set back to accepted, and the next transaction on the same connection.
    capture.accept_recipient("FILTERED@example.com");
    capture.accept_recipient("greylisted@example.com");
    client
        .send_message(
            "a@example.com",
            &["filtered@example.com", "greylisted@example.com"],
            "Subject: three\r\n\r\n",
        )
        .await;
    let kept: Vec<Vec<String>> = capture.messages().into_iter().map(|m| m.rcpt_to).collect();
    assert_eq!(
        kept,
        [
            vec!["fine@example.com".to_owned()],
            vec![
                "filtered@example.com".to_owned(),
                "greylisted@example.com".to_owned()
            ]
        ]
    );
    assert_eq!(capture.message_count(), 2);
}

#[test]
#[should_panic(expected = "not a one-line 4xx/5xx reply")]
fn a_recipient_reply_must_be_a_failure_reply() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let capture = runtime
        .block_on(SmtpCapture::start())
        .expect("start smtp-capture");
    capture.answer_recipient("ann@example.com", Stage::Rcpt, "250 2.1.5 Ok");
}

#[tokio::test]
async fn drop_connections_mode_closes_new_and_existing_connections() {
    let capture = SmtpCapture::start().await.expect("start smtp-capture");
    let mut existing = Client::connect(capture.addr()).await;
    existing.expect("EHLO client", 250).await;

    capture.set_mode(Mode::DropConnections);
    let mut fresh = Client::connect_raw(capture.addr()).await;
    assert!(
        fresh.is_closed().await,
        "a new connection must close without a greeting"
    );
    existing.send("NOOP\r\n").await;
    assert!(
        existing.reply().await.is_none(),
        "an existing connection must close at its next command"
    );
    assert_eq!(capture.connection_count(), 2);

    capture.set_mode(Mode::Accept);
    let mut again = Client::connect(capture.addr()).await;
    again.expect("EHLO client", 250).await;
    again
        .send_message("a@example.com", &["b@example.com"], "Subject: back\r\n\r\n")
        .await;
    assert_eq!(capture.connection_count(), 3);
    assert_eq!(capture.message_count(), 1);
}

#[tokio::test]
async fn wait_for_count_returns_when_reached_or_at_the_timeout() {
    let capture = SmtpCapture::start().await.expect("start smtp-capture");
    let addr = capture.addr();
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut client = Client::connect(addr).await;
        client.expect("EHLO client", 250).await;
        for i in 0..3 {
            client
                .send_message(
                    "a@example.com",
                    &["b@example.com"],
                    &format!("Subject: {i}\r\n\r\n"),
                )
                .await;
        }
    });
    let started = Instant::now();
    assert_eq!(capture.wait_for_count(3, Duration::from_secs(10)).await, 3);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    sender.await.expect("sender task");

    let started = Instant::now();
    assert_eq!(
        capture.wait_for_count(4, Duration::from_millis(200)).await,
        3
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(capture.wait_for_count(2, Duration::ZERO).await, 3);
}

#[tokio::test]
async fn without_keeping_messages_they_are_only_counted() {
    let capture = SmtpCapture::start().await.expect("start smtp-capture");
    capture.set_keep_messages(false);
    let mut client = Client::connect(capture.addr()).await;
    client.expect("EHLO client", 250).await;
    client
        .send_message("a@example.com", &["b@example.com"], "Subject: x\r\n\r\n")
        .await;
    assert_eq!(capture.message_count(), 1);
    assert!(capture.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_connections_are_all_captured_with_unique_ids() {
    const CONNECTIONS: usize = 16;
    const PER_CONNECTION: usize = 200;
    let capture = SmtpCapture::start().await.expect("start smtp-capture");
    let addr = capture.addr();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            client.expect("EHLO bench", 250).await;
            for m in 0..PER_CONNECTION {
                // Pipelined as a client with PIPELINING would: envelope and DATA in one write.
                client
                    .send(&format!(
                        "MAIL FROM:<c{c}@example.com>\r\nRCPT TO:<m{m}@example.com>\r\nDATA\r\n"
                    ))
                    .await;
                for code in [250, 250, 354] {
                    assert_eq!(client.reply().await.expect("a reply").code, code);
                }
                client
                    .send(&format!("X-Mailtrail-Id: {c}-{m}\r\n\r\n.\r\n"))
                    .await;
                queue_id(&client.reply().await.expect("a reply"));
            }
            client.expect("QUIT", 221).await;
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let elapsed = started.elapsed();
    let total = CONNECTIONS * PER_CONNECTION;
    eprintln!(
        "{total} messages in {elapsed:?} ({:.0}/s, client and server in one process)",
        total as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(capture.message_count(), total);
    let messages = capture.messages();
    let ids: HashSet<_> = messages.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids.len(), total);
    let tags: HashSet<_> = messages
        .iter()
        .map(|m| m.header("X-Mailtrail-Id").expect("the id header"))
        .collect();
    assert_eq!(tags.len(), total);
    assert_eq!(capture.connection_count(), CONNECTIONS);
}

#[tokio::test]
async fn dropping_the_capture_closes_its_connections() {
    let capture = SmtpCapture::start().await.expect("start smtp-capture");
    let addr = capture.addr();
    let mut client = Client::connect(addr).await;
    client.expect("EHLO client", 250).await;
    drop(capture);
    assert!(client.is_closed().await, "the connection must be closed");
    // The listener is gone too: a new connection is refused (or at least never greeted).
    match TcpStream::connect(addr).await {
        Err(_) => {}
        Ok(stream) => {
            let (reader, writer) = stream.into_split();
            let mut late = Client {
                reader: BufReader::new(reader),
                writer,
            };
            assert!(late.is_closed().await);
        }
    }
}
