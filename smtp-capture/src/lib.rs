//! `mailtrail-smtp-capture`: a fast, real SMTP server that keeps what it receives.
//!
//! It is what tests, benchmarks and the quick start send mail to instead of a real provider:
//! tests start one in-process with [`SmtpCapture::start`], point the dispatcher at
//! [`SmtpCapture::url`] and then look at [`SmtpCapture::messages`] (or wait for them with
//! [`SmtpCapture::wait_for_count`]); they can make it fail on purpose with [`Mode`] and
//! [`SmtpCapture::reject_recipient`]. The `smtp-capture` binary runs the same server on its own
//! and logs one line per accepted message.
//!
//! It speaks plain SMTP/ESMTP (no TLS, no AUTH): EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT,
//! with PIPELINING, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES and SIZE. Each connection is one
//! tokio task; messages are kept in memory (or only counted, see
//! [`SmtpCapture::set_keep_messages`]). Dropping the [`SmtpCapture`] stops the server and closes
//! its connections.

mod message;
mod session;

pub use message::ReceivedMessage;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

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

type MessageHook = Arc<dyn Fn(&ReceivedMessage) + Send + Sync>;

/// What the server and its connections share.
pub(crate) struct State {
    messages: Mutex<Vec<ReceivedMessage>>,
    count: AtomicUsize,
    arrived: Notify,
    mode: AtomicU8,
    keep_messages: AtomicBool,
    rejected: RwLock<HashSet<String>>,
    connections: AtomicUsize,
    hook: RwLock<Option<MessageHook>>,
}

impl State {
    pub(crate) fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    pub(crate) fn is_rejected(&self, address: &str) -> bool {
        let rejected = self
            .rejected
            .read()
            .expect("rejected-recipient lock poisoned");
        !rejected.is_empty() && rejected.contains(&address.to_lowercase())
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
            rejected: RwLock::new(HashSet::new()),
            connections: AtomicUsize::new(0),
            hook: RwLock::new(None),
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
    /// given as the loopback address of its family).
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("smtp://{}", SocketAddr::new(ip, self.addr.port()))
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

    /// Recipients (compared case-insensitively) that get `550 5.1.1 <addr>: no such user` at
    /// RCPT TO.
    pub fn reject_recipient(&self, address: &str) {
        self.state
            .rejected
            .write()
            .expect("rejected-recipient lock poisoned")
            .insert(address.to_lowercase());
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
