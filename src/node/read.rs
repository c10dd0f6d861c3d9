//! The read path. A node answers from its store when coherence allows;
//! otherwise it makes one fill request to its parent, however many readers
//! are waiting for the same key (singleflight), and caches the answer unless
//! a newer push got there first. The parent's side, [`Node::serve_fill`],
//! records the child as a holder in the same critical section as the read,
//! so every later commit reaches it.
//!
//! A consistent read (`?consistent=true`) is a fill that no cache on the
//! way may answer: each hop asks its own parent, up to the root, stores
//! what comes back and records the hop below as a holder, so the node that
//! answers keeps what it returned and never serves older afterwards
//! (DESIGN.md guarantees 2 and 4).

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use tokio::sync::oneshot;

use super::routes::Route;
use super::{Node, CONFIRMED_HEADER, UPSTREAM_TIMEOUT};
use crate::clock::Millis;
use crate::clock::Time;
use crate::coherence::Decision;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, Upstream};
use crate::store::{Answer, Applied, Lookup, NodeId, Update, Version};

/// Whether a read was answered from this node's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    /// The parent could not be reached and `--stale-if-error` allowed
    /// serving what is held past its freshness.
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
        }
    }
}

/// A value found by a read.
#[derive(Debug, Clone)]
pub struct Found {
    pub version: Version,
    pub value: Bytes,
    pub expires_at: Option<Millis>,
    pub cache: CacheStatus,
}

/// What a fill brought back, shared with every reader that waited on it.
#[derive(Debug, Clone)]
pub enum FillOutcome {
    /// `confirmed`: the parent recorded us as a holder (see
    /// [`crate::store::Answer`]).
    Found { version: Version, value: Bytes, expires_at: Option<Millis>, confirmed: bool },
    /// 304: the version we hold is still current.
    Unchanged { confirmed: bool },
    /// 404; `deleted_at` when the parent knows the deletion's version.
    NotFound { deleted_at: Option<Version> },
    /// No answer, or an error answer; `transient` when waiting may cure it
    /// (no answer, 503, 409: see [`Error::awaits_leader`]).
    Failed { url: String, reason: String, transient: bool },
    /// Not asked: `--max-upstream-requests` (`limit`) were in flight.
    Overloaded { limit: u32 },
}

impl FillOutcome {
    /// The error a reader gets from a fill that brought nothing back.
    fn failure(self) -> Error {
        match self {
            FillOutcome::Failed { url, reason, transient: true } => Error::ParentUnreachable { url, reason },
            FillOutcome::Failed { url, reason, transient: false } => Error::ParentRefused { url, reason },
            FillOutcome::Overloaded { limit } => Error::Overloaded { limit },
            _ => Error::Internal("not a failed fill".into()),
        }
    }
}

/// What the parent answers a fill with. `confirmed`: the child was
/// recorded as a holder of the key in this node's current generation
/// (push mode), or the answer is as fresh as this node can vouch for (ttl
/// mode): the child may store it as current. Sent as `X-Treecache-Confirmed`.
pub enum FillAnswer {
    Value { version: Version, value: Bytes, expires_at: Option<Millis>, confirmed: bool },
    NotModified { version: Version, confirmed: bool },
    NotFound { deleted_at: Option<Version> },
}

fn found(lookup: Lookup, cache: CacheStatus) -> Option<Found> {
    match lookup {
        Lookup::Value { version, value, expires_at, .. } => Some(Found { version, value, expires_at, cache }),
        _ => None,
    }
}

impl Node {
    /// A plain read as a client's front door serves it (`GET /kv/{key}`
    /// without `consistent`, RESP GET): a standby root answers from its
    /// copy, any other node by the read path. (Checked only when the read
    /// path finds no place: the hit path takes no lock for it.)
    pub async fn read(&self, key: &str) -> Result<Found> {
        match self.get(key, false).await {
            Err(Error::NotRegistered) if self.is_following() => self.standby_get(key).await,
            result => result,
        }
    }

    /// Whether this node holds `key` (a value or a deletion), fresh or not.
    pub fn holds(&self, key: &str) -> bool {
        !matches!(self.inner.store.get(key, Time::now()), Lookup::Absent)
    }

