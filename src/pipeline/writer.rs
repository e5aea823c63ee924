//! The store writer's state: folds bus events and ticks into store batches.

use super::{Analytics, PipelineSettings};
use crate::clock::rfc3339_ms;
use crate::model::{BusEvent, Learned, MeterId};
use crate::store::{Batch, MetaKey, MeterState, Recovery, Store, StoreError};
use crate::uplink::contract::{Topics, mark_clock_unsynchronized, meter_state_message};
use std::collections::BTreeMap;

/// The store writer's state: the analytics and what it knows of the meters. Pure: every
/// step takes the time, so tests drive it with a real store and synthetic events.
#[derive(Debug)]
pub struct Writer {
    settings: PipelineSettings,
    topics: Topics,
    analytics: Analytics,
    online: BTreeMap<String, bool>,
    /// The clock is not sane: reading messages are marked `"clock": "unsynchronized"`.
    clock_unsynchronized: bool,
}

/// What one step of the writer produced.
#[derive(Debug, Default)]
pub struct Fold {
    /// Commit this in one transaction.
    pub batch: Batch,
    /// What was learned about meters (block limits, refused blocks), to remember in the store.
    pub learned: Vec<(MeterId, Learned)>,
}

impl Writer {
    /// The writer of `settings`, its analytics restored from `store`'s snapshots, and the
    /// batch of the start to commit first: the power-off event, the active alarms, the
    /// snapshots and heartbeat, and the retained state of every configured meter as last
    /// stored (a broker restarted without persistence has lost them; they are marked as from
    /// before the restart until the buses report anew).
    pub fn start(
        settings: &PipelineSettings,
        topics: Topics,
        store: &Store,
        now_ms: i64,
    ) -> Result<(Writer, Batch), StoreError> {
        let mut analytics = Analytics::new(settings, topics.clone());
        let mut meta = BTreeMap::new();
        let mut saved_parts = Vec::new();
        for key in [
            MetaKey::LossEngine,
            MetaKey::AlarmEngine,
            MetaKey::VoltageEngine,
            MetaKey::FreezeEngine,
            MetaKey::CurveEngine,
            MetaKey::LastAlive,
        ] {
            if let Some(v) = store.meta(&key)? {
                let v = match super::analytics::meter_parts(&key) {
                    Some(_) => {
                        let parts = store.engine_meters(&key)?;
                        saved_parts.extend(parts.iter().map(|(meter, _)| {
                            MetaKey::EngineMeter(Box::new(key.clone()), meter.clone())
                        }));
                        super::analytics::join_meter_parts(&key, &v, parts)
                    }
                    None => v,
                };
                meta.insert(key, v);
            }
        }
        analytics.saved_parts(saved_parts);
        let mut batch = analytics.start(|k| meta.get(k).cloned(), now_ms);
        for (meter, state) in store.meter_states()? {
            if settings.models.contains_key(&meter) {
                let ratios = settings.ratios.get(&meter).copied();
                batch
                    .messages
                    .push(meter_state_message(&topics, &state, ratios));
            }
        }
        let writer = Writer {
            settings: settings.clone(),
            topics,
            analytics,
            online: BTreeMap::new(),
            clock_unsynchronized: false,
        };
        Ok((writer, batch))
    }

    /// Folds `events` and a tick at `now_ms` into one batch.
    pub fn fold(&mut self, events: impl IntoIterator<Item = BusEvent>, now_ms: i64) -> Fold {
        let mut fold = self.fold_events(events);
        self.analytics.on_tick(now_ms, &mut fold.batch);
        fold
    }

    /// Folds `events` into one batch, without a tick: what the readings alone write.
    pub fn fold_events(&mut self, events: impl IntoIterator<Item = BusEvent>) -> Fold {
        let mut fold = Fold::default();
        let batch = &mut fold.batch;
        for ev in events {
            match ev {
                BusEvent::Reading(r) => {
                    let quality = self.analytics.on_reading(&r, batch);
                    let mut message = self.topics.reading_message(&r);
                    if self.clock_unsynchronized {
                        mark_clock_unsynchronized(&mut message);
                    }
                    // Held as text until the commit: a reading's tree is about 3 kB, its text
                    // a quarter of it, and a burst holds 256 of them.
                    message.payload.compact();
                    batch.messages.push(message);
                    batch.readings.push(r);
                    batch.reading_quality.push(quality);
                }
                BusEvent::MeterState(s) => {
                    self.online
                        .insert(s.meter.clone(), s.health.online == Some(true));
                    self.analytics.on_meter_status(&s);
                    let model = self.settings.models.get(&s.meter).map(String::as_str);
                    let state = MeterState::of(&s, model);
                    batch.messages.push(meter_state_message(
                        &self.topics,
                        &state,
                        self.settings.ratios.get(&s.meter).copied(),
                    ));
                    batch.meter_states.push(state);
                }
                BusEvent::Learned { meter, learned } => fold.learned.push((meter, learned)),
                BusEvent::MeterFreeze {
                    meter,
                    ts_ms,
                    values,
                } => self.analytics.on_meter_freeze(&meter, ts_ms, values),
            }
        }
        fold
    }

