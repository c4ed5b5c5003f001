//! Message search and export (`GET /v1/messages`, `GET /v1/messages/export`): every filter
//! alone and combined gives exactly the expected emails, newest first; pages meet without gaps or
//! repeats; invalid input is a 400 problem; a tenant key never sees another tenant's mail; the
//! export streams the same set as NDJSON and as CSV with formula cells neutralised.

use crate::helpers::{World, api_ready, http_get, incoming};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use mailtrail_operator::clock::Clock;
use mailtrail_operator::keys::{self, Role};
use mailtrail_operator::tracking::Tracker;
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const FORMULA: &str = "=cmd|' /C calc'!A0";

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-01T10:00:00Z")
        .expect("a time")
        .with_timezone(&Utc)
}

/// `t0` plus `seconds`, as a query parameter.
fn at(seconds: i64) -> String {
    (t0() + ChronoDuration::seconds(seconds))
        .to_rfc3339()
        .replace('+', "%2B")
}

/// The known data set, by name: (tenant, request key, canonical recipient).
struct Data {
    r1: Uuid,
    bob: Uuid,
    carol: Uuid,
    g1: Uuid,
    r3: Uuid,
    r4: Uuid,
    r5: Uuid,
    g2: Uuid,
}

impl Data {
    /// Every email, newest first (r2's two share a time: id descending).
    fn all(&self) -> Vec<Uuid> {
        let mut r2 = [self.bob, self.carol];
        r2.sort_by(|a, b| b.cmp(a));
        vec![
            self.g2, self.r5, self.r4, self.r3, self.g1, r2[0], r2[1], self.r1,
        ]
    }

    /// `all()` restricted to `wanted`, in the same order.
    fn only(&self, wanted: &[Uuid]) -> Vec<Uuid> {
        self.all()
            .into_iter()
            .filter(|id| wanted.contains(id))
            .collect()
    }
}

/// Records the data set through the real intake, relay and tracker, each request one minute
/// (g1: 30 seconds) after the previous one.
async fn seed(world: &World) -> Data {
    let (intake, relay) = world.steps().await;
    let clock = Clock::manual(t0());
    let intake = intake.with_clock(clock.clone());
    let requests = [
        (
            60,
            serde_json::json!({"id": "r-1", "tenant": "acme", "to": "ann@example.com",
                "subject": "Order 1001", "tags": ["order"],
                "metadata": {"order_id": "1001", "customer": "42"}}),
        ),
        (
            120,
            serde_json::json!({"id": "r-2", "tenant": "acme",
                "to": ["bob@example.com", "carol@example.com"], "subject": FORMULA,
                "tags": ["newsletter"], "metadata": {"customer": "42"}}),
        ),
        (
            150,
            serde_json::json!({"id": "g-1", "tenant": "globex", "to": "Ann@Example.com",
                "subject": "Globex order", "tags": ["order"], "metadata": {"order_id": "1001"}}),
        ),
        (
            180,
            serde_json::json!({"id": "r-3", "tenant": "acme", "to": "ANN@EXAMPLE.COM",
                "subject": "Order 1002", "tags": ["order", "transactional"],
                "metadata": {"order_id": "1002", "customer": "7"}}),
        ),
        (
            240,
            serde_json::json!({"id": "r-4", "tenant": "acme", "to": "dave@example.com",
                "subject": "Later", "send_at": "2030-01-01T00:00:00Z"}),
        ),
        (
            300,
            serde_json::json!({"id": "r-5", "tenant": "acme", "to": "ann@example.com",
                "subject": "Hello, \"friend\""}),
        ),
        (
            360,
            serde_json::json!({"id": "g-2", "tenant": "globex", "to": "erin@example.com",
                "subject": "-2 days left"}),
        ),
    ];
    for (seconds, mut request) in requests {
        request["from"] = "shop@acme.test".into();
        request["text"] = "T".into();
        clock.set(t0() + ChronoDuration::seconds(seconds));
        intake
            .handle(&[incoming(world, Queue::Mailbox, &request.to_string(), None)])
            .await
            .expect("intake");
    }
    relay.drain().await.expect("relay");
    let data = Data {
        r1: ids::email_id("acme", "r-1", "ann@example.com"),
        bob: ids::email_id("acme", "r-2", "bob@example.com"),
        carol: ids::email_id("acme", "r-2", "carol@example.com"),
        g1: ids::email_id("globex", "g-1", "ann@example.com"),
        r3: ids::email_id("acme", "r-3", "ann@example.com"),
        r4: ids::email_id("acme", "r-4", "dave@example.com"),
        r5: ids::email_id("acme", "r-5", "ann@example.com"),
        g2: ids::email_id("globex", "g-2", "erin@example.com"),
    };
    // r1 is opened, r3 bounces.
    let publisher = mailtrail_broker::Publisher::open(&world.connection)
        .await
        .expect("publisher");
    let tracker = Tracker::new(
        world.pool(),
        publisher,
        world.config.topology(),
        Duration::from_secs(5),
    );
    let event = |email: Uuid, event_type: EventType, details: serde_json::Value| {
        let event = TrackingEvent {
            version: 1,
            event_id: Uuid::new_v4(),
            email_id: Some(email),
            tenant: "acme".into(),
            event_type,
            occurred_at: Utc::now(),
            source: "dispatcher".into(),
            provider: Some("smtp".into()),
            provider_message_id: Some(format!("Q-{email}")),
            provider_event_id: None,
            details,
        };
        incoming(
            world,
            Queue::Tracking,
            &serde_json::to_string(&event).expect("json"),
            None,
        )
    };
    tracker
        .handle(&[
            event(data.r1, EventType::Dispatched, serde_json::json!({})),
            event(data.r1, EventType::Opened, serde_json::json!({})),
            event(data.r3, EventType::Dispatched, serde_json::json!({})),
            event(
                data.r3,
                EventType::Bounced,
                serde_json::json!({"bounce_type": "hard", "smtp_code": 550}),
            ),
        ])
        .await
        .expect("tracking");
    data
}

