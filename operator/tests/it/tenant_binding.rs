//! Tenant binding and from domains: with binding on, a request is taken only from a broker user
//! bound to its tenant (the AMQP `user_id`, never the JSON alone); `from` must be in the
//! tenant's domains; a replayed dead letter keeps its original publisher, and only the
//! operator's own user can say who that was.

use crate::helpers::{World, incoming};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use mailtrail_operator::intake::IntakeOutcome;
use mailtrail_operator::keys::{self, Role};
use mailtrail_operator::tenant_policy::TenantPolicy;
use mailtrail_shared::headers;
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::{eventually, http_get, http_post};
use std::time::Duration;

fn request(tenant: &str, key: &str, from: &str) -> String {
    serde_json::json!({
        "id": key, "tenant": tenant, "from": from, "to": "ann@example.com",
        "subject": "S", "text": "T",
    })
    .to_string()
}

/// A mailbox message as published by `user` (None: no `user_id`), with an optional claimed
/// original publisher header.
fn from_user(
    world: &World,
    body: &str,
    user: Option<&str>,
    claimed: Option<&str>,
) -> mailtrail_broker::Incoming {
    let mut message = incoming(world, Queue::Mailbox, body, None);
    if let Some(user) = user {
        message.properties = message.properties.clone().with_user_id(user.into());
    }
    if let Some(claimed) = claimed {
        let mut table = FieldTable::default();
        table.insert(
            headers::ORIGINAL_PUBLISHER.into(),
            AMQPValue::LongString(claimed.into()),
        );
        message.properties = message.properties.clone().with_headers(table);
    }
    message
}

