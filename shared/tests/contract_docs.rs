//! The contract's documentation is executable: every JSON example in `docs/mailbox-contract.md`
//! is checked against the JSON Schema and the decoder, and the two must agree.

use mailtrail_shared::contract::{Envelope, Limits, decode};
use serde_json::Value;
use std::path::PathBuf;

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// (info string after `json`, body) of every ```json block.
fn json_examples(markdown: &str) -> Vec<(String, String)> {
    let mut examples = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in markdown.lines() {
        if let Some((info, body)) = current.as_mut() {
            if line.starts_with("```") {
                examples.push((std::mem::take(info), std::mem::take(body)));
                current = None;
            } else {
                body.push_str(line);
                body.push('\n');
            }
        } else if let Some(info) = line.strip_prefix("```json") {
            current = Some((info.trim().to_owned(), String::new()));
        }
    }
    examples
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(docs().join("mailbox-request.v1.schema.json"))
            .expect("the schema file"),
    )
    .expect("the schema is JSON");
    // Formats are annotations unless asked for; `send_at`'s date-time must be checked.
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
}

fn decode_reason(body: &str) -> Result<(), &'static str> {
    let envelope = Envelope {
        body: body.as_bytes(),
        message_id: None,
        content_type: Some("application/json"),
        via_priority_queue: false,
    };
    decode(&envelope, &Limits::default())
        .map(|_| ())
        .map_err(|r| r.reason.code())
}

#[test]
fn every_documented_example_behaves_as_documented_in_schema_and_decoder() {
    let markdown =
        std::fs::read_to_string(docs().join("mailbox-contract.md")).expect("the contract doc");
    let examples = json_examples(&markdown);
    assert!(
        examples.len() >= 8,
        "found only {} examples",
        examples.len()
    );
    let validator = validator();
    for (info, body) in examples {
        let instance: Value = serde_json::from_str(&body).expect("examples are JSON");
        // `refused=<code>`: both refuse; `operator-refuses=<code>`: the shape is valid v1 but
        // the operator sets it aside (a rule a schema cannot express).
        let schema_refuses = info.starts_with("refused=");
        let expected = info
            .strip_prefix("refused=")
            .or_else(|| info.strip_prefix("operator-refuses="));
        assert_eq!(
            validator.is_valid(&instance),
            !schema_refuses,
            "the schema disagrees with the doc about {body}"
        );
        assert_eq!(
            decode_reason(&body).err(),
            expected,
            "the decoder disagrees with the doc about {body}"
        );
    }
}

#[test]
fn schema_and_decoder_agree_on_structural_mistakes() {
    let validator = validator();
    let base = r#""from": "a@b.test", "to": "c@d.test", "subject": "S", "text": "T""#;
    let without_to = r#""from": "a@b.test", "subject": "S", "text": "T""#;
    let cases = [
        format!(r#"{{{base}, "version": "1"}}"#),
        format!(r#"{{{base}, "tenant": "Acme"}}"#),
        format!(r#"{{{without_to}, "to": []}}"#),
        format!(r#"{{{base}, "priority": "urgent"}}"#),
        format!(r#"{{{base}, "metadata": {{"n": 1}}}}"#),
        format!(r#"{{{base}, "tags": [""]}}"#),
        format!(r#"{{{base}, "headers": {{"x-mailtrail-id": "1"}}}}"#),
        format!(r#"{{{base}, "headers": {{"X-Note": "a\nb"}}}}"#),
        format!(r#"{{{base}, "attachments": [{{"filename": "a/b", "content": "AA=="}}]}}"#),
        format!(r#"{{{base}, "attachments": [{{"filename": "a", "content": "%%"}}]}}"#),
        format!(r#"{{{base}, "attachments": [{{"content": "AA=="}}]}}"#),
        format!(r#"{{{base}, "id": ""}}"#),
        r#"{"from": "a@b.test", "to": "c@d.test", "subject": "S"}"#.to_owned(),
        r#"{"from": "a@b.test", "to": "c@d.test", "subject": "S", "text": ""}"#.to_owned(),
        r#"{"from": "a@b.test", "to": "c@d.test", "subject": "", "text": "T"}"#.to_owned(),
    ];
    for body in cases {
        let instance: Value = serde_json::from_str(&body).expect("cases are JSON");
        assert!(!validator.is_valid(&instance), "the schema accepts {body}");
        assert!(decode_reason(&body).is_err(), "the decoder accepts {body}");
    }
    let fine = format!(
        r#"{{{base}, "tags": ["a"], "headers": {{"List-Id": "x"}},
            "attachments": [{{"filename": "a.pdf", "content_type": "application/pdf", "content": "AAE="}}]}}"#
    );
    let instance: Value = serde_json::from_str(&fine).expect("JSON");
    assert!(validator.is_valid(&instance), "the schema refuses {fine}");
    assert_eq!(decode_reason(&fine), Ok(()));
}

/// The status event schema describes what the operator serialises, and names every event type.
#[test]
fn a_status_event_matches_its_published_schema() {
    use mailtrail_shared::history::EventType;
    use mailtrail_shared::status::{STATUS_EVENT_VERSION, StatusEvent};
    let schema_text = std::fs::read_to_string(docs().join("status-event.v1.schema.json"))
        .expect("the status event schema");
    let schema: Value = serde_json::from_str(&schema_text).expect("the schema is JSON");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles");
    for event_type in EventType::ALL {
        let event = StatusEvent {
            version: STATUS_EVENT_VERSION,
            event_id: uuid::Uuid::new_v4(),
            email_id: uuid::Uuid::new_v4(),
            id: "order-42".into(),
            request_id: uuid::Uuid::new_v4(),
            tenant: "acme".into(),
            event_type: event_type.as_str().into(),
            occurred_at: chrono::Utc::now(),
            seq: 3,
            recipient: "Ann@Example.com".into(),
            metadata: serde_json::json!({"order": "42"}),
            source: "dispatcher".into(),
            provider: Some("smtp".into()),
            provider_message_id: None,
            details: serde_json::json!({"attempt": 1}),
        };
        let json = serde_json::to_value(&event).expect("serialises");
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{event_type:?}: {errors:?}");
        assert!(
            schema_text.contains(&format!(" {},", event_type.as_str()))
                || schema_text.contains(&format!(" {} (", event_type.as_str())),
            "the schema's type description lists {}",
            event_type.as_str()
        );
    }
    let mut wrong = serde_json::to_value(StatusEvent {
        version: 1,
        event_id: uuid::Uuid::new_v4(),
        email_id: uuid::Uuid::new_v4(),
        id: "x".into(),
        request_id: uuid::Uuid::new_v4(),
        tenant: "acme".into(),
        event_type: "queued".into(),
        occurred_at: chrono::Utc::now(),
        seq: 1,
        recipient: "a@b.c".into(),
        metadata: serde_json::json!({}),
        source: "operator".into(),
        provider: None,
        provider_message_id: None,
        details: serde_json::json!({}),
    })
    .expect("serialises");
    wrong["seq"] = 0.into();
    assert!(!validator.is_valid(&wrong), "seq starts at 1");
}
