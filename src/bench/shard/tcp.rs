//! The generator's TCP side: opening connections (socket, connect with a
//! linked timeout), issuing requests closed- or open-loop, sending from the
//! pattern region, verifying and completing responses, and replacing a
//! connection that failed.

use std::cmp::Reverse;

use super::{ConnState, Gen, RECONNECT_BACKOFF_NS, RxCheck, TcpConn, tok};
use crate::bench::payload::{RepeatCheck, show};
use crate::bench::plan::{Direction, Workload};
use crate::bench::record::{ErrorKind, MAX_LATENCY_NS};
use crate::ring::SockType;
use crate::shard::token::{OpKind, SlotId, Token};
use crate::sys::socket;
use crate::verify::PERIOD;

impl Gen {
    pub(super) fn open_conn(&mut self, id: u32, next_k: u64, now: u64) {
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
            .socket(self.family, SockType::Stream, 0, tok(OpKind::Socket, slot));
        self.issued(slot, 1);
    }

    pub(super) fn issued(&mut self, slot: SlotId, n: u32) {
        self.pending += u64::from(n);
        if let Some(c) = self.tcp.get_mut(slot) {
            c.inflight += n;
        }
    }

    pub(super) fn tcp_cqe(&mut self, t: Token, res: i32, bid: Option<u16>, more: bool, now: u64) {
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

    pub(super) fn on_socket(&mut self, slot: SlotId, res: i32) {
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

    pub(super) fn on_connect(&mut self, slot: SlotId, res: i32, now: u64) {
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

    pub(super) fn ring_target_text(&self) -> String {
        self.target_addr.to_string()
    }

    /// Open loop: issue every request that is due and fits the pipeline, and
    /// schedule a wake-up for the next one.
    pub(super) fn try_issue(&mut self, slot: SlotId, now: u64) {
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
    pub(super) fn issue_request(&mut self, slot: SlotId, start: u64, now: u64) {
        let size = u64::from(self.w.size());
        let Some(c) = self.tcp.get_mut(slot) else {
            return;
        };
        c.outstanding.push_back((start, now));
        c.tx_owed += size;
        self.kick_send(slot);
    }

    /// Starts the next send if none is in flight: straight from the pattern
    /// region (or the --payload's), short enough that the window is contiguous.
    pub(super) fn kick_send(&mut self, slot: SlotId) {
        let (region, period, write) = match self.w {
            Workload::TcpStream { size, .. } => (self.pattern, PERIOD as u64, u64::from(size)),
            _ => (self.tx.region, self.tx.period, self.tx.max_write),
        };
        let Some(c) = self.tcp.get_mut(slot) else {
            return;
        };
        if c.sending || c.tx_owed == 0 || c.state != ConnState::Open {
            return;
        }
        let Some(fd) = c.fd else { return };
        let len = c.tx_owed.min(write) as u32;
        let offset = (c.tx_pos % period) as u32;
        // A stream's whole write stays in the kernel until done: it refills
        // the socket buffer as it drains, with no completion and resubmission
        // (and an empty buffer) between the pieces of a short send.
        let flags = match self.w {
            Workload::TcpStream { .. } => libc::MSG_WAITALL,
            _ => 0,
        };
        if self
            .ring
            .send_region_flags(fd, region, offset, len, flags, tok(OpKind::Send, slot))
            .is_ok()
        {
            if let Some(c) = self.tcp.get_mut(slot) {
                c.sending = true;
            }
            self.issued(slot, 1);
        }
    }

    /// After the window: every open stream stops queueing and ends with a
    /// FIN (at once, or when its send in flight is back), then reads on to
    /// the target's FIN. The request/response modes need none of this: they
    /// stop issuing and close once their responses are in, with nothing
    /// unread.
    pub(super) fn finish_streams(&mut self) {
        if !matches!(self.w, Workload::TcpStream { .. }) {
            return;
        }
        for slot in self.tcp.ids() {
            if let Some(c) = self.tcp.get_mut(slot)
                && c.state == ConnState::Open
            {
                c.state = ConnState::Finishing;
                c.tx_owed = 0;
                self.send_fin(slot);
            }
        }
    }

    /// A finishing stream with no send in flight: shutdown(SHUT_WR) queues
    /// its FIN, and it drains.
    fn send_fin(&mut self, slot: SlotId) {
        let Some(c) = self.tcp.get_mut(slot) else {
            return;
        };
        if c.state != ConnState::Finishing || c.sending {
            return;
        }
        let Some(fd) = c.fd else { return };
        match socket::shutdown_write(fd) {
            Ok(()) => c.state = ConnState::Draining,
            // Nothing to drain on a connection that is already gone.
            Err(_) => self.close_conn(slot, false),
        }
    }

    pub(super) fn on_sent(&mut self, slot: SlotId, res: i32, now: u64) {
        let measuring = self.clock.measuring(now);
        let Some(c) = self.tcp.get_mut(slot) else {
            return;
        };
        c.sending = false;
        if c.state == ConnState::Finishing {
            return self.send_fin(slot);
        }
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

    pub(super) fn on_recv(
        &mut self,
        slot: SlotId,
        res: i32,
        bid: Option<u16>,
        more: bool,
        now: u64,
    ) {
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
            match self.tcp.get(slot).map(|c| c.state) {
                Some(ConnState::Open) => self.fail_conn(slot, ErrorKind::Reset, || {
                    "the target closed the connection in the middle of the load".into()
                }),
                // The target's FIN after ours: everything was read, so the
                // close sends no reset.
                Some(ConnState::Finishing | ConnState::Draining) => self.close_conn(slot, false),
                _ => {}
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
        let reading = matches!(
            c.state,
            ConnState::Open | ConnState::Finishing | ConnState::Draining
        );
        if more || !reading {
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
    pub(super) fn on_data(&mut self, slot: SlotId, bid: u16, len: u32, now: u64) {
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
        let id = c.id;
        let verdict = match &self.rx_check {
            RxCheck::Pattern => c.rx.check(pattern, data).map_err(|at| {
                format!("connection {id}: received byte {at} of the response stream differs from what was expected")
            }),
            RxCheck::Exact { region, unit } => {
                let from = c.rx.position;
                let mut check = RepeatCheck { position: from };
                let expect = self.ring.region(*region).unwrap_or(&[]);
                let r = check.check(expect, unit.len(), data);
                c.rx.position = check.position;
                r.map_err(|at| mismatch(id, unit, from, at, data))
            }
            RxCheck::Size => Ok(()),
        };
        if let Err(what) = verdict {
            self.fail_conn(slot, ErrorKind::Verify, || what);
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
                let flag = match self.rx_check {
                    RxCheck::Pattern => "--response-size",
                    RxCheck::Exact { .. } => "--expect",
                    RxCheck::Size => "--expect-size",
                };
                self.fail_conn(slot, ErrorKind::Verify, || {
                    format!("connection {id}: {left} bytes arrived that no request asked for (response larger than {flag}?)")
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
                    let _ = self.interval.record(lat.clamp(1, MAX_LATENCY_NS));
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
    pub(super) fn fail_conn(
        &mut self,
        slot: SlotId,
        kind: ErrorKind,
        what: impl FnOnce() -> String,
    ) {
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

    pub(super) fn close_conn(&mut self, slot: SlotId, failed: bool) {
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
    pub(super) fn maybe_retire(&mut self, slot: SlotId, now: u64) {
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

    pub(super) fn scan_timeouts(&mut self, now: u64) {
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
}

/// Longest excerpt of an --expect mismatch shown in the first error.
const SHOWN: usize = 64;

/// An --expect response that differs at stream offset `at`, when the read
/// `data` started at stream offset `from`: the expected response and what
/// came from the start of that response (or of this read, if it began in an
/// earlier one), escaped and cut short.
fn mismatch(id: u32, unit: &[u8], from: u64, at: u64, data: &[u8]) -> String {
    let period = unit.len().max(1) as u64;
    let resp_start = at - at % period;
    let skip = resp_start.saturating_sub(from) as usize;
    let got = data.get(skip..).unwrap_or(&[]);
    let got = got.get(..got.len().min(SHOWN)).unwrap_or(got);
    let note = if resp_start < from {
        format!(" (from its byte {})", from - resp_start)
    } else {
        String::new()
    };
    format!(
        "connection {id}: response {} differs from --expect at its byte {}: expected {}, got {}{note}",
        resp_start / period + 1,
        at % period,
        show(unit, SHOWN),
        show(got, SHOWN),
    )
}

#[cfg(test)]
mod tests {
    use super::mismatch;

    #[test]
    fn a_mismatch_shows_expected_and_got_escaped() {
        // The second response starts at stream offset 7, where the read does.
        let m = mismatch(3, b"+PONG\r\n", 7, 7, b"-ERR unknown command\r\n");
        assert!(
            m.contains(r#"response 2 differs from --expect at its byte 0: expected "+PONG\r\n", got "-ERR unknown command\r\n""#),
            "{m}"
        );
        let m = mismatch(3, b"abcdef", 8, 9, b"dXf");
        assert!(m.contains(r#"got "dXf" (from its byte 2)"#), "{m}");
        assert!(
            m.contains("response 2") && m.contains("at its byte 3"),
            "{m}"
        );
    }
}
