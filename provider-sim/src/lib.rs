//! `mailtrail-provider-sim`: local HTTP servers that speak each email provider's send API.
//!
//! Real providers cannot be reached from tests or benchmarks, so the dispatcher's HTTP providers
//! are pointed at a [`ProviderSim`] instead: one server per [`Api`] (Mailgun, SendGrid, Postmark,
//! Resend, SES v2), started in-process on an ephemeral port with [`ProviderSim::start`]. It
//! answers like the real API — the same paths, auth headers, status codes, bodies and message
//! ids — and keeps what it accepted ([`ProviderSim::accepted`], [`ProviderSim::wait_for_accepted`]).
//! Tests make it fail on purpose with [`Behaviour`] (for every request, or per recipient).
//!
//! Every request is checked like the real API checks it: method and path, the auth header's
//! form and key ([`Credentials`]; SES: the SigV4 `Authorization` header, its credential scope,
//! `x-amz-date` and the signature itself), the content type and the required fields, and —
//! mailtrail's own rule — the `mailtrail_id` metadata and the `X-Mailtrail-Id` header (both
//! present, equal, a UUID). A request that fails a check gets the API's own error answer and is
//! listed in [`ProviderSim::malformed`] with what was wrong, so a test can end with
//! `assert!(sim.malformed().is_empty())`. A well-formed request with a wrong key gets the API's
//! bad-key answer and is not listed (that is a test scenario, not a request-building mistake).
//!
//! The order of the checks: path and method → auth → body → behaviour. So a wrong key gets the
//! bad-key answer whatever the behaviour, and a malformed request is answered as malformed even
//! while the behaviour is, say, [`Behaviour::ServerError`].
//!
//! The server is hyper's HTTP/1.1 (keep-alive); each connection is one tokio task. Dropping the
//! [`ProviderSim`] stops the server and closes its connections.

mod mailgun;
mod postmark;
mod resend;
mod sendgrid;
mod server;
mod ses;
mod spec;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The metadata key under which every request carries our email id.
pub const MAILTRAIL_ID: &str = "mailtrail_id";
/// The header every message carries with our email id.
pub const MAILTRAIL_ID_HEADER: &str = "X-Mailtrail-Id";

/// The send API a [`ProviderSim`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `POST /v3/<domain>/messages`, form fields, HTTP Basic `api:<key>`.
    Mailgun,
    /// `POST /v3/mail/send`, JSON, `Authorization: Bearer <key>`; answers 202 + `X-Message-Id`.
    SendGrid,
    /// `POST /email`, JSON, `X-Postmark-Server-Token`.
    Postmark,
    /// `POST /emails`, JSON, `Authorization: Bearer re_…`, `Idempotency-Key`.
    Resend,
    /// SES v2 `SendEmail`: `POST /v2/email/outbound-emails`, JSON, AWS SigV4 (service `ses`).
    Ses,
}

impl Api {
    /// Every API, for tests that loop over them.
    pub const ALL: [Api; 5] = [
        Api::Mailgun,
        Api::SendGrid,
        Api::Postmark,
        Api::Resend,
        Api::Ses,
    ];

    /// The provider's name as events carry it: `mailgun`, `sendgrid`, `postmark`, `resend`, `ses`.
    pub fn name(self) -> &'static str {
        match self {
            Api::Mailgun => "mailgun",
            Api::SendGrid => "sendgrid",
            Api::Postmark => "postmark",
            Api::Resend => "resend",
            Api::Ses => "ses",
        }
    }
}

/// How the sim answers a well-formed, correctly authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Accept, answering as the real API does on success (default).
    Accept,
    /// The API's "the recipient / message is at fault" answer (Mailgun 400, SendGrid 400,
    /// Postmark 422 `ErrorCode` 406, Resend 422 `validation_error`, SES 400 `MessageRejected`).
    RejectMessage,
    /// The API's answer to an invalid or revoked key (Mailgun/SendGrid/Postmark 401, Resend 403
    /// `invalid_api_key`, SES 403 `UnrecognizedClientException`).
    BadKey,
    /// 429 with `Retry-After: 1` and the API's body.
    RateLimited,
    /// 500 with the API's body.
    ServerError,
    /// Waits, then accepts.
    Slow(Duration),
    /// Closes the TCP connection without an answer.
    DropConnection,
    /// Answers exactly this (JSON content type when `body` is JSON, else `text/plain`); nothing
    /// is accepted. For the answers the other variants do not cover.
    Custom {
        /// The HTTP status code.
        status: u16,
        /// The body.
        body: String,
    },
}

