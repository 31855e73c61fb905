//! The server state machine against a fake kernel and a fake client, over
//! thousands of random schedules: random receive sizes, multishot receives
//! that end on their own, ENOBUFS with buffers taken by other connections,
//! short sends, FIN, resets, shutdown (abort), and cancels whose completions
//! arrive in any order. Every byte the client gets is checked against the
//! periodic stream, and every rule of the data path is checked at each step.
//!
//! Reproduce a failure with `SERVE_SEED=<n> cargo test --lib serve`.

use std::collections::HashSet;

use super::*;
use crate::stats::Counters;
use crate::tcp::lifecycle::{Done, Lifecycle, SockState};
use crate::verify::{PeriodicCheck, Rng, periodic_region_for};

/// A completion the fake kernel owes the state machine, delivered in random order.
#[derive(Clone, Copy, Debug)]
enum Cqe {
    RecvCancelled,
    Sent(Result<u32, i32>),
    Cancel,
    Shutdown,
    Close,
}

/// How the fake client behaves in one schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Client {
    /// Writes, then FIN, and reads until FIN.
    Clean,
    /// Writes part, then resets (before any FIN).
    Resets,
    /// Writes, FIN, then resets while the server may still be sending or
    /// sending its FIN (a client that closed with our bytes on the way).
    FinThenReset,
    /// The shard stops (drain_timeout passed) while the client is still active.
    Aborted,
}

struct Fake {
    seed: u64,
    rng: Rng,
    srv: Server,
    stats: Counters,
    life: Lifecycle,
    region: Box<[u8]>,
    out: Vec<ConnOp>,
    client: Client,

    // Kernel side.
    recv_armed: bool,
    send: Option<(u32, u32)>,
    shutdown_pending: bool,
    queued: Vec<Cqe>,
    closed: bool,
    starved: bool,
    ring_free: u32,
    /// Buffers taken by "other connections", given back at random.
    others: u32,
    next_bid: u16,
    held: HashSet<u16>,
    buf_size: u32,
    /// Stream bytes the kernel took from the server's sends.
    kernel_sent: u64,

    // Client side.
    /// Total bytes the client will write before its FIN.
    write_total: u64,
    written: u64,
    delivered: u64,
    fin_written: bool,
    eof_delivered: bool,
    reset: bool,
    /// Source mode: the client sends FIN once it read this much.
    read_target: u64,
    got: PeriodicCheck,
    got_fin: bool,
    aborted: bool,
    expect_reason: Option<CloseReason>,
}

macro_rules! check {
    ($f:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            panic!("seed {} ({:?}, {:?}): {}", $f.seed, $f.srv.mode(), $f.client, format!($($arg)+));
        }
    };
}

impl Fake {
    fn new(seed: u64, mode: ServeMode) -> Fake {
        let mut rng = Rng::new(seed);
        let client = match rng.below(5) {
            0 => Client::Resets,
            1 => Client::Aborted,
            2 => Client::FinThenReset,
            _ => Client::Clean,
        };
        let write_total = match mode {
            ServeMode::RequestResponse { request, .. } => {
                // Whole requests, sometimes with a partial one at the end.
                let whole = rng.below(12) * u64::from(request);
                whole
                    + if rng.chance(1, 3) {
                        rng.below(u64::from(request))
                    } else {
                        0
                    }
            }
            ServeMode::Sink | ServeMode::Source => rng.below(300_000),
        };
        let buffers = 1 + rng.below(6) as u32;
        Fake {
            seed,
            srv: Server::new(mode),
            stats: Counters::default(),
            life: Lifecycle::new(SockState::Open, SockState::Absent),
            region: periodic_region_for(MAX_SEND as usize),
            out: Vec::new(),
            client,
            recv_armed: false,
            send: None,
            shutdown_pending: false,
            queued: Vec::new(),
            closed: false,
            starved: false,
            ring_free: buffers,
            others: 0,
            next_bid: 0,
            held: HashSet::new(),
            // Mostly buffers of a few KiB, sometimes tiny ones (many
            // completions per request).
            buf_size: if rng.chance(1, 8) {
                16 + rng.below(48) as u32
            } else {
                256 + rng.below(20_000) as u32
            },
            kernel_sent: 0,
            write_total,
            written: 0,
            delivered: 0,
            fin_written: false,
            eof_delivered: false,
            reset: false,
            read_target: rng.below(400_000),
            got: PeriodicCheck::default(),
            got_fin: false,
            aborted: false,
            expect_reason: None,
            rng,
        }
    }

