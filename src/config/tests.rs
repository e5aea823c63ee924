//! Tests of the configuration loader: one per kind of mistake, each pinning the exact
//! `FILE:LINE:COL: message`; a file with many mistakes; defaults; and the shipped example.

use super::*;
use crate::meter::{MeterModel, ModelLibrary};
use std::path::Path;

const FILE: &str = "/site/amr.toml";

/// A small valid file; tests introduce one mistake at a time with [`edit`]. Line numbers are
/// given on the right for reading the expected positions.
const BASE: &str = r#"[gateway]
id = "tx-0412"
data_dir = "data"

[mqtt]
host = "broker.local"

[[bus]]
name = "rs485-1"
protocol = "modbus-rtu"
device = "/dev/ttyS1"

[[meter]]
id = "m-supply"
bus = "rs485-1"
unit = 1
model = "chint-dtsu666"

[[meter]]
id = "m-001"
bus = "rs485-1"
unit = 2
model = "eastron-sdm120"
"#;
// line 1 [gateway], 5 [mqtt], 8 [[bus]], 13 [[meter]] m-supply, 19 [[meter]] m-001.

/// The models the tests' files name.
fn library() -> ModelLibrary {
    let mut library = ModelLibrary {
        dlt645: ModelLibrary::builtin().dlt645,
        ..ModelLibrary::default()
    };
    for (name, phases) in [
        ("eastron-sdm630", 3),
        ("eastron-sdm120", 1),
        ("chint-dtsu666", 3),
    ] {
        library.insert(MeterModel {
            name: name.into(),
            vendor: name.split('-').next().unwrap().into(),
            description: format!("test model {name}"),
            phases,
            max_block: 125,
            max_gap: 0,
            unit_switch_pause_ms: 0,
            inter_frame_pause_ms: 0,
            registers: Vec::new(),
            setup: None,
            source: format!("test:{name}"),
        });
    }
    library
}

/// `text` loaded with the tests' models.
fn parse(text: &str) -> Result<Config, ConfigErrors> {
    load_str_with(text, Path::new(FILE), library())
}

/// [`BASE`] as a DL/T 645 bus: protocol `dlt645`, DL/T 645 models, and `unit = 1` of
/// `m-supply` as an address (`m-001` keeps its `unit = 2` for the tests to edit).
fn dlt645_base() -> String {
    edit("protocol = \"modbus-rtu\"", "protocol = \"dlt645\"")
        .replace("model = \"chint-dtsu666\"", "model = \"dlt645-2007\"")
        .replace("model = \"eastron-sdm120\"", "model = \"dlt645-2007\"")
        .replacen("unit = 1\n", "address = \"000000000001\"\n", 1)
}

/// The problems of `text`, as printed by `check-config`.
fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// [`BASE`] with the first `from` replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
}

fn at(line: usize, col: usize, message: &str) -> String {
    format!("{FILE}:{line}:{col}: {message}")
}

#[test]
fn valid_file_gets_defaults() {
    let config = parse(BASE).unwrap();
    assert_eq!(config.source, Path::new(FILE));
    assert_eq!(config.gateway.id, "tx-0412");
    assert_eq!(config.gateway.data_dir, Path::new("/site/data"));
    assert_eq!(config.gateway.models_dir, None);
    assert_eq!(config.gateway.log_level.name(), "info");
    assert_eq!(config.db_path(), Path::new("/site/data/amr-gateway.db"));

    let mqtt = &config.mqtt;
    assert_eq!(mqtt.host, "broker.local");
    // A broker that is not on this machine: TLS by default, on the MQTT-over-TLS port.
    assert_eq!(mqtt.port, 8883);
    assert_eq!(mqtt.topic_prefix, "amr");
    assert_eq!(mqtt.client_id, "amr-gateway-tx-0412");
    assert_eq!(mqtt.username, None);
    assert_eq!(mqtt.password_file, None);
    assert!(mqtt.tls);
    assert_eq!(mqtt.keep_alive_s, 30);
    assert_eq!(mqtt.reconnect_max_s, 60);
    assert_eq!(mqtt.max_inflight, 64);
    assert_eq!(mqtt.cert_expiry_warn_days, 30);

    assert_eq!(config.store.history_days, 35);
    assert_eq!(config.store.max_size_mb, 1024);

    let bus = config.bus("rs485-1").unwrap();
    assert_eq!(bus.protocol, BusProtocol::ModbusRtu);
    assert_eq!(bus.device.as_deref(), Some(Path::new("/dev/ttyS1")));
    assert_eq!(bus.address, None);
    assert_eq!(bus.serial, SerialSettings::MODBUS_DEFAULT);
    assert_eq!(bus.serial.bits_per_char(), 10);
    assert_eq!(bus.timeout_ms, 1000);
    assert_eq!(bus.poll_interval_s, 60);
    assert_eq!(bus.line, 8);

    let meter = config.meter("m-001").unwrap();
    assert_eq!(meter.bus, "rs485-1");
    assert_eq!(meter.unit, Some(2));
    assert_eq!(meter.address, None);
    assert_eq!(meter.model, "eastron-sdm120");
    assert_eq!(meter.multiplier, 1.0);
    assert_eq!(meter.phase, None);
    assert_eq!(meter.poll_interval_s, None);
    assert_eq!(meter.line, 19);

    let on_bus: Vec<&str> = config.meters_on("rs485-1").map(|m| m.id.as_str()).collect();
    assert_eq!(on_bus, ["m-supply", "m-001"]);
    assert_eq!(config.meters_on("elsewhere").count(), 0);
    assert!(config.areas.is_empty());
    assert_eq!(config.models.names().len(), 3);
}

#[test]
fn every_key_set_is_read() {
    let text = r#"
[gateway]
id = "tx-0412"
data_dir = "/var/lib/amr-gateway"
log_level = "debug"

[mqtt]
host = "10.0.0.1"
port = 8883
topic_prefix = "grid/amr"
client_id = "gw-0412"
username = "gw"
password_file = "secrets/mqtt-password"
tls = true
ca_file = "/etc/ssl/ca.pem"
client_cert_file = "certs/gw.pem"
client_key_file = "certs/gw.key"
keep_alive_s = 45
reconnect_max_s = 120
max_inflight = 16
cert_expiry_warn_days = 45

[store]
history_days = 90
max_size_mb = 256

[[bus]]
name = "dlt"
protocol = "dlt645"
device = "/dev/ttyS2"

[[bus]]
name = "tcp"
protocol = "modbus-rtu-over-tcp"
address = "192.168.1.50:4001"
baud = 19200
parity = "odd"
data_bits = 7
stop_bits = 2
timeout_ms = 0x1F4
poll_interval_s = 15

[[meter]]
id = "m-supply"
bus = "tcp"
unit = 0x0A
model = "chint-dtsu666"
multiplier = 100
phase = "abc"
poll_interval_s = 5

[[meter]]
id = "m-dlt"
bus = "dlt"
address = "000012345678"
model = "dlt645-2007"
multiplier = 1.5
phase = "abc"

[[area]]
id = "tx-0412"
supply = ["m-supply"]
customers = ["m-dlt"]
loss_interval_s = 3600
high_loss_pct = 8.5
negative_loss_pct = -2
"#;
    let config = parse(text).unwrap();
    assert_eq!(config.gateway.log_level.name(), "debug");
    let mqtt = &config.mqtt;
    assert_eq!(mqtt.port, 8883);
    assert_eq!(mqtt.topic_prefix, "grid/amr");
    assert_eq!(mqtt.client_id, "gw-0412");
    assert_eq!(mqtt.username.as_deref(), Some("gw"));
    assert_eq!(
        mqtt.password_file.as_deref(),
        Some(Path::new("/site/secrets/mqtt-password"))
    );
    assert!(mqtt.tls);
    assert_eq!(mqtt.ca_file.as_deref(), Some(Path::new("/etc/ssl/ca.pem")));
    assert_eq!(
        mqtt.client_key_file.as_deref(),
        Some(Path::new("/site/certs/gw.key"))
    );
    assert_eq!(
        (mqtt.keep_alive_s, mqtt.reconnect_max_s, mqtt.max_inflight),
        (45, 120, 16)
    );
    assert_eq!(mqtt.cert_expiry_warn_days, 45);
    assert_eq!(config.store.history_days, 90);
    assert_eq!(config.store.max_size_mb, 256);

    let dlt = config.bus("dlt").unwrap();
    assert_eq!(dlt.serial, SerialSettings::DLT645_DEFAULT);
    assert_eq!(dlt.serial.bits_per_char(), 11);
    let tcp = config.bus("tcp").unwrap();
    assert_eq!(tcp.address.as_deref(), Some("192.168.1.50:4001"));
    assert_eq!(
        tcp.serial,
        SerialSettings {
            baud: 19200,
            parity: Parity::Odd,
            data_bits: 7,
            stop_bits: 2
        }
    );
    assert_eq!((tcp.timeout_ms, tcp.poll_interval_s), (500, 15));

    let supply = config.meter("m-supply").unwrap();
    assert_eq!(supply.unit, Some(10));
    assert_eq!(supply.multiplier, 100.0);
    assert_eq!(supply.phase, Some(crate::model::Phase::Abc));
    assert_eq!(supply.poll_interval_s, Some(5));
    let dlt_meter = config.meter("m-dlt").unwrap();
    assert_eq!(dlt_meter.address.as_deref(), Some("000012345678"));
    assert_eq!(dlt_meter.multiplier, 1.5);

    let area = config.area("tx-0412").unwrap();
    assert_eq!(area.supply, ["m-supply"]);
    assert_eq!(area.customers, ["m-dlt"]);
    assert_eq!(area.loss_interval_s, 3600);
    assert_eq!((area.high_loss_pct, area.negative_loss_pct), (8.5, -2.0));
}

