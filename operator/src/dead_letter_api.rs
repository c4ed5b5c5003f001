//! The dead-letter admin API, under `/v1` (so behind the key middleware):
//!
//! * `GET /v1/dead-letters`: a page, newest first by `first_seen_at`, filtered by `tenant`,
//!   `reason`, `source_queue`, `since`, `until` and `state` (`open`, `replayed`, `discarded`);
//! * `GET /v1/dead-letters/{id}`: one, with its body (text when UTF-8, else base64) and headers;
//! * `POST /v1/dead-letters/{id}/replay` (admin): republished to its source queue with a
//!   confirm, then recorded; the second replay of the same dead letter publishes nothing;
//! * `POST /v1/dead-letters/replay` (admin): the open ones matching the same filters, at most
//!   [`MAX_BULK_REPLAY`] per call;
//! * `POST /v1/dead-letters/{id}/discard` (admin): closed with a reason, never replayed.
//!
//! Scoping: a tenant key sees only its tenant's dead letters; one without a tenant (a message
//! nobody could attribute) is visible to all-tenant keys only. Anything out of sight answers 404,
//! like an unknown id.

use crate::audit;
use crate::db::with_deadline;
use crate::dead_letter_consumer::replay_target;
use crate::dead_letters::{HEADERS_FORMAT, headers_from_json};
use crate::history::{NewEvent, record_events};
use crate::http::{ApiError, ApiState, page_limit, require_admin};
use crate::intake::SERVICE;
use crate::keys::{Principal, Role};
use crate::schema::dead_letters;
use actix_web::{HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString};
use mailtrail_broker::{OutgoingMessage, PublishError, Publisher};
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::headers;
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::topology::{Queue, Topology};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Most dead letters one bulk replay republishes.
pub const MAX_BULK_REPLAY: i64 = 1000;
/// Dead letters republished per transaction (and per batch of confirms) in a bulk replay.
const REPLAY_CHUNK: i64 = 100;
const MAX_REASON_CHARS: usize = 500;

/// The headers a set-aside copy gained; a replay takes them off again.
const SET_ASIDE_HEADERS: &[&str] = &[
    headers::REASON,
    headers::REASON_DETAIL,
    headers::SOURCE_QUEUE,
    headers::SET_ASIDE_BY,
    headers::SET_ASIDE_AT,
    headers::DEAD_LETTER_ID,
    headers::ORIGINAL_MESSAGE_ID,
    headers::ORIGINAL_USER_ID,
    headers::REPLAY_OF,
    // The broker's record of its own dead-lettering.
    "x-death",
];

/// Registers the routes (inside the `/v1` scope).
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/dead-letters", web::get().to(list))
        .route("/dead-letters/replay", web::post().to(replay_many))
        .route("/dead-letters/{id}", web::get().to(show))
        .route("/dead-letters/{id}/replay", web::post().to(replay_one))
        .route("/dead-letters/{id}/discard", web::post().to(discard));
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = dead_letters)]
struct Row {
    id: Uuid,
    source_queue: String,
    reason: String,
    detail: String,
    tenant: Option<String>,
    request_key: Option<String>,
    email_id: Option<Uuid>,
    set_aside_by: String,
    attempts: i32,
    first_seen_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
    replay_count: i32,
    replayed_by: Option<String>,
    discarded_at: Option<DateTime<Utc>>,
    discard_reason: Option<String>,
    discarded_by: Option<String>,
}

impl Row {
    fn state(&self) -> &'static str {
        if self.discarded_at.is_some() {
            "discarded"
        } else if self.replayed_at.is_some() {
            "replayed"
        } else {
            "open"
        }
    }
}

/// A dead letter as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = DeadLetter)]
struct View {
    id: Uuid,
    /// `open`, `replayed` or `discarded`.
    #[schema(value_type = String, pattern = "^(open|replayed|discarded)$")]
    state: &'static str,
    source_queue: String,
    /// Whether it can be replayed: it came from a queue mailtrail consumes.
    replayable: bool,
    reason: String,
    detail: String,
    tenant: Option<String>,
    request_key: Option<String>,
    email_id: Option<Uuid>,
    set_aside_by: String,
    attempts: i32,
    first_seen_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    replay_count: i32,
    replayed_at: Option<DateTime<Utc>>,
    replayed_by: Option<String>,
    /// Set aside again after its replay: the replay did not fix it (it is not replayed twice).
    seen_after_replay: bool,
    discarded_at: Option<DateTime<Utc>>,
    discard_reason: Option<String>,
    discarded_by: Option<String>,
    body_bytes: i32,
}

