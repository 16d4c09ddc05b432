//! hookguard's configuration: YAML in, validated internal types out.
//!
//! Loading goes in three steps, and every error of every step is collected and reported
//! together as `PATH:LINE:COL: message`:
//! 1. the YAML is parsed (serde_yaml) and its positions indexed ([`positions`]);
//! 2. `${NAME}` / `${file:/path}` references in strings are expanded ([`expand`]);
//! 3. each section is deserialized on its own into raw serde structs (unknown keys are
//!    errors), then validated into the types the rest of hookguard uses, which serde never sees.
//!
//! Secrets are held in [`secret::Secret`]; no error message ever shows a secret's value.

pub mod expand;
pub mod introspect;
pub mod positions;
pub mod secret;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::providers::{self, BuildError, Provider};
use expand::{Environment, ProcessEnv};
use introspect::struct_fields;
use positions::{Pos, Positions, YPath};
use secret::Secret;

// ---------------------------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct Config {
    /// Where providers' requests arrive.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_listen: SocketAddr,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest accepted request header (request line and all header lines).
    pub max_header_bytes: usize,
    /// Most fields a form or multipart body may have.
    pub max_body_fields: usize,
    /// Worker threads of the public listener.
    pub threads: usize,
    pub timeouts: Timeouts,
    pub replay: ReplaySettings,
    /// Proxies whose `X-Forwarded-For` is believed (for `allow_ips`); empty: none.
    pub trusted_proxies: Vec<IpNet>,
    pub routes: RouteTable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection to the upstream.
    pub upstream_connect: Duration,
    /// Each read from the upstream (waiting for its response, or for more of its body).
    pub upstream_read: Duration,
    /// Each read from the client while a request header or body is arriving.
    pub client_read: Duration,
    /// How long an idle keep-alive client connection is kept.
    pub keepalive: Duration,
    /// How long shutdown waits for requests in flight before exiting anyway.
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            upstream_connect: Duration::from_secs(5),
            upstream_read: Duration::from_secs(30),
            client_read: Duration::from_secs(15),
            keepalive: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

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

pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Providers send a few KiB of headers; nginx refuses a header line over 8 KiB by default.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;

/// What the upstream receives as the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardBody {
    /// Normalized, compact JSON (the default).
    Json,
    /// The bytes and content type that arrived.
    Original,
}

/// An upstream application, resolved when the config is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// As written in the config, for logs and `check`.
    pub url: String,
    pub addr: SocketAddr,
}

pub struct Route {
    pub name: String,
    pub path: String,
    /// The provider's canonical name (`X-Webhook-Provider`, metrics label).
    pub provider_name: &'static str,
    pub provider: Arc<dyn Provider>,
    pub upstream: Upstream,
    /// Replaces the request's path and query upstream, when set.
    pub upstream_path: Option<String>,
    pub forward_body: ForwardBody,
    /// When set, only clients in these ranges may post to the route.
    pub allow_ips: Option<Vec<IpNet>>,
}

impl Route {
    /// One line for `check` and the startup log. Never contains a secret.
    pub fn summary(&self) -> String {
        format!(
            "route {}: POST {} -> {}{} | provider {} ({}) | forward_body {}",
            self.name,
            self.path,
            self.upstream.url,
            self.upstream_path.as_deref().unwrap_or(""),
            self.provider_name,
            self.provider.summary(),
            match self.forward_body {
                ForwardBody::Json => "json",
                ForwardBody::Original => "original",
            }
        ) + &match &self.allow_ips {
            Some(nets) => format!(" | allow_ips {}", nets.len()),
            None => String::new(),
        }
    }
}

/// Routes by exact path.
#[derive(Clone, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    by_path: HashMap<String, Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let by_path = routes
            .iter()
            .map(|r| (r.path.clone(), Arc::clone(r)))
            .collect();
        RouteTable { routes, by_path }
    }

    /// The route for a request path (the query string is not part of `path`).
    pub fn lookup(&self, path: &str) -> Option<&Arc<Route>> {
        self.by_path.get(path)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One config problem, with its position when the YAML gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub pos: Option<Pos>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{}:{}:{}: {}", self.file, p.line, p.col, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------------------------
// Raw (serde) structures
// ---------------------------------------------------------------------------------------------

const TOP_LEVEL_KEYS: &[&str] = &[
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
    "routes",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default, with = "humantime_serde")]
    upstream_connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    upstream_read: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    client_read: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    keepalive: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplay {
    max_entries: Option<u64>,
    backend: Option<ReplayBackend>,
    redis_url: Option<Secret>,
    redis_prefix: Option<String>,
    #[serde(default, with = "humantime_serde")]
    redis_timeout: Option<Duration>,
    redis_tls_ca_cert_file: Option<PathBuf>,
    redis_tls_cert_file: Option<PathBuf>,
    redis_tls_key_file: Option<PathBuf>,
    on_store_error: Option<OnStoreError>,
    duplicate_status: Option<u16>,
}

