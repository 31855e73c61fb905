//! The shard's provided-buffer ring (IORING_REGISTER_PBUF_RING): one arena of
//! `count` buffers of `size` bytes, and the ring of entries the kernel takes
//! them from. Buffers are handed out by the kernel with receive completions and
//! handed back here, so memory is bounded per shard, not per connection.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;

/// `struct io_uring_buf`: one ring entry.
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// Byte offset of the ring's tail: the `resv` field of entry 0 (`struct
/// io_uring_buf_ring` overlays its header on the first entry).
const TAIL_OFFSET: usize = 14;

/// An anonymous private mapping, unmapped on drop unless leaked.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    leaked: bool,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is
        // touched. mmap returns page-aligned memory, as the kernel requires of a
        // buffer ring.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping {
            ptr,
            len,
            leaked: false,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        // The owning Ring drops the io_uring (which unregisters the buffer ring)
        // before this, and callers leak instead when operations may still be
        // in the kernel.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

pub struct BufRing {
    entries: Mapping,
    arena: Mapping,
    ring_entries: u16,
    count: u16,
    size: u32,
    /// Our copy of the tail: entries written but maybe not yet published.
    tail: u16,
    published: u16,
    /// One bit per buffer, set while it is out of the ring (a completion
    /// handed it over and it was not pushed back yet). A push of a buffer
    /// that is not out is a double release: accepted, it would hand one
    /// buffer to two receives and could write more entries than the ring
    /// holds, over ones the kernel has not consumed yet.
    lent: Vec<u64>,
}

