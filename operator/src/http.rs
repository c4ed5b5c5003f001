//! The operator's HTTP API.
//!
//! Every path under `/v1` requires an API key (`Authorization: Bearer mtk_…`), enforced by one
//! middleware on the whole scope, so a new endpoint cannot be public by accident. The only
//! public paths are listed in [`PUBLIC_PATHS`] (and in README.md, "HTTP API"): the health
//! endpoints and the OpenAPI document (`crate::openapi`), registered outside the keyed scope.
//! Every handler carries a `#[utoipa::path]` annotation listing its parameters and answers.
//!
//! Errors are `application/problem+json` (RFC 9457). Internal causes are logged once here and
//! never sent to the client. Another tenant's email answers 404, exactly like an unknown one.

use crate::audit;
use crate::db::{DbPool, with_deadline};
use crate::keys::{self, Principal, Role};
use crate::schema::{emails, events, requests};
use crate::suppressions::{self, Suppression};
use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpMessage, HttpResponse, ResponseError, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use mailtrail_broker::Publisher;
use mailtrail_shared::address::Address;
use mailtrail_shared::topology::Topology;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// The paths that answer without an API key: the health endpoints
/// (`mailtrail_runtime::HEALTH_PATHS`) and the OpenAPI document. Everything else needs one; the
/// document marks exactly these `security: []`.
pub const PUBLIC_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    mailtrail_runtime::METRICS_PATH,
    crate::openapi::OPENAPI_PATH,
    crate::sessions::SIGN_IN_PATH,
];

/// The publisher of the running broker session, filled by each session and emptied when it
/// ends: the HTTP server outlives sessions.
pub type PublisherSlot = Arc<tokio::sync::RwLock<Option<Publisher>>>;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    pub pool: DbPool,
    pub db_timeout: Duration,
    /// Set while the operator holds a working broker session.
    pub broker_ready: Arc<AtomicBool>,
    /// For replays of dead letters; `None` while there is no broker session.
    pub publisher: PublisherSlot,
    /// Queue names (where a dead letter goes back to).
    pub topology: Topology,
    /// The operator's broker user: a replayed mailbox request is published as this user, with
    /// its original publisher in a header the intake believes only from this user.
    pub broker_user: String,
    /// How the history page's sessions are made (`crate::sessions`).
    pub sessions: crate::sessions::SessionSettings,
}

/// An API error, rendered as problem+json.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "a valid API key is required: send `Authorization: Bearer <key>`, or sign in on the \
         history page (POST /v1/sign-in)"
    )]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// A documented path asked with a method it does not serve; the methods it does serve.
    #[error("this path does not serve this method; it serves {}", .0.join(", "))]
    MethodNotAllowed(Vec<String>),
    #[error("the database is unavailable; try again shortly")]
    Unavailable(#[source] anyhow::Error),
    #[error("the broker is unavailable; try again shortly")]
    BrokerUnavailable(#[source] anyhow::Error),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) | ApiError::BrokerUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        if let ApiError::Unavailable(cause) | ApiError::BrokerUnavailable(cause) = self {
            tracing::error!(error = %format!("{cause:#}"), "API request failed");
        }
        let status = self.status_code();
        let mut response = HttpResponse::build(status);
        response.content_type("application/problem+json");
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let ApiError::MethodNotAllowed(allowed) = self {
            response.insert_header(("Allow", allowed.join(", ")));
        }
        response.json(crate::openapi::Problem {
            problem_type: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
        })
    }
}

/// actix refuses an over-size body itself (413, in plain text) before any handler runs: the
/// answer becomes the same problem+json as every other error. Wrapped around the whole app.
pub fn too_large_as_problem<B>(
    response: ServiceResponse<B>,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    use actix_web::middleware::ErrorHandlerResponse;
    let is_problem = response
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    }
    let (request, _) = response.into_parts();
    let status = StatusCode::PAYLOAD_TOO_LARGE;
    let problem = HttpResponse::build(status)
        .content_type("application/problem+json")
        .json(crate::openapi::Problem {
            problem_type: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail: "the request body is larger than the API accepts".to_owned(),
        });
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(request, problem).map_into_right_body(),
    ))
}

