//! The history rules, defined once (documented in `docs/history.md`).
//!
//! * A timeline is ordered by `occurred_at`, ties broken by [`EventType::lifecycle_rank`], then by
//!   the per-email sequence number (arrival order at the operator).
//! * `queued` is stamped when the job is handed to the broker (the publisher confirm arrived).
//! * An email's summary `status` is the recorded event type with the highest
//!   [`EventType::status_precedence`], whatever order events arrived in: a late `delivered` never
//!   replaces `bounced` or `complained`, an `opened` never hides a `clicked`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Every event type an email's history can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The operator accepted the request for this recipient.
    Accepted,
    /// A future `send_at` holds the email until it is due.
    Scheduled,
    /// The dispatch job was handed to the broker.
    Queued,
    /// A send attempt failed transiently; it will be retried.
    Deferred,
    /// The provider accepted the email.
    Dispatched,
    /// The recipient's server accepted the email (provider webhook).
    Delivered,
    /// The recipient opened the email.
    Opened,
    /// The recipient clicked a link.
    Clicked,
    /// The recipient unsubscribed.
    Unsubscribed,
    /// The email cannot be sent (permanent error, retries exhausted).
    Failed,
    /// The provider refused to send it.
    Rejected,
    /// Not sent because the recipient is on the suppression list.
    Suppressed,
    /// A scheduled email was cancelled before dispatch.
    Cancelled,
    /// The recipient's server bounced the email.
    Bounced,
    /// The recipient marked the email as spam.
    Complained,
}

impl EventType {
    pub const ALL: [EventType; 15] = [
        EventType::Accepted,
        EventType::Scheduled,
        EventType::Queued,
        EventType::Deferred,
        EventType::Dispatched,
        EventType::Delivered,
        EventType::Opened,
        EventType::Clicked,
        EventType::Unsubscribed,
        EventType::Failed,
        EventType::Rejected,
        EventType::Suppressed,
        EventType::Cancelled,
        EventType::Bounced,
        EventType::Complained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Accepted => "accepted",
            EventType::Scheduled => "scheduled",
            EventType::Queued => "queued",
            EventType::Deferred => "deferred",
            EventType::Dispatched => "dispatched",
            EventType::Delivered => "delivered",
            EventType::Opened => "opened",
            EventType::Clicked => "clicked",
            EventType::Unsubscribed => "unsubscribed",
            EventType::Failed => "failed",
            EventType::Rejected => "rejected",
            EventType::Suppressed => "suppressed",
            EventType::Cancelled => "cancelled",
            EventType::Bounced => "bounced",
            EventType::Complained => "complained",
        }
    }

    /// Where the event sits in an email's life; breaks ties between events with the same
    /// `occurred_at` (providers often report to the second).
    pub fn lifecycle_rank(self) -> i16 {
        match self {
            EventType::Accepted => 0,
            EventType::Scheduled => 1,
            EventType::Suppressed => 2,
            EventType::Cancelled => 2,
            EventType::Queued => 3,
            EventType::Deferred => 4,
            EventType::Dispatched => 5,
            EventType::Rejected => 6,
            EventType::Failed => 6,
            EventType::Delivered => 7,
            EventType::Bounced => 8,
            EventType::Opened => 9,
            EventType::Clicked => 10,
            EventType::Complained => 11,
            EventType::Unsubscribed => 12,
        }
    }

    /// Precedence for the summary status: the highest recorded wins, whatever the arrival order.
    ///
    /// | status | precedence | why |
    /// |---|---|---|
    /// | complained | 100 | the strongest signal: the recipient called it spam |
    /// | bounced | 90 | a bounce outlives a late `delivered` or an image-proxy `opened` |
    /// | unsubscribed | 85 | the recipient asked for no more mail |
    /// | failed, rejected, suppressed, cancelled | 80 | terminal without delivery |
    /// | clicked | 70 | implies opened |
    /// | opened | 60 | implies delivered |
    /// | delivered | 50 | |
    /// | dispatched | 40 | |
    /// | deferred | 30 | in retry; a later `dispatched` supersedes it |
    /// | queued | 20 | |
    /// | scheduled | 15 | |
    /// | accepted | 10 | |
    pub fn status_precedence(self) -> i16 {
        match self {
            EventType::Accepted => 10,
            EventType::Scheduled => 15,
            EventType::Queued => 20,
            EventType::Deferred => 30,
            EventType::Dispatched => 40,
            EventType::Delivered => 50,
            EventType::Opened => 60,
            EventType::Clicked => 70,
            EventType::Failed
            | EventType::Rejected
            | EventType::Suppressed
            | EventType::Cancelled => 80,
            EventType::Unsubscribed => 85,
            EventType::Bounced => 90,
            EventType::Complained => 100,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown event type {s:?}"))
    }
}

