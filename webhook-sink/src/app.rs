//! The webhook sink process: `POST /v1/webhooks/{provider}`, health endpoints, and a supervised
//! broker connection whose confirmed publishes stand behind every 2xx answer.

use crate::config::{SinkConfig, parse_credentials};
use crate::standard_events::{PROVIDER as STANDARD, normalise};
use crate::verify::standard::{SignedRequest, SigningKey, verify};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use lapin::BasicProperties;
use mailtrail_broker::{
    Incoming, OutgoingMessage, Publisher, SetAside, close_connection, connect, declare_topology,
    json_properties,
};
use mailtrail_runtime::{Readiness, health_routes, supervise};
use mailtrail_shared::topology::{Queue, Topology};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "webhook-sink";

/// The providers the issue names; the ones not built yet answer 404 with a clear message.
const PLANNED: &[&str] = &["mailgun", "sendgrid", "postmark", "ses", "resend"];

struct State {
    publisher: RwLock<Option<Publisher>>,
    topology: Topology,
    standard_keys: Vec<SigningKey>,
    standard_tenants: Vec<String>,
    standard_window: Duration,
}

pub struct SinkApp {
    config: SinkConfig,
    listener: std::net::TcpListener,
    state: Arc<State>,
}

impl SinkApp {
    pub fn build(config: SinkConfig) -> anyhow::Result<SinkApp> {
        let credentials = parse_credentials(&config.standard_secrets)?;
        if credentials.is_empty() {
            tracing::warn!(
                "no MAILTRAIL_WEBHOOK_STANDARD_SECRETS: /v1/webhooks/standard refuses everything"
            );
        }
        let (standard_tenants, standard_keys) =
            credentials.into_iter().map(|c| (c.tenant, c.key)).unzip();
        let state = Arc::new(State {
            publisher: RwLock::new(None),
            topology: config.broker.topology(),
            standard_keys,
            standard_tenants,
            standard_window: Duration::from_secs(config.standard_window_secs),
        });
        Ok(SinkApp {
            listener: mailtrail_runtime::bind_http(config.http_addr)?,
            config,
            state,
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
                .route("/v1/webhooks/{provider}", web::post().to(receive))
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

/// `POST /v1/webhooks/{provider}`: verify over the raw bytes, normalise, publish every event with
/// a confirm, and only then answer 2xx.
async fn receive(
    provider: web::Path<String>,
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<State>,
) -> HttpResponse {
    let provider = provider.into_inner();
    if provider != STANDARD {
        let detail = if PLANNED.contains(&provider.as_str()) {
            format!("the {provider} webhook is not built yet")
        } else {
            format!("unknown provider {provider:?}")
        };
        return problem(StatusCode::NOT_FOUND, &detail);
    }
    let signed = SignedRequest {
        id: header(&request, &["webhook-id", "svix-id"]),
        timestamp: header(&request, &["webhook-timestamp", "svix-timestamp"]),
        signature: header(&request, &["webhook-signature", "svix-signature"]),
        body: &body,
    };
    let now = chrono::Utc::now().timestamp();
    let signer = match verify(&state.standard_keys, &signed, now, state.standard_window) {
        Ok(index) => index,
        Err(error) => {
            tracing::warn!(provider, %error, "webhook refused");
            return problem(
                StatusCode::UNAUTHORIZED,
                "the webhook signature is not valid",
            );
        }
    };
    let webhook_id = signed.id.unwrap_or_default();
    let items = match normalise(&body, webhook_id, &state.standard_tenants[signer]) {
        Ok(items) => items,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, &detail),
    };
    let mut messages = Vec::with_capacity(items.len());
    let mut set_aside = 0;
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Ok(event) => {
                let body = match serde_json::to_vec(&event) {
                    Ok(body) => body,
                    Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                };
                messages.push(OutgoingMessage {
                    routing_key: state.topology.queue(Queue::Tracking),
                    body,
                    properties: json_properties(&event.event_id.to_string(), Default::default()),
                });
            }
            Err((detail, raw)) => {
                // One odd event is set aside alone; the rest of the batch is accepted.
                set_aside += 1;
                let original = Incoming {
                    body: raw,
                    properties: BasicProperties::default()
                        .with_message_id(format!("{webhook_id}:{index}").into()),
                    queue: Queue::Tracking,
                    queue_name: format!("webhook:{provider}"),
                    redelivered: false,
                };
                let copy = SetAside::for_message(&original, "unmapped_event", &detail, SERVICE);
                messages.push(copy.message_for(&original, &state.topology));
            }
        }
    }
    let publisher = state.publisher.read().await.clone();
    let Some(publisher) = publisher else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is unreachable; retry later",
        );
    };
    if let Err(error) = publisher.publish_all(&messages).await {
        tracing::error!(%error, "cannot hand webhook events to the broker");
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the events could not be handed to the broker; retry later",
        );
    }
    HttpResponse::Ok().json(serde_json::json!({
        "accepted": messages.len() - set_aside,
        "set_aside": set_aside,
    }))
}
