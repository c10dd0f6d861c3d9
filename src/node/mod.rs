//! The running node: one [`Node`] value shared by the HTTP handlers and the
//! node's own tasks. Cloning it bumps a refcount.
//!
//! - [`read`]: the read path (store, else one singleflight fill from the
//!   parent) and the parent's side of fills.
//! - [`write`]: the write path: one FIFO uplink per node for every write,
//!   the root's commit (each write id once) and settling on the way back.
//! - [`push`]: per-child coalescing push queues and applying received pushes.
//! - [`membership`]: ZooKeeper, registration, the root's registrar, and
//!   re-attachment when parents, sessions or roots change.
//!
//! Role is data: the node is the root when its topology has no parent.
//! Long-lived tasks start in [`Node::start`] on the node's own runtime and
//! stop when [`Node::shutdown`] flips the shutdown signal.

mod durable;
mod evict;
mod failover;
mod finish;
mod membership;
mod moves;
mod push;
pub mod read;
mod replica;
pub mod routes;
mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::auth::{Guard, SECRET_HEADER_NAME};
use crate::clock::Time;
use crate::coherence::Coherence;
use crate::config::NodeArgs;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{NodeId, Store};
use crate::tree::zk::Paths;
use crate::wire::{Peer, Topology};

pub use evict::{Dropped, Invalidated};
pub use moves::{Import, FROZEN_WAIT};
pub use read::{CacheStatus, Found};
pub use replica::{BatchInfo, StandbyRequest};
pub use write::{answer_body, refusal, Ack, BATCH_BYTES, HOP_WAIT, MAX_TTL_SECS};

/// How long a fill or a forwarded write may take before it fails.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client keeps an idle pooled connection: less than the
/// server's keep-alive (`crate::server`).
pub(crate) const CLIENT_POOL_IDLE: Duration = Duration::from_secs(60);
/// Header carrying the sender's epoch on internal requests.
pub const EPOCH_HEADER: &str = "x-treecache-epoch";
/// Header naming the sending node on pushes and clears: a node takes them
/// from its parent only.
pub const FROM_HEADER: &str = "x-treecache-from";
/// Header carrying the sender's store generation on pushes and resets: a
/// push formed before its sender's last reset is refused by a child that
/// has already heard of that reset (the sender forgot it as a holder).
pub const GENERATION_HEADER: &str = "x-treecache-generation";
/// Header carrying the sender's store tick on every message a parent
/// sends a child (fill answers, pushes, write answers): the child keeps the
/// highest, for its "dropped" messages (see [`evict`]).
pub const TICK_HEADER: &str = "x-treecache-tick";
/// Header on a fill answer (200 or 304): `1` if the answering node recorded
/// the child as a holder of the key in its current store generation (or,
/// in ttl mode, vouches for the answer's freshness), so the child may store
/// it as current; `0` otherwise (the child stores it, not current). Write
/// answers carry the same per write in `WriteResults::confirmed`.
pub const CONFIRMED_HEADER: &str = "x-treecache-confirmed";
/// Header on a client request a root passes to the key's owner (`1`):
/// the owner answers it itself or refuses it, never passes it on again.
pub const PROXIED_HEADER: &str = "x-treecache-proxied";
/// Exit status of a node whose configuration cannot work (sysexits'
/// EX_CONFIG): a cluster secret ZooKeeper refuses.
pub const EXIT_CONFIG: i32 = 78;
/// How long a leaving node waits for its queued writes to reach its parent.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    args: NodeArgs,
    url: String,
    paths: Paths,
    store: Store,
    http: reqwest::Client,
    /// The cluster secret and the API token.
    guard: Guard,
    /// The node's certificate and CA (`--tls-cert`): its listeners, its
    /// HTTP client and ZooKeeper use them; `None` for plain HTTP.
    tls: Option<crate::tls::Tls>,
    /// Permits for requests in flight upstream (`--max-upstream-requests`).
    upstream: Arc<tokio::sync::Semaphore>,
    metrics: Metrics,
    /// Where this node hangs and how it keeps coherent; `None` until
    /// registered.
    /// Shared, not cloned, per request: a read takes one refcount.
    place: RwLock<Option<Arc<Place>>>,
    /// Highest epoch seen; messages from older epochs are refused.
    epoch: AtomicU64,
    /// The root's version sequence (meaningful at the root).
    versions: AtomicU64,
    /// This process's incarnation: part of every write id it makes.
    incarnation: u64,
    /// Writes on their way to the root, in the order this node got them.
    uplink: write::Uplink,
    /// The root's record of committed write ids.
    outcomes: Mutex<write::Outcomes>,
    /// Write answers dropped so far (`--fault-lose-write-replies`).
    lost_replies: AtomicU64,
    /// The highest store generation our current parent has announced (in
    /// a push or a reset); 0 after a change of parent.
    parent_generation: AtomicU64,
    /// The root's commit log (`--root --data-dir`).
    log: Option<crate::log::CommitLog>,
    flights: Mutex<HashMap<String, Vec<tokio::sync::oneshot::Sender<read::FillOutcome>>>>,
    pushers: Mutex<HashMap<NodeId, Arc<push::PushQueue>>>,
    /// Wakes the evictor when the store grew past `--max-memory`.
    evict_wake: tokio::sync::Notify,
    membership: membership::Membership,
    /// Standby roots: the leader's streams and in-sync set, or the leader
    /// a standby follows.
    replica: replica::Replica,
    /// The slot map and the group leaders, as ZooKeeper says.
    routes: routes::Routes,
    /// Slots frozen here for a move, and a target's imports.
    moves: moves::Moves,
    shutdown: watch::Sender<bool>,
    /// The runtime the node's tasks run on (handlers run on actix workers).
    runtime: tokio::runtime::Handle,
}

