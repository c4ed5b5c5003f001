//! RabbitMQ I/O shared by mailtrail's services: connecting (with heartbeats), applying the
//! topology from `mailtrail-shared`, publishing with confirms, and setting messages aside.
//!
//! The rules every service follows through this crate:
//! * every publish is persistent, `mandatory`, and awaited for its publisher confirm — an
//!   unroutable message (returned) or a nack is an error, never a silent success;
//! * many publishes are kept in flight and their confirms awaited together;
//! * setting a message aside = a confirmed publish of a copy to the dead-letter queue with the
//!   reason headers, and only then an ack of the original.

mod connect;
mod incoming;
mod publish;
mod set_aside;
mod topology;

pub use connect::{BrokerSettings, close_connection, connect, redact};
pub use incoming::{Incoming, header_i64, header_string};
pub use publish::{CONFIRM_TIMEOUT, OutgoingMessage, PublishError, Publisher, json_properties};
pub use set_aside::SetAside;
pub use topology::{declare_retry_queue, declare_topology, queue_depth};

pub use lapin;
