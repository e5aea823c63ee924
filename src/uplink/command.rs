//! Commands in: the headend's signed command envelope, and every check a command passes before
//! anything runs — the key, the Ed25519 signature over the command's exact bytes, the gateway
//! it is for, the key's allow-list, the time window and expiry, replay, a per-key rate limit and
//! the arguments — ending in a typed [`Command`] or a [`Rejection`] that says why.
//!
//! The envelope published on `{prefix}/{gateway}/command` (QoS 1) is JSON:
//!
//! ```json
//! {"key_id": "headend-1",
//!  "command": "{\"id\":\"c-0001\",\"gateway\":\"tx-0412\",\"name\":\"read\",\"issued\":\"2026-11-29T08:00:00.000Z\",\"expires\":\"2026-11-29T08:05:00.000Z\",\"args\":{\"meters\":\"all\"}}",
//!  "signature": "128 hex digits: Ed25519 over the UTF-8 bytes of `command`"}
//! ```
//!
//! The signed body travels as a string so that its exact bytes are what was signed: no JSON
//! canonicalisation to agree on. Keys are 32 bytes written as 64 hex digits; the gateway holds
//! only public keys (`[[command_key]]`), the headend its private ones (`amr-gateway keygen`).
//!
//! Pure: the clock and the record of ids already seen are passed in.

use crate::clock::{parse_rfc3339, rfc3339_ms};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// Every command name the gateway knows.
pub const COMMAND_NAMES: &[&str] = &[
    "ping",
    "status",
    "read",
    "recall",
    "time_sync",
    "relay",
    "config_get",
    "config_apply",
];

/// What is published on the command topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub key_id: String,
    /// The JSON text of a [`CommandBody`], exactly as signed.
    pub command: String,
    /// Ed25519 signature over `command`'s UTF-8 bytes, 128 hex digits.
    pub signature: String,
}

/// The signed part of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    /// Unique per command, never reused: a command whose id was seen before is a replay.
    pub id: String,
    /// The gateway it is for (`[gateway] id`): a command signed for one box does nothing on
    /// another.
    pub gateway: String,
    pub name: String,
    /// RFC 3339; must be within the gateway's clock window.
    pub issued: String,
    /// RFC 3339; after it the command is refused.
    pub expires: String,
    #[serde(default)]
    pub args: BTreeMap<String, String>,
}

/// A key the gateway accepts commands from (`[[command_key]]`).
#[derive(Debug, Clone)]
pub struct CommandKey {
    pub id: String,
    pub public_key: VerifyingKey,
    /// The command names this key may give.
    pub allow: BTreeSet<String>,
}

/// How commands are checked.
#[derive(Debug, Clone)]
pub struct CommandPolicy {
    pub keys: Vec<CommandKey>,
    /// Largest distance between a command's `issued` and the gateway's clock (default 300 s).
    pub clock_window_s: u64,
    /// Longest a command may be valid, `expires − issued` (default 3600 s).
    pub max_lifetime_s: u64,
    /// Commands one key may give per minute (default 30); more are refused.
    pub per_key_per_minute: u32,
}

impl CommandPolicy {
    pub fn new(keys: Vec<CommandKey>) -> CommandPolicy {
        CommandPolicy {
            keys,
            clock_window_s: 300,
            max_lifetime_s: 3600,
            per_key_per_minute: 30,
        }
    }
}

/// Which meters a command is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Meters {
    All,
    These(Vec<String>),
}

/// What `recall` re-publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum RecallRange {
    /// Sequenced messages `from..=to` by their original `seq` (gap repair).
    Seq { from: u64, to: u64 },
    /// What the store holds for `meters` and `kinds` between two instants (ms, `from..to`).
    Time {
        from_ms: i64,
        to_ms: i64,
        meters: Meters,
        kinds: Vec<String>,
    },
}