    fn request(&self) -> Option<(u64, u64)> {
        match self.srv.mode() {
            ServeMode::RequestResponse { request, response } => {
                Some((u64::from(request), u64::from(response)))
            }
            _ => None,
        }
    }

    /// Stream bytes the server may have sent so far, by the rules of its mode.
    fn allowed(&self) -> u64 {
        match self.srv.mode() {
            ServeMode::Sink => 0,
            ServeMode::Source => u64::MAX,
            ServeMode::RequestResponse { .. } => {
                let (req, resp) = self.request().unwrap_or((1, 0));
                (self.delivered / req) * resp
            }
        }
    }

    fn sock_ops(&self) -> usize {
        usize::from(self.recv_armed)
            + usize::from(self.send.is_some())
            + usize::from(self.shutdown_pending)
            + self
                .queued
                .iter()
                .filter(|c| matches!(c, Cqe::RecvCancelled | Cqe::Sent(_) | Cqe::Shutdown))
                .count()
    }

    /// Applies the operations the state machine just asked for.
    fn apply(&mut self) {
        let ops: Vec<ConnOp> = self.out.drain(..).collect();
        for op in ops {
            match op {
                ConnOp::ArmRecv(Side::Client) => {
                    check!(self, !self.closed, "receive armed on a closed socket");
                    check!(self, !self.recv_armed, "second receive armed");
                    self.recv_armed = true;
                }
                ConnOp::SendRegion {
                    side: Side::Client,
                    offset,
                    len,
                } => {
                    check!(self, !self.closed, "send on a closed socket");
                    check!(self, self.send.is_none(), "two sends in flight");
                    check!(self, !self.shutdown_pending, "send after FIN");
                    check!(self, len > 0 && len <= MAX_SEND, "send of {len} bytes");
                    check!(
                        self,
                        u64::from(offset) == self.kernel_sent % PERIOD as u64,
                        "send at region offset {offset} for stream position {}",
                        self.kernel_sent
                    );
                    check!(
                        self,
                        (offset + len) as usize <= self.region.len(),
                        "send {offset}+{len} outside the region"
                    );
                    check!(
                        self,
                        self.kernel_sent + u64::from(len) <= self.allowed(),
                        "send up to {} with only {} owed",
                        self.kernel_sent + u64::from(len),
                        self.allowed()
                    );
                    self.send = Some((offset, len));
                }
                ConnOp::Shutdown(Side::Client) => {
                    check!(self, !self.closed, "FIN on a closed socket");
                    check!(self, self.send.is_none(), "FIN with a send in flight");
                    check!(self, self.eof_delivered, "FIN before the client's FIN");
                    check!(self, !self.shutdown_pending, "second FIN");
                    if let Some((req, resp)) = self.request() {
                        check!(
                            self,
                            self.kernel_sent == (self.delivered / req) * resp,
                            "FIN after {} response bytes, {} owed",
                            self.kernel_sent,
                            (self.delivered / req) * resp
                        );
                    }
                    if self.srv.mode() == ServeMode::Sink {
                        check!(self, self.kernel_sent == 0, "a sink sent bytes");
                    }
                    self.shutdown_pending = true;
                    self.got_fin = true;
                }
                ConnOp::CancelAll(Side::Client) => {
                    check!(self, !self.closed, "cancel on a closed socket");
                    if self.recv_armed {
                        self.recv_armed = false;
                        self.queued.push(Cqe::RecvCancelled);
                    }
                    if let Some((offset, len)) = self.send.take() {
                        // The send may have completed before the cancel reached it.
                        let res = if self.rng.chance(1, 2) {
                            Err(errno::ECANCELED)
                        } else {
                            self.client_reads(offset, len)
                        };
                        self.queued.push(Cqe::Sent(res));
                    }
                    self.queued.push(Cqe::Cancel);
                }
                ConnOp::Close {
                    side: Side::Client,
                    linger0,
                } => {
                    check!(self, !self.closed, "second close");
                    check!(self, !linger0, "a server connection closes with a FIN");
                    check!(
                        self,
                        self.sock_ops() == 0,
                        "close while {} operation(s) name the socket",
                        self.sock_ops()
                    );
                    self.closed = true;
                    self.queued.push(Cqe::Close);
                }
                ConnOp::Release(bid) => {
                    check!(
                        self,
                        self.held.remove(&bid),
                        "release of buffer {bid} not held"
                    );
                    self.ring_free += 1;
                }
                ConnOp::Starved(Side::Client) => {
                    check!(self, !self.starved, "starved twice");
                    self.starved = true;
                }
                other => check!(self, false, "unexpected op {other:?}"),
            }
        }
        check!(
            self,
            self.held.is_empty(),
            "{} buffer(s) kept after a completion",
            self.held.len()
        );
    }

