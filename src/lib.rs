//! treecache: a hierarchical tree cache coordinated by ZooKeeper.
//!
//! The map, one line per component:
//!
//! - [`config`]: a node's flags and environment variables into typed,
//!   validated settings ([`config::NodeArgs`]).
//! - [`auth`]: the cluster secret and the API token, checked once per request.
//! - [`trace`]: request ids (`X-Request-Id`) and the log format.
//! - [`error`]: the one error enum and its HTTP mapping.
//! - [`tls`]: the node's certificate and CA as rustls configurations for
//!   its listeners, its HTTP client and ZooKeeper; reload on SIGHUP.
//! - [`store`]: pure versioned store: entries, tombstones, expiry, holder
//!   directory, S3-FIFO eviction order, "expecting" markers for in-flight
//!   fills.
//! - [`slots`]: the key space cut into 1024 slots (a stable hash) and the
//!   map of which root group owns each.
//! - [`wire`]: internal formats between nodes (push batches, write batches).
//! - [`tree`]: placement (pure), the root's registry of the whole tree and its
//!   ZooKeeper mirror, and a node's own view of its place ([`tree::Topology`]).
//! - [`coherence`]: push vs ttl; the only place that matches on the mode.
//! - [`node`]: the running node. Read path: local store, else one
//!   singleflight fill from the parent. Write path: one FIFO uplink per
//!   node to the root, which commits each write id once and pushes. Push
//!   path: per-child coalescing queues.
//! - [`http`]: actix routes: public `/kv`, admin (`/health`, `/tree`,
//!   `/metrics`, `/dump`), registration and the internal node-to-node routes.
//! - [`resp`]: the Redis protocol front door (`--resp-listen`): RESP
//!   commands mapped onto the same node calls `/kv` makes.
//! - [`metrics`]: one prometheus-client registry per node: counters, gauges,
//!   `_seconds` histograms (request latency, upstream, push lag), OpenMetrics text.
//! - [`server`]: `treecache node` as a process, where the node and its
//!   front doors (HTTP, RESP) meet: bind, build the node, serve, leave on
//!   SIGTERM.
//! - [`process`]: child-process plumbing (logs, dying with the parent,
//!   signals).
//! - [`zkserver`]: a private ZooKeeper from the installed package (tests, `up`).
//! - [`client`]: the Rust client of `/kv` (get, put, del, consistent reads,
//!   typed errors); the CLI, the bench and the tests send `/kv` through it.
//! - [`cli`]: `up`, `tree`, `get|put|del`, `bench`, and the clap [`cli::Cli`].
//!
//! Layering: a module uses only the modules below it; the table is in
//! docs/architecture.md ("Layers") and `tests/layers.rs` holds the code to it.
//!
//! Task ownership: long-lived tasks (push queues, the write uplink, the
//! ZooKeeper supervisor, the expiry sweeper) start in [`node::Node::start`]
//! and stop on the node's shutdown signal; handlers never spawn them.

#![warn(clippy::all, rust_2018_idioms)]

pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod coherence;
pub mod config;
pub mod error;
pub mod http;
pub mod log;
pub mod metrics;
pub mod node;
pub mod process;
pub mod replication;
pub mod resp;
pub mod server;
pub mod slots;
pub mod store;
pub mod tls;
pub mod trace;
pub mod tree;
pub mod wire;
pub mod zkserver;

pub use error::{Error, Result};
