//! `treecache slots`: the slot map of the root groups as ZooKeeper records
//! it (`/treecache/<c>/slots`), with each group's leader, how many keys and
//! bytes it holds (its `/metrics`), and the moves in progress (`moves/`).
//! It only reads.

use std::time::Duration;

use clap::Args;

use super::tree::{self, TreeArgs};
use super::{Exit, Failure};
use crate::cli::local::zk_connect;
use crate::slots::{GroupId, SlotMap};
use crate::tree::zk::{self, Paths, RootInfo};

const ZK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Args)]
pub struct SlotsArgs {
    #[command(flatten)]
    pub reach: TreeArgs,
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
    let reach = &args.reach;
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
        let moves = match client.list_children(&paths.moves()).await {
            Ok(mut moves) => {
                moves.sort_by_key(|m| m.parse::<u32>().unwrap_or(u32::MAX));
                moves
            }
            Err(zookeeper_client::Error::NoNode) => vec![],
            Err(e) => return Err(format!("cannot list {}: {e}", paths.moves())),
        };
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
pub fn draw(cluster: &str, map: &SlotMap, lines: &[GroupLine], seen: (usize, usize), moves: &[String]) -> String {
    let mut out = format!("cluster {cluster}: slot map epoch {}, {} groups\n", map.epoch(), lines.len());
    out.push_str(&format!("{:<6} {:<32} {:>5} {:>10} {:>12}  ranges\n", "group", "leader", "slots", "keys", "bytes"));
    for l in lines {
        let leader = l.leader.as_ref().map_or("(none elected)".to_string(), |r| format!("{} {}", r.id, r.url));
        let (keys, bytes) = l.keys.map_or(("?".into(), "?".into()), |(k, b)| (k.to_string(), b.to_string()));
        let ranges = if l.ranges.is_empty() { "-" } else { &l.ranges };
        out.push_str(&format!("{:<6} {leader:<32} {:>5} {keys:>10} {bytes:>12}  {ranges}\n", l.group, l.slots));
    }
    out.push_str(&format!("live nodes on map epoch {}: {} of {}\n", map.epoch(), seen.0, seen.1));
    match moves {
        [] => out.push_str("moves in progress: none\n"),
        moves => out.push_str(&format!("moves in progress: slots {}\n", moves.join(", "))),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(draw("c", &map, &lines[..1], (0, 0), &["7".into(), "9".into()])
            .ends_with("moves in progress: slots 7, 9\n"));
    }
}
