//! The `treecache` binary: parse flags, set up logging, hand over to the
//! library, and exit with the code the failure calls for (`treecache --help`
//! lists them; `cli::Exit`).

use clap::Parser;
use treecache::cli::{Cli, Command, Exit, Failure};
use treecache::trace::LogFormat;

fn main() {
    // Usage errors exit 2 (clap's own code, and Exit::Usage).
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Node(args) => args.log_format,
        _ => LogFormat::Text,
    };
    treecache::trace::init_logging(format);
    // One crypto provider for every TLS configuration, ours or a library's.
    treecache::tls::install_default_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("treecache: cannot start the async runtime: {e}");
            std::process::exit(Exit::Other as i32);
        }
    };
    let result: Result<(), Failure> = runtime.block_on(async move {
        match cli.command {
            Command::Node(args) => {
                args.validate().map_err(Failure::usage)?;
                treecache::server::run(args).await.map_err(Failure::from)
            }
            Command::Up(args) => treecache::cli::up::run(args).await,
            Command::Get(args) => treecache::cli::client::get(args).await,
            Command::Put(args) => treecache::cli::client::put(args).await,
            Command::Del(args) => treecache::cli::client::del(args).await,
            Command::Tree(args) => treecache::cli::tree::run(args).await,
            Command::Slots(args) => treecache::cli::slots::run(args).await,
            Command::Bench(args) => treecache::cli::bench::run(args).await.map_err(Failure::from),
            Command::Completions(args) => treecache::cli::docs::completions(args),
            Command::Man => treecache::cli::docs::man(),
        }
    });
    if let Err(failure) = result {
        match format {
            // A node logging JSON ends with a JSON line too: a log shipper
            // reading its stderr sees why it stopped.
            LogFormat::Json => log::error!("{}", failure.message),
            LogFormat::Text => eprintln!("treecache: {}", failure.message),
        }
        std::process::exit(failure.exit as i32);
    }
}
