//! Reading each section of the file on its own: `[gateway]`, `[mqtt]`, `[store]`, every
//! `[[bus]]`, `[[meter]]` and `[[area]]`. Each reader checks its keys' types and ranges and
//! fills in defaults; checks that need more than one section (a meter's bus, unit clashes,
//! areas' meters) are in `checks`.
//!
//! Entries keep the spans of the values that were present and valid, so that the cross-section
//! checks can point at them and can skip values already reported as wrong.

use super::*;
use crate::clock::LocalTime;
use crate::diagnostic::{Report, Section, closest, did_you_mean};
use crate::logging::LogLevel;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;
use toml::de::DeTable;

/// Baud rates a serial port may be set to.
pub const STANDARD_BAUD_RATES: &[u32] = &[
    300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400,
];

const GATEWAY_KEYS: &[&str] = &[
    "id",
    "data_dir",
    "models_dir",
    "log_level",
    "timezone",
    "log_format",
    "require_synced_clock",
];
const HEALTH_KEYS: &[&str] = &["interval_s"];
const MQTT_KEYS: &[&str] = &[
    "host",
    "port",
    "topic_prefix",
    "client_id",
    "username",
    "password_file",
    "tls",
    "ca_file",
    "client_cert_file",
    "client_key_file",
    "keep_alive_s",
    "reconnect_max_s",
    "max_inflight",
    "cert_expiry_warn_days",
];
const STORE_KEYS: &[&str] = &["history_days", "max_size_mb", "commit_window_ms"];
const BUS_KEYS: &[&str] = &[
    "name",
    "protocol",
    "device",
    "address",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "timeout_ms",
    "poll_interval_s",
    "preamble",
];
const METER_KEYS: &[&str] = &[
    "id",
    "bus",
    "unit",
    "address",
    "model",
    "multiplier",
    "ct_ratio",
    "pt_ratio",
    "phase",
    "poll_interval_s",
    "consumption_only",
    "rated_kw",
];
const AREA_KEYS: &[&str] = &[
    "id",
    "supply",
    "customers",
    "loss_interval_s",
    "high_loss_pct",
    "negative_loss_pct",
    "rated_kva",
];

/// Why `s` cannot be one level of an MQTT topic, if it cannot.
pub(super) fn topic_level_problem(s: &str) -> Option<&'static str> {
    if s.chars().count() > MAX_ID_CHARS {
        Some("is longer than 64 characters (the limit of an id)")
    } else if s.is_empty() {
        Some("is empty")
    } else if s.contains('/') {
        Some("contains `/`")
    } else if s.contains('+') {
        Some("contains `+`")
    } else if s.contains('#') {
        Some("contains `#`")
    } else if s.chars().any(char::is_whitespace) {
        Some("contains a space")
    } else if s.chars().any(char::is_control) {
        Some("contains a control character")
    } else if s.chars().any(crate::diagnostic::is_invisible) {
        Some("contains an invisible character")
    } else if !s.chars().all(|c| c.is_alphanumeric() || "-_.".contains(c)) {
        Some("contains a character other than a letter, a digit, `-`, `_` or `.`")
    } else {
        None
    }
}

/// The longest id (gateway, bus, meter, area): ids are MQTT topic levels, and a broker drops a
/// client whose topics or client id grow without bound.
pub(super) const MAX_ID_CHARS: usize = 64;

/// Reads a string key that ends up in MQTT topics (gateway id, meter id, ...): it must be a
/// valid topic level.
fn topic_level(
    report: &mut Report,
    section: &Section,
    key: &str,
    what: &str,
    example: &str,
) -> Option<Spanned<String>> {
    let s = section.required_string(report, key, example)?;
    if let Some(why) = topic_level_problem(s.get_ref()) {
        report.at(
            s.span().start,
            format!(
                "{what} `{}` {why}; it is used as an MQTT topic level, so use only letters, \
                 digits, `-`, `_` and `.`",
                crate::diagnostic::cut(s.get_ref(), MAX_ID_CHARS)
            ),
        );
        return None;
    }
    Some(s)
}

/// `path` as written, resolved against the configuration file's directory when relative.
fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// An optional path key, resolved against `base`.
pub(super) fn path_key(
    report: &mut Report,
    section: &Section,
    key: &str,
    base: &Path,
) -> Option<PathBuf> {
    let s = section.string(report, key)?;
    if s.get_ref().is_empty() {
        report.at(
            s.span().start,
            format!("`{key}` must not be empty; remove the key or name a file"),
        );
        return None;
    }
    Some(resolve(base, s.get_ref()))
}

/// `[gateway]`, with the span of a valid `models_dir`.
pub(super) struct GatewayEntry {
    pub config: GatewayConfig,
    pub models_dir: Option<Range<usize>>,
}

