//! SendGrid's signed Event Webhook: ECDSA P-256 with SHA-256 over the
//! `X-Twilio-Email-Event-Webhook-Timestamp` header bytes immediately followed by the raw body,
//! sent as base64 of an ASN.1 DER signature in `X-Twilio-Email-Event-Webhook-Signature`.

use super::{VerifyError, check_window};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};
use std::time::Duration;

pub const SIGNATURE_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// The verification key SendGrid shows for the account (public, so not kept secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses the base64 DER SubjectPublicKeyInfo SendGrid shows, or the same wrapped in
    /// `-----BEGIN PUBLIC KEY-----` lines. Whitespace and line breaks are ignored.
    pub fn parse(key: &str) -> Result<PublicKey, String> {
        let key = key.trim();
        if key.is_empty() {
            return Err("the SendGrid public key is empty".into());
        }
        let body: String = if key.starts_with("-----BEGIN") {
            let mut lines = key.lines().map(str::trim).filter(|l| !l.is_empty());
            if lines.next() != Some("-----BEGIN PUBLIC KEY-----") {
                return Err("the SendGrid public key PEM is not a PUBLIC KEY".into());
            }
            let mut body = String::new();
            let mut ended = false;
            for line in lines {
                if line == "-----END PUBLIC KEY-----" {
                    ended = true;
                    break;
                }
                body.push_str(line);
            }
            if !ended {
                return Err("the SendGrid public key PEM has no END line".into());
            }
            body
        } else {
            key.split_whitespace().collect()
        };
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| "the SendGrid public key is not base64".to_owned())?;
        VerifyingKey::from_public_key_der(&der)
            .map(PublicKey)
            .map_err(|_| "the SendGrid public key is not a P-256 SubjectPublicKeyInfo".to_owned())
    }
}

fn digest(timestamp: &str, body: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(timestamp.as_bytes())
        .chain_update(body)
        .finalize()
        .into()
}

/// Verifies a SendGrid batch against every key; `now` in Unix seconds. Returns the index of the
/// first key that verifies (its tenant scope is the batch's).
pub fn verify(
    keys: &[PublicKey],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
    window: Duration,
) -> Result<usize, VerifyError> {
    if keys.is_empty() {
        return Err(VerifyError::NoKeys);
    }
    let signature = signature.ok_or(VerifyError::MissingHeader(SIGNATURE_HEADER))?;
    let timestamp = timestamp.ok_or(VerifyError::MissingHeader(TIMESTAMP_HEADER))?;
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| VerifyError::Malformed("the timestamp is not Unix seconds".into()))?;
    let der = STANDARD
        .decode(signature.trim())
        .map_err(|_| VerifyError::Malformed("the signature is not base64".into()))?;
    let signature = Signature::from_der(&der).map_err(|_| {
        VerifyError::Malformed("the signature is not an ECDSA DER signature".into())
    })?;
    let hash = digest(timestamp, body);
    // Public keys and a public signature: nothing secret to keep constant-time here.
    let signer = keys
        .iter()
        .position(|key| key.0.verify_prehash(&hash, &signature).is_ok())
        .ok_or(VerifyError::NoMatch)?;
    // Checked after the signature, so an unsigned timestamp tells an attacker nothing.
    check_window(seconds, now, window)?;
    Ok(signer)
}

/// Lets tests elsewhere act as SendGrid.
#[doc(hidden)]
pub mod testing {
    use super::digest;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::ecdsa::{Signature, SigningKey};
    use p256::pkcs8::EncodePublicKey;

    /// The `X-Twilio-Email-Event-Webhook-Signature` value for `timestamp` and `body`.
    pub fn sign(signing_key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
        let signature: Signature = signing_key
            .sign_prehash(&digest(timestamp, body))
            .expect("a SHA-256 prehash has the curve's size");
        STANDARD.encode(signature.to_der().as_bytes())
    }

