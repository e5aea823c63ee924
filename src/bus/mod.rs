//! Buses: one task per bus owns its serial port or TCP endpoint and polls its meters one
//! transaction at a time, each meter on its own interval; meter health and offline backoff.
//!
//! Dead meters are probed with growing intervals and, through the bus's [`ProbeBudget`], cost
//! it at most a bounded share of its time. A meter's blocks are read energy first (the line
//! loss needs energy; instantaneous values can wait for the next poll).
//!
//! A bus task never waits for the store or the broker: it hands readings to the store writer
//! over a channel and goes on polling.

mod budget;
mod health;
mod lock;
mod poller;

pub use crate::model::{HealthChange, MeterHealth, MeterStatus, PollOutcome};
pub use budget::ProbeBudget;
pub use health::OfflinePolicy;
pub use lock::{DeviceLock, DeviceLockError};
pub use poller::{BusEvent, plan_meter, run_bus};
