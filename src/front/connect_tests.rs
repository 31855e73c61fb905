use std::net::SocketAddr;

use super::*;

/// What a client sends after the head (a TLS ClientHello's first bytes):
/// the tunnel's, never consumed.
const TUNNEL: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";

fn ip(s: &str) -> Destination {
    Destination::Ip(s.parse::<SocketAddr>().unwrap())
}

fn name(n: &str, port: u16) -> Destination {
    Destination::Name(n.to_owned(), port)
}

fn creds(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials {
        user: user.as_bytes().to_vec(),
        password: password.as_bytes().to_vec(),
    })
}

fn connect(dst: Destination, credentials: Option<Credentials>) -> Head {
    Head::Connect { dst, credentials }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A valid head at every split point: each proper prefix is Incomplete, the
/// head alone and the head with tunnel bytes after it are Done with exactly
/// the head's length; then fed one byte at a time as the front will.
fn check_valid(head: &[u8], want: Head) {
    for k in 0..head.len() {
        assert_eq!(
            parse_head(&head[..k]),
            Parsed::Incomplete,
            "prefix of {k} bytes of {:?}",
            String::from_utf8_lossy(head)
        );
    }
    let whole = Parsed::Done {
        value: want,
        consumed: head.len(),
    };
    assert_eq!(
        parse_head(head),
        whole,
        "{:?}",
        String::from_utf8_lossy(head)
    );
    let with_tunnel = cat(&[head, TUNNEL]);
    for k in head.len()..=with_tunnel.len() {
        assert_eq!(
            parse_head(&with_tunnel[..k]),
            whole,
            "head + {k} tunnel bytes"
        );
    }
    // A second head in the tunnel is tunnel data too.
    assert_eq!(parse_head(&cat(&[head, head])), whole, "head twice");
}

/// Invalid once complete, and whatever follows; every prefix is Incomplete
/// or Invalid, and once Invalid stays so.
fn check_invalid(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    assert!(
        matches!(parse_head(input), Parsed::Invalid(_)),
        "{text:?} gave {:?}",
        parse_head(input)
    );
    assert!(
        matches!(parse_head(&cat(&[input, TUNNEL])), Parsed::Invalid(_)),
        "{text:?} + tunnel"
    );
    let mut invalid_from = None;
    for k in 0..=input.len() {
        match parse_head(&input[..k]) {
            Parsed::Incomplete => assert_eq!(invalid_from, None, "{text:?}: {k} Incomplete"),
            Parsed::Invalid(_) => {
                invalid_from.get_or_insert(k);
            }
            done => panic!("{text:?}: prefix {k} gave {done:?}"),
        }
    }
}

fn reason_of(input: &[u8]) -> &'static str {
    match parse_head(input) {
        Parsed::Invalid(why) => why,
        other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(input)),
    }
}

// ---- valid heads ----

#[test]
fn connect_to_a_name_http11_and_http10() {
    check_valid(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        connect(name("example.com", 443), None),
    );
    check_valid(
        b"CONNECT example.com:443 HTTP/1.0\r\n\r\n",
        connect(name("example.com", 443), None),
    );
}

#[test]
fn connect_to_ip_literals() {
    check_valid(
        b"CONNECT 192.0.2.1:8443 HTTP/1.1\r\nHost: 192.0.2.1:8443\r\n\r\n",
        connect(ip("192.0.2.1:8443"), None),
    );
    check_valid(
        b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n",
        connect(ip("[2001:db8::1]:443"), None),
    );
    check_valid(
        b"CONNECT [::1]:1 HTTP/1.0\r\n\r\n",
        connect(ip("[::1]:1"), None),
    );
    check_valid(
        b"CONNECT 255.255.255.255:65535 HTTP/1.1\r\n\r\n",
        connect(ip("255.255.255.255:65535"), None),
    );
}