    /// The key as SendGrid shows it: base64 DER SubjectPublicKeyInfo.
    pub fn public_key_base64(signing_key: &SigningKey) -> String {
        let der = signing_key
            .verifying_key()
            .to_public_key_der()
            .expect("a P-256 public key encodes");
        STANDARD.encode(der.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;

    const WINDOW: Duration = Duration::from_secs(300);

    /// The official vector, providers.md §2b (sendgrid-python `test_eventwebhook.py`).
    const KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";
    const SIGNATURE: &str = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM=";
    const TIMESTAMP: &str = "1600112502";
    const PAYLOAD: &str = concat!(
        r#"[{"email":"hello@world.com","event":"dropped","reason":"Bounced Address","sg_event_id":"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA","sg_message_id":"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0","smtp-id":"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>","timestamp":1600112492}]"#,
        "\r\n"
    );
    const BAD_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA==";
    const OTHER_SIGNATURE: &str = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0=";
    const NOW: i64 = 1_600_112_502;

    fn key(encoded: &str) -> PublicKey {
        PublicKey::parse(encoded).expect("a valid key")
    }

    fn check(keys: &[PublicKey], ts: &str, sig: &str, body: &[u8]) -> Result<usize, VerifyError> {
        verify(keys, Some(ts), Some(sig), body, NOW, WINDOW)
    }

    #[test]
    fn the_official_vector_verifies() {
        assert_eq!(
            check(&[key(KEY)], TIMESTAMP, SIGNATURE, PAYLOAD.as_bytes()),
            Ok(0)
        );
        // Without the trailing CRLF it is another body.
        assert_eq!(
            check(
                &[key(KEY)],
                TIMESTAMP,
                SIGNATURE,
                PAYLOAD.trim_end().as_bytes()
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn the_official_negative_cases_fail() {
        let keys = [key(KEY)];
        assert_eq!(
            check(&[key(BAD_KEY)], TIMESTAMP, SIGNATURE, PAYLOAD.as_bytes()),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check(&keys, TIMESTAMP, SIGNATURE, b"payload"),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check(&keys, TIMESTAMP, OTHER_SIGNATURE, PAYLOAD.as_bytes()),
            Err(VerifyError::NoMatch)
        );
        assert!(matches!(
            check(&keys, "timestamp", SIGNATURE, PAYLOAD.as_bytes()),
            Err(VerifyError::Malformed(_))
        ));
        // A signed-looking but different timestamp.
        assert_eq!(
            check(&keys, "1600112503", SIGNATURE, PAYLOAD.as_bytes()),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn tampering_and_bad_headers_are_refused() {
        let keys = [key(KEY)];
        let tampered = PAYLOAD.replace("dropped", "Dropped");
        assert_eq!(
            check(&keys, TIMESTAMP, SIGNATURE, tampered.as_bytes()),
            Err(VerifyError::NoMatch)
        );
        assert!(matches!(
            check(&keys, TIMESTAMP, "not base64!", PAYLOAD.as_bytes()),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check(&keys, TIMESTAMP, "bm90IERFUg==", PAYLOAD.as_bytes()),
            Err(VerifyError::Malformed(_))
        ));
        assert_eq!(
            verify(
                &keys,
                Some(TIMESTAMP),
                None,
                PAYLOAD.as_bytes(),
                NOW,
                WINDOW
            ),
            Err(VerifyError::MissingHeader(SIGNATURE_HEADER))
        );
        assert_eq!(
            verify(
                &keys,
                None,
                Some(SIGNATURE),
                PAYLOAD.as_bytes(),
                NOW,
                WINDOW
            ),
            Err(VerifyError::MissingHeader(TIMESTAMP_HEADER))
        );
        assert_eq!(
            check(&[], TIMESTAMP, SIGNATURE, PAYLOAD.as_bytes()),
            Err(VerifyError::NoKeys)
        );
    }

    #[test]
    fn the_window_is_checked_after_the_signature() {
        let keys = [key(KEY)];
        for now in [NOW + 301, NOW - 301] {
            assert!(matches!(
                verify(
                    &keys,
                    Some(TIMESTAMP),
                    Some(SIGNATURE),
                    PAYLOAD.as_bytes(),
                    now,
                    WINDOW
                ),
                Err(VerifyError::OutsideWindow(_))
            ));
        }
        // A wrong signature outside the window is reported as a wrong signature.
        assert_eq!(
            verify(
                &keys,
                Some(TIMESTAMP),
                Some(OTHER_SIGNATURE),
                PAYLOAD.as_bytes(),
                NOW + 301,
                WINDOW
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn a_generated_key_signs_and_verifies_also_when_rotated() {
        let signing_key = SigningKey::random(&mut rand_core::OsRng);
        let public = key(&testing::public_key_base64(&signing_key));
        let body = br#"[{"event":"delivered","email":"a@example.com"}]"#;
        let ts = "1700000000";
        let sig = testing::sign(&signing_key, ts, body);
        let now = 1_700_000_010;
        assert_eq!(
            verify(
                std::slice::from_ref(&public),
                Some(ts),
                Some(&sig),
                body,
                now,
                WINDOW
            ),
            Ok(0)
        );
        let rotated = [key(KEY), public];
        assert_eq!(
            verify(&rotated, Some(ts), Some(&sig), body, now, WINDOW),
            Ok(1)
        );
        assert_eq!(
            verify(&rotated[..1], Some(ts), Some(&sig), body, now, WINDOW),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn keys_parse_from_base64_or_pem_and_errors_do_not_echo_them() {
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
            &KEY[..64],
            &KEY[64..]
        );
        assert_eq!(key(&pem), key(KEY));
        assert_eq!(key(&format!("  {KEY}\n")), key(KEY));
        for bad in [
            "",
            "not base64!",
            "bm90IGEga2V5",
            &KEY[..40],
            "-----BEGIN PUBLIC KEY-----\nMFkw\n",
            "-----BEGIN PRIVATE KEY-----\nMFkw\n-----END PRIVATE KEY-----",
        ] {
            let error = PublicKey::parse(bad).expect_err("an invalid key");
            assert!(bad.is_empty() || !error.contains(bad), "{error}");
        }
    }
}
