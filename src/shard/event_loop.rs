//! The shard thread: pin to its CPU, create its ring and buffer ring on this
//! thread, then loop — put the engine's operations on the ring, submit and
//! wait (bounded by the next timer), hand every completion back to the engine.
//! Commands from the control thread arrive through an eventfd read in the ring.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::engine::{
    Engine, EngineConfig, Fd, FdBudget, ListenerSpec, Mode, Op, PipeFds, RecvTemplate, RouteSpec,
    ShardReload,
};
use super::token::{OpKind, SlotId, Token};
use super::udp::{DatagramMeta, UdpListenerSpec, UdpReloadListener, UdpRouteSpec};
use crate::accesslog::AccessLogShard;
use crate::ring::TemplateId;
use crate::ring::datagram::Layout;
use crate::ring::{Cqe, RegionId, Ring, SendKind, SockType};
use crate::stats::ShardStats;
use crate::sys::eventfd::EventFd;
use crate::sys::{pipe, socket, transparent};
use crate::tcp::Side;
use crate::tcp::relay::Ends;
use crate::tcp::splice::{SpliceConfig, SpliceMode};
use crate::time::Millis;
use crate::upstream::UpstreamId;

/// The longest the loop sleeps without a timer due: commands wake it anyway,
/// this only bounds how stale the clock can get.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How long a stopping shard waits for the kernel to return its last operations.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Everything one shard is started with.
#[derive(Debug)]
pub(crate) struct ShardSetup {
    pub index: usize,
    pub cpu: usize,
    pub ring_entries: u32,
    pub buffer_size: u32,
    pub buffers: u32,
    pub cap: u32,
    pub listeners: Vec<(ListenerSpec, OwnedFd)>,
    pub routes: Vec<RouteSpec>,
    /// Datagram buffers (0 = no UDP listener, no datagram ring).
    pub datagram_buffers: u32,
    pub max_datagram: u32,
    /// Spin on the completion queue this long before sleeping.
    pub busy_poll: Option<Duration>,
    /// Which relay directions splice, through how many pipes of what size.
    pub splice: SpliceSetup,
    /// UDP listeners, and whether each is bound to a wildcard address (then
    /// replies need the destination address the client used: IP_PKTINFO).
    pub udp_listeners: Vec<(UdpListenerSpec, OwnedFd, bool)>,
    pub udp_routes: Vec<UdpRouteSpec>,
    /// Descriptors this shard's connections and sessions may hold (its
    /// share of RLIMIT_NOFILE); past it, accepting pauses.
    pub fd_budget: FdBudget,
    /// This shard's handle on the access log, if there is one.
    pub access_log: Option<AccessLogShard>,
    /// How destination names are resolved (the runtime read the files).
    pub resolver: crate::dns::ResolverConfig,
}

/// The splice relay of a shard: `max_pipes` pipes of `pipe_size` bytes,
/// made at start (none when `mode` is off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpliceSetup {
    pub mode: SpliceMode,
    pub max_pipes: u32,
    pub pipe_size: u32,
}

impl SpliceSetup {
    pub(crate) const OFF: SpliceSetup = SpliceSetup {
        mode: SpliceMode::Off,
        max_pipes: 0,
        pipe_size: 0,
    };
}

/// The ends of every pipe made, and the smallest size the kernel granted.
fn pipe_ends(pipes: &[Option<pipe::Pipe>]) -> (Vec<PipeFds>, u32) {
    let size = pipes
        .iter()
        .flatten()
        .map(pipe::Pipe::size)
        .min()
        .unwrap_or(0);
    let ends = pipes
        .iter()
        .flatten()
        .map(|p| PipeFds {
            read: p.read_fd(),
            write: p.write_fd(),
        })
        .collect();
    (ends, size)
}

/// Makes the shard's pipes; says in the log what the kernel would not give.
fn make_pipes(shard: usize, s: SpliceSetup) -> Vec<Option<pipe::Pipe>> {
    if s.mode == SpliceMode::Off {
        return Vec::new();
    }
    let mut pipes = Vec::with_capacity(s.max_pipes as usize);
    for _ in 0..s.max_pipes {
        match pipe::Pipe::new(s.pipe_size) {
            Ok(p) => pipes.push(Some(p)),
            Err(e) => {
                warn!(
                    shard,
                    made = pipes.len(),
                    max_pipes = s.max_pipes,
                    error = %e,
                    "creating the splice pipes failed part-way; the rest of the budget is not available (EMFILE: raise `ulimit -n`)"
                );
                break;
            }
        }
    }
    let got = pipes
        .iter()
        .flatten()
        .map(pipe::Pipe::size)
        .min()
        .unwrap_or(0);
    let want = pipe::rounded(s.pipe_size);
    if !pipes.is_empty() && got < want {
        let limit = pipe::max_size().unwrap_or(0);
        let (sysctl, value) = if want > limit {
            (pipe::MAX_SIZE_SYSCTL, want.to_string())
        } else {
            // Within the size limit, but this user's pipes are over their page budget.
            (pipe::USER_PAGES_SYSCTL, "<pages>".to_owned())
        };
        warn!(
            shard,
            "runtime.pipe_size = {want} bytes asked, the kernel granted {got} (capped by {sysctl}); raise it with `sysctl -w {sysctl}={value}`"
        );
    }
    pipes
}

