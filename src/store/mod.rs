//! The store: one SQLite database (WAL) in `data_dir` holding the reading history and the
//! outbox — everything that must reach the headend, written before it is sent.
//!
//! A poll batch (its history rows and its outbox messages) is one transaction, so after a
//! SIGKILL or power loss either all of it is there or none. The outbox assigns `seq`, which
//! increases by one for every sequenced message and survives restarts. A row leaves the outbox
//! only when the uplink reports its PUBACK.
//!
//! It also keeps the records `status` shows (loss intervals, alarm events, voltage days, by
//! [`RecordKind`]), each meter's last state ([`MeterState`]) and the `meta` table of engine
//! snapshots and figures (by [`MetaKey`]): the names are defined here, once.
//!
//! Every message is stored once: a reading as its history row (`reading_message`, values
//! encoded by `reading_values`), a kept message as its record row (`record_message`), any
//! other sequenced message as its recall copy in `published`; the outbox row names it by seq.
//! Until the commit a batch holds the payloads of readings and kept messages as compact text
//! ([`Payload`]), not as JSON trees.

mod commands;
mod keys;
mod lock;
mod meter_state;
mod payload;
mod prune;
mod reading_message;
mod reading_values;
mod record_message;
mod recovery;
mod reserve;
mod schema;
mod shared;
#[cfg(test)]
mod tests;

pub use commands::{CommandAudit, Published};
pub use keys::{MetaKey, RecordKind, is_billing_topic};
pub use lock::{LOCK_FILE, StoreLock, StoreLockError};
pub use meter_state::{ItemsState, MeterState};
pub use payload::Payload;
pub use prune::{Pruning, STEP_ROWS, VACUUM_PAGES};
pub use reading_message::{READING_KIND, reading_payload};
pub use recovery::{Recovery, SeqSource, check_data_dir};
pub use reserve::{RESERVE_FILE, Reserve, filesystem_space};
pub use shared::{SharedStore, open_shared, with_store};

use crate::clock::now_ms;
use crate::model::{Learned, Reading};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How much the store keeps: `[store]` of the configuration.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Reading history older than this is deleted (default 35 days).
    pub history_days: u32,
    /// Upper bound on the store's size in MiB (default 1024). When reached, the oldest history
    /// goes first, then the oldest unsent outbox rows, and the gateway logs what it dropped.
    pub max_size_mb: u64,
    /// Readings that arrive within this many milliseconds are committed in one transaction
    /// (default [`COMMIT_WINDOW_MS`]; 0: every bus event in its own). A power cut can cost at
    /// most one window's readings.
    pub commit_window_ms: u64,
}

/// The default `[store] commit_window_ms`.
pub const COMMIT_WINDOW_MS: u64 = 10_000;

/// A message to publish, before the store gives it its place in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    /// JSON object; when `sequenced`, the store inserts `"seq"` into it.
    pub payload: Payload,
    pub qos: u8,
    pub retain: bool,
    pub sequenced: bool,
}

/// What one poll cycle (or one analytics step) produces, committed in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub readings: Vec<Reading>,
    /// Quality flag per reading (same order as `readings`; empty means all 0 = good). See
    /// `analytics::loss` for the values.
    pub reading_quality: Vec<u8>,
    pub messages: Vec<Message>,
    /// Records kept for `status` and history: loss intervals, alarm events, voltage days.
    pub records: Vec<Record>,
    /// `meta` keys set in the same transaction (analytics state, learned limits, heartbeat).
    pub meta: Vec<(MetaKey, String)>,
    /// Meter states remembered for restarts and `status`.
    pub meter_states: Vec<MeterState>,
    /// Later decisions about readings already in the history (this batch's included): set
    /// the quality flag of the rows of `meter` at `ts_ms`. Applied after the readings.
    pub quality_revisions: Vec<QualityRevision>,
}

/// A new quality flag for the history rows of one meter at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityRevision {
    pub meter: String,
    pub ts_ms: i64,
    /// The flag, as in `Batch::reading_quality`.
    pub quality: u8,
}

impl Batch {
    /// Adds a message for the headend that the store also keeps as a record of `kind` about
    /// `subject` at `ts_ms` (body = the message's payload), so `status` and recall find it
    /// later.
    /// Both are held as compact text until the commit ([`Payload::compact`]).
    pub fn push_kept(&mut self, kind: RecordKind, subject: &str, ts_ms: i64, mut m: Message) {
        m.payload.compact();
        self.records.push(Record {
            kind,
            subject: subject.into(),
            ts_ms,
            body: m.payload.clone(),
        });
        self.messages.push(m);
    }

