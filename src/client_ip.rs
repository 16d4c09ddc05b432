//! Who sent a request: the socket's peer address, or, only when that peer is one of the
//! configured `trusted_proxies`, the address those proxies recorded in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is read from the right: each trusted proxy appends the address it saw,
//! so the first entry from the right that is not a trusted proxy is the client. Entries to
//! its left were written by the client itself and prove nothing. Several header lines are one
//! list, in order (RFC 9110 §5.3): reading only the first would let a client put an allowed
//! address in a line of its own, ahead of the one its proxy appended. When the list cannot be
//! read (a byte that is not visible ASCII, an entry that is not an address where the client
//! should be), the client is unknown: `None`, which no `allow_ips` admits.

use std::net::IpAddr;

use ipnet::IpNet;

/// The client address of a request that arrived from `peer`, carrying the `X-Forwarded-For`
/// header lines `forwarded_for` (raw bytes, in order). `None`: a trusted proxy forwarded a list
/// that cannot be read, so who the client is cannot be known.
pub fn resolve<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let mut entries: Vec<&str> = Vec::new();
    for line in forwarded_for {
        let text = std::str::from_utf8(line).ok()?;
        if !text
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return None;
        }
        entries.extend(text.split(','));
    }
    let mut client = peer;
    for entry in entries.iter().rev() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue; // `a,,b` or a line of spaces: nothing written there
        }
        client = entry.parse::<IpAddr>().ok()?.to_canonical();
        if !is_trusted(client, trusted) {
            return Some(client);
        }
    }
    // Every hop is a trusted proxy (or there is no list): the last one is the client.
    Some(client)
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

    fn via(peer: &str, lines: &[&[u8]], trusted: &[IpNet]) -> Option<IpAddr> {
        resolve(ip(peer), lines.iter().copied(), trusted)
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            via("203.0.113.5", &[b"3.3.3.3"], &trusted),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            via("203.0.113.5", &[b"3.3.3.3"], &[]),
            Some(ip("203.0.113.5"))
        );
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let trusted = nets(&["10.0.0.0/8", "192.168.1.1/32"]);
        // client-written junk, the real client, then two trusted hops
        let xff: &[u8] = b"1.1.1.1, 198.51.100.7, 10.0.0.3";
        assert_eq!(
            via("192.168.1.1", &[xff], &trusted),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(via("10.1.2.3", &[], &trusted), Some(ip("10.1.2.3")));
        assert_eq!(
            via("10.1.2.3", &[b"10.0.0.1"], &trusted),
            Some(ip("10.0.0.1"))
        );
    }

    /// Several lines are one list: the client's own line, first, proves nothing.
    #[test]
    fn several_header_lines_are_one_list() {
        let trusted = nets(&["127.0.0.0/8"]);
        let lines: [&[u8]; 2] = [b"203.0.113.7", b"198.51.100.9"];
        assert_eq!(via("127.0.0.1", &lines, &trusted), Some(ip("198.51.100.9")));
        let trusted = nets(&["127.0.0.0/8", "10.0.0.0/8"]);
        let lines: [&[u8]; 2] = [b"198.51.100.9", b"203.0.113.7, 10.0.0.1"];
        assert_eq!(via("127.0.0.1", &lines, &trusted), Some(ip("203.0.113.7")));
    }

    /// What cannot be read leaves the client unknown, never the proxy's own address.
    #[test]
    fn an_unreadable_list_leaves_the_client_unknown() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(via("10.1.2.3", &[b"203.0.113.7\xff"], &trusted), None);
        assert_eq!(via("10.1.2.3", &[b"nonsense, 10.0.0.9"], &trusted), None);
        assert_eq!(via("10.1.2.3", &[b"203.0.113.7\x01"], &trusted), None);
        // Garbage left of a real client is the client's own writing: not read.
        assert_eq!(
            via("10.1.2.3", &[b"nonsense, 198.51.100.7"], &trusted),
            Some(ip("198.51.100.7"))
        );
    }

    #[test]
    fn ipv4_mapped_addresses_match_v4_ranges() {
        let allowed_nets = nets(&["203.0.113.0/24"]);
        assert!(allowed(ip("::ffff:203.0.113.9"), &allowed_nets));
        assert!(!allowed(ip("::ffff:198.51.100.1"), &allowed_nets));
        let trusted = nets(&["127.0.0.1/32"]);
        assert_eq!(
            via("::ffff:127.0.0.1", &[b"203.0.113.9"], &trusted),
            Some(ip("203.0.113.9"))
        );
    }
}
