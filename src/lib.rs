//! ringfwd: a thread-per-core L4 (TCP and UDP) forwarder on io_uring, with a
//! built-in load generator (`bench`) on the same ring layer.
//!
//! Layers, top to bottom (dependencies point down only):
//! `cli`/`main` → `config` → `runtime` (control thread) → `shard` (event loop) →
//! `tcp` (relay state machines, no I/O) → `ring`/`sys` (everything that talks to the kernel).
//! See ARCHITECTURE.md (the code map, the life of a connection and a datagram)
//! and README.md.

pub(crate) mod accesslog;
pub mod admin;
pub mod balance;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dns;
pub mod front;
pub(crate) mod health;
pub mod ring;
pub mod runtime;
pub mod shard;
pub mod stats;
pub mod sys;
pub mod tcp;
pub mod time;
pub mod udp;
pub mod upstream;
pub mod verify;
