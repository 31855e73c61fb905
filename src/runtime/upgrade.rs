//! Binary upgrade on SIGUSR2, as NGINX's USR2 (and Cloudflare's ecdysis):
//! the running process starts the binary at its own path with its own
//! arguments and hands it every listening socket by descriptor inheritance
//! (`RINGFWD_INHERIT` names them). The new process binds nothing it was
//! handed, starts its shards on those sockets, writes the pid file and one
//! byte on an inherited pipe (`RINGFWD_UPGRADE_READY`). Only then does the
//! old process stop accepting and drain; until then both accept from the
//! same sockets, so no connection waits on a socket nobody accepts from. A
//! new process that exits, closes the pipe without the byte, or is not
//! ready within [`UPGRADE_TIMEOUT`] (then it is killed) leaves the old one
//! serving, with the reason logged.

use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::Groups;
use crate::config::{Plan, Proto};
use crate::sys::HostError;
use crate::sys::inherit::{self, ReadyPipe, SocketKind};
use crate::sys::socket::StreamListen;
use crate::sys::socket::{self, ListenKind};

/// Names the handed-over listening sockets: `proto addr name fd,fd...`
/// entries separated by `;`, the name percent-encoded.
pub(super) const INHERIT_ENV: &str = "RINGFWD_INHERIT";
/// The descriptor the new process writes its ready byte to.
pub(super) const READY_ENV: &str = "RINGFWD_UPGRADE_READY";
/// How long the old process waits for the new one to be ready: above the
/// new process's own bound on its shards' start (10 s), so a slow start
/// reports its own reason before it is killed.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(15);

/// The name the admin endpoint's socket is handed over under.
const ADMIN: &str = "[admin]";

/// One listener's SO_REUSEPORT group: handed over, or kept to hand over.
#[derive(Debug)]
pub(super) struct Handed {
    proto: Proto,
    name: String,
    addr: SocketAddr,
    fds: Vec<OwnedFd>,
}

/// One entry of [`INHERIT_ENV`].
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    proto: Proto,
    name: String,
    addr: SocketAddr,
    fds: Vec<RawFd>,
}

/// Bytes a listener name keeps as they are in [`INHERIT_ENV`]; the rest
/// (separators included) are written `%XX`.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._:-[]".contains(&b)
}

fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_name(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape in listener name {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("listener name {text:?} is not UTF-8"))
}

fn encode(entries: &[Entry]) -> String {
    let each: Vec<String> = entries
        .iter()
        .map(|e| {
            let fds: Vec<String> = e.fds.iter().map(|fd| fd.to_string()).collect();
            format!(
                "{} {} {} {}",
                e.proto,
                e.addr,
                encode_name(&e.name),
                fds.join(",")
            )
        })
        .collect();
    each.join(";")
}

fn decode(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for item in text.split(';').filter(|i| !i.is_empty()) {
        let f: Vec<&str> = item.split(' ').collect();
        let [proto, addr, name, fds] = f.as_slice() else {
            return Err(format!("{item:?} is not `proto address name fd,fd...`"));
        };
        let proto = match *proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => return Err(format!("{other:?} is not tcp or udp")),
        };
        let addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not a socket address"))?;
        let fds = fds
            .split(',')
            .map(|fd| {
                fd.parse()
                    .map_err(|_| format!("{fd:?} is not a descriptor"))
            })
            .collect::<Result<Vec<RawFd>, String>>()?;
        entries.push(Entry {
            proto,
            name: decode_name(name)?,
            addr,
            fds,
        });
    }
    Ok(entries)
}

/// The listening sockets this process hands to a new binary: duplicates of
/// the shards' (close-on-exec, so they reach only an upgrade's child).
/// Dropped when a drain starts, so the sockets close with the shards'.
#[derive(Debug, Default)]
pub(super) struct Handover {
    groups: Vec<Handed>,
}

