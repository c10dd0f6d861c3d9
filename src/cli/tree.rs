//! `treecache tree`: the tree as ZooKeeper records it, drawn like `tree(1)`,
//! with each live node's state as the node itself reports it. Reads
//! `/treecache/<cluster>/tree` (one znode per node at its path), `live/`
//! (who is alive) and `root` (who leads), then asks each live node's
//! `/health` and `/metrics` (short timeout). It only reads: it never writes
//! to ZooKeeper or to a node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::Args;
use zookeeper_client::Client;

use super::{Exit, Failure};
use crate::cli::local::zk_connect;
use crate::slots::{GroupId, SlotMap};
use crate::tree::zk::Paths;
pub use crate::tree::zk::{parse_root, RootInfo};

/// How long `tree` waits for ZooKeeper: the session, then the whole read.
const ZK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long each node may take to answer `/health` and `/metrics`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Args)]
pub struct TreeArgs {
    /// ZooKeeper connect string, HOST:PORT[,HOST:PORT..].
    #[arg(long, env = "TREECACHE_ZK", default_value = "127.0.0.1:2181", global = true)]
    pub zk: String,
    /// Cluster name; the znodes live under /treecache/<cluster>.
    #[arg(long, env = "TREECACHE_CLUSTER", default_value = "default", global = true)]
    pub cluster: String,
    /// The nodes' API token (their --api-token), to read each node's key
    /// count from its /metrics.
    #[arg(long, env = "TREECACHE_API_TOKEN", hide_env_values = true, global = true)]
    pub api_token: Option<String>,
    /// The CA (PEM) of nodes that serve HTTPS, to ask them for their state.
    #[arg(long, env = "TREECACHE_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
}

pub async fn run(args: TreeArgs) -> Result<(), Failure> {
    let snapshot = read(&args.zk, &args.cluster, ZK_TIMEOUT).await.map_err(Failure::unavailable)?;
    if snapshot.records.is_empty() {
        return Err(Failure::new(Exit::NotFound, no_tree(&args.zk, &args.cluster)));
    }
    let tls = match &args.tls_ca {
        Some(ca) => Some(crate::tls::client_config_trusting(ca).map_err(Failure::usage)?),
        None => None,
    };
    let states = probe_all(&snapshot, args.api_token.as_deref(), tls).await;
    print!("{}\n{}", header(&args.cluster, &snapshot), draw_with(&snapshot, &states));
    Ok(())
}

fn no_tree(zk: &str, cluster: &str) -> String {
    format!("cluster {cluster:?} has no tree in ZooKeeper at {zk} (is a root running with --cluster {cluster}?)")
}

/// What a live node says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// It answered `/health`: its depth, and the entries `/metrics` counts.
    Alive { depth: u64, keys: Keys },
    /// Live in ZooKeeper, but no answer over HTTP.
    NoAnswer,
}

impl State {
    fn text(&self) -> String {
        match self {
            State::Alive { depth, keys } => {
                let keys = match keys {
                    Keys::Count(k) => format!("{k} key{}", if *k == 1 { "" } else { "s" }),
                    Keys::Unknown => "? keys".into(),
                    Keys::TokenRefused => "? keys (401: --api-token)".into(),
                };
                format!("alive, depth {depth}, {keys}")
            }
            State::NoAnswer => "(no answer)".into(),
        }
    }
}

/// How many entries a node holds, as far as its `/metrics` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    Count(u64),
    /// `/metrics` answered 401: the nodes run with `--api-token`, and this
    /// one was not given (or not this one).
    TokenRefused,
    /// No answer, or no `treecache_entries` in it.
    Unknown,
}

/// Asks every live node for its state, all at once, each within
/// [`PROBE_TIMEOUT`]; `token` is the nodes' API token, for `/metrics`;
/// `tls` how to reach https:// nodes.
pub async fn probe_all(s: &Snapshot, token: Option<&str>, tls: Option<rustls::ClientConfig>) -> BTreeMap<u64, State> {
    let Some(http) = probe_client(tls) else { return BTreeMap::new() };
    let live = s.records.iter().filter(|r| s.live.contains(&r.id()));
    let probes = live.map(|r| {
        let http = http.clone();
        async move { (r.id(), probe(&http, &r.url, token).await) }
    });
    futures::future::join_all(probes).await.into_iter().collect()
}