    /// The kernel takes `n <= len` bytes of the send and the client reads
    /// them: every byte is checked against the periodic stream.
    fn client_reads(&mut self, offset: u32, len: u32) -> Result<u32, i32> {
        if self.reset {
            return Err(if self.rng.chance(1, 2) {
                errno::EPIPE
            } else {
                errno::ECONNRESET
            });
        }
        let n = if self.rng.chance(1, 3) {
            1 + self.rng.below(u64::from(len)) as u32
        } else {
            len
        };
        let bytes = &self.region[offset as usize..(offset + n) as usize];
        if let Err(at) = self.got.check(&self.region, bytes) {
            panic!("seed {}: client got a wrong byte at {at}", self.seed);
        }
        self.kernel_sent += u64::from(n);
        Ok(n)
    }

    fn recv_event(&mut self) {
        if !self.recv_armed {
            return;
        }
        if self.reset {
            self.recv_armed = false;
            let ev = RecvEvent::Error(errno::ECONNRESET);
            self.life.complete(Done::On(Side::Client));
            self.srv.handle_recv(
                ev,
                false,
                &mut Cx::new(&mut self.out, &mut self.life, &mut self.stats, 0),
            );
            return self.apply();
        }
        let avail = self.written - self.delivered;
        if avail == 0 {
            if self.fin_written && !self.eof_delivered {
                self.eof_delivered = true;
                self.recv_armed = false;
                self.life.complete(Done::On(Side::Client));
                self.srv.handle_recv(
                    RecvEvent::Eof,
                    false,
                    &mut Cx::new(&mut self.out, &mut self.life, &mut self.stats, 0),
                );
                self.apply();
            }
            return;
        }
        if self.ring_free == 0 {
            self.recv_armed = false;
            self.life.complete(Done::On(Side::Client));
            self.srv.handle_recv(
                RecvEvent::NoBuffers,
                false,
                &mut Cx::new(&mut self.out, &mut self.life, &mut self.stats, 0),
            );
            return self.apply();
        }
        self.ring_free -= 1;
        let bid = self.next_bid;
        self.next_bid = self.next_bid.wrapping_add(1) % 4096;
        self.held.insert(bid);
        let len = (1 + self.rng.below(u64::from(self.buf_size))).min(avail) as u32;
        self.delivered += u64::from(len);
        let more = self.rng.chance(7, 8);
        if !more {
            self.recv_armed = false;
            self.life.complete(Done::On(Side::Client));
        }
        let ev = RecvEvent::Data { bid, len };
        self.srv.handle_recv(
            ev,
            more,
            &mut Cx::new(&mut self.out, &mut self.life, &mut self.stats, 0),
        );
        self.apply();
    }

    fn client_acts(&mut self) {
        if self.fin_written && self.client == Client::FinThenReset && !self.reset {
            self.reset = self.rng.chance(1, 2);
        }
        if self.reset || self.fin_written || self.aborted {
            return;
        }
        let wants_fin = match self.srv.mode() {
            ServeMode::Source => self.got.position >= self.read_target,
            _ => true,
        };
        if self.written < self.write_total {
            let step = 1 + self.rng.below(self.write_total / 3 + 1);
            self.written = (self.written + step).min(self.write_total);
        } else if self.client == Client::Resets {
            self.reset = true;
        } else if self.client == Client::Aborted && self.rng.chance(1, 2) {
            self.aborted = true;
            if self.srv.reason().is_none() {
                self.expect_reason = Some(CloseReason::Shutdown);
            }
            self.srv.abort(
                CloseReason::Shutdown,
                &mut Cx::new(&mut self.out, &mut self.life, &mut self.stats, 0),
            );
            self.apply();
        } else if wants_fin {
            self.fin_written = true;
        }
    }

