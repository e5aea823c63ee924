//! Pruning the store in bounded steps: history, records and recall copies past their age,
//! then, while the store is over `[store] max_size_mb`, the oldest of what may go.
//!
//! A [`Pruning`] remembers where it is; each [`Store::prune_step`] is one short transaction
//! deleting at most [`STEP_ROWS`] rows (or giving back [`VACUUM_PAGES`] free pages), so the
//! gateway runs the steps one at a time and the publisher and the writer use the store between
//! them. No step counts a table: the rows no unsent message refers to are found by the oldest
//! unsent `seq` (the outbox is sent in `seq` order, so every history row, record and recall
//! copy numbered below it is delivered or dropped), and the outbox is walked from where the
//! previous step stopped. What goes first is as it always was: expired rows, then over the
//! bound the oldest raw history, the oldest recall copies, unsent real-time messages (with
//! their history rows and copies, their only payload), kept records by
//! [`RecordKind::BY_PRUNE_ORDER`], and unsent billing messages last.

use super::{PruneReport, RECORD_UNREFERENCED, RecordKind, Store, StoreError, is_billing_topic};
use rusqlite::params;

/// Rows one step deletes at most (a few milliseconds of SQLite work on the gateway's flash).
pub const STEP_ROWS: i64 = 4096;
/// Outbox or history rows one step reads at most while looking for rows to delete.
const SCAN_ROWS: i64 = 16_384;
/// Free pages one step gives back to the filesystem (`PRAGMA incremental_vacuum`).
pub const VACUUM_PAGES: i64 = 4096;
/// What an unsent reading takes (its outbox and history rows), an estimate used to size a
/// step by how far the store is over its bound, so that it does not drop much more than it
/// must (docs/benchmarks.md (i): 208 bytes measured, with 26 values).
const ROW_BYTES: u64 = 224;
/// The same for a kept record (alarm events, curves: hundreds to thousands of bytes).
const RECORD_BYTES: u64 = 1024;

/// Where a pruning is, and what it deleted so far.
#[derive(Debug, Clone)]
pub struct Pruning {
    now_ms: i64,
    phase: Phase,
    report: PruneReport,
    steps: u64,
    /// The store was found over its bound.
    over: bool,
    /// The expired history walked so far: (ts ms, id) of the last row looked at.
    expired_after: (i64, i64),
    /// The outbox ids looked at for real-time, and for billing, messages to drop.
    realtime_after: i64,
    billing_after: i64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    ExpireHistory,
    /// Index into [`RecordKind::ALL`].
    ExpireRecords(usize),
    ExpireRecall,
    Bound,
    Vacuum,
    Done,
}

impl Pruning {
    /// A pruning as of `now_ms` (the age limits are computed from it).
    pub fn new(now_ms: i64) -> Pruning {
        Pruning {
            now_ms,
            phase: Phase::ExpireHistory,
            report: PruneReport::default(),
            steps: 0,
            over: false,
            expired_after: (i64::MIN, i64::MIN),
            realtime_after: 0,
            billing_after: 0,
        }
    }

    /// True once the store is under its bound (or nothing is left to delete) and its free
    /// pages are given back.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// True once the store was found over its bound (the steps that delete to bring it
    /// under have begun).
    pub fn found_over_bound(&self) -> bool {
        self.over
    }

    /// The steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// What was deleted so far (`used_bytes` is set once done).
    pub fn report(&self) -> &PruneReport {
        &self.report
    }

    /// What was deleted.
    pub fn into_report(self) -> PruneReport {
        self.report
    }
}

