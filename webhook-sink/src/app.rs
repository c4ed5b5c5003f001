//! The webhook sink process: `POST /v1/webhooks/{provider}`, health endpoints, and a supervised
//! broker connection whose confirmed publishes stand behind every 2xx answer.

use crate::config::{Keyring, SinkConfig, parse_credentials, parse_keys};
use crate::providers::{self, Item};
use crate::replay::{Seen, TokenCache};
use crate::verify::postmark::BasicCredential;
use crate::verify::sns::{
    CertificateCache, CertificateFetcher, HttpsFetcher, MessageType, SnsEnvelope,
};
use crate::verify::standard::{SignedRequest, SigningKey};
use crate::verify::{VerifyError, mailgun, postmark, sendgrid, sns, standard};
use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpRequest, HttpResponse, web};
use ipnet::IpNet;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use mailtrail_broker::{
    Incoming, OutgoingMessage, Publisher, SetAside, close_connection, connect, declare_topology,
    json_properties,
};
use mailtrail_runtime::{Readiness, health_routes, supervise};
use mailtrail_shared::headers;
use mailtrail_shared::topology::{Queue, Topology};
use mailtrail_shared::tracking::ANY_TENANT;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "webhook-sink";

/// Mailgun tokens remembered at most (about 200 bytes each).
const MAILGUN_TOKEN_CAPACITY: usize = 250_000;

/// Each provider's keys (with their tenants) and timestamp window.
struct State {
    publisher: RwLock<Option<Publisher>>,
    topology: Topology,
    standard: Keyring<SigningKey>,
    standard_window: Duration,
    resend: Keyring<SigningKey>,
    resend_window: Duration,
    mailgun: Keyring<mailgun::SigningKey>,
    mailgun_window: Duration,
    mailgun_tokens: TokenCache,
    sendgrid: Keyring<sendgrid::PublicKey>,
    sendgrid_window: Duration,
    postmark: Keyring<BasicCredential>,
    postmark_allowed: Vec<IpNet>,
    /// (tenant, topic ARN)
    ses_topics: Vec<(String, String)>,
    ses_window: Duration,
    ses_auto_confirm: bool,
    certificates: CertificateCache,
    fetcher: Arc<dyn CertificateFetcher>,
}

pub struct SinkApp {
    config: SinkConfig,
    listener: std::net::TcpListener,
    state: Arc<State>,
}

impl SinkApp {
    /// The sink, fetching SNS certificates over https.
    pub fn build(config: SinkConfig) -> anyhow::Result<SinkApp> {
        let fetcher = HttpsFetcher::new().map_err(anyhow::Error::msg)?;
        SinkApp::build_with_fetcher(config, Arc::new(fetcher))
    }

