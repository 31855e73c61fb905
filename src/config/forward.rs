//! The plan of listeners whose clients name their destination — `[[socks5]]`,
//! `[[http_connect]]` and `transparent` `[[tcp]]` — and the destination
//! policy (`destinations_allow`, `destinations_deny`, `ports`) that bounds
//! where they may go. The TOML keys are read elsewhere; these are the checked
//! values the shards use.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Cidr;
use crate::front::Credentials;

/// What a `[[tcp]]`-like listener does to find where a connection goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum TcpKind {
    /// Its `upstreams`, through the balancer (every `[[tcp]]` without `transparent`).
    #[default]
    Forward,
    /// `[[socks5]]`: the client names the destination in a SOCKS5 request.
    Socks5(ProxyPlan),
    /// `[[http_connect]]`: the client names it in an HTTP CONNECT request.
    HttpConnect(ProxyPlan),
    /// `transparent = "redirect" | "tproxy"`: the address the client dialled.
    Transparent(TransparentPlan),
}

impl TcpKind {
    /// The destination policy of a kind whose clients name where they go.
    pub fn policy(&self) -> Option<&DestinationPolicy> {
        match self {
            TcpKind::Forward => None,
            TcpKind::Socks5(p) | TcpKind::HttpConnect(p) => Some(&p.policy),
            TcpKind::Transparent(t) => Some(&t.policy),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            TcpKind::Forward => "tcp",
            TcpKind::Socks5(_) => "socks5",
            TcpKind::HttpConnect(_) => "http_connect",
            TcpKind::Transparent(_) => "transparent",
        }
    }
}

/// A SOCKS5 or HTTP CONNECT listener's own keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyPlan {
    /// `users` / `users_file`; empty: no authentication.
    pub users: Users,
    pub policy: DestinationPolicy,
    /// SOCKS5 `udp = true`: UDP ASSOCIATE is allowed, associations end after
    /// this long without a datagram (`udp_idle_timeout`). Always `None` for
    /// HTTP CONNECT.
    pub udp_idle: Option<Duration>,
    /// How long the client has to finish its greeting and request
    /// (`header_timeout`, default 10 s).
    pub header_timeout: Duration,
}

/// `transparent` on `[[tcp]]` (and `"tproxy"` on `[[udp]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TransparentPlan {
    pub mode: TransparentMode,
    pub policy: DestinationPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransparentMode {
    /// iptables/nftables REDIRECT: the destination is `SO_ORIGINAL_DST`.
    Redirect,
    /// TPROXY: an `IP_TRANSPARENT` listener; the destination is the
    /// accepted socket's local address.
    Tproxy,
}

impl TransparentMode {
    pub fn name(self) -> &'static str {
        match self {
            TransparentMode::Redirect => "redirect",
            TransparentMode::Tproxy => "tproxy",
        }
    }
}

/// The users a proxy listener accepts. Passwords are compared in constant
/// time and never printed (`Debug` hides them).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Users {
    list: Vec<Credentials>,
    /// `users_file`, when the list was read from one (shown by `check`
    /// instead of the passwords, and read again on reload).
    file: Option<PathBuf>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.list.iter()).finish()
    }
}

impl Users {
    pub fn new(list: Vec<Credentials>) -> Users {
        Users { list, file: None }
    }

    /// The users read from `users_file` at `path`.
    pub fn from_file(path: PathBuf, list: Vec<Credentials>) -> Users {
        Users {
            list,
            file: Some(path),
        }
    }

    /// The `users_file` they were read from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// No users: the listener asks for no authentication.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The user name these credentials authenticate, if any. Every entry is
    /// compared, each in time that depends only on the lengths, so the time
    /// taken does not tell which byte of a password was wrong.
    pub fn check(&self, offered: &Credentials) -> Option<&[u8]> {
        let mut found = None;
        for u in &self.list {
            let ok = constant_time_eq(&u.user, &offered.user)
                & constant_time_eq(&u.password, &offered.password);
            if ok && found.is_none() {
                found = Some(u.user.as_slice());
            }
        }
        found
    }

    /// The user names, for `check`'s output.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.list.iter().map(|c| c.user.as_slice())
    }
}

/// Equality whose time depends only on the lengths of `a` and `b`.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Where clients of a forward proxy or transparent listener may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationPolicy {
    /// `destinations_allow`; empty: every address not denied.
    pub allow: Vec<Cidr>,
    /// `destinations_deny`.
    pub deny: Vec<Cidr>,
    /// `ports`; empty: every port.
    pub ports: Vec<RangeInclusive<u16>>,
}

/// Why a destination is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its port is not in `ports`.
    Port,
    /// Its address is in `destinations_deny` or outside `destinations_allow`.
    Address,
    /// It is one of ringfwd's own listen addresses (a forwarding loop).
    Loop,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Port => "port not in ports",
            Refusal::Address => "address denied by destinations_allow/destinations_deny",
            Refusal::Loop => "one of ringfwd's own listen addresses",
        }
    }
}

impl DestinationPolicy {
    /// Whether `port` may be asked for at all (checked before a name is resolved).
    pub fn port_allowed(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|r| r.contains(&port))
    }

    /// Whether a connection may go to `addr` (after resolution, so a name
    /// that resolves to a denied address is refused too). IPv4-mapped IPv6
    /// addresses match IPv4 ranges.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refusal> {
        if !self.port_allowed(addr.port()) {
            return Err(Refusal::Port);
        }
        let ip = addr.ip().to_canonical();
        let listed = |ranges: &[Cidr]| ranges.iter().any(|c| c.contains(ip));
        if listed(&self.deny) || !(self.allow.is_empty() || listed(&self.allow)) {
            return Err(Refusal::Address);
        }
        Ok(())
    }
}

/// `mptcp` on a listener: listen with IPPROTO_MPTCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mptcp {
    #[default]
    Off,
    /// MPTCP when the kernel has it, else TCP with one warning and a counter.
    Preferred,
    /// MPTCP or refuse to start.
    Required,
}
