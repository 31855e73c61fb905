//! The forwarding connection: connect to a target its listener's balancer
//! picks (the next one on refusal or timeout), then relay both directions, forward
//! half-closes and resets, and enforce idle and half-close timeouts. Inputs
//! are completions and the time; outputs are `ConnOp`s.
//!
//! Each direction relays through the shard's buffers ([`Pipe`]) or, for bulk
//! transfers, through a kernel pipe with splice ([`SpliceDir`]); see
//! [`Dir`] for how it moves between the two without reordering a byte.

use super::Emit;
use super::cx::Cx;
use super::front::{Front, FrontConfig, Learnt, Step};
use super::handshake;
use super::lifecycle::SockState;
use super::pipe::{Fin, Pipe, RecvState, Sent};
use super::rate::{Limit, Quota};
use super::splice::{PipeId, SWITCH_AFTER_FULL, SpliceConfig, SpliceDir, SpliceMode, Spliced};
use super::{ConnOp, FrontRead, RecvEvent, Side, errno};
use crate::front::proxy::{self as proxy_header, Proto};
use crate::stats::{CloseReason, Counter};
use crate::time::Millis;
use crate::upstream::{Attempts, Outcome, Target};
use std::net::SocketAddr;

mod associate;
mod named;
use named::{Named, ReplyQueue};

/// Which PROXY header, if any, goes to the upstream before the first byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyOut {
    #[default]
    Off,
    V1,
    V2,
}

/// The accepted socket's own endpoints, when the shard read them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ends {
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// `transparent = "redirect"`: the destination before NAT rewrote it
    /// (`SO_ORIGINAL_DST`).
    pub original: Option<SocketAddr>,
}

/// Per-listener settings a relay needs, in the units the state machine uses.
#[derive(Clone, Copy, Debug)]
pub struct RelayConfig {
    pub idle_ms: Millis,
    pub half_close_ms: Millis,
    /// High watermark: buffers queued per direction before receiving pauses.
    pub cap: u32,
    /// The prefix read before connecting (none by default).
    pub front: FrontConfig,
    pub send_proxy: ProxyOut,
    /// `bandwidth_limit`: bytes per second, per direction (none: unlimited).
    pub bandwidth: Option<u64>,
}

/// How much a client whose upstream could not be reached may still send
/// after its FIN before the relay closes anyway. Closing a socket with unread
/// data makes the kernel send a reset, which the client sees as
/// `ECONNRESET` instead of the end of the stream; HAProxy and NGINX answer a
/// dead upstream with a FIN, so the relay reads and discards what the client
/// already sent (a request, typically a few KiB) until its FIN. Bounded so a
/// client that keeps sending cannot hold the connection: 64 KiB covers any
/// request head and a small body.
pub const LINGER_MAX_BYTES: u64 = 64 * 1024;
/// How long the relay waits for that client's FIN (see [`LINGER_MAX_BYTES`]):
/// a client that reads the FIN answers within a round trip; one second covers
/// a slow peer without holding the descriptor for long.
pub const LINGER_MS: Millis = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the prefix the listener asks for (`front`) before choosing
    /// where to go.
    Front,
    /// Waiting for the shard's resolver to answer the name the client asked for.
    Resolving {
        until: Millis,
    },
    Connecting,
    Relaying,
    /// No upstream could be reached: the client got a FIN and what it sends
    /// is read and discarded until its FIN, `until`, or `LINGER_MAX_BYTES`.
    Lingering {
        until: Millis,
        discarded: u64,
    },
    /// The client was refused: its reply is being sent, then it gets a FIN
    /// (or is closed at `until` if it does not take the reply).
    Refusing {
        until: Millis,
    },
    /// SOCKS5 UDP ASSOCIATE: waiting for the shard to open the association.
    Associating {
        until: Millis,
    },
    /// The association is open; the control connection is only watched for
    /// its end. No idle deadline of its own: the association's
    /// `udp_idle_timeout` ends both.
    Associated,
    Closing,
}

/// How the sockets are closed when the connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// FIN on both sides (normal end, timeouts, failed connects, shutdown).
    Graceful,
    /// `side` reset or failed: the other side gets a reset (SO_LINGER 0).
    Reset { side: Side },
}

/// How one direction moves its bytes.
///
/// `Buffered` → `Switching` → `Spliced` keeps byte order: the multishot
/// receive is cancelled, what it already delivered is sent, and only once the
/// receive's final completion is back and the queue is empty does the first
/// splice read the socket. `Spliced` → `Buffered` happens only with the pipe
/// empty and no splice in flight.
#[derive(Debug)]
enum Dir {
    /// Through the shard's buffers; `full` counts consecutive receives that
    /// filled a whole buffer (auto mode asks for a pipe at `SWITCH_AFTER_FULL`).
    Buffered {
        pipe: Pipe,
        full: u32,
    },
    /// Leaving the buffers for the kernel pipe `grant`: the receive is being
    /// stopped and the queue sent.
    Switching {
        pipe: Pipe,
        grant: PipeId,
    },
    Spliced(SpliceDir),
}

impl Dir {
    fn fin(&self) -> Fin {
        match self {
            Dir::Buffered { pipe, .. } | Dir::Switching { pipe, .. } => pipe.fin(),
            Dir::Spliced(s) => s.fin(),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Dir::Buffered { pipe, .. } | Dir::Switching { pipe, .. } => pipe.bytes,
            Dir::Spliced(s) => s.bytes,
        }
    }

    /// The buffer path, if this direction is on it.
    fn buffers(&mut self) -> Option<&mut Pipe> {
        match self {
            Dir::Buffered { pipe, .. } | Dir::Switching { pipe, .. } => Some(pipe),
            Dir::Spliced(_) => None,
        }
    }
}

#[derive(Debug)]
pub struct Relay {
    phase: Phase,
    /// dirs[Client] carries client→upstream, dirs[Upstream] upstream→client.
    dirs: [Dir; 2],
    cfg: RelayConfig,
    splice: SpliceConfig,
    /// The target of the current (or last) attempt.
    target: Option<Target>,
    /// This connection's walk through its balancer (attempts made so far).
    walk: Attempts,
    last_activity: Millis,
    first_eof: Option<Side>,
    reason: Option<CloseReason>,
    /// Last errno worth logging with the close.
    last_errno: Option<i32>,
    /// How the last attempt failed (the close reason if it was the last).
    failure: Option<CloseReason>,
    /// The front stage's state while `Phase::Front`.
    front: Option<Box<Front>>,
    /// What the front learnt (the client from a PROXY header, the SNI).
    learnt: Learnt,
    ends: Ends,
    /// `allow`/`deny` for the client a PROXY header names (checked once the front is read).
    access: Option<std::sync::Arc<crate::config::Access>>,
    /// Bytes the upstream gets before the client's stream resumes: the
    /// PROXY header `send_proxy` asks for, then what the client sent during
    /// the front. Sent from `preface_sent`; empty once sent.
    preface: Vec<u8>,
    preface_sent: usize,
    /// Of the preface, the header's bytes (not counted as relayed bytes).
    preface_header: usize,
    /// The client's bytes the preface carried to the upstream.
    preface_relayed: u64,
    /// When the first connect began and when a connect succeeded.
    connect_started: Option<Millis>,
    connected_at: Option<Millis>,
    /// Each direction's `bandwidth_limit` (by the side it reads), if any.
    limits: [Option<Limit>; 2],
    /// A client that names (or dialled) its destination.
    named: Option<Named>,
    /// Protocol replies to the client (SOCKS5, HTTP CONNECT).
    replies: ReplyQueue,
}

