//! Mandrill (Mailchimp Transactional): `X-Mandrill-Signature`, base64 HMAC-SHA1 of the webhook
//! URL followed by each POST field's name and value, fields sorted by name, under the
//! webhook's key (Mandrill's "Authenticating webhook requests"). `public_url` is the URL as
//! entered in Mandrill, without the query (the request's own query string is appended).
//! A repeated field is ambiguous and makes the request unusable. No signed timestamp: keys
//! are remembered for `ttl` (default 24 h).
//!
//! Message identity: the URL and fields signed (Mandrill sends no delivery id; a resent batch
//! is the same message). `X-Webhook-Id`: the signature (base64).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::{
    base64, decode_base64, hmac_matches, hmac_sign, identity_of, positive, require_secrets,
    HmacSha1, Inbound, Keyring, OptionError, Provider, ProviderFactory, PublicUrl, SignError,
    SignRequest, Signed, Verified, VerifyError, DEFAULT_TTL,
};
use crate::body::{FieldValue, MediaType};
use crate::secret::Secret;

pub const NAME: &str = "mandrill";
pub const HEADER: &str = "x-mandrill-signature";

#[derive(Debug)]
pub struct Mandrill {
    secrets: Keyring<Secret>,
    public_url: PublicUrl,
    ttl: Duration,
}

pub use super::common::UrlSignedOptions as Options;

impl ProviderFactory for Mandrill {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let public_url = PublicUrl::parse(o.public_url, &mut errors);
        let ttl = positive("ttl", o.ttl, DEFAULT_TTL, &mut errors);
        match public_url {
            Some(public_url) if errors.is_empty() => Ok(Mandrill {
                secrets,
                public_url,
                ttl,
            }),
            _ => Err(errors),
        }
    }
}

/// Names and values, sorted by name; `None` when a name repeats.
fn signed_fields<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<String> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if map.insert(k, v).is_some() {
            return None;
        }
    }
    Some(map.into_iter().flat_map(|(k, v)| [k, v]).collect())
}

impl Provider for Mandrill {
    fn verify(&self, req: &Inbound<'_>, _now: SystemTime) -> Result<Verified, VerifyError> {
        let sig = req
            .header(HEADER)
            .and_then(|h| decode_base64(h.trim(), 20))
            .ok_or(VerifyError::MissingSignature)?;
        let params = match req.body.media() {
            MediaType::Form | MediaType::Multipart { .. } => {
                let fields = req.body.fields().map_err(super::field_error)?;
                let mut pairs = Vec::with_capacity(fields.0.len());
                for f in &fields.0 {
                    match &f.value {
                        FieldValue::Text(t) => pairs.push((f.name.as_str(), t.as_str())),
                        FieldValue::File { .. } => return Err(VerifyError::MissingSignature),
                    }
                }
                signed_fields(pairs).ok_or(VerifyError::MissingSignature)?
            }
            MediaType::Missing if req.body.bytes().is_empty() => String::new(),
            _ => return Err(VerifyError::MissingSignature),
        };
        let url = self.public_url.for_request(req.path_and_query);
        let parts: [&[u8]; 2] = [url.as_bytes(), params.as_bytes()];
        let signers = self
            .secrets
            .verifying(|key| hmac_matches::<HmacSha1>(key.expose().as_bytes(), &parts, &sig));
        Ok(signers
            .message(NAME, &identity_of(&parts))?
            .id(base64(&sig))
            .remember(self.ttl))
    }

    fn answers_head_probe(&self) -> bool {
        true
    }

    fn summary(&self) -> String {
        format!(
            "{} secret(s), public_url {}, ttl {}",
            self.secrets.len(),
            self.public_url.as_str(),
            humantime::format_duration(self.ttl)
        )
    }

    /// Signs a form body; a JSON body is sent as Mandrill does, as its `mandrill_events` field.
    fn sign(&self, req: &SignRequest<'_>, _now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let trimmed = req.body.trim_ascii();
        let form = if trimmed.starts_with(b"[") || trimmed.starts_with(b"{") {
            let text = std::str::from_utf8(trimmed).map_err(|e| SignError::Body(e.to_string()))?;
            form_urlencoded::Serializer::new(String::new())
                .append_pair("mandrill_events", text)
                .finish()
                .into_bytes()
        } else {
            trimmed.to_vec()
        };
        let url = self.public_url.for_request(req.url);
        let sig = signature(secret.expose(), &url, &form)
            .ok_or_else(|| SignError::Body("a field name repeats".into()))?;
        Ok(Signed {
            headers: vec![("X-Mandrill-Signature".into(), sig)],
            content_type: "application/x-www-form-urlencoded".into(),
            body: form,
            query: None,
        })
    }
}

/// The signature of a form body posted to `url`.
pub fn signature(secret: &str, url: &str, form: &[u8]) -> Option<String> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(form)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let params = signed_fields(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    Some(base64(&hmac_sign::<HmacSha1>(
        secret.as_bytes(),
        &[url.as_bytes(), params.as_bytes()],
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;

    const KEY: &str = "mandrill-webhook-key";
    const URL: &str = "https://example.com/webhooks/mandrill";
    const FORM: &[u8] =
        b"mandrill_events=%5B%7B%22event%22%3A%22send%22%2C%22_id%22%3A%22abc%22%7D%5D";
    const CT: Option<&str> = Some("application/x-www-form-urlencoded");

    fn provider(keys: &[&str]) -> Mandrill {
        Mandrill::from_options(Options {
            secrets: secrets(keys),
            public_url: Some(URL.into()),
            ttl: None,
        })
        .unwrap()
    }

    #[test]
    fn verdicts() {
        let p = provider(&["old", KEY]);
        let sig = signature(KEY, URL, FORM).unwrap();
        // What Mandrill's documentation computes by hand: URL + "mandrill_events" + JSON.
        let by_hand = base64(&hmac_sign::<HmacSha1>(
            KEY.as_bytes(),
            &[
                URL.as_bytes(),
                br#"mandrill_events[{"event":"send","_id":"abc"}]"#,
            ],
        ));
        assert_eq!(sig, by_hand);
        let r = |pairs: &[(&str, &str)], body: &[u8]| check(&p, "/m", pairs, CT, body, 0);
        assert_eq!(r(&[(HEADER, &sig)], FORM).unwrap().id, sig);
        assert_eq!(r(&[], FORM), Err(VerifyError::MissingSignature));
        assert_eq!(
            r(&[(HEADER, &sig), (HEADER, &sig)], FORM),
            Err(VerifyError::MissingSignature)
        );
        let repeated = [FORM, b"&mandrill_events=%5B%5D"].concat();
        assert_eq!(
            r(&[(HEADER, &sig)], &repeated),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(HEADER, &sig)], b"mandrill_events=%5B%5D"),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            check(
                &p,
                "/m",
                &[(HEADER, &sig)],
                Some("application/json"),
                b"[]",
                0
            ),
            Err(VerifyError::MissingSignature)
        );
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY]);
        let url = "http://127.0.0.1:1/m";
        let signed = sign_now(&p, url, br#"[{"event":"send"}]"#, 0);
        assert!(check_signed(&p, url, &signed, 0).is_ok());
    }
}