impl View {
    fn new(row: Row, body_bytes: i32, topology: &Topology) -> View {
        View {
            state: row.state(),
            replayable: replay_target(topology, &row.source_queue).is_some(),
            id: row.id,
            source_queue: row.source_queue,
            reason: row.reason,
            detail: row.detail,
            tenant: row.tenant,
            request_key: row.request_key,
            email_id: row.email_id,
            set_aside_by: row.set_aside_by,
            attempts: row.attempts,
            first_seen_at: row.first_seen_at,
            last_seen_at: row.last_seen_at,
            replay_count: row.replay_count,
            seen_after_replay: row.replayed_at.is_some_and(|at| row.last_seen_at > at),
            replayed_at: row.replayed_at,
            replayed_by: row.replayed_by,
            discarded_at: row.discarded_at,
            discard_reason: row.discard_reason,
            discarded_by: row.discarded_by,
            body_bytes,
        }
    }
}

/// Whether `principal` may see a dead letter of `tenant`: one without a tenant only with an
/// all-tenant key.
fn may_see(principal: &Principal, tenant: Option<&str>) -> bool {
    match (&principal.tenant, tenant) {
        (None, _) => true,
        (Some(own), Some(tenant)) => own == tenant,
        (Some(_), None) => false,
    }
}

/// The filters of the list and of the bulk replay.
#[derive(Debug, Default)]
struct Filters {
    tenant: Option<String>,
    reason: Option<String>,
    source_queue: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    state: Option<&'static str>,
}

impl Filters {
    /// Reads the query; `None` when the key's scope excludes everything asked for.
    fn read(
        principal: &Principal,
        query: &BTreeMap<String, String>,
    ) -> Result<Option<Filters>, ApiError> {
        let text = |name: &str| {
            query
                .get(name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let time = |name: &str| crate::http::query_time(name, text(name));
        let state = match text("state").as_deref() {
            None => None,
            Some("open") => Some("open"),
            Some("replayed") => Some("replayed"),
            Some("discarded") => Some("discarded"),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "state must be open, replayed or discarded".into(),
                ));
            }
        };
        let tenant = match (&principal.tenant, text("tenant")) {
            (Some(own), Some(asked)) if *own != asked => return Ok(None),
            (Some(own), _) => Some(own.clone()),
            (None, asked) => asked,
        };
        Ok(Some(Filters {
            tenant,
            reason: text("reason"),
            source_queue: text("source_queue"),
            since: time("since")?,
            until: time("until")?,
            state,
        }))
    }

    fn apply<'a>(
        &'a self,
        mut query: dead_letters::BoxedQuery<'a, diesel::pg::Pg>,
    ) -> dead_letters::BoxedQuery<'a, diesel::pg::Pg> {
        if let Some(tenant) = &self.tenant {
            query = query.filter(dead_letters::tenant.eq(tenant));
        }
        if let Some(reason) = &self.reason {
            query = query.filter(dead_letters::reason.eq(reason));
        }
        if let Some(source_queue) = &self.source_queue {
            query = query.filter(dead_letters::source_queue.eq(source_queue));
        }
        if let Some(since) = self.since {
            query = query.filter(dead_letters::first_seen_at.ge(since));
        }
        if let Some(until) = self.until {
            query = query.filter(dead_letters::first_seen_at.lt(until));
        }
        match self.state {
            Some("open") => {
                query = query
                    .filter(dead_letters::replayed_at.is_null())
                    .filter(dead_letters::discarded_at.is_null())
            }
            Some("replayed") => {
                query = query
                    .filter(dead_letters::replayed_at.is_not_null())
                    .filter(dead_letters::discarded_at.is_null())
            }
            Some(_) => query = query.filter(dead_letters::discarded_at.is_not_null()),
            None => {}
        }
        query
    }
}

/// The keyset cursor: (first_seen_at in microseconds, id) of the last item shown.
fn encode_cursor(row: &Row) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}\n{}",
        row.first_seen_at.timestamp_micros(),
        row.id
    ))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (micros, id) = text.split_once('\n')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

fn body_size() -> diesel::expression::SqlLiteral<Integer> {
    diesel::dsl::sql::<Integer>("octet_length(body)")
}

/// A page of dead letters: `next` is the `after` of the following page, null on the last.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = DeadLetterPage)]
struct Page {
    items: Vec<View>,
    next: Option<String>,
}

