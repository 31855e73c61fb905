//! Socket addresses as IP literal plus port, with a specific diagnosis for each common mistake.
//!
//! ringfwd never resolves names: a DNS lookup at startup would make the listener set depend on
//! resolver state, so only literals are accepted and names get a message saying so.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

const HINT: &str = "write an IP address and port, like 127.0.0.1:8080 or [::1]:8080";

/// An address to listen on. Port 0 is allowed: the kernel picks one.
///
/// An IPv4-mapped IPv6 address (`[::ffff:127.0.0.1]:8080`) is refused rather
/// than rewritten: IPv6 listeners are IPV6_V6ONLY (as NGINX's), and the
/// kernel refuses to bind one to a mapped address (EINVAL), so the operator
/// is told the IPv4 form to write, and the listener's name stays what they wrote.
pub(super) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let addr = parse_literal(text)?;
    if let SocketAddr::V6(v6) = addr
        && let Some(v4) = v6.ip().to_ipv4_mapped()
    {
        return Err(format!(
            "{:?} is an IPv4-mapped IPv6 address, which an IPv6 listener cannot bind (ringfwd's \
             IPv6 listeners take IPv6 only); write the IPv4 address, like {}",
            text.trim(),
            SocketAddr::new(v4.into(), addr.port())
        ));
    }
    Ok(addr)
}

fn parse_literal(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    text.parse().map_err(|_| diagnose(text))
}

/// An address to connect to: a real port and a real host are required.
pub(super) fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    let addr = parse_literal(text)?;
    let text = text.trim();
    if addr.ip().is_unspecified() {
        return Err(format!(
            "{text:?} is the unspecified address {}, which names no host to connect to; \
             write the upstream's own IP, like {}",
            addr.ip(),
            SocketAddr::new(example_ip(&addr), addr.port())
        ));
    }
    if addr.port() == 0 {
        return Err(format!(
            "{text:?} has port 0; an upstream needs the port it accepts connections on, like {}",
            SocketAddr::new(addr.ip(), 80)
        ));
    }
    Ok(addr)
}

/// Loopback in the same family as `addr`, for examples.
fn example_ip(addr: &SocketAddr) -> std::net::IpAddr {
    match addr {
        SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
    }
}

/// Why `text` (already trimmed) is not `ip:port`, and what to write instead.
fn diagnose(text: &str) -> String {
    let quoted = format!("{text:?}");
    if text.is_empty() {
        return format!("{quoted} is empty; {HINT}");
    }
    if let Some(rest) = text.strip_prefix('[') {
        return diagnose_bracketed(&quoted, rest);
    }
    if text.matches(':').count() > 1 {
        return diagnose_bare_ipv6(&quoted, text);
    }
    match text.split_once(':') {
        None => diagnose_host(&quoted, text, None),
        Some((host, port)) => diagnose_host(&quoted, host, Some(port)),
    }
}

fn diagnose_bracketed(quoted: &str, rest: &str) -> String {
    let Some((ip, after)) = rest.split_once(']') else {
        return format!("{quoted} has no closing \"]\"; {HINT}");
    };
    if ip.parse::<Ipv4Addr>().is_ok() {
        return format!(
            "{quoted} puts an IPv4 address in brackets, which are only for IPv6; write {ip}{after}"
        );
    }
    if ip.parse::<Ipv6Addr>().is_err() {
        return format!("{quoted}: {ip:?} is not an IPv6 address; {HINT}");
    }
    match after.strip_prefix(':') {
        Some(port) => diagnose_port(quoted, port, &format!("[{ip}]")),
        None if after.is_empty() => {
            format!("{quoted} has no port; add one after the \"]\", like [{ip}]:8080")
        }
        None => format!("{quoted} has unexpected text {after:?} after the \"]\"; {HINT}"),
    }
}

fn diagnose_bare_ipv6(quoted: &str, text: &str) -> String {
    let split = text
        .rsplit_once(':')
        .filter(|(ip, port)| ip.parse::<Ipv6Addr>().is_ok() && is_digits(port));
    // "2001:db8::6:80" is itself a valid address, so whether "80" was meant as the port cannot
    // be known; offer both readings.
    let whole = text.parse::<Ipv6Addr>().is_ok();
    let rule = "an IPv6 address goes in brackets, followed by the port";
    match (whole, split) {
        (true, Some((ip, port))) => format!(
            "{quoted} looks like an IPv6 address without brackets; {rule}: write [{text}]:8080, \
             or [{ip}]:{port} if {port} is the port"
        ),
        (true, None) => {
            format!(
                "{quoted} looks like an IPv6 address without brackets; {rule}: write [{text}]:8080"
            )
        }
        (false, Some((ip, port))) => {
            format!(
                "{quoted} looks like an IPv6 address without brackets; {rule}: write [{ip}]:{port}"
            )
        }
        (false, None) => format!("{quoted} is not an IP address and port; {HINT}"),
    }
}

