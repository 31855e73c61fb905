//! One access-log line: the record a shard fills when a connection closes or a
//! UDP session ends, and the two formats it is written in. The formatters are
//! pure and append to a caller's `String`, so a shard formats into its batch
//! without allocating per line.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

use super::time::{push_digits, push_rfc3339_ms};

/// What was forwarded: TCP, or UDP with its datagram counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp {
        datagrams_c2u: u64,
        datagrams_u2c: u64,
    },
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp { .. } => "udp",
        }
    }

    fn datagrams(self) -> Option<(u64, u64)> {
        match self {
            Proto::Tcp => None,
            Proto::Udp {
                datagrams_c2u,
                datagrams_u2c,
            } => Some((datagrams_c2u, datagrams_u2c)),
        }
    }
}

/// Everything one line says about a finished connection or session. Plain
/// data borrowed from the shard's own state for the length of one `log` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRecord<'a> {
    /// When it ended.
    pub time: SystemTime,
    pub listener: &'a str,
    pub proto: Proto,
    /// The client: from a trusted PROXY header when there was one, else `peer`.
    pub client: SocketAddr,
    /// The socket's real peer. Written only when it differs from `client`.
    pub peer: SocketAddr,
    /// The listener's local address the client reached.
    pub local: SocketAddr,
    /// The upstream it was forwarded to; `None` when none was reached.
    pub upstream: Option<SocketAddr>,
    /// The TLS server name the client asked for, if the listener read one.
    pub sni: Option<&'a str>,
    /// Time to connect to the upstream; `None` when no connect completed.
    pub connect_ms: Option<u64>,
    pub duration_ms: u64,
    pub bytes_c2u: u64,
    pub bytes_u2c: u64,
    /// The close reason, as named in the counters (`close_<reason>`,
    /// `udp_end_<reason>`): `CloseReason::name()`, `SessionEnd::name()`.
    pub reason: &'a str,
    /// Where a SOCKS5 or HTTP CONNECT client asked to go (a name or an
    /// address, with its port), or a transparent client dialled.
    pub destination: Option<&'a str>,
    /// The user a forward proxy's client authenticated as.
    pub user: Option<&'a str>,
}

impl AccessRecord<'_> {
    /// The real peer when a PROXY header named someone else.
    fn distinct_peer(&self) -> Option<SocketAddr> {
        (self.peer != self.client).then_some(self.peer)
    }
}

/// The line format, `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Format {
    #[default]
    Text,
    Json,
}

impl Format {
    /// Appends one line (with its `\n`) in this format.
    pub(crate) fn append(self, rec: &AccessRecord, out: &mut String) {
        match self {
            Format::Text => format_text(rec, out),
            Format::Json => format_json(rec, out),
        }
    }
}

/// Appends `rec` as one JSON object and a newline. Every key is on every line,
/// in a fixed order; a value that does not apply is `null` (`peer` when it is
/// the client, `upstream`, `sni`, `connect_ms`, and the datagram counts of a
/// TCP line).
pub(super) fn format_json(rec: &AccessRecord, out: &mut String) {
    out.push_str("{\"time\":\"");
    push_rfc3339_ms(rec.time, out);
    out.push_str("\",\"listener\":");
    push_json_str(rec.listener, out);
    out.push_str(",\"proto\":\"");
    out.push_str(rec.proto.name());
    out.push_str("\",\"client\":");
    push_json_addr(Some(rec.client), out);
    out.push_str(",\"peer\":");
    push_json_addr(rec.distinct_peer(), out);
    out.push_str(",\"local\":");
    push_json_addr(Some(rec.local), out);
    out.push_str(",\"upstream\":");
    push_json_addr(rec.upstream, out);
    out.push_str(",\"sni\":");
    match rec.sni {
        Some(sni) => push_json_str(sni, out),
        None => out.push_str("null"),
    }
    out.push_str(",\"connect_ms\":");
    push_json_num(rec.connect_ms, out);
    out.push_str(",\"duration_ms\":");
    push_json_num(Some(rec.duration_ms), out);
    out.push_str(",\"bytes_c2u\":");
    push_json_num(Some(rec.bytes_c2u), out);
    out.push_str(",\"bytes_u2c\":");
    push_json_num(Some(rec.bytes_u2c), out);
    let datagrams = rec.proto.datagrams();
    out.push_str(",\"datagrams_c2u\":");
    push_json_num(datagrams.map(|d| d.0), out);
    out.push_str(",\"datagrams_u2c\":");
    push_json_num(datagrams.map(|d| d.1), out);
    out.push_str(",\"reason\":");
    push_json_str(rec.reason, out);
    for (key, value) in [("destination", rec.destination), ("user", rec.user)] {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        match value {
            Some(v) => push_json_str(v, out),
            None => out.push_str("null"),
        }
    }
    out.push_str("}\n");
}

