//! A relay whose client names its destination (SOCKS5, HTTP CONNECT) or
//! dialled it (`transparent`): the destination checked against the
//! listener's policy, a name resolved by the shard, each address tried in
//! turn, and the protocol's reply sent before the upstream's bytes. Replies
//! go out one send at a time, in order, from a queue the relay owns.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{Phase, Relay};
use crate::front::Destination;
use crate::stats::CloseReason;
use crate::tcp::cx::Cx;
use crate::tcp::handshake::{self, NamedKind, NamedSpec, Outcome, ResolveFail};
use crate::tcp::{ConnOp, Emit, Side};
use crate::time::Millis;
use crate::upstream::Target;

/// How long a refused client has to read its reply before the connection
/// is closed anyway (it may never read).
pub(super) const REFUSING_MS: Millis = 5_000;
/// A bound on waiting for the shard's resolver, which answers on its own
/// within its timeouts and attempts; this only keeps a lost answer from
/// holding the connection.
pub(super) const RESOLVING_MS: Millis = 60_000;

/// The named part of a relay.
#[derive(Debug)]
pub(super) struct Named {
    pub(super) spec: Arc<NamedSpec>,
    /// The destination: from the handshake, or set by the shard at accept
    /// (transparent).
    pub(super) dst: Option<Destination>,
    /// Addresses to try, in order, and how many were taken.
    addrs: Vec<SocketAddr>,
    next: usize,
    /// The connected upstream socket's local address (SOCKS5's BND).
    pub(super) bound: Option<SocketAddr>,
}

impl Named {
    pub(super) fn new(spec: Arc<NamedSpec>) -> Named {
        Named {
            spec,
            dst: None,
            addrs: Vec::new(),
            next: 0,
            bound: None,
        }
    }
}

/// What happens once every queued reply byte is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum AfterReply {
    /// Nothing (a handshake reply; the handshake goes on).
    #[default]
    Nothing,
    /// The success reply: the upstream's bytes may follow it.
    StartUpstream,
    /// A refusal: FIN, then close once the client has read it.
    Close(CloseReason),
}

/// Bytes for the client the relay sends before any of the upstream's.
#[derive(Debug, Default)]
pub(super) struct ReplyQueue {
    bytes: Vec<u8>,
    sent: usize,
    in_flight: bool,
    pub(super) then: AfterReply,
}

impl ReplyQueue {
    pub(super) fn busy(&self) -> bool {
        self.in_flight
    }

    pub(super) fn from(&self, offset: u32) -> &[u8] {
        self.bytes.get(offset as usize..).unwrap_or_default()
    }
}

impl Relay {
    /// A relay whose client names (or dialled) its destination.
    pub fn set_named(&mut self, spec: Arc<NamedSpec>) {
        self.named = Some(Named::new(spec));
    }

    /// `transparent`: the address the client dialled (read at accept).
    pub fn set_destination(&mut self, dst: SocketAddr) {
        if let Some(n) = self.named.as_mut() {
            n.dst = Some(Destination::Ip(dst));
        }
    }

    /// The upstream socket's local address, read once its connect succeeded
    /// (before `handle_connect`).
    pub fn set_bound(&mut self, bound: Option<SocketAddr>) {
        if let Some(n) = self.named.as_mut() {
            n.bound = bound;
        }
    }

    /// Whether the shard should read the upstream socket's local address
    /// when its connect succeeds (a SOCKS5 reply names it).
    pub fn wants_bound(&self) -> bool {
        self.named
            .as_ref()
            .is_some_and(|n| n.spec.kind == NamedKind::Socks5)
    }

    /// The name a `ConnOp::Resolve` asks for.
    pub fn resolve_name(&self) -> Option<&str> {
        match self.named.as_ref()?.dst.as_ref()? {
            Destination::Name(name, _) => Some(name),
            Destination::Ip(_) => None,
        }
    }

