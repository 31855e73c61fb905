//! Time as the data path sees it: whole milliseconds since the shard started,
//! supplied by the event loop so that state machines never read a clock.

pub mod wheel;

use std::time::Duration;

/// Milliseconds since the owning shard started.
pub type Millis = u64;

/// A duration in whole milliseconds, saturating (durations are validated to be
/// far below the limit, so saturation only guards against misuse).
pub fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