/// Registers every route on an actix `App`.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .default_service(web::to(unmatched))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route(mailtrail_runtime::METRICS_PATH, web::get().to(metrics))
        // Public, so registered before the keyed scope (which would match it first otherwise).
        .route(
            crate::openapi::OPENAPI_PATH,
            web::get().to(crate::openapi::document),
        )
        .route(
            crate::sessions::SIGN_IN_PATH,
            web::post().to(crate::sessions::sign_in),
        )
        .configure(crate::page::routes)
        .service(
            web::scope("/v1")
                // Both run after the key check (the last `wrap` runs first).
                .wrap(from_fn(reject_nul))
                .wrap(from_fn(documented_method))
                .wrap(from_fn(require_api_key))
                // A query string a handler's type cannot take (`limit=abc`, a number too large)
                // is a 400 problem like every other error, not actix's plain-text answer.
                .app_data(web::QueryConfig::default().error_handler(|error, _| {
                    ApiError::BadRequest(format!("invalid query string: {error}")).into()
                }))
                .default_service(web::to(unmatched))
                .configure(crate::dead_letter_api::routes)
                .configure(crate::search_api::routes)
                .configure(crate::stats_api::routes)
                .route("/messages/{id}", web::get().to(message_history))
                .route("/messages/{id}", web::delete().to(cancel_message))
                .route("/session", web::get().to(crate::sessions::current))
                .route("/sign-out", web::post().to(crate::sessions::sign_out))
                .route("/audit", web::get().to(list_audit))
                .route("/suppressions", web::get().to(list_suppressions))
                .route("/suppressions", web::post().to(add_suppression))
                .route(
                    "/suppressions/{tenant}/{address}",
                    web::get().to(get_suppression),
                )
                .route(
                    "/suppressions/{tenant}/{address}",
                    web::delete().to(remove_suppression),
                ),
        );
}

/// What a request no route takes gets, as a problem: 405 with `Allow` on a documented path asked
/// with another method (`openapi::allowed_methods`), else 404. Under `/v1` only with a key.
async fn unmatched(request: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(match crate::openapi::allowed_methods(request.path()) {
        Some(allowed) => ApiError::MethodNotAllowed(allowed),
        None => ApiError::NotFound(format!("no such path: {:?}", request.path())),
    })
}

/// A method the document does not list for a path is a 405 (with `Allow`) even where a route
/// would take it: `/v1/messages/export` is a path of its own, so a DELETE there is not a cancel
/// of an email with id `export` (a 404), and `GET /v1/dead-letters/replay` is not a look-up.
async fn documented_method(
    request: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Some(allowed) = crate::openapi::allowed_methods(request.path())
        && !allowed.iter().any(|m| m == request.method().as_str())
    {
        return Err(ApiError::MethodNotAllowed(allowed).into());
    }
    next.call(request).await
}

/// PostgreSQL text cannot hold NUL, so no tenant, address, tag or other value with one exists or
/// can be stored, and a query given one fails (it was a 503). A NUL (`%00`) in the path of a
/// `/v1` request is a 404 (nothing has that name), in its query string a 400, before any handler
/// sees it. JSON bodies are checked by their handlers.
async fn reject_nul(
    request: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let nul = |text: &str| text.contains("%00");
    if nul(request.path()) {
        return Err(ApiError::NotFound(format!("nothing named {:?}", request.path())).into());
    }
    if nul(request.query_string()) {
        return Err(ApiError::BadRequest(
            "a query parameter contains a NUL character (%00), which no value can hold".into(),
        )
        .into());
    }
    next.call(request).await
}

/// The middleware every `/v1` request passes: a valid, unrevoked key, or (without an
/// `Authorization` header) the history page's session cookie, or 401.
async fn require_api_key(
    request: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = request
        .app_data::<web::Data<ApiState>>()
        .cloned()
        .ok_or_else(|| ApiError::Unavailable(anyhow::anyhow!("API state missing")))?;
    let principal = match request.headers().get("authorization") {
        Some(header) => {
            let presented = header
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|v| v.trim().to_owned())
                .ok_or(ApiError::Unauthorized)?;
            with_deadline(state.db_timeout, "authenticate", async {
                let mut conn = state.pool.get().await?;
                keys::authenticate(&mut conn, &presented).await
            })
            .await
            .map_err(ApiError::Unavailable)?
            .ok_or(ApiError::Unauthorized)?
        }
        None => crate::sessions::authenticate(&state, &request)
            .await?
            .ok_or(ApiError::Unauthorized)?,
    };
    request.extensions_mut().insert(principal);
    next.call(request).await
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is alive", body = serde_json::Value)))]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition of this process's metrics (docs/metrics.md)", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics() -> HttpResponse {
    mailtrail_runtime::metrics_endpoint().await
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "The database and the broker are reachable", body = serde_json::Value),
        (status = 503, description = "Not ready: `database` and `broker` say which is unavailable", body = serde_json::Value, content_type = "application/json"),
    ))]