/// The policy checks IPv4 rules on the address actually reached: an
/// IPv4-mapped literal must not slip past a 127.0.0.0/8 deny as IPv6.
#[test]
fn an_ipv4_mapped_ipv6_literal_is_the_ipv4_address() {
    check_valid(
        b"CONNECT [::ffff:127.0.0.1]:22 HTTP/1.1\r\n\r\n",
        connect(ip("127.0.0.1:22"), None),
    );
    // IPv4-compatible (deprecated, not mapped) stays IPv6.
    check_valid(
        b"CONNECT [::127.0.0.1]:22 HTTP/1.1\r\n\r\n",
        connect(ip("[::7f00:1]:22"), None),
    );
}

#[test]
fn names_are_lowercased_and_may_use_underscore_and_a_trailing_dot() {
    check_valid(
        b"CONNECT WWW.Example.COM:443 HTTP/1.1\r\n\r\n",
        connect(name("www.example.com", 443), None),
    );
    check_valid(
        b"CONNECT _srv.my-host.example.:443 HTTP/1.1\r\n\r\n",
        connect(name("_srv.my-host.example.", 443), None),
    );
    check_valid(
        b"CONNECT localhost:8080 HTTP/1.1\r\n\r\n",
        connect(name("localhost", 8080), None),
    );
    // A numeric label is fine where it is not the last.
    check_valid(
        b"CONNECT 1.2.3.example:80 HTTP/1.1\r\n\r\n",
        connect(name("1.2.3.example", 80), None),
    );
    let label = "a".repeat(63);
    let longest = [label.as_str(); 4].join(".").get(..253).unwrap().to_owned();
    check_valid(
        format!("CONNECT {longest}:443 HTTP/1.1\r\n\r\n").as_bytes(),
        connect(name(&longest, 443), None),
    );
    check_valid(
        format!("CONNECT {longest}.:443 HTTP/1.1\r\n\r\n").as_bytes(),
        connect(name(&format!("{longest}."), 443), None),
    );
}

#[test]
fn ports_with_leading_zeros_are_decimal() {
    check_valid(
        b"CONNECT example.com:00443 HTTP/1.1\r\n\r\n",
        connect(name("example.com", 443), None),
    );
}

/// What curl 8 sends for `curl -p -x http://user:pass@proxy https://...`.
#[test]
fn curl_with_proxy_user() {
    check_valid(
        b"CONNECT example.com:443 HTTP/1.1\r\n\
          Host: example.com:443\r\n\
          Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
          User-Agent: curl/8.5.0\r\n\
          Proxy-Connection: Keep-Alive\r\n\r\n",
        connect(name("example.com", 443), creds("user", "pass")),
    );
}

#[test]
fn credentials_forms() {
    let head = |value: &str| {
        format!("CONNECT a.example:443 HTTP/1.1\r\nProxy-Authorization: {value}\r\n\r\n")
    };
    let cases: &[(&str, Option<Credentials>)] = &[
        ("Basic dXNlcjpwYXNz", creds("user", "pass")),
        // Scheme case-insensitive (RFC 9110 §11.1); 1*SP before the token.
        ("basic dXNlcjpwYXNz", creds("user", "pass")),
        ("BASIC   dXNlcjpwYXNz", creds("user", "pass")),
        // Split at the first ':'; the password may hold more.
        ("Basic dXNlcjpwYTpzcw==", creds("user", "pa:ss")),
        ("Basic OnB3", creds("", "pw")),
        ("Basic dXNlcjo=", creds("user", "")),
        ("Basic Og==", creds("", "")),
        // Not Basic, or malformed: no credentials (407, not 400).
        ("Bearer dXNlcjpwYXNz", None),
        ("Basic", None),
        ("Basic ", None),
        ("Basic dXNlcg==", None), // "user", no ':'
        ("Basic dXNlcjpwYXNz extra", None),
        ("Basic dXNlcjpwYR==", None), // pad bits set ("user:pa" is dXNlcjpwYQ==)
        ("Basic dXNlcjpwYXNz=", None),
        ("Basic dXNlcjpwYXN", None),
        ("Basic dXNlcjpw-XNz", None),
        ("Basic\tdXNlcjpwYXNz", None),
        ("Digest username=\"user\"", None),
        ("BasicdXNlcjpwYXNz", None),
    ];
    for (value, want) in cases {
        check_valid(
            head(value).as_bytes(),
            connect(name("a.example", 443), want.clone()),
        );
    }
}

