//! The SMTP server's ceiling: the dispatcher's own SMTP sender (16 pooled connections, 64 sends
//! in flight, messages built as the dispatcher builds them) against the smtp-capture process
//! that the end-to-end runs use, so it is known not to be their bottleneck.

use crate::procs::Service;
use crate::stats::{CpuSpent, read_cpu};
use mailtrail_dispatcher::message;
use mailtrail_dispatcher::smtp::{SmtpSender, envelope};
use mailtrail_shared::address::parse_address;
use mailtrail_shared::contract::Priority;
use mailtrail_shared::dispatch::DispatchJob;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub struct SmtpResult {
    pub messages: usize,
    pub seconds: f64,
    pub cpu: CpuSpent,
}

/// A dispatch job like the benchmark's requests become.
pub fn job(n: usize, text: &str) -> anyhow::Result<DispatchJob> {
    Ok(DispatchJob {
        version: 1,
        job_id: Uuid::new_v4(),
        email_id: Uuid::new_v4(),
        request_id: Uuid::new_v4(),
        request_key: format!("bench-{n}"),
        tenant: "bench".into(),
        attempt: 1,
        priority: Priority::Normal,
        from: parse_address("Bench <bench@mailtrail.test>").map_err(anyhow::Error::msg)?,
        to: parse_address(&format!("user{n}@example.com")).map_err(anyhow::Error::msg)?,
        reply_to: None,
        subject: format!("Benchmark message {n}"),
        text: Some(text.to_owned()),
        html: None,
        headers: BTreeMap::new(),
        tags: vec![],
        metadata: BTreeMap::new(),
        attachments: vec![],
        waits: 0,
        first_attempt_at: None,
    })
}

pub async fn run(
    smtp_url: &str,
    capture: &Service,
    messages: usize,
    text: &str,
) -> anyhow::Result<SmtpResult> {
    let sender =
        Arc::new(SmtpSender::new(smtp_url, "bench.local", 16, Duration::from_secs(10)).await?);
    let mut prepared = Vec::with_capacity(messages);
    for n in 0..messages {
        let job = job(n, text)?;
        let formatted = message::build(&job, "bench.local")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .formatted();
        let envelope = envelope(&job.from.address, &job.to.address).map_err(anyhow::Error::msg)?;
        prepared.push((envelope, formatted));
    }
    let prepared = Arc::new(prepared);
    let before = read_cpu(&[capture]);
    let started = Instant::now();
    let in_flight = 64;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..in_flight {
        let sender = sender.clone();
        let prepared = prepared.clone();
        tasks.spawn(async move {
            for (envelope, formatted) in prepared.iter().skip(worker).step_by(in_flight) {
                sender
                    .send(envelope, formatted)
                    .await
                    .map_err(|e| anyhow::anyhow!("SMTP send failed: {e:?}"))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuSpent::between(&before, &read_cpu(&[capture]));
    Ok(SmtpResult {
        messages,
        seconds,
        cpu,
    })
}