#[test]
fn area_defaults() {
    let text =
        format!("{BASE}\n[[area]]\nid = \"a\"\nsupply = [\"m-supply\"]\ncustomers = [\"m-001\"]\n");
    let config = parse(&text).unwrap();
    let area = &config.areas[0];
    assert_eq!(area.loss_interval_s, 900);
    assert_eq!(area.high_loss_pct, 10.0);
    assert_eq!(area.negative_loss_pct, -1.0);
    assert_eq!(area.line, 25);
}

#[test]
fn syntax_error() {
    let text = edit("id = \"tx-0412\"", "id = \"tx-0412");
    assert_eq!(
        problems(&text),
        [at(
            2,
            14,
            "TOML syntax: invalid basic string, expected `\"`"
        )]
    );
}

#[test]
fn duplicate_key_is_a_syntax_error_naming_the_key() {
    let text = edit("unit = 2\n", "unit = 2\nunit = 3\n");
    assert_eq!(
        problems(&text),
        [at(
            23,
            1,
            "`unit` is defined twice; a key or [section] may appear only once (repeated \
             sections are written [[bus]], [[meter]], [[area]])"
        )]
    );
}

#[test]
fn unknown_key_suggests_the_nearest() {
    let text = edit(
        "device = \"/dev/ttyS1\"\n",
        "device = \"/dev/ttyS1\"\nbaudrate = 9600\n",
    );
    assert_eq!(
        problems(&text),
        [at(
            12,
            1,
            "unknown key `baudrate` in [[bus]]; did you mean `baud`?"
        )]
    );
}

#[test]
fn unknown_key_without_a_near_one_lists_the_keys() {
    let text = edit(
        "data_dir = \"data\"\n",
        "data_dir = \"data\"\n  speed = 8\n",
    );
    assert_eq!(
        problems(&text),
        [at(
            4,
            3,
            "unknown key `speed` in [gateway]; the keys of [gateway] are: id, data_dir, \
             models_dir, log_level, timezone, log_format, require_synced_clock"
        )]
    );
}

#[test]
fn unknown_section() {
    let text = format!("{BASE}\n[[meters]]\nid = \"x\"\n");
    assert_eq!(
        problems(&text),
        [at(
            25,
            3,
            "unknown section `meters`; did you mean `[[meter]]`? the sections are: [gateway], \
             [mqtt], [store], [[bus]], [[meter]], [[area]], [loss], [alarms], [voltage_quality], \
             [freeze], [curve], [collection], [time_sync], [[command_key]], [commands], \
             [health]"
        )]
    );
}

#[test]
fn freeze_and_collection_keys_reach_the_freeze_engine() {
    let text = format!(
        "{}\n[freeze]\nmax_extrapolate_s = 600\n\n[collection]\nreport_at = \"00:45\"\n",
        edit(
            "data_dir = \"data\"",
            "data_dir = \"data\"\ntimezone = \"Asia/Shanghai\""
        )
    );
    let p = parse(&text).unwrap().pipeline_settings();
    assert_eq!(p.freeze.max_extrapolate_s, 600);
    assert_eq!(p.freeze.decide_after_s, 45 * 60);
    assert_eq!(p.freeze.zone.name(), "Asia/Shanghai");
    assert_eq!(p.collection_groups[0].meters, ["m-supply", "m-001"]);

    let text = format!("{BASE}\n[collection]\nreport_at = \"25:00\"\n");
    let line = text
        .lines()
        .position(|l| l.starts_with("report_at"))
        .unwrap()
        + 1;
    assert_eq!(
        problems(&text),
        [at(
            line,
            13,
            "report_at `25:00` is not a local time after midnight; write e.g. \
             `report_at = \"01:00\"` (00:01 to 23:59)"
        )]
    );
}

#[test]
fn curve_keys_reach_the_curve_engine_and_a_grid_that_cannot_be_is_refused() {
    let text = format!(
        "{}\n[curve]\ninterval_min = 5\nblock_min = 30\nmax_bridge_s = 900\n",
        edit(
            "data_dir = \"data\"",
            "data_dir = \"data\"\ntimezone = \"Asia/Shanghai\""
        )
    );
    let p = parse(&text).unwrap().pipeline_settings();
    assert_eq!((p.curve.interval_min, p.curve.block_min), (5, 30));
    assert_eq!(p.curve.max_bridge_s, 900);
    assert!(p.curve.enabled);
    assert_eq!(p.curve.zone.name(), "Asia/Shanghai");
    assert_eq!(parse(BASE).unwrap().curve.interval_min, 15);

    let text = format!("{BASE}\n[curve]\ninterval_min = 7\n");
    let line = text
        .lines()
        .position(|l| l.starts_with("interval_min"))
        .unwrap()
        + 1;
    assert_eq!(
        problems(&text),
        [at(
            line,
            16,
            "[curve] interval_min 7 does not divide the hour; use 1, 2, 3, 4, 5, 6, 10, 12, \
             15, 20, 30 or 60"
        )]
    );
}

#[test]
fn single_bracket_for_a_repeated_section() {
    let text = format!("{BASE}\n[area]\nid = \"a\"\n");
    assert_eq!(
        problems(&text),
        [at(
            25,
            1,
            "`[area]` must be written `[[area]]` (double brackets): there is one [[area]] \
             section per area"
        )]
    );
}

#[test]
fn wrong_type() {
    let text = edit(
        "device = \"/dev/ttyS1\"\n",
        "device = \"/dev/ttyS1\"\nbaud = \"9600\"\n",
    );
    assert_eq!(
        problems(&text),
        [at(12, 8, "`baud` must be an integer, found a string")]
    );
    let text = format!("{BASE}\n[store]\nhistory_days = 3.5\n");
    assert_eq!(
        problems(&text),
        [at(
            26,
            16,
            "`history_days` must be an integer, found a float"
        )]
    );
    let text = edit(
        "host = \"broker.local\"",
        "host = \"broker.local\"\ntls = \"yes\"",
    );
    assert_eq!(
        problems(&text),
        [at(
            7,
            7,
            "`tls` must be a boolean (true or false), found a string"
        )]
    );
}

#[test]
fn missing_required_keys() {
    let text = edit("host = \"broker.local\"\n", "");
    assert_eq!(
        problems(&text),
        [at(
            5,
            1,
            "missing required key `host` in [mqtt]; add e.g. `host = \"mqtt.example.net\"`"
        )]
    );
    let text = edit("id = \"tx-0412\"\ndata_dir = \"data\"\n", "\n\n");
    assert_eq!(
        problems(&text),
        [
            at(
                1,
                1,
                "missing required key `id` in [gateway]; add e.g. `id = \"tx-0412\"`"
            ),
            at(
                1,
                1,
                "missing required key `data_dir` in [gateway]; add e.g. \
                 `data_dir = \"/var/lib/amr-gateway\"`"
            ),
        ]
    );
    let text = edit("model = \"eastron-sdm120\"\n", "\n");
    assert_eq!(
        problems(&text),
        [at(
            19,
            1,
            "missing required key `model` in [[meter]]; add e.g. `model = \"eastron-sdm120\"`"
        )]
    );
}

#[test]
fn missing_section() {
    let text = edit("[mqtt]\nhost = \"broker.local\"\n", "\n\n");
    assert_eq!(
        problems(&text),
        [at(
            1,
            1,
            "missing section [mqtt]; add it, with at least `host`"
        )]
    );
}

#[test]
fn serial_bus_needs_a_device_and_tcp_bus_an_address() {
    let text = edit("device = \"/dev/ttyS1\"\n", "\n");
    assert_eq!(
        problems(&text),
        [at(
            8,
            1,
            "missing required key `device` in [[bus]]; add e.g. `device = \"/dev/ttyS1\"`"
        )]
    );
    let text = edit("protocol = \"modbus-rtu\"", "protocol = \"modbus-tcp\"");
    assert_eq!(
        problems(&text),
        [
            at(
                8,
                1,
                "missing required key `address` in [[bus]]; add e.g. \
                 `address = \"192.168.1.50:502\"`"
            ),
            at(
                11,
                10,
                "`device` is for serial buses, but bus `rs485-1` uses modbus-tcp; remove it \
                 and set `address = \"host:port\"` of the serial server"
            ),
        ]
    );
    let text = edit(
        "device = \"/dev/ttyS1\"",
        "device = \"/dev/ttyS1\"\naddress = \"10.0.0.5:502\"",
    );
    assert_eq!(
        problems(&text),
        [at(
            12,
            11,
            "`address` is for TCP buses, but bus `rs485-1` uses modbus-rtu on a serial \
             `device`; remove it, or change `protocol` to modbus-tcp or modbus-rtu-over-tcp"
        )]
    );
}

