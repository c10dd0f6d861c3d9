//! `treecache slots`: the slot map of the root groups as ZooKeeper records
//! it (`/treecache/<c>/slots`), with each group's leader, how many keys and
//! bytes it holds (its `/metrics`), and the moves in progress (`moves/`).
//! `slots move` and `slots rebalance` ask for moves: they record each in
//! `moves/<slot>` (one `multi`, checked against the map's version) and wait
//! while the source groups' leaders carry them out (`node::moves`).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::tree::{self, TreeArgs};
use super::{Exit, Failure};
use crate::cli::local::zk_connect;
use crate::slots::{ranges_text, GroupId, MoveRecord, MoveState, Slot, SlotMap};
use crate::tree::zk::{self, Paths, RootInfo};

const ZK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Args)]
pub struct SlotsArgs {
    #[command(subcommand)]
    pub action: Option<SlotsAction>,
    #[command(flatten)]
    pub reach: TreeArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SlotsAction {
    /// Move slots to another root group, live; waits until they are handed over.
    Move(MoveArgs),
    /// Move slots so that every root group with a leader holds about the same bytes.
    Rebalance(RebalanceArgs),
}

#[derive(Debug, Clone, Args)]
pub struct MoveArgs {
    /// The slots to move: A-B or A (0 to 1023).
    #[arg(long)]
    pub slots: String,
    /// The root group to move them to.
    #[arg(long)]
    pub to: GroupId,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RebalanceArgs {
    #[command(flatten)]
    pub change: ChangeArgs,
}

/// What changing the map needs: the cluster secret (ZooKeeper lets only
/// the cluster change its znodes), and how long to wait.
#[derive(Debug, Clone, Args)]
pub struct ChangeArgs {
    /// The cluster's secret, as the nodes have it.
    #[arg(long, env = "TREECACHE_CLUSTER_SECRET", hide_env_values = true, conflicts_with = "cluster_secret_file")]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret.
    #[arg(long, env = "TREECACHE_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<std::path::PathBuf>,
    /// How long to wait for the moves to be handed over (they go on after).
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "120s")]
    pub timeout: Duration,
}

/// One group's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLine {
    pub group: GroupId,
    pub leader: Option<RootInfo>,
    pub slots: usize,
    pub ranges: String,
    /// Keys and bytes from the leader's `/metrics`; `None` when it did not tell.
    pub keys: Option<(u64, u64)>,
}

pub async fn run(args: SlotsArgs) -> Result<(), Failure> {
    match &args.action {
        None => show(&args.reach).await,
        Some(SlotsAction::Move(m)) => {
            let range = crate::slots::parse_range(&m.slots).map_err(Failure::usage)?;
            change(&args.reach, &m.change, false, |_, _| range.clone().map(|s| (s, m.to)).collect()).await
        }
        Some(SlotsAction::Rebalance(r)) => change(&args.reach, &r.change, true, plan_rebalance).await,
    }
}

