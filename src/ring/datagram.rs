//! Datagram plumbing on the ring: recvmsg templates (how much name and control
//! space each multishot recvmsg reserves), parsing what the kernel wrote into a
//! provided buffer (`struct io_uring_recvmsg_out`, the source address, the
//! IP_PKTINFO destination, the SO_RXQ_OVFL drop counter, the payload,
//! MSG_TRUNC), and the `msghdr` each datagram send needs, kept per buffer so
//! it lives until the send completes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// `struct io_uring_recvmsg_out`: namelen, controllen, payloadlen, flags.
pub const RECVMSG_OUT: u32 = 16;
/// Name space reserved for a source address (sockaddr_in6 is 28 bytes).
pub const NAME_SPACE: u32 = 32;
/// `struct cmsghdr`: len (u64), level, type.
const CMSG_HDR: u32 = 16;
/// CMSG_SPACE: a control message's header and data, padded to 8 bytes.
const fn cmsg_space(data: u32) -> u32 {
    CMSG_HDR + data.next_multiple_of(8)
}
/// Control space of one IPV6_PKTINFO message (`struct in6_pktinfo`, 20
/// bytes), which also holds an IP_PKTINFO one (`struct in_pktinfo`, 12).
pub const PKTINFO_SPACE: u32 = cmsg_space(20);
/// Control space of the SO_RXQ_OVFL message (a u32 drop counter).
pub const OVFL_SPACE: u32 = cmsg_space(4);
/// Control space of one IP_ORIGDSTADDR / IPV6_ORIGDSTADDR message (a
/// `sockaddr_in6`, 28 bytes, holds a `sockaddr_in`, 16).
pub const ORIGDST_SPACE: u32 = cmsg_space(28);
/// Bytes of a datagram buffer that are not payload, at most (the widest
/// layout: a wildcard TPROXY listener's).
pub const OVERHEAD: u32 = RECVMSG_OUT + NAME_SPACE + PKTINFO_SPACE + OVFL_SPACE + ORIGDST_SPACE;

/// Buffer size that holds `max_datagram` payload bytes after the headers.
/// Rounding leaves more room than that; `parse` holds datagrams to
/// `max_datagram` itself, so the room never raises the limit.
pub fn buffer_size(max_datagram: u32) -> u32 {
    (max_datagram + OVERHEAD).next_multiple_of(64)
}

/// What one recvmsg reserves before the payload. The kernel lays every
/// datagram out at these fixed offsets, used or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub namelen: u32,
    pub controllen: u32,
}

impl Layout {
    /// A session's upstream socket: connected (no name), the drop counter only.
    pub const UPSTREAM: Layout = Layout {
        namelen: 0,
        controllen: OVFL_SPACE,
    };

    /// A listener socket: the sender's address and the drop counter, and on a
    /// wildcard address the destination (PKTINFO) a reply must come from.
    /// The kernel writes SO_RXQ_OVFL before PKTINFO: with room for one only,
    /// PKTINFO would be cut (MSG_CTRUNC).
    pub fn listener(wildcard: bool) -> Layout {
        Layout {
            namelen: NAME_SPACE,
            controllen: if wildcard {
                PKTINFO_SPACE + OVFL_SPACE
            } else {
                OVFL_SPACE
            },
        }
    }

    /// A `transparent = "tproxy"` listener: as [`Layout::listener`], and
    /// room for the original destination (IP_ORIGDSTADDR), which the kernel
    /// writes after SO_RXQ_OVFL and PKTINFO: without room for all three it
    /// would be the one cut (MSG_CTRUNC), and the datagram would have
    /// nowhere to go.
    pub fn tproxy_listener(wildcard: bool) -> Layout {
        let base = Layout::listener(wildcard);
        Layout {
            namelen: base.namelen,
            controllen: base.controllen + ORIGDST_SPACE,
        }
    }

