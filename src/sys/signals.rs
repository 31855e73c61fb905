//! Signal handling without async handlers: the signals the control thread
//! acts on are blocked in every thread (shards inherit the mask from the
//! thread that spawns them) and the control thread collects them with
//! sigtimedwait. Operators used to NGINX or HAProxy send SIGHUP, SIGUSR1 and
//! SIGQUIT out of habit; each is caught so none kills the process by its
//! default action.

use std::io;
use std::time::Duration;

/// A signal the control thread collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    Int,
    Term,
    /// NGINX's graceful stop: drains as SIGTERM does.
    Quit,
    /// Reload the configuration.
    Hup,
    Usr1,
    Usr2,
}

/// What the control thread does with a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Drain (the first time) or exit at once (a second stop signal).
    Stop,
    /// Re-read the configuration file and apply it.
    Reload,
    /// Log why, and keep serving.
    Ignore { why: &'static str },
    /// Start the binary at our path on our listening sockets (NGINX's USR2).
    Upgrade,
}

impl Signal {
    const ALL: [Signal; 6] = [
        Signal::Int,
        Signal::Term,
        Signal::Quit,
        Signal::Hup,
        Signal::Usr1,
        Signal::Usr2,
    ];

    fn number(self) -> i32 {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Quit => libc::SIGQUIT,
            Signal::Hup => libc::SIGHUP,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
        }
    }

    fn from_number(n: i32) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.number() == n)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
            Signal::Quit => "SIGQUIT",
            Signal::Hup => "SIGHUP",
            Signal::Usr1 => "SIGUSR1",
            Signal::Usr2 => "SIGUSR2",
        }
    }

    pub(crate) fn intent(self) -> Intent {
        match self {
            Signal::Int | Signal::Term | Signal::Quit => Intent::Stop,
            Signal::Hup => Intent::Reload,
            Signal::Usr1 => Intent::Ignore {
                why: "it reopens the access log, and no `[log] access` is configured (the \
                      application log goes to stderr)",
            },
            Signal::Usr2 => Intent::Upgrade,
        }
    }
}

pub(crate) struct ControlSignals {
    set: libc::sigset_t,
}

impl ControlSignals {
    /// Blocks every [`Signal`] in the calling thread and makes sure SIGPIPE
    /// is ignored. Call before spawning threads so they inherit the mask and
    /// never receive these signals.
    pub(crate) fn block() -> io::Result<ControlSignals> {
        ignore_sigpipe()?;
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use,
        // and pthread_sigmask only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in Signal::ALL {
                libc::sigaddset(&mut set, s.number());
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(ControlSignals { set })
        }
    }

    /// Waits up to `timeout` for one of the signals.
    pub(crate) fn wait(&self, timeout: Duration) -> Option<Signal> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `set` was initialised in `block`; siginfo may be null; ts is a live local.
        let sig = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        Signal::from_number(sig)
    }
}

/// SIGPIPE's default action ends the process on a write to a closed pipe or
/// socket. The Rust runtime already ignores it at start-up; setting it here
/// too keeps that true whatever loaded us, so such a write only returns EPIPE
/// (a relay's send, a log line to a closed stderr).
pub(crate) fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: installs the SIG_IGN disposition, no handler code runs.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_int_term_and_quit_stop_the_process() {
        for s in Signal::ALL {
            let stops = matches!(s, Signal::Int | Signal::Term | Signal::Quit);
            assert_eq!(s.intent() == Intent::Stop, stops, "{}", s.name());
            assert_eq!(Signal::from_number(s.number()), Some(s));
        }
        assert_eq!(Signal::from_number(libc::SIGPIPE), None);
        assert_eq!(Signal::from_number(-1), None);
    }
}
