//! ZooKeeper: the layout under `/treecache/<cluster>` and the operations on
//! it. Everything here is a short async call with the path in its error;
//! the decisions (what to write, when) belong to the node and the registry.
//!
//! ```text
//! groups/<G>/root         EPHEMERAL   group G's current leader {"id","url","epoch"}
//! groups/<G>/leader       PERSISTENT  {"id","url","epoch","in_sync":[ids]}: changed only by
//!                                     conditional writes (see [`LeaderRecord`])
//! groups/<G>/election/n_  EPHEMERAL_SEQUENTIAL group G's root candidates
//! slots         PERSISTENT  the slot map (see [`crate::slots::SlotMap`]), changed only by
//!                           conditional writes
//! moves/<slot>  PERSISTENT  a slot move's recorded state
//! tree/1/2/5    PERSISTENT  one znode per node at its tree path {"id","url","depth"}
//! live/5        EPHEMERAL   node 5 is alive (its own session) {"url"}
//! next_id       PERSISTENT  the next id never handed out
//! epoch         PERSISTENT  the last root epoch, one line for every group
//! ```
//!
//! A [`Paths`] belongs to one root group (`--group`, 0 for cache nodes and
//! tools): `root`, `leader` and `election` are that group's, the rest is the
//! cluster's. Group 0's leader is the registrar and the top of `tree/`.
//!
//! Access: every znode treecache creates gets the ACL of [`Paths`]: anyone
//! may read (`zkCli.sh ls -R`, `get`), only the digest user `treecache`
//! whose password is the cluster secret may change it; each node's session
//! authenticates as that user ([`connect`]).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use sha1::{Digest, Sha1};
use zookeeper_client::{Acl, Acls, AuthId, Client, CreateMode, CreateOptions, Error as ZkError, Permission};

use crate::auth::Secret;
use crate::error::{Error, Result};
use crate::slots::{GroupId, SlotMap};

/// The ZooKeeper digest user every node authenticates as.
pub const DIGEST_USER: &str = "treecache";

/// ZooKeeper session timeout for every node: long enough to ride out a GC
/// pause or a busy machine, short enough that a dead node is noticed fast.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `user:password` as ZooKeeper's digest scheme takes it in `addauth`.
fn credential(secret: &Secret) -> String {
    format!("{DIGEST_USER}:{}", secret.expose())
}

/// The digest ACL id of `user:password`: `user:base64(sha1(user:password))`,
/// what ZooKeeper's DigestAuthenticationProvider computes from an `addauth`.
pub fn digest_id(user_password: &str) -> String {
    let user = user_password.split(':').next().unwrap_or_default();
    let hash = Sha1::digest(user_password.as_bytes());
    format!("{user}:{}", base64::engine::general_purpose::STANDARD.encode(hash))
}

/// The znode paths of one cluster, and the access its nodes use: the ACL
/// of every znode they create and the session's digest credential.
#[derive(Debug, Clone)]
pub struct Paths {
    base: String,
    group: GroupId,
    acls: Vec<Acl>,
    credential: Option<String>,
}

impl Paths {
    /// Paths for reading only (`treecache tree`, `up`): a znode created
    /// through these would be read-only for everyone.
    pub fn new(cluster: &str) -> Self {
        Paths { base: format!("/treecache/{cluster}"), group: 0, acls: Acls::anyone_read().to_vec(), credential: None }
    }

    /// Paths for a node of the cluster: world READ, digest `treecache` ALL.
    pub fn with_secret(cluster: &str, secret: &Secret) -> Self {
        let credential = credential(secret);
        let acls = vec![
            Acl::new(Permission::READ, AuthId::anyone()),
            Acl::new(Permission::ALL, AuthId::new("digest", &digest_id(&credential))),
        ];
        Paths { base: format!("/treecache/{cluster}"), group: 0, acls, credential: Some(credential) }
    }

    /// The same cluster seen from root group `group`.
    pub fn in_group(&self, group: GroupId) -> Self {
        Paths { group, ..self.clone() }
    }

