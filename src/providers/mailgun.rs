//! Mailgun: HMAC-SHA256 (hex) of `timestamp` + `token` under the webhook signing key.
//!
//! The material lives in the body: a `signature` object beside `event-data` in current JSON
//! webhooks, or `timestamp`/`token`/`signature` fields in legacy form and multipart posts.
//! The signature does not cover the body: the token's single use is what vouches for it.
//! Replay keys are the token under the signing key (every route with the same key shares
//! them), and a token whose delivery failed may come back only with the body it first
//! carried ([`Provider::covers_body`] is false).

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{
    check_window, hmac_matches, require_secrets, HmacSha256, Inbound, Keyring, OptionError,
    Provider, ProviderFactory, SignError, SignRequest, Signed, Verified, VerifyError,
};
use crate::body::{Body, BodyError, MediaType};
use crate::secret::Secret;

pub const NAME: &str = "mailgun";

pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Mailgun {
    secrets: Keyring<Secret>,
    tolerance: Duration,
}

pub use super::common::TimestampedOptions as Options;

impl ProviderFactory for Mailgun {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let tolerance = super::positive("tolerance", o.tolerance, DEFAULT_TOLERANCE, &mut errors);
        super::finish(Mailgun { secrets, tolerance }, errors)
    }
}

/// The three values Mailgun signs with, as they arrived.
#[derive(Debug, PartialEq, Eq)]
pub struct Material {
    pub timestamp: String,
    pub token: String,
    pub signature: String,
}

impl Provider for Mailgun {
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError> {
        let m = material(req.body)?.ok_or(VerifyError::MissingSignature)?;
        let timestamp = parse_timestamp(&m.timestamp).ok_or(VerifyError::MissingSignature)?;
        let expected = decode_signature(&m.signature).ok_or(VerifyError::MissingSignature)?;
        check_window(timestamp, now, self.tolerance)?;
        let parts: [&[u8]; 2] = [m.timestamp.as_bytes(), m.token.as_bytes()];
        let signers = self
            .secrets
            .verifying(|s| hmac_matches::<HmacSha256>(s.expose().as_bytes(), &parts, &expected));
        // Mailgun: "cache the token and refuse any subsequent request with the same token".
        Ok(signers
            .message(NAME, m.token.as_bytes())?
            .id(m.token)
            .signed_at(timestamp, now, self.tolerance))
    }

    fn covers_body(&self) -> bool {
        false
    }

    fn summary(&self) -> String {
        super::summary_window(self.secrets.len(), "tolerance", self.tolerance)
    }

    /// Adds a fresh `signature` object to a JSON body, or `timestamp`/`token`/`signature`
    /// fields to a form body (replacing any already there).
    fn sign(&self, req: &SignRequest<'_>, now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let timestamp = super::unix_now(now).to_string();
        let token = crate::random::hex_token(50);
        let signature = sign(secret.expose(), &timestamp, &token);
        let trimmed = req.body.trim_ascii();
        if trimmed.is_empty() || trimmed.starts_with(b"{") {
            let mut doc: serde_json::Map<String, serde_json::Value> = if trimmed.is_empty() {
                serde_json::Map::new()
            } else {
                serde_json::from_slice(trimmed)
                    .map_err(|e| SignError::Body(format!("the body is not a JSON object: {e}")))?
            };
            doc.insert(
                "signature".into(),
                serde_json::json!({"timestamp": timestamp, "token": token, "signature": signature}),
            );
            return Ok(Signed {
                headers: Vec::new(),
                content_type: "application/json".into(),
                body: serde_json::to_vec(&doc).map_err(|e| SignError::Body(e.to_string()))?,
                query: None,
            });
        }
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(trimmed) {
            if !matches!(k.as_ref(), "timestamp" | "token" | "signature") {
                form.append_pair(&k, &v);
            }
        }
        form.append_pair("timestamp", &timestamp)
            .append_pair("token", &token)
            .append_pair("signature", &signature);
        Ok(Signed {
            headers: Vec::new(),
            content_type: "application/x-www-form-urlencoded".into(),
            body: form.finish().into_bytes(),
            query: None,
        })
    }
}

/// Finds the signature material in a JSON, form or multipart body. Before the body is
/// authenticated its fields are parsed whole, bounded by `max_body_fields` (a body of more
/// fields is refused, `413`): the parse is kept for the normalizer, so an authentic body is
/// parsed once.
pub fn material(body: &Body) -> Result<Option<Material>, VerifyError> {
    Ok(match body.media() {
        MediaType::Json | MediaType::Missing => from_json(body.bytes()),
        MediaType::Form | MediaType::Multipart { .. } => {
            let fields = match body.fields() {
                Ok(fields) => fields,
                Err(e @ BodyError::TooManyFields(_)) => return Err(super::field_error(e)),
                // A multipart body that does not parse carries no signature to read.
                Err(_) => return Ok(None),
            };
            let get = |name: &str| fields.single_text(name).map(str::to_owned);
            (|| {
                Some(Material {
                    timestamp: get("timestamp")?,
                    token: get("token")?,
                    signature: get("signature")?,
                })
            })()
        }
        MediaType::Other => None,
    })
}

