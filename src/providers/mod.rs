//! Webhook providers: one file each, behind the [`Provider`] trait, listed in [`registry!`].
//!
//! A provider sees the request as plain data ([`Inbound`]) and the current time, and answers
//! with [`Verified`] (the message's id, replay keys and signed timestamp) or a
//! [`VerifyError`]. Providers know nothing of HTTP status codes, of Pingora, of the replay
//! store or of YAML: each takes its typed route options ([`ProviderFactory::Options`]), and
//! the config module deserializes them. Adding one is a new file and one registry line.
//!
//! - [`keyring`]: a route's keys, which of them verified a message, and its replay keys;
//! - [`common`]: what several providers share (windows, HMACs, decoders, option checks);
//! - one file per provider.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use serde::de::DeserializeOwned;

use crate::body::Body;
use crate::message::MessageKey;

pub mod common;
pub mod keyring;
#[cfg(test)]
pub mod testing;

pub use common::*;
pub use keyring::{identity_of, Keyring, Signers};

pub mod basic_auth;
pub mod discord;
pub mod github;
pub mod hmac_generic;
pub mod intercom;
pub mod linear;
pub mod mailgun;
pub mod mandrill;
pub mod paddle;
pub mod sendgrid;
pub mod shopify;
pub mod slack;
pub mod square;
pub mod standard_webhooks;
pub mod stripe;
pub mod twilio;
pub mod twitch;
pub mod zoom;

/// The request as a provider sees it.
pub struct Inbound<'a> {
    /// Path and query exactly as received.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a Body,
    pub client_ip: Option<IpAddr>,
}

impl Inbound<'_> {
    /// A header's value as text, when present exactly once and valid visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        first.to_str().ok()
    }
}

/// A request whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The message's id as the application sees it (`X-Webhook-Id`) and the log shows it:
    /// taken from signed material only (a signed token or id, or the signature itself).
    pub id: String,
    /// The replay keys: one per key of the route that verified the message, each naming the
    /// message by provider, signer and signed material (see [`crate::message`]). Never empty.
    pub keys: Vec<MessageKey>,
    /// Unix seconds, for providers that sign a timestamp.
    pub timestamp: Option<i64>,
    /// How long the keys must be remembered once delivered.
    pub remember_for: Duration,
    /// When set, hookguard answers the request itself instead of forwarding it (a provider's
    /// endpoint-validation challenge, such as Zoom's `endpoint.url_validation`).
    pub answer: Option<Answer>,
    /// Keys naming the provider's *event* rather than this delivery of it, where the two
    /// differ: Stripe signs each retry anew (a new timestamp, so a new message), but the
    /// event's id in the signed body stays. The spool deduplicates on these (see
    /// [`Verified::dedup_keys`]).
    pub event_keys: Option<Vec<MessageKey>>,
    /// The provider's name and every key of the route, to derive `event_keys`.
    pub(crate) provider: &'static str,
    pub(crate) signers: Vec<crate::message::SignerId>,
}

impl Verified {
    /// The provider's event id, from signed material: the spool's deduplication key.
    pub fn event(mut self, id: Option<&str>) -> Self {
        if let Some(id) = id {
            let identity = [b"event:".as_slice(), id.as_bytes()].concat();
            self.event_keys = Some(crate::message::keys(
                self.provider,
                &self.signers,
                &identity,
            ));
        }
        self
    }

    /// The keys the spool deduplicates on: the event's where the provider names one, else the
    /// message's.
    pub fn dedup_keys(&self) -> &[MessageKey] {
        self.event_keys.as_deref().unwrap_or(&self.keys)
    }

    /// Sets the id shown to the application (default: the hex of the first replay key).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// The message was signed at `timestamp` (unix seconds), checked against `tolerance`:
    /// its keys are remembered until the timestamp can no longer pass the window.
    pub fn signed_at(mut self, timestamp: i64, now: SystemTime, tolerance: Duration) -> Self {
        self.timestamp = Some(timestamp);
        self.remember_for = remember_until_stale(timestamp, now, tolerance);
        self
    }

