//! A rate limit per provider, per dispatcher process (real providers throttle): a token bucket
//! of `per_second` tokens refilled continuously, holding at most one second's worth, so a burst
//! never exceeds the rate by more than that. Time is passed in, so tests use their own clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimit {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// `per_second` messages a second (at least one token in the bucket).
    pub fn new(per_second: f64, now: Instant) -> RateLimit {
        let per_second = per_second.max(0.001);
        RateLimit {
            per_second,
            state: Mutex::new((per_second.max(1.0), now)),
        }
    }

    /// Takes a token at `now`, or says how long until one is there (take it then by calling
    /// again).
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let capacity = self.per_second.max(1.0);
        let refilled = (tokens
            + now.saturating_duration_since(last).as_secs_f64() * self.per_second)
            .min(capacity);
        if refilled >= 1.0 {
            *state = (refilled - 1.0, now.max(last));
            Ok(())
        } else {
            *state = (refilled, now.max(last));
            Err(Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
    }

    /// Waits (on the real clock) until a token is there and takes it.
    pub async fn take(&self) {
        while let Err(wait) = self.try_take(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses `mailgun=100,smtp=500` into (provider, messages per second).
pub fn parse_rate_limits(list: &str) -> anyhow::Result<Vec<(String, f64)>> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (name, rate) = entry.split_once('=').ok_or_else(|| {
                anyhow::anyhow!(
                    "MAILTRAIL_RATE_LIMITS entry {entry:?} is not <provider>=<per second>"
                )
            })?;
            let rate: f64 = rate
                .trim()
                .parse()
                .ok()
                .filter(|r: &f64| *r > 0.0)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "MAILTRAIL_RATE_LIMITS entry {entry:?}: the rate must be a positive number"
                    )
                })?;
            Ok((name.trim().to_owned(), rate))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_rate_over_time_with_a_burst_of_at_most_one_second() {
        let t0 = Instant::now();
        let limit = RateLimit::new(10.0, t0);
        // A full bucket: ten at once, then the eleventh must wait a tenth of a second.
        for _ in 0..10 {
            assert_eq!(limit.try_take(t0), Ok(()));
        }
        let wait = limit.try_take(t0).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // Over the next ten seconds, taking whenever allowed yields ten a second.
        let mut taken = 0;
        let mut now = t0;
        let end = t0 + Duration::from_secs(10);
        while now < end {
            match limit.try_take(now) {
                Ok(()) => taken += 1,
                Err(wait) => now += wait,
            }
        }
        assert!((99..=101).contains(&taken), "{taken}");
        // A long idle time refills to one second's worth, no more.
        let later = end + Duration::from_secs(60);
        let burst = (0..100)
            .take_while(|_| limit.try_take(later).is_ok())
            .count();
        assert_eq!(burst, 10);
    }

    #[test]
    fn slow_rates_and_the_setting() {
        let t0 = Instant::now();
        let limit = RateLimit::new(0.5, t0);
        assert_eq!(limit.try_take(t0), Ok(()));
        let wait = limit.try_take(t0).expect_err("empty");
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-9);
        assert_eq!(limit.try_take(t0 + Duration::from_secs(2)), Ok(()));
        let parsed = parse_rate_limits("mailgun=100, smtp=2.5").expect("limits");
        assert_eq!(parsed, [("mailgun".into(), 100.0), ("smtp".into(), 2.5)]);
        assert!(parse_rate_limits("mailgun").is_err());
        assert!(parse_rate_limits("mailgun=0").is_err());
    }
}