    /// `GET /kv/{key}`.
    ///
    /// The miss paths' futures are boxed: a hit's future (moved into a box
    /// by actix for every request) stays small. Unboxed, copying it was
    /// 4.5% of a leaf's CPU under wrk.
    pub async fn get(&self, key: &str, consistent: bool) -> Result<Found> {
        let place = self.place()?;
        let store = &self.inner.store;
        let t = Time::now();
        if place.topology.is_root() {
            if let Some(leader) = self.foreign_leader(key)? {
                Metrics::inc(&self.inner.metrics.misses);
                return Box::pin(self.proxy_get(&leader, key, consistent)).await;
            }
            if consistent {
                self.confirm_leading().await?;
                if let Err(e) = self.settle_slot(key).await {
                    // Handed over while it waited on the move.
                    return match (e.is_wrong_group(), self.foreign_leader(key)?) {
                        (true, Some(leader)) => self.proxy_get(&leader, key, consistent).await,
                        _ => Err(e),
                    };
                }
            }
            Metrics::inc(&self.inner.metrics.hits);
            let lookup = store.get(key, t);
            self.wait_committed(lookup.version()).await?;
            return found(lookup, CacheStatus::Hit).ok_or_else(|| Error::NotFound(key.into()));
        }
        let lookup = store.get(key, t);
        if consistent {
            Metrics::inc(&self.inner.metrics.misses);
            return Box::pin(self.fill_and_read(key, Read::Consistent, &lookup)).await;
        }
        match place.coherence.judge(&lookup, t.mono) {
            Decision::Serve => {
                Metrics::inc(&self.inner.metrics.hits);
                found(lookup, CacheStatus::Hit).ok_or_else(|| Error::NotFound(key.into()))
            }
            Decision::Deleted => {
                Metrics::inc(&self.inner.metrics.hits);
                Err(Error::NotFound(key.into()))
            }
            Decision::Revalidate(have) => {
                Metrics::inc(&self.inner.metrics.misses);
                Box::pin(self.fill_and_read(key, Read::Have(have), &lookup)).await
            }
            Decision::Fetch => {
                Metrics::inc(&self.inner.metrics.misses);
                Box::pin(self.fill_and_read(key, Read::Fetch, &lookup)).await
            }
        }
    }

    /// Fills `key` and answers from the store afterwards: if a push overtook
    /// the fill, the store has the newer version and that is what we serve.
    /// `before` is what the store held when the read began.
    async fn fill_and_read(&self, key: &str, read: Read, before: &Lookup) -> Result<Found> {
        let outcome = match read {
            Read::Consistent => self.fetch_from_parent(key, read).await,
            Read::Fetch | Read::Have(_) => self.fill(key, read).await,
        };
        let t = Time::now();
        let held = self.inner.store.get(key, t);
        let confirmed = || found(held.clone(), CacheStatus::Miss).filter(|_| held.is_current());
        match outcome {
            failed @ (FillOutcome::Failed { .. } | FillOutcome::Overloaded { .. }) => {
                let place = self.place()?;
                // A consistent read is the root's answer or none.
                let allowance = self.args().stale_if_error.filter(|_| read != Read::Consistent);
                if place.coherence.may_serve_stale(before, t.mono, allowance) {
                    if let Some(f) = found(before.clone(), CacheStatus::Stale) {
                        Metrics::inc(&self.inner.metrics.stale_served);
                        return Ok(f);
                    }
                }
                Err(failed.failure())
            }
            FillOutcome::NotFound { .. } => confirmed().ok_or_else(|| Error::NotFound(key.into())),
            FillOutcome::Found { version, value, expires_at, .. } => {
                // What the store holds if it is at least as new, current or
                // not (an unconfirmed answer is stored, not current; a node
                // never serves older than it holds); else the answer itself
                // (not cached: the store was reset meanwhile).
                Ok(found(held.clone(), CacheStatus::Miss).filter(|f| f.version >= version).unwrap_or(Found {
                    version,
                    value,
                    expires_at,
                    cache: CacheStatus::Miss,
                }))
            }
            FillOutcome::Unchanged { .. } => match confirmed() {
                Some(f) => Ok(f),
                // Unchanged but not confirmed (or reset meanwhile): what we
                // hold is the parent's version; serve it, still not current.
                None => match (read, found(held.clone(), CacheStatus::Miss)) {
                    (Read::Have(v), Some(f)) if f.version == v => Ok(f),
                    _ => match Box::pin(self.fill(key, Read::Fetch)).await {
                        FillOutcome::Found { version, value, expires_at, .. } => {
                            Ok(Found { version, value, expires_at, cache: CacheStatus::Miss })
                        }
                        failed @ (FillOutcome::Failed { .. } | FillOutcome::Overloaded { .. }) => Err(failed.failure()),
                        _ => Err(Error::NotFound(key.into())),
                    },
                },
            },
        }
    }