    /// A tick at `now_ms` in a batch of its own: what the engines emit for the readings folded
    /// before (intervals, blocks, alarms), the snapshots and the heartbeat.
    pub fn tick(&mut self, now_ms: i64) -> Batch {
        let mut batch = Batch::default();
        self.analytics.on_tick(now_ms, &mut batch);
        batch
    }

    /// The store was damaged and replaced: the `store_recovered` event, naming where the old
    /// file is and what was carried over, and every snapshot (the fresh store may lack them).
    pub fn store_recovered(&mut self, r: &Recovery, now_ms: i64) -> Batch {
        let mut batch = Batch::default();
        let details = serde_json::json!({
            "cause": r.cause,
            "moved_to": r.moved_to.display().to_string(),
            "recovered_at": rfc3339_ms(r.at_ms),
            "messages_salvaged": r.messages_salvaged,
            "meta_salvaged": r.meta_salvaged,
            "meter_states_salvaged": r.meter_states_salvaged,
            "seq_from": r.last_seq + 1,
            "seq_source": r.seq_source.as_str(),
        });
        self.analytics
            .on_store_recovered(details, now_ms, &mut batch);
        self.analytics.forget_written();
        self.analytics.snapshot_all(now_ms, &mut batch);
        batch
    }

    /// The gateway's clock became sane or stopped being so: from now on reading messages are
    /// marked (or no longer) and `clock_unsynchronized` is raised or cleared, in a batch of its
    /// own (`details`: the clock's figures).
    pub fn clock(&mut self, sane: bool, details: serde_json::Value, now_ms: i64) -> Batch {
        self.clock_unsynchronized = !sane;
        let mut batch = Batch::default();
        self.analytics.on_clock(sane, details, now_ms, &mut batch);
        batch
    }

    /// The store's filesystem is full (`full`) or has room again: `disk_full` raised or
    /// cleared, in a batch of its own (`details`: what the condition cost so far).
    pub fn disk_full(&mut self, full: bool, details: serde_json::Value, now_ms: i64) -> Batch {
        let mut batch = Batch::default();
        self.analytics
            .on_disk_full(full, details, now_ms, &mut batch);
        batch
    }

    /// A certificate of the MQTT link expires soon (`days_left`) or no longer does:
    /// `certificate_expiry` raised or cleared for `subject` (its `[mqtt]` key), in a batch of
    /// its own.
    pub fn certificate(
        &mut self,
        subject: &str,
        days_left: Option<i64>,
        details: serde_json::Value,
        now_ms: i64,
    ) -> Batch {
        let mut batch = Batch::default();
        self.analytics
            .on_certificate(subject, days_left, details, now_ms, &mut batch);
        batch
    }

    /// The last batch before stopping: every snapshot and the heartbeat.
    pub fn finish(&mut self, now_ms: i64) -> Batch {
        let mut batch = Batch::default();
        self.analytics.snapshot_all(now_ms, &mut batch);
        batch
    }

    /// The analytics, for inspection.
    pub fn analytics(&self) -> &Analytics {
        &self.analytics
    }

    /// Meters configured.
    pub fn meters_total(&self) -> usize {
        self.settings.models.len()
    }

    /// Meters last reported online.
    pub fn meters_online(&self) -> usize {
        self.online.values().filter(|v| **v).count()
    }
}

#[cfg(test)]
mod tests {
    use crate::model::Reading;
    use crate::store::{KIND_SEQ_FIELD, READING_KIND, reading_payload};
    use crate::uplink::contract::{Topics, mark_clock_unsynchronized};
    use serde_json::json;

    /// The store renders a reading's message again from its history row (schema 7): it must
    /// be the contract's payload, field for field and number for number.
    #[test]
    fn the_store_renders_a_reading_as_the_contract_does() {
        let r = Reading {
            meter: "m1".into(),
            ts_ms: 1_764_000_000_123,
            values: [
                ("energy_import_kwh".to_string(), 1_234.567_890_123),
                ("voltage_l1_v".to_string(), 229.7),
                ("current_l1_a".to_string(), f64::NAN),
                ("power_factor".to_string(), -0.000_000_4),
            ]
            .into(),
        };
        let mut message = Topics::new("amr", "gw").reading_message(&r);
        let mut expected = reading_payload(&r);
        expected.insert(KIND_SEQ_FIELD.into(), json!(READING_KIND));
        assert_eq!(message.payload, serde_json::Value::Object(expected.clone()));
        assert_eq!(message.topic, "amr/gw/reading/m1");
        mark_clock_unsynchronized(&mut message);
        expected.insert("clock".into(), json!("unsynchronized"));
        assert_eq!(message.payload, serde_json::Value::Object(expected));
    }
}