fn push_json_addr(addr: Option<SocketAddr>, out: &mut String) {
    match addr {
        // A socket address's Display has no character JSON must escape
        // (digits, hex, '.', ':', '[', ']', '%' and a numeric scope id).
        Some(a) => {
            out.push('"');
            push_addr(a, out);
            out.push('"');
        }
        None => out.push_str("null"),
    }
}

fn push_json_num(n: Option<u64>, out: &mut String) {
    match n {
        Some(n) => push_digits(out, n, 1),
        None => out.push_str("null"),
    }
}

/// Appends `s` as a JSON string: `"` and `\` escaped, control characters as
/// `\n`, `\r`, `\t` or `\u00XX`; everything else (valid UTF-8) as it is. Runs
/// with nothing to escape are appended in one copy.
fn push_json_str(s: &str, out: &mut String) {
    out.push('"');
    let mut clean = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..0x20 => None,
            _ => continue,
        };
        // Every byte escaped is ASCII, so these are char boundaries.
        out.push_str(s.get(clean..i).unwrap_or_default());
        match escaped {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        clean = i + 1;
    }
    out.push_str(s.get(clean..).unwrap_or_default());
    out.push('"');
}

/// Appends `rec` as one text line, space-separated, `-` for a value that does
/// not apply, in this order (documented in README.md, "Access log"):
///
/// `time listener proto client peer local upstream sni connect_ms duration_ms
/// bytes_c2u bytes_u2c datagrams_c2u datagrams_u2c reason destination user`
///
/// The strings (listener, sni, reason) are written by `push_text_str`'s rule.
pub(super) fn format_text(rec: &AccessRecord, out: &mut String) {
    push_rfc3339_ms(rec.time, out);
    out.push(' ');
    push_text_str(rec.listener, out);
    out.push(' ');
    out.push_str(rec.proto.name());
    out.push(' ');
    push_text_addr(Some(rec.client), out);
    out.push(' ');
    push_text_addr(rec.distinct_peer(), out);
    out.push(' ');
    push_text_addr(Some(rec.local), out);
    out.push(' ');
    push_text_addr(rec.upstream, out);
    out.push(' ');
    match rec.sni {
        Some(sni) => push_text_str(sni, out),
        None => out.push('-'),
    }
    let datagrams = rec.proto.datagrams();
    for n in [
        rec.connect_ms,
        Some(rec.duration_ms),
        Some(rec.bytes_c2u),
        Some(rec.bytes_u2c),
        datagrams.map(|d| d.0),
        datagrams.map(|d| d.1),
    ] {
        out.push(' ');
        match n {
            Some(n) => push_digits(out, n, 1),
            None => out.push('-'),
        }
    }
    out.push(' ');
    push_text_str(rec.reason, out);
    for value in [rec.destination, rec.user] {
        out.push(' ');
        match value {
            Some(v) => push_text_str(v, out),
            None => out.push('-'),
        }
    }
    out.push('\n');
}

fn push_text_addr(addr: Option<SocketAddr>, out: &mut String) {
    match addr {
        // No space or quote in a socket address's Display.
        Some(a) => push_addr(a, out),
        None => out.push('-'),
    }
}

/// Appends `a` as its Display writes it (`1.2.3.4:80`, `[::1]:80`), IPv4 by
/// hand: the formatting machinery costs more than the rest of a line.
fn push_addr(a: SocketAddr, out: &mut String) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_digits(out, u64::from(octet), 1);
            }
            out.push(':');
            push_digits(out, u64::from(v4.port()), 1);
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// A byte that may stand bare in a text field: printable ASCII other than
/// space, `"` and `\`.
fn is_bare(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\'
}

