//! The commands for people: `up` (a local tree), `tree` (draw it from
//! ZooKeeper), `get|put|del` (one request to a node) and `bench`.
//! Each returns `Result<(), String>`: the message main prints on failure.

pub mod bench;
pub mod client;
pub mod local;
pub mod tree;
pub mod up;