    pub fn persistent(&self) -> CreateOptions<'_> {
        CreateMode::Persistent.with_acls(Acls::new(&self.acls))
    }

    fn ephemeral(&self) -> CreateOptions<'_> {
        CreateMode::Ephemeral.with_acls(Acls::new(&self.acls))
    }

    /// The ACL of the znodes this node creates.
    pub fn acls(&self) -> &[Acl] {
        &self.acls
    }
    pub fn base(&self) -> &str {
        &self.base
    }
    /// The root group these paths belong to.
    pub fn group(&self) -> GroupId {
        self.group
    }
    /// `groups/`: one directory per root group.
    pub fn groups(&self) -> String {
        format!("{}/groups", self.base)
    }
    /// `groups/<G>`: this group's directory.
    pub fn group_dir(&self) -> String {
        format!("{}/groups/{}", self.base, self.group)
    }
    pub fn root(&self) -> String {
        format!("{}/root", self.group_dir())
    }
    pub fn leader(&self) -> String {
        format!("{}/leader", self.group_dir())
    }
    pub fn election(&self) -> String {
        format!("{}/election", self.group_dir())
    }
    pub fn slots(&self) -> String {
        format!("{}/slots", self.base)
    }
    pub fn moves(&self) -> String {
        format!("{}/moves", self.base)
    }
    pub fn tree(&self) -> String {
        format!("{}/tree", self.base)
    }
    /// `tree/<rel>` for a registry path like `1/2/5`.
    pub fn tree_node(&self, rel: &str) -> String {
        format!("{}/tree/{rel}", self.base)
    }
    pub fn live(&self) -> String {
        format!("{}/live", self.base)
    }
    pub fn live_node(&self, id: u64) -> String {
        format!("{}/live/{id}", self.base)
    }
    pub fn next_id(&self) -> String {
        format!("{}/next_id", self.base)
    }
    pub fn epoch(&self) -> String {
        format!("{}/epoch", self.base)
    }
}

