//! Message search and export, under `/v1` (so behind the key middleware):
//!
//! * `GET /v1/messages`: a page of emails, newest first by (`created_at`, `id`), filtered by
//!   `recipient` (any form of the address: matched on its canonical form), `tenant`, `status`,
//!   `tag` (repeatable, all must be present), `metadata.<key>=<value>` (repeatable, all must
//!   match), `request_id` (the app's request key), `since` (inclusive) and `until` (exclusive,
//!   RFC 3339, on `created_at`); `limit` 1–500 (default 50) and `after` (the `next` of the
//!   previous page);
//! * `GET /v1/messages/export?format=ndjson|csv&<the same filters>`: every match, streamed in
//!   keyset pages of [`EXPORT_PAGE`] so memory stays flat whatever the count. CSV cells that a
//!   spreadsheet could read as a formula get a leading `'` (OWASP "CSV injection").
//!
//! Scoping: a tenant key searches its tenant only. Asking it for another tenant is not an error:
//! the answer is empty (an empty page, an export with no rows), exactly as for a tenant with no
//! mail, so a key learns nothing about tenants it cannot see.
//!
//! Any parameter the search does not know is a 400, so a misspelt filter never silently widens
//! the search to everything.

use crate::db::with_deadline;
use crate::http::{ApiError, ApiState, page_limit};
use crate::keys::Principal;
use crate::schema::{emails, requests};
use actix_web::{HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use mailtrail_shared::address::Address;
use mailtrail_shared::history::EventType;
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Rows an export fetches per query.
pub const EXPORT_PAGE: i64 = 500;
const METADATA_PREFIX: &str = "metadata.";
/// The parameters besides `metadata.<key>`.
const PARAMETERS: &[&str] = &[
    "recipient",
    "tenant",
    "status",
    "tag",
    "request_id",
    "since",
    "until",
    "limit",
    "after",
];
/// The CSV export's columns, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "id",
    "request_id",
    "tenant",
    "recipient",
    "status",
    "subject",
    "created_at",
    "updated_at",
    "tags",
    "metadata",
    "provider",
    "provider_message_id",
    "open_count",
    "click_count",
];

/// Registers the routes (inside the `/v1` scope), before `/messages/{id}`.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/messages", web::get().to(search))
        .route("/messages/export", web::get().to(export));
}

/// (id, request key, tenant, recipient, status, subject, created_at, updated_at, tags, metadata,
/// provider, provider message id, opens, clicks) of one email.
type Row = (
    Uuid,
    String,
    String,
    serde_json::Value,
    String,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    Vec<String>,
    serde_json::Value,
    Option<String>,
    Option<String>,
    i32,
    i32,
);

/// One email as the search and the export show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = MessageItem)]
struct Item {
    id: Uuid,
    request_id: String,
    tenant: String,
    recipient: String,
    status: String,
    subject: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    tags: Vec<String>,
    metadata: serde_json::Value,
    provider: Option<String>,
    provider_message_id: Option<String>,
    open_count: i32,
    click_count: i32,
}

impl From<Row> for Item {
    fn from(row: Row) -> Item {
        let (
            id,
            request_id,
            tenant,
            recipient,
            status,
            subject,
            created_at,
            updated_at,
            tags,
            metadata,
            provider,
            provider_message_id,
            open_count,
            click_count,
        ) = row;
        Item {
            id,
            request_id,
            tenant,
            recipient: serde_json::from_value::<Address>(recipient)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            status,
            subject,
            created_at,
            updated_at,
            tags,
            metadata,
            provider,
            provider_message_id,
            open_count,
            click_count,
        }
    }
}

impl Item {
    /// The CSV record, with its line end.
    fn csv_record(&self) -> String {
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let cells = [
            self.id.to_string(),
            self.request_id.clone(),
            self.tenant.clone(),
            self.recipient.clone(),
            self.status.clone(),
            self.subject.clone(),
            time(&self.created_at),
            time(&self.updated_at),
            serde_json::to_string(&self.tags).unwrap_or_default(),
            self.metadata.to_string(),
            self.provider.clone().unwrap_or_default(),
            self.provider_message_id.clone().unwrap_or_default(),
            self.open_count.to_string(),
            self.click_count.to_string(),
        ];
        csv_line(cells.iter().map(String::as_str))
    }
}