impl Relay {
    /// A relay for a just-accepted client that relays through buffers only;
    /// call `start` next.
    pub fn new(cfg: RelayConfig, now: Millis) -> Relay {
        Relay::with_splice(cfg, SpliceConfig::OFF, now)
    }

    /// A relay that may splice its directions as `splice` says.
    pub fn with_splice(cfg: RelayConfig, splice: SpliceConfig, now: Millis) -> Relay {
        let mut limits = cfg.bandwidth.map(|rate| Limit::new(rate, now));
        let mut limits = [limits.clone(), limits.take()];
        let mut buffered = |src: Side| {
            let mut pipe = Pipe::new(src, src.other(), cfg.cap);
            if let Some(l) = limits[src.index()].as_mut() {
                pipe.set_quota(l.quota(now));
            }
            Dir::Buffered { pipe, full: 0 }
        };
        Relay {
            phase: Phase::Connecting,
            dirs: [buffered(Side::Client), buffered(Side::Upstream)],
            cfg,
            splice,
            target: None,
            walk: Attempts::default(),
            last_activity: now,
            first_eof: None,
            reason: None,
            last_errno: None,
            failure: None,
            front: None,
            learnt: Learnt::default(),
            ends: Ends::default(),
            access: None,
            preface: Vec::new(),
            preface_sent: 0,
            preface_header: 0,
            preface_relayed: 0,
            connect_started: None,
            connected_at: None,
            limits,
            named: None,
            replies: ReplyQueue::default(),
        }
    }

    /// The accepted socket's endpoints (for `send_proxy` without a PROXY
    /// header in, and the access log).
    pub fn set_ends(&mut self, ends: Ends) {
        self.ends = ends;
    }

    /// The listener's `allow`/`deny`, to check against the client a trusted
    /// PROXY header gives (without a header's address, the peer itself).
    pub fn set_access(&mut self, access: std::sync::Arc<crate::config::Access>) {
        self.access = Some(access);
    }

    /// Begins the front stage if the listener asks for a prefix, else the
    /// first upstream attempt.
    pub fn start(&mut self, cx: &mut Cx<'_>) {
        if self.start_named(cx) {
            return;
        }
        let named = self.named.as_ref().map(|n| n.spec.clone());
        match Front::with_named(self.cfg.front, cx.now, named) {
            Some(front) => {
                self.phase = Phase::Front;
                self.front = Some(Box::new(front));
                cx.push(ConnOp::FrontRecv);
            }
            None => cx.push(ConnOp::NextTarget),
        }
    }

    /// What the front learnt (empty without a front).
    pub fn learnt(&self) -> &Learnt {
        &self.learnt
    }

    /// The SNI the client asked for, once the front is read.
    pub fn sni(&self) -> Option<&str> {
        self.learnt.sni.as_deref()
    }

    /// Milliseconds from the first connect to the connect that succeeded.
    pub fn connect_ms(&self) -> Option<Millis> {
        Some(self.connected_at?.saturating_sub(self.connect_started?))
    }

    /// Whether an upstream was reached.
    pub fn connected(&self) -> bool {
        self.connected_at.is_some()
    }

    /// The preface bytes from `offset` (for the shard to copy into a send).
    pub fn preface_from(&self, offset: u32) -> &[u8] {
        self.preface.get(offset as usize..).unwrap_or_default()
    }

    /// A front receive completed.
    pub fn handle_front(&mut self, ev: FrontRead<'_>, cx: &mut Cx<'_>) {
        if self.phase == Phase::Associated {
            return self.control_read(ev, cx);
        }
        let now = cx.now;
        let Some(front) = self.front.as_mut().filter(|_| self.phase == Phase::Front) else {
            self.after(cx);
            return;
        };
        let step = match ev {
            FrontRead::Data(bytes) => front.feed(bytes, now),
            FrontRead::NoBuffers => {
                cx.count(Counter::Enobufs);
                cx.push(ConnOp::Starved(Side::Client));
                return;
            }
            FrontRead::Eof | FrontRead::Error(_) => Step::Fail(front.eof_reason()),
            FrontRead::Cancelled => Step::Fail(CloseReason::Shutdown),
        };
        let reply = front.take_reply();
        self.queue_reply(reply, cx);
        match step {
            Step::More => cx.push(ConnOp::FrontRecv),
            Step::Done => {
                if let Some(front) = self.front.take() {
                    let (rest, learnt) = front.into_rest();
                    self.learnt = learnt;
                    self.preface = rest;
                }
                let client = self.learnt.proxied.map(|(src, _)| src).or(self.ends.peer);
                if let Some(access) = &self.access
                    && !client.is_some_and(|c| access.permits(c.ip()))
                {
                    return self.end_front(CloseReason::Denied, cx);
                }
                if self.learnt.associate.is_some() {
                    return self.associate(cx);
                }
                self.phase = Phase::Connecting;
                match self.learnt.destination.clone() {
                    Some(dst) if self.named.is_some() => self.go_to(dst, cx),
                    _ => cx.push(ConnOp::NextTarget),
                }
            }
            Step::Fail(reason) => self.end_front(reason, cx),
            Step::Refuse(reason) => self.refuse_now(reason, cx),
        }
        self.after(cx);
    }

    /// The front failed: close the client (nothing was relayed).
    fn end_front(&mut self, reason: CloseReason, cx: &mut Cx<'_>) {
        self.front = None;
        self.phase = Phase::Closing;
        self.reason = Some(reason);
        cx.doom(Side::Client, false);
        cx.doom(Side::Upstream, false);
    }

    /// The PROXY header `send_proxy` puts before the preface: the client and
    /// the address it reached, as a trusted header gave them or as the
    /// socket has them (LOCAL / UNKNOWN when neither is known).
    fn proxy_header(&self) -> Vec<u8> {
        let ends = self
            .learnt
            .proxied
            .or_else(|| Some((self.ends.peer?, self.ends.local?)));
        match (self.cfg.send_proxy, ends) {
            (ProxyOut::Off, _) => Vec::new(),
            (ProxyOut::V1, Some((src, dst))) => {
                let mut out = [0u8; proxy_header::V1_MAX_LEN];
                let n = proxy_header::write_v1(src, dst, &mut out);
                out.get(..n).unwrap_or_default().to_vec()
            }
            (ProxyOut::V1, None) => b"PROXY UNKNOWN\r\n".to_vec(),
            (ProxyOut::V2, Some((src, dst))) => {
                let mut out = [0u8; proxy_header::V2_MAX_BUILT];
                let n = proxy_header::write_v2(Proto::Tcp, src, dst, &mut out);
                out.get(..n).unwrap_or_default().to_vec()
            }
            (ProxyOut::V2, None) => {
                let mut out = [0u8; proxy_header::V2_LOCAL_LEN];
                let n = proxy_header::write_v2_local(&mut out);
                out.get(..n).unwrap_or_default().to_vec()
            }
        }
    }

