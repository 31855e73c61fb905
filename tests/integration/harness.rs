//! Helpers that run the real `ringfwd` binary: start it with a config, learn
//! the ports it bound from its `listening ...` lines, read its counters from
//! its `stats ...` log lines, send it signals, and always kill it (by the PID
//! we started) when the test ends.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfwd::verify::{Pattern, Rng};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_ringfwd");

/// Polls `cond` every 10ms until it holds or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh file under the temp dir for this test process.
pub(crate) fn temp_path(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("ringfwd-test-{}-{n}-{name}", std::process::id()))
}

pub(crate) fn write_config(text: &str) -> PathBuf {
    let p = temp_path("config.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

/// A running ringfwd process.
pub(crate) struct Proc {
    child: Child,
    pub listening: Vec<(String, String, SocketAddr)>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Set by the stderr reader at EOF: after an exit, the last lines (the
    /// final stats) are read only once this is set.
    stderr_done: Arc<AtomicBool>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `ringfwd args...` and waits until it printed `listeners` listening lines.
    pub(crate) fn start(args: &[&str], listeners: usize) -> Proc {
        Proc::launch(Command::new(BIN), args, listeners)
    }

    /// As `start`, running the binary at `program` (a copy of ringfwd).
    pub(crate) fn start_program(
        program: &std::path::Path,
        args: &[&str],
        listeners: usize,
    ) -> Proc {
        Proc::launch(Command::new(program), args, listeners)
    }

    /// The exit status if the process has exited (without waiting for its
    /// stderr to close: processes it started may hold it).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// As `start`, in a process group of its own. The kernel discards
    /// SIGTSTP sent to an orphaned process group (no member's parent in
    /// another group of the session), as the test runner's group is when CI
    /// starts it without a terminal; a group of its own, whose parent (this
    /// test) is in another group of the same session, is not orphaned.
    pub(crate) fn start_in_own_group(args: &[&str], listeners: usize) -> Proc {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = Command::new(BIN);
        cmd.process_group(0);
        Proc::launch(cmd, args, listeners)
    }

    /// As `start`, with extra environment variables (e.g. NOTIFY_SOCKET).
    pub(crate) fn start_with_env(
        env: &[(&str, &std::ffi::OsStr)],
        args: &[&str],
        listeners: usize,
    ) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied());
        Proc::launch(cmd, args, listeners)
    }

    /// As `start`, with RLIMIT_NOFILE (soft and hard) set to `nofile` by
    /// `prlimit`, which execs ringfwd (so the pid is ringfwd's).
    pub(crate) fn start_with_nofile(nofile: u64, args: &[&str], listeners: usize) -> Proc {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(BIN);
        Proc::launch(cmd, args, listeners)
    }

    /// As `start`, inside network namespace `netns` (`ip netns exec`, which
    /// execs ringfwd: the pid is ringfwd's).
    pub(crate) fn start_in_netns(netns: &str, args: &[&str], listeners: usize) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, BIN]);
        Proc::launch(cmd, args, listeners)
    }

    fn launch(mut cmd: Command, args: &[&str], listeners: usize) -> Proc {
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringfwd");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err_lines = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        let stderr_done = Arc::new(AtomicBool::new(false));
        let done = stderr_done.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if std::env::var_os("RINGFWD_TEST_ECHO_LOG").is_some() {
                    eprintln!("[ringfwd] {line}");
                }
                err_lines.lock().expect("lock").push(line);
            }
            done.store(true, Ordering::Release);
        });
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut listening = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while listening.len() < listeners {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.first() == Some(&"listening") && f.len() >= 4 {
                        let addr = f[3].parse().expect("listening address");
                        listening.push((f[1].to_string(), f[2].to_string(), addr));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = stderr.lock().expect("lock").join("\n");
                    panic!("ringfwd {args:?} did not start listening:\n{log}");
                }
            }
        }
        Proc {
            child,
            listening,
            stderr,
            stderr_done,
            status: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The bound address of the listener called `name`.
    pub(crate) fn addr(&self, name: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|(_, n, _)| n == name)
            .map(|(_, _, a)| *a)
            .unwrap_or_else(|| panic!("no listener {name} in {:?}", self.listening))
    }

    pub(crate) fn first_addr(&self) -> SocketAddr {
        self.listening.first().expect("a listener").2
    }

    pub(crate) fn log(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// Counters from the latest `stats` (or `final stats`) log line.
    pub(crate) fn stats(&self) -> HashMap<String, u64> {
        let lines = self.stderr.lock().expect("lock");
        lines
            .iter()
            .rev()
            .find(|l| l.contains(" stats accepted="))
            .map(|l| parse_kv(l))
            .unwrap_or_default()
    }

    /// Counters from the latest per-listener (or per-upstream) stats line
    /// whose labels start with `labels`, e.g. `listener=a` or
    /// `listener=a upstream=127.0.0.1:9`; counters at zero are not printed.
    pub(crate) fn detail_stats(&self, labels: &str) -> HashMap<String, u64> {
        let needle = format!(" stats {labels} ");
        let lines = self.stderr.lock().expect("lock");
        lines
            .iter()
            .rev()
            .find(|l| {
                // The listener's own line, not one of its upstreams' lines.
                l.split_once(&needle)
                    .is_some_and(|(_, rest)| !rest.starts_with("upstream="))
            })
            .map(|l| parse_kv(l))
            .unwrap_or_default()
    }

    /// Waits until a log line contains `needle`; fails the test with the log
    /// when none does within `timeout`. Returns the line.
    pub(crate) fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let mut found = None;
        wait_until(timeout, || {
            let lines = self.stderr.lock().expect("lock");
            found = lines.iter().find(|l| l.contains(needle)).cloned();
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no log line with {needle:?}; log:\n{}", self.log()))
    }

    pub(crate) fn stat(&self, key: &str) -> u64 {
        self.stats().get(key).copied().unwrap_or(0)
    }

    /// Waits until counter `key` satisfies `pred` (needs a short stats_interval).
    pub(crate) fn wait_stat(
        &self,
        key: &str,
        timeout: Duration,
        pred: impl Fn(u64) -> bool,
    ) -> u64 {
        let ok = wait_until(timeout, || self.stats().get(key).is_some_and(|v| pred(*v)));
        let v = self.stat(key);
        assert!(
            ok,
            "counter {key} = {v} did not reach the expected value; log:\n{}",
            self.log()
        );
        v
    }

    pub(crate) fn signal(&self, sig: i32) {
        // The test owns this child; signal it by the PID it started.
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `timeout`.
    /// Waits until every thread of the process is stopped (after SIGSTOP or
    /// SIGTSTP: delivery is asynchronous, so a test that acts on a stopped
    /// process must wait for it). io_uring's kernel workers (`iou-*`) are not
    /// user threads and are left out.
    pub(crate) fn wait_stopped(&self, timeout: Duration) -> bool {
        let pid = self.pid();
        wait_until(timeout, || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.flatten().all(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the parenthesised name.
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next());
                comm.starts_with("iou-") || matches!(state, Some("T") | Some("t"))
            })
        })
    }

    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let child = &mut self.child;
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            // The process is gone, but its last lines may still be in the pipe:
            // callers read the final stats right after this returns.
            let done = &self.stderr_done;
            wait_until(Duration::from_secs(5), || done.load(Ordering::Acquire));
        }
        self.status = status;
        status
    }

    /// Resident memory of the process, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn parse_kv(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|t| {
            let (k, v) = t.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Runs ringfwd to completion (for `check` and failing starts).
