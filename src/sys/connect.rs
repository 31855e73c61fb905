//! Non-blocking TCP connects for the health checker: started here, waited
//! for with `poll`, and their outcome read from SO_ERROR, so one thread
//! keeps many checks in flight without a thread (or a blocked call) each.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// A connect under way (or done): closed when dropped.
#[derive(Debug)]
pub(crate) struct Connecting(Socket);

impl Connecting {
    /// Starts connecting to `addr`. `Ok` means the SYN is on its way (or the
    /// connect already finished, as it can on loopback); `finish` tells how
    /// it went once the socket is writable.
    pub(crate) fn start(addr: SocketAddr) -> io::Result<Connecting> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        match socket.connect(&addr.into()) {
            Ok(()) => Ok(Connecting(socket)),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(Connecting(socket)),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// How the connect ended, once the socket polled writable: `Ok` when it
    /// is established, the connect's error otherwise.
    pub(crate) fn finish(&self) -> io::Result<()> {
        match self.0.take_error()? {
            Some(e) => Err(e),
            // Writable with no pending error: established (a still-pending
            // connect is not writable, so `peer_addr` failing means it ended).
            None => self.0.peer_addr().map(|_| ()),
        }
    }

    /// Sends `bytes` on the established socket; a short send is an error
    /// (a fresh socket's send buffer takes a small header whole).
    pub(crate) fn send_all(&self, bytes: &[u8]) -> io::Result<()> {
        let n = self.0.send(bytes)?;
        if n == bytes.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {n} of {} bytes", bytes.len()),
            ))
        }
    }
}