    /// The target of the current (or last) attempt.
    pub fn target(&self) -> Option<Target> {
        self.target
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason
    }

    pub fn last_errno(&self) -> Option<i32> {
        self.last_errno
    }

    /// Upstream attempts made so far (the current one included).
    pub fn attempts(&self) -> u16 {
        self.walk.tried()
    }

    /// The walk through the balancer, for the shard to pick the next target.
    pub fn attempts_mut(&mut self) -> &mut Attempts {
        &mut self.walk
    }

    /// Closing: the connection is finished once its accounting says nothing
    /// is in flight and both sockets are gone.
    pub fn is_closing(&self) -> bool {
        self.phase == Phase::Closing
    }

    /// Bytes delivered (client→upstream, upstream→client).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.dirs[0].bytes() + self.preface_relayed,
            self.dirs[1].bytes(),
        )
    }

    /// When `handle_timeout` must next be called (idle or half-close
    /// inactivity, a silent splice whose pipe is to be reclaimed, or the end
    /// of a direction's bandwidth pause): the earliest wins, and every expiry
    /// re-evaluates them all.
    pub fn deadline(&self) -> Option<Millis> {
        let idle = self.idle_deadline()?;
        let reclaim = self.dirs.iter().filter_map(|d| match d {
            Dir::Spliced(s) => s.deadline(),
            Dir::Buffered { .. } | Dir::Switching { .. } => None,
        });
        let relaying = self.phase == Phase::Relaying;
        let pauses = self
            .limits
            .iter()
            .flatten()
            .filter_map(Limit::paused)
            .filter(|_| relaying);
        Some(reclaim.chain(pauses).fold(idle, Millis::min))
    }

    fn idle_deadline(&self) -> Option<Millis> {
        match self.phase {
            Phase::Relaying => {
                let limit = if self.first_eof.is_some() {
                    self.cfg.half_close_ms
                } else {
                    self.cfg.idle_ms
                };
                Some(self.last_activity.saturating_add(limit))
            }
            Phase::Lingering { until, .. }
            | Phase::Resolving { until }
            | Phase::Refusing { until }
            | Phase::Associating { until } => Some(until),
            Phase::Front => self.front.as_ref().map(|f| f.deadline()),
            Phase::Connecting | Phase::Associated | Phase::Closing => None,
        }
    }

    /// The upstream socket exists (Ok) or could not be created (Err(errno)).
    pub fn handle_socket(&mut self, res: Result<(), i32>, now: Millis, cx: &mut Cx<'_>) {
        match res {
            Ok(()) => {
                cx.life.set_state(Side::Upstream, SockState::Open);
                if self.phase != Phase::Connecting {
                    cx.doom(Side::Upstream, false);
                    return;
                }
                match self.target {
                    Some(target) => cx.push(ConnOp::Connect { target }),
                    None => self.linger(CloseReason::ConnectError, now, cx),
                }
            }
            Err(e) => {
                cx.count(Counter::ConnectErrors);
                self.last_errno = Some(e);
                self.report(Outcome::Error, cx);
                if self.phase == Phase::Connecting {
                    self.linger(CloseReason::ConnectError, now, cx);
                } else {
                    self.after(cx);
                }
            }
        }
    }

    /// The connect finished: Ok, or Err(errno) (ECANCELED = connect_timeout fired).
    pub fn handle_connect(&mut self, res: Result<(), i32>, now: Millis, cx: &mut Cx<'_>) {
        if self.phase != Phase::Connecting {
            self.after(cx);
            return;
        }
        let failure = match res {
            Ok(()) => {
                self.report(Outcome::Connected, cx);
                self.phase = Phase::Relaying;
                self.last_activity = now;
                self.connected_at = Some(now);
                // What the client sent during the front goes out in the
                // preface: its bytes count against the client's limit.
                let early = self.preface.len() as u64;
                if early > 0 {
                    self.charge(Side::Client, early, now, cx);
                }
                let header = self.proxy_header();
                if !header.is_empty() {
                    self.preface_header = header.len();
                    let rest = std::mem::take(&mut self.preface);
                    self.preface = header;
                    self.preface.extend_from_slice(&rest);
                }
                // A named client gets its reply before the upstream's bytes.
                if !self.connected_named(cx) {
                    self.start_direction(Side::Upstream, cx);
                }
                if self.preface.is_empty() {
                    self.start_direction(Side::Client, cx);
                } else {
                    // The client's stream resumes once the preface is sent.
                    cx.push(ConnOp::SendPreface { offset: 0 });
                }
                return;
            }
            Err(errno::ECANCELED) => {
                cx.count(Counter::ConnectTimeouts);
                self.report(Outcome::Timeout, cx);
                CloseReason::ConnectTimeout
            }
            Err(errno::ECONNREFUSED) => {
                cx.count(Counter::ConnectRefused);
                self.report(Outcome::Refused, cx);
                CloseReason::ConnectRefused
            }
            Err(_) => {
                cx.count(Counter::ConnectErrors);
                self.report(Outcome::Error, cx);
                CloseReason::ConnectError
            }
        };
        if let Err(e) = res {
            self.last_errno = Some(e);
        }
        // The failed socket is closed on its own; the next attempt gets a fresh one.
        cx.life.set_state(Side::Upstream, SockState::Absent);
        cx.push(ConnOp::Discard);
        self.next_attempt(failure, cx);
    }

    /// Starts relaying the direction that reads `side`.
    fn start_direction(&mut self, side: Side, cx: &mut Cx<'_>) {
        if self.splice.mode == SpliceMode::Always {
            cx.push(ConnOp::WantPipe(side));
        } else if let Some(p) = self.dirs[side.index()].buffers() {
            p.arm_if_allowed(cx);
        }
    }

    /// A preface send completed: go on with the rest, or start the client's
    /// direction once it is all sent.
    fn preface_sent(&mut self, res: Result<u32, i32>, now: Millis, cx: &mut Cx<'_>) {
        match res {
            Ok(n) if n > 0 && self.phase == Phase::Relaying => {
                let before = self.preface_sent;
                self.preface_sent = (self.preface_sent + n as usize).min(self.preface.len());
                // The header is not the client's bytes.
                let relayed = self
                    .preface_sent
                    .saturating_sub(self.preface_header.max(before));
                cx.add(Counter::BytesC2u, relayed as u64);
                self.preface_relayed += relayed as u64;
                self.last_activity = now;
                if self.preface_sent < self.preface.len() {
                    cx.count(Counter::ShortSends);
                    let offset = u32::try_from(self.preface_sent).unwrap_or(u32::MAX);
                    cx.push(ConnOp::SendPreface { offset });
                } else {
                    self.preface = Vec::new();
                    self.start_direction(Side::Client, cx);
                }
            }
            Ok(_) | Err(_) => {
                self.preface = Vec::new();
                if self.phase != Phase::Closing {
                    let e = res.err().unwrap_or(libc::EIO);
                    self.last_errno = Some(e);
                    let reason = reset_reason(Side::Upstream, e);
                    self.begin_close(
                        reason,
                        Ending::Reset {
                            side: Side::Upstream,
                        },
                        cx,
                    );
                }
            }
        }
        self.after(cx);
    }

    /// The connect's linked timeout completed (fired, or cancelled by the connect).
    pub fn handle_connect_timeout(&mut self, cx: &mut Cx<'_>) {
        self.after(cx);
    }

    fn report(&self, outcome: Outcome, cx: &mut Cx<'_>) {
        if let Some(target) = self.target {
            cx.push(ConnOp::Report { target, outcome });
        }
    }

    /// An attempt failed: ask for the next target, remembering why in case
    /// it was the last.
    fn next_attempt(&mut self, failure: CloseReason, cx: &mut Cx<'_>) {
        self.failure = Some(failure);
        if self.named.is_some() {
            // The next address the client's destination resolved to.
            return self.next_named(cx);
        }
        cx.push(ConnOp::NextTarget);
    }

    /// The shard's answer to `NextTarget`: the target to try next, or `None`
    /// when the balancer has none left for this connection (every upstream
    /// was tried): then the client gets a FIN (see [`linger`](Self::linger)).
    pub fn handle_target(&mut self, target: Option<Target>, cx: &mut Cx<'_>) {
        if self.phase != Phase::Connecting {
            return;
        }
        match target {
            Some(t) => {
                // An attempt is a target taken, whether its socket, its
                // connect or a stop ends it (the upstream counts the same).
                cx.count(Counter::ConnectAttempts);
                self.connect_started.get_or_insert(cx.now);
                self.target = Some(t);
                cx.push(ConnOp::OpenUpstream { target: t });
            }
            None => {
                let reason = self.failure.unwrap_or(CloseReason::ConnectError);
                self.linger(reason, cx.now, cx);
            }
        }
    }

    /// Every upstream failed: FIN to the client, then read and discard what
    /// it sent (see [`LINGER_MAX_BYTES`]) so the close does not reset it.
    /// The connection is counted under `reason` whatever ends the lingering.
    fn linger(&mut self, reason: CloseReason, now: Millis, cx: &mut Cx<'_>) {
        self.reason = Some(reason);
        self.phase = Phase::Lingering {
            until: now.saturating_add(LINGER_MS),
            discarded: 0,
        };
        {
            // Nothing was relayed; this stops the pipes from forwarding the
            // client's FIN to the upstream that never was.
            for d in &mut self.dirs {
                if let Some(p) = d.buffers() {
                    p.release_unsent(cx);
                }
            }
            cx.push(ConnOp::Shutdown(Side::Client));
            cx.push(ConnOp::ArmRecv(Side::Client));
        }
    }

    /// A receive completion while lingering: data is released at once (an
    /// idle lingering client holds no buffer); its FIN, an error, the byte
    /// bound or a receive that cannot continue ends the lingering.
    fn linger_recv(&mut self, ev: RecvEvent, more: bool, cx: &mut Cx<'_>) {
        let Phase::Lingering { until, discarded } = self.phase else {
            return;
        };
        match ev {
            RecvEvent::Data { bid, len } => {
                let discarded = discarded.saturating_add(u64::from(len));
                self.phase = Phase::Lingering { until, discarded };
                {
                    cx.push(ConnOp::Release(bid));
                    if !more && discarded < LINGER_MAX_BYTES {
                        cx.push(ConnOp::ArmRecv(Side::Client));
                    }
                }
                if discarded >= LINGER_MAX_BYTES {
                    self.end_linger(cx);
                }
            }
            RecvEvent::NoBuffers => {
                cx.count(Counter::Enobufs);
                cx.push(ConnOp::Starved(Side::Client));
            }
            RecvEvent::Eof | RecvEvent::Cancelled | RecvEvent::Error(_) => self.end_linger(cx),
        }
    }

    /// Lingering is over: close the client (a FIN was already sent).
    fn end_linger(&mut self, cx: &mut Cx<'_>) {
        if let Phase::Lingering { .. } = self.phase {
            self.phase = Phase::Closing;
            cx.doom(Side::Client, false);
            cx.doom(Side::Upstream, false);
        }
    }

    /// A receive completion on `side`; `more` is IORING_CQE_F_MORE.
    pub fn handle_recv(
        &mut self,
        side: Side,
        ev: RecvEvent,
        more: bool,
        now: Millis,
        cx: &mut Cx<'_>,
    ) {
        if let Phase::Lingering { .. } = self.phase {
            self.linger_recv(ev, more, cx);
            self.after(cx);
            return;
        }
        let closing = self.phase == Phase::Closing;
        if self.dirs[side.index()].buffers().is_none() {
            // A spliced direction has no receive (it splices only after its
            // receive's final completion). Data here would have to be
            // dropped: end the connection rather than truncate the stream.
            if let RecvEvent::Data { bid, .. } = ev {
                cx.push(ConnOp::Release(bid));
                self.begin_close(CloseReason::Error, Ending::Reset { side }, cx);
            }
            self.after(cx);
            return;
        }
        match ev {
            RecvEvent::Data { bid, len } => {
                if !closing {
                    self.last_activity = now;
                    // Before the pipe sees the data: it re-arms the receive
                    // at once, sized by the quota this sets.
                    self.charge(side, u64::from(len), now, cx);
                }
                {
                    if let Some(p) = self.dirs[side.index()].buffers()
                        && p.on_data(bid, len, more && !closing, cx)
                    {
                        cx.count(Counter::RecvPaused);
                    }
                }
                if !closing {
                    self.count_full(side, len, cx);
                }
            }
            RecvEvent::Eof => {
                {
                    if let Some(p) = self.dirs[side.index()].buffers() {
                        p.on_recv_end(RecvState::Ended, cx)
                    }
                }
                if !closing && self.first_eof.is_none() {
                    self.first_eof = Some(side);
                    self.last_activity = now;
                }
            }
            RecvEvent::NoBuffers => {
                cx.count(Counter::Enobufs);
                let state = if closing {
                    RecvState::Ended
                } else {
                    RecvState::Starved
                };
                self.recv_ended(side, state, cx);
            }
            RecvEvent::Cancelled => {
                let state = if closing {
                    RecvState::Ended
                } else {
                    RecvState::Stopped
                };
                self.recv_ended(side, state, cx);
            }
            RecvEvent::Error(e) => {
                // Close first: a broken stream must not be ended with a FIN
                // (which the pipe would forward for a plain end of input).
                if !closing {
                    self.last_errno = Some(e);
                    let reason = reset_reason(side, e);
                    self.begin_close(reason, Ending::Reset { side }, cx);
                }
                self.recv_ended(side, RecvState::Ended, cx);
            }
        }
        self.progress_switch(side, now, cx);
        self.after(cx);
    }

    fn recv_ended(&mut self, side: Side, state: RecvState, cx: &mut Cx<'_>) {
        {
            if let Some(p) = self.dirs[side.index()].buffers() {
                p.on_recv_end(state, cx)
            }
        }
    }

    /// Auto mode (and always mode after a refused pipe): a direction whose
    /// receives keep filling whole buffers asks for a pipe. A receive that
    /// does not fill its buffer ends the run of *both* directions: on its own
    /// side the source's queue ran dry (the burst ended); on the other side
    /// the peer spoke in between, a message of a request/response exchange,
    /// so the bursts of this side are responses, not one stream (measured:
    /// 64 KiB responses are slower spliced than buffered, see `SWITCH_AFTER_FULL`).
    fn count_full(&mut self, side: Side, len: u32, cx: &mut Cx<'_>) {
        if self.splice.mode == SpliceMode::Off || self.phase != Phase::Relaying {
            return;
        }
        if len < self.splice.buffer_size {
            for d in &mut self.dirs {
                if let Dir::Buffered { full, .. } = d {
                    *full = 0;
                }
            }
            return;
        }
        if let Dir::Buffered { pipe, full } = &mut self.dirs[side.index()] {
            if pipe.src_ended() {
                *full = 0;
                return;
            }
            *full += 1;
            if *full >= SWITCH_AFTER_FULL {
                *full = 0;
                cx.push(ConnOp::WantPipe(side));
            }
        }
    }

    /// The shard's answer to `WantPipe(side)`: a pipe, or `None` when its
    /// budget is spent (the direction stays on buffers, as HAProxy does past
    /// `maxpipes`).
    pub fn handle_pipe(&mut self, side: Side, grant: Option<PipeId>, now: Millis, cx: &mut Cx<'_>) {
        let i = side.index();
        let Some(grant) = grant else {
            cx.count(Counter::PipesExhausted);
            if self.phase == Phase::Relaying {
                {
                    if let Some(p) = self.dirs[i].buffers() {
                        p.arm_if_allowed(cx);
                    }
                }
            }
            return;
        };
        let eligible = self.phase == Phase::Relaying
            && matches!(&self.dirs[i], Dir::Buffered { pipe, .. }
                if !pipe.src_ended() && !pipe.discarding() && pipe.fin() == Fin::Open);
        if !eligible {
            cx.push(ConnOp::ReturnPipe {
                pipe: grant,
                clean: true,
            });
            return;
        }
        let placeholder = Dir::Buffered {
            pipe: Pipe::new(side, side.other(), 1),
            full: 0,
        };
        if let Dir::Buffered { mut pipe, .. } = std::mem::replace(&mut self.dirs[i], placeholder) {
            pipe.stop_receiving(cx);
            self.dirs[i] = Dir::Switching { pipe, grant };
        }
        self.progress_switch(side, now, cx);
    }

    /// Moves a switching direction on: to a splice once its buffer path is
    /// parked and drained, or back to buffers (pipe returned unused) if its
    /// source ended meanwhile or the connection is ending.
    fn progress_switch(&mut self, side: Side, now: Millis, cx: &mut Cx<'_>) {
        let i = side.index();
        let (ready, abort) = match &self.dirs[i] {
            Dir::Switching { pipe, .. } => (
                pipe.ready_to_splice(),
                pipe.src_ended() || pipe.discarding() || self.phase != Phase::Relaying,
            ),
            Dir::Buffered { .. } | Dir::Spliced(_) => return,
        };
        if !ready && !abort {
            return;
        }
        let placeholder = Dir::Buffered {
            pipe: Pipe::new(side, side.other(), 1),
            full: 0,
        };
        let Dir::Switching { pipe, grant } = std::mem::replace(&mut self.dirs[i], placeholder)
        else {
            return;
        };
        if abort {
            cx.push(ConnOp::ReturnPipe {
                pipe: grant,
                clean: true,
            });
            self.dirs[i] = Dir::Buffered { pipe, full: 0 };
            return;
        }
        cx.count(Counter::SpliceSwitched);
        let splice = self.splice;
        let bytes = pipe.bytes;
        let quota = self.quota_now(side, now);
        let d = SpliceDir::start(side, side.other(), grant, splice, bytes, quota, now, cx);
        self.dirs[i] = Dir::Spliced(d);
    }

    /// The splice into the pipe of the direction reading `side` completed.
    pub fn handle_splice_in(
        &mut self,
        side: Side,
        res: Result<u32, i32>,
        now: Millis,
        cx: &mut Cx<'_>,
    ) {
        let mut outcome = None;
        {
            if let Dir::Spliced(s) = &mut self.dirs[side.index()] {
                outcome = Some(s.on_in(res, now, cx));
            }
        }
        if let Some(outcome) = outcome {
            if let Spliced::Moved { bytes, .. } = outcome
                && bytes > 0
            {
                cx.count(Counter::SplicesIn);
                if self.phase != Phase::Closing {
                    self.charge(side, u64::from(bytes), now, cx);
                }
            }
            self.spliced(side, outcome, now, cx);
        }
        self.after(cx);
    }

    /// The splice out of the pipe to `side`'s socket completed.
    pub fn handle_splice_out(
        &mut self,
        side: Side,
        res: Result<u32, i32>,
        now: Millis,
        cx: &mut Cx<'_>,
    ) {
        let src = side.other();
        let before = self.dirs[src.index()].bytes();
        let mut outcome = None;
        {
            if let Dir::Spliced(s) = &mut self.dirs[src.index()] {
                outcome = Some(s.on_out(res, now, cx));
            }
        }
        // Counted from the direction's total: a splice out that ends in a
        // revert moved bytes too.
        let moved = self.dirs[src.index()].bytes().saturating_sub(before);
        if moved > 0 {
            if self.phase != Phase::Closing {
                self.last_activity = now;
            }
            cx.count(Counter::SplicesOut);
            match side {
                Side::Upstream => cx.add(Counter::BytesC2u, moved),
                Side::Client => cx.add(Counter::BytesU2c, moved),
            }
        }
        if let Some(outcome) = outcome {
            if let Spliced::Moved { short: true, .. } = outcome {
                cx.count(Counter::ShortSends);
            }
            self.spliced(src, outcome, now, cx);
        }
        self.after(cx);
    }

    /// What a splice completion of the direction reading `src` means for the connection.
    fn spliced(&mut self, src: Side, outcome: Spliced, now: Millis, cx: &mut Cx<'_>) {
        let closing = self.phase == Phase::Closing;
        match outcome {
            Spliced::Moved { bytes, .. } => {
                if bytes > 0 && !closing {
                    self.last_activity = now;
                }
            }
            Spliced::Reverted | Spliced::Ended => {
                if outcome == Spliced::Reverted {
                    cx.count(Counter::SpliceReverted);
                }
                let bytes = self.dirs[src.index()].bytes();
                let mut pipe = Pipe::resumed(src, src.other(), self.cfg.cap, bytes);
                pipe.set_quota(self.quota_now(src, now));
                if closing {
                    pipe.release_unsent(cx);
                } else {
                    pipe.arm_if_allowed(cx);
                }
                self.dirs[src.index()] = Dir::Buffered { pipe, full: 0 };
            }
            Spliced::Failed { side, errno } => {
                if !closing {
                    self.last_errno = Some(errno);
                    self.begin_close(reset_reason(side, errno), Ending::Reset { side }, cx);
                }
            }
            Spliced::Invalid => {
                if !closing {
                    self.begin_close(CloseReason::Error, Ending::Reset { side: src.other() }, cx);
                }
            }
        }
    }

    /// A send on `side` completed: Ok(bytes) or Err(errno).
    pub fn handle_sent(&mut self, side: Side, res: Result<u32, i32>, now: Millis, cx: &mut Cx<'_>) {
        if side == Side::Client && self.replies.busy() {
            // The only send to the client while a reply is pending.
            return self.reply_sent(res, cx);
        }
        if side == Side::Upstream && !self.preface.is_empty() {
            // The only send to the upstream while a preface is pending.
            self.preface_sent(res, now, cx);
            return;
        }
        let src = side.other();
        match res {
            Ok(n) if n > 0 => {
                if self.phase != Phase::Closing {
                    self.last_activity = now;
                }
                let mut outcome = Sent::Invalid;
                {
                    if let Some(p) = self.dirs[src.index()].buffers() {
                        outcome = p.on_sent(n, cx);
                    }
                }
                match side {
                    Side::Upstream => cx.add(Counter::BytesC2u, u64::from(n)),
                    Side::Client => cx.add(Counter::BytesU2c, u64::from(n)),
                }
                match outcome {
                    Sent::Progress { short } => {
                        if short {
                            cx.count(Counter::ShortSends);
                        }
                    }
                    Sent::Invalid => {
                        self.begin_close(CloseReason::Error, Ending::Reset { side }, cx)
                    }
                }
                self.progress_switch(src, now, cx);
            }
            Ok(_) | Err(_) => {
                {
                    if let Some(p) = self.dirs[src.index()].buffers() {
                        p.on_send_failed(cx)
                    }
                }
                if self.phase != Phase::Closing {
                    let e = res.err().unwrap_or(libc::EIO);
                    self.last_errno = Some(e);
                    self.begin_close(reset_reason(side, e), Ending::Reset { side }, cx);
                }
            }
        }
        self.after(cx);
    }

    /// The FIN forwarded to `side` (shutdown SHUT_WR) completed.
    pub fn handle_shutdown(&mut self, side: Side, res: Result<(), i32>, cx: &mut Cx<'_>) {
        if let Phase::Lingering { .. } = self.phase {
            // The client reset already: nothing to wait for.
            if res.is_err() {
                self.end_linger(cx);
            }
            return;
        }
        let src = side.other();
        match &mut self.dirs[src.index()] {
            Dir::Buffered { pipe, .. } | Dir::Switching { pipe, .. } => pipe.on_fin_sent(),
            Dir::Spliced(s) => s.on_fin_sent(),
        }
        if self.phase != Phase::Closing {
            match res {
                Ok(()) => {
                    if self.dirs.iter().all(|d| d.fin() == Fin::Done) {
                        let reason = match self.first_eof {
                            Some(Side::Upstream) => CloseReason::UpstreamEof,
                            _ => CloseReason::ClientEof,
                        };
                        self.begin_close(reason, Ending::Graceful, cx);
                    }
                }
                Err(e) => {
                    self.last_errno = Some(e);
                    self.begin_close(reset_reason(side, e), Ending::Reset { side }, cx);
                }
            }
        }
        self.after(cx);
    }

    /// A cancel this relay issued completed (its result does not matter: the
    /// cancelled operation reports its own end).
    pub fn handle_cancel(&mut self, cx: &mut Cx<'_>) {
        self.after(cx);
    }

    /// Buffers returned to the shard's ring: a starved receive on `side` retries.
    pub fn handle_buffers(&mut self, side: Side, cx: &mut Cx<'_>) {
        if let (Phase::Front | Phase::Associated, Side::Client) = (self.phase, side) {
            cx.push(ConnOp::FrontRecv);
            return;
        }
        if let (Phase::Lingering { .. }, Side::Client) = (self.phase, side) {
            cx.push(ConnOp::ArmRecv(Side::Client));
            return;
        }
        if self.phase == Phase::Relaying {
            {
                if let Some(p) = self.dirs[side.index()].buffers() {
                    p.on_buffers(cx)
                }
            }
        }
    }

    /// Time passed; reclaims the pipes of silent splices, and ends the
    /// connection if its idle or half-close deadline is due.
    pub fn handle_timeout(&mut self, now: Millis, cx: &mut Cx<'_>) {
        if self.phase == Phase::Front {
            let due = self.front.as_ref().filter(|f| f.deadline() <= now);
            if let Some(reason) = due.map(|f| f.timeout_reason()) {
                self.end_front(reason, cx);
            }
            return;
        }
        if let Phase::Lingering { until, .. } = self.phase {
            if until <= now {
                self.end_linger(cx);
            }
            return;
        }
        match self.phase {
            Phase::Resolving { until } if until <= now => {
                let timeout = handshake::Outcome::Unresolved(handshake::ResolveFail::Timeout);
                return self.refuse(timeout, cx);
            }
            Phase::Refusing { until } if until <= now => {
                let reason = self.reason.unwrap_or(CloseReason::Error);
                return self.end_front(reason, cx);
            }
            Phase::Associating { until } if until <= now => {
                let errno = libc::ETIMEDOUT;
                return self.refuse(handshake::Outcome::Failed { errno }, cx);
            }
            Phase::Resolving { .. }
            | Phase::Refusing { .. }
            | Phase::Associating { .. }
            | Phase::Associated => return,
            _ => {}
        }
        if self.phase == Phase::Relaying {
            self.resume_paused(now, cx);
            {
                for d in &mut self.dirs {
                    if let Dir::Spliced(s) = d {
                        s.on_timer(now, cx);
                    }
                }
            }
        }
        if let Some(d) = self.idle_deadline()
            && d <= now
        {
            let reason = if self.first_eof.is_some() {
                CloseReason::HalfCloseTimeout
            } else {
                CloseReason::IdleTimeout
            };
            self.begin_close(reason, Ending::Graceful, cx);
        }
    }

    /// Ends the connection now (shutdown after drain_timeout).
    pub fn abort(&mut self, reason: CloseReason, cx: &mut Cx<'_>) {
        if matches!(
            self.phase,
            Phase::Front
                | Phase::Resolving { .. }
                | Phase::Refusing { .. }
                | Phase::Associating { .. }
                | Phase::Associated
        ) {
            let reason = self.reason.unwrap_or(reason);
            self.end_front(reason, cx);
            return;
        }
        if let Phase::Lingering { .. } = self.phase {
            // Counted under the connect failure that started the lingering.
            self.end_linger(cx);
            return;
        }
        self.begin_close(reason, Ending::Graceful, cx);
    }

    /// The quota of the direction reading `side` now (unlimited without a
    /// `bandwidth_limit`). A pause moves the idle clock to its end: a
    /// direction waiting for tokens is not idle, and idle and half-close
    /// timeouts count from when it may read again.
    fn quota_now(&mut self, side: Side, now: Millis) -> Quota {
        let Some(limit) = self.limits[side.index()].as_mut() else {
            return Quota::Unlimited;
        };
        let quota = limit.quota(now);
        if let Some(until) = limit.paused()
            && self.phase != Phase::Closing
        {
            self.last_activity = self.last_activity.max(until);
        }
        quota
    }

    /// Hands the direction reading `side` its current quota, on whichever
    /// path it is (it applies from its next receive or splice in).
    fn requota(&mut self, side: Side, now: Millis) {
        if self.limits[side.index()].is_none() {
            return;
        }
        let quota = self.quota_now(side, now);
        match &mut self.dirs[side.index()] {
            Dir::Buffered { pipe, .. } | Dir::Switching { pipe, .. } => pipe.set_quota(quota),
            Dir::Spliced(s) => s.set_quota(quota),
        }
    }

    /// Takes `bytes` just read from `side` out of its bucket.
    fn charge(&mut self, side: Side, bytes: u64, now: Millis, cx: &mut Cx<'_>) {
        if let Some(limit) = self.limits[side.index()].as_mut() {
            if limit.charge(bytes, now) == Quota::Paused {
                cx.count(Counter::BandwidthPaused);
            }
            self.requota(side, now);
        }
    }

    /// Directions whose pause is over read again: the receive or splice in
    /// held back is issued (the receive only if its queue allows, else its
    /// next send completion arms it).
    fn resume_paused(&mut self, now: Millis, cx: &mut Cx<'_>) {
        for side in [Side::Client, Side::Upstream] {
            let i = side.index();
            if !self.limits[i].as_ref().is_some_and(|l| l.due(now)) {
                continue;
            }
            self.requota(side, now);
            match &mut self.dirs[i] {
                Dir::Buffered { pipe, .. } => pipe.arm_if_allowed(cx),
                Dir::Spliced(s) => s.resume(now, cx),
                // Parked for a splice: it starts with the quota then.
                Dir::Switching { .. } => {}
            }
        }
    }

    fn begin_close(&mut self, reason: CloseReason, ending: Ending, cx: &mut Cx<'_>) {
        if self.phase == Phase::Closing {
            return;
        }
        self.phase = Phase::Closing;
        self.reason = Some(reason);
        {
            for d in &mut self.dirs {
                match d {
                    Dir::Buffered { pipe, .. } => pipe.release_unsent(cx),
                    Dir::Switching { pipe, grant } => {
                        // The grant was never used: back to the pool, and the
                        // direction ends on its buffer path.
                        pipe.release_unsent(cx);
                        cx.push(ConnOp::ReturnPipe {
                            pipe: *grant,
                            clean: true,
                        });
                        let pipe =
                            std::mem::replace(pipe, Pipe::new(Side::Client, Side::Upstream, 1));
                        *d = Dir::Buffered { pipe, full: 0 };
                    }
                    Dir::Spliced(s) => s.close(cx),
                }
            }
        }
        for side in [Side::Client, Side::Upstream] {
            let linger0 = matches!(ending, Ending::Reset { side: s } if s != side);
            cx.doom(side, linger0);
        }
    }

    /// After any completion: while closing, close sockets nothing uses any more.
    fn after(&mut self, cx: &mut Cx<'_>) {
        if self.phase == Phase::Closing {
            cx.close_when_idle();
        }
    }

    /// True when no provided buffer is held by this connection.
    pub fn holds_no_buffers(&self) -> bool {
        self.dirs.iter().all(|d| match d {
            Dir::Buffered { pipe, .. } | Dir::Switching { pipe, .. } => pipe.holds_no_buffers(),
            Dir::Spliced(_) => true,
        })
    }

    /// True when no kernel pipe is lent to this connection.
    pub fn holds_no_pipes(&self) -> bool {
        self.dirs.iter().all(|d| match d {
            Dir::Buffered { .. } => true,
            Dir::Switching { .. } => false,
            Dir::Spliced(s) => !s.holds_pipe(),
        })
    }
}

