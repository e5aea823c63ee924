//! Buses: one task per bus owns its serial port or TCP endpoint and polls its meters one
//! transaction at a time, each meter on its own interval; meter health and offline backoff.
//!
//! A bus task never waits for the store or the broker: it hands readings to the store writer
//! over a channel and goes on polling.

mod health;
mod lock;
mod poller;

pub use health::{HealthChange, MeterHealth, OfflinePolicy, PollOutcome};
pub use lock::{DeviceLock, DeviceLockError};
pub use poller::{BusEvent, MeterStatus, run_bus};
