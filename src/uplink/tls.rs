//! TLS to the broker: the rustls client configuration built from `[mqtt]` (`ca_file` or the
//! system's roots, `client_cert_file` / `client_key_file` for mutual TLS), and the sentence a
//! field engineer reads when a handshake fails (which file, which broker, what to do).
//!
//! The crypto provider is rustls' `ring` (no C build, smaller binary than aws-lc). Without a
//! `ca_file` the roots are the operating system's (`rustls-native-certs`: on Debian
//! `/etc/ssl/certs`, updated with the `ca-certificates` package, not frozen into the binary).
//! The broker's certificate must name the configured `host` (DNS name or IP address).
//!
//! Files are read at every connection attempt, so a replaced certificate is picked up at the
//! next reconnect without a restart.
//!
//! It also owns when the certificates run out: [`certificate_validity`] walks a certificate's
//! DER to its subject and `notAfter` (a few dozen lines instead of an X.509 crate), and
//! [`expiry_checks`] tells the gateway, for `client_cert_file` and `ca_file`, whether the
//! `certificate_expiry` alarm should stand (`cert_expiry_warn_days` before `notAfter`).

use crate::clock::rfc3339_ms;
use crate::uplink::MqttSettings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

/// True for a broker on this machine (`localhost`, 127.0.0.0/8, `::1`): TLS is the default
/// for every other host.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The rustls client configuration for `cfg`, or one sentence naming the file at fault.
pub fn client_config(cfg: &MqttSettings) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(file) => {
            let certs = read_certs(file, "ca_file")?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    format!(
                        "[mqtt] ca_file {}: not a usable CA certificate: {e}",
                        file.display()
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "[mqtt] tls = true without ca_file, and no system root certificates were \
                     found ({}); install the ca-certificates package or set ca_file",
                    found
                        .errors
                        .first()
                        .map_or("none in the system store".to_string(), |e| e.to_string())
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let config = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = read_certs(cert_file, "client_cert_file")?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                format!(
                    "[mqtt] client_key_file {}: no PEM private key in it ({e})",
                    key_file.display()
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "[mqtt] client_cert_file {} / client_key_file {}: {e} (do the certificate \
                     and the key belong together?)",
                    cert_file.display(),
                    key_file.display()
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_certs(file: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    std::fs::metadata(file)
        .map_err(|e| format!("cannot read [mqtt] {key} {}: {e}", file.display()))?;
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "[mqtt] {key} {}: not PEM certificates ({e})",
                file.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "[mqtt] {key} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            file.display()
        ));
    }
    Ok(certs)
}

/// What to tell a field engineer about a failed connection: the error, and for a TLS failure
/// (or a plain client talking to a TLS port) what is wrong and which key or file to look at.
pub fn explain(cfg: &MqttSettings, error: &rumqttc::ConnectionError) -> String {
    let broker = format!("broker {}:{}", cfg.host, cfg.port);
    let ca = cfg.ca_file.as_ref().map_or_else(
        || "the system root certificates".to_string(),
        |f| format!("[mqtt] ca_file {}", f.display()),
    );
    let cert = cfg.client_cert_file.as_ref().map_or_else(
        || "no client certificate is configured (client_cert_file)".to_string(),
        |f| format!("check [mqtt] client_cert_file {}", f.display()),
    );
    // An expired certificate of ours: the handshake fails in one of several ways (an alert,
    // a reset, a refused chain); the file and its date are what the field engineer needs.
    // (Not for a broker that is down: a refused TCP connection says nothing of certificates.)
    if cfg.tls
        && (rustls_error(error).is_some()
            || cut_off(error)
            || matches!(error, rumqttc::ConnectionError::Tls(_)))
        && let Some(sentence) = expired_sentence(cfg, crate::clock::now_ms())
    {
        return format!("TLS with {broker} failed ({error}): {sentence}");
    }
    let Some(tls) = rustls_error(error) else {
        if !cfg.tls && has_io_error(error) {
            return format!(
                "{error} (a plain MQTT client: if {broker} expects TLS on this port, set \
                 [mqtt] tls = true)"
            );
        }
        if cfg.tls && matches!(error, rumqttc::ConnectionError::Tls(_)) {
            return format!(
                "TLS handshake with {broker} failed ({error}); is port {} a TLS listener? \
                 A plain MQTT port closes a TLS handshake: point [mqtt] port at the broker's \
                 TLS listener",
                cfg.port
            );
        }
        return error.to_string();
    };
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match tls {
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("TLS: the certificate of {broker} has expired")
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => format!(
            "TLS: the certificate of {broker} is not valid yet (is this gateway's clock right?)"
        ),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "TLS: the certificate of {broker} does not name `{}`; set [mqtt] host to a name \
             the certificate carries",
            cfg.host
        ),
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            format!("TLS: the certificate of {broker} is not signed by a CA in {ca}")
        }
        E::InvalidCertificate(other) => {
            format!("TLS: the certificate of {broker} was refused ({other:?}); CA: {ca}")
        }
        E::AlertReceived(
            alert @ (A::CertificateRequired
            | A::BadCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::HandshakeFailure),
        ) => format!("TLS: {broker} refused this gateway's client certificate ({alert:?}); {cert}"),
        E::InvalidMessage(_) => format!(
            "TLS: {broker} does not speak TLS on this port ({tls}); point [mqtt] port at its \
             TLS listener, or set tls = false for a plain listener"
        ),
        other => format!("TLS with {broker}: {other}"),
    }
}

