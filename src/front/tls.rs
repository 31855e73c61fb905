//! TLS ClientHello reader: finds the server name (SNI) a client asks for in the
//! first bytes of a TCP connection, so the connection can be routed by name
//! while the TLS session itself passes through untouched.
//!
//! **Hand-written, not a crate.** The work is record reassembly (a ClientHello
//! may span several handshake records, and records arrive split at any byte)
//! plus walking a handful of length-prefixed fields to one extension. The
//! established crate, `tls-parser` (rusticata), parses one record or one
//! message at a time and leaves reassembly, bounds and the "need more bytes"
//! decision to the caller, which is most of this module anyway; it would also
//! bring `nom` and parse every extension we then ignore. What remains by hand
//! is ~150 lines of bounds-checked slicing (no indexing, so no panics), fuzzed
//! by `fuzz/fuzz_targets/client_hello.rs`.
//!
//! **Outcomes** (mapping onto [`Parsed`]):
//! - `Incomplete`: no decision yet; append bytes and ask again.
//! - `Done(TlsFront::Hello)`: a whole ClientHello; its [`ServerName`] says
//!   whether a usable name was found.
//! - `Done(TlsFront::NotTls)`: the first byte is not a handshake record (22),
//!   the record version is not 3.x, or the first handshake message is not a
//!   ClientHello. Decided from the first few bytes; route to the listener's
//!   default upstreams.
//! - `Done(TlsFront::Malformed(reason))`: handshake records whose contents do
//!   not parse. Also routed to the default upstreams, as NGINX `ssl_preread`
//!   does (it just finds no server name): the upstream TLS server sees the
//!   same bytes and rejects them with a proper alert, which is a better
//!   failure for the client than a reset from us. The reason is for a counter
//!   or a debug log.
//! - `Invalid(TOO_LARGE)`: no complete ClientHello within [`MAX_INPUT`] bytes
//!   (or one that announces itself larger). The only `Invalid` this parser
//!   returns. Close the connection, as NGINX does when its preread buffer
//!   fills: routing a half-read hello by default could send a client that
//!   named another route to the wrong place.
//!
//! **`consumed` is always 0**: this front only peeks. Every byte, the
//! ClientHello included, belongs to the stream and is relayed to the upstream
//! (unlike a PROXY header, which is stripped). [`ClientHello::hello_len`] says
//! how many leading bytes held the hello, for logs.
//!
//! The parser is a pure function of the bytes and monotonic: once it returns
//! anything but `Incomplete` for a prefix, every longer input gives the same
//! answer, so the caller may stop reading at the first decision.

use std::borrow::Cow;

use super::Parsed;
use super::sni::host_name_problem;

/// The most bytes the reader looks at: records holding a whole ClientHello
/// must fit in this. A browser's hello with a post-quantum key share is about
/// 1.8 KiB; 16 KiB is one full-size record.
pub const MAX_INPUT: usize = 16 * 1024;

/// The reason [`read_client_hello`] gives with `Parsed::Invalid`.
pub const TOO_LARGE: &str = "no complete TLS ClientHello within the first 16 KiB";

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
/// RFC 8446 5.1: a plaintext record fragment is at most 2^14 bytes.
const MAX_FRAGMENT: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What the first bytes of a connection are, as far as TLS routing cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsFront {
    /// A complete, well-formed ClientHello.
    Hello(ClientHello),
    /// Not a TLS handshake: route by default, forward the bytes.
    NotTls,
    /// TLS handshake records that do not parse: route by default (see the
    /// module doc), forward the bytes; the reason is for counting.
    Malformed(&'static str),
}

/// What the reader took from a ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// `legacy_version` (0x0303 for TLS 1.2 and 1.3, whose real version is in
    /// the supported_versions extension).
    pub legacy_version: u16,
    pub server_name: ServerName,
    /// How many leading bytes of the input held the hello (record headers
    /// included), for logs; the bytes are relayed all the same.
    pub hello_len: usize,
}

/// The server_name extension's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerName {
    /// No server_name extension (an IP-addressed or SNI-less client).
    Absent,
    /// One valid host name, lowercased, without a trailing dot.
    Host(String),
    /// An extension we will not route on (a name with NUL or spaces, several
    /// names, a non-host_name entry). The reason is for counting; route by
    /// default as if absent.
    Unusable(&'static str),
}

