//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, HMAC-SHA256 of `{t}.{body}` under
//! the endpoint's signing secret (`whsec_...`, used as is). Every `v1` is tried (Stripe sends
//! several while a secret is being rolled), and so is every secret of the route. Other schemes
//! (`v0`, test-mode extras) are ignored, as Stripe's libraries do.
//!
//! Message identity: `{t}.{body}`, what the signature covers (a retry is signed anew, so it is
//! a new message; a captured request replayed within the window is the same one). One replay
//! key per secret that verified it, so neither the order of the `v1` entries nor dropping one
//! makes a copy look new. `X-Webhook-Id`: `{t}.{v1}`, the smallest matching `v1`.

use std::time::{Duration, SystemTime};

use super::{
    check_window, decode_hex, hmac_matches, hmac_sign, identity_of, json_member, parse_unix,
    positive, require_secrets, signed_json, unix_now, HmacSha256, Inbound, Keyring, OptionError,
    Provider, ProviderFactory, SignError, SignRequest, Signed, Verified, VerifyError,
};
use crate::body::Body;
use crate::secret::Secret;

pub const NAME: &str = "stripe";
pub const HEADER: &str = "stripe-signature";
/// Stripe's libraries: `DEFAULT_TOLERANCE = 300`.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Stripe {
    secrets: Keyring<Secret>,
    tolerance: Duration,
}

pub use super::common::TimestampedOptions as Options;

impl ProviderFactory for Stripe {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let tolerance = positive("tolerance", o.tolerance, DEFAULT_TOLERANCE, &mut errors);
        super::finish(Stripe { secrets, tolerance }, errors)
    }
}

/// The parts of a `Stripe-Signature` header: `t` exactly once, and the `v1` signatures.
pub fn parse_header(value: &str) -> Option<(i64, Vec<Vec<u8>>)> {
    let mut t = None;
    let mut v1 = Vec::new();
    for item in value.split(',') {
        let (k, v) = item.trim().split_once('=')?;
        match k {
            "t" if t.is_none() => t = Some(parse_unix(v)?),
            "t" => return None,
            // A malformed `v1` can never match; the others may.
            "v1" => v1.extend(decode_hex(v, 32)),
            _ => {}
        }
    }
    if v1.is_empty() {
        return None;
    }
    Some((t?, v1))
}

impl Provider for Stripe {
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError> {
        let header = req.header(HEADER).ok_or(VerifyError::MissingSignature)?;
        let (t, signatures) = parse_header(header).ok_or(VerifyError::MissingSignature)?;
        check_window(t, now, self.tolerance)?;
        let t_text = t.to_string();
        let body = req.body.bytes();
        let parts: [&[u8]; 3] = [t_text.as_bytes(), b".", body];
        let (signers, shown) = self.secrets.verifying_any(&signatures, |key, sig| {
            hmac_matches::<HmacSha256>(key.expose().as_bytes(), &parts, sig)
        });
        Ok(signers
            .message(NAME, &identity_of(&parts))?
            .id(format!(
                "{t}.{}",
                shown.map(hex::encode).unwrap_or_default()
            ))
            .signed_at(t, now, self.tolerance))
    }

    /// Each retry is signed anew (a new `t`: a new message); the event's id in the signed body
    /// stays the same.
    fn event_id(&self, body: &Body) -> Option<String> {
        json_member(body.bytes(), "id")
    }

    fn summary(&self) -> String {
        super::summary_window(self.secrets.len(), "tolerance", self.tolerance)
    }

    fn sign(&self, req: &SignRequest<'_>, now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let t = unix_now(now);
        Ok(signed_json(
            vec![(
                "Stripe-Signature".into(),
                header_for(secret.expose(), t, req.body),
            )],
            req.body,
        ))
    }
}

/// `t=..,v1=..` for `body` signed at `t` (for `hookguard sign` and tests).
pub fn header_for(secret: &str, t: i64, body: &[u8]) -> String {
    let t_text = t.to_string();
    let mac = hmac_sign::<HmacSha256>(secret.as_bytes(), &[t_text.as_bytes(), b".", body]);
    format!("t={t},v1={}", hex::encode(mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "whsec_test_secret";
    const T: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"charge.succeeded"}"#;

    fn provider(keys: &[&str]) -> Stripe {
        Stripe::from_options(Options {
            secrets: secrets(keys),
            tolerance: None,
        })
        .unwrap()
    }

    fn run(p: &Stripe, header: &str, body: &[u8], now: i64) -> Result<Verified, VerifyError> {
        check(
            p,
            "/s",
            &[("Stripe-Signature", header)],
            Some("application/json"),
            body,
            now,
        )
    }

    #[test]
    fn valid_rotated_and_replay_key() {
        let h = header_for(KEY, T, BODY);
        let v = run(&provider(&[KEY]), &h, BODY, T).unwrap();
        assert_eq!(v.timestamp, Some(T));
        assert_eq!(v.id, format!("{T}.{}", h.split("v1=").nth(1).unwrap()));
        // A second v1 (an old secret's) and a v0 are tolerated; the key is the matching v1.
        let good = h.split("v1=").nth(1).unwrap();
        let multi = format!("t={T},v1={},v1={good},v0=abc", "0".repeat(64));
        let v2 = run(&provider(&["other", KEY]), &multi, BODY, T).unwrap();
        assert_eq!(v2.id, v.id);
    }

    #[test]
    fn rejections_in_contract_order() {
        let p = provider(&[KEY]);
        let h = header_for(KEY, T, BODY);
        assert_eq!(run(&p, "", BODY, T), Err(VerifyError::MissingSignature));
        assert_eq!(run(&p, "t=1", BODY, T), Err(VerifyError::MissingSignature));
        assert_eq!(
            run(&p, "t=x,v1=00", BODY, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            run(&p, &format!("t={T},v1=zz"), BODY, T),
            Err(VerifyError::MissingSignature)
        );
        let two_t = format!("t={T},{h}");
        assert_eq!(run(&p, &two_t, BODY, T), Err(VerifyError::MissingSignature));
        assert_eq!(run(&p, &h, BODY, T + 301), Err(VerifyError::StaleTimestamp));
        assert_eq!(run(&p, &h, BODY, T - 301), Err(VerifyError::StaleTimestamp));
        assert_eq!(run(&p, &h, b"{}", T), Err(VerifyError::BadSignature));
        assert_eq!(
            run(&provider(&["nope"]), &h, BODY, T),
            Err(VerifyError::BadSignature)
        );
        let dup = check(
            &p,
            "/s",
            &[("Stripe-Signature", &h), ("Stripe-Signature", &h)],
            None,
            BODY,
            T,
        );
        assert_eq!(dup, Err(VerifyError::MissingSignature));
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:8080/s";
        let signed = sign_now(&p, url, BODY, T);
        let v = check_signed(&p, url, &signed, T).unwrap();
        assert_eq!(v.timestamp, Some(T));
        assert!(!p.summary().contains(KEY));
    }
}
