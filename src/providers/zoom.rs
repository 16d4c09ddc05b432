//! Zoom: `x-zm-signature: v0=<hex>`, HMAC-SHA256 of `v0:{ts}:{body}` under the app's secret
//! token, with `x-zm-request-timestamp: {ts}` (unix seconds).
//!
//! Zoom's `endpoint.url_validation` challenge (a signed request too) is answered here, as Zoom's
//! `@zoom/rivet` SDK does: `{"plainToken": ..., "encryptedToken": hex(HMAC-SHA256(secret,
//! plainToken))}` with the secret that verified the request. The upstream never sees it.
//!
//! Zoom's SDK checks no timestamp window; hookguard applies 5 minutes (`tolerance`), which a
//! live delivery always meets since Zoom signs each attempt when it sends it.
//!
//! Replay key: `{ts}.{signature}`.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{
    check_window, decode_hex, hmac_matches, hmac_sign, identity_of, parse_unix, positive,
    require_secrets, signed_json, unix_now, Answer, HmacSha256, Inbound, Keyring, OptionError,
    Provider, ProviderFactory, SignError, SignRequest, Signed, Verified, VerifyError, FIVE_MINUTES,
};
use crate::secret::Secret;

pub const NAME: &str = "zoom";
pub const SIGNATURE: &str = "x-zm-signature";
pub const TIMESTAMP: &str = "x-zm-request-timestamp";
pub const DEFAULT_TOLERANCE: Duration = FIVE_MINUTES;

#[derive(Debug)]
pub struct Zoom {
    secrets: Keyring<Secret>,
    tolerance: Duration,
}

pub use super::common::TimestampedOptions as Options;

impl ProviderFactory for Zoom {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let tolerance = positive("tolerance", o.tolerance, DEFAULT_TOLERANCE, &mut errors);
        super::finish(Zoom { secrets, tolerance }, errors)
    }
}

impl Provider for Zoom {
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError> {
        let sig = req
            .header(SIGNATURE)
            .and_then(|h| h.strip_prefix("v0="))
            .and_then(|h| decode_hex(h, 32))
            .ok_or(VerifyError::MissingSignature)?;
        let ts_text = req.header(TIMESTAMP).ok_or(VerifyError::MissingSignature)?;
        let ts = parse_unix(ts_text).ok_or(VerifyError::MissingSignature)?;
        check_window(ts, now, self.tolerance)?;
        let body = req.body.bytes();
        let parts: [&[u8]; 4] = [b"v0:", ts_text.as_bytes(), b":", body];
        let signers = self
            .secrets
            .verifying(|key| hmac_matches::<HmacSha256>(key.expose().as_bytes(), &parts, &sig));
        // The challenge is answered with the secret that verified it.
        let answer = signers
            .first()
            .and_then(|secret| url_validation(body, secret));
        Ok(signers
            .message(NAME, &identity_of(&parts))?
            .id(format!("{ts}.{}", hex::encode(&sig)))
            .signed_at(ts, now, self.tolerance)
            .answer(answer))
    }

    fn summary(&self) -> String {
        format!(
            "{} secret(s), tolerance {}, answers endpoint.url_validation",
            self.secrets.len(),
            humantime::format_duration(self.tolerance)
        )
    }

    fn sign(&self, req: &SignRequest<'_>, now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let ts = unix_now(now).to_string();
        Ok(signed_json(
            vec![
                ("x-zm-request-timestamp".into(), ts.clone()),
                (
                    "x-zm-signature".into(),
                    signature(secret.expose(), &ts, req.body),
                ),
            ],
            req.body,
        ))
    }
}

/// The answer to `{"event":"endpoint.url_validation","payload":{"plainToken":"..."}}`.
fn url_validation(body: &[u8], secret: &Secret) -> Option<Answer> {
    #[derive(Deserialize)]
    struct Event {
        event: String,
        payload: Payload,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Payload {
        plain_token: String,
    }
    let e: Event = serde_json::from_slice(body).ok()?;
    if e.event != "endpoint.url_validation" {
        return None;
    }
    let token = e.payload.plain_token;
    let encrypted = hex::encode(hmac_sign::<HmacSha256>(
        secret.expose().as_bytes(),
        &[token.as_bytes()],
    ));
    let body = serde_json::to_vec(&serde_json::json!({
        "plainToken": token,
        "encryptedToken": encrypted,
    }))
    .ok()?;
    Some(Answer {
        status: 200,
        content_type: "application/json",
        body,
    })
}

/// `v0=<hex>` for `body` at `ts`.
pub fn signature(secret: &str, ts: &str, body: &[u8]) -> String {
    let mac = hmac_sign::<HmacSha256>(secret.as_bytes(), &[b"v0:", ts.as_bytes(), b":", body]);
    format!("v0={}", hex::encode(mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "zoom-secret-token";
    const T: i64 = 1_700_000_000;
    const BODY: &[u8] =
        br#"{"event":"meeting.started","payload":{"object":{"id":"1"}},"event_ts":1700000000000}"#;

    fn provider(keys: &[&str]) -> Zoom {
        Zoom::from_options(Options {
            secrets: secrets(keys),
            tolerance: None,
        })
        .unwrap()
    }

    #[test]
    fn verdicts() {
        let p = provider(&["old", KEY]);
        let ts = T.to_string();
        let sig = signature(KEY, &ts, BODY);
        let r =
            |pairs: &[(&str, &str)], body: &[u8], now: i64| check(&p, "/z", pairs, None, body, now);
        let ok = r(&[(SIGNATURE, &sig), (TIMESTAMP, &ts)], BODY, T).unwrap();
        assert_eq!(ok.answer, None);
        assert_eq!(ok.id, format!("{T}.{}", &sig[3..]));
        assert_eq!(
            r(&[(TIMESTAMP, &ts)], BODY, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(SIGNATURE, &sig), (TIMESTAMP, &ts)], BODY, T + 301),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            r(&[(SIGNATURE, &sig), (TIMESTAMP, &ts)], b"{}", T),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn url_validation_is_answered_with_the_matching_secret() {
        let p = provider(&["old", KEY]);
        let body = br#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
        let ts = T.to_string();
        let sig = signature(KEY, &ts, body);
        let v = check(
            &p,
            "/z",
            &[(SIGNATURE, &sig), (TIMESTAMP, &ts)],
            None,
            body,
            T,
        )
        .unwrap();
        let answer = v.answer.unwrap();
        assert_eq!(
            (answer.status, answer.content_type),
            (200, "application/json")
        );
        let doc: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(doc["plainToken"], "qgg8vlvZRS6UYooatFL8Aw");
        let expected = hex::encode(hmac_sign::<HmacSha256>(
            KEY.as_bytes(),
            &[b"qgg8vlvZRS6UYooatFL8Aw"],
        ));
        assert_eq!(doc["encryptedToken"], expected.as_str());
        // Unsigned challenges are not answered.
        assert_eq!(
            check(
                &p,
                "/z",
                &[(SIGNATURE, &sig), (TIMESTAMP, &ts)],
                None,
                br#"{"event":"endpoint.url_validation","payload":{"plainToken":"x"}}"#,
                T
            ),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/z";
        let signed = sign_now(&p, url, BODY, T);
        assert!(check_signed(&p, url, &signed, T).is_ok());
    }
}