/// Connects with the node session timeout, authenticated with the digest
/// credential of `paths` when it has one, over TLS when `tls` is given
/// (`--zk-tls`: every server of `addr` is a secure client port), failing
/// after a deadline rather than hanging when ZooKeeper is down.
pub async fn connect(addr: &str, paths: &Paths, tls: Option<zookeeper_client::TlsOptions>) -> Result<Client> {
    let mut connector = Client::connector().with_session_timeout(SESSION_TIMEOUT);
    if let Some(credential) = &paths.credential {
        connector = connector.with_auth("digest", credential.as_bytes());
    }
    let connecting = async move {
        match tls {
            Some(tls) => connector.with_tls(tls).secure_connect(addr).await,
            None => connector.connect(addr).await,
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(Error::zk("connect", addr, e)),
        Err(_) => Err(Error::zk("connect", addr, ZkError::Timeout)),
    }
}

/// Creates the cluster's persistent directories if missing. `/treecache`,
/// shared by every cluster on this ZooKeeper, lets anyone create under it
/// (another cluster, with another secret, makes its own directory there);
/// a cluster's own znodes take its ACL.
pub async fn ensure_layout(zk: &Client, paths: &Paths) -> Result<()> {
    let mut shared = paths.acls.clone();
    if let Some(world) = shared.iter_mut().find(|a| a.scheme() == "world") {
        *world = Acl::new(Permission::READ | Permission::CREATE, AuthId::anyone());
    }
    let top = "/treecache";
    match zk.create(top, &[], &CreateMode::Persistent.with_acls(Acls::new(&shared))).await {
        Ok(_) | Err(ZkError::NodeExists) => {}
        Err(e) => return Err(Error::zk("create", top, e)),
    }
    for dir in [paths.tree(), paths.live(), paths.election(), paths.moves()] {
        zk.mkdir(&dir, &paths.persistent()).await.map_err(|e| Error::zk("mkdir", dir.clone(), e))?;
    }
    Ok(())
}

/// Reads a decimal counter znode; a missing one reads as `default`.
async fn read_counter(zk: &Client, path: &str, default: u64) -> Result<(u64, Option<i32>)> {
    match zk.get_data(path).await {
        Ok((data, stat)) => {
            let text = String::from_utf8_lossy(&data);
            let n = text.trim().parse().map_err(|_| Error::Internal(format!("counter {path} holds {text:?}")))?;
            Ok((n, Some(stat.version)))
        }
        Err(ZkError::NoNode) => Ok((default, None)),
        Err(e) => Err(Error::zk("get", path, e)),
    }
}

/// Compare-and-set of a counter: `update(current)` gives the new value;
/// retried when another writer got there first. Returns (old, new).
async fn cas_counter(
    zk: &Client,
    paths: &Paths,
    path: &str,
    default: u64,
    update: impl Fn(u64) -> u64,
) -> Result<(u64, u64)> {
    loop {
        let (cur, version) = read_counter(zk, path, default).await?;
        let next = update(cur);
        let data = next.to_string();
        let result = match version {
            Some(v) => zk.set_data(path, data.as_bytes(), Some(v)).await.map(|_| ()),
            None => zk.create(path, data.as_bytes(), &paths.persistent()).await.map(|_| ()),
        };
        match result {
            Ok(()) => return Ok((cur, next)),
            Err(ZkError::BadVersion) | Err(ZkError::NodeExists) => continue,
            Err(e) => return Err(Error::zk("set", path, e)),
        }
    }
}

/// Hands out the next never-used id.
pub async fn allocate_id(zk: &Client, paths: &Paths) -> Result<u64> {
    Ok(cas_counter(zk, paths, &paths.next_id(), 1, |n| n + 1).await?.0)
}

/// Records that `id` is used, so the counter never hands it out.
pub async fn reserve_id(zk: &Client, paths: &Paths, id: u64) -> Result<()> {
    cas_counter(zk, paths, &paths.next_id(), 1, |n| n.max(id + 1)).await.map(|_| ())
}

/// Raises the cluster epoch above both its current value and `floor` (the
/// highest epoch this root has seen, e.g. in its commit log) and returns it.
pub async fn bump_epoch(zk: &Client, paths: &Paths, floor: u64) -> Result<u64> {
    Ok(cas_counter(zk, paths, &paths.epoch(), 0, |n| n.max(floor) + 1).await?.1)
}

/// Creates an ephemeral znode owned by this session. One left by an older
/// session of the same node (a restart before that session expired) is
/// replaced.
pub async fn create_ephemeral(zk: &Client, paths: &Paths, path: &str, data: &[u8]) -> Result<()> {
    loop {
        match zk.create(path, data, &paths.ephemeral()).await {
            Ok(_) => return Ok(()),
            Err(ZkError::NodeExists) => match zk.check_stat(path).await {
                // Ours already (the same session, a new term): rewritten
                // only if it says something else (a new epoch in `root`),
                // so an unchanged one fires no watch.
                Ok(Some(stat)) if stat.ephemeral_owner == zk.session_id().0 => {
                    if read(zk, path).await?.as_deref() != Some(data) {
                        zk.set_data(path, data, None).await.map_err(|e| Error::zk("set", path, e))?;
                    }
                    return Ok(());
                }
                Ok(_) => match zk.delete(path, None).await {
                    Ok(()) | Err(ZkError::NoNode) => continue,
                    Err(e) => return Err(Error::zk("delete", path, e)),
                },
                Err(e) => return Err(Error::zk("stat", path, e)),
            },
            Err(e) => return Err(Error::zk("create", path, e)),
        }
    }
}

/// Reads a znode's data, `None` if absent.
pub async fn read(zk: &Client, path: &str) -> Result<Option<Vec<u8>>> {
    match zk.get_data(path).await {
        Ok((data, _)) => Ok(Some(data)),
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(Error::zk("get", path, e)),
    }
}

/// Deletes `path` and everything below it.
pub async fn delete_recursive(zk: &Client, path: &str) -> Result<()> {
    let children = match zk.list_children(path).await {
        Ok(c) => c,
        Err(ZkError::NoNode) => return Ok(()),
        Err(e) => return Err(Error::zk("list", path, e)),
    };
    for child in children {
        Box::pin(delete_recursive(zk, &format!("{path}/{child}"))).await?;
    }
    match zk.delete(path, None).await {
        Ok(()) | Err(ZkError::NoNode) => Ok(()),
        Err(e) => Err(Error::zk("delete", path, e)),
    }
}

/// Brings the `tree/` znodes from `current` to `desired` (tree path -> data):
/// removes what went (deepest first), creates what came (shallowest first),
/// rewrites what changed. `current` tracks what ZooKeeper holds.
pub async fn mirror(
    zk: &Client,
    paths: &Paths,
    desired: &BTreeMap<String, String>,
    current: &mut BTreeMap<String, String>,
) -> Result<()> {
    let depth = |p: &String| p.matches('/').count();
    let mut gone: Vec<String> = current.keys().filter(|p| !desired.contains_key(*p)).cloned().collect();
    gone.sort_by_key(|p| std::cmp::Reverse(depth(p)));
    for rel in gone {
        let path = paths.tree_node(&rel);
        match zk.delete(&path, None).await {
            Ok(()) | Err(ZkError::NoNode) => {
                current.remove(&rel);
            }
            // Children not yet moved away: delete them all; they come back
            // below when they are in `desired`.
            Err(ZkError::NotEmpty) => {
                delete_recursive(zk, &path).await?;
                let prefix = format!("{rel}/");
                current.retain(|p, _| p != &rel && !p.starts_with(&prefix));
            }
            Err(e) => return Err(Error::zk("delete", path, e)),
        }
    }
    let mut todo: Vec<(&String, &String)> = desired.iter().filter(|(p, d)| current.get(*p) != Some(*d)).collect();
    todo.sort_by_key(|(p, _)| depth(p));
    for (rel, data) in todo {
        let path = paths.tree_node(rel);
        let result = if current.contains_key(rel) {
            zk.set_data(&path, data.as_bytes(), None).await.map(|_| ())
        } else {
            match zk.create(&path, data.as_bytes(), &paths.persistent()).await {
                Err(ZkError::NodeExists) => zk.set_data(&path, data.as_bytes(), None).await.map(|_| ()),
                other => other.map(|_| ()),
            }
        };
        result.map_err(|e| Error::zk("write", path, e))?;
        current.insert(rel.clone(), data.clone());
    }
    Ok(())
}

/// Joins the root election: withdraws any candidacy of ours left from an
/// earlier try (a ZooKeeper error after we were elected, a session that
/// ended while we lived; otherwise our new znode would wait forever behind
/// our own old one), then creates our sequential znode and returns its name.
/// `data` names the candidate (its URL).
pub async fn enter_election(zk: &Client, paths: &Paths, data: &[u8]) -> Result<String> {
    withdraw_candidacy(zk, paths, data).await?;
    let prefix = format!("{}/n_", paths.election());
    let opts = CreateMode::EphemeralSequential.with_acls(Acls::new(&paths.acls));
    let (_, seq) = zk.create(&prefix, data, &opts).await.map_err(|e| Error::zk("create", prefix.clone(), e))?;
    Ok(format!("n_{seq}"))
}

/// Joins the election and returns once this candidate leads:
/// [`enter_election`] then [`wait_turn`].
pub async fn elect(zk: &Client, paths: &Paths, data: &[u8]) -> Result<()> {
    let mine = enter_election(zk, paths, data).await?;
    wait_turn(zk, paths, &mine).await
}

/// Returns once our candidacy `mine` is the oldest (lowest sequence). Each
/// candidate watches only its predecessor, so a leader's death wakes one
/// standby, not all.
pub async fn wait_turn(zk: &Client, paths: &Paths, mine: &str) -> Result<()> {
    let dir = paths.election();
    loop {
        let mut candidates = zk.list_children(&dir).await.map_err(|e| Error::zk("list", dir.clone(), e))?;
        candidates.sort();
        let pos = candidates.iter().position(|c| *c == mine);
        let Some(pos) = pos else {
            return Err(Error::Internal(format!("election znode {dir}/{mine} vanished (session lost?)")));
        };
        if pos == 0 {
            return Ok(());
        }
        let before = format!("{dir}/{}", candidates[pos - 1]);
        log::info!("standing by as root candidate {mine}; watching {before}");
        match zk.check_and_watch_stat(&before).await {
            Ok((Some(_), watcher)) => {
                watcher.changed().await;
            }
            Ok((None, _)) => {}
            Err(e) => return Err(Error::zk("watch", before, e)),
        }
    }
}

/// The `leader` znode: who leads, in which epoch, and which roots hold
/// every acknowledged write (the leader itself included). Written only
/// with a version check, by the leader (in-sync changes) and by a
/// candidate taking over, so a deposed leader's write fails.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaderRecord {
    pub id: u64,
    pub url: String,
    pub epoch: u64,
    pub in_sync: Vec<u64>,
    /// The members of `in_sync` that keep no commit log (no `--data-dir`):
    /// their copy dies with their process. Beyond DESIGN.md's fields; it
    /// lets a cluster of such roots elect a new, empty leader once every
    /// one of them is gone, instead of waiting forever.
    #[serde(default)]
    pub without_log: Vec<u64>,
}