fn diagnose_host(quoted: &str, host: &str, port: Option<&str>) -> String {
    if host.parse::<Ipv4Addr>().is_ok() {
        return match port {
            None => format!("{quoted} has no port; add one, like {host}:8080"),
            Some(port) => diagnose_port(quoted, port, host),
        };
    }
    let example_port = port
        .filter(|p| p.parse::<u16>().is_ok() && is_digits(p))
        .unwrap_or("8080");
    if host.is_empty() {
        return format!(
            "{quoted} has no IP address before the port; write one, like 127.0.0.1:{example_port} \
             (or 0.0.0.0:{example_port} to listen on every IPv4 address)"
        );
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return format!(
            "{quoted}: {host:?} is not a valid IPv4 address (four numbers from 0 to 255, \
             without leading zeros); {HINT}"
        );
    }
    let looks_like_name = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if looks_like_name {
        return format!(
            "{quoted} uses the host name {host:?}, but ringfwd does not resolve names; \
             write an IP address instead, like 127.0.0.1:{example_port} or [::1]:{example_port}"
        );
    }
    format!("{quoted} is not an IP address and port; {HINT}")
}

/// `host` is how the address part should be written in the example.
fn diagnose_port(quoted: &str, port: &str, host: &str) -> String {
    if port.is_empty() {
        format!("{quoted} has no port after the \":\"; add one, like {host}:8080")
    } else if !is_digits(port) {
        format!(
            "{quoted} has the port {port:?}, which is not a number; write a port from 0 to 65535, like {host}:8080"
        )
    } else if port.parse::<u16>().is_err() {
        format!(
            "{quoted} has the port {port}, which is above 65535; write a port from 0 to 65535, like {host}:8080"
        )
    } else {
        format!("{quoted} is not an IP address and port; {HINT}")
    }
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_parse() {
        let cases = [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            (" 0.0.0.0:0 ", "0.0.0.0:0"),
            ("[::1]:8080", "[::1]:8080"),
            ("[2001:db8::6]:80", "[2001:db8::6]:80"),
        ];
        for (text, want) in cases {
            let want: SocketAddr = want.parse().unwrap();
            assert_eq!(parse_listen(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn each_mistake_gets_its_own_message() {
        let cases = [
            ("", "is empty"),
            ("localhost:80", "does not resolve names"),
            ("example.com:443", "does not resolve names"),
            ("localhost", "does not resolve names"),
            ("127.0.0.1", "has no port"),
            ("127.0.0.1:", "has no port"),
            ("[::1]", "has no port"),
            ("[::1]:", "has no port"),
            ("::1", "without brackets"),
            ("2001:db8::6:80", "without brackets"),
            ("fe80::1:80", "without brackets"),
            ("127.0.0.1:70000", "above 65535"),
            ("[::1]:99999", "above 65535"),
            ("127.0.0.1:http", "not a number"),
            ("256.0.0.1:80", "not a valid IPv4"),
            ("[::1:80", "no closing"),
            ("[127.0.0.1]:80", "only for IPv6"),
            ("[zz]:80", "not an IPv6"),
            ("[::1]80", "unexpected text"),
            (":80", "no IP address"),
            ("a b:80", "not an IP address"),
        ];
        for (text, want) in cases {
            let err = parse_listen(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains(&format!("{:?}", text.trim())), "{err}");
        }
    }

    #[test]
    fn an_ipv4_mapped_listen_address_is_refused_with_the_ipv4_form() {
        let err = parse_listen("[::ffff:127.0.0.1]:8080").expect_err("mapped");
        assert!(
            err.contains("IPv4-mapped") && err.contains("like 127.0.0.1:8080"),
            "{err}"
        );
        // An upstream may be mapped: connecting to it reaches the IPv4 address.
        assert!(parse_upstream("[::ffff:127.0.0.1]:9000").is_ok());
        assert!(parse_listen("[::1]:8080").is_ok());
    }

    #[test]
    fn host_name_message_shows_a_literal_with_the_same_port() {
        let err = parse_listen("localhost:9000").unwrap_err();
        assert!(err.contains("127.0.0.1:9000"), "{err}");
    }

    #[test]
    fn upstreams_need_a_port_and_a_host() {
        assert!(parse_upstream("10.0.0.5:0").unwrap_err().contains("port 0"));
        assert!(
            parse_upstream("0.0.0.0:80")
                .unwrap_err()
                .contains("unspecified")
        );
        let err = parse_upstream("[::]:80").unwrap_err();
        assert!(err.contains("[::1]:80"), "{err}");
        assert_eq!(
            parse_upstream("[::1]:9000"),
            Ok("[::1]:9000".parse().unwrap())
        );
    }
}
