//! Twilio: `X-Twilio-Signature`, base64 HMAC of the URL Twilio called followed by the POST
//! fields sorted by name (each name followed by its value; a repeated name's distinct values
//! sorted too), under the account's Auth Token. This is what the `twilio` SDK's
//! `RequestValidator` computes, including its quirks:
//!
//! - the URL is tried with and without its port (`:443`/`:80` added when absent, any port
//!   removed when present), since Twilio is not consistent about it;
//! - a non-form body (JSON) is not in the signature: Twilio adds `bodySHA256=<hex>` to the URL,
//!   which is signed, and the body must hash to it;
//! - with `X-Twilio-Webhooks-Signature-Settings: ...,algorithm=HMAC_SHA256` (Twilio's shared-key
//!   webhooks) the HMAC is SHA-256; otherwise SHA-1.
//!
//! `public_url` is the URL as Twilio calls it, without the query: the request's own query
//! string is appended. Twilio signs no timestamp, so keys are remembered for `ttl` (24 h).
//!
//! Message identity: the URL and fields signed (the route's `public_url` with the request's
//! query, and the sorted fields). `I-Twilio-Idempotency-Token` is not signed, so it takes no
//! part in the replay key (a captured request resent with a fresh token, or none, is the same
//! message); it reaches the app as an ordinary header. `X-Webhook-Id`: the signature (base64).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use subtle::ConstantTimeEq;

use super::{
    base64, decode_base64, hmac_sign, identity_of, positive, query, require_secrets, sha256_hex,
    Algorithm, HmacSha1, Inbound, Keyring, OptionError, Provider, ProviderFactory, PublicUrl,
    SignError, SignRequest, Signed, Verified, VerifyError, DEFAULT_TTL,
};
use crate::body::MediaType;
use crate::secret::Secret;

pub const NAME: &str = "twilio";
pub const SIGNATURE: &str = "x-twilio-signature";
pub const SETTINGS: &str = "x-twilio-webhooks-signature-settings";
pub const IDEMPOTENCY: &str = "i-twilio-idempotency-token";

#[derive(Debug)]
pub struct Twilio {
    secrets: Keyring<Secret>,
    public_url: PublicUrl,
    ttl: Duration,
}

pub use super::common::UrlSignedOptions as Options;

impl ProviderFactory for Twilio {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        let public_url = PublicUrl::parse(o.public_url, &mut errors);
        let ttl = positive("ttl", o.ttl, DEFAULT_TTL, &mut errors);
        match public_url {
            Some(public_url) if errors.is_empty() => Ok(Twilio {
                secrets,
                public_url,
                ttl,
            }),
            _ => Err(errors),
        }
    }
}

/// The algorithm named by `X-Twilio-Webhooks-Signature-Settings`; SHA-1 without one.
fn algorithm(req: &Inbound<'_>) -> Option<Algorithm> {
    if !req.headers.contains_key(SETTINGS) {
        return Some(Algorithm::Sha1);
    }
    let settings = req.header(SETTINGS)?;
    let named = settings.split(',').find_map(|part| {
        let (name, value) = part.split_once('=')?;
        (name.trim() == "algorithm" && !value.trim().is_empty()).then(|| value.trim())
    });
    match named.map(str::to_ascii_uppercase).as_deref() {
        None | Some("HMAC_SHA1") => Some(Algorithm::Sha1),
        Some("HMAC_SHA256") => Some(Algorithm::Sha256),
        Some(_) => None,
    }
}

/// The URL with its port (the scheme's default added when absent) and without any port.
pub fn port_variants(url: &str) -> [String; 2] {
    let Some(scheme_end) = url.find("://") else {
        return [url.to_owned(), url.to_owned()];
    };
    let host_start = scheme_end + 3;
    let host_end = url[host_start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| host_start + i);
    let netloc = &url[host_start..host_end];
    let bracket = netloc.rfind(']').map_or(0, |i| i + 1);
    let port_at = netloc[bracket..]
        .rfind(':')
        .map(|i| bracket + i)
        .filter(|&i| netloc[i + 1..].bytes().all(|b| b.is_ascii_digit()));
    let (host, has_port) = match port_at {
        Some(i) => (&netloc[..i], true),
        None => (netloc, false),
    };
    let default_port = if url.starts_with("https://") { 443 } else { 80 };
    let with_port = if has_port {
        url.to_owned()
    } else {
        format!(
            "{}{host}:{default_port}{}",
            &url[..host_start],
            &url[host_end..]
        )
    };
    let without_port = format!("{}{host}{}", &url[..host_start], &url[host_end..]);
    [with_port, without_port]
}

/// What is signed after the URL: names and values of the fields, sorted.
fn sorted_params(fields: impl IntoIterator<Item = (String, String)>) -> String {
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (k, v) in fields {
        map.entry(k).or_default().insert(v);
    }
    let mut out = String::new();
    for (k, values) in map {
        for v in values {
            out.push_str(&k);
            out.push_str(&v);
        }
    }
    out
}