pub(crate) async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
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
    Option<String>,
);

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    /// The W3C trace id of the hop that reported the event (32 hex digits): search the services'
    /// logs for it. Absent when the report carried no trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// What happened to an email, at a glance. Counts and first times are sums and minimums, so
/// they do not depend on the order events arrived in.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "The email id")),
    responses(
        (status = 200, description = "The email's summary and its events in timeline order", body = MessageView),
        (status = 404, description = "Unknown, or another tenant's (never 403 for another tenant)"),
    ))]
pub(crate) async fn message_history(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound(format!("no email with id {:?}", path.as_str()));
    let id = Uuid::parse_str(&path).map_err(|_| not_found())?;
    let found = with_deadline(state.db_timeout, "message history", async {
        let mut conn = state.pool.get().await?;
        // One snapshot: the summary status and the events must tell the same story even while
        // the relay or the tracker commits between the queries.
        conn.build_transaction()
            .read_only()
            .repeatable_read()
            .run::<_, anyhow::Error, _>(async |conn| {
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
                    .first(conn)
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
                    .first(conn)
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
                        events::trace_id,
                    ))
                    .load(conn)
                    .await?;
                Ok(Some((row, summary, history)))
            })
            .await
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
                    trace_id,
                )| EventView {
                    event_type,
                    occurred_at,
                    recorded_at,
                    source,
                    seq,
                    provider,
                    provider_event_id,
                    details,
                    trace_id,
                },
            )
            .collect(),
    }))
}

/// `DELETE /v1/messages/{id}`: withdraws an email whose job has not left yet (a scheduled one,
/// typically). Cancelling twice answers 200 with `changed: false`; an email already on its way
/// answers 409 with its status.
#[utoipa::path(delete, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = uuid::Uuid, Path, description = "The email id")),
    responses(
        (status = 200, description = "Cancelled: `{id, status: \"cancelled\", changed}` (`changed` false when it already was)", body = Cancelled),
        (status = 403, description = "A read key (on data it can see; another tenant's is a 404): this needs an admin key"),
        (status = 404, description = "Unknown, or another tenant's (never 403 for another tenant)"),
        (status = 409, description = "Its job was already handed to the dispatcher (the problem names its status)"),
    ))]
pub(crate) async fn cancel_message(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound(format!("no email with id {:?}", path.as_str()));
    let id = Uuid::parse_str(&path).map_err(|_| not_found())?;
    // A read key changes nothing, but another tenant's email answers 404 like an unknown one
    // (never 403 for another tenant's data): only an email in its sight gets the 403.
    if principal.role != Role::Admin {
        let tenant = with_deadline(state.db_timeout, "look up an email", async {
            let mut conn = state.pool.get().await?;
            Ok(emails::table
                .find(id)
                .select(emails::tenant)
                .first::<String>(&mut conn)
                .await
                .optional()?)
        })
        .await
        .map_err(ApiError::Unavailable)?;
        if !tenant.is_some_and(|tenant| principal.may_see(&tenant)) {
            return Err(not_found());
        }
        require_admin(&principal, "cancelling an email")?;
    }
    let outcome = with_deadline(state.db_timeout, "cancel an email", async {
        let mut conn = state.pool.get().await?;
        crate::scheduling::cancel(&mut conn, &principal, id, Utc::now()).await
    })
    .await
    .map_err(ApiError::Unavailable)?;
    use crate::scheduling::Cancellation;
    let changed = match outcome {
        Cancellation::NotFound => return Err(not_found()),
        Cancellation::TooLate { status } => {
            return Err(ApiError::Conflict(format!(
                "email {id} can no longer be cancelled: its status is {status:?} (only an \
                 email whose job has not left, such as a scheduled one, can be)"
            )));
        }
        Cancellation::AlreadyCancelled => false,
        Cancellation::Cancelled { .. } => true,
    };
    if changed {
        tracing::info!(email_id = %id, key = %principal.key_id, "email cancelled through the API");
    }
    Ok(HttpResponse::Ok().json(Cancelled {
        id,
        status: "cancelled",
        changed,
    }))
}

