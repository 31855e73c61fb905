//! The PROXY protocol (HAProxy's doc/proxy-protocol.txt, revision 2026/04/27):
//! the header a trusted proxy in front of us prepends to a connection (or to
//! every datagram) to name the client it relays, and the headers we send to an
//! upstream that wants to know ours.
//!
//! [`parse`] reads either version from the first bytes, never guessing: bytes
//! that cannot begin a header are invalid at once, a header still arriving is
//! `Incomplete` (every proper prefix of a valid header is), and a complete one
//! is `Done` with the exact length it took, the bytes after it being the
//! stream's. UDP carries a complete header in every datagram, so a datagram
//! that is `Incomplete` is invalid to the caller. The builders ([`write_v1`],
//! [`write_v2`], [`write_v2_local`]) write into fixed arrays: no allocation.
//!
//! Rules enforced beyond a lenient reading (each has a test):
//! - v1: at most 107 bytes including CRLF; "TCP4" / "TCP6" / "UNKNOWN" only;
//!   exactly one space between fields; IPv4 octets and ports decimal without
//!   leading zeros (no sign), octets <= 255, ports <= 65535; the address family
//!   must match the protocol word; a lone CR or LF anywhere is invalid.
//!   IPv6 is the RFC 4291 text form (up to 4 hex digits a group, one "::",
//!   a dotted IPv4 tail as inet_ntop writes "::ffff:1.2.3.4").
//! - v2: version nibble 2, command LOCAL or PROXY, family AF_UNSPEC / AF_INET /
//!   AF_INET6 / AF_UNIX and protocol UNSPEC / STREAM / DGRAM, each checked as
//!   soon as its byte arrives. LOCAL ignores the family and skips the whole
//!   block (the spec: "discard the protocol block including the family").
//!   With PROXY over AF_INET/AF_INET6/AF_UNIX the block must hold the family's
//!   addresses and what follows must be well-framed TLVs (each TLV fits, the
//!   last ends at the block's end), as HAProxy checks; TLV contents are
//!   ignored, CRC32C included (optional for receivers). AF_UNIX and UNSPEC
//!   carry no usable address: the caller uses the connection's own.
//! - v2 size: a header longer than [`V2_MAX_HEADER`] (4096 bytes, the 16-byte
//!   fixed part included) is invalid as soon as its length field arrives,
//!   rather than holding up to 64 KiB per connection in the front's window.
//!   Why 4096: the largest header we accept as meaningful is 16 + 216 (AF_UNIX)
//!   plus TLVs, and HAProxy as a receiver refuses any TLV value over 1024
//!   bytes (HA_PP2_MAX_ALLOC) and any header over its buffer, so senders that
//!   interoperate with HAProxy stay far below 4 KiB (authority <= 255, unique
//!   id <= 128, SSL TLV <= 1024, ...).
//!
//! Why hand-written and not the `ppp` crate (2.3.0, checked at misalcedo/ppp
//! 076179c): ppp gets these wrong (each input is a test below, `ppp_*`):
//! - `PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n` is accepted: it parses ports
//!   with `u16::from_str`, which takes a leading '+'.
//! - `PROXY UNKNOWN a b c d e f\r\n`, valid (the receiver must ignore anything
//!   before CRLF after UNKNOWN), is reported incomplete forever: its
//!   `splitn(7)` leaves the CRLF inside the last part.
//! - `PROXY UNKNOWN a\nb\r\n` (a lone LF) is accepted.
//! - `PROXY UNKNOWN \rX\r\n` (a lone CR) is reported incomplete forever
//!   instead of invalid: the connection hangs until the front's timeout.
//! - v2 `LOCAL` with family byte 0x11 and length 0 is rejected (it demands
//!   the addresses of a family the spec says LOCAL ignores).
//! - v2 with a bad version nibble (`sig` + 0x13) is incomplete until 16 bytes
//!   arrive, and a 64 KiB length is waited for; no upper bound.
//!
//! Written here, the parser is about as short as the glue mapping ppp's
//! results onto `Parsed` would be, and stricter.

mod build;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use super::Parsed;

pub use build::{V1_MAX_LEN, V2_LOCAL_LEN, V2_MAX_BUILT, write_v1, write_v2, write_v2_local};
pub use v2::{SIGNATURE as V2_SIGNATURE, V2_MAX_HEADER};

/// A parsed PROXY protocol header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: Version,
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The text line ("PROXY TCP4 ...\r\n").
    V1,
    /// The binary header (12-byte signature).
    V2,
}

