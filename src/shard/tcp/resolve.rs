//! Lookups the TCP service's connections ask for, and their answers.
use super::TcpService;
use crate::dns::ResolveError;
use crate::shard::context::Ctx;
use crate::shard::slab::ConnId;
use crate::time::Millis;
use std::net::IpAddr;
impl TcpService {
    /// Names connections asked to resolve since the last call.
    pub(crate) fn take_lookups(&mut self, out: &mut Vec<(ConnId, String)>) {
        let _ = out;
    }
    /// The answer to connection `id`'s lookup (the connection may be gone: then nothing).
    pub(crate) fn resolved(
        &mut self,
        ctx: &mut Ctx,
        id: ConnId,
        answer: Result<Vec<IpAddr>, ResolveError>,
        now: Millis,
    ) {
        let _ = (ctx, id, answer, now);
    }
}
