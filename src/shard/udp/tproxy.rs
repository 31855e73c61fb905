//! `transparent = "tproxy"` on a UDP listener: each new session goes to the
//! address its client wrote to (the datagram's IP_RECVORIGDSTADDR), once
//! the loop guard and the destination policy let it, and answers its client
//! from a reply socket bound to that address (`udp::reply`), bounded per
//! shard by `tproxy_reply_sockets`. No I/O: the reply socket is made by the
//! event loop (`Op::UdpTransparentSocket`).

use std::net::{IpAddr, SocketAddr};

use tracing::{info, warn};

use super::{UdpConn, UdpService};
use crate::config::forward::{DestinationPolicy, Refusal};
use crate::shard::context::Ctx;
use crate::shard::ops::{CQE_F_MORE, Fd, Op, RecvTemplate, result, unit};
use crate::shard::slab::SessionId;
use crate::shard::token::{OpKind, Token};
use crate::stats::{Counter, Counters};
use crate::tcp::Side;
use crate::time::Millis;
use crate::udp::loops::LoopGuard;
use crate::udp::map::SessionKey;
use crate::udp::reply::ReplySocket;
use crate::udp::{DatagramEvent, DropReason, SessionEnd, SessionOp};

use super::DatagramMeta;

/// A transparent listener's route: where its sessions may go, and how many
/// reply sockets a shard may hold for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TproxySpec {
    pub policy: DestinationPolicy,
    /// This shard's bound on the listener's reply sockets (one per session).
    pub reply_sockets: u32,
    /// The host's addresses (read by the control thread at start and
    /// reload): with a wildcard listener, a destination on its port at one
    /// of them is ringfwd itself.
    pub host: Vec<IpAddr>,
}

/// Why a transparent listener refused a new session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The datagram carried no IP_ORIGDSTADDR (the socket option is missing).
    NoDestination,
    /// The destination is one of ringfwd's own UDP listen addresses.
    Loop,
    /// Outside `destinations_allow`/`destinations_deny`/`ports`.
    Policy(Refusal),
    /// The shard holds `tproxy_reply_sockets` reply sockets for the listener.
    ReplySockets,
}

impl Refused {
    pub(super) fn drop_reason(self) -> DropReason {
        match self {
            Refused::NoDestination | Refused::Policy(_) => DropReason::Denied,
            Refused::Loop => DropReason::Loop,
            Refused::ReplySockets => DropReason::ReplySockets,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Refused::NoDestination => {
                "it carried no original destination (IP_RECVORIGDSTADDR); counted as udp_drop_denied"
            }
            Refused::Loop => {
                "its destination is one of ringfwd's own UDP listen addresses (a loop); counted as udp_drop_loop"
            }
            Refused::Policy(Refusal::Port) => {
                "its destination port is not in ports; counted as udp_drop_denied"
            }
            Refused::Policy(_) => {
                "its destination is denied by destinations_allow/destinations_deny; counted as udp_drop_denied"
            }
            Refused::ReplySockets => {
                "this shard holds tproxy_reply_sockets reply sockets for the listener (raise it, see tuning.md); counted as udp_drop_reply_sockets"
            }
        }
    }
}

/// Whether a new session to `dst` may start, with `held` reply sockets
/// already open for the listener on this shard: the loop guard first,
/// then the destination policy, then the bound.
pub(super) fn admit(
    spec: &TproxySpec,
    guard: &LoopGuard,
    held: u32,
    dst: Option<SocketAddr>,
) -> Result<SocketAddr, Refused> {
    let dst = dst.ok_or(Refused::NoDestination)?;
    if guard.is_own_destination(dst, &spec.host) {
        return Err(Refused::Loop);
    }
    spec.policy.check(dst).map_err(Refused::Policy)?;
    if held >= spec.reply_sockets {
        return Err(Refused::ReplySockets);
    }
    Ok(dst)
}

/// A transparent session's reply socket and where it is bound.
#[derive(Debug)]
pub(super) struct TproxyConn {
    pub(super) reply: ReplySocket,
    pub(super) fd: Option<Fd>,
    pub(super) orig_dst: SocketAddr,
}

impl TproxyConn {
    pub(super) fn open(orig_dst: SocketAddr, out: &mut Vec<SessionOp>) -> TproxyConn {
        TproxyConn {
            reply: ReplySocket::open(out),
            fd: None,
            orig_dst,
        }
    }
}

