//! The SMTP sender: a pool of reused connections, each with `TCP_NODELAY`.
//!
//! Why not lettre's own pooled transport: lettre 0.11 writes the body and the final `.` in two
//! writes without `TCP_NODELAY`, so Nagle's algorithm and delayed ACKs stall every message about
//! 40 ms (about 23 messages/s per connection). Connections built here on a `TcpStream` with
//! `set_nodelay(true)` send thousands per second (docs/benchmarks.md).
//!
//! Security, per connection (each is set up once, then reused for many messages):
//! * `smtps://` — implicit TLS: the TLS handshake comes first (tokio-rustls over our own
//!   `TcpStream`), then the greeting and EHLO;
//! * `smtp://` — greeting and EHLO in clear, then STARTTLS per [`StartTls`] (lettre's upgrade of
//!   the same stream) and EHLO again;
//! * then AUTH (PLAIN or LOGIN, whichever the server offers) when a user is configured — only
//!   over TLS unless cleartext AUTH is allowed.
//!
//! Certificates are always verified (no "accept invalid certificates" switch): the trusted roots
//! are Mozilla's (webpki-roots, built in) plus the PEM bundle of `MAILTRAIL_SMTP_TLS_CA_FILE`, and
//! the name checked is the host of the URL (a DNS name or an IP address).

use lettre::Address as LettreAddress;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use secrecy::{ExposeSecret as _, SecretString};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// The AUTH mechanisms we use, in order of preference (the first the server offers is used).
const MECHANISMS: &[Mechanism] = &[Mechanism::Plain, Mechanism::Login];

/// How STARTTLS is used on `smtp://` connections (`MAILTRAIL_SMTP_STARTTLS`; `smtps://` is TLS
/// from the first byte and ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StartTls {
    /// Upgrade when the server offers STARTTLS (the certificate is still verified: a failed
    /// handshake never falls back to clear); send in clear when it does not.
    #[default]
    Opportunistic,
    /// Never send in clear: a server that does not offer STARTTLS counts as down.
    Required,
    /// Never upgrade (a relay on a trusted network).
    Off,
}

/// Everything the SMTP sender is configured with (the `MAILTRAIL_SMTP_*` settings).
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// `smtp://host[:port]` (port 25) or `smtps://host[:port]` (implicit TLS, port 465).
    pub url: String,
    /// The name we give ourselves in EHLO.
    pub hello_name: String,
    /// Most connections open to the server at once.
    pub max_connections: usize,
    /// Deadline of one send, connection set-up included.
    pub timeout: Duration,
    pub starttls: StartTls,
    /// AUTH user; AUTH is used when it is set (with `password`).
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// Allow AUTH on a connection that is not encrypted.
    pub allow_cleartext_auth: bool,
    /// A PEM bundle of CA certificates trusted besides the built-in roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl SmtpSettings {
    /// The defaults: opportunistic STARTTLS, no AUTH, the built-in roots.
    pub fn new(
        url: &str,
        hello_name: &str,
        max_connections: usize,
        timeout: Duration,
    ) -> SmtpSettings {
        SmtpSettings {
            url: url.to_owned(),
            hello_name: hello_name.to_owned(),
            max_connections,
            timeout,
            starttls: StartTls::default(),
            username: None,
            password: None,
            allow_cleartext_auth: false,
            tls_ca_file: None,
        }
    }

    /// The dispatcher's SMTP settings.
    pub fn from_config(config: &crate::DispatcherConfig) -> SmtpSettings {
        SmtpSettings {
            url: config.smtp_url.clone(),
            hello_name: config.smtp_hello_name.clone(),
            max_connections: config.smtp_connections,
            timeout: config.smtp_timeout(),
            starttls: config.smtp_starttls,
            username: config.smtp_username.clone(),
            password: config.smtp_password.clone(),
            allow_cleartext_auth: config.smtp_allow_cleartext_auth,
            tls_ca_file: config.smtp_tls_ca_file.clone(),
        }
    }
}

/// `MAILTRAIL_SMTP_PASSWORD` as a secret from the start (its `Debug` shows no value).
pub fn parse_password(text: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(text))
}

