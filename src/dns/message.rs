//! DNS messages: the one query this resolver sends (one question, A or
//! AAAA, recursion desired) and what it reads back from a reply. The wire
//! format is `simple-dns`'s; this file only maps it to the few values the
//! resolver needs, so the rest of `dns` does not depend on the crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, TYPE};

/// The address record a query asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QType {
    A,
    Aaaa,
}

impl QType {
    fn wire(self) -> TYPE {
        match self {
            QType::A => TYPE::A,
            QType::Aaaa => TYPE::AAAA,
        }
    }
}

/// How the server answered, reduced to what decides the lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    /// NXDOMAIN: the name does not exist.
    NameError,
    /// SERVFAIL, REFUSED, FORMERR, NOTIMP or anything else: this server
    /// could not answer (another may).
    Failure,
}

/// One record of the answer section that the resolver can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Addr(IpAddr),
    /// An alias: the owner name stands for this one.
    Cname(String),
}

/// The parts of a reply the resolver reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub id: u16,
    /// The QR bit: a query echoed back is not a reply.
    pub response: bool,
    pub truncated: bool,
    pub rcode: Rcode,
    /// The single question, normalised (`None`: not exactly one, or not of
    /// class IN, or not A/AAAA).
    pub question: Option<(String, QType)>,
    /// (owner name normalised, TTL, record) of the answer section.
    pub answers: Vec<(String, u32, Record)>,
    /// The negative-caching TTL an SOA in the authority section gives
    /// (RFC 2308: the smaller of its TTL and its MINIMUM field).
    pub negative_ttl: Option<u32>,
}

/// A name as the resolver compares it: ASCII lower case, no trailing dot.
pub fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Whether `name` (normalised) can be sent as a query name: 1..=253
/// characters, labels of 1..=63 characters, none empty.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b > b' ' && b != 0x7f))
}

