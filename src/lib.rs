//! hookguard: a webhook-verification reverse proxy on Pingora.
//!
//! It stands in front of an application, buffers each webhook, proves that it comes from the
//! provider (signature, timestamp window, replay check) and forwards only authentic requests,
//! with the body normalized to JSON. The modules, from the wire inwards:
//!
//! - [`server`]: the Pingora server, its listeners and signals;
//! - [`proxy`]: the public listener, mapping verdicts to HTTP, metrics and logs;
//! - [`admin`], [`metrics`]: health, readiness and Prometheus metrics;
//! - [`providers`]: one file per webhook sender, behind one trait;
//! - [`replay`]: the at-most-once-per-successful-delivery guard;
//! - [`body`], [`normalize`]: the buffered body, its fields, and its JSON form;
//! - [`config`]: YAML to validated types;
//! - [`sign`]: `hookguard sign`, requests signed as a provider would.

pub mod admin;
pub mod body;
pub mod client_ip;
pub mod config;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod net;
pub mod normalize;
pub mod one_or_many;
pub mod operate;
pub mod outcome;
pub mod providers;
pub mod proxy;
pub mod random;
pub mod replay;
pub mod secret;
pub mod server;
pub mod sign;
pub mod spool;