    fn complete_queued(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let i = self.rng.below(self.queued.len() as u64) as usize;
        let cqe = self.queued.swap_remove(i);
        match cqe {
            Cqe::RecvCancelled => {
                self.life.complete(Done::On(Side::Client));
                self.srv.handle_recv(
                    RecvEvent::Cancelled,
                    false,
                    &mut Cx::new(&mut self.out, &mut self.life, &mut self.stats, 0),
                )
            }
            Cqe::Sent(res) => {
                self.life.complete(Done::On(Side::Client));
                self.srv.handle_sent(
                    res,
                    &mut Cx::new(&mut self.out, &mut self.life, &mut self.stats, 0),
                )
            }
            Cqe::Cancel => {
                self.life.complete(Done::Plain);
                self.srv.handle_cancel(&mut Cx::new(
                    &mut self.out,
                    &mut self.life,
                    &mut self.stats,
                    0,
                ))
            }
            Cqe::Shutdown => {
                // A reset socket: shutdown(2) finds it no longer connected.
                let res = if self.reset {
                    Err(errno::ENOTCONN)
                } else {
                    Ok(())
                };
                self.life.complete(Done::On(Side::Client));
                self.srv.handle_shutdown(
                    res,
                    &mut Cx::new(&mut self.out, &mut self.life, &mut self.stats, 0),
                );
            }
            Cqe::Close => self.life.complete(Done::Closed(Side::Client)),
        }
        self.apply();
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=19 => self.client_acts(),
            20..=44 => self.recv_event(),
            45..=69 => {
                if let Some((offset, len)) = self.send.take() {
                    let res = self.client_reads(offset, len);
                    self.life.complete(Done::On(Side::Client));
                    self.srv.handle_sent(
                        res,
                        &mut Cx::new(&mut self.out, &mut self.life, &mut self.stats, 0),
                    );
                    self.apply();
                }
            }
            70..=79 => {
                if self.shutdown_pending {
                    self.shutdown_pending = false;
                    self.queued.push(Cqe::Shutdown);
                }
                self.complete_queued();
            }
            80..=89 => {
                // Buffers return to the ring (the engine wakes starved receives).
                if self.others > 0 && self.rng.chance(1, 2) {
                    self.others -= 1;
                    self.ring_free += 1;
                }
                if self.starved && self.ring_free > 0 {
                    self.starved = false;
                    self.srv.handle_buffers(&mut Cx::new(
                        &mut self.out,
                        &mut self.life,
                        &mut self.stats,
                        0,
                    ));
                    self.apply();
                }
            }
            _ => {
                // Another connection takes a buffer.
                if self.ring_free > 0 {
                    self.ring_free -= 1;
                    self.others += 1;
                }
            }
        }
    }

    fn run(&mut self) {
        self.srv.start(&mut Cx::new(
            &mut self.out,
            &mut self.life,
            &mut self.stats,
            0,
        ));
        self.apply();
        // Receives deliver half a buffer on average in one step of four:
        // allow three times what moving the client's bytes takes.
        let limit = 200_000 + 24 * self.write_total / u64::from(self.buf_size);
        let mut steps = 0;
        while !(self.srv.is_closing() && self.life.finished()) {
            steps += 1;
            check!(
                self,
                steps < limit,
                "did not finish: written {}/{} fin {} eof {} delivered {} armed {} starved {} free {} others {} send {:?} queued {:?} sent {} srv {:?}",
                self.written,
                self.write_total,
                self.fin_written,
                self.eof_delivered,
                self.delivered,
                self.recv_armed,
                self.starved,
                self.ring_free,
                self.others,
                self.send,
                self.queued,
                self.kernel_sent,
                self.srv
            );
            self.step();
        }
        self.final_checks();
    }

    fn final_checks(&mut self) {
        check!(self, self.closed, "finished without closing the socket");
        check!(
            self,
            self.queued.is_empty(),
            "finished with {:?} owed",
            self.queued
        );
        check!(
            self,
            self.sock_ops() == 0 && self.life.inflight() == 0,
            "finished with operations in flight"
        );
        check!(self, self.held.is_empty(), "buffers kept");
        let reason = self.srv.reason();
        let (received, sent) = self.srv.bytes();
        check!(
            self,
            received == self.delivered,
            "received {received} of {}",
            self.delivered
        );
        check!(
            self,
            sent == self.kernel_sent,
            "counted {sent} sent of {}",
            self.kernel_sent
        );
        check!(
            self,
            self.stats.get(Counter::BytesC2u) == received
                && self.stats.get(Counter::BytesU2c) == sent,
            "stats {} / {} for {received} / {sent}",
            self.stats.get(Counter::BytesC2u),
            self.stats.get(Counter::BytesU2c)
        );
        match self.client {
            Client::Clean => {
                check!(
                    self,
                    reason == Some(CloseReason::ClientEof),
                    "clean client closed as {reason:?}"
                );
                check!(self, self.got_fin, "clean client got no FIN");
                check!(
                    self,
                    self.delivered == self.write_total,
                    "not every byte received"
                );
                match self.srv.mode() {
                    ServeMode::Sink => check!(self, sent == 0, "sink sent {sent}"),
                    ServeMode::Source => check!(
                        self,
                        self.got.position >= self.read_target,
                        "source stopped at {} before the client's FIN",
                        self.got.position
                    ),
                    ServeMode::RequestResponse { .. } => {
                        let (req, resp) = self.request().unwrap_or((1, 0));
                        let want = (self.write_total / req) * resp;
                        check!(
                            self,
                            self.got.position == want,
                            "{} response bytes for {} requests, want {want}",
                            self.got.position,
                            self.write_total / req
                        );
                    }
                }
            }
            Client::Resets => check!(
                self,
                reason == Some(CloseReason::ClientReset),
                "reset client closed as {reason:?}"
            ),
            Client::FinThenReset => check!(
                self,
                matches!(
                    reason,
                    Some(CloseReason::ClientReset | CloseReason::ClientEof)
                ),
                "client that reset after its FIN closed as {reason:?}"
            ),
            Client::Aborted => {
                if let Some(want) = self.expect_reason {
                    check!(self, reason == Some(want), "aborted as {reason:?}");
                }
            }
        }
    }
}

