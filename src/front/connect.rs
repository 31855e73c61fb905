//! HTTP CONNECT (RFC 9110 §9.3.6): the request head a client sends to open a
//! tunnel through us, and the responses we answer it with. Pure: the front
//! hands [`parse_head`] all the bytes received so far, split anywhere, and
//! writes one of the [`response`] byte strings; no I/O here.
//!
//! What is accepted (each rule has a test):
//! - The head is read by `httparse` (at most 64 header lines) and must be
//!   complete within [`MAX_HEAD`] bytes. `consumed` is the head's length,
//!   blank line included: bytes after it are the tunnel's and are relayed.
//! - HTTP/1.0 and HTTP/1.1 only (httparse refuses any other version).
//! - Line endings: httparse accepts a bare LF wherever CRLF is expected, as
//!   RFC 9112 §2.2 allows a recipient to; we keep that (clients that send LF
//!   only exist, and the head's length is still exact). A CR not followed by
//!   LF is invalid. Empty lines before the request line are skipped (RFC 9112
//!   §2.2) and counted in `consumed`.
//! - Methods are case-sensitive (RFC 9110 §9.1): anything but `CONNECT` in a
//!   well-formed head is [`Head::OtherMethod`] (answered 405).
//! - The CONNECT target is authority-form only (RFC 9112 §3.2.3): `host:port`
//!   with a decimal port 1..=65535 (at most 5 digits, no sign), IPv6 as
//!   `[addr]:port` (no zone id). An IPv4 literal or bracketed IPv6 literal is
//!   a [`Destination::Ip`]; an IPv4-mapped IPv6 literal (`[::ffff:a.b.c.d]`)
//!   becomes the IPv4 address, so the destination policy sees the host it
//!   really reaches. Anything else must be a DNS name: ASCII letters, digits,
//!   '-', '.', '_'; labels 1..=63 bytes, at most 253 bytes without the one
//!   trailing dot allowed; the last label not all digits (so `127.1` or
//!   `010.0.0.1`, which some resolvers would read as addresses, are refused
//!   rather than resolved). Names are lowercased (DNS is case-insensitive;
//!   one spelling for the resolver cache and the access log).
//! - `Proxy-Authorization: Basic <base64>` (scheme case-insensitive, RFC 9110
//!   §11.1) is decoded strictly (RFC 4648 standard alphabet, padding
//!   required, zero pad bits) and split at the first ':' (RFC 7617). A
//!   malformed value, another scheme, no ':', or more than one such header
//!   gives no credentials: the front answers 407, never 400, so the client is
//!   asked again rather than told its request was broken.
//! - Other headers (Host, Proxy-Connection, ...) are ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Credentials, Destination, Parsed};

/// A request head not complete within this many bytes is invalid.
pub const MAX_HEAD: usize = 8 * 1024;
/// Header lines parsed at most; more is a bad request.
const MAX_HEADERS: usize = 64;
/// RFC 1035: a name is at most 253 characters in text (255 on the wire).
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// A complete request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    /// CONNECT authority-form request.
    Connect {
        dst: Destination,
        credentials: Option<Credentials>,
    },
    /// A well-formed request with another method (answered 405).
    OtherMethod,
}

/// Reads a request head from the bytes received so far.
pub fn parse_head(input: &[u8]) -> Parsed<Head> {
    // A head that fits ends within the first MAX_HEAD bytes: parsing no more
    // keeps the work per call bounded however much the client sent.
    let window = input.get(..MAX_HEAD).unwrap_or(input);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(window) {
        Ok(httparse::Status::Complete(consumed)) => match head_of(&req) {
            Ok(value) => Parsed::Done { value, consumed },
            Err(why) => Parsed::Invalid(why),
        },
        Ok(httparse::Status::Partial) if input.len() >= MAX_HEAD => {
            Parsed::Invalid("request head over 8 KiB")
        }
        Ok(httparse::Status::Partial) => Parsed::Incomplete,
        Err(e) => Parsed::Invalid(httparse_reason(e)),
    }
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "request head has an invalid header name",
        httparse::Error::HeaderValue => "request head has an invalid byte in a header value",
        httparse::Error::NewLine => "request head has a CR not followed by LF",
        httparse::Error::Status | httparse::Error::Token => {
            "request line is not `METHOD target HTTP/1.x` (one space between)"
        }
        httparse::Error::TooManyHeaders => "request head has more than 64 header lines",
        httparse::Error::Version => "request is not HTTP/1.0 or HTTP/1.1",
    }
}

fn head_of(req: &httparse::Request<'_, '_>) -> Result<Head, &'static str> {
    // httparse only completes 1.0 and 1.1; checked again so a future
    // httparse accepting more cannot widen what we take.
    if !matches!(req.version, Some(0 | 1)) {
        return Err("request is not HTTP/1.0 or HTTP/1.1");
    }
    if req.method != Some("CONNECT") {
        return Ok(Head::OtherMethod);
    }
    let dst = parse_authority(req.path.unwrap_or_default())?;
    let credentials = proxy_credentials(req.headers);
    Ok(Head::Connect { dst, credentials })
}

/// `host:port` or `[v6]:port`, as RFC 9110 §9.3.6 requires of CONNECT.
fn parse_authority(target: &str) -> Result<Destination, &'static str> {
    if target.contains('/') {
        return Err("CONNECT target must be host:port (authority-form), not a URL or path");
    }
    if let Some(rest) = target.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or("CONNECT target has '[' without ']'")?;
        let port = parse_port(after.strip_prefix(':'))?;
        let ip: Ipv6Addr = addr
            .parse()
            .map_err(|_| "CONNECT target has an invalid IPv6 address in brackets")?;
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        return Ok(Destination::Ip(SocketAddr::new(ip, port)));
    }
    let (host, port) = match target.rsplit_once(':') {
        Some((host, port)) => (host, parse_port(Some(port))?),
        None => (target, parse_port(None)?),
    };
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Destination::Ip(SocketAddr::new(IpAddr::V4(ip), port)));
    }
    check_name(host)?;
    Ok(Destination::Name(host.to_ascii_lowercase(), port))
}