/// The HTTP client that asks nodes of their state, each request within
/// [`PROBE_TIMEOUT`].
pub fn probe_client(tls: Option<rustls::ClientConfig>) -> Option<reqwest::Client> {
    let builder = reqwest::Client::builder().timeout(PROBE_TIMEOUT);
    let builder = match tls {
        Some(config) => builder.use_preconfigured_tls(config),
        None => builder,
    };
    builder.build().ok()
}

/// A node's `/metrics` text; `Err(true)` when it refused the token.
pub async fn metrics_text(http: &reqwest::Client, url: &str, token: Option<&str>) -> Result<String, bool> {
    let mut metrics = http.get(format!("{url}/metrics"));
    if let Some(token) = token {
        metrics = metrics.bearer_auth(token);
    }
    match metrics.send().await {
        Ok(resp) if resp.status() == reqwest::StatusCode::UNAUTHORIZED => Err(true),
        Ok(resp) if resp.status().is_success() => resp.text().await.map_err(|_| false),
        _ => Err(false),
    }
}

async fn probe(http: &reqwest::Client, url: &str, token: Option<&str>) -> State {
    let health = async { http.get(format!("{url}/health")).send().await?.error_for_status()?.json().await };
    let health: serde_json::Value = match health.await {
        Ok(h) => h,
        Err::<_, reqwest::Error>(_) => return State::NoAnswer,
    };
    let keys = match metrics_text(http, url, token).await {
        Err(true) => Keys::TokenRefused,
        Ok(text) => gauge(&text, "treecache_entries").map_or(Keys::Unknown, Keys::Count),
        Err(false) => Keys::Unknown,
    };
    match health["depth"].as_u64() {
        Some(depth) => State::Alive { depth, keys },
        None => State::NoAnswer,
    }
}

/// An unlabelled gauge's value from Prometheus text.
pub fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// One node's record under `tree/`: its path from the root (ids) and URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub path: Vec<u64>,
    pub url: String,
}

impl Record {
    pub fn id(&self) -> u64 {
        self.path.last().copied().unwrap_or_default()
    }
}

/// Everything `tree` reads from ZooKeeper for one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Parents before children, siblings by id.
    pub records: Vec<Record>,
    pub live: BTreeSet<u64>,
    pub root: Option<RootInfo>,
    /// The root candidates other than the elected root, in election order.
    pub standbys: Vec<Standby>,
    /// Root groups other than group 0 (whose root and standbys are above).
    pub groups: Vec<GroupTier>,
    /// The slot map, once a leader made one.
    pub slots: Option<SlotMap>,
}

/// One root group other than group 0: its leader and its standbys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTier {
    pub group: GroupId,
    pub root: Option<RootInfo>,
    pub standbys: Vec<Standby>,
}

/// A standby root, as ZooKeeper records it: its candidacy (`election/`),
/// its id (`live/<id>` with its URL) and whether the `leader` znode counts
/// it in sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    pub id: Option<u64>,
    pub url: String,
    pub in_sync: bool,
}

/// Reads the cluster's tree from ZooKeeper at `zk` and draws it, without
/// asking the nodes.
pub async fn render(zk: &str, cluster: &str) -> Result<String, String> {
    let snapshot = read(zk, cluster, ZK_TIMEOUT).await?;
    if snapshot.records.is_empty() {
        return Err(no_tree(zk, cluster));
    }
    Ok(format!("{}\n{}", header(cluster, &snapshot), draw(&snapshot)))
}