    /// One upstream request per key at a time: the first reader fetches,
    /// the others wait for its outcome. If the fetching reader is dropped
    /// (client gone), the waiters see their sender dropped and retry.
    async fn fill(&self, key: &str, read: Read) -> FillOutcome {
        loop {
            let waiter = {
                let mut flights = self.inner.flights.lock();
                match flights.get_mut(key) {
                    Some(waiters) => {
                        let (tx, rx) = oneshot::channel();
                        waiters.push(tx);
                        Some(rx)
                    }
                    None => {
                        flights.insert(key.to_string(), Vec::new());
                        None
                    }
                }
            };
            match waiter {
                Some(rx) => match rx.await {
                    Ok(outcome) => return outcome,
                    Err(_) => continue,
                },
                None => {
                    let flight = Flight { node: self, key };
                    let outcome = self.fetch_from_parent(key, read).await;
                    flight.land(&outcome);
                    return outcome;
                }
            }
        }
    }

    /// Asks the parent for `key` and stores the answer if it is newer than
    /// what arrived meanwhile (and the store was not reset meanwhile: the
    /// parent the answer came from may not be ours any more). The key is
    /// expected while the request is out, so a push that overtakes the
    /// answer is kept.
    async fn fetch_from_parent(&self, key: &str, read: Read) -> FillOutcome {
        let Ok(place) = self.place() else {
            return FillOutcome::Failed { url: "(none)".into(), reason: "not registered".into(), transient: true };
        };
        // The parent, or at a router the leader of the key's group.
        let upstream = match self.upstream_for(key, &place.topology) {
            Ok(Some(upstream)) => upstream,
            Ok(None) => return FillOutcome::NotFound { deleted_at: None },
            Err(e) => return FillOutcome::Failed { url: "(none)".into(), reason: e.to_string(), transient: true },
        };
        let store = &self.inner.store;
        let generation = store.generation();
        // Freshness counts from when we asked, not from when the answer came.
        let asked = Time::now();
        store.expect(key);
        let started = std::time::Instant::now();
        let outcome = self.request_fill(&upstream, key, place.topology.id, read, generation).await;
        match outcome {
            FillOutcome::Overloaded { .. } => {} // not sent
            FillOutcome::Failed { .. } => self.inner.metrics.upstream(Upstream::Fill, false, started.elapsed()),
            _ => self.inner.metrics.upstream(Upstream::Fill, true, started.elapsed()),
        }
        // Stored only if the store was not reset since we asked (checked
        // under the store's lock), and current only if the parent says it
        // recorded us as a holder.
        match &outcome {
            FillOutcome::Found { version, value, expires_at, confirmed } => {
                let update = Update {
                    key: key.to_string(),
                    version: *version,
                    value: Some(value.clone()),
                    expires_at: *expires_at,
                };
                // Newer than what we held (a consistent read, or one
                // that overtook a push on its way): our holders must
                // hear of it, or the push that follows finds us up to
                // date and stops here.
                let answer = Answer { sent_in: generation, confirmed: *confirmed };
                let mark = store.mark();
                if let Some(Applied::Newer { holders }) = store.apply_answer(&update, asked, answer) {
                    self.push_to(&holders, &update, mark);
                }
            }
            FillOutcome::Unchanged { confirmed } => {
                if let Read::Have(v) = read {
                    store.refresh(key, v, asked, Answer { sent_in: generation, confirmed: *confirmed });
                }
                Metrics::inc(&self.inner.metrics.revalidations_unchanged);
            }
            FillOutcome::NotFound { deleted_at } => {
                let mark = store.mark();
                if let Some(Applied::Newer { holders }) = store.apply_absent(key, *deleted_at, asked, generation) {
                    if let Some(version) = deleted_at {
                        let tombstone =
                            Update { key: key.to_string(), version: *version, value: None, expires_at: None };
                        self.push_to(&holders, &tombstone, mark);
                    }
                }
            }
            FillOutcome::Failed { .. } | FillOutcome::Overloaded { .. } => {}
        }
        store.unexpect(key, 0);
        self.note_growth();
        outcome
    }

