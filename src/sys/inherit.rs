//! The kernel side of a binary upgrade (SIGUSR2): starting the new binary
//! with some descriptors inherited across exec, the pipe it reports ready
//! on, and adopting and inspecting the descriptors it was handed.
//!
//! Descriptor inheritance rather than SCM_RIGHTS: the descriptor numbers
//! stay the same across fork and exec, so the child needs only their numbers
//! (an environment variable) and no protocol on a socket. Every descriptor is
//! close-on-exec in the child except the ones handed over, so the new
//! process never holds a connection of the old one open.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command};

/// What a handed-over socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SocketKind {
    /// A listening TCP socket.
    Listening,
    /// A bound UDP socket.
    Datagram,
    /// Anything else (a connected TCP socket, a non-socket).
    Other,
}

/// Starts `program` with `args` and `env`, the descriptors `keep` open in it
/// (at the same numbers) and every other descriptor closed at exec; stdio
/// is inherited, so its log goes where ours goes.
pub(crate) fn spawn_keeping(
    program: &Path,
    args: &[OsString],
    env: &[(&str, String)],
    keep: &[RawFd],
) -> io::Result<Child> {
    let keep = keep.to_vec();
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it calls close_range, getrlimit
    // and fcntl (system calls), reads `keep` (allocated before the fork) and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            cloexec_all()?;
            for fd in &keep {
                let flags = libc::fcntl(*fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Marks every descriptor above stderr close-on-exec. Sockets the data path
/// opens are already (SOCK_CLOEXEC); this makes it true whatever opened
/// them. Runs between fork and exec: system calls only.
fn cloexec_all() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on
    // descriptors of this (forked) process; no memory is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Before Linux 5.11: one fcntl per possible descriptor.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live local `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let top = RawFd::try_from(limit.rlim_cur).unwrap_or(RawFd::MAX);
    for fd in 3..top {
        // SAFETY: F_GETFD/F_SETFD take and touch no memory; a closed fd gives EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// A pipe for the new process's ready byte: (read end, non-blocking; write
/// end), both close-on-exec until [`spawn_keeping`] keeps the write end.
pub(crate) fn ready_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the live local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are fresh descriptors nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETFL with an int argument touches no memory of ours.
    if unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((read, write))
}

/// What the ready pipe said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadyPipe {
    /// The new process wrote its byte: every shard serves.
    Ready,
    /// Every write end is closed without the byte (the process ended).
    Closed,
    /// Nothing yet.
    Waiting,
}

/// Reads the ready pipe without blocking.
pub(crate) fn read_ready(fd: &OwnedFd) -> io::Result<ReadyPipe> {
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into the live local `byte`.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut byte).cast(), 1) };
    match n {
        1 => Ok(ReadyPipe::Ready),
        0 => Ok(ReadyPipe::Closed),
        _ => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(ReadyPipe::Waiting),
                _ => Err(e),
            }
        }
    }
}

/// Writes the ready byte and closes the write end.
pub(crate) fn write_ready(fd: OwnedFd) -> io::Result<()> {
    let byte = 1u8;
    // SAFETY: writes one byte from the live local `byte`.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&raw const byte).cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes ownership of descriptor `fd`, inherited from the process that
/// started this one, and makes it close-on-exec again (so it reaches a
/// later upgrade only if handed over again).
pub(crate) fn adopt(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "stdin, stdout and stderr are not handed-over descriptors",
        ));
    }
    // SAFETY: F_GETFD touches no memory; it tells whether `fd` is open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open, was handed to this process for it to own, and
    // the caller adopts each number once (duplicates are refused before).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD with an int argument touches no memory of ours.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// What `fd` is and the address it is bound to.
pub(crate) fn describe(fd: &OwnedFd) -> io::Result<(SocketKind, SocketAddr)> {
    let borrowed: BorrowedFd<'_> = std::os::fd::AsFd::as_fd(fd);
    let sock = socket2::SockRef::from(&borrowed);
    let addr = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
    let ty = sock.r#type()?;
    let kind = if ty == socket2::Type::STREAM && sock.is_listener()? {
        SocketKind::Listening
    } else if ty == socket2::Type::DGRAM {
        SocketKind::Datagram
    } else {
        SocketKind::Other
    };
    Ok((kind, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_pipe_tells_waiting_ready_and_closed_apart() {
        let (read, write) = ready_pipe().expect("pipe");
        assert_eq!(read_ready(&read).expect("read"), ReadyPipe::Waiting);
        write_ready(write).expect("write");
        assert_eq!(read_ready(&read).expect("read"), ReadyPipe::Ready);
        // The write end was closed after the byte.
        assert_eq!(read_ready(&read).expect("read"), ReadyPipe::Closed);
        let (read, write) = ready_pipe().expect("pipe");
        drop(write);
        assert_eq!(read_ready(&read).expect("read"), ReadyPipe::Closed);
    }

    #[test]
    fn sockets_are_described_and_stdio_is_never_adopted() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let fd = OwnedFd::from(l);
        assert_eq!(
            describe(&fd).expect("describe"),
            (SocketKind::Listening, addr)
        );
        let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let uaddr = u.local_addr().expect("addr");
        assert_eq!(
            describe(&OwnedFd::from(u)).expect("describe"),
            (SocketKind::Datagram, uaddr)
        );
        assert!(adopt(2).is_err());
    }
}
