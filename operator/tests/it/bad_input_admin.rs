//! The bad-input catalogue of the admin HTTP API (docs/hostile-input.md): for each endpoint
//! family (messages get/search/export/cancel, stats, audit, dead letters
//! list/show/replay/discard, suppressions, sign-in and session) a table of bad path parameters,
//! bad query strings and bad JSON bodies (wrong types, invalid UTF-8, deep nesting, over-size,
//! CR/LF in values), each with the status the API defines, always as problem+json and never a
//! 5xx; then good requests are still served. Takes about 10 s (the operator starting included).

use crate::helpers::{World, api_ready};
use mailtrail_operator::keys::{self, Role};
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::{HttpAnswer, eventually, http_call};
use serde_json::Value;
use std::time::Duration;

/// One request and the status it must get.
struct Row {
    method: &'static str,
    path: String,
    body: Vec<u8>,
    /// `None`: the admin key.
    authorization: Option<String>,
    status: u16,
}

fn row(method: &'static str, path: impl Into<String>, body: impl AsRef<[u8]>, status: u16) -> Row {
    Row {
        method,
        path: path.into(),
        body: body.as_ref().to_vec(),
        authorization: None,
        status,
    }
}

fn get(path: impl Into<String>, status: u16) -> Row {
    row("GET", path, b"", status)
}

async fn call(port: u16, row: &Row, admin: &str) -> HttpAnswer {
    let bearer = format!("Bearer {admin}");
    let authorization = row.authorization.as_deref().unwrap_or(&bearer);
    let mut headers = vec![("content-type", "application/json")];
    if !authorization.is_empty() {
        headers.push(("authorization", authorization));
    }
    http_call(port, row.method, &row.path, &headers, &row.body).await
}

