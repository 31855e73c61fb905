//! `user_data` encoding: every in-flight operation is named by what it is
//! (kind, socket side) and whom it belongs to (slab index + generation), so a
//! completion whose slot was freed and reused is recognised as stale.

use crate::tcp::Side;

/// What an in-flight operation is. Values are part of `user_data`; 0 is never used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Socket = 4,
    Connect = 5,
    ConnectTimeout = 6,
    Shutdown = 7,
    CancelRecv = 8,
    CancelAll = 9,
    Close = 10,
    /// Close of a failed upstream attempt's socket: only its completion is awaited.
    Discard = 11,
    /// Close of an accepted socket turned away at the connection limit (no slot).
    Reject = 12,
    /// Cancel of a listener's multishot accept (drain).
    CancelAccept = 13,
    /// Close of a listening socket (drain).
    CloseListener = 14,
    /// Read on the shard's control eventfd.
    Control = 15,
    /// Multishot recvmsg on a UDP listener (index = listener).
    UdpListenRecv = 16,
    /// Multishot recvmsg on a session's upstream socket.
    UdpUpRecv = 17,
    /// Datagram client→upstream on the session's socket (aux = buffer id).
    UdpUpSend = 18,
    /// Reply upstream→client from the listener socket (aux = buffer id).
    UdpReplySend = 19,
    /// Echo reply from a UDP echo listener (index = listener, aux = buffer id).
    UdpEchoSend = 20,
    UdpSocket = 21,
    UdpConnect = 22,
    UdpCancel = 23,
    UdpClose = 24,
    /// Cancel of a UDP listener's recvmsg (shutdown).
    UdpListenCancel = 25,
    UdpListenClose = 26,
    /// Splice from the socket of `side` into the direction's pipe.
    SpliceIn = 27,
    /// Splice from the direction's pipe to the socket of `side`.
    SpliceOut = 28,
    /// Cancel of a splice (by its token).
    CancelSplice = 29,
    /// One receive of the front stage (its bytes are copied to the relay).
    FrontRecv = 30,
    /// The resolver's socket to nameserver `index` (generation = the
    /// resolver's socket generation, bumped when a reload changes them).
    DnsSocket = 31,
    DnsConnect = 32,
    /// A query datagram (aux = a sequence number: several may be in flight).
    DnsSend = 33,
    /// A receive of replies into memory the ring owns.
    DnsRecv = 34,
    /// Cancel of the receive on a resolver socket (before its close).
    DnsCancel = 35,
    DnsClose = 36,
    /// A SOCKS5 UDP association's socket (index = association).
    AssocSocket = 37,
    AssocBind = 38,
    /// Multishot recvmsg on an association's socket.
    AssocRecv = 39,
    /// A client's datagram to its destination (aux = buffer id).
    AssocSend = 40,
    /// A destination's datagram to the client, with its header (aux = buffer id).
    AssocReply = 41,
    AssocCancel = 42,
    AssocClose = 43,
    /// The accept watch's read of a listener's accept queue (index = listener).
    ListenQueue = 44,
    /// A UDP TPROXY session's reply socket made (inline, `Op::UdpTransparentSocket`).
    TproxyOpen = 45,
    /// Multishot recvmsg on a reply socket (the client's later datagrams).
    TproxyRecv = 46,
    /// Reply upstream→client on the reply socket (aux = buffer id).
    TproxySend = 47,
    TproxyCancel = 48,
    TproxyClose = 49,
}

impl OpKind {
    /// Whether the resolver service issued it.
    pub fn is_dns(self) -> bool {
        matches!(
            self,
            OpKind::DnsSocket
                | OpKind::DnsConnect
                | OpKind::DnsSend
                | OpKind::DnsRecv
                | OpKind::DnsCancel
                | OpKind::DnsClose
        )
    }

    /// Whether the UDP service issued it.
    pub fn is_udp(self) -> bool {
        matches!(
            self,
            OpKind::UdpListenRecv
                | OpKind::UdpUpRecv
                | OpKind::UdpUpSend
                | OpKind::UdpReplySend
                | OpKind::UdpEchoSend
                | OpKind::UdpSocket
                | OpKind::UdpConnect
                | OpKind::UdpCancel
                | OpKind::UdpClose
                | OpKind::UdpListenCancel
                | OpKind::UdpListenClose
                | OpKind::AssocSocket
                | OpKind::AssocBind
                | OpKind::AssocRecv
                | OpKind::AssocSend
                | OpKind::AssocReply
                | OpKind::AssocCancel
                | OpKind::AssocClose
        ) || self.is_tproxy()
    }

    /// Whether it is on a UDP TPROXY session's reply socket.
    pub fn is_tproxy(self) -> bool {
        matches!(
            self,
            OpKind::TproxyOpen
                | OpKind::TproxyRecv
                | OpKind::TproxySend
                | OpKind::TproxyCancel
                | OpKind::TproxyClose
        )
    }

