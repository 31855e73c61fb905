//! Evaluation of registered (fixed) buffers on the send side: bulk transfer
//! over loopback TCP from one io_uring, one send in flight (as the relay does),
//! comparing IORING_OP_SEND (copy), SEND_ZC, and SEND_ZC from the buffer arena
//! registered with IORING_REGISTER_BUFFERS. Plain SEND cannot use fixed
//! buffers at all (the kernel does not implement it: a copying send gains
//! nothing from pre-pinned pages), so zero-copy is where they could matter.
//!
//! `cargo bench --bench send_fixed` writes
//! bench-results/<date>-<host>/send-fixed/{setup.md,raw.csv,summary.md}.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ringfwd::ring::{Cqe, Ring, SendKind};

const TOTAL: u64 = 1 << 30;
const REPS: usize = 3;
const BUFFERS: u32 = 64;
const CQE_F_MORE: u32 = 1 << 1;
const CQE_F_NOTIF: u32 = 1 << 3;

type Mode = SendKind;
const MODES: [Mode; 3] = [SendKind::Copy, SendKind::ZeroCopy, SendKind::ZeroCopyFixed];

fn name(mode: Mode) -> &'static str {
    match mode {
        SendKind::Copy => "send",
        SendKind::ZeroCopy => "send_zc",
        SendKind::ZeroCopyFixed => "send_zc_fixed",
    }
}

/// CPU seconds (user + system) of the calling thread.
fn thread_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime), counted after the comm field.
    (ticks(11) + ticks(12)) / 100.0
}

fn pin(cpu: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
}

struct Row {
    mode: Mode,
    chunk: u32,
    rep: usize,
    secs: f64,
    sender_cpu: f64,
    receiver_cpu: f64,
}

