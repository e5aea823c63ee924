//! A property test of the configuration loader and the model file reader: mutated files —
//! from `config/example.toml`, `config/demo.toml`, the tests' gateway configurations and the
//! built-in model files — with flipped bytes, deleted and duplicated lines, swapped values,
//! huge numbers, invisible characters and cut endings, written to real files and loaded as
//! `check-config` does. None may panic, and every problem reported must carry `FILE:LINE:COL`
//! inside the file, with no invisible character in its message (they are shown escaped).

use amr_gateway::config;
use amr_gateway::meter::ModelLibrary;
use proptest::prelude::*;
use std::path::Path;

/// The configurations the mutations start from.
fn bases() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<String> = ["config/example.toml", "config/demo.toml"]
        .iter()
        .map(|f| std::fs::read_to_string(root.join(f)).unwrap())
        .collect();
    // The daemon tests' one-meter configuration, and one with an area and analytics keys.
    out.push(
        "[gateway]\nid = \"gw1\"\ndata_dir = \"data\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1883\n\
         keep_alive_s = 5\nreconnect_max_s = 1\n\n[[bus]]\nname = \"rs485\"\nprotocol = \"modbus-rtu\"\n\
         device = \"ttyRS485\"\nbaud = 19200\ntimeout_ms = 300\npoll_interval_s = 1\n\n[[meter]]\n\
         id = \"m1\"\nbus = \"rs485\"\nunit = 1\nmodel = \"eastron-sdm120\"\n\n[[meter]]\nid = \"m2\"\n\
         bus = \"rs485\"\nunit = 2\nmodel = \"eastron-sdm630\"\n\n[[area]]\nid = \"tx-1\"\n\
         supply = [\"m2\"]\ncustomers = [\"m1\"]\nloss_interval_s = 60\nrated_kva = 100\n\n\
         [alarms.overload]\nrated_kva = { tx-1 = 100 }\n"
            .to_string(),
    );
    out
}

/// The model files the model mutations start from.
fn model_bases() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols");
    [
        "eastron-sdm630.toml",
        "eastron-sdm120.toml",
        "chint-dtsu666.toml",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(root.join(f)).unwrap())
    .collect()
}

/// One change to a file's bytes; positions are taken modulo the file's size.
#[derive(Debug, Clone)]
enum Mutation {
    FlipByte(usize, u8),
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapValues(usize, usize),
    HugeNumber(usize, &'static str),
    Invisible(usize, char),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipByte(i, b)),
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapValues(a, b)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "99999999999999999999999999999",
                "-9223372036854775809",
                "18446744073709551616",
                "1e400",
                "-1e400",
                "nan",
                "inf",
                "-0",
                "0x7fffffffffffffff",
                "4294967296",
                "65536",
                "\"x\"",
            ])
        )
            .prop_map(|(i, n)| Mutation::HugeNumber(i, n)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                '\u{200b}', '\u{feff}', '\u{a0}', '\u{202e}', '\u{2060}', '\u{0}', '\u{7}',
                '\u{ad}', '\u{3000}'
            ])
        )
            .prop_map(|(i, c)| Mutation::Invisible(i, c)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn lines_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn apply(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    match m {
        Mutation::FlipByte(i, b) => {
            let i = i % bytes.len();
            bytes[i] = *b;
        }
        Mutation::DeleteLine(i) => {
            let mut lines = lines_of(&bytes);
            let i = i % lines.len();
            lines.remove(i);
            bytes = lines.concat();
        }
        Mutation::DuplicateLine(i) => {
            let mut lines = lines_of(&bytes);
            let i = i % lines.len();
            let line = lines[i].clone();
            lines.insert(i, line);
            bytes = lines.concat();
        }
        Mutation::SwapValues(a, b) => {
            let mut lines = lines_of(&bytes);
            let with_value: Vec<usize> = (0..lines.len())
                .filter(|&k| lines[k].contains(&b'=') && !lines[k].starts_with(b"#"))
                .collect();
            if with_value.len() >= 2 {
                let (a, b) = (
                    with_value[a % with_value.len()],
                    with_value[b % with_value.len()],
                );
                let split = |l: &[u8]| {
                    let eq = l.iter().position(|c| *c == b'=').unwrap();
                    (l[..=eq].to_vec(), l[eq + 1..].to_vec())
                };
                let (ka, va) = split(&lines[a]);
                let (kb, vb) = split(&lines[b]);
                lines[a] = [ka, vb].concat();
                lines[b] = [kb, va].concat();
            }
            bytes = lines.concat();
        }
        Mutation::HugeNumber(i, n) => {
            // The digits at or after position i become `n`.
            let start = (i % bytes.len()..bytes.len()).find(|&k| bytes[k].is_ascii_digit());
            if let Some(s) = start {
                let end = (s..bytes.len())
                    .find(|&k| !bytes[k].is_ascii_digit())
                    .unwrap_or(bytes.len());
                bytes.splice(s..end, n.bytes());
            }
        }
        Mutation::Invisible(i, c) => {
            let mut i = i % bytes.len();
            while i > 0 && (bytes[i] & 0xC0) == 0x80 {
                i -= 1;
            }
            let mut buf = [0u8; 4];
            bytes.splice(i..i, c.encode_utf8(&mut buf).bytes());
        }
        Mutation::Truncate(i) => bytes.truncate(i % bytes.len()),
    }
    bytes
}

/// Every problem is at `FILE:LINE:COL` inside its file, with a visible message.
fn check_located(problems: &[amr_gateway::diagnostic::Problem], text: &[u8], own_file: &str) {
    let lines = text.iter().filter(|b| **b == b'\n').count() + 1;
    assert!(!problems.is_empty(), "an error without any problem");
    for p in problems {
        let shown = p.to_string();
        assert!(
            shown.starts_with(&format!("{}:{}:{}: ", p.file, p.line, p.col)),
            "{shown}"
        );
        assert!(!p.file.is_empty() && p.line >= 1 && p.col >= 1, "{shown}");
        if p.file == own_file {
            assert!(p.line <= lines, "line {} of {lines}: {shown}", p.line);
        }
        assert!(!p.message.trim().is_empty(), "{shown}");
        assert!(
            !p.message.chars().any(amr_gateway::diagnostic::is_invisible),
            "an invisible character in: {shown:?}"
        );
        assert!(
            p.message.len() < 4096,
            "a message of {} bytes",
            p.message.len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configurations_never_panic_and_every_problem_is_located(
        base in 0usize..3,
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("amr.toml");
        let mut bytes = bases()[base].clone().into_bytes();
        for m in &mutations {
            bytes = apply(bytes, m);
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Err(errors) = config::load(&path) {
            check_located(&errors.0, &bytes, &path.display().to_string());
        }
    }

    #[test]
    fn mutated_model_files_never_panic_and_every_problem_is_located(
        base in 0usize..3,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = model_bases()[base].clone().into_bytes();
        for m in &mutations {
            bytes = apply(bytes, m);
        }
        // A model file that is not UTF-8 is refused before parsing; the rest is parsed.
        if let Ok(text) = String::from_utf8(bytes.clone())
            && let Err(errors) = ModelLibrary::parse_model(&text, "m.toml")
        {
            check_located(&errors, &bytes, "m.toml");
        }
    }
}

#[test]
fn a_configuration_that_is_not_utf8_is_one_located_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("amr.toml");
    std::fs::write(&path, b"[gateway]\nid = \"\xff\xfe\"\n").unwrap();
    let errors = config::load(&path).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert!(
        errors.0[0]
            .to_string()
            .starts_with(&format!("{}:1:1: ", path.display())),
        "{}",
        errors.0[0]
    );
}