    async fn request_fill(&self, upstream: &Route, key: &str, me: NodeId, read: Read, generation: u64) -> FillOutcome {
        Metrics::inc(&self.inner.metrics.upstream_requests);
        let parent = upstream.peer().url.as_str();
        let mut url = format!("{parent}/internal/fill/{}?child={me}", crate::client::encode_key(key));
        match read {
            Read::Have(v) => url.push_str(&format!("&have={v}")),
            Read::Consistent => url.push_str("&consistent=true"),
            Read::Fetch => {}
        }
        let Ok(_permit) = self.upstream_permit() else {
            return FillOutcome::Overloaded { limit: self.args().max_upstream_requests };
        };
        let sent =
            self.request_to(upstream, &self.local_http(), Method::GET, &url).timeout(UPSTREAM_TIMEOUT).send().await;
        let failed = |reason: String| FillOutcome::Failed { url: parent.to_string(), reason, transient: true };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return failed(e.to_string()),
        };
        if let Route::Parent(_) = upstream {
            // A group leader is a root: it never evicts, so its ticks (for
            // our "dropped" messages) are not kept.
            self.note_parent_tick(generation, resp.headers());
        }
        // Missing (not a node of this version): not confirmed, the safe side.
        let confirmed = header_u64(&resp, CONFIRMED_HEADER) == Some(1);
        match resp.status() {
            StatusCode::OK => {
                let version = header_u64(&resp, "x-version");
                let expires_at = header_u64(&resp, "x-expires-at");
                match (version, resp.bytes().await) {
                    (Some(version), Ok(value)) => FillOutcome::Found { version, value, expires_at, confirmed },
                    (None, _) => failed("fill answer without X-Version".into()),
                    (_, Err(e)) => failed(e.to_string()),
                }
            }
            StatusCode::NOT_MODIFIED => FillOutcome::Unchanged { confirmed },
            StatusCode::NOT_FOUND => FillOutcome::NotFound { deleted_at: header_u64(&resp, "x-version") },
            status => {
                let reason = format!("{status}: {}", resp.text().await.unwrap_or_default());
                if reason.contains("wrong_group") {
                    self.reread_routes(); // our map is older than that root's
                }
                // The parent is down the line from a leader that is gone
                // (503), or the tree is changing under us (409 not_child):
                // both pass; a 401 or a 500 does not by waiting.
                let transient = matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT);
                FillOutcome::Failed { url: parent.to_string(), reason, transient }
            }
        }
    }

    /// The parent's side of a fill from `child`. In push mode the child is
    /// recorded as a holder atomically with the read. `consistent`: no
    /// cache on the way answers; this node asks its parent first (and
    /// keeps the answer), up to the root.
    pub async fn serve_fill(
        &self,
        key: &str,
        child: NodeId,
        have: Option<Version>,
        consistent: bool,
    ) -> Result<FillAnswer> {
        let place = self.place()?;
        if place.topology.child(child).is_none() {
            return Err(Error::NotChild { child, me: place.topology.id });
        }
        if place.topology.is_root() {
            self.check_own_slot(key)?;
            if consistent {
                self.confirm_leading().await?;
                self.settle_slot(key).await?;
            }
        }
        Metrics::inc(&self.inner.metrics.fills_served);
        let store = &self.inner.store;
        let hold = |t| {
            if place.coherence.pushes() {
                store.get_and_hold(key, child, t)
            } else {
                store.get(key, t)
            }
        };
        let t = Time::now();
        let mut fetched = None;
        // A non-root node may evict, or be told to drop, the key between
        // deciding and recording the child: keep it expected meanwhile.
        let _serving = (!place.topology.is_root()).then(|| Serving::new(store, key));
        if !place.topology.is_root() {
            let read = match (consistent, place.coherence.judge(&store.get(key, t), t.mono)) {
                (true, _) => Some(Read::Consistent),
                (false, Decision::Serve | Decision::Deleted) => None,
                (false, Decision::Revalidate(v)) => Some(Read::Have(v)),
                (false, Decision::Fetch) => Some(Read::Fetch),
            };
            if let Some(read) = read {
                fetched = Some(self.refill(key, read).await?);
            }
        }
        let lookup = hold(Time::now());
        if place.topology.is_root() {
            self.wait_committed(lookup.version()).await?;
        }
        log::debug!(
            "fill of {key} for child {child} (have {have:?}, consistent {consistent}): {:?} current {}",
            lookup.version(),
            lookup.is_current()
        );
        let delay = self.args().fault_fill_delay_ms;
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        Ok(fill_answer(lookup, fetched, have, place.coherence.pushes()))
    }

    /// A fill on behalf of a child: a miss here too goes up first.
    async fn refill(&self, key: &str, read: Read) -> Result<FillOutcome> {
        Metrics::inc(&self.inner.metrics.misses);
        let outcome = match read {
            Read::Consistent => self.fetch_from_parent(key, read).await,
            Read::Fetch | Read::Have(_) => self.fill(key, read).await,
        };
        match outcome {
            failed @ (FillOutcome::Failed { .. } | FillOutcome::Overloaded { .. }) => Err(failed.failure()),
            other => Ok(other),
        }
    }
}

