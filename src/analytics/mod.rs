//! Analytics over readings: line loss of areas, alarm rules, voltage quality.
//!
//! Every engine here is a pure, deterministic state machine fed with readings, meter states and
//! timestamps: no clock, no I/O. The gateway's store writer feeds them and commits what they
//! return in the same transaction as the readings (see [`crate::gateway`]).

pub mod alarms;
pub mod loss;
pub mod voltage;
