//! The read path. A node answers from its store when coherence allows;
//! otherwise it makes one fill request to its parent, however many readers
//! are waiting for the same key (singleflight), and caches the answer unless
//! a newer push got there first. The parent's side, [`Node::serve_fill`],
//! records the child as a holder in the same critical section as the read,
//! so every later commit reaches it.

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::StatusCode;
use tokio::sync::oneshot;

use super::{Node, EPOCH_HEADER, UPSTREAM_TIMEOUT};
use crate::clock::now_ms;
use crate::coherence::Decision;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{Lookup, Millis, NodeId, Update, Version};

/// Whether a read was answered from this node's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
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
    Found {
        version: Version,
        value: Bytes,
        expires_at: Option<Millis>,
    },
    /// 304: the version we hold is still current.
    Unchanged,
    NotFound,
    Failed {
        url: String,
        reason: String,
    },
}

/// What the parent answers a fill with.
pub enum FillAnswer {
    Value { version: Version, value: Bytes, expires_at: Option<Millis> },
    NotModified { version: Version },
    NotFound,
}

/// Percent-encodes a key for a URL path segment.
pub fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, NON_ALPHANUMERIC).to_string()
}

fn found(lookup: Lookup, cache: CacheStatus) -> Option<Found> {
    match lookup {
        Lookup::Value { version, value, expires_at, .. } => Some(Found { version, value, expires_at, cache }),
        _ => None,
    }
}

