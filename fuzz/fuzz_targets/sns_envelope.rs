//! SES through SNS: the envelope parser, the canonical string-to-sign, the SigningCertURL and
//! SubscribeURL checks (the SSRF guard) on hostile bodies, and the SES normaliser on the
//! envelope's `Message` (what a verified notification hands it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailtrail_fuzz::check_items;
use mailtrail_webhook_sink::providers::ses::{PROVIDER, normalise};
use mailtrail_webhook_sink::verify::sns::{
    MessageType, SnsEnvelope, check_cert_url, check_subscribe_url, string_to_sign,
};

/// Where the HTTP client (the same WHATWG URL parser) would connect for a URL the guard let
/// through: https, port 443, an SNS host, no credentials.
fn assert_sns_host(url: &str) {
    let parsed = url::Url::parse(url).expect("an accepted URL parses");
    let host = parsed.host_str().unwrap_or_default();
    assert!(
        parsed.scheme() == "https"
            && parsed.port_or_known_default() == Some(443)
            && parsed.username().is_empty()
            && parsed.password().is_none()
            && host.starts_with("sns.")
            && (host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")),
        "the SNS URL guard let {url:?} through (host {host:?})"
    );
}

fuzz_target!(|data: &[u8]| {
    // Bare URLs first: whatever passes is https on an SNS host.
    if let Ok(text) = std::str::from_utf8(data) {
        if check_cert_url(text).is_ok() {
            assert_sns_host(text);
        }
        if check_subscribe_url(text).is_ok() {
            assert_sns_host(text);
        }
    }
    let Ok(envelope) = SnsEnvelope::from_json(data) else {
        return;
    };
    if check_cert_url(&envelope.signing_cert_url).is_ok() {
        assert_sns_host(&envelope.signing_cert_url);
    }
    if let Some(url) = &envelope.subscribe_url
        && check_subscribe_url(url).is_ok()
    {
        assert_sns_host(url);
    }
    match string_to_sign(&envelope) {
        Ok(text) => {
            // Every signed field is in it, in SNS's `Key\nValue\n` form, Type last.
            assert!(text.starts_with("Message\n"));
            assert!(text.ends_with(&format!("Type\n{}\n", envelope.message_type)));
        }
        Err(_) => assert!(
            envelope.kind().is_err() || envelope.kind() != Ok(MessageType::Notification),
            "a Notification always has a string to sign"
        ),
    }
    // The JSON envelope survives a round trip (it is re-serialised in set-aside copies).
    let json = serde_json::to_vec(&envelope).expect("serialises");
    assert_eq!(SnsEnvelope::from_json(&json).expect("reads back"), envelope);
    if envelope.kind() == Ok(MessageType::Notification) {
        check_items(
            PROVIDER,
            &normalise(&envelope.message_id, &envelope.message),
        );
    }
});