    /// No signed timestamp: keys are remembered for `ttl`.
    pub fn remember(mut self, ttl: Duration) -> Self {
        self.remember_for = ttl;
        self
    }

    pub fn answer(mut self, answer: Option<Answer>) -> Self {
        self.answer = answer;
        self
    }
}

/// Why a request is not an authentic webhook, in the contract's order of checks. The proxy
/// maps each to its HTTP answer; here they are facts about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum VerifyError {
    /// The signature material (or the timestamp or id it needs) is absent, repeated or
    /// unparsable.
    #[error("signature material absent or unparsable")]
    MissingSignature,
    #[error("timestamp outside the route's tolerance")]
    StaleTimestamp,
    #[error("signature does not match any key")]
    BadSignature,
    /// The body has more fields than `max_body_fields`, and the provider must read them all
    /// to verify it.
    #[error("more form fields than max_body_fields")]
    TooManyFields,
}

impl VerifyError {
    /// The contract's `error` code.
    pub fn code(self) -> &'static str {
        match self {
            VerifyError::MissingSignature => "missing_signature",
            VerifyError::StaleTimestamp => "stale_timestamp",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::TooManyFields => "body_too_large",
        }
    }
}

/// A response hookguard gives on the provider's behalf to a verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

pub trait Provider: Send + Sync + 'static {
    /// Checks the request's signature material, timestamp and signature, in the contract's
    /// order, and names the delivery.
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError>;

    /// A one-line description of the route's options for `check` and startup logs. Must not
    /// contain a secret.
    fn summary(&self) -> String;

    /// Whether an unsigned `HEAD` to the route is answered `200` (not forwarded): some senders
    /// (Mandrill) probe a webhook URL that way before they start signing posts to it.
    fn answers_head_probe(&self) -> bool {
        false
    }

    /// Whether the signature (or the replay identity) pins the body. Mailgun signs only a
    /// timestamp and a token: the first body delivered with a token is the only one it may
    /// carry, so a released key is bound to the digest of that body.
    fn covers_body(&self) -> bool {
        true
    }

    /// The provider's id for the event a verified `body` carries, where it stays the same
    /// across the provider's retries while the message does not (see
    /// [`Verified::event_keys`]). Asked only for spooled routes.
    fn event_id(&self, body: &Body) -> Option<String> {
        let _ = body;
        None
    }

    /// Whether the provider expects the application's own answer (Slack's slash commands and
    /// challenges, Twilio's TwiML, Discord's interactions): such a route cannot spool, since
    /// the spool answers in the application's stead. (Zoom's challenge is answered by
    /// hookguard itself, before any spool, so Zoom routes may spool.)
    fn needs_the_apps_answer(&self) -> bool {
        false
    }

    /// Request headers the provider consumed as credentials (`Authorization` for
    /// `basic_auth`): never forwarded to the application.
    fn consumed_headers(&self) -> &'static [&'static str] {
        &[]
    }

    /// Signs `body` as the provider would now, with the route's first secret, for
    /// `hookguard sign`. Providers whose signatures need the provider's private key say so.
    fn sign(&self, req: &SignRequest<'_>, now: SystemTime) -> Result<Signed, SignError> {
        let _ = (req, now);
        Err(SignError::Unsupported)
    }
}

/// What `hookguard sign` asks a provider to sign.
pub struct SignRequest<'a> {
    pub body: &'a [u8],
    /// The full URL the request will be sent to.
    pub url: &'a str,
}

/// A request ready to send: extra headers, the body (which may have gained fields), and a
/// query string for providers that sign one into the URL (Twilio's `bodySHA256`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signed {
    pub headers: Vec<(String, String)>,
    pub content_type: String,
    pub body: Vec<u8>,
    pub query: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("this provider signs with its own private key; hookguard cannot sign for it")]
    Unsupported,
    #[error("{0}")]
    Body(String),
}