/// Bodies every JSON-taking endpoint must refuse with 400 (before or after its own checks).
fn unreadable_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("malformed JSON", b"{\"reason\": nope}".to_vec()),
        (
            "a truncated body",
            b"{\"tenant\": \"acme\", \"addr".to_vec(),
        ),
        ("invalid UTF-8", b"{\"reason\": \"\xff\xfe\"}".to_vec()),
        ("10,000 nested arrays", "[".repeat(10_000).into_bytes()),
        ("a JSON array", b"[]".to_vec()),
        ("an empty body", Vec::new()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_bad_input_catalogue() {
    let world = World::new().await;
    // One email to look up, and one dead letter (a request without a body) to act on.
    world
        .publish(
            Queue::Mailbox,
            br#"{"id": "bad-input-1", "tenant": "acme", "from": "shop@acme.test",
                "to": "ann@example.com", "subject": "Hi", "text": "Hello"}"#,
            None,
        )
        .await;
    world
        .publish(
            Queue::Mailbox,
            br#"{"tenant": "acme", "subject": "x"}"#,
            None,
        )
        .await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    api_ready(port).await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, admin) = keys::create(&mut conn, "ops", None, Role::Admin)
        .await
        .expect("key");
    drop(conn);
    let email = ids::email_id("acme", "bad-input-1", "ann@example.com");
    let dead_letter = eventually("the dead letter is listed", Duration::from_secs(20), || {
        let admin = admin.clone();
        async move {
            let answer = call(port, &get("/v1/dead-letters", 200), &admin).await;
            answer.json()["items"][0]["id"].as_str().map(str::to_owned)
        }
    })
    .await;
    let unknown = uuid::Uuid::new_v4();
    let long = "x".repeat(10_000);

    let mut rows = vec![
        // Messages: get and cancel.
        get("/v1/messages/not-a-uuid", 404),
        get(format!("/v1/messages/{unknown}"), 404),
        get("/v1/messages/%FF%FE", 404),
        get(format!("/v1/messages/{email}%0D%0AX-Injected:%201"), 404),
        get(format!("/v1/messages/{email}%00"), 404),
        get(format!("/v1/messages/{long}"), 404),
        row("DELETE", "/v1/messages/not-a-uuid", b"", 404),
        row("DELETE", format!("/v1/messages/{unknown}"), b"", 404),
        row("PUT", format!("/v1/messages/{email}"), b"{}", 405),
        // Search and export.
        get("/v1/messages?limit=abc", 400),
        get("/v1/messages?limit=-1", 400),
        get("/v1/messages?limit=99999999999999999999999", 400),
        get("/v1/messages?since=yesterday", 400),
        get("/v1/messages?status=lost", 400),
        get(
            "/v1/messages?recipient=a%40b.test%0D%0ABcc:%20x%40evil.test",
            400,
        ),
        get("/v1/messages?recipient=%FF%FE", 400),
        get("/v1/messages?after=garbage", 400),
        get("/v1/messages?tenant=acme%00", 400),
        get("/v1/messages?no_such_parameter=1", 400),
        get(format!("/v1/messages?tag={long}"), 200),
        get("/v1/messages/export?format=xml", 400),
        get("/v1/messages/export?since=2026-13-45T99:00:00Z", 400),
        // Stats and audit.
        get("/v1/stats?since=yesterday", 400),
        get("/v1/stats?bucket=minute", 400),
        get("/v1/stats?tz=Mars%2FOlympus", 400),
        get("/v1/stats?since=1970-01-01T00:00:00Z", 400),
        get("/v1/audit?limit=abc", 400),
        get("/v1/audit?before=%FF", 400),
        // Dead letters.
        get("/v1/dead-letters?state=lost", 400),
        get("/v1/dead-letters?limit=0", 400),
        get("/v1/dead-letters?after=%0D%0A", 400),
        get("/v1/dead-letters/not-a-uuid", 404),
        get(format!("/v1/dead-letters/{unknown}"), 404),
        row("POST", "/v1/dead-letters/not-a-uuid/replay", b"", 404),
        row(
            "POST",
            format!("/v1/dead-letters/{unknown}/replay"),
            b"",
            404,
        ),
        row("POST", "/v1/dead-letters/replay?limit=0", b"", 400),
        row("POST", "/v1/dead-letters/replay?state=discarded", b"", 400),
        row(
            "POST",
            format!("/v1/dead-letters/{unknown}/discard"),
            br#"{"reason": "x"}"#,
            404,
        ),
        // Suppressions.
        get("/v1/suppressions?limit=abc", 400),
        get("/v1/suppressions?after=%FF", 400),
        get("/v1/suppressions/acme/not-an-address", 404),
        get("/v1/suppressions/acme/a%40b.test%0D%0ABcc:x", 404),
        // Sign-in and session.
        {
            let mut r = get("/v1/session", 401);
            r.authorization = Some("Bearer mtk_\u{ff}\u{fe}".into());
            r
        },
        {
            let mut r = get("/v1/session", 401);
            r.authorization = Some("Basic YWRtaW46YWRtaW4=".into());
            r
        },
        row("POST", "/v1/sign-in", br#"{"key": 5}"#, 400),
        row(
            "POST",
            "/v1/sign-in",
            br#"{"key": "mtk_x\r\nSet-Cookie: a=b"}"#,
            401,
        ),
    ];
    for (_, body) in unreadable_bodies() {
        rows.push(row(
            "POST",
            format!("/v1/dead-letters/{dead_letter}/discard"),
            &body,
            400,
        ));
        rows.push(row("POST", "/v1/suppressions", &body, 400));
        rows.push(row("POST", "/v1/sign-in", &body, 400));
    }
    let discard = format!("/v1/dead-letters/{dead_letter}/discard");
    rows.extend([
        row("POST", &discard, br#"{"reason": 5}"#, 400),
        row("POST", &discard, br#"{"reason": "   "}"#, 400),
        row(
            "POST",
            &discard,
            format!(r#"{{"reason": "{}"}}"#, "r".repeat(501)),
            400,
        ),
        row("POST", &discard, br#"{"reason": "a\u0000b"}"#, 400),
        row(
            "POST",
            "/v1/suppressions",
            br#"{"tenant": 1, "address": []}"#,
            400,
        ),
        row(
            "POST",
            "/v1/suppressions",
            br#"{"tenant": "", "address": "a@b.test"}"#,
            400,
        ),
        row(
            "POST",
            "/v1/suppressions",
            br#"{"tenant": "acme", "address": "a@b.test\r\nBcc: x@evil.test"}"#,
            400,
        ),
        row(
            "POST",
            "/v1/suppressions",
            br#"{"tenant": "acme", "address": "a@b.test", "reason": "x\u0000"}"#,
            400,
        ),
        row(
            "POST",
            "/v1/suppressions",
            br#"{"tenant": "acme", "address": "a@b.test", "expires_at": "soon"}"#,
            400,
        ),
        // Over the body limit: refused before it is read whole.
        row(
            "POST",
            "/v1/suppressions",
            format!(
                r#"{{"tenant": "acme", "address": "a@b.test", "reason": "{}"}}"#,
                "x".repeat(4 << 20)
            ),
            413,
        ),
    ]);

    for row in &rows {
        let answer = call(port, row, &admin).await;
        let what = format!("{} {}", row.method, &row.path[..row.path.len().min(120)]);
        assert!(
            answer.status < 500,
            "{what}: {} {}",
            answer.status,
            answer.body
        );
        assert_eq!(answer.status, row.status, "{what}: {}", answer.body);
        if answer.status >= 400 {
            assert_eq!(
                answer.header("content-type"),
                Some("application/problem+json"),
                "{what}: a problem answer"
            );
            assert_eq!(
                answer.json()["status"],
                row.status,
                "{what}: {}",
                answer.body
            );
        }
    }

    // Good requests are still served, and values with CR/LF are data, stored as given.
    let answer = call(port, &get(format!("/v1/messages/{email}"), 200), &admin).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["id"], email.to_string());
    let answer = call(port, &get("/v1/messages?tenant=acme", 200), &admin).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["items"].as_array().map(Vec::len), Some(1));
    let crlf_reason = "checked\r\nX-Injected: 1";
    let answer = call(
        port,
        &row(
            "POST",
            &discard,
            serde_json::to_vec(&serde_json::json!({"reason": crlf_reason})).expect("JSON"),
            200,
        ),
        &admin,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["discard_reason"], crlf_reason);
    assert!(
        answer.header("x-injected").is_none(),
        "a value never becomes a header"
    );
    let answer = call(
        port,
        &row(
            "POST",
            "/v1/suppressions",
            br#"{"tenant": "acme", "address": "Ann@Example.com", "reason": "asked"}"#,
            201,
        ),
        &admin,
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let answer = call(port, &get("/v1/suppressions?tenant=acme", 200), &admin).await;
    assert_eq!(
        answer.json()["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        answer.body
    );
    let sign_in = serde_json::to_vec(&serde_json::json!({"key": admin})).expect("JSON");
    let answer = http_call(
        port,
        "POST",
        "/v1/sign-in",
        &[("content-type", "application/json")],
        &sign_in,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(matches!(answer.json(), Value::Object(_)));

    stop.cancel();
    handle.await.expect("the operator stops");
}