/// `MAILTRAIL_SMTP_URL`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    /// `smtps://`: TLS from the first byte.
    pub implicit_tls: bool,
    /// The host, without brackets for an IPv6 address: what is resolved and what the server's
    /// certificate must name.
    pub host: String,
    pub port: u16,
}

impl SmtpUrl {
    /// `host:port` for resolution (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses `smtp://host[:port][/]` (port 25) or `smtps://host[:port][/]` (port 465); IPv6 hosts
/// in brackets. Credentials belong in `MAILTRAIL_SMTP_USERNAME`/`_PASSWORD`, not in the URL.
pub fn parse_url(url: &str) -> Result<SmtpUrl, String> {
    let bad =
        || format!("MAILTRAIL_SMTP_URL {url:?} is not smtp://host[:port] or smtps://host[:port]");
    let (scheme, rest) = url.trim().split_once("://").ok_or_else(bad)?;
    let (implicit_tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "smtp" => (false, 25),
        "smtps" => (true, 465),
        _ => return Err(bad()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "MAILTRAIL_SMTP_URL must not carry credentials: set MAILTRAIL_SMTP_USERNAME and \
             MAILTRAIL_SMTP_PASSWORD instead (URL {scheme}://…@{})",
            authority.rsplit('@').next().unwrap_or_default()
        ));
    }
    if !rest[authority.len()..].trim_start_matches('/').is_empty() {
        return Err(bad());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(bad)?;
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None => default_port,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{}: bad port {port:?}", bad()))?,
    };
    Ok(SmtpUrl {
        implicit_tls,
        host: host.to_owned(),
        port,
    })
}

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
    security: Security,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
    /// One permit per connection, idle or busy: bounds the connections to the server.
    permits: Semaphore,
}

/// How each new connection is secured.
struct Security {
    /// `smtps://`: the handshake before the greeting.
    implicit: Option<ImplicitTls>,
    starttls: StartTls,
    /// The parameters of lettre's STARTTLS upgrade (same trust as `implicit`).
    starttls_parameters: Option<TlsParameters>,
    /// The name the certificate must carry, for messages.
    tls_name: String,
    credentials: Option<(String, SecretString)>,
    allow_cleartext_auth: bool,
}

struct ImplicitTls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl SmtpSender {
    /// `url` is `smtp://host:port` (port default 25) or `smtps://host:port` (465); the other
    /// settings take their defaults (opportunistic STARTTLS, no AUTH).
    pub async fn new(
        url: &str,
        hello_name: &str,
        max_connections: usize,
        timeout: Duration,
    ) -> anyhow::Result<SmtpSender> {
        Self::with_settings(SmtpSettings::new(url, hello_name, max_connections, timeout)).await
    }

