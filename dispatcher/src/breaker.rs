//! A circuit breaker per provider, per dispatcher process. After repeated transient failures,
//! or at once when the provider refuses us (bad key, suspended account), the provider is
//! marked down: it then sees only probes, at most one per interval, and its jobs go to the
//! failover provider or wait (spending no attempt); the first probe that succeeds closes the
//! breaker. Time is passed in, so tests drive it with their own clock.

use crate::providers::SendError;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: send.
    Send,
    /// Open, and a probe is due: send this one to learn whether the provider is back.
    Probe,
    /// Open: do not call the provider.
    Wait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { failures: u32 },
    Open { last_probe: Instant },
}

/// What a recorded result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Opened,
    Closed,
}

pub struct Breaker {
    threshold: u32,
    probe_every: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// Opens after `threshold` transient failures in a row; probes every `probe_every`.
    pub fn new(threshold: u32, probe_every: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            probe_every,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    pub fn state(&self) -> State {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state(), State::Open { .. })
    }

    /// May a send go to the provider now?
    pub fn admit(&self, now: Instant) -> Admit {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *state {
            State::Closed { .. } => Admit::Send,
            State::Open { last_probe } if now.duration_since(last_probe) >= self.probe_every => {
                *state = State::Open { last_probe: now };
                Admit::Probe
            }
            State::Open { .. } => Admit::Wait,
        }
    }

    /// Records what a send (or probe) got.
    pub fn record(&self, result: &Result<(), &SendError>, now: Instant) -> Change {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let was_open = matches!(*state, State::Open { .. });
        let next = match (result, *state) {
            // The provider answered about the message: it is up.
            (Ok(()) | Err(SendError::Rejected { .. } | SendError::Deferred(_)), _) => {
                State::Closed { failures: 0 }
            }
            (Err(SendError::ProviderDown(_)), State::Open { last_probe }) => {
                State::Open { last_probe }
            }
            (Err(SendError::ProviderDown(_)), State::Closed { .. }) => {
                State::Open { last_probe: now }
            }
            (Err(SendError::Transient(_)), State::Open { last_probe }) => {
                State::Open { last_probe }
            }
            (Err(SendError::Transient(_)), State::Closed { failures }) => {
                if failures + 1 >= self.threshold {
                    State::Open { last_probe: now }
                } else {
                    State::Closed {
                        failures: failures + 1,
                    }
                }
            }
        };
        *state = next;
        match (was_open, matches!(next, State::Open { .. })) {
            (false, true) => Change::Opened,
            (true, false) => Change::Closed,
            _ => Change::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> SendError {
        SendError::Transient("503".into())
    }

    #[test]
    fn deferred_messages_are_answers_and_never_open_the_breaker() {
        let breaker = Breaker::new(3, Duration::from_secs(10));
        let now = Instant::now();
        let deferred = SendError::Deferred("450 4.2.0 greylisted".into());
        // Two failures, then a message deferred by a working server: the count starts over.
        assert_eq!(breaker.record(&Err(&transient()), now), Change::None);
        assert_eq!(breaker.record(&Err(&transient()), now), Change::None);
        assert_eq!(breaker.record(&Err(&deferred), now), Change::None);
        assert_eq!(breaker.record(&Err(&transient()), now), Change::None);
        assert_eq!(breaker.record(&Err(&transient()), now), Change::None);
        for _ in 0..20 {
            assert_eq!(breaker.record(&Err(&deferred), now), Change::None);
        }
        assert!(!breaker.is_open());
        // A third failure in a row (counted from the last answer) opens it.
        assert_eq!(breaker.record(&Err(&transient()), now), Change::None);
        assert_eq!(breaker.record(&Err(&transient()), now), Change::None);
        assert_eq!(breaker.record(&Err(&transient()), now), Change::Opened);
        // And a deferral answered to a probe closes it: the server is back.
        assert_eq!(breaker.record(&Err(&deferred), now), Change::Closed);
    }

    #[test]
    fn opens_after_repeated_failures_probes_once_per_interval_and_closes_on_success() {
        let breaker = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(breaker.admit(t0), Admit::Send);
        assert_eq!(breaker.record(&Err(&transient()), t0), Change::None);
        assert_eq!(breaker.record(&Err(&transient()), t0), Change::None);
        // A success in between resets the count.
        assert_eq!(breaker.record(&Ok(()), t0), Change::None);
        for _ in 0..2 {
            assert_eq!(breaker.record(&Err(&transient()), t0), Change::None);
        }
        assert_eq!(breaker.record(&Err(&transient()), t0), Change::Opened);
        assert!(breaker.is_open());
        // Open: nothing goes through until the probe interval has passed, then one probe.
        assert_eq!(breaker.admit(t0 + Duration::from_secs(5)), Admit::Wait);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(breaker.admit(t1), Admit::Probe);
        assert_eq!(breaker.admit(t1), Admit::Wait, "one probe per interval");
        assert_eq!(breaker.record(&Err(&transient()), t1), Change::None);
        assert_eq!(breaker.admit(t1 + Duration::from_secs(9)), Admit::Wait);
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(breaker.admit(t2), Admit::Probe);
        assert_eq!(breaker.record(&Ok(()), t2), Change::Closed);
        assert_eq!(breaker.admit(t2), Admit::Send);
    }

    #[test]
    fn a_provider_that_refuses_us_opens_it_at_once_and_an_answer_about_a_message_closes_it() {
        let breaker = Breaker::new(5, Duration::from_secs(1));
        let t0 = Instant::now();
        let refused = SendError::ProviderDown("401 invalid key".into());
        assert_eq!(breaker.record(&Err(&refused), t0), Change::Opened);
        assert_eq!(breaker.admit(t0), Admit::Wait);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(breaker.admit(t1), Admit::Probe);
        let rejected = SendError::Rejected {
            reason: "bad recipient".into(),
            mailbox_unknown: false,
        };
        assert_eq!(breaker.record(&Err(&rejected), t1), Change::Closed);
    }
}
