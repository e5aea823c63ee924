//! The store's schema as an ordered list of migrations, keyed by `PRAGMA user_version`.
//!
//! A later feature (loss records, alarms, meter health, learned block limits) adds its tables
//! by appending a [`Migration`]; a file written by an older version is brought up to date on
//! open, step by step, each step in its own transaction together with its `user_version`
//! bump and its `schema_version` record. Never edit a step that has shipped: add another.
//!
//! Every released version has a fixture store (`tests/fixtures/stores/v{N}.sqlite`, written by
//! `tests/fixtures/stores/make.py` with the SQL of the commit that shipped it);
//! `tests/migrations.rs` opens each, checks its data survives, and fails when a step is added
//! without its fixture.

use super::StoreError;
use rusqlite::{Connection, params};

/// One schema step.
pub(crate) struct Migration {
    /// The `user_version` the file has after this step; steps are numbered 1, 2, 3, ...
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Every schema step, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "history, outbox, meta, meter_state",
        sql: "
        CREATE TABLE schema_version (
            version     INTEGER PRIMARY KEY,
            description TEXT NOT NULL,
            applied_ms  INTEGER NOT NULL
        );
        CREATE TABLE history (
            id          INTEGER PRIMARY KEY,
            meter       TEXT NOT NULL,
            ts_ms       INTEGER NOT NULL,
            values_json TEXT NOT NULL,
            quality     INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX history_meter_ts ON history (meter, ts_ms);
        CREATE INDEX history_ts ON history (ts_ms);
        CREATE TABLE outbox (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            topic      TEXT NOT NULL,
            payload    BLOB NOT NULL,
            qos        INTEGER NOT NULL,
            retain     INTEGER NOT NULL,
            created_ms INTEGER NOT NULL
        );
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE meter_state (
            meter      TEXT PRIMARY KEY,
            state_json TEXT NOT NULL,
            updated_ms INTEGER NOT NULL
        ) WITHOUT ROWID;
    ",
    },
    Migration {
        version: 2,
        description: "record: loss intervals, alarm events, voltage quality days",
        sql: "
        CREATE TABLE record (
            id        INTEGER PRIMARY KEY,
            kind      TEXT NOT NULL,
            subject   TEXT NOT NULL,
            ts_ms     INTEGER NOT NULL,
            body_json TEXT NOT NULL
        );
        CREATE INDEX record_kind_subject_ts ON record (kind, subject, ts_ms);
        CREATE INDEX record_ts ON record (ts_ms);
    ",
    },
    Migration {
        version: 3,
        description: "meter_status: each meter's last state typed (was the meter-state payload)",
        // The old rows hold the retained meter-state payload; their figures are carried over
        // (the success count back from the rounded rate), so a restart after the upgrade still
        // republishes every meter's state.
        sql: "
        CREATE TABLE meter_status (
            meter       TEXT PRIMARY KEY,
            status_json TEXT NOT NULL,
            updated_ms  INTEGER NOT NULL
        ) WITHOUT ROWID;
        INSERT INTO meter_status (meter, status_json, updated_ms)
        SELECT meter, json_object(
            'meter', meter,
            'bus', json_extract(state_json, '$.bus'),
            'unit', json_extract(state_json, '$.unit'),
            'model', json_extract(state_json, '$.model'),
            'ts_ms', coalesce(
                CAST(round(unixepoch(json_extract(state_json, '$.ts'), 'subsec') * 1000) AS INTEGER),
                updated_ms),
            'online', CASE json_extract(state_json, '$.state')
                WHEN 'online' THEN json('true') WHEN 'offline' THEN json('false') END,
            'last_ok_ms',
                CAST(round(unixepoch(json_extract(state_json, '$.last_ok'), 'subsec') * 1000) AS INTEGER),
            'polls', coalesce(json_extract(state_json, '$.polls'), 0),
            'successes', CAST(round(coalesce(json_extract(state_json, '$.polls'), 0)
                * coalesce(json_extract(state_json, '$.success_rate_pct'), 0) / 100.0) AS INTEGER),
            'timeouts', coalesce(json_extract(state_json, '$.timeouts'), 0),
            'crc_errors', coalesce(json_extract(state_json, '$.crc_errors'), 0),
            'wrong_unit', coalesce(json_extract(state_json, '$.wrong_unit'), 0),
            'exceptions', coalesce(json_extract(state_json, '$.exceptions'), 0),
            'consecutive_failures', coalesce(json_extract(state_json, '$.consecutive_failures'), 0),
            'latency_ms', json_extract(state_json, '$.latency_ms'),
            'last_error', json_extract(state_json, '$.last_error')
        ), updated_ms
        FROM meter_state
        WHERE json_valid(state_json) AND json_type(state_json, '$.bus') = 'text';
        DROP TABLE meter_state;
    ",
    },
    Migration {
        version: 4,
        description: "commands: ids seen, audit; published: every sequenced message by seq, for recall",
        // `published` is filled by a trigger on the outbox, so every sequenced message is kept
        // by its seq in the same transaction that gave the seq out, whatever code commits it;
        // acknowledged outbox rows are still deleted. It is pruned with the history
        // (`Store::prune_recall`).
        sql: "
        CREATE TABLE command_seen (
            id      TEXT PRIMARY KEY,
            seen_ms INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE command_audit (
            id          INTEGER PRIMARY KEY,
            received_ms INTEGER NOT NULL,
            command_id  TEXT,
            key_id      TEXT,
            name        TEXT,
            state       TEXT NOT NULL,
            reason      TEXT,
            updated_ms  INTEGER NOT NULL
        );
        CREATE INDEX command_audit_command ON command_audit (command_id);
        CREATE TABLE published (
            seq        INTEGER PRIMARY KEY,
            topic      TEXT NOT NULL,
            payload    TEXT NOT NULL,
            created_ms INTEGER NOT NULL
        );
        CREATE INDEX published_created ON published (created_ms);
        CREATE TRIGGER published_copy AFTER INSERT ON outbox
        WHEN json_valid(CAST(NEW.payload AS TEXT))
            AND json_type(CAST(NEW.payload AS TEXT), '$.seq') = 'integer'
        BEGIN
            INSERT OR IGNORE INTO published (seq, topic, payload, created_ms)
            VALUES (json_extract(CAST(NEW.payload AS TEXT), '$.seq'), NEW.topic,
                    CAST(NEW.payload AS TEXT), NEW.created_ms);
        END;
    ",
    },
    Migration {
        version: 5,
        description: "published: each copy's kind and time, for recall by time range",
        // `kind` and `ts_ms` are set by `Store::commit` in the transaction that gives the seq
        // out; copies made before this step have no kind (recall them by seq) and their
        // creation time as their time.
        sql: "
        ALTER TABLE published ADD COLUMN kind TEXT;
        ALTER TABLE published ADD COLUMN ts_ms INTEGER;
        UPDATE published SET ts_ms = created_ms;
        CREATE INDEX published_kind_ts ON published (kind, ts_ms);
    ",
    },
    Migration {
        version: 6,
        description: "history: values as numbers by layout, no per-meter index; outbox refers to published by seq",
        // A reading's values are kept as little-endian f64 in the order of its layout (the
        // sorted quantity names as a JSON array, stored once in `history_layout`) instead of
        // JSON text with names; rows written before keep their `values_json` (new rows have it
        // empty). The (meter, ts) index wrote a page of its own for nearly every reading (one
        // leaf per meter); by time alone the history is written at its end.
        //
        // A sequenced message is stored once: its payload in `published` (written by
        // `Store::commit`), the outbox row naming it by `seq` with an empty payload. Rows
        // written before keep their payload (and their copy by the trigger).
        sql: "
        CREATE TABLE history_layout (
            id    INTEGER PRIMARY KEY,
            names TEXT NOT NULL UNIQUE
        );
        ALTER TABLE history ADD COLUMN layout INTEGER;
        ALTER TABLE history ADD COLUMN values_blob BLOB;
        DROP INDEX history_meter_ts;
        ALTER TABLE outbox ADD COLUMN seq INTEGER;
    ",
    },
    Migration {
        version: 7,
        description: "history: a reading's seq, kind_seq and clock mark; record: a kept message's seq, kind_seq and topic; neither has a published copy",
        // A reading is stored once: its history row carries what its message added (`seq`,
        // `kind_seq`, the `"clock": "unsynchronized"` mark), the outbox row names it by seq
        // with an empty payload, and the message is rendered again from the row when it is
        // sent or recalled (`Store::pending`, `recall`) — the `published` copy (about 700
        // bytes of JSON a reading) is gone. The index covers only the rows that have a seq
        // and grows at its end like the seqs, so a commit touches one of its pages. Readings
        // and copies written before keep their `published` copy. (No step for the compact
        // values of `values_blob`, `store::reading_values`: a blob shorter than 8 bytes a value
        // is compact, one of exactly 8 bytes a value plain f64 as step 6 wrote it.)
        //
        // A kept message (curve, loss, freeze, voltage day/month, collection, daily loss,
        // alarm) is stored once the same way, as its `record` row: its body is the payload
        // before numbering, the row carries the message's `seq`, `kind_seq` and topic
        // (`store::record_message`).
        sql: "
        ALTER TABLE history ADD COLUMN seq INTEGER;
        ALTER TABLE history ADD COLUMN kind_seq INTEGER;
        ALTER TABLE history ADD COLUMN clock_unsynchronized INTEGER;
        CREATE INDEX history_seq ON history (seq) WHERE seq IS NOT NULL;
        ALTER TABLE record ADD COLUMN seq INTEGER;
        ALTER TABLE record ADD COLUMN kind_seq INTEGER;
        ALTER TABLE record ADD COLUMN topic TEXT;
        CREATE INDEX record_seq ON record (seq) WHERE seq IS NOT NULL;
    ",
    },
];

/// Brings the file to the newest schema this version knows. A brand-new file first gets
/// `auto_vacuum=INCREMENTAL` (it only takes effect before the first table is created).
/// Errors carry an empty path; the caller names the file with [`StoreError::with_path`].
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let sql = |source| StoreError::from_sqlite("", source);
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    let newest = MIGRATIONS.last().map_or(0, |m| m.version);
    if current > newest {
        return Err(StoreError::Other {
            path: String::new(),
            message: format!(
                "schema version {current} is newer than this amr-gateway knows ({newest}); \
                 run a newer amr-gateway or move the file away"
            ),
        });
    }
    if current == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(sql)?;
    }
    for step in MIGRATIONS.iter().filter(|m| m.version > current) {
        let tx = conn.transaction().map_err(sql)?;
        tx.execute_batch(step.sql).map_err(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, description, applied_ms) VALUES (?1, ?2, ?3)",
            params![step.version, step.description, crate::clock::now_ms()],
        )
        .map_err(sql)?;
        tx.pragma_update(None, "user_version", step.version)
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
    Ok(())
}

impl StoreError {
    /// The same error, naming `path`.
    pub(crate) fn with_path(self, path: &str) -> StoreError {
        match self {
            StoreError::Full { .. } => StoreError::Full { path: path.into() },
            StoreError::Sqlite { source, .. } => StoreError::Sqlite {
                path: path.into(),
                source,
            },
            StoreError::Other { message, .. } => StoreError::Other {
                path: path.into(),
                message,
            },
            other @ (StoreError::Foreign { .. } | StoreError::DataDir { .. }) => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_one_by_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.description);
        }
    }
}