impl Provider for Twilio {
    fn verify(&self, req: &Inbound<'_>, _now: SystemTime) -> Result<Verified, VerifyError> {
        let alg = algorithm(req).ok_or(VerifyError::MissingSignature)?;
        let len = alg.mac_len();
        let sig = req
            .header(SIGNATURE)
            .and_then(|h| decode_base64(h, len))
            .ok_or(VerifyError::MissingSignature)?;
        let body_hash = query(req.path_and_query).and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, v)| k == "bodySHA256" && !v.is_empty())
                .map(|(_, v)| v.into_owned())
        });
        let mut body_ok = true;
        let params = match body_hash {
            Some(expected) => {
                body_ok = bool::from(
                    sha256_hex(req.body.bytes())
                        .as_bytes()
                        .ct_eq(expected.as_bytes()),
                );
                String::new()
            }
            None => match req.body.media() {
                MediaType::Form | MediaType::Multipart { .. } => {
                    let fields = req.body.fields().map_err(super::field_error)?;
                    let mut pairs = Vec::with_capacity(fields.0.len());
                    for f in &fields.0 {
                        match &f.value {
                            crate::body::FieldValue::Text(t) => {
                                pairs.push((f.name.clone(), t.clone()))
                            }
                            crate::body::FieldValue::File { .. } => {
                                return Err(VerifyError::MissingSignature)
                            }
                        }
                    }
                    sorted_params(pairs)
                }
                MediaType::Missing if req.body.bytes().is_empty() => String::new(),
                // A JSON body is signed only through `bodySHA256`.
                _ => return Err(VerifyError::MissingSignature),
            },
        };
        let url = self.public_url.for_request(req.path_and_query);
        let urls = port_variants(&url);
        let signers = self.secrets.verifying(|s| {
            body_ok
                && urls.iter().any(|u| {
                    let parts: [&[u8]; 2] = [u.as_bytes(), params.as_bytes()];
                    alg.matches(s.expose().as_bytes(), &parts, &sig)
                })
        });
        // The identity uses the URL as configured, whichever port spelling Twilio signed.
        Ok(signers
            .message(NAME, &identity_of(&[url.as_bytes(), params.as_bytes()]))?
            .id(base64(&sig))
            .remember(self.ttl))
    }

    /// The application answers (a slash command or a challenge, TwiML, an interaction).
    fn needs_the_apps_answer(&self) -> bool {
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

    /// Signs a form body (Twilio's usual POST) for `public_url`, or a JSON body through the
    /// `bodySHA256` query parameter, as Twilio does.
    fn sign(&self, req: &SignRequest<'_>, _now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let trimmed = req.body.trim_ascii();
        let idempotency = (
            "I-Twilio-Idempotency-Token".to_owned(),
            crate::random::hex_token(36),
        );
        if trimmed.starts_with(b"{") || trimmed.starts_with(b"[") {
            let query = format!("bodySHA256={}", sha256_hex(trimmed));
            let url = format!("{}?{query}", self.public_url.as_str());
            let sig = base64(&hmac_sign::<HmacSha1>(
                secret.expose().as_bytes(),
                &[url.as_bytes()],
            ));
            return Ok(Signed {
                headers: vec![("X-Twilio-Signature".into(), sig), idempotency],
                content_type: "application/json".into(),
                body: trimmed.to_vec(),
                query: Some(query),
            });
        }
        let url = self.public_url.for_request(req.url);
        Ok(Signed {
            headers: vec![
                (
                    "X-Twilio-Signature".into(),
                    signature(secret.expose(), &url, trimmed),
                ),
                idempotency,
            ],
            content_type: "application/x-www-form-urlencoded".into(),
            body: trimmed.to_vec(),
            query: None,
        })
    }
}

