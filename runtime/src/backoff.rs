use std::time::Duration;

/// Exponential backoff from 200 ms to 5 s, with jitter: work resumes within seconds after an
/// outage ends, while a long outage costs one attempt every few seconds.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(200),
        }
    }
}

impl Backoff {
    /// The wait before the next attempt (up to a quarter more, so many clients do not retry in
    /// step).
    pub fn next_wait(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        let jitter = (uuid::Uuid::new_v4().as_u128() % 100) as u32;
        current + current * jitter / 400
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_with_bounded_jitter() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_wait()).collect();
        assert!(waits[0] >= Duration::from_millis(200) && waits[0] < Duration::from_millis(250));
        assert!(waits[1] >= Duration::from_millis(400));
        for wait in &waits[5..] {
            assert!(*wait >= Duration::from_secs(5) && *wait < Duration::from_millis(6250));
        }
    }
}
