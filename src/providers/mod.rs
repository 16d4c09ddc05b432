//! Webhook providers: one file each, behind the [`Provider`] trait, listed in [`REGISTRY`].
//!
//! A provider sees the request as plain data ([`Inbound`]) and the current time, and answers
//! with [`Verified`] (the replay key and signed timestamp) or a [`Rejection`]. Providers know
//! nothing of Pingora or of the replay cache. Adding one is a new file and one registry line.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde::de::DeserializeOwned;

use crate::body::Body;
use crate::config::introspect::struct_fields;
use crate::config::secret::Secret;
use crate::message::{self, MessageKey, SignerId};
pub use crate::outcome::Rejection;

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
}

impl Verified {
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

/// A message identity made of signed parts: 128 bits of SHA-256 over them (length-prefixed).
pub fn identity_of(parts: &[&[u8]]) -> [u8; 16] {
    message::digest(parts).to_be_bytes()
}

/// A route's verifying keys (secrets or public keys), each with its fingerprint.
/// Verification tries every key: the time taken does not tell which one matched, and every
/// signer of a message is known (the replay guard holds one key per signer).
#[derive(Clone)]
pub struct Keyring<K> {
    entries: Vec<(K, SignerId)>,
}

impl<K> Keyring<K> {
    /// `material` gives the bytes that identify a key (what the MAC is keyed with, or the
    /// encoded public key).
    pub fn new(keys: Vec<K>, material: impl Fn(&K) -> Vec<u8>) -> Self {
        let entries = keys
            .into_iter()
            .map(|k| {
                let id = SignerId::of(&material(&k));
                (k, id)
            })
            .collect();
        Keyring { entries }
    }

    /// The keys that `verifies` accepts, in the route's order. Every key is tried.
    pub fn verifying(&self, mut verifies: impl FnMut(&K) -> bool) -> Signers<'_, K> {
        let mut found = Vec::new();
        for (key, id) in &self.entries {
            if verifies(key) {
                found.push((key, *id));
            }
        }
        Signers(found)
    }

    /// For headers that carry several signatures (a sender rolling its secret signs with
    /// both): the keys that verify any of `signatures`, and the smallest signature that
    /// verified (the one named in `X-Webhook-Id`, whatever order the sender listed them in).
    /// Every (key, signature) pair is tried once.
    pub fn verifying_any<'s, S: AsRef<[u8]> + Ord>(
        &self,
        signatures: &'s [S],
        verifies: impl Fn(&K, &[u8]) -> bool,
    ) -> (Signers<'_, K>, Option<&'s S>) {
        let mut shown: Option<&'s S> = None;
        let signers = self.verifying(|key| {
            let mut any = false;
            for sig in signatures {
                if verifies(key, sig.as_ref()) {
                    any = true;
                    if shown.is_none_or(|s| sig < s) {
                        shown = Some(sig);
                    }
                }
            }
            any
        });
        (signers, shown)
    }

    /// The first key, for `hookguard sign`.
    pub fn first(&self) -> Result<&K, SignError> {
        self.entries
            .first()
            .map(|(k, _)| k)
            .ok_or(SignError::Unsupported)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }
}

impl Keyring<Secret> {
    pub fn from_secrets(secrets: Vec<Secret>) -> Self {
        Keyring::new(secrets, |s| s.expose().as_bytes().to_vec())
    }
}

impl<K> std::fmt::Debug for Keyring<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} key(s), <redacted>)", self.entries.len())
    }
}

/// The keys of a route that verified one message.
pub struct Signers<'a, K>(Vec<(&'a K, SignerId)>);

