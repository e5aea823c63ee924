//! The commands the composition root runs for the command desk (`uplink::desk`): `ping`,
//! `status` (the `status --json` document, through a hook the binary provides), `config_get`
//! (the configuration as read at start, secrets redacted), `read` (meters read now by their
//! bus tasks, between scheduled polls), `time_sync` (a broadcast time sync of every DL/T 645
//! bus now, through its bus task, then each meter's clock read: its skew before and after) and
//! `config_apply`. `relay` (费控: trip, close, alarm on/off, keep power on/off) gives the order
//! to the bus task of the meter's bus with the meter's password and operator code from
//! `[commands] relay_secrets_file`; the result carries the meter's reply and the relay state
//! read back from its status word 3. A meter that refuses (wrong password, keep-power blocks a
//! trip) makes the command `failed` with the meter's reason and the state read back.
//!
//! `config_apply` goes through the files next to the configuration file `F`:
//!
//! 1. the new text is written to `F.candidate` and checked with every `check-config` rule
//!    (its problems are the `failed` result's reason, as `F.candidate:LINE:COL: ...`; nothing
//!    else changes); it may not change `[gateway] id` or `[mqtt] topic_prefix`, or its result
//!    would go where the headend does not listen;
//! 2. `F` is copied to `F.previous`, the marker `F.apply` (`{"id", "state": "applying"}`) is
//!    written, and `F.candidate` is renamed over `F` (atomic; each file synced);
//! 3. the daemon restarts the gateway with `F`, as on SIGHUP;
//! 4. the next generation, once it is up (store open, uplink, buses and desk started), puts the
//!    `done` result in its outbox and removes the marker; if it ends with an error before that
//!    ("cannot start": the data directory, the store lock, the store), the daemon moves
//!    `F.previous` back over `F`, marks the marker `failed` with the error, and starts the
//!    previous configuration, whose generation answers `failed` with that reason.
//!
//! The result travels through the outbox of whichever generation runs, so the headend gets it
//! whatever happens in between (a kill during the restart included: the marker is on disk).

use crate::bus::{MeterRead, ReadRequest, RelayAction, RelayOrder};
use crate::clock::now_ms;
use crate::config::Config;
use crate::store::{Batch, SharedStore, with_store};
use crate::uplink::command::{Command, Meters};
use crate::uplink::contract::{
    CommandResult, Topics, command_result_message, config_data, ping_data, read_data,
    time_sync_data,
};
use crate::uplink::desk::{Executor, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};

/// Asks the daemon to restart the gateway with the configuration file as it now is.
pub type RestartHook = Arc<dyn Fn() + Send + Sync>;

/// `F.previous`: the configuration before the last `config_apply`.
pub const PREVIOUS_SUFFIX: &str = ".previous";
/// `F.apply`: the marker of a `config_apply` under way (or rolled back).
pub const APPLY_SUFFIX: &str = ".apply";
/// `F.candidate`: a new configuration being checked.
const CANDIDATE_SUFFIX: &str = ".candidate";

/// Builds the `status --json` document of a configuration (`field::status::collect`).
pub type StatusHook = Arc<dyn Fn(&Config) -> Result<Value, String> + Send + Sync>;

/// The meters each bus is asked to read (empty: all of its meters), and where to ask.
type ReadPlan = Vec<(Vec<String>, mpsc::Sender<ReadRequest>)>;

/// How long a `read` waits for its buses.
const READ_TIMEOUT: Duration = Duration::from_secs(90);

/// One bus as `read` sees it: its meters and where to ask.
pub(super) struct BusDesk {
    pub meters: Vec<String>,
    pub requests: mpsc::Sender<ReadRequest>,
    /// The bus has a broadcast time sync and remote control (DL/T 645).
    pub time_sync: bool,
}

