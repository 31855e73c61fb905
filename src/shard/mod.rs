//! The shard: one pinned thread, one io_uring, its listeners, buffers and
//! connections. `engine` decides (no I/O); `event_loop` executes on the ring.

pub mod engine;
pub mod event_loop;
pub mod slab;
pub mod token;
pub mod udp;
