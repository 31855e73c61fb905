//! Kernel pipes for the splice relay: each shard creates a bounded pool of
//! them at start (`pipe2(O_CLOEXEC)` and `F_SETPIPE_SZ`), so the data path
//! never makes a pipe except to replace one discarded with data in it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Where the kernel says how large an unprivileged process may make a pipe.
pub(crate) const MAX_SIZE_SYSCTL: &str = "fs.pipe-max-size";
const MAX_SIZE_PATH: &str = "/proc/sys/fs/pipe-max-size";
/// The per-user budget of pipe pages beyond which the kernel shrinks new
/// pipes and refuses to grow them (for processes without CAP_SYS_RESOURCE).
pub(crate) const USER_PAGES_SYSCTL: &str = "fs.pipe-user-pages-soft";

/// One pipe: both ends, closed when dropped.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// The capacity the kernel granted, in bytes (F_GETPIPE_SZ).
    size: u32,
}

impl Pipe {
    /// Creates a pipe and asks for `size` bytes of capacity, or for
    /// `fs.pipe-max-size` when `size` is over it and the kernel refuses. The
    /// pipe is kept whatever size it got (`size()` says which).
    pub(crate) fn new(size: u32) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the live local array.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing
        // else owns; each OwnedFd closes its own exactly once.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut pipe = Pipe {
            read,
            write,
            size: 0,
        };
        if pipe.set_size(size).is_err()
            && let Some(max) = max_size()
            && max < size
        {
            // Over fs.pipe-max-size without CAP_SYS_RESOURCE: take the most allowed.
            let _ = pipe.set_size(max);
        }
        pipe.size = pipe.get_size()?;
        Ok(pipe)
    }

    fn set_size(&self, size: u32) -> io::Result<()> {
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory of ours.
        let rc = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn get_size(&self) -> io::Result<u32> {
        // SAFETY: F_GETPIPE_SZ takes no argument and touches no memory of ours.
        let rc = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(u32::try_from(rc).unwrap_or(0))
        }
    }

    pub(crate) fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub(crate) fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// Capacity in bytes.
    pub(crate) fn size(&self) -> u32 {
        self.size
    }
}

/// `fs.pipe-max-size` in bytes (`None` if it cannot be read).
pub(crate) fn max_size() -> Option<u32> {
    std::fs::read_to_string(MAX_SIZE_PATH)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The size the kernel rounds a pipe size request to: a power of two of pages.
pub(crate) fn rounded(size: u32) -> u32 {
    size.max(4096)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_gets_the_size_it_asks_for_within_the_limit() {
        let p = Pipe::new(64 << 10).expect("pipe");
        assert_eq!(p.size(), 64 << 10);
        assert_ne!(p.read_fd(), p.write_fd());
        let limit = max_size().expect("pipe-max-size");
        let big = Pipe::new(limit).expect("pipe");
        assert_eq!(big.size(), rounded(limit));
    }

    #[test]
    fn rounding_follows_the_kernel() {
        assert_eq!(rounded(1), 4096);
        assert_eq!(rounded(65536), 65536);
        assert_eq!(rounded(65537), 131072);
    }
}
