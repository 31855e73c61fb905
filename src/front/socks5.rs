//! SOCKS5 (RFC 1928) and its username/password sub-negotiation (RFC 1929):
//! the parsers for what a client sends and the builders for what we answer.
//! Pure functions, no I/O: each parser takes every byte received so far
//! (split anywhere by the network) and says `Incomplete`, `Done` with the
//! exact length it took, or `Invalid`.
//!
//! # Wire format
//!
//! A TCP connection to the proxy goes (all integers big-endian):
//!
//! ```text
//! client  greeting   VER=5 NMETHODS(1..=255) METHODS[NMETHODS]
//! server  choice     VER=5 METHOD             (0xFF: none acceptable, close)
//! -- with METHOD 0x02, RFC 1929:
//! client  auth       VER=1 ULEN(1..=255) UNAME PLEN(0..=255) PASSWD
//! server  status     VER=1 STATUS             (0 = success; else close)
//! client  request    VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT
//! server  reply      VER=5 REP RSV=0 ATYP BND.ADDR BND.PORT
//! ```
//!
//! ATYP 1 is an IPv4 address (4 bytes), 4 an IPv6 address (16), 3 a name
//! (LEN(1..=255) then LEN bytes). CMD 1 is CONNECT, 2 BIND, 3 UDP ASSOCIATE.
//! After a successful CONNECT reply the connection is the relayed stream:
//! bytes after the request are the client's and are never consumed here.
//!
//! A UDP ASSOCIATE datagram is `RSV(2)=0 FRAG ATYP DST.ADDR DST.PORT DATA`,
//! parsed whole ([`parse_udp`]); the relay prepends the same header naming
//! the source to each datagram it returns ([`write_udp_header`]).
//!
//! # Rules beyond a lenient reading (each has a test)
//!
//! - A byte that cannot be right is `Invalid` as soon as it arrives (a wrong
//!   version, NMETHODS or ULEN 0, a nonzero RSV, name LEN 0), so a client
//!   speaking something else is not held until the front's timeout.
//! - An unknown ATYP in a request is `Done` after the 4 fixed bytes with
//!   [`RequestDst::UnsupportedType`]: the caller answers
//!   [`Reply::AddressTypeNotSupported`] as RFC 1928 asks, then closes.
//! - A name must be a plausible host name: ASCII letters, digits, `-`, `_`
//!   and `.`, no empty label (one trailing dot is allowed and dropped),
//!   labels of at most 63 bytes, at most 253 in all. A name that is an IP
//!   literal (`127.0.0.1`, `::1`, `[::1]`) becomes [`Destination::Ip`], so the
//!   destination policy judges it as the address it is; a name whose last
//!   label is numeric but which is not a dotted-quad IPv4 address (`127.1`,
//!   `2130706433`, `0x7f.1`, `0177.0.0.1`) is `Invalid`, since resolvers that
//!   follow `inet_aton` would read it as an address the policy never saw
//!   (no top-level domain is numeric, RFC 3696 2).
//! - Port 0 parses (the caller's policy refuses it with a reply).
//! - Replies and UDP headers write an IPv4-mapped IPv6 address as IPv4: the
//!   client asked in IPv4 and compares what comes back with what it sent.

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::put::Put;
use super::{Credentials, Destination, Parsed};

/// The protocol version byte of the greeting, request and reply.
pub const VERSION: u8 = 5;
/// Method: no authentication.
pub const NO_AUTH: u8 = 0x00;
/// Method: username/password (RFC 1929).
pub const USER_PASS: u8 = 0x02;
/// The method reply meaning "none of the offered methods"; the client closes.
pub const NO_ACCEPTABLE: u8 = 0xFF;
/// The version byte of the RFC 1929 sub-negotiation (not 5).
const AUTH_VERSION: u8 = 0x01;

const ATYP_IPV4: u8 = 1;
const ATYP_NAME: u8 = 3;
const ATYP_IPV6: u8 = 4;

/// Room for any reply [`write_reply`] writes (IPv6: 4 + 16 + 2).
pub const MAX_REPLY: usize = 22;
/// Room for any UDP header (a 255-byte name: 3 + 1 + 1 + 255 + 2).
pub const MAX_UDP_HEADER: usize = 262;
/// The longest UDP header naming an address (IPv6): what a reply from a
/// destination carries.
pub const MAX_UDP_IP_HEADER: usize = 22;

/// The longest name in text form, without the trailing dot (RFC 1035 2.3.4).
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// The methods a client offered in its greeting (a set of the 256 values).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    methods: [u64; 4],
}