    /// Appends `later` to this batch (used to retry a batch the store refused together with
    /// the next one). Quality flags stay aligned with their readings.
    pub fn append(&mut self, mut later: Batch) {
        if !later.reading_quality.is_empty() || !self.reading_quality.is_empty() {
            self.reading_quality.resize(self.readings.len(), 0);
            later.reading_quality.resize(later.readings.len(), 0);
        }
        self.readings.append(&mut later.readings);
        self.reading_quality.append(&mut later.reading_quality);
        self.messages.append(&mut later.messages);
        self.records.append(&mut later.records);
        self.meta.append(&mut later.meta);
        self.meter_states.append(&mut later.meter_states);
        self.quality_revisions.append(&mut later.quality_revisions);
    }

    /// True when there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
            && self.messages.is_empty()
            && self.records.is_empty()
            && self.meta.is_empty()
            && self.meter_states.is_empty()
            && self.quality_revisions.is_empty()
    }
}

/// A record of an analytics result kept in the store (`record` table), queryable by kind,
/// subject and time, pruned with the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: RecordKind,
    /// Area, meter, bus or gateway id.
    pub subject: String,
    pub ts_ms: i64,
    pub body: Payload,
}

/// A row of the outbox, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Row id: the order of publication.
    pub id: i64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub created_ms: i64,
}

/// Why a store operation failed; every variant names the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLITE_FULL: the disk (or the database's page limit) is full. The transaction was
    /// rolled back; nothing of it was stored.
    #[error(
        "store {path}: disk full, nothing of this batch was stored; free space on the data_dir \
         filesystem or lower [store] max_size_mb"
    )]
    Full { path: String },
    #[error("store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {path}: {message}")]
    Other { path: String, message: String },
    /// The file at the store's place is not the gateway's store (another program's SQLite
    /// database, or not SQLite at all). It was not touched.
    #[error(
        "{path} is not an amr-gateway store ({what}); it was left untouched. Move it away, or \
         give the gateway its own [gateway] data_dir"
    )]
    Foreign { path: String, what: String },
    /// The data directory cannot be written: the store cannot live there.
    #[error("data_dir {path} cannot be used: {cause}; {remedy}")]
    DataDir {
        path: String,
        cause: String,
        remedy: String,
    },
}

/// What a [`Store::commit`] stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitReport {
    /// History rows inserted.
    pub readings: usize,
    /// Outbox row ids, in the order of `Batch::messages`.
    pub outbox_ids: Vec<i64>,
    /// `seq` of the first and last sequenced message of the batch, if it had any.
    pub seq_range: Option<(u64, u64)>,
}

/// What a [`Store::prune`] deleted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruneReport {
    /// History rows older than `history_days`.
    pub expired_readings: usize,
    /// History rows deleted, oldest first, to bring the store under `max_size_mb`.
    pub evicted_readings: usize,
    /// Unsent outbox rows deleted, oldest first, because the store was still over
    /// `max_size_mb` with no history left: real-time messages first, billing data (freezes,
    /// curves, loss, collection) only when nothing else is left. The caller should log a
    /// warning.
    pub dropped_messages: usize,
    /// Records (kept for recall and `status`) deleted to bring the store under
    /// `max_size_mb`, after the unsent real-time messages. The caller should log a warning.
    pub dropped_records: usize,
    /// Used size after pruning, in bytes (`(page_count - freelist_count) * page_size`).
    pub used_bytes: u64,
}

