//! The embedded demo broker against real clients: `mosquitto_sub` as a child process and
//! rumqttc (directly and through the gateway's own uplink publisher).
#![cfg(feature = "embedded-broker")]

mod support;

use amr_gateway::broker::Broker;
use amr_gateway::broker::codec::{Connect, Packet, Will, encode};
use amr_gateway::config::{MqttConfig, StoreConfig};
use amr_gateway::store::{Batch, Message, open_shared, with_store};
use amr_gateway::uplink::contract::Topics;
use amr_gateway::uplink::{UplinkState, run};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, QoS};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use support::{Subscriber, free_port, seqs_on};
use tokio::sync::{Notify, watch};

const PATIENCE: Duration = Duration::from_secs(60);

async fn start_broker() -> (u16, watch::Sender<bool>) {
    let port = free_port();
    let broker = Broker::bind(([127, 0, 0, 1], port).into()).await.unwrap();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(broker.run(stop_rx));
    (port, stop)
}

/// `mosquitto_sub -v` as a child; its output lines arrive on a channel.
struct MosquittoSub {
    child: Child,
    lines: std_mpsc::Receiver<String>,
}

impl MosquittoSub {
    fn start(port: u16, filter: &str) -> MosquittoSub {
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                filter,
                "-v",
            ])
            .args(["-q", "1", "-k", "5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mosquitto_sub (apt-get install mosquitto-clients)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        MosquittoSub { child, lines }
    }

    /// Waits for the next line (blocking a blocking-pool thread, not a runtime worker).
    async fn next_line(&self) -> String {
        tokio::task::block_in_place(|| self.lines.recv_timeout(PATIENCE))
            .expect("mosquitto_sub printed nothing")
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rumqttc publisher whose event loop runs in the background.
async fn publisher(
    port: u16,
    id: &str,
    will: Option<LastWill>,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some(will) = will {
        options.set_last_will(will);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Outgoing(Outgoing::Disconnect) = event {
                // Let the DISCONNECT reach the socket before dropping it.
                let _ = eventloop.poll().await;
                return;
            }
        }
    });
    (client, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_receives_retained_live_and_will_messages() {
    let (port, _stop) = start_broker().await;
    let (client, _task) = publisher(port, "publisher-1", None).await;
    // A retained message first: mosquitto_sub printing it proves it is subscribed.
    client
        .publish(
            "amr/gw1/status",
            QoS::AtLeastOnce,
            true,
            r#"{"state":"online"}"#,
        )
        .await
        .unwrap();
    client
        .publish("other/topic", QoS::AtLeastOnce, true, "not for amr/#")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sub = MosquittoSub::start(port, "amr/#");
    assert_eq!(
        sub.next_line().await,
        r#"amr/gw1/status {"state":"online"}"#
    );

    for n in 1..=50 {
        let qos = if n % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        client
            .publish(
                format!("amr/gw1/reading/m{n}"),
                qos,
                false,
                format!("{{\"seq\":{n}}}"),
            )
            .await
            .unwrap();
    }
    for n in 1..=50 {
        assert_eq!(
            sub.next_line().await,
            format!("amr/gw1/reading/m{n} {{\"seq\":{n}}}")
        );
    }

    // A client that vanishes without DISCONNECT: its will is published.
    let will = LastWill::new(
        "amr/gw2/status",
        r#"{"state":"offline"}"#,
        QoS::AtLeastOnce,
        true,
    );
    let (doomed, doomed_task) = publisher(port, "gw2", Some(will)).await;
    doomed
        .publish(
            "amr/gw2/status",
            QoS::AtLeastOnce,
            true,
            r#"{"state":"online"}"#,
        )
        .await
        .unwrap();
    assert_eq!(
        sub.next_line().await,
        r#"amr/gw2/status {"state":"online"}"#
    );
    doomed_task.abort(); // drops the socket: no DISCONNECT
    assert_eq!(
        sub.next_line().await,
        r#"amr/gw2/status {"state":"offline"}"#
    );

    // A clean DISCONNECT publishes no will; an empty retained payload clears the retained one.
    let will = LastWill::new("amr/gw3/status", "will", QoS::AtLeastOnce, false);
    let (polite, polite_task) = publisher(port, "gw3", Some(will)).await;
    polite
        .publish("amr/gw3/x", QoS::AtLeastOnce, false, "hello")
        .await
        .unwrap();
    polite.disconnect().await.unwrap();
    polite_task.await.unwrap();
    assert_eq!(sub.next_line().await, "amr/gw3/x hello");
    client
        .publish("amr/gw1/status", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    assert_eq!(sub.next_line().await, "amr/gw1/status (null)"); // empty payload
    client
        .publish("amr/end", QoS::AtLeastOnce, false, "end")
        .await
        .unwrap();
    assert_eq!(
        sub.next_line().await,
        "amr/end end",
        "no will after a clean DISCONNECT"
    );

    // A new subscriber gets the retained gw2 offline status, but no cleared gw1 status.
    let late = MosquittoSub::start(port, "amr/+/status");
    assert_eq!(
        late.next_line().await,
        r#"amr/gw2/status {"state":"offline"}"#
    );
    client
        .publish("amr/gw9/status", QoS::AtLeastOnce, false, "live")
        .await
        .unwrap();
    assert_eq!(late.next_line().await, "amr/gw9/status live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_publishes_the_will() {
    let (port, _stop) = start_broker().await;
    let headend = Subscriber::start(port, "headend-ka", "amr/+/status").await;
    // A raw client: CONNECT with keep-alive 1 s and a will, then silence.
    let connect = Packet::Connect(Connect {
        protocol_level: 4,
        client_id: "g4".into(),
        clean_session: true,
        keep_alive_s: 1,
        will: Some(Will {
            topic: "amr/g4/status".into(),
            payload: bytes::Bytes::from_static(br#"{"state":"offline"}"#),
            qos: 1,
            retain: false,
        }),
        username: None,
        password: None,
    });
    let mut bytes = bytes::BytesMut::new();
    encode(&connect, &mut bytes);
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(&bytes).unwrap();
    let got = headend
        .wait_until(PATIENCE, |r| r.iter().any(|(t, _)| t == "amr/g4/status"))
        .await;
    assert!(got.is_some(), "no will after the keep-alive ran out");
    drop(raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_uplink_publishes_through_it() {
    let (port, _stop) = start_broker().await;
    let topics = Topics::new("amr", "demo");
    let headend = Subscriber::start(port, "headend-demo", "amr/demo/#").await;
    let dir = tempfile::tempdir().unwrap();
    let store_cfg = StoreConfig {
        history_days: 35,
        max_size_mb: 1024,
        commit_window_ms: 0,
    };
    let store = open_shared(&dir.path().join("amr.db"), &store_cfg).unwrap();
    let wake = Arc::new(Notify::new());
    let (state_tx, mut state) = watch::channel(UplinkState::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let cfg = MqttConfig {
        host: "127.0.0.1".into(),
        port,
        topic_prefix: "amr".into(),
        client_id: "amr-gateway-demo".into(),
        username: None,
        password_file: None,
        tls: false,
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        keep_alive_s: 30,
        reconnect_max_s: 4,
        max_inflight: 16,
        cert_expiry_warn_days: 30,
    };
    let task = tokio::spawn(run(
        cfg,
        topics.clone(),
        Arc::clone(&store),
        Arc::clone(&wake),
        state_tx,
        shutdown_rx.into(),
    ));
    let batch = Batch {
        readings: vec![],
        messages: (0..200)
            .map(|n| Message {
                topic: topics.reading("m1"),
                payload: serde_json::json!({"meter": "m1", "n": n}).into(),
                qos: 1,
                retain: false,
                sequenced: true,
            })
            .collect(),
        ..Default::default()
    };
    with_store(&store, move |s| s.commit(&batch)).await.unwrap();
    wake.notify_one();
    let received = headend
        .wait_until(PATIENCE, |r| seqs_on(r, "/reading/").len() >= 200)
        .await
        .expect("readings did not arrive");
    assert_eq!(
        seqs_on(&received, "/reading/"),
        (1..=200).collect::<Vec<u64>>()
    );
    state
        .wait_for(|s| s.acked == 200 && s.backlog == 0)
        .await
        .unwrap();
    shutdown.send(true).unwrap();
    task.await.unwrap();
    let offline = headend
        .wait_until(PATIENCE, |r| {
            r.last()
                .is_some_and(|(t, j)| t == "amr/demo/status" && j["state"] == "offline")
        })
        .await;
    assert!(offline.is_some(), "no offline status after shutdown");
}