    /// The sink with its own source of SNS certificates (and subscription confirmations), so
    /// tests run offline with their own key and certificate.
    pub fn build_with_fetcher(
        config: SinkConfig,
        fetcher: Arc<dyn CertificateFetcher>,
    ) -> anyhow::Result<SinkApp> {
        let secs = Duration::from_secs;
        let ses_topics = parse_credentials("MAILTRAIL_WEBHOOK_SES_TOPICS", &config.ses_topics)?
            .into_iter()
            .map(|c| (c.tenant, c.secret))
            .collect::<Vec<_>>();
        let state = State {
            publisher: RwLock::new(None),
            topology: config.broker.topology(),
            standard: parse_keys(
                "MAILTRAIL_WEBHOOK_STANDARD_SECRETS",
                &config.standard_secrets,
                SigningKey::parse,
            )?,
            standard_window: secs(config.standard_window_secs),
            resend: parse_keys(
                "MAILTRAIL_WEBHOOK_RESEND_SECRETS",
                &config.resend_secrets,
                SigningKey::parse,
            )?,
            resend_window: secs(config.resend_window_secs),
            mailgun: parse_keys(
                "MAILTRAIL_WEBHOOK_MAILGUN_SIGNING_KEYS",
                &config.mailgun_signing_keys,
                mailgun::SigningKey::new,
            )?,
            mailgun_window: secs(config.mailgun_window_secs),
            // A timestamp may be off by the window either way.
            mailgun_tokens: TokenCache::new(
                secs(config.mailgun_window_secs.saturating_mul(2)),
                MAILGUN_TOKEN_CAPACITY,
            ),
            sendgrid: parse_keys(
                "MAILTRAIL_WEBHOOK_SENDGRID_PUBLIC_KEYS",
                &config.sendgrid_public_keys,
                sendgrid::PublicKey::parse,
            )?,
            sendgrid_window: secs(config.sendgrid_window_secs),
            postmark: parse_keys(
                "MAILTRAIL_WEBHOOK_POSTMARK_CREDENTIALS",
                &config.postmark_credentials,
                BasicCredential::parse,
            )?,
            postmark_allowed: postmark::parse_allow_list(&config.postmark_allowed_ips)
                .map_err(|e| anyhow::anyhow!("MAILTRAIL_WEBHOOK_POSTMARK_ALLOWED_IPS: {e}"))?,
            ses_topics,
            ses_window: secs(config.ses_window_secs),
            ses_auto_confirm: config.ses_auto_confirm,
            certificates: CertificateCache::new(fetcher.clone()),
            fetcher,
        };
        let configured: Vec<&str> = [
            ("standard", !state.standard.keys.is_empty()),
            ("resend", !state.resend.keys.is_empty()),
            ("mailgun", !state.mailgun.keys.is_empty()),
            ("sendgrid", !state.sendgrid.keys.is_empty()),
            ("postmark", !state.postmark.keys.is_empty()),
            ("ses", !state.ses_topics.is_empty()),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        if configured.is_empty() {
            tracing::warn!(
                "no webhook credentials are configured: every webhook is refused (see README, \
                 MAILTRAIL_WEBHOOK_*)"
            );
        } else {
            tracing::info!(providers = ?configured, "webhook credentials loaded");
        }
        Ok(SinkApp {
            listener: mailtrail_runtime::bind_http(config.http_addr)?,
            config,
            state: Arc::new(state),
        })
    }

    pub fn http_port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut readiness = Readiness::default();
        let broker_ready = readiness.track("broker");
        let state = self.state.clone();
        let max_body = self.config.max_body_bytes;
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(web::Data::from(state.clone()))
                .app_data(web::PayloadConfig::new(max_body))
                .configure(health_routes(readiness.clone()))
                .service(
                    web::resource("/v1/webhooks/{provider}")
                        .wrap(from_fn(count_requests))
                        .route(web::post().to(receive)),
                )
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(5)
        .listen(self.listener.try_clone()?)?
        .run();
        tracing::info!(addr = %self.listener.local_addr()?, "webhook endpoints listening");
        let server_handle = server.handle();
        let server_task = tokio::spawn(server);
        supervise(SERVICE, &stop, || self.session(&stop, &broker_ready)).await;
        server_handle.stop(true).await;
        let _ = server_task.await;
        tracing::info!("webhook sink stopped");
        Ok(())
    }