fn seeds(default: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("SERVE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return vec![s];
    }
    (1..=default).collect()
}

fn run_many(mode: impl Fn(&mut Rng) -> ServeMode) {
    let mut short = 0;
    let mut enobufs = 0;
    for seed in seeds(1500) {
        let mut pick = Rng::new(seed ^ 0x5eed);
        let mut f = Fake::new(seed, mode(&mut pick));
        f.run();
        short += f.stats.get(Counter::ShortSends);
        enobufs += f.stats.get(Counter::Enobufs);
    }
    // The schedules must exercise what they claim to.
    assert!(enobufs > 0, "no schedule ran out of buffers");
    let _ = short;
}

#[test]
fn sink_discards_and_answers_fin_with_fin() {
    run_many(|_| ServeMode::Sink);
}

#[test]
fn source_streams_the_periodic_pattern_until_fin() {
    run_many(|_| ServeMode::Source);
}

#[test]
fn request_response_answers_every_complete_request() {
    run_many(|rng| {
        // Small and odd sizes, sizes around the send window and the period.
        let size = |rng: &mut Rng| match rng.below(4) {
            0 => 1 + rng.below(8) as u32,
            1 => 1 + rng.below(5000) as u32,
            2 => MAX_SEND - 2 + rng.below(5) as u32,
            _ => 1 + rng.below(200_000) as u32,
        };
        ServeMode::RequestResponse {
            request: size(rng),
            response: size(rng),
        }
    });
}

#[test]
fn short_sends_continue_from_the_offset() {
    let mut out = Vec::new();
    let mut stats = Counters::default();
    let mut life = Lifecycle::new(SockState::Open, SockState::Absent);
    let mut s = Server::new(ServeMode::RequestResponse {
        request: 4,
        response: 300_000,
    });
    s.start(&mut Cx::new(&mut out, &mut life, &mut stats, 0));
    assert_eq!(out, vec![ConnOp::ArmRecv(Side::Client)]);
    out.clear();
    // Two requests and half of a third in one buffer, straight back.
    s.handle_recv(
        RecvEvent::Data { bid: 7, len: 10 },
        true,
        &mut Cx::new(&mut out, &mut life, &mut stats, 0),
    );
    let first = ConnOp::SendRegion {
        side: Side::Client,
        offset: 0,
        len: MAX_SEND,
    };
    assert_eq!(out, vec![ConnOp::Release(7), first]);
    out.clear();
    s.handle_sent(Ok(1000), &mut Cx::new(&mut out, &mut life, &mut stats, 0));
    assert_eq!(stats.get(Counter::ShortSends), 1);
    assert_eq!(
        out,
        vec![ConnOp::SendRegion {
            side: Side::Client,
            offset: 1000,
            len: MAX_SEND,
        }]
    );
    out.clear();
    // Past the end of the first period the offset wraps: the window starts
    // in the region's first copy again.
    s.handle_sent(
        Ok(MAX_SEND),
        &mut Cx::new(&mut out, &mut life, &mut stats, 0),
    );
    let pos = 1000 + u64::from(MAX_SEND);
    assert_eq!(
        out,
        vec![ConnOp::SendRegion {
            side: Side::Client,
            offset: (pos % PERIOD as u64) as u32,
            len: (600_000 - pos).min(u64::from(MAX_SEND)) as u32,
        }]
    );
    assert_eq!(s.owed(), 600_000);
}

