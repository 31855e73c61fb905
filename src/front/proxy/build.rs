//! Headers we send to an upstream, written into fixed arrays (no allocation):
//! v2 with addresses and no TLVs (28 bytes over IPv4, 52 over IPv6), v2
//! LOCAL (16 bytes) and the v1 line (at most 104 bytes).

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::Proto;
use super::v2::{FIXED, INET_BLOCK, INET6_BLOCK, SIGNATURE};
use crate::front::put::Put;

/// Room for the largest header [`write_v2`] writes (IPv6: 16 + 36).
pub const V2_MAX_BUILT: usize = FIXED + INET6_BLOCK;
/// The v2 LOCAL header: the fixed part alone.
pub const V2_LOCAL_LEN: usize = FIXED;
/// Room for any v1 line (the spec's 107; [`write_v1`] writes at most 104).
pub const V1_MAX_LEN: usize = super::v1::MAX_LINE;

const VERSION_2: u8 = 0x20;
const CMD_LOCAL: u8 = 0x00;
const CMD_PROXY: u8 = 0x01;

/// Writes a v2 PROXY header for a `proto` connection from `src` to `dst`
/// into `out`; returns its length (28 for IPv4, 52 for IPv6).
///
/// The header has one family for both addresses, so when only one of them is
/// IPv6 the IPv4 one is written IPv4-mapped (`::ffff:a.b.c.d`) under
/// AF_INET6. IPv6 flow info and scope ids are not carried (the format has no
/// field for them).
pub fn write_v2(
    proto: Proto,
    src: SocketAddr,
    dst: SocketAddr,
    out: &mut [u8; V2_MAX_BUILT],
) -> usize {
    let transport: u8 = match proto {
        Proto::Tcp => 0x1,
        Proto::Udp => 0x2,
    };
    let mut w = Put::new(out);
    w.put(&SIGNATURE);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            w.put(&[VERSION_2 | CMD_PROXY, 0x10 | transport]);
            w.put(&block_len(INET_BLOCK));
            w.put(&s.octets());
            w.put(&d.octets());
        }
        (s, d) => {
            w.put(&[VERSION_2 | CMD_PROXY, 0x20 | transport]);
            w.put(&block_len(INET6_BLOCK));
            w.put(&as_v6(s).octets());
            w.put(&as_v6(d).octets());
        }
    }
    w.put(&src.port().to_be_bytes());
    w.put(&dst.port().to_be_bytes());
    w.len()
}

/// Writes a v2 LOCAL header (AF_UNSPEC, no addresses): "this connection is
/// the proxy's own, use its real endpoints" (health checks). Returns 16.
pub fn write_v2_local(out: &mut [u8; V2_LOCAL_LEN]) -> usize {
    let mut w = Put::new(out);
    w.put(&SIGNATURE);
    w.put(&[VERSION_2 | CMD_LOCAL, 0x00]);
    w.put(&block_len(0));
    w.len()
}

/// Writes the v1 line for a TCP connection from `src` to `dst` into `out`;
/// returns its length. Both IPv4: "TCP4"; otherwise "TCP6", an IPv4 address
/// written IPv4-mapped (`::ffff:a.b.c.d`), as HAProxy does and as v2 does
/// here. Not "UNKNOWN" for a mixed pair: the spec keeps UNKNOWN for when the
/// line cannot be filled correctly ("it is now recommended not to send
/// UNKNOWN when the connection is expected to be accepted"), and a mapped
/// address fills it correctly.
pub fn write_v1(src: SocketAddr, dst: SocketAddr, out: &mut [u8; V1_MAX_LEN]) -> usize {
    let (sport, dport) = (src.port(), dst.port());
    let written = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => line(out, "TCP4", s, d, sport, dport),
        (s, d) => line(out, "TCP6", as_v6(s), as_v6(d), sport, dport),
    };
    // The longest line is 104 bytes (two 39-character IPv6 addresses), so
    // formatting cannot run out of room; were it to, UNKNOWN is still a
    // valid line.
    written.unwrap_or_else(|_| {
        let mut w = Put::new(out);
        w.put(b"PROXY UNKNOWN\r\n");
        w.len()
    })
}

fn line(
    out: &mut [u8],
    proto: &str,
    src: impl fmt::Display,
    dst: impl fmt::Display,
    sport: u16,
    dport: u16,
) -> Result<usize, fmt::Error> {
    let mut w = Put::new(out);
    write!(w, "PROXY {proto} {src} {dst} {sport} {dport}\r\n")?;
    Ok(w.len())
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn block_len(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
}
