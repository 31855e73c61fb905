//! The access log's writer thread and the shards' handles to it.
//!
//! Each shard has its own bounded queue of batches to the writer (no queue or
//! lock shared between shards) and a return queue of emptied buffers, so a
//! shard in a steady state reuses the same few buffers. Memory per shard is at
//! most `QUEUE_BATCHES + 1` batches of `BATCH_BYTES` (plus as many spare
//! buffers waiting to be reused).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use super::record::{AccessRecord, Format};

/// A shard hands its batch over before it grows past this many bytes; so this
/// bounds a shard's buffer and each queued batch.
pub(super) const BATCH_BYTES: usize = 64 * 1024;

/// Batches a shard may have queued to the writer. With `BATCH_BYTES` this
/// lets a shard's lines wait up to 512 KiB (about 2500 JSON lines) while the
/// writer is slow, before lines are dropped.
pub(super) const QUEUE_BATCHES: usize = 8;

/// Room kept for the next line: a batch with less free is handed over first,
/// so formatting a line never grows the buffer. A longer line (only a
/// listener name or SNI full of escapes can make one) still fits; the buffer
/// grows once.
const LINE_RESERVE: usize = 2048;

/// How long the writer sleeps when no shard has woken it. Shards and `reopen`
/// wake it, so this only bounds the wait if a wake-up were ever missed.
const IDLE_PARK: Duration = Duration::from_secs(1);

/// At most one warning about failed writes per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Where lines go: `[log] access`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sink {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Sink {
    /// `"stdout"` and `"stderr"` are the process's streams; anything else is
    /// a file path.
    #[cfg(test)]
    pub(crate) fn from_config(value: &str) -> Sink {
        match value {
            "stdout" => Sink::Stdout,
            "stderr" => Sink::Stderr,
            path => Sink::File(PathBuf::from(path)),
        }
    }
}

impl fmt::Display for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Stdout => f.write_str("stdout"),
            Sink::Stderr => f.write_str("stderr"),
            Sink::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why the access log could not start.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The file (or a duplicate of stdout/stderr) could not be opened.
    Open { sink: Sink, source: io::Error },
    /// The writer thread could not be spawned.
    Spawn(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Open {
                sink: Sink::File(path),
                source,
            } => write!(
                f,
                "[log] access = {:?}: cannot open the file for appending: {source}; create its \
                 directory and let the user ringfwd runs as write there, or set [log] access to \
                 \"stdout\" or \"stderr\", or remove the key to log no accesses",
                path.display().to_string()
            ),
            StartError::Open { sink, source } => write!(
                f,
                "[log] access = \"{sink}\": cannot duplicate the process's {sink}: {source}; \
                 start ringfwd with {sink} open, or set [log] access to a file path"
            ),
            StartError::Spawn(e) => write!(
                f,
                "cannot start the access log writer thread: {e}; raise the process's thread \
                 limit (ulimit -u) or remove [log] access"
            ),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Open { source, .. } => Some(source),
            StartError::Spawn(e) => Some(e),
        }
    }
}

/// How `AccessLog::shutdown` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shutdown {
    /// Every queued line was written (or counted as dropped) and the writer
    /// thread has exited.
    Drained,
    /// The writer was still blocked writing (a pipe nobody reads, a hung
    /// disk) when the wait ran out; it was left behind, its lines lost.
    StillWriting,
}

/// One shard's handed-over lines.
struct Batch {
    text: String,
    lines: u64,
}

/// Shared by the control thread and the writer.
struct Control {
    reopen: AtomicBool,
}

/// The control thread's side: reopen and shutdown.
pub(crate) struct AccessLog {
    thread: JoinHandle<()>,
    control: Arc<Control>,
    sink: Sink,
}

