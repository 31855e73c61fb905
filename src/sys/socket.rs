//! Sockets outside the ring: the per-shard SO_REUSEPORT listeners, TCP and UDP
//! (bound by the control thread before shards start, so a bad address fails
//! startup with a clear message) and the two socket options the data path sets.

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::os::fd::{OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::HostError;
use super::mptcp::StreamProto;

/// Accept queue length asked for; the kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 65535;

/// What a listener is, for error messages.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ListenKind {
    Tcp,
    Echo,
    Udp,
    UdpEcho,
}

fn bind_error(kind: ListenKind, name: &str, addr: SocketAddr, e: io::Error) -> HostError {
    let what = match kind {
        ListenKind::Tcp => format!("tcp listener '{name}'"),
        ListenKind::Echo => format!("echo listener '{name}'"),
        ListenKind::Udp => format!("udp listener '{name}'"),
        ListenKind::UdpEcho => format!("udp echo listener '{name}'"),
    };
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => HostError::AddrInUse { what, addr },
        Some(libc::EACCES) => HostError::PortPermission { what, addr },
        Some(libc::EADDRNOTAVAIL) => HostError::AddrNotAvailable { what, addr },
        _ => HostError::Bind {
            what,
            addr,
            error: e.to_string(),
        },
    }
}

/// How a TCP listener's sockets are made, beyond their address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StreamListen {
    /// `mptcp`: IPPROTO_MPTCP (resolved: `Tcp` when the kernel has none).
    pub proto: StreamProto,
    pub capture: Capture,
}

/// Which connections a listener may accept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Capture {
    /// Those to its own address.
    #[default]
    Own,
    /// `transparent = "tproxy"`: also those a TPROXY rule steers to it,
    /// whatever their destination (IP_TRANSPARENT).
    Tproxy,
}

fn new_socket(addr: SocketAddr, reuseport: bool) -> io::Result<Socket> {
    new_stream_socket(addr, reuseport, StreamListen::default())
}

