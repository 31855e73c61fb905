use super::*;
use crate::accesslog::record::Proto;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::time::{SystemTime, UNIX_EPOCH};

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "ringfwd-accesslog-{}-{n}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rec(listener: &str) -> AccessRecord<'_> {
    let client: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    AccessRecord {
        time: UNIX_EPOCH + Duration::from_millis(1_796_560_496_789),
        listener,
        proto: Proto::Tcp,
        client,
        peer: client,
        local: "127.0.0.1:8080".parse().unwrap(),
        upstream: Some("127.0.0.1:9000".parse().unwrap()),
        sni: None,
        connect_ms: Some(1),
        duration_ms: 20,
        bytes_c2u: 100,
        bytes_u2c: 200,
        reason: "client_eof",
        destination: None,
        user: None,
    }
}

/// Polls `cond` until it holds, for up to 10 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn lines_from_every_shard_arrive_in_order() {
    let dir = temp_dir("arrive");
    let path = dir.join("access.log");
    let (log, mut shards) = AccessLog::start(&Sink::File(path.clone()), Format::Text, 2).unwrap();
    let names = ["a0", "a1", "a2", "b0", "b1"];
    for (i, name) in names.iter().enumerate() {
        let shard = &mut shards[usize::from(name.starts_with('b'))];
        shard.log(&rec(name));
        if i % 2 == 0 {
            shard.flush();
        }
    }
    // The rest is handed over when the shards drop their handles.
    drop(shards);
    assert_eq!(log.shutdown(Duration::from_secs(10)), Shutdown::Drained);
    let text = read(&path);
    let listeners: Vec<&str> = text.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    let of = |p: char| -> Vec<&str> {
        listeners
            .iter()
            .copied()
            .filter(|l| l.starts_with(p))
            .collect()
    };
    assert_eq!(of('a'), ["a0", "a1", "a2"], "{text}");
    assert_eq!(of('b'), ["b0", "b1"], "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & !0o640,
        0,
        "created with at most 0640 (umask applies): {mode:o}"
    );
}

#[test]
fn json_format_lines_are_json() {
    let dir = temp_dir("json");
    let path = dir.join("access.log");
    let (log, mut shards) = AccessLog::start(&Sink::File(path.clone()), Format::Json, 1).unwrap();
    shards[0].log(&rec("web"));
    shards[0].log(&rec("web"));
    drop(shards);
    assert_eq!(log.shutdown(Duration::from_secs(10)), Shutdown::Drained);
    let text = read(&path);
    assert_eq!(text.lines().count(), 2);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["listener"], "web");
    }
}

#[test]
fn reopen_after_rename_writes_a_new_file() {
    let dir = temp_dir("rotate");
    let path = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let (log, mut shards) = AccessLog::start(&Sink::File(path.clone()), Format::Text, 1).unwrap();
    shards[0].log(&rec("before"));
    shards[0].flush();
    wait_until("the first line", || read(&path).contains("before"));
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen();
    // Sent after reopen(): the writer reopens before it writes this batch.
    shards[0].log(&rec("after"));
    shards[0].flush();
    drop(shards);
    assert_eq!(log.shutdown(Duration::from_secs(10)), Shutdown::Drained);
    assert_eq!(read(&rotated).lines().count(), 1);
    assert!(read(&rotated).contains(" before "));
    assert_eq!(read(&path).lines().count(), 1);
    assert!(read(&path).contains(" after "));
}

#[test]
fn failed_reopen_keeps_the_old_file() {
    let dir = temp_dir("reopen-fails");
    let logs = dir.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let path = logs.join("access.log");
    let (log, mut shards) = AccessLog::start(&Sink::File(path.clone()), Format::Text, 1).unwrap();
    shards[0].log(&rec("before"));
    shards[0].flush();
    wait_until("the first line", || read(&path).contains("before"));
    // The directory goes away: the path cannot be opened again.
    let moved = dir.join("logs.old");
    std::fs::rename(&logs, &moved).unwrap();
    log.reopen();
    shards[0].log(&rec("after"));
    shards[0].flush();
    drop(shards);
    assert_eq!(log.shutdown(Duration::from_secs(10)), Shutdown::Drained);
    let kept = read(&moved.join("access.log"));
    assert_eq!(kept.lines().count(), 2, "{kept}");
    assert!(kept.contains(" after "));
    assert!(!path.exists());
}