#[test]
fn tcp_address_needs_a_port() {
    let text = edit(
        "protocol = \"modbus-rtu\"\ndevice = \"/dev/ttyS1\"",
        "protocol = \"modbus-tcp\"\naddress = \"10.0.0.5:0\"",
    );
    assert_eq!(
        problems(&text),
        [at(
            11,
            11,
            "address `10.0.0.5:0`: port 0 is not possible; use a port from 1 to 65535 \
             (Modbus TCP is usually 502)"
        )]
    );
    let text = edit(
        "protocol = \"modbus-rtu\"\ndevice = \"/dev/ttyS1\"",
        "protocol = \"modbus-tcp\"\naddress = \"10.0.0.5\"",
    );
    assert_eq!(
        problems(&text),
        [at(
            11,
            11,
            "address `10.0.0.5` has no port; modbus-tcp needs `host:port`, e.g. \
             `address = \"192.168.1.50:502\"`"
        )]
    );
}

#[test]
fn meter_needs_the_address_kind_of_its_bus() {
    let text = edit("unit = 2\n", "\n");
    assert_eq!(
        problems(&text),
        [at(
            19,
            1,
            "missing required key `unit` in [[meter]]: meter `m-001` is on Modbus bus \
             `rs485-1`; add its unit id (1..247), e.g. `unit = 1`"
        )]
    );
    let text = edit("unit = 2\n", "address = \"000000000002\"\n");
    assert_eq!(
        problems(&text),
        [
            at(
                19,
                1,
                "missing required key `unit` in [[meter]]: meter `m-001` is on Modbus bus \
                 `rs485-1`; add its unit id (1..247), e.g. `unit = 1`"
            ),
            at(
                22,
                11,
                "`address` is a DL/T 645 meter address, but bus `rs485-1` is modbus-rtu; give \
                 meter `m-001` its Modbus `unit` id instead"
            ),
        ]
    );
    // On a DL/T 645 bus it is the other way round.
    let text = dlt645_base();
    assert_eq!(
        problems(&text),
        [
            at(
                19,
                1,
                "missing required key `address` in [[meter]]: meter `m-001` is on DL/T 645 bus \
                 `rs485-1`; add its 12-digit address, e.g. `address = \"000012345678\"`"
            ),
            at(
                22,
                8,
                "`unit` is a Modbus unit id, but bus `rs485-1` is dlt645; give meter `m-001` \
                 its 12-digit DL/T 645 `address` instead"
            ),
        ]
    );
}

#[test]
fn meter_on_unknown_bus() {
    let text = edit("bus = \"rs485-1\"\nunit = 2", "bus = \"rs485-2\"\nunit = 2");
    assert_eq!(
        problems(&text),
        [at(
            21,
            7,
            "meter `m-001` is on bus `rs485-2`, which is not defined; did you mean `rs485-1`? \
             defined buses: rs485-1"
        )]
    );
}

#[test]
fn two_meters_with_one_unit_on_one_bus() {
    let text = edit("unit = 2", "unit = 1");
    assert_eq!(
        problems(&text),
        [at(
            22,
            8,
            "meter `m-001` and meter `m-supply` (line 13) both use unit 1 on bus `rs485-1`; \
             give each meter on a bus its own unit"
        )]
    );
}

#[test]
fn two_dlt645_meters_with_one_address() {
    let text = dlt645_base()
        .replacen("000000000001", "000000000007", 1)
        .replacen("unit = 2\n", "address = \"000000000007\"\n", 1);
    assert_eq!(
        problems(&text),
        [at(
            22,
            11,
            "meter `m-001` and meter `m-supply` (line 13) both use address 000000000007 on bus \
             `rs485-1`; give each meter on a bus its own address"
        )]
    );
}

#[test]
fn duplicate_ids() {
    let text = edit("id = \"m-001\"", "id = \"m-supply\"");
    assert_eq!(
        problems(&text),
        [at(
            20,
            6,
            "duplicate meter id `m-supply`; the first [[meter]] with this id is at line 13: \
             give each meter its own id"
        )]
    );
    let text = format!(
        "{BASE}\n[[bus]]\nname = \"rs485-1\"\nprotocol = \"modbus-rtu\"\ndevice = \"/dev/ttyS2\"\n"
    );
    assert_eq!(
        problems(&text),
        [at(
            26,
            8,
            "duplicate bus name `rs485-1`; the first [[bus]] with this name is at line 8: give \
             each bus its own name"
        )]
    );
    let text = format!(
        "{BASE}\n[[area]]\nid = \"a\"\nsupply = [\"m-supply\"]\ncustomers = []\n\
         \n[[area]]\nid = \"a\"\nsupply = [\"m-001\"]\ncustomers = []\n"
    );
    assert_eq!(
        problems(&text),
        [at(
            31,
            6,
            "duplicate area id `a`; the first [[area]] with this id is at line 25: give each \
             area its own id"
        )]
    );
}

#[test]
fn an_area_named_like_a_bus() {
    let text =
        format!("{BASE}\n[[area]]\nid = \"rs485-1\"\nsupply = [\"m-supply\"]\ncustomers = []\n");
    assert_eq!(
        problems(&text),
        [at(
            26,
            6,
            "area `rs485-1` has the same name as bus `rs485-1` (line 8); area_outage alarms \
             are named after an area or a bus: give them different names"
        )]
    );
}

#[test]
fn two_buses_on_one_device() {
    let text = format!(
        "{BASE}\n[[bus]]\nname = \"rs485-2\"\nprotocol = \"modbus-rtu\"\ndevice = \"/dev/ttyS1\"\n"
    );
    assert_eq!(
        problems(&text),
        [at(
            28,
            10,
            "device `/dev/ttyS1` is already used by bus `rs485-1` (line 8); one serial port is \
             one bus: put all its meters on that bus"
        )]
    );
}

#[test]
fn unknown_model() {
    let text = edit("model = \"eastron-sdm120\"", "model = \"eastron-sdm12\"");
    assert_eq!(
        problems(&text),
        [at(
            23,
            9,
            "unknown meter model `eastron-sdm12`; did you mean `eastron-sdm120`? models \
             available: chint-dtsu666, dlt645-1997, dlt645-2007, eastron-sdm120, eastron-sdm630"
        )]
    );
    let text = edit("model = \"eastron-sdm120\"", "model = \"acme-9000\"");
    assert_eq!(
        problems(&text),
        [at(
            23,
            9,
            "unknown meter model `acme-9000`; models available: chint-dtsu666, dlt645-1997, dlt645-2007, \
             eastron-sdm120, eastron-sdm630"
        )]
    );
}

#[test]
fn phase_must_fit_the_model() {
    let text = edit("unit = 2\n", "unit = 2\nphase = \"abc\"\n");
    assert_eq!(
        problems(&text),
        [at(
            23,
            9,
            "meter `m-001`: model `eastron-sdm120` is single-phase; set `phase` to the phase it \
             is connected to: \"a\", \"b\" or \"c\""
        )]
    );
    let text = edit("unit = 1\n", "unit = 1\nphase = \"b\"\n");
    assert_eq!(
        problems(&text),
        [at(
            17,
            9,
            "meter `m-supply`: model `chint-dtsu666` is three-phase; use `phase = \"abc\"` or \
             leave `phase` out"
        )]
    );
    let text = edit("unit = 1\n", "unit = 1\nphase = \"L1\"\n");
    assert_eq!(
        problems(&text),
        [at(
            17,
            9,
            "unknown phase `L1`; use \"a\", \"b\", \"c\" (single-phase meters) or \"abc\" \
             (three-phase)"
        )]
    );
}

#[test]
fn impossible_serial_settings() {
    let text = edit(
        "device = \"/dev/ttyS1\"\n",
        "device = \"/dev/ttyS1\"\nbaud = 9601\nparity = \"mark\"\ndata_bits = 9\nstop_bits = 3\n",
    );
    assert_eq!(
        problems(&text),
        [
            at(
                12,
                8,
                "baud 9601 is not a standard rate; use one of: 300, 600, 1200, 2400, 4800, \
                 9600, 14400, 19200, 38400, 57600, 115200, 230400"
            ),
            at(
                13,
                10,
                "unknown parity `mark`; use \"none\", \"even\" or \"odd\""
            ),
            at(14, 13, "data_bits 9 is not possible; use 7 or 8"),
            at(15, 13, "stop_bits 3 is not possible; use 1 or 2"),
        ]
    );
}

