//! The command desk: takes each payload that arrived on `{prefix}/{gateway}/command`, has the
//! [`Authority`] check it (replay against the ids the store has seen, across restarts), keeps
//! an audit record of it in the store, answers on `{prefix}/{gateway}/command/result` through
//! the outbox (sequenced like every other message), and runs what was accepted: `recall` here
//! (it only needs the store), everything else through the composition root's [`Executor`].
//!
//! A rejection is one warning line and one more on the rejection counter; nothing runs.
//! An accepted command gets an `accepted` result at once and `done` (with its data) or
//! `failed` (with the reason) when it has run; commands run concurrently, so a slow `read`
//! does not hold up a `ping`.

use crate::clock::now_ms;
use crate::shutdown::Shutdown;
use crate::store::{Batch, CommandAudit, SharedStore, with_store};
use crate::uplink::command::{Accepted, Authority, Command, RecallRange};
use crate::uplink::contract::{CommandResult, Topics, command_result_message, recalled_message};
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

/// What a command returns: its data (`None`: nothing to say), or why it failed.
pub type Outcome = Result<Option<Value>, String>;

/// Runs accepted commands that need more than the store: provided by the composition root,
/// which knows the buses, the configuration and the status document.
pub trait Executor: Send + Sync + 'static {
    fn execute(&self, command: Command) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;
}

/// Most sequenced messages one `recall` re-publishes.
pub const RECALL_MAX: u64 = 10_000;
/// Recalled messages committed to the outbox at once; live data gets in between chunks.
const RECALL_CHUNK: usize = 200;
/// Pause between recall chunks, so that live data keeps flowing.
const RECALL_PAUSE: Duration = Duration::from_millis(50);

/// Answers to commands that are not authentic (unreadable, unknown key, bad signature) per
/// minute; beyond it such commands are only logged and counted, so that anyone who can
/// publish on the command topic cannot fill the outbox with answers.
const UNAUTHENTIC_ANSWERS_PER_MINUTE: usize = 30;

/// Rejections since start (also in each rejection's log line).
static REJECTED: AtomicU64 = AtomicU64::new(0);

/// Commands rejected since this process started.
pub fn rejected_total() -> u64 {
    REJECTED.load(Ordering::Relaxed)
}

/// Rejections since start by reason ([`RejectReason::kind`](super::command::RejectReason::kind)),
/// for the health message.
static REJECTED_BY_REASON: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Commands rejected since this process started, by reason.
pub fn rejected_by_reason() -> std::collections::BTreeMap<String, u64> {
    REJECTED_BY_REASON
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect()
}

/// Runs the desk until `shutdown` says stop or the uplink closes `payloads`; commands still
/// running are abandoned then (their audit record stays `accepted`).
pub async fn run_desk(
    authority: Authority,
    topics: Topics,
    store: SharedStore,
    wake: Arc<Notify>,
    executor: Arc<dyn Executor>,
    mut payloads: mpsc::Receiver<Vec<u8>>,
    mut shutdown: Shutdown,
) {
    let mut authority = Some(authority);
    let mut running = tokio::task::JoinSet::new();
    let mut unauthentic_answers: std::collections::VecDeque<i64> = Default::default();
    let desk = Desk {
        topics,
        store,
        wake,
    };
    let desk = Arc::new(desk);
    loop {
        let payload = tokio::select! {
            p = payloads.recv() => match p {
                Some(p) => p,
                None => break,
            },
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            _ = shutdown.wait() => break,
        };
        let now = now_ms();
        let claimed = claimed_id(&payload);
        let auth = authority
            .take()
            .expect("the authority is back after each check");
        let (auth, verdict) = with_store(&desk.store, move |s| {
            let mut auth = auth;
            // A store that cannot say is taken as "seen": refuse rather than risk a replay.
            let verdict = auth.check(&payload, now, |id| s.command_seen(id).unwrap_or(true));
            (auth, verdict)
        })
        .await;
        authority = Some(auth);
        match verdict {
            Err(rejection) => {
                let total = REJECTED.fetch_add(1, Ordering::Relaxed) + 1;
                *REJECTED_BY_REASON
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(rejection.reason.kind())
                    .or_default() += 1;
                let reason = rejection.reason.to_string();
                warn!(
                    id = rejection.id.as_deref().unwrap_or("-"),
                    key = rejection.key_id.as_deref().unwrap_or("-"),
                    command = rejection.name.as_deref().unwrap_or("-"),
                    rejected_total = total,
                    "command rejected: {reason}"
                );
                let audit = CommandAudit {
                    command_id: rejection.id.clone(),
                    key_id: rejection.key_id.clone(),
                    name: rejection.name.clone(),
                    state: "rejected".into(),
                    reason: Some(reason.clone()),
                    received_ms: now,
                };
                desk.audit(audit).await;
                if rejection.id.is_none() {
                    while unauthentic_answers
                        .front()
                        .is_some_and(|t| *t <= now - 60_000)
                    {
                        unauthentic_answers.pop_front();
                    }
                    if unauthentic_answers.len() >= UNAUTHENTIC_ANSWERS_PER_MINUTE {
                        continue;
                    }
                    unauthentic_answers.push_back(now);
                }
                desk.answer(CommandResult {
                    // An id that did not pass the checks is echoed so that the sender can
                    // match the answer; it is neither audited nor noted as seen.
                    id: rejection.id.or(claimed),
                    name: rejection.name,
                    state: "rejected",
                    reason: Some(reason),
                    data: None,
                    ts_ms: now_ms(),
                })
                .await;
            }
            Ok(accepted) => {
                info!(id = %accepted.id, key = %accepted.key_id, command = %accepted.name,
                    "command accepted");
                let audit = CommandAudit {
                    command_id: Some(accepted.id.clone()),
                    key_id: Some(accepted.key_id.clone()),
                    name: Some(accepted.name.clone()),
                    state: "accepted".into(),
                    reason: None,
                    received_ms: now,
                };
                let row = desk.audit(audit).await;
                desk.answer(result(&accepted, "accepted", None, None)).await;
                let desk = Arc::clone(&desk);
                let executor = Arc::clone(&executor);
                running.spawn(async move {
                    let outcome = match accepted.command.clone() {
                        Command::Recall(range) => desk.recall(range).await,
                        other => executor.execute(other).await,
                    };
                    let (state, reason, data) = match outcome {
                        Ok(data) => ("done", None, data),
                        Err(reason) => {
                            warn!(id = %accepted.id, command = %accepted.name,
                                "command failed: {reason}");
                            ("failed", Some(reason), None)
                        }
                    };
                    if let Some(row) = row {
                        let reason_db = reason.clone();
                        let _ = with_store(&desk.store, move |s| {
                            s.update_command(row, state, reason_db.as_deref(), now_ms())
                        })
                        .await;
                    }
                    desk.answer(result(&accepted, state, reason, data)).await;
                });
            }
        }
    }
    running.abort_all();
}

