//! Amazon SES v2 `SendEmail`: `POST /v2/email/outbound-emails`, AWS SigV4 (service `ses`),
//! JSON with `FromEmailAddress`, `Destination.ToAddresses`, `Content.Simple` (`Subject`, `Body`,
//! `Headers`) or `Content.Raw.Data` (base64 MIME; our header is read from the decoded MIME
//! headers) and `EmailTags: [{Name, Value}]`; answers `200 {"MessageId": "…"}`. Errors are
//! `{"__type", "message"}` plus the `x-amzn-ErrorType` header.
//!
//! The `Authorization` header is checked in full: its shape, the credential scope (access key
//! id, date, region, service `ses`), `x-amz-date` (format, within 15 minutes of now), the
//! signed headers being present, `x-amz-content-sha256` (when sent) matching the body, and the
//! signature itself, recomputed with `aws-sigv4` from the signed headers and the secret key.

use std::time::SystemTime;

use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hyper::Method;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::Credentials;
use crate::spec::{self, Answer, Fault, Message, Rejection, Request, Spec};
use crate::wire;

pub(crate) struct Ses;

const PATH: &str = "/v2/email/outbound-emails";
const SERVICE: &str = "ses";
/// How far `x-amz-date` may be from now.
const MAX_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

fn error(status: u16, kind: &str, message: &str) -> Answer {
    Answer::json(status, json!({ "__type": kind, "message": message }))
        .with_header("x-amzn-errortype", kind)
        .with_header("x-amzn-requestid", uuid::Uuid::new_v4().to_string())
}

fn unrecognized_client() -> Answer {
    error(
        403,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )
}

fn signature_mismatch(message: &str) -> Answer {
    error(403, "SignatureDoesNotMatch", message)
}

fn incomplete(message: &str) -> Answer {
    error(400, "IncompleteSignatureException", message)
}

const MISMATCH: &str = "The request signature we calculated does not match the signature you \
                        provided. Check your AWS Secret Access Key and signing method. Consult \
                        the service documentation for details.";

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(header: &str) -> Result<Authorization<'_>, Rejection> {
    let Some(rest) = header.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(Rejection::malformed(
            incomplete("Authorization header requires the AWS4-HMAC-SHA256 algorithm."),
            "Authorization does not start with `AWS4-HMAC-SHA256 `",
        ));
    };
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", value)) => credential = Some(value.trim()),
            Some(("SignedHeaders", value)) => signed_headers = Some(value.trim()),
            Some(("Signature", value)) => signature = Some(value.trim()),
            _ => {
                return Err(Rejection::malformed(
                    incomplete(&format!("Authorization header: unexpected part {part:?}.")),
                    format!("Authorization has an unexpected part {part:?}"),
                ));
            }
        }
    }
    let missing = |name: &str| {
        Rejection::malformed(
            incomplete(&format!(
                "Authorization header requires '{name}' parameter."
            )),
            format!("Authorization has no {name}="),
        )
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(Rejection::malformed(
            incomplete(&format!(
                "Credential should be <key>/<date>/<region>/<service>/aws4_request, not \
                 {credential:?}."
            )),
            format!("Credential {credential:?} is not <key>/<yyyymmdd>/<region>/ses/aws4_request"),
        ));
    };
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Rejection::malformed(
            incomplete("Signature must be 64 lowercase hexadecimal characters."),
            format!("Signature {signature:?} is not 64 lowercase hex characters"),
        ));
    }
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed_headers.split(';').collect(),
        signature,
    })
}

impl Spec for Ses {
    fn route(&self, request: &Request<'_>, _: &Credentials) -> Result<(), Rejection> {
        if request.path != PATH {
            return Err(Rejection::malformed(
                error(404, "UnknownOperationException", "Not Found"),
                format!("no SES v2 SendEmail endpoint at {}", request.path),
            ));
        }
        if request.method != Method::POST {
            return Err(Rejection::malformed(
                error(405, "UnknownOperationException", "Method Not Allowed"),
                format!("{} instead of POST", request.method),
            ));
        }
        Ok(())
    }