/// Records the moves `plan` makes of the map (given the bytes each group
/// with a leader holds, when `weigh`), in one `multi` checked against the
/// map's version, and waits until they are handed over.
async fn change(
    reach: &TreeArgs,
    args: &ChangeArgs,
    weigh: bool,
    plan: impl Fn(&SlotMap, &BTreeMap<GroupId, u64>) -> Vec<(Slot, GroupId)>,
) -> Result<(), Failure> {
    let secret = crate::config::read_secret(args.cluster_secret.as_deref(), args.cluster_secret_file.as_deref())
        .map_err(Failure::usage)?
        .ok_or_else(|| {
            Failure::usage(
                "moving slots changes the cluster's znodes: give the cluster's secret (--cluster-secret-file F or \
                 --cluster-secret S)",
            )
        })?;
    let paths = Paths::with_secret(&reach.cluster, &secret);
    let unavailable = |e: String| Failure::unavailable(e);
    let client = tokio::time::timeout(ZK_TIMEOUT, zk::connect(&reach.zk, &paths, None))
        .await
        .map_err(|_| unavailable(format!("ZooKeeper at {} did not answer within {ZK_TIMEOUT:?}", reach.zk)))?
        .map_err(|e| unavailable(e.to_string()))?;
    let Some((map, version)) = zk::read_slots(&client, &paths).await.map_err(|e| unavailable(e.to_string()))? else {
        return Err(Failure::new(
            Exit::NotFound,
            format!("cluster {:?} has no slot map at {}", reach.cluster, reach.zk),
        ));
    };
    let mut leaders = BTreeMap::new();
    for g in zk::list_groups(&client, &paths).await.map_err(|e| unavailable(e.to_string()))? {
        if let Some(root) = zk::read_root(&client, &paths.in_group(g)).await.map_err(|e| unavailable(e.to_string()))? {
            leaders.insert(g, root);
        }
    }
    let mut bytes = BTreeMap::new();
    if weigh {
        let tls = match &reach.tls_ca {
            Some(ca) => Some(crate::tls::client_config_trusting(ca).map_err(Failure::usage)?),
            None => None,
        };
        let http = tree::probe_client(tls).ok_or_else(|| Failure::usage("cannot build an HTTP client"))?;
        for (g, root) in &leaders {
            let text = tree::metrics_text(&http, &root.url, reach.api_token.as_deref()).await.map_err(|_| {
                unavailable(format!("group {g}'s leader {} did not tell its bytes (/metrics)", root.url))
            })?;
            let held = tree::gauge(&text, "treecache_bytes")
                .ok_or_else(|| unavailable(format!("group {g}'s leader {} has no treecache_bytes", root.url)))?;
            bytes.insert(*g, held);
        }
    }
    let moves: Vec<(Slot, GroupId)> = plan(&map, &bytes).into_iter().filter(|&(s, to)| map.owner(s) != to).collect();
    if let Some(&(slot, _)) = moves.iter().find(|&&(s, _)| !leaders.contains_key(&map.owner(s))) {
        let from = map.owner(slot);
        return Err(Failure::usage(format!(
            "slot {slot}'s group {from} has no leader to hand it over: start a root with --group {from} first"
        )));
    }
    if let Some((_, to)) = moves.iter().find(|(_, to)| !leaders.contains_key(to)) {
        return Err(Failure::usage(format!(
            "root group {to} has no leader: start a root with --group {to} first (`treecache slots` lists the groups)"
        )));
    }
    if moves.is_empty() {
        println!("nothing to move: {map}");
        return Ok(());
    }
    let mut multi = client.new_multi_writer();
    let zk_err = |e: zookeeper_client::Error| unavailable(format!("ZooKeeper: {e}"));
    multi.add_check_version(&paths.slots(), version).map_err(zk_err)?;
    for &(slot, to) in &moves {
        let rec = MoveRecord::new(map.owner(slot), to);
        multi.add_create(&format!("{}/{slot}", paths.moves()), &rec.to_json(), &paths.persistent()).map_err(zk_err)?;
    }
    match multi.commit().await {
        Ok(_) => {}
        Err(zookeeper_client::MultiWriteError::OperationFailed { index: 0, .. }) => {
            return Err(unavailable("the slot map changed meanwhile: run the command again".into()))
        }
        Err(zookeeper_client::MultiWriteError::OperationFailed {
            index,
            source: zookeeper_client::Error::NodeExists,
        }) => {
            let slot = moves[index - 1].0;
            return Err(Failure::usage(format!(
                "slot {slot} is moving already ({}/{slot}): wait for that move (`treecache slots` shows it)",
                paths.moves()
            )));
        }
        Err(e) => return Err(unavailable(format!("recording the moves in {}: {e}", paths.moves()))),
    }
    for (to, slots) in by_target(&moves) {
        println!("moving slots {} to group {to}", ranges_text(&slots));
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut left: Vec<Slot> = moves.iter().map(|&(s, _)| s).collect();
    let mut epoch = map.epoch();
    let mut client = client;
    // ZooKeeper may stop answering for a while (a pause, a new leader of
    // its own): the moves go on without us, so we ask again, with a new
    // session if need be, until the timeout.
    let mut trouble: Option<String> = None;
    loop {
        let mut still = Vec::new();
        let mut unread = false;
        for &slot in &left {
            match zk::read(&client, &format!("{}/{slot}", paths.moves())).await {
                Ok(None) => {}
                Ok(Some(data)) => match MoveRecord::from_json(&data) {
                    Ok(rec) if rec.state == MoveState::Done => epoch = epoch.max(rec.map_epoch),
                    Ok(rec) => still.push((slot, rec.state)),
                    Err(e) => return Err(Failure::new(Exit::Other, e)),
                },
                Err(e) => {
                    trouble = Some(e.to_string());
                    unread = true;
                    break;
                }
            }
        }
        if unread {
            if tokio::time::Instant::now() >= deadline {
                let why = trouble.unwrap_or_default();
                return Err(unavailable(format!(
                    "ZooKeeper did not answer within {:?} ({why}); the moves go on: `treecache slots` shows them",
                    args.timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(Ok(fresh)) = tokio::time::timeout(ZK_TIMEOUT, zk::connect(&reach.zk, &paths, None)).await {
                // A new session may reach a server behind the one before:
                // it catches up first, or a record seen gone (and the map
                // not changed yet) would read as a rollback.
                if let Ok(Ok(())) = tokio::time::timeout(ZK_TIMEOUT, fresh.sync(&paths.moves())).await {
                    client = fresh;
                }
            }
            continue;
        }
        if still.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let states: Vec<String> = still.iter().take(8).map(|(s, st)| format!("{s} {}", st.as_str())).collect();
            return Err(unavailable(format!(
                "{} of {} slots not handed over within {:?} (slot state: {}{}); the moves go on: \
                 `treecache slots` shows them, and the source group's leader logs why",
                still.len(),
                moves.len(),
                args.timeout,
                states.join(", "),
                if still.len() > 8 { ", ..." } else { "" }
            )));
        }
        left = still.into_iter().map(|(s, _)| s).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A record gone with its slot still the source's: the move rolled
    // back (frozen too long without a cutover; the source's leader logs why).
    let now = match zk::read_slots(&client, &paths).await {
        Ok(Some((now, _))) => now,
        Ok(None) => return Err(unavailable(format!("{} is gone", paths.slots()))),
        Err(e) => return Err(unavailable(e.to_string())),
    };
    let back: std::collections::BTreeSet<Slot> =
        moves.iter().filter(|&&(s, to)| now.owner(s) != to && now.owner(s) == map.owner(s)).map(|&(s, _)| s).collect();
    if !back.is_empty() {
        return Err(unavailable(format!(
            "slots {} not moved: the move rolled back (frozen 30 s without a cutover: the target group did not \
             take the last copy, being down, full or failing over, or the move record was deleted; the source \
             group's leader logs why); they stay where they were and take writes; run the command again once the \
             target group takes them",
            ranges_text(&back)
        )));
    }
    println!("handed over at slot map epoch {epoch}: each source drops its copy once every node routes by that map");
    Ok(())
}

/// The moves by target group, each target's slots ascending.
fn by_target(moves: &[(Slot, GroupId)]) -> BTreeMap<GroupId, std::collections::BTreeSet<Slot>> {
    let mut out: BTreeMap<GroupId, std::collections::BTreeSet<Slot>> = BTreeMap::new();
    for &(s, to) in moves {
        out.entry(to).or_default().insert(s);
    }
    out
}

/// Which slots go where so that every group in `bytes` (those with a
/// leader) holds about the same bytes: a group's bytes are taken as spread
/// evenly over its slots (keys hash evenly over slots; a group does not
/// count its bytes per slot), or, while nothing is held, slots themselves
/// are evened. The most loaded group gives its highest slot to the least
/// loaded, until that would not narrow the gap: slots go in runs, so the
/// map stays a few ranges. Slots of groups without a leader stay.
pub fn plan_rebalance(map: &SlotMap, bytes: &BTreeMap<GroupId, u64>) -> Vec<(Slot, GroupId)> {
    if bytes.len() < 2 {
        return Vec::new();
    }
    let total: u64 = bytes.values().sum();
    let weight = |g: GroupId| -> f64 {
        match (total, map.count(g)) {
            (0, _) => 1.0,
            (_, 0) => 0.0,
            (_, n) => bytes[&g] as f64 / n as f64,
        }
    };
    let weights: BTreeMap<GroupId, f64> = bytes.keys().map(|&g| (g, weight(g))).collect();
    let mut owned: BTreeMap<GroupId, Vec<Slot>> = bytes.keys().map(|&g| (g, Vec::new())).collect();
    for s in 0..crate::slots::SLOTS {
        if let Some(slots) = owned.get_mut(&map.owner(s)) {
            slots.push(s);
        }
    }
    // (slot, its weight) per group; a moved slot keeps its weight.
    let mut held: BTreeMap<GroupId, Vec<(Slot, f64)>> =
        owned.into_iter().map(|(g, slots)| (g, slots.into_iter().map(|s| (s, weights[&g])).collect())).collect();
    let load = |held: &BTreeMap<GroupId, Vec<(Slot, f64)>>, g: GroupId| held[&g].iter().map(|(_, w)| w).sum::<f64>();
    let mut moves: BTreeMap<Slot, GroupId> = BTreeMap::new();
    loop {
        let loads: Vec<(GroupId, f64)> = held.keys().map(|&g| (g, load(&held, g))).collect();
        let hi = loads.iter().copied().fold(loads[0], |a, b| if b.1 > a.1 { b } else { a });
        let lo = loads.iter().copied().fold(loads[0], |a, b| if b.1 < a.1 { b } else { a });
        let Some(&(slot, w)) = held[&hi.0].iter().max_by_key(|(s, _)| *s) else { break };
        // Moving it must narrow the gap between the two, and the gap must
        // matter: bytes within 1% of a group's share are even.
        let share = loads.iter().map(|(_, l)| l).sum::<f64>() / loads.len() as f64;
        let even = if total == 0 { 0.0 } else { share / 100.0 };
        if w <= 0.0 || hi.1 - lo.1 <= w || hi.1 - lo.1 <= even {
            break;
        }
        held.get_mut(&hi.0).expect("a group").retain(|(s, _)| *s != slot);
        held.get_mut(&lo.0).expect("a group").push((slot, w));
        moves.insert(slot, lo.0);
    }
    moves.into_iter().filter(|&(s, to)| map.owner(s) != to).collect()
}

async fn show(reach: &TreeArgs) -> Result<(), Failure> {
    let client = zk_connect(&reach.zk, ZK_TIMEOUT).await.map_err(Failure::unavailable)?;
    let paths = Paths::new(&reach.cluster);
    let read = async {
        let map = zk::read_slots(&client, &paths).await.map_err(|e| e.to_string())?;
        let groups = zk::list_groups(&client, &paths).await.map_err(|e| e.to_string())?;
        let mut leaders = Vec::new();
        for g in &groups {
            leaders.push((*g, zk::read_root(&client, &paths.in_group(*g)).await.map_err(|e| e.to_string())?));
        }
        // Which map epoch each live node routes by (`live/<id>`'s data).
        let mut epochs = Vec::new();
        if let Ok(ids) = client.list_children(&paths.live()).await {
            for id in ids {
                let data = zk::read(&client, &format!("{}/{id}", paths.live())).await.ok().flatten();
                let v = data.and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok());
                epochs.push(v.and_then(|v| v["map_epoch"].as_u64()).unwrap_or(0));
            }
        }
        let names = match client.list_children(&paths.moves()).await {
            Ok(names) => names,
            Err(zookeeper_client::Error::NoNode) => vec![],
            Err(e) => return Err(format!("cannot list {}: {e}", paths.moves())),
        };
        let mut moves = Vec::new();
        for name in names {
            let Ok(slot) = name.parse::<Slot>() else { continue };
            if let Some(data) =
                zk::read(&client, &format!("{}/{name}", paths.moves())).await.map_err(|e| e.to_string())?
            {
                moves.push((slot, MoveRecord::from_json(&data)?));
            }
        }
        Ok::<_, String>((map, leaders, moves, epochs))
    };
    let (map, leaders, moves, epochs) = tokio::time::timeout(ZK_TIMEOUT, read)
        .await
        .map_err(|_| Failure::unavailable(format!("ZooKeeper at {} did not answer within {ZK_TIMEOUT:?}", reach.zk)))?
        .map_err(Failure::unavailable)?;
    let Some((map, _)) = map else {
        return Err(Failure::new(
            Exit::NotFound,
            format!(
                "cluster {:?} has no slot map in ZooKeeper at {} (is a root running with --cluster {}?)",
                reach.cluster, reach.zk, reach.cluster
            ),
        ));
    };
    let tls = match &reach.tls_ca {
        Some(ca) => Some(crate::tls::client_config_trusting(ca).map_err(Failure::usage)?),
        None => None,
    };
    let http = tree::probe_client(tls);
    let mut lines = Vec::new();
    let mut groups: Vec<GroupId> = leaders.iter().map(|(g, _)| *g).chain(map.groups()).collect();
    groups.sort_unstable();
    groups.dedup();
    for group in groups {
        let leader = leaders.iter().find(|(g, _)| *g == group).and_then(|(_, l)| l.clone());
        let keys = match (&http, &leader) {
            (Some(http), Some(l)) => {
                tree::metrics_text(http, &l.url, reach.api_token.as_deref()).await.ok().and_then(|text| {
                    Some((tree::gauge(&text, "treecache_entries")?, tree::gauge(&text, "treecache_bytes")?))
                })
            }
            _ => None,
        };
        lines.push(GroupLine { group, slots: map.count(group), ranges: map.ranges_of(group), leader, keys });
    }
    let on_map = epochs.iter().filter(|&&e| e == map.epoch()).count();
    print!("{}", draw(&reach.cluster, &map, &lines, (on_map, epochs.len()), &moves));
    Ok(())
}

/// The table `treecache slots` prints.
/// `seen`: how many of the live nodes route by this map's epoch, of all.
pub fn draw(
    cluster: &str,
    map: &SlotMap,
    lines: &[GroupLine],
    seen: (usize, usize),
    moves: &[(Slot, MoveRecord)],
) -> String {
    let mut out = format!("cluster {cluster}: slot map epoch {}, {} groups\n", map.epoch(), lines.len());
    out.push_str(&format!("{:<6} {:<32} {:>5} {:>10} {:>12}  ranges\n", "group", "leader", "slots", "keys", "bytes"));
    for l in lines {
        let leader = l.leader.as_ref().map_or("(none elected)".to_string(), |r| format!("{} {}", r.id, r.url));
        let (keys, bytes) = l.keys.map_or(("?".into(), "?".into()), |(k, b)| (k.to_string(), b.to_string()));
        let ranges = if l.ranges.is_empty() { "-" } else { &l.ranges };
        out.push_str(&format!("{:<6} {leader:<32} {:>5} {keys:>10} {bytes:>12}  {ranges}\n", l.group, l.slots));
    }
    out.push_str(&format!("live nodes on map epoch {}: {} of {}\n", map.epoch(), seen.0, seen.1));
    if moves.is_empty() {
        out.push_str("moves in progress: none\n");
        return out;
    }
    out.push_str("moves in progress:\n");
    // One line per (from, to, state), its slots as ranges.
    let mut lines: BTreeMap<(GroupId, GroupId, &'static str), std::collections::BTreeSet<Slot>> = BTreeMap::new();
    for (slot, rec) in moves {
        lines.entry((rec.from, rec.to, rec.state.as_str())).or_default().insert(*slot);
    }
    for ((from, to, state), slots) in lines {
        out.push_str(&format!("  slots {}: group {from} → group {to}, {state}\n", ranges_text(&slots)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalance_evens_slots_while_empty_and_bytes_once_held() {
        // A new group beside one that holds everything, nothing stored yet:
        // half the slots go, the top half, as one range.
        let map = SlotMap::single(0);
        let plan = plan_rebalance(&map, &BTreeMap::from([(0, 0), (1, 0)]));
        assert_eq!(plan.len(), 512);
        assert!(plan.iter().all(|&(s, to)| s >= 512 && to == 1));
        // Two groups with 512 slots each, group 0 holding 3x the bytes of
        // group 1: group 0 gives slots until the bytes are about even.
        let map = SlotMap::even(&[0, 1], 1).unwrap();
        let plan = plan_rebalance(&map, &BTreeMap::from([(0, 3_000_000), (1, 1_000_000)]));
        assert!(plan.iter().all(|&(s, to)| to == 1 && (300..512).contains(&s)), "{plan:?}");
        // 3 MB over 512 slots: each moved slot carries 5859 bytes.
        let moved = plan.len() as f64 * 3_000_000.0 / 512.0;
        let (g0, g1) = (3_000_000.0 - moved, 1_000_000.0 + moved);
        assert!((g0 - g1).abs() <= 20_000.0, "after: {g0} vs {g1}");
        // Even already, or one group only: nothing moves.
        assert!(plan_rebalance(&map, &BTreeMap::from([(0, 5), (1, 5)])).is_empty());
        assert!(plan_rebalance(&map, &BTreeMap::from([(0, 5)])).is_empty());
        // A third group, new and empty, takes about a third from each.
        let plan = plan_rebalance(&map, &BTreeMap::from([(0, 1_000), (1, 1_000), (2, 0)]));
        let to2 = plan.iter().filter(|&&(_, to)| to == 2).count();
        assert!((340..=342).contains(&to2), "{to2} slots to group 2");
    }

    #[test]
    fn moves_group_by_target() {
        let moves = [(5, 1), (3, 2), (4, 1)];
        let by = by_target(&moves);
        assert_eq!(ranges_text(&by[&1]), "4-5");
        assert_eq!(ranges_text(&by[&2]), "3");
    }

    #[test]
    fn the_table_shows_each_group_its_slots_keys_and_bytes() {
        let map = SlotMap::even(&[0, 1], 1).unwrap();
        let leader = |id: u64| Some(RootInfo { id, url: format!("http://127.0.0.1:80{id:02}"), epoch: 3 });
        let lines = vec![
            GroupLine { group: 0, leader: leader(1), slots: 512, ranges: map.ranges_of(0), keys: Some((10, 2048)) },
            GroupLine { group: 1, leader: leader(4), slots: 512, ranges: map.ranges_of(1), keys: None },
            GroupLine { group: 2, leader: None, slots: 0, ranges: String::new(), keys: None },
        ];
        assert_eq!(
            draw("c", &map, &lines, (4, 5), &[]),
            "cluster c: slot map epoch 1, 3 groups\n\
             group  leader                           slots       keys        bytes  ranges\n\
             0      1 http://127.0.0.1:8001            512         10         2048  0-511\n\
             1      4 http://127.0.0.1:8004            512          ?            ?  512-1023\n\
             2      (none elected)                       0          ?            ?  -\n\
             live nodes on map epoch 1: 4 of 5\n\
             moves in progress: none\n"
        );
        let moving = |from, to, state| MoveRecord { from, to, state, map_epoch: 0 };
        let moves = [
            (7, moving(0, 1, MoveState::Frozen)),
            (8, moving(0, 1, MoveState::Frozen)),
            (9, moving(0, 2, MoveState::Copy)),
        ];
        assert!(draw("c", &map, &lines[..1], (0, 0), &moves).ends_with(
            "moves in progress:\n  slots 7-8: group 0 → group 1, frozen\n  slots 9: group 0 → group 2, copy\n"
        ));
    }
}
