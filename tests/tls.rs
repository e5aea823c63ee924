//! TLS and mutual TLS to a real mosquitto, with a CA this test makes with `openssl`: the
//! uplink publishes over TLS, over mTLS to a listener that requires a client certificate, and
//! refuses (with one sentence naming the file or the broker, then backoff) a broker whose
//! certificate another CA signed, a listener that wants a client certificate it lacks, a plain
//! client on the TLS port and a TLS client on a plain port.
//!
//! Certificates that run out: an expired client certificate is one error naming the file and
//! its date (then backoff), and a gateway process raises `certificate_expiry` (on the broker,
//! with the days left) for a certificate that expires soon, clears it once a renewed one is
//! in place and SIGHUP reloads, and raises it for an expired one while the link is refused.

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

/// A client certificate for `name` signed by the test's CA (`make_pki` ran in `dir`), valid
/// for `days` days from now.
fn client_cert_for_days(dir: &Path, name: &str, days: u32) {
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
            &days.to_string(),
            "-extfile",
            "gateway.ext",
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// A client certificate `name` signed by the test's CA that was valid from 2020-01-01 to
/// 2020-01-02 (OpenSSL 3.0's `x509` has no `-not_after`: `openssl ca` sets both dates).
fn expired_client_cert(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir.join("ca-db")).unwrap();
    std::fs::write(dir.join("ca-db/index.txt"), "").unwrap();
    std::fs::write(dir.join("ca-db/serial"), "1000\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = c\n[c]\ndatabase = ca-db/index.txt\nnew_certs_dir = ca-db\n\
         serial = ca-db/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n\
         [p]\ncommonName = supplied\n",
    )
    .unwrap();
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
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.crt",
            "-keyfile",
            "ca.key",
            "-extfile",
            "gateway.ext",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-in",
            &format!("{name}.csr"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
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
            commit_window_ms: 0,
        },
    )
    .unwrap();
    let topics = Topics::new("amr", "gw1");
    let batch = Batch {
        messages: (0..3)
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

/// An expired client certificate against a listener that requires one: one error naming the
/// file and the date it expired, then backoff as for any outage.
#[tokio::test]
async fn an_expired_client_certificate_is_named_with_its_date() {
    let broker = TlsBroker::start();
    expired_client_cert(broker.dir.path(), "expired");
    let mut cfg = mqtt(broker.mtls, true);
    cfg.ca_file = Some(broker.file("ca.crt"));
    cfg.client_cert_file = Some(broker.file("expired.crt"));
    cfg.client_key_file = Some(broker.file("expired.key"));
    let log = run_uplink(cfg, |_, log| log.contains("MQTT broker")).await;
    let named = format!(
        "client certificate {} (CN=expired) expired on 2020-01-02 00:00:00 UTC",
        broker.file("expired.crt").display()
    );
    assert!(log.contains(&named), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{}", broker.mtls)), "{log}");
    assert!(log.contains("retrying with backoff"), "{log}");
    assert_eq!(
        log.matches(&named).count(),
        1,
        "one error per outage: {log}"
    );
}

/// Sends `sig` to a child process.
fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// A gateway process over mTLS: a client certificate that expires in 10 days raises
/// `certificate_expiry` on `{prefix}/{gateway}/alarm/...` with the days left; a renewed one
/// put in place and SIGHUP clear it; an expired one (the broker refuses the link) raises it
/// again, which `status --json` shows from the store, and the log names the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_is_raised_cleared_on_renewal_and_raised_for_an_expired_one() {
    let broker = TlsBroker::start();
    let pki = broker.dir.path();
    client_cert_for_days(pki, "soon", 10);
    expired_client_cert(pki, "old");
    let dir = tempfile::tempdir().unwrap();
    let sims = support::SimRuntime::new();
    let _sim = sims.start(
        "[[bus]]\nname = \"rs485\"\nlink = \"ttyRS485\"\nbaud = 19200\n\n[[meter]]\nbus = \"rs485\"\n\
         unit = 1\nmodel = \"eastron-sdm120\"\nload_kw = 1.0\nenergy_start_kwh = 10.0\n",
        "cert-sim",
        dir.path(),
    );
    // The gateway's certificate and key as the site keeps them: replaced in place on renewal.
    let (cert, key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    let install = |name: &str| {
        std::fs::copy(pki.join(format!("{name}.crt")), &cert).unwrap();
        std::fs::copy(pki.join(format!("{name}.key")), &key).unwrap();
    };
    install("soon");
    let config = dir.path().join("gateway.toml");
    // 20 days: the test CA (30 days) is fine, the 10-day certificate is not.
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw1\"\ndata_dir = \"data\"\n\n[mqtt]\nhost = \"127.0.0.1\"\n\
             port = {}\ntls = true\nca_file = \"{}\"\nclient_cert_file = \"client.crt\"\n\
             client_key_file = \"client.key\"\ncert_expiry_warn_days = 20\n\n[[bus]]\n\
             name = \"rs485\"\nprotocol = \"modbus-rtu\"\ndevice = \"ttyRS485\"\nbaud = 19200\n\
             poll_interval_s = 2\n\n[[meter]]\nid = \"m1\"\nbus = \"rs485\"\nunit = 1\n\
             model = \"eastron-sdm120\"\n",
            broker.mtls,
            broker.file("ca.crt").display(),
        ),
    )
    .unwrap();
    let headend = Subscriber::start(broker.plain, "headend-cert", "amr/gw1/#").await;
    let exe = env!("CARGO_BIN_EXE_amr-gateway");
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut child = Command::new(exe)
        .args(["run", "--config"])
        .arg(&config)
        .env("AMR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let topic = "amr/gw1/alarm/certificate_expiry/client_cert_file";
    let event = |state: &'static str| {
        move |r: &[support::Received]| r.iter().any(|m| m.0 == topic && m.1["state"] == state)
    };
    let received = headend.wait_until(PATIENCE, event("raised")).await;
    let Some(received) = received else {
        let _ = child.kill();
        panic!(
            "no certificate_expiry\n{}",
            support::log_tail(dir.path(), 30)
        );
    };
    let raised = &received
        .iter()
        .find(|m| m.0 == topic && m.1["state"] == "raised")
        .unwrap()
        .1;
    // The details are fields of the alarm's payload.
    let details = raised;
    assert_eq!(details["days_left"], 10, "{raised}");
    assert_eq!(raised["value"].as_f64(), Some(10.0), "{raised}");
    assert_eq!(details["file"], cert.display().to_string(), "{raised}");
    assert_eq!(details["certificate"], "CN=soon", "{raised}");
    assert!(details["not_after"].as_str().is_some(), "{raised}");
    // The CA (30 days) is not within the 20 days.
    assert!(
        !received.iter().any(
            |m| m.0.starts_with("amr/gw1/alarm/certificate_expiry/ca_file")
                && m.1["state"] == "raised"
        ),
        "{received:?}"
    );
    // Renewed (30 days) in place; SIGHUP reloads, the start check clears the alarm.
    install("gateway");
    signal(&child, libc::SIGHUP);
    if headend
        .wait_until(PATIENCE, event("cleared"))
        .await
        .is_none()
    {
        let _ = child.kill();
        panic!("not cleared\n{}", support::log_tail(dir.path(), 30));
    }
    // Expired: the broker refuses the link; the alarm stands in the store, the log names it.
    install("old");
    signal(&child, libc::SIGHUP);
    let status = || {
        let out = Command::new(exe)
            .args(["status", "--json", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    let alarm = loop {
        let st = status();
        let found = st["alarms"].as_array().and_then(|a| {
            a.iter()
                .find(|a| a["kind"] == "certificate_expiry" && a["subject"] == "client_cert_file")
                .cloned()
        });
        let logged = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
        if let Some(found) = found
            && logged.contains("expired on 2020-01-02")
        {
            break (found, logged);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{st}\n{}", support::log_tail(dir.path(), 30));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (alarm, logged) = alarm;
    assert!(alarm["days_left"].as_i64().unwrap() < -300, "{alarm}");
    assert!(
        logged.contains(&format!(
            "client certificate {} (CN=old) expired on 2020-01-02 00:00:00 UTC",
            cert.display()
        )),
        "{logged}"
    );
    signal(&child, libc::SIGTERM);
    let _ = child.wait();
}
