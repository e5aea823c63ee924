//! A store that cannot keep the gateway down: what happens when the database file is damaged
//! (at start or while running), when the data directory cannot be written, and when the file
//! at the store's place is not the gateway's.
//!
//! - **Damage** (the file fails to open, fails `PRAGMA quick_check`, or a statement reports
//!   "malformed" / "not a database"): the file is moved aside — renamed
//!   `{name}.damaged-{UTC time}` together with its `-wal` and `-shm`, never deleted — a fresh
//!   store is created in its place, and what can still be read is carried over: the unsent
//!   outbox (with its row ids), the `meta` table (engine snapshots, learned limits, heartbeat)
//!   and the meter states. The caller reports the [`Recovery`] (the `store_recovered` alarm).
//! - **`seq` never goes backwards**: the new counter starts at the old counter, or above any
//!   `seq` found in the salvaged outbox and records when that is higher; when the counter
//!   cannot be read at all (and this process has not given one out yet), it starts at the
//!   time-based floor: milliseconds since the Unix epoch. That is above every `seq` ever given
//!   as long as the gateway has published less than one message per millisecond on average
//!   since it first counted, which a concentrator never approaches. Each kind's `kind_seq`
//!   goes on the same way: from the highest of its old counter, the old recall copies and
//!   what this process gave out; when the old counters cannot be read, every kind starts
//!   above the same time floor (`kind_seq_floor`).
//! - **A data directory that cannot be written** is a [`StoreError::DataDir`] naming it, the
//!   cause (read-only filesystem, permission, not a directory, full) and what to check.
//! - **A file that is not the gateway's store** (not SQLite, or another program's SQLite
//!   database) is a [`StoreError::Foreign`]; it is inspected read-only (`immutable`), before
//!   anything could switch it to WAL, and never modified.

use super::{OutboxRow, Store, StoreError, StoreSettings, read_last_seq};
use crate::clock::{now_ms, rfc3339_ms};
use crate::store::MetaKey;
use rusqlite::{Connection, ErrorCode, OpenFlags, params};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the new store's `seq` counter came from after a recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqSource {
    /// The old file's counter (or this process's own, while running).
    Counter,
    /// A `seq` found in the salvaged outbox or records, higher than the counter.
    HighestFound,
    /// The counter was unreadable: milliseconds since the Unix epoch.
    TimeFloor,
}

impl SeqSource {
    /// The name in the alarm's details.
    pub fn as_str(self) -> &'static str {
        match self {
            SeqSource::Counter => "counter",
            SeqSource::HighestFound => "highest_found",
            SeqSource::TimeFloor => "time_floor",
        }
    }
}

/// What a recovery did: reported to the headend as the `store_recovered` alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// The damaged file, moved aside (kept for forensics and manual salvage).
    pub moved_to: PathBuf,
    /// What was wrong, as SQLite said it.
    pub cause: String,
    /// Unsent outbox messages carried over to the new store.
    pub messages_salvaged: usize,
    /// `meta` entries carried over (engine snapshots, learned limits, heartbeat).
    pub meta_salvaged: usize,
    /// Meter states carried over.
    pub meter_states_salvaged: usize,
    /// The last `seq` of the new store: the next message gets one more.
    pub last_seq: u64,
    pub seq_source: SeqSource,
    /// When it happened, ms since the epoch.
    pub at_ms: i64,
}

/// Checks that `dir` is a directory the gateway can write (creating it if missing). The error
/// names the directory, the cause and what to check.
pub fn check_data_dir(dir: &Path) -> Result<(), StoreError> {
    let fail = |cause: String, remedy: &str| StoreError::DataDir {
        path: dir.display().to_string(),
        cause,
        remedy: remedy.to_string(),
    };
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(fail(
                "it is not a directory".into(),
                "set [gateway] data_dir to a directory, or move the file of that name away",
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| classify(dir, &e))?;
        }
        Err(e) => return Err(classify(dir, &e)),
    }
    let probe = dir.join(".amr-gateway-write-test");
    let written = std::fs::write(&probe, b"ok").map_err(|e| classify(dir, &e));
    let _ = std::fs::remove_file(&probe);
    written
}

