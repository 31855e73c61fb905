//! `/etc/hosts`: static names, looked up before any query is sent.

use std::collections::HashMap;
use std::net::IpAddr;

use super::message::normalise;

/// The parsed hosts file: name (normalised) -> its addresses, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hosts {
    names: HashMap<String, Vec<IpAddr>>,
}

impl Hosts {
    /// Parses hosts-file text: `address name [alias...]` per line, `#`
    /// starts a comment, lines whose address does not parse (or that name
    /// nothing) are skipped, as the C library skips them. IPv6 addresses
    /// with a zone (`fe80::1%eth0`) are skipped: a zone cannot be a
    /// connect destination here.
    pub fn parse(text: &str) -> Hosts {
        let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            let Some(Ok(addr)) = fields.next().map(str::parse::<IpAddr>) else {
                continue;
            };
            for name in fields {
                let addrs = names.entry(normalise(name)).or_default();
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        Hosts { names }
    }

    /// The addresses of `name` (normalised), in file order.
    pub fn get(&self, name: &str) -> Option<&[IpAddr]> {
        self.names.get(name).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_aliases_and_both_families() {
        let h = Hosts::parse(
            "# comment\n127.0.0.1 localhost Local.Example # trailing\n\
             ::1\tlocalhost ip6-localhost\n\
             not-an-ip bogus\n\
             fe80::1%eth0 zoned\n\
             10.0.0.1\n\
             192.0.2.7 db db.internal.\n",
        );
        let lh: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(h.get("localhost"), Some(lh.as_slice()));
        assert_eq!(h.get("local.example").map(<[IpAddr]>::len), Some(1));
        assert_eq!(h.get("ip6-localhost").map(<[IpAddr]>::len), Some(1));
        assert_eq!(h.get("db.internal"), h.get("db"));
        assert_eq!(h.get("bogus"), None);
        assert_eq!(h.get("zoned"), None);
        assert_eq!(h.len(), 5);
    }
}
