//! The loader: YAML (already parsed and `${...}`-expanded) to validated types, every error
//! collected with its position. The top level and timeouts are here; routes are in
//! `routes`, the replay settings in `replay`.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::expand::{self, Environment};
use super::introspect::struct_fields;
use super::positions::{Pos, Positions, YPath};
use super::raw::{RawTimeouts, TOP_LEVEL_KEYS};
use super::{
    Config, ConfigError, ConfigErrors, RouteTable, Timeouts, Upstream, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
};
use crate::providers::{self};

/// Option keys, beyond the providers' own, whose values are secret material.
const SECRET_CONFIG_KEYS: &[&str] = &["redis_url"];

pub(super) struct Loader<'a> {
    origin: &'a str,
    positions: Positions,
    /// Paths whose value came from `${...}`: never echoed in errors.
    expanded: HashSet<YPath>,
    errors: Vec<ConfigError>,
}

impl<'a> Loader<'a> {
    pub(super) fn new(origin: &'a str, text: &str) -> Self {
        Loader {
            origin,
            positions: Positions::index(text),
            expanded: HashSet::new(),
            errors: Vec::new(),
        }
    }

    /// Replaces `${...}` references in `root`, noting where values came from them.
    pub(super) fn expand(&mut self, root: &mut Value, env: &dyn Environment) {
        let mut expand_errors = Vec::new();
        expand::expand_tree(
            root,
            &YPath::root(),
            env,
            &mut self.expanded,
            &mut expand_errors,
        );
        for e in expand_errors {
            self.error_at_value(&e.path, e.message);
        }
    }

    /// The config of the document `root`, if it has no error.
    pub(super) fn config(&mut self, root: Value) -> Option<Config> {
        let top = match root {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => {
                self.error_at_value(
                    &YPath::root(),
                    "the config must be a mapping of keys to values".into(),
                );
                Mapping::new()
            }
        };
        self.top(&top)
    }

    /// Every error, in the order of the file; or the config.
    pub(super) fn finish(mut self, config: Option<Config>) -> Result<Config, ConfigErrors> {
        if self.errors.is_empty() {
            config.ok_or_else(|| ConfigErrors(Vec::new()))
        } else {
            self.errors.sort_by_key(|e| e.pos.map(|p| (p.line, p.col)));
            Err(ConfigErrors(self.errors))
        }
    }

    pub(super) fn error(&mut self, pos: Option<Pos>, message: String) {
        self.errors.push(ConfigError {
            file: self.origin.to_owned(),
            pos,
            message,
        });
    }

    pub(super) fn error_at_value(&mut self, path: &YPath, message: String) {
        let pos = self.positions.value(path);
        self.error(pos, message);
    }

    pub(super) fn error_at_key(&mut self, path: &YPath, message: String) {
        let pos = self.positions.key(path);
        self.error(pos, message);
    }

    /// Reports every key of `map` not in `known`.
    pub(super) fn unknown_keys(&mut self, map: &Mapping, base: &YPath, known: &[&str], what: &str) {
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
    pub(super) fn de<T: DeserializeOwned>(&mut self, value: Value, path: &YPath) -> Option<T> {
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
    pub(super) fn is_expanded(&self, at: &YPath) -> bool {
        self.expanded
            .iter()
            .any(|p| at.0.starts_with(&p.0) || p.0.starts_with(&at.0))
    }

    /// `value` (found at `at`) as an error may show it: not at all when it came from
    /// `${...}`, which is often a secret.
    pub(super) fn shown(&self, at: &YPath, value: &str) -> String {
        if self.is_expanded(at) {
            "(value from ${...}, not shown)".to_owned()
        } else {
            format!("`{value}`")
        }
    }

    /// A serde error's message, unless the value may be secret: then a generic one.
    pub(super) fn describe(&self, at: &YPath, e: &serde_yaml::Error) -> String {
        let secret = at.has_key(providers::SECRET_OPTIONS)
            || at.has_key(SECRET_CONFIG_KEYS)
            || self.is_expanded(at);
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
    pub(super) fn get<T: DeserializeOwned>(&mut self, map: &Mapping, key: &str) -> Option<T> {
        let value = map.get(key)?.clone();
        self.de(value, &YPath::root().key(key))
    }

    fn top(&mut self, top: &Mapping) -> Option<Config> {
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
        let spool = self.spool(top, &timeouts, &replay);
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
            // Routes that spool without a `spool:` section get the defaults.
            spool: spool.or_else(|| routes.iter().any(|r| r.spool).then(Default::default)),
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

    pub(super) fn upstream(&mut self, url: &str, path: &YPath) -> Option<Upstream> {
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
    pub(super) fn networks(&mut self, list: &[String], path: &YPath) -> Vec<IpNet> {
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
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
