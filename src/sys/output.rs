//! The process's own output: log lines to stderr, reports to stdout. Neither
//! may take the forwarder down: a log sink whose reader went away (EPIPE) or
//! whose disk is full (ENOSPC) costs log lines, never connections. Rust
//! ignores SIGPIPE at start-up, so a write to a closed pipe returns EPIPE
//! here instead of killing the process (see `signals::ignore_sigpipe`).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Log writes that failed since start. One process-wide counter owned by the
/// control plane's log sink: shards bump it only when a log line is lost,
/// which is rare and already off the fast path, so a shared atomic is fine.
static LOG_WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Log writes that failed (and were dropped) so far.
pub fn log_write_errors() -> u64 {
    LOG_WRITE_ERRORS.load(Ordering::Relaxed)
}

/// A writer for log lines that never fails: a write error is counted in
/// `log_write_errors` and the line is dropped. tracing-subscriber reports a
/// writer's error by printing to stderr with `eprintln!`, which panics when
/// stderr itself is broken, so the error must not reach it.
#[derive(Debug, Default)]
pub struct LogWriter<W = io::Stderr> {
    inner: W,
}

impl LogWriter {
    /// The process's stderr.
    pub fn stderr() -> Self {
        LogWriter {
            inner: io::stderr(),
        }
    }
}

impl<W: Write> LogWriter<W> {
    pub fn new(inner: W) -> Self {
        LogWriter { inner }
    }
}

impl<W: Write> Write for LogWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.inner.write_all(buf).is_err() {
            count_lost_line();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.inner.flush().is_err() {
            count_lost_line();
        }
        Ok(())
    }
}

fn count_lost_line() {
    LOG_WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
}

/// One message line to stderr (`ringfwd: ...` errors and notes outside the
/// log): like `eprintln!`, but a broken stderr loses the line instead of
/// panicking.
pub fn message(line: &str) {
    let mut err = LogWriter::stderr();
    let _ = err.write(format!("{line}\n").as_bytes());
}

/// How writing a report to stdout ended.
#[derive(Debug)]
pub enum Printed {
    /// Every byte was written.
    All,
    /// The reader closed the pipe (`ringfwd check | head`): it wanted no
    /// more, which is not an error.
    ReaderGone,
    /// Any other write error (ENOSPC on `>/dev/full`, EIO).
    Failed(io::Error),
}

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> Printed {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Printed::All,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Printed::ReaderGone,
        Err(e) => Printed::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Broken(io::ErrorKind);

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(self.0.into())
        }
    }

    #[test]
    fn a_failing_log_sink_is_counted_and_never_an_error() {
        for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::StorageFull] {
            let before = log_write_errors();
            let mut w = LogWriter::new(Broken(kind));
            assert_eq!(w.write(b"a line\n").ok(), Some(7));
            assert!(w.write_all(b"another\n").is_ok());
            assert!(w.flush().is_ok());
            // Other tests may lose lines concurrently: at least ours counted.
            assert!(log_write_errors() >= before + 3, "{kind:?}");
        }
    }

    #[test]
    fn a_working_log_sink_passes_bytes_through() {
        let mut w = LogWriter::new(Vec::new());
        w.write_all(b"hello").expect("write");
        assert_eq!(w.inner, b"hello");
    }
}
