//! `treecache bench`: load generator. (Being written.)
use clap::Args;
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {}
pub async fn run(_args: BenchArgs) -> Result<(), String> {
    Err("treecache bench: not built yet".into())
}
