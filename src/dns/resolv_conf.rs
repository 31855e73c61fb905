//! `/etc/resolv.conf`: only its `nameserver` lines are read.

use std::net::{IpAddr, SocketAddr};

/// The nameservers `text` names, in order, on port 53. Lines other than
/// `nameserver ADDRESS` are ignored, and so are addresses with an IPv6
/// zone (`fe80::1%eth0`), which a connected socket here cannot carry.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            (fields.next() == Some("nameserver"))
                .then(|| fields.next())
                .flatten()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameserver_lines_only() {
        let text = "# generated\nsearch example.com\nnameserver 192.0.2.53\n\
                    nameserver 2001:db8::53 # v6\n  nameserver\t10.0.0.2\n\
                    nameserver fe80::1%eth0\nnameserver\n; nameserver 10.9.9.9\n\
                    options ndots:2\n";
        let want: Vec<SocketAddr> = ["192.0.2.53:53", "[2001:db8::53]:53", "10.0.0.2:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(parse_resolv_conf(text), want);
        assert!(parse_resolv_conf("").is_empty());
    }
}
