//! Reading one HTTP/1.x request head with `httparse`, bounded in size and
//! time, and writing one response. The admin endpoint answers one request
//! per connection (`Connection: close`), so nothing past the head is read.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A request head larger than this is refused (closed).
pub const MAX_REQUEST: usize = 8 * 1024;
/// A request head not complete within this is refused (closed): a slow
/// client must not hold the one admin thread.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Headers parsed at most; more is a bad request.
const MAX_HEADERS: usize = 32;

/// The parts of a request the endpoint routes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without a query string.
    pub path: String,
}

/// What the bytes received so far make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The head is not complete yet.
    Partial,
    Complete(Request),
    /// `MAX_REQUEST` bytes and still no complete head.
    TooLarge,
    /// Not HTTP/1.x (httparse's reason).
    Bad(String),
}

/// Accumulates a request head as it arrives, in pieces of any size.
#[derive(Debug, Default)]
pub struct HeadReader {
    buf: Vec<u8>,
}

impl HeadReader {
    /// Adds received bytes and says whether the head is complete.
    pub fn push(&mut self, bytes: &[u8]) -> Progress {
        let room = MAX_REQUEST.saturating_sub(self.buf.len());
        let take = bytes.len().min(room);
        self.buf
            .extend_from_slice(bytes.get(..take).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or_default().to_owned();
                let target = req.path.unwrap_or_default();
                let path = target.split('?').next().unwrap_or_default().to_owned();
                Progress::Complete(Request { method, path })
            }
            Ok(httparse::Status::Partial) if self.buf.len() >= MAX_REQUEST => Progress::TooLarge,
            Ok(httparse::Status::Partial) => Progress::Partial,
            Err(e) => Progress::Bad(e.to_string()),
        }
    }
}

/// How reading a request from a connection ended.
#[derive(Debug)]
pub enum Received {
    Request(Request),
    TooLarge,
    Bad(String),
    /// No complete head within `REQUEST_TIMEOUT`.
    Slow,
    /// The client closed (or reset) before a complete head.
    Gone,
}

/// Reads one request head from `stream`, giving up at `REQUEST_TIMEOUT`
/// from the first call however the bytes trickle in.
pub fn read_request(stream: &mut TcpStream) -> Received {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut head = HeadReader::default();
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Received::Slow;
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Received::Gone,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Received::Slow;
            }
            Err(_) => return Received::Gone,
        };
        match head.push(chunk.get(..n).unwrap_or_default()) {
            Progress::Partial => {}
            Progress::Complete(r) => return Received::Request(r),
            Progress::TooLarge => return Received::TooLarge,
            Progress::Bad(why) => return Received::Bad(why),
        }
    }
}

/// A response: status, content type and body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes `resp` whole (bounded by the stream's write timeout) and closes.
pub fn write_response(stream: &mut impl Write, resp: &Response, head_only: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    if resp.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&resp.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &[u8] = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";

    fn want() -> Progress {
        Progress::Complete(Request {
            method: "GET".into(),
            path: "/metrics".into(),
        })
    }

    #[test]
    fn a_request_split_at_every_byte_boundary_reads_the_same() {
        for cut in 0..=GET.len() {
            let mut r = HeadReader::default();
            let (a, b) = GET.split_at(cut);
            let first = r.push(a);
            if cut < GET.len() {
                assert_eq!(first, Progress::Partial, "cut at {cut}");
                assert_eq!(r.push(b), want(), "cut at {cut}");
            } else {
                assert_eq!(first, want());
            }
        }
        let mut r = HeadReader::default();
        let mut last = Progress::Partial;
        for byte in GET {
            last = r.push(std::slice::from_ref(byte));
        }
        assert_eq!(last, want(), "one byte at a time");
    }

    #[test]
    fn a_head_over_8kib_is_too_large_at_once_or_in_pieces() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST + 10, b'a');
        assert_eq!(HeadReader::default().push(&big), Progress::TooLarge);
        let mut r = HeadReader::default();
        let mut last = Progress::Partial;
        for piece in big.chunks(1000) {
            last = r.push(piece);
            if last != Progress::Partial {
                break;
            }
        }
        assert_eq!(last, Progress::TooLarge);
        // Just under the limit still reads.
        let mut fits = b"GET / HTTP/1.1\r\nX: ".to_vec();
        fits.resize(MAX_REQUEST - 4, b'a');
        fits.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(
            HeadReader::default().push(&fits),
            Progress::Complete(_)
        ));
    }

    #[test]
    fn garbage_is_a_bad_request() {
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00"[..],
            b"GET /metrics HTTP/9.9\r\n\r\n",
            b"GET\x00 / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(HeadReader::default().push(bad), Progress::Bad(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_response_has_its_length_and_closes() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::text(404, "no\n"), false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 3\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nno\n"), "{text}");
    }
}
