//! The relay secrets file `[commands] relay_secrets_file` names: each DL/T 645 meter's
//! password and operator code for remote control (1CH, the headend's `relay` command), per
//! meter (`[meter.ID]`) or for every meter (`[default]`). They are never in the main TOML,
//! never in a command and never in a log line or `config_get`; the file must be readable by
//! its owner only (mode 0600), and `check-config` places every problem in it at its
//! `FILE:LINE:COL`.
//!
//! ```toml
//! [default]
//! password = "02123456"   # 8 hex digits: level 02, password 123456
//! operator = "00000000"   # 8 hex digits
//!
//! [meter.h1]
//! password = "04000000"
//! operator = "00000001"
//! ```

use crate::diagnostic::{Problem, Report, with_article};
use crate::protocol::dlt645::codec::{parse_operator, parse_password};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

const ENTRY_KEYS: &[&str] = &["password", "operator"];
const SECTIONS: &[&str] = &["default", "meter"];

/// One meter's secrets, as the wire carries them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RelayCredentials {
    /// PA P0 P1 P2.
    pub password: [u8; 4],
    /// C0..C3.
    pub operator: [u8; 4],
}

impl std::fmt::Debug for RelayCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayCredentials(<redacted>)")
    }
}

/// The relay secrets of the gateway's meters.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RelaySecrets {
    /// The file they were read from; `None`: no `relay_secrets_file`.
    pub file: Option<PathBuf>,
    default: Option<RelayCredentials>,
    meters: BTreeMap<String, RelayCredentials>,
}

impl std::fmt::Debug for RelaySecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaySecrets")
            .field("file", &self.file)
            .field("meters", &self.meters.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl RelaySecrets {
    /// The secrets of `meter` (its own, else the default), or why there are none.
    pub fn for_meter(&self, meter: &str) -> Result<RelayCredentials, String> {
        let Some(file) = &self.file else {
            return Err(format!(
                "no relay secrets for meter `{meter}`: relay needs `[commands] \
                 relay_secrets_file` naming the file of the meters' passwords and operator codes"
            ));
        };
        self.meters
            .get(meter)
            .or(self.default.as_ref())
            .copied()
            .ok_or_else(|| {
                format!(
                    "no relay secrets for meter `{meter}` in {}: add [meter.{meter}] (or \
                     [default]) with password and operator",
                    file.display()
                )
            })
    }
}

/// Reads the secrets file `path` (named at `at` of the configuration, in `report`); every
/// problem goes to `report`, placed in the secrets file. `meters`: the configured meter ids.
pub(super) fn load(
    report: &mut Report,
    path: PathBuf,
    at: usize,
    meters: &[String],
) -> RelaySecrets {
    let mut secrets = RelaySecrets {
        file: Some(path.clone()),
        ..RelaySecrets::default()
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            report.at(
                at,
                format!("relay_secrets_file {}: cannot read it: {e}", path.display()),
            );
            return secrets;
        }
    };
    if let Some(mode) = mode_of(&path)
        && mode & 0o077 != 0
    {
        report.at(
            at,
            format!(
                "relay_secrets_file {} has mode {:04o}: others may read the meters' relay \
                 passwords; `chmod 600 {}`",
                path.display(),
                mode & 0o7777,
                path.display()
            ),
        );
    }
    let file = path.display().to_string();
    let mut own = Report::new(file, &text);
    read_entries(&mut own, &text, meters, &mut secrets);
    let problems: Vec<Problem> = own.problems;
    report.problems.extend(problems);
    secrets
}

fn mode_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

fn read_entries(report: &mut Report, text: &str, meters: &[String], secrets: &mut RelaySecrets) {
    let (document, errors) = DeTable::parse_recoverable(text);
    for e in errors {
        let at = e.span().map_or(0, |s| s.start);
        report.at(at, format!("not valid TOML: {}", e.message()));
    }
    let root = document.get_ref();
    report.unknown_keys(root, "the relay secrets file", SECTIONS);
    if let Some(v) = root.get("default") {
        secrets.default = entry(report, v, "[default]");
    }
    if let Some(v) = root.get("meter") {
        let DeValue::Table(t) = v.get_ref() else {
            report.at(
                v.span().start,
                format!(
                    "`meter` must be tables written [meter.ID], found {}",
                    with_article(v.get_ref().type_str())
                ),
            );
            return;
        };
        for (id, v) in t.iter() {
            let title = format!("[meter.{}]", id.get_ref());
            if !meters.iter().any(|m| m == id.get_ref().as_ref()) {
                report.at(
                    id.span().start,
                    format!("{title}: no meter `{}` in the configuration", id.get_ref()),
                );
                continue;
            }
            if let Some(c) = entry(report, v, &title) {
                secrets.meters.insert(id.get_ref().to_string(), c);
            }
        }
    }
    if secrets.default.is_none() && secrets.meters.is_empty() && report.problems.is_empty() {
        report.at(
            0,
            "no secrets: add [default] (or [meter.ID]) with password = \"02123456\" and \
             operator = \"00000000\"",
        );
    }
}

fn entry(
    report: &mut Report,
    value: &toml::Spanned<DeValue>,
    title: &str,
) -> Option<RelayCredentials> {
    let DeValue::Table(table) = value.get_ref() else {
        report.at(
            value.span().start,
            format!(
                "{title} must be a table, found {}",
                with_article(value.get_ref().type_str())
            ),
        );
        return None;
    };
    report.unknown_keys(table, title, ENTRY_KEYS);
    let password = string(
        report,
        table,
        value.span().start,
        title,
        "password",
        "02123456",
    );
    let operator = string(
        report,
        table,
        value.span().start,
        title,
        "operator",
        "00000000",
    );
    let password = password.and_then(|p| {
        parse_password(p.get_ref()).or_else(|| {
            report.at(
                p.span().start,
                format!(
                    "{title} password must be 8 hex digits, the level first (e.g. \"02123456\": \
                     level 02, password 123456); found {} characters",
                    p.get_ref().chars().count()
                ),
            );
            None
        })
    });
    let operator = operator.and_then(|o| {
        parse_operator(o.get_ref()).or_else(|| {
            report.at(
                o.span().start,
                format!(
                    "{title} operator must be 8 hex digits (e.g. \"00000000\"); found {} \
                     characters",
                    o.get_ref().chars().count()
                ),
            );
            None
        })
    });
    Some(RelayCredentials {
        password: password?,
        operator: operator?,
    })
}

/// The string `key` of `table` (the table `title` at `start`), or a problem.
fn string(
    report: &mut Report,
    table: &DeTable,
    start: usize,
    title: &str,
    key: &str,
    example: &str,
) -> Option<toml::Spanned<String>> {
    let Some(v) = table.get(key) else {
        report.at(
            start,
            format!("{title} has no `{key}`; add {key} = \"{example}\""),
        );
        return None;
    };
    match v.get_ref() {
        DeValue::String(s) => Some(toml::Spanned::new(v.span(), s.to_string())),
        other => {
            report.at(
                v.span().start,
                format!(
                    "{title} {key} must be a string like \"{example}\", found {}",
                    with_article(other.type_str())
                ),
            );
            None
        }
    }
}