/// Control thread → shard.
#[derive(Clone, Debug)]
pub(crate) enum Command {
    /// Stop accepting; let connections finish.
    Drain,
    /// Close every connection now and exit.
    Stop,
    /// Send a `Report::Snapshot` tagged with this sequence number.
    Snapshot(u64),
    /// The health checker's verdict on an upstream: a down one gets no new
    /// connection while another of its route is up.
    UpstreamHealth { upstream: UpstreamId, up: bool },
    /// A reloaded configuration, this shard's part, swapped in between two
    /// turns of the loop. Upstream ids of later commands are the new ones.
    Reload(Arc<ShardReload>),
    /// A reload's resolver settings, with /etc/hosts (and /etc/resolv.conf
    /// unless `[runtime] resolver` names the nameservers) read again.
    Resolver(Arc<crate::dns::ResolverConfig>),
}

/// Shard → control thread.
#[derive(Debug)]
pub(crate) enum Report {
    Ready {
        shard: usize,
        setup: String,
    },
    Failed {
        shard: usize,
        error: String,
    },
    Snapshot {
        shard: usize,
        seq: u64,
        stats: ShardStats,
    },
    Exited {
        shard: usize,
        stats: ShardStats,
        clean: bool,
    },
}

pub(crate) struct Control {
    pub commands: Receiver<Command>,
    pub doorbell: Arc<EventFd>,
    pub reports: Sender<Report>,
}

fn control_token() -> u64 {
    Token::new(
        OpKind::Control,
        Side::Client,
        SlotId {
            index: 0,
            generation: 0,
        },
    )
    .encode()
}

/// How long ring creation retries ENOMEM: the kernel releases the locked
/// memory of a torn-down ring asynchronously, so a restart right after a stop
/// (same user) can briefly find the limit still taken.
const ENOMEM_RETRY: Duration = Duration::from_secs(1);

fn new_ring(setup: &ShardSetup) -> std::io::Result<Ring> {
    let deadline = Instant::now() + ENOMEM_RETRY;
    loop {
        match Ring::new(setup.ring_entries, setup.buffers, setup.buffer_size) {
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// A UDP listener's receive layout: room for PKTINFO on a wildcard
/// address, and for the original destination on a transparent listener.
fn listener_layout(wildcard: bool, transparent: bool) -> Layout {
    match transparent {
        true => Layout::tproxy_listener(wildcard),
        false => Layout::listener(wildcard),
    }
}

/// What a shard registers for UDP: the upstream recvmsg layout, one
/// layout per listener, and the listeners with their descriptors.
type UdpRegistered = (TemplateId, Vec<TemplateId>, Vec<UdpListenerSpec>);

/// Registers the datagram buffer ring (`pool`: buffers, max datagram) and
/// the recvmsg layouts, and takes over the UDP listeners' sockets.
fn register_udp(
    ring: &mut Ring,
    shard: usize,
    pool: (u32, u32),
    routes: &[UdpRouteSpec],
    listeners: Vec<(UdpListenerSpec, OwnedFd, bool)>,
) -> Result<UdpRegistered, String> {
    let (buffers, max_datagram) = pool;
    if buffers > 0
        && let Err(e) = ring.add_datagram_pool(buffers, max_datagram)
    {
        return Err(format!(
            "registering its datagram buffer ring ({buffers} buffers for datagrams up to {max_datagram} bytes) failed: {e}"
        ));
    }
    for r in routes {
        for a in &r.upstreams {
            ring.add_target(*a);
        }
    }
    let upstream_template = ring.add_recvmsg_template(Layout::UPSTREAM);
    let mut listen_templates = Vec::new();
    let mut specs = Vec::new();
    for (mut spec, fd, wildcard) in listeners {
        let transparent = match spec.kind {
            super::udp::UdpKind::Forward { route } => routes
                .get(usize::from(route))
                .is_some_and(|r| r.transparent.is_some()),
            super::udp::UdpKind::Echo => false,
        };
        listen_templates.push(ring.add_recvmsg_template(listener_layout(wildcard, transparent)));
        spec.fd = fd.into_raw_fd();
        if let Err(e) = socket::set_rxq_ovfl(spec.fd) {
            warn!(shard, listener = %spec.name, error = %e, "SO_RXQ_OVFL failed: datagrams the kernel drops on this listener are counted only at stats snapshots");
        }
        specs.push(spec);
    }
    Ok((upstream_template, listen_templates, specs))
}

/// Whether `user_data` is a receive on a SOCKS5 UDP association's socket.
fn is_assoc_recv(user_data: u64) -> bool {
    Token::decode(user_data).is_some_and(|t| t.kind == OpKind::AssocRecv)
}

/// Pins the calling thread to the shard's CPU and creates its ring there
/// (SINGLE_ISSUER binds the ring to this thread); `Err` says what failed
/// and what to do.
fn pinned_ring(setup: &ShardSetup) -> Result<Ring, String> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: setup.cpu }) {
        return Err(format!(
            "cannot pin to CPU {} (sched_setaffinity refused); check the CPU set with `taskset -p $$`",
            setup.cpu
        ));
    }
    new_ring(setup).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::ENOMEM) => {
                " (out of locked memory: RLIMIT_MEMLOCK is charged per user, so other io_uring programs of this user count too; raise it or lower ring_entries/buffers_per_shard, see tuning.md)"
            }
            _ => "",
        };
        format!(
            "creating its io_uring ({} entries) and buffer ring ({} x {} bytes) failed: {e}{hint}",
            setup.ring_entries, setup.buffers, setup.buffer_size
        )
    })
}

