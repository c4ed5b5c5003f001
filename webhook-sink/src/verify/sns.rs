//! Amazon SNS message signatures (SES events arrive through SNS): RSASSA-PKCS1-v1_5 with SHA-1
//! (`SignatureVersion` "1") or SHA-256 ("2") over a canonical string built from the envelope's
//! fields, checked with the key of the X.509 certificate at `SigningCertURL`, which must be an
//! SNS host. The signature covers fields of the JSON, so the envelope is parsed first (from a body
//! the caller has bounded) and nothing in it is used before it verified.

use super::{VerifyError, check_window};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};

/// The JSON body SNS posts, with its field names; the Lambda-style `…Url` spellings are
/// accepted too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnsEnvelope {
    #[serde(rename = "Type")]
    pub message_type: String,
    #[serde(rename = "MessageId")]
    pub message_id: String,
    #[serde(rename = "Token", default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(rename = "TopicArn")]
    pub topic_arn: String,
    #[serde(rename = "Subject", default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: String,
    #[serde(rename = "SignatureVersion")]
    pub signature_version: String,
    #[serde(rename = "Signature")]
    pub signature: String,
    #[serde(rename = "SigningCertURL", alias = "SigningCertUrl")]
    pub signing_cert_url: String,
    #[serde(
        rename = "SubscribeURL",
        alias = "SubscribeUrl",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub subscribe_url: Option<String>,
    #[serde(
        rename = "UnsubscribeURL",
        alias = "UnsubscribeUrl",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub unsubscribe_url: Option<String>,
}

/// The `Type` values SNS sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

impl SnsEnvelope {
    /// Parses an envelope; anything that is not one is `Malformed`.
    pub fn from_json(body: &[u8]) -> Result<SnsEnvelope, VerifyError> {
        serde_json::from_slice(body)
            .map_err(|e| VerifyError::Malformed(format!("not an SNS envelope: {e}")))
    }

    pub fn kind(&self) -> Result<MessageType, VerifyError> {
        match self.message_type.as_str() {
            "Notification" => Ok(MessageType::Notification),
            "SubscriptionConfirmation" => Ok(MessageType::SubscriptionConfirmation),
            "UnsubscribeConfirmation" => Ok(MessageType::UnsubscribeConfirmation),
            _ => Err(VerifyError::Malformed("unknown SNS message Type".into())),
        }
    }
}

/// The canonical text SNS signs: `Key\nValue\n` for each signed field, in SNS's order.
pub fn string_to_sign(envelope: &SnsEnvelope) -> Result<String, VerifyError> {
    let e = envelope;
    let mut fields: Vec<(&str, &str)> = vec![("Message", &e.message), ("MessageId", &e.message_id)];
    match e.kind()? {
        MessageType::Notification => {
            if let Some(subject) = &e.subject {
                fields.push(("Subject", subject));
            }
            fields.push(("Timestamp", &e.timestamp));
        }
        MessageType::SubscriptionConfirmation | MessageType::UnsubscribeConfirmation => {
            let missing =
                |name: &str| VerifyError::Malformed(format!("the {name} field is missing"));
            let subscribe_url = e
                .subscribe_url
                .as_deref()
                .ok_or_else(|| missing("SubscribeURL"))?;
            let token = e.token.as_deref().ok_or_else(|| missing("Token"))?;
            fields.push(("SubscribeURL", subscribe_url));
            fields.push(("Timestamp", &e.timestamp));
            fields.push(("Token", token));
        }
    }
    fields.push(("TopicArn", &e.topic_arn));
    fields.push(("Type", &e.message_type));
    let mut text = String::new();
    for (key, value) in fields {
        text.push_str(key);
        text.push('\n');
        text.push_str(value);
        text.push('\n');
    }
    Ok(text)
}

