//! The webhook flood: a signed Standard Webhooks `delivered` event per email, each posted three
//! times in shuffled order, every post retried until the sink answers 2xx (a provider's retry:
//! same `webhook-id`, signed afresh).

use anyhow::bail;
use mailtrail_webhook_sink::verify::standard::SigningKey;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Posts at once, like a provider's parallel deliveries.
const POSTERS: usize = 8;
/// How long one webhook may keep failing before the flood gives up (a failure of the run).
const GIVE_UP: Duration = Duration::from_secs(120);

pub(crate) struct Flood {
    port: u16,
    key: Arc<SigningKey>,
    /// (webhook-id, body), three copies of each, shuffled.
    posts: Arc<Vec<(String, String)>>,
    answered: Arc<AtomicUsize>,
}

impl Flood {
    pub(crate) fn new(
        port: u16,
        secret: &str,
        emails: &[(uuid::Uuid, String)],
        seed: u64,
    ) -> anyhow::Result<Flood> {
        let key = SigningKey::parse(secret).map_err(|e| anyhow::anyhow!("{e}"))?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut posts: Vec<(String, String)> = emails
            .iter()
            .flat_map(|(id, to)| {
                let body = format!(
                    r#"{{"type": "delivered", "mailtrail_id": "{id}", "recipient": "{to}", "occurred_at": "{now}"}}"#
                );
                let webhook_id = format!("msg_fault_{}", id.simple());
                std::iter::repeat_n((webhook_id, body), 3)
            })
            .collect();
        posts.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x7765_6268));
        Ok(Flood {
            port,
            key: Arc::new(key),
            posts: Arc::new(posts),
            answered: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub(crate) fn total(&self) -> usize {
        self.posts.len()
    }

    /// Posts answered 2xx so far.
    pub(crate) fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Posts everything; returns (posts made, retries).
    pub(crate) async fn post_all(&self) -> anyhow::Result<(u64, u64)> {
        let next = Arc::new(AtomicUsize::new(0));
        let attempts = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..POSTERS {
            let (next, attempts) = (next.clone(), attempts.clone());
            let (posts, key, answered, port) = (
                self.posts.clone(),
                self.key.clone(),
                self.answered.clone(),
                self.port,
            );
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((id, body)) = posts.get(i) else {
                        return anyhow::Ok(());
                    };
                    let started = Instant::now();
                    loop {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        if let Some(status) = post(port, &key, id, body).await
                            && (200..300).contains(&status)
                        {
                            break;
                        }
                        if started.elapsed() > GIVE_UP {
                            bail!("webhook {id} not taken within {GIVE_UP:?}");
                        }
                        // A provider's retry back-off, short.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let made = attempts.load(Ordering::SeqCst);
        Ok((made, made - self.posts.len() as u64))
    }
}

/// One signed POST to the sink; the status, or `None` when the connection failed.
async fn post(port: u16, key: &SigningKey, id: &str, body: &str) -> Option<u16> {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string();
    let signature = key.signature_header(id, &timestamp, body.as_bytes());
    let request = format!(
        "POST /v1/webhooks/standard HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nwebhook-id: {id}\r\n\
         webhook-timestamp: {timestamp}\r\nwebhook-signature: {signature}\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw);
        text.lines().next()?.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .ok()
        .flatten()
}
