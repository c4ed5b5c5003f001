//! The SMTP sender: a pool of reused connections, each with `TCP_NODELAY`.
//!
//! Why not lettre's own pooled transport: lettre 0.11 writes the body and the final `.` in two
//! writes without `TCP_NODELAY`, so Nagle's algorithm and delayed ACKs stall every message about
//! 40 ms (about 23 messages/s per connection). Connections built here on a `TcpStream` with
//! `set_nodelay(true)` send thousands per second (docs/benchmarks.md).

use lettre::Address as LettreAddress;
use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// What the server said when it took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The reply to the final `.`, e.g. `250 2.0.0 Ok: queued as 4F2A`.
    pub reply: String,
    /// The server's queue id, where the reply names one.
    pub queue_id: Option<String>,
}

use crate::providers::SendError;

pub struct SmtpSender {
    server: SocketAddr,
    hello: ClientId,
    timeout: Duration,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
    /// One permit per connection, idle or busy: bounds the connections to the server.
    permits: Semaphore,
}

impl SmtpSender {
    /// `url` is `smtp://host:port` (port default 25).
    pub async fn new(
        url: &str,
        hello_name: &str,
        max_connections: usize,
        timeout: Duration,
    ) -> anyhow::Result<SmtpSender> {
        let rest = url.strip_prefix("smtp://").ok_or_else(|| {
            anyhow::anyhow!(
                "MAILTRAIL_SMTP_URL {url:?} is not smtp://host:port (TLS and AUTH are not \
                 supported yet)"
            )
        })?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:25")
        };
        let server = tokio::net::lookup_host(&authority)
            .await
            .map_err(|e| anyhow::anyhow!("cannot resolve the SMTP server {authority:?}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("the SMTP server {authority:?} has no address"))?;
        Ok(SmtpSender {
            server,
            hello: ClientId::Domain(hello_name.to_owned()),
            timeout,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max_connections.max(1)),
        })
    }

    /// Sends one message to its envelope's recipients.
    pub async fn send(&self, envelope: &Envelope, formatted: &[u8]) -> Result<Accepted, SendError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SendError::Transient("the SMTP sender is closed".into()))?;
        // A pooled connection may have been closed by the server while idle: one failure of the
        // transport on a reused connection is retried once on a fresh one.
        let reused = self.take_idle();
        let was_reused = reused.is_some();
        match self.send_on(reused, envelope, formatted).await {
            Err(Attempt::Transport(_)) if was_reused => self
                .send_on(None, envelope, formatted)
                .await
                .map_err(Attempt::into_failure),
            other => other.map_err(Attempt::into_failure),
        }
    }

    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    async fn send_on(
        &self,
        connection: Option<AsyncSmtpConnection>,
        envelope: &Envelope,
        formatted: &[u8],
    ) -> Result<Accepted, Attempt> {
        let work = async {
            let mut connection = match connection {
                Some(c) => c,
                None => self.connect().await?,
            };
            match connection.send(envelope, formatted).await {
                Ok(response) => {
                    let reply = format!(
                        "{} {}",
                        response.code(),
                        response.message().collect::<Vec<_>>().join(" ")
                    );
                    if let Ok(mut idle) = self.idle.lock() {
                        idle.push(connection);
                    }
                    Ok(Accepted {
                        queue_id: queue_id(&reply),
                        reply,
                    })
                }
                Err(error) => Err(classify(&error, Phase::Transaction)),
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(Attempt::Timeout(self.timeout)),
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, Attempt> {
        let stream = TcpStream::connect(self.server)
            .await
            .map_err(|e| Attempt::Transport(format!("cannot connect to {}: {e}", self.server)))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Attempt::Transport(format!("cannot set TCP_NODELAY: {e}")))?;
        AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
            .await
            .map_err(|e| classify(&e, Phase::Connection))
    }
}

/// Where in the SMTP dialogue an error came: a refusal of the connection itself (greeting,
/// EHLO, AUTH) is about us or the server, not about one message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connection,
    Transaction,
}

/// One attempt's failure, before the retry-on-fresh-connection decision.
enum Attempt {
    /// The server answered with an error code.
    Reply(SendError),
    /// The connection broke (or could not be made).
    Transport(String),
    Timeout(Duration),
}

impl Attempt {
    fn into_failure(self) -> SendError {
        match self {
            Attempt::Reply(failure) => failure,
            Attempt::Transport(reason) => SendError::Transient(reason),
            Attempt::Timeout(after) => SendError::Transient(format!(
                "the SMTP server did not finish within {} ms",
                after.as_millis()
            )),
        }
    }
}

/// The SMTP failure table (README): 4xx → transient; 5xx to the connection, EHLO or AUTH (535
/// and friends) → the server or our account is at fault; 5xx in the transaction → the message
/// or recipient is at fault, a bounce when the reply says the mailbox does not exist.
fn classify(error: &lettre::transport::smtp::Error, phase: Phase) -> Attempt {
    let text = error.to_string();
    let code = error
        .status()
        .map(|code| code.to_string())
        .unwrap_or_default();
    if error.is_permanent() {
        let account = phase == Phase::Connection || matches!(code.as_str(), "530" | "534" | "535");
        if account {
            Attempt::Reply(SendError::ProviderDown(text))
        } else {
            Attempt::Reply(SendError::Rejected {
                mailbox_unknown: mailbox_unknown(&code, &text),
                reason: text,
            })
        }
    } else if error.is_transient() {
        Attempt::Reply(SendError::Transient(text))
    } else if error.is_client() {
        // e.g. non-ASCII addresses to a server without SMTPUTF8: this message cannot go there.
        Attempt::Reply(SendError::Rejected {
            reason: text,
            mailbox_unknown: false,
        })
    } else {
        Attempt::Transport(text)
    }
}

/// Does a 5xx reply say the mailbox does not exist (RFC 3463 5.1.1, 5.1.10; 550 "user unknown")?
fn mailbox_unknown(code: &str, text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("5.1.1")
        || lower.contains("5.1.10")
        || (matches!(code, "550" | "551" | "553")
            && ["unknown", "no such user", "does not exist", "not found"]
                .iter()
                .any(|phrase| lower.contains(phrase)))
}

/// The queue id in a reply such as `250 2.0.0 Ok: queued as 4F2A`.
fn queue_id(reply: &str) -> Option<String> {
    let (_, after) = reply.split_once("queued as ")?;
    let id: String = after
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    (!id.is_empty()).then_some(id)
}

/// The envelope of one message: the sender and its one recipient.
pub fn envelope(from: &str, to: &str) -> Result<Envelope, String> {
    let from: LettreAddress = from.parse().map_err(|e| format!("{from:?}: {e}"))?;
    let to: LettreAddress = to.parse().map_err(|e| format!("{to:?}: {e}"))?;
    Envelope::new(Some(from), vec![to]).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_mailboxes_are_told_apart() {
        assert!(mailbox_unknown(
            "550",
            "permanent error (550): 5.1.1 <a@b>: user unknown"
        ));
        assert!(mailbox_unknown(
            "550",
            "permanent error (550): no such user here"
        ));
        assert!(!mailbox_unknown(
            "554",
            "permanent error (554): 5.7.1 message refused"
        ));
        assert!(!mailbox_unknown(
            "552",
            "permanent error (552): mailbox full"
        ));
    }

    #[test]
    fn queue_ids_are_read_from_replies() {
        assert_eq!(
            queue_id("250 2.0.0 Ok: queued as 4F2A9").as_deref(),
            Some("4F2A9")
        );
        assert_eq!(queue_id("250 OK"), None);
    }
}
