//! `treecache up`: a local tree on loopback. (Being written.)
use clap::Args;
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Number of nodes including the root.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Use this ZooKeeper instead of starting one.
    #[arg(long, env = "TREECACHE_ZK")]
    pub zk: Option<String>,
}
pub async fn run(_args: UpArgs) -> Result<(), String> {
    Err("treecache up: not built yet".into())
}
