//! The front stage of a forwarding connection: the prefix its listener asks
//! the client for before an upstream is chosen — a PROXY protocol header
//! (`accept_proxy`), then a TLS ClientHello (SNI routes), either or both, in
//! that order. It collects the bytes the client sends (copied out of the
//! receive buffers, at most `MAX_FRONT` of them), runs the parsers of
//! `crate::front` over them after every read, and says what came of it. No
//! I/O, no clock: reads and the time come in.

use std::net::SocketAddr;
use std::sync::Arc;

use super::handshake::{Handshake, HsStep, NamedSpec};
use crate::front::proxy::{self, ProxyHeader};
use crate::front::tls::{self, TlsFront};
use crate::front::{Destination, Parsed};
use crate::stats::CloseReason;
use crate::time::Millis;

/// The most a front holds: a PROXY header (v2 at most 4 KiB) and a
/// ClientHello (at most 16 KiB).
pub(crate) const MAX_FRONT: usize = proxy::V2_MAX_HEADER + tls::MAX_INPUT;

/// What a listener's connections read before connecting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontConfig {
    /// A PROXY header is required, within this many milliseconds.
    pub proxy_ms: Option<Millis>,
    /// A ClientHello is read for SNI routing, within this many milliseconds.
    pub sni_ms: Option<Millis>,
    /// The client names its destination (SOCKS5, HTTP CONNECT) in a
    /// handshake finished within this many milliseconds (`header_timeout`).
    pub named_ms: Option<Millis>,
}

impl FrontConfig {
    pub fn is_none(&self) -> bool {
        self.proxy_ms.is_none() && self.sni_ms.is_none() && self.named_ms.is_none()
    }
}

/// The prefix being read now.
#[derive(Debug)]
enum Stage {
    Proxy,
    Hello,
    /// A SOCKS5 or HTTP CONNECT handshake.
    Named(Handshake),
}

/// What the front learnt, for the rest of the connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learnt {
    /// The client and the address it reached, from a PROXY header that named
    /// them (absent for LOCAL, UNKNOWN, or no header).
    pub proxied: Option<(SocketAddr, SocketAddr)>,
    /// The server name a ClientHello asked for.
    pub sni: Option<String>,
    /// Where the client asked to go (SOCKS5, HTTP CONNECT).
    pub destination: Option<Destination>,
    /// The user it authenticated as.
    pub user: Option<String>,
    /// SOCKS5 UDP ASSOCIATE: the address the client said it would send
    /// from (kept for the log; datagrams are matched to the control
    /// connection's peer).
    pub associate: Option<Destination>,
}

/// What one read did to the front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// More bytes are needed: read again.
    More,
    /// Every prefix is read. The bytes after the PROXY header (the
    /// ClientHello included) belong to the stream: `Front::into_rest`.
    Done,
    /// The connection is to be closed, counted under this reason.
    Fail(CloseReason),
    /// The handshake failed: send `Front::take_reply`, then close, counted
    /// under this reason.
    Refuse(CloseReason),
}

#[derive(Debug)]
pub(crate) struct Front {
    cfg: FrontConfig,
    stage: Stage,
    /// Everything the client sent so far.
    buf: Vec<u8>,
    /// Bytes of `buf` that were a PROXY header (dropped, not relayed).
    skip: usize,
    /// When the current stage gives up.
    deadline: Millis,
    learnt: Learnt,
    /// The listener's users and kind, when its clients name their destination.
    named: Option<Arc<NamedSpec>>,
    /// Replies the handshake wrote and the relay has not taken yet.
    out: Vec<u8>,
}

impl Front {
    /// A front for a connection accepted at `now`; `None` when the listener
    /// reads no prefix.
    #[cfg(test)]
    pub(crate) fn new(cfg: FrontConfig, now: Millis) -> Option<Front> {
        Front::with_named(cfg, now, None)
    }

    /// A front whose handshake (when `cfg.named_ms` asks for one) is the
    /// one `named` says, checked against its users.
    pub(crate) fn with_named(
        cfg: FrontConfig,
        now: Millis,
        named: Option<Arc<NamedSpec>>,
    ) -> Option<Front> {
        let handshake = named.as_ref().map(|n| Handshake::for_spec(n));
        let (stage, ms) = match (cfg.proxy_ms, cfg.named_ms.zip(handshake), cfg.sni_ms) {
            (Some(ms), _, _) => (Stage::Proxy, ms),
            (None, Some((ms, hs)), _) => (Stage::Named(hs), ms),
            (None, None, Some(ms)) => (Stage::Hello, ms),
            (None, None, None) => return None,
        };
        Some(Front {
            cfg,
            stage,
            buf: Vec::new(),
            skip: 0,
            deadline: now.saturating_add(ms),
            learnt: Learnt::default(),
            named,
            out: Vec::new(),
        })
    }