#[test]
fn write_errors_are_counted_per_shard() {
    let (log, mut shards) =
        AccessLog::start(&Sink::File("/dev/full".into()), Format::Text, 2).unwrap();
    for _ in 0..10 {
        shards[0].log(&rec("full"));
    }
    // flush() hands a batch over once the writer is done with the last one.
    wait_until("10 lines dropped", || {
        shards[0].flush();
        shards[0].dropped() == 10
    });
    for _ in 0..5 {
        shards[0].log(&rec("full"));
    }
    wait_until("15 lines dropped", || {
        shards[0].flush();
        shards[0].dropped() == 15
    });
    assert_eq!(shards[1].dropped(), 0);
    drop(shards);
    assert_eq!(log.shutdown(Duration::from_secs(10)), Shutdown::Drained);
}

#[test]
fn opening_fails_with_the_path_and_what_to_do() {
    let dir = temp_dir("no-dir");
    let path = dir.join("missing").join("access.log");
    let Err(err) = AccessLog::start(&Sink::File(path.clone()), Format::Text, 1) else {
        panic!("opened a file in a missing directory");
    };
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("[log] access"), "{msg}");
    assert!(msg.contains("create its directory"), "{msg}");
    assert!(matches!(err, StartError::Open { .. }));
}

#[test]
fn sink_from_config() {
    assert_eq!(Sink::from_config("stdout"), Sink::Stdout);
    assert_eq!(Sink::from_config("stderr"), Sink::Stderr);
    assert_eq!(
        Sink::from_config("/var/log/a.log"),
        Sink::File("/var/log/a.log".into())
    );
}

#[test]
fn a_burst_is_handed_over_before_the_batch_outgrows_its_bound() {
    let dir = temp_dir("burst");
    let path = dir.join("access.log");
    let (log, mut shards) = AccessLog::start(&Sink::File(path.clone()), Format::Json, 1).unwrap();
    let shard = &mut shards[0];
    let lines = 3 * BATCH_BYTES / 200; // three batches' worth, no flush
    for _ in 0..lines {
        shard.log(&rec("burst"));
        assert!(shard.batch.len() <= BATCH_BYTES);
        assert!(shard.batch.capacity() <= BATCH_BYTES, "the batch grew");
    }
    drop(shards);
    assert_eq!(log.shutdown(Duration::from_secs(10)), Shutdown::Drained);
    assert_eq!(read(&path).lines().count(), lines);
}

/// A handle on queues of the test's own, with no writer thread: the test
/// plays the writer.
fn bare_handle() -> (AccessLogShard, Receiver<Batch>, Arc<Progress>) {
    let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
    let (_spares_tx, spares) = mpsc::sync_channel(1);
    let progress = Arc::new(Progress::default());
    let handle = AccessLogShard {
        format: Format::Text,
        batch: String::with_capacity(BATCH_BYTES),
        lines: 0,
        tx: Some(tx),
        spares,
        writer: thread::current(),
        sent: 0,
        dropped: 0,
        progress: Arc::clone(&progress),
    };
    (handle, rx, progress)
}

#[test]
fn lines_gather_while_the_writer_is_busy() {
    let (mut shard, rx, progress) = bare_handle();
    shard.log(&rec("first"));
    shard.flush();
    assert_eq!(
        rx.try_recv().unwrap().lines,
        1,
        "an idle writer gets it at once"
    );
    // Not yet written: one line per turn gathers into one batch.
    for _ in 0..10 {
        shard.log(&rec("more"));
        shard.flush();
    }
    assert!(
        rx.try_recv().is_err(),
        "small batches while the writer is busy"
    );
    progress.batches_done.store(1, Ordering::Release);
    shard.flush();
    assert_eq!(rx.try_recv().unwrap().lines, 10);
    // Still busy with that one: a half-full batch goes anyway.
    let mut lines = 0;
    for _ in 0..BATCH_BYTES {
        shard.log(&rec("burst"));
        lines += 1;
        if shard.batch.len() >= BATCH_BYTES / 2 {
            break;
        }
        shard.flush();
        assert!(rx.try_recv().is_err(), "sent before half full");
    }
    shard.flush();
    assert_eq!(rx.try_recv().unwrap().lines, lines);
    assert_eq!(shard.dropped(), 0);
}

/// Takes at most `chunk` bytes per write, after an EINTR before each, then
/// fails with ENOSPC once `room` bytes are taken.
struct Flaky {
    taken: Vec<u8>,
    chunk: usize,
    room: usize,
    interrupt_next: bool,
}