fn run(mode: Mode, chunk: u32, rep: usize) -> Row {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let receiver = std::thread::spawn(move || {
        pin(1);
        let (mut s, _) = listener.accept().expect("accept");
        let cpu0 = thread_cpu();
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0u64;
        while got < TOTAL {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        assert_eq!(got, TOTAL, "receiver got everything");
        thread_cpu() - cpu0
    });
    pin(0);
    let tx = TcpStream::connect(addr).expect("connect");
    let fd = tx.as_raw_fd();
    let mut ring = Ring::new(256, BUFFERS, chunk).expect("ring");
    if mode == SendKind::ZeroCopyFixed {
        ring.register_arena()
            .expect("register the arena (RLIMIT_MEMLOCK?)");
    }
    let mut awaiting_notif = vec![false; BUFFERS as usize];
    let mut cqes: Vec<Cqe> = Vec::new();
    let mut sent = 0u64;
    let mut next = 0u16;
    // (bid, offset, len) of the send in flight.
    let mut in_flight: Option<(u16, u32, u32)> = None;
    let cpu0 = thread_cpu();
    let t = Instant::now();
    while sent < TOTAL || awaiting_notif.iter().any(|b| *b) {
        if in_flight.is_none() && sent < TOTAL && !awaiting_notif[next as usize] {
            let len = (TOTAL - sent).min(u64::from(chunk)) as u32;
            ring.send(mode, fd, next, 0, len, u64::from(next))
                .expect("send");
            in_flight = Some((next, 0, len));
            next = (next + 1) % BUFFERS as u16;
        }
        ring.submit_and_wait(Some(Duration::from_secs(5)), false)
            .expect("enter");
        ring.reap(&mut cqes);
        for c in cqes.drain(..) {
            let bid = c.user_data as u16;
            if c.flags & CQE_F_NOTIF != 0 {
                awaiting_notif[bid as usize] = false;
                continue;
            }
            assert!(c.res > 0, "{mode:?}: send failed: {}", c.res);
            if c.flags & CQE_F_MORE != 0 {
                awaiting_notif[bid as usize] = true;
            }
            let Some((b, off, len)) = in_flight.take() else {
                continue;
            };
            let n = c.res as u32;
            sent += u64::from(n);
            if n < len {
                // Short send: continue from the offset (after its notification
                // for zero-copy, since the buffer is still in use).
                ring.send(mode, fd, b, off + n, len - n, u64::from(b))
                    .expect("resend");
                in_flight = Some((b, off + n, len - n));
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let sender_cpu = thread_cpu() - cpu0;
    drop(tx);
    let receiver_cpu = receiver.join().expect("receiver");
    Row {
        mode,
        chunk,
        rep,
        secs,
        sender_cpu,
        receiver_cpu,
    }
}

fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench --no-run` / test discovery
    }
    let host = sh("hostname");
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("bench-results")
        .join(format!("{}-{host}", today()))
        .join("send-fixed");
    std::fs::create_dir_all(&dir).expect("results dir");
    let mut rows = Vec::new();
    // Interleaved repetitions so drift on a shared machine hits every mode alike.
    for rep in 0..REPS {
        for chunk in [16u32 << 10, 64 << 10] {
            for mode in MODES {
                let r = run(mode, chunk, rep);
                eprintln!(
                    "{:<14} {:>3} KiB rep {}: {:>6.2} Gbit/s  sender {:.2} CPU-s/GiB",
                    name(mode),
                    chunk >> 10,
                    rep,
                    TOTAL as f64 * 8.0 / r.secs / 1e9,
                    r.sender_cpu / (TOTAL as f64 / (1u64 << 30) as f64)
                );
                rows.push(r);
            }
        }
    }
    let mut csv = String::from("mode,chunk_bytes,rep,bytes,seconds,sender_cpu_s,receiver_cpu_s\n");
    for r in &rows {
        csv.push_str(&format!(
            "{},{},{},{},{:.4},{:.2},{:.2}\n",
            name(r.mode),
            r.chunk,
            r.rep,
            TOTAL,
            r.secs,
            r.sender_cpu,
            r.receiver_cpu
        ));
    }
    std::fs::write(dir.join("raw.csv"), csv).expect("raw.csv");
    let mut summary = String::from(
        "# Fixed buffers on the send side\n\nMedian of the repetitions; sender CPU from /proc/thread-self/stat (10 ms ticks).\n\n\
         | chunk | mode | Gbit/s | ratio to send | sender CPU-s/GiB |\n|---|---|---|---|---|\n",
    );
    for chunk in [16u32 << 10, 64 << 10] {
        let median = |mode: Mode, f: &dyn Fn(&Row) -> f64| {
            let mut v: Vec<f64> = rows
                .iter()
                .filter(|r| r.mode == mode && r.chunk == chunk)
                .map(f)
                .collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let gbit = |r: &Row| TOTAL as f64 * 8.0 / r.secs / 1e9;
        let base = median(SendKind::Copy, &gbit);
        for mode in MODES {
            let g = median(mode, &gbit);
            let cpu = median(mode, &|r: &Row| {
                r.sender_cpu / (TOTAL as f64 / (1u64 << 30) as f64)
            });
            summary.push_str(&format!(
                "| {} KiB | {} | {:.2} | {:.2} | {:.2} |\n",
                chunk >> 10,
                name(mode),
                g,
                g / base.max(1e-9),
                cpu
            ));
        }
    }
    std::fs::write(dir.join("summary.md"), &summary).expect("summary");
    let setup = format!(
        "# Setup\n\n- command: `cargo bench --bench send_fixed`\n- CPU: {}\n- cores: {}\n- kernel: {}\n- pinning: sender ring thread on CPU 0, receiver (blocking read, 256 KiB) on CPU 1\n\
         - transfer: {} GiB per run over loopback TCP, one send in flight, {} buffers rotating, {} interleaved repetitions\n",
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        sh("nproc --all"),
        sh("uname -r"),
        TOTAL >> 30,
        BUFFERS,
        REPS
    );
    std::fs::write(dir.join("setup.md"), setup).expect("setup");
    println!("{summary}\nwritten to {}", dir.display());
}
