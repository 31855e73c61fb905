//! `ringfwd::front::proxy::parse` on arbitrary bytes. Beyond "no panic":
//! the result over growing prefixes is monotone (Incomplete, then one Done
//! or Invalid that more bytes never change), a Done never takes more than it
//! was given, and a Done header with addresses survives build -> parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfwd::front::Parsed;
use ringfwd::front::proxy::{
    self, Command, Proto, ProxyHeader, Transport, V1_MAX_LEN, V2_MAX_BUILT, Version,
};

/// Prefix lengths checked one by one; past this, a sample (a v1 line is at
/// most 107 bytes, a v2 header's fixed part 16).
const EVERY_PREFIX: usize = 256;

fuzz_target!(|data: &[u8]| {
    let full = proxy::parse(data);
    if let Parsed::Done { consumed, .. } = &full {
        assert!(*consumed > 0 && *consumed <= data.len());
        // Exactly the header: the same answer with nothing after it.
        assert_eq!(proxy::parse(&data[..*consumed]), full);
    }
    let step = (data.len() / EVERY_PREFIX).max(1);
    let mut k = 0;
    while k <= data.len() {
        check_prefix(data, k, &full);
        k += if k < EVERY_PREFIX { 1 } else { step };
    }
    if let Parsed::Done { consumed, .. } = &full {
        check_prefix(data, consumed - 1, &full);
    }
    if let Parsed::Done { value, .. } = full {
        rebuild(value);
    }
});

/// What `data[..k]` says must agree with what all of `data` says.
fn check_prefix(data: &[u8], k: usize, full: &Parsed<ProxyHeader>) {
    let part = proxy::parse(&data[..k]);
    match (&part, full) {
        // A prefix still waiting: the whole may be anything.
        (Parsed::Incomplete, _) => {}
        // A header complete in the prefix is the whole's header, same length.
        (Parsed::Done { .. }, _) => assert_eq!(&part, full, "prefix {k}"),
        // Invalid can only stay invalid (the reason may name a later check).
        (Parsed::Invalid(_), Parsed::Invalid(_)) => {}
        (Parsed::Invalid(_), _) => panic!("prefix {k} invalid, whole {full:?}"),
    }
    // Short of a complete header's length, nothing is decided yet.
    if let Parsed::Done { consumed, .. } = full
        && k < *consumed
    {
        assert_eq!(
            part,
            Parsed::Incomplete,
            "prefix {k} of a header of {consumed}"
        );
    }
}

/// A parsed header with addresses, built again, parses to the same value.
fn rebuild(value: ProxyHeader) {
    let Command::Proxy {
        transport,
        addrs: Some(e),
    } = value.command
    else {
        return;
    };
    let mut v1 = [0u8; V1_MAX_LEN];
    let mut v2 = [0u8; V2_MAX_BUILT];
    let bytes = match (value.version, transport) {
        (Version::V1, _) => {
            let n = proxy::write_v1(e.src, e.dst, &mut v1);
            &v1[..n]
        }
        (Version::V2, Transport::Stream) => {
            let n = proxy::write_v2(Proto::Tcp, e.src, e.dst, &mut v2);
            &v2[..n]
        }
        (Version::V2, Transport::Datagram) => {
            let n = proxy::write_v2(Proto::Udp, e.src, e.dst, &mut v2);
            &v2[..n]
        }
        (Version::V2, Transport::Unspecified) => return,
    };
    assert_eq!(
        proxy::parse(bytes),
        Parsed::Done {
            value,
            consumed: bytes.len()
        }
    );
}