    /// A sender with every setting; refuses settings that cannot work or would leak the password
    /// (a user without a password, AUTH that could only go in clear, an unreadable CA file).
    pub async fn with_settings(settings: SmtpSettings) -> anyhow::Result<SmtpSender> {
        let url = parse_url(&settings.url).map_err(anyhow::Error::msg)?;
        let credentials = match (
            settings.username.as_deref().filter(|u| !u.is_empty()),
            settings.password.filter(|p| !p.expose_secret().is_empty()),
        ) {
            (Some(user), Some(password)) => Some((user.to_owned(), password)),
            (None, None) => None,
            (Some(_), None) => {
                anyhow::bail!("MAILTRAIL_SMTP_USERNAME is set but MAILTRAIL_SMTP_PASSWORD is not")
            }
            (None, Some(_)) => {
                anyhow::bail!("MAILTRAIL_SMTP_PASSWORD is set but MAILTRAIL_SMTP_USERNAME is not")
            }
        };
        if credentials.is_some()
            && !url.implicit_tls
            && settings.starttls == StartTls::Off
            && !settings.allow_cleartext_auth
        {
            anyhow::bail!(
                "MAILTRAIL_SMTP_STARTTLS=off with MAILTRAIL_SMTP_USERNAME set would send the SMTP \
                 password in clear: use STARTTLS (opportunistic or required), an smtps:// URL, or \
                 set MAILTRAIL_SMTP_ALLOW_CLEARTEXT_AUTH=true for a relay on a trusted network"
            );
        }
        let extra_roots = match &settings.tls_ca_file {
            Some(path) => read_ca_file(path)?,
            None => Vec::new(),
        };
        let name = ServerName::try_from(url.host.clone()).map_err(|_| {
            anyhow::anyhow!(
                "the SMTP host {:?} is neither a DNS name nor an IP address",
                url.host
            )
        })?;
        let implicit = if url.implicit_tls {
            Some(ImplicitTls {
                connector: TlsConnector::from(client_config(&extra_roots)?),
                name,
            })
        } else {
            None
        };
        let starttls_parameters = if !url.implicit_tls && settings.starttls != StartTls::Off {
            let mut builder = TlsParameters::builder(url.host.clone())
                .certificate_store(CertificateStore::WebpkiRoots);
            for root in &extra_roots {
                builder = builder.add_root_certificate(
                    Certificate::from_der(root.to_vec())
                        .map_err(|e| anyhow::anyhow!("MAILTRAIL_SMTP_TLS_CA_FILE: {e}"))?,
                );
            }
            Some(
                builder
                    .build_rustls()
                    .map_err(|e| anyhow::anyhow!("cannot set up TLS for SMTP: {e}"))?,
            )
        } else {
            None
        };
        let authority = url.authority();
        let server = tokio::net::lookup_host(&authority)
            .await
            .map_err(|e| anyhow::anyhow!("cannot resolve the SMTP server {authority:?}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("the SMTP server {authority:?} has no address"))?;
        tracing::info!(
            %server,
            tls = if url.implicit_tls {
                "implicit"
            } else {
                match settings.starttls {
                    StartTls::Opportunistic => "starttls-opportunistic",
                    StartTls::Required => "starttls-required",
                    StartTls::Off => "off",
                }
            },
            auth = credentials.as_ref().map(|(user, _)| user.as_str()),
            extra_roots = extra_roots.len(),
            "SMTP sender ready"
        );
        Ok(SmtpSender {
            server,
            hello: ClientId::Domain(settings.hello_name),
            timeout: settings.timeout,
            security: Security {
                implicit,
                starttls: settings.starttls,
                starttls_parameters,
                tls_name: url.host,
                credentials,
                allow_cleartext_auth: settings.allow_cleartext_auth,
            },
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(settings.max_connections.max(1)),
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

    /// A new connection, ready for MAIL FROM: TCP (with `TCP_NODELAY`), implicit TLS or
    /// STARTTLS, EHLO, AUTH.
    async fn connect(&self) -> Result<AsyncSmtpConnection, Attempt> {
        let stream = TcpStream::connect(self.server)
            .await
            .map_err(|e| Attempt::Transport(format!("cannot connect to {}: {e}", self.server)))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Attempt::Transport(format!("cannot set TCP_NODELAY: {e}")))?;
        let security = &self.security;
        let mut connection = match &security.implicit {
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.name.clone(), stream)
                    .await
                    .map_err(|e| self.handshake_failure(&e))?;
                AsyncSmtpConnection::connect_with_transport(Box::new(TlsTcp(stream)), &self.hello)
                    .await
            }
            None => {
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello).await
            }
        }
        .map_err(|e| classify(&e, Phase::Connection))?;
        let mut encrypted = security.implicit.is_some();
        if let Some(parameters) = &security.starttls_parameters {
            if connection.can_starttls() {
                connection
                    .starttls(parameters.clone(), &self.hello)
                    .await
                    .map_err(|e| self.handshake_failure(&e))?;
                encrypted = true;
            } else if security.starttls == StartTls::Required {
                return Err(Attempt::Reply(SendError::ProviderDown(format!(
                    "the SMTP server {} does not offer STARTTLS and MAILTRAIL_SMTP_STARTTLS is \
                     required: not sending in clear",
                    self.server
                ))));
            }
        }
        if let Some((user, password)) = &security.credentials {
            if !encrypted && !security.allow_cleartext_auth {
                return Err(Attempt::Reply(SendError::ProviderDown(format!(
                    "the connection to the SMTP server {} is not encrypted (it offers no \
                     STARTTLS): not sending the SMTP password in clear (use smtps://, or \
                     MAILTRAIL_SMTP_ALLOW_CLEARTEXT_AUTH=true for a trusted network)",
                    self.server
                ))));
            }
            if connection
                .server_info()
                .get_auth_mechanism(MECHANISMS)
                .is_none()
            {
                return Err(Attempt::Reply(SendError::ProviderDown(format!(
                    "the SMTP server {} offers neither AUTH PLAIN nor AUTH LOGIN, and \
                     MAILTRAIL_SMTP_USERNAME is set",
                    self.server
                ))));
            }
            let credentials = Credentials::new(user.clone(), password.expose_secret().to_owned());
            connection
                .auth(MECHANISMS, &credentials)
                .await
                .map_err(|e| classify(&e, Phase::Connection))?;
        }
        Ok(connection)
    }

    /// A failed TLS handshake (or STARTTLS step): the certificate or the server's TLS is at
    /// fault — our configuration or theirs — so ProviderDown; a connection that merely broke
    /// during it is a transport failure, and a refused STARTTLS command is classified like any
    /// reply.
    fn handshake_failure(&self, error: &(dyn std::error::Error + 'static)) -> Attempt {
        if let Some(tls) = tls_error(error) {
            return Attempt::Reply(SendError::ProviderDown(format!(
                "TLS handshake with the SMTP server {} ({}) failed: {tls} (check the server's \
                 certificate, the host name in MAILTRAIL_SMTP_URL and MAILTRAIL_SMTP_TLS_CA_FILE)",
                self.server, self.security.tls_name
            )));
        }
        match error.downcast_ref::<lettre::transport::smtp::Error>() {
            Some(error) => classify(error, Phase::Connection),
            None => Attempt::Transport(format!(
                "TLS handshake with the SMTP server {}: {error}",
                self.server
            )),
        }
    }
}

/// The rustls error somewhere in `error`'s chain (directly, or inside an `io::Error`), if any.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = error.source();
    }
    None
}

