//! The database record of a set-aside message: what it was, why, and whose, so an admin can find
//! it (the broker copy in the dead-letter queue carries the same id). Seeing the same message
//! again counts an attempt instead of adding a row.

use crate::schema::dead_letters;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use mailtrail_broker::{Incoming, SetAside};
use uuid::Uuid;

/// Whose message it was, as far as it could be read.
#[derive(Debug, Default, Clone)]
pub struct DeadLetterOwner {
    pub tenant: Option<String>,
    pub request_key: Option<String>,
    pub email_id: Option<Uuid>,
}

/// Records (or counts again) a set-aside message. Runs inside the caller's transaction.
pub async fn record_dead_letter(
    conn: &mut AsyncPgConnection,
    message: &Incoming,
    set_aside: &SetAside,
    owner: DeadLetterOwner,
) -> QueryResult<usize> {
    diesel::insert_into(dead_letters::table)
        .values(NewDeadLetter {
            id: set_aside.dead_letter_id,
            source_queue: message.queue_name.clone(),
            reason: set_aside.reason.clone(),
            detail: set_aside.detail.clone(),
            tenant: owner.tenant,
            request_key: owner.request_key,
            email_id: owner.email_id,
            set_aside_by: set_aside.set_aside_by.to_owned(),
            body: message.body.clone(),
            headers: headers_json(message),
        })
        .on_conflict(dead_letters::id)
        .do_update()
        .set((
            dead_letters::attempts.eq(dead_letters::attempts + 1),
            dead_letters::last_seen_at.eq(diesel::dsl::now),
            dead_letters::detail.eq(excluded(dead_letters::detail)),
        ))
        .execute(conn)
        .await
}

fn headers_json(message: &Incoming) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    if let Some(table) = message.properties.headers() {
        for (name, value) in table.inner() {
            map.insert(
                name.as_str().to_owned(),
                serde_json::json!(format!("{value:?}")),
            );
        }
    }
    serde_json::json!({
        "message_id": message.message_id(),
        "user_id": message.user_id(),
        "content_type": message.content_type(),
        "redelivered": message.redelivered,
        "headers": map,
    })
}

#[derive(Insertable)]
#[diesel(table_name = dead_letters)]
struct NewDeadLetter {
    id: Uuid,
    source_queue: String,
    reason: String,
    detail: String,
    tenant: Option<String>,
    request_key: Option<String>,
    email_id: Option<Uuid>,
    set_aside_by: String,
    body: Vec<u8>,
    headers: serde_json::Value,
}
