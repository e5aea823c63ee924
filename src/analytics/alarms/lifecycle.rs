//! The lifecycle every alarm goes through, whatever its kind: quiet → pending (the condition
//! holds, waiting `raise_after`) → active (raised) → clearing (normal, waiting `clear_after`)
//! → cleared.
//!
//! A rule judges each observation as [`Level::Violated`] (beyond the threshold),
//! [`Level::Normal`] (back beyond threshold minus hysteresis) or [`Level::Band`] (in between,
//! or not judgeable). Only an unbroken run of `Violated` raises, only an unbroken run of
//! `Normal` clears; `Band` keeps an active alarm active and breaks a pending one. So a value
//! oscillating around a threshold either never raises (its violated runs are shorter than
//! `raise_after`) or, once raised, never clears until it is really back (its excursions stay
//! inside the hysteresis band).

use super::{Alarm, AlarmChange, AlarmKind, AlarmState, Severity, SubjectKind, Transition};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};

/// A rule's judgement of one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Violated,
    Band,
    Normal,
}

/// Which way a value is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Direction {
    /// Bad above the threshold (over-voltage, overload).
    Above,
    /// Bad below the threshold (under-voltage, phase loss).
    Below,
}

/// A threshold with its hysteresis.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limit {
    pub threshold: f64,
    pub hysteresis: f64,
    pub direction: Direction,
}

impl Limit {
    pub fn above(threshold: f64, hysteresis: f64) -> Limit {
        Limit {
            threshold,
            hysteresis,
            direction: Direction::Above,
        }
    }
    pub fn below(threshold: f64, hysteresis: f64) -> Limit {
        Limit {
            threshold,
            hysteresis,
            direction: Direction::Below,
        }
    }
    /// Violated strictly beyond the threshold; normal strictly beyond threshold − hysteresis
    /// on the good side; in the band otherwise.
    pub fn level(&self, v: f64) -> Level {
        let h = self.hysteresis.abs();
        match self.direction {
            Direction::Above if v > self.threshold => Level::Violated,
            Direction::Above if v < self.threshold - h => Level::Normal,
            Direction::Below if v < self.threshold => Level::Violated,
            Direction::Below if v > self.threshold + h => Level::Normal,
            _ => Level::Band,
        }
    }
}

/// One judged observation of a (kind, subject).
#[derive(Debug, Clone)]
pub(super) struct Observation {
    pub kind: AlarmKind,
    pub subject: String,
    pub subject_kind: SubjectKind,
    pub ts_ms: i64,
    pub level: Level,
    pub value: f64,
    pub threshold: f64,
    pub direction: Direction,
    /// A JSON object.
    pub details: Value,
    /// When the condition really began, if the rule knows better than its first violated
    /// observation (e.g. when a meter was first seen offline); becomes `raised_ms`.
    pub onset_ms: Option<i64>,
}

impl Observation {
    /// An observation bad above `threshold`, without details.
    pub fn new(
        kind: AlarmKind,
        subject: impl Into<String>,
        subject_kind: SubjectKind,
        ts_ms: i64,
        level: Level,
        value: f64,
        threshold: f64,
    ) -> Observation {
        Observation {
            kind,
            subject: subject.into(),
            subject_kind,
            ts_ms,
            level,
            value,
            threshold,
            direction: Direction::Above,
            details: Value::Object(Map::new()),
            onset_ms: None,
        }
    }
    /// Bad below the threshold (the peak kept while active is then the minimum).
    pub fn below(mut self) -> Observation {
        self.direction = Direction::Below;
        self
    }
    pub fn details(mut self, details: Value) -> Observation {
        self.details = details;
        self
    }
    pub fn onset(mut self, onset_ms: Option<i64>) -> Observation {
        self.onset_ms = onset_ms;
        self
    }
}

/// How a kind is held and how bad it is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub severity: Severity,
    pub raise_after_ms: i64,
    pub clear_after_ms: i64,
}

impl Timing {
    pub fn new(severity: Severity, raise_after_s: u64, clear_after_s: u64) -> Timing {
        Timing {
            severity,
            raise_after_ms: raise_after_s as i64 * 1000,
            clear_after_ms: clear_after_s as i64 * 1000,
        }
    }
}

/// An alarm that stands, with what its clearing needs; this is what survives a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlarm {
    pub alarm: Alarm,
    /// Onset of the current run of normal observations, if one is under way.
    pub clearing_since_ms: Option<i64>,
    /// The worst value seen since the condition began (pending run included).
    pub peak: f64,
    direction: Direction,
}

#[derive(Debug, Clone)]
enum Tracker {
    Pending { since_ms: i64, peak: f64 },
    Active(ActiveAlarm),
}

/// Every tracked (kind, subject) and the recent history of events.
#[derive(Debug, Clone)]
pub(super) struct Lifecycle {
    trackers: BTreeMap<(AlarmKind, String), Tracker>,
    history: VecDeque<AlarmChange>,
    history_len: usize,
}

impl Lifecycle {
    pub fn new(history_len: usize) -> Lifecycle {
        Lifecycle {
            trackers: BTreeMap::new(),
            history: VecDeque::new(),
            history_len,
        }
    }

