//! `basic_auth`: for senders that sign nothing and authenticate with HTTP Basic credentials in
//! the webhook URL (Postmark, SparkPost, Brevo, Mailjet, ...). `username` is the user name;
//! `secrets` are the accepted passwords (several while rotating). Both are compared in
//! constant time, over SHA-256 digests so that not even their lengths leak.
//!
//! There is no signature over the body and no timestamp: anyone who holds the credentials, or
//! sees one request, can send any body. Use it only over TLS, and prefer a signing provider
//! when the sender offers one.
//!
//! Replay key: the `id_header` value when configured (e.g. a sender's delivery id header),
//! else the SHA-256 of the body, so the same body is delivered once per `ttl` (default 24 h).

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::{
    base64, first_secret, positive, require_secrets, sha256_hex, Inbound, OptionError, Provider,
    ProviderFactory, Rejection, SignError, SignRequest, Signed, Verified, DEFAULT_TTL,
};
use crate::config::secret::{Secret, Secrets};

#[derive(Debug)]
pub struct BasicAuth {
    username: String,
    secrets: Vec<Secret>,
    id_header: Option<http::HeaderName>,
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
        let id_header = match o.id_header {
            None => None,
            Some(h) => match http::HeaderName::from_bytes(h.trim().as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    errors.push(OptionError::new(
                        "id_header",
                        format!("`{h}` is not a header name"),
                    ));
                    None
                }
            },
        };
        let ttl = positive("ttl", o.ttl, DEFAULT_TTL, &mut errors);
        super::finish(
            BasicAuth {
                username,
                secrets,
                id_header,
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
    fn verify(&self, req: &Inbound<'_>, _now: SystemTime) -> Result<Verified, Rejection> {
        let (user, password) = req
            .header("authorization")
            .and_then(credentials)
            .ok_or(Rejection::MissingSignature)?;
        let id = match &self.id_header {
            Some(h) => Some(
                req.header(h.as_str())
                    .filter(|v| !v.is_empty())
                    .ok_or(Rejection::MissingSignature)?,
            ),
            None => None,
        };
        let user_ok = same(user.as_bytes(), self.username.as_bytes());
        // Every password is compared, so the time taken does not tell which one matched.
        let password_ok = self.secrets.iter().fold(false, |ok, s| {
            same(password.as_bytes(), s.expose().as_bytes()) | ok
        });
        if !(user_ok && password_ok) {
            return Err(Rejection::BadSignature);
        }
        Ok(Verified {
            replay_key: id.map_or_else(|| sha256_hex(req.body.bytes()), str::to_owned),
            timestamp: None,
            remember_for: self.ttl,
            answer: None,
            signed_key: None,
        })
    }

    fn summary(&self) -> String {
        format!(
            "user {}, {} password(s), replay key {}, ttl {}",
            self.username,
            self.secrets.len(),
            self.id_header
                .as_ref()
                .map_or_else(|| "sha256(body)".to_owned(), |h| h.to_string()),
            humantime::format_duration(self.ttl)
        )
    }

    fn sign(&self, req: &SignRequest<'_>, _now: SystemTime) -> Result<Signed, SignError> {
        let secret = first_secret(&self.secrets)?;
        let auth = base64(format!("{}:{}", self.username, secret.expose()).as_bytes());
        let mut headers = vec![("Authorization".into(), format!("Basic {auth}"))];
        if let Some(h) = &self.id_header {
            headers.push((h.to_string(), super::fresh_token(32)));
        }
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
        assert_eq!(ok.replay_key, sha256_hex(BODY));
        assert_eq!(ok.remember_for, DEFAULT_TTL);
        assert!(r(&[(
            "authorization",
            &auth("postmark", "old").replace("Basic", "basic")
        )])
        .is_ok());
        assert_eq!(r(&[]), Err(Rejection::MissingSignature));
        assert_eq!(
            r(&[("Authorization", "Bearer abc")]),
            Err(Rejection::MissingSignature)
        );
        assert_eq!(
            r(&[("Authorization", "Basic !!")]),
            Err(Rejection::MissingSignature)
        );
        let good = auth("postmark", "s3cret");
        assert_eq!(
            r(&[("Authorization", &good), ("Authorization", &good)]),
            Err(Rejection::MissingSignature)
        );
        assert_eq!(
            r(&[("Authorization", &auth("postmark", "s3cre"))]),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            r(&[("Authorization", &auth("other", "s3cret"))]),
            Err(Rejection::BadSignature)
        );
        assert!(!p.summary().contains("s3cret"));
    }

    #[test]
    fn id_header_and_sign() {
        let p = provider(&["s3cret"], Some("X-Delivery-Id"));
        let good = auth("postmark", "s3cret");
        let v = check(
            &p,
            "/b",
            &[("Authorization", &good), ("X-Delivery-Id", "d-9")],
            None,
            BODY,
            0,
        )
        .unwrap();
        assert_eq!(v.replay_key, "d-9");
        assert_eq!(
            check(&p, "/b", &[("Authorization", &good)], None, BODY, 0),
            Err(Rejection::MissingSignature)
        );
        let url = "http://127.0.0.1:1/b";
        let signed = sign_now(&p, url, BODY, 0);
        assert!(check_signed(&p, url, &signed, 0).is_ok());
    }
}
