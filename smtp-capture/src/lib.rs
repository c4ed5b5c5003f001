//! `mailtrail-smtp-capture`: a fast, real SMTP server that keeps what it receives.
//!
//! It is what tests, benchmarks and the quick start send mail to instead of a real provider:
//! tests start one in-process with [`SmtpCapture::start`], point the dispatcher at
//! [`SmtpCapture::url`] and then look at [`SmtpCapture::messages`] (or wait for them with
//! [`SmtpCapture::wait_for_count`]); they can make it fail on purpose with [`Mode`] (every
//! connection) or per recipient: [`SmtpCapture::reject_recipient`] (550 5.1.1),
//! [`SmtpCapture::defer_recipient`] (450 4.2.1) and [`SmtpCapture::answer_recipient`] (any 4xx or
//! 5xx reply, to RCPT TO or to the end of the message's data). The `smtp-capture` binary runs the same server on its own
//! and logs one line per accepted message.
//!
//! It speaks SMTP/ESMTP: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, with PIPELINING,
//! 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES and SIZE. Off by default, for tests of clients' security
//! settings: STARTTLS ([`SmtpCapture::enable_starttls`]), implicit TLS from the first byte
//! ([`SmtpCapture::start_tls`], `smtps://`) and AUTH PLAIN/LOGIN with one required account
//! ([`SmtpCapture::require_auth`]); each [`ReceivedMessage`] tells whether it came over TLS and
//! under which login. Each connection is one tokio task; messages are kept in memory (or only
//! counted, see [`SmtpCapture::set_keep_messages`]). Dropping the [`SmtpCapture`] stops the server
//! and closes its connections.

mod message;
mod session;
mod tls;

pub use message::ReceivedMessage;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls::ServerConfig;

/// The largest message the server accepts (advertised as `SIZE`).
pub const MAX_MESSAGE_SIZE: usize = 52_428_800;

/// How the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Accept everything (default).
    Accept,
    /// Answer `451 4.3.0 <text>` to MAIL FROM (so every transaction fails transiently).
    TransientFailure,
    /// Close every new connection right after accepting it (no greeting) and close existing
    /// connections at their next command.
    DropConnections,
    /// Greet new connections with `554 5.7.1` (a connection-level policy block: the server
    /// refuses this client, not one message) and close them.
    RefuseService,
}

impl Mode {
    fn to_u8(&self) -> u8 {
        match self {
            Mode::Accept => 0,
            Mode::TransientFailure => 1,
            Mode::DropConnections => 2,
            Mode::RefuseService => 3,
        }
    }

    fn from_u8(value: u8) -> Mode {
        match value {
            1 => Mode::TransientFailure,
            2 => Mode::DropConnections,
            3 => Mode::RefuseService,
            _ => Mode::Accept,
        }
    }
}

/// When a recipient's own answer ([`SmtpCapture::answer_recipient`]) is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// As the reply to that recipient's `RCPT TO`; the transaction goes on without it.
    Rcpt,
    /// As the reply to the final "." of a message with that recipient among its accepted ones:
    /// the whole message is refused (not kept, not counted), as a content or policy filter does.
    Data,
}

/// What the server answers for one recipient instead of accepting it.
#[derive(Debug, Clone)]
pub(crate) enum RecipientAnswer {
    /// `550 5.1.1 <addr>: no such user` to RCPT TO.
    NoSuchUser,
    /// `450 4.2.1 <addr>: mailbox busy, try again later` to RCPT TO.
    Busy,
    /// This reply line (CRLF included) at this stage.
    Custom { stage: Stage, reply: String },
}

type MessageHook = Arc<dyn Fn(&ReceivedMessage) + Send + Sync>;

/// What the server and its connections share.
pub(crate) struct State {
    messages: Mutex<Vec<ReceivedMessage>>,
    count: AtomicUsize,
    arrived: Notify,
    mode: AtomicU8,
    keep_messages: AtomicBool,
    /// Per recipient (lower-cased): what it gets instead of `250`.
    recipients: RwLock<HashMap<String, RecipientAnswer>>,
    connections: AtomicUsize,
    hook: RwLock<Option<MessageHook>>,
    /// Set while [`State::credentials`] holds the one account AUTH accepts (checked first, so
    /// the default plain server takes no lock for it).
    auth_required: AtomicBool,
    credentials: RwLock<Option<Credentials>>,
    /// Set while [`State::starttls`] holds the certificate STARTTLS upgrades with.
    starttls_enabled: AtomicBool,
    starttls: RwLock<Option<Arc<ServerConfig>>>,
    /// Every connection starts with a TLS handshake (`smtps://`).
    implicit_tls: Option<Arc<ServerConfig>>,
    tls_handshakes: AtomicUsize,
    auth_successes: AtomicUsize,
    auth_failures: AtomicUsize,
}

