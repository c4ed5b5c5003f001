//! Waiting for a condition instead of sleeping.

use std::time::Duration;
use tokio::time::Instant;

/// How often [`eventually`] checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `f` every ~50 ms until it returns `Some`, and returns that value. Panics after
/// `timeout` (also when a single call of `f` hangs) with a message naming `what`.
///
/// ```no_run
/// # async fn demo(count: impl Fn() -> usize) {
/// use std::time::Duration;
/// mailtrail_test_support::eventually("three rows", Duration::from_secs(10), || async {
///     (count() == 3).then_some(())
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Some(value)) => return value,
            Ok(None) => {}
            Err(_) => break,
        }
        let next = Instant::now() + POLL_INTERVAL;
        if next >= deadline {
            break;
        }
        tokio::time::sleep_until(next).await;
    }
    panic!("timed out after {timeout:?} waiting for {what} ({attempts} checks)");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_first_some() {
        let calls = AtomicU32::new(0);
        let v = eventually("third call", Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 3).then_some(n * 10)
        })
        .await;
        assert_eq!(v, 30);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the impossible")]
    async fn panics_naming_the_condition() {
        eventually("the impossible", Duration::from_millis(200), || async {
            None::<()>
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for a hanging check")]
    async fn a_hanging_check_times_out_too() {
        eventually("a hanging check", Duration::from_millis(200), || {
            std::future::pending::<Option<()>>()
        })
        .await;
    }
}