pub(super) fn gateway(
    report: &mut Report,
    table: &DeTable,
    start: usize,
    base: &Path,
) -> GatewayEntry {
    let s = Section::new(report, "[gateway]", table, start, GATEWAY_KEYS);
    let id = topic_level(report, &s, "id", "gateway id", "id = \"tx-0412\"");
    let data_dir = s
        .required_string(report, "data_dir", "data_dir = \"/var/lib/amr-gateway\"")
        .map(|d| resolve(base, d.get_ref()));
    let models_dir_span = s.get("models_dir").map(|v| v.span());
    let models_dir = path_key(report, &s, "models_dir", base);
    let log_level = match s.string(report, "log_level") {
        Some(l) => LogLevel::from_name(l.get_ref()).unwrap_or_else(|| {
            let all: Vec<&str> = LogLevel::ALL.iter().map(|l| l.name()).collect();
            report.at(
                l.span().start,
                format!(
                    "unknown log_level `{}`; use one of: {}",
                    l.get_ref(),
                    all.join(", ")
                ),
            );
            LogLevel::Info
        }),
        None => LogLevel::Info,
    };
    let timezone = match s.string(report, "timezone") {
        Some(name) => match LocalTime::named(name.get_ref()) {
            Ok(zone) => zone,
            Err(_) => {
                let names = LocalTime::names();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                report.at(
                    name.span().start,
                    format!(
                        "unknown time zone `{}`; use an IANA name such as `Asia/Shanghai`; \
                         the nearest known: {}",
                        name.get_ref(),
                        closest(name.get_ref(), &refs, 5).join(", ")
                    ),
                );
                LocalTime::utc()
            }
        },
        None => LocalTime::system(),
    };
    let log_format = s.string(report, "log_format").and_then(|f| {
        match crate::logging::LogFormat::from_name(f.get_ref()) {
            Some(format) => Some(format),
            None => {
                report.at(
                    f.span().start,
                    format!(
                        "unknown log_format `{}`; use `plain` or `json`",
                        f.get_ref()
                    ),
                );
                None
            }
        }
    });
    let require_synced_clock = s
        .boolean(report, "require_synced_clock")
        .is_some_and(Spanned::into_inner);
    GatewayEntry {
        models_dir: models_dir.as_ref().and(models_dir_span),
        config: GatewayConfig {
            id: id.map(Spanned::into_inner).unwrap_or_default(),
            data_dir: data_dir.unwrap_or_default(),
            models_dir,
            log_level,
            timezone,
            log_format,
            require_synced_clock,
        },
    }
}

