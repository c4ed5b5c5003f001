//! Schemathesis (the OpenAPI fuzzer, from PyPI) against a running operator binary: every
//! operation of `/v1/openapi.json` is called with generated valid and invalid input, with an
//! all-tenant admin key, and no answer may be a server error or differ from the document
//! (status, content type, body schema, headers).
//!
//! The operator runs on a database of its own seeded with emails (with events), a scheduled
//! email, dead letters and suppressions; a schemathesis config file generated here binds the
//! `id`, `tenant` and `address` path parameters to those values half of the time, so the
//! handlers' found-it paths are exercised too, not only their 404s.
//!
//! The schemathesis command comes from `MAILTRAIL_SCHEMATHESIS` (`scripts/test.sh` sets it), else
//! `<workspace>/target/schemathesis-venv/bin/schemathesis` (`scripts/ensure-schemathesis.sh`
//! installs it there); without either the test fails and says so. The default run is short
//! (a fixed seed, a few examples per operation); `MAILTRAIL_SCHEMATHESIS_ARGS` appends options,
//! which override the defaults — `scripts/schemathesis-long.sh` passes a large budget, every
//! check and the stateful phase that way.

use crate::helpers::{World, incoming};
use chrono::{Duration as Span, Utc};
use mailtrail_operator::history::{NewEvent, record_events};
use mailtrail_operator::keys::{self, Role};
use mailtrail_operator::suppressions;
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::{
    ServiceProcess, eventually, free_port, test_log_dir, try_http_get, workspace_dir,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The seed of the default run: the same inputs every time (override with `--seed` in
/// `MAILTRAIL_SCHEMATHESIS_ARGS`).
const SEED: &str = "20261203";
/// Examples per operation and phase in the default run (the run takes about 20 s).
const MAX_EXAMPLES: &str = "25";
/// The checks of the default run: every check of the examples, coverage and fuzzing phases but
/// two, which the long run leaves out too (`scripts/schemathesis-long.sh` says why):
/// `positive_data_acceptance` and `negative_data_rejection` judge input validity by the JSON
/// schema alone, where the API has rules a schema cannot state (an `after` cursor it issued, an
/// address, a stats period) and reads an empty parameter as an absent one. The stateful checks
/// (`use_after_free`, `ensure_resource_availability`, `object_level_authorization`) need the
/// stateful phase, which the long run has.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,\
                      unsupported_method,allow_header_conformance,missing_required_header,\
                      ignored_auth";
/// The whole run may not take longer (the long run sets its own budget).
const TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The schemathesis command, or a failure that says how to get one.
fn schemathesis_command() -> PathBuf {
    if let Some(path) = std::env::var_os("MAILTRAIL_SCHEMATHESIS").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let default = workspace_dir().join("target/schemathesis-venv/bin/schemathesis");
    assert!(
        default.is_file(),
        "schemathesis is not installed: run `scripts/ensure-schemathesis.sh` (it installs the \
         pinned version into target/schemathesis-venv), or set MAILTRAIL_SCHEMATHESIS to a \
         schemathesis 4.x command; `scripts/test.sh` does the former"
    );
    default
}

/// The data the run can find: path parameter values that exist.
struct Seeded {
    emails: Vec<Uuid>,
    dead_letters: Vec<Uuid>,
    tenants: Vec<&'static str>,
    addresses: Vec<&'static str>,
}

fn event(
    email: Uuid,
    event_type: EventType,
    minutes_ago: i64,
    details: serde_json::Value,
) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        email_id: email,
        event_type,
        occurred_at: Utc::now() - Span::minutes(minutes_ago),
        source: match event_type {
            EventType::Dispatched => "dispatcher".into(),
            _ => "webhook:sendgrid".into(),
        },
        provider: Some("sendgrid".into()),
        provider_event_id: None,
        provider_message_id: None,
        details,
        trace_id: None,
    }
}

