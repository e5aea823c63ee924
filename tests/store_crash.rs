//! The store after a real SIGKILL: a child process (this test binary, re-executed) commits
//! batches in a loop and reports each committed seq; the parent kills it mid-run and checks
//! that the file is sound and that every reported seq is in the outbox.

use amr_gateway::config::StoreConfig;
use amr_gateway::model::Reading;
use amr_gateway::store::{Batch, Message, Store};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// Set in the child's environment: the database it writes to.
const WRITER_ENV: &str = "AMR_STORE_CRASH_WRITER_DB";

fn cfg() -> StoreConfig {
    StoreConfig {
        history_days: 35,
        max_size_mb: 1024,
        commit_window_ms: 0,
    }
}

fn batch(n: u64) -> Batch {
    let readings = (0..10)
        .map(|m| Reading {
            meter: format!("m{m}"),
            ts_ms: n as i64 * 1000,
            values: [("energy_import_kwh".to_string(), n as f64)].into(),
        })
        .collect();
    let messages = (0..10)
        .map(|m| Message {
            topic: format!("amr/gw/reading/m{m}"),
            payload: serde_json::json!({"meter": format!("m{m}"), "batch": n}).into(),
            qos: 1,
            retain: false,
            sequenced: true,
        })
        .collect();
    Batch {
        readings,
        messages,
        ..Default::default()
    }
}

/// The child: does nothing unless re-executed by `sigkill_loses_nothing_committed`.
#[test]
fn crash_writer_child() {
    let Ok(db) = std::env::var(WRITER_ENV) else {
        return;
    };
    let mut store = Store::open(db.as_ref(), &cfg()).unwrap();
    let mut out = std::io::stdout().lock();
    for n in 0.. {
        let report = store.commit(&batch(n)).unwrap();
        let (_, last) = report.seq_range.unwrap();
        writeln!(out, "committed {last}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("amr.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut reported = Vec::new();
    // Let it commit a few hundred batches, then kill it wherever it is.
    while reported.len() < 300 {
        let line = lines.next().expect("writer exited early").unwrap();
        if let Some(seq) = line.strip_prefix("committed ") {
            reported.push(seq.parse::<u64>().unwrap());
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Whatever it printed before dying was committed too.
    for line in lines.map_while(Result::ok) {
        if let Some(seq) = line.strip_prefix("committed ") {
            reported.push(seq.parse::<u64>().unwrap());
        }
    }

    let store = Store::open(&db, &cfg()).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let seqs: Vec<u64> = store
        .pending(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|row| {
            let v: serde_json::Value = serde_json::from_slice(&row.payload).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect();
    // Contiguous from 1, no duplicates: whole batches only.
    assert!(seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1));
    assert_eq!(seqs.len() % 10, 0);
    let last_reported = *reported.last().unwrap();
    assert!(
        seqs.len() as u64 >= last_reported,
        "{} < {last_reported}",
        seqs.len()
    );
    assert_eq!(store.last_seq().unwrap(), seqs.len() as u64);
    let history_rows = store.history("m0", i64::MIN, i64::MAX).unwrap().len();
    assert_eq!(history_rows * 10, seqs.len(), "history and outbox differ");
    println!(
        "killed after {} reported batches; {} batches on disk",
        reported.len(),
        seqs.len() / 10
    );
}
