//! GitHub: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the body under the webhook
//! secret. GitHub signs no timestamp, so keys are remembered for `ttl` (default 24 h). The
//! legacy SHA-1 `X-Hub-Signature` is not accepted (it would be a downgrade).
//!
//! Message identity: the body, the only thing GitHub signs. `X-GitHub-Delivery` names a
//! delivery but is not signed, so it takes no part in the replay key (a captured request
//! resent without it, or under another GUID, is the same message); it reaches the app as an
//! ordinary header. `X-Webhook-Id`: the signature's hex.

use std::time::{Duration, SystemTime};

use super::{
    decode_hex, hmac_matches, hmac_sign, identity_of, positive, require_secrets, signed_json,
    HmacSha256, Inbound, Keyring, OptionError, Provider, ProviderFactory, SignError, SignRequest,
    Signed, Verified, VerifyError, DEFAULT_TTL,
};
use crate::secret::Secret;

pub const NAME: &str = "github";
pub const HEADER: &str = "x-hub-signature-256";
pub const DELIVERY: &str = "x-github-delivery";

#[derive(Debug)]
pub struct GitHub {
    secrets: Keyring<Secret>,
    ttl: Duration,
}

pub use super::common::UntimedOptions as Options;

impl ProviderFactory for GitHub {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let ttl = positive("ttl", o.ttl, DEFAULT_TTL, &mut errors);
        super::finish(GitHub { secrets, ttl }, errors)
    }
}

impl Provider for GitHub {
    fn verify(&self, req: &Inbound<'_>, _now: SystemTime) -> Result<Verified, VerifyError> {
        let header = req.header(HEADER).ok_or(VerifyError::MissingSignature)?;
        let sig = header
            .strip_prefix("sha256=")
            .and_then(|h| decode_hex(h, 32))
            .ok_or(VerifyError::MissingSignature)?;
        let body: [&[u8]; 1] = [req.body.bytes()];
        let signers = self
            .secrets
            .verifying(|key| hmac_matches::<HmacSha256>(key.expose().as_bytes(), &body, &sig));
        Ok(signers
            .message(NAME, &identity_of(&body))?
            .id(hex::encode(&sig))
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
                    "X-Hub-Signature-256".into(),
                    signature(secret.expose(), req.body),
                ),
                ("X-GitHub-Event".into(), "ping".into()),
                ("X-GitHub-Delivery".into(), uuid_like()),
            ],
            req.body,
        ))
    }
}

/// `sha256=<hex>` of `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sign::<HmacSha256>(secret.as_bytes(), &[body]))
    )
}

/// A fresh GUID-shaped delivery id.
fn uuid_like() -> String {
    let t = crate::random::hex_token(32);
    format!(
        "{}-{}-{}-{}-{}",
        &t[0..8],
        &t[8..12],
        &t[12..16],
        &t[16..20],
        &t[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";

    fn provider(keys: &[&str]) -> GitHub {
        GitHub::from_options(Options {
            secrets: secrets(keys),
            ttl: None,
        })
        .unwrap()
    }

    #[test]
    fn github_documentation_example() {
        // The example from GitHub's "Validating webhook deliveries" page.
        assert_eq!(
            signature(KEY, BODY),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn verdicts() {
        let p = provider(&["old", KEY]);
        let sig = signature(KEY, BODY);
        let ok = check(
            &p,
            "/g",
            &[(HEADER, &sig), (DELIVERY, "d-1")],
            None,
            BODY,
            0,
        )
        .unwrap();
        assert_eq!(ok.id, sig.trim_start_matches("sha256="));
        assert_eq!(ok.remember_for, DEFAULT_TTL);
        // The delivery id is not signed: without it, or with another, the same message.
        let no_id = check(&p, "/g", &[(HEADER, &sig)], None, BODY, 0).unwrap();
        assert_eq!((&no_id.id, &no_id.keys), (&ok.id, &ok.keys));
        let other = check(
            &p,
            "/g",
            &[(HEADER, &sig), (DELIVERY, "d-2")],
            None,
            BODY,
            0,
        );
        assert_eq!(other.unwrap().keys, ok.keys);
        let r = |pairs: &[(&str, &str)], body: &[u8]| check(&p, "/g", pairs, None, body, 0);
        assert_eq!(r(&[], BODY), Err(VerifyError::MissingSignature));
        assert_eq!(
            r(&[(HEADER, "sha1=abc")], BODY),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(HEADER, &sig), (HEADER, &sig)], BODY),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(HEADER, &sig), (DELIVERY, "a"), (DELIVERY, "b")], BODY)
                .unwrap()
                .keys,
            ok.keys
        );
        assert_eq!(
            r(&[(HEADER, &sig)], b"Hello"),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            check(&provider(&["x"]), "/g", &[(HEADER, &sig)], None, BODY, 0),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/g";
        let signed = sign_now(&p, url, b"{\"zen\":\"hi\"}", 5);
        assert!(check_signed(&p, url, &signed, 5).is_ok());
    }
}