    /// The destination the client asked for (or dialled), for the access log.
    pub fn destination(&self) -> Option<&Destination> {
        self.named.as_ref()?.dst.as_ref()
    }

    /// The reply bytes from `offset`, for the shard to copy into a send.
    pub fn reply_from(&self, offset: u32) -> &[u8] {
        self.replies.from(offset)
    }

    /// Transparent listeners go straight to their destination; the others
    /// read a handshake first. `false`: not a named relay.
    pub(super) fn start_named(&mut self, cx: &mut Cx<'_>) -> bool {
        let Some(n) = self.named.as_ref() else {
            return false;
        };
        if n.spec.kind != NamedKind::Transparent {
            return false;
        }
        match n.dst.clone() {
            Some(dst) => self.go_to(dst, cx),
            None => self.refuse_now(CloseReason::NoDestination, cx),
        }
        true
    }

    /// The handshake named `dst`: check its port, then resolve or connect.
    pub(super) fn go_to(&mut self, dst: Destination, cx: &mut Cx<'_>) {
        let Some(n) = self.named.as_mut() else {
            return;
        };
        n.dst = Some(dst.clone());
        if !n.spec.policy.port_allowed(dst.port()) {
            let refusal = crate::config::forward::Refusal::Port;
            return self.refuse(Outcome::Refused(refusal), cx);
        }
        match dst {
            Destination::Ip(addr) => self.try_addresses(vec![addr], cx),
            Destination::Name(..) => {
                self.phase = Phase::Resolving {
                    until: cx.now.saturating_add(RESOLVING_MS),
                };
                cx.push(ConnOp::Resolve);
            }
        }
    }

    /// The shard's resolver answered (addresses in preference order).
    pub fn handle_resolved(&mut self, answer: Result<Vec<IpAddr>, ResolveFail>, cx: &mut Cx<'_>) {
        if !matches!(self.phase, Phase::Resolving { .. }) {
            return self.after(cx);
        }
        let port = self
            .named
            .as_ref()
            .and_then(|n| n.dst.as_ref())
            .map(Destination::port);
        match (answer, port) {
            (Ok(ips), Some(port)) if !ips.is_empty() => {
                let addrs = ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect();
                self.try_addresses(addrs, cx);
            }
            (Ok(_), _) => self.refuse(Outcome::Unresolved(ResolveFail::NotFound), cx),
            (Err(f), _) => self.refuse(Outcome::Unresolved(f), cx),
        }
        self.after(cx);
    }

    /// Keeps the addresses the policy allows and tries the first; refused
    /// with the first refusal when none is allowed (a name that resolves to
    /// a denied address is denied, whatever the name).
    fn try_addresses(&mut self, addrs: Vec<SocketAddr>, cx: &mut Cx<'_>) {
        let Some(n) = self.named.as_mut() else {
            return;
        };
        let mut refusal = None;
        n.addrs = addrs
            .into_iter()
            .filter(|a| match n.spec.check(*a) {
                Ok(()) => true,
                Err(r) => {
                    refusal.get_or_insert(r);
                    false
                }
            })
            .collect();
        n.next = 0;
        match (n.addrs.is_empty(), refusal) {
            (true, Some(r)) => self.refuse(Outcome::Refused(r), cx),
            (true, None) => self.refuse(Outcome::Unresolved(ResolveFail::NotFound), cx),
            (false, _) => {
                self.phase = Phase::Connecting;
                self.next_named(cx);
            }
        }
    }

    /// The next address to try, or the reply that every one failed.
    pub(super) fn next_named(&mut self, cx: &mut Cx<'_>) {
        let next = self.named.as_mut().and_then(|n| {
            let a = n.addrs.get(n.next).copied();
            n.next += 1;
            a
        });
        match next {
            Some(addr) => self.handle_target(
                Some(Target {
                    upstream: None,
                    addr,
                }),
                cx,
            ),
            None => {
                let errno = self.last_errno.unwrap_or(libc::EHOSTUNREACH);
                self.refuse(Outcome::Failed { errno }, cx);
            }
        }
    }

