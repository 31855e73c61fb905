//! Lookups the TCP service's connections ask for, and their answers; the
//! upstream socket's local address a SOCKS5 reply names.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use super::TcpService;
use crate::config::forward::TransparentMode;
use crate::dns::ResolveError;
use crate::shard::context::Ctx;
use crate::shard::slab::ConnId;
use crate::shard::token::{OpKind, Token};
use crate::tcp::Side;
use crate::tcp::cx::Cx;
use crate::tcp::handshake::ResolveFail;
use crate::time::Millis;

impl TcpService {
    /// Names connections asked to resolve since the last call.
    pub(crate) fn take_lookups(&mut self, out: &mut Vec<(ConnId, String)>) {
        out.append(&mut self.lookups);
    }

    /// The answer to connection `id`'s lookup (the connection may be gone: then nothing).
    pub(crate) fn resolved(
        &mut self,
        ctx: &mut Ctx,
        id: ConnId,
        answer: Result<Vec<IpAddr>, ResolveError>,
        now: Millis,
    ) {
        let answer = answer.map_err(|e| match e {
            ResolveError::NotFound => ResolveFail::NotFound,
            ResolveError::Timeout => ResolveFail::Timeout,
            ResolveError::ServerFailure
            | ResolveError::Overloaded
            | ResolveError::NoNameservers => ResolveFail::Other,
        });
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let Some(l) = self.listeners.get_mut(conn.listener as usize) else {
            return;
        };
        let mut cx = Cx::new(&mut self.scratch, &mut conn.life, &mut l.counters, now);
        conn.logic.handle_resolved(answer, &mut cx);
        self.after_conn(ctx, id, now);
    }

    /// Whether listener `index` reads each accepted socket's original destination.
    pub(crate) fn wants_original_dst(&self, index: u32) -> bool {
        self.listeners
            .get(index as usize)
            .is_some_and(|l| l.spec.front.transparent == Some(TransparentMode::Redirect))
    }

    /// The upstream socket of a connect completion whose relay wants its
    /// local address.
    pub(crate) fn wants_bound(&self, token: Token) -> Option<RawFd> {
        if token.kind != OpKind::Connect {
            return None;
        }
        let conn = self.conns.get(ConnId(token.slot))?;
        conn.logic
            .wants_bound()
            .then(|| conn.fds[Side::Upstream.index()])
            .flatten()
            .map(|fd| fd.raw())
    }

    pub(crate) fn set_bound(&mut self, token: Token, local: Option<SocketAddr>) {
        if let Some(conn) = self.conns.get_mut(ConnId(token.slot)) {
            conn.logic.set_bound(local);
        }
    }
}
