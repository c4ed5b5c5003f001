//! The webhook sink: signed Standard Webhooks events for the emails of the closed-loop run,
//! posted with many requests in flight; measured as events/s the sink accepted (each 200 means
//! every event of the request was confirmed on the tracking queue) and events/s the operator
//! recorded (first post → last event recorded).

use crate::e2e::{Stack, WEBHOOK_SECRET};
use crate::stats::{CpuSpent, Percentiles, read_cpu};
use anyhow::Context;
use mailtrail_webhook_sink::verify::standard::SigningKey;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub struct WebhookRun {
    pub events: usize,
    pub per_request: usize,
    pub sink_seconds: f64,
    pub recorded_seconds: f64,
    pub request_latency: Percentiles,
    pub cpu: CpuSpent,
}

impl WebhookRun {
    pub fn sink_rate(&self) -> f64 {
        self.events as f64 / self.sink_seconds
    }
    pub fn recorded_rate(&self) -> f64 {
        self.events as f64 / self.recorded_seconds
    }
}

/// Posts `events` events of `event_type` (`per_request` to a request) for `emails`, in turn.
pub async fn run(
    stack: &mut Stack,
    http: &reqwest::Client,
    emails: Arc<Vec<Uuid>>,
    event_type: &'static str,
    events: usize,
    per_request: usize,
    concurrency: usize,
) -> anyhow::Result<WebhookRun> {
    anyhow::ensure!(!emails.is_empty(), "no emails to report on");
    let per_request = per_request.max(1);
    let baseline = stack.count_events(event_type).await?;
    let requests = events.div_ceil(per_request);
    let url = format!("{}/v1/webhooks/standard", stack.sink_url);
    let key = Arc::new(SigningKey::parse(WEBHOOK_SECRET).map_err(anyhow::Error::msg)?);
    let next = Arc::new(AtomicUsize::new(0));
    let before = read_cpu(&stack.services());
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, url, key, next, emails) = (
            http.clone(),
            url.clone(),
            key.clone(),
            next.clone(),
            emails.clone(),
        );
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                if r >= requests {
                    return anyhow::Ok(latencies);
                }
                let first = r * per_request;
                let items: Vec<serde_json::Value> = (first..(first + per_request).min(events))
                    .map(|i| {
                        json!({
                            "type": event_type,
                            "mailtrail_id": emails[i % emails.len()],
                            "occurred_at": chrono::Utc::now().to_rfc3339(),
                        })
                    })
                    .collect();
                let body = if per_request == 1 {
                    serde_json::to_vec(&items[0])?
                } else {
                    serde_json::to_vec(&items)?
                };
                let id = format!("msg_bench_{event_type}_{r}");
                let timestamp = chrono::Utc::now().timestamp().to_string();
                let signature = key.signature_header(&id, &timestamp, &body);
                let sent = Instant::now();
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", &timestamp)
                    .header("webhook-signature", signature)
                    .body(body)
                    .send()
                    .await
                    .context("webhook request failed")?;
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                anyhow::ensure!(status.is_success(), "the sink answered {status}: {text}");
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = workers.join_next().await {
        latencies.extend(joined??);
    }
    let sink_seconds = started.elapsed().as_secs_f64();
    let timeout = Duration::from_secs(120 + events as u64 / 50);
    let done = stack
        .wait_events(event_type, baseline + events as i64, timeout)
        .await?;
    let recorded_seconds = done.duration_since(started).as_secs_f64();
    let cpu = CpuSpent::between(&before, &read_cpu(&stack.services()));
    Ok(WebhookRun {
        events,
        per_request,
        sink_seconds,
        recorded_seconds,
        request_latency: Percentiles::of(latencies),
        cpu,
    })
}

/// The closed-loop run's email ids.
pub async fn emails_of(stack: &Stack, tenant: &str) -> anyhow::Result<Vec<Uuid>> {
    let rows = stack
        .db
        .query(
            "SELECT id::text FROM emails WHERE tenant = $1 ORDER BY id",
            &[&tenant],
        )
        .await?;
    rows.iter()
        .map(|r| Ok(r.get::<_, String>(0).parse::<Uuid>()?))
        .collect()
}
