//! The handshake of a listener whose clients name their destination — the
//! SOCKS5 greeting, username/password authentication and request (RFC 1928,
//! RFC 1929), or an HTTP CONNECT head (RFC 9110 §9.3.6) — and the reply that
//! answers how going there went. Pure: the bytes received so far in, a step
//! and the reply bytes out; the parsers are those of `crate::front`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::forward::{DestinationPolicy, Refusal, Users};
use crate::front::connect::{self, Head, Status};
use crate::front::socks5::{self, Command, Reply, RequestDst};
use crate::front::{Destination, Parsed};
use crate::stats::CloseReason;
use crate::time::Millis;

/// Which protocol names the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamedKind {
    Socks5,
    HttpConnect,
    /// `transparent`: the address the client dialled (no handshake, no reply).
    Transparent,
}

/// What a listener's connections check a named destination against. Shared
/// by the listener's connections (one `Arc` per listener and shard).
#[derive(Clone, Debug)]
pub struct NamedSpec {
    pub kind: NamedKind,
    pub users: Users,
    pub policy: DestinationPolicy,
    pub guard: LoopGuard,
    /// SOCKS5 `udp = true`: UDP ASSOCIATE is served, and an association
    /// ends after this long without a datagram (`udp_idle_timeout`).
    pub udp_idle_ms: Option<Millis>,
}

impl NamedSpec {
    /// Whether a connection may go to `addr`: not one of ringfwd's own
    /// listeners, and within the listener's destination policy.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refusal> {
        if self.guard.hits(addr) {
            return Err(Refusal::Loop);
        }
        self.policy.check(addr)
    }
}

/// What a SOCKS5 UDP ASSOCIATE asks the shard to open.
#[derive(Clone, Debug)]
pub struct AssocAsk {
    /// The control connection's client: only datagrams from this address are
    /// relayed to destinations.
    pub client: IpAddr,
    /// The address the client reached: the association's socket is bound
    /// there, and the reply's BND names it (never 0.0.0.0).
    pub local: IpAddr,
    pub spec: Arc<NamedSpec>,
    /// The listener's name (its counters, log lines).
    pub listener: String,
    /// The user the client authenticated as (for the association's access
    /// log line).
    pub user: Option<String>,
}

/// ringfwd's own TCP listen addresses: a destination among them would send
/// the connection back into ringfwd, round and round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoopGuard {
    /// Listeners bound to one address.
    pub exact: Vec<SocketAddr>,
    /// Ports of listeners bound to a wildcard address: any loopback or
    /// unspecified address on them is ringfwd too, and so is every address
    /// of the host's interfaces (`with_local`), read at start and reload.
    pub wildcard_ports: Vec<u16>,
}

impl LoopGuard {
    pub fn new(listens: impl IntoIterator<Item = SocketAddr>) -> LoopGuard {
        let mut g = LoopGuard::default();
        for a in listens {
            let a = canonical(a);
            if a.ip().is_unspecified() {
                g.wildcard_ports.push(a.port());
            } else {
                g.exact.push(a);
            }
        }
        g
    }

    /// Adds the host's own addresses on every wildcard listener's port.
    pub fn with_local(mut self, local: &[IpAddr]) -> LoopGuard {
        for &port in &self.wildcard_ports {
            for &ip in local {
                self.exact.push(SocketAddr::new(ip.to_canonical(), port));
            }
        }
        self
    }

    pub fn hits(&self, addr: SocketAddr) -> bool {
        let addr = canonical(addr);
        let ip = addr.ip();
        self.exact.contains(&addr)
            || (self.wildcard_ports.contains(&addr.port())
                && (ip.is_loopback() || ip.is_unspecified()))
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Where the handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Greeting,
    Auth,
    Request,
    Head,
    Finished,
}

/// What the bytes so far did to the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HsStep {
    /// More bytes are needed.
    More,
    /// The client named its destination (and, with users, who it is).
    Done {
        dst: Destination,
        user: Option<String>,
    },
    /// The handshake failed: send the reply it wrote (if any), then close,
    /// counted under the reason.
    Refuse(CloseReason),
    /// SOCKS5 UDP ASSOCIATE (the listener serves it): `hint` is where the
    /// client says it will send from, often 0.0.0.0:0 and, behind NAT,
    /// wrong; the relay goes by the control connection's peer instead.
    Associate {
        hint: Destination,
        user: Option<String>,
    },
}

#[derive(Debug)]
pub struct Handshake {
    kind: NamedKind,
    stage: Stage,
    user: Option<String>,
    udp: UdpAssociate,
}

/// Whether the listener serves SOCKS5 UDP ASSOCIATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UdpAssociate {
    Refused,
    Served,
}

