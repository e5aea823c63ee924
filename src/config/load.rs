//! Reading a configuration file: spanned TOML → [`Config`], collecting every problem.
//!
//! The text is parsed with `toml`'s recoverable parser. Syntax errors are reported on their own
//! (a tree recovered from broken syntax would give misleading follow-up problems). Otherwise
//! each section is read by `sections`, then `checks` runs the checks that span sections, and
//! the model library is completed from `[gateway] models_dir`. Problems come out sorted by
//! position.

use super::analytics;
use super::checks::cross_check;
use super::sections::{self, AreaEntry, BusEntry, MeterEntry};
use super::*;
use crate::diagnostic::{Report, did_you_mean, nearest, with_article};
use crate::meter::ModelLibrary;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The top-level sections, with how each is written.
const SECTIONS: &[(&str, &str)] = &[
    ("gateway", "[gateway]"),
    ("mqtt", "[mqtt]"),
    ("store", "[store]"),
    ("bus", "[[bus]]"),
    ("meter", "[[meter]]"),
    ("area", "[[area]]"),
    ("loss", "[loss]"),
    ("alarms", "[alarms]"),
    ("voltage_quality", "[voltage_quality]"),
    ("freeze", "[freeze]"),
    ("curve", "[curve]"),
    ("collection", "[collection]"),
    ("time_sync", "[time_sync]"),
    ("command_key", "[[command_key]]"),
    ("commands", "[commands]"),
    ("health", "[health]"),
];

/// Reads and validates the file at `path`, with the built-in meter models.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigProblem {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    load_str(&text, path)
}

/// Validates `text` as if read from `path`, with the built-in meter models. Relative paths in
/// the file are resolved against `path`'s directory.
pub fn load_str(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    load_str_with(text, path, ModelLibrary::builtin())
}

/// Validates `text` as if read from `path`, with `base` as the meter model library (extended by
/// `[gateway] models_dir` when set). For tests and tools that bring their own models.
pub fn load_str_with(text: &str, path: &Path, base: ModelLibrary) -> Result<Config, ConfigErrors> {
    load_text(text, path, base)
}

