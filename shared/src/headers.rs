//! AMQP header conventions used by every hop (documented in `docs/amqp.md`).
//!
//! Every message mailtrail publishes is persistent (delivery mode 2), carries `content_type`
//! `application/json`, a `message_id`, and the headers below where they apply.

/// The email this message is about (UUID).
pub const EMAIL_ID: &str = "x-mailtrail-email-id";
/// The client's idempotency key of the request the email came from.
pub const REQUEST_KEY: &str = "x-mailtrail-request-key";
/// The tenant the email belongs to.
pub const TENANT: &str = "x-mailtrail-tenant";
/// The dispatch attempt number (1 for the first send).
pub const ATTEMPT: &str = "x-mailtrail-attempt";
/// The dispatch job id (stable across republishes of the same job).
pub const JOB_ID: &str = "x-mailtrail-job-id";
/// W3C trace context, continued through every hop.
pub const TRACEPARENT: &str = "traceparent";

/// Why a message was set aside (a stable code, see `RejectReason::code`).
pub const REASON: &str = "x-mailtrail-reason";
/// A human-readable explanation of the reason.
pub const REASON_DETAIL: &str = "x-mailtrail-reason-detail";
/// The queue (full name) the set-aside message was consumed from.
pub const SOURCE_QUEUE: &str = "x-mailtrail-source-queue";
/// The service that set the message aside.
pub const SET_ASIDE_BY: &str = "x-mailtrail-set-aside-by";
/// When the message was set aside (RFC 3339).
pub const SET_ASIDE_AT: &str = "x-mailtrail-set-aside-at";
/// A unique id of the set-aside copy, so a dead-letter consumer can de-duplicate.
pub const DEAD_LETTER_ID: &str = "x-mailtrail-dead-letter-id";
/// The original message's `message_id`, when it had one.
pub const ORIGINAL_MESSAGE_ID: &str = "x-mailtrail-original-message-id";
/// The broker user that published the original message (its `user_id` property), when set.
pub const ORIGINAL_USER_ID: &str = "x-mailtrail-original-user-id";
/// On a message republished from the dead letters by an admin: the dead letter's id (UUID).
pub const REPLAY_OF: &str = "x-mailtrail-replay-of";
/// On a mailbox request the operator replays: the broker user that published the original (its
/// AMQP `user_id`, as recorded). Trusted only on a message whose `user_id` is the operator's own
/// broker user, which RabbitMQ verifies; ignored on anything else.
pub const ORIGINAL_PUBLISHER: &str = "x-mailtrail-original-publisher";

/// The content type of every mailtrail message and of mailbox requests.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Builds a W3C `traceparent` value (version 00, sampled) from a trace id and a span id.
pub fn traceparent(trace_id: u128, span_id: u64) -> String {
    format!("00-{trace_id:032x}-{span_id:016x}-01")
}

/// Parses a W3C `traceparent`, returning (trace id, parent span id) when well formed.
pub fn parse_traceparent(value: &str) -> Option<(u128, u64)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    if flags.len() != 2 || parts.next().is_some() && version == "00" {
        return None;
    }
    // Lowercase hex only (W3C); `from_str_radix` alone would also take a `+` or uppercase.
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ![version, trace, span, flags].into_iter().all(lower_hex) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok()?;
    let span_id = u64::from_str_radix(span, 16).ok()?;
    (trace_id != 0 && span_id != 0).then_some((trace_id, span_id))
}

/// This hop's `traceparent`: the parent's trace continued with a new span id, or a new trace
/// when the parent is absent or malformed.
pub fn continue_trace(parent: Option<&str>) -> String {
    let span_id = (uuid::Uuid::new_v4().as_u128() as u64).max(1);
    let trace_id = parent
        .and_then(parse_traceparent)
        .map(|(trace, _)| trace)
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u128());
    traceparent(trace_id, span_id)
}

/// A `traceparent` with a new span in the trace `trace_id` (32 lowercase hex digits, as
/// `trace_id_of` gives and events record), or a new trace when it is absent or malformed.
pub fn continue_trace_id(trace_id: Option<&str>) -> String {
    let parent = trace_id.map(|trace| format!("00-{trace}-0000000000000001-01"));
    continue_trace(parent.as_deref())
}

/// The trace id (32 lowercase hex digits) of a well-formed `traceparent`: what log lines and
/// recorded events carry, so one search finds every hop of a request.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    parse_traceparent(traceparent).map(|(trace, _)| format!("{trace:032x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let tp = traceparent(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7);
        assert_eq!(
            tp,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            parse_traceparent(&tp),
            Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7))
        );
        assert_eq!(parse_traceparent("00-0-0-01"), None);
        assert_eq!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
    }

    #[test]
    fn a_hop_continues_the_trace_with_a_span_of_its_own() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = continue_trace(Some(parent));
        assert_eq!(
            trace_id_of(&child).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_ne!(
            parse_traceparent(&child).map(|(_, span)| span),
            Some(0x00f067aa0ba902b7)
        );
        let from_recorded = continue_trace_id(Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            trace_id_of(&from_recorded).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(parse_traceparent(&continue_trace_id(Some("not-a-trace"))).is_some());
        // No parent, or garbage (uppercase, a sign): a new, well-formed trace.
        for parent in [
            None,
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
            Some("00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ] {
            let fresh = continue_trace(parent);
            assert!(parse_traceparent(&fresh).is_some(), "{fresh}");
            assert_ne!(
                trace_id_of(&fresh).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
        }
    }
}