/// `[mqtt]`. `gateway_id` gives the default client id.
pub(super) fn mqtt(
    report: &mut Report,
    table: &DeTable,
    start: usize,
    base: &Path,
    gateway_id: &str,
) -> MqttConfig {
    let s = Section::new(report, "[mqtt]", table, start, MQTT_KEYS);
    let host = s.required_string(report, "host", "host = \"mqtt.example.net\"");
    let port = s.integer_in(report, "port", 1, 65535, "");
    let topic_prefix = s.string(report, "topic_prefix").and_then(|p| {
        let text = p.get_ref();
        let why = if text.is_empty() {
            Some("is empty")
        } else if text.contains('+') || text.contains('#') {
            Some("contains a wildcard (`+` or `#`)")
        } else if text.starts_with('/') || text.ends_with('/') || text.contains("//") {
            Some("has an empty level (a leading, trailing or doubled `/`)")
        } else if text.chars().any(char::is_whitespace) {
            Some("contains a space")
        } else {
            None
        };
        match why {
            Some(why) => {
                report.at(
                    p.span().start,
                    format!("topic_prefix `{text}` {why}; write e.g. `topic_prefix = \"amr\"`"),
                );
                None
            }
            None => Some(p.into_inner()),
        }
    });
    let client_id = s.string(report, "client_id").and_then(|c| {
        if c.get_ref().is_empty() {
            report.at(
                c.span().start,
                "`client_id` must not be empty; remove it to use `amr-gateway-{gateway id}`",
            );
            None
        } else {
            if !gateway_id.is_empty() && !c.get_ref().contains(gateway_id) {
                report.warn(
                    c.span().start,
                    format!(
                        "client_id `{}` does not contain the gateway id `{gateway_id}`: every \
                         gateway needs its own client id, the same at every start (a broker \
                         drops the older of two connections with one id, and two gateways \
                         would take turns being offline); remove it to use \
                         `amr-gateway-{gateway_id}`, or put the gateway id in it",
                        c.get_ref()
                    ),
                );
            }
            Some(c.into_inner())
        }
    });
    let username = s.string(report, "username").map(Spanned::into_inner);
    let password_file = path_key(report, &s, "password_file", base);
    let tls = s.boolean(report, "tls").map(Spanned::into_inner);
    let ca_file = path_key(report, &s, "ca_file", base);
    let client_cert_file = path_key(report, &s, "client_cert_file", base);
    let client_key_file = path_key(report, &s, "client_key_file", base);
    match (s.get("client_cert_file"), s.get("client_key_file")) {
        (Some(v), None) => report.at(
            v.span().start,
            "`client_cert_file` is set without `client_key_file`; a client certificate needs \
             its private key: set both or neither",
        ),
        (None, Some(v)) => report.at(
            v.span().start,
            "`client_key_file` is set without `client_cert_file`; set both or neither",
        ),
        _ => {}
    }
    // TLS is the default for every broker that is not on this machine; plain MQTT to a remote
    // host must be written out (`tls = false`) and the gateway warns about it at start.
    let host_text = host.as_ref().map_or("", |h| h.get_ref().as_str());
    let tls = tls.unwrap_or(!crate::uplink::tls::is_loopback(host_text));
    if !tls {
        for key in ["ca_file", "client_cert_file", "client_key_file"] {
            if let Some(v) = s.get(key) {
                report.at(
                    v.span().start,
                    format!(
                        "`{key}` is set but TLS is off (`tls = false`, or a loopback host); \
                         set `tls = true` or remove `{key}`"
                    ),
                );
            }
        }
    }
    if let (Some(v), None) = (s.get("password_file"), s.get("username")) {
        report.at(
            v.span().start,
            "`password_file` is set without `username`; MQTT sends a password only with a \
             user name: add `username = \"...\"`",
        );
    }
    let keep_alive_s = s.integer_in(report, "keep_alive_s", 5, 65535, " s");
    let reconnect_max_s = s.integer_in(report, "reconnect_max_s", 1, 86400, " s");
    let max_inflight = s.integer_in(report, "max_inflight", 1, 65535, "");
    let cert_expiry_warn_days = s.integer_in(report, "cert_expiry_warn_days", 1, 3650, " days");
    MqttConfig {
        host: host.map(Spanned::into_inner).unwrap_or_default(),
        port: port.map_or(if tls { 8883 } else { 1883 }, |p| *p.get_ref() as u16),
        topic_prefix: topic_prefix.unwrap_or_else(|| "amr".into()),
        client_id: client_id.unwrap_or_else(|| format!("amr-gateway-{gateway_id}")),
        username,
        password_file,
        tls,
        ca_file,
        client_cert_file,
        client_key_file,
        keep_alive_s: keep_alive_s.map_or(30, |v| *v.get_ref() as u64),
        reconnect_max_s: reconnect_max_s.map_or(60, |v| *v.get_ref() as u64),
        max_inflight: max_inflight.map_or(64, |v| *v.get_ref() as u16),
        cert_expiry_warn_days: cert_expiry_warn_days.map_or(30, |v| *v.get_ref() as u32),
    }
}

/// `[store]`.
pub(super) fn store(report: &mut Report, table: &DeTable, start: usize) -> StoreConfig {
    let s = Section::new(report, "[store]", table, start, STORE_KEYS);
    let history_days = s.integer_in(report, "history_days", 1, 3650, " days");
    let max_size_mb = s.integer_in(report, "max_size_mb", 1, 1 << 20, " MiB");
    let commit_window_ms = s.integer_in(report, "commit_window_ms", 0, 10_000, " ms");
    StoreConfig {
        history_days: history_days.map_or(35, |v| *v.get_ref() as u32),
        max_size_mb: max_size_mb.map_or(1024, |v| *v.get_ref() as u64),
        commit_window_ms: commit_window_ms
            .map_or(crate::store::COMMIT_WINDOW_MS, |v| *v.get_ref() as u64),
    }
}

/// The defaults of a `[store]` section that is left out.
/// `[health]` (optional): how often the retained fleet-health message goes out.
pub(super) fn health(report: &mut Report, table: &DeTable, start: usize) -> HealthConfig {
    let s = Section::new(report, "[health]", table, start, HEALTH_KEYS);
    let interval_s = s.integer_in(report, "interval_s", 0, 86400, " s");
    HealthConfig {
        interval_s: interval_s.map_or(60, |v| *v.get_ref() as u64),
    }
}

pub(super) fn default_store() -> StoreConfig {
    StoreConfig {
        history_days: 35,
        max_size_mb: 1024,
        commit_window_ms: crate::store::COMMIT_WINDOW_MS,
    }
}

