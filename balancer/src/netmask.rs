//! Address ranges in CIDR notation (`127.0.0.0/8`, `::1/128`, or a bare address), for allow
//! lists such as `status_allow`.

use std::net::IpAddr;

/// An address range: an address and how many of its leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// Parses `a.b.c.d/len`, `x::y/len` or a bare address (all its bits).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or a CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0..={max}")),
            },
        };
        Ok(Self {
            addr: addr.to_canonical(),
            prefix,
        })
    }

    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// nginx's `allow` / `deny` rules (`ngx_http_access_module`): checked in order, the first
/// that matches the client decides; a client no rule matches is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AccessRules(Vec<(bool, Option<Net>)>);

impl AccessRules {
    /// Parses entries such as `"allow 10.0.0.0/8"`, `"deny 192.0.2.1"`, `"deny all"`; the
    /// error gives the index of the first bad entry.
    pub fn parse(entries: &[String]) -> Result<Self, (usize, String)> {
        crate::config::parse_each(entries, Self::parse_rule).map(Self)
    }

    fn parse_rule(e: &str) -> Result<(bool, Option<Net>), String> {
        let (verb, what) = e
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((e.trim(), ""));
        let allow = match verb {
            "allow" => true,
            "deny" => false,
            _ => {
                return Err(format!(
                    "{e:?}: expected \"allow <range>\" or \"deny <range>\" (a range, an address or \"all\")"
                ))
            }
        };
        let net = match what.trim() {
            "all" => None,
            "" => return Err(format!("{e:?}: a range, an address or \"all\" is missing")),
            range => Some(Net::parse(range)?),
        };
        Ok((allow, net))
    }

    /// No rules: everyone is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` may be served.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0
            .iter()
            .find(|(_, net)| net.is_none_or(|n| n.contains(ip)))
            .is_none_or(|(allow, _)| *allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules_first_match_decides() {
        let rules = AccessRules::parse(&[
            "allow 203.0.113.0/24".into(),
            "deny  198.51.100.7".into(),
            "allow 198.51.100.0/24".into(),
            "allow ::1".into(),
            "deny all".into(),
        ])
        .expect("rules");
        for (addr, allowed) in [
            ("203.0.113.9", true),
            ("198.51.100.7", false),
            ("198.51.100.8", true),
            ("::1", true),
            ("::ffff:203.0.113.1", true),
            ("192.0.2.1", false),
            ("2001:db8::1", false),
        ] {
            assert_eq!(rules.allows(ip(addr)), allowed, "{addr}");
        }
        // No rule matches: allowed, as in nginx.
        let only_deny = AccessRules::parse(&["deny 192.0.2.0/24".into()]).expect("rules");
        assert!(only_deny.allows(ip("198.51.100.1")));
        assert!(!only_deny.allows(ip("192.0.2.200")));
        assert!(AccessRules::default().allows(ip("192.0.2.1")));
    }

    #[test]
    fn bad_access_rules_name_the_entry() {
        for (entries, at) in [
            (vec!["permit 10.0.0.0/8"], 0),
            (vec!["allow 10.0.0.0/8", "deny"], 1),
            (vec!["allow 10.0.0.0/33"], 0),
            (vec!["deny everyone"], 0),
        ] {
            let entries: Vec<String> = entries.into_iter().map(String::from).collect();
            let err = AccessRules::parse(&entries).expect_err("refused");
            assert_eq!(err.0, at, "{entries:?}: {}", err.1);
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn ranges_match_their_addresses_only() {
        let lo = Net::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains(ip("127.0.0.1")) && lo.contains(ip("127.255.0.9")));
        assert!(!lo.contains(ip("128.0.0.1")) && !lo.contains(ip("::1")));
        assert!(lo.contains(ip("::ffff:127.0.0.1")), "IPv4-mapped");
        let one = Net::parse("10.1.2.3").unwrap();
        assert!(one.contains(ip("10.1.2.3")) && !one.contains(ip("10.1.2.4")));
        let all = Net::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
        let v6 = Net::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(Net::parse("::1").unwrap().contains(ip("::1")));
        assert!(Net::parse("::/0").unwrap().contains(ip("fe80::1")));
    }

    #[test]
    fn bad_ranges_are_refused() {
        for bad in [
            "",
            "localhost",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "10.0.0/8",
            "1.2.3.4/-1",
        ] {
            assert!(Net::parse(bad).is_err(), "{bad}");
        }
    }
}