/// Relay actions of a DL/T 645 meter (control code 1CH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAction {
    Trip,
    Close,
    Alarm,
    AlarmOff,
    KeepPower,
    KeepPowerOff,
}

impl RelayAction {
    pub const NAMES: &[&str] = &[
        "trip",
        "close",
        "alarm",
        "alarm_off",
        "keep_power",
        "keep_power_off",
    ];

    fn from_name(name: &str) -> Option<RelayAction> {
        Some(match name {
            "trip" => RelayAction::Trip,
            "close" => RelayAction::Close,
            "alarm" => RelayAction::Alarm,
            "alarm_off" => RelayAction::AlarmOff,
            "keep_power" => RelayAction::KeepPower,
            "keep_power_off" => RelayAction::KeepPowerOff,
            _ => return None,
        })
    }
}

/// A command that passed every check, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Ping,
    Status,
    Read(Meters),
    Recall(RecallRange),
    TimeSync,
    Relay { meter: String, action: RelayAction },
    ConfigGet,
    ConfigApply { toml: String },
}

/// An accepted command and who gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub id: String,
    pub name: String,
    pub key_id: String,
    pub command: Command,
}

/// Why a command was refused; `Display` is the reason in the result and the log.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RejectReason {
    #[error("malformed command: {0}")]
    Malformed(String),
    #[error("unknown key `{0}`: no [[command_key]] has that id")]
    UnknownKey(String),
    #[error("bad signature for key `{0}`")]
    BadSignature(String),
    #[error("the command is for gateway `{0}`, not this one")]
    OtherGateway(String),
    #[error("unknown command `{0}`; known: {known}", known = COMMAND_NAMES.join(", "))]
    UnknownCommand(String),
    #[error("key `{key}` is not allowed to give `{command}`")]
    NotAllowed { key: String, command: String },
    #[error("issued {skew_s} s away from the gateway's clock (window {window_s} s)")]
    OutsideClockWindow { skew_s: i64, window_s: u64 },
    #[error("expired at {0}")]
    Expired(String),
    #[error("valid for {lifetime_s} s, longer than the {max_s} s allowed")]
    TooLong { lifetime_s: i64, max_s: u64 },
    #[error("replayed: command id `{0}` was seen before")]
    Replayed(String),
    #[error("rate limit: key `{key}` gave more than {per_minute} commands in a minute")]
    RateLimited { key: String, per_minute: u32 },
    #[error("bad arguments for `{command}`: {reason}")]
    BadArguments { command: String, reason: String },
}

impl RejectReason {
    /// The reason as a short name, for counters (the health message).
    pub fn kind(&self) -> &'static str {
        match self {
            RejectReason::Malformed(_) => "malformed",
            RejectReason::UnknownKey(_) => "unknown_key",
            RejectReason::BadSignature(_) => "bad_signature",
            RejectReason::OtherGateway(_) => "other_gateway",
            RejectReason::UnknownCommand(_) => "unknown_command",
            RejectReason::NotAllowed { .. } => "not_allowed",
            RejectReason::OutsideClockWindow { .. } => "outside_clock_window",
            RejectReason::Expired(_) => "expired",
            RejectReason::TooLong { .. } => "too_long",
            RejectReason::Replayed(_) => "replayed",
            RejectReason::RateLimited { .. } => "rate_limited",
            RejectReason::BadArguments { .. } => "bad_arguments",
        }
    }
}

/// A refused command: what could be read of it, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The command's id, when the envelope was readable and authentic enough to tell it.
    pub id: Option<String>,
    pub name: Option<String>,
    pub key_id: Option<String>,
    pub reason: RejectReason,
}

/// Checks commands against a policy; remembers each key's recent commands for the rate limit.
#[derive(Debug)]
pub struct Authority {
    policy: CommandPolicy,
    gateway: String,
    recent: BTreeMap<String, VecDeque<i64>>,
}