/// One `[[bus]]`.
pub(super) struct BusEntry {
    pub config: BusConfig,
    /// Span of a valid `name`.
    pub name: Option<Range<usize>>,
    /// Whether `protocol` was present and known (so `config.protocol` is meaningful).
    pub protocol_known: bool,
    /// Offset of the `protocol` value.
    pub protocol_at: Option<usize>,
    /// Span of a valid `device`.
    pub device: Option<Range<usize>>,
}

pub(super) fn bus(report: &mut Report, table: &DeTable, start: usize, base: &Path) -> BusEntry {
    let s = Section::new(report, "[[bus]]", table, start, BUS_KEYS);
    let name = topic_level(report, &s, "name", "bus name", "name = \"rs485-1\"");
    let label = name.as_ref().map_or_else(
        || "[[bus]]".to_string(),
        |n| format!("bus `{}`", n.get_ref()),
    );
    let written = s.required_string(report, "protocol", "protocol = \"modbus-rtu\"");
    let protocol_at = written.as_ref().map(|p| p.span().start);
    let protocol = match written {
        Some(p) => match BusProtocol::from_name(p.get_ref()) {
            Some(protocol) => Some(protocol),
            None => {
                let all: Vec<&str> = BusProtocol::ALL.iter().map(|p| p.name()).collect();
                let hint = did_you_mean(p.get_ref(), all.iter().copied());
                report.at(
                    p.span().start,
                    format!(
                        "unknown protocol `{}`; {hint}use one of: {}",
                        p.get_ref(),
                        all.join(", ")
                    ),
                );
                None
            }
        },
        None => None,
    };

    let mut device = None;
    let mut address = None;
    // DL/T 645 through a transparent serial server: `address = "host:port"` instead of a
    // `device`, the frames carried raw over TCP.
    let dlt645_tcp = protocol == Some(BusProtocol::Dlt645)
        && s.get("address").is_some()
        && s.get("device").is_none();
    if let Some(protocol) = protocol {
        if protocol.is_tcp() || dlt645_tcp {
            address = tcp_address(report, &s, protocol);
            if let Some(v) = s.get("device") {
                report.at(
                    v.span().start,
                    format!(
                        "`device` is for serial buses, but {label} uses {}; remove it and set \
                         `address = \"host:port\"` of the serial server",
                        protocol.name()
                    ),
                );
            }
        } else {
            device = s
                .required_string(report, "device", "device = \"/dev/ttyS1\"")
                .map(|d| Spanned::new(d.span(), resolve(base, d.get_ref())));
            if let Some(v) = s.get("address") {
                let message = if protocol == BusProtocol::Dlt645 {
                    format!(
                        "{label} has both `device` and `address`; a DL/T 645 bus is either on a \
                         serial `device` or behind a serial server at `address = \"host:port\"`: \
                         remove one"
                    )
                } else {
                    format!(
                        "`address` is for TCP buses, but {label} uses {} on a serial `device`; \
                         remove it, or change `protocol` to modbus-tcp or modbus-rtu-over-tcp",
                        protocol.name()
                    )
                };
                report.at(v.span().start, message);
            }
        }
    }

    let mut serial = if protocol == Some(BusProtocol::Dlt645) {
        SerialSettings::DLT645_DEFAULT
    } else {
        SerialSettings::MODBUS_DEFAULT
    };
    if let Some(b) = s.integer(report, "baud") {
        let dlt645 = (protocol == Some(BusProtocol::Dlt645)).then_some(label.as_str());
        match baud_problem(*b.get_ref(), dlt645) {
            None => serial.baud = *b.get_ref() as u32,
            Some(problem) => {
                if STANDARD_BAUD_RATES
                    .iter()
                    .any(|&r| r as i128 == *b.get_ref())
                {
                    serial.baud = *b.get_ref() as u32;
                }
                report.at(b.span().start, problem);
            }
        }
    }
    if let Some(p) = s.string(report, "parity") {
        match p.get_ref().as_str() {
            "none" => serial.parity = Parity::None,
            "even" => serial.parity = Parity::Even,
            "odd" => serial.parity = Parity::Odd,
            other => report.at(
                p.span().start,
                format!("unknown parity `{other}`; use \"none\", \"even\" or \"odd\""),
            ),
        }
    }
    if let Some(d) = s.integer(report, "data_bits") {
        match bits_problem("data_bits", *d.get_ref()) {
            None => serial.data_bits = *d.get_ref() as u8,
            Some(problem) => report.at(d.span().start, problem),
        }
    }
    if let Some(d) = s.integer(report, "stop_bits") {
        match bits_problem("stop_bits", *d.get_ref()) {
            None => serial.stop_bits = *d.get_ref() as u8,
            Some(problem) => report.at(d.span().start, problem),
        }
    }
    let timeout_ms = s.integer_in(report, "timeout_ms", 1, 60000, " ms");
    let poll_interval_s = s.integer_in(report, "poll_interval_s", 1, 86400, " s");
    let preamble = s.integer_in(report, "preamble", 0, 16, "");
    if let (Some(p), Some(protocol)) = (&preamble, protocol)
        && protocol != BusProtocol::Dlt645
    {
        report.at(
            p.span().start,
            format!(
                "`preamble` is the count of FE bytes before a DL/T 645 request, but {label} is \
                 {}; remove it",
                protocol.name()
            ),
        );
    }
    // A DL/T 645 meter may wait 500 ms before it replies: its default deadline counts that.
    let default_timeout_ms = if protocol == Some(BusProtocol::Dlt645) {
        dlt645_line(&serial).default_timeout().as_millis() as u64
    } else {
        1000
    };

    BusEntry {
        name: name.as_ref().map(Spanned::span),
        protocol_known: protocol.is_some(),
        protocol_at,
        device: device.as_ref().map(Spanned::span),
        config: BusConfig {
            name: name.map(Spanned::into_inner).unwrap_or_default(),
            protocol: protocol.unwrap_or(BusProtocol::ModbusRtu),
            device: device.map(Spanned::into_inner),
            address,
            serial,
            timeout_ms: timeout_ms.map_or(default_timeout_ms, |v| *v.get_ref() as u64),
            poll_interval_s: poll_interval_s.map_or(60, |v| *v.get_ref() as u64),
            preamble: preamble.map_or(crate::protocol::dlt645::codec::DEFAULT_PREAMBLE_LEN, |v| {
                *v.get_ref() as usize
            }),
            line: report.line(start),
        },
    }
}

