//! `treecache tree`: draw the tree from ZooKeeper. (Being written.)
use clap::Args;
#[derive(Debug, Clone, Args)]
pub struct TreeArgs {
    #[arg(long, env = "TREECACHE_ZK", default_value = "127.0.0.1:2181")]
    pub zk: String,
    #[arg(long, env = "TREECACHE_CLUSTER", default_value = "default")]
    pub cluster: String,
}
pub async fn run(_args: TreeArgs) -> Result<(), String> {
    Err("treecache tree: not built yet".into())
}