impl Greeting {
    /// Whether the client offered `method`.
    pub fn offers(&self, method: u8) -> bool {
        let (word, bit) = (usize::from(method / 64), method % 64);
        self.methods.get(word).is_some_and(|w| (w >> bit) & 1 == 1)
    }

    /// The offered methods in ascending order (for logs).
    pub fn methods(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=u8::MAX).filter(|&m| self.offers(m))
    }

    fn add(&mut self, method: u8) {
        let (word, bit) = (usize::from(method / 64), method % 64);
        if let Some(w) = self.methods.get_mut(word) {
            *w |= 1 << bit;
        }
    }
}

impl std::fmt::Debug for Greeting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.methods()).finish()
    }
}

/// What a request asks for (RFC 1928 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
    /// Any other CMD byte: answered [`Reply::CommandNotSupported`].
    Other(u8),
}

impl From<u8> for Command {
    fn from(b: u8) -> Command {
        match b {
            1 => Command::Connect,
            2 => Command::Bind,
            3 => Command::UdpAssociate,
            other => Command::Other(other),
        }
    }
}

impl From<Command> for u8 {
    fn from(c: Command) -> u8 {
        match c {
            Command::Connect => 1,
            Command::Bind => 2,
            Command::UdpAssociate => 3,
            Command::Other(b) => b,
        }
    }
}

/// A request's destination, or the address type it used that we do not know
/// (its address cannot be skipped: its length is unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestDst {
    Dst(Destination),
    UnsupportedType(u8),
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub dst: RequestDst,
}

/// The REP field of a reply (RFC 1928 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0,
    GeneralFailure = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TtlExpired = 6,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

/// The header of a UDP ASSOCIATE datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpHeader {
    /// The fragment number; 0 is a whole datagram (others are dropped).
    pub frag: u8,
    pub dst: Destination,
}

/// Parses the client's greeting: `VER=5 NMETHODS METHODS`.
pub fn parse_greeting(input: &[u8]) -> Parsed<Greeting> {
    run(input, greeting)
}

fn greeting(r: &mut Reader<'_>) -> Scan<Greeting> {
    r.expect(VERSION, BAD_VERSION)?;
    let n = r.byte()?;
    if n == 0 {
        return Err(Stop::Invalid(
            "SOCKS5 greeting: NMETHODS is 0; a client must offer at least one method \
             (0x00 no authentication, 0x02 username/password)",
        ));
    }
    let mut g = Greeting { methods: [0; 4] };
    for &m in r.take(usize::from(n))? {
        g.add(m);
    }
    Ok(g)
}

/// The server's method choice: `[5, method]`.
pub fn method_reply(method: u8) -> [u8; 2] {
    [VERSION, method]
}

/// Parses the RFC 1929 username/password request:
/// `VER=1 ULEN UNAME PLEN PASSWD` (an empty password is accepted).
pub fn parse_auth(input: &[u8]) -> Parsed<Credentials> {
    run(input, auth)
}

fn auth(r: &mut Reader<'_>) -> Scan<Credentials> {
    r.expect(
        AUTH_VERSION,
        "SOCKS5 username/password request: the version byte is not 1 (RFC 1929); \
         the client must send its credentials after the server chose method 0x02",
    )?;
    let ulen = r.byte()?;
    if ulen == 0 {
        return Err(Stop::Invalid(
            "SOCKS5 username/password request: ULEN is 0; the user name must not be empty",
        ));
    }
    let user = r.take(usize::from(ulen))?.to_vec();
    let plen = r.byte()?;
    let password = r.take(usize::from(plen))?.to_vec();
    Ok(Credentials { user, password })
}

/// The sub-negotiation status: `[1, 0]` on success, `[1, 1]` otherwise
/// (the caller closes after a failure, as RFC 1929 requires).
pub fn auth_reply(ok: bool) -> [u8; 2] {
    [AUTH_VERSION, if ok { 0 } else { 1 }]
}

/// Parses a request: `VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT`.
pub fn parse_request(input: &[u8]) -> Parsed<Request> {
    run(input, request)
}

fn request(r: &mut Reader<'_>) -> Scan<Request> {
    r.expect(VERSION, BAD_VERSION)?;
    let command = Command::from(r.byte()?);
    r.expect(
        0,
        "SOCKS5 request: the reserved byte after CMD is not 0 (RFC 1928 4); \
         the client is not speaking SOCKS5",
    )?;
    let atyp = r.byte()?;
    if command == Command::UdpAssociate && atyp == ATYP_NAME {
        return Ok(Request {
            command,
            dst: RequestDst::Dst(hint_name(r)?),
        });
    }
    let dst = match address(r, atyp)? {
        Some(d) => RequestDst::Dst(d),
        None => RequestDst::UnsupportedType(atyp),
    };
    Ok(Request { command, dst })
}

