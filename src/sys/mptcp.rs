//! Multipath TCP (RFC 8684): which protocol a stream socket is made with,
//! whether this kernel makes MPTCP sockets at all, and whether a connected
//! socket is running MPTCP or fell back to plain TCP. An MPTCP listener
//! accepts plain TCP clients too (the kernel falls back per connection), so
//! the only thing that can go wrong is the kernel refusing the socket.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// The sysctl that turns MPTCP on and off per network namespace.
pub(crate) const SYSCTL: &str = "net.mptcp.enabled";

/// `SOL_MPTCP` (include/linux/socket.h) and `MPTCP_INFO`
/// (include/uapi/linux/mptcp.h): not in every libc release.
const SOL_MPTCP: libc::c_int = 284;
const MPTCP_INFO: libc::c_int = 1;

/// The protocol of a stream socket ringfwd makes: a listener's, or an
/// upstream socket's (`socket(2)`'s third argument).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StreamProto {
    #[default]
    Tcp,
    /// IPPROTO_MPTCP: the peer may add subflows; a peer without MPTCP gets
    /// plain TCP on the same socket.
    Mptcp,
}

impl StreamProto {
    /// The `protocol` argument of `socket(2)`.
    pub fn raw(self) -> libc::c_int {
        match self {
            StreamProto::Tcp => libc::IPPROTO_TCP,
            StreamProto::Mptcp => libc::IPPROTO_MPTCP,
        }
    }

    pub(crate) fn socket2(self) -> Protocol {
        match self {
            StreamProto::Tcp => Protocol::TCP,
            StreamProto::Mptcp => Protocol::MPTCP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StreamProto::Tcp => "tcp",
            StreamProto::Mptcp => "mptcp",
        }
    }
}

/// Why this kernel made no MPTCP socket: `socket(IPPROTO_MPTCP)`'s error,
/// and the sysctl's value when it could be read.
#[derive(Debug)]
pub(crate) struct Unavailable {
    error: io::Error,
    enabled: Option<String>,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "socket(IPPROTO_MPTCP) failed: {}", self.error)?;
        match self.enabled.as_deref() {
            Some("0") => write!(f, " ({SYSCTL} = 0: enable it with `sysctl -w {SYSCTL}=1`)"),
            Some(v) => write!(f, " ({SYSCTL} = {v})"),
            // No sysctl: the kernel was built without CONFIG_MPTCP.
            None => write!(
                f,
                " (no {SYSCTL} sysctl: this kernel has no MPTCP; it needs CONFIG_MPTCP, Linux 5.6 or newer)"
            ),
        }
    }
}

/// Whether an MPTCP socket of `family`'s address family can be made: it
/// cannot when `net.mptcp.enabled = 0` (ENOPROTOOPT) or the kernel lacks
/// MPTCP (EPROTONOSUPPORT, or EINVAL on some older kernels).
pub(crate) fn probe(family: SocketAddr) -> Result<(), Unavailable> {
    match Socket::new(
        Domain::for_address(family),
        Type::STREAM.cloexec(),
        Some(Protocol::MPTCP),
    ) {
        Ok(_) => Ok(()),
        Err(error) => Err(Unavailable {
            error,
            enabled: std::fs::read_to_string("/proc/sys/net/mptcp/enabled")
                .ok()
                .map(|s| s.trim().to_owned()),
        }),
    }
}

/// Whether connected socket `fd` runs MPTCP with its peer: false for a
/// TCP socket, and for an MPTCP socket whose peer answered without
/// MP_CAPABLE (the kernel's fallback to TCP). A zero-length MPTCP_INFO read
/// is the kernel's documented way to ask (it fails with EOPNOTSUPP once
/// fallen back, and at the IP level for a TCP socket).
pub fn is_active(fd: RawFd) -> bool {
    let mut len: libc::socklen_t = 0;
    // SAFETY: a zero length tells the kernel to write nothing; `len` is a
    // live local. A bad fd yields EBADF, never memory unsafety.
    let rc = unsafe { libc::getsockopt(fd, SOL_MPTCP, MPTCP_INFO, std::ptr::null_mut(), &mut len) };
    rc == 0
}

