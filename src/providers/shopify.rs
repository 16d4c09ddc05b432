//! Shopify: `X-Shopify-Hmac-Sha256`, base64 HMAC-SHA256 of the body under the app's client
//! secret. No signed timestamp: keys are remembered for `ttl` (default 24 h).
//!
//! Message identity: the body, the only thing Shopify signs. `X-Shopify-Webhook-Id` (kept
//! across retries) is not signed, so it takes no part in the replay key; it reaches the app
//! as an ordinary header. `X-Webhook-Id`: the signature (base64).

use std::time::{Duration, SystemTime};

use super::{
    base64, decode_base64, hmac_matches, hmac_sign, identity_of, positive, require_secrets,
    signed_json, HmacSha256, Inbound, Keyring, OptionError, Provider, ProviderFactory, SignError,
    SignRequest, Signed, Verified, VerifyError, DEFAULT_TTL,
};
use crate::secret::Secret;

pub const NAME: &str = "shopify";
pub const HEADER: &str = "x-shopify-hmac-sha256";
pub const WEBHOOK_ID: &str = "x-shopify-webhook-id";

#[derive(Debug)]
pub struct Shopify {
    secrets: Keyring<Secret>,
    ttl: Duration,
}

pub use super::common::UntimedOptions as Options;

impl ProviderFactory for Shopify {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let ttl = positive("ttl", o.ttl, DEFAULT_TTL, &mut errors);
        super::finish(Shopify { secrets, ttl }, errors)
    }
}

impl Provider for Shopify {
    fn verify(&self, req: &Inbound<'_>, _now: SystemTime) -> Result<Verified, VerifyError> {
        let header = req.header(HEADER).ok_or(VerifyError::MissingSignature)?;
        let sig = decode_base64(header.trim(), 32).ok_or(VerifyError::MissingSignature)?;
        let body: [&[u8]; 1] = [req.body.bytes()];
        let signers = self
            .secrets
            .verifying(|key| hmac_matches::<HmacSha256>(key.expose().as_bytes(), &body, &sig));
        Ok(signers
            .message(NAME, &identity_of(&body))?
            .id(base64(&sig))
            .remember(self.ttl))
    }

    fn summary(&self) -> String {
        super::summary_window(self.secrets.len(), "ttl", self.ttl)
    }

    fn sign(&self, req: &SignRequest<'_>, _now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        Ok(signed_json(
            vec![
                (
                    "X-Shopify-Hmac-Sha256".into(),
                    signature(secret.expose(), req.body),
                ),
                ("X-Shopify-Topic".into(), "orders/create".into()),
                ("X-Shopify-Webhook-Id".into(), crate::random::hex_token(32)),
            ],
            req.body,
        ))
    }
}

/// The base64 signature of `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    base64(&hmac_sign::<HmacSha256>(secret.as_bytes(), &[body]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "shpss_secret";
    const BODY: &[u8] = br#"{"id":820982911946154508}"#;

    fn provider(keys: &[&str]) -> Shopify {
        Shopify::from_options(Options {
            secrets: secrets(keys),
            ttl: Some(Duration::from_secs(60)),
        })
        .unwrap()
    }

    #[test]
    fn verdicts() {
        let p = provider(&["old", KEY]);
        let sig = signature(KEY, BODY);
        let ok = check(
            &p,
            "/s",
            &[(HEADER, &sig), (WEBHOOK_ID, "w1")],
            None,
            BODY,
            0,
        )
        .unwrap();
        assert_eq!(
            (ok.id.as_str(), ok.remember_for),
            (sig.as_str(), Duration::from_secs(60))
        );
        let r = |pairs: &[(&str, &str)], body: &[u8]| check(&p, "/s", pairs, None, body, 0);
        // The webhook id is not signed: without it, the same message.
        let no_id = r(&[(HEADER, &sig)], BODY).unwrap();
        assert_eq!((&no_id.id, &no_id.keys), (&ok.id, &ok.keys));
        assert_eq!(r(&[], BODY), Err(VerifyError::MissingSignature));
        assert_eq!(
            r(&[(HEADER, "not base64!")], BODY),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(HEADER, &sig), (HEADER, &sig)], BODY),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(r(&[(HEADER, &sig)], b"{}"), Err(VerifyError::BadSignature));
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/s";
        let signed = sign_now(&p, url, BODY, 5);
        assert!(check_signed(&p, url, &signed, 5).is_ok());
    }
}