impl Behaviour {
    /// Resend's other recipient-fault answer:
    /// 403 `{"statusCode":403,"name":"invalid_to_address","message":"Invalid `to` address."}`
    /// (a 403 that is the recipient's fault, not the key's).
    pub fn resend_invalid_to_address() -> Behaviour {
        Behaviour::Custom {
            status: 403,
            body: serde_json::json!({
                "statusCode": 403,
                "name": "invalid_to_address",
                "message": "Invalid `to` address.",
            })
            .to_string(),
        }
    }
}

/// What key a [`ProviderSim`] accepts. Each sim starts with [`Credentials::default_for`] its
/// API; a client that presents another key gets the API's bad-key answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP Basic `api:<api_key>`; the path must be `/v3/<domain>/messages`.
    Mailgun { api_key: String, domain: String },
    /// `Authorization: Bearer <api_key>`.
    SendGrid { api_key: String },
    /// `X-Postmark-Server-Token: <server_token>`.
    Postmark { server_token: String },
    /// `Authorization: Bearer <api_key>` (Resend keys start with `re_`).
    Resend { api_key: String },
    /// SigV4 with this access key id and region (service `ses`); the signature is verified with
    /// the secret key.
    Ses {
        access_key_id: String,
        secret_access_key: String,
        region: String,
    },
}

impl Credentials {
    /// The credentials a new sim of `api` accepts.
    pub fn default_for(api: Api) -> Credentials {
        match api {
            Api::Mailgun => Credentials::Mailgun {
                api_key: "key-mailtrail-sim".into(),
                domain: "mg.example.com".into(),
            },
            Api::SendGrid => Credentials::SendGrid {
                api_key: "SG.mailtrail-sim.key".into(),
            },
            Api::Postmark => Credentials::Postmark {
                server_token: "00000000-0000-4000-8000-00000000beef".into(),
            },
            Api::Resend => Credentials::Resend {
                api_key: "re_mailtrail_sim".into(),
            },
            Api::Ses => Credentials::Ses {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
                region: "us-east-1".into(),
            },
        }
    }

    /// The API these credentials are for.
    pub fn api(&self) -> Api {
        match self {
            Credentials::Mailgun { .. } => Api::Mailgun,
            Credentials::SendGrid { .. } => Api::SendGrid,
            Credentials::Postmark { .. } => Api::Postmark,
            Credentials::Resend { .. } => Api::Resend,
            Credentials::Ses { .. } => Api::Ses,
        }
    }

    /// The API key, server token or (SES) access key id.
    pub fn key(&self) -> &str {
        match self {
            Credentials::Mailgun { api_key, .. }
            | Credentials::SendGrid { api_key }
            | Credentials::Resend { api_key } => api_key,
            Credentials::Postmark { server_token } => server_token,
            Credentials::Ses { access_key_id, .. } => access_key_id,
        }
    }
}

/// An accepted message, as the sim understood the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Our id from the provider's metadata: Mailgun `v:mailtrail_id`, SendGrid
    /// `custom_args.mailtrail_id` (personalization-level wins), Postmark `Metadata.mailtrail_id`,
    /// Resend tag `mailtrail_id`, SES `EmailTags` `mailtrail_id`.
    pub mailtrail_id: Option<String>,
    /// Our id from the `X-Mailtrail-Id` header (SES raw: from the decoded MIME headers).
    pub header_mailtrail_id: Option<String>,
    /// The recipients' bare addresses (`a@b`, without display names), in request order.
    pub to: Vec<String>,
    /// The sender's bare address.
    pub from: String,
    pub subject: String,
    /// The text part, where the request gave one separately (not for SES raw MIME).
    pub text: Option<String>,
    /// The HTML part, where the request gave one separately (not for SES raw MIME).
    pub html: Option<String>,
    /// The custom headers the request asked for (SES raw: every MIME header), in order.
    pub headers: Vec<(String, String)>,
    /// The id the sim answered with (Mailgun `id` with its `<>`, SendGrid `X-Message-Id`,
    /// Postmark `MessageID`, Resend `id`, SES `MessageId`).
    pub provider_message_id: String,
    /// The `Idempotency-Key` header, if sent (only Resend honours it).
    pub idempotency_key: Option<String>,
    /// The request body: the JSON as sent; for Mailgun the form fields as an object (a field
    /// sent more than once becomes an array; a file becomes `"<file NAME, N bytes>"`).
    pub raw: serde_json::Value,
}