/// The protocol socket `fd` was made with (SO_PROTOCOL).
#[cfg(test)]
pub(crate) fn protocol_of(fd: RawFd) -> io::Result<StreamProto> {
    // SAFETY: `fd` is an open socket the caller owns for the length of this
    // call; the borrow does not outlive it and nothing here closes it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    match socket2::SockRef::from(&borrowed).protocol()? {
        Some(p) if p == Protocol::MPTCP => Ok(StreamProto::Mptcp),
        _ => Ok(StreamProto::Tcp),
    }
}

/// Makes a socket of `proto` and reports its SO_PROTOCOL: a check that the
/// protocol argument reaches the kernel.
#[cfg(test)]
fn made_with(proto: StreamProto) -> io::Result<StreamProto> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(proto.socket2()))?;
    protocol_of(std::os::fd::AsRawFd::as_raw_fd(&s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;
    use std::os::fd::AsRawFd as _;

    /// MPTCP is on here (the tests that need it skip, saying so, when not).
    fn mptcp_here() -> bool {
        let on = probe("127.0.0.1:0".parse().unwrap()).is_ok();
        if !on {
            eprintln!("skipped: this kernel makes no MPTCP socket ({SYSCTL} = 0 or no MPTCP)");
        }
        on
    }

    #[test]
    fn raw_is_socket_protocol_argument() {
        assert_eq!(StreamProto::Tcp.raw(), 6);
        assert_eq!(StreamProto::Mptcp.raw(), 262);
    }

    #[test]
    fn probe_and_protocol_agree_with_the_kernel() {
        if !mptcp_here() {
            return;
        }
        assert_eq!(made_with(StreamProto::Mptcp).unwrap(), StreamProto::Mptcp);
        assert_eq!(made_with(StreamProto::Tcp).unwrap(), StreamProto::Tcp);
    }

    /// An MPTCP client and an MPTCP listener run MPTCP; either side plain
    /// TCP falls back, which `is_active` tells.
    #[test]
    fn is_active_tells_mptcp_from_fallback() {
        if !mptcp_here() {
            return;
        }
        for (listen, client, want) in [
            (StreamProto::Mptcp, StreamProto::Mptcp, true),
            (StreamProto::Tcp, StreamProto::Mptcp, false),
            (StreamProto::Mptcp, StreamProto::Tcp, false),
        ] {
            let l = Socket::new(Domain::IPV4, Type::STREAM, Some(listen.socket2())).unwrap();
            l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            l.listen(4).unwrap();
            let addr = l.local_addr().unwrap();
            let c = Socket::new(Domain::IPV4, Type::STREAM, Some(client.socket2())).unwrap();
            c.connect(&addr).unwrap();
            let (a, _) = l.accept().unwrap();
            let mut c = TcpStream::from(c);
            let mut a = TcpStream::from(a);
            c.write_all(b"ping").unwrap();
            let mut got = [0u8; 4];
            a.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"ping");
            assert_eq!(is_active(c.as_raw_fd()), want, "{listen:?} <- {client:?}");
            assert_eq!(is_active(a.as_raw_fd()), want, "{listen:?} <- {client:?}");
        }
    }

    #[test]
    fn unavailable_names_the_sysctl() {
        let off = Unavailable {
            error: io::Error::from_raw_os_error(libc::ENOPROTOOPT),
            enabled: Some("0".into()),
        };
        assert!(
            off.to_string().contains("sysctl -w net.mptcp.enabled=1"),
            "{off}"
        );
        let missing = Unavailable {
            error: io::Error::from_raw_os_error(libc::EPROTONOSUPPORT),
            enabled: None,
        };
        assert!(missing.to_string().contains("CONFIG_MPTCP"), "{missing}");
    }
}
