//! TCP connection state machines: what to do next given what completed.
//! No syscalls and no clock here — completions and the time come in, operations
//! (`ConnOp`) go out — so the shard's event loop executes them on io_uring and
//! the simulator in `tests/` executes them against a fake kernel.

pub mod cx;
pub(crate) mod echo;
pub(crate) mod front;
pub mod handshake;
pub mod lifecycle;
pub mod pipe;
pub mod rate;
pub mod relay;
pub mod serve;
pub mod splice;

use splice::PipeId;

use crate::upstream::{Outcome, Target};

/// Which splice of a direction: into the pipe from the source, or out of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceEnd {
    In,
    Out,
}

/// Where operations go. The state machines push only through [`Cx`], which
/// accounts each one; tests and benches of the parts (a `Pipe`, a
/// `SpliceDir`) may collect into a plain `Vec`.
pub trait Emit {
    fn push(&mut self, op: ConnOp);
}

impl Emit for Vec<ConnOp> {
    fn push(&mut self, op: ConnOp) {
        Vec::push(self, op);
    }
}

/// Which socket of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Upstream,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Upstream => 1,
        }
    }
}

/// An operation a connection asks its shard to perform. Each one that the
/// kernel executes produces exactly one final completion, fed back through the
/// matching `handle_*` method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnOp {
    /// Ask the shard for the next target (the listener's balancer picks,
    /// skipping the ones this connection tried). Answered at once
    /// (`handle_target`, before any completion), no completion.
    NextTarget,
    /// How an attempt at `target` went, for its balancer and its upstream's
    /// counters. No completion.
    Report { target: Target, outcome: Outcome },
    /// Create the upstream socket, of `target`'s address family.
    OpenUpstream { target: Target },
    /// Connect the upstream socket to `target`, with the listener's
    /// connect_timeout linked to it (two completions).
    Connect { target: Target },
    /// Multishot receive into the shard's provided buffers.
    ArmRecv(Side),
    /// One receive of at most `max` bytes into a provided buffer: a
    /// `bandwidth_limit`ed direction reads only what its bucket holds. Its
    /// completion is a receive's that ends without IORING_CQE_F_MORE.
    RecvUpTo { side: Side, max: u32 },
    /// One receive on the client for the front stage: its bytes are handed
    /// to the relay (`handle_front`) and its buffer goes straight back.
    FrontRecv,
    /// Send bytes the relay holds (a PROXY header, and what the client sent
    /// during the front) to the upstream, from `offset`: the shard copies
    /// them into memory the ring owns until the send completes.
    SendPreface { offset: u32 },
    /// Send the relay's reply to the client (SOCKS5, HTTP CONNECT) from
    /// `offset`: the shard copies it into memory the ring owns.
    SendReply { offset: u32 },
    /// Ask the shard to resolve the name the relay holds
    /// (`Relay::resolve_name`). Answered later (`handle_resolved`), no
    /// completion.
    Resolve,
    /// Ask the shard for a SOCKS5 UDP association for this connection's
    /// client (a UDP socket bound to the address the client reached).
    /// Answered later (`handle_associated`), no completion; the shard ends
    /// the association when the connection is freed.
    Associate,
    /// Cancel this side's multishot receive (pause at the high watermark).
    CancelRecv(Side),
    /// Send `len` bytes of buffer `bid` starting at `offset`.
    Send {
        side: Side,
        bid: u16,
        offset: u32,
        len: u32,
    },
    /// Send `len` bytes of the shard's periodic region starting at `offset`
    /// (`offset + len` within the region; sources and request/response servers).
    SendRegion { side: Side, offset: u32, len: u32 },
    /// shutdown(SHUT_WR): forward a FIN.
    Shutdown(Side),
    /// Cancel every operation on this side's socket (teardown).
    CancelAll(Side),
    /// Close this side's socket; `linger0` sends a reset instead of a FIN.
    Close { side: Side, linger0: bool },
    /// Close the socket of a failed upstream attempt (one completion, no state).
    Discard,
    /// Give buffer `bid` back to the shard's buffer ring (no completion).
    Release(u16),
    /// This side's receive ran out of buffers; wake it when buffers return (no completion).
    Starved(Side),
    /// Splice up to `len` bytes from `side`'s socket into `pipe`. Runs on a
    /// kernel worker and waits there until data, EOF (0) or an error arrives.
    SpliceIn { side: Side, pipe: PipeId, len: u32 },
    /// Splice `len` bytes (all the pipe holds) from `pipe` to `side`'s socket.
    SpliceOut { side: Side, pipe: PipeId, len: u32 },
    /// Cancel the splice in from (`In`) or out to (`Out`) `side`'s socket, by
    /// its token (cancel-by-descriptor matches only a splice's output).
    CancelSplice { side: Side, end: SpliceEnd },
    /// Ask the shard for a pipe for the direction that reads `side`. Answered
    /// at once (`handle_pipe`, before any completion), no completion.
    WantPipe(Side),
    /// Give `pipe` back: `clean` (empty) to the pool, else it is discarded and
    /// replaced. Only once no splice names it. No completion.
    ReturnPipe { pipe: PipeId, clean: bool },
}

/// A front receive's completion, decoded (the bytes are the shard's copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontRead<'a> {
    Data(&'a [u8]),
    Eof,
    NoBuffers,
    Cancelled,
    Error(i32),
}

/// A decoded receive completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvEvent {
    Data {
        bid: u16,
        len: u32,
    },
    /// The peer sent FIN.
    Eof,
    /// ENOBUFS: the buffer ring was empty; the multishot receive ended, no data lost.
    NoBuffers,
    /// ECANCELED: our own cancel took effect.
    Cancelled,
    /// Any other error, as a positive errno.
    Error(i32),
}

/// Positive errno values the state machines distinguish.
pub mod errno {
    pub const ECANCELED: i32 = libc::ECANCELED;
    pub const ECONNREFUSED: i32 = libc::ECONNREFUSED;
    pub const ECONNRESET: i32 = libc::ECONNRESET;
    pub const EPIPE: i32 = libc::EPIPE;
    pub const ENOBUFS: i32 = libc::ENOBUFS;
    pub const ENOTCONN: i32 = libc::ENOTCONN;
    pub const ETIME: i32 = libc::ETIME;
}
