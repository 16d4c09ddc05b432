//! The admission step: what the request line and header alone decide, before a byte of the
//! body is read. Pure: a function of the config, the request head and the socket peer, so it
//! is tested on its own.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method, Uri};

use crate::client_ip;
use crate::config::{Config, Route};
use crate::outcome::Rejection;

/// A request head as it arrived.
pub struct Head<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// The socket peer.
    pub peer: Option<IpAddr>,
}

/// What the head allows.
#[derive(Debug)]
pub enum Admitted {
    /// An unsigned `HEAD` probe the route's provider expects answered `200`.
    Probe(Arc<Route>),
    /// A POST whose body is to be read.
    Post(Post),
}

#[derive(Debug)]
pub struct Post {
    pub route: Arc<Route>,
    /// The client's address: the peer, or what trusted proxies say (`None`: unknown).
    pub client_ip: Option<IpAddr>,
    /// `Content-Length`, when declared.
    pub declared: Option<usize>,
    /// The client waits for `100 Continue` before sending the body.
    pub expects_continue: bool,
}

/// A refused head: the rejection, and the route when one matched (for metrics and logs).
#[derive(Debug)]
pub struct Refused {
    pub route: Option<Arc<Route>>,
    pub rejection: Rejection,
}

/// Route, method, client address, header size and declared body size, in the contract's
/// order.
pub fn admit(config: &Config, head: &Head<'_>) -> Result<Admitted, Refused> {
    let Some(route) = config.routes.lookup(head.uri.path()).cloned() else {
        return Err(Refused {
            route: None,
            rejection: Rejection::NoRoute,
        });
    };
    let refuse = |rejection| {
        Err(Refused {
            route: Some(Arc::clone(&route)),
            rejection,
        })
    };
    if *head.method == Method::HEAD && route.provider.answers_head_probe() {
        return Ok(Admitted::Probe(route));
    }
    if *head.method != Method::POST {
        return refuse(Rejection::MethodNotAllowed);
    }
    let client_ip = client_address(head, &config.trusted_proxies);
    if let Some(allowed) = &route.allow_ips {
        if !client_ip.is_some_and(|ip| client_ip::allowed(ip, allowed)) {
            return refuse(Rejection::IpNotAllowed);
        }
    }
    if header_size(head) > config.max_header_bytes {
        return refuse(Rejection::HeadersTooLarge);
    }
    let declared = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    if declared.is_some_and(|n: usize| n > config.max_body_bytes) {
        return refuse(Rejection::BodyTooLarge);
    }
    let expects_continue = head
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    Ok(Admitted::Post(Post {
        route,
        client_ip,
        declared,
        expects_continue,
    }))
}

/// The client's address: the socket peer, or what trusted proxies say it is.
pub fn client_address(head: &Head<'_>, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = head.peer?;
    if trusted.is_empty() {
        return Some(peer);
    }
    let lines = head.headers.get_all("x-forwarded-for");
    client_ip::resolve(peer, lines.iter().map(|v| v.as_bytes()), trusted)
}