impl Handover {
    /// Duplicates every group of `groups` (bound for `plan`, in `bind_groups`' order).
    pub(super) fn of(plan: &Plan, groups: &Groups) -> Result<Handover, HostError> {
        let echo = |proto: Proto| plan.echo.iter().filter(move |e| e.proto == proto);
        let tcp = plan
            .tcp
            .iter()
            .map(|t| (Proto::Tcp, &t.name))
            .zip(&groups.tcp);
        let udp = plan
            .udp
            .iter()
            .map(|u| (Proto::Udp, &u.name))
            .zip(&groups.udp);
        let udp_echo = echo(Proto::Udp)
            .map(|e| (Proto::Udp, &e.name))
            .zip(&groups.udp_echo);
        let tcp_echo = echo(Proto::Tcp)
            .map(|e| (Proto::Tcp, &e.name))
            .zip(&groups.tcp_echo);
        let mut handover = Handover::default();
        for ((proto, name), (fds, addr)) in tcp.chain(udp).chain(udp_echo).chain(tcp_echo) {
            let fds = fds
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<io::Result<Vec<_>>>()
                .map_err(|e| HostError::Bind {
                    what: format!("{proto} listener '{name}' (a copy kept for SIGUSR2 upgrades)"),
                    addr: *addr,
                    error: format!("{e}; raise the descriptor limit (ulimit -n)"),
                })?;
            handover.groups.push(Handed {
                proto,
                name: name.clone(),
                addr: *addr,
                fds,
            });
        }
        Ok(handover)
    }

    /// Keeps a copy of the admin endpoint's socket: the new process answers
    /// on it (both do while the old one drains).
    pub(super) fn keep_admin(&mut self, socket: &TcpListener) {
        let kept = socket
            .local_addr()
            .and_then(|addr| Ok((addr, OwnedFd::from(socket.try_clone()?))));
        match kept {
            Ok((addr, fd)) => self.groups.push(Handed {
                proto: Proto::Tcp,
                name: ADMIN.to_owned(),
                addr,
                fds: vec![fd],
            }),
            Err(e) => warn!(
                "[admin] listen: cannot keep its socket for a SIGUSR2 upgrade ({e}); an upgrade will fail to bind it"
            ),
        }
    }

    /// After a SIGHUP reload: the `proto` listeners handed over are those
    /// the reload holds (`held`: name and address; a kept one keeps its
    /// copies, renamed if the file renamed it), plus `added` (copies of the
    /// sockets the reload bound). The admin socket does not change on reload.
    pub(super) fn reloaded(
        &mut self,
        proto: Proto,
        held: &[(String, SocketAddr)],
        added: Vec<(String, SocketAddr, Vec<OwnedFd>)>,
    ) {
        self.groups.retain_mut(|g| {
            if g.proto != proto || g.name == ADMIN {
                return true;
            }
            match held.iter().find(|(_, addr)| *addr == g.addr) {
                Some((name, _)) => {
                    g.name.clone_from(name);
                    true
                }
                None => false,
            }
        });
        for (name, addr, fds) in added {
            self.groups.push(Handed {
                proto,
                name,
                addr,
                fds,
            });
        }
    }

    /// Closes the copies: a drain closes the listeners.
    pub(super) fn clear(&mut self) {
        self.groups.clear();
    }

    fn describe(&self) -> String {
        let entries: Vec<Entry> = self
            .groups
            .iter()
            .map(|g| Entry {
                proto: g.proto,
                name: g.name.clone(),
                addr: g.addr,
                fds: g.fds.iter().map(AsRawFd::as_raw_fd).collect(),
            })
            .collect();
        encode(&entries)
    }

    fn raw_fds(&self) -> Vec<RawFd> {
        self.groups
            .iter()
            .flat_map(|g| g.fds.iter().map(AsRawFd::as_raw_fd))
            .collect()
    }
}

/// What a new process was handed by the one it upgrades.
#[derive(Debug, Default)]
pub(super) struct Inherited {
    groups: Vec<Handed>,
    /// Sockets of a group beyond this process's shard count.
    surplus: Vec<(Handed, usize)>,
    ready: Option<OwnedFd>,
}

impl Inherited {
    /// Nothing inherited (`check`, the demo, a plain start).
    pub(super) fn none() -> Inherited {
        Inherited::default()
    }