/// What a read asks its parent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Not held: the value.
    Fetch,
    /// Held at this version, stale or unconfirmed: still current?
    Have(Version),
    /// Whatever the root has now, no cache on the way answering.
    Consistent,
}

fn header_u64(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// What a node answers a child's fill with, from what its store holds
/// after the child was (or was not) recorded as a holder (`lookup`) and
/// what it fetched from its own parent for it (`fetched`). `pushes`: push
/// mode.
fn fill_answer(lookup: Lookup, fetched: Option<FillOutcome>, have: Option<Version>, pushes: bool) -> FillAnswer {
    // Confirmed when the child was recorded (a current value, push
    // mode) or, in ttl mode, when the answer is current here or was
    // just fetched from above. Otherwise (reset while we asked, or a
    // fill from before our reset shared with this one) we pass on the
    // newest we know unconfirmed: the child stores it, not as current,
    // since nothing here will push it later changes.
    let fresh_from_above =
        !pushes && matches!(fetched, Some(FillOutcome::Found { .. } | FillOutcome::Unchanged { .. }));
    match (lookup, fetched) {
        (Lookup::Value { version, current: true, .. }, _) if have == Some(version) => {
            FillAnswer::NotModified { version, confirmed: true }
        }
        (Lookup::Value { version, value, expires_at, current: true, .. }, _) => {
            FillAnswer::Value { version, value, expires_at, confirmed: true }
        }
        (held, Some(FillOutcome::Found { version, value, expires_at, .. }))
            if held.version().is_none_or(|v| v < version) =>
        {
            FillAnswer::Value { version, value, expires_at, confirmed: fresh_from_above }
        }
        (Lookup::Value { version, .. }, _) if have == Some(version) => {
            FillAnswer::NotModified { version, confirmed: fresh_from_above }
        }
        (Lookup::Value { version, value, expires_at, .. }, _) => {
            FillAnswer::Value { version, value, expires_at, confirmed: fresh_from_above }
        }
        (_, Some(FillOutcome::NotFound { deleted_at })) => FillAnswer::NotFound { deleted_at },
        (Lookup::Tombstone { version, .. }, _) => FillAnswer::NotFound { deleted_at: Some(version) },
        _ => FillAnswer::NotFound { deleted_at: None },
    }
}

/// A key kept expected while a child's fill of it is served, so neither
/// the evictor nor a parent's invalidation removes it before the child is
/// recorded as its holder (the child would hold what we do not).
struct Serving<'a> {
    store: &'a crate::store::Store,
    key: &'a str,
}

