//! The operator's HTTP API.
//!
//! Every path under `/v1` requires an API key (`Authorization: Bearer mtk_…`), enforced by one
//! middleware on the whole scope, so a new endpoint cannot be public by accident. The only
//! public paths are listed in [`PUBLIC_PATHS`] (and in README.md, "HTTP API").
//!
//! Errors are `application/problem+json` (RFC 9457). Internal causes are logged once here and
//! never sent to the client. Another tenant's email answers 404, exactly like an unknown one.

use crate::db::{DbPool, with_deadline};
use crate::keys::{self, Principal};
use crate::schema::{emails, events, requests};
use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpMessage, HttpResponse, ResponseError, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use mailtrail_shared::address::Address;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// The paths that answer without an API key. Everything else needs one.
pub const PUBLIC_PATHS: &[&str] = mailtrail_runtime::HEALTH_PATHS;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    pub pool: DbPool,
    pub db_timeout: Duration,
    /// Set while the operator holds a working broker session.
    pub broker_ready: Arc<AtomicBool>,
}

/// An API error, rendered as problem+json.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key is required: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the database is unavailable; try again shortly")]
    Unavailable(#[source] anyhow::Error),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        if let ApiError::Unavailable(cause) = self {
            tracing::error!(error = %format!("{cause:#}"), "API request failed");
        }
        let status = self.status_code();
        let mut response = HttpResponse::build(status);
        response.content_type("application/problem+json");
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        }))
    }
}

/// Registers every route on an actix `App`.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .service(
            web::scope("/v1")
                .wrap(from_fn(require_api_key))
                .route("/messages/{id}", web::get().to(message_history)),
        );
}

/// The middleware every `/v1` request passes: a valid, unrevoked key or 401.
async fn require_api_key(
    request: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = request
        .app_data::<web::Data<ApiState>>()
        .cloned()
        .ok_or_else(|| ApiError::Unavailable(anyhow::anyhow!("API state missing")))?;
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_owned())
        .ok_or(ApiError::Unauthorized)?;
    let principal = with_deadline(state.db_timeout, "authenticate", async {
        let mut conn = state.pool.get().await?;
        keys::authenticate(&mut conn, &presented).await
    })
    .await
    .map_err(ApiError::Unavailable)?
    .ok_or(ApiError::Unauthorized)?;
    request.extensions_mut().insert(principal);
    next.call(request).await
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    let database = with_deadline(Duration::from_secs(2), "readiness", async {
        let mut conn = state.pool.get().await?;
        diesel::sql_query("SELECT 1").execute(&mut conn).await?;
        Ok(())
    })
    .await
    .is_ok();
    let broker = AtomicBool::load(&state.broker_ready, Ordering::Relaxed);
    let status = if database && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    HttpResponse::build(status).json(serde_json::json!({
        "status": word(database && broker),
        "database": word(database),
        "broker": word(broker),
    }))
}

/// One event of a history, as the API shows it.
/// (type, occurred_at, recorded_at, source, seq, details) of one history event.
type EventRow = (
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    String,
    i32,
    serde_json::Value,
    Option<String>,
    Option<String>,
);

#[derive(Debug, Serialize)]
pub struct EventView {
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub source: String,
    pub seq: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_event_id: Option<String>,
    pub details: serde_json::Value,
}

/// What happened to an email, at a glance. Counts and first times are sums and minimums, so
/// they do not depend on the order events arrived in.
#[derive(Debug, Serialize)]
pub struct SummaryView {
    pub status: String,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub open_count: i32,
    pub click_count: i32,
    pub first_opened_at: Option<DateTime<Utc>>,
    pub first_clicked_at: Option<DateTime<Utc>>,
    /// The details of the bounce that decided the status, when it bounced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounce: Option<serde_json::Value>,
}

/// An email and its history.
#[derive(Debug, Serialize)]
pub struct MessageView {
    pub id: Uuid,
    pub request_id: String,
    pub tenant: String,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub summary: SummaryView,
    pub events: Vec<EventView>,
}

type SummaryRow = (
    Option<String>,
    Option<String>,
    i32,
    i32,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

type MessageRow = (
    Uuid,
    String,
    serde_json::Value,
    String,
    DateTime<Utc>,
    String,
    serde_json::Value,
    String,
    Vec<String>,
    serde_json::Value,
);

async fn message_history(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound(format!("no email with id {:?}", path.as_str()));
    let id = Uuid::parse_str(&path).map_err(|_| not_found())?;
    let found = with_deadline(state.db_timeout, "message history", async {
        let mut conn = state.pool.get().await?;
        let row: Option<MessageRow> = emails::table
            .inner_join(requests::table)
            .filter(emails::id.eq(id))
            .select((
                emails::id,
                emails::tenant,
                emails::recipient,
                emails::status,
                emails::created_at,
                requests::request_key,
                requests::from_address,
                requests::subject,
                requests::tags,
                requests::metadata,
            ))
            .first(&mut conn)
            .await
            .optional()?;
        let Some(row) = row else { return Ok(None) };
        if !principal.may_see(&row.1) {
            return Ok(None);
        }
        let summary: SummaryRow = emails::table
            .filter(emails::id.eq(id))
            .select((
                emails::provider,
                emails::provider_message_id,
                emails::open_count,
                emails::click_count,
                emails::first_opened_at,
                emails::first_clicked_at,
            ))
            .first(&mut conn)
            .await?;
        let history: Vec<EventRow> = events::table
            .filter(events::email_id.eq(id))
            .order((events::occurred_at, events::lifecycle_rank, events::seq))
            .select((
                events::event_type,
                events::occurred_at,
                events::recorded_at,
                events::source,
                events::seq,
                events::details,
                events::provider,
                events::provider_event_id,
            ))
            .load(&mut conn)
            .await?;
        Ok(Some((row, summary, history)))
    })
    .await
    .map_err(ApiError::Unavailable)?;
    let Some((row, summary, history)) = found else {
        return Err(not_found());
    };
    let (id, tenant, recipient, status, created_at, request_key, from, subject, tags, metadata) =
        row;
    let address = |value: serde_json::Value| {
        serde_json::from_value::<Address>(value)
            .map(|a| a.to_string())
            .unwrap_or_default()
    };
    Ok(HttpResponse::Ok().json(MessageView {
        id,
        request_id: request_key,
        tenant,
        from: address(from),
        to: address(recipient),
        subject,
        status: status.clone(),
        created_at,
        tags,
        metadata: serde_json::from_value(metadata).unwrap_or_default(),
        summary: SummaryView {
            bounce: (status == "bounced")
                .then(|| {
                    history
                        .iter()
                        .rev()
                        .find(|e| e.0 == "bounced")
                        .map(|e| e.5.clone())
                })
                .flatten(),
            status,
            provider: summary.0,
            provider_message_id: summary.1,
            open_count: summary.2,
            click_count: summary.3,
            first_opened_at: summary.4,
            first_clicked_at: summary.5,
        },
        events: history
            .into_iter()
            .map(
                |(
                    event_type,
                    occurred_at,
                    recorded_at,
                    source,
                    seq,
                    details,
                    provider,
                    provider_event_id,
                )| EventView {
                    event_type,
                    occurred_at,
                    recorded_at,
                    source,
                    seq,
                    provider,
                    provider_event_id,
                    details,
                },
            )
            .collect(),
    }))
}
