//! The store: one SQLite database (WAL) in `data_dir` holding the reading history and the
//! outbox — everything that must reach the headend, written before it is sent.
//!
//! A poll batch (its history rows and its outbox messages) is one transaction, so after a
//! SIGKILL or power loss either all of it is there or none. The outbox assigns `seq`, which
//! increases by one for every sequenced message and survives restarts. A row leaves the outbox
//! only when the uplink reports its PUBACK.

use crate::model::Reading;

/// A message to publish, before the store gives it its place in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    /// JSON object; when `sequenced`, the store inserts `"seq"` into it.
    pub payload: serde_json::Value,
    pub qos: u8,
    pub retain: bool,
    pub sequenced: bool,
}

/// What one poll cycle (or one analytics step) produces, committed in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub readings: Vec<Reading>,
    pub messages: Vec<Message>,
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {path}: {message}")]
    Other { path: String, message: String },
}
