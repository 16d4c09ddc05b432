//! Slack: `X-Slack-Signature: v0=<hex>`, HMAC-SHA256 of `v0:{ts}:{body}` under the app's
//! signing secret, with `X-Slack-Request-Timestamp: {ts}`. Tolerance 5 minutes, as Slack's SDK.
//!
//! Replay key: `{ts}.{signature}`, both signed.

use std::time::{Duration, SystemTime};

use super::{
    check_window, decode_hex, hmac_matches, hmac_sign, identity_of, parse_unix, positive,
    require_secrets, unix_now, HmacSha256, Inbound, Keyring, OptionError, Provider,
    ProviderFactory, SignError, SignRequest, Signed, Verified, VerifyError, FIVE_MINUTES,
};
use crate::secret::Secret;

pub const NAME: &str = "slack";
pub const SIGNATURE: &str = "x-slack-signature";
pub const TIMESTAMP: &str = "x-slack-request-timestamp";
/// slack_sdk `SignatureVerifier`: `abs(now - timestamp) > 60 * 5` fails.
pub const DEFAULT_TOLERANCE: Duration = FIVE_MINUTES;

#[derive(Debug)]
pub struct Slack {
    secrets: Keyring<Secret>,
    tolerance: Duration,
}

pub use super::common::TimestampedOptions as Options;

impl ProviderFactory for Slack {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let tolerance = positive("tolerance", o.tolerance, DEFAULT_TOLERANCE, &mut errors);
        super::finish(Slack { secrets, tolerance }, errors)
    }
}

impl Provider for Slack {
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError> {
        let sig = req
            .header(SIGNATURE)
            .and_then(|h| h.strip_prefix("v0="))
            .and_then(|h| decode_hex(h, 32))
            .ok_or(VerifyError::MissingSignature)?;
        let ts_text = req.header(TIMESTAMP).ok_or(VerifyError::MissingSignature)?;
        let ts = parse_unix(ts_text).ok_or(VerifyError::MissingSignature)?;
        check_window(ts, now, self.tolerance)?;
        let parts: [&[u8]; 4] = [b"v0:", ts_text.as_bytes(), b":", req.body.bytes()];
        let signers = self
            .secrets
            .verifying(|key| hmac_matches::<HmacSha256>(key.expose().as_bytes(), &parts, &sig));
        Ok(signers
            .message(NAME, &identity_of(&parts))?
            .id(format!("{ts}.{}", hex::encode(&sig)))
            .signed_at(ts, now, self.tolerance))
    }

    /// The application answers (a slash command or a challenge, TwiML, an interaction).
    fn needs_the_apps_answer(&self) -> bool {
        true
    }

    fn summary(&self) -> String {
        super::summary_window(self.secrets.len(), "tolerance", self.tolerance)
    }

    /// Slack posts JSON (Events API) or forms (slash commands, interactivity): a body that
    /// does not start with `{` is sent as a form.
    fn sign(&self, req: &SignRequest<'_>, now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let ts = unix_now(now).to_string();
        let json = req.body.trim_ascii().is_empty() || req.body.trim_ascii().starts_with(b"{");
        Ok(Signed {
            headers: vec![
                ("X-Slack-Request-Timestamp".into(), ts.clone()),
                (
                    "X-Slack-Signature".into(),
                    signature(secret.expose(), &ts, req.body),
                ),
            ],
            content_type: if json {
                "application/json".into()
            } else {
                "application/x-www-form-urlencoded".into()
            },
            body: req.body.to_vec(),
            query: None,
        })
    }
}

/// `v0=<hex>` for `body` at `ts`.
pub fn signature(secret: &str, ts: &str, body: &[u8]) -> String {
    let mac = hmac_sign::<HmacSha256>(secret.as_bytes(), &[b"v0:", ts.as_bytes(), b":", body]);
    format!("v0={}", hex::encode(mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const T: i64 = 1_531_420_618;
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&command=%2Fweather";

    fn provider(keys: &[&str]) -> Slack {
        Slack::from_options(Options {
            secrets: secrets(keys),
            tolerance: None,
        })
        .unwrap()
    }

    #[test]
    fn verdicts() {
        let p = provider(&["old", KEY]);
        let sig = signature(KEY, &T.to_string(), BODY);
        let ts = T.to_string();
        let r = |pairs: &[(&str, &str)], body: &[u8], now: i64| {
            check(&p, "/sl", pairs, None, body, now)
        };
        let ok = r(&[(SIGNATURE, &sig), (TIMESTAMP, &ts)], BODY, T).unwrap();
        assert_eq!(ok.id, format!("{T}.{}", &sig[3..]));
        assert_eq!(
            r(&[(TIMESTAMP, &ts)], BODY, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(SIGNATURE, &sig)], BODY, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(SIGNATURE, &sig), (TIMESTAMP, "12.5")], BODY, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(
                &[(SIGNATURE, &sig), (TIMESTAMP, &ts), (TIMESTAMP, &ts)],
                BODY,
                T
            ),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(SIGNATURE, &sig), (TIMESTAMP, &ts)], BODY, T + 301),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            r(&[(SIGNATURE, &sig), (TIMESTAMP, &ts)], BODY, T - 301),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            r(&[(SIGNATURE, &sig), (TIMESTAMP, &ts)], b"token=x", T),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/sl";
        let signed = sign_now(&p, url, BODY, T);
        assert_eq!(signed.content_type, "application/x-www-form-urlencoded");
        assert!(check_signed(&p, url, &signed, T).is_ok());
    }
}