/// A reset from the peer is `*Reset`; anything else broken is `Error`.
/// ENOTCONN counts as a reset: it is what shutdown(2) returns once the peer's
/// reset has already torn the connection down (a client that closed with a
/// response still in flight).
fn reset_reason(side: Side, e: i32) -> CloseReason {
    match (side, e) {
        (Side::Client, errno::ECONNRESET | errno::EPIPE | errno::ENOTCONN) => {
            CloseReason::ClientReset
        }
        (Side::Upstream, errno::ECONNRESET | errno::EPIPE | errno::ENOTCONN) => {
            CloseReason::UpstreamReset
        }
        _ => CloseReason::Error,
    }
}

#[cfg(test)]
mod tests {
    //! `bandwidth_limit` in the relay: what it issues, pauses and resumes,
    //! driven by hand (the simulator in `tests/` drives it at random).

    use super::*;
    use crate::stats::Counters;
    use crate::tcp::lifecycle::Lifecycle;
    use crate::tcp::splice::PipeId;

    const MIB: u64 = 1 << 20;
    const IDLE_MS: Millis = 10_000;

    struct Run {
        relay: Relay,
        ops: Vec<ConnOp>,
        life: Lifecycle,
        counters: Counters,
    }

    impl Run {
        /// A relay connected at time 0, and what the connect asked for.
        fn connected(bandwidth: Option<u64>, splice: SpliceConfig) -> (Run, Vec<ConnOp>) {
            let cfg = RelayConfig {
                idle_ms: IDLE_MS,
                half_close_ms: 5_000,
                cap: 4,
                front: FrontConfig::default(),
                send_proxy: ProxyOut::Off,
                bandwidth,
            };
            let mut run = Run {
                relay: Relay::with_splice(cfg, splice, 0),
                ops: Vec::new(),
                life: Lifecycle::new(SockState::Open, SockState::Absent),
                counters: Counters::default(),
            };
            let target = Target {
                upstream: None,
                addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            };
            run.step(0, |r, cx| r.start(cx));
            run.step(0, |r, cx| r.handle_target(Some(target), cx));
            run.step(0, |r, cx| r.handle_socket(Ok(()), 0, cx));
            let ops = run.step(0, |r, cx| r.handle_connect(Ok(()), 0, cx));
            (run, ops)
        }