impl ServerName {
    /// The name to route on, if any.
    pub fn host(&self) -> Option<&str> {
        match self {
            ServerName::Host(name) => Some(name),
            ServerName::Absent | ServerName::Unusable(_) => None,
        }
    }
}

/// Reads the ClientHello at the start of `buf` (everything the client sent so
/// far). See the module doc for the outcomes; `consumed` is always 0.
pub fn read_client_hello(buf: &[u8]) -> Parsed<TlsFront> {
    // Looking only at the window keeps the answer monotonic across the limit.
    let window = buf.get(..MAX_INPUT).unwrap_or(buf);
    let done = |value| Parsed::Done { value, consumed: 0 };
    match reassemble(window) {
        Step::Message {
            message,
            total,
            end,
        } => match parse_client_hello(message.get(HANDSHAKE_HEADER..total).unwrap_or_default()) {
            Ok((legacy_version, server_name)) => done(TlsFront::Hello(ClientHello {
                legacy_version,
                server_name,
                hello_len: end,
            })),
            Err(reason) => done(TlsFront::Malformed(reason)),
        },
        Step::More if buf.len() >= MAX_INPUT => Parsed::Invalid(TOO_LARGE),
        Step::More => Parsed::Incomplete,
        Step::TooLarge => Parsed::Invalid(TOO_LARGE),
        Step::NotTls => done(TlsFront::NotTls),
        Step::Malformed(reason) => done(TlsFront::Malformed(reason)),
    }
}

/// Where record reassembly got to.
enum Step<'a> {
    /// The joined handshake bytes, whose first `total` are the ClientHello
    /// (header included), and the input offset just past its last byte.
    Message {
        message: Cow<'a, [u8]>,
        total: usize,
        end: usize,
    },
    More,
    TooLarge,
    NotTls,
    Malformed(&'static str),
}

/// Joins the fragments of consecutive handshake records until the first
/// handshake message is whole. Borrows when one record holds it (the usual
/// case), copies otherwise.
fn reassemble(buf: &[u8]) -> Step<'_> {
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut pos = 0;
    loop {
        let record = buf.get(pos..).unwrap_or_default();
        let len = match record_header(record, pos == 0) {
            Ok(len) => len,
            Err(step) => return step,
        };
        let payload = record.get(RECORD_HEADER..).unwrap_or_default();
        let fragment = payload.get(..len).unwrap_or(payload);
        let before = message.len();
        if message.is_empty() {
            message = Cow::Borrowed(fragment);
        } else {
            message.to_mut().extend_from_slice(fragment);
        }
        match message_state(&message) {
            Ok(Some(total)) => {
                // The bytes this record adds to finish the message.
                let end = pos + RECORD_HEADER + total.saturating_sub(before);
                return Step::Message {
                    message,
                    total,
                    end,
                };
            }
            Ok(None) => {}
            Err(step) => return step,
        }
        if fragment.len() < len {
            return Step::More;
        }
        pos += RECORD_HEADER + len;
    }
}

/// The fragment length of the record starting `record`, once its header is
/// whole and acceptable. The first record decides NotTls; a later one that is
/// not a handshake record is a broken hello.
fn record_header(record: &[u8], first: bool) -> Result<usize, Step<'static>> {
    let reject = |reason| {
        if first {
            Step::NotTls
        } else {
            Step::Malformed(reason)
        }
    };
    match record.first() {
        None => return Err(Step::More),
        Some(&CONTENT_HANDSHAKE) => {}
        Some(_) => return Err(reject("a non-handshake record inside the ClientHello")),
    }
    match record.get(1) {
        None => return Err(Step::More),
        Some(3) => {}
        Some(_) => return Err(reject("a record version that is not 3.x")),
    }
    let Some(&[hi, lo]) = record.get(3..RECORD_HEADER) else {
        return Err(Step::More);
    };
    match usize::from(u16::from_be_bytes([hi, lo])) {
        0 => Err(Step::Malformed("an empty handshake record")),
        len if len > MAX_FRAGMENT => Err(Step::Malformed("a record longer than 2^14 bytes")),
        len => Ok(len),
    }
}