/// Reads `tree/`, `live/` and `root` of `cluster`, each step within `timeout`.
pub async fn read(zk: &str, cluster: &str, timeout: Duration) -> Result<Snapshot, String> {
    let client = zk_connect(zk, timeout).await?;
    match tokio::time::timeout(timeout, read_with(&client, &Paths::new(cluster))).await {
        Ok(result) => result,
        Err(_) => Err(format!("ZooKeeper at {zk} did not answer within {timeout:?}")),
    }
}

/// The reads themselves, on an open session. Missing znodes are empty, not
/// errors: a cluster that never ran has no tree.
pub async fn read_with(zk: &Client, paths: &Paths) -> Result<Snapshot, String> {
    let mut records = Vec::new();
    collect(zk, &paths.tree(), &mut Vec::new(), &mut records).await?;
    let live = list(zk, &paths.live()).await?.iter().filter_map(|s| s.parse().ok()).collect();
    let root = get(zk, &paths.root()).await?.as_deref().and_then(parse_root);
    let standbys = read_standbys(zk, paths, root.as_ref()).await?;
    let mut groups = Vec::new();
    for group in list(zk, &paths.groups()).await?.iter().filter_map(|g| g.parse::<GroupId>().ok()) {
        if group == paths.group() {
            continue;
        }
        let paths = paths.in_group(group);
        let root = get(zk, &paths.root()).await?.as_deref().and_then(parse_root);
        let standbys = read_standbys(zk, &paths, root.as_ref()).await?;
        groups.push(GroupTier { group, root, standbys });
    }
    let slots = get(zk, &paths.slots()).await?.and_then(|data| SlotMap::from_json(&data).ok());
    Ok(Snapshot { records, live, root, standbys, groups, slots })
}

