//! The operations the shard's services hand the event loop (`Op`), and the
//! helpers that decode a completion's result and flags. This is the whole
//! interface between deciding and doing: the event loop executes `Op`s on
//! the ring, the simulator in `tests/` against a fake kernel.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

pub(crate) use crate::sys::mptcp::StreamProto;
use crate::tcp::RecvEvent;
use crate::time::Millis;

/// `IORING_CQE_F_MORE`: the multishot operation stays armed.
pub const CQE_F_MORE: u32 = 1 << 1;
/// `IORING_CQE_F_BUFFER`: the upper 16 bits carry a provided buffer id.
pub const CQE_F_BUFFER: u32 = 1 << 0;

/// A descriptor an operation names. Only made from a descriptor the kernel
/// gave (accept, socket) or the runtime handed over (listeners): an absent
/// one is an `Option` upstream of here, never `-1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fd(pub RawFd);

impl Fd {
    pub fn raw(self) -> RawFd {
        self.0
    }
}

/// The address family of a socket to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: SocketAddr) -> Family {
        match addr {
            SocketAddr::V4(_) => Family::V4,
            SocketAddr::V6(_) => Family::V6,
        }
    }

    pub fn raw(self) -> i32 {
        match self {
            Family::V4 => libc::AF_INET,
            Family::V6 => libc::AF_INET6,
        }
    }
}

/// One instruction for the event loop. `token`s are encoded `user_data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AcceptMulti {
        token: u64,
        fd: Fd,
    },
    /// One accept (a listener near its descriptor budget).
    Accept {
        token: u64,
        fd: Fd,
    },
    /// Cancel the accept named by `target` (drain).
    CancelAccept {
        token: u64,
        target: u64,
    },
    CloseListener {
        token: u64,
        fd: Fd,
    },
    /// Close an accepted socket that is turned away.
    Reject {
        token: u64,
        fd: Fd,
    },
    /// Create a stream socket of `family` and `proto` (TCP or MPTCP).
    Socket {
        token: u64,
        family: Family,
        proto: StreamProto,
    },
    /// Connect to `addr` with `timeout_ms` linked (two completions).
    Connect {
        token: u64,
        timeout_token: u64,
        fd: Fd,
        addr: SocketAddr,
        timeout_ms: Millis,
    },
    RecvMulti {
        token: u64,
        fd: Fd,
    },
    /// One receive into a provided buffer (the front stage).
    RecvOnce {
        token: u64,
        fd: Fd,
    },
    /// One receive of at most `len` bytes into a provided buffer (a
    /// `bandwidth_limit`ed direction).
    RecvUpTo {
        token: u64,
        fd: Fd,
        len: u32,
    },
    /// Send `bytes`, which the ring keeps until the send's completion is
    /// reaped (a PROXY header, the bytes a front read).
    SendOwned {
        token: u64,
        fd: Fd,
        bytes: Box<[u8]>,
    },
    Send {
        token: u64,
        fd: Fd,
        bid: u16,
        offset: u32,
        len: u32,
    },
    /// Send `len` bytes of the shard's periodic region from `offset`.
    SendRegion {
        token: u64,
        fd: Fd,
        offset: u32,
        len: u32,
    },
    Shutdown {
        token: u64,
        fd: Fd,
    },
    /// Cancel the operation whose user_data is `target`.
    CancelOne {
        token: u64,
        target: u64,
    },
    /// Cancel every operation on `fd`.
    CancelFd {
        token: u64,
        fd: Fd,
    },
    Close {
        token: u64,
        fd: Fd,
        linger0: bool,
    },
    /// An operation that cannot be issued (the descriptor it needs is
    /// absent): the event loop completes `token` with `-errno` at once, so
    /// the accounting of its owner stays exact.
    Fail {
        token: u64,
        errno: i32,
    },
    /// One receive of at most `len` bytes into memory the ring owns (not a
    /// provided buffer); the bytes come back with the completion (the
    /// resolver's replies).
    RecvOwned {
        token: u64,
        fd: Fd,
        len: u32,
    },
    /// Return a provided buffer to the ring (no completion).
    Release {
        bid: u16,
    },
    /// Multishot recvmsg into the datagram buffer ring.
    UdpRecvMulti {
        token: u64,
        fd: Fd,
        template: RecvTemplate,
    },
    /// Create a UDP socket of `family`.
    UdpSocket {
        token: u64,
        family: Family,
    },
    /// connect(2) a UDP socket to `addr`, with SO_RCVBUF `rcvbuf` set first.
    UdpConnect {
        token: u64,
        fd: Fd,
        addr: SocketAddr,
        rcvbuf: Option<u32>,
    },
    /// Send part of datagram buffer `bid` on a connected socket.
    SendDatagram {
        token: u64,
        fd: Fd,
        bid: u16,
        offset: u32,
        len: u32,
    },
    /// Send `header` (its first `header_len` bytes: a PROXY v2 header) then
    /// part of datagram buffer `bid`, as one datagram on a connected socket.
    SendDatagramProxied {
        token: u64,
        fd: Fd,
        bid: u16,
        offset: u32,
        len: u32,
        header: [u8; 52],
        header_len: u8,
    },
    /// Send part of datagram buffer `bid` to `dest`, from `local` when set
    /// (the address the client sent to, for wildcard listeners).
    SendDatagramTo {
        token: u64,
        fd: Fd,
        bid: u16,
        offset: u32,
        len: u32,
        dest: SocketAddr,
        local: Option<IpAddr>,
    },
    /// Return a datagram buffer to its ring (no completion).
    ReleaseDatagram {
        bid: u16,
    },
    /// Read listening socket `fd`'s accept queue length, run inline:
    /// completes with the length, or `-errno` (the accept watch).
    ListenQueue {
        token: u64,
        fd: Fd,
    },
    /// bind(2) a UDP socket to `addr` (port 0: the kernel picks), run
    /// inline: completes with the bound port, or `-errno`.
    UdpBind {
        token: u64,
        fd: Fd,
        addr: SocketAddr,
    },
    /// Send `header` (its first `header_len` bytes: a SOCKS5 UDP header)
    /// then part of datagram buffer `bid`, as one datagram to `dest`.
    SendDatagramToWithHeader {
        token: u64,
        fd: Fd,
        bid: u16,
        offset: u32,
        len: u32,
        dest: SocketAddr,
        header: [u8; crate::front::socks5::MAX_UDP_IP_HEADER],
        header_len: u8,
    },
    /// IORING_OP_SPLICE of up to `len` bytes from `fd_in` to `fd_out` (a
    /// socket and a pipe end, one way or the other).
    Splice {
        token: u64,
        fd_in: Fd,
        fd_out: Fd,
        len: u32,
    },
    /// Pipe `pipe` came back with data in it (no splice names it): close
    /// `fds` and make a replacement, reported with `Engine::restore_pipe`.
    /// No completion.
    ReplacePipe {
        pipe: u16,
        fds: PipeFds,
    },
    /// A UDP TPROXY session's reply socket: transparent, SO_REUSEADDR,
    /// bound to `bind` (the client's original destination) and connected
    /// to `peer` (the client). Made inline by the event loop (no bind on
    /// the ring before 6.11); completes with the descriptor or `-errno`.
    UdpTransparentSocket {
        token: u64,
        bind: SocketAddr,
        peer: SocketAddr,
    },
}