/// What the start-up line says about a shard's setup.
#[derive(Clone, Copy)]
struct Shape {
    cpu: usize,
    buffers: u32,
    buffer_size: u32,
    datagram_buffers: u32,
    max_datagram: u32,
    busy_poll: Option<Duration>,
    splice: SpliceMode,
}

/// The shard's start-up line: its CPU, ring, buffers and options.
fn describe(
    setup: Shape,
    ring: &Ring,
    region: Option<RegionId>,
    pipes: usize,
    pipe_size: u32,
) -> String {
    let mut describe = format!(
        "cpu {} ring {} (sq {}, cq {}) buffers {} x {}",
        setup.cpu,
        ring.mode().describe(),
        ring.sq_entries(),
        ring.cq_entries(),
        setup.buffers,
        setup.buffer_size
    );
    if setup.datagram_buffers > 0 {
        describe.push_str(&format!(
            ", datagram buffers {} x {}",
            setup.datagram_buffers,
            crate::ring::datagram::buffer_size(setup.max_datagram)
        ));
    }
    if let Some(bytes) = region.and_then(|r| ring.region(r)).map(<[u8]>::len) {
        describe.push_str(&format!(", periodic send region {bytes} bytes"));
    }
    if let Some(spin) = setup.busy_poll {
        describe.push_str(&format!(
            ", busy-poll {}",
            crate::config::units::format_duration(spin)
        ));
    }
    if setup.splice != SpliceMode::Off {
        let mode = match setup.splice {
            SpliceMode::Always => "always",
            SpliceMode::Auto | SpliceMode::Off => "auto",
        };
        describe.push_str(&format!(
            ", splice {mode}: {} pipes x {} bytes",
            pipes, pipe_size
        ));
    }
    describe
}

/// Unpredictable query ids: std's per-process random hash keys (read from
/// the OS once), mixed with the shard index.
fn resolver_seed(shard: usize) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(shard);
    h.finish()
}

/// The provided buffer a completion carries, if any.
fn buffer_of(flags: u32) -> Option<u16> {
    (flags & super::engine::CQE_F_BUFFER != 0).then_some((flags >> 16) as u16)
}

/// Runs a shard to completion on the calling thread.
pub(crate) fn run(setup: ShardSetup, control: Control) {
    let shard = setup.index;
    let mut ring = match pinned_ring(&setup) {
        Ok(r) => r,
        Err(error) => {
            let _ = control.reports.send(Report::Failed { shard, error });
            return;
        }
    };
    // Upstream addresses and connect timeouts are interned by the ring as
    // connects name them; registering them now only saves the first lookup.
    for r in &setup.routes {
        r.upstreams.iter().for_each(|a| {
            ring.add_target(*a);
        });
        ring.add_timeout(Duration::from_millis(r.connect_timeout_ms));
    }
    let routes = setup.routes;
    let udp = match register_udp(
        &mut ring,
        shard,
        (setup.datagram_buffers, setup.max_datagram),
        &setup.udp_routes,
        setup.udp_listeners,
    ) {
        Ok(u) => u,
        Err(error) => {
            let _ = control.reports.send(Report::Failed { shard, error });
            return;
        }
    };
    let (upstream_template, listen_templates, udp_listeners) = udp;
    let udp_routes = setup.udp_routes;
    // Sources and request/response servers send straight from the periodic
    // pattern: one copy per shard, registered only where a listener needs it.
    let region = setup
        .listeners
        .iter()
        .any(|(spec, _)| spec.kind.sends_region())
        .then(|| {
            ring.add_region(crate::verify::periodic_region_for(
                crate::tcp::serve::MAX_SEND as usize,
            ))
        });
    let listeners = setup
        .listeners
        .into_iter()
        .map(|(mut spec, fd)| {
            spec.fd = fd.into_raw_fd();
            spec
        })
        .collect();
    let pipes = make_pipes(shard, setup.splice);
    let (pipe_fds, pipe_size) = pipe_ends(&pipes);
    let started = Instant::now();
    let mut engine = Engine::new(
        EngineConfig {
            shard,
            buffers: setup.buffers,
            cap: setup.cap,
            listeners,
            routes,
            datagram_buffers: setup.datagram_buffers,
            udp_listeners,
            udp_routes,
            splice: SpliceConfig {
                mode: setup.splice.mode,
                pipe_size,
                buffer_size: setup.buffer_size,
            },
            pipes: pipe_fds,
            fd_budget: setup.fd_budget,
            resolver: setup.resolver,
            resolver_seed: resolver_seed(shard),
        },
        0,
    );
    engine.set_access_log(setup.access_log);
    let shape = Shape {
        cpu: setup.cpu,
        buffers: setup.buffers,
        buffer_size: setup.buffer_size,
        datagram_buffers: setup.datagram_buffers,
        max_datagram: setup.max_datagram,
        busy_poll: setup.busy_poll,
        splice: setup.splice.mode,
    };
    let describe = describe(shape, &ring, region, pipes.len(), pipe_size);
    let mut lp = Loop {
        shard,
        ring,
        region,
        upstream_template,
        listen_templates,
        wildcard_templates: [None; 4],
        control,
        control_armed: false,
        ops: Vec::with_capacity(1024),
        cqes: Vec::with_capacity(1024),
        synthetic: Vec::new(),
        started,
        busy_poll: setup.busy_poll,
        pipes,
        pipe_size: setup.splice.pipe_size,
    };
    lp.arm_control();
    engine.start();
    let _ = lp.control.reports.send(Report::Ready {
        shard,
        setup: describe,
    });
    let clean = lp.run(&mut engine);
    let _ = lp.control.reports.send(Report::Exited {
        shard,
        stats: engine.stats(),
        clean,
    });
}