impl Authority {
    pub fn new(gateway: &str, policy: CommandPolicy) -> Authority {
        Authority {
            policy,
            gateway: gateway.to_string(),
            recent: BTreeMap::new(),
        }
    }

    /// Checks one payload from the command topic at `now_ms`. `seen(id)` says whether a
    /// command id was seen before (the store keeps them across restarts).
    pub fn check(
        &mut self,
        payload: &[u8],
        now_ms: i64,
        seen: impl Fn(&str) -> bool,
    ) -> Result<Accepted, Box<Rejection>> {
        let reject = |id: Option<&str>, name: Option<&str>, key: Option<&str>, reason| {
            Box::new(Rejection {
                id: id.map(str::to_string),
                name: name.map(str::to_string),
                key_id: key.map(str::to_string),
                reason,
            })
        };
        let envelope: Envelope = serde_json::from_slice(payload)
            .map_err(|e| reject(None, None, None, RejectReason::Malformed(e.to_string())))?;
        let key_id = envelope.key_id.as_str();
        let Some(key) = self.policy.keys.iter().find(|k| k.id == key_id) else {
            return Err(reject(
                None,
                None,
                Some(key_id),
                RejectReason::UnknownKey(key_id.to_string()),
            ));
        };
        let authentic = decode_hex::<64>(&envelope.signature)
            .map(|s| Signature::from_bytes(&s))
            .is_some_and(|s| {
                key.public_key
                    .verify_strict(envelope.command.as_bytes(), &s)
                    .is_ok()
            });
        if !authentic {
            return Err(reject(
                None,
                None,
                Some(key_id),
                RejectReason::BadSignature(key_id.to_string()),
            ));
        }
        let body: CommandBody = serde_json::from_str(&envelope.command).map_err(|e| {
            reject(
                None,
                None,
                Some(key_id),
                RejectReason::Malformed(e.to_string()),
            )
        })?;
        let (id, name) = (Some(body.id.as_str()), Some(body.name.as_str()));
        let fail = |reason| reject(id, name, Some(key_id), reason);
        if body.gateway != self.gateway {
            return Err(fail(RejectReason::OtherGateway(body.gateway.clone())));
        }
        if !COMMAND_NAMES.contains(&body.name.as_str()) {
            return Err(fail(RejectReason::UnknownCommand(body.name.clone())));
        }
        if !key.allow.contains(&body.name) {
            return Err(fail(RejectReason::NotAllowed {
                key: key_id.to_string(),
                command: body.name.clone(),
            }));
        }
        let issued = parse_rfc3339(&body.issued).ok_or_else(|| {
            fail(RejectReason::Malformed(format!(
                "`issued` is not an RFC 3339 time: {}",
                body.issued
            )))
        })?;
        let expires = parse_rfc3339(&body.expires).ok_or_else(|| {
            fail(RejectReason::Malformed(format!(
                "`expires` is not an RFC 3339 time: {}",
                body.expires
            )))
        })?;
        let skew_s = (issued - now_ms) / 1000;
        if skew_s.unsigned_abs() > self.policy.clock_window_s {
            return Err(fail(RejectReason::OutsideClockWindow {
                skew_s,
                window_s: self.policy.clock_window_s,
            }));
        }
        if expires <= now_ms {
            return Err(fail(RejectReason::Expired(body.expires.clone())));
        }
        let lifetime_s = (expires - issued) / 1000;
        if lifetime_s > self.policy.max_lifetime_s as i64 {
            return Err(fail(RejectReason::TooLong {
                lifetime_s,
                max_s: self.policy.max_lifetime_s,
            }));
        }
        if seen(&body.id) {
            return Err(fail(RejectReason::Replayed(body.id.clone())));
        }
        let recent = self.recent.entry(key_id.to_string()).or_default();
        while recent.front().is_some_and(|t| *t <= now_ms - 60_000) {
            recent.pop_front();
        }
        if recent.len() >= self.policy.per_key_per_minute as usize {
            return Err(fail(RejectReason::RateLimited {
                key: key_id.to_string(),
                per_minute: self.policy.per_key_per_minute,
            }));
        }
        recent.push_back(now_ms);
        let command = arguments(&body).map_err(|reason| {
            fail(RejectReason::BadArguments {
                command: body.name.clone(),
                reason,
            })
        })?;
        Ok(Accepted {
            id: body.id.clone(),
            name: body.name.clone(),
            key_id: key_id.to_string(),
            command,
        })
    }
}

