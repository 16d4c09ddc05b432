//! `hmac`: any "HMAC of some request parts in a header" scheme, described by options:
//!
//! - `header` (required): the header carrying the signature(s);
//! - `algorithm`: `sha1`, `sha256` (default) or `sha512`;
//! - `encoding`: `hex` (default, either case) or `base64`;
//! - `prefix`: text before each signature, e.g. `sha256=` (default none). The header may carry
//!   several signatures separated by `,`, `;` or spaces; each one starting with the prefix is
//!   tried;
//! - `payload`: what is signed, a template of `{body}` (default), `{timestamp}`,
//!   `{header:NAME}`, `{url}` and literal text (`{{` and `}}` for braces);
//! - `timestamp_header`: a header with the unix-seconds timestamp, checked against `tolerance`
//!   (default 5 minutes); the payload must sign it (`{timestamp}` or `{header:NAME}`), since
//!   an unsigned timestamp proves no freshness;
//! - `id_header`: a header naming the delivery, which the payload must sign
//!   (`{header:NAME}`): an unsigned id would make every respelling of it a new message;
//! - `public_url`: the URL the sender calls, for `{url}` (the request's query is appended);
//! - `ttl`: how long keys are remembered when there is no timestamp (default 24 h).
//!
//! Message identity: the signed `id_header` value (kept across the sender's retries), else
//! the signed payload. `X-Webhook-Id`: the id, else the smallest matching signature (hex).
//!
//! Longer than 500 lines: about 430 lines of code (the template parser and the scheme) and its
//! unit tests; splitting the parser out would separate it from the one scheme it serves.

pub const NAME: &str = "hmac";

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{
    check_window, identity_of, parse_unix, positive, require_secrets, unix_now, Algorithm, Inbound,
    Keyring, OptionError, Provider, ProviderFactory, PublicUrl, SignError, SignRequest, Signed,
    Verified, VerifyError, DEFAULT_TTL, FIVE_MINUTES,
};
use crate::secret::{Secret, Secrets};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Hex,
    Base64,
}

impl Encoding {
    fn decode(self, s: &str, len: usize) -> Option<Vec<u8>> {
        match self {
            Encoding::Hex => super::decode_hex(s, len),
            Encoding::Base64 => super::decode_base64(s, len),
        }
    }

    fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Hex => hex::encode(bytes),
            Encoding::Base64 => super::base64(bytes),
        }
    }
}

/// One piece of the `payload` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Body,
    Timestamp,
    Url,
    Header(http::HeaderName),
}

