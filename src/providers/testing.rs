//! Helpers for the providers' unit tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

pub fn at(ts: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(ts as u64)
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (n, v) in pairs {
        map.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

/// Verifies a request made of `path`, header pairs, content type and body at `now`.
pub fn check(
    p: &dyn Provider,
    path: &str,
    pairs: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<Verified, VerifyError> {
    let headers = headers(pairs);
    let body = Body::new(Bytes::copy_from_slice(body), content_type);
    let req = Inbound {
        path_and_query: path,
        headers: &headers,
        body: &body,
        client_ip: None,
    };
    p.verify(&req, at(now))
}

/// Verifies what `sign` produced, sent to `url`'s path.
pub fn check_signed(
    p: &dyn Provider,
    url: &str,
    signed: &Signed,
    now: i64,
) -> Result<Verified, VerifyError> {
    let path = url
        .find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| &url[i + 3 + j..]))
        .unwrap_or("/");
    let path = match &signed.query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let pairs: Vec<(&str, &str)> = signed
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    check(
        p,
        &path,
        &pairs,
        Some(&signed.content_type),
        &signed.body,
        now,
    )
}

pub fn sign_now(p: &dyn Provider, url: &str, body: &[u8], now: i64) -> Signed {
    p.sign(&SignRequest { body, url }, at(now)).unwrap()
}

pub fn secrets(list: &[&str]) -> crate::secret::Secrets {
    crate::one_or_many::OneOrMany(
        list.iter()
            .map(|s| crate::secret::Secret::new(*s))
            .collect(),
    )
}