    fn from_u8(v: u8) -> Option<OpKind> {
        use OpKind::*;
        Some(match v {
            1 => Accept,
            2 => Recv,
            3 => Send,
            4 => Socket,
            5 => Connect,
            6 => ConnectTimeout,
            7 => Shutdown,
            8 => CancelRecv,
            9 => CancelAll,
            10 => Close,
            11 => Discard,
            12 => Reject,
            13 => CancelAccept,
            14 => CloseListener,
            15 => Control,
            16 => UdpListenRecv,
            17 => UdpUpRecv,
            18 => UdpUpSend,
            19 => UdpReplySend,
            20 => UdpEchoSend,
            21 => UdpSocket,
            22 => UdpConnect,
            23 => UdpCancel,
            24 => UdpClose,
            25 => UdpListenCancel,
            26 => UdpListenClose,
            27 => SpliceIn,
            28 => SpliceOut,
            29 => CancelSplice,
            30 => FrontRecv,
            31 => DnsSocket,
            32 => DnsConnect,
            33 => DnsSend,
            34 => DnsRecv,
            35 => DnsCancel,
            36 => DnsClose,
            37 => AssocSocket,
            38 => AssocBind,
            39 => AssocRecv,
            40 => AssocSend,
            41 => AssocReply,
            42 => AssocCancel,
            43 => AssocClose,
            44 => ListenQueue,
            45 => TproxyOpen,
            46 => TproxyRecv,
            47 => TproxySend,
            48 => TproxyCancel,
            49 => TproxyClose,
            _ => return None,
        })
    }
}

/// Largest slab index a token can carry (20 bits: a million per shard).
pub const MAX_INDEX: u32 = (1 << 20) - 1;
/// Generations wrap at 20 bits; a stale completion would have to outlive a
/// million reuses of its slot, and slots are only freed once every completion
/// is back.
pub const GEN_MASK: u32 = (1 << 20) - 1;
/// Largest `aux` value (15 bits: a provided-buffer id, < 32768).
pub const MAX_AUX: u16 = (1 << 15) - 1;

/// A slab slot: index plus the generation it had when the operation was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId {
    pub index: u32,
    pub generation: u32,
}

/// The decoded `user_data` of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub kind: OpKind,
    pub side: Side,
    pub slot: SlotId,
    /// Per-operation datum: the buffer id of a datagram send, else 0.
    pub aux: u16,
}

impl Token {
    pub fn new(kind: OpKind, side: Side, slot: SlotId) -> Token {
        Token {
            kind,
            side,
            slot,
            aux: 0,
        }
    }

    pub fn with_aux(mut self, aux: u16) -> Token {
        self.aux = aux & MAX_AUX;
        self
    }

    /// Layout: bits 0-7 kind, bit 8 side, bits 9-23 aux, bits 24-43 index,
    /// bits 44-63 generation.
    pub fn encode(self) -> u64 {
        let side = match self.side {
            Side::Client => 0u64,
            Side::Upstream => 1u64,
        };
        (self.kind as u64)
            | (side << 8)
            | (u64::from(self.aux & MAX_AUX) << 9)
            | (u64::from(self.slot.index & MAX_INDEX) << 24)
            | (u64::from(self.slot.generation & GEN_MASK) << 44)
    }

    /// `None` for values this program never issued (corruption or a kernel bug).
    pub fn decode(user_data: u64) -> Option<Token> {
        let kind = OpKind::from_u8((user_data & 0xff) as u8)?;
        let side = if (user_data >> 8) & 1 == 0 {
            Side::Client
        } else {
            Side::Upstream
        };
        let aux = ((user_data >> 9) & u64::from(MAX_AUX)) as u16;
        let index = ((user_data >> 24) & u64::from(MAX_INDEX)) as u32;
        let generation = ((user_data >> 44) & u64::from(GEN_MASK)) as u32;
        Some(Token {
            kind,
            side,
            slot: SlotId { index, generation },
            aux,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind_side_and_extreme_slots() {
        for k in 1..=49u8 {
            let kind = OpKind::from_u8(k).expect("kind");
            for side in [Side::Client, Side::Upstream] {
                for (index, generation) in [(0, 0), (MAX_INDEX, GEN_MASK), (12345, 678)] {
                    for aux in [0, 1, MAX_AUX, 12345] {
                        let t = Token::new(kind, side, SlotId { index, generation }).with_aux(aux);
                        assert_eq!(Token::decode(t.encode()), Some(t));
                    }
                }
            }
        }
    }

    #[test]
    fn the_tproxy_kinds_round_trip_and_are_udp() {
        for k in 45..=49u8 {
            let kind = OpKind::from_u8(k).expect("kind");
            assert!(kind.is_udp() && kind.is_tproxy(), "{kind:?}");
            let t = Token::new(
                kind,
                Side::Upstream,
                SlotId {
                    index: 7,
                    generation: 9,
                },
            )
            .with_aux(MAX_AUX);
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
    }

    #[test]
    fn rejects_values_never_issued() {
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(200), None);
        assert_eq!(Token::decode(50), None);
    }
}
