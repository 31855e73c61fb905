//! A SOCKS5 UDP ASSOCIATE control connection (RFC 1928 §7): the relay asks
//! the shard for an association (a UDP socket bound to the address the
//! client reached), answers with that socket's address, then only watches
//! the control connection. Its end ends the association; the association's
//! end (idle, a socket error, shutdown) closes it.

use std::net::SocketAddr;

use super::{Phase, Relay, reset_reason};
use crate::stats::{CloseReason, Counter};
use crate::tcp::Emit;
use crate::tcp::cx::Cx;
use crate::tcp::handshake::{self, AssocAsk, NamedKind, Outcome};
use crate::tcp::{ConnOp, FrontRead, Side};
use crate::time::Millis;

/// A bound on waiting for the shard to open the association, which takes a
/// socket and a bind; only a lost answer would ever reach it.
pub(super) const ASSOCIATING_MS: Millis = 10_000;

impl Relay {
    /// The handshake asked for UDP ASSOCIATE: ask the shard for the socket.
    pub(super) fn associate(&mut self, cx: &mut Cx<'_>) {
        self.phase = Phase::Associating {
            until: cx.now.saturating_add(ASSOCIATING_MS),
        };
        cx.push(ConnOp::Associate);
    }

    /// What to ask the shard for: who may send the association's datagrams
    /// (the control connection's client, as a trusted PROXY header named it
    /// or as the socket has it), the address it reached, the listener's
    /// policy and the user; `None` when the shard did not read the socket's
    /// endpoints. The shard fills in the listener's name.
    pub fn association_ask(&self) -> Option<AssocAsk> {
        let client = self.learnt.proxied.map(|(src, _)| src).or(self.ends.peer)?;
        let local = self.ends.local?;
        Some(AssocAsk {
            client: client.ip().to_canonical(),
            local: local.ip().to_canonical(),
            spec: self.named.as_ref()?.spec.clone(),
            listener: String::new(),
            user: self.learnt.user.clone(),
        })
    }

    /// Whether this connection controls a UDP association (asked for or open).
    pub fn is_association(&self) -> bool {
        matches!(self.phase, Phase::Associating { .. } | Phase::Associated)
    }

    /// The shard opened the association (`Ok`: its socket's address, the
    /// reply's BND) or could not (`Err`: the errno).
    pub fn handle_associated(&mut self, res: Result<SocketAddr, i32>, cx: &mut Cx<'_>) {
        if !matches!(self.phase, Phase::Associating { .. }) {
            return self.after(cx);
        }
        match res {
            Ok(bound) => {
                let bytes = handshake::reply(NamedKind::Socks5, Outcome::Connected { bound });
                self.phase = Phase::Associated;
                self.queue_reply(bytes, cx);
                // Nothing more is expected from the client; reading is how
                // its close (which ends the association) is seen.
                cx.push(ConnOp::FrontRecv);
            }
            Err(errno) => {
                self.last_errno = Some(errno);
                self.refuse(Outcome::Failed { errno }, cx);
            }
        }
        self.after(cx);
    }

    /// The association ended on its own: the control connection closes
    /// under `reason`.
    pub fn association_ended(&mut self, reason: CloseReason, cx: &mut Cx<'_>) {
        if self.is_association() {
            self.end_front(reason, cx);
        }
        self.after(cx);
    }

    /// A read on an associated control connection: its bytes are
    /// discarded (RFC 1928 gives the client nothing more to say), its end
    /// ends the association.
    pub(super) fn control_read(&mut self, ev: FrontRead<'_>, cx: &mut Cx<'_>) {
        match ev {
            FrontRead::Data(_) => cx.push(ConnOp::FrontRecv),
            FrontRead::NoBuffers => {
                cx.count(Counter::Enobufs);
                cx.push(ConnOp::Starved(Side::Client));
            }
            FrontRead::Eof => self.end_front(CloseReason::ClientEof, cx),
            FrontRead::Error(e) => self.end_front(reset_reason(Side::Client, e), cx),
            FrontRead::Cancelled => {
                let reason = self.reason.unwrap_or(CloseReason::Shutdown);
                self.end_front(reason, cx);
            }
        }
        self.after(cx);
    }
}

#[cfg(test)]
mod tests;