/// The cause and the remedy of an I/O error on the data directory.
fn classify(dir: &Path, e: &std::io::Error) -> StoreError {
    use std::os::unix::fs::MetadataExt;
    let (cause, remedy) = match e.raw_os_error() {
        Some(libc::EROFS) => (
            "the filesystem is mounted read-only".to_string(),
            format!(
                "check the mount (`findmnt -T {}`): remount it read-write, or point data_dir at a \
                 writable filesystem",
                dir.display()
            ),
        ),
        Some(libc::EACCES | libc::EPERM) => {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            let owner = std::fs::metadata(dir)
                .map(|m| {
                    format!(
                        " (it belongs to uid {}, mode {:o})",
                        m.uid(),
                        m.mode() & 0o7777
                    )
                })
                .unwrap_or_default();
            (
                format!("permission denied for uid {uid}{owner}"),
                "give the gateway's user write access (chown/chmod), or set data_dir to a \
                 directory it owns (the package uses /var/lib/amr-gateway)"
                    .to_string(),
            )
        }
        Some(libc::ENOTDIR) => (
            "a part of the path is not a directory".to_string(),
            "check every component of the path".to_string(),
        ),
        Some(libc::ENOSPC) => (
            "the filesystem is full".to_string(),
            "free space on it (`df -h`)".to_string(),
        ),
        _ => (
            e.to_string(),
            "check the path and the filesystem it is on".to_string(),
        ),
    };
    StoreError::DataDir {
        path: dir.display().to_string(),
        cause: format!("{cause} ({e})"),
        remedy,
    }
}

/// Refuses a file at `path` that is not the gateway's store, without modifying it. An absent
/// or empty file, an SQLite file with no tables, one with the store's tables, and one whose
/// schema cannot be read (damage: the recovery decides) pass.
pub(super) fn refuse_foreign(path: &Path) -> Result<(), StoreError> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(());
    };
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    if read == 0 {
        return Ok(());
    }
    let foreign = |what: String| StoreError::Foreign {
        path: path.display().to_string(),
        what,
    };
    if &head[..read] != b"SQLite format 3\0".get(..read).unwrap_or_default() || read < 16 {
        return Err(foreign("not an SQLite database".into()));
    }
    let uri = format!("file:{}?immutable=1", uri_path(path));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let Ok(conn) = Connection::open_with_flags(&uri, flags) else {
        return Ok(());
    };
    let tables: rusqlite::Result<Vec<String>> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        });
    let Ok(tables) = tables else {
        return Ok(());
    };
    let ours = ["outbox", "meta", "schema_version"];
    if tables.is_empty() || ours.iter().all(|t| tables.iter().any(|n| n == t)) {
        return Ok(());
    }
    let mut list = tables.join(", ");
    if list.len() > 200 {
        list.truncate(200);
        list.push_str(", ...");
    }
    Err(foreign(format!(
        "another program's SQLite database, with tables {list}"
    )))
}

/// `path` for an SQLite `file:` URI.
fn uri_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23")
}

/// What could still be read from a damaged file.
#[derive(Debug, Default)]
struct Salvage {
    last_seq: Option<u64>,
    /// The highest `seq` in the outbox payloads and the records.
    max_seq_found: u64,
    outbox: Vec<OutboxRow>,
    max_outbox_id: i64,
    meta: Vec<(String, String)>,
    meter_status: Vec<(String, String, i64)>,
    /// The highest `kind_seq` per kind in the old file's recall copies.
    kind_seq_found: BTreeMap<String, u64>,
}

