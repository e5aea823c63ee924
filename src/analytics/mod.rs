//! Analytics over readings: line loss of areas, alarm rules, voltage quality, and the domain
//! rules they share (`band`: the supply voltage band; `register`: a register that went down or
//! stood still while load flowed).
//!
//! Every engine here is a pure, deterministic state machine fed with readings, meter states and
//! timestamps: no clock, no I/O. [`Analytics`] (module `pipeline`) bundles the three as the
//! gateway's store writer uses them and turns what they decide into the store batch of the
//! readings that caused it (see [`crate::gateway`]).

pub mod alarms;
pub mod band;
pub mod loss;
mod pipeline;
pub mod register;
pub mod voltage;

pub use pipeline::{
    Analytics, META_ACTIVE_ALARMS, META_ALARMS, META_LAST_ALIVE, META_LOSS, META_VOLTAGE,
    SNAPSHOT_EVERY_MS, meta_rolling, topology,
};