/// The answer of a cancel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Cancelled {
    id: Uuid,
    /// Always `cancelled`.
    #[schema(value_type = String, pattern = "^cancelled$")]
    status: &'static str,
    /// False when it already was cancelled.
    changed: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<i64>,
    /// An entry id: the page holds older entries.
    before: Option<i64>,
}

/// `GET /v1/audit?limit=&before=` (admin key): who changed what, newest first; a tenant key sees
/// its tenant's entries only. `next` is the `before` of the following page.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "1–500, default 50"),
        ("before" = Option<i64>, Query, description = "An entry id: the page holds older entries (the `next` of the previous page)"),
    ),
    responses(
        (status = 200, description = "`{items, next}`, newest first; a tenant key sees its tenant's entries only", body = AuditPage),
        (status = 400, description = "An invalid `limit` or `before`"),
        (status = 403, description = "A read key: the audit log needs an admin key"),
    ))]
pub(crate) async fn list_audit(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&principal, "reading the audit log")?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let entries = with_deadline(state.db_timeout, "read the audit log", async {
        let mut conn = state.pool.get().await?;
        Ok(audit::list(&mut conn, &principal, query.before, limit).await?)
    })
    .await
    .map_err(ApiError::Unavailable)?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(HttpResponse::Ok().json(AuditPage {
        items: entries,
        next,
    }))
}

/// A page of the audit log: `next` is the `before` of the following page, null on the last.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AuditPage {
    items: Vec<audit::AuditEntry>,
    next: Option<i64>,
}

// Suppressions: per tenant, on canonical addresses. A read key may list and look up; adding and
// removing need an admin key. A tenant-scoped key sees and changes only its tenant: another
// tenant's entries answer 404, like unknown ones.

/// Entries per page of every listing API, unless `limit` says otherwise (1 to [`MAX_PAGE`]).
pub(crate) const DEFAULT_PAGE: i64 = 50;
pub(crate) const MAX_PAGE: i64 = 500;

/// A listing's `limit` parameter: [`DEFAULT_PAGE`] when absent, else 1 to [`MAX_PAGE`].
pub(crate) fn page_limit(text: Option<&str>) -> Result<i64, ApiError> {
    let limit = text.map_or(Ok(DEFAULT_PAGE), |t| t.trim().parse::<i64>());
    match limit {
        Ok(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        ))),
    }
}

/// A time parameter (`since`, `until`, …): RFC 3339 with an explicit offset, absent when empty.
pub(crate) fn query_time(
    name: &str,
    value: Option<String>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "{name} must be an RFC 3339 time with an offset, such as \
                         2026-12-01T00:00:00Z"
                    ))
                })
        })
        .transpose()
}

/// One page of entries, and the cursor of the next (absent on the last page).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SuppressionPage {
    items: Vec<SuppressionView>,
    next: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SuppressionView {
    #[serde(flatten)]
    entry: Suppression,
    /// Whether it suppresses mail now (not expired).
    active: bool,
}

impl From<Suppression> for SuppressionView {
    fn from(entry: Suppression) -> SuppressionView {
        SuppressionView {
            active: entry.is_active(Utc::now()),
            entry,
        }
    }
}

/// The keyset cursor: (tenant, address) of the last entry shown, opaque to clients.
fn encode_cursor(tenant: &str, address: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{tenant}\n{address}"))
}

fn decode_cursor(cursor: &str) -> Option<(String, String)> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (tenant, address) = text.split_once('\n')?;
    Some((tenant.to_owned(), address.to_owned()))
}

/// `change` names what the caller tried, for the error ("changing suppressions").
pub(crate) fn require_admin(principal: &Principal, change: &str) -> Result<(), ApiError> {
    match principal.role {
        Role::Admin => Ok(()),
        Role::Read => Err(ApiError::Forbidden(format!(
            "this key may only read; {change} needs an admin key"
        ))),
    }
}