/// The gateway's SQLite database: reading history, outbox, `seq` counter, meter state.
///
/// One `Store` owns one connection; share it between tasks as a [`SharedStore`].
pub struct Store {
    conn: Connection,
    path: PathBuf,
    cfg: StoreSettings,
    /// The highest outbox id this connection gave out (the floor for a recovery).
    last_outbox_id: i64,
    /// The last `seq` this connection read or gave out (None when the counter was unreadable
    /// at open): the floor for a recovery while running.
    last_seq_given: Option<u64>,
    /// The last `kind_seq` this connection gave out per kind: with `last_seq_given`, the
    /// floor for a recovery while running.
    kind_seq_given: BTreeMap<String, u64>,
    /// History layout ids by their names (a JSON array of sorted quantity names), as committed.
    layouts: std::collections::HashMap<String, i64>,
    /// The topic base of reading messages stored as history rows ([`MetaKey::ReadingTopic`]),
    /// as committed.
    reading_topic: Option<String>,
    /// Set when a statement reported damage ("malformed", "not a database"): the writer
    /// moves the file aside at its next step (see [`Store::damage_seen`]).
    damage: std::cell::RefCell<Option<String>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// How long a statement waits for a lock held by another connection (e.g. `amr-gateway status`
/// reading the same file) before failing.
/// The page size of a new store's file. Every commit writes each page it touches whole into
/// the WAL (and again into the file at the checkpoint), however little changed in it: with a
/// commit every few seconds the pages touched besides the new rows (index and table ends,
/// `meta`, the outbox) cost more than the rows, and a smaller page makes each of them cheaper
/// (docs/benchmarks.md (h)). A file made before keeps its page size.
const PAGE_SIZE: i64 = 1024;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Opens (creating if needed, with its directory) the database at `path`, sets WAL with
    /// `synchronous=FULL` (a committed batch survives power loss) and applies any migrations
    /// this version knows and the file does not have yet.
    pub fn open(path: &Path, cfg: &StoreSettings) -> Result<Store, StoreError> {
        let name = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Other {
                path: name.clone(),
                message: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        // Never touch a file that is not the gateway's store: checked before WAL is switched on.
        recovery::refuse_foreign(path)?;
        let sql = |source| StoreError::from_sqlite(&name, source);
        let mut conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        // A brand-new file gets small pages (only before WAL mode is on: see PAGE_SIZE).
        let fresh: i64 = conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .map_err(sql)?;
        if fresh == 0 {
            conn.pragma_update(None, "page_size", PAGE_SIZE)
                .map_err(sql)?;
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Other {
                path: name,
                message: format!(
                    "cannot switch to WAL journal mode (got {mode}); is the filesystem local?"
                ),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        // A WAL that grew during a large commit is cut back after its checkpoint, so the space
        // returns to the filesystem (a small disk must not stay full because of it).
        conn.pragma_update(None, "journal_size_limit", 1024 * 1024)
            .map_err(sql)?;
        schema::migrate(&mut conn).map_err(|e| e.with_path(&name))?;
        let last_seq_given = read_last_seq(&conn).ok();
        let reading_topic = read_meta(&conn, &MetaKey::ReadingTopic).ok().flatten();
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            cfg: cfg.clone(),
            last_outbox_id: 0,
            last_seq_given,
            kind_seq_given: BTreeMap::new(),
            layouts: std::collections::HashMap::new(),
            reading_topic,
            damage: std::cell::RefCell::new(None),
        })
    }

    /// The settings the store was opened with.
    pub fn settings(&self) -> &StoreSettings {
        &self.cfg
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the file (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Stores one batch in ONE transaction: its readings into the history, its messages into
    /// the outbox. Sequenced messages get `"seq"` (one more than the last one given out, kept
    /// in `meta` in the same transaction). On any error nothing of the batch is stored.
    pub fn commit(&mut self, batch: &Batch) -> Result<CommitReport, StoreError> {
        self.commit_at(batch, now_ms())
    }

    /// [`Store::commit`] with an explicit creation time for the outbox rows.
    pub fn commit_at(&mut self, batch: &Batch, now_ms: i64) -> Result<CommitReport, StoreError> {
        let path = self.path.display().to_string();
        let sql = |e| StoreError::from_sqlite(&path, e);
        let tx = self.conn.transaction().map_err(sql)?;
        let mut report = CommitReport {
            readings: batch.readings.len(),
            ..CommitReport::default()
        };
        // The per-kind counters this batch moved: kind -> last kind_seq given.
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        // Layouts this transaction added (names -> id), known to the cache once it commits.
        let mut new_layouts: Vec<(String, i64)> = Vec::new();
        // The history row of each reading, and which readings' messages are still to come.
        let mut reading_rows: Vec<i64> = Vec::with_capacity(batch.readings.len());
        let mut unsent: std::collections::HashMap<&str, Vec<usize>> =
            std::collections::HashMap::new();
        for (i, r) in batch.readings.iter().enumerate() {
            unsent.entry(r.meter.as_str()).or_default().push(i);
        }
        // The record rows of this batch by body text, whose messages are still to come.
        let mut record_rows: std::collections::HashMap<String, Vec<i64>> =
            std::collections::HashMap::new();
        // The reading topic base this batch named, when it is not the one in `meta`.
        let mut new_reading_topic: Option<String> = None;
        {
            let mut insert_reading = tx
                .prepare_cached(
                    "INSERT INTO history (meter, ts_ms, values_json, quality, layout, values_blob) \
                     VALUES (?1, ?2, '', ?3, ?4, ?5)",
                )
                .map_err(sql)?;
            for (i, r) in batch.readings.iter().enumerate() {
                let q = batch.reading_quality.get(i).copied().unwrap_or(0);
                let names = layout_names(&r.values);
                let known = self.layouts.get(&names).copied().or_else(|| {
                    new_layouts
                        .iter()
                        .find(|(n, _)| *n == names)
                        .map(|(_, id)| *id)
                });
                let layout = match known {
                    Some(id) => id,
                    None => {
                        let id = layout_id(&tx, &names).map_err(sql)?;
                        new_layouts.push((names, id));
                        id
                    }
                };
                insert_reading
                    .execute(params![r.meter, r.ts_ms, q, layout, values_blob(&r.values)])
                    .map_err(sql)?;
                reading_rows.push(tx.last_insert_rowid());
            }
            let mut revise = tx
                .prepare_cached("UPDATE history SET quality = ?3 WHERE meter = ?1 AND ts_ms = ?2")
                .map_err(sql)?;
            for q in &batch.quality_revisions {
                revise
                    .execute(params![q.meter, q.ts_ms, q.quality])
                    .map_err(sql)?;
            }
            let mut insert_record = tx
                .prepare_cached(
                    "INSERT INTO record (kind, subject, ts_ms, body_json) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql)?;
            for r in &batch.records {
                let body = r.body.to_string();
                insert_record
                    .execute(params![r.kind.as_str(), r.subject, r.ts_ms, body])
                    .map_err(sql)?;
                record_rows
                    .entry(body)
                    .or_default()
                    .push(tx.last_insert_rowid());
            }
            let mut set_meta = tx
                .prepare_cached(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                )
                .map_err(sql)?;
            for (k, v) in &batch.meta {
                set_meta.execute(params![k.key(), v]).map_err(sql)?;
            }
            let mut put_state = tx
                .prepare_cached(
                    "INSERT INTO meter_status (meter, status_json, updated_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(meter) DO UPDATE SET status_json = excluded.status_json, \
                     updated_ms = excluded.updated_ms",
                )
                .map_err(sql)?;
            for st in &batch.meter_states {
                put_state
                    .execute(params![st.meter, status_json(st), now_ms])
                    .map_err(sql)?;
            }
            let mut seq = read_last_seq(&tx).map_err(sql)?;
            let first_seq = seq + 1;
            let mut insert_message = tx
                .prepare_cached(
                    "INSERT INTO outbox (topic, payload, qos, retain, created_ms, seq) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sql)?;
            // A sequenced message is stored once, here; its outbox row names it by seq.
            let mut insert_copy = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO published (seq, topic, payload, created_ms, kind, ts_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sql)?;
            let mut mark_reading = tx
                .prepare_cached(
                    "UPDATE history SET seq = ?2, kind_seq = ?3, clock_unsynchronized = ?4 \
                     WHERE id = ?1",
                )
                .map_err(sql)?;
            let mut mark_record = tx
                .prepare_cached(
                    "UPDATE record SET seq = ?2, kind_seq = ?3, topic = ?4 WHERE id = ?1",
                )
                .map_err(sql)?;
            for m in &batch.messages {
                let mut stored_seq: Option<i64> = None;
                let payload = if m.sequenced {
                    // A payload held as text is read into a tree for this message alone.
                    let tree = m.payload.tree();
                    let serde_json::Value::Object(given) = tree.as_ref() else {
                        return Err(StoreError::Other {
                            path: path.clone(),
                            message: format!(
                                "sequenced message for {} is not a JSON object",
                                m.topic
                            ),
                        });
                    };
                    seq += 1;
                    let mut map = given.clone();
                    map.insert("seq".into(), seq.into());
                    // The copy learns its kind and its time, so that `recall` can find it by
                    // kind and time range (a message without a kind: by seq, at its creation).
                    let (mut kind, mut ts) = (None, now_ms);
                    if let Some(serde_json::Value::String(k)) = map.get(KIND_SEQ_FIELD) {
                        let k = k.clone();
                        let last = match kinds.get(&k) {
                            Some(last) => *last,
                            None => read_kind_seq(&tx, &k).map_err(sql)?,
                        };
                        kinds.insert(k.clone(), last + 1);
                        map.insert(KIND_SEQ_FIELD.into(), (last + 1).into());
                        ts = message_time(&map).unwrap_or(now_ms);
                        kind = Some(k);
                    }
                    let at = i64::try_from(seq).unwrap_or(i64::MAX);
                    // A reading's message is stored once, as its history row; any other
                    // message as its `published` copy.
                    let of_reading = match kind.as_deref() {
                        Some(READING_KIND) => {
                            message_of_reading(&batch.readings, &mut unsent, m, given)
                        }
                        _ => None,
                    };
                    if let Some((i, base, clock)) = of_reading {
                        mark_reading
                            .execute(params![
                                reading_rows[i],
                                at,
                                i64::try_from(kinds.get(READING_KIND).copied().unwrap_or(0))
                                    .unwrap_or(i64::MAX),
                                clock.then_some(1)
                            ])
                            .map_err(sql)?;
                        let known = new_reading_topic.as_ref().or(self.reading_topic.as_ref());
                        if known != Some(&base) {
                            tx.execute(
                                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                params![MetaKey::ReadingTopic.key(), base],
                            )
                            .map_err(sql)?;
                            new_reading_topic = Some(base);
                        }
                    } else {
                        // A kept message is stored once, as its record row, when rendering
                        // the record gives back exactly this payload.
                        let text = serde_json::Value::Object(map).to_string();
                        let kind_seq = kind.as_ref().and_then(|k| kinds.get(k)).copied();
                        let record = match kind_seq {
                            Some(ks) if !record_rows.is_empty() => {
                                let body = m.payload.to_string();
                                let found = record_rows.get_mut(&body).and_then(|ids| {
                                    (record_message::render(&body, seq, ks).as_ref() == Some(&text))
                                        .then(|| ids.pop())
                                        .flatten()
                                });
                                found.map(|id| (id, ks))
                            }
                            _ => None,
                        };
                        if let Some((id, ks)) = record {
                            mark_record
                                .execute(params![
                                    id,
                                    at,
                                    i64::try_from(ks).unwrap_or(i64::MAX),
                                    m.topic
                                ])
                                .map_err(sql)?;
                        } else {
                            insert_copy
                                .execute(params![at, m.topic, text, now_ms, kind, ts])
                                .map_err(sql)?;
                        }
                    }
                    stored_seq = Some(at);
                    String::new()
                } else {
                    m.payload.to_string()
                };
                insert_message
                    .execute(params![
                        m.topic,
                        payload.as_bytes(),
                        m.qos,
                        m.retain,
                        now_ms,
                        stored_seq
                    ])
                    .map_err(sql)?;
                report.outbox_ids.push(tx.last_insert_rowid());
            }
            if seq >= first_seq {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![MetaKey::LastSeq.key(), seq.to_string()],
                )
                .map_err(sql)?;
                report.seq_range = Some((first_seq, seq));
            }
            for (kind, last) in &kinds {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![MetaKey::KindSeq(kind.clone()).key(), last.to_string()],
                )
                .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        self.layouts.extend(new_layouts);
        if new_reading_topic.is_some() {
            self.reading_topic = new_reading_topic;
        }
        if let Some(last) = report.outbox_ids.last() {
            self.last_outbox_id = self.last_outbox_id.max(*last);
        }
        if let Some((_, last)) = report.seq_range {
            self.last_seq_given = Some(last);
        }
        self.kind_seq_given.extend(kinds);
        Ok(report)
    }

    /// The last `seq` given out (0 before the first).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        read_last_seq(&self.conn).map_err(|e| self.err(e))
    }

    /// Up to `limit` outbox rows with `id > after_id`, oldest first.
    pub fn pending(&self, after_id: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "{OUTBOX_ROWS} WHERE o.id > ?1 ORDER BY o.id LIMIT ?2"
            ))
            .map_err(|e| self.err(e))?;
        // A row whose payload is gone is published empty, as before schema 7 (a lost copy).
        stmt.query_map(params![after_id, limit], |r| {
            let row = outbox_row(r)?;
            match row {
                Some(row) => Ok(row),
                None => Ok(OutboxRow {
                    id: r.get(0)?,
                    topic: r.get(1)?,
                    payload: Vec::new(),
                    qos: r.get(5)?,
                    retain: r.get(6)?,
                    created_ms: r.get(7)?,
                }),
            }
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| self.err(e))
    }

    /// Deletes acknowledged outbox rows (ids that are gone already are ignored), in one
    /// transaction. Returns how many were deleted.
    pub fn ack(&mut self, ids: &[i64]) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let path = self.path.display().to_string();
        let sql = |e| StoreError::from_sqlite(&path, e);
        let tx = self.conn.transaction().map_err(sql)?;
        let mut deleted = 0;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM outbox WHERE id = ?1")
                .map_err(sql)?;
            for id in ids {
                deleted += stmt.execute([id]).map_err(sql)?;
            }
        }
        // When the broker last took a message: `status` tells a dead link by it.
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![MetaKey::LastAck.key(), now_ms().to_string()],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(deleted)
    }

    /// Rows in the outbox and the creation time of the oldest.
    pub fn backlog(&self) -> Result<(u64, Option<i64>), StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), (SELECT created_ms FROM outbox ORDER BY id LIMIT 1) FROM outbox",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .map_err(|e| self.err(e))
    }

    /// A meter's readings with `from_ms <= ts_ms < to_ms`, oldest first. Values stored as
    /// JSON `null` (non-finite numbers) come back as NaN.
    pub fn history(
        &self,
        meter: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Reading>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT h.meter, h.ts_ms, h.values_json, l.names, h.values_blob FROM history h \
                 LEFT JOIN history_layout l ON l.id = h.layout \
                 WHERE h.meter = ?1 AND h.ts_ms >= ?2 AND h.ts_ms < ?3 ORDER BY h.ts_ms, h.id",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map(params![meter, from_ms, to_ms], reading_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))
    }

    /// The quality flags of a meter's history rows with `from_ms <= ts_ms < to_ms`, as
    /// (ts ms, flag), oldest first.
    pub fn history_quality(
        &self,
        meter: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, u8)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT ts_ms, quality FROM history \
                 WHERE meter = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 ORDER BY ts_ms, id",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map(params![meter, from_ms, to_ms], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| self.err(e))
    }

    /// A meter's most recent reading.
    /// The history is indexed by time only: the last day is searched first, then the rest.
    pub fn latest_reading(&self, meter: &str) -> Result<Option<Reading>, StoreError> {
        let newest: Option<i64> = self
            .conn
            .query_row("SELECT max(ts_ms) FROM history", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let Some(newest) = newest else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT h.meter, h.ts_ms, h.values_json, l.names, h.values_blob FROM history h \
                 LEFT JOIN history_layout l ON l.id = h.layout \
                 WHERE h.meter = ?1 AND h.ts_ms >= ?2 ORDER BY h.ts_ms DESC, h.id DESC LIMIT 1",
            )
            .map_err(|e| self.err(e))?;
        for from in [newest - 86_400_000, i64::MIN] {
            let found = stmt
                .query_row(params![meter, from], reading_from_row)
                .optional()
                .map_err(|e| self.err(e))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Remembers a meter's last state, so it can be republished after a restart.
    pub fn put_meter_state(&mut self, state: &MeterState, now_ms: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meter_status (meter, status_json, updated_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(meter) DO UPDATE SET status_json = excluded.status_json, \
                 updated_ms = excluded.updated_ms",
                params![state.meter, status_json(state), now_ms],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Records of `kind` (and `subject`, when given) with `from_ms <= ts_ms < to_ms`, oldest
    /// first, at most `limit`, newest kept when more match.
    pub fn records(
        &self,
        kind: RecordKind,
        subject: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT kind, subject, ts_ms, body_json FROM record \
                 WHERE kind = ?1 AND (?2 IS NULL OR subject = ?2) AND ts_ms >= ?3 AND ts_ms < ?4 \
                 ORDER BY ts_ms DESC, id DESC LIMIT ?5",
            )
            .map_err(|e| self.err(e))?;
        let mut rows: Vec<Record> = stmt
            .query_map(
                params![kind.as_str(), subject, from_ms, to_ms, limit as i64],
                |r| {
                    let body: String = r.get(3)?;
                    Ok(Record {
                        kind,
                        subject: r.get(1)?,
                        ts_ms: r.get(2)?,
                        body: serde_json::from_str::<serde_json::Value>(&body)
                            .unwrap_or(serde_json::Value::Null)
                            .into(),
                    })
                },
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        rows.reverse();
        Ok(rows)
    }

    /// Block limits learned from meters that reject large reads (meter id → max registers).
    pub fn block_limits(&self) -> Result<BTreeMap<String, u16>, StoreError> {
        Ok(self
            .meta_by_meter(keys::BLOCK_LIMIT_PREFIX)?
            .into_iter()
            .filter_map(|(meter, v)| Some((meter, v.parse().ok()?)))
            .collect())
    }

    /// Remembers that `meter` answers blocks of at most `max_block` registers.
    pub fn set_block_limit(&mut self, meter: &str, max_block: u16) -> Result<(), StoreError> {
        self.set_meta(&MetaKey::BlockLimit(meter.into()), &max_block.to_string())
    }

    /// Block data identifiers DL/T 645 meters refuse (meter id → identifiers).
    pub fn refused_blocks(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        Ok(self
            .meta_by_meter(keys::REFUSED_BLOCKS_PREFIX)?
            .into_iter()
            .map(|(meter, v)| {
                let dis = v
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect();
                (meter, dis)
            })
            .collect())
    }

    /// Everything learned about the meters, as the buses take it back after a restart.
    pub fn learned(&self) -> Result<Vec<(String, Learned)>, StoreError> {
        let mut learned = Learned::from_block_limits(&self.block_limits()?);
        learned.extend(Learned::from_refused_blocks(&self.refused_blocks()?));
        Ok(learned)
    }

    /// Remembers what was `learned` about `meter` (it replaces what was known of that kind).
    pub fn remember(&mut self, meter: &str, learned: &Learned) -> Result<(), StoreError> {
        match learned {
            Learned::BlockLimit(max_block) => self.set_block_limit(meter, *max_block),
            Learned::RefusedBlocks(dis) => {
                self.set_meta(&MetaKey::RefusedBlocks(meter.into()), &dis.join(","))
            }
        }
    }

    /// The meta values whose key is `prefix` + a meter id, by meter id.
    fn meta_by_meter(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, value FROM meta WHERE substr(key, 1, ?1) = ?2")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![prefix.len() as i64, prefix], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v)))
            .collect())
    }

    /// Every meter's last state, by meter id. A state this version cannot read is skipped.
    pub fn meter_states(&self) -> Result<BTreeMap<String, MeterState>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT meter, status_json FROM meter_status ORDER BY meter")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(meter, json)| Some((meter, serde_json::from_str(&json).ok()?)))
            .collect())
    }

    /// The per-meter parts of an engine's snapshot ([`MetaKey::EngineMeter`]), by meter id.
    pub fn engine_meters(&self, engine: &MetaKey) -> Result<Vec<(String, String)>, StoreError> {
        self.meta_by_meter(&format!("{}/meter/", engine.key()))
    }

    /// A value of the `meta` table.
    pub fn meta(&self, key: &MetaKey) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key.key()], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Sets a value of the `meta` table.
    pub fn set_meta(&mut self, key: &MetaKey, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key.key(), value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Bytes the database's live pages take: `(page_count - freelist_count) * page_size`.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let pragma = |name: &str| -> Result<i64, StoreError> {
            self.conn
                .pragma_query_value(None, name, |r| r.get(0))
                .map_err(|e| self.err(e))
        };
        let pages = pragma("page_count")? - pragma("freelist_count")?;
        Ok((pages.max(0) as u64) * pragma("page_size")? as u64)
    }

    /// `PRAGMA integrity_check`: `"ok"` for a sound file, otherwise SQLite's findings.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(|e| self.err(e))?;
        let lines = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(lines.join("\n"))
    }

    /// Copies the WAL into the database file and truncates it (best effort: a reader may keep
    /// it from completing). Frees the WAL's space after a full disk.
    pub fn checkpoint(&self) {
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }

    /// Raw access for tests in this crate (e.g. to simulate a full disk with `max_page_count`).
    #[cfg(test)]
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        let e = StoreError::from_sqlite(&self.path.display().to_string(), source);
        if e.is_damage() {
            self.damage.replace(Some(e.to_string()));
        }
        e
    }
}

