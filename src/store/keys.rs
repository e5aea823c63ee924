//! The names the store files things under, defined once: the kinds of [`Record`](super::Record)
//! and the keys of the `meta` table. The writer (`crate::pipeline`) stores under them and the
//! field tool `status` reads under them, so neither spells a name the other could miss.

use std::fmt;

/// What a row of the `record` table holds (its `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A closed loss interval of an area (subject: the area; body: the loss payload).
    Loss,
    /// An alarm raised or cleared (subject: the alarm's subject; body: the event payload).
    Alarm,
    /// A closed voltage-quality day of a meter's phase (subject: the meter; body: the day
    /// payload).
    VoltageDay,
    /// A month of voltage quality of a meter's phase, or of an area (subject: the meter or
    /// the area; ts: the month's start; body: the month payload).
    VoltageMonth,
    /// A meter's daily freeze (subject: the meter; ts: the freeze moment; body: the freeze
    /// payload). Kept at least [`RecordKind::keep_days`].
    FreezeDay,
    /// A meter's monthly freeze (as [`RecordKind::FreezeDay`]).
    FreezeMonth,
    /// A day's collection success (subject: the gateway; ts: the day's midnight; body: the
    /// collection payload).
    Collection,
    /// An area's daily line loss from the freezes (subject: the area; ts: the day's end;
    /// body: the payload).
    LossDay,
}

impl RecordKind {
    /// Every kind.
    pub const ALL: [RecordKind; 8] = [
        RecordKind::Loss,
        RecordKind::Alarm,
        RecordKind::VoltageDay,
        RecordKind::FreezeDay,
        RecordKind::FreezeMonth,
        RecordKind::Collection,
        RecordKind::LossDay,
        RecordKind::VoltageMonth,
    ];

    /// The name in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Loss => "loss",
            RecordKind::Alarm => "alarm",
            RecordKind::VoltageDay => "voltage_day",
            RecordKind::FreezeDay => "freeze_day",
            RecordKind::FreezeMonth => "freeze_month",
            RecordKind::Collection => "collection",
            RecordKind::LossDay => "loss_day",
            RecordKind::VoltageMonth => "voltage_month",
        }
    }

    /// Days the store keeps records of this kind at the least, whatever `[store]
    /// history_days` says (billing data: 62 days of daily freezes, 24 months of monthly ones);
    /// `None` for kinds pruned with the history.
    pub fn keep_days(self) -> Option<u32> {
        match self {
            RecordKind::FreezeDay | RecordKind::Collection | RecordKind::LossDay => Some(62),
            RecordKind::FreezeMonth | RecordKind::VoltageMonth => Some(731),
            RecordKind::Loss | RecordKind::Alarm | RecordKind::VoltageDay => None,
        }
    }

    /// The kind named `name` in the `kind` column.
    pub fn from_name(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key of the `meta` table: engine snapshots, figures `status` shows, the heartbeat, learned
/// limits and the `seq` counter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetaKey {
    /// `analytics/loss`: the loss engine's snapshot with the standing verdicts.
    LossEngine,
    /// `analytics/alarms`: the alarm engine's snapshot.
    AlarmEngine,
    /// `analytics/voltage`: the voltage-quality snapshot.
    VoltageEngine,
    /// `analytics/freeze`: the freeze engine's snapshot.
    FreezeEngine,
    /// `gateway/last_alive_ms`: ms since the epoch of the last committed batch.
    LastAlive,
    /// `alarms/active`: the active alarms (JSON array, as in the retained `alarm/active`
    /// message).
    ActiveAlarms,
    /// `loss_rolling/{area}`: an area's rolling loss figure (JSON object).
    LossRolling(String),
    /// `block_limit/{meter}`: the most registers a meter answers in one read.
    BlockLimit(String),
    /// `refused_blocks/{meter}`: the block data identifiers a DL/T 645 meter refuses,
    /// comma-separated (`0001FF00,0201FF00`).
    RefusedBlocks(String),
    /// `last_seq`: the last `seq` given out.
    LastSeq,
    /// `uplink/last_ack_ms`: ms since the epoch when the broker last acknowledged a message.
    LastAck,
    /// `gateway/version`: the version of the daemon that last started on this store.
    DaemonVersion,
    /// `gateway/clean_stop`: `stopped` after a clean stop, `running` while a daemon runs: a
    /// start that finds `running` follows a crash or a power loss.
    CleanStop,
    /// `gateway/boot`: the boot the running daemon is in, `BOOT_ID BOOT_MS` (the kernel's
    /// boot id or `-` where it cannot be read, and the monotonic time since boot when last
    /// written), to tell a crash from a power loss.
    Boot,
}

/// The prefix of [`MetaKey::BlockLimit`] keys.
pub(crate) const BLOCK_LIMIT_PREFIX: &str = "block_limit/";
/// The prefix of [`MetaKey::RefusedBlocks`] keys.
pub(crate) const REFUSED_BLOCKS_PREFIX: &str = "refused_blocks/";

impl MetaKey {
    /// The key as stored.
    pub fn key(&self) -> String {
        match self {
            MetaKey::LossEngine => "analytics/loss".into(),
            MetaKey::AlarmEngine => "analytics/alarms".into(),
            MetaKey::VoltageEngine => "analytics/voltage".into(),
            MetaKey::FreezeEngine => "analytics/freeze".into(),
            MetaKey::LastAlive => "gateway/last_alive_ms".into(),
            MetaKey::ActiveAlarms => "alarms/active".into(),
            MetaKey::LossRolling(area) => format!("loss_rolling/{area}"),
            MetaKey::BlockLimit(meter) => format!("{BLOCK_LIMIT_PREFIX}{meter}"),
            MetaKey::RefusedBlocks(meter) => format!("{REFUSED_BLOCKS_PREFIX}{meter}"),
            MetaKey::LastSeq => "last_seq".into(),
            MetaKey::LastAck => "uplink/last_ack_ms".into(),
            MetaKey::DaemonVersion => "gateway/version".into(),
            MetaKey::CleanStop => "gateway/clean_stop".into(),
            MetaKey::Boot => "gateway/boot".into(),
        }
    }
}

impl fmt::Display for MetaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}
