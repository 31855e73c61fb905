//! Datagram plumbing on the ring: recvmsg templates (how much name and control
//! space each multishot recvmsg reserves), parsing what the kernel wrote into a
//! provided buffer (`struct io_uring_recvmsg_out`, the source address, the
//! IP_PKTINFO destination, the payload, MSG_TRUNC), and the `msghdr` each
//! datagram send needs, kept per buffer so it lives until the send completes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// `struct io_uring_recvmsg_out`: namelen, controllen, payloadlen, flags.
pub const RECVMSG_OUT: u32 = 16;
/// Name space reserved for a source address (sockaddr_in6 is 28 bytes).
pub const NAME_SPACE: u32 = 32;
/// Control space reserved for one IP_PKTINFO / IPV6_PKTINFO message.
pub const CONTROL_SPACE: u32 = 48;
/// Bytes of a datagram buffer that are not payload, at most.
pub const OVERHEAD: u32 = RECVMSG_OUT + NAME_SPACE + CONTROL_SPACE;

/// Buffer size that holds `max_datagram` payload bytes after the headers.
pub fn buffer_size(max_datagram: u32) -> u32 {
    (max_datagram + OVERHEAD).next_multiple_of(64)
}

/// What one recvmsg reserves before the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub namelen: u32,
    pub controllen: u32,
}

/// A received datagram, as found in its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub src: Option<SocketAddr>,
    /// The address the datagram was sent to (IP_PKTINFO), when asked for.
    pub local: Option<IpAddr>,
    pub offset: u32,
    pub len: u32,
    pub truncated: bool,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_be_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

/// A `sockaddr_in` / `sockaddr_in6` in its wire layout.
pub fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(array(b, 0)?);
    let port = u16_be_at(b, 2)?;
    match i32::from(family) {
        libc::AF_INET => Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(array::<4>(b, 4)?),
            port,
        ))),
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(array(b, 4)?);
            let scope = u32_at(b, 24)?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(array::<16>(b, 8)?),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// The destination address from IP_PKTINFO / IPV6_PKTINFO control messages.
fn parse_pktinfo(control: &[u8]) -> Option<IpAddr> {
    let mut at = 0usize;
    while at + 16 <= control.len() {
        let len = usize::try_from(u64::from_ne_bytes(array(control, at)?)).ok()?;
        let level = i32::from_ne_bytes(array(control, at + 8)?);
        let kind = i32::from_ne_bytes(array(control, at + 12)?);
        let data = at + 16;
        match (level, kind) {
            // struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
            // spec_dst is the local address the datagram arrived on, the one a
            // reply must come from (addr is the header's, which may be broadcast).
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                return Some(IpAddr::V4(Ipv4Addr::from(array::<4>(control, data + 4)?)));
            }
            // struct in6_pktinfo { in6_addr addr; int ifindex; }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                return Some(IpAddr::V6(Ipv6Addr::from(array::<16>(control, data)?)));
            }
            _ => {}
        }
        if len < 16 {
            return None;
        }
        at += len.next_multiple_of(8);
    }
    None
}

/// Parses a multishot recvmsg result in `buf` (the whole provided buffer).
pub fn parse(buf: &[u8], layout: Layout) -> Option<Datagram> {
    let namelen = u32_at(buf, 0)?;
    let controllen = u32_at(buf, 4)?;
    let payloadlen = u32_at(buf, 8)?;
    let flags = u32_at(buf, 12)?;
    let name_at = RECVMSG_OUT as usize;
    let control_at = name_at + layout.namelen as usize;
    let payload_at = control_at + layout.controllen as usize;
    let room = buf.len().checked_sub(payload_at)?;
    let src = if layout.namelen > 0 && namelen > 0 {
        let n = namelen.min(layout.namelen) as usize;
        parse_sockaddr(buf.get(name_at..name_at + n)?)
    } else {
        None
    };
    let local = if layout.controllen > 0 && controllen > 0 {
        let n = controllen.min(layout.controllen) as usize;
        parse_pktinfo(buf.get(control_at..control_at + n)?)
    } else {
        None
    };
    let truncated = flags & (libc::MSG_TRUNC as u32) != 0 || payloadlen as usize > room;
    Some(Datagram {
        src,
        local,
        offset: u32::try_from(payload_at).ok()?,
        len: payloadlen.min(u32::try_from(room).ok()?),
        truncated,
    })
}

/// Writes `addr` as a sockaddr into `out`; returns its length.
fn write_sockaddr(addr: SocketAddr, out: &mut [u8; 28]) -> u32 {
    *out = [0; 28];
    match addr {
        SocketAddr::V4(a) => {
            out[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&a.ip().octets());
            16
        }
        SocketAddr::V6(a) => {
            out[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
            out[8..24].copy_from_slice(&a.ip().octets());
            out[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            28
        }
    }
}

/// Writes an IP_PKTINFO / IPV6_PKTINFO control message choosing the source
/// address `local`; returns the control length.
fn write_pktinfo(local: IpAddr, out: &mut [u8; 64]) -> u32 {
    *out = [0; 64];
    let (level, kind, data_len) = match local {
        IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, 12usize),
        IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, 20usize),
    };
    out[0..8].copy_from_slice(&((16 + data_len) as u64).to_ne_bytes());
    out[8..12].copy_from_slice(&level.to_ne_bytes());
    out[12..16].copy_from_slice(&kind.to_ne_bytes());
    match local {
        // in_pktinfo.ipi_spec_dst: the source address to use.
        IpAddr::V4(ip) => out[20..24].copy_from_slice(&ip.octets()),
        // in6_pktinfo.ipi6_addr.
        IpAddr::V6(ip) => out[16..32].copy_from_slice(&ip.octets()),
    }
    (16 + data_len).next_multiple_of(8) as u32
}

