use crate::Backoff;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs `session` again and again until it returns `Ok` or `stop` is cancelled: a failed session
/// (a lost broker or database connection) is logged and retried after a backoff that starts
/// over once a session has lasted 30 s. This is how every service survives restarts of what it
/// depends on without a human.
pub async fn supervise<F, Fut>(service: &str, stop: &CancellationToken, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::default();
    while !stop.is_cancelled() {
        let started = tokio::time::Instant::now();
        let Err(error) = session().await else {
            return;
        };
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Backoff::default();
        }
        let wait = backoff.next_wait();
        tracing::error!(
            error = %format!("{error:#}"),
            retry_in_ms = wait.as_millis() as u64,
            "{service} session ended; reconnecting"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs a service until it returns, giving it `drain` after `stop` is cancelled to finish the
/// work in hand; past that it is an error (unacked deliveries go back to their queues).
pub async fn run_with_drain_deadline(
    stop: &CancellationToken,
    drain: Duration,
    service: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::select! {
        result = service => result,
        _ = async { stop.cancelled().await; tokio::time::sleep(drain).await } => {
            anyhow::bail!(
                "work in hand did not finish within {} ms (MAILTRAIL_DRAIN_TIMEOUT_MS); \
                 unacked deliveries return to their queues",
                drain.as_millis()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn failed_sessions_are_retried_until_one_ends_well() {
        let calls = AtomicUsize::new(0);
        let stop = CancellationToken::new();
        supervise("test", &stop, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                anyhow::bail!("connection lost")
            }
            Ok(())
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_deadline_turns_a_hung_shutdown_into_an_error() {
        let stop = CancellationToken::new();
        stop.cancel();
        let hung = run_with_drain_deadline(
            &stop,
            Duration::from_secs(1),
            std::future::pending::<anyhow::Result<()>>(),
        )
        .await;
        assert!(hung.is_err());
        let quick = run_with_drain_deadline(&stop, Duration::from_secs(1), async { Ok(()) }).await;
        assert!(quick.is_ok());
    }
}