/// What the header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// The proxy's own connection (a health check): use the real endpoints.
    Local,
    /// Relayed on behalf of a client. `addrs` is `None` when the sender could
    /// not name it (v1 UNKNOWN, v2 AF_UNSPEC or AF_UNIX): use the real
    /// endpoints then too.
    Proxy {
        transport: Transport,
        addrs: Option<Endpoints>,
    },
}

/// The relayed connection's socket type (v1 only speaks of TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Stream,
    Datagram,
    Unspecified,
}

/// The relayed connection's client (`src`) and the address it reached (`dst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// The protocol a built v2 header announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl ProxyHeader {
    /// The client's addresses, or `None` for "use the connection's own".
    pub fn endpoints(&self) -> Option<Endpoints> {
        match self.command {
            Command::Local => None,
            Command::Proxy { addrs, .. } => addrs,
        }
    }
}

/// Parses a PROXY protocol header (v1 or v2) at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed<ProxyHeader> {
    let scanned = match buf.first() {
        None => Err(Stop::Incomplete),
        Some(b'P') => v1::parse(buf),
        Some(0x0D) => v2::parse(buf),
        Some(_) => Err(Stop::Invalid(
            "not a PROXY protocol header: the first byte is neither 'P' (v1) nor 0x0D (v2); \
             the sender must be configured to send PROXY v1 or v2",
        )),
    };
    match scanned {
        Ok((value, consumed)) => Parsed::Done { value, consumed },
        Err(Stop::Incomplete) => Parsed::Incomplete,
        Err(Stop::Invalid(reason)) => Parsed::Invalid(reason),
    }
}

/// Why a scan stopped before a whole header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Incomplete,
    Invalid(&'static str),
}

type Scan<T> = Result<T, Stop>;

const EARLY_LINE_END: &str = "PROXY v1 header: CR or LF before the last field, or not as CRLF; the line must be \
     `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`";

/// Reads a header byte by byte, so that running out of input is `Incomplete`
/// wherever it happens and `?` carries it out; no byte at or past `limit` can
/// belong to the header, so needing one is `Invalid(too_long)`.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    limit: usize,
    too_long: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], limit: usize, too_long: &'static str) -> Cursor<'a> {
        Cursor {
            buf,
            pos: 0,
            limit,
            too_long,
        }
    }

    fn byte(&mut self) -> Scan<u8> {
        if self.pos >= self.limit {
            return Err(Stop::Invalid(self.too_long));
        }
        let b = *self.buf.get(self.pos).ok_or(Stop::Incomplete)?;
        self.pos += 1;
        Ok(b)
    }

    /// Consumes `lit` exactly; the first differing byte is `Invalid(what)`.
    fn literal(&mut self, lit: &[u8], what: &'static str) -> Scan<()> {
        for &want in lit {
            if self.byte()? != want {
                return Err(Stop::Invalid(what));
            }
        }
        Ok(())
    }

    /// Consumes the first of `options` the input starts with (none may be a
    /// prefix of another); `Incomplete` while the input is still a prefix of one.
    fn one_of(&mut self, options: &[&[u8]], what: &'static str) -> Scan<usize> {
        let end = self.buf.len().min(self.limit);
        let rest = self.buf.get(self.pos..end).unwrap_or_default();
        for (i, opt) in options.iter().enumerate() {
            if rest.starts_with(opt) {
                self.pos += opt.len();
                return Ok(i);
            }
        }
        if options.iter().any(|opt| opt.starts_with(rest)) {
            if end == self.limit {
                return Err(Stop::Invalid(self.too_long));
            }
            return Err(Stop::Incomplete);
        }
        Err(Stop::Invalid(what))
    }

    /// The bytes before the next `end` byte (which is consumed); a byte not
    /// `allowed`, or more than `max` of them, is `Invalid(what)`.
    fn token(
        &mut self,
        end: u8,
        max: usize,
        allowed: fn(u8) -> bool,
        what: &'static str,
    ) -> Scan<&'a [u8]> {
        let start = self.pos;
        loop {
            let b = self.byte()?;
            if b == end {
                return self.buf.get(start..self.pos - 1).ok_or(Stop::Invalid(what));
            }
            if b == b'\r' || b == b'\n' {
                return Err(Stop::Invalid(EARLY_LINE_END));
            }
            if !allowed(b) || self.pos - start > max {
                return Err(Stop::Invalid(what));
            }
        }
    }
}