    /// Holds the broker connection and its publisher until it is lost or `stop`.
    async fn session(
        &self,
        stop: &CancellationToken,
        ready: &Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        let connection = connect(&self.config.broker.settings(SERVICE)).await?;
        let result = async {
            let setup = connection.create_channel().await?;
            declare_topology(&setup, &self.state.topology).await?;
            *self.state.publisher.write().await = Some(Publisher::open(&connection).await?);
            ready.store(true, Ordering::Relaxed);
            tracing::info!("broker connected; webhooks are accepted");
            // lapin marks the connection closed on a socket error or two missed heartbeats.
            while connection.status().connected() {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            anyhow::bail!("the broker connection was lost")
        }
        .await;
        ready.store(false, Ordering::Relaxed);
        *self.state.publisher.write().await = None;
        close_connection(&connection, "webhook sink session ending").await;
        result
    }
}

/// The providers with an endpoint: the only values the metrics' `provider` label takes, so a
/// stranger posting to made-up paths cannot grow the series without bound.
const PROVIDERS: &[&str] = &[
    providers::mailgun::PROVIDER,
    providers::sendgrid::PROVIDER,
    providers::postmark::PROVIDER,
    providers::ses::PROVIDER,
    providers::resend::PROVIDER,
    providers::standard::PROVIDER,
];

/// Counts every webhook request by provider and verdict (`mailtrail_webhook_requests_total`),
/// and times it, whatever answered it: the handler, or the body limit (413) before it.
async fn count_requests(
    request: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let provider = request
        .match_info()
        .get("provider")
        .and_then(|name| PROVIDERS.iter().find(|p| **p == name).copied())
        .unwrap_or("unknown");
    let started = std::time::Instant::now();
    let response = next.call(request).await?;
    let verdict = match response.status().as_u16() {
        200..=299 => "accepted",
        400 => "unreadable",
        401 => "unverified",
        403 => "forbidden",
        404 => "not_found",
        405 => "wrong_method",
        413 => "too_large",
        503 => "unavailable",
        _ => "other",
    };
    metrics::counter!("mailtrail_webhook_requests_total", "provider" => provider, "verdict" => verdict)
        .increment(1);
    metrics::histogram!("mailtrail_webhook_request_seconds", "provider" => provider)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}

fn problem(status: StatusCode, detail: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .json(serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or(""),
            "status": status.as_u16(),
            "detail": detail,
        }))
}

fn header<'a>(request: &'a HttpRequest, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|name| request.headers().get(*name))
        .and_then(|v| v.to_str().ok())
}

/// Why a request is not taken, and the answer each provider's retry rules call for.
enum Refusal {
    /// Bad or missing signature or credentials: 401 (the provider may retry; nothing is lost
    /// that was genuine, and a forgery gets nowhere).
    Unverified(VerifyError),
    /// Verified, but not from a source we accept (an SNS topic not on the list): 403.
    Forbidden(String),
    /// Verified but unreadable: 400.
    Unreadable(String),
    /// Our trouble (a certificate could not be fetched): 503, so the provider retries.
    Unavailable(String),
    NotFound(String),
}

impl Refusal {
    fn response(&self, provider: &str) -> HttpResponse {
        match self {
            Refusal::Unverified(error) => {
                tracing::warn!(provider, %error, "webhook refused");
                let mut response = problem(
                    StatusCode::UNAUTHORIZED,
                    "the webhook signature or credentials are not valid",
                );
                if provider == providers::postmark::PROVIDER {
                    response.headers_mut().insert(
                        actix_web::http::header::WWW_AUTHENTICATE,
                        actix_web::http::header::HeaderValue::from_static(
                            "Basic realm=\"mailtrail webhooks\"",
                        ),
                    );
                }
                response
            }
            Refusal::Forbidden(detail) => {
                tracing::warn!(provider, detail, "webhook refused");
                problem(StatusCode::FORBIDDEN, detail)
            }
            Refusal::Unreadable(detail) => problem(StatusCode::BAD_REQUEST, detail),
            Refusal::Unavailable(detail) => {
                tracing::error!(provider, detail, "webhook not taken: our trouble");
                problem(StatusCode::SERVICE_UNAVAILABLE, detail)
            }
            Refusal::NotFound(detail) => problem(StatusCode::NOT_FOUND, detail),
        }
    }
}

/// A verified request: the tenant its credential speaks for and its items.
struct Verified {
    provider: &'static str,
    tenant: String,
    /// Names the request in set-aside copies (`<provider event id or delivery id>`).
    label: String,
    items: Vec<Item>,
}

