//! Standard Webhooks (and Resend, which signs the same way under `svix-*` header names):
//! HMAC-SHA256 over `id.timestamp.body`, keys serialised as `whsec_<base64>`, and a header of
//! space-separated `v1,<base64 signature>` entries, any of which may match.

use super::{VerifyError, check_window};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// One signing key: the bytes behind `whsec_…`, never logged.
pub struct SigningKey(SecretSlice<u8>);

impl SigningKey {
    /// Parses `whsec_<base64>` (the prefix is optional; unpadded base64 is accepted, as the
    /// reference libraries do).
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        let encoded = secret
            .trim()
            .strip_prefix("whsec_")
            .unwrap_or(secret.trim());
        if encoded.is_empty() {
            return Err("the signing secret is empty".into());
        }
        let bytes = STANDARD
            .decode(encoded)
            .or_else(|_| STANDARD_NO_PAD.decode(encoded))
            .map_err(|_| "the signing secret is not whsec_ followed by base64".to_owned())?;
        Ok(SigningKey(bytes.into()))
    }

    fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The header value this key would send: `v1,<base64>`.
    pub fn signature_header(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.sign(id, timestamp, body)))
    }
}

/// The three signature headers, from either the `webhook-*` or the `svix-*` family.
pub struct SignedRequest<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

/// Verifies a request against every key; `now` in Unix seconds. Returns the index of the key
/// that signed it (its tenant scope is the report's).
pub fn verify(
    keys: &[SigningKey],
    request: &SignedRequest<'_>,
    now: i64,
    window: Duration,
) -> Result<usize, VerifyError> {
    if keys.is_empty() {
        return Err(VerifyError::NoKeys);
    }
    let id = request.id.ok_or(VerifyError::MissingHeader("webhook-id"))?;
    let timestamp = request
        .timestamp
        .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
    let header = request
        .signature
        .ok_or(VerifyError::MissingHeader("webhook-signature"))?;
    if id.is_empty() || id.contains('.') || timestamp.contains('.') {
        return Err(VerifyError::Malformed("id or timestamp holds a '.'".into()));
    }
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| VerifyError::Malformed("the timestamp is not Unix seconds".into()))?;
    // Signatures of the supported version (v1); other versions are ignored, not errors.
    let candidates: Vec<Vec<u8>> = header
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .filter(|sig| sig.len() == 32)
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::Malformed(
            "no v1 signature in the header".into(),
        ));
    }
    // Every key and candidate is compared, in constant time each, whichever matches.
    let mut signer = None;
    for (index, key) in keys.iter().enumerate() {
        let expected = key.sign(id, timestamp, request.body);
        let mut matched = subtle::Choice::from(0);
        for candidate in &candidates {
            matched |= expected.as_slice().ct_eq(candidate.as_slice());
        }
        if bool::from(matched) && signer.is_none() {
            signer = Some(index);
        }
    }
    let signer = signer.ok_or(VerifyError::NoMatch)?;
    // Checked after the signature, so an unsigned timestamp tells an attacker nothing.
    check_window(seconds, now, window)?;
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    fn key(secret: &str) -> SigningKey {
        SigningKey::parse(secret).expect("a valid secret")
    }

    fn request<'a>(id: &'a str, ts: &'a str, sig: &'a str, body: &'a [u8]) -> SignedRequest<'a> {
        SignedRequest {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
            body,
        }
    }

    /// The official vectors (providers.md §5a) and the Resend-shaped one.
    const VECTORS: &[(&str, &str, &str, &str, &str)] = &[
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            "1708645272",
            r#"{"type":"email.delivered","created_at":"2024-02-22T23:41:12.126Z","data":{"created_at":"2024-02-22T23:41:11.894719+00:00","email_id":"56761188-7520-42d8-8898-ff6fc54ce618","from":"Acme <onboarding@resend.dev>","to":["delivered@resend.dev"],"subject":"Sending this example"}}"#,
            "v1,NgPUty4IM3d/GuK7/D/mPoD71sEVqxCEPPqf1MJuNzc=",
        ),
    ];

    #[test]
    fn the_published_vectors_sign_and_verify() {
        for (secret, id, ts, body, expected) in VECTORS {
            let k = key(secret);
            assert_eq!(k.signature_header(id, ts, body.as_bytes()), *expected);
            let now: i64 = ts.parse().expect("seconds");
            assert_eq!(
                verify(
                    &[k],
                    &request(id, ts, expected, body.as_bytes()),
                    now,
                    WINDOW
                ),
                Ok(0)
            );
        }
    }

    #[test]
    fn tampering_wrong_keys_and_bad_headers_are_refused() {
        let (secret, id, ts, body, sig) = VECTORS[0];
        let now: i64 = ts.parse().expect("seconds");
        let keys = [key(secret)];
        let check = |id: &str, ts: &str, sig: &str, body: &str| {
            verify(&keys, &request(id, ts, sig, body.as_bytes()), now, WINDOW)
        };
        assert_eq!(
            check(id, ts, sig, r#"{"test": 2432232315}"#),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check(
                id,
                ts,
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
                body
            ),
            Err(VerifyError::NoMatch),
            "one character off"
        );
        assert!(matches!(
            check(id, ts, "v1,", body),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check(id, ts, &sig.replace("v1,", "v2,"), body),
            Err(VerifyError::Malformed(_))
        ));
        assert_eq!(check("msg_other", ts, sig, body), Err(VerifyError::NoMatch));
        let wrong = [key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")];
        assert_eq!(
            verify(&wrong, &request(id, ts, sig, body.as_bytes()), now, WINDOW),
            Err(VerifyError::NoMatch)
        );
        let missing = SignedRequest {
            signature: None,
            ..request(id, ts, sig, body.as_bytes())
        };
        assert_eq!(
            verify(&keys, &missing, now, WINDOW),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        assert_eq!(
            verify(&[], &request(id, ts, sig, body.as_bytes()), now, WINDOW),
            Err(VerifyError::NoKeys)
        );
    }

    #[test]
    fn several_signatures_several_keys_and_the_window() {
        let (secret, id, ts, body, sig) = VECTORS[0];
        let now: i64 = ts.parse().expect("seconds");
        // Junk entries and other versions around one valid signature pass.
        let header = format!("v1a,abc v1,bm90LWEtc2lnbmF0dXJl {sig} v2,xyz");
        let rotated = [key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"), key(secret)];
        assert_eq!(
            verify(
                &rotated,
                &request(id, ts, &header, body.as_bytes()),
                now,
                WINDOW
            ),
            Ok(1)
        );
        // Outside the window, either way, only after the signature matched.
        assert!(matches!(
            verify(
                &rotated,
                &request(id, ts, sig, body.as_bytes()),
                now + 301,
                WINDOW
            ),
            Err(VerifyError::OutsideWindow(_))
        ));
        assert!(matches!(
            verify(
                &rotated,
                &request(id, ts, sig, body.as_bytes()),
                now - 301,
                WINDOW
            ),
            Err(VerifyError::OutsideWindow(_))
        ));
        assert!(SigningKey::parse("whsec_").is_err());
        assert!(SigningKey::parse("whsec_not base64!").is_err());
        // The prefix is optional.
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
    }
}
