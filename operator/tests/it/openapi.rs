//! The OpenAPI document and the authorization sweep: every operation the document lists is
//! driven. Exactly the operations marked public (`security: []`) answer without a key; every
//! other one answers 401 without a key, with a revoked key and with a made-up key; a read key
//! cannot mutate; an admin key of tenant A gets 404 (never 403) on tenant B's data; every error
//! an admin key meets is a documented `application/problem+json` answer. The document's routes
//! must equal the routes the app serves, so an undocumented route fails here.

use crate::helpers::{World, incoming};
use mailtrail_operator::keys::{self, Role};
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::{http_call, http_get};
use std::collections::{BTreeMap, BTreeSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Every route the operator serves (method, path as documented). A new route must be added
/// here and to the document.
const SERVED: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/messages"),
    ("get", "/v1/messages/export"),
    ("get", "/v1/messages/{id}"),
    ("delete", "/v1/messages/{id}"),
    ("get", "/v1/audit"),
    ("get", "/v1/suppressions"),
    ("post", "/v1/suppressions"),
    ("get", "/v1/suppressions/{tenant}/{address}"),
    ("delete", "/v1/suppressions/{tenant}/{address}"),
    ("get", "/v1/dead-letters"),
    ("post", "/v1/dead-letters/replay"),
    ("get", "/v1/dead-letters/{id}"),
    ("post", "/v1/dead-letters/{id}/replay"),
    ("post", "/v1/dead-letters/{id}/discard"),
    ("get", "/v1/stats"),
    ("post", "/v1/sign-in"),
    ("get", "/v1/session"),
    ("post", "/v1/sign-out"),
];

/// (status, content type, raw body) of one request; `bearer` `None` sends no `Authorization`.
async fn call(
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let auth = bearer
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        method.to_uppercase(),
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {head:?}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, rest.to_owned())
}

/// One documented operation.
struct Operation {
    method: String,
    path: String,
    public: bool,
    /// The documented answers ("200", "404", …).
    statuses: BTreeSet<String>,
}

impl Operation {
    fn mutates(&self) -> bool {
        self.method != "get"
    }

    /// The path with its parameters filled in.
    fn url(&self, id: Uuid, tenant: &str, address: &str) -> String {
        let url = self
            .path
            .replace("{id}", &id.to_string())
            .replace("{tenant}", tenant)
            .replace("{address}", address);
        // A bulk replay stays within the tenant (an all-tenant key would replay everything).
        if self.path == "/v1/dead-letters/replay" {
            format!("{url}?tenant={tenant}")
        } else {
            url
        }
    }

    /// A plausible body for the operation.
    fn body(&self, tenant: &str, address: &str) -> String {
        if self.path == "/v1/suppressions" && self.method == "post" {
            serde_json::json!({"tenant": tenant, "address": address}).to_string()
        } else if self.path.ends_with("/discard") {
            serde_json::json!({"reason": "not wanted"}).to_string()
        } else {
            String::new()
        }
    }
}

