//! Small facts about addresses shared by the server, the admin client and `hookguard sign`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// An address this host can connect to in order to reach a listener bound to `addr`: the
/// loopback address of the same family when `addr` is unspecified (`0.0.0.0`, `[::]`).
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_becomes_loopback() {
        let r = |s: &str| reachable(s.parse().unwrap()).to_string();
        assert_eq!(r("0.0.0.0:80"), "127.0.0.1:80");
        assert_eq!(r("[::]:80"), "[::1]:80");
        assert_eq!(r("10.1.2.3:80"), "10.1.2.3:80");
    }
}