/// The CA certificates of a PEM bundle.
fn read_ca_file(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read MAILTRAIL_SMTP_TLS_CA_FILE {}: {e}",
            path.display()
        )
    })?;
    let roots = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "MAILTRAIL_SMTP_TLS_CA_FILE {} is not PEM: {e}",
                path.display()
            )
        })?;
    if roots.is_empty() {
        anyhow::bail!(
            "MAILTRAIL_SMTP_TLS_CA_FILE {} holds no certificate",
            path.display()
        );
    }
    Ok(roots)
}

/// The TLS client configuration of implicit TLS: Mozilla's roots plus `extra_roots`, ring.
fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for root in extra_roots {
        roots
            .add(root.clone())
            .map_err(|e| anyhow::anyhow!("MAILTRAIL_SMTP_TLS_CA_FILE: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| anyhow::anyhow!("cannot set up TLS for SMTP: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS stream over our `TcpStream`, as lettre takes one (implicit TLS).
struct TlsTcp(tokio_rustls::client::TlsStream<TcpStream>);

impl std::fmt::Debug for TlsTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTcp").finish_non_exhaustive()
    }
}

impl AsyncRead for TlsTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsTcp {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
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

/// The SMTP failure table (README, "Failure table"):
///
/// | what happened                                          | when              | outcome      |
/// |--------------------------------------------------------|-------------------|--------------|
/// | 4xx reply with enhanced code 4.1.x, 4.2.x or 4.7.x (address, mailbox, policy/greylisting) | transaction | Deferred (retried; the breaker sees a working server) |
/// | any other 4xx reply (421, 4.3.x, 4.4.x, no enhanced code) | any step         | Transient    |
/// | 5xx reply to the greeting, EHLO, STARTTLS or AUTH      | connection set-up | ProviderDown |
/// | 530 / 534 / 535 (AUTH required, too weak, invalid)     | any step          | ProviderDown |
/// | 5xx reply to MAIL, RCPT or DATA                        | transaction       | Rejected (bounced when the mailbox does not exist) |
/// | refused by lettre (e.g. UTF-8 address, no SMTPUTF8)    | transaction       | Rejected     |
/// | refused by lettre                                      | connection set-up | ProviderDown |
/// | connection refused, reset or closed; timeout           | any step          | Transient (a reused connection is retried once, fresh) |
///
/// Decided in `SmtpSender::connect`, before any reply is classified here, also ProviderDown
/// (our configuration or the server's, never the message's: the job waits, spending no
/// attempt, and flows once it is fixed): a failed TLS handshake (certificate untrusted, expired
/// or for another name, no common protocol), `MAILTRAIL_SMTP_STARTTLS=required` with a server
/// that offers no STARTTLS, AUTH that would go in clear, and a server offering neither AUTH PLAIN
/// nor LOGIN.
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
    } else if error.is_transient() && phase == Phase::Transaction && defers_one_message(&text) {
        // The server works and defers this message (greylisting, a busy or full mailbox).
        Attempt::Reply(SendError::Deferred(text))
    } else if error.is_transient() {
        Attempt::Reply(SendError::Transient(text))
    } else if error.is_client() && phase == Phase::Connection {
        // Setting up the connection is not about one message: e.g. no usable AUTH mechanism.
        Attempt::Reply(SendError::ProviderDown(text))
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
/// Whether a 4xx reply defers this one message while the server works: its enhanced status
/// code (RFC 3463) is about the address (4.1.x), the mailbox (4.2.x) or policy, greylisting
/// included (4.7.x). Anything else — 4.3.x mail system, 4.4.x network, no enhanced code, 421 —
/// may be the whole server failing, so it counts toward the circuit breaker.
fn defers_one_message(text: &str) -> bool {
    text.split(|c: char| c.is_whitespace() || c == ':' || c == ',' || c == '(' || c == ')')
        .find_map(|word| {
            let mut parts = word.split('.');
            let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
            let numeric =
                |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
            (class == "4" && numeric(subject) && numeric(detail) && parts.next().is_none())
                .then_some(subject.to_owned())
        })
        .is_some_and(|subject| matches!(subject.as_str(), "1" | "2" | "7"))
}

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
    fn only_address_mailbox_and_policy_deferrals_defer_one_message() {
        for text in [
            "transient error (450): 4.2.1 Mailbox busy, try again later",
            "transient error (451): 4.7.1 Greylisted, try again later",
            "transient error (452): 4.2.2 Mailbox full",
            "transient error (450): 4.1.8 Sender address rejected: domain not found",
        ] {
            assert!(defers_one_message(text), "{text}");
        }
        for text in [
            "transient error (451): 4.3.0 Error: local error in processing",
            "transient error (421): 4.4.2 Connection timed out",
            "transient error (451): try again later",
            "transient error (452): 4.3.1 Insufficient system storage",
            "transient error (451): 5.7.1 odd",
        ] {
            assert!(!defers_one_message(text), "{text}");
        }
    }

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
    fn urls_give_the_scheme_host_and_default_ports() {
        let url = |text: &str| parse_url(text).expect(text);
        assert_eq!(
            url("smtp://mail.example.com"),
            SmtpUrl {
                implicit_tls: false,
                host: "mail.example.com".into(),
                port: 25
            }
        );
        assert_eq!(
            url("smtps://mail.example.com"),
            SmtpUrl {
                implicit_tls: true,
                host: "mail.example.com".into(),
                port: 465
            }
        );
        assert_eq!(url("smtp://127.0.0.1:2525/").port, 2525);
        assert_eq!(url("SMTPS://relay:587").port, 587);
        let v6 = url("smtps://[::1]:4650");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 4650));
        assert_eq!(v6.authority(), "[::1]:4650");
        assert_eq!(url("smtp://[2001:db8::1]").port, 25);
        assert_eq!(
            url("smtp://relay.example.com:25").authority(),
            "relay.example.com:25"
        );
        for bad in [
            "relay.example.com:25",
            "http://relay",
            "smtp://",
            "smtp://:25",
            "smtp://relay:0",
            "smtp://relay:port",
            "smtp://relay:70000",
            "smtp://relay/path",
            "smtp://[::1",
            "smtp://::1",
            "smtp://[relay]:25",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} should be refused");
        }
        let with_password = parse_url("smtp://ann:s3cret@relay").expect_err("credentials");
        assert!(
            with_password.contains("MAILTRAIL_SMTP_USERNAME"),
            "{with_password}"
        );
        assert!(!with_password.contains("s3cret"), "{with_password}");
    }

    #[test]
    fn rustls_errors_are_found_in_the_chain() {
        let handshake = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(
            tls_error(&handshake),
            Some(rustls::Error::InvalidCertificate(_))
        ));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(tls_error(&reset).is_none());
    }

    #[test]
    fn settings_come_from_flags_with_safe_defaults() {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: crate::DispatcherConfig,
        }
        let parse = |args: &[&str]| {
            <Wrapper as clap::Parser>::try_parse_from(
                std::iter::once("dispatcher").chain(args.iter().copied()),
            )
            .map(|wrapper| wrapper.config)
        };
        let defaults = SmtpSettings::from_config(&parse(&[]).expect("the defaults"));
        assert_eq!(defaults.starttls, StartTls::Opportunistic);
        assert!(defaults.username.is_none() && defaults.password.is_none());
        assert!(!defaults.allow_cleartext_auth);
        assert!(defaults.tls_ca_file.is_none());
        let config = parse(&[
            "--smtp-url",
            "smtps://relay.example.com",
            "--smtp-starttls",
            "required",
            "--smtp-username",
            "ann",
            "--smtp-password",
            "s3cret",
            "--smtp-allow-cleartext-auth",
            "true",
            "--smtp-tls-ca-file",
            "/etc/mailtrail/relay-ca.pem",
        ])
        .expect("every SMTP setting");
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "the password is redacted"
        );
        let settings = SmtpSettings::from_config(&config);
        assert!(
            !format!("{settings:?}").contains("s3cret"),
            "the password is redacted"
        );
        assert_eq!(settings.url, "smtps://relay.example.com");
        assert_eq!(settings.starttls, StartTls::Required);
        assert_eq!(settings.username.as_deref(), Some("ann"));
        assert_eq!(
            settings.password.as_ref().map(|p| p.expose_secret()),
            Some("s3cret")
        );
        assert!(settings.allow_cleartext_auth);
        assert_eq!(
            settings.tls_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/mailtrail/relay-ca.pem"))
        );
        assert_eq!(
            parse(&["--smtp-starttls", "off"])
                .expect("off")
                .smtp_starttls,
            StartTls::Off
        );
        assert!(parse(&["--smtp-starttls", "maybe"]).is_err());
        assert!(parse(&["--smtp-allow-cleartext-auth", "perhaps"]).is_err());
    }

    fn settings(url: &str) -> SmtpSettings {
        SmtpSettings::new(url, "localhost", 1, Duration::from_secs(1))
    }

    #[tokio::test]
    async fn settings_that_would_leak_or_cannot_work_are_refused() {
        let error = |settings: SmtpSettings| async move {
            match SmtpSender::with_settings(settings).await {
                Ok(_) => panic!("accepted"),
                Err(error) => error.to_string(),
            }
        };
        let mut no_password = settings("smtp://127.0.0.1:2525");
        no_password.username = Some("ann".into());
        assert!(
            error(no_password)
                .await
                .contains("MAILTRAIL_SMTP_PASSWORD is not")
        );
        let mut cleartext = settings("smtp://127.0.0.1:2525");
        cleartext.starttls = StartTls::Off;
        cleartext.username = Some("ann".into());
        cleartext.password = Some("s3cret".into());
        let message = error(cleartext.clone()).await;
        assert!(message.contains("in clear"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
        cleartext.allow_cleartext_auth = true;
        assert!(SmtpSender::with_settings(cleartext).await.is_ok());
        let mut implicit = settings("smtps://127.0.0.1:4650");
        implicit.starttls = StartTls::Off;
        implicit.username = Some("ann".into());
        implicit.password = Some("s3cret".into());
        assert!(SmtpSender::with_settings(implicit).await.is_ok());
        let mut missing_ca = settings("smtp://127.0.0.1:2525");
        missing_ca.tls_ca_file = Some("/nonexistent/ca.pem".into());
        assert!(
            error(missing_ca)
                .await
                .contains("MAILTRAIL_SMTP_TLS_CA_FILE")
        );
        let not_pem =
            std::env::temp_dir().join(format!("mailtrail-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "not a certificate").expect("write");
        let mut empty_ca = settings("smtp://127.0.0.1:2525");
        empty_ca.tls_ca_file = Some(not_pem.clone());
        assert!(error(empty_ca).await.contains("no certificate"));
        let _ = std::fs::remove_file(not_pem);
        assert!(
            error(settings("smtp://ann:pw@127.0.0.1"))
                .await
                .contains("credentials")
        );
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