    /// What [`INHERIT_ENV`] and [`READY_ENV`] name. A socket that is not
    /// what it is said to be is logged and closed; its listener then binds
    /// as usual.
    pub(super) fn from_env() -> Inherited {
        let mut inherited = Inherited::default();
        if let Some(text) = std::env::var_os(READY_ENV) {
            match text
                .to_str()
                .and_then(|t| t.parse().ok())
                .map(inherit::adopt)
            {
                Some(Ok(fd)) => inherited.ready = Some(fd),
                Some(Err(e)) => {
                    error!("{READY_ENV}={text:?}: {e}; the old process will not see this one ready")
                }
                None => error!("{READY_ENV}={text:?} is not a descriptor number"),
            }
        }
        let Some(text) = std::env::var_os(INHERIT_ENV) else {
            return inherited;
        };
        let entries = match text.to_str().ok_or("not UTF-8".to_owned()).and_then(decode) {
            Ok(entries) => entries,
            Err(e) => {
                error!("{INHERIT_ENV}: {e}; binding every listener anew");
                return inherited;
            }
        };
        let mut adopted = std::collections::HashSet::new();
        for e in entries {
            let mut fds = Vec::with_capacity(e.fds.len());
            for fd in e.fds {
                // A number named twice is owned once.
                if adopted.insert(fd)
                    && let Some(owned) = check_inherited(&e.proto, &e.name, e.addr, fd)
                {
                    fds.push(owned);
                }
            }
            if !fds.is_empty() {
                inherited.groups.push(Handed {
                    proto: e.proto,
                    name: e.name,
                    addr: e.addr,
                    fds,
                });
            }
        }
        inherited
    }

    /// The handed-over group for a listener: same protocol and address, or
    /// for a port-0 listener the same address and name (its port was the
    /// kernel's choice).
    fn take(&mut self, proto: Proto, name: &str, listen: SocketAddr) -> Option<Handed> {
        let i = self.groups.iter().position(|g| {
            g.proto == proto
                && (g.addr == listen
                    || (listen.port() == 0 && g.addr.ip() == listen.ip() && g.name == name))
        })?;
        Some(self.groups.swap_remove(i))
    }

    /// `[admin] listen`: the handed-over socket, else bound.
    pub(super) fn admin_socket(&mut self, plan: &Plan) -> Result<Option<TcpListener>, HostError> {
        let Some(admin) = &plan.admin else {
            return Ok(None);
        };
        match self
            .take(Proto::Tcp, ADMIN, admin.listen)
            .and_then(|mut g| g.fds.pop())
        {
            Some(fd) => Ok(Some(TcpListener::from(fd))),
            None => super::admin::bind(plan),
        }
    }

    /// Closes what no listener took and what the shards do not use, writes
    /// the pid file, then tells the old process (if any) this one serves.
    /// An error is the pid file's: the old process then keeps serving.
    pub(super) fn serving(mut self, pid_file: Option<&Path>) -> Result<PidFile, String> {
        for g in self.groups.drain(..) {
            info!(
                "{} {} ({}): handed over, but no listener of this configuration uses it; closing its {} socket(s)",
                g.proto,
                g.addr,
                g.name,
                g.fds.len()
            );
        }
        for (g, shards) in self.surplus.drain(..) {
            info!(
                "{} listener '{}' on {}: {} handed-over socket(s) beyond this process's {shards} shard(s) closed (see tuning.md, \"Binary upgrade\")",
                g.proto,
                g.name,
                g.addr,
                g.fds.len()
            );
        }
        let pid_file = PidFile::claim(pid_file)?;
        if let Some(fd) = self.ready.take() {
            match inherit::write_ready(fd) {
                Ok(()) => info!("upgrade: serving; the old process drains"),
                // The old process is gone (killed meanwhile): this one is all
                // there is, so it serves on.
                Err(e) => warn!(
                    "upgrade: serving, but the old process could not be told ({READY_ENV}: {e}); it may have exited already"
                ),
            }
        }
        Ok(pid_file)
    }
}

