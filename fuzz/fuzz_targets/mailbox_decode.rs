//! The mailbox decoder (`mailtrail_shared::contract::decode`), the single gate every mailbox
//! message passes, on any body, message id and content type. An accepted request must be safe
//! to put in mail headers (no CR/LF anywhere a header is made from), within its limits, and
//! canonical: written back as JSON it decodes to the same request with the same content hash
//! (the hash is what tells a redelivery from a conflicting reuse of a key).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mailtrail_shared::address::{Address, parse_address};
use mailtrail_shared::contract::{Envelope, Limits, MailboxRequest, Priority, decode};
use serde_json::{Value, json};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    message_id: Option<&'a str>,
    content_type: Option<&'a str>,
    via_priority_queue: bool,
    small_limits: bool,
    body: &'a [u8],
}

fn no_crlf(what: &str, value: &str) {
    assert!(
        !value.contains(['\r', '\n']),
        "{what} {value:?} holds CR or LF"
    );
}

/// What goes into a mail header parses back to the same address.
fn round_trips(what: &str, address: &Address) {
    let shown = address.to_string();
    no_crlf(what, &shown);
    let back = parse_address(&shown)
        .unwrap_or_else(|e| panic!("{what} {address:?} shows as {shown:?}, refused: {e}"));
    assert_eq!(&back, address, "{what} shows as {shown:?}");
}

fn as_json(request: &MailboxRequest, priority: Priority) -> Vec<u8> {
    let mut body = json!({
        "version": request.version,
        "id": request.key,
        "tenant": request.tenant,
        "from": request.from.to_string(),
        "to": request.to.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "subject": request.subject,
        "headers": request.headers,
        "tags": request.tags,
        "metadata": request.metadata,
        "priority": priority,
        "attachments": request.attachments.iter().map(|a| json!({
            "filename": a.filename,
            "content_type": a.content_type,
            "content": a.content,
        })).collect::<Vec<_>>(),
    });
    let object = body.as_object_mut().expect("an object");
    for (name, value) in [
        (
            "reply_to",
            request.reply_to.as_ref().map(ToString::to_string),
        ),
        ("text", request.text.clone()),
        ("html", request.html.clone()),
        ("send_at", request.send_at.map(|t| t.to_rfc3339())),
    ] {
        if let Some(value) = value {
            object.insert(name.into(), Value::String(value));
        }
    }
    serde_json::to_vec(&body).expect("JSON")
}

fuzz_target!(|input: Input<'_>| {
    let limits = if input.small_limits {
        Limits {
            max_request_bytes: 512,
            max_recipients: 3,
            max_fanout_bytes: 1024,
        }
    } else {
        Limits::default()
    };
    let envelope = Envelope {
        body: input.body,
        message_id: input.message_id,
        content_type: input.content_type,
        via_priority_queue: input.via_priority_queue,
    };
    let request = match decode(&envelope, &limits) {
        Ok(request) => request,
        Err(rejection) => {
            assert!(!rejection.detail.is_empty(), "a rejection without a reason");
            return;
        }
    };
    assert!(input.body.len() <= limits.max_request_bytes);
    assert!(!request.to.is_empty() && request.to.len() <= limits.max_recipients);
    no_crlf("subject", &request.subject);
    for (name, value) in &request.headers {
        no_crlf("header name", name);
        no_crlf("header value", value);
    }
    for attachment in &request.attachments {
        no_crlf("attachment filename", &attachment.filename);
        no_crlf("attachment content type", &attachment.content_type);
    }
    round_trips("from", &request.from);
    for to in &request.to {
        round_trips("to", to);
    }
    if let Some(reply_to) = &request.reply_to {
        round_trips("reply_to", reply_to);
    }
    if input.via_priority_queue {
        assert_eq!(request.priority, Priority::High);
    }

    // Canonical: the request written back decodes to itself. Through the priority queue the
    // body's own priority is unknown here, so one of the two must give the same hash.
    let candidates: &[Priority] = if input.via_priority_queue {
        &[Priority::Normal, Priority::High]
    } else {
        &[request.priority]
    };
    let again: Vec<MailboxRequest> = candidates
        .iter()
        .map(|priority| {
            let body = as_json(&request, *priority);
            decode(
                &Envelope {
                    body: &body,
                    message_id: None,
                    content_type: Some("application/json"),
                    via_priority_queue: input.via_priority_queue,
                },
                &Limits::default(),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "an accepted request written back is refused: {e}\n{}",
                    String::from_utf8_lossy(&body)
                )
            })
        })
        .collect();
    assert!(
        again.iter().any(|a| a.content_hash == request.content_hash),
        "the canonical form is not stable: {request:#?} vs {again:#?}"
    );
    for a in &again {
        assert_eq!(a.to, request.to);
        assert_eq!(a.from, request.from);
        assert_eq!(a.subject, request.subject);
        assert_eq!(a.headers, request.headers);
        assert_eq!(a.attachments, request.attachments);
    }
});
