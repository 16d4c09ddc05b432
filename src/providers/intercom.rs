//! Intercom: `X-Hub-Signature: sha1=<hex>`, HMAC-SHA1 of the body under the app's client
//! secret (Intercom's "Webhooks: signed notifications"). No signed timestamp: keys are
//! remembered for `ttl` (default 24 h).
//!
//! Message identity: the notification's `id` (`notif_...`) from the signed body, which Intercom
//! keeps on retries; else the body.

use std::time::{Duration, SystemTime};

use super::{
    decode_hex, hmac_matches, hmac_sign, identity_of, json_member, positive, require_secrets,
    signed_json, HmacSha1, Inbound, Keyring, OptionError, Provider, ProviderFactory, SignError,
    SignRequest, Signed, Verified, VerifyError, DEFAULT_TTL,
};
use crate::secret::Secret;

pub const NAME: &str = "intercom";
pub const HEADER: &str = "x-hub-signature";

#[derive(Debug)]
pub struct Intercom {
    secrets: Keyring<Secret>,
    ttl: Duration,
}

pub use super::common::UntimedOptions as Options;

impl ProviderFactory for Intercom {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let ttl = positive("ttl", o.ttl, DEFAULT_TTL, &mut errors);
        super::finish(Intercom { secrets, ttl }, errors)
    }
}

impl Provider for Intercom {
    fn verify(&self, req: &Inbound<'_>, _now: SystemTime) -> Result<Verified, VerifyError> {
        let header = req.header(HEADER).ok_or(VerifyError::MissingSignature)?;
        let sig = header
            .strip_prefix("sha1=")
            .and_then(|h| decode_hex(h, 20))
            .ok_or(VerifyError::MissingSignature)?;
        let body: [&[u8]; 1] = [req.body.bytes()];
        let signers = self
            .secrets
            .verifying(|key| hmac_matches::<HmacSha1>(key.expose().as_bytes(), &body, &sig));
        if signers.is_empty() {
            return Err(VerifyError::BadSignature);
        }
        let verified = match json_member(req.body.bytes(), "id") {
            Some(id) => signers.message(NAME, id.as_bytes())?.id(id),
            None => signers
                .message(NAME, &identity_of(&body))?
                .id(hex::encode(&sig)),
        };
        Ok(verified.remember(self.ttl))
    }

    fn summary(&self) -> String {
        super::summary_window(self.secrets.len(), "ttl", self.ttl)
    }

    fn sign(&self, req: &SignRequest<'_>, _now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        Ok(signed_json(
            vec![(
                "X-Hub-Signature".into(),
                signature(secret.expose(), req.body),
            )],
            req.body,
        ))
    }
}

/// `sha1=<hex>` of `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha1={}",
        hex::encode(hmac_sign::<HmacSha1>(secret.as_bytes(), &[body]))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "intercom-client-secret";
    const BODY: &[u8] = br#"{"type":"notification_event","id":"notif_1","topic":"ping"}"#;

    fn provider(keys: &[&str]) -> Intercom {
        Intercom::from_options(Options {
            secrets: secrets(keys),
            ttl: None,
        })
        .unwrap()
    }

    #[test]
    fn verdicts() {
        let p = provider(&["old", KEY]);
        let sig = signature(KEY, BODY);
        let r = |pairs: &[(&str, &str)], body: &[u8]| check(&p, "/i", pairs, None, body, 0);
        assert_eq!(r(&[(HEADER, &sig)], BODY).unwrap().id, "notif_1");
        let other = br#"{"x":1}"#;
        let sig2 = signature(KEY, other);
        assert_eq!(r(&[(HEADER, &sig2)], other).unwrap().id, &sig2[5..]);
        assert_eq!(r(&[], BODY), Err(VerifyError::MissingSignature));
        assert_eq!(
            r(&[(HEADER, &sig[5..])], BODY),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(HEADER, &sig), (HEADER, &sig)], BODY),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(r(&[(HEADER, &sig)], other), Err(VerifyError::BadSignature));
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/i";
        let signed = sign_now(&p, url, BODY, 5);
        assert!(check_signed(&p, url, &signed, 5).is_ok());
    }
}
