//! The `amr-gateway` command line: `run`, `check-config`, `demo`, `simulate`, the field
//! tools `read`, `scan`, `register`, `setup`, `test`, `status`, and the headend's `keygen` and
//! `command`.

use amr_gateway::config;
use amr_gateway::protocol::dlt645;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::sync::watch;

/// Where the Debian package and the systemd unit put the configuration.
const DEFAULT_CONFIG: &str = "/etc/amr-gateway/gateway.toml";

#[derive(Parser)]
#[command(
    name = "amr-gateway",
    version,
    about = "Data concentrator for a transformer area: meters → SQLite → MQTT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::enum_variant_names)] // `command` is the contract's name for the subcommand.
enum Command {
    /// Run the gateway in the foreground until SIGTERM or SIGINT; SIGHUP reloads the file.
    ///
    /// Exit codes: 0 stopped by a signal; 1 could not start, or a task failed (it is logged);
    /// 2 invalid configuration. Logs go to stderr (under systemd: journald, with syslog
    /// priorities); AMR_LOG (e.g. debug, or amr_gateway::bus=debug) overrides [gateway]
    /// log_level; AMR_LOG_FORMAT=json writes JSON lines; NO_COLOR turns colours off.
    Run {
        /// The gateway's configuration file (TOML; see config/README.md).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file: exit 0 when valid, otherwise 2 with every problem as
    /// FILE:LINE:COL: message.
    CheckConfig {
        /// The gateway's configuration file (TOML; see config/README.md).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Simulated meters, an embedded MQTT broker on 127.0.0.1 and the gateway, with a live
    /// summary. Nothing to install or configure.
    Demo {
        /// Stop after this many seconds (exit code 0).
        #[arg(long = "for")]
        for_s: Option<u64>,
        /// Port of the embedded broker on 127.0.0.1.
        #[arg(long, default_value_t = 1883)]
        mqtt_port: u16,
    },
    /// Serve simulated meters on pseudo-terminals and TCP ports, as a SIMFILE describes.
    /// SIGHUP re-reads loads and faults from the file.
    Simulate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Read one meter once and print every quantity with its unit.
    Read {
        #[command(flatten)]
        link: LinkOpts,
        /// Modbus unit id (1..247). A DL/T 645 meter is named by `--address` instead.
        #[arg(long)]
        unit: Option<u8>,
        /// Meter model (see `protocols/`); `--models-dir` adds your own. Required for Modbus;
        /// DL/T 645 default `dlt645-2007`.
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Find the unit ids that answer on a bus and guess their models; each unit is printed as
    /// it is found. Exit 1 when nothing answered.
    ///
    /// Default --timeout-ms here is 70: a unit that does not answer costs its deadline, 70 ms
    /// plus 24 ms wire time of the 1-register probe at 9600 8N1, and as long again draining
    /// the line for a late reply: 187 ms; 247 units × 187 ms = 46 s. Give a slow meter more
    /// (--timeout-ms 300: about 2.5 min for 1-247).
    Scan {
        #[command(flatten)]
        link: LinkOpts,
        /// Unit ids to try, e.g. 1-247 or 1-10,20 (Modbus).
        #[arg(long, default_value = "1-247")]
        units: String,
        /// DL/T 645: a file of addresses to try, one a line; without it the only meter on the
        /// bus is asked for its address (13H to AAAAAAAAAAAA).
        #[arg(long)]
        addresses: Option<PathBuf>,
        #[arg(long)]
        models_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Raw Modbus registers and coils, as mbpoll / modpoll: `register read`, `register write`.
    Register {
        #[command(subcommand)]
        action: RegisterAction,
    },
    /// Give a new meter its unit id (and baud rate), for models whose file documents how
    /// ([setup] in protocols/*.toml). New meters all answer at unit 1: wire one at a time.
    ///
    /// Exit codes: 0 done; 1 the meter refused or did not answer; 2 bad arguments.
    Setup {
        #[command(flatten)]
        link: LinkOpts,
        /// The meter's unit id now (factory default 1).
        #[arg(long, default_value_t = 1)]
        unit: u8,
        /// The meter's model (see protocols/; models with a [setup] section).
        #[arg(long)]
        model: String,
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// The unit id to give it (1..247).
        #[arg(long)]
        new_unit: Option<u8>,
        /// The baud rate to give it (one its model lists in [setup] baud_codes); written last.
        #[arg(long)]
        new_baud: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Read every meter of a configuration once, through the daemon's drivers, and print a
    /// table (meter, bus, unit or address, model, key values, time taken, result).
    ///
    /// Exit codes: 0 every meter answered; 1 some meter failed; 2 invalid configuration.
    /// Stop the daemon first (it holds the serial ports).
    Test {
        /// The gateway's configuration file (TOML; see config/README.md).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Make an Ed25519 key pair for signing commands: the private key in FILE (mode 0600),
    /// the public key in FILE.pub (for a gateway's [[command_key]] public_key_file).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a command, publish it to a gateway, wait for its result and print it.
    ///
    /// Exit codes: 0 done; 1 rejected or failed; 2 bad arguments or key file; 3 no result
    /// (broker unreachable, or the timeout passed).
    Command {
        #[arg(long)]
        host: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "amr")]
        prefix: String,
        /// Connect with TLS (the broker's certificate and name are checked).
        #[arg(long)]
        tls: bool,
        /// CA certificate(s), PEM; default: the system roots.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        #[arg(long)]
        client_cert_file: Option<PathBuf>,
        #[arg(long)]
        client_key_file: Option<PathBuf>,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// The gateway's id ([gateway] id).
        #[arg(long)]
        gateway: String,
        /// The private key file (from keygen).
        #[arg(long)]
        key: PathBuf,
        /// The key's id, as the gateway's [[command_key]] id names it.
        #[arg(long)]
        key_id: String,
        /// ping, status, read, recall, config_get, config_apply, time_sync, relay.
        name: String,
        /// Command argument KEY=VALUE (e.g. meters=all, from_seq=5, to_seq=9); repeatable.
        #[arg(long = "arg")]
        args: Vec<String>,
        /// How long the command stays valid, seconds.
        #[arg(long, default_value_t = 300)]
        valid_s: u64,
        /// How long to wait for the result, seconds.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// Print the result payload as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What a running or stopped gateway's store says: buses, meters, backlog, loss, alarms.
    Status {
        /// The gateway's configuration file (TOML; see config/README.md).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RegisterAction {
    /// Read registers (functions 03 holding, 04 input) or bits (01 coils, 02 discrete
    /// inputs). Exit 1 when the meter answered an exception or nothing.
    Read {
        #[command(flatten)]
        link: LinkOpts,
        /// Modbus unit id (1..247).
        #[arg(long)]
        unit: u8,
        /// 3 (holding registers), 4 (input registers), 1 (coils), 2 (discrete inputs).
        #[arg(long, default_value_t = 3)]
        function: u8,
        /// First register or bit, zero-based (40001 is 0), decimal or 0x hex.
        #[arg(long)]
        start: String,
        /// How many values of --type (registers: 2 per u32/i32/f32), or bits.
        #[arg(long, default_value_t = 1)]
        count: u16,
        /// u16, i16, u32, i32, f32 or hex.
        #[arg(long = "type", default_value = "u16")]
        value_type: String,
        /// Of 32-bit values: big (high word first) or little.
        #[arg(long, default_value = "big")]
        word_order: String,
        #[arg(long)]
        json: bool,
    },
    /// Write one holding register (06; a 32-bit --type or --function 16: 16) or a coil (05);
    /// the meter's echo confirms it. Exit 1 when the meter refused it or did not answer.
    Write {
        #[command(flatten)]
        link: LinkOpts,
        /// Modbus unit id (1..247).
        #[arg(long)]
        unit: u8,
        /// Holding register, zero-based, decimal or 0x hex.
        #[arg(long, conflicts_with = "coil")]
        register: Option<String>,
        /// Coil, zero-based (the value is on or off).
        #[arg(long)]
        coil: Option<String>,
        /// The value: a number of --type, or on/off for a coil.
        #[arg(long)]
        value: String,
        /// u16, i16, u32, i32, f32 or hex.
        #[arg(long = "type", default_value = "u16")]
        value_type: String,
        /// Of 32-bit values: big (high word first) or little.
        #[arg(long, default_value = "big")]
        word_order: String,
        /// 6 or 16 (default: 6 for one register, 16 for a 32-bit value).
        #[arg(long)]
        function: Option<u8>,
        #[arg(long)]
        json: bool,
    },
}

/// How a field tool reaches the meters.
#[derive(clap::Args)]
struct LinkOpts {
    /// Serial device, e.g. /dev/ttyUSB0.
    #[arg(long)]
    device: Option<PathBuf>,
    /// TCP endpoint host:port (Modbus TCP, or RTU over TCP with --protocol); with
    /// --protocol dlt645, the meter's 12-digit DL/T 645 address.
    #[arg(long)]
    address: Option<String>,
    /// modbus-rtu or dlt645 (with --device), modbus-tcp or modbus-rtu-over-tcp (with
    /// --address).
    #[arg(long)]
    protocol: Option<String>,
    /// Line speed; default 9600 (dlt645: 2400).
    #[arg(long)]
    baud: Option<u32>,
    /// none, even or odd; default none (dlt645: even).
    #[arg(long)]
    parity: Option<String>,
    /// 7 or 8.
    #[arg(long, default_value_t = 8)]
    data_bits: u8,
    /// 1 or 2.
    #[arg(long, default_value_t = 1)]
    stop_bits: u8,
    /// How long a meter may take to answer, in ms; every request gets its wire time at --baud
    /// on top (the daemon's deadline rule). Default 300, scan 70 (dlt645: the line's default,
    /// which counts the 500 ms a DL/T 645 meter may wait before replying).
    #[arg(long)]
    timeout_ms: Option<u64>,
}

impl LinkOpts {
    fn is_dlt645(&self) -> bool {
        self.protocol.as_deref() == Some("dlt645")
    }

    fn link(&self) -> Result<amr_gateway::field::LinkArgs, String> {
        self.link_with_timeout(300)
    }

    /// The link, with `default_timeout_ms` unless --timeout-ms is given (Modbus). The line
    /// settings follow `[[bus]]`'s rules (the configuration's own checks).
    fn link_with_timeout(
        &self,
        default_timeout_ms: u64,
    ) -> Result<amr_gateway::field::LinkArgs, String> {
        let dlt645 = self.is_dlt645();
        let baud = self.baud.unwrap_or(if dlt645 { 2400 } else { 9600 });
        let line = dlt645.then_some("the line");
        if let Some(problem) = config::baud_problem(i128::from(baud), line)
            .or_else(|| config::bits_problem("data_bits", i128::from(self.data_bits)))
            .or_else(|| config::bits_problem("stop_bits", i128::from(self.stop_bits)))
        {
            return Err(format!("--{}", problem.replacen('_', "-", 1)));
        }
        let parity = match &self.parity {
            Some(p) => amr_gateway::field::parse_parity(p)?,
            None if dlt645 => amr_gateway::protocol::Parity::Even,
            None => amr_gateway::protocol::Parity::None,
        };
        let timeout_ms = self.timeout_ms.unwrap_or_else(|| {
            if dlt645 {
                let parity = match parity {
                    amr_gateway::protocol::Parity::None => dlt645::Parity::None,
                    amr_gateway::protocol::Parity::Even => dlt645::Parity::Even,
                    amr_gateway::protocol::Parity::Odd => dlt645::Parity::Odd,
                };
                let line = dlt645::Line {
                    baud,
                    parity,
                    ..dlt645::Line::DEFAULT
                };
                line.default_timeout().as_millis() as u64
            } else {
                default_timeout_ms
            }
        });
        Ok(amr_gateway::field::LinkArgs {
            device: self.device.clone(),
            // On a DL/T 645 bus --address names the meter, not a TCP endpoint.
            address: if dlt645 { None } else { self.address.clone() },
            protocol: self.protocol.clone(),
            baud,
            parity,
            data_bits: self.data_bits,
            stop_bits: self.stop_bits,
            timeout_ms,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Run { config } => run(&config),
        Command::Demo { for_s, mqtt_port } => demo(for_s, mqtt_port),
        Command::Simulate { config } => simulate(&config),
        Command::Read {
            link,
            unit,
            model,
            models_dir,
            json,
        } if link.is_dlt645() => read_dlt645(&link, unit, model, models_dir.as_deref(), json),
        Command::Read {
            link,
            unit,
            model,
            models_dir,
            json,
        } => read(&link, unit, model, models_dir.as_deref(), json),
        Command::Scan {
            link,
            addresses,
            models_dir,
            json,
            ..
        } if link.is_dlt645() => {
            scan_dlt645(&link, addresses.as_deref(), models_dir.as_deref(), json)
        }
        Command::Scan {
            link,
            units,
            models_dir,
            json,
            ..
        } => scan(&link, &units, models_dir.as_deref(), json),
        Command::Status { config, json } => status(&config, json),
        Command::Register { action } => register(action),
        Command::Setup {
            link,
            unit,
            model,
            models_dir,
            new_unit,
            new_baud,
            json,
        } => setup(
            &link,
            unit,
            &model,
            models_dir.as_deref(),
            (new_unit, new_baud),
            json,
        ),
        Command::Test { config, json } => test(&config, json),
        Command::Keygen { out } => keygen(&out),
        Command::Command {
            host,
            port,
            prefix,
            tls,
            ca_file,
            client_cert_file,
            client_key_file,
            username,
            password_file,
            gateway,
            key,
            key_id,
            name,
            args,
            valid_s,
            timeout_s,
            json,
        } => {
            let broker = amr_gateway::field::command::BrokerArgs {
                host,
                port,
                tls: tls || ca_file.is_some() || client_cert_file.is_some(),
                ca_file,
                client_cert_file,
                client_key_file,
                username,
                password_file,
            };
            let args = match amr_gateway::field::command::parse_args(&args) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("command: {e}");
                    return ExitCode::from(2);
                }
            };
            let cmd = amr_gateway::field::command::CommandArgs {
                prefix,
                gateway,
                key_file: key,
                key_id,
                name,
                args,
                valid_s,
                timeout: std::time::Duration::from_secs(timeout_s),
            };
            give_command(&broker, &cmd, json)
        }
    }
}

fn keygen(out: &std::path::Path) -> ExitCode {
    match amr_gateway::uplink::command::write_key_pair(out) {
        Ok(_) => {
            let public = amr_gateway::uplink::command::public_key_path(out);
            println!(
                "private key: {} (keep it at the headend)\npublic key:  {} (give it to the \
                 gateways: [[command_key]] public_key_file)",
                out.display(),
                public.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("keygen", &format!("{}: {e}", out.display())),
    }
}

fn give_command(
    broker: &amr_gateway::field::command::BrokerArgs,
    cmd: &amr_gateway::field::command::CommandArgs,
    json: bool,
) -> ExitCode {
    use amr_gateway::field::command::{CommandError, describe, give};
    match runtime().block_on(give(broker, cmd)) {
        Ok(result) => {
            if json {
                println!("{result}");
            } else {
                println!("{}", describe(&result));
            }
            if result["state"] == "done" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(CommandError::Setup(e)) => {
            eprintln!("command: {e}");
            ExitCode::from(2)
        }
        Err(CommandError::NoResult(e)) => {
            eprintln!("command: {e}");
            ExitCode::from(3)
        }
    }
}

/// Logging to stderr in the shape that fits where it goes: a terminal, a file, journald
/// (syslog priorities), or JSON lines (`AMR_LOG_FORMAT=json`). See `amr_gateway::logging`.
fn init_logging(default_level: &str) {
    amr_gateway::logging::init(default_level);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start the async runtime")
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("{}:{}:{}: warning: {}", w.file, w.line, w.col, w.message);
            }
            println!(
                "{}: ok ({}, {}, {}, {})",
                path.display(),
                count(c.buses.len(), "bus", "buses"),
                count(c.meters.len(), "meter", "meters"),
                count(c.areas.len(), "area", "areas"),
                count(c.models.models.len(), "meter model", "meter models"),
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}", problems_found(errors.0.len()));
            ExitCode::from(2)
        }
    }
}

/// What the daemon was told by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGTERM or SIGINT: stop in order.
    Stop,
    /// SIGHUP: read the configuration file again.
    Reload,
}

/// Signals as they arrive: SIGTERM and SIGINT stop, SIGHUP reloads.
fn signals() -> tokio::sync::mpsc::UnboundedReceiver<Signal> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        loop {
            let sent = tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); tx.send(Signal::Stop) }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); tx.send(Signal::Stop) }
                _ = hup.recv() => tx.send(Signal::Reload),
            };
            if sent.is_err() {
                break;
            }
        }
    });
    rx
}