    /// The replies the handshake wrote since the last call, to send in order.
    pub(crate) fn take_reply(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub(crate) fn deadline(&self) -> Millis {
        self.deadline
    }

    /// The reason a front that ran out of time is closed under.
    pub(crate) fn timeout_reason(&self) -> CloseReason {
        match self.stage {
            Stage::Proxy => CloseReason::ProxyTimeout,
            Stage::Hello => CloseReason::SniTimeout,
            Stage::Named(_) => CloseReason::HandshakeTimeout,
        }
    }

    /// The client ended its stream (or it broke) before the prefix was complete.
    pub(crate) fn eof_reason(&self) -> CloseReason {
        match (&self.stage, self.buf.len() > self.skip) {
            // A header that stops part-way is not a valid header.
            (Stage::Proxy, true) => CloseReason::ProxyMalformed,
            _ => CloseReason::ClientEof,
        }
    }

    /// Bytes the client sent, in order, from one read.
    pub(crate) fn feed(&mut self, bytes: &[u8], now: Millis) -> Step {
        let room = MAX_FRONT.saturating_sub(self.buf.len());
        let take = bytes.len().min(room);
        self.buf
            .extend_from_slice(bytes.get(..take).unwrap_or_default());
        let step = self.parse(now);
        if step == Step::More && take < bytes.len() {
            // Cannot happen (each parser decides within its bound), but a
            // front must never hold more than MAX_FRONT.
            return Step::Fail(CloseReason::Error);
        }
        step
    }

    fn parse(&mut self, now: Millis) -> Step {
        loop {
            let input = self.buf.get(self.skip..).unwrap_or_default();
            match self.stage {
                Stage::Proxy => match proxy::parse(input) {
                    Parsed::Incomplete => return Step::More,
                    Parsed::Invalid(_) => return Step::Fail(CloseReason::ProxyMalformed),
                    Parsed::Done { value, consumed } => {
                        self.proxied(value);
                        self.skip += consumed;
                        let handshake = self.named.as_ref().map(|n| Handshake::for_spec(n));
                        if let Some((ms, hs)) = self.cfg.named_ms.zip(handshake) {
                            self.stage = Stage::Named(hs);
                            self.deadline = now.saturating_add(ms);
                            if self.buf.len() == self.skip {
                                return Step::More;
                            }
                            continue;
                        }
                        match self.cfg.sni_ms {
                            Some(ms) => {
                                self.stage = Stage::Hello;
                                self.deadline = now.saturating_add(ms);
                                if self.buf.len() == self.skip {
                                    return Step::More;
                                }
                            }
                            None => return Step::Done,
                        }
                    }
                },
                Stage::Named(ref mut hs) => {
                    let Some(named) = self.named.as_deref() else {
                        return Step::Fail(CloseReason::Error);
                    };
                    let (step, used) = hs.step(input, &named.users, &mut self.out);
                    self.skip += used;
                    return match step {
                        HsStep::More => Step::More,
                        HsStep::Refuse(reason) => Step::Refuse(reason),
                        HsStep::Done { dst, user } => {
                            self.learnt.destination = Some(dst);
                            self.learnt.user = user;
                            Step::Done
                        }
                        HsStep::Associate { hint, user } => {
                            self.learnt.associate = Some(hint);
                            self.learnt.user = user;
                            Step::Done
                        }
                    };
                }
                Stage::Hello => {
                    return match tls::read_client_hello(input) {
                        Parsed::Incomplete => Step::More,
                        // More than 16 KiB without a whole hello: routing
                        // part of one could pick the wrong route.
                        Parsed::Invalid(_) => Step::Fail(CloseReason::SniTooLarge),
                        Parsed::Done { value, .. } => {
                            if let TlsFront::Hello(h) = value {
                                self.learnt.sni = h.server_name.host().map(str::to_owned);
                            }
                            Step::Done
                        }
                    };
                }
            }
        }
    }

    fn proxied(&mut self, header: ProxyHeader) {
        // LOCAL, UNKNOWN: the connection's own endpoints stand.
        if let Some(e) = header.endpoints() {
            self.learnt.proxied = Some((e.src.to_canonical(), e.dst.to_canonical()));
        }
    }

    /// The bytes that belong to the stream (everything after a PROXY
    /// header), and what the front learnt.
    pub(crate) fn into_rest(self) -> (Vec<u8>, Learnt) {
        let mut buf = self.buf;
        buf.drain(..self.skip.min(buf.len()));
        (buf, self.learnt)
    }
}

/// `SocketAddr::to_canonical` for the IP inside.
trait Canonical {
    fn to_canonical(self) -> Self;
}

impl Canonical for SocketAddr {
    fn to_canonical(self) -> SocketAddr {
        SocketAddr::new(self.ip().to_canonical(), self.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\r\n";

    fn proxy_only() -> FrontConfig {
        FrontConfig {
            proxy_ms: Some(5_000),
            sni_ms: None,
            named_ms: None,
        }
    }

    /// Feeds `input` cut at every split point into two reads and checks the
    /// same outcome and the same stream every time (bytes read after the
    /// front was done are relayed by the stream itself, after the rest).
    fn every_split(cfg: FrontConfig, input: &[u8]) -> (Step, Vec<u8>, Learnt) {
        let mut seen: Option<(Step, Vec<u8>, Learnt)> = None;
        for cut in 0..=input.len() {
            let mut f = Front::new(cfg, 0).expect("a front");
            let (a, b) = input.split_at(cut);
            let mut step = f.feed(a, 0);
            let mut later: &[u8] = b;
            if step == Step::More {
                step = f.feed(b, 0);
                later = &[];
            }
            let (mut rest, learnt) = f.into_rest();
            rest.extend_from_slice(later);
            let got = (step, rest, learnt);
            match &seen {
                None => seen = Some(got),
                Some(s) => assert_eq!(s, &got, "split at {cut}"),
            }
        }
        seen.expect("at least one split")
    }

    #[test]
    fn a_proxy_header_split_anywhere_gives_the_client_and_keeps_what_follows() {
        let mut input = V1.to_vec();
        input.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
        let (step, rest, learnt) = every_split(proxy_only(), &input);
        assert_eq!(step, Step::Done);
        assert_eq!(rest, b"GET / HTTP/1.0\r\n\r\n");
        let (src, dst) = learnt.proxied.expect("addresses");
        assert_eq!(src, "192.0.2.1:40000".parse().expect("addr"));
        assert_eq!(dst, "198.51.100.2:443".parse().expect("addr"));
    }

    #[test]
    fn a_header_one_byte_at_a_time_is_more_until_its_last_byte() {
        let mut f = Front::new(proxy_only(), 0).expect("front");
        for (i, b) in V1.iter().enumerate() {
            let step = f.feed(std::slice::from_ref(b), 0);
            let want = if i + 1 == V1.len() {
                Step::Done
            } else {
                Step::More
            };
            assert_eq!(step, want, "byte {i}");
        }
    }

    #[test]
    fn garbage_instead_of_a_header_is_malformed_and_an_early_eof_says_so() {
        let mut f = Front::new(proxy_only(), 0).expect("front");
        assert_eq!(
            f.feed(b"GET / HTTP/1.1\r\n", 0),
            Step::Fail(CloseReason::ProxyMalformed)
        );
        let mut f = Front::new(proxy_only(), 0).expect("front");
        assert_eq!(f.feed(b"PROXY TCP4 ", 0), Step::More);
        assert_eq!(f.eof_reason(), CloseReason::ProxyMalformed);
        let f = Front::new(proxy_only(), 0).expect("front");
        assert_eq!(f.eof_reason(), CloseReason::ClientEof, "nothing sent");
        assert_eq!(f.timeout_reason(), CloseReason::ProxyTimeout);
    }

    #[test]
    fn header_then_not_tls_routes_by_default_with_every_byte_after_the_header() {
        let cfg = FrontConfig {
            proxy_ms: Some(5_000),
            sni_ms: Some(5_000),
            named_ms: None,
        };
        let mut input = V1.to_vec();
        input.extend_from_slice(b"SSH-2.0-OpenSSH\r\n");
        let (step, rest, learnt) = every_split(cfg, &input);
        assert_eq!(step, Step::Done);
        assert_eq!(rest, b"SSH-2.0-OpenSSH\r\n");
        assert!(learnt.proxied.is_some());
        assert_eq!(learnt.sni, None);
    }

    #[test]
    fn the_hello_stage_has_its_own_deadline_from_the_end_of_the_header() {
        let cfg = FrontConfig {
            proxy_ms: Some(100),
            sni_ms: Some(1_000),
            named_ms: None,
        };
        let mut f = Front::new(cfg, 0).expect("front");
        assert_eq!(f.deadline(), 100);
        assert_eq!(f.feed(V1, 50), Step::More);
        assert_eq!(f.deadline(), 1_050);
        assert_eq!(f.timeout_reason(), CloseReason::SniTimeout);
    }

    #[test]
    fn no_prefix_asked_no_front() {
        assert!(Front::new(FrontConfig::default(), 0).is_none());
    }
}
