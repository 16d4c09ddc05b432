//! SendGrid (Twilio SendGrid Event Webhook): ECDSA P-256 with SHA-256 over
//! `{timestamp}{body}`, signature in `X-Twilio-Email-Event-Webhook-Signature` (base64 DER),
//! timestamp in `X-Twilio-Email-Event-Webhook-Timestamp`. Verified with the public key SendGrid
//! shows (`public_key`: base64 DER, or PEM; a list while rotating). SendGrid signs with its own
//! private key, so `hookguard sign` cannot sign for it, and there are no `secrets`.
//!
//! SendGrid's SDKs check no timestamp window; hookguard applies 5 minutes (`tolerance`).
//!
//! Message identity: `{timestamp}{body}`, what is signed, so every valid signature of one
//! message (ECDSA signatures are randomized; a malleable twin s → n − s, another DER spelling)
//! names the same message. `X-Webhook-Id`: `{timestamp}.{signature}`, the signature in its
//! low-S fixed-size form.

use std::time::{Duration, SystemTime};

use p256::ecdsa::signature::DigestVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use sha2::Digest;

use super::{
    base64, check_window, identity_of, parse_unix, positive, Inbound, Keyring, OptionError,
    Provider, ProviderFactory, Verified, VerifyError, FIVE_MINUTES,
};

pub const NAME: &str = "sendgrid";
pub const SIGNATURE: &str = "x-twilio-email-event-webhook-signature";
pub const TIMESTAMP: &str = "x-twilio-email-event-webhook-timestamp";
pub const DEFAULT_TOLERANCE: Duration = FIVE_MINUTES;

#[derive(Debug)]
pub struct SendGrid {
    keys: Keyring<VerifyingKey>,
    tolerance: Duration,
}

pub use super::common::PublicKeyOptions as Options;

/// A P-256 public key from base64 DER (SubjectPublicKeyInfo) or PEM.
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    use base64::Engine;
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    VerifyingKey::from_public_key_der(&der).ok()
}

impl ProviderFactory for SendGrid {
    type Options = Options;
    const SECRET_OPTIONS: &'static [&'static str] = &["public_key"];

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let keys: Vec<VerifyingKey> = o
            .public_key
            .0
            .iter()
            .filter_map(|k| parse_public_key(k))
            .collect();
        if o.public_key.0.is_empty() || keys.len() != o.public_key.0.len() {
            errors.push(OptionError::new(
                "public_key",
                "must be SendGrid's verification key: a base64 DER (or PEM) P-256 public key",
            ));
        }
        let tolerance = positive("tolerance", o.tolerance, DEFAULT_TOLERANCE, &mut errors);
        let keys = Keyring::new(keys, |k| k.to_encoded_point(true).as_bytes().to_vec());
        super::finish(SendGrid { keys, tolerance }, errors)
    }
}

impl Provider for SendGrid {
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError> {
        let sig = req
            .header(SIGNATURE)
            .and_then(|h| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(h.trim())
                    .ok()
            })
            .and_then(|der| Signature::from_der(&der).ok())
            .ok_or(VerifyError::MissingSignature)?;
        let ts_text = req.header(TIMESTAMP).ok_or(VerifyError::MissingSignature)?;
        let ts = parse_unix(ts_text).ok_or(VerifyError::MissingSignature)?;
        check_window(ts, now, self.tolerance)?;
        let digest = sha2::Sha256::new()
            .chain_update(ts_text.as_bytes())
            .chain_update(req.body.bytes());
        let signers = self
            .keys
            .verifying(|k| k.verify_digest(digest.clone(), &sig).is_ok());
        let canonical = sig.normalize_s().unwrap_or(sig);
        let parts: [&[u8]; 2] = [ts_text.as_bytes(), req.body.bytes()];
        Ok(signers
            .message(NAME, &identity_of(&parts))?
            .id(format!("{ts}.{}", base64(&canonical.to_bytes())))
            .signed_at(ts, now, self.tolerance))
    }

    fn summary(&self) -> String {
        format!(
            "{} public key(s), tolerance {}",
            self.keys.len(),
            humantime::format_duration(self.tolerance)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::one_or_many::OneOrMany;
    use crate::providers::testing::*;
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey;

    const T: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"[{"email":"a@example.com","event":"processed","sg_event_id":"e1"}]"#;

    fn keypair(seed: u8) -> (SigningKey, String) {
        let sk = SigningKey::from_slice(&[seed; 32]).unwrap();
        let der = sk.verifying_key().to_public_key_der().unwrap();
        (sk, base64(der.as_bytes()))
    }

    fn sign(sk: &SigningKey, ts: &str, body: &[u8]) -> Signature {
        let digest = sha2::Sha256::new()
            .chain_update(ts)
            .chain_update(body)
            .finalize();
        sk.sign_prehash(&digest).unwrap()
    }

    fn provider(keys: &[&str]) -> SendGrid {
        SendGrid::from_options(Options {
            public_key: OneOrMany(keys.iter().map(|k| k.to_string()).collect()),
            tolerance: None,
        })
        .unwrap()
    }

    #[test]
    fn verdicts_and_malleability() {
        let (sk, pk) = keypair(7);
        let (_, other) = keypair(9);
        let ts = T.to_string();
        let sig = sign(&sk, &ts, BODY);
        let der = base64(sig.to_der().as_bytes());
        let p = provider(&[&other, &pk]);
        let r = |pairs: &[(&str, &str)], body: &[u8], now: i64| {
            check(&p, "/sg", pairs, None, body, now)
        };
        let ok = r(&[(SIGNATURE, &der), (TIMESTAMP, &ts)], BODY, T).unwrap();
        // The high-S twin verifies too, and names the same delivery.
        let (r_, s_) = sig.split_scalars();
        let twin = Signature::from_scalars(r_, -*s_).unwrap();
        let twin_der = base64(twin.to_der().as_bytes());
        assert_ne!(twin_der, der);
        let ok2 = r(&[(SIGNATURE, &twin_der), (TIMESTAMP, &ts)], BODY, T).unwrap();
        assert_eq!(ok.id, ok2.id);
        assert_eq!(
            r(&[(TIMESTAMP, &ts)], BODY, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(SIGNATURE, "bm90IGRlcg=="), (TIMESTAMP, &ts)], BODY, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(SIGNATURE, &der), (TIMESTAMP, &ts)], BODY, T + 301),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            r(&[(SIGNATURE, &der), (TIMESTAMP, &ts)], b"[]", T),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            check(
                &provider(&[&other]),
                "/sg",
                &[(SIGNATURE, &der), (TIMESTAMP, &ts)],
                None,
                BODY,
                T
            ),
            Err(VerifyError::BadSignature)
        );
        // No signing for a provider that signs with its private key.
        assert!(matches!(
            p.sign(
                &crate::providers::SignRequest {
                    body: b"",
                    url: "http://x/"
                },
                at(T)
            ),
            Err(crate::providers::SignError::Unsupported)
        ));
    }

    #[test]
    fn key_must_parse() {
        let e = SendGrid::from_options(Options {
            public_key: OneOrMany(vec!["abc".into()]),
            tolerance: None,
        })
        .unwrap_err();
        assert_eq!(e[0].key, "public_key");
    }
}