impl StoreError {
    /// Wraps a SQLite error, naming the database; SQLITE_FULL becomes [`StoreError::Full`].
    fn from_sqlite(path: &str, source: rusqlite::Error) -> StoreError {
        match source.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::Full {
                path: path.to_string(),
            },
            _ => StoreError::Sqlite {
                path: path.to_string(),
                source,
            },
        }
    }

    /// True when the failure was a full disk ([`StoreError::Full`]).
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full { .. })
    }

    /// True when SQLite found the file damaged ("database disk image is malformed", "file is
    /// not a database"): the store is moved aside and started afresh ([`Store::recover`]).
    pub fn is_damage(&self) -> bool {
        match self {
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
            ),
            _ => false,
        }
    }
}

/// The payload field naming a sequenced message's kind. The contract writes the kind's name
/// there (`"kind_seq": "reading"`); the store replaces it with the kind's own counter, which
/// increases by one for every message of that kind and never goes back, like `seq`.
pub const KIND_SEQ_FIELD: &str = "kind_seq";

/// Which of `readings` (whose indices by meter are `unsent`) sequenced message `m` is the
/// message of, exactly (see [`reading_message`]): its index (taken out of `unsent`), the
/// topic base and whether the message is marked `"clock": "unsynchronized"` (`payload`: its
/// payload as a tree).
fn message_of_reading(
    readings: &[Reading],
    unsent: &mut std::collections::HashMap<&str, Vec<usize>>,
    m: &Message,
    payload: &serde_json::Map<String, serde_json::Value>,
) -> Option<(usize, String, bool)> {
    let meter = payload.get("meter")?.as_str()?;
    let candidates = unsent.get_mut(meter)?;
    let (at, found) = candidates.iter().enumerate().find_map(|(at, i)| {
        reading_message::is_message_of(&readings[*i], &m.topic, payload).map(|f| (at, (*i, f)))
    })?;
    candidates.remove(at);
    Some((found.0, found.1.0, found.1.1))
}