impl<'a, K> Signers<'a, K> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first matching key in the route's order (Zoom answers its challenge with it).
    pub fn first(&self) -> Option<&'a K> {
        self.0.first().map(|(k, _)| *k)
    }

    /// The verdict: `bad_signature` when no key verified the message, else the message named
    /// by `identity` (signed material only) under `provider`, signed by each of these keys.
    pub fn message(&self, provider: &str, identity: &[u8]) -> Result<Verified, Rejection> {
        if self.0.is_empty() {
            return Err(Rejection::BadSignature);
        }
        let ids: Vec<SignerId> = self.0.iter().map(|(_, id)| *id).collect();
        let keys = message::keys(provider, &ids, identity);
        Ok(Verified {
            id: format!("{:032x}", keys[0].0),
            keys,
            timestamp: None,
            remember_for: DEFAULT_TTL,
            answer: None,
        })
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
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, Rejection>;

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

/// A fresh identifier for a signed test delivery: unique, not secret.
pub fn fresh_token(len: usize) -> String {
    use sha2::Digest;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = String::new();
    let mut block = 0u64;
    while out.len() < len {
        let digest = sha2::Sha256::new()
            .chain_update(nanos.to_be_bytes())
            .chain_update(std::process::id().to_be_bytes())
            .chain_update(n.to_be_bytes())
            .chain_update(block.to_be_bytes())
            .finalize();
        out.push_str(&hex::encode(digest));
        block += 1;
    }
    out.truncate(len);
    out
}

/// How a provider is made from its route options.
pub trait ProviderFactory: Provider + Sized {
    /// The route keys this provider takes besides the common ones (`name`, `path`, ...).
    /// Deserialized with `deny_unknown_fields`.
    type Options: DeserializeOwned;

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

/// One entry of the registry.
pub struct ProviderEntry {
    /// Canonical name, used in metrics and `X-Webhook-Provider`.
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// The option keys the provider accepts.
    pub fields: fn() -> &'static [&'static str],
    pub build: fn(serde_yaml::Value) -> Result<Arc<dyn Provider>, BuildError>,
}

pub enum BuildError {
    Deserialize(serde_path_to_error::Error<serde_yaml::Error>),
    Invalid(Vec<OptionError>),
}

const fn entry<P: ProviderFactory>(
    name: &'static str,
    aliases: &'static [&'static str],
) -> ProviderEntry {
    ProviderEntry {
        name,
        aliases,
        fields: struct_fields::<P::Options>,
        build: build::<P>,
    }
}

fn build<P: ProviderFactory>(value: serde_yaml::Value) -> Result<Arc<dyn Provider>, BuildError> {
    let options: P::Options =
        serde_path_to_error::deserialize(value).map_err(BuildError::Deserialize)?;
    let provider = P::from_options(options).map_err(BuildError::Invalid)?;
    Ok(Arc::new(provider))
}

/// Every provider hookguard knows.
pub static REGISTRY: &[ProviderEntry] = &[
    entry::<mailgun::Mailgun>("mailgun", &[]),
    entry::<stripe::Stripe>("stripe", &[]),
    entry::<github::GitHub>("github", &[]),
    entry::<slack::Slack>("slack", &[]),
    entry::<shopify::Shopify>("shopify", &[]),
    entry::<standard_webhooks::StandardWebhooks>("standard_webhooks", &["svix"]),
    entry::<twilio::Twilio>("twilio", &[]),
    entry::<sendgrid::SendGrid>("sendgrid", &[]),
    entry::<hmac_generic::GenericHmac>("hmac", &[]),
    entry::<mandrill::Mandrill>("mandrill", &[]),
    entry::<paddle::Paddle>("paddle", &[]),
    entry::<twitch::Twitch>("twitch", &[]),
    entry::<zoom::Zoom>("zoom", &[]),
    entry::<square::Square>("square", &[]),
    entry::<discord::Discord>("discord", &[]),
    entry::<linear::Linear>("linear", &[]),
    entry::<intercom::Intercom>("intercom", &[]),
    entry::<basic_auth::BasicAuth>("basic_auth", &[]),
];

/// Looks a provider up by name or alias.
pub fn lookup(name: &str) -> Option<&'static ProviderEntry> {
    REGISTRY
        .iter()
        .find(|e| e.name == name || e.aliases.contains(&name))
}

/// Option keys whose values are secret material: errors about them never show the value.
pub const SECRET_KEYS: &[&str] = &["secrets", "secret", "password", "public_key", "redis_url"];

// ---- helpers shared by providers ----

/// `N secret(s), tolerance 5m` (or `ttl 1day`): the usual `summary()` of a provider.
pub fn summary_window(secrets: usize, what: &str, window: Duration) -> String {
    format!(
        "{secrets} secret(s), {what} {}",
        humantime::format_duration(window)
    )
}

