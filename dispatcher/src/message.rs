//! Turning a dispatch job into the email on the wire.

use base64::Engine;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{Address as LettreAddress, Message};
use mailtrail_shared::address::Address;
use mailtrail_shared::dispatch::DispatchJob;

/// The header every email carries: the email's id, so bounces and replies can be traced back.
pub const MAILTRAIL_ID_HEADER: &str = "X-Mailtrail-Id";

/// A message that cannot be built is the job's fault: sending it again would fail again.
#[derive(Debug, thiserror::Error)]
#[error("the email cannot be built: {0}")]
pub struct BuildError(String);

impl BuildError {
    pub fn from_envelope(reason: &str) -> BuildError {
        BuildError(format!("envelope: {reason}"))
    }
}

fn mailbox(address: &Address) -> Result<Mailbox, BuildError> {
    let email: LettreAddress = address
        .address
        .parse()
        .map_err(|e| BuildError(format!("{:?}: {e}", address.address)))?;
    Ok(Mailbox::new(address.display_name.clone(), email))
}

/// The formatted message and its envelope (the job's one recipient).
pub fn build(job: &DispatchJob, hello_name: &str) -> Result<Message, BuildError> {
    let mut builder = Message::builder()
        .from(mailbox(&job.from)?)
        .to(mailbox(&job.to)?)
        .subject(job.subject.clone())
        .message_id(Some(format!("<{}@{hello_name}>", job.email_id)));
    if let Some(reply_to) = &job.reply_to {
        builder = builder.reply_to(mailbox(reply_to)?);
    }
    builder = builder.raw_header(header(MAILTRAIL_ID_HEADER, &job.email_id.to_string())?);
    for (name, value) in &job.headers {
        builder = builder.raw_header(header(name, value)?);
    }
    let body = match (&job.text, &job.html) {
        (Some(text), Some(html)) => Body::Multi(MultiPart::alternative_plain_html(
            text.clone(),
            html.clone(),
        )),
        (Some(text), None) => Body::Single(SinglePart::plain(text.clone())),
        (None, Some(html)) => Body::Single(SinglePart::html(html.clone())),
        (None, None) => Body::Single(SinglePart::plain(String::new())),
    };
    let built = if job.attachments.is_empty() {
        match body {
            Body::Multi(part) => builder.multipart(part),
            Body::Single(part) => builder.singlepart(part),
        }
    } else {
        let mut mixed = match body {
            Body::Multi(part) => MultiPart::mixed().multipart(part),
            Body::Single(part) => MultiPart::mixed().singlepart(part),
        };
        for attachment in &job.attachments {
            let content = base64::engine::general_purpose::STANDARD
                .decode(&attachment.content)
                .map_err(|e| BuildError(format!("attachment {:?}: {e}", attachment.filename)))?;
            let content_type = ContentType::parse(&attachment.content_type).unwrap_or(
                ContentType::parse("application/octet-stream")
                    .map_err(|e| BuildError(format!("the default content type: {e}")))?,
            );
            mixed = mixed.singlepart(
                Attachment::new(attachment.filename.clone()).body(content, content_type),
            );
        }
        builder.multipart(mixed)
    };
    built.map_err(|e| BuildError(e.to_string()))
}

enum Body {
    Multi(MultiPart),
    Single(SinglePart),
}

fn header(name: &str, value: &str) -> Result<HeaderValue, BuildError> {
    let name = HeaderName::new_from_ascii(name.to_owned())
        .map_err(|e| BuildError(format!("header name {name:?}: {e}")))?;
    Ok(HeaderValue::new(name, value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailtrail_shared::address::parse_address;
    use mailtrail_shared::contract::{Attachment as JobAttachment, Priority};
    use std::collections::BTreeMap;
    use uuid::Uuid;

    fn job() -> DispatchJob {
        DispatchJob {
            version: 1,
            job_id: Uuid::from_u128(1),
            email_id: Uuid::from_u128(0xabc),
            request_id: Uuid::from_u128(3),
            request_key: "k".into(),
            tenant: "acme".into(),
            attempt: 1,
            priority: Priority::Normal,
            from: parse_address("Acme Shop <shop@acme.test>").expect("address"),
            to: parse_address("Ann@Example.com").expect("address"),
            reply_to: Some(parse_address("help@acme.test").expect("address")),
            subject: "Your order".into(),
            text: Some("Thanks".into()),
            html: Some("<p>Thanks</p>".into()),
            headers: BTreeMap::from([("X-Campaign".to_owned(), "autumn".to_owned())]),
            tags: vec![],
            metadata: BTreeMap::new(),
            attachments: vec![JobAttachment {
                filename: "r.txt".into(),
                content_type: "text/plain".into(),
                content: "aGVsbG8=".into(),
                size: 5,
            }],
            waits: 0,
            first_attempt_at: None,
        }
    }

    #[test]
    fn the_message_carries_its_id_one_recipient_both_bodies_and_the_attachment() {
        let message = build(&job(), "mailtrail.test").expect("builds");
        let envelope = message.envelope();
        let to: Vec<String> = envelope.to().iter().map(ToString::to_string).collect();
        assert_eq!(to, ["Ann@Example.com"]);
        let text = String::from_utf8(message.formatted()).expect("utf-8");
        assert!(
            text.contains(&format!("X-Mailtrail-Id: {}", Uuid::from_u128(0xabc))),
            "{text}"
        );
        assert!(text.contains("X-Campaign: autumn"));
        assert!(text.contains("Reply-To: help@acme.test"));
        assert!(text.contains("multipart/mixed"));
        assert!(text.contains("multipart/alternative"));
        assert!(text.contains("filename=\"r.txt\""));
        assert!(text.contains("Subject: Your order"));
    }
}