#[test]
fn credentials_only_from_one_proxy_authorization_header() {
    // Header names are case-insensitive.
    check_valid(
        b"CONNECT a.example:443 HTTP/1.1\r\nproxy-authorization: Basic dXNlcjpwYXNz\r\n\r\n",
        connect(name("a.example", 443), creds("user", "pass")),
    );
    // Authorization is for the origin, not for us.
    check_valid(
        b"CONNECT a.example:443 HTTP/1.1\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n",
        connect(name("a.example", 443), None),
    );
    // Two of them, even agreeing: ambiguous, none.
    check_valid(
        b"CONNECT a.example:443 HTTP/1.1\r\n\
          Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
          Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
        connect(name("a.example", 443), None),
    );
}

#[test]
fn lf_only_line_endings_are_accepted_with_the_exact_length() {
    check_valid(
        b"CONNECT example.com:443 HTTP/1.1\nHost: example.com:443\n\n",
        connect(name("example.com", 443), None),
    );
    check_valid(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\n\r\n",
        connect(name("example.com", 443), None),
    );
}

#[test]
fn empty_lines_before_the_request_line_are_part_of_the_head() {
    check_valid(
        b"\r\n\nCONNECT example.com:443 HTTP/1.1\r\n\r\n",
        connect(name("example.com", 443), None),
    );
}

