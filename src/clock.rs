//! Wall-clock time in unix milliseconds: the one place that reads the system
//! clock for expiry and freshness. The store never calls it; it takes `now`.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::Millis;

pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}