/// One CSV record (RFC 4180: fields with a comma, quote or line break are quoted, quotes
/// doubled; CRLF line ends), each cell neutralised first.
pub fn csv_line<'a>(cells: impl IntoIterator<Item = &'a str>) -> String {
    let mut line = String::new();
    for (i, cell) in cells.into_iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let cell = neutralise(cell);
        if cell.contains([',', '"', '\r', '\n']) {
            line.push('"');
            line.push_str(&cell.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&cell);
        }
    }
    line.push_str("\r\n");
    line
}

/// A cell a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a
/// leading `'`, so it is shown as text (OWASP "CSV injection").
pub fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

/// The filters of the search and the export.
#[derive(Debug, Default)]
struct Filters {
    tenant: Option<String>,
    recipient: Option<String>,
    status: Option<&'static str>,
    tags: Vec<String>,
    metadata: serde_json::Map<String, serde_json::Value>,
    request_key: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

/// The query string: each name with its values, in order.
type Query = BTreeMap<String, Vec<String>>;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

/// Groups the query's pairs by name; only `tag` and `metadata.<key>`s may repeat, and only
/// known names are accepted (`extra` adds the endpoint's own).
fn read_query(pairs: Vec<(String, String)>, extra: &[&str]) -> Result<Query, ApiError> {
    let mut query = Query::new();
    for (name, value) in pairs {
        let known = PARAMETERS.contains(&name.as_str())
            || extra.contains(&name.as_str())
            || name.starts_with(METADATA_PREFIX);
        if !known {
            let list = PARAMETERS
                .iter()
                .chain(extra)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(bad(format!(
                "unknown parameter {name:?}; the search takes {list} and metadata.<key> \
                 (tag may repeat; several metadata.<key> must all match)"
            )));
        }
        let values = query.entry(name.clone()).or_default();
        if !values.is_empty() && name != "tag" {
            return Err(bad(format!("{name} is given more than once")));
        }
        values.push(value);
    }
    Ok(query)
}

impl Filters {
    /// Reads the filters; `None` when the key's scope excludes everything asked for.
    fn read(principal: &Principal, query: &Query) -> Result<Option<Filters>, ApiError> {
        let text = |name: &str| {
            query
                .get(name)
                .and_then(|v| v.iter().next())
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let time = |name: &str| crate::http::query_time(name, text(name));
        let recipient = text("recipient")
            .map(|r| {
                mailtrail_shared::address::parse_address(&r)
                    .map(|a| a.canonical)
                    .map_err(|e| bad(format!("recipient is not a valid address: {e}")))
            })
            .transpose()?;
        let status = match text("status") {
            None => None,
            Some(asked) => Some(
                EventType::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .find(|s| *s == asked)
                    .ok_or_else(|| {
                        bad(format!(
                            "status {asked:?} is not a status; it must be one of {}",
                            EventType::ALL
                                .iter()
                                .map(|t| t.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?,
            ),
        };
        let tags = query
            .get("tag")
            .into_iter()
            .flatten()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        let mut metadata = serde_json::Map::new();
        for (name, values) in query {
            if let Some(key) = name.strip_prefix(METADATA_PREFIX) {
                if key.is_empty() {
                    return Err(bad(
                        "metadata.<key> needs a key, as in metadata.order_id=1001",
                    ));
                }
                let value = values.iter().next().cloned().unwrap_or_default();
                metadata.insert(key.to_owned(), serde_json::Value::String(value));
            }
        }
        let since = time("since")?;
        let until = time("until")?;
        if let (Some(since), Some(until)) = (since, until)
            && since > until
        {
            return Err(bad("since must not be after until"));
        }
        let tenant = match (&principal.tenant, text("tenant")) {
            (Some(own), Some(asked)) if *own != asked => return Ok(None),
            (Some(own), _) => Some(own.clone()),
            (None, asked) => asked,
        };
        Ok(Some(Filters {
            tenant,
            recipient,
            status,
            tags,
            metadata,
            request_key: text("request_id"),
            since,
            until,
        }))
    }

    /// The matching emails after `after` (a keyset position), newest first, at most `limit`.
    async fn fetch(
        &self,
        conn: &mut AsyncPgConnection,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> QueryResult<Vec<Row>> {
        let mut query = emails::table
            .inner_join(requests::table)
            .select((
                emails::id,
                requests::request_key,
                emails::tenant,
                emails::recipient,
                emails::status,
                requests::subject,
                emails::created_at,
                emails::updated_at,
                requests::tags,
                requests::metadata,
                emails::provider,
                emails::provider_message_id,
                emails::open_count,
                emails::click_count,
            ))
            .into_boxed::<Pg>();
        if let Some(tenant) = &self.tenant {
            // Both sides: the request's (tenant, request_key) key serves `request_id`.
            query = query
                .filter(emails::tenant.eq(tenant.clone()))
                .filter(requests::tenant.eq(tenant.clone()));
        }
        if let Some(recipient) = &self.recipient {
            query = query.filter(emails::recipient_canonical.eq(recipient.clone()));
        }
        if let Some(status) = self.status {
            query = query.filter(emails::status.eq(status));
        }
        if !self.tags.is_empty() {
            query = query.filter(requests::tags.contains(self.tags.clone()));
        }
        if !self.metadata.is_empty() {
            query = query.filter(
                requests::metadata.contains(serde_json::Value::Object(self.metadata.clone())),
            );
        }
        if let Some(key) = &self.request_key {
            query = query.filter(requests::request_key.eq(key.clone()));
        }
        if let Some(since) = self.since {
            query = query.filter(emails::created_at.ge(since));
        }
        if let Some(until) = self.until {
            query = query.filter(emails::created_at.lt(until));
        }
        if let Some((created_at, id)) = after {
            // A row comparison, so the position is an index bound rather than a filter.
            query = query.filter(
                diesel::dsl::sql::<Bool>("(emails.created_at, emails.id) < (")
                    .bind::<Timestamptz, _>(created_at)
                    .sql(", ")
                    .bind::<diesel::sql_types::Uuid, _>(id)
                    .sql(")"),
            );
        }
        query
            .order((emails::created_at.desc(), emails::id.desc()))
            .limit(limit)
            .load(conn)
            .await
    }
}

/// The keyset cursor: (created_at in microseconds, id) of the last email shown.
fn encode_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}\n{id}", created_at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (micros, id) = text.split_once('\n')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

/// A page of the search: `next` is the `after` of the following page, null on the last.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = MessagePage)]
struct Page {
    items: Vec<Item>,
    next: Option<String>,
}

#[utoipa::path(get, path = "/v1/messages", tag = "messages",
    params(
        ("recipient" = Option<String>, Query, description = "Any form of the address (matched canonically)"),
        ("tenant" = Option<String>, Query, description = "Only this tenant (another tenant than a scoped key's matches nothing)"),
        ("status" = Option<String>, Query, description = "One of the statuses (`docs/history.md`)"),
        ("tag" = Option<Vec<String>>, Query, description = "Repeatable; all must be present"),
        ("metadata.{key}" = Option<String>, Query, description = "`metadata.<key>=<value>`, repeatable; all must match"),
        ("request_id" = Option<String>, Query, description = "The app's request key"),
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive, on `created_at`"),
        ("until" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "1–500, default 50"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "`{items, next}`, newest first by (`created_at`, `id`)", body = Page),
        (status = 400, description = "An unknown parameter or an invalid value"),
    ))]
pub(crate) async fn search(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let query = read_query(query.into_inner(), &[])?;
    let first = |name: &str| {
        query
            .get(name)
            .and_then(|v| v.iter().next())
            .map(String::as_str)
    };
    let limit = page_limit(first("limit"))?;
    let after = match first("after").map(str::trim) {
        None | Some("") => None,
        Some(cursor) => {
            Some(decode_cursor(cursor).ok_or_else(|| bad("after is not a cursor of this API"))?)
        }
    };
    let Some(filters) = Filters::read(&principal, &query)? else {
        return Ok(HttpResponse::Ok().json(Page {
            items: Vec::new(),
            next: None,
        }));
    };
    let rows = with_deadline(state.db_timeout, "search messages", async {
        let mut conn = state.pool.get().await?;
        Ok(filters.fetch(&mut conn, after, limit + 1).await?)
    })
    .await
    .map_err(ApiError::Unavailable)?;
    let more = rows.len() as i64 > limit;
    let items: Vec<Item> = rows
        .into_iter()
        .take(limit as usize)
        .map(Item::from)
        .collect();
    let next = more
        .then(|| items.last().map(|i| encode_cursor(i.created_at, i.id)))
        .flatten();
    Ok(HttpResponse::Ok().json(Page { items, next }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Ndjson,
    Csv,
}

/// Where an export stands between two pages.
enum Progress {
    /// The next page starts after this position (`None`: from the newest).
    At(Option<(DateTime<Utc>, Uuid)>),
    Done,
}

#[utoipa::path(get, path = "/v1/messages/export", tag = "messages",
    params(
        ("format" = String, Query, pattern = "^(ndjson|csv)$", description = "`ndjson` or `csv`"),
        ("recipient" = Option<String>, Query, description = "Any form of the address (matched canonically)"),
        ("tenant" = Option<String>, Query, description = "Only this tenant (another tenant than a scoped key's matches nothing)"),
        ("status" = Option<String>, Query, description = "One of the statuses (`docs/history.md`)"),
        ("tag" = Option<Vec<String>>, Query, description = "Repeatable; all must be present"),
        ("metadata.{key}" = Option<String>, Query, description = "`metadata.<key>=<value>`, repeatable; all must match"),
        ("request_id" = Option<String>, Query, description = "The app's request key"),
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive, on `created_at`"),
        ("until" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive"),
    ),
    responses(
        (status = 200, description = "Every match, newest first, as an attachment", content(
            ("application/x-ndjson"), ("text/csv"))),
        (status = 400, description = "An unknown parameter or an invalid value"),
    ))]
pub(crate) async fn export(
    state: web::Data<ApiState>,
    principal: web::ReqData<Principal>,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let query = read_query(query.into_inner(), &["format"])?;
    if query.contains_key("limit") || query.contains_key("after") {
        return Err(bad(
            "an export has every match: limit and after are not taken",
        ));
    }
    let format = match query
        .get("format")
        .and_then(|v| v.iter().next())
        .map(|f| f.trim())
    {
        Some("ndjson") => Format::Ndjson,
        Some("csv") => Format::Csv,
        _ => return Err(bad("format must be ndjson or csv")),
    };
    let filters = Filters::read(&principal, &query)?;
    let (content_type, file) = match format {
        Format::Ndjson => ("application/x-ndjson", "messages.ndjson"),
        Format::Csv => ("text/csv; charset=utf-8", "messages.csv"),
    };
    let header = match format {
        Format::Csv => csv_line(CSV_COLUMNS.iter().copied()),
        Format::Ndjson => String::new(),
    };
    let start = match filters {
        Some(_) => Progress::At(None),
        None => Progress::Done,
    };
    let filters = std::sync::Arc::new(filters.unwrap_or_default());
    let state = state.into_inner();
    let key = principal.key_id;
    // Each page is its own short query (no transaction held open for the whole download); the
    // keyset position makes the pages meet without gaps or repeats.
    let pages = futures_util::stream::unfold(start, move |progress| {
        let filters = filters.clone();
        let state = state.clone();
        async move {
            let Progress::At(after) = progress else {
                return None;
            };
            let loaded = with_deadline(state.db_timeout, "export messages", async {
                let mut conn = state.pool.get().await?;
                Ok(filters.fetch(&mut conn, after, EXPORT_PAGE).await?)
            })
            .await;
            let rows = match loaded {
                Ok(rows) => rows,
                Err(e) => {
                    // Logged here, once; the client sees the download cut short.
                    tracing::error!(error = %format!("{e:#}"), %key, "export failed");
                    let cut = std::io::Error::other("the database is unavailable");
                    return Some((Err(cut), Progress::Done));
                }
            };
            let next = if (rows.len() as i64) < EXPORT_PAGE {
                Progress::Done
            } else {
                Progress::At(rows.last().map(|r| (r.6, r.0)))
            };
            let mut chunk = String::new();
            for row in rows {
                let item = Item::from(row);
                match format {
                    Format::Csv => chunk.push_str(&item.csv_record()),
                    Format::Ndjson => {
                        chunk.push_str(&serde_json::to_string(&item).unwrap_or_default());
                        chunk.push('\n');
                    }
                }
            }
            Some((Ok(web::Bytes::from(chunk)), next))
        }
    });
    let body =
        futures_util::stream::once(
            async move { Ok::<_, std::io::Error>(web::Bytes::from(header)) },
        )
        .chain(pages);
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{file}\""),
        ))
        .streaming(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised_and_quoted_by_rfc_4180() {
        assert_eq!(
            csv_line([
                "=cmd|' /C calc'!A0",
                "a,b",
                "say \"hi\"",
                "-1",
                "@x",
                "\tx",
                "plain"
            ]),
            "'=cmd|' /C calc'!A0,\"a,b\",\"say \"\"hi\"\"\",'-1,'@x,'\tx,plain\r\n"
        );
        assert_eq!(csv_line(["+1", "\rx"]), "'+1,\"'\rx\"\r\n");
    }

    #[test]
    fn cursors_round_trip() {
        let at = DateTime::from_timestamp_micros(1_796_000_000_123_456).expect("a time");
        let id = Uuid::new_v4();
        assert_eq!(decode_cursor(&encode_cursor(at, id)), Some((at, id)));
        assert_eq!(decode_cursor("nope"), None);
    }
}
