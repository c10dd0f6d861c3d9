//! Membership: how a node gets and keeps its place.
//!
//! A non-root node finds the root (`--root-url` or the `root` znode),
//! registers, creates its own `live/<id>` znode, and re-joins whenever the
//! root znode changes, its live znode goes (session expiry), or every few
//! seconds as a check (registration is idempotent, and its answer repairs a
//! lost topology message).
//!
//! The root wins the election, raises the epoch, rebuilds `tree/` from its
//! registry, and is the registrar: it places nodes, reaps those whose live
//! znode went, re-attaches their children, mirrors the registry to
//! ZooKeeper, and tells each node whose place changed.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use zookeeper_client::{Client, Error as ZkError, OneshotWatcher, SessionState};

use super::{Node, Place};
use crate::clock::now_ms;
use crate::coherence::Coherence;
use crate::error::{Error, Result};
use crate::store::NodeId;
use crate::tree::placement::{self, Registry};
use crate::tree::zk;
use crate::wire::{RegisterRequest, Registration, Topology};

/// How often a registered node re-checks its place with the root.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A node placed this recently is not reaped for lacking a live znode yet.
const LIVE_GRACE_MS: u64 = 5_000;
const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) struct Membership {
    zk: Mutex<Option<Client>>,
    /// The whole tree; `Some` at the root only.
    pub(super) registry: Mutex<Option<Registry>>,
    /// What `tree/` holds in ZooKeeper; the lock serializes mirror writes.
    mirror: tokio::sync::Mutex<BTreeMap<String, String>>,
    /// Our id once granted (0: none yet).
    id: AtomicU64,
}

impl Membership {
    pub(super) fn new() -> Self {
        Membership {
            zk: Mutex::new(None),
            registry: Mutex::new(None),
            mirror: tokio::sync::Mutex::new(BTreeMap::new()),
            id: AtomicU64::new(0),
        }
    }
}

/// What wakes a registered node to re-join.
struct Watches {
    zk: Client,
    root: Option<OneshotWatcher>,
    live: Option<OneshotWatcher>,
}

/// An error that says the connection to ZooKeeper is in trouble, not that
/// the request was refused: the session may still live. The client reports
/// a silent server ("no response from connection in 2400ms") as a custom
/// error.
fn is_connection_trouble(e: &ZkError) -> bool {
    matches!(e, ZkError::ConnectionLoss | ZkError::Timeout | ZkError::Custom(_))
}

/// Tries of watching `live/` that may fail in a row while the connection
/// says it is fine (100 ms apart) before the leader stands again.
const WATCH_RETRIES: u32 = 50;

