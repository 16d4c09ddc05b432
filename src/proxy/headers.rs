//! The request header the upstream receives: the client's headers minus hop-by-hop ones,
//! minus every header hookguard asserts itself (in any spelling), minus the credentials the
//! provider consumed; plus hookguard's own `X-Webhook-*` and `X-Forwarded-For`.
//!
//! "Any spelling": CGI, WSGI, Rack and PHP hand headers to the application as variables in
//! which `-` and `_` are the same (`HTTP_X_WEBHOOK_ID`), so `X_Webhook_Id: evil` would reach
//! the application as if hookguard had said it. Names are compared with `_` read as `-`.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Request, Version};
use http_body_util::Full;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the ones
/// hookguard answers or recomputes itself (`Expect`, `Content-Length`).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
];

/// Headers about the client that hookguard alone may state (it writes `X-Forwarded-For`
/// itself): a client's own copies are dropped, so the application cannot be told a false
/// address by whoever sent the request.
const ASSERTED: &[&str] = &["x-forwarded-for", "forwarded", "x-real-ip"];

/// A header name as application servers see it: lowercase, `_` read as `-`.
fn canonical(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains('_') {
        std::borrow::Cow::Owned(name.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// What hookguard learned about the request, for the upstream.
pub struct Forwarding<'a> {
    pub provider: &'a str,
    pub route: &'a str,
    /// `X-Webhook-Id`: the message's id.
    pub id: &'a str,
    pub timestamp: Option<i64>,
    /// The socket peer, appended to `X-Forwarded-For`.
    pub peer_ip: Option<IpAddr>,
    /// Headers the provider consumed as credentials (`Authorization` on `basic_auth`).
    pub consumed: &'a [&'a str],
    /// Path and query to request upstream.
    pub path_and_query: &'a str,
    /// `Some` replaces the content type (normalized JSON).
    pub content_type: Option<&'static str>,
}

/// Builds the upstream request from the client's head: one pass over its headers, copying
/// the ones that describe the message, then hookguard's own.
pub fn upstream_request(
    client: &http::request::Parts,
    f: &Forwarding<'_>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let mut headers = HeaderMap::with_capacity(client.headers.len() + 6);
    // Headers named in `Connection` are hop-by-hop too (rare beyond keep-alive and close).
    let listed: Vec<String> = client
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "keep-alive" && t != "close")
        .collect();
    for (name, value) in client.headers.iter() {
        let n = name.as_str();
        let c = canonical(n);
        let dropped = HOP_BY_HOP.contains(&n)
            || c.starts_with("x-webhook-")
            // X-Forwarded-For is rewritten below with the peer appended.
            || ASSERTED.contains(&c.as_ref())
            || f.consumed.contains(&c.as_ref())
            || (f.content_type.is_some() && name == http::header::CONTENT_TYPE)
            || listed.iter().any(|l| l == n);
        if !dropped {
            headers.append(name.clone(), value.clone());
        }
    }

    if let Some(ct) = f.content_type {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert("x-webhook-provider", header_safe(f.provider));
    headers.insert("x-webhook-route", header_safe(f.route));
    headers.insert("x-webhook-id", header_safe(f.id));
    if let Some(ts) = f.timestamp {
        headers.insert("x-webhook-timestamp", HeaderValue::from(ts));
    }
    let prior: Vec<&str> = client
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let forwarded_for = match (f.peer_ip, prior.is_empty()) {
        (Some(ip), true) => Some(ip.to_string()),
        (Some(ip), false) => Some(format!("{}, {ip}", prior.join(", "))),
        (None, false) => Some(prior.join(", ")),
        (None, true) => None,
    };
    if let Some(v) = forwarded_for {
        headers.insert("x-forwarded-for", HeaderValue::from_str(&v)?);
    }

    let mut req = Request::builder()
        .method(client.method.clone())
        .uri(f.path_and_query)
        .version(Version::HTTP_11)
        .body(Full::new(body))?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Bytes percent-encoded in a header value hookguard writes: controls, space, `%` and
/// everything outside ASCII (a key from a JSON body may hold anything).
const ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'%');

/// `text` as a header value: visible ASCII as is, anything else percent-encoded.
fn header_safe(text: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(text, ENCODED).to_string();
    // Only visible ASCII remains.
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> http::request::Parts {
        let pairs = [
            ("Host", "example.com"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", "999"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Expect", "100-continue"),
            ("X-Webhook-Id", "spoofed"),
            ("x-webhook-provider", "spoofed"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-For", "10.0.0.2"),
            ("User-Agent", "mailgun"),
            ("X_Webhook_Id", "evil"),
            ("x_WEBHOOK_route", "evil"),
            ("X_Forwarded_For", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("Authorization", "Basic aG9vazpwdw=="),
        ];
        let mut b = Request::builder().method("POST").uri("/in?x=1");
        for (n, v) in pairs {
            b = b.header(n, v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn rewrites_headers() {
        let f = Forwarding {
            provider: "mailgun",
            route: "mg",
            id: "tok en\n",
            timestamp: Some(1700000000),
            peer_ip: Some("127.0.0.2".parse().unwrap()),
            consumed: &["authorization"],
            path_and_query: "/up?x=1",
            content_type: Some("application/json"),
        };
        let req = upstream_request(&client(), &f, Bytes::from_static(&[b'x'; 42])).unwrap();
        let get = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(req.uri().to_string(), "/up?x=1");
        assert_eq!(get("host").as_deref(), Some("example.com"));
        assert_eq!(get("user-agent").as_deref(), Some("mailgun"));
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert_eq!(get("content-length").as_deref(), Some("42"));
        assert_eq!(get("connection"), None);
        assert_eq!(get("x-secret-hop"), None);
        assert_eq!(get("expect"), None);
        assert_eq!(get("x-webhook-provider").as_deref(), Some("mailgun"));
        assert_eq!(get("x-webhook-route").as_deref(), Some("mg"));
        assert_eq!(get("x-webhook-id").as_deref(), Some("tok%20en%0A"));
        assert_eq!(header_safe("a%b é").to_str().unwrap(), "a%25b%20%C3%A9");
        assert_eq!(get("x-webhook-timestamp").as_deref(), Some("1700000000"));
        assert_eq!(
            get("x-forwarded-for").as_deref(),
            Some("10.0.0.1, 10.0.0.2, 127.0.0.2")
        );
        assert_eq!(req.headers().get_all("x-webhook-id").iter().count(), 1);
        // No spelling of a header hookguard asserts survives, nor the consumed credentials.
        for (name, _) in req.headers().iter() {
            let c = canonical(name.as_str()).into_owned();
            assert!(
                !c.starts_with("x-webhook-") || name.as_str() == c,
                "{name} reached the upstream"
            );
            assert!(!["forwarded", "x-real-ip", "authorization"].contains(&c.as_str()));
            assert!(c != "x-forwarded-for" || name.as_str() == c);
        }
        assert_eq!(get("x-webhook-route").as_deref(), Some("mg"));
    }
}
