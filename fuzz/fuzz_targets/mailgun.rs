//! Mailgun: the body is parsed for its signature object first, the HMAC checked (with a
//! signature computed here when the fuzzer asks, to get past it), the token replay cache
//! consulted, then the event normalised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailtrail_fuzz::check_items;
use mailtrail_webhook_sink::providers::mailgun::{Envelope, PROVIDER, normalise};
use mailtrail_webhook_sink::replay::{Seen, TokenCache};
use mailtrail_webhook_sink::verify::mailgun::{MailgunSignature, SigningKey, verify};
use std::time::Duration;

const WINDOW: Duration = Duration::from_secs(600);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let Ok(envelope) = serde_json::from_slice::<Envelope>(body) else {
        return;
    };
    let key = SigningKey::new("key-acme-old-3f9c1e7d2b6a").expect("key");
    let fields = &envelope.signature;
    let now = fields.timestamp.parse::<i64>().unwrap_or(0);
    // As sent: the fuzzer cannot forge the HMAC.
    let presented = MailgunSignature {
        timestamp: &fields.timestamp,
        token: &fields.token,
        signature: &fields.signature,
    };
    let verdict = verify(std::slice::from_ref(&key), &presented, now, WINDOW);
    let genuine = key.signature(&fields.timestamp, &fields.token);
    assert!(
        verdict.is_err() || fields.signature.eq_ignore_ascii_case(&genuine),
        "a forged Mailgun signature passed"
    );
    if mode & 1 == 0 {
        return;
    }
    // Re-signed here: past the verifier to the replay cache and the normaliser.
    let signed = MailgunSignature {
        timestamp: &fields.timestamp,
        token: &fields.token,
        signature: &genuine,
    };
    if verify(std::slice::from_ref(&key), &signed, now, WINDOW).is_err() {
        // With the right signature, only a timestamp that is not Unix seconds or an empty
        // token is refused.
        assert!(fields.timestamp.parse::<i64>().is_err() || fields.token.is_empty());
        return;
    }
    let tokens = TokenCache::new(WINDOW * 2, 16);
    assert_eq!(tokens.check(&fields.token, body), Seen::Fine);
    assert_eq!(
        tokens.check(&fields.token, body),
        Seen::Fine,
        "a retry is fine"
    );
    let mut other = body.to_vec();
    other.push(b' ');
    assert_eq!(
        tokens.check(&fields.token, &other),
        Seen::Reused,
        "another body is not"
    );
    check_items(PROVIDER, &[normalise(&envelope.event_data)]);
});