/// [`load_str_with`].
fn load_text(text: &str, path: &Path, base: ModelLibrary) -> Result<Config, ConfigErrors> {
    let mut report = Report::new(path.display().to_string(), text);
    let (document, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for error in &syntax_errors {
            let span = error.span().unwrap_or(0..0);
            let message = if error.message() == "duplicate key" {
                format!(
                    "`{}` is defined twice; a key or [section] may appear only once (repeated \
                     sections are written [[bus]], [[meter]], [[area]])",
                    report.source(span.clone())
                )
            } else {
                format!("TOML syntax: {}", error.message())
            };
            report.at(span.start, message);
        }
        return Err(finish(report));
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    let root = document.get_ref();
    unknown_sections(&mut report, root);

    let gateway = match table(&mut report, root, "gateway") {
        Some((t, start)) => Some(sections::gateway(&mut report, t, start, dir)),
        None => {
            missing_section(&mut report, root, "gateway", "`id` and `data_dir`");
            None
        }
    };
    let gateway_id = gateway.as_ref().map_or("", |g| g.config.id.as_str());
    let mqtt = match table(&mut report, root, "mqtt") {
        Some((t, start)) => Some(sections::mqtt(&mut report, t, start, dir, gateway_id)),
        None => {
            missing_section(&mut report, root, "mqtt", "at least `host`");
            None
        }
    };
    let store = match table(&mut report, root, "store") {
        Some((t, start)) => sections::store(&mut report, t, start),
        None => sections::default_store(),
    };
    let health = match table(&mut report, root, "health") {
        Some((t, start)) => sections::health(&mut report, t, start),
        None => HealthConfig::default(),
    };
    let buses: Vec<BusEntry> = tables(&mut report, root, "bus")
        .into_iter()
        .map(|(t, start)| sections::bus(&mut report, t, start, dir))
        .collect();
    let meters: Vec<MeterEntry> = tables(&mut report, root, "meter")
        .into_iter()
        .map(|(t, start)| sections::meter(&mut report, t, start))
        .collect();
    let areas: Vec<AreaEntry> = tables(&mut report, root, "area")
        .into_iter()
        .map(|(t, start)| sections::area(&mut report, t, start))
        .collect();

    let command_keys: Vec<(usize, crate::uplink::command::CommandKey)> =
        tables(&mut report, root, "command_key")
            .into_iter()
            .filter_map(|(t, start)| {
                super::commands::command_key(&mut report, t, start, dir).map(|k| (start, k))
            })
            .collect();
    super::commands::check_ids(&mut report, &command_keys);
    let commands_table = table(&mut report, root, "commands");
    let (commands, secrets_file) = super::commands::policy(
        &mut report,
        commands_table,
        command_keys.into_iter().map(|(_, k)| k).collect(),
        dir,
    );
    let relay_secrets = match secrets_file {
        Some((file, at)) => {
            let ids: Vec<String> = meters.iter().map(|m| m.config.id.clone()).collect();
            super::relay_secrets::load(&mut report, file, at, &ids)
        }
        None => Default::default(),
    };

    let (mut loss, mut carried) = match table(&mut report, root, "loss") {
        Some((t, start)) => analytics::loss(&mut report, t, start),
        None => Default::default(),
    };
    let (mut voltage_quality, more) = match table(&mut report, root, "voltage_quality") {
        Some((t, start)) => analytics::voltage_quality(&mut report, t, start),
        None => Default::default(),
    };
    carried.extend(more);
    let freeze = match table(&mut report, root, "freeze") {
        Some((t, start)) => analytics::freeze(&mut report, t, start),
        None => Default::default(),
    };
    let curve = match table(&mut report, root, "curve") {
        Some((t, start)) => analytics::curve(&mut report, t, start),
        None => Default::default(),
    };
    let collection = match table(&mut report, root, "collection") {
        Some((t, start)) => sections::collection(&mut report, t, start),
        None => Default::default(),
    };
    let time_sync = match table(&mut report, root, "time_sync") {
        Some((t, start)) => sections::time_sync(&mut report, t, start),
        None => Default::default(),
    };
    let found = table(&mut report, root, "alarms");
    let alarms = analytics::alarms(&mut report, found, carried);
    // One source for a rule two engines share.
    loss.stopped = alarms.settings.meter_stopped.rule();
    voltage_quality.band = alarms.settings.voltage.band();
    for (area, span) in &alarms.rated_kva_areas {
        if !areas.iter().any(|e| e.config.id == *area) {
            let ids: Vec<&str> = areas.iter().map(|e| e.config.id.as_str()).collect();
            let hint = did_you_mean(area, ids.iter().copied());
            report.at(
                span.start,
                format!(
                    "[alarms.overload] rated_kva names area `{area}`, which no [[area]] \
                     has; {hint}use an area id, or set `rated_kva` in the [[area]] itself"
                ),
            );
        }
    }

    let mut models = base;
    if let Some(g) = &gateway {
        if let (Some(dir), Some(span)) = (&g.config.models_dir, &g.models_dir) {
            load_models(&mut report, &mut models, dir, span.start);
        }
    }
    cross_check(&mut report, &buses, &meters, &areas, &models);

    match (gateway, mqtt) {
        (Some(gateway), Some(mqtt)) if report.problems.is_empty() => Ok(Config {
            source: path.to_path_buf(),
            gateway: gateway.config,
            mqtt,
            store,
            health,
            buses: buses.into_iter().map(|b| b.config).collect(),
            meters: meters.into_iter().map(|m| m.config).collect(),
            areas: areas.into_iter().map(|a| a.config).collect(),
            loss,
            alarms: alarms.settings,
            voltage_quality,
            freeze,
            curve,
            collection,
            time_sync,
            models,
            commands,
            relay_secrets,
            warnings: sorted(report.warnings, path),
        }),
        _ => Err(finish(report)),
    }
}

/// Adds the models of `dir` to `models`; their problems are reported in their own files.
fn load_models(report: &mut Report, models: &mut ModelLibrary, dir: &Path, at: usize) {
    if !dir.is_dir() {
        report.at(
            at,
            format!(
                "models_dir `{}` is not a directory; create it or remove `models_dir`",
                dir.display()
            ),
        );
        return;
    }
    if let Err(errors) = models.load_dir(dir) {
        report.problems.extend(errors);
    }
}

/// The problems, sorted: this file's by position, then other files' (model files).
fn finish(report: Report) -> ConfigErrors {
    let file = PathBuf::from(report.file());
    ConfigErrors(sorted(report.problems, &file))
}

/// `problems` sorted: those of `path` by position, then other files' (model files).
fn sorted(mut problems: Vec<ConfigProblem>, path: &Path) -> Vec<ConfigProblem> {
    let file = path.display().to_string();
    problems.sort_by(|a, b| {
        (a.file != file, &a.file, a.line, a.col).cmp(&(b.file != file, &b.file, b.line, b.col))
    });
    problems
}

/// Reports top-level keys that are not sections.
fn unknown_sections(report: &mut Report, root: &DeTable) {
    for (key, value) in root.iter() {
        let key_text = key.get_ref().as_ref();
        if SECTIONS.iter().any(|(name, _)| *name == key_text) {
            continue;
        }
        let hint = nearest(key_text, SECTIONS.iter().map(|(name, _)| *name))
            .and_then(|near| SECTIONS.iter().find(|(name, _)| *name == near))
            .map(|(_, written)| format!("did you mean `{written}`? "))
            .unwrap_or_default();
        let all: Vec<&str> = SECTIONS.iter().map(|(_, written)| *written).collect();
        let message = match value.get_ref() {
            DeValue::Table(_) | DeValue::Array(_) => format!(
                "unknown section `{key_text}`; {hint}the sections are: {}",
                all.join(", ")
            ),
            _ => format!(
                "unknown key `{key_text}` outside any section; {hint}keys belong under a \
                 section header such as [gateway]"
            ),
        };
        report.at(key.span().start, message);
    }
}

/// A section written `[name]`: its table and the offset of its header.
fn table<'d, 'i>(
    report: &mut Report,
    root: &'d DeTable<'i>,
    name: &str,
) -> Option<(&'d DeTable<'i>, usize)> {
    let value = root.get(name)?;
    match value.get_ref() {
        DeValue::Table(t) => Some((t, value.span().start)),
        other => {
            let found = match other {
                DeValue::Array(_) => "an array ([[...]])".to_string(),
                other => with_article(other.type_str()),
            };
            report.at(
                value.span().start,
                format!("`{name}` must be a section written [{name}], found {found}"),
            );
            // Counted as present: "missing section" would be a second report of one mistake.
            None
        }
    }
}

/// Every table of a section written `[[name]]`, with the offset of its header.
fn tables<'d, 'i>(
    report: &mut Report,
    root: &'d DeTable<'i>,
    name: &str,
) -> Vec<(&'d DeTable<'i>, usize)> {
    let Some(value) = root.get(name) else {
        return Vec::new();
    };
    match value.get_ref() {
        DeValue::Array(items) => items
            .iter()
            .filter_map(|item: &Spanned<DeValue>| match item.get_ref() {
                DeValue::Table(t) => Some((t, item.span().start)),
                other => {
                    report.at(
                        item.span().start,
                        format!(
                            "each `{name}` must be a table written [[{name}]], found {}",
                            with_article(other.type_str())
                        ),
                    );
                    None
                }
            })
            .collect(),
        DeValue::Table(_) => {
            report.at(
                value.span().start,
                format!(
                    "`[{name}]` must be written `[[{name}]]` (double brackets): there is one \
                     [[{name}]] section per {name}"
                ),
            );
            Vec::new()
        }
        other => {
            report.at(
                value.span().start,
                format!(
                    "`{name}` must be [[{name}]] sections, found {}",
                    with_article(other.type_str())
                ),
            );
            Vec::new()
        }
    }
}

/// Reports a required section that is absent (not one that is present with the wrong type,
/// which `table` has reported).
fn missing_section(report: &mut Report, root: &DeTable, name: &str, needs: &str) {
    if root.get(name).is_none() {
        report.at(0, format!("missing section [{name}]; add it, with {needs}"));
    }
}
