//! Front parsers: the prefixes a connection may read before it chooses where
//! to go (a PROXY protocol header, a TLS ClientHello; later SOCKS5 and HTTP
//! CONNECT). Each is a pure function over the bytes received so far, which may
//! have arrived split anywhere: it never reads a socket and keeps no state
//! between calls, so the caller only appends bytes and asks again.

pub mod connect;
pub mod proxy;
mod put;
pub mod sni;
pub mod socks5;
pub mod tls;

/// What a front parser says about the bytes it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// More bytes are needed; nothing is consumed yet.
    Incomplete,
    /// A complete prefix: its value, and how many leading bytes it took.
    /// Bytes after `consumed` belong to the stream and must be relayed.
    Done { value: T, consumed: usize },
    /// Not a valid prefix; the connection is to be closed (counted, logged).
    Invalid(&'static str),
}

/// Where a client asked to go (SOCKS5 DST, an HTTP CONNECT authority): an
/// address, or a name to resolve on the shard's own resolver.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    Ip(std::net::SocketAddr),
    /// A host name (ASCII, checked by the parser) and a port.
    Name(String, u16),
}

impl Destination {
    pub fn port(&self) -> u16 {
        match self {
            Destination::Ip(a) => a.port(),
            Destination::Name(_, p) => *p,
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Ip(a) => write!(f, "{a}"),
            Destination::Name(n, p) => write!(f, "{n}:{p}"),
        }
    }
}

/// A user name and password a client offered (SOCKS5 RFC 1929, HTTP
/// `Proxy-Authorization: Basic`). Never logged: no `Debug` of the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: Vec<u8>,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &String::from_utf8_lossy(&self.user))
            .field("password", &"<hidden>")
            .finish()
    }
}