#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead letters",
    params(
        ("tenant" = Option<String>, Query, description = "Only this tenant (another tenant than a scoped key's matches nothing)"),
        ("reason" = Option<String>, Query, description = "The reason it was set aside"),
        ("source_queue" = Option<String>, Query, description = "The queue it was taken from"),
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive, on `first_seen_at`"),
        ("until" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive"),
        ("state" = Option<String>, Query, pattern = "^(open|replayed|discarded)$", description = "`open`, `replayed` or `discarded`"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "1–500, default 50"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "`{items, next}`, newest first by `first_seen_at`", body = Page),
        (status = 400, description = "An unknown parameter or an invalid value"),
    ))]
pub(crate) async fn list(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    query: web::Query<BTreeMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.get("limit").map(String::as_str))?;
    let after = match query.get("after").map(String::as_str) {
        None | Some("") => None,
        Some(cursor) => Some(
            decode_cursor(cursor)
                .ok_or_else(|| ApiError::BadRequest("after is not a cursor of this API".into()))?,
        ),
    };
    let Some(filters) = Filters::read(&principal, &query)? else {
        return Ok(HttpResponse::Ok().json(Page {
            items: Vec::new(),
            next: None,
        }));
    };
    let scoped = principal.tenant.is_some();
    let rows: Vec<(Row, i32)> = with_deadline(state.db_timeout, "list dead letters", async {
        let mut conn = state.pool.get().await?;
        let mut query = filters.apply(dead_letters::table.into_boxed());
        if scoped {
            // Without a tenant, a dead letter is for all-tenant keys only.
            query = query.filter(dead_letters::tenant.is_not_null());
        }
        if let Some((seen, id)) = after {
            query = query.filter(
                dead_letters::first_seen_at
                    .lt(seen)
                    .or(dead_letters::first_seen_at
                        .eq(seen)
                        .and(dead_letters::id.lt(id))),
            );
        }
        Ok(query
            .order((dead_letters::first_seen_at.desc(), dead_letters::id.desc()))
            .limit(limit + 1)
            .select((Row::as_select(), body_size()))
            .load(&mut conn)
            .await?)
    })
    .await
    .map_err(ApiError::Unavailable)?;
    let more = rows.len() as i64 > limit;
    let rows: Vec<(Row, i32)> = rows.into_iter().take(limit as usize).collect();
    let next = more
        .then(|| rows.last().map(|(row, _)| encode_cursor(row)))
        .flatten();
    Ok(HttpResponse::Ok().json(Page {
        items: rows
            .into_iter()
            .map(|(row, size)| View::new(row, size, &state.topology))
            .collect(),
        next,
    }))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no dead letter with id {id:?}"))
}

/// A read key changes nothing, but a dead letter out of its sight answers 404 like an unknown
/// one (never 403 for another tenant's data): only one it can see gets the 403.
async fn require_admin_for(
    state: &ApiState,
    principal: &Principal,
    id: Uuid,
    change: &str,
) -> Result<(), ApiError> {
    if principal.role == Role::Admin {
        return Ok(());
    }
    let tenant = with_deadline(state.db_timeout, "look up a dead letter", async {
        let mut conn = state.pool.get().await?;
        Ok(dead_letters::table
            .find(id)
            .select(dead_letters::tenant)
            .first::<Option<String>>(&mut conn)
            .await
            .optional()?)
    })
    .await
    .map_err(ApiError::Unavailable)?;
    match tenant {
        Some(tenant) if may_see(principal, tenant.as_deref()) => require_admin(principal, change),
        _ => Err(not_found(&id.to_string())),
    }
}

#[utoipa::path(get, path = "/v1/dead-letters/{id}", tag = "dead letters",
    params(("id" = uuid::Uuid, Path, description = "The dead letter id")),
    responses(
        (status = 200, description = "The dead letter with its body and message properties", body = serde_json::Value),
        (status = 404, description = "Unknown, or out of the key's scope"),
    ))]
pub(crate) async fn show(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&path).map_err(|_| not_found(&path))?;
    let found: Option<(Row, Vec<u8>, serde_json::Value)> =
        with_deadline(state.db_timeout, "show a dead letter", async {
            let mut conn = state.pool.get().await?;
            Ok(dead_letters::table
                .find(id)
                .select((Row::as_select(), dead_letters::body, dead_letters::headers))
                .first(&mut conn)
                .await
                .optional()?)
        })
        .await
        .map_err(ApiError::Unavailable)?;
    let Some((row, body, stored)) =
        found.filter(|(row, _, _)| may_see(&principal, row.tenant.as_deref()))
    else {
        return Err(not_found(&path));
    };
    let size = i32::try_from(body.len()).unwrap_or(i32::MAX);
    let (body, encoding) = match String::from_utf8(body) {
        Ok(text) => (text, "utf8"),
        Err(e) => (STANDARD.encode(e.into_bytes()), "base64"),
    };
    let mut view = serde_json::to_value(View::new(row, size, &state.topology))
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    view["body"] = serde_json::Value::String(body);
    view["body_encoding"] = serde_json::Value::String(encoding.to_owned());
    view["message"] = stored;
    Ok(HttpResponse::Ok().json(view))
}

