//! `ringfwd::front::connect::parse_head` on arbitrary bytes. Beyond "no
//! panic": the result over growing prefixes is monotone (Incomplete, then one
//! Done or Invalid that more bytes never change), a Done never takes more
//! than it was given nor more than MAX_HEAD, and it is exactly the head (the
//! same answer with nothing after it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfwd::front::Parsed;
use ringfwd::front::connect::{self, Head, MAX_HEAD};

/// Prefix lengths checked one by one; past this, a sample.
const EVERY_PREFIX: usize = 512;

fuzz_target!(|data: &[u8]| {
    let full = connect::parse_head(data);
    if let Parsed::Done { consumed, .. } = &full {
        assert!(*consumed > 0 && *consumed <= data.len());
        assert!(*consumed <= MAX_HEAD, "consumed {consumed}");
        assert_eq!(connect::parse_head(&data[..*consumed]), full);
    }
    if data.len() >= MAX_HEAD {
        assert!(!matches!(full, Parsed::Incomplete), "{} bytes", data.len());
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
});

/// What `data[..k]` says must agree with what all of `data` says.
fn check_prefix(data: &[u8], k: usize, full: &Parsed<Head>) {
    let part = connect::parse_head(&data[..k]);
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
            "prefix {k} of a head of {consumed}"
        );
    }
}
