//! Discord interactions: Ed25519 over `{timestamp}{body}` with the application's public key
//! (`public_key`, hex as the Developer Portal shows it; a list while rotating). Signature in
//! `X-Signature-Ed25519` (hex), timestamp in `X-Signature-Timestamp`. Verified strictly
//! (`verify_strict`: no malleable signatures, no weak keys). PING (`type: 1`) is verified and
//! forwarded like any interaction: the application answers PONG as before.
//!
//! The `discord-interactions` libraries check no timestamp window; hookguard applies 5 minutes
//! (`tolerance`), far more than Discord's 3-second answer deadline.
//!
//! Message identity: the interaction's `id` from the signed body, else `{timestamp}{body}`
//! (shown as `{timestamp}.{signature}`).

use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signature, VerifyingKey};

use super::{
    check_window, decode_hex, identity_of, json_member, parse_unix, positive, Inbound, Keyring,
    OptionError, Provider, ProviderFactory, Verified, VerifyError, FIVE_MINUTES,
};

pub const NAME: &str = "discord";
pub const SIGNATURE: &str = "x-signature-ed25519";
pub const TIMESTAMP: &str = "x-signature-timestamp";
pub const DEFAULT_TOLERANCE: Duration = FIVE_MINUTES;

#[derive(Debug)]
pub struct Discord {
    keys: Keyring<VerifyingKey>,
    tolerance: Duration,
}

pub use super::common::PublicKeyOptions as Options;

/// An Ed25519 public key in hex.
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = decode_hex(text.trim(), 32)?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

impl ProviderFactory for Discord {
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
                "must be the application's public key: 64 hex digits",
            ));
        }
        let tolerance = positive("tolerance", o.tolerance, DEFAULT_TOLERANCE, &mut errors);
        let keys = Keyring::new(keys, |k| k.as_bytes().to_vec());
        super::finish(Discord { keys, tolerance }, errors)
    }
}

impl Provider for Discord {
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError> {
        let sig_bytes: [u8; 64] = req
            .header(SIGNATURE)
            .and_then(|h| decode_hex(h, 64))
            .and_then(|b| b.try_into().ok())
            .ok_or(VerifyError::MissingSignature)?;
        let sig = Signature::from_bytes(&sig_bytes);
        let ts_text = req.header(TIMESTAMP).ok_or(VerifyError::MissingSignature)?;
        let ts = parse_unix(ts_text).ok_or(VerifyError::MissingSignature)?;
        check_window(ts, now, self.tolerance)?;
        let body = req.body.bytes();
        let mut message = Vec::with_capacity(ts_text.len() + body.len());
        message.extend_from_slice(ts_text.as_bytes());
        message.extend_from_slice(body);
        let signers = self
            .keys
            .verifying(|k| k.verify_strict(&message, &sig).is_ok());
        if signers.is_empty() {
            return Err(VerifyError::BadSignature);
        }
        let verified = match json_member(body, "id") {
            Some(id) => signers.message(NAME, id.as_bytes())?.id(id),
            None => signers
                .message(NAME, &identity_of(&[ts_text.as_bytes(), body]))?
                .id(format!("{ts}.{}", hex::encode(sig_bytes))),
        };
        Ok(verified.signed_at(ts, now, self.tolerance))
    }

    /// The application answers (a slash command or a challenge, TwiML, an interaction).
    fn needs_the_apps_answer(&self) -> bool {
        true
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
    use ed25519_dalek::{Signer, SigningKey};

    const T: i64 = 1_700_000_000;
    const PING: &[u8] =
        br#"{"application_id":"1","id":"1180000000000000000","type":1,"token":"t","version":1}"#;

    fn key(seed: u8) -> (SigningKey, String) {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let pk = hex::encode(sk.verifying_key().as_bytes());
        (sk, pk)
    }

    #[test]
    fn verdicts() {
        let (sk, pk) = key(1);
        let (_, other) = key(2);
        let ts = T.to_string();
        let sig = hex::encode(sk.sign(&[ts.as_bytes(), PING].concat()).to_bytes());
        let p = Discord::from_options(Options {
            public_key: OneOrMany(vec![other.clone(), pk]),
            tolerance: None,
        })
        .unwrap();
        let r =
            |pairs: &[(&str, &str)], body: &[u8], now: i64| check(&p, "/d", pairs, None, body, now);
        let ok = r(&[(SIGNATURE, &sig), (TIMESTAMP, &ts)], PING, T).unwrap();
        assert_eq!(ok.id, "1180000000000000000");
        assert_eq!(
            r(&[(TIMESTAMP, &ts)], PING, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(SIGNATURE, "00"), (TIMESTAMP, &ts)], PING, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(SIGNATURE, &sig), (TIMESTAMP, &ts)], PING, T - 301),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            r(&[(SIGNATURE, &sig), (TIMESTAMP, &ts)], b"{}", T),
            Err(VerifyError::BadSignature)
        );
        let only_other = Discord::from_options(Options {
            public_key: OneOrMany(vec![other]),
            tolerance: None,
        })
        .unwrap();
        assert_eq!(
            check(
                &only_other,
                "/d",
                &[(SIGNATURE, &sig), (TIMESTAMP, &ts)],
                None,
                PING,
                T
            ),
            Err(VerifyError::BadSignature)
        );
        assert!(Discord::from_options(Options {
            public_key: OneOrMany(vec!["zz".into()]),
            tolerance: None
        })
        .is_err());
    }
}