impl AccessLog {
    /// Opens `sink` (a file: O_APPEND|O_CREAT, mode 0640) and starts the
    /// writer thread with one queue per shard. An error names the path and
    /// what to do; the runtime reports it as a startup error.
    pub(crate) fn start(
        sink: &Sink,
        format: Format,
        shards: usize,
    ) -> Result<(AccessLog, Vec<AccessLogShard>), StartError> {
        let out = Output::open(sink).map_err(|source| StartError::Open {
            sink: sink.clone(),
            source,
        })?;
        let control = Arc::new(Control {
            reopen: AtomicBool::new(false),
        });
        let mut queues = Vec::with_capacity(shards);
        let mut ends = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (batches_tx, batches_rx) = mpsc::sync_channel(QUEUE_BATCHES);
            let (spares_tx, spares_rx) = mpsc::sync_channel(QUEUE_BATCHES + 1);
            let progress = Arc::new(Progress::default());
            queues.push(ShardQueue {
                batches: batches_rx,
                spares: spares_tx,
                progress: Arc::clone(&progress),
            });
            ends.push((batches_tx, spares_rx, progress));
        }
        let mut writer = Writer {
            out,
            queues,
            control: Arc::clone(&control),
            warn: WarnLimit::default(),
            midline: false,
        };
        let thread = thread::Builder::new()
            .name("ringfwd-accesslog".into())
            .spawn(move || writer.run())
            .map_err(StartError::Spawn)?;
        let handles = ends
            .into_iter()
            .map(|(tx, spares, progress)| AccessLogShard {
                format,
                batch: String::with_capacity(BATCH_BYTES),
                lines: 0,
                tx: Some(tx),
                spares,
                writer: thread.thread().clone(),
                sent: 0,
                dropped: 0,
                progress,
            })
            .collect();
        Ok((
            AccessLog {
                thread,
                control,
                sink: sink.clone(),
            },
            handles,
        ))
    }

    /// Asks the writer to reopen the file (SIGUSR1, after logrotate renamed
    /// it). It does so before it writes its next batch; a failure is logged
    /// and the old file kept. Stdout and stderr are not reopened.
    pub(crate) fn reopen(&self) {
        self.control.reopen.store(true, Ordering::Release);
        self.thread.thread().unpark();
    }

    /// Waits, up to `wait`, for the writer to drain every queue and exit. Call
    /// it after the shards dropped their handles (the writer exits only when
    /// every handle is gone).
    pub(crate) fn shutdown(self, wait: Duration) -> Shutdown {
        let deadline = Instant::now() + wait;
        self.thread.thread().unpark();
        while !self.thread.is_finished() {
            if Instant::now() >= deadline {
                tracing::warn!(
                    "access log: the writer is still writing to {} after {wait:?}; exiting \
                     without it, its queued lines are lost",
                    self.sink
                );
                return Shutdown::StillWriting;
            }
            thread::sleep(Duration::from_millis(5));
        }
        if self.thread.join().is_err() {
            tracing::warn!("access log: the writer thread panicked");
        }
        Shutdown::Drained
    }
}

impl fmt::Debug for AccessLogShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLogShard")
            .field("lines", &self.lines)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

/// A shard's handle: format lines into a local batch, hand it over once per
/// loop turn. Never blocks, never allocates per line.
pub struct AccessLogShard {
    format: Format,
    batch: String,
    lines: u64,
    /// `None` only while dropping.
    tx: Option<SyncSender<Batch>>,
    spares: Receiver<String>,
    writer: Thread,
    /// Batches handed over so far.
    sent: u64,
    /// Lines this shard dropped: a full queue.
    dropped: u64,
    progress: Arc<Progress>,
}

impl AccessLogShard {
    /// Formats one line into the batch. A batch near `BATCH_BYTES` is handed
    /// over first, so a burst within one loop turn is dropped only if the
    /// writer's queue is full.
    pub fn log(&mut self, rec: &AccessRecord) {
        if self.batch.len() + LINE_RESERVE > BATCH_BYTES {
            self.hand_over();
        }
        self.format.append(rec, &mut self.batch);
        self.lines += 1;
    }