/// A watch channel that turns true on SIGTERM or SIGINT (for `simulate` and `demo`, which reload
/// nothing).
fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        let _ = tx.send(true);
    });
    rx
}

/// How often the daemon hands the heap's freed pages back to the system.
const HEAP_TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Allocations at least this large get pages of their own, given back when freed.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Keeps the resident size of a large gateway near what it holds (glibc only; other C
/// libraries: nothing to do). The daemon's long-lived state (the engines' per-meter parts,
/// meter plans) and its short-lived buffers (a commit window's readings, messages and
/// snapshot parts) share the allocator's arenas, and glibc gives freed memory back only from
/// the top of an arena: with 1000 meters the resident size kept growing with the holes
/// between them (about 23 MB in use, 60–70 MB held after ten minutes: docs/benchmarks.md
/// (j)). So: one arena for all threads (`M_ARENA_MAX` 1: glibc otherwise gives each thread
/// that allocates its own, and a buffer made on one worker thread and freed on another leaves
/// holes in both; the gateway's few threads do not contend for it), a fixed
/// `M_MMAP_THRESHOLD` (glibc otherwise raises it after every large free, and large buffers
/// then land in the arena), and `malloc_trim(0)` every [`HEAP_TRIM_EVERY`] on a thread of its
/// own.
fn return_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt sets allocator parameters; called before the threads start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
        let spawned = std::thread::Builder::new()
            .name("heap-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(HEAP_TRIM_EVERY);
                    // SAFETY: malloc_trim only gives free pages of the allocator back.
                    unsafe { libc::malloc_trim(0) };
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the heap trimming thread: {e}");
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}; not starting", problems_found(errors.0.len()));
            return ExitCode::from(2);
        }
    };
    amr_gateway::logging::init_with(cfg.gateway.log_level.name(), cfg.gateway.log_format);
    for w in &cfg.warnings {
        tracing::warn!("{}:{}:{}: {}", w.file, w.line, w.col, w.message);
    }
    return_freed_heap();
    runtime().block_on(async move {
        let mut signals = signals();
        let mut cfg = cfg;
        // `config_apply` asks for a restart with the file it put in place.
        let (apply_tx, mut apply_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        // One generation of the gateway per configuration: SIGHUP with a valid file stops the
        // running one in order (everything read is committed) and starts the next; with an
        // invalid file it keeps running as it is.
        'generations: loop {
            let (stop, shutdown) = amr_gateway::shutdown::Stop::new();
            let apply_tx = apply_tx.clone();
            let hooks = amr_gateway::gateway::Hooks {
                status: Some(std::sync::Arc::new(amr_gateway::field::status::collect)),
                restart: Some(std::sync::Arc::new(move || {
                    let _ = apply_tx.send(());
                })),
            };
            let mut gateway = tokio::spawn(amr_gateway::gateway::run_with_hooks(
                cfg.clone(),
                shutdown,
                None,
                hooks,
            ));
            let next = loop {
                tokio::select! {
                    end = &mut gateway => {
                        // A generation that could not start with a file `config_apply` put in
                        // place: the previous file goes back and runs (it answers `failed`).
                        if let Some(previous) = rolled_back(path, &end) {
                            cfg = previous;
                            continue 'generations;
                        }
                        return exit_of(end);
                    }
                    Some(()) = apply_rx.recv() => match config::load(path) {
                        Ok(new) => {
                            tracing::info!(
                                "config_apply: restarting the gateway with {}",
                                path.display()
                            );
                            amr_gateway::liveness::Liveness::tell_reloading();
                            break Some(new);
                        }
                        Err(errors) => {
                            // Checked before it was put in place: only a file changed since.
                            let reason = errors.to_string();
                            if amr_gateway::gateway::rollback_apply(path, &reason) {
                                match config::load(path) {
                                    Ok(previous) => break Some(previous),
                                    Err(e) => tracing::error!("{e}"),
                                }
                            }
                        }
                    },
                    signal = signals.recv() => match signal {
                        Some(Signal::Reload) => match config::load(path) {
                            Ok(new) => {
                                for w in &new.warnings {
                                    tracing::warn!("{}:{}:{}: {}", w.file, w.line, w.col, w.message);
                                }
                                tracing::info!(
                                    "SIGHUP: {} is valid; restarting the gateway with it",
                                    path.display()
                                );
                                amr_gateway::liveness::Liveness::tell_reloading();
                                break Some(new);
                            }
                            Err(errors) => {
                                for p in &errors.0 {
                                    tracing::error!("{p}");
                                }
                                tracing::error!(
                                    "SIGHUP: {} in {}; keeping the running configuration",
                                    problems_found(errors.0.len()),
                                    path.display()
                                );
                            }
                        },
                        Some(Signal::Stop) | None => {
                            amr_gateway::liveness::Liveness::tell_stopping();
                            break None;
                        }
                    },
                }
            };
            stop.stop();
            let end = gateway.await;
            match next {
                Some(new) if matches!(end, Ok(Ok(()))) => cfg = new,
                _ => return exit_of(end),
            }
        }
    })
}