impl Store {
    /// Deletes history (and recall copies, seen command ids) older than `history_days`; then,
    /// while the used size exceeds `max_size_mb`, the oldest history, then the oldest recall
    /// copies, then the oldest unsent real-time messages, kept records (real-time kinds
    /// before billing ones), and unsent billing messages last. Returns what it deleted so the
    /// caller can warn ("store full: dropped N oldest unsent messages"). Frees pages with
    /// `incremental_vacuum` and truncates the WAL. All the [`Store::prune_step`]s at once:
    /// the gateway runs them one by one instead.
    pub fn prune(&mut self, now_ms: i64) -> Result<PruneReport, StoreError> {
        let mut pruning = Pruning::new(now_ms);
        while !pruning.is_done() {
            self.prune_step(&mut pruning)?;
        }
        Ok(pruning.into_report())
    }

    /// One step of `pruning`: one short transaction deleting at most [`STEP_ROWS`] rows, or
    /// giving back at most [`VACUUM_PAGES`] free pages. Call until [`Pruning::is_done`].
    pub fn prune_step(&mut self, pruning: &mut Pruning) -> Result<(), StoreError> {
        pruning.steps += 1;
        let cutoff = pruning.now_ms - i64::from(self.cfg.history_days) * 86_400_000;
        let unsent = self.oldest_unsent_seq()?;
        match pruning.phase {
            Phase::ExpireHistory => {
                let (deleted, walked) = self.expire_history(cutoff, unsent, pruning)?;
                pruning.report.expired_readings += deleted;
                if !walked {
                    pruning.phase = Phase::ExpireRecords(0);
                }
            }
            Phase::ExpireRecords(k) => {
                let kind = RecordKind::ALL[k];
                // Billing records (freezes, collection, daily loss) outlive a short history.
                let keep_from = match kind.keep_days() {
                    Some(days) => cutoff.min(pruning.now_ms - i64::from(days) * 86_400_000),
                    None => cutoff,
                };
                let deleted = self
                    .conn
                    .execute(
                        "DELETE FROM record WHERE id IN (SELECT id FROM record WHERE kind = ?1 \
                         AND ts_ms < ?2 AND (seq IS NULL OR seq < ?3) LIMIT ?4)",
                        params![kind.as_str(), keep_from, unsent, STEP_ROWS],
                    )
                    .map_err(|e| self.err(e))?;
                if (deleted as i64) < STEP_ROWS {
                    pruning.phase = if k + 1 < RecordKind::ALL.len() {
                        Phase::ExpireRecords(k + 1)
                    } else {
                        Phase::ExpireRecall
                    };
                }
            }
            Phase::ExpireRecall => {
                // Recall copies and seen command ids live as long as the history; the copies
                // of billing messages as long as their records.
                let deleted = self.prune_recall(cutoff, pruning.now_ms, unsent, STEP_ROWS)?;
                if (deleted as i64) < STEP_ROWS {
                    pruning.phase = Phase::Bound;
                }
            }
            Phase::Bound => {
                if !self.bound_step(unsent, pruning)? {
                    pruning.phase = Phase::Vacuum;
                }
            }
            Phase::Vacuum => {
                let free = || -> Result<i64, StoreError> {
                    self.conn
                        .pragma_query_value(None, "freelist_count", |r| r.get(0))
                        .map_err(|e| self.err(e))
                };
                let before = free()?;
                if before > 0 {
                    // The pragma frees one page for each row it returns: every row is read.
                    let mut stmt = self
                        .conn
                        .prepare(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))
                        .map_err(|e| self.err(e))?;
                    let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
                    while rows.next().map_err(|e| self.err(e))?.is_some() {}
                }
                // Done when no free page is left, or none was given back (a file made
                // without `auto_vacuum` keeps its free pages for its next rows).
                let after = free()?;
                if after == 0 || after >= before {
                    // Best effort: a concurrent reader may keep the WAL from being truncated.
                    self.checkpoint();
                    pruning.report.used_bytes = self.used_bytes()?;
                    pruning.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
        Ok(())
    }

    /// The `seq` of the oldest unsent sequenced message (`i64::MAX` when none): the outbox is
    /// sent in `seq` order and its ids follow the seqs, so this is its first numbered row. A
    /// history row, record or recall copy numbered below it is not an unsent message's
    /// payload.
    fn oldest_unsent_seq(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "SELECT coalesce((SELECT seq FROM outbox WHERE seq IS NOT NULL ORDER BY id \
                 LIMIT 1), 9223372036854775807)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Deletes up to [`STEP_ROWS`] history rows older than `cutoff` that no unsent message
    /// refers to, oldest first, walking on from where the last step stopped (an unsent
    /// reading's row is passed over, not looked at again). Returns how many went and whether
    /// the walk goes on.
    fn expire_history(
        &mut self,
        cutoff: i64,
        unsent: i64,
        pruning: &mut Pruning,
    ) -> Result<(usize, bool), StoreError> {
        let (after_ts, after_id) = pruning.expired_after;
        let rows: Vec<(i64, i64, Option<i64>)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT ts_ms, id, seq FROM history WHERE ts_ms < ?1 \
                     AND (ts_ms, id) > (?2, ?3) ORDER BY ts_ms, id LIMIT ?4",
                )
                .map_err(|e| self.err(e))?;
            stmt.query_map(params![cutoff, after_ts, after_id, STEP_ROWS], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?
        };
        let Some(&(ts, id, _)) = rows.last() else {
            return Ok((0, false));
        };
        pruning.expired_after = (ts, id);
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let mut deleted = 0;
        {
            let mut del = tx
                .prepare_cached("DELETE FROM history WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            for (_, id, seq) in &rows {
                if seq.is_none_or(|s| s < unsent) {
                    deleted += del.execute([id]).map_err(|e| self.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok((deleted, rows.len() as i64 == STEP_ROWS))
    }

    /// One step over the bound: when the store is over it, deletes the first of these that
    /// has rows (at most about what brings it under): the oldest history, the oldest recall
    /// copies, unsent real-time messages, records, unsent billing messages. False when the
    /// store is under its bound, or nothing is left that may go.
    fn bound_step(&mut self, unsent: i64, pruning: &mut Pruning) -> Result<bool, StoreError> {
        let max_bytes = self.cfg.max_size_mb.saturating_mul(1024 * 1024);
        let used = self.used_bytes()?;
        if used <= max_bytes {
            return Ok(false);
        }
        pruning.over = true;
        let rows = |bytes: u64| ((used - max_bytes) / bytes + 1).clamp(64, STEP_ROWS as u64) as i64;
        let report = &mut pruning.report;
        // The history from before readings were numbered (schema 7) is older than any
        // numbered row: it goes first, then the numbered rows of delivered readings (the rows
        // of unsent readings are their messages' only payload).
        let evicted = self
            .conn
            .execute(
                "DELETE FROM history WHERE id IN (SELECT id FROM history WHERE seq IS NULL \
                 AND id < coalesce((SELECT id FROM history WHERE seq IS NOT NULL ORDER BY seq \
                 LIMIT 1), 9223372036854775807) ORDER BY id LIMIT ?1)",
                [rows(ROW_BYTES)],
            )
            .map_err(|e| self.err(e))?;
        let evicted = match evicted {
            0 => self
                .conn
                .execute(
                    "DELETE FROM history WHERE id IN (SELECT id FROM history WHERE seq < ?1 \
                     ORDER BY seq LIMIT ?2)",
                    params![unsent, rows(ROW_BYTES)],
                )
                .map_err(|e| self.err(e))?,
            n => n,
        };
        if evicted > 0 {
            report.evicted_readings += evicted;
            return Ok(true);
        }
        // Then the recall copies of delivered sequenced messages, oldest first.
        let copies = self
            .conn
            .execute(
                "DELETE FROM published WHERE seq IN (SELECT seq FROM published WHERE seq < ?1 \
                 ORDER BY seq LIMIT ?2)",
                params![unsent, rows(ROW_BYTES)],
            )
            .map_err(|e| self.err(e))?;
        if copies > 0 {
            return Ok(true);
        }
        // Then unsent real-time messages (readings, alarms, states), oldest first.
        let (dropped, history, walked) =
            self.drop_unsent(rows(ROW_BYTES), false, &mut pruning.realtime_after)?;
        report.dropped_messages += dropped;
        report.evicted_readings += history;
        if dropped > 0 || walked {
            return Ok(true);
        }
        // Then the records kept for recall and `status`: real-time kinds first, billing kinds
        // last (curves before the small freezes and loss figures), oldest first. Only
        // billing messages are unsent by now: the records' check against them is cheap.
        // (The records of unsent kept messages are their messages' only payload: they stay
        // until their messages are sent or dropped.)
        for kind in RecordKind::BY_PRUNE_ORDER {
            let deleted = self
                .conn
                .execute(
                    &format!(
                        "DELETE FROM record WHERE id IN (SELECT id FROM record \
                         WHERE kind = ?1 AND {RECORD_UNREFERENCED} \
                         ORDER BY ts_ms, id LIMIT ?2)"
                    ),
                    params![kind.as_str(), rows(RECORD_BYTES)],
                )
                .map_err(|e| self.err(e))?;
            if deleted > 0 {
                report.dropped_records += deleted;
                return Ok(true);
            }
        }
        // Last, unsent billing messages.
        let (dropped, history, walked) =
            self.drop_unsent(rows(ROW_BYTES), true, &mut pruning.billing_after)?;
        report.dropped_messages += dropped;
        report.evicted_readings += history;
        // Nothing left to drop: the schema and meta alone are over the bound.
        Ok(dropped > 0 || walked)
    }

    /// Deletes up to `limit` of the oldest unsent outbox rows with an id above `*after` that
    /// carry billing data ([`is_billing_topic`]) when `billing`, otherwise of those that do
    /// not, with the history rows and recall copies that were their payload, in one
    /// transaction; looks at [`SCAN_ROWS`] rows at most and moves `*after` past those it
    /// looked at. Returns (messages, history rows) deleted and whether the walk goes on.
    fn drop_unsent(
        &mut self,
        limit: i64,
        billing: bool,
        after: &mut i64,
    ) -> Result<(usize, usize, bool), StoreError> {
        let mut rows = Vec::new();
        let mut looked = 0;
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT id, topic, seq FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
                )
                .map_err(|e| self.err(e))?;
            let mut found = stmt
                .query(params![*after, SCAN_ROWS])
                .map_err(|e| self.err(e))?;
            while let Some(row) = found.next().map_err(|e| self.err(e))? {
                looked += 1;
                let id: i64 = row.get(0).map_err(|e| self.err(e))?;
                *after = id;
                let topic: String = row.get(1).map_err(|e| self.err(e))?;
                if is_billing_topic(&topic) == billing {
                    rows.push((id, row.get::<_, Option<i64>>(2).map_err(|e| self.err(e))?));
                    if rows.len() as i64 >= limit {
                        break;
                    }
                }
            }
        }
        let walked = rows.len() as i64 >= limit || looked == SCAN_ROWS;
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let (mut dropped, mut history) = (0, 0);
        {
            let mut del = tx
                .prepare_cached("DELETE FROM outbox WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            let mut del_row = tx
                .prepare_cached("DELETE FROM history WHERE seq = ?1")
                .map_err(|e| self.err(e))?;
            let mut del_copy = tx
                .prepare_cached("DELETE FROM published WHERE seq = ?1")
                .map_err(|e| self.err(e))?;
            for (id, seq) in rows {
                dropped += del.execute([id]).map_err(|e| self.err(e))?;
                if let Some(seq) = seq {
                    history += del_row.execute([seq]).map_err(|e| self.err(e))?;
                    del_copy.execute([seq]).map_err(|e| self.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok((dropped, history, walked))
    }
}