/// The canonical form of an address given in a path or body.
fn canonical(address: &str) -> Result<String, String> {
    mailtrail_shared::address::parse_address(address)
        .map(|a| a.canonical)
        .map_err(|e| e.to_string())
}

#[utoipa::path(get, path = "/v1/suppressions", tag = "suppressions",
    params(
        ("tenant" = Option<String>, Query, description = "Only this tenant (another tenant than a scoped key's answers an empty page)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "1–500, default 50"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "`{items, next}` in (tenant, address) order", body = SuppressionPage),
        (status = 400, description = "An invalid `limit` or `after`"),
    ))]
pub(crate) async fn list_suppressions(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    query: web::Query<BTreeMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    // `tenant`, `limit` and `after` (the `next` cursor of the previous page).
    let limit = page_limit(query.get("limit").map(String::as_str))?;
    let after = match query.get("after").map(String::as_str) {
        None | Some("") => None,
        Some(cursor) => Some(
            decode_cursor(cursor)
                .ok_or_else(|| ApiError::BadRequest("after is not a cursor of this API".into()))?,
        ),
    };
    // A scoped key lists its own tenant; asking for another one shows nothing.
    let tenant = match (&principal.tenant, query.get("tenant").map(String::as_str)) {
        (Some(own), Some(asked)) if own != asked => {
            return Ok(HttpResponse::Ok().json(SuppressionPage {
                items: Vec::new(),
                next: None,
            }));
        }
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked.filter(|t| !t.is_empty()).map(str::to_owned),
    };
    let entries = with_deadline(state.db_timeout, "list suppressions", async {
        let mut conn = state.pool.get().await?;
        let after = after.as_ref().map(|(t, a)| (t.as_str(), a.as_str()));
        Ok(suppressions::list(&mut conn, tenant.as_deref(), after, limit + 1).await?)
    })
    .await
    .map_err(ApiError::Unavailable)?;
    let more = entries.len() as i64 > limit;
    let items: Vec<Suppression> = entries.into_iter().take(limit as usize).collect();
    let next = more
        .then(|| items.last().map(|e| encode_cursor(&e.tenant, &e.address)))
        .flatten();
    Ok(HttpResponse::Ok().json(SuppressionPage {
        items: items.into_iter().map(SuppressionView::from).collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/v1/suppressions/{tenant}/{address}", tag = "suppressions",
    params(
        ("tenant" = String, Path, description = "The tenant"),
        ("address" = String, Path, description = "The address, in any form (canonicalised)"),
    ),
    responses(
        (status = 200, description = "The entry", body = SuppressionView),
        (status = 404, description = "Not suppressed, or another tenant's"),
    ))]
pub(crate) async fn get_suppression(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, address) = path.into_inner();
    let not_found = || ApiError::NotFound(format!("{address:?} is not suppressed for {tenant:?}"));
    if !principal.may_see(&tenant) {
        return Err(not_found());
    }
    let Ok(canonical) = canonical(&address) else {
        return Err(not_found());
    };
    let found = with_deadline(state.db_timeout, "look up a suppression", async {
        let mut conn = state.pool.get().await?;
        Ok(suppressions::get(&mut conn, &tenant, &canonical).await?)
    })
    .await
    .map_err(ApiError::Unavailable)?;
    match found {
        Some(entry) => Ok(HttpResponse::Ok().json(SuppressionView::from(entry))),
        None => Err(not_found()),
    }
}

/// The body of `POST /v1/suppressions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct NewSuppression {
    /// Not empty.
    #[schema(min_length = 1, example = "acme")]
    tenant: String,
    /// An email address, in any form (canonicalised).
    #[schema(example = "ann@example.com")]
    address: String,
    /// 1 to 200 characters (default `manual`).
    #[schema(min_length = 1, max_length = 200)]
    reason: Option<String>,
    /// When the entry stops suppressing mail (RFC 3339); never by default.
    expires_at: Option<DateTime<Utc>>,
}

const MAX_REASON_CHARS: usize = 200;