/// What a replay found.
enum Replayed {
    NotFound,
    Discarded,
    NotReplayable(String),
    Already(Row),
    Now(Row, String),
}

/// The message a dead letter becomes again: its body and original headers (without the
/// set-aside ones) plus `x-mailtrail-replay-of`, persistent, to its source queue. A dispatch job
/// gets the next attempt number and a fresh retry budget: earlier attempts count as waits, and
/// its age starts again, so the dispatcher tries it instead of giving it up at once.
pub fn replay_message(
    topology: &Topology,
    queue: Queue,
    id: Uuid,
    body: &[u8],
    stored: &serde_json::Value,
    operator_user: &str,
) -> OutgoingMessage {
    // Rows from before typed headers hold `Debug` text: their headers are not sent again.
    let typed = stored["headers_format"].as_str() == Some(HEADERS_FORMAT);
    let mut original = stored["headers"]
        .as_object()
        .filter(|_| typed)
        .cloned()
        .unwrap_or_default();
    for name in SET_ASIDE_HEADERS {
        original.remove(*name);
    }
    // Only the replay itself may say who the original publisher was, never the message.
    original.remove(headers::ORIGINAL_PUBLISHER);
    let mut table = headers_from_json(&serde_json::Value::Object(original));
    table.insert(
        headers::REPLAY_OF.into(),
        AMQPValue::LongString(LongString::from(id.to_string())),
    );
    let mut body = body.to_vec();
    if matches!(queue, Queue::Dispatching | Queue::DispatchingPriority)
        && let Ok(job) = serde_json::from_slice::<DispatchJob>(&body)
    {
        let next = DispatchJob {
            attempt: job.attempt + 1,
            waits: job.attempt,
            first_attempt_at: None,
            ..job
        };
        if let Ok(rewritten) = serde_json::to_vec(&next) {
            body = rewritten;
            table.insert(
                headers::ATTEMPT.into(),
                AMQPValue::LongLongInt(i64::from(next.attempt)),
            );
        }
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_timestamp(Utc::now().timestamp().max(0) as u64)
        .with_headers(table);
    if let Some(message_id) = stored["message_id"].as_str() {
        properties = properties.with_message_id(message_id.into());
    }
    if let Some(content_type) = stored["content_type"].as_str() {
        properties = properties.with_content_type(content_type.into());
    }
    // A mailbox request keeps its original publisher for tenant binding: published as the
    // operator's own user (RabbitMQ checks it), which is the only one the intake believes
    // `x-mailtrail-original-publisher` from.
    if matches!(queue, Queue::Mailbox | Queue::MailboxPriority) {
        let mut table = properties.headers().clone().unwrap_or_default();
        if let Some(original) = stored["user_id"].as_str() {
            table.insert(
                headers::ORIGINAL_PUBLISHER.into(),
                AMQPValue::LongString(LongString::from(original)),
            );
        }
        properties = properties
            .with_headers(table)
            .with_user_id(operator_user.into());
    }
    OutgoingMessage {
        routing_key: topology.queue(queue),
        body,
        properties,
    }
}

/// Reopens the emails of replayed dispatch jobs, before they are published: records `queued`
/// for the new attempt (with the dead letter it came from) and takes a `failed` summary back to
/// `queued`, so the history reads failed → queued → dispatched and the summary follows the
/// retry instead of staying `failed`. The one place the summary moves down: a replay is an
/// admin's decision to try again. Done before the publish, in the replay's transaction, so a
/// fast dispatcher's `dispatched` (which waits for the email row) lands after it.
async fn reopen_replayed_jobs(
    conn: &mut AsyncPgConnection,
    topology: &Topology,
    replays: &[(Uuid, &OutgoingMessage)],
    principal: &Principal,
) -> anyhow::Result<()> {
    let jobs: Vec<(Uuid, DispatchJob, &str)> = replays
        .iter()
        .filter(|(_, m)| {
            matches!(
                topology.role_of(&m.routing_key),
                Some(Queue::Dispatching | Queue::DispatchingPriority)
            )
        })
        .filter_map(|(id, m)| {
            serde_json::from_slice::<DispatchJob>(&m.body)
                .ok()
                .map(|job| (*id, job, m.routing_key.as_str()))
        })
        .collect();
    if jobs.is_empty() {
        return Ok(());
    }
    let wanted: Vec<Uuid> = jobs.iter().map(|(_, job, _)| job.email_id).collect();
    // Purged by retention meanwhile: the job is replayed, there is no history to reopen.
    let known: Vec<Uuid> = crate::schema::emails::table
        .filter(crate::schema::emails::id.eq_any(&wanted))
        .select(crate::schema::emails::id)
        .load(conn)
        .await?;
    let now = Utc::now();
    let events: Vec<NewEvent> = jobs
        .iter()
        .filter(|(_, job, _)| known.contains(&job.email_id))
        .map(|(dead_letter, job, queue)| NewEvent {
            event_id: ids::dispatch_outcome_event_id(job.job_id, job.attempt, "queued"),
            email_id: job.email_id,
            event_type: EventType::Queued,
            occurred_at: now,
            source: SERVICE.to_owned(),
            provider: None,
            provider_event_id: None,
            provider_message_id: None,
            details: serde_json::json!({
                "job_id": job.job_id,
                "attempt": job.attempt,
                "queue": queue,
                "replay_of": dead_letter,
                "replayed_by": principal.key_id.to_string(),
            }),
            trace_id: None,
        })
        .collect();
    // Locks the email rows (in id order) before the summaries change.
    record_events(conn, events).await?;
    diesel::sql_query(
        "UPDATE emails SET status = 'queued', status_precedence = $2, updated_at = now()
          WHERE id = ANY($1) AND status = 'failed'",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&known)
    .bind::<diesel::sql_types::SmallInt, _>(EventType::Queued.status_precedence())
    .execute(conn)
    .await?;
    Ok(())
}

/// (id, source queue, body, stored headers, tenant) of a dead letter a bulk replay locked.
type ReplayRow = (Uuid, String, Vec<u8>, serde_json::Value, Option<String>);

/// Marks rows replayed by `principal`. Runs in the caller's transaction.
async fn mark_replayed(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    principal: &Principal,
) -> diesel::QueryResult<usize> {
    diesel::update(dead_letters::table.filter(dead_letters::id.eq_any(ids)))
        .set((
            dead_letters::replayed_at.eq(diesel::dsl::now),
            dead_letters::replayed_by.eq(principal.key_id.to_string()),
            dead_letters::replay_count.eq(dead_letters::replay_count + 1),
        ))
        .execute(conn)
        .await
}

/// A failed publish is the broker's fault (503), anything else the database's.
fn replay_error(error: anyhow::Error) -> ApiError {
    if error
        .chain()
        .any(|c| c.downcast_ref::<PublishError>().is_some())
    {
        ApiError::BrokerUnavailable(error)
    } else {
        ApiError::Unavailable(error)
    }
}

async fn publisher(state: &ApiState) -> Result<Publisher, ApiError> {
    state
        .publisher
        .read()
        .await
        .clone()
        .ok_or_else(|| ApiError::BrokerUnavailable(anyhow::anyhow!("no broker session")))
}

#[utoipa::path(post, path = "/v1/dead-letters/{id}/replay", tag = "dead letters",
    params(("id" = uuid::Uuid, Path, description = "The dead letter id")),
    responses(
        (status = 200, description = "`{id, replayed, already_replayed, queue, replay_count}`; a second replay publishes nothing", body = ReplayedOne),
        (status = 403, description = "A read key (on data it can see; another tenant's is a 404): this needs an admin key"),
        (status = 404, description = "Unknown, or out of the key's scope"),
        (status = 409, description = "Discarded, or its source is not a queue mailtrail consumes"),
        (status = 503, description = "No broker session (or no database)"),
    ))]
