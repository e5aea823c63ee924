//! TLS and mutual TLS to a real mosquitto, with a CA this test makes with `openssl`: the
//! uplink publishes over TLS, over mTLS to a listener that requires a client certificate, and
//! refuses (with one sentence naming the file or the broker, then backoff) a broker whose
//! certificate another CA signed, a listener that wants a client certificate it lacks, a plain
//! client on the TLS port and a TLS client on a plain port.

mod support;

use amr_gateway::config::{MqttConfig, StoreConfig};
use amr_gateway::store::{Batch, Message, open_shared, with_store};
use amr_gateway::uplink::contract::Topics;
use amr_gateway::uplink::{UplinkState, run};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Subscriber, free_port, seqs_on, wait_for_listener};
use tokio::sync::{Notify, watch};

/// Upper bound for waiting on a slow machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 / localhost, a client certificate, and a second
/// CA that signed nothing here.
fn make_pki(dir: &Path) {
    let ca = |name: &str| {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        )
    };
    ca("ca");
    ca("other-ca");
    let leaf = |name: &str, ext: &str| {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    };
    leaf(
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    );
    leaf("gateway", "extendedKeyUsage=clientAuth\n");
    // mosquitto drops to its own user when started as root: it must read its key.
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644));
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
}

/// mosquitto with three listeners: plain (for the test's subscriber), TLS, and TLS that
/// requires a client certificate signed by the CA.
struct TlsBroker {
    plain: u16,
    tls: u16,
    mtls: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl TlsBroker {
    fn start() -> TlsBroker {
        let dir = tempfile::tempdir().unwrap();
        make_pki(dir.path());
        let (plain, tls, mtls) = (free_port(), free_port(), free_port());
        let d = dir.path().display();
        let conf = format!(
            "allow_anonymous true\nlog_dest stderr\nlog_type error\npersistence false\n\
             listener {plain} 127.0.0.1\n\
             listener {tls} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n\
             listener {mtls} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n\
             require_certificate true\n"
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        for port in [plain, tls, mtls] {
            wait_for_listener(port, PATIENCE);
        }
        TlsBroker {
            plain,
            tls,
            mtls,
            dir,
            child,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mqtt(port: u16, tls: bool) -> MqttConfig {
    MqttConfig {
        host: "127.0.0.1".into(),
        port,
        topic_prefix: "amr".into(),
        client_id: format!("amr-gateway-tls-{port}"),
        username: None,
        password_file: None,
        tls,
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        keep_alive_s: 30,
        reconnect_max_s: 2,
        max_inflight: 16,
        cert_expiry_warn_days: 30,
    }
}

/// Log lines of the code under test, captured (the test runs on one thread).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Runs the uplink with `cfg` and three readings in its outbox until `done(state, log)`;
/// returns the log. Panics after [`PATIENCE`].
async fn run_uplink(cfg: MqttConfig, done: impl Fn(&UplinkState, &str) -> bool) -> String {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let store = open_shared(
        &dir.path().join("amr.db"),
        &StoreConfig {
            history_days: 35,
            max_size_mb: 1024,
        },
    )
    .unwrap();
    let topics = Topics::new("amr", "gw1");
    let batch = Batch {
        messages: (0..3)
            .map(|n| Message {
                topic: topics.reading("m1"),
                payload: serde_json::json!({"meter": "m1", "n": n}),
                qos: 1,
                retain: false,
                sequenced: true,
            })
            .collect(),
        ..Default::default()
    };
    with_store(&store, move |s| s.commit(&batch)).await.unwrap();
    let (state_tx, mut state) = watch::channel(UplinkState::default());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(
        cfg,
        topics,
        store,
        Arc::new(Notify::new()),
        state_tx,
        stop_rx.into(),
    ));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if done(&state.borrow(), &log.text()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not done; log:\n{}",
            log.text()
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), state.changed()).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    log.text()
}

#[tokio::test]
async fn tls_and_mtls_deliver_and_every_tls_mistake_is_one_clear_error() {
    let broker = TlsBroker::start();
    let headend = Subscriber::start(broker.plain, "headend-tls", "amr/gw1/#").await;

    // TLS with the site's CA.
    let mut cfg = mqtt(broker.tls, true);
    cfg.ca_file = Some(broker.file("ca.crt"));
    run_uplink(cfg.clone(), |s, _| s.acked == 3).await;
    let received = headend
        .wait_until(PATIENCE, |r| seqs_on(r, "/reading/").len() >= 3)
        .await
        .expect("readings over TLS");
    assert_eq!(seqs_on(&received, "/reading/"), vec![1, 2, 3]);

    // Mutual TLS: the listener requires a client certificate.
    let mut mtls = mqtt(broker.mtls, true);
    mtls.ca_file = Some(broker.file("ca.crt"));
    mtls.client_cert_file = Some(broker.file("gateway.crt"));
    mtls.client_key_file = Some(broker.file("gateway.key"));
    run_uplink(mtls.clone(), |s, _| s.acked == 3).await;

    // The same listener without a client certificate: refused, the log says so.
    let mut no_cert = mtls.clone();
    no_cert.client_cert_file = None;
    no_cert.client_key_file = None;
    let log = run_uplink(no_cert, |_, log| log.contains("MQTT broker")).await;
    assert!(log.contains(&format!("127.0.0.1:{}", broker.mtls)), "{log}");
    assert!(
        log.contains("client certificate") || log.contains("client_cert_file"),
        "{log}"
    );

    // A broker certificate signed by another CA: refused, naming the CA file.
    let mut wrong_ca = cfg.clone();
    wrong_ca.ca_file = Some(broker.file("other-ca.crt"));
    let log = run_uplink(wrong_ca, |_, log| log.contains("MQTT broker")).await;
    assert!(
        log.contains("is not signed by a CA in [mqtt] ca_file"),
        "{log}"
    );
    assert!(log.contains("other-ca.crt"), "{log}");
    assert!(log.contains("retrying with backoff"), "{log}");

    // A missing CA file: named.
    let mut missing = cfg.clone();
    missing.ca_file = Some(broker.file("nope.crt"));
    let log = run_uplink(missing, |_, log| log.contains("MQTT broker")).await;
    assert!(log.contains("cannot read [mqtt] ca_file"), "{log}");
    assert!(log.contains("nope.crt"), "{log}");

    // A plain client on the TLS port.
    let log = run_uplink(mqtt(broker.tls, false), |_, log| {
        log.contains("MQTT broker")
    })
    .await;
    assert!(log.contains("set [mqtt] tls = true"), "{log}");

    // A TLS client on the plain port.
    let mut tls_on_plain = cfg.clone();
    tls_on_plain.port = broker.plain;
    let log = run_uplink(tls_on_plain, |_, log| log.contains("MQTT broker")).await;
    assert!(
        log.contains("does not speak TLS on this port") || log.contains("a TLS listener?"),
        "{log}"
    );
}

/// The whole link over mutual TLS: a real gateway process reading a simulated meter, and the
/// headend's `command` tool, both with client certificates, through the listener that
/// requires them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_and_the_command_tool_over_mutual_tls() {
    let broker = TlsBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let sims = support::SimRuntime::new();
    let _sim = sims.start(
        "[[bus]]\nname = \"rs485\"\nlink = \"ttyRS485\"\nbaud = 19200\n\n[[meter]]\nbus = \"rs485\"\n\
         unit = 1\nmodel = \"eastron-sdm120\"\nload_kw = 1.0\nenergy_start_kwh = 10.0\n",
        "tls-sim",
        dir.path(),
    );
    let exe = env!("CARGO_BIN_EXE_amr-gateway");
    let key = dir.path().join("ops.key");
    assert!(
        Command::new(exe)
            .args(["keygen", "--out"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    let f = |n: &str| broker.file(n).display().to_string();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw1\"\ndata_dir = \"data\"\n\n[mqtt]\nhost = \"127.0.0.1\"\n\
             port = {}\ntls = true\nca_file = \"{}\"\nclient_cert_file = \"{}\"\n\
             client_key_file = \"{}\"\n\n[[bus]]\nname = \"rs485\"\nprotocol = \"modbus-rtu\"\n\
             device = \"ttyRS485\"\nbaud = 19200\npoll_interval_s = 2\n\n[[meter]]\nid = \"m1\"\n\
             bus = \"rs485\"\nunit = 1\nmodel = \"eastron-sdm120\"\n\n[[command_key]]\n\
             id = \"ops\"\npublic_key_file = \"ops.key.pub\"\nallow = [\"ping\", \"read\"]\n",
            broker.mtls,
            f("ca.crt"),
            f("gateway.crt"),
            f("gateway.key")
        ),
    )
    .unwrap();
    let headend = Subscriber::start(broker.plain, "headend-mtls", "amr/gw1/#").await;
    let _gw = support::Gateway::start(&config, "gateway.log");
    headend
        .wait_until(PATIENCE, |r| !seqs_on(r, "/reading/m1").is_empty())
        .await
        .unwrap_or_else(|| {
            panic!(
                "no reading over mTLS\n{}",
                support::log_tail(dir.path(), 20)
            )
        });
    let port = broker.mtls.to_string();
    let out = Command::new(exe)
        .args(["command", "--host", "127.0.0.1", "--port", &port, "--tls"])
        .args([
            "--ca-file",
            &f("ca.crt"),
            "--client-cert-file",
            &f("gateway.crt"),
        ])
        .args([
            "--client-key-file",
            &f("gateway.key"),
            "--gateway",
            "gw1",
            "--key",
        ])
        .arg(&key)
        .args(["--key-id", "ops", "--json", "read", "--arg", "meters=all"])
        .output()
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            support::log_tail(dir.path(), 20)
        )
    });
    assert!(out.status.success(), "{result}");
    assert_eq!(result["data"]["meters"][0]["meter"], "m1");
    assert!(
        result["data"]["meters"][0]["values"]["energy_import_kwh"]
            .as_f64()
            .unwrap()
            >= 10.0
    );
}
