//! Finding the tree to load: from any node's `GET /tree` to the root, then
//! down through every node's children. Bounded: a node seen twice is not
//! visited again, and at most [`MAX_NODES`] are visited.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use serde_json::Value;

pub const MAX_NODES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    pub id: u64,
    pub url: String,
    pub depth: u32,
    pub children: Vec<u64>,
}

impl TreeNode {
    pub fn is_leaf(&self) -> bool {
        self.children.is_empty()
    }
}

async fn get_tree(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let resp = http
        .get(format!("{url}/tree"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("GET {url}/tree: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}/tree: {} (is the node registered?)", resp.status()));
    }
    resp.json().await.map_err(|e| format!("GET {url}/tree: bad JSON: {e}"))
}

/// The root's URL as `url`'s node knows it.
pub async fn root_of(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let tree = get_tree(http, url).await?;
    if tree["role"] == "root" {
        return Ok(url.to_string());
    }
    tree["root_url"]
        .as_str()
        .map(|s| s.trim_end_matches('/').to_string())
        .ok_or_else(|| format!("GET {url}/tree: no root_url in the answer"))
}

/// Every node of the tree `url` belongs to, root first, breadth-first.
pub async fn discover(http: &reqwest::Client, url: &str) -> Result<Vec<TreeNode>, String> {
    let root = root_of(http, url).await?;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([root]);
    while let Some(url) = queue.pop_front() {
        if out.len() >= MAX_NODES {
            return Err(format!("more than {MAX_NODES} nodes in the tree"));
        }
        let tree = get_tree(http, &url).await?;
        let id = tree["id"].as_u64().ok_or_else(|| format!("GET {url}/tree: no id"))?;
        if !seen.insert(id) {
            continue;
        }
        let mut children = Vec::new();
        for c in tree["children"].as_array().into_iter().flatten() {
            if let (Some(cid), Some(curl)) = (c["id"].as_u64(), c["url"].as_str()) {
                children.push(cid);
                queue.push_back(curl.trim_end_matches('/').to_string());
            }
        }
        let depth = tree["depth"].as_u64().unwrap_or(0) as u32;
        out.push(TreeNode { id, url, depth, children });
    }
    Ok(out)
}

/// The deepest node, lowest id first: a read there travels the most levels.
pub fn deepest(nodes: &[TreeNode]) -> Option<&TreeNode> {
    nodes.iter().max_by(|a, b| a.depth.cmp(&b.depth).then(b.id.cmp(&a.id)))
}

/// One node per depth, lowest id at each, root (depth 0) first.
pub fn one_per_depth(nodes: &[TreeNode]) -> Vec<&TreeNode> {
    let max = nodes.iter().map(|n| n.depth).max().unwrap_or(0);
    (0..=max).filter_map(|d| nodes.iter().filter(|n| n.depth == d).min_by_key(|n| n.id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, depth: u32, children: &[u64]) -> TreeNode {
        TreeNode { id, url: format!("http://127.0.0.1:{}", 9000 + id), depth, children: children.to_vec() }
    }

    #[test]
    fn picks_the_deepest_lowest_id_and_one_node_per_depth() {
        let tree = vec![node(1, 0, &[2, 3]), node(2, 1, &[4]), node(3, 1, &[5]), node(5, 2, &[]), node(4, 2, &[])];
        assert_eq!(deepest(&tree).unwrap().id, 4);
        let ids: Vec<u64> = one_per_depth(&tree).iter().map(|n| n.id).collect();
        assert_eq!(ids, [1, 2, 4]);
        assert!(tree[3].is_leaf() && !tree[0].is_leaf());
    }
}
