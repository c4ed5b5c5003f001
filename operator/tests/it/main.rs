//! The operator's integration tests: real PostgreSQL and RabbitMQ, a database and a queue prefix
//! per test, the real operator binary where a process must die.

mod api;
mod crash;
mod examples;
mod fair_dispatch;
mod flight;
mod helpers;
mod hostile;
mod intake;
mod reconnect;
mod retention;
mod scheduling;
mod shutdown;
mod suppressions;
mod tracking;
mod webhooks;