impl Salvage {
    /// Reads what it can, best effort: every part on its own, a damaged part skipped.
    fn read(path: &Path) -> Salvage {
        let mut s = Salvage::default();
        let Ok(conn) = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
            return s;
        };
        s.last_seq = read_last_seq(&conn).ok().filter(|_| {
            // read_last_seq says 0 for a missing row: only an existing row is a counter.
            conn.query_row(
                "SELECT 1 FROM meta WHERE key = ?1",
                [MetaKey::LastSeq.key()],
                |_| Ok(()),
            )
            .is_ok()
        });
        s.read_outbox(&conn);
        s.max_outbox_id = s.outbox.iter().map(|r| r.id).max().unwrap_or(0);
        for sql in [
            "SELECT max(id) FROM outbox",
            "SELECT max(seq) FROM sqlite_sequence WHERE name = 'outbox'",
        ] {
            if let Ok(max) = conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0)) {
                s.max_outbox_id = s.max_outbox_id.max(max.unwrap_or(0));
            }
        }
        for row in &s.outbox {
            let seq = serde_json::from_slice::<serde_json::Value>(&row.payload)
                .ok()
                .and_then(|v| v.get("seq").and_then(|s| s.as_u64()));
            s.max_seq_found = s.max_seq_found.max(seq.unwrap_or(0));
        }
        if let Ok(Some(max)) = conn.query_row(
            "SELECT max(CAST(json_extract(body_json, '$.seq') AS INTEGER)) FROM record \
             WHERE json_valid(body_json)",
            [],
            |r| r.get::<_, Option<i64>>(0),
        ) {
            s.max_seq_found = s.max_seq_found.max(max.max(0) as u64);
        }
        s.meta = collect(&conn, "SELECT key, value FROM meta", |r| {
            Ok((r.get(0)?, r.get(1)?))
        });
        s.meta.retain(|(k, _)| *k != MetaKey::LastSeq.key());
        s.kind_seq_found = collect(
            &conn,
            "SELECT kind, max(CAST(json_extract(payload, '$.kind_seq') AS INTEGER)) \
             FROM published WHERE kind IS NOT NULL AND json_valid(payload) GROUP BY kind",
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?)),
        )
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(0).max(0) as u64))
        .collect();
        // From schema 7 the readings' numbers are on their history rows.
        if let Ok((Some(seq), kind_seq)) = conn.query_row(
            "SELECT max(seq), max(kind_seq) FROM history WHERE seq IS NOT NULL",
            [],
            |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?)),
        ) {
            s.max_seq_found = s.max_seq_found.max(seq.max(0) as u64);
            let found = s
                .kind_seq_found
                .entry(super::READING_KIND.to_string())
                .or_default();
            *found = (*found).max(kind_seq.unwrap_or(0).max(0) as u64);
        }
        // From schema 7 the kept messages' numbers are on their record rows, their kind in
        // the body.
        let kept: Vec<(Option<String>, Option<i64>, Option<i64>)> = collect(
            &conn,
            "SELECT json_extract(body_json, '$.kind_seq'), max(seq), max(kind_seq) \
             FROM record WHERE seq IS NOT NULL AND json_valid(body_json) GROUP BY 1",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        );
        for (kind, seq, kind_seq) in kept {
            s.max_seq_found = s.max_seq_found.max(seq.unwrap_or(0).max(0) as u64);
            if let Some(kind) = kind {
                let found = s.kind_seq_found.entry(kind).or_default();
                *found = (*found).max(kind_seq.unwrap_or(0).max(0) as u64);
            }
        }
        s.meter_status = collect(
            &conn,
            "SELECT meter, status_json, updated_ms FROM meter_status",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        );
        s
    }

    /// The outbox rows, in id order; a damaged stretch is skipped by restarting the scan
    /// above it, with growing steps, a bounded number of times.
    fn read_outbox(&mut self, conn: &Connection) {
        let mut after = 0i64;
        let mut step = 1i64;
        for _ in 0..64 {
            // From schema 7 a reading's payload is rendered from its history row and a kept
            // message's from its record row; from schema 6 any other sequenced row's payload
            // is its `published` copy.
            let v7 = format!("{} WHERE o.id > ?1 ORDER BY o.id", super::OUTBOX_ROWS);
            let mut rendered = true;
            let Ok(mut stmt) = conn
                .prepare(&v7)
                .or_else(|_| {
                    rendered = false;
                    conn.prepare(
                        "SELECT o.id, o.topic, CASE WHEN o.seq IS NULL THEN o.payload \
                     ELSE CAST((SELECT payload FROM published p WHERE p.seq = o.seq) AS BLOB) \
                     END, o.qos, o.retain, o.created_ms FROM outbox o \
                     WHERE id > ?1 ORDER BY id",
                    )
                })
                .or_else(|_| {
                    conn.prepare(
                        "SELECT id, topic, payload, qos, retain, created_ms FROM outbox \
                         WHERE id > ?1 ORDER BY id",
                    )
                })
            else {
                return;
            };
            let Ok(mut rows) = stmt.query([after]) else {
                return;
            };
            let mut progressed = false;
            loop {
                match rows.next() {
                    Ok(Some(r)) => {
                        let row = (|| {
                            if rendered {
                                return super::outbox_row(r)?.ok_or(rusqlite::Error::InvalidQuery);
                            }
                            Ok::<_, rusqlite::Error>(OutboxRow {
                                id: r.get(0)?,
                                topic: r.get(1)?,
                                payload: r.get(2)?,
                                qos: r.get(3)?,
                                retain: r.get(4)?,
                                created_ms: r.get(5)?,
                            })
                        })();
                        if let Ok(row) = row {
                            after = row.id;
                            self.outbox.push(row);
                            progressed = true;
                        }
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if progressed {
                step = 1;
            }
            after = after.saturating_add(step);
            step = step.saturating_mul(4);
        }
    }

    /// Each kind's last `kind_seq`: the highest of the old counter, the old recall copies and
    /// `known` (this process).
    fn kind_seqs(&self, known: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        let mut out = known.clone();
        let counters = self.meta.iter().filter_map(|(k, v)| {
            let kind = k.strip_prefix(super::keys::KIND_SEQ_PREFIX)?;
            Some((kind.to_string(), v.parse::<u64>().ok()?))
        });
        for (kind, last) in counters.chain(self.kind_seq_found.clone()) {
            let e = out.entry(kind).or_insert(0);
            *e = (*e).max(last);
        }
        out
    }

    /// The old file's kind floor (0 without one).
    fn kind_seq_floor(&self) -> u64 {
        self.meta
            .iter()
            .find(|(k, _)| *k == MetaKey::KindSeqFloor.key())
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }

    /// The new store's last `seq`: see the module documentation.
    fn seq(&self, known: Option<u64>, at_ms: i64) -> (u64, SeqSource) {
        let counter = match (known, self.last_seq) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        match counter {
            Some(c) if self.max_seq_found > c => (self.max_seq_found, SeqSource::HighestFound),
            Some(c) => (c, SeqSource::Counter),
            None => {
                let floor = at_ms.max(0) as u64;
                if self.max_seq_found > floor {
                    (self.max_seq_found, SeqSource::HighestFound)
                } else {
                    (floor, SeqSource::TimeFloor)
                }
            }
        }
    }
}

/// Every row `sql` yields until the end or the first error.
fn collect<T>(
    conn: &Connection,
    sql: &str,
    f: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    let Ok(mut stmt) = conn.prepare(sql) else {
        return out;
    };
    let Ok(mut rows) = stmt.query([]) else {
        return out;
    };
    while let Ok(Some(r)) = rows.next() {
        if let Ok(v) = f(r) {
            out.push(v);
        }
    }
    out
}

/// Renames the damaged file and its `-wal` and `-shm` to `{name}.damaged-{time}`; returns the
/// new name of the database file.
fn move_aside(path: &Path, at_ms: i64) -> Result<PathBuf, StoreError> {
    let stamp: String = rfc3339_ms(at_ms)
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut target = path.with_file_name(format!("{name}.damaged-{stamp}Z"));
    let mut n = 2;
    while target.exists() {
        target = path.with_file_name(format!("{name}.damaged-{stamp}Z-{n}"));
        n += 1;
    }
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", target.display()));
            std::fs::rename(&from, &to).map_err(|e| StoreError::Other {
                path: path.display().to_string(),
                message: format!("cannot move {} aside: {e}", from.display()),
            })?;
        }
    }
    if path.exists() {
        std::fs::rename(path, &target).map_err(|e| StoreError::Other {
            path: path.display().to_string(),
            message: format!("cannot move the damaged store aside: {e}"),
        })?;
    }
    Ok(target)
}