/// Lowers an operation on the reply socket of session `slot`; `None` for
/// the session's own operations.
pub(super) fn lower(op: SessionOp, c: &mut UdpConn, slot: SessionId) -> Option<Op> {
    let tok = |kind| Token::new(kind, Side::Client, slot.0);
    let t = c.tproxy.as_mut()?;
    let on_fd = |token: Token, f: &dyn Fn(u64, Fd) -> Op| match t.fd {
        Some(fd) => f(token.encode(), fd),
        None => Op::Fail {
            token: token.encode(),
            errno: libc::EBADF,
        },
    };
    Some(match op {
        SessionOp::OpenReply => Op::UdpTransparentSocket {
            token: tok(OpKind::TproxyOpen).encode(),
            bind: t.orig_dst,
            peer: c.client,
        },
        SessionOp::ArmReplyRecv => on_fd(tok(OpKind::TproxyRecv), &|token, fd| Op::UdpRecvMulti {
            token,
            fd,
            template: RecvTemplate::Upstream,
        }),
        SessionOp::SendClient(p) => {
            let op = on_fd(tok(OpKind::TproxySend).with_aux(p.bid), &|token, fd| {
                Op::SendDatagram {
                    token,
                    fd,
                    bid: p.bid,
                    offset: p.offset,
                    len: p.len,
                }
            });
            t.reply.send_started();
            op
        }
        SessionOp::CancelReplyRecv => Op::CancelOne {
            token: tok(OpKind::TproxyCancel).encode(),
            target: tok(OpKind::TproxyRecv).encode(),
        },
        SessionOp::CloseReply => {
            super::close_or_fail(tok(OpKind::TproxyClose).encode(), t.fd.take())
        }
        _ => return None,
    })
}

impl UdpService {
    /// For a new client of a transparent listener: whether its session
    /// may start (always, on any other listener); otherwise the reason its
    /// datagram is dropped, with a rate-limited log line.
    pub(super) fn admit_transparent(
        &mut self,
        ctx: &mut Ctx,
        index: u32,
        route: u16,
        key: &SessionKey,
        now: Millis,
    ) -> Result<(), DropReason> {
        let (Some(l), Some(r)) = (
            self.udp_listeners.get(index as usize),
            self.udp_routes.get(route as usize),
        ) else {
            return Err(DropReason::SessionLimit);
        };
        let Some(spec) = &r.transparent else {
            return Ok(());
        };
        if !ctx.fd_room(2) {
            return Err(DropReason::SessionLimit); // the session's socket and its reply socket
        }
        match admit(spec, &l.guard, l.replies, key.orig_dst) {
            Ok(_) => Ok(()),
            Err(why) => {
                if ctx.log.allow(now, ctx.shard) {
                    let dst = key.orig_dst.map(|d| d.to_string());
                    info!(shard = ctx.shard, listener = %l.spec.name, client = %key.client, destination = dst.as_deref().unwrap_or("-"), "new transparent UDP session refused: {}", why.describe());
                }
                Err(why.drop_reason())
            }
        }
    }

    /// A completion on a session's reply socket.
    pub(super) fn on_reply_cqe(
        &mut self,
        ctx: &mut Ctx,
        token: Token,
        res: i32,
        flags: u32,
        meta: Option<DatagramMeta>,
        now: Millis,
    ) {
        let slot = SessionId(token.slot);
        let Some(c) = self.sessions.get_mut(slot) else {
            return;
        };
        if c.tproxy.is_none() {
            // Not a transparent session's (a bug guard): give back what it carries.
            self.udp_stale(ctx, token, res, flags);
            return;
        }
        let out = &mut self.session_ops;
        let (stats, name) = match self.udp_listeners.get_mut(c.listener as usize) {
            Some(l) => (&mut l.counters, l.spec.name.as_str()),
            None => (&mut ctx.counters, "?"),
        };
        let Some(t) = c.tproxy.as_mut() else {
            return;
        };
        match token.kind {
            OpKind::TproxyOpen => {
                if res >= 0 {
                    t.fd = Some(Fd(res));
                }
                if let Err(e) = t.reply.handle_open(unit(res), out) {
                    c.session.abort(SessionEnd::Error, out);
                    if ctx.log.allow(now, ctx.shard) {
                        let error = std::io::Error::from_raw_os_error(e);
                        warn!(shard = ctx.shard, listener = %name, client = %c.client, destination = %t.orig_dst, %error, "transparent UDP session ended: its reply socket could not be bound to the destination (EADDRINUSE: a socket of this host holds that address and port without SO_REUSEADDR, keep local services off intercepted destinations; EPERM: ringfwd lacks CAP_NET_ADMIN); counted in udp_end_error");
                    }
                }
            }
            OpKind::TproxyRecv => {
                let more = flags & CQE_F_MORE != 0;
                let ev = super::recv_event(res, flags, meta, &mut self.dgram, out);
                client_datagram(c, ev, now, out, stats);
                if let Some(t) = c.tproxy.as_mut() {
                    t.reply.handle_recv(ev, more, out);
                }
            }
            OpKind::TproxySend => {
                c.session
                    .handle_sent_client(token.aux, result(res), out, stats);
                t.reply.handle_sent(out);
            }
            OpKind::TproxyCancel => t.reply.handle_cancel(out),
            OpKind::TproxyClose => t.reply.handle_close(),
            _ => {}
        }
        self.after_session(ctx, slot, now);
    }