pub(crate) fn run_to_end(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = String::new();
    let mut err = String::new();
    let mut o = child.stdout.take().expect("stdout");
    let mut e = child.stderr.take().expect("stderr");
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = e.read_to_string(&mut s);
        s
    });
    let _ = o.read_to_string(&mut out);
    err.push_str(&t.join().unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return (status.code(), out, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ringfwd {args:?} did not exit; stderr: {err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An echo upstream on the shard runtime (`ringfwd echo`), on a kernel-chosen port.
pub(crate) fn echo_upstream(shards: usize) -> Proc {
    let shards = shards.to_string();
    Proc::start(&["echo", "--tcp", "127.0.0.1:0", "--shards", &shards], 1)
}

/// How a verified stream splits its writes: one write in `large_one_in` is up
/// to the whole write buffer, the others up to `small_max` bytes.
#[derive(Clone, Copy)]
pub(crate) struct Splits {
    pub large_one_in: u64,
    pub small_max: u64,
    pub write_buf: usize,
    pub read_buf: usize,
}

impl Splits {
    /// Mostly packet-sized writes, now and then a large one.
    pub(crate) const MIXED: Splits = Splits {
        large_one_in: 4,
        small_max: 1500,
        write_buf: 96 << 10,
        read_buf: 64 << 10,
    };
    /// Half of the writes large: bulk that fills buffers (and pipes).
    pub(crate) const BULK: Splits = Splits {
        large_one_in: 2,
        small_max: 3000,
        write_buf: 256 << 10,
        read_buf: 128 << 10,
    };
}

/// Writes `size` pattern bytes of stream `seed` to `addr` in random splits,
/// half-closes, and checks the echo byte for byte up to EOF; an error names
/// the seed.
pub(crate) fn verified_stream(
    addr: SocketAddr,
    seed: u64,
    size: u64,
    splits: Splits,
) -> Result<(), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("seed {seed}: connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || -> Result<(), String> {
            let mut rng = Rng::new(seed ^ 0xabcdef);
            let mut pattern = Pattern::new(seed);
            let mut buf = vec![0u8; splits.write_buf];
            let mut left = size;
            while left > 0 {
                let max = if rng.chance(1, splits.large_one_in) {
                    buf.len() as u64
                } else {
                    splits.small_max
                };
                let n = (1 + rng.below(max)).min(left) as usize;
                pattern.fill(&mut buf[..n]);
                writer
                    .write_all(&buf[..n])
                    .map_err(|e| format!("seed {seed}: write: {e}"))?;
                left -= n as u64;
            }
            writer
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("seed {seed}: shutdown: {e}"))
        })
        .map_err(|e| e.to_string())?;
    let mut reader = stream;
    let mut expect = Pattern::new(seed);
    let mut buf = vec![0u8; splits.read_buf];
    let mut got = 0u64;
    let result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(at) = expect.check(&buf[..n]) {
                    break Err(format!("seed {seed}: byte {at} of {size} differs"));
                }
                got += n as u64;
            }
            Err(e) => break Err(format!("seed {seed}: read after {got}/{size}: {e}")),
        }
    };
    let sent = sender
        .join()
        .map_err(|_| format!("seed {seed}: sender panicked"))?;
    result?;
    sent?;
    if got != size {
        return Err(format!(
            "seed {seed}: echo ended after {got} of {size} bytes"
        ));
    }
    Ok(())
}