/// How a provider is made from its route options.
pub trait ProviderFactory: Provider + Sized {
    /// The route keys this provider takes besides the common ones (`name`, `path`, ...).
    /// Deserialized with `deny_unknown_fields`.
    type Options: DeserializeOwned;

    /// The option keys whose values are secret material: errors about them never show the
    /// value.
    const SECRET_OPTIONS: &'static [&'static str] = &["secrets"];

    fn from_options(options: Self::Options) -> Result<Self, Vec<OptionError>>;
}

/// A semantic error in a provider's options, naming the key it is about.
#[derive(Debug)]
pub struct OptionError {
    pub key: &'static str,
    pub message: String,
}

impl OptionError {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        OptionError {
            key,
            message: message.into(),
        }
    }
}

/// What to do with a provider type, once its name is known: the config module deserializes
/// its options and builds it; tests and fuzzers do the same with their own formats.
pub trait Visit {
    type Output;
    /// `name` is the provider's canonical name.
    fn visit<P: ProviderFactory>(self, name: &'static str) -> Self::Output;
}

macro_rules! registry {
    ($($name:literal $(| $alias:literal)* => $ty:ty),+ $(,)?) => {
        /// Every provider hookguard knows: canonical name, then aliases.
        pub const NAMES: &[(&str, &[&str])] = &[$(($name, &[$($alias),*])),+];

        /// Calls `visit` with the provider called `name` (or by one of its aliases).
        pub fn dispatch<V: Visit>(name: &str, visit: V) -> Option<V::Output> {
            match name {
                $($name $(| $alias)* => Some(visit.visit::<$ty>($name)),)+
                _ => None,
            }
        }
    };
}

registry! {
    "mailgun" => mailgun::Mailgun,
    "stripe" => stripe::Stripe,
    "github" => github::GitHub,
    "slack" => slack::Slack,
    "shopify" => shopify::Shopify,
    "standard_webhooks" | "svix" => standard_webhooks::StandardWebhooks,
    "twilio" => twilio::Twilio,
    "sendgrid" => sendgrid::SendGrid,
    "hmac" => hmac_generic::GenericHmac,
    "mandrill" => mandrill::Mandrill,
    "paddle" => paddle::Paddle,
    "twitch" => twitch::Twitch,
    "zoom" => zoom::Zoom,
    "square" => square::Square,
    "discord" => discord::Discord,
    "linear" => linear::Linear,
    "intercom" => intercom::Intercom,
    "basic_auth" => basic_auth::BasicAuth,
}

/// The option keys, across all providers, whose values are secret material.
pub const SECRET_OPTIONS: &[&str] = &["secrets", "public_key"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_dispatch_finds_each() {
        struct Name;
        impl Visit for Name {
            type Output = &'static str;
            fn visit<P: ProviderFactory>(self, name: &'static str) -> &'static str {
                name
            }
        }
        let mut names: Vec<&str> = NAMES
            .iter()
            .flat_map(|(n, aliases)| std::iter::once(*n).chain(aliases.iter().copied()))
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        for (name, aliases) in NAMES {
            assert_eq!(dispatch(name, Name), Some(*name));
            for alias in *aliases {
                assert_eq!(dispatch(alias, Name), Some(*name), "alias {alias}");
            }
        }
        assert_eq!(dispatch("nope", Name), None);
    }

    /// Every provider declares the secret options it has, and they are all in the union.
    #[test]
    fn secret_options_are_known() {
        struct Secrets;
        impl Visit for Secrets {
            type Output = &'static [&'static str];
            fn visit<P: ProviderFactory>(self, _: &'static str) -> Self::Output {
                P::SECRET_OPTIONS
            }
        }
        for (name, _) in NAMES {
            for key in dispatch(name, Secrets).unwrap() {
                assert!(SECRET_OPTIONS.contains(key), "{name}: {key}");
            }
        }
    }
}
