//! Transparent proxying's kernel side: the destination a client dialled
//! before netfilter redirected it here (`SO_ORIGINAL_DST`, for REDIRECT),
//! the `IP_TRANSPARENT` option a TPROXY listener needs, and, for UDP TPROXY,
//! the per-datagram original destination (`IP_RECVORIGDSTADDR`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};

use crate::ring::datagram::parse_sockaddr;

/// The destination of accepted connection `fd` before a netfilter REDIRECT
/// (or DNAT) rewrote it: `SO_ORIGINAL_DST` at SOL_IP for IPv4,
/// `IP6T_SO_ORIGINAL_DST` at SOL_IPV6 for IPv6. ENOENT: the connection was
/// not redirected (conntrack has no such entry), so there is nowhere to go.
pub(crate) fn original_dst(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: `fd` is an open socket the caller owns for the length of this
    // call; the borrow does not outlive it and nothing here closes it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let local = socket2::SockRef::from(&borrowed).local_addr()?.as_socket();
    let v6 = match local {
        // A dual-stack socket's IPv4 client is tracked by IPv4 conntrack.
        Some(SocketAddr::V6(a)) => a.ip().to_ipv4_mapped().is_none(),
        Some(SocketAddr::V4(_)) => false,
        None => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    let (level, name) = if v6 {
        (libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST)
    } else {
        (libc::SOL_IP, libc::SO_ORIGINAL_DST)
    };
    // SAFETY: sockaddr_storage is plain bytes; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are live locals and `len` is `storage`'s
    // size; the kernel writes at most `len` bytes into it.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut storage).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `storage` is a live, initialised local of
    // size_of::<sockaddr_storage>() bytes; the slice borrows it read-only
    // for this call only.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&raw const storage).cast::<u8>(),
            std::mem::size_of::<libc::sockaddr_storage>(),
        )
    };
    let written = bytes.get(..len as usize).unwrap_or(bytes);
    parse_sockaddr(written).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))
}

/// IP_TRANSPARENT (IPV6_TRANSPARENT for an IPv6 socket), set before bind:
/// a TPROXY listener then accepts connections to addresses that are not
/// this host's. The kernel allows it only with CAP_NET_ADMIN (or
/// CAP_NET_RAW); EPERM otherwise.
pub(crate) fn set_transparent(fd: RawFd, addr: SocketAddr) -> io::Result<()> {
    let on: libc::c_int = 1;
    match addr {
        SocketAddr::V4(_) => setsockopt_int(fd, libc::SOL_IP, libc::IP_TRANSPARENT, on),
        SocketAddr::V6(_) => setsockopt_int(fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, on),
    }
}

/// IP_RECVORIGDSTADDR (IPV6_RECVORIGDSTADDR): each datagram then carries
/// the destination its sender wrote to in a control message
/// (`ring::datagram` reads it) — for a UDP TPROXY socket, the
/// address a reply must come from.
pub(crate) fn set_recv_orig_dst(fd: RawFd, addr: SocketAddr) -> io::Result<()> {
    let on: libc::c_int = 1;
    match addr {
        SocketAddr::V4(_) => setsockopt_int(fd, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, on),
        SocketAddr::V6(_) => setsockopt_int(fd, libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR, on),
    }
}

/// A `transparent = "tproxy"` UDP listener's socket options, set on each
/// shard's socket: IP_TRANSPARENT (the TPROXY rule assigns datagrams only to
/// a transparent socket) and IP_RECVORIGDSTADDR (where each one was going).
/// EPERM names the capability it takes.
pub(crate) fn prepare_udp_listener(fd: RawFd, addr: SocketAddr) -> io::Result<()> {
    set_transparent(fd, addr).map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "transparent = \"tproxy\" needs CAP_NET_ADMIN to set IP_TRANSPARENT ({e}): run ringfwd as root or give it the capability (`setcap cap_net_admin=+ep`, or AmbientCapabilities=CAP_NET_ADMIN in the systemd unit)"
                ),
            )
        } else {
            e
        }
    })?;
    set_recv_orig_dst(fd, addr)
}