/// A request that failed the sim's checks (wrong path, auth header form, content type, a
/// missing field or missing mailtrail metadata, …). It got the API's error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub method: String,
    /// The path and query.
    pub path: String,
    /// What was wrong, one entry per problem.
    pub problems: Vec<String>,
    /// The status code the sim answered with.
    pub status: u16,
    /// The request body (lossy UTF-8).
    pub body: String,
}

/// Everything the server and its connections share.
pub(crate) struct State {
    api: Api,
    credentials: RwLock<Credentials>,
    behaviour: RwLock<Behaviour>,
    overrides: RwLock<HashMap<String, Behaviour>>,
    accepted: Mutex<Vec<Received>>,
    accepted_count: AtomicUsize,
    malformed: Mutex<Vec<Malformed>>,
    requests: AtomicUsize,
    connections: AtomicUsize,
    keep_messages: AtomicBool,
    arrived: Notify,
    /// Resend: `Idempotency-Key` → (the id answered, the request body).
    idempotency: Mutex<HashMap<String, (String, serde_json::Value)>>,
    sequence: AtomicU64,
}

impl State {
    fn credentials(&self) -> Credentials {
        self.credentials
            .read()
            .expect("credentials lock poisoned")
            .clone()
    }

    /// The behaviour for a message to `recipients`: the first recipient with an override, else
    /// the general one.
    fn behaviour_for(&self, recipients: &[String]) -> Behaviour {
        {
            let overrides = self.overrides.read().expect("override lock poisoned");
            if !overrides.is_empty() {
                for recipient in recipients {
                    if let Some(behaviour) = overrides.get(&recipient.to_lowercase()) {
                        return behaviour.clone();
                    }
                }
            }
        }
        self.behaviour
            .read()
            .expect("behaviour lock poisoned")
            .clone()
    }

    fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records an accepted message; called before its answer is sent.
    fn record(&self, received: Received) {
        if self.keep_messages.load(Ordering::Relaxed) {
            let mut accepted = self.accepted.lock().expect("accepted lock poisoned");
            accepted.push(received);
            // Counted under the lock, so `accepted_count` never runs ahead of `accepted`.
            self.accepted_count.fetch_add(1, Ordering::SeqCst);
        } else {
            self.accepted_count.fetch_add(1, Ordering::SeqCst);
        }
        self.arrived.notify_waiters();
    }

    fn record_malformed(&self, malformed: Malformed) {
        tracing::debug!(
            api = self.api.name(),
            problems = ?malformed.problems,
            path = %malformed.path,
            "malformed provider request"
        );
        self.malformed
            .lock()
            .expect("malformed lock poisoned")
            .push(malformed);
    }
}

/// A running provider API server. Dropping it stops the server and closes its connections.
pub struct ProviderSim {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl ProviderSim {
    /// Starts a server for `api` on 127.0.0.1 with an ephemeral port, accepting
    /// [`Credentials::default_for`] `api`, with [`Behaviour::Accept`].
    pub async fn start(api: Api) -> anyhow::Result<ProviderSim> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .with_context(|| format!("cannot listen for the {} simulator", api.name()))?;
        let addr = listener
            .local_addr()
            .context("cannot read the simulator listener's address")?;
        let state = Arc::new(State {
            api,
            credentials: RwLock::new(Credentials::default_for(api)),
            behaviour: RwLock::new(Behaviour::Accept),
            overrides: RwLock::new(HashMap::new()),
            accepted: Mutex::new(Vec::new()),
            accepted_count: AtomicUsize::new(0),
            malformed: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            keep_messages: AtomicBool::new(true),
            arrived: Notify::new(),
            idempotency: Mutex::new(HashMap::new()),
            sequence: AtomicU64::new(0),
        });
        let server = tokio::spawn(server::serve(listener, state.clone()));
        Ok(ProviderSim {
            addr,
            state,
            server,
        })
    }

