//! `smtp-capture`: runs the capture SMTP server on its own (quick start, manual tests,
//! benchmarks) and logs one line per accepted message.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use clap::{Parser, ValueEnum};
use mailtrail_smtp_capture::{Mode, SmtpCapture};

/// mailtrail smtp-capture: a fast SMTP server that accepts mail and logs it instead of
/// delivering it.
///
/// Logs one line per accepted message (queue id, sender, recipients, X-Mailtrail-Id, Subject)
/// to stderr; messages are not kept. Runs until SIGTERM or SIGINT (exit 0). Every flag can also
/// be set with the environment variable shown beside it; `MAILTRAIL_LOG` filters the log
/// (default `info`).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on for SMTP.
    #[arg(
        long,
        env = "MAILTRAIL_SMTP_CAPTURE_ADDR",
        default_value = "127.0.0.1:2525"
    )]
    addr: SocketAddr,
    /// How to answer: accept everything, fail every MAIL FROM with 451, or drop every
    /// connection.
    #[arg(long, env = "MAILTRAIL_SMTP_CAPTURE_MODE", value_enum, default_value_t = ModeArg::Accept)]
    mode: ModeArg,
    /// Require AUTH (PLAIN or LOGIN) as `user:password` before MAIL FROM (535 for other
    /// credentials, 530 without AUTH).
    #[arg(long, env = "MAILTRAIL_SMTP_CAPTURE_AUTH", hide_env_values = true)]
    auth: Option<String>,
    /// A PEM certificate chain (leaf first): offer STARTTLS with it (needs --tls-key).
    #[arg(long, env = "MAILTRAIL_SMTP_CAPTURE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "MAILTRAIL_SMTP_CAPTURE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With --tls-cert: TLS from the first byte (smtps://, as on port 465) instead of STARTTLS.
    #[arg(
        long,
        env = "MAILTRAIL_SMTP_CAPTURE_IMPLICIT_TLS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        requires = "tls_cert"
    )]
    implicit_tls: bool,
    /// Log format: text or json.
    #[arg(long, env = "MAILTRAIL_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Accept,
    TransientFailure,
    DropConnections,
    RefuseService,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Mode {
        match mode {
            ModeArg::Accept => Mode::Accept,
            ModeArg::TransientFailure => Mode::TransientFailure,
            ModeArg::DropConnections => Mode::DropConnections,
            ModeArg::RefuseService => Mode::RefuseService,
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILTRAIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format.eq_ignore_ascii_case("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let auth = args
        .auth
        .as_deref()
        .map(|auth| {
            auth.split_once(':')
                .context("--auth / MAILTRAIL_SMTP_CAPTURE_AUTH must be user:password")
        })
        .transpose()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((
            std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?,
            std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?,
        )),
        _ => None,
    };
    let capture = match &tls {
        Some((cert, key)) if args.implicit_tls => {
            SmtpCapture::start_tls_on(args.addr, cert, key).await?
        }
        Some((cert, key)) => {
            let capture = SmtpCapture::start_on(args.addr).await?;
            capture.enable_starttls(cert, key)?;
            capture
        }
        None => SmtpCapture::start_on(args.addr).await?,
    };
    if let Some((user, password)) = auth {
        capture.require_auth(user, password);
    }
    capture.set_keep_messages(false);
    capture.set_mode(args.mode.into());
    capture.on_message(|message| {
        tracing::info!(
            queue_id = %message.message_id,
            from = %message.mail_from,
            to = %message.rcpt_to.join(","),
            mailtrail_id = message.header("X-Mailtrail-Id").unwrap_or_default(),
            subject = message.header("Subject").unwrap_or_default(),
            "message accepted"
        );
    });
    tracing::info!(
        addr = %capture.addr(),
        url = %capture.url(),
        mode = ?args.mode,
        starttls = tls.is_some() && !args.implicit_tls,
        auth = args.auth.is_some(),
        "smtp-capture listening"
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    tracing::info!(messages = capture.message_count(), "smtp-capture stopping");
    Ok(())
}
