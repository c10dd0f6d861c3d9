//! The route view: which root group owns each slot, and where each group's
//! leader is, as ZooKeeper says (`slots`, `groups/<G>/root`), kept current
//! by watches and a re-read every [`REREAD`].
//!
//! With one group (every slot group 0's) nothing routes: every request goes
//! to the parent as it always did. With several, a *router* (a child of
//! group 0's leader, the registrar) sends a key's fills and writes to its
//! slot's group leader and takes that leader's pushes; every root checks
//! that a key is its own group's before it answers for it
//! (docs/architecture.md, "Root groups").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use zookeeper_client::OneshotWatcher;

use super::Node;
use crate::error::{Error, Result};
use crate::slots::{GroupId, SlotMap};
use crate::store::NodeId;
use crate::tree::zk::{self, RootInfo};
use crate::wire::{Peer, Topology};

/// How often the view is read again though no watch fired (a watch lost
/// with a connection is not re-armed until the next read).
const REREAD: Duration = Duration::from_secs(2);

/// What this node knows of the slot map and the group leaders.
#[derive(Debug, Clone, Default)]
pub struct RouteView {
    pub map: Option<SlotMap>,
    /// The published leader of each group the map names, when it has one.
    pub leaders: BTreeMap<GroupId, RootInfo>,
    /// Whether any slot is owned by a group other than 0: decided once per
    /// view, not per request (every root read and every fill asks).
    split: bool,
}

impl RouteView {
    pub fn new(map: Option<SlotMap>, leaders: BTreeMap<GroupId, RootInfo>) -> Self {
        let split = map.as_ref().is_some_and(|m| m.groups().iter().any(|&g| g != 0));
        RouteView { map, leaders, split }
    }

    /// The group that owns `key`'s slot; group 0 before any map is known,
    /// and without hashing the key while every slot is group 0's.
    pub fn owner(&self, key: &str) -> GroupId {
        match &self.map {
            Some(m) if self.split => m.owner_of(key),
            _ => 0,
        }
    }

    /// Whether any slot is owned by a group other than 0.
    pub fn is_split(&self) -> bool {
        self.split
    }

    /// The group whose published leader is node `id`, if any.
    pub fn group_led_by(&self, id: NodeId) -> Option<GroupId> {
        self.leaders.iter().find(|(_, r)| r.id == id).map(|(&g, _)| g)
    }
}

/// Where a request for one key goes from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The parent, as always (group 0's slots, or a node below a router).
    Parent(Peer),
    /// Group `group`'s leader, from a router: its epoch goes on the request.
    Leader { group: GroupId, peer: Peer, epoch: u64 },
}

impl Route {
    /// To group `group`'s leader `r`, with its epoch.
    pub fn leader(group: GroupId, r: &RootInfo) -> Route {
        Route::Leader { group, peer: Peer { id: r.id, url: r.url.clone() }, epoch: r.epoch }
    }

    pub fn peer(&self) -> &Peer {
        match self {
            Route::Parent(p) | Route::Leader { peer: p, .. } => p,
        }
    }
}

#[derive(Default)]
pub(super) struct Routes {
    view: RwLock<Arc<RouteView>>,
    /// Wakes the reader at once: a root said `wrong_group` (our map is
    /// older than its).
    reread: tokio::sync::Notify,
    /// When [`Node::reread_routes_soon`] last asked (monotonic ms).
    reread_soon_at: std::sync::atomic::AtomicU64,
    /// Highest store generation each group leader (by node id) has sent
    /// us, as `parent_generation` is for the parent.
    generations: parking_lot::Mutex<BTreeMap<NodeId, u64>>,
}

/// See [`Node::reread_routes_soon`].
const REREAD_SOON_MS: u64 = 25;

impl Node {
    /// The route view as last read.
    pub fn routes(&self) -> Arc<RouteView> {
        self.inner.routes.view.read().clone()
    }

    /// Whether this node routes by slot: a child of group 0's leader in a
    /// cluster whose slots are split among groups.
    pub(super) fn is_router(&self, topology: &Topology, view: &RouteView) -> bool {
        topology.depth == 1 && view.is_split()
    }

