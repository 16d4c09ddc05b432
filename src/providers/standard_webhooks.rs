//! Standard Webhooks (and Svix, its origin): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature` headers (or the same with `svix-`), the signature being a
//! space-separated list of `v1,<base64>`: HMAC-SHA256 of `{id}.{timestamp}.{body}` under the
//! base64 key of a `whsec_...` secret. Every `v1` entry and every secret is tried; other
//! versions (`v1a`, asymmetric) are skipped, as the reference libraries do. Tolerance 5 minutes
//! both ways, as the libraries.
//!
//! Message identity: `webhook-id`, which is signed and kept across retries.

use std::time::{Duration, SystemTime};

use super::{
    base64, check_window, hmac_matches, hmac_sign, parse_unix, positive, signed_json, unix_now,
    HmacSha256, Inbound, KeyBytes, Keyring, OptionError, Provider, ProviderFactory, SignError,
    SignRequest, Signed, Verified, VerifyError, FIVE_MINUTES,
};

pub const NAME: &str = "standard_webhooks";
pub const DEFAULT_TOLERANCE: Duration = FIVE_MINUTES;

#[derive(Debug)]
pub struct StandardWebhooks {
    keys: Keyring<KeyBytes>,
    tolerance: Duration,
}

pub use super::common::TimestampedOptions as Options;

/// The key bytes of a `whsec_` secret.
pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (!key.is_empty()).then_some(key)
}

impl ProviderFactory for StandardWebhooks {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let mut keys = Vec::new();
        for s in &o.secrets.0 {
            match decode_secret(s.expose()) {
                Some(k) => keys.push(KeyBytes(k)),
                None => {
                    errors.push(OptionError::new(
                        "secrets",
                        "each secret must be `whsec_` followed by base64 (as the provider shows it)",
                    ));
                    break;
                }
            }
        }
        if o.secrets.0.is_empty() {
            errors.push(OptionError::new("secrets", "at least one secret is needed"));
        }
        let tolerance = positive("tolerance", o.tolerance, DEFAULT_TOLERANCE, &mut errors);
        let keys = Keyring::new(keys, |k| k.0.clone());
        super::finish(StandardWebhooks { keys, tolerance }, errors)
    }
}

/// The three headers, all from one family: `svix-*` when `svix-id` is there (as the svix
/// library prefers them), else `webhook-*`.
fn headers<'a>(req: &'a Inbound<'_>) -> Option<(&'a str, &'a str, &'a str)> {
    let family = if req.headers.contains_key("svix-id") {
        "svix"
    } else {
        "webhook"
    };
    let get = |suffix: &str| req.header(&format!("{family}-{suffix}"));
    Some((get("id")?, get("timestamp")?, get("signature")?))
}

impl Provider for StandardWebhooks {
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError> {
        let (id, ts_text, sig_header) = headers(req).ok_or(VerifyError::MissingSignature)?;
        if id.is_empty() {
            return Err(VerifyError::MissingSignature);
        }
        let ts = parse_unix(ts_text).ok_or(VerifyError::MissingSignature)?;
        let signatures: Vec<Vec<u8>> = sig_header
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| super::decode_base64(b64, 32))
            .collect();
        if signatures.is_empty() {
            return Err(VerifyError::MissingSignature);
        }
        check_window(ts, now, self.tolerance)?;
        let parts: [&[u8]; 5] = [
            id.as_bytes(),
            b".",
            ts_text.as_bytes(),
            b".",
            req.body.bytes(),
        ];
        let (signers, _) = self.keys.verifying_any(&signatures, |k, sig| {
            hmac_matches::<HmacSha256>(&k.0, &parts, sig)
        });
        Ok(signers
            .message(NAME, id.as_bytes())?
            .id(id)
            .signed_at(ts, now, self.tolerance))
    }

    fn summary(&self) -> String {
        super::summary_window(self.keys.len(), "tolerance", self.tolerance)
    }

    fn sign(&self, req: &SignRequest<'_>, now: SystemTime) -> Result<Signed, SignError> {
        let key = self.keys.first()?;
        let id = format!("msg_{}", crate::random::hex_token(27));
        let ts = unix_now(now).to_string();
        Ok(signed_json(
            vec![
                ("webhook-id".into(), id.clone()),
                ("webhook-timestamp".into(), ts.clone()),
                (
                    "webhook-signature".into(),
                    signature(&key.0, &id, &ts, req.body),
                ),
            ],
            req.body,
        ))
    }
}

/// `v1,<base64>` for a message.
pub fn signature(key: &[u8], id: &str, ts: &str, body: &[u8]) -> String {
    let mac = hmac_sign::<HmacSha256>(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", base64(&mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const T: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    fn provider(keys: &[&str]) -> StandardWebhooks {
        StandardWebhooks::from_options(Options {
            secrets: secrets(keys),
            tolerance: None,
        })
        .unwrap()
    }

    #[test]
    fn reference_library_example() {
        // The example in the Standard Webhooks specification and the svix libraries' tests.
        let key = decode_secret(KEY).unwrap();
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", BODY),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn verdicts() {
        let p = provider(&["whsec_b2xk", KEY]);
        let ts = T.to_string();
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let r =
            |pairs: &[(&str, &str)], body: &[u8], now: i64| check(&p, "/w", pairs, None, body, now);
        let ok = r(
            &[
                ("webhook-id", id),
                ("webhook-timestamp", &ts),
                ("webhook-signature", sig),
            ],
            BODY,
            T,
        )
        .unwrap();
        assert_eq!(ok.id, id);
        // svix-* headers, and several signatures of which one matches.
        let multi = format!("v1a,abc v1,{} {sig}", base64(&[0u8; 32]));
        assert!(r(
            &[
                ("svix-id", id),
                ("svix-timestamp", &ts),
                ("svix-signature", &multi)
            ],
            BODY,
            T
        )
        .is_ok());
        assert_eq!(
            r(&[("webhook-id", id), ("webhook-timestamp", &ts)], BODY, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(
                &[
                    ("webhook-id", id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", "v1,@@")
                ],
                BODY,
                T
            ),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(
                &[
                    ("webhook-id", id),
                    ("webhook-id", "msg_2"),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", sig)
                ],
                BODY,
                T
            ),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(
                &[
                    ("webhook-id", id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", sig)
                ],
                BODY,
                T + 301
            ),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            r(
                &[
                    ("webhook-id", id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", sig)
                ],
                BODY,
                T - 301
            ),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            r(
                &[
                    ("webhook-id", "msg_other"),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", sig)
                ],
                BODY,
                T
            ),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn secrets_must_be_base64() {
        let e = StandardWebhooks::from_options(Options {
            secrets: secrets(&["whsec_not base64!"]),
            tolerance: None,
        })
        .unwrap_err();
        assert_eq!(e[0].key, "secrets");
        assert!(!e[0].message.contains("not base64!"));
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/w";
        let signed = sign_now(&p, url, BODY, T);
        let v = check_signed(&p, url, &signed, T).unwrap();
        assert!(v.id.starts_with("msg_"));
        assert!(!format!("{p:?}").contains("MfKQ9r8"));
    }
}