/// Emails of two tenants with histories (delivered, opened, clicked, bounced), one scheduled
/// (so it can be cancelled), dead letters (UTF-8 and binary bodies), suppressions.
async fn seed(world: &World) -> Seeded {
    use EventType::*;
    let (intake, relay) = world.steps().await;
    let mut emails = Vec::new();
    for (tenant, key, to, send_at) in [
        ("acme", "welcome-1", "ann@example.com", None),
        ("acme", "welcome-2", "Bob <bob@example.com>", None),
        (
            "acme",
            "later-1",
            "cy@example.com",
            Some("2999-01-01T00:00:00Z"),
        ),
        ("globex", "invoice-1", "dee@example.org", None),
    ] {
        let mut request = serde_json::json!({
            "id": key, "tenant": tenant, "from": format!("Shop <shop@{tenant}.test>"),
            "to": to, "subject": "Hello", "text": "Hi", "tags": ["welcome"],
            "metadata": {"customer": "42"},
        });
        if let Some(send_at) = send_at {
            request["send_at"] = send_at.into();
        }
        intake
            .handle(&[incoming(world, Queue::Mailbox, &request.to_string(), None)])
            .await
            .expect("intake");
        let canonical = mailtrail_shared::address::parse_address(to)
            .expect("an address")
            .canonical;
        emails.push(ids::email_id(tenant, key, &canonical));
    }
    relay.drain().await.expect("relay");
    let none = serde_json::json!({});
    let events = vec![
        event(emails[0], Dispatched, 30, none.clone()),
        event(emails[0], Delivered, 29, none.clone()),
        event(emails[0], Opened, 20, none.clone()),
        event(
            emails[0],
            Clicked,
            19,
            serde_json::json!({"url": "https://acme.test/x"}),
        ),
        event(emails[1], Dispatched, 30, none.clone()),
        event(
            emails[1],
            Bounced,
            29,
            serde_json::json!({"kind": "hard", "code": "550", "reason": "no such user"}),
        ),
        event(emails[3], Dispatched, 30, none.clone()),
        event(emails[3], Delivered, 29, none),
    ];
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    record_events(&mut conn, events).await.expect("events");

    let mut dead_letters = Vec::new();
    for (tenant, body) in [
        ("acme", "convert_to('{\"id\": 1}', 'UTF8')"),
        ("globex", "'\\xdeadbeef'::bytea"),
    ] {
        let id = Uuid::new_v4();
        world
            .query(&format!(
                "INSERT INTO dead_letters (id, source_queue, reason, detail, tenant, \
                 set_aside_by, body) VALUES ('{id}', '{}', 'invalid_request', 'seeded', \
                 '{tenant}', 'operator', {body})",
                world.queue(Queue::Mailbox)
            ))
            .await;
        dead_letters.push(id);
    }
    let addresses = vec!["ann@example.com", "dee@example.org"];
    for (tenant, address) in [("acme", addresses[0]), ("globex", addresses[1])] {
        suppressions::put(&mut conn, tenant, address, "manual", None)
            .await
            .expect("suppression");
    }
    Seeded {
        emails,
        dead_letters,
        tenants: vec!["acme", "globex"],
        addresses,
    }
}

