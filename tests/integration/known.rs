//! The behaviours README's "Known behaviours and limitations" states, each
//! checked against the real binary so the section stays true: the urgent
//! (out-of-band) byte is not forwarded, a connection over max_connections is
//! closed with a FIN, and a stopped (SIGTSTP) forwarder still has the kernel
//! complete handshakes while nothing is relayed.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use crate::harness::{Proc, echo_upstream, forwarder, write_config};

/// Sends one byte as TCP urgent data (send with MSG_OOB).
fn send_urgent(s: &TcpStream, byte: u8) {
    let n = socket2::SockRef::from(s)
        .send_out_of_band(&[byte])
        .expect("send(MSG_OOB)");
    assert_eq!(n, 1, "send(MSG_OOB) sent {n} bytes");
}

fn urgent_byte_through(splice: &str) -> Vec<u8> {
    let up = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let fwd = forwarder(
        &[up.local_addr().expect("addr")],
        "",
        &format!("shards = 1\nsplice = \"{splice}\""),
    );
    let mut c = TcpStream::connect(fwd.first_addr()).expect("connect");
    let (mut s, _) = up.accept().expect("the forwarder connects upstream");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(b"ab").expect("write");
    send_urgent(&c, b'X');
    c.write_all(b"cd").expect("write");
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut got = Vec::new();
    if let Err(e) = s.read_to_end(&mut got) {
        panic!("splice {splice}: the upstream read {got:?}, then {e}");
    }
    got
}

#[test]
fn the_urgent_byte_is_not_forwarded() {
    // Buffered directions (auto starts on buffers): recv() without
    // SO_OOBINLINE skips the urgent byte and goes on.
    for splice in ["off", "auto"] {
        assert_eq!(
            urgent_byte_through(splice),
            b"abcd",
            "splice {splice}: the bytes around the urgent one arrive, it does not"
        );
    }
}

/// The kernel's splice read stops at the urgent mark and returns 0, as at
/// EOF; the relay used to take it for the client's EOF and lost the bytes
/// after it. A zero splice read now goes back to a buffered receive, which
/// reads past the mark (or returns 0 at a real EOF).
#[test]
fn the_urgent_byte_does_not_end_a_spliced_direction() {
    assert_eq!(urgent_byte_through("always"), b"abcd");
}

#[test]
fn a_connection_over_max_connections_is_closed_with_a_fin() {
    let echo = echo_upstream(1);
    let fwd = forwarder(&[echo.first_addr()], "max_connections = 1", "shards = 1");
    let mut held = TcpStream::connect(fwd.first_addr()).expect("connect");
    held.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    held.write_all(b"hi").expect("write");
    let mut b = [0u8; 2];
    held.read_exact(&mut b)
        .expect("the admitted connection works");
    // Nothing sent: the close finds nothing unread, so the kernel sends a FIN.
    let mut over = TcpStream::connect(fwd.first_addr()).expect("the kernel accepts");
    over.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    match over.read(&mut buf) {
        Ok(0) => {}
        other => panic!("expected EOF (a FIN), got {other:?}"),
    }
    fwd.wait_stat("close_limit", Duration::from_secs(5), |v| v == 1);
}

#[test]
fn a_stopped_forwarder_still_has_handshakes_completed_but_relays_nothing() {
    let echo = echo_upstream(1);
    let cfg = write_config(&format!(
        "[runtime]\nshards = 1\n[[tcp]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{}\"]\n",
        echo.first_addr()
    ));
    let fwd = Proc::start_in_own_group(&["run", "--config", cfg.to_str().expect("path")], 1);
    fwd.signal(libc::SIGTSTP);
    assert!(
        fwd.wait_stopped(Duration::from_secs(5)),
        "SIGTSTP did not stop ringfwd"
    );
    // The kernel completes the handshake into the listen backlog.
    let mut c = TcpStream::connect_timeout(&fwd.first_addr(), Duration::from_secs(5))
        .expect("a stopped forwarder's kernel still accepts");
    c.write_all(b"ping").expect("write");
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut b = [0u8; 4];
    let quiet = c.read(&mut b);
    assert!(
        matches!(&quiet, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "a stopped forwarder relayed: {quiet:?}"
    );
    fwd.signal(libc::SIGCONT);
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.read_exact(&mut b).expect("relayed once continued");
    assert_eq!(&b, b"ping");
}
