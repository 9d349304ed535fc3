//! The client's address behind trusted proxies (nginx's realip module: `set_real_ip_from`,
//! `real_ip_header`, `real_ip_recursive`).
//!
//! When the connection comes from one of the `set_real_ip_from` ranges, the client address is
//! taken from `real_ip_header`. That address is then what `ip_hash`, `$remote_addr`, `X-Real-IP`,
//! the access log and `status_allow` see. A request from anywhere else keeps the connection's
//! address, whatever its headers say, so a client cannot choose its own address.
//!
//! `X-Forwarded-For` is a list that each proxy appends to. Without `real_ip_recursive` the last
//! entry is taken (the address the trusted proxy saw). With it, entries are taken from the right
//! while they are trusted proxies themselves, so a chain of trusted proxies is skipped. Any
//! other header holds one address. An entry that is not an address (`unknown`) stops the
//! search: the address found so far stands. An entry may carry a port (`1.2.3.4:5678`,
//! `[2001:db8::1]:443`), as some cloud balancers send.
//!
//! A trusted proxy's `X-Forwarded-Proto` (`http` or `https`) is passed on too, so an app
//! behind a TLS-terminating balancer still learns that its client used HTTPS; from anyone
//! else the header is replaced with `http`.

use std::net::{IpAddr, SocketAddr};

use crate::netmask::Net;

/// Where the client address comes from, for connections from trusted proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RealIp {
    from: Vec<Net>,
    /// The header's name, lowercase.
    header: String,
    /// The header is `X-Forwarded-For` (a list).
    list: bool,
    recursive: bool,
}

impl RealIp {
    /// `None` when `from` is empty (the feature is off).
    pub fn new(from: Vec<Net>, header: &str, recursive: bool) -> Option<Self> {
        if from.is_empty() {
            return None;
        }
        Some(Self {
            from,
            list: header.eq_ignore_ascii_case("x-forwarded-for"),
            header: header.to_ascii_lowercase(),
            recursive,
        })
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.from.iter().any(|n| n.contains(ip))
    }

    /// The client's address for a connection from `peer` with these request headers.
    pub fn client(&self, peer: IpAddr, headers: &[httparse::Header<'_>]) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut values = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(&self.header))
            .map(|h| h.value);
        if !self.list {
            return values.next().and_then(parse_addr).unwrap_or(peer);
        }
        // The lines' entries from the right: the last line holds the newest entries.
        let mut client = peer;
        for entry in values
            .rev()
            .flat_map(|l| l.split(|&b| b == b',').rev())
            .filter(|e| !e.trim_ascii().is_empty())
        {
            let Some(ip) = parse_addr(entry) else { break };
            client = ip;
            if !self.recursive || !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// An address, with or without a port; IPv4-mapped IPv6 becomes IPv4.
fn parse_addr(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw.trim_ascii()).ok()?;
    let ip = match text.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => text.parse::<SocketAddr>().ok()?.ip(),
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<Net> {
        list.iter().map(|n| Net::parse(n).unwrap()).collect()
    }

    fn client(r: &RealIp, peer: &str, headers: &[(&'static str, &'static str)]) -> IpAddr {
        let h: Vec<httparse::Header<'_>> = headers
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect();
        r.client(ip(peer), &h)
    }

    #[test]
    fn off_without_trusted_ranges() {
        assert_eq!(RealIp::new(Vec::new(), "X-Forwarded-For", true), None);
    }

    #[test]
    fn untrusted_peers_keep_their_address() {
        let r = RealIp::new(nets(&["10.0.0.0/8"]), "X-Real-IP", false).unwrap();
        assert_eq!(
            client(&r, "192.0.2.1", &[("X-Real-IP", "203.0.113.5")]),
            ip("192.0.2.1")
        );
        assert_eq!(
            client(&r, "10.1.2.3", &[("x-real-ip", " 203.0.113.5 ")]),
            ip("203.0.113.5")
        );
        // Missing or not an address: the peer.
        assert_eq!(client(&r, "10.1.2.3", &[]), ip("10.1.2.3"));
        assert_eq!(
            client(&r, "10.1.2.3", &[("X-Real-IP", "unknown")]),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn forwarded_for_takes_the_last_entry_or_skips_trusted_ones() {
        let flat = RealIp::new(nets(&["10.0.0.0/8"]), "X-Forwarded-For", false).unwrap();
        let deep = RealIp::new(nets(&["10.0.0.0/8"]), "x-forwarded-for", true).unwrap();
        let h = [("X-Forwarded-For", "198.51.100.1, 203.0.113.5, 10.0.0.2")];
        assert_eq!(client(&flat, "10.0.0.1", &h), ip("10.0.0.2"));
        assert_eq!(client(&deep, "10.0.0.1", &h), ip("203.0.113.5"));
        // All trusted: the leftmost.
        let h = [("X-Forwarded-For", "10.0.0.3,10.0.0.2")];
        assert_eq!(client(&deep, "10.0.0.1", &h), ip("10.0.0.3"));
        // Several lines: the last line's entries are the newest.
        let h = [
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-For", "203.0.113.5, 10.0.0.9"),
        ];
        assert_eq!(client(&deep, "10.0.0.1", &h), ip("203.0.113.5"));
        let h = [
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-For", "10.0.0.9"),
        ];
        assert_eq!(client(&deep, "10.0.0.1", &h), ip("198.51.100.1"));
        // Garbage stops the walk; what was found so far stands.
        let h = [("X-Forwarded-For", "198.51.100.1, unknown, 10.0.0.2")];
        assert_eq!(client(&deep, "10.0.0.1", &h), ip("10.0.0.2"));
        let h = [("X-Forwarded-For", "not an address")];
        assert_eq!(client(&flat, "10.0.0.1", &h), ip("10.0.0.1"));
        // Empty entries are skipped.
        let h = [("X-Forwarded-For", "203.0.113.5, ,")];
        assert_eq!(client(&flat, "10.0.0.1", &h), ip("203.0.113.5"));
    }

    #[test]
    fn ports_and_mapped_addresses() {
        let r = RealIp::new(nets(&["127.0.0.1", "::1"]), "X-Forwarded-For", false).unwrap();
        let h = [("X-Forwarded-For", "203.0.113.5:41234")];
        assert_eq!(client(&r, "127.0.0.1", &h), ip("203.0.113.5"));
        let h = [("X-Forwarded-For", "[2001:db8::7]:443")];
        assert_eq!(client(&r, "::1", &h), ip("2001:db8::7"));
        let h = [("X-Forwarded-For", "::ffff:203.0.113.5")];
        assert_eq!(client(&r, "::ffff:127.0.0.1", &h), ip("203.0.113.5"));
    }
}
