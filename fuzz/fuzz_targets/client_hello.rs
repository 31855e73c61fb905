//! The TLS ClientHello reader on arbitrary bytes: it must not panic, a name it
//! returns must be a valid lowercase host name, and it must be monotonic: any
//! decision on a prefix (anything but Incomplete) is the decision on the whole
//! input, since the front stops reading at the first decision.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfwd::front::Parsed;
use ringfwd::front::sni::{SniRoutes, validate_pattern};
use ringfwd::front::tls::{MAX_INPUT, ServerName, TlsFront, read_client_hello};

/// Prefix lengths to compare against the whole input: every one for short
/// inputs, an even spread plus the last few for long ones (keeps each run
/// linear-ish so the fuzzer explores instead of re-parsing).
fn cuts(len: usize) -> impl Iterator<Item = usize> {
    let step = (len / 64).max(1);
    (0..len).step_by(step).chain(len.saturating_sub(8)..len)
}

fuzz_target!(|data: &[u8]| {
    let whole = read_client_hello(data);
    if let Parsed::Done { value, consumed } = &whole {
        assert_eq!(*consumed, 0, "the TLS front only peeks");
        if let TlsFront::Hello(hello) = value {
            assert!(hello.hello_len <= data.len().min(MAX_INPUT));
            if let ServerName::Host(name) = &hello.server_name {
                assert!(validate_pattern(name).is_ok(), "{name:?}");
                assert!(!name.starts_with("*."), "{name:?}");
                assert_eq!(name, &name.to_ascii_lowercase());
                assert!(!name.ends_with('.'));
                let routes = SniRoutes::new(&[vec![name.clone()]])
                    .expect("a parsed name is a valid pattern");
                assert_eq!(routes.route(name), Some(0));
            }
        }
    }
    for cut in cuts(data.len()) {
        let prefix = read_client_hello(&data[..cut]);
        if prefix != Parsed::Incomplete {
            assert_eq!(prefix, whole, "prefix {cut} of {}", data.len());
        }
    }
});
