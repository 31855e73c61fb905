//! Client address ranges for a UDP listener's `allow` list: parsing `10.0.0.0/8`-style text
//! and matching a peer address (an IPv4 client seen on a dual-stack socket as `::ffff:a.b.c.d`
//! matches IPv4 ranges).

use std::fmt;
use std::net::IpAddr;

/// An address range: `addr` with the low `max - prefix` bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare `ADDR` (one host). Host bits must be zero, so that a
    /// typo like `10.0.0.1/8` (meant as one host?) is caught rather than silently widened.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let example = "like \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\"";
        let trimmed = text.trim();
        let (addr_text, prefix_text) = match trimmed.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (trimmed, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            format!("{text:?} does not start with an IPv4 or IPv6 address; write a range {example}")
        })?;
        let max = max_prefix(addr);
        let prefix = match prefix_text {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                format!(
                    "{text:?} has prefix length {p:?}; use 0 to {max} for an {} address, {example}",
                    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                )
            })?,
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network() != bits(addr) {
            return Err(format!(
                "{text:?} has bits set past the /{prefix} prefix; write the range's first address, \
                 {}/{prefix}, or the host alone as {addr}",
                from_bits(addr, cidr.network())
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is in this range. IPv4-mapped IPv6 addresses are compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        mask(bits(ip), self.prefix, max_prefix(ip)) == self.network()
    }

    fn network(&self) -> u128 {
        mask(bits(self.addr), self.prefix, max_prefix(self.addr))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_bits(like: IpAddr, value: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(u32::try_from(value).unwrap_or(0).into()),
        IpAddr::V6(_) => IpAddr::V6(value.into()),
    }
}

/// `value` (a `width`-bit number) with all but its top `prefix` bits cleared.
fn mask(value: u128, prefix: u8, width: u8) -> u128 {
    let host_bits = u32::from(width.saturating_sub(prefix));
    if host_bits >= 128 {
        0
    } else {
        value & !((1u128 << host_bits) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_ranges_match_by_prefix() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(c.contains(ip("10.255.255.255")));
        assert!(!c.contains(ip("11.0.0.0")));
        assert!(!c.contains(ip("9.255.255.255")));
        assert_eq!(c.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn a_bare_address_is_one_host() {
        let c = Cidr::parse("192.0.2.7").unwrap();
        assert_eq!(c.to_string(), "192.0.2.7/32");
        assert!(c.contains(ip("192.0.2.7")));
        assert!(!c.contains(ip("192.0.2.8")));
        let c6 = Cidr::parse("::1").unwrap();
        assert!(c6.contains(ip("::1")));
        assert!(!c6.contains(ip("::2")));
    }

    #[test]
    fn zero_prefix_matches_the_whole_family_only() {
        let any4 = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(any4.contains(ip("203.0.113.9")));
        assert!(!any4.contains(ip("2001:db8::1")));
        let any6 = Cidr::parse("::/0").unwrap();
        assert!(any6.contains(ip("2001:db8::1")));
        assert!(!any6.contains(ip("203.0.113.9")));
    }

    #[test]
    fn ipv6_ranges_and_mapped_ipv4_clients() {
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains(ip("2001:db8:ffff::1")));
        assert!(!c.contains(ip("2001:db9::1")));
        let v4 = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(v4.contains(ip("::ffff:127.0.0.5")));
        assert!(!v4.contains(ip("::ffff:128.0.0.5")));
    }

    #[test]
    fn rejections_name_the_problem() {
        let bad_addr = Cidr::parse("10.0.0/8").unwrap_err();
        assert!(bad_addr.contains("IPv4 or IPv6 address"), "{bad_addr}");
        let long = Cidr::parse("10.0.0.0/33").unwrap_err();
        assert!(long.contains("0 to 32"), "{long}");
        let long6 = Cidr::parse("::/129").unwrap_err();
        assert!(long6.contains("0 to 128"), "{long6}");
        let junk = Cidr::parse("10.0.0.0/x").unwrap_err();
        assert!(junk.contains("prefix length"), "{junk}");
        let host_bits = Cidr::parse("10.0.0.1/8").unwrap_err();
        assert!(host_bits.contains("10.0.0.0/8"), "{host_bits}");
    }
}
