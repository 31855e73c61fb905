//! Everything that puts work on an io_uring: ring setup (SINGLE_ISSUER +
//! DEFER_TASKRUN where the kernel has them), typed and memory-safe operation
//! builders (every pointer handed to the kernel points into memory this module
//! owns for the ring's whole life), a full-submission-queue backlog, and waiting.

// The kernel layer: the one place `unsafe` is allowed (see Cargo.toml [lints]).
#![allow(unsafe_code)]

pub mod bufring;
pub mod datagram;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};
use socket2::SockAddr;

use bufring::BufRing;
use datagram::{Datagram, Layout, SendSlot};

/// The provided-buffer group every stream receive of a shard draws from.
pub const BUFFER_GROUP: u16 = 0;
/// The provided-buffer group of datagram receives (one datagram per buffer).
pub const DATAGRAM_GROUP: u16 = 1;

/// Socket types the ring creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockType {
    Stream,
    Datagram,
}

/// Index of a recvmsg template registered with `Ring::add_recvmsg_template`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateId(usize);

/// The datagram buffer ring and one send header per buffer.
struct DatagramPool {
    bufs: BufRing,
    slots: Box<[SendSlot]>,
    /// The configured limit: buffers are rounded up, datagrams are not.
    max_datagram: u32,
}

/// One completion, copied out of the CQ so the ring can be used while it is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    pub user_data: u64,
    pub res: i32,
    pub flags: u32,
}

/// Which setup flags the kernel accepted, for the startup log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupMode {
    /// SINGLE_ISSUER + DEFER_TASKRUN + COOP_TASKRUN.
    DeferTaskrun,
    /// SINGLE_ISSUER + COOP_TASKRUN (kernel without DEFER_TASKRUN).
    SingleIssuer,
    /// COOP_TASKRUN only.
    Coop,
    /// No task-run flags at all.
    Plain,
}

impl SetupMode {
    pub fn describe(self) -> &'static str {
        match self {
            SetupMode::DeferTaskrun => "SINGLE_ISSUER+DEFER_TASKRUN+COOP_TASKRUN",
            SetupMode::SingleIssuer => {
                "SINGLE_ISSUER+COOP_TASKRUN (DEFER_TASKRUN unsupported: Linux < 6.1)"
            }
            SetupMode::Coop => "COOP_TASKRUN only (SINGLE_ISSUER unsupported: Linux < 6.0)",
            SetupMode::Plain => "no task-run flags (Linux < 5.19)",
        }
    }
}

/// How a send puts bytes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendKind {
    /// IORING_OP_SEND: the kernel copies the bytes (what the relay uses).
    Copy,
    /// IORING_OP_SEND_ZC: completes twice, the result (IORING_CQE_F_MORE) and
    /// later a notification (IORING_CQE_F_NOTIF); the buffer may be reused only
    /// after the notification.
    ZeroCopy,
    /// SEND_ZC from the arena registered by `Ring::register_arena`.
    ZeroCopyFixed,
}

/// Index of an address registered with `Ring::add_target` (or interned by
/// `Ring::connect_to`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetId(usize);
/// Index of a timeout registered with `Ring::add_timeout` (or interned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeoutId(usize);
/// Index of a send region registered with `Ring::add_region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionId(usize);

/// Entries that must reach the SQ together (a connect and its linked timeout).
type Group = (squeue::Entry, Option<squeue::Entry>);

/// Counts a submission's MSG_DONTWAIT datagram sends (`sq_inline`) in the
/// wait only where the kernel surely completes them at submission
/// (DEFER_TASKRUN: 6.1+) and while at least a quarter of the datagram
/// buffers are free: with the ring nearly dry a receive may be starved,
/// waiting for exactly the buffers these sends give back, so the turn must
/// come back for their completions at once.
fn counted_inline(mode: SetupMode, sq_inline: u32, dgram_free: u32, dgram_count: u32) -> u32 {
    match mode {
        SetupMode::DeferTaskrun if dgram_free.saturating_mul(4) >= dgram_count => sq_inline,
        _ => 0,
    }
}

/// A datagram send issued with MSG_DONTWAIT, whose completion has not been
/// reaped yet. MSG_DONTWAIT makes the kernel finish it during the
/// io_uring_enter that submits it (sent, or -EAGAIN on a full socket
/// buffer, never parked on a poll), so the wait in that same enter can count
/// its completion instead of returning for it (see `submit_and_wait`).
/// `blocking` is the same send without MSG_DONTWAIT: issued in its place when
/// it met a full buffer, so the engine sees the send wait for room as before.
struct InlineSend {
    user_data: u64,
    blocking: squeue::Entry,
}