/// The current root as the `root` znode records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RootInfo {
    pub id: u64,
    pub url: String,
    pub epoch: u64,
}

/// The `root` znode's `{"id","url","epoch"}`; `None` when unreadable.
pub fn parse_root(data: &[u8]) -> Option<RootInfo> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    Some(RootInfo {
        id: v["id"].as_u64()?,
        url: v["url"].as_str()?.to_string(),
        epoch: v["epoch"].as_u64().unwrap_or(0),
    })
}

/// Reads the `root` znode: `None` while no root is published.
pub async fn read_root(zk: &Client, paths: &Paths) -> Result<Option<RootInfo>> {
    let path = paths.root();
    match read(zk, &path).await? {
        None => Ok(None),
        Some(data) => parse_root(&data).map(Some).ok_or_else(|| {
            Error::Internal(format!(
                "{path} holds {:?}, not {{\"id\",\"url\",\"epoch\"}}",
                String::from_utf8_lossy(&data)
            ))
        }),
    }
}

/// Reads the `leader` znode and its version; `None` before any leader.
pub async fn read_leader(zk: &Client, paths: &Paths) -> Result<Option<(LeaderRecord, i32)>> {
    let path = paths.leader();
    match zk.get_data(&path).await {
        Ok((data, stat)) => {
            let rec = serde_json::from_slice(&data)
                .map_err(|e| Error::Internal(format!("{path} holds {:?}: {e}", String::from_utf8_lossy(&data))))?;
            Ok(Some((rec, stat.version)))
        }
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(Error::zk("get", path, e)),
    }
}

