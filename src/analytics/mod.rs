//! Analytics over readings: line loss of areas, alarm rules, voltage quality, daily and monthly
//! freezes with the daily loss they give (`freeze`), load curves (`curve`), collection success
//! (`collection`), and the domain
//! rules they share (`band`: the supply voltage band; `register`: a register that went down or
//! stood still while load flowed; `values`: a meter's values by quantity name, held compactly).
//!
//! Every engine here is a pure, deterministic state machine fed with readings, meter states and
//! timestamps: no clock, no I/O. They take their own settings types and return typed records
//! and events (loss intervals and verdicts, alarm changes, voltage days); they import only the
//! leaf types ([`crate::model`], [`crate::clock`]). The pipeline ([`crate::pipeline`]) feeds
//! them and stores what they decide; the uplink's contract renders it.

pub mod alarms;
pub mod band;
pub mod collection;
pub mod curve;
pub mod freeze;
pub mod loss;
pub mod register;
pub mod values;
pub mod voltage;