/// The gateway's side of the commands.
pub(super) struct GatewayExecutor {
    pub config: Arc<Config>,
    /// The configuration file's text as read at start, secrets redacted.
    pub config_text: String,
    pub status: Option<StatusHook>,
    pub restart: Option<RestartHook>,
    pub buses: Vec<BusDesk>,
}

impl Executor for GatewayExecutor {
    fn execute(&self, command: Command) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        match command {
            Command::Ping => Box::pin(async { Ok(Some(ping_data())) }),
            Command::ConfigGet => {
                let data =
                    config_data(&self.config.source.display().to_string(), &self.config_text);
                Box::pin(async move { Ok(Some(data)) })
            }
            Command::Status => {
                let hook = self.status.clone();
                let config = Arc::clone(&self.config);
                Box::pin(async move {
                    let hook = hook.ok_or("status is not available in this build")?;
                    let mut doc = tokio::task::spawn_blocking(move || hook(&config))
                        .await
                        .map_err(|e| format!("status failed: {e}"))??;
                    // What only the running daemon knows: the commands it rejected since it
                    // started, next to what the store's audit says of the last 24 h.
                    if let Value::Object(map) = &mut doc {
                        let counters = crate::uplink::desk::rejected_counters();
                        match (map.get_mut("commands"), counters) {
                            (Some(Value::Object(audit)), Value::Object(live)) => audit.extend(live),
                            (_, counters) => {
                                map.insert("commands".into(), counters);
                            }
                        }
                    }
                    Ok(Some(doc))
                })
            }
            Command::Read(meters) => {
                let asks = self.plan_read(&meters);
                Box::pin(async move { read(asks?).await })
            }
            Command::ConfigApply { id, toml } => {
                let source = self.config.source.clone();
                let running = Arc::clone(&self.config);
                let restart = self.restart.clone();
                Box::pin(async move {
                    let restart = restart.ok_or(
                        "config_apply needs the daemon (`amr-gateway run`), which restarts the \
                         gateway with the new file",
                    )?;
                    tokio::task::spawn_blocking(move || stage_apply(&source, &running, &id, &toml))
                        .await
                        .map_err(|e| format!("config_apply failed: {e}"))??;
                    restart();
                    // This generation stops now; the next one answers (see the module doc).
                    std::future::pending::<Outcome>().await
                })
            }
            Command::TimeSync => {
                let asks: ReadPlan = self
                    .buses
                    .iter()
                    .filter(|b| b.time_sync)
                    .map(|b| (Vec::new(), b.requests.clone()))
                    .collect();
                Box::pin(async move { time_sync(asks).await })
            }
            Command::Relay { meter, action } => {
                let asked = self.plan_relay(&meter, action);
                Box::pin(async move { relay(asked?).await })
            }
            _ => Box::pin(async move { Err("this command is not supported yet".to_string()) }),
        }
    }
}

impl GatewayExecutor {
    /// The bus of `meter` and the order with its secrets.
    fn plan_relay(
        &self,
        meter: &str,
        action: crate::uplink::command::RelayAction,
    ) -> Result<(String, RelayOrder, mpsc::Sender<ReadRequest>), String> {
        use crate::uplink::command::RelayAction as A;
        let bus = self
            .buses
            .iter()
            .find(|b| b.meters.iter().any(|m| m == meter))
            .ok_or_else(|| format!("unknown meter `{meter}`"))?;
        if !bus.time_sync {
            // Said before the secrets are looked up: no password helps a Modbus meter.
            return Err(format!(
                "relay control needs a DL/T 645 meter; meter `{meter}` is on a Modbus bus"
            ));
        }
        let secrets = self.config.relay_secrets.for_meter(meter)?;
        let action = match action {
            A::Trip => RelayAction::Trip,
            A::Close => RelayAction::Close,
            A::Alarm => RelayAction::Alarm,
            A::AlarmOff => RelayAction::AlarmOff,
            A::KeepPower => RelayAction::KeepPower,
            A::KeepPowerOff => RelayAction::KeepPowerOff,
        };
        let order = RelayOrder {
            action,
            password: secrets.password,
            operator: secrets.operator,
        };
        Ok((meter.to_string(), order, bus.requests.clone()))
    }

