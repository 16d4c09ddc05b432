//! What several providers share: timestamp windows, HMACs, decoders, option checks, and the
//! option sets most providers take.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::Deserialize;

use super::{OptionError, Signed, VerifyError};
use crate::one_or_many::OneOrMany;
use crate::secret::{Secret, Secrets};

/// The options of providers that sign a timestamp.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampedOptions {
    pub secrets: Secrets,
    /// Accepted `|now - timestamp|`.
    #[serde(default, with = "humantime_serde")]
    pub tolerance: Option<Duration>,
}

/// The options of providers that sign no timestamp.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UntimedOptions {
    pub secrets: Secrets,
    /// How long a delivered message's keys are remembered.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

/// The options of providers that sign the URL they call, and no timestamp.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlSignedOptions {
    pub secrets: Secrets,
    /// The URL exactly as the provider calls it, without the query.
    pub public_url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

/// The options of providers that sign with their own private key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyOptions {
    /// The provider's public key(s), several while it rotates.
    pub public_key: OneOrMany<String>,
    #[serde(default, with = "humantime_serde")]
    pub tolerance: Option<Duration>,
}

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
pub fn check_window(
    timestamp: i64,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let skew = unix_now(now).abs_diff(timestamp);
    if skew > tolerance.as_secs() {
        Err(VerifyError::StaleTimestamp)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
/// The HMAC hash functions providers use (`hmac`'s `algorithm` option; Twilio's settings).
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The MAC's length in bytes.
    pub fn mac_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    /// Whether the MAC of `parts` under `key` is `sig`, compared in constant time.
    pub fn matches(self, key: &[u8], parts: &[&[u8]], sig: &[u8]) -> bool {
        match self {
            Algorithm::Sha1 => hmac_matches::<HmacSha1>(key, parts, sig),
            Algorithm::Sha256 => hmac_matches::<HmacSha256>(key, parts, sig),
            Algorithm::Sha512 => hmac_matches::<HmacSha512>(key, parts, sig),
        }
    }

    /// The MAC of `parts` under `key` (for `hookguard sign`).
    pub fn sign(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Algorithm::Sha1 => hmac_sign::<HmacSha1>(key, parts),
            Algorithm::Sha256 => hmac_sign::<HmacSha256>(key, parts),
            Algorithm::Sha512 => hmac_sign::<HmacSha512>(key, parts),
        }
    }
}

/// How long keys of providers that sign no timestamp are remembered, unless `ttl` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The usual tolerance of providers that sign a timestamp (Stripe, Slack, Standard Webhooks).
pub const FIVE_MINUTES: Duration = Duration::from_secs(300);

/// Checks `secrets:`: at least one, none empty. The values are never echoed.
pub fn require_secrets(secrets: Secrets, errors: &mut Vec<OptionError>) -> super::Keyring<Secret> {
    if secrets.0.is_empty() || secrets.0.iter().any(Secret::is_empty) {
        errors.push(OptionError::new(
            "secrets",
            "every secret must be a non-empty string",
        ));
    }
    super::Keyring::from_secrets(secrets.0)
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
pub fn field_error(e: crate::body::BodyError) -> VerifyError {
    match e {
        crate::body::BodyError::TooManyFields(_) => VerifyError::TooManyFields,
        _ => VerifyError::MissingSignature,
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
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            check_window(1_000_000 + 301, now, tol),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            check_window(i64::MIN, now, tol),
            Err(VerifyError::StaleTimestamp)
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
}