/// Unix seconds of `now`.
pub fn unix_now(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Accepts `timestamp` when it lies within `tolerance` of `now`, in the past or the future.
pub fn check_window(timestamp: i64, now: SystemTime, tolerance: Duration) -> Result<(), Rejection> {
    let skew = unix_now(now).abs_diff(timestamp);
    if skew > tolerance.as_secs() {
        Err(Rejection::StaleTimestamp)
    } else {
        Ok(())
    }
}

/// How long a key signed at `timestamp` must be remembered: until the timestamp can no longer
/// pass the window, plus a minute of margin for clock skew between replicas.
pub fn remember_until_stale(timestamp: i64, now: SystemTime, tolerance: Duration) -> Duration {
    let expires = timestamp
        .saturating_add(tolerance.as_secs() as i64)
        .saturating_add(60);
    let left = expires.saturating_sub(unix_now(now)).max(1);
    Duration::from_secs(left as u64)
}

/// HMAC-SHA1, HMAC-SHA256 and HMAC-SHA512, as providers use them.
pub type HmacSha1 = Hmac<sha1::Sha1>;
pub type HmacSha256 = Hmac<sha2::Sha256>;
pub type HmacSha512 = Hmac<sha2::Sha512>;

/// Whether the MAC `M` of `parts` under `key` equals `expected`, compared in constant time.
pub fn hmac_matches<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(expected).is_ok()
}

/// The MAC `M` of `parts` under `key` (for `hookguard sign` and tests, never for checking).
pub fn hmac_sign<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = match <M as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length.
        Err(_) => return Vec::new(),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// How long keys of providers that sign no timestamp are remembered, unless `ttl` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The usual tolerance of providers that sign a timestamp (Stripe, Slack, Standard Webhooks).
pub const FIVE_MINUTES: Duration = Duration::from_secs(300);

/// Checks `secrets:`: at least one, none empty. The values are never echoed.
pub fn require_secrets(
    secrets: crate::config::secret::Secrets,
    errors: &mut Vec<OptionError>,
) -> Keyring<Secret> {
    if secrets.0.is_empty() || secrets.0.iter().any(Secret::is_empty) {
        errors.push(OptionError::new(
            "secrets",
            "every secret must be a non-empty string",
        ));
    }
    Keyring::from_secrets(secrets.0)
}

/// Checks a `tolerance` or `ttl` option: more than zero.
pub fn positive(
    key: &'static str,
    value: Option<Duration>,
    default: Duration,
    errors: &mut Vec<OptionError>,
) -> Duration {
    let value = value.unwrap_or(default);
    if value.is_zero() {
        errors.push(OptionError::new(key, "must be more than 0"));
    }
    value
}

/// `Ok(value)` when no error was recorded.
pub fn finish<T>(value: T, errors: Vec<OptionError>) -> Result<T, Vec<OptionError>> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

/// The verdict on a body whose fields could not be read before verification: too many of
/// them is a size limit (413); anything else leaves the signature material unreadable.
pub fn field_error(e: crate::body::BodyError) -> Rejection {
    match e {
        crate::body::BodyError::TooManyFields(_) => Rejection::BodyTooLarge,
        _ => Rejection::MissingSignature,
    }
}

/// Unix seconds written as decimal digits only (no sign, no fraction, no spaces).
pub fn parse_unix(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Exactly `len` bytes written in hex (either case).
pub fn decode_hex(s: &str, len: usize) -> Option<Vec<u8>> {
    if s.len() != len * 2 {
        return None;
    }
    hex::decode(s).ok()
}

/// Exactly `len` bytes in standard, padded base64.
pub fn decode_base64(s: &str, len: usize) -> Option<Vec<u8>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    (bytes.len() == len).then_some(bytes)
}

/// Standard, padded base64.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The query string of a request target, without the `?`.
pub fn query(path_and_query: &str) -> Option<&str> {
    path_and_query.split_once('?').map(|(_, q)| q)
}

/// A top-level string (or integer) member of a JSON object body, when the body is one and
/// the member occurs exactly once. Used for ids inside signed bodies. The other members are
/// skipped without being built (serde's `IgnoredAny`), so a large body costs no memory here.
pub fn json_member(body: &[u8], name: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    struct Member<'n>(&'n str);

    impl<'de> DeserializeSeed<'de> for Member<'_> {
        type Value = Option<String>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Member<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found: Option<Option<String>> = None;
            let mut repeated = false;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key != self.0 {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                let value = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) if !s.is_empty() => Some(s),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                };
                repeated |= found.is_some();
                found = Some(value);
            }
            Ok(if repeated { None } else { found.flatten() })
        }
    }

    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Member(name).deserialize(&mut de).ok()?;
    de.end().ok()?;
    value
}