    /// Which bus reads which meters; every id must be a configured meter.
    fn plan_read(&self, meters: &Meters) -> Result<ReadPlan, String> {
        if let Meters::These(ids) = meters
            && let Some(unknown) = ids
                .iter()
                .find(|id| !self.buses.iter().any(|b| b.meters.contains(id)))
        {
            return Err(format!("unknown meter `{unknown}`"));
        }
        Ok(self
            .buses
            .iter()
            .filter_map(|b| match meters {
                Meters::All => Some((Vec::new(), b.requests.clone())),
                Meters::These(ids) => {
                    let mine: Vec<String> = ids
                        .iter()
                        .filter(|id| b.meters.contains(id))
                        .cloned()
                        .collect();
                    (!mine.is_empty()).then(|| (mine, b.requests.clone()))
                }
            })
            .collect())
    }
}

async fn read(asks: ReadPlan) -> Outcome {
    let reads = ask(asks, false).await?;
    let reads: Vec<_> = reads
        .into_iter()
        .map(|r| (r.meter, r.reading, r.error))
        .collect();
    Ok(Some(read_data(&reads)))
}

/// `time_sync`: every DL/T 645 bus sends its broadcast time sync now and reads its meters'
/// clocks; fails when the gateway has no such bus or every bus refused.
async fn time_sync(asks: ReadPlan) -> Outcome {
    if asks.is_empty() {
        return Err("no DL/T 645 bus: a broadcast time sync is for DL/T 645 meters".into());
    }
    let reads = ask(asks, true).await?;
    let refused = |r: &MeterRead| {
        r.error
            .as_deref()
            .is_some_and(|e| e.starts_with("time sync "))
    };
    if let Some(r) = reads.first()
        && reads.iter().all(refused)
    {
        return Err(r.error.clone().unwrap_or_default());
    }
    let rows: Vec<_> = reads
        .into_iter()
        .map(|r| (r.meter, r.skew_before_s, r.skew_after_s, r.error))
        .collect();
    Ok(Some(time_sync_data(&rows)))
}

/// `relay`: the order goes to the meter's bus task; `done` with the meter's reply and the
/// relay state read back, `failed` when the meter refused or did not answer.
async fn relay((meter, order, bus): (String, RelayOrder, mpsc::Sender<ReadRequest>)) -> Outcome {
    let action = order.action.name();
    let (reply, answer) = oneshot::channel();
    bus.send(ReadRequest {
        meters: vec![meter.clone()],
        reply,
        time_sync: false,
        relay: Some(order),
    })
    .await
    .map_err(|_| "the meter's bus task has stopped".to_string())?;
    let got = tokio::time::timeout(READ_TIMEOUT, answer)
        .await
        .map_err(|_| {
            format!(
                "the bus did not answer within {} s; whether the meter acted is unknown",
                READ_TIMEOUT.as_secs()
            )
        })?
        .map_err(|_| "the bus task stopped before it answered".to_string())?;
    let read = got.into_iter().next().ok_or("the bus gave no answer")?;
    let outcome = match (read.relay, read.error) {
        (Some(o), _) => o,
        (None, e) => {
            return Err(format!(
                "relay {action} for meter `{meter}`: {}",
                e.unwrap_or_else(|| "no answer".into())
            ));
        }
    };
    let state = outcome.relay.unwrap_or("unknown");
    if !outcome.accepted {
        return Err(format!(
            "meter `{meter}` refused relay {action}: {}; relay: {state}{}",
            outcome.reply,
            if outcome.keep_power == Some(true) {
                ", keep_power on"
            } else {
                ""
            }
        ));
    }
    tracing::info!(meter = %meter, action, relay = state, "relay order done");
    Ok(Some(json!({
        "meter": meter,
        "action": action,
        "reply": outcome.reply,
        "relay": outcome.relay,
        "alarm": outcome.alarm,
        "keep_power": outcome.keep_power,
        "command_open": outcome.command_open,
        "read_back_error": outcome.read_back_error,
    })))
}

