//! Turning a connection's `ConnOp`s into ring `Op`s: tokens, descriptors,
//! pipe ends, connect targets; answering the requests that are answered at
//! once (a pipe, the next target) and noting outcomes for the balancer and
//! the upstream's counters. Then the connection is freed if it finished, or
//! its timer rescheduled.

use super::TcpService;
use super::conn::Conn;
use crate::shard::context::{Ctx, TimerKey};
use crate::shard::ops::{Family, Fd, Op, StreamProto};
use crate::shard::slab::ConnId;
use crate::shard::token::{OpKind, Token};
use crate::stats::{Counter, Counters};
use crate::tcp::cx::Cx;
use crate::tcp::splice::SpliceEnd;
use crate::tcp::{ConnOp, Side};
use crate::time::Millis;
use crate::upstream::{Outcome, Pool, Target};

/// A request answered before any completion.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Pipe(Side),
    Target,
}

impl TcpService {
    /// Lowers the state machine's requests, answers the immediate ones (whose
    /// answers may request more), then frees the connection if it has
    /// finished or (re)schedules its timer.
    pub(super) fn after_conn(&mut self, ctx: &mut Ctx, id: ConnId, now: Millis) {
        let mut answers: [Option<Answer>; 4] = [None; 4];
        loop {
            let mut n = 0;
            let Some(conn) = self.conns.get_mut(id) else {
                self.scratch.clear();
                return;
            };
            let route = conn.route.or_else(|| {
                self.listeners
                    .get(conn.listener as usize)
                    .and_then(|l| match l.spec.kind {
                        super::ListenerKind::Forward { route } => Some(route),
                        _ => None,
                    })
            });
            let connect_ms = route
                .and_then(|r| self.routes.get(r as usize))
                .map_or(0, |r| r.spec.connect_timeout_ms);
            for op in self.scratch.drain(..) {
                let tok = |kind, side| Token::new(kind, side, id.0).encode();
                let lowered = match op {
                    ConnOp::NextTarget => {
                        push_answer(&mut answers, &mut n, Answer::Target);
                        continue;
                    }
                    ConnOp::Resolve => {
                        if let Some(name) = conn.logic.resolve_name() {
                            self.lookups.push((id, name.to_owned()));
                        }
                        continue;
                    }
                    ConnOp::Associate => {
                        let listener = self.listeners.get(conn.listener as usize);
                        let name = listener.map(|l| l.spec.name.clone()).unwrap_or_default();
                        self.associations
                            .ask(id, conn.logic.association_ask(), name);
                        continue;
                    }
                    ConnOp::WantPipe(side) => {
                        push_answer(&mut answers, &mut n, Answer::Pipe(side));
                        continue;
                    }
                    ConnOp::Report { target, outcome } => {
                        note_outcome(&mut self.upstreams, target, outcome);
                        let r = conn.route.or(route);
                        if let Some(r) = r.and_then(|r| self.routes.get_mut(r as usize))
                            && let Some(change) = r.balancer.report(target, outcome, now)
                        {
                            let fail_ms = r.balancer.fail_ms();
                            let ups = self.upstreams.as_mut_slice();
                            super::health::changed(ctx, ups, target, change, fail_ms, now);
                        }
                        continue;
                    }
                    ConnOp::Release(bid) => {
                        self.bufs.give();
                        Op::Release { bid }
                    }
                    ConnOp::Starved(side) => {
                        self.starved.push_back((id, side));
                        continue;
                    }
                    ConnOp::ReturnPipe { pipe, clean } => match self.pipes.give_back(pipe, clean) {
                        Some(fds) => {
                            ctx.counters.inc(Counter::PipesDiscarded);
                            Op::ReplacePipe { pipe: pipe.0, fds }
                        }
                        None => continue,
                    },
                    ConnOp::OpenUpstream { target } => Op::Socket {
                        token: tok(OpKind::Socket, Side::Upstream),
                        family: Family::of(target.addr),
                        proto: route
                            .and_then(|r| self.routes.get(r as usize))
                            .map_or(StreamProto::Tcp, |r| r.spec.upstream_proto),
                    },
                    ConnOp::Connect { target } => {
                        let token = tok(OpKind::Connect, Side::Upstream);
                        let timeout_token = tok(OpKind::ConnectTimeout, Side::Upstream);
                        match conn.fds[Side::Upstream.index()] {
                            Some(fd) => Op::Connect {
                                token,
                                timeout_token,
                                fd,
                                addr: target.addr,
                                timeout_ms: connect_ms,
                            },
                            None => {
                                ctx.push(fail(timeout_token));
                                fail(token)
                            }
                        }
                    }
                    other => match lower_io(other, conn, id, &self.pipes) {
                        Some(op) => op,
                        None => continue,
                    },
                };
                ctx.push(lowered);
            }
            if n == 0 {
                break;
            }
            self.answer(&answers[..n], id, route, now);
        }
        self.schedule_or_finish(ctx, id, now);
    }