fn check_inherited(proto: &Proto, name: &str, addr: SocketAddr, fd: RawFd) -> Option<OwnedFd> {
    let owned = match inherit::adopt(fd) {
        Ok(owned) => owned,
        Err(e) => {
            error!("{INHERIT_ENV}: {proto} '{name}' descriptor {fd}: {e}; ignored");
            return None;
        }
    };
    let want = match proto {
        Proto::Tcp => SocketKind::Listening,
        Proto::Udp => SocketKind::Datagram,
    };
    match inherit::describe(&owned) {
        Ok((kind, at)) if kind == want && at == addr => Some(owned),
        Ok((kind, at)) => {
            error!(
                "{INHERIT_ENV}: descriptor {fd} is a {kind:?} socket on {at}, not the {proto} listener '{name}' on {addr}; closed"
            );
            None
        }
        Err(e) => {
            error!("{INHERIT_ENV}: descriptor {fd} ({proto} '{name}'): {e}; closed");
            None
        }
    }
}

/// One listener's group: its handed-over sockets (the first `count`; more
/// are bound into the same SO_REUSEPORT group when this process has more
/// shards), or `bind()` when none was handed over.
pub(super) fn take_or_bind(
    inherited: &mut Inherited,
    kind: ListenKind,
    name: &str,
    listen: SocketAddr,
    count: usize,
    stream: Option<StreamListen>,
    bind: impl FnOnce() -> Result<(Vec<OwnedFd>, SocketAddr), HostError>,
) -> Result<(Vec<OwnedFd>, SocketAddr), HostError> {
    let proto = match kind {
        ListenKind::Tcp | ListenKind::Echo => Proto::Tcp,
        ListenKind::Udp | ListenKind::UdpEcho => Proto::Udp,
    };
    let Some(mut handed) = inherited.take(proto, name, listen) else {
        return bind();
    };
    let addr = handed.addr;
    let had = handed.fds.len();
    let mut fds: Vec<OwnedFd> = handed.fds.drain(..had.min(count)).collect();
    let more = count - fds.len();
    if more > 0 {
        let joined = match proto {
            Proto::Tcp => match stream {
                Some(how) => socket::join_stream_listeners(name, addr, more, how)?,
                None => socket::join_listeners(kind, name, addr, more)?,
            },
            Proto::Udp => socket::join_udp_listeners(kind, name, addr, more)?,
        };
        fds.extend(joined);
    }
    info!(
        "{proto} listener '{name}' on {addr}: took {} handed-over socket(s), bound {more} more into its SO_REUSEPORT group",
        had.min(count)
    );
    if !handed.fds.is_empty() {
        inherited.surplus.push((handed, count));
    }
    Ok((fds, addr))
}

/// This binary's path and arguments, read at start: what SIGUSR2 runs. The
/// path is resolved once, so a new file renamed over it is what starts.
#[derive(Debug)]
pub(super) struct Executable {
    path: PathBuf,
    args: Vec<OsString>,
}

