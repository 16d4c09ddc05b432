//! `basic_auth`: for senders that sign nothing and authenticate with HTTP Basic credentials in
//! the webhook URL (Postmark, SparkPost, Brevo, Mailjet, ...). `username` is the user name;
//! `secrets` are the accepted passwords (several while rotating). Both are compared in
//! constant time, over SHA-256 digests so that not even their lengths leak.
//!
//! There is no signature over the body and no timestamp: anyone who holds the credentials, or
//! sees one request, can send any body. Use it only over TLS, and prefer a signing provider
//! when the sender offers one.
//!
//! Message identity: the body (nothing else can name a message that nothing signs), so the
//! same body is delivered once per `ttl` (default 24 h), under the password that admitted it.
//! The `Authorization` header is consumed here and never forwarded. `id_header` is refused: a
//! delivery id header would be one more value anyone holding the credentials can change.

pub const NAME: &str = "basic_auth";

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::{
    base64, identity_of, positive, require_secrets, sha256_hex, Inbound, Keyring, OptionError,
    Provider, ProviderFactory, SignError, SignRequest, Signed, Verified, VerifyError, DEFAULT_TTL,
};
use crate::secret::{Secret, Secrets};

#[derive(Debug)]
pub struct BasicAuth {
    username: String,
    secrets: Keyring<Secret>,
    ttl: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    username: Option<String>,
    /// The accepted passwords.
    secrets: Secrets,
    id_header: Option<String>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
}

impl ProviderFactory for BasicAuth {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let username = o.username.unwrap_or_default();
        if username.is_empty() || username.contains(':') {
            errors.push(OptionError::new(
                "username",
                "required: a non-empty user name without `:`",
            ));
        }
        if o.id_header.is_some() {
            errors.push(OptionError::new(
                "id_header",
                "no longer used: a basic_auth message is named by its body (a header anyone \
                 holding the password can set would let the same message through again)",
            ));
        }
        let ttl = positive("ttl", o.ttl, DEFAULT_TTL, &mut errors);
        super::finish(
            BasicAuth {
                username,
                secrets,
                ttl,
            },
            errors,
        )
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    bool::from(sha2::Sha256::digest(a).ct_eq(&sha2::Sha256::digest(b)))
}

/// The user name and password of a `Basic` `Authorization` header.
pub fn credentials(header: &str) -> Option<(String, String)> {
    use base64::Engine;
    let (scheme, b64) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl Provider for BasicAuth {
    fn verify(&self, req: &Inbound<'_>, _now: SystemTime) -> Result<Verified, VerifyError> {
        let (user, password) = req
            .header("authorization")
            .and_then(credentials)
            .ok_or(VerifyError::MissingSignature)?;
        let user_ok = same(user.as_bytes(), self.username.as_bytes());
        // Every password is compared, so the time taken does not tell which one matched.
        let signers = self
            .secrets
            .verifying(|s| same(password.as_bytes(), s.expose().as_bytes()));
        if !user_ok {
            return Err(VerifyError::BadSignature);
        }
        let body = req.body.bytes();
        Ok(signers
            .message(NAME, &identity_of(&[body]))?
            .id(sha256_hex(body))
            .remember(self.ttl))
    }

    /// The credentials are hookguard's to check, not the application's to see.
    fn consumed_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn summary(&self) -> String {
        format!(
            "user {}, {} password(s), replay key sha256(body), ttl {}",
            self.username,
            self.secrets.len(),
            humantime::format_duration(self.ttl)
        )
    }

    fn sign(&self, req: &SignRequest<'_>, _now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let auth = base64(format!("{}:{}", self.username, secret.expose()).as_bytes());
        let headers = vec![("Authorization".into(), format!("Basic {auth}"))];
        let trimmed = req.body.trim_ascii();
        let json = trimmed.is_empty() || trimmed.starts_with(b"{") || trimmed.starts_with(b"[");
        Ok(Signed {
            headers,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const BODY: &[u8] = br#"{"RecordType":"Delivery","MessageID":"m1"}"#;

    fn provider(passwords: &[&str], id_header: Option<&str>) -> BasicAuth {
        BasicAuth::from_options(Options {
            username: Some("postmark".into()),
            secrets: secrets(passwords),
            id_header: id_header.map(str::to_owned),
            ttl: None,
        })
        .unwrap()
    }

    fn auth(user: &str, pass: &str) -> String {
        format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()))
    }

    #[test]
    fn verdicts() {
        let p = provider(&["old", "s3cret"], None);
        let r = |pairs: &[(&str, &str)]| check(&p, "/b", pairs, None, BODY, 0);
        let ok = r(&[("Authorization", &auth("postmark", "s3cret"))]).unwrap();
        assert_eq!(ok.id, sha256_hex(BODY));
        assert_eq!(ok.remember_for, DEFAULT_TTL);
        assert!(r(&[(
            "authorization",
            &auth("postmark", "old").replace("Basic", "basic")
        )])
        .is_ok());
        assert_eq!(r(&[]), Err(VerifyError::MissingSignature));
        assert_eq!(
            r(&[("Authorization", "Bearer abc")]),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[("Authorization", "Basic !!")]),
            Err(VerifyError::MissingSignature)
        );
        let good = auth("postmark", "s3cret");
        assert_eq!(
            r(&[("Authorization", &good), ("Authorization", &good)]),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[("Authorization", &auth("postmark", "s3cre"))]),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            r(&[("Authorization", &auth("other", "s3cret"))]),
            Err(VerifyError::BadSignature)
        );
        assert!(!p.summary().contains("s3cret"));
    }

    #[test]
    fn id_header_is_refused_and_sign_round_trips() {
        let refused = BasicAuth::from_options(Options {
            username: Some("postmark".into()),
            secrets: secrets(&["s3cret"]),
            id_header: Some("X-Delivery-Id".into()),
            ttl: None,
        });
        assert_eq!(
            refused
                .err()
                .map(|e| e.iter().map(|e| e.key).collect::<Vec<_>>()),
            Some(vec!["id_header"])
        );
        let p = provider(&["s3cret"], None);
        assert_eq!(p.consumed_headers(), ["authorization"]);
        let url = "http://127.0.0.1:1/b";
        let signed = sign_now(&p, url, BODY, 0);
        assert!(check_signed(&p, url, &signed, 0).is_ok());
    }
}
