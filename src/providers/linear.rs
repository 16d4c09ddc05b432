//! Linear: `Linear-Signature: <hex>`, HMAC-SHA256 of the body under the webhook's signing
//! secret. The timestamp is the body's own `webhookTimestamp` (milliseconds), which is signed;
//! as `@linear/sdk`'s `LinearWebhookClient.verify`, it must lie within 60 seconds of now (the
//! unsigned `Linear-Timestamp` header is not trusted).
//!
//! Message identity: the body (it holds the signed `webhookTimestamp`); the `Linear-Delivery`
//! header is not signed and takes no part. `X-Webhook-Id`: `{webhookTimestamp}.{signature}`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    decode_hex, hmac_matches, hmac_sign, identity_of, json_member, parse_unix, positive,
    require_secrets, HmacSha256, Inbound, Keyring, OptionError, Provider, ProviderFactory,
    SignError, SignRequest, Signed, Verified, VerifyError,
};
use crate::secret::Secret;

pub const NAME: &str = "linear";
pub const HEADER: &str = "linear-signature";
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Linear {
    secrets: Keyring<Secret>,
    tolerance: Duration,
}

pub use super::common::TimestampedOptions as Options;

impl ProviderFactory for Linear {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let tolerance = positive("tolerance", o.tolerance, DEFAULT_TOLERANCE, &mut errors);
        super::finish(Linear { secrets, tolerance }, errors)
    }
}

fn unix_millis(now: SystemTime) -> i128 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    }
}

impl Provider for Linear {
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError> {
        let sig = req
            .header(HEADER)
            .and_then(|h| decode_hex(h, 32))
            .ok_or(VerifyError::MissingSignature)?;
        let body = req.body.bytes();
        let ts_ms = json_member(body, "webhookTimestamp")
            .and_then(|t| parse_unix(&t))
            .ok_or(VerifyError::MissingSignature)?;
        if (unix_millis(now) - ts_ms as i128).unsigned_abs() > self.tolerance.as_millis() {
            return Err(VerifyError::StaleTimestamp);
        }
        let parts: [&[u8]; 1] = [body];
        let signers = self
            .secrets
            .verifying(|key| hmac_matches::<HmacSha256>(key.expose().as_bytes(), &parts, &sig));
        let ts = ts_ms / 1000;
        let mut verified = signers
            .message(NAME, &identity_of(&parts))?
            .id(format!("{ts_ms}.{}", hex::encode(&sig)))
            .signed_at(ts, now, self.tolerance);
        // The window is checked in milliseconds: remember past the second it ends in.
        verified.remember_for = super::remember_until_stale(ts + 1, now, self.tolerance);
        Ok(verified)
    }

    fn summary(&self) -> String {
        super::summary_window(self.secrets.len(), "tolerance", self.tolerance)
    }

    /// Sets the body's `webhookTimestamp` to now, then signs it.
    fn sign(&self, req: &SignRequest<'_>, now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let trimmed = req.body.trim_ascii();
        let mut doc: serde_json::Map<String, serde_json::Value> = if trimmed.is_empty() {
            serde_json::Map::new()
        } else {
            serde_json::from_slice(trimmed)
                .map_err(|e| SignError::Body(format!("the body is not a JSON object: {e}")))?
        };
        doc.insert(
            "webhookTimestamp".into(),
            serde_json::Value::from(unix_millis(now) as i64),
        );
        let body = serde_json::to_vec(&doc).map_err(|e| SignError::Body(e.to_string()))?;
        Ok(Signed {
            headers: vec![
                ("Linear-Signature".into(), signature(secret.expose(), &body)),
                ("Linear-Delivery".into(), crate::random::hex_token(32)),
            ],
            content_type: "application/json".into(),
            body,
            query: None,
        })
    }
}

/// The hex signature of `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    hex::encode(hmac_sign::<HmacSha256>(secret.as_bytes(), &[body]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "lin_wh_secret";
    const T: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"action":"create","type":"Issue","webhookTimestamp":1700000000500}"#;

    fn provider(keys: &[&str]) -> Linear {
        Linear::from_options(Options {
            secrets: secrets(keys),
            tolerance: None,
        })
        .unwrap()
    }

    #[test]
    fn verdicts() {
        let p = provider(&["old", KEY]);
        let sig = signature(KEY, BODY);
        let r =
            |pairs: &[(&str, &str)], body: &[u8], now: i64| check(&p, "/l", pairs, None, body, now);
        let ok = r(&[(HEADER, &sig)], BODY, T).unwrap();
        assert_eq!(ok.id, format!("1700000000500.{sig}"));
        assert_eq!(ok.timestamp, Some(T));
        assert!(r(&[(HEADER, &sig)], BODY, T + 60).is_ok());
        assert_eq!(
            r(&[(HEADER, &sig)], BODY, T + 61),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            r(&[(HEADER, &sig)], BODY, T - 60),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(r(&[], BODY, T), Err(VerifyError::MissingSignature));
        let no_ts = br#"{"action":"create"}"#;
        assert_eq!(
            r(&[(HEADER, &signature(KEY, no_ts))], no_ts, T),
            Err(VerifyError::MissingSignature)
        );
        let tampered = br#"{"action":"remove","type":"Issue","webhookTimestamp":1700000000500}"#;
        assert_eq!(
            r(&[(HEADER, &sig)], tampered, T),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/l";
        let signed = sign_now(&p, url, br#"{"action":"create"}"#, T);
        assert!(check_signed(&p, url, &signed, T).is_ok());
    }
}