struct Loop {
    shard: usize,
    ring: Ring,
    /// The periodic pattern (only on shards with a source or request/response listener).
    region: Option<RegionId>,
    upstream_template: TemplateId,
    listen_templates: Vec<TemplateId>,
    /// The receive templates a reload gave listeners: a non-wildcard's, a
    /// wildcard's, then the same two of a transparent listener.
    wildcard_templates: [Option<TemplateId>; 4],
    control: Control,
    control_armed: bool,
    ops: Vec<Op>,
    cqes: Vec<Cqe>,
    /// Completions made up for operations that could not be issued, fed to the
    /// engine like real ones so its accounting stays exact.
    synthetic: Vec<Cqe>,
    started: Instant,
    busy_poll: Option<Duration>,
    /// The pipes the engine lends to spliced directions, by pipe id (closed
    /// when the loop is dropped, after every operation came back).
    pipes: Vec<Option<pipe::Pipe>>,
    pipe_size: u32,
}

impl Loop {
    fn now(&self) -> Millis {
        crate::time::millis(self.started.elapsed())
    }

    fn arm_control(&mut self) {
        self.ring
            .read_eventfd(self.control.doorbell.raw(), control_token());
        self.control_armed = true;
    }

    /// Returns true on a clean exit (every operation came back).
    fn run(&mut self, engine: &mut Engine) -> bool {
        let mut overflow_logged = 0;
        loop {
            self.execute(engine);
            if engine.is_done() {
                return self.quiesce();
            }
            let now = self.now();
            let timeout = engine
                .next_deadline()
                .map(|d| Duration::from_millis(d.saturating_sub(now)))
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT);
            let ready = !self.synthetic.is_empty()
                || match self.busy_poll {
                    Some(spin) if !timeout.is_zero() => self.spin(spin.min(timeout)),
                    _ => Ok(false),
                }
                .unwrap_or(false);
            if let Err(e) = self.ring.submit_and_wait(Some(timeout), ready) {
                warn!(shard = self.shard, error = %e, "io_uring_enter failed; stopping the shard");
                engine.stop(self.now());
                self.ring.leak_buffers();
                return false;
            }
            self.ring.reap(&mut self.cqes);
            self.cqes.append(&mut self.synthetic);
            let now = self.now();
            if !self.cqes.is_empty() {
                engine.count_turn(self.cqes.len());
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            for c in cqes.drain(..) {
                if c.user_data == control_token() {
                    self.control_armed = false;
                    self.handle_commands(engine, now);
                    continue;
                }
                let meta = self.datagram_meta(&c);
                self.lend(&c, meta.is_some());
                match meta {
                    Some(meta) if is_assoc_recv(c.user_data) => {
                        let bytes = meta
                            .zip(buffer_of(c.flags))
                            .filter(|_| c.res > 0)
                            .and_then(|(m, bid)| self.ring.datagram_bytes(bid, m.offset, m.len));
                        engine.handle_assoc_cqe(c.user_data, c.res, c.flags, meta, bytes, now)
                    }
                    Some(meta) => {
                        engine.handle_datagram_cqe(c.user_data, c.res, c.flags, meta, now)
                    }
                    None => self.route_stream(engine, &c, now),
                }
            }
            self.cqes = cqes;
            engine.advance(now);
            engine.wake_starved(now);
            engine.flush_access_log();
            let overflow = self.ring.cq_overflow();
            if overflow > overflow_logged {
                overflow_logged = overflow;
                warn!(
                    shard = self.shard,
                    overflow,
                    "completion queue overflowed (nothing lost; consider a larger runtime.ring_entries)"
                );
            }
        }
    }