    fn auth(&self, request: &Request<'_>, credentials: &Credentials) -> Result<(), Rejection> {
        let Credentials::Ses {
            access_key_id,
            secret_access_key,
            region,
        } = credentials
        else {
            return Err(Rejection::refused(unrecognized_client()));
        };
        let Some(header) = request.header("authorization") else {
            return Err(Rejection::malformed(
                error(
                    403,
                    "MissingAuthenticationTokenException",
                    "Missing Authentication Token",
                ),
                "no Authorization header",
            ));
        };
        let authorization = parse_authorization(header)?;
        let Some(amz_date) = request.header("x-amz-date") else {
            return Err(Rejection::malformed(
                incomplete(
                    "Authorization header requires existence of either a 'X-Amz-Date' or a \
                     'Date' header.",
                ),
                "no x-amz-date header",
            ));
        };
        let Ok(time) = chrono::NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ") else {
            return Err(Rejection::malformed(
                incomplete(&format!("Invalid X-Amz-Date {amz_date:?}.")),
                format!("x-amz-date {amz_date:?} is not yyyymmddThhmmssZ"),
            ));
        };
        let time = time.and_utc();
        let mismatch =
            |problem: String| Rejection::malformed(signature_mismatch(MISMATCH), problem);
        if !amz_date.starts_with(authorization.date) || authorization.date.len() != 8 {
            return Err(Rejection::malformed(
                signature_mismatch(&format!(
                    "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of \
                     date from HTTP: '{}' != '{}', from '{amz_date}'.",
                    authorization.date,
                    &amz_date[..8]
                )),
                format!(
                    "credential scope date {} is not the date of x-amz-date {amz_date}",
                    authorization.date
                ),
            ));
        }
        if authorization.service != SERVICE {
            return Err(Rejection::malformed(
                signature_mismatch("Credential should be scoped to correct service: 'ses'."),
                format!(
                    "credential scope service is {:?}, must be \"ses\"",
                    authorization.service
                ),
            ));
        }
        if authorization.access_key_id != access_key_id {
            return Err(Rejection::refused(unrecognized_client()));
        }
        if authorization.region != region {
            return Err(Rejection::malformed(
                signature_mismatch(&format!(
                    "Credential should be scoped to a valid region, not '{}'.",
                    authorization.region
                )),
                format!(
                    "credential scope region is {:?}, the sim's is {region:?}",
                    authorization.region
                ),
            ));
        }
        if (chrono::Utc::now() - time).abs() > MAX_SKEW {
            return Err(Rejection::malformed(
                signature_mismatch(&format!(
                    "Signature expired: {amz_date} is more than 15 minutes from now."
                )),
                format!("x-amz-date {amz_date} is more than 15 minutes from now"),
            ));
        }
        for required in ["host", "x-amz-date"] {
            if !authorization.signed_headers.contains(&required) {
                return Err(mismatch(format!(
                    "SignedHeaders does not include {required}"
                )));
            }
        }
        for name in &authorization.signed_headers {
            if name.is_empty() || *name != name.to_ascii_lowercase() {
                return Err(mismatch(format!(
                    "SignedHeaders {:?} must be lowercase names separated by ';'",
                    authorization.signed_headers.join(";")
                )));
            }
            if !request.headers.contains_key(*name) {
                return Err(mismatch(format!(
                    "signed header {name} is not in the request"
                )));
            }
        }
        if let Some(sent) = request.header("x-amz-content-sha256") {
            let actual = hex::encode(Sha256::digest(request.body));
            if sent != actual {
                return Err(mismatch(format!(
                    "x-amz-content-sha256 {sent} is not the SHA-256 of the body ({actual})"
                )));
            }
        }
        let computed = signature(
            request,
            &authorization,
            SystemTime::from(time),
            access_key_id,
            secret_access_key,
            region,
        )
        .map_err(&mismatch)?;
        if computed != authorization.signature {
            return Err(mismatch(
                "the signature does not match (wrong secret access key, or the request \
                 changed after signing)"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    fn parse(&self, request: &Request<'_>) -> Result<Message, Rejection> {
        let invalid = |problem: String| Rejection::malformed(self.invalid(&problem), problem);
        if !request.is_json() {
            return Err(invalid(format!(
                "Content-Type {:?}, must be application/json",
                request.header("content-type").unwrap_or_default()
            )));
        }
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|error_| invalid(format!("the body is not JSON: {error_}")))?;
        let mut problems = Vec::new();
        let destination: Vec<String> = body
            .pointer("/Destination/ToAddresses")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(wire::address)
                    .collect()
            })
            .unwrap_or_default();
        let from_field = spec::string(&body, "FromEmailAddress").map(wire::address);
        let content = body.get("Content");
        let simple = content.and_then(|c| c.get("Simple"));
        let raw = content.and_then(|c| c.get("Raw"));
        let kinds = ["Simple", "Raw", "Template"]
            .iter()
            .filter(|kind| content.and_then(|c| c.get(**kind)).is_some())
            .count();
        let mut message = Message::default();
        if kinds != 1 {
            problems
                .push("Content must contain exactly one of Simple, Raw or Template.".to_owned());
        } else if let Some(simple) = simple {
            match from_field.clone() {
                Some(from) => message.from = from,
                None => problems.push("FromEmailAddress is required.".to_owned()),
            }
            if destination.is_empty() {
                problems.push("Destination.ToAddresses is required.".to_owned());
            }
            message.to = destination.clone();
            match simple.pointer("/Subject/Data").and_then(Value::as_str) {
                Some(subject) if !subject.trim().is_empty() => message.subject = subject.into(),
                _ => problems.push("Content.Simple.Subject.Data is required.".to_owned()),
            }
            let part = |kind: &str| {
                simple
                    .pointer(&format!("/Body/{kind}/Data"))
                    .and_then(Value::as_str)
                    .filter(|data| !data.is_empty())
                    .map(str::to_owned)
            };
            message.text = part("Text");
            message.html = part("Html");
            if message.text.is_none() && message.html.is_none() {
                problems.push("Content.Simple.Body needs Text.Data or Html.Data.".to_owned());
            }
            message.headers = spec::pairs(simple.get("Headers"), "Name", "Value");
            message.header_mailtrail_id =
                wire::header(&message.headers, crate::MAILTRAIL_ID_HEADER).map(str::to_owned);
        } else if let Some(raw) = raw {
            let mime = raw
                .get("Data")
                .and_then(Value::as_str)
                .ok_or_else(|| "Content.Raw.Data is required.".to_owned())
                .and_then(|data| {
                    STANDARD
                        .decode(data)
                        .map_err(|error_| format!("Content.Raw.Data is not base64: {error_}"))
                });
            match mime {
                Err(problem) => problems.push(problem),
                Ok(mime) => {
                    let headers = wire::mime_headers(&String::from_utf8_lossy(&mime));
                    let mime_from = wire::header(&headers, "From").map(wire::address);
                    match from_field.clone().or(mime_from) {
                        Some(from) => message.from = from,
                        None => problems.push(
                            "FromEmailAddress or a From header in the raw message is required."
                                .to_owned(),
                        ),
                    }
                    message.to = if destination.is_empty() {
                        wire::header(&headers, "To")
                            .map(wire::addresses)
                            .unwrap_or_default()
                    } else {
                        destination.clone()
                    };
                    if message.to.is_empty() {
                        problems.push(
                            "Destination.ToAddresses or a To header in the raw message is \
                             required."
                                .to_owned(),
                        );
                    }
                    match wire::header(&headers, "Subject") {
                        Some(subject) if !subject.is_empty() => message.subject = subject.into(),
                        _ => problems.push("The raw message has no Subject header.".to_owned()),
                    }
                    message.header_mailtrail_id =
                        wire::header(&headers, crate::MAILTRAIL_ID_HEADER).map(str::to_owned);
                    message.headers = headers;
                }
            }
        } else {
            problems.push("The simulator supports Content.Simple and Content.Raw only.".into());
        }
        if message.to.len() > 50 {
            problems.push("Recipient count exceeds 50.".to_owned());
        }
        match body.get("EmailTags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(tags)) => {
                for tag in tags {
                    let name = tag.get("Name").and_then(Value::as_str).unwrap_or_default();
                    let value = tag.get("Value").and_then(Value::as_str).unwrap_or_default();
                    if !wire::is_tag_text(name) || !wire::is_tag_text(value) {
                        problems.push(format!(
                            "Invalid tag {tag}: names and values must be 1-256 characters of \
                             A-Z, a-z, 0-9, _ and -."
                        ));
                    }
                }
            }
            Some(_) => problems.push("EmailTags must be an array.".to_owned()),
        }
        if !problems.is_empty() {
            return Err(Rejection {
                answer: self.invalid(&problems[0]),
                problems,
            });
        }
        message.mailtrail_id =
            spec::pair_value(body.get("EmailTags"), "Name", "Value", crate::MAILTRAIL_ID)
                .map(str::to_owned);
        message.raw = body;
        Ok(message)
    }

    fn invalid(&self, problem: &str) -> Answer {
        error(400, "BadRequestException", problem)
    }

    fn metadata_field(&self) -> &'static str {
        "EmailTags [{\"Name\": \"mailtrail_id\", \"Value\": …}]"
    }

    fn header_field(&self) -> &'static str {
        "Content.Simple.Headers, or a header of the Content.Raw MIME"
    }

    fn fault(&self, fault: Fault, message: &Message, credentials: &Credentials) -> Answer {
        match fault {
            Fault::RejectMessage => {
                let region = match credentials {
                    Credentials::Ses { region, .. } => region.to_ascii_uppercase(),
                    _ => String::new(),
                };
                error(
                    400,
                    "MessageRejected",
                    &format!(
                        "Email address is not verified. The following identities failed the \
                         check in region {region}: {}",
                        message.to.join(", ")
                    ),
                )
            }
            Fault::BadKey => unrecognized_client(),
            Fault::RateLimited => error(429, "TooManyRequestsException", "Too Many Requests"),
            Fault::ServerError => error(
                500,
                "InternalFailure",
                "The request processing has failed because of an unknown error, exception or \
                 failure.",
            ),
        }
    }

    fn new_id(&self, _: &Credentials, _: u64) -> String {
        // Like `010001870c1d2e3f-6c8b7a5e-4f3d-4e2a-9b1c-0d2e3f4a5b6c-000000`.
        let millis = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        format!(
            "{:016x}-{}-000000",
            0x0100_0000_0000_0000_u64 | millis,
            uuid::Uuid::new_v4()
        )
    }

    fn accepted(&self, _: &Message, id: &str) -> Answer {
        Answer::json(200, json!({ "MessageId": id }))
            .with_header("x-amzn-requestid", uuid::Uuid::new_v4().to_string())
    }
}