/// A schemathesis config binding path parameters to the seeded values half of the time (the
/// other half stays generated, so unknown and malformed ids are tried too).
fn config(seeded: &Seeded) -> String {
    fn list<T: ToString>(values: &[T]) -> String {
        values
            .iter()
            .map(|v| format!("{:?}", v.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    }
    let bind = |path_regex: &str, name: &str, dictionary: &str| {
        format!(
            "[[operations]]\ninclude-path-regex = {path_regex:?}\n\
             parameters = {{ \"path.{name}\" = {{ dictionary = \"{dictionary}\", \
             probability = 0.5 }} }}\n"
        )
    };
    format!(
        "# Generated by operator/tests/it/schemathesis.rs: values that exist in the database.\n\
         [dictionaries.emails]\nvalues = [{}]\n\
         [dictionaries.dead_letters]\nvalues = [{}]\n\
         [dictionaries.tenants]\nvalues = [{}]\n\
         [dictionaries.addresses]\nvalues = [{}]\n\
         [parameters]\n\
         \"path.tenant\" = {{ dictionary = \"tenants\", probability = 0.5 }}\n\
         \"path.address\" = {{ dictionary = \"addresses\", probability = 0.5 }}\n\
         {}{}",
        list(&seeded.emails),
        list(&seeded.dead_letters),
        list(&seeded.tenants),
        list(&seeded.addresses),
        bind("^/v1/messages/", "id", "emails"),
        bind("^/v1/dead-letters/", "id", "dead_letters"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let command = schemathesis_command();
    let world = World::new().await;
    let seeded = seed(&world).await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, key) = keys::create(&mut conn, "schemathesis", None, Role::Admin)
        .await
        .expect("key");
    drop(conn);

    let port = free_port();
    let mut env = world.operator_env();
    env.push(("MAILTRAIL_HTTP_ADDR", format!("127.0.0.1:{port}")));
    let mut operator = ServiceProcess::spawn(
        "operator-schemathesis",
        env!("CARGO_BIN_EXE_operator"),
        &["run"],
        &env,
    )
    .expect("start the operator");
    // Ready, broker session included: a replay needs it, so a 503 is never the setup's fault.
    eventually("the operator is ready", Duration::from_secs(60), || async {
        let ready = try_http_get(port, "/readyz", None).await;
        ready
            .is_ok_and(|(status, _, _)| status == 200)
            .then_some(())
    })
    .await;

    let dir = test_log_dir().join(format!("schemathesis-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a run directory");
    let config_path = dir.join("schemathesis.toml");
    std::fs::write(&config_path, config(&seeded)).expect("the config");

    let base = format!("http://127.0.0.1:{port}");
    let mut args: Vec<String> = vec![
        "--config-file".into(),
        config_path.display().to_string(),
        "run".into(),
        format!("{base}/v1/openapi.json"),
        "--url".into(),
        base.clone(),
        "--header".into(),
        format!("Authorization: Bearer {key}"),
        "--checks".into(),
        CHECKS.into(),
        "--max-examples".into(),
        MAX_EXAMPLES.into(),
        "--seed".into(),
        SEED.into(),
        // One worker: hypothesis's lambda descriptions call `ast.parse`, which CPython 3.11 can
        // fail with "AST constructor recursion depth mismatch" from two threads at once.
        "--workers".into(),
        "1".into(),
        "--phases".into(),
        "examples,coverage,fuzzing".into(),
        // No example database: the same seed gives the same run, whatever ran before.
        "--generation-database".into(),
        "none".into(),
        "--request-timeout".into(),
        "10".into(),
        "--no-color".into(),
    ];
    let extra = std::env::var("MAILTRAIL_SCHEMATHESIS_ARGS").unwrap_or_default();
    args.extend(extra.split_whitespace().map(str::to_owned));
    // The key is printed as `<key>`, never in the clear.
    let shown = args.join(" ").replace(&key, "<key>");
    eprintln!("schemathesis: {} {shown}", command.display());
    eprintln!("schemathesis: run directory {}", dir.display());

    let started = Instant::now();
    let run = tokio::process::Command::new(&command)
        .args(&args)
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    let timeout = if extra.is_empty() {
        TIMEOUT
    } else {
        Duration::from_secs(24 * 3600)
    };
    let output = tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {timeout:?}"))
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run `scripts/ensure-schemathesis.sh`",
                command.display()
            )
        });
    let elapsed = started.elapsed();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
    .replace(&key, "<key>");
    std::fs::write(dir.join("output.txt"), &report).expect("the output");
    println!("{report}");
    eprintln!("schemathesis: exit {} after {elapsed:.1?}", output.status);

    assert!(
        operator.is_running(),
        "the operator died during the run; its log: {}",
        operator.log_path().display()
    );
    assert!(
        output.status.success(),
        "schemathesis found problems (exit {}); reproduce with the command above, the \
         operator's log is {}:\n{report}",
        output.status,
        operator.log_path().display()
    );
    operator.terminate();
    operator
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the operator stops");
}

// Regressions: what schemathesis found, pinned down.

/// (status, head, body) of one raw request.
async fn raw(port: u16, method: &str, path: &str, key: Option<&str>) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = key
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {head:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A query string the handler's types cannot take (`limit` not a number, or too large for an
/// i64) was actix's plain-text 400; it is a problem like every other error.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_regression_unreadable_query_is_a_problem() {
    let world = World::new().await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, key) = keys::create(&mut conn, "ops", None, Role::Admin)
        .await
        .expect("key");
    for query in ["limit=9223372036854775808", "limit=abc", "before=1.5"] {
        let (status, head, body) =
            raw(port, "GET", &format!("/v1/audit?{query}"), Some(&key)).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            head.contains("content-type: application/problem+json"),
            "{query}: {head}"
        );
        let problem: serde_json::Value = serde_json::from_str(&body).expect("a problem");
        assert_eq!(problem["status"], 400, "{query}");
    }
    stop.cancel();
    handle.await.expect("operator");
}

