//! The systemd readiness protocol (sd_notify(3)) without libsystemd: one unix
//! datagram per state change to the socket named by `$NOTIFY_SOCKET` (a path,
//! or `@name` for the abstract namespace). Outside systemd the variable is
//! unset and nothing is sent. Notification is advice to a supervisor, never a
//! reason to stop forwarding: a failed send is logged once and otherwise
//! ignored.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

/// A state change systemd is told about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Every shard serves. `MAINPID` lets a process started by a binary
    /// upgrade name itself as the service's main process.
    Ready { pid: u32 },
    /// A reload began; `Type=notify-reload` needs the CLOCK_MONOTONIC time
    /// (microseconds) to match it with the reload it asked for.
    Reloading { monotonic_usec: u64 },
    /// A drain began: systemd shows "deactivating" and stops waiting for READY.
    Stopping,
    /// Free text for `systemctl status`.
    Status(String),
}

impl State {
    /// The datagram's payload: newline-separated `KEY=value` assignments.
    fn message(&self) -> String {
        match self {
            State::Ready { pid } => format!("READY=1\nMAINPID={pid}"),
            State::Reloading { monotonic_usec } => {
                format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
            }
            State::Stopping => "STOPPING=1".to_string(),
            // A newline would start a new assignment.
            State::Status(text) => format!("STATUS={}", text.replace('\n', " ")),
        }
    }
}

/// Where `$NOTIFY_SOCKET` points.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    /// `@name`: Linux's abstract namespace (no file).
    Abstract(Vec<u8>),
}

/// Parses `$NOTIFY_SOCKET` as systemd writes it; anything else (systemd's
/// newer `vsock:` form, a relative path) is named in the error.
fn target(value: &OsStr) -> Result<Target, String> {
    let bytes = value.as_bytes();
    match bytes {
        [b'/', ..] => Ok(Target::Path(PathBuf::from(value))),
        [b'@', name @ ..] if !name.is_empty() => Ok(Target::Abstract(name.to_vec())),
        _ => Err(format!(
            "NOTIFY_SOCKET={} is neither an absolute path nor an @abstract socket name",
            value.to_string_lossy()
        )),
    }
}

fn send_to(target: &Target, message: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    match target {
        Target::Path(path) => socket.send_to(message.as_bytes(), path)?,
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message.as_bytes(), &addr)?
        }
    };
    Ok(())
}

/// Set once a failure was logged: a supervisor that went away would
/// otherwise cost a warning per state change.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Tells the supervisor about `state`, if `$NOTIFY_SOCKET` names one.
pub fn notify(state: &State) {
    let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = target(&value).and_then(|t| {
        send_to(&t, &state.message()).map_err(|e| {
            format!(
                "sending {:?} to NOTIFY_SOCKET={} failed: {e}",
                state.message(),
                value.to_string_lossy()
            )
        })
    });
    if let Err(why) = result
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        warn!(
            "{why}; systemd will not hear of ready, reload or stop (further failures are not logged)"
        );
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock sd_notify's MONOTONIC_USEC uses.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration;
    // CLOCK_MONOTONIC exists on every Linux ringfwd runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let micros = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000;
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

/// Every shard serves (at start, and again when a reload has been applied).
pub fn ready() {
    notify(&State::Ready {
        pid: std::process::id(),
    });
}

/// A reload began; `ready()` follows once it has been applied or refused.
pub fn reloading() {
    notify(&State::Reloading {
        monotonic_usec: monotonic_usec(),
    });
}

/// A drain began.
pub fn stopping() {
    notify(&State::Stopping);
}

/// One line for `systemctl status`.
pub fn status(text: &str) {
    notify(&State::Status(text.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_sd_notify() {
        assert_eq!(State::Ready { pid: 42 }.message(), "READY=1\nMAINPID=42");
        assert_eq!(
            State::Reloading { monotonic_usec: 7 }.message(),
            "RELOADING=1\nMONOTONIC_USEC=7"
        );
        assert_eq!(State::Stopping.message(), "STOPPING=1");
        assert_eq!(
            State::Status("a\nb".to_string()).message(),
            "STATUS=a b",
            "a newline in the status would start a new assignment"
        );
    }

    #[test]
    fn notify_socket_forms() {
        assert_eq!(
            target(OsStr::new("/run/systemd/notify")),
            Ok(Target::Path(PathBuf::from("/run/systemd/notify")))
        );
        assert_eq!(
            target(OsStr::new("@sd-notify")),
            Ok(Target::Abstract(b"sd-notify".to_vec()))
        );
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            let e = target(OsStr::new(bad)).expect_err(bad);
            assert!(e.contains("NOTIFY_SOCKET"), "{e}");
        }
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("ringfwd-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt as _;
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send_to(&Target::Abstract(name.into_bytes()), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_usec();
        assert!(a > 0);
        assert!(monotonic_usec() >= a);
    }
}
