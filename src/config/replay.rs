//! The replay store's settings: memory or Redis, the Redis URL (a secret), its TLS material
//! (read and checked when the config loads), and how duplicates and store errors are answered.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::introspect::struct_fields;
use super::load::Loader;
use super::positions::YPath;
use super::raw::RawReplay;
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySettings {
    /// Bound on remembered message keys (with Redis: on the local cache of delivered keys).
    pub max_entries: u64,
    pub store: ReplayStore,
    /// What a request meets when the shared store cannot be asked.
    pub on_store_error: OnStoreError,
    /// The status a copy of an already delivered message is answered with.
    pub duplicate_status: DuplicateStatus,
}

/// How a copy of a delivered message is answered. Providers treat 409 as a failed delivery
/// and retry it for hours or days (and may disable the endpoint), so the default is 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateStatus {
    /// `200 {"status":"duplicate"}`.
    Ok,
    /// `409 {"error":"replayed"}`, as a copy in flight.
    Conflict,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        ReplaySettings {
            max_entries: DEFAULT_MAX_ENTRIES,
            store: ReplayStore::Memory,
            on_store_error: OnStoreError::Reject,
            duplicate_status: DuplicateStatus::Ok,
        }
    }
}

impl ReplaySettings {
    /// One line for `check` and the startup log. Never contains a password.
    pub fn summary(&self) -> String {
        match &self.store {
            ReplayStore::Memory => format!("replay memory (max_entries {})", self.max_entries),
            ReplayStore::Redis(r) => format!(
                "replay redis {}{} (prefix {:?}, timeout {}, on_store_error {}, local max_entries {})",
                r.display,
                r.tls.summary(),
                r.prefix,
                humantime::format_duration(r.timeout),
                match self.on_store_error {
                    OnStoreError::Reject => "reject",
                    OnStoreError::Allow => "allow",
                },
                self.max_entries
            ),
        }
    }
}

/// Where reservations and delivered keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStore {
    /// In this process (the default): one replica.
    Memory,
    /// In Redis, shared by every replica.
    Redis(RedisSettings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[USER:PASSWORD@]HOST[:PORT][/DB]` or `unix:///path`; may hold a password.
    pub url: Secret,
    /// The URL without user or password, for logs and `check`.
    pub display: String,
    /// Prepended to every key (`hookguard:replay:` by default).
    pub prefix: String,
    /// Bound on each Redis call.
    pub timeout: Duration,
    /// For `rediss://`: a private CA and/or a client certificate, read from their files when
    /// the config is loaded (and again on every reload). Empty: the system's roots, no client
    /// certificate.
    pub tls: RedisTls,
}

/// PEM material for a `rediss://` connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// CA certificate(s) that sign the server's certificate, instead of the system's roots.
    pub ca_cert: Option<Vec<u8>>,
    /// Certificate and private key for servers that ask for one (`tls-auth-clients yes`).
    pub client: Option<RedisClientCert>,
}

impl RedisTls {
    pub fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.client.is_none()
    }

    /// For `check` and the startup log: what is configured beyond the URL.
    fn summary(&self) -> &'static str {
        match (self.ca_cert.is_some(), self.client.is_some()) {
            (true, true) => " with a private CA and a client certificate",
            (true, false) => " with a private CA",
            (false, true) => " with a client certificate",
            (false, false) => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisClientCert {
    pub cert: Vec<u8>,
    /// The private key in PEM: redacted in `Debug`.
    pub key: Secret,
}

pub const DEFAULT_REDIS_PREFIX: &str = "hookguard:replay:";
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayBackend {
    Memory,
    Redis,
}

/// When the shared store cannot be asked: refuse with 503 (the provider retries later), or
/// forward without replay protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    Reject,
    Allow,
}

pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;

