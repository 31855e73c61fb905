//! `ringfwd::tcp::handshake::Handshake` (SOCKS5 with and without users, with
//! UDP ASSOCIATE served, and HTTP CONNECT) over arbitrary bytes, fed in two reads cut where the first
//! input byte says. Beyond "no panic": the step, the replies written and the
//! bytes left for the tunnel are the same as when the bytes come in one read,
//! a handshake never takes more bytes than it was given, and one that is
//! done or refused stays so.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfwd::config::forward::{DestinationPolicy, Users};
use ringfwd::front::Credentials;
use ringfwd::tcp::handshake::{Handshake, HsStep, LoopGuard, NamedKind, NamedSpec};

/// Feeds `input` to a fresh handshake in reads cut at `cuts`: the final
/// step, every reply byte, and what is left for the tunnel.
fn run(spec: &NamedSpec, input: &[u8], cuts: &[usize]) -> (HsStep, Vec<u8>, Vec<u8>) {
    let users = &spec.users;
    let mut hs = Handshake::for_spec(spec);
    let mut out = Vec::new();
    let mut held: Vec<u8> = Vec::new();
    let mut step = HsStep::More;
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(from, input.len());
        held.extend_from_slice(&input[from..cut]);
        from = cut;
        if step != HsStep::More {
            continue;
        }
        let (next, used) = hs.step(&held, users, &mut out);
        assert!(used <= held.len(), "took {used} of {}", held.len());
        held.drain(..used);
        step = next;
    }
    (step, out, held)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let users = Users::new(vec![Credentials {
        user: b"alice".to_vec(),
        password: b"secret".to_vec(),
    }]);
    let (kind, users, udp_idle_ms) = match selector % 4 {
        0 => (NamedKind::Socks5, Users::default(), None),
        1 => (NamedKind::Socks5, users, None),
        2 => (NamedKind::Socks5, users, Some(60_000)),
        _ => (NamedKind::HttpConnect, users, None),
    };
    let spec = NamedSpec {
        kind,
        users,
        policy: DestinationPolicy {
            allow: Vec::new(),
            deny: Vec::new(),
            ports: Vec::new(),
        },
        guard: LoopGuard::default(),
        udp_idle_ms,
    };
    let whole = run(&spec, input, &[]);
    let cut = usize::from(selector / 4) % (input.len() + 1);
    assert_eq!(run(&spec, input, &[cut]), whole, "cut at {cut}");
    let third = input.len() / 3;
    assert_eq!(
        run(&spec, input, &[third, 2 * third]),
        whole,
        "cut in thirds"
    );
});