impl<'a> Serving<'a> {
    fn new(store: &'a crate::store::Store, key: &'a str) -> Self {
        store.expect(key);
        Serving { store, key }
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.store.unexpect(self.key, 0);
    }
}

/// The fetching reader's claim on a key's flight. Landing hands the outcome
/// to every waiter; dropping without landing (the reader was cancelled)
/// releases the key so a waiter retries.
struct Flight<'a> {
    node: &'a Node,
    key: &'a str,
}

impl Flight<'_> {
    fn land(self, outcome: &FillOutcome) {
        let waiters = self.node.inner.flights.lock().remove(self.key).unwrap_or_default();
        for tx in waiters {
            let _ = tx.send(outcome.clone());
        }
        std::mem::forget(self);
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.node.inner.flights.lock().remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(version: Version, current: bool) -> Lookup {
        Lookup::Value { version, value: Bytes::from_static(b"v"), expires_at: None, received_at: 0, current }
    }

    fn fetched(version: Version) -> Option<FillOutcome> {
        Some(FillOutcome::Found { version, value: Bytes::from_static(b"f"), expires_at: None, confirmed: true })
    }

    fn confirmed(a: &FillAnswer) -> Option<(Version, bool)> {
        match a {
            FillAnswer::Value { version, confirmed, .. } | FillAnswer::NotModified { version, confirmed } => {
                Some((*version, *confirmed))
            }
            FillAnswer::NotFound { .. } => None,
        }
    }

    #[test]
    fn only_a_current_entry_answers_confirmed_in_push_mode() {
        // Current here: the child was recorded with the read.
        assert_eq!(confirmed(&fill_answer(value(5, true), None, None, true)), Some((5, true)));
        let a = fill_answer(value(5, true), None, Some(5), true);
        assert!(matches!(a, FillAnswer::NotModified { version: 5, confirmed: true }));
        // Reset while we asked (or our fill was one begun before our reset,
        // shared): what we fetched is passed on, but we hold no record of
        // the child, so it must not take it as current.
        assert_eq!(confirmed(&fill_answer(value(5, false), fetched(7), None, true)), Some((7, false)));
        assert_eq!(confirmed(&fill_answer(Lookup::Absent, fetched(7), None, true)), Some((7, false)));
        let a = fill_answer(value(5, false), Some(FillOutcome::Unchanged { confirmed: true }), Some(5), true);
        assert!(matches!(a, FillAnswer::NotModified { version: 5, confirmed: false }), "a 304 that confirms nothing");
        // A kept entry newer than what was fetched is the answer, unconfirmed.
        assert_eq!(confirmed(&fill_answer(value(9, false), fetched(7), None, true)), Some((9, false)));
        // Not current and nothing fetched (reset between deciding and
        // recording): the value, unconfirmed, not a 404.
        assert_eq!(confirmed(&fill_answer(value(9, false), None, None, true)), Some((9, false)));
    }

    #[test]
    fn ttl_mode_confirms_what_was_just_fetched() {
        assert_eq!(confirmed(&fill_answer(value(5, false), fetched(7), None, false)), Some((7, true)));
        let a = fill_answer(value(5, false), Some(FillOutcome::Unchanged { confirmed: true }), Some(5), false);
        assert!(matches!(a, FillAnswer::NotModified { version: 5, confirmed: true }));
        assert_eq!(confirmed(&fill_answer(value(5, false), None, None, false)), Some((5, false)));
    }

    #[test]
    fn absent_answers_carry_the_newest_deletion() {
        let tomb = Lookup::Tombstone { version: 8, received_at: 0, current: true };
        assert!(matches!(
            fill_answer(tomb.clone(), fetched(7), None, true),
            FillAnswer::NotFound { deleted_at: Some(8) }
        ));
        assert_eq!(confirmed(&fill_answer(tomb, fetched(9), None, true)), Some((9, false)));
        let gone = Some(FillOutcome::NotFound { deleted_at: Some(3) });
        assert!(matches!(fill_answer(Lookup::Absent, gone, None, true), FillAnswer::NotFound { deleted_at: Some(3) }));
        assert!(matches!(fill_answer(Lookup::Absent, None, None, true), FillAnswer::NotFound { deleted_at: None }));
    }
}
