//! Coherence: what a non-root node may do with what it holds. The only
//! place that matches on [`Mode`].
//!
//! - push: the root pushes every committed write to the holders, so a held
//!   entry is always current; parents keep a holder directory.
//! - ttl: no pushes, no holders; an entry is fresh for `max_age` after it
//!   arrived (monotonic clock), then revalidated with the parent by version
//!   (304: no body).
//!
//! In both modes an entry kept across a reset (new parent, new epoch) is
//! not current until a parent confirms it. When the parent cannot be
//! reached, a stale or unconfirmed entry is not served (503), unless
//! `--stale-if-error` allows it for a while longer (DESIGN.md guarantee 7).

use std::time::Duration;

use crate::clock::Millis;
use crate::store::{Lookup, Version};

/// Coherence mode, chosen at the root and handed to nodes at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The root pushes every committed write down to the children that hold the key.
    Push,
    /// No pushes; entries below the root are fresh for --max-age, then revalidated.
    Ttl,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Push => "push",
            Mode::Ttl => "ttl",
        }
    }
}

/// What to do with a read at a non-root node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer from the store.
    Serve,
    /// The key is deleted (a held tombstone): 404 without asking anyone.
    Deleted,
    /// Held but stale or unconfirmed: ask the parent whether `Version` is
    /// still current.
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

    /// How long after arrival an entry may be served without asking.
    fn fresh_for(&self) -> Option<Millis> {
        match self.mode {
            Mode::Push => None,
            Mode::Ttl => Some(self.max_age_ms.unwrap_or(0)),
        }
    }

    fn is_fresh(&self, received_at: Millis, mono: Millis) -> bool {
        self.fresh_for().is_none_or(|age| mono < received_at.saturating_add(age))
    }

    /// Decides a read at a non-root node from what the store holds; `mono`
    /// is the monotonic clock now.
    pub fn judge(&self, found: &Lookup, mono: Millis) -> Decision {
        match found {
            Lookup::Absent | Lookup::Tombstone { current: false, .. } => Decision::Fetch,
            Lookup::Value { version, current: false, .. } => Decision::Revalidate(*version),
            Lookup::Value { version, received_at, .. } => {
                if self.is_fresh(*received_at, mono) {
                    Decision::Serve
                } else {
                    Decision::Revalidate(*version)
                }
            }
            Lookup::Tombstone { received_at, .. } => {
                if self.is_fresh(*received_at, mono) {
                    Decision::Deleted
                } else {
                    Decision::Fetch
                }
            }
        }
    }

    /// The parent cannot be reached and `found` could not be confirmed:
    /// may it be served anyway (marked stale)? Only with
    /// `--stale-if-error`, and only until the entry is that much older
    /// than it could be when fresh (max-age in ttl mode, 0 in push mode).
    pub fn may_serve_stale(&self, found: &Lookup, mono: Millis, stale_if_error: Option<Duration>) -> bool {
        let (Some(extra), Some(received_at)) = (stale_if_error, found.received_at()) else { return false };
        if !matches!(found, Lookup::Value { .. }) {
            return false;
        }
        let limit = self.fresh_for().unwrap_or(0).saturating_add(extra.as_millis() as Millis);
        mono < received_at.saturating_add(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn value(received_at: Millis, current: bool) -> Lookup {
        Lookup::Value { version: 4, value: Bytes::from_static(b"v"), expires_at: None, received_at, current }
    }

    #[test]
    fn push_mode_serves_whatever_it_holds_once_confirmed() {
        let c = Coherence::push();
        assert!(c.pushes());
        assert_eq!(c.judge(&value(0, true), 1_000_000), Decision::Serve);
        assert_eq!(c.judge(&value(0, false), 1), Decision::Revalidate(4));
        assert_eq!(c.judge(&Lookup::Tombstone { version: 2, received_at: 0, current: true }, 9), Decision::Deleted);
        assert_eq!(c.judge(&Lookup::Absent, 0), Decision::Fetch);
    }

    #[test]
    fn ttl_mode_revalidates_after_max_age() {
        let c = Coherence::new(Mode::Ttl, Some(1_000));
        assert!(!c.pushes());
        assert_eq!(c.judge(&value(5_000, true), 5_999), Decision::Serve);
        assert_eq!(c.judge(&value(5_000, true), 6_000), Decision::Revalidate(4));
        assert_eq!(c.judge(&value(5_000, false), 5_001), Decision::Revalidate(4));
        assert_eq!(c.judge(&Lookup::Tombstone { version: 2, received_at: 0, current: true }, 2_000), Decision::Fetch);
    }

    #[test]
    fn stale_entries_are_served_on_error_only_within_the_allowance() {
        let ttl = Coherence::new(Mode::Ttl, Some(1_000));
        let held = value(5_000, true);
        assert!(!ttl.may_serve_stale(&held, 6_500, None), "no allowance: 503");
        let extra = Some(Duration::from_millis(2_000));
        assert!(ttl.may_serve_stale(&held, 7_999, extra));
        assert!(!ttl.may_serve_stale(&held, 8_000, extra), "max-age + stale-if-error is the bound");
        let push = Coherence::push();
        assert!(push.may_serve_stale(&value(5_000, false), 6_999, extra));
        assert!(!push.may_serve_stale(&value(5_000, false), 7_000, extra));
        assert!(!push.may_serve_stale(&Lookup::Absent, 0, extra));
    }
}