/// Whether an error opening or checking the store means "move it aside and start afresh"
/// (damage, or a file SQLite cannot open) rather than a condition to report (busy, full, a
/// newer schema, a foreign file, an unusable directory).
fn recoverable(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite { source, .. } => !matches!(
            source.sqlite_error_code(),
            Some(
                ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::DiskFull
                    | ErrorCode::OutOfMemory
            )
        ),
        _ => false,
    }
}

/// The page cache of the connection that checks the store, in KiB (SQLite's negative
/// `cache_size`).
const QUICK_CHECK_CACHE_KIB: i64 = -256;

impl Store {
    /// Opens the store at `path` like [`Store::open`], then checks it (`PRAGMA quick_check`).
    /// A store that fails to open or fails the check is moved aside and replaced by a fresh one
    /// with what could be salvaged; the [`Recovery`] says what happened.
    pub fn open_or_recover(
        path: &Path,
        cfg: &StoreSettings,
    ) -> Result<(Store, Option<Recovery>), StoreError> {
        let cause = match Store::open(path, cfg) {
            Ok(store) => match store.quick_check() {
                Ok(()) => return Ok((store, None)),
                Err(cause) => cause,
            },
            Err(e) if recoverable(&e) => e.to_string(),
            Err(e) => return Err(e),
        };
        let (store, recovery) = recover_file(path, cfg, &cause, 0, None, BTreeMap::new())?;
        Ok((store, Some(recovery)))
    }

