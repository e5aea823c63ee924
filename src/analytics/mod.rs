//! Analytics over readings: line loss of areas, alarm rules, voltage quality.

pub mod alarms;
pub mod voltage;