/// The DL/T 645 line of serial settings (for its default deadline).
fn dlt645_line(serial: &SerialSettings) -> crate::protocol::dlt645::Line {
    use crate::protocol::dlt645::{Line, Parity as P};
    Line {
        baud: serial.baud,
        parity: match serial.parity {
            Parity::None => P::None,
            Parity::Even => P::Even,
            Parity::Odd => P::Odd,
        },
        data_bits: serial.data_bits,
        stop_bits: serial.stop_bits,
    }
}

/// `address = "host:port"` of a TCP bus: required, with a port in 1..=65535.
fn tcp_address(report: &mut Report, s: &Section, protocol: BusProtocol) -> Option<String> {
    let example = "address = \"192.168.1.50:502\"";
    let a = s.required_string(report, "address", example)?;
    let text = a.get_ref();
    let problem = match text.rsplit_once(':') {
        None => Some(format!(
            "address `{text}` has no port; {} needs `host:port`, e.g. `{example}`",
            protocol.name()
        )),
        Some(("", _)) => Some(format!(
            "address `{text}` has no host; write `host:port`, e.g. `{example}`"
        )),
        Some((_, port)) => match port.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => None,
            Ok(p) => Some(format!(
                "address `{text}`: port {p} is not possible; use a port from 1 to 65535 \
                 (Modbus TCP is usually 502)"
            )),
            Err(_) => Some(format!(
                "address `{text}`: `{port}` is not a port number; write `host:port`, e.g. \
                 `{example}`"
            )),
        },
    };
    match problem {
        Some(message) => {
            report.at(a.span().start, message);
            None
        }
        None => Some(a.into_inner()),
    }
}

/// One `[[meter]]`, with the spans of its valid values.
pub(super) struct MeterEntry {
    pub config: MeterConfig,
    pub id: Option<Range<usize>>,
    pub bus: Option<Range<usize>>,
    pub unit: Option<Range<usize>>,
    pub address: Option<Range<usize>>,
    pub model: Option<Range<usize>>,
    pub phase: Option<Range<usize>>,
    /// Span of `unit` / `address` as written, valid or not (for "wrong key for this bus"
    /// messages; and when written, "missing" must not fire).
    pub unit_written: Option<Range<usize>>,
    pub address_written: Option<Range<usize>>,
    pub start: usize,
}

