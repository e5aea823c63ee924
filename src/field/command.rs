//! The headend's side of signed commands, for an operator or a test with nothing else
//! installed: `amr-gateway keygen` (an Ed25519 key pair) and `amr-gateway command` (sign one
//! command, publish it on `{prefix}/{gateway}/command`, wait for its final result on
//! `{prefix}/{gateway}/command/result` and hand it back).
//!
//! The tool connects like the gateway does (TLS with `ca_file` and a client certificate when
//! asked), with a clean session of its own: it subscribes to the result topic before it
//! publishes, so it cannot miss the answer.

use crate::clock::now_ms;
use crate::uplink::MqttSettings;
use crate::uplink::command::{body, read_signing_key, sign};
use crate::uplink::contract::Topics;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct BrokerArgs {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// One command to give.
#[derive(Debug, Clone)]
pub struct CommandArgs {
    pub prefix: String,
    pub gateway: String,
    pub key_file: PathBuf,
    pub key_id: String,
    pub name: String,
    pub args: BTreeMap<String, String>,
    /// How long the command is valid (its `expires`).
    pub valid_s: u64,
    /// How long to wait for the final result.
    pub timeout: Duration,
}

/// Why the tool got no final result.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A problem with the arguments or the key file.
    #[error("{0}")]
    Setup(String),
    /// The broker could not be reached, or no final result came in time.
    #[error("{0}")]
    NoResult(String),
}

/// Parses `KEY=VALUE` arguments.
pub fn parse_args(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("--arg {p}: write KEY=VALUE, e.g. --arg meters=all"))
        })
        .collect()
}

/// A fresh command id: the key id, the time and 32 random bits.
fn new_id(key_id: &str) -> String {
    use std::io::Read;
    let mut r = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut r));
    format!("{key_id}-{}-{:08x}", now_ms(), u32::from_be_bytes(r))
}

/// Signs and publishes the command, and returns its final result payload (`state` `done`,
/// `failed` or `rejected`).
pub async fn give(broker: &BrokerArgs, cmd: &CommandArgs) -> Result<Value, CommandError> {
    let key = read_signing_key(&cmd.key_file).map_err(CommandError::Setup)?;
    let id = new_id(&cmd.key_id);
    let body = body(
        &id,
        &cmd.gateway,
        &cmd.name,
        cmd.args.clone(),
        now_ms(),
        cmd.valid_s,
    );
    let envelope = serde_json::to_vec(&sign(&key, &cmd.key_id, &body))
        .map_err(|e| CommandError::Setup(e.to_string()))?;
    let topics = Topics::new(&cmd.prefix, &cmd.gateway);
    let options = options(broker, &id).map_err(CommandError::Setup)?;
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let result_topic = topics.command_result();
    let wait = async {
        loop {
            let event = eventloop.poll().await.map_err(|e| {
                CommandError::NoResult(format!("MQTT broker {}:{}: {e}", broker.host, broker.port))
            })?;
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client
                        .subscribe(result_topic.clone(), QoS::AtLeastOnce)
                        .await
                        .map_err(|e| CommandError::NoResult(e.to_string()))?;
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    client
                        .publish(topics.command(), QoS::AtLeastOnce, false, envelope.clone())
                        .await
                        .map_err(|e| CommandError::NoResult(e.to_string()))?;
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == result_topic => {
                    let Ok(result) = serde_json::from_slice::<Value>(&p.payload) else {
                        continue;
                    };
                    let ours = result["id"].as_str() == Some(id.as_str());
                    let last = matches!(
                        result["state"].as_str(),
                        Some("done" | "failed" | "rejected")
                    );
                    if ours && last {
                        let _ = client.try_disconnect();
                        return Ok(result);
                    }
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(cmd.timeout, wait).await.map_err(|_| {
        CommandError::NoResult(format!(
            "no result for command `{id}` ({}) from gateway `{}` within {} s",
            cmd.name,
            cmd.gateway,
            cmd.timeout.as_secs()
        ))
    })?
}

fn options(broker: &BrokerArgs, id: &str) -> Result<MqttOptions, String> {
    let client_id: String = format!("amr-headend-{id}").chars().take(64).collect();
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(4 * 1024 * 1024, 1024 * 1024);
    if let Some(user) = &broker.username {
        let password = match &broker.password_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read --password-file {}: {e}", f.display()))?
                .trim()
                .to_string(),
            None => String::new(),
        };
        options.set_credentials(user.clone(), password);
    }
    if broker.tls {
        let settings = MqttSettings {
            host: broker.host.clone(),
            port: broker.port,
            topic_prefix: String::new(),
            client_id: String::new(),
            username: None,
            password_file: None,
            tls: true,
            ca_file: broker.ca_file.clone(),
            client_cert_file: broker.client_cert_file.clone(),
            client_key_file: broker.client_key_file.clone(),
            keep_alive_s: 30,
            reconnect_max_s: 60,
            max_inflight: 16,
            cert_expiry_warn_days: 30,
        };
        let config =
            crate::uplink::tls::client_config(&settings).map_err(|e| e.replace("[mqtt] ", "--"))?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    Ok(options)
}

/// A result for people: the state, then the reason or the data.
pub fn describe(result: &Value) -> String {
    let state = result["state"].as_str().unwrap_or("?");
    let name = result["name"].as_str().unwrap_or("command");
    match state {
        "done" => match result.get("data") {
            Some(data) => format!(
                "{name} done (seq {}):\n{}",
                result["seq"],
                serde_json::to_string_pretty(data).unwrap_or_default()
            ),
            None => format!("{name} done (seq {})", result["seq"]),
        },
        _ => format!(
            "{name} {state}: {}",
            result["reason"].as_str().unwrap_or("no reason given")
        ),
    }
}
