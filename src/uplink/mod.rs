//! The uplink to the headend: the whole MQTT contract (every topic and payload, rendered in
//! [`contract`] from typed records), and the publisher that drains the outbox (a row leaves
//! only on its PUBACK; unacknowledged rows are re-sent, oldest first, after every reconnect;
//! reconnects back off with jitter).

pub mod command;
pub mod contract;
pub mod desk;
pub mod publisher;
mod settings;
pub mod tls;

/// The contract's former name, kept for callers not yet moved to [`contract`].
pub use contract as topics;
pub use publisher::{UplinkState, run, run_with_commands};
pub use settings::MqttSettings;