impl Loader<'_> {
    /// The `rediss://` certificate files: read and checked to be PEM now, so that a wrong
    /// path or file is reported with the rest of the config, not at the first connection.
    /// `tls_url`: whether `redis_url` is `rediss://` (`None` when it is missing or invalid).
    fn redis_tls(&mut self, raw: &RawReplay, path: &YPath, tls_url: Option<bool>) -> RedisTls {
        let files = [
            ("redis_tls_ca_cert_file", &raw.redis_tls_ca_cert_file),
            ("redis_tls_cert_file", &raw.redis_tls_cert_file),
            ("redis_tls_key_file", &raw.redis_tls_key_file),
        ];
        if files.iter().all(|(_, f)| f.is_none()) {
            return RedisTls::default();
        }
        if tls_url == Some(false) {
            for (key, _) in files.iter().filter(|(_, f)| f.is_some()) {
                self.error_at_key(
                    &path.key(key),
                    format!("`replay.{key}` applies only to a `rediss://` (TLS) `redis_url`"),
                );
            }
            return RedisTls::default();
        }
        if raw.redis_tls_cert_file.is_some() != raw.redis_tls_key_file.is_some() {
            let given = if raw.redis_tls_cert_file.is_some() {
                "redis_tls_cert_file"
            } else {
                "redis_tls_key_file"
            };
            self.error_at_key(
                &path.key(given),
                "`replay.redis_tls_cert_file` and `replay.redis_tls_key_file` go together: a client certificate needs its key".into(),
            );
        }
        let mut read = |key: &str, file: &Option<PathBuf>, check: fn(&[u8]) -> bool, what: &str| {
            let file = file.as_ref()?;
            let at = path.key(key);
            // A path built from `${...}` may carry a secret: not shown then.
            let shown = self.shown(&at, &file.display().to_string());
            match std::fs::read(file) {
                Ok(bytes) if check(&bytes) => Some(bytes),
                Ok(_) => {
                    self.error_at_value(
                        &at,
                        format!("`replay.{key}`: {shown} holds no {what} in PEM"),
                    );
                    None
                }
                Err(e) => {
                    self.error_at_value(&at, format!("`replay.{key}`: cannot read {shown}: {e}"));
                    None
                }
            }
        };
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        fn certificates(pem: &[u8]) -> bool {
            let mut any = false;
            for cert in CertificateDer::pem_slice_iter(pem) {
                if cert.is_err() {
                    return false;
                }
                any = true;
            }
            any
        }
        fn private_key(pem: &[u8]) -> bool {
            PrivateKeyDer::from_pem_slice(pem).is_ok()
        }
        let ca_cert = read(
            "redis_tls_ca_cert_file",
            &raw.redis_tls_ca_cert_file,
            certificates,
            "certificate",
        );
        let cert = read(
            "redis_tls_cert_file",
            &raw.redis_tls_cert_file,
            certificates,
            "certificate",
        );
        let key = read(
            "redis_tls_key_file",
            &raw.redis_tls_key_file,
            private_key,
            "private key",
        );
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some(RedisClientCert {
                cert,
                // PEM is ASCII; a key file that is not UTF-8 failed the PEM check above.
                key: Secret::new(String::from_utf8_lossy(&key).into_owned()),
            }),
            _ => None,
        };
        RedisTls { ca_cert, client }
    }

    pub(super) fn replay(&mut self, top: &Mapping) -> ReplaySettings {
        let path = YPath::root().key("replay");
        if let Some(Value::Mapping(m)) = top.get("replay") {
            self.unknown_keys(m, &path, struct_fields::<RawReplay>(), "`replay`");
        }
        let d = ReplaySettings::default();
        let Some(raw) = self.get::<RawReplay>(top, "replay") else {
            return d;
        };
        let max_entries = raw.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
        if max_entries == 0 {
            self.error_at_value(
                &path.key("max_entries"),
                "`replay.max_entries` must be at least 1".into(),
            );
        }
        let on_store_error = raw.on_store_error.unwrap_or(d.on_store_error);
        let duplicate_status = match raw.duplicate_status {
            None | Some(200) => DuplicateStatus::Ok,
            Some(409) => DuplicateStatus::Conflict,
            Some(_) => {
                self.error_at_value(
                    &path.key("duplicate_status"),
                    "`replay.duplicate_status` must be 200 (the default) or 409".into(),
                );
                DuplicateStatus::Ok
            }
        };
        let store = match raw.backend.unwrap_or(ReplayBackend::Memory) {
            ReplayBackend::Memory => {
                for (key, given) in [
                    ("redis_url", raw.redis_url.is_some()),
                    ("redis_prefix", raw.redis_prefix.is_some()),
                    ("redis_timeout", raw.redis_timeout.is_some()),
                    (
                        "redis_tls_ca_cert_file",
                        raw.redis_tls_ca_cert_file.is_some(),
                    ),
                    ("redis_tls_cert_file", raw.redis_tls_cert_file.is_some()),
                    ("redis_tls_key_file", raw.redis_tls_key_file.is_some()),
                    ("on_store_error", raw.on_store_error.is_some()),
                ] {
                    if given {
                        self.error_at_key(
                            &path.key(key),
                            format!("`replay.{key}` applies only with `replay.backend: redis`"),
                        );
                    }
                }
                ReplayStore::Memory
            }
            ReplayBackend::Redis => {
                let timeout = raw.redis_timeout.unwrap_or(DEFAULT_REDIS_TIMEOUT);
                if timeout.is_zero() {
                    self.error_at_value(
                        &path.key("redis_timeout"),
                        "`replay.redis_timeout` must be more than 0".into(),
                    );
                }
                let display = match &raw.redis_url {
                    None => {
                        self.error_at_value(
                            &path.key("backend"),
                            "`replay.backend: redis` needs `replay.redis_url`".into(),
                        );
                        None
                    }
                    Some(url) => match redis_url_shape(url.expose()) {
                        Ok(shape) => Some(shape),
                        Err(message) => {
                            self.error_at_value(&path.key("redis_url"), message.into());
                            None
                        }
                    },
                };
                let tls = self.redis_tls(&raw, &path, display.as_ref().map(|(_, tls)| *tls));
                match (raw.redis_url, display) {
                    (Some(url), Some((display, _))) => ReplayStore::Redis(RedisSettings {
                        url,
                        display,
                        prefix: raw
                            .redis_prefix
                            .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned()),
                        timeout,
                        tls,
                    }),
                    _ => ReplayStore::Memory,
                }
            }
        };
        ReplaySettings {
            max_entries,
            store,
            on_store_error,
            duplicate_status,
        }
    }
}

/// A Redis URL without its user and password (`redis://HOST:PORT/DB`), and whether it is
/// `rediss://` (TLS). The messages never quote the URL: it may hold a password.
fn redis_url_shape(url: &str) -> Result<(String, bool), &'static str> {
    const NOT_A_URL: &str = "`replay.redis_url`: not a Redis URL like redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or unix:///path/to/redis.sock (value not shown: it may hold a password)";
    let client = redis::Client::open(url).map_err(|_| NOT_A_URL)?;
    let info = client.get_connection_info();
    Ok(match &info.addr {
        redis::ConnectionAddr::Unix(path) => (format!("unix://{}", path.display()), false),
        redis::ConnectionAddr::Tcp(..) => (format!("redis://{}/{}", info.addr, info.redis.db), false),
        redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
            return Err("`replay.redis_url`: `#insecure` turns off certificate verification, which hookguard does not do; trust a private CA with `replay.redis_tls_ca_cert_file` instead")
        }
        redis::ConnectionAddr::TcpTls { .. } => {
            (format!("rediss://{}/{}", info.addr, info.redis.db), true)
        }
    })
}
