//! amr-gateway: a data concentrator for a distribution transformer area.
//!
//! It reads every electricity meter of the area (DL/T 645-2007 and -1997 and Modbus RTU on
//! RS-485, Modbus TCP, RTU over TCP through serial servers), keeps every reading in SQLite until
//! the headend has it, and publishes readings, line loss and alarms over MQTT.
//!
//! Data flows sources → pipeline → sinks: buses read meters through protocol drivers, the
//! pipeline (the store writer) feeds the pure analytics engines and folds readings and what the
//! engines decide into one store transaction, and the uplink sends what the store holds.
//!
//! Dependencies run one way; `tests/layering.rs` keeps them so. A module may import only:
//!
//! | module | may import |
//! |---|---|
//! | `model`, `clock`, `shutdown`, `liveness`, `logging` | nothing (leaves) |
//! | `diagnostic` | `model` |
//! | `protocol` | `model`, `clock`, `shutdown` |
//! | `meter` | `model`, `clock`, `protocol`, `diagnostic` |
//! | `bus` | `model`, `clock`, `shutdown`, `liveness`, `protocol`, `meter` |
//! | `analytics` | `model`, `clock` |
//! | `pipeline` | `model`, `clock`, `analytics`, `store`, `uplink` |
//! | `store` | `model`, `clock` |
//! | `uplink` | `model`, `clock`, `shutdown`, `store`, `analytics` |
//! | `config` | every component (it builds their settings); none imports it |
//! | `gateway` | every component and `config` (the composition root) |
//! | `field`, `sim`, `demo`, `broker` | the public pieces (tools) |
//!
//! The modules:
//!
//! - [`config`]: the TOML schema and its validation, errors at `FILE:LINE:COL`; it builds
//!   each component's settings (the store's, the uplink's, the pipeline's), and no component
//!   imports it.
//! - [`model`]: domain types — meter ids, quantity names, readings.
//! - [`clock`]: the one clock; RFC 3339 timestamps; the local time zone of days and months.
//! - [`shutdown`]: the stop signal passed down explicitly to every task.
//! - [`diagnostic`]: problems in hand-checked TOML files (configuration, model files, simulator
//!   file) at `FILE:LINE:COL`, typed key readers, "did you mean"; a leaf.
//! - [`meter`]: meter models as data (`protocols/*.toml`), block planning, decoding.
//! - [`protocol`]: wire codecs and transports (Modbus RTU / TCP / RTU over TCP, DL/T 645), their
//!   line settings.
//! - [`bus`]: one task per bus — a protocol-agnostic scheduler (meter health, offline backoff,
//!   probe budget, energy first) over a protocol [`bus::Driver`] (Modbus, DL/T 645).
//! - [`store`]: SQLite history and outbox; `seq` allocation; pruning and size bound; records,
//!   meter states, and the record kinds and meta keys, typed and defined once.
//! - [`uplink`]: the whole MQTT contract — every topic and payload rendered in
//!   [`uplink::contract`] from typed records — and the outbox publisher.
//! - [`analytics`]: pure engines (line loss, alarms, voltage quality, daily and monthly freezes,
//!   load curves,
//!   collection success) and the domain rules they
//!   share (the voltage band, a register that went down or stood still): readings and time in,
//!   typed records and events out; they import only [`model`] and [`clock`].
//! - [`pipeline`]: the store writer's logic, the one place that knows both the engines and
//!   the store's batches; imports model, clock, analytics, store and uplink.
//! - [`sim`]: simulated meters and areas for tests, the demo and benchmarks.
//! - [`gateway`]: `run`, the composition root — wires buses, store, pipeline and uplink
//!   together with a shutdown signal; its store writer task commits the pipeline's batches.
//! - [`liveness`]: what systemd is told — READY, a status line, watchdog keep-alives only
//!   while every task beats.
//! - [`logging`]: how log lines look — plain, journald priorities, JSON lines.
//! - [`field`]: the field tools `read`, `scan`, `register`, `setup`, `test`, `status`.
//! - `broker` and `demo` (feature `embedded-broker`): a small MQTT broker and the demo.

pub mod analytics;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod bus;
pub mod clock;
pub mod config;
#[cfg(feature = "embedded-broker")]
pub mod demo;
pub mod diagnostic;
pub mod field;
pub mod gateway;
pub mod liveness;
pub mod logging;
pub mod meter;
pub mod model;
pub mod pipeline;
pub mod protocol;
pub mod shutdown;
pub mod sim;
pub mod store;
pub mod uplink;
