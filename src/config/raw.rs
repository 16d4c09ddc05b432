//! The config as written: serde structs with `deny_unknown_fields`, which the loader turns
//! into the validated types of the config module. Nothing outside it sees them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ForwardBody, OnStoreError, ReplayBackend};
use crate::secret::Secret;

pub(super) const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "upstream",
    "max_body_bytes",
    "max_header_bytes",
    "max_body_fields",
    "threads",
    "timeouts",
    "replay",
    "trusted_proxies",
    "spool",
    "routes",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    #[serde(default, with = "humantime_serde")]
    pub(super) upstream_connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) upstream_read: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) client_read: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) keepalive: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) shutdown_grace: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplay {
    pub(super) max_entries: Option<u64>,
    pub(super) backend: Option<ReplayBackend>,
    pub(super) redis_url: Option<Secret>,
    pub(super) redis_prefix: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(super) redis_timeout: Option<Duration>,
    pub(super) redis_tls_ca_cert_file: Option<PathBuf>,
    pub(super) redis_tls_cert_file: Option<PathBuf>,
    pub(super) redis_tls_key_file: Option<PathBuf>,
    pub(super) on_store_error: Option<OnStoreError>,
    pub(super) duplicate_status: Option<u16>,
}

/// The keys every route has; all other keys of a route belong to its provider.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: String,
    pub(super) path: String,
    pub(super) provider: String,
    pub(super) upstream: Option<String>,
    pub(super) upstream_path: Option<String>,
    pub(super) forward_body: Option<ForwardBody>,
    pub(super) allow_ips: Option<Vec<String>>,
    pub(super) spool: Option<bool>,
}
