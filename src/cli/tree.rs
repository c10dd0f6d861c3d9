//! `treecache tree`: the tree as ZooKeeper records it, drawn. Reads
//! `tree/` (one znode per node at its path), `live/` and `root`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::Args;

use crate::tree::zk::Paths;

#[derive(Debug, Clone, Args)]
pub struct TreeArgs {
    /// ZooKeeper connect string.
    #[arg(long, env = "TREECACHE_ZK", default_value = "127.0.0.1:2181")]
    pub zk: String,
    /// Cluster name.
    #[arg(long, env = "TREECACHE_CLUSTER", default_value = "default")]
    pub cluster: String,
}

pub async fn run(args: TreeArgs) -> Result<(), String> {
    print!("{}", render(&args.zk, &args.cluster).await?);
    Ok(())
}

/// One node's record under `tree/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub path: Vec<u64>,
    pub url: String,
}

/// Reads the cluster's tree from ZooKeeper and draws it.
pub async fn render(zk_addr: &str, cluster: &str) -> Result<String, String> {
    let connecting = zookeeper_client::Client::connect(zk_addr);
    let zk = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| format!("ZooKeeper at {zk_addr} did not answer within 5 s"))?
        .map_err(|e| format!("ZooKeeper at {zk_addr}: {e}"))?;
    let paths = Paths::new(cluster);
    let mut records = Vec::new();
    collect(&zk, &paths.tree(), &mut vec![], &mut records).await?;
    if records.is_empty() {
        return Err(format!("cluster {cluster:?} has no tree in ZooKeeper at {zk_addr}"));
    }
    let live: BTreeSet<u64> = match zk.list_children(&paths.live()).await {
        Ok(ids) => ids.iter().filter_map(|s| s.parse().ok()).collect(),
        Err(_) => BTreeSet::new(),
    };
    let root = zk.get_data(&paths.root()).await.ok().map(|(d, _)| String::from_utf8_lossy(&d).to_string());
    let mut out = format!("cluster {cluster} (root: {})\n", root.unwrap_or_else(|| "none published".into()));
    out.push_str(&draw(&records, &live));
    Ok(out)
}

async fn collect(
    zk: &zookeeper_client::Client,
    path: &str,
    at: &mut Vec<u64>,
    out: &mut Vec<Record>,
) -> Result<(), String> {
    let children = match zk.list_children(path).await {
        Ok(c) => c,
        Err(zookeeper_client::Error::NoNode) => return Ok(()),
        Err(e) => return Err(format!("listing {path}: {e}")),
    };
    for child in children {
        let Ok(id) = child.parse::<u64>() else { continue };
        let full = format!("{path}/{child}");
        let url = match zk.get_data(&full).await {
            Ok((data, _)) => serde_json::from_slice::<serde_json::Value>(&data)
                .ok()
                .and_then(|v| v["url"].as_str().map(str::to_string))
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        at.push(id);
        out.push(Record { path: at.clone(), url });
        Box::pin(collect(zk, &full, at, out)).await?;
        at.pop();
    }
    Ok(())
}

/// Draws records (each with its path from the root) like `tree(1)`.
pub fn draw(records: &[Record], live: &BTreeSet<u64>) -> String {
    let by_path: BTreeMap<&[u64], &Record> = records.iter().map(|r| (r.path.as_slice(), r)).collect();
    let mut out = String::new();
    for r in records.iter().filter(|r| r.path.len() == 1) {
        draw_node(r, &by_path, live, "", true, true, &mut out);
    }
    out
}

fn draw_node(
    r: &Record,
    by_path: &BTreeMap<&[u64], &Record>,
    live: &BTreeSet<u64>,
    prefix: &str,
    last: bool,
    top: bool,
    out: &mut String,
) {
    let id = *r.path.last().unwrap_or(&0);
    let state = if live.contains(&id) { "" } else { "  (not live)" };
    let role = if top { "  root" } else { "" };
    let branch = if top {
        ""
    } else if last {
        "└── "
    } else {
        "├── "
    };
    out.push_str(&format!("{prefix}{branch}{id}  {}{role}{state}\n", r.url));
    let mut kids: Vec<&Record> =
        by_path.values().filter(|c| c.path.len() == r.path.len() + 1 && c.path.starts_with(&r.path)).copied().collect();
    kids.sort_by_key(|c| c.path.last().copied());
    let child_prefix = if top { String::new() } else { format!("{prefix}{}", if last { "    " } else { "│   " }) };
    for (i, k) in kids.iter().enumerate() {
        draw_node(k, by_path, live, &child_prefix, i + 1 == kids.len(), false, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &[u64]) -> Record {
        Record { path: path.to_vec(), url: format!("http://n{}", path.last().unwrap()) }
    }

    #[test]
    fn draws_a_binary_tree() {
        let records = vec![rec(&[1]), rec(&[1, 2]), rec(&[1, 3]), rec(&[1, 2, 4]), rec(&[1, 2, 5])];
        let live: BTreeSet<u64> = [1, 2, 3, 4].into_iter().collect();
        let drawn = draw(&records, &live);
        assert_eq!(
            drawn,
            "1  http://n1  root\n├── 2  http://n2\n│   ├── 4  http://n4\n│   └── 5  http://n5  (not live)\n└── 3  http://n3\n"
        );
    }
}