        /// A relay whose front reads a PROXY header followed by `early`
        /// bytes of the stream, connected at time 0.
        fn connected_after_front(bandwidth: u64, early: usize) -> (Run, Vec<ConnOp>) {
            let cfg = RelayConfig {
                idle_ms: IDLE_MS,
                half_close_ms: 5_000,
                cap: 4,
                front: FrontConfig {
                    proxy_ms: Some(5_000),
                    sni_ms: None,
                    named_ms: None,
                },
                send_proxy: ProxyOut::Off,
                bandwidth: Some(bandwidth),
            };
            let mut run = Run {
                relay: Relay::new(cfg, 0),
                ops: Vec::new(),
                life: Lifecycle::new(SockState::Open, SockState::Absent),
                counters: Counters::default(),
            };
            let mut bytes = b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\n".to_vec();
            bytes.resize(bytes.len() + early, b'x');
            let target = Target {
                upstream: None,
                addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            };
            run.step(0, |r, cx| r.start(cx));
            run.step(0, |r, cx| r.handle_front(FrontRead::Data(&bytes), cx));
            run.step(0, |r, cx| r.handle_target(Some(target), cx));
            run.step(0, |r, cx| r.handle_socket(Ok(()), 0, cx));
            let ops = run.step(0, |r, cx| r.handle_connect(Ok(()), 0, cx));
            (run, ops)
        }