/// The SHA-1 signature of a form body posted to `url`.
pub fn signature(secret: &str, url: &str, form: &[u8]) -> String {
    let params =
        sorted_params(form_urlencoded::parse(form).map(|(k, v)| (k.into_owned(), v.into_owned())));
    base64(&hmac_sign::<HmacSha1>(
        secret.as_bytes(),
        &[url.as_bytes(), params.as_bytes()],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::*;
    use crate::providers::{hmac_sign, HmacSha256};

    const KEY: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php";
    const FORM: &str = "CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";

    fn provider(keys: &[&str], url: &str) -> Twilio {
        Twilio::from_options(Options {
            secrets: secrets(keys),
            public_url: Some(url.into()),
            ttl: None,
        })
        .unwrap()
    }

    const FORM_CT: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn twilio_documentation_example() {
        // The example of the twilio SDK's own tests (RequestValidator.compute_signature).
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            signature(KEY, url, FORM.as_bytes()),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        let p = provider(&["nope", KEY], URL);
        let v = check(
            &p,
            "/t?foo=1&bar=2",
            &[(SIGNATURE, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")],
            FORM_CT,
            FORM.as_bytes(),
            0,
        )
        .unwrap();
        assert_eq!(v.id, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    }

    #[test]
    fn ports() {
        assert_eq!(
            port_variants("https://a.com/x?y=1"),
            [
                "https://a.com:443/x?y=1".to_owned(),
                "https://a.com/x?y=1".to_owned()
            ]
        );
        assert_eq!(
            port_variants("http://a.com:8080/x"),
            [
                "http://a.com:8080/x".to_owned(),
                "http://a.com/x".to_owned()
            ]
        );
        // Signed with the port, configured without: accepted, like the SDK.
        let sig = signature(KEY, "https://mycompany.com:443/myapp.php", FORM.as_bytes());
        let p = provider(&[KEY], URL);
        assert!(check(&p, "/t", &[(SIGNATURE, &sig)], FORM_CT, FORM.as_bytes(), 0).is_ok());
    }

    #[test]
    fn json_body_through_body_sha256() {
        let body = br#"{"property":"value","boolean":true}"#;
        let hash = sha256_hex(body);
        let url = format!("{URL}?bodySHA256={hash}");
        let sig = signature(KEY, &url, b"");
        let p = provider(&[KEY], URL);
        let path = format!("/t?bodySHA256={hash}");
        let ct = Some("application/json");
        let pairs = [(SIGNATURE, sig.as_str()), (IDEMPOTENCY, "idem-1")];
        let ok = check(&p, &path, &pairs, ct, body, 0).unwrap();
        assert_eq!(ok.id, sig);
        // The idempotency token is not signed: without it, the same message.
        let no_token = check(&p, &path, &pairs[..1], ct, body, 0).unwrap();
        assert_eq!(no_token.keys, ok.keys);
        assert_eq!(
            check(&p, &path, &pairs, ct, b"{\"property\":1}", 0),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            check(&p, "/t", &pairs, ct, body, 0),
            Err(VerifyError::MissingSignature)
        );
    }

    #[test]
    fn sha256_shared_keys() {
        let params = sorted_params(
            form_urlencoded::parse(FORM.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())),
        );
        let sig = base64(&hmac_sign::<HmacSha256>(
            KEY.as_bytes(),
            &[URL.as_bytes(), params.as_bytes()],
        ));
        let p = provider(&[KEY], URL);
        let settings = (SETTINGS, "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256");
        assert!(check(
            &p,
            "/t",
            &[(SIGNATURE, &sig), settings],
            FORM_CT,
            FORM.as_bytes(),
            0
        )
        .is_ok());
        assert_eq!(
            check(
                &p,
                "/t",
                &[(SIGNATURE, &sig), (SETTINGS, "algorithm=HMAC_MD5")],
                FORM_CT,
                FORM.as_bytes(),
                0
            ),
            Err(VerifyError::MissingSignature)
        );
    }

    #[test]
    fn rejections() {
        let p = provider(&[KEY], URL);
        let sig = signature(KEY, URL, FORM.as_bytes());
        let r = |pairs: &[(&str, &str)], body: &str| {
            check(&p, "/t", pairs, FORM_CT, body.as_bytes(), 0)
        };
        assert!(r(&[(SIGNATURE, &sig)], FORM).is_ok());
        assert_eq!(r(&[], FORM), Err(VerifyError::MissingSignature));
        assert_eq!(
            r(&[(SIGNATURE, "abc")], FORM),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(SIGNATURE, &sig), (SIGNATURE, &sig)], FORM),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(
            r(&[(SIGNATURE, &sig)], &format!("{FORM}&x=1")),
            Err(VerifyError::BadSignature)
        );
        // Field order does not matter; values do.
        let reordered = "To=%2B18005551212&From=%2B12349013030&Digits=1234&Caller=%2B12349013030&CallSid=CA1234567890ABCDE";
        assert!(r(&[(SIGNATURE, &sig)], reordered).is_ok());
        assert!(PublicUrl::parse(Some("https://a.com/x?q=1".into()), &mut Vec::new()).is_none());
    }

    #[test]
    fn sign_round_trips() {
        let p = provider(&[KEY], URL);
        let url = "http://127.0.0.1:1/t";
        let signed = sign_now(&p, url, FORM.as_bytes(), 0);
        assert!(check_signed(&p, url, &signed, 0).is_ok());
        // JSON bodies are signed through the `bodySHA256` query parameter.
        let json = sign_now(&p, url, br#"{"EventType":"x"}"#, 0);
        let query = json.query.as_deref().expect("a bodySHA256 query");
        assert!(query.starts_with("bodySHA256="), "{query}");
        assert!(check_signed(&p, url, &json, 0).is_ok());
        let mut tampered = json.clone();
        tampered.body = br#"{"EventType":"y"}"#.to_vec();
        assert_eq!(
            check_signed(&p, url, &tampered, 0),
            Err(VerifyError::BadSignature)
        );
    }
}
