//! The shape of the crate, kept by a test: which top-level module may import which (the table
//! below, as the crate doc in src/lib.rs states it). It reads every `crate::…` path in the code
//! under src/ — `use` lines, `use crate::{a, b::c}` groups and paths written inline — and fails
//! on any import against the allowed directions, naming the file and line.
//!
//! Test code (files `tests.rs`, `*_tests.rs`, and inline `#[cfg(test)] mod tests`) may use any
//! module, the simulator in particular.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module and the modules it may import (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    // Leaves: domain types, time, the stop signal, spanned-TOML diagnostics.
    ("model", &[]),
    ("clock", &[]),
    ("shutdown", &[]),
    ("liveness", &[]),
    ("logging", &[]),
    ("diagnostic", &["model"]),
    // Sources: wire codecs and transports, meter models, buses.
    ("protocol", &["model", "clock", "shutdown"]),
    ("meter", &["model", "clock", "protocol", "diagnostic"]),
    (
        "bus",
        &[
            "model", "clock", "shutdown", "liveness", "protocol", "meter",
        ],
    ),
    // Pipeline: pure engines, and the writer that knows engines and store batches.
    ("analytics", &["model", "clock"]),
    (
        "pipeline",
        &["model", "clock", "analytics", "store", "uplink"],
    ),
    // Sinks: the store, and the uplink that alone owns the MQTT contract.
    ("store", &["model", "clock"]),
    (
        "uplink",
        &["model", "clock", "shutdown", "store", "analytics"],
    ),
    // The loader builds every component's settings; no component imports it.
    (
        "config",
        &[
            "model",
            "clock",
            "diagnostic",
            "logging",
            "protocol",
            "meter",
            "bus",
            "analytics",
            "pipeline",
            "store",
            "uplink",
        ],
    ),
    // The composition root.
    (
        "gateway",
        &[
            "model",
            "clock",
            "shutdown",
            "protocol",
            "meter",
            "bus",
            "analytics",
            "pipeline",
            "store",
            "uplink",
            "config",
            "liveness",
        ],
    ),
    // Tools over the public pieces.
    ("field", ANY),
    ("sim", ANY),
    ("broker", &["shutdown"]),
    ("demo", ANY),
];

const ANY: &[&str] = &[
    "model",
    "clock",
    "shutdown",
    "liveness",
    "logging",
    "diagnostic",
    "protocol",
    "meter",
    "bus",
    "analytics",
    "pipeline",
    "store",
    "uplink",
    "config",
    "gateway",
    "field",
    "sim",
    "broker",
];

/// Imports against the table that the refactor has not removed yet: (from, to). Each is a
/// debt; the test fails on any other, and on one listed here that no longer occurs.
const NOT_YET: &[(&str, &str)] = &[];

#[test]
fn imports_follow_the_allowed_directions() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, to)| (*m, to.iter().copied().collect()))
        .collect();

    // Every top-level module is in the table.
    let modules = top_level_modules(&src);
    let missing: Vec<&String> = modules
        .iter()
        .filter(|m| !allowed.contains_key(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "top-level modules missing from the layering table: {missing:?}"
    );

    let mut violations = Vec::new();
    let mut seen_debts = BTreeSet::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap();
        let Some(from) = module_of(rel) else { continue };
        let name = file.file_name().unwrap().to_string_lossy();
        if name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, to) in imports(&text) {
            if to == from || !modules.contains(&to) {
                continue;
            }
            if allowed[from.as_str()].contains(to.as_str()) {
                continue;
            }
            if NOT_YET.contains(&(from.as_str(), to.as_str())) {
                seen_debts.insert((from.clone(), to.clone()));
                continue;
            }
            violations.push(format!(
                "src/{}:{line}: `{from}` imports `{to}`",
                rel.display()
            ));
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the allowed directions (see tests/layering.rs and the crate doc):\n{}",
        violations.join("\n")
    );
    let paid: Vec<_> = NOT_YET
        .iter()
        .filter(|(f, t)| !seen_debts.contains(&(f.to_string(), t.to_string())))
        .collect();
    assert!(
        paid.is_empty(),
        "imports listed in NOT_YET no longer occur; remove them: {paid:?}"
    );
}

#[test]
fn the_reader_sees_groups_inline_paths_and_skips_comments_and_tests() {
    let text = "//! [`crate::store`] in a doc\nuse crate::{bus::X, clock::{a, b}, model};\n\
                fn f() { crate::uplink::go(); } // crate::config in a comment\n\
                /* crate::sim */\nlet s = \"crate::field\";\n\
                #[cfg(test)]\nmod tests {\n    use crate::sim;\n}\n";
    let got: Vec<(usize, String)> = imports(text);
    let names: Vec<&str> = got.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(names, ["bus", "clock", "model", "uplink"]);
    assert_eq!(got[3].0, 3);
}

/// The top-level modules: `src/X.rs` and `src/X/`.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_stem()?.to_string_lossy().into_owned();
            if p.is_dir() || (p.extension()? == "rs" && name != "lib" && name != "main") {
                Some(name)
            } else {
                None
            }
        })
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The top-level module a file under src/ belongs to (none for lib.rs and main.rs).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.strip_suffix(".rs").unwrap_or(&first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// Every `crate::X` path of the code (line, X): comments, string literals and the inline
/// `#[cfg(test)] mod tests` removed.
fn imports(text: &str) -> Vec<(usize, String)> {
    let code = code_only(text);
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while let Some(at) = code[i..].find("crate::") {
        let start = i + at;
        i = start + "crate::".len();
        // `crate` must be a path start, not the end of another word (`my_crate::`).
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        if bytes.get(i) == Some(&b'{') {
            for m in group_heads(&code[i..]) {
                out.push((line, m));
            }
        } else {
            let ident: String = code[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                out.push((line, ident));
            }
        }
    }
    out
}

/// The first segment of each path in a `{a, b::c, d::{e, f}}` group.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = false;
    let mut ident = String::new();
    for c in group.chars() {
        match c {
            '{' => {
                depth += 1;
                expect_head = depth == 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect_head = true,
            c if expect_head && (c.is_ascii_alphanumeric() || c == '_') => ident.push(c),
            _ => {
                if expect_head && !ident.is_empty() {
                    heads.push(std::mem::take(&mut ident));
                    expect_head = false;
                }
            }
        }
    }
    if !ident.is_empty() {
        heads.push(ident);
    }
    heads.retain(|h| h != "self");
    heads
}

/// `text` with comments and string literals blanked (newlines kept, so lines still count), cut
/// at an inline `#[cfg(test)]` test module.
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                    }
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                    }
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal holding a quote would otherwise open a string.
            '\'' if text_is_char_quote(&mut chars) => out.push_str("' '"),
            c => out.push(c),
        }
    }
    out
}

/// After a `'`: consumes `"'` (the char literal `'"'`) and says so; otherwise consumes nothing.
fn text_is_char_quote(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    let mut probe = chars.clone();
    if probe.next() == Some('"') && probe.next() == Some('\'') {
        chars.next();
        chars.next();
        return true;
    }
    false
}