/// The socket a UDP TPROXY session answers its client from: transparent,
/// bound to the address the client wrote to (`orig_dst`, not this host's),
/// and connected to the client. SO_REUSEADDR lets every session of that
/// destination bind it (one per client). Connected, it is the kernel's
/// best match for the client's later datagrams (the TPROXY rule's
/// established-socket lookup and the plain UDP lookup both prefer it to
/// the listener), so its receive is read too; any other client's datagram
/// to `orig_dst` does not match it and reaches the listener. Made outside
/// the ring: io_uring has no bind before 6.11, and these are a few
/// non-blocking syscalls once per session.
pub(crate) fn reply_socket(orig_dst: SocketAddr, client: SocketAddr) -> io::Result<OwnedFd> {
    let orig_dst = SocketAddr::new(orig_dst.ip().to_canonical(), orig_dst.port());
    let client = SocketAddr::new(client.ip().to_canonical(), client.port());
    let s = socket2::Socket::new(
        socket2::Domain::for_address(orig_dst),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    set_transparent(std::os::fd::AsRawFd::as_raw_fd(&s), orig_dst)?;
    s.set_reuse_address(true)?;
    if orig_dst.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&orig_dst.into())?;
    s.connect(&client.into())?;
    Ok(OwnedFd::from(s))
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size; the
    // kernel only reads it. A bad fd yields EBADF, never memory unsafety.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testns::in_own_netns;
    use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6, UdpSocket};
    use std::os::fd::AsRawFd as _;

    /// `struct cmsghdr` on 64-bit Linux: len (u64), level (i32), type (i32).
    const CMSG_HEADER: usize = 16;

    /// The ring's own control-message reader, which the data path uses.
    fn orig_dst_from_control(control: &[u8]) -> Option<SocketAddr> {
        crate::ring::datagram::parse_control(control).orig_dst
    }

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let len = (CMSG_HEADER + data.len()) as u64;
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize(v.len().next_multiple_of(8), 0);
        v
    }

    fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut v = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&port.to_be_bytes());
        v.extend_from_slice(&ip);
        v.extend_from_slice(&[0; 8]);
        v
    }

    fn sockaddr_in6(ip: std::net::Ipv6Addr, port: u16, scope: u32) -> Vec<u8> {
        let mut v = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&port.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&ip.octets());
        v.extend_from_slice(&scope.to_ne_bytes());
        v
    }

    #[test]
    fn parses_ipv4_orig_dst_after_other_messages() {
        let mut control = cmsg(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &7u32.to_ne_bytes());
        control.extend(cmsg(
            libc::SOL_IP,
            libc::IP_ORIGDSTADDR,
            &sockaddr_in([10, 231, 1, 2], 8080),
        ));
        assert_eq!(
            orig_dst_from_control(&control),
            Some("10.231.1.2:8080".parse().unwrap())
        );
    }

    #[test]
    fn parses_ipv6_orig_dst() {
        let ip: std::net::Ipv6Addr = "fd00:231::2".parse().unwrap();
        let control = cmsg(
            libc::SOL_IPV6,
            libc::IPV6_ORIGDSTADDR,
            &sockaddr_in6(ip, 53, 0),
        );
        assert_eq!(
            orig_dst_from_control(&control),
            Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, 0)))
        );
    }

    #[test]
    fn rejects_absent_truncated_and_malformed_messages() {
        assert_eq!(orig_dst_from_control(&[]), None);
        // Another level's message of the same type number.
        let other = cmsg(libc::SOL_SOCKET, libc::IP_ORIGDSTADDR, &[0; 16]);
        assert_eq!(orig_dst_from_control(&other), None);
        let whole = cmsg(
            libc::SOL_IP,
            libc::IP_ORIGDSTADDR,
            &sockaddr_in([1, 2, 3, 4], 5),
        );
        // Cut inside the sockaddr: its length says more than is there.
        assert_eq!(orig_dst_from_control(&whole[..CMSG_HEADER + 6]), None);
        // A length shorter than its own header would loop forever if trusted.
        let mut bad = whole.clone();
        bad[..8].copy_from_slice(&4u64.to_ne_bytes());
        assert_eq!(orig_dst_from_control(&bad), None);
        // A length past the buffer.
        let mut long = whole;
        long[..8].copy_from_slice(&1000u64.to_ne_bytes());
        assert_eq!(orig_dst_from_control(&long), None);
    }

    /// The kernel's own control message parses to the address the datagram
    /// was sent to.
    #[test]
    fn reads_the_kernels_orig_dst_message() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        set_recv_orig_dst(rx.as_raw_fd(), to).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", to).unwrap();
        let mut payload = [0u8; 16];
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        // SAFETY: msghdr is plain data; zeroed is valid (no name wanted).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: every pointer in `msg` names a live local of the length given.
        let n = unsafe { libc::recvmsg(rx.as_raw_fd(), &raw mut msg, 0) };
        assert_eq!(n, 1);
        // SAFETY: `control` is a live local; the kernel wrote `msg_controllen` of its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), msg.msg_controllen)
        };
        assert_eq!(orig_dst_from_control(bytes), Some(to));
    }

    /// REDIRECT of locally made connections to port 7 of either loopback
    /// address: their original destination is port 7, over IPv4 and IPv6.
    #[test]
    fn original_dst_reads_the_redirected_destination() {
        const RULESET: &str = "add table inet t; add chain inet t out { type nat hook output priority -100; }; \
                       add rule inet t out tcp dport 7 redirect to :1007";
        let got = in_own_netns(&[&["nft", RULESET]], || {
            ["127.0.0.1:1007", "[::1]:1007"].map(|at| {
                let l = std::net::TcpListener::bind(at).unwrap();
                let mut dial = l.local_addr().unwrap();
                dial.set_port(7);
                let _c = std::net::TcpStream::connect(dial).unwrap();
                let (a, _) = l.accept().unwrap();
                (dial, original_dst(a.as_raw_fd()).unwrap())
            })
        });
        for (dial, orig) in got.into_iter().flatten() {
            assert_eq!(orig, dial);
        }
    }

    /// A connection nothing redirected has no original destination.
    #[test]
    fn original_dst_of_a_plain_connection_is_an_error() {
        // In a namespace of its own: the host's ephemeral ports and
        // conntrack table are the host's business.
        let got = in_own_netns(&[], || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            original_dst(c.as_raw_fd()).map_err(|e| e.to_string())
        });
        // ENOENT when conntrack is loaded and has no NAT entry; ENOPROTOOPT
        // without nf_conntrack.
        if let Some(got) = got {
            assert!(got.is_err(), "{got:?}");
        }
    }

    /// A reply socket speaks from the original destination, not this
    /// host's address, and only its client reaches it.
    #[test]
    fn a_reply_socket_answers_from_the_original_destination() {
        let got = in_own_netns(&[], || {
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            let caddr = client.local_addr().unwrap();
            // Not an address of this namespace: only IP_TRANSPARENT binds it.
            let orig: SocketAddr = "192.0.2.53:53".parse().unwrap();
            let a = reply_socket(orig, caddr).map_err(|e| e.raw_os_error())?;
            // A second session of the same destination (another client port).
            let other = reply_socket(orig, "127.0.0.1:9".parse().unwrap());
            let a = UdpSocket::from(a);
            Ok::<_, Option<i32>>((
                a.local_addr().unwrap(),
                a.peer_addr().unwrap(),
                caddr,
                other.is_ok(),
            ))
        });
        match got {
            Some(Ok((local, peer, client, second))) => {
                assert_eq!(local, "192.0.2.53:53".parse().unwrap());
                assert_eq!(peer, client);
                assert!(
                    second,
                    "SO_REUSEADDR lets two sessions bind one destination"
                );
            }
            // Without CAP_NET_ADMIN the bind is refused, as documented.
            Some(Err(e)) => assert_eq!(e, Some(libc::EPERM)),
            None => {}
        }
    }

    #[test]
    fn transparent_needs_no_more_than_a_socket_as_root() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        match set_transparent(s.as_raw_fd(), addr) {
            Ok(()) => {}
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }
}