#[test]
fn sixty_four_header_lines_fit_sixty_five_do_not() {
    let mut head = b"CONNECT example.com:443 HTTP/1.1\r\n".to_vec();
    for i in 0..64 {
        head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    let mut over = head.clone();
    head.extend_from_slice(b"\r\n");
    check_valid(&head, connect(name("example.com", 443), None));
    over.extend_from_slice(b"X-64: v\r\n\r\n");
    check_invalid(&over);
    assert_eq!(
        reason_of(&over),
        "request head has more than 64 header lines"
    );
}

// ---- other methods ----

#[test]
fn other_methods_are_other_method_with_their_length() {
    for head in [
        &b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        // Methods are case-sensitive: not CONNECT.
        b"connect example.com:443 HTTP/1.1\r\n\r\n",
        // Another method's target is not checked: it is refused anyway.
        b"GET example.com HTTP/1.1\r\n\r\n",
    ] {
        check_valid(head, Head::OtherMethod);
    }
}

// ---- invalid heads ----

#[test]
fn targets_without_a_valid_port_are_invalid() {
    for target in [
        "example.com",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:99999",
        "example.com:000443",
        "example.com:+443",
        "example.com:-1",
        "example.com:44a",
        "example.com:0x1bb",
        "192.0.2.1",
        "[2001:db8::1]",
        "[2001:db8::1]:",
        "[2001:db8::1]443",
        "[2001:db8::1]:0",
        "[2001:db8::1]:65536",
    ] {
        check_invalid(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes());
    }
    assert_eq!(
        reason_of(b"CONNECT example.com HTTP/1.1\r\n\r\n"),
        "CONNECT target has no port (want host:port)"
    );
    assert_eq!(
        reason_of(b"CONNECT example.com:0 HTTP/1.1\r\n\r\n"),
        "CONNECT target port is not a decimal number 1-65535"
    );
}

#[test]
fn targets_not_in_authority_form_are_invalid() {
    for target in [
        "/",
        "/index.html",
        "http://example.com:443/",
        "example.com:443/",
        "*",
        "user@example.com:443",
        "user:pw@example.com:443",
        ":443",
        "%65xample.com:443",
    ] {
        check_invalid(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes());
    }
    assert_eq!(
        reason_of(b"CONNECT / HTTP/1.1\r\n\r\n"),
        "CONNECT target must be host:port (authority-form), not a URL or path"
    );
}

#[test]
fn hosts_that_are_neither_ip_nor_dns_name_are_invalid() {
    let long_label = format!("{}.example", "a".repeat(64));
    let label = "a".repeat(63);
    let too_long = [label.as_str(); 4].join(".").get(..254).unwrap().to_owned();
    for host in [
        // IPv6 without brackets, with a zone, malformed.
        "2001:db8::1",
        "::1",
        "[fe80::1%25eth0]",
        "[fe80::1%eth0]",
        "[2001:db8::g]",
        "[2001:db8::1",
        "[]",
        // IPv4 in brackets.
        "[192.0.2.1]",
        // Numeric forms resolvers might take as addresses.
        "127.1",
        "010.0.0.1",
        "1.2.3.4.5",
        "256.1.1.1",
        "0x7f.0.0.1.1",
        "4294967295",
        // Not DNS names.
        "a..b",
        ".a",
        "..",
        ".",
        "a b",
        "exa*mple.com",
        "ex!ample.com",
        "exämple.com",
        long_label.as_str(),
        too_long.as_str(),
    ] {
        check_invalid(format!("CONNECT {host}:443 HTTP/1.1\r\n\r\n").as_bytes());
    }
}

#[test]
fn other_http_versions_are_invalid() {
    for head in [
        &b"CONNECT example.com:443 HTTP/2.0\r\n\r\n"[..],
        b"CONNECT example.com:443 HTTP/1.2\r\n\r\n",
        b"CONNECT example.com:443 HTTP/0.9\r\n\r\n",
        b"CONNECT example.com:443 http/1.1\r\n\r\n",
        b"CONNECT example.com:443\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        check_invalid(head);
    }
    assert_eq!(
        reason_of(b"CONNECT example.com:443 HTTP/2.0\r\n\r\n"),
        "request is not HTTP/1.0 or HTTP/1.1"
    );
}

#[test]
fn garbage_is_invalid_as_soon_as_seen() {
    for bad in [
        TUNNEL,
        b"\0",
        b" CONNECT example.com:443 HTTP/1.1\r\n\r\n",
        b"CONNECT  example.com:443 HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:443  HTTP/1.1\r\n\r\n",
        b"CONNECT\texample.com:443 HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\rX",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost example.com\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost : example.com\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n Host: folded\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nX: a\0b\r\n\r\n",
        b"\r\r",
    ] {
        check_invalid(bad);
    }
    // Known at the first byte: a TLS record is not a request.
    assert!(matches!(parse_head(&TUNNEL[..1]), Parsed::Invalid(_)));
}

#[test]
fn a_head_not_complete_in_8_kib_is_invalid_at_8_kib() {
    let mut big = b"CONNECT example.com:443 HTTP/1.1\r\nX: ".to_vec();
    big.resize(MAX_HEAD + 100, b'a');
    assert_eq!(parse_head(&big[..MAX_HEAD - 1]), Parsed::Incomplete);
    for k in [MAX_HEAD, MAX_HEAD + 1, big.len()] {
        assert_eq!(
            parse_head(&big[..k]),
            Parsed::Invalid("request head over 8 KiB"),
            "{k} bytes"
        );
    }
    // Still over, with the end of the head arriving late.
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(parse_head(&big), Parsed::Invalid("request head over 8 KiB"));
}

#[test]
fn a_head_of_exactly_8_kib_is_read() {
    let mut head = b"CONNECT example.com:443 HTTP/1.1\r\nX: ".to_vec();
    head.resize(MAX_HEAD - 4, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), MAX_HEAD);
    let want = Parsed::Done {
        value: connect(name("example.com", 443), None),
        consumed: MAX_HEAD,
    };
    assert_eq!(parse_head(&head), want);
    assert_eq!(parse_head(&cat(&[&head, TUNNEL])), want);
    assert_eq!(parse_head(&head[..MAX_HEAD - 1]), Parsed::Incomplete);
}

// ---- base64 ----