/// The last `kind_seq` given out for `kind` (never below the recovery floor).
fn read_kind_seq(conn: &Connection, kind: &str) -> rusqlite::Result<u64> {
    let read = |key: String| -> rusqlite::Result<u64> {
        let value: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    };
    Ok(read(MetaKey::KindSeq(kind.to_string()).key())?.max(read(MetaKey::KindSeqFloor.key())?))
}

/// The time a message is about: its `ts`, else the `end` (or `start`) of the interval it
/// covers.
fn message_time(payload: &serde_json::Map<String, serde_json::Value>) -> Option<i64> {
    ["ts", "end", "start"].iter().find_map(|k| {
        payload
            .get(*k)?
            .as_str()
            .and_then(crate::clock::parse_rfc3339)
    })
}

fn read_meta(conn: &Connection, key: &MetaKey) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key.key()], |r| {
        r.get(0)
    })
    .optional()
}

fn read_last_seq(conn: &Connection) -> rusqlite::Result<u64> {
    let value: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [MetaKey::LastSeq.key()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn status_json(state: &MeterState) -> String {
    serde_json::to_string(state).expect("a meter state serializes")
}

/// A reading's layout: its quantity names, sorted, as a JSON array.
fn layout_names(values: &BTreeMap<String, f64>) -> String {
    serde_json::to_string(&values.keys().collect::<Vec<_>>()).expect("names serialize")
}

/// The id of layout `names`, added when new.
fn layout_id(conn: &Connection, names: &str) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT OR IGNORE INTO history_layout (names) VALUES (?1)",
        [names],
    )?;
    conn.query_row(
        "SELECT id FROM history_layout WHERE names = ?1",
        [names],
        |r| r.get(0),
    )
}