    /// Each listener slot: whether it is a transparent listener (its
    /// receive template has room for the original destination).
    pub fn udp_listener_transparent(&self) -> Vec<bool> {
        self.udp_listeners
            .iter()
            .map(|l| self.listener_is_transparent(l))
            .collect()
    }

    fn listener_is_transparent(&self, l: &super::UdpListener) -> bool {
        match l.spec.kind {
            super::UdpKind::Forward { route } => self
                .udp_routes
                .get(route as usize)
                .is_some_and(|r| r.transparent.is_some()),
            super::UdpKind::Echo => false,
        }
    }
}

/// A client datagram read from the reply socket: into the session, as one
/// read from the listener would be.
fn client_datagram(
    c: &mut UdpConn,
    ev: DatagramEvent,
    now: Millis,
    out: &mut Vec<SessionOp>,
    stats: &mut Counters,
) {
    match ev {
        DatagramEvent::Data(p) if !c.session.is_closing() => {
            c.session.handle_client_datagram(p, now, out, stats);
        }
        DatagramEvent::Data(p) => {
            stats.udp_drop(DropReason::Late);
            out.push(SessionOp::Release(p.bid));
        }
        DatagramEvent::Truncated { bid } => {
            stats.udp_drop(DropReason::Truncated);
            out.push(SessionOp::Release(bid));
        }
        DatagramEvent::NoBuffers => stats.inc(Counter::UdpEnobufs),
        DatagramEvent::Cancelled | DatagramEvent::Error(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    fn spec(bound: u32) -> TproxySpec {
        TproxySpec {
            policy: DestinationPolicy {
                allow: vec![Cidr::parse("10.231.0.0/16").expect("cidr")],
                deny: vec![Cidr::parse("10.231.9.0/24").expect("cidr")],
                ports: vec![53..=53, 7000..=7999],
            },
            reply_sockets: bound,
            host: vec!["10.231.1.1".parse().expect("ip")],
        }
    }

    fn a(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("addr"))
    }

    #[test]
    fn a_new_session_passes_the_loop_guard_the_policy_and_the_bound() {
        let guard = LoopGuard::new(&["0.0.0.0:7053".parse().expect("addr")], &[]);
        let s = spec(2);
        assert_eq!(
            admit(&s, &guard, 0, a("10.231.2.2:53")),
            Ok("10.231.2.2:53".parse().expect("addr"))
        );
        assert_eq!(
            admit(&s, &guard, 1, a("10.231.2.2:7001")).map(|_| ()),
            Ok(())
        );
        assert_eq!(admit(&s, &guard, 0, None), Err(Refused::NoDestination));
        assert_eq!(
            admit(&s, &guard, 0, a("10.231.1.1:7053")),
            Err(Refused::Loop),
            "the listener's own port on a host address: a loop, even where the policy allows it"
        );
        assert_eq!(
            admit(&s, &guard, 0, a("10.231.2.2:54")),
            Err(Refused::Policy(Refusal::Port))
        );
        assert_eq!(
            admit(&s, &guard, 0, a("10.231.9.2:53")),
            Err(Refused::Policy(Refusal::Address))
        );
        assert_eq!(
            admit(&s, &guard, 0, a("192.0.2.1:53")),
            Err(Refused::Policy(Refusal::Address))
        );
        assert_eq!(
            admit(&s, &guard, 2, a("10.231.2.2:53")),
            Err(Refused::ReplySockets),
            "at the bound"
        );
    }

    #[test]
    fn each_refusal_is_counted_under_its_reason() {
        assert_eq!(Refused::Loop.drop_reason(), DropReason::Loop);
        assert_eq!(
            Refused::Policy(Refusal::Address).drop_reason(),
            DropReason::Denied
        );
        assert_eq!(
            Refused::ReplySockets.drop_reason(),
            DropReason::ReplySockets
        );
        assert_eq!(DropReason::ReplySockets.name(), "reply_sockets");
    }

    /// The engine, with a fake kernel's completions given by hand: a
    /// transparent session's two sockets, both receives, the bound, and a
    /// teardown that closes the reply socket only after its send is back.
    mod engine {
        use super::*;
        use crate::shard::engine::{Engine, EngineConfig, FdBudget};
        use crate::shard::ops::CQE_F_BUFFER;
        use crate::shard::udp::{UdpKind, UdpListenerSpec, UdpRouteSpec};

        fn addr(s: &str) -> SocketAddr {
            s.parse().expect("addr")
        }

        fn engine() -> Engine {
            Engine::new(
                EngineConfig {
                    shard: 0,
                    datagram_buffers: 8,
                    udp_listeners: vec![UdpListenerSpec {
                        name: "tp".into(),
                        fd: 7,
                        kind: UdpKind::Forward { route: 0 },
                        limit: 100,
                        listen: addr("0.0.0.0:15353"),
                    }],
                    udp_routes: vec![UdpRouteSpec {
                        upstreams: Vec::new(),
                        weights: Vec::new(),
                        balance: crate::config::Balance::RoundRobin,
                        passive: crate::config::PassiveHealth::default(),
                        session_rcvbuf: None,
                        send_proxy: false,
                        idle_ms: 60_000,
                        max_responses: None,
                        new_sessions_per_second_per_source: None,
                        allow: Vec::new(),
                        deny: Vec::new(),
                        transparent: Some(TproxySpec {
                            policy: DestinationPolicy {
                                allow: Vec::new(),
                                deny: Vec::new(),
                                ports: Vec::new(),
                            },
                            reply_sockets: 1,
                            host: Vec::new(),
                        }),
                    }],
                    fd_budget: FdBudget::Max(16),
                    ..EngineConfig::default()
                },
                0,
            )
        }

        fn take(engine: &mut Engine) -> Vec<Op> {
            let mut ops = Vec::new();
            engine.take_ops(&mut ops);
            ops
        }

        fn meta(src: Option<SocketAddr>, orig_dst: Option<SocketAddr>) -> DatagramMeta {
            DatagramMeta {
                src,
                local: None,
                offset: 0,
                len: 4,
                truncated: false,
                drops: None,
                orig_dst,
            }
        }

        fn flags(bid: u16) -> u32 {
            CQE_F_BUFFER | CQE_F_MORE | (u32::from(bid) << 16)
        }

        fn kind(token: u64) -> Option<OpKind> {
            Token::decode(token).map(|t| t.kind)
        }

        /// The token of the first op `f` picks out.
        fn find(ops: &[Op], f: impl Fn(&Op) -> Option<u64>) -> u64 {
            ops.iter()
                .find_map(f)
                .unwrap_or_else(|| panic!("not among {ops:?}"))
        }

        /// A session to 10.9.0.1:53 with its reply socket (fd 100) and
        /// upstream socket (fd 101) open and receiving, its first datagram
        /// sent; a second destination refused by the bound. Returns the
        /// tokens of the reply receive, the upstream receive and the send.
        fn ready_session(e: &mut Engine) -> (u64, u64, u64) {
            e.start();
            let listen = find(&take(e), |op| match op {
                Op::UdpRecvMulti { token, .. } => Some(*token),
                _ => None,
            });
            let (client, a, b) = (
                addr("10.0.0.1:4000"),
                addr("10.9.0.1:53"),
                addr("10.9.0.2:53"),
            );
            e.handle_datagram_cqe(listen, 4, flags(0), Some(meta(Some(client), Some(a))), 1);
            let opened = take(e);
            let socket = find(&opened, |op| match op {
                Op::UdpSocket { token, .. } => Some(*token),
                _ => None,
            });
            let reply = find(&opened, |op| match op {
                Op::UdpTransparentSocket { token, bind, peer } if *bind == a && *peer == client => {
                    Some(*token)
                }
                _ => None,
            });
            // A second destination of the same client is another session:
            // over the bound of one reply socket, refused and counted.
            e.handle_datagram_cqe(listen, 4, flags(1), Some(meta(Some(client), Some(b))), 1);
            assert!(take(e).contains(&Op::ReleaseDatagram { bid: 1 }));
            assert_eq!(e.stats().udp_drops_for(DropReason::ReplySockets), 1);

            e.handle_cqe(reply, 100, 0, 2);
            let reply_recv = find(&take(e), |op| match op {
                Op::UdpRecvMulti {
                    token,
                    fd,
                    template: RecvTemplate::Upstream,
                } if fd.raw() == 100 => Some(*token),
                _ => None,
            });
            e.handle_cqe(socket, 101, 0, 2);
            let connect = find(&take(e), |op| match op {
                Op::UdpConnect { token, addr, .. } if *addr == a => Some(*token),
                _ => None,
            });
            e.handle_cqe(connect, 0, 0, 3);
            let ready = take(e);
            let up_recv = find(&ready, |op| match op {
                Op::UdpRecvMulti { token, fd, .. } if fd.raw() == 101 => Some(*token),
                _ => None,
            });
            let first = find(&ready, |op| match op {
                Op::SendDatagram {
                    token, fd, bid: 0, ..
                } if fd.raw() == 101 => Some(*token),
                _ => None,
            });
            (reply_recv, up_recv, first)
        }

        #[test]
        fn a_transparent_session_lives_and_ends_with_its_reply_socket() {
            let mut e = engine();
            let (reply_recv, up_recv, first) = ready_session(&mut e);
            // The client's later datagram, read from the reply socket,
            // goes up like one read from the listener.
            e.handle_datagram_cqe(reply_recv, 4, flags(2), Some(meta(None, None)), 4);
            let second = find(&take(&mut e), |op| match op {
                Op::SendDatagram {
                    token, fd, bid: 2, ..
                } if fd.raw() == 101 => Some(*token),
                _ => None,
            });
            // The upstream's answer leaves from the reply socket.
            e.handle_datagram_cqe(up_recv, 4, flags(3), Some(meta(None, None)), 5);
            let answer = find(&take(&mut e), |op| match op {
                Op::SendDatagram {
                    token, fd, bid: 3, ..
                } if fd.raw() == 100 => Some(*token),
                _ => None,
            });
            assert_eq!(kind(answer), Some(OpKind::TproxySend));
            e.handle_cqe(first, 4, 0, 6);
            e.handle_cqe(second, 4, 0, 6);
            take(&mut e);

            // Shutdown: both receives are cancelled; the reply socket
            // stays open while its send is in flight.
            e.stop(7);
            let stopping = take(&mut e);
            let cancels: Vec<u64> = stopping
                .iter()
                .filter_map(|op| match op {
                    Op::CancelOne { token, target } => Some((*token, *target)),
                    _ => None,
                })
                .map(|(token, target)| {
                    assert!(target == up_recv || target == reply_recv, "{stopping:?}");
                    token
                })
                .collect();
            assert_eq!(cancels.len(), 2, "{stopping:?}");
            for c in cancels {
                e.handle_cqe(c, 0, 0, 8);
            }
            e.handle_datagram_cqe(up_recv, -libc::ECANCELED, 0, None, 8);
            e.handle_datagram_cqe(reply_recv, -libc::ECANCELED, 0, None, 8);
            let closing = take(&mut e);
            assert!(
                !closing
                    .iter()
                    .any(|op| matches!(op, Op::Close { fd, .. } if fd.raw() == 100)),
                "the reply socket closed under its send: {closing:?}"
            );
            let mut closes: Vec<u64> = closing
                .iter()
                .filter_map(|op| match op {
                    Op::Close { token, fd, .. } if fd.raw() == 101 => Some(*token),
                    _ => None,
                })
                .collect();
            e.handle_cqe(answer, 4, 0, 9);
            let last = take(&mut e);
            closes.extend(last.iter().filter_map(|op| match op {
                Op::Close { token, fd, .. } if fd.raw() == 100 => Some(*token),
                _ => None,
            }));
            assert_eq!(closes.len(), 2, "{closing:?} {last:?}");
            assert_eq!(e.sessions(), 1, "freed before its sockets closed");
            for c in closes {
                e.handle_cqe(c, 0, 0, 10);
            }
            assert_eq!(e.sessions(), 0);
            let stats = e.stats();
            assert_eq!(stats.get(Counter::UdpDatagramsC2u), 2);
            assert_eq!(stats.get(Counter::UdpDatagramsU2c), 1);
            assert_eq!(stats.get(Counter::StaleCompletions), 0);
        }
    }
}
