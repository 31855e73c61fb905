//! A SOCKS5 UDP association's rules (RFC 1928 §7): which datagrams on its
//! socket are its client's, where a client's datagram goes, and which
//! datagrams go back to the client. No I/O and no clock: datagrams and the
//! time come in, a verdict goes out.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use super::DropReason;
use crate::front::Destination;
use crate::front::socks5;
use crate::time::Millis;

/// Destinations an association remembers as ones its client sent to: only
/// their datagrams go back to the client (restricted-cone, as a NAT would).
/// The oldest is forgotten beyond this many; its later datagrams are
/// strangers until the client sends to it again.
pub const MAX_PEERS: usize = 64;

/// Where a datagram that reached the association's socket goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// The client's datagram for `dst`; the payload starts `header` bytes in.
    FromClient {
        dst: Destination,
        header: u32,
    },
    /// A destination's datagram for the client at `to`, to be sent with a
    /// header naming its source.
    ToClient {
        to: SocketAddr,
    },
    Drop(DropReason),
}

#[derive(Debug)]
pub struct Association {
    /// The control connection's client: the only source whose datagrams go out.
    client: IpAddr,
    /// Its port, learnt from its first well-formed datagram.
    client_port: Option<u16>,
    /// Destinations the client sent to, oldest first.
    peers: VecDeque<SocketAddr>,
    last_activity: Millis,
    idle_ms: Millis,
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

impl Association {
    pub fn new(client: IpAddr, idle_ms: Millis, now: Millis) -> Association {
        Association {
            client: client.to_canonical(),
            client_port: None,
            peers: VecDeque::new(),
            last_activity: now,
            idle_ms,
        }
    }

    /// The control connection's client IP.
    pub fn client_ip(&self) -> IpAddr {
        self.client
    }

    /// The client's address, once its first datagram came.
    pub fn client(&self) -> Option<SocketAddr> {
        self.client_port.map(|p| SocketAddr::new(self.client, p))
    }

    /// Decides a datagram from `src` whose bytes are `datagram`. A
    /// destination's datagram is checked first: a destination may share
    /// the client's address (another port on the same host).
    pub fn classify(&mut self, src: SocketAddr, datagram: &[u8], now: Millis) -> Inbound {
        let src = canonical(src);
        if self.peers.contains(&src) {
            return match self.client() {
                Some(to) => {
                    self.last_activity = now;
                    Inbound::ToClient { to }
                }
                None => Inbound::Drop(DropReason::Stranger),
            };
        }
        if src.ip() != self.client || self.client_port.is_some_and(|p| p != src.port()) {
            return Inbound::Drop(DropReason::Stranger);
        }
        match socks5::parse_udp(datagram) {
            Err(_) => Inbound::Drop(DropReason::Malformed),
            Ok((h, _)) if h.frag != 0 => Inbound::Drop(DropReason::Fragment),
            Ok((h, header)) => {
                self.client_port.get_or_insert(src.port());
                self.last_activity = now;
                Inbound::FromClient {
                    dst: h.dst,
                    header: u32::try_from(header).unwrap_or(u32::MAX),
                }
            }
        }
    }

    /// Whether the client may send to `dst` beyond the listener's policy:
    /// never to itself or to the association's own socket (`own`), which
    /// would loop datagrams through it.
    pub fn loops(&self, dst: SocketAddr, own: Option<SocketAddr>) -> bool {
        let dst = canonical(dst);
        self.client() == Some(dst) || own.map(canonical) == Some(dst)
    }

    /// The client sent to `dst`: its datagrams may come back.
    pub fn sent_to(&mut self, dst: SocketAddr) {
        let dst = canonical(dst);
        if let Some(i) = self.peers.iter().position(|p| *p == dst) {
            self.peers.remove(i);
        } else if self.peers.len() >= MAX_PEERS {
            self.peers.pop_front();
        }
        self.peers.push_back(dst);
    }

    /// When it is idle: `udp_idle_timeout` after the last datagram relayed
    /// either way.
    pub fn deadline(&self) -> Millis {
        self.last_activity.saturating_add(self.idle_ms)
    }
}

#[cfg(test)]
mod tests;