        /// Calls into the relay at `now`; the operations it asked for.
        fn step(&mut self, now: Millis, f: impl FnOnce(&mut Relay, &mut Cx<'_>)) -> Vec<ConnOp> {
            let mut cx = Cx::new(&mut self.ops, &mut self.life, &mut self.counters, now);
            f(&mut self.relay, &mut cx);
            std::mem::take(&mut self.ops)
        }

        fn data(&mut self, side: Side, bid: u16, len: u32, now: Millis) -> Vec<ConnOp> {
            let ev = RecvEvent::Data { bid, len };
            self.step(now, |r, cx| r.handle_recv(side, ev, false, now, cx))
        }
    }

    fn receives(ops: &[ConnOp], side: Side) -> Vec<ConnOp> {
        ops.iter()
            .copied()
            .filter(|op| match op {
                ConnOp::ArmRecv(s) | ConnOp::RecvUpTo { side: s, .. } => *s == side,
                _ => false,
            })
            .collect()
    }

    #[test]
    fn an_unlimited_relay_arms_multishot_receives() {
        let (run, ops) = Run::connected(None, SpliceConfig::OFF);
        assert_eq!(
            receives(&ops, Side::Client),
            [ConnOp::ArmRecv(Side::Client)]
        );
        assert_eq!(
            receives(&ops, Side::Upstream),
            [ConnOp::ArmRecv(Side::Upstream)]
        );
        assert_eq!(run.relay.deadline(), Some(IDLE_MS));
    }