pub(crate) async fn replay_one(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&path).map_err(|_| not_found(&path))?;
    require_admin_for(&state, &principal, id, "replaying dead letters").await?;
    let publisher = publisher(&state).await?;
    let topology = &state.topology;
    let replayed = with_deadline(state.db_timeout, "replay a dead letter", async {
        let mut conn = state.pool.get().await?;
        conn.transaction::<_, anyhow::Error, _>(async |conn| {
            let found: Option<(Row, Vec<u8>, serde_json::Value)> = dead_letters::table
                .find(id)
                .select((Row::as_select(), dead_letters::body, dead_letters::headers))
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let Some((row, body, stored)) =
                found.filter(|(row, _, _)| may_see(&principal, row.tenant.as_deref()))
            else {
                return Ok(Replayed::NotFound);
            };
            if row.discarded_at.is_some() {
                return Ok(Replayed::Discarded);
            }
            if row.replayed_at.is_some() {
                return Ok(Replayed::Already(row));
            }
            let Some(queue) = replay_target(topology, &row.source_queue) else {
                return Ok(Replayed::NotReplayable(row.source_queue));
            };
            // Published while the row is locked and before the commit: a failed publish leaves
            // it open; a commit lost after the publish leaves it open too, and a second replay
            // republishes a message every consumer de-duplicates.
            let message =
                replay_message(topology, queue, row.id, &body, &stored, &state.broker_user);
            let target = message.routing_key.clone();
            reopen_replayed_jobs(conn, topology, &[(row.id, &message)], &principal).await?;
            audit::record(
                conn,
                audit::Actor::Key(&principal),
                "dead_letter.replay",
                row.tenant.as_deref(),
                &row.id.to_string(),
                serde_json::json!({"queue": target, "reason": row.reason}),
            )
            .await?;
            publisher.publish(message).await?;
            mark_replayed(conn, &[row.id], &principal).await?;
            Ok(Replayed::Now(row, target))
        })
        .await
    })
    .await
    .map_err(replay_error)?;
    match replayed {
        Replayed::NotFound => Err(not_found(&path)),
        Replayed::Discarded => Err(ApiError::Conflict(format!(
            "dead letter {id} was discarded; it cannot be replayed"
        ))),
        Replayed::NotReplayable(source) => Err(ApiError::Conflict(format!(
            "dead letter {id} came from {source:?}, which is not a queue mailtrail consumes; \
             it cannot be replayed"
        ))),
        Replayed::Already(row) => Ok(HttpResponse::Ok().json(ReplayedOne {
            id,
            replayed: true,
            already_replayed: true,
            queue: None,
            replayed_at: row.replayed_at,
            replay_count: row.replay_count,
        })),
        Replayed::Now(row, queue) => {
            tracing::info!(dead_letter_id = %id, %queue, key = %principal.key_id,
                "dead letter replayed through the API");
            Ok(HttpResponse::Ok().json(ReplayedOne {
                id,
                replayed: true,
                already_replayed: false,
                queue: Some(queue),
                replayed_at: None,
                replay_count: row.replay_count + 1,
            }))
        }
    }
}

