//! The commands the composition root runs for the command desk (`uplink::desk`): `ping`,
//! `status` (the `status --json` document, through a hook the binary provides), `config_get`
//! (the configuration as read at start, secrets redacted) and `read` (meters read now by their
//! bus tasks, between scheduled polls) and `time_sync` (a broadcast time sync of every DL/T 645
//! bus now, through its bus task, then each meter's clock read: its skew before and after).
//! `relay` and `config_apply` fail with "not supported yet".

use crate::bus::{MeterRead, ReadRequest};
use crate::config::Config;
use crate::uplink::command::{Command, Meters};
use crate::uplink::contract::{config_data, ping_data, read_data, time_sync_data};
use crate::uplink::desk::{Executor, Outcome};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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
    /// The bus has a broadcast time sync (DL/T 645).
    pub time_sync: bool,
}

/// The gateway's side of the commands.
pub(super) struct GatewayExecutor {
    pub config: Arc<Config>,
    /// The configuration file's text as read at start, secrets redacted.
    pub config_text: String,
    pub status: Option<StatusHook>,
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
                    tokio::task::spawn_blocking(move || hook(&config))
                        .await
                        .map_err(|e| format!("status failed: {e}"))?
                        .map(Some)
                })
            }
            Command::Read(meters) => {
                let asks = self.plan_read(&meters);
                Box::pin(async move { read(asks?).await })
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
            other => {
                let name = match other {
                    Command::Relay { .. } => "relay",
                    Command::ConfigApply { .. } => "config_apply",
                    _ => "this command",
                };
                Box::pin(async move { Err(format!("{name} is not supported yet")) })
            }
        }
    }
}

impl GatewayExecutor {
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

/// Asks each bus of `asks` (a time sync first with `time_sync`) and waits for the answers.
async fn ask(asks: ReadPlan, time_sync: bool) -> Result<Vec<MeterRead>, String> {
    let mut replies = Vec::new();
    for (meters, bus) in asks {
        let (reply, answer) = oneshot::channel();
        bus.send(ReadRequest {
            meters,
            reply,
            time_sync,
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
