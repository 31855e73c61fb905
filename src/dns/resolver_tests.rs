use super::*;
use crate::dns::message::build::{reply, truncate_flag};
use simple_dns::RCODE;

const NS0: &str = "192.0.2.53:53";
const NS1: &str = "198.51.100.53:53";

fn cfg(nameservers: &[&str], prefer: Prefer) -> ResolverConfig {
    ResolverConfig {
        nameservers: nameservers.iter().map(|s| s.parse().unwrap()).collect(),
        timeout: 1000,
        attempts: 2,
        prefer,
        ..ResolverConfig::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every datagram queued: (nameserver, id, name, type).
fn sent(r: &mut Resolver) -> Vec<(usize, u16, String, QType)> {
    let mut out = Vec::new();
    while let Some((ns, bytes)) = r.next_send() {
        let q = decode_reply(&bytes).expect("a query decodes");
        let (name, qtype) = q.question.expect("one question");
        out.push((ns, q.id, name, qtype));
    }
    out
}

fn a(addr: &str) -> Record {
    Record::Addr(ip(addr))
}

#[test]
fn a_lookup_asks_both_families_and_answers_in_preference_order() {
    let mut r = Resolver::new(cfg(&[NS0], Prefer::Ipv6), 1);
    assert_eq!(r.lookup("Host.Example.", 7, 0), Lookup::Pending);
    let q = sent(&mut r);
    assert_eq!(q.len(), 2);
    assert_eq!((q[0].2.as_str(), q[0].3), ("host.example", QType::Aaaa));
    assert_eq!(q[1].3, QType::A);
    let mut done = Vec::new();
    r.on_reply(
        0,
        &reply(
            q[1].1,
            "host.example",
            QType::A,
            RCODE::NoError,
            &[("host.example", 60, a("192.0.2.1"))],
            None,
        ),
        5,
        &mut done,
    );
    assert!(done.is_empty(), "waits for the other family");
    r.on_reply(
        0,
        &reply(
            q[0].1,
            "host.example",
            QType::Aaaa,
            RCODE::NoError,
            &[("host.example", 60, a("2001:db8::1"))],
            None,
        ),
        6,
        &mut done,
    );
    assert_eq!(
        done,
        vec![(7, Ok(vec![ip("2001:db8::1"), ip("192.0.2.1")]))]
    );
    assert_eq!(r.pending(), 0);
    assert_eq!(r.deadline(), None);
    let c = r.take_counts();
    assert_eq!((c.queries, c.failures, c.ignored), (2, 0, 0));
}

#[test]
fn waiters_for_one_name_share_its_queries_and_the_cache_answers_until_the_ttl() {
    let mut r = Resolver::new(cfg(&[NS0], Prefer::Ipv4Only), 2);
    assert_eq!(r.lookup("a.example", 1, 0), Lookup::Pending);
    assert_eq!(r.lookup("A.EXAMPLE", 2, 0), Lookup::Pending);
    let q = sent(&mut r);
    assert_eq!(q.len(), 1, "one query for both waiters");
    let mut done = Vec::new();
    r.on_reply(
        0,
        &reply(
            q[0].1,
            "a.example",
            QType::A,
            RCODE::NoError,
            &[("a.example", 10, a("192.0.2.9"))],
            None,
        ),
        100,
        &mut done,
    );
    let want = Ok(vec![ip("192.0.2.9")]);
    assert_eq!(done, vec![(1, want.clone()), (2, want.clone())]);
    assert_eq!(r.lookup("a.example", 3, 10_099), Lookup::Ready(want));
    assert_eq!(r.take_counts().cache_hits, 1);
    assert_eq!(
        r.lookup("a.example", 4, 10_100),
        Lookup::Pending,
        "expired after 10 s"
    );
    assert_eq!(sent(&mut r).len(), 1);
}

#[test]
fn replies_with_a_wrong_id_question_or_nameserver_are_ignored() {
    let mut r = Resolver::new(cfg(&[NS0, NS1], Prefer::Ipv4Only), 3);
    r.lookup("a.example", 1, 0);
    let q = sent(&mut r);
    let (ns, id) = (q[0].0, q[0].1);
    let good = reply(
        id,
        "a.example",
        QType::A,
        RCODE::NoError,
        &[("a.example", 10, a("192.0.2.9"))],
        None,
    );
    let mut done = Vec::new();
    r.on_reply(
        ns,
        &reply(
            id.wrapping_add(1),
            "a.example",
            QType::A,
            RCODE::NoError,
            &[("a.example", 10, a("6.6.6.6"))],
            None,
        ),
        1,
        &mut done,
    );
    r.on_reply(
        ns,
        &reply(
            id,
            "b.example",
            QType::A,
            RCODE::NoError,
            &[("b.example", 10, a("6.6.6.6"))],
            None,
        ),
        1,
        &mut done,
    );
    r.on_reply(
        ns,
        &reply(id, "a.example", QType::Aaaa, RCODE::NoError, &[], None),
        1,
        &mut done,
    );
    r.on_reply(1 - ns, &good, 1, &mut done);
    // The query itself echoed back (QR clear) is not a reply.
    r.on_reply(
        ns,
        &encode_query(id, "a.example", QType::A).unwrap(),
        1,
        &mut done,
    );
    r.on_reply(ns, b"\x00\x01garbage", 1, &mut done);
    r.on_reply(ns, &[], 1, &mut done);
    assert!(done.is_empty());
    assert_eq!(r.take_counts().ignored, 7);
    r.on_reply(ns, &good, 2, &mut done);
    assert_eq!(done, vec![(1, Ok(vec![ip("192.0.2.9")]))]);
}

#[test]
fn nxdomain_is_not_found_and_cached_for_the_soa_minimum() {
    let mut r = Resolver::new(cfg(&[NS0], Prefer::Ipv4Only), 4);
    r.lookup("gone.example", 1, 0);
    let q = sent(&mut r);
    let mut done = Vec::new();
    r.on_reply(
        0,
        &reply(
            q[0].1,
            "gone.example",
            QType::A,
            RCODE::NameError,
            &[],
            Some(5),
        ),
        0,
        &mut done,
    );
    assert_eq!(done, vec![(1, Err(ResolveError::NotFound))]);
    assert_eq!(r.take_counts().failures, 1);
    assert_eq!(
        r.lookup("gone.example", 2, 4_999),
        Lookup::Ready(Err(ResolveError::NotFound))
    );
    assert_eq!(r.lookup("gone.example", 3, 5_000), Lookup::Pending);
}

#[test]
fn no_address_of_the_family_is_not_found() {
    let mut r = Resolver::new(cfg(&[NS0], Prefer::Ipv4), 5);
    r.lookup("v4.example", 1, 0);
    let q = sent(&mut r);
    let mut done = Vec::new();
    r.on_reply(
        0,
        &reply(q[1].1, "v4.example", QType::Aaaa, RCODE::NoError, &[], None),
        0,
        &mut done,
    );
    assert!(done.is_empty());
    r.on_reply(
        0,
        &reply(
            q[0].1,
            "v4.example",
            QType::A,
            RCODE::NoError,
            &[("v4.example", 60, a("192.0.2.4"))],
            None,
        ),
        0,
        &mut done,
    );
    assert_eq!(done, vec![(1, Ok(vec![ip("192.0.2.4")]))]);
    let mut r = Resolver::new(cfg(&[NS0], Prefer::Ipv6Only), 5);
    r.lookup("v4.example", 1, 0);
    let q = sent(&mut r);
    r.on_reply(
        0,
        &reply(q[0].1, "v4.example", QType::Aaaa, RCODE::NoError, &[], None),
        0,
        &mut done,
    );
    assert_eq!(done.last(), Some(&(1, Err(ResolveError::NotFound))));
}

#[test]
fn servfail_moves_to_the_next_nameserver_and_fails_after_every_attempt() {
    let mut r = Resolver::new(cfg(&[NS0, NS1], Prefer::Ipv4Only), 6);
    r.lookup("a.example", 1, 0);
    let mut done = Vec::new();
    let mut asked = Vec::new();
    for _ in 0..4 {
        let q = sent(&mut r);
        assert_eq!(q.len(), 1);
        asked.push(q[0].0);
        r.on_reply(
            q[0].0,
            &reply(
                q[0].1,
                "a.example",
                QType::A,
                RCODE::ServerFailure,
                &[],
                None,
            ),
            0,
            &mut done,
        );
    }
    assert_eq!(asked, [0, 1, 0, 1], "two rounds over both nameservers");
    assert_eq!(done, vec![(1, Err(ResolveError::ServerFailure))]);
    assert!(sent(&mut r).is_empty());
    // A failure is not cached.
    assert_eq!(r.lookup("a.example", 2, 0), Lookup::Pending);
}

#[test]
fn timeouts_retry_on_the_next_nameserver_then_give_up() {
    let mut r = Resolver::new(cfg(&[NS0, NS1], Prefer::Ipv4Only), 7);
    r.lookup("slow.example", 1, 0);
    let mut done = Vec::new();
    let q0 = sent(&mut r);
    assert_eq!(q0[0].0, 0);
    assert_eq!(r.deadline(), Some(1000));
    r.on_time(999, &mut done);
    assert!(sent(&mut r).is_empty(), "nothing before the deadline");
    r.on_time(1000, &mut done);
    let q1 = sent(&mut r);
    assert_eq!(q1.len(), 1);
    assert_eq!(q1[0].0, 1, "the retry goes to the second nameserver");
    assert_ne!(q1[0].1, q0[0].1, "with a fresh id");
    assert_eq!(r.deadline(), Some(2000));
    r.on_time(2000, &mut done);
    assert_eq!(sent(&mut r)[0].0, 0);
    r.on_time(3000, &mut done);
    assert_eq!(sent(&mut r)[0].0, 1);
    assert!(done.is_empty());
    r.on_time(4000, &mut done);
    assert_eq!(done, vec![(1, Err(ResolveError::Timeout))]);
    assert_eq!(r.deadline(), None);
    assert_eq!(r.take_counts().timeouts, 4);
}

#[test]
fn a_late_reply_to_an_earlier_try_still_answers() {
    let mut r = Resolver::new(cfg(&[NS0, NS1], Prefer::Ipv4Only), 8);
    r.lookup("a.example", 1, 0);
    let first = sent(&mut r)[0].clone();
    let mut done = Vec::new();
    r.on_time(1000, &mut done);
    assert_eq!(sent(&mut r).len(), 1);
    r.on_reply(
        0,
        &reply(
            first.1,
            "a.example",
            QType::A,
            RCODE::NoError,
            &[("a.example", 60, a("192.0.2.1"))],
            None,
        ),
        1500,
        &mut done,
    );
    assert_eq!(done, vec![(1, Ok(vec![ip("192.0.2.1")]))]);
    assert_eq!(r.deadline(), None, "the second try's timer is gone");
}

#[test]
fn a_family_that_times_out_does_not_hold_back_the_other_for_every_retry() {
    let mut r = Resolver::new(cfg(&[NS0, NS1], Prefer::Ipv4), 9);
    r.lookup("a.example", 1, 0);
    let q = sent(&mut r);
    let mut done = Vec::new();
    r.on_reply(
        0,
        &reply(
            q[0].1,
            "a.example",
            QType::A,
            RCODE::NoError,
            &[("a.example", 60, a("192.0.2.1"))],
            None,
        ),
        10,
        &mut done,
    );
    r.on_time(1000, &mut done);
    assert!(sent(&mut r).is_empty(), "no retry of AAAA");
    assert_eq!(done, vec![(1, Ok(vec![ip("192.0.2.1")]))]);
}

#[test]
fn cname_chains_are_followed_and_loops_are_failures() {
    let mut r = Resolver::new(cfg(&[NS0], Prefer::Ipv4Only), 10);
    r.lookup("www.example", 1, 0);
    let q = sent(&mut r);
    let chain = [
        ("www.example", 300, Record::Cname("Edge.CDN.example".into())),
        (
            "edge.cdn.example",
            20,
            Record::Cname("node.cdn.example".into()),
        ),
        ("node.cdn.example", 60, a("192.0.2.77")),
        ("other.example", 60, a("6.6.6.6")),
    ];
    let mut done = Vec::new();
    r.on_reply(
        0,
        &reply(
            q[0].1,
            "www.example",
            QType::A,
            RCODE::NoError,
            &chain,
            None,
        ),
        0,
        &mut done,
    );
    assert_eq!(done, vec![(1, Ok(vec![ip("192.0.2.77")]))]);
    // Cached for the shortest TTL of the chain (20 s).
    assert!(matches!(
        r.lookup("www.example", 2, 19_999),
        Lookup::Ready(Ok(_))
    ));
    assert_eq!(r.lookup("www.example", 3, 20_000), Lookup::Pending);

    let one_try = ResolverConfig {
        attempts: 1,
        ..cfg(&[NS0], Prefer::Ipv4Only)
    };
    let mut r = Resolver::new(one_try, 11);
    r.lookup("loop.example", 1, 0);
    let q = sent(&mut r);
    let looped = [
        ("loop.example", 60, Record::Cname("b.example".into())),
        ("b.example", 60, Record::Cname("loop.example".into())),
    ];
    done.clear();
    r.on_reply(
        0,
        &reply(
            q[0].1,
            "loop.example",
            QType::A,
            RCODE::NoError,
            &looped,
            None,
        ),
        0,
        &mut done,
    );
    assert_eq!(done, vec![(1, Err(ResolveError::ServerFailure))]);
}

#[test]
fn truncated_replies_use_the_answers_present_else_fail() {
    let mut r = Resolver::new(cfg(&[NS0], Prefer::Ipv4Only), 12);
    r.lookup("big.example", 1, 0);
    let q = sent(&mut r);
    let mut done = Vec::new();
    let tc = truncate_flag(reply(
        q[0].1,
        "big.example",
        QType::A,
        RCODE::NoError,
        &[("big.example", 60, a("192.0.2.5"))],
        None,
    ));
    r.on_reply(0, &tc, 0, &mut done);
    assert_eq!(done, vec![(1, Ok(vec![ip("192.0.2.5")]))]);

    let mut r = Resolver::new(
        ResolverConfig {
            attempts: 1,
            ..cfg(&[NS0], Prefer::Ipv4Only)
        },
        13,
    );
    r.lookup("big.example", 1, 0);
    let q = sent(&mut r);
    done.clear();
    let empty_tc = truncate_flag(reply(
        q[0].1,
        "big.example",
        QType::A,
        RCODE::NoError,
        &[],
        None,
    ));
    r.on_reply(0, &empty_tc, 0, &mut done);
    assert_eq!(done, vec![(1, Err(ResolveError::ServerFailure))]);
}

#[test]
fn every_prefix_and_corruption_of_a_reply_is_survived() {
    let mut r = Resolver::new(cfg(&[NS0], Prefer::Ipv4Only), 14);
    r.lookup("a.example", 1, 0);
    let q = sent(&mut r);
    let good = reply(
        q[0].1,
        "a.example",
        QType::A,
        RCODE::NoError,
        &[("a.example", 60, a("192.0.2.1"))],
        None,
    );
    let mut done = Vec::new();
    for n in 0..good.len() {
        r.on_reply(0, &good[..n], 0, &mut done);
    }
    for i in 12..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0xff;
        let _ = decode_reply(&bad);
    }
    assert!(done.is_empty(), "no prefix is a whole reply");
    r.on_reply(0, &good, 0, &mut done);
    assert_eq!(done.len(), 1);
}

#[test]
fn hosts_literals_bad_names_no_nameservers_and_overload_answer_at_once() {
    let mut c = cfg(&[], Prefer::Ipv4);
    c.hosts = Hosts::parse("::1 db\n10.1.1.1 db\n");
    c.max_pending = 1;
    let mut r = Resolver::new(c, 15);
    assert_eq!(
        r.lookup("DB.", 1, 0),
        Lookup::Ready(Ok(vec![ip("10.1.1.1"), ip("::1")]))
    );
    assert_eq!(
        r.lookup("192.0.2.1", 1, 0),
        Lookup::Ready(Ok(vec![ip("192.0.2.1")]))
    );
    assert_eq!(
        r.lookup("a..b", 1, 0),
        Lookup::Ready(Err(ResolveError::NotFound))
    );
    assert_eq!(
        r.lookup("x.example", 1, 0),
        Lookup::Ready(Err(ResolveError::NoNameservers))
    );
    r.reconfigure(ResolverConfig {
        max_pending: 1,
        ..cfg(&[NS0], Prefer::Ipv4)
    });
    assert_eq!(
        r.lookup("db", 1, 0),
        Lookup::Pending,
        "the reload's hosts replaced the old"
    );
    assert_eq!(
        r.lookup("y.example", 2, 0),
        Lookup::Ready(Err(ResolveError::Overloaded))
    );
    r.set_hosts(Hosts::parse("10.2.2.2 z.example"));
    assert_eq!(
        r.lookup("z.example", 3, 0),
        Lookup::Ready(Ok(vec![ip("10.2.2.2")]))
    );
}
