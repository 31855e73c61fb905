//! For unit tests: a fresh network namespace on a thread of its own, so a
//! test can change what only a namespace's own stack sees (nftables rules,
//! `net.*` sysctls such as `net.mptcp.enabled`) without touching the host
//! or the rest of the test process.

use std::io;
use std::process::Command;

/// Runs `f` on a thread of its own in a fresh network namespace (a thread's
/// namespace is its own, and the threads and processes it starts inherit
/// it), with loopback up and each of `setup` (a command line, e.g. `nft
/// ...` or `sysctl -w net....`) run there first. `None`, the reason
/// printed, when this host cannot: not root, or a command missing or
/// refused. A panic in `f` is the test's.
pub(crate) fn in_own_netns<T: Send + 'static>(
    setup: &'static [&'static [&'static str]],
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: no pointers; it changes only this thread's network
        // namespace, which ends with the thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipped: unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            return None;
        }
        let lo: &[&str] = &["ip", "link", "set", "lo", "up"];
        for line in std::iter::once(lo).chain(setup.iter().copied()) {
            let Some((program, args)) = line.split_first() else {
                continue;
            };
            let ok = Command::new(program)
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("skipped: {line:?} failed or is missing in a new network namespace");
                return None;
            }
        }
        Some(f())
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
