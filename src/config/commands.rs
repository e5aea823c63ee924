//! `[[command_key]]` and `[commands]`: who may command this gateway and how strictly commands
//! are checked, built into the uplink's [`CommandPolicy`]. Public key files are read here, so
//! `check-config` names a missing or malformed key file at its line.

use super::sections::path_key;
use crate::diagnostic::{Report, Section, did_you_mean};
use crate::uplink::command::{COMMAND_NAMES, CommandKey, CommandPolicy, read_public_key};
use std::collections::BTreeSet;
use std::path::Path;
use toml::de::DeTable;

const COMMAND_KEY_KEYS: &[&str] = &["id", "public_key_file", "allow"];
const COMMANDS_KEYS: &[&str] = &[
    "clock_window_s",
    "max_lifetime_s",
    "per_key_per_minute",
    "relay_secrets_file",
];

/// One `[[command_key]]`; `None` when it has a problem (reported).
pub(super) fn command_key(
    report: &mut Report,
    table: &DeTable,
    start: usize,
    base: &Path,
) -> Option<CommandKey> {
    let s = Section::new(report, "[[command_key]]", table, start, COMMAND_KEY_KEYS);
    let id = s.required_string(report, "id", "id = \"headend-1\"");
    let file = match path_key(report, &s, "public_key_file", base) {
        Some(f) => Some(f),
        None => {
            if s.get("public_key_file").is_none() {
                s.missing(
                    report,
                    "public_key_file",
                    "public_key_file = \"/etc/amr-gateway/headend-1.pub\" (from `amr-gateway keygen`)",
                );
            }
            None
        }
    };
    let public_key = file.and_then(|f| match read_public_key(&f) {
        Ok(k) => Some(k),
        Err(e) => {
            let at = s.get("public_key_file").map_or(start, |v| v.span().start);
            report.at(at, e);
            None
        }
    });
    let mut allow = BTreeSet::new();
    match s.string_array(report, "allow", "command names") {
        Some(names) => {
            for name in names.into_inner() {
                if COMMAND_NAMES.contains(&name.get_ref().as_str()) {
                    allow.insert(name.into_inner());
                } else {
                    let hint = did_you_mean(name.get_ref(), COMMAND_NAMES.iter().copied());
                    report.at(
                        name.span().start,
                        format!(
                            "unknown command `{}` in `allow`; {hint}known: {}",
                            name.get_ref(),
                            COMMAND_NAMES.join(", ")
                        ),
                    );
                }
            }
        }
        None if s.get("allow").is_none() => {
            s.missing(report, "allow", "allow = [\"ping\", \"status\", \"read\"]");
        }
        None => {}
    }
    Some(CommandKey {
        id: id?.into_inner(),
        public_key: public_key?,
        allow,
    })
}

/// `[commands]` applied to a policy holding `keys`; the defaults when the section is absent.
/// Also the relay secrets file it names, with the offset of its key.
pub(super) fn policy(
    report: &mut Report,
    table: Option<(&DeTable, usize)>,
    keys: Vec<CommandKey>,
    base: &Path,
) -> (CommandPolicy, Option<(std::path::PathBuf, usize)>) {
    let mut policy = CommandPolicy::new(keys);
    let Some((table, start)) = table else {
        return (policy, None);
    };
    let s = Section::new(report, "[commands]", table, start, COMMANDS_KEYS);
    if let Some(v) = s.integer_in(report, "clock_window_s", 1, 86_400, " s") {
        policy.clock_window_s = *v.get_ref() as u64;
    }
    if let Some(v) = s.integer_in(report, "max_lifetime_s", 1, 7 * 86_400, " s") {
        policy.max_lifetime_s = *v.get_ref() as u64;
    }
    if let Some(v) = s.integer_in(report, "per_key_per_minute", 1, 10_000, "") {
        policy.per_key_per_minute = *v.get_ref() as u32;
    }
    let secrets = path_key(report, &s, "relay_secrets_file", base).map(|p| {
        (
            p,
            s.get("relay_secrets_file")
                .map_or(start, |v| v.span().start),
        )
    });
    (policy, secrets)
}

/// Two `[[command_key]]` with one id: reported at the second.
pub(super) fn check_ids(report: &mut Report, keys: &[(usize, CommandKey)]) {
    let mut seen = BTreeSet::new();
    for (at, k) in keys {
        if !seen.insert(k.id.as_str()) {
            report.at(
                *at,
                format!(
                    "two [[command_key]] have id `{}`; each key needs its own id",
                    k.id
                ),
            );
        }
    }
}
