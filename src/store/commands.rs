//! What the store keeps for commands from the headend: the ids of authentic commands already
//! seen (replay is refused across restarts), an audit record of every command, accepted or not,
//! with its state as it moves on, and the copy of every sequenced message by its original
//! `seq` that `recall` re-publishes: a `published` copy, or (schema 7) for a reading its
//! history row and for a kept message its record row, from which the message is rendered
//! again as it was.

use super::{RecordKind, Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// One audit record: what arrived and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandAudit {
    /// The command's id; `None` when the command could not be read or was not authentic.
    pub command_id: Option<String>,
    pub key_id: Option<String>,
    pub name: Option<String>,
    /// `rejected`, `accepted`, `done` or `failed`.
    pub state: String,
    pub reason: Option<String>,
    pub received_ms: i64,
}

/// The audit records received since a moment, counted (for `status`, which runs in another
/// process than the daemon's in-memory rejection counters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandCounts {
    /// Records by their state now: `rejected`, `accepted` (still running), `done`, `failed`.
    pub by_state: std::collections::BTreeMap<String, u64>,
    /// Rejected records by key id (`-` when the command named none or was unreadable).
    pub rejected_by_key: std::collections::BTreeMap<String, u64>,
    /// The latest rejection.
    pub last_rejected: Option<CommandAudit>,
}

/// A sequenced message as it was first published.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub seq: u64,
    pub topic: String,
    /// The JSON payload, `seq` included.
    pub payload: String,
}