    /// Where `key`'s fills and writes go from here: the parent, or (at a
    /// router) the leader of the key's group. A router that does not know
    /// that leader yet gets 503: the request waits for the failover, as it
    /// would for a parent that is gone.
    pub(super) fn upstream_for(&self, key: &str, topology: &Topology) -> Result<Option<Route>> {
        self.upstream_in(&self.routes(), key, topology)
    }

    /// [`Node::upstream_for`] under `view`: a batch routes every write by
    /// the one view it read, so a view changing meanwhile cannot send one
    /// group's writes to two leaders at once.
    pub(super) fn upstream_in(&self, view: &RouteView, key: &str, topology: &Topology) -> Result<Option<Route>> {
        let Some(parent) = topology.parent.clone() else { return Ok(None) };
        let group = view.owner(key);
        if group == 0 || !self.is_router(topology, view) {
            return Ok(Some(Route::Parent(parent)));
        }
        match view.leaders.get(&group) {
            Some(r) => Ok(Some(Route::leader(group, r))),
            None => Err(Error::NoInSyncRoot(format!("root group {group}, the owner of {key:?}'s slot, has no leader"))),
        }
    }

    /// At a root: refuses a key another group owns (a child whose view is
    /// older than ours asked the wrong group; it asks again once it reads
    /// the map). 409 `wrong_group`.
    pub(super) fn check_own_slot(&self, key: &str) -> Result<()> {
        let view = self.routes();
        if view.map.is_none() {
            return Err(map_unread());
        }
        let owner = view.owner(key);
        let mine = self.args().group.unwrap_or(0);
        if owner == mine {
            return Ok(());
        }
        Err(Error::WrongGroup {
            key: key.to_string(),
            owner,
            mine,
            leader: view.leaders.get(&owner).map(|r| r.url.clone()),
        })
    }

    /// [`Node::check_own_slot`] for every key, by one view.
    pub(super) fn check_own_slots(&self, keys: &[String]) -> Result<()> {
        let view = self.routes();
        if view.map.is_none() {
            return Err(map_unread());
        }
        let mine = self.args().group.unwrap_or(0);
        match keys.iter().find(|k| view.owner(k) != mine) {
            None => Ok(()),
            Some(key) => self.check_own_slot(key),
        }
    }

    /// A client request another root passed here: answered only if the key
    /// is this root's group's (see [`super::PROXIED_HEADER`]).
    pub fn refuse_second_hop(&self, key: &str) -> Result<()> {
        let root = self.place().is_ok_and(|p| p.topology.is_root());
        if root || self.is_following() {
            self.check_own_slot(key)?;
        }
        Ok(())
    }

    /// Accepts a message from a group leader that is not our parent: the
    /// group it leads if the view knows it as one and we route; its epoch
    /// must not be older than the one the view has for it.
    pub(super) fn check_from_leader(&self, from: NodeId, epoch: Option<u64>) -> Result<Option<GroupId>> {
        let view = self.routes();
        let Some(group) = view.group_led_by(from) else { return Ok(None) };
        if group == 0 {
            return Ok(None);
        }
        if let (Some(got), Some(r)) = (epoch, view.leaders.get(&group)) {
            if got < r.epoch {
                return Err(Error::StaleEpoch { got, have: r.epoch });
            }
        }
        Ok(Some(group))
    }

    /// Checks the sender of a push or a reset: our parent (its epoch, its
    /// id, its store generation, as always), or at a router a group leader
    /// in our view (that group's epoch and that leader's generation). True
    /// when it is the parent.
    pub(super) fn check_upstream_sender(&self, from: NodeId, epoch: Option<u64>, generation: u64) -> Result<bool> {
        let place = self.place()?;
        let from_parent = place.topology.parent.as_ref().is_some_and(|p| p.id == from);
        if !from_parent && place.topology.depth == 1 && self.check_from_leader(from, epoch)?.is_some() {
            self.heard_leader_generation(from, generation)?;
            return Ok(false);
        }
        self.check_epoch(epoch)?;
        self.check_from_parent(from)?;
        self.heard_parent_generation(generation)?;
        Ok(true)
    }

    /// Notes the store generation group leader `from` sends from; refuses a
    /// push formed before a reset of its that we already heard of.
    pub(super) fn heard_leader_generation(&self, from: NodeId, generation: u64) -> Result<()> {
        let mut known = self.inner.routes.generations.lock();
        let have = known.entry(from).or_default();
        if generation < *have {
            return Err(Error::StaleGeneration { got: generation, have: *have });
        }
        *have = generation;
        Ok(())
    }