    /// Call once per event-loop turn. Hands the batch to the writer when the
    /// writer has written everything this shard handed it before, or when
    /// the batch is half full; otherwise the lines wait in the batch for a
    /// later turn. So a shard logging a line or two per turn while the writer
    /// is busy sends one large batch instead of many small ones: the queue
    /// counts batches, and small ones would fill it with little. A quiet
    /// shard's lines wait at most until its next turn (the loop wakes at
    /// least every second).
    pub fn flush(&mut self) {
        if self.lines == 0 {
            return;
        }
        let in_flight = self.sent > self.progress.batches_done.load(Ordering::Acquire);
        if in_flight && self.batch.len() < BATCH_BYTES / 2 {
            return;
        }
        self.hand_over();
    }

    /// A `try_send` of the batch: on a full queue the batch is dropped and its
    /// lines counted.
    fn hand_over(&mut self) {
        if self.lines == 0 {
            return;
        }
        let batch = Batch {
            text: std::mem::take(&mut self.batch),
            lines: std::mem::take(&mut self.lines),
        };
        let sent = match &self.tx {
            Some(tx) => tx.try_send(batch),
            None => Err(TrySendError::Disconnected(batch)),
        };
        match sent {
            Ok(()) => {
                self.sent += 1;
                self.batch = self
                    .spares
                    .try_recv()
                    .unwrap_or_else(|_| String::with_capacity(BATCH_BYTES));
                self.writer.unpark();
            }
            Err(TrySendError::Full(mut back) | TrySendError::Disconnected(mut back)) => {
                self.dropped += back.lines;
                back.text.clear();
                self.batch = back.text;
            }
        }
    }

    /// Lines of this shard lost so far: dropped at a full queue, or not
    /// written by the writer (a write error). The `access_log_dropped`
    /// counter.
    pub fn dropped(&self) -> u64 {
        self.dropped + self.progress.write_dropped.load(Ordering::Relaxed)
    }
}

impl Drop for AccessLogShard {
    /// Hands over what is left and lets the writer see the queue close.
    fn drop(&mut self) {
        self.hand_over();
        self.tx = None;
        self.writer.unpark();
    }
}

/// The writer's end of one shard's queues.
struct ShardQueue {
    batches: Receiver<Batch>,
    spares: SyncSender<String>,
    progress: Arc<Progress>,
}

/// What the writer did with one shard's batches; written by the writer only,
/// read by that shard only.
#[derive(Default)]
struct Progress {
    /// Batches written (or failed) so far.
    batches_done: AtomicU64,
    /// Lines of those batches the writer failed to write.
    write_dropped: AtomicU64,
}

/// The open sink.
enum Output {
    File { file: File, path: PathBuf },
    Stdio(File),
}

impl Output {
    fn open(sink: &Sink) -> io::Result<Output> {
        match sink {
            Sink::File(path) => Ok(Output::File {
                file: open_append(path)?,
                path: path.clone(),
            }),
            // A duplicate of the descriptor: writes go straight to write(2),
            // past std's buffering and its process-wide lock.
            Sink::Stdout => Ok(Output::Stdio(File::from(
                io::stdout().as_fd().try_clone_to_owned()?,
            ))),
            Sink::Stderr => Ok(Output::Stdio(File::from(
                io::stderr().as_fd().try_clone_to_owned()?,
            ))),
        }
    }

