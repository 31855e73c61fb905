//! `ringfwd::front::socks5::parse_udp` on arbitrary datagrams: no panic, the
//! payload offset within the datagram, and a header naming an address built
//! again with `write_udp_header` parses back to that address (IPv4-mapped
//! written as IPv4) with the same payload offset.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfwd::front::Destination;
use ringfwd::front::socks5::{self, MAX_UDP_IP_HEADER, UdpHeader};
use std::net::SocketAddr;

fuzz_target!(|data: &[u8]| {
    let Ok((header, offset)) = socks5::parse_udp(data) else {
        return;
    };
    assert!(
        offset >= 8 && offset <= data.len(),
        "offset {offset} of {}",
        data.len()
    );
    // The header alone parses the same, with nothing after it.
    assert_eq!(
        socks5::parse_udp(&data[..offset]),
        Ok((header.clone(), offset))
    );
    let Destination::Ip(addr) = header.dst else {
        return;
    };
    let mut out = [0u8; MAX_UDP_IP_HEADER];
    let n = socks5::write_udp_header(addr, &mut out);
    let want = UdpHeader {
        frag: 0,
        dst: Destination::Ip(SocketAddr::new(addr.ip().to_canonical(), addr.port())),
    };
    assert_eq!(socks5::parse_udp(&out[..n]), Ok((want, n)));
});