pub struct Ring {
    // Field order matters: the ring is torn down before the memory it names.
    uring: IoUring,
    bufs: BufRing,
    // Boxed so an address never moves when the Vec grows: a queued connect
    // points at it until the kernel copies it at submission.
    #[allow(clippy::vec_box)]
    targets: Vec<Box<SockAddr>>,
    /// Addresses already in `targets`, so connecting to an address the ring
    /// has seen reuses its copy (upstreams are a bounded set from the plan).
    target_index: HashMap<SocketAddr, TargetId>,
    timeout_index: HashMap<Duration, TimeoutId>,
    // Boxed so a timespec never moves when the Vec grows: a queued linked
    // timeout keeps pointing at it until the kernel reads it at submission.
    #[allow(clippy::vec_box)]
    timeouts: Vec<Box<types::Timespec>>,
    control_buf: Box<u64>,
    dgram: Option<DatagramPool>,
    // Boxed: a queued recvmsg points at its template until submission.
    #[allow(clippy::vec_box)]
    templates: Vec<Box<libc::msghdr>>,
    layouts: Vec<Layout>,
    /// Memory sends are issued from that is not a provided buffer (a source
    /// pattern, load-generator requests): boxed slices, so they never move.
    regions: Vec<Box<[u8]>>,
    backlog: VecDeque<Group>,
    mode: SetupMode,
    /// MSG_DONTWAIT datagram sends not yet reaped, in submission order.
    inline_sends: VecDeque<InlineSend>,
    /// How many of `inline_sends` sit in the SQ, not yet submitted: the
    /// completions the next enter posts by itself before it can sleep.
    sq_inline: u32,
    /// Bytes owned sends read, by their user_data, until their completion
    /// is reaped (after the ring is torn down on drop, since `uring` drops
    /// first).
    owned: HashMap<u64, Box<[u8]>>,
    /// Memory owned receives write into, by their user_data: kept until
    /// the event loop takes the bytes after the completion (`take_received`),
    /// and dropped after the ring itself otherwise.
    receiving: HashMap<u64, Box<[u8]>>,
}

impl Ring {
    /// Creates the ring on the calling thread (SINGLE_ISSUER binds it to this
    /// thread) with a CQ 8x the SQ, and registers a provided-buffer ring of
    /// `buffers` buffers of `buffer_size` bytes.
    pub fn new(entries: u32, buffers: u32, buffer_size: u32) -> io::Result<Ring> {
        let (uring, mode) = build_uring(entries)?;
        let bufs = BufRing::new(&uring, BUFFER_GROUP, buffers, buffer_size)?;
        Ok(Ring {
            uring,
            bufs,
            targets: Vec::new(),
            target_index: HashMap::new(),
            timeout_index: HashMap::new(),
            timeouts: Vec::new(),
            control_buf: Box::new(0),
            dgram: None,
            templates: Vec::new(),
            layouts: Vec::new(),
            regions: Vec::new(),
            backlog: VecDeque::new(),
            mode,
            inline_sends: VecDeque::new(),
            sq_inline: 0,
            owned: HashMap::new(),
            receiving: HashMap::new(),
        })
    }

    /// Registers the datagram buffer ring: `count` buffers that each hold a
    /// datagram of up to `max_datagram` bytes after the recvmsg headers.
    pub fn add_datagram_pool(&mut self, count: u32, max_datagram: u32) -> io::Result<()> {
        let size = datagram::buffer_size(max_datagram);
        let bufs = BufRing::new(&self.uring, DATAGRAM_GROUP, count, size)?;
        let slots = (0..count).map(|_| SendSlot::new()).collect();
        self.dgram = Some(DatagramPool {
            bufs,
            slots,
            max_datagram,
        });
        Ok(())
    }

    /// Registers a recvmsg layout; kept for the ring's life.
    pub fn add_recvmsg_template(&mut self, layout: Layout) -> TemplateId {
        // Only the lengths matter to a multishot recvmsg: the kernel lays the
        // name and control data out in each provided buffer.
        let hdr = libc::msghdr {
            msg_name: std::ptr::null_mut(),
            msg_namelen: layout.namelen,
            msg_iov: std::ptr::null_mut(),
            msg_iovlen: 0,
            msg_control: std::ptr::null_mut(),
            msg_controllen: layout.controllen as usize,
            msg_flags: 0,
        };
        self.templates.push(Box::new(hdr));
        self.layouts.push(layout);
        TemplateId(self.templates.len() - 1)
    }