/// The URL a provider calls, as configured in `public_url`: scheme, host, optional port and
/// path. The request's own query string is appended when checking a signature, so one route
/// serves any query the provider was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    /// Validates `public_url`, recording an error under that key.
    pub fn parse(value: Option<String>, errors: &mut Vec<OptionError>) -> Option<PublicUrl> {
        let Some(url) = value else {
            errors.push(OptionError::new(
                "public_url",
                "required: the full URL the provider calls, e.g. https://example.com/webhooks/x",
            ));
            return None;
        };
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        let host_ok = rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'));
        if !host_ok || url.contains('?') || url.contains('#') || url.contains(char::is_whitespace) {
            errors.push(OptionError::new(
                "public_url",
                format!(
                    "`{url}` must be an http:// or https:// URL with a host and no query or \
                     fragment (the request's own query string is appended)"
                ),
            ));
            return None;
        }
        Some(PublicUrl(url))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL the provider signed for a request that arrived as `path_and_query`.
    pub fn for_request(&self, path_and_query: &str) -> String {
        match query(path_and_query) {
            Some(q) => format!("{}?{q}", self.0),
            None => self.0.clone(),
        }
    }
}

/// Headers and body of a JSON request for `hookguard sign`.
pub fn signed_json(headers: Vec<(String, String)>, body: &[u8]) -> Signed {
    Signed {
        headers,
        content_type: "application/json".into(),
        body: body.to_vec(),
        query: None,
    }
}

/// Key material decoded from a secret (base64 `whsec_` secrets): redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBytes(pub Vec<u8>);

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes(<redacted>)")
    }
}

/// A route option that takes one string or a list (public keys, for rotation).
#[derive(Clone, Debug, Default)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> serde::Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Either {
            One(String),
            Many(Vec<String>),
        }
        match Either::deserialize(d) {
            Ok(Either::One(s)) => Ok(OneOrMany(vec![s])),
            Ok(Either::Many(v)) => Ok(OneOrMany(v)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a string or a list of strings",
            )),
        }
    }
}

/// Helpers for the providers' unit tests.
#[cfg(test)]
pub mod testing {
    use super::*;
    use bytes::Bytes;
    use http::header::{HeaderName, HeaderValue};

    pub fn at(ts: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    }

    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    /// Verifies a request made of `path`, header pairs, content type and body at `now`.
    pub fn check(
        p: &dyn Provider,
        path: &str,
        pairs: &[(&str, &str)],
        content_type: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, Rejection> {
        let headers = headers(pairs);
        let body = Body::new(Bytes::copy_from_slice(body), content_type);
        let req = Inbound {
            path_and_query: path,
            headers: &headers,
            body: &body,
            client_ip: None,
        };
        p.verify(&req, at(now))
    }

    /// Verifies what `sign` produced, sent to `url`'s path.
    pub fn check_signed(
        p: &dyn Provider,
        url: &str,
        signed: &Signed,
        now: i64,
    ) -> Result<Verified, Rejection> {
        let path = url
            .find("://")
            .and_then(|i| url[i + 3..].find('/').map(|j| &url[i + 3 + j..]))
            .unwrap_or("/");
        let path = match &signed.query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let pairs: Vec<(&str, &str)> = signed
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        check(
            p,
            &path,
            &pairs,
            Some(&signed.content_type),
            &signed.body,
            now,
        )
    }

    pub fn sign_now(p: &dyn Provider, url: &str, body: &[u8], now: i64) -> Signed {
        p.sign(&SignRequest { body, url }, at(now)).unwrap()
    }

    pub fn secrets(list: &[&str]) -> crate::config::secret::Secrets {
        crate::config::secret::Secrets(
            list.iter()
                .map(|s| crate::config::secret::Secret::new(*s))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_symmetric() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let tol = Duration::from_secs(300);
        assert!(check_window(1_000_000 - 300, now, tol).is_ok());
        assert!(check_window(1_000_000 + 300, now, tol).is_ok());
        assert_eq!(
            check_window(1_000_000 - 301, now, tol),
            Err(Rejection::StaleTimestamp)
        );
        assert_eq!(
            check_window(1_000_000 + 301, now, tol),
            Err(Rejection::StaleTimestamp)
        );
        assert_eq!(
            check_window(i64::MIN, now, tol),
            Err(Rejection::StaleTimestamp)
        );
    }

    #[test]
    fn remembered_until_the_window_closes() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let tol = Duration::from_secs(300);
        assert_eq!(
            remember_until_stale(1_000_000, now, tol),
            Duration::from_secs(360)
        );
        assert_eq!(
            remember_until_stale(1_000_000 - 300, now, tol),
            Duration::from_secs(60)
        );
        assert_eq!(
            remember_until_stale(1_000_000 + 300, now, tol),
            Duration::from_secs(660)
        );
    }

    #[test]
    fn registry_names_are_unique() {
        let mut names: Vec<&str> = REGISTRY
            .iter()
            .flat_map(|e| std::iter::once(e.name).chain(e.aliases.iter().copied()))
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
