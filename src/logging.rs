//! How the daemon's log lines look, wherever stderr goes.
//!
//! - A terminal: coloured text (unless `NO_COLOR` is set).
//! - A file or a pipe: plain text, no colour escapes.
//! - journald (systemd sets `JOURNAL_STREAM` to stderr's `device:inode`): every line starts
//!   with its syslog priority, `<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace (the
//!   sd-daemon convention, so `journalctl -p warning` works); no timestamp of our own (journald
//!   stamps each line); one event a line (a newline inside a message is written as `\n`).
//! - `AMR_LOG_FORMAT=json` (or `[gateway] log_format = "json"` when the variable is not set):
//!   one JSON object a line (`timestamp`, `level`, `message`, the event's fields, `target`), for
//!   log shippers; under journald with the priority prefix too.
//!
//! `AMR_LOG` (a tracing filter such as `debug` or `amr_gateway::bus=debug`) overrides the level
//! the configuration asks for.

use std::ffi::OsStr;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How much is logged (`[gateway] log_level`; `AMR_LOG` overrides it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];

    /// As written in the configuration and in `AMR_LOG`.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    pub fn from_name(name: &str) -> Option<LogLevel> {
        LogLevel::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// The shape of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text (the default).
    Text,
    /// One JSON object a line.
    Json,
}

impl LogFormat {
    /// The format named in the configuration (`[gateway] log_format`): `plain` (or `text`)
    /// or `json`.
    pub fn from_name(name: &str) -> Option<LogFormat> {
        match name {
            "plain" | "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }

    /// The format to write: `AMR_LOG_FORMAT` when it is set (and not empty), else the
    /// configured one, else text.
    pub fn choose(env: Option<&OsStr>, configured: Option<LogFormat>) -> Result<LogFormat, String> {
        match env {
            Some(v) if !v.is_empty() => LogFormat::parse(Some(v)),
            _ => Ok(configured.unwrap_or(LogFormat::Text)),
        }
    }

    /// The format named by `AMR_LOG_FORMAT` (unset or empty: text).
    pub fn parse(value: Option<&OsStr>) -> Result<LogFormat, String> {
        match value.map(|v| v.to_string_lossy()) {
            None => Ok(LogFormat::Text),
            Some(v) if v.is_empty() || v == "text" || v == "plain" => Ok(LogFormat::Text),
            Some(v) if v == "json" => Ok(LogFormat::Json),
            Some(v) => Err(format!(
                "unknown AMR_LOG_FORMAT `{v}`; use `text` or `json` (writing text)"
            )),
        }
    }
}

/// Sets up logging to stderr at `default_level` (unless `AMR_LOG` says otherwise), in the
/// shape that fits where stderr goes (see the module doc).
pub fn init(default_level: &str) {
    init_with(default_level, None);
}

/// [`init`] with the configured format (`[gateway] log_format`), which `AMR_LOG_FORMAT`
/// overrides.
pub fn init_with(default_level: &str, configured: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AMR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let env = std::env::var_os("AMR_LOG_FORMAT");
    let (format, problem) = match LogFormat::choose(env.as_deref(), configured) {
        Ok(f) => (f, None),
        Err(e) => (LogFormat::Text, Some(e)),
    };
    let journal = stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match (format, journal) {
        (LogFormat::Json, false) => builder
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .try_init(),
        (LogFormat::Json, true) => builder
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .map_event_format(Prioritised)
            .try_init(),
        (LogFormat::Text, true) => builder
            .without_time()
            .with_ansi(false)
            .map_event_format(Prioritised)
            .try_init(),
        (LogFormat::Text, false) => builder
            .with_ansi(colour_logs(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
    };
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}

/// Colour escapes only on a terminal, and never when `NO_COLOR` is set to anything non-empty
/// (no-color.org): a file, a pipe or journald gets plain lines.
pub fn colour_logs(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Whether stderr is the stream systemd connected to journald: `JOURNAL_STREAM` names its
/// device and inode (a child that inherited the variable but writes elsewhere does not match).
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    journal_stream_is(&value, meta.dev(), meta.ino())
}

/// Whether a `JOURNAL_STREAM` value (`DEVICE:INODE`, decimal) names `dev` and `ino`.
fn journal_stream_is(value: &OsStr, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// The syslog priority of a level, as journald reads it from a line's `<N>` prefix.
fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// An event format that writes the event with `F` on one line, prefixed by its syslog
/// priority.
struct Prioritised<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritised<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        write!(
            writer,
            "<{}>{}",
            syslog_priority(event.metadata().level()),
            one_line(&line)
        )?;
        writer.write_char('\n')
    }
}

/// `text` without its final newline, and any newline inside it written as `\n`.
fn one_line(text: &str) -> String {
    text.trim_end_matches('\n').replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_logs(true, None));
        assert!(colour_logs(true, Some(OsStr::new(""))));
        assert!(!colour_logs(true, Some(OsStr::new("1"))));
        assert!(!colour_logs(false, None));
    }

    #[test]
    fn journal_stream_names_device_and_inode() {
        assert!(journal_stream_is(OsStr::new("64769:1234"), 64769, 1234));
        assert!(!journal_stream_is(OsStr::new("64769:1234"), 64769, 1235));
        assert!(!journal_stream_is(OsStr::new("garbage"), 0, 0));
        assert!(!journal_stream_is(OsStr::new(""), 0, 0));
    }

    #[test]
    fn priorities_follow_sd_daemon_and_one_event_is_one_line() {
        assert_eq!(syslog_priority(&Level::ERROR), 3);
        assert_eq!(syslog_priority(&Level::WARN), 4);
        assert_eq!(syslog_priority(&Level::INFO), 6);
        assert_eq!(syslog_priority(&Level::DEBUG), 7);
        assert_eq!(syslog_priority(&Level::TRACE), 7);
        assert_eq!(one_line("a\nb\n"), "a\\nb");
    }

    #[test]
    fn log_format_names() {
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some(OsStr::new(""))), Ok(LogFormat::Text));
        assert_eq!(
            LogFormat::parse(Some(OsStr::new("json"))),
            Ok(LogFormat::Json)
        );
        assert!(LogFormat::parse(Some(OsStr::new("xml"))).is_err());
        assert_eq!(LogFormat::from_name("plain"), Some(LogFormat::Text));
        assert_eq!(LogFormat::from_name("json"), Some(LogFormat::Json));
        assert_eq!(LogFormat::from_name("xml"), None);
    }

    #[test]
    fn the_environment_overrides_the_configured_format() {
        let json = Some(LogFormat::Json);
        assert_eq!(LogFormat::choose(None, json), Ok(LogFormat::Json));
        assert_eq!(
            LogFormat::choose(Some(OsStr::new("")), json),
            Ok(LogFormat::Json)
        );
        assert_eq!(
            LogFormat::choose(Some(OsStr::new("text")), json),
            Ok(LogFormat::Text)
        );
        assert_eq!(
            LogFormat::choose(Some(OsStr::new("json")), None),
            Ok(LogFormat::Json)
        );
        assert_eq!(LogFormat::choose(None, None), Ok(LogFormat::Text));
    }
}