/// Appends a string field of the text format. Written bare when it is
/// non-empty, is not `-`, and every byte is printable ASCII other than space,
/// `"` and `\`. Otherwise it is written in double quotes, with `"` as `\"`, `\`
/// as `\\`, and every byte outside printable ASCII (controls, DEL, each byte of
/// a non-ASCII character) as `\xHH`; a space stays a space inside the quotes.
/// So a line always splits on spaces outside quotes into the same 15 fields,
/// and holds only printable ASCII whatever a client put in its SNI.
pub(super) fn push_text_str(s: &str, out: &mut String) {
    if !s.is_empty() && s != "-" && s.bytes().all(is_bare) {
        out.push_str(s);
        return;
    }
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// 2026-12-06T12:34:56.789Z
    fn when() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_796_560_496_789)
    }

    fn full_tcp() -> AccessRecord<'static> {
        AccessRecord {
            time: when(),
            listener: "web",
            proto: Proto::Tcp,
            client: addr("203.0.113.7:40000"),
            peer: addr("10.0.0.9:51000"),
            local: addr("10.0.0.1:443"),
            upstream: Some(addr("10.0.1.2:8443")),
            sni: Some("example.com"),
            connect_ms: Some(3),
            duration_ms: 1520,
            bytes_c2u: 512,
            bytes_u2c: 4096,
            reason: "client_eof",
            destination: Some("example.org:443"),
            user: Some("alice"),
        }
    }

    fn minimal_udp() -> AccessRecord<'static> {
        AccessRecord {
            time: when(),
            listener: "dns",
            proto: Proto::Udp {
                datagrams_c2u: 2,
                datagrams_u2c: 0,
            },
            client: addr("[::1]:5353"),
            peer: addr("[::1]:5353"),
            local: addr("[2001:db8::1]:53"),
            upstream: None,
            sni: None,
            connect_ms: None,
            duration_ms: 30_000,
            bytes_c2u: 80,
            bytes_u2c: 0,
            reason: "idle",
            destination: None,
            user: None,
        }
    }

    fn json(rec: &AccessRecord) -> serde_json::Value {
        let mut s = String::new();
        format_json(rec, &mut s);
        assert!(s.ends_with('\n') && s.matches('\n').count() == 1, "{s:?}");
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("invalid JSON {s:?}: {e}"))
    }

    fn text(rec: &AccessRecord) -> String {
        let mut s = String::new();
        format_text(rec, &mut s);
        assert!(s.ends_with('\n') && s.matches('\n').count() == 1, "{s:?}");
        s
    }

    #[test]
    fn json_every_field() {
        let v = json(&full_tcp());
        let want = serde_json::json!({
            "time": "2026-12-06T12:34:56.789Z",
            "listener": "web",
            "proto": "tcp",
            "client": "203.0.113.7:40000",
            "peer": "10.0.0.9:51000",
            "local": "10.0.0.1:443",
            "upstream": "10.0.1.2:8443",
            "sni": "example.com",
            "connect_ms": 3,
            "duration_ms": 1520,
            "bytes_c2u": 512,
            "bytes_u2c": 4096,
            "datagrams_c2u": null,
            "datagrams_u2c": null,
            "reason": "client_eof",
            "destination": "example.org:443",
            "user": "alice",
        });
        assert_eq!(v, want);
    }

    #[test]
    fn json_nulls_and_ipv6() {
        let v = json(&minimal_udp());
        let want = serde_json::json!({
            "time": "2026-12-06T12:34:56.789Z",
            "listener": "dns",
            "proto": "udp",
            "client": "[::1]:5353",
            "peer": null,
            "local": "[2001:db8::1]:53",
            "upstream": null,
            "sni": null,
            "connect_ms": null,
            "duration_ms": 30000,
            "bytes_c2u": 80,
            "bytes_u2c": 0,
            "datagrams_c2u": 2,
            "datagrams_u2c": 0,
            "reason": "idle",
            "destination": null,
            "user": null,
        });
        assert_eq!(v, want);
    }

    #[test]
    fn json_key_order_is_fixed() {
        let mut s = String::new();
        format_json(&full_tcp(), &mut s);
        let keys = [
            "time",
            "listener",
            "proto",
            "client",
            "peer",
            "local",
            "upstream",
            "sni",
            "connect_ms",
            "duration_ms",
            "bytes_c2u",
            "bytes_u2c",
            "datagrams_c2u",
            "datagrams_u2c",
            "reason",
            "destination",
            "user",
        ];
        let at: Vec<usize> = keys
            .iter()
            .map(|k| s.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{s}");
    }

    #[test]
    fn json_escapes_listener_and_sni() {
        let listener = "we\"b\\1\n\t\u{1}é";
        let sni = "a\"b\u{7f}\r";
        let rec = AccessRecord {
            listener,
            sni: Some(sni),
            ..full_tcp()
        };
        let mut s = String::new();
        format_json(&rec, &mut s);
        assert!(s.contains(r#""listener":"we\"b\\1\n\t\u0001é""#), "{s}");
        let v = json(&rec);
        assert_eq!(v["listener"], listener);
        assert_eq!(v["sni"], sni);
    }

    #[test]
    fn text_field_order() {
        assert_eq!(
            text(&full_tcp()),
            "2026-12-06T12:34:56.789Z web tcp 203.0.113.7:40000 10.0.0.9:51000 \
             10.0.0.1:443 10.0.1.2:8443 example.com 3 1520 512 4096 - - client_eof example.org:443 alice\n"
        );
        assert_eq!(
            text(&minimal_udp()),
            "2026-12-06T12:34:56.789Z dns udp [::1]:5353 - [2001:db8::1]:53 - - - \
             30000 80 0 2 0 idle - -\n"
        );
    }

    #[test]
    fn text_escapes_listener_and_sni() {
        let rec = AccessRecord {
            listener: "my \"edge\" \\ 1",
            sni: Some("évil\n host"),
            ..full_tcp()
        };
        let line = text(&rec);
        assert!(
            line.contains(r#" "my \"edge\" \\ 1" tcp "#),
            "listener quoted: {line}"
        );
        assert!(
            line.contains(r#" "\xC3\xA9vil\x0A host" 3 "#),
            "sni: {line}"
        );
        assert!(
            line.bytes()
                .all(|b| b == b'\n' || (0x20..0x7f).contains(&b))
        );
    }

    #[test]
    fn text_quotes_what_would_read_as_absent_or_vanish() {
        let mut s = String::new();
        push_text_str("-", &mut s);
        s.push(' ');
        push_text_str("", &mut s);
        s.push(' ');
        push_text_str("plain.name:1[x]", &mut s);
        assert_eq!(s, r#""-" "" plain.name:1[x]"#);
    }

    #[test]
    fn text_splits_into_seventeen_fields() {
        // An escaped value with spaces is one field once quotes are honoured.
        let rec = AccessRecord {
            sni: Some("a b c"),
            ..full_tcp()
        };
        let line = text(&rec);
        let mut fields = 0;
        let mut in_quotes = false;
        let mut prev = b' ';
        let mut escaped = false;
        for &b in line.trim_end().as_bytes() {
            if b != b' ' && prev == b' ' && !in_quotes {
                fields += 1;
            }
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = !in_quotes;
            }
            prev = b;
        }
        assert_eq!(fields, 17, "{line}");
    }

    #[test]
    fn peer_shown_only_when_it_differs() {
        let same = AccessRecord {
            peer: full_tcp().client,
            ..full_tcp()
        };
        assert!(json(&same)["peer"].is_null());
        assert!(text(&same).contains(" 203.0.113.7:40000 - 10.0.0.1:443 "));
    }

    #[test]
    fn addresses_as_display_writes_them() {
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.0.1:80",
            "1.20.255.9:443",
            "[::1]:80",
            "[fe80::1%3]:8080",
            "[::ffff:10.0.0.1]:53",
        ] {
            let a = addr(a);
            let mut s = String::new();
            push_addr(a, &mut s);
            assert_eq!(s, a.to_string());
        }
    }

    #[test]
    fn formats_append() {
        let mut s = String::from("x");
        format_json(&full_tcp(), &mut s);
        format_text(&full_tcp(), &mut s);
        assert!(s.starts_with("x{\"time\""));
        assert_eq!(s.lines().count(), 2);
    }
}
