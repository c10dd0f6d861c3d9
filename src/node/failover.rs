//! Holding a request through a failover (`--failover-wait`, DESIGN.md
//! "Root groups", last point): while no leader can be reached for a key (the
//! leader died and a standby is taking over, a re-election, this node
//! re-registering under the new root), a read that needs the leader or a
//! write is tried again until it gets through or the wait is over, and only
//! then answered 503 with `Retry-After`. A client sees a slower answer, not
//! an error. Owns the retry loop; the paths it retries are the read and
//! write paths as they are, so nothing is done twice that a try had done:
//! only errors that say no leader was reached are retried
//! ([`Error::awaits_leader`]).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::Node;
use crate::error::Result;
use crate::metrics::Metrics;

/// The first pause between tries; each is twice the last, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const MAX_PAUSE: Duration = Duration::from_millis(250);

impl Node {
    /// A request a root passed to the owner it knew, who no longer owns
    /// the key (see [`crate::error::Error::is_stale_route`]).
    fn stale_at_root(&self, e: &crate::error::Error) -> bool {
        e.is_stale_route() && self.place().is_ok_and(|p| p.topology.is_root())
    }

    /// Runs `attempt` until it succeeds, fails for another reason than a
    /// missing leader (or `may_wait` says this request does not wait), or
    /// `--failover-wait` has passed since its first such failure (then that
    /// failure, a 503). With `--failover-wait 0` it runs once.
    pub async fn through_failover<T, F, Fut>(&self, may_wait: impl Fn() -> bool, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // Counted from the request's start: a try that took long (an
        // unanswered fill) uses up the wait too.
        let until = Instant::now() + self.args().failover_wait;
        let mut waiting = false;
        let mut pause = FIRST_PAUSE;
        loop {
            let error = match attempt().await {
                // At a root, a stale route waits whatever the request, a
                // plain read of a key held here too: the key's slot has a
                // new owner (maybe this root, once it reads the map again),
                // and the copy held here is not the answer.
                Err(e) if e.awaits_leader() && (waiting || may_wait() || self.stale_at_root(&e)) => e,
                done => return done,
            };
            let now = Instant::now();
            if now >= until || self.is_shutting_down() {
                if waiting {
                    Metrics::inc(&self.inner.metrics.failover_timeouts);
                }
                return Err(error);
            }
            if !waiting {
                Metrics::inc(&self.inner.metrics.failover_waits);
                waiting = true;
            }
            tokio::time::sleep(pause.min(until - now)).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}