    /// `PRAGMA quick_check` through a connection of its own, so it reads the file as it is on
    /// disk, not this connection's page cache. `Err` holds SQLite's findings.
    pub fn quick_check(&self) -> Result<(), String> {
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
        conn.busy_timeout(super::BUSY_TIMEOUT)
            .map_err(|e| e.to_string())?;
        // The check reads every page once: SQLite's default cache (2 MB) filled with them
        // only raised the daemon's memory for the seconds of each check (every 15 minutes).
        conn.pragma_update(None, "cache_size", QUICK_CHECK_CACHE_KIB)
            .map_err(|e| e.to_string())?;
        let lines = conn
            .prepare("PRAGMA quick_check(20)")
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(|e| e.to_string())?;
        if lines.len() == 1 && lines[0] == "ok" {
            Ok(())
        } else {
            Err(format!("integrity check failed: {}", lines.join("; ")))
        }
    }

    /// The damage a statement reported since the last recovery ("database disk image is
    /// malformed"), if any.
    pub fn damage_seen(&self) -> Option<String> {
        self.damage.borrow().clone()
    }

    /// Moves the damaged file aside and continues on a fresh store with what could be
    /// salvaged (see the module documentation). This process's own `seq` and outbox ids are
    /// floors: nothing it gave out is given again.
    pub fn recover(&mut self, cause: &str) -> Result<Recovery, StoreError> {
        let floor = self.last_outbox_id;
        let known = self.last_seq_known();
        // Release the damaged file (the connection closes) before it is renamed.
        self.conn = Connection::open_in_memory().map_err(|e| self.err(e))?;
        match recover_file(
            &self.path,
            &self.cfg,
            cause,
            floor,
            known,
            self.kind_seq_given.clone(),
        ) {
            Ok((fresh, recovery)) => {
                *self = fresh;
                Ok(recovery)
            }
            Err(e) => {
                if let Ok(again) = Store::open(&self.path, &self.cfg) {
                    *self = again;
                }
                Err(e)
            }
        }
    }