/// The keys every route has; all other keys of a route belong to its provider.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    path: String,
    provider: String,
    upstream: Option<String>,
    upstream_path: Option<String>,
    forward_body: Option<ForwardBody>,
    allow_ips: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Loads and validates the config file at `path`, expanding from the process environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: origin.clone(),
            pos: None,
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    load_str(&text, &origin, &ProcessEnv)
}

/// Loads and validates config `text`; `origin` names it in errors.
pub fn load_str(text: &str, origin: &str, env: &dyn Environment) -> Result<Config, ConfigErrors> {
    let mut root: Value = serde_yaml::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: origin.to_owned(),
            pos: e.location().map(|l| Pos {
                line: l.line(),
                col: l.column(),
            }),
            message: e
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_owned(),
        }])
    })?;

    let mut loader = Loader {
        origin,
        positions: Positions::index(text),
        expanded: HashSet::new(),
        errors: Vec::new(),
    };

    let mut expand_errors = Vec::new();
    expand::expand_tree(
        &mut root,
        &YPath::root(),
        env,
        &mut loader.expanded,
        &mut expand_errors,
    );
    for e in expand_errors {
        loader.error_at_value(&e.path, e.message);
    }

    let top = match root {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        _ => {
            loader.error_at_value(
                &YPath::root(),
                "the config must be a mapping of keys to values".into(),
            );
            Mapping::new()
        }
    };
    let config = loader.config(&top);
    if loader.errors.is_empty() {
        config.ok_or_else(|| ConfigErrors(Vec::new()))
    } else {
        loader
            .errors
            .sort_by_key(|e| e.pos.map(|p| (p.line, p.col)));
        Err(ConfigErrors(loader.errors))
    }
}

struct Loader<'a> {
    origin: &'a str,
    positions: Positions,
    /// Paths whose value came from `${...}`: never echoed in errors.
    expanded: HashSet<YPath>,
    errors: Vec<ConfigError>,
}