#[test]
fn sink_fin_then_close_and_reset_closes_without_fin() {
    let mut out = Vec::new();
    let mut stats = Counters::default();
    let mut life = Lifecycle::new(SockState::Open, SockState::Absent);
    let mut s = Server::new(ServeMode::Sink);
    s.start(&mut Cx::new(&mut out, &mut life, &mut stats, 0));
    out.clear();
    life.complete(Done::On(Side::Client));
    s.handle_recv(
        RecvEvent::Eof,
        false,
        &mut Cx::new(&mut out, &mut life, &mut stats, 0),
    );
    assert_eq!(out, vec![ConnOp::Shutdown(Side::Client)]);
    out.clear();
    life.complete(Done::On(Side::Client));
    s.handle_shutdown(Ok(()), &mut Cx::new(&mut out, &mut life, &mut stats, 0));
    assert_eq!(
        out,
        vec![ConnOp::Close {
            side: Side::Client,
            linger0: false
        }]
    );
    life.complete(Done::Closed(Side::Client));
    assert!(s.is_closing() && life.finished());
    assert_eq!(s.reason(), Some(CloseReason::ClientEof));

    let mut s = Server::new(ServeMode::Source);
    let mut life = Lifecycle::new(SockState::Open, SockState::Absent);
    out.clear();
    s.start(&mut Cx::new(&mut out, &mut life, &mut stats, 0));
    assert_eq!(out.len(), 2, "{out:?}");
    out.clear();
    life.complete(Done::On(Side::Client));
    s.handle_recv(
        RecvEvent::Error(errno::ECONNRESET),
        false,
        &mut Cx::new(&mut out, &mut life, &mut stats, 0),
    );
    // The send is still in the kernel: cancel it, close once it is back
    // (no FIN on a reset stream).
    assert_eq!(out, vec![ConnOp::CancelAll(Side::Client)]);
    out.clear();
    life.complete(Done::On(Side::Client));
    s.handle_sent(
        Err(errno::ECANCELED),
        &mut Cx::new(&mut out, &mut life, &mut stats, 0),
    );
    assert_eq!(
        out,
        vec![ConnOp::Close {
            side: Side::Client,
            linger0: false
        }]
    );
    out.clear();
    life.complete(Done::Plain);
    s.handle_cancel(&mut Cx::new(&mut out, &mut life, &mut stats, 0));
    assert!(out.is_empty(), "{out:?}");
    assert!(
        !(s.is_closing() && life.finished()),
        "finished with the close in flight"
    );
    life.complete(Done::Closed(Side::Client));
    assert!(s.is_closing() && life.finished());
    assert_eq!(s.reason(), Some(CloseReason::ClientReset));
}

/// A source's windows are 256 KiB, several periods of the pattern, each one
/// contiguous slice of the shard's region: with one send in flight, 64 KiB
/// windows left a single-connection download at ~0.6x iperf3.
#[test]
fn a_source_sends_256kib_windows_that_span_periods() {
    let mut out = Vec::new();
    let mut stats = Counters::default();
    let mut life = Lifecycle::new(SockState::Open, SockState::Absent);
    let mut s = Server::new(ServeMode::Source);
    s.start(&mut Cx::new(&mut out, &mut life, &mut stats, 0));
    let window = 256 * 1024;
    assert!(out.contains(&ConnOp::SendRegion {
        side: Side::Client,
        offset: 0,
        len: window,
    }));
    assert!(window as usize > 3 * PERIOD);
    let region = periodic_region_for(MAX_SEND as usize);
    let last = PERIOD - 1;
    let mut check = PeriodicCheck {
        position: last as u64,
    };
    let slice = region.get(last..last + window as usize);
    assert!(slice.is_some(), "the region holds a window from any offset");
    assert_eq!(check.check(&region, slice.unwrap_or_default()), Ok(()));
}