impl Node {
    /// `GET /kv/{key}`.
    pub async fn get(&self, key: &str, consistent: bool) -> Result<Found> {
        let place = self.place()?;
        let store = &self.inner.store;
        let now = now_ms();
        if place.topology.is_root() {
            Metrics::inc(&self.inner.metrics.hits);
            return found(store.get(key, now), CacheStatus::Hit).ok_or_else(|| Error::NotFound(key.into()));
        }
        if consistent {
            Metrics::inc(&self.inner.metrics.misses);
            return self.read_from_root(&place.root_url, key).await;
        }
        let lookup = store.get(key, now);
        match place.coherence.judge(&lookup, now) {
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
                self.fill_and_read(key, Some(have)).await
            }
            Decision::Fetch => {
                Metrics::inc(&self.inner.metrics.misses);
                self.fill_and_read(key, None).await
            }
        }
    }

    /// Fills `key` and answers from the store afterwards: if a push overtook
    /// the fill, the store has the newer version and that is what we serve.
    async fn fill_and_read(&self, key: &str, have: Option<Version>) -> Result<Found> {
        let outcome = self.fill(key, have).await;
        let held = found(self.inner.store.get(key, now_ms()), CacheStatus::Miss);
        match outcome {
            FillOutcome::Failed { url, reason } => match held {
                // The parent is unreachable but a value is held (ttl mode,
                // stale): keep serving what we have.
                Some(f) if have.is_some() => Ok(Found { cache: CacheStatus::Hit, ..f }),
                _ => Err(Error::ParentUnreachable { url, reason }),
            },
            FillOutcome::NotFound => held.ok_or_else(|| Error::NotFound(key.into())),
            FillOutcome::Found { version, value, expires_at } => {
                // Not cached (the store was cleared meanwhile): serve the answer.
                Ok(held.unwrap_or(Found { version, value, expires_at, cache: CacheStatus::Miss }))
            }
            FillOutcome::Unchanged => match held {
                Some(f) => Ok(f),
                None => match Box::pin(self.fill(key, None)).await {
                    FillOutcome::Found { version, value, expires_at } => {
                        Ok(Found { version, value, expires_at, cache: CacheStatus::Miss })
                    }
                    FillOutcome::Failed { url, reason } => Err(Error::ParentUnreachable { url, reason }),
                    _ => Err(Error::NotFound(key.into())),
                },
            },
        }
    }

    /// One upstream request per key at a time: the first reader fetches,
    /// the others wait for its outcome. If the fetching reader is dropped
    /// (client gone), the waiters see their sender dropped and retry.
    async fn fill(&self, key: &str, have: Option<Version>) -> FillOutcome {
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
                    let outcome = self.fetch_from_parent(key, have).await;
                    flight.land(&outcome);
                    return outcome;
                }
            }
        }
    }

    /// Asks the parent for `key` (with `have`, a revalidation) and stores
    /// the answer if it is newer than what arrived meanwhile.
    async fn fetch_from_parent(&self, key: &str, have: Option<Version>) -> FillOutcome {
        let Ok(place) = self.place() else {
            return FillOutcome::Failed { url: "(none)".into(), reason: "not registered".into() };
        };
        let Some(parent) = place.topology.parent.clone() else {
            return FillOutcome::NotFound;
        };
        let store = &self.inner.store;
        let generation = store.generation();
        store.expect(key, now_ms() + UPSTREAM_TIMEOUT.as_millis() as u64);
        let outcome = self.request_fill(&parent.url, key, place.topology.id, have).await;
        let now = now_ms();
        if generation == store.generation() {
            match &outcome {
                FillOutcome::Found { version, value, expires_at } => {
                    let update = Update {
                        key: key.to_string(),
                        version: *version,
                        value: Some(value.clone()),
                        expires_at: *expires_at,
                    };
                    store.apply(&update, now);
                }
                FillOutcome::Unchanged => {
                    if let Some(v) = have {
                        store.refresh(key, v, now);
                    }
                    Metrics::inc(&self.inner.metrics.revalidations_unchanged);
                }
                // A held entry (ttl mode) whose key is gone upstream goes too.
                FillOutcome::NotFound if have.is_some() => {
                    store.remove(key);
                }
                _ => {}
            }
        }
        store.unexpect(key);
        outcome
    }

    async fn request_fill(&self, parent: &str, key: &str, me: NodeId, have: Option<Version>) -> FillOutcome {
        Metrics::inc(&self.inner.metrics.upstream_requests);
        let mut url = format!("{parent}/internal/fill/{}?child={me}", encode_key(key));
        if let Some(v) = have {
            url.push_str(&format!("&have={v}"));
        }
        let sent =
            self.local_http().get(&url).header(EPOCH_HEADER, self.epoch()).timeout(UPSTREAM_TIMEOUT).send().await;
        let failed = |reason: String| FillOutcome::Failed { url: parent.to_string(), reason };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return failed(e.to_string()),
        };
        match resp.status() {
            StatusCode::OK => {
                let version = header_u64(&resp, "x-version");
                let expires_at = header_u64(&resp, "x-expires-at");
                match (version, resp.bytes().await) {
                    (Some(version), Ok(value)) => FillOutcome::Found { version, value, expires_at },
                    (None, _) => failed("fill answer without X-Version".into()),
                    (_, Err(e)) => failed(e.to_string()),
                }
            }
            StatusCode::NOT_MODIFIED => FillOutcome::Unchanged,
            StatusCode::NOT_FOUND => FillOutcome::NotFound,
            status => failed(format!("{status}: {}", resp.text().await.unwrap_or_default())),
        }
    }

    /// `?consistent=true`: read at the root, bypassing every cache.
    async fn read_from_root(&self, root: &str, key: &str) -> Result<Found> {
        Metrics::inc(&self.inner.metrics.upstream_requests);
        let url = format!("{root}/kv/{}", encode_key(key));
        let resp = self
            .local_http()
            .get(&url)
            .timeout(UPSTREAM_TIMEOUT)
            .send()
            .await
            .map_err(|e| Error::parent_unreachable(root, e))?;
        match resp.status() {
            StatusCode::OK => {
                let version = header_u64(&resp, "x-version").unwrap_or(0);
                let value = resp.bytes().await.map_err(|e| Error::parent_unreachable(root, e))?;
                Ok(Found { version, value, expires_at: None, cache: CacheStatus::Miss })
            }
            StatusCode::NOT_FOUND => Err(Error::NotFound(key.into())),
            status => {
                Err(Error::Upstream { url, status: status.as_u16(), body: resp.text().await.unwrap_or_default() })
            }
        }
    }

    /// The parent's side of a fill from `child`. In push mode the child is
    /// recorded as a holder atomically with the read.
    pub async fn serve_fill(&self, key: &str, child: NodeId, have: Option<Version>) -> Result<FillAnswer> {
        let place = self.place()?;
        Metrics::inc(&self.inner.metrics.fills_served);
        let store = &self.inner.store;
        let hold = |now| {
            if place.coherence.pushes() {
                store.get_and_hold(key, child, now)
            } else {
                store.get(key, now)
            }
        };
        let lookup = if place.topology.is_root() {
            hold(now_ms())
        } else {
            let now = now_ms();
            match place.coherence.judge(&store.get(key, now), now) {
                Decision::Serve => hold(now),
                Decision::Deleted => Lookup::Absent,
                Decision::Revalidate(v) => self.refill(key, Some(v)).await.map(|_| hold(now_ms()))?,
                Decision::Fetch => self.refill(key, None).await.map(|_| hold(now_ms()))?,
            }
        };
        let delay = self.args().fault_fill_delay_ms;
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        Ok(match lookup {
            Lookup::Value { version, .. } if have == Some(version) => FillAnswer::NotModified { version },
            Lookup::Value { version, value, expires_at, .. } => FillAnswer::Value { version, value, expires_at },
            _ => FillAnswer::NotFound,
        })
    }

    /// A fill on behalf of a child: a miss here too goes up first.
    async fn refill(&self, key: &str, have: Option<Version>) -> Result<()> {
        Metrics::inc(&self.inner.metrics.misses);
        match self.fill(key, have).await {
            FillOutcome::Failed { url, reason } => Err(Error::ParentUnreachable { url, reason }),
            _ => Ok(()),
        }
    }
}

fn header_u64(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.parse().ok()
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