/// UDP ASSOCIATE's DST as a name: where the client says it will send from,
/// a hint that is never resolved or connected to, so the host-name rules do
/// not apply (PySocks sends the name "0"); it is kept for the log, so only
/// printable ASCII is taken.
fn hint_name(r: &mut Reader<'_>) -> Scan<Destination> {
    let len = r.byte()?;
    let name = r.take(usize::from(len))?;
    let port = r.port()?;
    match std::str::from_utf8(name) {
        Ok(text) if name.iter().all(u8::is_ascii_graphic) => {
            Ok(Destination::Name(text.to_owned(), port))
        }
        _ => Err(Stop::Invalid(
            "SOCKS5 UDP ASSOCIATE: the address hint is a name with a byte that is not \
             printable ASCII; send 0.0.0.0 (ATYP 1) when the address is not known",
        )),
    }
}

/// Writes a reply `VER REP RSV=0 ATYP BND.ADDR BND.PORT` into `out`; returns
/// its length (10 for IPv4, 22 for IPv6). An IPv4-mapped address is written
/// as IPv4; an IPv6 scope id is not carried (the format has no field for it).
pub fn write_reply(code: Reply, bound: SocketAddr, out: &mut [u8; MAX_REPLY]) -> usize {
    let mut w = Put::new(out);
    w.put(&[VERSION, code as u8, 0]);
    put_address(&mut w, bound);
    w.len()
}

/// Parses a UDP ASSOCIATE datagram's header: `RSV(2)=0 FRAG ATYP DST`.
/// Returns the header and the offset of the payload. A datagram is whole, so
/// a short one is an error like any other.
pub fn parse_udp(datagram: &[u8]) -> Result<(UdpHeader, usize), &'static str> {
    let mut r = Reader::new(datagram);
    match udp(&mut r) {
        Ok(h) => Ok((h, r.pos)),
        Err(Stop::Incomplete) => Err(
            "SOCKS5 UDP datagram: shorter than its header (RSV RSV FRAG ATYP DST.ADDR DST.PORT)",
        ),
        Err(Stop::Invalid(reason)) => Err(reason),
    }
}

fn udp(r: &mut Reader<'_>) -> Scan<UdpHeader> {
    const RSV: &str = "SOCKS5 UDP datagram: the 2 reserved bytes are not 0 (RFC 1928 7); \
                       the sender is not a SOCKS5 UDP client";
    r.expect(0, RSV)?;
    r.expect(0, RSV)?;
    let frag = r.byte()?;
    let atyp = r.byte()?;
    let dst = address(r, atyp)?.ok_or(Stop::Invalid(
        "SOCKS5 UDP datagram: unknown ATYP (1 IPv4, 3 name and 4 IPv6 are defined)",
    ))?;
    Ok(UdpHeader { frag, dst })
}

/// Writes the header the relay prepends to a datagram from `src`:
/// `RSV(2)=0 FRAG=0 ATYP SRC.ADDR SRC.PORT`; returns its length (10 or 22).
/// An IPv4-mapped address is written as IPv4, as in [`write_reply`].
pub fn write_udp_header(src: SocketAddr, out: &mut [u8; MAX_UDP_IP_HEADER]) -> usize {
    let mut w = Put::new(out);
    w.put(&[0, 0, 0]);
    put_address(&mut w, src);
    w.len()
}

/// The reply for a failed outbound connect, from its errno. A connect
/// timeout (the ring's linked timeout cancels it: ECANCELED) is the host not
/// answering, as ETIMEDOUT is.
pub fn reply_for_errno(errno: i32) -> Reply {
    match errno {
        libc::ECONNREFUSED => Reply::ConnectionRefused,
        libc::ENETUNREACH => Reply::NetworkUnreachable,
        libc::EHOSTUNREACH | libc::ETIMEDOUT | libc::ECANCELED => Reply::HostUnreachable,
        _ => Reply::GeneralFailure,
    }
}

const BAD_VERSION: &str = "SOCKS5: the version byte is not 5; the client must speak SOCKS5 \
                           (SOCKS4 clients send 4, and this is not an HTTP proxy)";

