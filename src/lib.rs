//! amr-gateway: a data concentrator for a distribution transformer area.
//!
//! It reads every electricity meter of the area (Modbus RTU on RS-485, Modbus TCP, RTU over TCP
//! through serial servers), keeps every reading in SQLite until the headend has it, and
//! publishes readings, line loss and alarms over MQTT.
//!
//! Data flows `bus → store → uplink`:
//!
//! - [`config`]: the TOML schema and its validation, errors at `FILE:LINE:COL`.
//! - [`model`]: domain types — meter ids, quantity names, readings.
//! - [`clock`]: the one clock; RFC 3339 timestamps.
//! - [`shutdown`]: the stop signal passed down explicitly to every task.
//! - [`meter`]: meter models as data (`protocols/*.toml`), block planning, decoding.
//! - [`protocol`]: wire codecs and transports (Modbus RTU / TCP / RTU over TCP).
//! - [`bus`]: one task per bus polling its meters; meter health and offline backoff.
//! - [`store`]: SQLite history and outbox; `seq` allocation; pruning and size bound.
//! - [`uplink`]: MQTT topics, payloads and the outbox publisher.
//! - [`analytics`]: line loss, alarms, voltage quality.
//! - [`sim`]: simulated meters and areas for tests, the demo and benchmarks.
//! - [`gateway`]: `run` — wires buses, store, analytics and uplink together with a shutdown
//!   signal; the store writer folds bus events and analytics output into one transaction.
//! - [`liveness`]: what systemd is told — READY, a status line, watchdog keep-alives only
//!   while every task beats.
//! - [`logging`]: how log lines look — plain, journald priorities, JSON lines.
//! - [`field`]: the field tools `read`, `scan`, `status`.
//! - `broker` and `demo` (feature `embedded-broker`): a small MQTT broker and the demo.

pub mod analytics;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod bus;
pub mod clock;
pub mod config;
#[cfg(feature = "embedded-broker")]
pub mod demo;
pub mod field;
pub mod gateway;
pub mod liveness;
pub mod logging;
pub mod meter;
pub mod model;
pub mod protocol;
pub mod shutdown;
pub mod sim;
pub mod store;
pub mod uplink;