/// The two ends of one of the shard's pipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipeFds {
    pub read: RawFd,
    pub write: RawFd,
}

/// Which recvmsg layout (name and control space) a receive uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvTemplate {
    /// UDP listener `n`: the source address, and the destination address when
    /// the listener is bound to a wildcard address.
    Listener(u32),
    /// A session's connected socket: payload only.
    Upstream,
    /// A SOCKS5 UDP association's socket: the sender's address (it talks to
    /// its client and to every destination).
    Association,
}

pub(crate) fn result(res: i32) -> Result<u32, i32> {
    if res >= 0 { Ok(res as u32) } else { Err(-res) }
}

pub(crate) fn unit(res: i32) -> Result<(), i32> {
    result(res).map(|_| ())
}

pub(crate) fn buffer_id(flags: u32) -> Option<u16> {
    (flags & CQE_F_BUFFER != 0).then_some((flags >> 16) as u16)
}

/// A stream receive's completion, decoded.
pub(crate) fn recv_event(res: i32, flags: u32) -> RecvEvent {
    if res > 0 {
        match buffer_id(flags) {
            Some(bid) => RecvEvent::Data {
                bid,
                len: res as u32,
            },
            // Data without a buffer cannot happen with buffer select; treat as broken.
            None => RecvEvent::Error(libc::EIO),
        }
    } else if res == 0 {
        RecvEvent::Eof
    } else {
        match -res {
            libc::ENOBUFS => RecvEvent::NoBuffers,
            libc::ECANCELED => RecvEvent::Cancelled,
            e => RecvEvent::Error(e),
        }
    }
}