fn from_json(bytes: &[u8]) -> Option<Material> {
    #[derive(Deserialize)]
    struct Envelope {
        signature: JsonSignature,
    }
    #[derive(Deserialize)]
    struct JsonSignature {
        timestamp: StringOrNumber,
        token: String,
        signature: String,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrNumber {
        String(String),
        Number(serde_json::Number),
    }
    // Unknown fields (`event-data`) are skipped; a duplicated `signature` key is an error,
    // which leaves the request unsigned rather than ambiguous.
    let env: Envelope = serde_json::from_slice(bytes).ok()?;
    let timestamp = match env.signature.timestamp {
        StringOrNumber::String(s) => s,
        StringOrNumber::Number(n) => n.to_string(),
    };
    Some(Material {
        timestamp,
        token: env.signature.token,
        signature: env.signature.signature,
    })
}

/// Unix seconds, decimal digits only (what Mailgun sends; no sign, no fraction).
fn parse_timestamp(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A SHA-256 MAC in hex: 64 hex digits.
fn decode_signature(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    hex::decode(s).ok()
}

/// Signs `timestamp` + `token` as Mailgun does (for `hookguard sign` and tests).
pub fn sign(secret: &str, timestamp: &str, token: &str) -> String {
    hex::encode(super::hmac_sign::<HmacSha256>(
        secret.as_bytes(),
        &[timestamp.as_bytes(), token.as_bytes()],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;
    use std::time::UNIX_EPOCH;

    const KEY: &str = "key-test-signing";

    fn provider(secrets: &[&str]) -> Mailgun {
        Mailgun {
            secrets: Keyring::from_secrets(secrets.iter().map(|s| Secret::new(*s)).collect()),
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    fn at(ts: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    }

    fn check(p: &Mailgun, body: &str, ct: &str, now: i64) -> Result<Verified, VerifyError> {
        let headers = HeaderMap::new();
        let body = Body::new(Bytes::from(body.to_owned()), Some(ct));
        let req = Inbound {
            path_and_query: "/m",
            headers: &headers,
            body: &body,
            client_ip: None,
        };
        p.verify(&req, at(now))
    }

    fn json_body(ts: &str, token: &str, sig: &str) -> String {
        format!(
            r#"{{"signature":{{"timestamp":"{ts}","token":"{token}","signature":"{sig}"}},"event-data":{{"event":"delivered"}}}}"#
        )
    }

    #[test]
    fn json_form_and_number_timestamp() {
        let sig = sign(KEY, "1700000000", "tok1");
        let p = provider(&[KEY]);
        let v = check(
            &p,
            &json_body("1700000000", "tok1", &sig),
            "application/json",
            1_700_000_000,
        )
        .unwrap();
        assert_eq!(v.id, "tok1");
        assert_eq!(v.keys.len(), 1);
        assert_eq!(v.timestamp, Some(1_700_000_000));
        let form = format!("timestamp=1700000000&token=tok1&signature={sig}&event=opened");
        assert!(check(
            &p,
            &form,
            "application/x-www-form-urlencoded",
            1_700_000_000
        )
        .is_ok());
        let num = format!(
            r#"{{"signature":{{"timestamp":1700000000,"token":"tok1","signature":"{sig}"}}}}"#
        );
        assert!(check(&p, &num, "application/json", 1_700_000_000).is_ok());
    }

    #[test]
    fn rejections_in_contract_order() {
        let sig = sign(KEY, "1700000000", "tok1");
        let p = provider(&[KEY]);
        let ok = json_body("1700000000", "tok1", &sig);
        let ct = "application/json";
        assert_eq!(
            check(&p, "{}", ct, 1_700_000_000),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            check(&p, "not json", ct, 1_700_000_000),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            check(&p, &json_body("17e8", "tok1", &sig), ct, 1_700_000_000),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            check(
                &p,
                &json_body("1700000000", "tok1", "zz"),
                ct,
                1_700_000_000
            ),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            check(&p, &ok, ct, 1_700_000_301),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            check(&p, &ok, ct, 1_699_999_699),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            check(&provider(&["other"]), &ok, ct, 1_700_000_000),
            Err(VerifyError::BadSignature)
        );
        // The token is signed: swapping it breaks the signature.
        assert_eq!(
            check(
                &p,
                &json_body("1700000000", "tok2", &sig),
                ct,
                1_700_000_000
            ),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn any_secret_may_match() {
        let sig = sign("new-key", "1700000000", "t");
        let p = provider(&["old-key", "new-key"]);
        assert!(check(
            &p,
            &json_body("1700000000", "t", &sig),
            "application/json",
            1_700_000_000
        )
        .is_ok());
    }

    #[test]
    fn repeated_form_fields_are_not_trusted() {
        let sig = sign(KEY, "1700000000", "tok1");
        let form = format!("timestamp=1700000000&token=tok1&token=evil&signature={sig}");
        assert_eq!(
            check(
                &provider(&[KEY]),
                &form,
                "application/x-www-form-urlencoded",
                1_700_000_000
            ),
            Err(VerifyError::MissingSignature)
        );
    }
}
