//! Mailgun: HMAC-SHA256 with the account's webhook signing key (its bytes as given) over
//! `timestamp` followed by `token`, as lowercase hex in `signature.signature`. The signature does
//! not cover `event-data`; the token binds it to one delivery, so the endpoint also refuses a
//! token it has already seen with another body (`crate::replay`).

use super::{VerifyError, check_window};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The `signature` object of a Mailgun webhook body.
pub struct MailgunSignature<'a> {
    pub timestamp: &'a str,
    pub token: &'a str,
    pub signature: &'a str,
}

pub struct SigningKey(SecretString);

impl SigningKey {
    pub fn new(key: &str) -> Result<SigningKey, String> {
        if key.trim().is_empty() {
            return Err("the Mailgun signing key is empty".into());
        }
        Ok(SigningKey(key.trim().into()))
    }

    fn sign(&self, timestamp: &str, token: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(timestamp.as_bytes());
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The lowercase hex signature Mailgun would send.
    pub fn signature(&self, timestamp: &str, token: &str) -> String {
        hex::encode(self.sign(timestamp, token))
    }
}

pub fn verify(
    keys: &[SigningKey],
    signed: &MailgunSignature<'_>,
    now: i64,
    window: Duration,
) -> Result<usize, VerifyError> {
    if keys.is_empty() {
        return Err(VerifyError::NoKeys);
    }
    let presented = hex::decode(signed.signature)
        .ok()
        .filter(|s| s.len() == 32)
        .ok_or_else(|| VerifyError::Malformed("signature is not 64 hex digits".into()))?;
    let seconds: i64 = signed
        .timestamp
        .parse()
        .map_err(|_| VerifyError::Malformed("timestamp is not Unix seconds".into()))?;
    if signed.token.is_empty() {
        return Err(VerifyError::Malformed("the token is empty".into()));
    }
    // Every key is compared, in constant time each; the first that matches is the signer.
    let mut signer = None;
    for (index, key) in keys.iter().enumerate() {
        let matched = key
            .sign(signed.timestamp, signed.token)
            .as_slice()
            .ct_eq(&presented);
        if bool::from(matched) && signer.is_none() {
            signer = Some(index);
        }
    }
    let signer = signer.ok_or(VerifyError::NoMatch)?;
    check_window(seconds, now, window)?;
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    /// providers.md §1b (computed vectors; the second from anymail's defaults).
    const VECTORS: &[(&str, &str, &str, &str)] = &[
        (
            "test-webhook-signing-key",
            "1529006854",
            "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
            "f39dc10e00f54ea15fe9dfb7725c6d0c466b4b2df9c7f06b62194efa4ea0a2a8",
        ),
        (
            "TEST_WEBHOOK_SIGNING_KEY",
            "1234567890",
            "1234567890abcdef1234567890abcdef",
            "3b754b7c269e4c08fb3f5f36b2b5f98e45245965522dc16ca4c9faa0b11b557d",
        ),
    ];

    fn signed<'a>(ts: &'a str, token: &'a str, sig: &'a str) -> MailgunSignature<'a> {
        MailgunSignature {
            timestamp: ts,
            token,
            signature: sig,
        }
    }

    #[test]
    fn the_vectors_sign_and_verify() {
        for (secret, ts, token, expected) in VECTORS {
            let key = SigningKey::new(secret).expect("key");
            assert_eq!(key.signature(ts, token), *expected);
            let now: i64 = ts.parse().expect("seconds");
            assert_eq!(
                verify(&[key], &signed(ts, token, expected), now, WINDOW),
                Ok(0)
            );
        }
    }

    #[test]
    fn wrong_keys_tampering_bad_signatures_and_the_window() {
        let (secret, ts, token, sig) = VECTORS[0];
        let now: i64 = ts.parse().expect("seconds");
        let keys = [SigningKey::new(secret).expect("key")];
        let other = [SigningKey::new("another-key").expect("key")];
        assert_eq!(
            verify(&other, &signed(ts, token, sig), now, WINDOW),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&keys, &signed(ts, "a-different-token", sig), now, WINDOW),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&keys, &signed("1529006855", token, sig), now, WINDOW),
            Err(VerifyError::NoMatch)
        );
        assert!(matches!(
            verify(&keys, &signed(ts, token, "zz"), now, WINDOW),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            verify(
                &keys,
                &signed(ts, token, &sig.to_uppercase()[..10]),
                now,
                WINDOW
            ),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            verify(&keys, &signed(ts, token, sig), now + 301, WINDOW),
            Err(VerifyError::OutsideWindow(_))
        ));
        // A rotated second key verifies too.
        let rotated = [
            SigningKey::new("another-key").expect("key"),
            SigningKey::new(secret).expect("key"),
        ];
        assert_eq!(
            verify(&rotated, &signed(ts, token, sig), now, WINDOW),
            Ok(1)
        );
        assert!(SigningKey::new(" ").is_err());
    }
}