impl Executable {
    pub(super) fn current() -> Result<Executable, String> {
        let path = std::fs::read_link("/proc/self/exe")
            .map_err(|e| format!("reading /proc/self/exe: {e}"))?;
        // The file this process runs was replaced already: the path holds the new one.
        let path = match path.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
            Some(p) => PathBuf::from(p),
            None => path,
        };
        Ok(Executable {
            path,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// A new process started by SIGUSR2 that has not reported ready yet.
#[derive(Debug)]
struct Started {
    child: Child,
    ready: OwnedFd,
    deadline: Instant,
}

/// What [`Upgrader::poll`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The new process (this PID) serves: drain.
    Ready(u32),
    /// Failed (logged); this process serves on.
    Failed,
}

/// The SIGUSR2 state of the serve loop: at most one upgrade at a time.
#[derive(Debug)]
pub(super) struct Upgrader {
    exe: Result<Executable, String>,
    running: Option<Started>,
}

impl Upgrader {
    pub(super) fn new() -> Upgrader {
        Upgrader {
            exe: Executable::current(),
            running: None,
        }
    }

    /// SIGUSR2: starts the new binary unless one is starting or this
    /// process drains.
    pub(super) fn on_usr2(&mut self, handover: &Handover, draining: bool) {
        if let Some(s) = &self.running {
            warn!(
                "SIGUSR2 ignored: an upgrade is in progress (new process pid {}, not ready yet)",
                s.child.id()
            );
            return;
        }
        if draining {
            warn!("SIGUSR2 ignored: this process is draining, its listeners are closing");
            return;
        }
        let exe = match &self.exe {
            Ok(exe) => exe,
            Err(e) => {
                error!(
                    "SIGUSR2: cannot upgrade: {e} failed at start, so the binary's path is unknown; restart instead"
                );
                return;
            }
        };
        match start(exe, handover) {
            Ok(started) => {
                info!(
                    "SIGUSR2: upgrading: started {} (pid {}) with {} listening socket(s); this process serves until it is ready",
                    exe.path.display(),
                    started.child.id(),
                    handover.raw_fds().len()
                );
                self.running = Some(started);
            }
            Err(e) => error!(
                "SIGUSR2: cannot start {}: {e}; serving on with this binary",
                exe.path.display()
            ),
        }
    }

    /// Whether the upgrade in progress ended; a failure is logged and the
    /// pid file named this process again.
    pub(super) fn poll(&mut self, pid_file: &PidFile) -> Option<Outcome> {
        let started = self.running.as_mut()?;
        let outcome = match check(started) {
            Ok(None) => return None,
            Ok(Some(pid)) => Outcome::Ready(pid),
            Err(why) => {
                error!("SIGUSR2: upgrade failed: {why}; serving on with this binary");
                pid_file.reclaim();
                Outcome::Failed
            }
        };
        self.running = None;
        Some(outcome)
    }
}

fn start(exe: &Executable, handover: &Handover) -> io::Result<Started> {
    let (ready, ready_tx) = inherit::ready_pipe()?;
    let mut keep = handover.raw_fds();
    keep.push(ready_tx.as_raw_fd());
    let env = [
        (INHERIT_ENV, handover.describe()),
        (READY_ENV, ready_tx.as_raw_fd().to_string()),
    ];
    let child = inherit::spawn_keeping(&exe.path, &exe.args, &env, &keep)?;
    // Our copy of the write end closes here: EOF then means the child's closed.
    drop(ready_tx);
    Ok(Started {
        child,
        ready,
        deadline: Instant::now() + UPGRADE_TIMEOUT,
    })
}

/// `Ok(Some(pid))` once ready, `Ok(None)` while starting, `Err(why)` when
/// it failed (a process that overran the bound is killed first).
fn check(s: &mut Started) -> Result<Option<u32>, String> {
    let pid = s.child.id();
    match inherit::read_ready(&s.ready) {
        Ok(ReadyPipe::Ready) => return Ok(Some(pid)),
        Ok(ReadyPipe::Waiting) if Instant::now() < s.deadline => return Ok(None),
        Ok(ReadyPipe::Waiting) => {
            let _ = s.child.kill();
            let status = reap(&mut s.child, Duration::from_secs(2));
            return Err(format!(
                "the new process (pid {pid}) was not ready within {}s; killed it ({status})",
                UPGRADE_TIMEOUT.as_secs()
            ));
        }
        Ok(ReadyPipe::Closed) => {}
        Err(e) => return Err(format!("reading the ready pipe of pid {pid}: {e}")),
    }
    // Closed without the byte: the process is ending (or ended).
    let status = reap(&mut s.child, Duration::from_secs(5));
    Err(format!(
        "the new process (pid {pid}) ended before it was ready ({status}; its log is above)"
    ))
}

/// Waits (bounded) for `child` and says how it ended.
fn reap(child: &mut Child, bound: Duration) -> String {
    let deadline = Instant::now() + bound;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => return "still running; it closed its ready pipe".to_owned(),
            Err(e) => return format!("status unknown: {e}"),
        }
    }
}

