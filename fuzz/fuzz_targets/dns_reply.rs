//! `ringfwd::dns::Resolver::on_reply` on arbitrary bytes after a lookup.
//! Beyond "no panic": the bytes are fed as they are and again with the id
//! of a pending query stamped in (so the fuzzer reaches past the id check),
//! and however the replies went, the lookup ends with exactly one answer
//! for its waiter once the time has passed every try, an `Ok` never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfwd::dns::{Lookup, Prefer, Resolver, ResolverConfig};

fuzz_target!(|data: &[u8]| {
    let cfg = ResolverConfig {
        nameservers: vec![
            "192.0.2.53:53".parse().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
        ],
        timeout: 1000,
        attempts: 2,
        prefer: Prefer::Ipv4,
        ..ResolverConfig::default()
    };
    let mut r = Resolver::new(cfg, u64::from(data.first().copied().unwrap_or(0)));
    assert_eq!(r.lookup("a.example", 42, 0), Lookup::Pending);
    let mut ids = Vec::new();
    while let Some((ns, query)) = r.next_send() {
        ids.push((ns, [query[0], query[1]]));
    }
    let mut done = Vec::new();
    r.on_reply(0, data, 1, &mut done);
    for (ns, id) in ids {
        if data.len() >= 2 {
            let mut stamped = data.to_vec();
            stamped[..2].copy_from_slice(&id);
            r.on_reply(ns, &stamped, 2, &mut done);
        }
    }
    let mut now = 2;
    while let Some(deadline) = r.deadline() {
        assert!(deadline >= now, "a deadline in the past");
        now = deadline;
        r.on_time(now, &mut done);
        while r.next_send().is_some() {}
    }
    assert_eq!(r.pending(), 0);
    assert_eq!(done.len(), 1, "one answer for the one waiter: {done:?}");
    assert_eq!(done[0].0, 42);
    if let Ok(addrs) = &done[0].1 {
        assert!(!addrs.is_empty());
    }
});