    /// Keeps the route view current until the node stops.
    pub(super) async fn run_routes(self) {
        loop {
            if self.is_shutting_down() {
                return;
            }
            let watches = match self.read_routes().await {
                Ok(w) => w,
                Err(e) => {
                    log::debug!("reading the slot map and group leaders: {e}");
                    Vec::new()
                }
            };
            let fired = async move {
                if watches.is_empty() {
                    return std::future::pending::<()>().await;
                }
                let changed = watches.into_iter().map(|w| Box::pin(async move { w.changed().await }));
                futures::future::select_all(changed).await;
            };
            let mut shutdown = self.subscribe_shutdown();
            tokio::select! {
                _ = fired => {}
                _ = self.inner.routes.reread.notified() => {}
                _ = tokio::time::sleep(REREAD) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Has the view read again now (a root answered `wrong_group`).
    pub(super) fn reread_routes(&self) {
        self.inner.routes.reread.notify_one();
    }

    /// Has the view read again, at most every [`REREAD_SOON_MS`]: a slot
    /// in the middle of a move (a router answered `SlotMoving` for it, a
    /// target taking writes of a slot coming in) may have been handed
    /// over, and reading the map before the watch fires routes its writes
    /// that much sooner. Not at every write: a freeze can last seconds.
    pub(super) fn reread_routes_soon(&self) {
        use std::sync::atomic::Ordering;
        let (now, last) = (crate::clock::mono_ms(), &self.inner.routes.reread_soon_at);
        if now >= last.load(Ordering::Relaxed) + REREAD_SOON_MS {
            last.store(now, Ordering::Relaxed);
            self.reread_routes();
        }
    }

    /// Installs the map a root read as it took the lead, before it serves:
    /// it must know its own slots from its first answer.
    pub(super) fn install_map(&self, map: SlotMap) {
        let mut view = self.inner.routes.view.write();
        if view.map.as_ref().is_none_or(|m| m.epoch() < map.epoch()) {
            *view = Arc::new(RouteView::new(Some(map), view.leaders.clone()));
            drop(view);
            self.map_changed();
        }
    }

    /// Reads the map and each of its groups' `root` znodes, watching them;
    /// installs the view if it changed.
    async fn read_routes(&self) -> Result<Vec<OneshotWatcher>> {
        let zk = self.zk().await?;
        let paths = &self.inner.paths;
        let mut watches = Vec::new();
        let map = match zk.get_and_watch_data(&paths.slots()).await {
            Ok((data, _, w)) => {
                watches.push(w);
                Some(SlotMap::from_json(&data).map_err(|e| Error::Internal(format!("{}: {e}", paths.slots())))?)
            }
            Err(zookeeper_client::Error::NoNode) => {
                let (_, w) =
                    zk.check_and_watch_stat(&paths.slots()).await.map_err(|e| Error::zk("watch", paths.slots(), e))?;
                watches.push(w);
                None
            }
            Err(e) => return Err(Error::zk("get", paths.slots(), e)),
        };
        // Every group's `root` znode at once: one round trip to ZooKeeper,
        // not two per group one after another (a router learns a cutover
        // that much sooner, and writes of the moved slot wait that much less).
        let groups = map.as_ref().map(|m| m.groups()).unwrap_or_default();
        let reads = groups.iter().map(|&group| {
            let zk = &zk;
            async move { (group, watch_root(zk, &paths.in_group(group).root()).await) }
        });
        let mut leaders = BTreeMap::new();
        for (group, read) in futures::future::join_all(reads).await {
            let (found, w) = read?;
            watches.push(w);
            if let Some(info) = found {
                leaders.insert(group, info);
            }
        }
        let view = RouteView::new(map, leaders);
        // A group leader with routers already (it owned slots before)
        // routes by the new view first and reads the routers after: a
        // target learns its new slots two round trips sooner. One with
        // none yet takes them first, or their first writes of its first
        // slots would be refused as not its children's.
        let routers_first = self.place().map_or(true, |p| p.topology.children.is_empty());
        if routers_first {
            self.read_routers(&zk, &view, &mut watches).await?;
        }
        let delay = self.args().fault_routes_delay_ms;
        if delay > 0 && {
            let current = self.routes();
            current.map != view.map || current.leaders != view.leaders
        } {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let (changed, routed_changed) = {
            let mut current = self.inner.routes.view.write();
            let changed = current.map != view.map || current.leaders != view.leaders;
            // What a router sends elsewhere than its parent changed: the
            // map, or a leader of a group other than 0.
            let others = |v: &RouteView| {
                v.leaders.iter().filter(|(&g, _)| g != 0).map(|(g, r)| (*g, r.clone())).collect::<Vec<_>>()
            };
            let routed_changed = (current.is_split() || view.is_split())
                && (current.map != view.map || others(&current) != others(&view));
            if changed {
                *current = Arc::new(view.clone());
            }
            (changed, routed_changed)
        };
        if routed_changed {
            self.on_routes_changed();
        }
        if changed {
            self.map_changed();
        }
        if changed {
            log::info!(
                "slot map epoch {}, group leaders {:?}",
                view.map.as_ref().map_or(0, |m| m.epoch()),
                view.leaders.iter().map(|(g, r)| (*g, r.id)).collect::<Vec<_>>()
            );
        }
        if !routers_first {
            // The view is ours already: a failure here must not keep its
            // epoch out of our `live/` znode (a move's drop waits for it).
            if let Err(e) = self.read_routers(&zk, &view, &mut watches).await {
                log::debug!("reading the routers: {e}");
            }
        }
        self.record_map_epoch(&zk, view.map.as_ref().map_or(0, |m| m.epoch())).await;
        Ok(watches)
    }

    /// At a group ≠ 0 leader: reads (and watches) the registrar's children,
    /// the routers, and takes them as its own: it answers their fills and
    /// writes and pushes to them, as the registrar does.
    async fn read_routers(
        &self,
        zk: &zookeeper_client::Client,
        view: &RouteView,
        watches: &mut Vec<OneshotWatcher>,
    ) -> Result<()> {
        let paths = &self.inner.paths;
        let (map, leaders) = (&view.map, &view.leaders);
        let group = self.args().group.unwrap_or(0);
        let leading = self.place().is_ok_and(|p| p.topology.is_root());
        let owns = map.as_ref().is_some_and(|m| m.groups().contains(&group));
        if group != 0 && leading && self.args().root && !owns {
            // No slots: no routers (they would refuse our resets: we are
            // nobody's upstream).
            self.adopt_routers(Vec::new());
        } else if group != 0 && leading && self.args().root {
            let registrar = match leaders.get(&0) {
                Some(r) => Some(r.id),
                None => zk::read_root(zk, &paths.in_group(0)).await?.map(|r| r.id),
            };
            if let Some(registrar) = registrar {
                let dir = paths.tree_node(&registrar.to_string());
                match zk.list_and_watch_children(&dir).await {
                    Ok((names, w)) => {
                        watches.push(w);
                        // All at once, as the groups' `root` znodes above.
                        let znodes: Vec<String> = names.iter().map(|name| format!("{dir}/{name}")).collect();
                        let reads = znodes.iter().map(|path| zk::read(zk, path));
                        let mut routers = Vec::new();
                        for data in futures::future::join_all(reads).await {
                            if let Some(data) = data? {
                                let v: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
                                if let (Some(id), Some(url)) = (v["id"].as_u64(), v["url"].as_str()) {
                                    routers.push(Peer { id, url: url.to_string() });
                                }
                            }
                        }
                        routers.sort_by_key(|p| p.id);
                        self.adopt_routers(routers);
                    }
                    Err(zookeeper_client::Error::NoNode) => {}
                    Err(e) => return Err(Error::zk("watch", dir, e)),
                }
            }
        }
        Ok(())
    }

    /// Says in our `live/<id>` znode which map epoch we route by, once it
    /// changed (and again if the znode was made anew without it).
    async fn record_map_epoch(&self, zk: &zookeeper_client::Client, epoch: u64) {
        let Some(id) = self.node_id() else { return };
        let path = self.inner.paths.live_node(id);
        let Ok((data, stat)) = zk.get_data(&path).await else { return };
        let recorded = serde_json::from_slice::<serde_json::Value>(&data).ok().and_then(|v| v["map_epoch"].as_u64());
        if recorded == Some(epoch) {
            return;
        }
        // Conditional: a znode made anew meanwhile keeps what it was made with.
        if let Err(e) = zk.set_data(&path, self.live_data().as_bytes(), Some(stat.version)).await {
            log::debug!("recording map epoch {epoch} in {path}: {e}");
        }
    }

    /// At a group ≠ 0 leader: the routers become its children (push queues
    /// made for new ones, dropped for gone ones; nothing else changes).
    fn adopt_routers(&self, routers: Vec<Peer>) {
        let Ok(place) = self.place() else { return };
        if place.topology.children == routers {
            return;
        }
        log::info!("routers (children of group 0's leader) now {:?}", routers.iter().map(|p| p.id).collect::<Vec<_>>());
        let topology = Topology { children: routers, seq: place.topology.seq + 1, ..place.topology.clone() };
        self.adopt(topology, place.coherence, place.root_url.clone(), false);
    }

    /// After the view changed: a router's upstreams may have changed. What
    /// it holds of any group is then unknown to that group's (new) leader,
    /// so it resets, as for a new parent: every entry kept but unconfirmed,
    /// its subtree told. (Whole-store, not per group: simpler, and a leader
    /// change is rare; per-slot-range generations are the refinement.)
    fn on_routes_changed(&self) {
        let Ok(place) = self.place() else { return };
        if place.topology.depth == 1 {
            self.reset_subtree(&place.topology.children);
        }
    }
}

/// A group's `root` znode (`None` while none is published, or it cannot be
/// parsed), watched for its next change: one read where it exists.
async fn watch_root(zk: &zookeeper_client::Client, path: &str) -> Result<(Option<RootInfo>, OneshotWatcher)> {
    loop {
        match zk.get_and_watch_data(path).await {
            Ok((data, _, w)) => return Ok((zk::parse_root(&data), w)),
            Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(Error::zk("watch", path, e)),
        }
        match zk.check_and_watch_stat(path).await {
            Ok((None, w)) => return Ok((None, w)),
            // Made between the two reads: read it.
            Ok((Some(_), _)) => continue,
            Err(e) => return Err(Error::zk("watch", path, e)),
        }
    }
}

/// A root that has not read the slot map does not know which keys are its
/// own: it answers nothing for now (503, held through the failover wait).
fn map_unread() -> Error {
    Error::NoInSyncRoot("this root has not read the slot map yet".into())
}

/// A number in `text` right after `marker`.
fn number_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

impl Node {
    /// At a root (leader or standby): the leader of the group that owns
    /// `key` when that is another group; `None` for our own keys.
    pub(super) fn foreign_leader(&self, key: &str) -> Result<Option<String>> {
        let view = self.routes();
        if view.map.is_none() {
            return Err(map_unread());
        }
        let owner = view.owner(key);
        if owner == self.args().group.unwrap_or(0) {
            return Ok(None);
        }
        match view.leaders.get(&owner) {
            Some(r) => Ok(Some(r.url.clone())),
            None => Err(Error::NoInSyncRoot(format!("root group {owner}, the owner of {key:?}'s slot, has no leader"))),
        }
    }

    /// A client request at a root for another group's key goes to that
    /// group's leader as the client sent it (the API token, if any, ours);
    /// nothing is cached here, so a root holds its own slots only.
    fn proxy_request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self
            .request(&self.local_http(), method, url)
            .header(super::PROXIED_HEADER, "1")
            .timeout(super::UPSTREAM_TIMEOUT);
        match &self.args().api_token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// The error a proxied request's failure is to the client. Held through
    /// the failover wait (and so sent again) only when nothing was done: no
    /// connection, or the owner says it has no leader, is not registered or
    /// is not the owner. For a write, `not_leader` is not among them: a
    /// deposed leader may have streamed the write before it found out, and
    /// the proxied write carries no id a resend could be known by. The
    /// owner's 4xx answers are the client's (400, naming the owner).
    async fn proxy_failure(
        &self,
        leader: &str,
        resp: std::result::Result<reqwest::Response, reqwest::Error>,
        write: bool,
    ) -> Error {
        let url = leader.to_string();
        match resp {
            Err(e) if e.is_connect() => Error::parent_unreachable(leader, e),
            Err(e) if write => Error::ParentRefused {
                url,
                reason: format!("{e}; the write may or may not have been committed: read the key to know"),
            },
            Err(e) => Error::parent_unreachable(leader, e),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                let code = body["code"].as_str().unwrap_or("");
                let reason = format!("{status} {code}: {}", body["error"].as_str().unwrap_or(""));
                if code == "wrong_group" {
                    self.reread_routes();
                }
                match code {
                    "wrong_group" | "no_insync_root" | "not_registered" => Error::ParentUnreachable { url, reason },
                    "not_leader" if !write => Error::ParentUnreachable { url, reason },
                    _ if (400..500).contains(&status) => {
                        Error::BadRequest(format!("the owner of the key, {leader}, refused it: {reason}"))
                    }
                    _ => Error::ParentRefused { url, reason },
                }
            }
        }
    }

    /// `GET /kv/{key}` of another group's key at a root.
    pub(super) async fn proxy_get(&self, leader: &str, key: &str, consistent: bool) -> Result<super::Found> {
        let query = if consistent { "?consistent=true" } else { "" };
        let url = format!("{leader}/kv/{}{query}", crate::client::encode_key(key));
        let resp = self.proxy_request(reqwest::Method::GET, &url).send().await;
        let header =
            |r: &reqwest::Response, name: &str| -> Option<u64> { r.headers().get(name)?.to_str().ok()?.parse().ok() };
        match resp {
            Ok(r) if r.status() == reqwest::StatusCode::OK => {
                let (version, expires_at) = (header(&r, "x-version"), header(&r, "x-expires-at"));
                let value = r.bytes().await.map_err(|e| Error::parent_unreachable(leader, e))?;
                let version = version.ok_or_else(|| Error::ParentRefused {
                    url: leader.to_string(),
                    reason: "an answer without X-Version".into(),
                })?;
                Ok(super::Found { version, value, expires_at, cache: super::CacheStatus::Miss })
            }
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Err(Error::NotFound(key.to_string())),
            other => Err(self.proxy_failure(leader, other, false).await),
        }
    }

    /// A client's write of another group's key at a root, as
    /// [`Node::write`] takes it. (Sent once: a write whose answer is lost
    /// is the client's to retry, as if it had written to the owner.)
    pub(super) async fn proxy_write(
        &self,
        leader: &str,
        key: &str,
        value: Option<bytes::Bytes>,
        ttl_ms: Option<u64>,
        ack: super::Ack,
        cond: crate::store::Condition,
    ) -> Result<crate::wire::WriteResult> {
        use crate::store::Condition;
        use crate::wire::WriteResult;
        let ack_text = if ack == super::Ack::Root { "root" } else { "parent" };
        let mut url = format!("{leader}/kv/{}?ack={ack_text}", crate::client::encode_key(key));
        if let Some(ms) = ttl_ms {
            url.push_str(&format!("&ttl={}", ms.div_ceil(1000)));
        }
        let deleting = value.is_none();
        let mut req = match value {
            Some(v) => self.proxy_request(reqwest::Method::PUT, &url).body(v),
            None => self.proxy_request(reqwest::Method::DELETE, &url),
        };
        req = match cond {
            Condition::Always => req,
            Condition::IfAbsent => req.header("if-none-match", "*"),
            Condition::IfPresent => req.header("if-match", "*"),
            Condition::IfVersion(v) => req.header("if-match", v.to_string()),
        };
        let resp = req.send().await;
        let version_header =
            |r: &reqwest::Response| -> Option<u64> { r.headers().get("x-version")?.to_str().ok()?.parse().ok() };
        match resp {
            Ok(r) if r.status().is_success() => {
                let created = r.status() == reqwest::StatusCode::CREATED;
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                Ok(match body["version"].as_u64() {
                    Some(version) => WriteResult::Committed { version, created },
                    None if deleting => WriteResult::Absent,
                    None => WriteResult::Accepted,
                })
            }
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND && deleting => Ok(WriteResult::Absent),
            Ok(r) if r.status() == reqwest::StatusCode::PRECONDITION_FAILED => {
                Ok(WriteResult::ConditionFailed { current: version_header(&r) })
            }
            Ok(r) if r.status() == reqwest::StatusCode::INSUFFICIENT_STORAGE => {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let text = body["error"].as_str().unwrap_or("");
                Ok(WriteResult::RootFull {
                    bytes: number_after(text, "bytes (").unwrap_or(0),
                    max: number_after(text, "--max-memory of ").unwrap_or(0),
                })
            }
            other => Err(self.proxy_failure(leader, other, true).await),
        }
    }
}