fn operations(document: &serde_json::Value) -> Vec<Operation> {
    let global_secured = document["security"]
        .as_array()
        .is_some_and(|s| !s.is_empty());
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            // An operation's own `security` wins over the document's; `[]` means none.
            let public = match operation.get("security") {
                Some(security) => security.as_array().expect("security").is_empty(),
                None => !global_secured,
            };
            let statuses = operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .cloned()
                .collect();
            found.push(Operation {
                method: method.clone(),
                path: path.clone(),
                public,
                statuses,
            });
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_is_served_and_guarded_as_documented() {
    let world = World::new().await;
    let (stop, handle, port) = world.start_operator_with_port().await;

    // The document itself, without a key.
    let (status, content_type, document) = http_get(port, "/v1/openapi.json", None).await;
    assert_eq!(status, 200, "{document}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        document["openapi"]
    );
    assert_eq!(
        document["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    assert!(document["components"]["schemas"]["Problem"].is_object());
    let operations = operations(&document);

    // The document covers exactly the routes the app serves.
    let documented: BTreeSet<(String, String)> = operations
        .iter()
        .map(|o| (o.method.clone(), o.path.clone()))
        .collect();
    let served: BTreeSet<(String, String)> = SERVED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served, "documented routes != served routes");

    // Exactly the public paths are public, and every error answer is a problem.
    let public: BTreeSet<&str> = operations
        .iter()
        .filter(|o| o.public)
        .map(|o| o.path.as_str())
        .collect();
    assert_eq!(
        public,
        BTreeSet::from([
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/openapi.json",
            "/v1/sign-in"
        ]),
        "public operations"
    );
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item") {
            for (code, response) in operation["responses"].as_object().expect("responses") {
                if code.starts_with('4') || (code.starts_with('5') && path != "/readyz") {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{method} {path} {code} is not documented as problem+json"
                    );
                }
            }
        }
    }

    // Keys: an all-tenant admin, acme's admin and reader, a revoked one.
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, ops) = keys::create(&mut conn, "ops", None, Role::Admin)
        .await
        .expect("key");
    let (_, acme) = keys::create(&mut conn, "acme admin", Some("acme"), Role::Admin)
        .await
        .expect("key");
    let (_, acme_read) = keys::create(&mut conn, "acme read", Some("acme"), Role::Read)
        .await
        .expect("key");
    let (revoked_info, revoked) = keys::create(&mut conn, "gone", None, Role::Admin)
        .await
        .expect("key");
    assert!(
        keys::revoke(&mut conn, &revoked_info.key_prefix)
            .await
            .expect("revoke")
    );
    let garbage = "mtk_000000000000_notakeyatall";

    // Each tenant's data: an email (scheduled far ahead, so it could be cancelled) and a dead
    // letter; globex also a suppression.
    let (intake, relay) = world.steps().await;
    let mut email = BTreeMap::new();
    let mut dead_letter = BTreeMap::new();
    for tenant in ["acme", "globex"] {
        let request = serde_json::json!({
            "id": "r-1", "tenant": tenant, "from": format!("shop@{tenant}.test"),
            "to": "bob@example.com", "subject": "S", "text": "T",
            "send_at": "2999-01-01T00:00:00Z",
        })
        .to_string();
        intake
            .handle(&[incoming(&world, Queue::Mailbox, &request, None)])
            .await
            .expect("intake");
        email.insert(tenant, ids::email_id(tenant, "r-1", "bob@example.com"));
        let id = Uuid::new_v4();
        world
            .query(&format!(
                "INSERT INTO dead_letters (id, source_queue, reason, detail, tenant, \
                 set_aside_by, body) VALUES ('{id}', '{}', 'invalid_request', 'test', \
                 '{tenant}', 'operator', convert_to('{{}}', 'UTF8'))",
                world.queue(Queue::Mailbox)
            ))
            .await;
        dead_letter.insert(tenant, id);
    }
    relay.drain().await.expect("relay");
    let globex_email = email["globex"];
    let globex_dead_letter = dead_letter["globex"];
    let (status, _, _) = call(
        port,
        "post",
        "/v1/suppressions",
        Some(&ops),
        r#"{"tenant": "globex", "address": "bob@example.com"}"#,
    )
    .await;
    assert_eq!(status, 201);
    let (status, _, _) = http_get(port, &format!("/v1/messages/{globex_email}"), Some(&ops)).await;
    assert_eq!(status, 200, "the globex email exists");

    // The history page's session for the all-tenant admin: accepted in place of a key, but a
    // change without its CSRF token is refused.
    let signed_in = http_call(
        port,
        "POST",
        "/v1/sign-in",
        &[("Content-Type", "application/json")],
        serde_json::json!({ "key": ops }).to_string().as_bytes(),
    )
    .await;
    assert_eq!(signed_in.status, 200, "{signed_in:?}");
    let cookie = signed_in
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();

    let address = "ann@example.com";
    for operation in &operations {
        let url = operation.url(Uuid::new_v4(), "acme", address);
        let body = operation.body("acme", address);
        let what = format!("{} {}", operation.method, operation.path);
        if operation.public {
            let (status, _, _) = call(port, &operation.method, &url, None, &body).await;
            assert_ne!(status, 401, "{what} is public");
            assert!(
                operation.statuses.contains(&status.to_string()),
                "{what}: {status} is not documented"
            );
            continue;
        }
        for (key, name) in [(None, "no key"), (Some(revoked.as_str()), "a revoked key")] {
            let (status, _, _) = call(port, &operation.method, &url, key, &body).await;
            assert_eq!(status, 401, "{what} with {name}");
        }
        let (status, content_type, _) =
            call(port, &operation.method, &url, Some(garbage), &body).await;
        assert_eq!(status, 401, "{what} with a made-up key");
        assert_eq!(content_type, "application/problem+json", "{what}");
        let with_session = http_call(
            port,
            &operation.method.to_uppercase(),
            &url,
            &[("Cookie", &cookie), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
        if operation.mutates() {
            assert_eq!(
                with_session.status, 403,
                "{what} with the session but no CSRF token"
            );
            assert_eq!(
                with_session.header("content-type"),
                Some("application/problem+json")
            );
        } else {
            assert!(
                with_session.status != 401
                    && operation
                        .statuses
                        .contains(&with_session.status.to_string()),
                "{what} with a session: {with_session:?}"
            );
        }
        // Signing out changes only the caller's own session: any key may.
        if operation.mutates() && operation.path != "/v1/sign-out" {
            // On its own tenant's data: 403. On another tenant's: 404, never 403.
            for tenant in ["acme", "globex"] {
                let id = if operation.path.starts_with("/v1/messages/") {
                    email[tenant]
                } else {
                    dead_letter[tenant]
                };
                let url = operation.url(id, tenant, "bob@example.com");
                let body = operation.body(tenant, "bob@example.com");
                let expected = match (tenant, operation.path.as_str()) {
                    // A bulk replay names no data: a read key may not run it at all.
                    ("acme", _) | (_, "/v1/dead-letters/replay") => 403,
                    _ => 404,
                };
                let (status, content_type, _) =
                    call(port, &operation.method, &url, Some(&acme_read), &body).await;
                assert_eq!(
                    status, expected,
                    "{what} on {tenant}'s data with acme's read key"
                );
                assert_eq!(content_type, "application/problem+json", "{what}");
            }
        }
        // With an admin key the route is served, and what it answers is documented.
        let (status, content_type, _) =
            call(port, &operation.method, &url, Some(&ops), &body).await;
        assert!(
            operation.statuses.contains(&status.to_string()),
            "{what} with an admin key: {status} is not documented ({:?})",
            operation.statuses
        );
        if status >= 400 {
            assert_eq!(content_type, "application/problem+json", "{what}: {status}");
        }

        // acme's admin on globex's data: 404, never 403; lists and searches come back empty.
        let url = operation.url(
            if operation.path.starts_with("/v1/messages/") {
                globex_email
            } else {
                globex_dead_letter
            },
            "globex",
            "bob@example.com",
        );
        let body = operation.body("globex", "bob@example.com");
        let names_data = operation.path.contains('{')
            || (operation.method == "post" && operation.path == "/v1/suppressions");
        if names_data {
            let (status, _, _) = call(port, &operation.method, &url, Some(&acme), &body).await;
            assert_eq!(status, 404, "{what} on globex's data with acme's key");
        } else if operation.path == "/v1/dead-letters/replay" {
            // Matches nothing of globex's (checked below: its dead letter is still open).
            let (status, _, _) = call(port, &operation.method, &url, Some(&acme), &body).await;
            assert_eq!(status, 200, "{what} for globex with acme's key");
        } else if operation.method == "get" {
            let url = format!("{}?tenant=globex", operation.path);
            let (status, _, page) = http_get(port, &url, Some(&acme)).await;
            match operation.path.as_str() {
                "/v1/stats" => assert_eq!(status, 404, "{what}"),
                "/v1/messages/export" => {
                    let url = "/v1/messages/export?format=ndjson&tenant=globex";
                    let (status, _, all) = call(port, "get", url, Some(&ops), "").await;
                    assert_eq!(status, 200);
                    assert!(all.contains("bob@example.com"), "{all}");
                    let (status, _, export) = call(port, "get", url, Some(&acme), "").await;
                    assert_eq!(status, 200, "{what}");
                    assert!(!export.contains("bob@example.com"), "{what}: {export}");
                }
                "/v1/messages" | "/v1/suppressions" | "/v1/dead-letters" => {
                    assert_eq!(status, 200, "{what}");
                    assert_eq!(page["items"], serde_json::json!([]), "{what}: {page}");
                }
                _ => {}
            }
        }
    }
    // The audit log shows acme nothing of globex's.
    let (status, _, page) = http_get(port, "/v1/audit", Some(&acme)).await;
    assert_eq!(status, 200);
    assert!(
        !page.to_string().contains("globex"),
        "acme sees globex's audit entries: {page}"
    );
    // And globex's data is still there, untouched.
    let (status, _, _) =
        http_get(port, "/v1/suppressions/globex/bob@example.com", Some(&ops)).await;
    assert_eq!(status, 200);
    let (status, _, letter) = http_get(
        port,
        &format!("/v1/dead-letters/{globex_dead_letter}"),
        Some(&ops),
    )
    .await;
    assert_eq!((status, letter["state"].as_str()), (200, Some("open")));
    for tenant in ["acme", "globex"] {
        let (status, _, letter) = http_get(
            port,
            &format!("/v1/dead-letters/{}", dead_letter[tenant]),
            Some(&ops),
        )
        .await;
        // acme's was replayed by the all-tenant admin's bulk replay for acme; nobody else's
        // call changed one.
        let state = if tenant == "acme" { "replayed" } else { "open" };
        assert_eq!(
            (status, letter["state"].as_str()),
            (200, Some(state)),
            "{tenant}"
        );
        let (status, _, history) =
            http_get(port, &format!("/v1/messages/{}", email[tenant]), Some(&ops)).await;
        assert_eq!(status, 200);
        assert_eq!(history["status"], "scheduled", "{tenant}: {history}");
    }

    stop.cancel();
    handle.await.expect("operator");
}
