//! Standard Webhooks and Resend (Svix): the HMAC verifier on hostile headers, then — with a
//! signature computed here so the fuzzer gets past it — both payload normalisers.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mailtrail_fuzz::check_items;
use mailtrail_webhook_sink::providers::{resend, standard as standard_events};
use mailtrail_webhook_sink::verify::VerifyError;
use mailtrail_webhook_sink::verify::standard::{SignedRequest, SigningKey, verify};
use std::time::Duration;

const NOW: i64 = 1_796_119_200;
const WINDOW: Duration = Duration::from_secs(300);

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    id: Option<&'a str>,
    timestamp: Option<&'a str>,
    signature: Option<&'a str>,
    /// Seconds from NOW for the honestly signed request.
    skew: i16,
    secret: &'a str,
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
    // Any secret text parses or is refused, never panics.
    let _ = SigningKey::parse(input.secret);

    // Hostile headers: never accepted (the fuzzer cannot forge an HMAC).
    let forged = SignedRequest {
        id: input.id,
        timestamp: input.timestamp,
        signature: input.signature,
        body: input.body,
    };
    let verdict = verify(std::slice::from_ref(&key), &forged, NOW, WINDOW);
    if let (Some(id), Some(ts)) = (input.id, input.timestamp) {
        let genuine = key.signature_header(id, ts, input.body);
        let carries_genuine = input
            .signature
            .is_some_and(|s| s.split(' ').any(|entry| entry == genuine));
        assert!(
            verdict.is_err() || carries_genuine,
            "accepted without the genuine signature: {verdict:?}"
        );
    } else {
        assert!(matches!(verdict, Err(VerifyError::MissingHeader(_))));
    }

    // Honestly signed: accepted exactly when inside the window and the id is well formed.
    let id = input.id.unwrap_or("msg_1");
    let ts = (NOW + i64::from(input.skew)).to_string();
    let header = key.signature_header(id, &ts, input.body);
    let signed = SignedRequest {
        id: Some(id),
        timestamp: Some(&ts),
        signature: Some(&header),
        body: input.body,
    };
    let verdict = verify(std::slice::from_ref(&key), &signed, NOW, WINDOW);
    let well_formed = !id.is_empty() && !id.contains('.');
    let inside = u64::from(input.skew.unsigned_abs()) <= WINDOW.as_secs();
    assert_eq!(
        verdict.is_ok(),
        well_formed && inside,
        "id {id:?} skew {}: {verdict:?}",
        input.skew
    );
    if verdict.is_ok() {
        if let Ok(items) = standard_events::normalise(input.body, id) {
            check_items(standard_events::PROVIDER, &items);
        }
        if let Ok(items) = resend::normalise(input.body, id) {
            check_items(resend::PROVIDER, &items);
        }
    }
});
