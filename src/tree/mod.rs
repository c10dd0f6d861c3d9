//! The tree: where each node hangs.
//!
//! - [`placement`]: the root's registry of the whole tree; pure (no I/O):
//!   breadth-first placement, removal with re-attachment of orphans, the
//!   znode path of every node, the [`Topology`] each node should have.
//! - [`zk`]: ZooKeeper paths and operations: id and epoch counters, the
//!   election, ephemeral registration, and the mirror that keeps
//!   `tree/...` true to the registry.

pub mod placement;
pub mod zk;

pub use crate::wire::{Peer, Topology};
