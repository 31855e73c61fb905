//! The handshake over whole conversations, each fed at every split into
//! two reads (as bytes arrive), with the replies checked byte for byte.

use super::*;
use crate::front::Credentials;

fn users() -> Users {
    Users::new(vec![Credentials {
        user: b"alice".to_vec(),
        password: b"secret".to_vec(),
    }])
}

/// Runs `input` through a handshake split at every point into two reads;
/// every split must give the same step, replies and bytes left over.
fn every_split(kind: NamedKind, users: &Users, input: &[u8]) -> (HsStep, Vec<u8>, Vec<u8>) {
    every_split_of(|| Handshake::new(kind), users, input)
}

fn every_split_of(
    new: impl Fn() -> Handshake,
    users: &Users,
    input: &[u8],
) -> (HsStep, Vec<u8>, Vec<u8>) {
    let mut seen: Option<(HsStep, Vec<u8>, Vec<u8>)> = None;
    for cut in 0..=input.len() {
        let mut hs = new();
        let mut out = Vec::new();
        let mut buf = input[..cut].to_vec();
        let (mut step, mut used) = hs.step(&buf, users, &mut out);
        buf.drain(..used);
        if step == HsStep::More {
            buf.extend_from_slice(&input[cut..]);
            (step, used) = hs.step(&buf, users, &mut out);
            buf.drain(..used);
        } else {
            buf.extend_from_slice(&input[cut..]);
        }
        let got = (step, out, buf);
        match &seen {
            None => seen = Some(got),
            Some(s) => assert_eq!(s, &got, "split at {cut}"),
        }
    }
    seen.expect("one split at least")
}

const CONNECT_V4: &[u8] = &[5, 1, 0, 1, 192, 0, 2, 7, 0, 80];

#[test]
fn socks5_without_users_connects_and_leaves_the_stream() {
    let mut input = vec![5, 2, 0, 2];
    input.extend_from_slice(CONNECT_V4);
    input.extend_from_slice(b"GET /");
    let (step, out, rest) = every_split(NamedKind::Socks5, &Users::default(), &input);
    assert_eq!(
        step,
        HsStep::Done {
            dst: Destination::Ip("192.0.2.7:80".parse().expect("addr")),
            user: None
        }
    );
    assert_eq!(out, [5, 0], "no authentication chosen");
    assert_eq!(rest, b"GET /");
}

#[test]
fn socks5_with_users_authenticates_then_connects_to_a_name() {
    let mut input = vec![5, 1, 2, 1, 5];
    input.extend_from_slice(b"alice\x06secret");
    input.extend_from_slice(&[5, 1, 0, 3, 11]);
    input.extend_from_slice(b"example.org\x01\xbb");
    let (step, out, rest) = every_split(NamedKind::Socks5, &users(), &input);
    assert_eq!(
        step,
        HsStep::Done {
            dst: Destination::Name("example.org".into(), 443),
            user: Some("alice".into())
        }
    );
    assert_eq!(out, [5, 2, 1, 0]);
    assert!(rest.is_empty());
}

#[test]
fn socks5_refusals_reply_then_close() {
    // Users configured, the client offers only "no authentication".
    let (step, out, _) = every_split(NamedKind::Socks5, &users(), &[5, 1, 0]);
    assert_eq!(step, HsStep::Refuse(CloseReason::AuthFailed));
    assert_eq!(out, [5, 0xFF]);
    // A wrong password.
    let (step, out, _) = every_split(
        NamedKind::Socks5,
        &users(),
        b"\x05\x01\x02\x01\x05alice\x05wrong",
    );
    assert_eq!(step, HsStep::Refuse(CloseReason::AuthFailed));
    assert_eq!(out, [5, 2, 1, 1]);
    // BIND, UDP ASSOCIATE: command not supported (7).
    for cmd in [2u8, 3] {
        let input = [5, 1, 0, 5, cmd, 0, 1, 192, 0, 2, 7, 0, 80];
        let (step, out, _) = every_split(NamedKind::Socks5, &Users::default(), &input);
        assert_eq!(step, HsStep::Refuse(CloseReason::CommandUnsupported));
        assert_eq!(&out[..4], &[5, 0, 5, 7]);
    }
    // An unknown address type (8).
    let (step, out, _) = every_split(NamedKind::Socks5, &Users::default(), &[5, 1, 0, 5, 1, 0, 9]);
    assert_eq!(step, HsStep::Refuse(CloseReason::HandshakeMalformed));
    assert_eq!(&out[..4], &[5, 0, 5, 8]);
    // Not SOCKS5 at all: closed without a reply.
    let (step, out, _) = every_split(NamedKind::Socks5, &Users::default(), b"GET / HTTP/1.1\r\n");
    assert_eq!(step, HsStep::Refuse(CloseReason::HandshakeMalformed));
    assert!(out.is_empty());
}