    /// Answers the immediate requests of connection `id`.
    fn answer(&mut self, answers: &[Option<Answer>], id: ConnId, route: Option<u16>, now: Millis) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let Some(l) = self.listeners.get_mut(conn.listener as usize) else {
            return;
        };
        for a in answers.iter().flatten() {
            let mut cx = Cx::new(&mut self.scratch, &mut conn.life, &mut l.counters, now);
            match *a {
                Answer::Pipe(side) => {
                    let grant = self.pipes.take();
                    if let Some(unused) = conn.logic.handle_pipe(side, grant, &mut cx) {
                        let _ = self.pipes.give_back(unused, true);
                    }
                }
                Answer::Target => {
                    // The first request fixes the connection's route: an SNI
                    // route whose names match, else the listener's own.
                    let route = *conn.route.get_or_insert_with(|| {
                        let sni = l.spec.front.sni.as_ref().and_then(|s| {
                            let i = s.names.route(conn.logic.sni()?)?;
                            s.routes.get(i).copied()
                        });
                        sni.or(route).unwrap_or(0)
                    });
                    // hash_source's key: the client a trusted PROXY header
                    // named, else the peer.
                    let client = conn.logic.seen().proxied.or(conn.ends.peer);
                    // A target is asked for when the last attempt failed:
                    // the connection moves on, and is no longer active there.
                    let held = conn.active_on.take();
                    super::health::release_active(&self.upstreams, &mut self.routes, held);
                    let balancer = self.routes.get_mut(route as usize).map(|r| &mut r.balancer);
                    let picked = match (balancer, conn.logic.attempts()) {
                        (Some(b), Some(walk)) => b.pick(client, walk, now),
                        _ => None,
                    };
                    let target = picked.map(|p| p.target);
                    conn.active_on = target.and_then(|t| t.upstream);
                    let all_down = picked.is_some_and(|p| p.pool == Pool::AllDown);
                    if all_down {
                        cx.count(Counter::AllDown);
                    }
                    // Counted when taken, as the listener counts it.
                    if let Some(u) = target
                        .and_then(|t| t.upstream)
                        .and_then(|u| self.upstreams.get_mut(u.0 as usize))
                    {
                        u.counters.inc(Counter::ConnectAttempts);
                        if all_down {
                            u.counters.inc(Counter::AllDown);
                        }
                    }
                    conn.logic.handle_target(target, &mut cx);
                }
            }
        }
    }

    fn schedule_or_finish(&mut self, ctx: &mut Ctx, id: ConnId, now: Millis) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !conn.is_finished() {
            if let Some(at) = conn.deadline().and_then(|d| conn.timer.schedule(d)) {
                ctx.timers.insert(at, TimerKey::Conn { id, deadline: at });
            }
            return;
        }
        self.finish(ctx, id, now);
    }
}

fn push_answer(answers: &mut [Option<Answer>; 4], n: &mut usize, a: Answer) {
    // A connection asks at most for two pipes and one target per step; a
    // request dropped here would leave it waiting for an answer.
    debug_assert!(
        *n < answers.len(),
        "more immediate requests than one step makes"
    );
    if let Some(slot) = answers.get_mut(*n) {
        *slot = Some(a);
        *n += 1;
    }
}

/// The completion of an operation that could not be issued: EBADF, so the
/// state machine sees it fail and its accounting stays exact.
fn fail(token: u64) -> Op {
    Op::Fail {
        token,
        errno: libc::EBADF,
    }
}

fn note_outcome(upstreams: &mut [super::Upstream], target: Target, outcome: Outcome) {
    let Some(u) = target
        .upstream
        .and_then(|u| upstreams.get_mut(u.0 as usize))
    else {
        return;
    };
    let c: &mut Counters = &mut u.counters;
    match outcome {
        Outcome::Connected => {}
        Outcome::Refused => c.inc(Counter::ConnectRefused),
        Outcome::Timeout => c.inc(Counter::ConnectTimeouts),
        Outcome::Error => c.inc(Counter::ConnectErrors),
    }
}

