//! hookguard's configuration: YAML in, validated internal types out.
//!
//! Loading goes in three steps, and every error of every step is collected and reported
//! together as `PATH:LINE:COL: message`:
//! 1. the YAML is parsed (serde_yaml) and its positions indexed ([`positions`]);
//! 2. `${NAME}` / `${file:/path}` references in strings are expanded ([`expand`]);
//! 3. each section is deserialized on its own into raw serde structs (unknown keys are
//!    errors), then validated into the types the rest of hookguard uses, which serde never sees.
//!
//! Secrets are held in [`crate::secret::Secret`]; no error message ever shows a secret's value.
//!
//! - this file: the validated types the rest of hookguard uses, the errors, and the entry
//!   points [`load_file`] / [`load_str`];
//! - `raw`: the serde structs as written in YAML; `load`: the loader that turns them into
//!   validated types, collecting every error; `replay`: the replay store's settings (Redis URL
//!   and TLS files included);
//! - [`expand`] (`${...}`), [`positions`] (YAML line and column), [`introspect`] (the keys a
//!   serde struct declares).

pub mod expand;
pub mod introspect;
mod load;
pub mod positions;
mod raw;
mod replay;
mod routes;
mod spool;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::providers::Provider;
use expand::{Environment, ProcessEnv};
use positions::Pos;
pub use replay::*;
pub use spool::{longest_attempt, SpoolSettings, SpoolStoreKind};

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
    /// The durable queue, when the config has a `spool:` section or a route spools.
    pub spool: Option<SpoolSettings>,
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

pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Providers send a few KiB of headers; nginx refuses a header line over 8 KiB by default.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;

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
    /// Verified messages are written to the spool and answered 202; the spool delivers them.
    pub spool: bool,
}

impl fmt::Debug for Route {
    /// Name, path and provider: never the provider's keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("provider", &self.provider_name)
            .finish_non_exhaustive()
    }
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
        } + if self.spool { " | spool" } else { "" }
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
    let mut root: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
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

    let mut loader = load::Loader::new(origin, text);

    loader.expand(&mut root, env);
    let config = loader.config(root);
    loader.finish(config)
}

#[cfg(test)]
mod tests;
