//! Twitch EventSub: `Twitch-Eventsub-Message-Signature: sha256=<hex>`, HMAC-SHA256 of
//! message id + timestamp + body under the subscription's secret, with
//! `Twitch-Eventsub-Message-Id` and `Twitch-Eventsub-Message-Timestamp` (RFC 3339). Twitch
//! documents a 10-minute window.
//!
//! Replay key: the message id, which is signed; Twitch resends a message with the same id.
//! The `webhook_callback_verification` challenge is forwarded: the application answers it as
//! before.

use std::time::{Duration, SystemTime};

use super::{
    check_window, decode_hex, hmac_matches, hmac_sign, positive, require_secrets, signed_json,
    unix_now, HmacSha256, Inbound, Keyring, OptionError, Provider, ProviderFactory, SignError,
    SignRequest, Signed, Verified, VerifyError,
};
use crate::secret::Secret;

pub const ID: &str = "twitch-eventsub-message-id";
pub const TIMESTAMP: &str = "twitch-eventsub-message-timestamp";
pub const NAME: &str = "twitch";
pub const SIGNATURE: &str = "twitch-eventsub-message-signature";
/// "Verify that the message is not older than 10 minutes."
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct Twitch {
    secrets: Keyring<Secret>,
    tolerance: Duration,
}

pub use super::common::TimestampedOptions as Options;

impl ProviderFactory for Twitch {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let tolerance = positive("tolerance", o.tolerance, DEFAULT_TOLERANCE, &mut errors);
        super::finish(Twitch { secrets, tolerance }, errors)
    }
}

impl Provider for Twitch {
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError> {
        let sig = req
            .header(SIGNATURE)
            .and_then(|h| h.strip_prefix("sha256="))
            .and_then(|h| decode_hex(h, 32))
            .ok_or(VerifyError::MissingSignature)?;
        let id = req
            .header(ID)
            .filter(|id| !id.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let ts_text = req.header(TIMESTAMP).ok_or(VerifyError::MissingSignature)?;
        let ts = humantime::parse_rfc3339(ts_text)
            .map(unix_now)
            .map_err(|_| VerifyError::MissingSignature)?;
        check_window(ts, now, self.tolerance)?;
        let parts: [&[u8]; 3] = [id.as_bytes(), ts_text.as_bytes(), req.body.bytes()];
        let signers = self
            .secrets
            .verifying(|key| hmac_matches::<HmacSha256>(key.expose().as_bytes(), &parts, &sig));
        // The message id is signed and kept across Twitch's retries.
        Ok(signers
            .message(NAME, id.as_bytes())?
            .id(id)
            .signed_at(ts, now, self.tolerance))
    }

    fn summary(&self) -> String {
        super::summary_window(self.secrets.len(), "tolerance", self.tolerance)
    }

    fn sign(&self, req: &SignRequest<'_>, now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let id = crate::random::hex_token(32);
        let ts = humantime::format_rfc3339_nanos(now).to_string();
        Ok(signed_json(
            vec![
                ("Twitch-Eventsub-Message-Id".into(), id.clone()),
                ("Twitch-Eventsub-Message-Timestamp".into(), ts.clone()),
                ("Twitch-Eventsub-Message-Type".into(), "notification".into()),
                (
                    "Twitch-Eventsub-Message-Signature".into(),
                    signature(secret.expose(), &id, &ts, req.body),
                ),
            ],
            req.body,
        ))
    }
}

/// `sha256=<hex>` of id + timestamp + body.
pub fn signature(secret: &str, id: &str, ts: &str, body: &[u8]) -> String {
    let mac = hmac_sign::<HmacSha256>(secret.as_bytes(), &[id.as_bytes(), ts.as_bytes(), body]);
    format!("sha256={}", hex::encode(mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "twitch-subscription-secret";
    const TS: &str = "2023-11-14T22:13:20.123456789Z";
    const T: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"subscription":{"type":"channel.follow"},"event":{"user_id":"1"}}"#;

    fn provider(keys: &[&str]) -> Twitch {
        Twitch::from_options(Options {
            secrets: secrets(keys),
            tolerance: None,
        })
        .unwrap()
    }

    #[test]
    fn verdicts() {
        let p = provider(&["old", KEY]);
        let sig = signature(KEY, "m-1", TS, BODY);
        let r = |pairs: &[(&str, &str)], body: &[u8], now: i64| {
            check(&p, "/tw", pairs, None, body, now)
        };
        let all = [(ID, "m-1"), (TIMESTAMP, TS), (SIGNATURE, sig.as_str())];
        let ok = r(&all, BODY, T).unwrap();
        assert_eq!((ok.id.as_str(), ok.timestamp), ("m-1", Some(T)));
        assert!(r(&all, BODY, T + 600).is_ok());
        assert_eq!(r(&all, BODY, T + 601), Err(VerifyError::StaleTimestamp));
        assert_eq!(r(&all, BODY, T - 601), Err(VerifyError::StaleTimestamp));
        assert_eq!(r(&all[..2], BODY, T), Err(VerifyError::MissingSignature));
        assert_eq!(
            r(
                &[(ID, "m-1"), (TIMESTAMP, "yesterday"), (SIGNATURE, &sig)],
                BODY,
                T
            ),
            Err(VerifyError::MissingSignature)
        );
        // The id is signed: a new id for a captured message does not verify.
        assert_eq!(
            r(&[(ID, "m-2"), (TIMESTAMP, TS), (SIGNATURE, &sig)], BODY, T),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(r(&all, b"{}", T), Err(VerifyError::BadSignature));
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/tw";
        let signed = sign_now(&p, url, BODY, T);
        assert!(check_signed(&p, url, &signed, T).is_ok());
    }
}