/// What a verified request calls for.
enum Outcome {
    Publish(Verified),
    /// Answered without events (an SNS subscription handshake).
    Answer(HttpResponse),
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `POST /v1/webhooks/{provider}`: verify over the raw bytes, normalise, publish every event with
/// a confirm, and only then answer 2xx.
async fn receive(
    provider: web::Path<String>,
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<State>,
) -> HttpResponse {
    let provider = provider.into_inner();
    let outcome = match provider.as_str() {
        providers::standard::PROVIDER => {
            standard_webhooks(&state.standard, state.standard_window, &request, &body).and_then(
                |(tenant, id)| {
                    let items =
                        providers::standard::normalise(&body, &id).map_err(Refusal::Unreadable)?;
                    Ok(publish(providers::standard::PROVIDER, tenant, id, items))
                },
            )
        }
        providers::resend::PROVIDER => {
            standard_webhooks(&state.resend, state.resend_window, &request, &body).and_then(
                |(tenant, id)| {
                    let items =
                        providers::resend::normalise(&body, &id).map_err(Refusal::Unreadable)?;
                    Ok(publish(providers::resend::PROVIDER, tenant, id, items))
                },
            )
        }
        providers::mailgun::PROVIDER => receive_mailgun(&state, &body),
        providers::sendgrid::PROVIDER => receive_sendgrid(&state, &request, &body),
        providers::postmark::PROVIDER => receive_postmark(&state, &request, &body),
        providers::ses::PROVIDER => receive_ses(&state, &request, &body).await,
        other => Err(Refusal::NotFound(format!(
            "unknown provider {other:?}; use mailgun, sendgrid, postmark, ses, resend or standard"
        ))),
    };
    match outcome {
        Ok(Outcome::Publish(verified)) => {
            // The provider's request starts (or, with a `traceparent`, continues) the trace its
            // events carry to the operator.
            let parent = request
                .headers()
                .get(headers::TRACEPARENT)
                .and_then(|value| value.to_str().ok());
            hand_over(&state, verified, &headers::continue_trace(parent)).await
        }
        Ok(Outcome::Answer(response)) => response,
        Err(refusal) => refusal.response(&provider),
    }
}

fn publish(provider: &'static str, tenant: String, label: String, items: Vec<Item>) -> Outcome {
    Outcome::Publish(Verified {
        provider,
        tenant,
        label,
        items,
    })
}

/// Standard Webhooks (and Resend through Svix, under `svix-*` names): the signer's tenant and
/// the delivery id.
fn standard_webhooks(
    keyring: &Keyring<SigningKey>,
    window: Duration,
    request: &HttpRequest,
    body: &[u8],
) -> Result<(String, String), Refusal> {
    let signed = SignedRequest {
        id: header(request, &["webhook-id", "svix-id"]),
        timestamp: header(request, &["webhook-timestamp", "svix-timestamp"]),
        signature: header(request, &["webhook-signature", "svix-signature"]),
        body,
    };
    let signer =
        standard::verify(&keyring.keys, &signed, now(), window).map_err(Refusal::Unverified)?;
    Ok((
        keyring.tenants[signer].clone(),
        signed.id.unwrap_or_default().to_owned(),
    ))
}

/// Mailgun signs `timestamp‖token` inside the body, not the event: the signature is checked
/// first, then the token may not come back with another body.
fn receive_mailgun(state: &State, body: &[u8]) -> Result<Outcome, Refusal> {
    let envelope: providers::mailgun::Envelope = serde_json::from_slice(body).map_err(|_| {
        Refusal::Unverified(VerifyError::Malformed(
            "not a Mailgun webhook: no signature object".into(),
        ))
    })?;
    let fields = &envelope.signature;
    let signed = mailgun::MailgunSignature {
        timestamp: &fields.timestamp,
        token: &fields.token,
        signature: &fields.signature,
    };
    let signer = mailgun::verify(&state.mailgun.keys, &signed, now(), state.mailgun_window)
        .map_err(Refusal::Unverified)?;
    if state.mailgun_tokens.check(&fields.token, body) == Seen::Reused {
        return Err(Refusal::Unverified(VerifyError::Malformed(
            "this token was already used with another event".into(),
        )));
    }
    let item = providers::mailgun::normalise(&envelope.event_data);
    Ok(publish(
        providers::mailgun::PROVIDER,
        state.mailgun.tenants[signer].clone(),
        fields.token.clone(),
        vec![item],
    ))
}

fn receive_sendgrid(state: &State, request: &HttpRequest, body: &[u8]) -> Result<Outcome, Refusal> {
    let signer = sendgrid::verify(
        &state.sendgrid.keys,
        header(request, &[sendgrid::TIMESTAMP_HEADER]),
        header(request, &[sendgrid::SIGNATURE_HEADER]),
        body,
        now(),
        state.sendgrid_window,
    )
    .map_err(Refusal::Unverified)?;
    let items = providers::sendgrid::normalise(body).map_err(Refusal::Unreadable)?;
    let label = header(request, &[sendgrid::TIMESTAMP_HEADER])
        .unwrap_or_default()
        .to_owned();
    Ok(publish(
        providers::sendgrid::PROVIDER,
        state.sendgrid.tenants[signer].clone(),
        label,
        items,
    ))
}

fn receive_postmark(state: &State, request: &HttpRequest, body: &[u8]) -> Result<Outcome, Refusal> {
    let peer = request.peer_addr().map(|a| a.ip());
    if !postmark::allowed(&state.postmark_allowed, peer) {
        return Err(Refusal::Forbidden(format!(
            "{} is not on MAILTRAIL_WEBHOOK_POSTMARK_ALLOWED_IPS",
            peer.map(|p| p.to_string()).unwrap_or_default()
        )));
    }
    let signer = postmark::verify(&state.postmark.keys, header(request, &["authorization"]))
        .map_err(Refusal::Unverified)?;
    let trace = header(request, &["x-pm-webhook-trace-id"]);
    let items = providers::postmark::normalise(body, trace).map_err(Refusal::Unreadable)?;
    Ok(publish(
        providers::postmark::PROVIDER,
        state.postmark.tenants[signer].clone(),
        trace.unwrap_or_default().to_owned(),
        items,
    ))
}

/// SNS: the envelope is signed by AWS with a certificate fetched from an SNS host; the topic
/// must be on the allow-list (any AWS account can sign for its own topics).
async fn receive_ses(
    state: &State,
    request: &HttpRequest,
    body: &[u8],
) -> Result<Outcome, Refusal> {
    if header(request, &["x-amz-sns-rawdelivery"]) == Some("true") {
        return Err(Refusal::Unverified(VerifyError::Malformed(
            "raw message delivery carries no signature: turn RawMessageDelivery off".into(),
        )));
    }
    let envelope = SnsEnvelope::from_json(body).map_err(Refusal::Unverified)?;
    match sns::verify(&envelope, &state.certificates, now(), state.ses_window).await {
        Ok(()) => {}
        Err(VerifyError::Unavailable(detail)) => return Err(Refusal::Unavailable(detail)),
        Err(error) => return Err(Refusal::Unverified(error)),
    }
    let Some((tenant, _)) = state
        .ses_topics
        .iter()
        .find(|(_, arn)| *arn == envelope.topic_arn)
    else {
        return Err(Refusal::Forbidden(format!(
            "topic {} is not on MAILTRAIL_WEBHOOK_SES_TOPICS",
            envelope.topic_arn
        )));
    };
    match envelope.kind().map_err(Refusal::Unverified)? {
        MessageType::Notification => {
            let items = providers::ses::normalise(&envelope.message_id, &envelope.message);
            Ok(publish(
                providers::ses::PROVIDER,
                tenant.clone(),
                envelope.message_id.clone(),
                items,
            ))
        }
        MessageType::SubscriptionConfirmation => {
            let url = envelope.subscribe_url.clone().unwrap_or_default();
            sns::check_subscribe_url(&url).map_err(Refusal::Unverified)?;
            if !state.ses_auto_confirm {
                tracing::warn!(
                    topic = envelope.topic_arn,
                    subscribe_url = url,
                    "SNS asks to confirm a subscription: open the SubscribeURL to confirm it \
                     (MAILTRAIL_WEBHOOK_SES_AUTO_CONFIRM is off)"
                );
                return Ok(Outcome::Answer(
                    HttpResponse::Ok().json(serde_json::json!({"confirmed": false})),
                ));
            }
            state
                .fetcher
                .fetch(&url)
                .await
                .map_err(|e| Refusal::Unavailable(format!("confirming the subscription: {e}")))?;
            tracing::info!(topic = envelope.topic_arn, "SNS subscription confirmed");
            Ok(Outcome::Answer(
                HttpResponse::Ok().json(serde_json::json!({"confirmed": true})),
            ))
        }
        MessageType::UnsubscribeConfirmation => {
            tracing::warn!(
                topic = envelope.topic_arn,
                "SNS reports this endpoint unsubscribed from the topic: SES events stop"
            );
            Ok(Outcome::Answer(
                HttpResponse::Ok().json(serde_json::json!({"unsubscribed": true})),
            ))
        }
    }
}

/// Publishes a verified request's events (and set-aside copies of unmappable items), all with
/// confirms, before answering 200.
async fn hand_over(state: &State, verified: Verified, traceparent: &str) -> HttpResponse {
    let trace_id = headers::trace_id_of(traceparent).unwrap_or_default();
    let Verified {
        provider,
        tenant,
        label,
        items,
    } = verified;
    let mut messages = Vec::with_capacity(items.len());
    let (mut accepted, mut ignored, mut set_aside) = (0, 0, 0);
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Item::Event(event) => {
                let event = event.into_tracking(provider, &tenant);
                let body = match serde_json::to_vec(&event) {
                    Ok(body) => body,
                    Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                };
                accepted += 1;
                let mut table = FieldTable::default();
                table.insert(
                    headers::TRACEPARENT.into(),
                    AMQPValue::LongString(traceparent.into()),
                );
                if let Some(email_id) = event.email_id {
                    table.insert(
                        headers::EMAIL_ID.into(),
                        AMQPValue::LongString(email_id.to_string().into()),
                    );
                }
                tracing::debug!(
                    provider,
                    email_id = event.email_id.map(|id| id.to_string()),
                    provider_message_id = event.provider_message_id.as_deref(),
                    event_type = event.event_type.as_str(),
                    trace_id,
                    "webhook event verified"
                );
                messages.push(OutgoingMessage {
                    routing_key: state.topology.queue(Queue::Tracking),
                    body,
                    properties: json_properties(&event.event_id.to_string(), table),
                });
            }
            Item::Ignored(what) => {
                tracing::debug!(provider, what, "webhook event not recorded by design");
                ignored += 1;
            }
            Item::Unmapped { detail, raw } => {
                // One odd event is set aside alone; the rest of the batch is accepted.
                set_aside += 1;
                // The credential's tenant travels with the copy, so the dead letter is visible
                // to that tenant's keys (a credential for every tenant names none).
                let mut table = FieldTable::default();
                if tenant != ANY_TENANT {
                    table.insert(
                        headers::TENANT.into(),
                        AMQPValue::LongString(tenant.clone().into()),
                    );
                }
                let original = Incoming {
                    body: raw,
                    properties: BasicProperties::default()
                        .with_message_id(format!("{provider}:{label}:{index}").into())
                        .with_headers(table),
                    queue: Queue::Tracking,
                    queue_name: format!("webhook:{provider}"),
                    redelivered: false,
                };
                tracing::warn!(provider, detail, trace_id, "webhook event set aside");
                let copy = SetAside::for_message(&original, "unmapped_event", &detail, SERVICE);
                messages.push(copy.message_for(&original, &state.topology));
            }
        }
    }
    if !messages.is_empty() {
        let publisher = state.publisher.read().await.clone();
        let Some(publisher) = publisher else {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the broker is unreachable; retry later",
            );
        };
        if let Err(error) = publisher.publish_all(&messages).await {
            tracing::error!(%error, trace_id, "cannot hand webhook events to the broker");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the events could not be handed to the broker; retry later",
            );
        }
    }
    for (outcome, count) in [
        ("accepted", accepted),
        ("ignored", ignored),
        ("set_aside", set_aside),
    ] {
        metrics::counter!("mailtrail_webhook_events_total", "provider" => provider, "outcome" => outcome)
            .increment(count);
    }
    HttpResponse::Ok().json(serde_json::json!({
        "accepted": accepted,
        "ignored": ignored,
        "set_aside": set_aside,
    }))
}