/// The typed command of a body whose name is known, or what is wrong with its arguments.
fn arguments(body: &CommandBody) -> Result<Command, String> {
    let args = &body.args;
    let only = |allowed: &[&str]| -> Result<(), String> {
        match args.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) if allowed.is_empty() => Err(format!("takes no arguments, got `{k}`")),
            Some(k) => Err(format!(
                "unknown argument `{k}`; it takes: {}",
                allowed.join(", ")
            )),
            None => Ok(()),
        }
    };
    let required = |k: &str| {
        args.get(k)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument `{k}`"))
    };
    let meters = |v: &str| -> Result<Meters, String> {
        if v == "all" {
            return Ok(Meters::All);
        }
        let ids: Vec<String> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return Err("`meters` is empty; give meter ids separated by commas, or `all`".into());
        }
        Ok(Meters::These(ids))
    };
    Ok(match body.name.as_str() {
        "ping" => {
            only(&[])?;
            Command::Ping
        }
        "status" => {
            only(&[])?;
            Command::Status
        }
        "time_sync" => {
            only(&[])?;
            Command::TimeSync
        }
        "config_get" => {
            only(&[])?;
            Command::ConfigGet
        }
        "read" => {
            only(&["meters"])?;
            Command::Read(meters(required("meters")?)?)
        }
        "relay" => {
            only(&["meter", "action"])?;
            let action = required("action")?;
            Command::Relay {
                meter: required("meter")?.to_string(),
                action: RelayAction::from_name(action).ok_or_else(|| {
                    format!(
                        "unknown action `{action}`; one of: {}",
                        RelayAction::NAMES.join(", ")
                    )
                })?,
            }
        }
        "config_apply" => {
            only(&["toml"])?;
            Command::ConfigApply {
                toml: required("toml")?.to_string(),
            }
        }
        "recall" => {
            only(&["from_seq", "to_seq", "from", "to", "meters", "kinds"])?;
            if args.contains_key("from_seq") || args.contains_key("to_seq") {
                let seq = |k: &str| -> Result<u64, String> {
                    required(k)?
                        .parse()
                        .map_err(|_| format!("`{k}` must be a whole number"))
                };
                let (from, to) = (seq("from_seq")?, seq("to_seq")?);
                if from > to {
                    return Err(format!("from_seq {from} is after to_seq {to}"));
                }
                Command::Recall(RecallRange::Seq { from, to })
            } else {
                let time = |k: &str| -> Result<i64, String> {
                    let v = required(k)?;
                    parse_rfc3339(v).ok_or_else(|| format!("`{k}` is not an RFC 3339 time: {v}"))
                };
                let (from_ms, to_ms) = (time("from")?, time("to")?);
                if from_ms >= to_ms {
                    return Err("`from` must be before `to`".into());
                }
                Command::Recall(RecallRange::Time {
                    from_ms,
                    to_ms,
                    meters: meters(args.get("meters").map_or("all", String::as_str))?,
                    kinds: args
                        .get("kinds")
                        .map(|k| k.split(',').map(|s| s.trim().to_string()).collect())
                        .unwrap_or_default(),
                })
            }
        }
        other => return Err(format!("no arguments known for `{other}`")),
    })
}