/// Given the handshake bytes joined so far: `Some(total)` once the first
/// message (header included) is whole, None while it is not; decides NotTls
/// and TooLarge as soon as the message header shows them.
fn message_state(message: &[u8]) -> Result<Option<usize>, Step<'static>> {
    match message.first() {
        None => return Ok(None),
        Some(&HANDSHAKE_CLIENT_HELLO) => {}
        Some(_) => return Err(Step::NotTls),
    }
    let Some(&[_, a, b, c]) = message.get(..HANDSHAKE_HEADER) else {
        return Ok(None);
    };
    let total = HANDSHAKE_HEADER + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
    // Even in a single record it would not fit the window.
    if total + RECORD_HEADER > MAX_INPUT {
        return Err(Step::TooLarge);
    }
    Ok((message.len() >= total).then_some(total))
}

/// A cursor over length-prefixed TLS fields; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], &'static str> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(what)?;
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, &'static str> {
        let (&b, rest) = self.0.split_first().ok_or(what)?;
        self.0 = rest;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, &'static str> {
        let (hi, lo) = (self.u8(what)?, self.u8(what)?);
        Ok(u16::from_be_bytes([hi, lo]))
    }

    /// An opaque vector with a one-byte length.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    /// An opaque vector with a two-byte length.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Walks a ClientHello body (RFC 8446 4.1.2) to its server_name extension.
fn parse_client_hello(body: &[u8]) -> Result<(u16, ServerName), &'static str> {
    let mut r = Reader(body);
    let legacy_version = r.u16("truncated ClientHello version")?;
    if legacy_version >> 8 != 3 {
        return Err("a ClientHello version that is not 3.x");
    }
    r.take(32, "truncated ClientHello random")?;
    if r.vec8("truncated session id")?.len() > 32 {
        return Err("a session id longer than 32 bytes");
    }
    let suites = r.vec16("truncated cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("a cipher suite list that is empty or of odd length");
    }
    if r.vec8("truncated compression methods")?.is_empty() {
        return Err("an empty compression method list");
    }
    // A hello without extensions ends here (pre-TLS 1.2 clients).
    if r.is_empty() {
        return Ok((legacy_version, ServerName::Absent));
    }
    let extensions = r.vec16("truncated extensions")?;
    if !r.is_empty() {
        return Err("bytes after the ClientHello extensions");
    }
    Ok((legacy_version, find_server_name(extensions)?))
}

fn find_server_name(extensions: &[u8]) -> Result<ServerName, &'static str> {
    let mut r = Reader(extensions);
    let mut found = None;
    while !r.is_empty() {
        let kind = r.u16("truncated extension type")?;
        let data = r.vec16("truncated extension")?;
        if kind == EXT_SERVER_NAME {
            // TLS forbids repeating an extension; two names would make our
            // route and the upstream's certificate choice disagree.
            if found.is_some() {
                return Err("two server_name extensions");
            }
            found = Some(server_name(data)?);
        }
    }
    Ok(found.unwrap_or(ServerName::Absent))
}

/// RFC 6066 3: `ServerNameList server_name_list<1..2^16-1>`, each entry a
/// type byte and a two-byte-length name.
fn server_name(data: &[u8]) -> Result<ServerName, &'static str> {
    let mut outer = Reader(data);
    let list = outer.vec16("truncated server_name list")?;
    if !outer.is_empty() {
        return Err("bytes after the server_name list");
    }
    let mut r = Reader(list);
    let mut entries = Vec::with_capacity(1);
    while !r.is_empty() {
        let kind = r.u8("truncated server_name entry")?;
        entries.push((kind, r.vec16("truncated server_name entry")?));
    }
    // Like OpenSSL, accept exactly one host_name: a list the upstream would
    // refuse is no name to route on.
    Ok(match entries.as_slice() {
        [] => ServerName::Unusable("an empty server_name list"),
        [(NAME_TYPE_HOST_NAME, name)] => host_name(name),
        [(_, _)] => ServerName::Unusable("a server_name entry that is not a host_name"),
        _ => ServerName::Unusable("several server_name entries"),
    })
}

