use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;
use crate::verify::Rng;

const SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// What a client sends after the header: never consumed.
const STREAM: &[u8] = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn proxied(version: Version, transport: Transport, src: &str, dst: &str) -> ProxyHeader {
    ProxyHeader {
        version,
        command: Command::Proxy {
            transport,
            addrs: Some(Endpoints {
                src: sa(src),
                dst: sa(dst),
            }),
        },
    }
}

fn no_addrs(version: Version, transport: Transport) -> ProxyHeader {
    ProxyHeader {
        version,
        command: Command::Proxy {
            transport,
            addrs: None,
        },
    }
}

const LOCAL: ProxyHeader = ProxyHeader {
    version: Version::V2,
    command: Command::Local,
};

fn done(value: ProxyHeader, consumed: usize) -> Parsed<ProxyHeader> {
    Parsed::Done { value, consumed }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
    let len = u16::try_from(block.len()).unwrap().to_be_bytes();
    cat(&[SIG, &[ver_cmd, fam], &len, block])
}

/// A valid header at every split point: each proper prefix is Incomplete
/// (never Invalid), the whole is Done with its exact length, bytes after it
/// (the stream, or a second header) are not consumed; then fed one byte at a
/// time as the front will.
fn check_valid(header: &[u8], want: ProxyHeader) {
    for k in 0..header.len() {
        assert_eq!(
            parse(&header[..k]),
            Parsed::Incomplete,
            "prefix of {k} bytes of {header:?}"
        );
    }
    let whole = done(want, header.len());
    assert_eq!(parse(header), whole, "{header:?}");
    assert_eq!(parse(&cat(&[header, STREAM])), whole, "{header:?} + stream");
    assert_eq!(parse(&cat(&[header, header])), whole, "{header:?} twice");
    let mut window = Vec::new();
    for (i, &b) in header.iter().enumerate() {
        window.push(b);
        let got = parse(&window);
        if i + 1 < header.len() {
            assert_eq!(got, Parsed::Incomplete, "byte by byte, {} bytes", i + 1);
        } else {
            assert_eq!(got, whole, "byte by byte, complete");
        }
    }
}

fn check_invalid(input: &[u8]) {
    assert!(
        matches!(parse(input), Parsed::Invalid(_)),
        "{input:?} gave {:?}",
        parse(input)
    );
    // Invalid stays invalid whatever follows.
    assert!(
        matches!(parse(&cat(&[input, STREAM])), Parsed::Invalid(_)),
        "{input:?} + stream"
    );
}

/// Invalid exactly when the last byte of `input` arrives: its proper
/// prefixes are Incomplete.
fn check_invalid_at_last_byte(input: &[u8]) {
    for k in 0..input.len() {
        assert_eq!(
            parse(&input[..k]),
            Parsed::Incomplete,
            "prefix {k} of {input:?}"
        );
    }
    check_invalid(input);
}

// ---- v1: valid ----

#[test]
fn v1_spec_examples() {
    let v = Version::V1;
    let s = Transport::Stream;
    check_valid(
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        proxied(v, s, "192.168.0.1:56324", "192.168.0.11:443"),
    );
    check_valid(
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        proxied(v, s, "255.255.255.255:65535", "255.255.255.255:65535"),
    );
    check_valid(
        b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
        proxied(v, s, "0.0.0.0:0", "0.0.0.0:0"),
    );
    let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
    assert_eq!(line.len(), 104, "the spec's longest TCP6 line");
    let full = format!("[{f}]:65535");
    check_valid(line.as_bytes(), proxied(v, s, &full, &full));
    check_valid(b"PROXY UNKNOWN\r\n", no_addrs(v, Transport::Unspecified));
    let worst = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
    assert_eq!(worst.len(), 107, "the spec's worst case");
    check_valid(worst.as_bytes(), no_addrs(v, Transport::Unspecified));
}

#[test]
fn v1_ipv6_forms() {
    let ok = |text: &str, addr: &str| {
        let line = format!("PROXY TCP6 {text} ::1 1 2\r\n");
        let want = proxied(
            Version::V1,
            Transport::Stream,
            &format!("[{addr}]:1"),
            "[::1]:2",
        );
        check_valid(line.as_bytes(), want);
    };
    ok("::", "::");
    ok("2001:DB8::a", "2001:db8::a");
    ok("0001:0000:0000:0000:0000:0000:0000:0001", "1::1");
    ok("::ffff:192.168.0.1", "::ffff:192.168.0.1");
    ok("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8");
    for bad in [
        "12345::1",
        "1::2::3",
        "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7",
        "::ffff:01.2.3.4",
        "::ffff:1.2.3",
        ":::1",
        "fe80::1%1",
        "g::1",
    ] {
        check_invalid(format!("PROXY TCP6 {bad} ::1 1 2\r\n").as_bytes());
    }
}

