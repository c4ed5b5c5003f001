//! The operator's integration tests: real PostgreSQL and RabbitMQ, a database and a queue prefix
//! per test, the real operator binary where a process must die.

mod api;
mod audit;
mod bad_input_admin;
mod browser;
mod crash;
mod dead_letters;
mod dead_letters_live;
mod examples;
mod fair_dispatch;
mod fair_dispatch_live;
mod flight;
mod helpers;
mod hostile;
mod intake;
mod metrics;
mod openapi;
mod reconnect;
mod retention;
mod scheduling;
mod schemathesis;
mod search;
mod session;
mod several_operators;
mod shutdown;
mod stats;
mod status_events;
mod suppressions;
mod suppressions_live;
mod tenant_binding;
mod trace_context;
mod tracking;
mod webhooks;