/// A documented path asked with a method it does not serve answered an empty 404; it is a 405
/// problem with `Allow` (from the document). Unknown paths are 404 problems; under `/v1` the key
/// is still checked first.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_regression_other_methods_are_405_with_allow() {
    let world = World::new().await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, key) = keys::create(&mut conn, "ops", None, Role::Admin)
        .await
        .expect("key");
    let id = Uuid::new_v4();
    for (method, path, key, status, allow) in [
        ("TRACE", "/healthz".to_owned(), None, 405, Some("GET")),
        ("POST", "/readyz".to_owned(), None, 405, Some("GET")),
        (
            "PUT",
            format!("/v1/messages/{id}"),
            Some(&key),
            405,
            Some("GET, DELETE"),
        ),
        ("PUT", format!("/v1/messages/{id}"), None, 401, None),
        (
            "PATCH",
            "/v1/suppressions".to_owned(),
            Some(&key),
            405,
            Some("GET, POST"),
        ),
        (
            "PUT",
            "/v1/dead-letters/replay".to_owned(),
            Some(&key),
            405,
            Some("POST"),
        ),
        (
            "OPTIONS",
            "/v1/messages/export".to_owned(),
            Some(&key),
            405,
            Some("GET"),
        ),
        // Concrete paths that an `{id}` route would take for these methods.
        (
            "DELETE",
            "/v1/messages/export".to_owned(),
            Some(&key),
            405,
            Some("GET"),
        ),
        (
            "GET",
            "/v1/dead-letters/replay".to_owned(),
            Some(&key),
            405,
            Some("POST"),
        ),
        (
            "POST",
            "/v1/openapi.json".to_owned(),
            Some(&key),
            405,
            Some("GET"),
        ),
        ("GET", "/nowhere".to_owned(), None, 404, None),
        ("GET", "/v1/nowhere".to_owned(), Some(&key), 404, None),
        ("GET", "/v1/nowhere".to_owned(), None, 401, None),
    ] {
        let (got, head, body) = raw(port, method, &path, key.map(String::as_str)).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        assert!(
            head.contains("content-type: application/problem+json"),
            "{method} {path}: {head}"
        );
        if let Some(allow) = allow {
            assert!(
                head.contains(&format!("allow: {}", allow.to_ascii_lowercase())),
                "{method} {path}: {head}"
            );
        }
    }
    stop.cancel();
    handle.await.expect("operator");
}

/// A NUL character reached PostgreSQL (which cannot hold one in text) from a query parameter, a
/// path segment or a JSON body, and the failed query answered 503 "the database is unavailable".
/// Query: 400; path: 404 (nothing has that name); body: 400. Nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_regression_nul_characters_are_client_errors() {
    let world = World::new().await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, key) = keys::create(&mut conn, "ops", None, Role::Admin)
        .await
        .expect("key");
    for (method, path, status) in [
        ("GET", "/v1/messages?tenant=a%00b", 400),
        ("GET", "/v1/messages?tag=%00", 400),
        ("GET", "/v1/messages?metadata.k=%00", 400),
        ("GET", "/v1/messages/export?format=csv&request_id=%00", 400),
        ("GET", "/v1/suppressions?tenant=%00", 400),
        ("GET", "/v1/dead-letters?reason=%00", 400),
        ("POST", "/v1/dead-letters/replay?source_queue=%00", 400),
        ("GET", "/v1/stats?tenant=%00", 400),
        ("GET", "/v1/suppressions/acme%00/ann@example.com", 404),
        ("DELETE", "/v1/suppressions/acme%00/ann@example.com", 404),
    ] {
        let (got, head, body) = raw(port, method, path, Some(&key)).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        assert!(
            head.contains("content-type: application/problem+json"),
            "{method} {path}: {head}"
        );
    }
    for body in [
        r#"{"tenant": "acme\u0000", "address": "ann@example.com"}"#,
        r#"{"tenant": "acme", "address": "ann@example.com", "reason": "a\u0000b"}"#,
    ] {
        let (status, _, answer) = mailtrail_test_support::http_post(
            port,
            "/v1/suppressions",
            &[
                ("Authorization", &format!("Bearer {key}")),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    assert_eq!(world.count("SELECT count(*) FROM suppressions").await, 0);
    stop.cancel();
    handle.await.expect("operator");
}

/// Typing the bulk replay's answer showed that a replay out of the key's scope (a tenant key
/// naming another tenant) answered `{replayed, more}` without the documented `queues`.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_regression_bulk_replay_out_of_scope_has_every_field() {
    let world = World::new().await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, acme) = keys::create(&mut conn, "acme", Some("acme"), Role::Admin)
        .await
        .expect("key");
    let (status, _, body) = raw(
        port,
        "POST",
        "/v1/dead-letters/replay?tenant=globex",
        Some(&acme),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({"replayed": 0, "queues": {}, "more": false})
    );
    stop.cancel();
    handle.await.expect("operator");
}
