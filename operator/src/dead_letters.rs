//! The database record of a set-aside message: what it was, why, and whose, so an admin can find
//! it (the broker copy in the dead-letter queue carries the same id). Seeing the same message
//! again counts an attempt instead of adding a row.
//!
//! Headers are stored as typed JSON ([`headers_to_json`]) that [`headers_from_json`] turns back
//! into an AMQP table for a replay. PostgreSQL's `jsonb` and `text` cannot hold a NUL character,
//! so whatever came from outside goes through [`clean`] or is stored as base64 bytes.

use crate::schema::dead_letters;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString, ShortString};
use mailtrail_broker::{Incoming, SetAside};
use serde_json::{Map, Value, json};
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
            source_queue: clean(&message.queue_name),
            reason: clean(&set_aside.reason),
            detail: clean(&set_aside.detail),
            tenant: owner.tenant.as_deref().map(clean),
            request_key: owner.request_key.as_deref().map(clean),
            email_id: owner.email_id,
            set_aside_by: set_aside.set_aside_by.to_owned(),
            body: message.body.clone(),
            headers: stored_headers(
                &message.properties,
                message.message_id(),
                message.user_id(),
                message.redelivered,
            ),
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

/// Marks the `headers` column's format: rows written before it held `Debug` text, which a replay
/// must not send as header values.
pub const HEADERS_FORMAT: &str = "typed";

/// What the `headers` column holds: the message's properties that matter for a replay and its
/// header table as typed JSON. `message_id` and `user_id` are the original message's.
pub fn stored_headers(
    properties: &BasicProperties,
    message_id: Option<&str>,
    user_id: Option<&str>,
    redelivered: bool,
) -> Value {
    json!({
        "headers_format": HEADERS_FORMAT,
        "message_id": message_id.map(clean),
        "user_id": user_id.map(clean),
        "content_type": properties.content_type().as_ref().map(|c| clean(c.as_str())),
        "redelivered": redelivered,
        "headers": properties
            .headers()
            .as_ref()
            .map_or_else(|| Value::Object(Map::new()), headers_to_json),
    })
}

/// A string PostgreSQL can store (`text` and `jsonb` refuse NUL): NUL becomes U+FFFD.
pub fn clean(text: &str) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.to_owned()
    }
}

/// An AMQP header table as typed JSON, readable and reversible:
///
/// | AMQP | JSON |
/// |---|---|
/// | string (UTF-8, no NUL) | string |
/// | string with other bytes | `{"base64": "…"}` |
/// | byte array | `{"bytes": "…"}` (base64) |
/// | boolean | `true` / `false` |
/// | any integer | number |
/// | float, double | number (`{"float": "NaN"}` when not finite) |
/// | decimal | `{"decimal": {"scale", "value"}}` |
/// | timestamp | `{"timestamp": seconds}` |
/// | table | `{"table": {…}}` |
/// | array | array |
/// | void | `null` |
///
/// Header names with a NUL character get U+FFFD in its place.
pub fn headers_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(name, value)| (clean(name.as_str()), value_to_json(value)))
            .collect(),
    )
}

fn value_to_json(value: &AMQPValue) -> Value {
    let text_or_bytes = |bytes: &[u8]| match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => Value::String(text.to_owned()),
        _ => json!({"base64": BASE64.encode(bytes)}),
    };
    let float = |f: f64| {
        serde_json::Number::from_f64(f)
            .map_or_else(|| json!({"float": f.to_string()}), Value::Number)
    };
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(v) => json!(v),
        AMQPValue::ShortShortUInt(v) => json!(v),
        AMQPValue::ShortInt(v) => json!(v),
        AMQPValue::ShortUInt(v) => json!(v),
        AMQPValue::LongInt(v) => json!(v),
        AMQPValue::LongUInt(v) => json!(v),
        AMQPValue::LongLongInt(v) => json!(v),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => json!({"decimal": {"scale": d.scale, "value": d.value}}),
        AMQPValue::ShortString(s) => text_or_bytes(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => text_or_bytes(s.as_bytes()),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(value_to_json).collect())
        }
        AMQPValue::Timestamp(t) => json!({"timestamp": t}),
        AMQPValue::FieldTable(t) => json!({"table": headers_to_json(t)}),
        AMQPValue::ByteArray(b) => json!({"bytes": BASE64.encode(b.as_slice())}),
        AMQPValue::Void => Value::Null,
    }
}

/// The header table [`headers_to_json`] stored (integers come back as 64-bit integers, the
/// type every mailtrail reader accepts). Names over 255 bytes, which AMQP cannot carry, are left
/// out.
pub fn headers_from_json(value: &Value) -> FieldTable {
    let mut table = FieldTable::default();
    if let Value::Object(entries) = value {
        for (name, value) in entries {
            if let Ok(name) = ShortString::try_new(name.clone()) {
                table.insert(name, value_from_json(value));
            }
        }
    }
    table
}

