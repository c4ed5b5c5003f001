//! Each API's requests built by hand with reqwest, as a provider client would send them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::{Api, Behaviour, Credentials, ProviderSim};

const TIMEOUT: Duration = Duration::from_secs(5);

/// One request to send; [`Send::new`] gives a valid one.
struct Send {
    /// The key presented (SES: the access key id; signed with the sim's secret).
    key: String,
    to: String,
    mailtrail_id: Option<String>,
    /// A top-level field (form field for Mailgun) to leave out.
    drop_field: Option<&'static str>,
    idempotency_key: Option<String>,
    subject: String,
}

impl Send {
    fn new(sim: &ProviderSim, to: &str) -> Send {
        Send {
            key: sim.credentials().key().to_owned(),
            to: to.to_owned(),
            mailtrail_id: Some(uuid::Uuid::new_v4().to_string()),
            drop_field: None,
            idempotency_key: None,
            subject: "Hello".to_owned(),
        }
    }

    fn key(mut self, key: &str) -> Send {
        self.key = key.to_owned();
        self
    }

    fn without_mailtrail_id(mut self) -> Send {
        self.mailtrail_id = None;
        self
    }

    fn without(mut self, field: &'static str) -> Send {
        self.drop_field = Some(field);
        self
    }

    fn idempotency_key(mut self, key: &str) -> Send {
        self.idempotency_key = Some(key.to_owned());
        self
    }

    fn subject(mut self, subject: &str) -> Send {
        self.subject = subject.to_owned();
        self
    }