#[utoipa::path(post, path = "/v1/dead-letters/replay", tag = "dead letters",
    params(
        ("tenant" = Option<String>, Query, description = "Only this tenant (another tenant than a scoped key's matches nothing)"),
        ("reason" = Option<String>, Query, description = "The reason it was set aside"),
        ("source_queue" = Option<String>, Query, description = "The queue it was taken from"),
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive, on `first_seen_at`"),
        ("until" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive"),
        ("state" = Option<String>, Query, pattern = "^(open|replayed|discarded)$", description = "`open`, `replayed` or `discarded`"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many, 1–1000, default 1000"),
    ),
    responses(
        (status = 200, description = "`{replayed, queues, more}`: the open matches replayed, oldest first", body = BulkReplay),
        (status = 400, description = "An unknown parameter or an invalid value"),
        (status = 403, description = "A read key: this needs an admin key"),
        (status = 503, description = "No broker session (or no database)"),
    ))]
pub(crate) async fn replay_many(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    query: web::Query<BTreeMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&principal, "replaying dead letters")?;
    let limit = match query.get("limit") {
        None => MAX_BULK_REPLAY,
        Some(text) => text.parse::<i64>().unwrap_or(0),
    };
    if !(1..=MAX_BULK_REPLAY).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_BULK_REPLAY}"
        )));
    }
    let Some(mut filters) = Filters::read(&principal, &query)? else {
        // Nothing in the key's scope matches: the same answer as any replay of nothing.
        return Ok(HttpResponse::Ok().json(BulkReplay {
            replayed: 0,
            queues: BTreeMap::new(),
            more: false,
        }));
    };
    if filters.state.is_some_and(|s| s != "open") {
        return Err(ApiError::BadRequest(
            "only open dead letters can be replayed".into(),
        ));
    }
    filters.state = Some("open");
    let publisher = publisher(&state).await?;
    let topology = &state.topology;
    let replayable: Vec<String> = [
        Queue::Mailbox,
        Queue::MailboxPriority,
        Queue::Dispatching,
        Queue::DispatchingPriority,
        Queue::Tracking,
    ]
    .into_iter()
    .map(|q| topology.queue(q))
    .collect();
    let scoped = principal.tenant.is_some();
    let mut replayed = 0i64;
    let mut by_queue: BTreeMap<String, i64> = BTreeMap::new();
    let mut more = false;
    while replayed < limit {
        let chunk = REPLAY_CHUNK.min(limit - replayed);
        let published = with_deadline(state.db_timeout, "replay dead letters", async {
            let mut conn = state.pool.get().await?;
            conn.transaction::<_, anyhow::Error, _>(async |conn| {
                let mut candidates = filters
                    .apply(dead_letters::table.into_boxed())
                    .filter(dead_letters::source_queue.eq_any(&replayable));
                if scoped {
                    candidates = candidates.filter(dead_letters::tenant.is_not_null());
                }
                let ids: Vec<Uuid> = candidates
                    .order((dead_letters::first_seen_at.asc(), dead_letters::id.asc()))
                    .limit(chunk + 1)
                    .select(dead_letters::id)
                    .load(conn)
                    .await?;
                let more = ids.len() as i64 > chunk;
                // Locked, and still open, or someone else is replaying them right now.
                let rows: Vec<ReplayRow> = dead_letters::table
                    .filter(dead_letters::id.eq_any(&ids[..ids.len().min(chunk as usize)]))
                    .filter(dead_letters::replayed_at.is_null())
                    .filter(dead_letters::discarded_at.is_null())
                    .select((
                        dead_letters::id,
                        dead_letters::source_queue,
                        dead_letters::body,
                        dead_letters::headers,
                        dead_letters::tenant,
                    ))
                    .for_update()
                    .skip_locked()
                    .load(conn)
                    .await?;
                let mut messages = Vec::with_capacity(rows.len());
                let mut ids = Vec::with_capacity(rows.len());
                for (id, source_queue, body, stored, _) in &rows {
                    if let Some(queue) = replay_target(topology, source_queue) {
                        messages.push(replay_message(
                            topology,
                            queue,
                            *id,
                            body,
                            stored,
                            &state.broker_user,
                        ));
                        ids.push(*id);
                    }
                }
                let replays: Vec<(Uuid, &OutgoingMessage)> =
                    ids.iter().copied().zip(messages.iter()).collect();
                reopen_replayed_jobs(conn, topology, &replays, &principal).await?;
                let entries: Vec<(Option<String>, String, serde_json::Value)> = replays
                    .iter()
                    .map(|(id, message)| {
                        let tenant = rows.iter().find(|r| r.0 == *id).and_then(|r| r.4.clone());
                        let details =
                            serde_json::json!({"queue": message.routing_key, "bulk": true});
                        (tenant, id.to_string(), details)
                    })
                    .collect();
                audit::record_many(
                    conn,
                    audit::Actor::Key(&principal),
                    "dead_letter.replay",
                    &entries,
                )
                .await?;
                publisher.publish_all(&messages).await?;
                mark_replayed(conn, &ids, &principal).await?;
                let queues: Vec<String> = messages.into_iter().map(|m| m.routing_key).collect();
                Ok((queues, more))
            })
            .await
        })
        .await
        .map_err(replay_error)?;
        let (queues, chunk_more) = published;
        more = chunk_more;
        if queues.is_empty() {
            break;
        }
        replayed += queues.len() as i64;
        for queue in queues {
            *by_queue.entry(queue).or_default() += 1;
        }
        if !more {
            break;
        }
    }
    if replayed > 0 {
        tracing::info!(replayed, key = %principal.key_id, "dead letters replayed through the API");
    }
    Ok(HttpResponse::Ok().json(BulkReplay {
        replayed,
        queues: by_queue,
        more,
    }))
}

