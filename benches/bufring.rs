//! Provided-buffer ring recycling: a real `BufRing` (4096 buffers of 16 KiB,
//! the default `buffers_per_shard` and `buffer_size`) registered on a real
//! io_uring (`io_uring::IoUring::new`), and the cost of giving buffers back.
//!
//! * `push_publish/B`: one iteration marks B buffer ids (B = 1, 16, 256) as
//!   handed over (`lend`, what the shard does for each completion that carries
//!   a buffer, so a double release is refused), pushes them back into the
//!   ring's entries and publishes the new tail with one release store. The
//!   shard releases buffers one at a time as sends complete and publishes once
//!   per loop turn, so B is the number of buffers returned in one turn.
//!   Throughput = buffers.
//!
//! No receive is ever submitted, so the kernel never consumes from the ring:
//! the bench stands in for it with `lend` and keeps re-pushing ids (the tail
//! runs ahead of the kernel's head, which nothing reads here). That is the user-space cost the
//! shard pays per buffer; the kernel's side is paid in the receive.
//!
//! If io_uring cannot be set up (e.g. `kernel.io_uring_disabled`, a seccomp
//! profile, an old kernel) the bench prints why and measures nothing.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use io_uring::IoUring;
use ringfwd::ring::bufring::BufRing;

const BATCHES: [u32; 3] = [1, 16, 256];
const COUNT: u32 = 4096;
const SIZE: u32 = 16 * 1024;

/// Field order matters: the io_uring (which unregisters the buffer ring) is
/// dropped before the ring's memory, as in `ringfwd::ring::Ring`.
struct Fixture {
    _uring: IoUring,
    bufs: BufRing,
}

fn fixture() -> Result<Fixture, String> {
    let uring = IoUring::new(64).map_err(|e| format!("io_uring setup failed: {e}"))?;
    let bufs = BufRing::new(&uring, 0, COUNT, SIZE)
        .map_err(|e| format!("registering a {COUNT} x {SIZE} B buffer ring failed: {e}"))?;
    Ok(Fixture {
        _uring: uring,
        bufs,
    })
}

fn push_publish(c: &mut Criterion) {
    let mut f = match fixture() {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "bufring: SKIPPED, nothing measured: {e}. Check `sysctl kernel.io_uring_disabled` \
                 (must be 0, or 1 with this user in kernel.io_uring_group) and that no seccomp \
                 profile blocks io_uring_setup."
            );
            return;
        }
    };
    assert_eq!(f.bufs.count(), COUNT);
    let mut group = c.benchmark_group("bufring/push_publish");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for batch in BATCHES {
        group.throughput(Throughput::Elements(u64::from(batch)));
        let mut bid: u16 = 0;
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter(|| {
                for _ in 0..batch {
                    let ok = f.bufs.lend(black_box(bid)) && f.bufs.push(black_box(bid));
                    assert!(ok, "buffer {bid} was not taken and given back");
                    bid += 1;
                    if u32::from(bid) == COUNT {
                        bid = 0;
                    }
                }
                f.bufs.publish();
            });
        });
    }
    group.finish();
}

criterion_group!(benches, push_publish);
criterion_main!(benches);