fn reason(outcome: &IntakeOutcome) -> &str {
    match outcome {
        IntakeOutcome::Accepted { .. } => "accepted",
        IntakeOutcome::Duplicate { .. } => "duplicate",
        IntakeOutcome::SetAside { reason, .. } => reason,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_bound_broker_user_writes_for_a_tenant_and_only_from_its_domains() {
    let world = World::new().await;
    let (intake, _relay) = world.steps().await;
    let policy = TenantPolicy::from_settings(
        true,
        "app-acme=acme, app-both=acme, app-both=globex, ops=*",
        "acme=acme.test",
        "operator",
    )
    .expect("settings");
    let intake = intake.with_policy(policy);
    let cases: Vec<(&str, mailtrail_broker::Incoming, &str)> = vec![
        (
            "bound user, own tenant, own domain",
            from_user(
                &world,
                &request("acme", "a-1", "shop@acme.test"),
                Some("app-acme"),
                None,
            ),
            "accepted",
        ),
        (
            "a subdomain of an allowed domain",
            from_user(
                &world,
                &request("acme", "a-2", "news@mail.acme.test"),
                Some("app-acme"),
                None,
            ),
            "accepted",
        ),
        (
            "no user_id at all",
            from_user(
                &world,
                &request("acme", "a-3", "shop@acme.test"),
                None,
                None,
            ),
            "tenant_not_allowed",
        ),
        (
            "another tenant named in the JSON",
            from_user(
                &world,
                &request("globex", "g-1", "shop@globex.test"),
                Some("app-acme"),
                None,
            ),
            "tenant_not_allowed",
        ),
        (
            "a user bound to no tenant",
            from_user(
                &world,
                &request("acme", "a-4", "shop@acme.test"),
                Some("stranger"),
                None,
            ),
            "tenant_not_allowed",
        ),
        (
            "a user bound to two tenants, the second",
            from_user(
                &world,
                &request("globex", "g-2", "shop@globex.test"),
                Some("app-both"),
                None,
            ),
            "accepted",
        ),
        (
            "a user bound to any tenant",
            from_user(
                &world,
                &request("initech", "i-1", "x@initech.test"),
                Some("ops"),
                None,
            ),
            "accepted",
        ),
        (
            "a domain outside the tenant's",
            from_user(
                &world,
                &request("acme", "a-5", "shop@evil.test"),
                Some("app-acme"),
                None,
            ),
            "from_domain_not_allowed",
        ),
        (
            "a look-alike domain ending in the allowed one's name",
            from_user(
                &world,
                &request("acme", "a-6", "shop@notacme.test"),
                Some("app-acme"),
                None,
            ),
            "from_domain_not_allowed",
        ),
        (
            "an app claiming another publisher is not believed",
            from_user(
                &world,
                &request("globex", "g-3", "shop@globex.test"),
                Some("app-acme"),
                Some("ops"),
            ),
            "tenant_not_allowed",
        ),
        (
            "the operator's replay carries the recorded publisher",
            from_user(
                &world,
                &request("acme", "a-7", "shop@acme.test"),
                Some("operator"),
                Some("app-acme"),
            ),
            "accepted",
        ),
        (
            "the operator's replay of a publisher bound elsewhere",
            from_user(
                &world,
                &request("globex", "g-4", "shop@globex.test"),
                Some("operator"),
                Some("app-acme"),
            ),
            "tenant_not_allowed",
        ),
    ];
    for (what, message, expected) in cases {
        let outcomes = intake
            .handle(std::slice::from_ref(&message))
            .await
            .expect("intake");
        assert_eq!(reason(&outcomes[0]), expected, "{what}");
    }
    // What was refused is set aside with its reason and recorded, never accepted.
    assert_eq!(
        world
            .count(
                "SELECT count(*) FROM dead_letters
                  WHERE reason IN ('tenant_not_allowed', 'from_domain_not_allowed')"
            )
            .await,
        7
    );
    assert_eq!(world.count("SELECT count(*) FROM requests").await, 5);
}

/// Live, with RabbitMQ checking `user_id`: a request set aside for its `from` domain is
/// replayed after the tenant's domains are fixed, and binding lets the replay through.
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_request_keeps_its_publisher_through_tenant_binding() {
    let mut world = World::new().await;
    world.config.tenant_binding = true;
    world.config.tenant_users = "guest=acme".into();
    world.config.tenant_from_domains = "acme=acme.test".into();
    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, ops) = keys::create(&mut conn, "ops", None, Role::Admin)
        .await
        .expect("key");

    // Published as the app would, with `user_id` (RabbitMQ refuses a user_id that is not the
    // connection's user).
    let body = request("acme", "r-1", "shop@acme-mail.test");
    world
        .channel
        .basic_publish(
            "".into(),
            world.queue(Queue::Mailbox).as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body.as_bytes(),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_user_id("guest".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let dead_letter = eventually("set aside", Duration::from_secs(20), || async {
        let (_, _, body) = http_get(
            port,
            "/v1/dead-letters?reason=from_domain_not_allowed",
            Some(&ops),
        )
        .await;
        body["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    stop.cancel();
    handle.await.expect("operator");

    // The tenant's domains are fixed; the operator restarts with them; the admin replays.
    world.config.tenant_from_domains = "acme=acme.test|acme-mail.test".into();
    let (stop, handle, port) = world.start_operator_with_port().await;
    let auth = format!("Bearer {ops}");
    // 503 until the new operator's broker session is up.
    let (status, answer) = eventually("the replay is taken", Duration::from_secs(20), || async {
        let (status, _, answer) = http_post(
            port,
            &format!("/v1/dead-letters/{dead_letter}/replay"),
            &[("Authorization", auth.as_str())],
            b"",
        )
        .await;
        (status != 503).then_some((status, answer))
    })
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["already_replayed"], false);
    let email = ids::email_id("acme", "r-1", "ann@example.com");
    eventually(
        "the replayed request is accepted",
        Duration::from_secs(20),
        || async {
            let n = world
                .count(&format!("SELECT count(*) FROM emails WHERE id = '{email}'"))
                .await;
            (n == 1).then_some(())
        },
    )
    .await;
    stop.cancel();
    handle.await.expect("operator");
}
