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
    /// A block of a meter's load curve (subject: the meter; ts: the block's start; body: the
    /// curve payload).
    Curve,
}

impl RecordKind {
    /// Every kind.
    pub const ALL: [RecordKind; 9] = [
        RecordKind::Loss,
        RecordKind::Alarm,
        RecordKind::VoltageDay,
        RecordKind::FreezeDay,
        RecordKind::FreezeMonth,
        RecordKind::Collection,
        RecordKind::LossDay,
        RecordKind::VoltageMonth,
        RecordKind::Curve,
    ];

    /// The order in which records go when the store is over its size bound (after the
    /// history, the recall copies and the unsent real-time messages): real-time kinds first,
    /// then the billing data — curves (the bulk of it) before loss intervals, and the small
    /// daily and monthly figures last.
    pub const BY_PRUNE_ORDER: [RecordKind; 9] = [
        RecordKind::Alarm,
        RecordKind::VoltageDay,
        RecordKind::Curve,
        RecordKind::Loss,
        RecordKind::VoltageMonth,
        RecordKind::Collection,
        RecordKind::LossDay,
        RecordKind::FreezeDay,
        RecordKind::FreezeMonth,
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
            RecordKind::Curve => "curve",
        }
    }

    /// Days the store keeps records of this kind at the least, whatever `[store]
    /// history_days` says (billing data: 62 days of daily freezes, 24 months of monthly ones);
    /// `None` for kinds pruned with the history.
    pub fn keep_days(self) -> Option<u32> {
        match self {
            RecordKind::FreezeDay | RecordKind::Collection | RecordKind::LossDay => Some(62),
            RecordKind::FreezeMonth | RecordKind::VoltageMonth => Some(731),
            RecordKind::Loss | RecordKind::Alarm | RecordKind::VoltageDay | RecordKind::Curve => {
                None
            }
        }
    }

    /// The kind named `name` in the `kind` column.
    pub fn from_name(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// True for the topics of billing data — freezes, load curves, loss (intervals and days) and
/// collection reports: `{prefix}/{gateway}/freeze/{meter}`, `…/curve/{meter}`,
/// `…/loss/{area}`, `…/loss/{area}/day`, `…/collection`. A store over its size bound drops
/// unsent messages of every other topic first.
pub fn is_billing_topic(topic: &str) -> bool {
    let levels: Vec<&str> = topic.rsplit('/').take(3).collect();
    match levels.as_slice() {
        ["day", _, "loss"] => true,
        // `…/{kind}/collection` is a meter, area or alarm subject named `collection`.
        ["collection", kind, parent] => {
            !matches!(
                *kind,
                "reading" | "freeze" | "curve" | "loss" | "voltage" | "meter"
            ) && !matches!(*parent, "alarm" | "voltage")
        }
        [_, kind, ..] => matches!(*kind, "freeze" | "curve" | "loss"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_topics_are_told_from_the_others() {
        for t in [
            "amr/gw/freeze/m1",
            "amr/gw/curve/m1",
            "amr/gw/loss/T1",
            "amr/gw/loss/T1/day",
            "amr/gw/collection",
            "site/a/gw/collection",
        ] {
            assert!(is_billing_topic(t), "{t}");
        }
        for t in [
            "amr/gw/reading/m1",
            "amr/gw/reading/collection",
            "amr/gw/alarm/meter_offline/collection",
            "amr/gw/alarm/line_loss/T1",
            "amr/gw/voltage/m1",
            "amr/gw/voltage/m1/month",
            "amr/gw/voltage/area/collection/month",
            "amr/gw/meter/m1/state",
            "amr/gw/command/result",
            "amr/gw/status",
        ] {
            assert!(!is_billing_topic(t), "{t}");
        }
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
    /// `analytics/curve`: the load-curve engine's snapshot.
    CurveEngine,
    /// `gateway/last_alive_ms`: ms since the epoch of the writer's last heartbeat (with every
    /// analytics tick that wrote anything, and at least every 10 s).
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
    /// `kind_seq/{kind}`: the last `kind_seq` given out to sequenced messages of one kind
    /// (`reading`, `loss`, `alarm`, ...: the contract names the kind of each message).
    KindSeq(String),
    /// `kind_seq_floor`: every kind's counter starts above it (set by a recovery that could
    /// not read the old counters, so that no `kind_seq` goes backwards).
    KindSeqFloor,
    /// `uplink/last_ack_ms`: ms since the epoch when the broker last acknowledged a message.
    LastAck,
    /// `gateway/version`: the version of the daemon that last started on this store.
    DaemonVersion,
    /// `gateway/clean_stop`: `stopped` after a clean stop, `running` while a daemon runs: a
    /// start that finds `running` follows a crash or a power loss.
    CleanStop,
    /// `{engine}/meter/{meter}`: one meter's part of an engine's snapshot (`engine`: the
    /// engine's key, e.g. `analytics/curve`), written only when that part changed; the
    /// engine's own key holds the rest.
    EngineMeter(Box<MetaKey>, String),
    /// `gateway/boot`: the boot the running daemon is in, `BOOT_ID BOOT_MS` (the kernel's
    /// boot id or `-` where it cannot be read, and the monotonic time since boot when last
    /// written), to tell a crash from a power loss.
    Boot,
    /// `uplink/reading_topic`: the topic base (`{prefix}/{gateway}`) of the reading messages
    /// stored as history rows (schema 7), from which they are rendered again.
    ReadingTopic,
}

/// The prefix of [`MetaKey::BlockLimit`] keys.
pub(crate) const BLOCK_LIMIT_PREFIX: &str = "block_limit/";
/// The prefix of [`MetaKey::KindSeq`] keys.
pub(crate) const KIND_SEQ_PREFIX: &str = "kind_seq/";
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
            MetaKey::CurveEngine => "analytics/curve".into(),
            MetaKey::LastAlive => "gateway/last_alive_ms".into(),
            MetaKey::ActiveAlarms => "alarms/active".into(),
            MetaKey::LossRolling(area) => format!("loss_rolling/{area}"),
            MetaKey::BlockLimit(meter) => format!("{BLOCK_LIMIT_PREFIX}{meter}"),
            MetaKey::RefusedBlocks(meter) => format!("{REFUSED_BLOCKS_PREFIX}{meter}"),
            MetaKey::LastSeq => "last_seq".into(),
            MetaKey::KindSeq(kind) => format!("{KIND_SEQ_PREFIX}{kind}"),
            MetaKey::KindSeqFloor => "kind_seq_floor".into(),
            MetaKey::LastAck => "uplink/last_ack_ms".into(),
            MetaKey::DaemonVersion => "gateway/version".into(),
            MetaKey::CleanStop => "gateway/clean_stop".into(),
            MetaKey::Boot => "gateway/boot".into(),
            MetaKey::ReadingTopic => "uplink/reading_topic".into(),
            MetaKey::EngineMeter(engine, meter) => format!("{}/meter/{meter}", engine.key()),
        }
    }
}

impl fmt::Display for MetaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}
