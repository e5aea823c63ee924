//! The outbox publisher against a real mosquitto: order, completeness, and no gap across a
//! broker SIGKILL and restart.

mod support;

use amr_gateway::config::{MqttConfig, StoreConfig};
use amr_gateway::store::{Batch, Message, SharedStore, open_shared, with_store};
use amr_gateway::uplink::contract::Topics;
use amr_gateway::uplink::{UplinkState, run};
use std::sync::Arc;
use std::time::Duration;
use support::{Mosquitto, Subscriber, seqs_on};
use tokio::sync::{Notify, watch};

/// Upper bound for waiting on a slow machine.
const PATIENCE: Duration = Duration::from_secs(120);

fn mqtt_config(port: u16) -> MqttConfig {
    MqttConfig {
        host: "127.0.0.1".into(),
        port,
        topic_prefix: "amr".into(),
        client_id: "amr-gateway-gw1".into(),
        username: None,
        password_file: None,
        tls: false,
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        keep_alive_s: 30,
        reconnect_max_s: 4,
        max_inflight: 64,
        cert_expiry_warn_days: 30,
    }
}

fn reading_batch(topics: &Topics, first: u64, count: u64) -> Batch {
    Batch {
        readings: vec![],
        messages: (first..first + count)
            .map(|n| Message {
                topic: topics.reading(&format!("m{}", n % 7)),
                payload: serde_json::json!({"meter": format!("m{}", n % 7), "n": n}).into(),
                qos: 1,
                retain: false,
                sequenced: true,
            })
            .collect(),
        ..Default::default()
    }
}

struct Uplink {
    store: SharedStore,
    wake: Arc<Notify>,
    state: watch::Receiver<UplinkState>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn start_uplink(port: u16, topics: &Topics) -> Uplink {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        history_days: 35,
        max_size_mb: 1024,
        commit_window_ms: 0,
    };
    let store = open_shared(&dir.path().join("amr.db"), &cfg).unwrap();
    let wake = Arc::new(Notify::new());
    let (state_tx, state) = watch::channel(UplinkState::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(run(
        mqtt_config(port),
        topics.clone(),
        Arc::clone(&store),
        Arc::clone(&wake),
        state_tx,
        shutdown_rx.into(),
    ));
    Uplink {
        store,
        wake,
        state,
        shutdown,
        task,
        _dir: dir,
    }
}

impl Uplink {
    async fn commit(&self, batch: Batch) {
        with_store(&self.store, move |s| s.commit(&batch))
            .await
            .unwrap();
        self.wake.notify_one();
    }

    async fn wait_outbox_empty(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (count, _) = with_store(&self.store, |s| s.backlog()).await.unwrap();
            if count == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "outbox still holds {count} rows"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("uplink did not stop")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_every_message_in_order_with_status() {
    let broker = Mosquitto::start();
    let topics = Topics::new("amr", "gw1");
    let headend = Subscriber::start(broker.port, "headend-order", "amr/gw1/#").await;
    let uplink = start_uplink(broker.port, &topics);
    for first in (1..=500).step_by(10) {
        uplink.commit(reading_batch(&topics, first, 10)).await;
    }
    let received = headend
        .wait_until(PATIENCE, |r| seqs_on(r, "/reading/").len() >= 500)
        .await
        .expect("not all 500 readings arrived");
    assert_eq!(
        seqs_on(&received, "/reading/"),
        (1..=500).collect::<Vec<u64>>()
    );
    let status: Vec<&str> = received
        .iter()
        .filter(|(t, _)| t == "amr/gw1/status")
        .filter_map(|(_, j)| j["state"].as_str())
        .collect();
    assert_eq!(status.first(), Some(&"online"));
    uplink.wait_outbox_empty().await;

    let mut state = uplink.state.clone();
    state
        .wait_for(|s| s.acked == 500 && s.backlog == 0)
        .await
        .unwrap();
    assert!(state.borrow().connected);
    assert_eq!(state.borrow().oldest_backlog_ms, None);

    uplink.stop().await;
    let received = headend
        .wait_until(PATIENCE, |r| {
            r.last()
                .is_some_and(|(t, j)| t == "amr/gw1/status" && j["state"] == "offline")
        })
        .await;
    assert!(received.is_some(), "no offline status after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_across_a_broker_sigkill_and_restart() {
    let mut broker = Mosquitto::start_persistent();
    let topics = Topics::new("amr", "gw1");
    let headend = Subscriber::start(broker.port, "headend-restart", "amr/gw1/reading/#").await;
    // Make sure the broker has saved the headend's subscription before it gets killed.
    broker.wait_saved(std::time::SystemTime::now());
    let uplink = start_uplink(broker.port, &topics);

    const TOTAL: u64 = 1000;
    let mut next = 1;
    while next <= 300 {
        uplink.commit(reading_batch(&topics, next, 5)).await;
        next += 5;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.kill();
    // Keep committing while the broker is down...
    while next <= 700 {
        uplink.commit(reading_batch(&topics, next, 5)).await;
        next += 5;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut state = uplink.state.clone();
    state.wait_for(|s| !s.connected).await.unwrap();
    broker.restart();
    // ...and after it is back.
    while next <= TOTAL {
        uplink.commit(reading_batch(&topics, next, 5)).await;
        next += 5;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let received = headend
        .wait_until(PATIENCE, |r| {
            let mut seen = seqs_on(r, "/reading/");
            seen.sort_unstable();
            seen.dedup();
            seen.len() as u64 >= TOTAL
        })
        .await;
    let received = received.unwrap_or_else(|| headend.received());
    let arrived = seqs_on(&received, "/reading/");
    let mut unique = arrived.clone();
    unique.sort_unstable();
    unique.dedup();
    let missing: Vec<u64> = (1..=TOTAL)
        .filter(|s| unique.binary_search(s).is_err())
        .collect();
    assert!(missing.is_empty(), "missing seqs: {missing:?}");
    // Duplicates are allowed (re-sent after the reconnect), but each seq first arrives in order.
    let mut first_seen = Vec::new();
    for s in &arrived {
        if !first_seen.contains(s) {
            first_seen.push(*s);
        }
    }
    assert!(first_seen.windows(2).all(|w| w[0] < w[1]));
    uplink.wait_outbox_empty().await;
    println!(
        "{} deliveries for {TOTAL} seqs ({} duplicates)",
        arrived.len(),
        arrived.len() as u64 - TOTAL
    );
    uplink.stop().await;
}