    /// Multishot recvmsg into the datagram ring; `Err` if there is no datagram
    /// ring or the template is unknown (nothing queued).
    pub fn recvmsg_multi(
        &mut self,
        fd: RawFd,
        template: TemplateId,
        user_data: u64,
    ) -> io::Result<()> {
        let (Some(_), Some(t)) = (&self.dgram, self.templates.get(template.0)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let hdr: *const libc::msghdr = &**t;
        let e = opcode::RecvMsgMulti::new(types::Fd(fd), hdr, DATAGRAM_GROUP)
            .build()
            .user_data(user_data);
        self.push((e, None));
        Ok(())
    }

    /// Where the datagram in buffer `bid` is, as laid out by `template`;
    /// one longer than `max_datagram` is `truncated`.
    pub fn parse_datagram(&self, bid: u16, template: TemplateId) -> Option<Datagram> {
        let pool = self.dgram.as_ref()?;
        let layout = *self.layouts.get(template.0)?;
        let buf = pool.bufs.bytes(bid, pool.bufs.buffer_size())?;
        datagram::parse(buf, layout, pool.max_datagram)
    }

    /// The `len` bytes at `offset` of datagram buffer `bid`, which a
    /// completion handed over (a SOCKS5 UDP datagram, whose header decides
    /// where it goes).
    pub fn datagram_bytes(&self, bid: u16, offset: u32, len: u32) -> Option<&[u8]> {
        let pool = self.dgram.as_ref()?;
        let p = pool.bufs.slice_ptr(bid, offset, len)?;
        // SAFETY: in bounds (checked by slice_ptr); the buffer is out of the
        // ring (a completion handed it over and it is not yet released), so
        // the kernel is not writing to it while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(p, len as usize) })
    }

    /// Sends `len` bytes of datagram buffer `bid` at `offset` on a connected socket.
    pub fn send_datagram(
        &mut self,
        fd: RawFd,
        bid: u16,
        offset: u32,
        len: u32,
        user_data: u64,
    ) -> io::Result<()> {
        let ptr = self
            .dgram
            .as_ref()
            .and_then(|p| p.bufs.slice_ptr(bid, offset, len))
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let send = |flags| {
            opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL | flags)
                .build()
                .user_data(user_data)
        };
        self.push_inline(send(libc::MSG_DONTWAIT), send(0), user_data);
        Ok(())
    }

    /// Sends `len` bytes of datagram buffer `bid` at `offset` to `dest`, from
    /// source address `local` when set, using the buffer's own send header.
    #[allow(clippy::too_many_arguments)]
    pub fn sendmsg_datagram(
        &mut self,
        fd: RawFd,
        bid: u16,
        offset: u32,
        len: u32,
        dest: SocketAddr,
        local: Option<std::net::IpAddr>,
        user_data: u64,
    ) -> io::Result<()> {
        let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
        let pool = self.dgram.as_mut().ok_or_else(invalid)?;
        let ptr = pool.bufs.slice_ptr(bid, offset, len).ok_or_else(invalid)?;
        let slot = pool.slots.get_mut(bid as usize).ok_or_else(invalid)?;
        slot.prepare(ptr, len, dest, local);
        let hdr: *const libc::msghdr = &slot.hdr;
        let send = |flags: i32| {
            opcode::SendMsg::new(types::Fd(fd), hdr)
                .flags((libc::MSG_NOSIGNAL | flags) as u32)
                .build()
                .user_data(user_data)
        };
        self.push_inline(send(libc::MSG_DONTWAIT), send(0), user_data);
        Ok(())
    }

    /// Sends `header` then part of datagram buffer `bid` as one datagram:
    /// on a connected socket (a session's PROXY v2 header, `send_proxy`), or
    /// to `dest` (a SOCKS5 UDP header naming a reply's source).
    #[allow(clippy::too_many_arguments)]
    pub fn send_datagram_with_header(
        &mut self,
        fd: RawFd,
        bid: u16,
        offset: u32,
        len: u32,
        header: &[u8],
        dest: Option<SocketAddr>,
        user_data: u64,
    ) -> io::Result<()> {
        let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
        let pool = self.dgram.as_mut().ok_or_else(invalid)?;
        let ptr = pool.bufs.slice_ptr(bid, offset, len).ok_or_else(invalid)?;
        let slot = pool.slots.get_mut(bid as usize).ok_or_else(invalid)?;
        slot.prepare_with_header(header, ptr, len, dest);
        let hdr: *const libc::msghdr = &slot.hdr;
        let send = |flags: i32| {
            opcode::SendMsg::new(types::Fd(fd), hdr)
                .flags((libc::MSG_NOSIGNAL | flags) as u32)
                .build()
                .user_data(user_data)
        };
        self.push_inline(send(libc::MSG_DONTWAIT), send(0), user_data);
        Ok(())
    }

    /// Returns datagram buffer `bid` to the kernel (visible after `publish_buffers`).
    /// A completion handed datagram buffer `bid` over (see `BufRing::lend`).
    pub fn lend_datagram(&mut self, bid: u16) -> bool {
        self.dgram.as_mut().is_some_and(|p| p.bufs.lend(bid))
    }

    pub fn release_datagram(&mut self, bid: u16) -> bool {
        self.dgram.as_mut().is_some_and(|p| p.bufs.push(bid))
    }

    /// connect(2) without a timeout (UDP: no handshake, completes at once).
    pub fn connect_plain(&mut self, fd: RawFd, target: TargetId, user_data: u64) -> io::Result<()> {
        let addr = self
            .targets
            .get(target.0)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let e = opcode::Connect::new(types::Fd(fd), addr.as_ptr().cast(), addr.len())
            .build()
            .user_data(user_data);
        self.push((e, None));
        Ok(())
    }

    pub fn mode(&self) -> SetupMode {
        self.mode
    }

    pub fn sq_entries(&self) -> u32 {
        self.uring.params().sq_entries()
    }