/// The id a command claims, read without any check (for the answer to a rejection only).
fn claimed_id(payload: &[u8]) -> Option<String> {
    let envelope: Value = serde_json::from_slice(payload).ok()?;
    let body: Value = serde_json::from_str(envelope.get("command")?.as_str()?).ok()?;
    Some(body.get("id")?.as_str()?.to_string())
}

fn result(
    accepted: &Accepted,
    state: &'static str,
    reason: Option<String>,
    data: Option<Value>,
) -> CommandResult {
    CommandResult {
        id: Some(accepted.id.clone()),
        name: Some(accepted.name.clone()),
        state,
        reason,
        data,
        ts_ms: now_ms(),
    }
}

/// What the desk's tasks share.
struct Desk {
    topics: Topics,
    store: SharedStore,
    wake: Arc<Notify>,
}

impl Desk {
    /// Keeps the audit record (and notes the id as seen); its row, unless the store failed.
    async fn audit(&self, audit: CommandAudit) -> Option<i64> {
        match with_store(&self.store, move |s| s.record_command(&audit)).await {
            Ok(row) => Some(row),
            Err(e) => {
                warn!("cannot keep the audit record of a command: {e}");
                None
            }
        }
    }

    /// Puts a result in the outbox and wakes the publisher.
    async fn answer(&self, result: CommandResult) {
        let batch = Batch {
            messages: vec![command_result_message(&self.topics, &result)],
            ..Batch::default()
        };
        match with_store(&self.store, move |s| s.commit(&batch)).await {
            Ok(_) => self.wake.notify_one(),
            Err(e) => warn!("cannot store the result of a command: {e}"),
        }
    }

    /// Re-publishes the sequenced messages of a seq range with their original `seq`, in
    /// chunks with a pause between them. Data: `{"from_seq", "to_seq", "republished",
    /// "missing"}` (`missing`: seqs in the range the store no longer holds, or never gave out).
    async fn recall(&self, range: RecallRange) -> Outcome {
        let RecallRange::Seq { from, to } = range else {
            return Err(
                "recall by time (from/to, meters, kinds) is not supported yet; recall by \
                 from_seq/to_seq"
                    .into(),
            );
        };
        let count = to - from + 1;
        if count > RECALL_MAX {
            return Err(format!(
                "recall of {count} messages; at most {RECALL_MAX} per command"
            ));
        }
        let copies = with_store(&self.store, move |s| {
            s.published(from, to, RECALL_MAX as usize)
        })
        .await
        .map_err(|e| e.to_string())?;
        let found = copies.len() as u64;
        let messages: Vec<_> = copies
            .iter()
            .filter_map(|c| recalled_message(&c.topic, &c.payload))
            .collect();
        for chunk in messages.chunks(RECALL_CHUNK) {
            let batch = Batch {
                messages: chunk.to_vec(),
                ..Batch::default()
            };
            with_store(&self.store, move |s| s.commit(&batch))
                .await
                .map_err(|e| e.to_string())?;
            self.wake.notify_one();
            tokio::time::sleep(RECALL_PAUSE).await;
        }
        Ok(Some(json!({
            "from_seq": from,
            "to_seq": to,
            "republished": messages.len(),
            "missing": count - found,
        })))
    }
}