#[test]
fn unit_id_range() {
    let text = edit("unit = 2", "unit = 248");
    assert_eq!(
        problems(&text),
        [at(
            22,
            8,
            "unit 248 is outside 1 to 247; set the meter's Modbus address (unit id) to 1..247 and \
             write it here"
        )]
    );
    let text = edit("unit = 2", "unit = 0");
    assert_eq!(
        problems(&text),
        [at(
            22,
            8,
            "unit 0 is outside 1 to 247; set the meter's Modbus address (unit id) to 1..247 and \
             write it here"
        )]
    );
}

#[test]
fn dlt645_address_is_12_digits() {
    let dlt = dlt645_base();
    let text = dlt.replacen("unit = 2\n", "address = \"12345\"\n", 1);
    assert_eq!(
        problems(&text),
        [at(
            22,
            11,
            "DL/T 645 address `12345` must be exactly 12 digits (as printed on the meter's \
             nameplate, padded with leading zeros)"
        )]
    );
    let text = dlt.replacen("unit = 2\n", "address = 12345678\n", 1);
    assert_eq!(
        problems(&text),
        [at(
            22,
            11,
            "`address` must be a string of 12 digits, found an integer; quote it to keep \
             leading zeros: `address = \"000012345678\"`"
        )]
    );
}

#[test]
fn timeouts_intervals_and_ports() {
    let text = edit(
        "device = \"/dev/ttyS1\"\n",
        "device = \"/dev/ttyS1\"\ntimeout_ms = 0\npoll_interval_s = 0\n",
    )
    .replacen(
        "host = \"broker.local\"",
        "host = \"broker.local\"\nport = 0",
        1,
    );
    assert_eq!(
        problems(&text),
        [
            at(7, 8, "`port` must be from 1 to 65535, found 0"),
            at(13, 14, "`timeout_ms` must be from 1 to 60000 ms, found 0"),
            at(
                14,
                19,
                "`poll_interval_s` must be from 1 to 86400 s, found 0"
            ),
        ]
    );
    let text = edit(
        "device = \"/dev/ttyS1\"\n",
        "device = \"/dev/ttyS1\"\ntimeout_ms = 60001\n",
    );
    assert_eq!(
        problems(&text),
        [at(
            12,
            14,
            "`timeout_ms` must be from 1 to 60000 ms, found 60001"
        )]
    );
}

#[test]
fn multiplier_must_be_positive_and_finite() {
    for (written, col) in [("0", 14), ("-100", 14), ("nan", 14), ("inf", 14)] {
        let text = edit("unit = 1\n", &format!("unit = 1\nmultiplier = {written}\n"));
        assert_eq!(
            problems(&text),
            [at(
                17,
                col,
                &format!(
                    "multiplier {written} is not possible; it is CT ratio × PT ratio, a \
                     positive number (1 for a direct-connected meter)"
                )
            )]
        );
    }
    let text = edit("unit = 1\n", "unit = 1\nmultiplier = \"100\"\n");
    assert_eq!(
        problems(&text),
        [at(17, 14, "`multiplier` must be a number, found a string")]
    );
}

#[test]
fn a_client_id_without_the_gateway_id_is_warned_about() {
    let with = |id: &str| {
        let text = edit("[mqtt]\n", &format!("[mqtt]\nclient_id = \"{id}\"\n"));
        let config = parse(&text).unwrap();
        config
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(with("amr-tx-0412-main"), Vec::<String>::new());
    let warnings = with("amr-gateway");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("client_id `amr-gateway` does not contain the gateway id `tx-0412`"),
        "{warnings:?}"
    );
}

#[test]
fn ct_and_pt_ratios_make_the_multiplier() {
    use crate::model::Ratios;
    let config = parse(&edit(
        "unit = 1\n",
        "unit = 1\nct_ratio = 60\npt_ratio = 100\n",
    ))
    .unwrap();
    let meter = config.meters.iter().find(|m| m.unit == Some(1)).unwrap();
    assert_eq!(
        meter.ratios,
        Ratios {
            ct: 60.0,
            pt: 100.0
        }
    );
    assert_eq!(meter.multiplier, 6000.0);
    // A multiplier alone is a low-voltage meter; given with the ratios it must agree.
    let config = parse(&edit("unit = 1\n", "unit = 1\nmultiplier = 60\n")).unwrap();
    let meter = config.meters.iter().find(|m| m.unit == Some(1)).unwrap();
    assert_eq!(meter.ratios, Ratios::from_multiplier(60.0));
    let agreeing = edit("unit = 1\n", "unit = 1\nmultiplier = 60\nct_ratio = 60\n");
    assert!(parse(&agreeing).is_ok());
    let text = edit("unit = 1\n", "unit = 1\nmultiplier = 80\nct_ratio = 60\n");
    assert_eq!(
        problems(&text),
        [at(
            17,
            14,
            "multiplier 80 disagrees with ct_ratio 60 × pt_ratio 1 = 60; the multiplier is \
             their product: give the ratios alone (or fix the one that is wrong)"
        )]
    );
    let text = edit("unit = 1\n", "unit = 1\nct_ratio = 0\n");
    assert_eq!(
        problems(&text),
        [at(
            17,
            12,
            "ct_ratio 0 is not possible; it is the CT ratio (60 for 300/5 A CTs): a positive \
             number"
        )]
    );
}

#[test]
fn unknown_protocol() {
    let text = edit("protocol = \"modbus-rtu\"", "protocol = \"modbus-rt\"");
    assert_eq!(
        problems(&text),
        [at(
            10,
            12,
            "unknown protocol `modbus-rt`; did you mean `modbus-rtu`? use one of: modbus-rtu, \
             modbus-tcp, modbus-rtu-over-tcp, dlt645"
        )]
    );
}

#[test]
fn ids_must_be_topic_levels() {
    let text = edit("id = \"tx-0412\"", "id = \"tx/0412\"");
    assert_eq!(
        problems(&text),
        [at(
            2,
            6,
            "gateway id `tx/0412` contains `/`; it is used as an MQTT topic level, so use only \
             letters, digits, `-`, `_` and `.`"
        )]
    );
    let text = edit("id = \"m-001\"", "id = \"m 001\"");
    assert_eq!(
        problems(&text),
        [at(
            20,
            6,
            "meter id `m 001` contains a space; it is used as an MQTT topic level, so use only \
             letters, digits, `-`, `_` and `.`"
        )]
    );
    let text = edit("id = \"m-001\"", "id = \"m+#\"");
    assert_eq!(
        problems(&text),
        [at(
            20,
            6,
            "meter id `m+#` contains `+`; it is used as an MQTT topic level, so use only \
             letters, digits, `-`, `_` and `.`"
        )]
    );
    let text = edit("id = \"m-001\"", "id = \"\"");
    assert_eq!(
        problems(&text),
        [at(
            20,
            6,
            "`id` must not be empty; write e.g. `id = \"m-001\"`"
        )]
    );
}

#[test]
fn timezone_is_an_iana_name_and_a_wrong_one_lists_near_names() {
    let text = edit(
        "data_dir = \"data\"",
        "data_dir = \"data\"\ntimezone = \"Europe/Berlin\"",
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.gateway.timezone.name(), "Europe/Berlin");
    assert_eq!(
        config.pipeline_settings().voltage.zone.name(),
        "Europe/Berlin"
    );

    let text = edit(
        "data_dir = \"data\"",
        "data_dir = \"data\"\ntimezone = \"Asia/Shangai\"",
    );
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(&at(4, 12, "unknown time zone `Asia/Shangai`"))
            && p[0].contains("Asia/Shanghai"),
        "{p:?}"
    );
}

#[test]
fn topic_prefix_and_log_level() {
    let text = edit(
        "host = \"broker.local\"",
        "host = \"broker.local\"\ntopic_prefix = \"amr/#\"",
    )
    .replacen(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nlog_level = \"verbose\"",
        1,
    );
    assert_eq!(
        problems(&text),
        [
            at(
                4,
                13,
                "unknown log_level `verbose`; use one of: error, warn, info, debug, trace"
            ),
            at(
                8,
                16,
                "topic_prefix `amr/#` contains a wildcard (`+` or `#`); write e.g. \
                 `topic_prefix = \"amr\"`"
            ),
        ]
    );
}

#[test]
fn client_certificate_needs_its_key() {
    let text = edit(
        "host = \"broker.local\"",
        "host = \"broker.local\"\ntls = true\nclient_cert_file = \"gw.pem\"",
    );
    assert_eq!(
        problems(&text),
        [at(
            8,
            20,
            "`client_cert_file` is set without `client_key_file`; a client certificate needs \
             its private key: set both or neither"
        )]
    );
}

#[test]
fn missing_models_dir() {
    let text = edit(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nmodels_dir = \"no-such-dir\"",
    );
    assert_eq!(
        problems(&text),
        [at(
            4,
            14,
            "models_dir `/site/no-such-dir` is not a directory; create it or remove `models_dir`"
        )]
    );
}

