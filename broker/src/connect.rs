use anyhow::Context;
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

/// How a service reaches RabbitMQ.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// `amqp://` or `amqps://` URL (`MAILTRAIL_AMQP_URL`).
    pub url: String,
    /// AMQP heartbeat, so a silent connection is noticed within about two intervals
    /// (`MAILTRAIL_AMQP_HEARTBEAT_SECS`). Ignored when the URL sets `heartbeat` itself.
    pub heartbeat: Duration,
    /// Shown in the management UI and `rabbitmqctl list_connections`.
    pub connection_name: String,
}

impl BrokerSettings {
    /// The URL with the heartbeat query parameter added unless the URL already has one.
    pub fn effective_url(&self) -> String {
        if self.url.contains("heartbeat=") {
            return self.url.clone();
        }
        let separator = if self.url.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}heartbeat={}",
            self.url,
            self.heartbeat.as_secs().max(1)
        )
    }
}

/// Opens a connection. The error names the URL without its password.
pub async fn connect(settings: &BrokerSettings) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(settings.connection_name.clone().into());
    // A peer that accepts TCP but never answers (a black-holed proxy) must not hang us: the
    // handshake gets the same budget as two missed heartbeats, at least five seconds.
    let budget = (settings.heartbeat * 2).max(Duration::from_secs(5));
    tokio::time::timeout(
        budget,
        Connection::connect(&settings.effective_url(), properties),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no AMQP handshake within {} s", budget.as_secs()))
    .and_then(|connected| connected.map_err(anyhow::Error::from))
    .with_context(|| {
        format!(
            "cannot connect to RabbitMQ at {}: is it running, and are MAILTRAIL_AMQP_URL's \
                 credentials right?",
            redact(&settings.url)
        )
    })
}

/// Closes a connection politely, but never waits more than two seconds for the broker's answer:
/// a shutdown or a reconnect must not hang on a broker that stopped answering. Unacked
/// deliveries return to their queues either way, when the socket closes.
pub async fn close_connection(connection: &Connection, reason: &str) {
    let closing = connection.close(200, reason.into());
    if tokio::time::timeout(Duration::from_secs(2), closing)
        .await
        .is_err()
    {
        tracing::warn!(
            reason,
            "the broker did not confirm the connection close within 2 s"
        );
    }
}

/// The URL with any password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_added_once() {
        let mut s = BrokerSettings {
            url: "amqp://guest:guest@localhost:5672/%2f".into(),
            heartbeat: Duration::from_secs(5),
            connection_name: "t".into(),
        };
        assert_eq!(
            s.effective_url(),
            "amqp://guest:guest@localhost:5672/%2f?heartbeat=5"
        );
        s.url = "amqp://h/%2f?heartbeat=9".into();
        assert_eq!(s.effective_url(), "amqp://h/%2f?heartbeat=9");
        s.url = "amqp://h/%2f?frame_max=8192".into();
        assert_eq!(s.effective_url(), "amqp://h/%2f?frame_max=8192&heartbeat=5");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact("amqp://h:5672/%2f"), "amqp://h:5672/%2f");
    }
}
