//! The AMQP topology, described once. Every service applies it at start (see `mailtrail-broker`).
//!
//! Declare arguments are kept minimal (only the queue type), so that what an operator may want to
//! tune later (length limits, delivery limits, TTLs on work queues) is set with broker *policies*
//! and never causes a `PRECONDITION_FAILED` at start-up. A queue whose arguments are part of its
//! meaning (a future retry tier's delay, say) carries that meaning in its name, so changing it
//! means declaring a new queue.

use std::fmt;
use std::str::FromStr;

/// The default prefix put in front of every queue and exchange name.
pub const DEFAULT_QUEUE_PREFIX: &str = "mailtrail.";

/// RabbitMQ queue type used for the durable queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!(
                "unknown queue type {other:?}: use \"classic\" or \"quorum\""
            )),
        }
    }
}

/// Every durable queue mailtrail uses, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    /// Apps publish mailbox requests here.
    Mailbox,
    /// Apps publish urgent mailbox requests here; consumed before `Mailbox`.
    MailboxPriority,
    /// The operator's relay publishes dispatch jobs here.
    Dispatching,
    /// Dispatch jobs of urgent mail; consumed before `Dispatching`.
    DispatchingPriority,
    /// Dispatcher and webhook sink publish tracking events here; the operator records them.
    Tracking,
    /// Messages set aside by any service, each with an `x-mailtrail-reason` header.
    DeadLetter,
}

impl Queue {
    pub const ALL: [Queue; 6] = [
        Queue::Mailbox,
        Queue::MailboxPriority,
        Queue::Dispatching,
        Queue::DispatchingPriority,
        Queue::Tracking,
        Queue::DeadLetter,
    ];

    /// The name without the prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            Queue::Mailbox => "mailbox",
            Queue::MailboxPriority => "mailbox.priority",
            Queue::Dispatching => "dispatching",
            Queue::DispatchingPriority => "dispatching.priority",
            Queue::Tracking => "tracking",
            Queue::DeadLetter => "dead-letter",
        }
    }

    /// Looks a queue up by its base name (as stored in outbox rows and dead-letter headers).
    pub fn from_base_name(name: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|q| q.base_name() == name)
    }
}

/// The concrete topology of one deployment: a prefix and a queue type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub prefix: String,
    pub queue_type: QueueType,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            prefix: DEFAULT_QUEUE_PREFIX.to_owned(),
            queue_type: QueueType::Classic,
        }
    }
}

impl Topology {
    pub fn new(prefix: impl Into<String>, queue_type: QueueType) -> Self {
        Topology {
            prefix: prefix.into(),
            queue_type,
        }
    }

    /// The full queue name, e.g. `mailtrail.mailbox`.
    pub fn queue(&self, queue: Queue) -> String {
        format!("{}{}", self.prefix, queue.base_name())
    }

    /// Maps a full queue name back to its role, if it belongs to this topology.
    pub fn role_of(&self, full_name: &str) -> Option<Queue> {
        full_name
            .strip_prefix(&self.prefix)
            .and_then(Queue::from_base_name)
    }

    /// The delay queue (retry tier) of a dispatching queue for one delay, e.g.
    /// `mailtrail.dispatching.delay-30s`. Its delay is in its name because it is a queue argument
    /// (`x-message-ttl`): another delay is another queue, never a `PRECONDITION_FAILED`.
    pub fn retry_queue(&self, work_queue: Queue, delay_secs: u32) -> String {
        format!("{}.delay-{delay_secs}s", self.queue(work_queue))
    }

    /// The topic exchange status events are published to, e.g. `mailtrail.events`. Apps bind
    /// their own queues to it with `email.<tenant>.<type>` patterns ([`status_routing_key`]).
    pub fn events_exchange(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// Every queue to declare, with its declare arguments (name, argument list).
    pub fn queues(&self) -> Vec<QueueSpec> {
        Queue::ALL
            .into_iter()
            .map(|q| QueueSpec {
                role: q,
                name: self.queue(q),
                queue_type: self.queue_type,
            })
            .collect()
    }
}

/// The routing key of a status event: `email.<tenant>.<type>`, so `email.acme.#` is one
/// tenant's events and `email.*.bounced` one type's. Tenants are `[a-z0-9_-]`, never a dot.
pub fn status_routing_key(tenant: &str, event_type: &str) -> String {
    format!("email.{tenant}.{event_type}")
}

/// One queue to declare: durable, not exclusive, not auto-deleted, with `x-queue-type` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub role: Queue,
    pub name: String,
    pub queue_type: QueueType,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_map_back() {
        let t = Topology::new("t1.", QueueType::Quorum);
        assert_eq!(t.queue(Queue::MailboxPriority), "t1.mailbox.priority");
        for q in Queue::ALL {
            assert_eq!(t.role_of(&t.queue(q)), Some(q));
        }
        assert_eq!(t.role_of("other.mailbox"), None);
        assert_eq!(t.queues().len(), Queue::ALL.len());
        assert_eq!(t.events_exchange(), "t1.events");
        assert_eq!(status_routing_key("acme", "bounced"), "email.acme.bounced");
    }

    #[test]
    fn queue_type_parses_case_insensitively_and_rejects_others() {
        assert_eq!("Quorum".parse::<QueueType>(), Ok(QueueType::Quorum));
        assert_eq!("classic".parse::<QueueType>(), Ok(QueueType::Classic));
        assert!("stream".parse::<QueueType>().is_err());
    }
}
