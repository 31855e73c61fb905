//! One load-generator shard: a pinned thread with its own io_uring, provided
//! buffers and send regions, driving its share of a run's connections or
//! flows, verifying every response and recording what it measured. Like the
//! forwarder's shards it shares nothing with the others while it runs; it
//! reports progress snapshots and its final record over a channel.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::plan::{BenchPlan, Direction, UDP_HEADER, Workload};
use super::record::{ErrorKind, Record, new_histogram};
use crate::ring::{Cqe, RegionId, Ring, SockType, TargetId, TimeoutId};
use crate::shard::slab::Slab;
use crate::shard::token::{OpKind, SlotId, Token};
use crate::sys::socket;
use crate::tcp::Side;
use crate::verify::{PERIOD, PeriodicCheck, periodic_region};

/// `IORING_CQE_F_BUFFER` / `IORING_CQE_F_MORE`.
const CQE_F_BUFFER: u32 = 1 << 0;
const CQE_F_MORE: u32 = 1 << 1;
/// Magic at the start of every bench datagram.
const UDP_MAGIC: [u8; 4] = *b"RFB1";
/// How often a shard sends a progress snapshot.
const PROGRESS_EVERY_NS: u64 = 500_000_000;
/// How often outstanding requests are checked against --timeout.
const TIMEOUT_SCAN_NS: u64 = 50_000_000;
/// Pause before a connection that failed is replaced, so a target that
/// refuses everything is not hammered in a tight loop.
const RECONNECT_BACKOFF_NS: u64 = 10_000_000;
/// After the measured window, how long replies and responses in flight are
/// still awaited.
const END_GRACE_NS: u64 = 300_000_000;
/// How long the shard waits for the kernel to return its operations at exit.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Upper bound on one shard's receive-buffer memory.
const MAX_BUFFER_MEMORY: u64 = 64 << 20;

/// Everything a generator shard starts with.
#[derive(Clone, Debug)]
pub struct ShardSetup {
    pub index: usize,
    pub cpu: usize,
    pub plan: BenchPlan,
    /// Global ids of the connections or flows this shard drives.
    pub conns: Vec<u32>,
    /// Connections or flows of the whole run.
    pub total_conns: u32,
}

/// Shard → control thread.
#[derive(Debug)]
pub enum Report {
    /// Set up (ring, buffers, sockets) and waiting for the common start.
    Ready {
        shard: usize,
    },
    Progress {
        shard: usize,
        measuring: bool,
        ops: u64,
        bytes: u64,
        errors: u64,
        /// Latencies since the previous snapshot.
        interval: Box<Histogram<u64>>,
    },
    Done {
        shard: usize,
        record: Box<Record>,
        /// Whether every operation came back from the kernel before exit.
        clean: bool,
    },
    Failed {
        shard: usize,
        error: String,
    },
}