    /// Busy-poll: spins up to `limit` for a completion before the loop
    /// sleeps, so a request arriving within it is seen without a wakeup
    /// (which costs ~150 µs across vCPUs on this kind of VM). True when
    /// completions are waiting.
    fn spin(&mut self, limit: Duration) -> std::io::Result<bool> {
        let until = Instant::now() + limit;
        loop {
            if self.ring.poll_step()? {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }

    fn handle_commands(&mut self, engine: &mut Engine, now: Millis) {
        while let Ok(cmd) = self.control.commands.try_recv() {
            match cmd {
                Command::Drain => {
                    debug!(shard = self.shard, "draining");
                    engine.drain();
                    engine.drain_udp_sessions(now);
                }
                Command::Stop => {
                    debug!(
                        shard = self.shard,
                        connections = engine.connections(),
                        "stopping"
                    );
                    engine.stop(now);
                }
                Command::Snapshot(seq) => {
                    engine.tidy();
                    Self::read_listener_drops(engine);
                    let _ = self.control.reports.send(Report::Snapshot {
                        shard: self.shard,
                        seq,
                        stats: engine.stats(),
                    });
                }
                Command::UpstreamHealth { upstream, up } => engine.set_checked(upstream, up),
                Command::Reload(new) => {
                    debug!(shard = self.shard, "reloading");
                    engine.reload(&new, now);
                    self.reloaded_udp(engine, &new);
                }
                Command::Resolver(cfg) => engine.reload_resolver(&cfg, now),
            }
        }
        if engine.mode() == Mode::Running || !engine.is_done() {
            self.arm_control();
        }
    }

    /// Puts the engine's operations on the ring.
    fn execute(&mut self, engine: &mut Engine) {
        engine.take_ops(&mut self.ops);
        let mut ops = std::mem::take(&mut self.ops);
        for op in ops.drain(..) {
            self.execute_one(op, engine);
        }
        self.ops = ops;
        self.ring.publish_buffers();
    }

    fn fail(&mut self, user_data: u64, errno: i32) {
        self.synthetic.push(Cqe {
            user_data,
            res: -errno,
            flags: 0,
        });
    }

    fn execute_one(&mut self, op: Op, engine: &mut Engine) {
        match op {
            Op::Splice {
                token,
                fd_in,
                fd_out,
                len,
            } => self.ring.splice(fd_in.raw(), fd_out.raw(), len, token),
            Op::ReplacePipe { pipe, fds } => self.replace_pipe(pipe, fds, engine),
            Op::AcceptMulti { token, fd } => self.ring.accept_multi(fd.raw(), token),
            Op::Accept { token, fd } => self.ring.accept_one(fd.raw(), token),
            Op::CancelAccept { token, target } | Op::CancelOne { token, target } => {
                self.ring.cancel(target, token)
            }
            Op::CloseListener { token, fd } | Op::Reject { token, fd } => {
                self.ring.close(fd.raw(), token)
            }
            Op::Fail { token, errno } => self.fail(token, errno),
            Op::Socket {
                token,
                family,
                proto,
            } => self
                .ring
                .socket(family.raw(), SockType::Stream, proto.raw(), token),
            Op::Connect {
                token,
                timeout_token,
                fd,
                addr,
                timeout_ms,
            } => {
                if let Err(e) = socket::set_nodelay(fd.raw()) {
                    debug!(shard = self.shard, error = %e, "TCP_NODELAY on upstream socket failed");
                }
                let timeout = Duration::from_millis(timeout_ms);
                if self
                    .ring
                    .connect_to(fd.raw(), addr, timeout, token, timeout_token)
                    .is_err()
                {
                    self.fail(token, libc::EINVAL);
                    self.fail(timeout_token, libc::ECANCELED);
                }
            }
            Op::RecvMulti { token, fd } => self.ring.recv_multi(fd.raw(), token),
            Op::RecvOnce { token, fd } => self.ring.recv_once(fd.raw(), token),
            Op::RecvUpTo { token, fd, len } => self.ring.recv_up_to(fd.raw(), len, token),
            Op::SendOwned { token, fd, bytes } => {
                if let Err(e) = self.ring.send_owned(fd.raw(), bytes, token) {
                    warn!(shard = self.shard, error = %e, "owned send refused");
                    self.fail(token, libc::EINVAL);
                }
            }
            Op::Send { .. } | Op::SendRegion { .. } => self.execute_send(op),
            Op::RecvOwned { token, fd, len } => {
                if self.ring.recv_owned(fd.raw(), len, token).is_err() {
                    self.fail(token, libc::EINVAL);
                }
            }
            Op::CancelFd { token, fd } => self.ring.cancel_fd(fd.raw(), token),
            Op::Shutdown { .. }
            | Op::ListenQueue { .. }
            | Op::UdpBind { .. }
            | Op::UdpTransparentSocket { .. } => self.execute_inline(op),
            Op::Close { token, fd, linger0 } => self.close(token, fd, linger0, engine),
            Op::Release { bid } => {
                if !self.ring.release(bid) {
                    warn!(
                        shard = self.shard,
                        bid,
                        "release of a buffer not out of the ring refused (counted in buffer_double_release)"
                    );
                    engine.count_double_release();
                    debug_assert!(false, "buffer {bid} released twice");
                }
            }
            Op::ReleaseDatagram { bid } => {
                if !self.ring.release_datagram(bid) {
                    warn!(
                        shard = self.shard,
                        bid,
                        "release of a datagram buffer not out of the ring refused (counted in buffer_double_release)"
                    );
                    engine.count_double_release();
                    debug_assert!(false, "datagram buffer {bid} released twice");
                }
            }
            Op::UdpRecvMulti { .. }
            | Op::UdpSocket { .. }
            | Op::UdpConnect { .. }
            | Op::SendDatagram { .. }
            | Op::SendDatagramProxied { .. }
            | Op::SendDatagramTo { .. }
            | Op::SendDatagramToWithHeader { .. } => self.execute_datagram_op(op),
        }
    }

    /// The operations run with a plain syscall instead of on the ring; each
    /// completes with a synthetic completion, like any other.
    /// - shutdown: see `socket::shutdown_write` (IORING_OP_SHUTDOWN always
    ///   goes to an io-wq worker);
    /// - the accept watch's getsockopt, once a second on an idle listener;
    /// - bind of an association's socket (io_uring's bind needs kernel 6.11,
    ///   and a datagram bind never blocks): completes with the port;
    /// - a UDP TPROXY reply socket (see `transparent::reply_socket`):
    ///   completes with the descriptor.
    fn execute_inline(&mut self, op: Op) {
        let errno = |e: std::io::Error| -e.raw_os_error().unwrap_or(libc::EIO);
        let (token, res) = match op {
            Op::Shutdown { token, fd } => (
                token,
                socket::shutdown_write(fd.raw()).map_or_else(errno, |()| 0),
            ),
            Op::ListenQueue { token, fd } => (
                token,
                socket::accept_queue_len(fd.raw())
                    .map_or_else(errno, |n| i32::try_from(n).unwrap_or(i32::MAX)),
            ),
            Op::UdpBind { token, fd, addr } => (
                token,
                socket::bind_port(fd.raw(), addr).map_or_else(errno, i32::from),
            ),
            Op::UdpTransparentSocket { token, bind, peer } => (
                token,
                transparent::reply_socket(bind, peer).map_or_else(errno, |fd| fd.into_raw_fd()),
            ),
            other => {
                warn!(shard = self.shard, op = ?other, "not an inline operation; ignored");
                return;
            }
        };
        self.synthetic.push(Cqe {
            user_data: token,
            res,
            flags: 0,
        });
    }

    /// Sends from a provided buffer or from the periodic region.
    fn execute_send(&mut self, op: Op) {
        match op {
            Op::Send {
                token,
                fd,
                bid,
                offset,
                len,
            } => {
                if self
                    .ring
                    .send(SendKind::Copy, fd.raw(), bid, offset, len, token)
                    .is_err()
                {
                    warn!(
                        shard = self.shard,
                        bid, offset, len, "send outside its buffer refused"
                    );
                    self.fail(token, libc::EINVAL);
                }
            }
            Op::SendRegion {
                token,
                fd,
                offset,
                len,
            } => {
                let queued = self.region.is_some_and(|r| {
                    // The whole window in the kernel until done: a
                    // source keeps its socket buffer full.
                    let all = libc::MSG_WAITALL;
                    self.ring
                        .send_region_flags(fd.raw(), r, offset, len, all, token)
                        .is_ok()
                });
                if !queued {
                    warn!(
                        shard = self.shard,
                        offset, len, "send outside the periodic region refused"
                    );
                    self.fail(token, libc::EINVAL);
                }
            }
            other => warn!(shard = self.shard, op = ?other, "not a send; ignored"),
        }
    }

    /// The UDP operations (datagram sockets, receives and sends).
    fn execute_datagram_op(&mut self, op: Op) {
        match op {
            Op::UdpRecvMulti {
                token,
                fd,
                template,
            } => {
                let t = match template {
                    RecvTemplate::Listener(i) => self.listen_templates.get(i as usize).copied(),
                    RecvTemplate::Upstream => Some(self.upstream_template),
                    RecvTemplate::Association => Some(self.listener_template(false, false)),
                };
                let queued = t.is_some_and(|t| self.ring.recvmsg_multi(fd.raw(), t, token).is_ok());
                if !queued {
                    self.fail(token, libc::EINVAL);
                }
            }
            Op::UdpSocket { token, family } => {
                self.ring.socket(family.raw(), SockType::Datagram, 0, token)
            }
            Op::UdpConnect {
                token,
                fd,
                addr,
                rcvbuf,
            } => {
                self.prepare_session_socket(fd, rcvbuf);
                if self.ring.connect_plain_to(fd.raw(), addr, token).is_err() {
                    self.fail(token, libc::EINVAL);
                }
            }
            Op::SendDatagram {
                token,
                fd,
                bid,
                offset,
                len,
            } => {
                if self
                    .ring
                    .send_datagram(fd.raw(), bid, offset, len, token)
                    .is_err()
                {
                    self.fail(token, libc::EINVAL);
                }
            }
            Op::SendDatagramProxied {
                token,
                fd,
                bid,
                offset,
                len,
                header,
                header_len,
            } => {
                let header = header.get(..usize::from(header_len)).unwrap_or_default();
                if self
                    .ring
                    .send_datagram_with_header(fd.raw(), bid, offset, len, header, None, token)
                    .is_err()
                {
                    self.fail(token, libc::EINVAL);
                }
            }
            Op::SendDatagramToWithHeader {
                token,
                fd,
                bid,
                offset,
                len,
                dest,
                header,
                header_len,
            } => {
                let header = header.get(..usize::from(header_len)).unwrap_or_default();
                let dest = Some(dest);
                if self
                    .ring
                    .send_datagram_with_header(fd.raw(), bid, offset, len, header, dest, token)
                    .is_err()
                {
                    self.fail(token, libc::EINVAL);
                }
            }
            Op::SendDatagramTo {
                token,
                fd,
                bid,
                offset,
                len,
                dest,
                local,
            } => {
                if self
                    .ring
                    .sendmsg_datagram(fd.raw(), bid, offset, len, dest, local, token)
                    .is_err()
                {
                    self.fail(token, libc::EINVAL);
                }
            }
            // Only datagram operations are routed here.
            other => warn!(shard = self.shard, op = ?other, "not a datagram operation; ignored"),
        }
    }

    /// Closes a pipe given back with data in it (no splice names it any
    /// more) and makes a new one in its place: rare (a teardown mid-splice),
    /// so the two syscalls outside the ring do not matter.
    fn replace_pipe(&mut self, id: u16, fds: PipeFds, engine: &mut Engine) {
        let Some(slot) = self.pipes.get_mut(usize::from(id)) else {
            return;
        };
        let matches = slot
            .as_ref()
            .is_some_and(|p| p.read_fd() == fds.read && p.write_fd() == fds.write);
        if !matches {
            warn!(
                shard = self.shard,
                pipe = id,
                "replace of an unknown pipe ignored"
            );
            return;
        }
        *slot = None;
        match pipe::Pipe::new(self.pipe_size) {
            Ok(p) => {
                let fresh = PipeFds {
                    read: p.read_fd(),
                    write: p.write_fd(),
                };
                *slot = Some(p);
                engine.restore_pipe(id, Some(fresh));
            }
            Err(e) => {
                warn!(shard = self.shard, error = %e, "creating a replacement pipe failed");
                engine.restore_pipe(id, None);
            }
        }
    }

    /// Hands a stream completion to the engine, with what only the kernel
    /// layer can read: a front receive's bytes (from its provided buffer),
    /// an accepted socket's endpoints (for listeners that want them).
    fn route_stream(&mut self, engine: &mut Engine, c: &Cqe, now: Millis) {
        let token = Token::decode(c.user_data);
        match token {
            Some(t) if t.kind == OpKind::DnsRecv => {
                let buf = self.ring.take_received(c.user_data);
                let n = usize::try_from(c.res).unwrap_or(0);
                let bytes = buf.as_deref().and_then(|b| b.get(..n));
                engine.handle_dns_cqe(c.user_data, c.res, bytes, now);
            }
            Some(t) if t.kind == OpKind::FrontRecv => {
                let bytes = u32::try_from(c.res)
                    .ok()
                    .filter(|n| *n > 0)
                    .zip(buffer_of(c.flags))
                    .and_then(|(n, bid)| self.ring.buffer_ring().bytes(bid, n));
                engine.handle_front_cqe(c.user_data, c.res, c.flags, bytes, now);
            }
            Some(t)
                if t.kind == OpKind::Accept && c.res >= 0 && engine.wants_ends(t.slot.index) =>
            {
                let (peer, local) = socket::endpoints(c.res);
                // REDIRECT rewrote the destination to ringfwd's own address;
                // conntrack still has the one the client dialled.
                let original = engine
                    .wants_original_dst(t.slot.index)
                    .then(|| transparent::original_dst(c.res).ok())
                    .flatten();
                let ends = Ends {
                    peer,
                    local,
                    original,
                };
                engine.handle_accept_cqe(c.user_data, c.res, c.flags, ends, now);
            }
            Some(t) if t.kind == OpKind::Connect && c.res == 0 => {
                if let Some(fd) = engine.wants_bound(c.user_data) {
                    let (_, local) = socket::endpoints(fd);
                    engine.set_bound(c.user_data, local);
                }
                engine.handle_cqe(c.user_data, c.res, c.flags, now);
            }
            _ => engine.handle_cqe(c.user_data, c.res, c.flags, now),
        }
    }

    /// Marks the buffer a completion carries as out of its ring (the datagram
    /// ring for UDP receives, the stream ring otherwise), so releasing it
    /// twice is refused instead of handing it to two receives.
    fn lend(&mut self, c: &Cqe, datagram: bool) {
        if c.flags & super::engine::CQE_F_BUFFER == 0 {
            return;
        }
        let bid = (c.flags >> 16) as u16;
        let known = if datagram {
            self.ring.lend_datagram(bid)
        } else {
            self.ring.lend(bid)
        };
        if !known {
            warn!(
                shard = self.shard,
                bid,
                datagram,
                "a completion carried a buffer id this shard does not hold in its ring"
            );
        }
    }

    /// For a recvmsg completion that carries a datagram: where it is in its
    /// buffer (`Some(None)` if the buffer could not be parsed). `None` for
    /// every other completion.
    fn datagram_meta(&self, c: &Cqe) -> Option<Option<DatagramMeta>> {
        let token = Token::decode(c.user_data)?;
        let template = match token.kind {
            OpKind::UdpListenRecv => *self.listen_templates.get(token.slot.index as usize)?,
            OpKind::UdpUpRecv => self.upstream_template,
            OpKind::AssocRecv => self.wildcard_templates.first().copied().flatten()?,
            // A reply socket is connected to its client, as a session's is to its upstream.
            OpKind::TproxyRecv => self.upstream_template,
            _ => return None,
        };
        if c.res <= 0 || c.flags & super::engine::CQE_F_BUFFER == 0 {
            return Some(None);
        }
        let bid = (c.flags >> 16) as u16;
        Some(
            self.ring
                .parse_datagram(bid, template)
                .map(|d| DatagramMeta {
                    src: d.src,
                    local: d.local,
                    offset: d.offset,
                    len: d.len,
                    truncated: d.truncated,
                    drops: d.drops,
                    orig_dst: d.orig_dst,
                }),
        )
    }

    /// Closes `fd` on the ring: with a reset first (`linger0`), and for a UDP
    /// socket after reading its kernel drop counter, the last chance to see
    /// drops that no received datagram reported.
    fn close(&mut self, token: u64, fd: Fd, linger0: bool, engine: &mut Engine) {
        let fd = fd.raw();
        if linger0 && let Err(e) = socket::set_linger0(fd) {
            debug!(shard = self.shard, error = %e, "SO_LINGER before reset failed");
        }
        if Engine::wants_drops_before_close(token)
            && let Ok(reading) = socket::kernel_drops(fd)
        {
            engine.udp_socket_drops(token, reading);
        }
        self.ring.close(fd, token);
    }

    /// Before a session's socket connects (and can receive): SO_RXQ_OVFL so
    /// its replies report the kernel's drops, and the route's
    /// `session_rcvbuf` (the control thread already warned if the kernel
    /// caps it). A failure only loses that, not the session.
    fn prepare_session_socket(&self, fd: Fd, rcvbuf: Option<u32>) {
        let fd = fd.raw();
        if let Err(e) = socket::set_rxq_ovfl(fd) {
            debug!(shard = self.shard, error = %e, "SO_RXQ_OVFL on a UDP session socket failed");
        }
        if rcvbuf.is_some()
            && let Err(e) = socket::set_buffers(fd, rcvbuf, None)
        {
            debug!(shard = self.shard, error = %e, "SO_RCVBUF on a UDP session socket failed");
        }
    }

    /// After a reload: the added UDP listeners count their kernel drops,
    /// and each listener slot gets the receive template of its address (one
    /// per kind of address, so reloads do not grow the ring's templates).
    fn reloaded_udp(&mut self, engine: &Engine, new: &ShardReload) {
        for l in &new.udp.listeners {
            if let UdpReloadListener::Add(spec) = l
                && let Err(e) = socket::set_rxq_ovfl(spec.fd)
            {
                warn!(shard = self.shard, listener = %spec.name, error = %e, "SO_RXQ_OVFL failed: datagrams the kernel drops on this listener are counted only at stats snapshots");
            }
        }
        let transparent = engine.udp_listener_transparent();
        self.listen_templates = engine
            .udp_listener_addrs()
            .into_iter()
            .zip(transparent)
            .map(|(a, t)| self.listener_template(a.ip().is_unspecified(), t))
            .collect();
    }

    fn listener_template(&mut self, wildcard: bool, transparent: bool) -> TemplateId {
        let at = usize::from(wildcard) + 2 * usize::from(transparent);
        let cached = self.wildcard_templates.get(at).copied().flatten();
        if let Some(t) = cached {
            return t;
        }
        let t = self
            .ring
            .add_recvmsg_template(listener_layout(wildcard, transparent));
        if let Some(c) = self.wildcard_templates.get_mut(at) {
            *c = Some(t);
        }
        t
    }

    /// Reads every open listener's kernel drop counter into the engine, so
    /// a snapshot counts the drops no received datagram has reported yet.
    fn read_listener_drops(engine: &mut Engine) {
        for (index, fd) in engine.udp_listener_sockets() {
            if let Ok(reading) = socket::kernel_drops(fd) {
                engine.note_listener_drops(index, reading);
            }
        }
    }

    /// Takes the control read back from the kernel before the ring (and the
    /// memory that read names) goes away.
    fn quiesce(&mut self) -> bool {
        if !self.control_armed {
            return true;
        }
        self.ring.cancel(control_token(), u64::MAX);
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline {
            if self
                .ring
                .submit_and_wait(Some(Duration::from_millis(50)), false)
                .is_err()
            {
                break;
            }
            self.ring.reap(&mut self.cqes);
            if self.cqes.drain(..).any(|c| c.user_data == control_token()) {
                return true;
            }
        }
        info!(
            shard = self.shard,
            "kernel did not return the control read in time; leaving its memory mapped"
        );
        self.ring.leak_buffers();
        false
    }
}