/// `^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$`, as the AWS validators require.
fn is_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let Some(region) = rest
        .strip_suffix(".amazonaws.com.cn")
        .or_else(|| rest.strip_suffix(".amazonaws.com"))
    else {
        return false;
    };
    region.len() >= 3
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// An https URL on an SNS host, without userinfo or a port other than 443.
fn sns_url(url: &str, what: &str) -> Result<reqwest::Url, VerifyError> {
    let refuse = |why: &str| VerifyError::Malformed(format!("the {what} {why}"));
    // No userinfo at all: "@" is where URL parsers disagree about the host.
    if url.contains('@') || url.contains('\\') {
        return Err(refuse("holds '@' or '\\'"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| refuse("is not a URL"))?;
    if parsed.scheme() != "https" {
        return Err(refuse("is not https"));
    }
    // The parser leaves the default port (443) out, so any port here is another one.
    if parsed.port().is_some() {
        return Err(refuse("has a port other than 443"));
    }
    if !parsed.host_str().is_some_and(is_sns_host) {
        return Err(refuse("is not on an Amazon SNS host"));
    }
    Ok(parsed)
}

/// Accepts only a certificate URL the AWS validators accept: https, an SNS host, a `.pem` path.
pub fn check_cert_url(url: &str) -> Result<(), VerifyError> {
    let parsed = sns_url(url, "SigningCertURL")?;
    if !parsed.path().ends_with(".pem") || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(VerifyError::Malformed(
            "the SigningCertURL is not a .pem file".into(),
        ));
    }
    Ok(())
}

/// Accepts a `SubscribeURL` only on an SNS host over https (any path and query).
pub fn check_subscribe_url(url: &str) -> Result<(), VerifyError> {
    sns_url(url, "SubscribeURL").map(|_| ())
}

/// Where certificates come from; injectable so tests need no network.
pub trait CertificateFetcher: Send + Sync {
    /// The PEM bytes at `url`, or why they could not be had.
    fn fetch<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;
}

/// Largest certificate response accepted (SNS's are about 2 KiB).
pub const MAX_CERT_BYTES: usize = 64 * 1024;

/// Fetches over https only, 10 s timeout, no redirects, at most [`MAX_CERT_BYTES`].
pub struct HttpsFetcher {
    client: reqwest::Client,
}

impl HttpsFetcher {
    pub fn new() -> Result<HttpsFetcher, String> {
        let client = reqwest::Client::builder()
            .https_only(true)
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the certificate HTTP client failed: {e}"))?;
        Ok(HttpsFetcher { client })
    }
}

impl CertificateFetcher for HttpsFetcher {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
        Box::pin(async move {
            let mut response = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| format!("fetching the signing certificate failed: {e}"))?;
            if !response.status().is_success() {
                return Err(format!(
                    "the signing certificate URL answered {}",
                    response.status()
                ));
            }
            let too_large = || format!("the signing certificate exceeds {MAX_CERT_BYTES} bytes");
            if response
                .content_length()
                .is_some_and(|n| n > MAX_CERT_BYTES as u64)
            {
                return Err(too_large());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("reading the signing certificate failed: {e}"))?
            {
                if body.len() + chunk.len() > MAX_CERT_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
    }
}

/// How many certificates are kept; SNS uses one per region at a time.
const CACHE_CAPACITY: usize = 64;

struct CachedKey {
    key: Arc<RsaPublicKey>,
    not_before: i64,
    not_after: i64,
    inserted: u64,
}

impl CachedKey {
    fn valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

#[derive(Default)]
struct CacheState {
    keys: HashMap<String, CachedKey>,
    inserted: u64,
}

/// Signing keys by certificate URL, fetched once each (at most 64 kept, oldest evicted first).
pub struct CertificateCache {
    fetcher: Arc<dyn CertificateFetcher>,
    state: Mutex<CacheState>,
}

impl CertificateCache {
    pub fn new(fetcher: Arc<dyn CertificateFetcher>) -> CertificateCache {
        CertificateCache {
            fetcher,
            state: Mutex::new(CacheState::default()),
        }
    }

    /// A cache over [`HttpsFetcher`].
    pub fn https() -> Result<CertificateCache, String> {
        Ok(CertificateCache::new(Arc::new(HttpsFetcher::new()?)))
    }

    fn cached(&self, url: &str, now: i64) -> Option<Arc<RsaPublicKey>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .keys
            .get(url)
            .filter(|cached| cached.valid_at(now))
            .map(|cached| cached.key.clone())
    }

    /// The RSA key of the certificate at `url` (already checked with [`check_cert_url`]),
    /// valid at `now` (Unix seconds).
    async fn public_key(&self, url: &str, now: i64) -> Result<Arc<RsaPublicKey>, VerifyError> {
        if let Some(key) = self.cached(url, now) {
            return Ok(key);
        }
        // The lock is not held across the fetch: a slow fetch must not stall cache hits.
        let pem = self
            .fetcher
            .fetch(url)
            .await
            .map_err(VerifyError::Unavailable)?;
        let (key, not_before, not_after) =
            parse_certificate(&pem).map_err(VerifyError::Unavailable)?;
        let cached = CachedKey {
            key: Arc::new(key),
            not_before,
            not_after,
            inserted: 0,
        };
        if !cached.valid_at(now) {
            return Err(VerifyError::Malformed(
                "the signing certificate is outside its validity period".into(),
            ));
        }
        let key = cached.key.clone();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.keys.len() >= CACHE_CAPACITY && !state.keys.contains_key(url) {
            let oldest = state
                .keys
                .iter()
                .min_by_key(|(_, cached)| cached.inserted)
                .map(|(url, _)| url.clone());
            if let Some(oldest) = oldest {
                state.keys.remove(&oldest);
            }
        }
        state.inserted += 1;
        let inserted = state.inserted;
        state
            .keys
            .insert(url.to_owned(), CachedKey { inserted, ..cached });
        Ok(key)
    }
}

/// The RSA key and validity (Unix seconds) of the first certificate in a PEM file.
fn parse_certificate(pem: &[u8]) -> Result<(RsaPublicKey, i64, i64), String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = std::str::from_utf8(pem).map_err(|_| "the signing certificate is not PEM")?;
    let start = text
        .find(BEGIN)
        .ok_or("the signing certificate is not PEM")?;
    let end = text[start..]
        .find(END)
        .map(|at| start + at + END.len())
        .ok_or("the signing certificate PEM has no END line")?;
    // PEM to DER first, then DER from a slice: der 0.7's PEM reader (`Certificate::from_pem`)
    // loops forever on some inputs (an empty SEQUENCE, found by fuzz/sns_certificate).
    let (label, der) = x509_cert::der::pem::decode_vec(&text.as_bytes()[start..end])
        .map_err(|e| format!("the signing certificate is not PEM: {e}"))?;
    if label != "CERTIFICATE" {
        return Err("the signing certificate is not PEM".into());
    }
    let certificate = Certificate::from_der(&der)
        .map_err(|e| format!("the signing certificate does not parse: {e}"))?;
    let tbs = &certificate.tbs_certificate;
    let spki = tbs
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("the certificate's public key does not encode: {e}"))?;
    let key = RsaPublicKey::from_public_key_der(&spki)
        .map_err(|_| "the signing certificate does not hold an RSA key".to_owned())?;
    let seconds = |time: x509_cert::time::Time| {
        i64::try_from(time.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
    };
    Ok((
        key,
        seconds(tbs.validity.not_before),
        seconds(tbs.validity.not_after),
    ))
}

/// The padding scheme and digest of `string_to_sign` for a `SignatureVersion`.
fn scheme_and_digest(version: &str, text: &str) -> Result<(Pkcs1v15Sign, Vec<u8>), VerifyError> {
    match version {
        "1" => Ok((
            Pkcs1v15Sign::new::<Sha1>(),
            Sha1::digest(text.as_bytes()).to_vec(),
        )),
        "2" => Ok((
            Pkcs1v15Sign::new::<Sha256>(),
            Sha256::digest(text.as_bytes()).to_vec(),
        )),
        _ => Err(VerifyError::Malformed(
            "unsupported SNS SignatureVersion".into(),
        )),
    }
}

/// Verifies an envelope's signature, then its `Timestamp` against `now` (Unix seconds).
/// `Unavailable` means the certificate could not be had (answer so that SNS retries); every
/// other error is a refusal. The caller checks `TopicArn` against its allow-list afterwards.
pub async fn verify(
    envelope: &SnsEnvelope,
    certs: &CertificateCache,
    now: i64,
    window: Duration,
) -> Result<(), VerifyError> {
    check_cert_url(&envelope.signing_cert_url)?;
    let text = string_to_sign(envelope)?;
    let (scheme, digest) = scheme_and_digest(&envelope.signature_version, &text)?;
    let signature = STANDARD
        .decode(envelope.signature.trim())
        .map_err(|_| VerifyError::Malformed("the Signature is not base64".into()))?;
    let timestamp = chrono::DateTime::parse_from_rfc3339(&envelope.timestamp)
        .map_err(|_| VerifyError::Malformed("the Timestamp is not RFC 3339".into()))?
        .timestamp();
    // Only well-formed envelopes cost a fetch.
    let key = certs.public_key(&envelope.signing_cert_url, now).await?;
    key.verify(scheme, &digest, &signature)
        .map_err(|_| VerifyError::NoMatch)?;
    // Checked after the signature, so an unsigned timestamp tells an attacker nothing.
    check_window(timestamp, now, window)
}

/// Lets tests elsewhere act as SNS, without network.
#[doc(hidden)]
pub mod testing {
    use super::{CertificateFetcher, SnsEnvelope, scheme_and_digest, string_to_sign};
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use rsa::RsaPrivateKey;
    use std::collections::HashMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, SystemTime};
    use x509_cert::builder::{Builder, CertificateBuilder, Profile};
    use x509_cert::der::EncodePem;
    use x509_cert::der::pem::LineEnding;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::SubjectPublicKeyInfoOwned;
    use x509_cert::time::{Time, Validity};

    /// A certificate URL that passes [`super::check_cert_url`].
    pub const CERT_URL: &str =
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-mailtrail-test.pem";

    /// Serves fixed PEM bytes by URL and counts fetches; unknown URLs fail.
    #[derive(Default)]
    pub struct StaticFetcher {
        certs: HashMap<String, Vec<u8>>,
        fetches: AtomicUsize,
    }

    impl StaticFetcher {
        pub fn new() -> StaticFetcher {
            StaticFetcher::default()
        }

        pub fn with(mut self, url: impl Into<String>, pem: impl Into<Vec<u8>>) -> StaticFetcher {
            self.certs.insert(url.into(), pem.into());
            self
        }

        /// Fetches so far, failed ones included.
        pub fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    impl CertificateFetcher for StaticFetcher {
        fn fetch<'a>(
            &'a self,
            url: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let found = self
                .certs
                .get(url)
                .cloned()
                .ok_or_else(|| format!("no certificate at {url}"));
            Box::pin(async move { found })
        }
    }

    fn time(unix_seconds: i64) -> Time {
        let seconds = u64::try_from(unix_seconds).expect("a time after 1970");
        Time::try_from(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
            .expect("a time X.509 can hold")
    }

    /// A self-signed certificate for `key`, valid between the two Unix times.
    pub fn self_signed_certificate_pem_valid(
        key: &RsaPrivateKey,
        not_before: i64,
        not_after: i64,
    ) -> String {
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
        let public = SubjectPublicKeyInfoOwned::from_key(key.to_public_key())
            .expect("an RSA public key encodes");
        let validity = Validity {
            not_before: time(not_before),
            not_after: time(not_after),
        };
        let subject: Name = "CN=sns.amazonaws.com".parse().expect("a valid name");
        let certificate = CertificateBuilder::new(
            Profile::Root,
            SerialNumber::from(1u32),
            validity,
            subject,
            public,
            &signer,
        )
        .expect("a certificate builder")
        .build::<rsa::pkcs1v15::Signature>()
        .expect("a signed certificate");
        certificate
            .to_pem(LineEnding::LF)
            .expect("a certificate encodes")
    }

    /// A self-signed certificate for `key`, valid from a day ago for a year (wall clock).
    pub fn self_signed_certificate_pem(key: &RsaPrivateKey) -> String {
        let now = chrono::Utc::now().timestamp();
        self_signed_certificate_pem_valid(key, now - 86_400, now + 365 * 86_400)
    }

    /// SNS's `Timestamp` format for Unix seconds.
    pub fn timestamp(unix_seconds: i64) -> String {
        chrono::DateTime::from_timestamp(unix_seconds, 0)
            .expect("a representable time")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// An unsigned Notification from [`CERT_URL`]; sign it with [`sign_envelope`].
    pub fn notification(topic_arn: &str, message: &str, unix_seconds: i64) -> SnsEnvelope {
        SnsEnvelope {
            message_type: "Notification".into(),
            message_id: "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324".into(),
            token: None,
            topic_arn: topic_arn.into(),
            subject: None,
            message: message.into(),
            timestamp: timestamp(unix_seconds),
            signature_version: "1".into(),
            signature: String::new(),
            signing_cert_url: CERT_URL.into(),
            subscribe_url: None,
            unsubscribe_url: Some(format!(
                "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}:test"
            )),
        }
    }

    /// Sets `SignatureVersion` to `version` ("1" or "2") and fills `Signature` as SNS would.
    pub fn sign_envelope(key: &RsaPrivateKey, envelope: &mut SnsEnvelope, version: &str) {
        envelope.signature_version = version.into();
        let text = string_to_sign(envelope).expect("a signable envelope");
        let (scheme, digest) = scheme_and_digest(version, &text).expect("version 1 or 2");
        let signature = key.sign(scheme, &digest).expect("RSA signing succeeds");
        envelope.signature = STANDARD.encode(signature);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{
        CERT_URL, StaticFetcher, notification, self_signed_certificate_pem,
        self_signed_certificate_pem_valid, sign_envelope,
    };
    use super::*;
    use rsa::RsaPrivateKey;
    use std::sync::OnceLock;

    const WINDOW: Duration = Duration::from_secs(3600);
    const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-events";

    /// Two keys per test binary: RSA generation is slow in debug builds.
    fn keys() -> &'static (RsaPrivateKey, RsaPrivateKey) {
        static KEYS: OnceLock<(RsaPrivateKey, RsaPrivateKey)> = OnceLock::new();
        KEYS.get_or_init(|| {
            let generate = || RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("an RSA key");
            (generate(), generate())
        })
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn cache_for(key: &RsaPrivateKey) -> (Arc<StaticFetcher>, CertificateCache) {
        let fetcher =
            Arc::new(StaticFetcher::new().with(CERT_URL, self_signed_certificate_pem(key)));
        let cache = CertificateCache::new(fetcher.clone());
        (fetcher, cache)
    }

    fn signed(version: &str, at: i64) -> SnsEnvelope {
        let mut envelope = notification(TOPIC, r#"{"eventType":"Delivery"}"#, at);
        sign_envelope(&keys().0, &mut envelope, version);
        envelope
    }

    fn envelope(fields: &[(&str, &str)]) -> SnsEnvelope {
        let object: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .chain(
                [
                    ("Signature", "x"),
                    ("SignatureVersion", "1"),
                    ("SigningCertURL", CERT_URL),
                ]
                .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v))),
            )
            .collect();
        let body = serde_json::to_vec(&object).expect("JSON");
        SnsEnvelope::from_json(&body).expect("an envelope")
    }

    /// Fuzzing found it (fuzz/sns_certificate, docs/hostile-input.md): an empty SEQUENCE in
    /// the served PEM made the certificate parser loop forever, holding a sink worker. Run on a
    /// thread so that a regression fails here instead of hanging the suite.
    #[test]
    fn hostile_certificates_are_refused_without_hanging() {
        let pem = b"-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";
        let (done, answer) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(parse_certificate(pem).map(|_| ()));
        });
        let verdict = answer
            .recv_timeout(Duration::from_secs(10))
            .expect("the parser answers within 10 s");
        assert!(verdict.is_err(), "{verdict:?}");
        // Other labels, bad base64 and no END line are refused too; a real certificate parses.
        for bad in [
            &b"-----BEGIN PUBLIC KEY-----\nMA==\n-----END PUBLIC KEY-----\n"[..],
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE-----\nMA==\n",
        ] {
            assert!(parse_certificate(bad).is_err());
        }
        let key = &keys().0;
        let pem = self_signed_certificate_pem(key);
        let (parsed, _, _) = parse_certificate(pem.as_bytes()).expect("a certificate");
        assert_eq!(parsed, key.to_public_key());
    }

    #[test]
    fn the_string_to_sign_vectors() {
        // aws-php-sns-message-validator testBuildsStringToSignCorrectly.
        let php = envelope(&[
            ("Message", "foo"),
            ("MessageId", "bar"),
            ("Timestamp", "1435697129"),
            ("TopicArn", "baz"),
            ("Type", "Notification"),
        ]);
        assert_eq!(
            string_to_sign(&php).expect("signable"),
            "Message\nfoo\nMessageId\nbar\nTimestamp\n1435697129\nTopicArn\nbaz\nType\nNotification\n"
        );
        // The AWS header example values, with a Subject.
        let aws = envelope(&[
            ("Message", "Hello world!"),
            ("MessageId", "165545c9-2a5c-472c-8df2-7ff2be2b3b1b"),
            ("Subject", "My First Message"),
            ("Timestamp", "2012-05-02T00:54:06.655Z"),
            ("TopicArn", "arn:aws:sns:us-west-2:123456789012:MyTopic"),
            ("Type", "Notification"),
        ]);
        assert_eq!(
            string_to_sign(&aws).expect("signable"),
            "Message\nHello world!\nMessageId\n165545c9-2a5c-472c-8df2-7ff2be2b3b1b\nSubject\nMy First Message\nTimestamp\n2012-05-02T00:54:06.655Z\nTopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\nType\nNotification\n"
        );
    }

    #[test]
    fn confirmations_sign_their_url_and_token_and_unknown_types_are_malformed() {
        let confirmation = envelope(&[
            ("Type", "SubscriptionConfirmation"),
            ("MessageId", "m"),
            ("Token", "t"),
            ("TopicArn", "a"),
            ("Message", "You have chosen to subscribe"),
            (
                "SubscribeUrl",
                "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
            ),
            ("Timestamp", "2012-04-26T20:45:04.751Z"),
        ]);
        assert_eq!(
            string_to_sign(&confirmation).expect("signable"),
            "Message\nYou have chosen to subscribe\nMessageId\nm\nSubscribeURL\nhttps://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription\nTimestamp\n2012-04-26T20:45:04.751Z\nToken\nt\nTopicArn\na\nType\nSubscriptionConfirmation\n"
        );
        let no_token = SnsEnvelope {
            token: None,
            ..confirmation.clone()
        };
        assert!(matches!(
            string_to_sign(&no_token),
            Err(VerifyError::Malformed(_))
        ));
        let unknown = SnsEnvelope {
            message_type: "Other".into(),
            ..confirmation
        };
        assert!(matches!(
            string_to_sign(&unknown),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            SnsEnvelope::from_json(b"{\"Type\":\"Notification\"}"),
            Err(VerifyError::Malformed(_))
        ));
        // Both spellings at once are a duplicate field, not a silent choice.
        assert!(
            SnsEnvelope::from_json(
                br#"{"Type":"Notification","MessageId":"m","TopicArn":"a","Message":"x","Timestamp":"t","SignatureVersion":"1","Signature":"s","SigningCertURL":"u","SigningCertUrl":"v"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn cert_urls() {
        for good in [
            CERT_URL,
            "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem",
            "https://sns.us-east-1.amazonaws.com:443/x.pem",
            "https://SNS.US-EAST-1.AMAZONAWS.COM/x.pem",
        ] {
            assert_eq!(check_cert_url(good), Ok(()), "{good}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.evil.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/x.pem",
            "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com/x.txt",
            "https://sns.us-east-1.amazonaws.com/x.pem?a=b",
            "https://sns.us-east-1.amazonaws.com/",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com@evil.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://sns.ab.amazonaws.com/x.pem",
            "https://sns.us.east.amazonaws.com/x.pem",
            "https://sqs.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com./x.pem",
            "https://sns.us-east-1.amazonaws.com\\@evil.com/x.pem",
            "sns.us-east-1.amazonaws.com/x.pem",
            "",
        ] {
            assert!(
                matches!(check_cert_url(bad), Err(VerifyError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(
            check_subscribe_url(
                "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=a&Token=t"
            ),
            Ok(())
        );
        for bad in [
            "http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
            "https://sns.evil.com/?Action=ConfirmSubscription",
            "https://a@sns.us-east-1.amazonaws.com/",
            "https://sns.us-east-1.amazonaws.com:444/",
        ] {
            assert!(check_subscribe_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn signed_envelopes_verify_with_both_versions_and_one_fetch() {
        let (fetcher, cache) = cache_for(&keys().0);
        let now = now();
        for version in ["1", "2"] {
            let envelope = signed(version, now - 30);
            assert_eq!(verify(&envelope, &cache, now, WINDOW).await, Ok(()));
            // It survives a JSON round trip, as it would on the wire.
            let body = serde_json::to_vec(&envelope).expect("JSON");
            let parsed = SnsEnvelope::from_json(&body).expect("an envelope");
            assert_eq!(verify(&parsed, &cache, now, WINDOW).await, Ok(()));
        }
        assert_eq!(fetcher.fetches(), 1);
    }

    #[tokio::test]
    async fn tampering_wrong_keys_and_bad_fields_are_refused() {
        let (_, cache) = cache_for(&keys().0);
        let now = now();
        let good = signed("2", now);
        let check = |envelope: SnsEnvelope| {
            let cache = &cache;
            async move { verify(&envelope, cache, now, WINDOW).await }
        };
        let tampered = SnsEnvelope {
            message: r#"{"eventType":"Bounce"}"#.into(),
            ..good.clone()
        };
        assert_eq!(check(tampered).await, Err(VerifyError::NoMatch));
        let topic = SnsEnvelope {
            topic_arn: "arn:aws:sns:us-east-1:999999999999:other".into(),
            ..good.clone()
        };
        assert_eq!(check(topic).await, Err(VerifyError::NoMatch));
        // Signed with v2 but claiming v1.
        let version = SnsEnvelope {
            signature_version: "1".into(),
            ..good.clone()
        };
        assert_eq!(check(version).await, Err(VerifyError::NoMatch));
        for odd in ["3", "", "01"] {
            let version = SnsEnvelope {
                signature_version: odd.into(),
                ..good.clone()
            };
            assert!(matches!(
                check(version).await,
                Err(VerifyError::Malformed(_))
            ));
        }
        let base64 = SnsEnvelope {
            signature: "not base64!".into(),
            ..good.clone()
        };
        assert!(matches!(
            check(base64).await,
            Err(VerifyError::Malformed(_))
        ));
        let url = SnsEnvelope {
            signing_cert_url: "https://sns.evil.com/x.pem".into(),
            ..good.clone()
        };
        assert!(matches!(check(url).await, Err(VerifyError::Malformed(_))));
        let timestamp = SnsEnvelope {
            timestamp: "yesterday".into(),
            ..good.clone()
        };
        assert!(matches!(
            check(timestamp).await,
            Err(VerifyError::Malformed(_))
        ));

        // The certificate of another key.
        let (_, other) = cache_for(&keys().1);
        assert_eq!(
            verify(&good, &other, now, WINDOW).await,
            Err(VerifyError::NoMatch)
        );
    }

    #[tokio::test]
    async fn the_timestamp_window_is_checked_after_the_signature() {
        let (_, cache) = cache_for(&keys().0);
        let now = now();
        let old = signed("1", now - 3601);
        assert!(matches!(
            verify(&old, &cache, now, WINDOW).await,
            Err(VerifyError::OutsideWindow(_))
        ));
        let future = signed("2", now + 3601);
        assert!(matches!(
            verify(&future, &cache, now, WINDOW).await,
            Err(VerifyError::OutsideWindow(_))
        ));
        let forged = SnsEnvelope {
            message: "forged".into(),
            ..old
        };
        assert_eq!(
            verify(&forged, &cache, now, WINDOW).await,
            Err(VerifyError::NoMatch)
        );
    }

    #[tokio::test]
    async fn fetch_failures_are_unavailable_not_refusals() {
        let now = now();
        let envelope = signed("1", now);
        let nothing = Arc::new(StaticFetcher::new());
        let cache = CertificateCache::new(nothing.clone());
        assert!(matches!(
            verify(&envelope, &cache, now, WINDOW).await,
            Err(VerifyError::Unavailable(_))
        ));
        // Failures are not cached: the next request tries again.
        assert!(matches!(
            verify(&envelope, &cache, now, WINDOW).await,
            Err(VerifyError::Unavailable(_))
        ));
        assert_eq!(nothing.fetches(), 2);
        let garbage = CertificateCache::new(Arc::new(
            StaticFetcher::new().with(CERT_URL, b"<html>oops</html>".to_vec()),
        ));
        assert!(matches!(
            verify(&envelope, &garbage, now, WINDOW).await,
            Err(VerifyError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn certificates_outside_their_validity_are_refused() {
        let now = now();
        let envelope = signed("2", now);
        let expired = self_signed_certificate_pem_valid(&keys().0, now - 200_000, now - 100_000);
        let fetcher = Arc::new(StaticFetcher::new().with(CERT_URL, expired));
        let cache = CertificateCache::new(fetcher.clone());
        assert!(matches!(
            verify(&envelope, &cache, now, WINDOW).await,
            Err(VerifyError::Malformed(_))
        ));
        // A valid certificate is used until it expires, then fetched again.
        let (fetcher, cache) = {
            let pem = self_signed_certificate_pem_valid(&keys().0, now - 10, now + 100);
            let fetcher = Arc::new(StaticFetcher::new().with(CERT_URL, pem));
            (fetcher.clone(), CertificateCache::new(fetcher))
        };
        assert_eq!(verify(&envelope, &cache, now, WINDOW).await, Ok(()));
        assert_eq!(
            verify(&envelope, &cache, now + 101, WINDOW).await,
            Err(VerifyError::Malformed(
                "the signing certificate is outside its validity period".into()
            ))
        );
        assert_eq!(fetcher.fetches(), 2);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let pem = self_signed_certificate_pem(&keys().0);
        let mut fetcher = StaticFetcher::new();
        let urls: Vec<String> = (0..CACHE_CAPACITY + 5)
            .map(|i| format!("https://sns.us-east-1.amazonaws.com/cert-{i}.pem"))
            .collect();
        for url in &urls {
            fetcher = fetcher.with(url.clone(), pem.clone());
        }
        let fetcher = Arc::new(fetcher);
        let cache = CertificateCache::new(fetcher.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let now = now();
        runtime.block_on(async {
            for url in &urls {
                cache.public_key(url, now).await.expect("a key");
            }
            // The first ones were evicted, the last one is still there.
            cache.public_key(&urls[0], now).await.expect("a key");
            cache
                .public_key(&urls[urls.len() - 1], now)
                .await
                .expect("a key");
        });
        let state = cache.state.lock().expect("not poisoned");
        assert_eq!(state.keys.len(), CACHE_CAPACITY);
        assert_eq!(fetcher.fetches(), urls.len() + 1);
    }

    #[test]
    fn verification_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (_, cache) = cache_for(&keys().0);
        let envelope = signed("1", now());
        assert_send(&verify(&envelope, &cache, 0, WINDOW));
    }
}