/// The query datagram for `name` (normalised and valid), `None` if the
/// encoder refuses it.
pub fn encode_query(id: u16, name: &str, qtype: QType) -> Option<Vec<u8>> {
    let mut packet = Packet::new_query(id);
    packet.set_flags(PacketFlag::RECURSION_DESIRED);
    let qname = Name::new(name).ok()?;
    packet.questions.push(Question::new(
        qname,
        QTYPE::TYPE(qtype.wire()),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    packet.build_bytes_vec().ok()
}

/// Parses a reply; `None` when the bytes are not a DNS message.
pub fn decode_reply(bytes: &[u8]) -> Option<Reply> {
    let packet = Packet::parse(bytes).ok()?;
    let rcode = match packet.rcode() {
        RCODE::NoError => Rcode::NoError,
        RCODE::NameError => Rcode::NameError,
        _ => Rcode::Failure,
    };
    Some(Reply {
        id: packet.id(),
        response: packet.has_flags(PacketFlag::RESPONSE),
        truncated: packet.has_flags(PacketFlag::TRUNCATION),
        rcode,
        question: question(&packet),
        answers: packet.answers.iter().filter_map(answer).collect(),
        negative_ttl: packet.name_servers.iter().find_map(|rr| match &rr.rdata {
            RData::SOA(soa) => Some(rr.ttl.min(soa.minimum)),
            _ => None,
        }),
    })
}

fn question(packet: &Packet<'_>) -> Option<(String, QType)> {
    let [q] = packet.questions.as_slice() else {
        return None;
    };
    if q.qclass != QCLASS::CLASS(CLASS::IN) {
        return None;
    }
    let qtype = match q.qtype {
        QTYPE::TYPE(TYPE::A) => QType::A,
        QTYPE::TYPE(TYPE::AAAA) => QType::Aaaa,
        _ => return None,
    };
    Some((normalise(&q.qname.to_string()), qtype))
}

fn answer(rr: &simple_dns::ResourceRecord<'_>) -> Option<(String, u32, Record)> {
    if rr.class != CLASS::IN {
        return None;
    }
    let record = match &rr.rdata {
        RData::A(a) => Record::Addr(IpAddr::V4(Ipv4Addr::from(a.address))),
        RData::AAAA(a) => Record::Addr(IpAddr::V6(Ipv6Addr::from(a.address))),
        RData::CNAME(c) => Record::Cname(normalise(&c.0.to_string())),
        _ => return None,
    };
    Some((normalise(&rr.name.to_string()), rr.ttl, record))
}

/// Builders of replies for tests (of this module, the resolver and the
/// service): what a server would send.
#[cfg(test)]
pub(crate) mod build {
    use super::*;
    use simple_dns::ResourceRecord;
    use simple_dns::rdata::{A, AAAA, CNAME, SOA};

    /// A reply to (`name`, `qtype`) with `id`, `rcode` and `records`
    /// (owner, ttl, record) in the answer section, and an SOA with
    /// `soa_minimum` in the authority section when given.
    pub(crate) fn reply(
        id: u16,
        name: &str,
        qtype: QType,
        rcode: RCODE,
        records: &[(&str, u32, Record)],
        soa_minimum: Option<u32>,
    ) -> Vec<u8> {
        let mut p = Packet::new_reply(id);
        *p.rcode_mut() = rcode;
        p.questions.push(Question::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(qtype.wire()),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        for (owner, ttl, r) in records {
            let rdata = match r {
                Record::Addr(IpAddr::V4(a)) => RData::A(A::from(*a)),
                Record::Addr(IpAddr::V6(a)) => RData::AAAA(AAAA::from(*a)),
                Record::Cname(c) => RData::CNAME(CNAME(Name::new_unchecked(c))),
            };
            p.answers.push(ResourceRecord::new(
                Name::new_unchecked(owner),
                CLASS::IN,
                *ttl,
                rdata,
            ));
        }
        if let Some(minimum) = soa_minimum {
            let soa = SOA {
                mname: Name::new_unchecked("ns.example"),
                rname: Name::new_unchecked("admin.example"),
                serial: 1,
                refresh: 60,
                retry: 60,
                expire: 60,
                minimum,
            };
            p.name_servers.push(ResourceRecord::new(
                Name::new_unchecked("example"),
                CLASS::IN,
                3600,
                RData::SOA(soa),
            ));
        }
        p.build_bytes_vec().unwrap_or_default()
    }

    /// Sets the TC bit of an encoded message.
    pub(crate) fn truncate_flag(mut bytes: Vec<u8>) -> Vec<u8> {
        if let Some(b) = bytes.get_mut(2) {
            *b |= 0x02;
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn a_query_round_trips_through_the_decoder() {
        let q = encode_query(0x1234, "example.com", QType::Aaaa).expect("encodes");
        let r = decode_reply(&q).expect("parses");
        assert_eq!(r.id, 0x1234);
        assert!(!r.response, "a query is not a response");
        assert_eq!(r.question, Some(("example.com".to_owned(), QType::Aaaa)));
        // RD set: a stub resolver relies on the server's recursion.
        assert_eq!(q[2] & 0x01, 0x01);
    }

    #[test]
    fn a_reply_gives_addresses_cnames_and_negative_ttl() {
        let bytes = reply(
            7,
            "WWW.Example.com",
            QType::A,
            RCODE::NoError,
            &[
                (
                    "www.example.com",
                    300,
                    Record::Cname("web.example.com".into()),
                ),
                (
                    "web.example.com",
                    60,
                    Record::Addr("192.0.2.1".parse().unwrap()),
                ),
            ],
            Some(20),
        );
        let r = decode_reply(&bytes).expect("parses");
        assert!(r.response);
        assert!(!r.truncated);
        assert_eq!(r.rcode, Rcode::NoError);
        assert_eq!(r.question, Some(("www.example.com".to_owned(), QType::A)));
        assert_eq!(r.answers.len(), 2);
        assert_eq!(
            r.answers[1],
            (
                "web.example.com".to_owned(),
                60,
                Record::Addr("192.0.2.1".parse().unwrap())
            )
        );
        assert_eq!(r.negative_ttl, Some(20));
        assert!(
            decode_reply(&truncate_flag(bytes))
                .expect("parses")
                .truncated
        );
    }

    #[test]
    fn garbage_and_every_prefix_of_a_reply_never_panic() {
        let bytes = reply(
            7,
            "a.example",
            QType::Aaaa,
            RCODE::NameError,
            &[("a.example", 5, Record::Addr("2001:db8::1".parse().unwrap()))],
            Some(5),
        );
        for n in 0..bytes.len() {
            let _ = decode_reply(&bytes[..n]);
        }
        assert_eq!(
            decode_reply(&bytes).map(|r| r.rcode),
            Some(Rcode::NameError)
        );
        assert_eq!(decode_reply(&[0xff; 40]), None);
    }

    #[test]
    fn names_are_normalised_and_checked() {
        assert_eq!(normalise("Example.COM."), "example.com");
        assert!(valid_name("a.b-c.example"));
        assert!(!valid_name(""));
        assert!(!valid_name("a..b"));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(!valid_name(&["abc"; 70].join(".")));
        assert!(!valid_name("a b"));
    }
}