/// [`BASE`] plus a second customer meter and the given `[[area]]` sections (from line 31).
fn with_areas(areas: &str) -> String {
    format!(
        "{BASE}\n[[meter]]\nid = \"m-002\"\nbus = \"rs485-1\"\nunit = 3\nmodel = \"eastron-sdm120\"\n\n{areas}"
    )
}

#[test]
fn area_names_an_undefined_meter() {
    let text = with_areas(
        "[[area]]\nid = \"a\"\nsupply = [\"m-supply\"]\ncustomers = [\"m-001\", \"m-003\"]\n",
    );
    assert_eq!(
        problems(&text),
        [at(
            34,
            23,
            "area `a` names meter `m-003`, which is not defined; did you mean `m-001`? define \
             it with a [[meter]] or remove it from the area"
        )]
    );
}

#[test]
fn meter_in_two_areas() {
    let text = with_areas(
        "[[area]]\nid = \"a\"\nsupply = [\"m-supply\"]\ncustomers = [\"m-001\"]\n\n\
         [[area]]\nid = \"b\"\nsupply = [\"m-002\"]\ncustomers = [\"m-001\"]\n",
    );
    assert_eq!(
        problems(&text),
        [at(
            39,
            14,
            "meter `m-001` is already in area `a` (line 31); a meter belongs to one area only: \
             remove it from one of them"
        )]
    );
}

#[test]
fn area_without_supply_meter() {
    let text = with_areas("[[area]]\nid = \"a\"\nsupply = []\ncustomers = [\"m-001\"]\n");
    assert_eq!(
        problems(&text),
        [at(
            33,
            10,
            "area `a` has no supply meter; name the meter on the transformer's low-voltage \
             side, e.g. `supply = [\"m-supply\"]`"
        )]
    );
    let text = with_areas("[[area]]\nid = \"a\"\ncustomers = [\"m-001\"]\n");
    assert_eq!(
        problems(&text),
        [at(
            31,
            1,
            "missing required key `supply` in [[area]]; add e.g. `supply = [\"m-supply\"]`"
        )]
    );
}

#[test]
fn customer_that_is_the_supply_meter() {
    let text = with_areas(
        "[[area]]\nid = \"a\"\nsupply = [\"m-supply\"]\ncustomers = [\"m-001\", \"m-supply\"]\n",
    );
    assert_eq!(
        problems(&text),
        [at(
            34,
            23,
            "meter `m-supply` is both the supply meter and a customer of area `a`; remove it \
             from `customers`"
        )]
    );
    let text = with_areas(
        "[[area]]\nid = \"a\"\nsupply = [\"m-supply\"]\ncustomers = [\"m-001\", \"m-001\"]\n",
    );
    assert_eq!(
        problems(&text),
        [at(
            34,
            23,
            "meter `m-001` is listed twice in area `a`; remove one"
        )]
    );
}

#[test]
fn area_thresholds_and_interval() {
    let text = with_areas(
        "[[area]]\nid = \"a\"\nsupply = [\"m-supply\"]\ncustomers = [\"m-001\"]\n\
         high_loss_pct = -2\nnegative_loss_pct = -1\nloss_interval_s = 700\n",
    );
    assert_eq!(
        problems(&text),
        [
            at(
                35,
                17,
                "high_loss_pct (-2) must be above negative_loss_pct (-1) in area `a`"
            ),
            at(
                37,
                19,
                "loss_interval_s 700 must be at least 10 and divide a day (86400 s) evenly, \
                 e.g. 300, 900, 1800 or 3600"
            ),
        ]
    );
    let text = with_areas(
        "[[area]]\nid = \"a\"\nsupply = [\"m-supply\"]\ncustomers = [\"m-001\"]\nloss_interval_s = 7\n",
    );
    assert_eq!(
        problems(&text),
        [at(
            35,
            19,
            "loss_interval_s 7 must be at least 10 and divide a day (86400 s) evenly, e.g. \
             300, 900, 1800 or 3600"
        )]
    );
}

#[test]
fn every_mistake_of_a_file_is_reported() {
    let text = r#"[gateway]
id = "tx 0412"
data_dir = "data"

[mqtt]
hots = "broker.local"
port = 70000

[[bus]]
name = "rs485-1"
protocol = "modbus-rtu"
device = "/dev/ttyS1"
baud = 9000

[[meter]]
id = "m-supply"
bus = "rs485-1"
unit = 1
model = "chint-dtsu666"
multiplier = 0

[[meter]]
id = "m-001"
bus = "rs485-9"
unit = 300
model = "eastron-sdm120"

[[meter]]
id = "m-002"
bus = "rs485-1"
unit = 1
model = "sdm120"

[[area]]
id = "a"
supply = ["m-supply"]
customers = ["m-001", "m-002", "m-404"]
"#;
    let got = problems(text);
    let expected = [
        at(
            2,
            6,
            "gateway id `tx 0412` contains a space; it is used as an MQTT topic level, so use \
             only letters, digits, `-`, `_` and `.`",
        ),
        at(
            5,
            1,
            "missing required key `host` in [mqtt]; add e.g. `host = \"mqtt.example.net\"`",
        ),
        at(6, 1, "unknown key `hots` in [mqtt]; did you mean `host`?"),
        at(7, 8, "`port` must be from 1 to 65535, found 70000"),
        at(
            13,
            8,
            "baud 9000 is not a standard rate; use one of: 300, 600, 1200, 2400, 4800, 9600, \
             14400, 19200, 38400, 57600, 115200, 230400",
        ),
        at(
            20,
            14,
            "multiplier 0 is not possible; it is CT ratio × PT ratio, a positive number (1 for \
             a direct-connected meter)",
        ),
        at(
            24,
            7,
            "meter `m-001` is on bus `rs485-9`, which is not defined; did you mean `rs485-1`? \
             defined buses: rs485-1",
        ),
        at(
            25,
            8,
            "unit 300 is outside 1 to 247; set the meter's Modbus address (unit id) to 1..247 \
             and write it here",
        ),
        at(
            31,
            8,
            "meter `m-002` and meter `m-supply` (line 15) both use unit 1 on bus `rs485-1`; \
             give each meter on a bus its own unit",
        ),
        at(
            32,
            9,
            "unknown meter model `sdm120`; did you mean `eastron-sdm120`? models available: \
             chint-dtsu666, dlt645-1997, dlt645-2007, eastron-sdm120, eastron-sdm630",
        ),
        at(
            37,
            32,
            "area `a` names meter `m-404`, which is not defined; did you mean `m-001`? define \
             it with a [[meter]] or remove it from the area",
        ),
    ];
    assert_eq!(got, expected, "got:\n{}", got.join("\n"));
}

#[test]
fn errors_print_one_problem_per_line() {
    let text = edit("unit = 2", "unit = 0").replacen("unit = 1", "unit = 0", 1);
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors.0.len(), 2);
    let printed = errors.to_string();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("/site/amr.toml:16:8: unit 0 is outside"));
    assert!(lines[1].starts_with("/site/amr.toml:22:8: unit 0 is outside"));
}

#[test]
fn example_configuration_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = match load_str_with(&text, &path, library()) {
        Ok(config) => config,
        Err(e) => panic!("config/example.toml:\n{e}"),
    };
    assert!(config.buses.len() >= 2);
    assert!(
        config
            .buses
            .iter()
            .any(|b| b.protocol == BusProtocol::ModbusTcp)
    );
    let area = &config.areas[0];
    let supply = config.meter(&area.supply[0]).unwrap();
    assert_eq!(supply.model, "chint-dtsu666");
    assert_eq!(supply.multiplier, 100.0);
    assert!(area.customers.len() >= 3);
    for customer in &area.customers {
        let model = config.meter(customer).unwrap().model.as_str();
        assert!(
            ["eastron-sdm120", "dlt645-2007", "dlt645-1997"].contains(&model),
            "{customer}: {model}"
        );
    }
    assert!(
        config
            .buses
            .iter()
            .any(|b| b.protocol == BusProtocol::Dlt645)
    );
    // The analytics part shows the defaults (the two derived ones written out for a
    // 900 s interval), and no old key.
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(area.rated_kva, Some(400.0));
    let mut loss = config.loss.clone();
    assert_eq!(
        (
            loss.grace_s,
            loss.stopped.stopped_after_s,
            loss.max_read_gap_s
        ),
        (Some(300), 1800, Some(900))
    );
    (loss.grace_s, loss.max_read_gap_s) = (None, None);
    assert_eq!(loss, crate::analytics::loss::LossSettings::default());
    assert_eq!(
        config.alarms,
        crate::analytics::alarms::AlarmSettings::default()
    );
    assert_eq!(
        config.voltage_quality,
        crate::analytics::voltage::VoltageQualitySettings::default()
    );
}

// ----- analytics sections and keys -----