/// The one account AUTH accepts.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl State {
    pub(crate) fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    /// What `address` (compared case-insensitively) gets instead of being accepted, if anything.
    pub(crate) fn recipient_answer(&self, address: &str) -> Option<RecipientAnswer> {
        let recipients = self.recipients.read().expect("recipient lock poisoned");
        if recipients.is_empty() {
            return None;
        }
        recipients.get(&address.to_lowercase()).cloned()
    }

    /// The reply to the end of data of a message to `rcpt_to`, when one of them is refused at
    /// that stage.
    pub(crate) fn data_refusal(&self, rcpt_to: &[String]) -> Option<String> {
        rcpt_to
            .iter()
            .find_map(|address| match self.recipient_answer(address) {
                Some(RecipientAnswer::Custom {
                    stage: Stage::Data,
                    reply,
                }) => Some(reply),
                _ => None,
            })
    }

    fn set_recipient_answer(&self, address: &str, answer: Option<RecipientAnswer>) {
        let mut recipients = self.recipients.write().expect("recipient lock poisoned");
        let address = address.to_lowercase();
        match answer {
            Some(answer) => recipients.insert(address, answer),
            None => recipients.remove(&address),
        };
    }

    /// The account AUTH accepts, when AUTH is required.
    pub(crate) fn credentials(&self) -> Option<Credentials> {
        if !self.auth_required.load(Ordering::Relaxed) {
            return None;
        }
        self.credentials
            .read()
            .expect("credentials lock poisoned")
            .clone()
    }

    /// Whether MAIL FROM needs a successful AUTH first.
    pub(crate) fn auth_required(&self) -> bool {
        self.auth_required.load(Ordering::Relaxed)
    }

    /// The certificate STARTTLS upgrades with, when STARTTLS is offered.
    pub(crate) fn starttls(&self) -> Option<Arc<ServerConfig>> {
        if !self.starttls_enabled.load(Ordering::Relaxed) {
            return None;
        }
        self.starttls
            .read()
            .expect("starttls lock poisoned")
            .clone()
    }

    /// Whether EHLO must be built (STARTTLS or AUTH to advertise) rather than the fixed reply.
    pub(crate) fn extended(&self) -> bool {
        self.auth_required.load(Ordering::Relaxed) || self.starttls_enabled.load(Ordering::Relaxed)
    }

    pub(crate) fn implicit_tls(&self) -> Option<Arc<ServerConfig>> {
        self.implicit_tls.clone()
    }

    pub(crate) fn count_tls_handshake(&self) {
        self.tls_handshakes.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn count_auth(&self, success: bool) {
        if success {
            self.auth_successes.fetch_add(1, Ordering::SeqCst);
        } else {
            self.auth_failures.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Whether a finished message must be built at all (kept, or handed to a hook).
    pub(crate) fn wants_data(&self) -> bool {
        self.keep_messages.load(Ordering::Relaxed)
            || self.hook.read().expect("hook lock poisoned").is_some()
    }

    /// Records an accepted message; called before its 250 reply is sent.
    pub(crate) fn record(&self, message: Option<ReceivedMessage>) {
        if let Some(message) = message {
            let hook = self.hook.read().expect("hook lock poisoned").clone();
            if let Some(hook) = hook {
                hook(&message);
            }
            if self.keep_messages.load(Ordering::Relaxed) {
                let mut messages = self.messages.lock().expect("message lock poisoned");
                messages.push(message);
                // Counted under the lock, so `message_count` never runs ahead of `messages`.
                self.count.fetch_add(1, Ordering::SeqCst);
            } else {
                self.count.fetch_add(1, Ordering::SeqCst);
            }
        } else {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
        self.arrived.notify_waiters();
    }
}

/// A running SMTP server that keeps what it receives. Dropping it stops the server and closes
/// its connections.
pub struct SmtpCapture {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl SmtpCapture {
    /// Listens on 127.0.0.1 with an ephemeral port.
    pub async fn start() -> anyhow::Result<SmtpCapture> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Listens on the given address.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<SmtpCapture> {
        Self::listen(addr, None).await
    }

    /// Listens on 127.0.0.1 with an ephemeral port for implicit TLS (`smtps://`, as on port 465):
    /// every connection starts with a TLS handshake presenting `cert_pem` (the chain, leaf
    /// first) and `key_pem` (PKCS#8, PKCS#1 or SEC1), then the SMTP greeting.
    pub async fn start_tls(
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> anyhow::Result<SmtpCapture> {
        Self::start_tls_on(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            cert_pem,
            key_pem,
        )
        .await
    }

    /// [`SmtpCapture::start_tls`] on the given address.
    pub async fn start_tls_on(
        addr: SocketAddr,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> anyhow::Result<SmtpCapture> {
        let config = tls::server_config(cert_pem.as_ref(), key_pem.as_ref())?;
        Self::listen(addr, Some(config)).await
    }

    async fn listen(
        addr: SocketAddr,
        implicit_tls: Option<Arc<ServerConfig>>,
    ) -> anyhow::Result<SmtpCapture> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for SMTP on {addr}"))?;
        let addr = listener
            .local_addr()
            .context("cannot read the SMTP listener's address")?;
        let state = Arc::new(State {
            messages: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            arrived: Notify::new(),
            mode: AtomicU8::new(Mode::Accept.to_u8()),
            keep_messages: AtomicBool::new(true),
            recipients: RwLock::new(HashMap::new()),
            connections: AtomicUsize::new(0),
            hook: RwLock::new(None),
            auth_required: AtomicBool::new(false),
            credentials: RwLock::new(None),
            starttls_enabled: AtomicBool::new(false),
            starttls: RwLock::new(None),
            implicit_tls,
            tls_handshakes: AtomicUsize::new(0),
            auth_successes: AtomicUsize::new(0),
            auth_failures: AtomicUsize::new(0),
        });
        let server = tokio::spawn(serve(listener, state.clone()));
        Ok(SmtpCapture {
            addr,
            state,
            server,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `smtp://127.0.0.1:<port>` (the address clients should use; a wildcard listen address is
    /// given as the loopback address of its family); `smtps://…` for an implicit-TLS server.
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let scheme = if self.state.implicit_tls.is_some() {
            "smtps"
        } else {
            "smtp"
        };
        format!("{scheme}://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Every message accepted so far (after the final "." got 250), in arrival order. Empty
    /// while [`SmtpCapture::set_keep_messages`] is off.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.state
            .messages
            .lock()
            .expect("message lock poisoned")
            .clone()
    }

    /// How many messages were accepted so far (counted even when they are not kept).
    pub fn message_count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// How the server answers from now on (applies to new commands on existing connections too).
    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.store(mode.to_u8(), Ordering::SeqCst);
    }

    /// `address` (compared case-insensitively) gets `550 5.1.1 <addr>: no such user` at RCPT
    /// TO, until [`SmtpCapture::accept_recipient`]. Each recipient has one answer: the last set.
    pub fn reject_recipient(&self, address: &str) {
        self.state
            .set_recipient_answer(address, Some(RecipientAnswer::NoSuchUser));
    }

    /// `address` (compared case-insensitively) gets `450 4.2.1 <addr>: mailbox busy, try again
    /// later` at RCPT TO, until [`SmtpCapture::accept_recipient`].
    pub fn defer_recipient(&self, address: &str) {
        self.state
            .set_recipient_answer(address, Some(RecipientAnswer::Busy));
    }

    /// `address` (compared case-insensitively) gets `reply` — a one-line 4xx or 5xx reply such
    /// as `554 5.7.1 Message refused by policy` or `451 4.7.1 Greylisted` — at `stage`, until
    /// [`SmtpCapture::accept_recipient`].
    ///
    /// # Panics
    ///
    /// When `reply` is not a 4xx or 5xx code, a space and a text on one line (a test's mistake).
    pub fn answer_recipient(&self, address: &str, stage: Stage, reply: &str) {
        let bytes = reply.as_bytes();
        let well_formed = bytes.len() > 4
            && matches!(bytes[0], b'4' | b'5')
            && bytes[1..3].iter().all(u8::is_ascii_digit)
            && bytes[3] == b' '
            && !reply.contains(['\r', '\n']);
        assert!(
            well_formed,
            "answer_recipient: {reply:?} is not a one-line 4xx/5xx reply like \"554 5.7.1 refused\""
        );
        self.state.set_recipient_answer(
            address,
            Some(RecipientAnswer::Custom {
                stage,
                reply: format!("{reply}\r\n"),
            }),
        );
    }

    /// Undoes [`SmtpCapture::reject_recipient`], [`SmtpCapture::defer_recipient`] and
    /// [`SmtpCapture::answer_recipient`]: `address` is accepted again.
    pub fn accept_recipient(&self, address: &str) {
        self.state.set_recipient_answer(address, None);
    }

    /// Number of connections accepted so far (for tests that check pooling / reconnects).
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Whether accepted messages are kept for [`SmtpCapture::messages`] (default `true`). When
    /// off they are only counted, for benchmarks of millions of messages.
    pub fn set_keep_messages(&self, keep: bool) {
        self.state.keep_messages.store(keep, Ordering::SeqCst);
    }

    /// Requires AUTH (PLAIN or LOGIN, both advertised in EHLO, with or without TLS) as `user`
    /// with `password` before MAIL FROM: success gets `235 2.7.0`, anything else `535 5.7.8
    /// Authentication credentials invalid`, and MAIL FROM without it `530 5.7.0 Authentication
    /// required`. Calling it again replaces the account (for connections authenticating from then
    /// on).
    pub fn require_auth(&self, user: &str, password: &str) {
        *self
            .state
            .credentials
            .write()
            .expect("credentials lock poisoned") = Some(Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        });
        self.state.auth_required.store(true, Ordering::SeqCst);
    }

    /// Stops requiring (and advertising) AUTH.
    pub fn disable_auth(&self) {
        self.state.auth_required.store(false, Ordering::SeqCst);
    }

    /// Offers STARTTLS (advertised in EHLO on plain connections) with the certificate chain
    /// `cert_pem` (leaf first) and its private key `key_pem`. After the upgrade the client must
    /// EHLO again, and any earlier AUTH is forgotten (RFC 3207).
    pub fn enable_starttls(
        &self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> anyhow::Result<()> {
        let config = tls::server_config(cert_pem.as_ref(), key_pem.as_ref())?;
        *self.state.starttls.write().expect("starttls lock poisoned") = Some(config);
        self.state.starttls_enabled.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Stops offering STARTTLS to new EHLOs.
    pub fn disable_starttls(&self) {
        self.state.starttls_enabled.store(false, Ordering::SeqCst);
    }

    /// TLS handshakes completed so far (STARTTLS upgrades and implicit-TLS connections).
    pub fn tls_handshake_count(&self) -> usize {
        self.state.tls_handshakes.load(Ordering::SeqCst)
    }

    /// Successful AUTH exchanges so far.
    pub fn auth_success_count(&self) -> usize {
        self.state.auth_successes.load(Ordering::SeqCst)
    }

    /// Failed AUTH exchanges (answered 535) so far.
    pub fn auth_failure_count(&self) -> usize {
        self.state.auth_failures.load(Ordering::SeqCst)
    }

    /// Calls `hook` for every accepted message, on the connection's task, before the 250 reply
    /// is sent (the binary logs through it). Keep it quick. Replaces any earlier hook.
    pub fn on_message(&self, hook: impl Fn(&ReceivedMessage) + Send + Sync + 'static) {
        *self.state.hook.write().expect("hook lock poisoned") = Some(Arc::new(hook));
    }

    /// Waits until at least `n` messages were accepted or `timeout` passes; returns the count.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.state.arrived.notified();
            tokio::pin!(arrived);
            // Registered before the count is read, so no notification can slip between them.
            arrived.as_mut().enable();
            let count = self.message_count();
            if count >= n {
                return count;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.message_count();
            }
        }
    }
}

impl Drop for SmtpCapture {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

impl std::fmt::Debug for SmtpCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpCapture")
            .field("addr", &self.addr)
            .field("mode", &self.state.mode())
            .field("message_count", &self.message_count())
            .field("connection_count", &self.connection_count())
            .field("implicit_tls", &self.state.implicit_tls.is_some())
            .field(
                "starttls",
                &self.state.starttls_enabled.load(Ordering::Relaxed),
            )
            .field("auth_required", &self.state.auth_required())
            .finish_non_exhaustive()
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    if state.mode() == Mode::DropConnections {
                        drop(stream);
                        continue;
                    }
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
                    }
                    connections.spawn(session::run(stream, state.clone()));
                }
                Err(error) => {
                    // Usually too many open files: back off a little instead of spinning.
                    tracing::warn!(%error, "cannot accept an SMTP connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
