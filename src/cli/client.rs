//! `treecache get|put|del`. (Being written.)
use clap::Args;
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    pub key: String,
}
#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    pub key: String,
    pub value: String,
}
#[derive(Debug, Clone, Args)]
pub struct DelArgs {
    pub key: String,
}
pub async fn get(_a: GetArgs) -> Result<(), String> {
    Err("not built yet".into())
}
pub async fn put(_a: PutArgs) -> Result<(), String> {
    Err("not built yet".into())
}
pub async fn del(_a: DelArgs) -> Result<(), String> {
    Err("not built yet".into())
}
