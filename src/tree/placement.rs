//! The root's registry of the whole tree. Pure: no I/O, no clock (callers
//! pass `now` in milliseconds). The root holds it under a lock, changes it on
//! registration and death, then mirrors it to ZooKeeper and tells each node
//! whose place changed.
//!
//! Placement is breadth-first: a new node goes under the shallowest node with
//! a free child slot (`fanout`), lowest id first, so depth stays about
//! log_fanout(N).

use std::collections::BTreeMap;

use crate::store::NodeId;
use crate::wire::{Peer, Topology};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRec {
    pub id: NodeId,
    pub url: String,
    pub parent: Option<NodeId>,
    pub children: Vec<NodeId>,
    pub depth: u32,
    /// When the node (re-)registered, for the liveness grace period.
    pub registered_at: u64,
}

#[derive(Debug, Clone)]
pub struct Registry {
    nodes: BTreeMap<NodeId, NodeRec>,
    root: NodeId,
    fanout: usize,
    /// Bumped by every change; stamped on the topologies handed out.
    seq: u64,
}

impl Registry {
    pub fn new(root: NodeId, url: String, fanout: u32, now: u64) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(root, NodeRec { id: root, url, parent: None, children: vec![], depth: 0, registered_at: now });
        Registry { nodes, root, fanout: fanout.max(1) as usize, seq: 1 }
    }

    pub fn root(&self) -> NodeId {
        self.root
    }

    pub fn get(&self, id: NodeId) -> Option<&NodeRec> {
        self.nodes.get(&id)
    }

    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn find_by_url(&self, url: &str) -> Option<NodeId> {
        self.nodes.values().find(|n| n.url == url).map(|n| n.id)
    }

    /// The shallowest node with a free slot, lowest id first, skipping the
    /// subtree rooted at `exclude` (a subtree cannot hang under itself).
    fn free_slot(&self, exclude: Option<NodeId>) -> NodeId {
        let banned = exclude.map(|e| self.subtree(e)).unwrap_or_default();
        self.nodes
            .values()
            .filter(|n| n.children.len() < self.fanout && !banned.contains(&n.id) && self.reaches_root(n.id))
            .min_by_key(|n| (n.depth, n.id))
            .map(|n| n.id)
            .unwrap_or(self.root)
    }

    fn reaches_root(&self, mut id: NodeId) -> bool {
        for _ in 0..=self.nodes.len() {
            match self.nodes.get(&id).and_then(|n| n.parent) {
                Some(p) => id = p,
                None => return id == self.root,
            }
        }
        false
    }

    /// Adds a node under the breadth-first free slot; returns its parent.
    pub fn place(&mut self, id: NodeId, url: String, now: u64) -> NodeId {
        let parent = self.free_slot(None);
        let depth = self.nodes[&parent].depth + 1;
        self.seq += 1;
        self.attach(id, parent);
        self.nodes.insert(id, NodeRec { id, url, parent: Some(parent), children: vec![], depth, registered_at: now });
        parent
    }

    fn attach(&mut self, child: NodeId, parent: NodeId) {
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children.push(child);
            p.children.sort_unstable();
        }
    }

    /// Marks a known node as freshly registered (same url re-registering).
    pub fn touch(&mut self, id: NodeId, now: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.registered_at = now;
        }
    }

    /// Removes a node. Its children re-attach, lowest id first: to the
    /// shallowest free slot (the freed one under the dead node's parent is
    /// among the candidates), each keeping its own subtree. Returns the
    /// removed node's record.
    pub fn remove(&mut self, id: NodeId) -> Option<NodeRec> {
        if id == self.root {
            return None;
        }
        let rec = self.nodes.remove(&id)?;
        self.seq += 1;
        if let Some(p) = rec.parent.and_then(|p| self.nodes.get_mut(&p)) {
            p.children.retain(|&c| c != id);
        }
        for &orphan in &rec.children {
            if let Some(o) = self.nodes.get_mut(&orphan) {
                o.parent = None;
            }
        }
        for &orphan in &rec.children {
            let parent = self.free_slot(Some(orphan));
            if let Some(o) = self.nodes.get_mut(&orphan) {
                o.parent = Some(parent);
            }
            self.attach(orphan, parent);
            self.fix_depths(orphan);
        }
        Some(rec)
    }

    fn fix_depths(&mut self, top: NodeId) {
        let mut stack = vec![top];
        while let Some(id) = stack.pop() {
            let depth = match self.nodes[&id].parent {
                Some(p) => self.nodes[&p].depth + 1,
                None => 0,
            };
            let node = self.nodes.get_mut(&id).expect("id from the registry");
            node.depth = depth;
            stack.extend(node.children.iter().copied());
        }
    }

    /// Ids in the subtree rooted at `id`, `id` included.
    pub fn subtree(&self, id: NodeId) -> Vec<NodeId> {
        let mut out = vec![];
        let mut stack = vec![id];
        while let Some(n) = stack.pop() {
            out.push(n);
            if let Some(rec) = self.nodes.get(&n) {
                stack.extend(rec.children.iter().copied());
            }
        }
        out
    }

    /// Ids from the root down to `id`.
    pub fn path(&self, id: NodeId) -> Vec<NodeId> {
        let mut path = vec![];
        let mut cur = Some(id);
        while let Some(n) = cur {
            path.push(n);
            cur = self.nodes.get(&n).and_then(|r| r.parent);
            if path.len() > self.nodes.len() {
                break;
            }
        }
        path.reverse();
        path
    }

    /// `1/2/5`: the node's place below `tree/`.
    pub fn tree_path(&self, id: NodeId) -> String {
        self.path(id).iter().map(|n| n.to_string()).collect::<Vec<_>>().join("/")
    }

    fn peer(&self, id: NodeId) -> Option<Peer> {
        self.nodes.get(&id).map(|n| Peer { id, url: n.url.clone() })
    }

    /// The topology node `id` should have.
    pub fn topology(&self, id: NodeId, epoch: u64) -> Option<Topology> {
        let rec = self.nodes.get(&id)?;
        Some(Topology {
            id,
            parent: rec.parent.and_then(|p| self.peer(p)),
            children: rec.children.iter().filter_map(|&c| self.peer(c)).collect(),
            depth: rec.depth,
            epoch,
            seq: self.seq,
        })
    }

    /// Every node's topology, for diffing before and after a change.
    pub fn topologies(&self, epoch: u64) -> BTreeMap<NodeId, Topology> {
        self.nodes.keys().filter_map(|&id| self.topology(id, epoch).map(|t| (id, t))).collect()
    }

    /// `(tree path, znode data)` for every node: what ZooKeeper should show.
    pub fn znodes(&self) -> BTreeMap<String, String> {
        self.nodes
            .values()
            .map(|n| {
                let data = serde_json::json!({ "id": n.id, "url": n.url, "depth": n.depth }).to_string();
                (self.tree_path(n.id), data)
            })
            .collect()
    }
}