/// Runs the (seed, size) streams `jobs` concurrently through `fwd`'s first
/// listener and fails the test, with the forwarder's log, if any differs.
pub(crate) fn verified_streams(fwd: &Proc, jobs: Vec<(u64, u64)>, splits: Splits, what: &str) {
    let addr = fwd.first_addr();
    let n = jobs.len();
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|(seed, size)| {
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || verified_stream(addr, seed, size, splits))
                .expect("spawn")
        })
        .collect();
    let failures: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap_or(Err("thread panicked".into())).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {n} streams failed ({what}), first: {:?}\nforwarder log:\n{}",
        failures.len(),
        failures.first(),
        fwd.log()
    );
}

/// Closes `s` with a reset (SO_LINGER 0) instead of a FIN.
pub(crate) fn reset(s: TcpStream) {
    let sock = socket2::Socket::from(s);
    sock.set_linger(Some(Duration::ZERO)).expect("linger");
    drop(sock);
}

/// The open descriptors of process `pid`.
pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sends `payload`, half-closes, and returns everything read until EOF.
pub(crate) fn round_trip(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(payload)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    Ok(back)
}

/// An address on 127.0.0.1 where nothing listens, so connects are refused.
/// The socket stays bound (not listening) while the guard lives, so no one
/// else can take the port.
pub(crate) fn dead_port() -> (socket2::Socket, SocketAddr) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    s.bind(&any.into()).expect("bind");
    let a = s.local_addr().expect("addr").as_socket().expect("inet");
    (s, a)
}

/// An address whose SYNs are never answered, so connects time out: a listener
/// with backlog 0 whose one queue slot is taken and which never accepts.
/// Linux drops SYNs to a listener whose accept queue is full (no RST), which is
/// exactly what a black-holed host looks like to the connecting side.
pub(crate) fn blackhole() -> (socket2::Socket, TcpStream, SocketAddr) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    s.bind(&any.into()).expect("bind");
    s.listen(0).expect("listen");
    let a = s.local_addr().expect("addr").as_socket().expect("inet");
    let filler = TcpStream::connect(a).expect("fill the accept queue");
    // The filler is established; a second connect must now hang.
    (s, filler, a)
}

/// A forwarder with one listener "t" on a kernel-chosen port to `upstreams`;
/// `listener` adds keys to [[tcp]], `runtime` to [runtime] (stats every 100ms).
pub(crate) fn forwarder(upstreams: &[SocketAddr], listener: &str, runtime: &str) -> Proc {
    let ups: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    let cfg = write_config(&format!(
        "[runtime]\nstats_interval = \"100ms\"\n{runtime}\n[[tcp]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nupstreams = [{}]\n{listener}\n",
        ups.join(", ")
    ));
    Proc::start(&["run", "--config", cfg.to_str().expect("path")], 1)
}

/// The write end of a pipe whose reader has already exited: a stdout or
/// stderr whose every write fails with EPIPE.
pub(crate) fn closed_pipe() -> Stdio {
    let mut reader = Command::new("true")
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn true");
    let write_end = reader.stdin.take().expect("pipe");
    reader.wait().expect("true exits");
    Stdio::from(write_end)
}

/// A peer program (nginx, HAProxy...) killed by its PID when the test ends.
pub(crate) struct Peer(pub(crate) std::process::Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx in the foreground with the configuration file `conf`, its prefix
/// `dir`; stopped when dropped.
pub(crate) fn nginx(dir: &Path, conf: &Path) -> Peer {
    Peer(
        Command::new("nginx")
            .args([
                "-c",
                conf.to_str().expect("path"),
                "-p",
                dir.to_str().expect("path"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    )
}

/// The inodes of `pid`'s own sockets in `/proc/PID/net/{table}` ("tcp",
/// "udp") bound to `port` in kernel state `state` ("0A": a TCP listener,
/// "07": an unconnected UDP socket).
pub(crate) fn socket_inodes(pid: u32, table: &str, state: &str, port: u16) -> HashSet<String> {
    let rows = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
    let own: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .filter_map(|l| {
                    l.strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let local = format!(":{port:04X}");
    rows.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let in_state = f.get(3) == Some(&state);
            let on_port = f.get(1).is_some_and(|a| a.ends_with(&local));
            (in_state && on_port).then(|| f.get(9).map(|s| s.to_string()))?
        })
        .filter(|inode| own.contains(inode))
        .collect()
}