/// The summary status after a set of events: the one with the highest precedence
/// (ties keep the earlier type in lifecycle order, so the result is order-independent).
pub fn summary_status(events: impl IntoIterator<Item = EventType>) -> Option<EventType> {
    events.into_iter().max_by_key(|t| {
        (
            t.status_precedence(),
            std::cmp::Reverse(t.lifecycle_rank()),
            *t,
        )
    })
}

/// Every type, strongest first: precedence, then — for equal precedence (`failed`, `rejected`,
/// `suppressed`, `cancelled`) — the fixed order [`summary_status`] settles ties by. The
/// operator's SQL compares positions in this list, so both agree and neither depends on arrival
/// order.
pub fn summary_order() -> [EventType; 15] {
    let mut all = EventType::ALL;
    all.sort_by_key(|t| {
        std::cmp::Reverse((
            t.status_precedence(),
            std::cmp::Reverse(t.lifecycle_rank()),
            *t,
        ))
    });
    all
}

/// A sort key for an event in a timeline: `occurred_at`, lifecycle rank, sequence number.
pub fn timeline_key(
    occurred_at: chrono::DateTime<chrono::Utc>,
    event_type: EventType,
    seq: i32,
) -> (chrono::DateTime<chrono::Utc>, i16, i32) {
    (occurred_at, event_type.lifecycle_rank(), seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(serde_json::to_string(&t).ok(), Some(format!("\"{t}\"")));
        }
        assert!("sent".parse::<EventType>().is_err());
    }

    #[test]
    fn late_delivered_never_replaces_bounced_or_complained() {
        use EventType::*;
        assert_eq!(
            summary_status([Accepted, Queued, Dispatched, Bounced, Delivered]),
            Some(Bounced)
        );
        assert_eq!(
            summary_status([Complained, Delivered, Opened]),
            Some(Complained)
        );
        assert_eq!(summary_status([Clicked, Opened]), Some(Clicked));
        assert_eq!(
            summary_status([Deferred, Dispatched, Queued]),
            Some(Dispatched)
        );
        assert_eq!(summary_status([]), None);
    }

    #[test]
    fn the_summary_order_is_the_summary_status_of_every_pair() {
        let order = summary_order();
        for (i, a) in order.iter().enumerate() {
            for b in &order[i + 1..] {
                assert_eq!(summary_status([*a, *b]), Some(*a), "{a} before {b}");
                assert_eq!(summary_status([*b, *a]), Some(*a), "{a} before {b}");
                assert!(a.status_precedence() >= b.status_precedence());
            }
        }
        assert_eq!(order[0], EventType::Complained);
        assert_eq!(order[14], EventType::Accepted);
    }

    #[test]
    fn summary_is_independent_of_order() {
        use EventType::*;
        let events = [
            Accepted, Queued, Deferred, Dispatched, Delivered, Opened, Clicked,
        ];
        let forward = summary_status(events);
        let mut reversed = events;
        reversed.reverse();
        assert_eq!(forward, summary_status(reversed));
        assert_eq!(forward, Some(Clicked));
    }

    #[test]
    fn timeline_ties_follow_the_lifecycle() {
        let t =
            chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let mut keys = [
            timeline_key(t, EventType::Queued, 2),
            timeline_key(t, EventType::Accepted, 5),
        ];
        keys.sort();
        assert_eq!(keys[0].1, EventType::Accepted.lifecycle_rank());
    }
}
