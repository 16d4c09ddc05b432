//! Who sent a request: the socket's peer address, or, only when that peer is one of the
//! configured `trusted_proxies`, the address those proxies recorded in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is read from the right: each trusted proxy appends the address it saw,
//! so the first entry from the right that is not a trusted proxy is the client. Entries to
//! its left were written by the client itself and prove nothing.

use std::net::IpAddr;

use ipnet::IpNet;

/// The client address of a request that arrived from `peer`.
pub fn resolve(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let Some(xff) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for entry in xff.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !is_trusted(client, trusted) {
                    return client;
                }
            }
            // Garbage where an address should be: the last trusted hop is all we know.
            Err(_) => return client,
        }
    }
    client
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Whether `ip` falls in any of `allowed`.
pub fn allowed(ip: IpAddr, allowed: &[IpNet]) -> bool {
    allowed.iter().any(|net| net.contains(&ip.to_canonical()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(ip("203.0.113.5"), Some("3.3.3.3"), &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(
            resolve(ip("203.0.113.5"), Some("3.3.3.3"), &[]),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let trusted = nets(&["10.0.0.0/8", "192.168.1.1/32"]);
        // client-written junk, the real client, then two trusted hops
        let xff = "1.1.1.1, 198.51.100.7, 10.0.0.3";
        assert_eq!(
            resolve(ip("192.168.1.1"), Some(xff), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(resolve(ip("10.1.2.3"), None, &trusted), ip("10.1.2.3"));
        assert_eq!(
            resolve(ip("10.1.2.3"), Some("10.0.0.1"), &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            resolve(ip("10.1.2.3"), Some("nonsense, 10.0.0.9"), &trusted),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn ipv4_mapped_addresses_match_v4_ranges() {
        let allowed_nets = nets(&["203.0.113.0/24"]);
        assert!(allowed(ip("::ffff:203.0.113.9"), &allowed_nets));
        assert!(!allowed(ip("::ffff:198.51.100.1"), &allowed_nets));
        let trusted = nets(&["127.0.0.1/32"]);
        assert_eq!(
            resolve(ip("::ffff:127.0.0.1"), Some("203.0.113.9"), &trusted),
            ip("203.0.113.9")
        );
    }
}