/// Topologies that differ between two snapshots (new or changed; `seq`
/// aside), so only those nodes are told.
pub fn changed(before: &BTreeMap<NodeId, Topology>, after: &BTreeMap<NodeId, Topology>) -> Vec<Topology> {
    let same = |a: &Topology, b: &Topology| Topology { seq: 0, ..a.clone() } == Topology { seq: 0, ..b.clone() };
    after.iter().filter(|(id, t)| !before.get(id).is_some_and(|b| same(b, t))).map(|(_, t)| t.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(n: u64, fanout: u32) -> Registry {
        let mut r = Registry::new(1, "http://n1".into(), fanout, 0);
        for id in 2..=n {
            r.place(id, format!("http://n{id}"), 0);
        }
        r
    }

    #[test]
    fn placement_is_breadth_first_lowest_id_first() {
        let r = tree(7, 2);
        assert_eq!(r.get(1).unwrap().children, vec![2, 3]);
        assert_eq!(r.get(2).unwrap().children, vec![4, 5]);
        assert_eq!(r.get(3).unwrap().children, vec![6, 7]);
        assert_eq!(r.tree_path(5), "1/2/5");
        assert_eq!(r.get(7).unwrap().depth, 2);
        let r = tree(63, 2);
        assert_eq!(r.ids().map(|id| r.get(id).unwrap().depth).max(), Some(5));
    }

    #[test]
    fn fanout_sets_the_width() {
        let r = tree(5, 4);
        assert_eq!(r.get(1).unwrap().children, vec![2, 3, 4, 5]);
        assert_eq!(tree(6, 4).get(2).unwrap().children, vec![6]);
    }

    #[test]
    fn orphans_reattach_with_their_subtrees() {
        let mut r = tree(7, 2);
        let dead = r.remove(2).unwrap();
        assert_eq!(dead.children, vec![4, 5]);
        // 4 takes the slot 2 freed under the root; 5 goes to the shallowest
        // free slot: under 4 (depth 1), lowest id first.
        assert_eq!(r.get(1).unwrap().children, vec![3, 4]);
        assert_eq!(r.get(4).unwrap().depth, 1);
        assert_eq!(r.get(5).unwrap().parent, Some(4));
        assert_eq!(r.tree_path(5), "1/4/5");
        assert_eq!(r.len(), 6);
    }

    #[test]
    fn a_subtree_never_hangs_under_itself() {
        let mut r = tree(15, 2);
        r.remove(2);
        for id in r.ids().collect::<Vec<_>>() {
            assert_eq!(r.path(id).first(), Some(&1), "node {id} reaches the root");
        }
        assert!(r.remove(1).is_none(), "the root is never removed");
    }

    #[test]
    fn changed_topologies_are_only_the_affected_nodes() {
        let mut r = tree(7, 2);
        let before = r.topologies(1);
        r.remove(7);
        let changed: Vec<u64> = changed(&before, &r.topologies(1)).iter().map(|t| t.id).collect();
        assert_eq!(changed, vec![3]);
    }

    #[test]
    fn znodes_mirror_paths_and_data() {
        let r = tree(3, 2);
        let z = r.znodes();
        assert_eq!(z.keys().cloned().collect::<Vec<_>>(), vec!["1", "1/2", "1/3"]);
        assert!(z["1/3"].contains("\"depth\":1"));
        assert_eq!(r.find_by_url("http://n3"), Some(3));
    }
}