/// The answer of a replay: `queue` when it was replayed now, `replayed_at` when it had been.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplayedOne {
    id: Uuid,
    /// Always true.
    replayed: bool,
    already_replayed: bool,
    /// Where it was published, on this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<String>,
    /// When it was replayed, on a second call.
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed_at: Option<DateTime<Utc>>,
    replay_count: i32,
}

/// The answer of a discard.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Discarded {
    id: Uuid,
    /// Always `discarded`.
    #[schema(value_type = String, pattern = "^discarded$")]
    state: &'static str,
    /// False when it already was discarded.
    changed: bool,
    discard_reason: Option<String>,
}

/// The answer of a bulk replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BulkReplay {
    /// How many were replayed.
    replayed: i64,
    /// How many went back to each queue.
    queues: BTreeMap<String, i64>,
    /// Whether more matched than `limit`: call again for the rest.
    more: bool,
}

/// The body of `POST /v1/dead-letters/{id}/discard`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct Discard {
    /// Why, for the record: 1 to 500 characters.
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

#[utoipa::path(post, path = "/v1/dead-letters/{id}/discard", tag = "dead letters",
    params(("id" = uuid::Uuid, Path, description = "The dead letter id")),
    request_body(content = Discard, content_type = "application/json",
        description = "`{\"reason\"}`, 1–500 characters"),
    responses(
        (status = 200, description = "`{id, state: \"discarded\", changed, discard_reason}`", body = Discarded),
        (status = 400, description = "An unreadable body or an invalid reason"),
        (status = 403, description = "A read key (on data it can see; another tenant's is a 404): this needs an admin key"),
        (status = 404, description = "Unknown, or out of the key's scope"),
        (status = 409, description = "It was replayed"),
    ))]