    /// Connected: the success reply goes first; the upstream's bytes follow it.
    /// Returns whether the upstream direction must wait for it.
    pub(super) fn connected_named(&mut self, cx: &mut Cx<'_>) -> bool {
        let Some(n) = self.named.as_ref() else {
            return false;
        };
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let bound = n.bound.unwrap_or(unspecified);
        let bytes = handshake::reply(n.spec.kind, Outcome::Connected { bound });
        if bytes.is_empty() {
            return false;
        }
        self.replies.then = AfterReply::StartUpstream;
        self.queue_reply(bytes, cx);
        true
    }

    /// The destination cannot be reached: the protocol's reply, then close.
    pub(super) fn refuse(&mut self, outcome: Outcome, cx: &mut Cx<'_>) {
        let reason = outcome.reason().unwrap_or(CloseReason::Error);
        let bytes = self
            .named
            .as_ref()
            .map(|n| handshake::reply(n.spec.kind, outcome))
            .unwrap_or_default();
        self.queue_reply(bytes, cx);
        self.refuse_now(reason, cx);
    }

    /// Close under `reason` once what is queued for the client is sent.
    pub(super) fn refuse_now(&mut self, reason: CloseReason, cx: &mut Cx<'_>) {
        self.front = None;
        self.reason = Some(reason);
        // A queued reply is always in flight (`queue_reply` sends at once);
        // with none, there is nothing to wait for.
        if self.replies.busy() {
            self.replies.then = AfterReply::Close(reason);
            self.phase = Phase::Refusing {
                until: cx.now.saturating_add(REFUSING_MS),
            };
        } else {
            self.end_front(reason, cx);
        }
    }

    /// Appends to the replies and sends, unless a send is in flight (its
    /// completion sends the rest).
    pub(super) fn queue_reply(&mut self, bytes: Vec<u8>, cx: &mut Cx<'_>) {
        if bytes.is_empty() {
            return;
        }
        if !self.replies.in_flight && self.replies.sent == self.replies.bytes.len() {
            self.replies.bytes.clear();
            self.replies.sent = 0;
        }
        self.replies.bytes.extend_from_slice(&bytes);
        if !self.replies.in_flight {
            self.replies.in_flight = true;
            let offset = u32::try_from(self.replies.sent).unwrap_or(u32::MAX);
            cx.push(ConnOp::SendReply { offset });
        }
    }

    /// A reply send completed.
    pub(super) fn reply_sent(&mut self, res: Result<u32, i32>, cx: &mut Cx<'_>) {
        self.replies.in_flight = false;
        let n = match res {
            Ok(n) if n > 0 => n as usize,
            Ok(_) | Err(_) => {
                self.last_errno = res.err();
                if self.phase != Phase::Closing {
                    let reason = self.reason.unwrap_or(CloseReason::ClientReset);
                    self.end_front(reason, cx);
                }
                return self.after(cx);
            }
        };
        self.replies.sent = (self.replies.sent + n).min(self.replies.bytes.len());
        if self.replies.sent < self.replies.bytes.len() {
            self.replies.in_flight = true;
            let offset = u32::try_from(self.replies.sent).unwrap_or(u32::MAX);
            cx.push(ConnOp::SendReply { offset });
            return self.after(cx);
        }
        self.replies.bytes = Vec::new();
        self.replies.sent = 0;
        match std::mem::take(&mut self.replies.then) {
            AfterReply::Nothing => {}
            AfterReply::StartUpstream => {
                if self.phase == Phase::Relaying {
                    self.start_direction(Side::Upstream, cx);
                }
            }
            AfterReply::Close(reason) => {
                if matches!(self.phase, Phase::Refusing { .. }) {
                    self.linger(reason, cx.now, cx);
                }
            }
        }
        self.after(cx);
    }
}

#[cfg(test)]
mod tests;
