//! Coherence: what a non-root node may do with what it holds. The only
//! place that matches on [`Mode`].
//!
//! - push: the root pushes every committed write to the holders, so a held
//!   entry is always current; parents keep a holder directory.
//! - ttl: no pushes, no holders; an entry is fresh for `max_age` after it
//!   arrived, then revalidated with the parent by version (304: no body).

use crate::config::Mode;
use crate::store::{Lookup, Millis, Version};

/// What to do with a read at a non-root node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer from the store.
    Serve,
    /// The key is deleted (a held tombstone): 404 without asking anyone.
    Deleted,
    /// Held but stale: ask the parent whether `Version` is still current.
    Revalidate(Version),
    /// Not held: fetch from the parent.
    Fetch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coherence {
    pub mode: Mode,
    /// ttl mode's freshness bound per level.
    pub max_age_ms: Option<u64>,
}

impl Coherence {
    pub fn push() -> Self {
        Coherence { mode: Mode::Push, max_age_ms: None }
    }

    pub fn new(mode: Mode, max_age_ms: Option<u64>) -> Self {
        Coherence { mode, max_age_ms }
    }

    /// Whether parents keep holders and push committed writes down.
    pub fn pushes(&self) -> bool {
        match self.mode {
            Mode::Push => true,
            Mode::Ttl => false,
        }
    }

    fn is_fresh(&self, received_at: Millis, now: Millis) -> bool {
        match self.mode {
            Mode::Push => true,
            Mode::Ttl => now < received_at.saturating_add(self.max_age_ms.unwrap_or(0)),
        }
    }

    /// Decides a read at a non-root node from what the store holds.
    pub fn judge(&self, found: &Lookup, now: Millis) -> Decision {
        match found {
            Lookup::Absent => Decision::Fetch,
            Lookup::Value { version, received_at, .. } => {
                if self.is_fresh(*received_at, now) {
                    Decision::Serve
                } else {
                    Decision::Revalidate(*version)
                }
            }
            Lookup::Tombstone { received_at, .. } => {
                if self.is_fresh(*received_at, now) {
                    Decision::Deleted
                } else {
                    Decision::Fetch
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn value(received_at: Millis) -> Lookup {
        Lookup::Value { version: 4, value: Bytes::from_static(b"v"), expires_at: None, received_at }
    }

    #[test]
    fn push_mode_serves_whatever_it_holds() {
        let c = Coherence::push();
        assert!(c.pushes());
        assert_eq!(c.judge(&value(0), 1_000_000), Decision::Serve);
        assert_eq!(c.judge(&Lookup::Tombstone { version: 2, received_at: 0 }, 9), Decision::Deleted);
        assert_eq!(c.judge(&Lookup::Absent, 0), Decision::Fetch);
    }

    #[test]
    fn ttl_mode_revalidates_after_max_age() {
        let c = Coherence::new(Mode::Ttl, Some(1_000));
        assert!(!c.pushes());
        assert_eq!(c.judge(&value(5_000), 5_999), Decision::Serve);
        assert_eq!(c.judge(&value(5_000), 6_000), Decision::Revalidate(4));
        assert_eq!(c.judge(&Lookup::Tombstone { version: 2, received_at: 0 }, 2_000), Decision::Fetch);
    }
}