/// DST.ADDR DST.PORT for address type `atyp`; `None` for a type we do not
/// know (nothing after ATYP is consumed then).
fn address(r: &mut Reader<'_>, atyp: u8) -> Scan<Option<Destination>> {
    let dst = match atyp {
        ATYP_IPV4 => {
            let ip = Ipv4Addr::from(r.array::<4>()?);
            Destination::Ip(SocketAddr::new(IpAddr::V4(ip), r.port()?))
        }
        ATYP_IPV6 => {
            let ip = Ipv6Addr::from(r.array::<16>()?);
            Destination::Ip(SocketAddr::new(IpAddr::V6(ip), r.port()?))
        }
        ATYP_NAME => {
            let len = r.byte()?;
            if len == 0 {
                return Err(Stop::Invalid(
                    "SOCKS5 address: a name of length 0; the client must name a host",
                ));
            }
            let name = r.take(usize::from(len))?;
            let port = r.port()?;
            host(name, port).map_err(Stop::Invalid)?
        }
        _ => return Ok(None),
    };
    Ok(Some(dst))
}

/// A name from the wire as a destination: an IP literal is an address, any
/// other name must be a plausible host name (see the module's rules).
fn host(name: &[u8], port: u16) -> Result<Destination, &'static str> {
    const NOT_ASCII: &str = "SOCKS5 address: the name has a byte that is not an ASCII letter, \
                             digit, '-', '_' or '.'; internationalised names must be sent in \
                             their xn-- form";
    let text = std::str::from_utf8(name).map_err(|_| NOT_ASCII)?;
    if let Some(ip) = ip_literal(text) {
        return Ok(Destination::Ip(SocketAddr::new(ip, port)));
    }
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.len() > MAX_NAME {
        return Err("SOCKS5 address: the name is longer than 253 bytes (RFC 1035 2.3.4)");
    }
    for label in text.split('.') {
        if label.is_empty() {
            return Err("SOCKS5 address: the name has an empty label ('..', or a leading dot)");
        }
        if label.len() > MAX_LABEL {
            return Err("SOCKS5 address: a label of the name is longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(NOT_ASCII);
        }
    }
    if text.rsplit('.').next().is_some_and(numeric_label) {
        return Err(
            "SOCKS5 address: the name ends in a numeric label but is not a dotted-quad \
             IPv4 address (as 127.1 or 0x7f.1); send the address as a.b.c.d or with ATYP 1",
        );
    }
    Ok(Destination::Name(text.to_owned(), port))
}

/// `text` as an address: IPv4 dotted quad, IPv6 (bare or in brackets), with
/// one trailing dot allowed after an IPv4 address as after a name.
fn ip_literal(text: &str) -> Option<IpAddr> {
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let bare = text.strip_suffix('.').unwrap_or(text);
    if let Ok(v4) = bare.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// A label `inet_aton` would read as a number: decimal, or 0x hex.
fn numeric_label(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Why a scan stopped before a whole message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Incomplete,
    Invalid(&'static str),
}

type Scan<T> = Result<T, Stop>;

/// Runs `scan` over `input`: its value and the bytes it took, or why not.
fn run<T>(input: &[u8], scan: fn(&mut Reader<'_>) -> Scan<T>) -> Parsed<T> {
    let mut r = Reader::new(input);
    match scan(&mut r) {
        Ok(value) => Parsed::Done {
            value,
            consumed: r.pos,
        },
        Err(Stop::Incomplete) => Parsed::Incomplete,
        Err(Stop::Invalid(reason)) => Parsed::Invalid(reason),
    }
}

/// Reads a message byte by byte, so that running out of input is
/// `Incomplete` wherever it happens and `?` carries it out.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn byte(&mut self) -> Scan<u8> {
        let b = *self.buf.get(self.pos).ok_or(Stop::Incomplete)?;
        self.pos += 1;
        Ok(b)
    }

    /// Consumes one byte that must be `want`; another is `Invalid(what)`.
    fn expect(&mut self, want: u8, what: &'static str) -> Scan<()> {
        if self.byte()? == want {
            Ok(())
        } else {
            Err(Stop::Invalid(what))
        }
    }

    fn take(&mut self, n: usize) -> Scan<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(Stop::Incomplete)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Stop::Incomplete)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Scan<[u8; N]> {
        let bytes = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(bytes);
        Ok(a)
    }

    fn port(&mut self) -> Scan<u16> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }
}

/// ATYP ADDR PORT, an IPv4-mapped address as IPv4.
fn put_address(w: &mut Put<'_>, addr: SocketAddr) {
    match addr.ip().to_canonical() {
        IpAddr::V4(v4) => {
            w.put(&[ATYP_IPV4]);
            w.put(&v4.octets());
        }
        IpAddr::V6(v6) => {
            w.put(&[ATYP_IPV6]);
            w.put(&v6.octets());
        }
    }
    w.put(&addr.port().to_be_bytes());
}