impl BufRing {
    /// Registers a ring of `count` buffers (1..=32768) of `size` bytes as group `bgid`.
    pub fn new(uring: &IoUring, bgid: u16, count: u32, size: u32) -> io::Result<BufRing> {
        if count == 0 || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "buffer ring of {count} x {size} bytes is out of range (1..=32768 buffers)"
                ),
            ));
        }
        let ring_entries = count.next_power_of_two();
        let entries = Mapping::new(ring_entries as usize * std::mem::size_of::<RingEntry>())?;
        let arena_len = count as usize * size as usize;
        let arena = Mapping::new(arena_len)?;
        let ring_entries = u16::try_from(ring_entries)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `entries` is page-aligned, sized for `ring_entries` entries,
        // and lives in this BufRing, which the owning Ring drops only after the
        // io_uring (so the kernel never sees it freed while registered).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                entries.ptr.as_ptr() as u64,
                ring_entries,
                bgid,
                0,
            )?;
        }
        let mut ring = BufRing {
            entries,
            arena,
            ring_entries,
            count: count as u16,
            size,
            tail: 0,
            published: 0,
            lent: vec![0; (count as usize).div_ceil(64)],
        };
        // The kernel-visible tail starts at 0 (fresh zeroed mapping).
        for bid in 0..count {
            ring.write_entry(bid as u16);
        }
        ring.publish();
        Ok(ring)
    }

    pub fn count(&self) -> u32 {
        u32::from(self.count)
    }

    pub fn buffer_size(&self) -> u32 {
        self.size
    }

    /// Pointer to `len` bytes of buffer `bid` at `offset`, if inside the buffer.
    pub fn slice_ptr(&self, bid: u16, offset: u32, len: u32) -> Option<*const u8> {
        if bid >= self.count || offset.checked_add(len)? > self.size {
            return None;
        }
        let at = bid as usize * self.size as usize + offset as usize;
        // SAFETY: bid < count and offset + len <= size, so `at` is inside the arena.
        Some(unsafe { self.arena.ptr.as_ptr().add(at) }.cast_const())
    }

    /// The bytes of buffer `bid` (for tests and diagnostics).
    pub fn bytes(&self, bid: u16, len: u32) -> Option<&[u8]> {
        let p = self.slice_ptr(bid, 0, len)?;
        // SAFETY: in-bounds (checked by slice_ptr); the caller holds the buffer
        // (a completion handed it over), so the kernel is not writing to it.
        Some(unsafe { std::slice::from_raw_parts(p, len as usize) })
    }

    /// Bit of buffer `bid` in `lent`: (word, mask).
    fn lent_bit(bid: u16) -> (usize, u64) {
        (usize::from(bid) / 64, 1u64 << (bid % 64))
    }

    /// A completion handed buffer `bid` over (IORING_CQE_F_BUFFER). False if
    /// `bid` is not one of ours or is already out: the kernel cannot hand out a
    /// buffer twice, so that means a release that was refused or missed.
    pub fn lend(&mut self, bid: u16) -> bool {
        let (word, bit) = Self::lent_bit(bid);
        match self.lent.get_mut(word) {
            Some(w) if bid < self.count && *w & bit == 0 => {
                *w |= bit;
                true
            }
            _ => false,
        }
    }

    /// Buffers out of the ring (lent and not pushed back yet).
    pub fn out(&self) -> u32 {
        self.lent.iter().map(|w| w.count_ones()).sum()
    }

    /// Gives buffer `bid` back: writes it into the next ring entry (published
    /// by `publish`). False, and nothing written, if `bid` is invalid or not
    /// out of the ring (a double release).
    pub fn push(&mut self, bid: u16) -> bool {
        let (word, bit) = Self::lent_bit(bid);
        match self.lent.get_mut(word) {
            Some(w) if bid < self.count && *w & bit != 0 => *w &= !bit,
            _ => return false,
        }
        self.write_entry(bid);
        true
    }

    /// Writes buffer `bid` (< count, not in the ring) into the next entry.
    fn write_entry(&mut self, bid: u16) {
        let mask = self.ring_entries - 1;
        let slot = (self.tail & mask) as usize;
        let addr = self.arena.ptr.as_ptr() as u64 + bid as u64 * u64::from(self.size);
        // SAFETY: slot < ring_entries, so the entry is inside the mapping. The
        // kernel only reads entries between its head and the published tail; this
        // one is past the published tail, so the kernel does not read it yet.
        // There are never more than `count` <= ring_entries buffers in the ring.
        unsafe {
            let e = self.entries.ptr.as_ptr().cast::<RingEntry>().add(slot);
            (*e).addr = addr;
            (*e).len = self.size;
            (*e).bid = bid;
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed buffer visible to the kernel (one release store).
    pub fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // SAFETY: TAIL_OFFSET is inside entry 0 and 2-byte aligned; the kernel
        // reads it with an acquire load, and this release store orders the
        // entry writes above before the new tail.
        unsafe {
            let tail = self
                .entries
                .ptr
                .as_ptr()
                .add(TAIL_OFFSET)
                .cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
    }

    /// The whole arena as one iovec (for fixed-buffer registration).
    pub(super) fn arena_iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.arena.ptr.as_ptr().cast(),
            iov_len: self.arena.len,
        }
    }

    pub(super) fn leak(&mut self) {
        self.entries.leaked = true;
        self.arena.leaked = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_goes_back_only_once_and_only_after_the_kernel_handed_it_over() {
        let uring = IoUring::new(8).expect("io_uring");
        let mut ring = BufRing::new(&uring, 7, 4, 4096).expect("buffer ring");
        assert!(
            !ring.push(0),
            "a buffer still in the ring cannot be released"
        );
        assert!(ring.lend(0), "a completion hands buffer 0 over");
        assert!(
            !ring.lend(0),
            "the kernel cannot hand the same buffer out twice"
        );
        assert!(ring.push(0), "its release goes back into the ring");
        assert!(!ring.push(0), "a second release of it is refused");
        assert_eq!(
            ring.tail, 5,
            "four at start, one release: nothing else written"
        );
        assert!(
            !ring.lend(4) && !ring.push(4),
            "not one of the four buffers"
        );
        assert!(ring.lend(3) && ring.push(3));
        ring.publish();
    }
}