#[utoipa::path(post, path = "/v1/suppressions", tag = "suppressions",
    request_body(content = NewSuppression, content_type = "application/json",
        description = "`{\"tenant\", \"address\", \"reason\"?, \"expires_at\"?}`"),
    responses(
        (status = 201, description = "Added (or replaced)", body = SuppressionView),
        (status = 400, description = "An unreadable body, an empty tenant, an invalid address or reason"),
        (status = 403, description = "A read key (on data it can see; another tenant's is a 404): this needs an admin key"),
        (status = 404, description = "Another tenant's (as if it did not exist)"),
    ))]
pub(crate) async fn add_suppression(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let new: NewSuppression = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"tenant\", \"address\", \"reason\"}}: {e}"
        ))
    })?;
    if new.tenant.trim().is_empty() {
        return Err(ApiError::BadRequest("tenant is empty".into()));
    }
    // The database cannot store a NUL (passing one was a 503).
    if new.tenant.contains('\0') || new.reason.as_deref().is_some_and(|r| r.contains('\0')) {
        return Err(ApiError::BadRequest(
            "tenant and reason may not contain NUL characters".into(),
        ));
    }
    // Another tenant answers like an unknown one: a key learns nothing about tenants it
    // cannot see.
    if !principal.may_see(&new.tenant) {
        return Err(ApiError::NotFound(format!(
            "no tenant {:?} for this key",
            new.tenant
        )));
    }
    require_admin(&principal, "changing suppressions")?;
    let address = canonical(&new.address)
        .map_err(|e| ApiError::BadRequest(format!("address is not valid: {e}")))?;
    let reason = new.reason.as_deref().map(str::trim).unwrap_or("manual");
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::BadRequest(format!(
            "reason must be 1 to {MAX_REASON_CHARS} characters"
        )));
    }
    let entry = with_deadline(state.db_timeout, "add a suppression", async {
        let mut conn = state.pool.get().await?;
        conn.transaction::<_, anyhow::Error, _>(async |conn| {
            let entry =
                suppressions::put(conn, &new.tenant, &address, reason, new.expires_at).await?;
            audit::record(
                conn,
                audit::Actor::Key(&principal),
                "suppression.add",
                Some(&entry.tenant),
                &entry.address,
                serde_json::json!({"reason": entry.reason, "expires_at": entry.expires_at}),
            )
            .await?;
            Ok(entry)
        })
        .await
    })
    .await
    .map_err(ApiError::Unavailable)?;
    tracing::info!(tenant = %entry.tenant, address = %entry.address, key = %principal.key_id,
        "suppression added through the API");
    Ok(HttpResponse::Created().json(SuppressionView::from(entry)))
}

#[utoipa::path(delete, path = "/v1/suppressions/{tenant}/{address}", tag = "suppressions",
    params(
        ("tenant" = String, Path, description = "The tenant"),
        ("address" = String, Path, description = "The address, in any form (canonicalised)"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "A read key (on data it can see; another tenant's is a 404): this needs an admin key"),
        (status = 404, description = "Not suppressed, or another tenant's"),
    ))]
pub(crate) async fn remove_suppression(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, address) = path.into_inner();
    let not_found = || ApiError::NotFound(format!("{address:?} is not suppressed for {tenant:?}"));
    if !principal.may_see(&tenant) {
        return Err(not_found());
    }
    require_admin(&principal, "changing suppressions")?;
    let Ok(canonical) = canonical(&address) else {
        return Err(not_found());
    };
    let removed = with_deadline(state.db_timeout, "remove a suppression", async {
        let mut conn = state.pool.get().await?;
        conn.transaction::<_, anyhow::Error, _>(async |conn| {
            let removed = suppressions::remove(conn, &tenant, &canonical).await?;
            if removed {
                audit::record(
                    conn,
                    audit::Actor::Key(&principal),
                    "suppression.remove",
                    Some(&tenant),
                    &canonical,
                    serde_json::json!({}),
                )
                .await?;
            }
            Ok(removed)
        })
        .await
    })
    .await
    .map_err(ApiError::Unavailable)?;
    if !removed {
        return Err(not_found());
    }
    tracing::info!(%tenant, address = %canonical, key = %principal.key_id,
        "suppression removed through the API");
    Ok(HttpResponse::NoContent().finish())
}