/// `runtime.pid_file`, written once this process serves. On exit it is
/// removed only while it still names this process: after an upgrade it
/// names the new one.
#[derive(Debug)]
pub(super) struct PidFile {
    path: Option<PathBuf>,
}

impl PidFile {
    fn claim(path: Option<&Path>) -> Result<PidFile, String> {
        let file = PidFile {
            path: path.map(Path::to_path_buf),
        };
        if let Some(path) = &file.path {
            write_pid(path).map_err(|e| {
                format!(
                    "runtime.pid_file {}: {e}; make its directory writable, or change runtime.pid_file",
                    path.display()
                )
            })?;
        }
        Ok(file)
    }

    /// After a failed upgrade: the new process may have written its PID.
    fn reclaim(&self) {
        if let Some(path) = &self.path
            && let Err(e) = write_pid(path)
        {
            error!("runtime.pid_file {}: {e}", path.display());
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let Some(path) = &self.path else { return };
        let ours = std::fs::read_to_string(path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes this PID to `path` atomically: a temporary file beside it, renamed over it.
fn write_pid(path: &Path) -> io::Result<()> {
    let pid = std::process::id();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{pid}.tmp"));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inherit_variable_round_trips_any_listener_name() {
        let entries = vec![
            Entry {
                proto: Proto::Tcp,
                name: "web; 100% \"odd\",name".into(),
                addr: "127.0.0.1:8080".parse().unwrap(),
                fds: vec![5, 6],
            },
            Entry {
                proto: Proto::Udp,
                name: "[::]:53".into(),
                addr: "[::]:53".parse().unwrap(),
                fds: vec![7],
            },
        ];
        let text = encode(&entries);
        assert_eq!(text.matches(';').count(), 1, "{text}");
        assert_eq!(decode(&text).unwrap(), entries);
        assert_eq!(decode("").unwrap(), vec![]);
        for bad in [
            "tcp 127.0.0.1:1 a",
            "sctp 127.0.0.1:1 a 5",
            "tcp x a 5",
            "tcp 127.0.0.1:1 a 5,x",
            "tcp 127.0.0.1:1 %4 5",
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_port_zero_listener_takes_its_group_by_name_any_other_by_address() {
        let group = |proto, name: &str, addr: &str| Handed {
            proto,
            name: name.into(),
            addr: addr.parse().unwrap(),
            fds: Vec::new(),
        };
        let mut inherited = Inherited {
            groups: vec![
                group(Proto::Tcp, "a", "127.0.0.1:4000"),
                group(Proto::Tcp, "b", "127.0.0.1:4001"),
                group(Proto::Udp, "c", "127.0.0.1:4000"),
            ],
            ..Inherited::default()
        };
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert!(
            inherited
                .take(Proto::Tcp, "x", at("127.0.0.1:4002"))
                .is_none()
        );
        assert!(inherited.take(Proto::Tcp, "c", at("127.0.0.1:0")).is_none());
        let b = inherited.take(Proto::Tcp, "b", at("127.0.0.1:0")).unwrap();
        assert_eq!(b.addr, at("127.0.0.1:4001"));
        let c = inherited
            .take(Proto::Udp, "renamed", at("127.0.0.1:4000"))
            .unwrap();
        assert_eq!(c.name, "c");
        // Taken once only.
        assert!(
            inherited
                .take(Proto::Udp, "c", at("127.0.0.1:4000"))
                .is_none()
        );
        assert_eq!(inherited.groups.len(), 1);
    }

    #[test]
    fn the_pid_file_is_removed_at_exit_only_while_it_names_this_process() {
        let dir = std::env::temp_dir().join(format!("ringfwd-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.pid");
        let file = PidFile::claim(Some(&path)).unwrap();
        let ours = format!("{}\n", std::process::id());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), ours);
        drop(file);
        assert!(!path.exists());
        let file = PidFile::claim(Some(&path)).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        let missing = dir.join("no/such/dir/r.pid");
        let err = PidFile::claim(Some(&missing)).unwrap_err();
        assert!(
            err.contains("runtime.pid_file") && err.contains("no/such/dir"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
