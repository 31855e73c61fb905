//! The access log (`[log] access`, `[log] format`): one line per TCP
//! connection when it closes and per UDP session when it ends.
//!
//! A shard never waits for the log. It formats each line into its own batch
//! buffer (`AccessLogShard::log`) and, at the end of an event-loop turn, hands
//! the batch to the writer thread through its own bounded queue
//! (`AccessLogShard::flush`, a `try_send`; while the writer is busy with the
//! shard's previous batch, lines gather into a bigger one). A full queue drops the batch and counts its lines; the shard
//! reads the count with `dropped()`. The writer thread owns the file, writes
//! with write(2), and reopens it on `AccessLog::reopen` (SIGUSR1, logrotate).
//!
//! Wiring, from the control thread (`runtime`): `AccessLog::start(&sink,
//! format, shards)` opens the sink and gives one `AccessLogShard` per shard;
//! each shard calls `log` at every close and `flush` once per loop turn;
//! SIGUSR1 calls `AccessLog::reopen`; at exit the shards drop their handles
//! and `AccessLog::shutdown` waits (bounded) for the writer.
//!
//! This is the one cross-thread queue a shard writes on its data path; it is
//! touched once per loop turn with lines, never per line, and never blocks.

mod record;
mod time;
mod writer;

pub(crate) use record::{AccessRecord, Format, Proto};
pub(crate) use writer::{AccessLog, AccessLogShard, Sink};