/// Writes the `leader` znode if it is still at `version` (`None`: if it
/// does not exist yet). Returns the new version, or `None` when someone
/// else changed it first (the caller lost: re-read, or step down).
pub async fn write_leader(zk: &Client, paths: &Paths, rec: &LeaderRecord, version: Option<i32>) -> Result<Option<i32>> {
    let path = paths.leader();
    let data = serde_json::to_vec(rec).map_err(|e| Error::Internal(format!("encoding {path}: {e}")))?;
    let result = match version {
        Some(v) => zk.set_data(&path, &data, Some(v)).await.map(|stat| stat.version),
        None => zk.create(&path, &data, &paths.persistent()).await.map(|(stat, _)| stat.version),
    };
    match result {
        Ok(v) => Ok(Some(v)),
        Err(ZkError::BadVersion) | Err(ZkError::NodeExists) | Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(Error::zk("set", path, e)),
    }
}

/// Reads the slot map and its znode version; `None` before any group
/// leader made one.
pub async fn read_slots(zk: &Client, paths: &Paths) -> Result<Option<(SlotMap, i32)>> {
    let path = paths.slots();
    match zk.get_data(&path).await {
        Ok((data, stat)) => {
            let map = SlotMap::from_json(&data).map_err(|e| Error::Internal(format!("{path}: {e}")))?;
            Ok(Some((map, stat.version)))
        }
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(Error::zk("get", path, e)),
    }
}

