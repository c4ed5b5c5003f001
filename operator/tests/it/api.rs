//! The HTTP API: health, readiness, API keys and the per-email history.

use crate::helpers::{World, http_get};
use mailtrail_operator::keys::{self, Role};
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::eventually;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn history_needs_a_key_and_shows_only_the_keys_tenant() {
    let world = World::new().await;
    let request = r#"{"id": "api-1", "tenant": "acme", "from": "Acme <shop@acme.test>",
        "to": "Ann@Example.com", "subject": "Welcome", "text": "Hi",
        "tags": ["welcome"], "metadata": {"user": "42"}}"#;
    world
        .publish(Queue::Mailbox, request.as_bytes(), None)
        .await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    let email = ids::email_id("acme", "api-1", "ann@example.com");
    let path = format!("/v1/messages/{email}");

    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, acme_read) = keys::create(&mut conn, "acme reader", Some("acme"), Role::Read)
        .await
        .expect("key");
    let (_, globex) = keys::create(&mut conn, "globex", Some("globex"), Role::Admin)
        .await
        .expect("key");
    let (_, everyone) = keys::create(&mut conn, "ops", None, Role::Admin)
        .await
        .expect("key");

    // Public paths answer without a key.
    assert_eq!(http_get(port, "/healthz", None).await.0, 200);
    eventually("ready", Duration::from_secs(20), || async {
        (http_get(port, "/readyz", None).await.0 == 200).then_some(())
    })
    .await;

    // No key, a malformed key, a well-formed unknown key: 401 as problem+json.
    let (status, content_type, body) = http_get(port, &path, None).await;
    assert_eq!(status, 401);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["status"], 401);
    assert_eq!(http_get(port, &path, Some("nonsense")).await.0, 401);
    let forged = format!("{}x", &acme_read[..acme_read.len() - 1]);
    assert_eq!(http_get(port, &path, Some(&forged)).await.0, 401);

    let history = eventually(
        "the history shows accepted and queued",
        Duration::from_secs(20),
        || {
            let (path, key) = (path.clone(), acme_read.clone());
            async move {
                let (status, _, body) = http_get(port, &path, Some(&key)).await;
                (status == 200 && body["events"].as_array().is_some_and(|e| e.len() == 2))
                    .then_some(body)
            }
        },
    )
    .await;
    assert_eq!(history["id"], email.to_string());
    assert_eq!(history["request_id"], "api-1");
    assert_eq!(history["tenant"], "acme");
    assert_eq!(history["to"], "Ann@Example.com");
    assert_eq!(history["subject"], "Welcome");
    assert_eq!(history["status"], "queued");
    assert_eq!(history["tags"], serde_json::json!(["welcome"]));
    assert_eq!(history["metadata"]["user"], "42");
    assert!(
        history["from"]
            .as_str()
            .is_some_and(|f| f.contains("shop@acme.test"))
    );
    let types: Vec<&str> = history["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(types, ["accepted", "queued"]);
    for event in history["events"].as_array().into_iter().flatten() {
        assert_eq!(event["source"], "operator");
        assert!(event["occurred_at"].is_string() && event["recorded_at"].is_string());
    }

    // Another tenant's key gets 404, exactly as for an unknown email; an all-tenant key sees it.
    let (status, content_type, _) = http_get(port, &path, Some(&globex)).await;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/problem+json")
    );
    assert_eq!(http_get(port, &path, Some(&everyone)).await.0, 200);
    let unknown = format!("/v1/messages/{}", uuid::Uuid::new_v4());
    assert_eq!(http_get(port, &unknown, Some(&everyone)).await.0, 404);
    assert_eq!(
        http_get(port, "/v1/messages/not-a-uuid", Some(&everyone))
            .await
            .0,
        404
    );

    // A revoked key is refused from then on.
    let prefix = &acme_read[..16];
    assert!(keys::revoke(&mut conn, prefix).await.expect("revoke"));
    assert_eq!(http_get(port, &path, Some(&acme_read)).await.0, 401);

    stop.cancel();
    handle.await.expect("the operator stops");
}
