//! Square: `x-square-hmacsha256-signature`, base64 HMAC-SHA256 of the notification URL followed
//! by the body, under the subscription's signature key: what the Square SDKs'
//! `WebhooksHelper` / `verify_signature` compute. `public_url` is the notification URL as
//! registered with Square, without the query (the request's own query string is appended).
//! No signed timestamp: keys are remembered for `ttl` (default 24 h). The legacy SHA-1
//! `x-square-signature` is not accepted.
//!
//! Message identity: the body's `event_id` (signed; Square keeps it across retries), else the
//! URL and body.

use std::time::{Duration, SystemTime};

use super::{
    base64, decode_base64, hmac_matches, hmac_sign, identity_of, json_member, positive,
    require_secrets, signed_json, HmacSha256, Inbound, Keyring, OptionError, Provider,
    ProviderFactory, PublicUrl, SignError, SignRequest, Signed, Verified, VerifyError, DEFAULT_TTL,
};
use crate::secret::Secret;

pub const NAME: &str = "square";
pub const HEADER: &str = "x-square-hmacsha256-signature";

#[derive(Debug)]
pub struct Square {
    secrets: Keyring<Secret>,
    public_url: PublicUrl,
    ttl: Duration,
}

pub use super::common::UrlSignedOptions as Options;

impl ProviderFactory for Square {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let public_url = PublicUrl::parse(o.public_url, &mut errors);
        let ttl = positive("ttl", o.ttl, DEFAULT_TTL, &mut errors);
        match public_url {
            Some(public_url) if errors.is_empty() => Ok(Square {
                secrets,
                public_url,
                ttl,
            }),
            _ => Err(errors),
        }
    }
}

impl Provider for Square {
    fn verify(&self, req: &Inbound<'_>, _now: SystemTime) -> Result<Verified, VerifyError> {
        let sig = req
            .header(HEADER)
            .and_then(|h| decode_base64(h.trim(), 32))
            .ok_or(VerifyError::MissingSignature)?;
        let url = self.public_url.for_request(req.path_and_query);
        let body = req.body.bytes();
        let parts: [&[u8]; 2] = [url.as_bytes(), body];
        let signers = self
            .secrets
            .verifying(|key| hmac_matches::<HmacSha256>(key.expose().as_bytes(), &parts, &sig));
        if signers.is_empty() {
            return Err(VerifyError::BadSignature);
        }
        let verified = match json_member(body, "event_id") {
            Some(id) => signers.message(NAME, id.as_bytes())?.id(id),
            None => signers
                .message(NAME, &identity_of(&parts))?
                .id(base64(&sig)),
        };
        Ok(verified.remember(self.ttl))
    }

    fn summary(&self) -> String {
        format!(
            "{} secret(s), public_url {}, ttl {}",
            self.secrets.len(),
            self.public_url.as_str(),
            humantime::format_duration(self.ttl)
        )
    }

    fn sign(&self, req: &SignRequest<'_>, _now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let url = self.public_url.for_request(req.url);
        Ok(signed_json(
            vec![(
                "x-square-hmacsha256-signature".into(),
                signature(secret.expose(), &url, req.body),
            )],
            req.body,
        ))
    }
}

/// The base64 signature of `body` delivered to `url`.
pub fn signature(secret: &str, url: &str, body: &[u8]) -> String {
    base64(&hmac_sign::<HmacSha256>(
        secret.as_bytes(),
        &[url.as_bytes(), body],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "signature-key";
    const URL: &str = "https://example.com/webhooks/square";
    const BODY: &[u8] = br#"{"merchant_id":"M1","type":"payment.updated","event_id":"e-1"}"#;

    fn provider(keys: &[&str]) -> Square {
        Square::from_options(Options {
            secrets: secrets(keys),
            public_url: Some(URL.into()),
            ttl: None,
        })
        .unwrap()
    }

    #[test]
    fn verdicts() {
        let p = provider(&["old", KEY]);
        let sig = signature(KEY, URL, BODY);
        let r =
            |path: &str, pairs: &[(&str, &str)], body: &[u8]| check(&p, path, pairs, None, body, 0);
        assert_eq!(r("/sq", &[(HEADER, &sig)], BODY).unwrap().id, "e-1");
        assert_eq!(
            r("/sq?x=1", &[(HEADER, &sig)], BODY),
            Err(VerifyError::BadSignature)
        );
        let with_query = signature(KEY, &format!("{URL}?x=1"), BODY);
        assert!(r("/sq?x=1", &[(HEADER, &with_query)], BODY).is_ok());
        assert_eq!(r("/sq", &[], BODY), Err(VerifyError::MissingSignature));
        assert_eq!(
            r("/sq", &[(HEADER, &sig), (HEADER, &sig)], BODY),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r("/sq", &[(HEADER, &sig)], b"{}"),
            Err(VerifyError::BadSignature)
        );
        assert!(Square::from_options(Options {
            secrets: secrets(&[KEY]),
            public_url: None,
            ttl: None
        })
        .is_err());
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/sq";
        let signed = sign_now(&p, url, BODY, 0);
        assert!(check_signed(&p, url, &signed, 0).is_ok());
    }
}
