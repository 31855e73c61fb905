//! Datagrams the kernel dropped on the shard's own UDP sockets (a full
//! receive queue: `rcvbuf`, `session_rcvbuf`), which ringfwd never sees.
//! Counted from the socket's drop counter: the SO_RXQ_OVFL reading each
//! received datagram carries, and reads of the socket the event loop makes
//! (listeners at every stats snapshot, every socket just before its close)
//! for the drops after the last datagram queued, which no datagram reports.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::ListenRecv;
use super::UdpService;
use crate::shard::context::Ctx;
use crate::shard::slab::SessionId;
use crate::shard::token::{OpKind, Token};
use crate::udp::DropReason;

impl UdpService {
    /// A reading of listener `index`'s drop counter: client datagrams lost.
    pub(in crate::shard) fn note_listener_drops(&mut self, index: u32, reading: u32) {
        let Some(l) = self.udp_listeners.get_mut(index as usize) else {
            return;
        };
        let n = l.drops.observe(reading);
        l.counters.udp_drops(DropReason::RcvbufC2u, u64::from(n));
    }

    /// A reading of session `slot`'s upstream socket: replies lost.
    fn note_session_drops(&mut self, ctx: &mut Ctx, slot: SessionId, reading: u32) {
        let Some(c) = self.sessions.get_mut(slot) else {
            return;
        };
        let n = c.drops.observe(reading);
        match self.udp_listeners.get_mut(c.listener as usize) {
            Some(l) => l.counters.udp_drops(DropReason::RcvbufU2c, u64::from(n)),
            None => ctx.counters.udp_drops(DropReason::RcvbufU2c, u64::from(n)),
        }
    }

    /// The listener sockets still open, for the event loop to read their
    /// drop counters before a stats snapshot. Few (one per UDP listener), so
    /// reading them costs a syscall each per stats interval; session sockets
    /// are read only at close, since there may be a hundred thousand.
    pub fn udp_listener_sockets(&self) -> Vec<(u32, RawFd)> {
        self.udp_listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| !matches!(l.recv, ListenRecv::CloseInFlight | ListenRecv::Closed))
            .filter_map(|(i, l)| Some((u32::try_from(i).ok()?, l.spec.fd)))
            .collect()
    }

    /// Each listener slot's bound address (its receive template depends
    /// on whether it is a wildcard).
    pub fn udp_listener_addrs(&self) -> Vec<SocketAddr> {
        self.udp_listeners.iter().map(|l| l.spec.listen).collect()
    }

    /// Whether the close `user_data` names is of a UDP socket whose drop
    /// counter the event loop should read first (with `udp_socket_drops`).
    pub fn wants_drops_before_close(user_data: u64) -> bool {
        Token::decode(user_data)
            .is_some_and(|t| matches!(t.kind, OpKind::UdpClose | OpKind::UdpListenClose))
    }

    /// The drop counter of the socket the close `user_data` is for, read
    /// just before it was queued: the drops no datagram reported.
    pub fn udp_socket_drops(&mut self, ctx: &mut Ctx, user_data: u64, reading: u32) {
        match Token::decode(user_data) {
            Some(t) if t.kind == OpKind::UdpListenClose => {
                self.note_listener_drops(t.slot.index, reading)
            }
            Some(t) if t.kind == OpKind::UdpClose => {
                self.note_session_drops(ctx, SessionId(t.slot), reading)
            }
            _ => {}
        }
    }
}
