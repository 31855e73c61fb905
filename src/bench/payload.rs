//! User-given request and response bytes (`--payload`, `--expect`,
//! `--expect-size`), so the generator can load any protocol: the escapes
//! parser, `@FILE` reading, how a mismatch is shown, and the repeating
//! region a connection sends from and checks against.

use std::sync::Arc;

/// The request bytes of every request, and what each response must be.
#[derive(Clone, Debug, PartialEq)]
pub struct Payload {
    pub request: Arc<[u8]>,
    pub response: Expect,
}

/// How a response to a `--payload` request is recognised and checked. The
/// generator cannot know where an arbitrary protocol's response ends, so one
/// of these is required: it is also the framing.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// Exactly these bytes (`--expect`).
    Exact(Arc<[u8]>),
    /// Exactly this many bytes, content unchecked (`--expect-size`).
    Size(u32),
}

impl Expect {
    pub fn len(&self) -> u32 {
        match self {
            Expect::Exact(b) => b.len() as u32,
            Expect::Size(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes `\r \n \t \\ \xHH`; any other backslash sequence is refused with
/// its byte position, so a typo never sends bytes the user did not mean.
pub(crate) fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let byte = match b.get(i + 1) {
            Some(b'r') => b'\r',
            Some(b'n') => b'\n',
            Some(b't') => b'\t',
            Some(b'\\') => b'\\',
            Some(b'x') => {
                let hex = b.get(i + 2..i + 4).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .filter(|h| h.bytes().all(|d| d.is_ascii_hexdigit()))
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                let Some(v) = hex else {
                    return Err(format!(
                        "\\x at byte {i} needs two hex digits, e.g. \\x0a or \\xFF"
                    ));
                };
                out.push(v);
                i += 4;
                continue;
            }
            None => return Err(format!("a lone \\ ends the text at byte {i}: write \\\\")),
            Some(_) => {
                let seq: String = s[i..].chars().take(2).collect();
                return Err(format!(
                    "unknown escape {seq} at byte {i}: use \\r \\n \\t \\\\ or \\xHH"
                ));
            }
        };
        out.push(byte);
        i += 2;
    }
    Ok(out)
}

/// `--flag TEXT` (escapes decoded) or `--flag @FILE` (the file's bytes, as
/// they are): at least 1 and at most `max` bytes.
pub(crate) fn load(flag: &str, value: &str, max: u64) -> Result<Vec<u8>, String> {
    let bytes = match value.strip_prefix('@') {
        Some(path) => read_bounded(flag, path, max)?,
        None => unescape(value).map_err(|e| format!("--{flag} {value:?}: {e}"))?,
    };
    if bytes.is_empty() {
        return Err(format!(
            "--{flag} {value:?} is empty: give at least one byte"
        ));
    }
    if bytes.len() as u64 > max {
        return Err(format!(
            "--{flag} is {} bytes, more than the {max}-byte limit",
            bytes.len()
        ));
    }
    Ok(bytes)
}

fn read_bounded(flag: &str, path: &str, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("--{flag} @{path}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("--{flag} @{path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("--{flag} @{path} is not a regular file"));
    }
    let mut bytes = Vec::new();
    // One byte over the limit is enough to know it is too large.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("--{flag} @{path}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "--{flag} @{path} is larger than the {max}-byte limit"
        ));
    }
    Ok(bytes)
}

