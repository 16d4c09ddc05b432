//! `hookguard sign`: a ready `curl` command that delivers a body to a route, signed now as its
//! provider would sign it. For trying a deployment by hand.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::config::Config;
use crate::providers::{SignError, SignRequest};

#[derive(Debug, thiserror::Error)]
pub enum SignCommandError {
    #[error("no route named `{0}` (routes: {1})")]
    NoRoute(String, String),
    #[error("route `{route}` ({provider}): {source}")]
    Provider {
        route: String,
        provider: &'static str,
        source: SignError,
    },
}

/// The URL the proxy answers `path` on, reachable from this machine.
pub fn local_url(listen: SocketAddr, path: &str) -> String {
    let host = match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => "127.0.0.1".to_owned(),
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => "[::1]".to_owned(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    format!("http://{host}:{}{path}", listen.port())
}

/// The `curl` command for `body` to route `route_name`.
pub fn curl_command(
    config: &Config,
    route_name: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<String, SignCommandError> {
    let route = config
        .routes
        .iter()
        .find(|r| r.name == route_name)
        .ok_or_else(|| {
            let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
            SignCommandError::NoRoute(route_name.to_owned(), names.join(", "))
        })?;
    let url = local_url(config.listen, &route.path);
    let signed = route
        .provider
        .sign(&SignRequest { body, url: &url }, now)
        .map_err(|source| SignCommandError::Provider {
            route: route.name.clone(),
            provider: route.provider_name,
            source,
        })?;
    let url = match &signed.query {
        Some(q) => format!("{url}?{q}"),
        None => url,
    };
    let mut cmd = format!("curl -sS -i -X POST {}", shell_quote(&url));
    cmd.push_str(&format!(
        " \\\n  -H {}",
        shell_quote(&format!("Content-Type: {}", signed.content_type))
    ));
    for (name, value) in &signed.headers {
        cmd.push_str(&format!(
            " \\\n  -H {}",
            shell_quote(&format!("{name}: {value}"))
        ));
    }
    cmd.push_str(&format!(
        " \\\n  --data-binary {}",
        shell_quote(&String::from_utf8_lossy(&signed.body))
    ));
    Ok(cmd)
}

/// Single-quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(
            local_url("0.0.0.0:8080".parse().unwrap(), "/a"),
            "http://127.0.0.1:8080/a"
        );
        assert_eq!(
            local_url("[::]:80".parse().unwrap(), "/a"),
            "http://[::1]:80/a"
        );
    }
}