    /// The API this sim speaks.
    pub fn api(&self) -> Api {
        self.state.api
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port>`: what replaces `https://api.mailgun.net`,
    /// `https://api.sendgrid.com`, `https://api.postmarkapp.com`, `https://api.resend.com` or
    /// `https://email.<region>.amazonaws.com`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full URL of the send endpoint (for Mailgun with the configured domain).
    pub fn send_url(&self) -> String {
        let path = match self.state.credentials() {
            Credentials::Mailgun { domain, .. } => format!("/v3/{domain}/messages"),
            Credentials::SendGrid { .. } => "/v3/mail/send".to_owned(),
            Credentials::Postmark { .. } => "/email".to_owned(),
            Credentials::Resend { .. } => "/emails".to_owned(),
            Credentials::Ses { .. } => "/v2/email/outbound-emails".to_owned(),
        };
        format!("{}{path}", self.base_url())
    }

    /// How well-formed requests are answered from now on (recipients with an override excepted).
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self
            .state
            .behaviour
            .write()
            .expect("behaviour lock poisoned") = behaviour;
    }

    /// How messages to `recipient` (compared case-insensitively, bare address) are answered
    /// from now on, whatever [`ProviderSim::set_behaviour`] says. A message to several
    /// recipients gets the override of the first one that has one.
    pub fn set_behaviour_for(&self, recipient: &str, behaviour: Behaviour) {
        self.state
            .overrides
            .write()
            .expect("override lock poisoned")
            .insert(recipient.trim().to_lowercase(), behaviour);
    }

    /// Removes every per-recipient override.
    pub fn clear_behaviour_overrides(&self) {
        self.state
            .overrides
            .write()
            .expect("override lock poisoned")
            .clear();
    }

    /// The key the sim accepts from now on.
    ///
    /// # Panics
    /// If `credentials` are for another API.
    pub fn set_credentials(&self, credentials: Credentials) {
        assert_eq!(
            credentials.api(),
            self.state.api,
            "credentials for another API"
        );
        *self
            .state
            .credentials
            .write()
            .expect("credentials lock poisoned") = credentials;
    }

    /// The key the sim accepts (what to configure the client with).
    pub fn credentials(&self) -> Credentials {
        self.state.credentials()
    }

    /// Every message accepted so far, in order. Empty while
    /// [`ProviderSim::set_keep_messages`] is off. A Resend request that repeats an
    /// `Idempotency-Key` is not accepted a second time.
    pub fn accepted(&self) -> Vec<Received> {
        self.state
            .accepted
            .lock()
            .expect("accepted lock poisoned")
            .clone()
    }

    /// How many messages were accepted so far (counted even when they are not kept).
    pub fn accepted_count(&self) -> usize {
        self.state.accepted_count.load(Ordering::SeqCst)
    }

    /// Every request that failed a check, in order.
    pub fn malformed(&self) -> Vec<Malformed> {
        self.state
            .malformed
            .lock()
            .expect("malformed lock poisoned")
            .clone()
    }

    /// How many requests arrived so far, whatever their answer (dropped ones too).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// How many TCP connections were accepted so far (for tests of connection reuse).
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Whether accepted messages are kept for [`ProviderSim::accepted`] (default `true`). When
    /// off they are only counted, for benchmarks.
    pub fn set_keep_messages(&self, keep: bool) {
        self.state.keep_messages.store(keep, Ordering::SeqCst);
    }

    /// Waits until at least `n` messages were accepted or `timeout` passes; returns whether
    /// `n` were reached.
    pub async fn wait_for_accepted(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.state.arrived.notified();
            tokio::pin!(arrived);
            // Registered before the count is read, so no notification can slip between them.
            arrived.as_mut().enable();
            if self.accepted_count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.accepted_count() >= n;
            }
        }
    }
}

impl Drop for ProviderSim {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

impl std::fmt::Debug for ProviderSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSim")
            .field("api", &self.state.api)
            .field("addr", &self.addr)
            .field("requests", &self.requests())
            .field("accepted", &self.accepted_count())
            .finish_non_exhaustive()
    }
}
