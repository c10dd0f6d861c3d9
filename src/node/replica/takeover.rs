//! Takeover: whether this root may take over from a leader (only a
//! member of its in-sync set that still holds what it held then, unless
//! that data is lost either way), why a candidate may not (for
//! `/health`), and a root candidate's id.
//!
//! Must not let a root take over that may lack a write the old leader
//! acknowledged.

use std::sync::atomic::Ordering;

use zookeeper_client::Client;

use crate::error::Result;
use crate::node::Node;
use crate::store::NodeId;
use crate::tree::zk::{self, LeaderRecord};

impl Node {
    /// Whether this root may take over from the leader `rec` describes:
    /// only a member of `in_sync` that still holds what it held then (its
    /// commit log, or this very process: the old leader, or a standby the
    /// leader said is in sync). Or, when nobody holding that data can come
    /// back (every in-sync root kept no log, and none of them lives in the
    /// process that held it), anyone: what they held is lost either way.
    /// `alive`: the ids with a `live/` znode.
    pub(in crate::node) fn may_take_over(
        &self,
        rec: &LeaderRecord,
        me: NodeId,
        alive: &std::collections::HashSet<NodeId>,
    ) -> bool {
        let led_it = rec.id == me && self.replica().led_epoch.load(Ordering::Acquire) == rec.epoch;
        let followed_in_sync =
            self.replica().following.lock().as_ref().is_some_and(|f| f.in_sync && f.epoch == rec.epoch);
        if rec.in_sync.contains(&me) && (led_it || followed_in_sync || self.log().is_some()) {
            return true;
        }
        let lost = rec.in_sync.iter().all(|id| rec.without_log.contains(id) && (*id == me || !alive.contains(id)));
        if lost {
            log::warn!(
                "every in-sync root of epoch {} ({:?}) kept no commit log and is gone: taking over without \
                 their data (give roots --data-dir to keep it)",
                rec.epoch,
                rec.in_sync
            );
        }
        lost
    }

    /// Notes why this candidate may not take over (`None`: it may).
    pub(in crate::node) fn set_refusing(&self, why: Option<String>) {
        *self.replica().refusing.lock() = why;
    }

    /// Why this root candidate waits without leading or following, if so.
    pub fn refusing(&self) -> Option<String> {
        self.replica().refusing.lock().clone()
    }

    /// The id of a root candidate: `--id`, else the one kept in its data
    /// directory, else a new one (kept there for the next start).
    pub(in crate::node) async fn root_id(&self, zk: &Client) -> Result<NodeId> {
        let paths = &self.inner.paths;
        if let Some(id) = self.node_id() {
            zk::reserve_id(zk, paths, id).await?;
            return Ok(id);
        }
        let file = self.log().map(|l| l.dir().join("node_id"));
        if let Some(file) = &file {
            if let Ok(text) = std::fs::read_to_string(file) {
                if let Ok(id) = text.trim().parse::<NodeId>() {
                    zk::reserve_id(zk, paths, id).await?;
                    return Ok(id);
                }
                log::warn!("{} holds {text:?}, not a node id: taking a new id", file.display());
            }
        }
        let id = zk::allocate_id(zk, paths).await?;
        if let Some(file) = &file {
            if let Err(e) = std::fs::write(file, format!("{id}\n")) {
                log::warn!("keeping our id in {}: {e}", file.display());
            }
        }
        Ok(id)
    }
}