#[test]
fn v1_unknown_ignores_the_rest_of_the_line() {
    let want = no_addrs(Version::V1, Transport::Unspecified);
    check_valid(b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 80 443\r\n", want);
    check_valid(b"PROXY UNKNOWN anything at all, even\tthis\r\n", want);
    check_valid(b"PROXY UNKNOWN \r\n", want);
}

// ---- v1: invalid ----

#[test]
fn v1_leading_zeros_rejected() {
    check_invalid(b"PROXY TCP4 01.2.3.4 5.6.7.8 80 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.010 80 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 0443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 00 443\r\n");
    check_invalid(b"PROXY TCP6 ::1 ::1 080 443\r\n");
}

#[test]
fn v1_numbers_out_of_range_or_malformed() {
    check_invalid(b"PROXY TCP4 256.2.3.4 5.6.7.8 80 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3 5.6.7.8 80 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4.5 5.6.7.8 80 443\r\n");
    check_invalid(b"PROXY TCP4 1..3.4 5.6.7.8 80 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4. 5.6.7.8 80 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 99999\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 123456\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 0x50 443\r\n");
}

#[test]
fn v1_family_must_match_protocol() {
    check_invalid(b"PROXY TCP4 ::1 ::1 80 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 ::1 80 443\r\n");
    check_invalid(b"PROXY TCP6 1.2.3.4 5.6.7.8 80 443\r\n");
    check_invalid(b"PROXY TCP6 ::1 5.6.7.8 80 443\r\n");
}

#[test]
fn v1_exactly_single_spaces() {
    check_invalid(b"PROXY  TCP4 1.2.3.4 5.6.7.8 80 443\r\n");
    check_invalid(b"PROXY TCP4  1.2.3.4 5.6.7.8 80 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4  5.6.7.8 80 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8  80 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 80  443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 \r\n");
    check_invalid(b"PROXY TCP4\t1.2.3.4 5.6.7.8 80 443\r\n");
    check_invalid(b"PROXY UNKNOWN\t\r\n");
    check_invalid(b"PROXYTCP4 1.2.3.4 5.6.7.8 80 443\r\n");
}

#[test]
fn v1_missing_fields() {
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4\r\n");
    check_invalid(b"PROXY TCP4\r\n");
    check_invalid(b"PROXY \r\n");
}

#[test]
fn v1_lone_cr_or_lf_rejected() {
    check_invalid_at_last_byte(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n");
    check_invalid_at_last_byte(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\rX");
    check_invalid_at_last_byte(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r\r");
    check_invalid_at_last_byte(b"PROXY TCP4 1.2.3.4\n");
    check_invalid_at_last_byte(b"PROXY TCP6 ::1\r");
    check_invalid_at_last_byte(b"PROXY UNKNOWN\n");
    check_invalid_at_last_byte(b"PROXY UNKNOWN\rX");
    check_invalid_at_last_byte(b"PROXY UNKNOWN a\n");
    check_invalid_at_last_byte(b"PROXY UNKNOWN a\rb");
}

#[test]
fn v1_unknown_protocol_words() {
    check_invalid_at_last_byte(b"PROXY TCP5");
    check_invalid_at_last_byte(b"PROXY X");
    check_invalid_at_last_byte(b"PROXY UD");
    check_invalid_at_last_byte(b"PROXY t");
    check_invalid_at_last_byte(b"PROXY UNKNOWNX");
    check_invalid_at_last_byte(b"PROXY TCP4\r");
}

#[test]
fn v1_line_bound_is_107_bytes() {
    // The worst case plus one: 108 bytes with the CRLF at its end.
    let too_long = cat(&[b"PROXY UNKNOWN ", &[b'a'; 92], b"\r\n"]);
    assert_eq!(too_long.len(), 108);
    check_invalid(&too_long);
    let longest = cat(&[b"PROXY UNKNOWN ", &[b'a'; 91], b"\r\n"]);
    check_valid(&longest, no_addrs(Version::V1, Transport::Unspecified));
    // 107 bytes and no CRLF: invalid without waiting for more; 106: not yet.
    let no_end = cat(&[b"PROXY UNKNOWN ", &[b'a'; 93]]);
    assert_eq!(no_end.len(), 107);
    check_invalid_at_last_byte(&no_end);
    // Fields each valid, the line too long: two 45-character IPv6 forms.
    let a = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
    let line = format!("PROXY TCP6 {a} {a} 65535 65535\r\n");
    assert_eq!(line.len(), 116);
    check_invalid(line.as_bytes());
    check_valid(
        format!("PROXY TCP6 {a} ::1 1 2\r\n").as_bytes(),
        proxied(
            Version::V1,
            Transport::Stream,
            &format!("[{a}]:1"),
            "[::1]:2",
        ),
    );
}

// ---- detection: never guess ----

#[test]
fn neither_signature_is_invalid_at_the_first_byte() {
    for first in [b'G', b'p', b'\n', 0x16, 0x00, b' '] {
        check_invalid(&[first]);
    }
    check_invalid(b"GET / HTTP/1.1\r\n\r\n");
    check_invalid(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    assert_eq!(parse(b""), Parsed::Incomplete);
}

#[test]
fn a_diverging_prefix_is_invalid_at_the_diverging_byte() {
    check_invalid_at_last_byte(b"PROXZ");
    check_invalid_at_last_byte(b"PO");
    check_invalid_at_last_byte(b"PROXY\r");
    check_invalid_at_last_byte(b"\r\n\r\n\0\r\nQUIT\r");
    check_invalid_at_last_byte(b"\r\n\r\n\x01");
    check_invalid_at_last_byte(b"\r\r");
}

// ---- v2: valid ----

#[test]
fn v2_inet_headers() {
    let ip4 = [192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb];
    let (a, b) = ("192.168.0.1:56324", "192.168.0.11:443");
    check_valid(
        &v2(0x21, 0x11, &ip4),
        proxied(Version::V2, Transport::Stream, a, b),
    );
    check_valid(
        &v2(0x21, 0x12, &ip4),
        proxied(Version::V2, Transport::Datagram, a, b),
    );
    let mut ip6 = [0u8; 36];
    ip6[..16].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    ip6[16..32].copy_from_slice(&"::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
    ip6[32..].copy_from_slice(&[0, 1, 0xff, 0xff]);
    let (a, b) = ("[2001:db8::1]:1", "[::ffff:10.0.0.1]:65535");
    check_valid(
        &v2(0x21, 0x21, &ip6),
        proxied(Version::V2, Transport::Stream, a, b),
    );
    check_valid(
        &v2(0x21, 0x22, &ip6),
        proxied(Version::V2, Transport::Datagram, a, b),
    );
}

#[test]
fn v2_local_ignores_family_and_block() {
    check_valid(&v2(0x20, 0x00, &[]), LOCAL);
    // LOCAL with addresses and TLVs: consumed whole, addresses not used.
    let ip4 = [1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 1, 187];
    check_valid(&v2(0x20, 0x11, &cat(&[&ip4, &[0x04, 0, 1, 0]])), LOCAL);
    // The family is ignored, even one PROXY may not carry; and the block is
    // not read, so any bytes go.
    check_valid(&v2(0x20, 0x11, &[]), LOCAL);
    check_valid(&v2(0x20, 0xff, &[0xee; 7]), LOCAL);
}

#[test]
fn v2_proxy_without_usable_addresses() {
    // AF_UNSPEC or protocol UNSPEC: block skipped unread.
    check_valid(
        &v2(0x21, 0x00, &[]),
        no_addrs(Version::V2, Transport::Unspecified),
    );
    check_valid(
        &v2(0x21, 0x00, &[0xee; 5]),
        no_addrs(Version::V2, Transport::Unspecified),
    );
    check_valid(
        &v2(0x21, 0x10, &[]),
        no_addrs(Version::V2, Transport::Unspecified),
    );
    check_valid(
        &v2(0x21, 0x01, &[1, 2]),
        no_addrs(Version::V2, Transport::Unspecified),
    );
    // AF_UNIX: 216 bytes of paths, treated as no address.
    let mut unix = vec![0u8; 216];
    unix[..9].copy_from_slice(b"/run/a.sk");
    check_valid(
        &v2(0x21, 0x31, &unix),
        no_addrs(Version::V2, Transport::Stream),
    );
    check_valid(
        &v2(0x21, 0x32, &unix),
        no_addrs(Version::V2, Transport::Datagram),
    );
}

#[test]
fn v2_tlvs_are_skipped_known_or_not() {
    let ip4 = [10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x00, 0x50];
    let tlvs = cat(&[
        &[0x02, 0, 11],
        b"example.com",
        &[0x04, 0, 0],
        &[0xe0, 0, 3, 1, 2, 3],
        &[0x03, 0, 4, 0xde, 0xad, 0xbe, 0xef],
    ]);
    let want = proxied(
        Version::V2,
        Transport::Stream,
        "10.0.0.1:12345",
        "10.0.0.2:80",
    );
    check_valid(&v2(0x21, 0x11, &cat(&[&ip4, &tlvs])), want);
}

#[test]
fn v2_size_bound() {
    let ip4 = [10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
    // Exactly V2_MAX_HEADER: 16 + 12 + one NOOP TLV filling the rest.
    let fill = V2_MAX_HEADER - 16 - 12 - 3;
    let noop = cat(&[
        &[0x04],
        &u16::try_from(fill).unwrap().to_be_bytes(),
        &vec![0; fill],
    ]);
    let at_bound = v2(0x21, 0x11, &cat(&[&ip4, &noop]));
    assert_eq!(at_bound.len(), V2_MAX_HEADER);
    let want = proxied(Version::V2, Transport::Stream, "10.0.0.1:1", "10.0.0.2:2");
    assert_eq!(parse(&at_bound), done(want, V2_MAX_HEADER));
    assert_eq!(parse(&at_bound[..V2_MAX_HEADER - 1]), Parsed::Incomplete);
    // One more byte announced: invalid as soon as the length field is in.
    let over = (V2_MAX_HEADER - 16 + 1) as u16;
    check_invalid_at_last_byte(&cat(&[SIG, &[0x21, 0x11], &over.to_be_bytes()]));
    check_invalid_at_last_byte(&cat(&[SIG, &[0x20, 0x00, 0xff, 0xff]]));
}

// ---- v2: invalid ----

#[test]
fn v2_version_must_be_2() {
    for ver_cmd in [0x01, 0x11, 0x31, 0xf1, 0x10] {
        check_invalid_at_last_byte(&cat(&[SIG, &[ver_cmd]]));
    }
}

#[test]
fn v2_command_must_be_local_or_proxy() {
    for ver_cmd in [0x22, 0x2f] {
        check_invalid_at_last_byte(&cat(&[SIG, &[ver_cmd]]));
    }
}

#[test]
fn v2_family_and_protocol_checked_for_proxy() {
    for fam in [0x41, 0xf1, 0x13, 0x1f, 0x03] {
        check_invalid_at_last_byte(&cat(&[SIG, &[0x21, fam]]));
    }
}

#[test]
fn v2_block_shorter_than_the_family_needs() {
    // Invalid when the length arrives, before the block does.
    for (fam, need) in [
        (0x11u8, 12u16),
        (0x12, 12),
        (0x21, 36),
        (0x22, 36),
        (0x31, 216),
    ] {
        let short = need - 1;
        check_invalid_at_last_byte(&cat(&[SIG, &[0x21, fam], &short.to_be_bytes()]));
    }
    check_invalid(&v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0]));
    check_invalid(&v2(0x21, 0x21, &[0; 35]));
}

#[test]
fn v2_tlv_overrunning_the_header() {
    let ip4 = [10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
    check_invalid(&v2(0x21, 0x11, &cat(&[&ip4, &[0x04]])));
    check_invalid(&v2(0x21, 0x11, &cat(&[&ip4, &[0x04, 0]])));
    check_invalid(&v2(0x21, 0x11, &cat(&[&ip4, &[0x04, 0, 2, 0]])));
    check_invalid(&v2(
        0x21,
        0x11,
        &cat(&[&ip4, &[0x04, 0, 0, 0x04, 0, 5, 1, 2]]),
    ));
}

// ---- real bytes HAProxy sends (src/connection.c make_proxy_line_v1/v2) ----

#[test]
fn haproxy_bytes() {
    // `send-proxy` for 192.168.0.1:56324 -> 192.168.0.11:443, then the request.
    let v1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
    let want = proxied(
        Version::V1,
        Transport::Stream,
        "192.168.0.1:56324",
        "192.168.0.11:443",
    );
    assert_eq!(parse(v1), done(want, 47));
    // A mixed pair: HAProxy maps the IPv4 side (v4tov6) and says TCP6.
    let mixed = b"PROXY TCP6 ::ffff:192.168.0.1 2001:db8::11 56324 443\r\n";
    let want = proxied(
        Version::V1,
        Transport::Stream,
        "[::ffff:192.168.0.1]:56324",
        "[2001:db8::11]:443",
    );
    check_valid(mixed, want);
    // `send-proxy-v2`, same connection.
    let v2 = [
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00,
        0x0c, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0x0b, 0xdc, 0x04, 0x01, 0xbb,
    ];
    let want = proxied(
        Version::V2,
        Transport::Stream,
        "192.168.0.1:56324",
        "192.168.0.11:443",
    );
    check_valid(&v2, want);
    // A health check (locally initiated): LOCAL, AF_UNSPEC, no block.
    let check = [
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00,
        0x00,
    ];
    check_valid(&check, LOCAL);
    // `proxy-v2-options authority,unique-id,crc32c`: TLVs after the block.
    let tlvs = cat(&[
        &[0x02, 0x00, 0x0b],
        b"example.com",
        &[0x05, 0x00, 0x04],
        b"id-1",
        &[0x03, 0x00, 0x04, 0x12, 0x34, 0x56, 0x78],
    ]);
    let with_tlvs = v2_with_block(&v2, &tlvs);
    let want = proxied(
        Version::V2,
        Transport::Stream,
        "192.168.0.1:56324",
        "192.168.0.11:443",
    );
    check_valid(&with_tlvs, want);
}

fn v2_with_block(header: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut out = cat(&[header, extra]);
    let len = u16::from_be_bytes([out[14], out[15]]) + u16::try_from(extra.len()).unwrap();
    out[14..16].copy_from_slice(&len.to_be_bytes());
    out
}

// ---- the ppp defects named in the module doc: each is right here ----

#[test]
fn ppp_plus_sign_port_is_invalid() {
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n");
    check_invalid(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 +443\r\n");
}

#[test]
fn ppp_unknown_with_many_fields_is_done() {
    let input = b"PROXY UNKNOWN a b c d e f\r\nGET / HTTP/1.1\r\n";
    assert_eq!(
        parse(input),
        done(no_addrs(Version::V1, Transport::Unspecified), 27)
    );
}

#[test]
fn ppp_unknown_with_lone_lf_or_cr_is_invalid() {
    check_invalid(b"PROXY UNKNOWN a\nb\r\n");
    check_invalid(b"PROXY UNKNOWN \rX\r\n");
}

#[test]
fn ppp_local_with_family_and_no_block_is_done() {
    assert_eq!(parse(&cat(&[SIG, &[0x20, 0x11, 0, 0]])), done(LOCAL, 16));
}

#[test]
fn ppp_bad_version_is_invalid_at_byte_13() {
    assert!(matches!(parse(&cat(&[SIG, &[0x13]])), Parsed::Invalid(_)));
}

// ---- builders ----

fn built_v2(proto: Proto, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = [0u8; V2_MAX_BUILT];
    let n = write_v2(proto, src, dst, &mut out);
    out[..n].to_vec()
}

fn built_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = [0u8; V1_MAX_LEN];
    let n = write_v1(src, dst, &mut out);
    out[..n].to_vec()
}

#[test]
fn builders_fixed_layout() {
    let (a, b) = (sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
    let v2 = built_v2(Proto::Tcp, a, b);
    assert_eq!(
        v2,
        cat(&[
            SIG,
            &[
                0x21, 0x11, 0, 12, 192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb
            ]
        ])
    );
    assert_eq!(built_v2(Proto::Udp, a, b)[13], 0x12);
    let v6 = built_v2(Proto::Udp, sa("[::1]:1"), sa("[::2]:2"));
    assert_eq!((v6.len(), v6[13], &v6[14..16]), (52, 0x22, &[0u8, 36][..]));
    assert_eq!(
        built_v1(a, b),
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    );
    let mut local = [0u8; V2_LOCAL_LEN];
    assert_eq!(write_v2_local(&mut local), 16);
    assert_eq!(local.as_slice(), cat(&[SIG, &[0x20, 0x00, 0, 0]]));
}

#[test]
fn round_trips() {
    let cases = [
        ("10.1.2.3:40000", "10.9.8.7:443"),
        ("[2001:db8::5]:40000", "[2001:db8::6]:443"),
        ("[::]:0", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
    ];
    for (src, dst) in cases {
        let (s, d) = (sa(src), sa(dst));
        for (proto, transport) in [
            (Proto::Tcp, Transport::Stream),
            (Proto::Udp, Transport::Datagram),
        ] {
            check_valid(
                &built_v2(proto, s, d),
                proxied(Version::V2, transport, src, dst),
            );
        }
        check_valid(
            &built_v1(s, d),
            proxied(Version::V1, Transport::Stream, src, dst),
        );
    }
    let mut local = [0u8; V2_LOCAL_LEN];
    let n = write_v2_local(&mut local);
    check_valid(&local[..n], LOCAL);
}

#[test]
fn mixed_families_are_written_ipv4_mapped() {
    let (s, d) = (sa("192.0.2.1:1000"), sa("[2001:db8::1]:443"));
    let mapped = "[::ffff:192.0.2.1]:1000";
    let want = proxied(Version::V2, Transport::Stream, mapped, "[2001:db8::1]:443");
    check_valid(&built_v2(Proto::Tcp, s, d), want);
    let line = built_v1(s, d);
    assert_eq!(
        line,
        b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 1000 443\r\n"
    );
    let want = proxied(Version::V1, Transport::Stream, mapped, "[2001:db8::1]:443");
    check_valid(&line, want);
    let want = proxied(
        Version::V2,
        Transport::Datagram,
        "[2001:db8::1]:443",
        mapped,
    );
    check_valid(&built_v2(Proto::Udp, d, s), want);
}

// ---- property: random addresses, random split points ----

fn random_ip(rng: &mut Rng) -> IpAddr {
    if rng.chance(1, 2) {
        let mut o = [0u8; 4];
        for b in &mut o {
            *b = match rng.below(3) {
                0 => 0,
                1 => rng.below(10) as u8,
                _ => rng.below(256) as u8,
            };
        }
        IpAddr::V4(Ipv4Addr::from(o))
    } else {
        let mut seg = [0u16; 8];
        for s in &mut seg {
            *s = if rng.chance(1, 3) {
                0
            } else {
                rng.below(0x1_0000) as u16
            };
        }
        if rng.chance(1, 8) {
            seg[..6].copy_from_slice(&[0, 0, 0, 0, 0, 0xffff]);
        }
        IpAddr::V6(Ipv6Addr::from(seg))
    }
}

fn random_addr(rng: &mut Rng) -> SocketAddr {
    let port = match rng.below(3) {
        0 => 0,
        1 => rng.below(10) as u16,
        _ => rng.below(0x1_0000) as u16,
    };
    SocketAddr::new(random_ip(rng), port)
}

fn mapped(a: SocketAddr, other: SocketAddr) -> SocketAddr {
    match (a.ip(), other.ip()) {
        (IpAddr::V4(v4), IpAddr::V6(_)) => {
            SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port())
        }
        _ => a,
    }
}

/// Checks `header` + random stream bytes at a random split point, and at
/// every split for one case in 16.
fn check_random_split(rng: &mut Rng, header: &[u8], want: ProxyHeader, seed: u64) {
    let mut input = header.to_vec();
    for _ in 0..rng.below(40) {
        input.push(rng.below(256) as u8);
    }
    let whole = done(want, header.len());
    let k = rng.below(input.len() as u64 + 1) as usize;
    let got = parse(&input[..k]);
    if k < header.len() {
        assert_eq!(
            got,
            Parsed::Incomplete,
            "seed {seed}: split {k} of {input:?}"
        );
    } else {
        assert_eq!(got, whole, "seed {seed}: split {k} of {input:?}");
    }
    if rng.chance(1, 16) {
        check_valid(header, want);
    }
}

#[test]
fn property_random_addresses_and_splits() {
    for seed in 0..3000u64 {
        let mut rng = Rng::new(seed);
        let (src, dst) = (random_addr(&mut rng), random_addr(&mut rng));
        let (msrc, mdst) = (mapped(src, dst), mapped(dst, src));
        let endpoints = Some(Endpoints {
            src: msrc,
            dst: mdst,
        });
        let (proto, transport) = if rng.chance(1, 2) {
            (Proto::Tcp, Transport::Stream)
        } else {
            (Proto::Udp, Transport::Datagram)
        };
        let want = ProxyHeader {
            version: Version::V2,
            command: Command::Proxy {
                transport,
                addrs: endpoints,
            },
        };
        check_random_split(&mut rng, &built_v2(proto, src, dst), want, seed);
        let want = ProxyHeader {
            version: Version::V1,
            command: Command::Proxy {
                transport: Transport::Stream,
                addrs: endpoints,
            },
        };
        check_random_split(&mut rng, &built_v1(src, dst), want, seed);
    }
}