impl Handshake {
    pub fn new(kind: NamedKind) -> Handshake {
        let stage = match kind {
            NamedKind::Socks5 => Stage::Greeting,
            NamedKind::HttpConnect => Stage::Head,
            NamedKind::Transparent => Stage::Finished,
        };
        Handshake {
            kind,
            stage,
            user: None,
            udp: UdpAssociate::Refused,
        }
    }

    /// The handshake of `spec`'s listener (UDP ASSOCIATE served when it says).
    pub fn for_spec(spec: &NamedSpec) -> Handshake {
        let mut hs = Handshake::new(spec.kind);
        if spec.udp_idle_ms.is_some() {
            hs.udp = UdpAssociate::Served;
        }
        hs
    }

    /// Runs the handshake over `input` (the client's bytes not yet taken by
    /// an earlier step): the step, and how many leading bytes of `input` it
    /// took. Replies are appended to `out`.
    pub fn step(&mut self, input: &[u8], users: &Users, out: &mut Vec<u8>) -> (HsStep, usize) {
        let mut taken = 0;
        loop {
            let rest = input.get(taken..).unwrap_or_default();
            let (step, used) = match self.stage {
                Stage::Greeting => self.greeting(rest, users, out),
                Stage::Auth => self.auth(rest, users, out),
                Stage::Request => self.request(rest, out),
                Stage::Head => self.head(rest, users, out),
                Stage::Finished => (Some(HsStep::Refuse(CloseReason::Error)), 0),
            };
            taken += used;
            if let Some(step) = step {
                return (step, taken);
            }
        }
    }

    /// A stage's outcome: `None` to go on with the next stage.
    fn greeting(
        &mut self,
        input: &[u8],
        users: &Users,
        out: &mut Vec<u8>,
    ) -> (Option<HsStep>, usize) {
        match socks5::parse_greeting(input) {
            Parsed::Incomplete => (Some(HsStep::More), 0),
            Parsed::Invalid(_) => (Some(HsStep::Refuse(CloseReason::HandshakeMalformed)), 0),
            Parsed::Done { value, consumed } => {
                let wanted = if users.is_empty() {
                    socks5::NO_AUTH
                } else {
                    socks5::USER_PASS
                };
                if !value.offers(wanted) {
                    out.extend_from_slice(&socks5::method_reply(socks5::NO_ACCEPTABLE));
                    return (Some(HsStep::Refuse(CloseReason::AuthFailed)), consumed);
                }
                out.extend_from_slice(&socks5::method_reply(wanted));
                self.stage = if users.is_empty() {
                    Stage::Request
                } else {
                    Stage::Auth
                };
                (None, consumed)
            }
        }
    }

    fn auth(&mut self, input: &[u8], users: &Users, out: &mut Vec<u8>) -> (Option<HsStep>, usize) {
        match socks5::parse_auth(input) {
            Parsed::Incomplete => (Some(HsStep::More), 0),
            Parsed::Invalid(_) => (Some(HsStep::Refuse(CloseReason::HandshakeMalformed)), 0),
            Parsed::Done { value, consumed } => match users.check(&value) {
                Some(name) => {
                    out.extend_from_slice(&socks5::auth_reply(true));
                    self.user = Some(String::from_utf8_lossy(name).into_owned());
                    self.stage = Stage::Request;
                    (None, consumed)
                }
                None => {
                    out.extend_from_slice(&socks5::auth_reply(false));
                    (Some(HsStep::Refuse(CloseReason::AuthFailed)), consumed)
                }
            },
        }
    }

    fn request(&mut self, input: &[u8], out: &mut Vec<u8>) -> (Option<HsStep>, usize) {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        match socks5::parse_request(input) {
            Parsed::Incomplete => (Some(HsStep::More), 0),
            Parsed::Invalid(_) => {
                socks_reply(Reply::GeneralFailure, unspecified, out);
                (Some(HsStep::Refuse(CloseReason::HandshakeMalformed)), 0)
            }
            Parsed::Done { value, consumed } => {
                self.stage = Stage::Finished;
                let step = match (value.command, value.dst) {
                    (_, RequestDst::UnsupportedType(_)) => {
                        socks_reply(Reply::AddressTypeNotSupported, unspecified, out);
                        HsStep::Refuse(CloseReason::HandshakeMalformed)
                    }
                    (Command::Connect, RequestDst::Dst(dst)) => HsStep::Done {
                        dst,
                        user: self.user.take(),
                    },
                    (Command::UdpAssociate, RequestDst::Dst(hint))
                        if self.udp == UdpAssociate::Served =>
                    {
                        HsStep::Associate {
                            hint,
                            user: self.user.take(),
                        }
                    }
                    // BIND, UDP ASSOCIATE where `udp` is off, and unknown commands.
                    (Command::Bind | Command::UdpAssociate | Command::Other(_), _) => {
                        socks_reply(Reply::CommandNotSupported, unspecified, out);
                        HsStep::Refuse(CloseReason::CommandUnsupported)
                    }
                };
                (Some(step), consumed)
            }
        }
    }