fn parse_port(text: Option<&str>) -> Result<u16, &'static str> {
    let text = text.ok_or("CONNECT target has no port (want host:port)")?;
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("CONNECT target port is not a decimal number 1-65535");
    }
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err("CONNECT target port is not a decimal number 1-65535"),
    }
}

fn check_name(host: &str) -> Result<(), &'static str> {
    const BAD: &str = "CONNECT target host is neither an IP address nor a DNS name \
                       (letters, digits, '-', '_', '.'; labels of 1-63; at most 253)";
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(BAD);
    }
    let mut last = "";
    for label in name.split('.') {
        let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if label.is_empty() || label.len() > MAX_LABEL || !label.bytes().all(ok) {
            return Err(BAD);
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(
            "CONNECT target host looks like an IP address but is not one \
                    (IPv4 is four decimal octets; IPv6 goes in brackets)",
        );
    }
    Ok(())
}

/// The one `Proxy-Authorization` header's Basic credentials, if well-formed.
fn proxy_credentials(headers: &[httparse::Header<'_>]) -> Option<Credentials> {
    let mut found = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Proxy-Authorization"));
    let first = found.next()?;
    // Two answers to one question: which a proxy behind us would read is
    // anyone's guess, so neither counts.
    if found.next().is_some() {
        return None;
    }
    basic_credentials(first.value)
}

/// `Basic 1*SP token68` (RFC 7617 §2), the token `user:password` in base64.
fn basic_credentials(value: &[u8]) -> Option<Credentials> {
    let value = value.trim_ascii();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"Basic") {
        return None;
    }
    let token = rest.get(rest.iter().position(|&b| b != b' ')?..)?;
    let decoded = base64_decode(token)?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let (user, password) = decoded.split_at(colon);
    Some(Credentials {
        user: user.to_vec(),
        password: password.get(1..)?.to_vec(),
    })
}

/// Strict RFC 4648 §4 base64: standard alphabet, length a multiple of 4,
/// '=' padding only at the end, pad bits zero (§3.5), nothing else (no
/// whitespace, no URL-safe alphabet). Strict so that one credential has one
/// spelling.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 4 != 0 {
        return None;
    }
    let quads = text.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (i, quad) in text.chunks_exact(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != quads) {
            return None;
        }
        let mut n: u32 = 0;
        for &b in quad.get(..4 - pad)? {
            n = (n << 6) | u32::from(sextet(b)?);
        }
        n <<= 6 * pad;
        // The bits of the last sextet that fill no whole byte must be zero.
        if n & ((1u32 << (8 * pad)) - 1) != 0 {
            return None;
        }
        out.extend(n.to_be_bytes().iter().skip(1).take(3 - pad));
    }
    Some(out)
}

fn sextet(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// What the proxy answers a CONNECT with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 200: the tunnel is open; the bytes after the response are the peer's.
    Established,
    /// 400: a head [`parse_head`] found invalid.
    BadRequest,
    /// 403: the destination or its port is denied by policy.
    Forbidden,
    /// 405: a method other than CONNECT.
    MethodNotAllowed,
    /// 407: users are configured and the credentials are missing or wrong.
    ProxyAuthRequired,
    /// 502: the connect to the destination failed (or its name did not resolve).
    BadGateway,
    /// 504: the connect to the destination timed out.
    GatewayTimeout,
    /// 503: no room (max_connections) or shutting down.
    ServiceUnavailable,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Established => 200,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::MethodNotAllowed => 405,
            Status::ProxyAuthRequired => 407,
            Status::BadGateway => 502,
            Status::GatewayTimeout => 504,
            Status::ServiceUnavailable => 503,
        }
    }
}

/// The complete response for `status`. Every response but 200 closes the
/// connection (`Connection: close`, and the front closes after writing it),
/// with an empty body so the client need not read one. 200 carries neither
/// Content-Length nor Transfer-Encoding: RFC 9110 §9.3.6 says a client must
/// ignore them, and some do not.
pub fn response(status: Status) -> &'static [u8] {
    match status {
        Status::Established => b"HTTP/1.1 200 Connection established\r\n\r\n",
        Status::BadRequest => {
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Status::Forbidden => {
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Status::MethodNotAllowed => {
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\
              Allow: CONNECT\r\n\r\n"
        }
        Status::ProxyAuthRequired => {
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\
              Connection: close\r\nProxy-Authenticate: Basic realm=\"ringfwd\"\r\n\r\n"
        }
        Status::BadGateway => {
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Status::GatewayTimeout => {
            b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Status::ServiceUnavailable => {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
    }
}

/// The answer to a failed connect: ETIMEDOUT (the kernel gave up) or
/// ECANCELED (our connect_timeout cancelled it) is a timeout, 504; anything
/// else (refused, unreachable, ...) is 502. Either sign of errno is taken,
/// as io_uring completions carry it negated.
pub fn status_for_errno(errno: i32) -> Status {
    match errno.wrapping_abs() {
        libc::ETIMEDOUT | libc::ECANCELED => Status::GatewayTimeout,
        _ => Status::BadGateway,
    }
}

#[cfg(test)]
#[path = "connect_tests.rs"]
mod tests;