/// Parses a `payload` template.
pub fn parse_template(t: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = t;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("{{") {
            text.push('{');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("}}") {
            text.push('}');
            rest = r;
        } else if c == '{' {
            let end = rest
                .find('}')
                .ok_or_else(|| "a `{` is not closed (write `{{` for a literal brace)".to_owned())?;
            let name = &rest[1..end];
            let part = match name {
                "body" => Part::Body,
                "timestamp" => Part::Timestamp,
                "url" => Part::Url,
                _ => match name.strip_prefix("header:") {
                    Some(h) => Part::Header(
                        http::HeaderName::from_bytes(h.trim().as_bytes())
                            .map_err(|_| format!("`{h}` is not a header name"))?,
                    ),
                    None => {
                        return Err(format!(
                            "unknown placeholder `{{{name}}}` (known: {{body}}, {{timestamp}}, \
                             {{header:NAME}}, {{url}})"
                        ))
                    }
                },
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
            rest = &rest[end + 1..];
        } else if c == '}' {
            return Err("a lone `}` (write `}}` for a literal brace)".into());
        } else {
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

#[derive(Debug)]
pub struct GenericHmac {
    secrets: Keyring<Secret>,
    header: http::HeaderName,
    algorithm: Algorithm,
    encoding: Encoding,
    prefix: String,
    payload: Vec<Part>,
    template: String,
    timestamp_header: Option<http::HeaderName>,
    id_header: Option<http::HeaderName>,
    public_url: Option<PublicUrl>,
    tolerance: Duration,
    ttl: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    secrets: Secrets,
    header: Option<String>,
    #[serde(default)]
    algorithm: Option<Algorithm>,
    #[serde(default)]
    encoding: Option<Encoding>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    payload: Option<String>,
    timestamp_header: Option<String>,
    id_header: Option<String>,
    public_url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    tolerance: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
}

fn header_name(
    key: &'static str,
    value: Option<String>,
    errors: &mut Vec<OptionError>,
) -> Option<http::HeaderName> {
    let value = value?;
    match http::HeaderName::from_bytes(value.trim().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            errors.push(OptionError::new(
                key,
                format!("`{value}` is not a header name"),
            ));
            None
        }
    }
}

impl ProviderFactory for GenericHmac {
    type Options = Options;

    fn from_options(o: Options) -> Result<Self, Vec<OptionError>> {
        let mut errors = Vec::new();
        let secrets = require_secrets(o.secrets, &mut errors);
        if o.header.is_none() {
            errors.push(OptionError::new(
                "header",
                "required: the header that carries the signature",
            ));
        }
        let header = header_name("header", o.header, &mut errors);
        let timestamp_header = header_name("timestamp_header", o.timestamp_header, &mut errors);
        let id_header = header_name("id_header", o.id_header, &mut errors);
        let template = o.payload.unwrap_or_else(|| "{body}".into());
        let payload = match parse_template(&template) {
            Ok(p) => p,
            Err(e) => {
                errors.push(OptionError::new("payload", e));
                Vec::new()
            }
        };
        if payload.contains(&Part::Timestamp) && timestamp_header.is_none() {
            errors.push(OptionError::new(
                "payload",
                "`{timestamp}` needs `timestamp_header`",
            ));
        }
        let signs_header = |h: &http::HeaderName| payload.contains(&Part::Header(h.clone()));
        if let Some(h) = &timestamp_header {
            if !payload.contains(&Part::Timestamp) && !signs_header(h) {
                errors.push(OptionError::new(
                    "timestamp_header",
                    format!(
                        "`{h}` is not signed: add `{{timestamp}}` to `payload` (an unsigned \
                         timestamp proves no freshness: a captured request could carry any)"
                    ),
                ));
            }
        }
        if let Some(h) = &id_header {
            if !signs_header(h) {
                errors.push(OptionError::new(
                    "id_header",
                    format!(
                        "`{h}` is not signed: add `{{header:{h}}}` to `payload`, or drop \
                         `id_header` (an unsigned id would let a captured request through again \
                         under every new value)"
                    ),
                ));
            }
        }
        let public_url = if payload.contains(&Part::Url) {
            PublicUrl::parse(o.public_url, &mut errors)
        } else {
            if o.public_url.is_some() {
                errors.push(OptionError::new(
                    "public_url",
                    "only used by a payload with `{url}`",
                ));
            }
            None
        };
        let prefix = o.prefix.unwrap_or_default();
        let tolerance = positive("tolerance", o.tolerance, FIVE_MINUTES, &mut errors);
        let ttl = positive("ttl", o.ttl, DEFAULT_TTL, &mut errors);
        match header {
            Some(header) if errors.is_empty() => Ok(GenericHmac {
                secrets,
                header,
                algorithm: o.algorithm.unwrap_or(Algorithm::Sha256),
                encoding: o.encoding.unwrap_or(Encoding::Hex),
                prefix,
                payload,
                template,
                timestamp_header,
                id_header,
                public_url,
                tolerance,
                ttl,
            }),
            _ => Err(errors),
        }
    }
}

const SEPARATORS: [char; 4] = [',', ';', ' ', '\t'];

/// Every signature in a header value: each token after `prefix` (at the start or after a
/// separator), up to the next separator.
pub fn candidates<'a>(value: &'a str, prefix: &str) -> Vec<&'a str> {
    if prefix.is_empty() {
        return value.split(SEPARATORS).filter(|t| !t.is_empty()).collect();
    }
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = value[from..].find(prefix).map(|i| from + i) {
        let at_boundary = i == 0 || value[..i].ends_with(SEPARATORS);
        let start = i + prefix.len();
        let end = value[start..]
            .find(SEPARATORS)
            .map_or(value.len(), |j| start + j);
        if at_boundary {
            out.push(&value[start..end]);
        }
        from = start.max(i + 1);
    }
    out
}

impl Provider for GenericHmac {
    fn verify(&self, req: &Inbound<'_>, now: SystemTime) -> Result<Verified, VerifyError> {
        let value = req
            .header(self.header.as_str())
            .ok_or(VerifyError::MissingSignature)?;
        let len = self.algorithm.mac_len();
        let signatures: Vec<Vec<u8>> = candidates(value, &self.prefix)
            .into_iter()
            .filter_map(|c| self.encoding.decode(c, len))
            .collect();
        if signatures.is_empty() {
            return Err(VerifyError::MissingSignature);
        }
        let timestamp = match &self.timestamp_header {
            Some(h) => {
                let text = req
                    .header(h.as_str())
                    .ok_or(VerifyError::MissingSignature)?;
                Some((text, parse_unix(text).ok_or(VerifyError::MissingSignature)?))
            }
            None => None,
        };
        // Signed by the payload (checked when the route was loaded).
        let id = match &self.id_header {
            Some(h) => Some(
                req.header(h.as_str())
                    .filter(|v| !v.is_empty())
                    .ok_or(VerifyError::MissingSignature)?,
            ),
            None => None,
        };
        let url = self
            .public_url
            .as_ref()
            .map(|u| u.for_request(req.path_and_query))
            .unwrap_or_default();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(self.payload.len());
        for part in &self.payload {
            parts.push(match part {
                Part::Text(t) => t.as_bytes(),
                Part::Body => req.body.bytes(),
                Part::Timestamp => timestamp.ok_or(VerifyError::MissingSignature)?.0.as_bytes(),
                Part::Url => url.as_bytes(),
                Part::Header(h) => req
                    .header(h.as_str())
                    .ok_or(VerifyError::MissingSignature)?
                    .as_bytes(),
            });
        }
        if let Some((_, ts)) = timestamp {
            check_window(ts, now, self.tolerance)?;
        }
        let (signers, shown) = self.secrets.verifying_any(&signatures, |s, sig| {
            self.algorithm.matches(s.expose().as_bytes(), &parts, sig)
        });
        let verified = match id {
            Some(id) => signers.message(NAME, id.as_bytes())?.id(id),
            None => signers
                .message(NAME, &identity_of(&parts))?
                .id(shown.map(hex::encode).unwrap_or_default()),
        };
        Ok(match timestamp {
            Some((_, ts)) => verified.signed_at(ts, now, self.tolerance),
            None => verified.remember(self.ttl),
        })
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{} secret(s), header {}, hmac-{:?} {:?}, payload {:?}",
            self.secrets.len(),
            self.header,
            self.algorithm,
            self.encoding,
            self.template
        )
        .to_lowercase();
        match &self.timestamp_header {
            Some(h) => s.push_str(&format!(
                ", timestamp_header {h}, tolerance {}",
                humantime::format_duration(self.tolerance)
            )),
            None => s.push_str(&format!(", ttl {}", humantime::format_duration(self.ttl))),
        }
        if let Some(h) = &self.id_header {
            s.push_str(&format!(", id_header {h}"));
        }
        s
    }

    /// Signs with the configured scheme; headers named in the payload that `sign` cannot know
    /// (other than the id and timestamp headers, which it fills in) make it fail.
    fn sign(&self, req: &SignRequest<'_>, now: SystemTime) -> Result<Signed, SignError> {
        let secret = self.secrets.first()?;
        let ts = unix_now(now).to_string();
        let id = crate::random::hex_token(32);
        let url = self
            .public_url
            .as_ref()
            .map(|u| u.for_request(req.url))
            .unwrap_or_default();
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in &self.payload {
            parts.push(match part {
                Part::Text(t) => t.as_bytes(),
                Part::Body => req.body,
                Part::Timestamp => ts.as_bytes(),
                Part::Url => url.as_bytes(),
                Part::Header(h) if Some(h) == self.id_header.as_ref() => id.as_bytes(),
                Part::Header(h) if Some(h) == self.timestamp_header.as_ref() => ts.as_bytes(),
                Part::Header(h) => {
                    return Err(SignError::Body(format!(
                        "the payload signs header `{h}`, whose value `hookguard sign` cannot know"
                    )))
                }
            });
        }
        let mac = self.algorithm.sign(secret.expose().as_bytes(), &parts);
        let mut headers = vec![(
            self.header.to_string(),
            format!("{}{}", self.prefix, self.encoding.encode(&mac)),
        )];
        if let Some(h) = &self.timestamp_header {
            headers.push((h.to_string(), ts.clone()));
        }
        if let Some(h) = &self.id_header {
            headers.push((h.to_string(), id.clone()));
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
    use crate::providers::{hmac_sign, HmacSha256, HmacSha512};

    const KEY: &str = "generic-secret";
    const T: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"event":"x"}"#;

    fn options(yaml: &str) -> Result<GenericHmac, Vec<OptionError>> {
        let o: Options = serde_yaml::from_str(yaml).unwrap();
        GenericHmac::from_options(o)
    }

    #[test]
    fn templates() {
        assert_eq!(
            parse_template("v0:{timestamp}:{body}").unwrap(),
            vec![
                Part::Text("v0:".into()),
                Part::Timestamp,
                Part::Text(":".into()),
                Part::Body
            ]
        );
        assert_eq!(
            parse_template("{{x}}{header:X-Id}").unwrap(),
            vec![
                Part::Text("{x}".into()),
                Part::Header(http::HeaderName::from_static("x-id"))
            ]
        );
        assert!(parse_template("{nope}").is_err());
        assert!(parse_template("{body").is_err());
        assert!(options("secrets: [k]\nheader: X-Sig\npayload: \"{timestamp}\"").is_err());
        assert!(options("secrets: [k]\nheader: X-Sig\npayload: \"{url}\"").is_err());
        assert!(options("secrets: [k]\npayload: \"{body}\"").is_err());
    }

    #[test]
    fn candidates_at_boundaries() {
        assert_eq!(
            candidates("sha256=ab,sha256=cd", "sha256="),
            vec!["ab", "cd"]
        );
        assert_eq!(candidates("v1,ab v1,cd", "v1,"), vec!["ab", "cd"]);
        assert_eq!(candidates("t=1,v1=ab,xv1=zz", "v1="), vec!["ab"]);
        assert_eq!(candidates("ab cd", ""), vec!["ab", "cd"]);
    }

    #[test]
    fn slack_like_scheme() {
        let p = options(
            "secrets: [old, generic-secret]\nheader: X-Sig\nprefix: \"v0=\"\npayload: \"v0:{timestamp}:{header:X-Id}:{body}\"\ntimestamp_header: X-Ts\nid_header: X-Id",
        )
        .unwrap();
        let ts = T.to_string();
        let mac = hex::encode(hmac_sign::<HmacSha256>(
            KEY.as_bytes(),
            &[b"v0:", ts.as_bytes(), b":d1:", BODY],
        ));
        let sig = format!("v0={}, v0={mac}", "0".repeat(64));
        let r =
            |pairs: &[(&str, &str)], body: &[u8], now: i64| check(&p, "/h", pairs, None, body, now);
        let all = [
            ("X-Sig", sig.as_str()),
            ("X-Ts", ts.as_str()),
            ("X-Id", "d1"),
        ];
        let ok = r(&all, BODY, T).unwrap();
        assert_eq!((ok.id.as_str(), ok.timestamp), ("d1", Some(T)));
        assert_eq!(r(&all[..2], BODY, T), Err(VerifyError::MissingSignature));
        assert_eq!(
            r(&[all[0], all[2]], BODY, T),
            Err(VerifyError::MissingSignature)
        );
        assert_eq!(r(&all, BODY, T + 301), Err(VerifyError::StaleTimestamp));
        assert_eq!(r(&all, b"{}", T), Err(VerifyError::BadSignature));
        // The id is signed: another one breaks the signature.
        let respelt = [all[0], all[1], ("X-Id", "d2")];
        assert_eq!(r(&respelt, BODY, T), Err(VerifyError::BadSignature));
        let url = "http://127.0.0.1:1/h";
        let signed = sign_now(&p, url, BODY, T);
        assert!(check_signed(&p, url, &signed, T).is_ok());
    }

    /// An id or a timestamp the payload does not sign proves nothing: refused at load.
    #[test]
    fn unsigned_id_and_timestamp_headers_are_refused() {
        let keys = |yaml: &str| -> Vec<&'static str> {
            options(yaml)
                .err()
                .unwrap_or_default()
                .iter()
                .map(|e| e.key)
                .collect()
        };
        assert_eq!(
            keys("secrets: s\nheader: X-Sig\nid_header: X-Id"),
            ["id_header"]
        );
        assert_eq!(
            keys("secrets: s\nheader: X-Sig\ntimestamp_header: X-Ts"),
            ["timestamp_header"]
        );
        // Signed through `{header:NAME}` or `{timestamp}`: accepted.
        assert!(options(
            "secrets: s\nheader: X-Sig\nid_header: X-Id\ntimestamp_header: X-Ts\npayload: \"{header:X-Id}.{header:X-Ts}.{body}\""
        )
        .is_ok());
    }

    /// Rotation on the sender's side: either signature, in any order, names one message.
    #[test]
    fn the_keys_do_not_depend_on_the_order_of_the_signatures() {
        let p =
            options("secrets: [a-secret, b-secret]\nheader: X-Sig\nprefix: \"sha256=\"").unwrap();
        let mac = |k: &str| hex::encode(hmac_sign::<HmacSha256>(k.as_bytes(), &[BODY]));
        let (a, b) = (mac("a-secret"), mac("b-secret"));
        let v = |h: &str| check(&p, "/h", &[("X-Sig", h)], None, BODY, T).unwrap();
        let both = v(&format!("sha256={a},sha256={b}"));
        let swapped = v(&format!("sha256={b},sha256={a}"));
        assert_eq!((&both.keys, &both.id), (&swapped.keys, &swapped.id));
        assert_eq!(both.keys.len(), 2);
        // One signature alone is the same message: keys under every secret of the route.
        let only_b = v(&format!("sha256={b}"));
        assert_eq!(only_b.keys, both.keys);
    }

    #[test]
    fn base64_sha512_with_url_and_header() {
        let p = options(
            "secrets: generic-secret\nheader: X-Sig\nalgorithm: sha512\nencoding: base64\npayload: \"{url}|{header:X-Event}|{body}\"\npublic_url: https://a.example/h",
        )
        .unwrap();
        let mac = super::super::base64(&hmac_sign::<HmacSha512>(
            KEY.as_bytes(),
            &[b"https://a.example/h?q=1|push|", BODY],
        ));
        let r = |pairs: &[(&str, &str)]| check(&p, "/h?q=1", pairs, None, BODY, T);
        let ok = r(&[("X-Sig", &mac), ("X-Event", "push")]).unwrap();
        assert_eq!(ok.remember_for, DEFAULT_TTL);
        assert_eq!(r(&[("X-Sig", &mac)]), Err(VerifyError::MissingSignature));
        assert_eq!(
            r(&[("X-Sig", &mac), ("X-Event", "pull")]),
            Err(VerifyError::BadSignature)
        );
        assert!(p
            .sign(
                &SignRequest {
                    body: BODY,
                    url: "http://x/h"
                },
                at(T)
            )
            .is_err());
    }
}
