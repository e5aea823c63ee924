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

#[cfg(test)]
mod tests {
    use super::*;

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
}
