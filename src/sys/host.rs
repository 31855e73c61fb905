//! Startup checks of the host: is io_uring usable (and if not, whether a sysctl
//! or a seccomp/LSM policy blocks it), does the kernel have every opcode the
//! engine uses, is RLIMIT_MEMLOCK enough for the rings, are enough descriptors
//! allowed, which CPUs may we run on. Each failure says what is missing and how
//! to fix it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use io_uring::{IoUring, opcode};

/// Something about the host that stops ringfwd from starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// kernel.io_uring_disabled = 2.
    IoUringDisabled,
    /// kernel.io_uring_disabled = 1 and we are not in kernel.io_uring_group.
    IoUringRestricted {
        group: Option<i64>,
    },
    /// io_uring_setup refused although the sysctl allows it: seccomp or an LSM.
    IoUringBlocked {
        errno: i32,
    },
    /// ENOSYS and no sysctl: the kernel has no io_uring at all.
    IoUringMissing,
    /// io_uring_setup failed with ENOMEM: locked-memory limit.
    RingMemory {
        limit: Option<u64>,
    },
    IoUringOther {
        error: String,
    },
    KernelTooOld {
        release: String,
    },
    OpcodeMissing {
        name: &'static str,
        since: &'static str,
    },
    MemLock {
        limit: u64,
        needed: u64,
        shards: usize,
    },
    AddrInUse {
        what: String,
        addr: SocketAddr,
    },
    /// Port 0 asked for, and no port of the ephemeral range is free.
    NoFreePort {
        what: String,
        addr: SocketAddr,
    },
    PortPermission {
        what: String,
        addr: SocketAddr,
    },
    AddrNotAvailable {
        what: String,
        addr: SocketAddr,
    },
    Bind {
        what: String,
        addr: SocketAddr,
        error: String,
    },
    Shard {
        shard: usize,
        error: String,
    },
    /// `[log] access` could not be opened.
    AccessLog {
        error: String,
    },
    /// The health checker's thread or doorbell could not be made.
    HealthChecker {
        error: String,
    },
    /// An upstream that is an address of this host on a wildcard
    /// listener's port: ringfwd would forward to itself.
    ForwardingLoop {
        /// e.g. "tcp listener 'web'".
        upstream_of: String,
        upstream: SocketAddr,
        listener: String,
        listen: SocketAddr,
    },
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::IoUringDisabled => write!(
                f,
                "io_uring is disabled on this host (sysctl kernel.io_uring_disabled = 2). \
                 Enable it with `sysctl -w kernel.io_uring_disabled=0` and persist it in /etc/sysctl.d/"
            ),
            HostError::IoUringRestricted { group } => {
                let g = group.map_or("the group in kernel.io_uring_group".to_string(), |g| {
                    format!("group {g} (kernel.io_uring_group)")
                });
                write!(
                    f,
                    "io_uring is restricted on this host (sysctl kernel.io_uring_disabled = 1): only \
                     {g} or CAP_SYS_ADMIN may use it. Add the service user to that group, or set \
                     `sysctl -w kernel.io_uring_disabled=0`"
                )
            }
            HostError::IoUringBlocked { errno } => write!(
                f,
                "io_uring_setup was refused ({}) although sysctl kernel.io_uring_disabled allows io_uring: \
                 a seccomp filter or LSM policy blocks it (container runtimes' default seccomp profiles \
                 and systemd's SystemCallFilter= do). Allow io_uring_setup, io_uring_enter and \
                 io_uring_register for ringfwd (e.g. a custom seccomp profile, or drop @io_uring from \
                 the unit's deny list)",
                std::io::Error::from_raw_os_error(*errno)
            ),
            HostError::IoUringMissing => write!(
                f,
                "this kernel has no io_uring (io_uring_setup: ENOSYS and no kernel.io_uring_disabled \
                 sysctl): it was built without CONFIG_IO_URING or a filter hides the syscall. ringfwd \
                 needs Linux 6.1 or newer with io_uring"
            ),
            HostError::RingMemory { limit } => write!(
                f,
                "io_uring_setup failed with ENOMEM: the ring does not fit in the locked-memory limit \
                 (RLIMIT_MEMLOCK = {}). Raise it (`ulimit -l`, systemd LimitMEMLOCK=) or lower \
                 runtime.ring_entries; see tuning.md",
                limit.map_or("unknown".to_string(), human_bytes)
            ),
            HostError::IoUringOther { error } => {
                write!(
                    f,
                    "io_uring is not usable on this host: io_uring_setup failed: {error}"
                )
            }
            HostError::KernelTooOld { release } => write!(
                f,
                "Linux 6.1 or newer is required (multishot accept and receive with provided buffer \
                 rings, DEFER_TASKRUN); this host runs {release}. Upgrade the kernel"
            ),
            HostError::OpcodeMissing { name, since } => write!(
                f,
                "the kernel's io_uring lacks {name} (added in Linux {since}), which ringfwd uses. \
                 Upgrade the kernel"
            ),
            HostError::MemLock {
                limit,
                needed,
                shards,
            } => write!(
                f,
                "RLIMIT_MEMLOCK is {} but {shards} shard(s) need about {} of locked memory for their \
                 rings and buffer-ring entries (the limit is per user: other io_uring programs of \
                 the same user share it). Raise it: `ulimit -l {}` in the shell, \
                 LimitMEMLOCK={} in the systemd unit, or a memlock line in \
                 /etc/security/limits.conf; or lower runtime.ring_entries / buffers_per_shard \
                 (see tuning.md)",
                human_bytes(*limit),
                human_bytes(*needed),
                needed.div_ceil(1024) * 2,
                needed.next_power_of_two().max(1 << 20) * 2
            ),
            HostError::AddrInUse { what, addr } => write!(
                f,
                "{what}: {addr} is already in use by another socket. Find the owner with \
                 `ss -ltunp 'sport = :{}'` and stop it, or choose another listen address",
                addr.port()
            ),
            HostError::NoFreePort { what, addr } => write!(
                f,
                "{what}: no free port for {addr}: every port of the ephemeral range \
                 (`sysctl net.ipv4.ip_local_port_range`) is in use. Give the listener a port of \
                 its own, or widen the range"
            ),
            HostError::PortPermission { what, addr } => write!(
                f,
                "{what}: binding {addr} needs privileges (ports below 1024 need root or \
                 CAP_NET_BIND_SERVICE: `setcap cap_net_bind_service=+ep $(command -v ringfwd)` or \
                 AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit)"
            ),
            HostError::AddrNotAvailable { what, addr } => write!(
                f,
                "{what}: {} is not an address of this host (see `ip addr`); listen on one of its \
                 addresses or on 0.0.0.0 / [::]",
                addr.ip()
            ),
            HostError::Bind { what, addr, error } => {
                write!(f, "{what}: cannot listen on {addr}: {error}")
            }
            HostError::Shard { shard, error } => {
                write!(f, "shard {shard} failed to start: {error}")
            }
            HostError::AccessLog { error } => write!(f, "the access log cannot start: {error}"),
            HostError::HealthChecker { error } => write!(f, "health checker cannot start: {error}"),
            HostError::ForwardingLoop {
                upstream_of,
                upstream,
                listener,
                listen,
            } => write!(
                f,
                "{upstream_of}: upstream {upstream} is an address of this host (see `ip addr`), \
                 and {listener} listens on port {} of every address ({listen}): a forwarding \
                 loop (what it receives would be forwarded back to ringfwd, again and again, \
                 until descriptors run out). Point the upstream at the service ringfwd forwards \
                 to, on another port or host, or make the listener listen on specific addresses",
                listen.port()
            ),
        }
    }
}