pub(super) fn meter(report: &mut Report, table: &DeTable, start: usize) -> MeterEntry {
    let s = Section::new(report, "[[meter]]", table, start, METER_KEYS);
    let id = topic_level(report, &s, "id", "meter id", "id = \"m-001\"");
    let bus = s.required_string(report, "bus", "bus = \"rs485-1\"");
    let unit = s.integer(report, "unit").and_then(|u| {
        if (1..=247).contains(u.get_ref()) {
            Some(Spanned::new(u.span(), *u.get_ref() as u8))
        } else {
            report.at(
                u.span().start,
                format!(
                    "unit {} is outside 1 to 247; set the meter's Modbus address (unit id) \
                     to 1..247 and write it here",
                    u.get_ref()
                ),
            );
            None
        }
    });
    let address = match s.get("address").map(|v| v.get_ref()) {
        Some(toml::de::DeValue::Integer(_)) => {
            let v = s.get("address").expect("checked above");
            report.at(
                v.span().start,
                format!(
                    "`address` must be a string of 12 digits, found an integer; quote it to \
                     keep leading zeros: `address = \"{:0>12}\"`",
                    report.source(v.span())
                ),
            );
            None
        }
        _ => s.string(report, "address").and_then(|a| {
            let text = a.get_ref();
            if text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()) {
                Some(a)
            } else {
                report.at(
                    a.span().start,
                    format!(
                        "DL/T 645 address `{text}` must be exactly 12 digits (as printed on \
                         the meter's nameplate, padded with leading zeros)"
                    ),
                );
                None
            }
        }),
    };
    let model = s.required_string(report, "model", "model = \"eastron-sdm120\"");
    let multiplier = s.number(report, "multiplier").and_then(|m| {
        let x = *m.get_ref();
        if x.is_finite() && x > 0.0 {
            Some(x)
        } else {
            report.at(
                m.span().start,
                format!(
                    "multiplier {} is not possible; it is CT ratio × PT ratio, a positive \
                     number (1 for a direct-connected meter)",
                    report.source(m.span())
                ),
            );
            None
        }
    });
    let ratios = ratios(report, &s, multiplier);
    let phase = s.string(report, "phase").and_then(|p| {
        if let Some(phase) = crate::model::Phase::from_name(p.get_ref()) {
            Some(Spanned::new(p.span(), phase))
        } else {
            report.at(
                p.span().start,
                format!(
                    "unknown phase `{}`; use \"a\", \"b\", \"c\" (single-phase meters) or \
                         \"abc\" (three-phase)",
                    p.get_ref()
                ),
            );
            None
        }
    });
    let poll_interval_s = s.integer_in(report, "poll_interval_s", 1, 86400, " s");
    let consumption_only = s.boolean(report, "consumption_only");
    let rated_kw = positive(
        report,
        &s,
        "rated_kw",
        "it is the meter's rated power in primary kW (e.g. 13.8 for a 60 A single-phase meter)",
    );
    MeterEntry {
        id: id.as_ref().map(Spanned::span),
        bus: bus.as_ref().map(Spanned::span),
        unit: unit.as_ref().map(Spanned::span),
        address: address.as_ref().map(Spanned::span),
        model: model.as_ref().map(Spanned::span),
        phase: phase.as_ref().map(Spanned::span),
        unit_written: s.get("unit").map(|v| v.span()),
        address_written: s.get("address").map(|v| v.span()),
        start,
        config: MeterConfig {
            id: id.map(Spanned::into_inner).unwrap_or_default(),
            bus: bus.map(Spanned::into_inner).unwrap_or_default(),
            unit: unit.map(Spanned::into_inner),
            address: address.map(Spanned::into_inner),
            model: model.map(Spanned::into_inner).unwrap_or_default(),
            multiplier: ratios.multiplier(),
            ratios,
            phase: phase.map(Spanned::into_inner),
            poll_interval_s: poll_interval_s.map(|v| *v.get_ref() as u64),
            consumption_only: consumption_only.is_some_and(|b| *b.get_ref()),
            rated_kw,
            line: report.line(start),
        },
    }
}

/// One `[[area]]`, with the spans of its meter references.
pub(super) struct AreaEntry {
    pub config: AreaConfig,
    pub id: Option<Range<usize>>,
    /// Span of each `supply` entry (parallel to `config.supply`).
    pub supply: Vec<Range<usize>>,
    /// Span of each `customers` entry (parallel to `config.customers`).
    pub customers: Vec<Range<usize>>,
}