    fn id(&self) -> String {
        self.mailtrail_id
            .clone()
            .expect("this request carries an id")
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("a reqwest client")
}

fn drop_key(body: &mut Value, field: Option<&str>) {
    if let (Some(field), Some(object)) = (field, body.as_object_mut()) {
        object.remove(field);
    }
}

async fn send(sim: &ProviderSim, send: &Send) -> reqwest::Result<reqwest::Response> {
    let client = client();
    let url = sim.send_url();
    let id = send.mailtrail_id.clone();
    let request = match sim.api() {
        Api::Mailgun => {
            let mut fields = vec![
                ("from", "Sender <sender@example.com>".to_owned()),
                ("to", send.to.clone()),
                ("subject", send.subject.clone()),
                ("text", "Hi there".to_owned()),
                ("html", "<p>Hi there</p>".to_owned()),
            ];
            if let Some(id) = &id {
                fields.push(("v:mailtrail_id", id.clone()));
                fields.push(("h:X-Mailtrail-Id", id.clone()));
            }
            let mut form = reqwest::multipart::Form::new();
            for (name, value) in fields {
                if Some(name) != send.drop_field {
                    form = form.text(name, value);
                }
            }
            client
                .post(url)
                .basic_auth("api", Some(&send.key))
                .multipart(form)
        }
        Api::SendGrid => {
            let mut personalization = json!({ "to": [{ "email": send.to, "name": "Rec" }] });
            let mut body = json!({
                "personalizations": [],
                "from": { "email": "sender@example.com", "name": "Sender" },
                "subject": send.subject,
                "content": [
                    { "type": "text/plain", "value": "Hi there" },
                    { "type": "text/html", "value": "<p>Hi there</p>" },
                ],
            });
            if let Some(id) = &id {
                personalization["custom_args"] = json!({ "mailtrail_id": id });
                body["headers"] = json!({ "X-Mailtrail-Id": id });
            }
            body["personalizations"] = json!([personalization]);
            drop_key(&mut body, send.drop_field);
            client.post(url).bearer_auth(&send.key).json(&body)
        }
        Api::Postmark => {
            let mut body = json!({
                "From": "Sender <sender@example.com>",
                "To": send.to,
                "Subject": send.subject,
                "TextBody": "Hi there",
                "HtmlBody": "<p>Hi there</p>",
                "MessageStream": "outbound",
            });
            if let Some(id) = &id {
                body["Metadata"] = json!({ "mailtrail_id": id });
                body["Headers"] = json!([{ "Name": "X-Mailtrail-Id", "Value": id }]);
            }
            drop_key(&mut body, send.drop_field);
            client
                .post(url)
                .header("Accept", "application/json")
                .header("X-Postmark-Server-Token", &send.key)
                .json(&body)
        }
        Api::Resend => {
            let mut body = json!({
                "from": "Sender <sender@example.com>",
                "to": [send.to],
                "subject": send.subject,
                "text": "Hi there",
                "html": "<p>Hi there</p>",
            });
            if let Some(id) = &id {
                body["tags"] = json!([{ "name": "mailtrail_id", "value": id }]);
                body["headers"] = json!({ "X-Mailtrail-Id": id });
            }
            drop_key(&mut body, send.drop_field);
            let mut request = client.post(url).bearer_auth(&send.key).json(&body);
            if let Some(key) = &send.idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            request
        }
        Api::Ses => {
            let mut body = json!({
                "FromEmailAddress": "sender@example.com",
                "Destination": { "ToAddresses": [send.to] },
                "Content": { "Simple": {
                    "Subject": { "Data": send.subject },
                    "Body": { "Text": { "Data": "Hi there" }, "Html": { "Data": "<p>Hi</p>" } },
                    "Headers": [],
                }},
                "ConfigurationSetName": "mailtrail",
            });
            if let Some(id) = &id {
                body["Content"]["Simple"]["Headers"] =
                    json!([{ "Name": "X-Mailtrail-Id", "Value": id }]);
                body["EmailTags"] = json!([{ "Name": "mailtrail_id", "Value": id }]);
            }
            drop_key(&mut body, send.drop_field);
            return ses_send(sim, &send.key, body.to_string().into_bytes(), None, None).await;
        }
    };
    request.send().await
}

/// Sends `body` to the SES sim, signed with SigV4 by `aws-sigv4` (access key `key`; the sim's
/// secret and region unless `secret` or `region` are given).
async fn ses_send(
    sim: &ProviderSim,
    key: &str,
    body: Vec<u8>,
    region: Option<&str>,
    secret: Option<&str>,
) -> reqwest::Result<reqwest::Response> {
    let Credentials::Ses {
        secret_access_key,
        region: sim_region,
        ..
    } = sim.credentials()
    else {
        panic!("not an SES sim");
    };
    let url = sim.send_url();
    let secret = secret.unwrap_or(&secret_access_key);
    let identity = aws_credential_types::Credentials::new(key, secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region.unwrap_or(&sim_region))
        .name("ses")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("signing params")
        .into();
    let signable = SignableRequest::new(
        "POST",
        url.as_str(),
        [("content-type", "application/json")].into_iter(),
        SignableBody::Bytes(&body),
    )
    .expect("a signable request");
    let (instructions, _) = sign(signable, &params).expect("a signature").into_parts();
    let mut request = client()
        .post(&url)
        .header("content-type", "application/json");
    for (name, value) in instructions.headers() {
        request = request.header(name, value);
    }
    request.body(body).send().await
}

async fn body(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, String) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a response body");
    (status, headers, text)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("a JSON body")
}