/// The root candidates but the elected root, with their ids and in-sync state.
async fn read_standbys(zk: &Client, paths: &Paths, root: Option<&RootInfo>) -> Result<Vec<Standby>, String> {
    let mut candidates = list(zk, &paths.election()).await?;
    candidates.sort(); // n_<sequence>: the order of the election
    let mut urls = Vec::new();
    for c in candidates {
        if let Some(data) = get(zk, &format!("{}/{c}", paths.election())).await? {
            let url = String::from_utf8_lossy(&data).into_owned();
            if root.is_none_or(|r| r.url != url) && !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = BTreeMap::new();
    for id in list(zk, &paths.live()).await? {
        if let Some(data) = get(zk, &format!("{}/{id}", paths.live())).await? {
            ids.insert(parse_url(&data), id.parse::<u64>().ok());
        }
    }
    let in_sync: Vec<u64> = get(zk, &paths.leader())
        .await?
        .and_then(|d| serde_json::from_slice::<crate::tree::zk::LeaderRecord>(&d).ok())
        .map(|l| l.in_sync)
        .unwrap_or_default();
    Ok(urls
        .into_iter()
        .map(|url| {
            let id = ids.get(&url).copied().flatten();
            Standby { in_sync: id.is_some_and(|id| in_sync.contains(&id)), id, url }
        })
        .collect())
}

/// Children of `path`, sorted as ids; none when the znode does not exist.
async fn list(zk: &Client, path: &str) -> Result<Vec<String>, String> {
    match zk.list_children(path).await {
        Ok(mut children) => {
            children.sort_by_key(|c| (c.parse::<u64>().unwrap_or(u64::MAX), c.clone()));
            Ok(children)
        }
        Err(zookeeper_client::Error::NoNode) => Ok(Vec::new()),
        Err(e) => Err(format!("cannot list {path}: {e}")),
    }
}

/// Data of `path`; `None` when the znode does not exist.
async fn get(zk: &Client, path: &str) -> Result<Option<Vec<u8>>, String> {
    match zk.get_data(path).await {
        Ok((data, _)) => Ok(Some(data)),
        Err(zookeeper_client::Error::NoNode) => Ok(None),
        Err(e) => Err(format!("cannot read {path}: {e}")),
    }
}

/// Depth-first walk of `tree/`, parents before children.
async fn collect(zk: &Client, path: &str, at: &mut Vec<u64>, out: &mut Vec<Record>) -> Result<(), String> {
    for child in list(zk, path).await? {
        let Ok(id) = child.parse::<u64>() else { continue };
        let full = format!("{path}/{child}");
        let Some(data) = get(zk, &full).await? else { continue }; // went away meanwhile
        at.push(id);
        out.push(Record { path: at.clone(), url: parse_url(&data) });
        Box::pin(collect(zk, &full, at, out)).await?;
        at.pop();
    }
    Ok(())
}

/// The `url` of a tree znode's `{"id","url","depth"}`; `?` when unreadable.
pub fn parse_url(data: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v["url"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// One line on the cluster: its name, root, size and how many are alive.
pub fn header(cluster: &str, s: &Snapshot) -> String {
    let root = match &s.root {
        Some(r) => format!("root {} at {} (epoch {})", r.id, r.url, r.epoch),
        None => "no root elected".into(),
    };
    let alive = s.records.iter().filter(|r| s.live.contains(&r.id())).count();
    format!("cluster {cluster}: {root}; {} nodes, {alive} live", s.records.len())
}

/// Draws the records like `tree(1)`: one line per node, `id  url`, with
/// `(root)` on the elected root and `(dead)` on nodes without a live znode.
pub fn draw(s: &Snapshot) -> String {
    draw_with(s, &BTreeMap::new())
}

/// [`draw`], each line ending in the node's state when `states` has it.
pub fn draw_with(s: &Snapshot, states: &BTreeMap<u64, State>) -> String {
    let mut children: BTreeMap<&[u64], Vec<&Record>> = BTreeMap::new();
    for r in &s.records {
        children.entry(&r.path[..r.path.len().saturating_sub(1)]).or_default().push(r);
    }
    for kids in children.values_mut() {
        kids.sort_by_key(|r| r.id());
    }
    let mut out = String::new();
    for top in children.get(&[][..]).into_iter().flatten() {
        out.push_str(&line(top, s, states));
        draw_children(top, &children, s, states, "", &mut out);
    }
    draw_standbys(&s.standbys, "standby roots:", "  ", &mut out);
    if s.groups.is_empty() {
        return out;
    }
    // The root tier: every group's leader, standbys and slots.
    let epoch = s.slots.as_ref().map_or(String::new(), |m| format!(" (slot map epoch {})", m.epoch()));
    out.push_str(&format!("root groups{epoch}:\n"));
    let group0 = GroupTier { group: 0, root: s.root.clone(), standbys: s.standbys.clone() };
    for g in std::iter::once(&group0).chain(&s.groups) {
        let leader = match &g.root {
            Some(r) => format!("leader {} at {} (epoch {})", r.id, r.url, r.epoch),
            None => "no leader elected".into(),
        };
        out.push_str(&format!("  group {}: {leader}; {}\n", g.group, slots_text(s.slots.as_ref(), g.group)));
        draw_standbys(&g.standbys, "standbys:", "      ", &mut out);
    }
    out
}

/// `slots 0-511, 600 (513)`, or `no slots`, for `group` in `map`.
fn slots_text(map: Option<&SlotMap>, group: GroupId) -> String {
    let Some(map) = map else { return "no slot map yet".into() };
    match map.ranges_of(group) {
        ranges if ranges.is_empty() => "no slots".into(),
        ranges => format!("slots {ranges} ({})", map.count(group)),
    }
}

fn draw_standbys(standbys: &[Standby], title: &str, indent: &str, out: &mut String) {
    if standbys.is_empty() {
        return;
    }
    out.push_str(&format!("{}{title}\n", &indent[2..]));
    for sb in standbys {
        let id = sb.id.map_or("?".to_string(), |id| id.to_string());
        let state = if sb.in_sync { "in sync" } else { "not in sync (catching up, or left)" };
        out.push_str(&format!("{indent}{id}  {}  {state}\n", sb.url));
    }
}

type Children<'a> = BTreeMap<&'a [u64], Vec<&'a Record>>;

fn draw_children(
    r: &Record,
    children: &Children<'_>,
    s: &Snapshot,
    states: &BTreeMap<u64, State>,
    prefix: &str,
    out: &mut String,
) {
    let kids = children.get(r.path.as_slice()).map(Vec::as_slice).unwrap_or_default();
    for (i, kid) in kids.iter().enumerate() {
        let last = i + 1 == kids.len();
        let (branch, indent) = if last { ("└── ", "    ") } else { ("├── ", "│   ") };
        out.push_str(&format!("{prefix}{branch}{}", line(kid, s, states)));
        draw_children(kid, children, s, states, &format!("{prefix}{indent}"), out);
    }
}

/// `id  url`, the markers and the state, with a newline.
fn line(r: &Record, s: &Snapshot, states: &BTreeMap<u64, State>) -> String {
    let mut text = format!("{}  {}", r.id(), r.url);
    if s.root.as_ref().is_some_and(|root| root.id == r.id()) {
        text.push_str("  (root)");
    }
    if !s.live.contains(&r.id()) {
        text.push_str("  (dead)");
    }
    if let Some(state) = states.get(&r.id()) {
        text.push_str("  ");
        text.push_str(&state.text());
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &[u64]) -> Record {
        Record { path: path.to_vec(), url: format!("http://n{}", path.last().unwrap()) }
    }

    fn snapshot(paths: &[&[u64]], live: &[u64], root: Option<u64>) -> Snapshot {
        Snapshot {
            records: paths.iter().map(|p| rec(p)).collect(),
            live: live.iter().copied().collect(),
            root: root.map(|id| RootInfo { id, url: format!("http://n{id}"), epoch: 2 }),
            standbys: Vec::new(),
            groups: Vec::new(),
            slots: None,
        }
    }

    #[test]
    fn draws_a_binary_tree_with_root_and_dead_markers() {
        let s = snapshot(&[&[1], &[1, 2], &[1, 2, 4], &[1, 2, 5], &[1, 3]], &[1, 2, 3, 4], Some(1));
        assert_eq!(
            draw(&s),
            "1  http://n1  (root)\n\
             ├── 2  http://n2\n\
             │   ├── 4  http://n4\n\
             │   └── 5  http://n5  (dead)\n\
             └── 3  http://n3\n"
        );
    }

    #[test]
    fn a_last_child_indents_its_subtree_with_spaces() {
        let s = snapshot(&[&[1], &[1, 2], &[1, 3], &[1, 3, 6], &[1, 3, 6, 8]], &[1, 2, 3, 6, 8], Some(1));
        assert_eq!(
            draw(&s),
            "1  http://n1  (root)\n├── 2  http://n2\n└── 3  http://n3\n    └── 6  http://n6\n        └── 8  http://n8\n"
        );
    }

    #[test]
    fn standby_roots_follow_the_tree_with_their_in_sync_state() {
        let mut s = snapshot(&[&[1], &[1, 2]], &[1, 2, 3, 4], Some(1));
        s.standbys = vec![
            Standby { id: Some(3), url: "http://n3".into(), in_sync: true },
            Standby { id: None, url: "http://n4".into(), in_sync: false },
        ];
        assert_eq!(
            draw(&s),
            "1  http://n1  (root)\n└── 2  http://n2\nstandby roots:\n  3  http://n3  in sync\n  \
             ?  http://n4  not in sync (catching up, or left)\n"
        );
    }

    #[test]
    fn the_root_tier_lists_every_group_with_its_leader_standbys_and_slots() {
        let mut s = snapshot(&[&[1], &[1, 2]], &[1, 2, 3, 4, 5], Some(1));
        s.groups = vec![
            GroupTier {
                group: 1,
                root: Some(RootInfo { id: 4, url: "http://n4".into(), epoch: 5 }),
                standbys: vec![Standby { id: Some(5), url: "http://n5".into(), in_sync: true }],
            },
            GroupTier { group: 2, root: None, standbys: vec![] },
        ];
        s.slots = Some(SlotMap::even(&[0, 1], 1).unwrap().assign(7..=7, 1));
        assert_eq!(
            draw(&s),
            "1  http://n1  (root)\n└── 2  http://n2\nroot groups (slot map epoch 2):\n  \
             group 0: leader 1 at http://n1 (epoch 2); slots 0-6, 8-511 (511)\n  \
             group 1: leader 4 at http://n4 (epoch 5); slots 7, 512-1023 (513)\n    standbys:\n      \
             5  http://n5  in sync\n  \
             group 2: no leader elected; no slots\n"
        );
    }

    #[test]
    fn siblings_are_ordered_by_id_not_by_text() {
        let s = snapshot(&[&[1], &[1, 10], &[1, 9]], &[1, 9, 10], None);
        assert_eq!(draw(&s), "1  http://n1\n├── 9  http://n9\n└── 10  http://n10\n");
    }

    #[test]
    fn no_elected_root_means_no_root_marker() {
        let s = snapshot(&[&[1]], &[], None);
        assert_eq!(draw(&s), "1  http://n1  (dead)\n");
        assert_eq!(header("c", &s), "cluster c: no root elected; 1 nodes, 0 live");
    }

    #[test]
    fn states_end_the_lines_and_fit_in_80_columns() {
        let s = snapshot(&[&[1], &[1, 2], &[1, 2, 4], &[1, 3], &[1, 3, 5]], &[1, 2, 3, 5], Some(1));
        let states = BTreeMap::from([
            (1, State::Alive { depth: 0, keys: Keys::Count(12345) }),
            (2, State::Alive { depth: 1, keys: Keys::Count(1) }),
            (3, State::NoAnswer),
            (5, State::Alive { depth: 1, keys: Keys::TokenRefused }),
        ]);
        let drawn = draw_with(&s, &states);
        assert_eq!(
            drawn,
            "1  http://n1  (root)  alive, depth 0, 12345 keys\n\
             ├── 2  http://n2  alive, depth 1, 1 key\n\
             │   └── 4  http://n4  (dead)\n\
             └── 3  http://n3  (no answer)\n    \
                 └── 5  http://n5  alive, depth 1, ? keys (401: --api-token)\n"
        );
        assert!(drawn.lines().all(|l| l.chars().count() <= 80), "{drawn}");
    }

    #[test]
    fn the_entries_gauge_is_read_from_prometheus_text() {
        let text = "# HELP treecache_entries_total x\ntreecache_entries_total 9\ntreecache_entries 42\n";
        assert_eq!(gauge(text, "treecache_entries"), Some(42));
        assert_eq!(gauge("treecache_entries NaN\n", "treecache_entries"), Some(0));
        assert_eq!(gauge("", "treecache_entries"), None);
    }

    #[test]
    fn an_empty_tree_draws_nothing() {
        assert_eq!(draw(&Snapshot::default()), "");
    }

    #[test]
    fn header_names_root_size_and_live_count() {
        let s = snapshot(&[&[1], &[1, 2], &[1, 3]], &[1, 3, 99], Some(1));
        assert_eq!(header("default", &s), "cluster default: root 1 at http://n1 (epoch 2); 3 nodes, 2 live");
    }

    #[test]
    fn znode_data_is_parsed_and_garbage_is_tolerated() {
        assert_eq!(parse_url(br#"{"id":5,"url":"http://10.0.0.5:8080","depth":2}"#), "http://10.0.0.5:8080");
        assert_eq!(parse_url(b"not json"), "?");
        assert_eq!(
            parse_root(br#"{"id":1,"url":"http://r","epoch":3}"#),
            Some(RootInfo { id: 1, url: "http://r".into(), epoch: 3 })
        );
        assert_eq!(parse_root(br#"{"url":"http://r"}"#), None);
        assert_eq!(parse_root(b""), None);
    }

    #[tokio::test]
    async fn an_unreachable_zookeeper_is_a_clear_error() {
        let port = crate::zkserver::free_port().unwrap();
        let err = render(&format!("127.0.0.1:{port}"), "default").await.unwrap_err();
        assert!(err.contains(&format!("cannot reach ZooKeeper at 127.0.0.1:{port}")), "{err}");
    }
}
