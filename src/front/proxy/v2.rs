//! The v2 binary header: 12-byte signature, version/command, family/protocol,
//! big-endian length, then that many bytes of addresses and TLVs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Command, Cursor, Endpoints, ProxyHeader, Scan, Stop, Transport, Version};

pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/protocol, length.
pub(super) const FIXED: usize = 16;
/// The largest v2 header accepted, fixed part included (why 4096: the
/// module doc).
pub const V2_MAX_HEADER: usize = 4096;

pub(super) const INET_BLOCK: usize = 4 + 4 + 2 + 2;
pub(super) const INET6_BLOCK: usize = 16 + 16 + 2 + 2;
const UNIX_BLOCK: usize = 108 + 108;
const TLV_HEAD: usize = 3;

const SIG: &str = "not a PROXY protocol header: it starts with 0x0D but not the v2 signature";
const VERSION: &str = "PROXY v2 header: the version nibble is not 2 (the only version defined)";
const COMMAND: &str = "PROXY v2 header: the command is neither LOCAL (0) nor PROXY (1)";
const FAMILY: &str = "PROXY v2 header: the address family is not UNSPEC, INET, INET6 or UNIX";
const PROTOCOL: &str = "PROXY v2 header: the transport protocol is not UNSPEC, STREAM or DGRAM";
const TOO_LONG: &str = "PROXY v2 header: longer than 4096 bytes (ringfwd's bound; the sender \
     must send fewer TLVs)";
const SHORT_BLOCK: &str =
    "PROXY v2 header: the length is shorter than the address family's addresses";
const BAD_TLV: &str = "PROXY v2 header: a TLV overruns the header's length";

/// The address family nibble, with the bytes of addresses it needs.
#[derive(Clone, Copy)]
enum Family {
    Unspec,
    Inet,
    Inet6,
    Unix,
}

pub(super) fn parse(buf: &[u8]) -> Scan<(ProxyHeader, usize)> {
    // The cursor only reads the fixed part; its limit is never reached.
    let mut c = Cursor::new(buf, FIXED, TOO_LONG);
    c.literal(&SIGNATURE, SIG)?;
    let ver_cmd = c.byte()?;
    if ver_cmd >> 4 != 2 {
        return Err(Stop::Invalid(VERSION));
    }
    let local = match ver_cmd & 0x0F {
        0 => true,
        1 => false,
        _ => return Err(Stop::Invalid(COMMAND)),
    };
    let fam = c.byte()?;
    // LOCAL ignores the family ("discard the protocol block including the
    // family"), so only PROXY checks it.
    let kind = if local { None } else { Some(family(fam)?) };
    let len = usize::from(u16::from_be_bytes([c.byte()?, c.byte()?]));
    let total = FIXED + len;
    if total > V2_MAX_HEADER {
        return Err(Stop::Invalid(TOO_LONG));
    }
    // Known as soon as the length arrives: no need to wait for the block.
    if let Some((family, transport)) = kind {
        if len < addresses_len(family, transport) {
            return Err(Stop::Invalid(SHORT_BLOCK));
        }
    }
    let block = buf.get(FIXED..total).ok_or(Stop::Incomplete)?;
    let command = match kind {
        None => Command::Local,
        Some((family, transport)) => proxied(family, transport, block)?,
    };
    let header = ProxyHeader {
        version: Version::V2,
        command,
    };
    Ok((header, total))
}

fn family(fam: u8) -> Scan<(Family, Transport)> {
    let family = match fam >> 4 {
        0 => Family::Unspec,
        1 => Family::Inet,
        2 => Family::Inet6,
        3 => Family::Unix,
        _ => return Err(Stop::Invalid(FAMILY)),
    };
    let transport = match fam & 0x0F {
        0 => Transport::Unspecified,
        1 => Transport::Stream,
        2 => Transport::Datagram,
        _ => return Err(Stop::Invalid(PROTOCOL)),
    };
    Ok((family, transport))
}

/// The bytes of addresses the block must start with; none when the family
/// or the protocol is unspecified ("the receiver should ignore address
/// information": the block is skipped unread).
fn addresses_len(family: Family, transport: Transport) -> usize {
    match (family, transport) {
        (Family::Unspec, _) | (_, Transport::Unspecified) => 0,
        (Family::Inet, _) => INET_BLOCK,
        (Family::Inet6, _) => INET6_BLOCK,
        (Family::Unix, _) => UNIX_BLOCK,
    }
}

/// The PROXY command's block: addresses for INET/INET6 (AF_UNIX ones are
/// skipped), then TLVs.
fn proxied(family: Family, transport: Transport, block: &[u8]) -> Scan<Command> {
    let need = addresses_len(family, transport);
    if need == 0 {
        return Ok(Command::Proxy {
            transport: Transport::Unspecified,
            addrs: None,
        });
    }
    let (addresses, tlvs) = block
        .split_at_checked(need)
        .ok_or(Stop::Invalid(SHORT_BLOCK))?;
    check_tlvs(tlvs)?;
    let addrs = match family {
        Family::Inet => inet(addresses),
        Family::Inet6 => inet6(addresses),
        // A path means nothing to a TCP/UDP forwarder: use the real endpoints.
        Family::Unix | Family::Unspec => None,
    };
    Ok(Command::Proxy { transport, addrs })
}

/// Every TLV's 3-byte head and value lie inside the block (contents ignored).
fn check_tlvs(mut rest: &[u8]) -> Scan<()> {
    while !rest.is_empty() {
        let (head, after) = rest
            .split_at_checked(TLV_HEAD)
            .ok_or(Stop::Invalid(BAD_TLV))?;
        let len = match head {
            [_, hi, lo] => usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => return Err(Stop::Invalid(BAD_TLV)),
        };
        rest = after.get(len..).ok_or(Stop::Invalid(BAD_TLV))?;
    }
    Ok(())
}

fn inet(a: &[u8]) -> Option<Endpoints> {
    let src: [u8; 4] = a.get(0..4)?.try_into().ok()?;
    let dst: [u8; 4] = a.get(4..8)?.try_into().ok()?;
    let ports = a.get(8..12)?;
    endpoints(
        IpAddr::V4(Ipv4Addr::from(src)),
        IpAddr::V4(Ipv4Addr::from(dst)),
        ports,
    )
}

fn inet6(a: &[u8]) -> Option<Endpoints> {
    let src: [u8; 16] = a.get(0..16)?.try_into().ok()?;
    let dst: [u8; 16] = a.get(16..32)?.try_into().ok()?;
    let ports = a.get(32..36)?;
    endpoints(
        IpAddr::V6(Ipv6Addr::from(src)),
        IpAddr::V6(Ipv6Addr::from(dst)),
        ports,
    )
}

fn endpoints(src: IpAddr, dst: IpAddr, ports: &[u8]) -> Option<Endpoints> {
    match ports {
        [sh, sl, dh, dl] => Some(Endpoints {
            src: SocketAddr::new(src, u16::from_be_bytes([*sh, *sl])),
            dst: SocketAddr::new(dst, u16::from_be_bytes([*dh, *dl])),
        }),
        _ => None,
    }
}