/// Bytes for a message: printable ASCII as is, the rest escaped as
/// `unescape` reads them, cut after `max` bytes with "...".
pub(crate) fn show(bytes: &[u8], max: usize) -> String {
    let mut s = String::from("\"");
    for &b in bytes.iter().take(max) {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\x22"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    if bytes.len() > max {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

/// `unit` repeated into one region a connection sends from (or checks
/// against) without copying: the `len <= period` bytes from stream
/// position `p` are the contiguous slice at `p % period`, for any `len` up
/// to `max_run(p)`. At least two copies and 64 KiB, so a send is never
/// shorter than one unit nor tiny for a short unit.
pub(crate) fn repeat_region(unit: &[u8]) -> Box<[u8]> {
    let copies = (65_536usize.div_ceil(unit.len().max(1))).max(2);
    unit.repeat(copies).into_boxed_slice()
}

/// Checks a stream that is `unit` repeated (responses to `--expect`),
/// however the reads are split; `region` comes from `repeat_region(unit)`.
#[derive(Clone, Debug, Default)]
pub(crate) struct RepeatCheck {
    /// Stream bytes checked so far.
    pub position: u64,
}

impl RepeatCheck {
    /// On mismatch returns the stream offset of the first wrong byte.
    pub(crate) fn check(&mut self, region: &[u8], period: usize, got: &[u8]) -> Result<(), u64> {
        let mut rest = got;
        while !rest.is_empty() {
            let at = (self.position % period.max(1) as u64) as usize;
            let avail = region.len().saturating_sub(at).max(1);
            let (chunk, tail) = rest.split_at(rest.len().min(avail));
            let expect = region.get(at..at + chunk.len()).unwrap_or(&[]);
            if expect != chunk {
                let bad = chunk
                    .iter()
                    .zip(expect.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(expect.len().min(chunk.len()));
                return Err(self.position + bad as u64);
            }
            self.position += chunk.len() as u64;
            rest = tail;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_escape_decodes() {
        assert_eq!(
            unescape(r"PING\r\n\t\\\x00\xfF\x41z").unwrap(),
            b"PING\r\n\t\\\x00\xffAz".to_vec()
        );
        assert_eq!(unescape("plain é").unwrap(), "plain é".as_bytes().to_vec());
        assert_eq!(unescape("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn bad_escapes_are_named_with_their_position() {
        let e = unescape(r"ab\q").unwrap_err();
        assert!(e.contains(r"\q") && e.contains("byte 2"), "{e}");
        let e = unescape(r"\x4").unwrap_err();
        assert!(e.contains("two hex digits") && e.contains("byte 0"), "{e}");
        let e = unescape(r"x\xg1").unwrap_err();
        assert!(e.contains("two hex digits") && e.contains("byte 1"), "{e}");
        let e = unescape(r"\x").unwrap_err();
        assert!(e.contains("two hex digits"), "{e}");
        let e = unescape("end\\").unwrap_err();
        assert!(e.contains("lone") && e.contains("byte 3"), "{e}");
        // A multi-byte character after the backslash is shown whole.
        let e = unescape(r"\é").unwrap_err();
        assert!(e.contains(r"\é"), "{e}");
    }

    #[test]
    fn load_refuses_empty_and_oversized_and_reads_files_raw() {
        let e = load("payload", "", 16).unwrap_err();
        assert!(e.contains("--payload") && e.contains("empty"), "{e}");
        let e = load("expect", "0123456789abcdefX", 16).unwrap_err();
        assert!(e.contains("--expect") && e.contains("16-byte limit"), "{e}");
        let dir = std::env::temp_dir().join(format!("ringfwd-payload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("q.bin");
        std::fs::write(&f, b"\\n\x00raw").unwrap();
        let arg = format!("@{}", f.display());
        assert_eq!(load("payload", &arg, 16).unwrap(), b"\\n\x00raw".to_vec());
        let e = load("payload", &arg, 4).unwrap_err();
        assert!(
            e.contains(&f.display().to_string()) && e.contains("4-byte"),
            "{e}"
        );
        std::fs::write(&f, b"").unwrap();
        assert!(load("payload", &arg, 16).unwrap_err().contains("empty"));
        let e = load("payload", "@/nonexistent/ringfwd", 16).unwrap_err();
        assert!(e.contains("/nonexistent/ringfwd"), "{e}");
        let e = load("payload", &format!("@{}", dir.display()), 16).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn show_escapes_and_truncates() {
        assert_eq!(show(b"+PONG\r\n", 64), r#""+PONG\r\n""#);
        assert_eq!(show(b"ab\x00\"", 64), r#""ab\x00\x22""#);
        assert_eq!(show(b"abcdef", 3), r#""abc"... (6 bytes)"#);
        assert_eq!(unescape(r"+PONG\r\n").unwrap(), b"+PONG\r\n");
    }

    #[test]
    fn repeated_stream_checks_across_any_split_and_finds_a_flip() {
        for unit in [&b"+PONG\r\n"[..], &[7u8; 70_000][..], b"x"] {
            let region = repeat_region(unit);
            assert!(region.len() >= 2 * unit.len() && region.len() >= 65_536);
            let stream = unit.repeat(5);
            for split in [1usize, 3, 7, 4096, 100_000] {
                let mut c = RepeatCheck::default();
                for piece in stream.chunks(split) {
                    assert_eq!(c.check(&region, unit.len(), piece), Ok(()));
                }
                assert_eq!(c.position, stream.len() as u64);
            }
            let mut bad = stream.clone();
            let at = unit.len() * 3 + unit.len() / 2;
            bad[at] ^= 0x20;
            let mut c = RepeatCheck::default();
            assert_eq!(c.check(&region, unit.len(), &bad), Err(at as u64));
        }
    }
}