    /// Feeds one observation; returns the event it causes, if any.
    pub fn observe(&mut self, obs: Observation, timing: Timing) -> Option<AlarmChange> {
        let key = (obs.kind, obs.subject.clone());
        let tracker = self.trackers.get_mut(&key);
        let change = match (tracker, obs.level) {
            (None, Level::Violated) => {
                if timing.raise_after_ms <= 0 {
                    let peak = obs.value;
                    Some(self.raise(key, obs.ts_ms, peak, obs, timing))
                } else {
                    self.trackers.insert(
                        key,
                        Tracker::Pending {
                            since_ms: obs.ts_ms,
                            peak: obs.value,
                        },
                    );
                    None
                }
            }
            (None, _) => None,
            (Some(Tracker::Pending { since_ms, peak }), Level::Violated) => {
                let since = *since_ms;
                *peak = worse(obs.direction, *peak, obs.value);
                let peak = *peak;
                if obs.ts_ms - since >= timing.raise_after_ms {
                    Some(self.raise(key, since, peak, obs, timing))
                } else {
                    None
                }
            }
            (Some(Tracker::Pending { .. }), _) => {
                self.trackers.remove(&key);
                None
            }
            (Some(Tracker::Active(a)), Level::Violated | Level::Band) => {
                a.clearing_since_ms = None;
                a.peak = worse(a.direction, a.peak, obs.value);
                None
            }
            (Some(Tracker::Active(a)), Level::Normal) => {
                let since = *a.clearing_since_ms.get_or_insert(obs.ts_ms);
                if obs.ts_ms - since >= timing.clear_after_ms {
                    Some(self.clear(key, since, obs))
                } else {
                    None
                }
            }
        };
        if let Some(c) = &change {
            self.remember(c.clone());
        }
        change
    }

    /// Forgets a pending condition (its hold starts again at the next violated observation);
    /// an active alarm is left alone.
    pub fn suppress(&mut self, kind: AlarmKind, subject: &str) {
        let key = (kind, subject.to_string());
        if matches!(self.trackers.get(&key), Some(Tracker::Pending { .. })) {
            self.trackers.remove(&key);
        }
    }

    /// True when (kind, subject) is pending or active.
    pub fn is_tracked(&self, kind: AlarmKind, subject: &str) -> bool {
        self.trackers.contains_key(&(kind, subject.to_string()))
    }

    pub fn is_active(&self, kind: AlarmKind, subject: &str) -> bool {
        matches!(
            self.trackers.get(&(kind, subject.to_string())),
            Some(Tracker::Active(_))
        )
    }

    /// Every standing alarm, ordered by (kind, subject).
    pub fn active(&self) -> impl Iterator<Item = &ActiveAlarm> {
        self.trackers.values().filter_map(|t| match t {
            Tracker::Active(a) => Some(a),
            Tracker::Pending { .. } => None,
        })
    }

    pub fn history(&self) -> impl Iterator<Item = &AlarmChange> {
        self.history.iter()
    }

    /// Replaces the standing alarms and the history with saved ones; pending conditions are
    /// dropped (their hold starts again).
    pub fn restore(&mut self, active: Vec<ActiveAlarm>, history: Vec<AlarmChange>) {
        self.trackers.clear();
        for a in active {
            let key = (a.alarm.kind, a.alarm.subject.clone());
            self.trackers.insert(key, Tracker::Active(a));
        }
        self.history.clear();
        for c in history {
            self.remember(c);
        }
    }

    /// Keeps an event that did not go through a tracker (e.g. the gateway's power off).
    pub fn remember(&mut self, change: AlarmChange) {
        if self.history_len == 0 {
            return;
        }
        while self.history.len() >= self.history_len {
            self.history.pop_front();
        }
        self.history.push_back(change);
    }

    fn raise(
        &mut self,
        key: (AlarmKind, String),
        since_ms: i64,
        peak: f64,
        obs: Observation,
        timing: Timing,
    ) -> AlarmChange {
        let alarm = Alarm {
            id: format!("{}/{}", obs.kind.as_str(), obs.subject),
            kind: obs.kind,
            subject: obs.subject,
            subject_kind: obs.subject_kind,
            severity: timing.severity,
            state: AlarmState::Active,
            raised_ms: obs.onset_ms.map_or(since_ms, |t| t.min(since_ms)),
            cleared_ms: None,
            value: obs.value,
            threshold: obs.threshold,
            details: obs.details,
        };
        self.trackers.insert(
            key,
            Tracker::Active(ActiveAlarm {
                alarm: alarm.clone(),
                clearing_since_ms: None,
                peak,
                direction: obs.direction,
            }),
        );
        AlarmChange {
            alarm,
            transition: Transition::Raised,
            ts_ms: obs.ts_ms,
        }
    }

    fn clear(&mut self, key: (AlarmKind, String), since_ms: i64, obs: Observation) -> AlarmChange {
        let Some(Tracker::Active(a)) = self.trackers.remove(&key) else {
            unreachable!("clear is only called for an active tracker")
        };
        let mut alarm = a.alarm;
        let mut details = match alarm.details {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        if let Value::Object(fresh) = obs.details {
            details.extend(fresh);
        }
        details.insert("raised_value".into(), json_value(alarm.value));
        details.insert("peak".into(), json_value(a.peak));
        alarm.details = Value::Object(details);
        alarm.state = AlarmState::Cleared;
        alarm.cleared_ms = Some(since_ms);
        alarm.value = obs.value;
        AlarmChange {
            alarm,
            transition: Transition::Cleared,
            ts_ms: obs.ts_ms,
        }
    }
}

fn worse(direction: Direction, a: f64, b: f64) -> f64 {
    match direction {
        Direction::Above => a.max(b),
        Direction::Below => a.min(b),
    }
}

fn json_value(v: f64) -> Value {
    crate::model::json_number(v)
}
