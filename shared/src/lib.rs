//! mailtrail's shared vocabulary: the public mailbox contract, the internal job and event
//! contracts, the AMQP topology and header conventions, and the history rules.
//!
//! Architecture invariant: this crate does no I/O of its own. It describes; the services act.

pub mod address;
pub mod contract;
pub mod dispatch;
pub mod headers;
pub mod history;
pub mod ids;
pub mod status;
pub mod topology;
pub mod tracking;