    /// The last `seq` this connection knows for sure (None when the counter is unreadable).
    fn last_seq_known(&self) -> Option<u64> {
        self.last_seq_given.max(read_last_seq(&self.conn).ok())
    }
}

/// Salvages, moves aside and replaces the store at `path`.
fn recover_file(
    path: &Path,
    cfg: &StoreSettings,
    cause: &str,
    outbox_floor: i64,
    known_seq: Option<u64>,
    known_kind_seqs: BTreeMap<String, u64>,
) -> Result<(Store, Recovery), StoreError> {
    let at_ms = now_ms();
    let salvage = Salvage::read(path);
    let moved_to = move_aside(path, at_ms)?;
    let mut fresh = Store::open(path, cfg)?;
    let (last_seq, seq_source) = salvage.seq(known_seq, at_ms);
    let name = path.display().to_string();
    let sql = |e| StoreError::from_sqlite(&name, e);
    let tx = fresh.conn.transaction().map_err(sql)?;
    {
        let mut outbox = tx
            .prepare(
                "INSERT OR IGNORE INTO outbox (id, topic, payload, qos, retain, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(sql)?;
        for r in &salvage.outbox {
            outbox
                .execute(params![
                    r.id,
                    r.topic,
                    r.payload,
                    r.qos,
                    r.retain,
                    r.created_ms
                ])
                .map_err(sql)?;
        }
        let mut meta = tx
            .prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
            .map_err(sql)?;
        for (k, v) in &salvage.meta {
            meta.execute(params![k, v]).map_err(sql)?;
        }
        meta.execute(params![MetaKey::LastSeq.key(), last_seq.to_string()])
            .map_err(sql)?;
        // Each kind's counter goes on from the highest value known: the old counter, the
        // highest found in the old recall copies, what this process gave out. When the old
        // counters could not be read, every kind starts above the time floor instead.
        for (kind, last) in salvage.kind_seqs(&known_kind_seqs) {
            meta.execute(params![MetaKey::KindSeq(kind).key(), last.to_string()])
                .map_err(sql)?;
        }
        if salvage.last_seq.is_none() {
            let floor = salvage.kind_seq_floor().max(at_ms.max(0) as u64);
            meta.execute(params![MetaKey::KindSeqFloor.key(), floor.to_string()])
                .map_err(sql)?;
        }
        let mut states = tx
            .prepare(
                "INSERT OR REPLACE INTO meter_status (meter, status_json, updated_ms) \
                 VALUES (?1, ?2, ?3)",
            )
            .map_err(sql)?;
        for (m, j, t) in &salvage.meter_status {
            states.execute(params![m, j, t]).map_err(sql)?;
        }
        // Outbox ids never go back (AUTOINCREMENT): the uplink's cursor still points into the
        // old file's ids, so the new ones start above every id the old file or this process gave.
        let floor = outbox_floor.max(salvage.max_outbox_id);
        let updated = tx
            .execute(
                "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'outbox'",
                [floor],
            )
            .map_err(sql)?;
        if updated == 0 {
            tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?1)",
                [floor],
            )
            .map_err(sql)?;
        }
    }
    tx.commit().map_err(sql)?;
    fresh.last_outbox_id = outbox_floor.max(salvage.max_outbox_id);
    fresh.last_seq_given = Some(last_seq);
    fresh.kind_seq_given = salvage.kind_seqs(&known_kind_seqs);
    let recovery = Recovery {
        moved_to,
        cause: cause.to_string(),
        messages_salvaged: salvage.outbox.len(),
        meta_salvaged: salvage.meta.len(),
        meter_states_salvaged: salvage.meter_status.len(),
        last_seq,
        seq_source,
        at_ms,
    };
    Ok((fresh, recovery))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_wins_unless_a_higher_seq_was_found_and_time_is_the_floor_without_it() {
        let mut s = Salvage {
            last_seq: Some(100),
            ..Default::default()
        };
        assert_eq!(s.seq(None, 5_000), (100, SeqSource::Counter));
        assert_eq!(s.seq(Some(120), 5_000), (120, SeqSource::Counter));
        s.max_seq_found = 130;
        assert_eq!(s.seq(None, 5_000), (130, SeqSource::HighestFound));
        s.last_seq = None;
        assert_eq!(s.seq(None, 5_000), (5_000, SeqSource::TimeFloor));
        assert_eq!(s.seq(None, 100), (130, SeqSource::HighestFound));
    }

    #[test]
    fn a_foreign_file_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("amr-gateway.db");
        std::fs::write(&text, "hello, not a database\n").unwrap();
        let before = std::fs::read(&text).unwrap();
        let e = Store::open(&text, &test_cfg()).unwrap_err();
        assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
        assert_eq!(std::fs::read(&text).unwrap(), before);

        let other = dir.path().join("other.db");
        {
            let c = Connection::open(&other).unwrap();
            c.execute_batch(
                "CREATE TABLE customers (id INTEGER); INSERT INTO customers VALUES (1);",
            )
            .unwrap();
        }
        let before = std::fs::read(&other).unwrap();
        let e = Store::open_or_recover(&other, &test_cfg()).unwrap_err();
        assert!(e.to_string().contains("tables customers"), "{e}");
        assert_eq!(
            std::fs::read(&other).unwrap(),
            before,
            "not switched to WAL"
        );
        assert!(!dir.path().join("other.db-wal").exists());
    }

    #[test]
    fn a_data_dir_that_is_a_file_is_named_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, "").unwrap();
        let e = check_data_dir(&file).unwrap_err().to_string();
        assert!(
            e.contains("is not a directory") && e.contains("data_dir"),
            "{e}"
        );
    }

    #[test]
    fn a_recovery_carries_the_unsent_outbox_with_its_ids_and_seq_and_ids_go_on_above() {
        use crate::store::{Batch, Message};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("amr-gateway.db");
        let mut store = Store::open(&path, &test_cfg()).unwrap();
        let message = |i: i64| Message {
            topic: format!("amr/gw/reading/m{i}"),
            payload: serde_json::json!({"meter": format!("m{i}")}).into(),
            qos: 1,
            retain: false,
            sequenced: true,
        };
        let batch = Batch {
            messages: (0..5).map(message).collect(),
            ..Default::default()
        };
        let ids = store.commit(&batch).unwrap().outbox_ids;
        store.ack(&ids[3..]).unwrap();
        store
            .set_meta(&MetaKey::BlockLimit("m1".into()), "40")
            .unwrap();
        let r = store.recover("test damage").unwrap();
        assert!(r.moved_to.exists());
        assert_eq!((r.messages_salvaged, r.last_seq), (3, 5));
        assert_eq!(r.seq_source, SeqSource::Counter);
        let pending: Vec<i64> = store.pending(0, 10).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(pending, ids[..3]);
        assert_eq!(store.block_limits().unwrap().get("m1"), Some(&40));
        let next = store
            .commit(&Batch {
                messages: vec![message(9)],
                ..Default::default()
            })
            .unwrap();
        assert!(next.outbox_ids[0] > ids[4], "ids never go back");
        assert_eq!(next.seq_range, Some((6, 6)));
    }

    fn test_cfg() -> StoreSettings {
        StoreSettings {
            history_days: 35,
            max_size_mb: 1024,
            commit_window_ms: 0,
        }
    }
}