impl Write for Flaky {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.interrupt_next = !self.interrupt_next;
        if self.interrupt_next {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.chunk).min(self.room - self.taken.len());
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.taken.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn short_writes_and_eintr_are_continued_and_an_error_counts_what_is_left() {
    let text = b"line one\nline two\nline three\n";
    let mut all = Flaky {
        taken: Vec::new(),
        chunk: 3,
        room: usize::MAX,
        interrupt_next: false,
    };
    assert!(write_fully(&mut all, text).is_ok());
    assert_eq!(all.taken, text);

    let mut full = Flaky {
        taken: Vec::new(),
        chunk: 3,
        room: 12, // "line one\nlin"
        interrupt_next: false,
    };
    let (written, err) = write_fully(&mut full, text).unwrap_err();
    assert_eq!(written, 12);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    // "line two" was cut short: lost with "line three".
    assert_eq!(lines_lost(text, written), 2);
    assert!(stopped_midline(text, written));
    assert_eq!(lines_lost(text, 9), 2);
    assert!(!stopped_midline(text, 9));
    assert_eq!(lines_lost(text, 0), 3);
}

/// A FIFO with a reader that never reads: the writer blocks in write(2) once
/// the pipe is full, as it would on a stuck log pipe or a hung disk.
struct StuckFifo {
    path: PathBuf,
    reader: File,
}

fn stuck_fifo(name: &str) -> Option<StuckFifo> {
    let path = temp_dir(name).join("fifo");
    match Command::new("mkfifo").arg(&path).status() {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("skipped: mkfifo failed: {other:?}");
            return None;
        }
    }
    // Non-blocking, so opening the read end does not wait for a writer.
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    Some(StuckFifo { path, reader })
}

/// Logs and flushes until a line is dropped; returns the lines logged. The
/// bound on iterations is far above what the pipe and queue can hold, so a
/// `log` or `flush` that blocked would hang here instead of returning.
fn log_until_dropped(shard: &mut AccessLogShard) -> u64 {
    let before = shard.dropped();
    let mut logged = 0;
    for _ in 0..10_000 {
        for _ in 0..100 {
            shard.log(&rec("stuck"));
            logged += 1;
        }
        shard.flush();
        if shard.dropped() > before {
            return logged;
        }
    }
    panic!("{logged} lines logged and none dropped: the queue is not bounded");
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let Some(fifo) = stuck_fifo("full-queue") else {
        return;
    };
    let (log, mut shards) =
        AccessLog::start(&Sink::File(fifo.path.clone()), Format::Text, 1).unwrap();
    let mut logged = log_until_dropped(&mut shards[0]);
    // Still full: more lines keep being dropped, at once.
    let before = shards[0].dropped();
    logged += log_until_dropped(&mut shards[0]);
    assert!(shards[0].dropped() > before);
    // A reader drains the FIFO: every line was either written or counted.
    let path = fifo.path.clone();
    let reader = thread::spawn(move || {
        let mut all = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut all).unwrap();
        all
    });
    // Everything handed over and written before the count is read: a drop at
    // the handle's last hand-over would not be counted where we can see it.
    let shard = &mut shards[0];
    wait_until("the writer to catch up", || {
        shard.flush();
        shard.lines == 0 && shard.progress.batches_done.load(Ordering::Acquire) == shard.sent
    });
    let dropped = shard.dropped();
    drop(shards);
    assert_eq!(log.shutdown(Duration::from_secs(10)), Shutdown::Drained);
    drop(fifo.reader);
    let all = reader.join().unwrap();
    let read_lines = all.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(
        read_lines + dropped,
        logged,
        "read {read_lines}, dropped {dropped}"
    );
}

#[test]
fn shutdown_gives_up_on_a_stuck_writer() {
    let Some(fifo) = stuck_fifo("stuck-shutdown") else {
        return;
    };
    let (log, mut shards) =
        AccessLog::start(&Sink::File(fifo.path.clone()), Format::Text, 1).unwrap();
    log_until_dropped(&mut shards[0]);
    drop(shards);
    assert_eq!(
        log.shutdown(Duration::from_millis(50)),
        Shutdown::StillWriting
    );
    // Closing the only reader ends the writer's write(2) with EPIPE, so the
    // thread left behind exits.
    drop(fifo.reader);
}

/// This thread's time on a CPU so far (ns), from /proc/thread-self/schedstat:
/// on a loaded machine the wall clock also counts time spent preempted.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Times `f` over `LINES`: (wall, on-CPU) ns per line.
fn per_line(mut f: impl FnMut()) -> (f64, f64) {
    let (start, cpu) = (Instant::now(), thread_cpu_ns());
    f();
    let n = MEASURE_LINES as f64;
    let cpu = thread_cpu_ns().saturating_sub(cpu) as f64;
    (start.elapsed().as_nanos() as f64 / n, cpu / n)
}