/// The headend's side: a signed envelope of `body`.
pub fn sign(key: &SigningKey, key_id: &str, body: &CommandBody) -> Envelope {
    let command = serde_json::to_string(body).expect("a command body serialises");
    let signature = key.sign(command.as_bytes());
    Envelope {
        key_id: key_id.to_string(),
        command,
        signature: encode_hex(&signature.to_bytes()),
    }
}

/// A command body issued at `now_ms`, valid for `valid_s`.
pub fn body(
    id: &str,
    gateway: &str,
    name: &str,
    args: BTreeMap<String, String>,
    now_ms: i64,
    valid_s: u64,
) -> CommandBody {
    CommandBody {
        id: id.to_string(),
        gateway: gateway.to_string(),
        name: name.to_string(),
        issued: rfc3339_ms(now_ms),
        expires: rfc3339_ms(now_ms + valid_s as i64 * 1000),
        args,
    }
}

/// Writes a new key pair: the private key to `path` (mode 0600) and the public key to
/// `path.pub`, each as 64 hex digits and a newline. Refuses to overwrite.
pub fn write_key_pair(path: &Path) -> std::io::Result<VerifyingKey> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key();
    let pub_path = public_key_path(path);
    let mut private = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(private, "{}", encode_hex(&seed))?;
    let mut public_file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&pub_path)?;
    writeln!(public_file, "{}", encode_hex(public.as_bytes()))?;
    Ok(public)
}

/// `FILE.pub` of a private key `FILE`.
pub fn public_key_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

/// Reads a private key file written by [`write_key_pair`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    read_key::<32>(path).map(|b| SigningKey::from_bytes(&b))
}

/// Reads a public key file written by [`write_key_pair`].
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, String> {
    let bytes = read_key::<32>(path)?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| format!("{}: not an Ed25519 public key", path.display()))
}

