//! The SOCKS5 stream parsers (`parse_greeting`, `parse_auth`,
//! `parse_request`) on arbitrary bytes. Beyond "no panic": the result over
//! growing prefixes is monotone (Incomplete, then one Done or Invalid that
//! more bytes never change), a Done never takes more than it was given, and
//! a Done value built again as bytes parses to the same value.
#![no_main]

use std::fmt::Debug;
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use ringfwd::front::socks5::{self, Request, RequestDst};
use ringfwd::front::{Credentials, Destination, Parsed};

/// Prefix lengths checked one by one; past this, a sample. The longest
/// message is an auth request (1 + 1 + 255 + 1 + 255 = 513 bytes).
const EVERY_PREFIX: usize = 520;

fuzz_target!(|data: &[u8]| {
    if let Parsed::Done { value, .. } = check_monotone(data, socks5::parse_greeting) {
        let methods: Vec<u8> = value.methods().collect();
        let mut bytes = vec![socks5::VERSION, methods.len() as u8];
        bytes.extend_from_slice(&methods);
        let again = socks5::parse_greeting(&bytes);
        assert_eq!(
            again,
            Parsed::Done {
                value,
                consumed: bytes.len()
            }
        );
    }
    if let Parsed::Done { value, .. } = check_monotone(data, socks5::parse_auth) {
        let again = socks5::parse_auth(&auth_bytes(&value));
        assert_eq!(
            again,
            Parsed::Done {
                value: value.clone(),
                consumed: auth_bytes(&value).len()
            }
        );
    }
    if let Parsed::Done { value, .. } = check_monotone(data, socks5::parse_request) {
        rebuild_request(value);
    }
});

/// Checks what every prefix of `data` says against what all of it says;
/// returns the latter.
fn check_monotone<T: Debug + PartialEq>(data: &[u8], parse: fn(&[u8]) -> Parsed<T>) -> Parsed<T> {
    let full = parse(data);
    if let Parsed::Done { consumed, .. } = &full {
        assert!(*consumed > 0 && *consumed <= data.len());
        // Exactly the message: the same answer with nothing after it.
        assert_eq!(parse(&data[..*consumed]), full);
    }
    let step = (data.len() / EVERY_PREFIX).max(1);
    let mut k = 0;
    while k <= data.len() {
        check_prefix(parse(&data[..k]), k, &full);
        k += if k < EVERY_PREFIX { 1 } else { step };
    }
    full
}

fn check_prefix<T: Debug + PartialEq>(part: Parsed<T>, k: usize, full: &Parsed<T>) {
    match (&part, full) {
        (Parsed::Incomplete, _) => {}
        (Parsed::Done { .. }, _) => assert_eq!(&part, full, "prefix {k}"),
        (Parsed::Invalid(_), Parsed::Invalid(_)) => {}
        (Parsed::Invalid(_), _) => panic!("prefix {k} invalid, whole {full:?}"),
    }
    if let Parsed::Done { consumed, .. } = full
        && k < *consumed
    {
        assert_eq!(
            part,
            Parsed::Incomplete,
            "prefix {k} of a message of {consumed}"
        );
    }
}

fn auth_bytes(c: &Credentials) -> Vec<u8> {
    let mut b = vec![1, c.user.len() as u8];
    b.extend_from_slice(&c.user);
    b.push(c.password.len() as u8);
    b.extend_from_slice(&c.password);
    b
}

/// A parsed request built again (an address as ATYP 1 or 4, a name as
/// ATYP 3, an unknown type as the 4 fixed bytes) parses to the same value.
fn rebuild_request(value: Request) {
    let mut b = vec![socks5::VERSION, u8::from(value.command), 0];
    match &value.dst {
        RequestDst::UnsupportedType(atyp) => b.push(*atyp),
        RequestDst::Dst(Destination::Ip(addr)) => {
            match addr.ip() {
                IpAddr::V4(v4) => {
                    b.push(1);
                    b.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    b.push(4);
                    b.extend_from_slice(&v6.octets());
                }
            }
            b.extend_from_slice(&addr.port().to_be_bytes());
        }
        RequestDst::Dst(Destination::Name(name, port)) => {
            b.push(3);
            b.push(name.len() as u8);
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&port.to_be_bytes());
        }
    }
    let consumed = b.len();
    assert_eq!(socks5::parse_request(&b), Parsed::Done { value, consumed });
}