pub(crate) async fn discard(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&path).map_err(|_| not_found(&path))?;
    require_admin_for(&state, &principal, id, "discarding dead letters").await?;
    let discard: Discard = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("expected {{\"reason\"}}: {e}")))?;
    let reason = discard.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS || reason.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "reason must be 1 to {MAX_REASON_CHARS} characters"
        )));
    }
    let outcome = with_deadline(state.db_timeout, "discard a dead letter", async {
        let mut conn = state.pool.get().await?;
        conn.transaction::<_, anyhow::Error, _>(async |conn| {
            let row: Option<Row> = dead_letters::table
                .find(id)
                .select(Row::as_select())
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let Some(row) = row.filter(|row| may_see(&principal, row.tenant.as_deref())) else {
                return Ok(None);
            };
            if row.discarded_at.is_some() || row.replayed_at.is_some() {
                return Ok(Some((row, false)));
            }
            diesel::sql_query(
                "UPDATE dead_letters SET discarded_at = now(), discard_reason = $2,
                        discarded_by = $3 WHERE id = $1",
            )
            .bind::<diesel::sql_types::Uuid, _>(id)
            .bind::<Text, _>(reason)
            .bind::<Text, _>(principal.key_id.to_string())
            .execute(conn)
            .await?;
            audit::record(
                conn,
                audit::Actor::Key(&principal),
                "dead_letter.discard",
                row.tenant.as_deref(),
                &id.to_string(),
                serde_json::json!({"reason": reason}),
            )
            .await?;
            Ok(Some((row, true)))
        })
        .await
    })
    .await
    .map_err(ApiError::Unavailable)?;
    match outcome {
        None => Err(not_found(&path)),
        Some((row, false)) if row.replayed_at.is_some() && row.discarded_at.is_none() => {
            Err(ApiError::Conflict(format!(
                "dead letter {id} was already replayed; it cannot be discarded"
            )))
        }
        Some((row, changed)) => {
            if changed {
                tracing::info!(dead_letter_id = %id, key = %principal.key_id,
                    "dead letter discarded through the API");
            }
            Ok(HttpResponse::Ok().json(Discarded {
                id,
                state: "discarded",
                changed,
                discard_reason: if changed {
                    Some(reason.to_owned())
                } else {
                    row.discard_reason
                },
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_restores_typed_headers_and_ignores_legacy_debug_text() {
        let topology = Topology::default();
        let id = Uuid::new_v4();
        let typed = serde_json::json!({
            "headers_format": HEADERS_FORMAT,
            "message_id": "m-1",
            "content_type": "application/json",
            "headers": {
                "x-mailtrail-tenant": "acme",
                "x-mailtrail-reason": "conflict",
                "x-mailtrail-replay-of": "an earlier replay",
                "x-n": 3,
            },
        });
        let message = replay_message(&topology, Queue::Mailbox, id, b"{}", &typed, "guest");
        assert_eq!(message.routing_key, topology.queue(Queue::Mailbox));
        assert_eq!(message.body, b"{}");
        let properties = &message.properties;
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(
            properties.message_id().as_ref().map(|m| m.as_str()),
            Some("m-1")
        );
        let table = properties.headers().clone().unwrap_or_default();
        assert_eq!(
            table.inner().get("x-mailtrail-tenant"),
            Some(&AMQPValue::LongString("acme".into()))
        );
        assert_eq!(table.inner().get("x-n"), Some(&AMQPValue::LongLongInt(3)));
        assert!(!table.contains_key(headers::REASON));
        assert_eq!(
            table.inner().get(headers::REPLAY_OF),
            Some(&AMQPValue::LongString(id.to_string().into()))
        );

        // A row written before typed headers held `Debug` text: only the replay header goes out.
        let legacy = serde_json::json!({
            "message_id": "m-1",
            "headers": {"x-mailtrail-tenant": "LongString(\"acme\")"},
        });
        let message = replay_message(&topology, Queue::Mailbox, id, b"{}", &legacy, "guest");
        let table = message.properties.headers().clone().unwrap_or_default();
        assert_eq!(table.inner().len(), 1, "{table:?}");
        assert!(table.contains_key(headers::REPLAY_OF));
    }
}