/// The signature of `request` as `aws-sigv4` computes it from the headers the client signed.
fn signature(
    request: &Request<'_>,
    authorization: &Authorization<'_>,
    time: SystemTime,
    access_key_id: &str,
    secret_access_key: &str,
    region: &str,
) -> Result<String, String> {
    let signed = &authorization.signed_headers;
    let host = request.header("host").unwrap_or("localhost");
    let uri = format!("http://{host}{}", request.path_and_query);
    let mut headers = Vec::new();
    for name in signed {
        // Added by the signer from the time, the body and the credentials.
        if matches!(
            *name,
            "x-amz-date" | "x-amz-content-sha256" | "x-amz-security-token"
        ) {
            continue;
        }
        for value in request.headers.get_all(*name) {
            let value = value
                .to_str()
                .map_err(|_| format!("signed header {name} is not visible ASCII"))?;
            headers.push((*name, value));
        }
    }
    let session_token = signed
        .contains(&"x-amz-security-token")
        .then(|| request.header("x-amz-security-token").map(str::to_owned))
        .flatten();
    let identity = aws_credential_types::Credentials::new(
        access_key_id,
        secret_access_key,
        session_token,
        None,
        "provider-sim",
    )
    .into();
    let mut settings = SigningSettings::default();
    // Only the signed headers are passed in, so none must be left out.
    settings.excluded_headers = None;
    if signed.contains(&"x-amz-content-sha256") {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|error| format!("cannot recompute the signature: {error}"))?
        .into();
    let signable = SignableRequest::new(
        request.method.as_str(),
        uri,
        headers.into_iter(),
        SignableBody::Bytes(request.body),
    )
    .map_err(|error| format!("cannot recompute the signature: {error}"))?;
    let (_, signature) = sign(signable, &params)
        .map_err(|error| format!("cannot recompute the signature: {error}"))?
        .into_parts();
    Ok(signature)
}