    pub fn cq_entries(&self) -> u32 {
        self.uring.params().cq_entries()
    }

    /// Registers an address for `connect`; kept for the ring's life. The
    /// same address registered twice shares one copy.
    pub fn add_target(&mut self, addr: SocketAddr) -> TargetId {
        if let Some(&t) = self.target_index.get(&addr) {
            return t;
        }
        self.targets.push(Box::new(SockAddr::from(addr)));
        let t = TargetId(self.targets.len() - 1);
        self.target_index.insert(addr, t);
        t
    }

    pub fn target_family(&self, t: TargetId) -> Option<i32> {
        self.targets.get(t.0).map(|a| i32::from(a.family()))
    }

    /// Registers a timeout for linked timeouts; kept for the ring's life.
    /// The same duration registered twice shares one timespec.
    pub fn add_timeout(&mut self, d: Duration) -> TimeoutId {
        if let Some(&t) = self.timeout_index.get(&d) {
            return t;
        }
        let ts = types::Timespec::new()
            .sec(d.as_secs())
            .nsec(d.subsec_nanos());
        self.timeouts.push(Box::new(ts));
        let t = TimeoutId(self.timeouts.len() - 1);
        self.timeout_index.insert(d, t);
        t
    }

    /// Connects `fd` to `addr` with a linked `timeout` (two completions).
    /// The address and the timespec are interned: kept for the ring's life,
    /// one copy per distinct value.
    pub fn connect_to(
        &mut self,
        fd: RawFd,
        addr: SocketAddr,
        timeout: Duration,
        user_data: u64,
        timeout_user_data: u64,
    ) -> io::Result<()> {
        let target = self.add_target(addr);
        let timeout = self.add_timeout(timeout);
        self.connect(fd, target, timeout, user_data, timeout_user_data)
    }

    /// connect(2) of a UDP socket to `addr` (interned like `connect_to`).
    pub fn connect_plain_to(
        &mut self,
        fd: RawFd,
        addr: SocketAddr,
        user_data: u64,
    ) -> io::Result<()> {
        let target = self.add_target(addr);
        self.connect_plain(fd, target, user_data)
    }

    pub fn buffer_ring(&self) -> &BufRing {
        &self.bufs
    }

    /// Returns buffer `bid` to the kernel (visible after `publish_buffers`).
    /// A completion handed stream buffer `bid` over (see `BufRing::lend`).
    pub fn lend(&mut self, bid: u16) -> bool {
        self.bufs.lend(bid)
    }

    pub fn release(&mut self, bid: u16) -> bool {
        self.bufs.push(bid)
    }

    pub fn publish_buffers(&mut self) {
        self.bufs.publish();
        if let Some(p) = &mut self.dgram {
            p.bufs.publish();
        }
    }