impl Node {
    pub(super) async fn run_membership(self) {
        let mut failures: u32 = 0;
        loop {
            if self.is_shutting_down() {
                return;
            }
            let joined = if self.args().root { self.become_root().await } else { self.join().await };
            match joined {
                Ok(watches) => {
                    failures = 0;
                    if self.args().root {
                        self.watch_live(watches.zk).await;
                    } else {
                        self.wait_for_change(watches).await;
                    }
                }
                Err(e) if e.is_zk_not_authorized() => {
                    // Retrying cannot help: every node of a cluster needs
                    // the secret its znodes' ACL was made from.
                    log::error!(
                        "FATAL: {e}: this node's cluster secret does not match the one cluster {:?} was created \
                         with (its znodes' ACL refuses it); start every node of the cluster with the same \
                         --cluster-secret-file",
                        self.args().cluster
                    );
                    std::process::exit(super::EXIT_CONFIG);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(20) {
                        log::warn!("joining the tree failed (try {failures}): {e}");
                    }
                    let backoff = Duration::from_millis((100u64 << failures.min(4)).min(1_000));
                    if !self.pause(backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// The ZooKeeper client, reconnecting if the session is gone.
    pub(super) async fn zk(&self) -> Result<Client> {
        if let Some(client) = self.inner.membership.zk.lock().clone() {
            if !client.state().is_terminated() {
                return Ok(client);
            }
        }
        let tls = self.inner.tls.as_ref().filter(|_| self.args().zk_tls).map(|t| t.zk_options());
        let client = zk::connect(&self.args().zk, &self.inner.paths, tls).await?;
        *self.inner.membership.zk.lock() = Some(client.clone());
        Ok(client)
    }

    /// The ZooKeeper session's state, as `treecache_zk_session_state`
    /// names it ([`crate::metrics::ZK_STATES`]).
    pub fn zk_state(&self) -> &'static str {
        use zookeeper_client::SessionState as S;
        match self.inner.membership.zk.lock().as_ref().map(Client::state) {
            None => "none",
            Some(S::Disconnected) => "disconnected",
            Some(S::SyncConnected) => "sync_connected",
            Some(S::AuthFailed) => "auth_failed",
            Some(S::ConnectedReadOnly) => "connected_read_only",
            Some(S::Expired) => "expired",
            Some(S::Closed) => "closed",
        }
    }

    /// This node's id once granted (a standby root's too).
    /// This node's id: the one it registered with, else `--id`.
    pub fn node_id(&self) -> Option<NodeId> {
        match self.inner.membership.id.load(Ordering::Acquire) {
            0 => self.args().id,
            id => Some(id),
        }
    }

    async fn root_url(&self, zk: &Client) -> Result<String> {
        if let Some(url) = &self.args().root_url {
            return Ok(url.trim_end_matches('/').to_string());
        }
        let root = zk::read_root(zk, &self.inner.paths).await?;
        root.map(|r| r.url).ok_or_else(|| Error::Internal(format!("no root published at {}", self.inner.paths.root())))
    }

    /// Registers with the root and takes the place it gives.
    async fn join(&self) -> Result<Watches> {
        let zk = self.zk().await?;
        let root_url = self.root_url(&zk).await?;
        let request = RegisterRequest { url: self.url().to_string(), id: self.node_id() };
        let url = format!("{root_url}/clients/register");
        let resp = self
            .inner
            .http
            .post(&url)
            .json(&request)
            .timeout(CONTROL_TIMEOUT)
            .send()
            .await
            .map_err(|e| Error::parent_unreachable(&root_url, e))?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            // The root says which credential: the secret, or (under TLS)
            // our certificate.
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            let what = match body["error"].as_str() {
                Some(why) if why.contains("certificate") => format!("our certificate: {why}"),
                _ => "our cluster secret".into(),
            };
            return Err(Error::Internal(format!("the root {root_url} refused {what} (401): not joining")));
        }
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            return Err(Error::Upstream { url, status, body: resp.text().await.unwrap_or_default() });
        }
        let reg: Registration = resp.json().await.map_err(|e| Error::parent_unreachable(&root_url, e))?;
        let have = self.epoch();
        if reg.epoch < have {
            return Err(Error::StaleEpoch { got: reg.epoch, have });
        }
        zk::create_ephemeral(&zk, &self.inner.paths, &self.inner.paths.live_node(reg.id), self.live_data().as_bytes())
            .await?;
        let first = self.inner.membership.id.swap(reg.id, Ordering::AcqRel) == 0;
        if first {
            log::info!(
                "registered as node {} under {} ({}), depth {}",
                reg.id,
                reg.parent_id,
                reg.parent_url,
                reg.depth
            );
        }
        self.inner.epoch.fetch_max(reg.epoch, Ordering::AcqRel);
        let coherence = Coherence::new(reg.mode, reg.max_age_ms);
        self.adopt(reg.topology, coherence, root_url, reg.fresh || reg.epoch > have);
        let root = zk.check_and_watch_stat(&self.inner.paths.root()).await.ok().map(|(_, w)| w);
        let live = zk.check_and_watch_stat(&self.inner.paths.live_node(reg.id)).await.ok().map(|(_, w)| w);
        Ok(Watches { zk, root, live })
    }

    /// The data of our `live/<id>` znode: our URL, and the slot map epoch
    /// our route view has applied (a move deletes a slot's old copy only
    /// once every live node is on the map that moved it).
    pub(super) fn live_data(&self) -> String {
        let map_epoch = self.routes().map.as_ref().map_or(0, |m| m.epoch());
        serde_json::json!({ "url": self.url(), "map_epoch": map_epoch }).to_string()
    }

    async fn wait_for_change(&self, w: Watches) {
        let mut state = w.zk.state_watcher();
        let mut shutdown = self.subscribe_shutdown();
        let fired = |w: Option<OneshotWatcher>| async move {
            match w {
                Some(w) => {
                    w.changed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = fired(w.root) => log::info!("the root znode changed: re-joining"),
            _ = self.live_gone(&w.zk, w.live) => log::info!("our live znode changed: re-joining"),
            s = state.changed() => if s.is_terminated() {
                log::warn!("ZooKeeper session {s:?}: reconnecting and re-joining");
            },
            _ = tokio::time::sleep(self.check_every()) => {},
            _ = shutdown.changed() => {},
        }
    }

    /// How often a node registers again while nothing changed:
    /// [`CHECK_EVERY`], or the hidden `--fault-rejoin-every-ms`.
    fn check_every(&self) -> Duration {
        match self.args().fault_rejoin_every_ms {
            0 => CHECK_EVERY,
            ms => Duration::from_millis(ms),
        }
    }

    /// Waits until our `live/` znode changes other than by our own record
    /// of the map epoch we route by (which every node writes at every
    /// slot map change: a re-join for it would have every node register
    /// again at every cutover).
    async fn live_gone(&self, zk: &Client, mut w: Option<OneshotWatcher>) {
        loop {
            let Some(watcher) = w.take() else { return std::future::pending().await };
            if watcher.changed().await.event_type != zookeeper_client::EventType::NodeDataChanged {
                return;
            }
            let Some(id) = self.node_id() else { return };
            match zk.check_and_watch_stat(&self.inner.paths.live_node(id)).await {
                Ok((Some(_), next)) => w = Some(next),
                _ => return,
            }
        }
    }

    /// Takes a place. `reset`: what we hold is unknown to the (new) parent:
    /// keep it, but unconfirmed, and have our subtree do the same. The root
    /// never resets: its store is the truth, whatever happened to its
    /// ZooKeeper session.
    pub(super) fn adopt(&self, topology: Topology, coherence: Coherence, root_url: String, reset: bool) {
        let (reset, children) = {
            let mut place = self.inner.place.write();
            let reset = match place.as_ref() {
                None => true,
                Some(old) => {
                    if !reset && old.topology.epoch == topology.epoch && topology.seq < old.topology.seq {
                        return; // an older notification overtaken by a newer one
                    }
                    reset || old.topology.epoch != topology.epoch || old.topology.parent != topology.parent
                }
            };
            let reset = reset && !topology.is_root();
            let new_parent = place.as_ref().is_none_or(|old| old.topology.parent != topology.parent);
            if new_parent {
                self.inner.parent_generation.store(0, Ordering::Release);
            }
            let children = topology.children.clone();
            *place = Some(Arc::new(Place { topology, coherence, root_url }));
            (reset, children)
        };
        // Dropped with the holder records they keep true: on a reset (a
        // non-root node's new parent or epoch). The root never resets: it
        // keeps its holder records across a re-election, so it must keep
        // delivering what it queued for them (dropping it left children
        // that revalidated, or took a push already in flight, at an older
        // version for good: found by the history checker).
        if reset {
            self.drop_queued_pushes();
        }
        self.sync_children(&children);
        if reset {
            self.reset_subtree(&children);
        }
        // The uplink sends over the new link (what the last parent took
        // goes again, first) without waiting out a poll of the old one.
        self.inner.uplink.poke();
    }

    /// Marks what we hold as unconfirmed (see [`crate::store::Store::reset`])
    /// and tells each child to do the same, until it hears or is no
    /// longer our child: a child that missed it would go on serving what
    /// no parent pushes to any more.
    pub fn reset_subtree(&self, children: &[crate::wire::Peer]) {
        let store = &self.inner.store;
        if !store.is_empty() {
            log::info!("our place in the tree changed: {} entries kept, to be revalidated before use", store.len());
        }
        store.reset();
        self.inner.uplink.poke();
        crate::metrics::Metrics::inc(&self.inner.metrics.resets);
        let generation = store.generation();
        for child in children.iter().cloned() {
            let node = self.clone();
            self.spawn(async move { node.send_reset(child, generation).await });
        }
    }

    pub(super) async fn send_reset(&self, child: crate::wire::Peer, generation: u64) {
        let url = format!("{}/internal/clear", child.url);
        let mut backoff = Duration::from_millis(100);
        for attempt in 1u32.. {
            let still_ours = self.children().contains(&child);
            if !still_ours || self.inner.store.generation() != generation || self.is_shutting_down() {
                return; // a newer reset took over, or the child moved on
            }
            let sent: Result<serde_json::Value> = self
                .post_internal(
                    self.epoch(),
                    self.inner.http.clone(),
                    &child.url,
                    &url,
                    Bytes::new(),
                    CONTROL_TIMEOUT,
                    generation,
                )
                .await;
            match sent {
                Ok(_) => return,
                Err(e) if attempt == 1 || attempt % 20 == 0 => {
                    log::warn!("telling child {} to revalidate: {e} (retrying)", child.id)
                }
                Err(_) => {}
            }
            if !self.pause(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// `POST /internal/clear` from node `from`: our parent, or at a router
    /// a group leader that (re)takes it as its child (what the router holds
    /// of that group is unknown to it). Before registration nothing here is
    /// confirmed: nothing to do (the new parent tells a child it adds, which
    /// may not have its answer yet).
    pub fn receive_clear(&self, from: NodeId, epoch: Option<u64>, generation: u64) -> Result<()> {
        let Ok(place) = self.place() else { return Ok(()) };
        self.check_upstream_sender(from, epoch, generation)?;
        self.reset_subtree(&place.topology.children);
        Ok(())
    }

    /// `POST /internal/topology` from the root.
    pub fn receive_topology(&self, topology: Topology) -> Result<()> {
        self.check_epoch(Some(topology.epoch))?;
        let place = self.place()?;
        if topology.id != place.topology.id {
            return Err(Error::BadRequest(format!(
                "topology for node {} sent to node {}",
                topology.id, place.topology.id
            )));
        }
        self.adopt(topology, place.coherence, place.root_url.clone(), false);
        Ok(())
    }

    // ---- the root ----

    /// Stands for election; follows the leader as a standby while it
    /// waits; takes over when its turn comes and it may (see
    /// [`Node::may_take_over`]), raising the epoch with a conditional
    /// write on the `leader` znode; then rebuilds `tree/` and serves as root.
    async fn become_root(&self) -> Result<Watches> {
        let zk = self.zk().await?;
        let paths = &self.inner.paths;
        zk::ensure_layout(&zk, paths).await?;
        let id = self.root_id(&zk).await?;
        self.inner.membership.id.store(id, Ordering::Release);
        // Our id is taken while we live, standby or leader.
        zk::create_ephemeral(&zk, paths, &paths.live_node(id), self.live_data().as_bytes()).await?;
        let mut mine = zk::enter_election(&zk, paths, self.url().as_bytes()).await?;
        let mut refused = 0u32;
        self.set_refusing(None);
        let epoch = loop {
            tokio::select! {
                turn = zk::wait_turn(&zk, paths, &mine) => turn?,
                _ = self.follow_leader(&zk, id) => return Err(Error::ShuttingDown),
            }
            if let Some(epoch) = self.take_over(&zk, id).await? {
                break epoch;
            }
            // Not ours to take: let the candidates behind us try first.
            refused += 1;
            mine = zk::enter_election(&zk, paths, self.url().as_bytes()).await?;
            if !self.pause(Duration::from_millis(500)).await {
                return Err(Error::ShuttingDown);
            }
            if refused.is_multiple_of(20) {
                log::warn!("still no in-sync root to take over ({refused} tries): writes are refused meanwhile");
            }
        };
        self.stop_following();
        // Above every epoch in our commit log too (a restart keeps the
        // cluster's epoch sequence), and recorded there before we serve.
        if let Some(log) = &self.inner.log {
            log.append_epoch(epoch).await.map_err(|e| Error::Internal(e.to_string()))?;
        }
        if paths.group() == 0 {
            // Group 0's leader is the registrar and the top of `tree/`; it
            // makes the slot map when the cluster has none.
            zk::delete_recursive(&zk, &paths.tree()).await?;
            zk::ensure_layout(&zk, paths).await?;
            self.install_map(zk::ensure_slots(&zk, paths, 0).await?);
        } else if let Some((map, _)) = zk::read_slots(&zk, paths).await? {
            // Known before the first answer: which keys are this group's.
            self.install_map(map);
        }
        self.inner.epoch.store(epoch, Ordering::Release);
        // Versions stay monotonic across root restarts: each epoch starts
        // its sequence above every version of the epochs before it.
        self.inner.versions.fetch_max(epoch << 40, Ordering::AcqRel);
        let topology = {
            let mut guard = self.inner.membership.registry.lock();
            // Winning again in the same process (our session expired, we
            // lived): keep the tree we had; nodes re-register into it.
            let registry =
                guard.get_or_insert_with(|| Registry::new(id, self.url().to_string(), self.args().fanout, now_ms()));
            registry.topology(id, epoch).ok_or_else(|| Error::Internal("root missing from registry".into()))?
        };
        self.inner.membership.mirror.lock().await.clear();
        self.sync_mirror().await?;
        let root = zk::RootInfo { id, url: self.url().to_string(), epoch };
        let root_data = serde_json::to_vec(&root).map_err(|e| Error::Internal(e.to_string()))?;
        zk::create_ephemeral(&zk, paths, &paths.root(), &root_data).await?;
        let max_age_ms = self.args().max_age.map(|d| d.as_millis() as u64);
        self.adopt(topology, Coherence::new(self.args().mode, max_age_ms), self.url().to_string(), true);
        log::info!("root: node {id}, epoch {epoch}, mode {}", self.args().mode.as_str());
        Ok(Watches { zk, root: None, live: None })
    }

    /// Takes over if the `leader` znode lets us (none yet, or we are in
    /// its `in_sync` and may: [`Node::may_take_over`]): a new epoch and
    /// `in_sync` = us, written only if nobody changed the znode since we
    /// read it. `None`: not ours to take.
    async fn take_over(&self, zk: &Client, id: NodeId) -> Result<Option<u64>> {
        let paths = &self.inner.paths;
        loop {
            let current = zk::read_leader(zk, paths).await?;
            if let Some((rec, _)) = &current {
                let live_dir = paths.live();
                let alive = zk.list_children(&live_dir).await.map_err(|e| Error::zk("list", live_dir, e))?;
                let alive: HashSet<NodeId> = alive.iter().filter_map(|s| s.parse().ok()).collect();
                if !self.may_take_over(rec, id, &alive) {
                    let why = format!(
                        "not taking over from leader {} (epoch {}): in_sync is {:?}, and this root (node {id}) \
                         is not in it or lost what it held; waiting for an in-sync root (writes are refused \
                         until one returns)",
                        rec.id, rec.epoch, rec.in_sync
                    );
                    if self.refusing().as_deref() != Some(why.as_str()) {
                        log::warn!("{why}");
                    }
                    self.set_refusing(Some(why));
                    return Ok(None);
                }
            }
            let floor = current.as_ref().map_or(0, |(rec, _)| rec.epoch).max(self.epoch());
            let epoch = zk::bump_epoch(zk, paths, floor).await?;
            let without_log = if self.log().is_some() { vec![] } else { vec![id] };
            let rec = zk::LeaderRecord { id, url: self.url().to_string(), epoch, in_sync: vec![id], without_log };
            if let Some(version) = zk::write_leader(zk, paths, &rec, current.map(|(_, v)| v)).await? {
                self.start_leading(rec, version);
                return Ok(Some(epoch));
            }
            // Changed since we read it (the leader dropped a standby, or
            // another candidate won): look again.
        }
    }

    /// Watches `live/` and reaps nodes whose znode went, until the session
    /// is lost or the node shuts down.
    async fn watch_live(&self, zk: Client) {
        let mut state = zk.state_watcher();
        let mut shutdown = self.subscribe_shutdown();
        let live_dir = self.inner.paths.live();
        let mut troubles = 0u32;
        loop {
            if self.is_deposed() {
                log::error!("deposed: standing for election again, as a standby");
                return;
            }
            // The listing says who was live when it was asked, not when it
            // arrives: a node that registered in between is judged by when
            // it was asked (see `reap`).
            let asked = now_ms();
            let (live, watcher) = match zk.list_and_watch_children(&live_dir).await {
                Ok(found) => found,
                Err(e) if is_connection_trouble(&e) && !zk.state().is_terminated() && troubles < WATCH_RETRIES => {
                    troubles += 1;
                    // The connection dropped, the session may well live: a
                    // leader keeps its place (no new epoch, no takeover) and
                    // watches again once connected. Only an expired session
                    // (the ephemeral root znode gone) makes it stand again.
                    log::info!("watching {live_dir}: {e}; keeping the lead while the session lives");
                    if !self.wait_reconnected(&zk, &mut state, &mut shutdown).await
                        || !self.pause(Duration::from_millis(100)).await
                    {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    log::warn!("watching {live_dir}: {e}");
                    return;
                }
            };
            troubles = 0;
            let live: HashSet<NodeId> = live.iter().filter_map(|s| s.parse().ok()).collect();
            let delay = self.args().fault_live_list_delay_ms;
            if delay > 0 {
                log::info!("fault: holding a listing of {} live nodes for {delay} ms", live.len());
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            self.reap(&live, asked).await;
            tokio::select! {
                _ = watcher.changed() => {},
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                s = state.changed() => if s.is_terminated() {
                    log::error!("the root lost its ZooKeeper session ({s:?}); standing for election again");
                    return;
                },
                _ = shutdown.changed() => return,
                _ = self.inner.replica.deposed_wake.notified() => {
                    log::error!("deposed: standing for election again, as a standby");
                    return;
                }
            }
        }
    }

    /// Waits for a dropped ZooKeeper connection to come back in the same
    /// session: true once connected again; false when the session ended
    /// (logged), the node shuts down or the leader was deposed.
    async fn wait_reconnected(
        &self,
        zk: &Client,
        state: &mut zookeeper_client::StateWatcher,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            let now = zk.state();
            if now.is_terminated() {
                log::error!("the root lost its ZooKeeper session ({now:?}); standing for election again");
                return false;
            }
            if matches!(now, SessionState::SyncConnected | SessionState::ConnectedReadOnly) {
                log::info!("ZooKeeper connection back in the same session: still leading");
                return true;
            }
            tokio::select! {
                _ = state.changed() => {},
                // The state watcher reports changes only; look again now
                // and then in case one came before we subscribed.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {},
                _ = shutdown.changed() => return false,
                _ = self.inner.replica.deposed_wake.notified() => {
                    log::error!("deposed: standing for election again, as a standby");
                    return false;
                }
            }
        }
    }

    /// Removes registered nodes that have no live znode in `live` (a
    /// listing of `live/` asked for at `asked`, ms) and had been placed
    /// for longer than the grace period by then; their children re-attach.
    /// Judged by `now` instead, a listing that came back late (ZooKeeper
    /// or this root short of CPU) reaped a node that registered, and made
    /// its live znode, after the listing was asked for: the node lost its
    /// place and what it held was reset.
    async fn reap(&self, live: &HashSet<NodeId>, asked: u64) {
        let epoch = self.epoch();
        let (before, dead) = {
            let mut guard = self.inner.membership.registry.lock();
            let Some(reg) = guard.as_mut() else { return };
            let dead: Vec<NodeId> = reg
                .ids()
                .filter(|&id| id != reg.root() && !live.contains(&id))
                .filter(|&id| reg.get(id).is_some_and(|n| asked.saturating_sub(n.registered_at) > LIVE_GRACE_MS))
                .collect();
            if dead.is_empty() {
                return;
            }
            let before = reg.topologies(epoch);
            for &id in &dead {
                reg.remove(id);
            }
            (before, dead)
        };
        log::info!("nodes {dead:?} are gone; re-attaching their children");
        self.after_change(before, None).await;
    }

    /// Brings ZooKeeper's `tree/` to the registry, as it is now.
    async fn sync_mirror(&self) -> Result<()> {
        if self.inner.paths.group() != 0 {
            // Only the registrar (group 0's leader) keeps `tree/`.
            return Ok(());
        }
        let zk = self.zk().await?;
        let mut current = self.inner.membership.mirror.lock().await;
        let desired = match self.inner.membership.registry.lock().as_ref() {
            Some(reg) => reg.znodes(),
            None => return Ok(()),
        };
        zk::mirror(&zk, &self.inner.paths, &desired, &mut current).await
    }

    /// After a registry change: mirror it, then tell every node whose place
    /// changed (but `skip`, who hears it in its registration answer).
    async fn after_change(&self, before: BTreeMap<NodeId, Topology>, skip: Option<NodeId>) {
        if let Err(e) = self.sync_mirror().await {
            log::warn!("mirroring the tree to ZooKeeper: {e}");
        }
        let epoch = self.epoch();
        let after = match self.inner.membership.registry.lock().as_ref() {
            Some(reg) => reg.topologies(epoch),
            None => return,
        };
        let me = self.node_id();
        let mut sends = Vec::new();
        for t in placement::changed(&before, &after) {
            if Some(t.id) == me {
                if let Ok(place) = self.place() {
                    self.adopt(t, place.coherence, place.root_url.clone(), false);
                }
            } else if Some(t.id) != skip {
                sends.push(self.send_topology(t));
            }
        }
        futures::future::join_all(sends).await;
    }

    async fn send_topology(&self, t: Topology) {
        let Some(url) = self.inner.membership.registry.lock().as_ref().and_then(|r| r.get(t.id).map(|n| n.url.clone()))
        else {
            return;
        };
        let target = format!("{url}/internal/topology");
        for attempt in 1..=2 {
            let sent = self.inner.http.post(&target).json(&t).timeout(CONTROL_TIMEOUT).send().await;
            match sent {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => log::warn!("{target} answered {} (try {attempt})", r.status()),
                Err(e) => log::warn!("telling node {} its place: {e} (try {attempt})", t.id),
            }
        }
    }

    /// `POST /clients/register` at the root.
    pub async fn register(&self, req: RegisterRequest) -> Result<Registration> {
        check_peer_url(&req.url)?;
        if self.inner.tls.is_some() && !req.url.starts_with("https://") {
            return Err(Error::BadRequest(format!(
                "{} is not https://: this tree speaks HTTPS between nodes (--tls-cert)",
                req.url
            )));
        }
        if let Some(id) = req.id {
            check_node_id(id)?;
        }
        let place = self.place()?;
        if !place.topology.is_root() {
            return Err(Error::NotRoot { root: place.root_url.clone() });
        }
        if self.inner.paths.group() != 0 {
            // Only group 0's leader places nodes in the tree.
            let registrar = self.inner.paths.in_group(0);
            let zk = self.zk().await?;
            let root = match zk::read_root(&zk, &registrar).await {
                Ok(Some(root)) => root.url,
                _ => format!("the leader of root group 0 ({})", registrar.root()),
            };
            return Err(Error::NotRoot { root });
        }
        if req.url == self.url() {
            return Err(Error::BadRequest(format!("{} is the root's own URL", req.url)));
        }
        let zk = self.zk().await?;
        let paths = &self.inner.paths;
        let registry_url =
            |id| self.inner.membership.registry.lock().as_ref().and_then(|r| r.get(id).map(|n| n.url.clone()));
        let (id, known) = match req.id {
            Some(id) if id == place.topology.id => return Err(Error::IdTaken { id, url: self.url().to_string() }),
            Some(id) if registry_url(id).as_deref() == Some(req.url.as_str()) => (id, true),
            Some(id) => {
                if let Some(data) = zk::read(&zk, &paths.live_node(id)).await? {
                    let live: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
                    let live_url = live["url"].as_str().unwrap_or("(unknown)");
                    if live_url != req.url {
                        return Err(Error::IdTaken { id, url: live_url.to_string() });
                    }
                }
                zk::reserve_id(&zk, paths, id).await?;
                (id, false)
            }
            None => (zk::allocate_id(&zk, paths).await?, false),
        };
        let epoch = self.epoch();
        let now = now_ms();
        let before = {
            let mut guard = self.inner.membership.registry.lock();
            let reg = guard.as_mut().ok_or(Error::NotRegistered)?;
            let before = reg.topologies(epoch);
            if known {
                reg.touch(id, now);
            } else {
                // A new process: the id's old holder and the url's old
                // owner are gone.
                reg.remove(id);
                if let Some(old) = reg.find_by_url(&req.url) {
                    reg.remove(old);
                }
                reg.place(id, req.url.clone(), now);
            }
            before
        };
        if !known {
            log::info!("registered node {id} at {}", req.url);
            self.after_change(before, Some(id)).await;
        }
        let guard = self.inner.membership.registry.lock();
        let reg = guard.as_ref().ok_or(Error::NotRegistered)?;
        let topology =
            reg.topology(id, epoch).ok_or_else(|| Error::Internal(format!("node {id} left while registering")))?;
        let parent =
            topology.parent.clone().ok_or_else(|| Error::Internal(format!("node {id} placed without a parent")))?;
        Ok(Registration {
            id,
            zk_path: paths.tree_node(&reg.tree_path(id)),
            parent_id: parent.id,
            parent_url: parent.url,
            mode: place.coherence.mode,
            max_age_ms: place.coherence.max_age_ms,
            epoch,
            depth: topology.depth,
            fresh: !known,
            topology,
        })
    }

    /// `POST /internal/leave` at the root: a node leaves on SIGTERM.
    pub async fn remove_member(&self, id: NodeId) -> Result<()> {
        let epoch = self.epoch();
        let before = {
            let mut guard = self.inner.membership.registry.lock();
            let reg = guard.as_mut().ok_or(Error::NotRegistered)?;
            let before = reg.topologies(epoch);
            if reg.remove(id).is_none() {
                return Ok(());
            }
            before
        };
        log::info!("node {id} left; re-attaching its children");
        self.after_change(before, None).await;
        Ok(())
    }

    /// Leaves the tree: the root is told first (children re-attach at once),
    /// then the live znode goes.
    pub(super) async fn leave(&self) {
        let Ok(zk) = self.zk().await else { return };
        let paths = &self.inner.paths;
        if self.args().root {
            // Leader or standby: out of the election at once, so the next
            // candidate's turn comes now, not when our session runs out.
            if self.topology().is_some_and(|t| t.is_root()) {
                let _ = zk.delete(&paths.root(), None).await;
            }
            if let Err(e) = zk::withdraw_candidacy(&zk, paths, self.url().as_bytes()).await {
                log::warn!("withdrawing from the root election: {e}");
            }
            if let Some(id) = self.node_id() {
                let _ = zk.delete(&paths.live_node(id), None).await;
            }
            return;
        }
        let Some(topology) = self.topology() else { return };
        if let Ok(place) = self.place() {
            let url = format!("{}/internal/leave", place.root_url);
            let body = serde_json::json!({ "id": topology.id });
            if let Err(e) = self.inner.http.post(&url).json(&body).timeout(CONTROL_TIMEOUT).send().await {
                log::warn!("telling the root we leave: {e}");
            }
        }
        let _ = zk.delete(&paths.live_node(topology.id), None).await;
    }
}

/// Highest node id the registrar grants or accepts (ids are also znode
/// names and travel in JSON, where larger numbers lose precision).
pub const MAX_NODE_ID: NodeId = u32::MAX as NodeId;

/// A peer URL is a node's base URL: http or https, a host (and port), no
/// user info, path, query or fragment, of sane length.
pub fn check_peer_url(url: &str) -> Result<()> {
    let bad = |why: &str| Error::bad_param("url", format!("{url:?} is not a node's base URL: {why}"));
    if url.len() > 2048 {
        return Err(bad("longer than 2048 bytes"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("user info is not allowed"));
    }
    if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("no path, query or fragment"));
    }
    let host_part = url.split("://").nth(1).unwrap_or("");
    if host_part.is_empty() || host_part.starts_with('/') {
        return Err(bad("no host"));
    }
    Ok(())
}

/// A node id in a registration: 1 to [`MAX_NODE_ID`].
pub fn check_node_id(id: NodeId) -> Result<()> {
    if (1..=MAX_NODE_ID).contains(&id) {
        Ok(())
    } else {
        Err(Error::bad_param("id", format!("{id} is out of range (1 to {MAX_NODE_ID})")))
    }
}