fn new_stream_socket(addr: SocketAddr, reuseport: bool, how: StreamListen) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(how.proto.socket2()),
    )?;
    if how.capture == Capture::Tproxy {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        super::transparent::set_transparent(fd, addr).map_err(|e| {
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
    }
    s.set_reuse_address(true)?;
    if reuseport {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // As NGINX does: [::]:80 and 0.0.0.0:80 are separate listeners.
        s.set_only_v6(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY: a forwarder must not add Nagle delay.
    s.set_tcp_nodelay(true)?;
    Ok(s)
}

/// Binds `count` SO_REUSEPORT listening sockets on `addr` (one per shard).
/// Port 0 picks one free port for all of them. Returns the sockets and the
/// bound address.
pub(crate) fn bind_listeners(
    kind: ListenKind,
    name: &str,
    addr: SocketAddr,
    count: usize,
) -> Result<(Vec<OwnedFd>, SocketAddr), HostError> {
    bind_group(kind, name, addr, count, new_socket, |s| {
        s.listen(LISTEN_BACKLOG)
    })
}

/// [`bind_listeners`] of sockets made as `how` says (MPTCP, IP_TRANSPARENT).
pub(crate) fn bind_stream_listeners(
    name: &str,
    addr: SocketAddr,
    count: usize,
    how: StreamListen,
) -> Result<(Vec<OwnedFd>, SocketAddr), HostError> {
    let make = move |addr, reuseport| new_stream_socket(addr, reuseport, how);
    bind_group(ListenKind::Tcp, name, addr, count, make, |s| {
        s.listen(LISTEN_BACKLOG)
    })
}

/// Tries to pick a free port for port 0 this many times before giving up.
const PORT_PICKS: usize = 8;

/// Binds `count` sockets made by `make(addr, reuseport)` to `addr` and
/// finishes each with `ready`.
fn bind_group(
    kind: ListenKind,
    name: &str,
    addr: SocketAddr,
    count: usize,
    make: impl Fn(SocketAddr, bool) -> io::Result<Socket> + Copy,
    ready: fn(&Socket) -> io::Result<()>,
) -> Result<(Vec<OwnedFd>, SocketAddr), HostError> {
    if addr.port() != 0 {
        return bind_group_on(kind, name, addr, count, make, ready);
    }
    // Port 0: the kernel may give a SO_REUSEPORT UDP socket a port that a
    // same-user reuseport socket already holds (it counts the two as
    // compatible), and the two would then share datagrams. A plain socket
    // is given a port nobody holds; the group binds to that. Another bind
    // may take it in between: pick again.
    let mut picks = 0;
    loop {
        picks += 1;
        let probe = plain_bind(kind, name, addr, make).map_err(|e| match e {
            HostError::AddrInUse { what, addr } => HostError::NoFreePort { what, addr },
            other => other,
        })?;
        let picked = probe
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| bind_error(kind, name, addr, io::Error::last_os_error()))?;
        drop(probe);
        match bind_group_on(kind, name, picked, count, make, ready) {
            Err(HostError::AddrInUse { .. }) if picks < PORT_PICKS => {}
            done => return done,
        }
    }
}

/// A socket made by `make` without SO_REUSEPORT, bound to `addr`: it
/// conflicts with every socket on the port, so binding it tells whether the
/// port is free.
fn plain_bind(
    kind: ListenKind,
    name: &str,
    addr: SocketAddr,
    make: impl Fn(SocketAddr, bool) -> io::Result<Socket> + Copy,
) -> Result<Socket, HostError> {
    let s = make(addr, false).map_err(|e| bind_error(kind, name, addr, e))?;
    s.bind(&addr.into())
        .map_err(|e| bind_error(kind, name, addr, e))?;
    Ok(s)
}

/// [`bind_group`] on a given port.
fn bind_group_on(
    kind: ListenKind,
    name: &str,
    addr: SocketAddr,
    count: usize,
    make: impl Fn(SocketAddr, bool) -> io::Result<Socket> + Copy,
    ready: fn(&Socket) -> io::Result<()>,
) -> Result<(Vec<OwnedFd>, SocketAddr), HostError> {
    // SO_REUSEPORT would silently join another same-user process's group on
    // this port and split its traffic with it; a plain bind first tells us
    // whether anyone is bound here already.
    drop(plain_bind(kind, name, addr, make)?);
    let mut fds = Vec::with_capacity(count);
    for _ in 0..count {
        let s = make(addr, true).map_err(|e| bind_error(kind, name, addr, e))?;
        s.bind(&addr.into())
            .map_err(|e| bind_error(kind, name, addr, e))?;
        ready(&s).map_err(|e| bind_error(kind, name, addr, e))?;
        fds.push(OwnedFd::from(s));
    }
    Ok((fds, addr))
}

/// Binds `count` more SO_REUSEPORT listening sockets into the group that
/// already holds `addr` (sockets handed over by the process this one
/// upgrades): no probe first, since the port is taken on purpose.
pub(crate) fn join_listeners(
    kind: ListenKind,
    name: &str,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<OwnedFd>, HostError> {
    join_group(kind, name, addr, count, new_socket, |s| {
        s.listen(LISTEN_BACKLOG)
    })
}

/// [`join_listeners`] for a listener made as `how` says (MPTCP,
/// IP_TRANSPARENT): the joined sockets must be made like the handed-over
/// ones, or a TPROXY'd or MPTCP client landing on them would be refused.
pub(crate) fn join_stream_listeners(
    name: &str,
    addr: SocketAddr,
    count: usize,
    how: StreamListen,
) -> Result<Vec<OwnedFd>, HostError> {
    let make = move |addr, reuseport| new_stream_socket(addr, reuseport, how);
    join_group(ListenKind::Tcp, name, addr, count, make, |s| {
        s.listen(LISTEN_BACKLOG)
    })
}

/// [`join_listeners`] for UDP.
pub(crate) fn join_udp_listeners(
    kind: ListenKind,
    name: &str,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<OwnedFd>, HostError> {
    join_group(kind, name, addr, count, new_udp_socket, |_| Ok(()))
}

fn join_group(
    kind: ListenKind,
    name: &str,
    addr: SocketAddr,
    count: usize,
    make: impl Fn(SocketAddr, bool) -> io::Result<Socket> + Copy,
    ready: fn(&Socket) -> io::Result<()>,
) -> Result<Vec<OwnedFd>, HostError> {
    (0..count)
        .map(|_| {
            let s = make(addr, true).map_err(|e| bind_error(kind, name, addr, e))?;
            s.bind(&addr.into())
                .map_err(|e| bind_error(kind, name, addr, e))?;
            ready(&s).map_err(|e| bind_error(kind, name, addr, e))?;
            Ok(OwnedFd::from(s))
        })
        .collect()
}

fn new_udp_socket(addr: SocketAddr, reuseport: bool) -> io::Result<Socket> {
    // No SO_REUSEADDR: on UDP it lets unrelated sockets bind the same address
    // and steal datagrams; SO_REUSEPORT alone forms the per-shard group.
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuseport {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if addr.ip().is_unspecified() {
        // A wildcard socket must answer from the address each client wrote
        // to, which only the per-datagram destination (PKTINFO) tells.
        let on: libc::c_int = 1;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        if addr.is_ipv4() {
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, &on)?;
        } else {
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, &on)?;
        }
    }
    Ok(s)
}

/// Binds `count` SO_REUSEPORT UDP sockets on `addr` (one per shard), as
/// [`bind_listeners`] does for TCP. The kernel's 4-tuple hash then keeps each
/// client on one shard.
pub(crate) fn bind_udp_listeners(
    kind: ListenKind,
    name: &str,
    addr: SocketAddr,
    count: usize,
) -> Result<(Vec<OwnedFd>, SocketAddr), HostError> {
    bind_group(kind, name, addr, count, new_udp_socket, |_| Ok(()))
}

fn setsockopt<T>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: passes a pointer to a live `T` and its exact size; the kernel
    // only reads it. A bad fd yields EBADF, never memory unsafety.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets SO_RCVBUF / SO_SNDBUF (`None` leaves one alone) and returns what the
/// kernel granted, read back: it doubles a request for bookkeeping overhead
/// and caps it at net.core.rmem_max / wmem_max.
pub(crate) fn set_buffers(
    fd: RawFd,
    rcvbuf: Option<u32>,
    sndbuf: Option<u32>,
) -> io::Result<(Option<u32>, Option<u32>)> {
    let mut granted = (None, None);
    for (request, name, out) in [
        (rcvbuf, libc::SO_RCVBUF, &mut granted.0),
        (sndbuf, libc::SO_SNDBUF, &mut granted.1),
    ] {
        let Some(bytes) = request else { continue };
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        setsockopt(fd, libc::SOL_SOCKET, name, &value)?;
        *out = Some(getsockopt_int(fd, libc::SOL_SOCKET, name)?);
    }
    Ok(granted)
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals of the sizes the kernel is
    // told; it writes at most `len` bytes into `value`.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    if rc == 0 {
        Ok(u32::try_from(value).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SO_RXQ_OVFL: every datagram received then carries the socket's
/// cumulative drop counter in a control message (sent while it is nonzero).
pub(crate) fn set_rxq_ovfl(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &on)
}

/// Where the drop counter is in SO_MEMINFO's array (include/uapi/linux/sock_diag.h).
const SK_MEMINFO_DROPS: usize = libc::SK_MEMINFO_DROPS as usize;

/// The socket's cumulative drop counter (what `ss -m` shows as `d` and
/// /proc/net/udp as `drops`), read with SO_MEMINFO: the drops a
/// SO_RXQ_OVFL message cannot report, those after the last datagram queued.
pub(crate) fn kernel_drops(fd: RawFd) -> io::Result<u32> {
    let mut info = [0u32; SK_MEMINFO_DROPS + 1];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` and `len` are live locals and `len` is `info`'s size;
    // the kernel writes at most `len` bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let have = len as usize / std::mem::size_of::<u32>();
    match info.get(SK_MEMINFO_DROPS) {
        Some(d) if have > SK_MEMINFO_DROPS => Ok(*d),
        _ => Err(io::Error::from(io::ErrorKind::Unsupported)),
    }
}

/// What the kernel grants a UDP socket of `family` asking for `rcvbuf`
/// bytes of SO_RCVBUF (it doubles a request and caps it at
/// net.core.rmem_max): a probe, so the control thread can warn once before
/// every session socket is given the same.
pub(crate) fn probe_rcvbuf(family: SocketAddr, rcvbuf: u32) -> io::Result<u32> {
    let s = Socket::new(
        Domain::for_address(family),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
    let (granted, _) = set_buffers(fd, Some(rcvbuf), None)?;
    Ok(granted.unwrap_or(0))
}

/// TCP_NODELAY on an upstream socket (accepted sockets inherit it from the listener).
pub(crate) fn set_nodelay(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &on)
}

/// SO_LINGER {on, 0}: the next close sends a reset, which is how a reset from
/// one peer is forwarded to the other.
pub(crate) fn set_linger0(fd: RawFd) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &l)
}

/// The peer and local address of a connected socket (`None` for one the
/// kernel would not give: the peer may have reset already).
pub(crate) fn endpoints(fd: RawFd) -> (Option<SocketAddr>, Option<SocketAddr>) {
    // SAFETY: `fd` is an open socket the caller owns for the length of this
    // call; the borrow does not outlive it and nothing here closes it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&borrowed);
    let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
    let local = sock.local_addr().ok().and_then(|a| a.as_socket());
    (peer, local)
}

/// Clients waiting in listening socket `fd`'s accept queue (`TCP_INFO`'s
/// `tcpi_unacked`, which a listening socket fills with its accept backlog).
pub(crate) fn accept_queue_len(fd: RawFd) -> io::Result<u32> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a zeroed `tcp_info` of `len` bytes that the kernel
    // writes at most `len` bytes into; `fd` is a socket the caller owns.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised, and the kernel wrote the rest: every bit
    // pattern is a valid `tcp_info` (plain integers).
    let info = unsafe { info.assume_init() };
    Ok(info.tcpi_unacked)
}

/// Binds socket `fd` to `addr` (port 0: one the kernel picks) and returns
/// the port it got (a SOCKS5 UDP association's socket).
pub(crate) fn bind_port(fd: RawFd, addr: SocketAddr) -> io::Result<u16> {
    // SAFETY: `fd` is an open socket the caller owns for the length of this
    // call; the borrow does not outlive it and nothing here closes it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&borrowed);
    sock.bind(&addr.into())?;
    sock.local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))
}

/// A UDP socket connected to `target` from an ephemeral port (a load
/// generator's flow: the kernel then delivers only `target`'s replies to it).
pub(crate) fn connected_udp(target: SocketAddr) -> io::Result<OwnedFd> {
    let s = Socket::new(
        Domain::for_address(target),
        Type::DGRAM.cloexec(),
        Some(Protocol::UDP),
    )?;
    s.connect(&target.into())?;
    Ok(s.into())
}

/// shutdown(SHUT_WR): queue a FIN. Called directly rather than as
/// IORING_OP_SHUTDOWN, which the kernel always runs on an io-wq worker (it has
/// no non-blocking path): that punt — a worker wakeup and two context switches
/// for a call that never blocks — was 23% of the forwarder's CPU at 8k
/// connections/s (perf, tcp-crr, 2026-12-01). TCP's SHUT_WR only queues a FIN.
pub(crate) fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: no pointers; a bad fd yields EBADF/ENOTSOCK, never memory unsafety.
    let rc = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd as _;

    #[test]
    fn the_accept_queue_length_counts_clients_not_yet_accepted() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        assert_eq!(accept_queue_len(l.as_raw_fd()).expect("read"), 0);
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        // The server side queues each client when the handshake's last ACK
        // arrives, which may be just after connect returns.
        let queued = |n: u32| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if accept_queue_len(l.as_raw_fd()).expect("read") == n {
                    return true;
                }
                std::thread::yield_now();
            }
            false
        };
        assert!(queued(3), "three clients wait");
        let _taken = l.accept().expect("accept");
        assert!(queued(2), "one was taken");
        drop(clients);
    }

    fn bind(how: StreamListen) -> (Vec<OwnedFd>, SocketAddr) {
        bind_stream_listeners("t", "127.0.0.1:0".parse().unwrap(), 2, how).unwrap()
    }

    #[test]
    fn stream_listeners_are_made_with_the_protocol_asked_for() {
        if super::super::mptcp::probe("127.0.0.1:0".parse().unwrap()).is_err() {
            eprintln!("skipped: this kernel makes no MPTCP socket");
            return;
        }
        for proto in [StreamProto::Tcp, StreamProto::Mptcp] {
            let (fds, _) = bind(StreamListen {
                proto,
                capture: Capture::Own,
            });
            for fd in &fds {
                let got = super::super::mptcp::protocol_of(fd.as_raw_fd()).unwrap();
                assert_eq!(got, proto);
            }
        }
    }

    #[test]
    fn tproxy_listeners_are_transparent_before_bind() {
        let on = |fds: &[OwnedFd]| {
            fds.iter()
                .map(|fd| getsockopt_int(fd.as_raw_fd(), libc::SOL_IP, libc::IP_TRANSPARENT))
                .collect::<io::Result<Vec<u32>>>()
        };
        let tproxy = StreamListen {
            proto: StreamProto::Tcp,
            capture: Capture::Tproxy,
        };
        match bind_stream_listeners("t", "127.0.0.1:0".parse().unwrap(), 2, tproxy) {
            Ok((fds, _)) => assert_eq!(on(&fds).unwrap(), vec![1, 1]),
            // Without CAP_NET_ADMIN: the error says what to grant.
            Err(e) => assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}"),
        }
        let (fds, _) = bind(StreamListen::default());
        assert_eq!(on(&fds).unwrap(), vec![0, 0]);
    }

    #[test]
    fn sockets_joined_after_an_upgrade_are_made_like_the_group() {
        let tproxy = StreamListen {
            proto: StreamProto::Tcp,
            capture: Capture::Tproxy,
        };
        let Ok((_held, addr)) =
            bind_stream_listeners("t", "127.0.0.1:0".parse().unwrap(), 1, tproxy)
        else {
            return; // No CAP_NET_ADMIN: the test above checks the message.
        };
        let joined = join_stream_listeners("t", addr, 2, tproxy).unwrap();
        for fd in &joined {
            let on = getsockopt_int(fd.as_raw_fd(), libc::SOL_IP, libc::IP_TRANSPARENT).unwrap();
            assert_eq!(on, 1, "a joined tproxy socket is transparent too");
        }
    }
}
