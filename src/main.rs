//! The `treecache` binary: parse flags, set up logging, hand over to the library.

use clap::Parser;
use treecache::config::{Cli, Command};

fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,zookeeper_client=warn,actix_server=warn"),
    )
    .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("treecache: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Node(args) => treecache::node::run_from_args(args).await,
            Command::Up(args) => treecache::cli::up::run(args).await,
            Command::Get(args) => treecache::cli::client::get(args).await,
            Command::Put(args) => treecache::cli::client::put(args).await,
            Command::Del(args) => treecache::cli::client::del(args).await,
            Command::Tree(args) => treecache::cli::tree::run(args).await,
            Command::Bench(args) => treecache::cli::bench::run(args).await,
        }
    });
    if let Err(message) = result {
        eprintln!("treecache: {message}");
        std::process::exit(1);
    }
}