    /// Where the payload starts in a buffer.
    pub fn payload_at(self) -> u32 {
        RECVMSG_OUT + self.namelen + self.controllen
    }
}

/// A received datagram, as found in its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub src: Option<SocketAddr>,
    /// The address the datagram was sent to (IP_PKTINFO), when asked for.
    pub local: Option<IpAddr>,
    /// The address and port its sender wrote to, before a TPROXY rule
    /// steered it here (IP_ORIGDSTADDR), when asked for.
    pub orig_dst: Option<SocketAddr>,
    /// The socket's cumulative drop counter (SO_RXQ_OVFL) when the kernel
    /// queued this datagram; `None` while it was 0 (the kernel then sends
    /// no message).
    pub drops: Option<u32>,
    pub offset: u32,
    pub len: u32,
    /// Longer than the configured maximum or than the buffer (MSG_TRUNC).
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

/// What the control messages of one datagram said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Control {
    /// The destination address (IP_PKTINFO / IPV6_PKTINFO).
    local: Option<IpAddr>,
    /// The original destination (IP_ORIGDSTADDR / IPV6_ORIGDSTADDR).
    pub(crate) orig_dst: Option<SocketAddr>,
    /// The socket's drop counter (SO_RXQ_OVFL).
    drops: Option<u32>,
}

/// Reads the control messages ringfwd asks for; others are skipped, and a
/// malformed one ends the walk with what was read before it.
pub(crate) fn parse_control(control: &[u8]) -> Control {
    let mut out = Control::default();
    let mut at = 0usize;
    while at + 16 <= control.len() {
        let Some(len) = array(control, at)
            .map(u64::from_ne_bytes)
            .and_then(|l| usize::try_from(l).ok())
        else {
            break;
        };
        let level = array(control, at + 8).map(i32::from_ne_bytes);
        let kind = array(control, at + 12).map(i32::from_ne_bytes);
        let data = at + 16;
        match (level, kind) {
            // struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
            // spec_dst is the local address the datagram arrived on, the one a
            // reply must come from (addr is the header's, which may be broadcast).
            (Some(libc::IPPROTO_IP), Some(libc::IP_PKTINFO)) => {
                out.local = array::<4>(control, data + 4).map(|a| IpAddr::V4(Ipv4Addr::from(a)));
            }
            // struct in6_pktinfo { in6_addr addr; int ifindex; }
            (Some(libc::IPPROTO_IPV6), Some(libc::IPV6_PKTINFO)) => {
                out.local = array::<16>(control, data).map(|a| IpAddr::V6(Ipv6Addr::from(a)));
            }
            (Some(libc::SOL_SOCKET), Some(libc::SO_RXQ_OVFL)) => {
                out.drops = u32_at(control, data);
            }
            // A sockaddr_in / sockaddr_in6, as the message's length says.
            (Some(libc::IPPROTO_IP), Some(libc::IP_ORIGDSTADDR))
            | (Some(libc::IPPROTO_IPV6), Some(libc::IPV6_ORIGDSTADDR)) => {
                out.orig_dst = control
                    .get(data..at.saturating_add(len))
                    .and_then(parse_sockaddr);
            }
            _ => {}
        }
        if len < 16 {
            break;
        }
        at += len.next_multiple_of(8);
    }
    out
}

