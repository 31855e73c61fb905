//! Front parsers: the prefixes a connection may read before it chooses where
//! to go (a PROXY protocol header, a TLS ClientHello; later SOCKS5 and HTTP
//! CONNECT). Each is a pure function over the bytes received so far, which may
//! have arrived split anywhere: it never reads a socket and keeps no state
//! between calls, so the caller only appends bytes and asks again.

pub mod proxy;
pub mod sni;
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