#[test]
fn analytics_sections_default_when_left_out() {
    let config = parse(BASE).unwrap();
    assert_eq!(config.loss, crate::analytics::loss::LossSettings::default());
    assert_eq!(
        config.alarms,
        crate::analytics::alarms::AlarmSettings::default()
    );
    assert_eq!(
        config.voltage_quality,
        crate::analytics::voltage::VoltageQualitySettings::default()
    );
    let meter = config.meter("m-001").unwrap();
    assert!(!meter.consumption_only);
    assert_eq!(meter.rated_kw, None);
}

#[test]
fn analytics_keys_are_read() {
    use crate::analytics::alarms::Severity;
    let text = format!(
        r#"{BASE}consumption_only = true
rated_kw = 13.8

[[area]]
id = "a"
supply = ["m-supply"]
customers = ["m-001"]
rated_kva = 400

[loss]
grace_s = 120
rolling_window_s = 600
counter_moduli_kwh = [100000, 1e6]

[alarms]
history = 50

[alarms.voltage]
severity = "major"
upper_pct = 10
lower_pct = -7.5
raise_after_s = 30

[alarms.overload]
rated_kva = {{ a = 315 }}

[alarms.line_loss]
negative_enabled = false

[voltage_quality]
nominal_v = 230
max_gap_s = 120
"#
    );
    let config = parse(&text).unwrap();
    let meter = config.meter("m-001").unwrap();
    assert!(meter.consumption_only);
    assert_eq!(meter.rated_kw, Some(13.8));
    assert_eq!(config.areas[0].rated_kva, Some(400.0));
    assert_eq!(config.loss.grace_s, Some(120));
    assert_eq!(config.loss.rolling_window_s, 600);
    assert_eq!(config.loss.counter_moduli_kwh, [1e5, 1e6]);
    assert_eq!(config.loss.stale_after_s, 300, "defaults stay");
    assert_eq!(config.alarms.history, 50);
    assert_eq!(config.alarms.voltage.severity, Severity::Major);
    assert_eq!(config.alarms.voltage.upper_pct, 10.0);
    assert_eq!(config.alarms.voltage.lower_pct, -7.5);
    assert_eq!(config.alarms.voltage.raise_after_s, 30);
    assert_eq!(config.alarms.voltage.clear_after_s, 60, "defaults stay");
    assert_eq!(config.alarms.overload.rated_kva["a"], 315.0);
    assert!(!config.alarms.line_loss.negative_enabled);
    assert!(config.alarms.line_loss.high_enabled);
    // `[voltage_quality] nominal_v` is an old key: still read, now for the one band.
    assert_eq!(config.voltage_quality.band.nominal_v, 230.0);
    assert_eq!(config.alarms.voltage.nominal_v, 230.0);
    assert_eq!(config.voltage_quality.band, config.alarms.voltage.band());
    assert_eq!(config.voltage_quality.max_gap_s, 120);
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
}

/// A rule two engines share has one source; the keys that set it elsewhere before still work,
/// with a warning naming their replacement (and are ignored when the replacement is set too).
#[test]
fn old_keys_of_a_shared_rule_still_work_with_a_warning() {
    let text = format!(
        r#"{BASE}
[loss]
stopped_current_a = 1.5
stopped_after_s = 600

[alarms.meter_stopped]
stopped_after_s = 900

[voltage_quality]
upper_pct = 10
"#
    );
    // BASE is 23 lines; the appended text starts on line 24.
    let config = parse(&text).unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            at(
                26,
                1,
                "`stopped_current_a` in [loss] is replaced by `min_current_a` in \
                 [alarms.meter_stopped] (the stopped-register rule of both the meter_stopped \
                 alarm and the loss engine's stopped_register suspects); it still applies from \
                 here, but move it there"
            ),
            at(
                27,
                1,
                "`stopped_after_s` in [loss] is replaced by `stopped_after_s` in \
                 [alarms.meter_stopped], which this file sets and which applies (the \
                 stopped-register rule of both the meter_stopped alarm and the loss engine's \
                 stopped_register suspects); remove `stopped_after_s` here"
            ),
            at(
                33,
                1,
                "`upper_pct` in [voltage_quality] is replaced by `upper_pct` in [alarms.voltage] \
                 (the voltage band of both the voltage alarms and the voltage-quality \
                 statistics); it still applies from here, but move it there"
            ),
        ]
    );
    let stopped = config.alarms.meter_stopped.rule();
    assert_eq!((stopped.min_current_a, stopped.stopped_after_s), (1.5, 900));
    assert_eq!(config.loss.stopped, stopped);
    assert_eq!(config.alarms.voltage.upper_pct, 10.0);
    assert_eq!(config.voltage_quality.band, config.alarms.voltage.band());
    // Still checked where they are.
    let bad = format!("{BASE}\n[voltage_quality]\nupper_pct = 0\n");
    assert_eq!(
        problems(&bad),
        [at(
            26,
            13,
            "`upper_pct` in [voltage_quality] must be a number above 0 and at most 100 %, found 0"
        )]
    );
}

#[test]
fn analytics_mistakes_are_reported_at_their_position() {
    let text = format!(
        r#"{BASE}rated_kw = 0
consumption_only = "yes"

[[area]]
id = "a"
supply = ["m-supply"]
customers = ["m-001"]
rated_kva = -5

[loss]
grace = 10
rolling_window_s = "300"

[alarms]
histroy = 5
phase_loss = 3

[alarms.meter_offline]
severity = "urgent"
raise_after_s = -1

[alarms.voltage]
lower_pct = 5

[alarms.overload]
rated_kva = {{ b = 400 }}

[alarms.nonsense]
enabled = true

[voltage_quality]
outage_pct = 0
"#
    );
    // BASE is 23 lines; the appended text starts on line 24, in the last [[meter]].
    assert_eq!(
        problems(&text),
        [
            at(
                24,
                12,
                "rated_kw 0 is not possible; it is the meter's rated power in primary kW (e.g. \
                 13.8 for a 60 A single-phase meter): a positive number"
            ),
            at(
                25,
                20,
                "`consumption_only` must be a boolean (true or false), found a string"
            ),
            at(
                31,
                13,
                "rated_kva -5 is not possible; it is the transformer's nameplate rating in kVA \
                 (e.g. 400): a positive number"
            ),
            at(
                34,
                1,
                "unknown key `grace` in [loss]; did you mean `grace_s`?"
            ),
            at(
                35,
                20,
                "`rolling_window_s` must be an integer, found a string"
            ),
            at(
                38,
                1,
                "unknown key `histroy` in [alarms]; did you mean `history`?"
            ),
            at(
                39,
                14,
                "`phase_loss` in [alarms] must be a table written [alarms.phase_loss], found an \
                 integer"
            ),
            at(
                42,
                12,
                "unknown severity `urgent` in [alarms.meter_offline]; use one of: critical, \
                 major, minor, info"
            ),
            at(
                43,
                17,
                "`raise_after_s` must be from 0 to 2592000 s, found -1"
            ),
            at(
                46,
                13,
                "`lower_pct` in [alarms.voltage] must be a number at least -100 and below 0 %, \
                 found 5"
            ),
            at(
                49,
                15,
                "[alarms.overload] rated_kva names area `b`, which no [[area]] has; did you mean \
                 `a`? use an area id, or set `rated_kva` in the [[area]] itself"
            ),
            at(
                51,
                9,
                "unknown key `nonsense` in [alarms]; the keys of [alarms] are: history, \
                 meter_offline, voltage, phase_loss, current_unbalance, overload, \
                 reverse_energy, reading_down, running_fast, meter_stopped, line_loss, outage, \
                 power_off, store_recovered, disk_full, clock_unsynchronized, clock_skew, \
                 meter_cover_open, meter_power_down, meter_battery_low, meter_clock_fault, \
                 certificate_expiry"
            ),
            at(
                55,
                14,
                "`outage_pct` in [voltage_quality] must be a number above 0 and at most 100 %, \
                 found 0"
            ),
        ]
    );
}

#[test]
fn tls_is_the_default_off_this_machine_and_plain_must_be_written_out() {
    let local = parse(&edit("host = \"broker.local\"", "host = \"127.0.0.1\"")).unwrap();
    assert!(!local.mqtt.tls);
    assert_eq!(local.mqtt.port, 1883);
    let plain = parse(&edit(
        "host = \"broker.local\"",
        "host = \"broker.local\"\ntls = false",
    ))
    .unwrap();
    assert!(!plain.mqtt.tls);
    assert_eq!(plain.mqtt.port, 1883);
    let problems = parse(&edit(
        "host = \"broker.local\"",
        "host = \"broker.local\"\ntls = false\nca_file = \"ca.pem\"\npassword_file = \"pw\"",
    ))
    .unwrap_err();
    let text = problems.to_string();
    assert!(text.contains("`ca_file` is set but TLS is off"), "{text}");
    assert!(
        text.contains("`password_file` is set without `username`"),
        "{text}"
    );
}