const MEASURE_LINES: u64 = 1_000_000;

/// Not a check: the cost per line of formatting alone, and of `log` (format
/// into the batch, hand over every 32 lines) with the writer thread writing to
/// /dev/null, printed as wall-clock and on-CPU ns per line. Run with
/// `cargo test --release --lib accesslog::writer::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_log_cost_per_line() {
    let mut r = rec("web-frontend");
    r.sni = Some("www.example.com");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load: {}", load.trim());
    let (now_wall, now_cpu) = per_line(|| {
        for _ in 0..MEASURE_LINES {
            r.time = std::hint::black_box(SystemTime::now());
        }
    });
    println!("SystemTime::now: wall {now_wall:.0} ns, cpu {now_cpu:.0} ns");
    // A reference beside ours: serde_json writing the same fields (the time
    // as a ready string, so it does less than format_json).
    #[derive(serde::Serialize)]
    struct Same<'a> {
        time: &'a str,
        listener: &'a str,
        proto: &'a str,
        client: SocketAddr,
        peer: Option<SocketAddr>,
        local: SocketAddr,
        upstream: Option<SocketAddr>,
        sni: Option<&'a str>,
        connect_ms: Option<u64>,
        duration_ms: u64,
        bytes_c2u: u64,
        bytes_u2c: u64,
        datagrams_c2u: Option<u64>,
        datagrams_u2c: Option<u64>,
        reason: &'a str,
        destination: Option<&'a str>,
        user: Option<&'a str>,
    }
    let mut out = Vec::with_capacity(BATCH_BYTES);
    let (serde_wall, serde_cpu) = per_line(|| {
        for i in 0..MEASURE_LINES {
            let same = Same {
                time: "2026-12-06T12:34:56.789Z",
                listener: r.listener,
                proto: "tcp",
                client: r.client,
                peer: None,
                local: r.local,
                upstream: r.upstream,
                sni: r.sni,
                connect_ms: r.connect_ms,
                duration_ms: r.duration_ms,
                bytes_c2u: i,
                bytes_u2c: r.bytes_u2c,
                datagrams_c2u: None,
                datagrams_u2c: None,
                reason: r.reason,
                destination: None,
                user: None,
            };
            if out.len() > BATCH_BYTES - LINE_RESERVE {
                out.clear();
            }
            let _ = serde_json::to_writer(&mut out, &same);
            out.push(b'\n');
        }
    });
    println!("serde_json reference: wall {serde_wall:.0} ns, cpu {serde_cpu:.0} ns");
    for format in [Format::Json, Format::Text] {
        let mut out = String::with_capacity(BATCH_BYTES);
        let (fmt_wall, fmt_cpu) = per_line(|| {
            for i in 0..MEASURE_LINES {
                r.bytes_c2u = i;
                if out.len() > BATCH_BYTES - LINE_RESERVE {
                    out.clear();
                }
                format.append(&r, &mut out);
            }
        });
        let (log, mut shards) =
            AccessLog::start(&Sink::File("/dev/null".into()), format, 1).unwrap();
        let shard = &mut shards[0];
        let (log_wall, log_cpu) = per_line(|| {
            for i in 0..MEASURE_LINES {
                r.bytes_c2u = i;
                shard.log(&r);
                if i % 32 == 31 {
                    shard.flush();
                }
            }
        });
        let dropped = shard.dropped();
        // One line per loop turn: a hand-over (and a wake of the writer when
        // it sleeps) per line.
        let (each_wall, each_cpu) = per_line(|| {
            for i in 0..MEASURE_LINES {
                r.bytes_c2u = i;
                shard.log(&r);
                shard.flush();
            }
        });
        let dropped_each = shard.dropped() - dropped;
        drop(shards);
        log.shutdown(Duration::from_secs(30));
        println!(
            "{format:?} ({} bytes/line): format wall {fmt_wall:.0} ns, cpu {fmt_cpu:.0} ns; \
             log+flush/32 wall {log_wall:.0} ns, cpu {log_cpu:.0} ns ({dropped} of \
             {MEASURE_LINES} dropped); log+flush each wall {each_wall:.0} ns, cpu \
             {each_cpu:.0} ns ({dropped_each} dropped)",
            {
                let mut one = String::new();
                format.append(&r, &mut one);
                one.len()
            }
        );
    }
}