/// Lowers an operation on one of the connection's sockets (or pipes).
fn lower_io(
    op: ConnOp,
    conn: &mut Conn,
    id: ConnId,
    pipes: &crate::shard::pipes::PipePool,
) -> Option<Op> {
    let tok = |kind, side| Token::new(kind, side, id.0).encode();
    let fd = |side: Side| conn.fds[side.index()];
    let with = |token: u64, fd: Option<Fd>, f: &dyn Fn(Fd) -> Op| match fd {
        Some(fd) => f(fd),
        None => fail(token),
    };
    Some(match op {
        ConnOp::ArmRecv(side) => {
            let token = tok(OpKind::Recv, side);
            with(token, fd(side), &|fd| Op::RecvMulti { token, fd })
        }
        ConnOp::RecvUpTo { side, max } => {
            let token = tok(OpKind::Recv, side);
            with(token, fd(side), &|fd| Op::RecvUpTo {
                token,
                fd,
                len: max,
            })
        }
        ConnOp::FrontRecv => {
            let token = tok(OpKind::FrontRecv, Side::Client);
            with(token, fd(Side::Client), &|fd| Op::RecvOnce { token, fd })
        }
        ConnOp::SendPreface { offset } => {
            let token = tok(OpKind::Send, Side::Upstream);
            match (fd(Side::Upstream), conn.logic.preface_from(offset)) {
                (Some(fd), Some(bytes)) => Op::SendOwned { token, fd, bytes },
                _ => fail(token),
            }
        }
        ConnOp::SendReply { offset } => {
            let token = tok(OpKind::Send, Side::Client);
            match (fd(Side::Client), conn.logic.reply_from(offset)) {
                (Some(fd), Some(bytes)) => Op::SendOwned { token, fd, bytes },
                _ => fail(token),
            }
        }
        ConnOp::CancelRecv(side) => Op::CancelOne {
            token: tok(OpKind::CancelRecv, side),
            target: tok(OpKind::Recv, side),
        },
        ConnOp::Send {
            side,
            bid,
            offset,
            len,
        } => {
            let token = tok(OpKind::Send, side);
            with(token, fd(side), &|fd| Op::Send {
                token,
                fd,
                bid,
                offset,
                len,
            })
        }
        ConnOp::SendRegion { side, offset, len } => {
            let token = tok(OpKind::Send, side);
            with(token, fd(side), &|fd| Op::SendRegion {
                token,
                fd,
                offset,
                len,
            })
        }
        ConnOp::Shutdown(side) => {
            let token = tok(OpKind::Shutdown, side);
            with(token, fd(side), &|fd| Op::Shutdown { token, fd })
        }
        ConnOp::CancelAll(side) => {
            let token = tok(OpKind::CancelAll, side);
            with(token, fd(side), &|fd| Op::CancelFd { token, fd })
        }
        ConnOp::Close { side, linger0 } => {
            let token = tok(OpKind::Close, side);
            match conn.fds[side.index()].take() {
                Some(fd) => Op::Close { token, fd, linger0 },
                None => fail(token),
            }
        }
        ConnOp::Discard => {
            let token = tok(OpKind::Discard, Side::Upstream);
            match conn.fds[Side::Upstream.index()].take() {
                Some(fd) => Op::Close {
                    token,
                    fd,
                    linger0: false,
                },
                None => fail(token),
            }
        }
        ConnOp::SpliceIn { .. } | ConnOp::SpliceOut { .. } | ConnOp::CancelSplice { .. } => {
            return lower_splice(op, conn, id, pipes);
        }
        // Handled by the caller (answered at once, or shard bookkeeping).
        ConnOp::NextTarget
        | ConnOp::Resolve
        | ConnOp::Associate
        | ConnOp::WantPipe(_)
        | ConnOp::Report { .. }
        | ConnOp::Release(_)
        | ConnOp::Starved(_)
        | ConnOp::ReturnPipe { .. }
        | ConnOp::OpenUpstream { .. }
        | ConnOp::Connect { .. } => return None,
    })
}

/// Lowers a splice into or out of a lent pipe, or its cancel.
fn lower_splice(
    op: ConnOp,
    conn: &Conn,
    id: ConnId,
    pipes: &crate::shard::pipes::PipePool,
) -> Option<Op> {
    let tok = |kind, side| Token::new(kind, side, id.0).encode();
    let fd = |side: Side| conn.fds[side.index()];
    Some(match op {
        ConnOp::SpliceIn { side, pipe, len } => {
            let token = tok(OpKind::SpliceIn, side);
            match (fd(side), pipes.lent(pipe)) {
                (Some(fd_in), Some(p)) => Op::Splice {
                    token,
                    fd_in,
                    fd_out: Fd(p.write),
                    len,
                },
                _ => fail(token),
            }
        }
        ConnOp::SpliceOut { side, pipe, len } => {
            let token = tok(OpKind::SpliceOut, side);
            match (pipes.lent(pipe), fd(side)) {
                (Some(p), Some(fd_out)) => Op::Splice {
                    token,
                    fd_in: Fd(p.read),
                    fd_out,
                    len,
                },
                _ => fail(token),
            }
        }
        ConnOp::CancelSplice { side, end } => {
            let target = match end {
                SpliceEnd::In => OpKind::SpliceIn,
                SpliceEnd::Out => OpKind::SpliceOut,
            };
            Op::CancelOne {
                token: tok(OpKind::CancelSplice, side),
                target: tok(target, side),
            }
        }
        _ => return None,
    })
}