fn host_name(name: &[u8]) -> ServerName {
    match host_name_problem(name) {
        Some(problem) => ServerName::Unusable(problem),
        None => {
            let name = name.strip_suffix(b".").unwrap_or(name);
            // Validated as ASCII just above, so this is lossless.
            ServerName::Host(String::from_utf8_lossy(name).to_ascii_lowercase())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Rng;

    const TLS13_SNI: &[u8] = include_bytes!("../../tests/fixtures/tls/openssl_tls13_sni.bin");
    const TLS12_SNI: &[u8] = include_bytes!("../../tests/fixtures/tls/openssl_tls12_sni.bin");
    const NO_SNI: &[u8] = include_bytes!("../../tests/fixtures/tls/openssl_nosni.bin");
    const MIXED_CASE: &[u8] =
        include_bytes!("../../tests/fixtures/tls/openssl_default_mixed_case_sni.bin");
    const FFDHE8192: &[u8] = include_bytes!("../../tests/fixtures/tls/openssl_tls13_ffdhe8192.bin");
    const MLKEM: &[u8] = include_bytes!("../../tests/fixtures/tls/x25519mlkem768_synth.bin");

    /// Each fixture and the name it must yield.
    fn fixtures() -> [(&'static str, &'static [u8], ServerName); 6] {
        let host = |n: &str| ServerName::Host(n.to_string());
        [
            ("tls13_sni", TLS13_SNI, host("x.example.com")),
            ("tls12_sni", TLS12_SNI, host("x.example.com")),
            ("no_sni", NO_SNI, ServerName::Absent),
            ("mixed_case", MIXED_CASE, host("www.example.org")),
            ("ffdhe8192", FFDHE8192, host("big.example.net")),
            ("x25519mlkem768", MLKEM, host("x.example.com")),
        ]
    }

    fn hello(server_name: ServerName, hello_len: usize) -> Parsed<TlsFront> {
        Parsed::Done {
            value: TlsFront::Hello(ClientHello {
                legacy_version: 0x0303,
                server_name,
                hello_len,
            }),
            consumed: 0,
        }
    }

    fn not_tls() -> Parsed<TlsFront> {
        Parsed::Done {
            value: TlsFront::NotTls,
            consumed: 0,
        }
    }

    fn malformed(reason: &'static str) -> Parsed<TlsFront> {
        Parsed::Done {
            value: TlsFront::Malformed(reason),
            consumed: 0,
        }
    }

    /// The handshake message inside a single-record fixture.
    fn message_of(record: &[u8]) -> &[u8] {
        assert_eq!(record.get(..2), Some(&[22, 3][..]));
        &record[RECORD_HEADER..]
    }

    /// `message` framed as handshake records cut at the given offsets.
    fn frame(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([message.len()].iter()) {
            let fragment = &message[start..end];
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            out.extend_from_slice(fragment);
            start = end;
        }
        out
    }

    fn u16_vec(data: &[u8]) -> Vec<u8> {
        let mut v = (data.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }

    /// An extension: type, two-byte length, data.
    fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut v = kind.to_be_bytes().to_vec();
        v.extend(u16_vec(data));
        v
    }

    /// A server_name extension listing `(name_type, name)` entries.
    fn sni_ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend(u16_vec(name));
        }
        ext(EXT_SERVER_NAME, &u16_vec(&list))
    }

    /// A ClientHello body from its parts; `extensions` None leaves the block out.
    fn body(
        session_id: &[u8],
        suites: &[u8],
        compression: &[u8],
        extensions: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[7; 32]);
        b.push(session_id.len() as u8);
        b.extend_from_slice(session_id);
        b.extend(u16_vec(suites));
        b.push(compression.len() as u8);
        b.extend_from_slice(compression);
        if let Some(e) = extensions {
            b.extend(u16_vec(e));
        }
        b
    }

    /// A handshake message of type ClientHello around `body`.
    fn handshake(body: &[u8]) -> Vec<u8> {
        let mut m = vec![HANDSHAKE_CLIENT_HELLO];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        m.extend_from_slice(body);
        m
    }

    /// A plausible ClientHello message carrying `extensions`.
    fn message(extensions: &[u8]) -> Vec<u8> {
        handshake(&body(
            &[9; 32],
            &[0x13, 0x01, 0x13, 0x02],
            &[0],
            Some(extensions),
        ))
    }

    fn read(buf: &[u8]) -> Parsed<TlsFront> {
        read_client_hello(buf)
    }

    #[test]
    fn captured_hellos_yield_their_server_name() {
        for (what, bytes, name) in fixtures() {
            assert_eq!(read(bytes), hello(name, bytes.len()), "{what}");
        }
    }

    #[test]
    fn every_proper_prefix_of_a_captured_hello_is_incomplete() {
        for (what, bytes, _) in fixtures() {
            for cut in 0..bytes.len() {
                assert_eq!(
                    read(&bytes[..cut]),
                    Parsed::Incomplete,
                    "{what} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn bytes_after_the_hello_change_nothing() {
        for (what, bytes, name) in fixtures() {
            let mut more = bytes.to_vec();
            more.extend_from_slice(&[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
            assert_eq!(read(&more), hello(name, bytes.len()), "{what}");
        }
    }

    #[test]
    fn a_hello_split_into_two_records_at_every_byte() {
        for (what, bytes, name) in fixtures() {
            let message = message_of(bytes);
            for cut in 1..message.len() {
                let framed = frame(message, &[cut]);
                assert_eq!(
                    read(&framed),
                    hello(name.clone(), framed.len()),
                    "{what} record cut {cut}"
                );
            }
        }
    }

    #[test]
    fn every_prefix_of_every_two_record_split_is_incomplete() {
        let message = message_of(TLS13_SNI);
        for cut in 1..message.len() {
            let framed = frame(message, &[cut]);
            for end in 0..framed.len() {
                assert_eq!(
                    read(&framed[..end]),
                    Parsed::Incomplete,
                    "record cut {cut}, prefix {end}"
                );
            }
        }
    }

    #[test]
    fn three_records_fed_one_byte_at_a_time() {
        let message = message_of(MLKEM);
        let framed = frame(message, &[3, 700]);
        let mut received = Vec::new();
        for (i, &b) in framed.iter().enumerate() {
            assert_eq!(read(&received), Parsed::Incomplete, "after {i} bytes");
            received.push(b);
        }
        assert_eq!(
            read(&received),
            hello(ServerName::Host("x.example.com".into()), framed.len())
        );
    }

    #[test]
    fn one_byte_records() {
        for (what, bytes, name) in fixtures() {
            let message = message_of(bytes);
            let cuts: Vec<usize> = (1..message.len()).collect();
            let framed = frame(message, &cuts);
            assert_eq!(read(&framed), hello(name, framed.len()), "{what}");
        }
    }

    #[test]
    fn not_tls_is_decided_from_the_first_bytes() {
        let inputs: [&[u8]; 7] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 443\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c",
            // An SSLv2-format hello: no extensions, so no name either.
            b"\x80\x2e\x01\x03\x01\x00\x15",
            // A handshake record of version 2.x.
            b"\x16\x02\x00\x00\x05",
            // The first handshake message is a ServerHello.
            b"\x16\x03\x03\x00\x04\x02\x00\x00\x00",
        ];
        for input in inputs {
            assert_eq!(read(input), not_tls(), "{input:?}");
        }
        assert_eq!(read(b"G"), not_tls());
        assert_eq!(read(b"\x16\x04"), not_tls());
        assert_eq!(read(b"\x16\x03\x01\x00\x30\x02"), not_tls());
        for undecided in [
            &b""[..],
            b"\x16",
            b"\x16\x03",
            b"\x16\x03\x01\x00",
            b"\x16\x03\x01\x00\x30",
        ] {
            assert_eq!(read(undecided), Parsed::Incomplete, "{undecided:?}");
        }
    }

    #[test]
    fn broken_records_are_malformed() {
        let m = message(&sni_ext(&[(0, b"a.example")]));
        assert_eq!(
            read(b"\x16\x03\x01\x00\x00\x01"),
            malformed("an empty handshake record")
        );
        assert_eq!(
            read(b"\x16\x03\x01\x40\x01\x01"),
            malformed("a record longer than 2^14 bytes")
        );
        let mut alert_inside = frame(&m, &[10]);
        alert_inside[RECORD_HEADER + 10] = 21;
        assert_eq!(
            read(&alert_inside),
            malformed("a non-handshake record inside the ClientHello")
        );
        let mut bad_version = frame(&m, &[10]);
        bad_version[RECORD_HEADER + 11] = 2;
        assert_eq!(
            read(&bad_version),
            malformed("a record version that is not 3.x")
        );
    }

    #[test]
    fn broken_hello_fields_are_malformed() {
        let sni = sni_ext(&[(0, b"a.example")]);
        let suites = [0x13, 0x01];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                body(&[0; 33], &suites, &[0], Some(&sni)),
                "a session id longer than 32 bytes",
            ),
            (
                body(&[], &[0x13], &[0], Some(&sni)),
                "a cipher suite list that is empty or of odd length",
            ),
            (
                body(&[], &[], &[0], Some(&sni)),
                "a cipher suite list that is empty or of odd length",
            ),
            (
                body(&[], &suites, &[], Some(&sni)),
                "an empty compression method list",
            ),
            (
                [&body(&[], &suites, &[0], Some(&sni))[..], &[0]].concat(),
                "bytes after the ClientHello extensions",
            ),
            (
                [&body(&[], &suites, &[0], None)[..], &[0, 9, 1]].concat(),
                "truncated extensions",
            ),
            (
                body(&[], &suites, &[0], Some(&[&sni[..], &sni[..]].concat())),
                "two server_name extensions",
            ),
            (
                body(&[], &suites, &[0], Some(&[0, 0, 0, 5, 0, 2])),
                "truncated extension",
            ),
            (
                body(&[], &suites, &[0], Some(&[0, 0])),
                "truncated extension",
            ),
            (
                body(&[], &suites, &[0], Some(&ext(0, &[0, 3, 0, 0, 1, 7]))),
                "bytes after the server_name list",
            ),
            (
                body(&[], &suites, &[0], Some(&ext(0, &[0, 4, 0, 0, 9, b'a']))),
                "truncated server_name entry",
            ),
            (
                body(&[], &suites, &[0], Some(&ext(0, &[0]))),
                "truncated server_name list",
            ),
            (
                body(&[], &suites, &[0], Some(&ext(0, &[]))),
                "truncated server_name list",
            ),
            (vec![3, 3, 1], "truncated ClientHello random"),
            (vec![3], "truncated ClientHello version"),
            (
                [&[2, 0][..], &body(&[], &suites, &[0], None)[2..]].concat(),
                "a ClientHello version that is not 3.x",
            ),
        ];
        for (b, reason) in cases {
            let framed = frame(&handshake(&b), &[]);
            assert_eq!(read(&framed), malformed(reason), "{b:?}");
        }
    }

    #[test]
    fn a_hello_without_extensions_has_no_name() {
        let framed = frame(&handshake(&body(&[], &[0, 0x2f], &[0], None)), &[]);
        assert_eq!(read(&framed), hello(ServerName::Absent, framed.len()));
        let framed = frame(&message(&ext(21, &[0; 10])), &[]);
        assert_eq!(read(&framed), hello(ServerName::Absent, framed.len()));
    }

    #[test]
    fn names_we_will_not_route_on() {
        let cases: [(Vec<u8>, ServerName); 8] = [
            (
                sni_ext(&[(0, b"a.example\0.evil")]),
                ServerName::Unusable(
                    "the name has a byte other than a letter, digit, '-', '_' or '.'",
                ),
            ),
            (
                sni_ext(&[(0, b"a example")]),
                ServerName::Unusable(
                    "the name has a byte other than a letter, digit, '-', '_' or '.'",
                ),
            ),
            (
                sni_ext(&[(0, b"")]),
                ServerName::Unusable("the name is empty"),
            ),
            (
                sni_ext(&[(0, b"a..example")]),
                ServerName::Unusable(
                    "the name has an empty label (two dots in a row, or a leading dot)",
                ),
            ),
            (
                sni_ext(&[(0, b"a.example"), (0, b"b.example")]),
                ServerName::Unusable("several server_name entries"),
            ),
            (
                sni_ext(&[(1, b"a.example")]),
                ServerName::Unusable("a server_name entry that is not a host_name"),
            ),
            (
                sni_ext(&[]),
                ServerName::Unusable("an empty server_name list"),
            ),
            (
                sni_ext(&[(0, b"API.Example.ORG.")]),
                ServerName::Host("api.example.org".into()),
            ),
        ];
        for (extension, expected) in cases {
            let extensions = [ext(10, &[0, 2, 0, 0x1d]), extension, ext(43, &[2, 3, 4])].concat();
            let framed = frame(&message(&extensions), &[]);
            assert_eq!(
                read(&framed),
                hello(expected.clone(), framed.len()),
                "{expected:?}"
            );
        }
        assert_eq!(ServerName::Unusable("x").host(), None);
        assert_eq!(ServerName::Absent.host(), None);
        assert_eq!(ServerName::Host("a.b".into()).host(), Some("a.b"));
    }

    /// A ClientHello message of exactly `total` bytes (header included),
    /// padded with a padding extension.
    fn message_of_len(total: usize) -> Vec<u8> {
        let bare = message(&sni_ext(&[(0, b"big.example")])).len();
        let pad = total - bare - 4;
        let m = message(&[sni_ext(&[(0, b"big.example")]), ext(21, &vec![0; pad])].concat());
        assert_eq!(m.len(), total);
        m
    }

    #[test]
    fn the_limit_is_16_kib_of_input() {
        let name = || ServerName::Host("big.example".into());
        // The largest hello that fits: one record ending at exactly 16 KiB.
        let fits = frame(&message_of_len(MAX_INPUT - RECORD_HEADER), &[]);
        assert_eq!(fits.len(), MAX_INPUT);
        assert_eq!(read(&fits), hello(name(), MAX_INPUT));
        assert_eq!(read(&fits[..MAX_INPUT - 1]), Parsed::Incomplete);
        // One byte more is refused as soon as its length is read.
        let over = frame(&message_of_len(MAX_INPUT - RECORD_HEADER + 1), &[100]);
        assert_eq!(
            read(&over[..RECORD_HEADER + HANDSHAKE_HEADER]),
            Parsed::Invalid(TOO_LARGE)
        );
        assert_eq!(
            read(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff"),
            Parsed::Invalid(TOO_LARGE)
        );
        // A small hello in tiny records that run past the limit.
        let message = message_of_len(3000);
        let cuts: Vec<usize> = (1..message.len()).collect();
        let tiny = frame(&message, &cuts);
        assert!(tiny.len() > MAX_INPUT);
        assert_eq!(read(&tiny[..MAX_INPUT - 1]), Parsed::Incomplete);
        assert_eq!(read(&tiny[..MAX_INPUT]), Parsed::Invalid(TOO_LARGE));
        assert_eq!(read(&tiny), Parsed::Invalid(TOO_LARGE));
        // A hello early in a long input is found; the rest is stream.
        let mut long = TLS13_SNI.to_vec();
        long.resize(MAX_INPUT * 2, 0xaa);
        assert_eq!(
            read(&long),
            hello(ServerName::Host("x.example.com".into()), TLS13_SNI.len())
        );
    }

    /// A random valid host name of 1..=4 labels in random case.
    fn random_name(rng: &mut Rng) -> String {
        const INNER: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
        let labels = 1 + rng.below(4);
        let mut name = String::new();
        for i in 0..labels {
            if i > 0 {
                name.push('.');
            }
            let len = 1 + rng.below(20) as usize;
            for j in 0..len {
                let edge = j == 0 || j + 1 == len;
                let set = if edge { &INNER[..62] } else { INNER };
                name.push(char::from(set[rng.below(set.len() as u64) as usize]));
            }
        }
        name
    }

    #[test]
    fn random_names_random_records_random_segments() {
        let mut rng = Rng::new(0x5e1);
        for round in 0..400 {
            let name = random_name(&mut rng);
            let padding = ext(21, &vec![0; rng.below(3000) as usize]);
            let grease = ext(0x0a0a, &[]);
            let extensions = match rng.below(3) {
                0 => [sni_ext(&[(0, name.as_bytes())]), padding].concat(),
                1 => [padding, grease, sni_ext(&[(0, name.as_bytes())])].concat(),
                _ => [grease, sni_ext(&[(0, name.as_bytes())]), padding].concat(),
            };
            let message = message(&extensions);
            let mut cuts: Vec<usize> = (0..rng.below(4))
                .map(|_| 1 + rng.below(message.len() as u64 - 1) as usize)
                .collect();
            cuts.sort_unstable();
            cuts.dedup();
            let framed = frame(&message, &cuts);
            let want = hello(ServerName::Host(name.to_ascii_lowercase()), framed.len());
            // Segments of random size, each read the way the front does.
            let mut end = 0;
            while end < framed.len() {
                assert_eq!(
                    read(&framed[..end]),
                    Parsed::Incomplete,
                    "round {round} {name} cuts {cuts:?} at {end}"
                );
                end = (end + 1 + rng.below(400) as usize).min(framed.len());
            }
            assert_eq!(read(&framed), want, "round {round} {name} cuts {cuts:?}");
        }
    }
}