/// After a generation ended with an error while a `config_apply` was under way (the new file
/// cannot start: data directory, store lock, store): the previous file put back and loaded.
fn rolled_back(
    path: &std::path::Path,
    end: &Result<Result<(), amr_gateway::gateway::RunError>, tokio::task::JoinError>,
) -> Option<amr_gateway::config::Config> {
    let reason = match end {
        Ok(Ok(())) => return None,
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("the gateway failed: {e}"),
    };
    if !amr_gateway::gateway::rollback_apply(path, &reason) {
        return None;
    }
    match config::load(path) {
        Ok(previous) => Some(previous),
        Err(errors) => {
            tracing::error!("the previous configuration does not load either:\n{errors}");
            None
        }
    }
}

/// The exit code of a generation of the gateway that ended.
fn exit_of(
    end: Result<Result<(), amr_gateway::gateway::RunError>, tokio::task::JoinError>,
) -> ExitCode {
    match end {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!("{e}");
            eprintln!("amr-gateway: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!("the gateway failed: {e}");
            eprintln!("amr-gateway: the gateway failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// "1 problem found", "3 problems found".
fn problems_found(n: usize) -> String {
    format!("{} found", count(n, "problem", "problems"))
}

/// "1 bus", "2 buses".
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn simulate(path: &std::path::Path) -> ExitCode {
    init_logging("info");
    runtime().block_on(async move {
        let shutdown = shutdown_on_signals();
        match amr_gateway::sim::run_from_file(path, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("amr-gateway simulate: {e}");
                ExitCode::from(2)
            }
        }
    })
}

#[cfg(feature = "embedded-broker")]
fn demo(for_s: Option<u64>, mqtt_port: u16) -> ExitCode {
    init_logging("warn");
    runtime().block_on(async move {
        let shutdown = shutdown_on_signals();
        match amr_gateway::demo::run(for_s, mqtt_port, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("amr-gateway demo: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(not(feature = "embedded-broker"))]
fn demo(_for_s: Option<u64>, _mqtt_port: u16) -> ExitCode {
    eprintln!(
        "amr-gateway demo: this build has no embedded broker (cargo feature `embedded-broker`)"
    );
    ExitCode::FAILURE
}

/// The built-in models plus those of `dir`.
fn library(dir: Option<&std::path::Path>) -> Result<amr_gateway::meter::ModelLibrary, String> {
    let mut lib = amr_gateway::meter::ModelLibrary::builtin();
    if let Some(d) = dir {
        lib.load_dir(d).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
    }
    Ok(lib)
}

fn fail(tool: &str, msg: &str) -> ExitCode {
    eprintln!("amr-gateway {tool}: {msg}");
    ExitCode::from(2)
}

fn read(
    link: &LinkOpts,
    unit: Option<u8>,
    model: Option<String>,
    dir: Option<&std::path::Path>,
    json: bool,
) -> ExitCode {
    init_logging("warn");
    let link = match link.link() {
        Ok(l) => l,
        Err(e) => return fail("read", &e),
    };
    let Some(unit) = unit else {
        return fail(
            "read",
            "give the meter's --unit (Modbus), or --protocol dlt645 --address ADDR",
        );
    };
    let Some(model) = model else {
        return fail("read", "give the meter's --model (see protocols/)");
    };
    let model = model.as_str();
    let lib = match library(dir) {
        Ok(l) => l,
        Err(e) => return fail("read", &e),
    };
    let Some(model) = lib.get(model).cloned() else {
        return fail(
            "read",
            &format!(
                "unknown model `{model}`; available: {}",
                lib.names().join(", ")
            ),
        );
    };
    if !(1..=247).contains(&unit) {
        return fail("read", "--unit must be 1..247");
    }
    runtime().block_on(async move {
        match amr_gateway::field::read::read_meter(&link, unit, &model).await {
            Ok(r) => print_meter_read(&r, json),
            Err(e) => fail("read", &e),
        }
    })
}

/// Prints one meter's read as a table or JSON; exit 1 when it gave no value.
fn print_meter_read(r: &amr_gateway::field::read::MeterRead, json: bool) -> ExitCode {
    if json {
        println!("{}", r.json());
    } else {
        print!("{}", r.table());
    }
    if r.values.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `read --protocol dlt645 --address ADDR`: one poll of a DL/T 645 meter through its driver.
fn read_dlt645(
    opts: &LinkOpts,
    unit: Option<u8>,
    model: Option<String>,
    dir: Option<&std::path::Path>,
    json: bool,
) -> ExitCode {
    init_logging("warn");
    if unit.is_some() {
        return fail(
            "read",
            "a DL/T 645 meter has no unit id: name it by its 12-digit --address",
        );
    }
    let Some(address) = opts.address.clone() else {
        return fail(
            "read",
            "give the meter's 12-digit --address (on its nameplate; `scan --protocol dlt645` \
             finds a lone meter's)",
        );
    };
    if let Err(e) = dlt645::Address::parse(&address) {
        return fail("read", &format!("--address {address}: {}", e.0));
    }
    let link = match opts.link() {
        Ok(l) => l,
        Err(e) => return fail("read", &e),
    };
    let lib = match library(dir) {
        Ok(l) => l,
        Err(e) => return fail("read", &e),
    };
    let name = model.unwrap_or_else(|| "dlt645-2007".into());
    let Some(model) = lib.get_dlt645(&name).cloned() else {
        let names: Vec<&str> = lib.dlt645.keys().map(String::as_str).collect();
        return fail(
            "read",
            &format!(
                "unknown DL/T 645 model `{name}`; available: {}",
                names.join(", ")
            ),
        );
    };
    runtime().block_on(async move {
        match amr_gateway::field::read::read_dlt645_meter(&link, &address, &model).await {
            Ok(r) => print_meter_read(&r, json),
            Err(e) => fail("read", &e),
        }
    })
}

/// `scan --protocol dlt645`: a lone meter's address, or which of a list of addresses answer.
fn scan_dlt645(
    opts: &LinkOpts,
    addresses: Option<&std::path::Path>,
    dir: Option<&std::path::Path>,
    json: bool,
) -> ExitCode {
    init_logging("warn");
    let link = match opts.link() {
        Ok(l) => l,
        Err(e) => return fail("scan", &e),
    };
    let list = match addresses {
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => return fail("scan", &format!("{}: {e}", path.display())),
            };
            match amr_gateway::field::scan::parse_addresses(&text, &path.display().to_string()) {
                Ok(list) => Some(list),
                Err(e) => return fail("scan", &e),
            }
        }
        None => None,
    };
    let lib = match library(dir) {
        Ok(l) => l,
        Err(e) => return fail("scan", &e),
    };
    let total = list.as_ref().map_or(1, Vec::len);
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} addresses · {msg} · about {eta} left",
        )
        .unwrap(),
    );
    bar.set_message("0 found");
    runtime().block_on(async move {
        let result =
            amr_gateway::field::scan::scan_dlt645(&link, list.as_deref(), &lib, |_, found| {
                bar.inc(1);
                bar.set_message(format!("{found} found"));
            })
            .await;
        bar.finish_and_clear();
        let scanned = list.as_ref().map(Vec::len);
        match result {
            Ok(found) => {
                if json {
                    println!("{}", amr_gateway::field::scan::json_dlt645(&found, scanned));
                } else {
                    print!(
                        "{}",
                        amr_gateway::field::scan::table_dlt645(&found, scanned)
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("scan", &e),
        }
    })
}

fn scan(link: &LinkOpts, units: &str, dir: Option<&std::path::Path>, json: bool) -> ExitCode {
    init_logging("warn");
    let link = match link.link_with_timeout(70) {
        Ok(l) => l,
        Err(e) => return fail("scan", &e),
    };
    let units = match amr_gateway::field::scan::parse_units(units) {
        Ok(u) => u,
        Err(e) => return fail("scan", &e),
    };
    let lib = match library(dir) {
        Ok(l) => l,
        Err(e) => return fail("scan", &e),
    };
    let bar = indicatif::ProgressBar::new(units.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} unit ids · {msg} · about {eta} left",
        )
        .unwrap(),
    );
    bar.set_message("0 found");
    runtime().block_on(async move {
        let mut shown = 0;
        let result = amr_gateway::field::scan::scan(&link, &units, &lib, |_, found| {
            bar.inc(1);
            bar.set_message(format!("{} found", found.len()));
            // Each unit as it is found, above the bar on a terminal; a line at a time (stdout
            // is line-buffered) into a pipe or file.
            if !json {
                for f in &found[shown..] {
                    bar.suspend(|| println!("found {}", amr_gateway::field::scan::row(f)));
                }
            }
            shown = found.len();
        })
        .await;
        bar.finish_and_clear();
        match result {
            Ok(found) => {
                if json {
                    println!("{}", amr_gateway::field::scan::json(&found, units.len()));
                } else {
                    print!("{}", amr_gateway::field::scan::table(&found, units.len()));
                    if found.is_empty() && link.is_modbus_tcp() {
                        println!(
                            "on Modbus TCP: this port may be a serial server in RTU-over-TCP \
                             mode; try --protocol modbus-rtu-over-tcp"
                        );
                    }
                }
                // Nothing answered is a failed scan (a script must not take it for an empty
                // bus that is fine).
                if found.is_empty() {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => fail("scan", &e),
        }
    })
}

fn status(path: &std::path::Path, json: bool) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    match amr_gateway::field::status::collect(&cfg) {
        Ok(st) => {
            if json {
                println!("{st}");
            } else {
                print!("{}", amr_gateway::field::status::table(&st));
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail("status", &e),
    }
}

/// The library for a tool, or the exit code of its failure.
fn tool_library(
    tool: &str,
    dir: Option<&std::path::Path>,
) -> Result<amr_gateway::meter::ModelLibrary, ExitCode> {
    library(dir).map_err(|e| fail(tool, &e))
}

fn register(action: RegisterAction) -> ExitCode {
    use amr_gateway::field::register::{self, ReadArgs, ValueType, WordOrder};
    use amr_gateway::protocol::modbus::codec::Request;
    init_logging("warn");
    let parse_common = |link: &LinkOpts, unit: u8, t: &str, order: &str| {
        let link = link.link()?;
        if !(1..=247).contains(&unit) {
            return Err(format!("--unit {unit}: unit ids are 1..247"));
        }
        Ok((link, ValueType::parse(t)?, WordOrder::parse(order)?))
    };
    match action {
        RegisterAction::Read {
            link,
            unit,
            function,
            start,
            count,
            value_type,
            word_order,
            json,
        } => {
            let (link, value_type, word_order) =
                match parse_common(&link, unit, &value_type, &word_order) {
                    Ok(x) => x,
                    Err(e) => return fail("register read", &e),
                };
            let start = match amr_gateway::field::parse_address(&start) {
                Ok(a) => a,
                Err(e) => return fail("register read", &format!("--start: {e}")),
            };
            if !(1..=4).contains(&function) {
                return fail(
                    "register read",
                    &format!(
                        "--function {function}: reads are 1 (coils), 2 (discrete inputs), 3 (holding), 4 (input registers)"
                    ),
                );
            }
            let args = ReadArgs {
                unit,
                function,
                start,
                count,
                value_type,
                word_order,
            };
            match runtime().block_on(register::read(&link, &args)) {
                Ok(r) => {
                    if json {
                        println!("{}", r.json());
                    } else {
                        print!("{}", r.table());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("amr-gateway register read: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        RegisterAction::Write {
            link,
            unit,
            register,
            coil,
            value,
            value_type,
            word_order,
            function,
            json,
        } => {
            let (link, value_type, word_order) =
                match parse_common(&link, unit, &value_type, &word_order) {
                    Ok(x) => x,
                    Err(e) => return fail("register write", &e),
                };
            let request = match (register, coil) {
                (Some(r), None) => {
                    let address = match amr_gateway::field::parse_address(&r) {
                        Ok(a) => a,
                        Err(e) => return fail("register write", &format!("--register: {e}")),
                    };
                    let words = match register::encode(&value, value_type, word_order) {
                        Ok(w) => w,
                        Err(e) => return fail("register write", &e),
                    };
                    match (function, words.len()) {
                        (None | Some(6), 1) => Request::WriteRegister {
                            address,
                            value: words[0],
                        },
                        (None | Some(16), _) => Request::WriteRegisters {
                            address,
                            values: words,
                        },
                        (Some(6), _) => {
                            return fail(
                                "register write",
                                "--function 6 writes one register; a 32-bit value takes --function 16",
                            );
                        }
                        (Some(f), _) => {
                            return fail(
                                "register write",
                                &format!(
                                    "--function {f}: registers are written with 6 or 16 (a coil: --coil)"
                                ),
                            );
                        }
                    }
                }
                (None, Some(c)) => {
                    let address = match amr_gateway::field::parse_address(&c) {
                        Ok(a) => a,
                        Err(e) => return fail("register write", &format!("--coil: {e}")),
                    };
                    let on = match value.to_ascii_lowercase().as_str() {
                        "on" | "1" | "true" => true,
                        "off" | "0" | "false" => false,
                        _ => {
                            return fail(
                                "register write",
                                &format!("--value {value}: a coil is on or off"),
                            );
                        }
                    };
                    Request::WriteCoil { address, on }
                }
                _ => {
                    return fail(
                        "register write",
                        "give --register ADDR --value V, or --coil ADDR --value on|off",
                    );
                }
            };
            match runtime().block_on(register::write(&link, unit, &request)) {
                Ok(r) => {
                    if json {
                        println!("{}", r.json());
                    } else {
                        print!("{}", r.table());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("amr-gateway register write: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn setup(
    link: &LinkOpts,
    unit: u8,
    model: &str,
    dir: Option<&std::path::Path>,
    (new_unit, new_baud): (Option<u8>, Option<u32>),
    json: bool,
) -> ExitCode {
    use amr_gateway::field::setup::{SetupArgs, run, setup_of};
    init_logging("warn");
    let link = match link.link() {
        Ok(l) => l,
        Err(e) => return fail("setup", &e),
    };
    if let Some(u) = [Some(unit), new_unit]
        .into_iter()
        .flatten()
        .find(|u| !(1..=247).contains(u))
    {
        return fail("setup", &format!("unit id {u}: unit ids are 1..247"));
    }
    if new_unit.is_none() && new_baud.is_none() {
        return fail("setup", "give --new-unit N and/or --new-baud RATE");
    }
    if let Some(b) = new_baud
        && let Some(problem) = config::baud_problem(i128::from(b), None)
    {
        return fail("setup", &format!("--new-{problem}"));
    }
    let lib = match tool_library("setup", dir) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(model) = lib.get(model) else {
        return fail(
            "setup",
            &format!(
                "unknown model `{model}`; available: {}",
                lib.names().join(", ")
            ),
        );
    };
    let with_setup: Vec<&str> = lib
        .models
        .values()
        .filter(|m| m.setup.is_some())
        .map(|m| m.name.as_str())
        .collect();
    let setup = match setup_of(model, &with_setup) {
        Ok(s) => s,
        Err(e) => return fail("setup", &e),
    };
    let args = SetupArgs {
        unit,
        new_unit,
        new_baud,
    };
    match runtime().block_on(run(&link, setup, &args)) {
        Ok(r) => {
            if json {
                println!("{}", r.json());
            } else {
                print!("{}", r.text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("amr-gateway setup: {e}");
            ExitCode::FAILURE
        }
    }
}

fn test(path: &std::path::Path, json: bool) -> ExitCode {
    init_logging("warn");
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}", problems_found(errors.0.len()));
            return ExitCode::from(2);
        }
    };
    let rows = runtime().block_on(amr_gateway::field::test::test(&cfg));
    if json {
        println!("{}", amr_gateway::field::test::json(&rows));
    } else {
        print!("{}", amr_gateway::field::test::table(&rows));
    }
    if rows.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