/// Runs one shard to the end of the run on the calling thread. After its
/// setup it reports `Ready` and waits on `go` for the common epoch of all
/// shards (the warmup starts there); `None` means abort.
pub fn run(setup: ShardSetup, reports: Sender<Report>, go: Receiver<Option<Instant>>) {
    let shard = setup.index;
    let fail = |error: String| {
        let _ = reports.send(Report::Failed { shard, error });
    };
    if !core_affinity::set_for_current(core_affinity::CoreId { id: setup.cpu }) {
        return fail(format!(
            "cannot pin to CPU {} (sched_setaffinity refused); check the CPU set with `taskset -p $$`",
            setup.cpu
        ));
    }
    match Gen::new(&setup) {
        Ok(mut g) => {
            let _ = reports.send(Report::Ready { shard });
            let Ok(Some(start)) = go.recv() else {
                g.quiesce();
                return;
            };
            g.clock.start = start;
            g.run(&reports);
            let clean = g.quiesce();
            let _ = reports.send(Report::Done {
                shard,
                record: Box::new(std::mem::take(&mut g.rec)),
                clean,
            });
        }
        Err(e) => fail(e),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Open,
    /// Cancel issued; the close follows once every operation is back.
    Closing,
}

/// One TCP connection of the generator.
#[derive(Debug)]
struct TcpConn {
    id: u32,
    fd: Option<RawFd>,
    state: ConnState,
    /// Operations in the kernel naming this connection.
    inflight: u32,
    sending: bool,
    /// Position in the periodic stream of the next byte to send.
    tx_pos: u64,
    /// Bytes queued to send.
    tx_owed: u64,
    rx: PeriodicCheck,
    /// Bytes of the current response received so far.
    rx_in_resp: u64,
    /// Requests in flight: (latency start, actual send time).
    outstanding: VecDeque<(u64, u64)>,
    /// Open loop: index of this connection's next intended request.
    next_k: u64,
    /// Open loop: the wake-up this connection has in the schedule.
    scheduled_at: Option<u64>,
    /// tcp-crr: when this transaction started (latency start).
    started: u64,
    failed: bool,
}

impl TcpConn {
    fn new(id: u32, next_k: u64, started: u64) -> TcpConn {
        TcpConn {
            id,
            fd: None,
            state: ConnState::Connecting,
            inflight: 0,
            sending: false,
            tx_pos: 0,
            tx_owed: 0,
            rx: PeriodicCheck::default(),
            rx_in_resp: 0,
            outstanding: VecDeque::new(),
            next_k,
            scheduled_at: None,
            started,
            failed: false,
        }
    }
}

/// One UDP flow: a connected socket and its send slots.
#[derive(Debug)]
struct Flow {
    id: u32,
    fd: OwnedFd,
    recv_armed: bool,
    seq: u64,
    /// Send slots (in the shard's slot region) whose send is in flight.
    busy: Vec<bool>,
    /// udp-rr: the request awaiting its reply: (seq, latency start, sent at).
    waiting: Option<(u64, u64, u64)>,
    /// udp-rr: a request to send as soon as the slot's previous send is back.
    deferred: Option<u64>,
    next_k: u64,
    scheduled_at: Option<u64>,
}

/// The run's phases on the shared clock, in ns since `start`.
#[derive(Clone, Copy, Debug)]
struct Clock {
    start: Instant,
    warm_end: u64,
    end: u64,
}

impl Clock {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn measuring(&self, t: u64) -> bool {
        t >= self.warm_end && t < self.end
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

struct Gen {
    shard: usize,
    ring: Ring,
    w: Workload,
    clock: Clock,
    timeout_ns: u64,
    /// Open loop: time between two intended requests of one connection/flow.
    period_ns: Option<f64>,
    total_conns: u32,
    pattern: RegionId,
    /// UDP: one `size`-byte slot per flow and window entry.
    slots: Option<RegionId>,
    target: TargetId,
    target_addr: std::net::SocketAddr,
    connect_timeout: TimeoutId,
    family: i32,
    ids: Vec<u32>,
    tcp: Slab<TcpConn>,
    flows: Vec<Flow>,
    /// Open loop: (time, slot index, slot generation) of pending wake-ups.
    sched: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Connections to open: (time, id, next_k, failed-before).
    starts: BinaryHeap<Reverse<(u64, u32, u64)>>,
    rec: Record,
    interval: Histogram<u64>,
    busy_poll: Option<Duration>,
    /// Every operation in the kernel, for the exit wait.
    pending: u64,
    cqes: Vec<Cqe>,
}

fn tok(kind: OpKind, slot: SlotId) -> u64 {
    Token::new(kind, Side::Client, slot).encode()
}

fn flow_tok(kind: OpKind, flow: usize, aux: u16) -> u64 {
    Token::new(
        kind,
        Side::Upstream,
        SlotId {
            index: flow as u32,
            generation: 0,
        },
    )
    .with_aux(aux)
    .encode()
}

impl Gen {
    fn new(s: &ShardSetup) -> Result<Gen, String> {
        let w = s.plan.workload.clone();
        let local = s.conns.len() as u64;
        let (buf_size, want) = match w {
            Workload::TcpStream { .. } => (64 << 10, local * 8),
            Workload::UdpRr { size, .. } => (round64(u64::from(size) + 64), local * 4),
            Workload::UdpStream { size, window, .. } => {
                (round64(u64::from(size) + 64), local * u64::from(window) * 2)
            }
            _ => (
                round64(u64::from(w.response_size()).clamp(2048, 64 << 10)),
                local * 4,
            ),
        };
        let count = want
            .clamp(64, 8192)
            .min((MAX_BUFFER_MEMORY / buf_size).max(16));
        let entries = (local * 2).next_power_of_two().clamp(256, 4096) as u32;
        let mut ring = Ring::new(entries, count as u32, buf_size as u32).map_err(|e| {
            format!(
                "creating its io_uring ({entries} entries) with {count} receive buffers of {buf_size} bytes failed: {e}"
            )
        })?;
        let pattern = ring.add_region(periodic_region());
        let target = ring.add_target(s.plan.target);
        let connect_timeout = ring.add_timeout(s.plan.timeout);
        let family = ring
            .target_family(target)
            .ok_or("the target address was not registered")?;
        let start = Instant::now();
        let warm_end = ns(s.plan.warmup);
        let clock = Clock {
            start,
            warm_end,
            end: warm_end.saturating_add(ns(s.plan.duration)),
        };
        let period_ns = s
            .plan
            .rate
            .map(|r| f64::from(s.total_conns.max(1)) / r * 1e9);
        let mut g = Gen {
            shard: s.index,
            ring,
            w: w.clone(),
            clock,
            timeout_ns: ns(s.plan.timeout),
            period_ns,
            total_conns: s.total_conns,
            pattern,
            slots: None,
            target,
            target_addr: s.plan.target,
            connect_timeout,
            family,
            ids: s.conns.clone(),
            tcp: Slab::default(),
            flows: Vec::new(),
            sched: BinaryHeap::new(),
            starts: BinaryHeap::new(),
            rec: Record::default(),
            interval: new_histogram(),
            busy_poll: s.plan.busy_poll,
            pending: 0,
            cqes: Vec::with_capacity(4096),
        };
        if w.is_udp() {
            g.open_flows(s)?;
        }
        Ok(g)
    }

    /// The intended time of request `k` of connection/flow `id` (open loop).
    fn intended(&self, id: u32, k: u64) -> u64 {
        let Some(p) = self.period_ns else { return 0 };
        // Spread the connections' phases over one period.
        let phase = p * f64::from(id) / f64::from(self.total_conns.max(1));
        (phase + p * k as f64) as u64
    }

    fn open_flows(&mut self, s: &ShardSetup) -> Result<(), String> {
        let (size, window) = match self.w {
            Workload::UdpRr { size, .. } => (size as usize, 1usize),
            Workload::UdpStream { size, window, .. } => (size as usize, window as usize),
            _ => return Ok(()),
        };
        let mut region = vec![0u8; s.conns.len() * window * size].into_boxed_slice();
        let pattern = periodic_region();
        for slot in region.chunks_mut(size) {
            // The payload after the header is the pattern from offset 0: what
            // every reply is checked against.
            let body = UDP_HEADER as usize;
            slot[..4].copy_from_slice(&UDP_MAGIC);
            slot[body..].copy_from_slice(&pattern[..size - body]);
        }
        self.slots = Some(self.ring.add_region(region));
        for &id in &s.conns {
            let fd = socket::connected_udp(s.plan.target).map_err(|e| {
                format!(
                    "opening a UDP socket connected to {} failed: {e} (raise `ulimit -n` for many flows)",
                    s.plan.target
                )
            })?;
            self.flows.push(Flow {
                id,
                fd,
                recv_armed: false,
                seq: 0,
                busy: vec![false; window],
                waiting: None,
                deferred: None,
                next_k: 0,
                scheduled_at: None,
            });
        }
        Ok(())
    }

    /// The main loop, until the measured window (and the UDP grace) is over.
    fn run(&mut self, reports: &Sender<Report>) {
        let mut now = self.clock.now();
        let mut next_progress = PROGRESS_EVERY_NS;
        let mut next_scan = TIMEOUT_SCAN_NS;
        let mut warm = self.clock.warm_end == 0;
        // After the window: UDP replies still count, and TCP requests in
        // flight are let finish so connections end with a clean close, not
        // a reset from unread responses.
        let stop_at = self.clock.end + END_GRACE_NS.min(self.timeout_ns);
        self.begin(now);
        loop {
            if now >= stop_at || (now >= self.clock.end && self.settled()) {
                break;
            }
            if now < self.clock.end {
                self.run_schedules(now);
            }
            if now >= next_scan {
                next_scan = now + TIMEOUT_SCAN_NS;
                self.scan_timeouts(now);
            }
            if now >= next_progress {
                next_progress = now + PROGRESS_EVERY_NS;
                let _ = reports.send(Report::Progress {
                    shard: self.shard,
                    measuring: self.clock.measuring(now),
                    ops: self.rec.ops,
                    bytes: self.rec.bytes_sent + self.rec.bytes_received,
                    errors: self.rec.errors.total(),
                    interval: Box::new(self.interval.clone()),
                });
                self.interval.reset();
            }
            let mut wake = stop_at.min(next_progress).min(next_scan);
            if !warm {
                wake = wake.min(self.clock.warm_end);
            }
            if now < self.clock.end {
                if let Some(Reverse((t, _, _))) = self.sched.peek() {
                    wake = wake.min(*t);
                }
                if let Some(Reverse((t, _, _))) = self.starts.peek() {
                    wake = wake.min(*t);
                }
            }
            self.ring.publish_buffers();
            let wait = Duration::from_nanos(wake.saturating_sub(now));
            let ready = wait.is_zero()
                || match self.busy_poll {
                    Some(spin) => self.spin(spin.min(wait)),
                    None => false,
                };
            if let Err(e) = self.ring.submit_and_wait(Some(wait), ready) {
                self.rec.error(ErrorKind::Other, || {
                    format!("io_uring_enter failed: {e}; the shard stopped early")
                });
                break;
            }
            self.ring.reap(&mut self.cqes);
            now = self.clock.now();
            if !warm && now >= self.clock.warm_end {
                // Before these completions are handled: they are the first
                // of the measured window.
                warm = true;
                self.rec.reset();
                self.interval.reset();
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            for c in cqes.drain(..) {
                self.handle(c, now);
            }
            self.cqes = cqes;
        }
    }

    /// Spins up to `limit` for a completion (busy-poll); true when one is waiting.
    fn spin(&mut self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            match self.ring.poll_step() {
                Ok(true) => return true,
                Ok(false) if Instant::now() < until => std::hint::spin_loop(),
                _ => return false,
            }
        }
    }

    /// Nothing is awaited any more (checked only after the window).
    fn settled(&self) -> bool {
        match self.w {
            Workload::TcpStream { .. } => true,
            Workload::UdpRr { .. } | Workload::UdpStream { .. } => false,
            _ => self.tcp.ids().into_iter().all(|slot| {
                self.tcp
                    .get(slot)
                    .is_none_or(|c| c.outstanding.is_empty() && c.state != ConnState::Connecting)
            }),
        }
    }

    /// Opens every connection or arms every flow.
    fn begin(&mut self, now: u64) {
        if self.w.is_udp() {
            for f in 0..self.flows.len() {
                self.arm_flow_recv(f);
                self.udp_try_send(f, now);
            }
            return;
        }
        for i in 0..self.ids.len() {
            let id = self.ids[i];
            let at = self.intended(id, 0);
            if matches!(self.w, Workload::TcpCrr { .. }) && self.period_ns.is_some() {
                self.starts.push(Reverse((at, id, 0)));
            } else {
                self.open_conn(id, 0, now);
            }
        }
    }

    fn run_schedules(&mut self, now: u64) {
        while let Some(Reverse((t, id, next_k))) = self.starts.peek().copied() {
            if t > now {
                break;
            }
            self.starts.pop();
            self.open_conn(id, next_k, now);
        }
        while let Some(Reverse((t, index, generation))) = self.sched.peek().copied() {
            if t > now {
                break;
            }
            self.sched.pop();
            if self.w.is_udp() {
                let f = index as usize;
                if let Some(flow) = self.flows.get_mut(f)
                    && flow.scheduled_at == Some(t)
                {
                    flow.scheduled_at = None;
                    self.udp_try_send(f, now);
                }
                continue;
            }
            let slot = SlotId { index, generation };
            if let Some(c) = self.tcp.get_mut(slot)
                && c.scheduled_at == Some(t)
            {
                c.scheduled_at = None;
                self.try_issue(slot, now);
            }
        }
    }

    fn handle(&mut self, c: Cqe, now: u64) {
        let more = c.flags & CQE_F_MORE != 0;
        if !more {
            self.pending = self.pending.saturating_sub(1);
        }
        let Some(t) = Token::decode(c.user_data) else {
            return;
        };
        let bid = (c.flags & CQE_F_BUFFER != 0).then_some((c.flags >> 16) as u16);
        if self.w.is_udp() {
            self.udp_cqe(t, c.res, bid, more, now);
        } else {
            self.tcp_cqe(t, c.res, bid, more, now);
        }
    }

    // ---- TCP ----

    fn open_conn(&mut self, id: u32, next_k: u64, now: u64) {
        let started = if self.period_ns.is_some() {
            self.intended(id, next_k)
        } else {
            now
        };
        let Some(slot) = self.tcp.insert(TcpConn::new(id, next_k, started)) else {
            self.rec.error(ErrorKind::Other, || {
                "too many connections on one shard".into()
            });
            return;
        };
        self.ring
            .socket(self.family, SockType::Stream, tok(OpKind::Socket, slot));
        self.issued(slot, 1);
    }

    fn issued(&mut self, slot: SlotId, n: u32) {
        self.pending += u64::from(n);
        if let Some(c) = self.tcp.get_mut(slot) {
            c.inflight += n;
        }
    }

    fn tcp_cqe(&mut self, t: Token, res: i32, bid: Option<u16>, more: bool, now: u64) {
        let slot = t.slot;
        let Some(c) = self.tcp.get_mut(slot) else {
            if let Some(b) = bid {
                self.ring.release(b);
            }
            return;
        };
        if !more {
            c.inflight = c.inflight.saturating_sub(1);
        }
        match t.kind {
            OpKind::Socket => self.on_socket(slot, res),
            OpKind::Connect => self.on_connect(slot, res, now),
            OpKind::Send => self.on_sent(slot, res, now),
            OpKind::Recv => self.on_recv(slot, res, bid, more, now),
            _ => {}
        }
        self.maybe_retire(slot, now);
    }

    fn on_socket(&mut self, slot: SlotId, res: i32) {
        if res < 0 {
            self.fail_conn(slot, ErrorKind::of_errno(-res), || {
                format!("socket(): {}", std::io::Error::from_raw_os_error(-res))
            });
            return;
        }
        let fd = res;
        if let Some(c) = self.tcp.get_mut(slot) {
            c.fd = Some(fd);
        }
        // Requests are small and latency is the point: never wait for Nagle.
        let _ = socket::set_nodelay(fd);
        let (ct, cto) = (
            tok(OpKind::Connect, slot),
            tok(OpKind::ConnectTimeout, slot),
        );
        if self
            .ring
            .connect(fd, self.target, self.connect_timeout, ct, cto)
            .is_ok()
        {
            self.issued(slot, 2);
        }
    }

    fn on_connect(&mut self, slot: SlotId, res: i32, now: u64) {
        if res < 0 {
            let target = self.ring_target_text();
            self.fail_conn(slot, ErrorKind::of_errno(-res), || {
                let e = -res;
                if e == libc::ECANCELED {
                    format!("connect to {target}: no answer within --timeout")
                } else {
                    format!(
                        "connect to {target}: {}",
                        std::io::Error::from_raw_os_error(e)
                    )
                }
            });
            return;
        }
        let Some(c) = self.tcp.get_mut(slot) else {
            return;
        };
        if c.state != ConnState::Connecting {
            return;
        }
        c.state = ConnState::Open;
        let Some(fd) = c.fd else { return };
        match self.w {
            Workload::TcpRr { pipeline, .. } => {
                self.ring.recv_multi(fd, tok(OpKind::Recv, slot));
                self.issued(slot, 1);
                if self.period_ns.is_some() {
                    self.try_issue(slot, now);
                } else {
                    for _ in 0..pipeline {
                        self.issue_request(slot, now, now);
                    }
                }
            }
            Workload::TcpCrr { .. } => {
                let started = self.tcp.get(slot).map_or(now, |c| c.started);
                self.ring.recv_once(fd, tok(OpKind::Recv, slot));
                self.issued(slot, 1);
                self.issue_request(slot, started, now);
            }
            Workload::TcpStream { direction, .. } => {
                self.ring.recv_multi(fd, tok(OpKind::Recv, slot));
                self.issued(slot, 1);
                if direction != Direction::Down {
                    if let Some(c) = self.tcp.get_mut(slot) {
                        c.tx_owed = u64::MAX;
                    }
                    self.kick_send(slot);
                }
            }
            Workload::UdpRr { .. } | Workload::UdpStream { .. } => {}
        }
    }

    fn ring_target_text(&self) -> String {
        self.target_addr.to_string()
    }

    /// Open loop: issue every request that is due and fits the pipeline, and
    /// schedule a wake-up for the next one.
    fn try_issue(&mut self, slot: SlotId, now: u64) {
        let Workload::TcpRr { pipeline, .. } = self.w else {
            return;
        };
        loop {
            let Some(c) = self.tcp.get(slot) else { return };
            if c.state != ConnState::Open || c.outstanding.len() >= pipeline as usize {
                return;
            }
            let at = self.intended(c.id, c.next_k);
            if at > now {
                if let Some(c) = self.tcp.get_mut(slot)
                    && c.scheduled_at != Some(at)
                {
                    c.scheduled_at = Some(at);
                    self.sched.push(Reverse((at, slot.index, slot.generation)));
                }
                return;
            }
            if let Some(c) = self.tcp.get_mut(slot) {
                c.next_k += 1;
            }
            self.issue_request(slot, at, now);
        }
    }

    /// Queues one request; `start` is what its latency counts from.
    fn issue_request(&mut self, slot: SlotId, start: u64, now: u64) {
        let size = u64::from(self.w.size());
        let Some(c) = self.tcp.get_mut(slot) else {
            return;
        };
        c.outstanding.push_back((start, now));
        c.tx_owed += size;
        self.kick_send(slot);
    }

    /// Starts the next send if none is in flight: straight from the pattern
    /// region, at most one period so the window is contiguous.
    fn kick_send(&mut self, slot: SlotId) {
        let write = match self.w {
            Workload::TcpStream { size, .. } => u64::from(size),
            _ => PERIOD as u64 - 1,
        };
        let Some(c) = self.tcp.get_mut(slot) else {
            return;
        };
        if c.sending || c.tx_owed == 0 || c.state != ConnState::Open {
            return;
        }
        let Some(fd) = c.fd else { return };
        let len = c.tx_owed.min(write) as u32;
        let offset = (c.tx_pos % PERIOD as u64) as u32;
        if self
            .ring
            .send_region(fd, self.pattern, offset, len, tok(OpKind::Send, slot))
            .is_ok()
        {
            if let Some(c) = self.tcp.get_mut(slot) {
                c.sending = true;
            }
            self.issued(slot, 1);
        }
    }

    fn on_sent(&mut self, slot: SlotId, res: i32, now: u64) {
        let measuring = self.clock.measuring(now);
        let Some(c) = self.tcp.get_mut(slot) else {
            return;
        };
        c.sending = false;
        if c.state != ConnState::Open {
            return;
        }
        if res <= 0 {
            let e = if res == 0 { libc::EPIPE } else { -res };
            self.fail_conn(slot, ErrorKind::of_errno(e), || {
                format!("send: {}", std::io::Error::from_raw_os_error(e))
            });
            return;
        }
        let n = res as u64;
        c.tx_pos += n;
        c.tx_owed = c.tx_owed.saturating_sub(n);
        if measuring {
            self.rec.bytes_sent += n;
        }
        self.kick_send(slot);
    }

    fn on_recv(&mut self, slot: SlotId, res: i32, bid: Option<u16>, more: bool, now: u64) {
        if res > 0 {
            match bid {
                Some(b) => {
                    self.on_data(slot, b, res as u32, now);
                    self.ring.release(b);
                }
                None => self.fail_conn(slot, ErrorKind::Other, || {
                    "receive completed without a buffer".into()
                }),
            }
        } else if res == 0 {
            let open = self
                .tcp
                .get(slot)
                .is_some_and(|c| c.state == ConnState::Open);
            if open {
                self.fail_conn(slot, ErrorKind::Reset, || {
                    "the target closed the connection in the middle of the load".into()
                });
            }
            return;
        } else if -res != libc::ENOBUFS && -res != libc::ECANCELED {
            self.fail_conn(slot, ErrorKind::of_errno(-res), || {
                format!("receive: {}", std::io::Error::from_raw_os_error(-res))
            });
            return;
        }
        if let Some(b) = bid
            && res <= 0
        {
            self.ring.release(b);
        }
        // Re-arm a receive that ended (ENOBUFS, or single-shot crr).
        let Some(c) = self.tcp.get(slot) else { return };
        let Some(fd) = c.fd else { return };
        if more || c.state != ConnState::Open {
            return;
        }
        match self.w {
            Workload::TcpCrr { .. } => {
                if !c.outstanding.is_empty() {
                    self.ring.recv_once(fd, tok(OpKind::Recv, slot));
                    self.issued(slot, 1);
                }
            }
            _ => {
                self.ring.recv_multi(fd, tok(OpKind::Recv, slot));
                self.issued(slot, 1);
            }
        }
    }

    /// Verifies `len` received bytes in buffer `bid` and completes the
    /// responses they finish.
    fn on_data(&mut self, slot: SlotId, bid: u16, len: u32, now: u64) {
        let measuring = self.clock.measuring(now);
        let resp = u64::from(self.w.response_size());
        let stream = matches!(self.w, Workload::TcpStream { .. });
        let (Some(data), Some(pattern)) = (
            self.ring.buffer_ring().bytes(bid, len),
            self.ring.region(self.pattern),
        ) else {
            return;
        };
        let Some(c) = self.tcp.get_mut(slot) else {
            return;
        };
        if c.state != ConnState::Open {
            return;
        }
        if let Workload::TcpStream {
            direction: Direction::Up,
            ..
        } = self.w
        {
            let id = c.id;
            self.fail_conn(slot, ErrorKind::Verify, || {
                format!("connection {id}: the target sent {len} bytes to an upload (is it a --tcp-sink?)")
            });
            return;
        }
        if let Err(at) = c.rx.check(pattern, data) {
            let id = c.id;
            self.fail_conn(slot, ErrorKind::Verify, || {
                format!("connection {id}: received byte {at} of the response stream differs from what was expected")
            });
            return;
        }
        if measuring {
            self.rec.bytes_received += u64::from(len);
        }
        if stream {
            return;
        }
        let mut left = u64::from(len);
        let mut done: u32 = 0;
        while left > 0 {
            if c.outstanding.is_empty() {
                let id = c.id;
                self.fail_conn(slot, ErrorKind::Verify, || {
                    format!("connection {id}: {left} bytes arrived that no request asked for (response larger than --response-size?)")
                });
                return;
            }
            let take = (resp - c.rx_in_resp).min(left);
            c.rx_in_resp += take;
            left -= take;
            if c.rx_in_resp == resp {
                c.rx_in_resp = 0;
                if let Some((start, _)) = c.outstanding.pop_front()
                    && measuring
                {
                    let lat = now.saturating_sub(start);
                    self.rec.ops += 1;
                    self.rec.latency_ns(lat);
                    let _ = self
                        .interval
                        .record(lat.clamp(1, super::record::MAX_LATENCY_NS));
                }
                done += 1;
            }
        }
        match self.w {
            Workload::TcpRr { .. } => {
                if self.period_ns.is_some() {
                    self.try_issue(slot, now);
                } else if now < self.clock.end {
                    for _ in 0..done {
                        self.issue_request(slot, now, now);
                    }
                }
            }
            Workload::TcpCrr { .. } if done > 0 => self.close_conn(slot, false),
            _ => {}
        }
    }

    /// Counts an error and closes the connection (it is replaced after a pause).
    fn fail_conn(&mut self, slot: SlotId, kind: ErrorKind, what: impl FnOnce() -> String) {
        let Some(c) = self.tcp.get(slot) else { return };
        if c.state == ConnState::Closing {
            return;
        }
        // Errors after the window (connections torn down at the end) are not the target's.
        let now = self.clock.now();
        if now < self.clock.end {
            self.rec.error(kind, what);
        }
        self.close_conn(slot, true);
    }

    fn close_conn(&mut self, slot: SlotId, failed: bool) {
        let Some(c) = self.tcp.get_mut(slot) else {
            return;
        };
        if c.state == ConnState::Closing {
            return;
        }
        c.state = ConnState::Closing;
        c.failed = failed;
        if let Some(fd) = c.fd
            && c.inflight > 0
        {
            self.ring.cancel_fd(fd, tok(OpKind::CancelAll, slot));
            self.issued(slot, 1);
        }
    }

    /// A closing connection whose operations are all back: close its socket,
    /// then free it and open its replacement.
    fn maybe_retire(&mut self, slot: SlotId, now: u64) {
        let Some(c) = self.tcp.get_mut(slot) else {
            return;
        };
        if c.state != ConnState::Closing || c.inflight > 0 {
            return;
        }
        if let Some(fd) = c.fd.take() {
            self.ring.close(fd, tok(OpKind::Close, slot));
            self.issued(slot, 1);
            return;
        }
        let Some(c) = self.tcp.remove(slot) else {
            return;
        };
        if now >= self.clock.end {
            return;
        }
        let next_k = c.next_k + u64::from(matches!(self.w, Workload::TcpCrr { .. }));
        let mut at = if c.failed {
            now + RECONNECT_BACKOFF_NS
        } else {
            now
        };
        if self.period_ns.is_some() && matches!(self.w, Workload::TcpCrr { .. }) {
            at = at.max(self.intended(c.id, next_k));
        }
        if at <= now {
            self.open_conn(c.id, next_k, now);
        } else {
            self.starts.push(Reverse((at, c.id, next_k)));
        }
    }

    fn scan_timeouts(&mut self, now: u64) {
        if self.w.is_udp() {
            return self.udp_scan_timeouts(now);
        }
        let limit = self.timeout_ns;
        for slot in self.tcp.ids() {
            let late = self.tcp.get(slot).and_then(|c| {
                let (_, sent) = *c.outstanding.front()?;
                (c.state == ConnState::Open && now.saturating_sub(sent) > limit).then_some(c.id)
            });
            if let Some(id) = late {
                self.fail_conn(slot, ErrorKind::Timeout, || {
                    format!("connection {id}: no response within --timeout")
                });
                self.maybe_retire(slot, now);
            }
        }
    }

    // ---- UDP ----

    fn slot_offset(&self, f: usize, w: usize) -> (u32, u32) {
        let (size, window) = match self.w {
            Workload::UdpRr { size, .. } => (size as usize, 1),
            Workload::UdpStream { size, window, .. } => (size as usize, window as usize),
            _ => (0, 1),
        };
        (((f * window + w) * size) as u32, size as u32)
    }

    fn arm_flow_recv(&mut self, f: usize) {
        let Some(flow) = self.flows.get_mut(f) else {
            return;
        };
        if flow.recv_armed {
            return;
        }
        flow.recv_armed = true;
        let fd = flow.fd.as_raw_fd();
        self.ring.recv_multi(fd, flow_tok(OpKind::UdpUpRecv, f, 0));
        self.pending += 1;
    }

    /// Sends whatever this flow may send now.
    fn udp_try_send(&mut self, f: usize, now: u64) {
        if now >= self.clock.end {
            return;
        }
        let open_loop = self.period_ns.is_some();
        loop {
            let Some(flow) = self.flows.get(f) else {
                return;
            };
            let free = match self.w {
                Workload::UdpRr { .. } => {
                    if flow.waiting.is_some() || flow.deferred.is_some() {
                        return;
                    }
                    0
                }
                _ => match flow.busy.iter().position(|b| !b) {
                    Some(w) => w,
                    None => return,
                },
            };
            let start = if open_loop {
                let at = self.intended(flow.id, flow.next_k);
                if at > now {
                    if flow.scheduled_at != Some(at) {
                        if let Some(flow) = self.flows.get_mut(f) {
                            flow.scheduled_at = Some(at);
                        }
                        self.sched.push(Reverse((at, f as u32, 0)));
                    }
                    return;
                }
                at
            } else {
                now
            };
            if let Some(flow) = self.flows.get_mut(f) {
                flow.next_k += 1;
            }
            if matches!(self.w, Workload::UdpRr { .. })
                && self
                    .flows
                    .get(f)
                    .is_some_and(|fl| fl.busy.first().copied().unwrap_or(false))
            {
                // The previous datagram's send is not back: its slot is still
                // being read by the kernel. Send when it is.
                if let Some(flow) = self.flows.get_mut(f) {
                    flow.deferred = Some(start);
                }
                return;
            }
            if !self.udp_send(f, free, start, now) {
                return;
            }
        }
    }

    /// Sends datagram `seq` of flow `f` from window slot `w`; false if it
    /// could not be queued.
    fn udp_send(&mut self, f: usize, w: usize, start: u64, now: u64) -> bool {
        let (offset, size) = self.slot_offset(f, w);
        let Some(slots) = self.slots else {
            return false;
        };
        let Some(flow) = self.flows.get_mut(f) else {
            return false;
        };
        let seq = flow.seq;
        flow.seq += 1;
        let id = flow.id;
        let fd = flow.fd.as_raw_fd();
        let Some(region) = self.ring.region_mut(slots) else {
            return false;
        };
        let Some(hdr) = region.get_mut(offset as usize..offset as usize + UDP_HEADER as usize)
        else {
            return false;
        };
        // Safe to rewrite: this slot's previous send has completed (`busy`).
        hdr[4..8].copy_from_slice(&id.to_le_bytes());
        hdr[8..16].copy_from_slice(&seq.to_le_bytes());
        hdr[16..24].copy_from_slice(&start.to_le_bytes());
        if self
            .ring
            .send_region(
                fd,
                slots,
                offset,
                size,
                flow_tok(OpKind::UdpUpSend, f, w as u16),
            )
            .is_err()
        {
            return false;
        }
        self.pending += 1;
        if let Some(flow) = self.flows.get_mut(f) {
            if let Some(b) = flow.busy.get_mut(w) {
                *b = true;
            }
            if matches!(self.w, Workload::UdpRr { .. }) {
                flow.waiting = Some((seq, start, now));
            }
        }
        if self.clock.measuring(now) {
            self.rec.udp.sent += 1;
            self.rec.bytes_sent += u64::from(size);
        }
        true
    }

    fn udp_cqe(&mut self, t: Token, res: i32, bid: Option<u16>, more: bool, now: u64) {
        let f = t.slot.index as usize;
        if f >= self.flows.len() {
            if let Some(b) = bid {
                self.ring.release(b);
            }
            return;
        }
        match t.kind {
            OpKind::UdpUpSend => {
                if let Some(b) = self
                    .flows
                    .get_mut(f)
                    .and_then(|fl| fl.busy.get_mut(t.aux as usize))
                {
                    *b = false;
                }
                if res < 0 && now < self.clock.end {
                    // UDP send errors are not fatal (ICMP from an earlier datagram).
                    let e = -res;
                    self.rec.error(ErrorKind::of_errno(e), || {
                        format!("UDP send: {}", std::io::Error::from_raw_os_error(e))
                    });
                }
                let deferred = self.flows.get_mut(f).and_then(|fl| fl.deferred.take());
                match deferred {
                    Some(start) if now < self.clock.end => {
                        self.udp_send(f, 0, start, now);
                    }
                    _ => {
                        if matches!(self.w, Workload::UdpStream { .. }) {
                            self.udp_try_send(f, now);
                        }
                    }
                }
            }
            OpKind::UdpUpRecv => {
                if res > 0 {
                    if let Some(b) = bid {
                        self.on_datagram(f, b, res as u32, now);
                        self.ring.release(b);
                    }
                } else {
                    if let Some(b) = bid {
                        self.ring.release(b);
                    }
                    let e = -res;
                    if res < 0 && e != libc::ENOBUFS && e != libc::ECANCELED && now < self.clock.end
                    {
                        self.rec.error(ErrorKind::of_errno(e), || {
                            format!("UDP receive: {}", std::io::Error::from_raw_os_error(e))
                        });
                    }
                }
                if !more {
                    if let Some(flow) = self.flows.get_mut(f) {
                        flow.recv_armed = false;
                    }
                    if res != -libc::ECANCELED {
                        self.arm_flow_recv(f);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_datagram(&mut self, f: usize, bid: u16, len: u32, now: u64) {
        let size = self.w.size();
        let (Some(data), Some(pattern)) = (
            self.ring.buffer_ring().bytes(bid, len),
            self.ring.region(self.pattern),
        ) else {
            return;
        };
        let Some(flow) = self.flows.get(f) else {
            return;
        };
        let h = UDP_HEADER as usize;
        let field = |r: std::ops::Range<usize>| -> u64 {
            data.get(r).map_or(0, |b| {
                let mut x = [0u8; 8];
                x[..b.len()].copy_from_slice(b);
                u64::from_le_bytes(x)
            })
        };
        let ok = len == size
            && data.get(..4) == Some(&UDP_MAGIC[..])
            && field(4..8) == u64::from(flow.id)
            && data.get(h..) == pattern.get(..size as usize - h);
        if !ok {
            let id = flow.id;
            if now < self.clock.end {
                self.rec.error(ErrorKind::Verify, || {
                    format!("flow {id}: a reply of {len} bytes does not match the {size}-byte datagram sent")
                });
            }
            // The corrupted reply may have been the awaited one: go on
            // rather than wait for a timeout.
            if let Workload::UdpRr { .. } = self.w {
                if let Some(flow) = self.flows.get_mut(f) {
                    flow.waiting = None;
                }
                self.udp_try_send(f, now);
            }
            return;
        }
        let seq = field(8..16);
        let start = field(16..24);
        let in_window = start >= self.clock.warm_end && start < self.clock.end;
        let mut answered = true;
        if let Workload::UdpRr { .. } = self.w {
            match flow.waiting {
                Some((want, _, _)) if want == seq => {}
                _ => answered = false,
            }
        }
        if !answered {
            if self.clock.measuring(now) {
                self.rec.udp.late += 1;
            }
            return;
        }
        if in_window {
            self.rec.udp.received += 1;
            self.rec.bytes_received += u64::from(len);
        }
        if self.clock.measuring(now) {
            let lat = now.saturating_sub(start);
            self.rec.ops += 1;
            self.rec.latency_ns(lat);
            let _ = self
                .interval
                .record(lat.clamp(1, super::record::MAX_LATENCY_NS));
        }
        if let Workload::UdpRr { .. } = self.w {
            if let Some(flow) = self.flows.get_mut(f) {
                flow.waiting = None;
            }
            self.udp_try_send(f, now);
        }
    }

    fn udp_scan_timeouts(&mut self, now: u64) {
        if !matches!(self.w, Workload::UdpRr { .. }) {
            return;
        }
        for f in 0..self.flows.len() {
            let Some((_, _, sent)) = self.flows.get(f).and_then(|fl| fl.waiting) else {
                continue;
            };
            if now.saturating_sub(sent) <= self.timeout_ns {
                continue;
            }
            // Lost: counted as sent minus answered. A datagram sent during
            // the warmup whose loss shows in the window belongs to the window
            // (the flow stalled in it), so it is counted as sent there.
            if self.clock.measuring(now) && sent < self.clock.warm_end {
                self.rec.udp.sent += 1;
            }
            if let Some(flow) = self.flows.get_mut(f) {
                flow.waiting = None;
            }
            self.udp_try_send(f, now);
        }
    }

    // ---- exit ----

    /// Cancels everything, closes every socket the ring opened, and waits for
    /// the kernel to return every operation; true when it did.
    fn quiesce(&mut self) -> bool {
        for slot in self.tcp.ids() {
            if let Some(c) = self.tcp.get_mut(slot) {
                c.state = ConnState::Closing;
                if let Some(fd) = c.fd {
                    self.ring.cancel_fd(fd, tok(OpKind::CancelAll, slot));
                    self.pending += 1;
                }
            }
        }
        for (f, flow) in self.flows.iter().enumerate() {
            let fd = flow.fd.as_raw_fd();
            self.ring.cancel_fd(fd, flow_tok(OpKind::UdpCancel, f, 0));
            self.pending += 1;
        }
        let deadline = Instant::now() + EXIT_GRACE;
        self.drain_until_idle(deadline);
        // Every operation is back: now the TCP sockets can be closed (UDP
        // flows' descriptors close when the flows drop, after the ring).
        for slot in self.tcp.ids() {
            if let Some(fd) = self.tcp.get_mut(slot).and_then(|c| c.fd.take()) {
                self.ring.close(fd, tok(OpKind::Close, slot));
                self.pending += 1;
            }
        }
        self.drain_until_idle(deadline);
        if self.pending > 0 {
            self.ring.leak_buffers();
            return false;
        }
        true
    }

    /// Reaps completions (returning their buffers) until nothing is pending.
    fn drain_until_idle(&mut self, deadline: Instant) {
        while self.pending > 0 && Instant::now() < deadline {
            if self
                .ring
                .submit_and_wait(Some(Duration::from_millis(20)), false)
                .is_err()
            {
                return;
            }
            self.ring.reap(&mut self.cqes);
            let mut cqes = std::mem::take(&mut self.cqes);
            for c in cqes.drain(..) {
                if c.flags & CQE_F_MORE == 0 {
                    self.pending = self.pending.saturating_sub(1);
                }
                if c.flags & CQE_F_BUFFER != 0 {
                    self.ring.release((c.flags >> 16) as u16);
                }
                // A socket whose creation was in flight: keep it so it is closed.
                if let Some(t) = Token::decode(c.user_data)
                    && t.kind == OpKind::Socket
                    && c.res >= 0
                {
                    match self.tcp.get_mut(t.slot) {
                        Some(conn) => conn.fd = Some(c.res),
                        None => {
                            self.ring.close(c.res, tok(OpKind::Close, t.slot));
                            self.pending += 1;
                        }
                    }
                }
            }
            self.cqes = cqes;
            self.ring.publish_buffers();
        }
    }
}

fn round64(n: u64) -> u64 {
    n.div_ceil(64) * 64
}
