//! Time: the one place that reads the clocks. Two readings travel together
//! as a [`Time`]:
//!
//! - `wall`, unix milliseconds: key expiry (`?ttl=`), an absolute instant
//!   every node agrees on;
//! - `mono`, milliseconds on a monotonic clock since this process started:
//!   ttl-mode freshness ("received `max-age` ago"), which must not jump when
//!   an operator or NTP steps the wall clock.
//!
//! The store never reads a clock itself; it takes a `Time` (moka's point,
//! simpler).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds: unix time (`wall`) or since this process started (`mono`).
pub type Millis = u64;

/// Both clocks, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub wall: Millis,
    pub mono: Millis,
}

impl Time {
    pub fn now() -> Time {
        Time { wall: now_ms(), mono: mono_ms() }
    }

    /// The same instant on both clocks, for tests of the pure parts.
    pub const fn at(ms: Millis) -> Time {
        Time { wall: ms, mono: ms }
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// Unix time in microseconds: the root's commit time that travels with a
/// push (`crate::wire::Push`), for the push-lag histogram.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Milliseconds since the process first asked, on the monotonic clock.
/// Starts at 1 so that 0 never means "now".
pub fn mono_ms() -> Millis {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as Millis + 1
}