#[test]
fn http_connect_heads_and_their_answers() {
    let head = b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n\x16\x03\x01";
    let (step, out, rest) = every_split(NamedKind::HttpConnect, &Users::default(), head);
    assert_eq!(
        step,
        HsStep::Done {
            dst: Destination::Name("example.org".into(), 443),
            user: None
        }
    );
    assert!(out.is_empty(), "the 200 waits for the connect");
    assert_eq!(rest, b"\x16\x03\x01");

    let (step, out, _) = every_split(NamedKind::HttpConnect, &users(), head);
    assert_eq!(step, HsStep::Refuse(CloseReason::AuthFailed));
    assert!(out.starts_with(b"HTTP/1.1 407 "));
    let authed =
        b"CONNECT 192.0.2.7:443 HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n";
    let (step, _, _) = every_split(NamedKind::HttpConnect, &users(), authed);
    assert_eq!(
        step,
        HsStep::Done {
            dst: Destination::Ip("192.0.2.7:443".parse().expect("addr")),
            user: Some("alice".into())
        }
    );
    let (step, out, _) = every_split(
        NamedKind::HttpConnect,
        &Users::default(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(step, HsStep::Refuse(CloseReason::CommandUnsupported));
    assert!(out.starts_with(b"HTTP/1.1 405 "));
    let (step, out, _) = every_split(
        NamedKind::HttpConnect,
        &Users::default(),
        b"\x00\x01\r\n\r\n",
    );
    assert_eq!(step, HsStep::Refuse(CloseReason::HandshakeMalformed));
    assert!(out.starts_with(b"HTTP/1.1 400 "));
}

#[test]
fn replies_for_every_outcome() {
    let bound: SocketAddr = "10.0.0.1:40000".parse().expect("addr");
    let ok = reply(NamedKind::Socks5, Outcome::Connected { bound });
    assert_eq!(ok, [5, 0, 0, 1, 10, 0, 0, 1, 0x9c, 0x40]);
    let code = |o| reply(NamedKind::Socks5, o)[1];
    assert_eq!(code(Outcome::Refused(Refusal::Address)), 2);
    assert_eq!(code(Outcome::Refused(Refusal::Loop)), 2);
    assert_eq!(code(Outcome::Unresolved(ResolveFail::NotFound)), 4);
    assert_eq!(
        code(Outcome::Failed {
            errno: libc::ECONNREFUSED
        }),
        5
    );
    assert_eq!(
        code(Outcome::Failed {
            errno: libc::ENETUNREACH
        }),
        3
    );
    let http = |o| String::from_utf8(reply(NamedKind::HttpConnect, o)).expect("text");
    assert_eq!(
        http(Outcome::Connected { bound }),
        "HTTP/1.1 200 Connection established\r\n\r\n"
    );
    assert!(http(Outcome::Refused(Refusal::Port)).starts_with("HTTP/1.1 403 "));
    assert!(
        http(Outcome::Failed {
            errno: libc::ECONNREFUSED
        })
        .starts_with("HTTP/1.1 502 ")
    );
    assert!(
        http(Outcome::Failed {
            errno: libc::ECANCELED
        })
        .starts_with("HTTP/1.1 504 ")
    );
    assert!(reply(NamedKind::Transparent, Outcome::Refused(Refusal::Port)).is_empty());
    assert_eq!(
        Outcome::Refused(Refusal::Loop).reason(),
        Some(CloseReason::LoopRefused)
    );
    assert_eq!(
        Outcome::Failed {
            errno: libc::ECANCELED
        }
        .reason(),
        Some(CloseReason::ConnectTimeout)
    );
}

#[test]
fn the_loop_guard_knows_exact_and_wildcard_listeners() {
    let g = LoopGuard::new([
        "192.0.2.1:1080".parse().expect("addr"),
        "0.0.0.0:3128".parse().expect("addr"),
    ]);
    assert!(g.hits("192.0.2.1:1080".parse().expect("addr")));
    assert!(g.hits("[::ffff:192.0.2.1]:1080".parse().expect("addr")));
    assert!(!g.hits("192.0.2.1:1081".parse().expect("addr")));
    assert!(g.hits("127.0.0.5:3128".parse().expect("addr")));
    assert!(g.hits("0.0.0.0:3128".parse().expect("addr")));
    assert!(!g.hits("192.0.2.9:3128".parse().expect("addr")));
    let g = g.with_local(&["192.0.2.9".parse().expect("ip")]);
    assert!(
        g.hits("192.0.2.9:3128".parse().expect("addr")),
        "a local address"
    );
    assert!(
        !g.hits("192.0.2.9:1080".parse().expect("addr")),
        "not a wildcard's port"
    );
}

/// A SOCKS5 listener with `udp = true`.
fn udp_spec(users: Users) -> NamedSpec {
    NamedSpec {
        kind: NamedKind::Socks5,
        users,
        policy: DestinationPolicy {
            allow: Vec::new(),
            deny: Vec::new(),
            ports: Vec::new(),
        },
        guard: LoopGuard::default(),
        udp_idle_ms: Some(60_000),
    }
}

#[test]
fn udp_associate_is_asked_for_only_where_the_listener_serves_it() {
    let spec = udp_spec(Users::default());
    let input = [5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0xaa];
    let (step, out, rest) =
        every_split_of(|| Handshake::for_spec(&spec), &Users::default(), &input);
    assert_eq!(
        step,
        HsStep::Associate {
            hint: Destination::Ip("0.0.0.0:0".parse().unwrap()),
            user: None
        }
    );
    assert_eq!(
        out,
        [5, 0],
        "the method reply only: the success reply waits for the socket"
    );
    assert_eq!(rest, [0xaa]);
    // With users, the authenticated name comes along.
    let spec = udp_spec(users());
    let input = b"\x05\x01\x02\x01\x05alice\x06secret\x05\x03\x00\x01\xc0\x00\x02\x07\x10\x00";
    let (step, _, _) = every_split_of(|| Handshake::for_spec(&spec), &users(), input);
    assert_eq!(
        step,
        HsStep::Associate {
            hint: Destination::Ip("192.0.2.7:4096".parse().unwrap()),
            user: Some("alice".into())
        }
    );
    // `udp = false`: command not supported (7), as before.
    let mut off = udp_spec(Users::default());
    off.udp_idle_ms = None;
    let input = [5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0];
    let (step, out, _) = every_split_of(|| Handshake::for_spec(&off), &Users::default(), &input);
    assert_eq!(step, HsStep::Refuse(CloseReason::CommandUnsupported));
    assert_eq!(&out[..4], &[5, 0, 5, 7]);
}