    fn head(&mut self, input: &[u8], users: &Users, out: &mut Vec<u8>) -> (Option<HsStep>, usize) {
        let refuse = |status, reason, out: &mut Vec<u8>| {
            out.extend_from_slice(connect::response(status));
            Some(HsStep::Refuse(reason))
        };
        match connect::parse_head(input) {
            Parsed::Incomplete => (Some(HsStep::More), 0),
            Parsed::Invalid(_) => (
                refuse(Status::BadRequest, CloseReason::HandshakeMalformed, out),
                0,
            ),
            Parsed::Done { value, consumed } => {
                self.stage = Stage::Finished;
                let step = match value {
                    Head::OtherMethod => refuse(
                        Status::MethodNotAllowed,
                        CloseReason::CommandUnsupported,
                        out,
                    ),
                    Head::Connect { dst, credentials } => {
                        let user = match (users.is_empty(), &credentials) {
                            (true, _) => Ok(None),
                            (false, Some(c)) => users
                                .check(c)
                                .map(|n| Some(String::from_utf8_lossy(n).into_owned()))
                                .ok_or(()),
                            (false, None) => Err(()),
                        };
                        match user {
                            Ok(user) => Some(HsStep::Done { dst, user }),
                            Err(()) => {
                                refuse(Status::ProxyAuthRequired, CloseReason::AuthFailed, out)
                            }
                        }
                    }
                };
                (step, consumed)
            }
        }
    }

    pub fn kind(&self) -> NamedKind {
        self.kind
    }
}

fn socks_reply(code: Reply, bound: SocketAddr, out: &mut Vec<u8>) {
    let mut buf = [0u8; socks5::MAX_REPLY];
    let n = socks5::write_reply(code, bound, &mut buf);
    out.extend_from_slice(buf.get(..n).unwrap_or_default());
}

/// Why a name could not be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveFail {
    /// NXDOMAIN, or no address of a family asked for.
    NotFound,
    /// No nameserver answered in time.
    Timeout,
    /// The nameservers failed, or the shard has none, or too many lookups wait.
    Other,
}

/// How going to a named destination ended, for the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected; `bound` is the upstream socket's local address.
    Connected {
        bound: SocketAddr,
    },
    Refused(Refusal),
    Unresolved(ResolveFail),
    /// Every address failed; the errno of the last (ECANCELED: connect_timeout).
    Failed {
        errno: i32,
    },
}

impl Outcome {
    /// The close reason of a destination that was not reached.
    pub fn reason(self) -> Option<CloseReason> {
        match self {
            Outcome::Connected { .. } => None,
            Outcome::Refused(Refusal::Loop) => Some(CloseReason::LoopRefused),
            Outcome::Refused(_) => Some(CloseReason::DestinationDenied),
            Outcome::Unresolved(_) => Some(CloseReason::ResolveFailed),
            Outcome::Failed { errno } => Some(match errno {
                libc::ECONNREFUSED => CloseReason::ConnectRefused,
                libc::ECANCELED | libc::ETIMEDOUT => CloseReason::ConnectTimeout,
                _ => CloseReason::ConnectError,
            }),
        }
    }
}

/// The reply a `kind` listener sends its client for `outcome` (empty for
/// transparent listeners, whose clients expect none).
pub fn reply(kind: NamedKind, outcome: Outcome) -> Vec<u8> {
    let mut out = Vec::new();
    match kind {
        NamedKind::Socks5 => {
            let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
            let (code, bound) = match outcome {
                Outcome::Connected { bound } => (Reply::Succeeded, bound),
                Outcome::Refused(_) => (Reply::NotAllowed, unspecified),
                Outcome::Unresolved(ResolveFail::NotFound | ResolveFail::Timeout) => {
                    (Reply::HostUnreachable, unspecified)
                }
                Outcome::Unresolved(ResolveFail::Other) => (Reply::GeneralFailure, unspecified),
                Outcome::Failed { errno } => (socks5::reply_for_errno(errno), unspecified),
            };
            socks_reply(code, bound, &mut out);
        }
        NamedKind::HttpConnect => {
            let status = match outcome {
                Outcome::Connected { .. } => Status::Established,
                Outcome::Refused(_) => Status::Forbidden,
                Outcome::Unresolved(ResolveFail::Timeout) => Status::GatewayTimeout,
                Outcome::Unresolved(_) => Status::BadGateway,
                Outcome::Failed { errno } => connect::status_for_errno(errno),
            };
            out.extend_from_slice(connect::response(status));
        }
        NamedKind::Transparent => {}
    }
    out
}

#[cfg(test)]
mod tests;
