//! What this dispatcher has sent recently, so a redelivered job (after a broker reconnect, the
//! same job may arrive again — even while its first send is still running) is not sent twice:
//! its outcome is republished instead. Bounded by count and age; jobs in flight are never
//! forgotten.

use crate::outcome::Outcome;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

/// A job attempt: retries of the same job are different attempts and are sent.
pub type AttemptKey = (Uuid, u32);

enum Entry {
    InFlight(watch::Receiver<Option<Outcome>>),
    Done(Outcome, Instant),
}

pub struct JobMemory {
    inner: Mutex<Inner>,
    max_done: usize,
    max_age: Duration,
}

struct Inner {
    entries: HashMap<AttemptKey, Entry>,
    /// Completed attempts, oldest first, for eviction.
    done_order: VecDeque<(AttemptKey, Instant)>,
}

/// What to do with a job attempt.
pub enum Begin {
    /// Not seen: send it, then call [`Slot::complete`].
    Fresh(Slot),
    /// Being sent by another delivery: wait for its outcome.
    InFlight(watch::Receiver<Option<Outcome>>),
    /// Already sent: republish this outcome.
    Done(Outcome),
}

/// The right (and duty) to record the outcome of a fresh attempt.
pub struct Slot {
    key: AttemptKey,
    sender: watch::Sender<Option<Outcome>>,
}

impl JobMemory {
    pub fn new(max_done: usize, max_age: Duration) -> JobMemory {
        JobMemory {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                done_order: VecDeque::new(),
            }),
            max_done: max_done.max(1),
            max_age,
        }
    }

    pub fn begin(&self, key: AttemptKey) -> Begin {
        let mut inner = self.lock();
        self.evict(&mut inner);
        match inner.entries.get(&key) {
            // An attempt whose task ended without an outcome (aborted, say) is sent again.
            Some(Entry::InFlight(receiver)) if receiver.has_changed().is_err() => {
                let (sender, receiver) = watch::channel(None);
                inner.entries.insert(key, Entry::InFlight(receiver));
                Begin::Fresh(Slot { key, sender })
            }
            Some(Entry::InFlight(receiver)) => Begin::InFlight(receiver.clone()),
            Some(Entry::Done(outcome, _)) => Begin::Done(outcome.clone()),
            None => {
                let (sender, receiver) = watch::channel(None);
                inner.entries.insert(key, Entry::InFlight(receiver));
                Begin::Fresh(Slot { key, sender })
            }
        }
    }

    /// Records the outcome of a fresh attempt and wakes deliveries waiting on it.
    pub fn complete(&self, slot: Slot, outcome: Outcome) {
        let now = Instant::now();
        {
            let mut inner = self.lock();
            inner
                .entries
                .insert(slot.key, Entry::Done(outcome.clone(), now));
            inner.done_order.push_back((slot.key, now));
            self.evict(&mut inner);
        }
        let _ = slot.sender.send(Some(outcome));
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn evict(&self, inner: &mut Inner) {
        let now = Instant::now();
        while let Some((key, at)) = inner.done_order.front().copied() {
            let too_many = inner.done_order.len() > self.max_done;
            let too_old = now.duration_since(at) > self.max_age;
            if !too_many && !too_old {
                break;
            }
            inner.done_order.pop_front();
            // Only remove the entry this order record belongs to.
            if matches!(inner.entries.get(&key), Some(Entry::Done(_, done_at)) if *done_at == at) {
                inner.entries.remove(&key);
            }
        }
    }
}

/// Waits for the outcome of an attempt another delivery is sending; `None` if it was abandoned.
pub async fn wait_for(mut receiver: watch::Receiver<Option<Outcome>>) -> Option<Outcome> {
    loop {
        if let Some(outcome) = receiver.borrow().clone() {
            return Some(outcome);
        }
        if receiver.changed().await.is_err() {
            return receiver.borrow().clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::OutcomeKind;

    fn dispatched() -> Outcome {
        Outcome::new(
            OutcomeKind::Dispatched {
                reply: "250 ok".into(),
                provider_message_id: None,
            },
            "smtp",
        )
    }

    #[tokio::test]
    async fn a_second_delivery_waits_for_the_first_and_then_sees_its_outcome() {
        let memory = JobMemory::new(10, Duration::from_secs(60));
        let key = (Uuid::from_u128(1), 1);
        let Begin::Fresh(slot) = memory.begin(key) else {
            panic!("first delivery must send");
        };
        let Begin::InFlight(receiver) = memory.begin(key) else {
            panic!("second delivery must wait");
        };
        let waiter = tokio::spawn(wait_for(receiver));
        memory.complete(slot, dispatched());
        assert!(matches!(
            waiter.await.expect("joins"),
            Some(Outcome {
                kind: OutcomeKind::Dispatched { .. },
                ..
            })
        ));
        assert!(matches!(memory.begin(key), Begin::Done(_)));
        // Another attempt of the same job is sent.
        assert!(matches!(memory.begin((key.0, 2)), Begin::Fresh(_)));
        // An attempt abandoned without an outcome (its slot dropped) is sent again.
        let abandoned = (Uuid::from_u128(5), 1);
        let Begin::Fresh(slot) = memory.begin(abandoned) else {
            panic!("fresh");
        };
        drop(slot);
        assert!(matches!(memory.begin(abandoned), Begin::Fresh(_)));
    }

    #[test]
    fn completed_attempts_are_bounded_by_count_and_age() {
        let memory = JobMemory::new(2, Duration::from_secs(60));
        for n in 0..5u128 {
            let Begin::Fresh(slot) = memory.begin((Uuid::from_u128(n), 1)) else {
                panic!("fresh");
            };
            memory.complete(slot, dispatched());
        }
        assert_eq!(memory.len(), 2);
        assert!(matches!(
            memory.begin((Uuid::from_u128(0), 1)),
            Begin::Fresh(_)
        ));
        let aged = JobMemory::new(100, Duration::ZERO);
        let Begin::Fresh(slot) = aged.begin((Uuid::from_u128(9), 1)) else {
            panic!("fresh");
        };
        aged.complete(slot, dispatched());
        std::thread::sleep(Duration::from_millis(2));
        assert!(matches!(
            aged.begin((Uuid::from_u128(9), 1)),
            Begin::Fresh(_)
        ));
    }
}
