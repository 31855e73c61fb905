//! The shard: one pinned thread, one io_uring, its listeners, buffers,
//! connections and sessions. `event_loop` executes on the ring; `engine`
//! routes completions and timers to the services (`tcp`, `udp`) that work on
//! the shard `context`; `ops` is the interface between the two halves.

pub(crate) mod buffers;
pub(crate) mod context;
pub mod engine;
pub(crate) mod event_loop;
pub(crate) mod ops;
pub(crate) mod pipes;
pub(crate) mod resolve;
pub mod slab;
pub(crate) mod tcp;
pub mod token;
pub mod udp;