#[test]
fn a_model_of_the_other_protocol() {
    // A Modbus model on a DL/T 645 bus.
    let text = dlt645_base()
        .replacen("unit = 2\n", "address = \"000000000002\"\n", 1)
        .replacen("model = \"dlt645-2007\"", "model = \"chint-dtsu666\"", 1);
    assert_eq!(
        problems(&text),
        [at(
            17,
            9,
            "meter `m-supply`: `chint-dtsu666` is a Modbus model, but bus `rs485-1` is dlt645; \
             use a DL/T 645 model (dlt645-1997, dlt645-2007)"
        )]
    );
    // A DL/T 645 model on a Modbus bus.
    let text = edit("model = \"eastron-sdm120\"", "model = \"dlt645-1997\"");
    assert_eq!(
        problems(&text),
        [at(
            23,
            9,
            "meter `m-001`: `dlt645-1997` is a DL/T 645 model, but bus `rs485-1` is modbus-rtu; \
             use a Modbus model, or put the meter on a bus with protocol = \"dlt645\""
        )]
    );
}

#[test]
fn command_keys_are_read_and_their_mistakes_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ops.key");
    crate::uplink::command::write_key_pair(&key).unwrap();
    let good = format!(
        "{BASE}\n[[command_key]]\nid = \"ops\"\npublic_key_file = \"{}.pub\"\nallow = [\"ping\", \"read\"]\n\n[commands]\nclock_window_s = 60\n",
        key.display()
    );
    let config = parse(&good).unwrap();
    assert_eq!(config.commands.keys.len(), 1);
    assert_eq!(config.commands.keys[0].id, "ops");
    assert!(config.commands.keys[0].allow.contains("read"));
    assert_eq!(config.commands.clock_window_s, 60);
    assert_eq!(config.commands.max_lifetime_s, 3600);

    let bad = format!(
        "{BASE}\n[[command_key]]\nid = \"ops\"\npublic_key_file = \"/nonexistent/ops.pub\"\nallow = [\"pnig\"]\n"
    );
    let text = parse(&bad).unwrap_err().to_string();
    assert!(
        text.contains("cannot read key file /nonexistent/ops.pub"),
        "{text}"
    );
    assert!(
        text.contains("unknown command `pnig` in `allow`; did you mean `ping`"),
        "{text}"
    );
    assert!(text.contains(&format!("{FILE}:")), "{text}");
}

#[test]
fn dlt645_bus_defaults_and_keys() {
    let text = dlt645_base().replacen("unit = 2\n", "address = \"000000000002\"\n", 1);
    let config = parse(&text).unwrap();
    let bus = &config.buses[0];
    assert_eq!(bus.serial, SerialSettings::DLT645_DEFAULT);
    assert_eq!(
        bus.timeout_ms,
        crate::protocol::dlt645::Line::DEFAULT
            .default_timeout()
            .as_millis() as u64
    );
    assert_eq!(bus.preamble, 4);
    let (settings, meters) = &config.bus_settings()[0];
    assert_eq!(settings.protocol, crate::bus::Protocol::Dlt645);
    assert_eq!(meters.len(), 2);
    assert_eq!(meters[1].address.as_deref(), Some("000000000002"));
    assert_eq!(meters[1].model.name(), "dlt645-2007");
    assert!(meters[1].model.dlt645().is_some());

    let text = text.replacen(
        "device = \"/dev/ttyS1\"\n",
        "device = \"/dev/ttyS1\"\npreamble = 0\nbaud = 9600\n",
        1,
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.buses[0].preamble, 0);
    assert_eq!(config.buses[0].timeout_ms, 900);
    assert_eq!(config.bus_settings()[0].0.preamble, 0);

    let wrong = edit(
        "device = \"/dev/ttyS1\"\n",
        "device = \"/dev/ttyS1\"\npreamble = 2\n",
    );
    assert_eq!(
        problems(&wrong),
        [at(
            12,
            12,
            "`preamble` is the count of FE bytes before a DL/T 645 request, but bus `rs485-1` \
             is modbus-rtu; remove it"
        )]
    );
    let slow = text.replacen("baud = 9600", "baud = 115200", 1);
    assert_eq!(
        problems(&slow),
        [at(
            13,
            8,
            "baud 115200 is not a DL/T 645 rate; bus `rs485-1` is dlt645: use one of 1200, \
             2400, 4800, 9600, 19200 (the meter's display or label shows its rate)"
        )]
    );
}

#[test]
fn ids_have_a_length_limit_and_a_safe_charset() {
    // A gateway id of a million characters: refused, and the message quotes only its start.
    let long = "g".repeat(1_000_000);
    let text = edit("id = \"tx-0412\"", &format!("id = \"{long}\""));
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(&format!("{FILE}:2:6: gateway id `{}…", "g".repeat(64))),
        "{}",
        &got[0][..200]
    );
    assert!(
        got[0].contains("is longer than 64 characters"),
        "{}",
        &got[0][..300]
    );
    assert!(got[0].len() < 400, "the message repeats the whole id");
    // 64 characters are fine; 65 are not, for every kind of id.
    let ok = edit("id = \"m-001\"", &format!("id = \"{}\"", "m".repeat(64)));
    assert!(parse(&ok).is_ok());
    for (from, line) in [
        ("id = \"m-001\"", 20),
        ("name = \"rs485-1\"", 9),
        ("id = \"tx-0412\"", 2),
    ] {
        let key = from.split(' ').next().unwrap();
        let text = edit(from, &format!("{key} = \"{}\"", "x".repeat(65)));
        let got = problems(&text);
        assert!(
            got.iter().any(|p| p.starts_with(&format!("{FILE}:{line}:"))
                && p.contains("longer than 64 characters")),
            "{got:?}"
        );
    }
    // An area id too.
    let area = format!(
        "{BASE}\n[[area]]\nid = \"{}\"\nsupply = [\"m-supply\"]\ncustomers = [\"m-001\"]\n",
        "a".repeat(65)
    );
    let got = problems(&area);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(&format!("{FILE}:26:6: area id `")),
        "{got:?}"
    );
    // Characters that are not safe in a topic level; letters of any script are.
    let got = problems(&edit("id = \"m-001\"", "id = \"m:001\""));
    assert_eq!(
        got,
        [at(
            20,
            6,
            "meter id `m:001` contains a character other than a letter, a digit, `-`, `_` or \
             `.`; it is used as an MQTT topic level, so use only letters, digits, `-`, `_` and `.`"
        )]
    );
    assert!(parse(&edit("id = \"m-001\"", "id = \"台区-001\"")).is_ok());
}

#[test]
fn invisible_characters_are_shown_escaped_in_every_message() {
    // The protocol name with a zero-width space: the message shows it.
    let got = problems(&edit(
        "protocol = \"modbus-rtu\"",
        "protocol = \"modbus\u{200b}-rtu\"",
    ));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(&format!(
            "{FILE}:10:12: unknown protocol `modbus\\u{{200b}}-rtu`; did you mean `modbus-rtu`?"
        )),
        "{got:?}"
    );
    // A meter id with one; a bus name a meter refers to with a BOM; an unknown key with a
    // non-breaking space.
    let got = problems(&edit("id = \"m-001\"", "id = \"m-0\u{2060}01\""));
    assert!(
        got[0].contains("meter id `m-0\\u{2060}01` contains an invisible"),
        "{got:?}"
    );
    let got = problems(&edit("bus = \"rs485-1\"", "bus = \"\u{feff}rs485-1\""));
    assert!(
        got[0].contains("bus `\\u{feff}rs485-1`, which is not defined"),
        "{got:?}"
    );
    let got = problems(&edit("unit = 2", "unit\u{a0}= 2"));
    assert!(
        got.iter()
            .all(|p| !p.chars().any(crate::diagnostic::is_invisible)),
        "{got:?}"
    );
    // In a model file too.
    let model = "[model]\nname = \"m\"\nphases = 1\nfunction = 3\ntype = \"u16\"\n\
                 [[register]]\nquantity = \"power\u{200d}_kw\"\naddress = 0\n";
    let e = ModelLibrary::parse_model(model, "m.toml").unwrap_err();
    assert!(
        e[0].to_string()
            .starts_with("m.toml:7:12: unknown quantity \"power\\u{200d}_kw\""),
        "{e:?}"
    );
}

#[test]
fn a_single_phase_model_has_no_l2_or_l3_quantities() {
    let model = "[model]\nname = \"m1\"\nphases = 1\nfunction = 4\ntype = \"f32\"\n\
                 [[register]]\nquantity = \"voltage_l1_v\"\naddress = 0\n\
                 [[register]]\nquantity = \"voltage_l3_v\"\naddress = 2\n\
                 [[register]]\nquantity = \"current_n_a\"\naddress = 4\n";
    let e = ModelLibrary::parse_model(model, "/site/models/m1.toml").unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].to_string().starts_with(
            "/site/models/m1.toml:10:12: quantity \"voltage_l3_v\" does not exist on a \
             single-phase meter ([model] phases = 1)"
        ),
        "{e:?}"
    );
    // The same registers in a three-phase model are fine; so is every built-in model.
    assert!(ModelLibrary::parse_model(&model.replace("phases = 1", "phases = 3"), "m").is_ok());
    // Through the configuration: the problem names the model file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m1.toml"), model).unwrap();
    let text = edit(
        "data_dir = \"data\"",
        &format!(
            "data_dir = \"data\"\nmodels_dir = \"{}\"",
            dir.path().display()
        ),
    );
    let got = problems(&text);
    let file = dir.path().join("m1.toml");
    assert!(
        got.iter().any(|p| p.starts_with(&format!(
            "{}:10:12: quantity \"voltage_l3_v\"",
            file.display()
        ))),
        "{got:?}"
    );
}