#[test]
fn base64_rfc4648_vectors() {
    for (plain, coded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(
            base64_decode(coded.as_bytes()).as_deref(),
            Some(plain.as_bytes()),
            "{coded}"
        );
    }
    // Every alphabet character, and bytes above 0x7f.
    assert_eq!(
        base64_decode(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"),
        Some(
            (0u8..64)
                .flat_map(|i| [i])
                .collect::<Vec<u8>>()
                .chunks(4)
                .flat_map(|c| {
                    let n = c.iter().fold(0u32, |n, &s| (n << 6) | u32::from(s));
                    n.to_be_bytes().into_iter().skip(1)
                })
                .collect()
        )
    );
    assert_eq!(base64_decode(b"/+8="), Some(vec![0xff, 0xef]));
}

#[test]
fn base64_invalid() {
    for bad in [
        "Zg",       // padding missing
        "Zg=",      // padding short
        "Zm9",      // length not a multiple of 4
        "Z===",     // three pads
        "====",     // all pad
        "Zh==",     // pad bits set ('h' = 33 = 0b100001)
        "Zm9=",     // pad bits set
        "Zg==Zg==", // padding before the end
        "Zg==Zm9v",
        "Z=g=",   // pad in the middle of a quad
        "Zm9v\n", // whitespace
        "Zm 9v",
        "Zm9-", // URL-safe alphabet
        "Zm9_",
        "Zm9\u{e9}",
    ] {
        assert_eq!(base64_decode(bad.as_bytes()), None, "{bad:?}");
    }
}

/// Test-only RFC 4648 encoder, to check the decoder against.
fn encode(plain: &[u8]) -> Vec<u8> {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for chunk in plain.chunks(3) {
        let mut block = [0u8; 4];
        block[1..=chunk.len()].copy_from_slice(chunk);
        let n = u32::from_be_bytes(block);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

/// Random short strings encode and decode back, and setting a pad bit in
/// the last data sextet makes the encoding invalid.
#[test]
fn base64_round_trips_short_strings() {
    let mut rng = crate::verify::Rng::new(15);
    for _ in 0..5000 {
        let len = rng.below(7) as usize;
        let plain: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let coded = encode(&plain);
        assert_eq!(base64_decode(&coded), Some(plain.clone()), "{coded:?}");
        let pads = coded.iter().filter(|&&b| b == b'=').count();
        if pads > 0 {
            let mut odd = coded.clone();
            let at = odd.len() - pads - 1;
            let s = super::sextet(odd[at]).unwrap() | 1;
            odd[at] = encode(&[0, 0, s])[3];
            assert_eq!(base64_decode(&odd), None, "{odd:?}");
        }
    }
}

/// Random destinations and credentials, built as a client would, parse back
/// at a random split point with random tunnel bytes after the head.
#[test]
fn property_random_heads_and_splits() {
    let mut rng = crate::verify::Rng::new(0x15c0);
    for seed in 0..2000 {
        let port = 1 + rng.below(65535) as u16;
        let (target, dst) = match rng.below(3) {
            0 => {
                let a = std::net::Ipv4Addr::from(rng.next_u64() as u32);
                (format!("{a}:{port}"), ip(&format!("{a}:{port}")))
            }
            1 => {
                let a = std::net::Ipv6Addr::from(u128::from(rng.next_u64()) << 64 | 1);
                (format!("[{a}]:{port}"), ip(&format!("[{a}]:{port}")))
            }
            _ => {
                let labels = 1 + rng.below(4);
                let host: Vec<String> = (0..labels)
                    .map(|_| {
                        let len = 1 + rng.below(20) as usize;
                        (0..len)
                            .map(|_| {
                                b"abcdefghijklmnopqrstuvwxyz0123456789-_"[rng.below(38) as usize]
                                    as char
                            })
                            .collect::<String>()
                            + "x"
                    })
                    .collect();
                let host = host.join(".");
                (format!("{host}:{port}"), name(&host, port))
            }
        };
        let credentials = rng.chance(1, 2).then(|| {
            let user: Vec<u8> = (0..rng.below(12))
                .map(|_| rng.next_u64() as u8)
                .filter(|&b| b != b':')
                .collect();
            let password: Vec<u8> = (0..rng.below(40)).map(|_| rng.next_u64() as u8).collect();
            Credentials { user, password }
        });
        let mut head = format!(
            "CONNECT {target} HTTP/1.{}\r\nHost: {target}\r\n",
            rng.below(2)
        );
        if let Some(c) = &credentials {
            let token = encode(&[&c.user[..], b":", &c.password[..]].concat());
            head.push_str("Proxy-Authorization: Basic ");
            head.push_str(std::str::from_utf8(&token).unwrap());
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut input = head.clone().into_bytes();
        let tail: Vec<u8> = (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect();
        input.extend_from_slice(&tail);
        let whole = Parsed::Done {
            value: connect(dst, credentials),
            consumed: head.len(),
        };
        let k = rng.below(input.len() as u64 + 1) as usize;
        let want = if k < head.len() {
            Parsed::Incomplete
        } else {
            whole.clone()
        };
        assert_eq!(
            parse_head(&input[..k]),
            want,
            "seed {seed}: split {k} of {head:?}"
        );
        assert_eq!(parse_head(&input), whole, "seed {seed}: {head:?}");
    }
}

// ---- responses ----

fn parsed_response(bytes: &[u8]) -> (u16, String, Vec<(String, String)>) {
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut resp = httparse::Response::new(&mut headers);
    let status = resp.parse(bytes).unwrap();
    assert_eq!(status, httparse::Status::Complete(bytes.len()), "{bytes:?}");
    assert_eq!(resp.version, Some(1));
    let fields = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8(h.value.to_vec()).unwrap(),
            )
        })
        .collect();
    (resp.code.unwrap(), resp.reason.unwrap().to_owned(), fields)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_established_response_is_exact() {
    let bytes = response(Status::Established);
    assert_eq!(bytes, b"HTTP/1.1 200 Connection established\r\n\r\n");
    assert_eq!(
        parsed_response(bytes),
        (200, "Connection established".to_owned(), vec![])
    );
}

#[test]
fn error_responses_are_well_formed_and_close() {
    let close = [("Content-Length", "0"), ("Connection", "close")];
    let all = [
        (Status::BadRequest, 400, "Bad Request", None),
        (Status::Forbidden, 403, "Forbidden", None),
        (
            Status::MethodNotAllowed,
            405,
            "Method Not Allowed",
            Some(("Allow", "CONNECT")),
        ),
        (
            Status::ProxyAuthRequired,
            407,
            "Proxy Authentication Required",
            Some(("Proxy-Authenticate", "Basic realm=\"ringfwd\"")),
        ),
        (Status::BadGateway, 502, "Bad Gateway", None),
        (Status::ServiceUnavailable, 503, "Service Unavailable", None),
        (Status::GatewayTimeout, 504, "Gateway Timeout", None),
    ];
    for (status, code, reason, extra) in all {
        assert_eq!(status.code(), code);
        let mut want = pairs(&close);
        want.extend(extra.map(|(n, v)| (n.to_owned(), v.to_owned())));
        let bytes = response(status);
        assert_eq!(
            parsed_response(bytes),
            (code, reason.to_owned(), want),
            "{status:?}"
        );
        let mut text =
            format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n");
        if let Some((n, v)) = extra {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
        text.push_str("\r\n");
        assert_eq!(bytes, text.as_bytes(), "{status:?}");
    }
    assert_eq!(Status::Established.code(), 200);
}

#[test]
fn connect_errors_map_to_502_or_504() {
    for errno in [
        libc::ETIMEDOUT,
        libc::ECANCELED,
        -libc::ETIMEDOUT,
        -libc::ECANCELED,
    ] {
        assert_eq!(status_for_errno(errno), Status::GatewayTimeout, "{errno}");
    }
    for errno in [
        libc::ECONNREFUSED,
        libc::ENETUNREACH,
        libc::EHOSTUNREACH,
        libc::ECONNRESET,
        -libc::ECONNREFUSED,
        0,
        i32::MIN,
    ] {
        assert_eq!(status_for_errno(errno), Status::BadGateway, "{errno}");
    }
}