fn value_from_json(value: &Value) -> AMQPValue {
    let bytes = |v: &Value| {
        v.as_str()
            .and_then(|s| BASE64.decode(s).ok())
            .unwrap_or_default()
    };
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(value_from_json).collect::<Vec<_>>(),
        )),
        Value::Object(object) => {
            let tagged = |tag: &str| object.get(tag).filter(|_| object.len() == 1);
            if let Some(v) = tagged("base64") {
                AMQPValue::LongString(LongString::from(bytes(v)))
            } else if let Some(v) = tagged("bytes") {
                AMQPValue::ByteArray(bytes(v).into())
            } else if let Some(v) = tagged("timestamp") {
                AMQPValue::Timestamp(v.as_u64().unwrap_or_default())
            } else if let Some(v) = tagged("float") {
                AMQPValue::Double(v.as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN))
            } else if let Some(v) = tagged("decimal") {
                AMQPValue::DecimalValue(DecimalValue {
                    scale: v["scale"]
                        .as_u64()
                        .and_then(|s| u8::try_from(s).ok())
                        .unwrap_or(0),
                    value: v["value"]
                        .as_u64()
                        .and_then(|s| u32::try_from(s).ok())
                        .unwrap_or(0),
                })
            } else if let Some(v) = tagged("table") {
                AMQPValue::FieldTable(headers_from_json(v))
            } else {
                AMQPValue::FieldTable(headers_from_json(value))
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_typed_json_and_nul_never_reaches_the_database() {
        let mut nested = FieldTable::default();
        nested.insert("count".into(), AMQPValue::LongInt(3));
        let mut table = FieldTable::default();
        table.insert("text".into(), AMQPValue::LongString("héllo".into()));
        table.insert(
            "nul".into(),
            AMQPValue::LongString(LongString::from(b"a\0b".to_vec())),
        );
        table.insert(
            "latin1".into(),
            AMQPValue::LongString(LongString::from(vec![0xe9u8])),
        );
        table.insert("flag".into(), AMQPValue::Boolean(true));
        table.insert("n".into(), AMQPValue::LongLongInt(-42));
        table.insert("ratio".into(), AMQPValue::Double(0.5));
        table.insert(
            "bytes".into(),
            AMQPValue::ByteArray(vec![0u8, 1, 255].into()),
        );
        table.insert("when".into(), AMQPValue::Timestamp(1_700_000_000));
        table.insert("nested".into(), AMQPValue::FieldTable(nested));
        table.insert(
            "list".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString("x".into()), AMQPValue::Void].into()),
        );
        table.insert(
            "dec".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 1234,
            }),
        );

        let stored = headers_to_json(&table);
        assert!(!stored.to_string().contains("\\u0000"), "{stored}");
        assert_eq!(stored["text"], "héllo");
        assert_eq!(stored["flag"], true);
        assert_eq!(stored["n"], -42);
        assert_eq!(stored["nested"]["table"]["count"], 3);
        assert_eq!(stored["bytes"]["bytes"], BASE64.encode([0u8, 1, 255]));
        assert_eq!(stored["nul"]["base64"], BASE64.encode(b"a\0b"));

        let back = headers_from_json(&stored);
        let get = |name: &str| back.inner().get(name).cloned();
        assert_eq!(
            get("nul"),
            Some(AMQPValue::LongString(LongString::from(b"a\0b".to_vec())))
        );
        assert_eq!(
            get("latin1"),
            Some(AMQPValue::LongString(LongString::from(vec![0xe9u8])))
        );
        assert_eq!(get("text"), Some(AMQPValue::LongString("héllo".into())));
        assert_eq!(get("n"), Some(AMQPValue::LongLongInt(-42)));
        assert_eq!(get("ratio"), Some(AMQPValue::Double(0.5)));
        assert_eq!(get("flag"), Some(AMQPValue::Boolean(true)));
        assert_eq!(
            get("bytes"),
            Some(AMQPValue::ByteArray(vec![0u8, 1, 255].into()))
        );
        assert_eq!(get("when"), Some(AMQPValue::Timestamp(1_700_000_000)));
        assert_eq!(
            get("dec"),
            Some(AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 1234
            }))
        );
        let Some(AMQPValue::FieldTable(nested)) = get("nested") else {
            panic!("nested table lost: {back:?}");
        };
        assert_eq!(
            nested.inner().get("count"),
            Some(&AMQPValue::LongLongInt(3))
        );
        assert_eq!(
            get("list"),
            Some(AMQPValue::FieldArray(
                vec![AMQPValue::LongString("x".into()), AMQPValue::Void].into()
            ))
        );
        // Stored again, the table gives the same JSON: nothing drifts across replays.
        assert_eq!(headers_to_json(&back), stored);
    }

    #[test]
    fn nul_in_names_and_properties_is_replaced() {
        assert_eq!(clean("a\0b"), "a\u{FFFD}b");
        let mut table = FieldTable::default();
        table.insert("x\0y".into(), AMQPValue::Boolean(false));
        let stored = headers_to_json(&table);
        assert_eq!(stored["x\u{FFFD}y"], false);
        let properties = BasicProperties::default().with_content_type("a\0b".into());
        let stored = stored_headers(&properties, Some("m\0"), None, true);
        assert_eq!(stored["content_type"], "a\u{FFFD}b");
        assert_eq!(stored["message_id"], "m\u{FFFD}");
    }
}
