//! The v1 text line: `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` or
//! `PROXY UNKNOWN[ <anything but CR/LF>]\r\n`, at most 107 bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    Command, Cursor, EARLY_LINE_END, Endpoints, ProxyHeader, Scan, Stop, Transport, Version,
};

/// The longest line the spec allows, CRLF included ("PROXY UNKNOWN" with two
/// full IPv6 addresses and ports).
pub(super) const MAX_LINE: usize = 107;

const TOO_LONG: &str = "PROXY v1 header: no CRLF in the first 107 bytes (the spec's limit)";
const PREFIX: &str = "not a PROXY protocol header: it starts with 'P' but not \"PROXY \"";
const PROTOCOL: &str =
    "PROXY v1 header: the protocol after \"PROXY \" is not TCP4, TCP6 or UNKNOWN (single spaces)";
const SRC_V4: &str =
    "PROXY v1 header: source is not a dotted IPv4 address (octets 0..255, no leading zeros)";
const DST_V4: &str =
    "PROXY v1 header: destination is not a dotted IPv4 address (octets 0..255, no leading zeros)";
const SRC_V6: &str = "PROXY v1 header: source is not an IPv6 address";
const DST_V6: &str = "PROXY v1 header: destination is not an IPv6 address";
const SRC_PORT: &str =
    "PROXY v1 header: source port is not a decimal 0..65535 without leading zeros";
const DST_PORT: &str =
    "PROXY v1 header: destination port is not a decimal 0..65535 without leading zeros";
const AFTER_UNKNOWN: &str = "PROXY v1 header: UNKNOWN is followed by neither a space nor CRLF";

/// "255.255.255.255".
const MAX_V4_TEXT: usize = 15;
/// "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".
const MAX_V6_TEXT: usize = 45;
const MAX_PORT_TEXT: usize = 5;

enum Family {
    V4,
    V6,
}

pub(super) fn parse(buf: &[u8]) -> Scan<(ProxyHeader, usize)> {
    let mut c = Cursor::new(buf, MAX_LINE, TOO_LONG);
    c.literal(b"PROXY ", PREFIX)?;
    let command = match c.one_of(&[b"TCP4 ", b"TCP6 ", b"UNKNOWN"], PROTOCOL)? {
        0 => addresses(&mut c, Family::V4)?,
        1 => addresses(&mut c, Family::V6)?,
        _ => unknown(&mut c)?,
    };
    let header = ProxyHeader {
        version: Version::V1,
        command,
    };
    Ok((header, c.pos))
}

/// `<src> <dst> <sport> <dport>\r\n` after "TCP4 " / "TCP6 ".
fn addresses(c: &mut Cursor, family: Family) -> Scan<Command> {
    let (src, dst) = match family {
        Family::V4 => (ipv4(c, SRC_V4)?, ipv4(c, DST_V4)?),
        Family::V6 => (ipv6(c, SRC_V6)?, ipv6(c, DST_V6)?),
    };
    let sport = port(c, b' ', SRC_PORT)?;
    let dport = port(c, b'\r', DST_PORT)?;
    c.literal(b"\n", EARLY_LINE_END)?;
    Ok(Command::Proxy {
        transport: Transport::Stream,
        addrs: Some(Endpoints {
            src: SocketAddr::new(src, sport),
            dst: SocketAddr::new(dst, dport),
        }),
    })
}

/// After "UNKNOWN": CRLF, or a space and anything but CR/LF up to CRLF.
fn unknown(c: &mut Cursor) -> Scan<Command> {
    match c.byte()? {
        b'\r' => {}
        b' ' => loop {
            match c.byte()? {
                b'\r' => break,
                b'\n' => return Err(Stop::Invalid(EARLY_LINE_END)),
                _ => {}
            }
        },
        _ => return Err(Stop::Invalid(AFTER_UNKNOWN)),
    }
    c.literal(b"\n", EARLY_LINE_END)?;
    Ok(Command::Proxy {
        transport: Transport::Unspecified,
        addrs: None,
    })
}

fn ipv4(c: &mut Cursor, what: &'static str) -> Scan<IpAddr> {
    let text = c.token(b' ', MAX_V4_TEXT, |b| b.is_ascii_digit() || b == b'.', what)?;
    strict_ipv4(text).map(IpAddr::V4).ok_or(Stop::Invalid(what))
}

fn ipv6(c: &mut Cursor, what: &'static str) -> Scan<IpAddr> {
    let allowed = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
    let text = c.token(b' ', MAX_V6_TEXT, allowed, what)?;
    // std's parser is the RFC 4291 text form: at most 4 hex digits a group,
    // one "::", exactly 128 bits, and a dotted IPv4 tail without leading
    // zeros (tests `v1_ipv6_forms` pin each of these).
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
        .ok_or(Stop::Invalid(what))
}

fn port(c: &mut Cursor, end: u8, what: &'static str) -> Scan<u16> {
    let text = c.token(end, MAX_PORT_TEXT, |b| b.is_ascii_digit(), what)?;
    decimal(text, u16::MAX.into())
        .and_then(|v| u16::try_from(v).ok())
        .ok_or(Stop::Invalid(what))
}

/// Four dot-separated decimals 0..255 without leading zeros; written here
/// rather than trusting `Ipv4Addr::from_str`'s leniency to stay fixed.
fn strict_ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for octet in octets.iter_mut() {
        let v = decimal(parts.next()?, u8::MAX.into())?;
        *octet = u8::try_from(v).ok()?;
    }
    match parts.next() {
        Some(_) => None,
        None => Some(Ipv4Addr::from(octets)),
    }
}

/// A decimal of 1..=5 ASCII digits, no leading zero unless it is "0", at most
/// `max`; no sign.
fn decimal(text: &[u8], max: u32) -> Option<u32> {
    match text {
        [] => None,
        [b'0', _, ..] => None,
        _ if text.len() > MAX_PORT_TEXT => None,
        _ => {
            let mut v: u32 = 0;
            for &b in text {
                if !b.is_ascii_digit() {
                    return None;
                }
                v = v * 10 + u32::from(b - b'0');
            }
            (v <= max).then_some(v)
        }
    }
}