impl std::error::Error for HostError {}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, size) in UNITS {
        if n >= size {
            let whole = n / size;
            let tenth = (n % size) * 10 / size;
            return if tenth == 0 {
                format!("{whole} {name}")
            } else {
                format!("{whole}.{tenth} {name}")
            };
        }
    }
    format!("{n} B")
}

fn read_sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Maps an io_uring_setup failure to its cause, given the sysctls' values.
pub fn classify_setup_error(
    errno: i32,
    disabled: Option<i64>,
    group: Option<i64>,
    memlock: Option<u64>,
) -> HostError {
    match (errno, disabled) {
        (libc::EPERM, Some(2)) => HostError::IoUringDisabled,
        (libc::EPERM, Some(1)) => HostError::IoUringRestricted { group },
        (libc::EPERM | libc::EACCES, _) => HostError::IoUringBlocked { errno },
        (libc::ENOSYS, None) => HostError::IoUringMissing,
        (libc::ENOSYS, Some(_)) => HostError::IoUringBlocked { errno },
        (libc::ENOMEM, _) => HostError::RingMemory { limit: memlock },
        _ => HostError::IoUringOther {
            error: std::io::Error::from_raw_os_error(errno).to_string(),
        },
    }
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "an unknown kernel".to_string())
}

/// (major, minor) of a release string like "6.18.44-fc".
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The opcodes the engine issues, with the Linux version that added each.
const REQUIRED_OPCODES: [(u8, &str, &str); 12] = [
    (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT", "5.5"),
    (opcode::RecvMulti::CODE, "IORING_OP_RECV", "5.6"),
    (opcode::Send::CODE, "IORING_OP_SEND", "5.6"),
    (opcode::Socket::CODE, "IORING_OP_SOCKET", "5.19"),
    (opcode::Connect::CODE, "IORING_OP_CONNECT", "5.5"),
    (opcode::LinkTimeout::CODE, "IORING_OP_LINK_TIMEOUT", "5.5"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL", "5.5"),
    (opcode::Shutdown::CODE, "IORING_OP_SHUTDOWN", "5.11"),
    (opcode::Close::CODE, "IORING_OP_CLOSE", "5.6"),
    (opcode::Read::CODE, "IORING_OP_READ", "5.6"),
    (opcode::Timeout::CODE, "IORING_OP_TIMEOUT", "5.4"),
    (opcode::Splice::CODE, "IORING_OP_SPLICE", "5.7"),
];

/// A tiny ring for probing; ENOMEM is retried briefly because the locked
/// memory of a ring torn down just before (a restart) is released asynchronously.
fn probe_ring() -> std::io::Result<IoUring> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match IoUring::new(8) {
            Err(e)
                if e.raw_os_error() == Some(libc::ENOMEM)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// io_uring works here and knows every opcode we use.
pub fn check_io_uring() -> Result<(), HostError> {
    let release = kernel_release();
    if let Some((major, minor)) = parse_release(&release)
        && (major, minor) < (6, 1)
    {
        return Err(HostError::KernelTooOld { release });
    }
    let ring = probe_ring().map_err(|e| {
        classify_setup_error(
            e.raw_os_error().unwrap_or(libc::EIO),
            read_sysctl("/proc/sys/kernel/io_uring_disabled"),
            read_sysctl("/proc/sys/kernel/io_uring_group"),
            memlock_limit().map(|(soft, _)| soft),
        )
    })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| HostError::IoUringOther {
            error: format!("IORING_REGISTER_PROBE failed: {e}"),
        })?;
    for (code, name, since) in REQUIRED_OPCODES {
        if !probe.is_supported(code) {
            return Err(HostError::OpcodeMissing { name, since });
        }
    }
    Ok(())
}

/// (soft, hard) RLIMIT_MEMLOCK in bytes; u64::MAX for unlimited.
pub fn memlock_limit() -> Option<(u64, u64)> {
    get_rlimit(libc::RLIMIT_MEMLOCK)
}

fn get_rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live local `r`.
    let rc = unsafe { libc::getrlimit(resource, &mut r) };
    (rc == 0).then_some((r.rlim_cur, r.rlim_max))
}

fn set_soft_rlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> bool {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the live local `r`.
    unsafe { libc::setrlimit(resource, &r) == 0 }
}

/// Whether CAP_IPC_LOCK is effective (locked memory is then not limited).
pub fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Locked memory one shard's rings need: SQ array + SQEs, CQEs, and the
/// provided-buffer ring entries (stream and, with UDP, datagram rings), each
/// rounded to pages (what the kernel pins and, without CAP_IPC_LOCK, charges
/// to RLIMIT_MEMLOCK).
pub fn shard_locked_bytes(ring_entries: u32, buffers: u32, datagram_buffers: u32) -> u64 {
    const PAGE: u64 = 4096;
    let sq = u64::from(ring_entries);
    let cq = sq * 8;
    let pages = |bytes: u64| bytes.div_ceil(PAGE) * PAGE;
    pages(sq * 4 + 64 * 4)
        + pages(sq * 64)
        + pages(cq * 16 + 64 * 4)
        + pages(u64::from(buffers.next_power_of_two()) * 16)
        + pages(u64::from(datagram_buffers.next_power_of_two()) * 16)
}

/// Checks (and if the hard limit allows, raises) RLIMIT_MEMLOCK for `shards`
/// shards. Returns a note for the log when the limit was raised.
pub fn ensure_memlock(
    shards: usize,
    ring_entries: u32,
    buffers: u32,
    datagram_buffers: u32,
) -> Result<Option<String>, HostError> {
    if has_cap_ipc_lock() {
        return Ok(None);
    }
    let needed = shard_locked_bytes(ring_entries, buffers, datagram_buffers) * shards as u64;
    let Some((soft, hard)) = memlock_limit() else {
        return Ok(None);
    };
    if soft >= needed {
        return Ok(None);
    }
    if hard >= needed && set_soft_rlimit(libc::RLIMIT_MEMLOCK, needed, hard) {
        return Ok(Some(format!(
            "raised RLIMIT_MEMLOCK soft limit from {} to {} (hard limit {})",
            human_bytes(soft),
            human_bytes(needed),
            human_bytes(hard)
        )));
    }
    Err(HostError::MemLock {
        limit: soft,
        needed,
        shards,
    })
}

/// RLIMIT_NOFILE once [`ensure_nofile`] has raised what it could.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit in effect (what the process may open).
    pub limit: u64,
    pub hard: u64,
    /// The soft limit before, when it was raised.
    pub raised_from: Option<u64>,
}