    #[test]
    fn a_limited_direction_reads_its_quota_pauses_on_the_timer_and_resumes() {
        let (mut run, ops) = Run::connected(Some(MIB), SpliceConfig::OFF);
        let burst = (MIB / 10) as u32;
        // The first receives are single ones, sized by the full bucket.
        for side in [Side::Client, Side::Upstream] {
            let want = ConnOp::RecvUpTo { side, max: burst };
            assert_eq!(receives(&ops, side), [want]);
        }
        let ops = run.data(Side::Client, 1, burst, 0);
        assert!(
            receives(&ops, Side::Client).is_empty(),
            "the bucket is empty: no receive until it refills, got {ops:?}"
        );
        assert!(ops.contains(&ConnOp::Send {
            side: Side::Upstream,
            bid: 1,
            offset: 0,
            len: burst
        }));
        assert_eq!(run.counters.get(Counter::BandwidthPaused), 1);
        // One grant (16 KiB) at 1 MiB/s: 15.6 ms, the timer asked for 16.
        assert_eq!(run.relay.deadline(), Some(16));
        let ops = run.step(15, |r, cx| r.handle_timeout(15, cx));
        assert!(receives(&ops, Side::Client).is_empty(), "{ops:?}");
        let ops = run.step(16, |r, cx| r.handle_timeout(16, cx));
        assert_eq!(
            receives(&ops, Side::Client),
            [ConnOp::RecvUpTo {
                side: Side::Client,
                max: 16777
            }]
        );
        // The other direction has its own bucket, still full until now.
        let ops = run.data(Side::Upstream, 2, 1000, 16);
        assert_eq!(
            receives(&ops, Side::Upstream),
            [ConnOp::RecvUpTo {
                side: Side::Upstream,
                max: burst - 1000
            }]
        );
    }

