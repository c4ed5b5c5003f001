//! The audit log: every mutation through the API, and key management, leaves one entry naming
//! the key, the action, the tenant and the target, written with the change; a tenant's admin
//! reads its tenant's entries only; refused changes leave nothing.

use crate::helpers::World;
use chrono::{Duration as Span, SecondsFormat, Utc};
use mailtrail_operator::keys::{self, Role};
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::{eventually, http_delete, http_get, http_post};
use std::time::Duration;

async fn post_json(port: u16, key: &str, path: &str, body: serde_json::Value) -> u16 {
    let auth = format!("Bearer {key}");
    http_post(
        port,
        path,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
    .0
}

/// (action, tenant, target, actor) of every entry the key sees, newest first, through the pages.
async fn audit_seen_by(port: u16, key: &str) -> Vec<(String, Option<String>, String, String)> {
    let mut seen = Vec::new();
    let mut path = "/v1/audit?limit=2".to_owned();
    loop {
        let (status, _, body) = http_get(port, &path, Some(key)).await;
        assert_eq!(status, 200, "{body}");
        for item in body["items"].as_array().expect("items") {
            seen.push((
                item["action"].as_str().unwrap_or_default().to_owned(),
                item["tenant"].as_str().map(str::to_owned),
                item["target"].as_str().unwrap_or_default().to_owned(),
                item["actor"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        match body["next"].as_i64() {
            Some(before) => path = format!("/v1/audit?limit=2&before={before}"),
            None => return seen,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_is_audited_once_and_each_tenant_reads_only_its_own() {
    let world = World::new().await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, ops) = keys::create(&mut conn, "ops", None, Role::Admin)
        .await
        .expect("key");
    let (acme_info, acme) = keys::create(&mut conn, "acme admin", Some("acme"), Role::Admin)
        .await
        .expect("key");
    let (_, acme_read) = keys::create(&mut conn, "acme read", Some("acme"), Role::Read)
        .await
        .expect("key");
    let (_, globex) = keys::create(&mut conn, "globex admin", Some("globex"), Role::Admin)
        .await
        .expect("key");
    let acme_id = acme_info.id.to_string();

    // acme's admin adds and removes a suppression and cancels a scheduled email.
    assert_eq!(
        post_json(
            port,
            &acme,
            "/v1/suppressions",
            serde_json::json!({"tenant": "acme", "address": "Ann@Example.com"}),
        )
        .await,
        201
    );
    assert_eq!(
        http_delete(port, "/v1/suppressions/acme/ann@example.com", &acme)
            .await
            .0,
        204
    );
    let send_at = (Utc::now() + Span::days(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let request = serde_json::json!({
        "id": "later", "tenant": "acme", "from": "shop@acme.test", "to": "bob@example.com",
        "subject": "S", "text": "T", "send_at": send_at,
    });
    world
        .publish(Queue::Mailbox, request.to_string().as_bytes(), None)
        .await;
    let email = ids::email_id("acme", "later", "bob@example.com");
    let path = format!("/v1/messages/{email}");
    eventually("the email is scheduled", Duration::from_secs(20), || {
        let (path, acme) = (path.clone(), acme.clone());
        async move {
            let (status, _, body) = http_get(port, &path, Some(&acme)).await;
            (status == 200 && body["status"] == "scheduled").then_some(())
        }
    })
    .await;
    assert_eq!(http_delete(port, &path, &acme).await.0, 200);
    // A malformed request becomes a dead letter without a tenant; ops discards it.
    world.publish(Queue::Mailbox, b"not json", None).await;
    let dead_letter = eventually("the dead letter", Duration::from_secs(20), || async {
        let (_, _, body) = http_get(port, "/v1/dead-letters", Some(&ops)).await;
        body["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    assert_eq!(
        post_json(
            port,
            &ops,
            &format!("/v1/dead-letters/{dead_letter}/discard"),
            serde_json::json!({"reason": "garbage from a test"}),
        )
        .await,
        200
    );

    // Refused or empty changes leave nothing: a read key, another tenant, nothing to remove,
    // cancelling twice.
    assert_eq!(
        post_json(
            port,
            &acme_read,
            "/v1/suppressions",
            serde_json::json!({"tenant": "acme", "address": "kim@example.com"}),
        )
        .await,
        403
    );
    assert_eq!(
        http_delete(port, "/v1/suppressions/acme/zed@example.com", &globex)
            .await
            .0,
        404
    );
    assert_eq!(
        http_delete(port, "/v1/suppressions/acme/zed@example.com", &acme)
            .await
            .0,
        404
    );
    assert_eq!(http_delete(port, &path, &acme).await.0, 200);

    let all = audit_seen_by(port, &ops).await;
    let actions: Vec<&str> = all.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        actions,
        [
            "dead_letter.discard",
            "message.cancel",
            "suppression.remove",
            "suppression.add",
            "key.create",
            "key.create",
            "key.create",
            "key.create",
        ],
        "newest first, one entry per change: {all:?}"
    );
    assert_eq!(
        all[0],
        (
            "dead_letter.discard".into(),
            None,
            dead_letter,
            all[0].3.clone()
        )
    );
    assert_eq!(
        all[1],
        (
            "message.cancel".into(),
            Some("acme".into()),
            email.to_string(),
            acme_id.clone()
        )
    );
    assert_eq!(
        all[2],
        (
            "suppression.remove".into(),
            Some("acme".into()),
            "ann@example.com".into(),
            acme_id.clone()
        )
    );
    assert_eq!(all[3].2, "ann@example.com", "the canonical address");
    assert!(all[4..].iter().all(|e| e.3 == "cli"));

    // acme's admin sees acme's changes (and the creation of acme's keys), nothing else.
    let acme_view = audit_seen_by(port, &acme).await;
    assert!(
        acme_view.iter().all(|e| e.1.as_deref() == Some("acme")),
        "{acme_view:?}"
    );
    assert_eq!(
        acme_view.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        [
            "message.cancel",
            "suppression.remove",
            "suppression.add",
            "key.create",
            "key.create"
        ]
    );
    assert!(
        audit_seen_by(port, &globex)
            .await
            .iter()
            .all(|e| e.1.as_deref() == Some("globex"))
    );
    assert_eq!(http_get(port, "/v1/audit", Some(&acme_read)).await.0, 403);
    assert_eq!(http_get(port, "/v1/audit", None).await.0, 401);

    stop.cancel();
    handle.await.expect("operator");
}