pub(super) fn area(report: &mut Report, table: &DeTable, start: usize) -> AreaEntry {
    let s = Section::new(report, "[[area]]", table, start, AREA_KEYS);
    let id = topic_level(report, &s, "id", "area id", "id = \"tx-0412\"");
    let label = id.as_ref().map_or_else(
        || "this area".to_string(),
        |i| format!("area `{}`", i.get_ref()),
    );
    let supply = match s.get("supply") {
        None => {
            s.missing(report, "supply", "supply = [\"m-supply\"]");
            None
        }
        Some(_) => s.string_array(report, "supply", "meter ids"),
    };
    if let Some(list) = supply.as_ref().filter(|l| l.get_ref().is_empty()) {
        report.at(
            list.span().start,
            format!(
                "{label} has no supply meter; name the meter on the transformer's low-voltage \
                 side, e.g. `supply = [\"m-supply\"]`"
            ),
        );
    }
    let customers = match s.get("customers") {
        None => {
            s.missing(report, "customers", "customers = [\"m-001\", \"m-002\"]");
            None
        }
        Some(_) => s.string_array(report, "customers", "meter ids"),
    };
    let loss_interval_s = s.integer(report, "loss_interval_s").and_then(|v| {
        let n = *v.get_ref();
        if (10..=86400).contains(&n) && 86400 % n == 0 {
            Some(n as u64)
        } else {
            report.at(
                v.span().start,
                format!(
                    "loss_interval_s {n} must be at least 10 and divide a day (86400 s) \
                     evenly, e.g. 300, 900, 1800 or 3600"
                ),
            );
            None
        }
    });
    let high = s.number(report, "high_loss_pct");
    let negative = s.number(report, "negative_loss_pct");
    let high_loss_pct = high.as_ref().map_or(10.0, |v| *v.get_ref());
    let negative_loss_pct = negative.as_ref().map_or(-1.0, |v| *v.get_ref());
    for v in [&high, &negative].into_iter().flatten() {
        if !v.get_ref().is_finite() {
            report.at(v.span().start, "a loss threshold must be a finite number");
        }
    }
    if high_loss_pct <= negative_loss_pct {
        let at = high
            .as_ref()
            .or(negative.as_ref())
            .map_or(start, |v| v.span().start);
        report.at(
            at,
            format!(
                "high_loss_pct ({high_loss_pct}) must be above negative_loss_pct \
                 ({negative_loss_pct}) in {label}"
            ),
        );
    }
    let rated_kva = positive(
        report,
        &s,
        "rated_kva",
        "it is the transformer's nameplate rating in kVA (e.g. 400)",
    );
    let (supply, supply_spans) = split(supply);
    let (customers, customer_spans) = split(customers);
    AreaEntry {
        id: id.as_ref().map(Spanned::span),
        supply: supply_spans,
        customers: customer_spans,
        config: AreaConfig {
            id: id.map(Spanned::into_inner).unwrap_or_default(),
            supply,
            customers,
            loss_interval_s: loss_interval_s.unwrap_or(900),
            high_loss_pct,
            negative_loss_pct,
            rated_kva,
            line: report.line(start),
        },
    }
}

/// A meter's `ct_ratio` and `pt_ratio`, with `multiplier` (already read): `multiplier` alone is
/// a low-voltage meter (PT ratio 1, CT ratio = multiplier); given with the ratios it must equal
/// their product.
fn ratios(report: &mut Report, s: &Section, multiplier: Option<f64>) -> crate::model::Ratios {
    use crate::model::Ratios;
    let ct = positive(
        report,
        s,
        "ct_ratio",
        "it is the CT ratio (60 for 300/5 A CTs)",
    );
    let pt = positive(
        report,
        s,
        "pt_ratio",
        "it is the PT ratio (100 for 10 kV/100 V; 1 for a low-voltage meter)",
    );
    match (ct, pt, multiplier) {
        (None, None, m) => Ratios::from_multiplier(m.unwrap_or(1.0)),
        (ct, pt, m) => {
            let ratios = Ratios {
                ct: ct.unwrap_or(1.0),
                pt: pt.unwrap_or(1.0),
            };
            if let Some(m) = m
                && (m - ratios.multiplier()).abs() > 1e-9 * m.max(1.0)
                && let Some(v) = s.get("multiplier")
            {
                report.at(
                    v.span().start,
                    format!(
                        "multiplier {m} disagrees with ct_ratio {} × pt_ratio {} = {}; the \
                         multiplier is their product: give the ratios alone (or fix the one \
                         that is wrong)",
                        ratios.ct,
                        ratios.pt,
                        ratios.multiplier()
                    ),
                );
            }
            ratios
        }
    }
}

/// Why `baud` cannot be a serial line's rate, if so: one of [`STANDARD_BAUD_RATES`], and on a
/// DL/T 645 line (`dlt645`: how to name the line in the message) one of its rates. The rule of
/// `[[bus]] baud`, which the field tools' `--baud` follows too.
pub fn baud_problem(baud: i128, dlt645: Option<&str>) -> Option<String> {
    if !STANDARD_BAUD_RATES.iter().any(|&r| r as i128 == baud) {
        let rates: Vec<String> = STANDARD_BAUD_RATES.iter().map(u32::to_string).collect();
        return Some(format!(
            "baud {baud} is not a standard rate; use one of: {}",
            rates.join(", ")
        ));
    }
    let dlt645_rates = crate::protocol::dlt645::transport::BAUD_RATES;
    match dlt645 {
        Some(label) if !dlt645_rates.contains(&(baud as u32)) => Some(format!(
            "baud {baud} is not a DL/T 645 rate; {label} is dlt645: use one of 1200, 2400, 4800, \
             9600, 19200 (the meter's display or label shows its rate)"
        )),
        _ => None,
    }
}