/// The slot map, made first if the cluster has none: every slot to
/// `group` (group 0's first leader makes it). Made by a create, so of two
/// leaders racing one wins and both read the winner's map.
pub async fn ensure_slots(zk: &Client, paths: &Paths, group: GroupId) -> Result<SlotMap> {
    loop {
        if let Some((map, _)) = read_slots(zk, paths).await? {
            return Ok(map);
        }
        let path = paths.slots();
        match zk.create(&path, &SlotMap::single(group).to_json(), &paths.persistent()).await {
            Ok(_) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(Error::zk("create", path, e)),
        }
    }
}

/// Writes the slot map if its znode is still at `version`. `false`: it
/// changed since it was read (re-read, decide again).
pub async fn write_slots(zk: &Client, paths: &Paths, map: &SlotMap, version: i32) -> Result<bool> {
    let path = paths.slots();
    match zk.set_data(&path, &map.to_json(), Some(version)).await {
        Ok(_) => Ok(true),
        Err(ZkError::BadVersion) => Ok(false),
        Err(e) => Err(Error::zk("set", path, e)),
    }
}

/// The root groups that have a directory under `groups/`, ascending.
pub async fn list_groups(zk: &Client, paths: &Paths) -> Result<Vec<GroupId>> {
    let dir = paths.groups();
    match zk.list_children(&dir).await {
        Ok(names) => {
            let mut groups: Vec<GroupId> = names.iter().filter_map(|n| n.parse().ok()).collect();
            groups.sort_unstable();
            Ok(groups)
        }
        Err(ZkError::NoNode) => Ok(vec![]),
        Err(e) => Err(Error::zk("list", dir, e)),
    }
}

/// Deletes every election znode whose data is `data` (ours).
pub async fn withdraw_candidacy(zk: &Client, paths: &Paths, data: &[u8]) -> Result<()> {
    let dir = paths.election();
    let candidates = match zk.list_children(&dir).await {
        Ok(c) => c,
        Err(ZkError::NoNode) => return Ok(()),
        Err(e) => return Err(Error::zk("list", dir, e)),
    };
    for c in candidates {
        let path = format!("{dir}/{c}");
        match zk.get_data(&path).await {
            Ok((found, _)) if found == data => match zk.delete(&path, None).await {
                Ok(()) | Err(ZkError::NoNode) => log::debug!("withdrew our earlier candidacy {path}"),
                Err(e) => return Err(Error::zk("delete", path, e)),
            },
            Ok(_) | Err(ZkError::NoNode) => {}
            Err(e) => return Err(Error::zk("get", path, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_id_is_what_zookeeper_computes() {
        // ZooKeeper's DigestAuthenticationProvider.generateDigest("super:test"),
        // the example in its administrator's guide.
        assert_eq!(digest_id("super:test"), "super:D/InIHSb7yEEbrWz8b9l71RjZJU=");
    }

    #[test]
    fn node_paths_let_anyone_read_and_only_the_digest_user_change() {
        let secret = Secret::new("0123456789abcdef!".into()).unwrap();
        let paths = Paths::with_secret("c", &secret);
        let acls = paths.acls();
        assert_eq!(acls.len(), 2);
        assert_eq!((acls[0].scheme(), acls[0].id(), acls[0].permission()), ("world", "anyone", Permission::READ));
        assert_eq!(acls[1].scheme(), "digest");
        assert_eq!(acls[1].id(), digest_id("treecache:0123456789abcdef!"));
        assert_eq!(acls[1].permission(), Permission::ALL);
        assert!(!Paths::new("c").acls().iter().any(|a| a.permission().has(Permission::WRITE)));
    }
}