/// A model file of `n` registers, each a u16 at its own address, quantities repeating.
fn huge_model(n: usize) -> String {
    let mut text =
        String::from("[model]\nname = \"huge\"\nphases = 3\nfunction = 3\ntype = \"u16\"\n");
    for i in 0..n {
        let q = crate::model::QUANTITIES[i % crate::model::QUANTITIES.len()];
        text += &format!("[[register]]\nquantity = \"{q}\"\naddress = {i}\n");
    }
    text
}

#[test]
fn a_model_file_of_20001_registers_is_checked_through() {
    // Every quantity after the first 26 is mapped twice: 19,975 problems, each at its line and
    // naming the first mapping's line. (This took 29 s when the checks across registers
    // compared every pair; see docs/benchmarks.md.)
    let n = 20_001;
    let q = crate::model::QUANTITIES.len();
    let e = ModelLibrary::parse_model(&huge_model(n), "huge.toml").unwrap_err();
    assert_eq!(e.len(), n - q);
    assert_eq!(e[0].line, 6 + 3 * q + 1);
    assert!(
        e[0].message.contains("mapped twice (also at line 7)"),
        "{}",
        e[0]
    );
    let last = e.last().unwrap();
    assert_eq!(last.line, 6 + 3 * (n - 1) + 1);
    // Overlaps are still found among many registers: one u32 over two u16s.
    let mut text = huge_model(q);
    text += "[[register]]\nquantity = \"power_kw\"\naddress = 3\ntype = \"u32\"\n";
    let e = ModelLibrary::parse_model(&text, "o.toml").unwrap_err();
    assert_eq!(e.len(), 3, "one duplicate, two overlaps: {e:?}");
    let overlaps: Vec<_> = e
        .iter()
        .filter(|p| p.message.contains("overlaps"))
        .collect();
    assert_eq!(overlaps.len(), 2, "{e:?}");
    assert!(overlaps[0].message.contains("(line 17"), "{e:?}");
    assert!(overlaps[1].message.contains("(line 20"), "{e:?}");
}

#[test]
fn health_interval_log_format_and_require_synced_clock() {
    let text = edit(
        "data_dir = \"data\"\n",
        "data_dir = \"data\"\nlog_format = \"json\"\nrequire_synced_clock = true\n",
    );
    let text = format!("{text}\n[health]\ninterval_s = 30\n");
    let config = parse(&text).unwrap();
    assert_eq!(
        config.gateway.log_format,
        Some(crate::logging::LogFormat::Json)
    );
    assert!(config.gateway.require_synced_clock);
    assert_eq!(config.health.interval_s, 30);
    let config = parse(BASE).unwrap();
    assert_eq!(config.gateway.log_format, None);
    assert!(!config.gateway.require_synced_clock);
    assert_eq!(config.health.interval_s, 60);
    let text = edit(
        "data_dir = \"data\"\n",
        "data_dir = \"data\"\nlog_format = \"xml\"\n",
    );
    let problems = problems(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].ends_with("unknown log_format `xml`; use `plain` or `json`"));
}

#[test]
fn time_sync_refuses_a_time_near_midnight_and_unknown_words() {
    let text = format!(
        "{BASE}\n[time_sync]\nat = \"23:57\"\ngateway_clock = \"ntp\"\nread_interval_s = 5\n"
    );
    let got = problems(&text);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].starts_with(
            "/site/amr.toml:26:6: [time_sync] at `23:57` is within five minutes of midnight"
        ),
        "{got:?}"
    );
    assert!(
        got[1].contains(":27:17: [time_sync] gateway_clock `ntp` is not known"),
        "{got:?}"
    );
    assert!(got[2].contains(":28:19: `read_interval_s`"), "{got:?}");
    for (at, ok) in [
        ("00:05", false),
        ("00:06", true),
        ("23:54", true),
        ("23:55", false),
        ("3:07", false),
        ("off", true),
    ] {
        let text = format!("{BASE}\n[time_sync]\nat = \"{at}\"\n");
        assert_eq!(parse(&text).is_ok(), ok, "{at}");
    }
}

#[test]
fn a_dlt645_bus_behind_a_serial_server_has_an_address_and_no_device() {
    let text = dlt645_base()
        .replace("unit = 2\n", "address = \"000000000002\"\n")
        .replace("device = \"/dev/ttyS1\"", "address = \"10.0.0.9:8899\"");
    let config = parse(&text).unwrap();
    let (bus, _) = &config.bus_settings()[0];
    assert_eq!(
        bus.endpoint,
        crate::bus::Endpoint::Tcp("10.0.0.9:8899".into())
    );
    assert_eq!(bus.protocol, crate::bus::Protocol::Dlt645);
    assert_eq!(
        bus.time_sync.at_minute,
        Some(crate::bus::time_sync::DEFAULT_AT_MINUTE)
    );
    // Both: the address is refused, at its position.
    let both = dlt645_base()
        .replace("unit = 2\n", "address = \"000000000002\"\n")
        .replace(
            "device = \"/dev/ttyS1\"",
            "device = \"/dev/ttyS1\"\naddress = \"10.0.0.9:8899\"",
        );
    let got = problems(&both);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains("has both `device` and `address`; a DL/T 645 bus is either"),
        "{got:?}"
    );
}

#[test]
fn relay_secrets_file_is_read_checked_and_placed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("relay-secrets.toml");
    let write = |text: &str, mode: u32| {
        std::fs::write(&secrets, text).unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let config_text = format!(
        "{BASE}\n[commands]\nrelay_secrets_file = \"{}\"\n",
        secrets.display()
    );
    write(
        "[default]\npassword = \"02123456\"\noperator = \"00000000\"\n\n[meter.m-supply]\npassword = \"04000001\"\noperator = \"12345678\"\n",
        0o600,
    );
    let config = parse(&config_text).unwrap();
    let s = &config.relay_secrets;
    let own = s.for_meter("m-supply").unwrap();
    assert_eq!(own.password, [0x04, 0x01, 0x00, 0x00]);
    assert_eq!(own.operator, [0x78, 0x56, 0x34, 0x12]);
    let other = s.for_meter("anyone").unwrap();
    assert_eq!(other.password, [0x02, 0x56, 0x34, 0x12]);
    // The secrets never show in a debug print.
    let shown = format!("{config:?}");
    assert!(shown.contains("relay_secrets: RelaySecrets {"), "{shown}");
    assert!(
        !shown.contains("[2, 86, 52, 18]") && !shown.contains("[120, 86, 52, 18]"),
        "{shown}"
    );

    // No default: a meter without its own entry has no secrets, said plainly.
    write(
        "[meter.m-supply]\npassword = \"02123456\"\noperator = \"00000000\"\n",
        0o600,
    );
    let e = parse(&config_text)
        .unwrap()
        .relay_secrets
        .for_meter("x")
        .unwrap_err();
    assert!(
        e.contains("no relay secrets for meter `x`") && e.contains("[meter.x]"),
        "{e}"
    );
    // No file configured at all.
    let e = parse(BASE)
        .unwrap()
        .relay_secrets
        .for_meter("x")
        .unwrap_err();
    assert!(e.contains("relay_secrets_file"), "{e}");

    // Mistakes in the secrets file are placed in it.
    write(
        "[default]\npassword = \"0212345\"\noperator = 0\n\n[meter.nope]\npassword = \"02123456\"\noperator = \"00000000\"\n",
        0o600,
    );
    let text = parse(&config_text).unwrap_err().to_string();
    let f = secrets.display().to_string();
    assert!(
        text.contains(&format!(
            "{f}:2:12: [default] password must be 8 hex digits"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{f}:3:12: [default] operator must be a string")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{f}:5:8: [meter.nope]: no meter `nope` in the configuration"
        )),
        "{text}"
    );

    // Readable by others: refused at the key in the configuration.
    write(
        "[default]\npassword = \"02123456\"\noperator = \"00000000\"\n",
        0o644,
    );
    let text = parse(&config_text).unwrap_err().to_string();
    assert!(
        text.contains("has mode 0644") && text.contains("chmod 600"),
        "{text}"
    );
    assert!(text.contains(&format!("{FILE}:")), "{text}");

    // Missing file.
    std::fs::remove_file(&secrets).unwrap();
    let text = parse(&config_text).unwrap_err().to_string();
    assert!(
        text.contains("relay_secrets_file") && text.contains("cannot read it"),
        "{text}"
    );
}