/// A reading's values in the order of its layout, each in its shortest exact form
/// ([`reading_values`]; NaN kept as NaN).
fn values_blob(values: &BTreeMap<String, f64>) -> Vec<u8> {
    reading_values::encode(&values.values().copied().collect::<Vec<_>>())
}

/// A history row (meter, ts_ms, values_json, layout names, values_blob) as a reading: the
/// numbers by their layout, or (rows written before schema 6) the JSON text.
fn reading_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Reading> {
    reading_from_columns(r, 0)
}

/// [`reading_from_row`] with the five columns from index `at`.
fn reading_from_columns(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Reading> {
    let names: Option<String> = r.get(at + 3)?;
    let blob: Option<Vec<u8>> = r.get(at + 4)?;
    let values = match (names, blob) {
        (Some(names), Some(blob)) => {
            let names = serde_json::from_str::<Vec<String>>(&names).unwrap_or_default();
            let values = reading_values::decode(&blob, names.len());
            names.into_iter().zip(values).collect()
        }
        _ => {
            let json: String = r.get(at + 2)?;
            match serde_json::from_str::<serde_json::Value>(&json) {
                Ok(serde_json::Value::Object(map)) => map
                    .into_iter()
                    .map(|(k, v)| (k, v.as_f64().unwrap_or(f64::NAN)))
                    .collect(),
                _ => BTreeMap::new(),
            }
        }
    };
    Ok(Reading {
        meter: r.get(at)?,
        ts_ms: r.get(at + 1)?,
        values,
    })
}

/// The history rows no outbox row refers to (an unsent reading's row is its message).
const HISTORY_UNREFERENCED: &str =
    "(seq IS NULL OR seq NOT IN (SELECT seq FROM outbox WHERE seq IS NOT NULL))";

/// The record rows no outbox row refers to (an unsent kept message's record is its message).
const RECORD_UNREFERENCED: &str = HISTORY_UNREFERENCED;

/// The outbox rows with what their payload is kept as: their own payload, their `published`
/// copy (schema 6), their reading's history row or their kept message's record row (schema
/// 7); read by [`outbox_row`].
pub(crate) const OUTBOX_ROWS: &str = "SELECT o.id, o.topic, o.seq, o.payload, \
     CAST(p.payload AS BLOB), o.qos, o.retain, o.created_ms, \
     h.meter, h.ts_ms, h.values_json, l.names, h.values_blob, h.kind_seq, h.clock_unsynchronized, \
     rc.body_json, rc.kind_seq \
     FROM outbox o LEFT JOIN published p ON p.seq = o.seq \
     LEFT JOIN history h ON h.seq = o.seq AND p.seq IS NULL \
     LEFT JOIN history_layout l ON l.id = h.layout \
     LEFT JOIN record rc ON rc.seq = o.seq AND p.seq IS NULL AND h.seq IS NULL";

/// A row of [`OUTBOX_ROWS`] ready to publish; `None` when its payload is gone (its copy or
/// its history row was lost).
pub(crate) fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<OutboxRow>> {
    let seq: Option<i64> = r.get(2)?;
    let own: Vec<u8> = r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default();
    let copy: Option<Vec<u8>> = r.get(4)?;
    let payload = match (seq, copy) {
        (None, _) => Some(own),
        (Some(_), Some(copy)) => Some(copy),
        (Some(seq), None) => match r.get::<_, Option<String>>(8)? {
            Some(_) => {
                let reading = reading_from_columns(r, 8)?;
                let kind_seq: Option<i64> = r.get(13)?;
                let clock: Option<i64> = r.get(14)?;
                Some(reading_message::render(
                    &reading,
                    seq.max(0) as u64,
                    kind_seq.unwrap_or(0).max(0) as u64,
                    clock.is_some_and(|c| c != 0),
                ))
            }
            None => match r.get::<_, Option<String>>(15)? {
                Some(body) => {
                    let kind_seq: Option<i64> = r.get(16)?;
                    record_message::render(
                        &body,
                        seq.max(0) as u64,
                        kind_seq.unwrap_or(0).max(0) as u64,
                    )
                    .map(String::into_bytes)
                }
                None => (!own.is_empty()).then_some(own),
            },
        },
    };
    let Some(payload) = payload else {
        return Ok(None);
    };
    Ok(Some(OutboxRow {
        id: r.get(0)?,
        topic: r.get(1)?,
        payload,
        qos: r.get(5)?,
        retain: r.get(6)?,
        created_ms: r.get(7)?,
    }))
}