/// The status and a body fragment each API answers with.
struct Expected {
    accept: u16,
    invalid: u16,
    reject: (u16, &'static str),
    bad_key: (u16, &'static str),
    rate_limited: (u16, &'static str),
    server_error: (u16, &'static str),
}

fn expected(api: Api) -> Expected {
    match api {
        Api::Mailgun => Expected {
            accept: 200,
            invalid: 400,
            reject: (400, "'to' parameter is not a valid address"),
            bad_key: (401, "Forbidden"),
            rate_limited: (429, "Too many requests"),
            server_error: (500, "Internal Server Error"),
        },
        Api::SendGrid => Expected {
            accept: 202,
            invalid: 400,
            reject: (400, "personalizations.0.to.0.email"),
            bad_key: (401, "The provided authorization grant is invalid"),
            rate_limited: (429, "too many requests"),
            server_error: (500, "internal server error"),
        },
        Api::Postmark => Expected {
            accept: 200,
            invalid: 422,
            reject: (422, "\"ErrorCode\":406"),
            bad_key: (401, "\"ErrorCode\":10"),
            rate_limited: (429, "Rate limit exceeded"),
            server_error: (500, "Internal server error"),
        },
        Api::Resend => Expected {
            accept: 200,
            invalid: 422,
            reject: (422, "validation_error"),
            bad_key: (403, "invalid_api_key"),
            rate_limited: (429, "rate_limit_exceeded"),
            server_error: (500, "internal_server_error"),
        },
        Api::Ses => Expected {
            accept: 200,
            invalid: 400,
            reject: (400, "MessageRejected"),
            bad_key: (403, "UnrecognizedClientException"),
            rate_limited: (429, "TooManyRequestsException"),
            server_error: (500, "InternalFailure"),
        },
    }
}

/// A key of the right form that the sim does not accept.
fn wrong_key(api: Api) -> &'static str {
    match api {
        Api::Mailgun => "key-wrong",
        Api::SendGrid => "SG.wrong.key",
        Api::Postmark => "11111111-1111-4111-8111-111111111111",
        Api::Resend => "re_wrong",
        Api::Ses => "AKIAWRONGWRONGWRONG0",
    }
}

#[tokio::test]
async fn a_valid_request_is_accepted_and_recorded() {
    for api in Api::ALL {
        let sim = ProviderSim::start(api).await.expect("the sim starts");
        let request = Send::new(&sim, "Rec@Example.com");
        let (status, headers, text) = body(send(&sim, &request).await.expect("an answer")).await;
        assert_eq!(status, expected(api).accept, "{api:?}: {text}");
        let answered_id = match api {
            Api::Mailgun => {
                let answer = json(&text);
                assert_eq!(answer["message"], "Queued. Thank you.");
                answer["id"].as_str().expect("an id").to_owned()
            }
            Api::SendGrid => {
                assert!(text.is_empty(), "SendGrid answers an empty body");
                headers["x-message-id"]
                    .to_str()
                    .expect("an X-Message-Id")
                    .to_owned()
            }
            Api::Postmark => {
                let answer = json(&text);
                assert_eq!(answer["ErrorCode"], 0);
                assert_eq!(answer["Message"], "OK");
                assert_eq!(answer["To"], "Rec@Example.com");
                assert!(answer["SubmittedAt"].is_string());
                answer["MessageID"]
                    .as_str()
                    .expect("a MessageID")
                    .to_owned()
            }
            Api::Resend => json(&text)["id"].as_str().expect("an id").to_owned(),
            Api::Ses => json(&text)["MessageId"]
                .as_str()
                .expect("a MessageId")
                .to_owned(),
        };
        assert!(
            sim.wait_for_accepted(1, TIMEOUT).await,
            "{api:?} accepted nothing"
        );
        assert_eq!(sim.malformed(), vec![], "{api:?}");
        assert_eq!(sim.requests(), 1);
        let accepted = sim.accepted();
        assert_eq!(accepted.len(), 1);
        let received = &accepted[0];
        assert_eq!(received.mailtrail_id, Some(request.id()), "{api:?}");
        assert_eq!(received.header_mailtrail_id, Some(request.id()), "{api:?}");
        assert_eq!(received.to, vec!["Rec@Example.com".to_owned()]);
        assert_eq!(received.from, "sender@example.com");
        assert_eq!(received.subject, "Hello");
        assert_eq!(received.text.as_deref(), Some("Hi there"), "{api:?}");
        assert_eq!(received.provider_message_id, answered_id);
    }
}

#[tokio::test]
async fn a_wrong_key_gets_the_bad_key_answer_whatever_the_behaviour() {
    for api in Api::ALL {
        let sim = ProviderSim::start(api).await.expect("the sim starts");
        sim.set_behaviour(Behaviour::DropConnection);
        let request = Send::new(&sim, "rec@example.com").key(wrong_key(api));
        let (status, _, text) = body(send(&sim, &request).await.expect("an answer")).await;
        let (want, fragment) = expected(api).bad_key;
        assert_eq!(status, want, "{api:?}: {text}");
        assert!(text.contains(fragment), "{api:?}: {text}");
        assert!(sim.accepted().is_empty());
        assert_eq!(
            sim.malformed(),
            vec![],
            "a wrong key is not a malformed request"
        );
        assert_eq!(sim.requests(), 1);
    }
}

#[tokio::test]
async fn set_credentials_changes_the_accepted_key() {
    let sim = ProviderSim::start(Api::Resend)
        .await
        .expect("the sim starts");
    sim.set_credentials(Credentials::Resend {
        api_key: "re_rotated".into(),
    });
    let old = Send::new(&sim, "rec@example.com").key("re_mailtrail_sim");
    let answer = send(&sim, &old).await.expect("an answer");
    assert_eq!(answer.status().as_u16(), 403);
    let new = Send::new(&sim, "rec@example.com");
    let answer = send(&sim, &new).await.expect("an answer");
    assert_eq!(answer.status().as_u16(), 200);
}

#[tokio::test]
async fn each_behaviour_gives_its_answer() {
    for api in Api::ALL {
        let sim = ProviderSim::start(api).await.expect("the sim starts");
        let want = expected(api);
        for (behaviour, (status, fragment)) in [
            (Behaviour::RejectMessage, want.reject),
            (Behaviour::BadKey, want.bad_key),
            (Behaviour::RateLimited, want.rate_limited),
            (Behaviour::ServerError, want.server_error),
            (
                Behaviour::Custom {
                    status: 503,
                    body: "{\"down\":true}".into(),
                },
                (503, "down"),
            ),
        ] {
            sim.set_behaviour(behaviour.clone());
            let request = Send::new(&sim, "rec@example.com");
            let (got, headers, text) = body(send(&sim, &request).await.expect("an answer")).await;
            assert_eq!(got, status, "{api:?} {behaviour:?}: {text}");
            assert!(
                text.contains(fragment),
                "{api:?} {behaviour:?}: {text:?} lacks {fragment:?}"
            );
            if behaviour == Behaviour::RateLimited {
                assert_eq!(headers["retry-after"], "1", "{api:?}");
            }
        }
        assert!(sim.accepted().is_empty(), "{api:?}");
        assert_eq!(sim.malformed(), vec![], "{api:?}");
        assert_eq!(sim.requests(), 5);
    }
}

#[tokio::test]
async fn resend_invalid_to_address_is_a_403_naming_the_recipient() {
    let sim = ProviderSim::start(Api::Resend)
        .await
        .expect("the sim starts");
    sim.set_behaviour(Behaviour::resend_invalid_to_address());
    let (status, _, text) = body(
        send(&sim, &Send::new(&sim, "rec@example.com"))
            .await
            .expect("an answer"),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(json(&text)["name"], "invalid_to_address");
}

#[tokio::test]
async fn drop_connection_is_a_connection_error() {
    for api in Api::ALL {
        let sim = ProviderSim::start(api).await.expect("the sim starts");
        sim.set_behaviour(Behaviour::DropConnection);
        let outcome = send(&sim, &Send::new(&sim, "rec@example.com")).await;
        let error = outcome.expect_err("no answer");
        assert!(!error.is_timeout(), "{api:?}: {error}");
        assert!(
            error.is_request() || error.is_connect(),
            "{api:?}: {error:?}"
        );
        assert_eq!(sim.requests(), 1);
        assert!(sim.accepted().is_empty());
        // The server still answers the next request.
        sim.set_behaviour(Behaviour::Accept);
        let answer = send(&sim, &Send::new(&sim, "rec@example.com"))
            .await
            .expect("an answer");
        assert!(answer.status().is_success());
    }
}

#[tokio::test]
async fn slow_answers_after_the_delay_and_accepts() {
    for api in Api::ALL {
        let sim = ProviderSim::start(api).await.expect("the sim starts");
        let delay = Duration::from_millis(200);
        sim.set_behaviour(Behaviour::Slow(delay));
        let started = Instant::now();
        let answer = send(&sim, &Send::new(&sim, "rec@example.com"))
            .await
            .expect("an answer");
        assert!(started.elapsed() >= delay, "{api:?}");
        assert_eq!(answer.status().as_u16(), expected(api).accept);
        assert_eq!(sim.accepted_count(), 1);
    }
}

#[tokio::test]
async fn a_recipient_override_beats_the_general_behaviour() {
    for api in Api::ALL {
        let sim = ProviderSim::start(api).await.expect("the sim starts");
        sim.set_behaviour_for("Bad@Example.com", Behaviour::RejectMessage);
        sim.set_behaviour_for("slow@example.com", Behaviour::ServerError);
        let good = send(&sim, &Send::new(&sim, "good@example.com"))
            .await
            .expect("an answer");
        assert_eq!(good.status().as_u16(), expected(api).accept, "{api:?}");
        let bad = send(&sim, &Send::new(&sim, "bad@example.COM"))
            .await
            .expect("an answer");
        assert_eq!(bad.status().as_u16(), expected(api).reject.0, "{api:?}");
        sim.set_behaviour(Behaviour::RateLimited);
        let other = send(&sim, &Send::new(&sim, "good@example.com"))
            .await
            .expect("an answer");
        assert_eq!(other.status().as_u16(), 429);
        let server = send(&sim, &Send::new(&sim, "slow@example.com"))
            .await
            .expect("an answer");
        assert_eq!(server.status().as_u16(), 500);
        sim.clear_behaviour_overrides();
        sim.set_behaviour(Behaviour::Accept);
        let again = send(&sim, &Send::new(&sim, "bad@example.com"))
            .await
            .expect("an answer");
        assert_eq!(again.status().as_u16(), expected(api).accept);
        let accepted = sim.accepted();
        assert_eq!(accepted.len(), 2);
        assert_eq!(accepted[0].to, vec!["good@example.com".to_owned()]);
        assert_eq!(sim.malformed(), vec![]);
    }
}

#[tokio::test]
async fn resend_honours_the_idempotency_key() {
    let sim = ProviderSim::start(Api::Resend)
        .await
        .expect("the sim starts");
    let request = Send::new(&sim, "rec@example.com").idempotency_key("email-1");
    let first = json(&body(send(&sim, &request).await.expect("an answer")).await.2);
    let second = json(&body(send(&sim, &request).await.expect("an answer")).await.2);
    assert_eq!(first["id"], second["id"]);
    assert_eq!(
        sim.accepted_count(),
        1,
        "a repeated key is not a second message"
    );
    assert_eq!(sim.requests(), 2);
    assert_eq!(
        sim.accepted()[0].idempotency_key.as_deref(),
        Some("email-1")
    );

    let other = Send::new(&sim, "rec@example.com").idempotency_key("email-2");
    let third = json(&body(send(&sim, &other).await.expect("an answer")).await.2);
    assert_ne!(third["id"], first["id"]);
    assert_eq!(sim.accepted_count(), 2);
    assert!(sim.malformed().is_empty());

    // The same key with another body is refused, and is a client mistake.
    let changed = Send::new(&sim, "rec@example.com")
        .idempotency_key("email-1")
        .subject("Changed");
    let (status, _, text) = body(send(&sim, &changed).await.expect("an answer")).await;
    assert_eq!(status, 409);
    assert_eq!(json(&text)["name"], "invalid_idempotent_request");
    assert_eq!(sim.accepted_count(), 2);
    assert_eq!(sim.malformed().len(), 1);
}

#[tokio::test]
async fn a_request_without_the_mailtrail_id_is_a_message_fault_and_malformed() {
    for api in Api::ALL {
        let sim = ProviderSim::start(api).await.expect("the sim starts");
        let request = Send::new(&sim, "rec@example.com").without_mailtrail_id();
        let (status, _, text) = body(send(&sim, &request).await.expect("an answer")).await;
        assert_eq!(status, expected(api).invalid, "{api:?}: {text}");
        assert!(text.contains("mailtrail_id"), "{api:?}: {text}");
        let malformed = sim.malformed();
        assert_eq!(malformed.len(), 1, "{api:?}");
        assert_eq!(malformed[0].status, status);
        assert!(
            malformed[0].problems[0].contains("mailtrail_id"),
            "{api:?}: {:?}",
            malformed[0].problems
        );
        assert!(
            malformed[0]
                .problems
                .iter()
                .any(|p| p.contains("X-Mailtrail-Id")),
            "{api:?}: {:?}",
            malformed[0].problems
        );
        assert!(sim.accepted().is_empty());
    }
}

#[tokio::test]
async fn a_request_without_a_required_field_is_malformed() {
    for (api, field) in [
        (Api::Mailgun, "subject"),
        (Api::SendGrid, "from"),
        (Api::Postmark, "From"),
        (Api::Resend, "subject"),
        (Api::Ses, "FromEmailAddress"),
    ] {
        let sim = ProviderSim::start(api).await.expect("the sim starts");
        let request = Send::new(&sim, "rec@example.com").without(field);
        let (status, _, text) = body(send(&sim, &request).await.expect("an answer")).await;
        assert_eq!(status, expected(api).invalid, "{api:?}: {text}");
        let malformed = sim.malformed();
        assert_eq!(malformed.len(), 1, "{api:?}");
        assert!(
            malformed[0]
                .problems
                .iter()
                .any(|p| p.to_lowercase().contains(&field.to_lowercase())),
            "{api:?}: {:?}",
            malformed[0].problems
        );
    }
}

#[tokio::test]
async fn wrong_paths_and_auth_forms_are_malformed() {
    let sim = ProviderSim::start(Api::Mailgun)
        .await
        .expect("the sim starts");
    let key = sim.credentials().key().to_owned();
    let wrong_domain = client()
        .post(format!("{}/v3/other.example.com/messages", sim.base_url()))
        .basic_auth("api", Some(&key))
        .form(&[("from", "a@b.c")])
        .send()
        .await
        .expect("an answer");
    assert_eq!(wrong_domain.status().as_u16(), 404);
    let bearer = client()
        .post(sim.send_url())
        .bearer_auth(&key)
        .form(&[("from", "a@b.c")])
        .send()
        .await
        .expect("an answer");
    assert_eq!(bearer.status().as_u16(), 401);
    let get = client()
        .get(sim.send_url())
        .send()
        .await
        .expect("an answer");
    assert_eq!(get.status().as_u16(), 405);
    assert_eq!(sim.malformed().len(), 3);

    let sim = ProviderSim::start(Api::SendGrid)
        .await
        .expect("the sim starts");
    let no_auth = client()
        .post(sim.send_url())
        .json(&json!({}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(no_auth.status().as_u16(), 401);
    let wrong_path = client()
        .post(format!("{}/v3/mail/sent", sim.base_url()))
        .send()
        .await
        .expect("an answer");
    assert_eq!(wrong_path.status().as_u16(), 404);
    assert_eq!(sim.malformed().len(), 2);
}

#[tokio::test]
async fn mailgun_accepts_urlencoded_forms_and_comma_lists() {
    let sim = ProviderSim::start(Api::Mailgun)
        .await
        .expect("the sim starts");
    let id = uuid::Uuid::new_v4().to_string();
    let answer = client()
        .post(sim.send_url())
        .basic_auth("api", Some(sim.credentials().key()))
        .form(&[
            ("from", "sender@example.com"),
            ("to", "\"Doe, J\" <j@example.com>, k@example.com"),
            ("subject", "Hi"),
            ("html", "<p>Hi</p>"),
            ("v:mailtrail_id", id.as_str()),
            ("h:X-Mailtrail-Id", id.as_str()),
            ("o:tag", "welcome"),
        ])
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status().as_u16(), 200);
    let received = &sim.accepted()[0];
    assert_eq!(received.to, vec!["j@example.com", "k@example.com"]);
    assert_eq!(received.html.as_deref(), Some("<p>Hi</p>"));
    assert_eq!(received.raw["o:tag"], "welcome");
    assert_eq!(received.mailtrail_id, Some(id));
}

#[tokio::test]
async fn ses_raw_mime_is_read_for_the_header_id() {
    let sim = ProviderSim::start(Api::Ses).await.expect("the sim starts");
    let id = uuid::Uuid::new_v4().to_string();
    let mime = format!(
        "From: Sender <sender@example.com>\r\nTo: rec@example.com\r\nSubject: Raw\r\n\
         X-Mailtrail-Id: {id}\r\nContent-Type: text/plain\r\n\r\nHello\r\n"
    );
    let body = json!({
        "Content": { "Raw": {
            "Data": base64::engine::general_purpose::STANDARD.encode(mime),
        }},
        "EmailTags": [{ "Name": "mailtrail_id", "Value": id }],
    });
    let key = sim.credentials().key().to_owned();
    let answer = ses_send(&sim, &key, body.to_string().into_bytes(), None, None)
        .await
        .expect("an answer");
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(sim.malformed(), vec![]);
    let received = &sim.accepted()[0];
    assert_eq!(received.header_mailtrail_id.as_deref(), Some(id.as_str()));
    assert_eq!(received.mailtrail_id.as_deref(), Some(id.as_str()));
    assert_eq!(received.to, vec!["rec@example.com"]);
    assert_eq!(received.from, "sender@example.com");
    assert_eq!(received.subject, "Raw");
}

#[tokio::test]
async fn ses_checks_the_region_and_the_signature() {
    let sim = ProviderSim::start(Api::Ses).await.expect("the sim starts");
    let key = sim.credentials().key().to_owned();
    let request = Send::new(&sim, "rec@example.com");
    let body = json!({
        "FromEmailAddress": "sender@example.com",
        "Destination": { "ToAddresses": ["rec@example.com"] },
        "Content": { "Simple": {
            "Subject": { "Data": "Hi" },
            "Body": { "Text": { "Data": "Hi" } },
            "Headers": [{ "Name": "X-Mailtrail-Id", "Value": request.id() }],
        }},
        "EmailTags": [{ "Name": "mailtrail_id", "Value": request.id() }],
    })
    .to_string()
    .into_bytes();

    let wrong_region = ses_send(&sim, &key, body.clone(), Some("eu-west-1"), None)
        .await
        .expect("an answer");
    assert_eq!(wrong_region.status().as_u16(), 403);
    let text = wrong_region.text().await.expect("a body");
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");

    let expired = client()
        .post(sim.send_url())
        .header("content-type", "application/json")
        .header("x-amz-date", "20200101T000000Z")
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={key}/20200101/us-east-1/ses/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={}",
                "0".repeat(64)
            ),
        )
        .body(body.clone())
        .send()
        .await
        .expect("an answer");
    assert_eq!(expired.status().as_u16(), 403, "an expired date");
    let wrong_secret = ses_send(&sim, &key, body, None, Some("another-secret"))
        .await
        .expect("an answer");
    assert_eq!(wrong_secret.status().as_u16(), 403);
    let malformed = sim.malformed();
    assert_eq!(malformed.len(), 3, "{malformed:?}");
    assert!(malformed[0].problems[0].contains("region"));
    assert!(malformed[1].problems[0].contains("15 minutes"));
    assert!(malformed[2].problems[0].contains("signature does not match"));
    assert!(sim.accepted().is_empty());
}

#[tokio::test]
async fn counts_without_keeping_for_benchmarks() {
    let sim = Arc::new(
        ProviderSim::start(Api::Postmark)
            .await
            .expect("the sim starts"),
    );
    sim.set_keep_messages(false);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let sim = sim.clone();
        tasks.spawn(async move {
            let request = Send::new(&sim, "rec@example.com");
            send(&sim, &request)
                .await
                .map(|answer| answer.status().as_u16())
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("the task ends").expect("an answer"), 200);
    }
    assert!(sim.wait_for_accepted(50, TIMEOUT).await);
    assert!(!sim.wait_for_accepted(51, Duration::from_millis(50)).await);
    assert!(sim.accepted().is_empty());
    assert_eq!(sim.accepted_count(), 50);
    assert_eq!(sim.requests(), 50);
}