/// The operator's API with keys: all tenants, acme only, globex only (all read keys).
struct Api {
    port: u16,
    ops: String,
    acme: String,
    globex: String,
}

async fn api(world: &World) -> (Api, tokio_util::sync::CancellationToken) {
    let (stop, _handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let mut key = async |name: &str, tenant: Option<&str>| {
        keys::create(&mut conn, name, tenant, Role::Read)
            .await
            .expect("key")
            .1
    };
    let api = Api {
        port,
        ops: key("ops", None).await,
        acme: key("acme", Some("acme")).await,
        globex: key("globex", Some("globex")).await,
    };
    api_ready(port).await;
    (api, stop)
}

impl Api {
    /// One page: (status, ids, next).
    async fn page(&self, key: &str, query: &str) -> (u16, Vec<Uuid>, Option<String>) {
        let (status, _, body) =
            http_get(self.port, &format!("/v1/messages?{query}"), Some(key)).await;
        let ids = body["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| Uuid::parse_str(i["id"].as_str().expect("an id")).expect("a uuid"))
                    .collect()
            })
            .unwrap_or_default();
        (status, ids, body["next"].as_str().map(str::to_owned))
    }

    /// The ids of a search that fits one page.
    async fn ids(&self, key: &str, query: &str) -> Vec<Uuid> {
        let (status, ids, next) = self.page(key, query).await;
        assert_eq!(status, 200, "{query}");
        assert_eq!(next, None, "{query}: one page expected");
        ids
    }

    /// (status, content type, detail) of a search expected to fail.
    async fn problem(&self, path: &str) -> (u16, String, String) {
        let (status, content_type, body) = http_get(self.port, path, Some(&self.ops)).await;
        (
            status,
            content_type,
            body["detail"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_filter_alone_and_combined_pages_and_scoping() {
    let world = World::new().await;
    let data = seed(&world).await;
    let (api, stop) = api(&world).await;
    let ops = api.ops.as_str();

    // No key, no search.
    assert_eq!(http_get(api.port, "/v1/messages", None).await.0, 401);
    assert_eq!(
        http_get(api.port, "/v1/messages/export?format=csv", None)
            .await
            .0,
        401
    );

    // Everything, newest first; a page item carries the summary fields.
    assert_eq!(api.ids(ops, "").await, data.all());
    let (_, _, body) = http_get(api.port, "/v1/messages?request_id=r-1", Some(ops)).await;
    let item = &body["items"][0];
    assert_eq!(item["tenant"], "acme");
    assert_eq!(item["recipient"], "ann@example.com");
    assert_eq!(item["status"], "opened");
    assert_eq!(item["subject"], "Order 1001");
    assert_eq!(item["open_count"], 1);
    assert_eq!(item["tags"], serde_json::json!(["order"]));
    assert_eq!(item["metadata"]["order_id"], "1001");
    assert_eq!(item["provider"], "smtp");
    assert_eq!(item["created_at"], "2026-11-01T10:01:00Z");

    // Each filter alone.
    let acme = data.only(&[data.r1, data.bob, data.carol, data.r3, data.r4, data.r5]);
    assert_eq!(api.ids(ops, "tenant=acme").await, acme);
    assert_eq!(
        api.ids(ops, "recipient=aNN%40example.COM").await,
        data.only(&[data.r1, data.g1, data.r3, data.r5])
    );
    assert_eq!(
        api.ids(ops, "status=queued").await,
        data.only(&[data.bob, data.carol, data.g1, data.r5, data.g2])
    );
    assert_eq!(api.ids(ops, "status=bounced").await, vec![data.r3]);
    assert_eq!(api.ids(ops, "status=scheduled").await, vec![data.r4]);
    assert_eq!(
        api.ids(ops, "tag=order").await,
        data.only(&[data.r1, data.g1, data.r3])
    );
    assert_eq!(
        api.ids(ops, "metadata.customer=42").await,
        data.only(&[data.r1, data.bob, data.carol])
    );
    assert_eq!(
        api.ids(ops, "metadata.order_id=1001").await,
        data.only(&[data.r1, data.g1])
    );
    assert_eq!(
        api.ids(ops, "metadata.order_id=9").await,
        Vec::<Uuid>::new()
    );
    assert_eq!(
        api.ids(ops, "request_id=r-2").await,
        data.only(&[data.bob, data.carol])
    );
    // since inclusive, until exclusive.
    assert_eq!(
        api.ids(ops, &format!("since={}", at(300))).await,
        data.only(&[data.r5, data.g2])
    );
    assert_eq!(
        api.ids(ops, &format!("until={}", at(150))).await,
        data.only(&[data.r1, data.bob, data.carol])
    );
    assert_eq!(
        api.ids(ops, &format!("since={}&until={}", at(120), at(240)))
            .await,
        data.only(&[data.bob, data.carol, data.g1, data.r3])
    );

    // Combined: every filter must hold.
    assert_eq!(
        api.ids(ops, "tag=order&tag=transactional").await,
        vec![data.r3]
    );
    assert_eq!(
        api.ids(ops, "metadata.customer=42&metadata.order_id=1001")
            .await,
        vec![data.r1]
    );
    assert_eq!(
        api.ids(ops, "recipient=ann%40example.com&status=opened")
            .await,
        vec![data.r1]
    );
    assert_eq!(
        api.ids(ops, &format!("tenant=acme&tag=order&since={}", at(61)))
            .await,
        vec![data.r3]
    );
    assert_eq!(
        api.ids(ops, "tenant=globex&recipient=ann%40example.com&metadata.order_id=1001&tag=order&request_id=g-1&status=queued").await,
        vec![data.g1]
    );
    assert_eq!(
        api.ids(ops, "tenant=globex&request_id=r-1").await,
        Vec::<Uuid>::new()
    );

    // Pages of 3: the whole set, newest first, no gaps, no repeats; the last has no `next`.
    let mut seen = Vec::new();
    let mut query = "limit=3".to_owned();
    let mut pages = 0;
    loop {
        let (status, ids, next) = api.page(ops, &query).await;
        assert_eq!(status, 200);
        assert!(ids.len() <= 3);
        seen.extend(ids);
        pages += 1;
        match next {
            Some(cursor) => query = format!("limit=3&after={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, data.all());
    // Paging with a filter, one per page, across r2's two emails of the same time.
    let mut seen = Vec::new();
    let mut query = "tenant=acme&limit=1".to_owned();
    while let (200, ids, next) = api.page(ops, &query).await {
        seen.extend(ids);
        let Some(cursor) = next else { break };
        query = format!("tenant=acme&limit=1&after={cursor}");
    }
    assert_eq!(seen, acme);

    // Tenant keys: their own tenant only; asking for another gives nothing.
    assert_eq!(api.ids(&api.acme, "").await, acme);
    assert_eq!(api.ids(&api.acme, "tenant=acme").await, acme);
    assert_eq!(
        api.ids(&api.acme, "tenant=globex").await,
        Vec::<Uuid>::new()
    );
    assert_eq!(
        api.ids(&api.acme, "recipient=ann%40example.com").await,
        data.only(&[data.r1, data.r3, data.r5])
    );
    assert_eq!(
        api.ids(&api.acme, "request_id=g-1").await,
        Vec::<Uuid>::new()
    );
    assert_eq!(
        api.ids(&api.globex, "").await,
        data.only(&[data.g1, data.g2])
    );
    assert_eq!(
        http_get(
            api.port,
            &format!("/v1/messages/{}", data.g1),
            Some(&api.acme)
        )
        .await
        .0,
        404
    );

    // Invalid input: 400 problems that say what is wrong.
    for (query, says) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("after=nope", "cursor"),
        ("since=yesterday", "RFC 3339"),
        ("until=2026-11-01T10:00:00", "RFC 3339"),
        ("recipient=not-an-address", "recipient"),
        ("status=sent", "accepted"),
        ("recipent=ann%40example.com", "unknown parameter"),
        ("tenant=a&tenant=b", "more than once"),
        ("metadata.=x", "key"),
    ] {
        let (status, content_type, detail) = api.problem(&format!("/v1/messages?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(content_type, "application/problem+json", "{query}");
        assert!(detail.contains(says), "{query}: {detail}");
    }
    let (_, _, detail) = api.problem("/v1/messages?status=sent").await;
    for status in ["queued", "delivered", "bounced", "complained"] {
        assert!(detail.contains(status), "{detail}");
    }

    // The single email's view: the summary with first times and the bounce.
    let (_, _, opened) = http_get(api.port, &format!("/v1/messages/{}", data.r1), Some(ops)).await;
    assert_eq!(opened["summary"]["open_count"], 1);
    assert!(opened["summary"]["first_opened_at"].is_string());
    let (_, _, bounced) = http_get(
        api.port,
        &format!("/v1/messages/{}", data.r3),
        Some(&api.acme),
    )
    .await;
    assert_eq!(bounced["summary"]["status"], "bounced");
    assert_eq!(bounced["summary"]["bounce"]["smtp_code"], 550);

    stop.cancel();
}

/// `GET path` with a key: (status, headers, body as text), chunked bodies joined.
async fn download(port: u16, path: &str, key: Option<&str>) -> (u16, String, String) {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response");
    let head = String::from_utf8(raw[..split].to_vec()).expect("a head");
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut joined = Vec::new();
        let mut rest = &body[..];
        loop {
            let line = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a chunk size");
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line]).expect("hex").trim(), 16)
                    .expect("a chunk size");
            rest = &rest[line + 2..];
            if size == 0 {
                break;
            }
            joined.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = joined;
    }
    (
        status,
        head.to_ascii_lowercase(),
        String::from_utf8(body).expect("UTF-8"),
    )
}

/// RFC 4180 records (quoted fields, doubled quotes, CRLF line ends).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        field.is_empty() && record.is_empty(),
        "a record without CRLF"
    );
    records
}

#[tokio::test(flavor = "multi_thread")]
async fn export_streams_the_search_as_ndjson_and_csv() {
    let mut world = World::new().await;
    world.config.max_recipients = 2000;
    world.config.max_fanout_bytes = 64 * 1024 * 1024;
    let data = seed(&world).await;
    // A bulk send: 1,050 emails of one time, so the export's pages (500) split ties on time.
    let (intake, _) = world.steps().await;
    let bulk_to: Vec<String> = (0..1050).map(|i| format!("m{i}@bulk.example")).collect();
    let request = serde_json::json!({"id": "b-1", "tenant": "bulk", "from": "shop@acme.test",
        "to": bulk_to, "subject": "Bulk", "text": "T"});
    intake
        .handle(&[incoming(&world, Queue::Mailbox, &request.to_string(), None)])
        .await
        .expect("intake");
    let (api, stop) = api(&world).await;
    let ops = api.ops.as_str();

    // NDJSON: one item per line, the search's order.
    let (status, head, body) = download(
        api.port,
        "/v1/messages/export?format=ndjson&tenant=acme",
        Some(ops),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/x-ndjson"),
        "{head}"
    );
    assert!(
        head.contains("content-disposition: attachment; filename=\"messages.ndjson\""),
        "{head}"
    );
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let ids: Vec<Uuid> = lines
        .iter()
        .map(|l| Uuid::parse_str(l["id"].as_str().expect("id")).expect("uuid"))
        .collect();
    assert_eq!(
        ids,
        data.only(&[data.r1, data.bob, data.carol, data.r3, data.r4, data.r5])
    );
    assert_eq!(lines.last().expect("r1")["open_count"], 1);

    // Across pages: the 1,050 bulk emails, each once, by id descending.
    let (status, _, body) = download(
        api.port,
        "/v1/messages/export?format=ndjson&tenant=bulk",
        Some(ops),
    )
    .await;
    assert_eq!(status, 200);
    let bulk: Vec<Uuid> = body
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            Uuid::parse_str(v["id"].as_str().expect("id")).expect("uuid")
        })
        .collect();
    assert_eq!(bulk.len(), 1050);
    assert_eq!(bulk.iter().collect::<BTreeSet<_>>().len(), 1050);
    let mut sorted = bulk.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(bulk, sorted);

    // CSV: the header, one record per email, formulas neutralised, quoting intact.
    let (status, head, body) = download(
        api.port,
        "/v1/messages/export?format=csv&since=2026-11-01T00:00:00Z&until=2026-11-02T00:00:00Z",
        Some(ops),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/csv; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("content-disposition: attachment; filename=\"messages.csv\""),
        "{head}"
    );
    let records = parse_csv(&body);
    assert_eq!(
        records[0],
        [
            "id",
            "request_id",
            "tenant",
            "recipient",
            "status",
            "subject",
            "created_at",
            "updated_at",
            "tags",
            "metadata",
            "provider",
            "provider_message_id",
            "open_count",
            "click_count"
        ]
    );
    let rows = &records[1..];
    assert!(rows.iter().all(|r| r.len() == 14));
    let ids: Vec<Uuid> = rows
        .iter()
        .map(|r| Uuid::parse_str(&r[0]).expect("uuid"))
        .collect();
    assert_eq!(ids, data.all());
    let row = |id: Uuid| rows.iter().find(|r| r[0] == id.to_string()).expect("a row");
    assert_eq!(row(data.bob)[5], format!("'{FORMULA}"));
    assert_eq!(row(data.g2)[5], "'-2 days left");
    assert_eq!(row(data.r5)[5], "Hello, \"friend\"");
    assert_eq!(row(data.r1)[1], "r-1");
    assert_eq!(row(data.r1)[4], "opened");
    assert_eq!(row(data.r1)[6], "2026-11-01T10:01:00.000000Z");
    assert_eq!(row(data.r3)[8], "[\"order\",\"transactional\"]");
    let metadata: serde_json::Value = serde_json::from_str(&row(data.r1)[9]).expect("json");
    assert_eq!(
        metadata,
        serde_json::json!({"order_id": "1001", "customer": "42"})
    );
    assert_eq!(row(data.r1)[12], "1");
    assert!(body.lines().skip(1).all(|l| !l.starts_with('=')));

    // The same filters as the search.
    let (_, _, body) = download(
        api.port,
        "/v1/messages/export?format=csv&status=bounced",
        Some(ops),
    )
    .await;
    let records = parse_csv(&body);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1][0], data.r3.to_string());

    // Scope: a tenant key exports its tenant; another tenant's export is empty.
    let (status, _, body) = download(
        api.port,
        "/v1/messages/export?format=ndjson",
        Some(&api.globex),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body.lines().count(), 2);
    assert!(!body.contains("\"acme\""));
    let (status, _, body) = download(
        api.port,
        "/v1/messages/export?format=csv&tenant=acme",
        Some(&api.globex),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(parse_csv(&body).len(), 1, "the header only");

    // Invalid exports.
    for query in [
        "format=xml",
        "",
        "format=csv&limit=10",
        "format=csv&status=sent",
    ] {
        let (status, head, _) =
            download(api.port, &format!("/v1/messages/export?{query}"), Some(ops)).await;
        assert_eq!(status, 400, "{query}");
        assert!(head.contains("application/problem+json"), "{query}");
    }
    assert_eq!(
        download(api.port, "/v1/messages/export?format=csv", None)
            .await
            .0,
        401
    );

    stop.cancel();
}
