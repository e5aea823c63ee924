//! The pipeline — the store writer's logic: the one place that knows both the analytics
//! engines and the store's batches.
//!
//! Bus events (readings, meter states, learned limits) go in; store batches come out, each
//! holding the history rows, the outbox messages (rendered by the uplink's contract), the
//! records and the engines' snapshots of one step, to be committed in one transaction:
//!
//! - [`Writer`] folds a burst of bus events, a tick, or both into one batch ([`Fold`]);
//! - [`Held`] keeps, bounded, what the store refused until it takes it;
//! - [`Analytics`] feeds the line-loss, alarm, voltage-quality and freeze engines and turns what
//!   they decide into the batch (with the day's collection report and daily loss), each
//!   engine's state saved one meter's part at a time;
//! - `parts` joins an engine's saved parts into its whole snapshot at start.
//!
//! It is pure like the engines: every step takes the time, so tests drive it with a real store
//! and synthetic events. Its settings ([`PipelineSettings`]) are built by the configuration
//! loader; the async loop that commits its batches is the gateway's.

mod analytics;
mod held;
mod parts;
mod writer;

pub use analytics::{
    Analytics, CURVE_BLOCKS_PER_TICK, PARTS_EVERY_MS, SNAPSHOT_EVERY_MS, VOLTAGE_METERS_PER_TICK,
};
pub use held::{Held, MAX_HELD_VALUES, Shed};
pub use writer::{Fold, Writer};

use crate::analytics::alarms::{AlarmSettings, Topology};
use crate::analytics::collection::{CollectionGroup, CollectionSettings};
use crate::analytics::freeze::FreezeSettings;
use crate::analytics::loss::{AreaSpec, LossSettings};
use crate::analytics::voltage::VoltageQualitySettings;
use std::collections::BTreeMap;

/// What the pipeline needs to know of the gateway: the areas, the meters as the alarm engine
/// sees them, every engine's settings and each meter's model name.
#[derive(Debug, Clone, Default)]
pub struct PipelineSettings {
    /// The areas of the loss engine, in configuration order.
    pub areas: Vec<AreaSpec>,
    /// The meters, areas and gateway id as the alarm engine sees them.
    pub topology: Topology,
    pub loss: LossSettings,
    pub alarms: AlarmSettings,
    pub voltage: VoltageQualitySettings,
    /// The configured model of every meter, by meter id (also: which meters are configured).
    pub models: BTreeMap<String, String>,
    /// The CT and PT ratios of every meter, by meter id (carried in its state message).
    pub ratios: BTreeMap<String, crate::model::Ratios>,
    /// Daily and monthly freezes of every configured meter (its zone and decision time).
    pub freeze: FreezeSettings,
    /// Load curves of every configured meter (its zone).
    pub curve: crate::analytics::curve::CurveSettings,
    /// When the day's collection report goes out.
    pub collection: CollectionSettings,
    /// The buses and areas the collection success is reported for, in configuration order.
    pub collection_groups: Vec<CollectionGroup>,
}