    /// Entries queued in the backlog because the SQ was full.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    pub fn accept_multi(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data);
        self.push((e, None));
    }

    /// One accept (no multishot): a listener near its descriptor budget
    /// takes clients one at a time.
    pub fn accept_one(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data);
        self.push((e, None));
    }

    /// IORING_OP_SOCKET; `protocol` is socket(2)'s third argument (0: the
    /// family's default for `kind`, IPPROTO_MPTCP for an MPTCP stream).
    pub fn socket(&mut self, family: i32, kind: SockType, protocol: i32, user_data: u64) {
        let ty = match kind {
            SockType::Stream => libc::SOCK_STREAM,
            SockType::Datagram => libc::SOCK_DGRAM,
        };
        let e = opcode::Socket::new(family, ty | libc::SOCK_CLOEXEC, protocol)
            .build()
            .user_data(user_data);
        self.push((e, None));
    }

    /// Connect with a linked timeout; `Err` if an id is unknown (nothing queued).
    pub fn connect(
        &mut self,
        fd: RawFd,
        target: TargetId,
        timeout: TimeoutId,
        user_data: u64,
        timeout_user_data: u64,
    ) -> io::Result<()> {
        let (Some(addr), Some(ts)) = (self.targets.get(target.0), self.timeouts.get(timeout.0))
        else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let connect = opcode::Connect::new(types::Fd(fd), addr.as_ptr().cast(), addr.len())
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(user_data);
        let ts: &types::Timespec = ts;
        let link = opcode::LinkTimeout::new(ts)
            .build()
            .user_data(timeout_user_data);
        self.push((connect, Some(link)));
        Ok(())
    }

    /// One receive into a provided buffer of the stream group (the next
    /// receive is issued only when wanted: no multishot left armed to cancel
    /// before a close).
    pub fn recv_once(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), 0)
            .buf_group(BUFFER_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data);
        self.push((e, None));
    }

    /// One receive of at most `len` bytes into a provided buffer (the
    /// kernel takes the smaller of `len` and the buffer's size).
    pub fn recv_up_to(&mut self, fd: RawFd, len: u32, user_data: u64) {
        let e = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), len)
            .buf_group(BUFFER_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data);
        self.push((e, None));
    }

    pub fn recv_multi(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP)
            .build()
            .user_data(user_data);
        self.push((e, None));
    }

    /// Sends `len` bytes of provided buffer `bid` from `offset`; `Err` (nothing
    /// queued) if that range is not inside the buffer.
    pub fn send(
        &mut self,
        kind: SendKind,
        fd: RawFd,
        bid: u16,
        offset: u32,
        len: u32,
        user_data: u64,
    ) -> io::Result<()> {
        let ptr = self
            .bufs
            .slice_ptr(bid, offset, len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = types::Fd(fd);
        let e = match kind {
            SendKind::Copy => opcode::Send::new(fd, ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            SendKind::ZeroCopy | SendKind::ZeroCopyFixed => opcode::SendZc::new(fd, ptr, len)
                .buf_index((kind == SendKind::ZeroCopyFixed).then_some(0))
                .flags(libc::MSG_NOSIGNAL)
                .build(),
        };
        self.push((e.user_data(user_data), None));
        Ok(())
    }

    /// Sends `bytes`, which the ring keeps until this send's completion is
    /// reaped. `Err` (nothing queued) if a send with the same `user_data`
    /// still holds bytes.
    pub fn send_owned(&mut self, fd: RawFd, bytes: Box<[u8]>, user_data: u64) -> io::Result<()> {
        if self.owned.contains_key(&user_data) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let len =
            u32::try_from(bytes.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // The box's heap memory does not move when the box moves into the map.
        let ptr = bytes.as_ptr();
        self.owned.insert(user_data, bytes);
        let e = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data);
        self.push((e, None));
        Ok(())
    }

    /// One receive of at most `len` bytes into memory the ring allocates and
    /// keeps until `take_received` (not a provided buffer: these belong to
    /// the TCP and UDP services). `Err` (nothing queued) if a receive with
    /// the same `user_data` still holds memory.
    pub fn recv_owned(&mut self, fd: RawFd, len: u32, user_data: u64) -> io::Result<()> {
        if self.receiving.contains_key(&user_data) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let mut buf = vec![0u8; len as usize].into_boxed_slice();
        // The box's heap memory does not move when the box moves into the map.
        let ptr = buf.as_mut_ptr();
        self.receiving.insert(user_data, buf);
        let e = opcode::Recv::new(types::Fd(fd), ptr, len)
            .build()
            .user_data(user_data);
        self.push((e, None));
        Ok(())
    }

    /// The memory of an owned receive, once its completion was reaped (the
    /// completion's result says how many bytes of it were received); the
    /// caller's from here on.
    pub fn take_received(&mut self, user_data: u64) -> Option<Box<[u8]>> {
        self.receiving.remove(&user_data)
    }

    /// Hands `bytes` to the ring for the ring's whole life, as memory that
    /// `send_region` can send from.
    pub fn add_region(&mut self, bytes: Box<[u8]>) -> RegionId {
        self.regions.push(bytes);
        RegionId(self.regions.len() - 1)
    }

    pub fn region(&self, id: RegionId) -> Option<&[u8]> {
        self.regions.get(id.0).map(|r| &r[..])
    }

    /// Writable view of a region. The caller must not change bytes that a
    /// send still in flight reads (its completion has not been reaped).
    pub fn region_mut(&mut self, id: RegionId) -> Option<&mut [u8]> {
        self.regions.get_mut(id.0).map(|r| &mut r[..])
    }

    /// Sends `len` bytes of region `id` from `offset` (stream or connected
    /// datagram socket); `Err` (nothing queued) if the range is outside it.
    pub fn send_region(
        &mut self,
        fd: RawFd,
        id: RegionId,
        offset: u32,
        len: u32,
        user_data: u64,
    ) -> io::Result<()> {
        self.send_region_flags(fd, id, offset, len, 0, user_data)
    }

    /// `send_region` with extra send flags: `MSG_WAITALL` on a stream socket
    /// makes the kernel finish the whole range itself (retrying as the socket
    /// buffer drains) before the completion, rather than completing short.
    pub fn send_region_flags(
        &mut self,
        fd: RawFd,
        id: RegionId,
        offset: u32,
        len: u32,
        flags: i32,
        user_data: u64,
    ) -> io::Result<()> {
        let ptr = self
            .regions
            .get(id.0)
            .and_then(|r| {
                let end = (offset as usize).checked_add(len as usize)?;
                r.get(offset as usize..end)
            })
            .map(<[u8]>::as_ptr)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let e = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL | flags)
            .build()
            .user_data(user_data);
        self.push((e, None));
        Ok(())
    }

    /// Registers the whole buffer arena as fixed buffer 0 (IORING_REGISTER_BUFFERS),
    /// for `SendKind::ZeroCopyFixed`. Charged to RLIMIT_MEMLOCK without CAP_IPC_LOCK.
    pub fn register_arena(&mut self) -> io::Result<()> {
        let iov = self.bufs.arena_iovec();
        // SAFETY: the iovec covers the arena, which lives as long as this Ring
        // and is unmapped only after the io_uring (and its registration) is gone.
        unsafe { self.uring.submitter().register_buffers(&[iov]) }
    }

    /// IORING_OP_SPLICE of up to `len` bytes from `fd_in` to `fd_out` (one of
    /// them a pipe; no offsets, so the files' positions are used, as sockets
    /// and pipes need). The kernel always runs it on an io-wq worker, where it
    /// blocks: from a socket until some data, EOF or an error arrives, to a
    /// socket until `len` bytes are written. It names no memory of ours.
    pub fn splice(&mut self, fd_in: RawFd, fd_out: RawFd, len: u32, user_data: u64) {
        let e = opcode::Splice::new(types::Fd(fd_in), -1, types::Fd(fd_out), -1, len)
            .flags(libc::SPLICE_F_MOVE)
            .build()
            .user_data(user_data);
        self.push((e, None));
    }

    /// Cancels the operation whose user_data is `target`.
    pub fn cancel(&mut self, target: u64, user_data: u64) {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        self.push((e, None));
    }

    /// Cancels every operation on `fd`.
    pub fn cancel_fd(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(user_data);
        self.push((e, None));
    }

    pub fn close(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(user_data);
        self.push((e, None));
    }

    /// Reads the 8-byte counter of an eventfd into ring-owned memory.
    pub fn read_eventfd(&mut self, fd: RawFd, user_data: u64) {
        let buf: *mut u64 = &mut *self.control_buf;
        let e = opcode::Read::new(types::Fd(fd), buf.cast(), 8)
            .build()
            .user_data(user_data);
        self.push((e, None));
    }

    fn try_push(&mut self, group: &Group) -> bool {
        let mut sq = self.uring.submission();
        let need = 1 + usize::from(group.1.is_some());
        if sq.capacity() - sq.len() < need {
            return false;
        }
        // SAFETY: every pointer in these entries points into memory this Ring
        // owns and keeps until it is dropped, after the io_uring itself: buffer
        // slices (`bufs`, `dgram`), send regions (`regions`, boxed slices that
        // never move), addresses (`targets`), timespecs (`timeouts`,
        // boxed so they never move), recvmsg templates (`templates`, boxed), send
        // headers (`dgram.slots`, a boxed slice that never moves), owned sends'
        // and receives' bytes (`owned`, `receiving`: boxed slices kept until
        // their completion is reaped) and the eventfd counter (`control_buf`,
        // boxed).
        // Capacity was checked above, so both entries of a linked pair land
        // together (a lone IO_LINK entry would link to an unrelated one).
        unsafe {
            let ok = sq.push(&group.0).is_ok();
            match &group.1 {
                Some(second) => ok && sq.push(second).is_ok(),
                None => ok,
            }
        }
    }

    /// Queues `group`; a full SQ is submitted to make room, and what still does
    /// not fit waits in the backlog (in order) for the next submit. True when
    /// it went straight into the SQ (nothing was submitted meanwhile).
    fn push(&mut self, group: Group) -> bool {
        if self.backlog.is_empty() && self.try_push(&group) {
            return true;
        }
        self.backlog.push_back(group);
        self.flush_backlog();
        false
    }

    /// Queues a MSG_DONTWAIT datagram send (see `InlineSend`). Only one that
    /// went straight into the SQ is counted for the next wait: one that took
    /// the backlog may be submitted early, and counting too few only costs an
    /// early return, counting too many a sleep past a completion.
    fn push_inline(&mut self, nowait: squeue::Entry, blocking: squeue::Entry, user_data: u64) {
        self.inline_sends.push_back(InlineSend {
            user_data,
            blocking,
        });
        if self.push((nowait, None)) {
            self.sq_inline += 1;
        }
    }

    /// The completion of a MSG_DONTWAIT send: false when it met a full socket
    /// buffer and was queued again as a blocking send (the engine sees only
    /// that one's completion), true when it is to be handed on.
    fn settle_inline(&mut self, user_data: u64, res: i32) -> bool {
        // In submission order, so it is almost always the first.
        let Some(i) = self
            .inline_sends
            .iter()
            .position(|s| s.user_data == user_data)
        else {
            return true;
        };
        let Some(send) = self.inline_sends.remove(i) else {
            return true;
        };
        if res != -libc::EAGAIN {
            return true;
        }
        self.push((send.blocking, None));
        false
    }

    fn flush_backlog(&mut self) {
        while let Some(group) = self.backlog.front() {
            let group = group.clone();
            if !self.try_push(&group) {
                // Hand the full SQ to the kernel, then retry once.
                let submitted = self.uring.submit();
                self.sq_inline = 0;
                if submitted.is_err() || !self.try_push(&group) {
                    return;
                }
            }
            self.backlog.pop_front();
        }
    }

    /// Submits everything queued and waits for at least one completion, at most
    /// `timeout` (None: until one arrives). Does not block when completions are
    /// already waiting or `nowait` is set.
    ///
    /// The MSG_DONTWAIT datagram sends in this submission complete inside
    /// this very enter, and the kernel counts every unreaped completion
    /// towards `want`: so `want` is one more than them. Otherwise a forwarded
    /// datagram costs two enters (the first returns at once with only its
    /// send's completion; the second sleeps). The price: what the engine does
    /// on a send's completion (return its buffer, close a session that owes
    /// nothing more) waits for the next completion or `timeout` — hence not
    /// while the datagram ring is nearly dry (see `counted_inline`).
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>, nowait: bool) -> io::Result<()> {
        self.flush_backlog();
        let ready = {
            let mut cq = self.uring.completion();
            cq.sync();
            !cq.is_empty()
        };
        let (free, count) = self.dgram.as_ref().map_or((0, 0), |p| {
            (p.bufs.count().saturating_sub(p.bufs.out()), p.bufs.count())
        });
        let inline = counted_inline(self.mode, self.sq_inline, free, count) as usize;
        self.sq_inline = 0;
        let want = if ready || nowait { 0 } else { 1 + inline };
        let res = match timeout {
            Some(t) if want > 0 => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(want, &args)
            }
            _ => self.uring.submitter().submit_and_wait(want),
        };
        match res {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // Timed out, interrupted, or the CQ needs reaping first: not errors.
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {
                    Ok(())
                }
                _ => Err(e),
            },
        }
    }

    /// One busy-poll step: submits what is queued and runs deferred task work
    /// when the kernel flagged some (no syscall when there is neither);
    /// true when completions are waiting.
    pub fn poll_step(&mut self) -> io::Result<bool> {
        self.flush_backlog();
        let enter = {
            let sq = self.uring.submission();
            !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
        };
        self.sq_inline = 0;
        if enter && let Err(e) = self.uring.submitter().submit() {
            match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => return Err(e),
            }
        }
        let mut cq = self.uring.completion();
        cq.sync();
        Ok(!cq.is_empty())
    }

    /// Moves every available completion into `out`.
    /// A MSG_DONTWAIT send that met a full socket buffer is not handed out
    /// but issued again as a blocking send.
    pub fn reap(&mut self, out: &mut Vec<Cqe>) {
        let start = out.len();
        {
            let mut cq = self.uring.completion();
            cq.sync();
            for c in &mut cq {
                if !self.owned.is_empty() {
                    // The kernel is done with an owned send's bytes.
                    self.owned.remove(&c.user_data());
                }
                out.push(Cqe {
                    user_data: c.user_data(),
                    res: c.result(),
                    flags: c.flags(),
                });
            }
        }
        if self.inline_sends.is_empty() {
            return;
        }
        let mut i = start;
        while i < out.len() {
            let keep = match out.get(i) {
                Some(c) => self.settle_inline(c.user_data, c.res),
                None => true,
            };
            if keep {
                i += 1;
            } else {
                out.remove(i);
            }
        }
    }

    /// Completions the kernel could not post because the CQ was full (kept, not lost).
    pub fn cq_overflow(&mut self) -> u32 {
        self.uring.completion().overflow()
    }

    /// Keeps the buffer memory mapped forever: for a shutdown that gave up
    /// waiting for the kernel to return every operation.
    pub fn leak_buffers(&mut self) {
        self.bufs.leak();
        if let Some(p) = self.dgram.take() {
            let mut p = p;
            p.bufs.leak();
            // Send headers may still be read by the kernel: never free them.
            std::mem::forget(p);
        }
        // Sends may still read the regions: never free them.
        std::mem::forget(std::mem::take(&mut self.regions));
        // The eventfd read may still target this counter: never free it.
        std::mem::forget(std::mem::replace(&mut self.control_buf, Box::new(0)));
    }
}