fn read_key<const N: usize>(path: &Path) -> Result<[u8; N], String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    decode_hex::<N>(text.trim()).ok_or_else(|| {
        format!(
            "{}: a key file holds {} hex digits (as `amr-gateway keygen` writes it)",
            path.display(),
            N * 2
        )
    })
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn authority() -> Authority {
        let allow = ["ping", "read", "recall", "relay"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut policy = CommandPolicy::new(vec![CommandKey {
            id: "ops".into(),
            public_key: key(1).verifying_key(),
            allow,
        }]);
        policy.per_key_per_minute = 3;
        Authority::new("gw1", policy)
    }

    fn signed(
        id: &str,
        name: &str,
        args: &[(&str, &str)],
        issued: i64,
        signer: &SigningKey,
    ) -> Vec<u8> {
        let args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let b = body(id, "gw1", name, args, issued, 300);
        serde_json::to_vec(&sign(signer, "ops", &b)).unwrap()
    }

    fn reason(r: Result<Accepted, Box<Rejection>>) -> String {
        r.unwrap_err().reason.to_string()
    }

    #[test]
    fn a_signed_command_passes_and_becomes_typed() {
        let mut a = authority();
        let ok = a
            .check(
                &signed("c1", "read", &[("meters", "m1, m2")], NOW, &key(1)),
                NOW,
                |_| false,
            )
            .unwrap();
        assert_eq!(
            ok.command,
            Command::Read(Meters::These(vec!["m1".into(), "m2".into()]))
        );
        assert_eq!((ok.id.as_str(), ok.key_id.as_str()), ("c1", "ops"));
        let ok = a
            .check(
                &signed(
                    "c2",
                    "recall",
                    &[("from_seq", "1005"), ("to_seq", "1009")],
                    NOW,
                    &key(1),
                ),
                NOW,
                |_| false,
            )
            .unwrap();
        assert_eq!(
            ok.command,
            Command::Recall(RecallRange::Seq {
                from: 1005,
                to: 1009
            })
        );
    }

    #[test]
    fn every_forgery_and_mistake_is_rejected_with_its_reason() {
        let mut a = authority();
        let good = signed("c1", "ping", &[], NOW, &key(1));
        assert!(reason(a.check(b"{not json", NOW, |_| false)).starts_with("malformed command"));
        // Signed by a key the gateway does not hold, under a known key id.
        assert_eq!(
            reason(a.check(&signed("c1", "ping", &[], NOW, &key(2)), NOW, |_| false)),
            "bad signature for key `ops`"
        );
        // The signed text altered after signing.
        let mut env: Envelope = serde_json::from_slice(&good).unwrap();
        env.command = env.command.replace("ping", "read");
        assert_eq!(
            reason(a.check(&serde_json::to_vec(&env).unwrap(), NOW, |_| false)),
            "bad signature for key `ops`"
        );
        let mut env: Envelope = serde_json::from_slice(&good).unwrap();
        env.key_id = "intruder".into();
        assert_eq!(
            reason(a.check(&serde_json::to_vec(&env).unwrap(), NOW, |_| false)),
            "unknown key `intruder`: no [[command_key]] has that id"
        );
        assert_eq!(
            reason(a.check(
                &signed("c1", "config_apply", &[], NOW, &key(1)),
                NOW,
                |_| false
            )),
            "key `ops` is not allowed to give `config_apply`"
        );
        assert!(
            reason(a.check(&signed("c1", "reboot", &[], NOW, &key(1)), NOW, |_| false))
                .starts_with("unknown command `reboot`")
        );
        assert_eq!(
            reason(a.check(
                &signed("c1", "ping", &[], NOW - 600_000, &key(1)),
                NOW,
                |_| false
            )),
            "issued -600 s away from the gateway's clock (window 300 s)"
        );
        assert!(reason(a.check(&good, NOW + 300_000, |_| false)).starts_with("expired at"));
        assert_eq!(
            reason(a.check(&good, NOW, |id| id == "c1")),
            "replayed: command id `c1` was seen before"
        );
        assert_eq!(
            reason(a.check(
                &signed(
                    "c1",
                    "relay",
                    &[("meter", "m1"), ("action", "explode")],
                    NOW,
                    &key(1)
                ),
                NOW,
                |_| false
            )),
            "bad arguments for `relay`: unknown action `explode`; one of: trip, close, alarm, alarm_off, keep_power, keep_power_off"
        );
        assert_eq!(
            reason(a.check(
                &signed("c1", "ping", &[("x", "1")], NOW, &key(1)),
                NOW,
                |_| false
            )),
            "bad arguments for `ping`: takes no arguments, got `x`"
        );
        // For another gateway.
        let b = body("c9", "gw2", "ping", BTreeMap::new(), NOW, 60);
        let other = serde_json::to_vec(&sign(&key(1), "ops", &b)).unwrap();
        assert_eq!(
            reason(a.check(&other, NOW, |_| false)),
            "the command is for gateway `gw2`, not this one"
        );
    }

    #[test]
    fn a_key_is_rate_limited_per_minute() {
        let mut a = authority();
        for i in 0..3 {
            let p = signed(&format!("c{i}"), "ping", &[], NOW, &key(1));
            assert!(a.check(&p, NOW + i, |_| false).is_ok());
        }
        let p = signed("c3", "ping", &[], NOW, &key(1));
        assert_eq!(
            reason(a.check(&p, NOW + 10, |_| false)),
            "rate limit: key `ops` gave more than 3 commands in a minute"
        );
        assert!(a.check(&p, NOW + 60_001, |_| false).is_ok());
    }

    #[test]
    fn key_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headend.key");
        let public = write_key_pair(&path).unwrap();
        assert_eq!(read_public_key(&public_key_path(&path)).unwrap(), public);
        assert_eq!(read_signing_key(&path).unwrap().verifying_key(), public);
        assert!(write_key_pair(&path).is_err(), "never overwrites a key");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "beef\n").unwrap();
        assert!(
            read_signing_key(&path)
                .unwrap_err()
                .contains("64 hex digits")
        );
    }
}