/// The size of the request line and header lines as they arrived (name, `: `, value, CRLF).
fn header_size(head: &Head<'_>) -> usize {
    let line =
        head.method.as_str().len() + head.uri.path_and_query().map_or(1, |p| p.as_str().len()) + 11;
    head.headers.iter().fold(line, |n, (name, value)| {
        n + name.as_str().len() + value.len() + 4
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::expand::ProcessEnv;

    fn config(extra_top: &str, extra_route: &str) -> Config {
        let yaml = format!(
            "listen: 127.0.0.1:1\nadmin_listen: 127.0.0.1:2\nupstream: http://127.0.0.1:3\n\
             max_body_bytes: 100\nmax_header_bytes: 1024\n{extra_top}\nroutes:\n\
             - name: mg\n  path: /mg\n  provider: mailgun\n  secrets: [k]\n{extra_route}\
             - name: md\n  path: /md\n  provider: mandrill\n  secrets: [k]\n  public_url: https://a.example/md\n"
        );
        crate::config::load_str(&yaml, "test", &ProcessEnv).expect("config")
    }

    fn head_of<'a>(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Head<'a> {
        Head {
            method,
            uri,
            headers,
            peer: Some("203.0.113.9".parse().unwrap()),
        }
    }

    fn rejection(r: Result<Admitted, Refused>) -> Option<Rejection> {
        r.err().map(|e| e.rejection)
    }

    #[test]
    fn route_method_and_probe() {
        let c = config("", "");
        let h = HeaderMap::new();
        let post = Method::POST;
        let get = Method::GET;
        let head = Method::HEAD;
        let at = |p: &str| p.parse::<Uri>().unwrap();
        assert_eq!(
            rejection(admit(&c, &head_of(&post, &at("/nope"), &h))),
            Some(Rejection::NoRoute)
        );
        assert_eq!(
            rejection(admit(&c, &head_of(&get, &at("/mg"), &h))),
            Some(Rejection::MethodNotAllowed)
        );
        assert!(matches!(
            admit(&c, &head_of(&head, &at("/md"), &h)),
            Ok(Admitted::Probe(_))
        ));
        assert_eq!(
            rejection(admit(&c, &head_of(&head, &at("/mg"), &h))),
            Some(Rejection::MethodNotAllowed)
        );
        // The query string takes no part in matching.
        assert!(matches!(
            admit(&c, &head_of(&post, &at("/mg?x=1"), &h)),
            Ok(Admitted::Post(_))
        ));
    }

    #[test]
    fn sizes_are_checked_before_reading() {
        let c = config("", "");
        let uri: Uri = "/mg".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("content-length", "101".parse().unwrap());
        let post = Method::POST;
        assert_eq!(
            rejection(admit(&c, &head_of(&post, &uri, &h))),
            Some(Rejection::BodyTooLarge)
        );
        h.insert("content-length", "100".parse().unwrap());
        h.insert("expect", "100-Continue".parse().unwrap());
        match admit(&c, &head_of(&post, &uri, &h)) {
            Ok(Admitted::Post(p)) => {
                assert_eq!(p.declared, Some(100));
                assert!(p.expects_continue);
            }
            other => panic!("{other:?}"),
        }
        h.insert("x-padding", "a".repeat(1100).parse().unwrap());
        let refused = admit(&c, &head_of(&post, &uri, &h)).unwrap_err();
        assert_eq!(refused.rejection, Rejection::HeadersTooLarge);
        assert_eq!(refused.route.map(|r| r.name.clone()).as_deref(), Some("mg"));
    }

    #[test]
    fn allow_ips_uses_the_peer_or_trusted_proxies() {
        let c = config("", "  allow_ips: [\"203.0.113.0/24\"]\n");
        let uri: Uri = "/mg".parse().unwrap();
        let post = Method::POST;
        let mut h = HeaderMap::new();
        assert!(admit(&c, &head_of(&post, &uri, &h)).is_ok());
        let mut outside = head_of(&post, &uri, &h);
        outside.peer = Some("198.51.100.1".parse().unwrap());
        assert_eq!(
            rejection(admit(&c, &outside)),
            Some(Rejection::IpNotAllowed)
        );

        // Behind a trusted proxy: two header lines are one list, read from the right.
        let c = config(
            "trusted_proxies: [\"10.0.0.0/8\"]",
            "  allow_ips: [\"203.0.113.0/24\"]\n",
        );
        h.append("x-forwarded-for", "203.0.113.7".parse().unwrap());
        h.append("x-forwarded-for", "198.51.100.9".parse().unwrap());
        let mut via_proxy = head_of(&post, &uri, &h);
        via_proxy.peer = Some("10.0.0.1".parse().unwrap());
        assert_eq!(
            rejection(admit(&c, &via_proxy)),
            Some(Rejection::IpNotAllowed)
        );
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "198.51.100.9, 203.0.113.7".parse().unwrap(),
        );
        let mut via_proxy = head_of(&post, &uri, &h);
        via_proxy.peer = Some("10.0.0.1".parse().unwrap());
        assert!(admit(&c, &via_proxy).is_ok());
    }
}