fn build_uring(entries: u32) -> io::Result<(IoUring, SetupMode)> {
    let cq = entries.saturating_mul(8);
    let attempts = [
        SetupMode::DeferTaskrun,
        SetupMode::SingleIssuer,
        SetupMode::Coop,
        SetupMode::Plain,
    ];
    let mut last = io::Error::from(io::ErrorKind::Unsupported);
    for mode in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_clamp().setup_submit_all();
        match mode {
            // TASKRUN_FLAG makes the kernel flag pending task work in the
            // SQ ring, so a busy-polling loop enters the kernel only when
            // there is something to reap.
            SetupMode::DeferTaskrun => {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_coop_taskrun()
                    .setup_taskrun_flag();
            }
            SetupMode::SingleIssuer => {
                b.setup_single_issuer()
                    .setup_coop_taskrun()
                    .setup_taskrun_flag();
            }
            SetupMode::Coop => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            SetupMode::Plain => {}
        }
        match b.build(entries) {
            Ok(u) => return Ok((u, mode)),
            // EINVAL: a flag this kernel does not know; try fewer.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    use std::time::Instant;

    /// Enters and reaps until a completion arrives or `limit` passes.
    fn reap_within(ring: &mut Ring, limit: Duration) -> Vec<Cqe> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        while out.is_empty() && Instant::now() < deadline {
            ring.submit_and_wait(Some(Duration::from_millis(10)), false)
                .expect("io_uring_enter");
            ring.reap(&mut out);
        }
        out
    }

    /// With the datagram ring nearly dry, an enter that submits a send comes
    /// back with its completion at once, even to a wait with no timeout: a
    /// starved receive may be waiting for the very buffer that send returns,
    /// and no other completion may ever come.
    #[test]
    fn with_the_datagram_ring_nearly_dry_a_send_completion_comes_back_at_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        // The ring is made on the thread that uses it (SINGLE_ISSUER); if
        // the wait never ended the thread stays blocked and the test fails.
        std::thread::spawn(move || {
            let mut ring = Ring::new(8, 2, 4096).expect("ring");
            ring.add_datagram_pool(4, 256).expect("datagram pool");
            // As if receives had taken every buffer: the ring is dry.
            for bid in 0..4 {
                assert!(ring.lend_datagram(bid));
            }
            ring.send_datagram(a.as_raw_fd(), 0, 0, 64, 9)
                .expect("send queued");
            ring.submit_and_wait(None, false).expect("io_uring_enter");
            let mut out = Vec::new();
            ring.reap(&mut out);
            let _ = tx.send(out);
        });
        let out = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the wait slept past the send's completion");
        let sent = Cqe {
            user_data: 9,
            res: 64,
            flags: 0,
        };
        assert_eq!(out, vec![sent]);
        let mut buf = [0u8; 64];
        assert_eq!(b.recv(&mut buf).expect("datagram"), 64);
    }

    /// An owned receive gets a datagram into memory the ring holds until
    /// the bytes are taken, and a second receive under the same user_data
    /// is refused while the first still holds its memory (the resolver's
    /// queries and replies, on a real kernel).
    #[test]
    fn owned_receives_and_sends_carry_datagrams_through_the_kernel() {
        let mut ring = Ring::new(8, 2, 4096).expect("ring");
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        ring.recv_owned(a.as_raw_fd(), 512, 21)
            .expect("receive queued");
        assert!(ring.recv_owned(a.as_raw_fd(), 512, 21).is_err());
        ring.send_owned(b.as_raw_fd(), Box::new(*b"query"), 22)
            .expect("send queued");
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.len() < 2 && Instant::now() < deadline {
            seen.extend(reap_within(&mut ring, Duration::from_millis(100)));
        }
        seen.sort_by_key(|c| c.user_data);
        let lens: Vec<(u64, i32)> = seen.iter().map(|c| (c.user_data, c.res)).collect();
        assert_eq!(lens, [(21, 5), (22, 5)]);
        let got = ring.take_received(21).expect("the receive's memory");
        assert_eq!(got.get(..5), Some(&b"query"[..]));
        assert!(ring.take_received(21).is_none(), "taken once");
        // Free again: the next receive under the same user_data is accepted.
        ring.recv_owned(a.as_raw_fd(), 512, 21)
            .expect("receive queued");
    }

    #[test]
    fn sends_are_counted_in_the_wait_only_with_defer_taskrun_and_buffers_to_spare() {
        assert_eq!(counted_inline(SetupMode::DeferTaskrun, 3, 512, 512), 3);
        assert_eq!(counted_inline(SetupMode::DeferTaskrun, 3, 128, 512), 3);
        // Nearly dry: a starved receive may wait for these very buffers.
        assert_eq!(counted_inline(SetupMode::DeferTaskrun, 3, 127, 512), 0);
        assert_eq!(counted_inline(SetupMode::DeferTaskrun, 3, 0, 512), 0);
        for mode in [SetupMode::SingleIssuer, SetupMode::Coop, SetupMode::Plain] {
            assert_eq!(counted_inline(mode, 3, 512, 512), 0);
        }
    }

    /// A MSG_DONTWAIT datagram send that meets a full socket buffer is issued
    /// again as a blocking send: its one completion is the datagram sent once
    /// the peer makes room, never the -EAGAIN (the engine would count that as
    /// a dropped datagram, where the send used to wait for room).
    #[test]
    fn a_dontwait_send_to_a_full_socket_waits_for_room_instead_of_failing() {
        let mut ring = Ring::new(8, 2, 4096).expect("ring");
        ring.add_datagram_pool(2, 256).expect("datagram pool");
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        let mut queued = 0;
        while a.send(&[0u8; 64]).is_ok() {
            queued += 1;
            assert!(queued < 1_000_000, "the peer's queue never filled");
        }
        a.set_nonblocking(false).expect("blocking");

        ring.send_datagram(a.as_raw_fd(), 0, 0, 64, 7)
            .expect("send queued");
        let early = reap_within(&mut ring, Duration::from_millis(100));
        assert_eq!(early, vec![], "a send to a full socket completed early");

        b.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        while b.recv(&mut buf).is_ok() {}
        let done = reap_within(&mut ring, Duration::from_secs(5));
        let sent = Cqe {
            user_data: 7,
            res: 64,
            flags: 0,
        };
        assert_eq!(done, vec![sent]);
    }
}
