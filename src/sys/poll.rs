//! poll(2): the health checker's one wait over its doorbell and every
//! connect it has in flight (a few hundred descriptors at most, so poll's
//! linear scan costs nothing next to a check interval).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// One descriptor to wait on and what came back for it.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub(crate) struct PollFd(libc::pollfd);

impl PollFd {
    /// Waits until `fd` is readable.
    pub(crate) fn readable(fd: RawFd) -> PollFd {
        PollFd(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
    }

    /// Waits until `fd` is writable: a non-blocking connect has finished,
    /// one way or the other (SO_ERROR says which).
    pub(crate) fn writable(fd: RawFd) -> PollFd {
        PollFd(libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        })
    }

    /// Whether the last `poll` reported anything for it (readiness, an
    /// error or a hang-up).
    pub(crate) fn ready(&self) -> bool {
        self.0.revents != 0
    }
}

/// Waits up to `timeout` (rounded up to a millisecond) for any of `fds`;
/// returns how many are ready. EINTR is a wake-up with nothing ready.
pub(crate) fn poll(fds: &mut [PollFd], timeout: Duration) -> io::Result<usize> {
    let ms = timeout.as_micros().div_ceil(1000);
    let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `PollFd` is `repr(transparent)` over `libc::pollfd`, so the slice is `n` valid,
    // writable pollfds for the duration of the call; the kernel writes only
    // their `revents`.
    let rc = unsafe { libc::poll(fds.as_mut_ptr().cast::<libc::pollfd>(), n, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(usize::try_from(rc).unwrap_or(0))
}