/// The `msghdr` of one datagram send and everything it points to. One per
/// buffer of the datagram ring: a buffer is in at most one send at a time.
pub struct SendSlot {
    pub(super) hdr: libc::msghdr,
    pub(super) iov: libc::iovec,
    name: [u8; 28],
    /// u64 words so the control buffer is 8-byte aligned, as cmsg requires.
    control: [u64; 8],
}

impl SendSlot {
    pub fn new() -> SendSlot {
        // Null pointers until `prepare` fills them in before any use.
        SendSlot {
            hdr: libc::msghdr {
                msg_name: std::ptr::null_mut(),
                msg_namelen: 0,
                msg_iov: std::ptr::null_mut(),
                msg_iovlen: 0,
                msg_control: std::ptr::null_mut(),
                msg_controllen: 0,
                msg_flags: 0,
            },
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            name: [0; 28],
            control: [0; 8],
        }
    }

    /// Fills the header to send `len` bytes at `data` to `dest`, from `local`
    /// when set. The slot must not move afterwards (it is boxed by the ring).
    pub fn prepare(&mut self, data: *const u8, len: u32, dest: SocketAddr, local: Option<IpAddr>) {
        let namelen = write_sockaddr(dest, &mut self.name);
        self.iov = libc::iovec {
            iov_base: data.cast_mut().cast(),
            iov_len: len as usize,
        };
        self.hdr.msg_name = self.name.as_mut_ptr().cast();
        self.hdr.msg_namelen = namelen;
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        match local {
            Some(ip) => {
                let mut bytes = [0u8; 64];
                let n = write_pktinfo(ip, &mut bytes);
                for (w, c) in self.control.iter_mut().zip(bytes.chunks_exact(8)) {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(c);
                    *w = u64::from_ne_bytes(word);
                }
                self.hdr.msg_control = self.control.as_mut_ptr().cast();
                self.hdr.msg_controllen = n as usize;
            }
            None => {
                self.hdr.msg_control = std::ptr::null_mut();
                self.hdr.msg_controllen = 0;
            }
        }
    }
}

impl Default for SendSlot {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recvmsg_buffer(
        src: SocketAddr,
        pktinfo: Option<IpAddr>,
        payload: &[u8],
        layout: Layout,
        size: usize,
    ) -> Vec<u8> {
        let mut b = vec![0u8; size];
        let mut name = [0u8; 28];
        let n = write_sockaddr(src, &mut name);
        let mut control = [0u8; 64];
        let c = pktinfo.map_or(0, |ip| write_pktinfo(ip, &mut control));
        b[0..4].copy_from_slice(&n.to_ne_bytes());
        b[4..8].copy_from_slice(&c.to_ne_bytes());
        b[8..12].copy_from_slice(&(payload.len() as u32).to_ne_bytes());
        let name_at = 16;
        b[name_at..name_at + n as usize].copy_from_slice(&name[..n as usize]);
        let control_at = name_at + layout.namelen as usize;
        b[control_at..control_at + c as usize].copy_from_slice(&control[..c as usize]);
        let payload_at = control_at + layout.controllen as usize;
        let fit = payload.len().min(size - payload_at);
        b[payload_at..payload_at + fit].copy_from_slice(&payload[..fit]);
        if fit < payload.len() {
            b[12..16].copy_from_slice(&(libc::MSG_TRUNC as u32).to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_source_pktinfo_and_payload() {
        let layout = Layout {
            namelen: NAME_SPACE,
            controllen: CONTROL_SPACE,
        };
        for (src, local) in [
            ("192.0.2.7:5353", "198.51.100.1"),
            ("[2001:db8::7]:5353", "2001:db8::1"),
        ] {
            let src: SocketAddr = src.parse().expect("addr");
            let local: IpAddr = local.parse().expect("ip");
            let b = recvmsg_buffer(src, Some(local), b"hello", layout, 256);
            let d = parse(&b, layout).expect("parse");
            assert_eq!(d.src, Some(src));
            assert_eq!(d.local, Some(local));
            assert!(!d.truncated);
            let at = d.offset as usize;
            assert_eq!(&b[at..at + d.len as usize], b"hello");
        }
    }

    #[test]
    fn a_datagram_larger_than_the_buffer_is_truncated() {
        let layout = Layout {
            namelen: NAME_SPACE,
            controllen: 0,
        };
        let src: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b = recvmsg_buffer(src, None, &[7u8; 500], layout, 128);
        let d = parse(&b, layout).expect("parse");
        assert!(d.truncated);
        assert!(d.offset as usize + d.len as usize <= 128);
    }

    #[test]
    fn garbage_does_not_panic() {
        let layout = Layout {
            namelen: NAME_SPACE,
            controllen: CONTROL_SPACE,
        };
        let mut x = 0x1234_5678u32;
        for size in [0usize, 3, 15, 16, 40, 95, 96, 200] {
            let b: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse(&b, layout);
            let _ = parse_sockaddr(&b);
            let _ = parse_pktinfo(&b);
        }
    }

    #[test]
    fn buffer_size_holds_the_largest_datagram_after_headers() {
        assert!(buffer_size(65507) >= 65507 + OVERHEAD);
        assert_eq!(buffer_size(65507) % 64, 0);
    }
}