/// True when an I/O failure (a reset, an early end) is inside the error.
fn has_io_error(error: &rumqttc::ConnectionError) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.is::<std::io::Error>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// True when the broker cut the connection (a reset, an early end): what a refused client
/// certificate looks like after a TLS 1.3 handshake.
fn cut_off(error: &rumqttc::ConnectionError) -> bool {
    use std::io::ErrorKind as K;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe
            )
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// The rustls error inside a connection error, where there is one: tokio-rustls wraps it in
/// an I/O error, which rumqttc may wrap again (a failed read of a packet).
fn rustls_error(error: &rumqttc::ConnectionError) -> Option<&rustls::Error> {
    let mut current: &(dyn std::error::Error + 'static) = error;
    for _ in 0..8 {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
        current = inner?;
    }
    None
}

/// What [`certificate_validity`] finds in a certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct Validity {
    /// The subject, as `CN=…, O=…` (the usual attributes; others left out).
    pub subject: String,
    /// `notAfter`, in ms since the epoch.
    pub not_after_ms: i64,
}

const DAY_MS: i64 = 86_400_000;

/// The subject and `notAfter` of one DER certificate, or what is wrong with it.
///
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity SEQUENCE { notBefore, notAfter }, subject, … }, … }`.
pub fn certificate_validity(der: &[u8]) -> Result<Validity, String> {
    let (cert, _) = Tlv::read(der).ok_or("not DER")?;
    if cert.tag != 0x30 {
        return Err("not a certificate (no outer SEQUENCE)".into());
    }
    let (tbs, _) = Tlv::read(cert.value).ok_or("truncated tbsCertificate")?;
    if tbs.tag != 0x30 {
        return Err("not a certificate (no tbsCertificate)".into());
    }
    let mut fields = Vec::new();
    let mut rest = tbs.value;
    while !rest.is_empty() && fields.len() < 6 {
        let (field, after) = Tlv::read(rest).ok_or("truncated tbsCertificate field")?;
        fields.push(field);
        rest = after;
    }
    // Without the explicit [0] version (a v1 certificate) everything moves up by one.
    let skip = usize::from(fields.first().is_some_and(|f| f.tag == 0xa0));
    let validity = fields.get(skip + 3).ok_or("no validity")?;
    let subject = fields.get(skip + 4).ok_or("no subject")?;
    if validity.tag != 0x30 || subject.tag != 0x30 {
        return Err("unexpected validity or subject".into());
    }
    let (_not_before, after) = Tlv::read(validity.value).ok_or("no notBefore")?;
    let (not_after, _) = Tlv::read(after).ok_or("no notAfter")?;
    Ok(Validity {
        subject: name_text(subject.value),
        not_after_ms: der_time_ms(&not_after)
            .ok_or("notAfter is not a UTCTime or GeneralizedTime")?,
    })
}

/// The certificates of a PEM file, each with its validity; the earliest `notAfter` first.
fn file_validity(file: &Path, key: &str) -> Result<Validity, String> {
    let certs = read_certs(file, key)?;
    let mut found = Vec::new();
    for cert in &certs {
        found.push(certificate_validity(cert.as_ref()).map_err(|e| {
            format!(
                "[mqtt] {key} {}: unreadable certificate ({e})",
                file.display()
            )
        })?);
    }
    found.sort_by_key(|v| v.not_after_ms);
    Ok(found.swap_remove(0))
}

/// The verdict on one certificate file for the `certificate_expiry` alarm.
#[derive(Debug, Clone, PartialEq)]
pub enum Expiry {
    /// The file is not configured, or its certificates are valid beyond the warning time:
    /// the alarm for this key is cleared (`details` name the file and date when there is one).
    Fine(serde_json::Value),
    /// A certificate of the file expires within `cert_expiry_warn_days` (or has expired):
    /// raise, with the file, subject, `not_after` and `days_left` (negative once expired).
    Expiring {
        days_left: i64,
        details: serde_json::Value,
    },
    /// The file cannot be read: no change (the connection attempt names the file).
    Unknown(String),
}

/// The alarm subjects: the `[mqtt]` keys whose certificates are watched.
pub const CERTIFICATE_KEYS: [&str; 2] = ["client_cert_file", "ca_file"];

/// For `client_cert_file` and `ca_file` (in that order): does a certificate in it expire
/// within `cfg.cert_expiry_warn_days` of `now_ms`? (Without TLS neither is used: both fine.)
pub fn expiry_checks(cfg: &MqttSettings, now_ms: i64) -> Vec<(&'static str, Expiry)> {
    CERTIFICATE_KEYS
        .into_iter()
        .map(|key| {
            let file = match key {
                "client_cert_file" => cfg.client_cert_file.as_ref(),
                _ => cfg.ca_file.as_ref(),
            };
            let verdict = match file.filter(|_| cfg.tls) {
                None => Expiry::Fine(serde_json::json!({"key": key})),
                Some(file) => match file_validity(file, key) {
                    Err(e) => Expiry::Unknown(e),
                    Ok(v) => {
                        let left_ms = v.not_after_ms - now_ms;
                        // Whole days, rounded up while valid: a certificate made for 10 days
                        // has 10 days left; -1 the day after it expired.
                        let days_left = if left_ms > 0 {
                            (left_ms + DAY_MS - 1) / DAY_MS
                        } else {
                            left_ms.div_euclid(DAY_MS)
                        };
                        let details = serde_json::json!({
                            "key": key,
                            "file": file.display().to_string(),
                            "certificate": v.subject,
                            "not_after": rfc3339_ms(v.not_after_ms),
                            "days_left": days_left,
                            "warn_days": cfg.cert_expiry_warn_days,
                        });
                        if left_ms <= i64::from(cfg.cert_expiry_warn_days) * DAY_MS {
                            Expiry::Expiring { days_left, details }
                        } else {
                            Expiry::Fine(details)
                        }
                    }
                },
            };
            (key, verdict)
        })
        .collect()
}

/// "client certificate F (CN=…) expired on …" for the first of `client_cert_file` and
/// `ca_file` whose certificate has expired at `now_ms`.
fn expired_sentence(cfg: &MqttSettings, now_ms: i64) -> Option<String> {
    let what = [
        (
            "client_cert_file",
            "client certificate",
            &cfg.client_cert_file,
        ),
        ("ca_file", "CA certificate", &cfg.ca_file),
    ];
    what.into_iter().find_map(|(key, name, file)| {
        let file = file.as_ref()?;
        let v = file_validity(file, key).ok()?;
        (v.not_after_ms <= now_ms).then(|| {
            format!(
                "[mqtt] {key}: {name} {} ({}) expired on {}; install a renewed certificate \
                 (the gateway reads it again at every connection attempt)",
                file.display(),
                v.subject,
                date_time(v.not_after_ms)
            )
        })
    })
}

/// `2020-01-02 00:00:00 UTC`.
fn date_time(ts_ms: i64) -> String {
    let t = rfc3339_ms(ts_ms);
    format!("{} {} UTC", &t[..10], &t[11..19])
}

/// One DER tag-length-value (single-byte tags, definite lengths: what certificates use).
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// The first TLV of `der` and what follows it.
    fn read(der: &'a [u8]) -> Option<(Tlv<'a>, &'a [u8])> {
        let (&tag, rest) = der.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| {
            (
                Tlv {
                    tag,
                    value: &rest[..len],
                },
                &rest[len..],
            )
        })
    }
}

/// A `Name` (SEQUENCE OF SET OF {OID, value}) as `CN=…, O=…`, with the usual attributes.
fn name_text(mut rdns: &[u8]) -> String {
    let mut parts = Vec::new();
    while let Some((set, rest)) = Tlv::read(rdns) {
        rdns = rest;
        let mut atvs = set.value;
        while let Some((atv, rest)) = Tlv::read(atvs) {
            atvs = rest;
            let Some((oid, after)) = Tlv::read(atv.value) else {
                continue;
            };
            let Some((value, _)) = Tlv::read(after) else {
                continue;
            };
            let label = match oid.value {
                [0x55, 0x04, 3] => "CN",
                [0x55, 0x04, 6] => "C",
                [0x55, 0x04, 7] => "L",
                [0x55, 0x04, 8] => "ST",
                [0x55, 0x04, 10] => "O",
                [0x55, 0x04, 11] => "OU",
                _ => continue,
            };
            let text = if value.tag == 0x1e {
                // BMPString: UTF-16 big-endian.
                let units: Vec<u16> = value
                    .value
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16_lossy(&units)
            } else {
                String::from_utf8_lossy(value.value).into_owned()
            };
            parts.push(format!("{label}={text}"));
        }
    }
    if parts.is_empty() {
        "no subject name".into()
    } else {
        parts.join(", ")
    }
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950..2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) in
/// ms since the epoch.
fn der_time_ms(t: &Tlv) -> Option<i64> {
    let text = std::str::from_utf8(t.value).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (t.tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let n = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, h, m, s) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some((days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s) * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn loopback_hosts_are_told_apart() {
        for h in ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "broker.example.net",
            "10.0.0.1",
            "192.168.1.2",
            "localhost.example",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    /// Runs openssl in `dir`.
    fn openssl(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA in `dir` (`ca.crt`) and a certificate `name.crt` for `subject` it signed, valid
    /// from `start` to `end` (`YYYYMMDDHHMMSSZ`), made with `openssl ca`.
    fn signed(dir: &Path, name: &str, subject: &str, start: &str, end: &str) -> PathBuf {
        if !dir.join("ca.crt").exists() {
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
                    "/CN=Test CA",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                ],
            );
            std::fs::create_dir_all(dir.join("db")).unwrap();
            std::fs::write(dir.join("db/index.txt"), "").unwrap();
            std::fs::write(dir.join("db/serial"), "01\n").unwrap();
            std::fs::write(
                dir.join("ca.cnf"),
                "[ca]\ndefault_ca = c\n[c]\ndatabase = db/index.txt\nnew_certs_dir = db\n\
                 serial = db/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n\
                 [p]\ncommonName = supplied\norganizationName = optional\n",
            )
            .unwrap();
        }
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
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
                "-in",
                &format!("{name}.csr"),
                "-startdate",
                start,
                "-enddate",
                end,
                "-out",
                &format!("{name}.crt"),
            ],
        );
        dir.join(format!("{name}.crt"))
    }

    fn validity(file: &Path) -> Validity {
        file_validity(file, "client_cert_file").unwrap()
    }

    fn settings(cert: Option<PathBuf>, ca: Option<PathBuf>) -> MqttSettings {
        MqttSettings {
            host: "broker.example.net".into(),
            port: 8883,
            topic_prefix: "amr".into(),
            client_id: "gw".into(),
            username: None,
            password_file: None,
            tls: true,
            ca_file: ca,
            client_cert_file: cert,
            client_key_file: None,
            keep_alive_s: 30,
            reconnect_max_s: 60,
            max_inflight: 16,
            cert_expiry_warn_days: 30,
        }
    }

    #[test]
    fn not_after_and_subject_are_read_from_certificates_openssl_made() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // UTCTime (before 2050).
        let old = signed(
            d,
            "old",
            "/CN=gw1/O=Utility",
            "20200101000000Z",
            "20200102000000Z",
        );
        let v = validity(&old);
        assert_eq!(rfc3339_ms(v.not_after_ms), "2020-01-02T00:00:00.000Z");
        assert_eq!(v.subject, "CN=gw1, O=Utility");
        // GeneralizedTime (2050 and later), seconds kept.
        let far = signed(d, "far", "/CN=far", "20240229120000Z", "20510315235959Z");
        assert_eq!(
            rfc3339_ms(validity(&far).not_after_ms),
            "2051-03-15T23:59:59.000Z"
        );
        // A self-signed v3 certificate made by `req -x509` (the CA) reads the same way.
        let ca = validity(&d.join("ca.crt"));
        assert_eq!(ca.subject, "CN=Test CA");
        let days = (ca.not_after_ms - crate::clock::now_ms()) as f64 / DAY_MS as f64;
        assert!((29.9..=30.0).contains(&days), "{days}");
        // A chain in one file: the earliest notAfter counts.
        let chain = d.join("chain.pem");
        let text = std::fs::read_to_string(&far).unwrap() + &std::fs::read_to_string(&old).unwrap();
        std::fs::write(&chain, text).unwrap();
        assert_eq!(validity(&chain).subject, "CN=gw1, O=Utility");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for der in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x03, 0x30, 0x01, 0x00],
            &[0x04, 0x00],
        ] {
            assert!(certificate_validity(der).is_err(), "{der:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let good = signed(
            dir.path(),
            "g",
            "/CN=g",
            "20200101000000Z",
            "20200102000000Z",
        );
        let cert = CertificateDer::from_pem_file(&good).unwrap();
        // Every truncation of a real certificate: an error or (never) a panic.
        for n in 0..cert.len() {
            let _ = certificate_validity(&cert[..n]);
        }
        assert!(certificate_validity(&cert).is_ok());
        let text = dir.path().join("not-a-cert.pem");
        std::fs::write(&text, "hello\n").unwrap();
        let e = file_validity(&text, "ca_file").unwrap_err();
        assert!(e.contains("ca_file") && e.contains("not-a-cert.pem"), "{e}");
    }

    #[test]
    fn expiry_is_judged_for_the_client_certificate_and_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let now = crate::clock::parse_rfc3339("2030-06-01T00:00:00Z").unwrap();
        let soon = signed(d, "soon", "/CN=gw1", "20300101000000Z", "20300611000000Z");
        let later = signed(d, "later", "/CN=ca2", "20300101000000Z", "20310101000000Z");
        let gone = signed(d, "gone", "/CN=gw0", "20200101000000Z", "20200102000000Z");
        let checks = expiry_checks(&settings(Some(soon.clone()), Some(later)), now);
        assert_eq!(checks[0].0, "client_cert_file");
        let Expiry::Expiring { days_left, details } = &checks[0].1 else {
            panic!("{checks:?}")
        };
        assert_eq!(*days_left, 10);
        assert_eq!(details["certificate"], "CN=gw1");
        assert_eq!(details["not_after"], "2030-06-11T00:00:00.000Z");
        assert_eq!(details["file"], soon.display().to_string());
        assert!(
            matches!(checks[1], ("ca_file", Expiry::Fine(_))),
            "{checks:?}"
        );
        // Expired: negative days; the CA is watched as well.
        let checks = expiry_checks(&settings(None, Some(gone.clone())), now);
        assert!(matches!(checks[0], ("client_cert_file", Expiry::Fine(_))));
        assert!(
            matches!(checks[1].1, Expiry::Expiring { days_left, .. } if days_left < -3000),
            "{checks:?}"
        );
        // The warning time is configurable; an unreadable file changes nothing.
        let mut cfg = settings(Some(soon), Some(d.join("missing.crt")));
        cfg.cert_expiry_warn_days = 7;
        let checks = expiry_checks(&cfg, now);
        assert!(matches!(checks[0].1, Expiry::Fine(_)), "{checks:?}");
        assert!(matches!(checks[1].1, Expiry::Unknown(_)), "{checks:?}");
        // The sentence for a failed connection names the expired file and its date.
        let cfg = settings(Some(gone.clone()), None);
        let sentence = expired_sentence(&cfg, now).unwrap();
        assert!(
            sentence.contains(&format!("client certificate {}", gone.display()))
                && sentence.contains("expired on 2020-01-02 00:00:00 UTC")
                && sentence.contains("CN=gw0"),
            "{sentence}"
        );
    }
}
