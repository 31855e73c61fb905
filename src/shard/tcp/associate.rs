//! The TCP side of SOCKS5 UDP associations: what connections ask the UDP
//! service to open, the answers back, and the end of a control connection
//! ending its association. The engine carries them between the services.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::TcpService;
use crate::shard::context::Ctx;
use crate::shard::slab::ConnId;
use crate::stats::CloseReason;
use crate::tcp::cx::Cx;
use crate::tcp::handshake::AssocAsk;
use crate::time::Millis;

/// The associations of the shard's connections, as the TCP service sees them.
#[derive(Default)]
pub(super) struct Associations {
    /// Asked for since the engine last took them.
    asks: Vec<(ConnId, AssocAsk)>,
    /// Asks that could not be made (the endpoints were not read): answered
    /// with an error on the next exchange.
    unaskable: Vec<ConnId>,
    /// Connections that asked, until they are freed.
    owners: HashSet<ConnId>,
    /// Connections freed since the engine last took them, whose
    /// associations must end.
    ended: Vec<ConnId>,
}

impl Associations {
    pub(super) fn ask(&mut self, id: ConnId, ask: Option<AssocAsk>, listener: String) {
        match ask {
            Some(ask) => {
                self.owners.insert(id);
                self.asks.push((id, AssocAsk { listener, ..ask }));
            }
            None => self.unaskable.push(id),
        }
    }

    pub(super) fn conn_freed(&mut self, id: ConnId) {
        if self.owners.remove(&id) {
            self.ended.push(id);
        }
    }
}

impl TcpService {
    /// Associations asked for since the last call, and those whose control
    /// connection was freed. Asks that could not be made are answered here.
    pub(crate) fn take_associations(
        &mut self,
        ctx: &mut Ctx,
        asks: &mut Vec<(ConnId, AssocAsk)>,
        ended: &mut Vec<ConnId>,
        now: Millis,
    ) {
        for id in std::mem::take(&mut self.associations.unaskable) {
            self.associated(ctx, id, Err(libc::EINVAL), now);
        }
        asks.append(&mut self.associations.asks);
        ended.append(&mut self.associations.ended);
    }

    /// Whether associations wait to be taken (asks, ends, or errors to answer).
    pub(crate) fn has_association_work(&self) -> bool {
        let a = &self.associations;
        !a.asks.is_empty() || !a.ended.is_empty() || !a.unaskable.is_empty()
    }

    /// The UDP service opened connection `id`'s association (its socket's
    /// address) or could not (errno).
    pub(crate) fn associated(
        &mut self,
        ctx: &mut Ctx,
        id: ConnId,
        res: Result<SocketAddr, i32>,
        now: Millis,
    ) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let Some(l) = self.listeners.get_mut(conn.listener as usize) else {
            return;
        };
        let mut cx = Cx::new(&mut self.scratch, &mut conn.life, &mut l.counters, now);
        conn.logic.handle_associated(res, &mut cx);
        self.after_conn(ctx, id, now);
    }

    /// Connection `id`'s association ended on its own: close the connection.
    pub(crate) fn association_ended(
        &mut self,
        ctx: &mut Ctx,
        id: ConnId,
        reason: CloseReason,
        now: Millis,
    ) {
        // Its end needs no telling back.
        self.associations.owners.remove(&id);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let Some(l) = self.listeners.get_mut(conn.listener as usize) else {
            return;
        };
        let mut cx = Cx::new(&mut self.scratch, &mut conn.life, &mut l.counters, now);
        conn.logic.association_ended(reason, &mut cx);
        self.after_conn(ctx, id, now);
    }
}