/// The node-to-node HTTP client: keep-alive pool, no Nagle delay, a short
/// connect timeout so a dead parent is noticed quickly. Every request it
/// sends carries the cluster secret as a default header: no call site adds
/// it. (Nodes call only internal routes, so the API token is not needed.)
/// Under TLS it speaks only HTTPS, verifies the other node against
/// `--tls-ca` and presents this node's certificate ([`crate::tls`]).
fn build_http(guard: &Guard, tls: Option<&crate::tls::Tls>) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut sensitive = |name: reqwest::header::HeaderName, value: &str| {
        let mut v = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| Error::Internal(format!("{name} is not a valid header value")))?;
        v.set_sensitive(true);
        headers.insert(name, v);
        Ok::<(), Error>(())
    };
    sensitive(reqwest::header::HeaderName::from_static(SECRET_HEADER_NAME), guard.secret().expose())?;
    let mut builder = reqwest::Client::builder()
        .default_headers(headers)
        .pool_idle_timeout(CLIENT_POOL_IDLE)
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls((*tls.client_config()).clone()).https_only(true);
    }
    builder.build().map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))
}

/// A registered node's place and rules.
#[derive(Debug, Clone)]
pub struct Place {
    pub topology: Topology,
    pub coherence: Coherence,
    pub root_url: String,
}

impl Node {
    /// Builds the node; nothing runs until [`Node::start`].
    pub fn new(args: NodeArgs) -> Result<Node> {
        Self::with_log(args, None)
    }

