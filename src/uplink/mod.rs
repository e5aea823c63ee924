//! The uplink to the headend: MQTT topics and payloads of the contract, and the publisher that
//! drains the outbox (a row leaves only on its PUBACK; unacknowledged rows are re-sent, oldest
//! first, after every reconnect; reconnects back off with jitter).

pub mod command;
pub mod publisher;
pub mod topics;

pub use publisher::{UplinkState, run};
