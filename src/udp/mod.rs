//! UDP forwarding state: sessions (one per client address per listener, each
//! with its own connected upstream socket), the session map, and the
//! per-source new-session limiter. Like `tcp`, no syscalls and no clock here:
//! completions and the time come in, `SessionOp`s go out.

pub(crate) mod admission;
pub mod assoc;
pub(crate) mod drops;
pub(crate) mod limiter;
pub(crate) mod loops;
pub mod map;
pub mod reply;
pub mod session;

/// A datagram the kernel handed over in provided buffer `bid`: the payload is
/// `len` bytes at `offset` in that buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    pub bid: u16,
    pub offset: u32,
    pub len: u32,
}

/// A decoded recvmsg completion on a session's upstream socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramEvent {
    Data(Payload),
    /// Larger than the buffer (MSG_TRUNC): must be dropped, never forwarded cut.
    Truncated {
        bid: u16,
    },
    /// ENOBUFS: the datagram buffer ring was empty; the receive ended.
    NoBuffers,
    /// ECANCELED: our own cancel.
    Cancelled,
    /// Any other error, as a positive errno (ECONNREFUSED: ICMP port unreachable).
    Error(i32),
}

/// What a session asks its shard to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionOp {
    /// Create the session's UDP socket (of its target's family).
    OpenSocket,
    /// connect(2) the socket to its target (fixes the peer; no handshake).
    Connect,
    /// Multishot recvmsg on the upstream socket.
    ArmRecv,
    /// Send a client's datagram to the upstream.
    SendUp(Payload),
    /// Send an upstream's datagram to the client, from the listener socket.
    SendClient(Payload),
    /// Give a datagram buffer back (no completion).
    Release(u16),
    /// The upstream receive ran out of buffers; wake it when buffers return.
    Starved,
    /// Cancel the armed receive on the upstream socket (teardown), by its
    /// user_data: a cancel by descriptor walks every armed request of the ring
    /// (7% of the forwarder's samples with a session per request). Sends need no
    /// cancel: a UDP send always completes.
    CancelRecv,
    /// Close the upstream socket.
    Close,
    /// `transparent = "tproxy"`: make the session's reply socket (bound to
    /// the client's original destination, connected to the client).
    OpenReply,
    /// Multishot recvmsg on the reply socket (the client's later datagrams
    /// reach it rather than the listener).
    ArmReplyRecv,
    /// Cancel the armed receive on the reply socket (teardown).
    CancelReplyRecv,
    /// Close the reply socket.
    CloseReply,
}

/// Why a session ended. Every session end is counted under exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// No datagram in either direction for idle_timeout.
    Idle,
    /// The upstream answered with ICMP port unreachable (ECONNREFUSED).
    Refused,
    /// Every forwarded client datagram had its `max_responses` replies.
    Responses,
    /// Creating or connecting the socket failed, or a socket error.
    Error,
    /// Closed by shutdown (drain_timeout passed, or a hard stop).
    Shutdown,
    /// Ended by a drain: it owed its client no reply, or was quiet for
    /// `DRAIN_GRACE_MS` after its last datagram.
    Drained,
    /// Evicted while embryonic (no reply from its upstream yet) to admit a
    /// new client to a full table.
    Evicted,
    /// A SOCKS5 UDP association whose control connection ended.
    ControlClosed,
}

impl SessionEnd {
    pub const ALL: [SessionEnd; 8] = [
        SessionEnd::Idle,
        SessionEnd::Refused,
        SessionEnd::Responses,
        SessionEnd::Error,
        SessionEnd::Shutdown,
        SessionEnd::Drained,
        SessionEnd::Evicted,
        SessionEnd::ControlClosed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SessionEnd::Idle => "idle",
            SessionEnd::Refused => "refused",
            SessionEnd::Responses => "responses",
            SessionEnd::Error => "error",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::Drained => "drained",
            SessionEnd::Evicted => "evicted",
            SessionEnd::ControlClosed => "control_closed",
        }
    }
}

/// Why a datagram was dropped. Every drop is counted under exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Larger than max_datagram (MSG_TRUNC, or longer than the limit).
    Truncated,
    /// Source not in the listener's allow list.
    Denied,
    /// A new client while the listener's share of max_sessions is in use.
    SessionLimit,
    /// A new client beyond new_sessions_per_second_per_source.
    RateLimit,
    /// Too many datagrams of one session waiting (socket not ready or send queue full).
    Backlog,
    /// The kernel refused the send (other than a refusal that ends the session).
    SendError,
    /// A new client while the shard is draining.
    Draining,
    /// An upstream datagram for a session already ending (more replies than
    /// `max_responses` owed, or after a refusal, timeout or shutdown).
    Late,
    /// A client datagram whose source is one of the forwarder's own UDP listen
    /// addresses or one of the listener's upstreams (forged: it would loop).
    Loop,
    /// Dropped by the kernel on a listener socket (its receive queue was full,
    /// `rcvbuf`): datagrams from clients that ringfwd never saw.
    RcvbufC2u,
    /// Dropped by the kernel on a session's upstream socket (`session_rcvbuf`):
    /// upstream replies that ringfwd never saw.
    RcvbufU2c,
    /// SOCKS5 UDP: a client datagram with FRAG ≠ 0 (fragmentation is not
    /// served, as RFC 1928 allows).
    Fragment,
    /// SOCKS5 UDP: a client datagram whose header does not parse.
    Malformed,
    /// SOCKS5 UDP: from neither the association's client nor a destination
    /// the client sent to.
    Stranger,
    /// SOCKS5 UDP: a client datagram for a name that did not resolve (or
    /// waiting behind too many others that do).
    Unresolved,
    /// A new client of a `transparent = "tproxy"` listener while this shard
    /// holds `tproxy_reply_sockets` reply sockets for it.
    ReplySockets,
}

impl DropReason {
    pub const ALL: [DropReason; 16] = [
        DropReason::Truncated,
        DropReason::Denied,
        DropReason::SessionLimit,
        DropReason::RateLimit,
        DropReason::Backlog,
        DropReason::SendError,
        DropReason::Draining,
        DropReason::Late,
        DropReason::Loop,
        DropReason::RcvbufC2u,
        DropReason::RcvbufU2c,
        DropReason::Fragment,
        DropReason::Malformed,
        DropReason::Stranger,
        DropReason::Unresolved,
        DropReason::ReplySockets,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Denied => "denied",
            DropReason::SessionLimit => "session_limit",
            DropReason::RateLimit => "rate_limit",
            DropReason::Backlog => "backlog",
            DropReason::SendError => "send_error",
            DropReason::Draining => "draining",
            DropReason::Late => "late",
            DropReason::Loop => "loop",
            DropReason::RcvbufC2u => "rcvbuf_c2u",
            DropReason::RcvbufU2c => "rcvbuf_u2c",
            DropReason::Fragment => "fragment",
            DropReason::Malformed => "malformed",
            DropReason::Stranger => "stranger",
            DropReason::Unresolved => "unresolved",
            DropReason::ReplySockets => "reply_sockets",
        }
    }
}
