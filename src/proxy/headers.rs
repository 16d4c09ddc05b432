//! The request header the upstream receives: the client's headers minus hop-by-hop ones,
//! minus every header hookguard asserts itself (in any spelling), minus the credentials the
//! provider consumed; plus hookguard's own `X-Webhook-*` and `X-Forwarded-For`.
//!
//! "Any spelling": CGI, WSGI, Rack and PHP hand headers to the application as variables in
//! which `-` and `_` are the same (`HTTP_X_WEBHOOK_ID`), so `X_Webhook_Id: evil` would reach
//! the application as if hookguard had said it. Names are compared with `_` read as `-`.

use std::net::IpAddr;

use http::header::HeaderValue;
use http::Version;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use pingora::http::RequestHeader;
use pingora::Result;

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
    pub content_length: usize,
}

/// Builds the upstream request header from the client's: one pass over its headers, copying
/// the ones that describe the message.
pub fn upstream_request(client: &RequestHeader, f: &Forwarding<'_>) -> Result<RequestHeader> {
    let mut req = RequestHeader::build_no_case(
        client.method.clone(),
        f.path_and_query.as_bytes(),
        Some(client.headers.len() + 6),
    )?;
    req.set_version(Version::HTTP_11);

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
            req.append_header(name.clone(), value.clone())?;
        }
    }

    if let Some(ct) = f.content_type {
        req.insert_header(http::header::CONTENT_TYPE, ct)?;
    }
    req.insert_header(http::header::CONTENT_LENGTH, f.content_length)?;
    req.insert_header("x-webhook-provider", f.provider)?;
    req.insert_header("x-webhook-route", header_safe(f.route))?;
    req.insert_header("x-webhook-id", header_safe(f.id))?;
    if let Some(ts) = f.timestamp {
        req.insert_header("x-webhook-timestamp", ts)?;
    }
    let prior: Vec<&str> = client
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    match (f.peer_ip, prior.is_empty()) {
        (Some(ip), true) => req.insert_header("x-forwarded-for", ip.to_string())?,
        (Some(ip), false) => {
            req.insert_header("x-forwarded-for", format!("{}, {ip}", prior.join(", ")))?
        }
        (None, false) => req.insert_header("x-forwarded-for", prior.join(", "))?,
        (None, true) => {}
    }
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

    fn client() -> RequestHeader {
        let mut h = RequestHeader::build("POST", b"/in?x=1", None).unwrap();
        h.insert_header("Host", "example.com").unwrap();
        h.insert_header("Content-Type", "application/x-www-form-urlencoded")
            .unwrap();
        h.insert_header("Content-Length", "999").unwrap();
        h.insert_header("Connection", "keep-alive, X-Secret-Hop")
            .unwrap();
        h.insert_header("X-Secret-Hop", "1").unwrap();
        h.insert_header("Expect", "100-continue").unwrap();
        h.insert_header("X-Webhook-Id", "spoofed").unwrap();
        h.insert_header("x-webhook-provider", "spoofed").unwrap();
        h.insert_header("X-Forwarded-For", "10.0.0.1").unwrap();
        h.append_header("X-Forwarded-For", "10.0.0.2").unwrap();
        h.insert_header("User-Agent", "mailgun").unwrap();
        h.insert_header("X_Webhook_Id", "evil").unwrap();
        h.insert_header("x_WEBHOOK_route", "evil").unwrap();
        h.insert_header("X_Forwarded_For", "6.6.6.6").unwrap();
        h.insert_header("Forwarded", "for=6.6.6.6").unwrap();
        h.insert_header("X-Real-IP", "6.6.6.6").unwrap();
        h.insert_header("Authorization", "Basic aG9vazpwdw==")
            .unwrap();
        h
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
            content_length: 42,
        };
        let req = upstream_request(&client(), &f).unwrap();
        let get = |n: &str| req.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(req.uri.to_string(), "/up?x=1");
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
        assert_eq!(req.headers.get_all("x-webhook-id").iter().count(), 1);
        // No spelling of a header hookguard asserts survives, nor the consumed credentials.
        for (name, _) in req.headers.iter() {
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
