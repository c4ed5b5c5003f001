//! The `smtp-capture` binary: listens, logs each accepted message, exits 0 on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn next_line(lines: &mut tokio::io::Lines<impl tokio::io::AsyncBufRead + Unpin>) -> String {
    tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("timed out waiting for a line")
        .expect("read a line")
        .expect("a line before EOF")
}

#[tokio::test]
async fn help_lists_the_settings() {
    let output = Command::new(env!("CARGO_BIN_EXE_smtp-capture"))
        .arg("--help")
        .output()
        .await
        .expect("run smtp-capture --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "MAILTRAIL_SMTP_CAPTURE_ADDR",
        "MAILTRAIL_SMTP_CAPTURE_MODE",
        "transient-failure",
        "drop-connections",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

#[tokio::test]
async fn logs_each_accepted_message_and_exits_0_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smtp-capture"))
        .env("MAILTRAIL_SMTP_CAPTURE_ADDR", "127.0.0.1:0")
        .env("MAILTRAIL_LOG", "info")
        .env_remove("MAILTRAIL_SMTP_CAPTURE_MODE")
        .env_remove("MAILTRAIL_LOG_FORMAT")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn smtp-capture");
    let mut log = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let listening = next_line(&mut log).await;
    assert!(listening.contains("smtp-capture listening"), "{listening}");
    let addr = listening
        .split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .expect("addr= in the listening line")
        .to_owned();

    let stream = TcpStream::connect(&addr).await.expect("connect");
    let (reader, mut writer) = stream.into_split();
    let mut replies = BufReader::new(reader).lines();
    writer
        .write_all(
            concat!(
                "EHLO t\r\nMAIL FROM:<from@example.com>\r\nRCPT TO:<to@example.com>\r\nDATA\r\n",
                "Subject: Quick start\r\nX-Mailtrail-Id: 0190-abc\r\n\r\nhi\r\n.\r\nQUIT\r\n",
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let mut all = Vec::new();
    while let Some(line) = tokio::time::timeout(TIMEOUT, replies.next_line())
        .await
        .expect("timed out waiting for replies")
        .expect("read a reply")
    {
        all.push(line);
    }
    let queued = all
        .iter()
        .find_map(|l| l.strip_prefix("250 2.0.0 Ok: queued as "))
        .unwrap_or_else(|| panic!("no queued reply in {all:?}"))
        .to_owned();
    assert_eq!(all.last().map(String::as_str), Some("221 2.0.0 Bye"));

    let accepted = next_line(&mut log).await;
    for needle in [
        "message accepted",
        &queued,
        "from@example.com",
        "to@example.com",
        "0190-abc",
        "Quick start",
    ] {
        assert!(
            accepted.contains(needle),
            "{needle} missing from {accepted}"
        );
    }

    let pid = child.id().expect("a running child");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .expect("smtp-capture did not stop on SIGTERM")
        .expect("wait for smtp-capture");
    assert!(status.success(), "{status:?}");
}
