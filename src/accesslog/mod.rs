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
//! Wiring, from the control thread:
//!
//! ```no_run
//! # use ringfwd::accesslog::*;
//! # use std::time::Duration;
//! let sink = Sink::from_config("/var/log/ringfwd/access.log");
//! let (log, handles) = AccessLog::start(&sink, Format::Json, 2)?;
//! // move one handle into each shard; it calls log() at close, flush() per turn
//! log.reopen(); // on SIGUSR1
//! drop(handles); // the shards exit, dropping theirs
//! log.shutdown(Duration::from_secs(2));
//! # Ok::<(), StartError>(())
//! ```
//!
//! This is the one cross-thread queue a shard writes on its data path; it is
//! touched once per loop turn with lines, never per line, and never blocks.

mod record;
mod time;
mod writer;

pub use record::{AccessRecord, Format, Proto, format_json, format_text, push_text_str};
pub use time::push_rfc3339_ms;
pub use writer::{
    AccessLog, AccessLogShard, BATCH_BYTES, QUEUE_BATCHES, Shutdown, Sink, StartError,
};
