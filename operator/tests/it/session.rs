//! The history page's sign-in: a key is exchanged for an HttpOnly, SameSite=Strict session cookie
//! that has exactly the key's scope; changes made with the cookie need the CSRF token; sign-out,
//! expiry and revoking the key end the session. The page itself is served with a strict CSP.

use crate::helpers::{World, api_ready, incoming};
use mailtrail_operator::keys::{self, Role};
use mailtrail_operator::page::{CONTENT_SECURITY_POLICY, PAGE_PATHS};
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::{HttpAnswer, http_call};

async fn sign_in(port: u16, key: &str) -> HttpAnswer {
    let body = serde_json::json!({ "key": key }).to_string();
    http_call(
        port,
        "POST",
        "/v1/sign-in",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// The `name=value` of the answer's session cookie.
fn session_cookie(answer: &HttpAnswer) -> String {
    let set_cookie = answer
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie in {answer:?}"));
    set_cookie
        .split(';')
        .next()
        .expect("name=value")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_has_its_keys_scope_and_changes_need_the_csrf_token() {
    let world = World::new().await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    api_ready(port).await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, acme_admin) = keys::create(&mut conn, "acme admin", Some("acme"), Role::Admin)
        .await
        .expect("key");
    let (acme_read_info, acme_read) =
        keys::create(&mut conn, "acme read", Some("acme"), Role::Read)
            .await
            .expect("key");

    // One scheduled email per tenant (so it can be cancelled).
    let (intake, relay) = world.steps().await;
    for tenant in ["acme", "globex"] {
        let request = serde_json::json!({
            "id": "r-1", "tenant": tenant, "from": format!("shop@{tenant}.test"),
            "to": "bob@example.com", "subject": format!("Hello from {tenant}"), "text": "T",
            "send_at": "2999-01-01T00:00:00Z",
        })
        .to_string();
        intake
            .handle(&[incoming(&world, Queue::Mailbox, &request, None)])
            .await
            .expect("intake");
    }
    relay.drain().await.expect("relay");
    let acme_email = ids::email_id("acme", "r-1", "bob@example.com");
    let globex_email = ids::email_id("globex", "r-1", "bob@example.com");

    // Bad sign-ins: not JSON, a made-up key. No cookie either way.
    let answer = http_call(port, "POST", "/v1/sign-in", &[], b"key=mtk_x").await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    let answer = sign_in(
        port,
        "mtk_000000000000_notakeyatallnotakeyatallnotakeyatall1",
    )
    .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.header("set-cookie").is_none());

    // Sign in with acme's admin key: the cookie's attributes, the scope, a CSRF token.
    let answer = sign_in(port, &acme_admin).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let set_cookie = answer.header("set-cookie").expect("a cookie").to_owned();
    let attributes: Vec<String> = set_cookie
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    for expected in ["httponly", "samesite=strict", "path=/"] {
        assert!(
            attributes.iter().any(|a| a == expected),
            "{expected} missing in {set_cookie}"
        );
    }
    assert!(
        !set_cookie.contains(&acme_admin),
        "the key is not the cookie"
    );
    let view = answer.json();
    assert_eq!(view["tenant"], "acme");
    assert_eq!(view["role"], "admin");
    assert_eq!(view["key_name"], "acme admin");
    let csrf = view["csrf_token"]
        .as_str()
        .expect("a CSRF token")
        .to_owned();
    assert!(csrf.len() >= 40, "{csrf}");
    let cookie = session_cookie(&answer);
    assert!(cookie.starts_with("mailtrail_session="), "{cookie}");

    // Reads with the cookie: own tenant's email yes, other tenant's 404, search scoped.
    let with_cookie = [("Cookie", cookie.as_str())];
    let answer = http_call(port, "GET", "/v1/session", &with_cookie, b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["csrf_token"], csrf.as_str());
    assert!(answer.json()["expires_at"].is_string(), "{answer:?}");
    let answer = http_call(
        port,
        "GET",
        &format!("/v1/messages/{acme_email}"),
        &with_cookie,
        b"",
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["subject"], "Hello from acme");
    let answer = http_call(
        port,
        "GET",
        &format!("/v1/messages/{globex_email}"),
        &with_cookie,
        b"",
    )
    .await;
    assert_eq!(answer.status, 404, "another tenant's email: {answer:?}");
    let answer = http_call(
        port,
        "GET",
        "/v1/messages?recipient=bob@example.com",
        &with_cookie,
        b"",
    )
    .await;
    let tenants: Vec<String> = answer.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["tenant"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(tenants, ["acme"], "{answer:?}");

    // A change with the cookie: refused without the token, with a wrong one, and from another
    // site even with the right one; accepted with the token from the page itself.
    let cancel = format!("/v1/messages/{acme_email}");
    let wrong = "A".repeat(csrf.len());
    for (headers, what) in [
        (vec![("Cookie", cookie.as_str())], "no token"),
        (
            vec![
                ("Cookie", cookie.as_str()),
                ("X-CSRF-Token", wrong.as_str()),
            ],
            "a wrong token",
        ),
        (
            vec![
                ("Cookie", cookie.as_str()),
                ("X-CSRF-Token", csrf.as_str()),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            "a cross-site request",
        ),
    ] {
        let answer = http_call(port, "DELETE", &cancel, &headers, b"").await;
        assert_eq!(answer.status, 403, "{what}: {answer:?}");
        assert!(answer.body.contains("CSRF"), "{what}: {}", answer.body);
    }
    assert_eq!(
        world
            .count(&format!(
                "SELECT count(*) FROM events WHERE email_id = '{acme_email}' \
                 AND event_type = 'cancelled'"
            ))
            .await,
        0,
        "a refused change changed nothing"
    );
    let page = [
        ("Cookie", cookie.as_str()),
        ("X-CSRF-Token", csrf.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let answer = http_call(port, "DELETE", &cancel, &page, b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["changed"], true);
    // Another tenant's email with a valid token: 404, as with a key.
    let answer = http_call(
        port,
        "DELETE",
        &format!("/v1/messages/{globex_email}"),
        &page,
        b"",
    )
    .await;
    assert_eq!(answer.status, 404, "{answer:?}");
    // The audit names the key behind the session.
    let actor: String = world
        .query("SELECT actor FROM audit_log WHERE action = 'message.cancel'")
        .await[0]
        .get(0);
    let sign_ins = world
        .count("SELECT count(*) FROM audit_log WHERE action = 'session.sign_in'")
        .await;
    assert_eq!(sign_ins, 1);
    assert_eq!(
        actor,
        world
            .query("SELECT id::text FROM api_keys WHERE name = 'acme admin'")
            .await[0]
            .get::<_, String>(0)
    );

    // An Authorization header wins over the cookie: a bad key is 401 even with a session.
    let answer = http_call(
        port,
        "GET",
        "/v1/session",
        &[
            ("Cookie", cookie.as_str()),
            ("Authorization", "Bearer mtk_nope"),
        ],
        b"",
    )
    .await;
    assert_eq!(answer.status, 401, "{answer:?}");

    // Sign out: the cookie is cleared and the session no longer works.
    let answer = http_call(port, "POST", "/v1/sign-out", &page, b"").await;
    assert_eq!(answer.status, 204, "{answer:?}");
    let cleared = answer.header("set-cookie").expect("a clearing cookie");
    assert!(
        cleared.starts_with("mailtrail_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let answer = http_call(port, "GET", "/v1/session", &with_cookie, b"").await;
    assert_eq!(answer.status, 401, "after sign-out: {answer:?}");

    // A read key's session cannot change anything, token or not.
    let answer = sign_in(port, &acme_read).await;
    assert_eq!(answer.status, 200);
    let read_cookie = session_cookie(&answer);
    let read_csrf = answer.json()["csrf_token"]
        .as_str()
        .expect("csrf")
        .to_owned();
    let read_page = [
        ("Cookie", read_cookie.as_str()),
        ("X-CSRF-Token", read_csrf.as_str()),
    ];
    let answer = http_call(
        port,
        "POST",
        "/v1/suppressions",
        &[
            read_page[0],
            read_page[1],
            ("Content-Type", "application/json"),
        ],
        br#"{"tenant": "acme", "address": "x@example.com"}"#,
    )
    .await;
    assert_eq!(answer.status, 403, "{answer:?}");

    // Expiry ends a session...
    world
        .query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .await;
    let answer = http_call(port, "GET", "/v1/session", &read_page[..1], b"").await;
    assert_eq!(answer.status, 401, "expired: {answer:?}");
    // ...and so does revoking its key.
    let answer = sign_in(port, &acme_read).await;
    let read_cookie = session_cookie(&answer);
    let with_read_cookie = [("Cookie", read_cookie.as_str())];
    let answer = http_call(port, "GET", "/v1/messages", &with_read_cookie, b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        keys::revoke(&mut conn, &acme_read_info.key_prefix)
            .await
            .expect("revoke")
    );
    let answer = http_call(port, "GET", "/v1/messages", &with_read_cookie, b"").await;
    assert_eq!(answer.status, 401, "the key was revoked: {answer:?}");

    stop.cancel();
    handle.await.expect("operator stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_is_public_and_locked_down_by_its_csp() {
    let world = World::new().await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    api_ready(port).await;
    for path in PAGE_PATHS {
        let answer = http_call(port, "GET", path, &[], b"").await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(
            answer.header("content-security-policy"),
            Some(CONTENT_SECURITY_POLICY),
            "{path}"
        );
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("x-frame-options"), Some("DENY"));
    }
    // No inline script or style for the CSP to have to allow.
    let index = http_call(port, "GET", "/", &[], b"").await;
    assert!(
        index
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/html")
    );
    assert!(!index.body.contains("<script>") && !index.body.contains("style="));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    // The script never parses HTML.
    let script = http_call(port, "GET", "/assets/history.js", &[], b"").await;
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!script.body.contains(sink), "history.js uses {sink}");
    }
    stop.cancel();
    handle.await.expect("operator stops");
}