/// Asks each bus of `asks` (a time sync first with `time_sync`) and waits for the answers.
async fn ask(asks: ReadPlan, time_sync: bool) -> Result<Vec<MeterRead>, String> {
    let mut replies = Vec::new();
    for (meters, bus) in asks {
        let (reply, answer) = oneshot::channel();
        bus.send(ReadRequest {
            meters,
            reply,
            time_sync,
            relay: None,
        })
        .await
        .map_err(|_| "a bus task has stopped".to_string())?;
        replies.push(answer);
    }
    let mut reads = Vec::new();
    for answer in replies {
        let got = tokio::time::timeout(READ_TIMEOUT, answer)
            .await
            .map_err(|_| {
                format!(
                    "the buses did not answer within {} s",
                    READ_TIMEOUT.as_secs()
                )
            })?
            .map_err(|_| "a bus task stopped before it answered".to_string())?;
        reads.extend(got);
    }
    Ok(reads)
}

/// `F` with `suffix` appended to its file name.
fn beside(source: &Path, suffix: &str) -> PathBuf {
    let mut name = source.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Writes `text` to `path` and syncs it.
fn write_synced(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(text)?;
    f.sync_all()
}

/// What `F.apply` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyMarker {
    /// The `config_apply` command's id.
    pub id: String,
    /// `applying` (the new file is in place) or `failed` (rolled back).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The marker of a `config_apply` of the configuration file `source`, if there is one.
pub fn apply_marker(source: &Path) -> Option<ApplyMarker> {
    let text = std::fs::read(beside(source, APPLY_SUFFIX)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Steps 1 and 2 of `config_apply` (see the module doc).
fn stage_apply(source: &Path, running: &Config, id: &str, toml: &str) -> Result<(), String> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        format!("config_apply: cannot {what} {}: {e}", path.display())
    };
    let candidate = beside(source, CANDIDATE_SUFFIX);
    write_synced(&candidate, toml.as_bytes()).map_err(|e| io("write", &candidate, e))?;
    let checked = crate::config::load(&candidate);
    let refuse = |reason: String| {
        let _ = std::fs::remove_file(&candidate);
        Err(reason)
    };
    let new = match checked {
        Ok(new) => new,
        Err(errors) => {
            let n = errors.0.len();
            return refuse(format!(
                "{n} problem{} found in the new configuration; nothing changed\n{errors}",
                if n == 1 { "" } else { "s" }
            ));
        }
    };
    if new.gateway.id != running.gateway.id || new.mqtt.topic_prefix != running.mqtt.topic_prefix {
        return refuse(format!(
            "the new configuration changes [gateway] id or [mqtt] topic_prefix (`{}/{}` to \
             `{}/{}`); config_apply keeps them, so that its result reaches the headend; \
             nothing changed",
            running.mqtt.topic_prefix, running.gateway.id, new.mqtt.topic_prefix, new.gateway.id
        ));
    }
    let previous = beside(source, PREVIOUS_SUFFIX);
    let old = std::fs::read(source).map_err(|e| io("read", source, e))?;
    write_synced(&previous, &old).map_err(|e| io("write", &previous, e))?;
    let marker = ApplyMarker {
        id: id.to_string(),
        state: "applying".into(),
        reason: None,
    };
    let marker_path = beside(source, APPLY_SUFFIX);
    write_synced(
        &marker_path,
        &serde_json::to_vec(&marker).expect("a marker serialises"),
    )
    .map_err(|e| io("write", &marker_path, e))?;
    std::fs::rename(&candidate, source).map_err(|e| io("replace", source, e))?;
    sync_dir(source);
    tracing::info!(id, file = %source.display(), previous = %previous.display(),
        "config_apply: the new configuration is in place; restarting the gateway with it");
    Ok(())
}

/// Syncs the directory of `path` (so a rename survives power loss); best effort.
fn sync_dir(path: &Path) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The daemon's side of a generation that could not start with an applied file: moves
/// `F.previous` back over `F` and marks the apply `failed` with `reason`. False when no apply
/// is under way (nothing done).
pub fn rollback_apply(source: &Path, reason: &str) -> bool {
    let Some(marker) = apply_marker(source).filter(|m| m.state == "applying") else {
        return false;
    };
    let previous = beside(source, PREVIOUS_SUFFIX);
    if let Err(e) = std::fs::rename(&previous, source) {
        tracing::error!(
            "config_apply: cannot move {} back over {}: {e}",
            previous.display(),
            source.display()
        );
        return false;
    }
    sync_dir(source);
    let failed = ApplyMarker {
        state: "failed".into(),
        reason: Some(format!(
            "the gateway cannot start with the new configuration: {reason}; the previous one \
             was put back"
        )),
        ..marker
    };
    let _ = write_synced(
        &beside(source, APPLY_SUFFIX),
        &serde_json::to_vec(&failed).expect("a marker serialises"),
    );
    tracing::error!(id = %failed.id, "config_apply rolled back: {reason}");
    true
}

/// Step 4 of `config_apply`, in a generation that is up: answers the apply the marker names
/// (`done`, or `failed` after a rollback) through the outbox and removes the marker.
pub(super) async fn finish_apply(
    source: &Path,
    store: &SharedStore,
    topics: &Topics,
    wake: &Notify,
) {
    let Some(marker) = apply_marker(source) else {
        return;
    };
    let done = marker.state == "applying";
    let result = CommandResult {
        id: Some(marker.id.clone()),
        name: Some("config_apply".into()),
        state: if done { "done" } else { "failed" },
        reason: marker.reason.clone(),
        data: done.then(|| {
            json!({
                "file": source.display().to_string(),
                "previous": beside(source, PREVIOUS_SUFFIX).display().to_string(),
            })
        }),
        ts_ms: now_ms(),
    };
    let batch = Batch {
        messages: vec![command_result_message(topics, &result)],
        ..Batch::default()
    };
    let (id, state, reason) = (marker.id.clone(), result.state, marker.reason.clone());
    let stored = with_store(store, move |s| {
        s.commit(&batch)?;
        s.finish_command(&id, state, reason.as_deref(), now_ms())
    })
    .await;
    match stored {
        Ok(()) => {
            let _ = std::fs::remove_file(beside(source, APPLY_SUFFIX));
            wake.notify_one();
            tracing::info!(id = %marker.id, "config_apply {}", result.state);
        }
        Err(e) => tracing::warn!("cannot store the result of config_apply: {e}"),
    }
}

/// The configuration text with the value of every key that names a secret (`password`,
/// `secret`, `token`, but not `*_file`, which only names a file) replaced by `"<redacted>"`.
pub(super) fn redact(text: &str) -> String {
    text.lines()
        .map(|line| {
            let Some((key, _)) = line.split_once('=') else {
                return line.to_string();
            };
            let k = key.trim().to_ascii_lowercase();
            let secret = ["password", "secret", "token"]
                .iter()
                .any(|s| k.contains(s))
                && !k.ends_with("_file");
            if secret && !k.starts_with('#') {
                format!("{}= \"<redacted>\"", key)
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_redacted_file_names_kept() {
        let t = "password_file = \"/etc/pw\"\npassword = \"hunter2\"\nhost = \"h\"";
        assert_eq!(
            super::redact(t),
            "password_file = \"/etc/pw\"\npassword = \"<redacted>\"\nhost = \"h\""
        );
    }
}