/// Why `n` cannot be a serial line's `data_bits` (7 or 8) or `stop_bits` (1 or 2), if so.
pub fn bits_problem(key: &str, n: i128) -> Option<String> {
    let (ok, allowed) = match key {
        "data_bits" => (matches!(n, 7 | 8), "7 or 8"),
        _ => (matches!(n, 1 | 2), "1 or 2"),
    };
    (!ok).then(|| format!("{key} {n} is not possible; use {allowed}"))
}

/// An optional number that must be finite and above 0; `what` says what it is.
fn positive(report: &mut Report, s: &Section, key: &str, what: &str) -> Option<f64> {
    let v = s.number(report, key)?;
    let x = *v.get_ref();
    if x.is_finite() && x > 0.0 {
        Some(x)
    } else {
        report.at(
            v.span().start,
            format!(
                "{key} {} is not possible; {what}: a positive number",
                report.source(v.span())
            ),
        );
        None
    }
}

/// Values and their spans, as two parallel lists.
fn split(list: Option<Spanned<Vec<Spanned<String>>>>) -> (Vec<String>, Vec<Range<usize>>) {
    list.map(Spanned::into_inner)
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.span(), s.into_inner()))
        .map(|(span, s)| (s, span))
        .unzip()
}

/// `[collection]`: `report_at = "HH:MM"`, the local time after midnight when the day's
/// collection report goes out (and its freezes are decided).
pub(super) fn collection(
    report: &mut Report,
    table: &DeTable,
    start: usize,
) -> crate::analytics::collection::CollectionSettings {
    let s = Section::new(report, "[collection]", table, start, &["report_at"]);
    let mut settings = crate::analytics::collection::CollectionSettings::default();
    if let Some(at) = s.string(report, "report_at") {
        match parse_hh_mm(at.get_ref()) {
            Some(secs) if secs > 0 => settings.report_at_s = secs,
            _ => report.at(
                at.span().start,
                format!(
                    "report_at `{}` is not a local time after midnight; write e.g. \
                     `report_at = \"01:00\"` (00:01 to 23:59)",
                    at.get_ref()
                ),
            ),
        }
    }
    settings
}

/// `[time_sync]`: `at = "HH:MM"` or `"off"` (never within five minutes of midnight, when the
/// meters freeze their daily data), `gateway_clock = "systemd" | "trusted"`,
/// `read_interval_s`.
pub(super) fn time_sync(
    report: &mut Report,
    table: &DeTable,
    start: usize,
) -> super::TimeSyncConfig {
    let s = Section::new(
        report,
        "[time_sync]",
        table,
        start,
        &["at", "gateway_clock", "read_interval_s"],
    );
    let mut c = super::TimeSyncConfig::default();
    if let Some(at) = s.string(report, "at") {
        let text = at.get_ref().as_str();
        match parse_hh_mm(text) {
            _ if text == "off" => c.at_minute = None,
            Some(secs) if crate::bus::time_sync::at_near_midnight((secs / 60) as u16) => report.at(
                at.span().start,
                format!(
                    "[time_sync] at `{text}` is within five minutes of midnight, when the meters \
                     freeze their daily data (and refuse a time sync); pick a time from 00:06 to \
                     23:54, e.g. the default \"03:07\""
                ),
            ),
            Some(secs) => c.at_minute = Some((secs / 60) as u16),
            None => report.at(
                at.span().start,
                format!(
                    "[time_sync] at `{text}` is not a local time; write e.g. `at = \"03:07\"`, \
                     or `at = \"off\"` for no daily time sync"
                ),
            ),
        }
    }
    if let Some(clock) = s.string(report, "gateway_clock") {
        match clock.get_ref().as_str() {
            "systemd" => c.gateway_clock = super::GatewayClock::Systemd,
            "trusted" => c.gateway_clock = super::GatewayClock::Trusted,
            other => report.at(
                clock.span().start,
                format!(
                    "[time_sync] gateway_clock `{other}` is not known; use \"systemd\" (trust \
                     the clock while systemd-timesyncd has it synchronised) or \"trusted\""
                ),
            ),
        }
    }
    if let Some(v) = s.integer_in(report, "read_interval_s", 10, 86_400, " s") {
        c.read_interval_s = *v.get_ref() as u64;
    }
    c
}

/// Seconds after midnight of `HH:MM`.
fn parse_hh_mm(text: &str) -> Option<u64> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 3600 + m * 60)
}
