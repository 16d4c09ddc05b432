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
    format!("http://{}{path}", crate::net::reachable(listen))
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
    // A text body goes on the command line as is; any other (a binary multipart part) is
    // written by `printf` from octal escapes, so curl sends exactly the bytes signed.
    let (mut cmd, data) = match std::str::from_utf8(&signed.body) {
        Ok(text) if !text.contains('\0') => (String::new(), shell_quote(text)),
        _ => (
            format!("printf {} | ", printf_format(&signed.body)),
            "@-".to_owned(),
        ),
    };
    cmd.push_str(&format!("curl -sS -i -X POST {}", shell_quote(&url)));
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
    cmd.push_str(&format!(" \\\n  --data-binary {data}"));
    Ok(cmd)
}

/// A quoted `printf` format that prints `bytes` exactly: printable ASCII as is (but `%`, `\`
/// and `'`), every other byte as a three-digit octal escape.
fn printf_format(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2 + 2);
    out.push('\'');
    for &b in bytes {
        match b {
            b'%' | b'\\' | b'\'' => out.push_str(&format!("\\{b:03o}")),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out.push('\'');
    out
}

/// Single-quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printf` prints back exactly the bytes, whatever they are.
    #[test]
    fn binary_bodies_are_printed_exactly() {
        let bytes: Vec<u8> = (0u8..=255)
            .chain(b"%s %% \\ ' \n".iter().copied())
            .collect();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf {}", printf_format(&bytes)))
            .output()
            .expect("sh");
        assert_eq!(out.stdout, bytes);
    }

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