/// Parses a multishot recvmsg result in `buf` (the whole provided buffer).
/// A datagram longer than `max_payload` is `truncated` even when the buffer
/// held it: the configured limit is exact, whatever the buffer's rounding.
pub fn parse(buf: &[u8], layout: Layout, max_payload: u32) -> Option<Datagram> {
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
    let control = if layout.controllen > 0 && controllen > 0 {
        let n = controllen.min(layout.controllen) as usize;
        parse_control(buf.get(control_at..control_at + n)?)
    } else {
        Control::default()
    };
    // Without MSG_TRUNC asked for, payloadlen is what was copied, never more
    // than the room; a longer datagram sets MSG_TRUNC in `flags`.
    let truncated = flags & (libc::MSG_TRUNC as u32) != 0
        || payloadlen as usize > room
        || payloadlen > max_payload;
    Some(Datagram {
        src,
        local: control.local,
        orig_dst: control.orig_dst,
        drops: control.drops,
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
    /// The payload; or a PROXY header, then the payload.
    pub(super) iov: [libc::iovec; 2],
    name: [u8; 28],
    /// u64 words so the control buffer is 8-byte aligned, as cmsg requires.
    control: [u64; 8],
    /// The PROXY v2 header a session's datagram carries (`send_proxy`).
    header: [u8; HEADER_MAX],
}

/// The largest PROXY v2 header a datagram carries (IPv6 endpoints).
pub const HEADER_MAX: usize = 52;

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
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 2],
            name: [0; 28],
            control: [0; 8],
            header: [0; HEADER_MAX],
        }
    }

    /// Fills the header to send `header` then `len` bytes at `data` as one
    /// datagram: on a connected socket (`dest` None), or to `dest`. The slot
    /// must not move afterwards.
    pub fn prepare_with_header(
        &mut self,
        header: &[u8],
        data: *const u8,
        len: u32,
        dest: Option<SocketAddr>,
    ) {
        let n = header.len().min(HEADER_MAX);
        if let (Some(dst), Some(src)) = (self.header.get_mut(..n), header.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.iov = [
            libc::iovec {
                iov_base: self.header.as_mut_ptr().cast(),
                iov_len: n,
            },
            libc::iovec {
                iov_base: data.cast_mut().cast(),
                iov_len: len as usize,
            },
        ];
        match dest {
            Some(dest) => {
                self.hdr.msg_namelen = write_sockaddr(dest, &mut self.name);
                self.hdr.msg_name = self.name.as_mut_ptr().cast();
            }
            None => {
                self.hdr.msg_name = std::ptr::null_mut();
                self.hdr.msg_namelen = 0;
            }
        }
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = 2;
        self.hdr.msg_control = std::ptr::null_mut();
        self.hdr.msg_controllen = 0;
    }

    /// Fills the header to send `len` bytes at `data` to `dest`, from `local`
    /// when set. The slot must not move afterwards (it is boxed by the ring).
    pub fn prepare(&mut self, data: *const u8, len: u32, dest: SocketAddr, local: Option<IpAddr>) {
        let namelen = write_sockaddr(dest, &mut self.name);
        self.iov[0] = libc::iovec {
            iov_base: data.cast_mut().cast(),
            iov_len: len as usize,
        };
        self.hdr.msg_name = self.name.as_mut_ptr().cast();
        self.hdr.msg_namelen = namelen;
        self.hdr.msg_iov = self.iov.as_mut_ptr();
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

    /// An SO_RXQ_OVFL control message carrying `drops`.
    fn ovfl(drops: u32) -> Vec<u8> {
        let mut c = vec![0u8; OVFL_SPACE as usize];
        c[0..8].copy_from_slice(&20u64.to_ne_bytes());
        c[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        c[12..16].copy_from_slice(&libc::SO_RXQ_OVFL.to_ne_bytes());
        c[16..20].copy_from_slice(&drops.to_ne_bytes());
        c
    }

    fn pktinfo(ip: IpAddr) -> Vec<u8> {
        let mut c = [0u8; 64];
        let n = write_pktinfo(ip, &mut c);
        c[..n as usize].to_vec()
    }

    /// A buffer as the kernel fills it for `payload` (cut to the room, with
    /// MSG_TRUNC, as a recvmsg without MSG_TRUNC in its flags reports it).
    fn recvmsg_buffer(
        src: SocketAddr,
        control: &[u8],
        payload: &[u8],
        layout: Layout,
        size: usize,
    ) -> Vec<u8> {
        let mut b = vec![0u8; size];
        let mut name = [0u8; 28];
        let n = write_sockaddr(src, &mut name).min(layout.namelen);
        let c = control.len().min(layout.controllen as usize);
        b[0..4].copy_from_slice(&n.to_ne_bytes());
        b[4..8].copy_from_slice(&(c as u32).to_ne_bytes());
        let name_at = 16;
        b[name_at..name_at + n as usize].copy_from_slice(&name[..n as usize]);
        let control_at = name_at + layout.namelen as usize;
        b[control_at..control_at + c].copy_from_slice(&control[..c]);
        let payload_at = layout.payload_at() as usize;
        let fit = payload.len().min(size - payload_at);
        b[8..12].copy_from_slice(&(fit as u32).to_ne_bytes());
        b[payload_at..payload_at + fit].copy_from_slice(&payload[..fit]);
        if fit < payload.len() {
            b[12..16].copy_from_slice(&(libc::MSG_TRUNC as u32).to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_source_pktinfo_drops_and_payload() {
        let layout = Layout::listener(true);
        for (src, local) in [
            ("192.0.2.7:5353", "198.51.100.1"),
            ("[2001:db8::7]:5353", "2001:db8::1"),
        ] {
            let src: SocketAddr = src.parse().expect("addr");
            let local: IpAddr = local.parse().expect("ip");
            // The kernel's order: SO_RXQ_OVFL (sock_recv_cmsgs), then PKTINFO.
            let control = [ovfl(7), pktinfo(local)].concat();
            let b = recvmsg_buffer(src, &control, b"hello", layout, 256);
            let d = parse(&b, layout, 512).expect("parse");
            assert_eq!(d.src, Some(src));
            assert_eq!(d.local, Some(local));
            assert_eq!(d.drops, Some(7));
            assert!(!d.truncated);
            let at = d.offset as usize;
            assert_eq!(&b[at..at + d.len as usize], b"hello");
        }
    }

    /// An IP_ORIGDSTADDR / IPV6_ORIGDSTADDR message carrying `dst`.
    fn origdst(dst: SocketAddr) -> Vec<u8> {
        let mut name = [0u8; 28];
        let n = write_sockaddr(dst, &mut name) as usize;
        let (level, kind) = match dst {
            SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_ORIGDSTADDR),
            SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_ORIGDSTADDR),
        };
        let mut c = vec![0u8; (16 + n).next_multiple_of(8)];
        c[0..8].copy_from_slice(&((16 + n) as u64).to_ne_bytes());
        c[8..12].copy_from_slice(&level.to_ne_bytes());
        c[12..16].copy_from_slice(&kind.to_ne_bytes());
        c[16..16 + n].copy_from_slice(&name[..n]);
        c
    }

    #[test]
    fn a_tproxy_listener_reads_the_original_destination_after_the_others() {
        for wildcard in [false, true] {
            let layout = Layout::tproxy_listener(wildcard);
            for (src, dst, local) in [
                ("10.231.1.2:5353", "10.231.2.2:53", "10.231.2.2"),
                ("[fd00:231::2]:5353", "[fd00:232::2]:53", "fd00:232::2"),
            ] {
                let src: SocketAddr = src.parse().expect("addr");
                let dst: SocketAddr = dst.parse().expect("addr");
                // The kernel's order, and every message a wildcard TPROXY
                // socket gets: SO_RXQ_OVFL, PKTINFO, then ORIGDSTADDR.
                let mut control = ovfl(3);
                if wildcard {
                    control.extend(pktinfo(local.parse().expect("ip")));
                }
                control.extend(origdst(dst));
                let b = recvmsg_buffer(src, &control, b"q", layout, 512);
                let d = parse(&b, layout, 256).expect("parse");
                assert_eq!(d.orig_dst, Some(dst), "{layout:?}");
                assert_eq!(d.drops, Some(3));
                assert_eq!(d.src, Some(src));
                // Without the room, the original destination is the one lost.
                let narrow = Layout::listener(wildcard);
                let cut = recvmsg_buffer(src, &control, b"q", narrow, 512);
                assert_eq!(parse(&cut, narrow, 256).expect("parse").orig_dst, None);
            }
        }
    }

    #[test]
    fn an_upstream_datagram_carries_the_drop_counter() {
        let src: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b = recvmsg_buffer(src, &ovfl(u32::MAX), b"x", Layout::UPSTREAM, 128);
        let d = parse(&b, Layout::UPSTREAM, 512).expect("parse");
        assert_eq!((d.src, d.drops, d.len), (None, Some(u32::MAX), 1));
        let quiet = recvmsg_buffer(src, &[], b"x", Layout::UPSTREAM, 128);
        assert_eq!(
            parse(&quiet, Layout::UPSTREAM, 512).expect("parse").drops,
            None
        );
    }

    #[test]
    fn the_control_room_holds_every_message_asked_for() {
        // SAFETY: CMSG_SPACE only computes a length.
        let space = |n: usize| unsafe { libc::CMSG_SPACE(n as u32) };
        let in6 = std::mem::size_of::<libc::in6_pktinfo>();
        let in4 = std::mem::size_of::<libc::in_pktinfo>();
        assert_eq!(PKTINFO_SPACE, space(in6));
        assert!(PKTINFO_SPACE >= space(in4));
        assert_eq!(OVFL_SPACE, space(std::mem::size_of::<u32>()));
        assert_eq!(
            Layout::listener(true).controllen,
            space(in6) + space(std::mem::size_of::<u32>())
        );
        assert!(NAME_SPACE as usize >= std::mem::size_of::<libc::sockaddr_in6>());
        assert_eq!(
            ORIGDST_SPACE,
            space(std::mem::size_of::<libc::sockaddr_in6>())
        );
        assert_eq!(
            Layout::tproxy_listener(true).payload_at(),
            OVERHEAD,
            "the widest layout sets the overhead"
        );
    }

    #[test]
    fn every_layout_has_room_for_max_datagram_and_no_more_is_taken() {
        let layouts = [
            Layout::UPSTREAM,
            Layout::listener(false),
            Layout::listener(true),
            Layout::tproxy_listener(false),
            Layout::tproxy_listener(true),
        ];
        for max in [512, 513, 1024, 1400, 4096, 65507, 65527] {
            let size = buffer_size(max);
            assert_eq!(size % 64, 0);
            for layout in layouts {
                let room = size - layout.payload_at();
                assert!(room >= max, "{layout:?} {max}: room {room}");
                let src: SocketAddr = "[::1]:1".parse().expect("addr");
                // Exactly max passes; max + 1 fits the rounded buffer (or
                // is cut by it) and is refused either way.
                let fits = recvmsg_buffer(src, &[], &vec![1; max as usize], layout, size as usize);
                let d = parse(&fits, layout, max).expect("parse");
                assert!(!d.truncated, "{layout:?} {max}");
                assert_eq!(d.len, max);
                let over =
                    recvmsg_buffer(src, &[], &vec![1; max as usize + 1], layout, size as usize);
                assert!(
                    parse(&over, layout, max).expect("parse").truncated,
                    "{layout:?} {max}"
                );
            }
        }
    }

    #[test]
    fn a_datagram_larger_than_the_buffer_is_truncated() {
        let layout = Layout::listener(false);
        let src: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b = recvmsg_buffer(src, &[], &[7u8; 500], layout, 128);
        let d = parse(&b, layout, 65507).expect("parse");
        assert!(d.truncated);
        assert!(d.offset as usize + d.len as usize <= 128);
    }

    #[test]
    fn garbage_does_not_panic() {
        let layout = Layout::listener(true);
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
            let _ = parse(&b, layout, 512);
            let _ = parse_sockaddr(&b);
            let _ = parse_control(&b);
        }
    }
}
