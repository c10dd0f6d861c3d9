//! (Being written.)
pub async fn run_from_args(_args: crate::config::NodeArgs) -> Result<(), String> {
    Err("not built yet".into())
}
