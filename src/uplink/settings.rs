//! The uplink's settings: `[mqtt]` of the configuration, built by the loader.

use std::path::PathBuf;

/// How to reach the broker and how to behave towards it.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    /// Default `"amr"`.
    pub topic_prefix: String,
    /// Default `amr-gateway-{gateway.id}`.
    pub client_id: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Default 30.
    pub keep_alive_s: u64,
    /// Longest wait between reconnect attempts (default 60 s); the wait grows from 1 s with jitter.
    pub reconnect_max_s: u64,
    /// Messages published but not yet acknowledged at once (default 64).
    pub max_inflight: u16,
    /// Days before a certificate of `client_cert_file` or `ca_file` expires that the
    /// `certificate_expiry` alarm is raised (default 30).
    pub cert_expiry_warn_days: u32,
}