/// Raises the soft descriptor limit toward `needed`, up to the hard limit
/// (raising the hard limit needs privilege; that is the operator's call).
/// Returns the limit now in effect, or `None` when it cannot be read; the
/// caller turns it into a per-shard budget and decides what to tell.
pub fn ensure_nofile(needed: u64) -> Option<NoFile> {
    let (soft, hard) = get_rlimit(libc::RLIMIT_NOFILE)?;
    let target = needed.min(hard);
    if target > soft && set_soft_rlimit(libc::RLIMIT_NOFILE, target, hard) {
        return Some(NoFile {
            limit: target,
            hard,
            raised_from: Some(soft),
        });
    }
    Some(NoFile {
        limit: soft,
        hard,
        raised_from: None,
    })
}

/// The IP addresses of this host's interfaces (getifaddrs); empty if they
/// cannot be read, which only skips the check that uses them.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into the live local `list`.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut addrs = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        if let Some(ip) = sockaddr_ip(entry.ifa_addr) {
            addrs.push(ip);
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once; no reference into it outlives this.
    unsafe { libc::freeifaddrs(list) };
    addrs
}

/// The IP of an interface address, if it is IPv4 or IPv6.
fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: getifaddrs gives a valid sockaddr whose sa_family says which
    // larger struct it is; each is read only as the family it names.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let v4 = &*sa.cast::<libc::sockaddr_in>();
                Some(IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes()))
            }
            libc::AF_INET6 => {
                let v6 = &*sa.cast::<libc::sockaddr_in6>();
                Some(IpAddr::from(v6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

/// CPU ids this process may run on (its affinity mask), ascending.
pub fn available_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_errors_name_their_cause() {
        assert_eq!(
            classify_setup_error(libc::EPERM, Some(2), None, None),
            HostError::IoUringDisabled
        );
        assert_eq!(
            classify_setup_error(libc::EPERM, Some(1), Some(1000), None),
            HostError::IoUringRestricted { group: Some(1000) }
        );
        assert_eq!(
            classify_setup_error(libc::EPERM, Some(0), None, None),
            HostError::IoUringBlocked { errno: libc::EPERM }
        );
        assert_eq!(
            classify_setup_error(libc::ENOSYS, None, None, None),
            HostError::IoUringMissing
        );
        assert_eq!(
            classify_setup_error(libc::ENOSYS, Some(0), None, None),
            HostError::IoUringBlocked {
                errno: libc::ENOSYS
            }
        );
        let m = classify_setup_error(libc::ENOMEM, Some(0), None, Some(65536)).to_string();
        assert!(m.contains("RLIMIT_MEMLOCK = 64 KiB"), "{m}");
        let d = HostError::IoUringDisabled.to_string();
        assert!(d.contains("kernel.io_uring_disabled"), "{d}");
        let b = HostError::IoUringBlocked { errno: libc::EPERM }.to_string();
        assert!(b.contains("seccomp"), "{b}");
    }

    #[test]
    fn local_addresses_include_loopback() {
        let local = local_addresses();
        assert!(
            local.contains(&IpAddr::from([127, 0, 0, 1])),
            "lo's 127.0.0.1 is listed: {local:?}"
        );
    }

    #[test]
    fn release_parsing() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn memlock_message_has_numbers_and_fix() {
        let e = HostError::MemLock {
            limit: 64 << 10,
            needed: 3 << 20,
            shards: 2,
        }
        .to_string();
        assert!(
            e.contains("64 KiB") && e.contains("3 MiB") && e.contains("LimitMEMLOCK"),
            "{e}"
        );
    }

    #[test]
    fn locked_bytes_grow_with_rings() {
        assert!(shard_locked_bytes(2048, 4096, 0) > shard_locked_bytes(64, 8, 0));
        assert!(shard_locked_bytes(64, 8, 512) > shard_locked_bytes(64, 8, 0));
        assert_eq!(shard_locked_bytes(64, 8, 0) % 4096, 0);
    }
}
