//! The generator's UDP side: connected flow sockets, datagrams with a header
//! (flow, sequence, send time) written into per-flow send slots, replies
//! matched and verified without per-datagram state, timeouts and loss.

use std::cmp::Reverse;
use std::os::fd::AsRawFd;

use super::{Gen, UDP_MAGIC, flow_tok};
use crate::bench::payload::{Expect, show};
use crate::bench::plan::{UDP_HEADER, Workload};
use crate::bench::record::{ErrorKind, MAX_LATENCY_NS};
use crate::shard::token::{OpKind, Token};

/// Longest excerpt of a reply shown in the first error.
const SHOWN: usize = 64;

impl Gen {
    pub(super) fn slot_offset(&self, f: usize, w: usize) -> (u32, u32) {
        let (size, window) = match self.w {
            Workload::UdpRr { size, .. } => (size as usize, 1),
            Workload::UdpStream { size, window, .. } => (size as usize, window as usize),
            _ => (0, 1),
        };
        (((f * window + w) * size) as u32, size as u32)
    }

    pub(super) fn arm_flow_recv(&mut self, f: usize) {
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
    pub(super) fn udp_try_send(&mut self, f: usize, now: u64) {
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
    pub(super) fn udp_send(&mut self, f: usize, w: usize, start: u64, now: u64) -> bool {
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
        // A --payload datagram is the user's bytes as they are: no header.
        if self.udp_expect.is_none() {
            let Some(hdr) = region.get_mut(offset as usize..offset as usize + UDP_HEADER as usize)
            else {
                return false;
            };
            // Safe to rewrite: this slot's previous send has completed (`busy`).
            hdr[4..8].copy_from_slice(&id.to_le_bytes());
            hdr[8..16].copy_from_slice(&seq.to_le_bytes());
            hdr[16..24].copy_from_slice(&start.to_le_bytes());
        }
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
        // By intended time, as `received` is: after a stall, the catch-up
        // sends of datagrams due in the warmup are not the window's (open
        // loop; closed loop starts now). Counting them by send time made the
        // window's count exceed its schedule and their answers look lost.
        if self.clock.measuring(start) {
            self.rec.udp.sent += 1;
            self.rec.bytes_sent += u64::from(size);
        }
        true
    }

    pub(super) fn udp_cqe(&mut self, t: Token, res: i32, bid: Option<u16>, more: bool, now: u64) {
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

    pub(super) fn on_datagram(&mut self, f: usize, bid: u16, len: u32, now: u64) {
        if self.udp_expect.is_some() {
            return self.on_payload_reply(f, bid, len, now);
        }
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
            let _ = self.interval.record(lat.clamp(1, MAX_LATENCY_NS));
        }
        if let Workload::UdpRr { .. } = self.w {
            if let Some(flow) = self.flows.get_mut(f) {
                flow.waiting = None;
            }
            self.udp_try_send(f, now);
        }
    }

    /// A reply to a --payload request (udp-rr). It carries no header, so it
    /// is matched by state: it answers the flow's request only while one is
    /// outstanding; a reply with none outstanding (its request timed out,
    /// or the target answered twice) counts as late. A reply to a timed-out
    /// request that arrives after the flow's next request went out cannot
    /// be told apart from that request's answer: it is counted as it (with a
    /// shorter latency). --timeout well above the target's worst reply time
    /// keeps that from happening.
    fn on_payload_reply(&mut self, f: usize, bid: u16, len: u32, now: u64) {
        let Some(data) = self.ring.buffer_ring().bytes(bid, len) else {
            return;
        };
        let Some(flow) = self.flows.get(f) else {
            return;
        };
        let (id, waiting) = (flow.id, flow.waiting);
        let wrong = match &self.udp_expect {
            Some(Expect::Exact(want)) if data != &want[..] => Some(format!(
                "flow {id}: a reply differs from --expect: expected {}, got {}",
                show(want, SHOWN),
                show(data, SHOWN)
            )),
            Some(Expect::Size(want)) if len != *want => Some(format!(
                "flow {id}: a reply of {len} bytes is not the --expect-size {want} bytes"
            )),
            _ => None,
        };
        if let Some(what) = wrong {
            if now < self.clock.end {
                self.rec.error(ErrorKind::Verify, || what);
            }
        } else if let Some((_, start, _)) = waiting {
            if start >= self.clock.warm_end && start < self.clock.end {
                self.rec.udp.received += 1;
                self.rec.bytes_received += u64::from(len);
            }
            if self.clock.measuring(now) {
                let lat = now.saturating_sub(start);
                self.rec.ops += 1;
                self.rec.latency_ns(lat);
                let _ = self.interval.record(lat.clamp(1, MAX_LATENCY_NS));
            }
        } else {
            if self.clock.measuring(now) {
                self.rec.udp.late += 1;
            }
            return;
        }
        // Answered, or a wrong reply that may have been the awaited one: go
        // on rather than wait for a timeout.
        if let Some(flow) = self.flows.get_mut(f) {
            flow.waiting = None;
        }
        self.udp_try_send(f, now);
    }

    pub(super) fn udp_scan_timeouts(&mut self, now: u64) {
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
}