    fn file(&mut self) -> &mut File {
        match self {
            Output::File { file, .. } | Output::Stdio(file) => file,
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// Warnings about lost lines, at most one per `WARN_EVERY`.
#[derive(Default)]
struct WarnLimit {
    last: Option<Instant>,
    lines_since: u64,
}

impl WarnLimit {
    fn lost(&mut self, lines: u64, err: &io::Error) {
        self.lines_since += lines;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            "access log: write failed ({err}); {} lines dropped since the last warning \
             (counted in access_log_dropped); warnings are limited to one per {}s",
            self.lines_since,
            WARN_EVERY.as_secs()
        );
        self.last = Some(now);
        self.lines_since = 0;
    }
}

/// The writer thread's state.
struct Writer {
    out: Output,
    queues: Vec<ShardQueue>,
    control: Arc<Control>,
    warn: WarnLimit,
    /// The last write stopped inside a line: the next one starts a new line.
    midline: bool,
}

impl Writer {
    /// Takes one batch from each shard in turn until every queue is empty,
    /// sleeps until a shard wakes it, and exits once every shard's handle is
    /// gone and its queue drained.
    fn run(&mut self) {
        loop {
            self.reopen_if_asked();
            let mut wrote = false;
            let mut open = 0;
            for i in 0..self.queues.len() {
                let Some(q) = self.queues.get(i) else { break };
                match q.batches.try_recv() {
                    Ok(batch) => {
                        self.write_batch(i, batch);
                        wrote = true;
                        open += 1;
                    }
                    Err(TryRecvError::Empty) => open += 1,
                    Err(TryRecvError::Disconnected) => {}
                }
            }
            if open == 0 {
                return;
            }
            if !wrote {
                thread::park_timeout(IDLE_PARK);
            }
        }
    }

    fn reopen_if_asked(&mut self) {
        if !self.control.reopen.swap(false, Ordering::AcqRel) {
            return;
        }
        let Output::File { file, path } = &mut self.out else {
            return;
        };
        match open_append(path) {
            Ok(new) => {
                *file = new;
                self.midline = false;
                tracing::info!("access log: reopened {}", path.display());
            }
            Err(e) => tracing::warn!(
                "access log: cannot reopen {}: {e}; still writing to the file opened before \
                 (check the directory exists and is writable, then send SIGUSR1 again)",
                path.display()
            ),
        }
    }

    /// Writes one batch; lines it could not write are counted against its
    /// shard. The emptied buffer goes back to the shard for reuse.
    fn write_batch(&mut self, shard: usize, mut batch: Batch) {
        self.reopen_if_asked();
        if self.midline {
            // Best effort: a failure here shows in the batch's own write.
            self.midline = write_fully(self.out.file(), b"\n").is_err();
        }
        if let Err((written, err)) = write_fully(self.out.file(), batch.text.as_bytes()) {
            let lost = lines_lost(batch.text.as_bytes(), written);
            if written > 0 {
                self.midline = stopped_midline(batch.text.as_bytes(), written);
            }
            if let Some(q) = self.queues.get(shard) {
                q.progress.write_dropped.fetch_add(lost, Ordering::Relaxed);
            }
            self.warn.lost(lost, &err);
        }
        batch.text.clear();
        if let Some(q) = self.queues.get(shard) {
            // Full: the shard has spares enough; this one is freed.
            let _ = q.spares.try_send(batch.text);
            q.progress.batches_done.fetch_add(1, Ordering::Release);
        }
    }
}

/// Lines of `text` not written when a write stopped after `written` bytes:
/// a line cut short is lost too, and its newline is in the rest.
fn lines_lost(text: &[u8], written: usize) -> u64 {
    let rest = text.get(written..).unwrap_or_default();
    rest.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Whether a write that stopped after `written` (> 0) bytes left a line
/// without its newline in the file.
fn stopped_midline(text: &[u8], written: usize) -> bool {
    !text.get(..written).is_some_and(|w| w.ends_with(b"\n"))
}

/// write(2) until all of `buf` is written: a short write is continued and
/// EINTR retried. On an error, how much was written and the error.
fn write_fully(out: &mut impl Write, buf: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut written = 0;
    while let Some(rest) = buf.get(written..).filter(|r| !r.is_empty()) {
        match out.write(rest) {
            Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((written, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