    /// Builds the node over a commit log opened by [`Node::open_log`], its
    /// recovered state already in the store.
    pub fn with_log(args: NodeArgs, log: Option<(crate::log::CommitLog, crate::log::Recovered)>) -> Result<Node> {
        let (log, recovered) = log.unzip();
        let secret = args.secret().map_err(Error::Internal)?;
        let tls = args.tls().map_err(Error::Internal)?;
        let mut guard = Guard::new(secret, args.api_token.clone());
        if tls.is_some() {
            guard = guard.with_node_certificates();
        }
        let http = build_http(&guard, tls.as_ref())?;
        let upstream = Arc::new(tokio::sync::Semaphore::new(args.max_upstream_requests as usize));
        let (shutdown, _) = watch::channel(false);
        // A root's --max-memory refuses writes (`Store::commit`); it never
        // evicts, so it keeps no eviction queues.
        let store = if args.max_memory.is_some() && !args.root { Store::bounded() } else { Store::new() };
        let mut metrics = Metrics::default();
        if let Some(log) = &log {
            metrics.add_collector(log.stats().collector());
        }
        let node = Node {
            inner: Arc::new(Inner {
                url: args.advertise_url(),
                paths: Paths::with_secret(&args.cluster, guard.secret()).in_group(args.group.unwrap_or(0)),
                membership: membership::Membership::new(),
                replica: replica::Replica::new(args.replication_tail),
                routes: routes::Routes::default(),
                moves: moves::Moves::default(),
                args,
                store,
                http,
                guard,
                tls,
                upstream,
                metrics,
                place: RwLock::new(None),
                epoch: AtomicU64::new(0),
                versions: AtomicU64::new(0),
                incarnation: rand::random::<u64>() | 1,
                uplink: write::Uplink::default(),
                outcomes: Mutex::new(write::Outcomes::default()),
                lost_replies: AtomicU64::new(0),
                parent_generation: AtomicU64::new(0),
                log,
                flights: Mutex::new(HashMap::new()),
                pushers: Mutex::new(HashMap::new()),
                evict_wake: tokio::sync::Notify::new(),
                shutdown,
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        if let Some(recovered) = recovered {
            node.restore(&recovered);
        }
        Ok(node)
    }

    /// Starts the node's long-lived tasks: membership (ZooKeeper and
    /// registration), the expiry sweeper, the write uplink and the evictor.
    pub fn start(&self) {
        self.spawn(self.clone().run_membership());
        self.spawn(self.clone().run_sweeper());
        self.spawn(self.clone().run_uplink());
        self.spawn(self.clone().run_evictor());
        self.spawn(self.clone().run_routes());
        self.spawn(self.clone().run_moves());
    }

    /// The HTTP client for a request made on a handler's behalf (a fill, a
    /// forwarded write): the calling thread's own. An actix worker is a
    /// single-threaded runtime; a pooled connection is driven by a task on
    /// the runtime that opened it, so with one client shared with the
    /// node's background tasks a fill crossed three threads (worker, the
    /// connection's runtime thread, back), a futex wake-up each way. With
    /// a client per worker the request, the connection and the answer stay
    /// on one thread. Each worker keeps its own keep-alive pool.
    /// Tasks on the node's own multi-threaded runtime (the uplink, push
    /// queues) move between threads: they use the shared client.
    fn local_http(&self) -> reqwest::Client {
        thread_local! {
            static HTTP: std::cell::OnceCell<reqwest::Client> = const { std::cell::OnceCell::new() };
        }
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if !on_worker {
            return self.inner.http.clone();
        }
        HTTP.with(|cell| {
            cell.get_or_init(|| {
                build_http(&self.inner.guard, self.inner.tls.as_ref()).unwrap_or_else(|_| self.inner.http.clone())
            })
            .clone()
        })
    }

    /// A permit for one request upstream on a reader's behalf (a fill,
    /// consistent or not), held until its answer is read;
    /// 503 `overloaded` when `--max-upstream-requests` are in flight. The
    /// one place the bound is taken: call it where such a request starts.
    pub(crate) fn upstream_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.inner.upstream.clone().try_acquire_owned().map_err(|_| {
            log::debug!("refusing an upstream request: {} in flight", self.args().max_upstream_requests);
            Error::Overloaded { limit: self.args().max_upstream_requests }
        })
    }

    /// A request to another node: its epoch and, when it is made for a
    /// client's request, that request's id (`X-Request-Id`). The secret is
    /// a default header of the client (see [`build_http`]).
    fn request(&self, http: &reqwest::Client, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.request_at(self.epoch(), http, method, url)
    }

    fn request_at(
        &self,
        epoch: u64,
        http: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
    ) -> reqwest::RequestBuilder {
        let req = http.request(method, url).header(EPOCH_HEADER, epoch);
        match crate::trace::current() {
            Some(id) => req.header(crate::trace::REQUEST_ID_HEADER.as_str(), id),
            None => req,
        }
    }

    /// [`Node::request`] to `upstream`: to a group leader (from a router)
    /// it carries that group's epoch, which one counter for every group
    /// may have put above or below our own.
    fn request_to(
        &self,
        upstream: &routes::Route,
        http: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
    ) -> reqwest::RequestBuilder {
        self.request_at(self.epoch_for(upstream), http, method, url)
    }

    /// The epoch a request to `upstream` says: ours, or to a group leader
    /// the higher of ours and that group's.
    fn epoch_for(&self, upstream: &routes::Route) -> u64 {
        match upstream {
            routes::Route::Parent(_) => self.epoch(),
            routes::Route::Leader { epoch, .. } => (*epoch).max(self.epoch()),
        }
    }

    /// The node's TLS (`--tls-cert`), shared with its listeners.
    pub fn tls(&self) -> Option<&crate::tls::Tls> {
        self.inner.tls.as_ref()
    }

    /// The credentials this node checks on its routes.
    pub fn guard(&self) -> &Guard {
        &self.inner.guard
    }

    /// POSTs an encoded batch to another node's internal route `url`
    /// (`peer` is its base URL, for errors), saying who sends it, from which
    /// epoch (ours; a router's to a group leader, see [`Node::epoch_for`])
    /// and store generation, and reads its JSON answer.
    #[allow(clippy::too_many_arguments)]
    async fn post_internal<T: serde::de::DeserializeOwned>(
        &self,
        epoch: u64,
        http: reqwest::Client,
        peer: &str,
        url: &str,
        body: bytes::Bytes,
        timeout: Duration,
        generation: u64,
    ) -> Result<T> {
        let place = self.inner.place.read().clone();
        let mut req = self
            .request_at(epoch, &http, reqwest::Method::POST, url)
            .header(GENERATION_HEADER, generation)
            .header(TICK_HEADER, self.inner.store.tick_now())
            .timeout(timeout)
            .body(body);
        if let Some(place) = &place {
            req = req.header(FROM_HEADER, place.topology.id);
        }
        let ours = self.inner.store.generation();
        let resp = req.send().await.map_err(|e| Error::parent_unreachable(peer, e))?;
        if place.and_then(|p| p.topology.parent.clone()).is_some_and(|p| p.url == peer) {
            self.note_parent_tick(ours, resp.headers());
        }
        if !resp.status().is_success() {
            return Err(Error::Upstream {
                url: url.to_string(),
                status: resp.status().as_u16(),
                body: resp.text().await.unwrap_or_default(),
            });
        }
        resp.json().await.map_err(|e| Error::parent_unreachable(peer, e))
    }

    /// Keeps the parent's tick from a message of it received in
    /// `generation` (see [`crate::store::Store::parent_tick`]).
    pub fn note_parent_tick(&self, generation: u64, headers: &reqwest::header::HeaderMap) {
        let tick = headers.get(TICK_HEADER).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
        if let Some(tick) = tick {
            self.inner.store.note_parent_tick(generation, tick);
        }
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.inner.runtime.spawn(task);
    }

    pub fn args(&self) -> &NodeArgs {
        &self.inner.args
    }
    pub fn url(&self) -> &str {
        &self.inner.url
    }
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// This node's place, or 503 before registration.
    pub fn place(&self) -> Result<Arc<Place>> {
        self.inner.place.read().clone().ok_or(Error::NotRegistered)
    }

    pub fn topology(&self) -> Option<Topology> {
        self.inner.place.read().as_ref().map(|p| p.topology.clone())
    }

    /// Writes queued here or in flight to the parent, not yet taken by it.
    pub fn uplink_pending(&self) -> usize {
        self.inner.uplink.len()
    }
    pub fn uplink_unconfirmed(&self) -> usize {
        self.inner.uplink.unconfirmed()
    }

    /// Settled write ids this node remembers so a resend is answered, not
    /// queued again, and an estimate of the bytes they take.
    pub fn write_ids_remembered(&self) -> (usize, usize) {
        self.inner.uplink.remembered()
    }

    /// Write outcomes this node remembers as root (0 on any other node),
    /// and an estimate of the bytes they take.
    pub fn write_outcomes_held(&self) -> (usize, usize) {
        let outcomes = self.inner.outcomes.lock();
        (outcomes.len(), outcomes.bytes())
    }

    /// `--fault-lose-write-replies`: whether to drop this write answer.
    pub fn lose_this_write_reply(&self) -> bool {
        let limit = self.args().fault_lose_write_replies;
        limit > 0 && self.inner.lost_replies.fetch_add(1, Ordering::AcqRel) < limit
    }

    /// Refuses a message from an older epoch.
    pub fn check_epoch(&self, got: Option<u64>) -> Result<()> {
        let have = self.epoch();
        match got {
            Some(got) if got < have => Err(Error::StaleEpoch { got, have }),
            _ => Ok(()),
        }
    }

    fn subscribe_shutdown(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Waits `d`, or less if the node is shutting down; false on shutdown.
    async fn pause(&self, d: Duration) -> bool {
        let mut rx = self.subscribe_shutdown();
        if *rx.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = rx.changed() => false,
        }
    }

    /// Removes expired entries every second.
    async fn run_sweeper(self) {
        while self.pause(Duration::from_secs(1)).await {
            let removed = self.inner.store.sweep_expired(Time::now());
            Metrics::add(&self.inner.metrics.expired, removed as u64);
        }
    }

    /// Hands queued writes to the parent, leaves the tree (children
    /// re-attach at once, znodes removed) and stops the node's tasks.
    pub async fn shutdown(&self) {
        self.step_down().await;
        self.drain_uplink(DRAIN_LIMIT).await;
        self.leave().await;
        let _ = self.inner.shutdown.send(true);
        for queue in self.inner.pushers.lock().drain() {
            queue.1.close();
        }
        if let Some(log) = &self.inner.log {
            if let Err(e) = log.sync().await {
                log::error!("syncing the commit log at shutdown: {e}");
            }
        }
    }

    /// Children as peers (empty before registration).
    pub fn children(&self) -> Vec<Peer> {
        self.topology().map(|t| t.children).unwrap_or_default()
    }
}
