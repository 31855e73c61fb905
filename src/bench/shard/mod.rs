//! One load-generator shard: a pinned thread with its own io_uring, provided
//! buffers and send regions, driving its share of a run's connections or
//! flows, verifying every response and recording what it measured. Like the
//! forwarder's shards it shares nothing with the others while it runs; it
//! reports progress snapshots and its final record over a channel.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::payload::{Expect, repeat_region};
use super::plan::{BenchPlan, UDP_HEADER, Workload};
use super::record::{ErrorKind, Record, new_histogram};
use crate::ring::{Cqe, RegionId, Ring, TargetId, TimeoutId};
use crate::shard::slab::Slab;
use crate::shard::token::{OpKind, SlotId, Token};
use crate::sys::socket;
use crate::tcp::Side;
use crate::verify::{PERIOD, PeriodicCheck, periodic_region, periodic_region_for};

mod tcp;
mod udp;

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
/// The same for tcp-stream, whose connections end with a FIN and read to the
/// target's FIN: what is still in flight then (socket buffers of up to
/// several MiB each way, a forwarder's pipes) takes longer to come back than
/// one response, and on a loaded host (CI) 300 ms cut a stream off with a
/// reset. The run ends as soon as every stream has seen its FIN.
const STREAM_END_GRACE_NS: u64 = 2_000_000_000;
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
    /// tcp-stream after the window: nothing more is queued; the FIN goes out
    /// once the send in flight is back.
    Finishing,
    /// tcp-stream after the window: FIN sent, reading (and dropping) until
    /// the target's FIN, so the close finds nothing unread and sends a FIN,
    /// not a reset.
    Draining,
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

/// Where the request/response modes' request bytes come from: a region
/// holding a repeating unit, so a send at any stream position is one
/// contiguous slice of it.
#[derive(Clone, Copy, Debug)]
struct TxSource {
    region: RegionId,
    /// Bytes of the repeating unit (the pattern's period, or the --payload).
    period: u64,
    /// Longest send from any offset below `period`.
    max_write: u64,
}

/// How responses are checked (and, with --payload, where one ends).
#[derive(Clone, Debug)]
enum RxCheck {
    /// The periodic verification pattern.
    Pattern,
    /// --expect: every response is `unit`; `region` holds it repeated.
    Exact { region: RegionId, unit: Arc<[u8]> },
    /// --expect-size: only the size is checked.
    Size,
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
    tx: TxSource,
    rx_check: RxCheck,
    /// udp-rr with --payload: what every reply must be (no header then).
    udp_expect: Option<Expect>,
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
            Workload::UdpRr { size, .. } => {
                // A --payload reply may be larger than its request (DNS).
                let reply = s.plan.payload.as_ref().map_or(0, |p| p.response.len());
                (round64(u64::from(size.max(reply)) + 64), local * 4)
            }
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
        // A stream's write of `--size` bytes is one contiguous window of it.
        let longest_write = match w {
            Workload::TcpStream { size, .. } => size as usize,
            _ => PERIOD,
        };
        let pattern = ring.add_region(periodic_region_for(longest_write));
        let (tx, rx_check, udp_expect) = match &s.plan.payload {
            None => (
                TxSource {
                    region: pattern,
                    period: PERIOD as u64,
                    max_write: PERIOD as u64 - 1,
                },
                RxCheck::Pattern,
                None,
            ),
            Some(p) => {
                let bytes = repeat_region(&p.request);
                let period = p.request.len() as u64;
                let max_write = (bytes.len() as u64).saturating_sub(period).max(1);
                let tx = TxSource {
                    region: ring.add_region(bytes),
                    period,
                    max_write,
                };
                let rx = match &p.response {
                    Expect::Exact(unit) => RxCheck::Exact {
                        region: ring.add_region(repeat_region(unit)),
                        unit: unit.clone(),
                    },
                    Expect::Size(_) => RxCheck::Size,
                };
                (tx, rx, Some(p.response.clone()))
            }
        };
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
            tx,
            rx_check,
            udp_expect,
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
            match &s.plan.payload {
                // --payload: the datagram is the user's bytes, with no header.
                Some(p) => slot.copy_from_slice(&p.request),
                None => {
                    // The payload after the header is the pattern from offset 0: what
                    // every reply is checked against.
                    let body = UDP_HEADER as usize;
                    slot[..4].copy_from_slice(&UDP_MAGIC);
                    slot[body..].copy_from_slice(&pattern[..size - body]);
                }
            }
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
        // After the window: UDP replies still count, TCP requests in flight
        // are let finish and streams are ended with a FIN and read to the
        // target's FIN, so connections end with a clean close, not a reset
        // from unread bytes. Past `stop_at` whatever is left is cut off.
        let grace = match self.w {
            Workload::TcpStream { .. } => STREAM_END_GRACE_NS,
            _ => END_GRACE_NS.min(self.timeout_ns),
        };
        let stop_at = self.clock.end + grace;
        self.begin(now);
        loop {
            if now >= self.clock.end {
                self.finish_streams();
            }
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
            // Every stream has seen the target's FIN and is closing.
            Workload::TcpStream { .. } => self.tcp.ids().into_iter().all(|slot| {
                self.tcp
                    .get(slot)
                    .is_none_or(|c| c.state == ConnState::Closing)
            }),
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
        if let Some(b) = bid {
            // Out of the ring until released: a second release is refused.
            self.ring.lend(b);
        }
        if self.w.is_udp() {
            self.udp_cqe(t, c.res, bid, more, now);
        } else {
            self.tcp_cqe(t, c.res, bid, more, now);
        }
    }

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
                    let bid = (c.flags >> 16) as u16;
                    self.ring.lend(bid);
                    self.ring.release(bid);
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
