//! Paddle Billing: `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>...]`, HMAC-SHA256 of
//! `{ts}:{body}` under the notification destination's secret key (`pdl_ntfset_...`). Every `h1`
//! and every secret is tried. As Paddle's SDKs, an unknown key in the header makes it
//! unusable, and the default tolerance is Paddle's own: 5 seconds (`tolerance` widens it).
//!
//! Message identity: the body's `notification_id` (signed; kept across Paddle's retries), else
//! its `event_id`, else `{ts}:{body}` (shown as `{ts}.{h1}`).

use std::time::{Duration, SystemTime};

use super::{
    check_window, decode_hex, hmac_matches, hmac_sign, identity_of, json_member, parse_unix,
    positive, require_secrets, signed_json, unix_now, HmacSha256, Inbound, Keyring, OptionError,
    Provider, ProviderFactory, SignError, SignRequest, Signed, Verified, VerifyError,
};
use crate::secret::Secret;

pub const NAME: &str = "paddle";
pub const HEADER: &str = "paddle-signature";
/// `Verifier(maximum_variance=5)` in paddle-python-sdk, `MAX_VALID_TIME_DIFFERENCE = 5` in Node.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Paddle {
    secrets: Keyring<Secret>,
    tolerance: Duration,
}

pub use super::common::TimestampedOptions as Options;

impl ProviderFactory for Paddle {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let tolerance = positive("tolerance", o.tolerance, DEFAULT_TOLERANCE, &mut errors);
        super::finish(Paddle { secrets, tolerance }, errors)
    }
}

/// `ts` exactly once and at least one well-formed `h1`.
pub fn parse_header(value: &str) -> Option<(&str, i64, Vec<Vec<u8>>)> {
    let mut ts = None;
    let mut h1 = Vec::new();
    for item in value.split(';') {
        let (k, v) = item.split_once('=')?;
        match k.trim() {
            "ts" if ts.is_none() => ts = Some((v, parse_unix(v)?)),
            "h1" => h1.extend(decode_hex(v, 32)),
            _ => return None,
        }
    }
    let (text, ts) = ts?;
    (!h1.is_empty()).then_some((text, ts, h1))
}

impl Provider for Paddle {
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError> {
        let header = req.header(HEADER).ok_or(VerifyError::MissingSignature)?;
        let (ts_text, ts, signatures) =
            parse_header(header).ok_or(VerifyError::MissingSignature)?;
        check_window(ts, now, self.tolerance)?;
        let body = req.body.bytes();
        let parts: [&[u8]; 3] = [ts_text.as_bytes(), b":", body];
        let (signers, shown) = self.secrets.verifying_any(&signatures, |key, sig| {
            hmac_matches::<HmacSha256>(key.expose().as_bytes(), &parts, sig)
        });
        if signers.is_empty() {
            return Err(VerifyError::BadSignature);
        }
        let verified =
            match json_member(body, "notification_id").or_else(|| json_member(body, "event_id")) {
                Some(id) => signers.message(NAME, id.as_bytes())?.id(id),
                None => signers.message(NAME, &identity_of(&parts))?.id(format!(
                    "{ts}.{}",
                    shown.map(hex::encode).unwrap_or_default()
                )),
            };
        Ok(verified.signed_at(ts, now, self.tolerance))
    }

    fn summary(&self) -> String {
        super::summary_window(self.secrets.len(), "tolerance", self.tolerance)
    }

    fn sign(&self, req: &SignRequest<'_>, now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let ts = unix_now(now);
        Ok(signed_json(
            vec![(
                "Paddle-Signature".into(),
                header_for(secret.expose(), ts, req.body),
            )],
            req.body,
        ))
    }
}

/// `ts=..;h1=..` for `body` signed at `ts`.
pub fn header_for(secret: &str, ts: i64, body: &[u8]) -> String {
    let ts_text = ts.to_string();
    let mac = hmac_sign::<HmacSha256>(secret.as_bytes(), &[ts_text.as_bytes(), b":", body]);
    format!("ts={ts};h1={}", hex::encode(mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "pdl_ntfset_01gkpjp8bkm3tm53kdgkx6sms7_6h3qd3uFSi9Ym5ofJnTPPrTqp9Cl4nm6";
    const T: i64 = 1_671_552_777;
    const BODY: &[u8] =
        br#"{"event_id":"evt_01","notification_id":"ntf_01","event_type":"transaction.paid"}"#;

    fn provider(keys: &[&str]) -> Paddle {
        Paddle::from_options(Options {
            secrets: secrets(keys),
            tolerance: None,
        })
        .unwrap()
    }

    #[test]
    fn verdicts() {
        let p = provider(&["old", KEY]);
        let h = header_for(KEY, T, BODY);
        let r = |h: &str, body: &[u8], now: i64| check(&p, "/p", &[(HEADER, h)], None, body, now);
        assert_eq!(r(&h, BODY, T).unwrap().id, "ntf_01");
        let rotated = format!("{h};h1={}", "ab".repeat(32));
        assert!(r(&rotated, BODY, T + 5).is_ok());
        assert_eq!(r(&h, BODY, T + 6), Err(VerifyError::StaleTimestamp));
        assert_eq!(r(&h, BODY, T - 6), Err(VerifyError::StaleTimestamp));
        assert_eq!(
            r(&format!("{h};h2=00"), BODY, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(r("ts=1", BODY, T), Err(VerifyError::MissingSignature));
        assert_eq!(r(&h, b"{}", T), Err(VerifyError::BadSignature));
        let body2 = br#"{"x":1}"#;
        let h2 = header_for(KEY, T, body2);
        assert_eq!(
            r(&h2, body2, T).unwrap().id,
            format!("{T}.{}", h2.split("h1=").nth(1).unwrap())
        );
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/p";
        let signed = sign_now(&p, url, BODY, T);
        assert!(check_signed(&p, url, &signed, T).is_ok());
    }
}