    #[test]
    fn a_paused_direction_is_not_idle_and_idle_still_ends_a_silent_one() {
        let (mut run, _) = Run::connected(Some(1 << 10), SpliceConfig::OFF);
        // 1 KiB/s: a 102-byte burst, and a pause of 100 ms for the next.
        run.data(Side::Client, 1, 102, 5_000);
        assert_eq!(run.relay.deadline(), Some(5_100), "the pause comes first");
        run.step(5_100, |r, cx| r.handle_timeout(5_100, cx));
        // The idle clock counts from the end of the pause, not the data.
        assert_eq!(run.relay.deadline(), Some(5_100 + IDLE_MS));
        let ops = run.step(5_099 + IDLE_MS, |r, cx| {
            r.handle_timeout(5_099 + IDLE_MS, cx)
        });
        assert!(!run.relay.is_closing(), "{ops:?}");
        run.step(5_100 + IDLE_MS, |r, cx| {
            r.handle_timeout(5_100 + IDLE_MS, cx)
        });
        assert!(run.relay.is_closing());
        assert_eq!(run.relay.reason(), Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn bytes_a_front_read_count_against_the_clients_limit() {
        // 1 KiB/s: a 102-byte burst. 200 bytes came with the PROXY header:
        // 98 in debt, so the client is read again once 98 + 102 are back.
        let (mut run, ops) = Run::connected_after_front(1 << 10, 200);
        assert!(ops.contains(&ConnOp::SendPreface { offset: 0 }), "{ops:?}");
        let ops = run.step(1, |r, cx| r.handle_sent(Side::Upstream, Ok(200), 1, cx));
        assert!(receives(&ops, Side::Client).is_empty(), "{ops:?}");
        assert_eq!(run.relay.deadline(), Some(196), "200 bytes at 1024 B/s");
        let ops = run.step(196, |r, cx| r.handle_timeout(196, cx));
        assert_eq!(
            receives(&ops, Side::Client),
            [ConnOp::RecvUpTo {
                side: Side::Client,
                max: 102
            }]
        );
    }

    #[test]
    fn a_limited_splice_in_is_capped_by_the_tokens_and_paused_like_a_receive() {
        let splice = SpliceConfig {
            mode: SpliceMode::Always,
            pipe_size: 1 << 20,
            buffer_size: 16 << 10,
        };
        let (mut run, ops) = Run::connected(Some(MIB), splice);
        assert!(ops.contains(&ConnOp::WantPipe(Side::Client)), "{ops:?}");
        let ops = run.step(0, |r, cx| {
            r.handle_pipe(Side::Client, Some(PipeId(0)), 0, cx)
        });
        let burst = (MIB / 10) as u32;
        assert_eq!(
            ops,
            [ConnOp::SpliceIn {
                side: Side::Client,
                pipe: PipeId(0),
                len: burst
            }]
        );
        run.step(1, |r, cx| {
            r.handle_splice_in(Side::Client, Ok(burst), 1, cx)
        });
        let ops = run.step(2, |r, cx| {
            r.handle_splice_out(Side::Upstream, Ok(burst), 2, cx)
        });
        assert!(ops.is_empty(), "paused: no splice in yet, got {ops:?}");
        let due = run.relay.deadline().expect("a pause");
        assert_eq!(due, 17, "16 KiB at 1 MiB/s after the read at 1 ms");
        let ops = run.step(due, |r, cx| r.handle_timeout(due, cx));
        assert!(
            matches!(ops[..], [ConnOp::SpliceIn { side: Side::Client, len, .. }] if len == 16777),
            "{ops:?}"
        );
    }
}