impl Store {
    /// True when a command with this id was seen before (authentic commands only are noted).
    pub fn command_seen(&self, id: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row("SELECT 1 FROM command_seen WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    /// Keeps an audit record (and, when it carries an id, notes the id as seen) in one
    /// transaction; returns the record's row id for [`Store::update_command`].
    pub fn record_command(&mut self, audit: &CommandAudit) -> Result<i64, StoreError> {
        let path = self.path.display().to_string();
        let sql = |e| StoreError::from_sqlite(&path, e);
        let tx = self.conn.transaction().map_err(sql)?;
        if let Some(id) = &audit.command_id {
            tx.execute(
                "INSERT OR IGNORE INTO command_seen (id, seen_ms) VALUES (?1, ?2)",
                params![id, audit.received_ms],
            )
            .map_err(sql)?;
        }
        tx.execute(
            "INSERT INTO command_audit (received_ms, command_id, key_id, name, state, reason, \
             updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?1)",
            params![
                audit.received_ms,
                audit.command_id,
                audit.key_id,
                audit.name,
                audit.state,
                audit.reason
            ],
        )
        .map_err(sql)?;
        let row = tx.last_insert_rowid();
        tx.commit().map_err(sql)?;
        Ok(row)
    }

    /// The new state (and reason) of an audited command.
    pub fn update_command(
        &mut self,
        row: i64,
        state: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE command_audit SET state = ?2, reason = ?3, updated_ms = ?4 WHERE id = ?1",
                params![row, state, reason, now_ms],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The new state (and reason) of the latest audit record of command `id` (a command
    /// answered by a later generation of the gateway, such as `config_apply`).
    pub fn finish_command(
        &mut self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE command_audit SET state = ?2, reason = ?3, updated_ms = ?4 WHERE id = \
                 (SELECT max(id) FROM command_audit WHERE command_id = ?1 AND state != 'rejected')",
                params![id, state, reason, now_ms],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The audit records received at or after `since_ms`, counted by state and (rejections)
    /// by key, with the latest rejection.
    pub fn command_counts(&self, since_ms: i64) -> Result<CommandCounts, StoreError> {
        let mut counts = CommandCounts::default();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT state, coalesce(key_id, '-'), count(*) FROM command_audit \
                 WHERE received_ms >= ?1 GROUP BY 1, 2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([since_ms], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        for (state, key, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            if state == "rejected" {
                *counts.rejected_by_key.entry(key).or_default() += n;
            }
            *counts.by_state.entry(state).or_default() += n;
        }
        counts.last_rejected = self
            .conn
            .query_row(
                "SELECT command_id, key_id, name, state, reason, received_ms FROM command_audit \
                 WHERE state = 'rejected' AND received_ms >= ?1 ORDER BY id DESC LIMIT 1",
                [since_ms],
                |r| {
                    Ok(CommandAudit {
                        command_id: r.get(0)?,
                        key_id: r.get(1)?,
                        name: r.get(2)?,
                        state: r.get(3)?,
                        reason: r.get(4)?,
                        received_ms: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(counts)
    }

    /// The audit records, newest first, at most `limit`.
    pub fn command_audit(&self, limit: usize) -> Result<Vec<CommandAudit>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT command_id, key_id, name, state, reason, received_ms FROM command_audit \
                 ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(CommandAudit {
                command_id: r.get(0)?,
                key_id: r.get(1)?,
                name: r.get(2)?,
                state: r.get(3)?,
                reason: r.get(4)?,
                received_ms: r.get(5)?,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| self.err(e))
    }

    /// Sequenced messages with `from <= seq <= to`, by seq, at most `limit`.
    pub fn published(
        &self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Published>, StoreError> {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let copies = self.copies(
            "seq BETWEEN ?1 AND ?2 ORDER BY seq LIMIT ?3",
            params![clamp(from), clamp(to), clamp(limit as u64)],
        )?;
        let readings = self.reading_messages(
            "h.seq BETWEEN ?1 AND ?2 ORDER BY h.seq LIMIT ?3",
            params![clamp(from), clamp(to), clamp(limit as u64)],
        )?;
        let kept = self.record_messages(
            "seq BETWEEN ?1 AND ?2 ORDER BY seq LIMIT ?3",
            params![clamp(from), clamp(to), clamp(limit as u64)],
        )?;
        Ok(merge_by_seq(
            merge_by_seq(copies, readings, limit),
            kept,
            limit,
        ))
    }

    /// The recall copies in `published` (every sequenced message that is neither a reading
    /// nor a kept message stored as its record) that the condition `filter` selects.
    fn copies(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<Published>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT seq, topic, payload FROM published WHERE {filter}"
            ))
            .map_err(|e| self.err(e))?;
        stmt.query_map(args, |r| {
            Ok(Published {
                seq: r.get::<_, i64>(0)? as u64,
                topic: r.get(1)?,
                payload: r.get(2)?,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| self.err(e))
    }

    /// The kept messages (schema 7: stored as their record rows) that the condition `filter`
    /// on `record` selects, rendered as they were published.
    fn record_messages(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<Published>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT seq, kind_seq, topic, body_json FROM record \
                 WHERE seq IS NOT NULL AND {filter}"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, i64>(0)?.max(0) as u64,
                    r.get::<_, Option<i64>>(1)?.unwrap_or(0).max(0) as u64,
                    r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    r.get::<_, String>(3)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(seq, kind_seq, topic, body)| {
                Some(Published {
                    seq,
                    topic,
                    payload: super::record_message::render(&body, seq, kind_seq)?,
                })
            })
            .collect())
    }

    /// The messages of the readings (schema 7: stored as their history rows) that the
    /// condition `filter` on `history h` selects, rendered as they were published.
    fn reading_messages(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<Published>, StoreError> {
        let Some(base) = self.reading_topic.clone() else {
            return Ok(Vec::new()); // No reading was ever stored as its history row.
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT h.seq, h.meter, h.ts_ms, h.values_json, l.names, h.values_blob, \
                 h.kind_seq, h.clock_unsynchronized FROM history h \
                 LEFT JOIN history_layout l ON l.id = h.layout \
                 WHERE h.seq IS NOT NULL AND {filter}"
            ))
            .map_err(|e| self.err(e))?;
        stmt.query_map(args, |r| {
            let seq = r.get::<_, i64>(0)?.max(0) as u64;
            let reading = super::reading_from_columns(r, 1)?;
            let kind_seq = r.get::<_, Option<i64>>(6)?.unwrap_or(0).max(0) as u64;
            let clock = r.get::<_, Option<i64>>(7)?.is_some_and(|c| c != 0);
            let payload = super::reading_message::render(&reading, seq, kind_seq, clock);
            Ok(Published {
                seq,
                topic: super::reading_message::reading_topic(&base, &reading.meter),
                payload: String::from_utf8(payload).expect("JSON is UTF-8"),
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| self.err(e))
    }

    /// Sequenced messages of `kind` whose time (their `ts`, or the end of the interval they
    /// cover) is in `from_ms..to_ms` and whose topic matches the GLOB `topic`, by seq, at
    /// most `limit`.
    pub fn published_by_kind(
        &self,
        kind: &str,
        from_ms: i64,
        to_ms: i64,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<Published>, StoreError> {
        let max = i64::try_from(limit).unwrap_or(i64::MAX);
        let copies = self.copies(
            "kind = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 AND topic GLOB ?4 ORDER BY seq LIMIT ?5",
            params![kind, from_ms, to_ms, topic, max],
        )?;
        if kind != super::READING_KIND {
            // Kept messages stored as their records: their kind and time are in the body
            // (the time as `Store::commit` gave it to the copies). A record's own time is its
            // message's or the start of the interval the message covers (a month at most), so
            // the records' time index narrows the search first.
            const MARGIN_MS: i64 = 40 * 86_400_000;
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT seq, body_json FROM record WHERE ts_ms >= ?3 AND ts_ms < ?4 \
                     AND seq IS NOT NULL AND json_extract(body_json, '$.kind_seq') = ?1 \
                     AND topic GLOB ?2 ORDER BY seq",
                )
                .map_err(|e| self.err(e))?;
            let window = (
                from_ms.saturating_sub(MARGIN_MS),
                to_ms.saturating_add(MARGIN_MS),
            );
            let seqs: Vec<(i64, String)> = stmt
                .query_map(params![kind, topic, window.0, window.1], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| self.err(e))?;
            let mut kept = Vec::new();
            for (seq, body) in seqs {
                let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&body) else {
                    continue;
                };
                let ts = super::message_time(&map);
                if ts.is_some_and(|t| t >= from_ms && t < to_ms) {
                    kept.extend(self.record_messages("seq = ?1", [seq])?);
                    if kept.len() >= limit {
                        break;
                    }
                }
            }
            return Ok(merge_by_seq(copies, kept, limit));
        }
        let base = self.reading_topic.clone().unwrap_or_default();
        let readings = self.reading_messages(
            "h.ts_ms >= ?1 AND h.ts_ms < ?2 AND (?3 || '/reading/' || h.meter) GLOB ?4 \
             ORDER BY h.seq LIMIT ?5",
            params![from_ms, to_ms, base, topic, max],
        )?;
        Ok(merge_by_seq(copies, readings, limit))
    }

    /// Deletes the recall copies and the seen command ids from before `cutoff_ms` (the
    /// history's cutoff: called by [`Store::prune_step`]), at most `limit` copies of those
    /// numbered below `below_seq` (the oldest unsent message's); returns how many went. The
    /// copies of billing messages (freezes, collection, daily loss, voltage months) are kept
    /// as long as their records ([`RecordKind::keep_days`]), so `recall` finds what `status`
    /// still shows.
    pub(super) fn prune_recall(
        &mut self,
        cutoff_ms: i64,
        now_ms: i64,
        below_seq: i64,
        limit: i64,
    ) -> Result<usize, StoreError> {
        let keep = |kind: RecordKind| {
            cutoff_ms.min(now_ms - i64::from(kind.keep_days().unwrap_or(0)) * 86_400_000)
        };
        let days = keep(RecordKind::FreezeDay);
        let months = keep(RecordKind::FreezeMonth);
        let n = self
            .conn
            .execute(
                "DELETE FROM published WHERE seq IN (SELECT seq FROM published \
                 WHERE created_ms < ?1 AND seq < ?4 AND CASE \
                 WHEN kind = 'freeze' AND json_extract(payload, '$.kind') = 'month' \
                     THEN created_ms < ?3 \
                 WHEN kind IN ('voltage_month', 'voltage_area_month') THEN created_ms < ?3 \
                 WHEN kind IN ('freeze', 'collection', 'loss_day') THEN created_ms < ?2 \
                 ELSE 1 END LIMIT ?5)",
                params![cutoff_ms, days, months, below_seq, limit],
            )
            .map_err(|e| self.err(e))?;
        self.conn
            .execute("DELETE FROM command_seen WHERE seen_ms < ?1", [cutoff_ms])
            .map_err(|e| self.err(e))?;
        Ok(n)
    }
}

/// Two lists ordered by seq as one, at most `limit` long.
fn merge_by_seq(mut a: Vec<Published>, b: Vec<Published>, limit: usize) -> Vec<Published> {
    a.extend(b);
    a.sort_by_key(|p| p.seq);
    a.dedup_by_key(|p| p.seq);
    a.truncate(limit);
    a
}

#[cfg(test)]
mod tests {
    use crate::store::{Batch, Message, Store, StoreSettings};

    fn open(dir: &std::path::Path) -> Store {
        let cfg = StoreSettings {
            history_days: 35,
            max_size_mb: 1024,
            commit_window_ms: 0,
        };
        Store::open(&dir.join("amr.db"), &cfg).unwrap()
    }

    fn of_kind(kind: &str, n: u64, ts: &str) -> Message {
        Message {
            topic: format!("amr/gw/{kind}/m{n}"),
            payload: serde_json::json!({"n": n, "ts": ts, "kind_seq": kind}).into(),
            qos: 1,
            retain: false,
            sequenced: true,
        }
    }

    fn kind_seqs(s: &Store, from: u64) -> Vec<(u64, String, u64)> {
        s.published(from, u64::MAX, 100)
            .unwrap()
            .into_iter()
            .map(|p| {
                let v: serde_json::Value = serde_json::from_str(&p.payload).unwrap();
                let kind = p.topic.split('/').nth(2).unwrap().to_string();
                (p.seq, kind, v["kind_seq"].as_u64().unwrap())
            })
            .collect()
    }

    #[test]
    fn each_kind_counts_on_its_own_across_reopen_and_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let t = "2026-11-29T08:00:00.000Z";
        {
            let mut s = open(dir.path());
            let batch = Batch {
                messages: vec![
                    of_kind("reading", 1, t),
                    of_kind("alarm", 2, t),
                    of_kind("reading", 3, t),
                ],
                ..Default::default()
            };
            s.commit(&batch).unwrap();
            assert_eq!(
                kind_seqs(&s, 1),
                [
                    (1, "reading".into(), 1),
                    (2, "alarm".into(), 1),
                    (3, "reading".into(), 2)
                ]
            );
            // The copy knows its kind and its time, for recall by time.
            let found = s
                .published_by_kind("reading", 0, i64::MAX, "*", 10)
                .unwrap();
            assert_eq!(found.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 3]);
        }
        let mut s = open(dir.path());
        s.commit(&Batch {
            messages: vec![of_kind("reading", 4, t)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(kind_seqs(&s, 4), [(4, "reading".into(), 3)]);
        // A store recovered while running goes on from where each kind was.
        s.recover("test").unwrap();
        s.commit(&Batch {
            messages: vec![of_kind("reading", 5, t), of_kind("alarm", 6, t)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            kind_seqs(&s, 5),
            [(5, "reading".into(), 4), (6, "alarm".into(), 2)]
        );
    }

    #[test]
    fn seen_ids_and_recall_copies_survive_a_reopen_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(dir.path());
            let audit = super::CommandAudit {
                command_id: Some("c-1".into()),
                key_id: Some("k".into()),
                name: Some("ping".into()),
                state: "accepted".into(),
                reason: None,
                received_ms: 1,
            };
            let row = s.record_command(&audit).unwrap();
            s.update_command(row, "done", None, 2).unwrap();
            let message = |n: u64, sequenced| Message {
                topic: format!("amr/gw/reading/m{n}"),
                payload: serde_json::json!({"n": n}).into(),
                qos: 1,
                retain: false,
                sequenced,
            };
            let batch = Batch {
                messages: vec![message(1, true), message(2, false), message(3, true)],
                ..Default::default()
            };
            let report = s.commit(&batch).unwrap();
            s.ack(&report.outbox_ids).unwrap();
        }
        let s = open(dir.path());
        assert!(s.command_seen("c-1").unwrap());
        assert!(!s.command_seen("c-2").unwrap());
        assert_eq!(s.command_audit(10).unwrap()[0].state, "done");
        let copies = s.published(1, 10, 100).unwrap();
        assert_eq!(copies.len(), 2);
        assert_eq!((copies[0].seq, copies[1].seq), (1, 2));
        assert_eq!(copies[1].topic, "amr/gw/reading/m3");
        let v: serde_json::Value = serde_json::from_str(&copies[1].payload).unwrap();
        assert_eq!(v["seq"], 2);
        assert_eq!(v["n"], 3);
    }

    #[test]
    fn audit_records_are_counted_by_state_and_rejections_by_key_since_a_moment() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let audit =
            |ms, key: Option<&str>, state: &str, reason: Option<&str>| super::CommandAudit {
                command_id: Some(format!("c-{ms}")),
                key_id: key.map(Into::into),
                name: Some("ping".into()),
                state: state.into(),
                reason: reason.map(Into::into),
                received_ms: ms,
            };
        s.record_command(&audit(10, Some("ops"), "rejected", Some("too old")))
            .unwrap();
        s.record_command(&audit(100, None, "rejected", Some("malformed command: x")))
            .unwrap();
        s.record_command(&audit(110, Some("ops"), "rejected", Some("replayed")))
            .unwrap();
        let row = s
            .record_command(&audit(120, Some("ops"), "accepted", None))
            .unwrap();
        s.update_command(row, "done", None, 121).unwrap();
        s.record_command(&audit(130, Some("ops"), "accepted", None))
            .unwrap();
        let c = s.command_counts(100).unwrap();
        let n = |k: &str| c.by_state.get(k).copied().unwrap_or(0);
        assert_eq!(
            (n("rejected"), n("done"), n("accepted"), n("failed")),
            (2, 1, 1, 0)
        );
        assert_eq!(c.rejected_by_key.get("-"), Some(&1));
        assert_eq!(c.rejected_by_key.get("ops"), Some(&1));
        let last = c.last_rejected.unwrap();
        assert_eq!(
            (last.received_ms, last.reason.as_deref()),
            (110, Some("replayed"))
        );
        assert_eq!(
            s.command_counts(1000).unwrap(),
            super::CommandCounts::default()
        );
    }
}
