//! Intercom: `X-Hub-Signature: sha1=<hex>`, HMAC-SHA1 of the body under the app's client
//! secret (Intercom's "Webhooks: signed notifications"). No signed timestamp: keys are
//! remembered for `ttl` (default 24 h).
//!
//! Replay key: the notification's `id` (`notif_...`) from the signed body, which Intercom keeps
//! on retries; else the signature.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{
    any_secret, decode_hex, first_secret, hmac_matches, hmac_sign, json_member, positive,
    require_secrets, signed_json, HmacSha1, Inbound, OptionError, Provider, ProviderFactory,
    Rejection, SignError, SignRequest, Signed, Verified, DEFAULT_TTL,
};
use crate::config::secret::{Secret, Secrets};

pub const HEADER: &str = "x-hub-signature";

#[derive(Debug)]
pub struct Intercom {
    secrets: Vec<Secret>,
    ttl: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    secrets: Secrets,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
}

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
    fn verify(&self, req: &Inbound<'_>, _now: SystemTime) -> Result<Verified, Rejection> {
        let header = req.header(HEADER).ok_or(Rejection::MissingSignature)?;
        let sig = header
            .strip_prefix("sha1=")
            .and_then(|h| decode_hex(h, 20))
            .ok_or(Rejection::MissingSignature)?;
        let body: [&[u8]; 1] = [req.body.bytes()];
        any_secret(&self.secrets, |key| {
            hmac_matches::<HmacSha1>(key, &body, &sig)
        })
        .ok_or(Rejection::BadSignature)?;
        Ok(Verified {
            replay_key: json_member(req.body.bytes(), "id").unwrap_or_else(|| hex::encode(&sig)),
            timestamp: None,
            remember_for: self.ttl,
            answer: None,
            signed_key: None,
        })
    }

    fn summary(&self) -> String {
        super::summary_window(self.secrets.len(), "ttl", self.ttl)
    }

    fn sign(&self, req: &SignRequest<'_>, _now: SystemTime) -> Result<Signed, SignError> {
        let secret = first_secret(&self.secrets)?;
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
        assert_eq!(r(&[(HEADER, &sig)], BODY).unwrap().replay_key, "notif_1");
        let other = br#"{"x":1}"#;
        let sig2 = signature(KEY, other);
        assert_eq!(r(&[(HEADER, &sig2)], other).unwrap().replay_key, &sig2[5..]);
        assert_eq!(r(&[], BODY), Err(Rejection::MissingSignature));
        assert_eq!(
            r(&[(HEADER, &sig[5..])], BODY),
            Err(Rejection::MissingSignature)
        );
        assert_eq!(
            r(&[(HEADER, &sig), (HEADER, &sig)], BODY),
            Err(Rejection::MissingSignature)
        );
        assert_eq!(r(&[(HEADER, &sig)], other), Err(Rejection::BadSignature));
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/i";
        let signed = sign_now(&p, url, BODY, 5);
        assert!(check_signed(&p, url, &signed, 5).is_ok());
    }
}