impl Loader<'_> {
    fn error(&mut self, pos: Option<Pos>, message: String) {
        self.errors.push(ConfigError {
            file: self.origin.to_owned(),
            pos,
            message,
        });
    }

    fn error_at_value(&mut self, path: &YPath, message: String) {
        let pos = self.positions.value(path);
        self.error(pos, message);
    }

    fn error_at_key(&mut self, path: &YPath, message: String) {
        let pos = self.positions.key(path);
        self.error(pos, message);
    }

    /// Reports every key of `map` not in `known`.
    fn unknown_keys(&mut self, map: &Mapping, base: &YPath, known: &[&str], what: &str) {
        for key in map.keys() {
            let name = key.as_str().unwrap_or("<non-string key>");
            if !known.contains(&name) {
                self.error_at_key(
                    &base.key(name),
                    format!(
                        "unknown key `{name}` in {what} (expected one of: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }

    /// Deserializes `value` (found at `path`) into `T`, recording an error on failure.
    fn de<T: DeserializeOwned>(&mut self, value: Value, path: &YPath) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let at = path.join_serde(e.path());
                let message = self.describe(&at, e.inner());
                self.error_at_value(&at, message);
                None
            }
        }
    }

    /// Whether the value at `at` (or part of it) came from `${...}`.
    fn is_expanded(&self, at: &YPath) -> bool {
        self.expanded
            .iter()
            .any(|p| at.0.starts_with(&p.0) || p.0.starts_with(&at.0))
    }

    /// `value` (found at `at`) as an error may show it: not at all when it came from
    /// `${...}`, which is often a secret.
    fn shown(&self, at: &YPath, value: &str) -> String {
        if self.is_expanded(at) {
            "(value from ${...}, not shown)".to_owned()
        } else {
            format!("`{value}`")
        }
    }

    /// A serde error's message, unless the value may be secret: then a generic one.
    fn describe(&self, at: &YPath, e: &serde_yaml::Error) -> String {
        let secret = at.has_key(providers::SECRET_KEYS) || self.is_expanded(at);
        let field = at.to_string();
        let field = if field.is_empty() {
            "config".to_owned()
        } else {
            format!("`{field}`")
        };
        if secret {
            format!("{field}: invalid value (not shown: it may be secret)")
        } else {
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg);
            format!("{field}: {msg}")
        }
    }

    /// The value of top-level `key`, deserialized, if present and valid.
    fn get<T: DeserializeOwned>(&mut self, map: &Mapping, key: &str) -> Option<T> {
        let value = map.get(key)?.clone();
        self.de(value, &YPath::root().key(key))
    }

    fn config(&mut self, top: &Mapping) -> Option<Config> {
        self.unknown_keys(top, &YPath::root(), TOP_LEVEL_KEYS, "the config");

        let listen = self.address(top, "listen", "0.0.0.0:8080");
        let admin_listen = self.address(top, "admin_listen", "127.0.0.1:9090");
        // Pingora binds with SO_REUSEPORT, so two listeners on one port would both start and
        // share its connections at random: webhooks would reach the admin service and
        // health checks the public one.
        if let (Some(public), Some(admin)) = (listen, admin_listen) {
            let overlap = public.port() == admin.port()
                && (public.ip() == admin.ip()
                    || public.ip().is_unspecified()
                    || admin.ip().is_unspecified());
            if overlap {
                // At whichever of the two the file sets (the other may be a default).
                let at = if top.contains_key("admin_listen") {
                    "admin_listen"
                } else {
                    "listen"
                };
                let admin = self.shown(&YPath::root().key("admin_listen"), &admin.to_string());
                let public = self.shown(&YPath::root().key("listen"), &public.to_string());
                self.error_at_value(
                    &YPath::root().key(at),
                    format!("`admin_listen` {admin} overlaps `listen` {public}: use another port"),
                );
            }
        }
        let default_upstream = match self.get::<String>(top, "upstream") {
            Some(url) => self.upstream(&url, &YPath::root().key("upstream")),
            None => None,
        };
        let max_body_bytes = self
            .get::<u64>(top, "max_body_bytes")
            .unwrap_or(DEFAULT_MAX_BODY_BYTES as u64);
        if max_body_bytes == 0 || max_body_bytes > 1 << 30 {
            self.error_at_value(
                &YPath::root().key("max_body_bytes"),
                "`max_body_bytes` must be between 1 and 1073741824 (1 GiB)".into(),
            );
        }
        // Pingora itself stops reading a header at 1 MiB.
        let max_header_bytes = self
            .get::<u64>(top, "max_header_bytes")
            .unwrap_or(DEFAULT_MAX_HEADER_BYTES as u64);
        if !(1024..=1 << 20).contains(&max_header_bytes) {
            self.error_at_value(
                &YPath::root().key("max_header_bytes"),
                "`max_header_bytes` must be between 1024 and 1048576 (1 MiB)".into(),
            );
        }
        let max_body_fields = self
            .get::<u64>(top, "max_body_fields")
            .unwrap_or(crate::body::DEFAULT_MAX_FIELDS as u64);
        if !(1..=1_000_000).contains(&max_body_fields) {
            self.error_at_value(
                &YPath::root().key("max_body_fields"),
                "`max_body_fields` must be between 1 and 1000000".into(),
            );
        }
        let threads = self
            .get::<usize>(top, "threads")
            .unwrap_or_else(default_threads);
        if threads == 0 || threads > 1024 {
            self.error_at_value(
                &YPath::root().key("threads"),
                "`threads` must be between 1 and 1024".into(),
            );
        }
        let timeouts = self.timeouts(top);
        let replay = self.replay(top);
        let trusted_proxies = match self.get::<Vec<String>>(top, "trusted_proxies") {
            Some(list) => self.networks(&list, &YPath::root().key("trusted_proxies")),
            None => Vec::new(),
        };
        // A top-level upstream that is present but invalid has been reported already.
        let upstream_given = top.contains_key("upstream");
        let routes = self.routes(top, default_upstream.as_ref(), upstream_given);

        Some(Config {
            listen: listen?,
            admin_listen: admin_listen?,
            max_body_bytes: max_body_bytes as usize,
            max_header_bytes: max_header_bytes as usize,
            max_body_fields: max_body_fields as usize,
            threads,
            timeouts,
            replay,
            trusted_proxies,
            routes: RouteTable::new(routes),
        })
    }

    fn address(&mut self, top: &Mapping, key: &str, default: &str) -> Option<SocketAddr> {
        let text = self
            .get::<String>(top, key)
            .unwrap_or_else(|| default.to_owned());
        match text.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Some(addr),
            _ => {
                let at = YPath::root().key(key);
                let shown = self.shown(&at, &text);
                self.error_at_value(&at, format!("`{key}`: {shown} is not a HOST:PORT address"));
                None
            }
        }
    }

    fn upstream(&mut self, url: &str, path: &YPath) -> Option<Upstream> {
        match parse_upstream(url) {
            Ok(addr) => Some(Upstream {
                url: url.trim_end_matches('/').to_owned(),
                addr,
            }),
            Err(_) if self.is_expanded(path) => {
                let msg = "not an http://HOST:PORT upstream (value from ${...}, not shown)";
                self.error_at_value(path, format!("`{path}`: {msg}"));
                None
            }
            Err(msg) => {
                self.error_at_value(path, format!("`{path}`: {msg}"));
                None
            }
        }
    }

    /// CIDR ranges (`203.0.113.0/24`), or single addresses taken as /32 or /128.
    fn networks(&mut self, list: &[String], path: &YPath) -> Vec<IpNet> {
        let mut nets = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => nets.push(net),
                Err(_) => {
                    let shown = self.shown(&path.index(i), text);
                    self.error_at_value(
                        &path.index(i),
                        format!(
                            "`{}`: {shown} is not an IP address or CIDR range",
                            path.index(i)
                        ),
                    )
                }
            }
        }
        nets
    }

    fn timeouts(&mut self, top: &Mapping) -> Timeouts {
        let d = Timeouts::default();
        let path = YPath::root().key("timeouts");
        if let Some(Value::Mapping(m)) = top.get("timeouts") {
            self.unknown_keys(m, &path, struct_fields::<RawTimeouts>(), "`timeouts`");
        }
        let Some(raw) = self.get::<RawTimeouts>(top, "timeouts") else {
            return d;
        };
        let t = Timeouts {
            upstream_connect: raw.upstream_connect.unwrap_or(d.upstream_connect),
            upstream_read: raw.upstream_read.unwrap_or(d.upstream_read),
            client_read: raw.client_read.unwrap_or(d.client_read),
            keepalive: raw.keepalive.unwrap_or(d.keepalive),
            shutdown_grace: raw.shutdown_grace.unwrap_or(d.shutdown_grace),
        };
        for (key, value) in [
            ("upstream_connect", t.upstream_connect),
            ("upstream_read", t.upstream_read),
            ("client_read", t.client_read),
        ] {
            if value.is_zero() {
                self.error_at_value(
                    &path.key(key),
                    format!("`timeouts.{key}` must be more than 0"),
                );
            }
        }
        t
    }

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

    fn replay(&mut self, top: &Mapping) -> ReplaySettings {
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

    fn routes(
        &mut self,
        top: &Mapping,
        default_upstream: Option<&Upstream>,
        upstream_given: bool,
    ) -> Vec<Route> {
        let base = YPath::root().key("routes");
        let items = match top.get("routes") {
            Some(Value::Sequence(items)) => items.clone(),
            Some(Value::Null) | None => {
                self.error(
                    None,
                    "no `routes`: hookguard needs at least one route to protect".into(),
                );
                return Vec::new();
            }
            Some(_) => {
                self.error_at_value(&base, "`routes` must be a list of routes".into());
                return Vec::new();
            }
        };
        let mut routes = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut paths: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.into_iter().enumerate() {
            let here = base.index(i);
            let Some(route) = self.route(item, &here, default_upstream, upstream_given) else {
                continue;
            };
            if let Some(first) = names.insert(route.name.clone(), i) {
                let shown = self.shown(&here.key("name"), &route.name);
                self.error_at_value(
                    &here.key("name"),
                    format!("route name {shown} is already used by routes[{first}]"),
                );
            }
            if let Some(first) = paths.insert(route.path.clone(), i) {
                let shown = self.shown(&here.key("path"), &route.path);
                self.error_at_value(
                    &here.key("path"),
                    format!("path {shown} is already routed by routes[{first}]"),
                );
            }
            routes.push(route);
        }
        routes
    }

    fn route(
        &mut self,
        item: Value,
        here: &YPath,
        default_upstream: Option<&Upstream>,
        upstream_given: bool,
    ) -> Option<Route> {
        let Value::Mapping(map) = item else {
            self.error_at_value(here, format!("`{here}` must be a mapping"));
            return None;
        };
        let common_keys = struct_fields::<RawRoute>();
        let (mut common, mut specific) = (Mapping::new(), Mapping::new());
        for (k, v) in map {
            if k.as_str().is_some_and(|k| common_keys.contains(&k)) {
                common.insert(k, v);
            } else {
                specific.insert(k, v);
            }
        }
        let raw: RawRoute = self.de(Value::Mapping(common), here)?;

        let entry = providers::lookup(&raw.provider);
        let Some(entry) = entry else {
            let known: Vec<&str> = providers::REGISTRY.iter().map(|e| e.name).collect();
            let shown = self.shown(&here.key("provider"), &raw.provider);
            self.error_at_value(
                &here.key("provider"),
                format!("unknown provider {shown} (known: {})", known.join(", ")),
            );
            return None;
        };
        let provider_keys = (entry.fields)();
        let mut all_keys: Vec<&str> = common_keys.to_vec();
        all_keys.extend_from_slice(provider_keys);
        self.unknown_keys(
            &specific,
            here,
            &all_keys,
            &format!("a `{}` route", entry.name),
        );
        specific.retain(|k, _| k.as_str().is_some_and(|k| provider_keys.contains(&k)));

        let provider = match (entry.build)(Value::Mapping(specific)) {
            Ok(p) => Some(p),
            Err(BuildError::Deserialize(e)) => {
                let at = here.join_serde(e.path());
                let message = self.describe(&at, e.inner());
                self.error_at_value(&at, message);
                None
            }
            Err(BuildError::Invalid(errors)) => {
                for e in errors {
                    let at = here.key(e.key);
                    // A provider's message may quote the value; an expanded one is not shown.
                    let message = if self.is_expanded(&at) {
                        "invalid value (from ${...}, not shown)".to_owned()
                    } else {
                        e.message
                    };
                    self.error_at_value(&at, format!("`{at}`: {message}"));
                }
                None
            }
        };

        if !raw.path.starts_with('/') || raw.path.contains('?') || raw.path.contains('#') {
            self.error_at_value(
                &here.key("path"),
                format!(
                    "`{}`: a path starts with `/` and has no query",
                    here.key("path")
                ),
            );
        }
        if let Some(up) = &raw.upstream_path {
            if !up.starts_with('/') {
                self.error_at_value(
                    &here.key("upstream_path"),
                    format!("`{}`: must start with `/`", here.key("upstream_path")),
                );
            }
        }
        let upstream = match &raw.upstream {
            Some(url) => self.upstream(url, &here.key("upstream")),
            None => {
                if !upstream_given {
                    self.error_at_value(
                        here,
                        format!("`{here}` has no `upstream`, and there is no top-level `upstream`"),
                    );
                }
                default_upstream.cloned()
            }
        };
        let allow_ips = raw
            .allow_ips
            .as_ref()
            .map(|list| self.networks(list, &here.key("allow_ips")));
        Some(Route {
            allow_ips,
            name: raw.name,
            path: raw.path,
            provider_name: entry.name,
            provider: provider?,
            upstream: upstream?,
            upstream_path: raw.upstream_path,
            forward_body: raw.forward_body.unwrap_or(ForwardBody::Json),
        })
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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

/// `http://HOST[:PORT]`, resolved now.
fn parse_upstream(url: &str) -> Result<SocketAddr, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a URL like http://127.0.0.1:3000"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https upstreams are not supported: run hookguard beside the app and reach it over plain HTTP"
                    .into(),
            )
        }
        _ => return Err(format!("`{url}` must start with http://")),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{url}`: an upstream is scheme://host:port only (use `upstream_path` for paths)"
        ));
    }
    let host = uri.host().ok_or_else(|| format!("`{url}` has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{host}` resolves to no address"))
}

#[cfg(test)]
mod tests;
