//! SES through SNS, the certificate path: whatever the "SNS host" serves as the signing
//! certificate (hostile PEM, truncated DER, a non-RSA key, an absurd validity), verification
//! answers — refused or unavailable — and never panics or accepts a signature the certificate's
//! key did not make.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailtrail_webhook_sink::verify::sns::testing::{
    CERT_URL, StaticFetcher, notification, sign_envelope,
};
use mailtrail_webhook_sink::verify::sns::{CertificateCache, SnsEnvelope, verify};
use rsa::RsaPrivateKey;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:acme-ses-events";

/// An envelope signed (at the wall-clock time the run starts, so that real certificates in the
/// corpus are valid) by a fresh key whose certificate the fuzzer cannot have.
fn envelope() -> &'static (SnsEnvelope, i64) {
    static ENVELOPE: OnceLock<(SnsEnvelope, i64)> = OnceLock::new();
    ENVELOPE.get_or_init(|| {
        let now = chrono::Utc::now().timestamp();
        let key = RsaPrivateKey::new(&mut rand_core::OsRng, 1024).expect("an RSA key");
        let mut envelope = notification(TOPIC, r#"{"eventType":"Delivery"}"#, now);
        sign_envelope(&key, &mut envelope, "2");
        (envelope, now)
    })
}

fuzz_target!(|pem: &[u8]| {
    let fetcher = Arc::new(StaticFetcher::new().with(CERT_URL, pem.to_vec()));
    let cache = CertificateCache::new(fetcher);
    let (envelope, now) = envelope();
    let future = verify(envelope, &cache, *now, Duration::from_secs(600));
    // The fetcher answers at once, so one poll finishes it.
    let mut future = std::pin::pin!(future);
    let Poll::Ready(verdict) = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    else {
        panic!("verification waited on a fetcher that answered at once");
    };
    assert!(
        verdict.is_err(),
        "a signature verified against a certificate the signer never had"
    );
});
